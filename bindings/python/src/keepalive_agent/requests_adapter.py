"""A ``requests`` transport adapter: run existing ``requests`` code on keepalive-agent.

::

    import requests
    from keepalive_agent.requests_adapter import KeepAliveAdapter

    session = requests.Session()
    adapter = KeepAliveAdapter(keep_alive=True, ca_file="/path/ca.pem")  # or KeepAliveAdapter(agent)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    r = session.get("https://service.local/items", timeout=(3, 10))
    r.raise_for_status()

What maps to what:

- ``timeout``: a number, or a ``(connect, read)`` tuple whose sum becomes the request's
  overall deadline (``None`` anywhere in the tuple = no deadline). The agent's own
  ``connect_timeout_msecs``/``headers_timeout_msecs``/``body_timeout_msecs`` still apply.
- Errors: ``ConnectError`` and connection failures (a reset, an HTTP/2 stream reset:
  ``StreamResetError``) -> ``requests.exceptions.ConnectionError``;
  ``CONNECT_TIMEOUT`` -> ``ConnectTimeout``; other timeouts -> ``ReadTimeout``;
  ``TLSError`` -> ``SSLError``; bad URL -> ``InvalidURL``; anything else ->
  ``RequestException`` (the original error is ``__cause__``).
- TLS trust comes from the agent (``ca_file``, ``ca_pem``, ``use_system_roots``,
  ``danger_accept_invalid_certs``). ``verify`` is not applied per request: a CA path
  (e.g. from ``REQUESTS_CA_BUNDLE``) adds nothing and ``verify=False`` disables nothing,
  so the adapter never checks less than its agent; configure the agent instead. A
  per-request client certificate (``cert``) raises ``ValueError``: give
  ``client_cert_file``/``client_key_file`` (or ``_pem``) to the adapter's agent instead.
- Proxies are requests' own decision: the proxy is chosen as ``HTTPAdapter`` chooses it
  (``select_proxy`` on the ``proxies`` requests passes, which already hold the
  environment's ``http_proxy``/``https_proxy``/``all_proxy`` unless ``no_proxy`` says
  otherwise, when ``trust_env`` is on). The adapter keeps one engine agent per proxy URL
  (as urllib3 keeps one ``ProxyManager`` per proxy), made with the options of its agent
  plus ``proxy=URL`` and ``proxy_from_env=False``; requests that go direct use the
  adapter's agent, which (when the adapter made it) has ``proxy=""``, so the engine never
  reads the proxy environment itself and ``trust_env=False`` means direct. A proxy URL
  the engine refuses (``socks5://``, no host) raises ``InvalidProxyURL``; a refused
  ``CONNECT`` tunnel (``keepalive_agent.ProxyError``, e.g. 407) and a failed connection
  to the proxy raise ``requests.exceptions.ProxyError``; for plain ``http://`` the
  proxy's own answer (e.g. 407) is the response, as with requests. :meth:`close` frees
  every proxy agent.
- Response bodies: without ``stream=True`` the body is read whole (gzip and deflate
  decoded, as requests does; ``Accept-Encoding`` is requests' default). With
  ``stream=True`` nothing but the head has been read when ``send`` returns:
  ``response.raw`` reads from the engine's stream, so ``iter_content``, ``iter_lines``,
  ``raw.read(n)`` and ``shutil.copyfileobj(response.raw, f)`` go piece by piece and the
  engine holds at most its read window per response. As with urllib3, ``raw.read()``
  gives the bytes as sent unless ``decode_content=True`` (or ``raw.decode_content =
  True``), and ``iter_content`` decodes gzip/deflate incrementally. Consuming the body
  gives the connection back to the pool; ``response.close()`` (or a ``with`` block)
  before the end aborts the request and closes the connection. Mid-body failures raise
  what requests raises there: ``ChunkedEncodingError`` (reset, HTTP/2 stream reset,
  early close, bad framing), ``ConnectionError`` (timeouts, cancellation), ``ContentDecodingError``.
  The deadline from ``timeout`` covers reading the body too (the engine has no
  per-read timeout): for a long download give ``timeout=None`` and rely on the agent's
  ``headers_timeout_msecs``/``body_timeout_msecs``.
- HTTP/2: the agent's ``http_version`` (``KeepAliveAdapter(http_version="auto")``);
  ``response.raw.version`` is 20 over HTTP/2 and 11 over HTTP/1.1, with
  ``raw.version_string`` ``"HTTP/2"``/``"HTTP/1.1"``, as urllib3 reports them.
- Request bodies: bytes and str are sent whole; a file (``data=open(path, "rb")``) or a
  generator/iterable (``data=gen()``) is read piece by piece through the engine's body
  source, never buffered whole: a seekable file with ``Content-Length`` (its remaining
  size), anything else chunked. An exception raised by the generator or file is raised
  as it is by ``session.request``.
"""

