"""Package basics: loading, version, Agent options, Response, stats, lifetime."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keepalive_agent
from keepalive_agent import Agent, Headers, errors

from conftest import pattern, wait_until


def test_version_matches_library() -> None:
    assert keepalive_agent.__version__ == "0.1.0"
    assert keepalive_agent.library_version.split(".")[:2] == ["0", "1"]
    assert Path(keepalive_agent.library_path).is_file()
    assert Path(keepalive_agent.__file__).with_name("py.typed").is_file()


def test_missing_library_error_lists_every_path_tried(tmp_path: Path, monkeypatch) -> None:
    from keepalive_agent import _native

    paths = [tmp_path / "a" / "libkeepalive_agent.so", tmp_path / "libkeepalive_agent.so"]
    paths[1].write_bytes(b"not a shared object")
    monkeypatch.setattr(_native, "candidate_paths", lambda: paths)
    with pytest.raises(ImportError) as ei:
        _native._load()
    msg = str(ei.value)
    assert f"{paths[0]} (not found)" in msg and str(paths[1]) in msg and "KEEPALIVE_AGENT_LIB" in msg


def test_lookup_order(tmp_path: Path) -> None:
    from keepalive_agent import _native

    env = dict(os.environ, KEEPALIVE_AGENT_LIB=str(tmp_path / "libkeepalive_agent.so"))
    code = "from keepalive_agent import _native as n; print([str(p) for p in n.candidate_paths()])"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    # Unusable: a warning names it, and the next candidate is loaded.
    assert p.returncode == 0 and "KEEPALIVE_AGENT_LIB" in p.stderr, p.stderr
    paths = eval(p.stdout)
    assert paths[0] == env["KEEPALIVE_AGENT_LIB"]
    assert paths[1] == str(Path(_native.__file__).resolve().parent / "libkeepalive_agent.so")
    if _native._repo_root() is not None:  # installed inside the checkout (build/venv) or run from src
        assert paths[2:] == [
            str(_native._repo_root() / "target" / d / "libkeepalive_agent.so") for d in ("release", "debug")
        ]
    env["KEEPALIVE_AGENT_LIB"] = str(keepalive_agent.library_path)
    code = "import keepalive_agent as k; print(k.library_path)"
    p = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == str(keepalive_agent.library_path), p.stderr


def test_response_fields(srv) -> None:
    with Agent() as a:
        r = a.get(srv.http_url)
        assert r.status == 200 and r.ok
        assert r.body == b"hello, world\n"
        assert r.text == "hello, world\n"
        assert r.http_version == "1.1"
        assert r.reused is False
        assert r.headers["X-Conn-Requests"] == "1"
        assert r.headers["x-conn-requests"] == "1"
        assert "X-REMOTE-PORT" in r.headers
        assert r.headers.get_all("Content-Length") == ["13"]
        assert r.headers.get("x-absent") is None and r.headers.get("x-absent", "d") == "d"
        assert r.timings.connect_us > 0 and r.timings.total_us >= r.timings.ttfb_us > 0
        r2 = a.get(srv.http_url)
        assert r2.reused is True and r2.headers["x-conn-requests"] == "2"
        assert r2.timings.connect_us == 0
        s = a.stats()
        assert (s.connections_opened, s.requests, s.reused_requests, s.active, s.idle) == (1, 2, 1, 0, 1)
        assert s.keep_alive is True
        o = a.origin_stats(srv.http_url.rstrip("/"))
        assert o.requests == 2


def test_a_body_in_pieces_is_copied_once_into_its_bytes(srv, monkeypatch) -> None:
    """A body that arrives in several reads is copied by the engine straight into the
    ``bytes`` object (``agent_response_copy_body``), not joined natively first."""
    from keepalive_agent import _agent, _native

    assert _native.new_bytes is not None  # CPython
    calls = {"copy": 0, "read": 0}
    copy, read = _agent._copy_body_raw, _agent._response_read_raw

    def counting_copy(*args):
        calls["copy"] += 1
        return copy(*args)

    def counting_read(*args):
        calls["read"] += 1
        return read(*args)

    monkeypatch.setattr(_agent, "_copy_body_raw", counting_copy)
    monkeypatch.setattr(_agent, "_response_read_raw", counting_read)
    url = srv.http_url + "?bytes=200000&chunked=1&chunks=8&chunk_delay_ms=5"
    with Agent() as a:
        r = a.get(url)
        assert type(r.body) is bytes and r.body == pattern(0, 200000)
        assert calls == {"copy": 1, "read": 0}
        assert hash(r.body) == hash(pattern(0, 200000))
        small = a.get(srv.http_url)  # one piece: read as before
        assert small.body == b"hello, world\n" and calls["copy"] == 1

        async def queued():
            return await a.request_async("GET", url)

        import asyncio

        r2 = asyncio.run(queued())
        assert r2.body == r.body and calls["copy"] == 2


def test_request_body_headers_and_json(srv) -> None:
    with Agent(user_agent="py-test/1") as a:
        r = a.post(
            srv.http_url + "?echo=1",
            body="héllo",
            headers=[("X-Twice", "a"), ("x-twice", "b"), ("X-Tab", "a\tb")],
        )
        e = r.json()
        assert e["method"] == "POST" and e["body_len"] == len("héllo".encode())
        hs = [(n.lower(), v) for n, v in e["headers"]]
        assert ("x-twice", "a") in hs and ("x-twice", "b") in hs and ("x-tab", "a\tb") in hs
        assert ("user-agent", "py-test/1") in hs
        r = a.put(srv.http_url + "?echo=1", json={"k": [1, 2]}, headers={"User-Agent": "mine"})
        e = r.json()
        hs = dict((n.lower(), v) for n, v in e["headers"])
        assert e["method"] == "PUT" and e["body_len"] == len(b'{"k":[1,2]}')
        assert hs["content-type"] == "application/json" and hs["user-agent"] == "mine"
        for method, call in [("PATCH", a.patch), ("DELETE", a.delete)]:
            assert call(srv.http_url + "?echo=1").json()["method"] == method
        h = a.head(srv.http_url)
        assert h.status == 200 and h.body == b""
        assert a.get(srv.http_url + "?status=404").status == 404
        big = a.get(srv.http_url + "?bytes=300000&chunked=1")
        assert len(big.body) == 300000


def test_headers_multidict() -> None:
    h = Headers([("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("Content-Type", "text/plain")])
    assert h["SET-COOKIE"] == "a=1, b=2"
    assert h.get_all("set-cookie") == ["a=1", "b=2"]
    assert list(h) == ["set-cookie", "content-type"] and len(h) == 2
    assert dict(h.items()) == {"set-cookie": "a=1, b=2", "content-type": "text/plain"}
    assert h.multi_items()[1] == ("set-cookie", "b=2")
    assert "Content-type" in h and "x" not in h and 1 not in h
    with pytest.raises(KeyError):
        h["x"]


def test_every_option_is_accepted(srv) -> None:
    ca_pem = Path(srv.ca_file).read_bytes()
    with Agent(
        keep_alive=True,
        keep_alive_msecs=2000,
        keep_alive_interval_msecs=1000,
        keep_alive_probes=3,
        max_sockets=4,
        max_total_sockets=8,
        max_free_sockets=2,
        scheduling="fifo",
        free_socket_timeout_msecs=3000,
        keep_alive_timeout_buffer_msecs=500,
        max_keep_alive_timeout_msecs=60000,
        max_socket_lifetime_msecs=60000,
        connect_timeout_msecs=5000,
        headers_timeout_msecs=5000,
        body_timeout_msecs=5000,
        retry_stale=False,
        max_response_bytes=1 << 20,
        ca_pem=ca_pem,
        ca_file=Path(srv.ca_file),
        use_system_roots=False,
        danger_accept_invalid_certs=False,
        user_agent="x/1",
    ) as a:
        assert a.get(srv.https_url).status == 200
        assert a.get(srv.https_url).reused


def test_invalid_options_raise_value_error() -> None:
    # Found by Python before C sees them.
    with pytest.raises(ValueError) as ei:
        Agent(scheduling="random")
    assert isinstance(ei.value, errors.InvalidOptionError) and ei.value.code == 3
    with pytest.raises(ValueError):
        Agent(max_sockets=-1)
    with pytest.raises(ValueError):
        Agent(max_sockets=1 << 32)
    with pytest.raises(TypeError):
        Agent(max_sockets="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Agent(keep_alive="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Agent(bogus=1)  # type: ignore[call-arg]
    # Refused against the library's own bound (agent_limit): mapped to ValueError too.
    with pytest.raises(ValueError) as ei:
        Agent(keep_alive_probes=200)
    assert isinstance(ei.value, errors.InvalidOptionError)
    assert ei.value.code == 3 and ei.value.code_name == "AGENT_CODE_INVALID_OPTION"
    assert "probes" in ei.value.message
    with pytest.raises(ValueError) as ei:
        Agent(ca_pem=b"not a certificate")
    assert ei.value.code == 3  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        Agent(ca_file="/nonexistent/ca.pem")


def test_close_is_idempotent_and_refuses_later_use(srv) -> None:
    a = Agent()
    a.get(srv.http_url)
    a.close()
    a.close()
    assert a.closed
    with pytest.raises(errors.CancelledError):
        a.get(srv.http_url)
    with pytest.raises(errors.CancelledError):
        a.stats()
    with Agent() as b:
        pass
    assert b.closed


def test_del_frees_the_agent_and_its_connections(srv) -> None:
    a = Agent()
    port = a.get(srv.http_url).headers["x-remote-port"]
    del a
    gc.collect()

    def closed() -> bool:
        conns = [c for c in srv.stats()["connections"] if str(c["remote_port"]) == port]
        return bool(conns) and all(not c["open"] and c["closed_by_client"] for c in conns)

    wait_until(closed, what="the dropped agent's connection to be closed by the client")


def test_panic_becomes_an_error() -> None:
    # agent_test_panic exists only in a library built with the test-hooks feature, which is
    # never the one under test: load it in a child process.
    hooks = os.environ.get("KEEPALIVE_AGENT_TEST_HOOKS_LIB")
    if not hooks:
        pytest.skip("needs KEEPALIVE_AGENT_TEST_HOOKS_LIB (a library built with the test-hooks feature); `make test` sets it")
    code = (
        "import json\n"
        "from keepalive_agent import _native, errors\n"
        "try:\n"
        "    _native.lib.agent_test_panic()\n"
        "except errors.AgentError as e:\n"
        "    print(json.dumps([type(e) is errors.AgentError, e.code, e.code_name]))\n"
    )
    env = dict(os.environ, KEEPALIVE_AGENT_LIB=hooks)
    p = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [True, 60, "AGENT_CODE_PANIC"], p.stdout


def test_stats_fields_are_the_librarys(srv) -> None:
    from keepalive_agent import _native

    names = []
    while _native.lib.agent_stats_field_name(len(names)) is not None:
        names.append(_native.lib.agent_stats_field_name(len(names)).decode())
    assert len(names) == _native.lib.agent_stats_field_count() and "requests" in names
    with Agent() as a:
        a.get(srv.http_url)
        for s in (a.stats(), a.origin_stats(srv.http_url)):
            assert list(dataclasses.asdict(s)) == names + ["keep_alive"]  # keep_alive: the binding's
            assert s.requests == 1 and s.keep_alive is True


def test_every_library_code_is_a_module_attribute() -> None:
    from keepalive_agent import _native

    codes = {}
    for value in range(128):
        name = _native.lib.agent_code_name(value).decode()
        if name != "AGENT_CODE_UNKNOWN":
            codes[name] = value
    assert codes["AGENT_CODE_OK"] == 0 and len(codes) > 1
    for name, value in codes.items():
        assert getattr(_native, name[len("AGENT_CODE_"):]) == value, name
        assert _native.code_name(value) == name
    assert _native.CODES == {name[len("AGENT_CODE_"):]: value for name, value in codes.items()}
    assert set(_native.ERROR_CLASSES) <= set(codes.values())


@pytest.mark.parametrize(
    "limit, option",
    [
        ("max_msecs", "connect_timeout_msecs"),
        ("max_keep_alive_msecs", "keep_alive_interval_msecs"),
        ("max_keep_alive_probes", "keep_alive_probes"),
        ("max_sockets", "max_free_sockets"),
    ],
)
def test_option_bounds_are_the_librarys(limit: str, option: str) -> None:
    from keepalive_agent import _native

    bound = ctypes.c_uint64()
    _native.lib.agent_limit(limit.encode(), ctypes.byref(bound))
    Agent(**{option: bound.value}).close()
    with pytest.raises(errors.InvalidOptionError) as ei:
        Agent(**{option: bound.value + 1})
    assert ei.value.message == f"{option} = {bound.value + 1} is out of range (0..={bound.value})"
