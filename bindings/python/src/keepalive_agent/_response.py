"""Response objects: plain Python data copied out of the native response."""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, make_dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Union,
    overload,
)

from . import _native, errors

__all__ = ["Headers", "Timings", "PoolStats", "Response"]

_T = Any


class Headers(Mapping[str, str]):
    """Response headers: case-insensitive, every repeated line kept, in received order.

    As a mapping, ``h[name]`` and ``h.get(name)`` give all values of ``name`` joined with
    ``", "`` (RFC 9110 §5.3), and ``keys()``/``items()`` see each name once (lowercase).
    ``get_all(name)`` gives the values one by one (use it for ``Set-Cookie``) and
    ``multi_items()`` every ``(name, value)`` line.
    """

    __slots__ = ("_items_", "_index_", "_raw")

    def __init__(self, items: Iterable[Tuple[str, str]] = ()) -> None:
        self._raw: Optional[bytes] = None
        self._set([(n.lower(), v) for n, v in items])

    @classmethod
    def _from_block(cls, block: bytes) -> "Headers":
        """From the native header block, parsed on first access (most callers never look)."""
        h = cls.__new__(cls)
        h._raw = block
        return h

    def _set(self, items: List[Tuple[str, str]]) -> None:
        self._items_ = items
        index: Dict[str, List[str]] = {}
        for n, v in items:
            index.setdefault(n, []).append(v)
        self._index_ = index

    @property
    def _items(self) -> List[Tuple[str, str]]:
        if self._raw is not None:
            self._load()
        return self._items_

    @property
    def _index(self) -> Dict[str, List[str]]:
        if self._raw is not None:
            self._load()
        return self._index_

    def _load(self) -> None:
        raw, self._raw = self._raw, None
        self._set(_native.parse_header_block(raw or b""))

    def __getitem__(self, name: str) -> str:
        return ", ".join(self._index[name.lower()])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def get(self, name: str) -> Optional[str]: ...
    @overload
    def get(self, name: str, default: Union[str, _T]) -> Union[str, _T]: ...
    def get(self, name: str, default: Any = None) -> Any:
        values = self._index.get(name.lower())
        return ", ".join(values) if values is not None else default

    def get_all(self, name: str) -> List[str]:
        """Every value of ``name``, one per header line ([] when absent)."""
        return list(self._index.get(name.lower(), ()))

    def raw_items(self) -> List[Tuple[bytes, bytes]]:
        """Every header line as ``(lowercase name, value)`` bytes, as received (values
        not decoded): what the httpx transports hand to ``httpx.Response``."""
        raw = self._raw
        if raw is not None:
            out = []
            for line in raw.split(b"\r\n")[:-1]:
                name, _, value = line.partition(b": ")
                out.append((name, value))
            return out
        # Parsed already: values were decoded as UTF-8, else Latin-1, so encoding them as
        # UTF-8 gives back the bytes received unless they were not UTF-8.
        return [(n.encode("latin-1"), v.encode("utf-8")) for n, v in self._items_]

    def multi_items(self) -> List[Tuple[str, str]]:
        """Every header line as ``(lowercase name, value)``, repeated names included."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True)
class Timings:
    """Timings of one request in microseconds (``agent_timings``).

    ``queued_us``, ``dns_us``, ``connect_us`` and ``tls_us`` are phase durations (0 when
    the phase did not happen, e.g. on a reused connection); ``sent_us``, ``ttfb_us`` and
    ``total_us`` count from the start of the request.
    """

    queued_us: int
    dns_us: int
    connect_us: int
    tls_us: int
    sent_us: int
    ttfb_us: int
    total_us: int


# PoolStats: one int field per statistic the library lists (agent_stats_field_name), in its
# order, then keep_alive. Built at import, so a statistic added to the library appears here.
if TYPE_CHECKING:  # type checkers cannot see fields that exist only at run time

    class PoolStats:
        keep_alive: bool

        def __init__(self, *values: int, keep_alive: bool) -> None: ...
        def __getattr__(self, name: str) -> int: ...

else:
    PoolStats = make_dataclass(
        "PoolStats",
        [(name, int) for name in _native.STATS_FIELDS] + [("keep_alive", bool)],
        frozen=True,
        namespace={
            "__module__": __name__,
            "__doc__": """Counters (only grow) and gauges (``active``, ``idle``, ``queued``) of
    an agent or one origin: a field per statistic of the library (``connections_opened``,
    ``requests``, ``reused_requests``, ``idle``, ...; see ``agent_stats_field_name``).
    ``keep_alive`` is the agent's effective setting.""",
        },
    )


