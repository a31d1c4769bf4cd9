//! `agent`: creation, requests (blocking and async), cancellation, statistics, freeing.

use std::ffi::{c_char, c_void};

use super::options::agent_options;
use super::response::agent_response;
use super::{
    agent_code, borrow, c_bytes, c_str, ensure_atfork, guard, guard_value, null, out_ptr, outcome,
    write_if_wanted,
};
use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::http::{Request, parse_header, request_timeout};
use crate::options::Options;
use crate::stats::Stats;

/// An HTTP/1.1 client with a keep-alive connection pool.
///
/// Create with `agent_new` or `agent_new_with_options`; send with `agent_request`
/// (blocking) or `agent_request_async` (callback); read `agent_stats`; free with
/// `agent_free`.
///
/// Thread safety: one agent may be used from any number of threads at once (its functions
/// take `const agent *`); `agent_free` must not race any other call on the same agent.
pub struct agent {
    inner: Agent,
}

impl agent {
    pub(crate) fn agent(&self) -> &Agent {
        &self.inner
    }
}

/// One request header: NUL-terminated name and value. Names must be HTTP tokens; values
/// must not contain CR, LF, NUL or other control characters (tab is allowed; bytes
/// 0x80-0xFF are sent as they are, as RFC 9110's obs-text allows). The same name may appear
/// more than once.
#[repr(C)]
pub struct agent_header {
    pub name: *const c_char,
    pub value: *const c_char,
}

/// Counters and gauges of an agent (or of one origin). Counters only grow; gauges
/// (`active`, `idle`, `queued`) are a snapshot. The same fields, without `keep_alive`,
/// are listed by `agent_stats_field_name` and read by `agent_stats_values`, in this order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct agent_pool_stats {
    /// Connections established (TCP, plus TLS for https).
    pub connections_opened: u64,
    /// Connections that ended, for any reason (idle timeout, server close, error, free).
    pub connections_closed: u64,
    /// Connections dropped because a request on them timed out.
    pub connections_timed_out: u64,
    /// Connections dropped because a request on them failed.
    pub connections_errored: u64,
    /// Requests finished, successfully or not (a transparent retry is not counted again).
    pub requests: u64,
    /// Successful requests sent on a connection that had served an earlier request.
    pub reused_requests: u64,
    /// Transparent retries after a stale reused connection (retry_stale).
    pub retries: u64,
    /// Requests that failed with a timeout code.
    pub timeouts: u64,
    /// Requests that failed with any code (timeouts and cancellations included).
    pub errors: u64,
    /// Connections connecting or serving a request now.
    pub active: u64,
    /// Connections idle in the pool now.
    pub idle: u64,
    /// Requests waiting for a connection now.
    pub queued: u64,
    /// The effective keep-alive setting of the agent (after the environment switch).
    pub keep_alive: bool,
    /// Name lookups (`getaddrinfo`) made for connections that opened.
    pub dns_lookups: u64,
    /// Connections that opened with addresses from the agent's DNS cache.
    pub dns_cache_hits: u64,
    /// HTTP/2 streams started (a request is counted once in `requests`, and once here per
    /// stream it took: a refused stream sent again counts twice).
    pub h2_streams: u64,
    /// HTTP/2 connections opened (also counted in `connections_opened`).
    pub h2_connections: u64,
}

/// Completion callback of `agent_request_async`. Called exactly once per started request,
/// on a library thread, with `code == AGENT_CODE_OK` and a response the callee owns (free
/// it with `agent_response_free`, from any thread), or with an error code and `response`
/// NULL; `agent_last_error` on that thread then gives the message. A cancelled request,
/// or one still in flight when its agent is freed, completes with `AGENT_CODE_CANCELLED`.
///
/// The callback must not block for long (it holds a library thread) and must not call
/// `agent_request` (refused with `AGENT_CODE_WOULD_BLOCK`); it may call
/// `agent_request_async`, `agent_request_cancel`, `agent_stats` and the response functions.
pub type agent_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, code: agent_code, response: *mut agent_response),
>;

fn create(opts: &Options) -> Result<*mut agent> {
    ensure_atfork();
    let inner = Agent::new(opts)?;
    Ok(Box::into_raw(Box::new(agent { inner })))
}

