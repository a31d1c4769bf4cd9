'use strict';
// Streamed bodies both ways: agent.stream() (head first, the body as a Readable read from
// the engine as it is consumed) and request bodies from a Readable or an async iterable,
// against the test server: framing, hashes, reuse, backpressure, abort, errors, misuse.

const test = require('node:test');
const assert = require('node:assert/strict');
const { once } = require('node:events');
const path = require('node:path');
const { Readable } = require('node:stream');
const { Worker } = require('node:worker_threads');
const { Agent, codes } = require('..');
const { startServer, closedPort } = require('./helpers');

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

/** FNV-1a 64 of `chunks`, as the test server's `body_fnv` (16 hex digits). */
function fnv1a(chunks) {
  // 64-bit arithmetic on two 32-bit halves: h * 0x100000001b3 = h * 0x1b3 + (h << 40).
  let lo = 0x84222325;
  let hi = 0xcbf29ce4;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++) {
      lo ^= chunk[i];
      const l = (lo >>> 0) * 0x1b3;
      hi = (Math.imul(hi, 0x1b3) + ((lo << 8) >>> 0) + Math.floor(l / 4294967296)) >>> 0;
      lo = l >>> 0;
    }
  }
  return (hi >>> 0).toString(16).padStart(8, '0') + (lo >>> 0).toString(16).padStart(8, '0');
}

test('fnv1a matches the definition (BigInt) on a sample', () => {
  const sample = Buffer.from('keepalive-agent streams \u2713', 'utf8');
  let h = 0xcbf29ce484222325n;
  for (const b of sample) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
  assert.equal(fnv1a([sample]), h.toString(16).padStart(16, '0'));
});

/** Pseudo-random bytes, the same for the same seed. */
function bytes(n, seed = 1) {
  const out = Buffer.alloc(n);
  let x = seed * 0x9e3779b1 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** The test server's body pattern: byte i is 'a' + i % 26. */
function isPattern(buf, offset = 0) {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 97 + ((offset + i) % 26)) return false;
  return true;
}

async function readAll(readable) {
  const chunks = [];
  for await (const c of readable) chunks.push(c);
  return Buffer.concat(chunks);
}

const header = (echo, name) => echo.headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);

/** Resets the server's counters once the connections of earlier tests are closed. */
async function resetServer() {
  await waitFor(async () => (await srv.stats()).open === 0, 'earlier connections to close');
  await srv.reset();
}

