"""make bench: keepalive-agent against the HTTP clients each language's users pick today, on a
real nginx that nobody here wrote, side by side in one run.

    build/bench-venv/bin/python bench/run.py [--seconds 0.8] [--warmup 0.2] [--reps 5] [--pin]
                                             [--workloads W3,W9] [--only C,Node]

Workloads (SPEC section 7, issue 6; W9 and W3's ours-h2: the HTTP/2 issue):
    W1 HTTP  c=1  keep-alive        W2 HTTP  c=1  reuse off (Connection: close)
    W3 HTTPS c=1  keep-alive        W4 HTTPS c=1  reuse off
    W5 HTTP  c=64 keep-alive        W6 HTTP  c=1  keep-alive, 1 MiB body (MB/s)
    W7 HTTP  c=1  1 GiB streamed download (MB/s, RSS growth)
    W8 HTTP  c=1  256 MiB streamed upload, PUT (MB/s, RSS growth)
    W9 HTTPS, HTTP/2, 64 requests in flight on nginx's h2 port (NGINX_H2_URL), GET / (13 bytes)
    W3 also runs ours-h2: keepalive-agent with http_version auto on nginx's h2 port (so HTTP/2,
       one request at a time) beside ours at its default (HTTP/1.1); the report gives the ratio.
Clients:
    C       wrk (the ceiling), libcurl (easy handle reused; multi at c=64),
            keepalive-agent (agent_request; agent_request_async at c=64)      bench/c/bench.c
    Python  urllib3, requests, httpx, pycurl (threads at c=64), keepalive_agent (threads at
            c=64, and asyncio)                                                 bench/python/runner.py
    Node    http.Agent({keepAlive}), undici Pool, undici request(), keepalive-agent
                                                                               bench/node/runner.js
W9 (HTTP/2) clients, every one on one connection:
    C       keepalive-agent with AGENT_HTTP_VERSION_AUTO: the event queue keeping 64 requests
            submitted (as in W5), and 64 threads calling agent_request on one agent;
            libcurl multi, 64 easy handles (CURL_HTTP_VERSION_2TLS, CURLOPT_PIPEWAIT,
            CURLPIPE_MULTIPLEX); h2load -c1 -m64 -t1 (the ceiling; run here as a subprocess,
            Debian package nghttp2-client).
    Node    keepalive-agent new Agent({ httpVersion: 'auto' }) (a binding without the option
            skips the cell, with a note); undici Pool({ allowH2: true, connections: 1,
            pipelining: 64 }); node:http2, one session with 64 streams.
    Python  not in W9 (no Python peer here speaks HTTP/2 with 64 streams on one connection).
--workloads picks workloads (W9 alone runs in seconds); the memory test and the instruction
counts run only in a full run, or with MEM / PROFILE in the list (--workloads W9,MEM).
KEEPALIVE_AGENT_NODE_BINDING=<dir> makes the Node runner load the binding from <dir> instead
of bindings/node (a binding built in another work tree).
Every repetition runs every workload once with its clients in a shuffled order (a language's
clients back to back), so slow drifts of a shared machine hit all clients alike. A cell warms
up on the same client, then measures for --seconds (or a request cap). Connections are
counted by nginx (stub_status accepts, minus the status reads themselves), never by the client
under test. Ratios (ours / peer) are computed within each repetition; the report gives their
median and range.

Then, in fresh processes: RSS growth per idle pooled connection (1,000 connections, HTTP and
HTTPS), and, with valgrind, instructions per request of the C clients (noise-free).

Writes bench/out/results.json (every raw cell), bench/RESULTS.md and bench/ratios.svg.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(ROOT, "build")

WORKLOADS = [
    dict(id="W1", title="HTTP, c=1, keep-alive", scheme="http", conc=1, keep_alive=True, path="", size=13),
    dict(id="W2", title="HTTP, c=1, reuse off", scheme="http", conc=1, keep_alive=False, path="", size=13),
    dict(id="W3", title="HTTPS, c=1, keep-alive", scheme="https", conc=1, keep_alive=True, path="", size=13),
    dict(id="W4", title="HTTPS, c=1, reuse off", scheme="https", conc=1, keep_alive=False, path="", size=13),
    dict(id="W5", title="HTTP, c=64, keep-alive", scheme="http", conc=64, keep_alive=True, path="", size=13),
    dict(id="W6", title="HTTP, c=1, keep-alive, 1 MiB body", scheme="http", conc=1, keep_alive=True,
         path="1m.bin", size=1048576),
    # Streamed: one transfer per cell, never held whole; RSS growth reported beside the rate.
    dict(id="W7", title="HTTP, c=1, 1 GiB streamed download", scheme="http", conc=1, keep_alive=True,
         path="1g.bin", size=1 << 30, stream=True, upload=0),
    dict(id="W8", title="HTTP, c=1, 256 MiB streamed upload (PUT)", scheme="http", conc=1,
         keep_alive=True, path="upload/put.bin", size=256 << 20, stream=True, upload=256 << 20),
    # HTTP/2: nginx's h2 port (ALPN h2, then http/1.1), 64 streams on one connection.
    dict(id="W9", title="HTTPS, HTTP/2, 64 in flight", scheme="h2", conc=64, keep_alive=True,
         path="", size=13, h2=True),
    # The AWS SDK for JavaScript v3, DynamoDB GetItem over TLS against a canned answer: the
    # SDK is the same, only the request handler differs (size = the Item's attributes).
    dict(id="A1", title="AWS SDK v3 DynamoDB GetItem over HTTPS, 1 in flight", scheme="https",
         conc=1, keep_alive=True, path="dynamodb", size=3, aws=True),
    dict(id="A16", title="AWS SDK v3 DynamoDB GetItem over HTTPS, 16 in flight", scheme="https",
         conc=16, keep_alive=True, path="dynamodb", size=3, aws=True),
]
WL = {w["id"]: w for w in WORKLOADS}
STREAMED = {w["id"] for w in WORKLOADS if w.get("stream")}
# The clients that run the streamed workloads (each with its own streaming API).
STREAM_CLIENTS = {("C", "ours"), ("C", "curl"), ("Python", "ours"), ("Python", "pycurl"),
                  ("Python", "urllib3"), ("Node", "ours"), ("Node", "undici-pool"),
                  ("Node", "http-agent")}
# The clients that run the HTTP/2 workload (W9).
H2_CLIENTS = {("C", "ours"), ("C", "ours-threads"), ("C", "curl"), ("C", "h2load"),
              ("Node", "ours"), ("Node", "undici-pool"), ("Node", "node-http2")}

# (language, client key, runner, label); "ours" first in each language.
CLIENTS = [
    ("C", "ours", "c", "keepalive-agent (agent_request; the event queue at c=64)"),
    ("C", "ours-threads", "c", "keepalive-agent, 64 threads calling agent_request"),
    ("C", "ours-callback", "c", "keepalive-agent agent_request_async (callbacks)"),
    ("C", "ours-h2", "c", "keepalive-agent, http_version auto on the h2 port (HTTP/2)"),
    ("C", "curl", "c", "libcurl (easy handle reused; multi at c=64)"),
    ("C", "curl-threads", "c", "libcurl, 64 threads with an easy handle each"),
    ("C", "wrk", "wrk", "wrk (the ceiling)"),
    ("C", "h2load", "h2load", "h2load (the HTTP/2 ceiling)"),
    ("Python", "ours", "py", "keepalive_agent.Agent (threads at c=64)"),
    ("Python", "ours-asyncio", "py", "keepalive_agent request_async (asyncio)"),
    ("Python", "urllib3", "py", "urllib3 PoolManager"),
    ("Python", "requests", "py", "requests Session"),
    ("Python", "httpx", "py", "httpx Client"),
    ("Python", "pycurl", "py", "pycurl (Curl handle per thread)"),
    ("Python", "pycurl-multi", "py", "pycurl CurlMulti (one thread)"),
    ("Python", "aiohttp", "py", "aiohttp ClientSession (asyncio)"),
    ("Node", "ours", "node", "keepalive-agent Agent"),
    ("Node", "ours-h2", "node", "keepalive-agent Agent, httpVersion 'auto' on the h2 port (HTTP/2)"),
    ("Node", "http-agent", "node", "http.Agent({keepAlive})"),
    ("Node", "undici-pool", "node", "undici Pool"),
    ("Node", "undici-request", "node", "undici request()"),
    ("Node", "node-http2", "node", "node:http2 (one session)"),
    ("Node", "aws-ours", "node", "AWS SDK v3 + KeepAliveHttpHandler"),
    ("Node", "aws-node", "node", "AWS SDK v3 + NodeHttpHandler (keep-alive https.Agent)"),
]
LABEL = {(lang, key): label for lang, key, _, label in CLIENTS}
OURS_KEYS = ("ours", "ours-asyncio", "ours-threads", "ours-callback", "ours-h2", "aws-ours")
# The concurrency forms run at c=64 only (c=1 is the blocking API's story).
ONLY_IN = {k: {"W5"} for k in ("ours-asyncio", "ours-threads", "ours-callback", "curl-threads",
                               "pycurl-multi", "aiohttp")}
ONLY_IN["ours-threads"] = {"W5", "W9"}
ONLY_IN.update({k: {"A1", "A16"} for k in ("aws-ours", "aws-node")})
ONLY_IN.update({"h2load": {"W9"}, "node-http2": {"W9"}, "ours-h2": {"W3"}})
# Client keys that are another key of the same runner with HTTP/2 on (the runner is told
# "ours" plus "h2"), and speak to nginx's h2 port.
H2_VARIANT = {"ours-h2": "ours"}

# Goals of issue 13 (the c=1 and streaming goals of earlier issues stay as "no regression"
# checks): (language, workload, ours key, peer key, minimum ratio).
GOALS = [
    ("C", "W1", "ours", "curl", 1.0),
    ("C", "W3", "ours", "curl", 1.0),
    ("C", "W5", "ours", "curl", 1.5),
    ("C", "W5", "ours", "wrk", 0.85),
    ("C", "W5", "ours-threads", "curl-threads", 1.0),
    ("C", "W5", "ours-threads", "ours", 0.8),
    ("C", "W6", "ours", "curl", 1.0),
    ("C", "W7", "ours", "curl", 1.0),
    ("C", "W8", "ours", "curl", 1.0),
    ("Python", "W1", "ours", "pycurl", 1.0),
    ("Python", "W3", "ours", "pycurl", 1.0),
    ("Python", "W5", "ours", "pycurl", 1.5),
    ("Python", "W5", "ours-asyncio", "aiohttp", 3.0),
    ("Python", "W5", "ours-asyncio", "pycurl-multi", 1.0),
    ("Python", "W6", "ours", "pycurl", 1.0),
    ("Python", "W7", "ours", "pycurl", 1.0),
    ("Python", "W8", "ours", "pycurl", 1.0),
    ("Node", "W1", "ours", "undici-pool", 1.3),
    ("Node", "W3", "ours", "undici-pool", 1.3),
    ("Node", "W5", "ours", "undici-pool", 1.2),
    ("Node", "W6", "ours", "undici-pool", 1.2),
    ("Node", "W7", "ours", "undici-pool", 1.0),
    ("Node", "W8", "ours", "undici-pool", 1.0),
    ("Node", "A1", "aws-ours", "aws-node", 1.1),
    ("Node", "A16", "aws-ours", "aws-node", 1.5),
]
# Goals of the HTTP/2 issue; a goal of None is a ratio the report shows without a target:
# HTTP/2 one request at a time (W3 over the h2 port) against ours at its default, HTTP/1.1,
# expected below 1 (why http1 stays the default).
H2_GOALS = [
    ("C", "W9", "ours", "h2load", 0.8),
    ("C", "W9", "ours", "curl", 1.5),
    ("Node", "W9", "ours", "undici-pool", 2.0),
    ("C", "W3", "ours-h2", "ours", None),
    ("Node", "W3", "ours-h2", "ours", None),
]
KEEPALIVE_SPEEDUP_GOAL = 10.0  # W3 / W4
MEM_GOAL_KIB = {"http": 10.0, "https": 20.0}
MEM_GOAL_KIB_C_HTTP = 8.0
MEM_CLIENTS = [  # (language, key, runner)
    ("C", "ours", "c"),
    ("C", "curl", "c"),
    ("Python", "ours", "py"),
    ("Python", "urllib3", "py"),
    ("Node", "ours", "node"),
    ("Node", "http-agent", "node"),
    ("Node", "undici-pool", "node"),
]
MEM_LABEL = {
    ("C", "ours"): "keepalive-agent (async, max_free_sockets raised)",
    ("C", "curl"): "libcurl multi (connection cache)",
    ("Python", "ours"): "keepalive_agent (asyncio)",
    ("Python", "urllib3"): "urllib3 (one shared TLS context)",
    ("Node", "ours"): "keepalive-agent",
    ("Node", "http-agent"): "http.Agent({keepAlive})",
    ("Node", "undici-pool"): "undici Pool",
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# nginx


class Nginx:
    def __init__(self, pin):
        env = dict(os.environ)
        if pin:
            env["NGINX_CPU"] = "0"
        out = subprocess.run(
            [os.path.join(ROOT, "scripts", "nginx.sh"), "start", "--json", "--slow", "--watch", str(os.getpid())],
            env=env, check=True, capture_output=True, text=True,
        ).stdout
        self.info = json.loads(out)
        self.dir = self.info["NGINX_DIR"]
        self.reads = 0

    def url(self, scheme, path=""):
        """scheme: http, https (HTTP/1.1 only) or h2 (TLS, ALPN h2 then http/1.1)."""
        key = {"http": "NGINX_HTTP_URL", "https": "NGINX_HTTPS_URL", "h2": "NGINX_H2_URL"}[scheme]
        return self.info[key] + path

    @property
    def ca_file(self):
        return self.info["NGINX_CA_FILE"]

    def accepts(self):
        """stub_status accepts, excluding the connections of every status read so far (each read
        opens one connection, and nginx counts accepts across all listeners)."""
        with urllib.request.urlopen(self.info["NGINX_STATUS_URL"], timeout=10) as r:
            text = r.read().decode()
        self.reads += 1
        m = re.search(r"server accepts handled requests\s+(\d+)", text)
        return int(m.group(1)) - self.reads

    def version(self):
        p = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        return (p.stderr or p.stdout).strip().replace("nginx version: ", "").replace("nginx/", "")

    def stop(self):
        subprocess.run([os.path.join(ROOT, "scripts", "nginx.sh"), "stop", self.dir], check=False)


# ----------------------------------------------------------------------------------------------
# Runners: long-lived client processes answering one command per line


def pin_client():
    os.sched_setaffinity(0, {1})


class Runner:
    def __init__(self, name, argv, env, pin, encode):
        self.name, self.argv, self.env, self.pin, self.encode = name, argv, env, pin, encode
        self.proc = None
        self.versions = {}
        self.error = None

    def start(self):
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env, text=True,
            cwd=ROOT, preexec_fn=pin_client if self.pin else None,
        )

    def ask(self, cmd, timeout):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write(self.encode(cmd) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"fatal": f"{self.name} runner exited"}
        line = read_line(self.proc.stdout, timeout)
        if line is None:
            self.kill()
            return {"fatal": f"{self.name} runner gave no answer within {timeout:.0f} s (killed)"}
        try:
            return json.loads(line)
        except ValueError:
            return {"fatal": f"{self.name} runner: unreadable answer {line[:200]!r}"}

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(self.encode({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:
                self.kill()


def read_line(stream, timeout):
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return None
        line = stream.readline()
        return line or None
    finally:
        sel.close()


def encode_json(cmd):
    return json.dumps(cmd)


def encode_c(cmd):
    if cmd["op"] in ("versions", "quit"):
        return cmd["op"]
    line = "run {client} {conc} {ka} {seconds} {warmup} {max_requests} {expect_len} {url} {ca}".format(
        ka=int(cmd["keep_alive"]), ca=cmd["ca_file"] or "-", **cmd
    )
    if cmd.get("stream"):
        line += " 1 {}".format(cmd.get("upload", 0))
    elif cmd.get("h2"):
        line += " 0 0 1"
    return line


# ----------------------------------------------------------------------------------------------
# wrk


def parse_duration_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(cmd, pin):
    secs = max(1, round(cmd["seconds"]))
    argv = ["wrk", "-t1", f"-c{cmd['conc']}", f"-d{secs}s", "--latency", "--timeout", "30s"]
    if not cmd["keep_alive"]:
        argv += ["-H", "Connection: close"]
    argv.append(cmd["url"])
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=pin_client if pin else None)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        return {"fatal": f"wrk exited {p.returncode}: {out[-300:]}"}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        return {"fatal": f"unreadable wrk output: {out[-300:]}"}
    n = int(m.group(1))
    seconds = parse_duration_ms(m.group(2) + m.group(3)) / 1e3
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m2.group(1)) if m2 else 0
    m3 = re.search(r"requests in [^,]+, ([\d.]+)([KMG]?B) read", out)
    size = float(m3.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m3.group(2)] if m3 else 0
    return {
        "requests": n,
        "total_requests": n,
        "errors": errors,
        "warmup_errors": 0,
        "seconds": seconds,
        "p50_ms": parse_duration_ms(lat.get("50", "0us")) or 0.0,
        "p99_ms": parse_duration_ms(lat.get("99", "0us")) or 0.0,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "bytes": int(size),
        "error": "" if errors == 0 else out.strip().splitlines()[-3][:200],
    }


# ----------------------------------------------------------------------------------------------
# h2load (nghttp2-client): the HTTP/2 ceiling


def proc_cpu_s(pid):
    """user + system seconds of a live process (every thread), from /proc (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_h2load(cmd, pin):
    """h2load -c1 -m<conc> -t1: one connection, conc streams in flight, for --warmup (not
    counted) then exactly --seconds (-D); its own "finished in ..., R req/s" is over the
    measured part only. CPU: the process's CPU at the end (wait4) minus a /proc sample taken
    when the warm-up ends. h2load does not verify the server's certificate."""
    ms, warm_ms = max(1, round(cmd["seconds"] * 1000)), round(cmd["warmup"] * 1000)
    argv = ["h2load", "-c1", f"-m{cmd['conc']}", "-t1", "-D", f"{ms}ms"]
    if warm_ms > 0:
        argv += ["--warm-up-time", f"{warm_ms}ms"]
    argv.append(cmd["url"])
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=pin_client if pin else None)
    cpu_warm = None
    if warm_ms > 0:
        time.sleep(max(0.0, t0 + warm_ms / 1000 - time.monotonic()))
        try:
            cpu_warm = proc_cpu_s(p.pid)
        except (OSError, ValueError, IndexError):
            cpu_warm = None
    # Bounded: killed 60 s after its duration (then its output ends and wait4 returns).
    killer = threading.Timer(cmd["seconds"] + cmd["warmup"] + 60, p.kill)
    killer.start()
    try:
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        killer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        return {"fatal": f"h2load exited {p.returncode}: {out[-300:]}"}
    return parse_h2load(out, cmd, cpu_warm, ru)


