//! SPEC §6.1–6.4: reuse on, reuse off per client, idle after the body, Connection: close.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn keep_alive_on_uses_one_connection_for_ten_requests() {
    let s = Server::start();
    let a = Agent::new(true);
    for i in 0..10 {
        let r = a.get(url(&s, "/")).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text(), "hello, world\n");
        assert_eq!(r.reused(), i > 0, "request {i}");
    }
    let st = s.stats();
    assert_eq!(st.accepted, 1);
    assert_eq!(st.requests, 10);
    let mut ports = st.remote_ports.clone();
    ports.dedup();
    assert_eq!(ports.len(), 1);
}

#[test]
fn keep_alive_off_for_one_client_while_another_keeps_reusing() {
    let s = Server::start();
    let off = Agent::new(false);
    let on = Agent::new(true);
    let mut off_ports = Vec::new();
    let mut on_ports = Vec::new();
    for _ in 0..5 {
        let r = off.get(url(&s, "/?echo=1")).unwrap();
        assert!(!r.reused());
        assert!(
            r.text()
                .to_ascii_lowercase()
                .contains(r#"["connection","close"]"#),
            "Connection: close not sent: {}",
            r.text()
        );
        off_ports.push(r.port());
        let r = on.get(url(&s, "/?echo=1")).unwrap();
        assert!(!r.text().to_ascii_lowercase().contains("close"));
        on_ports.push(r.port());
    }
    off_ports.sort();
    off_ports.dedup();
    assert_eq!(off_ports.len(), 5, "every off request on a new connection");
    on_ports.dedup();
    assert_eq!(on_ports.len(), 1, "the on client kept one connection");
    // The off client leaves nothing open: only the on client's connection remains.
    assert!(
        s.wait_for(Duration::from_secs(2), |st| st.open == 1),
        "{:?}",
        s.stats()
    );
    assert_eq!(s.stats().accepted, 6);
    let st = off.stats();
    assert_eq!((st.active, st.idle, st.keep_alive), (0, 0, false));
}

#[test]
fn connection_is_idle_after_the_body_and_then_reused() {
    let s = Server::start();
    let a = Agent::new(true);
    let r = a.get(url(&s, "/?bytes=100000&chunked=1&chunks=5")).unwrap();
    assert_eq!(r.body().len(), 100_000);
    let st = a.stats();
    assert_eq!((st.active, st.idle), (0, 1));
    let r2 = a.get(url(&s, "/")).unwrap();
    assert!(r2.reused());
    assert_eq!(r2.port(), r.port());
}

#[test]
fn connection_close_responses_are_never_pooled() {
    let s = Server::start();
    let a = Agent::new(true);
    for _ in 0..3 {
        let r = a.get(url(&s, "/?close=1")).unwrap();
        assert!(!r.reused());
    }
    assert_eq!(s.stats().accepted, 3);
    assert!(a.wait_stats(Duration::from_secs(2), |st| st.idle == 0 && st.active == 0));
}

#[test]
fn idle_connection_is_closed_by_the_client_after_free_socket_timeout() {
    let s = Server::start();
    let a = Options::new()
        .set(opt_u32(
            keepalive_agent::ffi::options::agent_options_set_free_socket_timeout_msecs,
            300,
        ))
        .build()
        .unwrap();
    a.get(url(&s, "/")).unwrap();
    assert_eq!(a.stats().idle, 1);
    // The client closes it: the server reads EOF (client_closed), well after 300 ms.
    assert!(s.wait_for(Duration::from_secs(3), |st| st.client_closed == 1));
    let st = a.stats();
    assert_eq!((st.idle, st.connections_closed), (0, 1));
    let r = a.get(url(&s, "/")).unwrap();
    assert!(!r.reused());
}

/// The keep-alive timer of the client socket connected to `port`, from /proc/net/tcp
/// (`tr` 2 = keepalive; `tm->when` in USER_HZ = 100 ticks per second). `None`: no timer.
fn keepalive_timer_secs(port: u16) -> Option<f64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = format!(":{port:04X}");
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address, rem_address, st (01 = established), tr:tm->when
        if f[2].ends_with(&want) && f[3] == "01" {
            let (tr, when) = f[5].split_once(':').unwrap();
            if tr == "02" {
                return Some(u64::from_str_radix(when, 16).unwrap() as f64 / 100.0);
            }
            return None;
        }
    }
    panic!("no client socket to port {port} in /proc/net/tcp");
}

#[test]
fn tcp_keepalive_is_set_at_connect_in_whole_seconds_and_only_with_keep_alive() {
    // 7500 ms rounds up to TCP_KEEPIDLE = 8 s.
    let on = agent_new_checked(true, 7500);
    let off = agent_new_checked(false, 7500);
    for (agent, expect) in [(&on, true), (&off, false)] {
        let s = Server::start(); // one client socket per server
        let (_, rx) = agent.start(Req::get(url(&s, "/?delay_ms=700")));
        std::thread::sleep(Duration::from_millis(300));
        let timer = keepalive_timer_secs(s.http_port());
        rx.recv().unwrap().unwrap();
        match (expect, timer) {
            (true, Some(t)) => {
                assert!(t > 7.0 && t <= 8.0, "TCP_KEEPIDLE should be 8 s, timer {t}")
            }
            (false, None) => {}
            (e, t) => panic!("keep_alive {e}: unexpected keepalive timer {t:?}"),
        }
    }
}

