//! The options builder through the C ABI: arbitrary sequences of `agent_options_set_*`
//! calls (numbers, booleans, PEM bytes, file paths, user agents as raw C strings), then
//! `agent_new_with_options`.
//!
//! Invariants: never a panic; setters answer OK, or INVALID_ARGUMENT for a non-UTF-8
//! string; creation answers OK or INVALID_OPTION, and agrees with the Rust core given the
//! same values (so nothing is lost or changed in the C marshalling); PEM bytes without a
//! certificate block are refused; a created agent reports the keep-alive setting it was
//! given and all-zero statistics; the output is written only on success.
#![no_main]

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use keepalive_agent::ffi::agent::*;
use keepalive_agent::ffi::agent_code::{self, *};
use keepalive_agent::ffi::agent_last_error;
use keepalive_agent::ffi::options::*;
use keepalive_agent::{Agent, Options};
use libfuzzer_sys::fuzz_target;

/// A self-signed CA certificate (also a seed of the corpus).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBpDCCAUmgAwIBAgIUDNzePJRfTuTfmFquU9Gq2kmDgFEwCgYIKoZIzj0EAwIw\nJzElMCMGA1UEAwwca2VlcGFsaXZlLWFnZW50IGZ1enogc2VlZCBDQTAeFw0yNjEx\nMjcxNzMyNTdaFw0zNjExMjQxNzMyNTdaMCcxJTAjBgNVBAMMHGtlZXBhbGl2ZS1h\nZ2VudCBmdXp6IHNlZWQgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARY8sgW\nbTFGypLjBBzarCyBMmfB9HHHO+3MSLRWtJAFL4cwj/vPopcHAG2Xxa0nrtDdr7iZ\nLoEKVq2sCHY4O04ho1MwUTAdBgNVHQ4EFgQUTM9PbLQxYqSCAfGVywOs78lRZ+Yw\nHwYDVR0jBBgwFoAUTM9PbLQxYqSCAfGVywOs78lRZ+YwDwYDVR0TAQH/BAUwAwEB\n/zAKBggqhkjOPQQDAgNJADBGAiEAhjO5QXzFa5Ml29ghy8JQiZiiPfF0qRldAtPi\nYYm8UewCIQD76u/gOkLzlk+0aKSiEHuwAVCqqF3YZGWj6KRRCt40+Q==\n-----END CERTIFICATE-----\n";

#[derive(Arbitrary, Debug)]
enum Op<'a> {
    U32(u8, u32),
    Bool(u8, bool),
    MaxResponseBytes(u64),
    CaPem(&'a [u8]),
    CaPemValid,
    CaFile(u8),
    UserAgent(&'a [u8]),
}

type SetU32 = unsafe extern "C" fn(*mut agent_options, u32) -> agent_code;
type SetBool = unsafe extern "C" fn(*mut agent_options, bool) -> agent_code;

fn u32_setter(i: u8) -> (SetU32, fn(&mut Options, u32)) {
    match i % 15 {
        0 => (agent_options_set_keep_alive_msecs, |o, v| {
            o.keep_alive_msecs = Some(v)
        }),
        1 => (agent_options_set_keep_alive_interval_msecs, |o, v| {
            o.keep_alive_interval_msecs = Some(v)
        }),
        2 => (agent_options_set_keep_alive_probes, |o, v| {
            o.keep_alive_probes = Some(v)
        }),
        3 => (agent_options_set_max_sockets, |o, v| {
            o.max_sockets = Some(v)
        }),
        4 => (agent_options_set_max_total_sockets, |o, v| {
            o.max_total_sockets = Some(v)
        }),
        5 => (agent_options_set_max_free_sockets, |o, v| {
            o.max_free_sockets = Some(v)
        }),
        6 => (agent_options_set_scheduling, |o, v| o.scheduling = Some(v)),
        7 => (agent_options_set_free_socket_timeout_msecs, |o, v| {
            o.free_socket_timeout_msecs = Some(v)
        }),
        8 => (agent_options_set_keep_alive_timeout_buffer_msecs, |o, v| {
            o.keep_alive_timeout_buffer_msecs = Some(v)
        }),
        9 => (agent_options_set_max_keep_alive_timeout_msecs, |o, v| {
            o.max_keep_alive_timeout_msecs = Some(v)
        }),
        10 => (agent_options_set_max_socket_lifetime_msecs, |o, v| {
            o.max_socket_lifetime_msecs = Some(v)
        }),
        11 => (agent_options_set_connect_timeout_msecs, |o, v| {
            o.connect_timeout_msecs = Some(v)
        }),
        12 => (agent_options_set_headers_timeout_msecs, |o, v| {
            o.headers_timeout_msecs = Some(v)
        }),
        13 => (agent_options_set_body_timeout_msecs, |o, v| {
            o.body_timeout_msecs = Some(v)
        }),
        _ => (agent_options_set_scheduling, |o, v| o.scheduling = Some(v)),
    }
}

fn bool_setter(i: u8) -> (SetBool, fn(&mut Options, bool)) {
    match i % 5 {
        0 => (agent_options_set_keep_alive, |o, v| o.keep_alive = Some(v)),
        1 => (agent_options_set_retry_stale, |o, v| {
            o.retry_stale = Some(v)
        }),
        2 => (agent_options_set_use_system_roots, |o, v| {
            o.use_system_roots = Some(v)
        }),
        3 => (agent_options_set_danger_accept_invalid_certs, |o, v| {
            o.danger_accept_invalid_certs = Some(v)
        }),
        _ => (agent_options_set_keep_alive, |o, v| o.keep_alive = Some(v)),
    }
}

/// CA files to pick from: missing, a directory, empty, garbage, a valid CA.
fn ca_files() -> &'static [String] {
    static F: OnceLock<Vec<String>> = OnceLock::new();
    F.get_or_init(|| {
        let dir: PathBuf = std::env::temp_dir().join(format!("ka-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, data: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            p.to_string_lossy().into_owned()
        };
        vec![
            dir.join("missing.pem").to_string_lossy().into_owned(),
            dir.to_string_lossy().into_owned(),
            file("empty.pem", b""),
            file("garbage.pem", b"-----BEGIN CERTIFICATE-----\nnot base64\n"),
            file("ca.pem", CA_PEM.as_bytes()),
        ]
    })
}

fn c(bytes: &[u8]) -> CString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap()
}

