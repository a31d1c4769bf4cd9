"""Agent: a keep-alive HTTP/1.1 and HTTP/2 client over the native library (blocking and asyncio)."""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import json as _json
import logging
import math
import os
import re
import struct
import threading
import weakref
from ctypes import byref, c_size_t, c_uint32, c_void_p
from typing import (
    IO,
    Any,
    AsyncIterable,
    Dict,
    Generator,
    Iterable,
    List,
    Mapping,
    Optional,
    Tuple,
    Union,
)

from . import _body, _events, _loop, _native, errors
from ._native import lib
from ._response import Headers, PoolStats, Response, Timings
from ._stream import AsyncStreamResponse, StreamResponse

__all__ = ["Agent", "HeadersArg", "BodyArg"]

HeadersArg = Union[Mapping[str, str], Iterable[Tuple[str, str]], None]
"""Request headers: a mapping, or ``(name, value)`` pairs (repeated names allowed)."""
BodyArg = Union[bytes, bytearray, memoryview, str, IO[bytes], IO[str], Iterable[Union[bytes, str]], None]
"""A request body: bytes-like or ``str`` (sent as UTF-8), sent whole; or read piece by piece:
a file object (``readinto``/``read``; a seekable one is sent with ``Content-Length`` and can
be rewound for a retry) or an iterable of bytes-like/str items (sent chunked, not
rewindable). The async calls also take an async iterable."""
AsyncBodyArg = Union[BodyArg, AsyncIterable[Union[bytes, str]]]

_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
# The library's bounds (agent_limit), so that options are refused here as the library would.
_MAX_MSECS = _native.limit("max_msecs")
_MAX_KEEP_ALIVE_MSECS = _native.limit("max_keep_alive_msecs")
_MAX_KEEP_ALIVE_PROBES = _native.limit("max_keep_alive_probes")
_MAX_SOCKETS = _native.limit("max_sockets")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls except tab
_BAD_URL = re.compile(r"[\x00-\x20\x7f]")
_VERSIONS = {9: "0.9", 10: "1.0", 11: "1.1", 20: "2", 30: "3"}
_Future = asyncio.Future

# ---------------------------------------------------------------------------------------
# Argument checking and encoding: everything is refused here, before C sees it.


def _invalid(message: str) -> errors.InvalidArgumentError:
    return errors.InvalidArgumentError(_native.INVALID_ARGUMENT, message)


def _text(what: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        try:
            bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(f"{what} is not valid UTF-8") from None
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


# Methods and URLs already checked and encoded (str -> bytes): a client sends a few of them
# many times. Bounded, since any token or URL is allowed (long URLs are not kept).
_METHODS: Dict[str, bytes] = {}
_URLS: Dict[str, bytes] = {}
_URLS_MAX = 256
_URL_KEPT_LEN = 1024


def _encode_method(method: Any) -> bytes:
    if type(method) is str:
        m = _METHODS.get(method)
        if m is not None:
            return m
    m = _text("method", method)
    if not _TOKEN.fullmatch(m.decode("utf-8")):
        raise _invalid(f"method {method!r} is not an HTTP token")
    if type(method) is str and len(_METHODS) < 64:
        _METHODS[method] = m
    return m


def _encode_url(url: Any) -> bytes:
    if type(url) is str and url.isascii() and url.isprintable() and " " not in url:
        u = url.encode("ascii")  # the usual case: printable ASCII has no byte to refuse
        if len(_URLS) < _URLS_MAX and len(url) <= _URL_KEPT_LEN:
            _URLS[url] = u
        return u
    if not isinstance(url, str):
        raise TypeError(f"url must be str, not {type(url).__name__}")
    if _BAD_URL.search(url):
        raise errors.InvalidURLError(
            _native.INVALID_URL, f"url {url[:80]!r} contains whitespace or a control character"
        )
    return url.encode("utf-8")


def _header_pairs(headers: HeadersArg) -> List[Tuple[Any, Any]]:
    if headers is None:
        return []
    if isinstance(headers, Headers):
        return headers.multi_items()
    if isinstance(headers, Mapping):
        return list(headers.items())
    if isinstance(headers, (str, bytes)):
        raise TypeError("headers must be a mapping or (name, value) pairs, not a string")
    pairs = []
    for item in headers:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"headers: expected (name, value) pairs, got {item!r}")
        pairs.append((item[0], item[1]))
    return pairs


def _encode_headers(pairs: List[Tuple[Any, Any]]) -> Tuple[Optional[ctypes.Array], int]:
    if not pairs:
        return None, 0
    encoded = []
    for name, value in pairs:
        nb = _text("header name", name)
        if not _TOKEN.fullmatch(nb.decode("utf-8")):
            raise _invalid(f"header name {name!r} is not an HTTP token")
        vb = _text(f"header {nb.decode()!s} value", value)
        if _BAD_VALUE.search(vb.decode("utf-8")):
            raise _invalid(
                f"header {nb.decode()}: value contains CR, LF, NUL or another control character"
            )
        encoded.append(_native.agent_header(nb, vb))
    # The array keeps references to the bytes objects while it lives (ctypes _objects).
    return (_native.agent_header * len(encoded))(*encoded), len(encoded)


def _encode_body(body: BodyArg) -> Optional[bytes]:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body or None
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body) or None
    if isinstance(body, str):
        return body.encode("utf-8") or None
    try:  # another object with the buffer protocol (array.array, ...)
        view = memoryview(body)
    except TypeError:
        raise TypeError(f"body must be bytes, bytearray, memoryview or str, not {type(body).__name__}") from None
    return view.tobytes() or None


def _timeout_msecs(timeout: Optional[float]) -> int:
    if timeout is None:
        return 0
    if type(timeout) is float and 0.001 <= timeout <= 86400.0:  # the usual case
        return math.ceil(timeout * 1000)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise _invalid(f"timeout must be > 0 seconds (None = no deadline), got {timeout!r}")
    ms = max(1, math.ceil(timeout * 1000))
    if ms > _MAX_MSECS:
        raise _invalid(f"timeout {timeout!r} s is too large (at most {_MAX_MSECS / 1000} s)")
    return ms


