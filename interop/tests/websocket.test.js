// Chromium's own WebSocket against Halley: a requested subprotocol is selected (the browser
// fails the connection otherwise), and closing is clean both ways (wasClean true, the code
// intact) on native /sub and on Bayeux's /cometd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startHalley, WAIT_MS } from "./harness.js";
import { launch } from "./browser.js";

let halley, browser, page;
before(async () => {
  halley = await startHalley();
  browser = await launch();
  page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  // Any page of Halley's origin will do: the test drives the browser's WebSocket directly.
  await page.goto(`${halley.base}/healthz`);
});
after(async () => {
  await browser?.close();
  await halley?.stop();
});

const wsBase = () => halley.base.replace(/^http/, "ws");

/**
 * Opens `url` offering `protocols` in the page, runs `then` (a function's source, given the
 * socket) once it is open, and resolves with what the browser saw: the selected protocol, the
 * text frames received, and the close event's wasClean and code.
 */
function session(url, protocols, then) {
  return page.evaluate(
    ([url, protocols, then, timeout]) =>
      new Promise((resolve, reject) => {
        const seen = { protocol: null, frames: [], opened: false };
        const ws = new WebSocket(url, protocols);
        const timer = setTimeout(() => reject(new Error(`no close within ${timeout} ms`)), timeout);
        ws.onopen = () => {
          seen.opened = true;
          seen.protocol = ws.protocol;
          new Function("ws", then)(ws);
        };
        ws.onmessage = (e) => seen.frames.push(e.data);
        ws.onclose = (e) => {
          clearTimeout(timer);
          resolve({ ...seen, wasClean: e.wasClean, code: e.code });
        };
      }),
    [url, protocols, then, WAIT_MS],
  );
}

test("new WebSocket(url, 'halley.v1') on /sub: selected, messages flow, close is clean (1000)", async () => {
  const seen = await session(
    `${wsBase()}/sub/browser/ws?position=1`,
    "halley.v1",
    // The first frame is the position; then the client closes normally.
    `ws.onmessage = (e) => { if (JSON.parse(e.data).event === "position") ws.close(1000, "bye"); };`,
  );
  assert.equal(seen.opened, true);
  assert.equal(seen.protocol, "halley.v1");
  assert.equal(seen.wasClean, true);
  assert.equal(seen.code, 1000);
});

test("new WebSocket(url, ['chat', 'bayeux']) on /cometd: bayeux selected, close is clean", async () => {
  const seen = await session(`${wsBase()}/cometd`, ["chat", "bayeux"], `ws.close(1000);`);
  assert.equal(seen.protocol, "bayeux");
  assert.equal(seen.wasClean, true);
  assert.equal(seen.code, 1000);
});

test("a close from the server is clean too: a binary frame on /sub gets 1003", async () => {
  const seen = await session(`${wsBase()}/sub/browser/bin`, [], `ws.send(new Uint8Array([1, 2, 3]));`);
  assert.equal(seen.opened, true);
  assert.equal(seen.wasClean, true);
  assert.equal(seen.code, 1003);
});

test("a subprotocol Halley does not speak fails the connection (the server answered 400)", async () => {
  const seen = await session(`${wsBase()}/sub/browser/chat`, "chat", ``);
  assert.equal(seen.opened, false);
  assert.equal(seen.wasClean, false);
  assert.equal(seen.code, 1006);
  // The 400 itself (JSON naming what is spoken) is checked in crates/halley-http/tests/websocket.rs;
  // a browser shows a refused handshake only as 1006.
});
