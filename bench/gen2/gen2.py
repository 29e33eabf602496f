#!/usr/bin/env python3
"""gen2: a second load generator for Comet servers, independent of halley-bench.

    gen2.py fanout --server halley --port 8020 --pid PID -n 5000 --messages 10 --interval 1
    gen2.py hold --server nchan --port 8040 --pid PID -n 10000 --proto ws

Why a second generator: every headline figure in bench/ was measured with halley-bench, which
this project wrote, and a one-off Python reader once ranked Halley and Nchan the other way
round (issue 14). A claim must hold whoever's client measures it, so this one shares no code
with halley-bench: the HTTP, SSE-over-chunked and WebSocket clients are aiohttp's (pinned in
requirements.txt), the event loop uvloop's (`--loop asyncio`: the standard library's, which
costs the reader about twice the CPU per delivery), and only the rules are the same: the same 64-byte JSON payload `{"ts":<ns>,"pad":"xxx…"}`
with its send time (CLOCK_REALTIME nanoseconds, which every process on the machine shares),
one delivery per `"ts":` read, the same URLs (SERVERS below).

How it avoids being the bottleneck in an unfair way: the subscribers are spread over
`--procs` worker processes (forked, each with its own event loop; one process may hold at
most 20,000 files here), each connecting from its own source addresses 127.0.(200+w).g, a
thousand connections per address, so no address runs out of ephemeral ports. A delivery's
latency is taken when the worker's loop hands the bytes to the reading task (the receive
time a real client sees), and every worker reports the CPU it spent while the broadcasts
were read, so a reader that could not keep up shows in `client_cpu_us_per_delivery`.
`--client raw` swaps aiohttp for a bare asyncio.Protocol (SSE only): not an independent
client any more, but a diagnostic of what the HTTP library costs the reader.

Scenarios:
- `fanout`: N subscribers on one channel, `--messages` publishes `--interval` seconds apart
  from the parent process (one keep-alive connection); per-delivery latency
  p50/p90/p99/max, the count delivered, server CPU per delivery from /proc/PID/stat.
- `hold`: N idle subscribers; server VmRSS before the first and after the last subscriber
  has its response head (SSE) or its 101 (WebSocket), KiB per connection, connects/s.

Prints one JSON object on stdout. Every wait is bounded: connects (`--connect-timeout`),
the wait for all subscribers (`--ready-timeout`), the wait for deliveries
(`--drain-timeout`), and each worker ends itself after `--run-timeout`.
"""
import argparse
import array
import asyncio
import json
import multiprocessing as mp
import os
import re
import sys
import time

try:
    import aiohttp
except ImportError:  # bench/gen2/run reads SERVERS before its virtualenv exists
    aiohttp = None

# One entry per server: how a subscriber subscribes (per protocol), how a publish is made.
# `channel` names channel i in the server's own terms; `sub` maps a protocol to the path a
# subscriber opens ({ch} is the channel); `publish` is (method, path) — every server here
# takes the payload as the body of an `application/json` POST. A peer added to bench/compare
# later (Centrifuge, Pushpin, socket.io) becomes one more entry here, with a new `publish`
# kind or protocol where it needs one.
SERVERS = {
    "halley": {
        "channel": "bench/{i}",
        "sub": {"sse": "/sub/{ch}", "ws": "/sub/{ch}"},
        "publish": ("POST", "/pub/{ch}"),
    },
    "nchan": {
        # bench/peers/nchan.conf: `location = /sub` and `location = /pub`, channel id ?id=.
        "channel": "bench-{i}",
        "sub": {"sse": "/sub?id={ch}", "ws": "/sub?id={ch}"},
        "publish": ("POST", "/pub?id={ch}"),
    },
    "floor": {
        # halley-bench floor: every GET is an SSE subscriber, every POST a broadcast.
        "channel": "bench/{i}",
        "sub": {"sse": "/sub/{ch}"},
        "publish": ("POST", "/pub/{ch}"),
    },
}

