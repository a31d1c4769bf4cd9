#!/usr/bin/env node
'use strict';
// make demo: keep-alive on vs off from Node, two agents in ONE process, over http and https.
//
// Reads DEMO_HTTP_URL, DEMO_HTTPS_URL, DEMO_CA_FILE, DEMO_ADMIN_URL and DEMO_REQUESTS and
// prints markdown rows:
// | language | client | scheme | requests | connections (server) | req/s | p50 ms | p99 ms |
// Connections are what the server accepted (admin /reset before each row, /stats after),
// fetched with Node's own http module, which the server does not count.

const fs = require('node:fs');
const http = require('node:http');
const { Agent } = require('..');

function env(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`demo.js: ${name} is not set (run through make demo)`);
    process.exit(2);
  }
  return v;
}

const httpUrl = env('DEMO_HTTP_URL');
const httpsUrl = env('DEMO_HTTPS_URL');
const ca = fs.readFileSync(env('DEMO_CA_FILE'));
const admin = env('DEMO_ADMIN_URL').replace(/\/$/, '');
const n = Number(process.env.DEMO_REQUESTS || 200);

function adminGet(path) {
  return new Promise((resolve, reject) => {
    http
      .get(`${admin}${path}`, { agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve(JSON.parse(body)));
      })
      .on('error', reject);
  });
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function row(label, agent, scheme, url) {
  await adminGet('/reset');
  const lat = [];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const s = process.hrtime.bigint();
    const res = await agent.request(url);
    if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
    lat.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const { accepted } = await adminGet('/stats');
  lat.sort((a, b) => a - b);
  console.log(
    `| Node | ${label} | ${scheme} | ${n} | ${accepted} | ${Math.round(n / secs)} | ` +
      `${percentile(lat, 50).toFixed(3)} | ${percentile(lat, 99).toFixed(3)} |`,
  );
}

(async () => {
  // Two clients in the same process: one reuses connections, the other turns reuse off.
  const reuse = new Agent({ keepAlive: true, ca });
  const noReuse = new Agent({ keepAlive: false, ca });
  await row('Agent({ keepAlive: true })', reuse, 'http', httpUrl);
  await row('Agent({ keepAlive: false })', noReuse, 'http', httpUrl);
  await row('Agent({ keepAlive: true })', reuse, 'https', httpsUrl);
  await row('Agent({ keepAlive: false })', noReuse, 'https', httpsUrl);
  reuse.destroy();
  noReuse.destroy();
})().catch((e) => {
  console.error(`demo.js: ${e.stack || e}`);
  process.exit(1);
});
