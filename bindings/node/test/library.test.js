'use strict';
// What the binding takes from the library instead of repeating it: statistics built from
// the library's field list, validation bounds from agent_limit, responses read in one
// agent_response_read call (headers as Node's own client shows them).
// The library's answers are read here with python3's ctypes, not through the addon.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { Agent, limits, _native } = require('..');
const { startServer } = require('./helpers');

const camel = (snake) => snake.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
const snake = (name) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** The path of the libkeepalive_agent this process has loaded (for the addon). */
function loadedLibrary() {
  const maps = fs.readFileSync('/proc/self/maps', 'utf8').split('\n');
  const paths = new Set(
    maps.map((l) => l.split(/\s+/).slice(5).join(' ')).filter((p) => /\/libkeepalive_agent\.so[^/]*$/.test(p)),
  );
  assert.equal(paths.size, 1, `one libkeepalive_agent mapped (${[...paths].join(', ')})`);
  return [...paths][0];
}

/** {stats_fields, limits} as the loaded library reports them, asked for `limitNames`. */
function libraryFacts(limitNames) {
  const script = path.join(__dirname, 'fixtures', 'library_facts.py');
  return JSON.parse(execFileSync('python3', [script, loadedLibrary(), ...limitNames], { encoding: 'utf8' }));
}

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

test('stats() keys are the library field names in camelCase, in order, then keepAlive', async () => {
  const facts = libraryFacts([]);
  assert.ok(facts.stats_fields.length > 0);
  assert.ok(facts.stats_fields.every((f) => typeof f === 'string'));
  assert.deepEqual(_native.statsFields, facts.stats_fields);
  const expected = [...facts.stats_fields.map(camel), 'keepAlive'];

  const agent = new Agent();
  await agent.request(srv.http);
  await agent.request(srv.http);
  const all = agent.stats();
  const origin = agent.stats(srv.http);
  const other = agent.stats('http://127.0.0.1:1');
  for (const s of [all, origin, other]) {
    assert.deepEqual(Object.keys(s), expected);
    for (const key of expected.slice(0, -1)) assert.equal(typeof s[key], 'number', key);
    assert.equal(s.keepAlive, true);
  }
  // Today's names, as index.d.ts lists them.
  const declared = [
    'connectionsOpened',
    'connectionsClosed',
    'connectionsTimedOut',
    'connectionsErrored',
    'requests',
    'reusedRequests',
    'retries',
    'timeouts',
    'errors',
    'active',
    'idle',
    'queued',
  ];
  for (const key of declared) assert.ok(key in all, key);
  assert.equal(all.requests, 2);
  assert.equal(all.reusedRequests, 1);
  assert.equal(all.connectionsOpened, 1);
  assert.equal(origin.requests, 2);
  assert.equal(other.requests, 0);
  agent.destroy();
  const off = new Agent({ keepAlive: false });
  assert.equal(off.stats().keepAlive, false);
  off.destroy();
});

test('limits are what the library reports (agent_limit)', () => {
  assert.ok(Object.isFrozen(limits));
  assert.equal(limits, _native.limits);
  assert.deepEqual(Object.keys(limits).sort(), ['maxKeepAliveMsecs', 'maxKeepAliveProbes', 'maxMsecs', 'maxSockets']);
  const facts = libraryFacts(Object.keys(limits).map(snake));
  for (const [key, value] of Object.entries(limits)) {
    assert.equal(typeof value, 'number', key);
    assert.equal(value, facts.limits[snake(key)], key);
  }
});

