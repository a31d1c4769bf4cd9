"""Proxies (tinyproxy, squid), the proxy environment, NO_PROXY, the requests adapter through
proxies, happy eyeballs, the DNS cache, TLS trust and messages, mutual TLS (nginx)."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import requests

import keepalive_agent
from keepalive_agent import Agent, errors
from keepalive_agent.requests_adapter import KeepAliveAdapter

from conftest import wait_until

pytestmark = pytest.mark.timeout(60)

PROXY_VARIABLES = (
    "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
    "no_proxy", "NO_PROXY",
)


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without proxy variables (and without SSL_CERT_FILE/DIR); each sets
    what it needs, and monkeypatch restores the rest afterwards."""
    for name in PROXY_VARIABLES + ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


def clients(lines: List[Any]) -> set:
    """Distinct client connections (CLIENT_IP:PORT) of squid access-log lines."""
    return {x.client for x in lines}


def squid_lines(proxies: Any, mark: Dict[str, int], n: int, what: str = "access-log lines") -> List[Any]:
    """The access-log lines since ``mark`` once there are ``n`` of them (squid writes a
    line as a transaction ends, which may be just after the client has its response; a
    CONNECT line when its tunnel closes), and 0.2 s more so that a surplus line shows."""
    wait_until(lambda: len(proxies.squid_since(mark)) >= n, what=f"{n} {what}")
    time.sleep(0.2)
    return proxies.squid_since(mark)


def assert_went_direct(proxies: Any, nginx: Any, mark: Dict[str, int]) -> None:
    """Nothing went through squid since ``mark``: a sentinel request sent through squid
    afterwards is the only new access-log line (squid logs a plain-HTTP request at once;
    a CONNECT line when its tunnel closes, so close agents before calling this)."""
    token = "sentinel-" + uuid.uuid4().hex  # in the path: squid logs URLs without the query
    with Agent(proxy=proxies.squid_url, proxy_from_env=False) as a:
        assert a.get(nginx.NGINX_HTTP_URL + token, timeout=10).status == 404
    wait_until(lambda: any(token in x.url for x in proxies.squid_since(mark)), what="the sentinel's log line")
    time.sleep(0.2)
    others = [x for x in proxies.squid_since(mark) if token not in x.url]
    assert others == []


# ---------------------------------------------------------------------------------------
# squid


@pytest.mark.parametrize("keep_alive", [True, False])
def test_squid_http_absolute_form(proxies, nginx, keep_alive: bool) -> None:
    mark = proxies.mark()
    with Agent(proxy=proxies.squid_url, keep_alive=keep_alive) as a:
        for _ in range(5):
            r = a.get(nginx.NGINX_HTTP_URL, timeout=10)
            assert r.status == 200 and r.body == b"hello, world\n"
            assert "from keepalive-agent-test-proxy" in r.headers["x-cache"]  # squid answered
        s = a.stats()
    lines = squid_lines(proxies, mark, 5)
    assert [(x.method, x.url, x.status) for x in lines] == [("GET", nginx.NGINX_HTTP_URL, 200)] * 5
    if keep_alive:
        assert len(clients(lines)) == 1
        assert (s.connections_opened, s.requests, s.reused_requests) == (1, 5, 4)
    else:
        assert len(clients(lines)) == 5
        assert (s.connections_opened, s.requests, s.reused_requests) == (5, 5, 0)
    assert (s.dns_lookups, s.dns_cache_hits) == (0, 0)  # an IP literal proxy: no lookup


@pytest.mark.parametrize("keep_alive", [True, False])
def test_squid_https_connect_tunnel(proxies, nginx, keep_alive: bool) -> None:
    mark = proxies.mark()
    with Agent(proxy=proxies.squid_url, ca_file=nginx.NGINX_CA_FILE, keep_alive=keep_alive) as a:
        for i in range(5):
            r = a.get(nginx.NGINX_HTTPS_URL, timeout=10)
            assert r.status == 200 and r.body == b"hello, world\n"
            assert "x-cache" not in r.headers  # end to end TLS: squid only relays bytes
            assert r.reused == (keep_alive and i > 0)
        s = a.stats()
    tunnels = 1 if keep_alive else 5
    assert s.connections_opened == tunnels and s.requests == 5
    origin = nginx.NGINX_HTTPS_URL[len("https://"):].rstrip("/")
    # A CONNECT line is written when its tunnel closes (the agent is closed now).
    lines = squid_lines(proxies, mark, tunnels, "CONNECT lines")
    assert [(x.method, x.url, x.status) for x in lines] == [("CONNECT", origin, 200)] * tunnels
    assert len(clients(lines)) == tunnels


