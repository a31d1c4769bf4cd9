"""Streaming responses: the head first, the body piece by piece (``agent_stream``).

:class:`StreamResponse` reads with the blocking ``agent_stream_read``;
:class:`AsyncStreamResponse` through the event loop's queue (``agent_queue_read``, see
``_loop.py``), one read at a time, each started only when the consumer asks for the next
piece (that is the backpressure: until
then the engine does not read the socket).

Every C call on a native stream is made under the stream's lock, because
``agent_stream_free`` must not race another call on the same stream (the agent's
``close()`` frees streams from whatever thread it runs on). A blocking read holds the lock
while it waits, so closing a stream that another thread is reading waits for that read.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import threading
from ctypes import byref, c_char, c_size_t
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Iterator,
    Optional,
    TypeVar,
)

from . import _body, _loop, _native, errors
from ._native import lib
from ._response import Headers, Timings

if TYPE_CHECKING:  # pragma: no cover
    from ._agent import Agent

__all__ = ["StreamResponse", "AsyncStreamResponse"]

_S = TypeVar("_S", bound="_StreamBase")
_VERSIONS = {9: "0.9", 10: "1.0", 11: "1.1", 20: "2", 30: "3"}
_BODILESS = {204, 304}
# Largest buffer read(n) allocates at once when the body's length is unknown.
_BIG_READ = 1 << 20


def _timings(t: Any) -> Timings:
    return Timings(t.queued_us, t.dns_us, t.connect_us, t.tls_us, t.sent_us, t.ttfb_us, t.total_us)


def _writable_view(b: Any) -> memoryview:
    mv = memoryview(b)
    if mv.readonly:
        raise TypeError("readinto() needs a writable buffer (bytearray, memoryview, array, mmap, ...)")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")  # ValueError for a non-contiguous buffer
    return mv


class _StreamBase:
    """The head and the native handle; shared by the blocking and the asyncio forms."""

    status: int
    http_version: str
    headers: Headers
    reused: bool
    url: str
    method: str
    bytes_read: int

    def __init__(self, agent: "Agent", handle: int, method: str, url: str,
                 source: Optional[_body.Source]) -> None:
        self._handle: Optional[int] = handle
        self._lock = threading.Lock()
        self._agent = agent  # keeps the agent (and its native handle) alive while we are
        self._source = source  # the request body, to tell its own exceptions apart
        self._failure: Optional[BaseException] = None  # what ended the stream, raised again
        self._eof = False
        self._closed = False
        status, version, reused, block, t = _native.read_stream_head(handle)
        self.status = status
        self.http_version = _VERSIONS.get(version, str(version))
        self.headers = Headers._from_block(block)
        self.reused = bool(reused)
        self._timings: Any = t
        self.url = url
        self.method = method
        self.bytes_read = 0
        self._trailers: Optional[Headers] = None  # set when the body has ended
        # The announced length, used to read the end as soon as the last byte has come.
        self._length: Optional[int] = None
        if method.upper() != "HEAD" and status >= 200 and status not in _BODILESS:
            cl = self.headers.get("content-length")
            if cl is not None and cl.isdigit():
                self._length = int(cl)

    # -- head ----------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The HTTP version, e.g. ``"1.1"``, or ``"2"`` for HTTP/2 (the same as :attr:`http_version`)."""
        return self.http_version

    @property
    def ok(self) -> bool:
        """True for a status below 400, as requests' ``Response.ok`` (3xx included)."""
        return self.status < 400

    def raise_for_status(self: "_S") -> "_S":
        """Raises :class:`~keepalive_agent.errors.HTTPStatusError` when :attr:`ok` is
        false (status 400 or more), with this response as its ``.response``; else returns
        this response. The stream stays open either way: close it as usual (a ``with``
        block does)."""
        if self.status >= 400:
            raise errors.HTTPStatusError._for(self)  # type: ignore[arg-type]
        return self

    @property
    def timings(self) -> Timings:
        """Timings in microseconds; ``total_us`` is 0 until the body has been read to its end."""
        t = self._timings
        if isinstance(t, Timings):
            return t
        if self._handle is not None and self._lock.acquire(blocking=False):
            try:
                if self._handle is not None:
                    t = _native.stream_timings(self._handle)
            finally:
                self._lock.release()
        t = _timings(t)
        if self._handle is None:
            self._timings = t  # final
        return t

    @property
    def trailers(self) -> Headers:
        """The trailer fields that followed the body (HTTP/2, or a chunked HTTP/1.1
        body), as a read-only :class:`Headers` (case-insensitive, repeated names kept).
        They come after the last byte, so this is empty until the body has been read to
        its end (as ``timings.total_us`` is 0 until then), and stays empty when the
        response had none or the stream was closed or failed before its end."""
        t = self._trailers
        if t is None:
            return Headers()
        return t

    @property
    def closed(self) -> bool:
        """True once the body has been read to its end, the stream failed, or it was closed."""
        return self._handle is None

    def buffered(self) -> int:
        """Bytes the engine holds for this stream that have not been read yet
        (``agent_stream_buffered``): bounded by hyper's read window (256 KiB) plus one
        piece, whatever the body's size. 0 once the body has ended, and while a read is
        in progress in another thread."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            h = self._handle
            return int(lib.agent_stream_buffered(h)) if h is not None else 0
        finally:
            self._lock.release()

    # -- ending (called with self._lock held) ------------------------------------------------

    def _free_locked(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            lib.agent_stream_free(h)

    def _finish_locked(self) -> None:
        """The body has ended: its connection is back in the pool; keep the final timings
        and the trailers (read now: they go with the native stream)."""
        h = self._handle
        if h is not None:
            try:
                self._timings = _timings(_native.stream_timings(h))
                trailers = _native.stream_trailers(h)
                if trailers:
                    self._trailers = Headers(trailers)
            except errors.AgentError:  # pragma: no cover - defensive
                pass
        self._eof = True
        self._free_locked()

    def _fail_locked(self, err: BaseException) -> None:
        """A read failed: the library has dropped the connection; remember why."""
        if self._failure is None:
            self._failure = err
        self._free_locked()

    def _ended(self) -> int:
        """What a read gets once the native stream is gone: 0 at the end, else an error."""
        if self._closed:
            raise ValueError("I/O operation on a closed stream")
        f = self._failure
        if f is not None:
            if isinstance(f, errors.AgentError):
                raise type(f)(f.code, f.message)  # a fresh exception each time
            raise f
        return 0

    def _read_error(self, code: int) -> BaseException:
        return _body.error_for(code, self._source)

    def _close_for_agent(self, wait: bool) -> bool:
        """The agent is closing: free the native stream (aborting it if unfinished). With
        ``wait`` False, gives up (False) when a read holds the stream in another thread."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            if self._handle is not None:
                self._fail_locked(
                    errors.CancelledError(_native.CANCELLED, "the agent was closed while the stream was open")
                )
        finally:
            self._lock.release()
        return True

    def close(self) -> None:
        """Ends the stream. Before the end of the body this aborts the request: the
        connection is closed, never reused, and the request counts as failed in the
        agent's statistics. After the end it does nothing more. Idempotent; waits for a
        read in progress in another thread."""
        with self._lock:
            self._closed = True
            self._free_locked()

    def __del__(self) -> None:
        # Nobody else holds the stream now: free without the lock (abort if unfinished).
        try:
            h = getattr(self, "_handle", None)
            if h is not None:
                self._handle = None
                lib.agent_stream_free(h)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "open" if self._handle is not None else ("ended" if self._eof else "closed")
        return f"<{type(self).__name__} [{self.status}] {state}, {self.bytes_read} bytes read>"


