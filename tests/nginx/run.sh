#!/usr/bin/env bash
# make test-nginx: start a throw-away nginx (scripts/nginx.sh), run the interop program
# against it, stop nginx whatever happens.
#   tests/nginx/run.sh PATH/TO/interop
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
prog=${1:?usage: run.sh PATH/TO/interop}

# --watch: should this script be killed outright, nginx still stops when it is gone.
info=$("$root/scripts/nginx.sh" start --watch $$)
eval "$info"
trap '"$root/scripts/nginx.sh" stop "$NGINX_DIR"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export NGINX_DIR NGINX_HTTP_URL NGINX_HTTPS_URL NGINX_CA_FILE NGINX_ADMIN_PORT NGINX_H2_URL NGINX_H2C_URL
echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') on http :$NGINX_HTTP_PORT, https :$NGINX_HTTPS_PORT, status :$NGINX_ADMIN_PORT"
timeout 60 "$prog"