# ---------------------------------------------------------------------------------------
# tinyproxy: it closes the client connection after every plain-HTTP response


@pytest.mark.parametrize("keep_alive", [True, False])
def test_tinyproxy_http_closes_after_each_response(proxies, nginx, keep_alive: bool) -> None:
    mark = proxies.mark()
    with Agent(proxy=proxies.tinyproxy_url, keep_alive=keep_alive) as a:
        for _ in range(5):
            r = a.get(nginx.NGINX_HTTP_URL, timeout=10)  # its close is absorbed: no error
            assert r.status == 200 and r.body == b"hello, world\n"
            assert "tinyproxy" in r.headers["via"]
            assert not r.reused
        s = a.stats()
    assert (s.connections_opened, s.requests, s.errors) == (5, 5, 0)
    assert proxies.tinyproxy_connects_since(mark) == 5


def test_tinyproxy_https_tunnel_stays_open(proxies, nginx) -> None:
    mark = proxies.mark()
    with Agent(proxy=proxies.tinyproxy_url, ca_file=nginx.NGINX_CA_FILE) as a:
        for i in range(5):
            r = a.get(nginx.NGINX_HTTPS_URL, timeout=10)
            assert r.status == 200 and r.body == b"hello, world\n" and r.reused == (i > 0)
        s = a.stats()
    assert (s.connections_opened, s.reused_requests) == (1, 4)
    assert proxies.tinyproxy_connects_since(mark) == 1


# ---------------------------------------------------------------------------------------
# NO_PROXY, and the environment as curl reads it (once, when the agent is created)


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", ["example.invalid", "127.0.0.1"], "127.0.0.0/8", "*"])
def test_no_proxy_option_goes_direct(proxies, nginx, no_proxy: Any) -> None:
    mark = proxies.mark()
    with Agent(proxy=proxies.squid_url, no_proxy=no_proxy, ca_file=nginx.NGINX_CA_FILE) as a:
        r = a.get(nginx.NGINX_HTTP_URL, timeout=10)
        assert r.status == 200 and "x-cache" not in r.headers
        assert a.get(nginx.NGINX_HTTPS_URL, timeout=10).status == 200
    assert_went_direct(proxies, nginx, mark)


def test_no_proxy_option_that_does_not_match_still_proxies(proxies, nginx) -> None:
    mark = proxies.mark()
    with Agent(proxy=proxies.squid_url, no_proxy="localhost,10.0.0.0/8") as a:
        assert "x-cache" in a.get(nginx.NGINX_HTTP_URL, timeout=10).headers
    assert [x.url for x in squid_lines(proxies, mark, 1)] == [nginx.NGINX_HTTP_URL]


@pytest.mark.parametrize("name", ["no_proxy", "NO_PROXY"])
def test_no_proxy_environment_goes_direct(proxies, nginx, monkeypatch, name: str) -> None:
    monkeypatch.setenv("http_proxy", proxies.squid_url)
    monkeypatch.setenv("https_proxy", proxies.squid_url)
    monkeypatch.setenv(name, "example.invalid,127.0.0.1")
    mark = proxies.mark()
    with Agent(ca_file=nginx.NGINX_CA_FILE) as a:  # the environment is read now
        assert "x-cache" not in a.get(nginx.NGINX_HTTP_URL, timeout=10).headers
        assert a.get(nginx.NGINX_HTTPS_URL, timeout=10).status == 200
    assert_went_direct(proxies, nginx, mark)


def test_environment_is_read_at_agent_creation_only(proxies, nginx, monkeypatch) -> None:
    mark = proxies.mark()
    with Agent() as a:
        monkeypatch.setenv("http_proxy", proxies.squid_url)  # after creation: not seen
        assert "x-cache" not in a.get(nginx.NGINX_HTTP_URL, timeout=10).headers
    assert_went_direct(proxies, nginx, mark)


