"""The requests adapter beside requests' own HTTPAdapter: every scenario runs against both
(``adapter_kind`` is "stock" or "ours") on the same local server and asserts the same
outcome. Where the engine deliberately differs, the stock side is skipped with the
reason (and the difference is listed in the adapter's documentation)."""

from __future__ import annotations

import hashlib
import http.server
import pickle
import re
import shutil
import socket
import subprocess
import threading
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from keepalive_agent.requests_adapter import KeepAliveAdapter

from conftest import echo_framing, pattern, wait_until

KINDS = ["stock", "ours"]


def make_adapter(kind: str, **agent_kwargs: Any) -> requests.adapters.BaseAdapter:
    return HTTPAdapter() if kind == "stock" else KeepAliveAdapter(**agent_kwargs)


def mounted(kind: str, **agent_kwargs: Any) -> Tuple[requests.Session, Any]:
    s = requests.Session()
    a = make_adapter(kind, **agent_kwargs)
    s.mount("http://", a)
    s.mount("https://", a)
    return s, a


@pytest.fixture(params=KINDS)
def adapter_kind(request: Any) -> str:
    return request.param


@pytest.fixture
def session(adapter_kind: str) -> Iterator[requests.Session]:
    s, _ = mounted(adapter_kind)
    yield s
    s.close()


@pytest.fixture
def no_ca_bundle_env(monkeypatch: Any) -> None:
    """verify=True means the default trust (requests takes REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE from the environment as ``verify`` otherwise)."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def stock_differs(kind: str, reason: str) -> None:
    if kind == "stock":
        pytest.skip(f"deliberate difference: {reason}")


# ---------------------------------------------------------------------------------------
# Small servers written here: a canned-bytes server (any response, however broken) and an
# http.server in a thread.


class CannedServer:
    """Answers the request for each path with the given bytes as they are, then closes
    (give them ``Connection: close`` when a client may send more than one request)."""

    def __init__(self, responses: Dict[str, bytes]) -> None:
        self.responses = responses
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            c.settimeout(10)
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = c.recv(65536)
                    if not data:
                        return
                    head += data
                c.sendall(self.responses[head.split(b" ")[1].decode("latin-1")])
                c.shutdown(socket.SHUT_WR)
                while c.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


class ThreadedServer:
    """An ``http.server`` with the given handler class on 127.0.0.1, in a thread."""

    def __init__(self, handler: type) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: Optional[List[Tuple[str, str]]] = None) -> None:
        self.send_response(status)
        for name, value in headers or []:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


@pytest.fixture
def canned() -> Iterator[Callable[[Dict[str, bytes]], CannedServer]]:
    servers: List[CannedServer] = []

    def start(responses: Dict[str, bytes]) -> CannedServer:
        servers.append(CannedServer(responses))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def threaded() -> Iterator[Callable[[type], ThreadedServer]]:
    servers: List[ThreadedServer] = []

    def start(handler: type) -> ThreadedServer:
        servers.append(ThreadedServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def full_backlog_listener() -> Tuple[socket.socket, List[socket.socket]]:
    """A listening socket whose accept queue is full: a further connect gets no answer
    (its SYN is dropped), so connecting to it times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(c)
    return listener, fillers


# ---------------------------------------------------------------------------------------
# 1. Timeouts


@pytest.mark.parametrize("timeout", [5, 5.0, (5, 5), (5, None), (None, 5), None,
                                     urllib3.Timeout(connect=5, read=5), urllib3.Timeout(total=5)])
def test_timeout_forms_are_accepted(srv, session, timeout: Any) -> None:
    assert session.get(srv.http_url, timeout=timeout).status_code == 200


@pytest.mark.parametrize("timeout, message", [
    ((1, 2, 3), "Invalid timeout (1, 2, 3). Pass a (connect, read) timeout tuple"),
    ((1, -2), "Invalid timeout (1, -2)"),
    ("1", "Timeout value connect was 1, but it must be an int, float or None."),
    ([1, 2], "Timeout value connect was [1, 2], but it must be an int, float or None."),
    (0, "Attempted to set connect timeout to 0"),
])
def test_bad_timeouts_raise_what_requests_raises(srv, session, timeout: Any, message: str) -> None:
    with pytest.raises(ValueError) as ei:
        session.get(srv.http_url, timeout=timeout)
    assert str(ei.value).startswith(message)


@pytest.mark.parametrize("timeout", [0.3, (2, 0.3)])
def test_read_timeout(srv, session, timeout: Any) -> None:
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(srv.http_url + "?delay_ms=4000", timeout=timeout)
    # the next request works (a new connection)
    assert session.get(srv.http_url, timeout=5).status_code == 200


