//! Option validation (`Options::validate_with_env`) with arbitrary values and an arbitrary
//! environment switch.
//!
//! Invariants: never a panic; the result agrees with an independent reading of SPEC §2
//! (every range checked here again): accepted exactly when every value is in range, and a
//! refusal is `InvalidOption` with a message. Accepted values come back as documented
//! (0 = default/none/unlimited), and keep_alive follows SPEC §3: the switch saying false wins
//! unless ignore_environment; otherwise an explicit keep_alive wins.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use keepalive_agent::{ErrorKind, HttpVersion, Options, Scheduling};
use libfuzzer_sys::fuzz_target;

// SPEC §2 and §3, read independently of the library (which serves them from `limit`).
const ENV_REUSE: &str = "KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED";
const ENV_REUSE_AWS: &str = "AWS_NODEJS_CONNECTION_REUSE_ENABLED";
const MAX_MSECS: u32 = i32::MAX as u32;
const MAX_KEEPALIVE_MSECS: u32 = 32_767_000;
const MAX_KEEPALIVE_PROBES: u32 = 127;
const MAX_SOCKETS_LIMIT: u32 = 1 << 20;

#[derive(Arbitrary, Debug)]
struct Input {
    keep_alive: Option<bool>,
    ignore_environment: Option<bool>,
    keep_alive_msecs: Option<u32>,
    keep_alive_interval_msecs: Option<u32>,
    keep_alive_probes: Option<u32>,
    max_sockets: Option<u32>,
    max_total_sockets: Option<u32>,
    max_free_sockets: Option<u32>,
    scheduling: Option<u32>,
    free_socket_timeout_msecs: Option<u32>,
    keep_alive_timeout_buffer_msecs: Option<u32>,
    max_keep_alive_timeout_msecs: Option<u32>,
    max_socket_lifetime_msecs: Option<u32>,
    connect_timeout_msecs: Option<u32>,
    headers_timeout_msecs: Option<u32>,
    body_timeout_msecs: Option<u32>,
    retry_stale: Option<bool>,
    max_response_bytes: Option<u64>,
    use_system_roots: Option<bool>,
    danger_accept_invalid_certs: Option<bool>,
    user_agent: Option<String>,
    dns_cache_msecs: Option<u32>,
    happy_eyeballs_delay_msecs: Option<u32>,
    http_version: Option<u32>,
    env_reuse: Option<String>,
    env_reuse_aws: Option<String>,
}

fn ms(v: Option<u32>) -> Option<Duration> {
    v.filter(|&v| v > 0)
        .map(|v| Duration::from_millis(u64::from(v)))
}

fn switch(v: &Option<String>) -> Option<bool> {
    let v = v.as_deref()?.trim();
    if v.eq_ignore_ascii_case("false") || v == "0" {
        Some(false)
    } else if v.eq_ignore_ascii_case("true") || v == "1" {
        Some(true)
    } else {
        None
    }
}

/// The library serves the same bounds to its bindings.
fn check_limits() {
    for (name, v) in [
        ("max_msecs", MAX_MSECS),
        ("max_keep_alive_msecs", MAX_KEEPALIVE_MSECS),
        ("max_keep_alive_probes", MAX_KEEPALIVE_PROBES),
        ("max_sockets", MAX_SOCKETS_LIMIT),
    ] {
        assert_eq!(keepalive_agent::limit(name), Some(u64::from(v)), "{name}");
    }
}

