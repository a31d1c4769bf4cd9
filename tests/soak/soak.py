"""Soak through the Python binding: many requests, RSS sampled, fails above +10 % after warm-up.

    python soak.py REQUESTS SAMPLE_EVERY      (KEEPALIVE_TESTSERVER: path of the test server)

The mix per 100 requests mirrors tests/soak/soak.c: small GETs with headers, POSTs with a
1 KiB body echoed back, a 64 KiB body, one asyncio request, one refused connection (error
path, an exception object each time) and one Connection: close response. The baseline is the
first sample after a quarter of the requests; the drift is the largest later sample against
it. Prints one line per sample and a summary:
    SOAK | Python | <requests> | <failures> | <rss warm KiB> | <rss max KiB> | <rss end KiB> | <drift %> | <req/s> |
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keepalive_agent
from keepalive_agent import Agent, ConnectError

ROOT = Path(__file__).resolve().parents[2]
TESTSERVER = os.environ.get("KEEPALIVE_TESTSERVER", str(ROOT / "target" / "release" / "keepalive-testserver"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def start_server() -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([TESTSERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    if not ready:
        proc.kill()
        sys.exit("soak.py: the test server printed nothing within 15 s")
    info = json.loads(proc.stdout.readline())
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, info


def refusing_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    return s, s.getsockname()[1]


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    every = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    warm_until = max(every, n // 4)
    proc, info = start_server()
    hold, rport = refusing_port()
    base = f"http://127.0.0.1:{info['http_port']}/"
    refused = f"http://127.0.0.1:{rport}/"
    headers = {"X-Soak": "1", "Accept": "*/*"}
    body = b"x" * 1024
    loop = asyncio.new_event_loop()
    failures = expected_errors = 0
    warm = -1
    peak = end = 0
    t0 = time.monotonic()
    with Agent(keep_alive=True) as a:
        for i in range(n):
            kind = i % 100
            try:
                if kind == 7:
                    expected_errors += 1
                    try:
                        a.get(refused, timeout=2)
                        failures += 1
                    except ConnectError:
                        pass
                elif kind == 13:
                    r = loop.run_until_complete(a.aget(base + "?bytes=100", timeout=5))
                    failures += r.status != 200 or len(r.body) != 100
                elif kind % 10 == 0:
                    r = a.post(base + "?echo=1", body=body, headers=headers, timeout=5)
                    failures += r.status != 200 or b'"body_len":1024' not in r.body
                elif kind == 3:
                    r = a.get(base + "?bytes=65536", headers=headers, timeout=5)
                    failures += r.status != 200 or len(r.body) != 65536
                elif kind == 5:
                    r = a.get(base + "?close=1", timeout=5)
                    failures += r.status != 200
                else:
                    r = a.get(base, headers=headers, timeout=5)
                    failures += r.status != 200 or r.body != b"hello, world\n" or "x-conn-id" not in r.headers
            except Exception as e:  # noqa: BLE001 - counted and shown
                if failures < 5:
                    print(f"soak.py: request {i} failed: {e!r}", file=sys.stderr)
                failures += 1
            if (i + 1) % every == 0:
                gc.collect()
                rss = rss_kib()
                print(f"sample | Python | {i + 1} requests | rss {rss} KiB", flush=True)
                if warm < 0:
                    if i + 1 >= warm_until:
                        warm = rss
                elif rss > peak:
                    peak = rss
                end = rss
        st = a.stats()
    secs = time.monotonic() - t0
    loop.close()
    hold.close()
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)
    stats_ok = st.requests == n and st.errors == failures + expected_errors
    if not stats_ok:
        print(f"soak.py: stats {st}, want requests {n} errors {failures + expected_errors}", file=sys.stderr)
    peak = peak or end
    drift = 100.0 * (peak - warm) / warm if warm > 0 else 0.0
    print(f"SOAK | Python | {n} | {failures} | {warm} | {peak} | {end} | {drift:+.1f}% | {n / secs:.0f} |", flush=True)
    ok = failures == 0 and stats_ok and warm > 0 and peak <= warm * 1.10
    if not ok:
        print(f"soak.py: FAILED (library {keepalive_agent.library_path})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