# The timestamp every payload carries; each match is one delivery, whatever the framing
# (an SSE `data:` line, a JSON message object in a WebSocket frame).
TS = re.compile(rb'"ts":(\d+)')

# Connections per source address, and attempts in flight per worker: far below the ~28,000
# ephemeral ports of one address, and enough to keep the server's accept loop busy.
PER_SOURCE = 1000
CONNECTING = 200


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def payload(size):
    # {"ts":1234567890123456789,"pad":""} is 35 bytes: the same shape halley-bench publishes.
    return '{{"ts":{},"pad":"{}"}}'.format(time.time_ns(), "x" * max(0, size - 35)).encode()


def url(args, protocol, i=0):
    entry = SERVERS[args.server]
    ch = entry["channel"].format(i=i)
    scheme = "ws" if protocol == "ws" else "http"
    return f"{scheme}://{args.host}:{args.port}" + entry["sub"][protocol].format(ch=ch)


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cpu_secs(pids):
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the command (which may hold spaces): utime and stime are 14 and 15.
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


# ---------------------------------------------------------------------------------------------
# Worker processes: hold subscribers, record latencies.


class Worker:
    def __init__(self, w, count, args, pipe):
        self.w, self.count, self.args, self.pipe = w, count, args, pipe
        self.latencies = array.array("q")
        self.delivered = 0
        self.expected = None
        self.connected = 0
        self.failed = 0
        self.ended = 0
        self.first_error = None
        self.t_first = None
        self.t_last = None
        self.cpu_start = None
        self.switches_start = None
        self.reads = 0
        self.done_sent = False
        self.stop = asyncio.Event()

    def record(self, data, now, end=None):
        self.reads += 1
        for m in TS.finditer(data, 0, len(data) if end is None else end):
            self.latencies.append(now - int(m.group(1)))
            self.delivered += 1
        if self.expected is not None and not self.done_sent and self.delivered >= self.expected:
            self.done_sent = True
            self.pipe.send(("done", self.delivered))

    def error(self, e):
        if self.first_error is None:
            self.first_error = f"{type(e).__name__}: {e}"

    async def sse(self, session, i, gate):
        async with gate:
            try:
                resp = await session.get(
                    url(self.args, "sse"),
                    headers={"Accept": "text/event-stream", "Accept-Encoding": "identity"},
                )
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
            except Exception as e:
                self.fail(e)
                return
            self.ready()
        content = resp.content
        rest = b""
        try:
            while True:
                data = await content.readany()
                if not data:
                    break
                now = time.time_ns()
                # Count only whole lines, so that a "ts" split across two reads is read once.
                buf = rest + data if rest else data
                cut = buf.rfind(b"\n") + 1
                rest = buf[cut:]
                if cut:
                    self.record(buf, now, cut)
        except Exception as e:
            self.error(e)
        self.ended += 1

    async def ws(self, session, i, gate):
        async with gate:
            try:
                sock = await session.ws_connect(url(self.args, "ws"), autoping=True, max_msg_size=1 << 20)
            except Exception as e:
                self.fail(e)
                return
            self.ready()
        try:
            while True:
                msg = await sock.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.record(msg.data.encode(), time.time_ns())
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.record(msg.data, time.time_ns())
                else:
                    break
        except Exception as e:
            self.error(e)
        self.ended += 1

    async def raw(self, source, i, gate):
        """`--client raw`, a diagnostic: SSE read by a bare asyncio.Protocol, no HTTP library."""
        loop = asyncio.get_running_loop()
        async with gate:
            try:
                head = loop.create_future()
                target = url(self.args, "sse").split("/", 3)[3]
                request = (f"GET /{target} HTTP/1.1\r\nHost: {self.args.host}:{self.args.port}\r\n"
                           "Accept: text/event-stream\r\n\r\n").encode()
                await asyncio.wait_for(loop.create_connection(
                    lambda: RawSse(self, request, head), self.args.host, self.args.port,
                    local_addr=(source, 0)), self.args.connect_timeout)
                status = await asyncio.wait_for(head, self.args.connect_timeout)
                if not status.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(status[:40].decode(errors="replace"))
            except Exception as e:
                self.fail(e)
                return
            self.ready()

    def fail(self, e):
        self.failed += 1
        self.error(e)
        self.check_ready()

    def ready(self):
        self.t_last = time.time_ns()
        self.connected += 1
        self.check_ready()

    def check_ready(self):
        if self.connected + self.failed == self.count:
            self.pipe.send(("ready", self.connected, self.failed, self.t_first, self.t_last, self.first_error))

    def command(self):
        msg = self.pipe.recv()
        if msg[0] == "start":
            self.expected = msg[1]
            self.cpu_start = time.process_time()
            self.switches_start = switches()
            self.reads = 0
            self.latencies = array.array("q")
            self.delivered = 0
        elif msg[0] == "stop":
            self.stop.set()

    async def run(self):
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self.command)
        gate = asyncio.Semaphore(CONNECTING)
        sessions, tasks = [], []
        # The connect rate counts from the first attempt to the last subscriber ready.
        self.t_first = time.time_ns()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.args.connect_timeout, sock_read=None)
        for start in range(0, self.count, PER_SOURCE):
            source = f"127.0.{200 + self.w}.{start // PER_SOURCE + 1}"
            connector = aiohttp.TCPConnector(limit=0, local_addr=(source, 0), force_close=True)
            session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
            sessions.append(session)
            client = self.ws if self.args.proto == "ws" else self.sse
            if self.args.client == "raw":
                client, session = self.raw, source
            for i in range(start, min(self.count, start + PER_SOURCE)):
                tasks.append(asyncio.ensure_future(client(session, i, gate)))
        if self.count == 0:
            self.check_ready()
        await self.stop.wait()
        # uvloop leaves the pipe non-blocking once it has watched it, and a result (8 bytes per
        # delivery) is larger than the socket buffer: send it with a blocking write.
        loop.remove_reader(self.pipe.fileno())
        os.set_blocking(self.pipe.fileno(), True)
        cpu = time.process_time() - self.cpu_start if self.cpu_start is not None else None
        sw = [b - a for a, b in zip(self.switches_start, switches())] if self.switches_start else None
        self.pipe.send(("result", {
            "delivered": self.delivered, "latencies": self.latencies.tobytes(), "cpu_secs": cpu,
            "ended": self.ended, "first_error": self.first_error, "reads": self.reads, "switches": sw,
        }))
        # Ten thousand orderly closes would only add time; the process's exit closes them all.
        os._exit(0)


