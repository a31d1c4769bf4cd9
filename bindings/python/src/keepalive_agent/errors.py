"""The exceptions of keepalive_agent.

Every failure reported by the library is an :class:`AgentError` carrying the C code
(``.code``, an ``int`` from ``enum agent_code``), its name (``.code_name``, e.g.
``"AGENT_CODE_CONNECT_REFUSED"``) and the library's message (``.message``)::

    AgentError
    ├── InvalidArgumentError (also ValueError)   INVALID_ARGUMENT
    │   ├── InvalidURLError                       INVALID_URL
    │   └── InvalidOptionError                    INVALID_OPTION
    ├── ConnectError (also builtins.ConnectionError)   DNS, CONNECT_REFUSED, CONNECT
    │   ├── ProxyError                            PROXY
    │   └── TLSError (also ssl.SSLError)          TLS
    ├── TimeoutError (also builtins.TimeoutError) CONNECT_TIMEOUT, TIMEOUT,
    │                                             HEADERS_TIMEOUT, BODY_TIMEOUT
    ├── ProtocolError                             PROTOCOL, CONNECTION_RESET,
    │   │                                         CONNECTION_CLOSED, BROKEN_PIPE
    │   ├── StreamResetError                      STREAM_RESET
    │   └── ResponseTooLargeError                 RESPONSE_TOO_LARGE
    ├── StaleConnectionError                      STALE_CONNECTION
    ├── BodySourceError                           BODY_SOURCE
    ├── CancelledError                            CANCELLED
    └── HTTPStatusError                           (none: raised by raise_for_status())

Other codes (WOULD_BLOCK, FORKED, PANIC, INTERNAL, ...) raise AgentError itself.

``ConnectError``, ``TLSError`` and ``TimeoutError`` are also ``OSError``s, so code written
for the standard library's exceptions catches them: ``except ConnectionError`` catches a
refused or unreachable connection, a proxy's refusal and a failed TLS handshake;
``except ssl.SSLError`` a failed handshake; ``except TimeoutError`` (the builtin) every
timeout. (The method resolution order of ``TLSError`` is TLSError, ConnectError,
AgentError, ConnectionError, SSLError, OSError: ``ssl.SSLError`` and ``ConnectionError``
are both plain ``OSError`` subclasses, so one class can derive from both.) Their
``errno`` is ``None``: the library reports its own codes (``.code``), not the system's.

:class:`HTTPStatusError` is not a failure of the library: a response with a status of 400
or more, turned into an exception by ``Response.raise_for_status()`` (its ``.response``
is that response).
Bad arguments found by the binding before anything reaches C raise
:class:`InvalidArgumentError`/:class:`InvalidOptionError` (``ValueError``) or ``TypeError``.

Note: cancelling an asyncio task that awaits a request raises ``asyncio.CancelledError``
as usual; :class:`CancelledError` here means the *library* cancelled the request (for
example because the agent was closed while it was in flight).
"""

from __future__ import annotations

import builtins
import http
import ssl
from typing import TYPE_CHECKING, Any, Optional, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    from ._response import Response
    from ._stream import AsyncStreamResponse, StreamResponse

__all__ = [
    "AgentError",
    "InvalidArgumentError",
    "InvalidURLError",
    "InvalidOptionError",
    "ConnectError",
    "ProxyError",
    "TimeoutError",
    "TLSError",
    "ProtocolError",
    "StreamResetError",
    "ResponseTooLargeError",
    "StaleConnectionError",
    "BodySourceError",
    "CancelledError",
    "HTTPStatusError",
]


class AgentError(Exception):
    """A failure reported by keepalive-agent, with the C ``code`` and the message."""

    code: int
    message: str

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message

    @property
    def code_name(self) -> str:
        """The C name of :attr:`code`, e.g. ``"AGENT_CODE_TIMEOUT"``."""
        from . import _native  # late: _native imports this module

        return _native.code_name(self.code)

    def __str__(self) -> str:
        return f"{self.message} [{self.code_name}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"

    def __reduce__(self) -> Tuple[Any, ...]:  # picklable (multiprocessing)
        return (type(self), (self.code, self.message))


