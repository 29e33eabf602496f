#!/usr/bin/env python3
"""What watching the live dashboard costs a server (issue 15).

Starts the release binary with a backend key, gives it CHANNELS channels with history and
SUBSCRIBERS SSE subscribers spread over them, then reads the server's CPU time (utime + stime
from /proc) over SECONDS with nobody watching, with one dashboard open (`/api/dashboard`, read
to the end of each snapshot), and again after it closed (and `/metrics` says the sampler
stopped). Prints one JSON line.

    cargo build --release -p halley
    python3 bench/dashboard_cost.py --channels 1000 --subscribers 1000 --seconds 60
"""
import argparse
import asyncio
import json
import os
import re
import subprocess
import time
import urllib.request

KEY = "bench-dashboard-key"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def metric(base, name):
    text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    return int(re.search(rf"^{name} (\d+)$", text, re.M).group(1))


async def main(args):
    server = subprocess.Popen(
        [args.bin, "serve", "--listen", "127.0.0.1:0", "--publish-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1", "HALLEY_LOG": "info"},
        text=True,
    )
    try:
        addr = None
        for line in server.stdout:
            m = re.search(r"listen=(127\.0\.0\.1:\d+)", line)
            if m:
                addr = m.group(1)
                break
        host, port = addr.split(":")
        base = f"http://{addr}"

        async def request(head):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(head.encode())
            await writer.drain()
            status = await reader.readuntil(b"\r\n\r\n")
            return reader, writer, status

        for c in range(args.channels):
            _, w, status = await request(
                f"POST /pub/bench/c{c} HTTP/1.1\r\nHost: {addr}\r\nX-Halley-Key: {KEY}\r\n"
                "Content-Length: 2\r\nConnection: close\r\n\r\nhi"
            )
            assert status.startswith(b"HTTP/1.1 200"), status
            w.close()
        subscribers = []
        for s in range(args.subscribers):
            r, w, status = await request(
                f"GET /sub/bench/c{s % args.channels} HTTP/1.1\r\nHost: {addr}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            )
            assert status.startswith(b"HTTP/1.1 200"), status
            subscribers.append(w)

        async def idle(label):
            before = cpu_ms(server.pid)
            await asyncio.sleep(args.seconds)
            return {label: round(cpu_ms(server.pid) - before, 1)}

        out = {"channels": args.channels, "subscribers": args.subscribers, "seconds": args.seconds}
        out["cpu_ms"] = await idle("unwatched")
        r, w, status = await request(
            f"GET /api/dashboard HTTP/1.1\r\nHost: {addr}\r\nX-Halley-Key: {KEY}\r\n\r\n"
        )
        assert status.startswith(b"HTTP/1.1 200"), status
        snapshots, sizes = 0, []

        async def read():
            nonlocal snapshots
            while True:
                block = await r.readuntil(b"\n\n")
                if b"event: stats" in block:
                    snapshots += 1
                    sizes.append(len(block))

        reading = asyncio.create_task(read())
        await asyncio.sleep(1.5)  # the first sample, before the window opens
        snapshots = 0
        out["cpu_ms"].update(await idle("watched"))
        out["snapshots_in_window"] = snapshots
        out["snapshot_bytes"] = max(sizes)
        reading.cancel()
        w.close()
        deadline = time.time() + 5
        while metric(base, "halley_dashboard_sampling") != 0 and time.time() < deadline:
            await asyncio.sleep(0.1)
        out["sampler_stopped"] = metric(base, "halley_dashboard_sampling") == 0
        out["cpu_ms"].update(await idle("after"))
        for w in subscribers:
            w.close()
        print(json.dumps(out))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/halley")
    p.add_argument("--channels", type=int, default=1000)
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=60)
    asyncio.run(main(p.parse_args()))