class RawSse(asyncio.Protocol):
    """The least a Python asyncio reader can do per delivery: the loop calls `data_received`
    for each read, with no HTTP library and no task to wake. The response head is read to its
    end; after it, the chunk-size lines of a chunked body hold no "ts" and are skipped by the
    same scan as the events. Its figures beside aiohttp's show what the library adds."""

    def __init__(self, worker, request, head):
        self.worker, self.request, self.head, self.buf = worker, request, head, b""

    def connection_made(self, transport):
        transport.write(self.request)

    def data_received(self, data):
        now = time.time_ns()
        buf = self.buf + data if self.buf else data
        if not self.head.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.head.set_result(buf[:end])
            buf = buf[end + 4:]
        cut = buf.rfind(b"\n") + 1
        self.buf = buf[cut:]
        if cut:
            self.worker.record(buf, now, cut)

    def connection_lost(self, exc):
        if not self.head.done():
            self.head.set_exception(exc or ConnectionError("closed before the response head"))
        else:
            self.worker.ended += 1


def switches():
    """This process's (voluntary, involuntary) context switches: how often its loop slept
    waiting for sockets, and how often the scheduler took the CPU from it."""
    got = {}
    with open("/proc/self/status") as f:
        for line in f:
            if "ctxt_switches" in line:
                name, value = line.split(":")
                got[name] = int(value)
    return [got.get("voluntary_ctxt_switches", 0), got.get("nonvoluntary_ctxt_switches", 0)]