test('validation uses the library limits: the limit is accepted, one more is out of range', async () => {
  const cases = [
    ['keepAliveMsecs', limits.maxKeepAliveMsecs],
    ['keepAliveInterval', limits.maxKeepAliveMsecs],
    ['keepAliveProbes', limits.maxKeepAliveProbes],
    ['maxSockets', limits.maxSockets],
    ['maxTotalSockets', limits.maxSockets],
    ['maxFreeSockets', limits.maxSockets],
    ['timeout', limits.maxMsecs],
    ['connectTimeout', limits.maxMsecs],
    ['headersTimeout', limits.maxMsecs],
    ['bodyTimeout', limits.maxMsecs],
    ['keepAliveTimeoutBuffer', limits.maxMsecs],
    ['keepAliveMaxTimeout', limits.maxMsecs],
    ['socketActiveTTL', limits.maxMsecs],
  ];
  for (const [key, max] of cases) {
    new Agent({ [key]: max }).destroy();
    const range = `>= 0 && <= ${max}${/^max.*Sockets$/.test(key) ? ' (or Infinity)' : ''}`;
    assert.throws(() => new Agent({ [key]: max + 1 }), {
      name: 'RangeError',
      code: 'ERR_OUT_OF_RANGE',
      message: `The value of "options.${key}" is out of range. It must be ${range}. Received ${max + 1}`,
    });
  }
  const agent = new Agent();
  const range = `>= 0 && <= ${limits.maxMsecs} (or Infinity)`;
  await assert.rejects(agent.request({ url: srv.http, timeout: limits.maxMsecs + 1 }), {
    name: 'RangeError',
    code: 'ERR_OUT_OF_RANGE',
    message: `The value of "options.timeout" is out of range. It must be ${range}. Received ${limits.maxMsecs + 1}`,
  });
  agent.destroy();
});

/** A server on 127.0.0.1 that answers every request with `rawHeaders` (a flat list) and `body`. */
async function fixedServer(rawHeaders, body) {
  const server = http.createServer((req, res) => {
    res.sendDate = false;
    res.writeHead(200, rawHeaders);
    res.end(body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/`, close: () => new Promise((r) => server.close(r)) };
}

/**
 * The same URL through Node's own client, keep-alive on as the Agent's:
 * {rawHeaders (names lowercased), headers, body}.
 */
function nodeGet(url) {
  const agent = new http.Agent({ keepAlive: true });
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          agent.destroy();
          resolve({
            rawHeaders: res.rawHeaders.map((v, i) => (i % 2 === 0 ? v.toLowerCase() : v)),
            headers: res.headers,
            body: Buffer.concat(chunks),
          });
        });
      })
      .on('error', reject);
  });
}

test('response headers: repeated, empty, colons, latin1 bytes, as Node reads them', async () => {
  const raw = [
    'Set-Cookie', 'a=1; Path=/',
    'Set-Cookie', 'b=2',
    'X-Empty', '',
    'X-Colons', 'a: b:c : d',
    'X-Spaces', 'x  y',
    'X-Latin1', 'caf\xe9 \xff',
    'X-Many', 'one',
    'X-Many', 'two',
    'Content-Type', 'text/plain',
    'Cookie', 'k=v',
    'Cookie', 'k2=v2',
    'X-Last', 'end',
  ];
  const server = await fixedServer(raw, 'hello');
  try {
    const agent = new Agent();
    const res = await agent.request(server.url);
    const node = await nodeGet(server.url);
    assert.deepEqual(res.rawHeaders, node.rawHeaders);
    assert.deepEqual({ ...res.headers }, { ...node.headers });
    assert.deepEqual(res.headers['set-cookie'], ['a=1; Path=/', 'b=2']);
    assert.equal(res.headers['x-empty'], '');
    assert.equal(res.headers['x-colons'], 'a: b:c : d');
    assert.equal(res.headers['x-latin1'], 'caf\xe9 \xff');
    assert.equal(res.headers['x-many'], 'one, two');
    assert.equal(res.headers.cookie, 'k=v; k2=v2');
    assert.ok(Buffer.isBuffer(res.body));
    assert.equal(res.body.toString(), 'hello');
    assert.equal(res.statusCode, 200);
    assert.equal(res.httpVersion, '1.1');
    assert.equal(res.reusedSocket, false);
    assert.equal((await agent.request(server.url)).reusedSocket, true);
    agent.destroy();
  } finally {
    await server.close();
  }
});

test('response headers: repeated names are grouped by name in first-seen order', async () => {
  const server = await fixedServer(['X-A', '1', 'X-B', '2', 'X-A', '3', 'Content-Type', 'a/b', 'Content-Type', 'c/d'], '');
  try {
    const agent = new Agent();
    const res = await agent.request(server.url);
    const names = res.rawHeaders.filter((_, i) => i % 2 === 0);
    const xs = res.rawHeaders.filter((v, i) => i % 2 === 1 && names[(i - 1) / 2].startsWith('x-'));
    assert.deepEqual(xs, ['1', '3', '2']);
    assert.equal(res.headers['x-a'], '1, 3');
    assert.equal(res.headers['content-type'], 'a/b', 'the first of a single-valued field');
    assert.equal(res.body.length, 0);
    agent.destroy();
  } finally {
    await server.close();
  }
});
