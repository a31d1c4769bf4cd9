#!/usr/bin/env bash
# make demo: start the test server, then let each language show keep-alive on vs off.
# Every demo program reads DEMO_HTTP_URL, DEMO_HTTPS_URL, DEMO_CA_FILE, DEMO_ADMIN_URL and
# DEMO_REQUESTS from the environment and prints markdown table rows:
# | language | client | scheme | requests | connections (server) | req/s | p50 ms | p99 ms |
# Connections are counted by the server (admin /reset before a run, /stats after).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tmp=$(mktemp -d)
cleanup() { exec 3>&- 2>/dev/null || true; [ -n "${srv_pid:-}" ] && kill "$srv_pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

mkfifo "$tmp/in"
"$root/target/release/keepalive-testserver" < "$tmp/in" > "$tmp/info" &
srv_pid=$!
exec 3> "$tmp/in"   # the server exits when this closes
for _ in $(seq 100); do [ -s "$tmp/info" ] && break; sleep 0.05; done
info=$(head -n1 "$tmp/info")
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$info" "$1"; }
export DEMO_HTTP_URL="http://127.0.0.1:$(field http_port)/"
export DEMO_HTTPS_URL="https://127.0.0.1:$(field https_port)/"
export DEMO_CA_FILE="$(field ca_pem_path)"
export DEMO_ADMIN_URL="http://127.0.0.1:$(field admin_port)"
export DEMO_REQUESTS="${DEMO_REQUESTS:-200}"

echo
echo "keep-alive on vs off: $DEMO_REQUESTS sequential requests per row against a local server"
echo "(connections = TCP connections the server accepted)"
echo
echo "| language | client | scheme | requests | connections (server) | req/s | p50 ms | p99 ms |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for d in "$@"; do
  "$d"
done
echo