def parse_h2load(out, cmd, cpu_warm, ru):
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    mr = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                   r"(\d+) errored, (\d+) timeout", out)
    if not m or not mr:
        return {"fatal": f"unreadable h2load output: {out[-300:]}"}
    rate = float(m.group(1))
    total, done, ok = int(mr.group(1)), int(mr.group(3)), int(mr.group(4))
    errors = int(mr.group(5)) + int(mr.group(6)) + int(mr.group(7))
    ms = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if ms:
        errors += int(ms.group(2)) + int(ms.group(3)) + int(ms.group(4))
    mt = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    alpn = re.search(r"Application protocol: (\S+)", out)
    error = ""
    if alpn and alpn.group(1) != "h2":
        errors += done
        error = f"h2load negotiated {alpn.group(1)}, not h2"
    elif errors:
        error = next((ln for ln in out.splitlines() if "failed" in ln or "error" in ln.lower()), "")[:200]
    cpu_total = ru.ru_utime + ru.ru_stime if ru else None
    if cpu_total is None:
        cpu = None
    elif cpu_warm is not None:
        cpu = cpu_total - cpu_warm
    else:
        cpu = cpu_total * cmd["seconds"] / (cmd["seconds"] + cmd["warmup"])
    return {
        "requests": done,
        "total_requests": total,
        "errors": errors,
        "warmup_errors": 0,
        "seconds": done / rate if rate > 0 else cmd["seconds"],
        # h2load reports min / max / mean / sd per request, no percentiles.
        "p50_ms": None,
        "p99_ms": None,
        "mean_ms": parse_duration_ms(mt.group(1)) if mt else None,
        "cpu_s": cpu,
        "bytes": ok * cmd["expect_len"],
        "error": error,
    }


