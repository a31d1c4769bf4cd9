'use strict';
// HTTP/2: the httpVersion option against nginx (scripts/nginx.sh: NGINX_H2_URL offers h2 and
// http/1.1 by ALPN, NGINX_H2C_URL speaks HTTP/2 without TLS, NGINX_HTTPS_URL only
// HTTP/1.1), connections counted by nginx's stub_status; stream resets from node:http2's
// own server (h2c on loopback); the AWS SDK's DynamoDB client over h2.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const http2 = require('node:http2');
const path = require('node:path');
const { DynamoDBClient, GetItemCommand } = require('@aws-sdk/client-dynamodb');
const { Agent, codes } = require('..');
const { KeepAliveHttpHandler } = require('../aws');
const { startScript, stopScript } = require('./helpers');

const REQ = { timeout: 15_000 }; // every request of this file is bounded
const HELLO = 'hello, world\n';

let ng; // scripts/nginx.sh
let CA; // the CA of nginx's leaf (PEM)
let BIG; // www/1m.bin, the bytes nginx serves as /1m.bin

test.before(async () => {
  ng = await startScript('nginx.sh');
  CA = fs.readFileSync(ng.NGINX_CA_FILE, 'utf8');
  BIG = fs.readFileSync(path.join(ng.NGINX_DIR, 'www', ng.NGINX_BIG_PATH));
});

test.after(async () => {
  if (ng) await stopScript('nginx.sh', ng.NGINX_DIR);
});

// ---------------------------------------------------------------------------------------
// nginx's connection counter

let statusReads = 0;

/**
 * stub_status "accepts" minus the reads of /status made so far: each read is itself one
 * accepted connection, so the difference of two calls is the connections others made in
 * between (as tests/nginx/interop.c's nginx_accepts counts). Read with Node's own http.
 */
async function nginxAccepts() {
  const text = await new Promise((resolve, reject) => {
    const req = http.get(ng.NGINX_STATUS_URL, { agent: false, timeout: 10_000 }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (data += d));
      res.on('end', () => resolve(data));
    });
    req.on('timeout', () => req.destroy(new Error('no answer from /status within 10 s')));
    req.on('error', reject);
  });
  const m = /server accepts handled requests\s+(\d+)/.exec(text);
  assert.ok(m, `unexpected /status answer: ${text}`);
  statusReads++;
  return Number(m[1]) - statusReads;
}

/** Runs fn; resolves with [its result, the connections nginx accepted meanwhile]. */
async function counted(fn) {
  const before = await nginxAccepts();
  const out = await fn();
  return [out, (await nginxAccepts()) - before];
}

async function readAll(readable) {
  const chunks = [];
  for await (const c of readable) chunks.push(c);
  return Buffer.concat(chunks);
}

// ---------------------------------------------------------------------------------------
// Versions

test("httpVersion 'auto' against an h2 origin: HTTP/2 ('2.0', 2, 0) for request() and stream(), one connection", { timeout: 30_000 }, async () => {
  const agent = new Agent({ httpVersion: 'auto', ca: CA });
  const [res, conns] = await counted(async () => {
    const r = await agent.request(ng.NGINX_H2_URL, REQ);
    const s = await agent.stream(ng.NGINX_H2_URL, REQ);
    s.body = (await readAll(s.body)).toString();
    return [r, s];
  });
  for (const r of res) {
    assert.equal(r.statusCode, 200);
    assert.equal(r.httpVersion, '2.0');
    assert.equal(r.httpVersionMajor, 2);
    assert.equal(r.httpVersionMinor, 0);
    assert.equal(r.headers.server, 'nginx');
    assert.equal(r.headers.connection, undefined, 'no connection header in HTTP/2');
  }
  assert.equal(res[0].body.toString(), HELLO);
  assert.equal(res[1].body, HELLO);
  assert.equal(res[0].reusedSocket, false);
  assert.equal(res[1].reusedSocket, true, 'the second stream went out on the same connection');
  assert.equal(conns, 1);
  const s = agent.stats();
  assert.equal(s.h2Connections, 1);
  assert.equal(s.connectionsOpened, 1);
  assert.equal(s.h2Streams, 2);
  assert.equal(s.requests, 2);
  const origin = agent.stats(ng.NGINX_H2_URL.slice(0, -1));
  assert.equal(origin.h2Connections, 1);
  assert.equal(origin.h2Streams, 2);
  agent.destroy();
});

