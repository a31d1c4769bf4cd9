"""Events from inside the engine (``agent_options_set_events``) as ``logging`` records.

Each event becomes one DEBUG record of the logger ``"keepalive_agent"``: a message in the
style of ``curl -v`` and the event's fields as record attributes (``extra=``)::

    record.event        "connect_start", "connect_done", "tls_done", "request_sent",
                        "response_head", "retry", "connection_closed", "queued", "dequeued"
    record.connection   the connection's id, unique in the process (0: none)
    record.origin       "http://127.0.0.1:8080" (with "(through the proxy ...)" via a proxy)
    record.address      connect events: "127.0.0.1:8080" or "[::1]:8080"; else None
    record.family       connect events: 4 or 6; else 0
    record.status       response_head: the status code; else 0
    record.http_version "1.1" or "2" once known; else None
    record.reused       request_sent / response_head: the connection had served a request
    record.code         0 (OK), or the failure's code (as ``AgentError.code``)
    record.code_name    e.g. "AGENT_CODE_TLS"; None when ``code`` is 0
    record.detail       words for people ("" when there are none)
    record.headers      with ``event_headers=True``, request_sent / response_head:
                        "Name: value\\r\\n" lines (credentials redacted by the library);
                        else None

The callback runs on the thread where the event happens: a library thread, or the caller's
own inside a blocking request. It never raises into C.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Union

from . import _native, errors

logger = logging.getLogger("keepalive_agent")

EVENT_KINDS = _native.TRACE_KINDS
"""The event kinds, in the order of their bits: ``1 << EVENT_KINDS.index(name)``."""

_VERSIONS = {10: "1.0", 11: "1.1", 20: "2"}

EventMaskArg = Union[int, Iterable[str], None]


def event_mask(mask: EventMaskArg, headers: bool) -> int:
    """The C mask from ``event_mask`` (an int of ``1 << kind`` bits, or kind names; None or
    0 = every kind) and ``event_headers``. Refuses unknown bits and names."""
    if mask is None:
        bits = 0
    elif isinstance(mask, bool):
        raise TypeError("event_mask must be an int or a list of event names, not bool")
    elif isinstance(mask, int):
        if not 0 <= mask <= _native.TRACE_MASK_ALL:
            raise errors.InvalidOptionError(
                _native.INVALID_OPTION,
                f"event_mask = {mask:#x} has bits outside 0..={_native.TRACE_MASK_ALL:#x}"
                " (one bit per event kind; event_headers=True asks for the headers)",
            )
        bits = mask
    elif isinstance(mask, str):
        raise TypeError("event_mask must be an int or a list of event names, not a str")
    else:
        bits = 0
        for name in mask:
            if name not in EVENT_KINDS:
                raise errors.InvalidOptionError(
                    _native.INVALID_OPTION,
                    f"event_mask: unknown event {name!r}; expected one of " + ", ".join(EVENT_KINDS),
                )
            bits |= 1 << EVENT_KINDS.index(name)
    return bits | (_native.TRACE_WITH_HEADERS if headers else 0)


def _text(p: Optional[bytes]) -> Optional[str]:
    return None if p is None else p.decode("utf-8", "replace")


def _message(kind: str, ev: Any, conn: int, origin: Optional[str], address: Optional[str],
             detail: str, version: Optional[str], code_name: Optional[str]) -> str:
    c = f"#{conn}"
    if kind == "connect_start":
        return f"*   Trying {address} for {origin} ({c})..."
    if kind == "connect_done":
        if code_name is None:
            return f"* Connected to {address} for {origin} ({c})"
        return f"* Failed to connect to {address} for {origin} ({c}): {code_name}: {detail}"
    if kind == "tls_done":
        if code_name is None:
            return f"* TLS: {detail} ({c})"
        return f"* TLS handshake with {origin} failed ({c}): {code_name}: {detail}"
    if kind == "request_sent":
        return f"> {detail} ({c}, {'reused connection' if ev.reused else 'new connection'})"
    if kind == "response_head":
        return f"< HTTP/{version} {ev.status} ({c})"
    if kind == "retry":
        return f"* Retrying a request to {origin} on another connection: {detail}" + (
            f" ({code_name})" if code_name else ""
        )
    if kind == "connection_closed":
        return f"* Connection {c} to {origin} closed: {detail}"
    if kind == "queued":
        return f"* Waiting for a connection to {origin}" + (f": {detail}" if detail else "")
    if kind == "dequeued":
        return f"* Got a connection to {origin}" + (f" ({c})" if conn else "")
    return f"* {kind} {origin} {detail}"


def _on_event(userdata: Any, event_p: Any) -> None:
    # Runs on library threads and on callers' threads inside blocking requests. Nothing
    # may escape into C: an exception here (a broken handler, interpreter shutdown) is lost.
    try:
        if not logger.isEnabledFor(logging.DEBUG):
            return
        ev = event_p.contents
        kind = EVENT_KINDS[ev.kind] if ev.kind < len(EVENT_KINDS) else f"event_{ev.kind}"
        origin = _text(ev.origin)
        address = _text(ev.address)
        detail = _text(ev.detail) or ""
        version = _VERSIONS.get(ev.version) or (str(ev.version) if ev.version else None)
        code = ev.code
        code_name = _native.code_name(code) if code else None
        conn = ev.connection
        logger.debug(
            "%s",
            _message(kind, ev, conn, origin, address, detail, version, code_name),
            extra={
                "event": kind,
                "connection": conn,
                "origin": origin,
                "address": address,
                "family": ev.family,
                "status": ev.status,
                "http_version": version,
                "reused": bool(ev.reused),
                "code": code,
                "code_name": code_name,
                "detail": detail,
                "headers": _text(ev.headers),
            },
        )
    except BaseException:  # noqa: BLE001 - never into C
        pass


def make_callback() -> Any:
    """A new C callback for one agent; it must outlive the agent (free the agent first)."""
    return _native.agent_trace_callback(_on_event)
