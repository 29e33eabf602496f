// The seed's rupy demo (rupy-comet-stream.html) in headless Chromium against the real binary:
// one tab opens `/pull?name=one`, another opens `/push?name=two&message=hello%3Cbr%3E`, and the
// first shows "hello" and a line break, live. The pull page is sandboxed: pushed HTML formats,
// but a pushed script, event handler or meta refresh never runs, and nothing it names is
// fetched (a pushed `<img src=/push?…>` would otherwise make every viewer push).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startHalley, until, metric } from "./harness.js";
import { launch } from "./browser.js";

let halley, browser;
before(async () => {
  halley = await startHalley();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await halley?.stop();
});

const published = () => metric(halley.base, "halley_messages_published_total");

test("two tabs: a push shows in the pull page as HTML, and pushed script never runs", async () => {
  const context = await browser.newContext();
  const one = await context.newPage();
  const dialogs = [];
  one.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss();
  });
  // The page never finishes loading (it is a live stream): wait for its first bytes only.
  await one.goto(`${halley.base}/pull?name=one`, { waitUntil: "commit" });
  await until(async () => (await metric(halley.base, 'halley_subscribers{transport="pull"}')) === 1, "the pull tab");

  const two = await context.newPage();
  const reply = await two.goto(`${halley.base}/push?name=two&message=hello%3Cbr%3E`);
  assert.equal(reply.status(), 200);

  await until(async () => (await one.locator("body").innerText()).includes("hello"), '"hello" in the pull tab');
  assert.equal(await one.locator("br").count(), 1, "the pushed <br> is an element");
  assert.match(await one.locator("body").innerText(), /^hello\n/);

  // A push that tries to run script, navigate, or make every viewer push.
  const hostile = [
    "<script>document.title='ran';alert('script')</script>",
    `<img src=/push?name=img&message=fetched onerror="alert('onerror')">`,
    `<meta http-equiv="refresh" content="0;url=/push?name=meta&message=navigated">`,
    "<b>bold</b> after",
  ];
  const before = await published();
  for (const html of hostile) {
    const r = await two.goto(`${halley.base}/push?name=two&message=${encodeURIComponent(html)}`);
    assert.equal(r.status(), 200);
  }
  await until(async () => (await one.locator("body").innerText()).includes("bold after"), "the last push");
  assert.equal(await one.locator("b").innerText(), "bold", "formatting applies");
  // Nothing a push named was fetched or navigated to: only the four pushes were published.
  assert.equal(await published(), before + hostile.length);
  assert.ok(one.url().endsWith("/pull?name=one"), one.url());
  assert.notEqual(await one.title(), "ran");
  assert.deepEqual(dialogs, []);
  // The page runs sandboxed without scripts, so it has an opaque origin: nothing of Halley's
  // origin (cookies, storage) is in its reach.
  const head = await fetch(`${halley.base}/pull?name=one`, { method: "HEAD", headers: { accept: "text/html" } });
  assert.match(head.headers.get("content-security-policy"), /^sandbox;/);
  assert.doesNotMatch(head.headers.get("content-security-policy"), /allow-scripts/);
  await context.close();
});
