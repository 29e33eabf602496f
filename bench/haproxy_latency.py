"""Delivery latency of an SSE stream through a proxy: subscribe through the proxy, publish
straight to Halley, time from the publish to the message's arrival. Prints n, median, p90, max.

Usage: python3 bench/haproxy_latency.py PROXY_PORT HALLEY_PORT [N]
"""

import http.client
import socket
import statistics
import sys
import time

proxy, halley = int(sys.argv[1]), int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 50
channel = f"/latency/{proxy}"
stream = socket.create_connection(("127.0.0.1", proxy))
stream.settimeout(5)
stream.sendall(
    f"GET /sub{channel} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
)
buf = b""
while b"\r\n\r\n" not in buf:
    buf += stream.recv(65536)
# The response head arrives once the subscription exists.
buf = buf.split(b"\r\n\r\n", 1)[1]
publisher = http.client.HTTPConnection("127.0.0.1", halley)
warmup = 3
latencies = []
for i in range(n + warmup):
    start = time.monotonic()
    publisher.request("POST", f"/pub{channel}", body=f"m{i}", headers={"content-type": "text/plain"})
    publisher.getresponse().read()
    needle = f"data: m{i}\n".encode()
    while needle not in buf:
        buf += stream.recv(65536)
    elapsed = (time.monotonic() - start) * 1000
    buf = buf.split(needle, 1)[1]
    if i >= warmup:
        latencies.append(elapsed)
    # Spaced out: one message at a time is where a proxy's Nagle delay shows.
    time.sleep(0.05)
latencies.sort()
print(
    f"n={len(latencies)} median={statistics.median(latencies):.1f}ms "
    f"p90={latencies[int(len(latencies) * 0.9)]:.1f}ms max={latencies[-1]:.1f}ms"
)
