#!/usr/bin/env bash
# Throw-away forward proxies for the proxy tests: a Debian tinyproxy and a Debian squid, each
# with its own config in a temporary directory, listening on free loopback ports only.
#
#   scripts/proxies.sh start [--json] [--watch PID] [--dir DIR]
#                                   start both; print where they listen
#   scripts/proxies.sh stop DIR     stop both and remove DIR
#
# --watch PID: a small background watchdog stops the proxies (and removes DIR) once process
# PID is gone, so a test killed before its own clean-up cannot leave them running.
#
# `start` prints shell-sourceable lines (or, with --json, one JSON object with the same keys;
# ports and pids are JSON numbers there):
#   PROXY_DIR          the directory (configs, logs, pid files, squid's password file)
#   TINYPROXY_PORT     tinyproxy, no authentication; CONNECT to any port. It answers each
#                      plain-HTTP request (HTTP/1.1, no Connection header, a Via header) and
#                      then closes the client connection: no keep-alive on either side.
#                      CONNECT tunnels ("HTTP/1.0 200 Connection established") stay open.
#   TINYPROXY_PID      its process
#   TINYPROXY_LOG      its log (LogLevel Connect: one "Connect (file descriptor N): 127.0.0.1"
#                      line per client connection, one "Request (file descriptor N): ..." line
#                      per request)
#   SQUID_PORT         squid, no authentication; CONNECT to any port; persistent connections
#                      to clients and to origins
#   SQUID_AUTH_PORT    the same squid, but every request (CONNECT included) needs Basic proxy
#                      credentials: 407 with `Proxy-Authenticate: Basic realm="..."` otherwise
#   SQUID_PID          the squid process (run with -N: one process, no kid; plus one
#                      basic_ncsa_auth helper child)
#   SQUID_ACCESS_LOG   one line per request on either port, written at once (no buffering):
#                        TIME CLIENT_IP:PORT METHOD URL STATUS RESULT REPLY_BYTES USER SERVER_IP:PORT
#                      e.g.
#                        1796049200.045 127.0.0.1:42818 GET http://127.0.0.1:43633/ 200 TCP_MISS 261 - 127.0.0.1:43633
#                        1796049205.689 127.0.0.1:57382 CONNECT 127.0.0.1:49871 200 TCP_TUNNEL 1657 alice 127.0.0.1:49871
#                        1796049205.644 127.0.0.1:57368 GET http://127.0.0.1:43633/ 407 TCP_DENIED 3547 - -:-
#                      Field 2 tells client connections apart. USER is "-" without credentials
#                      (it is the name sent, even when the password was wrong); SERVER is "-:-"
#                      when squid contacted none. A CONNECT line is written when its tunnel
#                      closes. A client connection closed before sending any request logs
#                        TIME 127.0.0.1:PORT - error:transaction-end-before-headers 0 NONE_NONE 0 - -:-
#   SQUID_USER         alice
#   SQUID_PASSWORD     p@ss:w/rd   ('@', ':' and '/' must be percent-encoded in a URL)
#   SQUID_AUTH_URL     http://alice:p%40ss%3Aw%2Frd@127.0.0.1:SQUID_AUTH_PORT
#   SQUID_TLS_PORT     squid's https_port: a TLS forward proxy (no credentials needed)
#   SQUID_TLS_URL      https://127.0.0.1:SQUID_TLS_PORT
#   PROXY_CA_FILE      the CA that signed that port's certificate (SAN IP:127.0.0.1)
#
# squid: no cache at all (`cache deny all`, cache_mem 0, no cache_dir), `via off`,
# `forwarded_for delete`, `shutdown_lifetime 0 seconds`; it still adds X-Cache/X-Cache-Lookup
# to answers and "Cache-Control: max-age=259200" to forwarded requests. Only loopback clients
# are allowed, on every port. Its DNS client socket is on 127.0.0.1 too (no DNS server is
# needed for IP literals and /etc/hosts names such as localhost). Each instance gets its own
# service name (-n), which names its shared memory segments in /dev/shm: with the default
# name, instances of different users collide (shm_open: File exists) and root instances
# unlink each other's. tinyproxy 1.11 allows CONNECT to every port when the config has no
# ConnectPort line (`ConnectPort 0` would disable CONNECT), so there is none.
#
# Readiness: `start` returns (in about 0.3 s) once each process itself holds its listening
# socket(s), read from /proc without connecting (a probe connection would show up in the logs
# tests read). A port taken between the probe and the bind is retried with new ports. It gives
# up after PROXIES_START_TIMEOUT seconds (default 20), printing the tail of the logs.
# `stop` takes 1 to 2 s: squid's shutdown steps once a second even with shutdown_lifetime 0.
#
# As root, both proxies run as the user `proxy` (squid's cache_effective_user; tinyproxy's
# User/Group): DIR is then owned by proxy:proxy with mode 0700, private to that user (and
# root), and must be reachable by it (the default, under /tmp, is). As any other user they run
# as that user, and DIR stays the caller's.
#
# Environment knobs:
#   TINYPROXY_BIN     (default: tinyproxy from PATH, then /usr/bin/tinyproxy)
#   SQUID_BIN         (default: squid from PATH, then /usr/sbin/squid)
#   SQUID_BASIC_AUTH  (default: /usr/lib/squid/basic_ncsa_auth)
#   TINYPROXY_LOGLEVEL (default Connect; Info logs every connection close too)
#   PROXIES_START_TIMEOUT (default 20 seconds)
set -euo pipefail