# ----------------------------------------------------------------------------------------------
# Environment for the runners


def runner_env():
    env = dict(os.environ)
    env["KEEPALIVE_AGENT_LIB"] = os.path.join(ROOT, "target", "release", "libkeepalive_agent.so")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [os.path.join(ROOT, "bindings", "python", "src"), env.get("PYTHONPATH", "")] if p
    )
    # The benchmark decides keep-alive per client; never let the environment switch do it.
    for k in ("KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED", "AWS_NODEJS_CONNECTION_REUSE_ENABLED"):
        env.pop(k, None)
    return env


def c_bench_path():
    return os.path.join(BUILD, "bench", "bench")


def make_runners(pin):
    env = runner_env()
    runners = {}
    if os.access(c_bench_path(), os.X_OK):
        runners["c"] = Runner("C", [c_bench_path()], env, pin, encode_c)
    runners["py"] = Runner("Python", [sys.executable, os.path.join(HERE, "python", "runner.py")], env, pin,
                           encode_json)
    if shutil.which("node"):
        runners["node"] = Runner("Node", ["node", os.path.join(HERE, "node", "runner.js")], env, pin, encode_json)
    return runners


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    want = min(want, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------------------------------
# Measurement


def run_cells(args, nginx, runners, available):
    cells = []
    cap_ka, cap_off, cap_big = 2_000_000, args.reuse_off_cap, 200_000
    t_start = time.monotonic()
    chosen = {x.strip() for x in args.workloads.split(",") if x.strip()}
    for rep in range(args.reps):
        for wi, w in enumerate(WORKLOADS):
            if chosen and w["id"] not in chosen:
                continue
            # Shuffled, but a language's clients run back to back, so that ours and the
            # peers it is compared with see the same moment of a shared machine.
            rnd = random.Random(1000 * rep + wi)
            langs = ["C", "Python", "Node"]
            rnd.shuffle(langs)
            todo = []
            for language in langs:
                group = [
                    (lang, key, runner)
                    for lang, key, runner, _ in CLIENTS
                    if lang == language and (lang, key) in available and w["id"] in ONLY_IN.get(key, {w["id"]})
                    and bool(w.get("aws")) == key.startswith("aws-")
                    and (w["id"] not in STREAMED or (lang, key) in STREAM_CLIENTS)
                    and (not w.get("h2") or (lang, key) in H2_CLIENTS)
                ]
                rnd.shuffle(group)
                todo += group
            for lang, key, runner in todo:
                h2 = bool(w.get("h2")) or key in H2_VARIANT
                scheme = "h2" if h2 else w["scheme"]
                cmd = {
                    "op": "run",
                    "client": H2_VARIANT.get(key, key),
                    "conc": w["conc"],
                    "keep_alive": w["keep_alive"],
                    "seconds": args.seconds,
                    "warmup": args.warmup,
                    "max_requests": cap_big if w["size"] > 13 else (cap_ka if w["keep_alive"] else cap_off),
                    "expect_len": w["size"],
                    "url": nginx.url(scheme, w["path"]),
                    "ca_file": nginx.ca_file if scheme in ("https", "h2") else "",
                }
                if h2:
                    cmd["h2"] = True
                if w.get("stream"):
                    # One whole transfer per cell, no warm-up transfer.
                    cmd.update(stream=True, upload=w["upload"], max_requests=1, warmup=0)
                before = nginx.accepts()
                if runner == "wrk":
                    res = run_wrk(cmd, args.pin)
                elif runner == "h2load":
                    res = run_h2load(cmd, args.pin)
                else:
                    res = runners[runner].ask(cmd, timeout=args.seconds + args.warmup + (300 if w.get("stream") else 60))
                res["connections"] = nginx.accepts() - before
                res.update(rep=rep, workload=w["id"], language=lang, client=key)
                cells.append(res)
                if "fatal" in res:
                    log(f"  rep {rep + 1} {w['id']} {lang:6} {key:15} FAILED: {res['fatal']}")
                elif "skipped" in res:
                    log(f"  rep {rep + 1} {w['id']} {lang:6} {key:15} skipped: {res['skipped']}")
                else:
                    rate = rate_of(res, w)
                    unit = "MB/s" if w["size"] > 13 else "req/s"
                    rss = f"  RSS +{res.get('rss_growth_kib', 0) / 1024:.1f} MiB" if w.get("stream") else ""
                    p50 = f"{res['p50_ms']:.3f} ms" if res.get("p50_ms") is not None else "—"
                    log(
                        f"  rep {rep + 1} {w['id']} {lang:6} {key:15} {rate:10.1f} {unit}  "
                        f"p50 {p50}  errors {res['errors']}  conns {res['connections']}{rss}"
                    )
        log(f"repetition {rep + 1}/{args.reps} done after {time.monotonic() - t_start:.0f} s")
    return cells


def rate_of(res, w):
    if not res.get("seconds"):
        return 0.0
    if w["size"] > 13:
        return res["bytes"] / res["seconds"] / 1e6
    return res["requests"] / res["seconds"]


def run_memory(args, nginx, available):
    env = runner_env()
    out = []
    n = args.mem_conns
    for lang, key, runner in MEM_CLIENTS:
        if (lang, key) not in available:
            continue
        for scheme in ("http", "https"):
            # /slow answers after 500 ms, so all n requests are in flight at once and each needs
            # its own connection. (urllib3 opens its connections one by one, on "/".)
            url = nginx.url(scheme, nginx.info["NGINX_SLOW_PATH"])
            ca = nginx.ca_file if scheme == "https" else "-"
            if runner == "c":
                argv = [c_bench_path(), "mem", key, str(n), url, ca]
            elif runner == "py":
                argv = [sys.executable, os.path.join(HERE, "python", "runner.py"), "mem", key, str(n), url, ca]
            else:
                argv = ["node", "--expose-gc", os.path.join(HERE, "node", "runner.js"), "mem", key, str(n), url, ca]
            before = nginx.accepts()
            try:
                p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
                                   preexec_fn=pin_client if args.pin else None)
                res = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {
                    "fatal": f"exit {p.returncode}: {p.stderr.strip()[-300:]}"}
            except Exception as e:
                res = {"fatal": f"{type(e).__name__}: {e}"}
            res["connections"] = nginx.accepts() - before
            res.update(language=lang, client=key, scheme=scheme, requested=n)
            if "fatal" not in res:
                # The warm-up request's connection was opened before the baseline.
                new = max(1, res["connections"] - 1)
                res["new_connections"] = new
                res["kib_per_conn"] = (res["rss_after_kib"] - res["rss_before_kib"]) / new
                log(f"  memory {lang:6} {key:12} {scheme:5} {res['kib_per_conn']:6.1f} KiB/conn "
                    f"({new} connections, threads {res['threads_before']} -> {res['threads_after']})")
            else:
                log(f"  memory {lang:6} {key:12} {scheme:5} FAILED: {res['fatal']}")
            out.append(res)
    return out


