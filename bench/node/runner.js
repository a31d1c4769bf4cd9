'use strict';
// The Node side of `make bench`: the keepalive-agent binding against http.Agent({keepAlive})
// and undici (Pool, and the top-level request()), driven by bench/run.py.
//
// Server mode (no arguments): one JSON command per line on stdin, one JSON answer per line.
//   {"op":"versions"}
//   {"op":"run","client":"undici-pool","conc":1,"keep_alive":true,"seconds":1.2,"warmup":0.2,
//    "max_requests":100000,"expect_len":13,"url":"...","ca_file":"..."}
// Clients: ours, http-agent, undici-pool, undici-request. conc requests are kept in flight by
// conc async loops on the one event loop. keep_alive false: `Connection: close` on a fresh
// connection for every request (ours: keepAlive false; http.Agent keepAlive false; undici:
// the `connection: close` header). TLS is verified against ca_file.
// cpu_s is process.cpuUsage() over the measured part (the whole process, every thread).
//
// Memory mode: node --expose-gc runner.js mem <client> <n> <url> <ca_file>
//   n idle pooled connections; prints RSS before/after and thread counts as JSON.

const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');
const readline = require('readline');

const ROOT = path.resolve(__dirname, '..', '..');
const TIMEOUT_MS = 30000;

let undici = null;
let undiciError = null;
try {
  undici = require('undici');
} catch (e) {
  undiciError = String(e.message || e).split('\n')[0];
}
let ours = null;
let oursError = null;
try {
  ours = require(path.join(ROOT, 'bindings', 'node'));
} catch (e) {
  oursError = String(e.message || e).split('\n')[0];
}

function readCa(file) {
  return file ? fs.readFileSync(file) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Clients: make(cmd) -> {fetch: async () => [status, bodyLength], close: async () => {}}

function makeOurs(cmd, extra = {}) {
  if (!ours) throw new Error(`binding unavailable: ${oursError}`);
  const opts = { keepAlive: cmd.keep_alive, ...extra };
  if (cmd.ca_file) opts.ca = readCa(cmd.ca_file);
  const agent = new ours.Agent(opts);
  return {
    agent,
    fetch: async () => {
      const r = await agent.request({ method: 'GET', url: cmd.url });
      return [r.statusCode, r.body.length];
    },
    close: async () => agent.destroy(),
  };
}

function makeHttpAgent(cmd, extra = {}) {
  const u = new URL(cmd.url);
  const tls = u.protocol === 'https:';
  const mod = tls ? https : http;
  const agentOpts = { keepAlive: cmd.keep_alive, ...extra };
  if (tls) agentOpts.ca = readCa(cmd.ca_file);
  const agent = new mod.Agent(agentOpts);
  const reqOpts = { agent, method: 'GET', timeout: TIMEOUT_MS };
  return {
    agent,
    fetch: () =>
      new Promise((resolve, reject) => {
        const req = mod.request(u, reqOpts, (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => resolve([res.statusCode, Buffer.concat(chunks).length]));
          res.on('error', reject);
        });
        req.on('error', reject);
        req.end();
      }),
    close: async () => agent.destroy(),
  };
}

function undiciHeaders(cmd) {
  return cmd.keep_alive ? undefined : { connection: 'close' };
}

function makeUndiciPool(cmd, extra = {}) {
  if (!undici) throw new Error(`undici unavailable: ${undiciError}`);
  const u = new URL(cmd.url);
  const opts = { connections: Math.max(1, cmd.conc), ...extra };
  if (u.protocol === 'https:') opts.connect = { ca: readCa(cmd.ca_file) };
  const pool = new undici.Pool(u.origin, opts);
  const reqOpts = { path: u.pathname + u.search, method: 'GET', headers: undiciHeaders(cmd) };
  return {
    agent: pool,
    fetch: async () => {
      const r = await pool.request(reqOpts);
      const body = Buffer.from(await r.body.arrayBuffer());
      return [r.statusCode, body.length];
    },
    close: async () => pool.close(),
  };
}

function makeUndiciRequest(cmd) {
  if (!undici) throw new Error(`undici unavailable: ${undiciError}`);
  const u = new URL(cmd.url);
  // undici.request() goes through a dispatcher (by default the global Agent); this one only
  // adds the CA.
  const dispatcher = new undici.Agent(u.protocol === 'https:' ? { connect: { ca: readCa(cmd.ca_file) } } : {});
  const reqOpts = { method: 'GET', headers: undiciHeaders(cmd), dispatcher };
  return {
    agent: dispatcher,
    fetch: async () => {
      const r = await undici.request(cmd.url, reqOpts);
      const body = Buffer.from(await r.body.arrayBuffer());
      return [r.statusCode, body.length];
    },
    close: async () => dispatcher.close(),
  };
}

const CLIENTS = {
  ours: makeOurs,
  'http-agent': makeHttpAgent,
  'undici-pool': makeUndiciPool,
  'undici-request': makeUndiciRequest,
};

// ---------------------------------------------------------------------------------------------
// Driver

const nowS = () => Number(process.hrtime.bigint()) / 1e9;

