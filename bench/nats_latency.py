#!/usr/bin/env python3
"""Halley on NATS JetStream: publish latency and publish-to-delivery latency, on one NATS
server (stream R1) and on a three-server cluster (stream R3), against the in-memory broker.

Starts its own nats-server processes (free ports, JetStream, temp store dirs, a cluster block
for three) and release `halley` nodes on them, then for each setup opens one SSE subscriber on
node B and publishes N messages one after the other on node A over a keep-alive connection,
timing each publish (POST to its 200: stored, replicated, and echoed on A) and each message
from the publish request to the SSE event's arrival on B. With --broadcast it then runs
halley-bench's throughput scenario: --subs SSE subscribers on B, publishers on A.

    cargo build --release -p halley -p halley-bench
    python3 bench/nats_latency.py --n 2000 --broadcast

Only loopback traffic; every wait is bounded; every process it starts is stopped at the end.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HALLEY = os.path.join(ROOT, "target", "release", "halley")
TIMEOUT = 10.0


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


class Conn:
    """A blocking socket with a read buffer."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def until(self, needle):
        while needle not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                sys.exit(f"connection closed before {needle!r}")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(needle)
        return head

    def exactly(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                sys.exit("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def summary(name, samples):
    samples = sorted(samples)
    pct = lambda p: samples[min(len(samples) - 1, int(len(samples) * p))] * 1e6
    row = {
        "setup": name,
        "n": len(samples),
        "p50_us": round(pct(0.50)),
        "p99_us": round(pct(0.99)),
        "mean_us": round(statistics.mean(samples) * 1e6),
    }
    print(f"| {name} | {row['n']} | {row['p50_us']} | {row['p99_us']} | {row['mean_us']} |")
    return row


def http_publish(conn, channel, body):
    conn.send(
        b"POST /pub%s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
        % (channel, len(body), body)
    )
    head = conn.until(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    reply = conn.exactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"publish failed: {head!r} {reply!r}")


def halley_latency(name, pub_port, sub_port, n):
    """Publish round trip (POST to its 200) and publish-to-SSE-event, per message."""
    channel = b"/bench/lat"
    sub = Conn(sub_port)
    sub.send(b"GET /sub%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n" % channel)
    sub.until(b"retry: ")
    sub.until(b"\n\n")
    pub = Conn(pub_port)
    acks, samples = [], []
    for i in range(n + 100):
        body = b"m%d" % i
        t0 = time.perf_counter()
        http_publish(pub, channel, body)
        t1 = time.perf_counter()
        # Chunked framing around SSE events: read up to our data line.
        sub.until(b"data: " + body + b"\n")
        if i >= 100:  # warm-up
            acks.append(t1 - t0)
            samples.append(time.perf_counter() - t0)
    return [summary(name + ": publish (POST → 200)", acks),
            summary(name + ": publish → SSE event", samples)]



def race(name, a, b, n, same_channel):
    """Two publishers at once, one on A and one on B, n publishes each: to one channel (each
    one's expected previous message taken by the other now and then: a retry) or to two."""
    import threading
    results = {}

    def run(port, channel, key):
        conn = Conn(port)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            http_publish(conn, channel, b"r%d" % i)
            samples.append(time.perf_counter() - t0)
        results[key] = samples

    threads = [
        threading.Thread(target=run, args=(a, b"/bench/race", "a")),
        threading.Thread(target=run, args=(b, b"/bench/race" if same_channel else b"/bench/other", "b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return summary(name, results.get("a", []) + results.get("b", []))


def start_nats(procs, tmp, n):
    """n nats-server processes with JetStream (a cluster when n > 1); their client ports."""
    ports = [(free_port(), free_port()) for _ in range(n)]
    routes = ",".join(f"nats://127.0.0.1:{c}" for _, c in ports)
    for i, (port, cport) in enumerate(ports):
        cmd = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port),
               "--server_name", f"n{i}", "-sd", os.path.join(tmp, f"nats{n}-{i}")]
        if n > 1:
            cmd += ["--cluster_name", "bench", "--cluster", f"nats://127.0.0.1:{cport}",
                    "--routes", routes]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for port, _ in ports:
        wait_port(port)
    return [p for p, _ in ports]


def wait_healthy(port):
    deadline = time.time() + 60
    while time.time() < deadline:
        c = Conn(port)
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = c.until(b"\r\n")
        c.sock.close()
        if b" 200" in head:
            return
        time.sleep(0.2)
    sys.exit(f"node on {port} not healthy")


def broadcast(a, b, subs, duration, publishers, interval_ms):
    """halley-bench: `subs` SSE subscribers on B's one channel, publishes on A — at full speed
    for `duration` s (throughput), or with interval_ms, 10 s of publishes that far apart
    (fanout)."""
    bench = os.path.join(ROOT, "target", "release", "halley-bench")
    if not os.path.exists(bench):
        sys.exit("build first: cargo build --release -p halley-bench")
    if interval_ms:
        scenario = ["fanout", "-n", str(subs), "--messages", str(duration * 1000 // interval_ms),
                    "--interval-ms", str(interval_ms)]
    else:
        scenario = ["throughput", "--channels", "1", "--subs", str(subs), "--duration",
                    str(duration), "--publishers", str(publishers)]
    out = subprocess.run(
        [bench, *scenario, "--target", f"127.0.0.1:{b}", "--publish-target", f"127.0.0.1:{a}",
         "--kind", "sse", "--procs", "1"],
        capture_output=True, text=True, timeout=duration + 120,
    )
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not line:
        sys.exit(f"halley-bench failed: {out.stdout} {out.stderr}")
    result = json.loads(line[-1])
    result["p50_ms"] = result.get("latency", {}).get("p50_ms")
    result["p99_ms"] = result.get("latency", {}).get("p99_ms")
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--broadcast", action="store_true")
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--interval-ms", type=int, default=0,
                    help="spaced publishes (fanout) instead of full speed")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    if not os.path.exists(HALLEY):
        sys.exit("build first: cargo build --release -p halley")
    tmp = tempfile.mkdtemp(prefix="halley-bench-")
    procs = []
    rows = []
    try:
        def node(*extra):
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [HALLEY, "serve", "--listen", f"127.0.0.1:{port}", *extra],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(port)
            return port

        print("| setup | messages | p50 µs | p99 µs | mean µs |")
        print("|---|---:|---:|---:|---:|")
        memory = node()
        rows += halley_latency("in-memory broker, one node", memory, memory, args.n)
        for n, label in [(1, "1 NATS server, R1"), (3, "3 NATS servers, R3")]:
            ports = start_nats(procs, tmp, n)
            url = "nats://" + ",".join(f"127.0.0.1:{p}" for p in ports)
            a = node("--broker", url)
            wait_healthy(a)
            b = node("--broker", url)
            wait_healthy(b)
            rows += halley_latency(label + ", A → B", a, b, args.n)
            rows.append(race(label + ": A and B publishing at once, two channels", a, b, args.n, False))
            rows.append(race(label + ": A and B publishing at once, one channel", a, b, args.n, True))
            if args.broadcast:
                result = broadcast(a, b, args.subs, args.duration, args.publishers, args.interval_ms)
                result["setup"] = label + f", {args.subs} SSE subscribers on B, publishers on A"
                result.pop("latency", None)
                print(f"| {result['setup']} | {result.get('publishes_per_sec', 0):.0f} publishes/s | "
                      f"{result['deliveries_per_sec']:.0f} deliveries/s | "
                      f"dropped {result['dropped']} | p50 {result.get('p50_ms')} ms |")
                rows.append(result)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
