//! The response getters and the other entry points taking caller memory:
//! `agent_response_header` (arbitrary names as raw C strings), `agent_response_header_at`
//! (arbitrary indexes), `agent_last_error` (arbitrary buffer sizes) and `agent_code_str`
//! (arbitrary values), on one fixed response fetched at start-up from a tiny loopback
//! server inside this process.
//!
//! Invariants: never a panic; a lookup finds exactly the headers the server sent, by
//! case-insensitive name, and gives the first value byte for byte; anything else is
//! NOT_FOUND (or INVALID_ARGUMENT for a non-UTF-8 name) with the outputs untouched; an index
//! past the end is NOT_FOUND; `agent_last_error` never writes past `cap`, always
//! NUL-terminates and returns the full length; every code has a name.
#![no_main]

use std::ffi::{CStr, CString, c_char};
use std::io::{Read, Write};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use keepalive_agent::ffi::agent::*;
use keepalive_agent::ffi::agent_code::*;
use keepalive_agent::ffi::response::*;
use keepalive_agent::ffi::{agent_code_str, agent_last_error};
use libfuzzer_sys::fuzz_target;

/// The headers the server sends (name, value), in order; names repeat and vary in case.
const HEADERS: &[(&str, &[u8])] = &[
    ("Content-Type", b"text/plain"),
    ("X-Repeat", b"first"),
    ("x-repeat", b"second"),
    ("X-Empty", b""),
    ("X-Tab", b"a\tb"),
    ("X-Obs-Text", b"caf\xc3\xa9 \xff"),
    ("X-Long", &[b'L'; 2000]),
    ("Set-Cookie", b"a=1; Path=/"),
];
const BODY: &[u8] = b"fuzz\n";

fn response() -> *const agent_response {
    static R: OnceLock<usize> = OnceLock::new();
    *R.get_or_init(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            let mut tmp = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut tmp).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&tmp[..n]);
            }
            let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
            for (n, v) in HEADERS {
                out.extend_from_slice(n.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", BODY.len()).as_bytes());
            out.extend_from_slice(BODY);
            s.write_all(&out).unwrap();
            let _ = s.read(&mut tmp); // until the agent closes
        });
        let a = agent_new(false, 0);
        assert!(!a.is_null());
        let url = CString::new(format!("http://127.0.0.1:{port}/")).unwrap();
        let mut r = std::ptr::null_mut();
        // SAFETY: live agent, valid strings, writable out pointer.
        let code = unsafe {
            agent_request(
                a,
                c"GET".as_ptr(),
                url.as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                5000,
                &mut r,
            )
        };
        assert_eq!(code, AGENT_CODE_OK);
        // SAFETY: the response outlives its agent; the agent is not used again.
        unsafe { agent_free(a) };
        r as usize
    }) as *const agent_response
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    name: &'a [u8],
    index: usize,
    cap: u16,
    code: u32,
}

fn c(bytes: &[u8]) -> CString {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap()
}

fuzz_target!(|inp: Input| {
    let r = response();
    let name = c(inp.name);
    let sentinel: *const c_char = std::ptr::NonNull::<c_char>::dangling().as_ptr();
    let (mut v, mut vl) = (sentinel, 7usize);
    // SAFETY: live response, NUL-terminated name, writable outputs.
    let code = unsafe { agent_response_header(r, name.as_ptr(), &mut v, &mut vl) };
    match name.to_str() {
        Err(_) => assert_eq!(code, AGENT_CODE_INVALID_ARGUMENT),
        Ok(n) => match HEADERS.iter().find(|(h, _)| h.eq_ignore_ascii_case(n)) {
            Some((_, want)) => {
                assert_eq!(code, AGENT_CODE_OK, "{n:?}");
                // SAFETY: `vl` bytes at `v`, valid while the response lives.
                let got = unsafe { std::slice::from_raw_parts(v.cast::<u8>(), vl) };
                assert_eq!(got, *want, "{n:?}");
            }
            None if n.eq_ignore_ascii_case("content-length") => {
                assert_eq!(code, AGENT_CODE_OK)
            }
            None => {
                assert_eq!(code, AGENT_CODE_NOT_FOUND, "{n:?}");
                assert_eq!((v, vl), (sentinel, 7), "outputs written on failure");
            }
        },
    }

    // SAFETY: live response.
    let count = unsafe { agent_response_header_count(r) };
    assert_eq!(count, HEADERS.len() + 1);
    let (mut k, mut kl) = (sentinel, 7usize);
    let (mut v, mut vl) = (sentinel, 7usize);
    // SAFETY: live response, writable outputs.
    let code = unsafe { agent_response_header_at(r, inp.index, &mut k, &mut kl, &mut v, &mut vl) };
    if inp.index < count {
        assert_eq!(code, AGENT_CODE_OK);
        // SAFETY: as above.
        let key = unsafe { std::slice::from_raw_parts(k.cast::<u8>(), kl) };
        assert!(!key.is_empty() && !key.iter().any(|b| b.is_ascii_uppercase()));
    } else {
        assert_eq!(code, AGENT_CODE_NOT_FOUND);
        assert_eq!((k, kl, v, vl), (sentinel, 7, sentinel, 7));
    }

    // agent_last_error into a buffer of `cap` bytes with a guard zone behind it.
    let cap = usize::from(inp.cap % 300);
    let mut buf = vec![0xAAu8; cap + 16];
    // SAFETY: `buf` has at least `cap` writable bytes.
    let full = unsafe { agent_last_error(buf.as_mut_ptr().cast(), cap) };
    // SAFETY: length query.
    assert_eq!(full, unsafe { agent_last_error(std::ptr::null_mut(), 0) });
    assert!(
        buf[cap..].iter().all(|&b| b == 0xAA),
        "wrote past cap {cap}"
    );
    if cap > 0 {
        let n = full.min(cap - 1);
        assert_eq!(buf[n], 0, "not NUL-terminated");
        assert!(!buf[..n].contains(&0));
    }

    // SAFETY: a static string for every value.
    let s = unsafe { CStr::from_ptr(agent_code_str(inp.code)) };
    assert!(s.to_bytes().starts_with(b"AGENT_CODE_"));

    let (mut bp, mut bl) = (std::ptr::null(), 0usize);
    // SAFETY: live response, writable outputs.
    assert_eq!(
        unsafe { agent_response_body(r, &mut bp, &mut bl) },
        AGENT_CODE_OK
    );
    // SAFETY: `bl` bytes at `bp`.
    assert_eq!(unsafe { std::slice::from_raw_parts(bp, bl) }, BODY);
});
