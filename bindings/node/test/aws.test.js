'use strict';
// KeepAliveHttpHandler: a real @aws-sdk/client-dynamodb client against a local DynamoDB
// (moto's WSGI app under waitress, on loopback) with keep-alive on and off, connections
// counted by a TCP proxy in front of it; and the handler's own contract against the test
// server (URL building, bodies, errors the SDK's retry logic understands, abort, timeout).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Readable } = require('node:stream');
const {
  DynamoDBClient,
  CreateTableCommand,
  PutItemCommand,
  GetItemCommand,
  QueryCommand,
} = require('@aws-sdk/client-dynamodb');
const { KeepAliveHttpHandler, buildQueryString } = require('../aws');
const { ROOT, startServer, closedPort } = require('./helpers');
const { countingProxy, startMoto } = require('./moto');

const MOTO_PYTHON = process.env.KEEPALIVE_NODE_MOTO_PYTHON || path.join(ROOT, 'build', 'venv-moto', 'bin', 'python');
const motoAvailable = fs.existsSync(MOTO_PYTHON);
const motoRequired = process.env.KEEPALIVE_NODE_REQUIRE_MOTO === '1';

// The SDK reads credentials and region; never from the developer's own configuration.
const credentials = { accessKeyId: 'test', secretAccessKey: 'test' };
const region = 'us-east-1';

let srv;
let moto; // {port, child}
let proxy; // counting TCP proxy in front of moto

test.before(async () => {
  srv = await startServer();
  if (motoAvailable) {
    moto = await startMoto(MOTO_PYTHON, 'dynamodb');
    proxy = await countingProxy(moto.port);
  }
});
test.after(async () => {
  if (proxy) await proxy.close();
  if (moto) moto.child.stdin.end();
  await srv.stop();
});

function client(handler, extra = {}) {
  return new DynamoDBClient({ endpoint: proxy.url, region, credentials, requestHandler: handler, ...extra });
}

async function dynamoScenario(ddb, table) {
  let calls = 0;
  await ddb.send(
    new CreateTableCommand({
      TableName: table,
      AttributeDefinitions: [
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'N' },
      ],
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
    }),
  );
  calls++;
  for (let i = 0; i < 5; i++) {
    await ddb.send(
      new PutItemCommand({ TableName: table, Item: { pk: { S: 'user#1' }, sk: { N: String(i) }, name: { S: `item ${i} ✓` } } }),
    );
    calls++;
  }
  const got = await ddb.send(new GetItemCommand({ TableName: table, Key: { pk: { S: 'user#1' }, sk: { N: '3' } } }));
  calls++;
  assert.equal(got.Item.name.S, 'item 3 ✓');
  const q = await ddb.send(
    new QueryCommand({
      TableName: table,
      KeyConditionExpression: 'pk = :pk AND sk >= :min',
      ExpressionAttributeValues: { ':pk': { S: 'user#1' }, ':min': { N: '2' } },
    }),
  );
  calls++;
  assert.equal(q.Count, 3);
  assert.deepEqual(
    q.Items.map((it) => it.sk.N),
    ['2', '3', '4'],
  );
  return calls;
}

async function text(readable) {
  const chunks = [];
  for await (const c of readable) chunks.push(c);
  return Buffer.concat(chunks).toString();
}

const motoSkip = motoAvailable ? false : motoRequired ? false : 'moto venv missing: run `make node-moto`';

test('DynamoDBClient on KeepAliveHttpHandler: keep-alive on uses one connection', { skip: motoSkip }, async () => {
  assert.ok(motoAvailable, `moto is required (KEEPALIVE_NODE_REQUIRE_MOTO=1) but ${MOTO_PYTHON} is missing`);
  const handler = new KeepAliveHttpHandler({ keepAlive: true });
  const ddb = client(handler);
  const before = proxy.accepted;
  const calls = await dynamoScenario(ddb, 'ka_on');
  assert.equal(calls, 8);
  assert.equal(proxy.accepted - before, 1, 'every SDK call reused one connection');
  const s = handler.agent.stats();
  assert.equal(s.requests, calls);
  assert.equal(s.reusedRequests, calls - 1);
  ddb.destroy();
});

test('DynamoDBClient on KeepAliveHttpHandler({ keepAlive: false }): one connection per call', { skip: motoSkip }, async () => {
  assert.ok(motoAvailable, `moto is required but ${MOTO_PYTHON} is missing`);
  const handler = new KeepAliveHttpHandler({ keepAlive: false });
  const ddb = client(handler);
  const before = proxy.accepted;
  const calls = await dynamoScenario(ddb, 'ka_off');
  assert.equal(proxy.accepted - before, calls, 'a new connection for every call');
  assert.equal(handler.agent.stats().reusedRequests, 0);
  ddb.destroy();
});

