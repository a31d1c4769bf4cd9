//! `agent_stream`: a response whose body is read piece by piece, and `agent_body_source`:
//! a request body read from the caller piece by piece.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;

use super::agent::{Userdata, agent, agent_header, build_request};
use super::response::{agent_response_parts, header_block, timings, write_value};
use super::{
    agent_code, borrow, c_str, fail, guard, guard_value, null, out_ptr, outcome, write_if_wanted,
};
use crate::agent::ResponseStream;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{Body, BodySource, Response};

/// A request body the library reads from the caller, piece by piece (like curl's
/// `CURLOPT_READFUNCTION`). The library copies this struct; `userdata` must stay valid until
/// `release` is called.
///
/// - `read(userdata, buf, cap, &n)` fills `buf` with up to `cap` bytes, sets `*n`, and
///   returns 0; `*n == 0` means the end of the body. It runs on the thread that drives the
///   request: the caller's own for `agent_request_stream`, a library thread for
///   `agent_request_stream_async`, where it must not block. When no data is ready yet, it
///   takes a waker with `agent_body_source_waker()` and returns `AGENT_SOURCE_PENDING`
///   (like libcurl's `CURL_READFUNC_PAUSE`); the library calls `read` again once the waker
///   has been woken (`agent_body_waker_wake`, from any thread). Any other non-zero return
///   fails the request with `AGENT_CODE_BODY_SOURCE`.
/// - `rewind(userdata)` (may be NULL) starts the body again from its first byte and returns
///   0. With it, a request on a stale keep-alive connection is retried like a request with
///   a bytes body; without it (or when it returns non-zero) the request fails with
///   `AGENT_CODE_STALE_CONNECTION` instead, since the bytes already read cannot be sent again.
/// - `release(userdata)` (may be NULL) is called exactly once, from any thread, when the
///   library no longer needs the source — also when the request fails to start.
/// - `length`: the body's length in bytes, sent as `Content-Length` (then exactly that many
///   bytes must come, or the request fails with `AGENT_CODE_BODY_SOURCE`); -1 when unknown,
///   sent with `Transfer-Encoding: chunked`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct agent_body_source {
    pub read: Option<
        unsafe extern "C" fn(
            userdata: *mut c_void,
            buf: *mut u8,
            cap: usize,
            n: *mut usize,
        ) -> c_int,
    >,
    pub rewind: Option<unsafe extern "C" fn(userdata: *mut c_void) -> c_int>,
    pub release: Option<unsafe extern "C" fn(userdata: *mut c_void)>,
    pub length: i64,
    pub userdata: *mut c_void,
}

/// What a body source's `read` returns when no data is ready yet, after taking a waker with
/// `agent_body_source_waker()`. The value is arbitrary (a tag, like libcurl's
/// `CURL_READFUNC_PAUSE`), chosen not to collide with the usual error returns 1 and -1.
pub const AGENT_SOURCE_PENDING: c_int = 0x7065_6e64;

/// A handle that resumes a body source which returned `AGENT_SOURCE_PENDING`: wake it
/// (`agent_body_waker_wake`) when data is ready or the body has ended, or free it unused
/// (`agent_body_waker_free`). Either call consumes it; any thread may make it.
pub struct agent_body_waker {
    waker: std::task::Waker,
}

thread_local! {
    /// The waker of the request whose source `read` is running on this thread, and whether
    /// the source took it.
    static READING: std::cell::RefCell<Option<(std::task::Waker, bool)>> =
        const { std::cell::RefCell::new(None) };
}

/// Inside a body source's `read` callback: a waker for the request that is reading, to
/// keep before returning `AGENT_SOURCE_PENDING`. NULL outside a `read` callback. Each call
/// gives a new handle; every handle must be woken or freed once.
#[unsafe(no_mangle)]
pub extern "C" fn agent_body_source_waker() -> *mut agent_body_waker {
    guard_value(std::ptr::null_mut(), || {
        READING.with(|r| match r.borrow_mut().as_mut() {
            Some((waker, taken)) => {
                *taken = true;
                Box::into_raw(Box::new(agent_body_waker {
                    waker: waker.clone(),
                }))
            }
            None => std::ptr::null_mut(),
        })
    })
}