fn agent_new_checked(keep_alive: bool, msecs: u32) -> Agent {
    let a = keepalive_agent::ffi::agent::agent_new(keep_alive, msecs);
    assert!(!a.is_null(), "{}", last_error());
    Agent(a)
}

#[test]
fn refused_port_bad_url_and_header_injection_have_their_codes() {
    let s = Server::start();
    let a = Agent::new(true);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = a.get(format!("http://127.0.0.1:{port}/")).unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_CONNECT_REFUSED);
    assert!(e.message.contains("refused"), "{}", e.message);

    for bad in [
        "not a url",
        "ftp://127.0.0.1/",
        "http://",
        "http://127.0.0.1:99999/",
    ] {
        let e = a.get(bad).unwrap_err();
        assert_eq!(e.code, C::AGENT_CODE_INVALID_URL, "{bad}");
        assert!(!e.message.is_empty());
    }

    for (k, v) in [
        ("X-A", "a\r\nInjected: yes"),
        ("X-A", "a\nb"),
        ("Bad Name", "v"),
        ("X:Y", "v"),
    ] {
        let e = a.send(Req::get(url(&s, "/")).header(k, v)).unwrap_err();
        assert_eq!(e.code, C::AGENT_CODE_INVALID_ARGUMENT, "{k:?}: {v:?}");
    }
    for m in ["GE T", "GET\r\nX: y", "", "G\"ET"] {
        let e = a.send(Req::get(url(&s, "/")).method(m)).unwrap_err();
        assert_eq!(e.code, C::AGENT_CODE_INVALID_ARGUMENT, "{m:?}");
    }
    let e = a
        .send(Req::get(url(&s, "/")).timeout(u32::MAX))
        .unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_INVALID_ARGUMENT);
    // Nothing reached the server.
    assert_eq!(s.stats().requests, 0);
    assert_eq!(s.stats().accepted, 0);
}

#[test]
fn request_and_response_details() {
    let s = Server::start();
    let a = Agent::new(true);
    let r = a
        .send(
            Req::get(url(&s, "/x?echo=1"))
                .method("POST")
                .header("X-One", "1")
                .header("X-Rep", "a")
                .header("X-Rep", "b")
                .body(b"0123456789"),
        )
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), 11);
    let echo = r.text();
    assert!(echo.contains(r#""method":"POST""#), "{echo}");
    assert!(echo.contains(r#""body_len":10"#), "{echo}");
    assert!(
        echo.to_ascii_lowercase()
            .contains(r#"["x-rep","a"],["x-rep","b"]"#),
        "{echo}"
    );
    assert!(
        echo.contains("keepalive-agent/"),
        "default user agent: {echo}"
    );
    assert!(
        echo.to_ascii_lowercase().contains(r#"["host","127.0.0.1:"#),
        "{echo}"
    );
    assert_eq!(r.header("X-REMOTE-PORT"), r.header("x-remote-port"));
    assert!(r.headers().iter().any(|(k, _)| k == "content-type"));
    let t = r.timings();
    assert!(t.total_us >= t.ttfb_us && t.ttfb_us >= t.sent_us);
    assert!(t.connect_us > 0, "first request connects");
    let r2 = a.get(url(&s, "/?status=404")).unwrap();
    assert_eq!(r2.status(), 404);
    assert_eq!(r2.timings().connect_us, 0, "reused: no connect");
}

#[test]
fn one_connection_serves_blocking_and_async_callers_and_other_threads() {
    for tls in [false, true] {
        let s = Server::start();
        let a = if tls {
            tls_agent(&s, true)
        } else {
            Agent::new(true)
        };
        let u = if tls {
            tls_url(s.https_port(), "/")
        } else {
            url(&s, "/")
        };
        for i in 0..6 {
            let r = if i % 2 == 0 {
                a.get(u.clone()).unwrap()
            } else {
                a.start(Req::get(u.clone())).1.recv().unwrap().unwrap()
            };
            assert_eq!(r.text(), "hello, world\n");
            assert_eq!(r.reused(), i > 0, "request {i}");
        }
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    for _ in 0..3 {
                        assert_eq!(a.get(u.clone()).unwrap().status(), 200);
                        std::thread::sleep(Duration::from_millis(30)); // idle: the monitor adopts it
                    }
                });
            }
        });
        assert!(s.stats().accepted <= 2, "tls {tls}: {:?}", s.stats());
        assert_eq!(a.stats().errors, 0);
    }
}
