//! Events from inside the engine, for C (SPEC §8 `events` / `event_mask`): a callback on
//! the agent, set through its options.

use std::ffi::{CString, c_char, c_void};
use std::sync::Arc;

use super::agent_code;
use super::options::{agent_options, set};
use crate::trace::{Events, TraceEvent, TraceKind, header_lines};

/// What an event reports (`agent_trace_event.kind`). Bit `1 << kind` selects it in
/// `agent_options_set_event_mask`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum agent_trace_kind {
    /// A request waits for a connection (the `max_sockets` limits are reached).
    AGENT_TRACE_QUEUED = 0,
    /// A queued request got a connection, or the right to open one.
    AGENT_TRACE_DEQUEUED = 1,
    /// A TCP connection attempt to `address` starts (happy eyeballs: one per address).
    AGENT_TRACE_CONNECT_START = 2,
    /// That attempt connected (`code` OK) or failed (`code` and `detail` say how).
    AGENT_TRACE_CONNECT_DONE = 3,
    /// A TLS handshake ended: `detail` has the version, the ALPN protocol and whether the
    /// session was resumed (`TLSv1.3, ALPN h2, new session with host:port`), or `code` the
    /// failure.
    AGENT_TRACE_TLS_DONE = 4,
    /// A request goes out (`detail`: `GET /path HTTP/1.1`; `reused`: the connection served
    /// one before).
    AGENT_TRACE_REQUEST_SENT = 5,
    /// A response head arrived (`status`, `version`).
    AGENT_TRACE_RESPONSE_HEAD = 6,
    /// A request is sent again on another connection (`detail`: why; `code`: the failure
    /// that caused it).
    AGENT_TRACE_RETRY = 7,
    /// A connection closed (`detail`: why, e.g. `idle timeout`, `the server closed it`).
    AGENT_TRACE_CONNECTION_CLOSED = 8,
}

/// `agent_options_set_event_mask`: every kind.
pub const AGENT_TRACE_MASK_ALL: u32 = 0x1ff;
/// `agent_options_set_event_mask`: request-sent and response-head events carry the headers
/// (`agent_trace_event.headers`), with `Authorization`, `Proxy-Authorization`, `Cookie` and
/// `Set-Cookie` values always replaced by `[redacted]`.
pub const AGENT_TRACE_WITH_HEADERS: u32 = 0x8000_0000;

/// One event. Every pointer is valid only during the callback (copy what you keep).
#[repr(C)]
pub struct agent_trace_event {
    pub kind: agent_trace_kind,
    /// The connection's id, unique in the process (0: none, as for `AGENT_TRACE_QUEUED`).
    pub connection: u64,
    /// The request's origin, `scheme://host:port` (with `(through the proxy ...)` when a
    /// proxy carries it).
    pub origin: *const c_char,
    /// Connect events: the address, `127.0.0.1:8080` or `[::1]:8080`; else NULL.
    pub address: *const c_char,
    /// Connect events: 4 or 6; else 0.
    pub family: u32,
    /// Response head: the status code; else 0.
    pub status: u32,
    /// 11 or 20 once known; else 0.
    pub version: u32,
    /// Request sent / response head: the connection had served a request before.
    pub reused: bool,
    /// `AGENT_CODE_OK`, or what failed (connect done, TLS done, retry).
    pub code: agent_code,
    /// Words for people; never NULL (`""` when there are none).
    pub detail: *const c_char,
    /// With `AGENT_TRACE_WITH_HEADERS`, request sent and response head: `Name: value\r\n`
    /// lines, credentials redacted; else NULL.
    pub headers: *const c_char,
}

/// Event callback: runs on the thread where the event happened (a library thread, or the
/// caller's own inside a blocking `agent_request`), possibly on several threads at once.
/// It must be quick, must not block and must not free the agent.
pub type agent_trace_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, event: *const agent_trace_event)>;

/// The caller's callback and pointer.
struct Callback {
    f: unsafe extern "C" fn(*mut c_void, *const agent_trace_event),
    userdata: *mut c_void,
}

// SAFETY: the header documents that the callback runs on any library or caller thread, so
// the caller promises that `userdata` may be used from those threads.
unsafe impl Send for Callback {}
// SAFETY: as above; the library only passes the pointer through.
unsafe impl Sync for Callback {}