/// Creates an agent with keep-alive on or off and the TCP keep-alive probe delay
/// `keep_alive_msecs` (0 = default 1000; see `agent_options_set_keep_alive_msecs`), all
/// other options at their defaults. false here always turns reuse off; true is overruled
/// by the process switch (KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED or its alias set to
/// false/0), which whoever runs the program uses to turn reuse off everywhere. Free with
/// `agent_free`.
///
/// Returns NULL on failure, with the message in `agent_last_error`. The possible failures
/// are an out-of-range `keep_alive_msecs` (what `agent_new_with_options` reports as
/// `AGENT_CODE_INVALID_OPTION`) and a runtime that cannot start (out of threads or memory).
/// Use `agent_new_with_options` to get a code.
#[unsafe(no_mangle)]
pub extern "C" fn agent_new(keep_alive: bool, keep_alive_msecs: u32) -> *mut agent {
    let mut out = std::ptr::null_mut();
    let code = guard(|| {
        out = create(&Options {
            keep_alive: Some(keep_alive),
            keep_alive_msecs: Some(keep_alive_msecs),
            ..Options::default()
        })?;
        Ok(())
    });
    if code == agent_code::AGENT_CODE_OK {
        out
    } else {
        std::ptr::null_mut()
    }
}

/// Creates an agent from options, validating every value: a bad value gives
/// `AGENT_CODE_INVALID_OPTION` (and a message naming it), a NULL argument
/// `AGENT_CODE_INVALID_ARGUMENT`. On success `*out` receives the agent (free it with
/// `agent_free`); on failure `*out` is untouched. The options are copied.
///
/// # Safety
/// `options` is NULL or a live handle; `out` must be writable (NULL is refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_new_with_options(
    options: *const agent_options,
    out: *mut *mut agent,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let opts = unsafe { borrow(options, "options") }?;
        let out = out_ptr(out, "out")?;
        out.write(create(&opts.opts)?);
        Ok(())
    })
}

/// Frees an agent: cancels its in-flight async requests (their callbacks run with
/// `AGENT_CODE_CANCELLED`), closes every connection, and waits up to 5 s for both —
/// unless called on a library thread (from a callback), where it does not wait. NULL is
/// ignored. Must not race other calls on the same agent.
///
/// # Safety
/// `agent` is NULL or came from `agent_new`/`agent_new_with_options`, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_free(agent: *mut agent) {
    guard_value((), || {
        if !agent.is_null() {
            // SAFETY: created by Box::into_raw in `create`, freed once (caller's promise).
            let a = unsafe { Box::from_raw(agent) };
            a.inner.close();
            drop(a);
        }
    })
}

/// Builds and validates a request from C arguments. Nothing is sent when this fails.
///
/// # Safety
/// Pointers as documented for `agent_request`.
pub(crate) unsafe fn build_request(
    method: *const c_char,
    url: *const c_char,
    headers: *const agent_header,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    timeout_msecs: u32,
) -> Result<Request> {
    // SAFETY: forwarded contract.
    let method = unsafe { c_str(method, "method") }?;
    // SAFETY: forwarded contract.
    let url = unsafe { c_str(url, "url") }?;
    let mut req = Request::new(method, url)?;
    if header_count > 0 {
        if headers.is_null() {
            return Err(null("headers"));
        }
        // SAFETY: `headers` points to `header_count` entries (caller's promise).
        let hs = unsafe { std::slice::from_raw_parts(headers, header_count) };
        req.headers.reserve(hs.len());
        for (i, h) in hs.iter().enumerate() {
            if h.name.is_null() || h.value.is_null() {
                return Err(Error::invalid_argument(format!(
                    "headers[{i}] has a NULL name or value"
                )));
            }
            // SAFETY: non-NULL, NUL-terminated (caller's promise).
            let (n, v) = unsafe {
                (
                    std::ffi::CStr::from_ptr(h.name),
                    std::ffi::CStr::from_ptr(h.value),
                )
            };
            let (n, v) = parse_header(n.to_bytes(), v.to_bytes())?;
            req.headers.append(n, v);
        }
    }
    // SAFETY: forwarded contract.
    let body = unsafe { c_bytes(body, body_len, "body") }?;
    req.body = crate::http::Body::Bytes(bytes::Bytes::copy_from_slice(body));
    req.timeout = request_timeout(timeout_msecs)?;
    req.pieces = true; // made contiguous by `agent_response` only when asked
    Ok(req)
}

