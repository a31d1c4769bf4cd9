"""asyncio over the library's event queue (``agent_queue``).

Every event loop that makes requests gets one :class:`Driver`: one native queue, kept in a
``WeakKeyDictionary`` keyed by the loop, shared by every :class:`~keepalive_agent.Agent`
used on that loop (a queue may carry requests of several agents). Requests, streamed
heads and body reads are submitted to it with an integer token naming their future.

From the first submission on, the loop watches the queue's descriptor (``loop.add_reader``;
level-triggered: readable while the queue has work, which includes an HTTP/2 connection's
own work between requests — PINGs, SETTINGS, GOAWAY — since the queue drives the
connections its requests opened). When it is readable the driver calls
``agent_queue_drain`` with a timeout of 0: the library does the pending I/O — connecting,
sending, receiving — right there, on the loop's thread (ctypes releases the GIL for the
call), and hands back the events that completed, up to 256 per call, drained again while
a call fills the batch. Each event settles its future directly: no other thread, no
``call_soon_threadsafe``. The reader stays while the driver lives: when nothing is in
flight the descriptor is quiet, and a connection's timers still get their turn.

A driver's queue is freed when its loop is garbage-collected, or when a driver is next
created and finds its loop closed. Freeing a queue drops what is still in flight
(nobody is waiting for it once the loop has closed); the library releases the body
sources of those requests.

Only the loop's thread touches a driver (submits, drains, settles); other threads may
cancel requests or close agents, which the library reports as ``AGENT_CODE_CANCELLED``
events at the next drain (the descriptor becomes readable).
"""

from __future__ import annotations

import asyncio
import ctypes
import struct
import threading
import weakref
from ctypes import byref, c_size_t, c_uint64, c_void_p
from typing import Any, Dict, List, Optional, Tuple

from . import _native, errors
from ._native import lib

__all__ = ["Driver", "driver_for", "BATCH"]

BATCH = 256  # events per agent_queue_drain call

# agent_event: token u64, kind u32, code u32, response, stream, data, len, message.
_EVENT = struct.Struct("=QIIQQQQQ")
assert _EVENT.size == ctypes.sizeof(_native.agent_event), "agent_event layout"
_EVENT_SIZE = _EVENT.size

_OK = _native.OK
_RESPONSE = _native.EVENT_RESPONSE
_HEAD = _native.EVENT_HEAD
_DATA = _native.EVENT_DATA

# Function pointers of their own (``lib[name]`` is a new object each time), without the
# errcheck of ``_native``: the loop maps codes itself.
_drain = lib["agent_queue_drain"]
_drain.restype = _native.agent_code
_drain.argtypes = [c_void_p, c_void_p, c_size_t, ctypes.c_uint32, ctypes.POINTER(c_size_t)]
_string_at = ctypes.string_at

# [events drained, events that found their future] over every driver (for tests).
counts = [0, 0]
_counts_lock = threading.Lock()

_drivers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Driver]" = weakref.WeakKeyDictionary()
_drivers_lock = threading.Lock()


def _free_queue(state: List[Optional[int]]) -> None:
    # The loop is gone (or closed): nobody drains this queue any more.
    q, state[0] = state[0], None
    if q:
        lib.agent_queue_free(q)


def event_message(code: int, message: int) -> str:
    if message:
        return _string_at(message).decode("utf-8", "replace")
    return _native.code_name(code)


def event_error(code: int, message: int) -> errors.AgentError:
    """The exception of a failed event, with the message the event carries."""
    return _native.error_for(code, event_message(code, message))