async function waitFor(check, what, ms = 3000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('stream(): head first, then the body as a Readable; total timing once it ends', async () => {
  const agent = new Agent();
  const res = await agent.stream(`${srv.http}?bytes=3000000`);
  assert.equal(res.statusCode, 200);
  assert.equal(res.statusMessage, 'OK');
  assert.equal(res.httpVersion, '1.1');
  assert.equal(res.headers['content-length'], '3000000');
  assert.ok(res.rawHeaders.includes('content-length'));
  assert.equal(res.reusedSocket, false);
  assert.ok(res.body instanceof Readable);
  assert.equal(res.timings.total, 0, 'not known before the end');
  const body = await readAll(res.body);
  assert.equal(body.length, 3000000);
  assert.ok(isPattern(body));
  assert.ok(res.timings.total >= res.timings.ttfb && res.timings.total > 0);
  // stream(url, options) and a bodiless response.
  const head = await agent.stream(srv.http, { method: 'HEAD' });
  assert.equal(head.statusCode, 200);
  assert.equal((await readAll(head.body)).length, 0);
  agent.destroy();
});

test('a fully read stream gives its connection back: the server sees one connection', async () => {
  await resetServer();
  const agent = new Agent({ keepAlive: true });
  for (let i = 0; i < 5; i++) {
    const res = await agent.stream(`${srv.http}?bytes=${100000 + i}&chunked=${i % 2}`);
    assert.equal(res.reusedSocket, i > 0);
    const body = await readAll(res.body);
    assert.equal(body.length, 100000 + i);
    assert.ok(isPattern(body));
  }
  const s = agent.stats();
  assert.equal(s.connectionsOpened, 1);
  assert.equal(s.requests, 5);
  assert.equal(s.reusedRequests, 4);
  assert.equal(s.errors, 0);
  assert.equal(s.idle, 1);
  assert.equal(s.active, 0);
  const server = await srv.stats();
  assert.equal(server.accepted, 1);
  assert.equal(server.requests, 5);
  agent.destroy();
});

test('destroy() mid-body aborts: the server sees the connection closed, the stats count one failed request', async () => {
  await resetServer();
  const agent = new Agent({ keepAlive: true });
  const res = await agent.stream(`${srv.http}?bytes=${256 << 20}`);
  let got = 0;
  for await (const chunk of res.body) {
    assert.ok(isPattern(chunk, got));
    got += chunk.length;
    if (got >= 1 << 20) break; // leaving the loop destroys the stream
  }
  assert.equal(res.body.destroyed, true);
  const server = await waitFor(async () => {
    const s = await srv.stats();
    return s.open === 0 && s;
  }, 'the server to see the close');
  assert.equal(server.accepted, 1);
  assert.equal(server.client_closed, 1);
  const s = await waitFor(() => {
    const st = agent.stats();
    return st.active === 0 && st;
  }, 'the agent to drop the connection');
  assert.deepEqual(
    { opened: s.connectionsOpened, closed: s.connectionsClosed, requests: s.requests, errors: s.errors, reused: s.reusedRequests, idle: s.idle, active: s.active },
    { opened: 1, closed: 1, requests: 1, errors: 1, reused: 0, idle: 0, active: 0 },
  );
  // Destroying again, reading after the end, and a new request are all fine.
  res.body.destroy();
  res.body.destroy(new Error('again'));
  assert.equal(res.body.read(), null);
  const next = await agent.stream(`${srv.http}?bytes=10`);
  assert.equal(next.reusedSocket, false, 'the aborted connection was not reused');
  assert.equal((await readAll(next.body)).toString(), 'abcdefghij');
  agent.destroy();
});

test('an AbortSignal aborts before the head (AbortError) and mid-body (the body fails with AbortError)', async () => {
  await resetServer();
  const agent = new Agent();
  const early = new AbortController();
  setTimeout(() => early.abort(), 50);
  const e1 = await agent.stream(`${srv.http}?delay_ms=2000`, { signal: early.signal }).catch((e) => e);
  assert.equal(e1.name, 'AbortError');
  assert.equal(e1.code, 'ABORT_ERR');

  const ac = new AbortController();
  const res = await agent.stream(`${srv.http}?bytes=${64 << 20}`, { signal: ac.signal });
  const iter = res.body[Symbol.asyncIterator]();
  assert.equal((await iter.next()).done, false);
  ac.abort(new Error('enough'));
  const e2 = await iter.next().then(
    () => iter.next(),
    (e) => ({ error: e }),
  );
  const err = e2.error || (await readAll(res.body).catch((e) => e));
  assert.equal(err.name, 'AbortError');
  assert.equal(err.cause.message, 'enough');
  await waitFor(async () => (await srv.stats()).open === 0, 'the server to see the close');
  await waitFor(() => agent.stats().active === 0, 'the agent to drop the connection');
  assert.equal(agent.stats().errors, 2);
  // Aborted already: nothing is sent.
  const e3 = await agent.stream(srv.http, { signal: AbortSignal.abort() }).catch((e) => e);
  assert.equal(e3.name, 'AbortError');
  agent.destroy();
});

test('backpressure: a paused body stops the engine reading; the engine holds a bounded window', async () => {
  const agent = new Agent();
  const total = 32 << 20;
  const res = await agent.stream(`${srv.http}?bytes=${total}`);
  let got = 0;
  let ok = true;
  res.body.on('data', (chunk) => {
    ok = ok && isPattern(chunk, got);
    got += chunk.length;
  });
  await once(res.body, 'data');
  res.body.pause();
  await new Promise((r) => setTimeout(r, 300));
  const atPause = got;
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(got, atPause, 'no data while paused');
  // What the engine and the addon hold while paused: hyper's window, not the body.
  const held = res.body.engineBuffered + res.body.readableLength;
  assert.ok(held <= 1 << 20, `held ${held} bytes while paused`);
  assert.ok(got + held < total, 'the body was not read ahead');
  res.body.resume();
  await once(res.body, 'end');
  assert.equal(got, total);
  assert.ok(ok);
  assert.equal(res.body.engineBuffered, 0);
  agent.destroy();
});

test('uploads: chunked without a length, Content-Length with one; framing and bytes checked by the server', async () => {
  const agent = new Agent();
  const data = bytes(3 * 1024 * 1024 + 7, 3);
  const pieces = () => [data.subarray(0, 1000), data.subarray(1000, 1 << 20), data.subarray(1 << 20)];
  const expected = fnv1a([data]);

  // An async generator, no length: chunked.
  const chunked = await agent.request({
    method: 'POST',
    url: `${srv.http}?echo=1`,
    body: (async function* () {
      yield* pieces();
    })(),
  });
  let echo = JSON.parse(chunked.body);
  assert.deepEqual(header(echo, 'transfer-encoding'), ['chunked']);
  assert.deepEqual(header(echo, 'content-length'), []);
  assert.equal(echo.body_len, data.length);
  assert.equal(echo.body_fnv, expected);

  // A Readable with a content-length header (any case): that length, no chunked framing.
  const sized = await agent.request({
    method: 'PUT',
    url: `${srv.http}?echo=1`,
    headers: { 'Content-Length': String(data.length) },
    body: Readable.from(pieces()),
  });
  echo = JSON.parse(sized.body);
  assert.deepEqual(header(echo, 'content-length'), [String(data.length)]);
  assert.deepEqual(header(echo, 'transfer-encoding'), []);
  assert.equal(echo.body_len, data.length);
  assert.equal(echo.body_fnv, expected);

  // A caller's transfer-encoding header is not repeated; strings, Uint8Arrays and empty
  // chunks are bytes too.
  const mixed = await agent.request({
    method: 'POST',
    url: `${srv.http}?echo=1`,
    headers: { 'transfer-encoding': 'chunked' },
    body: (async function* () {
      yield 'h\u00e9llo ';
      yield new Uint8Array([119, 111]);
      yield Buffer.alloc(0);
      yield new DataView(new Uint8Array([114, 108, 100]).buffer);
    })(),
  });
  echo = JSON.parse(mixed.body);
  assert.deepEqual(header(echo, 'transfer-encoding'), ['chunked']);
  const sent = Buffer.from('h\u00e9llo world', 'utf8');
  assert.equal(echo.body_len, sent.length);
  assert.equal(echo.body_fnv, fnv1a([sent]));

  // A web ReadableStream.
  const web = await agent.request({ method: 'POST', url: `${srv.http}?echo=1`, body: Readable.toWeb(Readable.from(pieces())) });
  assert.equal(JSON.parse(web.body).body_fnv, expected);

  // An empty stream, with and without a length.
  for (const headers of [{}, { 'content-length': '0' }]) {
    const empty = await agent.request({ method: 'POST', url: `${srv.http}?echo=1`, headers, body: Readable.from([]) });
    assert.equal(JSON.parse(empty.body).body_len, 0);
  }
  // A streamed upload with a streamed response.
  const both = await agent.stream({ method: 'PUT', url: `${srv.http}?echo=1`, body: Readable.from(pieces()) });
  assert.equal(JSON.parse(await readAll(both.body)).body_fnv, expected);
  assert.equal(agent.stats().errors, 0);
  agent.destroy();
});

test('a slow source is waited for; a source faster than the network is held to the ring buffer', async () => {
  const agent = new Agent();
  let produced = 0;
  const slow = await agent.request({
    method: 'POST',
    url: `${srv.http}?echo=1`,
    body: (async function* () {
      for (let i = 0; i < 5; i++) {
        await new Promise((r) => setTimeout(r, 30));
        produced++;
        yield `piece ${i};`;
      }
    })(),
  });
  assert.equal(produced, 5);
  assert.equal(JSON.parse(slow.body).body_len, 'piece 0;'.length * 5);

  // The server reads the body only after a delay: meanwhile the pump stops at the ring.
  let offered = 0;
  const fast = new Readable({
    highWaterMark: 64 * 1024,
    read() {
      if (offered >= 32 << 20) return this.push(null);
      offered += 64 * 1024;
      this.push(Buffer.alloc(64 * 1024, 1));
    },
  });
  const pending = agent.request({ method: 'POST', url: `${srv.http}?echo=1&delay_ms=0`, body: fast, headers: { 'content-length': String(32 << 20) } });
  const res = await pending;
  assert.equal(JSON.parse(res.body).body_len, 32 << 20);
  agent.destroy();
});

test('upload errors: reset mid-upload, a failing source, wrong lengths, a stalled source past the timeout, abort', async () => {
  const agent = new Agent();
  const big = () =>
    new Readable({
      read() {
        this.push(Buffer.alloc(256 * 1024, 7));
      },
    });

  // The server resets the connection after 1 MB of the body.
  for (const headers of [{}, { 'content-length': String(64 << 20) }]) {
    const body = big();
    const e = await agent.request({ method: 'PUT', url: `${srv.http}?echo=1&body_rst_after=1000000`, headers, body }).catch((x) => x);
    assert.ok(['ECONNRESET', 'EPIPE'].includes(e.code), `${e.code}: ${e.message}`);
    assert.ok(['AGENT_CODE_CONNECTION_RESET', 'AGENT_CODE_BROKEN_PIPE'].includes(e.agentCodeName), e.agentCodeName);
    await waitFor(() => body.destroyed, 'the request body to be destroyed');
  }

  // The caller's iterable throws: AGENT_CODE_BODY_SOURCE, with its error as the cause.
  const boom = new Error('boom');
  const failing = await agent
    .request({
      method: 'POST',
      url: `${srv.http}?echo=1`,
      body: (async function* () {
        yield 'abc';
        throw boom;
      })(),
    })
    .catch((x) => x);
  assert.equal(failing.code, 'AGENT_CODE_BODY_SOURCE');
  assert.equal(failing.agentCode, codes.BODY_SOURCE);
  assert.equal(failing.cause, boom);
  assert.match(failing.message, /boom/);

  // A Readable that errors.
  const errs = new Readable({ read() {} });
  setTimeout(() => errs.destroy(new Error('disk gone')), 20);
  const e2 = await agent.request({ method: 'POST', url: `${srv.http}?echo=1`, body: errs }).catch((x) => x);
  assert.equal(e2.code, 'AGENT_CODE_BODY_SOURCE');
  assert.equal(e2.cause.message, 'disk gone');

  // Something that is not bytes.
  const e3 = await agent
    .request({ method: 'POST', url: `${srv.http}?echo=1`, body: Readable.from([{ not: 'bytes' }]) })
    .catch((x) => x);
  assert.equal(e3.code, 'AGENT_CODE_BODY_SOURCE');
  assert.equal(e3.cause.code, 'ERR_INVALID_ARG_TYPE');

  // Shorter and longer than the content-length.
  const short = await agent
    .request({ method: 'POST', url: `${srv.http}?echo=1`, headers: { 'content-length': '10' }, body: Readable.from(['abc']) })
    .catch((x) => x);
  assert.equal(short.code, 'AGENT_CODE_BODY_SOURCE');
  assert.match(short.message, /7 short of its length/);
  const long = await agent
    .request({ method: 'POST', url: `${srv.http}?echo=1`, headers: { 'content-length': '2' }, body: Readable.from(['abc']) })
    .catch((x) => x);
  assert.equal(long.code, 'AGENT_CODE_BODY_SOURCE');
  assert.equal(long.cause.code, 'ERR_HTTP_CONTENT_LENGTH_MISMATCH');
  await assert.rejects(
    agent.request({ url: srv.http, method: 'PUT', headers: { 'content-length': 'x' }, body: Readable.from([]) }),
    { code: 'ERR_INVALID_ARG_VALUE' },
  );

  // A source that never produces: the request's timeout ends the wait (the engine's read is
  // pending meanwhile, and the library keeps the deadline).
  const t0 = Date.now();
  const stalled = new Readable({ read() {} });
  const e4 = await agent.request({ method: 'POST', url: `${srv.http}?echo=1`, timeout: 300, body: stalled }).catch((x) => x);
  assert.equal(e4.code, 'ETIMEDOUT');
  assert.equal(e4.agentCodeName, 'AGENT_CODE_TIMEOUT');
  assert.ok(Date.now() - t0 < 3000);
  assert.equal(stalled.destroyed, true);

  // Aborting while the engine waits for the source.
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const e5 = await agent.request({ method: 'POST', url: `${srv.http}?echo=1`, signal: ac.signal, body: new Readable({ read() {} }) }).catch((x) => x);
  assert.equal(e5.name, 'AbortError');

  // A refused connection: the same codes as request().
  const port = await closedPort();
  const e6 = await agent.stream({ method: 'PUT', url: `http://127.0.0.1:${port}/`, body: Readable.from(['x']) }).catch((x) => x);
  assert.equal(e6.code, 'ECONNREFUSED');
  const s = agent.stats();
  assert.equal(s.requests, s.errors);
  // A failed request's connection is closed by its monitor, a moment after the failure.
  await waitFor(() => agent.stats().active === 0, 'the failed requests\' connections to close');
  agent.destroy();
});

test('body errors: a timeout mid-body and a reset mid-body fail the stream with request()\'s codes', async () => {
  const agent = new Agent();
  const slow = await agent.stream(`${srv.http}?bytes=100000&chunked=1&chunks=2&chunk_delay_ms=2000`, { timeout: 300 });
  const e1 = await readAll(slow.body).catch((e) => e);
  assert.equal(e1.code, 'ETIMEDOUT');
  assert.equal(e1.agentCodeName, 'AGENT_CODE_TIMEOUT');
  const reset = await agent.stream(`${srv.http}?bytes=${4 << 20}&rst_mid=1`);
  const e2 = await readAll(reset.body).catch((e) => e);
  assert.ok(['ECONNRESET'].includes(e2.code), `${e2.code} ${e2.message}`);
  // Without an 'error' listener the failure is not emitted (as Node's IncomingMessage), but
  // it is kept in `errored` and the stream closes.
  const quiet = await agent.stream(`${srv.http}?bytes=${4 << 20}&rst_mid=1`);
  quiet.body.on('data', () => {});
  await new Promise((resolve) => quiet.body.on('close', resolve)); // once() would listen for 'error'
  assert.equal(quiet.body.listenerCount('error'), 0);
  assert.equal(quiet.body.errored.code, 'ECONNRESET');
  agent.destroy();
});

test('a streamed body is not replayed: a stale connection fails it with ECONNRESET, while a Buffer is retried', async () => {
  const agent = new Agent({ keepAlive: true });
  await agent.request(srv.http);
  const e = await agent
    .request({ method: 'PUT', url: `${srv.http}?rst_if_reused=1&echo=1`, body: Readable.from(['abc']) })
    .catch((x) => x);
  assert.equal(e.code, 'ECONNRESET');
  assert.equal(e.agentCodeName, 'AGENT_CODE_STALE_CONNECTION');
  assert.equal(agent.stats().retries, 0);
  await agent.request(srv.http);
  const ok = await agent.request({ method: 'PUT', url: `${srv.http}?rst_if_reused=1&echo=1`, body: 'abc' });
  assert.equal(JSON.parse(ok.body).body_len, 3);
  assert.equal(agent.stats().retries, 1);
  agent.destroy();
});

test('destroying the agent fails its open streams and uploads with AGENT_CODE_CANCELLED; no crash on misuse', async () => {
  const agent = new Agent();
  const res = await agent.stream(`${srv.http}?bytes=${64 << 20}`);
  const idle = await agent.stream(`${srv.http}?bytes=${64 << 20}`);
  const flowing = readAll(res.body).catch((e) => e);
  const upload = agent.request({ method: 'POST', url: `${srv.http}?echo=1`, body: new Readable({ read() {} }) }).catch((e) => e);
  await new Promise((r) => setTimeout(r, 50));
  agent.destroy();
  const e1 = await flowing;
  assert.equal(e1.agentCodeName, 'AGENT_CODE_CANCELLED');
  const e2 = await upload;
  assert.equal(e2.agentCodeName, 'AGENT_CODE_CANCELLED');
  assert.equal(idle.body.destroyed, true);
  assert.equal(idle.body.errored.agentCodeName, 'AGENT_CODE_CANCELLED');
  await assert.rejects(agent.stream(srv.http), { code: 'ERR_AGENT_DESTROYED' });
  idle.body.destroy();
  res.body.destroy();

  // The native surface refuses what is not its own, and is idempotent where it can be.
  const native = require('..')._native;
  const other = new Agent();
  const s = await other.stream(`${srv.http}?bytes=10`);
  assert.equal((await readAll(s.body)).toString(), 'abcdefghij');
  const handle = native.create({});
  assert.throws(() => native.streamRead({}, () => {}), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.throws(() => native.sourcePush(handle, Buffer.alloc(1)), { code: 'ERR_INVALID_ARG_TYPE' });
  const raw = await native.streamRequest(handle, 'GET', `${srv.http}?bytes=100`, undefined, undefined, undefined, 0)[0];
  assert.throws(() => native.streamRequest(raw.stream, 'GET', srv.http, undefined, undefined, undefined, 0), { code: 'ERR_INVALID_ARG_TYPE' });
  const chunks = [];
  for (;;) {
    const [err, chunk] = await new Promise((resolve) => {
      assert.equal(native.streamRead(raw.stream, (...a) => resolve(a)), true);
      assert.throws(() => native.streamRead(raw.stream, () => {}), { code: 'ERR_INVALID_STATE' });
    });
    assert.equal(err, null);
    if (chunk === null) break;
    chunks.push(chunk);
  }
  assert.equal(Buffer.concat(chunks).length, 100);
  assert.equal(native.streamRead(raw.stream, () => assert.fail('no read after the end')), false);
  native.streamFree(raw.stream);
  native.streamFree(raw.stream);
  assert.equal(native.streamBuffered(raw.stream), 0);
  native.destroy(handle);
  other.destroy();
});

test('request() with a streamed body resolves with the whole response, as with a Buffer', async () => {
  const agent = new Agent();
  const res = await agent.request(`${srv.http}?echo=1`, { method: 'POST', body: Readable.from([Buffer.from('abc')]) });
  assert.equal(res.statusCode, 200);
  assert.ok(Buffer.isBuffer(res.body));
  assert.equal(JSON.parse(res.body).body_len, 3);
  assert.ok(res.timings.total > 0);
  await assert.rejects(agent.request({ url: srv.http, body: { not: 'a body' } }), { code: 'ERR_INVALID_ARG_TYPE' });
  agent.destroy();
});

test('a worker terminated with streams and body sources in every state: no crash, every connection closed', async () => {
  await resetServer();
  for (let i = 0; i < 3; i++) {
    const w = new Worker(path.join(__dirname, 'fixtures', 'stream_worker.js'), { workerData: { url: srv.http, end: 'terminate' } });
    const msg = await new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    assert.equal(msg.ready, true);
    assert.ok(msg.active >= 4, `${msg.active} connections in use`);
    await w.terminate();
  }
  await waitFor(async () => (await srv.stats()).open === 0, 'the workers\' connections to close', 10_000);
  const agent = new Agent();
  assert.equal((await readAll((await agent.stream(`${srv.http}?bytes=5`)).body)).toString(), 'abcde', 'the process is healthy');
  agent.destroy();
});

test('a worker whose loop runs out with a paused open stream ends on its own', async () => {
  await resetServer();
  const t0 = Date.now();
  const w = new Worker(path.join(__dirname, 'fixtures', 'stream_worker.js'), { workerData: { url: srv.http, end: 'exit' } });
  w.on('message', () => {});
  const code = await new Promise((resolve, reject) => {
    w.once('exit', resolve);
    w.once('error', reject);
  });
  assert.equal(code, 0);
  assert.ok(Date.now() - t0 < 5000, 'nothing kept it alive');
  await waitFor(async () => (await srv.stats()).open === 0, 'the stream to be closed at teardown');
});
