//! HTTP/2 through the C ABI against the test server's h2c (prior knowledge) and h2 (TLS,
//! ALPN) listeners, with its scripted faults: GOAWAY with requests in flight, refused
//! streams, RST_STREAM, SETTINGS_MAX_CONCURRENT_STREAMS of 1, a peer that stops answering
//! (PING timeout), a stalled stream (body timeout), trailers. nginx's HTTP/2 is exercised by
//! `make test-nginx`.

mod common;
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepalive_agent::ffi::agent_code::*;
use keepalive_agent::ffi::options::*;
use keepalive_testserver::H2Script;

fn h2c_agent(extra: impl FnOnce(Options) -> Options) -> Agent {
    extra(Options::new().set(opt_u32(
        agent_options_set_http_version,
        AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE,
    )))
    .build()
    .unwrap()
}

fn h2c(s: &Server, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", s.h2c_port())
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn prior_knowledge_and_alpn_both_speak_http2_over_one_connection() {
    let s = Server::start();
    let a = h2c_agent(|o| o);
    for i in 0..5 {
        let r = a.get(h2c(&s, "/")).unwrap();
        assert_eq!((r.status(), r.version(), r.reused()), (200, 20, i > 0));
        assert_eq!(r.text(), "hello, world\n");
    }
    let ca = std::ffi::CString::new(s.ca_pem_path().to_str().unwrap()).unwrap();
    let tls = Options::new()
        .set(opt_u32(
            agent_options_set_http_version,
            AGENT_HTTP_VERSION_AUTO,
        ))
        // SAFETY: live options and a NUL-terminated path.
        .set(|o| unsafe { agent_options_set_ca_file(o, ca.as_ptr()) })
        .build()
        .unwrap();
    let r = tls
        .get(format!("https://127.0.0.1:{}/", s.h2_port()))
        .unwrap();
    assert_eq!(r.version(), 20);
    let st = s.stats();
    assert_eq!(st.accepted, 2);
    let (a_st, t_st) = (a.stats(), tls.stats());
    assert_eq!((a_st.h2_connections, a_st.h2_streams), (1, 5));
    assert_eq!((t_st.h2_connections, t_st.h2_streams), (1, 1));
}

#[test]
fn goaway_with_requests_in_flight_loses_none() {
    let s = Server::start();
    s.set_h2_script(H2Script {
        goaway_after: Some(3),
        ..Default::default()
    });
    let a = Arc::new(h2c_agent(|o| o));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let a = a.clone();
            let url = h2c(&s, &format!("/?delay_ms={}&echo=1", 20 * (i % 4)));
            std::thread::spawn(move || a.get(url).map(|r| r.status()))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let st = a.stats();
    assert!(
        results.iter().all(|r| matches!(r, Ok(200))),
        "{results:?} {st:?} {:?}",
        s.stats()
    );
    // Every request completed, on the first connection or again on a later one.
    assert_eq!((st.requests, st.errors), (16, 0));
    assert!(st.h2_connections >= 2, "{st:?}");
    assert!(st.retries >= 1, "{st:?}");
    // No stream was processed twice: the server answered exactly 16 (plus refusals).
    let ss = s.stats();
    assert!(ss.requests >= 16);
}

#[test]
fn refused_streams_are_sent_again_on_the_same_connection() {
    let s = Server::start();
    s.set_h2_script(H2Script {
        refuse_every: Some(2),
        ..Default::default()
    });
    let a = h2c_agent(|o| o);
    for _ in 0..6 {
        // POST is not idempotent, and a refused stream is still retried: the server did
        // not process it.
        let r = a
            .send(
                Req::get(h2c(&s, "/?echo=1"))
                    .method("POST")
                    .body(b"payload"),
            )
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().contains("\"body_len\":7"), "{}", r.text());
    }
    let st = a.stats();
    assert!(st.retries >= 3, "{st:?}");
    assert_eq!(st.h2_connections, 1, "{st:?}");
    assert_eq!(s.stats().accepted, 1);
}

#[test]
fn prior_knowledge_to_an_http1_server_says_so() {
    let s = Server::start();
    let a = h2c_agent(|o| o);
    let e = a.get(url(&s, "/")).unwrap_err();
    assert_eq!(e.code, AGENT_CODE_PROTOCOL, "{}", e.message);
    assert!(e.message.contains("not HTTP/2"), "{}", e.message);
    assert!(e.message.contains("h2c-prior-knowledge"), "{}", e.message);
}

