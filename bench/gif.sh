#!/usr/bin/env bash
# The forever GIF's costs against a raw line stream (`transport=stream`), release builds:
#   hold    — server RSS per idle subscriber (halley-bench hold, 2,000 on one channel), for a
#             stream, a GIF on an empty channel, and a GIF that opens with 8 lines of history;
#   fanout  — server CPU (utime + stime from /proc) to deliver 100 messages to 1,000 idle
#             subscribers of one channel, per delivery.
# The cost of one frame encode is an ignored test (see bench/README.md).
# Usage: cargo build --release -p halley -p halley-bench && bench/gif.sh [reps]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
port=8140
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

serve() {
  port=$((port + 1))
  ./target/release/halley --listen 127.0.0.1:$port --hold-timeout 600 > /dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do curl -sf 127.0.0.1:$port/healthz > /dev/null && return; sleep 0.1; done
  echo "halley did not start" >&2; exit 1
}

stop() { kill "$pid"; wait "$pid" 2> /dev/null || true; }

# hold KIND BACKLOG: idle RSS per subscriber; BACKLOG messages published to the channel first.
hold() {
  serve
  for i in $(seq 1 "$2"); do
    curl -sf -X POST 127.0.0.1:$port/pub/bench/0 -d "ann $i: the quick brown fox jumps over the dog" > /dev/null
  done
  ./target/release/halley-bench hold --target 127.0.0.1:$port --pid $pid --procs 1 -n 2000 \
    --kind "$1" --hold-secs 3 2>&1 | grep '^hold' | sed "s/\$/ (backlog $2)/"
  stop
}

cpu() { awk '{print $14 + $15}' /proc/$pid/stat; }

# fanout KIND: server CPU per delivery of 100 messages to 1,000 idle subscribers.
fanout() {
  serve
  ./target/release/halley-bench hold --target 127.0.0.1:$port --procs 1 -n 1000 --kind "$1" \
    --hold-secs 60 > /dev/null 2>&1 &
  local bench=$!
  for _ in $(seq 1 300); do
    n=$(curl -s 127.0.0.1:$port/metrics | awk "/^halley_subscribers\\{transport=\"$1\"\\}/ {print \$2}")
    [ "$n" = 1000 ] && break
    sleep 0.1
  done
  local before; before=$(cpu)
  python3 - $port <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for i in range(100):
    c.request("POST", "/pub/bench/0", body=f"ann {i}: the quick brown fox jumps over the lazy dog")
    r = c.getresponse(); r.read(); assert r.status == 200
PY
  # Done once the server's CPU time stops moving (the last frames written).
  local prev=-1 now; now=$(cpu)
  for _ in $(seq 1 100); do [ "$now" = "$prev" ] && break; prev=$now; sleep 0.3; now=$(cpu); done
  local ticks=$((now - before))
  echo "fanout $1: 1000 subscribers, 100 messages: server CPU $((ticks * 10)) ms," \
    "$(python3 -c "print(f'{$ticks * 10000 / 100 / 1000:.2f}')") µs per delivery"
  kill $bench 2> /dev/null || true
  stop
}

for _ in $(seq 1 "$reps"); do
  hold stream 0
  hold gif 0
  hold gif 8
  fanout stream
  fanout gif
done
