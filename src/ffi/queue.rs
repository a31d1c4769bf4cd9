//! `agent_queue`: an event queue that the caller's event loop drives (see `crate::queue`).

use std::ffi::{CString, c_char};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::agent::{agent, agent_header, build_request};
use super::response::agent_response;
use super::stream::{Shared, agent_body_source, agent_stream, read_task, stream_request};
use super::{agent_code, borrow, ensure_atfork, guard, guard_value, out_ptr, write_if_wanted};
use crate::agent::ResponseStream;
use crate::error::{Error, Result};
use crate::http::Response;
use crate::queue::{Queue, Sink, Task};

/// An event queue: requests submitted to it run on the thread that drains it, and their
/// results come back as events, many per call — the model of curl's multi interface and
/// of io_uring's completion queue, for programs that already have an event loop (epoll,
/// libuv, libev, asyncio, select) or keep many requests in flight.
///
/// 1. `agent_queue_new` creates a queue; `agent_queue_fd` gives its descriptor.
/// 2. `agent_queue_submit` (whole response) and `agent_queue_submit_stream` (head first,
///    then `agent_queue_read` for each piece of the body) add requests, each with a token
///    of the caller's choosing, from any thread.
/// 3. When the descriptor is readable, `agent_queue_drain` does the pending work (sending,
///    receiving, on the calling thread) and returns the events that completed — possibly
///    none, since readiness can mean progress without completion. It can also wait, for
///    programs without a loop.
///
/// Every accepted submission produces exactly one event: its result, or
/// `AGENT_CODE_CANCELLED` when it is cancelled (`agent_request_cancel`) or its agent is
/// freed — reported at the next drain. Freeing the queue drops what is still in flight.
/// One thread drains a queue at a time; submitting is allowed from any thread. A queue may
/// carry requests of several agents; an agent may serve several queues.
pub struct agent_queue {
    queue: Queue<Event>,
    /// The messages of the events handed out by the last drain.
    messages: Mutex<Vec<CString>>,
    /// Where a drain collects its events (kept, so that a drain allocates nothing).
    scratch: Mutex<Vec<Event>>,
}

/// What an event reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum agent_event_kind {
    /// A request of `agent_queue_submit` completed: `response` (with `AGENT_CODE_OK`).
    AGENT_EVENT_RESPONSE = 1,
    /// The head of a request of `agent_queue_submit_stream` arrived: `stream` (with
    /// `AGENT_CODE_OK`).
    AGENT_EVENT_HEAD = 2,
    /// A read of `agent_queue_read` completed: `data`/`len` (with `AGENT_CODE_OK`; `len`
    /// 0 is the end of the body, and the connection has gone back to the pool).
    AGENT_EVENT_DATA = 3,
}

/// One completed event, as `agent_queue_drain` hands it out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct agent_event {
    /// The token given when the request or read was submitted.
    pub token: u64,
    /// What completed.
    pub kind: agent_event_kind,
    /// `AGENT_CODE_OK`, or why it failed (the codes of `agent_request` and
    /// `agent_stream_read`).
    pub code: agent_code,
    /// `AGENT_EVENT_RESPONSE` with `AGENT_CODE_OK`: the response, now the caller's (free
    /// with `agent_response_free`). Otherwise NULL.
    pub response: *mut agent_response,
    /// `AGENT_EVENT_HEAD` with `AGENT_CODE_OK`: the stream, now the caller's (read it with
    /// `agent_queue_read` or the other stream functions; free with `agent_stream_free`).
    /// Otherwise NULL.
    pub stream: *mut agent_stream,
    /// `AGENT_EVENT_DATA` with `AGENT_CODE_OK`: the piece of the body, valid until the next
    /// read on its stream or the stream's free. Otherwise NULL.
    pub data: *const u8,
    /// The length of `data`; 0 at the end of the body.
    pub len: usize,
    /// With an error code: the message, valid until the next `agent_queue_drain` on this
    /// queue or its free. Otherwise NULL.
    pub message: *const c_char,
}

/// What the queue's requests report, converted to an `agent_event` when handed out.
pub(super) enum Event {
    Response(u64, Result<Response>),
    Head(u64, Result<Box<ResponseStream>>),
    Data(u64, Result<Bytes>, Arc<Shared>),
}

/// Creates an event queue. On success `*out` receives it (free with `agent_queue_free`).
///
/// Returns `AGENT_CODE_OK`, `INVALID_ARGUMENT` (`out` NULL) or `INTERNAL` (no epoll
/// instance or runtime could be created).
///
/// # Safety
/// `out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_queue_new(out: *mut *mut agent_queue) -> agent_code {
    guard(|| {
        let out = out_ptr(out, "out")?;
        ensure_atfork();
        let q = agent_queue {
            queue: Queue::new()?,
            messages: Mutex::new(Vec::new()),
            scratch: Mutex::new(Vec::new()),
        };
        out.write(Box::into_raw(Box::new(q)));
        Ok(())
    })
}

