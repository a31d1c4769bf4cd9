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

Wherever the behaviour is not urllib3's internals, the adapter behaves as
``requests.adapters.HTTPAdapter`` does (``tests/test_requests_parity.py`` runs each case
against both). What maps to what:

- ``timeout``: a number, a ``(connect, read)`` tuple or a ``urllib3.Timeout``, checked as
  requests checks it (the same ``ValueError`` messages). The engine has one deadline per
  request, not one per socket read: it is ``connect + read`` (a number counts twice, the
  ``total`` of a ``urllib3.Timeout`` once; ``None`` anywhere = no deadline) and covers
  the body too, also with ``stream=True`` (for a long download give ``timeout=None`` and
  rely on the agent's ``headers_timeout_msecs``/``body_timeout_msecs``, which are
  urllib3's read timeout). The agent's ``connect_timeout_msecs`` still applies.
- Errors, as requests raises them: a refused or failed connection and a reset before the
  response -> ``ConnectionError``; the agent's connect timeout -> ``ConnectTimeout``;
  the deadline -> ``ReadTimeout`` (also when it passes while connecting: the engine does
  not say which phase it was in); a failure in the middle of the body (reset, early
  close, bad chunked framing) -> ``ChunkedEncodingError``; conflicting
  ``Content-Length`` values -> ``InvalidHeader``; TLS -> ``SSLError``; bad URL ->
  ``InvalidURL``; anything else -> ``RequestException`` (the original error is
  ``__cause__``).
- TLS per request, as urllib3 keeps a pool per TLS setting: ``verify`` and ``cert``
  choose an agent, made on first use with the options of :attr:`~KeepAliveAdapter.agent`
  and cached by ``(proxy, verify, cert)``. ``verify=True`` is the adapter's agent as
  configured (``ca_file``, ``ca_pem``, ``use_system_roots``); ``verify=False`` accepts
  any certificate (``danger_accept_invalid_certs``); ``verify="/path/ca.pem"`` trusts
  that bundle instead of the system roots (a directory: the PEM certificates in it),
  plus the CAs given to the adapter itself (``ca_file``, ``ca_pem``). requests passes
  the environment's ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` as ``verify`` (with
  ``trust_env``): it is such a path, unless the adapter has CAs of its own, whose
  configuration then wins (the adapter's agent is used, as for ``verify=True``);
  ``cert="/path/client.pem"`` (certificate and key in one file) or ``cert=(cert,
  key)`` is the client certificate. Missing files raise requests' ``OSError`` ("Could
  not find a suitable TLS CA certificate bundle, invalid path: ...", "Could not find the
  TLS certificate file, ...", "... TLS key file, ...") before anything is sent; files
  the engine cannot load raise ``SSLError``.
- Proxies are requests' own decision: the proxy is chosen as ``HTTPAdapter`` chooses it
  (``select_proxy`` on the ``proxies`` requests passes, which already hold the
  environment's ``http_proxy``/``https_proxy``/``all_proxy`` unless ``no_proxy`` says
  otherwise, when ``trust_env`` is on). The adapter keeps one engine agent per proxy URL
  (as urllib3 keeps one ``ProxyManager`` per proxy; :attr:`~KeepAliveAdapter.proxy_manager`
  lists them), made with the options of its agent plus ``proxy=URL`` and
  ``proxy_from_env=False``; requests that go direct use the adapter's agent, which (when
  the adapter made it) has ``proxy=""``, so the engine never reads the proxy environment
  itself and ``trust_env=False`` means direct. A proxy URL the engine refuses
  (``socks5://``, no host) raises ``InvalidProxyURL``; a refused ``CONNECT`` tunnel
  (``keepalive_agent.ProxyError``, e.g. 407) and a failed connection to the proxy raise
  ``requests.exceptions.ProxyError``; for plain ``http://`` the proxy's own answer (e.g.
  407) is the response, as with requests.
- :meth:`~KeepAliveAdapter.close` (``Session.close()``) closes every agent the adapter
  made (per proxy, per TLS setting, its own) and the ``stream=True`` responses still
  open, and forgets them; the adapter stays usable, making new agents on demand, as
  ``HTTPAdapter`` stays usable after ``close()``. An agent given to the adapter is left
  open.
