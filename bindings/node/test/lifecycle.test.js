'use strict';
// Lifetimes: worker threads, process exit with idle pooled connections, finalizers.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { Worker } = require('node:worker_threads');
const { Agent } = require('..');
const { startServer, runNode } = require('./helpers');

const fixture = (name) => path.join(__dirname, 'fixtures', name);

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

function runWorker(workerData) {
  return new Promise((resolve, reject) => {
    const w = new Worker(fixture('worker.js'), { workerData });
    const messages = [];
    w.on('message', (m) => messages.push(m));
    w.on('error', reject);
    w.on('exit', (code) => resolve({ code, messages, worker: w }));
  });
}

test('a worker thread loads the addon, makes requests and exits (idle connection left open)', async () => {
  await srv.reset();
  const t0 = Date.now();
  const { code, messages } = await runWorker({ url: srv.http });
  assert.equal(code, 0);
  assert.deepEqual(messages, [{ status: 200, reused: true, body: 'hello, world\n' }]);
  assert.ok(Date.now() - t0 < 5000, 'the worker ended on its own');
  // The worker's environment teardown freed its agent: the server sees the close.
  const deadline = Date.now() + 3000;
  let s;
  do {
    s = await srv.stats();
    if (s.open === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  } while (Date.now() < deadline);
  assert.equal(s.accepted, 1);
  assert.equal(s.open, 0, 'the connection was closed when the worker ended');
});

test('several workers at once, one destroying its agent, the main thread still working', async () => {
  const runs = await Promise.all([
    runWorker({ url: srv.http }),
    runWorker({ url: srv.http, destroy: true }),
    runWorker({ url: srv.http }),
  ]);
  for (const r of runs) {
    assert.equal(r.code, 0);
    assert.equal(r.messages[0].status, 200);
  }
  const agent = new Agent();
  assert.equal((await agent.request(srv.http)).statusCode, 200);
  agent.destroy();
});

test('terminating a worker with a request in flight: no crash, its promise never reaches a dead env', async () => {
  const w = new Worker(fixture('worker.js'), {
    workerData: { url: srv.http, leaveInFlight: true, slowUrl: `${srv.http}?delay_ms=1000` },
  });
  const first = await new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  assert.equal(first.status, 200);
  let late = false;
  w.on('message', (m) => {
    if (m.late) late = true;
  });
  const code = await w.terminate();
  assert.equal(code, 1);
  // Outlive the slow response: its completion arrives after the env is gone.
  await new Promise((r) => setTimeout(r, 1300));
  assert.equal(late, false);
  const agent = new Agent();
  assert.equal((await agent.request(srv.http)).statusCode, 200, 'the process is healthy');
  agent.destroy();
});

test('workers terminated at various moments of their requests, repeatedly', async () => {
  for (let i = 0; i < 8; i++) {
    const w = new Worker(fixture('worker.js'), {
      workerData: { url: srv.http, leaveInFlight: true, slowUrl: `${srv.http}?delay_ms=${(i % 4) * 20}` },
    });
    await new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    if (i % 2) await new Promise((r) => setTimeout(r, i * 5));
    await w.terminate();
  }
  const agent = new Agent();
  assert.equal((await agent.request(srv.http)).statusCode, 200);
  agent.destroy();
});

test('only worker threads load the addon: it stays loaded after the last one ends', async () => {
  const r = await runNode([fixture('worker_only.js'), srv.http], { timeoutMs: 20_000 });
  assert.equal(r.signal, null, `the process died: ${r.stderr}`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'survived');
});

test('the process exits promptly with idle pooled connections and no destroy()', async () => {
  const r = await runNode([fixture('idle_exit.js'), srv.http], { timeoutMs: 10_000 });
  assert.equal(r.signal, null, `killed: ${r.stderr}`);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { status: 200, reused: true, idle: 1 });
  assert.ok(r.ms < 3000, `exited after ${Math.round(r.ms)} ms`);
});

test('a pending request keeps the process alive until it settles', async () => {
  const r = await runNode([fixture('idle_exit.js'), srv.http, `${srv.http}?delay_ms=700`], { timeoutMs: 10_000 });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { status: 200, reused: true, idle: 1, delayed: 200 });
  assert.ok(r.ms >= 700, 'waited for the delayed response');
  assert.ok(r.ms < 4000, `exited after ${Math.round(r.ms)} ms`);
});

test('an agent dropped without destroy() is freed by its finalizer: the server sees the close', async () => {
  assert.equal(typeof global.gc, 'function', 'run with --expose-gc');
  await srv.reset();
  await (async () => {
    const agent = new Agent({ keepAlive: true, timeout: 60_000 });
    await agent.request(srv.http);
  })();
  const deadline = Date.now() + 5000;
  let s;
  do {
    global.gc();
    await new Promise((r) => setTimeout(r, 50));
    s = await srv.stats();
    if (s.open === 0) break;
  } while (Date.now() < deadline);
  assert.equal(s.accepted, 1);
  assert.equal(s.open, 0, 'the idle connection was closed after the agent was collected');
  assert.equal(s.client_closed, 1);
});
