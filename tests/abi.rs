//! SPEC §6.23, 6.28, 6.29, 6.32 and the async API through the C ABI.

mod common;
use common::*;
use std::ffi::c_char;
use std::time::{Duration, Instant};

use keepalive_agent::ffi::agent::*;
use keepalive_agent::ffi::options::*;
use keepalive_agent::ffi::response::*;
use keepalive_agent::ffi::*;

#[test]
fn agent_free_closes_every_connection_and_cancels_in_flight_requests() {
    let s = Server::start();
    let a = Agent::new(true);
    // Three idle connections...
    let pending: Vec<_> = (0..3)
        .map(|_| a.start(Req::get(url(&s, "/?delay_ms=100"))))
        .collect();
    for (_, rx) in pending {
        rx.recv().unwrap().unwrap();
    }
    assert_eq!(a.stats().idle, 3);
    // ...two of them now carry requests in flight, one stays idle.
    let slow: Vec<_> = (0..2)
        .map(|_| a.start(Req::get(url(&s, "/?delay_ms=1500"))))
        .collect();
    assert!(s.wait_for(Duration::from_secs(2), |st| st.requests == 5));
    let st = a.stats();
    assert_eq!((st.active, st.idle), (2, 1));
    let t = Instant::now();
    drop(a); // agent_free
    assert!(t.elapsed() < Duration::from_secs(3));
    for (_, rx) in slow {
        let e = rx
            .recv_timeout(Duration::from_secs(1))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, C::AGENT_CODE_CANCELLED);
    }
    // The server sees a FIN for each connection (it reads the busy ones after its delay).
    assert!(
        s.wait_for(Duration::from_secs(4), |st| st.open == 0
            && st.client_closed == 3),
        "{:?}",
        s.stats()
    );
}

#[test]
fn null_arguments_give_invalid_argument_and_getters_their_defaults() {
    let ia = C::AGENT_CODE_INVALID_ARGUMENT;
    let s = Server::start();
    let a = Agent::new(true);
    let u = std::ffi::CString::new(url(&s, "/")).unwrap();
    let mut out: *mut agent_response = std::ptr::null_mut();
    unsafe {
        assert_eq!(
            agent_request(
                std::ptr::null(),
                c"GET".as_ptr(),
                u.as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                0,
                &mut out
            ),
            ia
        );
        assert_eq!(
            agent_request(
                a.0,
                std::ptr::null(),
                u.as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                0,
                &mut out
            ),
            ia
        );
        assert_eq!(
            agent_request(
                a.0,
                c"GET".as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                0,
                &mut out
            ),
            ia
        );
        assert_eq!(
            agent_request(
                a.0,
                c"GET".as_ptr(),
                u.as_ptr(),
                std::ptr::null(),
                2,
                std::ptr::null(),
                0,
                0,
                &mut out
            ),
            ia
        );
        assert_eq!(
            agent_request(
                a.0,
                c"GET".as_ptr(),
                u.as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                5,
                0,
                &mut out
            ),
            ia
        );
        assert_eq!(
            agent_request(
                a.0,
                c"GET".as_ptr(),
                u.as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                0,
                std::ptr::null_mut()
            ),
            ia
        );
        let h = [agent_header {
            name: c"X".as_ptr(),
            value: std::ptr::null(),
        }];
        assert_eq!(
            agent_request(
                a.0,
                c"GET".as_ptr(),
                u.as_ptr(),
                h.as_ptr(),
                1,
                std::ptr::null(),
                0,
                0,
                &mut out
            ),
            ia
        );
        assert!(out.is_null());
        assert!(last_error().contains("NULL"), "{}", last_error());
        assert_eq!(
            agent_request_async(
                a.0,
                c"GET".as_ptr(),
                u.as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                0,
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut()
            ),
            ia
        );
        assert_eq!(agent_request_cancel(std::ptr::null(), 1), ia);
        assert_eq!(agent_request_cancel(a.0, 12345), C::AGENT_CODE_NOT_FOUND);
        assert_eq!(
            agent_stats(std::ptr::null(), &mut agent_pool_stats::default()),
            ia
        );
        assert_eq!(agent_stats(a.0, std::ptr::null_mut()), ia);
        assert_eq!(
            agent_origin_stats(a.0, std::ptr::null(), &mut agent_pool_stats::default()),
            ia
        );
        assert_eq!(
            agent_new_with_options(std::ptr::null(), &mut std::ptr::null_mut()),
            ia
        );
        let o = agent_options_new();
        assert_eq!(agent_new_with_options(o, std::ptr::null_mut()), ia);
        agent_options_free(o);
        assert_eq!(agent_options_set_keep_alive(std::ptr::null_mut(), true), ia);
        assert_eq!(agent_options_set_max_sockets(std::ptr::null_mut(), 1), ia);
        assert_eq!(
            agent_options_set_ca_pem(std::ptr::null_mut(), std::ptr::null(), 0),
            ia
        );
        assert_eq!(
            agent_options_set_user_agent(agent_options_new_leak(), std::ptr::null()),
            ia
        );
        assert_eq!(agent_response_status(std::ptr::null()), 0);
        assert_eq!(agent_response_version(std::ptr::null()), 0);
        assert!(!agent_response_reused(std::ptr::null()));
        assert_eq!(agent_response_header_count(std::ptr::null()), 0);
        assert!(!agent_keep_alive_enabled(std::ptr::null()));
        let (mut p, mut l) = (std::ptr::null(), 0usize);
        assert_eq!(agent_response_body(std::ptr::null(), &mut p, &mut l), ia);
        assert_eq!(
            agent_response_header(
                std::ptr::null(),
                c"x".as_ptr(),
                &mut p.cast::<c_char>(),
                &mut l
            ),
            ia
        );
        agent_free(std::ptr::null_mut());
        agent_response_free(std::ptr::null_mut());
        agent_options_free(std::ptr::null_mut());
    }
}

