#!/usr/bin/env python3
"""Broadcast to many subscribers held by several nodes on one broker (issues 5 and 16).

Starts its own broker — `memory` (one node), `redis` (one redis-server), `sentinel` (a master,
two replicas and three sentinels; the nodes on `redis+sentinel://…`, `WAIT 1`), `nats` (one
nats-server, stream R1) or `nats3` (three nats-servers, stream R3) — and NODES release `halley`
nodes on it, each on free 127.0.0.1 ports with temp dirs. Three measurements:

* default (issue 5): one load generator per node holding PER_NODE SSE subscribers of /bench/all
  (one process per node: the fd limit is 20,000 per process), checks through /api/channels on
  the first node that the cluster sees them all, publishes COUNT messages to the first node, one
  every INTERVAL ms, each carrying its publish time, and reports the delivery latency over every
  (subscriber, message) pair and the CPU time the broker and the nodes used.

* --rate R (deliveries per second on four nodes): the same subscribers, then one publisher per
  generator — on every node — publishing to /bench/all R times a second each for SECONDS (one
  keep-alive connection each, a fixed schedule: a late publish goes at once, none skipped),
  timing each publish (the request to its answer). Reports deliveries/s (the subscribers' count
  over the publishing window), the delivery latency, publish p50/p99, what was refused, the
  nodes' lagged subscribers (/metrics) and the CPU of the nodes and the broker. With `memory`
  the four generators and four publishers share its one node.

* --failover (`nats3` or `sentinel`): one SSE subscriber of /bench/fo/** on every node and one
  publisher per node publishing to its own channel /bench/fo/<i> in a loop (the next publish as
  soon as the last is answered); after 2 s it kills the stream's leader (asked through
  `$JS.API.STREAM.INFO.HALLEY`) or the Redis master with SIGKILL, and reports for each publisher
  how long from the kill until publishes were answered 200 again, what else they were answered,
  and for each subscriber whether it got every acknowledged message once, anything twice, a gap
  or a disconnect. --history-size sets the nodes' (the stream's messages per channel).

--broker takes a comma-separated list and --rounds repeats it, interleaved (A B C A B C…), so
that a machine shared with other work spreads its noise over every broker alike. Every run
records the load average before and after.

    cargo build --release -p halley && cargo build --release -p halley-redis --example broadcast
    python3 bench/redis_broadcast.py --nodes 4 --per-node 17500 --count 20
    python3 bench/redis_broadcast.py --broker memory,redis,sentinel,nats,nats3 --rounds 3 \\
        --per-node 1000 --rate 25,100 --seconds 10
    python3 bench/redis_broadcast.py --broker nats3,sentinel --rounds 3 --failover --keep-logs DIR

(--rate takes a list: each round runs every rate for every broker. --keep-logs copies each
run's node logs, which say when a NATS node's fan-out stopped and came back.)

Only loopback traffic; every wait is bounded; every process it starts is stopped at the end.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HALLEY = os.path.join(ROOT, "target", "release", "halley")
GEN = os.path.join(ROOT, "target", "release", "examples", "broadcast")
TICK = os.sysconf("SC_CLK_TCK")
BROKERS = ("memory", "redis", "sentinel", "nats", "nats3")
SENTINEL_MASTER = "halley"
# How long a publish may take before the publisher calls it failed (a node waiting for a dead
# NATS server or Redis master answers 503 well before this).
PUBLISH_TIMEOUT = 15.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=10.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")


def until(what, check, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"timed out: {what}")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def busy_seconds():
    """CPU time the whole machine spent busy (every core, every process), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def get(port, path, limit=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=limit) as r:
        return r.status, r.read()


def healthy(port):
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


def subscribers(port):
    rows = json.loads(get(port, "/api/channels?prefix=/bench/")[1])
    return sum(row["subscribers"] for row in rows if row["channel"] == "/bench/all")


