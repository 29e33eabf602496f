// rupy's event-stream demo (the seed's second pair of links) in headless Chromium: `/event.html`
// pulls as "one" with an EventSource, another tab pushes `hello%3Cbr%3E` as "two", and the page
// shows "hello" and a line break. The page runs on Halley's origin, so a pushed <script> or
// event handler is shown as text, never parsed.
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

test("event.html shows pushes live, <br> as a line break, HTML as text", async () => {
  const context = await browser.newContext();
  const one = await context.newPage();
  const dialogs = [];
  one.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss();
  });
  await one.goto(`${halley.base}/event.html?name=one`);
  await until(async () => (await one.locator("#state").innerText()) === "pulling as one", "the EventSource open");
  const two = await context.newPage();
  for (const message of ["hello<br>", "mine", "<img src=x onerror=alert(1)>"]) {
    const name = message === "mine" ? "one" : "two";
    const r = await two.goto(`${halley.base}/push?name=${name}&message=${encodeURIComponent(message)}`);
    assert.equal(r.status(), 200);
  }
  await until(async () => (await one.locator("#out").innerText()).includes("onerror"), "the last push");
  const lines = await one.locator("#out > div").allInnerTexts();
  assert.deepEqual(lines.map((l) => l.replace(/\n$/, "")), ["hello", "<img src=x onerror=alert(1)>"]);
  assert.equal(await one.locator("#out br").count(), 1);
  assert.equal(await one.locator("#out img").count(), 0);
  assert.deepEqual(dialogs, []);
  await context.close();
});
