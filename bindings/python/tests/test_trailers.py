"""Response trailers: ``Response.trailers`` and the streamed responses' ``trailers``, over
h2c (the test server's prior-knowledge listener, whose ``?trailers=1`` ends the body with
``x-checksum: <FNV-1a 64 of the body>``) and over a chunked HTTP/1.1 body (a small server
written here: the test server's HTTP/1.1 listener sends no trailers)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Iterator, List

import pytest

from conftest import fnv1a64, pattern
from keepalive_agent import Agent, Headers

pytestmark = pytest.mark.timeout(60)

CHECKSUM = f"{fnv1a64(pattern(0, 100)):016x}"


def h2c_url(srv: Any, query: str) -> str:
    return f"http://127.0.0.1:{srv.info['h2c_port']}/{query}"


def test_whole_response_trailers_over_h2c(srv) -> None:
    with Agent(http_version="h2c-prior-knowledge") as a:
        r = a.get(h2c_url(srv, "?bytes=100&trailers=1"), timeout=10)
        assert (r.status, r.http_version, r.body) == (200, "2", pattern(0, 100))
        t = r.trailers
        assert isinstance(t, Headers) and t is r.trailers  # made once
        assert t["X-Checksum"] == t.get("x-checksum") == CHECKSUM
        assert t.multi_items() == [("x-checksum", CHECKSUM)]
        assert "x-checksum" not in r.headers
        # Without trailers: an empty mapping, over HTTP/2 and over HTTP/1.1.
        r = a.get(h2c_url(srv, "?bytes=100"), timeout=10)
        assert (r.body, len(r.trailers), dict(r.trailers)) == (pattern(0, 100), 0, {})
    with Agent() as a:
        r = a.get(srv.http_url + "?bytes=100", timeout=10)
        assert (r.http_version, len(r.trailers), r.trailers.get("x-checksum")) == ("1.1", 0, None)


def test_streamed_trailers_over_h2c_after_the_end(srv) -> None:
    with Agent(http_version="h2c-prior-knowledge") as a:
        with a.stream("GET", h2c_url(srv, "?bytes=100&trailers=1"), timeout=10) as s:
            assert len(s.trailers) == 0  # the body has not ended yet
            assert s.read(10) == pattern(0, 10)
            assert len(s.trailers) == 0
            assert s.read() == pattern(10, 90)
            assert s.closed and s.trailers["x-checksum"] == CHECKSUM
        assert s.trailers.multi_items() == [("x-checksum", CHECKSUM)]  # kept after close
        with a.stream("GET", h2c_url(srv, "?bytes=100"), timeout=10) as s:
            assert b"".join(s.iter_bytes()) == pattern(0, 100)
            assert s.closed and dict(s.trailers) == {}
        # Closed before the end: none.
        with a.stream("GET", h2c_url(srv, "?bytes=100&trailers=1"), timeout=10) as s:
            s.read(1)
        assert len(s.trailers) == 0
        # A request with a streamed body gives a whole Response built from a stream.
        r = a.request("POST", h2c_url(srv, "?bytes=100&trailers=1"), body=iter([b"x"]), timeout=10)
        assert r.trailers["x-checksum"] == CHECKSUM


def test_async_streamed_and_whole_trailers_over_h2c(srv) -> None:
    async def main() -> None:
        async with Agent(http_version="h2c-prior-knowledge") as a:
            async with a.stream_async("GET", h2c_url(srv, "?bytes=100&trailers=1"), timeout=10) as s:
                assert len(s.trailers) == 0
                assert await s.aread() == pattern(0, 100)
                assert s.trailers["x-checksum"] == CHECKSUM
            async with a.stream_async("GET", h2c_url(srv, "?bytes=100"), timeout=10) as s:
                assert [p async for p in s] and dict(s.trailers) == {}
            r = await a.aget(h2c_url(srv, "?bytes=100&trailers=1"), timeout=10)
            assert r.trailers["x-checksum"] == CHECKSUM
            r = await a.aget(h2c_url(srv, "?bytes=100"), timeout=10)
            assert len(r.trailers) == 0

    asyncio.run(main())


@pytest.fixture
def chunked_server() -> Iterator[str]:
    """An HTTP/1.1 server answering every request with a chunked body followed by two
    trailer lines of the same name (mixed case) and a Content-Length response without."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    answers: List[bytes] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nx-sum: def\r\nX-Other: \xc3\xa9\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ]

    def serve() -> None:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        with conn:
            i = 0
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                conn.sendall(answers[i % len(answers)])
                i += 1

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{lsock.getsockname()[1]}/"
    finally:
        lsock.close()


def test_chunked_http1_trailers(chunked_server) -> None:
    with Agent() as a:
        r = a.get(chunked_server, timeout=10)
        assert (r.http_version, r.body) == ("1.1", b"hello")
        assert r.trailers.get_all("X-SUM") == ["abc", "def"] and r.trailers["x-sum"] == "abc, def"
        assert r.trailers["x-other"] == "\u00e9"
        assert list(r.trailers) == ["x-sum", "x-other"]
        r = a.get(chunked_server, timeout=10)  # Content-Length: no trailers
        assert (r.body, r.reused, len(r.trailers)) == (b"hello", True, 0)
        with a.stream("GET", chunked_server, timeout=10) as s:
            assert s.read() == b"hello"
            assert s.trailers.multi_items() == [("x-sum", "abc"), ("x-sum", "def"), ("x-other", "\u00e9")]
