#!/usr/bin/env python3
"""What TLS and HTTP/2 cost per idle SSE subscriber: server RSS per subscriber.

For each case a fresh `halley` (release build) is started with a TLS listener (a P-256
certificate made here with the openssl CLI), N SSE subscribers are opened and held until every
one has its response head, and the server's RSS (/proc/PID/status) is read before and after:

    plain     HTTP/1.1 on the plain port (the lean path; the baseline)
    tls-h1    HTTP/1.1 over TLS (ALPN http/1.1: hyper's path)
    tls-h2-1  HTTP/2 over TLS, one stream per connection
    tls-h2-M  HTTP/2 over TLS, M streams per connection (M = --streams, at most 100)
    h2c-1     cleartext HTTP/2 (prior knowledge), one stream per connection
    h2c-M     cleartext HTTP/2, M streams per connection

The HTTP/2 client is written here (the preface, SETTINGS, and one HEADERS frame per stream,
HPACK literals without Huffman coding), so that nothing but the standard library is needed.
Every subscriber is on one channel (/bench/tls). Then --messages messages are published to it
one after another (plain HTTP) and the server's CPU time (utime + stime) per delivery is read:
what a delivery costs on each path (the plain one writes idle SSE subscribers' sockets from the
delivering loop; TLS and HTTP/2 streams are written by their own tasks). The subscribers do not
read: the messages fit in the sockets' buffers and HTTP/2's windows. Prints one JSON line per
case and appends them to --out.

    cargo build --release -p halley
    python3 bench/tls_idle.py --n 5000 --streams 100 --out bench/results/2026-12-03-tls-idle.jsonl
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("HALLEY_BIN", os.path.join(HERE, "..", "target", "release", "halley"))
# Connections opened at once.
GATE = 200


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def make_cert(dir):
    cert, key = os.path.join(dir, "cert.pem"), os.path.join(dir, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def start(cert, key):
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0",
         "--tls-cert", cert, "--tls-key", key],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "HALLEY_LOG": "info", "NO_COLOR": "1"})
    deadline = time.time() + 20
    while time.time() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"listen=127\.0\.0\.1:(\d+) tls=127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1)), int(m.group(2))
    proc.kill()
    raise RuntimeError("halley did not start")


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    return 0


def subscriptions(port):
    return metric(port, "halley_subscriptions")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def deliver(pid, port, n, messages):
    """Publishes `messages` to the subscribers' channel; server CPU µs per delivery."""
    before = cpu_seconds(pid)
    body = json.dumps({"text": "x" * 40}).encode()
    for _ in range(messages):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/pub/bench/tls", data=body,
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()
    deadline = time.time() + 60
    while metric(port, "halley_messages_delivered_total") < n * messages and time.time() < deadline:
        time.sleep(0.1)
    # Then until the writes are done: the server's CPU time stops growing.
    last = cpu_seconds(pid)
    while time.time() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now == last:
            break
        last = now
    return round((last - before) * 1e6 / (n * messages), 2)


CONTEXTS = {}


def context(alpn):
    """One client context per protocol (making one loads the CA store: ~30 ms each)."""
    if alpn not in CONTEXTS:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols([alpn])
        CONTEXTS[alpn] = ctx
    return CONTEXTS[alpn]


def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def literal(name, value):
    # Literal header field without indexing, new name (RFC 7541 §6.2.2), lengths < 127.
    name, value = name.encode(), value.encode()
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value


async def h2_connection(host, port, tls, first, streams, ready):
    """One HTTP/2 connection holding `streams` SSE subscriptions; resolves once all have a head."""
    ctx = context("h2") if tls else None
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    if tls:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    out = bytearray(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + frame(0x4, 0, 0)
    for k in range(streams):
        block = (literal(":method", "GET") + literal(":scheme", "https" if tls else "http")
                 + literal(":authority", f"{host}:{port}")
                 + literal(":path", "/sub/bench/tls")
                 + literal("accept", "text/event-stream"))
        # END_HEADERS (0x4); the request has no body: END_STREAM (0x1).
        out += frame(0x1, 0x5, 1 + 2 * k, block)
    writer.write(out)
    await writer.drain()
    heads = 0
    while heads < streams:
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        await reader.readexactly(length)
        if kind == 0x4 and not flags & 0x1:
            writer.write(frame(0x4, 0x1, 0))  # SETTINGS ACK
        elif kind == 0x1:
            heads += 1
        elif kind in (0x3, 0x7):
            raise RuntimeError(f"stream reset or GOAWAY (frame type {kind})")
    ready.append(writer)


async def h1_subscriber(host, port, tls, i, ready):
    ctx = context("http/1.1") if tls else None
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    writer.write(f"GET /sub/bench/tls HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:80])
    ready.append(writer)


async def hold(case, plain, tls_port, n, streams):
    gate = asyncio.Semaphore(GATE)
    ready = []

    async def gated(coro):
        async with gate:
            await coro

    if case == "plain":
        jobs = [h1_subscriber("127.0.0.1", plain, False, i, ready) for i in range(n)]
    elif case == "tls-h1":
        jobs = [h1_subscriber("127.0.0.1", tls_port, True, i, ready) for i in range(n)]
    else:
        tls = case.startswith("tls")
        per = 1 if case.endswith("-1") else streams
        port = tls_port if tls else plain
        jobs = [h2_connection("127.0.0.1", port, tls, c * per, per, ready) for c in range(n // per)]
    await asyncio.gather(*(gated(j) for j in jobs))
    return ready


def run(case, n, streams, messages, cert, key):
    proc, plain, tls_port = start(cert, key)
    try:
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        loop = asyncio.new_event_loop()
        started = time.time()
        writers = loop.run_until_complete(hold(case, plain, tls_port, n, streams))
        # Every subscription registered in the engine, then the RSS.
        deadline = time.time() + 30
        while subscriptions(plain) < n and time.time() < deadline:
            time.sleep(0.1)
        held = subscriptions(plain)
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        cpu = deliver(proc.pid, plain, n, messages) if messages else None
        row = {
            "case": case, "n": n, "held": held, "connections": len(writers),
            "streams_per_connection": 1 if case in ("plain", "tls-h1") or case.endswith("-1") else streams,
            "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_subscriber": round((after - before) / n, 2),
            "open_s": round(time.time() - started, 2),
            "messages": messages, "cpu_us_per_delivery": cpu,
        }
        for w in writers:
            w.close()
        loop.close()
        return row
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="subscribers per case")
    ap.add_argument("--streams", type=int, default=100, help="streams per HTTP/2 connection (at most 100)")
    ap.add_argument("--messages", type=int, default=20, help="messages broadcast after the RSS is read (0: none)")
    ap.add_argument("--cases", default="plain,tls-h1,tls-h2-1,tls-h2-M,h2c-1,h2c-M")
    ap.add_argument("--out", help="append the JSON lines here")
    args = ap.parse_args()
    assert args.n % args.streams == 0, "--n must be a multiple of --streams"
    tmp = tempfile.mkdtemp(prefix="halley-tls-idle-")
    try:
        cert, key = make_cert(tmp)
        for case in args.cases.split(","):
            row = run(case, args.n, args.streams, args.messages, cert, key)
            row["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True, cwd=HERE).stdout.strip()
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
