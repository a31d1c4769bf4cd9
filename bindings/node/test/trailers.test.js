'use strict';
// Response trailers: `trailers` / `rawTrailers` of request() and stream() responses, and what
// the Dispatcher hands undici (onResponseEnd's object, onComplete's Buffers, so that
// undici.request's `trailers` fill in), over h2c (the test server's prior-knowledge listener,
// whose `?trailers=1` ends the body with `x-checksum: <FNV-1a 64 of the body>`) and over a
// chunked HTTP/1.1 body (a node:http server with addTrailers, whose trailers Node's own
// client reads too: ours must be the same object).

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { once } = require('node:events');
const undici = require('undici');
const { Agent } = require('..');
const { startServer } = require('./helpers');

const REQ = { timeout: 10_000 };

let srv;
let h2c; // base URL of the h2c listener, ending in '/'
test.before(async () => {
  srv = await startServer();
  h2c = `http://127.0.0.1:${srv.info.h2c_port}/`;
});
test.after(async () => {
  await srv.stop();
});

/** `n` bytes of the test server's `?bytes=` body from `offset`: 'a' + i % 26. */
function pattern(offset, n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = 97 + ((offset + i) % 26);
  return b;
}

/** FNV-1a 64 of `data` as 16 hex digits (the test server's checksum), by the definition. */
function fnv1a64(data) {
  let h = 0xcbf29ce484222325n;
  for (const byte of data) h = ((h ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return h.toString(16).padStart(16, '0');
}

const BODY = pattern(0, 100);
const CHECKSUM = fnv1a64(BODY);

async function readAll(readable) {
  const chunks = [];
  for await (const c of readable) chunks.push(c);
  return Buffer.concat(chunks);
}

test('the checksum helper matches the test server', async () => {
  // The server's own echo hashes a body with the same function.
  const agent = new Agent();
  try {
    const res = await agent.request({ method: 'POST', url: `${srv.http}?echo=1`, body: BODY, ...REQ });
    assert.equal(JSON.parse(res.body).body_fnv, CHECKSUM);
  } finally {
    agent.destroy();
  }
});

// ---------------------------------------------------------------------------------------
// request() and stream()

test('request() over h2c: trailers and rawTrailers; {} and [] without them, over HTTP/2 and HTTP/1.1', async () => {
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  const plain = new Agent();
  try {
    const res = await agent.request(`${h2c}?bytes=100&trailers=1`, REQ);
    assert.equal(res.httpVersion, '2.0');
    assert.deepEqual(res.body, BODY);
    assert.deepEqual(res.trailers, { 'x-checksum': CHECKSUM });
    assert.deepEqual(res.rawTrailers, ['x-checksum', CHECKSUM]);
    assert.equal(res.headers['x-checksum'], undefined);

    const none = await agent.request(`${h2c}?bytes=100`, REQ);
    assert.deepEqual(none.body, BODY);
    assert.deepEqual(none.trailers, {});
    assert.deepEqual(none.rawTrailers, []);
    const h1 = await plain.request(`${srv.http}?bytes=100`, REQ);
    assert.equal(h1.httpVersion, '1.1');
    assert.deepEqual(h1.trailers, {});
    assert.deepEqual(h1.rawTrailers, []);
    // One shared, frozen pair for every response without trailers.
    assert.equal(h1.trailers, none.trailers);
    assert.equal(h1.rawTrailers, none.rawTrailers);
    assert.ok(Object.isFrozen(h1.trailers) && Object.isFrozen(h1.rawTrailers));
    // A large body (lent to an external Buffer) keeps its trailers too.
    const big = await agent.request(`${h2c}?bytes=${256 * 1024}&trailers=1`, REQ);
    assert.equal(big.body.length, 256 * 1024);
    assert.deepEqual(big.trailers, { 'x-checksum': fnv1a64(pattern(0, 256 * 1024)) });
  } finally {
    agent.destroy();
    plain.destroy();
  }
});

test('stream() over h2c: trailers are set when the body ends, before its end event', async () => {
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  try {
    const res = await agent.stream(`${h2c}?bytes=100&trailers=1`, REQ);
    assert.deepEqual(res.trailers, {}); // nothing read yet
    assert.deepEqual(res.rawTrailers, []);
    let atEnd = null;
    res.body.once('end', () => {
      atEnd = { trailers: res.trailers, raw: res.rawTrailers, body: res.body.trailers, total: res.timings.total };
    });
    assert.deepEqual(await readAll(res.body), BODY);
    assert.deepEqual(atEnd.trailers, { 'x-checksum': CHECKSUM });
    assert.deepEqual(atEnd.raw, ['x-checksum', CHECKSUM]);
    assert.equal(atEnd.body, atEnd.trailers); // the body (a Readable) shows them too, as IncomingMessage
    assert.deepEqual(res.body.rawTrailers, ['x-checksum', CHECKSUM]);
    assert.ok(atEnd.total > 0);

    const none = await agent.stream(`${h2c}?bytes=100`, REQ);
    assert.deepEqual(await readAll(none.body), BODY);
    assert.deepEqual(none.trailers, {});
    assert.deepEqual(none.rawTrailers, []);

    // Destroyed before its end: none.
    const early = await agent.stream(`${h2c}?bytes=${1024 * 1024}&trailers=1`, REQ);
    for await (const chunk of early.body) {
      assert.ok(chunk.length > 0);
      break;
    }
    assert.deepEqual(early.trailers, {});
    assert.deepEqual(early.body.trailers, {});
  } finally {
    agent.destroy();
  }
});

test('request() with a streamed request body: the whole response keeps the trailers', async () => {
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  try {
    const res = await agent.request({
      method: 'POST',
      url: `${h2c}?bytes=100&trailers=1`,
      body: (async function* () {
        yield 'x';
      })(),
      ...REQ,
    });
    assert.deepEqual(res.body, BODY);
    assert.deepEqual(res.trailers, { 'x-checksum': CHECKSUM });
  } finally {
    agent.destroy();
  }
});

// ---------------------------------------------------------------------------------------
// A chunked HTTP/1.1 body: the same trailers object as Node's own client

/** A node:http server: `/trailers` sends a chunked body with trailer lines, `/plain` a Content-Length one. */
async function chunkedServer() {
  const server = http.createServer((req, res) => {
    if (req.url === '/trailers') {
      res.writeHead(200, { 'content-type': 'text/plain', trailer: 'X-Sum, Set-Cookie, X-Other' });
      res.write('hel');
      res.addTrailers([
        ['X-Sum', 'abc'],
        ['x-sum', 'def'],
        ['Set-Cookie', 'a=1'],
        ['Set-Cookie', 'b=2'],
        ['Server', 'one'],
        ['Server', 'two'],
        ['X-Other', 'v'],
      ]);
      res.end('lo');
    } else {
      res.writeHead(200, { 'content-length': '5' });
      res.end('hello');
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

/** GET with Node's own client: [body, trailers, rawTrailers]. */
function nodeGet(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve([Buffer.concat(chunks).toString(), res.trailers, res.rawTrailers]));
      })
      .on('error', reject);
  });
}

test('a chunked HTTP/1.1 body: trailers as IncomingMessage.trailers has them (repeats joined, set-cookie an array)', async () => {
  const server = await chunkedServer();
  const agent = new Agent();
  try {
    const [text, nodeTrailers, nodeRaw] = await nodeGet(`${server.url}/trailers`);
    assert.equal(text, 'hello');
    assert.deepEqual(nodeTrailers, {
      'x-sum': 'abc, def',
      'set-cookie': ['a=1', 'b=2'],
      server: 'one',
      'x-other': 'v',
    });

    const res = await agent.request(`${server.url}/trailers`, REQ);
    assert.equal(res.httpVersion, '1.1');
    assert.equal(res.body.toString(), 'hello');
    assert.deepEqual(res.trailers, { ...nodeTrailers });
    // rawTrailers: Node's, with the engine's lowercase names.
    assert.deepEqual(res.rawTrailers, nodeRaw.map((v, i) => (i % 2 === 0 ? v.toLowerCase() : v)));

    const plain = await agent.request(`${server.url}/plain`, REQ);
    assert.equal(plain.reusedSocket, true);
    assert.deepEqual(plain.trailers, {});

    const s = await agent.stream(`${server.url}/trailers`, REQ);
    assert.equal((await readAll(s.body)).toString(), 'hello');
    assert.deepEqual(s.trailers, { ...nodeTrailers });
  } finally {
    agent.destroy();
    await server.close();
  }
});

// ---------------------------------------------------------------------------------------
// The Dispatcher

test('undici.request with the agent: `trailers` fill in once the body is consumed; {} without', async () => {
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  try {
    const { statusCode, body, trailers } = await undici.request(`${h2c}?bytes=100&trailers=1`, { dispatcher: agent });
    assert.equal(statusCode, 200);
    assert.deepEqual(trailers, {}); // not yet
    assert.deepEqual(Buffer.from(await body.arrayBuffer()), BODY);
    assert.deepEqual(trailers, { 'x-checksum': CHECKSUM });

    const none = await undici.request(`${h2c}?bytes=100`, { dispatcher: agent });
    await none.body.dump();
    assert.deepEqual(none.trailers, {});

    // fetch ignores trailers, and still reads the body.
    const f = await fetch(`${h2c}?bytes=100&trailers=1`, { dispatcher: agent });
    assert.equal(await f.text(), BODY.toString());
    const u = await undici.fetch(`${h2c}?bytes=100&trailers=1`, { dispatcher: agent });
    assert.equal(await u.text(), BODY.toString());
  } finally {
    agent.destroy();
  }
});

/** Dispatches a GET by hand with `handler`; resolves with what its end callback got. */
function dispatchEnd(agent, url, modern) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const chunks = [];
    const handler = modern
      ? {
          onRequestStart() {},
          onResponseStart() {},
          onResponseData(controller, chunk) {
            chunks.push(chunk);
          },
          onResponseEnd(controller, trailers) {
            resolve([Buffer.concat(chunks), trailers]);
          },
          onResponseError(controller, err) {
            reject(err);
          },
        }
      : {
          onConnect() {},
          onHeaders() {
            return true;
          },
          onData(chunk) {
            chunks.push(chunk);
            return true;
          },
          onComplete(rawTrailers) {
            resolve([Buffer.concat(chunks), rawTrailers]);
          },
          onError: reject,
        };
    agent.dispatch({ origin: u.origin, path: u.pathname + u.search, method: 'GET' }, handler);
  });
}

