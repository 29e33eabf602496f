#!/usr/bin/env bash
# Streams through haproxy: one SSE subscriber through haproxy with the README's recipe, and
# through the same recipe without `option http-no-delay`, against Halley directly. Prints the
# delivery latency of each (bench/haproxy_latency.py). Without the option haproxy holds each
# small streamed message back for ~200 ms (it sends with MSG_MORE; the kernel waits for more).
# Usage: cargo build -p halley && bench/haproxy.sh [messages]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
bin=./target/release/halley
[ -x "$bin" ] || bin=./target/debug/halley
"$bin" --listen 127.0.0.1:8030 > "$dir/halley.log" 2>&1 &
# The README's recipe (timeouts and WebSocket included), on port $1, with or without the option.
recipe() {
  cat <<CFG
defaults
    mode http
    $2
    timeout connect 5s
    timeout client  60s
    timeout server  60s
    timeout tunnel  1h
    timeout http-request 10s
frontend halley_in
    bind 127.0.0.1:$1
    default_backend halley
backend halley
    server halley1 127.0.0.1:8030
CFG
}
recipe 8031 "option http-no-delay" > "$dir/nodelay.cfg"
recipe 8032 "" > "$dir/default.cfg"
haproxy -f "$dir/nodelay.cfg" > "$dir/nodelay.log" 2>&1 &
haproxy -f "$dir/default.cfg" > "$dir/default.log" 2>&1 &
for port in 8030 8031 8032; do
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done
echo "direct:                        $(python3 bench/haproxy_latency.py 8030 8030 "$n")"
echo "haproxy, option http-no-delay: $(python3 bench/haproxy_latency.py 8031 8030 "$n")"
echo "haproxy, without it:           $(python3 bench/haproxy_latency.py 8032 8030 "$n")"
