//! `agent_options`: the options builder. Setters store values; every range is checked by
//! `agent_new_with_options`, which refuses bad values with `AGENT_CODE_INVALID_OPTION`.

use std::ffi::c_char;

use super::{agent_code, borrow_mut, c_bytes, c_str, guard, guard_value};
use crate::options::Options;

/// `agent_options_set_scheduling`: reuse the most recently released connection first.
pub const AGENT_SCHEDULING_LIFO: u32 = 0;
/// `agent_options_set_scheduling`: reuse the least recently released connection first.
pub const AGENT_SCHEDULING_FIFO: u32 = 1;

/// `agent_options_set_http_version`: over TLS, offer h2 then http/1.1 by ALPN and let the
/// server choose; plain http stays HTTP/1.1.
pub const AGENT_HTTP_VERSION_AUTO: u32 = 0;
/// `agent_options_set_http_version`: HTTP/1.1 only.
pub const AGENT_HTTP_VERSION_HTTP1: u32 = 1;
/// `agent_options_set_http_version`: HTTP/2 over TLS only (ALPN offers `h2` alone; a server
/// without it fails the request: `AGENT_CODE_TLS` when it ends the handshake with a
/// `no_application_protocol` alert, as nginx does, `AGENT_CODE_PROTOCOL` when it completes
/// the handshake without choosing); plain http stays HTTP/1.1.
pub const AGENT_HTTP_VERSION_HTTP2: u32 = 2;
/// `agent_options_set_http_version`: HTTP/2 also on plain http, without an upgrade
/// (curl's `--http2-prior-knowledge`); h2 by ALPN over TLS.
pub const AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE: u32 = 3;

/// Options for `agent_new_with_options`. Create with `agent_options_new`, set what you need
/// with `agent_options_set_*` (each returns `AGENT_CODE_INVALID_ARGUMENT` only for a NULL
/// handle or unreadable argument), pass to `agent_new_with_options` (which validates
/// ranges and copies everything, so the options may be freed or reused right after), and
/// free with `agent_options_free`. Not synchronized: use one thread at a time.
pub struct agent_options {
    pub(crate) opts: Options,
}

/// A new set of options, all at their defaults. Free with `agent_options_free`.
/// Returns NULL only if memory is exhausted.
#[unsafe(no_mangle)]
pub extern "C" fn agent_options_new() -> *mut agent_options {
    guard_value(std::ptr::null_mut(), || {
        Box::into_raw(Box::new(agent_options {
            opts: Options::default(),
        }))
    })
}

/// Frees options from `agent_options_new`. NULL is ignored.
///
/// # Safety
/// `options` is NULL or came from `agent_options_new` and was not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_free(options: *mut agent_options) {
    guard_value((), || {
        if !options.is_null() {
            // SAFETY: created by Box::into_raw in agent_options_new, freed once.
            drop(unsafe { Box::from_raw(options) });
        }
    })
}

/// Applies `f` to the options behind `options`.
///
/// # Safety
/// `options` is NULL or a live `agent_options` not used by another thread.
pub(super) unsafe fn set(options: *mut agent_options, f: impl FnOnce(&mut Options)) -> agent_code {
    guard(|| {
        // SAFETY: per this function's contract.
        let o = unsafe { borrow_mut(options, "options") }?;
        f(&mut o.opts);
        Ok(())
    })
}

/// Reuse connections (true) or send `Connection: close` on a fresh connection for every
/// request (false). Default: true. The process switch KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED
/// (or its alias AWS_NODEJS_CONNECTION_REUSE_ENABLED) set to `false`/`0` turns reuse off
/// even when this says true, unless `agent_options_set_ignore_environment`; set to
/// `true`/`1` it only changes the default. false here always wins. Node: `keepAlive`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_keep_alive(
    options: *mut agent_options,
    keep_alive: bool,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.keep_alive = Some(keep_alive)) }
}

/// The process switch (KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED and its alias
/// AWS_NODEJS_CONNECTION_REUSE_ENABLED) does not apply to this agent (default false): for
/// the rare client that must keep reuse on when whoever runs the program turned it off.
/// Python: `ignore_environment`; Node: `ignoreEnvironment`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_ignore_environment(
    options: *mut agent_options,
    ignore: bool,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.ignore_environment = Some(ignore)) }
}

/// Initial delay of TCP keep-alive probes in ms (SO_KEEPALIVE + TCP_KEEPIDLE =
/// ceil(msecs/1000) s, at least 1). 0 = the default, 1000. Max 32767000. Not applied when
/// keep_alive is false. Node: `keepAliveMsecs`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_keep_alive_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.keep_alive_msecs = Some(msecs)) }
}