/// Wakes the request whose source returned `AGENT_SOURCE_PENDING` (its `read` is called
/// again soon, on a library thread or the blocking caller's) and frees the handle. NULL is
/// ignored. Waking a request that has ended meanwhile is harmless.
///
/// # Safety
/// `waker` is NULL or a handle from `agent_body_source_waker` not woken or freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_body_waker_wake(waker: *mut agent_body_waker) {
    guard_value((), || {
        if !waker.is_null() {
            // SAFETY: created by Box::into_raw in `agent_body_source_waker`, consumed once.
            let w = unsafe { Box::from_raw(waker) };
            w.waker.wake();
        }
    })
}

/// Frees a waker without waking. NULL is ignored.
///
/// # Safety
/// As `agent_body_waker_wake`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_body_waker_free(waker: *mut agent_body_waker) {
    guard_value((), || {
        if !waker.is_null() {
            // SAFETY: created by Box::into_raw in `agent_body_source_waker`, consumed once.
            drop(unsafe { Box::from_raw(waker) });
        }
    })
}

/// Clears the thread's reading waker when `read` returns or unwinds.
struct ReadingGuard;

impl Drop for ReadingGuard {
    fn drop(&mut self) {
        READING.with(|r| r.borrow_mut().take());
    }
}

/// The caller's source, as the engine reads it.
struct CSource {
    src: agent_body_source,
}

// SAFETY: the caller promises (by the documented contract) that its callbacks may run on
// the library's threads with its userdata.
unsafe impl Send for CSource {}

impl BodySource for CSource {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let Some(read) = self.src.read else {
            return Poll::Ready(Err(std::io::Error::other("no read callback")));
        };
        let mut n = 0usize;
        READING.with(|r| *r.borrow_mut() = Some((cx.waker().clone(), false)));
        let reading = ReadingGuard;
        // SAFETY: the caller's callback with its userdata, a buffer of `buf.len()` writable
        // bytes and a local out-parameter, as documented.
        let rc = unsafe { read(self.src.userdata, buf.as_mut_ptr(), buf.len(), &mut n) };
        let took_waker = READING.with(|r| r.borrow().as_ref().is_some_and(|(_, t)| *t));
        drop(reading);
        Poll::Ready(match rc {
            AGENT_SOURCE_PENDING if took_waker => return Poll::Pending,
            AGENT_SOURCE_PENDING => Err(std::io::Error::other(
                "the read callback returned AGENT_SOURCE_PENDING without taking a waker (agent_body_source_waker)",
            )),
            0 if n <= buf.len() => Ok(n),
            0 => Err(std::io::Error::other(format!(
                "the read callback reported {n} bytes for a {}-byte buffer",
                buf.len()
            ))),
            rc => Err(std::io::Error::other(format!(
                "the read callback returned {rc}"
            ))),
        })
    }

    fn length(&self) -> Option<u64> {
        u64::try_from(self.src.length).ok()
    }

    fn rewind(&mut self) -> bool {
        match self.src.rewind {
            Some(rewind) => {
                // SAFETY: the caller's callback with its userdata, as documented.
                let rc = unsafe { rewind(self.src.userdata) };
                rc == 0
            }
            None => false,
        }
    }
}

impl Drop for CSource {
    fn drop(&mut self) {
        if let Some(release) = self.src.release {
            // SAFETY: the caller's callback with its userdata, called once (this drop).
            unsafe { release(self.src.userdata) };
        }
    }
}

