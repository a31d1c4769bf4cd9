"""asyncio over the event queue: one queue per loop, drained on the loop's thread; every
submission settles exactly once; cancellation leaves nothing pending; RSS stays flat."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from typing import Any, Dict, List

import pytest

import keepalive_agent
from keepalive_agent import Agent, _loop, errors

from conftest import async_wait_until, free_port, rss


def _counts() -> List[int]:
    return list(_loop.counts)


def test_requests_run_on_the_loops_thread_through_its_queue(srv) -> None:
    async def main() -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with Agent() as a:
            r = await a.aget(srv.http_url)
            d = _loop.driver_for(loop)
            assert r.status == 200 and r.body == b"hello, world\n"
            assert d.fd >= 0 and not d.entries
            # The loop watches the descriptor from the first request on, also with nothing
            # pending: the queue drives its HTTP/2 connections' own work between requests.
            assert d.watching
            task = asyncio.ensure_future(a.aget(srv.http_url + "?delay_ms=200"))
            await asyncio.sleep(0.05)
            pending = d.pending()  # a request in flight
            await task
            return {"pending_then": pending, "after": d.watching, "pending": d.pending()}

    out = asyncio.run(main())
    assert out == {"pending_then": 1, "after": True, "pending": 0}


def test_10000_concurrent_requests_with_gc_forced_during_them(srv) -> None:
    """All 10,000 in flight at once (the agent queues them behind 64 connections), with
    gc.collect() running between drains: each settles exactly once, the stats are exact."""
    n = 10_000
    refused = f"http://127.0.0.1:{free_port()}/"
    before = _counts()

    async def main() -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        collections = 0
        async with Agent(max_sockets=64) as a:
            done = asyncio.Event()

            async def collector() -> None:
                nonlocal collections
                while not done.is_set():
                    [object() for _ in range(1000)]  # some garbage
                    gc.collect()
                    collections += 1
                    await asyncio.sleep(0.005)

            coll = asyncio.ensure_future(collector())
            futs = [
                asyncio.ensure_future(a.aget(refused if i % 50 == 0 else srv.http_url + f"?i={i}"))
                for i in range(n)
            ]
            results = await asyncio.gather(*futs, return_exceptions=True)
            done.set()
            await coll
            d = _loop.driver_for(loop)
            s = a.stats()
            return {
                "results": results,
                "stats": (s.requests, s.errors),
                "entries": len(d.entries),
                "queue_pending": d.pending(),
                "watching": d.watching,
                "collections": collections,
                "settled": all(f.done() and not f.cancelled() for f in futs),
            }

    out = asyncio.run(main())
    gc.collect()
    results = out["results"]
    ok = [r for r in results if isinstance(r, keepalive_agent.Response)]
    failed = [r for r in results if isinstance(r, errors.ConnectError)]
    assert len(ok) == n - n // 50 and len(failed) == n // 50
    assert all(r.status == 200 and r.body == b"hello, world\n" for r in ok)
    assert all(e.code == 11 and e.code_name == "AGENT_CODE_CONNECT_REFUSED" for e in failed)
    # Each response is its own request's (the query string says which).
    assert sorted(int(r.url.rsplit("=", 1)[1]) for r in ok) == [i for i in range(n) if i % 50]
    assert out["settled"] and out["collections"] > 0
    assert out["stats"] == (n, n // 50)
    assert (out["entries"], out["queue_pending"], out["watching"]) == (0, 0, True)
    after = _counts()
    assert after[0] - before[0] == n  # one event per request
    assert after[1] - before[1] == n  # each found its own future
    assert srv.stats()["requests"] == n - n // 50


def test_a_second_loop_in_another_thread_has_its_own_queue(srv) -> None:
    n = 1000
    barrier = threading.Barrier(2, timeout=30)
    out: Dict[str, Any] = {}

    async def run(name: str, a: Agent) -> None:
        loop = asyncio.get_running_loop()
        d = _loop.driver_for(loop)
        barrier.wait()  # both loops submit at the same time
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> bytes:
            async with sem:
                return (await a.aget(srv.http_url + f"?bytes={i % 100 + 1}")).body

        bodies = await asyncio.gather(*(one(i) for i in range(n)))
        out[name] = {
            "driver": d,
            "fd": d.fd,
            "thread": threading.get_ident(),
            "ok": all(len(b) == i % 100 + 1 for i, b in enumerate(bodies)),
            "entries": len(d.entries),
            "pending": d.pending(),
        }

    with Agent() as a:
        errors_in_thread: List[BaseException] = []

        def other() -> None:
            try:
                asyncio.run(run("other", a))
            except BaseException as e:  # pragma: no cover - reported below
                errors_in_thread.append(e)

        t = threading.Thread(target=other)
        t.start()
        asyncio.run(run("main", a))
        t.join(60)
        assert not t.is_alive() and not errors_in_thread, errors_in_thread
        s = a.stats()
        assert (s.requests, s.errors) == (2 * n, 0)
    main, oth = out["main"], out["other"]
    assert main["driver"] is not oth["driver"] and main["fd"] != oth["fd"]
    assert main["thread"] != oth["thread"]
    assert main["ok"] and oth["ok"]
    assert (main["entries"], main["pending"], oth["entries"], oth["pending"]) == (0, 0, 0, 0)


def test_cancelled_tasks_leave_no_pending_work_and_count_as_errors(srv) -> None:
    n = 50

    async def main() -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with Agent() as a:
            ok = await a.aget(srv.http_url)  # one finished request, pooled
            assert ok.status == 200
            tasks = [asyncio.ensure_future(a.aget(srv.http_url + "?delay_ms=5000")) for _ in range(n)]
            await async_wait_until(lambda: srv.stats()["requests"] == n + 1, what="the requests to reach the server")
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            d = _loop.driver_for(loop)
            # The CANCELLED events come at the next drains (the loop keeps watching).
            await async_wait_until(lambda: not d.entries, what="the cancelled requests' events")
            # Their connections are closed (not pooled) once the library has dropped them.
            await async_wait_until(lambda: a.stats().active == 0, what="the cancelled connections to close")
            s = a.stats()
            r = await a.aget(srv.http_url)  # the agent is fine afterwards
            return {
                "pending": d.pending(),
                "watching_after_last": d.watching,
                "stats": (s.requests, s.errors, s.active),
                "last": r.status,
            }

    out = asyncio.run(main())
    assert out["pending"] == 0 and out["watching_after_last"]
    assert out["stats"] == (n + 1, n, 0)
    assert out["last"] == 200


def test_cancelled_stream_heads_and_reads_leave_no_pending_work(srv) -> None:
    async def main() -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with Agent() as a:
            head = asyncio.ensure_future(a.stream_async("GET", srv.http_url + "?delay_ms=5000").__aenter__())
            r = await a.stream_async("GET", srv.http_url + "?bytes=3000&chunked=1&chunks=3&chunk_delay_ms=2000")
            assert await r._next_piece()
            read = asyncio.ensure_future(r._next_piece())
            await asyncio.sleep(0.2)
            head.cancel()
            read.cancel()
            for t in (head, read):
                with pytest.raises(asyncio.CancelledError):
                    await t
            d = _loop.driver_for(loop)
            await async_wait_until(lambda: not d.entries and a.stats().requests == 2, what="the cancelled events")
            s = a.stats()
            return {"pending": d.pending(), "stats": (s.requests, s.errors), "closed": r.closed}

    out = asyncio.run(main())
    assert out == {"pending": 0, "stats": (2, 2), "closed": True}


def test_a_closed_loop_frees_its_queue_and_a_new_loop_works(srv) -> None:
    with Agent() as a:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(a.aget(srv.http_url + "?delay_ms=3000"))
            loop.run_until_complete(asyncio.sleep(0.2))
            d = _loop.driver_for(loop)
            assert d.entries and d.watching
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        finally:
            loop.close()  # the CANCELLED event may still be in the queue
        assert not d.closed

        async def again() -> int:
            return (await a.aget(srv.http_url)).status

        assert asyncio.run(again()) == 200  # a new loop: the closed loop's queue is freed
        assert d.closed


def test_bad_arguments_raise_before_anything_is_queued(srv) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Agent() as a:
            with pytest.raises(errors.InvalidURLError):
                await a.aget("ftp://127.0.0.1/")
            with pytest.raises(errors.InvalidURLError):
                await a.aget("http://127.0.0.1/a b")
            with pytest.raises(ValueError):
                await a.request_async("GE T", srv.http_url)
            with pytest.raises(TypeError):
                await a.aget(42)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await a.aget(srv.http_url, timeout=-1)
            with pytest.raises(TypeError):
                await a.apost(srv.http_url, body=3.5)  # type: ignore[arg-type]
            d = _loop.driver_for(loop)
            assert not d.entries and d.pending() == 0
        with pytest.raises(errors.CancelledError):
            await a.aget(srv.http_url)  # closed

    asyncio.run(main())


def test_rss_flat_over_many_async_requests(srv) -> None:
    total = int(os.environ.get("KEEPALIVE_AGENT_RSS_REQUESTS", "50000"))

    async def main() -> Dict[str, int]:
        async with Agent() as a:
            url = srv.http_url + "?bytes=512"

            async def batch(k: int) -> None:
                rs = await asyncio.gather(*(a.aget(url) for _ in range(k)))
                assert all(r.status == 200 and len(r.body) == 512 for r in rs)

            for _ in range(10):
                await batch(500)  # warm-up
            gc.collect()
            base = peak = rss()
            for i in range(total // 500):
                await batch(500)
                if i % 10 == 0:
                    peak = max(peak, rss())
            gc.collect()
            return {"base": base, "peak": peak, "end": rss(), "requests": a.stats().requests}

    out = asyncio.run(main())
    assert out["requests"] == 5000 + total // 500 * 500
    limit = out["base"] * 1.10
    assert out["end"] <= limit and out["peak"] <= limit, out
