"""Request bodies read piece by piece: files and iterables behind an ``agent_body_source``.

The library asks for the body in pieces of at most 64 KiB through the ``read`` callback
(on the calling thread for a blocking request; for an async one, on the event loop's
thread, inside the drain of its queue),
and calls ``release`` exactly once when it no longer needs the source. Nothing here holds
more than one piece of the body: a file is read straight into the library's buffer
(``readinto``); an iterator's current item is kept until it has been handed over.

An async iterable never makes the drain wait for the producer: with no item
at hand, ``read`` takes a waker (``agent_body_source_waker``), asks the loop for the next
item and returns ``AGENT_SOURCE_PENDING``; once the item has come (or the iterator has
ended or raised), the loop thread wakes the request (``agent_body_waker_wake``) and the
library calls ``read`` again. Every waker is woken or freed exactly once.

As with async completions, no Python object's address reaches C: ``userdata`` is an
integer token naming the source in :data:`_sources`, and the three C callbacks are
module-level objects. The registry entry (and so the user's file or iterator, and every
ctypes object the source made) lives until ``release`` has been called.

An exception raised by the user's file or iterator never crosses into C: ``read``
returns non-zero (the library then fails the request with ``AGENT_CODE_BODY_SOURCE``),
and the exception is kept in :attr:`Source.error`, to be raised by the Python call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import io
import itertools
import os
import threading
from ctypes import c_char
from typing import Any, Dict, Optional, Tuple

from . import _native
from ._native import lib

__all__ = ["Source", "IterableBody", "make_source", "is_streamed_body"]

# token -> source, from the C call until the library calls release.
_sources: Dict[int, "Source"] = {}
_tokens = itertools.count(1)
_END = object()
_WAIT = object()  # _next_item: no item yet; the source has arranged to be woken
PENDING = -1  # Source.fill: no data yet (read returns AGENT_SOURCE_PENDING)


def _as_bytes_view(item: Any) -> memoryview:
    """One item of an iterable body as a flat byte view (str is sent as UTF-8)."""
    if isinstance(item, str):
        item = item.encode("utf-8")
    if not isinstance(item, (bytes, bytearray, memoryview)):
        try:
            view = memoryview(item)
        except TypeError:
            raise TypeError(
                f"a body iterable must yield bytes-like objects or str, not {type(item).__name__}"
            ) from None
    else:
        view = memoryview(item)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class Source:
    """A request body read piece by piece. Subclasses implement :meth:`_next_item` (an
    iterator-like pull: a byte view, or ``_END``) or override :meth:`fill`."""

    length: int = -1  # -1: unknown, sent chunked
    rewindable: bool = False

    def __init__(self) -> None:
        self.error: Optional[BaseException] = None  # the first exception of the user's object
        self.rewind_error: Optional[BaseException] = None  # why a retry could not rewind
        self.released = False
        self.bytes_read = 0
        self._pending: Optional[memoryview] = None
        self._offset = 0

    # -- what the C callbacks call -------------------------------------------------------

    def fill(self, addr: int, cap: int) -> int:
        """Copies up to ``cap`` bytes of the body to ``addr``; 0 at the end, ``PENDING``
        when no data is ready yet (only a source that took a waker)."""
        pending = self._pending
        while pending is None:
            item = self._next_item(cap)
            if item is _END:
                return 0
            if item is _WAIT:
                return PENDING
            view = _as_bytes_view(item)
            if len(view):  # an empty item is not the end: skip it
                pending, self._offset = view, 0
                self._pending = pending
        off = self._offset
        k = min(cap, len(pending) - off)
        memoryview((c_char * k).from_address(addr)).cast("B")[:] = pending[off : off + k]
        off += k
        if off == len(pending):
            self._pending = None
        else:
            self._offset = off
        self.bytes_read += k
        return k

    def _next_item(self, cap: int) -> Any:
        raise NotImplementedError

    def rewind(self) -> None:
        raise OSError("this body cannot be rewound")

    def abort(self) -> None:
        """The request is being given up (task cancelled): stop waiting for the producer."""

    def on_release(self) -> None:
        """The library is done with the source (any thread)."""

    # -- registration --------------------------------------------------------------------

    def register(self) -> "ctypes._Pointer[_native.agent_body_source]":
        """Registers the source and returns a pointer to its ``agent_body_source`` for one C
        call. From here on the library owns the registration: it calls ``release`` in every
        case (also when the call fails). Only if the C function is never entered (a ctypes
        argument error) must the caller call :meth:`unregister`."""
        token = next(_tokens)
        self._token = token
        _sources[token] = self
        src = _native.agent_body_source(
            _on_read, _on_rewind if self.rewindable else _NO_REWIND, _on_release,
            self.length, token,
        )
        return ctypes.pointer(src)

    def unregister(self) -> None:
        if _sources.pop(getattr(self, "_token", 0), None) is not None:
            self.released = True


class FileSource(Source):
    """A file-like body: ``readinto`` (binary files: straight into the library's buffer) or
    ``read``. A seekable file is rewound to where it was at the start for a retry, and
    announces its remaining size as ``Content-Length``."""

    def __init__(self, f: Any) -> None:
        super().__init__()
        self.f = f
        self.text = isinstance(f, io.TextIOBase)
        readinto = getattr(f, "readinto", None)
        self._readinto = readinto if callable(readinto) and not self.text else None
        self._read = getattr(f, "read", None)
        self._start: Any = None
        seekable = False
        try:
            seekable = bool(f.seekable()) if hasattr(f, "seekable") else hasattr(f, "seek") and hasattr(f, "tell")
            if seekable:
                self._start = f.tell()
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            seekable = False
        if seekable and not self.text:
            try:
                end = f.seek(0, os.SEEK_END)
                if end is None:  # an object whose seek returns nothing
                    end = f.tell()
                f.seek(self._start)
                self.length = max(0, int(end) - int(self._start))
            except (OSError, ValueError, TypeError, io.UnsupportedOperation):
                self.length = -1
        self.rewindable = seekable

    def fill(self, addr: int, cap: int) -> int:
        if self._readinto is None or self._pending is not None:
            return super().fill(addr, cap)
        n = self._readinto(memoryview((c_char * cap).from_address(addr)).cast("B"))
        if n is None:
            raise BlockingIOError("the body file is non-blocking and had no data (readinto returned None)")
        if not 0 <= n <= cap:
            raise ValueError(f"the body file's readinto returned {n} for a {cap}-byte buffer")
        self.bytes_read += n
        return n

    def _next_item(self, cap: int) -> Any:
        data = self._read(cap)  # type: ignore[misc]
        if data is None:
            raise BlockingIOError("the body file is non-blocking and had no data (read returned None)")
        return data if len(data) else _END

    def rewind(self) -> None:
        self.f.seek(self._start)
        self._pending = None
        self.bytes_read = 0


class IterSource(Source):
    """An iterable of bytes-like (or str) items, sent chunked; cannot be rewound."""

    def __init__(self, iterable: Any) -> None:
        super().__init__()
        self.it = iter(iterable)

    def _next_item(self, cap: int) -> Any:
        return next(self.it, _END)


class AsyncIterSource(Source):
    """An async iterable, sent chunked. ``read`` runs inside a drain of the loop's queue
    (on the loop's thread) and never waits for the producer: with no item at hand it keeps
    a waker, has the loop fetch the next item (``run_coroutine_threadsafe``, not waited
    for) and returns ``AGENT_SOURCE_PENDING``; the fetch's completion, on the loop thread,
    keeps the item (or the end, or the iterator's exception) and wakes the request, which
    makes the queue's descriptor readable again."""

    def __init__(self, aiterable: Any) -> None:
        super().__init__()
        self.ait = aiterable.__aiter__()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._lock = threading.Lock()
        # Guarded by _lock:
        self._cf: Optional["concurrent.futures.Future[Any]"] = None  # the fetch in flight
        self._result: Optional[Tuple[bool, Any]] = None  # (ok, item or exception), not taken yet
        self._waker: Optional[int] = None  # kept by a read that returned pending
        self._aborted = False
        self._closed = False  # released by the library

    async def _anext(self) -> Any:
        try:
            return await self.ait.__anext__()
        except StopAsyncIteration:
            return _END

    def _next_item(self, cap: int) -> Any:
        # Inside the read callback (a drain of the loop's queue, on the loop's thread).
        loop = self.loop
        if loop is None:  # pragma: no cover - bound by the async call before C sees it
            raise RuntimeError("an async iterable body needs an event loop")
        with self._lock:
            result, self._result = self._result, None
            if result is not None:
                ok, value = result
                if ok:
                    return value
                raise value
            if self._aborted:
                raise asyncio.CancelledError()
            waker = lib.agent_body_source_waker()
            if not waker:  # pragma: no cover - only outside a read callback
                raise RuntimeError("agent_body_source_waker() gave no waker")
            # A read before the last waker was woken (a spurious poll) keeps the newest.
            stale, self._waker = self._waker, waker
            fetch = self._cf is None
            if fetch:
                coro = self._anext()
                try:
                    self._cf = asyncio.run_coroutine_threadsafe(coro, loop)
                except BaseException:  # the loop is closed: nobody will produce the item
                    coro.close()
                    self._waker = None
                    lib.agent_body_waker_free(waker)
                    lib.agent_body_waker_free(stale)
                    raise asyncio.CancelledError() from None
        lib.agent_body_waker_free(stale)  # NULL (None) is ignored
        if fetch:
            # Outside the lock: an already finished future runs the callback at once.
            self._cf.add_done_callback(self._fetched)  # type: ignore[union-attr]
        return _WAIT

    def _fetched(self, cf: "concurrent.futures.Future[Any]") -> None:
        # The loop thread (or the thread that cancelled the fetch). Never raises.
        try:
            if cf.cancelled():
                result: Tuple[bool, Any] = (False, asyncio.CancelledError())
            else:
                exc = cf.exception()
                result = (True, cf.result()) if exc is None else (False, exc)
        except BaseException as e:  # pragma: no cover - defensive
            result = (False, e)
        with self._lock:
            if self._cf is cf:
                self._cf = None
            if self._closed:
                return  # the library no longer reads: the item is dropped
            self._result = result
            waker, self._waker = self._waker, None
        lib.agent_body_waker_wake(waker)

    def abort(self) -> None:
        # The loop thread: the awaiting task was cancelled. A pending read is woken by the
        # cancelled fetch, or here when no fetch is in flight.
        with self._lock:
            self._aborted = True
            cf = self._cf
            waker = None
            if cf is None:
                waker, self._waker = self._waker, None
        if cf is not None:
            cf.cancel()
        lib.agent_body_waker_wake(waker)

    def on_release(self) -> None:
        # Any thread. A waker still kept is freed unused; a fetch in flight is cancelled
        # (nobody will take its item).
        with self._lock:
            self._closed = True
            waker, self._waker = self._waker, None
            cf = self._cf
            self._result = None
        lib.agent_body_waker_free(waker)
        loop = self.loop
        if cf is not None and loop is not None and not loop.is_closed():
            cf.cancel()


class IterableBody:
    """An iterable of bytes (``is_async`` False) or an async iterable (True), with its
    length when the caller knows it (sent as ``Content-Length``; -1: chunked). What the
    httpx transports pass for ``request.stream``, whose length httpx may have announced;
    a stream object that also has ``read`` or both iteration protocols is iterated the
    way ``is_async`` says. Fewer bytes than ``length`` fail the request
    (``BODY_SOURCE``)."""

    __slots__ = ("iterable", "length", "is_async")

    def __init__(self, iterable: Any, length: int = -1, is_async: bool = False) -> None:
        self.iterable = iterable
        self.length = length
        self.is_async = is_async


def is_streamed_body(body: Any) -> bool:
    """Whether ``body`` is read piece by piece (a file, an iterable, an async iterable)
    rather than sent whole (bytes-like, str)."""
    if body is None or isinstance(body, (bytes, bytearray, memoryview, str)):
        return False
    if hasattr(body, "__aiter__") or callable(getattr(body, "readinto", None)) or callable(getattr(body, "read", None)):
        return True  # a file (even an mmap, which is bytes-like too) is read, not copied whole
    try:
        memoryview(body)
    except TypeError:
        return True  # an iterable, or something make_source refuses
    return False  # another bytes-like object (array.array, ...): sent whole


def make_source(body: Any, allow_async: bool) -> Source:
    """The source for a file, iterable or (``allow_async``) async iterable body."""
    if isinstance(body, IterableBody):
        src: Source
        if body.is_async:
            if not allow_async:
                raise TypeError("an async iterable body needs an async call")
            src = AsyncIterSource(body.iterable)
        else:
            src = IterSource(body.iterable)
        src.length = body.length
        return src
    if hasattr(body, "__aiter__"):
        if not allow_async:
            raise TypeError(
                "an async iterable body needs an async call (stream_async, request_async, apost, ...)"
            )
        return AsyncIterSource(body)
    if callable(getattr(body, "readinto", None)) or callable(getattr(body, "read", None)):
        return FileSource(body)
    if isinstance(body, (dict,)) or not hasattr(body, "__iter__"):
        raise TypeError(
            "body must be bytes, bytearray, memoryview, str, a file object or an iterable of"
            f" bytes, not {type(body).__name__}"
        )
    return IterSource(body)


def error_for(code: int, source: Optional[Source]) -> BaseException:
    """The exception for a failed call of a request with ``source``: the user's own
    exception when the file or iterator raised one, else the library's error (read on
    this thread, right after the call)."""
    err = _native.error_for(code)
    if source is not None:
        if source.error is not None:
            return source.error
        if source.rewind_error is not None:
            err.__cause__ = source.rewind_error
    return err


def error_for_message(code: int, message: str, source: Optional[Source]) -> BaseException:
    """As :func:`error_for`, for a failure reported with its message (a queue event)."""
    err = _native.error_for(code, message)
    if source is not None:
        if source.error is not None:
            return source.error
        if source.rewind_error is not None:
            err.__cause__ = source.rewind_error
    return err


def error_for_exception(err: BaseException, source: Optional[Source]) -> BaseException:
    """As :func:`error_for`, for an error already raised (by an errcheck)."""
    if source is not None:
        if source.error is not None:
            return source.error
        if source.rewind_error is not None and err.__cause__ is None:
            err.__cause__ = source.rewind_error
    return err


# ---------------------------------------------------------------------------------------
# The C callbacks. They never raise: an exception here would be printed by ctypes and the
# library would see 0 (success) with a garbage length.


def _read(userdata: Optional[int], buf: Optional[int], cap: int, n: Any) -> int:
    try:
        src = _sources.get(userdata or 0)
        if src is None or not buf:
            return 1
        if src.error is not None:
            return 1
        try:
            k = src.fill(buf, cap)
        except BaseException as e:  # the user's exception, even KeyboardInterrupt
            src.error = e
            return 1
        if k == PENDING:
            return _native.SOURCE_PENDING
        n[0] = k
        return 0
    except BaseException:  # pragma: no cover - defensive
        return 1


def _rewind(userdata: Optional[int]) -> int:
    try:
        src = _sources.get(userdata or 0)
        if src is None:
            return 1
        try:
            src.rewind()
        except BaseException as e:
            src.rewind_error = e
            return 1
        return 0
    except BaseException:  # pragma: no cover - defensive
        return 1


def _release(userdata: Optional[int]) -> None:
    try:
        src = _sources.pop(userdata or 0, None)
        if src is not None:
            src.released = True
            src.on_release()
    except BaseException:  # pragma: no cover - defensive
        pass


_on_read = _native.agent_body_read(_read)
_on_rewind = _native.agent_body_rewind(_rewind)
_on_release = _native.agent_body_release(_release)
_NO_REWIND = _native.agent_body_rewind()  # a NULL function pointer: not replayable


def live_sources() -> int:
    """How many sources the library has not released yet (for tests)."""
    return len(_sources)


def _after_fork_in_child() -> None:
    _sources.clear()