class _Prepared:
    __slots__ = ("method", "url", "headers", "n_headers", "body", "body_len", "timeout", "source")

    def __init__(
        self,
        method: Any,
        url: Any,
        headers: HeadersArg,
        body: Any,
        timeout: Optional[float],
        json: Any,
        allow_async: bool = False,
    ) -> None:
        self.method = _encode_method(method)
        self.url = _encode_url(url)
        pairs = _header_pairs(headers)
        if json is not None:
            if body is not None:
                raise _invalid("give body or json, not both")
            body = _json.dumps(json, separators=(",", ":")).encode("utf-8")
            if not any(isinstance(n, (str, bytes)) and _lower(n) == "content-type" for n, _ in pairs):
                pairs.append(("Content-Type", "application/json"))
        self.headers, self.n_headers = _encode_headers(pairs)
        self.timeout = _timeout_msecs(timeout)
        # A file or an iterable is read piece by piece through an agent_body_source.
        self.source: Optional[_body.Source] = None
        if _body.is_streamed_body(body):
            self.source = _body.make_source(body, allow_async)
            self.body = None
        else:
            self.body = _encode_body(body)
        self.body_len = len(self.body) if self.body else 0


def _lower(name: Union[str, bytes]) -> str:
    return (name.decode("latin-1") if isinstance(name, bytes) else name).lower()


# Per-request native calls without the errcheck wrapper of _native and without argtypes
# (see _native.bare: arguments go as ctypes objects of their exact C type, bytes or None):
# the codes are checked right here.
_request_raw = _native.bare("agent_request")
_submit_raw = _native.bare("agent_queue_submit")
# Reading and freeing a response the caller owns touch only its memory: they neither block
# nor call back, so they keep the GIL. Releasing it around each of them gave 64 threads
# three GIL hand-offs per request instead of one (the request itself).
_response_read_raw = _native.bare("agent_response_read", hold_gil=True)
_response_peek_raw = _native.bare("agent_response_peek", hold_gil=True)
_copy_body_raw = _native.bare("agent_response_copy_body", hold_gil=True)
_new_bytes = _native.new_bytes
_BYTES_DATA = _native.BYTES_DATA
_response_free = _native.bare("agent_response_free", hold_gil=True)
_response_trailer_count = _native.bare("agent_response_trailer_count", hold_gil=True)
_SIZE_0 = _native.SIZE_0
_UINT32_0 = _native.UINT32_0
_memory = _native.memory
_copy = _native.copy_out

# agent_response_parts: status u16, version u32, reused bool, body, body_len, headers,
# headers_len, header_count, then agent_timings (seven u64).
_PARTS = struct.Struct("=H2xI?7xQQQQQ7Q")
assert _PARTS.size == ctypes.sizeof(_native.agent_response_parts), "agent_response_parts layout"
_unpack_parts = _PARTS.unpack_from


def parts_buffers() -> Tuple[Any, memoryview]:
    """An ``agent_response_parts`` to read responses into: ``byref`` to it (for
    ``agent_response_read``) and a byte view of it (for ``_unpack_parts``)."""
    parts = _native.agent_response_parts()
    return byref(parts), memoryview(parts).cast("B")


class _Scratch(threading.local):
    """Per-thread out-parameters, made once per thread rather than once per request."""

    def __init__(self) -> None:
        out = c_void_p()  # agent_request's response, passed on as it is
        # One tuple: each attribute of a threading.local costs a lookup of its own.
        self.bufs = (out, byref(out)) + parts_buffers()


_scratch = _Scratch()
_new_response = Response.__new__
_new_headers = Headers.__new__


def make_response_from_handle(
    handle: c_void_p, method: str, url: str, parts_ref: Any, parts_view: memoryview
) -> Response:
    """Copies a native response (``handle``: a ``c_void_p``, as the bare functions take
    it) into a Response and frees the native one: one ``agent_response_peek`` (into the
    caller's :func:`parts_buffers`), one copy of the header block, one of the body (a body
    that arrived in pieces is copied by the engine straight into its ``bytes``:
    :func:`_body_in_pieces`); the headers are parsed on first access
    (:meth:`Headers._from_block`, made inline here).

    Trailers can only follow an HTTP/2 body or a chunked HTTP/1.1 one (which has a
    ``transfer-encoding`` header): only those responses cost one call more
    (``agent_response_trailer_count``), and one per trailer line when there are some."""
    trailers = None
    try:
        code = _response_peek_raw(handle, parts_ref)
        if code:
            raise _native.error_for(code)
        v = _unpack_parts(parts_view)
        if not v[3] and v[4]:
            # The body arrived in pieces: copied once, straight into the bytes object.
            body = _body_in_pieces(handle, v[4], parts_ref, parts_view)
        elif _memory is not None:
            a = v[3]
            body = _memory[a:a + v[4]]
        else:  # pragma: no cover - 32-bit
            body = _copy(v[3], v[4])
        if _memory is not None:
            a = v[5]
            block = _memory[a:a + v[6]]
        else:  # pragma: no cover - 32-bit
            block = _copy(v[5], v[6])
        # find, not ``in``: ``bytes in bytes`` first tries the operand as an int and
        # raises and clears a TypeError, which costs twice the search.
        if v[1] >= 20 or block.find(b"transfer-encoding:") >= 0:
            n = _response_trailer_count(handle)
            if n:
                trailers = _native.response_trailers(handle.value, n)
    finally:
        _response_free(handle)
    headers = _new_headers(Headers)
    headers._raw = block
    r = _new_response(Response)
    r.status = v[0]
    version = v[1]
    r.http_version = _VERSIONS.get(version) or str(version)
    r.headers = headers
    r.body = body
    r.reused = v[2]
    r._timings = v  # the timings are its last seven values (Response.timings)
    r.url = url
    r.method = method
    r._trailers = trailers
    return r


def _body_in_pieces(handle: c_void_p, n: int, parts_ref: Any, parts_view: memoryview) -> bytes:
    """The ``n`` bytes of a body that arrived in pieces: copied by the engine straight into
    a new bytes object (``agent_response_copy_body``), where the interpreter allows it;
    otherwise joined by the engine (``agent_response_read``) and copied out."""
    if _new_bytes is not None:
        body = _new_bytes(None, n)
        code = _copy_body_raw(handle, _SIZE_0, c_void_p(id(body) + _BYTES_DATA), c_size_t(n), None)
        if code:
            raise _native.error_for(code)
        return body  # type: ignore[no-any-return]
    code = _response_read_raw(handle, parts_ref)  # pragma: no cover - other interpreters
    if code:  # pragma: no cover
        raise _native.error_for(code)
    v = _unpack_parts(parts_view)  # pragma: no cover
    return _copy(v[3], v[4])  # pragma: no cover


