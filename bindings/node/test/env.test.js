'use strict';
// The environment switch (SPEC §3), each case in a child process with its own environment:
// KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED and its alias AWS_NODEJS_CONNECTION_REUSE_ENABLED
// set to false/0 are a kill switch: reuse goes off for every agent, keepAlive: true
// included, unless ignoreEnvironment: true. keepAlive: false is always off. The child
// reports what it saw (distinct client ports) and the read-back; the server counts the
// connections it accepted.

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

// {keepAlive, connections, source, description} of one child; checks the server's count.
async function report(env, spec = '{}') {
  await srv.reset();
  const r = await runNode([child, srv.http, spec], { env: { ...cleanEnv(), ...env }, timeoutMs: 15_000 });
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  const s = await srv.stats();
  assert.equal(s.accepted, out.connections, 'the server accepted as many connections as the client saw');
  assert.equal(s.requests, 4);
  return out;
}

async function run(env, spec = '{}') {
  const { keepAlive, connections } = await report(env, spec);
  return { keepAlive, connections };
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

test('the switch overrules keepAlive: true, under both names', async () => {
  assert.deepEqual(await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'false' }, '{"keepAlive":true}'), OFF);
  assert.deepEqual(await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: '0' }, '{"keepAlive":true}'), OFF);
});

test('ignoreEnvironment: true keeps reuse on whatever the switch says', async () => {
  for (const name of ['KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED', 'AWS_NODEJS_CONNECTION_REUSE_ENABLED']) {
    assert.deepEqual(await run({ [name]: 'false' }, '{"ignoreEnvironment":true}'), ON, name);
    assert.deepEqual(await run({ [name]: 'false' }, '{"keepAlive":true,"ignoreEnvironment":true}'), ON, name);
  }
});

test('keepAlive: false is off whatever the environment says, ignoreEnvironment included', async () => {
  assert.deepEqual(await run({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'true' }, '{"keepAlive":false}'), OFF);
  assert.deepEqual(await run({}, '{"keepAlive":false,"ignoreEnvironment":true}'), OFF);
});

test('the read-back: keepAliveSource and keepAliveDescription say what decided', async () => {
  let r = await report({});
  assert.equal(r.source, 'default');
  assert.match(r.description, /^on: default/);

  r = await report({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'false' }, '{"keepAlive":true}');
  assert.equal(r.source, 'environment');
  assert.equal(r.description, 'off: environment, KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED="false"');

  r = await report({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'false' });
  assert.equal(r.source, 'environment');
  assert.match(r.description, /^off: environment, AWS_NODEJS_CONNECTION_REUSE_ENABLED="false"/);

  r = await report({}, '{"keepAlive":false}');
  assert.equal(r.source, 'argument');
  assert.match(r.description, /^off: argument/);

  r = await report({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'true' }, '{"keepAlive":true}');
  assert.equal(r.source, 'argument');
  assert.match(r.description, /^on: argument/);

  r = await report({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'false' }, '{"ignoreEnvironment":true}');
  assert.equal(r.keepAlive, true);
  assert.notEqual(r.source, 'environment');
  assert.match(r.description, /^on: .*KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED="false".*ignoreEnvironment/);

  r = await report({ KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: 'yes' });
  assert.equal(r.keepAlive, true);
  assert.equal(r.source, 'default');
  assert.match(r.description, /KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED="yes" \(ignored/);
});

test('KeepAliveHttpHandler follows the switch the way the AWS documentation describes', async () => {
  assert.deepEqual(await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'false' }, 'handler'), OFF);
  assert.deepEqual(await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'false' }, 'handler:{"keepAlive":true}'), OFF);
  assert.deepEqual(
    await run({ AWS_NODEJS_CONNECTION_REUSE_ENABLED: 'false' }, 'handler:{"ignoreEnvironment":true}'),
    ON,
  );
  assert.deepEqual(await run({}, 'handler'), ON);
});
