// Faye's browser client, unmodified, in headless Chromium, on the connection types it has and
// CometD's client has not: `eventsource` (behind a proxy that refuses WebSocket: an
// EventSource on /cometd/{clientId}, everything else as long-polling requests) and
// `cross-origin-long-polling` (a page of another site; form bodies `message=<batch>`).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startHalley, until, metric } from "./harness.js";
import { launch, routingProxy, staticServer, PAGES } from "./browser.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const FAYE_CLIENT = path.join(here, "..", "node_modules", "faye", "client");

let halley, browser, site, proxy, elsewhere;
before(async () => {
  halley = await startHalley(["--hold-timeout", "5"]);
  browser = await launch();
  site = await staticServer({ "/pages/": PAGES, "/faye-client/": FAYE_CLIENT });
  elsewhere = await staticServer({ "/pages/": PAGES, "/faye-client/": FAYE_CLIENT }, { host: "127.0.0.2" });
  proxy = await routingProxy(
    { "/halley/": halley.port, "/": Number(new URL(site.base).port) },
    { refuseWebSocket: true },
  );
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await site?.close();
  await elsewhere?.close();
  await halley?.stop();
});

test("faye in chromium behind a proxy that refuses websocket: eventsource delivers", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${proxy.base}/pages/faye/client.html`);
  await until(() => page.evaluate(() => window.subscribed || window.failed), "faye to subscribe");
  assert.equal(await page.evaluate(() => window.failed), undefined);
  await until(
    () => page.evaluate(() => window.client._dispatcher.connectionType === "eventsource"),
    "faye to select eventsource",
  );
  // The EventSource is Halley's only open stream; no WebSocket got through.
  await until(
    async () => (await metric(halley.base, 'halley_subscribers{transport="sse"}')) === 1,
    "the event stream to be open",
  );
  assert.equal(await metric(halley.base, 'halley_subscribers{transport="websocket"}'), 0);

  // Published elsewhere: arrives on the stream.
  const published = await fetch(`${halley.base}/pub/faye/room`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ text: "from the server side" }),
  });
  assert.equal(published.status, 200);
  await until(() => page.evaluate(() => window.received.length >= 1), "the message on the stream");
  // Published by the page (a long-polling request): comes back to it over the stream.
  await page.evaluate(() => window.publish({ text: "from faye" }));
  await until(() => page.evaluate(() => window.received.length >= 2), "its own message back");
  assert.deepEqual(await page.evaluate(() => window.received), [
    { text: "from the server side" },
    { text: "from faye" },
  ]);
  // Still on eventsource after a connect round (connects are answered at once, the stream stays).
  assert.equal(await page.evaluate(() => window.client._dispatcher.connectionType), "eventsource");
  assert.deepEqual(errors, []);
  await page.evaluate(() => window.client.disconnect());
  await until(
    async () => (await metric(halley.base, 'halley_subscribers{transport="sse"}')) === 0,
    "the stream to end with the session",
  );
  await page.close();
});

// Faye handshakes cross-origin by callback-polling (its handshake takes long-polling or
// callback-polling only), then moves to the best type both sides offer: with WebSocket off,
// cross-origin-long-polling (CORS with credentials, `Pragma` preflighted, form bodies).
test("faye in chromium on another site: cross-origin-long-polling with form bodies", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const endpoint = encodeURIComponent(halley.cometd);
  await page.goto(`${elsewhere.base}/pages/faye/client.html?endpoint=${endpoint}&disable=websocket`);
  await until(() => page.evaluate(() => window.subscribed || window.failed), "faye to subscribe");
  assert.equal(await page.evaluate(() => window.failed), undefined);
  await until(
    () => page.evaluate(() => window.client._dispatcher.connectionType === "cross-origin-long-polling"),
    "faye to move to cross-origin-long-polling",
  );
  const published = await fetch(`${halley.base}/pub/faye/room`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ text: "to another site" }),
  });
  assert.equal(published.status, 200);
  await until(() => page.evaluate(() => window.received.length >= 1), "the message by long-polling");
  await page.evaluate(() => window.publish({ text: "from another site" }));
  await until(() => page.evaluate(() => window.received.length >= 2), "its own message back");
  assert.deepEqual(await page.evaluate(() => window.received), [
    { text: "to another site" },
    { text: "from another site" },
  ]);
  assert.deepEqual(errors, []);
  await page.evaluate(() => window.client.disconnect());
  await page.close();
});