- Response bodies: without ``stream=True`` the body is read whole (gzip and deflate
  decoded, as requests does; ``Accept-Encoding`` is requests' default). With
  ``stream=True`` nothing but the head has been read when ``send`` returns:
  ``response.raw`` reads from the engine's stream, so ``iter_content``, ``iter_lines``,
  ``raw.read(n)`` and ``shutil.copyfileobj(response.raw, f)`` go piece by piece and the
  engine holds at most its read window per response. As with urllib3, ``raw.read()``
  gives the bytes as sent unless ``decode_content=True`` (or ``raw.decode_content =
  True``), and ``iter_content`` decodes gzip/deflate incrementally; ``raw`` raises
  urllib3's exceptions (``ProtocolError``, ``ReadTimeoutError``, ``DecodeError``,
  ``SSLError``), which ``iter_content`` turns into requests' as it does for urllib3
  (``ChunkedEncodingError``, ``ConnectionError``, ``ContentDecodingError``,
  ``SSLError``). Consuming the body gives the connection back to the pool;
  ``response.close()`` (or the end of a ``with`` block) before the end aborts the
  request and closes the connection.
- Header values are decoded as latin-1, as ``http.client`` decodes them, so that
  requests' redirect handling (which re-encodes ``Location`` as latin-1 and decodes it
  as UTF-8) follows a non-ASCII ``Location`` to the same URL.
- HTTP/2: the agent's ``http_version`` (``KeepAliveAdapter(http_version="auto")``);
  ``response.raw.version`` is 20 over HTTP/2 and 11 over HTTP/1.1, with
  ``raw.version_string`` ``"HTTP/2"``/``"HTTP/1.1"``, as urllib3 reports them.
- Request bodies: bytes and str are sent whole; a file (``data=open(path, "rb")``) or a
  generator/iterable (``data=gen()``) is read piece by piece through the engine's body
  source, never buffered whole: a seekable file with ``Content-Length`` (its remaining
  size), anything else with ``Transfer-Encoding: chunked``. An exception raised by the
  generator or file is raised as it is by ``session.request``. Authentication handlers
  that resend (``HTTPDigestAuth``) rewind a file body as they do with urllib3.
- Pickling: a ``Session`` with the adapter mounted pickles (the agent options are the
  state); the unpickled adapter makes its own agent with those options.

Deliberate differences (the engine's internals): one deadline instead of urllib3's
per-read timeouts (above); no ``max_retries`` (the engine retries an idempotent request
once on a stale pooled connection, ``retry_stale``); response header names arrive in
lower case (``r.headers`` is case-insensitive either way); a response header line
without a colon fails the response (``ConnectionError``) where ``http.client`` skips
it; ``pool_connections``/``pool_maxsize``/``pool_block`` are the agent's
``max_sockets``/``max_free_sockets`` and its wait queue.
"""

from __future__ import annotations

import datetime
import http.client
import io
import os
import threading
import warnings
import weakref
import zlib
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import requests
import urllib3
from requests.adapters import BaseAdapter
from requests.cookies import extract_cookies_to_jar
from requests.exceptions import (
    ChunkedEncodingError,
    ConnectionError,
    ConnectTimeout,
    ContentDecodingError,
    InvalidHeader,
    InvalidProxyURL,
    InvalidURL,
    ProxyError,
    ReadTimeout,
    RequestException,
    SSLError,
)
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, prepend_scheme_if_needed, select_proxy
from urllib3 import exceptions as urllib3_exceptions

from . import _native, errors
from ._agent import Agent
from ._stream import StreamResponse

__all__ = ["KeepAliveAdapter"]

TimeoutArg = Union[None, float, int, Tuple[Optional[float], Optional[float]], urllib3.Timeout]

# Agent options the adapter sets itself on its agents: the proxy is requests' decision.
_PROXY_OPTIONS = ("proxy", "no_proxy", "proxy_from_env")

# Headers the library computes from the body we pass (its length, or chunked for a body
# source of unknown length).
_FRAMING = {"content-length", "transfer-encoding"}

# urllib3's HTTPResponse.version and version_string (major * 10 + minor, as http.client).
_URLLIB3_VERSIONS = {"1.0": (10, "HTTP/1.0"), "1.1": (11, "HTTP/1.1"), "2": (20, "HTTP/2")}

# The engine's messages (hyper's) for a failure after the head: the body broke.
_BODY_FAILURE = "error reading a body"
_BAD_CONTENT_LENGTH = "invalid content-length"

# The cache key of an agent: (proxy URL or None, verify, cert), normalised.
_AgentKey = Tuple[Optional[str], Union[bool, str], Union[None, str, Tuple[str, Optional[str]]]]


def _urllib3_version(http_version: str) -> Tuple[int, str]:
    return _URLLIB3_VERSIONS.get(http_version, (0, "HTTP/?"))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _overall_timeout(timeout: Any) -> Optional[float]:
    """Checks ``timeout`` as ``HTTPAdapter.send`` does (the same ``ValueError``s), then
    gives the request's deadline in seconds: ``total``, else ``connect + read``; None
    when any part is None."""
    if isinstance(timeout, tuple):
        try:
            connect, read = timeout
            t = urllib3.Timeout(connect=connect, read=read)
        except ValueError:
            raise ValueError(
                f"Invalid timeout {timeout}. Pass a (connect, read) timeout tuple, "
                f"or a single float to set both timeouts to the same value."
            ) from None
    elif isinstance(timeout, urllib3.Timeout):
        t = timeout
    else:
        t = urllib3.Timeout(connect=timeout, read=timeout)
    if _is_number(t.total):
        return float(t.total)  # type: ignore[arg-type]
    c, r = t.connect_timeout, t.read_timeout
    if _is_number(c) and _is_number(r):
        return float(c) + float(r)  # type: ignore[arg-type]
    return None


def _lower(name: Union[str, bytes]) -> str:
    return (name.decode("latin-1") if isinstance(name, bytes) else name).lower()


# ---------------------------------------------------------------------------------------
# TLS per request: requests' checks of verify and cert, and the agent options they mean.


def _environment_ca_bundle() -> Optional[str]:
    """What requests passes as ``verify`` instead of True when ``trust_env`` is on."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")


