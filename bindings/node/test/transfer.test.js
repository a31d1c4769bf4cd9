'use strict';
// 1 GiB each way through agent.stream() / a streamed request body, each in a fresh child
// process (fixtures/transfer_child.js), beside the same transfer with node:http: every
// byte checked (the download against the server's pattern, the upload by the server's
// FNV-1a hash), and the resident set size may grow by less than 64 MiB.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startServer, runNode } = require('./helpers');

const GIB = 1 << 30;
const LIMIT = 64 << 20;
const mib = (x) => (x / 2 ** 20).toFixed(1);

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

async function transfer(who, what) {
  const r = await runNode([path.join(__dirname, 'fixtures', 'transfer_child.js'), who, what, srv.http, String(GIB)], {
    timeoutMs: 60_000,
  });
  assert.equal(r.code, 0, `${who} ${what}: ${r.stderr}`);
  const out = JSON.parse(r.stdout);
  out.growth = out.rssPeak - out.rssBefore;
  out.rate = GIB / 2 ** 20 / (out.ms / 1000);
  return out;
}

const line = (who, o) => `${who}: ${Math.round(o.ms)} ms (${o.rate.toFixed(0)} MiB/s), RSS ${mib(o.rssBefore)} -> peak ${mib(o.rssPeak)} MiB (+${mib(o.growth)} MiB)`;

/** FNV-1a 64 of `buf` (16 hex digits), as the server's body_fnv. */
function fnv1a(buf) {
  let lo = 0x84222325;
  let hi = 0xcbf29ce4;
  for (let i = 0; i < buf.length; i++) {
    lo ^= buf[i];
    const l = (lo >>> 0) * 0x1b3;
    hi = (Math.imul(hi, 0x1b3) + ((lo << 8) >>> 0) + Math.floor(l / 4294967296)) >>> 0;
    lo = l >>> 0;
  }
  return (hi >>> 0).toString(16).padStart(8, '0') + (lo >>> 0).toString(16).padStart(8, '0');
}

test('1 GiB download: agent.stream() beside node:http', { timeout: 150_000 }, async (t) => {
  const ours = await transfer('ours', 'download');
  const node = await transfer('node', 'download');
  t.diagnostic(`download 1 GiB, ${line('keepalive-agent', ours)}; ${line('node:http', node)}`);
  assert.equal(ours.ok, true, 'every byte matched the pattern');
  assert.equal(ours.bytes, GIB);
  assert.equal(node.ok, true);
  assert.equal(ours.stats.errors, 0);
  assert.equal(ours.stats.connectionsOpened, 1, 'the warm-up connection was reused');
  assert.ok(ours.growth < LIMIT, `RSS grew by ${mib(ours.growth)} MiB`);
});

test('1 GiB upload from a generated Readable: the server hashes the same bytes as from node:http', { timeout: 150_000 }, async (t) => {
  const ours = await transfer('ours', 'upload');
  const node = await transfer('node', 'upload');
  t.diagnostic(`upload 1 GiB, ${line('keepalive-agent', ours)}; ${line('node:http', node)}`);
  assert.equal(ours.ok, true);
  assert.equal(ours.echo.body_len, GIB);
  assert.equal(node.echo.body_len, GIB);
  assert.equal(ours.echo.body_fnv, node.echo.body_fnv, 'the same bytes as node:http sent');
  // The 8 MiB warm-up upload's hash, computed here from the generator's definition.
  const block = Buffer.alloc(1 << 20);
  let x = 0x2545f491;
  for (let i = 0; i < block.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    block[i] = x & 0xff;
  }
  assert.equal(ours.warmEcho.body_len, 8 << 20);
  assert.equal(ours.warmEcho.body_fnv, fnv1a(Buffer.concat(new Array(8).fill(block))));
  assert.equal(ours.stats.errors, 0);
  assert.ok(ours.growth < LIMIT, `RSS grew by ${mib(ours.growth)} MiB`);
});
