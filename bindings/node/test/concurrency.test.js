'use strict';
// Many requests at once, cancellation through AbortSignal, and 10,000 completions under
// garbage-collection pressure (SPEC §6.30): every promise settled exactly once, no crash.

const test = require('node:test');
const assert = require('node:assert/strict');
const { Agent, AbortError, codes } = require('..');
const { startServer, closedPort } = require('./helpers');

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

test('200 concurrent requests all complete; the event loop stays responsive meanwhile', async () => {
  await srv.reset();
  const agent = new Agent({ keepAlive: true });
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  const t0 = Date.now();
  const res = await Promise.all(Array.from({ length: 200 }, (_, i) => agent.request(`${srv.http}?delay_ms=200&i=${i}`)));
  clearInterval(timer);
  const took = Date.now() - t0;
  assert.equal(res.length, 200);
  assert.ok(res.every((r) => r.statusCode === 200 && r.body.toString() === 'hello, world\n'));
  assert.ok(ticks >= 10, `timers kept firing while 200 requests were in flight (${ticks} ticks in ${took} ms)`);
  const s = agent.stats();
  assert.equal(s.requests, 200);
  assert.equal(s.errors, 0);
  const server = await srv.stats();
  assert.equal(server.requests, 200);
  assert.equal(server.accepted, s.connectionsOpened, 'the agent and the server count the same connections');
  // A second wave reuses the pooled connections instead of opening new ones.
  await Promise.all(Array.from({ length: 200 }, () => agent.request(srv.http)));
  assert.equal((await srv.stats()).accepted, server.accepted);
  agent.destroy();
});

