//! The C ABI. Every `unsafe` block and every `extern "C"` function of the crate lives under
//! this module. Conventions (also in the header and the README):
//!
//! - Opaque handles; every `_new` has a NULL-safe `_free`.
//! - Fallible functions return an `agent_code`; outputs go through out-parameters that are
//!   written only on success.
//! - A panic never crosses the boundary: it becomes `AGENT_CODE_PANIC`.
//! - The last failure's message on this thread is available from `agent_last_error`.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use crate::error::{Error, ErrorKind, Result};

pub mod agent;
pub mod options;
pub mod queue;
pub mod response;
pub mod stream;
pub mod trace;

/// Result codes. Values are explicit and never reused; a retired value stays reserved.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum agent_code {
    /// Success.
    AGENT_CODE_OK = 0,
    /// A NULL or otherwise unusable argument: NULL pointer, non-UTF-8 string, a header name
    /// or value with CR, LF or NUL, a method that is not an HTTP token, an absurd timeout.
    AGENT_CODE_INVALID_ARGUMENT = 1,
    /// The URL is malformed, relative, has credentials, or its scheme is not http/https.
    AGENT_CODE_INVALID_URL = 2,
    /// An option is out of range or unknown; returned by agent creation.
    AGENT_CODE_INVALID_OPTION = 3,
    /// A looked-up header is absent, or a cancelled request id is unknown or finished.
    AGENT_CODE_NOT_FOUND = 4,
    /// A blocking call was made on a library thread (from inside a completion callback).
    AGENT_CODE_WOULD_BLOCK = 5,
    /// The host name did not resolve (Node: ENOTFOUND).
    AGENT_CODE_DNS = 10,
    /// The server refused the connection (Node: ECONNREFUSED).
    AGENT_CODE_CONNECT_REFUSED = 11,
    /// DNS + TCP + TLS did not complete within connect_timeout_msecs (Node: ETIMEDOUT).
    AGENT_CODE_CONNECT_TIMEOUT = 12,
    /// Another failure to connect (unreachable network, no address, ...).
    AGENT_CODE_CONNECT = 13,
    /// The proxy refused or broke the `CONNECT` tunnel to the origin; the message has the
    /// proxy's status line (407: it wants credentials, or refused those given).
    AGENT_CODE_PROXY = 14,
    /// The TLS handshake failed: untrusted, expired or wrong-host certificate, protocol.
    AGENT_CODE_TLS = 20,
    /// The response head did not complete within headers_timeout_msecs.
    AGENT_CODE_HEADERS_TIMEOUT = 30,
    /// No body data arrived for body_timeout_msecs.
    AGENT_CODE_BODY_TIMEOUT = 31,
    /// The request's overall deadline (timeout_msecs) passed.
    AGENT_CODE_TIMEOUT = 32,
    /// The peer reset the connection during the request (Node: ECONNRESET).
    AGENT_CODE_CONNECTION_RESET = 40,
    /// The peer closed the connection before the response was complete.
    AGENT_CODE_CONNECTION_CLOSED = 41,
    /// Writing the request failed: the peer had closed (Node: EPIPE).
    AGENT_CODE_BROKEN_PIPE = 42,
    /// A reused keep-alive connection failed before any response byte and the request was
    /// not retried (not idempotent, or retry_stale off). The request may not have been
    /// processed; the connection was reused.
    AGENT_CODE_STALE_CONNECTION = 43,
    /// The response violated HTTP/1.1 (bad status line, headers, framing, head too large).
    AGENT_CODE_PROTOCOL = 44,
    /// The body exceeded max_response_bytes; the connection was dropped.
    AGENT_CODE_RESPONSE_TOO_LARGE = 45,
    /// The request body source (`agent_body_source`) reported an error, or ended before
    /// the length it announced; nothing more was sent and the connection was closed.
    AGENT_CODE_BODY_SOURCE = 46,
    /// The server reset the request's HTTP/2 stream (`RST_STREAM`, its reason in the
    /// message); the connection's other requests go on.
    AGENT_CODE_STREAM_RESET = 47,
    /// The request was cancelled, or its agent was freed while it was in flight.
    AGENT_CODE_CANCELLED = 50,
    /// The agent's state was locked by another thread when the process forked.
    AGENT_CODE_FORKED = 51,
    /// A panic was caught inside the library. Please report it.
    AGENT_CODE_PANIC = 60,
    /// An internal error. Please report it.
    AGENT_CODE_INTERNAL = 61,
}

