#!/usr/bin/env bash
# usage: run.sh <build: before|after> <kind> <token: no|yes|users> <label>
set -u
build=$1; kind=$2; tok=$3; label=$4
if [ "$build" = before ]; then bin=/tmp/baseline-target/release; else bin=/work/wt/control/target/release; fi
bench=/work/wt/control/target/release/halley-bench
port=8020
args=(--listen 127.0.0.1:$port --hold-timeout 600 --session-timeout 600)
hdr=()
if [ "$tok" = yes ]; then args+=(--config /tmp/bench/bench.toml); hdr=(--header "Authorization: Bearer $(cat /tmp/bench/token)"); fi
if [ "$tok" = users ]; then args+=(--config /tmp/bench/bench.toml); hdr=(--header-file /tmp/bench/users.txt); fi
$bin/halley "${args[@]}" >/tmp/bench/server.log 2>&1 &
pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null 127.0.0.1:$port/healthz && break; sleep 0.1; done
out=$($bench hold --target 127.0.0.1:$port --pid $pid --procs 2 -n 10000 --kind $kind "${hdr[@]}" 2>&1)
kill $pid; wait $pid 2>/dev/null
echo "$label $build $kind token=$tok :: $(echo "$out" | grep -iE "per sub|KiB|rss|error" | sed -E 's/\{.*//' | tr '\n' ' ')"
