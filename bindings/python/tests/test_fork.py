"""Fork safety (SPEC §6.27): os.fork() and multiprocessing (fork) after the parent used an agent."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any, List, Optional

import pytest

from keepalive_agent import Agent

# The agent the multiprocessing workers inherit from the parent (fork start method).
_inherited: Optional[Agent] = None


def _wait_child(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.02)


def test_os_fork_child_requests_work_and_parent_keeps_its_pool(srv) -> None:
    with Agent() as a:
        first = a.get(srv.http_url)
        assert first.status == 200
        parent_port = first.headers["x-remote-port"]
        pid = os.fork()
        if pid == 0:  # child: report through the exit code only
            code = 10
            try:
                r1 = a.get(srv.http_url, timeout=5)  # the parent's agent
                code = 11
                if r1.status == 200 and not r1.reused and r1.headers["x-remote-port"] != parent_port:
                    code = 12
                    r2 = a.get(srv.http_url, timeout=5)  # the child pools its own connection
                    with Agent() as b:  # a new agent in the child
                        r3 = b.get(srv.http_url, timeout=5)
                    if r2.reused and r3.status == 200:
                        code = 0
            except BaseException:
                pass
            os._exit(code)
        assert _wait_child(pid) == 0
        # The parent's pooled connection was not touched by the child.
        r = a.get(srv.http_url)
        assert r.status == 200 and r.reused and r.headers["x-remote-port"] == parent_port


def _mp_worker(url: str, q: Any) -> None:
    try:
        assert _inherited is not None
        rs = [_inherited.get(url, timeout=5) for _ in range(3)]
        with Agent(keep_alive=False) as fresh:
            rf = fresh.get(url, timeout=5)
        q.put(("ok", [r.status for r in rs] + [rf.status], [r.reused for r in rs]))
    except BaseException as e:
        q.put(("error", repr(e), None))


def _pool_task(url: str) -> int:
    assert _inherited is not None
    return _inherited.get(url, timeout=5).status


def test_multiprocessing_fork(srv) -> None:
    global _inherited
    ctx = multiprocessing.get_context("fork")
    with Agent() as a:
        _inherited = a
        try:
            parent_port = a.get(srv.http_url).headers["x-remote-port"]
            q = ctx.Queue()
            procs = [ctx.Process(target=_mp_worker, args=(srv.http_url, q)) for _ in range(2)]
            for p in procs:
                p.start()
            results: List[Any] = [q.get(timeout=30) for _ in procs]
            for p in procs:
                p.join(timeout=30)
                assert p.exitcode == 0
            for kind, statuses, reused in results:
                assert kind == "ok", statuses
                assert statuses == [200, 200, 200, 200]
                assert reused == [False, True, True]

            with ctx.Pool(2) as pool:
                assert pool.map(_pool_task, [srv.http_url] * 6, chunksize=1) == [200] * 6

            r = a.get(srv.http_url)
            assert r.reused and r.headers["x-remote-port"] == parent_port
        finally:
            _inherited = None