def test_no_proxy_environment_in_a_child_process(proxies, nginx) -> None:
    code = (
        "import sys, keepalive_agent\n"
        "with keepalive_agent.Agent() as a:\n"
        "    r = a.get(sys.argv[1], timeout=10)\n"
        "print(r.status, 'x-cache' in r.headers)\n"
    )
    base = child_env()
    base["http_proxy"] = proxies.squid_url
    out = run_child(code, [nginx.NGINX_HTTP_URL], base)
    assert out == "200 True"  # through squid
    mark = proxies.mark()
    out = run_child(code, [nginx.NGINX_HTTP_URL], dict(base, NO_PROXY="127.0.0.1"))
    assert out == "200 False"
    assert_went_direct(proxies, nginx, mark)


def test_environment_proxies(proxies, nginx, monkeypatch) -> None:
    monkeypatch.setenv("https_proxy", proxies.squid_url)
    monkeypatch.setenv("http_proxy", proxies.squid_url)
    mark = proxies.mark()
    with Agent(ca_file=nginx.NGINX_CA_FILE) as a:
        assert "x-cache" in a.get(nginx.NGINX_HTTP_URL, timeout=10).headers
        assert a.get(nginx.NGINX_HTTPS_URL, timeout=10).status == 200
    assert sorted(x.method for x in squid_lines(proxies, mark, 2)) == ["CONNECT", "GET"]


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "all_proxy", "ALL_PROXY"])
def test_other_environment_names_for_https(proxies, nginx, monkeypatch, name: str) -> None:
    monkeypatch.setenv(name, proxies.squid_url)
    mark = proxies.mark()
    with Agent(ca_file=nginx.NGINX_CA_FILE) as a:
        assert a.get(nginx.NGINX_HTTPS_URL, timeout=10).status == 200
    assert [x.method for x in squid_lines(proxies, mark, 1)] == ["CONNECT"]


def test_proxy_from_env_false_ignores_the_environment(proxies, nginx, monkeypatch) -> None:
    monkeypatch.setenv("https_proxy", proxies.squid_url)
    monkeypatch.setenv("http_proxy", proxies.squid_url)
    mark = proxies.mark()
    with Agent(proxy_from_env=False, ca_file=nginx.NGINX_CA_FILE) as a:
        assert "x-cache" not in a.get(nginx.NGINX_HTTP_URL, timeout=10).headers
        assert a.get(nginx.NGINX_HTTPS_URL, timeout=10).status == 200
    with Agent(proxy="", ca_file=nginx.NGINX_CA_FILE) as a:  # "" = no proxy, whatever the env
        assert "x-cache" not in a.get(nginx.NGINX_HTTP_URL, timeout=10).headers
        assert a.get(nginx.NGINX_HTTPS_URL, timeout=10).status == 200
    assert_went_direct(proxies, nginx, mark)


def test_upper_case_http_proxy_is_ignored_for_http(proxies, nginx, monkeypatch) -> None:
    """httpoxy: a CGI program gets the request's `Proxy:` header as HTTP_PROXY."""
    monkeypatch.setenv("HTTP_PROXY", proxies.squid_url)
    mark = proxies.mark()
    with Agent() as a:
        assert "x-cache" not in a.get(nginx.NGINX_HTTP_URL, timeout=10).headers
    assert_went_direct(proxies, nginx, mark)


def test_explicit_proxy_wins_over_the_environment(proxies, nginx, monkeypatch) -> None:
    monkeypatch.setenv("http_proxy", proxies.tinyproxy_url)
    mark = proxies.mark()
    with Agent(proxy=proxies.squid_url) as a:
        r = a.get(nginx.NGINX_HTTP_URL, timeout=10)
        assert "x-cache" in r.headers and "via" not in r.headers  # squid, not tinyproxy
    assert len(squid_lines(proxies, mark, 1)) == 1 and proxies.tinyproxy_connects_since(mark) == 0


# ---------------------------------------------------------------------------------------
# squid's Basic-auth port


