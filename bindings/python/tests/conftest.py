"""Shared fixtures: the repo's test server (started once per session) and helpers."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

import keepalive_agent

ROOT = Path(__file__).resolve().parents[3]
TESTSERVER = Path(os.environ.get("KEEPALIVE_TESTSERVER", ROOT / "target" / "release" / "keepalive-testserver"))


def pytest_report_header(config: Any) -> str:
    return (
        f"keepalive_agent {keepalive_agent.__version__} from {Path(keepalive_agent.__file__).parent}, "
        f"library {keepalive_agent.library_path} ({keepalive_agent.library_version})"
    )


class TestServer:
    """The keepalive-testserver subprocess: URLs, CA file, admin /stats and /reset."""

    def __init__(self, info: Dict[str, Any]) -> None:
        self.info = info
        self.http_url = f"http://127.0.0.1:{info['http_port']}/"
        self.https_url = f"https://127.0.0.1:{info['https_port']}/"
        self.https_self_signed_url = f"https://127.0.0.1:{info['https_self_signed_port']}/"
        self.ca_file = info["ca_pem_path"]
        self.admin_port = info["admin_port"]

    def admin(self, path: str) -> Dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, (path, resp.status, data)
            return json.loads(data)
        finally:
            conn.close()

    def stats(self) -> Dict[str, Any]:
        return self.admin("/stats")

    def reset(self) -> None:
        self.admin("/reset")


@pytest.fixture(scope="session")
def server() -> Any:
    if not TESTSERVER.is_file():
        pytest.fail(f"{TESTSERVER} not built: run `make testserver`")
    proc = subprocess.Popen(
        [str(TESTSERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stdin is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    if not ready:
        proc.kill()
        pytest.fail("the test server printed nothing within 15 s")
    info = json.loads(proc.stdout.readline())
    # Keep draining stdout so that the server can never block on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield TestServer(info)
    finally:
        proc.stdin.close()  # the server exits on stdin EOF
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def srv(server: TestServer) -> TestServer:
    """The test server with its counters zeroed."""
    server.reset()
    return server


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# Streaming helpers: the test server's body pattern, FNV-1a 64 (as in its echo), RSS.

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
_ALPHABET = bytes(range(ord("a"), ord("z") + 1))


def fnv1a64(data: bytes, h: int = FNV_OFFSET) -> int:
    """FNV-1a 64 of ``data`` (continuing from ``h``), as the test server's ``body_fnv``."""
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & _MASK64
    return h


def pattern(offset: int, n: int) -> bytes:
    """``n`` bytes of the server's ``?bytes=`` body from ``offset``: 'a' + i % 26."""
    start = offset % 26
    return (_ALPHABET * ((start + n) // 26 + 1))[start : start + n]


def rss() -> int:
    """Resident set size of this process in bytes (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def echo_framing(echo: Dict[str, Any]) -> Dict[str, str]:
    """The framing headers (Content-Length, Transfer-Encoding) of an echoed request."""
    return {n.lower(): v for n, v in echo["headers"] if n.lower() in ("content-length", "transfer-encoding")}


async def async_wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """As :func:`wait_until`, inside a coroutine: the event loop keeps running meanwhile
    (asyncio requests make progress only while it runs)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------
# Loopback forward proxies (tinyproxy, squid) and nginx from the repository's scripts, once
# per session; each script's watchdog also stops them should this process die first.

SCRIPTS = ROOT / "scripts"


def _script_start(script: str) -> Dict[str, Any]:
    cmd = [str(SCRIPTS / script), "start", "--json", "--watch", str(os.getpid())]
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script} start took more than 60 s")
    if out.returncode != 0:
        pytest.fail(f"{script} start failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _script_stop(script: str, directory: str) -> None:
    subprocess.run([str(SCRIPTS / script), "stop", directory], timeout=60, check=False)


class LogLine:
    """One squid access-log line: TIME CLIENT_IP:PORT METHOD URL STATUS RESULT BYTES USER
    SERVER_IP:PORT."""

    def __init__(self, line: str) -> None:
        f = line.split()
        self.line = line
        self.client, self.method, self.url, self.status, self.result, self.user = (
            f[1], f[2], f[3], int(f[4]), f[5], f[7],
        )

    def __repr__(self) -> str:
        return f"LogLine({self.line!r})"


class Proxies:
    """scripts/proxies.sh: URLs of tinyproxy and squid, and readers of their logs from a
    mark (a byte offset taken with :meth:`mark`)."""

    def __init__(self, info: Dict[str, Any]) -> None:
        self.info = info
        self.tinyproxy_url = f"http://127.0.0.1:{info['TINYPROXY_PORT']}"
        self.squid_url = f"http://127.0.0.1:{info['SQUID_PORT']}"
        self.squid_auth_url = f"http://127.0.0.1:{info['SQUID_AUTH_PORT']}"  # no credentials
        self.squid_auth_url_with_credentials = info["SQUID_AUTH_URL"]
        self.squid_user = info["SQUID_USER"]
        self.access_log = Path(info["SQUID_ACCESS_LOG"])
        self.tinyproxy_log = Path(info["TINYPROXY_LOG"])

    def _sizes(self) -> Dict[str, int]:
        return {
            "squid": self.access_log.stat().st_size if self.access_log.exists() else 0,
            "tinyproxy": self.tinyproxy_log.stat().st_size,
        }

    def mark(self) -> Dict[str, int]:
        """The logs' sizes, once neither has grown for 0.5 s (waiting 5 s at most): a line
        of an earlier exchange that the proxy writes late (squid logs a CONNECT when its
        tunnel closes, and any line some time after the exchange when the machine is
        busy) then falls before the mark instead of being counted after it."""
        sizes = self._sizes()
        quiet_since = time.monotonic()
        deadline = quiet_since + 5.0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self._sizes()
            if now != sizes:
                sizes, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= 0.5:
                break
        return sizes

    @staticmethod
    def _since(path: Path, offset: int) -> List[str]:
        if not path.exists():
            return []
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read().decode("utf-8", "replace")
        return [line for line in data.splitlines() if line.strip()]

    def squid_since(self, mark: Dict[str, int]) -> List[LogLine]:
        """Access-log lines since ``mark``, without those of connections that sent nothing
        (METHOD ``-``)."""
        lines = [LogLine(s) for s in self._since(self.access_log, mark["squid"])]
        return [x for x in lines if x.method != "-"]

    def tinyproxy_connects_since(self, mark: Dict[str, int]) -> int:
        """Client connections tinyproxy accepted since ``mark``."""
        return sum("Connect (file descriptor" in s for s in self._since(self.tinyproxy_log, mark["tinyproxy"]))


@pytest.fixture(scope="session")
def proxies() -> Any:
    info = _script_start("proxies.sh")
    try:
        yield Proxies(info)
    finally:
        _script_stop("proxies.sh", info["PROXY_DIR"])


class Nginx:
    """scripts/nginx.sh: the keys it prints, as attributes (``nginx.NGINX_HTTP_URL``)."""

    def __init__(self, info: Dict[str, Any]) -> None:
        self.info = info
        for k, v in info.items():
            setattr(self, k, v)


@pytest.fixture(scope="session")
def nginx() -> Any:
    info = _script_start("nginx.sh")
    try:
        yield Nginx(info)
    finally:
        _script_stop("nginx.sh", info["NGINX_DIR"])