die() { echo "proxies.sh: $*" >&2; exit 1; }

AUTH_USER=alice
AUTH_PASSWORD='p@ss:w/rd'
AUTH_PASSWORD_URL='p%40ss%3Aw%2Frd'   # AUTH_PASSWORD percent-encoded for a URL's userinfo
RUN_AS=proxy                          # the user both proxies run as when started by root

find_bin() {  # find_bin OVERRIDE NAME FALLBACK
  if [ -n "$1" ]; then echo "$1"; return; fi
  command -v "$2" 2>/dev/null || { [ -x "$3" ] && echo "$3"; } ||
    die "$2 not found: run 'make deps' (Debian packages tinyproxy and squid)"
}

# N distinct free loopback ports (bound to port 0 together, then released).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

# Whether PID is a live process (a zombie is not).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# Whether process PID itself holds a socket listening on 127.0.0.1:PORT (not some other
# process that took the port): the inode from /proc/net/tcp among PID's descriptors.
owns_listener() {
  local pid=$1 port=$2 hex inode fd
  hex=$(printf '%04X' "$port")
  inode=$(awk -v a="0100007F:$hex" -v b="7F000001:$hex" \
    '($2 == a || $2 == b) && $4 == "0A" { print $10; exit }' /proc/net/tcp)
  [ -n "$inode" ] || return 1
  for fd in /proc/"$pid"/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ] && return 0
  done
  return 1
}

write_tinyproxy_config() {
  local d=$1 port=$2 user_lines=""
  [ "$(id -u)" = 0 ] && user_lines="User $RUN_AS
Group $RUN_AS"
  cat > "$d/tinyproxy.conf" <<CONF
# Written by scripts/proxies.sh for one test run.
$user_lines
Port $port
Listen 127.0.0.1
Allow 127.0.0.1
Timeout 600
MaxClients 1000
LogFile "$d/tinyproxy.log"
LogLevel ${TINYPROXY_LOGLEVEL:-Connect}
PidFile "$d/tinyproxy.pid"
# No ConnectPort line: CONNECT may reach every port (tests tunnel to high loopback ports).
CONF
}

write_squid_config() {
  local d=$1 open=$2 auth=$3 helper=$4 tls=$5 user_lines=""
  [ "$(id -u)" = 0 ] && user_lines="cache_effective_user $RUN_AS
cache_effective_group $RUN_AS"
  cat > "$d/squid.conf" <<CONF
# Written by scripts/proxies.sh for one test run.
$user_lines
http_port 127.0.0.1:$open name=open
http_port 127.0.0.1:$auth name=auth
# A TLS forward proxy (clients speak TLS to squid itself, then HTTP or CONNECT inside).
https_port 127.0.0.1:$tls name=tls tls-cert=$d/proxy.pem tls-key=$d/proxy.key
visible_hostname keepalive-agent-test-proxy
httpd_suppress_version_string on

pid_filename $d/squid.pid
cache_log $d/cache.log
cache_store_log none
coredump_dir $d
netdb_filename none
logfile_rotate 0
pinger_enable off
icp_port 0
htcp_port 0
digest_generation off
# Squid's own DNS client sockets (UDP) on loopback too; IP literals and /etc/hosts names
# (localhost) need no DNS server.
udp_incoming_address 127.0.0.1
udp_outgoing_address 127.0.0.1
dns_nameservers 127.0.0.1

# No cache: no cache_dir (so no disk store) and nothing kept in memory either.
cache deny all
cache_mem 0 MB
shutdown_lifetime 0 seconds
client_persistent_connections on
server_persistent_connections on
via off
forwarded_for delete

# time client-ip:port method url status squid-result reply-bytes user server-ip:port
logformat keepalive %ts.%03tu %>a:%>p %rm %ru %>Hs %Ss %<st %un %<a:%<p
access_log stdio:$d/access.log logformat=keepalive

auth_param basic program $helper $d/passwd
auth_param basic children 2 startup=1 idle=1
auth_param basic realm keepalive-agent test proxy
auth_param basic credentialsttl 1 minute

acl auth_port myportname auth
acl authenticated proxy_auth REQUIRED
http_access deny !localhost
http_access deny auth_port !authenticated
http_access allow localhost
http_access deny all
CONF
}

