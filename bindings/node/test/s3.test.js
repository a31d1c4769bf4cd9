'use strict';
// KeepAliveHttpHandler with a real @aws-sdk/client-s3 client against a local S3 (moto's
// WSGI app under waitress, on loopback, path-style addressing), connections counted by a
// TCP proxy in front of it: PutObject of 64 MiB from fs.createReadStream and GetObject
// piped to a file in a child process (its memory figures are its own), and the multipart
// Upload of @aws-sdk/lib-storage with keep-alive on and off.
//
// moto decodes the SDK's aws-chunked uploads (a streamed PutObject) slowly, tens of
// seconds for 64 MiB on a small machine: the timeouts are generous.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { pipeline } = require('node:stream/promises');
const { S3Client, CreateBucketCommand, GetObjectCommand } = require('@aws-sdk/client-s3');
const { Upload } = require('@aws-sdk/lib-storage');
const { KeepAliveHttpHandler } = require('../aws');
const { ROOT, runNode } = require('./helpers');
const { countingProxy, startMoto } = require('./moto');

const MOTO_PYTHON = process.env.KEEPALIVE_NODE_MOTO_PYTHON || path.join(ROOT, 'build', 'venv-moto', 'bin', 'python');
const motoAvailable = fs.existsSync(MOTO_PYTHON);
const motoRequired = process.env.KEEPALIVE_NODE_REQUIRE_MOTO === '1';
const skip = motoAvailable ? false : motoRequired ? false : 'moto venv missing: run `make node-moto`';

const credentials = { accessKeyId: 'test', secretAccessKey: 'test' };
const region = 'us-east-1';
const SIZE = 64 << 20;
const mib = (x) => (x / 2 ** 20).toFixed(1);

let moto;
let proxy;
let dir;
let source; // a 64 MiB file of random bytes
let sourceSha;

test.before(async () => {
  if (!motoAvailable) return;
  moto = await startMoto(MOTO_PYTHON, 's3');
  proxy = await countingProxy(moto.port);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keepalive-s3-'));
  source = path.join(dir, 'source.bin');
  const data = crypto.randomBytes(SIZE);
  fs.writeFileSync(source, data);
  sourceSha = crypto.createHash('sha256').update(data).digest('hex');
  const s3 = client(new KeepAliveHttpHandler());
  for (const bucket of ['streams', 'multipart']) await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  s3.destroy();
});
test.after(async () => {
  if (proxy) await proxy.close();
  if (moto) moto.child.stdin.end();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function client(handler) {
  return new S3Client({ endpoint: proxy.url, region, credentials, forcePathStyle: true, requestHandler: handler, maxAttempts: 1 });
}

async function sha256(readable) {
  const hash = crypto.createHash('sha256');
  await pipeline(readable, hash);
  return hash.digest('hex');
}

test('S3 PutObject of 64 MiB from fs.createReadStream, GetObject piped to a file: same bytes, bounded memory', { skip, timeout: 240_000 }, async (t) => {
  assert.ok(motoAvailable, `moto is required (KEEPALIVE_NODE_REQUIRE_MOTO=1) but ${MOTO_PYTHON} is missing`);
  const target = path.join(dir, 'downloaded.bin');
  const before = proxy.accepted;
  const r = await runNode([path.join(__dirname, 'fixtures', 's3_child.js'), proxy.url, 'streams', source, target], {
    timeoutMs: 230_000,
  });
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  const growth = out.rssPeak - out.rssBefore;
  t.diagnostic(
    `PutObject 64 MiB ${out.putMs} ms (${mib(SIZE / (out.putMs / 1000))} MiB/s, moto-bound), ` +
      `GetObject to a file ${out.getMs} ms (${mib(SIZE / (out.getMs / 1000))} MiB/s); ` +
      `RSS ${mib(out.rssBefore)} -> peak ${mib(out.rssPeakPut)} MiB after the put, ${mib(out.rssPeak)} MiB after the get (+${mib(growth)} MiB)`,
  );
  assert.equal(out.bytes, SIZE);
  assert.equal(out.etag, out.getEtag);
  assert.equal(await sha256(fs.createReadStream(target)), sourceSha, 'the downloaded file is the uploaded one');
  assert.ok(growth < 48 << 20, `RSS grew by ${mib(growth)} MiB`);
  // Warm-up put and get, then the big ones: one connection, reused.
  assert.equal(out.stats.requests, 4);
  assert.equal(out.stats.errors, 0);
  assert.equal(out.stats.connectionsOpened, 1);
  assert.equal(proxy.accepted - before, 1);
});

async function multipart(handler, key) {
  const s3 = client(handler);
  const before = proxy.accepted;
  const upload = new Upload({
    client: s3,
    params: { Bucket: 'multipart', Key: key, Body: fs.createReadStream(source) },
    partSize: 8 << 20,
    queueSize: 4,
  });
  const done = await upload.done();
  assert.match(done.ETag, /-8"$/, 'eight parts');
  const got = await s3.send(new GetObjectCommand({ Bucket: 'multipart', Key: key }));
  assert.equal(got.ContentLength, SIZE);
  assert.equal(await sha256(got.Body), sourceSha);
  const stats = handler.agent.stats();
  s3.destroy();
  // Create, 8 parts, complete, get.
  assert.equal(stats.requests, 11);
  assert.equal(stats.errors, 0);
  return { stats, connections: proxy.accepted - before };
}

test('lib-storage Upload of 64 MiB (8 parts, 4 at once): keep-alive on uses a few connections', { skip, timeout: 120_000 }, async (t) => {
  assert.ok(motoAvailable);
  const { stats, connections } = await multipart(new KeepAliveHttpHandler({ keepAlive: true }), 'on');
  t.diagnostic(`keep-alive on: ${connections} connections for ${stats.requests} requests (${stats.reusedRequests} reused)`);
  assert.ok(connections >= 1 && connections <= 4, `${connections} connections`);
  assert.equal(stats.connectionsOpened, connections);
  assert.equal(stats.reusedRequests, stats.requests - connections);
});

test('lib-storage Upload of 64 MiB with keepAlive: false: one connection per request', { skip, timeout: 120_000 }, async (t) => {
  assert.ok(motoAvailable);
  const { stats, connections } = await multipart(new KeepAliveHttpHandler({ keepAlive: false }), 'off');
  t.diagnostic(`keep-alive off: ${connections} connections for ${stats.requests} requests`);
  assert.equal(connections, stats.requests);
  assert.equal(stats.reusedRequests, 0);
});
