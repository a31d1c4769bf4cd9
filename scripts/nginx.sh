#!/usr/bin/env bash
# A throw-away Debian nginx for the interoperability test (tests/nginx) and the benchmark
# (bench/): its own config in a temporary prefix directory, one worker, free loopback ports.
#
#   scripts/nginx.sh start [--json] [--slow] [--watch PID] [--dir DIR]
#                                   start it; print where it listens
#   scripts/nginx.sh stop DIR       stop it and remove DIR
#
# --watch PID: a small background watchdog stops nginx (and removes DIR) once process PID is
# gone, so a test or benchmark killed before its own clean-up cannot leave nginx running.
#
# `start` prints shell-sourceable lines (or, with --json, one JSON object with the same keys):
#   NGINX_DIR          the prefix directory (config, pid, error.log, certificates, files)
#   NGINX_PID          the master process
#   NGINX_HTTP_PORT    plain HTTP                        GET /  -> 200 "hello, world\n" (13 bytes)
#   NGINX_HTTPS_PORT   TLS 1.2 + 1.3, ECDSA P-256 leaf   GET /1m.bin -> 1 MiB static file
#                      GET /1g.bin -> 1 GiB (sparse) file; PUT /upload/NAME -> stored in /dev/shm
#   NGINX_ADMIN_PORT   GET /status -> stub_status, on its own server block and port
#   NGINX_CA_FILE      the CA that signed the leaf (SAN IP:127.0.0.1, IP:::1, DNS:localhost)
#   NGINX_H2_PORT / NGINX_H2_URL    the same server over TLS with HTTP/2 offered by ALPN
#                      (h2, then http/1.1), same certificate and files as NGINX_HTTPS_URL
#   NGINX_H2C_PORT / NGINX_H2C_URL  the same server, HTTP/2 without TLS (prior knowledge)
#   NGINX_SELFSIGNED_PORT / _URL  TLS with the certificate `openssl req -x509` makes by
#                      default (self-signed, CA:TRUE; SAN DNS:localhost, IP:127.0.0.1):
#                      NGINX_SELFSIGNED_CERT is that certificate. GET / -> "hello, world\n"
#   NGINX_MTLS_PORT / _URL  TLS with the leaf above and `ssl_verify_client on` (clients
#                      signed by the test CA): GET / -> 200 "client <subject DN>\n", and
#                      400 from nginx without a client certificate.
#                      NGINX_CLIENT_CERT / NGINX_CLIENT_KEY: a client certificate for it.
#   NGINX_HTTP_URL, NGINX_HTTPS_URL (both end with "/"), NGINX_STATUS_URL, NGINX_BIG_PATH
#   NGINX_SLOW_PATH    (with --slow) see below
#
# With --slow, GET /slow answers the same 13 bytes after about 500 ms on both ports: nginx
# proxies it to a loopback listener that never accepts (its backlog is full, so the connect
# times out) and turns the 504 into a 200. The benchmark uses it to hold 1,000 requests in
# flight at once, so that a client opens 1,000 connections. That listener is a small python3
# process whose pid is kept in the directory; `stop` ends it.
#
# Counting connections: stub_status "accepts" is one counter per worker for every listener
# (nginx increments it in ngx_event_accept, before any server block is chosen), so each
# connection that reads /status counts too. Two consecutive reads, each on a fresh connection,
# differ by 1: connections made by others between reads A and B = accepts(B) - accepts(A) - 1.
#
# Environment knobs:
#   NGINX_WORKER_CONNECTIONS  (default 4096; the benchmark holds 1,000 idle connections)
#   NGINX_CPU                 pin the worker to this CPU number (worker_cpu_affinity)
#   NGINX_BIN                 (default: nginx from PATH, then /usr/sbin/nginx)
#
# As root, nginx would run its worker as `nobody`, which cannot read a 0700 temporary
# directory: the config then says `user root;`. As any other user the worker runs as that
# user (nginx ignores `user` without privileges, so the directive is left out).
set -euo pipefail

die() { echo "nginx.sh: $*" >&2; exit 1; }

