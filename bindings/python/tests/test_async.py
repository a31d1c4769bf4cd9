"""asyncio: concurrency, cancellation, closing, 10,000 completions under GC pressure."""

from __future__ import annotations

import asyncio
import gc

import pytest

import keepalive_agent
from keepalive_agent import Agent, _agent, _loop, errors

from conftest import async_wait_until, free_port


def test_200_concurrent_requests(srv) -> None:
    async def main() -> None:
        async with Agent() as a:
            rs = await asyncio.gather(*(a.aget(srv.http_url + "?delay_ms=300") for _ in range(200)))
            assert [r.status for r in rs] == [200] * 200
            assert all(r.body == b"hello, world\n" for r in rs)
            # They were in flight together: one connection each (nothing idle to reuse yet).
            assert srv.stats()["max_open"] >= 100
            assert a.stats().requests == 200

    asyncio.run(main())


def test_async_methods_and_errors(srv) -> None:
    async def main() -> None:
        async with Agent(ca_file=srv.ca_file) as a:
            assert (await a.apost(srv.http_url + "?echo=1", json={"x": 1})).json()["method"] == "POST"
            assert (await a.aput(srv.http_url + "?echo=1", b"x")).json()["body_len"] == 1
            assert (await a.apatch(srv.http_url + "?echo=1")).json()["method"] == "PATCH"
            assert (await a.adelete(srv.http_url + "?echo=1")).json()["method"] == "DELETE"
            assert (await a.ahead(srv.http_url)).body == b""
            assert (await a.aget(srv.https_url)).status == 200
            with pytest.raises(errors.ConnectError):
                await a.aget(f"http://127.0.0.1:{free_port()}/")
            with pytest.raises(errors.TimeoutError):
                await a.aget(srv.http_url + "?delay_ms=3000", timeout=0.2)
            with pytest.raises(ValueError):
                await a.aget(srv.http_url, headers={"X": "a\r\nb"})

    asyncio.run(main())


def test_event_loop_keeps_running_during_a_request(srv) -> None:
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        with Agent() as a:
            r = await a.aget(srv.http_url + "?delay_ms=1000")
        t.cancel()
        assert r.status == 200
        return ticks

    # A blocked loop would tick at most once; a free one about 100 times.
    assert asyncio.run(main()) >= 20


def test_cancelling_the_task_cancels_the_request(srv) -> None:
    async def main() -> None:
        async with Agent() as a:
            before = _agent._callback_counts[0]
            task = asyncio.create_task(a.aget(srv.http_url + "?delay_ms=5000"))
            await asyncio.sleep(0.1)
            await async_wait_until(lambda: srv.stats()["requests"] == 1, what="the request to reach the server")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.time() - t0 < 2.5  # did not wait for the 5 s response

            # The library finishes the request (callback with CANCELLED) and closes its connection.
            for _ in range(250):
                if _agent._callback_counts[0] > before and a.stats().active == 0:
                    break
                await asyncio.sleep(0.02)
            assert _agent._callback_counts[0] == before + 1
            s = a.stats()
            assert s.active == 0 and s.idle == 0 and s.connections_closed == 1
            # Agent and server are fine.
            r = await a.aget(srv.http_url)
            assert r.status == 200 and not r.reused  # the cancelled connection was not pooled
            assert srv.stats()["accepted"] == 2

    asyncio.run(main())


def test_closing_the_agent_fails_in_flight_requests_with_cancelled_error(srv) -> None:
    async def main() -> None:
        a = Agent()
        task = asyncio.ensure_future(a.aget(srv.http_url + "?delay_ms=3000"))
        await asyncio.sleep(0.1)
        await a.aclose()
        with pytest.raises(keepalive_agent.CancelledError) as ei:
            await task
        assert ei.value.code == 50 and ei.value.code_name == "AGENT_CODE_CANCELLED"
        with pytest.raises(errors.CancelledError):
            await a.aget(srv.http_url)
        assert _loop.pending_total() == 0 and _loop.queue_pending_total() == 0

    asyncio.run(main())


def test_10000_completions_under_gc_pressure(srv) -> None:
    """SPEC §6.30: every future settled exactly once, no crash, nothing left pending."""
    n = 10_000
    refused = f"http://127.0.0.1:{free_port()}/"
    cb_before, matched_before = _agent._callback_counts

    async def main() -> None:
        sem = asyncio.Semaphore(64)
        async with Agent() as a:

            async def one(i: int) -> object:
                async with sem:
                    url = refused if i % 50 == 0 else srv.http_url
                    try:
                        return await a.aget(url)
                    except errors.ConnectError as e:
                        return e

            futs = [asyncio.ensure_future(one(i)) for i in range(n)]
            ok = failed = 0
            for k, fut in enumerate(asyncio.as_completed(futs), 1):
                res = await fut
                if isinstance(res, keepalive_agent.Response):
                    assert res.status == 200 and res.body == b"hello, world\n"
                    ok += 1
                else:
                    assert isinstance(res, errors.ConnectError) and res.code == 11
                    failed += 1
                if k % 500 == 0:
                    [object() for _ in range(1000)]  # some garbage
                    gc.collect()
            assert (ok, failed) == (n - n // 50, n // 50)
            assert all(f.done() and not f.cancelled() for f in futs)
            s = a.stats()
            assert s.requests == n and s.errors == n // 50

    asyncio.run(main())
    gc.collect()
    cb_after, matched_after = _agent._callback_counts
    assert cb_after - cb_before == n  # one callback per request
    assert matched_after - matched_before == n  # each found its own future
    assert _loop.pending_total() == 0 and _loop.queue_pending_total() == 0
    assert srv.stats()["requests"] == n - n // 50