/// Options handle freed at process exit (for one NULL-argument check).
fn agent_options_new_leak() -> *mut agent_options {
    static mut KEEP: usize = 0;
    let o = agent_options_new();
    unsafe { KEEP = o as usize };
    o
}

#[cfg(feature = "test-hooks")] // `make test` runs the cargo tests with this feature
#[test]
fn a_panic_inside_an_export_becomes_a_code() {
    assert_eq!(agent_test_panic(), C::AGENT_CODE_PANIC);
    assert!(last_error().contains("panic"), "{}", last_error());
}

#[test]
fn outputs_are_written_only_on_success_and_small_buffers_are_detectable() {
    let s = Server::start();
    let a = Agent::new(true);
    let sentinel = std::ptr::dangling_mut::<agent_response>();
    let mut out = sentinel;
    let u = c"http://127.0.0.1:1/";
    let code = unsafe {
        agent_request(
            a.0,
            c"GET".as_ptr(),
            u.as_ptr(),
            std::ptr::null(),
            0,
            std::ptr::null(),
            0,
            0,
            &mut out,
        )
    };
    assert_eq!(code, C::AGENT_CODE_CONNECT_REFUSED);
    assert_eq!(out, sentinel, "out written on failure");

    let full = unsafe { agent_last_error(std::ptr::null_mut(), 0) };
    assert!(full > 10);
    let mut small = [0x55u8; 8];
    let n = unsafe { agent_last_error(small.as_mut_ptr().cast(), small.len()) };
    assert_eq!(n, full, "returns the full length");
    assert!(n >= small.len(), "truncation is detectable");
    assert_eq!(small[7], 0, "NUL-terminated");
    let mut big = vec![0u8; full + 1];
    assert_eq!(
        unsafe { agent_last_error(big.as_mut_ptr().cast(), big.len()) },
        full
    );
    assert_eq!(&big[..7], &small[..7]);

    let r = a.get(url(&s, "/")).unwrap();
    let (mut v, mut l) = (std::ptr::dangling::<c_char>(), 77usize);
    let code = unsafe { agent_response_header(r.0, c"x-absent".as_ptr(), &mut v, &mut l) };
    assert_eq!(code, C::AGENT_CODE_NOT_FOUND);
    assert_eq!((v, l), (std::ptr::dangling::<c_char>(), 77));
    let mut o = std::ptr::null_mut();
    let opts = agent_options_new();
    unsafe {
        agent_options_set_scheduling(opts, 9);
        assert_eq!(
            agent_new_with_options(opts, &mut o),
            C::AGENT_CODE_INVALID_OPTION
        );
        agent_options_free(opts);
    }
    assert!(o.is_null());
    assert!(last_error().contains("scheduling"), "{}", last_error());
}

