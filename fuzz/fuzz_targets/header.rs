//! Header and method validation (`parse_header`, `parse_method`, `Request::header`) on
//! arbitrary bytes.
//!
//! Invariants: never a panic; a refusal is `InvalidArgument`; an accepted name is a
//! non-empty RFC 9110 token; an accepted value has no CR, LF, NUL or other control byte
//! except tab; any name or value holding CR, LF or NUL is refused (no header injection);
//! a method is accepted exactly when it is a non-empty token, and is kept byte for byte.
#![no_main]

use arbitrary::Arbitrary;
use keepalive_agent::{Request, parse_header, parse_method};
use keepalive_agent::{Error, ErrorKind};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    name: &'a [u8],
    value: &'a [u8],
    method: &'a str,
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn refused(e: &Error, what: &str) {
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}: {e}");
    assert!(!e.message().is_empty());
}

fuzz_target!(|inp: Input| {
    let injects = |b: &[u8]| b.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0);
    match parse_header(inp.name, inp.value) {
        Ok((n, v)) => {
            assert!(!inp.name.is_empty());
            assert!(
                inp.name.iter().all(|&b| is_tchar(b)),
                "name {:?} accepted",
                inp.name
            );
            assert!(
                n.as_str()
                    .eq_ignore_ascii_case(&String::from_utf8_lossy(inp.name))
            );
            assert!(!injects(inp.name) && !injects(inp.value));
            assert!(
                v.as_bytes()
                    .iter()
                    .all(|&b| b == b'\t' || !(b.is_ascii_control())),
                "value {:?} accepted",
                inp.value
            );
            assert_eq!(v.as_bytes(), inp.value, "the value is sent as given");
        }
        Err(e) => refused(&e, "header"),
    }
    if injects(inp.name) || injects(inp.value) {
        assert!(parse_header(inp.name, inp.value).is_err());
    }

    let token = !inp.method.is_empty() && inp.method.bytes().all(is_tchar);
    match parse_method(inp.method) {
        Ok(m) => {
            assert!(token, "method {:?} accepted", inp.method);
            assert_eq!(m.as_str(), inp.method);
        }
        Err(e) => {
            refused(&e, "method");
            assert!(!token, "token method {:?} refused", inp.method);
        }
    }

    // The same through the request builder (UTF-8 only there).
    if let (Ok(name), Ok(value)) = (
        std::str::from_utf8(inp.name),
        std::str::from_utf8(inp.value),
    ) && let Ok(req) = Request::new("GET", "http://127.0.0.1:1/")
    {
        match req.header(name, value) {
            Ok(r) => {
                assert!(parse_header(inp.name, inp.value).is_ok());
                assert_eq!(r.headers.len(), 1);
            }
            Err(e) => refused(&e, "Request::header"),
        }
    }
});
