//! SPEC §6.5–6.7, 6.9–6.18, 6.20–6.22, 6.24–6.26: the pool against the test server. Each
//! test asserts what the server saw (connections, remote ports, concurrency).

mod common;
use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use keepalive_agent::ffi::options::*;

fn agent_with(f: impl FnOnce(Options) -> Options) -> Agent {
    f(Options::new()).build().unwrap()
}

#[test]
fn unread_or_oversized_bodies_are_never_reused() {
    let s = Server::start();
    let a = agent_with(|o| o.set(|o| unsafe { agent_options_set_max_response_bytes(o, 1000) }));
    // Declared too large: refused before reading; streamed too large: refused mid-body.
    for path in ["/?bytes=5000", "/?bytes=5000&chunked=1&chunks=5"] {
        let e = a.get(url(&s, path)).unwrap_err();
        assert_eq!(
            e.code,
            C::AGENT_CODE_RESPONSE_TOO_LARGE,
            "{path}: {}",
            e.message
        );
        assert_eq!(a.stats().idle, 0);
    }
    let r = a.get(url(&s, "/")).unwrap();
    assert!(!r.reused());
    assert_eq!(s.stats().accepted, 3);
    let st = a.stats();
    assert_eq!(st.connections_errored, 2);
}

fn idle_close_is_silent(param: &str) {
    let s = Server::start();
    let a = Agent::new(true);
    let first = a.get(url(&s, &format!("/?{param}=100"))).unwrap();
    assert_eq!(a.stats().idle, 1);
    assert!(s.wait_for(Duration::from_secs(2), |st| st.server_closed == 1));
    // The pool notices within 200 ms.
    assert!(
        a.wait_stats(Duration::from_millis(200), |st| st.idle == 0),
        "{param}: idle connection still pooled 200 ms after the server closed it"
    );
    let r = a.get(url(&s, "/")).unwrap();
    assert!(!r.reused());
    assert_ne!(r.port(), first.port());
    let st = a.stats();
    assert_eq!((st.errors, st.retries, st.connections_closed), (0, 0, 1));
}

#[test]
fn server_fin_on_an_idle_connection_is_handled_silently() {
    idle_close_is_silent("idle_close_ms");
}

#[test]
fn server_rst_on_an_idle_connection_is_handled_silently() {
    idle_close_is_silent("idle_rst_ms");
}

#[test]
fn keep_alive_hint_shortens_the_idle_timeout() {
    let s = Server::start();
    let a = Agent::new(true); // free_socket_timeout 4 s, buffer 1 s
    let t = Instant::now();
    a.get(url(&s, "/?ka=3")).unwrap();
    assert!(s.wait_for(Duration::from_secs(4), |st| st.client_closed == 1));
    let after = t.elapsed();
    assert!(after < Duration::from_secs(3), "closed after {after:?}");
    assert!(
        after >= Duration::from_millis(1900),
        "closed after {after:?}"
    );
}

#[test]
fn a_hint_not_above_the_buffer_means_no_reuse() {
    let s = Server::start();
    let a = Agent::new(true);
    a.get(url(&s, "/?ka=1")).unwrap();
    assert_eq!(a.stats().idle, 0);
    assert!(!a.get(url(&s, "/?ka=1")).unwrap().reused());
    assert_eq!(s.stats().accepted, 2);
}

#[test]
fn hints_above_the_cap_are_capped_and_malformed_ones_ignored() {
    let s = Server::start();
    let a = agent_with(|o| {
        o.set(opt_u32(
            agent_options_set_max_keep_alive_timeout_msecs,
            1500,
        ))
        .set(opt_u32(agent_options_set_free_socket_timeout_msecs, 0))
    });
    let t = Instant::now();
    a.get(url(&s, "/?ka=100")).unwrap();
    assert!(s.wait_for(Duration::from_secs(3), |st| st.client_closed == 1));
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "cap 1.5 s - buffer 1 s: {:?}",
        t.elapsed()
    );

    s.reset();
    for raw in ["timeout%3Dabc", "timeout%3D-5", "garbage", "timeout%3D"] {
        let r = a.get(url(&s, &format!("/?ka_raw={raw}"))).unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            a.get(url(&s, "/")).unwrap().reused(),
            "{raw}: ignored, connection kept"
        );
    }
    assert_eq!(s.stats().accepted, 1);
}

