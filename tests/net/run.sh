#!/usr/bin/env bash
# make test-network: start nginx (scripts/nginx.sh) and the proxies (scripts/proxies.sh),
# run the network program against them (plainly, then under valgrind), stop everything
# whatever happens.
#   tests/net/run.sh PATH/TO/network
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
prog=${1:?usage: run.sh PATH/TO/network}

# --watch: should this script be killed outright, the servers still stop when it is gone.
set -a
eval "$("$root/scripts/nginx.sh" start --watch $$)"
eval "$("$root/scripts/proxies.sh" start --watch $$)"
set +a
trap '"$root/scripts/proxies.sh" stop "$PROXY_DIR"; "$root/scripts/nginx.sh" stop "$NGINX_DIR"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
echo "nginx :$NGINX_HTTP_PORT/:$NGINX_HTTPS_PORT, squid :$SQUID_PORT (auth :$SQUID_AUTH_PORT), tinyproxy :$TINYPROXY_PORT"
timeout 120 "$prog"
if command -v valgrind >/dev/null; then
  echo "--- again under valgrind (leaks and invalid accesses are errors)"
  timeout 300 valgrind -q --error-exitcode=99 --leak-check=full --show-possibly-lost=no --errors-for-leak-kinds=definite \
    --suppressions="$root/tests/c/valgrind.supp" "$prog"
fi
