"""httpx transports: run existing ``httpx`` code on keepalive-agent.

::

    import httpx
    from keepalive_agent.httpx import KeepAliveTransport, AsyncKeepAliveTransport

    client = httpx.Client(transport=KeepAliveTransport(keep_alive=True, ca_file="/path/ca.pem"))
    r = client.get("https://service.local/items")          # or KeepAliveTransport(agent)
    async with httpx.AsyncClient(transport=AsyncKeepAliveTransport()) as aclient:
        r = await aclient.get("https://service.local/items")

Everything above the transport stays httpx's (auth, cookies, redirects, event hooks,
``Content-Encoding`` decoding, ``raise_for_status``); the transport sends each request
through an :class:`~keepalive_agent.Agent` and streams both ways:

- Request bodies: ``content=b"..."``, ``json=``, ``data=`` are sent whole; a generator, an
  async generator, a file or a multipart upload (``request.stream``) is read piece by
  piece through the engine's body source, never buffered whole: with ``Content-Length``
  when httpx set one (fewer bytes than that fail the request with
  ``httpx.LocalProtocolError``), chunked otherwise. An exception raised by the generator
  is raised as it is, as httpx does.
- Response bodies: when the transport returns, only the head has been read;
  ``response.iter_bytes()`` / ``aiter_bytes()`` (``client.stream(...)``) read from the
  engine's stream as they go (the engine holds at most its read window). Reading the body
  to its end gives the connection back to the pool; closing the response before that
  aborts the request and closes the connection, as httpx does with an unread body.
- ``response.http_version`` is ``"HTTP/1.1"``, or ``"HTTP/2"`` with an agent made with
  ``http_version="auto"`` (or ``"http2"``) and a server that chose h2 by ALPN.
  ``httpx.Client(http2=True)`` configures httpx's own transport only: here the agent's
  ``http_version`` decides.
- Timeouts: the engine takes one deadline per request, covering the wait in the pool,
  connecting, sending and the whole response, body included. From httpx's timeout
  (``request.extensions["timeout"]``) the transport makes that deadline the sum
  ``pool + connect + write + read`` (20 s with httpx's default ``Timeout(5.0)``); ``None``
  in any of the four means no deadline. The agent's ``connect_timeout_msecs``,
  ``headers_timeout_msecs`` and ``body_timeout_msecs`` (connect, wait for the head, the
  longest gap between two body pieces: httpx's connect and read timeouts, agent-wide)
  apply as well. So a download or a stream that lasts longer than that sum needs
  ``timeout=httpx.Timeout(5.0, read=None)`` (or ``None``), with the agent's own timeouts
  bounding the waits.
- Errors, each with the request attached (``exc.request``) and the keepalive_agent
  error as ``__cause__``: refused, unreachable, DNS, TLS -> ``httpx.ConnectError``;
  ``CONNECT_TIMEOUT`` -> ``httpx.ConnectTimeout``; the request's deadline, the head or
  a body gap too slow -> ``httpx.ReadTimeout``; a proxy's refusal of the ``CONNECT``
  tunnel -> ``httpx.ProxyError``; a reset connection -> ``httpx.ReadError`` (also a body
  larger than ``max_response_bytes``); a write to a closed connection ->
  ``httpx.WriteError``; an early close, an invalid response, an HTTP/2 stream reset, a
  reused connection that failed and could not be retried -> ``httpx.RemoteProtocolError``;
  a scheme other than http/https (or a URL the engine refuses) ->
  ``httpx.UnsupportedProtocol``; a request the engine
  refuses (a header value it cannot send, a body shorter than its ``Content-Length``) ->
  ``httpx.LocalProtocolError``; anything else -> ``httpx.TransportError``.
- Proxies and TLS trust are the agent's (``proxy=``, ``no_proxy=``, the proxy environment
  as curl reads it; ``ca_file=``, ``use_system_roots=``...): httpx's ``verify=``,
  ``cert=`` and ``trust_env`` configure only httpx's own transport, and a ``proxy=``
  given to the client mounts httpx's own transport for it, bypassing this one.

``KeepAliveTransport(agent)`` uses the given agent and leaves it open on close;
``KeepAliveTransport(**agent_kwargs)`` makes its own agent with those options and closes
it with the transport (``client.close()``, ``async with``).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Tuple

try:
    import httpx
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "keepalive_agent.httpx needs httpx: pip install 'keepalive_agent[httpx]'"
        " (or pip install httpx)"
    ) from _e

from . import _body, _native, errors
from ._agent import Agent
from ._stream import AsyncStreamResponse, StreamResponse

__all__ = ["KeepAliveTransport", "AsyncKeepAliveTransport"]

# Framing the engine computes itself: the length of the body (source) it is given, or chunked.
_FRAMING = (b"content-length", b"transfer-encoding")
_HTTP_VERSIONS = {"1.1": b"HTTP/1.1", "2": b"HTTP/2", "1.0": b"HTTP/1.0", "0.9": b"HTTP/0.9"}
# Largest piece handed to httpx at once.
_PIECE = 64 * 1024


def _url(request: httpx.Request) -> str:
    u = request.url
    scheme = u.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(
            f"Request URL has an unsupported protocol '{scheme}://'." if scheme
            else "Request URL is missing an 'http://' or 'https://' protocol.",
            request=request,
        )
    if not u.host:
        raise httpx.UnsupportedProtocol("Request URL is missing a host.", request=request)
    # No userinfo (httpx has made it an Authorization header) and no fragment.
    return f"{scheme}://{u.netloc.decode('ascii')}{u.raw_path.decode('ascii')}"


def _headers(request: httpx.Request) -> Tuple[List[Tuple[bytes, bytes]], int]:
    """The request's header lines without framing, and the ``Content-Length`` (-1: none)."""
    headers = []
    length = -1
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower in _FRAMING:
            if lower == b"content-length" and value.strip().isdigit():
                length = int(value)
            continue
        headers.append((name, value))
    return headers, length


