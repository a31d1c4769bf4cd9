'use strict';
// The Agent as an undici Dispatcher: Node's global fetch (undici 6 inside Node 20),
// undici 7's fetch, request() and stream() with `dispatcher: agent` and with
// setGlobalDispatcher(agent), and both handler forms called by hand, against the test
// server (which counts connections): reuse, streamed bodies both ways, backpressure,
// abort, redirects, errors as fetch reports them, close() and destroy().

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { once } = require('node:events');
const { Readable, Writable } = require('node:stream');
const undici = require('undici');
const { Agent } = require('..');
const { startServer, closedPort } = require('./helpers');

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(check, what, ms = 3000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Resets the server's counters once the connections of earlier tests are closed. */
async function resetServer() {
  await waitFor(async () => (await srv.stats()).open === 0, 'earlier connections to close');
  await srv.reset();
}

/** The test server's body pattern: byte i is 'a' + i % 26. */
function isPattern(buf, offset = 0) {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 97 + ((offset + i) % 26)) return false;
  return true;
}

/** FNV-1a 64 of `chunks`, as the test server's `body_fnv`. */
function fnv1a(chunks) {
  let h = 0xcbf29ce484222325n;
  for (const chunk of chunks) for (const b of chunk) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return h.toString(16).padStart(16, '0');
}

const header = (echo, name) => echo.headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);

// The two fetches: Node's own (undici 6, the old handler form) and undici 7's.
const FETCHES = [
  ['global fetch', (url, init) => fetch(url, init)],
  ['undici.fetch', (url, init) => undici.fetch(url, init)],
];

/** Runs fn with `dispatcher` as the global dispatcher, then puts the previous one back. */
async function withGlobalDispatcher(dispatcher, fn) {
  const previous = undici.getGlobalDispatcher();
  undici.setGlobalDispatcher(dispatcher);
  try {
    return await fn();
  } finally {
    undici.setGlobalDispatcher(previous);
  }
}