/// Sends a request and blocks until the whole response has arrived.
///
/// - `method`: an HTTP token such as "GET" or "POST".
/// - `url`: an absolute http:// or https:// URL.
/// - `headers`/`header_count`: any number of headers (NULL when 0). `Host` and
///   `User-Agent` are added unless given; `Content-Length` follows the body.
/// - `body`/`body_len`: the request body, copied (NULL when 0).
/// - `timeout_msecs`: overall deadline covering queueing, connecting, sending and reading
///   (0 = none; at most 2147483647).
/// - `out`: receives the response on success (free with `agent_response_free`).
///
/// Returns `AGENT_CODE_OK`, or: `INVALID_ARGUMENT` (NULL, non-UTF-8, header injection,
/// bad method — nothing is sent), `INVALID_URL`, `DNS`, `CONNECT_REFUSED`,
/// `CONNECT_TIMEOUT`, `CONNECT`, `TLS`, `HEADERS_TIMEOUT`, `BODY_TIMEOUT`, `TIMEOUT`,
/// `CONNECTION_RESET`, `CONNECTION_CLOSED`, `BROKEN_PIPE`, `STALE_CONNECTION`, `PROTOCOL`,
/// `RESPONSE_TOO_LARGE`, `WOULD_BLOCK` (called from a completion callback), `FORKED`.
/// Any HTTP status, including 4xx and 5xx, is a success.
///
/// # Safety
/// `agent` is NULL or live; strings are NULL or NUL-terminated; `headers` points to
/// `header_count` entries; `body` to `body_len` bytes; `out` must be writable (NULL is refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_request(
    agent: *const agent,
    method: *const c_char,
    url: *const c_char,
    headers: *const agent_header,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    timeout_msecs: u32,
    out: *mut *mut agent_response,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        let out = out_ptr(out, "out")?;
        // SAFETY: forwarded contract.
        let req = unsafe {
            build_request(
                method,
                url,
                headers,
                header_count,
                body,
                body_len,
                timeout_msecs,
            )
        }?;
        let resp = a.inner.request_blocking(req)?;
        out.write(agent_response::boxed(resp));
        Ok(())
    })
}

/// The caller's userdata, carried to the completion callback on a library thread.
pub(crate) struct Userdata(pub(crate) *mut c_void);
// SAFETY: the pointer is opaque to us and only handed back to the caller's callback, which
// the caller documented (by using this API) as safe to run on another thread.
unsafe impl Send for Userdata {}

/// Starts a request and returns at once; `callback(userdata, code, response)` runs exactly
/// once on a library thread when it completes (see `agent_callback`). Arguments as for
/// `agent_request` (all copied before this returns). `out_id`, if not NULL, receives an id
/// for `agent_request_cancel`.
///
/// When this returns an error code (bad argument, agent being freed), the callback is NOT
/// called. `callback` NULL is `AGENT_CODE_INVALID_ARGUMENT`.
///
/// # Safety
/// As `agent_request`; `userdata` must stay valid until the callback has run.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_request_async(
    agent: *const agent,
    method: *const c_char,
    url: *const c_char,
    headers: *const agent_header,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    timeout_msecs: u32,
    callback: agent_callback,
    userdata: *mut c_void,
    out_id: *mut u64,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        let cb = callback.ok_or_else(|| null("callback"))?;
        // SAFETY: forwarded contract.
        let req = unsafe {
            build_request(
                method,
                url,
                headers,
                header_count,
                body,
                body_len,
                timeout_msecs,
            )
        }?;
        let ud = Userdata(userdata);
        let id = a.inner.request_async(req, move |res| {
            let ud = ud;
            let (code, resp) = outcome(res, agent_response::boxed);
            // SAFETY: the caller's callback with the caller's userdata, as documented.
            unsafe { cb(ud.0, code, resp) };
        })?;
        // SAFETY: forwarded contract.
        unsafe { write_if_wanted(out_id, id) };
        Ok(())
    })
}

