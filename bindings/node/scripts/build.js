#!/usr/bin/env node
'use strict';
// Builds build/Release/keepalive_agent.node offline: no node-gyp, no header download. Run by
// `npm run build` (from source) and by `npm pack` (prepack), which ships the result: the
// package has no install script, so installing the tarball needs no compiler.
//
//   1. Finds libkeepalive_agent.so: $KEEPALIVE_AGENT_LIB_DIR, else <repo>/target/release
//      (running `cargo build --release -p keepalive-agent` in the repo when it is missing).
//   2. Copies it beside the addon as libkeepalive_agent.so and under its SONAME
//      (libkeepalive_agent.so.0), so the addon's rpath $ORIGIN finds it.
//   3. Compiles src/addon.c with the system C compiler ($CC, else cc) against the
//      node-api-headers package (else node's own include/node), include/keepalive_agent.h,
//      and node's own uv.h when it is installed (the addon declares what it uses of libuv
//      itself otherwise).
//
// Does nothing when the addon is newer than its inputs, unless run with --force.
// Environment: KEEPALIVE_AGENT_ROOT (the repository), KEEPALIVE_AGENT_LIB_DIR,
// KEEPALIVE_AGENT_INCLUDE_DIR (directory of keepalive_agent.h), CC, CARGO.

const fs = require('node:fs');
const path = require('node:path');
const { execFileSync, spawnSync } = require('node:child_process');

const pkgDir = path.resolve(__dirname, '..');
const outDir = path.join(pkgDir, 'build', 'Release');
const addon = path.join(outDir, 'keepalive_agent.node');
const source = path.join(pkgDir, 'src', 'addon.c');
const force = process.argv.includes('--force');

function log(msg) {
  process.stderr.write(`keepalive-agent: ${msg}\n`);
}

function fail(msg) {
  log(msg);
  process.exit(1);
}

function mtime(file) {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return -1;
  }
}

function exists(file) {
  return mtime(file) >= 0;
}

// The repository holding the Rust crate: explicit, or the package's own grandparent.
function findRoot() {
  const tried = [];
  for (const dir of [process.env.KEEPALIVE_AGENT_ROOT, path.resolve(pkgDir, '..', '..')]) {
    if (!dir) continue;
    tried.push(dir);
    if (exists(path.join(dir, 'Cargo.toml')) && exists(path.join(dir, 'include', 'keepalive_agent.h'))) {
      return { root: dir, tried };
    }
  }
  return { root: null, tried };
}

function findLibrary(root, rootTried) {
  const tried = [];
  const candidates = [];
  if (process.env.KEEPALIVE_AGENT_LIB_DIR) candidates.push(process.env.KEEPALIVE_AGENT_LIB_DIR);
  if (root) candidates.push(path.join(root, 'target', 'release'));
  for (const dir of candidates) {
    const so = path.join(dir, 'libkeepalive_agent.so');
    tried.push(so);
    if (exists(so)) return so;
  }
  if (root) {
    const cargo = process.env.CARGO || 'cargo';
    log(`libkeepalive_agent.so not found; running ${cargo} build --release -p keepalive-agent in ${root}`);
    const r = spawnSync(cargo, ['build', '--release', '-p', 'keepalive-agent'], {
      cwd: root,
      stdio: 'inherit',
    });
    if (r.error) fail(`could not run ${cargo}: ${r.error.message} (install Rust, or set KEEPALIVE_AGENT_LIB_DIR)`);
    if (r.status !== 0) fail(`${cargo} build failed with status ${r.status}`);
    const so = path.join(root, 'target', 'release', 'libkeepalive_agent.so');
    if (exists(so)) return so;
    tried.push(`${so} (after cargo build)`);
  }
  fail(
    'cannot find libkeepalive_agent.so. Tried:\n  ' +
      tried.concat(rootTried.map((d) => `${d} (not the keepalive-agent repository)`)).join('\n  ') +
      '\nSet KEEPALIVE_AGENT_ROOT to the repository or KEEPALIVE_AGENT_LIB_DIR to the directory of the library.',
  );
}

function findAgentHeaderDir(root) {
  const tried = [];
  for (const dir of [process.env.KEEPALIVE_AGENT_INCLUDE_DIR, root && path.join(root, 'include')]) {
    if (!dir) continue;
    tried.push(dir);
    if (exists(path.join(dir, 'keepalive_agent.h'))) return dir;
  }
  fail(`cannot find keepalive_agent.h. Tried: ${tried.join(', ') || '(nothing)'}; set KEEPALIVE_AGENT_INCLUDE_DIR`);
}

