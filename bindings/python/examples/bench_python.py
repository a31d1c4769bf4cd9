"""The Python figures of README.md: W1 (c=1), W5 (c=64) and W6 (1 MiB body, c=1) against
a throw-away nginx (scripts/nginx.sh), each cell one command to bench/python/runner.py.

    python examples/bench_python.py [--seconds 2] [--warmup 0.3] [--reps 5]
        [--only W1,W5,W6] [--before-src DIR] [--out FILE]

Run it with a Python that has the peers of bench/python/requirements.txt (pycurl, urllib3,
aiohttp); the binding is taken from this checkout (src/), the library from
KEEPALIVE_AGENT_LIB or the usual lookup. --before-src DIR adds the cells of "ours" again
with the binding found in DIR (another checkout's bindings/python/src), for before/after
figures. Clients of one workload run back to back in a shuffled order per repetition;
ratios are taken within a repetition.
"""
import argparse, json, os, statistics, subprocess, sys, time, random

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
NGINX_SH = os.path.join(ROOT, "scripts", "nginx.sh")
RUNNER = os.path.join(ROOT, "bench", "python", "runner.py")
PY = sys.executable

ap = argparse.ArgumentParser()
ap.add_argument("--seconds", type=float, default=2.0)
ap.add_argument("--warmup", type=float, default=0.3)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--only", default="W1,W5,W6")
ap.add_argument("--before-src", default="")
ap.add_argument("--out", default="")
args = ap.parse_args()
SRC = {"after": os.path.join(ROOT, "bindings", "python", "src")}
if args.before_src:
    SRC["before"] = os.path.abspath(args.before_src)

info = json.loads(subprocess.run([NGINX_SH, "start", "--json", "--watch", str(os.getpid())],
                                 check=True, capture_output=True, text=True).stdout)
http = info["NGINX_HTTP_URL"]


class Runner:
    def __init__(self, src):
        env = dict(os.environ, PYTHONPATH=src)
        self.p = subprocess.Popen([PY, RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.write('{"op": "quit"}\n')
        self.p.stdin.flush()
        self.p.wait(timeout=30)


# (workload, label, runner, client, conc, path, size)
CELLS = [
    ("W1", "ours", "after", "ours", 1, "", 13),
    ("W1", "ours-before", "before", "ours", 1, "", 13),
    ("W1", "pycurl", "after", "pycurl", 1, "", 13),
    ("W1", "urllib3", "after", "urllib3", 1, "", 13),
    ("W5", "ours-threads", "after", "ours", 64, "", 13),
    ("W5", "ours-threads-before", "before", "ours", 64, "", 13),
    ("W5", "pycurl-threads", "after", "pycurl", 64, "", 13),
    ("W5", "ours-asyncio", "after", "ours-asyncio", 64, "", 13),
    ("W5", "ours-asyncio-before", "before", "ours-asyncio", 64, "", 13),
    ("W5", "aiohttp", "after", "aiohttp", 64, "", 13),
    ("W5", "pycurl-multi", "after", "pycurl-multi", 64, "", 13),
    ("W6", "ours", "after", "ours", 1, "1m.bin", 1 << 20),
    ("W6", "ours-before", "before", "ours", 1, "1m.bin", 1 << 20),
    ("W6", "pycurl", "after", "pycurl", 1, "1m.bin", 1 << 20),
    ("W6", "urllib3", "after", "urllib3", 1, "1m.bin", 1 << 20),
]
only = set(args.only.split(","))
CELLS = [c for c in CELLS if c[2] in SRC]
runners = {k: Runner(v) for k, v in SRC.items()}
results = []
try:
    print(json.dumps(runners["after"].ask({"op": "versions"})), flush=True)
    for rep in range(args.reps):
        for wl in ["W1", "W5", "W6"]:
            if wl not in only:
                continue
            group = [c for c in CELLS if c[0] == wl]
            random.Random(rep * 10 + len(wl)).shuffle(group)
            for wl_, label, rk, client, conc, path, size in group:
                cmd = {"op": "run", "client": client, "conc": conc, "keep_alive": True,
                       "seconds": args.seconds, "warmup": args.warmup,
                       "max_requests": 2_000_000 if size == 13 else 200_000, "expect_len": size,
                       "url": http + path, "ca_file": ""}
                r = runners[rk].ask(cmd)
                r.update(workload=wl, label=label, rep=rep)
                if "fatal" not in r and r["requests"]:
                    r["rps"] = r["requests"] / r["seconds"]
                    r["cpu_us"] = r["cpu_s"] / r["requests"] * 1e6
                    print(f"rep {rep} {wl} {label:22} {r['rps']:9.0f} req/s  {r['cpu_us']:7.1f} cpu-us/req  "
                          f"p50 {r['p50_ms']:.3f} ms  errors {r['errors']}", flush=True)
                else:
                    print(f"rep {rep} {wl} {label}: {r}", flush=True)
                results.append(r)
finally:
    for r in runners.values():
        try:
            r.close()
        except Exception:
            pass
    subprocess.run([NGINX_SH, "stop", info["NGINX_DIR"]], check=False)

if args.out:
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
# Summary: median req/s and cpu-us per label, and ratios within each rep.
print("\nmedians over", args.reps, "reps:")
by = {}
for r in results:
    if "rps" in r:
        by.setdefault((r["workload"], r["label"]), []).append(r)
for (wl, label), rs in sorted(by.items()):
    print(f"{wl} {label:22} {statistics.median(x['rps'] for x in rs):9.0f} req/s  "
          f"{statistics.median(x['cpu_us'] for x in rs):7.1f} cpu-us/req")
RATIOS = [("W1", "ours", "pycurl"), ("W1", "ours", "urllib3"), ("W1", "ours", "ours-before"),
          ("W5", "ours-threads", "pycurl-threads"), ("W5", "ours-threads", "ours-threads-before"),
          ("W5", "ours-asyncio", "aiohttp"), ("W5", "ours-asyncio", "pycurl-multi"),
          ("W5", "ours-asyncio", "ours-asyncio-before"),
          ("W6", "ours", "pycurl"), ("W6", "ours", "urllib3"), ("W6", "ours", "ours-before")]
print("\nratios (median of per-rep ratios, [min..max]):")
for wl, a, b in RATIOS:
    rs = []
    for rep in range(args.reps):
        x = [r["rps"] for r in results if r.get("rep") == rep and r["workload"] == wl and r["label"] == a and "rps" in r]
        y = [r["rps"] for r in results if r.get("rep") == rep and r["workload"] == wl and r["label"] == b and "rps" in r]
        if x and y and y[0]:
            rs.append(x[0] / y[0])
    if rs:
        print(f"{wl} {a} / {b}: {statistics.median(rs):.2f} [{min(rs):.2f}..{max(rs):.2f}]")