test('AbortController cancels an in-flight request: AbortError, and the connection is dropped', async () => {
  await srv.reset();
  const agent = new Agent();
  const ac = new AbortController();
  const t0 = Date.now();
  const p = agent.request({ url: `${srv.http}?delay_ms=5000`, signal: ac.signal });
  setTimeout(() => ac.abort(), 100);
  await assert.rejects(p, (e) => {
    assert.ok(e instanceof AbortError);
    assert.equal(e.name, 'AbortError');
    assert.equal(e.code, 'ABORT_ERR');
    assert.equal(e.cause, ac.signal.reason);
    return true;
  });
  assert.ok(Date.now() - t0 < 2000, 'settled at once, not after the server delay');
  // The cancelled connection is closed, not pooled (its teardown is asynchronous).
  let s;
  for (let i = 0; i < 100; i++) {
    s = agent.stats();
    if (s.active === 0 && s.idle === 0) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(s.active, 0);
  assert.equal(s.idle, 0, 'a cancelled mid-request connection is not pooled');
  assert.equal(s.connectionsClosed, 1);
  assert.equal((await agent.request(srv.http)).statusCode, 200, 'the agent keeps working');
  agent.destroy();
});

test('an already-aborted signal rejects without sending; a later abort does not touch a finished request', async () => {
  await srv.reset();
  const agent = new Agent();
  const reason = new Error('changed my mind');
  await assert.rejects(agent.request({ url: srv.http, signal: AbortSignal.abort(reason) }), (e) => {
    return e.name === 'AbortError' && e.code === 'ABORT_ERR' && e.cause === reason;
  });
  assert.equal((await srv.stats()).requests, 0, 'nothing was sent');

  const ac = new AbortController();
  const res = await agent.request({ url: srv.http, signal: ac.signal });
  ac.abort(); // after completion: no effect on the pooled connection
  assert.equal(res.statusCode, 200);
  const again = await agent.request(srv.http);
  assert.equal(again.reusedSocket, true, 'the pooled connection survived the late abort');

  // AbortSignal.timeout works too.
  await assert.rejects(agent.request({ url: `${srv.http}?delay_ms=3000`, signal: AbortSignal.timeout(100) }), {
    name: 'AbortError',
  });
  agent.destroy();
});

test('abort of many concurrent requests: each settles once, the others complete', async () => {
  const agent = new Agent();
  const controllers = [];
  const promises = [];
  for (let i = 0; i < 50; i++) {
    const ac = new AbortController();
    controllers.push(ac);
    promises.push(agent.request({ url: `${srv.http}?delay_ms=${i % 2 ? 1000 : 20}`, signal: ac.signal }));
  }
  setTimeout(() => controllers.forEach((ac, i) => i % 2 && ac.abort()), 100);
  const results = await Promise.allSettled(promises);
  results.forEach((r, i) => {
    if (i % 2) assert.equal(r.status === 'rejected' && r.reason.name, 'AbortError', `request ${i}`);
    else assert.equal(r.status === 'fulfilled' && r.value.statusCode, 200, `request ${i}`);
  });
  agent.destroy();
});

test('10,000 requests under GC pressure: every promise settles exactly once, no crash', { timeout: 120_000 }, async () => {
  assert.equal(typeof global.gc, 'function', 'run with --expose-gc');
  const refused = `http://127.0.0.1:${await closedPort()}/`;
  const total = 10_000;
  const settled = new Uint8Array(total);
  let fulfilled = 0;
  let rejected = 0;
  let aborted = 0;
  let agent = new Agent({ keepAlive: true, maxSockets: 16 });
  const batch = 100;
  for (let start = 0; start < total; start += batch) {
    // Every 1,000 requests: drop the agent without destroy() (its finalizer frees it).
    if (start > 0 && start % 1000 === 0) agent = new Agent({ keepAlive: start % 2000 === 0, maxSockets: 16 });
    const wave = [];
    for (let i = start; i < start + batch; i++) {
      let p;
      if (i % 50 === 7) {
        p = agent.request(refused); // fails
      } else if (i % 50 === 13) {
        const ac = new AbortController();
        p = agent.request({ url: `${srv.http}?delay_ms=5000`, signal: ac.signal });
        setImmediate(() => ac.abort());
      } else {
        p = agent.request({ method: i % 3 ? 'GET' : 'POST', url: `${srv.http}?bytes=${i % 200}`, body: i % 3 ? undefined : 'x'.repeat(i % 100) });
      }
      wave.push(
        p.then(
          (res) => {
            settled[i]++;
            fulfilled++;
            assert.notEqual(i % 50, 13, `request ${i} should have been aborted`);
            assert.equal(res.body.length, i % 200, `request ${i}: ${JSON.stringify(res.headers)} reused=${res.reusedSocket}`);
          },
          (e) => {
            settled[i]++;
            rejected++;
            if (i % 50 === 13) {
              assert.equal(e.name, 'AbortError');
              aborted++;
            } else {
              assert.equal(e.code, 'ECONNREFUSED', `request ${i}: ${e.message}`);
            }
          },
        ),
      );
    }
    await Promise.all(wave);
    if ((start / batch) % 3 === 2) global.gc(); // every 300 requests
  }
  global.gc();
  assert.equal(fulfilled + rejected, total);
  assert.ok(settled.every((n) => n === 1), 'each promise settled exactly once');
  assert.equal(rejected, 200 + aborted);
  assert.ok(aborted > 0);
  agent.destroy();
});

test('a request that failed to start still rejects its promise (and only once)', async () => {
  const agent = new Agent();
  const results = await Promise.allSettled([agent.request('http://[::1:bad/'), agent.request('http://127.0.0.1:99999/')]);
  for (const r of results) {
    assert.equal(r.status, 'rejected');
    assert.equal(r.reason.agentCode, codes.INVALID_URL);
  }
  agent.destroy();
});

// Regression: a freed slot handed to a queued request that is being cancelled at the same
// moment used to be lost (src/pool.rs WaitGuard), and every later request then waited forever.
test(
  'library: cancelling an in-flight and a queued request together never leaks a pool slot',
  async () => {
    let leaks = 0;
    for (let k = 0; k < 40; k++) {
      const agent = new Agent({ maxSockets: 1 });
      const a = new AbortController();
      const b = new AbortController();
      const pa = agent.request({ url: `${srv.http}?delay_ms=2000`, signal: a.signal }).catch(() => {});
      const pb = agent.request({ url: `${srv.http}?delay_ms=2000`, signal: b.signal }).catch(() => {});
      await new Promise((r) => setTimeout(r, 30));
      a.abort();
      b.abort();
      await Promise.all([pa, pb]);
      await new Promise((r) => setTimeout(r, 30));
      if (agent.stats().active > 0) leaks++;
      agent.destroy();
    }
    assert.equal(leaks, 0, `${leaks} of 40 agents kept a slot with nothing in flight (maxSockets: 1 then blocks for ever)`);
  },
);

test('a cancelled request counts in stats().requests and stats().errors', async () => {
  const agent = new Agent();
  const ac = new AbortController();
  const p = agent.request({ url: `${srv.http}?delay_ms=2000`, signal: ac.signal });
  setTimeout(() => ac.abort(), 50);
  await assert.rejects(p, { name: 'AbortError' });
  const s = agent.stats();
  agent.destroy();
  assert.equal(s.requests, 1);
  assert.equal(s.errors, 1);
});