nginx_bin() {
  if [ -n "${NGINX_BIN:-}" ]; then echo "$NGINX_BIN"; return; fi
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } ||
    die "nginx not found: run 'make deps' (Debian package nginx-light)"
}

# Seven distinct free loopback ports (bound to port 0 together, then released).
free_ports() {
  python3 - <<'PY'
import socket
socks = []
for _ in range(7):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

make_certs() {
  local d=$1
  (
    cd "$d"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 3 -subj "/CN=keepalive-agent test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" -out ca.pem 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out leaf.key 2>/dev/null
    openssl req -new -key leaf.key -sha256 -subj "/CN=127.0.0.1" -out leaf.csr 2>/dev/null
    cat > leaf.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 3 \
      -extfile leaf.ext -out leaf.pem 2>/dev/null
    # A client certificate for the mutual-TLS server.
    openssl ecparam -name prime256v1 -genkey -noout -out client.key 2>/dev/null
    openssl req -new -key client.key -sha256 -subj "/CN=keepalive-agent test client" \
      -out client.csr 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' \
      > client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 3 \
      -extfile client.ext -out client.pem 2>/dev/null
    # What `openssl req -x509` makes by default (its v3_ca section: CA:TRUE), everyone's
    # first TLS test.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3 \
      -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -keyout selfsigned.key -out selfsigned.pem 2>/dev/null
    rm -f leaf.csr client.csr ca.srl
  ) || die "openssl failed to make the certificates"
}

# A listener that never accepts, its accept queue full, so connects to it hang until they time
# out. Prints its port; the python3 process holding it writes its pid to DIR/blackhole.pid and
# exits by itself when DIR disappears (or after an hour).
start_blackhole() {
  local d=$1
  python3 - "$d" > /dev/null 2>&1 <<'PY' &
import os, socket, sys, time
d = sys.argv[1]
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(0)
port = s.getsockname()[1]
fillers = []
for _ in range(4):  # fill the accept queue: every later SYN is dropped
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    fillers.append(c)
time.sleep(0.2)
with open(os.path.join(d, "blackhole.port.tmp"), "w") as f:
    f.write(str(port))
os.rename(os.path.join(d, "blackhole.port.tmp"), os.path.join(d, "blackhole.port"))
deadline = time.time() + 3600
while time.time() < deadline and os.path.isdir(d):
    time.sleep(1)
PY
  echo $! > "$d/blackhole.pid"
  local i
  for i in $(seq 100); do [ -s "$d/blackhole.port" ] && break; sleep 0.05; done
  [ -s "$d/blackhole.port" ] || die "the --slow listener did not start"
  cat "$d/blackhole.port"
}

write_config() {
  local d=$1 http=$2 https=$3 admin=$4 blackhole=${5:-} shm=${6:-/dev/shm/keepalive-nginx}
  local selfsigned=${7:-} mtls=${8:-} h2=${9:-} h2c=${10:-}
  local user_line="" affinity_line="" slow_block=""
  [ "$(id -u)" = 0 ] && user_line="user root;"
  if [ -n "${NGINX_CPU:-}" ]; then
    # worker_cpu_affinity takes a bit mask written as a string of 0/1, CPU 0 rightmost.
    local mask="1" i
    for ((i = 0; i < NGINX_CPU; i++)); do mask="${mask}0"; done
    affinity_line="worker_cpu_affinity $mask;"
  fi
  if [ -n "$blackhole" ]; then
    slow_block="
        location = /slow {
            proxy_pass http://127.0.0.1:$blackhole;
            proxy_connect_timeout 500ms;
            proxy_read_timeout 500ms;
            error_page 502 504 = @hello;
            error_log $d/error.log crit;  # every request here logs a timeout otherwise
        }
        location @hello {
            default_type text/plain;
            return 200 \"hello, world\\n\";
        }"
  fi
  cat > "$d/nginx.conf" <<CONF
# Written by scripts/nginx.sh for one test or benchmark run.
$user_line
$affinity_line
worker_processes 1;
worker_rlimit_nofile 16384;
error_log $d/error.log warn;

events {
    worker_connections ${NGINX_WORKER_CONNECTIONS:-4096};
}

http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server_tokens off;

    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;

    server {
        listen 127.0.0.1:$http;
        listen 127.0.0.1:$https ssl;
        listen 127.0.0.1:$h2 ssl http2;
        listen 127.0.0.1:$h2c http2;
        ssl_certificate $d/leaf.pem;
        ssl_certificate_key $d/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $d/www;

        location = / {
            default_type text/plain;
            return 200 "hello, world\n";
        }
        location = /1m.bin {
        }
        # A canned DynamoDB GetItem answer (bench A1/A16: the AWS SDK for JavaScript with
        # two request handlers); the SDK POSTs to the endpoint's path plus '/'.
        location /dynamodb {
            default_type application/x-amz-json-1.0;
            return 200 '{"Item":{"id":{"S":"bench"},"n":{"N":"42"},"payload":{"S":"0123456789abcdef"}}}';
        }
        location = /1g.bin {
        }
        # Streamed uploads (bench W8): PUT bodies are read whole before the answer, into
        # memory-backed files under /dev/shm (never the disk), each overwriting the last.
        location /upload/ {
            root $shm;
            dav_methods PUT;
            client_max_body_size 0;
            client_body_temp_path $shm/tmp;
        }$slow_block
    }

    server {
        listen 127.0.0.1:$selfsigned ssl;
        ssl_certificate $d/selfsigned.pem;
        ssl_certificate_key $d/selfsigned.key;
        location = / {
            default_type text/plain;
            return 200 "hello, world\n";
        }
    }

    server {
        listen 127.0.0.1:$mtls ssl;
        ssl_certificate $d/leaf.pem;
        ssl_certificate_key $d/leaf.key;
        ssl_client_certificate $d/ca.pem;
        ssl_verify_client on;
        location = / {
            default_type text/plain;
            return 200 "client \$ssl_client_s_dn\n";
        }
    }

    # Its own port, so reading the counters never touches a measured connection.
    server {
        listen 127.0.0.1:$admin;
        location = /status {
            stub_status;
        }
    }
}
CONF
}