/// Takes the caller's source; its `release` runs when the returned body is dropped, so
/// from here on every path releases it exactly once.
///
/// # Safety
/// `source` is NULL or points to a readable `agent_body_source`.
unsafe fn take_source(source: *const agent_body_source) -> Result<Option<Body>> {
    // SAFETY: forwarded contract.
    let Some(src) = (unsafe { source.as_ref() }).copied() else {
        return Ok(None);
    };
    let body = Body::source(CSource { src });
    if src.read.is_none() {
        return Err(Error::invalid_argument("source.read is NULL"));
    }
    if src.length < -1 {
        return Err(Error::invalid_argument(format!(
            "source.length = {} (the length, or -1 when unknown)",
            src.length
        )));
    }
    Ok(Some(body))
}

/// Builds a request from C arguments, its body from `source` when one is given (then
/// `body_len` must be 0). The source is taken first: every later failure releases it.
///
/// # Safety
/// As `agent_request_stream`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn stream_request(
    method: *const c_char,
    url: *const c_char,
    headers: *const agent_header,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    source: *const agent_body_source,
    timeout_msecs: u32,
) -> Result<crate::http::Request> {
    // SAFETY: forwarded contract.
    let source = unsafe { take_source(source) }?;
    // SAFETY: forwarded contract.
    let mut req = unsafe {
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
    if let Some(src) = source {
        if body_len > 0 {
            return Err(Error::invalid_argument(
                "both body bytes and a body source were given",
            ));
        }
        req.body = src;
    }
    Ok(req)
}

/// A response whose head has arrived and whose body is read piece by piece, with
/// `agent_stream_read` (blocking) or `agent_stream_read_async` (callback). Reading it to the
/// end gives the connection back to the pool; `agent_stream_free` before the end aborts the
/// request (the connection is closed, never reused). The engine holds a bounded window of
/// the body per stream (hyper's read buffer, at most 256 KiB, plus the piece being handed
/// over): a reader that stops reading stops the socket being read.
///
/// One read at a time; the head may be read at any time. Free every stream before its agent
/// (`agent_free` waits up to 5 s for streams still open).
pub struct agent_stream {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    head: Response,
    header_block: Box<[u8]>,
    state: Mutex<State>,
    /// The piece `agent_stream_next` handed out last (the caller's pointer points into it).
    lent: Mutex<Bytes>,
    /// Told when the stream is freed, so that an async read in flight ends at once.
    freed: tokio::sync::Notify,
}

enum State {
    /// Ready for a read; `leftover` is what a blocking read could not fit in its buffer.
    Idle {
        stream: Box<ResponseStream>,
        leftover: Bytes,
        total_us: u64,
    },
    /// Lent to an async read.
    Reading { total_us: u64 },
    /// Freed by the caller while an async read was in flight.
    Freed,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the stream (and what a read left over) out for one read; refused while
    /// another read has it.
    fn lend(&self) -> Result<(Box<ResponseStream>, Bytes)> {
        let mut st = self.lock();
        match std::mem::replace(&mut *st, State::Freed) {
            State::Idle {
                stream,
                leftover,
                total_us,
            } => {
                *st = State::Reading { total_us };
                Ok((stream, leftover))
            }
            other => {
                *st = other;
                Err(busy())
            }
        }
    }

    /// Puts the stream back after a read. Returns it instead when the stream was freed
    /// meanwhile (the caller drops it, outside the lock).
    fn give_back(
        &self,
        stream: Box<ResponseStream>,
        leftover: Bytes,
    ) -> Option<Box<ResponseStream>> {
        let mut st = self.lock();
        if matches!(*st, State::Freed) {
            return Some(stream);
        }
        let total_us = stream.head().timings.total_us;
        *st = State::Idle {
            stream,
            leftover,
            total_us,
        };
        None
    }

    pub(super) fn hold(&self, piece: Bytes) {
        *self.lent.lock().unwrap_or_else(|p| p.into_inner()) = piece;
    }
}

impl agent_stream {
    pub(super) fn boxed(stream: ResponseStream) -> *mut agent_stream {
        let head = stream.head().clone();
        let shared = Arc::new(Shared {
            header_block: header_block(&head.headers),
            head,
            state: Mutex::new(State::Idle {
                stream: Box::new(stream),
                leftover: Bytes::new(),
                total_us: 0,
            }),
            lent: Mutex::new(Bytes::new()),
            freed: tokio::sync::Notify::new(),
        });
        Box::into_raw(Box::new(agent_stream { shared }))
    }
}

fn busy() -> Error {
    Error::invalid_argument("an agent_stream_read_async on this stream has not completed yet")
}

/// Sends a request and blocks until its response head has arrived; the body is then read
/// from `*out` with `agent_stream_read`. Arguments as for `agent_request`, plus `source`:
/// NULL to send `body`/`body_len`, or a request body read from the caller (then `body` must
/// be NULL and `body_len` 0). The source's `release` is called in every case, also when
/// this fails.
///
/// Returns the codes of `agent_request`, plus `AGENT_CODE_BODY_SOURCE`.
///
/// # Safety
/// As `agent_request`; `source` is NULL or points to a readable `agent_body_source`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_request_stream(
    agent: *const agent,
    method: *const c_char,
    url: *const c_char,
    headers: *const agent_header,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    source: *const agent_body_source,
    timeout_msecs: u32,
    out: *mut *mut agent_stream,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let req = unsafe {
            stream_request(
                method,
                url,
                headers,
                header_count,
                body,
                body_len,
                source,
                timeout_msecs,
            )
        }?;
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        let out = out_ptr(out, "out")?;
        let stream = a.agent().request_stream_blocking(req)?;
        out.write(agent_stream::boxed(stream));
        Ok(())
    })
}

