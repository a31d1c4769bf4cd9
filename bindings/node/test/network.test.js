'use strict';
// Proxies, name overrides, happy eyeballs, the DNS cache and the TLS options, against real
// servers on loopback: nginx (scripts/nginx.sh: plain, TLS, a self-signed CA:TRUE server, a
// mutual-TLS server), squid and tinyproxy (scripts/proxies.sh: squid's open and Basic-auth
// ports), the test server, and moto's DynamoDB behind squid for the AWS SDK handler.
//
// The proxy variables of the environment are removed from this process first (each test
// sets what it needs, and puts it back), so a developer's own proxy never gets in the way.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const readline = require('node:readline');
const { spawn } = require('node:child_process');
const { setTimeout: sleep } = require('node:timers/promises');
const { DynamoDBClient, CreateTableCommand, PutItemCommand, GetItemCommand } = require('@aws-sdk/client-dynamodb');
const { Agent, codes } = require('..');
const { KeepAliveHttpHandler } = require('../aws');
const { ROOT, startServer, runNode, cleanEnv, startScript, stopScript } = require('./helpers');
const { startMoto } = require('./moto');

const PROXY_VARS = ['http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY', 'no_proxy', 'NO_PROXY'];
for (const name of PROXY_VARS) delete process.env[name];

const MOTO_PYTHON = process.env.KEEPALIVE_NODE_MOTO_PYTHON || path.join(ROOT, 'build', 'venv-moto', 'bin', 'python');
const motoAvailable = fs.existsSync(MOTO_PYTHON);
const motoRequired = process.env.KEEPALIVE_NODE_REQUIRE_MOTO === '1';
const motoSkip = motoAvailable || motoRequired ? false : 'moto venv missing: run `make node-moto`';

const REQ = { timeout: 15_000 }; // every request of this file is bounded
const HELLO = 'hello, world\n';

let px; // scripts/proxies.sh
let ng; // scripts/nginx.sh
let srv; // keepalive-testserver
let moto; // {port, child}
let SQUID;
let SQUID_AUTH; // the auth port, without credentials
let TINY;
let CA; // the CA of nginx's leaf (PEM)

test.before(async () => {
  [px, ng, srv] = await Promise.all([startScript('proxies.sh'), startScript('nginx.sh'), startServer()]);
  SQUID = `http://127.0.0.1:${px.SQUID_PORT}`;
  SQUID_AUTH = `http://127.0.0.1:${px.SQUID_AUTH_PORT}`;
  TINY = `http://127.0.0.1:${px.TINYPROXY_PORT}`;
  CA = fs.readFileSync(ng.NGINX_CA_FILE, 'utf8');
  if (motoAvailable) moto = await startMoto(MOTO_PYTHON, 'dynamodb');
});

test.after(async () => {
  if (moto) moto.child.stdin.end();
  await Promise.allSettled([
    px && stopScript('proxies.sh', px.PROXY_DIR),
    ng && stopScript('nginx.sh', ng.NGINX_DIR),
    srv && srv.stop(),
  ]);
});

// ---------------------------------------------------------------------------------------
// squid's access log: TIME CLIENT_IP:PORT METHOD URL STATUS RESULT BYTES USER SERVER_IP:PORT

function squidLog() {
  const out = [];
  for (const line of fs.readFileSync(px.SQUID_ACCESS_LOG, 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 9) continue; // a line being written
    out.push({ client: f[1], method: f[2], url: f[3], status: Number(f[4]), result: f[5], user: f[7], line });
  }
  return out;
}

const logMark = () => squidLog().length;

/** Client connections among `lines` (lines of connections that sent nothing left out). */
function clientConnections(lines) {
  return new Set(lines.filter((l) => l.method !== '-').map((l) => l.client)).size;
}

/** The log lines since `mark`, once `pred` holds for them (bounded wait). */
async function waitForLog(mark, pred, what, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const lines = squidLog().slice(mark);
    if (pred(lines)) return lines;
    if (Date.now() > deadline) {
      assert.fail(`${what}; squid's access log since the mark:\n${lines.map((l) => l.line).join('\n') || '(nothing)'}`);
    }
    await sleep(50);
  }
}

