"""Keep-alive on and off per client in one process, and the environment switch (SPEC §3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from keepalive_agent import Agent

from conftest import wait_until


def _sent_connection_close(r) -> bool:
    return any(n.lower() == "connection" and v.lower() == "close" for n, v in r.json()["headers"])


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_reuse_on_and_off_in_one_process(srv, scheme: str) -> None:
    url = srv.http_url if scheme == "http" else srv.https_url
    with Agent(keep_alive=True, ca_file=srv.ca_file) as on, Agent(keep_alive=False, ca_file=srv.ca_file) as off:
        assert on.keep_alive is True and off.keep_alive is False

        srv.reset()
        rs = [on.get(url + "?echo=1") for _ in range(10)]
        assert srv.stats()["accepted"] == 1
        assert [r.reused for r in rs] == [False] + [True] * 9
        assert len({r.headers["x-remote-port"] for r in rs}) == 1
        assert not any(_sent_connection_close(r) for r in rs)

        srv.reset()
        rs = [off.get(url + "?echo=1") for _ in range(10)]
        st = srv.stats()
        assert st["accepted"] == 10
        assert not any(r.reused for r in rs)
        assert len({r.headers["x-remote-port"] for r in rs}) == 10
        assert all(_sent_connection_close(r) for r in rs)
        s = off.stats()
        assert (s.connections_opened, s.idle, s.reused_requests, s.keep_alive) == (10, 0, 0, False)
        # The off client leaves no socket open (connections lists those accepted since reset).
        wait_until(
            lambda: not any(c["open"] for c in srv.stats()["connections"]),
            what="every connection of the keep-alive-off client to be closed",
        )
        assert len(srv.stats()["connections"]) == 10

        # The keep-alive client still reuses its connection after the other one ran.
        srv.reset()
        r = on.get(url)
        assert r.reused and srv.stats()["accepted"] == 0
        assert on.stats().idle == 1


ENV_SCRIPT = r"""
import json, sys
import keepalive_agent as k
url = sys.argv[1]
out = {}
for name, kw in [("default", {}), ("explicit_on", {"keep_alive": True}), ("explicit_off", {"keep_alive": False})]:
    with k.Agent(**kw) as a:
        rs = [a.get(url + "?echo=1") for _ in range(3)]
        out[name] = {
            "keep_alive": a.keep_alive,
            "stats_keep_alive": a.stats().keep_alive,
            "reused": [r.reused for r in rs],
            "close_sent": [any(n.lower() == "connection" and v.lower() == "close"
                               for n, v in r.json()["headers"]) for r in rs],
        }
print(json.dumps(out))
"""

ON = {"keep_alive": True, "stats_keep_alive": True, "reused": [False, True, True], "close_sent": [False] * 3}
OFF = {"keep_alive": False, "stats_keep_alive": False, "reused": [False] * 3, "close_sent": [True] * 3}
ENV_NAMES = ("KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED", "AWS_NODEJS_CONNECTION_REUSE_ENABLED")


@pytest.mark.parametrize(
    "env, default_on",
    [
        ({}, True),
        ({"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED": "false"}, False),
        ({"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED": "0"}, False),
        ({"AWS_NODEJS_CONNECTION_REUSE_ENABLED": "FALSE"}, False),
        ({"AWS_NODEJS_CONNECTION_REUSE_ENABLED": "0"}, False),
        ({"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED": "True"}, True),
        ({"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED": "banana"}, True),
    ],
)
def test_environment_switch_and_explicit_setting_wins(srv, env, default_on: bool) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    clean.update(env)
    p = subprocess.run(
        [sys.executable, "-c", ENV_SCRIPT, srv.http_url], env=clean, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["default"] == (ON if default_on else OFF)
    assert out["explicit_on"] == ON  # Agent(keep_alive=True) wins over the environment
    assert out["explicit_off"] == OFF  # and so does keep_alive=False