# [queue events drained, events that found their future] -- for tests (SPEC §6.30).
_callback_counts = _loop.counts


def _whole_response(s: Any, body: bytes) -> Response:
    """A complete Response from a stream read to its end."""
    return Response(
        status=s.status,
        http_version=s.http_version,
        headers=s.headers,
        body=body,
        reused=s.reused,
        timings=s.timings,
        url=s.url,
        method=s.method,
        trailers=s.trailers,
    )


class _AsyncStreamContext:
    """What ``Agent.stream_async`` returns: an async context manager (``async with``)
    that is also awaitable. Nothing is sent before it is entered or awaited."""

    __slots__ = ("_agent", "_prepared", "_args", "_resp")

    def __init__(self, agent: "Agent", prepared: Optional[_Prepared], method: str, url: str,
                 headers: HeadersArg = None, body: Any = None, timeout: Optional[float] = None) -> None:
        self._agent = agent
        self._prepared = prepared
        self._args = (method, url, headers, body, timeout)
        self._resp: Optional[AsyncStreamResponse] = None

    async def _open(self) -> AsyncStreamResponse:
        method, url, headers, body, timeout = self._args
        p = self._prepared
        if p is None:
            p = _Prepared(method, url, headers, body, timeout, None, allow_async=True)
        self._prepared = None
        return await self._agent._open_stream_async(p, method, url)

    def __await__(self) -> Generator[Any, None, AsyncStreamResponse]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncStreamResponse:
        self._resp = await self._open()
        return self._resp

    async def __aexit__(self, *exc: Any) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            await resp.aclose()


# ---------------------------------------------------------------------------------------
# Live agents: closed at interpreter exit (so that nothing runs during finalization)
# and given fresh locks in a forked child.

_live: "weakref.WeakSet[Agent]" = weakref.WeakSet()
# Event callbacks of agents left unfreed at exit (a call still running): kept for good.
_leaked_callbacks: List[Any] = []


def _close_all_at_exit() -> None:
    for agent in list(_live):
        try:
            agent._close(wait_for_users=False)
        except Exception:
            pass


def _after_fork_in_child() -> None:
    # Another thread may have held one of these locks when the process forked; the child
    # has only this thread, so nobody else uses them now.
    for agent in list(_live):
        agent._cond = threading.Condition(threading.Lock())
        agent._users = []
        for s in list(agent._streams):
            s._lock = threading.Lock()
    _loop.after_fork_in_child()
    _body._after_fork_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------------------
# Option checking