def metrics(port):
    """The counters of /metrics this benchmark reads."""
    out = {}
    for line in get(port, "/metrics")[1].decode().splitlines():
        for name in ("halley_messages_delivered_total", "halley_subscribers_lagged_total",
                     "halley_messages_dropped_total", "halley_broker_errors_total"):
            if line.startswith(name + " "):
                out[name] = out.get(name, 0) + float(line.split()[1])
    return out


def redis_command(port, *args):
    """One command on a fresh connection; the raw reply."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(out)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data.decode()
            data += chunk


def nats_request(port, subject, payload=b"", limit=5.0):
    """One request over the NATS text protocol (no client library needed); the reply's payload."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        f = s.makefile("rb")
        f.readline()  # INFO
        inbox = b"_INBOX.bench%d" % os.getpid()
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB %s 1\r\nPUB %s %s %d\r\n%s\r\nPING\r\n'
                  % (inbox, subject.encode(), inbox, len(payload), payload))
        while True:
            line = f.readline()
            if not line:
                return None
            if line.startswith(b"MSG "):
                size = int(line.split()[-1])
                body = f.read(size + 2)[:size]
                return body
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")


def jetstream_ready(port):
    try:
        answer = nats_request(port, "$JS.API.INFO", limit=1)
    except OSError:
        return False
    return answer is not None and b'"error"' not in answer


class Cluster:
    """A broker and the nodes on it; `procs` is everything started, for the caller to stop."""

    def __init__(self, kind, nodes, tmp, procs, max_connections, node_args=()):
        self.kind = kind
        self.tmp = tmp
        self.procs = procs
        self.broker_procs = {}
        self.url = None
        self.nats = []  # (name, client port, proc)
        self.master = None
        if kind == "redis":
            port = self.redis("redis")
            self.url = f"redis://127.0.0.1:{port}"
        elif kind == "sentinel":
            self.sentinel()
        elif kind in ("nats", "nats3"):
            self.start_nats(1 if kind == "nats" else 3)
        extra = (["--broker", self.url] if self.url else []) + list(node_args)
        self.ports, self.halleys = [], []
        for i in range(1 if kind == "memory" else nodes):
            port = free_port()
            p = subprocess.Popen(
                [HALLEY, "serve", "--listen", f"127.0.0.1:{port}", "--heartbeat", "120",
                 "--max-connections", str(max_connections), *extra],
                stdout=open(os.path.join(tmp, f"node-{i}.log"), "w"), stderr=subprocess.STDOUT)
            procs.append(p)
            self.halleys.append(p)
            self.ports.append(port)
            wait_port(port)
            until(f"node on {port} healthy", lambda: healthy(port), 60)
            if kind == "nats3" and i == 0:
                # The first node creates the stream; the others start once it has its three
                # replicas. Nodes started together on a cluster that has just formed can each
                # create it, one after another (a second epoch: bench/README.md, "NATS
                # failover"), which is not what this benchmark measures.
                until("stream HALLEY has three replicas", lambda: len(self.stream_peers()) == 3, 30)

    def redis(self, name, *extra):
        port = free_port()
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        p = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", d, *extra],
            stdout=subprocess.DEVNULL)
        self.procs.append(p)
        self.broker_procs[name] = p
        wait_port(port)
        return port

    def sentinel(self):
        """sentinel_cost.py's setup: a master, two replicas, three sentinels (quorum 2,
        down-after 1000 ms); the nodes follow the master through them, with WAIT 1."""
        master = self.redis("master")
        self.master = master
        for i in range(2):
            self.redis(f"replica{i}", "--replicaof", "127.0.0.1", str(master))
        until("replicas in sync",
              lambda: redis_command(master, "INFO", "replication").count("state=online") == 2)
        sentinels = []
        for i in range(3):
            port = free_port()
            d = os.path.join(self.tmp, f"sentinel{i}")
            os.makedirs(d)
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                        f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 2\n"
                        f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n"
                        f"sentinel failover-timeout {SENTINEL_MASTER} 3000\n")
            p = subprocess.Popen(["redis-server", conf, "--sentinel"], stdout=subprocess.DEVNULL)
            self.procs.append(p)
            self.broker_procs[f"sentinel{i}"] = p
            wait_port(port)
            sentinels.append(port)
        for port in sentinels:
            until("sentinels know each other",
                  lambda: "num-other-sentinels\r\n$1\r\n2" in redis_command(
                      port, "SENTINEL", "MASTER", SENTINEL_MASTER))
        self.url = (f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in sentinels)}/"
                    f"{SENTINEL_MASTER}?wait=1")

    def start_nats(self, n):
        ports = [(free_port(), free_port()) for _ in range(n)]
        routes = ",".join(f"nats://127.0.0.1:{c}" for _, c in ports)
        for i, (port, cport) in enumerate(ports):
            cmd = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port),
                   "--server_name", f"n{i}", "-sd", os.path.join(self.tmp, f"nats{i}")]
            if n > 1:
                cmd += ["--cluster_name", "bench", "--cluster", f"nats://127.0.0.1:{cport}",
                        "--routes", routes]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(p)
            self.broker_procs[f"n{i}"] = p
            self.nats.append((f"n{i}", port, p))
        for _, port, _ in self.nats:
            wait_port(port)
        # JetStream answers once its cluster has a meta leader.
        for _, port, _ in self.nats:
            until("JetStream ready", lambda: jetstream_ready(port), 30)
        self.url = "nats://" + ",".join(f"127.0.0.1:{p}" for _, p, _ in self.nats)

    def stream_info(self):
        for _, port, p in self.nats:
            if p.poll() is not None:
                continue
            try:
                body = nats_request(port, "$JS.API.STREAM.INFO.HALLEY", limit=2)
            except OSError:
                continue
            if body:
                info = json.loads(body)
                if "error" not in info:
                    return info
        return {}

    def stream_peers(self):
        cluster = self.stream_info().get("cluster", {})
        peers = [cluster.get("leader")] + [r["name"] for r in cluster.get("replicas", [])]
        return [p for p in peers if p]

    def kill_leader(self):
        """SIGKILL the NATS stream's leader or the Redis master; its name."""
        if self.kind == "nats3":
            leader = until("stream leader", lambda: self.stream_info().get("cluster", {}).get("leader"))
            self.broker_procs[leader].kill()
            return leader
        self.broker_procs["master"].kill()
        return "master"

    def cpu(self):
        return {"nodes": sum(cpu_seconds(p.pid) for p in self.halleys),
                "broker": sum(cpu_seconds(p.pid) for p in self.broker_procs.values())}


