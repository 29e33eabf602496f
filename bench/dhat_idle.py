#!/usr/bin/env python3
"""What an idle connection keeps on the heap, by allocation site.

Runs the release server under `valgrind --tool=dhat`, holds N idle connections of one kind
with `halley-bench hold`, waits until the server counts them all (its /metrics), stops the
server with SIGINT and reads dhat's output: the bytes and blocks live at the heap's peak
(dhat's "gb"/"gbk"), grouped by allocation site and divided by N. The peak is taken with all
N connections held, so what is live there per connection is what an idle one keeps (plus
the server's fixed heap, spread over N).

    bench/dhat_idle.py --kind ws                     # 2,000 native WebSockets
    bench/dhat_idle.py --kind bayeux-lp --n 2000 --top 25 --frames 6
    bench/dhat_idle.py --bin /tmp/old/halley --kind longpoll

Every wait is bounded (--timeout); the server and the generator are ended by their ids.
"""
import argparse
import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request


def metrics(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values


def short(frame):
    # dhat frames read "0x1234: function (file.rs:12:3)"; keep the function and its place.
    frame = frame.split(": ", 1)[-1]
    return frame if len(frame) < 160 else frame[:157] + "..."


# Frames that only say "this allocated" (the allocator, std's collections): skipped when
# naming a site.
NOISE = re.compile(r"vgpreload|library/|\((alloc|boxed|sync|unix|convert|raw_vec|vec|mod|"
                   r"string|bytes_mut|bytes|str|slice|borrow)\.rs:|src/raw/|^(alloc|allocate|"
                   r"alloc_impl|alloc_impl_runtime|box_new_uninit|new|from|clone|to_owned|"
                   r"to_vec|with_capacity|with_capacity_in|reserve|reserve_inner|UnknownInlinedFun|"
                   r"do_alloc|grow_amortized|grow_one|try_allocate_in|try_clone_from_ref_in|"
                   r"clone_from_ref_in|clone_from_ref|new_uninitialized|prepare_resize|"
                   r"resize_inner|reserve_rehash|reserve_exact|finish_grow)[ <]")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/halley")
    ap.add_argument("--bench", default="target/release/halley-bench")
    ap.add_argument("--kind", default="sse")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--port", type=int, default=8390)
    ap.add_argument("--top", type=int, default=20, help="sites to print")
    ap.add_argument("--frames", type=int, default=4, help="frames of each site to print")
    ap.add_argument("--timeout", type=int, default=300, help="seconds allowed to connect all")
    ap.add_argument("--concurrency", type=int, default=20,
                    help="connections being set up at once (halley-bench --concurrency): few, so that "
                         "the peak is the idle state, not the ramp (a connection between two requests "
                         "holds a 1 KiB head buffer, more than some held ones cost)")
    ap.add_argument("--out", help="keep dhat's JSON here")
    ap.add_argument("--json", help="append a summary line to this file")
    ap.add_argument("--read", help="only read a dhat JSON kept before (--out), with its --n")
    args = ap.parse_args()

    if args.read:
        return report(args, args.read)
    out = args.out or tempfile.mktemp(prefix="dhat-idle-", suffix=".json")
    server = subprocess.Popen(
        ["valgrind", "--tool=dhat", f"--dhat-out-file={out}", args.bin,
         "--listen", f"127.0.0.1:{args.port}", "--hold-timeout", "600",
         "--session-timeout", "600", "--handshake-rate", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench = None
    try:
        deadline = time.time() + 60
        while metrics(args.port) is None:
            if time.time() > deadline or server.poll() is not None:
                sys.exit("the server did not start")
            time.sleep(0.5)
        bench = subprocess.Popen(
            [args.bench, "hold", "--target", f"127.0.0.1:{args.port}", "--procs", "1",
             "-n", str(args.n), "--kind", args.kind, "--hold-secs", str(args.timeout),
             "--concurrency", str(args.concurrency),
             "--ready-timeout", str(args.timeout), "--run-timeout", str(2 * args.timeout + 60)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Held: every connection open (the metrics request is one more) and, for subscribers,
        # every subscription made. Then a few quiet seconds, so nothing is mid-connect.
        deadline = time.time() + args.timeout
        while True:
            m = metrics(args.port) or {}
            if m.get("halley_connections", 0) >= args.n + 1 and m.get("halley_subscriptions", 0) >= args.n:
                break
            if time.time() > deadline or bench.poll() is not None:
                sys.exit(f"not all held in time: {m.get('halley_connections')} connections, "
                         f"{m.get('halley_subscriptions')} subscriptions")
            time.sleep(1)
        time.sleep(5)
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    finally:
        for p in (bench, server):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    report(args, out)
    if not args.out:
        os.unlink(out)


def report(args, out):
    with open(out) as f:
        data = json.load(f)
    ftbl = data["ftbl"]
    sites = []
    total_b = total_k = 0
    for pp in data["pps"]:
        b, k = pp.get("gb", 0), pp.get("gbk", 0)
        if b == 0:
            continue
        total_b += b
        total_k += k
        frames = [short(ftbl[i]) for i in pp["fs"]]
        named = [f for f in frames if not NOISE.search(f)] or frames
        sites.append((b, k, named))
    sites.sort(key=lambda s: -s[0])
    n = args.n
    print(f"{args.kind}, {n} held: {total_b / n:,.0f} B in {total_k / n:.2f} blocks per connection "
          f"at the peak ({total_b:,} B, {total_k:,} blocks in all)")
    for b, k, frames in sites[: args.top]:
        print(f"{b / n:8.1f} B {k / n:6.2f} blk  ({b // max(k, 1)} B each)  {frames[0]}")
        for f in frames[1: args.frames]:
            print(f"{'':31}{f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"kind": args.kind, "n": n, "bin": args.bin,
                                "bytes_per_conn": total_b / n, "blocks_per_conn": total_k / n}) + "\n")


if __name__ == "__main__":
    main()
