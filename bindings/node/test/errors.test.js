'use strict';
// Every error code from a real failure on loopback: Node's names where they fit
// (ECONNREFUSED, ECONNRESET, ETIMEDOUT, EPIPE, ENOTFOUND), the library's name otherwise.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const { spawn } = require('node:child_process');
const { Agent, codes } = require('..');
const { startServer, closedPort, runNode } = require('./helpers');

// The library's test-hooks build (it exports agent_test_panic); `make test` sets this.
const HOOKS_LIB = process.env.KEEPALIVE_AGENT_TEST_HOOKS_LIB;
const PANIC_CHILD = path.join(__dirname, 'fixtures', 'panic_child.js');

let srv;
let raw; // {epipe_port, blackhole_port} from fixtures/raw_servers.py
let rawChild;

test.before(async () => {
  srv = await startServer();
  rawChild = spawn('python3', [path.join(__dirname, 'fixtures', 'raw_servers.py')], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const rl = readline.createInterface({ input: rawChild.stdout });
  raw = JSON.parse(await new Promise((resolve) => rl.once('line', resolve)));
  rl.close();
});
test.after(async () => {
  rawChild.stdin.end();
  await srv.stop();
});

/** Asserts the shape every library error has, and returns it. */
async function failure(promise, { code, agentCodeName }) {
  let err;
  await assert.rejects(promise, (e) => {
    err = e;
    return true;
  });
  assert.ok(err instanceof Error, 'an Error');
  assert.equal(err.agentCodeName, agentCodeName, `agentCodeName (message: ${err.message})`);
  assert.equal(err.code, code);
  assert.equal(err.agentCode, codes[agentCodeName.slice('AGENT_CODE_'.length)]);
  assert.equal(typeof err.message, 'string');
  assert.ok(err.message.length > 0);
  return err;
}

test('ECONNREFUSED: nothing listens on the port', async () => {
  const agent = new Agent();
  const port = await closedPort();
  const e = await failure(agent.request(`http://127.0.0.1:${port}/`), {
    code: 'ECONNREFUSED',
    agentCodeName: 'AGENT_CODE_CONNECT_REFUSED',
  });
  assert.match(e.message, /refused/i);
  agent.destroy();
});

test('ENOTFOUND: a host name that cannot resolve (rejected by the resolver, no packet sent)', async () => {
  const agent = new Agent();
  // A 64-character label is refused by the resolver library itself: no DNS query leaves.
  const host = `${'a'.repeat(64)}.invalid`;
  await failure(agent.request(`http://${host}/`), { code: 'ENOTFOUND', agentCodeName: 'AGENT_CODE_DNS' });
  agent.destroy();
});

test('TLS: unknown CA, self-signed, wrong host, expired; success with the CA given', async () => {
  const noCa = new Agent();
  const withCa = new Agent({ ca: srv.ca });
  const tls = { code: 'AGENT_CODE_TLS', agentCodeName: 'AGENT_CODE_TLS' };
  const e = await failure(noCa.request(srv.https), tls);
  assert.match(e.message, /certificate|issuer/i);
  await failure(noCa.request(srv.selfSigned), tls);
  await failure(withCa.request(srv.selfSigned), tls);
  await failure(withCa.request(srv.wrongHost), tls);
  await failure(withCa.request(srv.expired), tls);
  assert.equal((await withCa.request(srv.https)).statusCode, 200);
  assert.equal((await withCa.request(srv.httpsTls12)).statusCode, 200);
  const insecure = new Agent({ rejectUnauthorized: false });
  assert.equal((await insecure.request(srv.selfSigned)).statusCode, 200);
  noCa.destroy();
  withCa.destroy();
  insecure.destroy();
});

test('ETIMEDOUT: request deadline, headersTimeout, bodyTimeout, connectTimeout', async () => {
  const agent = new Agent({ headersTimeout: 300, bodyTimeout: 300 });
  let t0 = Date.now();
  await failure(agent.request({ url: `${srv.http}?delay_ms=5000`, timeout: 200 }), {
    code: 'ETIMEDOUT',
    agentCodeName: 'AGENT_CODE_TIMEOUT',
  });
  assert.ok(Date.now() - t0 < 2000);

  t0 = Date.now();
  await failure(agent.request(`${srv.http}?delay_ms=5000`), { code: 'ETIMEDOUT', agentCodeName: 'AGENT_CODE_HEADERS_TIMEOUT' });
  assert.ok(Date.now() - t0 < 2000);

  t0 = Date.now();
  await failure(agent.request(`${srv.http}?chunked=1&chunks=3&chunk_delay_ms=3000`), {
    code: 'ETIMEDOUT',
    agentCodeName: 'AGENT_CODE_BODY_TIMEOUT',
  });
  assert.ok(Date.now() - t0 < 2500);
  assert.ok(agent.stats().timeouts >= 3);

  const slowConnect = new Agent({ connectTimeout: 300 });
  t0 = Date.now();
  await failure(slowConnect.request(`http://127.0.0.1:${raw.blackhole_port}/`), {
    code: 'ETIMEDOUT',
    agentCodeName: 'AGENT_CODE_CONNECT_TIMEOUT',
  });
  const took = Date.now() - t0;
  assert.ok(took >= 250 && took < 2000, `connect timeout after ${took} ms`);
  agent.destroy();
  slowConnect.destroy();
});

test('ECONNRESET: reset in the middle of the body, reset before answering, FIN mid-body', async () => {
  const agent = new Agent();
  await failure(agent.request(`${srv.http}?bytes=100000&rst_mid=1`), {
    code: 'ECONNRESET',
    agentCodeName: 'AGENT_CODE_CONNECTION_RESET',
  });
  await failure(agent.request(`${srv.http}?rst=1`), { code: 'ECONNRESET', agentCodeName: 'AGENT_CODE_CONNECTION_RESET' });
  await failure(agent.request(`${srv.http}?bytes=100000&fin_mid=1`), {
    code: 'ECONNRESET',
    agentCodeName: 'AGENT_CODE_CONNECTION_CLOSED',
  });
  // The failed connections are gone from the pool; the agent keeps working.
  const ok = await agent.request(srv.http);
  assert.equal(ok.statusCode, 200);
  assert.equal(ok.reusedSocket, false);
  agent.destroy();
});

test('ECONNRESET: a stale reused connection under a POST (not retried) is AGENT_CODE_STALE_CONNECTION', async () => {
  const agent = new Agent();
  const first = await agent.request(srv.http);
  assert.equal(first.reusedSocket, false);
  await failure(agent.request({ method: 'POST', url: `${srv.http}?rst_if_reused=1`, body: 'x' }), {
    code: 'ECONNRESET',
    agentCodeName: 'AGENT_CODE_STALE_CONNECTION',
  });
  // A GET in the same situation is retried transparently on a new connection.
  await agent.request(srv.http);
  const retried = await agent.request(`${srv.http}?rst_if_reused=1`);
  assert.equal(retried.statusCode, 200);
  assert.ok(agent.stats().retries >= 1);
  agent.destroy();
});

test('EPIPE: the server closed while the request body was being written', async (t) => {
  const agent = new Agent({ keepAlive: false });
  const body = Buffer.alloc(16 << 20, 0x78); // more than the socket buffers absorb
  const seen = [];
  for (let i = 0; i < 40 && !seen.includes('EPIPE'); i++) {
    const err = await agent.request({ method: 'POST', url: `http://127.0.0.1:${raw.epipe_port}/`, body }).then(
      () => null,
      (e) => e,
    );
    assert.ok(err, 'the request failed');
    // FIN then RST: the write fails with EPIPE, unless the FIN was noticed first.
    assert.ok(['EPIPE', 'ECONNRESET'].includes(err.code), `${err.code}: ${err.message}`);
    seen.push(err.code === "EPIPE" ? "EPIPE" : `${err.code}/${err.agentCodeName}: ${err.message}`);
    if (err.code === 'EPIPE') assert.equal(err.agentCodeName, 'AGENT_CODE_BROKEN_PIPE');
  }
  assert.ok(seen.includes('EPIPE'), `EPIPE within 40 tries (saw ${seen.join(', ')})`);
  t.diagnostic(`EPIPE after ${seen.length} ${seen.length === 1 ? 'try' : 'tries'}`);
  agent.destroy();
});

test('library names for the rest: AGENT_CODE_PROTOCOL, AGENT_CODE_RESPONSE_TOO_LARGE', async () => {
  const agent = new Agent({ maxResponseSize: 1000 });
  await failure(agent.request(`${srv.http}?bad_status=1`), { code: 'AGENT_CODE_PROTOCOL', agentCodeName: 'AGENT_CODE_PROTOCOL' });
  await failure(agent.request(`${srv.http}?bytes=5000`), {
    code: 'AGENT_CODE_RESPONSE_TOO_LARGE',
    agentCodeName: 'AGENT_CODE_RESPONSE_TOO_LARGE',
  });
  assert.equal((await agent.request(`${srv.http}?bytes=1000`)).body.length, 1000);
  agent.destroy();
});

test(
  'AGENT_CODE_PANIC: a panic inside the library (test-hooks build preloaded in a child process)',
  {
    skip: HOOKS_LIB
      ? false
      : 'KEEPALIVE_AGENT_TEST_HOOKS_LIB is unset: `make test` sets it to the test-hooks build of the library',
  },
  async () => {
    assert.ok(fs.existsSync(HOOKS_LIB), `KEEPALIVE_AGENT_TEST_HOOKS_LIB=${HOOKS_LIB} does not exist`);
    // Same SONAME as the library the addon links, so the loader takes the preloaded one
    // and the addon finds agent_test_panic in it at run time.
    const preload = process.env.LD_PRELOAD ? `${HOOKS_LIB}:${process.env.LD_PRELOAD}` : HOOKS_LIB;
    const r = await runNode([PANIC_CHILD, 'present'], { env: { LD_PRELOAD: preload } });
    assert.equal(r.code, 0, `child exited with ${r.code} (signal ${r.signal})\n${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /^ok /m);
  },
);

test('without the test hooks, testPanic() throws a clear Error instead of crashing', async () => {
  // In a child without any preload, so the release library is the one loaded.
  const r = await runNode([PANIC_CHILD, 'absent'], { env: { LD_PRELOAD: '' } });
  assert.equal(r.code, 0, `child exited with ${r.code} (signal ${r.signal})\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /^ok /m);
});