def test_stream_timeout_while_iterating_is_connection_error(srv, session) -> None:
    url = srv.http_url + "?bytes=3000&chunked=1&chunks=3&chunk_delay_ms=3000"
    r = session.get(url, stream=True, timeout=0.5)
    assert r.status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError) as ei:
        for _ in r.iter_content(100):
            pass
    # requests' ConnectionError wrapping urllib3's ReadTimeoutError, not a ChunkedEncodingError
    assert isinstance(ei.value.args[0], urllib3.exceptions.ReadTimeoutError)
    assert not isinstance(ei.value, requests.exceptions.Timeout)
    r.close()


def test_stream_timeout_from_raw_is_urllib3s(srv, session) -> None:
    url = srv.http_url + "?bytes=3000&chunked=1&chunks=3&chunk_delay_ms=3000"
    with session.get(url, stream=True, timeout=0.5) as r:
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            r.raw.read(3000)


def test_connect_timeout(adapter_kind: str) -> None:
    listener, fillers = full_backlog_listener()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with mounted(adapter_kind)[0] as s:
            with pytest.raises(requests.exceptions.Timeout) as ei:
                s.get(url, timeout=(0.3, 0.3))
            if adapter_kind == "stock":
                assert isinstance(ei.value, requests.exceptions.ConnectTimeout)
            # ours: the engine's one deadline does not say whether it passed while
            # connecting (a ReadTimeout); the agent's connect timeout does:
        if adapter_kind == "ours":
            with mounted(adapter_kind, connect_timeout_msecs=300)[0] as s:
                with pytest.raises(requests.exceptions.ConnectTimeout):
                    s.get(url, timeout=10)
    finally:
        for c in fillers:
            c.close()
        listener.close()


# ---------------------------------------------------------------------------------------
# 2 and 3. verify and cert per request


def test_verify_false_and_ca_bundle(srv, session, no_ca_bundle_env) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        session.get(srv.https_url)  # the test CA is not a default one
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
        assert session.get(srv.https_url, verify=False).text == "hello, world\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert session.get(srv.https_url, verify=srv.ca_file).text == "hello, world\n"
    with pytest.raises(requests.exceptions.SSLError):
        session.get(srv.https_url, verify=True)
    session.verify = srv.ca_file  # the session's setting, as requests passes it
    assert session.get(srv.https_url).status_code == 200


def test_verify_ca_directory(srv, session, tmp_path) -> None:
    # an OpenSSL CApath: certificates under their subject hash
    h = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", srv.ca_file],
                       check=True, capture_output=True, text=True).stdout.strip()
    shutil.copy(srv.ca_file, tmp_path / f"{h}.0")
    assert session.get(srv.https_url, verify=str(tmp_path)).status_code == 200


