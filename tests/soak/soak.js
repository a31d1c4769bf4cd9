'use strict';
// Soak through the Node binding: many requests, RSS sampled, fails above +10 % after warm-up.
//
//   node --expose-gc --min-semi-space-size=16 --max-semi-space-size=16 soak.js REQUESTS SAMPLE_EVERY
//   (KEEPALIVE_TESTSERVER: path of the test server; KEEPALIVE_NODE_PKG: the binding's directory)
//
// The young generation is fixed in size so that V8 growing its semi-spaces under a high
// allocation rate is not mistaken for a leak (as bindings/node/test/fixtures/rss_child.js).
// The mix per 100 requests mirrors tests/soak/soak.c, 8 requests in flight at a time: small
// GETs with headers, POSTs with a 1 KiB body echoed back, a 64 KiB body, one refused
// connection (error path) and one Connection: close response. The baseline is the first
// sample after a quarter of the requests; the drift is the largest later sample against it.
// Prints one line per sample and a summary:
//   SOAK | Node | <requests> | <failures> | <rss warm KiB> | <rss max KiB> | <rss end KiB> | <drift %> | <req/s> |

const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..');
const PKG = process.env.KEEPALIVE_NODE_PKG || path.join(ROOT, 'bindings', 'node');
const TESTSERVER = process.env.KEEPALIVE_TESTSERVER || path.join(ROOT, 'target', 'release', 'keepalive-testserver');
const { Agent } = require(PKG);

const n = Number(process.argv[2] || 200000);
const every = Number(process.argv[3] || 10000);
const warmUntil = Math.max(every, Math.floor(n / 4));
const LANES = 8;

async function startServer() {
  const child = spawn(TESTSERVER, [], { stdio: ['pipe', 'pipe', 'inherit'] });
  const rl = readline.createInterface({ input: child.stdout });
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('test server did not start within 15 s')), 15000);
    rl.once('line', (l) => {
      clearTimeout(timer);
      resolve(l);
    });
  });
  rl.close();
  return { child, info: JSON.parse(line) };
}

/** A port where connects are refused: a listener opened and closed again. */
async function refusedPort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

async function settle() {
  for (let i = 0; i < 3; i++) {
    global.gc();
    await new Promise((r) => setImmediate(r));
  }
}

(async () => {
  const { child, info } = await startServer();
  const base = `http://127.0.0.1:${info.http_port}/`;
  const refused = `http://127.0.0.1:${await refusedPort()}/`;
  const headers = { 'x-soak': '1', accept: '*/*' };
  const body = Buffer.alloc(1024, 'x');
  const agent = new Agent({ keepAlive: true });
  let failures = 0;
  let expectedErrors = 0;
  let warm = -1;
  let peak = 0;
  let end = 0;

  async function one(i) {
    const kind = i % 100;
    try {
      if (kind === 7) {
        expectedErrors++;
        try {
          await agent.request({ url: refused, timeout: 2000 });
          failures++;
        } catch (e) {
          if (e.code !== 'ECONNREFUSED') throw e;
        }
      } else if (kind % 10 === 0) {
        const r = await agent.request({ method: 'POST', url: `${base}?echo=1`, headers, body, timeout: 5000 });
        if (r.statusCode !== 200 || !r.body.includes('"body_len":1024')) failures++;
      } else if (kind === 3) {
        const r = await agent.request({ url: `${base}?bytes=65536`, headers, timeout: 5000 });
        if (r.statusCode !== 200 || r.body.length !== 65536) failures++;
      } else if (kind === 5) {
        const r = await agent.request({ url: `${base}?close=1`, timeout: 5000 });
        if (r.statusCode !== 200) failures++;
      } else {
        const r = await agent.request({ url: base, headers, timeout: 5000 });
        if (r.statusCode !== 200 || r.body.toString() !== 'hello, world\n') failures++;
      }
    } catch (e) {
      if (failures < 5) console.error(`soak.js: request ${i} failed: ${e.code} ${e.message}`);
      failures++;
    }
  }

  const t0 = Date.now();
  for (let done = 0; done < n; ) {
    const chunk = Math.min(every, n - done);
    let next = done;
    const stop = done + chunk;
    await Promise.all(
      Array.from({ length: LANES }, async () => {
        while (next < stop) await one(next++);
      }),
    );
    done = stop;
    await settle();
    const rss = Math.round(process.memoryUsage().rss / 1024);
    console.log(`sample | Node | ${done} requests | rss ${rss} KiB`);
    if (warm < 0) {
      if (done >= warmUntil) warm = rss;
    } else if (rss > peak) {
      peak = rss;
    }
    end = rss;
  }
  const secs = (Date.now() - t0) / 1000;
  const st = agent.stats();
  agent.destroy();
  child.stdin.end();
  const statsOk = st.requests === n && st.errors === failures + expectedErrors;
  if (!statsOk) console.error(`soak.js: stats ${JSON.stringify(st)}, want ${n} requests, ${failures + expectedErrors} errors`);
  if (peak === 0) peak = end;
  const drift = warm > 0 ? (100 * (peak - warm)) / warm : 0;
  const sign = drift >= 0 ? '+' : '';
  console.log(`SOAK | Node | ${n} | ${failures} | ${warm} | ${peak} | ${end} | ${sign}${drift.toFixed(1)}% | ${Math.round(n / secs)} |`);
  const ok = failures === 0 && statsOk && warm > 0 && peak <= warm * 1.1;
  if (!ok) console.error('soak.js: FAILED');
  process.exitCode = ok ? 0 : 1;
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