fuzz_target!(|i: Input| {
    check_limits();
    let o = Options {
        keep_alive: i.keep_alive,
        ignore_environment: i.ignore_environment,
        keep_alive_msecs: i.keep_alive_msecs,
        keep_alive_interval_msecs: i.keep_alive_interval_msecs,
        keep_alive_probes: i.keep_alive_probes,
        max_sockets: i.max_sockets,
        max_total_sockets: i.max_total_sockets,
        max_free_sockets: i.max_free_sockets,
        scheduling: i.scheduling,
        free_socket_timeout_msecs: i.free_socket_timeout_msecs,
        keep_alive_timeout_buffer_msecs: i.keep_alive_timeout_buffer_msecs,
        max_keep_alive_timeout_msecs: i.max_keep_alive_timeout_msecs,
        max_socket_lifetime_msecs: i.max_socket_lifetime_msecs,
        connect_timeout_msecs: i.connect_timeout_msecs,
        headers_timeout_msecs: i.headers_timeout_msecs,
        body_timeout_msecs: i.body_timeout_msecs,
        retry_stale: i.retry_stale,
        max_response_bytes: i.max_response_bytes,
        ca_pem: None,
        ca_file: None,
        use_system_roots: i.use_system_roots,
        danger_accept_invalid_certs: i.danger_accept_invalid_certs,
        user_agent: i.user_agent.clone(),
        dns_cache_msecs: i.dns_cache_msecs,
        happy_eyeballs_delay_msecs: i.happy_eyeballs_delay_msecs,
        http_version: i.http_version,
        // Proxies, resolve entries and client certificates have fuzz targets of their own
        // (proxy) or need files.
        ..Default::default()
    };
    let env = |name: &str| {
        if name == ENV_REUSE {
            i.env_reuse.clone()
        } else if name == ENV_REUSE_AWS {
            i.env_reuse_aws.clone()
        } else {
            None
        }
    };

    // SPEC §2, read independently.
    let in_range = |v: Option<u32>, max: u32| v.is_none_or(|v| v <= max);
    let expect_ok = in_range(i.keep_alive_msecs, MAX_KEEPALIVE_MSECS)
        && in_range(i.keep_alive_interval_msecs, MAX_KEEPALIVE_MSECS)
        && in_range(i.keep_alive_probes, MAX_KEEPALIVE_PROBES)
        && in_range(i.max_sockets, MAX_SOCKETS_LIMIT)
        && in_range(i.max_total_sockets, MAX_SOCKETS_LIMIT)
        && in_range(i.max_free_sockets, MAX_SOCKETS_LIMIT)
        && in_range(i.scheduling, 1)
        && in_range(i.http_version, 3)
        && [
            i.free_socket_timeout_msecs,
            i.keep_alive_timeout_buffer_msecs,
            i.max_keep_alive_timeout_msecs,
            i.max_socket_lifetime_msecs,
            i.connect_timeout_msecs,
            i.headers_timeout_msecs,
            i.body_timeout_msecs,
            i.dns_cache_msecs,
            i.happy_eyeballs_delay_msecs,
        ]
        .iter()
        .all(|&v| in_range(v, MAX_MSECS))
        && i.user_agent
            .as_deref()
            .is_none_or(|ua| http::HeaderValue::from_str(ua).is_ok());

    let res = o.validate_with_env(env);
    let c = match res {
        Err(e) => {
            assert!(!expect_ok, "refused valid options {i:?}: {e}");
            assert_eq!(e.kind(), ErrorKind::InvalidOption, "{e}");
            assert!(!e.message().is_empty());
            return;
        }
        Ok(c) => {
            assert!(expect_ok, "accepted invalid options {i:?}");
            c
        }
    };

    let env_says = if i.ignore_environment == Some(true) {
        None
    } else {
        switch(&i.env_reuse).or_else(|| switch(&i.env_reuse_aws))
    };
    let want_ka = match (env_says, i.keep_alive) {
        (Some(false), _) => false,
        (_, Some(v)) => v,
        (Some(true), None) => true,
        (None, None) => true,
    };
    assert_eq!(c.keep_alive, want_ka, "{i:?}");
    let ka_ms = match i.keep_alive_msecs {
        None | Some(0) => 1000,
        Some(v) => v,
    };
    assert_eq!(c.keep_alive_msecs, ka_ms);
    assert!((1..=32_767).contains(&c.keep_alive_idle_secs()));
    assert_eq!(c.keep_alive_interval, ms(i.keep_alive_interval_msecs));
    assert_eq!(c.keep_alive_probes, i.keep_alive_probes.filter(|&p| p > 0));
    let limit = |v: Option<u32>| v.filter(|&v| v > 0).map(|v| v as usize);
    assert_eq!(c.max_sockets, limit(i.max_sockets));
    assert_eq!(c.max_total_sockets, limit(i.max_total_sockets));
    assert_eq!(
        c.max_free_sockets,
        i.max_free_sockets.unwrap_or(256) as usize
    );
    assert_eq!(
        c.scheduling,
        if i.scheduling == Some(1) {
            Scheduling::Fifo
        } else {
            Scheduling::Lifo
        }
    );
    let or = |v: Option<u32>, d: u32| ms(Some(v.unwrap_or(d)));
    assert_eq!(c.free_socket_timeout, or(i.free_socket_timeout_msecs, 4000));
    assert_eq!(c.connect_timeout, or(i.connect_timeout_msecs, 10_000));
    assert_eq!(c.headers_timeout, or(i.headers_timeout_msecs, 300_000));
    assert_eq!(c.body_timeout, or(i.body_timeout_msecs, 300_000));
    assert_eq!(c.dns_cache, or(i.dns_cache_msecs, 60_000));
    assert_eq!(
        c.http_version,
        match i.http_version {
            Some(0) => HttpVersion::Auto,
            None | Some(1) => HttpVersion::Http1,
            Some(2) => HttpVersion::Http2,
            _ => HttpVersion::H2cPriorKnowledge,
        }
    );
    assert_eq!(
        c.happy_eyeballs_delay,
        Duration::from_millis(u64::from(i.happy_eyeballs_delay_msecs.unwrap_or(250)))
    );
    assert_eq!(c.max_socket_lifetime, ms(i.max_socket_lifetime_msecs));
    assert_eq!(
        c.keep_alive_timeout_buffer,
        Duration::from_millis(u64::from(i.keep_alive_timeout_buffer_msecs.unwrap_or(1000)))
    );
    assert_eq!(
        c.max_keep_alive_timeout,
        Duration::from_millis(u64::from(i.max_keep_alive_timeout_msecs.unwrap_or(600_000)))
    );
    assert_eq!(c.retry_stale, i.retry_stale.unwrap_or(true));
    assert_eq!(
        c.max_response_bytes,
        i.max_response_bytes.filter(|&n| n > 0)
    );
    assert_eq!(c.use_system_roots, i.use_system_roots.unwrap_or(true));
    assert_eq!(
        c.danger_accept_invalid_certs,
        i.danger_accept_invalid_certs.unwrap_or(false)
    );
    match &i.user_agent {
        Some(ua) => assert_eq!(&c.user_agent, ua),
        None => assert!(c.user_agent.starts_with("keepalive-agent/")),
    }
});