def _tls_key(url: str, proxy: Optional[str], verify: Any, cert: Any,
             own_ca: bool = False) -> Tuple[Union[bool, str], Any]:
    """``HTTPAdapter.cert_verify``'s checks (the same ``OSError``s), then ``(verify,
    cert)`` normalised for the agent cache; ``(True, None)`` when TLS is not used (plain
    http, not through an https proxy). With ``own_ca`` (the adapter's agent has CAs of
    its own), the environment's CA bundle is requests' stand-in for ``verify=True``, and
    means the adapter's agent: its configuration wins over the environment."""
    https = url[:6].lower() == "https:"
    if https and verify and verify is not True:
        path = os.fsdecode(verify)
        if not path or not os.path.exists(path):
            raise OSError(f"Could not find a suitable TLS CA certificate bundle, invalid path: {path}")
    c: Any = None
    if cert:
        if isinstance(cert, (str, bytes, os.PathLike)):
            cert_file, key_file = os.fsdecode(cert), None
        else:
            cert_file = os.fsdecode(cert[0]) if cert[0] else None
            key_file = os.fsdecode(cert[1]) if cert[1] else None
        if cert_file and not os.path.exists(cert_file):
            raise OSError(f"Could not find the TLS certificate file, invalid path: {cert_file}")
        if key_file and not os.path.exists(key_file):
            raise OSError(f"Could not find the TLS key file, invalid path: {key_file}")
        if cert_file:
            c = cert_file if key_file is None else (cert_file, key_file)
    if not https and not (proxy and proxy[:6].lower() == "https:"):
        return True, None  # no TLS: the checks above were made all the same, as requests does
    v: Union[bool, str] = True if verify is True else (os.fsdecode(verify) if verify else False)
    if own_ca and isinstance(v, str) and v == _environment_ca_bundle():
        v = True
    return v, c


def _ca_dir_pem(directory: str) -> bytes:
    """The PEM certificates of the files in ``directory`` (a ``c_rehash`` directory, as
    OpenSSL's ``CApath``), in one blob."""
    blobs = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if b"-----BEGIN CERTIFICATE-----" in data:
            blobs.append(data if data.endswith(b"\n") else data + b"\n")
    return b"".join(blobs)