use agent_code::*;

impl agent_code {
    pub(crate) fn from_kind(kind: ErrorKind) -> agent_code {
        match kind {
            ErrorKind::InvalidArgument => AGENT_CODE_INVALID_ARGUMENT,
            ErrorKind::InvalidUrl => AGENT_CODE_INVALID_URL,
            ErrorKind::InvalidOption => AGENT_CODE_INVALID_OPTION,
            ErrorKind::NotFound => AGENT_CODE_NOT_FOUND,
            ErrorKind::WouldBlock => AGENT_CODE_WOULD_BLOCK,
            ErrorKind::Dns => AGENT_CODE_DNS,
            ErrorKind::ConnectRefused => AGENT_CODE_CONNECT_REFUSED,
            ErrorKind::ConnectTimeout => AGENT_CODE_CONNECT_TIMEOUT,
            ErrorKind::Connect => AGENT_CODE_CONNECT,
            ErrorKind::Proxy => AGENT_CODE_PROXY,
            ErrorKind::Tls => AGENT_CODE_TLS,
            ErrorKind::HeadersTimeout => AGENT_CODE_HEADERS_TIMEOUT,
            ErrorKind::BodyTimeout => AGENT_CODE_BODY_TIMEOUT,
            ErrorKind::Timeout => AGENT_CODE_TIMEOUT,
            ErrorKind::ConnectionReset => AGENT_CODE_CONNECTION_RESET,
            ErrorKind::ConnectionClosed => AGENT_CODE_CONNECTION_CLOSED,
            ErrorKind::BrokenPipe => AGENT_CODE_BROKEN_PIPE,
            ErrorKind::StaleConnection => AGENT_CODE_STALE_CONNECTION,
            ErrorKind::Protocol => AGENT_CODE_PROTOCOL,
            ErrorKind::ResponseTooLarge => AGENT_CODE_RESPONSE_TOO_LARGE,
            ErrorKind::BodySource => AGENT_CODE_BODY_SOURCE,
            ErrorKind::StreamReset => AGENT_CODE_STREAM_RESET,
            ErrorKind::Cancelled => AGENT_CODE_CANCELLED,
            ErrorKind::Forked => AGENT_CODE_FORKED,
            ErrorKind::Panic => AGENT_CODE_PANIC,
            ErrorKind::Internal => AGENT_CODE_INTERNAL,
        }
    }

    /// The name of a code value (`"AGENT_CODE_UNKNOWN"` for a value that is not a code),
    /// from the table `build.rs` generates from this enum.
    fn name(code: u32) -> &'static CStr {
        CODE_NAMES
            .iter()
            .find(|(v, _)| *v == code)
            .map_or(c"AGENT_CODE_UNKNOWN", |(_, n)| n)
    }
}

/// `(value, name)` of every variant of [`agent_code`], generated by `build.rs`.
const CODE_NAMES: &[(u32, &CStr)] = include!(concat!(env!("OUT_DIR"), "/code_names.rs"));

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(msg: &str) {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        e.clear();
        // Interior NULs would truncate the C string; show them instead.
        e.extend(msg.chars().map(|c| if c == '\0' { '?' } else { c }));
    });
}

/// Records `err` as this thread's last error and returns its code.
pub(crate) fn fail(err: &Error) -> agent_code {
    set_last_error(err.message());
    agent_code::from_kind(err.kind())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panic inside keepalive-agent: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panic inside keepalive-agent: {s}")
    } else {
        "panic inside keepalive-agent".to_string()
    }
}

/// The panic boundary for functions returning a code. The closure reports failures as
/// `Err`; a panic becomes `AGENT_CODE_PANIC` with its message.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> agent_code {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => AGENT_CODE_OK,
        Ok(Err(e)) => fail(&e),
        Err(p) => {
            set_last_error(&panic_message(&*p));
            AGENT_CODE_PANIC
        }
    }
}

/// The panic boundary for infallible getters: a panic yields `default`.
pub(crate) fn guard_value<T>(default: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            set_last_error(&panic_message(&*p));
            default
        }
    }
}

