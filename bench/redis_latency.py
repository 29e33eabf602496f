#!/usr/bin/env python3
"""Publish-to-delivery latency: in-memory broker vs Redis, same node vs across nodes.

Starts its own redis-server (free port, no persistence) and release `halley` nodes, then for
each setup opens one SSE subscriber and publishes N messages one after the other over a
keep-alive connection, timing each from the publish request to the SSE event's arrival. Also
measures raw Redis fan-out (PUBLISH→SUBSCRIBE vs XADD→XREAD BLOCK) with the same method, which
is the choice the Redis broker makes.

    cargo build --release -p halley
    python3 bench/redis_latency.py --n 2000

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


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read_resp(conn):
    """Reads one RESP2 value (enough of the protocol for these commands)."""
    line = conn.until(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-", b":"):
        return rest
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = conn.exactly(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_resp(conn) for _ in range(n)]
    sys.exit(f"unexpected RESP {line!r}")


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
    channel = b"/bench/lat"
    sub = Conn(sub_port)
    sub.send(b"GET /sub%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n" % channel)
    sub.until(b"retry: ")
    sub.until(b"\n\n")
    pub = Conn(pub_port)
    samples = []
    for i in range(n + 100):
        body = b"m%d" % i
        t0 = time.perf_counter()
        http_publish(pub, channel, body)
        # Chunked framing around SSE events: read up to our data line.
        sub.until(b"data: " + body + b"\n")
        if i >= 100:  # warm-up
            samples.append(time.perf_counter() - t0)
    return summary(name, samples)


def redis_pubsub_latency(port, n):
    sub = Conn(port)
    sub.send(resp("SUBSCRIBE", "bench:ps"))
    read_resp(sub)
    pub = Conn(port)
    samples = []
    for i in range(n + 100):
        t0 = time.perf_counter()
        pub.send(resp("PUBLISH", "bench:ps", "m%d" % i))
        read_resp(sub)
        read_resp(pub)
        if i >= 100:
            samples.append(time.perf_counter() - t0)
    return summary("Redis PUBLISH → SUBSCRIBE", samples)


def redis_stream_latency(port, n):
    sub = Conn(port)
    pub = Conn(port)
    samples = []
    last = "0-0"
    for i in range(n + 100):
        sub.send(resp("XREAD", "COUNT", 512, "BLOCK", 1000, "STREAMS", "bench:log", last))
        time.sleep(0.0002)  # let the XREAD block first, as a waiting reader does
        t0 = time.perf_counter()
        pub.send(resp("XADD", "bench:log", "MAXLEN", "~", 10000, "*", "d", "m%d" % i))
        reply = read_resp(sub)
        last = reply[0][1][-1][0].decode()
        read_resp(pub)
        if i >= 100:
            samples.append(time.perf_counter() - t0)
    return summary("Redis XADD → XREAD BLOCK", samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    if not os.path.exists(HALLEY):
        sys.exit("build first: cargo build --release -p halley")
    tmp = tempfile.mkdtemp(prefix="halley-bench-")
    procs = []
    try:
        rport = free_port()
        procs.append(
            subprocess.Popen(
                ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_port(rport)

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

        memory = node()
        redis_url = f"redis://127.0.0.1:{rport}"
        a = node("--broker", redis_url)
        b = node("--broker", redis_url)
        print("| setup | messages | p50 µs | p99 µs | mean µs |")
        print("|---|---:|---:|---:|---:|")
        rows = [
            redis_pubsub_latency(rport, args.n),
            redis_stream_latency(rport, args.n),
            halley_latency("Halley, in-memory broker", memory, memory, args.n),
            halley_latency("Halley on Redis, publish and subscribe on one node", a, a, args.n),
            halley_latency("Halley on Redis, publish on A, subscribe on B", a, b, args.n),
        ]
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