#[test]
fn rst_stream_has_its_own_code_and_leaves_the_connection_serving() {
    let s = Server::start();
    let a = h2c_agent(|o| o);
    let e = a.get(h2c(&s, "/?rst=internal_error")).unwrap_err();
    assert_eq!(e.code, AGENT_CODE_STREAM_RESET, "{}", e.message);
    assert!(e.message.contains("INTERNAL_ERROR"), "{}", e.message);
    let e = a.get(h2c(&s, "/?bytes=100000&rst_after=1000")).unwrap_err();
    assert_eq!(e.code, AGENT_CODE_STREAM_RESET, "{}", e.message);
    assert_eq!(a.get(h2c(&s, "/")).unwrap().status(), 200);
    assert_eq!(s.stats().accepted, 1);
}

#[test]
fn a_stream_limit_of_one_queues_requests_or_opens_more_connections() {
    let s = Server::start();
    s.set_h2_script(H2Script {
        max_streams: Some(1),
        ..Default::default()
    });
    // Within max_sockets = 1, requests wait for the one stream.
    let a = Arc::new(h2c_agent(|o| {
        o.set(opt_u32(agent_options_set_max_sockets, 1))
    }));
    // Learn the limit first (it arrives in the server's SETTINGS).
    assert_eq!(a.get(h2c(&s, "/")).unwrap().status(), 200);
    let run = |a: &Arc<Agent>| {
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let a = a.clone();
                let url = h2c(&s, "/?delay_ms=30");
                std::thread::spawn(move || a.get(url).map(|r| r.status()))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), 200);
        }
    };
    run(&a);
    assert_eq!(a.stats().h2_connections, 1);
    assert_eq!(s.stats().accepted, 1);
    // Without a socket limit, requests past the server's limit get connections of their own.
    let b = Arc::new(h2c_agent(|o| o));
    assert_eq!(b.get(h2c(&s, "/")).unwrap().status(), 200);
    run(&b);
    assert!(b.stats().h2_connections > 1, "{:?}", b.stats());
    assert_eq!(b.stats().errors, 0);
}

#[test]
fn a_peer_that_stops_answering_pings_is_retired() {
    let s = Server::start();
    s.set_h2_script(H2Script {
        stall_conn_after: Some(1),
        ..Default::default()
    });
    // PINGs every 200 ms while idle; the timeout is max(2 x 200 ms, 5 s).
    let a = h2c_agent(|o| o.set(opt_u32(agent_options_set_keep_alive_msecs, 200)));
    assert_eq!(a.get(h2c(&s, "/")).unwrap().status(), 200);
    let start = Instant::now();
    wait(
        "the dead connection to be closed",
        Duration::from_secs(15),
        || a.stats().connections_closed == 1,
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(12), "{took:?}");
    s.set_h2_script(H2Script::default());
    let r = a.get(h2c(&s, "/")).unwrap();
    assert_eq!((r.status(), r.reused()), (200, false));
    assert_eq!(a.stats().h2_connections, 2);
}

#[test]
fn a_stalled_stream_hits_the_body_timeout_and_others_go_on() {
    let s = Server::start();
    let a = Arc::new(h2c_agent(|o| {
        o.set(opt_u32(agent_options_set_body_timeout_msecs, 300))
    }));
    let stalled = {
        let a = a.clone();
        let url = h2c(&s, "/?bytes=100000&stall_after=1000");
        std::thread::spawn(move || a.get(url))
    };
    for _ in 0..3 {
        assert_eq!(a.get(h2c(&s, "/")).unwrap().status(), 200);
    }
    let e = stalled.join().unwrap().unwrap_err();
    assert_eq!(e.code, AGENT_CODE_BODY_TIMEOUT, "{}", e.message);
    assert_eq!(a.get(h2c(&s, "/")).unwrap().status(), 200);
    assert_eq!(s.stats().accepted, 1);
}