fn text(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

impl Callback {
    fn call(&self, e: &TraceEvent<'_>) {
        let origin = text(&e.origin.to_string());
        let address = e.address.map(|a| text(&a.to_string()));
        let detail = match e.error {
            Some(err) if e.detail.is_empty() => text(err.message()),
            _ => text(e.detail),
        };
        let headers = e.headers.map(|h| text(&header_lines(h)));
        let kind = match e.kind {
            TraceKind::Queued => agent_trace_kind::AGENT_TRACE_QUEUED,
            TraceKind::Dequeued => agent_trace_kind::AGENT_TRACE_DEQUEUED,
            TraceKind::ConnectStart => agent_trace_kind::AGENT_TRACE_CONNECT_START,
            TraceKind::ConnectDone => agent_trace_kind::AGENT_TRACE_CONNECT_DONE,
            TraceKind::TlsDone => agent_trace_kind::AGENT_TRACE_TLS_DONE,
            TraceKind::RequestSent => agent_trace_kind::AGENT_TRACE_REQUEST_SENT,
            TraceKind::ResponseHead => agent_trace_kind::AGENT_TRACE_RESPONSE_HEAD,
            TraceKind::Retry => agent_trace_kind::AGENT_TRACE_RETRY,
            TraceKind::ConnectionClosed => agent_trace_kind::AGENT_TRACE_CONNECTION_CLOSED,
        };
        let ev = agent_trace_event {
            kind,
            connection: e.connection,
            origin: origin.as_ptr(),
            address: address.as_ref().map_or(std::ptr::null(), |a| a.as_ptr()),
            family: match e.address {
                Some(a) if a.is_ipv6() => 6,
                Some(_) => 4,
                None => 0,
            },
            status: u32::from(e.status),
            version: u32::from(e.version),
            reused: e.reused,
            code: e.error.map_or(agent_code::AGENT_CODE_OK, |err| {
                agent_code::from_kind(err.kind())
            }),
            detail: detail.as_ptr(),
            headers: headers.as_ref().map_or(std::ptr::null(), |h| h.as_ptr()),
        };
        // SAFETY: the caller gave a function of this signature; `ev` and the strings it
        // points to live until it returns. A panic cannot unwind out of an `extern "C"`
        // callee into here (it aborts), and nothing here can panic across the boundary.
        unsafe { (self.f)(self.userdata, &ev) }
    }
}

/// Events from inside the agent go to `callback` with `userdata` (NULL `callback`: none,
/// the default). Each event is delivered while it happens; the kinds delivered are those in
/// `agent_options_set_event_mask` (default: all). With no callback, the events cost one
/// branch each. `KEEPALIVE_AGENT_DEBUG=1` in the environment also prints every event to
/// stderr, `curl -v` style. Python: `logging.getLogger("keepalive_agent")`; Node:
/// `diagnostics_channel`.
///
/// # Safety
/// `options` is NULL or a live handle; `callback` may be called from any thread until the
/// agent is freed, with `userdata`, which must stay valid that long.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_events(
    options: *mut agent_options,
    callback: agent_trace_callback,
    userdata: *mut c_void,
) -> agent_code {
    let events = Events(callback.map(|f| {
        let cb = Callback { f, userdata };
        Arc::new(move |e: &TraceEvent<'_>| cb.call(e)) as crate::trace::Sink
    }));
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.events = events) }
}

/// Which events reach the callback: bits `1 << AGENT_TRACE_*`, plus
/// `AGENT_TRACE_WITH_HEADERS` for the headers. 0 (or only `AGENT_TRACE_WITH_HEADERS`) means
/// every kind. Unknown bits are refused by `agent_new_with_options`.
///
/// # Safety
/// `options` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_options_set_event_mask(
    options: *mut agent_options,
    mask: u32,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { set(options, |o| o.event_mask = Some(mask)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_masks_are_the_engines() {
        assert_eq!(AGENT_TRACE_MASK_ALL, crate::trace::ALL_KINDS);
        assert_eq!(AGENT_TRACE_WITH_HEADERS, crate::trace::WITH_HEADERS);
        for k in TraceKind::ALL {
            assert!(AGENT_TRACE_MASK_ALL & k.bit() != 0);
        }
    }
}
