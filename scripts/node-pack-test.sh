#!/usr/bin/env bash
# node-pack-test.sh: `npm pack` in bindings/node, then `npm install ./keepalive-agent-x.y.z.tgz`
# in a fresh directory with no C compiler and no cargo on PATH: no install script runs, npm
# does not warn about one, and the installed package makes a request (a pooled connection)
# against the test server.
#
# Run by `make test-node` through scripts/c-with-server.sh (KA_HTTP_URL).
set -euo pipefail
: "${KA_HTTP_URL:?run me through scripts/c-with-server.sh}"
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
NODE=${NODE:-node}
NPM=${NPM:-npm}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/keepalive-npm-pack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "npm pack test FAILED: $*" >&2; exit 1; }

# The tarball, as a release makes it (prepack builds the addon if it is out of date).
(cd "$ROOT/bindings/node" && "$NPM" pack --silent --pack-destination "$tmp" > "$tmp/pack.out") \
  || fail "npm pack"
tgz="$tmp/$(tail -1 "$tmp/pack.out")"
[ -f "$tgz" ] || fail "no tarball ($(cat "$tmp/pack.out"))"
tar -tzf "$tgz" > "$tmp/files"
for f in package/index.js package/build/Release/keepalive_agent.node \
         package/build/Release/libkeepalive_agent.so.0; do
  grep -qx "$f" "$tmp/files" || fail "$f is not in the tarball"
done
size=$(stat -c %s "$tgz")

# A PATH with node and npm only: no cc, no cargo.
bare="$tmp/bin"
mkdir -p "$bare"
ln -s "$(command -v "$NODE")" "$bare/node"
ln -s "$(readlink -f "$(command -v "$NPM")")" "$bare/npm"
for tool in sh env; do ln -s "$(command -v $tool)" "$bare/$tool"; done
for tool in cc gcc clang cargo rustc; do
  if PATH="$bare" command -v "$tool" > /dev/null 2>&1; then fail "$tool is on the bare PATH"; fi
done

app="$tmp/app"
mkdir -p "$app"
echo '{"name":"app","version":"1.0.0","private":true}' > "$app/package.json"
(cd "$app" && PATH="$bare" HOME="$tmp/home" npm install --no-audit --no-fund "$tgz" > "$tmp/install.log" 2>&1) \
  || { cat "$tmp/install.log"; fail "npm install of the tarball"; }
if grep -Eiq 'allowScripts|install script|gyp' "$tmp/install.log"; then
  cat "$tmp/install.log"; fail "npm mentioned install scripts"
fi
(cd "$app" && PATH="$bare" node -e '
  const pkg = require("keepalive-agent/package.json");
  for (const s of ["preinstall", "install", "postinstall"]) {
    if (pkg.scripts && pkg.scripts[s]) throw new Error(`the package has a ${s} script`);
  }
  const { Agent } = require("keepalive-agent");
  const agent = new Agent({ keepAlive: true });
  (async () => {
    for (let i = 0; i < 3; i++) {
      const r = await agent.request(process.argv[1]);
      if (r.statusCode !== 200) throw new Error(`status ${r.statusCode}`);
    }
    const s = agent.stats();
    if (s.connectionsOpened !== 1) throw new Error(`${s.connectionsOpened} connections for 3 requests`);
    agent.destroy();
    console.log(`ok: 3 requests, 1 connection, from ${require.resolve("keepalive-agent")}`);
  })().catch((e) => { console.error(e); process.exit(1); });
' "$KA_HTTP_URL") > "$tmp/run.log" 2>&1 || { cat "$tmp/run.log"; fail "the installed package"; }
grep -q "$app/node_modules/keepalive-agent" "$tmp/run.log" || { cat "$tmp/run.log"; fail "not the installed copy"; }
echo "  npm pack + install without a compiler: ok ($(basename "$tgz"), $((size / 1024)) KiB; $(cat "$tmp/run.log"))"