/// Cancels an async request by id. Its callback runs (once) with `AGENT_CODE_CANCELLED`
/// and its connection, if it was mid-response, is closed. Returns `AGENT_CODE_NOT_FOUND`
/// when the request already completed or the id is unknown; a completed request's pooled
/// connection is never affected.
///
/// # Safety
/// `agent` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_request_cancel(agent: *const agent, id: u64) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        if a.inner.cancel(id) {
            Ok(())
        } else {
            Err(Error::new(
                crate::error::ErrorKind::NotFound,
                format!("no request {id} in flight"),
            ))
        }
    })
}

/// Opens connections to the origin of `url` in the background and pools them, until the
/// origin has `count` (idle, busy or opening; within `max_sockets`), TLS handshakes
/// included: for a cold start (a serverless init phase, a service's start-up), so that the
/// first requests find warm connections. Returns at once; the connections appear in
/// `agent_pool_stats` (`idle`) as they open. An HTTP/2 origin gets one connection. Does
/// nothing when keep-alive is off or `count` is 0. Failures are not reported here (the
/// events show them; the next requests report theirs). `AGENT_CODE_INVALID_URL` for a bad
/// URL.
///
/// # Safety
/// `agent` is NULL or live; `url` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_preconnect(
    agent: *const agent,
    url: *const c_char,
    count: u32,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        // SAFETY: forwarded contract.
        let url = unsafe { super::c_str(url, "url") }?;
        a.inner.preconnect(url, count)
    })
}

fn to_c(s: Stats, keep_alive: bool) -> agent_pool_stats {
    agent_pool_stats {
        connections_opened: s.connections_opened,
        connections_closed: s.connections_closed,
        connections_timed_out: s.connections_timed_out,
        connections_errored: s.connections_errored,
        requests: s.requests,
        reused_requests: s.reused_requests,
        retries: s.retries,
        timeouts: s.timeouts,
        errors: s.errors,
        active: s.active,
        idle: s.idle,
        queued: s.queued,
        keep_alive,
        dns_lookups: s.dns_lookups,
        dns_cache_hits: s.dns_cache_hits,
        h2_streams: s.h2_streams,
        h2_connections: s.h2_connections,
    }
}

/// Writes the agent's counters and gauges (all origins) into `*out`.
///
/// # Safety
/// `agent` is NULL or live; `out` must be writable (NULL is refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stats(
    agent: *const agent,
    out: *mut agent_pool_stats,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        let out = out_ptr(out, "out")?;
        out.write(to_c(a.inner.stats(), a.inner.config().keep_alive));
        Ok(())
    })
}

/// Writes the counters and gauges of one origin, named by a URL such as
/// `"https://example.com"` (scheme, host and port matter; the path is ignored). An origin
/// never used gives all zeros.
///
/// # Safety
/// `agent` is NULL or live; `origin_url` is NUL-terminated; `out` must be writable (NULL is refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_origin_stats(
    agent: *const agent,
    origin_url: *const c_char,
    out: *mut agent_pool_stats,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        // SAFETY: forwarded contract.
        let url = unsafe { c_str(origin_url, "origin_url") }?;
        let out = out_ptr(out, "out")?;
        out.write(to_c(
            a.inner.origin_stats(url)?,
            a.inner.config().keep_alive,
        ));
        Ok(())
    })
}

/// The number of statistics fields: what `agent_stats_values` writes.
#[unsafe(no_mangle)]
pub extern "C" fn agent_stats_field_count() -> usize {
    Stats::FIELDS.len()
}

/// The name of statistics field `index` (`"connections_opened"`, ..., in the order of
/// `agent_pool_stats`), as a static NUL-terminated string; NULL past the last one. Bindings
/// build their statistics from these names, so a new field reaches them without a change.
#[unsafe(no_mangle)]
pub extern "C" fn agent_stats_field_name(index: usize) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<std::ffi::CString>> = std::sync::OnceLock::new();
    guard_value(std::ptr::null(), || {
        let names = NAMES.get_or_init(|| {
            Stats::FIELDS
                .iter()
                .map(|n| std::ffi::CString::new(*n).expect("no NUL in a field name"))
                .collect()
        });
        names.get(index).map_or(std::ptr::null(), |n| n.as_ptr())
    })
}

