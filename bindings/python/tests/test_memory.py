"""RSS stays flat over many requests (no leak of native responses or Python objects)."""

from __future__ import annotations

import gc
import os

from keepalive_agent import Agent

REQUESTS = int(os.environ.get("KEEPALIVE_AGENT_RSS_REQUESTS", "50000"))
WARMUP = 5000


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_rss_flat_over_many_requests(srv) -> None:
    with Agent() as a:
        url = srv.http_url + "?bytes=512"
        headers = {"X-Test": "rss", "Accept": "*/*"}
        for _ in range(WARMUP):
            a.get(url, headers=headers)
        gc.collect()
        base = _rss()
        peak = base
        for i in range(REQUESTS):
            if i % 4 == 0:
                r = a.post(url, body=b"x" * 256, headers=headers)
            else:
                r = a.get(url, headers=headers)
            assert r.status == 200 and len(r.body) == 512
            if i % 5000 == 0:
                peak = max(peak, _rss())
        gc.collect()
        end = _rss()
        assert a.stats().requests == WARMUP + REQUESTS
    limit = base * 1.10
    assert end <= limit, f"RSS grew from {base} to {end} bytes over {REQUESTS} requests"
    assert peak <= limit, f"RSS peaked at {peak} bytes (base {base})"
