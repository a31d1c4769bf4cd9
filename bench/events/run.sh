#!/usr/bin/env bash
# What events cost at c=1 (blocking GETs over one keep-alive connection, loopback test
# server): events off, every event to a counting callback, and a callback whose mask selects
# a kind that never happens here. Rounds alternate the three.
#   bench/events/run.sh COST_BINARY TESTSERVER [seconds-per-round] [rounds]
set -euo pipefail
cost=$1 server=$2 secs=${3:-1} rounds=${4:-5}
fifo=$(mktemp -u)
mkfifo "$fifo"
# The server exits when its stdin closes (this script's end).
exec 3<> "$fifo"
rm -f "$fifo"
out=$(mktemp)
"$server" <&3 > "$out" 2>/dev/null &
for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.05; done
port=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["http_port"])' "$out")
rm -f "$out"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$cost" "http://127.0.0.1:$port/" "$secs" "$rounds"