def test_proxy_authentication(proxies, nginx) -> None:
    with Agent(proxy=proxies.squid_auth_url, ca_file=nginx.NGINX_CA_FILE) as a:
        with pytest.raises(keepalive_agent.ProxyError) as ei:
            a.get(nginx.NGINX_HTTPS_URL, timeout=10)
        e = ei.value
        assert isinstance(e, errors.ConnectError) and e.code_name == "AGENT_CODE_PROXY"
        assert "407" in e.message and "refused the tunnel" in e.message
        r = a.get(nginx.NGINX_HTTP_URL, timeout=10)  # plain HTTP: the proxy's answer
        assert r.status == 407 and r.headers["proxy-authenticate"].startswith("Basic ")
    mark = proxies.mark()
    with Agent(proxy=proxies.squid_auth_url_with_credentials, ca_file=nginx.NGINX_CA_FILE) as a:
        assert a.get(nginx.NGINX_HTTPS_URL, timeout=10).body == b"hello, world\n"
        assert a.get(nginx.NGINX_HTTP_URL, timeout=10).body == b"hello, world\n"
    lines = squid_lines(proxies, mark, 2)
    assert sorted((x.method, x.status, x.user) for x in lines) == [
        ("CONNECT", 200, proxies.squid_user), ("GET", 200, proxies.squid_user),
    ]


def test_wrong_proxy_password(proxies, nginx) -> None:
    wrong = proxies.squid_auth_url.replace("http://", f"http://{proxies.squid_user}:nope@")
    with Agent(proxy=wrong, ca_file=nginx.NGINX_CA_FILE) as a:
        with pytest.raises(keepalive_agent.ProxyError) as ei:
            a.get(nginx.NGINX_HTTPS_URL, timeout=10)
        assert "407" in ei.value.message
        assert a.get(nginx.NGINX_HTTP_URL, timeout=10).status == 407


def test_unreachable_proxy_is_connect_error(nginx) -> None:
    from conftest import free_port

    with Agent(proxy=f"http://127.0.0.1:{free_port()}") as a:
        with pytest.raises(errors.ConnectError) as ei:
            a.get(nginx.NGINX_HTTP_URL, timeout=10)
        assert not isinstance(ei.value, keepalive_agent.ProxyError)
        assert "proxy" in ei.value.message


# ---------------------------------------------------------------------------------------
# The requests adapter through proxies (requests decides; the engine follows)


@pytest.fixture
def session(nginx) -> Iterator[Tuple[requests.Session, KeepAliveAdapter]]:
    s = requests.Session()
    adapter = KeepAliveAdapter(ca_file=nginx.NGINX_CA_FILE)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    yield s, adapter
    s.close()


def test_requests_proxies_argument(proxies, nginx, session) -> None:
    s, adapter = session
    p = {"http": proxies.squid_url, "https": proxies.squid_url}
    mark = proxies.mark()
    for _ in range(3):
        r = s.get(nginx.NGINX_HTTP_URL, proxies=p, timeout=10)
        assert r.status_code == 200 and "x-cache" in r.headers
        assert s.get(nginx.NGINX_HTTPS_URL, proxies=p, timeout=10).text == "hello, world\n"
    assert list(adapter.proxy_manager) == [proxies.squid_url]  # one engine agent per proxy
    proxy_agent = adapter.proxy_manager[proxies.squid_url]
    st = proxy_agent.stats()
    assert (st.requests, st.connections_opened) == (6, 2)  # one connection, one tunnel
    assert adapter.agent.stats().requests == 0
    s.close()  # frees the proxy agents: the tunnel closes
    assert adapter.proxy_manager == {} and proxy_agent.closed and adapter.agent.closed
    lines = squid_lines(proxies, mark, 4)
    assert sorted((x.method, x.status) for x in lines) == [("CONNECT", 200)] + [("GET", 200)] * 3
    assert len(clients(lines)) == 2
    # usable after close(), as requests' HTTPAdapter: a new agent for the proxy
    assert s.get(nginx.NGINX_HTTP_URL, proxies=p, timeout=10).status_code == 200
    assert adapter.proxy_manager[proxies.squid_url] is not proxy_agent