/// Frees a queue. Requests and reads still in flight are dropped: each is cancelled (a
/// request's connection is closed) and reported to nobody; responses and streams not yet
/// handed out are freed. Handed-out responses and streams stay valid. NULL is ignored.
///
/// # Safety
/// `queue` is NULL or came from `agent_queue_new`, not freed before, and no other thread
/// uses it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_queue_free(queue: *mut agent_queue) {
    guard_value((), || {
        if !queue.is_null() {
            // SAFETY: created by Box::into_raw in `agent_queue_new`, freed once.
            drop(unsafe { Box::from_raw(queue) });
        }
    })
}

/// The queue's file descriptor, for the caller's event loop: wait for it to be readable
/// (level-triggered: it stays readable while there is work), then call
/// `agent_queue_drain`. Owned by the queue: do not read, write or close it. -1 for NULL.
///
/// # Safety
/// `queue` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_queue_fd(queue: *const agent_queue) -> i32 {
    guard_value(-1, || {
        // SAFETY: forwarded contract.
        match unsafe { queue.as_ref() } {
            Some(q) => q.queue.fd(),
            None => -1,
        }
    })
}

/// Requests and reads submitted to the queue and not yet reported by a drain (in flight,
/// or completed and waiting). 0 for NULL.
///
/// # Safety
/// `queue` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_queue_pending(queue: *const agent_queue) -> usize {
    guard_value(0, || {
        // SAFETY: forwarded contract.
        match unsafe { queue.as_ref() } {
            Some(q) => q.queue.pending(),
            None => 0,
        }
    })
}

/// Submits a request whose whole response comes back as one `AGENT_EVENT_RESPONSE` event
/// carrying `token`. Arguments as for `agent_request` (all copied before this returns);
/// `out_id`, if not NULL, receives an id for `agent_request_cancel`. Nothing is sent until
/// the next `agent_queue_drain`.
///
/// When this returns an error code (bad argument, agent freed), no event will come.
///
/// # Safety
/// `queue` and `agent` are NULL or live; the other pointers as for `agent_request`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_queue_submit(
    queue: *const agent_queue,
    agent: *const agent,
    method: *const c_char,
    url: *const c_char,
    headers: *const agent_header,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    timeout_msecs: u32,
    token: u64,
    out_id: *mut u64,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let q = unsafe { borrow(queue, "queue") }?;
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
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
        // SAFETY: forwarded contract.
        unsafe {
            enqueue(q, out_id, |sink| {
                a.agent()
                    .request_task(req, move |res| sink.push(Event::Response(token, res)))
            })
        }
    })
}

/// Starts a request with a sink of `q`, submits its task, and reports its id.
///
/// # Safety
/// `out_id` is NULL or writable.
unsafe fn enqueue(
    q: &agent_queue,
    out_id: *mut u64,
    start: impl FnOnce(Sink<Event>) -> Result<(u64, Task)>,
) -> Result<()> {
    let (id, task) = start(q.queue.sink())?;
    q.queue.submit(task);
    // SAFETY: forwarded contract.
    unsafe { write_if_wanted(out_id, id) };
    Ok(())
}

/// Submits a request whose response comes back as an `AGENT_EVENT_HEAD` event (carrying
/// `token`) as soon as its head has arrived; read the body with `agent_queue_read`.
/// Arguments as for `agent_request_stream` (the source's `release` runs in every case);
/// `out_id` as for `agent_queue_submit`, usable until the head has arrived.
///
/// # Safety
/// As `agent_queue_submit`; `source` is NULL or points to a readable `agent_body_source`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_queue_submit_stream(
    queue: *const agent_queue,
    agent: *const agent,
    method: *const c_char,
    url: *const c_char,
    headers: *const agent_header,
    header_count: usize,
    body: *const u8,
    body_len: usize,
    source: *const agent_body_source,
    timeout_msecs: u32,
    token: u64,
    out_id: *mut u64,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract (the source is taken first, so every failure below
        // releases it).
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
        let q = unsafe { borrow(queue, "queue") }?;
        // SAFETY: forwarded contract.
        let a = unsafe { borrow(agent, "agent") }?;
        // SAFETY: forwarded contract.
        unsafe {
            enqueue(q, out_id, |sink| {
                a.agent().request_stream_task(req, move |res| {
                    sink.push(Event::Head(token, res.map(Box::new)))
                })
            })
        }
    })
}

