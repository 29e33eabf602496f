#!/usr/bin/env bash
# auth-url's cost: 10,000 idle SSE subscribers on a namespace whose subscribe rule is "app",
# against bench/auth_app.mjs (Node's http server answering yes with a user and info), in four
# cases: an open server; answers kept, one cookie for all (one question); answers kept, a cookie
# each (every connect a question, every answer kept); nothing kept (auth-cache-ttl = 0).
# Prints one line per case: KiB per subscriber, connects/s, connected, failed.
# Usage: cargo build --release -p halley -p halley-bench && bench/auth_url.sh [reps]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-1}
n=10000
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
node bench/auth_app.mjs 8791 > "$dir/app.log" &
cat > "$dir/cached.toml" <<TOML
auth-url = "http://127.0.0.1:8791/auth"
auth-cache-ttl = 30
[[namespace]]
channels = "/bench/**"
subscribe = "app"
TOML
sed 's/auth-cache-ttl = 30/auth-cache-ttl = 0/' "$dir/cached.toml" > "$dir/uncached.toml"
for i in $(seq 0 $((n - 1))); do echo "Cookie: sid=user$i"; done > "$dir/cookies.txt"

# run NAME [server args] -- [bench args]
run() {
  local name=$1; shift
  local server=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do server+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  ./target/release/halley --listen 127.0.0.1:8020 --hold-timeout 600 "${server[@]}" \
    > "$dir/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/8020) 2>/dev/null && break
    sleep 0.1
  done
  ./target/release/halley-bench hold --target 127.0.0.1:8020 --pid $pid --procs 2 -n $n \
    --kind sse "$@" 2>/dev/null | grep '^{' | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('$name', round(d['kib_per_subscriber'],3), int(d['connect_rate']), d['connected'], d['failed'])"
  kill $pid; wait $pid 2>/dev/null || true
}

for _ in $(seq "$reps"); do
  run open
  run cached-one-cookie --config "$dir/cached.toml" -- --header "Cookie: sid=bench"
  run cached-distinct --config "$dir/cached.toml" -- --header-file "$dir/cookies.txt"
  run uncached --config "$dir/uncached.toml" -- --header "Cookie: sid=bench"
done