_NO_TRAILERS: List[Tuple[str, str]] = []


class Response:
    """A complete response. Everything is plain Python data: the native response was
    copied and freed before this object was made. ``http_version`` is ``"1.1"``, or
    ``"2"`` for HTTP/2."""

    __slots__ = (
        "status", "http_version", "headers", "body", "reused", "_timings", "url", "method", "_trailers",
    )

    status: int
    http_version: str
    headers: Headers
    body: bytes
    reused: bool
    url: str
    method: str

    def __init__(
        self,
        *,
        status: int,
        http_version: str,
        headers: Headers,
        body: bytes,
        reused: bool,
        timings: Any,
        url: str,
        method: str,
        trailers: Union[Headers, Iterable[Tuple[str, str]], None] = None,
    ) -> None:
        self.status = status
        self.http_version = http_version
        self.headers = headers
        self.body = body
        self.reused = reused
        self._timings = timings  # a Timings, or the raw values until first read
        self.url = url
        self.method = method
        self._trailers = trailers  # a Headers, or the (name, value) pairs (None: none)

    @property
    def trailers(self) -> Headers:
        """The trailer fields that followed the body (HTTP/2, or a chunked HTTP/1.1
        body), as a read-only :class:`Headers`: case-insensitive, repeated names kept.
        Empty when the response had none."""
        t = self._trailers
        if not isinstance(t, Headers):
            t = self._trailers = Headers(t or _NO_TRAILERS)
        return t

    @property
    def timings(self) -> Timings:
        """Timings of this request in microseconds."""
        t = self._timings
        if not isinstance(t, Timings):
            if isinstance(t, tuple):  # values copied out of the native response, the seven
                # timings last (the whole agent_response_parts as unpacked, or only them)
                t = self._timings = Timings(*t[-7:])
            else:
                t = self._timings = Timings(
                    t.queued_us, t.dns_us, t.connect_us, t.tls_us, t.sent_us, t.ttfb_us, t.total_us
                )
        return t

    @property
    def ok(self) -> bool:
        """True for a status below 400, as requests' ``Response.ok`` (so 3xx is ok too;
        httpx's ``is_success`` is 2xx only)."""
        return self.status < 400

    def raise_for_status(self) -> "Response":
        """Raises :class:`~keepalive_agent.errors.HTTPStatusError` when :attr:`ok` is
        false (status 400 or more), with this response as its ``.response``; else returns
        this response (so ``agent.get(url).raise_for_status().json()`` reads on)."""
        if self.status >= 400:
            raise errors.HTTPStatusError._for(self)
        return self

    @property
    def encoding(self) -> str:
        """The charset of ``Content-Type``, else ``utf-8``."""
        ctype = self.headers.get("content-type", "")
        for part in ctype.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.strip().lower() == "charset" and value:
                return value.strip().strip("\"'")
        return "utf-8"

    @property
    def text(self) -> str:
        """The body decoded with :attr:`encoding` (undecodable bytes replaced)."""
        try:
            return self.body.decode(self.encoding, "replace")
        except LookupError:  # unknown charset
            return self.body.decode("utf-8", "replace")

    def json(self, **kwargs: Any) -> Any:
        """The body parsed as JSON (``json.loads``)."""
        return _json.loads(self.body, **kwargs)

    def __repr__(self) -> str:
        return f"<Response [{self.status}] {len(self.body)} bytes{' reused' if self.reused else ''}>"