test('two DynamoDB clients in one process: one reuses, the other does not', { skip: motoSkip }, async () => {
  assert.ok(motoAvailable);
  const reuse = client(new KeepAliveHttpHandler());
  const noReuse = client(new KeepAliveHttpHandler({ keepAlive: false }));
  await reuse.send(new CreateTableCommand({
    TableName: 'two_clients',
    AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
    KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
    BillingMode: 'PAY_PER_REQUEST',
  }));
  const before = proxy.accepted;
  for (let i = 0; i < 5; i++) {
    await reuse.send(new PutItemCommand({ TableName: 'two_clients', Item: { pk: { S: `a${i}` } } }));
    await noReuse.send(new GetItemCommand({ TableName: 'two_clients', Key: { pk: { S: `a${i}` } } }));
  }
  assert.equal(proxy.accepted - before, 5, 'five connections for the client without reuse, none new for the other');
  reuse.destroy();
  noReuse.destroy();
});

test('SDK retries see transient network errors: ECONNREFUSED is retried up to maxAttempts', async () => {
  const port = await closedPort();
  const handler = new KeepAliveHttpHandler();
  const ddb = new DynamoDBClient({ endpoint: `http://127.0.0.1:${port}`, region, credentials, requestHandler: handler, maxAttempts: 3 });
  const err = await ddb.send(new GetItemCommand({ TableName: 't', Key: { pk: { S: 'x' } } })).catch((e) => e);
  assert.equal(err.code, 'ECONNREFUSED');
  assert.equal(err.agentCodeName, 'AGENT_CODE_CONNECT_REFUSED');
  assert.equal(err.$metadata.attempts, 3, 'the SDK classified it as transient and retried');
  assert.equal(handler.agent.stats().requests, 3);
  ddb.destroy();
});

test('handler errors: ECONNRESET and timeouts are named TimeoutError (retryable), abort is AbortError', async () => {
  const handler = new KeepAliveHttpHandler({ requestTimeout: 200 });
  const port = new URL(srv.http).port;
  const req = (query, extra = {}) => ({ protocol: 'http:', hostname: '127.0.0.1', port, method: 'GET', path: '/', headers: {}, query, ...extra });

  const reset = await handler.handle(req({ rst: '1' })).catch((e) => e);
  assert.equal(reset.code, 'ECONNRESET');
  assert.equal(reset.name, 'TimeoutError');

  const slow = await handler.handle(req({ delay_ms: '3000' })).catch((e) => e);
  assert.equal(slow.code, 'ETIMEDOUT');
  assert.equal(slow.name, 'TimeoutError');
  assert.equal(slow.agentCodeName, 'AGENT_CODE_TIMEOUT');

  // The per-call requestTimeout wins over the handler's.
  const ok = await handler.handle(req({ delay_ms: '300' }), { requestTimeout: 2000 });
  assert.equal(ok.response.statusCode, 200);

  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  const aborted = await handler.handle(req({ delay_ms: '3000' }), { abortSignal: ac.signal, requestTimeout: 0 }).catch((e) => e);
  assert.equal(aborted.name, 'AbortError');

  // An SDK-style signal with only `onabort` (no addEventListener), already aborted.
  const sdkSignal = { aborted: true, onabort: null };
  const pre = await handler.handle(req({}), { abortSignal: sdkSignal }).catch((e) => e);
  assert.equal(pre.name, 'AbortError');
  // Not yet aborted: the handler chains onto onabort.
  const later = { aborted: false, onabort: null };
  const pending = handler.handle(req({ delay_ms: '3000' }), { abortSignal: later, requestTimeout: 0 }).catch((e) => e);
  setTimeout(() => {
    later.aborted = true;
    later.onabort();
  }, 50);
  assert.equal((await pending).name, 'AbortError');
  handler.destroy();
});