#[test]
fn trailers_are_readable() {
    let s = Server::start();
    let a = h2c_agent(|o| o);
    let r = a.get(h2c(&s, "/?bytes=1000&trailers=1")).unwrap();
    assert_eq!(r.body().len(), 1000);
    let mut v = std::ptr::null();
    let mut n = 0usize;
    let name = std::ffi::CString::new("x-checksum").unwrap();
    // SAFETY: a live response, a NUL-terminated name, writable out pointers.
    let code = unsafe {
        keepalive_agent::ffi::response::agent_response_trailer(r.0, name.as_ptr(), &mut v, &mut n)
    };
    assert_eq!(code, AGENT_CODE_OK, "{}", last_error());
    assert_eq!(n, 16);
    let missing = std::ffi::CString::new("x-none").unwrap();
    // SAFETY: as above.
    let code = unsafe {
        keepalive_agent::ffi::response::agent_response_trailer(
            r.0,
            missing.as_ptr(),
            &mut v,
            &mut n,
        )
    };
    assert_eq!(code, AGENT_CODE_NOT_FOUND);
}

#[test]
fn keep_alive_off_uses_one_connection_per_request() {
    let s = Server::start();
    let a = h2c_agent(|o| o.set(opt_bool(agent_options_set_keep_alive, false)));
    for _ in 0..4 {
        let r = a.get(h2c(&s, "/")).unwrap();
        assert_eq!((r.version(), r.reused()), (20, false));
    }
    wait("the connections to close", Duration::from_secs(5), || {
        s.stats().open == 0
    });
    assert_eq!(s.stats().accepted, 4);
}

/// An event queue through the C ABI, drained on the test's thread.
struct Queue(*mut keepalive_agent::ffi::queue::agent_queue);

impl Queue {
    fn new() -> Queue {
        let mut q = std::ptr::null_mut();
        // SAFETY: a writable out pointer.
        let code = unsafe { keepalive_agent::ffi::queue::agent_queue_new(&mut q) };
        assert_eq!(code, AGENT_CODE_OK, "{}", last_error());
        Queue(q)
    }