test("httpVersion 'http1' (and the default) against the same h2 origin: HTTP/1.1", { timeout: 30_000 }, async () => {
  for (const options of [{ httpVersion: 'http1' }, {}]) {
    const agent = new Agent({ ...options, ca: CA });
    const r = await agent.request(ng.NGINX_H2_URL, REQ);
    const s = await agent.stream(ng.NGINX_H2_URL, REQ);
    assert.equal((await readAll(s.body)).toString(), HELLO);
    for (const x of [r, s]) {
      assert.equal(x.statusCode, 200);
      assert.equal(x.httpVersion, '1.1', JSON.stringify(options));
      assert.equal(x.httpVersionMajor, 1);
      assert.equal(x.httpVersionMinor, 1);
    }
    assert.equal(r.body.toString(), HELLO);
    const st = agent.stats();
    assert.equal(st.h2Connections, 0);
    assert.equal(st.h2Streams, 0);
    assert.equal(st.requests, 2);
    agent.destroy();
  }
});

test('64 requests at once with one agent: all HTTP/2, one connection at nginx, 63 reused streams', { timeout: 60_000 }, async () => {
  const agent = new Agent({ httpVersion: 'auto', ca: CA });
  const [all, conns] = await counted(() => Promise.all(Array.from({ length: 64 }, () => agent.request(ng.NGINX_H2_URL, REQ))));
  assert.equal(all.length, 64);
  for (const r of all) {
    assert.equal(r.statusCode, 200);
    assert.equal(r.httpVersion, '2.0');
    assert.equal(r.body.toString(), HELLO);
  }
  assert.equal(conns, 1, 'nginx accepted one connection for the 64 requests');
  assert.equal(all.filter((r) => r.reusedSocket).length, 63);
  const s = agent.stats();
  assert.equal(s.h2Connections, 1);
  assert.equal(s.connectionsOpened, 1);
  assert.equal(s.h2Streams, 64);
  assert.equal(s.requests, 64);
  assert.equal(s.reusedRequests, 63);
  assert.equal(s.errors, 0);
  agent.destroy();
});

test("httpVersion 'h2c-prior-knowledge' against nginx's h2c port: HTTP/2 without TLS", { timeout: 30_000 }, async () => {
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  const [r, conns] = await counted(async () => {
    const first = await agent.request(ng.NGINX_H2C_URL, REQ);
    const s = await agent.stream(ng.NGINX_H2C_URL, REQ);
    assert.equal(s.httpVersion, '2.0');
    assert.equal((await readAll(s.body)).toString(), HELLO);
    return first;
  });
  assert.equal(r.statusCode, 200);
  assert.equal(r.httpVersion, '2.0');
  assert.equal(r.httpVersionMajor, 2);
  assert.equal(r.body.toString(), HELLO);
  assert.equal(conns, 1);
  assert.equal(agent.stats().h2Connections, 1);
  agent.destroy();

  // Without prior knowledge, plain http stays HTTP/1.1 with 'auto' and 'http2'.
  for (const httpVersion of ['auto', 'http2']) {
    const a = new Agent({ httpVersion });
    const plain = await a.request(ng.NGINX_HTTP_URL, REQ);
    assert.equal(plain.httpVersion, '1.1', httpVersion);
    assert.equal(plain.body.toString(), HELLO);
    assert.equal(a.stats().h2Connections, 0);
    a.destroy();
  }
});

test("httpVersion 'http2' against an HTTP/1.1-only TLS server rejects (TLS alert); 'auto' falls back to HTTP/1.1", { timeout: 30_000 }, async () => {
  const strict = new Agent({ httpVersion: 'http2', ca: CA });
  const err = await strict.request(ng.NGINX_HTTPS_URL, REQ).catch((e) => e);
  assert.ok(err instanceof Error, String(err));
  assert.equal(err.code, 'AGENT_CODE_TLS');
  assert.equal(err.agentCode, codes.TLS);
  assert.equal(err.agentCodeName, 'AGENT_CODE_TLS');
  assert.match(err.message, /NoApplicationProtocol/);
  const streamErr = await strict.stream(ng.NGINX_HTTPS_URL, REQ).catch((e) => e);
  assert.equal(streamErr.code, 'AGENT_CODE_TLS');
  // And h2 where the server offers it.
  const ok = await strict.request(ng.NGINX_H2_URL, REQ);
  assert.equal(ok.httpVersion, '2.0');
  strict.destroy();

  const auto = new Agent({ httpVersion: 'auto', ca: CA });
  const r = await auto.request(ng.NGINX_HTTPS_URL, REQ);
  assert.equal(r.statusCode, 200);
  assert.equal(r.httpVersion, '1.1');
  assert.equal(r.body.toString(), HELLO);
  assert.equal(auto.stats().h2Connections, 0);
  auto.destroy();
});