/// What a completion callback is called with: the result as a new handle, or the error's
/// code (its message recorded for `agent_last_error` on this thread) and NULL.
pub(crate) fn outcome<T, H>(
    res: Result<T>,
    boxed: impl FnOnce(T) -> *mut H,
) -> (agent_code, *mut H) {
    match res {
        Ok(v) => (AGENT_CODE_OK, boxed(v)),
        Err(e) => (fail(&e), std::ptr::null_mut()),
    }
}

/// Writes an optional out-parameter: NULL means the caller does not want it.
///
/// # Safety
/// `p` is NULL or writable.
pub(crate) unsafe fn write_if_wanted<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-NULL and writable (caller's promise).
        unsafe { p.write(v) };
    }
}

pub(crate) fn null(what: &str) -> Error {
    Error::invalid_argument(format!("{what} is NULL"))
}

/// Borrows a handle. NULL is an invalid argument.
///
/// # Safety
/// `p` is NULL or points to a live `T` for `'a`.
pub(crate) unsafe fn borrow<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: the caller promises `p` is NULL or valid for 'a; NULL is mapped to an error.
    unsafe { p.as_ref() }.ok_or_else(|| null(what))
}

/// Borrows a handle mutably. NULL is an invalid argument.
///
/// # Safety
/// `p` is NULL or points to a live `T` for `'a`, not aliased by another thread.
pub(crate) unsafe fn borrow_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: the caller promises `p` is NULL or valid and unaliased for 'a.
    unsafe { p.as_mut() }.ok_or_else(|| null(what))
}

/// Reads a NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's promise.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| Error::invalid_argument(format!("{what} is not valid UTF-8")))
}

/// Reads `(ptr, len)` bytes; a zero length tolerates NULL.
///
/// # Safety
/// When `len > 0`, `p` points to `len` readable bytes valid for `'a`.
pub(crate) unsafe fn c_bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::invalid_argument(format!(
            "{what} is NULL with length {len}"
        )));
    }
    // SAFETY: non-NULL with `len` readable bytes per the caller's promise.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Writes an out-parameter. Checked for NULL before any work by `out_ptr`.
pub(crate) fn out_ptr<'a, T>(p: *mut T, what: &str) -> Result<&'a mut std::mem::MaybeUninit<T>> {
    // SAFETY: `MaybeUninit<T>` has the layout of `T`; the caller promises `p` is NULL or
    // valid for writes; nothing is read through it.
    unsafe { p.cast::<std::mem::MaybeUninit<T>>().as_mut() }.ok_or_else(|| null(what))
}

static ATFORK: Once = Once::new();

extern "C" fn atfork_child() {
    crate::runtime::note_fork_in_child();
}

/// Registers the fork handler and the allocator's memory release once per process (from
/// every constructor).
pub(crate) fn ensure_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic (async-signal-safe).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(atfork_child)) };
        debug_assert_eq!(rc, 0);
        crate::memory::set_release(release_free_pages);
    });
}

/// Returns the C allocator's free pages to the system (see `crate::memory`).
fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The library version, e.g. `"0.1.0"`: a static NUL-terminated string (never free it).
/// Matches the `KEEPALIVE_AGENT_VERSION` macro of the header it was built with.
#[unsafe(no_mangle)]
pub extern "C" fn agent_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a code, e.g. `"AGENT_CODE_CONNECT_REFUSED"`, as a static NUL-terminated
/// string (never free it). Values that are not codes give `"AGENT_CODE_UNKNOWN"`, so a
/// binding can list every code by trying values in turn.
#[unsafe(no_mangle)]
pub extern "C" fn agent_code_name(code: u32) -> *const c_char {
    agent_code::name(code).as_ptr()
}

/// Deprecated: the old name of `agent_code_name`, kept until 1.0.
#[unsafe(no_mangle)]
pub extern "C" fn agent_code_str(code: u32) -> *const c_char {
    agent_code_name(code)
}