fn concurrent(a: &Agent, urls: Vec<String>) -> Vec<Response> {
    let rxs: Vec<_> = urls.into_iter().map(|u| a.start(Req::get(u)).1).collect();
    rxs.into_iter()
        .map(|rx| rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap())
        .collect()
}

#[test]
fn max_sockets_and_max_free_sockets() {
    let s = Server::start();
    let a = agent_with(|o| {
        o.set(opt_u32(agent_options_set_max_sockets, 5))
            .set(opt_u32(agent_options_set_max_free_sockets, 2))
    });
    let first = concurrent(&a, (0..10).map(|_| url(&s, "/?delay_ms=150")).collect());
    let st = s.stats();
    assert_eq!((st.accepted, st.max_open), (5, 5));
    assert!(a.wait_stats(Duration::from_secs(1), |st| st.idle == 2 && st.active == 0));
    assert!(s.wait_for(Duration::from_secs(2), |st| st.open == 2));
    let second = concurrent(&a, (0..10).map(|_| url(&s, "/?delay_ms=150")).collect());
    let ports: HashSet<u16> = first.iter().chain(&second).map(|r| r.port()).collect();
    assert_eq!(ports.len(), 8);
    assert_eq!(s.stats().max_open, 5);
    assert!(second.iter().filter(|r| r.reused()).count() >= 2);
}

#[test]
fn max_total_sockets_across_two_origins() {
    let s = Server::start();
    let a = tls_agent_with(&s, |o| {
        o.set(opt_u32(agent_options_set_max_total_sockets, 2))
    });
    let urls: Vec<String> = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                url(&s, "/?delay_ms=50")
            } else {
                tls_url(s.https_port(), "/?delay_ms=50")
            }
        })
        .collect();
    // The kernel's view, sampled every millisecond while the requests run: client sockets
    // established to either server port. (The server's own count lags: it notices a
    // retired connection's FIN only when it next reads, possibly after accepting the new
    // connection that took its slot.)
    let done = std::sync::atomic::AtomicBool::new(false);
    let ports = [s.http_port(), s.https_port()];
    let (rs, most) = std::thread::scope(|sc| {
        let sampler = sc.spawn(|| {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                most = most.max(established_client_sockets(&ports));
                std::thread::sleep(Duration::from_millis(1));
            }
            most
        });
        let rs = concurrent(&a, urls);
        done.store(true, std::sync::atomic::Ordering::Release);
        (rs, sampler.join().unwrap())
    });
    assert_eq!(rs.len(), 12);
    assert!(rs.iter().all(|r| r.status() == 200));
    assert!((1..=2).contains(&most), "{most} client sockets at once");
    // Both origins were served.
    let srv = s.stats();
    assert!(srv.connections.iter().any(|c| c.tls) && srv.connections.iter().any(|c| !c.tls));
    let st = a.stats();
    assert_eq!((st.requests, st.errors, st.queued), (12, 0, 0));
}

/// Established TCP sockets whose remote port is one of `ports` (the client side of
/// loopback connections to the test server), from /proc/net/tcp.
fn established_client_sockets(ports: &[u16]) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && ports.iter().any(|p| f[2].ends_with(&format!(":{p:04X}")))
        })
        .count()
}

#[test]
fn max_sockets_one_queues_and_shares_one_connection() {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_max_sockets, 1)));
    let rxs: Vec<_> = (0..3)
        .map(|_| a.start(Req::get(url(&s, "/?delay_ms=300"))).1)
        .collect();
    assert!(a.wait_stats(Duration::from_secs(2), |st| st.queued == 2));
    let mut seen = vec![];
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let q = a.stats().queued;
        if seen.last() != Some(&q) {
            seen.push(q);
        }
        if q == 0 && seen.len() > 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen, vec![2, 1, 0]);
    for rx in rxs {
        rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    }
    assert_eq!(s.stats().accepted, 1);
    assert_eq!(s.stats().requests, 3);
}