/// Completion callback of `agent_request_stream_async`: called exactly once, on a library
/// thread, with `AGENT_CODE_OK` and a stream the callee owns (free it with
/// `agent_stream_free`), or an error code and NULL (`agent_last_error` gives the message).
pub type agent_stream_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, code: agent_code, stream: *mut agent_stream),
>;

/// Starts a request and returns at once; `callback` runs once its response head has
/// arrived (or it failed). Arguments as for `agent_request_stream`; `out_id` (if not NULL)
/// receives an id for `agent_request_cancel`, which works until the head has arrived. When
/// this returns an error code, the callback is not called.
///
/// # Safety
/// As `agent_request_stream`; `userdata` must stay valid until the callback has run.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_request_stream_async(
    agent: *const agent,
    method: *const c_char,
    url: *const c_char,
    headers: *const agent_header,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    source: *const agent_body_source,
    timeout_msecs: u32,
    callback: agent_stream_callback,
    userdata: *mut c_void,
    out_id: *mut u64,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let req = unsafe {
            stream_request(
                method,
                url,
                headers,
                header_count,
                body,
                body_len,
                source,
                timeout_msecs,
            )
        }?;
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        let cb = callback.ok_or_else(|| null("callback"))?;
        let ud = Userdata(userdata);
        let id = a.agent().request_stream_async(req, move |res| {
            let ud = ud;
            let (code, stream) = outcome(res, agent_stream::boxed);
            // SAFETY: the caller's callback with the caller's userdata, as documented.
            unsafe { cb(ud.0, code, stream) };
        })?;
        // SAFETY: forwarded contract.
        unsafe { write_if_wanted(out_id, id) };
        Ok(())
    })
}

/// Fills `*out` with the response head: status, version, reused flag, headers (as
/// `agent_response_read` gives them) and timings (`total_us` is set once the body has been
/// read to its end); `body` is NULL and `body_len` 0. Pointers stay valid until the stream
/// is freed. Allowed while an async read is in flight.
///
/// # Safety
/// `stream` is NULL or live; `out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_head(
    stream: *const agent_stream,
    out: *mut agent_response_parts,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { borrow(stream, "stream") }?;
        let out = out_ptr(out, "out")?;
        let sh = &s.shared;
        let mut t = timings(&sh.head);
        t.total_us = match &*sh.lock() {
            State::Idle { total_us, .. } | State::Reading { total_us } => *total_us,
            State::Freed => 0,
        };
        out.write(agent_response_parts {
            status: sh.head.status,
            version: sh.head.version_number(),
            reused: sh.head.reused,
            body: std::ptr::null(),
            body_len: 0,
            headers: sh.header_block.as_ptr(),
            headers_len: sh.header_block.len(),
            header_count: sh.head.headers.len(),
            timings: t,
        });
        Ok(())
    })
}