def worker_main(w, count, args, pipe):
    if args.loop == "uvloop":
        import uvloop
        uvloop.install()
    # Whatever happens, this process ends after --run-timeout.
    import threading
    threading.Timer(args.run_timeout, lambda: os._exit(3)).start()
    asyncio.run(Worker(w, count, args, pipe).run())


# ---------------------------------------------------------------------------------------------
# The parent: start workers, read the server, publish.


def start_workers(args):
    ctx = mp.get_context("fork")
    workers = []
    share = [args.n // args.procs + (1 if w < args.n % args.procs else 0) for w in range(args.procs)]
    for w, count in enumerate(share):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(w, count, args, theirs), daemon=True)
        proc.start()
        workers.append((proc, mine, count))
    return workers


def wait_all(workers, kind, timeout):
    """The message `kind` from every worker, or an error once `timeout` seconds have passed."""
    deadline = time.time() + timeout
    got = {}
    while len(got) < len(workers):
        for w, (_, pipe, _) in enumerate(workers):
            if w not in got and pipe.poll(0.05):
                msg = pipe.recv()
                if msg[0] == kind:
                    got[w] = msg
        if time.time() > deadline:
            raise TimeoutError(f"{len(workers) - len(got)} workers sent no {kind!r} in {timeout} s")
    return [got[w] for w in range(len(workers))]


def connect(args, workers):
    ready = wait_all(workers, "ready", args.ready_timeout)
    connected = sum(r[1] for r in ready)
    failed = sum(r[2] for r in ready)
    firsts = [r[3] for r in ready if r[3]]
    lasts = [r[4] for r in ready if r[4]]
    span = (max(lasts) - min(firsts)) / 1e9 if firsts else None
    errors = [r[5] for r in ready if r[5]]
    log(f"{connected} connected, {failed} failed" + (f" (first error: {errors[0]})" if errors else ""))
    for w, r in enumerate(ready):
        workers[w] = workers[w][:2] + (r[1],)
    return {
        "connected": connected, "failed": failed,
        "connect_secs": span, "connect_rate": connected / span if span else None,
        "connect_error": errors[0] if errors else None,
    }


def stop_workers(workers):
    for _, pipe, _ in workers:
        pipe.send(("stop",))
    results = [r[1] for r in wait_all(workers, "result", 60)]
    for proc, _, _ in workers:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return results


