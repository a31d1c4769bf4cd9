"""Async-iterable uploads hold no library thread while the event loop produces their
items: the body source returns AGENT_SOURCE_PENDING and is woken from the loop. Every
waker taken is woken or freed exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from typing import Any, AsyncIterator, Dict

import pytest

from keepalive_agent import Agent, _body

from conftest import wait_until


class CountingLib:
    """Stands in for the library in ``_body``: counts the wakers taken, woken and freed."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._mu = threading.Lock()
        self.taken = self.woken = self.freed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def agent_body_source_waker(self) -> Any:
        w = self._lib.agent_body_source_waker()
        if w:
            with self._mu:
                self.taken += 1
        return w

    def agent_body_waker_wake(self, w: Any) -> None:
        if w:
            with self._mu:
                self.woken += 1
        self._lib.agent_body_waker_wake(w)

    def agent_body_waker_free(self, w: Any) -> None:
        if w:
            with self._mu:
                self.freed += 1
        self._lib.agent_body_waker_free(w)

    def balanced(self) -> bool:
        with self._mu:
            return self.taken == self.woken + self.freed


# Run in a child process: the number of library threads is fixed when the library starts.
SCRIPT = r"""
import asyncio, json, sys, time
from keepalive_agent import Agent, _body
sys.path.insert(0, sys.argv[2])
from test_upload_pending import CountingLib

url = sys.argv[1]
counting = _body.lib = CountingLib(_body.lib)
UPLOADS, CHUNKS, INTERVAL = 4, 10, 0.2  # 2 s per upload: a GET behind them would wait that long

async def slow():
    for _ in range(CHUNKS):
        await asyncio.sleep(INTERVAL)
        yield b"x" * 1000

async def main():
    out = {}
    async with Agent() as a:
        uploads = [asyncio.ensure_future(a.request_async("PUT", url + "?echo=1", body=slow()))
                   for _ in range(UPLOADS)]
        await asyncio.sleep(INTERVAL / 2)  # every upload has sent its head and waits for its body
        latencies = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = await a.request_async("GET", url + "?bytes=10")
            latencies.append((time.perf_counter() - t0) * 1000)
            assert r.status == 200 and r.body == b"abcdefghij"
            await asyncio.sleep(INTERVAL / 3)
        out["get_ms"] = latencies
        out["upload_lens"] = [(await u).json()["body_len"] for u in uploads]

        # Downloads of this process piped into uploads of this process, all at once.
        n = 300_000
        async def pipe(r):
            async for piece in r.aiter_bytes():
                yield piece
        downloads = [await a.stream_async("GET", url + f"?bytes={n}&chunked=1&chunks=6&chunk_delay_ms=50")
                     for _ in range(UPLOADS)]
        t0 = time.perf_counter()
        echoes = await asyncio.wait_for(asyncio.gather(*(
            a.request_async("PUT", url + "?echo=1", body=pipe(d), timeout=20) for d in downloads)), 30)
        out["pipe_ms"] = (time.perf_counter() - t0) * 1000
        out["pipe_lens"] = [e.json()["body_len"] for e in echoes]
        for d in downloads:
            await d.aclose()
        out["errors"] = a.stats().errors
    out["live_sources"] = _body.live_sources()
    out["wakers"] = [counting.taken, counting.woken, counting.freed]
    print(json.dumps(out))

asyncio.run(main())
"""


def test_slow_async_uploads_hold_no_library_thread(srv) -> None:
    env = dict(os.environ, KEEPALIVE_AGENT_WORKER_THREADS="2")
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, srv.http_url, os.path.dirname(__file__)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    print(f"GET beside 4 pending uploads (ms): {[round(ms, 1) for ms in out['get_ms']]}")
    assert max(out["get_ms"]) < 1000, out["get_ms"]
    assert out["upload_lens"] == [10_000] * 4
    assert out["pipe_lens"] == [300_000] * 4
    assert out["errors"] == 0 and out["live_sources"] == 0
    taken, woken, freed = out["wakers"]
    assert taken > 0 and taken == woken + freed, out["wakers"]


class Broke(Exception):
    pass


def test_wakers_are_woken_or_freed_when_uploads_fail_or_are_cancelled(srv, monkeypatch) -> None:
    counting = CountingLib(_body.lib)
    monkeypatch.setattr(_body, "lib", counting)

    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await asyncio.sleep(0.05)
        raise Broke("late failure")

    async def endless() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()
        yield b"never"  # pragma: no cover

    async def main() -> Dict[str, Any]:
        async with Agent() as a:
            with pytest.raises(Broke, match="late failure"):
                await a.request_async("POST", srv.http_url + "?echo=1", body=failing())
            # The request's deadline passes while the source is pending.
            with pytest.raises(Exception) as ei:
                await a.request_async("POST", srv.http_url + "?echo=1", body=endless(), timeout=0.3)
            timed_out = type(ei.value).__name__
            # Cancelled while pending.
            task = asyncio.ensure_future(a.request_async("POST", srv.http_url + "?echo=1", body=endless()))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The agent closed while pending.
            b = Agent()
            task = asyncio.ensure_future(b.request_async("POST", srv.http_url + "?echo=1", body=endless()))
            await asyncio.sleep(0.2)
            await b.aclose()
            with pytest.raises(Exception):
                await task
            return {"timed_out": timed_out}

    out = asyncio.run(main())
    assert out["timed_out"] == "TimeoutError"
    wait_until(lambda: _body.live_sources() == 0, what="every body source to be released")
    wait_until(counting.balanced, what="every waker to be woken or freed")
    assert counting.taken >= 4