def run_profile(nginx):
    """Instructions per request (valgrind callgrind: exact counts, immune to noise) of the C
    clients at c=1: (Ir(n2) - Ir(n1)) / (n2 - n1), which cancels start-up and set-up."""
    if not shutil.which("valgrind") or not os.access(c_bench_path(), os.X_OK):
        return []
    env = runner_env()
    results = []
    n1, n2 = 100, 1100
    for scheme in ("http", "https"):
        url = nginx.url(scheme)
        ca = nginx.ca_file if scheme == "https" else "-"
        for key in ("ours", "curl"):
            ir = []
            for n in (n1, n2):
                cmd = f"run {key} 1 1 600 0 {n} 13 {url} {ca}\nquit\n"
                out_file = os.path.join(BUILD, "bench", f"callgrind.{key}.{scheme}.{n}.out")
                p = subprocess.run(
                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", c_bench_path()],
                    input=cmd, env=env, capture_output=True, text=True, timeout=600,
                )
                m = re.search(r"Collected : (\d+)", p.stderr)
                ir.append(int(m.group(1)) if m else None)
            if None in ir:
                log(f"  profile {key} {scheme}: callgrind failed")
                continue
            per = (ir[1] - ir[0]) / (n2 - n1)
            results.append({"client": key, "scheme": scheme, "instructions_per_request": per})
            log(f"  profile C {key:5} {scheme:5} {per:10.0f} instructions/request")
    return results