test("keepAlive false with 'http2': 5 requests, 5 connections at nginx, none reused", { timeout: 30_000 }, async () => {
  const agent = new Agent({ httpVersion: 'http2', keepAlive: false, ca: CA });
  const [res, conns] = await counted(async () => {
    const out = [];
    for (let i = 0; i < 5; i++) out.push(await agent.request(ng.NGINX_H2_URL, REQ));
    return out;
  });
  for (const r of res) {
    assert.equal(r.httpVersion, '2.0');
    assert.equal(r.body.toString(), HELLO);
    assert.equal(r.reusedSocket, false);
  }
  assert.equal(conns, 5);
  const s = agent.stats();
  assert.equal(s.h2Connections, 5);
  assert.equal(s.connectionsOpened, 5);
  assert.equal(s.reusedRequests, 0);
  agent.destroy();
});

test('the 1 MiB file over h2, whole and through stream(), byte for byte', { timeout: 60_000 }, async () => {
  assert.equal(BIG.length, 1 << 20);
  const agent = new Agent({ httpVersion: 'auto', ca: CA });
  const url = ng.NGINX_H2_URL + ng.NGINX_BIG_PATH;
  const whole = await agent.request(url, REQ);
  assert.equal(whole.httpVersion, '2.0');
  assert.equal(whole.headers['content-length'], String(BIG.length));
  assert.ok(whole.body.equals(BIG), 'request(): the body is the file');

  const s = await agent.stream(url, REQ);
  assert.equal(s.httpVersion, '2.0');
  assert.equal(s.httpVersionMajor, 2);
  const streamed = await readAll(s.body);
  assert.ok(streamed.equals(BIG), 'stream(): the body is the file');
  assert.ok(s.timings.total > 0);

  // Both at once on the one connection.
  const [a, b] = await Promise.all([agent.request(url, REQ), agent.stream(url, REQ).then((r) => readAll(r.body))]);
  assert.ok(a.body.equals(BIG));
  assert.ok(b.equals(BIG));
  const st = agent.stats();
  assert.equal(st.h2Connections, 1);
  assert.equal(st.h2Streams, 4);
  agent.destroy();
});

// ---------------------------------------------------------------------------------------
// The AWS SDK

test('DynamoDB GetItem through KeepAliveHttpHandler({ httpVersion: "auto" }) over h2: the canned item, one h2 connection', { timeout: 60_000 }, async () => {
  const handler = new KeepAliveHttpHandler({ httpVersion: 'auto', ca: CA });
  assert.equal(handler.agent.options.httpVersion, 'auto');
  const ddb = new DynamoDBClient({
    endpoint: `${ng.NGINX_H2_URL}dynamodb`,
    region: 'us-east-1',
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    requestHandler: handler,
  });
  const input = { TableName: 'bench', Key: { id: { S: 'bench' } } };
  const [items, conns] = await counted(async () => {
    const out = [await ddb.send(new GetItemCommand(input))];
    out.push(...(await Promise.all(Array.from({ length: 8 }, () => ddb.send(new GetItemCommand(input))))));
    return out;
  });
  for (const got of items) {
    assert.equal(got.$metadata.httpStatusCode, 200);
    assert.deepEqual(got.Item, { id: { S: 'bench' }, n: { N: '42' }, payload: { S: '0123456789abcdef' } });
  }
  assert.equal(conns, 1);
  const s = handler.agent.stats();
  assert.equal(s.h2Connections, 1);
  assert.equal(s.h2Streams, 9);
  assert.equal(s.connectionsOpened, 1);
  ddb.destroy();

  // Left out, the handler speaks HTTP/1.1 (the library's default), to the same origin.
  const h1 = new KeepAliveHttpHandler({ ca: CA });
  const ddb1 = new DynamoDBClient({
    endpoint: `${ng.NGINX_H2_URL}dynamodb`,
    region: 'us-east-1',
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    requestHandler: h1,
  });
  const got = await ddb1.send(new GetItemCommand(input));
  assert.equal(got.Item.id.S, 'bench');
  assert.equal(h1.agent.stats().h2Connections, 0);
  assert.equal(h1.agent.stats().requests, 1);
  ddb1.destroy();
});

