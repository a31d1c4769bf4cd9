"""The requests transport adapter running real requests code."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from typing import Iterator

import pytest
import requests
import urllib3

from keepalive_agent import Agent
from keepalive_agent.requests_adapter import KeepAliveAdapter

from conftest import free_port


@pytest.fixture
def session(srv) -> Iterator[requests.Session]:
    s = requests.Session()
    adapter = KeepAliveAdapter(ca_file=srv.ca_file)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    yield s
    s.close()
    assert adapter.agent.closed  # the adapter's own agent is closed with the session


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_get_reuses_one_connection(srv, session, scheme: str) -> None:
    url = srv.http_url if scheme == "http" else srv.https_url
    for i in range(10):
        r = session.get(url)
        assert r.status_code == 200 and r.ok and r.reason == "OK"
        assert r.text == "hello, world\n" and r.content == b"hello, world\n"
        assert r.headers["X-Conn-Requests"] == str(i + 1)  # CaseInsensitiveDict
        assert r.url == url and r.request.method == "GET"
        assert r.elapsed.total_seconds() > 0
    assert srv.stats()["accepted"] == 1


def test_post_json_and_params(srv, session) -> None:
    r = session.post(srv.http_url, params={"echo": "1"}, json={"name": "x", "n": [1, 2]})
    e = r.json()
    hs = {n.lower(): v for n, v in e["headers"]}
    assert e["method"] == "POST" and e["target"] == "/?echo=1"
    assert hs["content-type"] == "application/json"
    assert int(hs["content-length"]) == e["body_len"] == len(json.dumps({"name": "x", "n": [1, 2]}))
    assert hs["user-agent"].startswith("python-requests/")  # requests' own headers go through
    r = session.put(srv.http_url + "?echo=1", data={"a": "1", "b": "2"})
    hs = {n.lower(): v for n, v in r.json()["headers"]}
    assert hs["content-type"] == "application/x-www-form-urlencoded" and r.json()["body_len"] == 7
    r = session.post(srv.http_url + "?echo=1", data=iter([b"ab", b"cd"]))  # a chunk generator
    assert r.json()["body_len"] == 4
    assert session.head(srv.http_url).content == b""


def test_raise_for_status(srv, session) -> None:
    r = session.get(srv.http_url + "?status=404")
    assert r.status_code == 404 and r.reason == "Not Found" and not r.ok
    with pytest.raises(requests.exceptions.HTTPError) as ei:
        r.raise_for_status()
    assert ei.value.response is r


def test_timeouts(srv, session) -> None:
    with pytest.raises(requests.exceptions.Timeout) as ei:
        session.get(srv.http_url + "?delay_ms=3000", timeout=0.2)
    assert isinstance(ei.value, requests.exceptions.ReadTimeout)
    with pytest.raises(requests.exceptions.Timeout):
        session.get(srv.http_url + "?delay_ms=3000", timeout=(0.1, 0.1))
    assert session.get(srv.http_url, timeout=(5, 5)).status_code == 200


def test_errors_map_to_requests_exceptions(srv) -> None:
    with requests.Session() as s:
        s.mount("http://", KeepAliveAdapter())
        s.mount("https://", KeepAliveAdapter())  # no CA: the test server is untrusted
        with pytest.raises(requests.exceptions.ConnectionError):
            s.get(f"http://127.0.0.1:{free_port()}/")
        with pytest.raises(requests.exceptions.SSLError):
            s.get(srv.https_url)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):  # the body broke
            s.get(srv.http_url + "?rst_mid=1&bytes=100000")
        with pytest.raises(requests.exceptions.ConnectionError):  # before the head
            s.get(srv.http_url + "?rst=1")
        # verify and cert per request, as requests (tests/test_requests_parity.py)
        with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
            assert s.get(srv.https_url, verify=False).status_code == 200
        assert s.get(srv.https_url, verify=srv.ca_file).status_code == 200
        with pytest.raises(OSError, match="Could not find the TLS certificate file"):
            s.get(srv.https_url, cert="/nonexistent/client.pem")


def test_shared_agent_is_not_closed_by_the_adapter(srv) -> None:
    with Agent() as agent:
        with requests.Session() as s:
            s.mount("http://", KeepAliveAdapter(agent))
            assert s.get(srv.http_url).status_code == 200
        assert not agent.closed
        assert agent.stats().requests == 1
    with pytest.raises(TypeError):
        KeepAliveAdapter(agent, keep_alive=False)  # type: ignore[misc]


class _GzipCookieHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        body = gzip.compress(b"compressed hello")
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "a=1; Path=/")
        self.send_header("Set-Cookie", "b=2; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_gzip_body_and_cookies_like_requests() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GzipCookieHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        with requests.Session() as s:
            s.mount("http://", KeepAliveAdapter())
            r = s.get(url)
            assert r.content == b"compressed hello"
            assert r.headers["set-cookie"] == "a=1; Path=/, b=2; Path=/"
            assert r.cookies.get_dict() == {"a": "1", "b": "2"}
            assert s.cookies.get_dict() == {"a": "1", "b": "2"}  # the session kept them
            assert list(r.iter_content(4))[0] == b"comp"
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------------------------
# Streaming through requests: stream=True reads from the engine's stream; generators and
# files are uploaded through a body source.


def test_stream_true_iter_content_256mib_with_flat_rss(srv, session) -> None:
    import gc

    from conftest import pattern, rss

    n = 256 << 20
    url = srv.http_url + f"?bytes={n}"
    with session.get(srv.http_url + f"?bytes={16 << 20}", stream=True) as r:  # warm-up
        for _ in r.iter_content(1 << 20):
            pass
    gc.collect()
    base = peak = rss()
    got = 0
    r = session.get(url, stream=True)
    assert r.status_code == 200 and r.headers["content-length"] == str(n)
    assert not r._content_consumed  # nothing but the head has been read
    for i, chunk in enumerate(r.iter_content(chunk_size=1 << 20)):
        assert 0 < len(chunk) <= 1 << 20
        assert chunk == pattern(got, len(chunk))
        got += len(chunk)
        if i % 16 == 0:
            peak = max(peak, rss())
    assert got == n
    end = rss()
    r.close()
    assert peak - base < 32 << 20 and end - base < 32 << 20, (base, peak, end)
    # Consumed to the end: the connection went back to the pool and is reused.
    assert session.get(srv.http_url).headers["X-Conn-Requests"] == "3"
    assert srv.stats()["accepted"] == 1


def test_stream_true_raw_read_and_early_close(srv, session) -> None:
    from conftest import pattern, wait_until

    r = session.get(srv.http_url + f"?bytes={8 << 20}", stream=True)
    assert r.raw.read(10) == pattern(0, 10)
    assert r.raw.read(100_000) == pattern(10, 100_000)  # urllib3-like: amt bytes
    r.close()  # before the end: aborted, the connection closed
    wait_until(
        lambda: [c["closed_by_client"] for c in srv.stats()["connections"]] == [True],
        what="the server to see the connection closed",
    )
    adapter = session.get_adapter(srv.http_url)
    s = adapter.agent.stats()
    assert (s.requests, s.errors, s.idle) == (1, 1, 0)
    with session.get(srv.http_url + "?bytes=100", stream=True) as r:
        assert r.content == pattern(0, 100) and r.text == pattern(0, 100).decode()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with session.get(srv.http_url + "?rst_mid=1&bytes=1000000", stream=True) as r:
            for _ in r.iter_content(65536):
                pass


def test_generator_and_file_uploads_are_streamed(srv, session, tmp_path) -> None:
    import os

    from conftest import echo_framing, fnv1a64

    data = os.urandom(1 << 20)
    fnv = f"{fnv1a64(data):016x}"

    def gen():
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    r = session.post(srv.http_url + "?echo=1", data=gen())
    e = r.json()
    assert e["body_len"] == len(data) and e["body_fnv"] == fnv
    assert echo_framing(e) == {"transfer-encoding": "chunked"}
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        e = session.put(srv.http_url + "?echo=1", data=f).json()
    assert e["body_len"] == len(data) and e["body_fnv"] == fnv
    assert echo_framing(e) == {"content-length": str(len(data))}

    class Broke(Exception):
        pass

    def failing():
        yield b"x"
        raise Broke("producer")

    with pytest.raises(Broke):
        session.post(srv.http_url + "?echo=1", data=failing())


def test_stream_true_decodes_gzip_incrementally() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GzipCookieHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        with requests.Session() as s:
            s.mount("http://", KeepAliveAdapter())
            with s.get(url, stream=True) as r:
                assert b"".join(r.iter_content(3)) == b"compressed hello"
                assert r.cookies.get_dict() == {"a": "1", "b": "2"}
            with s.get(url, stream=True) as r:
                assert gzip.decompress(r.raw.read()) == b"compressed hello"  # as sent, like urllib3
            with s.get(url, stream=True) as r:
                assert r.raw.read(decode_content=True) == b"compressed hello"
    finally:
        httpd.shutdown()
        httpd.server_close()