/// Interval between TCP keep-alive probes in ms (TCP_KEEPINTVL, whole seconds rounded
/// down by the kernel). 0 = the OS default. Node: `keepAliveInterval`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_keep_alive_interval_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.keep_alive_interval_msecs = Some(msecs)) }
}

/// Unanswered TCP keep-alive probes before the connection is dropped (TCP_KEEPCNT,
/// 1..127). 0 = the OS default. Node: `keepAliveProbes`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_keep_alive_probes(
    options: *mut agent_options,
    probes: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.keep_alive_probes = Some(probes)) }
}

/// Most connections per origin (scheme, host, port); further requests queue, FIFO.
/// 0 = unlimited (default). Node: `maxSockets`; undici: `connections`;
/// curl: `CURLMOPT_MAX_HOST_CONNECTIONS`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_max_sockets(
    options: *mut agent_options,
    max: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.max_sockets = Some(max)) }
}

/// Most connections across all origins of the agent; further requests queue. 0 = unlimited
/// (default). Node: `maxTotalSockets`; curl: `CURLMOPT_MAX_TOTAL_CONNECTIONS`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_max_total_sockets(
    options: *mut agent_options,
    max: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.max_total_sockets = Some(max)) }
}

/// Most idle connections kept per origin (default 256); extra ones are closed when
/// released. Node: `maxFreeSockets`; curl: `CURLOPT_MAXCONNECTS`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_max_free_sockets(
    options: *mut agent_options,
    max: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.max_free_sockets = Some(max)) }
}

/// Which idle connection is reused first: `AGENT_SCHEDULING_LIFO` (0, default, most
/// recently released) or `AGENT_SCHEDULING_FIFO` (1). Other values are refused by
/// `agent_new_with_options`. Node: `scheduling`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_scheduling(
    options: *mut agent_options,
    scheduling: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.scheduling = Some(scheduling)) }
}

/// An idle pooled connection is closed after this many ms (default 4000; 0 = never,
/// except by server hints and max_socket_lifetime). Node: `timeout` of agentkeepalive
/// (`freeSocketTimeout`); undici: `keepAliveTimeout`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_free_socket_timeout_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.free_socket_timeout_msecs = Some(msecs)) }
}

/// Subtracted from a server's `Keep-Alive: timeout=N` hint (default 1000 ms); a hint minus
/// buffer <= 0 means the connection is not reused. undici: `keepAliveTimeoutThreshold`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_keep_alive_timeout_buffer_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.keep_alive_timeout_buffer_msecs = Some(msecs)) }
}

/// Cap on a server's `Keep-Alive: timeout` hint (default 600000 ms). undici:
/// `keepAliveMaxTimeout`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_max_keep_alive_timeout_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.max_keep_alive_timeout_msecs = Some(msecs)) }
}

/// A connection older than this many ms is not reused (default 0 = no limit).
/// agentkeepalive: `socketActiveTTL`; curl: `CURLOPT_MAXLIFETIME_CONN`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_max_socket_lifetime_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.max_socket_lifetime_msecs = Some(msecs)) }
}

/// Limit for DNS + TCP connect + TLS handshake in ms (default 10000; 0 = none).
/// undici: `connectTimeout`; curl: `CURLOPT_CONNECTTIMEOUT_MS`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_connect_timeout_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.connect_timeout_msecs = Some(msecs)) }
}

/// Limit from sending a request to a complete response head, in ms (default 300000;
/// 0 = none). undici: `headersTimeout`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_headers_timeout_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.headers_timeout_msecs = Some(msecs)) }
}

/// Longest gap between two body chunks, in ms (default 300000; 0 = none). undici:
/// `bodyTimeout`; curl: `CURLOPT_LOW_SPEED_TIME` in spirit.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_body_timeout_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.body_timeout_msecs = Some(msecs)) }
}

/// When a reused connection fails before the first response byte, retry GET, HEAD,
/// OPTIONS, PUT, DELETE, TRACE (and any request with an `Idempotency-Key` header) once on
/// a new connection (default true). Go's `http.Transport` does the same.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_retry_stale(
    options: *mut agent_options,
    retry: bool,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.retry_stale = Some(retry)) }
}

/// Bodies larger than this fail with `AGENT_CODE_RESPONSE_TOO_LARGE` and the connection is
/// dropped (default 0 = unlimited). undici: `maxResponseSize`; curl:
/// `CURLOPT_MAXFILESIZE_LARGE`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_max_response_bytes(
    options: *mut agent_options,
    max: u64,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.max_response_bytes = Some(max)) }
}

