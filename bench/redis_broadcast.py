#!/usr/bin/env python3
"""Broadcast to many subscribers held by several nodes on one Redis (issue 5's benchmark).

Starts its own redis-server (free port, no persistence) and NODES release `halley` nodes on it
(or one in-memory node with --memory), one load generator per node holding PER_NODE SSE
subscribers of /bench/all (one process per node: the fd limit is 20,000 per process), checks
through /api/channels on the first node that the cluster sees them all, then publishes COUNT
messages to the first node, one every INTERVAL ms, each carrying its publish time. Reports the
delivery latency over every (subscriber, message) pair and the CPU time Redis and the nodes used.

    cargo build --release -p halley -p halley-redis --example broadcast
    python3 bench/redis_broadcast.py --nodes 4 --per-node 17500 --count 20

Only loopback traffic; every wait is bounded; every process it starts is stopped at the end.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HALLEY = os.path.join(ROOT, "target", "release", "halley")
GEN = os.path.join(ROOT, "target", "release", "examples", "broadcast")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=10.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def subscribers(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/channels?prefix=/bench/", timeout=5) as r:
        rows = json.load(r)
    return sum(row["subscribers"] for row in rows if row["channel"] == "/bench/all")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--per-node", type=int, default=17500)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--interval", type=int, default=1000, help="ms between messages")
    ap.add_argument("--memory", action="store_true", help="one node, in-memory broker")
    ap.add_argument("--out", help="write the summary as JSON here")
    args = ap.parse_args()
    for binary in (HALLEY, GEN):
        if not os.path.exists(binary):
            sys.exit("build first: cargo build --release -p halley -p halley-redis --example broadcast")
    nodes = 1 if args.memory else args.nodes
    tmp = tempfile.mkdtemp(prefix="halley-broadcast-")
    procs = []
    try:
        redis = None
        extra = []
        if not args.memory:
            rport = free_port()
            redis = subprocess.Popen(
                ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp],
                stdout=subprocess.DEVNULL,
            )
            procs.append(redis)
            wait_port(rport)
            extra = ["--broker", f"redis://127.0.0.1:{rport}"]
        ports, halleys = [], []
        for _ in range(nodes):
            port = free_port()
            p = subprocess.Popen(
                [HALLEY, "serve", "--listen", f"127.0.0.1:{port}", "--heartbeat", "120",
                 "--max-connections", "19500", *extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(p)
            halleys.append(p)
            wait_port(port)
            ports.append(port)
        gens = []
        for i, port in enumerate(ports):
            out = os.path.join(tmp, f"lat-{i}.txt")
            g = subprocess.Popen(
                [GEN, "subscribe", str(port), str(args.per_node), f"127.0.{i + 1}.1",
                 str(args.count), out],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(g)
            gens.append((g, out))
        for g, _ in gens:
            line = g.stdout.readline()
            if not line.startswith("ready"):
                sys.exit(f"generator failed: {line!r}")
        total = nodes * args.per_node
        deadline = time.time() + 30
        seen = 0
        while time.time() < deadline:
            seen = subscribers(ports[0])
            if seen >= total:
                break
            time.sleep(0.2)
        print(f"subscribers seen by node 1: {seen} of {total}")
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in halleys + ([redis] if redis else [])}
        t0 = time.time()
        subprocess.run(
            [GEN, "publish", str(ports[0]), str(args.count), str(args.interval)],
            check=True,
            timeout=args.count * args.interval / 1000 + 60,
        )
        latencies = []
        for g, out in gens:
            g.wait(timeout=240)
            with open(out) as f:
                latencies.extend(int(x) for x in f)
        wall = time.time() - t0
        cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in cpu0}
        latencies.sort()
        pct = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] / 1000
        summary = {
            "date": time.strftime("%Y-%m-%d"),
            "broker": "memory" if args.memory else "redis",
            "nodes": nodes,
            "subscribers": total,
            "seen_by_node_1": seen,
            "messages": args.count,
            "deliveries": len(latencies),
            "expected_deliveries": total * args.count,
            "p50_ms": round(pct(0.50), 1),
            "p99_ms": round(pct(0.99), 1),
            "max_ms": round(latencies[-1] / 1000, 1) if latencies else None,
            "wall_s": round(wall, 1),
            "redis_cpu_s": round(cpu[redis.pid], 2) if redis else None,
            "nodes_cpu_s": round(sum(cpu[p.pid] for p in halleys), 2),
        }
        print(json.dumps(summary))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=1)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