def _deadline(request: httpx.Request) -> Optional[float]:
    """The engine's per-request deadline from httpx's timeout extension (see the module doc)."""
    timeout: Dict[str, Optional[float]] = request.extensions.get("timeout") or {}
    total = 0.0
    for key in ("pool", "connect", "write", "read"):
        value = timeout.get(key)
        if value is None:
            return None
        total += float(value)
    return max(total, 0.001)


def _body_of(request: httpx.Request, length: int, is_async: bool) -> Any:
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):  # content=, json=, data= (a dict): in memory
        return b"".join(stream)  # type: ignore[arg-type]
    return _body.IterableBody(stream, length, is_async)


def _error(e: errors.AgentError, request: httpx.Request) -> httpx.HTTPError:
    """The httpx exception for a keepalive_agent error (see the module doc)."""
    code = e.code
    message = str(e)
    cls: type
    if isinstance(e, errors.ProxyError):
        cls = httpx.ProxyError
    elif isinstance(e, errors.TimeoutError):
        cls = httpx.ConnectTimeout if code == _native.CONNECT_TIMEOUT else httpx.ReadTimeout
    elif isinstance(e, errors.ConnectError):  # TLSError included
        cls = httpx.ConnectError
    elif isinstance(e, (errors.StreamResetError, errors.StaleConnectionError)):
        cls = httpx.RemoteProtocolError
    elif isinstance(e, errors.ResponseTooLargeError):
        cls = httpx.ReadError
    elif isinstance(e, errors.ProtocolError):
        cls = {
            _native.CODES["CONNECTION_RESET"]: httpx.ReadError,
            _native.CODES["BROKEN_PIPE"]: httpx.WriteError,
        }.get(code, httpx.RemoteProtocolError)
    elif isinstance(e, errors.InvalidURLError):
        cls = httpx.UnsupportedProtocol
    elif isinstance(e, (errors.InvalidArgumentError, errors.BodySourceError)):
        cls = httpx.LocalProtocolError
    else:
        cls = httpx.TransportError
    return cls(message, request=request)


def _response(resp: Any, stream: Any) -> httpx.Response:
    return httpx.Response(
        status_code=resp.status,
        headers=resp.headers.raw_items(),
        stream=stream,
        extensions={"http_version": _HTTP_VERSIONS.get(resp.http_version, b"HTTP/1.1")},
    )


