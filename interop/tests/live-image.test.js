// Live images (the webcam of the founding documents): images published to a channel play in a
// plain <img> through multipart/x-mixed-replace, each new one replacing the last as soon as it
// is published — in headless Chromium, with no script on the page doing anything.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startHalley, until } from "./harness.js";
import { launch, routingProxy, staticServer, PAGES } from "./browser.js";

// Two PNGs made for this test: 3×2 red and 7×5 blue.
const RED_3X2 = "iVBORw0KGgoAAAANSUhEUgAAAAMAAAACCAIAAAASFvFNAAAAEElEQVR4nGP4z8AAQQxwFgBB0gX7h/C5SAAAAABJRU5ErkJggg==";
const BLUE_7X5 = "iVBORw0KGgoAAAANSUhEUgAAAAcAAAAFCAIAAAAG+GGPAAAAEElEQVR4nGNgYPiPDdFGFABbdSLeF8wC1QAAAABJRU5ErkJggg==";

let halley, browser, site, proxy;
before(async () => {
  halley = await startHalley();
  browser = await launch();
  site = await staticServer({ "/pages/": PAGES });
  // One origin, as a site that mounts Halley under a path: Chromium refuses a multipart image
  // from another origin (its opaque-response blocking), whatever the server says.
  proxy = await routingProxy({ "/halley/": halley.port, "/": Number(new URL(site.base).port) });
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await site?.close();
  await halley?.stop();
});

async function publishImage(channel, base64) {
  const answer = await fetch(`${halley.base}/pub${channel}`, {
    method: "POST",
    headers: { "content-type": "image/png" },
    body: Buffer.from(base64, "base64"),
  });
  assert.equal(answer.status, 200);
}

async function subscribers(channel) {
  const rows = await (await fetch(`${halley.base}/api/channels?prefix=${encodeURIComponent(channel)}`)).json();
  return rows.find((r) => r.channel === channel)?.subscribers ?? 0;
}

test("an <img> on a multipart subscription shows each published image in turn", async () => {
  const page = await browser.newPage();
  const channel = "/cam/live";
  // "load" never comes: the image is a stream that does not end.
  await page.goto(`${proxy.base}/pages/images/cam.html`, { waitUntil: "domcontentloaded" });
  await until(async () => (await subscribers(channel)) === 1, "the img to subscribe");
  const size = () => page.evaluate(() => [document.getElementById("cam").naturalWidth, document.getElementById("cam").naturalHeight]);
  await publishImage(channel, RED_3X2);
  await until(async () => (await size())[0] === 3, "the first image");
  assert.deepEqual(await size(), [3, 2]);
  await publishImage(channel, BLUE_7X5);
  await until(async () => (await size())[0] === 7, "the second image to replace it");
  assert.deepEqual(await size(), [7, 5]);
  await page.close();
});
