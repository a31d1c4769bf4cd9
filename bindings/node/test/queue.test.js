'use strict';
// The event queue: requests run on the thread that loaded the addon, driven by its own
// libuv loop; many in flight at once; each environment (main thread, worker) with its own
// queue; nothing in flight, nothing keeping the process alive.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const { Agent } = require('..');
const { startServer, closedPort, runNode } = require('./helpers');

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

test('10,000 requests in flight at once, with GC forced while they run: each settles once, stats exact', { timeout: 120_000 }, async () => {
  assert.equal(typeof global.gc, 'function', 'run with --expose-gc');
  await srv.reset();
  const refused = `http://127.0.0.1:${await closedPort()}/`;
  const total = 10_000;
  const agent = new Agent({ keepAlive: true, maxSockets: 32 });
  const settled = new Uint8Array(total);
  let fulfilled = 0;
  let rejected = 0;
  let wrong = 0;
  // Collections while requests are in flight: from a timer, and from inside settlements.
  const collector = setInterval(() => global.gc(), 2);
  const all = [];
  for (let i = 0; i < total; i++) {
    let p;
    if (i % 10 === 3) {
      p = agent.request(refused);
    } else if (i % 10 === 5) {
      p = agent.request({ method: 'POST', url: `${srv.http}?echo=1`, body: Buffer.alloc(i % 700, 1) });
    } else {
      p = agent.request(`${srv.http}?bytes=${i % 300}`);
    }
    all.push(
      p.then(
        (res) => {
          settled[i]++;
          fulfilled++;
          const want = i % 10 === 5 ? JSON.parse(res.body).body_len : res.body.length;
          if (res.statusCode !== 200 || want !== (i % 10 === 5 ? i % 700 : i % 300) || i % 10 === 3) wrong++;
          if (i % 1000 === 0) global.gc();
        },
        (e) => {
          settled[i]++;
          rejected++;
          if (i % 10 !== 3 || e.code !== 'ECONNREFUSED') wrong++;
        },
      ),
    );
  }
  assert.equal(agent.stats().requests, 0, 'nothing runs inside request(): the queue is drained by the event loop');
  try {
    await Promise.all(all);
  } finally {
    clearInterval(collector);
  }
  global.gc();
  assert.ok(settled.every((n) => n === 1), 'each promise settled exactly once');
  assert.equal(wrong, 0);
  assert.equal(fulfilled, 9000);
  assert.equal(rejected, 1000);
  const s = agent.stats();
  assert.equal(s.requests, total);
  assert.equal(s.errors, 1000);
  assert.equal(s.active, 0);
  assert.equal(s.queued, 0);
  assert.ok(s.connectionsOpened <= 32, `at most maxSockets connections (${s.connectionsOpened})`);
  const origin = agent.stats(srv.http);
  assert.equal(origin.requests, 9000);
  assert.equal(origin.errors, 0);
  assert.equal(origin.reusedRequests, 9000 - origin.connectionsOpened);
  assert.equal((await srv.stats()).requests, 9000);
  agent.destroy();
});

