//! The C entry points taking strings and byte arrays: `agent_request` and
//! `agent_request_async` with arbitrary method, URL, headers, body and timeout.
//!
//! Network: nothing beyond one loopback port where nothing listens (bound, never
//! listening: every connect is refused at once). A URL that parses is always replaced by
//! `http://127.0.0.1:<that port>/...`, so no input can make the agent connect elsewhere.
//!
//! Invariants: never a panic; the code is exactly what the validation order of the C API
//! gives (non-UTF-8 or invalid method → INVALID_ARGUMENT, bad URL → INVALID_URL, header with
//! CR/LF/NUL or a non-token name → INVALID_ARGUMENT, absurd timeout → INVALID_ARGUMENT,
//! otherwise the connect is refused); the output is written only on success; a failure
//! leaves a message; an async call either fails at once without calling back, or calls
//! back exactly once.
#![no_main]

use std::ffi::{CString, c_void};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use keepalive_agent::ffi::agent::*;
use keepalive_agent::ffi::agent_code::{self, *};
use keepalive_agent::ffi::agent_last_error;
use keepalive_agent::ffi::options::*;
use keepalive_agent::ffi::response::*;
use keepalive_agent::{parse_header, parse_url};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Url<'a> {
    /// Arbitrary bytes (replaced by the loopback URL if they parse).
    Raw(&'a [u8]),
    /// The refusing loopback origin followed by arbitrary path/query/fragment bytes.
    Loopback(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: &'a [u8],
    url: Url<'a>,
    headers: Vec<(&'a [u8], &'a [u8])>,
    body: &'a [u8],
    timeout_msecs: u32,
    asynchronous: bool,
}

struct Fixture {
    agent: usize,
    port: u16,
    _refuser: socket2::Socket,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        let o = agent_options_new();
        let mut a = std::ptr::null_mut();
        // SAFETY: live options, writable out pointer.
        unsafe {
            assert_eq!(
                agent_options_set_connect_timeout_msecs(o, 500),
                AGENT_CODE_OK
            );
            assert_eq!(
                agent_options_set_headers_timeout_msecs(o, 500),
                AGENT_CODE_OK
            );
            assert_eq!(agent_options_set_body_timeout_msecs(o, 500), AGENT_CODE_OK);
            assert_eq!(agent_new_with_options(o, &mut a), AGENT_CODE_OK);
            agent_options_free(o);
        }
        Fixture {
            agent: a as usize,
            port,
            _refuser: s,
        }
    })
}

/// Bytes as a C string: cut at the first NUL, as C would read them.
fn c(bytes: &[u8]) -> CString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap()
}

/// What the C API must answer, following its validation order.
fn expected(
    method: &CString,
    url: &CString,
    headers: &[(CString, CString)],
    timeout: u32,
) -> agent_code {
    let (Ok(m), Ok(u)) = (method.to_str(), url.to_str()) else {
        return AGENT_CODE_INVALID_ARGUMENT;
    };
    if keepalive_agent::parse_method(m).is_err() {
        return AGENT_CODE_INVALID_ARGUMENT;
    }
    if parse_url(u).is_err() {
        return AGENT_CODE_INVALID_URL;
    }
    for (n, v) in headers {
        let (n, v) = (n.as_bytes(), v.as_bytes());
        if parse_header(n, v).is_err() {
            return AGENT_CODE_INVALID_ARGUMENT;
        }
        assert!(
            !n.iter().chain(v).any(|&b| b == b'\r' || b == b'\n'),
            "header with CR/LF passed validation: {n:?}: {v:?}"
        );
    }
    if u64::from(timeout) > keepalive_agent::limit("max_msecs").expect("a limit") {
        return AGENT_CODE_INVALID_ARGUMENT;
    }
    AGENT_CODE_CONNECT_REFUSED
}

fn last_error_len() -> usize {
    // SAFETY: NULL with capacity 0 asks for the length only.
    unsafe { agent_last_error(std::ptr::null_mut(), 0) }
}

struct Done {
    calls: AtomicU32,
    code: Mutex<Option<agent_code>>,
    cv: Condvar,
}

unsafe extern "C" fn on_done(ud: *mut c_void, code: agent_code, resp: *mut agent_response) {
    // SAFETY: `ud` is a reference of the `Arc<Done>` given up by the caller for this call.
    let d = unsafe { Arc::from_raw(ud as *const Done) };
    d.calls.fetch_add(1, Ordering::SeqCst);
    if !resp.is_null() {
        // SAFETY: a response we own.
        unsafe { agent_response_free(resp) };
    }
    *d.code.lock().unwrap() = Some(code);
    d.cv.notify_all();
}

