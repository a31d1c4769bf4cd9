'use strict';
// The engine's events on diagnostics_channel: the exact sequence for a new connection, a
// reused one, a stale one retried, a TLS failure; header redaction; no callback installed
// when nobody listens; worker teardown with events in flight; an idle agent with events on
// does not keep the process alive.

const test = require('node:test');
const assert = require('node:assert/strict');
const dc = require('node:diagnostics_channel');
const { Agent, channels, codes } = require('..');
const { startServer, runNode, cleanEnv, PKG } = require('./helpers');

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

// Subscribes to every channel; returns the messages of `agent` (in publishing order, each
// with the channel it came on) and an unsubscribe function.
function record(agentRef) {
  const seen = [];
  const subs = Object.values(channels).map((name) => {
    const fn = (m) => {
      if (agentRef.agent === undefined || m.agent === agentRef.agent) seen.push({ ...m, channel: name });
    };
    dc.subscribe(name, fn);
    return () => dc.unsubscribe(name, fn);
  });
  return { seen, stop: () => subs.forEach((u) => u()) };
}

async function waitFor(pred, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const brief = (m) => [m.kind, m.connection, m.reused];
const origin = () => srv.http.replace(/\/$/, '');

test('a new connection, then a reused one: the exact sequences, with their fields', async () => {
  const ref = {};
  const rec = record(ref);
  const agent = (ref.agent = new Agent());
  try {
    assert.equal(agent.eventsEnabled, true, 'a subscriber at creation installs the callback');
    await agent.request(srv.http);
    await waitFor(() => rec.seen.some((m) => m.kind === 'response_head'), 'the response head');
    const [start, done, sent, head] = rec.seen;
    const id = start.connection;
    assert.ok(id > 0);
    assert.deepEqual(rec.seen.map(brief), [
      ['connect_start', id, false],
      ['connect_done', id, false],
      ['request_sent', id, false],
      ['response_head', id, false],
    ]);
    assert.deepEqual(
      rec.seen.map((m) => m.channel),
      [channels.connectStart, channels.connectDone, channels.requestSent, channels.responseHead],
    );
    const port = new URL(srv.http).port;
    assert.equal(start.origin, origin());
    assert.equal(start.address, `127.0.0.1:${port}`);
    assert.equal(start.family, 4);
    assert.equal(done.code, 0);
    assert.equal(done.codeName, null);
    assert.equal(sent.detail, 'GET / HTTP/1.1');
    assert.equal(sent.address, null);
    assert.equal(head.status, 200);
    assert.equal(head.version, '1.1');
    assert.equal(head.headers, null, 'no headers without eventHeaders');
    assert.equal(head.agent, agent);

    rec.seen.length = 0;
    const res = await agent.request(srv.http);
    assert.equal(res.reusedSocket, true);
    await waitFor(() => rec.seen.some((m) => m.kind === 'response_head'), 'the second response head');
    assert.deepEqual(rec.seen.map(brief), [
      ['request_sent', id, true],
      ['response_head', id, true],
    ]);
  } finally {
    rec.stop();
    agent.destroy();
  }
});

test('a stale pooled connection: sent, retry, a new connection, and the old one closed', async () => {
  const ref = {};
  const rec = record(ref);
  const agent = (ref.agent = new Agent());
  try {
    await agent.request(srv.http);
    await waitFor(() => rec.seen.some((m) => m.kind === 'response_head'), 'the warm-up');
    const first = rec.seen[0].connection;
    rec.seen.length = 0;
    const res = await agent.request(`${srv.http}?rst_if_reused=1`);
    assert.equal(res.statusCode, 200);
    assert.equal(res.reusedSocket, false);
    const open = () => rec.seen.filter((m) => m.kind !== 'connection_closed');
    await waitFor(() => open().some((m) => m.kind === 'response_head'), 'the retried response head');
    const retry = open().find((m) => m.kind === 'retry');
    const second = open().find((m) => m.kind === 'connect_start').connection;
    assert.notEqual(second, first);
    assert.deepEqual(open().map(brief), [
      ['request_sent', first, true],
      ['retry', first, false],
      ['connect_start', second, false],
      ['connect_done', second, false],
      ['request_sent', second, false],
      ['response_head', second, false],
    ]);
    assert.notEqual(retry.code, 0, 'the retry carries the failure that caused it');
    assert.match(retry.codeName, /^AGENT_CODE_/);
    assert.equal(retry.channel, channels.retry);
    await waitFor(
      () => rec.seen.some((m) => m.kind === 'connection_closed' && m.connection === first),
      'the stale connection closed',
    );
    const closed = rec.seen.find((m) => m.kind === 'connection_closed' && m.connection === first);
    assert.equal(closed.detail, 'a request on it failed');
    assert.equal(closed.channel, channels.connectionClosed);
  } finally {
    rec.stop();
    agent.destroy();
  }
});

test('a TLS failure: connect start, connect done, then tls with the error code', async () => {
  const ref = {};
  const rec = record(ref);
  const agent = (ref.agent = new Agent({ ca: srv.ca }));
  try {
    await assert.rejects(agent.request(srv.wrongHost), (e) => e.agentCode === codes.TLS);
    await waitFor(() => rec.seen.some((m) => m.kind === 'tls_done'), 'the TLS event');
    const id = rec.seen[0].connection;
    assert.deepEqual(
      rec.seen.filter((m) => m.kind !== 'connection_closed').map((m) => [m.kind, m.connection, m.code]),
      [
        ['connect_start', id, 0],
        ['connect_done', id, 0],
        ['tls_done', id, codes.TLS],
      ],
    );
    const tls = rec.seen.find((m) => m.kind === 'tls_done');
    assert.equal(tls.codeName, 'AGENT_CODE_TLS');
    assert.equal(tls.channel, channels.tls);
    assert.equal(tls.origin, srv.wrongHost.replace(/\/$/, ''));
  } finally {
    rec.stop();
    agent.destroy();
  }
});

test('eventHeaders: header lines with credentials redacted; no secret ever appears', async () => {
  const ref = {};
  const rec = record(ref);
  const withHeaders = (ref.agent = new Agent({ eventHeaders: true }));
  const secrets = { authorization: 'Bearer s3cret-token', cookie: 'sid=s3cret-cookie', 'x-plain': 'visible' };
  try {
    await withHeaders.request({ url: srv.http, headers: secrets });
    await waitFor(() => rec.seen.some((m) => m.kind === 'response_head'), 'the response head');
    const sent = rec.seen.find((m) => m.kind === 'request_sent');
    assert.match(sent.headers, /^authorization: \[redacted\]\r$/im);
    assert.match(sent.headers, /^cookie: \[redacted\]\r$/im);
    assert.match(sent.headers, /^x-plain: visible\r$/im);
    assert.match(rec.seen.find((m) => m.kind === 'response_head').headers, /^content-length: \d+\r$/im);
    assert.doesNotMatch(JSON.stringify(rec.seen.map(({ agent, ...m }) => m)), /s3cret/);
  } finally {
    rec.stop();
    withHeaders.destroy();
  }
});

test('no subscriber and no events option: no callback is installed; events: true / false decide', async () => {
  for (const name of Object.values(channels)) assert.equal(dc.channel(name).hasSubscribers, false, name);
  const quiet = new Agent();
  assert.equal(quiet.eventsEnabled, false);
  await quiet.request(srv.http); // works without it
  const forced = new Agent({ events: true });
  assert.equal(forced.eventsEnabled, true);
  await forced.request(srv.http); // published to nobody
  const fn = () => {};
  dc.subscribe(channels.tls, fn);
  try {
    assert.equal(new Agent({ events: false }).eventsEnabled, false, 'events: false wins over a subscriber');
    assert.equal(new Agent().eventsEnabled, true, 'one subscribed channel is enough');
  } finally {
    dc.unsubscribe(channels.tls, fn);
  }
  assert.throws(() => new Agent({ events: 'yes' }), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.throws(() => new Agent({ eventHeaders: 1 }), { code: 'ERR_INVALID_ARG_TYPE' });
  quiet.destroy();
  forced.destroy();
});

test('a worker ends while its agents publish: no crash, and the main thread goes on', async () => {
  const { Worker } = require('node:worker_threads');
  const source = `
    const dc = require('node:diagnostics_channel');
    const { parentPort, workerData } = require('node:worker_threads');
    const { Agent, channels } = require(workerData.pkg);
    let n = 0;
    for (const name of Object.values(channels)) dc.subscribe(name, () => n++);
    const agent = new Agent({ maxSockets: 4 });
    (async () => {
      await Promise.all(Array.from({ length: 8 }, () => agent.request(workerData.url)));
      parentPort.postMessage(n);
      for (let i = 0; i < 50; i++) agent.request(workerData.url).catch(() => {});
      agent.preconnect(workerData.url, 4);
    })();`;
  for (let round = 0; round < 3; round++) {
    const w = new Worker(source, { eval: true, workerData: { pkg: PKG, url: srv.http } });
    const n = await new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    assert.ok(n >= 8 * 2, `the worker saw its events (${n})`);
    await w.terminate();
  }
  const agent = new Agent({ events: true });
  assert.equal((await agent.request(srv.http)).statusCode, 200);
  agent.destroy();
});

test('an agent with events on and idle pooled connections does not keep the process alive', async () => {
  const script = `
    const dc = require('node:diagnostics_channel');
    const { Agent, channels } = require(${JSON.stringify(PKG)});
    let n = 0;
    dc.subscribe(channels.connectionClosed, () => n++);
    dc.subscribe(channels.responseHead, () => n++);
    const agent = new Agent({ timeout: 60000 });
    agent.request(process.argv[1]).then(() => { globalThis.kept = agent; process.on('exit', () => console.log(n)); });`;
  const r = await runNode(['-e', script, srv.http], { env: cleanEnv(), timeoutMs: 15_000 });
  assert.equal(r.signal, null, 'exited by itself');
  assert.equal(r.code, 0, r.stderr);
  assert.ok(Number(r.stdout) >= 1, r.stdout);
  assert.ok(r.ms < 10_000, `${r.ms} ms`);
});

test('maxSockets reached: queued and dequeued on keepalive-agent:queue', async () => {
  const ref = {};
  const rec = record(ref);
  const agent = (ref.agent = new Agent({ maxSockets: 1 }));
  try {
    await Promise.all([agent.request(`${srv.http}?delay_ms=100`), agent.request(srv.http)]);
    await waitFor(() => rec.seen.filter((m) => m.kind === 'response_head').length === 2, 'two response heads');
    const queue = rec.seen.filter((m) => m.channel === channels.queue);
    assert.deepEqual(
      queue.map((m) => [m.kind, m.origin]),
      [
        ['queued', origin()],
        ['dequeued', origin()],
      ],
    );
    assert.equal(rec.seen.filter((m) => m.kind === 'connect_start').length, 1);
  } finally {
    rec.stop();
    agent.destroy();
  }
});