/// Extra trust anchors as PEM bytes (one or more `CERTIFICATE` blocks), added to the
/// system roots. The bytes are copied. Parsed by `agent_new_with_options`.
/// Node: `ca`; curl: `CURLOPT_CAINFO_BLOB`.
///
/// # Safety
/// `options` is NULL or a live handle; `pem` points to `len` bytes (NULL when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_ca_pem(
    options: *mut agent_options,
    pem: *const u8,
    len: usize,
) -> agent_code {
    guard(|| {
        // SAFETY: per this function's contract.
        let bytes = unsafe { c_bytes(pem, len, "pem") }?.to_vec();
        // SAFETY: per this function's contract.
        let o = unsafe { borrow_mut(options, "options") }?;
        o.opts.ca_pem = Some(bytes);
        Ok(())
    })
}

/// Extra trust anchors from a PEM file, added to the system roots. The file is read by
/// `agent_new_with_options`. curl: `CURLOPT_CAINFO`.
///
/// # Safety
/// `options` is NULL or a live handle; `path` is a NUL-terminated UTF-8 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_ca_file(
    options: *mut agent_options,
    path: *const c_char,
) -> agent_code {
    guard(|| {
        // SAFETY: per this function's contract.
        let path = unsafe { c_str(path, "path") }?.to_owned();
        // SAFETY: per this function's contract.
        let o = unsafe { borrow_mut(options, "options") }?;
        o.opts.ca_file = Some(path);
        Ok(())
    })
}

/// Trust the platform's CA store (default true). With false, only the CAs given with
/// `agent_options_set_ca_pem`/`_ca_file` are trusted.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_use_system_roots(
    options: *mut agent_options,
    use_system_roots: bool,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.use_system_roots = Some(use_system_roots)) }
}

/// DANGER: accept any server certificate (expired, self-signed, wrong host). For tests
/// against throw-away servers only; it removes all protection TLS gives. Default false.
/// Node: `rejectUnauthorized: false`; curl: `CURLOPT_SSL_VERIFYPEER = 0`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_danger_accept_invalid_certs(
    options: *mut agent_options,
    accept: bool,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.danger_accept_invalid_certs = Some(accept)) }
}

/// The `User-Agent` sent when a request does not set its own (default
/// `keepalive-agent/<version>`). Copied. curl: `CURLOPT_USERAGENT`.
///
/// # Safety
/// `options` is NULL or a live handle; `user_agent` is a NUL-terminated UTF-8 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_user_agent(
    options: *mut agent_options,
    user_agent: *const c_char,
) -> agent_code {
    guard(|| {
        // SAFETY: per this function's contract.
        let ua = unsafe { c_str(user_agent, "user_agent") }?.to_owned();
        // SAFETY: per this function's contract.
        let o = unsafe { borrow_mut(options, "options") }?;
        o.opts.user_agent = Some(ua);
        Ok(())
    })
}

/// Copies a C string into the options with `apply`.
///
/// # Safety
/// `options` is NULL or a live handle; `s` is NULL or a NUL-terminated string.
unsafe fn set_str(
    options: *mut agent_options,
    s: *const c_char,
    name: &str,
    apply: impl FnOnce(&mut Options, String),
) -> agent_code {
    guard(|| {
        // SAFETY: per this function's contract.
        let s = unsafe { c_str(s, name) }?.to_owned();
        // SAFETY: per this function's contract.
        let o = unsafe { borrow_mut(options, "options") }?;
        apply(&mut o.opts, s);
        Ok(())
    })
}

/// Copies `len` bytes into the options with `apply`.
///
/// # Safety
/// `options` is NULL or a live handle; `p` points to `len` bytes (NULL when `len` is 0).
unsafe fn set_bytes(
    options: *mut agent_options,
    p: *const u8,
    len: usize,
    name: &str,
    apply: impl FnOnce(&mut Options, Vec<u8>),
) -> agent_code {
    guard(|| {
        // SAFETY: per this function's contract.
        let bytes = unsafe { c_bytes(p, len, name) }?.to_vec();
        // SAFETY: per this function's contract.
        let o = unsafe { borrow_mut(options, "options") }?;
        apply(&mut o.opts, bytes);
        Ok(())
    })
}

/// The proxy for every request of the agent, overriding the environment: `http://` or
/// `https://` (TLS to the proxy), optional `user:password@` (percent-encoded; sent to the
/// proxy as Basic credentials, never to the origin), host and port (default 1080 as
/// curl's). `""` means no proxy at all, whatever the environment says. Checked by
/// `agent_new_with_options`. curl: `CURLOPT_PROXY`.
///
/// # Safety
/// `options` is NULL or a live handle; `url` is a NUL-terminated UTF-8 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_proxy(
    options: *mut agent_options,
    url: *const c_char,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set_str(options, url, "url", |o, s| o.proxy = Some(s)) }
}

