"""Streaming with asyncio: agent_request_stream_async, agent_stream_read_async, uploads
from async iterables, cancellation without leaks."""

from __future__ import annotations

import asyncio
import io
import os
import time
from typing import AsyncIterator, Iterator

import pytest

from keepalive_agent import Agent, AsyncStreamResponse, _body, _loop, errors

from conftest import async_wait_until, echo_framing, fnv1a64, pattern, wait_until


def _fnv_hex(data: bytes) -> str:
    return f"{fnv1a64(data):016x}"


def _nothing_pending() -> None:
    wait_until(
        lambda: _loop.pending_total() == 0 and _loop.queue_pending_total() == 0 and _body.live_sources() == 0,
        what="every head, read and body source to be settled",
    )


def test_async_stream_download_and_reuse(srv) -> None:
    n = 2_000_000

    async def main() -> None:
        async with Agent() as a:
            async with a.stream_async("GET", srv.http_url + f"?bytes={n}&chunked=1&chunks=9") as r:
                assert isinstance(r, AsyncStreamResponse)
                assert r.status == 200 and r.headers["transfer-encoding"] == "chunked" and not r.reused
                got = bytearray()
                async for piece in r.aiter_bytes():
                    assert piece
                    got += piece
                assert got == pattern(0, n) and r.closed and r.timings.total_us > 0
            # awaited form, aread, and the connection of the first stream is reused
            r = await a.stream_async("GET", srv.http_url + f"?bytes={n}")
            assert r.reused
            assert await r.aread() == pattern(0, n)
            assert await r.aread() == b""
            await r.aclose()
            async with a.stream_async("GET", srv.http_url + "?bytes=100000") as r:
                pieces = [p async for p in r.aiter_bytes(1000)]
                assert all(len(p) <= 1000 for p in pieces) and b"".join(pieces) == pattern(0, 100000)
            # Reading exactly Content-Length bytes and closing gives the connection back.
            async with a.stream_async("GET", srv.http_url + "?bytes=10") as r:
                assert await r._next_piece() == pattern(0, 10)
            s = a.stats()
            assert (s.requests, s.errors, s.idle) == (4, 0, 1)
            assert srv.stats()["accepted"] == 1

    asyncio.run(main())
    _nothing_pending()


def test_the_event_loop_runs_while_a_slow_body_streams(srv) -> None:
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        async with Agent() as a:
            async with a.stream_async("GET", srv.http_url + "?bytes=4000&chunked=1&chunks=4&chunk_delay_ms=150") as r:
                assert await r.aread() == pattern(0, 4000)
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 20


def test_uploads_from_async_iterables_iterables_and_files(srv) -> None:
    data = os.urandom(500_000)

    async def agen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 64_000):
            await asyncio.sleep(0.001)  # the loop produces the body while the upload runs
            yield data[i : i + 64_000]

    def gen() -> Iterator[bytes]:
        yield data

    async def main() -> None:
        async with Agent() as a:
            for body in (agen(), gen(), io.BytesIO(data)):
                e = (await a.apost(srv.http_url + "?echo=1", body=body)).json()
                assert e["body_len"] == len(data) and e["body_fnv"] == _fnv_hex(data)
                expected = {"content-length": str(len(data))} if isinstance(body, io.BytesIO) else {"transfer-encoding": "chunked"}
                assert echo_framing(e) == expected
            async with a.stream_async("PUT", srv.http_url + "?echo=1", body=agen()) as r:
                e = (await r.aread()).decode()
            assert f'"body_fnv":"{_fnv_hex(data)}"' in e
            r2 = await a.request_async("PUT", srv.http_url + "?echo=1", body=agen())
            assert r2.json()["body_len"] == len(data) and r2.timings.total_us > 0

    asyncio.run(main())
    _nothing_pending()


class Broke(Exception):
    pass


def test_an_exception_of_an_async_iterator_is_raised_as_it_is(srv) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * 10_000
        await asyncio.sleep(0)
        raise Broke("async producer failed")

    async def main() -> None:
        async with Agent() as a:
            with pytest.raises(Broke, match="async producer failed"):
                await a.apost(srv.http_url + "?echo=1", body=failing())
            with pytest.raises(Broke):
                async with a.stream_async("POST", srv.http_url + "?echo=1", body=failing()):
                    pass
            s = a.stats()
            assert (s.requests, s.errors) == (2, 2)

    asyncio.run(main())
    _nothing_pending()


def test_cancelling_while_the_head_is_awaited(srv) -> None:
    async def main() -> None:
        async with Agent() as a:
            task = asyncio.create_task(a.stream_async("GET", srv.http_url + "?delay_ms=5000").__aenter__())
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - t0 < 1
            await async_wait_until(lambda: a.stats().requests == 1, what="the cancelled request to be counted")
            assert a.stats().errors == 1

            # An upload whose async producer never ends: its read is pending (no library
            # thread waits); cancelling the task must fail it and release the source.
            async def endless() -> AsyncIterator[bytes]:
                yield b"first"
                await asyncio.Event().wait()
                yield b"never"  # pragma: no cover

            task = asyncio.create_task(a.apost(srv.http_url + "?echo=1", body=endless()))
            await asyncio.sleep(0.3)
            assert _body.live_sources() == 1
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - t0 < 1
            for _ in range(100):  # the library releases the source soon after
                if _body.live_sources() == 0:
                    break
                await asyncio.sleep(0.02)
            assert _body.live_sources() == 0
            assert (await a.aget(srv.http_url)).status == 200

    asyncio.run(main())
    _nothing_pending()


def test_cancelling_a_read_closes_the_stream(srv) -> None:
    async def main() -> None:
        async with Agent() as a:
            r = await a.stream_async("GET", srv.http_url + "?bytes=3000&chunked=1&chunks=3&chunk_delay_ms=300")
            first = await r._next_piece()
            assert first == pattern(0, 1000)
            task = asyncio.create_task(r._next_piece())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert r.closed
            with pytest.raises(errors.CancelledError, match="cancelled"):
                await r.aread()
            await r.aclose()
            # The read in flight completes once the next piece has come (the library keeps
            # the stream until then; see the README), and the request counts as failed.
            await async_wait_until(lambda: a.stats().requests == 1, what="the aborted stream to be counted")
            assert a.stats().errors == 1

    asyncio.run(main())
    _nothing_pending()


def test_closing_the_agent_cancels_its_async_streams(srv) -> None:
    async def main() -> None:
        a = Agent()
        r = await a.stream_async("GET", srv.http_url + f"?bytes={8 << 20}")
        assert len(await r._next_piece()) > 0
        t0 = time.monotonic()
        await a.aclose()
        assert time.monotonic() - t0 < 2
        with pytest.raises(errors.CancelledError, match="agent was closed"):
            await r.aread()
        with pytest.raises(errors.CancelledError):
            await a.stream_async("GET", srv.http_url)

    asyncio.run(main())
    _nothing_pending()


def test_async_sources_are_released_when_the_request_fails(srv) -> None:
    from conftest import free_port

    async def agen() -> AsyncIterator[bytes]:
        yield b"x"

    async def main() -> None:
        async with Agent() as a:
            with pytest.raises(errors.ConnectError):
                await a.apost(f"http://127.0.0.1:{free_port()}/", body=agen())
            with pytest.raises(errors.InvalidURLError):
                async with a.stream_async("POST", "ftp://127.0.0.1/", body=agen()):
                    pass  # pragma: no cover

    asyncio.run(main())
    _nothing_pending()
