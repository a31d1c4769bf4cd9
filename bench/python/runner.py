"""The Python side of `make bench`: the keepalive_agent binding against urllib3, requests,
httpx and pycurl, driven by bench/run.py.

Server mode (no arguments): one JSON command per line on stdin, one JSON answer per line.

    {"op": "versions"}
    {"op": "run", "client": "urllib3", "conc": 1, "keep_alive": true, "seconds": 1.2,
     "warmup": 0.2, "max_requests": 100000, "expect_len": 13, "url": "...", "ca_file": "..."}

Clients: ours (threads for conc > 1), ours-asyncio (request_async, conc tasks), urllib3
(PoolManager), requests (Session), httpx (Client), pycurl (one Curl handle per thread).
keep_alive false: `Connection: close` on a fresh connection for every request (ours:
Agent(keep_alive=False); pycurl: FRESH_CONNECT + FORBID_REUSE + the header; the others send
the header and drop the connection the server closes). TLS is verified with ca_file.

A cell warms up on the same client for `warmup` seconds, then measures until `seconds` have
passed or `max_requests` requests were started. cpu_s is resource.getrusage(RUSAGE_SELF)
over the measured part (all threads of the process, the library's own included).

Memory mode: runner.py mem <client> <n> <url> <ca_file>  (clients: ours, urllib3)
    n idle pooled connections; prints RSS before/after and thread counts as JSON.
"""

import asyncio
import gc
import itertools
import json
import os
import resource
import ssl
import sys
import threading
import time

TIMEOUT_S = 30.0

try:
    import keepalive_agent
except Exception as e:  # the binding may not be built yet: report, do not fail
    keepalive_agent = None
    OURS_ERROR = f"{type(e).__name__}: {e}"
else:
    OURS_ERROR = None


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def close_headers(keep_alive):
    return None if keep_alive else {"Connection": "close"}


def ssl_context(ca_file):
    return ssl.create_default_context(cafile=ca_file) if ca_file else None


# ----------------------------------------------------------------------------------------------
# Clients: make(cmd) -> (fetch, close); fetch() returns (status, body bytes). One instance is
# shared by all threads of a cell, except pycurl (a Curl handle is not thread-safe): make_local.


def make_ours(cmd):
    agent = keepalive_agent.Agent(keep_alive=cmd["keep_alive"], ca_file=cmd["ca_file"] or None)
    url = cmd["url"]

    def fetch():
        r = agent.request("GET", url, timeout=TIMEOUT_S)
        return r.status, r.body

    return fetch, agent.close


def make_urllib3(cmd):
    import urllib3

    pm = urllib3.PoolManager(
        maxsize=max(1, cmd["conc"]),
        block=False,
        ssl_context=ssl_context(cmd["ca_file"]),
        retries=False,
        timeout=TIMEOUT_S,
    )
    url, headers = cmd["url"], close_headers(cmd["keep_alive"])

    def fetch():
        r = pm.request("GET", url, headers=headers)
        return r.status, r.data

    return fetch, pm.clear


def make_requests(cmd):
    import requests
    from requests.adapters import HTTPAdapter

    s = requests.Session()
    n = max(1, cmd["conc"])
    s.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=n))
    s.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=n))
    # Per request: REQUESTS_CA_BUNDLE in the environment would override Session.verify.
    verify = cmd["ca_file"] or True
    url, headers = cmd["url"], close_headers(cmd["keep_alive"])

    def fetch():
        r = s.get(url, headers=headers, timeout=TIMEOUT_S, verify=verify)
        return r.status_code, r.content

    return fetch, s.close


def make_httpx(cmd):
    import httpx

    n = max(1, cmd["conc"])
    client = httpx.Client(
        verify=ssl_context(cmd["ca_file"]) or True,
        limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        timeout=TIMEOUT_S,
    )
    url, headers = cmd["url"], close_headers(cmd["keep_alive"])

    def fetch():
        r = client.get(url, headers=headers)
        return r.status_code, r.content

    return fetch, client.close