def _opt_int(name: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise errors.InvalidOptionError(
            _native.INVALID_OPTION, f"{name} = {value} is out of range (0..={limit})"
        )
    return value


def _opt_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def _opt_str(name: str, value: Any) -> bytes:
    """A text option (C string): UTF-8, no NUL (C would cut it there)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    if "\x00" in value:
        raise errors.InvalidOptionError(_native.INVALID_OPTION, f"{name} contains NUL")
    return value.encode("utf-8")


def _opt_str_list(name: str, value: Any) -> List[bytes]:
    """A str, or a list/tuple of str: one encoded item each."""
    if isinstance(value, str):
        return [_opt_str(name, value)]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a str or a list of str, not {type(value).__name__}")
    return [_opt_str(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _opt_pem(name: str, value: Any) -> bytes:
    """PEM given in memory: bytes-like, or str (UTF-8)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{name} must be bytes or str, not {type(value).__name__}")


def _opt_path(name: str, value: Any) -> bytes:
    """A file path: str or os.PathLike (one giving bytes is decoded as the file system does)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, not {type(value).__name__}")
    path = os.fsdecode(os.fspath(value))
    if "\x00" in path:
        raise errors.InvalidOptionError(_native.INVALID_OPTION, f"{name} contains NUL")
    return path.encode("utf-8", "surrogateescape")



# Timeouts (seconds, float) already turned into their uint32_t argument; bounded.
_TIMEOUTS: Dict[float, Any] = {}
_size_param = c_size_t.from_param
_uint32_param = c_uint32.from_param


def _size_arg(n: int) -> Any:
    """A size_t argument for the bare functions."""
    return _size_param(n) if n else _SIZE_0


def _msecs_arg(ms: int) -> Any:
    """A uint32_t argument (milliseconds) for the bare functions."""
    return _uint32_param(ms) if ms else _UINT32_0


def _plain_args(
    method: Any, url: Any, body: Optional[bytes], timeout: Optional[float]
) -> Tuple[Any, ...]:
    """The C arguments (method, url, timeout, body, body length) of a request without
    headers and with bytes (or no) body, as the bare functions take them."""
    m = _METHODS.get(method) if type(method) is str else None
    if m is None:
        m = _encode_method(method)
    u = _URLS.get(url) if type(url) is str else None
    if u is None:
        u = _encode_url(url)
    if timeout is None:
        t = _UINT32_0
    else:
        t = _TIMEOUTS.get(timeout) if type(timeout) is float else None
        if t is None:
            t = _msecs_arg(_timeout_msecs(timeout))
            if type(timeout) is float and len(_TIMEOUTS) < 64:
                _TIMEOUTS[timeout] = t
    if body:
        return m, u, t, body, _size_param(len(body))
    return m, u, t, None, _SIZE_0


class Agent:
    """An HTTP/1.1 and HTTP/2 client with a keep-alive connection pool (one native ``agent``).

    Every option of the C options builder is a keyword argument (SPEC §2)::

        keep_alive=None               None = on; False = off (always). The process switch
                                      KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED (or its alias
                                      AWS_NODEJS_CONNECTION_REUSE_ENABLED) = false/0 turns
                                      reuse off even with keep_alive=True (SPEC §3); read
                                      back with keep_alive, keep_alive_source and
                                      keep_alive_describe()
        ignore_environment=False      True: that process switch does not apply to this agent
                                      (the rare client that must keep reuse on)
        keep_alive_msecs=1000         TCP keep-alive probe delay (0 = default)
        keep_alive_interval_msecs=0   TCP_KEEPINTVL (0 = OS default)
        keep_alive_probes=0           TCP_KEEPCNT, 1..127 (0 = OS default)
        max_sockets=0                 connections per origin (0 = unlimited)
        max_total_sockets=0           connections across origins (0 = unlimited)
        max_free_sockets=256          idle connections kept per origin
        scheduling="lifo"             "lifo" or "fifo": which idle connection is reused
        free_socket_timeout_msecs=4000  idle connections close after this
        keep_alive_timeout_buffer_msecs=1000  subtracted from Keep-Alive: timeout hints
        max_keep_alive_timeout_msecs=600000   cap on those hints
        max_socket_lifetime_msecs=0   connections older than this are not reused (0 = none)
        connect_timeout_msecs=10000   DNS + TCP + TLS
        headers_timeout_msecs=300000  request sent -> response head complete
        body_timeout_msecs=300000     longest gap between body chunks
        retry_stale=True              retry idempotent requests once on a stale connection
        max_response_bytes=0          larger bodies fail (0 = unlimited)
        ca_pem=None                   extra trust anchors (PEM bytes or str)
        ca_file=None                  extra trust anchors from a PEM file
        use_system_roots=True         trust the platform's CA store
        danger_accept_invalid_certs=False   tests only: accept any certificate
        user_agent=None               default User-Agent (None = keepalive-agent/<version>)
        proxy=None                    proxy URL for both schemes, "http://[user:pw@]host:port"
                                      or "https://..." (TLS to the proxy; default port
                                      1080); "" = no proxy; None = as the environment says
        no_proxy=None                 hosts that bypass the proxy: "a.example,10.0.0.0/8,::1"
                                      or a list of entries (names match their subdomains,
                                      IPs, CIDRs, "*" = all); None = NO_PROXY/no_proxy
        proxy_from_env=True           read http_proxy (lower case only), https_proxy,
                                      HTTPS_PROXY, all_proxy, ALL_PROXY, no_proxy, NO_PROXY
                                      once, now (as curl); proxy/no_proxy win over them
        resolve=None                  name overrides as curl's --resolve: "host:port:addr"
                                      or "host:port:addr1,addr2" (IPv6 plain or in []),
                                      one str or a list of them
        dns_cache_msecs=60000         how long looked-up addresses are reused (0 = never)
        happy_eyeballs_delay_msecs=250  next address tried after this (RFC 8305)
        client_cert_pem=None          client certificate chain for mutual TLS (PEM bytes/str)
        client_cert_file=None         ... or from a PEM file
        client_key_pem=None           its private key (PKCS#8, PKCS#1 or SEC1 PEM bytes/str)
        client_key_file=None          ... or from a PEM file (a certificate needs a key and
                                      the reverse)
        http_version="http1"          "http1": HTTP/1.1 only; "auto": over TLS, offer h2 and
                                      http/1.1 by ALPN and let the server choose (plain
                                      http stays 1.1); "http2": h2 over TLS only (a server
                                      without h2 fails the handshake; plain http stays
                                      1.1); "h2c-prior-knowledge": HTTP/2 on plain http
                                      too, without an upgrade (h2 by ALPN over TLS). With
                                      HTTP/2 the requests to one origin share one
                                      connection, as many at once as the server allows
                                      (then another, within max_sockets). http1 is the
                                      default: HTTP/2 costs about 2.5x the CPU of HTTP/1.1
                                      per request one at a time; it pays when many
                                      requests run at once to one origin
        events=None                   events from inside (connecting, TLS, requests sent,
                                      reuse, retries, closes) as DEBUG records of
                                      logging.getLogger("keepalive_agent"); None = on when
                                      that logger is enabled for DEBUG now, at creation;
                                      True = on; False = off (no callback at all)
        event_mask=None               which events: an int of 1 << kind bits or a list of
                                      names from keepalive_agent.EVENT_KINDS (None = all)
        event_headers=False           request_sent / response_head records carry the
                                      headers (record.headers; credentials redacted)

    Bad values raise :class:`~keepalive_agent.errors.InvalidOptionError` (a ``ValueError``)
    or ``TypeError`` here, never at the first request.

    One agent may be shared by any number of threads; ctypes releases the GIL while a
    request runs. Close it with :meth:`close` or a ``with`` block (idempotent; in-flight
    async requests then fail with :class:`~keepalive_agent.errors.CancelledError`).
    """

    def __init__(
        self,
        *,
        keep_alive: Optional[bool] = None,
        keep_alive_msecs: int = 1000,
        keep_alive_interval_msecs: int = 0,
        keep_alive_probes: int = 0,
        max_sockets: int = 0,
        max_total_sockets: int = 0,
        max_free_sockets: int = 256,
        scheduling: str = "lifo",
        free_socket_timeout_msecs: int = 4000,
        keep_alive_timeout_buffer_msecs: int = 1000,
        max_keep_alive_timeout_msecs: int = 600000,
        max_socket_lifetime_msecs: int = 0,
        connect_timeout_msecs: int = 10000,
        headers_timeout_msecs: int = 300000,
        body_timeout_msecs: int = 300000,
        retry_stale: bool = True,
        max_response_bytes: int = 0,
        ca_pem: Union[bytes, str, None] = None,
        ca_file: Union[str, "os.PathLike[str]", None] = None,
        use_system_roots: bool = True,
        danger_accept_invalid_certs: bool = False,
        user_agent: Optional[str] = None,
        proxy: Optional[str] = None,
        no_proxy: Union[str, List[str], Tuple[str, ...], None] = None,
        proxy_from_env: bool = True,
        resolve: Union[str, List[str], Tuple[str, ...], None] = None,
        dns_cache_msecs: int = 60000,
        happy_eyeballs_delay_msecs: int = 250,
        client_cert_pem: Union[bytes, str, None] = None,
        client_cert_file: Union[str, "os.PathLike[str]", None] = None,
        client_key_pem: Union[bytes, str, None] = None,
        client_key_file: Union[str, "os.PathLike[str]", None] = None,
        http_version: str = "http1",
        ignore_environment: bool = False,
        events: Optional[bool] = None,
        event_mask: _events.EventMaskArg = None,
        event_headers: bool = False,
    ) -> None:
        # The keywords as given (before anything else is a local): what another agent with
        # the same options is made from (the requests adapter's one agent per proxy).
        options = dict(locals())
        del options["self"]
        self._handle: Optional[int] = None  # first, for a __del__ after a failed __init__
        self._handle_arg: Any = None  # the same, as the bare functions take it
        # The C event callback, when events are on: it must outlive the native agent.
        self._event_callback: Any = None
        self._options: Dict[str, Any] = options
        self._cond = threading.Condition(threading.Lock())
        # One item per native call in progress. list.append and list.pop are atomic under
        # the GIL, so a request takes no lock: a call appends, then reads the handle; close()
        # clears the handle, then waits for the list to be empty (see _release).
        self._users: List[None] = []
        # Open streams, freed by close() (agent_free would wait up to 5 s for each).
        # Added to under _cond only, while the agent is open.
        self._streams: "weakref.WeakSet[Any]" = weakref.WeakSet()

        # Check and encode everything before any native object exists.
        u32_options = [  # (name, value, the library's bound)
            ("keep_alive_msecs", keep_alive_msecs, _MAX_KEEP_ALIVE_MSECS),
            ("keep_alive_interval_msecs", keep_alive_interval_msecs, _MAX_KEEP_ALIVE_MSECS),
            ("keep_alive_probes", keep_alive_probes, _MAX_KEEP_ALIVE_PROBES),
            ("max_sockets", max_sockets, _MAX_SOCKETS),
            ("max_total_sockets", max_total_sockets, _MAX_SOCKETS),
            ("max_free_sockets", max_free_sockets, _MAX_SOCKETS),
            ("free_socket_timeout_msecs", free_socket_timeout_msecs, _MAX_MSECS),
            ("keep_alive_timeout_buffer_msecs", keep_alive_timeout_buffer_msecs, _MAX_MSECS),
            ("max_keep_alive_timeout_msecs", max_keep_alive_timeout_msecs, _MAX_MSECS),
            ("max_socket_lifetime_msecs", max_socket_lifetime_msecs, _MAX_MSECS),
            ("connect_timeout_msecs", connect_timeout_msecs, _MAX_MSECS),
            ("headers_timeout_msecs", headers_timeout_msecs, _MAX_MSECS),
            ("body_timeout_msecs", body_timeout_msecs, _MAX_MSECS),
            ("dns_cache_msecs", dns_cache_msecs, _MAX_MSECS),
            ("happy_eyeballs_delay_msecs", happy_eyeballs_delay_msecs, _MAX_MSECS),
        ]
        for name, value, limit in u32_options:
            _opt_int(name, value, limit)
        _opt_int("max_response_bytes", max_response_bytes, _U64_MAX)
        if keep_alive is not None:
            _opt_bool("keep_alive", keep_alive)
        _opt_bool("retry_stale", retry_stale)
        _opt_bool("use_system_roots", use_system_roots)
        _opt_bool("danger_accept_invalid_certs", danger_accept_invalid_certs)
        _opt_bool("proxy_from_env", proxy_from_env)
        _opt_bool("ignore_environment", ignore_environment)
        if events is not None:
            _opt_bool("events", events)
        _opt_bool("event_headers", event_headers)
        mask = _events.event_mask(event_mask, event_headers)
        if events is None:
            events = _events.logger.isEnabledFor(logging.DEBUG)
        if not isinstance(scheduling, str):
            raise TypeError(f"scheduling must be 'lifo' or 'fifo', not {type(scheduling).__name__}")
        sched = _native.SCHEDULING.get(scheduling.lower())
        if sched is None:
            raise errors.InvalidOptionError(
                _native.INVALID_OPTION, f"scheduling = {scheduling!r}: expected 'lifo' or 'fifo'"
            )
        if not isinstance(http_version, str):
            raise TypeError(f"http_version must be str, not {type(http_version).__name__}")
        hv = _native.HTTP_VERSIONS.get(http_version.lower())
        if hv is None:
            raise errors.InvalidOptionError(
                _native.INVALID_OPTION,
                f"http_version = {http_version!r}: expected one of "
                + ", ".join(repr(k) for k in _native.HTTP_VERSIONS),
            )
        pem = None if ca_pem is None else _opt_pem("ca_pem", ca_pem)
        ca_path = None if ca_file is None else _opt_path("ca_file", ca_file)
        # PEM blobs and files of mutual TLS, by the name of their setter.
        pems = [(n, _opt_pem(n, v)) for n, v in (("client_cert_pem", client_cert_pem),
                                                  ("client_key_pem", client_key_pem)) if v is not None]
        paths = [(n, _opt_path(n, v)) for n, v in (("client_cert_file", client_cert_file),
                                                    ("client_key_file", client_key_file)) if v is not None]
        proxy_b = None if proxy is None else _opt_str("proxy", proxy)
        no_proxy_b = None if no_proxy is None else b",".join(_opt_str_list("no_proxy", no_proxy))
        resolve_b = [] if resolve is None else _opt_str_list("resolve", resolve)
        ua: Optional[bytes] = None
        if user_agent is not None:
            if not isinstance(user_agent, str):
                raise TypeError(f"user_agent must be str, not {type(user_agent).__name__}")
            if _BAD_VALUE.search(user_agent):
                raise errors.InvalidOptionError(
                    _native.INVALID_OPTION, "user_agent contains CR, LF, NUL or another control character"
                )
            ua = user_agent.encode("utf-8")

        opts = lib.agent_options_new()
        try:
            if keep_alive is not None:
                lib.agent_options_set_keep_alive(opts, keep_alive)
            lib.agent_options_set_ignore_environment(opts, ignore_environment)
            if events:
                callback = _events.make_callback()
                lib.agent_options_set_events(opts, callback, None)
                lib.agent_options_set_event_mask(opts, mask)
            for name, value, _ in u32_options:
                getattr(lib, "agent_options_set_" + name)(opts, value)
            lib.agent_options_set_scheduling(opts, sched)
            lib.agent_options_set_http_version(opts, hv)
            lib.agent_options_set_retry_stale(opts, retry_stale)
            lib.agent_options_set_max_response_bytes(opts, max_response_bytes)
            if pem is not None:
                lib.agent_options_set_ca_pem(opts, pem, len(pem))
            if ca_path is not None:
                lib.agent_options_set_ca_file(opts, ca_path)
            lib.agent_options_set_use_system_roots(opts, use_system_roots)
            lib.agent_options_set_danger_accept_invalid_certs(opts, danger_accept_invalid_certs)
            if ua is not None:
                lib.agent_options_set_user_agent(opts, ua)
            if proxy_b is not None:
                lib.agent_options_set_proxy(opts, proxy_b)
            if no_proxy_b is not None:
                lib.agent_options_set_no_proxy(opts, no_proxy_b)
            lib.agent_options_set_proxy_from_env(opts, proxy_from_env)
            for entry in resolve_b:
                lib.agent_options_add_resolve(opts, entry)
            for name, blob in pems:
                getattr(lib, "agent_options_set_" + name)(opts, blob, len(blob))
            for name, path_b in paths:
                getattr(lib, "agent_options_set_" + name)(opts, path_b)
            out = c_void_p()
            lib.agent_new_with_options(opts, byref(out))
        finally:
            lib.agent_options_free(opts)
        if events:
            self._event_callback = callback
        self._handle = out.value
        self._handle_arg = c_void_p.from_param(out.value)
        _live.add(self)

    # -- lifetime -------------------------------------------------------------------------

    def _acquire(self) -> int:
        """Marks one native call in progress; close() waits for it (agent_free must not
        race other calls on the same agent)."""
        self._users.append(None)
        handle = self._handle
        if handle is None:
            self._release()
            raise errors.CancelledError(_native.CANCELLED, "the agent is closed")
        return handle

    def _release(self) -> None:
        self._users.pop()
        if self._handle is None:
            self._wake_closer()

    def _wake_closer(self) -> None:
        with self._cond:
            self._cond.notify_all()  # close() may be waiting for the last call to end

    def close(self) -> None:
        """Frees the native agent: in-flight async requests fail with
        :class:`~keepalive_agent.errors.CancelledError`, open streams are closed (an
        unfinished one is aborted; reading it then raises ``CancelledError``), every
        connection is closed. Waits for blocking requests, and for a stream read in
        progress, in other threads. Idempotent."""
        self._close(wait_for_users=True)

    def _close(self, wait_for_users: bool) -> None:
        cond = self._cond
        with cond:
            handle = self._handle
            if handle is None:
                return
            self._handle = None  # new calls are refused from here on
            self._handle_arg = None
            if wait_for_users:
                while self._users:
                    cond.wait(0.1)
            elif self._users:
                self._leak()
                return  # interpreter exit with a request still running: leak, never race
            streams = list(self._streams)  # no stream is added once the handle is None
        # Free the open streams first: agent_free would otherwise wait up to 5 s for them.
        for s in streams:
            if not s._close_for_agent(wait=wait_for_users):
                self._leak()
                return  # interpreter exit while another thread reads a stream: leak, never race
        _live.discard(self)
        lib.agent_free(handle)
        self._event_callback = None  # after agent_free: no event comes any more

    def _leak(self) -> None:
        # The native agent stays alive, so its event callback must too.
        if self._event_callback is not None:
            _leaked_callbacks.append(self._event_callback)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Agent":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """:meth:`close` in a worker thread, so the event loop keeps running meanwhile."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __del__(self) -> None:
        # Defensive: may run at interpreter exit, when module globals are already gone.
        try:
            if getattr(self, "_handle", None) is not None:
                self._close(wait_for_users=False)
        except Exception:
            pass

    def __repr__(self) -> str:
        if self._handle is None:
            return "<keepalive_agent.Agent closed>"
        return f"<keepalive_agent.Agent keep_alive={self.keep_alive}>"

    # -- introspection --------------------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        """The effective keep-alive setting: what ``keep_alive``, the process switch
        (unless ``ignore_environment``) or the default decided."""
        handle = self._acquire()
        try:
            return bool(lib.agent_keep_alive_enabled(handle))
        finally:
            self._release()

    @property
    def keep_alive_source(self) -> str:
        """What decided :attr:`keep_alive`: ``"default"`` (nothing was said),
        ``"argument"`` (``keep_alive=``) or ``"environment"`` (the process switch
        KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED or AWS_NODEJS_CONNECTION_REUSE_ENABLED)."""
        handle = self._acquire()
        try:
            source = lib.agent_keep_alive_source(handle)
        finally:
            self._release()
        return _native.SETTING_SOURCES.get(source, str(source))

    def keep_alive_describe(self) -> str:
        """The keep-alive setting in one line for people, with what decided it and what the
        environment said, e.g. ``off: environment,
        KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED="false"``."""
        handle = self._acquire()
        try:
            return _native.keep_alive_describe(handle)
        finally:
            self._release()

    @property
    def events(self) -> bool:
        """Whether this agent delivers events to ``logging.getLogger("keepalive_agent")``."""
        return self._event_callback is not None

    def preconnect(self, url: str, count: int = 1) -> None:
        """Opens connections to the origin of ``url`` in the background, TLS included,
        until that origin has ``count`` (idle, busy or opening; within ``max_sockets``), so
        that the first requests find them warm. Returns at once; they appear in
        :meth:`stats` (``idle``) as they open. An HTTP/2 origin gets one. Does nothing when
        keep-alive is off or ``count`` is 0. Failures are not raised here (the events show
        them; the next requests raise theirs); a bad URL raises
        :class:`~keepalive_agent.errors.InvalidURLError`."""
        u = _encode_url(url)
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"count must be an int, not {type(count).__name__}")
        if not 0 <= count <= _MAX_SOCKETS:
            raise _invalid(f"count = {count} is out of range (0..={_MAX_SOCKETS})")
        n = count
        handle = self._acquire()
        try:
            lib.agent_preconnect(handle, u, n)
        finally:
            self._release()

    def stats(self) -> PoolStats:
        """Counters and gauges of the whole agent (``agent_stats_values``)."""
        return self._stats(None)

    def origin_stats(self, origin_url: str) -> PoolStats:
        """Counters and gauges of one origin, e.g. ``"https://example.com"``."""
        return self._stats(_encode_url(origin_url))

    def _stats(self, origin_url: Optional[bytes]) -> PoolStats:
        handle = self._acquire()
        try:
            values = _native.stats_values(handle, origin_url)
            keep_alive = bool(lib.agent_keep_alive_enabled(handle))
        finally:
            self._release()
        return PoolStats(*values, keep_alive=keep_alive)

    # -- blocking requests ----------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        headers: HeadersArg = None,
        body: BodyArg = None,
        timeout: Optional[float] = None,
        *,
        json: Any = None,
    ) -> Response:
        """Sends a request and returns the complete response (any status is a success).

        ``headers``: a mapping or ``(name, value)`` pairs; ``body``: bytes-like or str
        (UTF-8), or a file object or an iterable of bytes read piece by piece (see
        :data:`BodyArg`); ``json``: an object sent as JSON instead of ``body``;
        ``timeout``: an overall deadline in seconds covering queueing, connecting and
        reading (None = none). Raises an :class:`~keepalive_agent.errors.AgentError`
        subclass on failure; an exception raised by a body file or iterator is raised as
        it is.
        """
        if headers is None and json is None and (body is None or type(body) is bytes):
            # The usual call, encoded without building a _Prepared.
            m, u, t, b, blen = _plain_args(method, url, body, timeout)
            hs, nh = None, _SIZE_0
        else:
            p = _Prepared(method, url, headers, body, timeout, json)
            if p.source is not None:
                # agent_request takes bytes only: stream the request, read the whole response.
                with self._open_stream(p, method, url) as s:
                    data = s.read()
                return _whole_response(s, data)
            m, u, hs, b = p.method, p.url, p.headers, p.body
            nh, blen, t = _size_arg(p.n_headers), _size_arg(p.body_len), _msecs_arg(p.timeout)
        out, out_ref, parts_ref, parts_view = _scratch.bufs
        users = self._users  # as _acquire()/_release(), inline
        users.append(None)
        handle = self._handle_arg
        if handle is None:
            self._release()
            raise errors.CancelledError(_native.CANCELLED, "the agent is closed")
        try:
            code = _request_raw(handle, m, u, hs, nh, b, blen, t, out_ref)
        finally:
            users.pop()
            if self._handle is None:
                self._wake_closer()
        if code:
            raise _native.error_for(code)  # agent_last_error of this thread, unchanged since
        return make_response_from_handle(out, method, url, parts_ref, parts_view)

    def get(self, url: str, headers: HeadersArg = None, timeout: Optional[float] = None) -> Response:
        return self.request("GET", url, headers, None, timeout)

    def head(self, url: str, headers: HeadersArg = None, timeout: Optional[float] = None) -> Response:
        return self.request("HEAD", url, headers, None, timeout)

    def delete(
        self, url: str, headers: HeadersArg = None, body: BodyArg = None, timeout: Optional[float] = None
    ) -> Response:
        return self.request("DELETE", url, headers, body, timeout)

    def post(
        self, url: str, body: BodyArg = None, headers: HeadersArg = None,
        timeout: Optional[float] = None, *, json: Any = None,
    ) -> Response:
        return self.request("POST", url, headers, body, timeout, json=json)

    def put(
        self, url: str, body: BodyArg = None, headers: HeadersArg = None,
        timeout: Optional[float] = None, *, json: Any = None,
    ) -> Response:
        return self.request("PUT", url, headers, body, timeout, json=json)

    def patch(
        self, url: str, body: BodyArg = None, headers: HeadersArg = None,
        timeout: Optional[float] = None, *, json: Any = None,
    ) -> Response:
        return self.request("PATCH", url, headers, body, timeout, json=json)

    # -- streaming ------------------------------------------------------------------------

    def stream(
        self,
        method: str,
        url: str,
        headers: HeadersArg = None,
        body: BodyArg = None,
        timeout: Optional[float] = None,
    ) -> StreamResponse:
        """Sends a request and returns as soon as the response head has arrived; the body
        is then read from the returned :class:`StreamResponse`, piece by piece::

            with agent.stream("GET", url) as r:
                for piece in r.iter_bytes():
                    ...

        Arguments as for :meth:`request` (``body`` may be a file or an iterable, read
        piece by piece too). ``timeout`` covers the whole exchange, the body included;
        the agent's ``headers_timeout_msecs`` and ``body_timeout_msecs`` bound the wait
        for the head and the gap between two pieces. Reading the body to its end gives
        the connection back to the pool; closing the stream before that aborts the
        request and closes the connection.
        """
        p = _Prepared(method, url, headers, body, timeout, None)
        return self._open_stream(p, method, url)

    def _open_stream(self, p: _Prepared, method: str, url: str) -> StreamResponse:
        out = c_void_p()
        src = p.source
        handle = self._acquire()
        try:
            ptr = src.register() if src is not None else None
            failure: Optional[BaseException] = None
            try:
                lib.agent_request_stream(
                    handle, p.method, p.url, p.headers, p.n_headers, p.body, p.body_len, ptr,
                    p.timeout, byref(out),
                )
            except errors.AgentError as e:  # the library has released the source
                failure = _body.error_for_exception(e, src)
                if failure is e:
                    raise
            except ctypes.ArgumentError:  # pragma: no cover - the C function never ran
                if src is not None:
                    src.unregister()
                raise
            if failure is not None:
                raise failure  # the body file's or iterator's own exception, as it was
            try:
                resp = StreamResponse(self, out.value, method, url, src)  # type: ignore[arg-type]
            except BaseException:  # pragma: no cover - defensive
                lib.agent_stream_free(out.value)
                raise
            with self._cond:  # before _release: close() waits for us, then frees it
                self._streams.add(resp)
        finally:
            self._release()
        return resp

    def stream_async(
        self,
        method: str,
        url: str,
        headers: HeadersArg = None,
        body: AsyncBodyArg = None,
        timeout: Optional[float] = None,
    ) -> "_AsyncStreamContext":
        """As :meth:`stream`, without blocking the event loop::

            async with agent.stream_async("GET", url) as r:
                async for piece in r.aiter_bytes():
                    ...

        (``r = await agent.stream_async(...)`` works too; then ``await r.aclose()``.)
        The head comes through the loop's queue (``agent_queue_submit_stream``), each
        piece of the body through ``agent_queue_read``, read only when asked for; both run
        on the loop's thread when it drains the queue. ``body`` may also be an async
        iterable, produced on the event loop: while it has no item ready, the upload
        waits (the source returns ``AGENT_SOURCE_PENDING``). Cancelling the awaiting task
        cancels the request (before the head) or closes the stream (after it).
        """
        return _AsyncStreamContext(self, None, method, url, headers, body, timeout)

    async def _open_stream_async(self, p: _Prepared, method: str, url: str) -> AsyncStreamResponse:
        loop = asyncio.get_running_loop()
        d = _loop.driver_for(loop)
        src = p.source
        if isinstance(src, _body.AsyncIterSource):
            src.loop = loop
        fut: "asyncio.Future[int]" = loop.create_future()
        token = d.token()
        handle = self._acquire()
        try:
            d.entries[token] = (fut, src, None)
            ptr = src.register() if src is not None else None
            failure: Optional[BaseException] = None
            try:
                lib.agent_queue_submit_stream(
                    d.q, handle, p.method, p.url, p.headers, p.n_headers, p.body, p.body_len, ptr,
                    p.timeout, token, d.rid_ref,
                )
                rid = d.rid.value
            except errors.AgentError as e:  # no event will come; the source is released
                d.entries.pop(token, None)
                failure = _body.error_for_exception(e, src)
                if failure is e:
                    raise
            except BaseException:  # pragma: no cover - the C function never ran
                d.entries.pop(token, None)
                if src is not None:
                    src.unregister()
                raise
            if failure is not None:
                raise failure
        finally:
            self._release()
        d.watch(loop)
        try:
            stream_ptr = await fut
        except asyncio.CancelledError:
            if src is not None:
                src.abort()  # an async iterable's fetch in flight is cancelled
            if fut.cancelled():
                self._cancel(rid)  # its event then frees a stream that came anyway
            elif fut.exception() is None:  # the head came, but the task was cancelled first
                lib.agent_stream_free(fut.result())
            raise
        try:
            with self._cond:
                if self._handle is None:
                    raise errors.CancelledError(
                        _native.CANCELLED, "the agent was closed while the request was in flight"
                    )
                resp = AsyncStreamResponse(self, stream_ptr, method, url, src)
                self._streams.add(resp)
        except BaseException:
            lib.agent_stream_free(stream_ptr)
            raise
        return resp

    # -- asyncio --------------------------------------------------------------------------

    async def request_async(
        self,
        method: str,
        url: str,
        headers: HeadersArg = None,
        body: AsyncBodyArg = None,
        timeout: Optional[float] = None,
        *,
        json: Any = None,
    ) -> Response:
        """As :meth:`request`, without blocking the event loop.

        The request goes to the event loop's queue (``agent_queue_submit``) and runs on the
        loop's own thread, when the loop finds the queue's descriptor readable; many
        requests in flight share that thread, and their results come back in batches.
        Cancelling the awaiting task cancels the native request (its connection is closed
        if it was mid-response) and raises ``asyncio.CancelledError`` as usual.
        """
        if headers is None and json is None and (body is None or type(body) is bytes):
            m, u, t, b, blen = _plain_args(method, url, body, timeout)
            hs, nh = None, _SIZE_0
        else:
            p = _Prepared(method, url, headers, body, timeout, json, allow_async=True)
            if p.source is not None:
                async with _AsyncStreamContext(self, p, method, url) as s:
                    data = await s.aread()
                return _whole_response(s, data)
            m, u, hs, b = p.method, p.url, p.headers, p.body
            nh, blen, t = _size_arg(p.n_headers), _size_arg(p.body_len), _msecs_arg(p.timeout)
        loop = asyncio.get_running_loop()
        d = _loop.driver_for(loop)
        fut: "asyncio.Future[Response]" = (
            _Future(loop=loop) if d.plain_futures else loop.create_future()
        )
        token = d._next + 1  # as d.token(), inline
        d._next = token
        token_arg = d.token_arg
        token_arg.value = token
        users = self._users  # as _acquire()/_release(), inline
        users.append(None)
        handle = self._handle_arg
        if handle is None:
            self._release()
            raise errors.CancelledError(_native.CANCELLED, "the agent is closed")
        try:
            code = _submit_raw(d.q_arg, handle, m, u, hs, nh, b, blen, t, token_arg, d.rid_ref)
            rid = d.rid.value
        finally:
            users.pop()
            if self._handle is None:
                self._wake_closer()
        if code:
            raise _native.error_for(code)  # no event will come
        d.entries[token] = (fut, method, url)
        if not d.watching:
            d.watch(loop)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.cancelled():
                self._cancel(rid)  # the CANCELLED event comes at the next drain
            raise

    def _cancel(self, request_id: int) -> None:
        self._users.append(None)
        handle = self._handle
        if handle is None:
            self._release()
            return  # closing: agent_free cancels everything
        try:
            lib.agent_request_cancel(handle, request_id)  # NOT_FOUND: already finished
        finally:
            self._release()

    async def aget(self, url: str, headers: HeadersArg = None, timeout: Optional[float] = None) -> Response:
        return await self.request_async("GET", url, headers, None, timeout)

    async def ahead(self, url: str, headers: HeadersArg = None, timeout: Optional[float] = None) -> Response:
        return await self.request_async("HEAD", url, headers, None, timeout)

    async def adelete(
        self, url: str, headers: HeadersArg = None, body: AsyncBodyArg = None, timeout: Optional[float] = None
    ) -> Response:
        return await self.request_async("DELETE", url, headers, body, timeout)

    async def apost(
        self, url: str, body: AsyncBodyArg = None, headers: HeadersArg = None,
        timeout: Optional[float] = None, *, json: Any = None,
    ) -> Response:
        return await self.request_async("POST", url, headers, body, timeout, json=json)

    async def aput(
        self, url: str, body: AsyncBodyArg = None, headers: HeadersArg = None,
        timeout: Optional[float] = None, *, json: Any = None,
    ) -> Response:
        return await self.request_async("PUT", url, headers, body, timeout, json=json)

    async def apatch(
        self, url: str, body: AsyncBodyArg = None, headers: HeadersArg = None,
        timeout: Optional[float] = None, *, json: Any = None,
    ) -> Response:
        return await self.request_async("PATCH", url, headers, body, timeout, json=json)
