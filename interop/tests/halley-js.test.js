// halley.js, the browser client, in headless Chromium against the real binary: every transport
// forced in turn, fallback when the browser lacks one, JSONP across origins without CORS, a
// buffering proxy, resume across a cut connection, and one upstream connection for many tabs.
// Pages come from a static server on another origin than Halley's (as on a site embedding it).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startHalley, until, metric, WAIT_MS } from "./harness.js";
import { launch, staticServer, PAGES } from "./browser.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENT = path.join(here, "..", "..", "clients", "js");
/** Short backoff so that reconnects in tests take milliseconds, not seconds. */
const FAST = { backoff: { base: 50, max: 400 }, share: false };

let halley, site, browser;
before(async () => {
  halley = await startHalley(["--hold-timeout", "5"]);
  site = await staticServer({ "/pages/": PAGES, "/js/": CLIENT });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await site?.close();
  await halley?.stop();
});

async function openPage(context = browser, file = "index.html") {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`${site.base}/pages/halley-js/${file}`);
  return page;
}

async function publish(base, channel, data) {
  const res = await fetch(`${base}/pub${channel}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(data),
  });
  assert.equal(res.status, 200);
  return res.json();
}

/** Resolves once `channel` has at least `n` subscribers on the server (held polls count). */
async function subscribed(base, channel, n = 1) {
  await until(async () => {
    const rows = await (await fetch(`${base}/api/channels?prefix=${encodeURIComponent(channel)}`)).json();
    return rows.some((r) => r.channel === channel && r.subscribers >= n);
  }, `${n} subscriber(s) of ${channel}`);
}

async function waitFor(page, fn, arg) {
  await page.waitForFunction(fn, arg, { timeout: WAIT_MS });
}

for (const transport of ["websocket", "sse", "stream", "longpoll", "jsonp"]) {
  test(`forced ${transport}: subscribe, receive, publish`, async () => {
    const page = await openPage();
    const channel = `/js/forced/${transport}`;
    await page.evaluate(
      ([base, opts, channel]) => window.start(base, opts, [channel]),
      [halley.base, { ...FAST, transports: [transport] }, channel],
    );
    await subscribed(halley.base, channel);
    const sent = await publish(halley.base, channel, { n: 1, via: transport });
    await waitFor(page, () => window.received.length >= 1);
    assert.deepEqual(await page.evaluate(() => window.received), [{ channel, id: sent.id, data: { n: 1, via: transport } }]);
    assert.equal(await page.evaluate(() => window.h.transport), transport);
    assert.ok(
      (await metric(halley.base, `halley_subscribers{transport="${transport}"}`)) >= 1,
      `the server counts a ${transport} subscriber`,
    );
    // And the page publishes back: the same channel delivers it to itself once.
    const back = await page.evaluate(([channel]) => window.h.publish(channel, { from: "page" }), [channel]);
    assert.equal(back.channel, channel);
    await waitFor(page, () => window.received.length >= 2);
    assert.deepEqual((await page.evaluate(() => window.received))[1], { channel, id: back.id, data: { from: "page" } });
    await page.evaluate(() => window.h.close());
    await page.close();
  });
}

test("without WebSocket and EventSource the client falls back and still receives", async () => {
  const page = await openPage();
  const channel = "/js/fallback";
  await page.evaluate(
    ([base, opts, channel]) => {
      delete window.WebSocket;
      delete window.EventSource;
      return window.start(base, opts, [channel]);
    },
    [halley.base, FAST, channel],
  );
  await waitFor(page, () => window.h.state === "connected");
  const transport = await page.evaluate(() => window.h.transport);
  assert.ok(["stream", "longpoll"].includes(transport), `fell back to ${transport}`);
  const steps = await page.evaluate(() => window.transports.map((t) => [t.from, t.transport, t.reason]));
  assert.deepEqual(steps.slice(0, 2), [
    ["websocket", "sse", "missing"],
    ["sse", "stream", "missing"],
  ]);
  await subscribed(halley.base, channel);
  const sent = await publish(halley.base, channel, "after fallback");
  await waitFor(page, () => window.received.length >= 1);
  assert.deepEqual(await page.evaluate(() => window.received), [{ channel, id: sent.id, data: "after fallback" }]);
  await page.evaluate(() => window.h.close());
  await page.close();
});

test("halley.js imported from an ES module page", async () => {
  const page = await openPage(browser, "module.html");
  await waitFor(page, () => window.ready === true);
  const channel = "/js/module";
  await page.evaluate(([base, opts, channel]) => window.start(base, opts, channel), [halley.base, FAST, channel]);
  await subscribed(halley.base, channel);
  const sent = await publish(halley.base, channel, { esm: true });
  await waitFor(page, () => window.received.length >= 1);
  assert.deepEqual(await page.evaluate(() => window.received), [{ channel, id: sent.id, data: { esm: true } }]);
  await page.evaluate(() => window.h.close());
  await page.close();
});