def test_requests_environment_and_trust_env(proxies, nginx, session, monkeypatch) -> None:
    s, adapter = session
    monkeypatch.setenv("https_proxy", proxies.squid_url)
    monkeypatch.setenv("http_proxy", proxies.squid_url)
    mark = proxies.mark()
    assert "x-cache" in s.get(nginx.NGINX_HTTP_URL, timeout=10).headers
    assert s.get(nginx.NGINX_HTTPS_URL, timeout=10).status_code == 200
    adapter.close()
    assert sorted(x.method for x in squid_lines(proxies, mark, 2)) == ["CONNECT", "GET"]

    with requests.Session() as s2:
        s2.trust_env = False  # requests ignores the environment: so does the engine
        a2 = KeepAliveAdapter(ca_file=nginx.NGINX_CA_FILE)
        s2.mount("http://", a2)
        s2.mount("https://", a2)
        mark = proxies.mark()
        assert "x-cache" not in s2.get(nginx.NGINX_HTTP_URL, timeout=10).headers
        assert s2.get(nginx.NGINX_HTTPS_URL, timeout=10).status_code == 200
        assert a2.proxy_manager == {}
    assert_went_direct(proxies, nginx, mark)

    monkeypatch.setenv("no_proxy", "127.0.0.1")  # requests' own no_proxy handling
    with requests.Session() as s3:
        a3 = KeepAliveAdapter(ca_file=nginx.NGINX_CA_FILE)
        s3.mount("https://", a3)
        mark = proxies.mark()
        assert s3.get(nginx.NGINX_HTTPS_URL, timeout=10).status_code == 200
        assert a3.proxy_manager == {}
    assert_went_direct(proxies, nginx, mark)


def test_requests_proxy_errors(proxies, nginx, session) -> None:
    from conftest import free_port

    s, _ = session
    auth = {"http": proxies.squid_auth_url, "https": proxies.squid_auth_url}
    with pytest.raises(requests.exceptions.ProxyError) as ei:
        s.get(nginx.NGINX_HTTPS_URL, proxies=auth, timeout=10)
    assert "407" in str(ei.value) and isinstance(ei.value.__cause__, keepalive_agent.ProxyError)
    assert s.get(nginx.NGINX_HTTP_URL, proxies=auth, timeout=10).status_code == 407
    creds = {"https": proxies.squid_auth_url_with_credentials}
    assert s.get(nginx.NGINX_HTTPS_URL, proxies=creds, timeout=10).status_code == 200
    refused = {"http": f"http://127.0.0.1:{free_port()}"}
    with pytest.raises(requests.exceptions.ProxyError):
        s.get(nginx.NGINX_HTTP_URL, proxies=refused, timeout=10)
    with pytest.raises(requests.exceptions.InvalidProxyURL) as ei2:
        s.get(nginx.NGINX_HTTP_URL, proxies={"http": "socks5://127.0.0.1:1080"}, timeout=10)
    assert "socks5" in str(ei2.value)


def test_requests_adapter_with_a_given_agent(proxies, nginx) -> None:
    with Agent(ca_file=nginx.NGINX_CA_FILE, proxy="") as agent:
        adapter = KeepAliveAdapter(agent)
        with requests.Session() as s:
            s.mount("https://", adapter)
            assert s.get(nginx.NGINX_HTTPS_URL, timeout=10).status_code == 200  # direct
            mark = proxies.mark()
            r = s.get(nginx.NGINX_HTTPS_URL, proxies={"https": proxies.squid_url}, timeout=10)
            assert r.status_code == 200  # the proxy's agent has the given agent's ca_file
            proxy_agent = adapter.proxy_manager[proxies.squid_url]
            assert proxy_agent is not agent and proxy_agent.stats().requests == 1
        assert proxy_agent.closed and not agent.closed  # the given agent stays open
        assert agent.stats().requests == 1
    assert [x.method for x in squid_lines(proxies, mark, 1)] == ["CONNECT"]


def test_requests_adapter_refuses_engine_proxy_options() -> None:
    for kw in ({"proxy": "http://127.0.0.1:1"}, {"no_proxy": "*"}, {"proxy_from_env": True}):
        with pytest.raises(TypeError):
            KeepAliveAdapter(**kw)