fn release_order_ports(scheduling: u32) -> (Vec<u16>, u16) {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_scheduling, scheduling)));
    // Released in order of their delays: 50, 150, 250 ms.
    let rs = concurrent(
        &a,
        [50, 150, 250]
            .iter()
            .map(|d| url(&s, &format!("/?delay_ms={d}")))
            .collect(),
    );
    let ports: Vec<u16> = rs.iter().map(|r| r.port()).collect();
    let next = a.get(url(&s, "/")).unwrap();
    assert!(next.reused());
    (ports, next.port())
}

#[test]
fn lifo_reuses_the_most_recent_and_fifo_the_oldest() {
    let (ports, next) = release_order_ports(AGENT_SCHEDULING_LIFO);
    assert_eq!(next, ports[2]);
    let (ports, next) = release_order_ports(AGENT_SCHEDULING_FIFO);
    assert_eq!(next, ports[0]);
}

#[test]
fn bad_configuration_is_refused_at_creation() {
    for f in [
        opt_u32(agent_options_set_scheduling, 2),
        opt_u32(agent_options_set_max_sockets, u32::MAX),
        opt_u32(agent_options_set_max_free_sockets, u32::MAX),
        opt_u32(agent_options_set_keep_alive_probes, 500),
        opt_u32(agent_options_set_keep_alive_msecs, u32::MAX),
        opt_u32(agent_options_set_headers_timeout_msecs, u32::MAX),
    ] {
        let e = Options::new().set(f).build().unwrap_err();
        assert_eq!(e.code, C::AGENT_CODE_INVALID_OPTION, "{}", e.message);
    }
}

#[test]
fn closed_connections_are_never_handed_to_queued_requests() {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_max_sockets, 1)));
    let rs = concurrent(
        &a,
        (0..4).map(|_| url(&s, "/?close=1&delay_ms=50")).collect(),
    );
    assert!(rs.iter().all(|r| r.status() == 200 && !r.reused()));
    assert_eq!(s.stats().accepted, 4);
    assert_eq!(s.stats().max_open, 1);
    assert_eq!(a.stats().errors, 0);
}

#[test]
fn queued_requests_wait_for_the_previous_body_to_be_written() {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_max_sockets, 1)));
    let body = vec![b'x'; 4 << 20];
    let rxs: Vec<_> = (0..3)
        .map(|_| {
            a.start(Req::get(url(&s, "/?echo=1")).method("POST").body(&body))
                .1
        })
        .collect();
    for rx in rxs {
        let r = rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
        assert!(
            r.text().contains(&format!("\"body_len\":{}", 4 << 20)),
            "{}",
            r.text()
        );
    }
    assert_eq!(s.stats().accepted, 1);
    assert_eq!(s.stats().requests, 3);
}

#[test]
fn stale_reused_connections_are_retried_for_idempotent_methods_only() {
    for flag in ["rst_if_reused", "fin_if_reused"] {
        let s = Server::start();
        let a = Agent::new(true);
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            a.get(url(&s, "/")).unwrap();
            let r = a
                .send(Req::get(url(&s, &format!("/?{flag}=1"))).method(m))
                .unwrap();
            assert_eq!(r.status(), 200, "{flag} {m}");
            assert!(!r.reused(), "{flag} {m}: answered on the fresh connection");
        }
        assert_eq!(a.stats().retries, 6);
        a.get(url(&s, "/")).unwrap();
        let e = a
            .send(Req::get(url(&s, &format!("/?{flag}=1"))).method("POST"))
            .unwrap_err();
        assert_eq!(
            e.code,
            C::AGENT_CODE_STALE_CONNECTION,
            "{flag}: {}",
            e.message
        );
        a.get(url(&s, "/")).unwrap();
        let r = a
            .send(
                Req::get(url(&s, &format!("/?{flag}=1")))
                    .method("POST")
                    .header("Idempotency-Key", "k1"),
            )
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(a.stats().retries, 7);
    }
}

#[test]
fn stale_get_fails_with_the_stale_code_when_retry_is_off() {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_bool(agent_options_set_retry_stale, false)));
    a.get(url(&s, "/")).unwrap();
    let e = a.get(url(&s, "/?rst_if_reused=1")).unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_STALE_CONNECTION);
    assert_eq!(a.stats().retries, 0);
}

