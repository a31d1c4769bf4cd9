"""keepalive_agent.httpx: httpx's Client and AsyncClient on the engine, against the test server."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from typing import AsyncIterator, Iterator

import httpx  # in requirements-dev.txt: `make test-python` installs it
import pytest

import keepalive_agent
from keepalive_agent import Agent, _body, _loop, _native, errors
from keepalive_agent.httpx import AsyncKeepAliveTransport, KeepAliveTransport

from conftest import echo_framing, fnv1a64, free_port, pattern, wait_until


def _fnv_hex(data: bytes) -> str:
    return f"{fnv1a64(data):016x}"


def _nothing_pending() -> None:
    wait_until(
        lambda: _loop.pending_total() == 0 and _loop.queue_pending_total() == 0 and _body.live_sources() == 0,
        what="every head, read and body source to be settled",
    )


def _closed_by_client(srv) -> int:
    return sum(c["closed_by_client"] for c in srv.stats()["connections"])


# ---------------------------------------------------------------------------------------
# Requests and responses


def test_get_and_post(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:
        r = c.get(srv.http_url + "?echo=1", headers={"X-Trace": "a1"})
        assert r.status_code == 200 and r.reason_phrase == "OK"
        assert r.http_version == "HTTP/1.1" and r.extensions["http_version"] == b"HTTP/1.1"
        assert r.headers["content-type"] == "application/json"
        assert r.request.url == srv.http_url + "?echo=1"
        echo = r.json()
        sent = {n.lower(): v for n, v in echo["headers"]}
        assert sent["x-trace"] == "a1" and sent["user-agent"].startswith("python-httpx/")
        assert [n.lower() for n, _ in echo["headers"]].count("host") == 1  # httpx's, not a second one
        assert echo["method"] == "GET" and echo["target"] == "/?echo=1"

        r = c.post(srv.http_url + "?echo=1", json={"x": 1})
        echo = r.json()
        sent = {n.lower(): v for n, v in echo["headers"]}
        assert echo["method"] == "POST" and echo["body_len"] == len(b'{"x":1}')
        assert sent["content-type"] == "application/json" and echo_framing(echo) == {"content-length": "7"}

        r = c.request("DELETE", srv.http_url + "?status=404")
        assert r.status_code == 404 and r.text == "hello, world\n"
        with pytest.raises(httpx.HTTPStatusError):
            r.raise_for_status()
        head = c.head(srv.http_url + "?bytes=100")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "100"


def test_userinfo_becomes_authorization_and_the_fragment_stays_home(srv) -> None:
    url = srv.http_url.replace("http://", "http://user:pw@") + "?echo=1#part"
    with httpx.Client(transport=KeepAliveTransport()) as c:
        echo = c.get(url).json()
    assert echo["target"] == "/?echo=1"
    assert ["authorization", "Basic dXNlcjpwdw=="] in [[n.lower(), v] for n, v in echo["headers"]]


def test_n_requests_one_connection(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:
        ports = {c.get(srv.http_url + "?echo=1").json()["remote_port"] for _ in range(10)}
        stats = c._transport.agent.stats()  # type: ignore[attr-defined]
    assert len(ports) == 1 and srv.stats()["accepted"] == 1
    assert (stats.requests, stats.reused_requests, stats.connections_opened) == (10, 9, 1)


def test_keep_alive_off_one_connection_each(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport(keep_alive=False)) as c:
        for _ in range(3):
            assert c.get(srv.http_url).status_code == 200
    assert srv.stats()["accepted"] == 3


def test_async_get_post_and_reuse(srv) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncKeepAliveTransport()) as c:
            rs = await asyncio.gather(*(c.get(srv.http_url + "?echo=1") for _ in range(3)))
            assert all(r.status_code == 200 for r in rs)
            srv.reset()
            ports = set()
            for i in range(10):
                r = await c.post(srv.http_url + "?echo=1", content=b"x" * i)
                assert r.json()["body_len"] == i and r.http_version == "HTTP/1.1"
                ports.add(r.json()["remote_port"])
            assert len(ports) == 1 and srv.stats()["accepted"] == 0  # the pooled ones served
        _nothing_pending()

    asyncio.run(main())


def test_http2_version_extension(srv) -> None:
    url = f"https://127.0.0.1:{srv.info['h2_port']}/?echo=1"
    with httpx.Client(transport=KeepAliveTransport(http_version="auto", ca_file=srv.ca_file)) as c:
        r = c.post(url, content=iter([b"ab", b"cd"]), headers={"Content-Length": "4"})
        assert r.http_version == "HTTP/2" and r.extensions["http_version"] == b"HTTP/2"
        echo = r.json()
        assert echo["version"] == "HTTP/2.0" and echo["body_len"] == 4
        assert echo["authority"] == f"127.0.0.1:{srv.info['h2_port']}"

    async def main() -> None:
        async with httpx.AsyncClient(
            transport=AsyncKeepAliveTransport(http_version="auto", ca_file=srv.ca_file)
        ) as c:
            r = await c.get(url)
            assert r.http_version == "HTTP/2" and r.json()["method"] == "GET"

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# Streaming both ways


def _pieces(n: int, size: int) -> Iterator[bytes]:
    for i in range(n):
        yield pattern(i * size, size)


def test_generator_upload_is_streamed(srv) -> None:
    n, size = 40, 64 * 1024
    expected = _fnv_hex(b"".join(_pieces(n, size)))
    pulled = []

    def gen() -> Iterator[bytes]:
        for i, piece in enumerate(_pieces(n, size)):
            pulled.append(i)
            yield piece

    with httpx.Client(transport=KeepAliveTransport()) as c:
        echo = c.post(srv.http_url + "?echo=1", content=gen()).json()
        assert (echo["body_len"], echo["body_fnv"]) == (n * size, expected)
        assert echo_framing(echo) == {"transfer-encoding": "chunked"}
        assert pulled == list(range(n))

        # With the length announced, it is sent with Content-Length (still piece by piece).
        echo = c.put(
            srv.http_url + "?echo=1", content=_pieces(n, size), headers={"Content-Length": str(n * size)}
        ).json()
        assert (echo["method"], echo["body_len"], echo["body_fnv"]) == ("PUT", n * size, expected)
        assert echo_framing(echo) == {"content-length": str(n * size)}

        # A multipart upload: httpx computes its length.
        echo = c.post(srv.http_url + "?echo=1", files={"f": ("a.bin", b"z" * 100_000)}).json()
        framing = echo_framing(echo)
        assert list(framing) == ["content-length"] and int(framing["content-length"]) == echo["body_len"] > 100_000
    assert _body.live_sources() == 0


def test_generator_exception_is_raised_as_it_is(srv) -> None:
    class Boom(Exception):
        pass

    def gen() -> Iterator[bytes]:
        yield b"x" * 1000
        raise Boom("the producer failed")

    with httpx.Client(transport=KeepAliveTransport()) as c:
        with pytest.raises(Boom):
            c.post(srv.http_url + "?echo=1", content=gen())
        assert c.get(srv.http_url).status_code == 200  # the client is fine afterwards
    assert _body.live_sources() == 0


def test_body_shorter_than_content_length_is_local_protocol_error(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:
        with pytest.raises(httpx.LocalProtocolError) as ei:
            c.post(srv.http_url + "?echo=1", content=iter([b"abc"]), headers={"Content-Length": "10"})
    assert isinstance(ei.value.__cause__, errors.BodySourceError)
    assert ei.value.request.method == "POST"


def test_stream_download_in_chunks_then_reuse(srv) -> None:
    n = 3_000_000
    with httpx.Client(transport=KeepAliveTransport()) as c:
        h = fnv1a64(b"")
        sizes = []
        with c.stream("GET", srv.http_url + f"?bytes={n}&chunked=1&chunks=7") as r:
            assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
            assert not r.is_stream_consumed
            for chunk in r.iter_bytes(chunk_size=100_000):
                sizes.append(len(chunk))
                h = fnv1a64(chunk, h) if len(sizes) <= 2 else h  # check the first pieces' bytes
        assert sum(sizes) == n and all(s == 100_000 for s in sizes[:-1])
        assert h == fnv1a64(pattern(0, 200_000))
        r = c.get(srv.http_url + "?echo=1")
        assert r.status_code == 200
    assert srv.stats()["accepted"] == 1  # the streamed response gave its connection back


def test_async_stream_both_ways(srv) -> None:
    n, size = 24, 50_000
    expected = _fnv_hex(b"".join(_pieces(n, size)))

    async def agen() -> AsyncIterator[bytes]:
        for piece in _pieces(n, size):
            await asyncio.sleep(0)
            yield piece

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncKeepAliveTransport()) as c:
            echo = (await c.post(srv.http_url + "?echo=1", content=agen())).json()
            assert (echo["body_len"], echo["body_fnv"]) == (n * size, expected)
            assert echo_framing(echo) == {"transfer-encoding": "chunked"}
            r = await c.post(srv.http_url + "?echo=1", content=agen(), headers={"Content-Length": str(n * size)})
            assert echo_framing(r.json()) == {"content-length": str(n * size)}

            total, first = 0, b""
            async with c.stream("GET", srv.http_url + "?bytes=2000000") as r:
                assert r.headers["content-length"] == "2000000"
                async for chunk in r.aiter_bytes(chunk_size=65536):
                    first = first or chunk
                    total += len(chunk)
            assert total == 2_000_000 and first == pattern(0, 65536)
            assert (await c.get(srv.http_url)).status_code == 200
            stats = c._transport.agent.stats()  # type: ignore[attr-defined]
            assert stats.connections_opened == 1 and stats.reused_requests == 3
        _nothing_pending()

    asyncio.run(main())


def test_unread_stream_closed_early_closes_its_connection(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:
        agent = c._transport.agent  # type: ignore[attr-defined]
        with c.stream("GET", srv.http_url + "?bytes=50000000") as r:
            first = next(r.iter_raw(1000))
            assert first == pattern(0, len(first))
        assert r.is_closed
        wait_until(lambda: agent.stats().connections_closed == 1, what="the aborted connection to be closed")
        assert agent.stats().idle == 0
        wait_until(lambda: _closed_by_client(srv) == 1, what="the server to see the client close")
        assert c.get(srv.http_url).status_code == 200
        assert srv.stats()["accepted"] == 2  # a new connection: the aborted one was not reused


def test_async_unread_stream_closed_early_closes_its_connection(srv) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncKeepAliveTransport()) as c:
            agent = c._transport.agent  # type: ignore[attr-defined]
            async with c.stream("GET", srv.http_url + "?bytes=50000000&chunked=1&chunks=50") as r:
                async for chunk in r.aiter_raw():
                    assert chunk
                    break
            assert r.is_closed
            await asyncio.sleep(0)
            wait_until(lambda: agent.stats().connections_closed == 1, what="the aborted connection to be closed")
            assert agent.stats().idle == 0
            assert (await c.get(srv.http_url)).status_code == 200
            assert srv.stats()["accepted"] == 2
        _nothing_pending()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# Errors and timeouts


def test_connection_refused_is_connect_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    with httpx.Client(transport=KeepAliveTransport()) as c:
        with pytest.raises(httpx.ConnectError) as ei:
            c.get(url)
    assert ei.value.request.url == url
    assert isinstance(ei.value.__cause__, errors.ConnectError) and "AGENT_CODE_CONNECT_REFUSED" in str(ei.value)

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncKeepAliveTransport()) as c:
            with pytest.raises(httpx.ConnectError) as ei:
                await c.get(url)
            assert ei.value.request.url == url

    asyncio.run(main())


def test_tls_failure_is_connect_error_and_trust_is_the_agents(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:  # the test CA is unknown
        with pytest.raises(httpx.ConnectError) as ei:
            c.get(srv.https_url)
    assert isinstance(ei.value.__cause__, errors.TLSError) and "unknown issuer" in str(ei.value)
    with httpx.Client(transport=KeepAliveTransport(ca_file=srv.ca_file)) as c:
        assert c.get(srv.https_url).status_code == 200


def test_slow_head_is_read_timeout(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:
        # httpx's timeout becomes the request's deadline: 4 x 0.1 s.
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as ei:
            c.get(srv.http_url + "?delay_ms=3000", timeout=0.1)
        assert time.monotonic() - t0 < 2.5  # well before the server would answer
        assert ei.value.request is not None and "AGENT_CODE_TIMEOUT" in str(ei.value)
        assert c.get(srv.http_url).status_code == 200
    # No deadline from httpx: the agent's headers timeout bounds the wait for the head.
    with httpx.Client(transport=KeepAliveTransport(headers_timeout_msecs=200), timeout=None) as c:
        with pytest.raises(httpx.ReadTimeout) as ei:
            c.get(srv.http_url + "?delay_ms=3000")
        assert "AGENT_CODE_HEADERS_TIMEOUT" in str(ei.value)

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncKeepAliveTransport()) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.get(srv.http_url + "?delay_ms=3000", timeout=0.1)
            assert (await c.get(srv.http_url)).status_code == 200
        _nothing_pending()

    asyncio.run(main())


def test_body_gap_is_read_timeout_while_iterating(srv) -> None:
    url = srv.http_url + "?chunked=1&chunks=3&chunk_delay_ms=3000"
    with httpx.Client(transport=KeepAliveTransport(body_timeout_msecs=200), timeout=None) as c:
        with c.stream("GET", url) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.ReadTimeout) as ei:
                r.read()
        assert "AGENT_CODE_BODY_TIMEOUT" in str(ei.value) and ei.value.request.url == url

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncKeepAliveTransport(body_timeout_msecs=200), timeout=None) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.get(url)
        _nothing_pending()

    asyncio.run(main())


@pytest.mark.parametrize(
    "query, exc",
    [
        ("?rst_mid=1&bytes=1000000", httpx.ReadError),  # RST mid-body, as httpcore raises it
        ("?fin_mid=1&bytes=1000000", httpx.RemoteProtocolError),  # closed before Content-Length
        ("?rst=1", httpx.ReadError),  # reset before any response byte
        ("?fin=1", httpx.RemoteProtocolError),  # "server disconnected without a response"
        ("?bad_status=1", httpx.RemoteProtocolError),
    ],
)
def test_broken_exchanges(srv, query: str, exc: type) -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:
        with pytest.raises(exc) as ei:
            c.get(srv.http_url + query)
        assert ei.value.request is not None and isinstance(ei.value.__cause__, errors.AgentError)
        assert c._transport.agent.stats().idle == 0  # type: ignore[attr-defined]

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncKeepAliveTransport()) as c:
            with pytest.raises(exc):
                await c.get(srv.http_url + query)
        _nothing_pending()

    asyncio.run(main())


def test_stale_post_is_remote_protocol_error(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:
        c.get(srv.http_url)  # one pooled connection
        with pytest.raises(httpx.RemoteProtocolError) as ei:
            c.post(srv.http_url + "?rst_if_reused=1", content=b"payload")
    assert isinstance(ei.value.__cause__, errors.StaleConnectionError)


def test_unsupported_protocol() -> None:
    with httpx.Client(transport=KeepAliveTransport()) as c:
        with pytest.raises(httpx.UnsupportedProtocol) as ei:
            c.get("ftp://127.0.0.1/file")
    assert "ftp://" in str(ei.value) and ei.value.request.url.scheme == "ftp"


def test_error_mapping_table() -> None:
    request = httpx.Request("GET", "http://127.0.0.1/")
    expected = {
        "DNS": httpx.ConnectError,
        "CONNECT_REFUSED": httpx.ConnectError,
        "CONNECT": httpx.ConnectError,
        "TLS": httpx.ConnectError,
        "PROXY": httpx.ProxyError,
        "CONNECT_TIMEOUT": httpx.ConnectTimeout,
        "HEADERS_TIMEOUT": httpx.ReadTimeout,
        "BODY_TIMEOUT": httpx.ReadTimeout,
        "TIMEOUT": httpx.ReadTimeout,
        "CONNECTION_RESET": httpx.ReadError,
        "CONNECTION_CLOSED": httpx.RemoteProtocolError,
        "BROKEN_PIPE": httpx.WriteError,
        "PROTOCOL": httpx.RemoteProtocolError,
        "STREAM_RESET": httpx.RemoteProtocolError,
        "STALE_CONNECTION": httpx.RemoteProtocolError,
        "RESPONSE_TOO_LARGE": httpx.ReadError,
        "BODY_SOURCE": httpx.LocalProtocolError,
        "INVALID_ARGUMENT": httpx.LocalProtocolError,
        "INVALID_URL": httpx.UnsupportedProtocol,
        "CANCELLED": httpx.TransportError,
        "INTERNAL": httpx.TransportError,
    }
    from keepalive_agent.httpx import _error

    for name, cls in expected.items():
        e = _error(_native.error_for(_native.CODES[name], "m"), request)
        assert type(e) is cls, (name, type(e))
        assert e.request is request and str(e) == f"m [AGENT_CODE_{name}]"


def test_response_too_large_is_read_error(srv) -> None:
    with httpx.Client(transport=KeepAliveTransport(max_response_bytes=1000)) as c:
        with pytest.raises(httpx.ReadError) as ei:
            c.get(srv.http_url + "?bytes=100000")
    assert isinstance(ei.value.__cause__, errors.ResponseTooLargeError)


def test_deadline_from_httpx_timeout() -> None:
    from keepalive_agent.httpx import _deadline

    def deadline(timeout: object) -> object:
        return _deadline(httpx.Request("GET", "http://x/", extensions={"timeout": httpx.Timeout(timeout).as_dict()}))

    assert deadline(5.0) == 20.0  # httpx's default: pool + connect + write + read
    assert deadline(httpx.Timeout(1.0, read=2.0)) == 5.0
    assert deadline(None) is None and deadline(httpx.Timeout(5.0, read=None)) is None
    assert _deadline(httpx.Request("GET", "http://x/")) is None  # no extension


def test_async_cancel_leaves_nothing_behind(srv) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncKeepAliveTransport(), timeout=None) as c:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.get(srv.http_url + "?delay_ms=3000"), 0.2)
            assert (await c.get(srv.http_url)).status_code == 200
        _nothing_pending()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# The transport's agent, and the optional dependency


def test_given_agent_stays_open_own_agent_is_closed(srv) -> None:
    with Agent() as agent:
        t = KeepAliveTransport(agent)
        with httpx.Client(transport=t) as c:
            assert c.get(srv.http_url).status_code == 200
        assert t.agent is agent and not agent.closed  # client.close() left it open
        assert agent.get(srv.http_url).reused

        async def main() -> None:
            async with httpx.AsyncClient(transport=AsyncKeepAliveTransport(agent)) as c:
                assert (await c.get(srv.http_url)).status_code == 200

        asyncio.run(main())
        assert not agent.closed

    own = KeepAliveTransport(max_sockets=2)
    with httpx.Client(transport=own):
        pass
    assert own.agent.closed

    async def amain() -> AsyncKeepAliveTransport:
        t = AsyncKeepAliveTransport()
        async with httpx.AsyncClient(transport=t):
            pass
        return t

    assert asyncio.run(amain()).agent.closed

    with Agent() as agent, pytest.raises(TypeError):
        KeepAliveTransport(agent, keep_alive=False)
    with pytest.raises(TypeError):
        AsyncKeepAliveTransport("not an agent")  # type: ignore[arg-type]
    with pytest.raises(keepalive_agent.InvalidOptionError):
        KeepAliveTransport(scheduling="random")


def test_import_without_httpx_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx now fails
    monkeypatch.delitem(sys.modules, "keepalive_agent.httpx")
    with pytest.raises(ImportError) as ei:
        importlib.import_module("keepalive_agent.httpx")
    assert "keepalive_agent[httpx]" in str(ei.value)
