//! Streaming through the Rust API (`Agent::request_stream_blocking`, `ResponseStream`,
//! `BodySource`), against the test server.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use keepalive_agent::{Agent, BodySource, ErrorKind, Options, Request};
use keepalive_testserver::Server;

const WAIT: Duration = Duration::from_secs(5);

fn agent() -> Agent {
    Agent::new(&Options::default()).unwrap()
}

fn url(s: &Server, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", s.http_port())
}

#[test]
fn a_stream_read_to_the_end_matches_the_pattern_and_pools_its_connection() {
    let s = Server::start();
    let a = agent();
    for round in 0..2 {
        let mut r = a
            .request_stream_blocking(Request::new("GET", &url(&s, "/?bytes=3000000")).unwrap())
            .unwrap();
        assert_eq!(r.head().status, 200);
        assert_eq!(r.head().reused, round == 1);
        let mut total = 0u64;
        while let Some(piece) = r.next_chunk_blocking().unwrap() {
            for (i, b) in piece.iter().enumerate() {
                assert_eq!(*b, b'a' + ((total + i as u64) % 26) as u8);
            }
            total += piece.len() as u64;
        }
        assert_eq!(total, 3_000_000);
        assert!(r.is_finished());
        assert!(r.head().timings.total_us > 0);
        assert!(
            r.next_chunk_blocking().unwrap().is_none(),
            "stays at the end"
        );
    }
    assert_eq!(s.stats().accepted, 1);
    let st = a.stats();
    assert_eq!(
        (st.requests, st.reused_requests, st.errors, st.idle),
        (2, 1, 0, 1)
    );
}

#[test]
fn dropping_a_stream_early_aborts_it_and_counts_a_failure() {
    let s = Server::start();
    let a = agent();
    let mut r = a
        .request_stream_blocking(Request::new("GET", &url(&s, "/?bytes=50000000")).unwrap())
        .unwrap();
    assert!(r.next_chunk_blocking().unwrap().is_some());
    assert!(r.buffered() > 0);
    drop(r);
    assert!(
        s.wait_for(WAIT, |st| st.open == 0),
        "the connection is closed"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while a.stats().active > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = a.stats();
    assert_eq!((st.requests, st.errors, st.active, st.idle), (1, 1, 0, 0));
}

/// A counted body of `len` pattern bytes, optionally rewindable.
struct Pattern {
    len: u64,
    pos: u64,
    rewinds: Arc<AtomicUsize>,
    rewindable: bool,
}

impl BodySource for Pattern {
    fn poll_read(&mut self, _cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = b'a' + ((self.pos + i as u64) % 26) as u8;
        }
        self.pos += n as u64;
        Poll::Ready(Ok(n))
    }

    fn length(&self) -> Option<u64> {
        Some(self.len)
    }

    fn rewind(&mut self) -> bool {
        self.rewinds.fetch_add(1, Ordering::SeqCst);
        self.pos = 0;
        self.rewindable
    }
}

fn fnv(len: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..len {
        h = (h ^ u64::from(b'a' + (i % 26) as u8)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[test]
fn a_source_body_arrives_whole_and_is_replayed_only_when_it_can_rewind() {
    let s = Server::start();
    let a = agent();
    let rewinds = Arc::new(AtomicUsize::new(0));
    let put = |rewindable: bool| {
        Request::new("PUT", &url(&s, "/?echo=1&rst_if_reused=1"))
            .unwrap()
            .body_source(Pattern {
                len: 200_000,
                pos: 0,
                rewinds: rewinds.clone(),
                rewindable,
            })
    };
    // Fresh connection: no reset, nothing to replay.
    let r = a.request_blocking(put(true)).unwrap();
    let echo = String::from_utf8_lossy(&r.body).into_owned();
    assert!(echo.contains("\"body_len\":200000"), "{echo}");
    assert!(echo.contains(&fnv(200_000)), "{echo}");
    assert_eq!(rewinds.load(Ordering::SeqCst), 0);
    // Reused connection, reset by the server: replayed once on a new connection.
    let r = a.request_blocking(put(true)).unwrap();
    assert!(String::from_utf8_lossy(&r.body).contains("\"body_len\":200000"));
    assert_eq!(rewinds.load(Ordering::SeqCst), 1);
    // A source that cannot rewind fails with the stale code instead.
    let e = a.request_blocking(put(false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StaleConnection, "{e}");
    assert!(e.message().contains("cannot be rewound"), "{e}");
}

#[test]
fn a_source_that_fails_has_its_own_kind() {
    struct Broken;
    impl BodySource for Broken {
        fn poll_read(&mut self, _: &mut Context<'_>, _: &mut [u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::Error::other("disk on fire")))
        }
        fn length(&self) -> Option<u64> {
            None
        }
    }
    let s = Server::start();
    let a = agent();
    let e = a
        .request_blocking(
            Request::new("POST", &url(&s, "/?echo=1"))
                .unwrap()
                .body_source(Broken),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BodySource, "{e}");
    assert!(e.message().contains("disk on fire"), "{e}");
}

#[test]
fn the_overall_timeout_covers_the_whole_stream() {
    let s = Server::start();
    let a = agent();
    let mut r = a
        .request_stream_blocking(
            Request::new("GET", &url(&s, "/?chunked=1&chunks=20&chunk_delay_ms=100"))
                .unwrap()
                .timeout(Some(Duration::from_millis(400))),
        )
        .unwrap();
    let e = loop {
        match r.next_chunk_blocking() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the body ended before the deadline"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(
        r.next_chunk_blocking().unwrap_err().kind(),
        ErrorKind::Timeout,
        "later reads fail the same way"
    );
}
