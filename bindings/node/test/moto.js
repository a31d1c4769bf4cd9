'use strict';
// A local AWS endpoint for the SDK tests: moto's WSGI app for one service, served by
// waitress (fixtures/moto_server.py), and a TCP proxy that counts the connections made to it.

const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');
const { spawn } = require('node:child_process');

/** A TCP proxy on 127.0.0.1 that counts the connections it accepts. */
function countingProxy(targetPort) {
  return new Promise((resolve) => {
    const sockets = new Set();
    const p = {
      accepted: 0,
      open: 0,
      server: net.createServer((client) => {
        p.accepted++;
        p.open++;
        const upstream = net.connect(targetPort, '127.0.0.1');
        sockets.add(client);
        sockets.add(upstream);
        const done = () => {
          client.destroy();
          upstream.destroy();
        };
        client.on('error', done);
        upstream.on('error', done);
        client.on('close', () => {
          p.open--;
          sockets.delete(client);
          upstream.end();
        });
        upstream.on('close', () => {
          sockets.delete(upstream);
          client.end();
        });
        client.pipe(upstream);
        upstream.pipe(client);
      }),
      close: () => {
        for (const s of sockets) s.destroy();
        return new Promise((r) => p.server.close(r));
      },
    };
    p.server.listen(0, '127.0.0.1', () => {
      p.url = `http://127.0.0.1:${p.server.address().port}`;
      resolve(p);
    });
  });
}

/** moto's app for `service` under waitress (fixtures/moto_server.py): {port, child}. */
async function startMoto(python, service) {
  const child = spawn(python, [path.join(__dirname, 'fixtures', 'moto_server.py'), service], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const rl = readline.createInterface({ input: child.stdout });
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`moto did not start within 60 s: ${stderr}`)), 60_000);
    rl.once('line', (l) => {
      clearTimeout(timer);
      resolve(l);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`moto exited with ${code}: ${stderr}`));
    });
  });
  rl.close();
  return { port: JSON.parse(line).port, child };
}

module.exports = { countingProxy, startMoto };
