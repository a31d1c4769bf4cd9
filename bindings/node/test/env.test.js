'use strict';
// The environment switch (SPEC §3), each case in a child process with its own environment:
// KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED and its alias AWS_NODEJS_CONNECTION_REUSE_ENABLED
// turn reuse off for agents that do not choose; an explicit keepAlive always wins.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startServer, runNode, cleanEnv } = require('./helpers');

const child = path.join(__dirname, 'fixtures', 'env_child.js');
let srv;
test.before(async () => {
  srv = await startServer();
});
test.after(async () => {
  await srv.stop();
});

async function run(env, spec = '{}') {
  const r = await runNode([child, srv.http, spec], { env: { ...cleanEnv(), ...env }, timeoutMs: 15_000 });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

const OFF = { keepAlive: false, connections: 4 };
const ON = { keepAlive: true, connections: 1 };

test('no variable: keep-alive on by default', async () => {
  assert.deepEqual(await run({}), ON);
});

test('KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED=false / 0 / FALSE turns reuse off', async () => {
  for (const v of ['false', '0', 'FALSE', ' False ']) {
    assert.deepEqual(await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: v }), OFF, v);
  }
});

test('AWS_NODEJS_CONNECTION_REUSE_ENABLED (the AWS SDK name) is read as an alias', async () => {
  assert.deepEqual(await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'false' }), OFF);
  assert.deepEqual(await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: '0' }), OFF);
  assert.deepEqual(await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'true' }), ON);
});

test('true / 1 and unknown values leave reuse on; the library name is read first', async () => {
  assert.deepEqual(await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'true' }), ON);
  assert.deepEqual(await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: '1' }), ON);
  assert.deepEqual(await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'maybe' }), ON);
  assert.deepEqual(
    await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'true', AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'false' }),
    ON,
  );
});

test('an explicit keepAlive always wins over the environment', async () => {
  assert.deepEqual(await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'false' }, '{"keepAlive":true}'), ON);
  assert.deepEqual(await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'false' }, '{"keepAlive":true}'), ON);
  assert.deepEqual(await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'true' }, '{"keepAlive":false}'), OFF);
});

test('KeepAliveHttpHandler follows the switch the way the AWS documentation describes', async () => {
  assert.deepEqual(await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'false' }, 'handler'), OFF);
  assert.deepEqual(await run({}, 'handler'), ON);
});
