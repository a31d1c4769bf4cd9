#!/usr/bin/env bash
# c-with-server.sh CMD...: runs CMD with the test server up, exporting
#   KA_HTTP_URL, KA_HTTPS_URL (end with "/"), KA_CA_FILE, KA_ADMIN_URL.
# The server exits when this script does (its stdin is a pipe held here).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
server="${KEEPALIVE_TESTSERVER:-$root/target/release/keepalive-testserver}"
tmp=$(mktemp -d)
cleanup() {
  exec 3>&- 2>/dev/null || true
  if [ -n "${srv_pid:-}" ]; then
    for _ in $(seq 50); do kill -0 "$srv_pid" 2>/dev/null || break; sleep 0.05; done
    kill "$srv_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
mkfifo "$tmp/in"
"$server" < "$tmp/in" > "$tmp/info" &
srv_pid=$!
exec 3> "$tmp/in"
for _ in $(seq 200); do [ -s "$tmp/info" ] && break; sleep 0.05; done
info=$(head -n1 "$tmp/info")
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" <<< "$info"; }
[ -n "$(field http_port)" ] || { echo "c-with-server: test server did not start: $info" >&2; exit 1; }
export KA_HTTP_URL="http://127.0.0.1:$(field http_port)/"
export KA_HTTPS_URL="https://127.0.0.1:$(field https_port)/"
export KA_CA_FILE="$(field ca_pem_path)"
export KA_ADMIN_URL="http://127.0.0.1:$(field admin_port)"
"$@"