# ---------------------------------------------------------------------------------------
# Happy eyeballs: [::1]:P is a black hole (full accept queue), 127.0.0.1:P answers


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"he\n")

    def log_message(self, *args: object) -> None:
        pass


def _tcp6_syn_sent_to(port: int, exclude_local_ports: set) -> List[str]:
    """SYN_SENT sockets towards [::1]:port (from /proc/net/tcp6), but those of the fillers."""
    loopback6 = "00000000000000000000000001000000"
    out = []
    with open("/proc/net/tcp6") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "02" and remote == f"{loopback6}:{port:04X}":
                if int(local.split(":")[1], 16) not in exclude_local_ports:
                    out.append(line.strip())
    return out


@pytest.fixture
def black_hole_pair() -> Iterator[Tuple[int, set]]:
    """A live HTTP server on 127.0.0.1:P and a black hole on [::1]:P; yields (P, the local
    ports of the filler connections)."""
    for _ in range(50):
        live = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        port = live.server_address[1]
        hole = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        hole.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            hole.bind(("::1", port))
        except OSError:  # P is taken on ::1: another live server
            hole.close()
            live.server_close()
            continue
        break
    else:
        pytest.fail("no port free on both 127.0.0.1 and ::1 in 50 tries")
    hole.listen(0)
    fillers = []
    for _ in range(3):
        c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex(("::1", port))
        fillers.append(c)
    t = threading.Thread(target=live.serve_forever, daemon=True)
    t.start()
    try:
        # The hole drops SYNs now: a probe connect does not complete.
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        with pytest.raises(OSError):
            probe.connect(("::1", port))
        probe.close()
        yield port, {c.getsockname()[1] for c in fillers}
    finally:
        live.shutdown()
        live.server_close()
        for c in fillers:
            c.close()
        hole.close()


def test_happy_eyeballs_falls_back_and_closes_the_loser(black_hole_pair) -> None:
    port, filler_ports = black_hole_pair
    with Agent(resolve=f"he.test:{port}:[::1],127.0.0.1", connect_timeout_msecs=10000) as a:
        t0 = time.monotonic()
        r = a.get(f"http://he.test:{port}/", timeout=20)
        elapsed = time.monotonic() - t0
        assert r.status == 200 and r.body == b"he\n"
        assert elapsed < 5, elapsed  # well under the 10 s connect timeout
        s = a.stats()
        assert (s.dns_lookups, s.dns_cache_hits) == (0, 0)  # a resolve override: no lookup
        # The losing attempt towards [::1]:P is closed (no SYN_SENT left), agent still open.
        wait_until(lambda: not _tcp6_syn_sent_to(port, filler_ports), timeout=2,
                   what="the attempt to [::1] to be closed")


def test_happy_eyeballs_delay_option(black_hole_pair) -> None:
    port, _ = black_hole_pair
    with Agent(resolve=[f"he.test:{port}:::1,127.0.0.1"], happy_eyeballs_delay_msecs=2000) as a:
        t0 = time.monotonic()
        assert a.get(f"http://he.test:{port}/", timeout=20).status == 200
        elapsed = time.monotonic() - t0
    assert 1.8 < elapsed < 8, elapsed  # the second address waited for the delay


# ---------------------------------------------------------------------------------------
# The DNS cache (localhost is looked up; IP literals and overrides are not)


def test_dns_cache(srv) -> None:
    port = srv.info["http_port"]
    url = f"http://localhost:{port}/"
    with Agent(keep_alive=False, dns_cache_msecs=400) as a:
        assert a.get(url, timeout=10).status == 200
        assert a.get(url, timeout=10).status == 200
        s = a.stats()
        assert (s.connections_opened, s.dns_lookups, s.dns_cache_hits) == (2, 1, 1)
        time.sleep(0.6)
        assert a.get(url, timeout=10).status == 200
        s = a.stats()
        assert (s.dns_lookups, s.dns_cache_hits) == (2, 1)
        assert a.origin_stats(f"http://localhost:{port}").dns_lookups == 2
    with Agent(keep_alive=False, dns_cache_msecs=0) as a:
        for _ in range(3):
            assert a.get(url, timeout=10).status == 200
        s = a.stats()
        assert (s.dns_lookups, s.dns_cache_hits) == (3, 0)
    with Agent(keep_alive=False, resolve=f"cached.test:{port}:127.0.0.1") as a:
        assert a.get(srv.http_url, timeout=10).status == 200
        assert a.get(f"http://cached.test:{port}/", timeout=10).status == 200
        s = a.stats()
        assert (s.connections_opened, s.dns_lookups, s.dns_cache_hits) == (2, 0, 0)