from __future__ import annotations

import datetime
import http.client
import io
import threading
import zlib
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import requests
from requests.adapters import BaseAdapter
from requests.cookies import extract_cookies_to_jar
from requests.exceptions import (
    ChunkedEncodingError,
    ConnectionError,
    ConnectTimeout,
    ContentDecodingError,
    InvalidProxyURL,
    InvalidURL,
    ProxyError,
    ReadTimeout,
    RequestException,
    SSLError,
)
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, prepend_scheme_if_needed, select_proxy

from . import _native, errors
from ._agent import Agent
from ._stream import StreamResponse

__all__ = ["KeepAliveAdapter"]

TimeoutArg = Union[None, float, int, Tuple[Optional[float], Optional[float]]]

# Agent options the adapter sets itself on its agents: the proxy is requests' decision.
_PROXY_OPTIONS = ("proxy", "no_proxy", "proxy_from_env")

# Headers the library computes from the body we pass (its length, or chunked for a body
# source of unknown length).
_FRAMING = {"content-length", "transfer-encoding"}


# urllib3's HTTPResponse.version and version_string (major * 10 + minor, as http.client).
_URLLIB3_VERSIONS = {"1.0": (10, "HTTP/1.0"), "1.1": (11, "HTTP/1.1"), "2": (20, "HTTP/2")}


def _urllib3_version(http_version: str) -> Tuple[int, str]:
    return _URLLIB3_VERSIONS.get(http_version, (0, "HTTP/?"))


class _OriginalResponse:
    """What ``requests.cookies.extract_cookies_to_jar`` reads (``._original_response.msg``)."""

    def __init__(self, msg: http.client.HTTPMessage) -> None:
        self.msg = msg


class _Raw(io.BytesIO):
    """``response.raw``: the body in memory, plus the header message for cookie handling
    and urllib3's ``status``, ``version`` (11, or 20 for HTTP/2) and ``version_string``."""

    def __init__(self, body: bytes, msg: http.client.HTTPMessage, status: int = 0,
                 http_version: str = "1.1") -> None:
        super().__init__(body)
        self._original_response = _OriginalResponse(msg)
        self.headers = msg
        self.status = status
        self.version, self.version_string = _urllib3_version(http_version)

    def read(self, amt: Optional[int] = None, decode_content: bool = True, **kwargs: Any) -> bytes:  # type: ignore[override]
        return super().read(-1 if amt is None else amt)

    def stream(self, amt: int = 65536, decode_content: bool = True) -> Iterable[bytes]:
        while True:
            chunk = self.read(amt)
            if not chunk:
                return
            yield chunk

    def release_conn(self) -> None:
        pass