test('dispatch(): onResponseEnd gets the trailers object, onComplete the raw Buffers; empty without', async () => {
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  try {
    let [body, trailers] = await dispatchEnd(agent, `${h2c}?bytes=100&trailers=1`, true);
    assert.deepEqual(body, BODY);
    assert.deepEqual(trailers, { 'x-checksum': CHECKSUM });
    [body, trailers] = await dispatchEnd(agent, `${h2c}?bytes=100&trailers=1`, false);
    assert.deepEqual(body, BODY);
    assert.ok(trailers.every((b) => Buffer.isBuffer(b)));
    assert.deepEqual(trailers, [Buffer.from('x-checksum'), Buffer.from(CHECKSUM)]);

    [, trailers] = await dispatchEnd(agent, `${h2c}?bytes=100`, true);
    assert.deepEqual(trailers, {});
    assert.ok(!Object.isFrozen(trailers)); // the handler's own object
    [, trailers] = await dispatchEnd(agent, `${h2c}?bytes=100`, false);
    assert.deepEqual(trailers, []);
  } finally {
    agent.destroy();
  }
});

// ---------------------------------------------------------------------------------------
// Nothing kept

test('5,000 responses with trailers, whole and streamed: the resident set stays flat', { timeout: 120_000 }, async () => {
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  const url = `${h2c}?bytes=100&trailers=1`;
  const round = async (n) => {
    for (let i = 0; i < n; i += 50) {
      const batch = [];
      for (let j = 0; j < 25; j++) {
        batch.push(agent.request(url, REQ).then((r) => assert.equal(r.trailers['x-checksum'], CHECKSUM)));
        batch.push(
          agent.stream(url, REQ).then(async (r) => {
            await readAll(r.body);
            assert.equal(r.rawTrailers[1], CHECKSUM);
          }),
        );
      }
      await Promise.all(batch);
    }
  };
  try {
    await round(1000); // warm up
    if (global.gc) global.gc();
    const before = process.memoryUsage().rss;
    await round(5000);
    if (global.gc) global.gc();
    const growth = process.memoryUsage().rss - before;
    assert.ok(growth < 24 * 1024 * 1024, `resident set grew by ${(growth / 1048576).toFixed(1)} MiB`);
  } finally {
    agent.destroy();
  }
});
