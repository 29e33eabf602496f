#!/usr/bin/env bash
# Publishes per second with h2load (Debian: nghttp2-client) against a fresh release server: over
# TLS with HTTP/2, over TLS with HTTP/1.1, cleartext HTTP/2 (prior knowledge) and plain HTTP/1.1.
# Bounded: -n requests per run. The certificate is made here (openssl, P-256).
#
#   cargo build --release -p halley
#   bench/h2load.sh [-n 50000] [-c 10] [-m 10] | tee -a bench/results/2026-12-03-h2load.txt
set -euo pipefail
cd "$(dirname "$0")/.."
n=50000 c=10 m=10
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=$2; shift 2 ;;
    -c) c=$2; shift 2 ;;
    -m) m=$2; shift 2 ;;
    *) echo "usage: $0 [-n N] [-c C] [-m M]" >&2; exit 2 ;;
  esac
done
bin=${HALLEY_BIN:-target/release/halley}
tmp=$(mktemp -d)
log="$tmp/halley.log"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/key.pem" \
  -out "$tmp/cert.pem" -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null
printf 'hello' > "$tmp/body"
NO_COLOR=1 HALLEY_LOG=info "$bin" serve --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --tls-cert "$tmp/cert.pem" \
  --tls-key "$tmp/key.pem" > "$log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q ' tls=' "$log" && break; sleep 0.1; done
plain=$(sed -n 's/.*listen=\(127\.0\.0\.1:[0-9]*\).*/\1/p' "$log" | head -1)
tls=$(sed -n 's/.* tls=\(127\.0\.0\.1:[0-9]*\).*/\1/p' "$log" | head -1)
echo "# $(date -u +%F) $(git rev-parse --short HEAD) h2load -n $n -c $c -m $m, POST /pub (5 bytes)"
run() {
  local name=$1; shift
  local out
  out=$(timeout 300 h2load -n "$n" -c "$c" "$@" -d "$tmp/body" 2>&1) || { echo "$name: h2load failed: $out" | tail -5; return; }
  echo "$name: $(grep -E '^finished in' <<<"$out") | $(grep -E '^requests:' <<<"$out" | sed 's/requests: //') | $(grep -E '^status codes:' <<<"$out")"
}
run "tls h2     " -m "$m" "https://$tls/pub/bench/h2load"
run "tls http/1.1" --h1 "https://$tls/pub/bench/h2load"
run "h2c        " -m "$m" "http://$plain/pub/bench/h2load"
run "plain 1.1  " --h1 "http://$plain/pub/bench/h2load"