def _overall_timeout(timeout: Any) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise ValueError(f"timeout tuple must be (connect, read), got {timeout!r}")
        connect, read = timeout
        if connect is None or read is None:
            return None
        return float(connect) + float(read)
    if hasattr(timeout, "connect_timeout") and hasattr(timeout, "read_timeout"):
        # a urllib3.Timeout: its total, else connect + read (a sentinel or None = no deadline)
        total = getattr(timeout, "total", None)
        if isinstance(total, (int, float)):
            return float(total)
        c, r = timeout.connect_timeout, timeout.read_timeout
        if isinstance(c, (int, float)) and isinstance(r, (int, float)):
            return float(c) + float(r)
        return None
    return float(timeout)


def _lower(name: Union[str, bytes]) -> str:
    return (name.decode("latin-1") if isinstance(name, bytes) else name).lower()


def _decode_content(body: bytes, content_encoding: str) -> bytes:
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = d.decompress(body) + d.flush()
        elif coding == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:  # raw deflate without the zlib wrapper
                body = zlib.decompress(body, -zlib.MAX_WBITS)
        elif coding == "identity":
            continue
        else:
            break  # unknown coding: leave the bytes as they are, like urllib3
    return body


class _GzipDecoder:
    """Incremental gzip decoding, several members allowed (as urllib3 does)."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._state = "first"  # then "other_members", or "swallow" after trailing garbage

    def decompress(self, data: bytes) -> bytes:
        ret = bytearray()
        if self._state == "swallow" or not data:
            return bytes(ret)
        while True:
            try:
                ret += self._obj.decompress(data)
            except zlib.error:
                previous, self._state = self._state, "swallow"
                if previous == "other_members":  # garbage after a complete member
                    return bytes(ret)
                raise
            data = self._obj.unused_data
            if not data:
                return bytes(ret)
            self._state = "other_members"
            self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def flush(self) -> bytes:
        return self._obj.flush()


class _DeflateDecoder:
    """Incremental deflate decoding: zlib-wrapped, or raw deflate (tried when the first
    bytes are not a zlib header), as urllib3 does."""

    def __init__(self) -> None:
        self._first_try = True
        self._data = b""
        self._obj = zlib.decompressobj()

    def decompress(self, data: bytes) -> bytes:
        if not data:
            return b""
        if not self._first_try:
            return self._obj.decompress(data)
        self._data += data
        try:
            out = self._obj.decompress(data)
            if out:
                self._first_try = False
                self._data = b""
            return out
        except zlib.error:
            self._first_try = False
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                return self.decompress(self._data)
            finally:
                self._data = b""

    def flush(self) -> bytes:
        return self._obj.flush()


class _Decoder:
    """The chain of decoders for a ``Content-Encoding`` (last applied, first removed); an
    unknown coding stops the chain (the bytes are left as they are, like urllib3)."""

    def __init__(self, content_encoding: str) -> None:
        self._chain: List[Any] = []
        codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
        for coding in reversed(codings):
            if coding in ("gzip", "x-gzip"):
                self._chain.append(_GzipDecoder())
            elif coding == "deflate":
                self._chain.append(_DeflateDecoder())
            elif coding == "identity":
                continue
            else:
                break

    def __bool__(self) -> bool:
        return bool(self._chain)

    def decompress(self, data: bytes) -> bytes:
        for d in self._chain:
            data = d.decompress(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for d in self._chain:
            if data:
                data = d.decompress(data)
            data += d.flush()
        return data


# Largest piece read from the engine when decoding (bounds what one piece can expand to).
_DECODE_PIECE = 64 * 1024


class _StreamRaw(io.IOBase):
    """``response.raw`` with ``stream=True``: reads from the engine's stream, piece by
    piece, with the parts of urllib3's ``HTTPResponse`` that requests uses (``read`` and
    ``stream`` with ``decode_content``, ``release_conn``, ``_original_response``)."""

    def __init__(self, resp: StreamResponse, msg: http.client.HTTPMessage, request: Any) -> None:
        super().__init__()
        self._resp = resp
        self._request = request
        self._original_response = _OriginalResponse(msg)
        self.headers = msg
        self.status = resp.status
        self.reason = http.client.responses.get(resp.status, "")
        self.version, self.version_string = _urllib3_version(resp.http_version)
        # As urllib3 under requests: read() gives the bytes as sent unless asked to decode.
        self.decode_content = False
        encoding = resp.headers.get("content-encoding")
        self._decoder = _Decoder(encoding) if encoding and resp.method.upper() != "HEAD" else None
        self._decoded = bytearray()  # decoded bytes not handed out yet
        self._flushed = False

    # -- errors: what requests raises for urllib3's mid-body failures -----------------------

    def _engine(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except errors.ProtocolError as e:
            raise ChunkedEncodingError(e, request=self._request) from e
        except errors.AgentError as e:
            raise ConnectionError(e, request=self._request) from e

    def _decode(self, data: bytes, final: bool) -> bytes:
        assert self._decoder is not None
        try:
            out = self._decoder.decompress(data) if data else b""
            if final:
                out += self._decoder.flush()
            return out
        except zlib.error as e:
            raise ContentDecodingError(e, request=self._request) from e

    # -- reading --------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def _decoding(self, decode_content: Optional[bool]) -> bool:
        decode = self.decode_content if decode_content is None else decode_content
        return bool(decode and self._decoder)

    def _decoded_piece(self, amt: Optional[int]) -> bytes:
        """Decoded bytes from at most one engine piece (b"" at the end)."""
        while not self._decoded and not self._flushed:
            piece = self._engine(self._resp.read1, _DECODE_PIECE)
            if piece:
                self._decoded += self._decode(piece, final=False)
            else:
                self._decoded += self._decode(b"", final=True)
                self._flushed = True
        n = len(self._decoded) if amt is None else min(amt, len(self._decoded))
        out = bytes(self._decoded[:n])
        del self._decoded[:n]
        return out

    def read(self, amt: Optional[int] = None, decode_content: Optional[bool] = None,
             cache_content: bool = False) -> bytes:
        """``read()``: the rest of the body; ``read(amt)``: ``amt`` bytes, fewer only at
        the end. Decoded (gzip/deflate) with ``decode_content=True`` or
        ``self.decode_content``."""
        if self.closed:
            return b""
        if not self._decoding(decode_content):
            if amt is None or amt < 0:
                return self._engine(self._resp.read)
            return self._engine(self._resp.read, amt)
        parts = []
        got = 0
        while amt is None or amt < 0 or got < amt:
            piece = self._decoded_piece(None if amt is None or amt < 0 else amt - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def stream(self, amt: Optional[int] = 2**16, decode_content: Optional[bool] = None) -> Iterator[bytes]:
        """The body in pieces of at most ``amt`` bytes (any size when None), each as soon
        as it has arrived; decoded as :meth:`read`."""
        size = amt if amt and amt > 0 else None
        decode = self._decoding(decode_content)
        while not self.closed:
            if decode:
                piece = self._decoded_piece(size)
            else:
                piece = self._engine(self._resp.read1, size or 65536)
            if not piece:
                return
            yield piece

    def readinto(self, b: Any) -> int:
        """Reads the bytes as sent (no decoding) straight into ``b``: one piece."""
        if self.closed:
            return 0
        return self._engine(self._resp.readinto1, b)

    def tell(self) -> int:
        """Body bytes read from the engine so far (as sent, before decoding)."""
        return self._resp.bytes_read

    def close(self) -> None:
        """Closes the stream: before the end of the body the request is aborted and the
        connection closed."""
        if not self.closed:
            self._resp.close()
        super().close()

    def release_conn(self) -> None:
        """A body read to its end has given its connection back already; an unfinished
        one cannot be, so it is closed (aborted)."""
        if not self._resp.closed:
            self.close()

    @property
    def data(self) -> bytes:
        """urllib3's ``data``: the rest of the body, as sent."""
        return self.read(decode_content=False)