/// Submits a read of the next piece of `stream`'s body; it comes back as an
/// `AGENT_EVENT_DATA` event carrying `token` (`len` 0 at the end of the body). One read at
/// a time per stream, and none while another read of any kind is in flight
/// (`AGENT_CODE_INVALID_ARGUMENT`); until the next read, the socket is not read
/// (backpressure). Freeing the stream during the read reports `AGENT_CODE_CANCELLED`.
///
/// # Safety
/// `queue` and `stream` are NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_queue_read(
    queue: *const agent_queue,
    stream: *mut agent_stream,
    token: u64,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let q = unsafe { borrow(queue, "queue") }?;
        // SAFETY: forwarded contract.
        let s = unsafe { borrow(stream, "stream") }?;
        let sink = q.queue.sink();
        let shared = s.shared.clone();
        let task = read_task(s, true, move |res| {
            sink.push(Event::Data(token, res, shared));
        })?;
        q.queue.submit(task);
        Ok(())
    })
}

/// Does the queue's pending work on the calling thread — sends, receives, connects —
/// and writes up to `cap` completed events to `events`; `*n` receives how many (0 is
/// normal: readiness can mean progress without completion). When no event is ready, it
/// waits up to `timeout_msecs` for one (0: do not wait; for event loops, which wait on
/// `agent_queue_fd` instead). Events left over (more than `cap`) keep the descriptor
/// readable. Messages of the previous drain's events are freed here.
///
/// Returns `AGENT_CODE_OK`, `INVALID_ARGUMENT` (NULL, or `cap` 0), `WOULD_BLOCK` (called
/// from a library thread — inside a callback — or from inside a drain on this thread, such
/// as from a body source's read callback), `FORKED` (a queue created before `fork()`).
///
/// # Safety
/// `queue` is NULL or live; `events` points to `cap` writable `agent_event`s; `n` is
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_queue_drain(
    queue: *const agent_queue,
    events: *mut agent_event,
    cap: usize,
    timeout_msecs: u32,
    n: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let q = unsafe { borrow(queue, "queue") }?;
        let n = out_ptr(n, "n")?;
        if events.is_null() || cap == 0 {
            return Err(Error::invalid_argument("events is NULL or cap is 0"));
        }
        // SAFETY: `events` points to `cap` writable entries (caller's promise); every
        // entry handed out is written below before `*n` tells the caller about it.
        let slots = unsafe { std::slice::from_raw_parts_mut(events, cap) };
        // Never waited for: a drain from inside a drain (refused below) must not block here.
        let mut kept = q.scratch.try_lock().ok();
        let mut fresh = Vec::new();
        let got = kept.as_deref_mut().unwrap_or(&mut fresh);
        let timeout = Duration::from_millis(u64::from(timeout_msecs));
        let res = q.queue.drain(got, cap, timeout);
        let mut messages = q.messages.lock().unwrap_or_else(|p| p.into_inner());
        messages.clear();
        let count = got.len();
        for (slot, ev) in slots.iter_mut().zip(got.drain(..)) {
            *slot = convert(ev, &mut messages);
        }
        drop(messages);
        drop(kept);
        res?;
        n.write(count);
        Ok(())
    })
}

/// An event as the caller sees it; handles and messages change hands here.
fn convert(ev: Event, messages: &mut Vec<CString>) -> agent_event {
    let mut out = agent_event {
        token: 0,
        kind: agent_event_kind::AGENT_EVENT_RESPONSE,
        code: agent_code::AGENT_CODE_OK,
        response: std::ptr::null_mut(),
        stream: std::ptr::null_mut(),
        data: std::ptr::null(),
        len: 0,
        message: std::ptr::null(),
    };
    let err = match ev {
        Event::Response(token, res) => {
            out.token = token;
            res.map(|r| out.response = agent_response::boxed(r)).err()
        }
        Event::Head(token, res) => {
            out.token = token;
            out.kind = agent_event_kind::AGENT_EVENT_HEAD;
            res.map(|s| out.stream = agent_stream::boxed(*s)).err()
        }
        Event::Data(token, res, shared) => {
            out.token = token;
            out.kind = agent_event_kind::AGENT_EVENT_DATA;
            res.map(|chunk| {
                out.data = chunk.as_ptr();
                out.len = chunk.len();
                // Kept alive until the next read or the stream's free.
                shared.hold(chunk);
            })
            .err()
        }
    };
    if let Some(e) = err {
        out.code = agent_code::from_kind(e.kind());
        let msg = CString::new(e.message().replace('\0', "?")).unwrap_or_default();
        out.message = msg.as_ptr();
        messages.push(msg);
    }
    out
}
