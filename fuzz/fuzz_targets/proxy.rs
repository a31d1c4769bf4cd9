//! The proxy settings' parsers on arbitrary text: proxy URLs (`keepalive_agent::Proxies`,
//! as the `proxy` option and the environment variables give them), `NO_PROXY` lists, and
//! `resolve` entries (through option validation).
//!
//! Invariants: never a panic; a refused proxy URL or resolve entry is `InvalidOption` with
//! a message; an accepted proxy has a non-empty host without brackets or blanks and a port
//! > 0, and its URL (without credentials) parses to the same proxy without credentials; a
//! `NO_PROXY` list of `*` matches every host, and matching never panics.
#![no_main]

use keepalive_agent::{ErrorKind, NoProxy, Options, Proxies};
use libfuzzer_sys::fuzz_target;

fn proxy(text: &str) {
    let env = |_: &str| None;
    match Proxies::configure(Some(text), None, false, env) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidOption, "{text:?}: {e}");
            assert!(!e.message().is_empty());
        }
        Ok(p) => {
            let Some(http) = p.http else {
                assert!(text.trim().is_empty(), "{text:?}: accepted as no proxy");
                return;
            };
            assert!(!http.host.is_empty(), "{text:?}");
            assert!(http.port > 0, "{text:?}");
            assert!(
                !http
                    .host
                    .bytes()
                    .any(|b| matches!(b, b'[' | b']' | b' ' | b'@' | b'/') || b.is_ascii_control()),
                "{text:?}: host {:?}",
                http.host
            );
            let again = Proxies::configure(Some(&http.url()), None, false, env)
                .unwrap_or_else(|e| panic!("{text:?} -> {}: {e}", http.url()));
            let again = again.http.unwrap();
            assert_eq!(
                (again.scheme, &again.host, again.port),
                (http.scheme, &http.host, http.port),
                "{text:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    proxy(s);
    if !s.contains("://") && s.len() < 4096 {
        proxy(&format!("http://{s}"));
    }
    // NO_PROXY: the first line is the list, the others are hosts to match.
    let mut lines = s.lines();
    let list = NoProxy::parse(lines.next().unwrap_or(""));
    let all = NoProxy::parse("*");
    for host in lines.take(16) {
        let _ = list.matches(host);
        assert!(all.matches(host));
    }
    // resolve entries, validated as an agent's option.
    let o = Options {
        resolve: vec![s.to_string()],
        ..Default::default()
    };
    if let Err(e) = o.validate_with_env(|_| None) {
        assert_eq!(e.kind(), ErrorKind::InvalidOption, "{s:?}: {e}");
    }
});