/// Writes the statistics of the agent (`origin_url` NULL) or of one origin, as
/// `agent_stats_field_count()` values in the order of `agent_stats_field_name`: at most
/// `cap` of them into `out`. `*count` (if not NULL) receives the number of fields, so a
/// caller can size its array with a first call (`cap` 0, `out` NULL).
///
/// # Safety
/// `agent` is NULL or live; `origin_url` is NULL or NUL-terminated; `out` points to `cap`
/// writable values (may be NULL when `cap` is 0); `count` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stats_values(
    agent: *const agent,
    origin_url: *const c_char,
    out: *mut u64,
    cap: usize,
    count: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        if cap > 0 && out.is_null() {
            return Err(Error::invalid_argument(format!(
                "out is NULL with cap {cap}"
            )));
        }
        let stats = if origin_url.is_null() {
            a.inner.stats()
        } else {
            // SAFETY: forwarded contract.
            let url = unsafe { c_str(origin_url, "origin_url") }?;
            a.inner.origin_stats(url)?
        };
        let values = stats.values();
        let n = values.len().min(cap);
        if n > 0 {
            // SAFETY: `out` has `cap >= n` writable values (caller's promise), and cannot
            // overlap our local array.
            unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, n) };
        }
        if !count.is_null() {
            // SAFETY: non-NULL and writable (caller's promise).
            unsafe { count.write(values.len()) };
        }
        Ok(())
    })
}

/// The effective keep-alive setting: what `agent_new`'s argument, the options, or the
/// environment switch decided (`agent_keep_alive_source` says which). False for NULL.
///
/// # Safety
/// `agent` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_keep_alive_enabled(agent: *const agent) -> bool {
    // SAFETY: forwarded contract.
    guard_value(false, || {
        unsafe { agent.as_ref() }.is_some_and(|a| a.inner.config().keep_alive)
    })
}

/// What decided an agent's keep-alive setting (SPEC §3's read-back).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum agent_setting_source {
    /// Nothing was said: keep-alive is on by default.
    AGENT_SOURCE_DEFAULT = 0,
    /// `agent_new`'s argument or `agent_options_set_keep_alive`.
    AGENT_SOURCE_ARGUMENT = 1,
    /// The process switch KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED or its alias.
    AGENT_SOURCE_ENVIRONMENT = 2,
}

/// Where the effective keep-alive setting (`agent_keep_alive_enabled`) came from.
/// `AGENT_SOURCE_DEFAULT` for NULL.
///
/// # Safety
/// `agent` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_keep_alive_source(agent: *const agent) -> agent_setting_source {
    use crate::options::SettingOrigin;
    guard_value(agent_setting_source::AGENT_SOURCE_DEFAULT, || {
        // SAFETY: forwarded contract.
        match unsafe { agent.as_ref() }.map(|a| a.inner.config().keep_alive_source.origin) {
            Some(SettingOrigin::Argument) => agent_setting_source::AGENT_SOURCE_ARGUMENT,
            Some(SettingOrigin::Environment) => agent_setting_source::AGENT_SOURCE_ENVIRONMENT,
            Some(SettingOrigin::Default) | None => agent_setting_source::AGENT_SOURCE_DEFAULT,
        }
    })
}

/// The keep-alive setting in one line for people, with what decided it and what the
/// environment said, e.g. `off: environment, KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED="false"`
/// or `on: default; AWS_NODEJS_CONNECTION_REUSE_ENABLED="yes" (ignored: not true, false, 1
/// or 0)`. Copied into `buf` as `agent_last_error` does; returns the full length (0 for NULL).
///
/// # Safety
/// `agent` is NULL or live; `buf` is NULL or points to `cap` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_keep_alive_describe(
    agent: *const agent,
    buf: *mut c_char,
    cap: usize,
) -> usize {
    guard_value(0, || {
        // SAFETY: forwarded contract.
        let Some(a) = (unsafe { agent.as_ref() }) else {
            return 0;
        };
        let cfg = a.inner.config();
        let text = cfg.keep_alive_source.describe(cfg.keep_alive);
        // SAFETY: forwarded contract.
        unsafe { super::copy_text_out(text.as_bytes(), buf, cap) }
    })
}
