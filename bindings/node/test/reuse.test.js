'use strict';
// Keep-alive on and off per agent in one process, counted by the server; the API surface.

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

const echo = (res) => JSON.parse(res.body.toString('utf8'));
const header = (res, name) => {
  const h = echo(res).headers.find(([n]) => n.toLowerCase() === name);
  return h && h[1];
};

test('keepAlive: true reuses one connection while keepAlive: false opens one per request, in one process', async () => {
  await srv.reset();
  const on = new Agent({ keepAlive: true });
  const off = new Agent({ keepAlive: false });
  assert.equal(on.keepAlive, true);
  assert.equal(off.keepAlive, false);
  const onPorts = [];
  const offPorts = [];
  for (let i = 0; i < 10; i++) {
    const a = await on.request({ url: `${srv.http}?echo=1` });
    assert.equal(a.statusCode, 200);
    assert.equal(a.reusedSocket, i > 0, `request ${i + 1} on the keep-alive agent`);
    assert.notEqual(header(a, 'connection'), 'close');
    onPorts.push(a.headers['x-remote-port']);

    const b = await off.request(`${srv.http}?echo=1`);
    assert.equal(b.statusCode, 200);
    assert.equal(b.reusedSocket, false);
    assert.equal(header(b, 'connection'), 'close', 'keepAlive: false sends Connection: close');
    offPorts.push(b.headers['x-remote-port']);
  }
  assert.equal(new Set(onPorts).size, 1, 'one connection for the keep-alive agent');
  assert.equal(new Set(offPorts).size, 10, 'a new connection per request without keep-alive');

  const s = await srv.stats();
  assert.equal(s.accepted, 11, 'the server accepted 1 + 10 connections');
  assert.equal(s.requests, 20);

  const onStats = on.stats();
  assert.equal(onStats.connectionsOpened, 1);
  assert.equal(onStats.reusedRequests, 9);
  assert.equal(onStats.requests, 10);
  assert.equal(onStats.idle, 1);
  assert.equal(onStats.active, 0);
  assert.equal(onStats.keepAlive, true);
  const offStats = off.stats();
  assert.equal(offStats.connectionsOpened, 10);
  assert.equal(offStats.reusedRequests, 0);
  assert.equal(offStats.idle, 0);
  assert.equal(offStats.keepAlive, false);

  // keepAlive: false leaves no socket open.
  const offSet = new Set(offPorts.map(Number));
  const deadline = Date.now() + 2000;
  let stillOpen;
  do {
    const st = await srv.stats();
    stillOpen = st.connections.filter((c) => offSet.has(c.remote_port) && c.open);
    if (stillOpen.length === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  } while (Date.now() < deadline);
  assert.deepEqual(stillOpen, []);

  on.destroy();
  off.destroy();
});

test('https with the test CA: reuse on and off, counted by the server', async () => {
  await srv.reset();
  const on = new Agent({ keepAlive: true, ca: srv.ca });
  const off = new Agent({ keepAlive: false, ca: Buffer.from(srv.ca) });
  for (let i = 0; i < 5; i++) {
    const a = await on.request(srv.https);
    assert.equal(a.statusCode, 200);
    assert.equal(a.body.toString(), 'hello, world\n');
    assert.equal(a.reusedSocket, i > 0);
    const b = await off.request(srv.https);
    assert.equal(b.reusedSocket, false);
    if (i === 0) assert.ok(a.timings.tls > 0, 'TLS handshake timed');
  }
  const s = await srv.stats();
  assert.equal(s.accepted, 6);
  assert.ok(s.connections.every((c) => c.tls));
  on.destroy();
  off.destroy();
});

test('response shape: status, version, headers, rawHeaders, Buffer body, timings', async () => {
  const agent = new Agent();
  const res = await agent.request({ url: `${srv.http}?status=201&bytes=5` });
  assert.equal(res.statusCode, 201);
  assert.equal(res.statusMessage, 'Created');
  assert.equal(res.httpVersion, '1.1');
  assert.ok(Buffer.isBuffer(res.body));
  assert.equal(res.body.length, 5);
  assert.equal(res.headers['content-length'], '5');
  assert.equal(typeof res.headers['x-conn-id'], 'string');
  assert.ok(Array.isArray(res.rawHeaders) && res.rawHeaders.length % 2 === 0);
  const i = res.rawHeaders.indexOf('content-length');
  assert.equal(res.rawHeaders[i + 1], '5');
  for (const k of ['queued', 'dns', 'connect', 'tls', 'sent', 'ttfb', 'total']) {
    assert.equal(typeof res.timings[k], 'number', k);
  }
  assert.ok(res.timings.total >= res.timings.ttfb);
  agent.destroy();
});

test('request headers (object, pairs, repeated names) and bodies (string, Buffer, Uint8Array, ArrayBuffer)', async () => {
  const agent = new Agent();
  let res = await agent.request({
    method: 'post',
    url: `${srv.http}?echo=1`,
    headers: { 'X-One': 1, 'X-Many': ['a', 'b'] },
    body: 'héllo',
  });
  let e = echo(res);
  assert.equal(e.method, 'POST', 'method upper-cased like Node');
  assert.equal(e.body_len, Buffer.byteLength('héllo'));
  const names = e.headers.map(([n]) => n.toLowerCase());
  assert.equal(names.filter((n) => n === 'x-many').length, 2);
  assert.ok(e.headers.some(([n, v]) => n.toLowerCase() === 'x-one' && v === '1'));

  res = await agent.request({
    method: 'PUT',
    url: `${srv.http}?echo=1`,
    headers: [
      ['x-pair', '1'],
      ['x-pair', '2'],
    ],
    body: Buffer.alloc(1000, 1),
  });
  e = echo(res);
  assert.equal(e.body_len, 1000);
  assert.deepEqual(
    e.headers.filter(([n]) => n.toLowerCase() === 'x-pair').map(([, v]) => v),
    ['1', '2'],
  );

  res = await agent.request({ method: 'POST', url: `${srv.http}?echo=1`, body: new Uint8Array(7) });
  assert.equal(echo(res).body_len, 7);
  res = await agent.request({ method: 'POST', url: new URL(`${srv.http}?echo=1`), body: new ArrayBuffer(3) });
  assert.equal(echo(res).body_len, 3);
  res = await agent.request({ url: `${srv.http}?echo=1`, headers: ['x-flat', 'v', 'user-agent', 'mine/1'] });
  e = echo(res);
  assert.ok(e.headers.some(([n, v]) => n.toLowerCase() === 'x-flat' && v === 'v'));
  assert.equal(header(res, 'user-agent'), 'mine/1');
  agent.destroy();
});

test('userAgent option and the default User-Agent', async () => {
  const def = new Agent();
  const custom = new Agent({ userAgent: 'svc/2.0' });
  assert.match(header(await def.request(`${srv.http}?echo=1`), 'user-agent'), /^keepalive-agent\//);
  assert.equal(header(await custom.request(`${srv.http}?echo=1`), 'user-agent'), 'svc/2.0');
  def.destroy();
  custom.destroy();
});

test('large bodies arrive intact (zero-copy Buffer path)', async () => {
  const agent = new Agent();
  for (const n of [0, 65535, 65536, 1_000_000]) {
    const res = await agent.request(`${srv.http}?bytes=${n}`);
    assert.equal(res.body.length, n, `bytes=${n}`);
    assert.equal(res.headers['content-length'], String(n));
  }
  const chunked = await agent.request(`${srv.http}?bytes=300000&chunked=1&chunks=7`);
  assert.equal(chunked.body.length, 300000);
  agent.destroy();
});

test('maxSockets limits connections per origin; requests queue and complete', async () => {
  await srv.reset();
  const agent = new Agent({ maxSockets: 2 });
  const res = await Promise.all(Array.from({ length: 8 }, () => agent.request(`${srv.http}?delay_ms=50`)));
  assert.ok(res.every((r) => r.statusCode === 200));
  const s = await srv.stats();
  assert.equal(s.accepted, 2, 'two connections served all eight requests');
  assert.equal(s.requests, 8);
  assert.equal(agent.stats().connectionsOpened, 2);
  agent.destroy();
});

test('stats(origin) counts one origin', async () => {
  const agent = new Agent();
  await agent.request(srv.http);
  const mine = agent.stats(srv.http);
  const other = agent.stats('http://127.0.0.1:1');
  assert.equal(mine.requests, 1);
  assert.equal(other.requests, 0);
  agent.destroy();
});

test('destroy(): closes idle connections, rejects in-flight requests, refuses new ones', async () => {
  await srv.reset();
  const agent = new Agent();
  // Two connections: one goes idle, the other serves a slow request when destroy() comes.
  const first = await Promise.all([agent.request(`${srv.http}?delay_ms=50`), agent.request(`${srv.http}?delay_ms=50`)]);
  const ports = first.map((r) => Number(r.headers['x-remote-port']));
  assert.equal(new Set(ports).size, 2);
  const inflight = agent.request(`${srv.http}?delay_ms=3000`);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(agent.stats().active, 1);
  assert.equal(agent.stats().idle, 1);
  const t0 = Date.now();
  agent.destroy();
  agent.destroy(); // idempotent
  await assert.rejects(inflight, (e) => e.agentCodeName === 'AGENT_CODE_CANCELLED' && e.code === 'AGENT_CODE_CANCELLED');
  assert.ok(Date.now() - t0 < 2000, 'destroy does not wait for the slow response');
  assert.equal(agent.destroyed, true);
  await assert.rejects(agent.request(srv.http), { code: 'ERR_AGENT_DESTROYED' });
  assert.throws(() => agent.stats(), { code: 'ERR_AGENT_DESTROYED' });
  // The server sees the client close both connections: the idle one, and the busy one
  // while its answer is still delayed (the test server watches a connection while it waits).
  const deadline = Date.now() + 2000;
  let closed = [];
  do {
    const s = await srv.stats();
    closed = s.connections.filter((c) => ports.includes(c.remote_port) && !c.open && c.closed_by_client);
    if (closed.length >= 2) break;
    await new Promise((r) => setTimeout(r, 50));
  } while (Date.now() < deadline);
  assert.equal(closed.length, 2, 'both connections were closed by the client');
});

test('option validation throws like Node (ERR_INVALID_ARG_TYPE, ERR_OUT_OF_RANGE, ERR_INVALID_ARG_VALUE)', () => {
  const typeErr = (opts, name) =>
    assert.throws(() => new Agent(opts), (e) => e instanceof TypeError && e.code === 'ERR_INVALID_ARG_TYPE' && e.message.includes(name));
  const rangeErr = (opts, name) =>
    assert.throws(() => new Agent(opts), (e) => e instanceof RangeError && e.code === 'ERR_OUT_OF_RANGE' && e.message.includes(name));
  typeErr({ keepAlive: 'yes' }, '"options.keepAlive"');
  typeErr({ maxSockets: '5' }, '"options.maxSockets"');
  typeErr({ timeout: null }, '"options.timeout"');
  typeErr({ ca: 42 }, '"options.ca"');
  typeErr({ ca: ['x', 1] }, '"options.ca[1]"');
  typeErr({ rejectUnauthorized: 0 }, '"options.rejectUnauthorized"');
  typeErr('keepAlive', '"options"');
  rangeErr({ maxSockets: -1 }, '"options.maxSockets"');
  rangeErr({ maxSockets: 1.5 }, '"options.maxSockets"');
  rangeErr({ keepAliveProbes: 128 }, '"options.keepAliveProbes"');
  rangeErr({ keepAliveMsecs: 32_767_001 }, '"options.keepAliveMsecs"');
  rangeErr({ connectTimeout: 2 ** 31 }, '"options.connectTimeout"');
  rangeErr({ timeout: Infinity }, '"options.timeout"');
  assert.throws(() => new Agent({ scheduling: 'random' }), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' });
  // Rejected by the library at creation, never at the first request.
  assert.throws(
    () => new Agent({ ca: 'not a certificate' }),
    (e) => e.code === 'ERR_INVALID_ARG_VALUE' && e.agentCodeName === 'AGENT_CODE_INVALID_OPTION' && /PEM/.test(e.message),
  );
  // Accepted: Infinity means unlimited for socket limits, as with http.Agent.
  new Agent({ maxSockets: Infinity, maxTotalSockets: Infinity, maxFreeSockets: Infinity, scheduling: 'fifo' }).destroy();
  new Agent({
    keepAlive: true,
    keepAliveMsecs: 5000,
    keepAliveInterval: 1000,
    keepAliveProbes: 3,
    maxSockets: 10,
    maxFreeSockets: 5,
    maxTotalSockets: 20,
    scheduling: 'lifo',
    timeout: 2000,
    keepAliveTimeoutBuffer: 500,
    keepAliveMaxTimeout: 60000,
    socketActiveTTL: 30000,
    connectTimeout: 1000,
    headersTimeout: 1000,
    bodyTimeout: 1000,
    retryStale: false,
    maxResponseSize: 1 << 20,
    useSystemRoots: false,
    rejectUnauthorized: true,
    userAgent: 'x/1',
  }).destroy();
});

test('request validation rejects like Node before anything is sent', async () => {
  const agent = new Agent();
  await srv.reset();
  await assert.rejects(agent.request({ url: 42 }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
  await assert.rejects(agent.request(null), { code: 'ERR_INVALID_ARG_TYPE' });
  await assert.rejects(agent.request({ url: srv.http, method: 'GE T' }), { code: 'ERR_INVALID_HTTP_TOKEN' });
  await assert.rejects(agent.request({ url: srv.http, headers: { 'bad name': 'x' } }), { code: 'ERR_INVALID_HTTP_TOKEN' });
  await assert.rejects(agent.request({ url: srv.http, headers: { 'x-a': 'a\r\nx-injected: 1' } }), { code: 'ERR_INVALID_CHAR' });
  await assert.rejects(agent.request({ url: srv.http, headers: { 'x-a': 'a\0b' } }), { code: 'ERR_INVALID_CHAR' });
  await assert.rejects(agent.request({ url: srv.http, headers: ['x-odd'] }), { code: 'ERR_INVALID_ARG_VALUE' });
  await assert.rejects(agent.request({ url: srv.http, body: 42 }), { code: 'ERR_INVALID_ARG_TYPE' });
  await assert.rejects(agent.request({ url: srv.http, timeout: -1 }), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
  await assert.rejects(agent.request({ url: srv.http, signal: {} }), { code: 'ERR_INVALID_ARG_TYPE' });
  // The library's own checks: a malformed URL, a NUL hidden in the URL.
  await assert.rejects(agent.request('ftp://127.0.0.1/'), (e) => e.code === 'ERR_INVALID_URL' && e.agentCodeName === 'AGENT_CODE_INVALID_URL');
  await assert.rejects(agent.request('not a url'), { code: 'ERR_INVALID_URL' });
  await assert.rejects(agent.request(`${srv.http}\0x`), { code: 'ERR_INVALID_CHAR' });
  const s = await srv.stats();
  assert.equal(s.accepted, 0, 'nothing reached the server');
  agent.destroy();
});
