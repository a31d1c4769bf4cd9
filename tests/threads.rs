//! Issue 7: threads, descriptors and lifecycle under load.
//!
//! ONE test function on purpose: it counts this process's threads (/proc/self/task) and file
//! descriptors (/proc/self/fd), which only means something when no other test runs beside
//! it. The library's runtime threads and the in-process test server persist, so the
//! baseline is taken after both exist; after every agent is freed both counts must be back
//! to it.
//!
//! `KEEPALIVE_STRESS_THREADS` and `KEEPALIVE_STRESS_REQUESTS` set the threads of the
//! blocking stress and the requests per thread (default 16 x 1000 in cargo test; make
//! test's reliability suite runs 64 x 5000, i.e. 320,000 in all).

mod common;
use common::*;

use std::ffi::{CString, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keepalive_agent::ffi::agent::*;
use keepalive_agent::ffi::agent_code as Code;
use keepalive_agent::ffi::response::*;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn thread_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    v.sort();
    v
}

struct Baseline {
    threads: usize,
    fds: usize,
}

impl Baseline {
    fn take(s: &Server) -> Baseline {
        assert!(s.wait_for(Duration::from_secs(5), |st| st.open == 0));
        Baseline {
            threads: count("/proc/self/task"),
            fds: count("/proc/self/fd"),
        }
    }