class StreamResponse(_StreamBase):
    """A response whose body is read piece by piece (``Agent.stream``). Use it in a
    ``with`` block, or call :meth:`close`.

    - :meth:`iter_bytes`: pieces of at most ``size`` bytes, as they arrive;
    - :meth:`read`: ``read()`` the rest, ``read(n)`` up to ``n`` bytes (fewer only at the end);
    - :meth:`readinto`: straight into your buffer (no copy in Python), filling it unless
      the body ends first;
    - :attr:`raw`: an :class:`io.RawIOBase` over the body (short reads), e.g. for
      ``io.BufferedReader(r.raw)`` or ``shutil.copyfileobj(r.raw, f)``.

    Reading to the end gives the connection back to the pool (as soon as the last byte
    announced by ``Content-Length`` has been read); :meth:`close` before the end aborts
    the request and closes the connection. One thread at a time.
    """

    def __init__(self, agent: "Agent", handle: int, method: str, url: str,
                 source: Optional[_body.Source]) -> None:
        super().__init__(agent, handle, method, url, source)
        self._raw: Optional[_RawStream] = None
        self._scratch = (c_char * 1)()

    def _read_native(self, addr: int, cap: int) -> int:
        """One ``agent_stream_read`` of at most ``cap`` bytes to ``addr``; 0 at the end."""
        with self._lock:
            h = self._handle
            if h is None:
                return self._ended()
            n = c_size_t()
            code = lib.agent_stream_read(h, addr, cap, byref(n))
            if code != _native.OK:
                err = self._read_error(code)
                self._fail_locked(err)
                raise err
            k = n.value
            if k == 0:
                self._finish_locked()
                return 0
            self.bytes_read += k
            if self._length is not None and self.bytes_read >= self._length:
                # Everything announced has come: read the end now, so that the connection
                # goes back to the pool without waiting for another read or close().
                code = lib.agent_stream_read(h, ctypes.addressof(self._scratch), 1, byref(n))
                if code != _native.OK:
                    self._fail_locked(self._read_error(code))
                elif n.value == 0:
                    self._finish_locked()
                else:  # pragma: no cover - the engine enforces Content-Length
                    self._fail_locked(_native.error_for(_native.PROTOCOL, "body longer than Content-Length"))
            return k

    def _readinto(self, b: Any, fill: bool) -> int:
        mv = _writable_view(b)
        n = mv.nbytes
        if n == 0:
            return 0
        arr = (c_char * n).from_buffer(mv)
        try:
            addr = ctypes.addressof(arr)
            k = self._read_native(addr, n)
            total = k
            while fill and k and total < n:
                k = self._read_native(addr + total, n - total)
                total += k
            return total
        finally:
            del arr
            mv.release()

    def readinto(self, b: Any) -> int:
        """Reads into the writable buffer ``b`` (bytearray, memoryview, array, mmap, ...)
        straight from the engine, until it is full or the body ends; returns the number
        of bytes (0 at the end)."""
        return self._readinto(b, fill=True)

    def readinto1(self, b: Any) -> int:
        """As :meth:`readinto`, but returns after one piece (fewer bytes than ``len(b)``
        whenever that is what has arrived)."""
        return self._readinto(b, fill=False)

    def read(self, n: Optional[int] = -1) -> bytes:
        """``read()``: the rest of the body; ``read(n)``: up to ``n`` bytes, fewer only at
        the end of the body; ``b""`` at the end."""
        if n is None or n < 0:
            return self._read_all()
        if self._length is not None and self._handle is not None:
            n = min(n, max(self._length - self.bytes_read, 0))  # never allocate past the body
        if n == 0:
            return b""
        if n <= _BIG_READ:
            buf = bytearray(n)
            k = self.readinto(buf)
            del buf[k:]
            return bytes(buf)
        parts = []  # a large n with no known length: gathered piece by piece
        got = 0
        buf = bytearray(_BIG_READ)
        view = memoryview(buf)
        try:
            while got < n:
                k = self.readinto1(view[: min(_BIG_READ, n - got)])
                if not k:
                    break
                parts.append(bytes(view[:k]))
                got += k
        finally:
            view.release()
        return b"".join(parts)

    def read1(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes of one piece, as it arrived (``b""`` at the end)."""
        if n is None or n < 0:
            n = 65536
        if n == 0:
            return b""
        buf = bytearray(n)
        k = self.readinto1(buf)
        del buf[k:]
        return bytes(buf)

    def _read_all(self) -> bytes:
        parts = []
        if self._length is not None and self._handle is not None:
            remaining = self._length - self.bytes_read
            if remaining > 0:
                buf = bytearray(remaining)
                k = self.readinto(buf)
                del buf[k:]
                parts.append(bytes(buf))
        if self._handle is not None:  # no length, or the end not read yet
            parts.extend(self.iter_bytes(65536))
        else:
            self._ended()  # the failure that ended the stream, if any
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def iter_bytes(self, size: int = 65536) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes, each yielded as soon as it has
        arrived (not waiting to fill ``size``)."""
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        buf = bytearray(size)
        arr = (c_char * size).from_buffer(buf)
        addr = ctypes.addressof(arr)
        view = memoryview(buf)
        try:
            while True:
                k = self._read_native(addr, size)
                if not k:
                    return
                yield bytes(view[:k])
        finally:
            view.release()
            del arr

    @property
    def raw(self) -> "_RawStream":
        """The body as a readable :class:`io.RawIOBase` (``readinto`` reads one piece)."""
        if self._raw is None:
            self._raw = _RawStream(self)
        return self._raw

    def __enter__(self) -> "StreamResponse":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _RawStream(io.RawIOBase):
    """``StreamResponse.raw``: the body as a raw binary file (short reads)."""

    def __init__(self, resp: StreamResponse) -> None:
        super().__init__()
        self._resp = resp

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        return self._resp.readinto1(b)

    def readall(self) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        return self._resp.read()

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._resp.close()


# ---------------------------------------------------------------------------------------
# asyncio: heads and reads go through the event loop's queue (see _loop.py); each piece
# comes back as an AGENT_EVENT_DATA event, settled on the loop's thread.


class AsyncStreamResponse(_StreamBase):
    """A response whose body is read piece by piece without blocking the event loop
    (``Agent.stream_async``). Use it in an ``async with`` block, or ``await aclose()``.

    - ``async for piece in r.aiter_bytes()`` (or ``async for piece in r``): the pieces as
      the engine delivers them;
    - ``await r.aread()``: the rest of the body.

    Each piece is read only when asked for, one read at a time: a consumer that stops
    asking stops the engine reading the socket. Cancelling a task awaiting a piece closes
    the stream (the request is aborted).
    """

    def __init__(self, agent: "Agent", handle: int, method: str, url: str,
                 source: Optional[_body.Source]) -> None:
        super().__init__(agent, handle, method, url, source)
        self._reading = False

    def _on_data(self, fut: "asyncio.Future[bytes]", code: int, data: int, length: int, message: int) -> None:
        """The AGENT_EVENT_DATA of this stream's read (on the loop's thread, in a drain).
        ``data`` stays valid until the stream's next read or its free, which the lock keeps
        off while the piece is copied."""
        if fut.done():  # the read was cancelled: the stream is freed already
            return
        if code != _native.OK:
            fut.set_exception(_loop.event_error(code, message))
            return
        with self._lock:
            if self._handle is None:  # freed meanwhile (the agent closed): data is gone
                err: Optional[BaseException] = self._failure or errors.CancelledError(
                    _native.CANCELLED, "the stream was closed while a read was in flight"
                )
                piece = None
            else:
                err = None
                piece = ctypes.string_at(data, length) if length else b""
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(piece)  # type: ignore[arg-type]

    async def _next_piece(self) -> bytes:
        if self._reading:
            raise RuntimeError("another read of this stream is in progress (one read at a time)")
        loop = asyncio.get_running_loop()
        d = _loop.driver_for(loop)
        fut: "asyncio.Future[bytes]" = loop.create_future()
        token = d.token()
        with self._lock:
            h = self._handle
            if h is None:
                self._ended()
                return b""
            code = lib.agent_queue_read(d.q, h, token)
            if code != _native.OK:  # no event will come
                err = self._read_error(code)
                self._fail_locked(err)
                raise err
            d.entries[token] = (fut, self, None)
        d.watch(loop)
        self._reading = True
        try:
            piece = await fut
        except asyncio.CancelledError:
            # The task was cancelled: what the read brings is lost, so the stream cannot
            # go on. Freeing it aborts the request; the read completes as cancelled.
            with self._lock:
                self._fail_locked(errors.CancelledError(
                    _native.CANCELLED, "a read of this stream was cancelled; the stream was closed"
                ))
            raise
        except errors.AgentError as e:
            err = _body.error_for_exception(e, self._source)
            with self._lock:
                self._fail_locked(err)
            if err is e:
                raise
            failure: Optional[BaseException] = err
        else:
            failure = None
        finally:
            self._reading = False
        if failure is not None:
            raise failure  # the body file's or iterator's own exception, as it was
        if not piece:
            with self._lock:
                self._finish_locked()
        else:
            self.bytes_read += len(piece)
        return piece

    async def aiter_bytes(self, size: Optional[int] = None) -> AsyncIterator[bytes]:
        """The body piece by piece, as the engine delivers them (at most ``size`` bytes
        each when given)."""
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        while True:
            piece = await self._next_piece()
            if not piece:
                return
            if size is None or len(piece) <= size:
                yield piece
            else:
                for i in range(0, len(piece), size):
                    yield piece[i : i + size]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.aiter_bytes()

    async def aread(self) -> bytes:
        """The rest of the body (``b""`` at the end)."""
        parts = []
        while True:
            piece = await self._next_piece()
            if not piece:
                break
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        """As :meth:`close`; when every byte announced by ``Content-Length`` has been read,
        reads the end first, so that the connection goes back to the pool."""
        if (
            self._handle is not None
            and not self._closed
            and not self._reading
            and self._length is not None
            and self.bytes_read >= self._length
        ):
            try:
                await self._next_piece()
            except Exception:
                pass
        self.close()

    async def __aenter__(self) -> "AsyncStreamResponse":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