// Node's own headers directory when it has uv.h (the addon declares the few libuv
// functions it uses itself otherwise): searched after everything else, so node_api.h still
// comes from node-api-headers.
function findUvHeaderDir() {
  for (const dir of [
    path.resolve(path.dirname(process.execPath), '..', 'include', 'node'),
    '/usr/include/node',
    '/usr/local/include/node',
  ]) {
    if (exists(path.join(dir, 'uv.h'))) return dir;
  }
  return null;
}

function findNodeApiHeaders() {
  const tried = [];
  try {
    const dir = require('node-api-headers').include_dir;
    tried.push(dir);
    if (exists(path.join(dir, 'node_api.h'))) return dir;
  } catch (e) {
    tried.push(`node-api-headers (${e.code || e.message})`);
  }
  const own = path.resolve(path.dirname(process.execPath), '..', 'include', 'node');
  tried.push(own);
  if (exists(path.join(own, 'node_api.h'))) return own;
  fail(`cannot find node_api.h. Tried: ${tried.join(', ')}; run npm install (node-api-headers)`);
}

// The SONAME recorded in the library (the name the addon will ask the loader for).
function soname(so) {
  try {
    const out = execFileSync('readelf', ['-d', so], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const m = /\(SONAME\)\s+Library soname: \[([^\]]+)\]/.exec(out);
    if (m) return m[1];
  } catch {
    // readelf missing: fall back to the name build.rs gives the library.
  }
  return 'libkeepalive_agent.so.0';
}

// Replaces dest atomically, so a process that has the old copy mapped keeps working.
function copyAtomic(src, dest) {
  const tmp = `${dest}.tmp-${process.pid}`;
  fs.copyFileSync(src, tmp);
  fs.renameSync(tmp, dest);
}

function main() {
  const { root, tried: rootTried } = findRoot();
  // The npm tarball ships the addon and the library under its SONAME (what the addon's
  // rpath $ORIGIN loads); nothing to build then.
  const prebuilt = exists(addon) && exists(path.join(outDir, 'libkeepalive_agent.so.0'));
  if (!root && !process.env.KEEPALIVE_AGENT_LIB_DIR && prebuilt && !force) {
    return; // an installed copy that ships its build
  }
  const so = findLibrary(root, rootTried);
  const agentInclude = findAgentHeaderDir(root);
  const header = path.join(agentInclude, 'keepalive_agent.h');
  const localSo = path.join(outDir, 'libkeepalive_agent.so');
  const inputs = [source, header, so, __filename];
  const newest = Math.max(...inputs.map(mtime));
  if (!force && mtime(addon) >= newest && mtime(localSo) >= mtime(so)) {
    return; // up to date
  }
  const napiInclude = findNodeApiHeaders();
  const uvInclude = findUvHeaderDir();
  fs.mkdirSync(outDir, { recursive: true });
  copyAtomic(so, localSo);
  const name = soname(so);
  if (name !== 'libkeepalive_agent.so') copyAtomic(so, path.join(outDir, name));

  const cc = process.env.CC || 'cc';
  const tmpOut = `${addon}.tmp-${process.pid}`;
  const args = [
    '-std=c11',
    '-O2',
    '-fPIC',
    '-shared',
    '-Wall',
    '-Wextra',
    '-Wpedantic',
    '-Werror',
    '-D_POSIX_C_SOURCE=200809L',
    `-I${napiInclude}`,
    `-I${agentInclude}`,
    ...(uvInclude ? ['-idirafter', uvInclude] : []),
    source,
    `-L${outDir}`,
    '-lkeepalive_agent',
    '-lpthread',
    // dlsym (agent_test_panic is looked up at run time); part of libc since glibc 2.34.
    '-ldl',
    "-Wl,-rpath,$ORIGIN",
    // Never unloaded: Node dlclose()s an addon when the last worker that loaded it ends,
    // but the library's runtime threads may still be about to call into it (and into
    // libkeepalive_agent, which it keeps loaded).
    '-Wl,-z,nodelete',
    '-o',
    tmpOut,
  ];
  log(`${cc} ${args.join(' ')}`);
  const r = spawnSync(cc, args, { stdio: 'inherit' });
  if (r.error) fail(`could not run ${cc}: ${r.error.message}`);
  if (r.status !== 0) {
    try {
      fs.unlinkSync(tmpOut);
    } catch {}
    fail(`${cc} failed with status ${r.status}`);
  }
  fs.renameSync(tmpOut, addon);
  log(`built ${path.relative(process.cwd(), addon) || addon}`);
}

main();