fuzz_target!(|ops: Vec<Op>| {
    let o = agent_options_new();
    assert!(!o.is_null());
    let mut mirror = Options::default();
    for op in ops.iter().take(32) {
        // SAFETY: `o` is live; strings are NUL-terminated; byte slices have their length.
        let code = unsafe {
            match op {
                Op::U32(i, v) => {
                    let (set, m) = u32_setter(*i);
                    m(&mut mirror, *v);
                    set(o, *v)
                }
                Op::Bool(i, v) => {
                    let (set, m) = bool_setter(*i);
                    m(&mut mirror, *v);
                    set(o, *v)
                }
                Op::MaxResponseBytes(v) => {
                    mirror.max_response_bytes = Some(*v);
                    agent_options_set_max_response_bytes(o, *v)
                }
                Op::CaPem(b) => {
                    mirror.ca_pem = Some(b.to_vec());
                    let p = if b.is_empty() {
                        std::ptr::null()
                    } else {
                        b.as_ptr()
                    };
                    agent_options_set_ca_pem(o, p, b.len())
                }
                Op::CaPemValid => {
                    mirror.ca_pem = Some(CA_PEM.as_bytes().to_vec());
                    agent_options_set_ca_pem(o, CA_PEM.as_ptr(), CA_PEM.len())
                }
                Op::CaFile(i) => {
                    let files = ca_files();
                    let f = &files[usize::from(*i) % files.len()];
                    mirror.ca_file = Some(f.clone());
                    let s = CString::new(f.as_str()).unwrap();
                    agent_options_set_ca_file(o, s.as_ptr())
                }
                Op::UserAgent(b) => {
                    let s = c(b);
                    let want = match s.to_str() {
                        Ok(ua) => {
                            mirror.user_agent = Some(ua.to_owned());
                            AGENT_CODE_OK
                        }
                        Err(_) => AGENT_CODE_INVALID_ARGUMENT,
                    };
                    let got = agent_options_set_user_agent(o, s.as_ptr());
                    assert_eq!(got, want, "user agent {s:?}");
                    got
                }
            }
        };
        if !matches!(op, Op::UserAgent(_)) {
            assert_eq!(code, AGENT_CODE_OK, "{op:?}");
        }
    }

    let sentinel = std::ptr::NonNull::<agent>::dangling().as_ptr();
    let mut out = sentinel;
    // SAFETY: live options, writable out pointer.
    let code = unsafe { agent_new_with_options(o, &mut out) };
    // SAFETY: from agent_options_new, freed once.
    unsafe { agent_options_free(o) };
    let core = Agent::new(&mirror);
    match code {
        agent_code::AGENT_CODE_OK => {
            assert!(core.is_ok(), "C accepted what the core refuses: {ops:?}");
            assert!(!out.is_null() && out != sentinel);
            if let Some(pem) = &mirror.ca_pem {
                assert!(
                    pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----"),
                    "PEM without a certificate block accepted"
                );
            }
            let mut st = agent_pool_stats::default();
            // SAFETY: a live agent, freed once below.
            unsafe {
                assert_eq!(agent_stats(out, &mut st), AGENT_CODE_OK);
                assert_eq!(
                    agent_keep_alive_enabled(out),
                    core.as_ref().unwrap().config().keep_alive
                );
                agent_free(out);
            }
            assert_eq!(
                (
                    st.requests,
                    st.connections_opened,
                    st.active,
                    st.idle,
                    st.queued
                ),
                (0, 0, 0, 0, 0)
            );
        }
        agent_code::AGENT_CODE_INVALID_OPTION => {
            assert!(core.is_err(), "C refused what the core accepts: {ops:?}");
            assert_eq!(out, sentinel, "output written on failure");
            // SAFETY: length query.
            assert!(unsafe { agent_last_error(std::ptr::null_mut(), 0) } > 0);
        }
        other => panic!("agent_new_with_options gave {other:?} for {ops:?}"),
    }
});