# ----------------------------------------------------------------------------------------------
# Summary


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(cells, reps):
    """Per (workload, language, client): medians over the repetitions; ratios ours/peer per
    repetition, then their median and range."""
    by = {}
    for c in cells:
        if "skipped" in c:
            continue
        by.setdefault((c["workload"], c["language"], c["client"]), []).append(c)
    summary = {}
    for (wid, lang, key), cs in by.items():
        w = WL[wid]
        ok = [c for c in cs if "fatal" not in c]
        rates = {c["rep"]: rate_of(c, w) for c in ok}
        summary[(wid, lang, key)] = {
            "rates": rates,
            "rate": median(list(rates.values())),
            "min": min(rates.values()) if rates else None,
            "max": max(rates.values()) if rates else None,
            "p50_ms": median([c["p50_ms"] for c in ok if c.get("p50_ms") is not None]),
            "p99_ms": median([c["p99_ms"] for c in ok if c.get("p99_ms") is not None]),
            "mean_ms": median([c["mean_ms"] for c in ok if c.get("mean_ms") is not None]),
            "cpu_us": median([c["cpu_s"] / c["requests"] * 1e6 for c in ok
                              if c["requests"] and c.get("cpu_s") is not None]),
            "errors": sum(c["errors"] for c in ok),
            "connections": median([c["connections"] for c in ok]),
            "total_requests": median([c["total_requests"] for c in ok]),
            "fatal": [c["fatal"] for c in cs if "fatal" in c],
            "error": next((c["error"] for c in ok if c.get("error")), ""),
            "rss_growth_kib": median([c["rss_growth_kib"] for c in ok if "rss_growth_kib" in c]),
        }
    return summary


def ratio(summary, wid, lang, a, b):
    """Median and range of per-repetition ratios a/b (None when either is missing)."""
    sa, sb = summary.get((wid, lang, a)), summary.get((wid, lang, b))
    if not sa or not sb:
        return None
    rs = [sa["rates"][r] / sb["rates"][r] for r in sa["rates"] if r in sb["rates"] and sb["rates"][r] > 0]
    if not rs:
        return None
    return {"median": statistics.median(rs), "min": min(rs), "max": max(rs), "n": len(rs)}


def speedup(summary, lang, key):
    sa, sb = summary.get(("W3", lang, key)), summary.get(("W4", lang, key))
    if not sa or not sb:
        return None
    rs = [sa["rates"][r] / sb["rates"][r] for r in sa["rates"] if r in sb["rates"] and sb["rates"][r] > 0]
    if not rs:
        return None
    return {"median": statistics.median(rs), "min": min(rs), "max": max(rs), "n": len(rs)}


# ----------------------------------------------------------------------------------------------
# Report


def fmt_rate(x):
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_ratio(r):
    if r is None:
        return "—"
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f", {kib / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs (nproc), {cpu}{mem}, Linux {platform.release()}"