test('KeepAliveHttpHandler: updateHttpClientConfig("httpVersion") takes effect on the next request', { timeout: 30_000 }, async () => {
  const handler = new KeepAliveHttpHandler({ ca: CA });
  const request = { method: 'GET', protocol: 'https:', hostname: '127.0.0.1', port: ng.NGINX_H2_PORT, path: '/', headers: {} };
  const first = await handler.handle(request);
  assert.equal((await readAll(first.response.body)).toString(), HELLO);
  assert.equal(handler.agent.stats().h2Connections, 0);
  handler.updateHttpClientConfig('httpVersion', 'http2');
  const second = await handler.handle(request);
  assert.equal((await readAll(second.response.body)).toString(), HELLO);
  assert.equal(handler.agent.options.httpVersion, 'http2');
  assert.equal(handler.agent.stats().h2Connections, 1);
  handler.destroy();
});

// ---------------------------------------------------------------------------------------
// Stream resets (node:http2's server, h2c on loopback)

/** A node:http2 h2c server; `handlers[path](stream, headers)` answers, or 'ok'. */
async function h2cServer(handlers) {
  const server = http2.createServer();
  const counts = { sessions: 0, streams: 0 };
  server.on('session', () => counts.sessions++);
  server.on('stream', (stream, headers) => {
    counts.streams++;
    stream.on('error', () => {}); // the resets this server makes itself
    const h = handlers[headers[':path']];
    if (h) return h(stream, headers);
    stream.respond({ ':status': 200, 'content-type': 'text/plain' });
    stream.end('ok');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    counts,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
}

test("a stream reset by the server rejects with code 'ERR_HTTP2_STREAM_ERROR' (AGENT_CODE_STREAM_RESET); the connection's other streams go on", { timeout: 30_000 }, async () => {
  const srv = await h2cServer({
    // RST_STREAM INTERNAL_ERROR before any response.
    '/reset': (stream) => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR),
    // Head and part of the body, then RST_STREAM INTERNAL_ERROR (no END_STREAM).
    '/reset-mid-body': (stream) => {
      stream.respond({ ':status': 200 });
      stream.write('partial', () => setTimeout(() => stream.destroy(new Error('reset by the test')), 20));
    },
  });
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  try {
    const isReset = (e, reason) => {
      assert.ok(e instanceof Error, String(e));
      assert.equal(e.code, 'ERR_HTTP2_STREAM_ERROR');
      assert.equal(e.agentCode, codes.STREAM_RESET);
      assert.equal(e.agentCodeName, 'AGENT_CODE_STREAM_RESET');
      assert.match(e.message, new RegExp(`RST_STREAM ${reason}`));
      return true;
    };
    const [reset, ok] = await Promise.allSettled([agent.request(`${srv.url}/reset`, REQ), agent.request(`${srv.url}/ok`, REQ)]);
    assert.equal(reset.status, 'rejected');
    isReset(reset.reason, 'INTERNAL_ERROR');
    assert.equal(ok.status, 'fulfilled');
    assert.equal(ok.value.httpVersion, '2.0');
    assert.equal(ok.value.body.toString(), 'ok');

    await assert.rejects(agent.request(`${srv.url}/reset-mid-body`, REQ), (e) => isReset(e, 'INTERNAL_ERROR'));
    const s = await agent.stream(`${srv.url}/reset-mid-body`, REQ);
    assert.equal(s.statusCode, 200);
    await assert.rejects(readAll(s.body), (e) => isReset(e, 'INTERNAL_ERROR'));

    const after = await agent.request(`${srv.url}/ok`, REQ);
    assert.equal(after.body.toString(), 'ok');
    assert.equal(after.reusedSocket, true);
    assert.equal(srv.counts.sessions, 1, 'every request went over the one connection');
    const st = agent.stats();
    assert.equal(st.connectionsOpened, 1);
    assert.equal(st.connectionsClosed, 0);
    assert.equal(st.errors, 3);
  } finally {
    agent.destroy();
    await srv.close();
  }
});

test('a stream the server refused (REFUSED_STREAM) is sent again and answered', { timeout: 30_000 }, async () => {
  let refused = 0;
  const srv = await h2cServer({
    '/refuse-once': (stream) => {
      if (refused++ === 0) return stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      stream.respond({ ':status': 200 });
      stream.end('second try');
    },
  });
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  try {
    const r = await agent.request(`${srv.url}/refuse-once`, REQ);
    assert.equal(r.statusCode, 200);
    assert.equal(r.body.toString(), 'second try');
    assert.equal(refused, 2);
    const st = agent.stats();
    assert.equal(st.retries, 1);
    assert.equal(st.errors, 0);
  } finally {
    agent.destroy();
    await srv.close();
  }
});

test('a stream reset with NO_ERROR before the END_STREAM of a body shorter than its content-length fails the request', {
  timeout: 30_000,
}, async () => {
  const srv = await h2cServer({
    '/truncated': (stream) => {
      stream.respond({ ':status': 200, 'content-length': '100' });
      stream.write('partial', () =>
        setTimeout(() => {
          // node:http2 has no public way to send RST_STREAM NO_ERROR without END_STREAM.
          const handle = Object.getOwnPropertySymbols(stream).find((s) => String(s) === 'Symbol(kHandle)');
          stream[handle].rstStream(http2.constants.NGHTTP2_NO_ERROR);
        }, 20),
      );
    },
  });
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  try {
    const outcome = await agent.request(`${srv.url}/truncated`, REQ).then(
      (r) => `resolved with ${r.body.length} of 100 bytes`,
      (e) => e,
    );
    assert.ok(outcome instanceof Error, String(outcome));
    assert.match(outcome.message, /ended after 7 of its 100 bytes/);
  } finally {
    agent.destroy();
    await srv.close();
  }
});

test('h2Streams counts a stream the server reset before its head', {
  timeout: 30_000,
}, async () => {
  const srv = await h2cServer({ '/reset': (stream) => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR) });
  const agent = new Agent({ httpVersion: 'h2c-prior-knowledge' });
  try {
    await agent.request(`${srv.url}/ok`, REQ);
    await agent.request(`${srv.url}/reset`, REQ).catch(() => {});
    assert.equal(srv.counts.streams, 2);
    const st = agent.stats();
    assert.equal(st.requests, 2);
    assert.equal(st.h2Streams, 2);
  } finally {
    agent.destroy();
    await srv.close();
  }
});