/** A plain node:http server answering every request with a redirect to `location(req)`. */
async function redirector(location, status = 302) {
  const server = http.createServer((req, res) => {
    res.writeHead(status, { location: location(req), 'content-length': '0' });
    res.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

for (const [name, doFetch] of FETCHES) {
  test(`${name} with { dispatcher: agent }: GET, headers, ok; 5 requests, 1 connection`, async () => {
    await resetServer();
    const agent = new Agent();
    for (let i = 0; i < 5; i++) {
      const r = await doFetch(`${srv.http}?bytes=${1000 + i}`, { dispatcher: agent, headers: { 'x-try': String(i) } });
      assert.equal(r.status, 200);
      assert.equal(r.ok, true);
      assert.equal(r.statusText, 'OK');
      assert.equal(r.headers.get('content-length'), String(1000 + i));
      const body = Buffer.from(await r.arrayBuffer());
      assert.equal(body.length, 1000 + i);
      assert.ok(isPattern(body));
    }
    const s = agent.stats();
    assert.equal(s.requests, 5);
    assert.equal(s.connectionsOpened, 1);
    assert.equal(s.reusedRequests, 4);
    const server = await srv.stats();
    assert.equal(server.accepted, 1, 'the server saw one connection');
    assert.equal(server.requests, 5);
    const notFound = await doFetch(`${srv.http}?status=404`, { dispatcher: agent });
    assert.equal(notFound.status, 404);
    assert.equal(notFound.ok, false);
    await notFound.arrayBuffer();
    await agent.close();
    assert.equal(agent.destroyed, true);
  });

  test(`${name}: POST with a streamed body (ReadableStream, duplex: 'half'), chunked; a string body with its length`, async () => {
    const agent = new Agent();
    const pieces = [Buffer.from('first piece,'), Buffer.alloc(200_000, 7), Buffer.from('last')];
    const stream = new ReadableStream({
      async pull(controller) {
        await sleep(5);
        const next = pieces[stream.sent++];
        if (next === undefined) controller.close();
        else controller.enqueue(new Uint8Array(next));
      },
    });
    stream.sent = 0;
    const r = await doFetch(`${srv.http}?echo=1`, { dispatcher: agent, method: 'POST', body: stream, duplex: 'half' });
    const echo = await r.json();
    assert.equal(echo.method, 'POST');
    assert.equal(echo.body_len, 200_016);
    assert.equal(echo.body_fnv, fnv1a(pieces));
    assert.deepEqual(header(echo, 'transfer-encoding'), ['chunked']);

    const r2 = await doFetch(`${srv.http}?echo=1`, { dispatcher: agent, method: 'PUT', body: 'héllo' });
    const echo2 = await r2.json();
    assert.equal(echo2.method, 'PUT');
    assert.equal(echo2.body_len, 6);
    assert.deepEqual(header(echo2, 'content-length'), ['6']);
    assert.equal(agent.stats().connectionsOpened, 1);
    await agent.destroy();
  });

  test(`${name}: abort mid-body rejects the read with AbortError and closes the connection; the next request opens another`, async () => {
    await resetServer();
    const agent = new Agent();
    const ac = new AbortController();
    const r = await doFetch(`${srv.http}?bytes=${64 << 20}`, { dispatcher: agent, signal: ac.signal });
    const reader = r.body.getReader();
    const first = await reader.read();
    assert.equal(first.done, false);
    assert.ok(isPattern(first.value));
    ac.abort();
    const err = await (async () => {
      for (;;) {
        const { done } = await reader.read();
        if (done) return null;
      }
    })().catch((e) => e);
    assert.ok(err, 'the read failed');
    assert.equal(err.name, 'AbortError');
    const server = await waitFor(async () => {
      const s = await srv.stats();
      return s.open === 0 && s;
    }, 'the server to see the close');
    assert.equal(server.client_closed, 1);
    await waitFor(() => agent.stats().active === 0, 'the agent to drop the connection');
    const next = await doFetch(`${srv.http}?bytes=3`, { dispatcher: agent });
    assert.equal(await next.text(), 'abc');
    assert.equal(agent.stats().connectionsOpened, 2, 'the aborted connection was not reused');
    // Before the head: fetch rejects with the signal's AbortError and the engine lets go.
    const early = await doFetch(`${srv.http}?delay_ms=3000`, { dispatcher: agent, signal: AbortSignal.timeout(100) }).catch((e) => e);
    assert.equal(early.name, 'TimeoutError');
    await waitFor(() => agent.stats().active === 0, 'the agent to cancel the request');
    await agent.destroy();
  });

  test(`${name}: a redirect is followed by fetch (both hops on the agent); redirect: 'manual' gets the 3xx`, async () => {
    const agent = new Agent();
    const hop = await redirector(() => `${srv.http}?bytes=5`);
    try {
      const r = await doFetch(`${hop.url}/start`, { dispatcher: agent });
      assert.equal(r.status, 200);
      assert.equal(r.redirected, true);
      assert.equal(r.url, `${srv.http}?bytes=5`);
      assert.equal(await r.text(), 'abcde');
      assert.equal(agent.stats().requests, 2);
      const manual = await doFetch(`${hop.url}/start`, { dispatcher: agent, redirect: 'manual' });
      assert.equal(manual.status, 302);
      assert.equal(manual.headers.get('location'), `${srv.http}?bytes=5`);
      assert.equal(agent.stats(hop.url).connectionsOpened, 1, 'the redirecting origin reused its connection');
    } finally {
      await agent.destroy();
      await hop.close();
    }
  });

  test(`${name}: errors as fetch reports them: TypeError('fetch failed') with the agent's error as cause`, async () => {
    const agent = new Agent({ headersTimeout: 300, bodyTimeout: 300 });
    const port = await closedPort();
    const refused = await doFetch(`http://127.0.0.1:${port}/`, { dispatcher: agent }).catch((e) => e);
    assert.ok(refused instanceof TypeError);
    assert.equal(refused.message, 'fetch failed');
    assert.equal(refused.cause.code, 'ECONNREFUSED');
    assert.equal(refused.cause.agentCodeName, 'AGENT_CODE_CONNECT_REFUSED');

    const slowHead = await doFetch(`${srv.http}?delay_ms=3000`, { dispatcher: agent }).catch((e) => e);
    assert.equal(slowHead.message, 'fetch failed');
    assert.equal(slowHead.cause.code, 'UND_ERR_HEADERS_TIMEOUT');
    assert.equal(slowHead.cause.name, 'HeadersTimeoutError');
    assert.ok(slowHead.cause instanceof undici.errors.HeadersTimeoutError);
    assert.equal(slowHead.cause.agentCodeName, 'AGENT_CODE_HEADERS_TIMEOUT');

    const r = await doFetch(`${srv.http}?bytes=100&chunked=1&chunks=2&chunk_delay_ms=3000`, { dispatcher: agent });
    assert.equal(r.status, 200);
    const stalled = await r.text().catch((e) => e);
    assert.ok(stalled instanceof TypeError, 'the body read failed');
    assert.equal(stalled.cause.code, 'UND_ERR_BODY_TIMEOUT');
    assert.ok(stalled.cause instanceof undici.errors.BodyTimeoutError);

    const reset = await doFetch(`${srv.http}?bytes=${4 << 20}&rst_mid=1`, { dispatcher: agent })
      .then((res) => res.arrayBuffer())
      .catch((e) => e);
    assert.ok(reset instanceof TypeError, 'a reset mid-body fails the fetch');
    assert.equal(reset.cause.code, 'UND_ERR_SOCKET');
    assert.ok(reset.cause instanceof undici.errors.SocketError);
    await agent.destroy();
  });
}

test('a 256 MiB response through fetch, read chunk by chunk: RSS stays flat (growth < 64 MiB)', { timeout: 120_000 }, async () => {
  const agent = new Agent();
  try {
    const total = 256 << 20;
    if (global.gc) global.gc();
    const base = process.memoryUsage().rss;
    let peak = base;
    const r = await fetch(`${srv.http}?bytes=${total}`, { dispatcher: agent });
    assert.equal(r.headers.get('content-length'), String(total));
    let got = 0;
    let chunks = 0;
    for await (const chunk of r.body) {
      if (chunks % 512 === 0) {
        assert.ok(isPattern(chunk, got), `bytes at ${got}`);
        // Garbage is not growth: what is measured is what the body keeps alive (a missing
        // backpressure would keep the whole body in memory).
        if (global.gc) global.gc();
        peak = Math.max(peak, process.memoryUsage().rss);
      }
      got += chunk.length;
      chunks++;
    }
    assert.equal(got, total);
    assert.ok(chunks > 1, 'the body came in pieces');
    const growth = peak - base;
    assert.ok(growth < 64 << 20, `RSS grew ${(growth / 1048576).toFixed(1)} MiB`);
  } finally {
    await agent.destroy();
  }
});

test('setGlobalDispatcher(agent): global fetch, undici.fetch and undici.request run on the agent; restored afterwards', async () => {
  await resetServer();
  const agent = new Agent();
  const before = undici.getGlobalDispatcher();
  await withGlobalDispatcher(agent, async () => {
    assert.equal(undici.getGlobalDispatcher(), agent);
    const a = await fetch(`${srv.http}?bytes=4`);
    assert.equal(await a.text(), 'abcd');
    const b = await undici.fetch(`${srv.http}?bytes=5`);
    assert.equal(await b.text(), 'abcde');
    const c = await undici.request(`${srv.http}?bytes=6`);
    assert.equal(await c.body.text(), 'abcdef');
  });
  assert.equal(undici.getGlobalDispatcher(), before);
  assert.equal(agent.stats().requests, 3);
  assert.equal(agent.stats().reusedRequests, 2);
  assert.equal((await srv.stats()).accepted, 1);
  await agent.destroy();
});

test('undici.request with the agent: method, headers in every form, query, a Readable body; 5 requests, 1 connection', async () => {
  await resetServer();
  const agent = new Agent();
  const forms = [
    { 'x-one': '1', 'x-many': ['a', 'b'] },
    [
      ['x-one', '1'],
      ['x-many', 'a'],
      ['x-many', 'b'],
    ],
    ['x-one', '1', 'x-many', 'a', 'x-many', 'b'],
  ];
  for (const headers of forms) {
    const { statusCode, body } = await undici.request(srv.http, {
      dispatcher: agent,
      method: 'POST',
      headers,
      query: { echo: 1, q: 'a b', n: 2 },
      body: Readable.from([Buffer.from('streamed '), Buffer.from('body')]),
    });
    assert.equal(statusCode, 200);
    const echo = await body.json();
    assert.equal(echo.method, 'POST');
    assert.equal(echo.target, '/?echo=1&q=a%20b&n=2');
    assert.deepEqual(header(echo, 'x-one'), ['1']);
    assert.deepEqual(header(echo, 'x-many'), ['a', 'b']);
    assert.equal(echo.body_len, 13);
  }
  // options.origin + options.path, as undici.request(opts) passes them.
  const viaPath = await undici.request({ origin: srv.http, path: '/?bytes=7', method: 'GET', dispatcher: agent });
  assert.equal(await viaPath.body.text(), 'abcdefg');
  const head = await undici.request(`${srv.http}?bytes=7`, { dispatcher: agent, method: 'HEAD' });
  assert.equal(head.headers['content-length'], '7');
  assert.equal(await head.body.text(), '');
  assert.equal((await srv.stats()).accepted, 1);
  assert.equal(agent.stats().requests, 5);
  await agent.destroy();
});

test('undici.stream with the agent: the body goes to the factory\'s Writable, with backpressure', async () => {
  const agent = new Agent();
  const total = 8 << 20;
  let got = 0;
  let ok = true;
  const result = await undici.stream(`${srv.http}?bytes=${total}`, { dispatcher: agent, opaque: { tag: 't' } }, ({ statusCode, headers, opaque }) => {
    assert.equal(statusCode, 200);
    assert.equal(headers['content-length'], String(total));
    assert.equal(opaque.tag, 't');
    return new Writable({
      highWaterMark: 16 * 1024,
      write(chunk, _enc, cb) {
        ok = ok && isPattern(chunk, got);
        got += chunk.length;
        setImmediate(cb); // a slow writer: write() returns false, the agent waits for 'drain'
      },
    });
  });
  assert.equal(result.opaque.tag, 't');
  assert.equal(got, total);
  assert.ok(ok);
  await agent.destroy();
});

test('undici.request: per-request headersTimeout, a signal, and refused options reach the caller as undici\'s errors', async () => {
  const agent = new Agent();
  const slow = await undici.request(`${srv.http}?delay_ms=3000`, { dispatcher: agent, headersTimeout: 200 }).catch((e) => e);
  assert.equal(slow.code, 'UND_ERR_HEADERS_TIMEOUT');
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const aborted = await undici.request(`${srv.http}?delay_ms=3000`, { dispatcher: agent, signal: ac.signal }).catch((e) => e);
  assert.equal(aborted.name, 'AbortError');
  const badHeader = await undici.request(srv.http, { dispatcher: agent, headers: { 'transfer-encoding': 'chunked' } }).catch((e) => e);
  assert.equal(badHeader.code, 'UND_ERR_INVALID_ARG');
  assert.ok(badHeader instanceof undici.errors.InvalidArgumentError);
  const mismatch = await undici
    .request(srv.http, { dispatcher: agent, method: 'POST', body: 'abc', headers: { 'content-length': '5' } })
    .catch((e) => e);
  assert.equal(mismatch.code, 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH');
  const upgrade = await undici.upgrade(srv.http, { dispatcher: agent }).catch((e) => e);
  assert.equal(upgrade.code, 'UND_ERR_NOT_SUPPORTED');
  assert.match(upgrade.message, /upgrade/);
  await agent.destroy();
});

test('the old handler form by hand: onConnect, raw Buffer headers, onHeaders/onData returning false pause until resume()', async () => {
  const agent = new Agent();
  const total = 64 << 20;
  const events = [];
  let got = 0;
  let resume;
  let paused = false;
  let dataWhilePaused = 0;
  const done = new Promise((resolve, reject) => {
    const accepted = agent.dispatch(
      { origin: srv.http, path: `/?bytes=${total}`, method: 'GET', headers: { accept: '*/*' } },
      {
        onConnect(abort) {
          assert.equal(typeof abort, 'function');
          events.push('connect');
        },
        onHeaders(status, rawHeaders, r, statusText) {
          events.push('headers');
          assert.equal(status, 200);
          assert.equal(statusText, 'OK');
          assert.ok(rawHeaders.every((h) => Buffer.isBuffer(h)));
          const names = rawHeaders.filter((_, i) => i % 2 === 0).map(String);
          assert.ok(names.includes('content-length'));
          resume = r;
          return true;
        },
        onData(chunk) {
          if (paused) dataWhilePaused++;
          got += chunk.length;
          if (got >= 1 << 20 && !events.includes('paused')) {
            events.push('paused');
            paused = true;
            return false;
          }
          return true;
        },
        onComplete(trailers) {
          assert.deepEqual(trailers, []);
          events.push('complete');
          resolve();
        },
        onError: reject,
      },
    );
    assert.equal(accepted, true);
  });
  await waitFor(() => paused, 'the handler to pause');
  const externalAtPause = process.memoryUsage().arrayBuffers;
  await sleep(400);
  assert.equal(dataWhilePaused, 0, 'no data while paused');
  const held = process.memoryUsage().arrayBuffers - externalAtPause;
  assert.ok(held < 16 << 20, `the paused body was not read ahead (${held} bytes held)`);
  paused = false;
  resume();
  resume(); // resuming twice is harmless
  await done;
  assert.equal(got, total);
  assert.deepEqual(events, ['connect', 'headers', 'paused', 'complete']);
  await agent.destroy();
});

test('the new handler form by hand: controller pause/resume/abort, headers as an object, trailers {}', async () => {
  const agent = new Agent();
  // Complete, with a pause in onResponseStart.
  const seen = await new Promise((resolve, reject) => {
    const out = { chunks: 0, bytes: 0 };
    agent.dispatch(
      { origin: new URL(srv.http), path: '/?bytes=300000', method: 'GET' },
      {
        onRequestStart(controller, context) {
          assert.equal(typeof context, 'object');
          assert.equal(controller.aborted, false);
        },
        onResponseStart(controller, status, headers, statusMessage) {
          out.status = status;
          out.headers = headers;
          out.statusMessage = statusMessage;
          controller.pause();
          assert.equal(controller.paused, true);
          setTimeout(() => {
            out.pausedChunks = out.chunks;
            controller.resume();
          }, 100);
        },
        onResponseData(controller, chunk) {
          out.chunks++;
          out.bytes += chunk.length;
        },
        onResponseEnd(controller, trailers) {
          out.trailers = trailers;
          resolve(out);
        },
        onResponseError(controller, err) {
          reject(err);
        },
      },
    );
  });
  assert.equal(seen.status, 200);
  assert.equal(seen.statusMessage, 'OK');
  assert.equal(seen.headers['content-length'], '300000');
  assert.equal(seen.pausedChunks, 0, 'nothing while paused');
  assert.equal(seen.bytes, 300000);
  assert.deepEqual(seen.trailers, {});

  // Aborted mid-body: onResponseError with the reason, nothing after it.
  const reason = new Error('stop here');
  const after = [];
  const err = await new Promise((resolve) => {
    agent.dispatch(
      { origin: srv.http, path: `/?bytes=${32 << 20}`, method: 'GET' },
      {
        onRequestStart() {},
        onResponseStart() {},
        onResponseData(controller) {
          if (controller.aborted) after.push('data');
          else controller.abort(reason);
          assert.equal(controller.aborted, true);
        },
        onResponseEnd() {
          after.push('end');
        },
        onResponseError(controller, e) {
          after.push('error');
          resolve(e);
        },
      },
    );
  });
  assert.equal(err, reason);
  await sleep(50);
  assert.deepEqual(after, ['error']);
  await agent.destroy();
});

test('compose() with undici\'s redirect interceptor: undici.request follows the redirect on the agent', async () => {
  const agent = new Agent();
  const hop = await redirector(() => `${srv.http}?bytes=8`, 307);
  try {
    const composed = agent.compose(undici.interceptors.redirect({ maxRedirections: 2 }));
    const res = await undici.request(`${hop.url}/go`, { dispatcher: composed });
    assert.equal(res.statusCode, 200);
    assert.equal(await res.body.text(), 'abcdefgh');
    assert.equal(composed.stats().requests, 2, 'the composed dispatcher is the agent');
    const plain = await undici.request(`${hop.url}/go`, { dispatcher: agent });
    assert.equal(plain.statusCode, 307, 'without the interceptor, the 3xx is returned');
    await plain.body.dump();
  } finally {
    await agent.destroy();
    await hop.close();
  }
});

test('close() waits for requests in flight, then refuses new ones; destroy(err) fails dispatched requests with err', async () => {
  const agent = new Agent();
  const inFlight = undici.request(`${srv.http}?bytes=5&delay_ms=300`, { dispatcher: agent });
  const direct = agent.request(`${srv.http}?bytes=4&delay_ms=300`);
  await sleep(50);
  const closing = agent.close();
  assert.equal(agent.closed, true);
  assert.equal(agent.destroyed, false, 'still serving its requests');
  const refused = await undici.request(srv.http, { dispatcher: agent }).catch((e) => e);
  assert.equal(refused.code, 'UND_ERR_CLOSED');
  await assert.rejects(agent.request(srv.http), { code: 'ERR_AGENT_CLOSED' });
  const res = await inFlight;
  assert.equal(await res.body.text(), 'abcde');
  assert.equal((await direct).body.toString(), 'abcd');
  await closing;
  assert.equal(agent.destroyed, true);
  const afterDestroy = await undici.request(srv.http, { dispatcher: agent }).catch((e) => e);
  assert.equal(afterDestroy.code, 'UND_ERR_DESTROYED');
  // Callback forms.
  await new Promise((resolve, reject) => agent.close((e) => (e ? reject(e) : resolve())));
  await new Promise((resolve) => agent.destroy(resolve));

  const other = new Agent();
  const pending = undici.request(`${srv.http}?delay_ms=3000`, { dispatcher: other }).catch((e) => e);
  await sleep(50);
  const why = new Error('shutting down');
  await other.destroy(why);
  assert.equal(await pending, why);
  const closedAfter = await new Promise((resolve) => other.close((e) => resolve(e)));
  assert.equal(closedAfter.code, 'UND_ERR_DESTROYED');
});

test('dispatch() refuses what it cannot do: bad options and upgrades go to the handler\'s error callback', async () => {
  const agent = new Agent();
  const errors = [];
  const handler = {
    onConnect() {},
    onHeaders() {},
    onData() {},
    onComplete() {},
    onError: (e) => errors.push(e),
    onUpgrade() {},
  };
  assert.equal(agent.dispatch({ origin: srv.http, path: 'no-slash', method: 'GET' }, handler), false);
  assert.equal(agent.dispatch({ origin: srv.http, path: '/', method: 'GET', upgrade: 'websocket' }, handler), false);
  assert.equal(agent.dispatch({ origin: srv.http, path: '/', method: 'CONNECT' }, handler), false);
  assert.equal(agent.dispatch({ origin: srv.http, path: '/', method: 'GET', maxRedirections: 3 }, handler), false);
  assert.equal(agent.dispatch({ origin: srv.http, path: '/', method: 'GET', body: 42 }, handler), false);
  assert.deepEqual(
    errors.map((e) => e.code),
    ['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED', 'UND_ERR_NOT_SUPPORTED', 'UND_ERR_INVALID_ARG', 'UND_ERR_INVALID_ARG'],
  );
  assert.match(errors[1].message, /does not support upgrades/);
  assert.throws(() => agent.dispatch({}, null), { code: 'UND_ERR_INVALID_ARG' });
  assert.throws(() => agent.dispatch({}, { onHeaders() {} }), { code: 'UND_ERR_INVALID_ARG', message: /onConnect/ });
  await agent.destroy();
});

test('responses have ok (status 200-299), from request() and stream()', async () => {
  const agent = new Agent();
  for (const [status, ok] of [
    [200, true],
    [204, true],
    [299, true],
    [302, false],
    [404, false],
    [500, false],
  ]) {
    const res = await agent.request(`${srv.http}?status=${status}`);
    assert.equal(res.statusCode, status);
    assert.equal(res.ok, ok, `request() ${status}`);
    const s = await agent.stream(`${srv.http}?status=${status}`);
    assert.equal(s.ok, ok, `stream() ${status}`);
    s.body.resume();
    await once(s.body, 'end');
  }
  await agent.destroy();
});

test('option errors from the library name Node\'s options, not the C ones', () => {
  const notPem = () => new Agent({ ca: 'not a certificate' });
  assert.throws(notPem, (e) => e.code === 'ERR_INVALID_ARG_VALUE' && /^ca holds no PEM/.test(e.message) && !/ca_pem/.test(e.message));
  const key = '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n';
  assert.throws(
    () => new Agent({ cert: 'not a certificate', key }),
    (e) => /^cert holds no PEM/.test(e.message) && !/client_cert/.test(e.message),
  );
  assert.throws(() => new Agent({ proxy: 'ftp://127.0.0.1:1' }), (e) => /^proxy /.test(e.message));
  // The table, on messages the library gives for options Node validates before it does.
  const { _nodeOptionNames: rename } = require('..');
  assert.equal(rename('max_response_bytes = 5 is out of range'), 'maxResponseSize = 5 is out of range');
  assert.equal(rename('keep_alive_msecs = 9 is out of range (0..=32767000)'), 'keepAliveMsecs = 9 is out of range (0..=32767000)');
  assert.equal(rename('free_socket_timeout_msecs and keep_alive_timeout_buffer_msecs'), 'timeout and keepAliveTimeoutBuffer');
  assert.equal(
    rename('a client certificate needs its private key (client_key_pem or client_key_file)'),
    'a client certificate needs its private key (key)',
  );
  assert.equal(rename('ca_file /x: not found'), 'ca /x: not found');
  assert.equal(rename('max_sockets_x stays'), 'max_sockets_x stays', 'only whole names');
});