    /// Threads and descriptors return to the baseline (the server's side of every
    /// connection lives in this process too, so it must have closed as well).
    fn check(&self, s: &Server, after: &str) {
        assert!(
            s.wait_for(Duration::from_secs(8), |st| st.open == 0),
            "{after}: server connections still open: {}",
            s.stats().open
        );
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let (t, f) = (count("/proc/self/task"), count("/proc/self/fd"));
            if t == self.threads && f == self.fds {
                eprintln!(
                    "THREADS | {after} | threads {t} (baseline {}) | fds {f} (baseline {}) |",
                    self.threads, self.fds
                );
                return;
            }
            if Instant::now() > end {
                panic!(
                    "{after}: {t} threads (baseline {}), {f} fds (baseline {}); threads: {:?}",
                    self.threads,
                    self.fds,
                    thread_names()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn threads_stress_lifecycle_and_no_leaks() {
    let s = Server::start();
    {
        // Start the library's runtime (it persists for the life of the process).
        let a = Agent::new(true);
        a.get(url(&s, "/")).unwrap();
        let (_, rx) = a.start(Req::get(url(&s, "/")));
        rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    }
    let base = Baseline::take(&s);

    stress_threads_on_one_agent(&s);
    base.check(&s, "thread stress agent freed");

    many_agents_of_every_kind(&s);
    base.check(&s, "30 agents created, used and freed");

    free_while_async_requests_are_in_flight(&s);
    base.check(&s, "agent freed with async requests in flight");
}

/// Many threads share one agent (blocking API): no error and exact statistics.
fn stress_threads_on_one_agent(s: &Server) {
    let threads: u64 = std::env::var("KEEPALIVE_STRESS_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(16);
    let per: u64 = std::env::var("KEEPALIVE_STRESS_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    s.reset();
    let a = Arc::new(Agent::new(true));
    let u = url(s, "/");
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(300);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (a, u) = (a.clone(), u.clone());
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                for _ in 0..per {
                    assert!(Instant::now() < deadline, "stress over 300 s");
                    match a.get(u.clone()) {
                        Ok(r) if r.status() == 200 && r.body() == b"hello, world\n" => {}
                        Ok(r) => bad.push(format!("status {}", r.status())),
                        Err(e) => bad.push(format!("{} ({})", code_name(e.code), e.message)),
                    }
                }
                bad
            })
        })
        .collect();
    let bad: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    let total = threads * per;
    let st = a.stats();
    let srv = s.stats();
    eprintln!(
        "STRESS | {threads} threads x {per} | {total} requests | {} failed | {secs:.1} s | {:.0} req/s | {} connections (server accepted {}) | requests {} reused {} retries {} errors {} |",
        bad.len(),
        total as f64 / secs,
        st.connections_opened,
        srv.accepted,
        st.requests,
        st.reused_requests,
        st.retries,
        st.errors
    );
    assert!(
        bad.is_empty(),
        "{} failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    assert_eq!(st.requests, total, "{st:?}");
    assert_eq!((st.errors, st.retries, st.timeouts), (0, 0, 0), "{st:?}");
    assert_eq!(srv.requests, total, "the server saw every request once");
    assert_eq!(srv.accepted, st.connections_opened);
    // Every request went out either on the connection it opened or on a reused one.
    assert_eq!(st.reused_requests + st.connections_opened, total, "{st:?}");
    assert!(
        a.wait_stats(Duration::from_secs(2), |st| st.active == 0
            && st.queued == 0),
        "{:?}",
        a.stats()
    );
    let idle = a.stats().idle;
    assert!((1..=threads).contains(&idle), "{idle} idle");
    drop(a); // agent_free: every connection closed
    assert!(
        s.wait_for(Duration::from_secs(5), |st| st.open == 0
            && st.client_closed == srv.accepted),
        "{:?}",
        s.stats().open
    );
}

/// Agents of every kind, each used and freed: keep-alive on and off, TLS, async.
fn many_agents_of_every_kind(s: &Server) {
    for i in 0..10 {
        let on = Agent::new(true);
        for _ in 0..5 {
            on.get(url(s, "/")).unwrap();
        }
        assert_eq!(on.stats().idle, 1);
        let off = Agent::new(false);
        for _ in 0..3 {
            assert!(!off.get(url(s, "/")).unwrap().reused());
        }
        let tls = tls_agent_with(s, |o| o);
        for _ in 0..3 {
            tls.get(tls_url(s.https_port(), "/")).unwrap();
        }
        let rxs: Vec<_> = (0..5)
            .map(|_| {
                if i % 2 == 0 {
                    on.start(Req::get(url(s, "/?delay_ms=20"))).1
                } else {
                    tls.start(Req::get(tls_url(s.https_port(), "/?delay_ms=20")))
                        .1
                }
            })
            .collect();
        for rx in rxs {
            rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        }
        drop((on, off, tls));
    }
}

/// One completion slot per async request: how many times its callback ran, and the code.
struct Slot {
    calls: AtomicU32,
    code: AtomicU32,
}

unsafe extern "C" fn on_done(ud: *mut c_void, code: Code, resp: *mut agent_response) {
    // SAFETY: a reference of an `Arc<Slot>` given to this request alone.
    let slot = unsafe { Arc::from_raw(ud as *const Slot) };
    slot.code.store(code as u32, Ordering::SeqCst);
    slot.calls.fetch_add(1, Ordering::SeqCst);
    if !resp.is_null() {
        // SAFETY: the callee owns the response.
        unsafe { agent_response_free(resp) };
    }
}

fn start_raw(a: &Agent, u: &str) -> Arc<Slot> {
    let slot = Arc::new(Slot {
        calls: AtomicU32::new(0),
        code: AtomicU32::new(u32::MAX),
    });
    let cu = CString::new(u).unwrap();
    let ud = Arc::into_raw(slot.clone()) as *mut c_void;
    let mut id = 0;
    // SAFETY: live agent, valid strings; `ud` is handed to the callback.
    let code = unsafe {
        agent_request_async(
            a.0,
            c"GET".as_ptr(),
            cu.as_ptr(),
            std::ptr::null(),
            0,
            std::ptr::null(),
            0,
            0,
            Some(on_done),
            ud,
            &mut id,
        )
    };
    assert_eq!(code, OK, "{}", last_error());
    slot
}

/// Four threads start async requests in every phase — connecting (to a black hole), waiting
/// for a head, in the middle of a TLS body — and a few quick ones; then the agent is freed.
/// Every callback runs exactly once, before agent_free returns, and every unfinished
/// request reports AGENT_CODE_CANCELLED. (Requests queued behind max_sockets are covered by
/// tests/faults.rs.)
fn free_while_async_requests_are_in_flight(s: &Server) {
    let (_l, _fill, hole) = blackhole();
    let a = Arc::new(tls_agent_with(s, |o| o));
    let plans: Vec<(String, usize, bool)> = vec![
        // (url, count, may complete before the free)
        (format!("http://127.0.0.1:{hole}/"), 3, false),
        (url(s, "/?delay_ms=3000"), 4, false),
        (
            tls_url(
                s.https_port(),
                "/?bytes=300000&chunked=1&chunks=10&chunk_delay_ms=300",
            ),
            2,
            false,
        ),
        (tls_url(s.https_port(), "/?bytes=10"), 4, true),
    ];
    let starters: Vec<_> = plans
        .into_iter()
        .map(|(u, n, quick)| {
            let a = a.clone();
            std::thread::spawn(move || {
                (0..n)
                    .map(|_| (start_raw(&a, &u), quick))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let slots: Vec<(Arc<Slot>, bool)> = starters
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    // Let every request reach its phase (heads requested, bodies started).
    assert!(s.wait_for(Duration::from_secs(5), |st| st.requests >= 6));
    std::thread::sleep(Duration::from_millis(400));
    let st = a.stats();
    assert!(st.active >= 9, "{st:?}");
    let a = Arc::try_unwrap(a).unwrap();
    let t = Instant::now();
    drop(a); // agent_free, on this thread, while the requests are in flight
    let took = t.elapsed();
    let mut cancelled = 0;
    for (i, (slot, quick)) in slots.iter().enumerate() {
        assert_eq!(
            slot.calls.load(Ordering::SeqCst),
            1,
            "request {i}: callback count when agent_free returned"
        );
        let code = slot.code.load(Ordering::SeqCst);
        if code == Code::AGENT_CODE_CANCELLED as u32 {
            cancelled += 1;
        } else {
            assert!(*quick && code == OK as u32, "request {i}: code {code}");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        slots
            .iter()
            .all(|(s, _)| s.calls.load(Ordering::SeqCst) == 1)
    );
    eprintln!(
        "LIFECYCLE | agent_free with {} async requests in flight | {cancelled} cancelled, {} completed | agent_free took {:.0} ms |",
        slots.len(),
        slots.len() - cancelled,
        took.as_secs_f64() * 1e3
    );
    assert!(cancelled >= 9, "{cancelled} cancelled");
    assert!(took < Duration::from_secs(2), "agent_free took {took:?}");
}