async function phase(cell, fetch, seconds, record) {
  cell.deadline = nowS() + seconds;
  cell.started = 0;
  cell.record = record;
  cell.lat = [];
  cell.bytes = 0;
  const worker = async () => {
    while (nowS() < cell.deadline && cell.started < cell.maxRequests) {
      cell.started++;
      cell.total++;
      const t0 = nowS();
      let status = 0;
      let len = 0;
      try {
        [status, len] = await fetch();
      } catch (e) {
        cell.fail(`${e.code || e.name}: ${e.message}`);
        if (record) cell.lat.push(nowS() - t0);
        continue;
      }
      const lat = nowS() - t0;
      if (status !== 200 || len !== cell.expectLen) cell.fail(`status ${status}, ${len} bytes`);
      if (record) {
        cell.lat.push(lat);
        cell.bytes += len;
      }
    }
  };
  const workers = [];
  for (let i = 0; i < cell.conc; i++) workers.push(worker());
  await Promise.all(workers);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  return sorted[Math.floor(p * (sorted.length - 1) + 0.5)];
}

async function run(cmd) {
  const make = CLIENTS[cmd.client];
  if (!make) return { fatal: `unknown client ${cmd.client}` };
  let client;
  try {
    client = make(cmd);
  } catch (e) {
    return { fatal: e.message };
  }
  const cell = {
    conc: cmd.conc,
    maxRequests: cmd.max_requests,
    expectLen: cmd.expect_len,
    total: 0,
    errors: 0,
    error: '',
    fail(msg) {
      this.errors++;
      if (!this.error) this.error = msg.slice(0, 300);
    },
  };
  await phase(cell, client.fetch, cmd.warmup, false);
  const warmupErrors = cell.errors;
  const t0 = nowS();
  const c0 = process.cpuUsage();
  await phase(cell, client.fetch, cmd.seconds, true);
  const cpu = process.cpuUsage(c0);
  const t1 = nowS();
  await client.close();
  const lat = cell.lat.sort((a, b) => a - b);
  return {
    requests: lat.length,
    total_requests: cell.total,
    errors: cell.errors - warmupErrors,
    warmup_errors: warmupErrors,
    seconds: t1 - t0,
    p50_ms: percentile(lat, 0.5) * 1e3,
    p99_ms: percentile(lat, 0.99) * 1e3,
    cpu_s: (cpu.user + cpu.system) / 1e6,
    bytes: cell.bytes,
    error: cell.error,
  };
}

function versions() {
  const oursVersion = ours
    ? `keepalive-agent ${ours.version || require(path.join(ROOT, 'bindings', 'node', 'package.json')).version}`
    : `unavailable (${oursError})`;
  return {
    node: process.version,
    ours: oursVersion,
    'http-agent': `node ${process.version} http.Agent`,
    'undici-pool': undici ? `undici ${require('undici/package.json').version} Pool` : `unavailable (${undiciError})`,
    'undici-request': undici
      ? `undici ${require('undici/package.json').version} request()`
      : `unavailable (${undiciError})`,
  };
}

// ---------------------------------------------------------------------------------------------
// Memory: n idle pooled connections

function procStatus(key) {
  const line = fs
    .readFileSync('/proc/self/status', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(key + ':'));
  return line ? parseInt(line.split(/\s+/)[1], 10) : -1;
}

async function settle() {
  if (global.gc) global.gc();
  await new Promise((r) => setTimeout(r, 300));
  if (global.gc) global.gc();
}

async function mem(clientName, n, url, caFile) {
  const cmd = { url, ca_file: caFile === '-' ? '' : caFile, keep_alive: true, conc: n };
  let client;
  if (clientName === 'ours') {
    client = makeOurs(cmd, { maxFreeSockets: n + 16, timeout: 120000 });
  } else if (clientName === 'http-agent') {
    client = makeHttpAgent(cmd, { maxFreeSockets: n + 16, maxSockets: Infinity });
  } else if (clientName === 'undici-pool') {
    client = makeUndiciPool(cmd, { keepAliveTimeout: 120000, keepAliveMaxTimeout: 120000 });
  } else {
    throw new Error(`memory: unknown client ${clientName}`);
  }
  await client.fetch();
  await settle();
  const before = [procStatus('VmRSS'), procStatus('Threads')];
  const results = await Promise.allSettled(Array.from({ length: n }, () => client.fetch()));
  const errors = results.filter((r) => r.status !== 'fulfilled' || r.value[0] !== 200).length;
  await settle();
  const after = [procStatus('VmRSS'), procStatus('Threads')];
  let idle = -1;
  if (clientName === 'ours' && client.agent.stats) idle = Number(client.agent.stats().idle);
  if (clientName === 'http-agent') {
    idle = Object.values(client.agent.freeSockets).reduce((s, l) => s + l.length, 0);
  }
  process.stdout.write(
    JSON.stringify({
      rss_before_kib: before[0],
      rss_after_kib: after[0],
      threads_before: before[1],
      threads_after: after[1],
      idle,
      errors,
    }) + '\n',
  );
  await client.close();
}

async function serve() {
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    if (cmd.op === 'quit') break;
    let out;
    try {
      out = cmd.op === 'versions' ? versions() : await run(cmd);
    } catch (e) {
      out = { fatal: `${e.name}: ${e.message}` };
    }
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  process.exit(0);
}

const argv = process.argv.slice(2);
if (argv.length === 5 && argv[0] === 'mem') {
  mem(argv[1], parseInt(argv[2], 10), argv[3], argv[4]).then(
    () => process.exit(0),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
} else if (argv.length === 0) {
  serve();
} else {
  console.error('usage: runner.js | runner.js mem ours|http-agent|undici-pool N URL CA_FILE|-');
  process.exit(2);
}