# Stops the given processes (only those still running with a config in DIR on their command
# line, matched by DIR's name so that any spelling of its path works, so a stale pid is never
# signalled): TERM, up to ~5 s to exit, then KILL.
stop_pids() {
  local name; name=/$(basename "$1")/; shift
  local pid cmd live=() left i
  for pid in "$@"; do
    [ -n "$pid" ] && alive "$pid" || continue
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || continue
    [[ "$cmd" == *"$name"*.conf* ]] || continue
    kill -TERM "$pid" 2>/dev/null && live+=("$pid")
  done
  [ ${#live[@]} -gt 0 ] || return 0
  for i in $(seq 100); do
    left=0
    for pid in "${live[@]}"; do alive "$pid" && left=1; done
    [ "$left" = 1 ] || return 0
    sleep 0.05
  done
  for pid in "${live[@]}"; do
    if alive "$pid"; then
      echo "proxies.sh: pid $pid ignored SIGTERM for 5 s: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for i in $(seq 40); do
    left=0
    for pid in "${live[@]}"; do alive "$pid" && left=1; done
    [ "$left" = 1 ] || return 0
    sleep 0.05
  done
}

show_logs() {
  local dir=$1 f
  for f in tinyproxy.out tinyproxy.log squid.out cache.log; do
    [ -s "$dir/$f" ] || continue
    echo "---- $dir/$f (tail)" >&2
    tail -n 20 "$dir/$f" >&2
  done
}

# Stops the proxies in DIR once process PID has exited (checked every second); ends by
# itself when DIR is gone (a normal `stop`). Detached from the caller's stdout, so
# `$(proxies.sh start)` does not wait for it.
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
  local json=0 dir="" watch=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --json) json=1 ;;
      --watch) watch=$2; shift ;;
      --dir) dir=$2; shift ;;
      *) die "unknown argument: $1" ;;
    esac
    shift
  done
  local tinyproxy squid helper
  tinyproxy=$(find_bin "${TINYPROXY_BIN:-}" tinyproxy /usr/bin/tinyproxy)
  squid=$(find_bin "${SQUID_BIN:-}" squid /usr/sbin/squid)
  helper=${SQUID_BASIC_AUTH:-/usr/lib/squid/basic_ncsa_auth}
  [ -x "$helper" ] || die "$helper not found: run 'make deps' (Debian package squid)"
  command -v openssl >/dev/null || die "openssl not found: run 'make deps'"
  local root=0
  if [ "$(id -u)" = 0 ]; then
    root=1
    id "$RUN_AS" >/dev/null 2>&1 || die "user '$RUN_AS' (for squid and tinyproxy) does not exist"
  fi

  if [ -z "$dir" ]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/keepalive-proxies.XXXXXX")
  else
    mkdir -p "$dir"
    chmod 700 "$dir"
  fi
  dir=$(cd "$dir" && pwd -P)
  fail() {
    show_logs "$dir"
    stop_pids "$dir" "${tp_pid:-}" "${sq_pid:-}"
    rm -rf "$dir"
    die "$*"
  }
  local hash
  hash=$(openssl passwd -apr1 "$AUTH_PASSWORD") || fail "openssl passwd failed"
  printf '%s:%s\n' "$AUTH_USER" "$hash" > "$dir/passwd"
  # The TLS port's certificate: a CA of its own and a leaf for 127.0.0.1.
  (
    cd "$dir"
    openssl ecparam -name prime256v1 -genkey -noout -out proxy-ca.key 2>/dev/null
    openssl req -x509 -new -key proxy-ca.key -sha256 -days 3 -subj "/CN=keepalive-agent test proxy CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
      -out proxy-ca.pem 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out proxy.key 2>/dev/null
    openssl req -new -key proxy.key -subj "/CN=127.0.0.1" -out proxy.csr 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' > proxy.ext
    openssl x509 -req -in proxy.csr -CA proxy-ca.pem -CAkey proxy-ca.key -CAcreateserial -sha256 \
      -days 3 -extfile proxy.ext -out proxy.pem 2>/dev/null
    rm -f proxy.csr proxy-ca.srl
  ) || fail "openssl failed to make the TLS proxy's certificates"
  if [ "$root" = 1 ]; then
    chown "$RUN_AS:$RUN_AS" "$dir"
    if command -v setpriv >/dev/null &&
       ! setpriv --reuid="$RUN_AS" --regid="$RUN_AS" --init-groups test -w "$dir" -a -x "$dir"
    then
      fail "user $RUN_AS cannot write to $dir (is a parent directory not searchable?)"
    fi
  fi

  # squid names its shared memory segments (/dev/shm/SERVICE-cf__*.shm, made even with -N)
  # after its service name, "squid" by default: one of its own per instance, alphanumeric only.
  local service
  service=kaproxy$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
  echo "$service" > "$dir/squid.service"

  local timeout=${PROXIES_START_TIMEOUT:-20}
  local deadline=$((SECONDS + timeout)) attempt tp sq sqa sqt tp_pid="" sq_pid="" ready=0 retry
  for attempt in 1 2 3 4 5; do
    read -r tp sq sqa sqt < <(free_ports 4)
    write_tinyproxy_config "$dir" "$tp"
    write_squid_config "$dir" "$sq" "$sqa" "$helper" "$sqt"
    rm -f "$dir"/{tinyproxy.log,tinyproxy.out,tinyproxy.pid,squid.out,cache.log,access.log,squid.pid}
    if [ "$root" = 1 ]; then chown -R "$RUN_AS:$RUN_AS" "$dir"; fi
    # In their own sessions (like daemons), so a ^C meant for the test does not reach them;
    # setsid does not fork here (a background job of a script is no process group leader),
    # so $! is the proxy itself.
    setsid "$tinyproxy" -d -c "$dir/tinyproxy.conf" < /dev/null >> "$dir/tinyproxy.out" 2>&1 &
    tp_pid=$!
    setsid "$squid" -N -n "$service" -f "$dir/squid.conf" < /dev/null >> "$dir/squid.out" 2>&1 &
    sq_pid=$!
    retry=0
    while :; do
      if owns_listener "$tp_pid" "$tp" && owns_listener "$sq_pid" "$sq" &&
         owns_listener "$sq_pid" "$sqa" && owns_listener "$sq_pid" "$sqt"; then
        ready=1; break
      fi
      # Another process may have taken a port between the probe and the bind: try again.
      if grep -qs -e "Could not create listening sockets" -e "Address already in use" \
           "$dir/tinyproxy.out" "$dir/tinyproxy.log" "$dir/squid.out" "$dir/cache.log"; then
        retry=1; break
      fi
      alive "$tp_pid" || fail "tinyproxy exited during start-up (attempt $attempt)"
      alive "$sq_pid" || fail "squid exited during start-up (attempt $attempt)"
      [ "$SECONDS" -lt "$deadline" ] ||
        fail "not listening after ${timeout}s (tinyproxy 127.0.0.1:$tp, squid 127.0.0.1:$sq and :$sqa)"
      sleep 0.05
    done
    [ "$ready" = 1 ] && break
    echo "attempt $attempt: a port was taken, retrying" >> "$dir/start.log"
    stop_pids "$dir" "$tp_pid" "$sq_pid"
    [ "$retry" = 1 ] && [ "$SECONDS" -lt "$deadline" ] || break
  done
  [ "$ready" = 1 ] || fail "could not start (attempt $attempt)"
  echo "$tp_pid $sq_pid" > "$dir/proxies.pids"   # for `stop`, should a pid file be missing
  if [ -n "$watch" ]; then start_watchdog "$dir" "$watch"; fi

  local kv=(
    "PROXY_DIR=$dir"
    "TINYPROXY_PORT=$tp"
    "TINYPROXY_PID=$tp_pid"
    "TINYPROXY_LOG=$dir/tinyproxy.log"
    "SQUID_PORT=$sq"
    "SQUID_AUTH_PORT=$sqa"
    "SQUID_PID=$sq_pid"
    "SQUID_ACCESS_LOG=$dir/access.log"
    "SQUID_USER=$AUTH_USER"
    "SQUID_PASSWORD=$AUTH_PASSWORD"
    "SQUID_AUTH_URL=http://$AUTH_USER:$AUTH_PASSWORD_URL@127.0.0.1:$sqa"
    "SQUID_TLS_PORT=$sqt"
    "SQUID_TLS_URL=https://127.0.0.1:$sqt"
    "PROXY_CA_FILE=$dir/proxy-ca.pem"
  )
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
  [ -n "$dir" ] || die "usage: proxies.sh stop DIR"
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd -P)
  [ -f "$dir/squid.conf" ] || die "$dir does not look like a proxies.sh directory"
  local pids=() f
  for f in proxies.pids tinyproxy.pid squid.pid; do
    [ -s "$dir/$f" ] && pids+=($(tr -c '0-9' ' ' < "$dir/$f"))
  done
  stop_pids "$dir" $(printf '%s\n' "${pids[@]}" | sort -u)
  # squid removes its segments when it exits normally, not when it was killed.
  if [ -s "$dir/squid.service" ]; then
    local service; service=$(cat "$dir/squid.service")
    case "$service" in kaproxy[0-9]*) rm -f /dev/shm/"$service"-*.shm ;; esac
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 start [--json] [--watch PID] [--dir DIR] | stop DIR" >&2; exit 2 ;;
esac