def write_report(path, meta, summary, memory, profile, versions, goals_eval):
    L = []
    L.append("# Benchmark results")
    L.append("")
    L.append(f"Measured by `make bench` on {meta['date']} in {meta['elapsed_s']:.0f} s. "
             "The server is Debian's nginx (one worker, its own config from `scripts/nginx.sh`: "
             "13-byte `GET /`, 1 MiB static `/1m.bin`, a 1 GiB file `/1g.bin`, `PUT /upload/` "
             "into memory-backed files (WebDAV), TLS 1.2/1.3 with an ECDSA P-256 certificate, "
             "`keepalive_requests 1000000`, access log off); every client runs on the same machine.")
    L.append("")
    placement = "pinned to CPU 0 and CPU 1" if meta["pin"] else "share the cores (not pinned)"
    L.append(f"- Machine: {meta['machine']}; nginx and the client {placement}.")
    L.append(f"- Server: nginx {meta['nginx']} (Debian). Load average (1 min) when the run started: "
             f"{meta['load_start']:.2f}, when it ended: {meta['load_end']:.2f}; other work on the machine "
             "shows up as spread.")
    L.append(f"- Command: `{meta['command']}`")
    L.append(f"- Method: {meta['reps']} repetitions; in each, every workload runs its clients once, in a "
             f"shuffled order (one language's clients back to back); a cell is {meta['warmup']:g} s "
             "of warm-up on the same client, then "
             f"{meta['seconds']:g} s measured (wrk: {max(1, round(meta['seconds']))} s; h2load: its own "
             "`--warm-up-time`, then `-D`). Figures are "
             "medians over the repetitions; \"spread\" is (max − min) / median. A ratio is computed "
             "within each repetition (ours ÷ that client, same language, same workload), and the "
             "table gives the median ratio and its range. Connections are counted by nginx "
             "(`stub_status` accepts), not by the clients. CPU is the client process's user + system "
             "time (all threads) per request.")
    L.append("")
    L.append("Clients and versions:")
    L.append("")
    for lang, key, _, label in CLIENTS:
        v = versions.get((lang, key))
        if v:
            L.append(f"- {lang}: {label} — {v}")
    L.append("")

    for issue in ("13", "HTTP/2"):
        rows = [g for g in goals_eval if g.get("issue", "13") == issue]
        if not rows:
            continue
        L.append(f"## Goals (issue {issue})")
        L.append("")
        if issue == "HTTP/2":
            L.append("W9 against h2load, libcurl multi and undici; and HTTP/2 one request at a time "
                     "(W3, keepalive-agent with http_version auto on nginx's h2 port) against "
                     "keepalive-agent at its default, HTTP/1.1: no goal, it shows why the default "
                     "stays http1.")
            L.append("")
        L.append("| language | workload | ratio | goal | measured: median (range) | verdict |")
        L.append("|---|---|---|---:|---:|---|")
        for g in rows:
            goal = g.get("goal_text") or (f"≥ {g['goal']:g}" if g["goal"] is not None else "—")
            L.append(f"| {g['language']} | {g['workload']} | {g['what']} | {goal} | {g['measured']} | {g['verdict']} |")
        L.append("")

    def ms(x):
        return f"{x:.3f}" if x is not None else "—"

    for w in WORKLOADS:
        if not any(k[0] == w["id"] for k in summary):
            continue
        big = w["size"] > 13
        unit = "MB/s" if big else "req/s"
        L.append(f"## {w['id']}: {w['title']}" + (" (throughput in MB/s)" if big else " (13-byte body)"))
        L.append("")
        streamed = w["id"] in STREAMED
        if streamed:
            L.append("One transfer per cell, streamed (never held whole); CPU is per transfer, and "
                     "RSS growth is the largest resident-set growth of the client process sampled "
                     "every 5 ms during the transfer.")
            L.append("")
        if w.get("h2"):
            L.append("HTTP/2 over TLS to nginx's h2 port (ALPN h2, then http/1.1), 64 requests in "
                     "flight on one connection; \"conns\" should read 1 for every client. "
                     "keepalive-agent: `AGENT_HTTP_VERSION_AUTO` (C; the event queue keeps 64 "
                     "requests submitted, as in W5; the 64-thread form shares the agent) and "
                     "`httpVersion: 'auto'` (Node). libcurl: the multi interface with 64 easy "
                     "handles, `CURL_HTTP_VERSION_2TLS`, `CURLOPT_PIPEWAIT` 1, "
                     "`CURLMOPT_PIPELINING` = `CURLPIPE_MULTIPLEX`. h2load: `-c1 -m64 -t1 -D "
                     "<seconds> --warm-up-time <warm-up>`, its CPU from /proc at the end of the "
                     "warm-up and wait4 at exit; it reports no percentiles (mean time per request: "
                     + ms(summary.get((w["id"], "C", "h2load"), {}).get("mean_ms")) + " ms) and does not verify "
                     "the certificate. undici: `Pool(origin, { allowH2: true, connections: 1, "
                     "pipelining: 64 })` (undici 7 runs at most `pipelining` requests at once on a "
                     "client, h2 included; default 1), ALPN checked to be h2. node:http2: one "
                     "`http2.connect` session, 64 streams through `session.request`. keepalive-agent "
                     "from C and libcurl check that every answer came over HTTP/2 (one that did not "
                     "counts as an error); keepalive-agent from Node checks its first answer (a "
                     "binding without `httpVersion` skips the cell); undici's connection must have "
                     "negotiated h2; node:http2 speaks nothing else. Python: not in this workload.")
            L.append("")
        if any(k[0] == w["id"] and k[2] in H2_VARIANT for k in summary):
            L.append("The HTTP/2 rows (`ours-h2`) are keepalive-agent with http_version auto on nginx's "
                     "h2 port: the same one request at a time, over HTTP/2; the HTTP/2 goals table "
                     "gives their ratio to keepalive-agent at its default (HTTP/1.1).")
            L.append("")
        L.append(f"| language | client | {unit} | spread | p50 ms | p99 ms | CPU µs/req | errors "
                 "| conns (nginx) / requests | ours ÷ this |" + (" RSS growth MiB |" if streamed else ""))
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if streamed else ""))
        for lang, key, _, label in CLIENTS:
            s = summary.get((w["id"], lang, key))
            if s is None:
                continue
            if s["rate"] is None:
                why = s["fatal"][0][:80] if s["fatal"] else ""
                L.append(f"| {lang} | {label} | failed | | | | | | | {why} |")
                continue
            spread = (s["max"] - s["min"]) / s["rate"] * 100 if s["rate"] else 0
            if key in OURS_KEYS:
                r = "—"
            else:
                # Each peer against the form of ours it stands for.
                mine = {"aws-node": "aws-ours", "curl-threads": "ours-threads",
                        "pycurl-multi": "ours-asyncio", "aiohttp": "ours-asyncio"}.get(key, "ours")
                r = fmt_ratio(ratio(summary, w["id"], lang, mine, key))
                if w["id"] == "W5" and lang == "Python" and mine == "ours":
                    ra = ratio(summary, w["id"], lang, "ours-asyncio", key)
                    r += f"; asyncio {ra['median']:.2f}" if ra else ""
            conns = f"{s['connections']:,.0f} / {s['total_requests']:,.0f}"
            errs = f"{s['errors']}" + (f" ({len(s['fatal'])} failed)" if s["fatal"] else "")
            rss = ""
            if streamed:
                g = s.get("rss_growth_kib")
                rss = f" {g / 1024:.1f} |" if g is not None else " — |"
            cpu = f"{s['cpu_us']:.1f}" if s["cpu_us"] is not None else "—"
            L.append(f"| {lang} | {label} | {fmt_rate(s['rate'])} | {spread:.0f}% | {ms(s['p50_ms'])} | "
                     f"{ms(s['p99_ms'])} | {cpu} | {errs} | {conns} | {r} |" + rss)
        L.append("")

    speedups = [(lang, key, label, speedup(summary, lang, key)) for lang, key, _, label in CLIENTS]
    speedups = [x for x in speedups if x[3] is not None]
    if speedups:
        L.append(f"## Keep-alive vs reuse off over TLS (W3 ÷ W4, goal ≥ {KEEPALIVE_SPEEDUP_GOAL:g}×)")
        L.append("")
        L.append("| language | client | W3 req/s | W4 req/s | keep-alive speed-up: median (range) |")
        L.append("|---|---|---:|---:|---:|")
        for lang, key, label, sp in speedups:
            L.append(f"| {lang} | {label} | {fmt_rate(summary[('W3', lang, key)]['rate'])} | "
                     f"{fmt_rate(summary[('W4', lang, key)]['rate'])} | {fmt_ratio(sp)} |")
        L.append("")

    if memory:
        n = memory[0]["requested"]
        L.append(f"## Memory: {n:,} idle pooled connections")
        L.append("")
        L.append(f"RSS growth of a fresh process from one warm connection to {n:,} idle pooled ones "
                 "(opened by that many concurrent requests to `/slow`, which nginx answers after "
                 "500 ms, then left idle), divided by the connections nginx accepted meanwhile. "
                 "urllib3 opens its connections one by one (a request on each, then back to the "
                 "pool). No measuring program calls `malloc_trim` or tunes its allocator: the "
                 "figures are RSS as a user's program sees it (keepalive-agent itself gives freed "
                 "pages back after a wave of connections goes idle); Python and Node readings "
                 "follow a full GC. Goal for keepalive-agent: ≤ "
                 f"{MEM_GOAL_KIB_C_HTTP:g} KiB over HTTP from C, ≤ {MEM_GOAL_KIB['http']:g} KiB from "
                 f"Python and Node, ≤ {MEM_GOAL_KIB['https']:g} KiB over HTTPS, and no thread per "
                 "connection.")
        L.append("")
        L.append("| language | client | HTTP KiB/conn | HTTPS KiB/conn | connections (nginx) HTTP / HTTPS "
                 "| threads before → after |")
        L.append("|---|---|---:|---:|---:|---|")
        for lang, key, _ in MEM_CLIENTS:
            rows = {m["scheme"]: m for m in memory if m["language"] == lang and m["client"] == key}
            if not rows:
                continue

            def cell(scheme):
                m = rows.get(scheme)
                if not m or "fatal" in m:
                    return "failed"
                return f"{m['kib_per_conn']:.1f}"

            def conns(scheme):
                m = rows.get(scheme)
                return f"{m.get('new_connections', 0):,}" if m and "fatal" not in m else "—"

            th = "; ".join(
                f"{s}: {rows[s]['threads_before']} → {rows[s]['threads_after']}"
                for s in ("http", "https") if s in rows and "fatal" not in rows[s]
            )
            L.append(f"| {lang} | {MEM_LABEL[(lang, key)]} | {cell('http')} | {cell('https')} | "
                     f"{conns('http')} / {conns('https')} | {th} |")
        L.append("")

    if profile:
        L.append("## Instructions per request (C, c=1 keep-alive, valgrind callgrind)")
        L.append("")
        L.append("Exact instruction counts of the whole client process, every thread, per request: "
                 "(Ir(1,100 requests) − Ir(100 requests)) / 1,000, so start-up cancels out. Other "
                 "programs on the machine do not change them; a lower count is less CPU per request. "
                 "Caveat: a read that finds no data yet (EAGAIN) is counted too, and valgrind's "
                 "slowdown makes those more frequent than in a real run, for both clients.")
        L.append("")
        L.append("| scheme | keepalive-agent | libcurl | ours ÷ libcurl |")
        L.append("|---|---:|---:|---:|")
        for scheme in ("http", "https"):
            o = next((p for p in profile if p["client"] == "ours" and p["scheme"] == scheme), None)
            c = next((p for p in profile if p["client"] == "curl" and p["scheme"] == scheme), None)
            if o and c:
                L.append(f"| {scheme.upper()} | {o['instructions_per_request']:,.0f} | "
                         f"{c['instructions_per_request']:,.0f} | "
                         f"{o['instructions_per_request'] / c['instructions_per_request']:.2f} |")
        L.append("")

    if meta.get("notes"):
        L.append("## Notes")
        L.append("")
        for note in meta["notes"]:
            L.append(f"- {note}")
        L.append("")
    L.append("![ratios](ratios.svg)")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


