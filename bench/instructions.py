#!/usr/bin/env python3
"""Instructions per publish: Halley's own CPU work, counted by callgrind rather than timed.

    bench/instructions.py                                  # target/release/halley
    bench/instructions.py --bin /tmp/old/halley --bin target/release/halley   # A/B
    bench/instructions.py --kind bayeux-ws                 # another subscriber transport

Wall-clock A/Bs on this 2-core machine cannot resolve less than ~10% (the load generator
shares the cores, the VM's neighbours come and go). callgrind counts the instructions the
server executes, which is the same from run to run for the same binary and load (seen:
308,711,771 and 308,434,285, 0.1% apart) whatever else the machine does. It does not count
the kernel: the syscalls themselves, and on loopback the receiver's TCP input, are outside.

For each binary: two fresh servers under `valgrind --tool=callgrind`, each with
`--channels` × `--subs` subscribers of `--kind` (SSE unless told; a Bayeux kind publishes over
Bayeux, as `halley-bench` does by default) from `halley-bench throughput` and one publisher
(one publish in flight); one run publishes once, the other `--publishes` + 1 times. The
difference divided by `--publishes` is what one publish costs, with its deliveries to `--subs`
subscribers, without the connects. The callgrind files stay in the printed directory for
`callgrind_annotate --inclusive=yes FILE`.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "target", "release", "halley-bench")


def wait_port(port, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} did not open within {timeout} s")


def count(binary, publishes, args, out_dir, tag):
    out = os.path.join(out_dir, f"callgrind.{tag}.{publishes}.out")
    log = open(os.path.join(out_dir, f"server.{tag}.{publishes}.log"), "w")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
         "--listen", f"127.0.0.1:{args.port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(args.port)
        done = subprocess.run(
            [TOOL, "throughput", "--target", f"127.0.0.1:{args.port}", "--kind", args.kind,
             "--procs", "2", "--pid", str(server.pid), "--channels", str(args.channels),
             "--subs", str(args.subs), "--publishers", "1", "--duration", "300",
             "--max-publishes", str(publishes), "--run-timeout", "600"],
            capture_output=True, text=True, timeout=900)
        summary = [l for l in done.stderr.splitlines() if l.startswith("throughput")]
        print(f"  {tag}: {summary[0] if summary else done.stderr[-300:]}", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", help="server binary (repeatable; default target/release/halley)")
    ap.add_argument("--publishes", type=int, default=3000)
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--subs", type=int, default=10)
    ap.add_argument("--port", type=int, default=8093)
    ap.add_argument("--kind", default="sse", help="halley-bench subscriber kind (sse, bayeux-ws, bayeux-lp, ...)")
    args = ap.parse_args()
    binaries = args.bin or [os.path.join(ROOT, "target", "release", "halley")]
    out_dir = tempfile.mkdtemp(prefix="halley-callgrind-")
    print(f"callgrind files in {out_dir}", file=sys.stderr)
    for i, binary in enumerate(binaries):
        tag = f"{i}-{os.path.basename(os.path.dirname(os.path.abspath(binary)))}"
        base = count(binary, 1, args, out_dir, tag)
        total = count(binary, args.publishes + 1, args, out_dir, tag)
        per = (total - base) / args.publishes
        print(f"{binary}: {per:,.0f} instructions per publish to {args.subs} {args.kind} subscribers "
              f"({per / args.subs:,.0f} per delivery, publish included)")


if __name__ == "__main__":
    main()
