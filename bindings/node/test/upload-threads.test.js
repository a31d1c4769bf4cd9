'use strict';
// A streamed request body waiting for JS holds none of the engine's threads: the engine's
// read is left pending in the addon and woken when JS pushes, so slow uploads do not delay
// other requests, and uploads fed by this process's own downloads complete. Pinned to the
// default of 2 engine threads (read once, when the library starts), fewer than the uploads.
process.env.KEEPALIVE_AGENT_WORKER_THREADS = '2';

const test = require('node:test');
const assert = require('node:assert/strict');
const { Readable } = require('node:stream');
const { setTimeout: sleep } = require('node:timers/promises');
const { Agent } = require('..');
const { startServer } = require('./helpers');

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

/** FNV-1a 64 of `buf`, as the test server's `body_fnv` (16 hex digits). */
function fnv1a(buf) {
  let h = 0xcbf29ce484222325n;
  for (const b of buf) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return h.toString(16).padStart(16, '0');
}

/** The test server's body pattern: byte i is 'a' + i % 26. */
function pattern(n) {
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = 97 + (i % 26);
  return out;
}

const UPLOADS = 4;

test('slow uploads beside a GET: the GET is not delayed (2 engine threads, 4 uploads waiting for JS)', async (t) => {
  const agent = new Agent();
  const INTERVAL = 200;
  const CHUNKS = 10; // 2 s per upload: a GET behind them would wait that long
  const chunk = Buffer.alloc(1000, 0x78);
  const uploads = [];
  for (let u = 0; u < UPLOADS; u++) {
    let sent = 0;
    let timer = null;
    const body = new Readable({
      read() {
        if (timer !== null) return;
        timer = setTimeout(() => {
          timer = null;
          this.push(sent++ < CHUNKS ? chunk : null);
        }, INTERVAL);
      },
    });
    uploads.push(agent.request({ method: 'PUT', url: `${srv.http}?echo=1`, body }));
  }
  // Every upload has sent its head and waits for its first chunk.
  await sleep(INTERVAL / 2);
  const latencies = [];
  for (let i = 0; i < 5; i++) {
    const t0 = process.hrtime.bigint();
    const res = await agent.request({ url: `${srv.http}?bytes=10` });
    latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
    assert.equal(res.statusCode, 200);
    assert.equal(res.body.length, 10);
    await sleep(INTERVAL / 3);
  }
  const worst = Math.max(...latencies);
  t.diagnostic(`GET beside ${UPLOADS} pending uploads: ${latencies.map((ms) => ms.toFixed(1)).join(', ')} ms`);
  assert.ok(worst < 1000, `a GET took ${worst.toFixed(0)} ms beside pending uploads`);
  for (const res of await Promise.all(uploads)) {
    assert.equal(JSON.parse(res.body).body_len, CHUNKS * chunk.length);
  }
  assert.equal(agent.stats().errors, 0);
  agent.destroy();
});

test('4 agent.stream() downloads piped into 4 uploads at once complete (2 engine threads)', { timeout: 30_000 }, async () => {
  const agent = new Agent();
  const N = 300_000;
  // Slow downloads: each upload's source is empty while its download waits for the server.
  const downloads = await Promise.all(
    Array.from({ length: UPLOADS }, () => agent.stream({ url: `${srv.http}?bytes=${N}&chunked=1&chunks=6&chunk_delay_ms=50` })),
  );
  const t0 = Date.now();
  const echoes = await Promise.all(
    downloads.map((d) => agent.request({ method: 'PUT', url: `${srv.http}?echo=1`, body: d.body, timeout: 20_000 })),
  );
  const expected = fnv1a(pattern(N));
  for (const res of echoes) {
    const echo = JSON.parse(res.body);
    assert.equal(echo.body_len, N);
    assert.equal(echo.body_fnv, expected);
  }
  assert.ok(Date.now() - t0 < 10_000);
  assert.equal(agent.stats().errors, 0);
  agent.destroy();
});
