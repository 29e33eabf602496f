#!/usr/bin/env python3
"""Server memory per idle subscriber.

Opens N subscribers to a running server (spread over several processes, because one process
may hold at most 20,000 files here, and over source addresses 127.0.0.x), waits until every one
has its response headers (so the server holds it), and reads the server's RSS from /proc before
and after. Prints one JSON line.

    python3 bench/idle_rss.py --pid $(pgrep -f 'target/release/halley') --n 19000

Stopgap until halley-bench's `hold` scenario (issue 6) replaces it.
"""
import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import sys
import time

REQUESTS = {
    "sse": "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n",
    "stream": "GET {path}?transport=stream HTTP/1.1\r\nHost: {host}\r\n\r\n",
    # rupy's pull (--path /pull?name=n&channel=/bench/idle), over HTTP and with Head: less.
    "pull": "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n",
    "pull-less": "GET {path} HTTP/1.1\r\nHost: {host}\r\nHead: less\r\n\r\n",
    "ws": (
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.b64encode(b"halley-bench-key").decode() + "\r\n\r\n"
    ),
}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold(host, port, path, transport, n, worker, ready, stop):
    request = REQUESTS[transport].format(path=path, host=f"{host}:{port}").encode()
    gate = asyncio.Semaphore(256)
    conns = []

    async def one(i):
        source = f"127.0.{worker + 1}.{i % 250 + 1}"
        async with gate:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if not (head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 101")):
                raise RuntimeError(head[:80])
            conns.append(writer)

    await asyncio.gather(*(one(i) for i in range(n)))
    ready.put(len(conns))
    while not stop.is_set():
        await asyncio.sleep(0.2)


def worker_main(host, port, path, transport, n, worker, ready, stop):
    asyncio.run(hold(host, port, path, transport, n, worker, ready, stop))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pid", type=int, required=True, help="server process id")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--path", default="/sub/bench/idle")
    p.add_argument("--transport", choices=sorted(REQUESTS), default="sse")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--procs", type=int, default=0, help="default: one per 9,000 subscribers")
    a = p.parse_args()
    procs = a.procs or max(1, -(-a.n // 9000))
    before = rss_kib(a.pid)
    ready, stop = mp.Queue(), mp.Event()
    started = time.monotonic()
    workers = [
        mp.Process(target=worker_main, args=(a.host, a.port, a.path, a.transport,
                                              a.n // procs + (1 if w < a.n % procs else 0), w, ready, stop))
        for w in range(procs)
    ]
    for w in workers:
        w.start()
    held = sum(ready.get(timeout=300) for _ in workers)
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # let the server finish any deferred frees before reading RSS
    after = rss_kib(a.pid)
    stop.set()
    for w in workers:
        w.join(timeout=10)
    print(json.dumps({
        "transport": a.transport, "subscribers": held, "rss_before_kib": before,
        "rss_after_kib": after, "kib_per_subscriber": round((after - before) / held, 3),
        "connect_rate_per_s": round(held / elapsed),
    }))


if __name__ == "__main__":
    sys.exit(main())