#[test]
fn a_reset_mid_response_fails_that_request_and_drops_the_connection() {
    let s = Server::start();
    let a = Agent::new(true);
    let e = a.get(url(&s, "/?bytes=100000&rst_mid=1")).unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_CONNECTION_RESET, "{}", e.message);
    assert_eq!(a.stats().idle, 0);
    let e = a.get(url(&s, "/?bytes=100000&fin_mid=1")).unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_CONNECTION_CLOSED, "{}", e.message);
    assert!(!a.get(url(&s, "/")).unwrap().reused());
    assert_eq!(s.stats().accepted, 3);
}

#[test]
fn cancelling_after_completion_leaves_the_pooled_connection_alone() {
    let s = Server::start();
    let a = Agent::new(true);
    let (id, rx) = a.start(Req::get(url(&s, "/")));
    let r = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(a.cancel(id), C::AGENT_CODE_NOT_FOUND);
    drop(r);
    assert_eq!(a.stats().idle, 1);
    assert!(a.get(url(&s, "/")).unwrap().reused());
    assert_eq!(s.stats().accepted, 1);
}

#[test]
fn stats_match_what_the_server_saw() {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_free_socket_timeout_msecs, 200)));
    concurrent(&a, (0..4).map(|_| url(&s, "/?delay_ms=50")).collect());
    for _ in 0..5 {
        a.get(url(&s, "/")).unwrap();
    }
    a.get(url(&s, "/?close=1")).unwrap();
    let _ = a.get(url(&s, "/?rst=1"));
    assert!(a.wait_stats(Duration::from_secs(3), |st| st.idle == 0 && st.active == 0));
    assert!(s.wait_for(Duration::from_secs(3), |st| st.open == 0));
    let (st, srv) = (a.stats(), s.stats());
    assert_eq!(st.connections_opened, srv.accepted);
    assert_eq!(st.connections_closed, srv.accepted);
    assert_eq!(st.requests, 11);
    assert_eq!(st.errors, 1);
    // The reset request was retried once (stale reused connection) and failed again.
    assert_eq!(st.requests + st.retries, srv.requests, "{st:?} {srv:?}");
    assert_eq!(st.reused_requests, 6);
    let per_origin = a.origin_stats(&url(&s, "/"));
    assert_eq!(per_origin.requests, 11);
    assert_eq!(a.origin_stats("http://127.0.0.1:1").requests, 0);
}

#[test]
fn old_connections_are_retired_after_their_lifetime() {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_max_socket_lifetime_msecs, 300)));
    a.get(url(&s, "/")).unwrap();
    assert!(a.get(url(&s, "/")).unwrap().reused());
    std::thread::sleep(Duration::from_millis(400));
    assert!(!a.get(url(&s, "/")).unwrap().reused());
    assert_eq!(s.stats().accepted, 2);
}

#[test]
fn timeouts_have_their_own_codes_and_never_reuse_the_connection() {
    let (_l, _fill, port) = blackhole();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_connect_timeout_msecs, 500)));
    let t = Instant::now();
    let e = a.get(format!("http://127.0.0.1:{port}/")).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code, C::AGENT_CODE_CONNECT_TIMEOUT, "{}", e.message);
    assert!(
        took >= Duration::from_millis(500) && took <= Duration::from_millis(600),
        "{took:?}"
    );

    let s = Server::start();
    let a = agent_with(|o| {
        o.set(opt_u32(agent_options_set_headers_timeout_msecs, 200))
            .set(opt_u32(agent_options_set_body_timeout_msecs, 200))
    });
    let e = a.get(url(&s, "/?delay_ms=1000")).unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_HEADERS_TIMEOUT);
    let e = a
        .get(url(&s, "/?chunked=1&chunks=3&chunk_delay_ms=1000"))
        .unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_BODY_TIMEOUT);
    let e = a
        .send(
            Req::get(url(
                &s,
                "/?delay_ms=150&chunked=1&chunks=3&chunk_delay_ms=150",
            ))
            .timeout(250),
        )
        .unwrap_err();
    assert_eq!(
        e.code,
        C::AGENT_CODE_TIMEOUT,
        "overall deadline: {}",
        e.message
    );
    assert!(!a.get(url(&s, "/")).unwrap().reused());
    assert_eq!(s.stats().accepted, 4);
    let st = a.stats();
    assert_eq!((st.timeouts, st.connections_timed_out), (3, 2));
}