class Driver:
    """One event loop's queue: submissions, the reader on its descriptor, the drain."""

    __slots__ = (
        "__weakref__", "_state", "q", "fd", "_loop", "entries", "watching", "_next",
        "_events", "_addr", "_view", "_n", "_nref", "rid", "rid_ref", "_finalizer",
        "read_response", "q_arg", "token_arg", "_resp_arg", "_parts_ref", "_parts_view",
        "plain_futures",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # late: _agent imports this module
        from ._agent import make_response_from_handle, parts_buffers

        self.read_response = make_response_from_handle
        self._parts_ref, self._parts_view = parts_buffers()  # what responses are read into
        out = c_void_p()
        lib.agent_queue_new(byref(out))
        self.q: Optional[int] = out.value
        self.q_arg: Any = c_void_p.from_param(out.value)  # the same, as the bare functions take it
        self._state: List[Optional[int]] = [out.value]
        self.fd = lib.agent_queue_fd(out.value)
        self._loop = weakref.ref(loop)
        # token -> (future, a, b): RESPONSE (fut, method, url); HEAD (fut, source, None);
        # DATA (fut, stream object, None). An entry stays until its event has come, also
        # when its future was cancelled: then the event only frees what it carries.
        self.entries: Dict[int, Tuple[Any, Any, Any]] = {}
        self.watching = False
        self._next = 0
        self._events = (_native.agent_event * BATCH)()
        self._addr = ctypes.addressof(self._events)
        self._view = memoryview(self._events).cast("B")
        self._n = c_size_t()
        self._nref = byref(self._n)
        self.rid = c_uint64()  # out_id of the last submission (read right after it)
        self.rid_ref = byref(self.rid)
        # Arguments of the bare functions, set before each call: the token of a
        # submission, the response of an event.
        self.token_arg = c_uint64()
        self._resp_arg = c_void_p()
        self._finalizer = weakref.finalize(loop, _free_queue, self._state)
        # The loop makes its futures as asyncio's own loops do (``asyncio.Future(loop=loop)``,
        # made directly, skips one Python call); another loop's create_future is used.
        self.plain_futures = type(loop).create_future is asyncio.BaseEventLoop.create_future

    # -- submission side ------------------------------------------------------------------

    def token(self) -> int:
        self._next += 1
        return self._next

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Makes the loop watch the descriptor (after a submission)."""
        if not self.watching:
            loop.add_reader(self.fd, self.on_readable)
            self.watching = True

    def _unwatch(self) -> None:
        if self.watching:
            self.watching = False
            loop = self._loop()
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self.fd)

    @property
    def closed(self) -> bool:
        return self._state[0] is None

    def pending(self) -> int:
        """``agent_queue_pending``: submissions not yet reported by a drain."""
        q = self._state[0]
        return int(lib.agent_queue_pending(q)) if q else 0

    def close(self) -> None:
        """Frees the queue (the loop has closed); in-flight work is dropped."""
        self.watching = False
        self.q = None
        self.q_arg = None
        self.entries.clear()
        self._finalizer()

    # -- the reader -----------------------------------------------------------------------

    def on_readable(self) -> None:
        """The descriptor is readable: drain in batches, settle the futures."""
        q = self._state[0]
        if not q:
            return
        entries = self.entries
        n = self._n
        while True:
            code = _drain(q, self._addr, BATCH, 0, self._nref)
            if code:
                if code == _native.WOULD_BLOCK:
                    return  # inside a drain of this thread: the outer drain goes on
                self._fail_all(code)
                return
            k = n.value
            if k:
                self._dispatch(k, entries)
            if k < BATCH:
                break

    def _dispatch(self, k: int, entries: Dict[int, Tuple[Any, Any, Any]]) -> None:
        matched = 0
        make = self.read_response
        resp_arg = self._resp_arg
        parts_ref = self._parts_ref
        parts_view = self._parts_view
        for token, kind, code, resp, stream, data, length, message in _EVENT.iter_unpack(
            self._view[: k * _EVENT_SIZE]
        ):
            entry = entries.pop(token, None)
            try:
                if entry is None:  # pragma: no cover - every token is registered first
                    if resp:
                        lib.agent_response_free(resp)
                    if stream:
                        lib.agent_stream_free(stream)
                    continue
                matched += 1
                fut = entry[0]
                if kind == _RESPONSE:
                    if fut.done():  # the task was cancelled: nobody takes the response
                        if resp:
                            lib.agent_response_free(resp)
                    elif code == _OK and resp:
                        resp_arg.value = resp
                        fut.set_result(make(resp_arg, entry[1], entry[2], parts_ref, parts_view))
                    else:
                        fut.set_exception(
                            event_error(code, message) if code != _OK
                            else _native.error_for(_native.INTERNAL, "an event without its response")
                        )
                elif kind == _DATA:
                    entry[1]._on_data(fut, code, data, length, message)
                elif kind == _HEAD:
                    if fut.done():
                        if stream:
                            lib.agent_stream_free(stream)  # aborts the request
                    elif code == _OK and stream:
                        fut.set_result(stream)
                    else:
                        if stream:  # pragma: no cover - defensive
                            lib.agent_stream_free(stream)
                        fut.set_exception(_head_error(code, message, entry[1]))
                else:  # pragma: no cover - a kind this binding does not know
                    if resp:
                        lib.agent_response_free(resp)
                    if stream:
                        lib.agent_stream_free(stream)
                    if not fut.done():
                        fut.set_exception(_native.error_for(_native.INTERNAL, f"unknown event kind {kind}"))
            except BaseException as e:  # one bad event must not lose the others
                loop = self._loop()
                if loop is not None:
                    loop.call_exception_handler(
                        {"message": "keepalive_agent: settling a queue event failed", "exception": e}
                    )
        with _counts_lock:
            counts[0] += k
            counts[1] += matched

    def _fail_all(self, code: int) -> None:
        """The drain itself failed (e.g. a queue inherited across fork): every pending
        future fails with that error and the reader is removed."""
        err = _native.error_for(code)
        entries = list(self.entries.values())
        self.entries.clear()
        self._unwatch()
        for fut, _, _ in entries:
            if not fut.done():
                fut.set_exception(type(err)(err.code, err.message))


def _head_error(code: int, message: int, source: Any) -> BaseException:
    from . import _body

    return _body.error_for_message(code, event_message(code, message), source)


# The driver last looked up: most programs run one loop, and each lookup in _drivers
# makes a weak reference to its key. Only a hint: checked against its loop (held weakly)
# at each use, so another thread's loop, or a loop gone, only falls back to _drivers.
_last: Optional[Driver] = None


def driver_for(loop: asyncio.AbstractEventLoop) -> Driver:
    """The driver of ``loop`` (created on first use)."""
    global _last
    d = _last
    if d is not None and d._loop() is loop and d._state[0] is not None:
        return d
    d = _drivers.get(loop)
    if d is not None and not d.closed:
        _last = d
        return d
    with _drivers_lock:
        d = _drivers.get(loop)
        if d is not None and not d.closed:
            return d
        # Free the queues of loops that have closed since (they can drain no more).
        for other_loop, other in list(_drivers.items()):
            if other_loop.is_closed():
                other.close()
                del _drivers[other_loop]
        d = Driver(loop)
        _drivers[loop] = d
        _last = d
        return d


def pending_total() -> int:
    """Entries not yet settled over every driver (for tests)."""
    with _drivers_lock:
        return sum(len(d.entries) for d in list(_drivers.values()))


def queue_pending_total() -> int:
    """``agent_queue_pending`` summed over every driver (for tests)."""
    with _drivers_lock:
        return sum(d.pending() for d in list(_drivers.values()))


def after_fork_in_child() -> None:
    # Queues inherited across fork are not used (nor freed) in the child.
    global _drivers_lock, _counts_lock, _last
    _last = None
    _drivers_lock = threading.Lock()
    _counts_lock = threading.Lock()
    for d in list(_drivers.values()):
        d._finalizer.detach()
        d._state[0] = None
        d.q = None
        d.q_arg = None
        d.entries.clear()
        d.watching = False
    _drivers.clear()
