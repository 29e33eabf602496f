// The forever GIF (issue 13) in Chromium: an `<img src="/sub/…?transport=gif">` with no
// script of its own shows each message published as it arrives — the screenshot of the image
// changes after a publish, again after the next one, and holds still in between.
// `GIF_SCREENSHOT=docs/gif.png` saves the last screenshot (the README's picture).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
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
  const res = await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: text });
  assert.equal(res.status, 200);
}

test("an img of transport=gif shows each published line, live", async () => {
  const channel = "/chat/gif";
  const page = await browser.newPage();
  // A page of another origin with nothing but the image: no script runs for it.
  await page.setContent(
    `<body style="margin:0;background:#888">` +
      `<img id="chat" src="${halley.base}/sub${channel}?transport=gif&lines=4&width=480&fg=f0f0f0&bg=203040">` +
      `</body>`,
    // The page's `load` waits for its images, and this one never ends.
    { waitUntil: "domcontentloaded" },
  );
  const img = page.locator("#chat");
  // A streaming image never fires `load`; its size is known once the GIF's screen has arrived.
  const size = await until(
    () => page.evaluate(() => {
      const i = document.getElementById("chat");
      return i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight];
    }),
    "the GIF's logical screen",
  );
  // 4 lines: (2 + 4 × 9 + 2) × 2 = 80 pixels tall at the default scale.
  assert.deepEqual(size, [480, 80]);
  const blank = await img.screenshot();

  await publish(channel, "ann: hello from the forever GIF");
  const first = await until(async () => {
    const shot = await img.screenshot();
    return !shot.equals(blank) && shot;
  }, "the first message drawn");

  await publish(channel, "bob: live text in an <img>, no script, no plugin, cut at the width");
  const second = await until(async () => {
    const shot = await img.screenshot();
    return !shot.equals(first) && !shot.equals(blank) && shot;
  }, "the second message drawn");

  // Nothing new published: the picture stays as it is, shot after shot — no loop back to the
  // first frame while the GIF streams, though it has the loop extension.
  for (let i = 0; i < 5; i++) {
    const again = await img.screenshot();
    assert.ok(again.equals(second), "the image changed with nothing published");
  }

  if (process.env.GIF_SCREENSHOT) fs.writeFileSync(process.env.GIF_SCREENSHOT, second);
  await page.close();
});
