#!/usr/bin/env python3
"""keep-alive on vs off from Python, for `make demo` (scripts/demo.sh).

Two agents in ONE process: Agent(keep_alive=True) and Agent(keep_alive=False). Each sends
DEMO_REQUESTS sequential GETs over http and over https (trusting DEMO_CA_FILE); the number of
connections is what the server accepted (admin /reset before, /stats after). Prints markdown
rows: | language | client | scheme | requests | connections (server) | req/s | p50 ms | p99 ms |
"""

import http.client
import json
import math
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

try:
    import keepalive_agent
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import keepalive_agent


def admin(path: str) -> dict:
    u = urlsplit(os.environ["DEMO_ADMIN_URL"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def percentile(sorted_values: list, p: float) -> float:
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def run(agent: keepalive_agent.Agent, url: str, n: int) -> tuple:
    admin("/reset")
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        r = agent.get(url, timeout=30)
        latencies.append(time.perf_counter() - t)
        if r.status != 200:
            raise SystemExit(f"demo.py: {url} answered {r.status}")
    elapsed = time.perf_counter() - start
    connections = admin("/stats")["accepted"]
    latencies.sort()
    return connections, n / elapsed, percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3


def main() -> None:
    n = int(os.environ.get("DEMO_REQUESTS", "200"))
    urls = {"http": os.environ["DEMO_HTTP_URL"], "https": os.environ["DEMO_HTTPS_URL"]}
    ca_file = os.environ["DEMO_CA_FILE"]
    # Both clients live in this one process: reuse is a per-client choice.
    clients = [
        ("Agent(keep_alive=True)", keepalive_agent.Agent(keep_alive=True, ca_file=ca_file)),
        ("Agent(keep_alive=False)", keepalive_agent.Agent(keep_alive=False, ca_file=ca_file)),
    ]
    try:
        for scheme, url in urls.items():
            for name, agent in clients:
                conns, rps, p50, p99 = run(agent, url, n)
                print(f"| Python | {name} | {scheme} | {n} | {conns} | {rps:.0f} | {p50:.3f} | {p99:.3f} |",
                      flush=True)
    finally:
        for _, agent in clients:
            agent.close()


if __name__ == "__main__":
    main()