/// The first value of trailer field `name` (case-insensitive) that followed the body:
/// available once a read has returned the end of the body (0 bytes); valid until the next
/// call on this stream or its free. `AGENT_CODE_NOT_FOUND` when there is no such trailer
/// (or the body has not ended yet); `AGENT_CODE_WOULD_BLOCK` while an async read is in
/// flight.
///
/// # Safety
/// `stream` is NULL or live; `name` is a NUL-terminated string; out pointers must be
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_trailer(
    stream: *const agent_stream,
    name: *const c_char,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { borrow(stream, "stream") }?;
        // SAFETY: forwarded contract.
        let name = unsafe { c_str(name, "name") }?;
        let st = s.shared.lock();
        let found = idle_trailers(&st)?.and_then(|t| t.get(name));
        // SAFETY: forwarded contract.
        unsafe {
            write_value(found, value, value_len, || {
                format!("no trailer {name:?} (trailers come after the end of the body)")
            })
        }
    })
}

/// The trailers of a stream no async read holds (`None` before the body's end or when there
/// are none); `AGENT_CODE_WOULD_BLOCK` while an async read is in flight.
fn idle_trailers(st: &State) -> Result<Option<&http::HeaderMap>> {
    match st {
        State::Idle { stream, .. } => Ok(stream.trailers()),
        _ => Err(Error::new(
            ErrorKind::WouldBlock,
            "an async read is in flight on this stream",
        )),
    }
}

/// The number of trailer lines that followed the body: known once a read has returned the
/// end of the body; 0 before, for none, while an async read is in flight, and for NULL.
///
/// # Safety
/// `stream` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_trailer_count(stream: *const agent_stream) -> usize {
    guard_value(0, || {
        // SAFETY: forwarded contract.
        let Some(s) = (unsafe { stream.as_ref() }) else {
            return 0;
        };
        let st = s.shared.lock();
        idle_trailers(&st).ok().flatten().map_or(0, |t| t.len())
    })
}

/// The trailer line at `index` (< `agent_stream_trailer_count`), as
/// `agent_response_trailer_at`; valid until the next call on this stream or its free.
/// `AGENT_CODE_NOT_FOUND` out of range, `AGENT_CODE_WOULD_BLOCK` while an async read is in
/// flight.
///
/// # Safety
/// `stream` is NULL or live; out pointers must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_trailer_at(
    stream: *const agent_stream,
    index: usize,
    name: *mut *const c_char,
    name_len: *mut usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { borrow(stream, "stream") }?;
        let st = s.shared.lock();
        let empty = http::HeaderMap::new();
        let map = idle_trailers(&st)?.unwrap_or(&empty);
        // SAFETY: forwarded contract.
        unsafe {
            super::response::write_field(map, "trailer", index, name, name_len, value, value_len)
        }
    })
}

/// Reads the next bytes of the body into `buf` (at most `cap`, which must be > 0), blocking
/// until some arrive; `*n` receives how many, 0 at the end of the body (the connection has
/// then gone back to the pool). After a failure, later reads fail with the same code.
///
/// Returns `AGENT_CODE_OK` or the body's failure: `BODY_TIMEOUT`, `TIMEOUT` (the request's
/// overall timeout covers the whole stream), `CONNECTION_RESET`, `CONNECTION_CLOSED`,
/// `PROTOCOL`, `RESPONSE_TOO_LARGE`; `WOULD_BLOCK` from a library thread;
/// `INVALID_ARGUMENT` while an async read is in flight.
///
/// # Safety
/// `stream` is NULL or live and not used by another thread at once; `buf` points to `cap`
/// writable bytes; `n` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_read(
    stream: *mut agent_stream,
    buf: *mut u8,
    cap: usize,
    n: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { borrow(stream, "stream") }?;
        let n = out_ptr(n, "n")?;
        if buf.is_null() || cap == 0 {
            return Err(Error::invalid_argument("buf is NULL or cap is 0"));
        }
        // SAFETY: `buf` has `cap` writable bytes (caller's promise).
        let out = unsafe { std::slice::from_raw_parts_mut(buf, cap) };
        let (mut stream, mut leftover) = s.shared.lend()?;
        let res = if leftover.is_empty() {
            stream.next_chunk_blocking().map(|c| c.unwrap_or_default())
        } else {
            Ok(std::mem::take(&mut leftover))
        };
        let res = res.map(|mut chunk| {
            let k = chunk.len().min(cap);
            out[..k].copy_from_slice(&chunk[..k]);
            leftover = chunk.split_off(k);
            k
        });
        // Only this thread frees the stream (the caller's contract): it is still there.
        drop(s.shared.give_back(stream, leftover));
        n.write(res?);
        Ok(())
    })
}