# Stops nginx in DIR once process PID has exited (checked every second); ends by itself when
# DIR is gone (a normal `stop`). Detached from the caller's stdout, so `$(nginx.sh start)`
# does not wait for it.
start_watchdog() {
  local dir=$1 pid=$2 self
  self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
  (
    trap '' HUP INT
    while [ -d "$dir" ] && kill -0 "$pid" 2>/dev/null; do sleep 1; done
    [ -d "$dir" ] && "$self" stop "$dir"
  ) < /dev/null > /dev/null 2>&1 &
}

cmd_start() {
  local json=0 dir="" slow=0 watch=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --json) json=1 ;;
      --slow) slow=1 ;;
      --watch) watch=$2; shift ;;
      --dir) dir=$2; shift ;;
      *) die "unknown argument: $1" ;;
    esac
    shift
  done
  local nginx; nginx=$(nginx_bin)
  command -v openssl >/dev/null || die "openssl not found: run 'make deps'"
  if [ -z "$dir" ]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/keepalive-nginx.XXXXXX")
  else
    mkdir -p "$dir"
  fi
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/www" "$dir/tmp"
  make_certs "$dir"
  head -c 1048576 /dev/urandom > "$dir/www/1m.bin"
  truncate -s 1G "$dir/www/1g.bin"   # sparse: no disk space, read as zeros
  local shm="/dev/shm/$(basename "$dir")"
  mkdir -p "$shm/tmp" "$shm/upload"
  echo "$shm" > "$dir/shm.path"
  local blackhole=""
  if [ "$slow" = 1 ]; then blackhole=$(start_blackhole "$dir"); fi

  local attempt http https admin selfsigned mtls h2 h2c started=0
  for attempt in 1 2 3 4 5; do
    read -r http https admin selfsigned mtls h2 h2c < <(free_ports)
    write_config "$dir" "$http" "$https" "$admin" "$blackhole" "$shm" "$selfsigned" "$mtls" \
      "$h2" "$h2c"
    # daemon mode: when this returns 0 the master has bound every listener.
    if "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g "pid $dir/nginx.pid;" \
         2>>"$dir/start.log"; then
      started=1; break
    fi
    # Another process may have taken a port between the probe and the bind: try again.
    grep -q "Address already in use" "$dir/start.log" "$dir/error.log" 2>/dev/null || break
  done
  if [ "$started" != 1 ]; then
    cat "$dir/start.log" "$dir/error.log" >&2 2>/dev/null || true
    rm -rf "$dir" "$shm"
    die "nginx did not start (attempt $attempt)"
  fi
  local pid="" i
  for i in $(seq 100); do
    [ -s "$dir/nginx.pid" ] && pid=$(cat "$dir/nginx.pid") && break
    sleep 0.02
  done
  [ -n "$pid" ] || { cat "$dir/error.log" >&2; die "nginx wrote no pid file"; }
  if [ -n "$watch" ]; then start_watchdog "$dir" "$watch"; fi

  local kv=(
    "NGINX_DIR=$dir"
    "NGINX_PID=$pid"
    "NGINX_HTTP_PORT=$http"
    "NGINX_HTTPS_PORT=$https"
    "NGINX_ADMIN_PORT=$admin"
    "NGINX_CA_FILE=$dir/ca.pem"
    "NGINX_HTTP_URL=http://127.0.0.1:$http/"
    "NGINX_HTTPS_URL=https://127.0.0.1:$https/"
    "NGINX_STATUS_URL=http://127.0.0.1:$admin/status"
    "NGINX_BIG_PATH=1m.bin"
    "NGINX_HUGE_PATH=1g.bin"
    "NGINX_UPLOAD_PATH=upload/put.bin"
    "NGINX_SELFSIGNED_PORT=$selfsigned"
    "NGINX_SELFSIGNED_URL=https://127.0.0.1:$selfsigned/"
    "NGINX_SELFSIGNED_CERT=$dir/selfsigned.pem"
    "NGINX_MTLS_PORT=$mtls"
    "NGINX_MTLS_URL=https://127.0.0.1:$mtls/"
    "NGINX_CLIENT_CERT=$dir/client.pem"
    "NGINX_CLIENT_KEY=$dir/client.key"
    "NGINX_H2_PORT=$h2"
    "NGINX_H2_URL=https://127.0.0.1:$h2/"
    "NGINX_H2C_PORT=$h2c"
    "NGINX_H2C_URL=http://127.0.0.1:$h2c/"
  )
  if [ "$slow" = 1 ]; then kv+=("NGINX_SLOW_PATH=slow"); fi
  if [ "$json" = 1 ]; then
    python3 -c '