#[test]
fn code_names_and_version() {
    assert_eq!(code_name(C::AGENT_CODE_OK), "AGENT_CODE_OK");
    assert_eq!(
        code_name(C::AGENT_CODE_STALE_CONNECTION),
        "AGENT_CODE_STALE_CONNECTION"
    );
    let unknown = unsafe { std::ffi::CStr::from_ptr(agent_code_str(9999)) };
    assert_eq!(unknown.to_str().unwrap(), "AGENT_CODE_UNKNOWN");
    let v = unsafe { std::ffi::CStr::from_ptr(agent_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn tls_fails_without_the_ca_and_reuses_with_it() {
    let s = Server::start();
    let plain = Options::new()
        .set(opt_bool(agent_options_set_use_system_roots, true))
        .build()
        .unwrap();
    for port in [
        s.https_port(),
        s.https_self_signed_port(),
        s.https_wrong_host_port(),
    ] {
        let e = plain.get(tls_url(port, "/")).unwrap_err();
        assert_eq!(e.code, C::AGENT_CODE_TLS, "port {port}: {}", e.message);
    }
    let a = tls_agent(&s, true);
    for i in 0..5 {
        let r = a.get(tls_url(s.https_port(), "/")).unwrap();
        assert_eq!(r.text(), "hello, world\n");
        assert_eq!(r.reused(), i > 0);
        if i == 0 {
            assert!(r.timings().tls_us > 0);
        }
    }
    let r = a.get(tls_url(s.https_tls12_port(), "/")).unwrap();
    assert_eq!(r.status(), 200);
    for port in [
        s.https_self_signed_port(),
        s.https_wrong_host_port(),
        s.https_expired_port(),
    ] {
        let e = a.get(tls_url(port, "/")).unwrap_err();
        assert_eq!(e.code, C::AGENT_CODE_TLS, "port {port}: {}", e.message);
    }
    // A CA file works like CA bytes; reuse-off over TLS opens one connection per request.
    let path = std::ffi::CString::new(s.ca_pem_path().to_str().unwrap()).unwrap();
    let off = Options::new()
        .set(opt_bool(agent_options_set_keep_alive, false))
        .set(move |o| unsafe { agent_options_set_ca_file(o, path.as_ptr()) })
        .build()
        .unwrap();
    s.reset();
    for _ in 0..3 {
        assert!(!off.get(tls_url(s.https_port(), "/")).unwrap().reused());
    }
    assert_eq!(s.stats().accepted, 3);
    // danger_accept_invalid_certs accepts the self-signed server.
    let danger = Options::new()
        .set(opt_bool(
            agent_options_set_danger_accept_invalid_certs,
            true,
        ))
        .build()
        .unwrap();
    assert_eq!(
        danger
            .get(tls_url(s.https_self_signed_port(), "/"))
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn bad_ca_is_refused_at_creation() {
    let pem = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec();
    let e = Options::new()
        .set(move |o| unsafe { agent_options_set_ca_pem(o, pem.as_ptr(), pem.len()) })
        .build()
        .unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_INVALID_OPTION);
    let e = Options::new()
        .set(|o| unsafe { agent_options_set_ca_file(o, c"/nonexistent/ca.pem".as_ptr()) })
        .build()
        .unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_INVALID_OPTION);
    assert!(e.message.contains("/nonexistent/ca.pem"));
}

#[test]
fn async_callbacks_fire_exactly_once_and_blocking_inside_them_is_refused() {
    let s = Server::start();
    let a = Agent::new(true);
    let rxs: Vec<_> = (0..200)
        .map(|i| a.start(Req::get(url(&s, &format!("/?n={i}")))))
        .collect();
    for (_, rx) in rxs {
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap()
                .unwrap()
                .status(),
            200
        );
        assert!(
            rx.recv_timeout(Duration::from_millis(1)).is_err(),
            "second completion"
        );
    }
    assert_eq!(a.stats().requests, 200);

    extern "C" fn blocking_inside(
        ud: *mut std::ffi::c_void,
        code: agent_code,
        resp: *mut agent_response,
    ) {
        unsafe { agent_response_free(resp) };
        assert_eq!(code, agent_code::AGENT_CODE_OK);
        let (agent, tx) = unsafe { &*(ud as *const (usize, std::sync::mpsc::Sender<agent_code>)) };
        let mut out = std::ptr::null_mut();
        let c = unsafe {
            agent_request(
                *agent as *const keepalive_agent::ffi::agent::agent,
                c"GET".as_ptr(),
                c"http://127.0.0.1:1/".as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
                0,
                &mut out,
            )
        };
        tx.send(c).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel::<agent_code>();
    let ud = Box::new((a.0 as usize, tx));
    let u = std::ffi::CString::new(url(&s, "/")).unwrap();
    let code = unsafe {
        agent_request_async(
            a.0,
            c"GET".as_ptr(),
            u.as_ptr(),
            std::ptr::null(),
            0,
            std::ptr::null(),
            0,
            0,
            Some(blocking_inside),
            &*ud as *const _ as *mut std::ffi::c_void,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(code, C::AGENT_CODE_OK);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        C::AGENT_CODE_WOULD_BLOCK
    );
}

#[test]
fn cancelling_an_async_request() {
    let s = Server::start();
    let a = Agent::new(true);
    let (id, rx) = a.start(Req::get(url(&s, "/?delay_ms=1000")));
    assert!(s.wait_for(Duration::from_secs(2), |st| st.requests == 1));
    assert_eq!(a.cancel(id), C::AGENT_CODE_OK);
    let e = rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, C::AGENT_CODE_CANCELLED);
    assert_eq!(a.cancel(id), C::AGENT_CODE_NOT_FOUND);
    let st = a.stats();
    assert_eq!(
        (st.requests, st.errors),
        (1, 1),
        "a cancelled request counts as a failed one"
    );
    // The half-done connection was dropped, not pooled: the client closed it.
    assert!(a.wait_stats(Duration::from_secs(2), |st| st.active == 0 && st.idle == 0));
    assert!(s.wait_for(Duration::from_secs(3), |st| st.open == 0
        && st.client_closed == 1));
}

#[test]
fn response_read_gives_everything_in_one_call() {
    let s = Server::start();
    let a = Agent::new(true);
    a.get(url(&s, "/")).unwrap();
    let r = a.get(url(&s, "/?bytes=100")).unwrap();
    let mut p = std::mem::MaybeUninit::<agent_response_parts>::uninit();
    assert_eq!(
        unsafe { agent_response_read(r.0, p.as_mut_ptr()) },
        C::AGENT_CODE_OK
    );
    let p = unsafe { p.assume_init() };
    assert_eq!((p.status, p.version, p.reused), (200, 11, true));
    let body = unsafe { std::slice::from_raw_parts(p.body, p.body_len) };
    assert_eq!(body, &r.body()[..]);
    let block = unsafe { std::slice::from_raw_parts(p.headers, p.headers_len) };
    let lines: Vec<(String, String)> = String::from_utf8(block.to_vec())
        .unwrap()
        .split_terminator("\r\n")
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(lines, r.headers());
    assert_eq!(p.header_count, lines.len());
    assert_eq!(p.timings.total_us, r.timings().total_us);
    assert_eq!(
        unsafe { agent_response_read(std::ptr::null(), std::ptr::null_mut()) },
        C::AGENT_CODE_INVALID_ARGUMENT
    );
}