/// Looks up one of the library's numeric limits by name, so that bindings validate with
/// the same bounds the library enforces:
///
/// - `"max_msecs"`: the largest millisecond value of any timeout option or request
///   timeout (2^31 - 1, as Node's timers);
/// - `"max_keep_alive_msecs"`: the largest `keep_alive_msecs` / `keep_alive_interval_msecs`
///   (the kernel's 32767 s);
/// - `"max_keep_alive_probes"`: the largest `keep_alive_probes` (the kernel's 127);
/// - `"max_sockets"`: the largest `max_sockets`, `max_total_sockets`, `max_free_sockets`.
///
/// Returns `AGENT_CODE_NOT_FOUND` for another name, `AGENT_CODE_INVALID_ARGUMENT` for NULL.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_limit(name: *const c_char, out: *mut u64) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let name = unsafe { c_str(name, "name") }?;
        let out = out_ptr(out, "out")?;
        let v = crate::options::limit_by_name(name)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no limit named {name:?}")))?;
        out.write(v);
        Ok(())
    })
}

/// Copies the message of the last failure on this thread into `buf` (at most `cap - 1`
/// bytes, always NUL-terminated when `cap > 0`) and returns the message's full length in
/// bytes, without the NUL. A return value `>= cap` means the message was truncated: call
/// again with a buffer of at least the returned length + 1. `buf` may be NULL when `cap`
/// is 0 (to ask for the length). Returns 0 when no failure happened on this thread.
/// Inside a completion callback, this is the message of that callback's failure.
///
/// # Safety
/// `buf` is NULL or points to `cap` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_last_error(buf: *mut c_char, cap: usize) -> usize {
    guard_value(0, || {
        LAST_ERROR.with(|e| {
            // SAFETY: forwarded contract.
            unsafe { copy_text_out(e.borrow().as_bytes(), buf, cap) }
        })
    })
}

/// Copies `text` into `buf` as `agent_last_error` does (at most `cap - 1` bytes, NUL
/// terminated when `cap > 0`) and returns its full length.
///
/// # Safety
/// `buf` is NULL or points to `cap` writable bytes.
pub(crate) unsafe fn copy_text_out(text: &[u8], buf: *mut c_char, cap: usize) -> usize {
    if !buf.is_null() && cap > 0 {
        let n = text.len().min(cap - 1);
        // SAFETY: `buf` has `cap` writable bytes and `n + 1 <= cap`; the source is our own
        // string, which cannot overlap the caller's buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    text.len()
}

/// Panics inside the panic boundary and returns what the boundary made of it:
/// `AGENT_CODE_PANIC`, with a message from `agent_last_error`. Only in builds with the
/// `test-hooks` feature, for the test suites that check their handling of that code; never
/// in the header or a release library.
#[cfg(feature = "test-hooks")]
#[unsafe(no_mangle)]
pub extern "C" fn agent_test_panic() -> agent_code {
    guard(|| panic!("agent_test_panic was called"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_named_code_and_names_match_the_variants() {
        use ErrorKind::*;
        let kinds = [
            InvalidArgument,
            InvalidUrl,
            InvalidOption,
            NotFound,
            Dns,
            ConnectRefused,
            ConnectTimeout,
            Connect,
            Proxy,
            Tls,
            HeadersTimeout,
            BodyTimeout,
            Timeout,
            ConnectionReset,
            ConnectionClosed,
            BrokenPipe,
            StaleConnection,
            Protocol,
            ResponseTooLarge,
            BodySource,
            StreamReset,
            Cancelled,
            WouldBlock,
            Forked,
            Panic,
            Internal,
        ];
        for k in kinds {
            let code = agent_code::from_kind(k);
            let name = agent_code::name(code as u32).to_str().unwrap();
            assert_eq!(name, format!("{code:?}"), "{k:?}");
        }
        assert_eq!(
            CODE_NAMES.len(),
            kinds.len() + 1,
            "OK plus one code per kind"
        );
        assert_eq!(agent_code::name(9999), c"AGENT_CODE_UNKNOWN");
    }

    #[test]
    fn limits_are_found_by_name() {
        let mut v = 0u64;
        // SAFETY: a static string and a local out-parameter.
        let rc = unsafe { agent_limit(c"max_msecs".as_ptr(), &mut v) };
        assert_eq!((rc, v), (agent_code::AGENT_CODE_OK, 2_147_483_647));
        // SAFETY: as above.
        let rc = unsafe { agent_limit(c"nope".as_ptr(), &mut v) };
        assert_eq!(rc, agent_code::AGENT_CODE_NOT_FOUND);
    }
}
