// Client pull (transport=refresh) in headless Chromium with JavaScript disabled: the page
// reloads itself by its Refresh header and shows what was published meanwhile, marked new.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startHalley, until } from "./harness.js";
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

async function publish(channel, text) {
  const answer = await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: text });
  assert.equal(answer.status, 200);
}

test("a refresh page updates itself with scripting off", async () => {
  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await publish("/pull/room", "before the page");
  await page.goto(`${halley.base}/sub/pull/room?transport=refresh&every=1`);
  assert.deepEqual(await page.locator("li").allTextContents(), ["before the page"]);
  await publish("/pull/room", "while it is open <i>escaped</i>");
  const lines = await until(async () => {
    const items = await page.locator("li").allTextContents().catch(() => []);
    return items.length === 2 && items;
  }, "the page to reload with the new message");
  assert.deepEqual(lines, ["before the page", "while it is open <i>escaped</i>"]);
  assert.deepEqual(await page.locator("li.new").allTextContents(), ["while it is open <i>escaped</i>"]);
  assert.match(page.url(), /last_id=/);
  await context.close();
});