fuzz_target!(|inp: Input| {
    let f = fixture();
    let agent = f.agent as *const agent;
    let method = c(inp.method);
    let loopback = |suffix: &[u8]| {
        let mut u = format!("http://127.0.0.1:{}/", f.port).into_bytes();
        u.extend_from_slice(suffix);
        c(&u)
    };
    let url = match inp.url {
        Url::Raw(b) => {
            let u = c(b);
            match u.to_str().map(parse_url) {
                Ok(Ok(_)) => loopback(b""),
                _ => u,
            }
        }
        Url::Loopback(b) => loopback(b),
    };
    // Defence in depth: whatever parses here goes to the refusing port only.
    if let Ok(Ok(t)) = url.to_str().map(parse_url) {
        assert_eq!(
            (t.origin.host.as_str(), t.origin.port),
            ("127.0.0.1", f.port)
        );
    }
    let headers: Vec<(CString, CString)> = inp
        .headers
        .iter()
        .take(16)
        .map(|(n, v)| (c(n), c(v)))
        .collect();
    let c_headers: Vec<agent_header> = headers
        .iter()
        .map(|(n, v)| agent_header {
            name: n.as_ptr(),
            value: v.as_ptr(),
        })
        .collect();
    let want = expected(&method, &url, &headers, inp.timeout_msecs);
    // A tiny deadline may pass before the refusal arrives.
    let ok_codes = |got: agent_code| {
        got == want
            || (want == AGENT_CODE_CONNECT_REFUSED
                && inp.timeout_msecs > 0
                && got == AGENT_CODE_TIMEOUT)
    };
    let (hp, hn) = if c_headers.is_empty() {
        (std::ptr::null(), 0)
    } else {
        (c_headers.as_ptr(), c_headers.len())
    };
    let (bp, bn) = if inp.body.is_empty() {
        (std::ptr::null(), 0)
    } else {
        (inp.body.as_ptr(), inp.body.len())
    };

    if !inp.asynchronous {
        let sentinel = std::ptr::NonNull::<agent_response>::dangling().as_ptr();
        let mut out = sentinel;
        // SAFETY: all pointers live for the call; counts match.
        let got = unsafe {
            agent_request(
                agent,
                method.as_ptr(),
                url.as_ptr(),
                hp,
                hn,
                bp,
                bn,
                inp.timeout_msecs,
                &mut out,
            )
        };
        assert!(ok_codes(got), "got {got:?}, want {want:?} for {inp:?}");
        assert_eq!(out, sentinel, "output written on failure");
        assert!(last_error_len() > 0, "no message for {got:?}");
        return;
    }

    let done = Arc::new(Done {
        calls: AtomicU32::new(0),
        code: Mutex::new(None),
        cv: Condvar::new(),
    });
    let mut id = 0u64;
    let ud = Arc::into_raw(done.clone()) as *mut c_void;
    // SAFETY: as above; the callback owns the reference behind `ud`.
    let got = unsafe {
        agent_request_async(
            agent,
            method.as_ptr(),
            url.as_ptr(),
            hp,
            hn,
            bp,
            bn,
            inp.timeout_msecs,
            Some(on_done),
            ud,
            &mut id,
        )
    };
    if got != AGENT_CODE_OK {
        assert_eq!(got, want, "async start for {inp:?}");
        assert_ne!(want, AGENT_CODE_CONNECT_REFUSED);
        assert!(last_error_len() > 0);
        std::thread::sleep(Duration::from_micros(50));
        assert_eq!(
            done.calls.load(Ordering::SeqCst),
            0,
            "callback after a refused start"
        );
        // SAFETY: never handed to a callback: take the reference back.
        drop(unsafe { Arc::from_raw(ud as *const Done) });
        return;
    }
    assert_eq!(want, AGENT_CODE_CONNECT_REFUSED, "async accepted {inp:?}");
    let g = done.code.lock().unwrap();
    let (g, _) = done
        .cv
        .wait_timeout_while(g, Duration::from_secs(10), |c| c.is_none())
        .unwrap();
    let code = g.expect("no callback within 10 s");
    drop(g);
    assert!(ok_codes(code), "callback got {code:?}");
    // Exactly once: a late second call would show up here.
    std::thread::sleep(Duration::from_micros(200));
    assert_eq!(done.calls.load(Ordering::SeqCst), 1);
});