test('handler request building: query (arrays, null, escaping), headers, string/Uint8Array/stream bodies; response', async () => {
  const handler = new KeepAliveHttpHandler();
  const port = new URL(srv.http).port;
  const base = { protocol: 'http:', hostname: '127.0.0.1', port, path: '/some path/x', method: 'POST' };
  const query = { echo: '1', list: ['b c', "d'e"], flag: null, 'k&y': 'v=w' };
  const bodies = ['text body ✓', new TextEncoder().encode('uint8 body'), Readable.from([Buffer.from('stre'), Buffer.from('am body')])];
  const expectedLen = [Buffer.byteLength('text body ✓'), 10, 11];
  for (let i = 0; i < bodies.length; i++) {
    const { response } = await handler.handle({ ...base, query, headers: { 'X-Amz-Target': 'T', 'content-type': 'x' }, body: bodies[i] });
    assert.equal(response.statusCode, 200);
    assert.equal(response.reason, 'OK');
    assert.equal(response.headers['content-type'], 'application/json');
    assert.ok(response.body instanceof Readable);
    const chunks = [];
    for await (const c of response.body) chunks.push(c);
    const echo = JSON.parse(Buffer.concat(chunks).toString());
    assert.equal(echo.target, `/some%20path/x?${buildQueryString(query)}`);
    assert.equal(echo.target, '/some%20path/x?echo=1&flag&k%26y=v%3Dw&list=b%20c&list=d%27e');
    assert.equal(echo.body_len, expectedLen[i]);
    assert.ok(echo.headers.some(([n, v]) => n.toLowerCase() === 'x-amz-target' && v === 'T'));
  }
  handler.destroy();
});

test('handler headers: the request object is left as it is (basic credentials too); response headers in the SDK form', async () => {
  const http = require('node:http');
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push(req.headers.authorization);
    res.writeHead(200, ['Set-Cookie', 'a=1; Path=/', 'Set-Cookie', 'b=2', 'X-Many', 'one', 'X-Many', 'two', 'Content-Type', 'text/plain']);
    res.end('ok');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const handler = new KeepAliveHttpHandler();
  try {
    const base = { protocol: 'http:', hostname: '127.0.0.1', port: server.address().port, path: '/', method: 'GET' };
    const headers = Object.freeze({ 'x-amz-target': 'T' });
    for (const extra of [{}, { username: 'u', password: 'p' }]) {
      const { response } = await handler.handle({ ...base, ...extra, headers });
      assert.deepEqual(Object.keys(headers), ['x-amz-target']);
      assert.equal(response.headers['set-cookie'], 'a=1; Path=/,b=2');
      assert.equal(response.headers['x-many'], 'one, two');
      assert.equal(response.headers['content-type'], 'text/plain');
      assert.ok(Object.values(response.headers).every((v) => typeof v === 'string'));
      const chunks = [];
      for await (const c of response.body) chunks.push(c);
      assert.equal(Buffer.concat(chunks).toString(), 'ok');
    }
    assert.deepEqual(seen, [undefined, `Basic ${Buffer.from('u:p').toString('base64')}`]);
  } finally {
    handler.destroy();
    await new Promise((r) => server.close(r));
  }
});

test('handler config: metadata, httpHandlerConfigs, updateHttpClientConfig re-creates the agent', async () => {
  const handler = KeepAliveHttpHandler.create({ keepAlive: true, requestTimeout: 1000 });
  assert.equal(KeepAliveHttpHandler.create(handler), handler);
  assert.deepEqual(handler.metadata, { handlerProtocol: 'http/1.1' });
  assert.deepEqual(handler.httpHandlerConfigs(), { keepAlive: true, requestTimeout: 1000 });
  const first = handler.agent;
  assert.equal(first.keepAlive, true);
  const req = { protocol: 'http:', hostname: '127.0.0.1', port: new URL(srv.http).port, method: 'GET', path: '/', headers: {} };
  // A response whose body is still unread keeps its agent in use across a config change.
  const pending = await handler.handle(req);
  handler.updateHttpClientConfig('keepAlive', false);
  handler.updateHttpClientConfig(Symbol.for('logger'), console); // the SDK passes symbols too
  assert.equal(handler.httpHandlerConfigs().keepAlive, false);
  const r = await handler.handle(req);
  assert.equal(r.response.statusCode, 200);
  assert.notEqual(handler.agent, first);
  assert.equal(handler.agent.keepAlive, false);
  assert.equal(first.destroyed, false, 'the replaced agent still serves an unread body');
  assert.equal((await text(pending.response.body)), 'hello, world\n');
  assert.equal(first.destroyed, true, 'the replaced agent was destroyed once its last body was read');
  handler.destroy();
  assert.throws(() => new KeepAliveHttpHandler({ maxSockets: -1 }), { code: 'ERR_OUT_OF_RANGE' });
});
