'use strict';
// agent.preconnect(url, n): connections opened in the background (TLS included), pooled
// idle, then used by the first requests without opening more.

const test = require('node:test');
const assert = require('node:assert/strict');
const { Agent } = require('..');
const { startServer } = require('./helpers');

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

async function waitFor(pred, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

for (const scheme of ['http', 'https']) {
  test(`${scheme}: preconnect(url, 4) warms 4 connections that 4 concurrent requests then use`, async () => {
    await srv.reset();
    const agent = new Agent({ ca: srv.ca });
    try {
      const url = scheme === 'http' ? srv.http : srv.https;
      assert.equal(agent.preconnect(url, 4), undefined, 'returns at once');
      await waitFor(() => agent.stats().idle === 4, '4 idle connections');
      let s = await srv.stats();
      assert.equal(s.accepted, 4);
      assert.equal(s.requests, 0);
      assert.equal(agent.stats().connectionsOpened, 4);

      agent.preconnect(url, 4); // already there: nothing more
      const results = await Promise.all(Array.from({ length: 4 }, () => agent.request(url)));
      assert.ok(results.every((r) => r.statusCode === 200));
      assert.equal(new Set(results.map((r) => r.headers['x-remote-port'])).size, 4);
      s = await srv.stats();
      assert.equal(s.accepted, 4, 'no connection opened by the requests');
      assert.equal(s.requests, 4);
      assert.equal(agent.stats().connectionsOpened, 4);
    } finally {
      agent.destroy();
    }
  });
}

test('preconnect: nothing with keep-alive off or a count of 0; argument errors', async () => {
  await srv.reset();
  const off = new Agent({ keepAlive: false });
  const on = new Agent();
  try {
    off.preconnect(srv.http, 4);
    on.preconnect(new URL(srv.http), 0);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await srv.stats()).accepted, 0);
    assert.equal(off.stats().connectionsOpened, 0);
    assert.throws(() => on.preconnect(42), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => on.preconnect(srv.http, -1), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => on.preconnect(srv.http, 1.5), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => on.preconnect('not a url', 1), (e) => e.agentCodeName === 'AGENT_CODE_INVALID_URL');
  } finally {
    off.destroy();
    on.destroy();
  }
  assert.throws(() => on.preconnect(srv.http, 1), { code: 'ERR_AGENT_DESTROYED' });
});