def evaluate_goals(summary, memory, ran=None):
    """ran: the workloads that were run (None: all); goals on others are left out."""
    out = []
    goals = [g + ("13",) for g in GOALS] + [g + ("HTTP/2",) for g in H2_GOALS]
    for lang, wid, a, b, goal, issue in goals:
        if ran is not None and wid not in ran:
            continue
        r = ratio(summary, wid, lang, a, b)
        names = {"ours-asyncio": "ours (asyncio)", "ours-threads": "ours (64 threads)",
                 "ours-callback": "ours (callbacks)", "ours": "ours",
                 "aws-ours": "KeepAliveHttpHandler", "aws-node": "NodeHttpHandler",
                 "ours-h2": "ours, HTTP/2 (auto, h2 port)"}
        what = f"{names.get(a, a)} ÷ {names.get(b) or LABEL[(lang, b)].split(' (')[0]}"
        chart = f"{lang} {wid} {a.replace('ours-', '').replace('ours', '')}÷ {b}".replace("  ", " ")
        if a in H2_VARIANT:
            what = f"{names[a]} ÷ ours, HTTP/1.1 (the default)"
            chart = f"{lang} {wid} HTTP/2 ÷ HTTP/1.1 (ours, c=1)"
        elif wid == "W9":
            chart = f"{lang} W9 (HTTP/2) ÷ {b}"
        if goal is None:
            v = "no goal" if r else "not measured"
        else:
            v = verdict(r and r["median"], goal)
        out.append({
            "language": lang, "workload": wid, "what": what, "goal": goal, "ratio": r,
            "measured": fmt_ratio(r), "verdict": v, "chart": chart, "issue": issue,
        })
    for lang in ("C", "Python", "Node"):
        if ran is not None and not {"W3", "W4"} <= ran:
            continue
        sp = speedup(summary, lang, "ours")
        out.append({
            "language": lang, "workload": "W3 / W4", "what": "ours keep-alive ÷ ours reuse off",
            "goal": KEEPALIVE_SPEEDUP_GOAL, "ratio": sp, "measured": fmt_ratio(sp),
            "verdict": verdict(sp and sp["median"], KEEPALIVE_SPEEDUP_GOAL),
            "chart": f"{lang} W3÷W4 (ours)",
        })
    for m in memory:
        if m["client"] != "ours":
            continue
        goal = MEM_GOAL_KIB[m["scheme"]]
        if m["language"] == "C" and m["scheme"] == "http":
            goal = MEM_GOAL_KIB_C_HTTP
        if "fatal" in m:
            out.append({"language": m["language"], "workload": f"memory {m['scheme'].upper()}",
                        "what": "RSS per idle pooled connection", "goal": goal, "ratio": None,
                        "measured": "failed", "verdict": "not measured", "memory": True})
            continue
        kib = m["kib_per_conn"]
        ok = kib <= goal and m["threads_after"] <= m["threads_before"] + 2
        out.append({
            "language": m["language"], "workload": f"memory {m['scheme'].upper()}",
            "what": "RSS per idle pooled connection", "goal": goal, "ratio": None,
            "measured": f"{kib:.1f} KiB; threads {m['threads_before']} → {m['threads_after']}",
            "verdict": "met" if ok else f"missed ({kib / goal:.1f}× the budget)", "memory": True,
        })
    for g in out:
        if g.get("memory"):
            g["goal_text"] = f"≤ {g['goal']:g} KiB"
    return out


def verdict(value, goal):
    if value is None:
        return "not measured"
    if value >= goal:
        return "met"
    return f"missed by {(1 - value / goal) * 100:.0f}%"