/// The hosts that bypass the proxy, overriding `NO_PROXY`: comma-separated names (each
/// also matches the names under it; a leading `.` or `*.` is the same), IP addresses,
/// CIDR blocks (`10.0.0.0/8`), or `*` for every host. curl: `CURLOPT_NOPROXY`.
///
/// # Safety
/// `options` is NULL or a live handle; `list` is a NUL-terminated UTF-8 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_no_proxy(
    options: *mut agent_options,
    list: *const c_char,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set_str(options, list, "list", |o, s| o.no_proxy = Some(s)) }
}

/// Whether the environment's proxy variables are read (default true), as curl reads them:
/// `http_proxy` (lower case only) for http, `https_proxy`/`HTTPS_PROXY` for https,
/// `all_proxy`/`ALL_PROXY` for both, `no_proxy`/`NO_PROXY`. Read once, by
/// `agent_new_with_options`; an explicit proxy or no-proxy list wins over them.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_proxy_from_env(
    options: *mut agent_options,
    from_env: bool,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.proxy_from_env = Some(from_env)) }
}

/// Adds a name override, like one entry of curl's `CURLOPT_RESOLVE`:
/// `host:port:address[,address...]` (IPv6 addresses plain or in brackets). Requests to
/// that host and port connect to those addresses, in that order (with happy eyeballs),
/// without a lookup. Checked by `agent_new_with_options`.
///
/// # Safety
/// `options` is NULL or a live handle; `entry` is a NUL-terminated UTF-8 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_add_resolve(
    options: *mut agent_options,
    entry: *const c_char,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set_str(options, entry, "entry", |o, s| o.resolve.push(s)) }
}

/// How long resolved addresses are reused (default 60000 ms, as curl; 0: every new
/// connection looks its host up again). curl: `CURLOPT_DNS_CACHE_TIMEOUT`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_dns_cache_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.dns_cache_msecs = Some(msecs)) }
}

/// RFC 8305's connection-attempt delay (default 250 ms): when a host has several
/// addresses (families interleaved, the system's preferred first), the next one is tried
/// after this long, or as soon as the previous attempt fails; the first to connect wins
/// and the others are closed. While more addresses remain, one attempt may take at most
/// half the connect timeout (curl's rule), so the next starts by then whatever the delay.
/// curl: `CURLOPT_HAPPY_EYEBALLS_TIMEOUT_MS`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_happy_eyeballs_delay_msecs(
    options: *mut agent_options,
    msecs: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.happy_eyeballs_delay_msecs = Some(msecs)) }
}

/// The client certificate chain for mutual TLS, as PEM bytes (copied); needs a key.
/// Node: `cert`; curl: `CURLOPT_SSLCERT_BLOB`.
///
/// # Safety
/// `options` is NULL or a live handle; `pem` points to `len` bytes (NULL when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_client_cert_pem(
    options: *mut agent_options,
    pem: *const u8,
    len: usize,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set_bytes(options, pem, len, "pem", |o, b| o.client_cert_pem = Some(b)) }
}

/// The client certificate chain for mutual TLS, from a PEM file (read by
/// `agent_new_with_options`). curl: `CURLOPT_SSLCERT`.
///
/// # Safety
/// `options` is NULL or a live handle; `path` is a NUL-terminated UTF-8 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_client_cert_file(
    options: *mut agent_options,
    path: *const c_char,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set_str(options, path, "path", |o, s| o.client_cert_file = Some(s)) }
}

/// The private key of the client certificate (PKCS#8, PKCS#1 or SEC1 PEM bytes, copied).
/// Node: `key`; curl: `CURLOPT_SSLKEY_BLOB`.
///
/// # Safety
/// `options` is NULL or a live handle; `pem` points to `len` bytes (NULL when `len` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_client_key_pem(
    options: *mut agent_options,
    pem: *const u8,
    len: usize,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set_bytes(options, pem, len, "pem", |o, b| o.client_key_pem = Some(b)) }
}

/// The private key of the client certificate, from a PEM file (read by
/// `agent_new_with_options`). curl: `CURLOPT_SSLKEY`.
///
/// # Safety
/// `options` is NULL or a live handle; `path` is a NUL-terminated UTF-8 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_client_key_file(
    options: *mut agent_options,
    path: *const c_char,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set_str(options, path, "path", |o, s| o.client_key_file = Some(s)) }
}

/// Which HTTP versions the agent speaks: `AGENT_HTTP_VERSION_AUTO`, `_HTTP1`, `_HTTP2` or
/// `_H2C_PRIOR_KNOWLEDGE` (see their definitions). Other values are refused by
/// `agent_new_with_options`. With HTTP/2, requests to one origin share one connection, as
/// many at once as the server allows (`SETTINGS_MAX_CONCURRENT_STREAMS`), then another
/// within `max_sockets`. Node: `httpVersion`; curl: `CURLOPT_HTTP_VERSION`.
///
/// # Safety
/// `options` is NULL or a live handle from `agent_options_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_http_version(
    options: *mut agent_options,
    version: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.http_version = Some(version)) }
}
