#!/usr/bin/env python3
"""A Bayeux handshake flood from one address (issue 12), with the Python standard library only.

For --seconds, POSTs batches of --batch handshakes to /cometd from 127.0.0.1 on one keep-alive
connection and counts what came back; then handshakes once from --other (another loopback
address) to see whether a new client is locked out. Prints one JSON line.

    ./target/debug/halley --listen 127.0.0.1:8093 &
    python3 bench/handshake_flood.py --port 8093
"""

import argparse
import http.client
import json
import time

HANDSHAKE = {
    "channel": "/meta/handshake",
    "version": "1.0",
    "supportedConnectionTypes": ["long-polling"],
}


def post(conn, batch):
    body = json.dumps(batch)
    conn.request("POST", "/cometd", body, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    return json.loads(answer.read())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8093)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--other", default="127.0.0.2")
    args = parser.parse_args()

    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    opened, refused, requests = 0, {}, 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for reply in post(conn, [HANDSHAKE] * args.batch):
            if reply.get("successful"):
                opened += 1
            else:
                error = reply.get("error", "?")
                refused[error] = refused.get(error, 0) + 1
        requests += 1
    other = http.client.HTTPConnection(
        "127.0.0.1", args.port, timeout=10, source_address=(args.other, 0)
    )
    newcomer = post(other, [HANDSHAKE])[0]
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "requests": requests,
                "sessions_opened": opened,
                "refused": refused,
                "newcomer_from": args.other,
                "newcomer": "handshaken" if newcomer.get("successful") else newcomer.get("error"),
            }
        )
    )


if __name__ == "__main__":
    main()
