// halley.js's last resort, interval polling, in headless Chromium against the real binary:
// forced, and reached by itself behind a proxy that cuts every held request (a gateway whose
// timeout is shorter than the long-poll hold), stepping down from long-poll and JSONP.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startHalley, WAIT_MS } from "./harness.js";
import { launch, staticServer, PAGES } from "./browser.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENT = path.join(here, "..", "..", "clients", "js");
const FAST = { backoff: { base: 50, max: 400 }, share: false, pollInterval: 100, pollIntervalMax: 400 };

let halley, site, browser, gateway;
before(async () => {
  halley = await startHalley(["--hold-timeout", "5"]);
  site = await staticServer({ "/pages/": PAGES, "/js/": CLIENT });
  browser = await launch();
  gateway = await impatientGateway(halley.port, 300);
});
after(async () => {
  await browser?.close();
  await gateway?.close();
  await site?.close();
  await halley?.stop();
});

/**
 * An HTTP gateway in front of Halley that answers 504 to any request the server has not
 * answered within `ms`, as a proxy with a short read timeout does to every long-poll.
 */
function impatientGateway(port, ms) {
  const server = http.createServer((req, res) => {
    const upstream = http.request(
      { host: "127.0.0.1", port, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        clearTimeout(timer);
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    const timer = setTimeout(() => {
      upstream.destroy();
      res.writeHead(504, { "content-type": "text/plain", "access-control-allow-origin": req.headers.origin ?? "*" });
      res.end("gateway timeout");
    }, ms);
    upstream.on("error", () => {});
    req.pipe(upstream);
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        base: `http://127.0.0.1:${server.address().port}`,
        close: () => {
          server.closeAllConnections();
          return new Promise((r) => server.close(r));
        },
      }),
    ),
  );
}

async function openPage() {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`${site.base}/pages/halley-js/index.html`);
  return page;
}

async function publish(channel, data) {
  const res = await fetch(`${halley.base}/pub${channel}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(data),
  });
  assert.equal(res.status, 200);
  return res.json();
}

test("forced poll: messages published between polls arrive, in order, once", async () => {
  const page = await openPage();
  const channel = "/js/poll/forced";
  await page.evaluate(([base, opts, channel]) => window.start(base, opts, [channel]), [
    halley.base,
    { ...FAST, transports: ["poll"] },
    channel,
  ]);
  await page.waitForFunction(() => window.h.state === "connected", null, { timeout: WAIT_MS });
  const one = await publish(channel, 1);
  const two = await publish(channel, 2);
  await page.waitForFunction(() => window.received.length >= 2, null, { timeout: WAIT_MS });
  const back = await page.evaluate(([channel]) => window.h.publish(channel, 3), [channel]);
  await page.waitForFunction(() => window.received.length >= 3, null, { timeout: WAIT_MS });
  assert.deepEqual(await page.evaluate(() => window.received.map((m) => m.id)), [one.id, two.id, back.id]);
  assert.equal(await page.evaluate(() => window.h.transport), "poll");
  await page.evaluate(() => window.h.close());
  await page.close();
});

test("behind a gateway that cuts every held request, the ladder ends in interval polling", async () => {
  const page = await openPage();
  const channel = "/js/poll/cut";
  await page.evaluate(([base, opts, channel]) => window.start(base, opts, [channel]), [
    gateway.base,
    { ...FAST, pollSettle: 100, transports: ["longpoll", "jsonp", "poll"] },
    channel,
  ]);
  await page.waitForFunction(() => window.h.transport === "poll", null, { timeout: WAIT_MS });
  const steps = await page.evaluate(() => window.transports.map((t) => [t.from, t.transport, t.reason]));
  assert.deepEqual(steps, [
    ["longpoll", "jsonp", "cut"],
    ["jsonp", "poll", "cut"],
  ]);
  const sent = await publish(channel, "through the gateway");
  await page.waitForFunction(() => window.received.length >= 1, null, { timeout: WAIT_MS });
  assert.deepEqual(await page.evaluate(() => window.received), [{ channel, id: sent.id, data: "through the gateway" }]);
  await page.evaluate(() => window.h.close());
  await page.close();
});