def write_chart(path, goals_eval, memory):
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "keepalive-agent-bench"
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rgoals = [g for g in goals_eval if not g.get("memory") and g["ratio"]]
    mem_rows = [m for m in memory if "fatal" not in m]
    nplots = 1 + (1 if mem_rows else 0)
    fig, axes = plt.subplots(nplots, 1, figsize=(9, 0.34 * len(rgoals) + 2.2 + (4 if mem_rows else 0)),
                             gridspec_kw={"height_ratios": [max(len(rgoals), 1), 10][:nplots]})
    if nplots == 1:
        axes = [axes]
    ax = axes[0]
    names = [g["chart"] for g in rgoals][::-1]
    vals = [g["ratio"]["median"] for g in rgoals][::-1]
    lo = [g["ratio"]["median"] - g["ratio"]["min"] for g in rgoals][::-1]
    hi = [g["ratio"]["max"] - g["ratio"]["median"] for g in rgoals][::-1]
    goals = [g["goal"] for g in rgoals][::-1]
    # A ratio without a goal (HTTP/2 against HTTP/1.1 at c=1) is grey, with no goal mark.
    colors = ["#9e9e9e" if t is None else "#2e7d32" if v >= t else "#c62828" for v, t in zip(vals, goals)]
    y = range(len(names))
    ax.barh(y, vals, xerr=[lo, hi], color=colors, alpha=0.85, error_kw={"elinewidth": 1, "capsize": 2})
    marks = [(t, yi) for t, yi in zip(goals, y) if t is not None]
    ax.scatter([t for t, _ in marks], [yi for _, yi in marks], marker="|", s=250, color="black", zorder=3,
               label="goal")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for yi, v, h, t in zip(y, vals, hi, goals):
        ax.annotate(f"{v:.2f}", (max(v + h, t or 0) * 1.08, yi), va="center", fontsize=7)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("keepalive-agent ÷ peer, same run (median of repetitions; bars: range; log scale)")
    ax.set_title("Throughput ratios against each language's peers (green: goal met; grey: no goal)",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)

    if mem_rows:
        ax = axes[1]
        clients = []
        for m in mem_rows:
            k = (m["language"], m["client"])
            if k not in clients:
                clients.append(k)
        width = 0.38
        for i, scheme in enumerate(("http", "https")):
            vals = []
            for k in clients:
                m = next((x for x in mem_rows if (x["language"], x["client"]) == k and x["scheme"] == scheme), None)
                vals.append(m["kib_per_conn"] if m else 0)
            ax.bar([j + (i - 0.5) * width for j in range(len(clients))], vals, width,
                   label=scheme.upper(), color=["#1565c0", "#ef6c00"][i], alpha=0.85)
        for scheme, col in (("http", "#1565c0"), ("https", "#ef6c00")):
            ax.axhline(MEM_GOAL_KIB[scheme], color=col, ls="--", lw=1,
                       label=f"goal for ours, {scheme.upper()} ({MEM_GOAL_KIB[scheme]:g} KiB)")
        ax.set_xticks(range(len(clients)))
        ax.set_xticklabels([f"{lang}\n{key}" for lang, key in clients], fontsize=8)
        ax.set_ylabel("KiB RSS per idle connection")
        ax.set_title(f"Memory: {mem_rows[0]['requested']:,} idle pooled connections", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.8, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=0.2, help="warm-up seconds per cell")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (interleaved)")
    ap.add_argument("--reuse-off-cap", type=int, default=20000, help="request cap of a reuse-off cell")
    ap.add_argument("--mem-conns", type=int, default=1000, help="idle connections for the memory test")
    ap.add_argument("--no-mem", action="store_true", help="skip the memory test")
    ap.add_argument("--no-profile", action="store_true", help="skip the callgrind instruction counts")
    ap.add_argument("--pin", action="store_true", help="pin nginx to CPU 0 and the clients to CPU 1")
    ap.add_argument("--only", default="", help="languages to run, e.g. C,Node (default: all)")
    ap.add_argument("--workloads", default="",
                    help="workloads to run, e.g. W7,W8 or W9 (default: all, and the memory test and the "
                         "instruction counts); with a list, those two run only if it names MEM / PROFILE")
    ap.add_argument("--out", default=os.path.join(HERE, "out"), help="raw results directory")
    ap.add_argument("--report", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--chart", default=os.path.join(HERE, "ratios.svg"))
    ap.add_argument("--command", default=None, help="the command line to print in the report")
    args = ap.parse_args()
    if args.pin and (os.cpu_count() or 1) < 2:
        log("--pin needs 2 CPUs: running unpinned")
        args.pin = False
    only = {x.strip().lower() for x in args.only.split(",") if x.strip()}
    chosen = {x.strip().upper() for x in args.workloads.split(",") if x.strip()}
    unknown = chosen - set(WL) - {"MEM", "PROFILE"}
    if unknown:
        ap.error(f"unknown workloads: {', '.join(sorted(unknown))} (known: {', '.join(WL)}, MEM, PROFILE)")
    args.workloads = ",".join(sorted(chosen))
    ran = {w for w in WL if not chosen or w in chosen}
    do_mem = not args.no_mem and (not chosen or "MEM" in chosen)
    do_profile = not args.no_profile and (not chosen or "PROFILE" in chosen)

    # SIGTERM unwinds like Ctrl-C, so nginx and the runners are always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]
    if load_start > (os.cpu_count() or 1):
        log(f"warning: load average {load_start:.1f} on {os.cpu_count()} CPUs: expect a wide spread")
    fd_limit = raise_fd_limit()
    if args.mem_conns + 200 > fd_limit:
        args.mem_conns = max(10, fd_limit - 200)
        log(f"file descriptor limit {fd_limit}: memory test uses {args.mem_conns} connections")
    notes = []
    nginx = Nginx(args.pin)
    runners = make_runners(args.pin)
    try:
        log(f"nginx {nginx.version()} on {nginx.url('http')} and {nginx.url('https')}")
        available, versions = set(), {}
        lang_of = {"c": "C", "py": "Python", "node": "Node"}
        for rk, runner in runners.items():
            v = runner.ask({"op": "versions"}, timeout=60)
            if "fatal" in v:
                notes.append(f"{runner.name} runner unavailable: {v['fatal']}")
                continue
            for lang, key, rname, label in CLIENTS:
                if rname != rk:
                    continue
                txt = v.get(key) or v.get(key.replace("-asyncio", "")) or v.get(H2_VARIANT.get(key, ""))
                if txt and not txt.startswith("unavailable"):
                    available.add((lang, key))
                    versions[(lang, key)] = txt
                else:
                    notes.append(f"{lang} {label}: not run ({txt or 'unknown'})")
            if rk == "py":
                versions[("Python", "_")] = v.get("python")
            if rk == "node":
                versions[("Node", "_")] = v.get("node")
        for lang, key, rname, label in CLIENTS:
            if rname in ("c", "py", "node") and rname not in runners:
                notes.append(f"{lang} {label}: not run (runner missing)")
        if shutil.which("wrk"):
            p = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
            m = re.search(r"wrk (\S+)", p.stdout + p.stderr)
            available.add(("C", "wrk"))
            versions[("C", "wrk")] = f"wrk {m.group(1) if m else '?'}"
        if shutil.which("h2load"):
            p = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
            m = re.search(r"h2load (\S+)", p.stdout + p.stderr)
            available.add(("C", "h2load"))
            versions[("C", "h2load")] = f"h2load {m.group(1) if m else '?'}"
        else:
            notes.append("C h2load: not run (not found: Debian package nghttp2-client, `make deps`)")
        if only:
            available = {(lang, key) for lang, key in available if lang.lower() in only}
        py_v, node_v = versions.pop(("Python", "_"), None), versions.pop(("Node", "_"), None)
        for k in list(versions):
            if k[0] == "Python" and py_v:
                versions[k] += f" on CPython {py_v}"
            if k[0] == "Node" and node_v and "node v" not in versions[k]:
                versions[k] += f" on Node {node_v}"

        cells = run_cells(args, nginx, runners, available)
        for r in runners.values():
            r.close()
        memory = run_memory(args, nginx, available) if do_mem else []
        profile = run_profile(nginx) if do_profile and (not only or "c" in only) else []
    finally:
        for r in runners.values():
            r.kill()
        nginx_version = nginx.version()
        nginx.stop()

    summary = summarize(cells, args.reps)
    goals_eval = evaluate_goals(summary, memory, ran if chosen else None)
    skipped = sorted({(c["language"], c["client"], c["workload"], c["skipped"][:160]) for c in cells
                      if "skipped" in c})
    for lang, key, wid, msg in skipped:
        notes.append(f"{lang} {LABEL[(lang, key)]} {wid}: not run: {msg}")
    failed = sorted({(c["language"], c["client"], c["workload"], c["fatal"][:120]) for c in cells if "fatal" in c})
    for lang, key, wid, msg in failed:
        notes.append(f"{lang} {key} {wid} failed at least once: {msg}")
    for (wid, lang, key), s in sorted(summary.items()):
        if s["errors"] and s["error"]:
            notes.append(f"{lang} {key} {wid}: {s['errors']} errors, first: {s['error'][:160]}")
    notes.append("TLS: nginx defaults (session tickets on, no session cache); in W4 a client that "
                 "resumes sessions does an abbreviated handshake.")
    notes.append("Connections: wrk opens one extra connection before its run (it test-connects the "
                 "address), so its keep-alive cells show c + 1.")
    for (wid, lang, key), s_ in sorted(summary.items()):
        w = WL[wid]
        if w.get("h2") or key in H2_VARIANT:
            continue
        if w["keep_alive"] and key != "wrk" and s_["connections"] and s_["connections"] > w["conc"]:
            notes.append(f"{lang} {LABEL[(lang, key)]} {wid}: nginx accepted {s_['connections']:.0f} "
                         f"connections (median per cell) for c={w['conc']} with keep-alive.")
    # HTTP/2: one connection per cell is the expectation; every cell that had more is named.
    for wid, lang, key in sorted({(c["workload"], c["language"], c["client"]) for c in cells}):
        if not (WL[wid].get("h2") or key in H2_VARIANT):
            continue
        counts = [c["connections"] for c in cells if (c["workload"], c["language"], c["client"]) == (wid, lang, key)
                  and "fatal" not in c and "skipped" not in c]
        if any(n != 1 for n in counts):
            notes.append(f"{lang} {LABEL[(lang, key)]} {wid} (HTTP/2): nginx accepted "
                         f"{', '.join(str(n) for n in counts)} connections in its cells (1 expected).")
    notes.append("W2/W4 (reuse off): every client sends `Connection: close` and opens a fresh "
                 f"connection per request; a cell stops at {args.reuse_off_cap:,} requests to bound "
                 "TIME_WAIT sockets.")
    elapsed = time.monotonic() - t0
    command = args.command or "build/bench-venv/bin/python bench/run.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "nginx": nginx_version,
        "command": command,
        "reps": args.reps,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "pin": args.pin,
        "elapsed_s": elapsed,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "notes": notes,
    }
    os.makedirs(args.out, exist_ok=True)
    raw = {
        "meta": meta,
        "versions": {f"{k[0]}/{k[1]}": v for k, v in versions.items()},
        "cells": cells,
        "memory": memory,
        "profile": profile,
        "summary": [
            {"workload": k[0], "language": k[1], "client": k[2], **{x: y for x, y in v.items() if x != "rates"},
             "rates": list(v["rates"].values())}
            for k, v in sorted(summary.items())
        ],
        "goals": [{k: v for k, v in g.items()} for g in goals_eval],
    }
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for name in ("results.json", f"results-{stamp}.json"):
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(raw, f, indent=1)
    write_report(args.report, meta, summary, memory, profile, versions, goals_eval)
    write_chart(args.chart, goals_eval, memory)
    log(f"wrote {args.report}, {args.chart} and {os.path.join(args.out, 'results.json')} in {elapsed:.0f} s")
    print(open(args.report).read())


if __name__ == "__main__":
    main()