def _tls_options(base: Mapping[str, Any], verify: Union[bool, str], cert: Any) -> Dict[str, Any]:
    """The agent options for ``(verify, cert)`` over ``base`` (those of the adapter's
    agent). A CA bundle given as ``verify`` replaces the system roots, as it replaces
    requests' default bundle; CAs given to the adapter itself (``ca_file``, ``ca_pem``)
    stay trusted (so that ``REQUESTS_CA_BUNDLE`` in the environment, which requests
    passes as ``verify``, does not undo the adapter's configuration)."""
    opts: Dict[str, Any] = {}
    if verify is False:
        opts["danger_accept_invalid_certs"] = True
    elif isinstance(verify, str):
        own = []
        if base.get("ca_pem") is not None:
            pem = base["ca_pem"]
            own.append(pem.encode("ascii") if isinstance(pem, str) else bytes(pem))
        if base.get("ca_file") is not None:
            with open(base["ca_file"], "rb") as f:
                own.append(f.read())
        if os.path.isdir(verify):
            own.append(_ca_dir_pem(verify))
            ca_file = None
        else:
            ca_file = verify
        pems = b"\n".join(p.strip() for p in own if p.strip())
        opts.update(danger_accept_invalid_certs=False, use_system_roots=False,
                    ca_file=ca_file, ca_pem=pems + b"\n" if pems else None)
    if cert is not None:
        cert_file, key_file = (cert, cert) if isinstance(cert, str) else cert
        opts.update(client_cert_file=cert_file, client_key_file=key_file,
                    client_cert_pem=None, client_key_pem=None)
    return opts


# ---------------------------------------------------------------------------------------
# Response heads: header values decoded as latin-1 (as http.client decodes them).


def _latin1_pairs(resp: Any) -> List[Tuple[str, str]]:
    """Every header line of ``resp`` as ``(name, value)``, the value's bytes decoded as
    latin-1 (the binding's Headers decode UTF-8 when they can)."""
    block = getattr(resp.headers, "_raw", None)
    if block is None and isinstance(resp, StreamResponse):
        with resp._lock:  # the head again, as sent (the stream has parsed its copy)
            if resp._handle is not None:
                block = _native.read_stream_head(resp._handle)[3]
    if block is None:
        return [(n, v.encode("utf-8").decode("latin-1")) for n, v in resp.headers.multi_items()]
    pairs = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        pairs.append((name.decode("latin-1"), value.decode("latin-1")))
    return pairs


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


class _PoolName:
    """Stands for urllib3's connection pool in the exceptions ``raw`` raises (they print
    ``HTTPConnectionPool(host=..., port=...): message``)."""

    def __init__(self, url: str) -> None:
        try:
            u = urllib3.util.parse_url(url)
            self._text = f"KeepAliveAdapter(host={u.host!r}, port={u.port or (443 if u.scheme == 'https' else 80)})"
        except Exception:
            self._text = "KeepAliveAdapter"

    def __str__(self) -> str:
        return self._text


