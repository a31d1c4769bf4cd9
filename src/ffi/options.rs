//! `agent_options`: the options builder. Setters store values; every range is checked by
//! `agent_new_with_options`, which refuses bad values with `AGENT_CODE_INVALID_OPTION`.

use std::ffi::c_char;

use super::{agent_code, borrow_mut, c_bytes, c_str, guard, guard_value};
use crate::options::Options;

/// `agent_options_set_scheduling`: reuse the most recently released connection first.
pub const AGENT_SCHEDULING_LIFO: u32 = 0;
/// `agent_options_set_scheduling`: reuse the least recently released connection first.
pub const AGENT_SCHEDULING_FIFO: u32 = 1;

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
unsafe fn set(options: *mut agent_options, f: impl FnOnce(&mut Options)) -> agent_code {
    guard(|| {
        // SAFETY: per this function's contract.
        let o = unsafe { borrow_mut(options, "options") }?;
        f(&mut o.opts);
        Ok(())
    })
}

/// Reuse connections (true) or send `Connection: close` on a fresh connection for every
/// request (false). Default: true, unless KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED (or
/// AWS_NODEJS_CONNECTION_REUSE_ENABLED) is `false`/`0`. Setting it here always wins over
/// the environment. Node: `keepAlive`.
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