// ---------------------------------------------------------------------------------------
// Option checks

test('bad httpVersion values: TypeError naming options.httpVersion; the library refuses unknown numbers', () => {
  for (const value of [2, 20, null, true, {}, ['http2']]) {
    assert.throws(() => new Agent({ httpVersion: value }), {
      name: 'TypeError',
      code: 'ERR_INVALID_ARG_TYPE',
      message: /"options\.httpVersion" property must be of type string/,
    });
  }
  for (const value of ['', 'h2', 'HTTP2', 'http/1.1', 'h2c', '2.0', 'http3', 'auto ']) {
    assert.throws(() => new Agent({ httpVersion: value }), {
      name: 'TypeError',
      code: 'ERR_INVALID_ARG_VALUE',
      message: /'options\.httpVersion' must be one of: 'auto', 'http1', 'http2', 'h2c-prior-knowledge'/,
    });
  }
  // The handler builds its agent at once: the same errors from its constructor.
  assert.throws(() => new KeepAliveHttpHandler({ httpVersion: 'h2' }), { code: 'ERR_INVALID_ARG_VALUE', message: /options\.httpVersion/ });
  assert.throws(() => new KeepAliveHttpHandler({ httpVersion: 2 }), { code: 'ERR_INVALID_ARG_TYPE', message: /options\.httpVersion/ });
  // Below the validation: the library's own check of the number.
  const { _native: native } = require('..');
  assert.deepEqual({ ...native.httpVersions }, { auto: 0, http1: 1, http2: 2, 'h2c-prior-knowledge': 3 });
  assert.throws(() => native.create({ httpVersion: 9 }), (e) => {
    assert.equal(e.name, 'TypeError');
    assert.equal(e.code, 'ERR_INVALID_ARG_VALUE');
    assert.equal(e.agentCodeName, 'AGENT_CODE_INVALID_OPTION');
    assert.match(e.message, /http_version/);
    return true;
  });
  // Good values are taken; undefined is the default.
  for (const httpVersion of ['auto', 'http1', 'http2', 'h2c-prior-knowledge', undefined]) {
    const a = new Agent({ httpVersion });
    assert.equal(a.options.httpVersion, httpVersion);
    a.destroy();
  }
});