// A worker whose requests complete only if its own thread drives them. It counts completed
// requests into shared memory; `block` (if given) makes it spin, without yielding to its
// event loop, until the other side has counted `target` of its own.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { Agent } = require(workerData.pkg);
const counts = new Int32Array(workerData.shared);
(async () => {
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  let bad = 0;
  const lanes = Array.from({ length: 8 }, async (_, lane) => {
    for (let i = lane; i < workerData.n; i += 8) {
      const res = await agent.request(workerData.url + '?bytes=' + (i % 50));
      if (res.statusCode !== 200 || res.body.length !== i % 50) bad++;
      Atomics.add(counts, 1, 1);
    }
  });
  await Promise.all(lanes);
  if (workerData.block) {
    const deadline = Date.now() + 20000;
    while (Atomics.load(counts, 0) < workerData.n && Date.now() < deadline) {}
  }
  const s = agent.stats();
  parentPort.postMessage({ bad, requests: s.requests, errors: s.errors, sawMain: Atomics.load(counts, 0) });
  agent.destroy();
})();
`;

function startWorker(workerData) {
  const w = new Worker(WORKER, { eval: true, workerData: { pkg: path.resolve(__dirname, '..'), ...workerData } });
  const done = new Promise((resolve, reject) => {
    let msg = null;
    w.on('message', (m) => (msg = m));
    w.on('error', reject);
    w.on('exit', (code) => resolve({ code, msg }));
  });
  return done;
}

test('a worker thread runs its own queue: its requests complete while the main thread is blocked, and the other way round', { timeout: 60_000 }, async () => {
  const n = 300;
  // [0]: requests completed by the main thread, [1]: by the worker.
  const shared = new SharedArrayBuffer(8);
  const counts = new Int32Array(shared);
  const worker = startWorker({ url: srv.http, n, shared, block: true });

  // The main thread spins (its event loop stopped) until the worker has completed all of its
  // requests: only the worker's own loop can be driving them.
  const deadline = Date.now() + 20_000;
  while (Atomics.load(counts, 1) < n && Date.now() < deadline) {}
  assert.equal(Atomics.load(counts, 1), n, 'the worker completed its requests with the main thread blocked');

  // Now the worker spins until the main thread has completed as many of its own.
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  let bad = 0;
  await Promise.all(
    Array.from({ length: 8 }, async (_, lane) => {
      for (let i = lane; i < n; i += 8) {
        const res = await agent.request(`${srv.http}?bytes=${i % 40}`);
        if (res.statusCode !== 200 || res.body.length !== i % 40) bad++;
        Atomics.add(counts, 0, 1);
      }
    }),
  );
  assert.equal(bad, 0);
  const { code, msg } = await worker;
  assert.equal(code, 0);
  assert.deepEqual(msg, { bad: 0, requests: n, errors: 0, sawMain: n });
  assert.equal(agent.stats().requests, n);
  agent.destroy();
});

test('main thread and several workers at once, each with its own queue, all requests correct', { timeout: 60_000 }, async () => {
  const n = 200;
  const workers = Array.from({ length: 3 }, () => startWorker({ url: srv.http, n, shared: new SharedArrayBuffer(8) }));
  const agent = new Agent({ maxSockets: 4 });
  const mine = await Promise.all(Array.from({ length: n }, (_, i) => agent.request(`${srv.http}?bytes=${i % 30}`)));
  assert.ok(mine.every((r, i) => r.statusCode === 200 && r.body.length === i % 30));
  for (const { code, msg } of await Promise.all(workers)) {
    assert.equal(code, 0);
    assert.equal(msg.bad, 0);
    assert.equal(msg.requests, n);
  }
  agent.destroy();
});

test('the process exits on its own once nothing is in flight: after whole, streamed, aborted and uploaded requests', { timeout: 60_000 }, async () => {
  const r = await runNode([path.join(__dirname, 'fixtures', 'queue_exit.js'), srv.http], { timeoutMs: 30_000 });
  assert.equal(r.signal, null, `killed: it did not exit by itself (${r.stderr})`);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(out, { whole: 200, streamed: 1000, partial: true, aborted: 'AbortError', uploaded: 5000, idle: out.idle });
  assert.ok(out.idle >= 1, 'idle pooled connections were left open');
});

test('the loop is kept alive by a request in flight, not by an idle agent', { timeout: 60_000 }, async () => {
  // A request of 300 ms started from a timer after everything else is done: the process
  // must wait for it, then end.
  const code = `
    const { Agent } = require(${JSON.stringify(path.resolve(__dirname, '..'))});
    const agent = new Agent();
    agent.request(process.argv[1]).then(() => {
      setTimeout(() => agent.request(process.argv[1] + '?delay_ms=300').then((r) => console.log('late', r.statusCode)), 10);
    });
  `;
  const r = await runNode(['-e', code, srv.http], { timeoutMs: 30_000 });
  assert.equal(r.signal, null, 'it did not exit by itself');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'late 200');
});