/** Runs fn with these environment variables (undefined: removed), then puts them back. */
async function withEnv(vars, fn) {
  const saved = {};
  for (const [k, v] of Object.entries(vars)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** One GET with a fresh agent; resolves with the response (the agent is destroyed). */
async function getOnce(options, url) {
  const agent = new Agent(options);
  try {
    return await agent.request(url, REQ);
  } finally {
    agent.destroy();
  }
}

/** squid adds X-Cache to every answer it forwards: whether a response came through it. */
const viaSquid = (res) => typeof res.headers['x-cache'] === 'string';

const httpsTarget = () => `127.0.0.1:${ng.NGINX_HTTPS_PORT}`;

// ---------------------------------------------------------------------------------------
// Proxies

test('squid, http:// in absolute form: keepAlive true uses one proxy connection for 5 requests, false uses 5', { timeout: 30_000 }, async () => {
  for (const [keepAlive, expected] of [
    [true, 1],
    [false, 5],
  ]) {
    const agent = new Agent({ proxy: SQUID, keepAlive });
    const mark = logMark();
    for (let i = 0; i < 5; i++) {
      const r = await agent.request(ng.NGINX_HTTP_URL, REQ);
      assert.equal(r.statusCode, 200);
      assert.equal(r.body.toString(), HELLO);
      assert.ok(viaSquid(r), 'the response came through squid');
    }
    const s = agent.stats();
    assert.equal(s.connectionsOpened, expected, `keepAlive ${keepAlive}`);
    assert.equal(s.requests, 5);
    assert.equal(s.reusedRequests, 5 - expected);
    assert.equal(s.errors, 0);
    agent.destroy();
    const lines = await waitForLog(mark, (l) => l.length >= 5, 'five GET lines');
    assert.equal(lines.length, 5);
    for (const l of lines) {
      assert.equal(l.method, 'GET', l.line);
      assert.equal(l.url, ng.NGINX_HTTP_URL, l.line);
      assert.equal(l.status, 200, l.line);
    }
    assert.equal(clientConnections(lines), expected, `client connections at the proxy, keepAlive ${keepAlive}`);
  }
});

test('squid, https:// through a CONNECT tunnel (ca = nginx CA): 5 requests, one tunnel', { timeout: 30_000 }, async () => {
  const agent = new Agent({ proxy: SQUID, ca: CA, keepAlive: true });
  const mark = logMark();
  for (let i = 0; i < 5; i++) {
    const r = await agent.request(ng.NGINX_HTTPS_URL, REQ);
    assert.equal(r.statusCode, 200);
    assert.equal(r.body.toString(), HELLO);
    assert.equal(viaSquid(r), false, 'squid does not see inside the tunnel');
  }
  assert.equal(agent.stats().connectionsOpened, 1);
  assert.equal(agent.stats().reusedRequests, 4);
  agent.destroy(); // squid writes a CONNECT line when its tunnel closes
  const lines = await waitForLog(mark, (l) => l.some((x) => x.method === 'CONNECT'), 'a CONNECT line');
  const connects = lines.filter((l) => l.method === 'CONNECT');
  assert.equal(connects.length, 1, lines.map((l) => l.line).join('\n'));
  assert.equal(connects[0].url, httpsTarget());
  assert.equal(connects[0].status, 200);
  assert.equal(connects[0].result, 'TCP_TUNNEL');
});

test('tinyproxy: http:// (it closes after every response: absorbed, all 200) and https:// through CONNECT', { timeout: 30_000 }, async () => {
  const tinyRequests = (what) =>
    fs
      .readFileSync(px.TINYPROXY_LOG, 'utf8')
      .split('\n')
      .filter((l) => l.includes(`Request (file descriptor`) && l.includes(what));
  const before = tinyRequests(`GET ${ng.NGINX_HTTP_URL} `).length;
  const agent = new Agent({ proxy: TINY, keepAlive: true });
  for (let i = 0; i < 5; i++) {
    const r = await agent.request(ng.NGINX_HTTP_URL, REQ);
    assert.equal(r.statusCode, 200);
    assert.equal(r.body.toString(), HELLO);
  }
  const s = agent.stats();
  assert.equal(s.requests, 5);
  assert.equal(s.errors, 0);
  // tinyproxy gave every request a connection of its own; a pooled one found closed is
  // retried on a new one (retryStale), so each of the 5 went out once on its own connection.
  assert.equal(s.connectionsOpened, 5);
  agent.destroy();
  assert.equal(tinyRequests(`GET ${ng.NGINX_HTTP_URL} `).length - before, 5, 'tinyproxy logged the 5 requests');

  const beforeConnect = tinyRequests(`CONNECT ${httpsTarget()} `).length;
  const tls = new Agent({ proxy: TINY, ca: CA, keepAlive: true });
  for (let i = 0; i < 3; i++) {
    const r = await tls.request(ng.NGINX_HTTPS_URL, REQ);
    assert.equal(r.statusCode, 200);
    assert.equal(r.body.toString(), HELLO);
  }
  assert.equal(tls.stats().connectionsOpened, 1, 'the tunnel stays open');
  tls.destroy();
  assert.equal(tinyRequests(`CONNECT ${httpsTarget()} `).length - beforeConnect, 1);
});

test('noProxy (a string or a list; names, IPs, CIDRs) bypasses the proxy: no access-log line', { timeout: 30_000 }, async () => {
  const mark = logMark();
  for (const noProxy of ['127.0.0.1', ['example.test', '127.0.0.0/8'], '*']) {
    const r = await getOnce({ proxy: SQUID, noProxy }, ng.NGINX_HTTP_URL);
    assert.equal(r.statusCode, 200);
    assert.equal(viaSquid(r), false, JSON.stringify(noProxy));
  }
  // A name that does not match does not bypass it.
  const through = await getOnce({ proxy: SQUID, noProxy: 'example.test,10.0.0.0/8' }, ng.NGINX_HTTP_URL);
  assert.ok(viaSquid(through));
  const lines = await waitForLog(mark, (l) => l.length >= 1, 'the line of the request that went through');
  await sleep(100);
  assert.equal(squidLog().length - mark, 1, lines.map((l) => l.line).join('\n'));
});

test('environment: http_proxy (lower case) routes http:// through squid; HTTP_PROXY alone is ignored', { timeout: 30_000 }, async () => {
  const mark = logMark();
  const r = await withEnv({ http_proxy: SQUID }, () => getOnce({}, ng.NGINX_HTTP_URL));
  assert.equal(r.statusCode, 200);
  assert.ok(viaSquid(r), 'http_proxy was used');
  await waitForLog(mark, (l) => l.length >= 1, 'the http_proxy request');

  const mark2 = logMark();
  const upper = await withEnv({ HTTP_PROXY: SQUID }, () => getOnce({}, ng.NGINX_HTTP_URL));
  assert.equal(upper.statusCode, 200);
  assert.equal(viaSquid(upper), false, 'HTTP_PROXY is not read (curl ignores it: httpoxy)');
  // all_proxy (either case) covers http:// as well.
  const all = await withEnv({ ALL_PROXY: SQUID }, () => getOnce({}, ng.NGINX_HTTP_URL));
  assert.ok(viaSquid(all), 'ALL_PROXY was used');
  await waitForLog(mark2, (l) => l.length >= 1, 'the ALL_PROXY request');
  await sleep(100);
  assert.equal(squidLog().length - mark2, 1, 'only the ALL_PROXY request reached squid');
});

test('environment: proxyFromEnv: false, proxy: "" and no_proxy / NO_PROXY leave the proxy variables unused', { timeout: 30_000 }, async () => {
  const mark = logMark();
  await withEnv({ http_proxy: SQUID, https_proxy: SQUID }, async () => {
    for (const [options, what] of [
      [{ proxyFromEnv: false }, 'proxyFromEnv: false'],
      [{ proxy: '' }, "proxy: ''"],
    ]) {
      const r = await getOnce(options, ng.NGINX_HTTP_URL);
      assert.equal(r.statusCode, 200);
      assert.equal(viaSquid(r), false, what);
      const t = await getOnce({ ...options, ca: CA }, ng.NGINX_HTTPS_URL);
      assert.equal(t.statusCode, 200, what);
    }
    for (const v of [{ no_proxy: '127.0.0.1' }, { NO_PROXY: 'localhost,127.0.0.1' }]) {
      const r = await withEnv(v, () => getOnce({}, ng.NGINX_HTTP_URL));
      assert.equal(viaSquid(r), false, JSON.stringify(v));
    }
    // An explicit noProxy wins over no_proxy.
    const r = await withEnv({ no_proxy: '127.0.0.1' }, () => getOnce({ noProxy: 'example.test' }, ng.NGINX_HTTP_URL));
    assert.ok(viaSquid(r), 'noProxy replaced no_proxy');
  });
  const lines = await waitForLog(mark, (l) => l.length >= 1, 'the request with noProxy: example.test');
  await sleep(200);
  assert.equal(squidLog().length - mark, 1, lines.map((l) => l.line).join('\n'));
});

test('environment: https_proxy and HTTPS_PROXY route https:// through a CONNECT tunnel', { timeout: 30_000 }, async () => {
  for (const name of ['https_proxy', 'HTTPS_PROXY']) {
    const mark = logMark();
    const r = await withEnv({ [name]: SQUID }, () => getOnce({ ca: CA }, ng.NGINX_HTTPS_URL));
    assert.equal(r.statusCode, 200);
    const lines = await waitForLog(mark, (l) => l.some((x) => x.method === 'CONNECT'), `the ${name} tunnel`);
    assert.equal(lines.filter((l) => l.method === 'CONNECT')[0].url, httpsTarget());
  }
  // https_proxy is not used for http://.
  const plain = await withEnv({ https_proxy: SQUID }, () => getOnce({}, ng.NGINX_HTTP_URL));
  assert.equal(viaSquid(plain), false);
});

test('environment of a child process: https_proxy from its own environment', { timeout: 30_000 }, async () => {
  const child = path.join(__dirname, 'fixtures', 'net_child.js');
  const mark = logMark();
  const r = await runNode([child, ng.NGINX_HTTPS_URL, JSON.stringify({ ca: CA })], {
    env: { ...cleanEnv(), https_proxy: SQUID },
    timeoutMs: 20_000,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { status: 200, body: HELLO });
  await waitForLog(mark, (l) => l.some((x) => x.method === 'CONNECT' && x.url === httpsTarget()), "the child's tunnel");
});

test('squid with Basic auth: https:// without credentials rejects with ERR_PROXY_TUNNEL (407); SQUID_AUTH_URL works; http:// gives the 407 response', { timeout: 30_000 }, async () => {
  const err = await getOnce({ proxy: SQUID_AUTH, ca: CA }, ng.NGINX_HTTPS_URL).catch((e) => e);
  assert.ok(err instanceof Error, String(err));
  assert.equal(err.code, 'ERR_PROXY_TUNNEL');
  assert.equal(err.agentCode, codes.PROXY);
  assert.equal(err.agentCodeName, 'AGENT_CODE_PROXY');
  assert.match(err.message, /407/);

  // Wrong credentials: refused too, and the password is not in the message.
  const wrong = await getOnce({ proxy: `http://alice:not-the-password@127.0.0.1:${px.SQUID_AUTH_PORT}`, ca: CA }, ng.NGINX_HTTPS_URL).catch((e) => e);
  assert.equal(wrong.code, 'ERR_PROXY_TUNNEL');
  assert.match(wrong.message, /407/);
  assert.doesNotMatch(wrong.message, /not-the-password/);

  const mark = logMark();
  const ok = await getOnce({ proxy: px.SQUID_AUTH_URL, ca: CA }, ng.NGINX_HTTPS_URL);
  assert.equal(ok.statusCode, 200);
  assert.equal(ok.body.toString(), HELLO);
  const plainOk = await getOnce({ proxy: px.SQUID_AUTH_URL }, ng.NGINX_HTTP_URL);
  assert.equal(plainOk.statusCode, 200);
  assert.ok(viaSquid(plainOk));
  const lines = await waitForLog(mark, (l) => l.some((x) => x.method === 'CONNECT') && l.some((x) => x.method === 'GET'), 'both lines');
  for (const l of lines) {
    assert.equal(l.user, px.SQUID_USER, l.line);
    assert.equal(l.status, 200, l.line);
  }

  const denied = await getOnce({ proxy: SQUID_AUTH }, ng.NGINX_HTTP_URL);
  assert.equal(denied.statusCode, 407);
  assert.match(String(denied.headers['proxy-authenticate']), /^Basic /);
});

test('KeepAliveHttpHandler({ proxy }): a DynamoDB client through squid to moto; noProxy and proxyFromEnv pass through', { skip: motoSkip, timeout: 120_000 }, async () => {
  assert.ok(moto, `moto is required (KEEPALIVE_NODE_REQUIRE_MOTO=1) but ${MOTO_PYTHON} is missing`);
  const endpoint = `http://127.0.0.1:${moto.port}`;
  const clientWith = (handler) =>
    new DynamoDBClient({ endpoint, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' }, requestHandler: handler, maxAttempts: 1 });
  const handler = new KeepAliveHttpHandler({ proxy: SQUID, keepAlive: true });
  const ddb = clientWith(handler);
  const mark = logMark();
  await ddb.send(
    new CreateTableCommand({
      TableName: 'via_proxy',
      AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
      KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
      BillingMode: 'PAY_PER_REQUEST',
    }),
  );
  await ddb.send(new PutItemCommand({ TableName: 'via_proxy', Item: { pk: { S: 'k1' }, v: { S: 'through squid ✓' } } }));
  const got = await ddb.send(new GetItemCommand({ TableName: 'via_proxy', Key: { pk: { S: 'k1' } } }));
  assert.equal(got.Item.v.S, 'through squid ✓');
  const lines = await waitForLog(mark, (l) => l.length >= 3, 'three SDK calls');
  assert.equal(lines.length, 3);
  for (const l of lines) {
    assert.equal(l.method, 'POST', l.line);
    assert.equal(l.url, `${endpoint}/`, l.line);
    assert.equal(l.status, 200, l.line);
  }
  assert.equal(clientConnections(lines), 1, 'the three calls shared one connection to the proxy');
  assert.equal(handler.agent.stats().requests, 3);

  // noProxy and proxyFromEnv reach the handler's Agent: neither call goes through squid.
  const mark2 = logMark();
  const bypass = clientWith(new KeepAliveHttpHandler({ proxy: SQUID, noProxy: '127.0.0.1' }));
  assert.equal((await bypass.send(new GetItemCommand({ TableName: 'via_proxy', Key: { pk: { S: 'k1' } } }))).Item.v.S, 'through squid ✓');
  const noEnv = await withEnv({ http_proxy: SQUID }, async () => clientWith(new KeepAliveHttpHandler({ proxyFromEnv: false })));
  assert.equal((await noEnv.send(new GetItemCommand({ TableName: 'via_proxy', Key: { pk: { S: 'k1' } } }))).Item.v.S, 'through squid ✓');
  // A last call through squid: its line is the only one since mark2.
  await ddb.send(new GetItemCommand({ TableName: 'via_proxy', Key: { pk: { S: 'k1' } } }));
  await waitForLog(mark2, (l) => l.length >= 1, 'the last call');
  await sleep(100);
  assert.equal(squidLog().length - mark2, 1);
  for (const c of [ddb, bypass, noEnv]) c.destroy();
});

// ---------------------------------------------------------------------------------------
// Happy eyeballs and the DNS cache

/** A live HTTP server on 127.0.0.1:P and a black hole on [::1]:P (fixtures/black_hole.py). */
async function liveAndBlackHole() {
  for (let attempt = 0; attempt < 20; attempt++) {
    let hits = 0;
    const server = http.createServer((req, res) => {
      hits++;
      res.end('live\n');
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = server.address().port;
    const child = spawn('python3', [path.join(__dirname, 'fixtures', 'black_hole.py'), String(port)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const rl = readline.createInterface({ input: child.stdout });
    const line = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('black_hole.py did not answer within 10 s')), 10_000);
      rl.once('line', (l) => {
        clearTimeout(timer);
        resolve(l);
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`black_hole.py exited with ${code}`));
      });
    });
    rl.close();
    const info = JSON.parse(line);
    if (info.error === 'EADDRINUSE') {
      await new Promise((resolve) => server.close(resolve));
      continue; // P is taken on ::1: another live server, another port
    }
    const stop = async () => {
      child.stdin.end();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    };
    return { port, fillers: info.fillers, hits: () => hits, stop };
  }
  throw new Error('no port free on both 127.0.0.1 and ::1 in 20 tries');
}

/** Sockets in SYN_SENT (state 02) to [::1]:port, by local port, from /proc/net/tcp6. */
function synSentTo(port) {
  const remote = `00000000000000000000000001000000:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const out = [];
  for (const line of fs.readFileSync('/proc/net/tcp6', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 3 && f[2] === remote && f[3] === '02') out.push(parseInt(f[1].split(':')[1], 16));
  }
  return out;
}

test('happy eyeballs: [::1] black-holed first, 127.0.0.1 second: the request succeeds in well under the connect timeout; the losing attempt is closed', { timeout: 30_000 }, async () => {
  const hole = await liveAndBlackHole();
  try {
    // The black hole is black: some of its own fillers wait in SYN_SENT (their SYNs dropped).
    assert.ok(
      synSentTo(hole.port).some((p) => hole.fillers.includes(p)),
      'a filler connection of the black hole is in SYN_SENT',
    );
    const agent = new Agent({ resolve: [`he.test:${hole.port}:[::1],127.0.0.1`], connectTimeout: 10_000, keepAlive: true });
    const start = Date.now();
    const r = await agent.request(`http://he.test:${hole.port}/`, REQ);
    const ms = Date.now() - start;
    assert.equal(r.statusCode, 200);
    assert.equal(r.body.toString(), 'live\n');
    assert.ok(ms < 5000, `took ${ms} ms (connect timeout 10 s)`);
    assert.ok(ms >= 200, `took ${ms} ms: [::1] was tried first, 127.0.0.1 after the 250 ms delay`);
    assert.equal(hole.hits(), 1);
    const s = agent.stats();
    assert.equal(s.connectionsOpened, 1);
    assert.equal(s.dnsLookups, 0, 'resolve overrides are not lookups');
    assert.equal(s.dnsCacheHits, 0);
    // The attempt to [::1] was abandoned: no socket of ours is left in SYN_SENT to it.
    let ours = [];
    for (let i = 0; i < 40; i++) {
      ours = synSentTo(hole.port).filter((p) => !hole.fillers.includes(p));
      if (ours.length === 0) break;
      await sleep(50);
    }
    assert.deepEqual(ours, [], 'the losing attempt to [::1] was closed');
    agent.destroy();
  } finally {
    await hole.stop();
  }
});

test('happyEyeballsDelay: the second address is tried after the delay, or once the first attempt has had half the connect timeout', { timeout: 30_000 }, async () => {
  const hole = await liveAndBlackHole();
  try {
    const timed = async (options) => {
      const agent = new Agent({ resolve: [`he.test:${hole.port}:[::1],127.0.0.1`], ...options });
      const start = Date.now();
      const r = await agent.request(`http://he.test:${hole.port}/`, REQ);
      const ms = Date.now() - start;
      assert.equal(r.statusCode, 200);
      agent.destroy();
      return ms;
    };
    // A delay of 1.5 s: 127.0.0.1 is not tried before it has passed.
    let ms = await timed({ happyEyeballsDelay: 1500, connectTimeout: 20_000 });
    assert.ok(ms >= 1400 && ms < 8000, `took ${ms} ms (delay 1.5 s)`);
    // A delay beyond the connect timeout: curl's rule gives an attempt with more addresses
    // left half the connect timeout (1 s of 2 s), then the next address is tried.
    ms = await timed({ happyEyeballsDelay: 60_000, connectTimeout: 2000 });
    assert.ok(ms >= 900 && ms < 1900, `took ${ms} ms (connect timeout 2 s, half for the silent [::1])`);
    // No delay: both at once, 127.0.0.1 answers.
    ms = await timed({ happyEyeballsDelay: 0, connectTimeout: 20_000 });
    assert.ok(ms < 1000, `took ${ms} ms (no delay)`);
    assert.equal(hole.hits(), 3);
  } finally {
    await hole.stop();
  }
});

test('DNS cache: dnsCacheMsecs 400 reuses a lookup, then looks up again once it expires; 0 looks up every time', { timeout: 30_000 }, async () => {
  const port = new URL(srv.http).port;
  const url = `http://localhost:${port}/`;
  const cached = new Agent({ dnsCacheMsecs: 400, keepAlive: false });
  for (let i = 0; i < 2; i++) assert.equal((await cached.request(url, REQ)).statusCode, 200);
  let s = cached.stats();
  assert.equal(s.connectionsOpened, 2);
  assert.equal(s.dnsLookups, 1);
  assert.equal(s.dnsCacheHits, 1);
  await sleep(600);
  assert.equal((await cached.request(url, REQ)).statusCode, 200);
  s = cached.stats();
  assert.equal(s.dnsLookups, 2, 'the cached addresses expired');
  assert.equal(s.dnsCacheHits, 1);
  cached.destroy();

  const uncached = new Agent({ dnsCacheMsecs: 0, keepAlive: false });
  for (let i = 0; i < 3; i++) assert.equal((await uncached.request(url, REQ)).statusCode, 200);
  s = uncached.stats();
  assert.equal(s.dnsLookups, 3);
  assert.equal(s.dnsCacheHits, 0);
  uncached.destroy();

  // IP literals and resolve overrides are neither lookups nor cache hits.
  const literal = new Agent({ keepAlive: false, resolve: [`cache.test:${port}:127.0.0.1`] });
  assert.equal((await literal.request(srv.http, REQ)).statusCode, 200);
  assert.equal((await literal.request(`http://cache.test:${port}/`, REQ)).statusCode, 200);
  s = literal.stats();
  assert.equal(s.connectionsOpened, 2);
  assert.equal(s.dnsLookups, 0);
  assert.equal(s.dnsCacheHits, 0);
  literal.destroy();
});

// ---------------------------------------------------------------------------------------
// TLS

test('SSL_CERT_FILE replaces the system roots (child processes)', { timeout: 30_000 }, async () => {
  const child = path.join(__dirname, 'fixtures', 'net_child.js');
  const run = (env) => runNode([child, ng.NGINX_HTTPS_URL, '{}'], { env: { ...cleanEnv(), SSL_CERT_DIR: undefined, ...env }, timeoutMs: 20_000 });
  const withFile = await run({ SSL_CERT_FILE: ng.NGINX_CA_FILE });
  assert.equal(withFile.code, 0, withFile.stderr);
  assert.deepEqual(JSON.parse(withFile.stdout), { status: 200, body: HELLO });
  const without = await run({ SSL_CERT_FILE: undefined });
  assert.equal(without.code, 0, without.stderr);
  const { error } = JSON.parse(without.stdout);
  assert.ok(error, without.stdout);
  assert.equal(error.agentCodeName, 'AGENT_CODE_TLS');
  assert.match(error.message, /not signed by an authority this agent trusts/);
});

test('a self-signed CA:TRUE server certificate: accepted when given as ca; a readable error without it', { timeout: 30_000 }, async () => {
  const cert = fs.readFileSync(ng.NGINX_SELFSIGNED_CERT, 'utf8');
  const ok = await getOnce({ ca: cert }, ng.NGINX_SELFSIGNED_URL);
  assert.equal(ok.statusCode, 200);
  assert.equal(ok.body.toString(), HELLO);
  const buf = await getOnce({ ca: Buffer.from(cert) }, ng.NGINX_SELFSIGNED_URL);
  assert.equal(buf.statusCode, 200);

  const err = await getOnce({}, ng.NGINX_SELFSIGNED_URL).catch((e) => e);
  assert.ok(err instanceof Error, String(err));
  assert.equal(err.agentCodeName, 'AGENT_CODE_TLS');
  assert.match(err.message, /CA certificate/);
  assert.doesNotMatch(err.message, /OtherError|CaUsedAsEndEntity/);
});

test('resolve: a name sent to a chosen address; TLS checks the certificate against that name', { timeout: 30_000 }, async () => {
  const cert = fs.readFileSync(ng.NGINX_SELFSIGNED_CERT, 'utf8');
  const port = ng.NGINX_SELFSIGNED_PORT;
  const agent = new Agent({ ca: cert, resolve: [`wrong.test:${port}:127.0.0.1`, `localhost:${port}:127.0.0.1`] });
  const err = await agent.request(`https://wrong.test:${port}/`, REQ).catch((e) => e);
  assert.ok(err instanceof Error, String(err));
  assert.equal(err.agentCodeName, 'AGENT_CODE_TLS');
  assert.match(err.message, /not valid for wrong\.test/);
  assert.match(err.message, /localhost/);
  // The certificate's own name, sent to the address the override gives: no lookup.
  const ok = await agent.request(`https://localhost:${port}/`, REQ);
  assert.equal(ok.statusCode, 200);
  assert.equal(agent.stats().dnsLookups, 0);
  agent.destroy();
});

test('mutual TLS: cert + key (string or Buffer) → 200 with the client CN; without → 400; cert without key throws', { timeout: 30_000 }, async () => {
  const cert = fs.readFileSync(ng.NGINX_CLIENT_CERT, 'utf8');
  const key = fs.readFileSync(ng.NGINX_CLIENT_KEY);
  const ok = await getOnce({ ca: CA, cert, key }, ng.NGINX_MTLS_URL);
  assert.equal(ok.statusCode, 200);
  assert.equal(ok.body.toString(), 'client CN=keepalive-agent test client\n');
  const asBuffers = await getOnce({ ca: CA, cert: Buffer.from(cert), key: new Uint8Array(key) }, ng.NGINX_MTLS_URL);
  assert.equal(asBuffers.statusCode, 200);

  const none = await getOnce({ ca: CA }, ng.NGINX_MTLS_URL);
  assert.equal(none.statusCode, 400);

  assert.throws(() => new Agent({ ca: CA, cert }), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE', message: /options\.cert.*options\.key/ });
  assert.throws(() => new Agent({ ca: CA, key }), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE', message: /options\.key.*options\.cert/ });
  // The library's own check of the PEM contents.
  assert.throws(() => new Agent({ cert: 'not a certificate', key }), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE', message: /certificate/ });
});

// ---------------------------------------------------------------------------------------
// Option checks

test('bad option values: Node-style type and range errors naming the option; the library refuses bad proxies and resolve entries', () => {
  const typeErr = (options, name) =>
    assert.throws(() => new Agent(options), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', message: new RegExp(`"${name.replace(/[.[\]]/g, '\\$&')}"`) });
  typeErr({ proxy: 8080 }, 'options.proxy');
  typeErr({ noProxy: { host: 'x' } }, 'options.noProxy');
  typeErr({ noProxy: ['a', 1] }, 'options.noProxy[1]');
  typeErr({ proxyFromEnv: 'no' }, 'options.proxyFromEnv');
  typeErr({ resolve: 5 }, 'options.resolve');
  typeErr({ resolve: ['a:1:127.0.0.1', null] }, 'options.resolve[1]');
  typeErr({ cert: 5, key: 'k' }, 'options.cert');
  typeErr({ dnsCacheMsecs: '1' }, 'options.dnsCacheMsecs');
  for (const [key, value] of [
    ['dnsCacheMsecs', -1],
    ['dnsCacheMsecs', 2 ** 31],
    ['happyEyeballsDelay', 1.5],
    ['happyEyeballsDelay', -5],
  ]) {
    assert.throws(() => new Agent({ [key]: value }), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE', message: new RegExp(`options\\.${key}`) });
  }
  assert.throws(() => new Agent({ proxy: 'http://127.0.0.1:1\0' }), { code: 'ERR_INVALID_CHAR', message: /options\.proxy/ });

  // Checked by the library when the agent is made: its message names the option.
  const libErr = (options, re) =>
    assert.throws(() => new Agent(options), (e) => {
      assert.equal(e.name, 'TypeError');
      assert.equal(e.code, 'ERR_INVALID_ARG_VALUE');
      assert.equal(e.agentCodeName, 'AGENT_CODE_INVALID_OPTION');
      assert.match(e.message, re);
      return true;
    });
  libErr({ proxy: 'socks5://x' }, /proxy.*socks5/);
  libErr({ proxy: 'http://' }, /proxy/);
  libErr({ resolve: ['nonsense'] }, /resolve.*nonsense/);
  libErr({ resolve: ['ok.test:80:127.0.0.1', 'x.test:80:not-an-address'] }, /resolve/);

  // Good values are taken.
  for (const options of [
    { proxy: '' },
    { proxy: SQUID, noProxy: ['a.test', '10.0.0.0/8', '::1'], proxyFromEnv: false },
    { resolve: 'x.test:443:[::1],127.0.0.1', dnsCacheMsecs: 0, happyEyeballsDelay: 0 },
  ]) {
    new Agent(options).destroy();
  }
});