#[test]
fn the_overall_deadline_covers_time_in_the_queue() {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_max_sockets, 1)));
    let (_, slow) = a.start(Req::get(url(&s, "/?delay_ms=800")));
    std::thread::sleep(Duration::from_millis(50));
    let e = a.send(Req::get(url(&s, "/")).timeout(200)).unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_TIMEOUT);
    assert_eq!(a.stats().queued, 0, "the timed-out request left the queue");
    slow.recv_timeout(Duration::from_secs(3)).unwrap().unwrap();
    assert!(a.get(url(&s, "/")).unwrap().reused());
}

/// The race every keep-alive client loses sometimes: the server closes an idle connection
/// just as the client reuses it. Requests are sent at intervals swept across the server's
/// idle timeout; with retry_stale on, every idempotent request must succeed.
fn race(retry: bool) -> (u32, u32) {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_bool(agent_options_set_retry_stale, retry)));
    let t_ms = 20.0_f64;
    let (mut failures, mut n) = (0, 0);
    let start = Instant::now();
    for i in 0..200 {
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
        let gap = t_ms - 5.0 + 10.0 * f64::from(i) / 200.0;
        if a.get(url(&s, "/?idle_close_ms=20")).is_err() {
            failures += 1;
        }
        n += 1;
        std::thread::sleep(Duration::from_secs_f64(gap / 1000.0));
    }
    let retries = a.stats().retries as u32;
    eprintln!("race retry_stale={retry}: {n} requests, {failures} failures, {retries} retries");
    (failures, retries)
}

#[test]
fn close_race_is_invisible_with_retry_stale() {
    let (failures, _) = race(true);
    assert_eq!(failures, 0);
    let (failures_off, _) = race(false);
    eprintln!("without retry: {failures_off} of 200 requests failed");
}

#[test]
fn cancelling_queued_requests_never_leaks_a_slot() {
    let s = Server::start();
    let a = agent_with(|o| o.set(opt_u32(agent_options_set_max_sockets, 1)));
    for i in 0..60 {
        let (first, rx1) = a.start(Req::get(url(&s, "/?delay_ms=20")));
        let (second, rx2) = a.start(Req::get(url(&s, "/?delay_ms=20")));
        if i % 3 != 0 {
            std::thread::sleep(Duration::from_micros(200 * (i % 7)));
        }
        a.cancel(first);
        a.cancel(second);
        for rx in [rx1, rx2] {
            rx.recv_timeout(Duration::from_secs(5)).unwrap().ok();
        }
        assert!(
            a.wait_stats(Duration::from_secs(2), |st| st.active == 0
                && st.queued == 0),
            "iteration {i}: {:?}",
            a.stats()
        );
    }
    let r = a.send(Req::get(url(&s, "/")).timeout(2000)).unwrap();
    assert_eq!(r.status(), 200);
}

/// Connections idle past 100 ms shed hyper's buffers (compaction) and keep only the socket:
/// they are still reused, still watched for a server close, over HTTP and HTTPS.
#[test]
fn compacted_idle_connections_are_reused_and_still_watched() {
    let s = Server::start();
    let plain = Agent::new(true);
    let tls = tls_agent_with(&s, |o| o);
    for (a, base) in [(&plain, url(&s, "/")), (&tls, tls_url(s.https_port(), "/"))] {
        let first = a.get(base.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(300)); // compacted by now
        let again = a.get(base.clone()).unwrap();
        assert!(again.reused(), "{base}");
        assert_eq!(again.port(), first.port());
        // A server close of a compacted connection still takes it out of the pool at once.
        let r = a.get(format!("{base}?idle_close_ms=400")).unwrap();
        assert!(r.reused());
        let closes = s.stats().server_closed;
        assert!(s.wait_for(Duration::from_secs(2), |st| st.server_closed == closes + 1));
        assert!(
            a.wait_stats(Duration::from_millis(200), |st| st.idle == 0),
            "{base}: compacted connection still pooled after the server closed it"
        );
        assert!(!a.get(base.clone()).unwrap().reused());
    }
    assert_eq!(plain.stats().errors + tls.stats().errors, 0);
}