async def publish_all(args):
    """`--messages` publishes, `--interval` seconds apart from the first one's start: when
    each was sent, and the ones refused."""
    method, path = SERVERS[args.server]["publish"]
    target = f"http://{args.host}:{args.port}" + path.format(ch=SERVERS[args.server]["channel"].format(i=0))
    refused = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        start = time.monotonic()
        first_ns = None
        for k in range(args.messages):
            delay = start + k * args.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = payload(args.size)
            first_ns = first_ns or int(TS.search(body).group(1))
            async with session.request(method, target, data=body,
                                       headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if not 200 <= resp.status < 300:
                    refused.append(resp.status)
    return first_ns, refused


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def fanout(args):
    workers = start_workers(args)
    result = {"scenario": "fanout", "server": args.server, "proto": args.proto, "subscribers": args.n,
              "messages": args.messages, "interval_secs": args.interval, "procs": args.procs,
              "loop": args.loop, "client": args.client, "generator": "gen2"}
    try:
        result.update(connect(args, workers))
        time.sleep(args.settle)
        for w, (_, pipe, count) in enumerate(workers):
            pipe.send(("start", count * args.messages))
        cpu0 = cpu_secs(args.pid) if args.pid else None
        t0 = time.time()
        first_ns, refused = asyncio.run(publish_all(args))
        published_secs = time.time() - t0
        try:
            wait_all(workers, "done", args.drain_timeout)
            drained = True
        except TimeoutError:
            drained = False
        cpu1 = cpu_secs(args.pid) if args.pid else None
    except BaseException:
        for proc, _, _ in workers:
            proc.kill()
        raise
    results = stop_workers(workers)
    lat = array.array("q")
    for r in results:
        lat.frombytes(r["latencies"])
    lat = sorted(lat)
    delivered = sum(r["delivered"] for r in results)
    ms = lambda v: None if v is None else round(v / 1e6, 3)
    client_cpu = sum(r["cpu_secs"] or 0 for r in results)
    result.update({
        "expected": result["connected"] * args.messages,
        "delivered": delivered,
        "drained": drained,
        "refused_publishes": refused,
        "ended_streams": sum(r["ended"] for r in results),
        "stream_error": next((r["first_error"] for r in results if r["first_error"]), None),
        "latency": {f"p{p}_ms": ms(percentile(lat, p)) for p in (50, 90, 99)}
        | {"min_ms": ms(lat[0] if lat else None), "max_ms": ms(lat[-1] if lat else None),
           "cdf_ms": [ms(percentile(lat, p)) for p in range(1, 101)] if lat else []},
        "published_secs": round(published_secs, 3),
        "server_cpu_secs": round(cpu1 - cpu0, 3) if cpu0 is not None else None,
        "server_cpu_us_per_delivery": round((cpu1 - cpu0) / delivered * 1e6, 2) if cpu0 is not None and delivered else None,
        "client_cpu_us_per_delivery": round(client_cpu / delivered * 1e6, 2) if delivered else None,
        # How the reader met the broadcast: deliveries per read (more than 1 when a socket's
        # buffer held several events), and the workers' sleeps and preemptions per broadcast.
        "deliveries_per_read": round(delivered / max(1, sum(r["reads"] for r in results)), 3),
        "client_sleeps_per_broadcast": round(sum(r["switches"][0] for r in results if r["switches"]) / args.messages, 1),
        "client_preemptions_per_broadcast": round(sum(r["switches"][1] for r in results if r["switches"]) / args.messages, 1),
    })
    return result


def hold(args):
    if not args.pid:
        raise SystemExit("hold needs --pid (the server's memory is what it measures)")
    before = rss_kib(args.pid)
    workers = start_workers(args)
    result = {"scenario": "hold", "server": args.server, "proto": args.proto, "subscribers": args.n,
              "procs": args.procs, "loop": args.loop, "generator": "gen2"}
    try:
        result.update(connect(args, workers))
        time.sleep(args.settle)
        after = rss_kib(args.pid)
    except BaseException:
        for proc, _, _ in workers:
            proc.kill()
        raise
    results = stop_workers(workers)
    result.update({
        "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_subscriber": round((after - before) / result["connected"], 3) if result["connected"] else None,
        "ended_streams": sum(r["ended"] for r in results),
        "stream_error": next((r["first_error"] for r in results if r["first_error"]), None),
    })
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["fanout", "hold"])
    ap.add_argument("--server", choices=sorted(SERVERS), required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, action="append", default=[],
                    help="server process to read (/proc); repeatable, summed (nginx workers)")
    ap.add_argument("--proto", choices=["sse", "ws"], default="sse")
    ap.add_argument("-n", type=int, default=5000, help="subscribers")
    ap.add_argument("--procs", type=int, default=0, help="worker processes (default: 2, or one per 9,000)")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop",
                    help="uvloop (default) halves the reader's CPU per delivery; asyncio: the standard loop")
    ap.add_argument("--client", choices=["aiohttp", "raw"], default="aiohttp",
                    help="raw: a diagnostic SSE reader on a bare asyncio.Protocol (no HTTP library)")
    ap.add_argument("--messages", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between publishes")
    ap.add_argument("--size", type=int, default=64, help="payload bytes (at least 35)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after the last connect")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--drain-timeout", type=float, default=30.0)
    ap.add_argument("--run-timeout", type=float, default=600.0)
    args = ap.parse_args()
    if args.client == "raw" and args.proto != "sse":
        raise SystemExit("--client raw reads SSE only")
    if args.proto not in SERVERS[args.server]["sub"]:
        raise SystemExit(f"{args.server} has no {args.proto} subscriber here")
    args.procs = args.procs or max(2, -(-args.n // 9000))
    result = fanout(args) if args.scenario == "fanout" else hold(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