/// Reads the next piece of the body without copying it: `*data`/`*len` point into the
/// library's own buffer, valid until the next read on this stream or `agent_stream_free`
/// (like the pointer libcurl hands to a write callback). `*len == 0` at the end. Bytes left
/// over from an `agent_stream_read` come first. Codes as for `agent_stream_read`.
///
/// # Safety
/// `stream` is NULL or live and not used by another thread at once; `data` and `len` are
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_next(
    stream: *mut agent_stream,
    data: *mut *const u8,
    len: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { borrow(stream, "stream") }?;
        let data = out_ptr(data, "data")?;
        let len = out_ptr(len, "len")?;
        let (mut stream, leftover) = s.shared.lend()?;
        // The piece handed out last is dropped here: the caller is done with it.
        let res = if leftover.is_empty() {
            stream.next_chunk_blocking().map(|c| c.unwrap_or_default())
        } else {
            Ok(leftover)
        };
        let (ptr, n, held) = match &res {
            Ok(chunk) => (chunk.as_ptr(), chunk.len(), chunk.clone()),
            Err(_) => (std::ptr::null(), 0, Bytes::new()),
        };
        drop(s.shared.give_back(stream, Bytes::new()));
        res?;
        // Kept alive until the next call: the caller's pointer stays valid.
        s.shared.hold(held);
        data.write(ptr);
        len.write(n);
        Ok(())
    })
}

/// Bytes the engine holds for this stream that the caller has not read yet (read from the
/// socket, response head included): at most the window of `agent_stream`, whatever the
/// body's size. 0 once the body has ended. For monitoring and tests.
///
/// # Safety
/// `stream` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_buffered(stream: *const agent_stream) -> u64 {
    guard_value(0, || {
        // SAFETY: forwarded contract.
        let Some(s) = (unsafe { stream.as_ref() }) else {
            return 0;
        };
        match &*s.shared.lock() {
            State::Idle {
                stream, leftover, ..
            } => stream.buffered() + leftover.len() as u64,
            _ => 0,
        }
    })
}

/// Callback of `agent_stream_read_async`: called exactly once per read, on a library
/// thread. With `AGENT_CODE_OK`, `data`/`len` is the next piece of the body, valid only
/// during the call (copy what you keep), and `len == 0` means the end of the body. With an
/// error code, `data` is NULL (`agent_last_error` gives the message); a stream freed while
/// its read was in flight completes with `AGENT_CODE_CANCELLED`. The callback may call
/// `agent_stream_read_async` again on the same stream.
pub type agent_data_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, code: agent_code, data: *const u8, len: usize),
>;

