"""The Python binding against its pycurl peers in one process, cell after cell, alternating,
for the per-request CPU cost of W5 (64 threads, or 64 asyncio tasks, on one keep-alive
origin) on a machine too noisy for cells run minutes apart.

    python side_by_side.py threads URL [--rounds 8] [--seconds 1.5] [--conc 64] [--baseline SRC]
    python side_by_side.py asyncio URL [...]

threads: ours (one Agent shared by the threads, Agent.request) against pycurl (one Curl
handle per thread). asyncio: ours (Agent.request_async on one loop) against pycurl-multi
(one CurlMulti with conc easy handles driven from this thread, as bench/python/runner.py).
--baseline SRC: also another copy of the binding (the keepalive_agent package directory of
an older checkout, e.g. from `git archive`), imported under another name, to compare two
versions of the Python code over the same native library.

Each round runs every client once (in reverse order every other round) for --seconds after
0.3 s of warm-up; CPU is resource.getrusage(RUSAGE_SELF) over the measured part (all
threads of the process, the library's own included). Prints each round, the medians and
the ratios against the pycurl peer, and the load average.
"""

import argparse
import asyncio
import importlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time

WARMUP_S = 0.3


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_baseline(src: str):
    """The package at src, imported as keepalive_agent_baseline (its imports are relative)."""
    tmp = tempfile.mkdtemp(prefix="ka-baseline-")
    shutil.copytree(src, os.path.join(tmp, "keepalive_agent_baseline"))
    sys.path.insert(0, tmp)
    return importlib.import_module("keepalive_agent_baseline")


def run_threads(make_fetch, conc: int, seconds: float):
    start = time.monotonic() + WARMUP_S
    stop = start + seconds
    counts = [0] * conc

    def worker(i: int) -> None:
        fetch = make_fetch()
        n = 0
        while True:
            fetch()
            now = time.monotonic()
            if now >= stop:
                break
            if now > start:
                n += 1
        counts[i] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.monotonic()))
    c0, w0 = cpu_s(), time.monotonic()
    while time.monotonic() < stop:
        time.sleep(0.01)
    c1, w1 = cpu_s(), time.monotonic()
    for t in threads:
        t.join()
    total = sum(counts)
    return total / (w1 - w0), (c1 - c0) / total * 1e6


def ours_threads(agent, url: str):
    def make_fetch():
        request = agent.request

        def fetch():
            r = request("GET", url)
            if r.status != 200 or not r.body:
                raise SystemExit(f"unexpected response {r!r}")

        return fetch

    return make_fetch


def pycurl_handle(url: str, chunks: list):
    """An easy handle for ``url`` whose body pieces go to ``chunks`` (as bench/python/runner.py)."""
    import pycurl

    c = pycurl.Curl()
    c.setopt(pycurl.URL, url)
    c.setopt(pycurl.NOSIGNAL, 1)
    c.setopt(pycurl.TCP_NODELAY, 1)
    c.setopt(pycurl.TIMEOUT_MS, 30000)
    c.setopt(pycurl.WRITEFUNCTION, chunks.append)
    return c


def pycurl_threads(url: str):
    import pycurl

    def make_fetch():
        chunks = []
        c = pycurl_handle(url, chunks)

        def fetch():
            chunks.clear()
            c.perform()
            if c.getinfo(pycurl.RESPONSE_CODE) != 200 or not b"".join(chunks):
                raise SystemExit("unexpected pycurl response")

        return fetch

    return make_fetch


def ours_asyncio(agent, url: str, conc: int, seconds: float):
    async def main():
        start = time.monotonic() + WARMUP_S
        stop = start + seconds
        count = [0]

        async def task():
            request = agent.request_async
            while True:
                r = await request("GET", url)
                if r.status != 200 or not r.body:
                    raise SystemExit(f"unexpected response {r!r}")
                now = time.monotonic()
                if now >= stop:
                    break
                if now > start:
                    count[0] += 1

        tasks = [asyncio.ensure_future(task()) for _ in range(conc)]
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        c0, w0 = cpu_s(), time.monotonic()
        await asyncio.gather(*tasks)
        return count[0] / (time.monotonic() - w0), (cpu_s() - c0) / count[0] * 1e6

    return asyncio.run(main())


class PycurlMulti:
    def __init__(self, url: str, conc: int) -> None:
        import pycurl

        self.pycurl = pycurl
        self.m = pycurl.CurlMulti()
        self.m.setopt(pycurl.M_MAX_HOST_CONNECTIONS, conc)
        self.handles, self.chunks = [], {}
        for _ in range(conc):
            buf = []
            c = pycurl_handle(url, buf)
            self.chunks[id(c)] = buf
            self.handles.append(c)

    def run(self, seconds: float):
        pycurl, m = self.pycurl, self.m
        start = time.monotonic() + WARMUP_S
        stop = start + seconds
        n, c0, w0 = 0, None, None
        for c in self.handles:
            m.add_handle(c)
        active = len(self.handles)
        while active:
            while m.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            now = time.monotonic()
            if c0 is None and now > start:
                c0, w0, n = cpu_s(), now, 0
            while True:
                queued, ok, failed = m.info_read()
                if failed:
                    raise SystemExit(f"pycurl errors: {failed}")
                for c in ok:
                    m.remove_handle(c)
                    active -= 1
                    if c.getinfo(pycurl.RESPONSE_CODE) != 200 or not b"".join(self.chunks[id(c)]):
                        raise SystemExit("unexpected pycurl response")
                    n += 1
                    if now < stop:
                        self.chunks[id(c)].clear()
                        m.add_handle(c)
                        active += 1
                if not queued:
                    break
            if active:
                m.select(1.0)
        return n / (time.monotonic() - w0), (cpu_s() - c0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["threads", "asyncio"])
    ap.add_argument("url")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--baseline", help="another keepalive_agent package directory")
    a = ap.parse_args()

    import keepalive_agent

    packages = {"ours": keepalive_agent}
    if a.baseline:
        packages["baseline"] = load_baseline(a.baseline)
    agents = {name: pkg.Agent() for name, pkg in packages.items()}
    peer = "pycurl" if a.kind == "threads" else "pycurl-multi"
    multi = PycurlMulti(a.url, a.conc) if a.kind == "asyncio" else None

    def cell(name: str):
        if a.kind == "threads":
            fetch = pycurl_threads(a.url) if name == peer else ours_threads(agents[name], a.url)
            return run_threads(fetch, a.conc, a.seconds)
        if name == peer:
            return multi.run(a.seconds)
        return ours_asyncio(agents[name], a.url, a.conc, a.seconds)

    names = list(agents) + [peer]
    for name in names:
        cell(name)  # warm-up: connections opened, code paths run once
    results = {name: [] for name in names}
    for r in range(a.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(cell(name))
        print(f"round {r}: " + "  ".join(
            f"{n} {results[n][-1][0]:.0f} req/s {results[n][-1][1]:.1f} us" for n in names
        ), flush=True)
    with open("/proc/loadavg") as f:
        print("load average:", f.read().strip())
    medians = {
        n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        for n, v in results.items()
    }
    for n, (rps, us) in medians.items():
        print(f"median {a.kind} {n:13s} {rps:8.0f} req/s {us:6.1f} us CPU/request")
    for n in names[:-1]:
        print(f"ratio {n}/{peer}: req/s {medians[n][0] / medians[peer][0]:.2f}, "
              f"CPU/request {medians[n][1] / medians[peer][1]:.2f}")


if __name__ == "__main__":
    main()