import json, sys
out = {}
for kv in sys.argv[1:]:
    k, v = kv.split("=", 1)
    out[k] = int(v) if v.isdigit() else v
print(json.dumps(out))' "${kv[@]}"
  else
    local line
    for line in "${kv[@]}"; do printf '%s=%q\n' "${line%%=*}" "${line#*=}"; done
  fi
}

cmd_stop() {
  local dir=${1:-}
  [ -n "$dir" ] || die "usage: nginx.sh stop DIR"
  [ -d "$dir" ] || return 0
  [ -f "$dir/nginx.conf" ] || die "$dir does not look like an nginx.sh directory"
  if [ -s "$dir/nginx.pid" ]; then
    local pid i; pid=$(cat "$dir/nginx.pid")
    if kill -TERM "$pid" 2>/dev/null; then
      for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
  fi
  if [ -s "$dir/blackhole.pid" ]; then kill "$(cat "$dir/blackhole.pid")" 2>/dev/null || true; fi
  if [ -s "$dir/shm.path" ]; then
    local shm; shm=$(cat "$dir/shm.path")
    case "$shm" in /dev/shm/keepalive-nginx.*) rm -rf "$shm" ;; esac
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 start [--json] [--slow] [--watch PID] [--dir DIR] | stop DIR" >&2; exit 2 ;;
esac