def start_generators(cluster, slots, per_node, count, tmp, wait_s):
    """One generator per slot, slot i on node i mod nodes; returns [(proc, latency file)]."""
    gens = []
    for i in range(slots):
        port = cluster.ports[i % len(cluster.ports)]
        out = os.path.join(tmp, f"lat-{i}.txt")
        g = subprocess.Popen(
            [GEN, "subscribe", str(port), str(per_node), f"127.0.{i + 1}.1", str(count), out,
             str(wait_s)],
            stdout=subprocess.PIPE, text=True)
        cluster.procs.append(g)
        gens.append((g, out))
    for g, _ in gens:
        line = g.stdout.readline()
        if not line.startswith("ready"):
            sys.exit(f"generator failed: {line!r}")
    return gens


def wait_seen(port, total, limit=30):
    deadline = time.time() + limit
    seen = 0
    while time.time() < deadline:
        seen = subscribers(port)
        if seen >= total:
            break
        time.sleep(0.2)
    return seen


def collect(gens, limit):
    latencies = []
    for g, out in gens:
        g.wait(timeout=limit)
        with open(out) as f:
            latencies.extend(int(x) for x in f)
    latencies.sort()
    return latencies


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))] if sorted_values else None


class Http:
    """One keep-alive HTTP/1.1 connection for publishes, reopened after a failure."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.buf = b""

    def publish(self, channel, body):
        """(status, answer body, seconds); status 0 when the connection failed or timed out."""
        t0 = time.perf_counter()
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=PUBLISH_TIMEOUT)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buf = b""
            self.sock.sendall(
                b"POST /pub%s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (channel, len(body), body))
            while b"\r\n\r\n" not in self.buf:
                self.read()
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(self.buf) < length:
                self.read()
            answer, self.buf = self.buf[:length], self.buf[length:]
            return int(head.split(b" ")[1]), answer, time.perf_counter() - t0
        except (OSError, ValueError, IndexError):
            if self.sock is not None:
                self.sock.close()
            self.sock = None
            return 0, b"", time.perf_counter() - t0

    def read(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        self.buf += chunk


def paced_publisher(port, rate, count, start_at, results):
    """`count` publishes to /bench/all at `rate` a second from `start_at`; the data is the wall
    clock in µs (the generators' latency). Runs in its own process: the GIL would otherwise
    time four publishers together."""
    conn = Http(port)
    samples, statuses, refusals = [], {}, []
    for k in range(count):
        due = start_at + k / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        status, answer, took = conn.publish(b"/bench/all", str(time.time_ns() // 1000).encode())
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            samples.append(took)
        elif len(refusals) < 5:
            # What the node said (its JSON error names the reason).
            refusals.append([status, answer.decode(errors="replace")[:300], round(took, 3)])
    results.put({"samples": samples, "statuses": statuses, "refusals": refusals, "end": time.time()})


def load_run(kind, args, tmp):
    procs = []
    try:
        print(f"== {kind}: {args.slots} × {args.per_node} SSE subscribers, "
              f"{args.slots} publishers × {args.rate_now}/s for {args.seconds} s", flush=True)
        load_before = loadavg()
        cluster = Cluster(kind, args.nodes, tmp, procs, args.per_node * (4 if kind == "memory" else 1) + 500)
        per_publisher = int(args.rate_now * args.seconds)
        count = per_publisher * args.slots
        gens = start_generators(cluster, args.slots, args.per_node, count, tmp, args.seconds + 60)
        total = args.slots * args.per_node
        seen = wait_seen(cluster.ports[0], total)
        m0 = [metrics(p) for p in cluster.ports]
        cpu0 = cluster.cpu()
        busy0, busy0_at = busy_seconds(), time.time()
        results = multiprocessing.Queue()
        start_at = time.time() + 1.0
        pubs = [multiprocessing.Process(
            target=paced_publisher,
            args=(cluster.ports[i % len(cluster.ports)], args.rate_now, per_publisher, start_at, results))
            for i in range(args.slots)]
        for p in pubs:
            p.start()
        outs = [results.get(timeout=args.seconds + 120) for _ in pubs]
        for p in pubs:
            p.join(timeout=10)
        published_end = max(o["end"] for o in outs)
        latencies = collect(gens, args.seconds + 120)
        cpu1 = cluster.cpu()
        busy1, busy1_at = busy_seconds(), time.time()
        m1 = [metrics(p) for p in cluster.ports]
        # Deliveries/s over the publishing window (from the first publish due to the last one
        # answered: when publishers fall behind their schedule, that is longer than SECONDS);
        # the delivery latency says how far behind the subscribers were at its end.
        window = published_end - start_at
        samples = sorted(s for o in outs for s in o["samples"])
        statuses = {}
        for o in outs:
            for k, v in o["statuses"].items():
                statuses[str(k)] = statuses.get(str(k), 0) + v
        delta = lambda name: round(sum(b.get(name, 0) - a.get(name, 0) for a, b in zip(m0, m1)))
        row = {
            "broker": kind,
            "nodes": len(cluster.ports),
            "subscribers": total,
            "seen_by_node_1": seen,
            "publishers": args.slots,
            "rate_per_publisher": args.rate_now,
            "seconds": args.seconds,
            "publishes": sum(statuses.values()),
            "answers": statuses,
            "refusals": [r for o in outs for r in o["refusals"]],
            "publishes_per_s": round(statuses.get("200", 0) / window),
            "publish_p50_ms": round(pct(samples, 0.5) * 1e3, 2) if samples else None,
            "publish_p99_ms": round(pct(samples, 0.99) * 1e3, 2) if samples else None,
            "deliveries": len(latencies),
            "expected_deliveries": statuses.get("200", 0) * total,
            "deliveries_per_s": round(len(latencies) / window),
            "delivery_p50_ms": round(pct(latencies, 0.5) / 1e3, 1) if latencies else None,
            "delivery_p99_ms": round(pct(latencies, 0.99) / 1e3, 1) if latencies else None,
            "delivery_max_ms": round(latencies[-1] / 1e3, 1) if latencies else None,
            "lagged": delta("halley_subscribers_lagged_total"),
            "dropped": delta("halley_messages_dropped_total"),
            "broker_errors": delta("halley_broker_errors_total"),
            "nodes_cpu_s": round(cpu1["nodes"] - cpu0["nodes"], 2),
            "broker_cpu_s": round(cpu1["broker"] - cpu0["broker"], 2),
            "window_s": round(window, 2),
            "load_before": load_before,
            "load_after": loadavg(),
        }
        row["nodes_cpu_per_s"] = round(row["nodes_cpu_s"] / window, 2)
        row["nodes_cpu_us_per_delivery"] = round(row["nodes_cpu_s"] / max(1, len(latencies)) * 1e6, 2)
        # Everything the machine did meanwhile (generators, publishers, other people's work,
        # and this script reading the generators' files at the end): 2.0 per second is both
        # cores busy.
        row["machine_busy_s"] = round(busy1 - busy0, 2)
        row["machine_busy_per_s"] = round((busy1 - busy0) / (busy1_at - busy0_at), 2)
        print(f"| {kind} | {row['deliveries_per_s']:,} | {row['deliveries']:,} of {row['expected_deliveries']:,} | "
              f"{row['delivery_p50_ms']} / {row['delivery_p99_ms']} | {row['publish_p50_ms']} / {row['publish_p99_ms']} | "
              f"{row['answers']} | lagged {row['lagged']} | nodes {row['nodes_cpu_s']} s, broker {row['broker_cpu_s']} s | "
              f"machine {row['machine_busy_per_s']}/2 cores | load {row['load_before'][0]}→{row['load_after'][0]} |",
              flush=True)
        return row
    finally:
        stop(procs)


class SseReader(threading.Thread):
    """One SSE subscriber of /bench/fo/** that records every event (id, event, data) and
    reconnects with Last-Event-ID when its connection ends, as an EventSource would."""

    def __init__(self, port, stop_flag):
        super().__init__(daemon=True)
        self.port = port
        self.stop_flag = stop_flag
        self.events = []  # (id, event name, data)
        self.disconnects = 0
        self.ready = threading.Event()
        self.last_id = None

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.stream()
            except (OSError, ValueError):
                pass
            if self.stop_flag.is_set():
                return
            self.disconnects += 1
            time.sleep(0.1)

    def stream(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
        head = b"GET /sub/bench/fo/** HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        if self.last_id:
            head += b"Last-Event-ID: %s\r\n" % self.last_id.encode()
        s.sendall(head + b"\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += self.recv(s)
        head, _, raw = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError("refused")
        chunked = b"transfer-encoding: chunked" in head.lower()
        self.ready.set()
        body = b""
        while not self.stop_flag.is_set():
            if chunked:
                # Decode chunk framing as it arrives: size line, data, CRLF.
                while True:
                    if b"\r\n" not in raw:
                        break
                    size_line, _, rest = raw.partition(b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        raise OSError("end")
                    if len(rest) < size + 2:
                        break
                    body += rest[:size]
                    raw = rest[size + 2:]
            else:
                body += raw
                raw = b""
            while b"\n\n" in body:
                event, _, body = body.partition(b"\n\n")
                self.record(event)
            raw += self.recv(s)

    def recv(self, s):
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if self.stop_flag.is_set():
                    raise OSError("stopped")
                continue
            if not chunk:
                raise OSError("closed")
            return chunk

    def record(self, event):
        fields = {}
        for line in event.decode().split("\n"):
            if ":" in line and not line.startswith(":"):
                k, _, v = line.partition(":")
                fields[k] = v[1:] if v.startswith(" ") else v
        if "id" in fields:
            self.last_id = fields["id"]
        if "data" in fields or fields.get("event"):
            self.events.append((fields.get("id"), fields.get("event", "message"), fields.get("data"),
                                time.time()))


def loop_publisher(port, channel, stop_flag, log):
    """Publishes to `channel` one after the other until told to stop; logs (time sent, time
    answered, status, data, id)."""
    conn = Http(port)
    k = 0
    while not stop_flag.is_set():
        data = b"%s-%d" % (channel.rsplit(b"/", 1)[1], k)
        sent = time.time()
        status, answer, _ = conn.publish(channel, data)
        msg_id = None
        if status == 200:
            try:
                msg_id = json.loads(answer).get("id")
            except ValueError:
                status = -1
        log.append((sent, time.time(), status, data.decode(), msg_id))
        k += 1
        if status != 200:
            time.sleep(0.005)  # not a busy loop against a refusing node


def failover_run(kind, args, tmp):
    procs = []
    try:
        print(f"== {kind}: failover under {args.nodes} publish loops", flush=True)
        load_before = loadavg()
        cluster = Cluster(kind, args.nodes, tmp, procs, 1000,
                          ["--history-size", str(args.history_size)] if args.history_size else [])
        stop_subs, stop_pubs = threading.Event(), threading.Event()
        readers = [SseReader(port, stop_subs) for port in cluster.ports]
        for r in readers:
            r.start()
        for r in readers:
            if not r.ready.wait(10):
                sys.exit("subscriber not ready")
        logs = [[] for _ in cluster.ports]
        pubs = [threading.Thread(target=loop_publisher,
                                 args=(port, b"/bench/fo/p%d" % i, stop_pubs, logs[i]), daemon=True)
                for i, port in enumerate(cluster.ports)]
        for p in pubs:
            p.start()
        time.sleep(2.0)  # the loops at full speed before the kill
        killed_name = cluster.kill_leader()
        killed = time.time()
        # Until every publisher has had a 200 sent after the kill and after a refusal (or none
        # was refused) and 2 s have passed; at most 60 s.
        deadline = killed + 60
        while time.time() < deadline:
            time.sleep(0.2)
            if time.time() - killed < 2:
                continue
            if all(any(e[0] > killed and e[2] == 200 and
                       (not any(f[2] != 200 and f[0] > killed for f in log) or
                        e[0] > max(f[0] for f in log if f[2] != 200 and f[0] > killed))
                       for e in log) for log in logs):
                break
        time.sleep(1.0)
        stop_pubs.set()
        for p in pubs:
            p.join(timeout=PUBLISH_TIMEOUT + 5)
        acked = {e[3]: e[4] for log in logs for e in log if e[2] == 200}
        # Until every subscriber has every acknowledged message, or 30 s.
        wait_until = time.time() + 30
        while time.time() < wait_until:
            if all(acked.keys() <= {ev[2] for ev in r.events} for r in readers):
                break
            time.sleep(0.1)
        stop_subs.set()
        publishers = []
        for i, log in enumerate(logs):
            after = [e for e in log if e[0] >= killed]
            refused = [e for e in after if e[2] != 200]
            first_ok_after_refusal = next(
                (e for e in after if e[2] == 200 and refused and e[0] > refused[-1][0]), None)
            # In flight when the leader died: sent before, answered after.
            in_flight = [e for e in log if e[0] < killed <= e[1]]
            publishers.append({
                "node": i,
                "publishes": len(log),
                "refused": len(refused),
                "answers_after_kill": sorted({e[2] for e in after}),
                "first_refused_after_s": round(refused[0][1] - killed, 2) if refused else None,
                # From the kill until the first publish answered 200 after the last refusal:
                # how long a publisher that retries at once could not publish.
                "unavailable_s": round(first_ok_after_refusal[1] - killed, 2) if first_ok_after_refusal else 0.0,
                "slowest_answer_s": round(max((e[1] - e[0] for e in after), default=0), 2),
                "in_flight_at_kill": [(e[2], round(e[1] - killed, 2)) for e in in_flight],
            })
        unacked_data = {e[3] for log in logs for e in log if e[2] != 200}
        subscribers_seen = []
        for i, r in enumerate(readers):
            messages = [ev for ev in r.events if ev[1] == "message"]
            data = [ev[2] for ev in messages]
            ids = [ev[0] for ev in messages]
            got = set(data)
            first_seen = {}
            doubled = []
            for ev in messages:
                if ev[2] in first_seen:
                    doubled.append({"data": ev[2], "ids": [first_seen[ev[2]][0], ev[0]],
                                    "after_kill_s": [round(first_seen[ev[2]][3] - killed, 2),
                                                     round(ev[3] - killed, 2)]})
                else:
                    first_seen[ev[2]] = ev
            missing = acked.keys() - got
            # Missing messages by publisher: how many and the range of their numbers.
            by_publisher = {}
            for d in missing:
                name, k = d.rsplit("-", 1)
                by_publisher.setdefault(name, []).append(int(k))
            after = [ev for ev in messages if ev[3] > killed]
            stalls = [b[3] - a[3] for a, b in zip(after, after[1:])]
            subscribers_seen.append({
                "node": i,
                "messages": len(data),
                "acknowledged_missing": len(missing),
                "missing_by_publisher": {k: [len(v), min(v), max(v)] for k, v in sorted(by_publisher.items())},
                "doubled": len(data) - len(got),
                "doubled_examples": doubled[:3],
                "ids_doubled": len(ids) - len(set(ids)),
                "refused_but_delivered": len(got & unacked_data),
                "gaps": sum(1 for ev in r.events if ev[1] == "gap"),
                "other_events": sorted({ev[1] for ev in r.events} - {"message", "gap"}),
                "disconnects": r.disconnects,
                "longest_silence_after_kill_s": round(max(stalls, default=0), 2),
                "last_message_after_kill_s": round(after[-1][3] - killed, 2) if after else None,
            })
        row = {
            "broker": kind,
            "nodes": len(cluster.ports),
            "killed": killed_name,
            "acknowledged": len(acked),
            "unavailable_s_max": max(p["unavailable_s"] for p in publishers),
            "unavailable_s_min": min(p["unavailable_s"] for p in publishers),
            "publishers": publishers,
            "subscribers": subscribers_seen,
            "load_before": load_before,
            "load_after": loadavg(),
        }
        if kind == "nats3":
            row["new_leader"] = cluster.stream_info().get("cluster", {}).get("leader")
        print(f"| {kind} | killed {killed_name} | publishes refused for "
              f"{row['unavailable_s_min']}–{row['unavailable_s_max']} s | answers after kill "
              f"{sorted({a for p in publishers for a in p['answers_after_kill']})} | subscribers: "
              f"missing {[s['acknowledged_missing'] for s in subscribers_seen]}, doubled "
              f"{[s['doubled'] for s in subscribers_seen]}, gaps {[s['gaps'] for s in subscribers_seen]}, "
              f"disconnects {[s['disconnects'] for s in subscribers_seen]} | load "
              f"{row['load_before'][0]}→{row['load_after'][0]} |", flush=True)
        return row
    finally:
        stop(procs)


def broadcast_run(kind, args, tmp):
    """Issue 5's run: COUNT messages to node 1, INTERVAL ms apart."""
    procs = []
    try:
        load_before = loadavg()
        cluster = Cluster(kind, args.nodes, tmp, procs, 19500)
        gens = start_generators(cluster, len(cluster.ports), args.per_node, args.count, tmp, 180)
        total = len(cluster.ports) * args.per_node
        seen = wait_seen(cluster.ports[0], total)
        print(f"subscribers seen by node 1: {seen} of {total}")
        cpu0 = cluster.cpu()
        t0 = time.time()
        subprocess.run(
            [GEN, "publish", str(cluster.ports[0]), str(args.count), str(args.interval)],
            check=True, timeout=args.count * args.interval / 1000 + 60)
        latencies = collect(gens, 240)
        wall = time.time() - t0
        cpu1 = cluster.cpu()
        return {
            "date": time.strftime("%Y-%m-%d"),
            "broker": kind,
            "nodes": len(cluster.ports),
            "subscribers": total,
            "seen_by_node_1": seen,
            "messages": args.count,
            "deliveries": len(latencies),
            "expected_deliveries": total * args.count,
            "p50_ms": round(pct(latencies, 0.50) / 1000, 1) if latencies else None,
            "p99_ms": round(pct(latencies, 0.99) / 1000, 1) if latencies else None,
            "max_ms": round(latencies[-1] / 1000, 1) if latencies else None,
            "wall_s": round(wall, 1),
            "broker_cpu_s": round(cpu1["broker"] - cpu0["broker"], 2) if cluster.broker_procs else None,
            "nodes_cpu_s": round(cpu1["nodes"] - cpu0["nodes"], 2),
            "load_before": load_before,
            "load_after": loadavg(),
        }
    finally:
        stop(procs)


def stop(procs):
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default="redis", help="comma-separated: " + ", ".join(BROKERS))
    ap.add_argument("--rounds", type=int, default=1, help="repeat the broker list, interleaved")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--per-node", type=int, default=17500, help="subscribers per generator")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--interval", type=int, default=1000, help="ms between messages")
    ap.add_argument("--memory", action="store_true", help="the same as --broker memory")
    ap.add_argument("--rate", help="publishes/s per publisher: the deliveries/s run (a comma-separated "
                    "list: each round runs every rate for every broker)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--slots", type=int, default=4,
                    help="generators and publishers (slot i on node i mod nodes)")
    ap.add_argument("--failover", action="store_true", help="kill the NATS leader / Redis master")
    ap.add_argument("--out", help="write the runs as JSON here")
    ap.add_argument("--history-size", type=int,
                    help="--failover: the nodes' --history-size (the stream's messages per channel)")
    ap.add_argument("--keep-logs", help="copy the nodes' logs of each run into this directory")
    args = ap.parse_args()
    for binary in (HALLEY, GEN):
        if not os.path.exists(binary):
            sys.exit("build first: cargo build --release -p halley && "
                     "cargo build --release -p halley-redis --example broadcast")
    kinds = ["memory"] if args.memory else args.broker.split(",")
    for kind in kinds:
        if kind not in BROKERS:
            sys.exit(f"--broker {kind}: one of {', '.join(BROKERS)}")
        if args.failover and kind not in ("nats3", "sentinel"):
            sys.exit("--failover: nats3 or sentinel")
    rates = [float(x) for x in args.rate.split(",")] if args.rate else [None]
    runs = []
    plan = [(r, rate, kind) for r in range(args.rounds) for rate in rates for kind in kinds]
    for r, rate, kind in plan:
        args.rate_now = rate
        tmp = tempfile.mkdtemp(prefix="halley-broadcast-")
        try:
            if args.failover:
                row = failover_run(kind, args, tmp)
            elif rate:
                row = load_run(kind, args, tmp)
            else:
                row = broadcast_run(kind, args, tmp)
                print(json.dumps(row))
        finally:
            if args.keep_logs:
                # The nodes' logs of this run, for a look at what they said.
                dest = os.path.join(args.keep_logs, f"{kind}-{r + 1}" + (f"-{rate:g}" if rate else ""))
                os.makedirs(dest, exist_ok=True)
                for name in os.listdir(tmp):
                    if name.endswith(".log"):
                        shutil.copy(os.path.join(tmp, name), dest)
            shutil.rmtree(tmp, ignore_errors=True)
        row["round"] = r + 1
        runs.append(row)
        if args.out:
            # One run of issue 5's broadcast is written as it always was; anything else as a
            # list of runs.
            single = len(plan) == 1 and not (rate or args.failover)
            with open(args.out, "w") as f:
                json.dump(runs[0] if single else
                          {"date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:], "runs": runs},
                          f, indent=1)

if __name__ == "__main__":
    main()