/// Starts reading the next piece of the body and returns at once; `callback` runs when it
/// has arrived (see `agent_data_callback`). One read at a time: a second call before the
/// callback has run returns `AGENT_CODE_INVALID_ARGUMENT` (and the callback is not called
/// for it). Until the next read, the engine does not read the socket (backpressure).
///
/// # Safety
/// `stream` is NULL or live; `userdata` must stay valid until the callback has run.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_read_async(
    stream: *mut agent_stream,
    callback: agent_data_callback,
    userdata: *mut c_void,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { borrow(stream, "stream") }?;
        let cb = callback.ok_or_else(|| null("callback"))?;
        let handle = crate::runtime::handle()?;
        let ud = Userdata(userdata);
        let task = read_task(s, false, move |res| {
            let ud = ud;
            match res {
                // SAFETY: the caller's callback with its userdata; `chunk` outlives the call.
                Ok(chunk) => unsafe {
                    cb(ud.0, agent_code::AGENT_CODE_OK, chunk.as_ptr(), chunk.len())
                },
                Err(e) => {
                    let code = fail(&e);
                    // SAFETY: as above, with no data.
                    unsafe { cb(ud.0, code, std::ptr::null(), 0) }
                }
            }
        })?;
        handle.spawn(task);
        Ok(())
    })
}

/// Lends the stream to one read of its next piece and returns the task that reads it:
/// on the runtime (`queued` false) or on an event queue's draining thread. `done` runs
/// exactly once with the piece (empty at the end of the body) or the error; a stream
/// freed during the read is dropped (aborted) first, then `done` gets `Cancelled`, so that
/// the statistics are final when the caller hears of it.
pub(super) fn read_task(
    s: &agent_stream,
    queued: bool,
    done: impl FnOnce(Result<Bytes>) + Send + 'static,
) -> Result<crate::queue::Task> {
    let (mut stream, leftover) = s.shared.lend()?;
    let shared = s.shared.clone();
    let mut delivery = Delivery(Some(done));
    Ok(Box::pin(async move {
        let res = if leftover.is_empty() {
            let next = async {
                if queued {
                    stream.next_chunk_queued().await
                } else {
                    stream.next_chunk().await
                }
            };
            tokio::select! {
                r = next => r,
                // Freed meanwhile: stop waiting for the next piece (the stream is dropped,
                // aborted, below).
                _ = shared.freed.notified() => Err(Error::new(
                    ErrorKind::Cancelled,
                    "the stream was freed during the read",
                )),
            }
        } else {
            Ok(Some(leftover))
        };
        let freed = shared.give_back(stream, Bytes::new()).map(drop).is_some();
        if freed {
            delivery.finish(Err(Error::new(
                ErrorKind::Cancelled,
                "the stream was freed during the read",
            )));
        } else {
            delivery.finish(res.map(|c| c.unwrap_or_default()));
        }
    }))
}

/// Calls a read's `done` exactly once: with the read's result, or — if the task is
/// dropped first (runtime gone, queue freed, panic) — with `Cancelled` / `Panic`.
struct Delivery<F: FnOnce(Result<Bytes>)>(Option<F>);

impl<F: FnOnce(Result<Bytes>)> Delivery<F> {
    fn finish(&mut self, res: Result<Bytes>) {
        if let Some(done) = self.0.take() {
            done(res);
        }
    }
}

impl<F: FnOnce(Result<Bytes>)> Drop for Delivery<F> {
    fn drop(&mut self) {
        let e = if std::thread::panicking() {
            Error::new(ErrorKind::Panic, "a panic ended the read")
        } else {
            Error::new(ErrorKind::Cancelled, "the read was cancelled")
        };
        self.finish(Err(e));
    }
}

/// Frees a stream. Before the end of the body this aborts the request: the connection is
/// closed, never reused, and the request counts as failed in the statistics. An async read
/// in flight completes with `AGENT_CODE_CANCELLED`. NULL is ignored.
///
/// # Safety
/// `stream` is NULL or a stream from this library not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_stream_free(stream: *mut agent_stream) {
    guard_value((), || {
        if stream.is_null() {
            return;
        }
        // SAFETY: created by Box::into_raw in `agent_stream::boxed`, freed once.
        let s = unsafe { Box::from_raw(stream) };
        let old = std::mem::replace(&mut *s.shared.lock(), State::Freed);
        if matches!(old, State::Reading { .. }) {
            // A permit is stored if the read has not started waiting yet.
            s.shared.freed.notify_one();
        }
        drop(old); // an idle stream is dropped here, outside the lock
    })
}
