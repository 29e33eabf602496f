// CORS with credentials for real (issue 12): a page on another site (127.0.0.2) uses the
// official CometD client's long-polling — whose XHRs carry credentials — and an EventSource
// with {withCredentials: true} against Halley on 127.0.0.1, once with the default "any origin"
// and once with the page's origin on the allowlist. Chromium refuses a credentialed answer
// without an echoed origin and Allow-Credentials; the CometD client would then fall back to
// callback-polling without a word, so the transport it ended on is asserted.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startHalley, metric, until } from "./harness.js";
import { launch, staticServer, PAGES, COMETD_JS } from "./browser.js";

let site, browser;
const halleys = [];
before(async () => {
  site = await staticServer({ "/pages/": PAGES, "/cometd-js/": COMETD_JS }, { host: "127.0.0.2" });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await site?.close();
  for (const halley of halleys) await halley.stop();
});

async function crossSite(args) {
  const halley = await startHalley(["--hold-timeout", "5", ...args]);
  halleys.push(halley);
  const page = await browser.newPage();
  const refused = [];
  page.on("console", (m) => m.type() === "error" && refused.push(m.text()));
  await page.goto(`${site.base}/pages/cors-credentials.html?halley=${encodeURIComponent(halley.base)}`);
  await page.waitForFunction(() => window.subscribed === true && window.sseOpen === true, null, {
    timeout: 15000,
  });
  assert.equal(await page.evaluate(() => window.cometd.getTransport().type), "long-polling");

  const publish = (channel, data) =>
    fetch(`${halley.base}/pub${channel}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(data),
    });
  assert.equal((await publish("/cors/room", { text: "long-polled" })).status, 200);
  assert.equal((await publish("/cors/sse", { text: "streamed" })).status, 200);
  await page.waitForFunction(() => window.received.length === 1 && window.sse.length === 1, null, {
    timeout: 15000,
  });
  assert.deepEqual(await page.evaluate(() => window.received), [{ text: "long-polled" }]);
  assert.deepEqual(await page.evaluate(() => window.sse), [{ text: "streamed" }]);
  assert.equal(await page.evaluate(() => window.sseErrors ?? 0), 0);

  // The held connects really were XHRs (no JSONP subscriber ever), and nothing was refused.
  await until(
    async () => (await metric(halley.base, 'halley_subscribers{transport="longpoll"}')) >= 1,
    "a held long-polling connect",
  );
  assert.equal(await metric(halley.base, 'halley_subscribers{transport="jsonp"}'), 0);
  assert.deepEqual(refused.filter((t) => /CORS|Access-Control/i.test(t)), []);
  await page.evaluate(() => new Promise((resolve) => window.cometd.disconnect(resolve)));
  await page.close();
}

test("any origin: CometD long-polling and EventSource withCredentials work cross-site", async () => {
  await crossSite([]);
});

test("an allowlist with the page's origin: the same, echoed with credentials", async () => {
  await crossSite(["--allowed-origins", `${site.base},http://other.example`]);
});