def _check_agent(agent: Optional[Agent], agent_kwargs: Dict[str, Any]) -> None:
    if agent is not None and agent_kwargs:
        raise TypeError("give an agent or agent options, not both")
    if agent is not None and not isinstance(agent, Agent):
        raise TypeError(f"agent must be a keepalive_agent.Agent, not {type(agent).__name__}")


class _ResponseStream(httpx.SyncByteStream):
    """The body of a response of :class:`KeepAliveTransport`: read from the engine's
    stream as httpx iterates it; :meth:`close` closes the stream (aborting an unfinished
    one)."""

    def __init__(self, resp: StreamResponse, request: httpx.Request) -> None:
        self._resp = resp
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        try:
            for piece in self._resp.iter_bytes(_PIECE):
                yield piece
        except errors.AgentError as e:
            raise _error(e, self._request) from e

    def close(self) -> None:
        self._resp.close()


class _AsyncResponseStream(httpx.AsyncByteStream):
    """As :class:`_ResponseStream`, for :class:`AsyncKeepAliveTransport`: each piece is
    read through the event loop's queue when httpx asks for it."""

    def __init__(self, resp: AsyncStreamResponse, request: httpx.Request) -> None:
        self._resp = resp
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._resp.aiter_bytes(_PIECE):
                yield piece
        except errors.AgentError as e:
            raise _error(e, self._request) from e

    async def aclose(self) -> None:
        await self._resp.aclose()


class KeepAliveTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` sending through a keepalive-agent
    :class:`~keepalive_agent.Agent`: ``httpx.Client(transport=KeepAliveTransport())``.

    ``KeepAliveTransport(agent)`` uses the given agent (closing the transport leaves it
    open); ``KeepAliveTransport(**agent_kwargs)`` makes its own agent with those options
    (``keep_alive``, ``max_sockets``, ``ca_file``, ``http_version``, ...) and closes it in
    :meth:`close`. What maps to what: see :mod:`keepalive_agent.httpx`.
    """

    agent: Agent

    def __init__(self, agent: Optional[Agent] = None, **agent_kwargs: Any) -> None:
        _check_agent(agent, agent_kwargs)
        self._owns_agent = agent is None
        self.agent = agent if agent is not None else Agent(**agent_kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = _url(request)
        headers, length = _headers(request)
        body = _body_of(request, length, is_async=False)
        try:
            resp = self.agent.stream(request.method, url, headers, body, _deadline(request))
        except errors.AgentError as e:
            raise _error(e, request) from e
        try:
            return _response(resp, _ResponseStream(resp, request))
        except BaseException:
            resp.close()
            raise

    def close(self) -> None:
        """Closes the agent when the transport made it; a given agent stays open."""
        if self._owns_agent:
            self.agent.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.agent!r}>"


class AsyncKeepAliveTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` sending through a keepalive-agent
    :class:`~keepalive_agent.Agent` without blocking the event loop (the agent's
    ``stream_async``): ``httpx.AsyncClient(transport=AsyncKeepAliveTransport())``.

    Requests run on the loop's own thread through the engine's event queue; async
    generator uploads are read on the loop as the engine asks for them. Arguments as for
    :class:`KeepAliveTransport`; :meth:`aclose` closes an agent the transport made (in a
    worker thread, so that the loop keeps running).
    """

    agent: Agent

    def __init__(self, agent: Optional[Agent] = None, **agent_kwargs: Any) -> None:
        _check_agent(agent, agent_kwargs)
        self._owns_agent = agent is None
        self.agent = agent if agent is not None else Agent(**agent_kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = _url(request)
        headers, length = _headers(request)
        body = _body_of(request, length, is_async=True)
        try:
            resp = await self.agent.stream_async(request.method, url, headers, body, _deadline(request))
        except errors.AgentError as e:
            raise _error(e, request) from e
        try:
            return _response(resp, _AsyncResponseStream(resp, request))
        except BaseException:
            resp.close()
            raise

    async def aclose(self) -> None:
        """Closes the agent when the transport made it; a given agent stays open."""
        if self._owns_agent:
            await self.agent.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.agent!r}>"
