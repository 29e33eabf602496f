// Bayeux callback-polling for real: the CometD browser client in headless Chromium, on a page
// from another origin, talking to Halley through JSONP script tags (Node cannot do that).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startHalley, metric, until } from "./harness.js";
import { launch, staticServer, PAGES, COMETD_JS } from "./browser.js";

let halley, site, browser;
before(async () => {
  halley = await startHalley(["--hold-timeout", "5"]);
  site = await staticServer({ "/pages/": PAGES, "/cometd-js/": COMETD_JS });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await site?.close();
  await halley?.stop();
});

test("cometd callback-polling from a cross-origin page: subscribe, receive, publish", async () => {
  const page = await browser.newPage();
  await page.goto(`${site.base}/pages/callback-polling.html?halley=${encodeURIComponent(halley.base)}`);
  await page.waitForFunction(() => window.subscribed === true, null, { timeout: 15000 });
  assert.equal(await page.evaluate(() => window.cometd.getTransport().type), "callback-polling");

  const res = await fetch(`${halley.base}/pub/browser/room`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ text: "to the browser" }),
  });
  assert.equal(res.status, 200);
  await page.waitForFunction(() => window.received.length === 1, null, { timeout: 15000 });
  assert.deepEqual(await page.evaluate(() => window.received), [{ text: "to the browser" }]);

  // And back: the browser publishes over callback-polling; a native long-poll receives it.
  const poll = fetch(`${halley.base}/sub/browser/out`).then((r) => r.json());
  await page.waitForFunction(async () => {
    const rows = await fetch(window.cometd.getURL().replace("/cometd", "/api/channels?prefix=/browser/out"))
      .then((r) => r.json())
      .catch(() => []);
    return rows.some((r) => r.subscribers > 0);
  }, null, { timeout: 15000 });
  await page.evaluate(() => new Promise((resolve) => window.cometd.publish("/browser/out", { text: "from the browser" }, resolve)));
  const [message] = await poll;
  assert.deepEqual(message.data, { text: "from the browser" });

  // The held connects really were JSONP requests.
  await until(async () => (await metric(halley.base, 'halley_subscribers{transport="jsonp"}')) >= 1, "a held JSONP connect");
  await page.evaluate(() => new Promise((resolve) => window.cometd.disconnect(resolve)));
  await page.close();
});