class _StreamRaw(io.IOBase):
    """``response.raw`` with ``stream=True``: reads from the engine's stream, piece by
    piece, with the parts of urllib3's ``HTTPResponse`` that requests uses (``read`` and
    ``stream`` with ``decode_content``, ``release_conn``, ``_original_response``), raising
    urllib3's exceptions as ``HTTPResponse`` does (requests' ``iter_content`` turns them
    into its own)."""

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
        self._encoding = encoding or ""
        self._decoder = _Decoder(encoding) if encoding and resp.method.upper() != "HEAD" else None
        self._decoded = bytearray()  # decoded bytes not handed out yet
        self._flushed = False

    # -- errors: urllib3's, as HTTPResponse raises them mid-body ------------------------------

    def _engine(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except errors.TimeoutError as e:
            url = self._resp.url
            raise urllib3_exceptions.ReadTimeoutError(_PoolName(url), url, f"Read timed out. ({e})") from e  # type: ignore[arg-type]
        except errors.TLSError as e:
            raise urllib3_exceptions.SSLError(e) from e
        except errors.AgentError as e:
            raise urllib3_exceptions.ProtocolError(f"Connection broken: {e}", e) from e

    def _decode(self, data: bytes, final: bool) -> bytes:
        assert self._decoder is not None
        try:
            out = self._decoder.decompress(data) if data else b""
            if final:
                out += self._decoder.flush()
            return out
        except zlib.error as e:
            raise urllib3_exceptions.DecodeError(
                f"Received response with content-encoding: {self._encoding}, but failed to decode it.", e
            ) from e

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
    """A :class:`requests.adapters.BaseAdapter` sending through keepalive-agent
    :class:`~keepalive_agent.Agent`\\ s.

    ``KeepAliveAdapter(agent)`` uses the given agent (closing the adapter leaves it open);
    ``KeepAliveAdapter(**agent_kwargs)`` creates its own agent with those options and
    closes it in :meth:`close` (``Session.close()`` calls that).

    Requests that need other settings than :attr:`agent`'s go through more agents, one
    per ``(proxy, verify, cert)``, made on first use with the options of :attr:`agent`
    plus ``proxy=URL`` and ``proxy_from_env=False`` for a proxy, and the TLS options
    ``verify`` and ``cert`` mean (see the module's documentation). :meth:`close` closes
    them and forgets them. The adapter's own agent is made with ``proxy=""`` (direct,
    whatever the environment says), so the agent options ``proxy``, ``no_proxy`` and
    ``proxy_from_env`` are refused here: set proxies in requests (``proxies=``,
    ``session.proxies``, the environment with ``trust_env``). A given agent is used as it
    is for the requests that go direct with the default TLS settings (make it with
    ``proxy=""`` for requests' decision to be the only one).
    """

    # What pickling keeps (as HTTPAdapter's __attrs__): the options agents are made with.
    __attrs__ = ["agent_options"]

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
        if agent is None:
            agent = Agent(**agent_kwargs, proxy="", proxy_from_env=False)
            self._setup(agent, owns=True)
        else:
            self._setup(agent, owns=False)

    def _setup(self, agent: Agent, owns: bool) -> None:
        self._owns_agent = owns
        self.agent: Agent = agent
        #: The options every agent of this adapter is made from (those of :attr:`agent`).
        self.agent_options: Dict[str, Any] = dict(agent._options)
        # Agents per (proxy, verify, cert) other than the default (None, True, None).
        self._agents: Dict[_AgentKey, Agent] = {}
        self._lock = threading.Lock()
        # stream=True responses not closed yet, closed by close().
        self._streams: "weakref.WeakSet[_StreamRaw]" = weakref.WeakSet()

    # -- pickling (as HTTPAdapter: the configuration, not the pools) ----------------------

    def __getstate__(self) -> Dict[str, Any]:
        return {attr: getattr(self, attr, None) for attr in self.__attrs__}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._setup(Agent(**state["agent_options"]), owns=True)

    # -- agents ----------------------------------------------------------------------------

    def _agent_for(self, key: _AgentKey, request: requests.PreparedRequest) -> Agent:
        """The agent for ``key`` (made on first use, and again after :meth:`close`)."""
        with self._lock:
            if key == (None, True, None):
                if self._owns_agent and self.agent.closed:
                    self.agent = Agent(**self.agent_options)
                return self.agent
            agent = self._agents.get(key)
            if agent is not None:
                return agent
            proxy, verify, cert = key
            options = dict(self.agent_options)
            if proxy is not None:
                options.update(proxy=proxy, no_proxy=None, proxy_from_env=False)
            options.update(_tls_options(self.agent_options, verify, cert))
            try:
                agent = Agent(**options)
            except errors.InvalidOptionError as e:
                if proxy is not None and "proxy" in e.message:  # socks5://, no host, ...
                    raise InvalidProxyURL(e, request=request) from e
                raise SSLError(e, request=request) from e  # a CA or client file it cannot load
            self._agents[key] = agent
            return agent

    @property
    def proxy_manager(self) -> Dict[str, Agent]:
        """The agents of the proxies used so far (with the default TLS settings), by proxy
        URL: what ``HTTPAdapter.proxy_manager`` holds (a copy; emptied by :meth:`close`)."""
        with self._lock:
            return {k[0]: a for k, a in self._agents.items() if k[0] is not None and k[1:] == (True, None)}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Agent:
        """The agent for requests through ``proxy`` (made on first use), as
        ``HTTPAdapter.proxy_manager_for`` gives its ``ProxyManager``."""
        return self._agent_for((prepend_scheme_if_needed(proxy, "http"), True, None), None)  # type: ignore[arg-type]

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        """Nothing, as ``HTTPAdapter.add_headers``: left for subclasses (called by
        :meth:`send` with its keyword arguments)."""

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: TimeoutArg = None,
        verify: Union[bool, str] = True,
        cert: Any = None,
        proxies: Optional[Mapping[str, str]] = None,
    ) -> requests.Response:
        url = request.url or ""
        # The proxy as requests' HTTPAdapter chooses it (the environment is in `proxies`
        # already when trust_env is on).
        proxy = select_proxy(url, proxies) if proxies else None
        if proxy:
            proxy = prepend_scheme_if_needed(proxy, "http")
        own_ca = self.agent_options.get("ca_file") is not None or self.agent_options.get("ca_pem") is not None
        tls_verify, tls_cert = _tls_key(url, proxy, verify, cert, own_ca)
        try:
            agent = self._agent_for((proxy or None, tls_verify, tls_cert), request)
        except errors.AgentError as e:
            raise RequestException(e, request=request) from e
        if tls_verify is False and url[:6].lower() == "https:":
            warnings.warn(  # as urllib3 warns for every unverified request
                f"Unverified HTTPS request is being made to host '{urllib3.util.parse_url(url).host}'. "
                "Adding certificate verification is strongly advised. See: "
                "https://urllib3.readthedocs.io/en/latest/advanced-usage.html#tls-warnings",
                urllib3_exceptions.InsecureRequestWarning,
                stacklevel=2,
            )
        self.add_headers(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        deadline = _overall_timeout(timeout)

        headers: List[Tuple[Any, Any]] = [
            (k, v) for k, v in request.headers.items() if _lower(k) not in _FRAMING
        ]
        # bytes/str are sent whole; a file or an iterable is read piece by piece.
        body = request.body
        method = request.method or "GET"
        try:
            if stream:
                sresp = agent.stream(method, url, headers, body, deadline)
                return self.build_stream_response(request, sresp)
            resp = agent.request(method, url, headers, body, deadline)
        except errors.ProxyError as e:  # the proxy refused the CONNECT tunnel (e.g. 407)
            raise ProxyError(e, request=request) from e
        except errors.TimeoutError as e:
            if e.code == _native.CONNECT_TIMEOUT:
                raise ConnectTimeout(e, request=request) from e
            if e.code == _native.BODY_TIMEOUT:  # requests reads the body: ConnectionError
                raise ConnectionError(e, request=request) from e
            raise ReadTimeout(e, request=request) from e
        except errors.TLSError as e:
            raise SSLError(e, request=request) from e
        except errors.InvalidURLError as e:
            raise InvalidURL(e, request=request) from e
        except errors.ConnectError as e:
            if proxy:  # through a proxy, the only connection made is the one to the proxy
                raise ProxyError(e, request=request) from e
            raise ConnectionError(e, request=request) from e
        except errors.ProtocolError as e:
            message = e.message.lower()
            if _BAD_CONTENT_LENGTH in message:
                raise InvalidHeader(e, request=request) from e
            if _BODY_FAILURE in message:  # the head had come: requests reading the body
                raise ChunkedEncodingError(e, request=request) from e
            raise ConnectionError(e, request=request) from e
        except errors.StaleConnectionError as e:
            raise ConnectionError(e, request=request) from e
        except errors.AgentError as e:
            raise RequestException(e, request=request) from e
        return self.build_response(request, resp)

    @staticmethod
    def _head(resp: Any) -> Tuple[requests.Response, http.client.HTTPMessage]:
        pairs = _latin1_pairs(resp)
        msg = http.client.HTTPMessage()
        joined: Dict[str, List[str]] = {}
        for name, value in pairs:
            msg[name] = value  # appends: repeated lines are kept (Set-Cookie)
            joined.setdefault(name, []).append(value)
        r = requests.Response()
        r.status_code = resp.status
        # repeated values joined with ", ", as urllib3's HTTPHeaderDict
        r.headers = CaseInsensitiveDict({n: ", ".join(vs) for n, vs in joined.items()})
        r.encoding = get_encoding_from_headers(r.headers)
        r.reason = http.client.responses.get(resp.status, "")
        return r, msg

    def build_stream_response(self, request: requests.PreparedRequest, resp: StreamResponse) -> requests.Response:
        """A :class:`requests.Response` whose ``raw`` reads from a keepalive_agent
        :class:`~keepalive_agent.StreamResponse` (``stream=True``)."""
        try:
            r, msg = self._head(resp)
            raw = _StreamRaw(resp, msg, request)
            r.raw = raw
            r.url = request.url or ""
            r.request = request
            r.connection = self  # type: ignore[assignment]
            r.elapsed = datetime.timedelta(microseconds=resp.timings.ttfb_us)
            extract_cookies_to_jar(r.cookies, request, r.raw)
            if not resp.closed:
                with self._lock:
                    self._streams.add(raw)
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
        """Closes the ``stream=True`` responses still open (aborting them: their
        connections are closed), every agent the adapter made (per proxy, per TLS
        setting, and its own) and forgets them. The adapter stays usable: the next
        request makes the agent it needs, as ``HTTPAdapter`` stays usable after
        ``close()``. A given agent is left open."""
        with self._lock:
            streams = list(self._streams)
            self._streams = weakref.WeakSet()
            agents = list(self._agents.values())
            self._agents.clear()
        for raw in streams:
            raw.close()
        for agent in agents:
            agent.close()
        if self._owns_agent:
            self.agent.close()
