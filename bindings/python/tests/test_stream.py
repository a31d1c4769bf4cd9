"""Streaming, blocking: responses read piece by piece and request bodies from files and
iterables (agent_request_stream, agent_stream_read, agent_body_source)."""

from __future__ import annotations

import array
import io
import os
import threading
import time
from typing import Iterator

import pytest

from keepalive_agent import Agent, Headers, StreamResponse, _body, errors

from conftest import echo_framing, fnv1a64, free_port, pattern, wait_until

WINDOW = 256 * 1024  # hyper's read buffer: what the engine holds per stream, at most


def _fnv_hex(data: bytes) -> str:
    return f"{fnv1a64(data):016x}"


def _no_sources_left() -> None:
    wait_until(lambda: _body.live_sources() == 0, what="every body source to be released")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_head_first_then_pieces_and_the_connection_is_reused(srv, framing: str) -> None:
    n = 300_000
    query = f"?bytes={n}" + ("&chunked=1&chunks=7" if framing == "chunked" else "")
    with Agent() as a:
        with a.stream("GET", srv.http_url + query) as r:
            assert isinstance(r, StreamResponse)
            assert r.status == 200 and r.ok and r.version == r.http_version == "1.1"
            assert isinstance(r.headers, Headers) and r.headers["content-type"] == "text/plain"
            if framing == "chunked":
                assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
            else:
                assert r.headers["Content-Length"] == str(n)
            assert r.reused is False and r.method == "GET" and r.url.endswith(query)
            assert r.timings.ttfb_us > 0 and r.timings.total_us == 0  # the body has not ended
            assert not r.closed
            pieces = list(r.iter_bytes(10_000))
            assert all(0 < len(p) <= 10_000 for p in pieces)
            assert b"".join(pieces) == pattern(0, n)
            assert r.closed and r.bytes_read == n  # read to the end: the native stream is gone
            assert r.timings.total_us >= r.timings.ttfb_us > 0
            assert list(r.iter_bytes()) == [] and r.read() == b""  # stays at the end
        s = a.stats()
        assert (s.requests, s.errors, s.idle, s.active) == (1, 0, 1, 0)
        # The next request goes on the same connection: the server saw one.
        with a.stream("GET", srv.http_url + query) as r2:
            assert r2.reused is True
            assert r2.read() == pattern(0, n)
        assert a.get(srv.http_url).reused
        assert srv.stats()["accepted"] == 1
        assert a.stats().reused_requests == 2


def test_read_readinto_and_raw(srv) -> None:
    n = 1_000_003
    body = pattern(0, n)
    with Agent() as a, a.stream("GET", srv.http_url + f"?bytes={n}&chunked=1&chunks=5") as r:
        assert r.read(0) == b""
        assert r.read(7) == body[:7]
        buf = bytearray(100_000)
        assert r.readinto(buf) == len(buf)  # fills the buffer (several pieces)
        assert buf == body[7:100_007]
        view = memoryview(buf)[10:20]
        assert r.readinto(view) == 10 and bytes(view) == body[100_007:100_017]
        arr = array.array("i", [0] * 4)  # any writable buffer: 16 bytes
        assert r.readinto(arr) == 16 and arr.tobytes() == body[100_017:100_033]
        with pytest.raises(TypeError):
            r.readinto(b"read-only")
        k = r.readinto1(bytearray(1 << 20))  # one piece, as it came
        assert 0 < k <= 1 << 20
        pos = 100_033 + k
        raw = r.raw
        assert isinstance(raw, io.RawIOBase) and raw.readable() and not raw.seekable()
        chunk = raw.read(50_000)  # raw reads are short reads
        assert 0 < len(chunk) <= 50_000 and chunk == body[pos : pos + len(chunk)]
        pos += len(chunk)
        buffered = io.BufferedReader(raw, buffer_size=8192)
        assert buffered.read(3) == body[pos : pos + 3]
        rest = buffered.read()
        assert rest == body[pos + 3 :]
        assert r.read() == b"" and raw.read(10) == b""
    with Agent() as a, a.stream("GET", srv.http_url + "?bytes=5000") as r:
        assert r.read(1 << 30) == pattern(0, 5000)  # n past the length allocates only what comes
        assert r.closed
    m = 3 << 20
    with Agent() as a, a.stream("GET", srv.http_url + f"?bytes={m}&chunked=1&chunks=3") as r:
        first = r.read(1_500_000)  # no length known: gathered piece by piece, exactly n
        assert first == pattern(0, 1_500_000)
        assert r.read(1 << 30) == pattern(1_500_000, m - 1_500_000)
        assert r.read(1) == b"" and r.closed
    with Agent() as a:
        r = a.stream("GET", srv.http_url + "?bytes=5000")
        r.raw.close()  # closing raw closes the response
        assert r.closed
        with pytest.raises(ValueError):
            r.read()


