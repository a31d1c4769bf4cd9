"""HTTP/2: the http_version option, one shared connection per origin (threads, asyncio),
h2c with prior knowledge, the fallbacks and failures of ALPN, bodies and streaming over h2,
the requests adapter, and StreamResetError (against nginx, and a small h2c server written
here that resets streams on purpose).

Connections are counted by nginx's stub_status "accepts", never by this library (see
:class:`Accepts`)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest
import requests

import keepalive_agent
from keepalive_agent import Agent, _native, errors
from keepalive_agent.requests_adapter import KeepAliveAdapter

pytestmark = pytest.mark.timeout(120)

HELLO = b"hello, world\n"
DYNAMODB_ITEM = {"id": {"S": "bench"}, "n": {"N": "42"}, "payload": {"S": "0123456789abcdef"}}


class Accepts:
    """nginx's stub_status "accepts", read over a plain socket (so the count never depends
    on the code under test). nginx counts every connection it accepts, on every listener,
    so each read is itself one: the value returned leaves out this reader's own reads, and
    two consecutive reads give the same number (as tests/nginx/interop.c)."""

    def __init__(self, nginx: Any) -> None:
        self.port = int(nginx.NGINX_ADMIN_PORT)
        self.reads = 0

    def __call__(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            for _ in range(1000):  # HTTP/1.0: nginx closes after its answer
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        m = re.search(rb"server accepts handled requests\s+(\d+)", data)
        assert m is not None, data
        self.reads += 1
        return int(m.group(1)) - self.reads


@pytest.fixture
def accepts(nginx: Any) -> Accepts:
    a = Accepts(nginx)
    assert a() == a(), "stub_status accounting: two consecutive reads differ"
    return a


def big_file(nginx: Any) -> bytes:
    return (Path(nginx.NGINX_DIR) / "www" / nginx.NGINX_BIG_PATH).read_bytes()


# ---------------------------------------------------------------------------------------
# The option


def test_the_default_is_http1_and_auto_negotiates_h2(nginx, accepts) -> None:
    before = accepts()
    for kwargs in ({}, {"http_version": "http1"}):
        with Agent(ca_file=nginx.NGINX_CA_FILE, **kwargs) as a:
            rs = [a.get(nginx.NGINX_H2_URL, timeout=10) for _ in range(3)]
            assert [(r.status, r.http_version, r.body) for r in rs] == [(200, "1.1", HELLO)] * 3
            s = a.stats()
            assert (s.h2_connections, s.h2_streams, s.connections_opened) == (0, 0, 1)
    assert accepts() - before == 2  # one HTTP/1.1 connection per agent

    before = accepts()
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="auto") as a:
        rs = [a.get(nginx.NGINX_H2_URL, timeout=10) for _ in range(3)]
        assert [(r.status, r.http_version, r.body) for r in rs] == [(200, "2", HELLO)] * 3
        assert [r.reused for r in rs] == [False, True, True]
        s = a.stats()
        assert (s.h2_connections, s.connections_opened) == (1, 1)
        assert (s.h2_streams, s.requests, s.reused_requests) == (3, 3, 2)
        o = a.origin_stats(nginx.NGINX_H2_URL)
        assert (o.h2_connections, o.h2_streams) == (1, 3)
    assert accepts() - before == 1


def test_stats_list_the_http2_counters() -> None:
    assert _native.STATS_FIELDS[-2:] == ("h2_streams", "h2_connections")
    with Agent() as a:
        s = a.stats()
        assert s.h2_streams == 0 and s.h2_connections == 0


@pytest.mark.parametrize("value", ["AUTO", "Http2", "H2C-Prior-Knowledge"])
def test_http_version_names_ignore_case_as_scheduling_does(nginx, value: str) -> None:
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version=value) as a:
        assert a.get(nginx.NGINX_H2_URL, timeout=10).http_version == "2"


@pytest.mark.parametrize("value", [2, 20, None, b"auto", 1.1, True, ["auto"]])
def test_http_version_of_another_type_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="http_version must be str"):
        Agent(http_version=value)


@pytest.mark.parametrize("value", ["", "h2", "h2c", "http/2", "HTTP/1.1", "http3", "auto ", "http1\x00"])
def test_unknown_http_version_is_an_invalid_option(value: str) -> None:
    with pytest.raises(errors.InvalidOptionError) as e:
        Agent(http_version=value)
    assert isinstance(e.value, ValueError)
    assert e.value.code_name == "AGENT_CODE_INVALID_OPTION"
    assert e.value.message == (
        f"http_version = {value!r}: expected one of 'auto', 'http1', 'http2', 'h2c-prior-knowledge'"
    )


# ---------------------------------------------------------------------------------------
# One connection for many requests at once


def test_64_threads_share_one_connection(nginx, accepts) -> None:
    n_threads, per_thread = 64, 10
    barrier = threading.Barrier(n_threads)
    results: List[Tuple[int, str, bytes]] = []
    failures: List[BaseException] = []
    lock = threading.Lock()

    def worker(a: Agent) -> None:
        try:
            barrier.wait(timeout=30)
            got = []
            for _ in range(per_thread):
                r = a.get(nginx.NGINX_H2_URL, timeout=30)
                got.append((r.status, r.http_version, r.body))
            with lock:
                results.extend(got)
        except BaseException as e:  # reported below, with the thread's own traceback
            with lock:
                failures.append(e)

    before = accepts()
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="auto") as a:
        threads = [threading.Thread(target=worker, args=(a,)) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert failures == []
        assert results == [(200, "2", HELLO)] * (n_threads * per_thread)
        s = a.stats()
        assert (s.h2_connections, s.connections_opened) == (1, 1)
        assert s.h2_streams == s.requests == n_threads * per_thread
    assert accepts() - before == 1


def test_asyncio_64_at_once_share_one_connection(nginx, accepts) -> None:
    async def main() -> None:
        async with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="auto") as a:
            rs = await asyncio.gather(*(a.aget(nginx.NGINX_H2_URL, timeout=30) for _ in range(64)))
            assert [(r.status, r.http_version, r.body) for r in rs] == [(200, "2", HELLO)] * 64
            assert sum(r.reused for r in rs) == 63  # every stream after the first
            s = a.stats()
            assert (s.h2_connections, s.connections_opened, s.h2_streams) == (1, 1, 64)

    before = accepts()
    asyncio.run(main())
    assert accepts() - before == 1


# ---------------------------------------------------------------------------------------
# Which version with which server


def test_h2c_prior_knowledge_on_plain_http(nginx, accepts) -> None:
    before = accepts()
    with Agent(http_version="h2c-prior-knowledge") as a:
        rs = [a.get(nginx.NGINX_H2C_URL, timeout=10) for _ in range(3)]
        assert [(r.status, r.http_version, r.body, r.reused) for r in rs] == [
            (200, "2", HELLO, False), (200, "2", HELLO, True), (200, "2", HELLO, True)
        ]
        s = a.stats()
        assert (s.h2_connections, s.h2_streams) == (1, 3)
    assert accepts() - before == 1


@pytest.mark.parametrize("version", ["auto", "http2"])
def test_plain_http_stays_http1_without_prior_knowledge(nginx, version: str) -> None:
    with Agent(http_version=version) as a:
        r = a.get(nginx.NGINX_HTTP_URL, timeout=10)
        assert (r.status, r.http_version, r.body) == (200, "1.1", HELLO)
        # An h2c-only listener does not understand HTTP/1.1.
        with pytest.raises(errors.ProtocolError):
            a.get(nginx.NGINX_H2C_URL, timeout=10)
        assert a.stats().h2_connections == 0


def test_http2_against_a_server_without_h2_is_a_tls_error(nginx) -> None:
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="http2") as a:
        with pytest.raises(errors.TLSError) as e:
            a.get(nginx.NGINX_HTTPS_URL, timeout=10)
        assert e.value.code_name == "AGENT_CODE_TLS"
        assert "NoApplicationProtocol" in e.value.message
        # The same agent speaks h2 to a server that offers it.
        assert a.get(nginx.NGINX_H2_URL, timeout=10).http_version == "2"


def test_auto_against_a_server_without_h2_falls_back_and_reuses(nginx, accepts) -> None:
    before = accepts()
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="auto") as a:
        rs = [a.get(nginx.NGINX_HTTPS_URL, timeout=10) for _ in range(4)]
        assert [(r.status, r.http_version, r.body) for r in rs] == [(200, "1.1", HELLO)] * 4
        assert [r.reused for r in rs] == [False, True, True, True]
        s = a.stats()
        assert (s.connections_opened, s.reused_requests, s.h2_connections, s.h2_streams) == (1, 3, 0, 0)
    assert accepts() - before == 1


def test_keep_alive_false_opens_a_connection_per_request_over_h2(nginx, accepts) -> None:
    before = accepts()
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="http2", keep_alive=False) as a:
        rs = [a.get(nginx.NGINX_H2_URL, timeout=10) for _ in range(5)]
        assert [(r.status, r.http_version, r.body, r.reused) for r in rs] == [(200, "2", HELLO, False)] * 5
        s = a.stats()
        assert (s.h2_connections, s.connections_opened, s.h2_streams, s.reused_requests) == (5, 5, 5, 0)
    assert accepts() - before == 5


# ---------------------------------------------------------------------------------------
# Bodies


def test_a_1mib_body_over_h2(nginx) -> None:
    data = big_file(nginx)
    assert len(data) == 1 << 20
    url = nginx.NGINX_H2_URL + nginx.NGINX_BIG_PATH
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="http2") as a:
        r = a.get(url, timeout=30)
        assert (r.status, r.http_version) == (200, "2")
        assert r.body == data and r.headers["content-length"] == str(len(data))

        async def both() -> List[Any]:
            return await asyncio.gather(a.aget(url, timeout=30), a.aget(url, timeout=30))

        assert [(x.http_version, x.body == data) for x in asyncio.run(both())] == [("2", True)] * 2
        # One connection for the blocking calls, one for the event loop's queue, which drives
        # the connections its requests open on the loop's thread.
        assert a.stats().h2_connections == 2


def test_streaming_1mib_over_h2_comes_in_pieces(nginx) -> None:
    data = big_file(nginx)
    url = nginx.NGINX_H2_URL + nginx.NGINX_BIG_PATH
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="auto") as a:
        with a.stream("GET", url, timeout=30) as r:
            assert (r.status, r.version, r.http_version) == (200, "2", "2")
            pieces = list(r.iter_bytes(64 * 1024))
        assert len(pieces) >= 16 and all(0 < len(p) <= 64 * 1024 for p in pieces)
        assert b"".join(pieces) == data
        # The stream read to its end left the connection to the next request.
        with a.stream("GET", url, timeout=30) as r2:
            assert r2.reused and r2.read(1000) == data[:1000]
            assert r2.read() == data[1000:]

        async def astream() -> List[bytes]:
            async with a.stream_async("GET", url, timeout=30) as r3:
                # The event loop's queue opens (and drives) its own connection.
                assert r3.version == "2" and not r3.reused
                return [p async for p in r3.aiter_bytes()]

        apieces = asyncio.run(astream())
        assert len(apieces) > 1 and b"".join(apieces) == data
        s = a.stats()
        assert (s.h2_connections, s.h2_streams) == (2, 3)  # the blocking calls' connection and the loop's


def test_post_json_over_h2(nginx) -> None:
    with Agent(ca_file=nginx.NGINX_CA_FILE, http_version="auto") as a:
        for _ in range(2):
            r = a.post(
                nginx.NGINX_H2_URL + "dynamodb/",
                json={"TableName": "bench", "Key": {"id": {"S": "bench"}}},
                headers={"X-Amz-Target": "DynamoDB_20120810.GetItem"},
                timeout=10,
            )
            assert (r.status, r.http_version) == (200, "2")
            assert r.headers["content-type"] == "application/x-amz-json-1.0"
            assert r.json() == {"Item": DYNAMODB_ITEM}
        # A streamed (chunked in HTTP/1.1 terms) body goes as DATA frames.
        r = a.post(nginx.NGINX_H2_URL + "dynamodb/", body=iter([b'{"TableName":', b'"bench"}']), timeout=10)
        assert (r.status, r.http_version, r.json()) == (200, "2", {"Item": DYNAMODB_ITEM})
        assert a.stats().h2_connections == 1


# ---------------------------------------------------------------------------------------
# The requests adapter


def test_requests_adapter_over_h2(nginx, accepts) -> None:
    data = big_file(nginx)
    before = accepts()
    with requests.Session() as session:
        adapter = KeepAliveAdapter(ca_file=nginx.NGINX_CA_FILE, http_version="auto")
        session.mount("https://", adapter)
        r = session.get(nginx.NGINX_H2_URL, timeout=(5, 10))
        assert (r.status_code, r.content, r.raw.version, r.raw.version_string) == (200, HELLO, 20, "HTTP/2")
        r = session.post(nginx.NGINX_H2_URL + "dynamodb/", json={"TableName": "bench"}, timeout=10)
        assert (r.status_code, r.raw.version, r.json()) == (200, 20, {"Item": DYNAMODB_ITEM})
        with session.get(nginx.NGINX_H2_URL + nginx.NGINX_BIG_PATH, stream=True, timeout=30) as r:
            assert (r.status_code, r.raw.version, r.raw.version_string) == (200, 20, "HTTP/2")
            assert b"".join(r.iter_content(64 * 1024)) == data
        s = adapter.agent.stats()
        assert (s.h2_connections, s.h2_streams) == (1, 3)
        # HTTP/1.1 where the server offers nothing else: 11, as urllib3.
        r = session.get(nginx.NGINX_HTTPS_URL, timeout=10)
        assert (r.status_code, r.raw.version, r.raw.version_string) == (200, 11, "HTTP/1.1")
        with session.get(nginx.NGINX_HTTPS_URL, stream=True, timeout=10) as r:
            assert (r.raw.version, r.content) == (11, HELLO)
    assert accepts() - before == 2  # one h2 connection, one HTTP/1.1 connection


def test_requests_adapter_default_is_http1(nginx) -> None:
    with requests.Session() as session:
        session.mount("https://", KeepAliveAdapter(ca_file=nginx.NGINX_CA_FILE))
        r = session.get(nginx.NGINX_H2_URL, timeout=10)
        assert (r.status_code, r.raw.version, r.raw.version_string) == (200, 11, "HTTP/1.1")


def test_requests_adapter_maps_a_missing_h2_to_ssl_error(nginx) -> None:
    with requests.Session() as session:
        session.mount("https://", KeepAliveAdapter(ca_file=nginx.NGINX_CA_FILE, http_version="http2"))
        with pytest.raises(requests.exceptions.SSLError) as e:
            session.get(nginx.NGINX_HTTPS_URL, timeout=10)
        assert isinstance(e.value.__cause__, errors.TLSError)


# ---------------------------------------------------------------------------------------
# RST_STREAM: a small h2c server (prior knowledge) written with raw frames. It never
# decodes HPACK: it answers each request as a plan says, in the order requests arrive.

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
INTERNAL_ERROR = 2
STATUS_200 = b"\x88"  # HPACK: the static table's ":status: 200"


def h2_frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class ResettingH2Server:
    """The n-th request (over all connections) gets ``plan[n]`` (the last entry repeats):
    ``"reset"``: RST_STREAM INTERNAL_ERROR, no response; ``"ok"``: 200 with body ``ok``;
    ``"reset-mid-body"``: 200, 1000 bytes, then RST_STREAM INTERNAL_ERROR."""

    def __init__(self, plan: List[str]) -> None:
        self.plan = plan
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _respond(self, conn: socket.socket, sid: int) -> None:
        with self.lock:
            action = self.plan[min(self.requests, len(self.plan) - 1)]
            self.requests += 1
        reset = h2_frame(RST_STREAM, 0, sid, INTERNAL_ERROR.to_bytes(4, "big"))
        if action == "reset":
            conn.sendall(reset)
        elif action == "ok":
            conn.sendall(h2_frame(HEADERS, END_HEADERS, sid, STATUS_200) + h2_frame(DATA, END_STREAM, sid, b"ok"))
        else:
            assert action == "reset-mid-body", action
            conn.sendall(h2_frame(HEADERS, END_HEADERS, sid, STATUS_200) + h2_frame(DATA, 0, sid, b"x" * 1000) + reset)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                if recv_exact(conn, len(PREFACE)) != PREFACE:
                    return
                conn.sendall(h2_frame(SETTINGS, 0, 0))
                for _ in range(10_000):
                    head = recv_exact(conn, 9)
                    if head is None:
                        return
                    length, ftype, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
                    sid = int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF
                    payload = recv_exact(conn, length)
                    if payload is None or ftype == GOAWAY:
                        return
                    if ftype == SETTINGS and not flags & ACK:
                        conn.sendall(h2_frame(SETTINGS, ACK, 0))
                    elif ftype == PING and not flags & ACK:
                        conn.sendall(h2_frame(PING, ACK, 0, payload))
                    elif ftype in (HEADERS, CONTINUATION) and flags & END_HEADERS:
                        self._respond(conn, sid)  # a request's head is complete
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def resetting() -> Any:
    servers: List[ResettingH2Server] = []

    def make(plan: List[str]) -> ResettingH2Server:
        servers.append(ResettingH2Server(plan))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


RESET_MESSAGE = "the server reset the HTTP/2 stream (RST_STREAM INTERNAL_ERROR)"


def test_stream_reset_error_in_the_hierarchy() -> None:
    assert issubclass(errors.StreamResetError, errors.ProtocolError)
    assert keepalive_agent.StreamResetError is errors.StreamResetError
    assert "StreamResetError" in keepalive_agent.__all__ and "StreamResetError" in errors.__all__
    assert _native.ERROR_CLASSES[_native.STREAM_RESET] is errors.StreamResetError
    assert _native.code_name(_native.STREAM_RESET) == "AGENT_CODE_STREAM_RESET"


def test_a_reset_stream_fails_alone_and_the_connection_goes_on(resetting) -> None:
    srv = resetting(["reset", "ok", "reset-mid-body", "ok", "reset", "ok"])
    with Agent(http_version="h2c-prior-knowledge") as a:
        with pytest.raises(errors.StreamResetError) as e:
            a.get(srv.url, timeout=10)
        assert e.value.code_name == "AGENT_CODE_STREAM_RESET" and e.value.message == RESET_MESSAGE
        r = a.get(srv.url, timeout=10)
        assert (r.status, r.http_version, r.body, r.reused) == (200, "2", b"ok", True)
        # Reset after the head: reading the body fails.
        with a.stream("GET", srv.url, timeout=10) as s:
            assert (s.status, s.version) == (200, "2")
            with pytest.raises(errors.StreamResetError):
                s.read()
        assert a.get(srv.url, timeout=10).body == b"ok"

        async def main() -> None:
            with pytest.raises(errors.StreamResetError):
                await a.aget(srv.url, timeout=10)
            assert (await a.aget(srv.url, timeout=10)).body == b"ok"

        asyncio.run(main())
        s = a.stats()
        # One connection for the blocking calls, one for the event loop's queue.
        assert (s.h2_connections, s.connections_opened, s.requests, s.retries) == (2, 2, 6, 0)
    assert (srv.connections, srv.requests) == (2, 6)  # never retried, no connection replaced


def test_requests_adapter_maps_a_reset_as_a_connection_reset(resetting) -> None:
    srv = resetting(["reset", "reset-mid-body", "ok"])
    with requests.Session() as session:
        session.mount("http://", KeepAliveAdapter(http_version="h2c-prior-knowledge"))
        with pytest.raises(requests.exceptions.ConnectionError) as e:
            session.get(srv.url, timeout=10)
        assert isinstance(e.value.__cause__, errors.StreamResetError)
        r = session.get(srv.url, stream=True, timeout=10)
        assert (r.status_code, r.raw.version) == (200, 20)
        with pytest.raises(requests.exceptions.ChunkedEncodingError) as e2:
            _ = r.content
        # requests wraps urllib3's ProtocolError, which raw raised from the engine's error
        assert isinstance(e2.value.__context__.__cause__, errors.StreamResetError)
        r = session.get(srv.url, timeout=10)
        assert (r.status_code, r.content, r.raw.version) == (200, b"ok", 20)
    assert srv.connections == 1