class InvalidArgumentError(AgentError, ValueError):
    """A bad argument: refused before anything was sent."""


class InvalidURLError(InvalidArgumentError):
    """The URL is malformed, relative, has credentials, or is not http/https."""


class InvalidOptionError(InvalidArgumentError):
    """An agent option is out of range or unknown (raised by ``Agent(...)``)."""


class ConnectError(AgentError, builtins.ConnectionError):
    """The connection could not be made: DNS, refused, unreachable, a proxy's refusal
    (:class:`ProxyError`), a failed TLS handshake (:class:`TLSError`). Also the builtin
    ``ConnectionError`` (an ``OSError``)."""


class ProxyError(ConnectError):
    """The proxy refused or broke the ``CONNECT`` tunnel to the origin (an ``https://``
    request through a proxy); the message has the proxy's status line, e.g. ``407 Proxy
    Authentication Required`` when it wants credentials or refused those given. (A plain
    ``http://`` request through a proxy gets the proxy's answer as a response instead.)"""


class TimeoutError(AgentError, builtins.TimeoutError):  # noqa: A001 - deliberate shadow
    """A deadline passed: connect, response headers, body gap, or the request's timeout."""

    def __init__(self, code: int, message: str) -> None:
        AgentError.__init__(self, code, message)


class TLSError(ConnectError, ssl.SSLError):
    """The TLS handshake failed (untrusted, expired or wrong-host certificate, protocol);
    the message says why in words. A :class:`ConnectError` (and so a builtin
    ``ConnectionError``) and an ``ssl.SSLError``; it has no ``reason``/``library``
    attributes of OpenSSL (the engine's TLS is rustls)."""


class ProtocolError(AgentError):
    """The exchange broke: reset, early close, broken pipe, or an invalid HTTP response."""


class StreamResetError(ProtocolError):
    """The server reset this request's HTTP/2 stream (``RST_STREAM``; its reason, e.g.
    ``INTERNAL_ERROR``, is in the message). Only this request failed: the connection and
    its other requests go on. Streams the server refused before processing them
    (``REFUSED_STREAM``, or beyond a ``GOAWAY``) are retried by the library instead."""


class ResponseTooLargeError(ProtocolError):
    """The body exceeded ``max_response_bytes``; the connection was dropped."""


class StaleConnectionError(AgentError):
    """A reused connection failed before any response byte and the request (not
    idempotent, or ``retry_stale=False``) was not retried. It may not have been processed."""


class BodySourceError(AgentError):
    """A streamed request body (file or iterable) failed or ended before the length it
    announced; nothing more was sent and the connection was closed. When the failure was
    an exception raised by your file or iterator, that exception is raised instead."""


class CancelledError(AgentError):
    """The library cancelled the request (e.g. the agent was closed while it ran)."""


_Responses = Union["Response", "StreamResponse", "AsyncStreamResponse"]


class HTTPStatusError(AgentError):
    """``raise_for_status()`` of a response whose status is 400 or more (``not r.ok``),
    as requests' ``HTTPError``: ``.response`` is that response, and the message reads
    ``404 Client Error: Not Found for url: http://...``. ``.code`` is 0
    (``AGENT_CODE_OK``): the exchange itself succeeded."""

    response: Optional["_Responses"]

    def __init__(self, message: str, response: Optional["_Responses"] = None) -> None:
        AgentError.__init__(self, 0, message)
        self.response = response

    @classmethod
    def _for(cls, response: "_Responses") -> "HTTPStatusError":
        status = response.status
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        kind = "Client Error" if 400 <= status < 500 else "Server Error" if 500 <= status < 600 else "Error"
        return cls(f"{status} {kind}: {reason} for url: {response.url}", response)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> Tuple[Any, ...]:
        from ._response import Response  # late: _response imports _native, which imports us

        # A streamed response holds a native handle: it is not pickled along.
        response = self.response if isinstance(self.response, Response) else None
        return (type(self), (self.message, response))