def test_closing_early_aborts_and_counts_a_failed_request(srv) -> None:
    with Agent() as a:
        r = a.stream("GET", srv.http_url + f"?bytes={64 << 20}")
        assert len(r.read(1 << 20)) == 1 << 20
        r.close()
        r.close()  # idempotent
        with pytest.raises(ValueError):
            r.read(1)
        wait_until(
            lambda: [(c["open"], c["closed_by_client"]) for c in srv.stats()["connections"]] == [(False, True)],
            what="the server to see the client close the connection",
        )
        s = a.stats()
        assert (s.requests, s.errors, s.reused_requests, s.connections_opened, s.connections_closed) == (1, 1, 0, 1, 1)
        assert (s.active, s.idle) == (0, 0)
        # Nothing of the aborted response is left: the next request opens a new connection.
        r2 = a.get(srv.http_url)
        assert r2.status == 200 and not r2.reused
        assert srv.stats()["accepted"] == 2
        # Garbage collection of an unread stream aborts it too.
        a.stream("GET", srv.http_url + f"?bytes={8 << 20}")
        wait_until(lambda: a.stats().requests == 3, what="the dropped stream to be counted")
        assert a.stats().errors == 2


def test_a_slow_reader_keeps_the_engine_window_bounded(srv) -> None:
    n = 6 << 20
    with Agent() as a, a.stream("GET", srv.http_url + f"?bytes={n}") as r:
        seen = []
        got = 0
        buf = bytearray(64 * 1024)
        while True:
            time.sleep(0.003)  # the engine has time to fill whatever it would buffer
            seen.append(r.buffered())
            k = r.readinto1(buf)
            if not k:
                break
            assert buf[:k] == pattern(got, k)
            got += k
        assert got == n
        assert max(seen) <= 2 * WINDOW + 4096, max(seen)
        assert max(seen) > 0  # it was measured while data was waiting
        assert r.buffered() == 0  # ended


def test_request_body_framing_for_each_body_kind(srv, tmp_path) -> None:
    url = srv.http_url + "?echo=1"
    data = os.urandom(300_000)
    path = tmp_path / "body.bin"
    path.write_bytes(data)

    def gen() -> Iterator[bytes]:
        for i in range(0, len(data), 70_001):
            yield data[i : i + 70_001]
            yield b""  # empty items are skipped, not the end

    class ReadOnly:  # a file-like object with nothing but read()
        def __init__(self, b: bytes) -> None:
            self._f = io.BytesIO(b)

        def read(self, n: int = -1) -> bytes:
            return self._f.read(min(n, 1000))

    bio = io.BytesIO(b"xyz" + data)
    bio.seek(3)  # from where the file is: its remaining size is the length
    cases = [
        ("generator", gen(), data, "chunked"),
        ("list of mixed items", [b"ab", bytearray(b"cd"), memoryview(b"ef"), "gé"], "abcdefgé".encode(), "chunked"),
        ("BytesIO", bio, data, "content-length"),
        ("open file", open(path, "rb"), data, "content-length"),
        ("unbuffered file", open(path, "rb", buffering=0), data, "content-length"),
        ("text file", io.StringIO("héllo wörld"), "héllo wörld".encode(), "chunked"),
        ("read() only", ReadOnly(data), data, "chunked"),
        ("empty generator", iter(()), b"", "chunked"),
        ("empty file", io.BytesIO(), b"", "zero"),  # as an empty bytes body: Content-Length: 0
    ]
    with Agent() as a:
        for name, body, sent, framing in cases:
            e = a.put(url, body=body).json()
            assert e["body_len"] == len(sent), name
            assert e["body_fnv"] == _fnv_hex(sent), name
            f = echo_framing(e)
            if framing == "chunked":
                assert f == {"transfer-encoding": "chunked"}, name
            elif framing == "zero":
                assert f == {"content-length": "0"}, name
                assert a.put(url, body=b"").json()["headers"] == e["headers"], name
            else:
                assert f == {"content-length": str(len(sent))}, name
            if hasattr(body, "close"):
                body.close()
        # A pipe: not seekable, so chunked.
        rfd, wfd = os.pipe()

        def writer() -> None:
            with os.fdopen(wfd, "wb") as w:
                w.write(data)

        t = threading.Thread(target=writer)
        t.start()
        with os.fdopen(rfd, "rb") as pipe:
            e = a.post(url, body=pipe).json()
        t.join()
        assert e["body_len"] == len(data) and echo_framing(e) == {"transfer-encoding": "chunked"}
        # stream() takes the same bodies; the response is read piece by piece.
        with a.stream("POST", url, body=iter([data])) as r:
            e = r.raw.readall()
        assert b'"body_len":300000' in e
        # Async iterables need an async call.
        async def agen() -> "Iterator[bytes]":  # type: ignore[misc]
            yield b"x"

        with pytest.raises(TypeError, match="async"):
            a.post(url, body=agen())
        with pytest.raises(TypeError):
            a.post(url, body={"a": 1})  # type: ignore[arg-type]
        # Other bytes-like objects are sent whole, not iterated.
        e = a.post(url, body=array.array("B", b"abc")).json()  # type: ignore[arg-type]
        assert e["body_len"] == 3 and echo_framing(e) == {"content-length": "3"}
        with pytest.raises(TypeError):
            a.post(url, body=[b"ok", 42])  # type: ignore[list-item]
    _no_sources_left()


