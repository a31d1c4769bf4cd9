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
- Errors: ``ConnectError`` and connection failures -> ``requests.exceptions.ConnectionError``;
  ``CONNECT_TIMEOUT`` -> ``ConnectTimeout``; other timeouts -> ``ReadTimeout``;
  ``TLSError`` -> ``SSLError``; bad URL -> ``InvalidURL``; anything else ->
  ``RequestException`` (the original error is ``__cause__``).
- TLS trust comes from the agent (``ca_file``, ``ca_pem``, ``use_system_roots``,
  ``danger_accept_invalid_certs``). ``verify`` is not applied per request: a CA path
  (e.g. from ``REQUESTS_CA_BUNDLE``) adds nothing and ``verify=False`` disables nothing,
  so the adapter never checks less than its agent; configure the agent instead. Client
  certificates (``cert``) raise ``ValueError``. Proxies are not supported: a proxy chosen
  for the URL raises ``requests.exceptions.ProxyError``.
- The body is read whole (``stream=True`` still works, from memory); gzip and deflate
  bodies are decoded as requests would (``Accept-Encoding`` is requests' default).
"""

from __future__ import annotations

import datetime
import http.client
import io
import zlib
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

import requests
from requests.adapters import BaseAdapter
from requests.cookies import extract_cookies_to_jar
from requests.exceptions import (
    ConnectionError,
    ConnectTimeout,
    ContentDecodingError,
    InvalidURL,
    ProxyError,
    ReadTimeout,
    RequestException,
    SSLError,
)
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, select_proxy

from . import _native, errors
from ._agent import Agent

__all__ = ["KeepAliveAdapter"]

TimeoutArg = Union[None, float, int, Tuple[Optional[float], Optional[float]]]

# Headers the library computes from the body we pass (the body is always whole).
_FRAMING = {"content-length", "transfer-encoding"}


class _OriginalResponse:
    """What ``requests.cookies.extract_cookies_to_jar`` reads (``._original_response.msg``)."""

    def __init__(self, msg: http.client.HTTPMessage) -> None:
        self.msg = msg


class _Raw(io.BytesIO):
    """``response.raw``: the body in memory, plus the header message for cookie handling."""

    def __init__(self, body: bytes, msg: http.client.HTTPMessage) -> None:
        super().__init__(body)
        self._original_response = _OriginalResponse(msg)
        self.headers = msg

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


def _body_bytes(body: Any) -> Optional[bytes]:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    if hasattr(body, "read"):  # a file
        data = body.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    # an iterable of chunks (requests sends these chunked; we send them whole)
    parts = [c.encode("utf-8") if isinstance(c, str) else bytes(c) for c in body]
    return b"".join(parts)


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


class KeepAliveAdapter(BaseAdapter):
    """A :class:`requests.adapters.BaseAdapter` sending through a keepalive-agent
    :class:`~keepalive_agent.Agent`.

    ``KeepAliveAdapter(agent)`` uses the given agent (closing the adapter leaves it open);
    ``KeepAliveAdapter(**agent_kwargs)`` creates its own agent with those options and
    closes it in :meth:`close` (``Session.close()`` calls that).
    """

    def __init__(self, agent: Optional[Agent] = None, **agent_kwargs: Any) -> None:
        super().__init__()
        if agent is not None and agent_kwargs:
            raise TypeError("give an agent or agent options, not both")
        if agent is not None and not isinstance(agent, Agent):
            raise TypeError(f"agent must be a keepalive_agent.Agent, not {type(agent).__name__}")
        self._owns_agent = agent is None
        self.agent: Agent = agent if agent is not None else Agent(**agent_kwargs)

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
            raise ValueError("KeepAliveAdapter: client certificates are not supported")
        url = request.url or ""
        if proxies and select_proxy(url, proxies):
            raise ProxyError("KeepAliveAdapter does not support proxies", request=request)

        headers: List[Tuple[Any, Any]] = [
            (k, v) for k, v in request.headers.items() if _lower(k) not in _FRAMING
        ]
        body = _body_bytes(request.body)
        try:
            deadline = _overall_timeout(timeout)
            resp = self.agent.request(request.method or "GET", url, headers, body, deadline)
        except errors.TimeoutError as e:
            if e.code == _native.CONNECT_TIMEOUT:
                raise ConnectTimeout(e, request=request) from e
            raise ReadTimeout(e, request=request) from e
        except errors.TLSError as e:
            raise SSLError(e, request=request) from e
        except errors.InvalidURLError as e:
            raise InvalidURL(e, request=request) from e
        except (errors.ConnectError, errors.ProtocolError, errors.StaleConnectionError) as e:
            raise ConnectionError(e, request=request) from e
        except errors.AgentError as e:
            raise RequestException(e, request=request) from e
        return self.build_response(request, resp)

    def build_response(self, request: requests.PreparedRequest, resp: Any) -> requests.Response:
        """A :class:`requests.Response` from a keepalive_agent Response."""
        msg = http.client.HTTPMessage()
        for name, value in resp.headers.multi_items():
            msg[name] = value  # appends: repeated lines are kept (Set-Cookie)
        r = requests.Response()
        r.status_code = resp.status
        r.headers = CaseInsensitiveDict(resp.headers)  # repeated values joined with ", "
        r.encoding = get_encoding_from_headers(r.headers)
        r.reason = http.client.responses.get(resp.status, "")
        body = resp.body
        encoding = resp.headers.get("content-encoding")
        if encoding and request.method != "HEAD":
            try:
                body = _decode_content(body, encoding)
            except zlib.error as e:
                raise ContentDecodingError(e, request=request) from e
        r._content = body
        r._content_consumed = True  # type: ignore[attr-defined]
        r.raw = _Raw(body, msg)
        url = request.url or ""
        r.url = url
        r.request = request
        r.connection = self  # type: ignore[assignment]
        r.elapsed = datetime.timedelta(microseconds=resp.timings.total_us)
        extract_cookies_to_jar(r.cookies, request, r.raw)
        return r

    def close(self) -> None:
        if self._owns_agent:
            self.agent.close()
