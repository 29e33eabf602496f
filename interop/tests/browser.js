// Headless Chromium (Debian's) driven by playwright-core, a static server for test pages, and a
// reverse proxy that puts several servers on one origin.
import http from "node:http";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
  });
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
};

/**
 * Serves `routes` (URL prefix → directory) on its own port, so that pages come from another
 * origin than Halley's: what a site embedding Halley looks like. `host` puts it on another
 * address too (127.0.0.2: another site, not only another origin).
 */
export function staticServer(routes, { host = "127.0.0.1" } = {}) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    for (const [prefix, dir] of Object.entries(routes)) {
      if (!url.pathname.startsWith(prefix)) continue;
      const file = path.join(dir, url.pathname.slice(prefix.length));
      if (!file.startsWith(dir) || !fs.existsSync(file)) break;
      res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
      fs.createReadStream(file).pipe(res);
      return;
    }
    res.writeHead(404).end();
  });
  return new Promise((resolve) =>
    server.listen(0, host, () =>
      resolve({
        base: `http://${host}:${server.address().port}`,
        close: () => new Promise((r) => server.close(r)),
      }),
    ),
  );
}

export const PAGES = path.join(here, "pages");
export const COMETD_JS = path.join(here, "..", "node_modules", "cometd");

/**
 * A reverse proxy on one origin in front of several servers, as a site that mounts Halley
 * under a path would run: `routes` maps a path prefix (`/halley/`, or `/` for the rest) to a
 * local port; the longest matching prefix wins and is replaced by `/`. HTTP and WebSocket
 * upgrades both pass. `port` picks the proxy's own port (0: any free one). `refuseWebSocket`
 * makes it a proxy that refuses WebSocket upgrades (403), as some corporate proxies do.
 */
export function routingProxy(routes, { port = 0, refuseWebSocket = false } = {}) {
  const prefixes = Object.keys(routes).sort((a, b) => b.length - a.length);
  const target = (url) => {
    const prefix = prefixes.find((p) => url.startsWith(p));
    return prefix && { port: routes[prefix], path: url.slice(prefix.length - 1) };
  };
  const server = http.createServer((req, res) => {
    const to = target(req.url);
    if (!to) return res.writeHead(404).end();
    const upstream = http.request(
      { host: "127.0.0.1", port: to.port, path: to.path, method: req.method, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on("upgrade", (req, socket, head) => {
    const to = target(req.url);
    if (!to) return socket.destroy();
    if (refuseWebSocket) {
      socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      return;
    }
    const upstream = net.connect(to.port, "127.0.0.1", () => {
      const lines = [`${req.method} ${to.path} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      upstream.write(lines.join("\r\n") + "\r\n\r\n");
      upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    for (const s of [socket, upstream]) {
      s.on("error", () => {});
      s.on("close", () => {
        socket.destroy();
        upstream.destroy();
      });
    }
  });
  const sockets = new Set();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  return new Promise((resolve) =>
    server.listen(port, "127.0.0.1", () =>
      resolve({
        base: `http://127.0.0.1:${server.address().port}`,
        close: () => {
          for (const s of sockets) s.destroy();
          return new Promise((r) => server.close(r));
        },
      }),
    ),
  );
}