# ---------------------------------------------------------------------------------------
# TLS: SSL_CERT_FILE, a self-signed CA:TRUE server, wrong host, mutual TLS


def child_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES + ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    src = str(Path(keepalive_agent.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["KEEPALIVE_AGENT_LIB"] = str(keepalive_agent.library_path)
    return env


def run_child(code: str, args: List[str], env: Dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


_TLS_CHILD = (
    "import sys, keepalive_agent\n"
    "try:\n"
    "    with keepalive_agent.Agent(use_system_roots=sys.argv[2] == '1') as a:\n"
    "        print(a.get(sys.argv[1], timeout=10).status)\n"
    "except keepalive_agent.AgentError as e:\n"
    "    print(type(e).__name__, e.message)\n"
)


def test_ssl_cert_file_replaces_the_system_roots(nginx) -> None:
    env = child_env()
    assert run_child(_TLS_CHILD, [nginx.NGINX_HTTPS_URL, "1"], dict(env, SSL_CERT_FILE=nginx.NGINX_CA_FILE)) == "200"
    out = run_child(_TLS_CHILD, [nginx.NGINX_HTTPS_URL, "1"], env)
    assert out.startswith("TLSError ") and "unknown issuer" in out
    # Without the system roots, SSL_CERT_FILE (which replaces them) is not used either.
    out = run_child(_TLS_CHILD, [nginx.NGINX_HTTPS_URL, "0"], dict(env, SSL_CERT_FILE=nginx.NGINX_CA_FILE))
    assert out.startswith("TLSError ")


def test_self_signed_ca_true_server(nginx) -> None:
    with Agent(ca_file=nginx.NGINX_SELFSIGNED_CERT) as a:
        r = a.get(nginx.NGINX_SELFSIGNED_URL, timeout=10)
        assert r.status == 200 and r.body == b"hello, world\n"
        host = f"https://localhost:{nginx.NGINX_SELFSIGNED_PORT}/"
        assert a.get(host, timeout=10).status == 200
    with open(nginx.NGINX_SELFSIGNED_CERT, "rb") as f:
        with Agent(ca_pem=f.read()) as a:
            assert a.get(nginx.NGINX_SELFSIGNED_URL, timeout=10).status == 200
    with Agent() as a:
        with pytest.raises(errors.TLSError) as ei:
            a.get(nginx.NGINX_SELFSIGNED_URL, timeout=10)
    m = ei.value.message
    assert "CA certificate" in m and "ca_file" in m
    assert "OtherError" not in m and "CaUsedAsEndEntity" not in m


def test_wrong_host_message(nginx) -> None:
    port = nginx.NGINX_SELFSIGNED_PORT
    with Agent(ca_file=nginx.NGINX_SELFSIGNED_CERT, resolve=[f"wrong.test:{port}:127.0.0.1"]) as a:
        with pytest.raises(errors.TLSError) as ei:
            a.get(f"https://wrong.test:{port}/", timeout=10)
    m = ei.value.message
    assert "not valid for wrong.test" in m and "localhost" in m and "127.0.0.1" in m


def test_wrong_host_message_lists_the_names_plainly(nginx) -> None:
    port = nginx.NGINX_SELFSIGNED_PORT
    with Agent(ca_file=nginx.NGINX_SELFSIGNED_CERT, resolve=[f"wrong.test:{port}:127.0.0.1"]) as a:
        with pytest.raises(errors.TLSError) as ei:
            a.get(f"https://wrong.test:{port}/", timeout=10)
    assert "it is valid for localhost, 127.0.0.1" in ei.value.message, ei.value.message


def test_mutual_tls(nginx) -> None:
    expected = b"client CN=keepalive-agent test client\n"
    with Agent(ca_file=nginx.NGINX_CA_FILE, client_cert_file=nginx.NGINX_CLIENT_CERT,
               client_key_file=Path(nginx.NGINX_CLIENT_KEY)) as a:
        r = a.get(nginx.NGINX_MTLS_URL, timeout=10)
        assert (r.status, r.body) == (200, expected)
    with open(nginx.NGINX_CLIENT_CERT, "rb") as f:
        cert = f.read()
    with open(nginx.NGINX_CLIENT_KEY) as f:
        key = f.read()  # str is taken too
    with Agent(ca_file=nginx.NGINX_CA_FILE, client_cert_pem=cert, client_key_pem=key) as a:
        r = a.get(nginx.NGINX_MTLS_URL, timeout=10)
        assert (r.status, r.body) == (200, expected)
    with Agent(ca_file=nginx.NGINX_CA_FILE) as a:
        r = a.get(nginx.NGINX_MTLS_URL, timeout=10)
        assert r.status == 400 and b"No required SSL certificate" in r.body
    with pytest.raises(errors.InvalidOptionError) as ei:
        Agent(client_cert_file=nginx.NGINX_CLIENT_CERT)
    assert "client_key" in ei.value.message
    with pytest.raises(errors.InvalidOptionError) as ei:
        Agent(client_key_pem=key)
    assert "client_cert" in ei.value.message


def test_mutual_tls_through_the_requests_adapter(nginx) -> None:
    with requests.Session() as s:
        s.mount("https://", KeepAliveAdapter(ca_file=nginx.NGINX_CA_FILE, client_cert_file=nginx.NGINX_CLIENT_CERT,
                                             client_key_file=nginx.NGINX_CLIENT_KEY))
        assert s.get(nginx.NGINX_MTLS_URL, timeout=10).text == "client CN=keepalive-agent test client\n"


# ---------------------------------------------------------------------------------------
# Bad values


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"proxy": "socks5://x"}, "proxy"),
        ({"proxy": "http://"}, "proxy"),
        ({"resolve": ["nonsense"]}, "resolve"),
        ({"resolve": "h.test:80:not-an-address"}, "resolve"),
        ({"client_cert_file": "/nonexistent/cert.pem", "client_key_file": "/nonexistent/key.pem"}, "client_cert_file"),
        ({"client_cert_pem": b"garbage", "client_key_pem": b"garbage"}, "client_cert_pem"),
        ({"dns_cache_msecs": -1}, "dns_cache_msecs"),
        ({"happy_eyeballs_delay_msecs": 1 << 32}, "happy_eyeballs_delay_msecs"),
        ({"proxy": "http://a\x00b"}, "proxy"),
        ({"resolve": ["ok.test:80:127.0.0.1", "x\x00"]}, "resolve[1]"),
    ],
)
def test_bad_values_are_invalid_option(kwargs: Dict[str, Any], option: str) -> None:
    with pytest.raises(errors.InvalidOptionError) as ei:
        Agent(**kwargs)
    assert isinstance(ei.value, ValueError) and ei.value.code_name == "AGENT_CODE_INVALID_OPTION"
    assert option in ei.value.message, ei.value.message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"proxy": 1}, {"proxy": b"http://127.0.0.1:1"}, {"no_proxy": 5}, {"no_proxy": ["a", 1]},
        {"proxy_from_env": "yes"}, {"resolve": {"a": 1}}, {"resolve": [b"h:1:127.0.0.1"]},
        {"dns_cache_msecs": 1.5}, {"happy_eyeballs_delay_msecs": True}, {"client_cert_pem": 1},
        {"client_key_pem": ["x"]}, {"client_cert_file": 1}, {"client_key_file": b"/k.pem"},
    ],
)
def test_bad_types_are_type_errors(kwargs: Dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        Agent(**kwargs)


def test_proxy_error_class_and_stats_fields() -> None:
    assert keepalive_agent.ProxyError is errors.ProxyError
    assert issubclass(errors.ProxyError, errors.ConnectError)
    assert "ProxyError" in keepalive_agent.__all__
    e = errors.ProxyError(14, "refused")
    assert e.code_name == "AGENT_CODE_PROXY"
    fields = keepalive_agent.PoolStats.__dataclass_fields__  # type: ignore[attr-defined]
    assert "dns_lookups" in fields and "dns_cache_hits" in fields