def make_pycurl_local(cmd):
    import pycurl

    c = pycurl.Curl()
    c.setopt(pycurl.URL, cmd["url"])
    c.setopt(pycurl.NOSIGNAL, 1)
    c.setopt(pycurl.TCP_NODELAY, 1)
    c.setopt(pycurl.TIMEOUT_MS, int(TIMEOUT_S * 1000))
    if cmd["ca_file"]:
        c.setopt(pycurl.CAINFO, cmd["ca_file"])
    if not cmd["keep_alive"]:
        c.setopt(pycurl.FRESH_CONNECT, 1)
        c.setopt(pycurl.FORBID_REUSE, 1)
        c.setopt(pycurl.HTTPHEADER, ["Connection: close"])
    chunks = []
    c.setopt(pycurl.WRITEFUNCTION, chunks.append)

    def fetch():
        chunks.clear()
        c.perform()
        return c.getinfo(pycurl.RESPONSE_CODE), b"".join(chunks)

    return fetch, c.close


SHARED = {"ours": make_ours, "urllib3": make_urllib3, "requests": make_requests, "httpx": make_httpx}
LOCAL = {"pycurl": make_pycurl_local}


# ----------------------------------------------------------------------------------------------
# Drivers


class Cell:
    def __init__(self, cmd):
        self.max_requests = cmd["max_requests"]
        self.expect_len = cmd["expect_len"]
        self.total = 0
        self.errors = 0
        self.error = ""
        self.reset(0.0, False)

    def reset(self, seconds, record):
        self.deadline = time.monotonic() + seconds
        self.record = record
        self.counter = itertools.count()  # next() is atomic under the GIL
        self.lat = []
        self.bytes = 0
        self.started = 0

    def may_start(self):
        return time.monotonic() < self.deadline and next(self.counter) < self.max_requests

    def done(self, t0, status, body):
        lat = time.perf_counter() - t0
        self.total += 1
        if status != 200 or len(body) != self.expect_len:
            self.fail(f"status {status}, {len(body)} bytes")
        if self.record:
            self.lat.append(lat)
            self.bytes += len(body)

    def fail(self, message):
        self.errors += 1
        if not self.error:
            self.error = message[:300]


def loop(cell, fetch):
    while cell.may_start():
        t0 = time.perf_counter()
        try:
            status, body = fetch()
        except Exception as e:
            cell.total += 1
            cell.fail(f"{type(e).__name__}: {e}")
            if cell.record:
                cell.lat.append(time.perf_counter() - t0)
            continue
        cell.done(t0, status, body)


