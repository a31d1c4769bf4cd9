"""The exceptions of keepalive_agent.

Every failure reported by the library is an :class:`AgentError` carrying the C code
(``.code``, an ``int`` from ``enum agent_code``), its name (``.code_name``, e.g.
``"AGENT_CODE_CONNECT_REFUSED"``) and the library's message (``.message``)::

    AgentError
    ├── InvalidArgumentError (also ValueError)   INVALID_ARGUMENT
    │   ├── InvalidURLError                       INVALID_URL
    │   └── InvalidOptionError                    INVALID_OPTION
    ├── ConnectError                              DNS, CONNECT_REFUSED, CONNECT
    │   └── ProxyError                            PROXY
    ├── TimeoutError (also builtins.TimeoutError) CONNECT_TIMEOUT, TIMEOUT,
    │                                             HEADERS_TIMEOUT, BODY_TIMEOUT
    ├── TLSError                                  TLS
    ├── ProtocolError                             PROTOCOL, CONNECTION_RESET,
    │   │                                         CONNECTION_CLOSED, BROKEN_PIPE
    │   ├── StreamResetError                      STREAM_RESET
    │   └── ResponseTooLargeError                 RESPONSE_TOO_LARGE
    ├── StaleConnectionError                      STALE_CONNECTION
    ├── BodySourceError                           BODY_SOURCE
    └── CancelledError                            CANCELLED

Other codes (WOULD_BLOCK, FORKED, PANIC, INTERNAL, ...) raise AgentError itself.
Bad arguments found by the binding before anything reaches C raise
:class:`InvalidArgumentError`/:class:`InvalidOptionError` (``ValueError``) or ``TypeError``.

Note: cancelling an asyncio task that awaits a request raises ``asyncio.CancelledError``
as usual; :class:`CancelledError` here means the *library* cancelled the request (for
example because the agent was closed while it was in flight).
"""

from __future__ import annotations

import builtins
from typing import Any, Tuple

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


class ConnectError(AgentError):
    """The connection could not be made: DNS, refused, unreachable."""


class ProxyError(ConnectError):
    """The proxy refused or broke the ``CONNECT`` tunnel to the origin (an ``https://``
    request through a proxy); the message has the proxy's status line, e.g. ``407 Proxy
    Authentication Required`` when it wants credentials or refused those given. (A plain
    ``http://`` request through a proxy gets the proxy's answer as a response instead.)"""


class TimeoutError(AgentError, builtins.TimeoutError):  # noqa: A001 - deliberate shadow
    """A deadline passed: connect, response headers, body gap, or the request's timeout."""

    def __init__(self, code: int, message: str) -> None:
        AgentError.__init__(self, code, message)


class TLSError(AgentError):
    """The TLS handshake failed (untrusted, expired or wrong-host certificate, protocol)."""


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