def test_environment_ca_bundle_is_verify(srv, adapter_kind, monkeypatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", srv.ca_file)
    with mounted(adapter_kind)[0] as s:
        assert s.get(srv.https_url).status_code == 200
        s.trust_env = False
        with pytest.raises(requests.exceptions.SSLError):
            s.get(srv.https_url, verify=True)


def test_environment_ca_bundle_with_the_adapters_own_ca(srv, adapter_kind, monkeypatch, tmp_path) -> None:
    stock_differs(adapter_kind, "HTTPAdapter has no CA configuration of its own for the environment to override")
    other = tmp_path / "other-bundle.pem"
    other.write_bytes(open(srv.ca_file, "rb").read())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    s, adapter = mounted(adapter_kind, ca_file=srv.ca_file)
    with s:
        assert s.get(srv.https_url).status_code == 200
        assert adapter._agents == {} and adapter.agent.stats().requests == 1  # the adapter's own agent
        assert s.get(srv.https_url, verify=str(other)).status_code == 200  # the same path given: the same


def test_an_agent_per_tls_setting(srv, adapter_kind, no_ca_bundle_env) -> None:
    stock_differs(adapter_kind, "urllib3 keeps a pool per TLS setting inside its PoolManager; this checks our agents")
    s, adapter = mounted(adapter_kind)
    with s:
        for _ in range(3):
            with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
                assert s.get(srv.https_url, verify=False).status_code == 200
            assert s.get(srv.https_url, verify=srv.ca_file).status_code == 200
            assert s.get(srv.http_url, verify=False).status_code == 200  # no TLS: the default agent
        agents = dict(adapter._agents)
        assert sorted(agents, key=str) == sorted([(None, False, None), (None, srv.ca_file, None)], key=str)
        assert all(a.stats().requests == 3 and a.stats().connections_opened == 1 for a in agents.values())
        assert adapter.agent.stats().requests == 3
        assert srv.stats()["accepted"] == 3  # one connection per setting, each reused
    assert all(a.closed for a in agents.values()) and adapter.agent.closed and adapter._agents == {}


@pytest.mark.parametrize("verify, cert, message", [
    ("/nonexistent/ca.pem", None, "Could not find a suitable TLS CA certificate bundle, invalid path: /nonexistent/ca.pem"),
    (True, "/nonexistent/client.pem", "Could not find the TLS certificate file, invalid path: /nonexistent/client.pem"),
    (True, ("/nonexistent/client.pem", "/nonexistent/key.pem"), "Could not find the TLS certificate file, invalid path: /nonexistent/client.pem"),
    (True, ("{ca}", "/nonexistent/key.pem"), "Could not find the TLS key file, invalid path: /nonexistent/key.pem"),
])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_missing_tls_files_raise_requests_oserror(srv, session, scheme, verify, cert, message) -> None:
    if isinstance(cert, tuple):
        cert = tuple(c.format(ca=srv.ca_file) for c in cert)
    url = srv.https_url if scheme == "https" else srv.http_url
    if scheme == "http" and cert is None:  # requests checks the CA bundle for https only
        assert session.get(url, verify=verify).status_code == 200
        return
    with pytest.raises(OSError) as ei:
        session.get(url, verify=verify, cert=cert)
    assert type(ei.value) is OSError and str(ei.value) == message
    assert not srv.stats()["accepted"]  # checked before anything was sent


def test_unloadable_client_certificate_is_ssl_error(srv, session, tmp_path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(requests.exceptions.SSLError):
        session.get(srv.https_url, verify=srv.ca_file, cert=(str(bad), str(bad)))


@pytest.mark.parametrize("form", ["tuple", "one file"])
def test_client_certificate_per_request(nginx, adapter_kind, form, tmp_path) -> None:
    if form == "tuple":
        cert: Any = (nginx.NGINX_CLIENT_CERT, nginx.NGINX_CLIENT_KEY)
    else:
        both = tmp_path / "client.pem"
        with open(nginx.NGINX_CLIENT_CERT, "rb") as c, open(nginx.NGINX_CLIENT_KEY, "rb") as k:
            both.write_bytes(c.read() + k.read())
        cert = str(both)
    with mounted(adapter_kind)[0] as s:
        ca = nginx.NGINX_CA_FILE
        r = s.get(nginx.NGINX_MTLS_URL, verify=ca, cert=cert, timeout=10)
        assert r.text == "client CN=keepalive-agent test client\n"
        assert s.get(nginx.NGINX_MTLS_URL, verify=ca, timeout=10).status_code == 400  # none sent: nginx says 400


# ---------------------------------------------------------------------------------------
# 4. Uploads from generators are chunked


def test_generator_upload_is_chunked(srv, session) -> None:
    def gen() -> Iterator[Any]:
        yield b"ab"
        yield "cd"  # str pieces are sent as UTF-8, as urllib3 does
        yield b""
        yield b"ef"

    e = session.post(srv.http_url + "?echo=1", data=gen()).json()
    assert e["body_len"] == 6
    assert {k: v.lower() for k, v in echo_framing(e).items()} == {"transfer-encoding": "chunked"}


def test_file_upload_has_content_length(srv, session, tmp_path) -> None:
    path = tmp_path / "up.bin"
    path.write_bytes(b"x" * 100_000)
    with open(path, "rb") as f:
        e = session.put(srv.http_url + "?echo=1", data=f).json()
    assert e["body_len"] == 100_000 and echo_framing(e) == {"content-length": "100000"}


# ---------------------------------------------------------------------------------------
# 5. Releasing connections: with blocks and Session.close()


def _closed_by_client(srv) -> List[bool]:
    return [c["closed_by_client"] for c in srv.stats()["connections"] if not c["open"]]


def test_response_as_context_manager(srv, session) -> None:
    with session.get(srv.http_url + "?bytes=100", stream=True) as r:
        assert r.content == pattern(0, 100)
    # read to the end: the connection went back to the pool and is reused
    assert session.get(srv.http_url).headers["X-Conn-Requests"] == "2"
    with session.get(srv.http_url + f"?bytes={8 << 20}", stream=True) as r:
        assert r.raw.read(10) == pattern(0, 10)
    # left unfinished: closed (never reused with a body pending)
    wait_until(lambda: _closed_by_client(srv) == [True], what="the server to see the connection closed")
    r = session.get(srv.http_url)
    assert r.headers["X-Conn-Requests"] == "1"
    assert srv.stats()["accepted"] == 2


def test_session_close_with_an_unconsumed_stream(srv, adapter_kind) -> None:
    s, adapter = mounted(adapter_kind)
    r = s.get(srv.http_url + f"?bytes={8 << 20}", stream=True)
    assert r.raw.read(10) == pattern(0, 10)
    s.close()
    if adapter_kind == "ours":
        # the adapter closes the streams it handed out: the connection is not left busy
        wait_until(lambda: _closed_by_client(srv) == [True], what="the server to see the connection closed")
        assert adapter.agent.closed
    r.close()
    wait_until(lambda: _closed_by_client(srv) == [True], what="the server to see the connection closed")
    # the session still works after close(), as requests' does
    assert s.get(srv.http_url).status_code == 200
    s.close()


def test_session_close_with_a_given_agent_closes_open_streams(srv) -> None:
    from keepalive_agent import Agent

    with Agent() as agent:
        s = requests.Session()
        s.mount("http://", KeepAliveAdapter(agent))
        r = s.get(srv.http_url + f"?bytes={8 << 20}", stream=True)
        r.raw.read(10)
        assert agent.stats().active == 1
        s.close()
        assert not agent.closed and r.raw.closed
        wait_until(lambda: agent.stats().active == 0, what="the aborted request's connection to close")
        wait_until(lambda: _closed_by_client(srv) == [True], what="the server to see the connection closed")
        r.close()


# ---------------------------------------------------------------------------------------
# 6. Digest authentication (401, then the request again with credentials)


class DigestHandler(QuietHandler):
    realm, nonce, opaque = "parity", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "5ccc069c403ebaf9f0171e9517f40e41"
    seen: List[Tuple[str, bool, int]] = []

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Digest "):
            return False
        f = dict(re.findall(r'(\w+)="?([^",]*)"?', auth[7:]))
        ha1 = hashlib.md5(f"user:{self.realm}:secret".encode()).hexdigest()
        ha2 = hashlib.md5(f"{self.command}:{f.get('uri')}".encode()).hexdigest()
        want = hashlib.md5(
            f"{ha1}:{self.nonce}:{f.get('nc')}:{f.get('cnonce')}:{f.get('qop')}:{ha2}".encode()
        ).hexdigest()
        return f.get("username") == "user" and f.get("opaque") == self.opaque and f.get("response") == want

    def _handle(self) -> None:
        body = self.read_body()
        ok = self._authorized()
        DigestHandler.seen.append((self.command, ok, len(body)))
        if not ok:
            challenge = (f'Digest realm="{self.realm}", qop="auth", algorithm=MD5, '
                         f'nonce="{self.nonce}", opaque="{self.opaque}"')
            self.reply(401, b"who are you?", [("WWW-Authenticate", challenge), ("Set-Cookie", "s=1; Path=/")])
        else:
            cookie = self.headers.get("Cookie", "")
            self.reply(200, f"welcome {len(body)} {cookie}".encode())

    do_GET = do_POST = _handle


@pytest.mark.parametrize("stream", [False, True])
def test_digest_auth(threaded, session, stream: bool, tmp_path) -> None:
    server = threaded(DigestHandler)
    DigestHandler.seen = []
    auth = requests.auth.HTTPDigestAuth("user", "secret")
    r = session.get(server.url + "/private", auth=auth, stream=stream)
    assert (r.status_code, r.text) == (200, "welcome 0 s=1")
    assert [h.status_code for h in r.history] == [401]
    # a file body is rewound (seek to where it started) and sent again
    path = tmp_path / "body.bin"
    path.write_bytes(b"y" * 5000)
    with open(path, "rb") as f:
        r = session.post(server.url + "/private", data=f, auth=requests.auth.HTTPDigestAuth("user", "secret"),
                         stream=stream)
    assert (r.status_code, r.text) == (200, "welcome 5000 s=1")
    assert DigestHandler.seen == [("GET", False, 0), ("GET", True, 0), ("POST", False, 5000), ("POST", True, 5000)]
    with pytest.raises(requests.exceptions.HTTPError):  # wrong password: the 401 stays
        session.get(server.url + "/private", auth=requests.auth.HTTPDigestAuth("user", "wrong")).raise_for_status()


# ---------------------------------------------------------------------------------------
# 7. Pickling a session with the adapter mounted


def test_pickled_session_works(srv, adapter_kind) -> None:
    s, adapter = mounted(adapter_kind)
    with s:
        assert s.get(srv.http_url).status_code == 200
        s2 = pickle.loads(pickle.dumps(s))
    with s2:
        assert s2.get(srv.http_url).text == "hello, world\n"
        a2 = s2.get_adapter(srv.http_url)
        assert type(a2) is type(adapter) and s2.get_adapter(srv.https_url) is a2
        if adapter_kind == "ours":
            assert a2.agent is not adapter.agent and a2.agent_options == adapter.agent_options
            assert a2.agent.stats().requests == 1


# ---------------------------------------------------------------------------------------
# 8. Redirects to a non-ASCII Location


def test_redirect_to_non_ascii_location(canned, session) -> None:
    server = canned({
        "/start": "HTTP/1.1 302 Found\r\nLocation: /caf\u00e9/\u00fc?q=\u00e9\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n".encode("utf-8"),
        "/caf%C3%A9/%C3%BC?q=%C3%A9": b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nlanded",
        "/latin1": "HTTP/1.1 302 Found\r\nLocation: /caf\u00e9\r\nContent-Length: 0\r\n"
                   "Connection: close\r\n\r\n".encode("latin-1"),
    })
    r = session.get(server.url + "/start")
    assert (r.status_code, r.text) == (200, "landed")
    assert r.url == server.url + "/caf%C3%A9/%C3%BC?q=%C3%A9"
    assert [h.status_code for h in r.history] == [302]
    assert r.history[0].headers["Location"] == "/caf\u00e9/\u00fc?q=\u00e9".encode("utf-8").decode("latin-1")
    with pytest.raises(UnicodeDecodeError):  # a latin-1 Location is not UTF-8: requests gives up
        session.get(server.url + "/latin1")


# ---------------------------------------------------------------------------------------
# 9. Broken framing


BROKEN = {
    "/cl-conflict": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "/cl-same": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "/bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n",
    "/short-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nabc",
    "/short-length": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "/no-colon": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Broken-Line\r\n\r\nhello",
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path, expected", [
    ("/cl-conflict", requests.exceptions.InvalidHeader),
    ("/cl-same", b"hello"),
    ("/bad-chunk-size", requests.exceptions.ChunkedEncodingError),
    ("/short-chunk", requests.exceptions.ChunkedEncodingError),
    ("/short-length", requests.exceptions.ChunkedEncodingError),
])
def test_broken_framing(canned, session, path: str, expected: Any, stream: bool) -> None:
    server = canned(BROKEN)
    if isinstance(expected, bytes):
        assert session.get(server.url + path, stream=stream).content == expected
        return
    with pytest.raises(expected):
        session.get(server.url + path, stream=stream).content


def test_reset_before_and_during_the_body(srv, session) -> None:
    with pytest.raises(requests.exceptions.ConnectionError) as ei:
        session.get(srv.http_url + "?rst=1")
    assert not isinstance(ei.value, requests.exceptions.ChunkedEncodingError)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        session.get(srv.http_url + "?rst_mid=1&bytes=100000")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        session.get(srv.http_url + "?fin_mid=1&bytes=100000")


def test_header_line_without_colon(canned, adapter_kind) -> None:
    stock_differs(adapter_kind, "http.client skips a header line without a colon; the engine (hyper) refuses the response")
    server = canned(BROKEN)
    with mounted(adapter_kind)[0] as s:
        with pytest.raises(requests.exceptions.ConnectionError):
            s.get(server.url + "/no-colon")


# ---------------------------------------------------------------------------------------
# 10. Proxies and Session.close()


def via_proxy(text: str, url: str) -> bool:
    """The fake proxy's answer for ``url`` (the engine writes the default port in the
    absolute-form target, urllib3 leaves it out: both mean the same URL)."""
    return text in (f"via proxy {url}", f"via proxy {url.replace('.test/', '.test:80/')}")


class FakeProxyHandler(QuietHandler):
    """A forward proxy that answers itself: the body names the absolute-form target."""

    def do_GET(self) -> None:  # noqa: N802
        self.reply(200, f"via proxy {self.path}".encode())


def test_session_close_forgets_proxy_state(threaded, adapter_kind) -> None:
    proxy = threaded(FakeProxyHandler).url
    s, adapter = mounted(adapter_kind)
    s.proxies = {"http": proxy}
    s.trust_env = False
    with s:
        assert via_proxy(s.get("http://origin.test/a").text, "http://origin.test/a")
        assert list(adapter.proxy_manager) == [proxy]
        first = adapter.proxy_manager[proxy]
        s.close()
        if adapter_kind == "ours":
            assert adapter.proxy_manager == {} and first.closed and adapter._agents == {}
        # usable after close(), as requests' adapter is: a new agent for the proxy
        assert via_proxy(s.get("http://origin.test/b").text, "http://origin.test/b")
        assert list(adapter.proxy_manager) == [proxy]
