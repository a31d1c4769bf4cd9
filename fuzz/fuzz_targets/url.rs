//! URL parsing (`keepalive_agent::parse_url`) on arbitrary text.
//!
//! Invariants: never a panic; a refusal is `InvalidUrl` with a message; an accepted URL has
//! an http/https scheme, a non-empty lowercase host without brackets, a port > 0, a request
//! target starting with `/` with no fragment, no whitespace and no control bytes (nothing
//! that could split the request line), a `Host` value without CR/LF/NUL; and parsing is a
//! fixed point: the origin and target rebuilt into a URL parse to the same thing.
#![no_main]

use keepalive_agent::ErrorKind;
use keepalive_agent::{Scheme, parse_url};
use libfuzzer_sys::fuzz_target;

fn check(url: &str) {
    let res = parse_url(url);
    let t = match res {
        Ok(t) => t,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{url:?}: {e}");
            assert!(!e.message().is_empty());
            return;
        }
    };
    let o = &t.origin;
    assert!(!o.host.is_empty(), "{url:?}: empty host");
    assert!(o.port > 0, "{url:?}: port 0");
    assert!(
        !o.host.starts_with('[') && !o.host.ends_with(']'),
        "{url:?}: host {:?} keeps brackets",
        o.host
    );
    assert!(
        !o.host.bytes().any(|b| b.is_ascii_uppercase()),
        "{url:?}: host {:?} not lowercased",
        o.host
    );
    assert!(
        !o.host
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'/' || b == b'@'),
        "{url:?}: host {:?}",
        o.host
    );
    let path = t.path.to_string();
    assert!(path.starts_with('/'), "{url:?}: target {path:?}");
    assert!(!path.contains('#'), "{url:?}: fragment sent: {path:?}");
    assert!(
        !path.bytes().any(|b| b.is_ascii_control() || b == b' '),
        "{url:?}: target {path:?} could split the request line"
    );
    let host = t.host.as_bytes();
    assert!(
        !host.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
        "{url:?}: Host {host:?}"
    );
    // The scheme's default port is left out of Host, any other port is kept.
    let default = match o.scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let host_str = String::from_utf8_lossy(host);
    if o.port != default {
        assert!(
            host_str.ends_with(&format!(":{}", o.port)),
            "{url:?}: Host {host_str:?} without port {}",
            o.port
        );
    }

    // Fixed point: origin + target parse to the same origin and target.
    let again = format!("{o}{path}");
    let t2 = parse_url(&again).unwrap_or_else(|e| panic!("{url:?} -> {again:?}: {e}"));
    assert_eq!(*t2.origin, *t.origin, "{url:?} -> {again:?}");
    assert_eq!(t2.path, t.path, "{url:?} -> {again:?}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
        // The same text behind each scheme, so that most inputs reach the host/port/path
        // code instead of stopping at "no scheme".
        if !s.contains("://") && s.len() < 4096 {
            check(&format!("http://{s}"));
            check(&format!("https://{s}"));
        }
    }
});
