'use strict';
// Memory: resident set size stays flat over 50,000 requests after a 10,000-request warm-up
// (nothing per request leaks on either side of the addon: contexts, responses, references,
// external body buffers), and over 20,000 streamed exchanges (response streams read to the
// end or destroyed, streamed uploads: stream contexts, body sources, their ring buffers).
// The workload runs in a child process: see fixtures/rss_child.js.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startServer, runNode } = require('./helpers');

let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

test('RSS flat (within 10%) over 50,000 requests after warm-up', { timeout: 180_000 }, async (t) => {
  const r = await runNode(
    [
      '--expose-gc',
      '--min-semi-space-size=16',
      '--max-semi-space-size=16',
      path.join(__dirname, 'fixtures', 'rss_child.js'),
      srv.http,
      '10000',
      '10000',
      '5',
    ],
    { timeoutMs: 170_000 },
  );
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  const mb = (x) => (x / 2 ** 20).toFixed(1);
  const report =
    `RSS after warm-up ${mb(out.base.rss)} MiB, after each 10,000: ${out.samples.map((s) => mb(s.rss)).join(', ')} MiB; ` +
    `heapUsed ${mb(out.base.heapUsed)} -> ${mb(out.samples.at(-1).heapUsed)} MiB; ${out.reqPerSec} req/s`;
  t.diagnostic(report);
  assert.equal(out.failures, 0);
  assert.equal(out.wrong, 0);
  assert.equal(out.requests, 60_000);
  assert.ok(out.connectionsOpened <= 10, `pooled: ${out.connectionsOpened} connections`);
  const last = out.samples.at(-1);
  assert.ok(last.rss <= out.base.rss * 1.1, `RSS grew more than 10%: ${report}`);
  assert.ok(last.heapUsed <= out.base.heapUsed * 1.5 + 2 ** 20, `JS heap grew: ${report}`);
});

test('RSS flat (within 10%) over 20,000 streamed exchanges after warm-up', { timeout: 180_000 }, async (t) => {
  const r = await runNode(
    [
      '--expose-gc',
      '--min-semi-space-size=16',
      '--max-semi-space-size=16',
      path.join(__dirname, 'fixtures', 'rss_child.js'),
      srv.http,
      '10000',
      '5000',
      '4',
      'stream',
    ],
    { timeoutMs: 170_000 },
  );
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  const mb = (x) => (x / 2 ** 20).toFixed(1);
  const report =
    `RSS after warm-up ${mb(out.base.rss)} MiB, after each 5,000: ${out.samples.map((s) => mb(s.rss)).join(', ')} MiB; ` +
    `heapUsed ${mb(out.base.heapUsed)} -> ${mb(out.samples.at(-1).heapUsed)} MiB; ${out.reqPerSec} exchanges/s`;
  t.diagnostic(report);
  assert.equal(out.failures, 0);
  assert.equal(out.wrong, 0);
  assert.equal(out.requests, 30_000);
  const last = out.samples.at(-1);
  assert.ok(last.rss <= out.base.rss * 1.1, `RSS grew more than 10%: ${report}`);
  assert.ok(last.heapUsed <= out.base.heapUsed * 1.5 + 2 ** 20, `JS heap grew: ${report}`);
});