    fn submit(&self, a: &Agent, url: &str, token: u64) {
        let m = std::ffi::CString::new("GET").unwrap();
        let u = std::ffi::CString::new(url).unwrap();
        // SAFETY: a live queue and agent, NUL-terminated strings, no headers or body.
        let code = unsafe {
            keepalive_agent::ffi::queue::agent_queue_submit(
                self.0,
                a.0,
                m.as_ptr(),
                u.as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                10_000,
                token,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(code, AGENT_CODE_OK, "{}", last_error());
    }

    /// Drains until `want` events arrived (or `limit` passed): (token, code, response).
    fn drain(&self, want: usize, limit: Duration) -> Vec<(u64, C, Option<Response>)> {
        let until = Instant::now() + limit;
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < until {
            // SAFETY: agent_event is plain data; the drain writes the first `n`.
            let mut evs: [keepalive_agent::ffi::queue::agent_event; 16] =
                unsafe { std::mem::zeroed() };
            let mut n = 0usize;
            // SAFETY: a live queue, room for 16 events, a writable count.
            let code = unsafe {
                keepalive_agent::ffi::queue::agent_queue_drain(
                    self.0,
                    evs.as_mut_ptr(),
                    evs.len(),
                    50,
                    &mut n,
                )
            };
            assert_eq!(code, AGENT_CODE_OK, "{}", last_error());
            for e in &evs[..n] {
                let r = (!e.response.is_null()).then(|| Response(e.response));
                got.push((e.token, e.code, r));
            }
        }
        got
    }

    fn pending(&self) -> usize {
        // SAFETY: a live queue.
        unsafe { keepalive_agent::ffi::queue::agent_queue_pending(self.0) }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: created by agent_queue_new, freed once.
        unsafe { keepalive_agent::ffi::queue::agent_queue_free(self.0) }
    }
}

fn all_ok_over_h2(events: &[(u64, C, Option<Response>)], want: usize) {
    assert_eq!(events.len(), want);
    for (token, code, r) in events {
        assert_eq!(*code, AGENT_CODE_OK, "request {token}");
        let r = r.as_ref().unwrap();
        assert_eq!((r.status(), r.version()), (200, 20), "request {token}");
    }
}

#[test]
fn a_queue_runs_its_own_http2_connection_and_hands_it_over_when_freed() {
    let s = Server::start();
    let a = h2c_agent(|o| o);
    let q = Queue::new();
    for i in 0..64 {
        q.submit(&a, &h2c(&s, &format!("/?echo=1&delay_ms={}", i % 3)), i);
    }
    all_ok_over_h2(&q.drain(64, Duration::from_secs(20)), 64);
    // The 64 streams shared one connection, driven by the queue (not pending, no event).
    assert_eq!(q.pending(), 0);
    assert_eq!((a.stats().h2_connections, s.stats().accepted), (1, 1));
    // A blocking caller does not use the queue's connection (the queue may not be drained
    // while it waits): it opens its own, which the runtime drives.
    let r = a.get(h2c(&s, "/")).unwrap();
    assert_eq!((r.status(), r.version(), r.reused()), (200, 20, false));
    assert_eq!(a.stats().h2_connections, 2);
    // The queue goes on with its own connection.
    for i in 0..8 {
        q.submit(&a, &h2c(&s, "/"), 100 + i);
    }
    let more = q.drain(8, Duration::from_secs(20));
    all_ok_over_h2(&more, 8);
    assert!(more.iter().all(|(_, _, r)| r.as_ref().unwrap().reused()));
    assert_eq!(s.stats().accepted, 2);
    // Freed, the queue hands its connection to the runtime, which closes it (no request
    // can reach it any more); the blocking caller's connection stays.
    drop(q);
    wait(
        "the queue's connection to be closed",
        Duration::from_secs(10),
        || a.stats().connections_closed == 1,
    );
    let r = a.get(h2c(&s, "/")).unwrap();
    assert_eq!((r.status(), r.reused()), (200, true));
    assert_eq!(s.stats().accepted, 2);
}

#[test]
fn goaway_with_queued_requests_in_flight_loses_none() {
    let s = Server::start();
    s.set_h2_script(H2Script {
        goaway_after: Some(3),
        ..Default::default()
    });
    let a = h2c_agent(|o| o);
    let q = Queue::new();
    for i in 0..16 {
        q.submit(
            &a,
            &h2c(&s, &format!("/?delay_ms={}&echo=1", 20 * (i % 4))),
            i,
        );
    }
    let events = q.drain(16, Duration::from_secs(20));
    let st = a.stats();
    all_ok_over_h2(&events, 16);
    assert_eq!((st.requests, st.errors), (16, 0));
    assert!(st.h2_connections >= 2, "{st:?}");
    assert!(st.retries >= 1, "{st:?}");
}

#[test]
fn an_agent_freed_under_a_live_queue_closes_the_queues_connection() {
    let s = Server::start();
    let a = h2c_agent(|o| o);
    let q = Queue::new();
    for i in 0..4 {
        q.submit(&a, &h2c(&s, "/"), i);
    }
    all_ok_over_h2(&q.drain(4, Duration::from_secs(20)), 4);
    assert_eq!(s.stats().open, 1);
    drop(a);
    // The queue's connection closes as the queue runs it (at its next drains)...
    let until = Instant::now() + Duration::from_secs(10);
    while s.stats().open > 0 && Instant::now() < until {
        assert!(q.drain(1, Duration::from_millis(50)).is_empty());
    }
    assert_eq!(s.stats().open, 0);
    assert_eq!(q.pending(), 0);
}

#[test]
fn the_authority_is_the_origin_or_the_callers_host_header() {
    let s = Server::start();
    let a = h2c_agent(|o| o);
    let echo = |r: Response| r.text();
    let plain = echo(a.get(h2c(&s, "/?echo=1")).unwrap());
    assert!(
        plain.contains(&format!("\"authority\":\"127.0.0.1:{}\"", s.h2c_port())),
        "{plain}"
    );
    let own = echo(
        a.send(Req::get(h2c(&s, "/p?q=1&echo=1")).header("Host", "example.test:8443"))
            .unwrap(),
    );
    assert!(own.contains("\"authority\":\"example.test:8443\""), "{own}");
    assert!(own.contains("\"target\":\"/p?q=1&echo=1\""), "{own}");
    // Host travels as :authority only; connection-specific fields are not sent at all.
    let sent = echo(
        a.send(
            Req::get(h2c(&s, "/?echo=1"))
                .header("Connection", "keep-alive")
                .header("Keep-Alive", "timeout=5")
                .header("TE", "gzip")
                .header("X-Other", "1"),
        )
        .unwrap(),
    );
    for gone in ["\"host\"", "\"connection\"", "\"keep-alive\"", "\"te\""] {
        assert!(!sent.contains(gone), "{gone} in {sent}");
    }
    assert!(sent.contains("\"x-other\""), "{sent}");
}