class BodyBroke(Exception):
    pass


def test_an_exception_of_the_body_iterator_or_file_is_raised_as_it_is(srv) -> None:
    def failing() -> Iterator[bytes]:
        yield b"x" * 100_000
        raise BodyBroke("the producer failed")

    class FailingFile(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[override]
            raise OSError(5, "disk read error")

    with Agent() as a:
        with pytest.raises(BodyBroke, match="the producer failed"):
            a.post(srv.http_url + "?echo=1", body=failing())
        with pytest.raises(BodyBroke):
            a.stream("POST", srv.http_url + "?echo=1", body=failing())
        with pytest.raises(OSError, match="disk read error"):
            a.put(srv.http_url + "?echo=1", body=FailingFile())
        s = a.stats()
        assert (s.requests, s.errors) == (3, 3)
        assert a.get(srv.http_url).status == 200  # the agent is fine afterwards
    _no_sources_left()


def test_a_file_shorter_than_it_said_is_a_body_source_error(srv) -> None:
    class Lying(io.RawIOBase):
        """Says it has 10,000 bytes left, gives 100."""

        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def tell(self) -> int:
            return self.pos

        def seek(self, pos: int, whence: int = 0) -> int:
            self.pos = 10_000 if whence == os.SEEK_END else pos
            return self.pos

        def readinto(self, b) -> int:  # type: ignore[override]
            n = min(len(b), 100 - self.pos) if self.pos < 100 else 0
            b[:n] = b"y" * n
            self.pos += n
            return n

    with Agent() as a:
        with pytest.raises(errors.BodySourceError) as ei:
            a.put(srv.http_url + "?echo=1", body=Lying())
        assert ei.value.code_name == "AGENT_CODE_BODY_SOURCE"
        assert "short" in ei.value.message
    _no_sources_left()


def test_a_server_reset_mid_upload_is_a_clear_error(srv) -> None:
    def big() -> Iterator[bytes]:
        block = b"z" * 65536
        for _ in range(256):  # 16 MiB
            yield block

    with Agent() as a:
        t0 = time.monotonic()
        with pytest.raises(errors.ProtocolError) as ei:
            a.post(srv.http_url + "?body_rst_after=1000000", body=big())
        assert time.monotonic() - t0 < 10
        e = ei.value
        assert e.code_name in ("AGENT_CODE_CONNECTION_RESET", "AGENT_CODE_BROKEN_PIPE"), e
        assert "reset" in str(e).lower() or "broken pipe" in str(e).lower()
        s = a.stats()
        assert (s.requests, s.errors, s.connections_errored) == (1, 1, 1)
    _no_sources_left()


def test_stale_connection_non_rewindable_body_fails_and_a_seekable_file_is_retried(srv, tmp_path) -> None:
    data = os.urandom(200_000)
    url = srv.http_url + "?echo=1&rst_if_reused=1"
    with Agent() as a:
        assert a.get(srv.http_url).status == 200  # a connection to reuse
        with pytest.raises(errors.StaleConnectionError) as ei:
            a.put(url, body=iter([data]))  # PUT is idempotent, but the body cannot be sent again
        assert "cannot be rewound" in ei.value.message
        assert a.stats().retries == 0

        assert a.get(srv.http_url).status == 200  # another connection to reuse
        path = tmp_path / "body.bin"
        path.write_bytes(data)
        with open(path, "rb") as f:
            r = a.put(url, body=f)  # rewound and sent again on a new connection
        e = r.json()
        assert r.status == 200 and not r.reused
        assert e["body_len"] == len(data) and e["body_fnv"] == _fnv_hex(data)
        assert echo_framing(e) == {"content-length": str(len(data))}
        assert a.stats().retries == 1
    _no_sources_left()


def test_stream_errors_and_the_deadline_covers_the_body(srv) -> None:
    with Agent() as a:
        with pytest.raises(errors.ConnectError):
            a.stream("GET", f"http://127.0.0.1:{free_port()}/")
        with pytest.raises(ValueError):
            a.stream("GET", srv.http_url, headers={"X": "a\nb"})
        r = a.stream("GET", srv.http_url + "?bytes=3000&chunked=1&chunks=3&chunk_delay_ms=400", timeout=0.3)
        assert r.status == 200
        with pytest.raises(errors.TimeoutError) as ei:
            r.read()
        assert ei.value.code_name == "AGENT_CODE_TIMEOUT"
        with pytest.raises(errors.TimeoutError):  # later reads fail the same way
            r.read(1)
        r.close()
        with pytest.raises(errors.ProtocolError):
            with a.stream("GET", srv.http_url + "?rst_mid=1&bytes=1000000") as r:
                r.read()
        s = a.stats()
        assert (s.requests, s.errors, s.timeouts) == (3, 3, 1)


def test_closing_the_agent_closes_its_open_streams(srv) -> None:
    a = Agent()
    unread = a.stream("GET", srv.http_url + f"?bytes={16 << 20}")
    half = a.stream("GET", srv.http_url + f"?bytes={16 << 20}")
    half.read(1 << 20)
    done = a.stream("GET", srv.http_url + "?bytes=10")
    assert done.read() == pattern(0, 10)
    t0 = time.monotonic()
    a.close()
    assert time.monotonic() - t0 < 2  # agent_free would wait 5 s for streams left open
    for r in (unread, half):
        assert r.closed
        with pytest.raises(errors.CancelledError, match="agent was closed"):
            r.read(1)
    assert done.read() == b""  # a stream read to its end is unaffected
    with pytest.raises(errors.CancelledError):
        a.stream("GET", srv.http_url)
    wait_until(lambda: not any(c["open"] for c in srv.stats()["connections"]), what="every connection to close")


def test_close_waits_for_a_read_in_another_thread(srv) -> None:
    a = Agent()
    r = a.stream("GET", srv.http_url + "?bytes=2000&chunked=1&chunks=2&chunk_delay_ms=500")
    assert len(r.read1(10_000)) == 1000
    result = []

    def reader() -> None:
        try:
            result.append(r.read1(10_000))  # blocks until the second piece (~0.5 s)
        except BaseException as e:  # pragma: no cover - reported below
            result.append(e)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.1)
    a.close()  # frees the stream only once the read has returned: never under a reader
    t.join(5)
    assert result and result[0] == pattern(1000, 1000)
    with pytest.raises(errors.CancelledError):
        r.read1(10)


def test_the_source_is_released_when_the_request_fails_to_start(srv) -> None:
    consumed = []

    def gen() -> Iterator[bytes]:
        consumed.append(1)
        yield b"never sent"

    with Agent() as a:
        with pytest.raises(errors.ConnectError):
            a.post(f"http://127.0.0.1:{free_port()}/", body=gen())
        with pytest.raises(errors.InvalidURLError):
            a.post("http://user:pw@127.0.0.1/", body=gen())
        with pytest.raises(ValueError):
            a.post(srv.http_url, headers={"Bad Name": "x"}, body=gen())  # refused before C
        with pytest.raises(errors.ConnectError):
            a.stream("PUT", f"http://127.0.0.1:{free_port()}/", body=io.BytesIO(b"abc"))
    assert consumed == []
    _no_sources_left()