def run_threads(cell, fetchers):
    if len(fetchers) == 1:
        loop(cell, fetchers[0])
        return
    threads = [threading.Thread(target=loop, args=(cell, f)) for f in fetchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


async def run_asyncio(cell, agent, url, conc):
    async def worker():
        while cell.may_start():
            t0 = time.perf_counter()
            try:
                r = await agent.request_async("GET", url, timeout=TIMEOUT_S)
            except Exception as e:
                cell.total += 1
                cell.fail(f"{type(e).__name__}: {e}")
                continue
            cell.done(t0, r.status, r.body)

    await asyncio.gather(*(worker() for _ in range(conc)))


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    return sorted_values[int(p * (len(sorted_values) - 1) + 0.5)]


def run(cmd):
    client, conc = cmd["client"], cmd["conc"]
    cell = Cell(cmd)
    closers = []
    loop_ = None
    if client == "ours-asyncio":
        if keepalive_agent is None:
            return {"fatal": OURS_ERROR}
        agent = keepalive_agent.Agent(keep_alive=cmd["keep_alive"], ca_file=cmd["ca_file"] or None)
        closers.append(agent.close)
        loop_ = asyncio.new_event_loop()

        def phase():
            loop_.run_until_complete(run_asyncio(cell, agent, cmd["url"], conc))

    else:
        if client in ("ours",) and keepalive_agent is None:
            return {"fatal": OURS_ERROR}
        if client in SHARED:
            fetch, close = SHARED[client](cmd)
            fetchers = [fetch] * conc
            closers.append(close)
        elif client in LOCAL:
            fetchers = []
            for _ in range(conc):
                fetch, close = LOCAL[client](cmd)
                fetchers.append(fetch)
                closers.append(close)
        else:
            return {"fatal": f"unknown client {client}"}

        def phase():
            run_threads(cell, fetchers)

    gc.collect()
    cell.reset(cmd["warmup"], False)
    phase()
    warmup_errors = cell.errors
    cell.reset(cmd["seconds"], True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    phase()
    t1, c1 = time.perf_counter(), cpu_seconds()
    for close in closers:
        close()
    if loop_ is not None:
        loop_.close()
    lat = sorted(cell.lat)
    return {
        "requests": len(lat),
        "total_requests": cell.total,
        "errors": cell.errors - warmup_errors,
        "warmup_errors": warmup_errors,
        "seconds": t1 - t0,
        "p50_ms": percentile(lat, 0.50) * 1e3,
        "p99_ms": percentile(lat, 0.99) * 1e3,
        "cpu_s": c1 - c0,
        "bytes": cell.bytes,
        "error": cell.error,
    }


def versions():
    out = {"python": sys.version.split()[0]}
    out["ours"] = (
        f"keepalive_agent {keepalive_agent.__version__}" if keepalive_agent else f"unavailable ({OURS_ERROR})"
    )
    out["ours-asyncio"] = out["ours"]
    for name in ("urllib3", "requests", "httpx"):
        try:
            out[name] = f"{name} {__import__(name).__version__}"
        except Exception as e:
            out[name] = f"unavailable ({e})"
    try:
        import pycurl

        out["pycurl"] = pycurl.version  # "PycURL/7.45.x libcurl/8.x OpenSSL/..."
    except Exception as e:
        out["pycurl"] = f"unavailable ({e})"
    return out


# ----------------------------------------------------------------------------------------------
# Memory: n idle pooled connections


def proc_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def settle():
    gc.collect()
    time.sleep(0.3)
    gc.collect()


def mem(client, n, url, ca_file):
    ca_file = None if ca_file == "-" else ca_file
    errors = 0
    if client == "ours":
        agent = keepalive_agent.Agent(
            keep_alive=True, ca_file=ca_file, max_free_sockets=n + 16, free_socket_timeout_msecs=120000
        )
        agent.request("GET", url, timeout=TIMEOUT_S)
        settle()
        before = (proc_status("VmRSS"), proc_status("Threads"))

        async def all_at_once():
            return await asyncio.gather(
                *(agent.request_async("GET", url, timeout=TIMEOUT_S) for _ in range(n)), return_exceptions=True
            )

        results = asyncio.run(all_at_once())
        errors = sum(1 for r in results if isinstance(r, BaseException) or r.status != 200)
        del results
        settle()
        idle = agent.stats().idle
        keep = agent
    elif client == "urllib3":
        import urllib3

        ctx = ssl_context(ca_file)  # one TLS context shared by every connection
        pm = urllib3.PoolManager(maxsize=n + 16, ssl_context=ctx, retries=False, timeout=TIMEOUT_S)
        pool = pm.connection_from_url(url)
        pool.request("GET", "/")
        settle()
        before = (proc_status("VmRSS"), proc_status("Threads"))
        # Open n connections (a request on each), then return them all to the pool idle.
        conns = [pool._new_conn() for _ in range(n)]
        for conn in conns:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors += 1
        for conn in conns:
            pool._put_conn(conn)
        del conns, r
        settle()
        idle = pool.pool.qsize() if pool.pool else -1
        keep = pm
    else:
        raise SystemExit(f"memory: unknown client {client}")
    after = (proc_status("VmRSS"), proc_status("Threads"))
    print(
        json.dumps(
            {
                "rss_before_kib": before[0],
                "rss_after_kib": after[0],
                "threads_before": before[1],
                "threads_after": after[1],
                "idle": idle,
                "errors": errors,
            }
        ),
        flush=True,
    )
    del keep


def serve():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "quit":
            break
        try:
            out = versions() if op == "versions" else run(cmd)
        except Exception as e:
            out = {"fatal": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "mem":
        mem(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif len(sys.argv) == 1:
        serve()
    else:
        raise SystemExit("usage: runner.py | runner.py mem ours|urllib3 N URL CA_FILE|-")