class KeepAliveAdapter(BaseAdapter):
    """A :class:`requests.adapters.BaseAdapter` sending through a keepalive-agent
    :class:`~keepalive_agent.Agent`.

    ``KeepAliveAdapter(agent)`` uses the given agent (closing the adapter leaves it open);
    ``KeepAliveAdapter(**agent_kwargs)`` creates its own agent with those options and
    closes it in :meth:`close` (``Session.close()`` calls that).

    Requests that requests sends through a proxy go through one more agent per proxy URL,
    made on first use with the options of :attr:`agent` plus ``proxy=URL`` and
    ``proxy_from_env=False``, and freed by :meth:`close`. The adapter's own agent is made
    with ``proxy=""`` (direct, whatever the environment says), so the agent options
    ``proxy``, ``no_proxy`` and ``proxy_from_env`` are refused here: set proxies in
    requests (``proxies=``, ``session.proxies``, the environment with ``trust_env``). A
    given agent is used as it is for the requests that go direct (make it with
    ``proxy=""`` for requests' decision to be the only one).
    """

    def __init__(self, agent: Optional[Agent] = None, **agent_kwargs: Any) -> None:
        super().__init__()
        if agent is not None and agent_kwargs:
            raise TypeError("give an agent or agent options, not both")
        if agent is not None and not isinstance(agent, Agent):
            raise TypeError(f"agent must be a keepalive_agent.Agent, not {type(agent).__name__}")
        for name in _PROXY_OPTIONS:
            if name in agent_kwargs:
                raise TypeError(
                    f"KeepAliveAdapter: {name} is requests' setting here: use proxies=,"
                    " session.proxies or the environment (trust_env)"
                )
        self._owns_agent = agent is None
        self.agent: Agent = (
            agent if agent is not None else Agent(**agent_kwargs, proxy="", proxy_from_env=False)
        )
        # One agent per proxy URL (as requests' proxy_manager), made on first use.
        self._proxy_agents: Dict[str, Agent] = {}
        self._proxy_lock = threading.Lock()
        self._closed = False

    def _agent_for_proxy(self, proxy: str, request: requests.PreparedRequest) -> Agent:
        """The agent for requests through ``proxy`` (made on first use)."""
        with self._proxy_lock:
            if self._closed:
                raise errors.CancelledError(_native.CANCELLED, "the adapter is closed")
            agent = self._proxy_agents.get(proxy)
            if agent is None:
                options = dict(self.agent._options)
                options.update(proxy=proxy, no_proxy=None, proxy_from_env=False)
                try:
                    agent = Agent(**options)
                except errors.InvalidOptionError as e:  # socks5://, no host, ...
                    raise InvalidProxyURL(e, request=request) from e
                self._proxy_agents[proxy] = agent
            return agent

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: TimeoutArg = None,
        verify: Union[bool, str] = True,
        cert: Any = None,
        proxies: Optional[Mapping[str, str]] = None,
    ) -> requests.Response:
        # TLS trust is the agent's (ca_file/ca_pem/use_system_roots). `verify` cannot change
        # it per request and is not applied: never less checking than the agent's.
        if cert is not None:
            raise ValueError(
                "KeepAliveAdapter: per-request client certificates are not supported; give"
                " client_cert_file and client_key_file to the adapter's agent"
            )
        url = request.url or ""
        # The proxy as requests' HTTPAdapter chooses it (the environment is in `proxies`
        # already when trust_env is on).
        proxy = select_proxy(url, proxies) if proxies else None
        agent = self.agent
        if proxy:
            proxy = prepend_scheme_if_needed(proxy, "http")
            try:
                agent = self._agent_for_proxy(proxy, request)
            except errors.AgentError as e:  # the adapter is closed
                raise RequestException(e, request=request) from e

        headers: List[Tuple[Any, Any]] = [
            (k, v) for k, v in request.headers.items() if _lower(k) not in _FRAMING
        ]
        # bytes/str are sent whole; a file or an iterable is read piece by piece.
        body = request.body
        method = request.method or "GET"
        try:
            deadline = _overall_timeout(timeout)
            if stream:
                sresp = agent.stream(method, url, headers, body, deadline)
                return self.build_stream_response(request, sresp)
            resp = agent.request(method, url, headers, body, deadline)
        except errors.ProxyError as e:  # the proxy refused the CONNECT tunnel (e.g. 407)
            raise ProxyError(e, request=request) from e
        except errors.TimeoutError as e:
            if e.code == _native.CONNECT_TIMEOUT:
                raise ConnectTimeout(e, request=request) from e
            raise ReadTimeout(e, request=request) from e
        except errors.TLSError as e:
            raise SSLError(e, request=request) from e
        except errors.InvalidURLError as e:
            raise InvalidURL(e, request=request) from e
        except errors.ConnectError as e:
            if proxy:  # through a proxy, the only connection made is the one to the proxy
                raise ProxyError(e, request=request) from e
            raise ConnectionError(e, request=request) from e
        except (errors.ProtocolError, errors.StaleConnectionError) as e:
            raise ConnectionError(e, request=request) from e
        except errors.AgentError as e:
            raise RequestException(e, request=request) from e
        return self.build_response(request, resp)

    @staticmethod
    def _head(resp: Any) -> Tuple[requests.Response, http.client.HTTPMessage]:
        msg = http.client.HTTPMessage()
        for name, value in resp.headers.multi_items():
            msg[name] = value  # appends: repeated lines are kept (Set-Cookie)
        r = requests.Response()
        r.status_code = resp.status
        r.headers = CaseInsensitiveDict(resp.headers)  # repeated values joined with ", "
        r.encoding = get_encoding_from_headers(r.headers)
        r.reason = http.client.responses.get(resp.status, "")
        return r, msg

    def build_stream_response(self, request: requests.PreparedRequest, resp: StreamResponse) -> requests.Response:
        """A :class:`requests.Response` whose ``raw`` reads from a keepalive_agent
        :class:`~keepalive_agent.StreamResponse` (``stream=True``)."""
        try:
            r, msg = self._head(resp)
            r.raw = _StreamRaw(resp, msg, request)
            r.url = request.url or ""
            r.request = request
            r.connection = self  # type: ignore[assignment]
            r.elapsed = datetime.timedelta(microseconds=resp.timings.ttfb_us)
            extract_cookies_to_jar(r.cookies, request, r.raw)
        except BaseException:
            resp.close()
            raise
        return r

    def build_response(self, request: requests.PreparedRequest, resp: Any) -> requests.Response:
        """A :class:`requests.Response` from a keepalive_agent Response."""
        r, msg = self._head(resp)
        body = resp.body
        encoding = resp.headers.get("content-encoding")
        if encoding and request.method != "HEAD":
            try:
                body = _decode_content(body, encoding)
            except zlib.error as e:
                raise ContentDecodingError(e, request=request) from e
        r._content = body
        r._content_consumed = True  # type: ignore[attr-defined]
        r.raw = _Raw(body, msg, resp.status, resp.http_version)
        url = request.url or ""
        r.url = url
        r.request = request
        r.connection = self  # type: ignore[assignment]
        r.elapsed = datetime.timedelta(microseconds=resp.timings.total_us)
        extract_cookies_to_jar(r.cookies, request, r.raw)
        return r

    def close(self) -> None:
        """Closes the agents of the proxies (and the adapter's own agent, when it made
        it); a proxied request afterwards raises ``RequestException``."""
        with self._proxy_lock:
            self._closed = True
            proxy_agents = list(self._proxy_agents.values())
            self._proxy_agents.clear()
        for agent in proxy_agents:
            agent.close()
        if self._owns_agent:
            self.agent.close()
