//! Networks through the C ABI against the test server: happy eyeballs over a resolve
//! override, the DNS cache and its statistics, the absolute form and credentials of a
//! request through a plain-HTTP proxy, and bad values of the new options. Proxies from
//! Debian (squid, tinyproxy) and nginx's TLS servers are exercised by `make test-network`.

mod common;
use common::*;
use std::ffi::CString;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use keepalive_agent::ffi::agent_code::*;
use keepalive_agent::ffi::options::*;

fn set_str(
    f: unsafe extern "C" fn(
        *mut agent_options,
        *const std::ffi::c_char,
    ) -> keepalive_agent::ffi::agent_code,
    v: &str,
) -> impl FnOnce(*mut agent_options) -> keepalive_agent::ffi::agent_code {
    let c = CString::new(v).unwrap();
    // SAFETY: live options and a NUL-terminated string.
    move |o| unsafe { f(o, c.as_ptr()) }
}

/// A listener on [::1]:`port` whose accept queue is full: the kernel drops further SYNs,
/// so a connect to it hangs (a black hole, on loopback). `None` if the port is taken.
fn black_hole_v6(port: u16) -> Option<(socket2::Socket, Vec<TcpStream>)> {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let l = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
    l.set_only_v6(true).unwrap();
    l.bind(&addr.into()).ok()?;
    l.listen(0).unwrap();
    let mut fill = Vec::new();
    for _ in 0..3 {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fill.push(TcpStream::from(s));
    }
    std::thread::sleep(Duration::from_millis(100));
    Some((l, fill))
}

/// SYN_SENT sockets (state 02 in /proc/net/tcp6) to [::1]:`port`.
fn syn_sent_to_v6(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    let remote = format!("00000000000000000000000001000000:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == remote && f[3] == "02"
        })
        .count()
}

#[test]
fn happy_eyeballs_gets_past_a_silent_first_address() {
    // The test server's port, with a black hole on the same port of ::1.
    let (s, _hole) = (0..20)
        .find_map(|_| {
            let s = Server::start();
            black_hole_v6(s.http_port()).map(|h| (s, h))
        })
        .expect("no port free on both 127.0.0.1 and ::1");
    let port = s.http_port();
    // The black hole's own filler connects past its queue are in SYN_SENT themselves.
    let fillers_waiting = syn_sent_to_v6(port);
    let a = Options::new()
        .set(set_str(
            agent_options_add_resolve,
            &format!("he.test:{port}:[::1],127.0.0.1"),
        ))
        .set(opt_u32(agent_options_set_connect_timeout_msecs, 10_000))
        .build()
        .unwrap();
    let start = Instant::now();
    let r = a.get(format!("http://he.test:{port}/")).unwrap();
    let took = start.elapsed();
    assert_eq!(r.status(), 200);
    // One delay (250 ms) after the silent address, not the connect timeout (10 s).
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(s.stats().accepted, 1);
    // The losing attempt was closed: no connect to ::1 is left hanging.
    let deadline = Instant::now() + Duration::from_secs(2);
    while syn_sent_to_v6(port) > fillers_waiting && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(syn_sent_to_v6(port), fillers_waiting);
    // The override needed no lookup.
    assert_eq!(a.stats().dns_lookups, 0);
}

#[test]
fn the_dns_cache_serves_a_name_for_its_lifetime() {
    let s = Server::start();
    let a = Options::new()
        .set(opt_bool(agent_options_set_keep_alive, false))
        .set(opt_u32(agent_options_set_dns_cache_msecs, 400))
        .build()
        .unwrap();
    let url = format!("http://localhost:{}/", s.http_port());
    for _ in 0..2 {
        assert_eq!(a.get(url.clone()).unwrap().status(), 200);
    }
    let st = a.stats();
    assert_eq!((st.dns_lookups, st.dns_cache_hits), (1, 1));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(a.get(url.clone()).unwrap().status(), 200);
    assert_eq!(a.stats().dns_lookups, 2);

    let uncached = Options::new()
        .set(opt_bool(agent_options_set_keep_alive, false))
        .set(opt_u32(agent_options_set_dns_cache_msecs, 0))
        .build()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(uncached.get(url.clone()).unwrap().status(), 200);
    }
    let st = uncached.stats();
    assert_eq!((st.dns_lookups, st.dns_cache_hits), (2, 0));
}

#[test]
fn through_a_plain_http_proxy_the_target_is_absolute_and_credentials_go_to_the_proxy() {
    // The test server plays the proxy: it echoes what it was sent.
    let s = Server::start();
    let a = Options::new()
        .set(set_str(
            agent_options_set_proxy,
            &format!("http://u%40x:s%40cret@127.0.0.1:{}", s.http_port()),
        ))
        .set(opt_bool(agent_options_set_proxy_from_env, false))
        .build()
        .unwrap();
    let r = a.get("http://origin.test:8080/p?echo=1").unwrap();
    let body = r.text();
    assert!(
        body.contains(r#""target":"http://origin.test:8080/p?echo=1""#),
        "{body}"
    );
    assert!(body.contains(r#"["host","origin.test:8080"]"#), "{body}");
    // "u@x:s@cret" in base64
    assert!(
        body.contains(r#"["proxy-authorization","Basic dUB4OnNAY3JldA=="]"#),
        "{body}"
    );
    // A second request reuses the connection to the proxy, for another origin too.
    let r2 = a.get("http://origin.test:8080/again?echo=1").unwrap();
    assert!(r2.reused());
}

#[test]
fn bad_network_options_are_refused_at_creation_naming_them() {
    for (f, v, want) in [
        (
            agent_options_set_proxy as unsafe extern "C" fn(_, _) -> _,
            "socks5://127.0.0.1:1080",
            "unsupported proxy scheme",
        ),
        (agent_options_set_proxy, "http://user:hunter2@:1", "no host"),
        (
            agent_options_add_resolve,
            "example.test:80",
            "resolve entry",
        ),
        (
            agent_options_add_resolve,
            "example.test:80:not-ip",
            "not an IP",
        ),
    ] {
        let e = Options::new().set(set_str(f, v)).build().unwrap_err();
        assert_eq!(e.code, AGENT_CODE_INVALID_OPTION, "{v}");
        assert!(e.message.contains(want), "{v}: {}", e.message);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
    }
    let e = Options::new()
        .set(set_str(
            agent_options_set_client_cert_file,
            "/nonexistent/c.pem",
        ))
        .set(set_str(
            agent_options_set_client_key_file,
            "/nonexistent/k.pem",
        ))
        .build()
        .unwrap_err();
    assert_eq!(e.code, AGENT_CODE_INVALID_OPTION);
    assert!(e.message.contains("/nonexistent/c.pem"), "{}", e.message);
    let pem = b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
    let e = Options::new()
        // SAFETY: live options and a readable buffer.
        .set(|o| unsafe { agent_options_set_client_cert_pem(o, pem.as_ptr(), pem.len()) })
        .build()
        .unwrap_err();
    assert_eq!(e.code, AGENT_CODE_INVALID_OPTION);
    assert!(e.message.contains("private key"), "{}", e.message);
}
