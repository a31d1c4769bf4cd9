"""Events from inside the engine as records of logging.getLogger("keepalive_agent"), and
KEEPALIVE_AGENT_DEBUG=1 printing them to stderr from the library itself."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any, List

import pytest

import keepalive_agent
from keepalive_agent import Agent, errors

from conftest import wait_until

LOGGER = "keepalive_agent"


def _records(caplog: Any, connection_closed: bool = False) -> List[logging.LogRecord]:
    """The agent's event records so far; connection_closed ones (which come from other
    threads, at their own time) only when asked."""
    return [
        r for r in caplog.records
        if r.name == LOGGER and hasattr(r, "event") and (connection_closed or r.event != "connection_closed")
    ]


def _kinds(records: List[logging.LogRecord]) -> List[str]:
    return [r.event for r in records]


@pytest.fixture
def debug_log(caplog: Any) -> Any:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return caplog


def test_new_then_reused_connection(srv, debug_log) -> None:
    port = srv.info["http_port"]
    with Agent(events=True) as a:
        assert a.events
        a.get(srv.http_url)
        new = _records(debug_log)
        assert _kinds(new) == ["connect_start", "connect_done", "request_sent", "response_head"]
        start, done, sent, head = new
        conn = start.connection
        assert conn > 0 and all(r.connection == conn for r in new)
        assert all(r.origin == f"http://127.0.0.1:{port}" for r in new)
        assert all(r.levelno == logging.DEBUG for r in new)
        assert (start.address, start.family) == (f"127.0.0.1:{port}", 4)
        assert (done.address, done.code, done.code_name) == (f"127.0.0.1:{port}", 0, None)
        assert (sent.reused, sent.detail) == (False, "GET / HTTP/1.1")
        assert (head.status, head.http_version, head.reused) == (200, "1.1", False)
        assert sent.headers is None  # no headers unless asked
        assert sent.getMessage() == f"> GET / HTTP/1.1 (#{conn}, new connection)"
        assert head.getMessage() == f"< HTTP/1.1 200 (#{conn})"
        assert start.getMessage().startswith(f"*   Trying 127.0.0.1:{port}")

        debug_log.clear()
        a.get(srv.http_url + "again")
        reused = _records(debug_log)
        assert _kinds(reused) == ["request_sent", "response_head"]
        assert all(r.connection == conn and r.reused for r in reused)
        assert reused[0].detail == "GET /again HTTP/1.1"
        assert srv.stats()["accepted"] == 1


def test_stale_connection_retried(srv, debug_log) -> None:
    with Agent(events=True) as a:
        a.get(srv.http_url)
        first = _records(debug_log)[0].connection
        debug_log.clear()
        r = a.get(srv.http_url + "?rst_if_reused=1")  # RST on the reused one, retried on a new one
        assert r.status == 200 and not r.reused
        recs = _records(debug_log)
        assert _kinds(recs) == [
            "request_sent", "retry", "connect_start", "connect_done", "request_sent", "response_head",
        ]
        assert recs[0].reused and recs[0].connection == first
        assert recs[1].code != 0 and recs[1].detail
        second = recs[2].connection
        assert second != first
        assert all(r.connection == second for r in recs[2:])
        assert not recs[4].reused and recs[5].status == 200

        def closed_first() -> bool:
            return any(
                r.event == "connection_closed" and r.connection == first
                and r.detail == "a request on it failed"
                for r in _records(debug_log, connection_closed=True)
            )

        wait_until(closed_first, what="the connection_closed event of the stale connection")


def test_tls_failure(srv, debug_log) -> None:
    url = f"https://127.0.0.1:{srv.info['https_wrong_host_port']}/"
    with Agent(events=True, ca_file=srv.ca_file) as a:
        with pytest.raises(errors.TLSError) as e:
            a.get(url)
        recs = _records(debug_log)
        assert _kinds(recs) == ["connect_start", "connect_done", "tls_done"]
        assert recs[1].code == 0
        tls = recs[2]
        assert tls.code == e.value.code and tls.code_name == "AGENT_CODE_TLS"
        assert tls.detail
        assert "TLS handshake" in tls.getMessage() and "failed" in tls.getMessage()


def test_no_secret_in_any_record(srv, debug_log) -> None:
    secrets = ["s3cret-bearer", "s3cret-proxy", "s3cret-cookie"]
    headers = [
        ("Authorization", "Bearer s3cret-bearer"),
        ("Proxy-Authorization", "Basic s3cret-proxy"),
        ("Cookie", "session=s3cret-cookie"),
        ("X-Visible", "shown"),
    ]
    with Agent(events=True, event_headers=True) as a:
        a.get(srv.http_url + "?echo=1", headers=headers)
        a.get(srv.http_url + "?echo=1", headers=headers)
    recs = _records(debug_log, connection_closed=True)
    sent = [r for r in recs if r.event == "request_sent"]
    assert len(sent) == 2
    # The headers are there (so the check below looks at them), credentials redacted.
    block = sent[0].headers.lower()
    assert "x-visible: shown" in block
    assert "authorization: [redacted]" in block and "cookie: [redacted]" in block
    assert [r for r in recs if r.event == "response_head"][0].headers
    for r in debug_log.records:
        text = r.getMessage() + repr(vars(r))
        for secret in secrets:
            assert secret not in text, (secret, r.event)


def test_event_mask(srv, debug_log) -> None:
    with Agent(events=True, event_mask=["request_sent", "response_head"]) as a:
        a.get(srv.http_url)
    assert _kinds(_records(debug_log, connection_closed=True)) == ["request_sent", "response_head"]
    debug_log.clear()
    bit = 1 << keepalive_agent.EVENT_KINDS.index("connect_start")
    with Agent(events=True, event_mask=bit) as a:
        a.get(srv.http_url)
    assert _kinds(_records(debug_log, connection_closed=True)) == ["connect_start"]

    with pytest.raises(errors.InvalidOptionError):
        Agent(event_mask=1 << 9)
    with pytest.raises(errors.InvalidOptionError):
        Agent(event_mask=["connect"])
    with pytest.raises(TypeError):
        Agent(events="yes")


def test_off_installs_no_callback(srv, caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with Agent() as a:  # the logger is not enabled for DEBUG: off
        assert not a.events and a._event_callback is None
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with Agent(events=False) as a:
        assert not a.events and a._event_callback is None
        a.get(srv.http_url)
    assert _records(caplog, connection_closed=True) == []
    with Agent() as a:  # the logger is enabled for DEBUG now: on
        assert a.events and a._event_callback is not None
        a.get(srv.http_url)
    assert _records(caplog)
    # Closing the agent lets its callback go (after agent_free).
    assert a._event_callback is None


def test_a_failing_handler_never_reaches_the_library(srv, debug_log) -> None:
    class Boom(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("boom")

    log = logging.getLogger(LOGGER)
    boom = Boom()
    log.addFilter(boom)
    try:
        with Agent(events=True) as a:
            assert [a.get(srv.http_url).status for _ in range(3)] == [200] * 3
    finally:
        log.removeFilter(boom)


DEBUG_SCRIPT = r"""
import sys
import keepalive_agent as k
with k.Agent() as a:
    a.get(sys.argv[1])
    a.get(sys.argv[1])
"""


def test_keepalive_agent_debug_prints_to_stderr(srv) -> None:
    env = dict(os.environ, KEEPALIVE_AGENT_DEBUG="1")
    p = subprocess.run(
        [sys.executable, "-c", DEBUG_SCRIPT, srv.http_url], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    port = srv.info["http_port"]
    assert any(line.startswith(f"*   Trying 127.0.0.1 port {port}") for line in lines), p.stderr
    assert "> GET / HTTP/1.1 (#1, new connection)" in lines, p.stderr
    assert any(line.startswith("> GET / HTTP/1.1 (#1, reuse") for line in lines), p.stderr
    env.pop("KEEPALIVE_AGENT_DEBUG")
    p = subprocess.run(
        [sys.executable, "-c", DEBUG_SCRIPT, srv.http_url], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and "Trying" not in p.stderr, p.stderr
