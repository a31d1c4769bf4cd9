'use strict';
// Test helpers: the shared test server (target/release/keepalive-testserver), its admin
// API, a free-port finder, a child-process runner, and the repository's scripts that start
// nginx and the forward proxies.

const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const http = require('node:http');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const PKG = path.resolve(__dirname, '..');
const TESTSERVER = process.env.KEEPALIVE_TESTSERVER || path.join(ROOT, 'target', 'release', 'keepalive-testserver');

/**
 * Starts the test server (it exits when its stdin closes). Returns
 * {http, https, httpsTls12, wrongHost, expired, selfSigned, admin (base URLs ending in '/'),
 *  ports, caFile, ca (PEM string), stats(), reset(), stop()}.
 */
async function startServer() {
  if (!fs.existsSync(TESTSERVER)) {
    throw new Error(`${TESTSERVER} is missing: run \`make testserver\` in ${ROOT}`);
  }
  const child = spawn(TESTSERVER, [], { stdio: ['pipe', 'pipe', 'inherit'] });
  const rl = readline.createInterface({ input: child.stdout });
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('test server did not start within 10 s')), 10_000);
    rl.once('line', (l) => {
      clearTimeout(timer);
      resolve(l);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`test server exited with ${code}`));
    });
  });
  rl.close();
  const info = JSON.parse(line);
  const base = (port, scheme = 'http') => `${scheme}://127.0.0.1:${port}/`;
  const server = {
    info,
    http: base(info.http_port),
    https: base(info.https_port, 'https'),
    httpsTls12: base(info.https_tls12_port, 'https'),
    wrongHost: base(info.https_wrong_host_port, 'https'),
    expired: base(info.https_expired_port, 'https'),
    selfSigned: base(info.https_self_signed_port, 'https'),
    admin: base(info.admin_port),
    caFile: info.ca_pem_path,
    ca: fs.readFileSync(info.ca_pem_path, 'utf8'),
    stats: () => adminGet(info.admin_port, '/stats'),
    reset: () => adminGet(info.admin_port, '/reset'),
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.stdin.end();
        setTimeout(() => child.kill('SIGKILL'), 5000).unref();
      }),
  };
  return server;
}

/** GET on the admin port with Node's own http client (not the code under test). */
function adminGet(port, p) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (data += d));
      res.on('end', () => {
        try {
          resolve(JSON.parse(data));
        } catch (e) {
          reject(e);
        }
      });
    });
    req.on('error', reject);
  });
}

/** A TCP port on 127.0.0.1 that nothing listens on (bound, then closed). */
function closedPort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Runs `node <args>` with extra environment; resolves {code, signal, stdout, stderr, ms}.
 * Killed after timeoutMs.
 */
function runNode(args, { env = {}, timeoutMs = 30_000, cwd = PKG } = {}) {
  return new Promise((resolve) => {
    const start = process.hrtime.bigint();
    const child = spawn(process.execPath, args, {
      cwd,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      resolve({ code, signal, stdout, stderr, ms });
    });
  });
}

/** Environment without the reuse switch, so tests start from the library default. */
function cleanEnv() {
  return {
    KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED: '',
    AWS_NODEJS_CONNECTION_REUSE_ENABLED: '',
  };
}

/**
 * Runs `scripts/<script> start --json --watch <this process>` (scripts/nginx.sh,
 * scripts/proxies.sh) and resolves with the JSON object it prints. The script's watchdog
 * stops what it started if this process dies before stopScript() is called.
 */
function startScript(script, timeoutMs = 60_000) {
  const file = path.join(ROOT, 'scripts', script);
  return new Promise((resolve, reject) => {
    execFile('bash', [file, 'start', '--json', '--watch', String(process.pid)], { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`${script} start failed: ${err.message}\n${stderr}`));
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop()));
      } catch (e) {
        reject(new Error(`${script} start printed no JSON: ${stdout}\n${stderr}`));
      }
    });
  });
}

/** `scripts/<script> stop DIR`. */
function stopScript(script, dir, timeoutMs = 30_000) {
  const file = path.join(ROOT, 'scripts', script);
  return new Promise((resolve, reject) => {
    execFile('bash', [file, 'stop', dir], { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${script} stop failed: ${err.message}\n${stderr}`));
      else resolve();
    });
  });
}

module.exports = { ROOT, PKG, startServer, adminGet, closedPort, runNode, cleanEnv, startScript, stopScript };
