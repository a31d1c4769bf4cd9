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
import http.client, json, sys
import keepalive_agent as k
url, admin_port = sys.argv[1], int(sys.argv[2])

def admin(path):
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    c.request("GET", path)
    data = c.getresponse().read()
    c.close()
    return json.loads(data)

out = {}
for name, kw in [
    ("default", {}),
    ("explicit_on", {"keep_alive": True}),
    ("explicit_off", {"keep_alive": False}),
    ("ignore_environment", {"ignore_environment": True}),
    ("ignore_environment_on", {"keep_alive": True, "ignore_environment": True}),
    ("ignore_environment_off", {"keep_alive": False, "ignore_environment": True}),
]:
    admin("/reset")
    with k.Agent(**kw) as a:
        rs = [a.get(url + "?echo=1") for _ in range(3)]
        out[name] = {
            "keep_alive": a.keep_alive,
            "stats_keep_alive": a.stats().keep_alive,
            "source": a.keep_alive_source,
            "describe": a.keep_alive_describe(),
            "accepted": admin("/stats")["accepted"],
            "reused": [r.reused for r in rs],
            "close_sent": [any(n.lower() == "connection" and v.lower() == "close"
                               for n, v in r.json()["headers"]) for r in rs],
        }
print(json.dumps(out))
"""

ON = {"keep_alive": True, "stats_keep_alive": True, "accepted": 1, "reused": [False, True, True],
      "close_sent": [False] * 3}
OFF = {"keep_alive": False, "stats_keep_alive": False, "accepted": 3, "reused": [False] * 3,
       "close_sent": [True] * 3}
ENV_NAMES = ("KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED", "AWS_NODEJS_CONNECTION_REUSE_ENABLED")


def _behaviour(result):
    return {k: v for k, v in result.items() if k not in ("source", "describe")}


@pytest.mark.parametrize(
    "env, switch_off",
    [
        ({}, False),
        ({"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED": "false"}, True),
        ({"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED": "0"}, True),
        ({"AWS_NODEJS_CONNECTION_REUSE_ENABLED": "FALSE"}, True),
        ({"AWS_NODEJS_CONNECTION_REUSE_ENABLED": "0"}, True),
        ({"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED": "True"}, False),
        ({"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED": "banana"}, False),
    ],
)
def test_environment_switch_is_a_kill_switch(srv, env, switch_off: bool) -> None:
    """SPEC §3: false/0 in either variable turns reuse off for every agent, keep_alive=True
    included; only ignore_environment=True keeps it on; keep_alive=False is always off."""
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    clean.update(env)
    p = subprocess.run(
        [sys.executable, "-c", ENV_SCRIPT, srv.http_url, str(srv.admin_port)],
        env=clean, capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    (var, value), = env.items() if env else ((None, None),)

    if switch_off:
        for name in ("default", "explicit_on", "explicit_off"):
            assert _behaviour(out[name]) == OFF, name  # N requests, N connections
            assert out[name]["source"] == "environment"
            assert out[name]["describe"] == f'off: environment, {var}="{value}"'
    else:
        assert _behaviour(out["default"]) == ON
        assert _behaviour(out["explicit_on"]) == ON
        assert out["explicit_on"]["source"] == "argument"
        assert _behaviour(out["explicit_off"]) == OFF
        assert out["explicit_off"]["source"] == "argument"
        assert out["explicit_off"]["describe"].startswith("off: argument")
    assert _behaviour(out["ignore_environment"]) == ON  # one connection, whatever the switch
    assert out["ignore_environment"]["source"] == "default"
    assert _behaviour(out["ignore_environment_on"]) == ON
    assert out["ignore_environment_on"]["source"] == "argument"
    assert _behaviour(out["ignore_environment_off"]) == OFF  # keep_alive=False always wins
    assert out["ignore_environment_off"]["source"] == "argument"

    if not env:
        assert out["default"]["source"] == "default"
        assert out["default"]["describe"] == "on: default"
    elif value.lower() == "true":
        assert out["default"]["source"] == "environment"
        assert out["default"]["describe"].startswith("on: environment")
    elif value == "banana":  # anything but true/false/1/0 is ignored, and the sentence says so
        assert out["default"]["source"] == "default"
        assert out["default"]["describe"].startswith(f'on: default; {var}="banana" (ignored')
    if env:
        # The sentence of an agent that ignores the switch still reports what it said.
        assert var in out["ignore_environment"]["describe"]


def test_keep_alive_read_back_without_the_switch(monkeypatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    with Agent() as a, Agent(keep_alive=True) as on, Agent(keep_alive=False) as off:
        assert (a.keep_alive, a.keep_alive_source) == (True, "default")
        assert (on.keep_alive, on.keep_alive_source) == (True, "argument")
        assert (off.keep_alive, off.keep_alive_source) == (False, "argument")
        assert a.keep_alive_describe().startswith("on: default")
        assert off.keep_alive_describe().startswith("off: argument")


def test_switch_is_read_when_the_agent_is_created(monkeypatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_NODEJS_CONNECTION_REUSE_ENABLED", "false")
    with Agent(keep_alive=True) as a, Agent(ignore_environment=True) as b:
        assert (a.keep_alive, a.keep_alive_source) == (False, "environment")
        assert (b.keep_alive, b.keep_alive_source) == (True, "default")
    with pytest.raises(TypeError):
        Agent(ignore_environment="yes")


def test_adapters_pass_the_new_options_through(monkeypatch) -> None:
    pytest.importorskip("requests")
    from keepalive_agent.requests_adapter import KeepAliveAdapter

    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED", "false")
    adapter = KeepAliveAdapter(ignore_environment=True, events=True)
    try:
        assert adapter.agent.keep_alive and adapter.agent.keep_alive_source == "default"
        assert adapter.agent.events
    finally:
        adapter.close()
    adapter = KeepAliveAdapter(keep_alive=True)
    try:
        assert not adapter.agent.keep_alive and adapter.agent.keep_alive_source == "environment"
    finally:
        adapter.close()

    pytest.importorskip("httpx")
    from keepalive_agent.httpx import AsyncKeepAliveTransport, KeepAliveTransport

    t = KeepAliveTransport(ignore_environment=True, events=False)
    try:
        assert t.agent.keep_alive and not t.agent.events
    finally:
        t.close()
    at = AsyncKeepAliveTransport(keep_alive=True)
    try:
        assert not at.agent.keep_alive
    finally:
        at.agent.close()
