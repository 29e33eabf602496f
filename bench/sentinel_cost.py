#!/usr/bin/env python3
"""What Redis Sentinel's safety costs a publish, and what a failover looks like to a publisher.

Starts its own Redis master, two replicas (`--replicaof`) and three sentinels (quorum 2,
down-after 1000 ms), all on free 127.0.0.1 ports with temp dirs, then one release `halley` node
per setup, and runs `publish_load` (crates/halley-redis/examples) against it: one connection
(the publish latency of an idle cluster) and 32 connections (publishes/s). Setups:

  plain Redis             redis://<master>              (today's broker, replicas attached)
  sentinel                redis+sentinel://…?wait=0&epoch=offset   (discovery only)
  sentinel + epoch        redis+sentinel://…?wait=0                (new epoch on a new master)
  sentinel + epoch + WAIT redis+sentinel://…                        (the default: wait=1)

With --failover, then kills the master (SIGKILL) under a one-connection publish loop on the
default setup and reports how long publishes were refused (503) and that none got another
answer.

    cargo build --release -p halley -p halley-redis --example publish_load
    python3 bench/sentinel_cost.py --seconds 10 --failover

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HALLEY = os.path.join(ROOT, "target", "release", "halley")
LOAD = os.path.join(ROOT, "target", "release", "examples", "publish_load")
TIMEOUT = 30.0
MASTER = "halley"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listening on {port}")


def command(port, *args):
    """One command on a fresh connection; the raw reply."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(out)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data.decode()
            data += chunk


def until(what, check):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"timed out: {what}")


def publish(port, conn_holder):
    """One publish on a keep-alive connection (reopened when the node closed it); the status."""
    if conn_holder.get("sock") is None:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_holder["sock"], conn_holder["buf"] = s, b""
    s = conn_holder["sock"]
    body = b'{"f":1}'
    s.sendall(
        b"POST /pub/bench/failover HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    buf = conn_holder["buf"]
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            conn_holder["sock"] = None
            return 0
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(buf) < length:
        buf += s.recv(65536)
    conn_holder["buf"] = buf[length:]
    return int(head.split(b" ")[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--failover", action="store_true")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    for path in (HALLEY, LOAD):
        if not os.path.exists(path):
            sys.exit("build first: cargo build --release -p halley -p halley-redis --example publish_load")
    tmp = tempfile.mkdtemp(prefix="halley-sentinel-bench-")
    procs = {}
    try:
        def redis(name, *extra):
            port = free_port()
            d = os.path.join(tmp, name)
            os.makedirs(d)
            procs[name] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", d, *extra],
                stdout=subprocess.DEVNULL,
            )
            wait_port(port)
            return port

        master = redis("master")
        replicas = [redis(f"replica{i}", "--replicaof", "127.0.0.1", str(master)) for i in range(2)]
        until("replicas in sync",
              lambda: command(master, "INFO", "replication").count("state=online") == 2)
        sentinels = []
        for i in range(3):
            port = free_port()
            d = os.path.join(tmp, f"sentinel{i}")
            os.makedirs(d)
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {master} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 3000\n")
            procs[f"sentinel{i}"] = subprocess.Popen(
                ["redis-server", conf, "--sentinel"], stdout=subprocess.DEVNULL)
            wait_port(port)
            sentinels.append(port)
        for port in sentinels:
            until("sentinels know each other",
                  lambda: "num-other-sentinels\r\n$1\r\n2" in command(port, "SENTINEL", "MASTER", MASTER))
        via = f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in sentinels)}/{MASTER}"
        setups = [
            ("plain Redis", f"redis://127.0.0.1:{master}/"),
            ("sentinel (discovery only)", via + "?wait=0&epoch=offset"),
            ("sentinel + epoch", via + "?wait=0"),
            ("sentinel + epoch + WAIT 1", via),
        ]
        rows = []
        print("| setup | connections | publishes/s | p50 µs | p99 µs | max µs | refused |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        node_port = None
        for name, url in setups:
            node_port = free_port()
            key = f"node-{len(rows)}"
            procs[key] = subprocess.Popen(
                [HALLEY, "serve", "--listen", f"127.0.0.1:{node_port}", "--broker", url],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(node_port)
            for connections in (1, args.connections):
                out = subprocess.run([LOAD, str(node_port), str(connections), str(args.seconds)],
                                     capture_output=True, text=True, timeout=args.seconds + 60)
                row = json.loads(out.stdout)
                row["setup"] = name
                rows.append(row)
                print(f"| {name} | {connections} | {row['per_s']:,} | {row['p50_us']} | "
                      f"{row['p99_us']} | {row['max_us']} | {row['refused']} |")
            if name != setups[-1][0]:
                procs.pop(key).terminate()
        result = {"date": time.strftime("%Y-%m-%d"), "rows": rows}
        if args.failover:
            # The default setup's node is still up: kill the master under a publish loop.
            holder = {}
            statuses = []
            assert publish(node_port, holder) == 200
            procs["master"].kill()
            killed = time.time()
            first_refused = back = None
            while time.time() - killed < TIMEOUT:
                status = publish(node_port, holder)
                now = time.time()
                statuses.append(status)
                if status != 200 and first_refused is None:
                    first_refused = now
                if status == 200 and first_refused is not None:
                    back = now
                    break
            others = sorted({s for s in statuses if s not in (200, 503)})
            refused = sum(1 for s in statuses if s == 503)
            failover = {
                "refused_503": refused,
                "other_answers": others,
                "unavailable_s": round((back or time.time()) - killed, 2),
            }
            print(f"failover: publishes refused (503) for {failover['unavailable_s']} s after "
                  f"the master was killed ({refused} refused; other answers: {others or 'none'})")
            result["failover"] = failover
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
