"""keepalive_agent: a keep-alive HTTP/1.1 and HTTP/2 client for Python over the keepalive-agent engine.

Quick start::

    import keepalive_agent

    with keepalive_agent.Agent() as agent:              # keep-alive on (unless the env says off)
        r = agent.get("https://example.com/", timeout=5)
        print(r.status, r.headers["content-type"], r.reused, r.json())

    off = keepalive_agent.Agent(keep_alive=False)       # every request on a fresh connection
    h2 = keepalive_agent.Agent(http_version="auto")     # HTTP/2 where the server offers it

Streaming: ``with agent.stream("GET", url) as r: for piece in r.iter_bytes(): ...``;
``async with agent.stream_async("GET", url) as r: async for piece in r.aiter_bytes(): ...``;
request bodies may be files or iterables of bytes (read piece by piece, never whole).

asyncio: ``await agent.request_async("GET", url)`` (or ``aget``, ``apost``, ...).
requests: ``session.mount("https://", keepalive_agent.requests_adapter.KeepAliveAdapter())``.
httpx: ``httpx.Client(transport=keepalive_agent.httpx.KeepAliveTransport())`` (and
``AsyncKeepAliveTransport`` for ``httpx.AsyncClient``; ``pip install keepalive_agent[httpx]``).
Errors: :mod:`keepalive_agent.errors`.

Diagnostics: ``agent.keep_alive``, ``agent.keep_alive_source`` and
``agent.keep_alive_describe()`` say what decided reuse (the process switch
KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED=false turns it off unless
``ignore_environment=True``); events from inside go to ``logging.getLogger("keepalive_agent")``
at DEBUG; ``agent.preconnect(url, n)`` warms connections before the first request.
"""

from ._version import __version__
from . import errors
from ._native import LIBRARY_PATH as library_path, LIBRARY_VERSION as library_version
from ._response import Headers, PoolStats, Response, Timings
from ._stream import AsyncStreamResponse, StreamResponse
from ._agent import Agent
from ._events import EVENT_KINDS
from .errors import (
    AgentError,
    BodySourceError,
    CancelledError,
    ConnectError,
    HTTPStatusError,
    InvalidArgumentError,
    InvalidOptionError,
    InvalidURLError,
    ProtocolError,
    ProxyError,
    ResponseTooLargeError,
    StaleConnectionError,
    StreamResetError,
    TimeoutError,
    TLSError,
)

__all__ = [
    "__version__",
    "library_path",
    "library_version",
    "Agent",
    "EVENT_KINDS",
    "Response",
    "StreamResponse",
    "AsyncStreamResponse",
    "Headers",
    "Timings",
    "PoolStats",
    "errors",
    *errors.__all__,
]
