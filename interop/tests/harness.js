// Starts a real Halley binary for a test, plus the small tools the tests share.
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.HALLEY_BIN ?? path.join(here, "..", "..", "target", "debug", "halley");

/** Upper bound on anything a test waits for: a hang fails instead of blocking CI. */
export const WAIT_MS = 15000;

/**
 * Starts `halley serve` on a free port (or on `listen`, e.g. to restart on the same port);
 * resolves once it logs the address it listens on.
 */
export function startHalley(args = [], { listen = "127.0.0.1:0" } = {}) {
  const child = spawn(BIN, ["serve", "--listen", listen, ...args], {
    env: { ...process.env, NO_COLOR: "1", HALLEY_LOG: "info" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("halley did not start")), WAIT_MS);
    let buffered = "";
    child.stdout.on("data", (chunk) => {
      buffered += chunk;
      const match = buffered.match(/listen=(127\.0\.0\.1:\d+)/);
      if (match) {
        clearTimeout(timer);
        const base = `http://${match[1]}`;
        // The TLS listener, when started with one, is named on the same line.
        const tls = buffered.match(/ tls=(127\.0\.0\.1:\d+)/);
        resolve({
          base,
          tlsBase: tls ? `https://${tls[1]}` : undefined,
          port: Number(match[1].split(":")[1]),
          cometd: `${base}/cometd`,
          stop: () =>
            new Promise((done) => {
              if (child.exitCode !== null || child.signalCode !== null) return done();
              child.once("exit", done);
              child.kill("SIGTERM");
            }),
        });
      }
    });
    child.once("exit", (code) => reject(new Error(`halley exited early (${code})`)));
  });
}

/** Resolves with the value `fn` returns once it is truthy, polling an observable condition. */
export async function until(fn, what) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A queue of received messages that tests can await one at a time. */
export function inbox() {
  const items = [];
  const waiters = [];
  return {
    items,
    push(item) {
      items.push(item);
      const w = waiters.shift();
      if (w) w();
    },
    async next(what = "a message") {
      await until(() => items.length > 0 || null, what);
      return items.shift();
    },
  };
}

/** Value of a Prometheus metric line (exact name with labels) from /metrics. */
export async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.split(" ")[1]) : undefined;
}

/**
 * A TCP proxy in front of Halley that can lose a response on purpose: the first response that
 * contains a given marker is dropped and the client's connection cut, as a flaky network
 * would. The promise from `swallowResponseContaining` resolves when that happened.
 */
export function lossyProxy(targetPort) {
  const sockets = new Set();
  let swallow = null;
  let onSwallowed = () => {};
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    sockets.add(client);
    sockets.add(upstream);
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (swallow && d.toString().includes(swallow)) {
        swallow = null;
        client.destroy();
        upstream.destroy();
        onSwallowed();
        return;
      }
      client.write(d);
    });
    for (const s of [client, upstream]) {
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}/cometd`,
        swallowResponseContaining(marker) {
          swallow = marker;
          return new Promise((r) => (onSwallowed = r));
        },
        close() {
          for (const s of sockets) s.destroy();
          return new Promise((r) => server.close(r));
        },
      });
    });
  });
}
