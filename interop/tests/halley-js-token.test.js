// halley.js with access tokens, in headless Chromium against the real binary: a namespace that
// wants a token to subscribe, short-lived HS256 tokens minted here, getToken() served to the
// page, and the server ending the connection when the token lapses (streams: an `expired`
// notice; polls: the next poll refused with 401). Over each transport in turn (forced), the page
// must get every message published before, during and after the expiry exactly once and in
// order, must have asked getToken() for a fresh token, and must not step down. Then the
// refusals: a lapsed static token (401) and a token for other channels (403) stop the client.
//   cargo build -p halley && cd interop && npm ci && node --test tests/halley-js-token.test.js
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startHalley, until, WAIT_MS } from "./harness.js";
import { launch, staticServer, PAGES } from "./browser.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENT = path.join(here, "..", "..", "clients", "js");
const SECRET = "halley-js-token-test-secret-0123456789";
const KEY = "backend-key-for-the-test";
/** How long a minted token is valid. The server allows a few seconds of clock leeway on top. */
const TOKEN_SECS = 2;
const FAST = { backoff: { base: 50, max: 400 }, share: false };

const CONFIG = `
publish-key = "${KEY}"

[tokens]
hs256-secret = "${SECRET}"

[[namespace]]
channels = "/chat/**"
subscribe = "token"
publish = "backend"
`;

/** An HS256 JWT: base64url(header).base64url(claims).base64url(HMAC-SHA256). */
function mint(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = crypto.createHmac("sha256", SECRET).update(body).digest("base64url");
  return `${body}.${sig}`;
}
const now = () => Math.floor(Date.now() / 1000);

let halley, site, browser, dir;
/** Why the server could not be started with access control (the test is skipped then). */
let unsupported = null;
before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "halley-js-token-"));
  const file = path.join(dir, "halley.toml");
  fs.writeFileSync(file, CONFIG);
  try {
    halley = await startHalley(["--config", file, "--heartbeat", "1", "--hold-timeout", "5"]);
  } catch (e) {
    unsupported = `halley serve refused --config with [tokens]/[[namespace]]: ${e.message}`;
    return;
  }
  site = await staticServer({ "/pages/": PAGES, "/js/": CLIENT });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await site?.close();
  await halley?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function publish(channel, data) {
  const res = await fetch(`${halley.base}/pub${channel}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-halley-key": KEY },
    body: JSON.stringify(data),
  });
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

async function subscribers(channel) {
  const res = await fetch(`${halley.base}/api/channels?prefix=${encodeURIComponent(channel)}`, {
    headers: { "x-halley-key": KEY },
  });
  if (res.status !== 200) return 0;
  const rows = await res.json();
  return rows.find((r) => r.channel === channel)?.subscribers ?? 0;
}

/**
 * A page whose client gets its tokens from `getToken()` → window.mintToken() → node, which
 * mints a token for `claims()` valid TOKEN_SECS and counts the calls.
 */
async function tokenPage(claims) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  const minted = { calls: 0 };
  await page.exposeFunction("mintToken", () => {
    minted.calls += 1;
    return mint({ sub: "alice", exp: now() + TOKEN_SECS, ...claims() });
  });
  await page.goto(`${site.base}/pages/halley-js/index.html`);
  return { page, minted };
}

/** Starts the page's client; records token events and errors next to what index.html records. */
function start(page, options, channel, { getToken = false } = {}) {
  return page.evaluate(
    ([base, options, channel, getToken]) => {
      window.tokens = [];
      window.errors = [];
      if (getToken) options.getToken = () => window.mintToken();
      window.start(base, options, [channel]);
      window.h.on("token", (t) => window.tokens.push(t.reason));
      window.h.on("error", (e) => window.errors.push(e));
      return true;
    },
    [halley.base, options, channel, getToken],
  );
}

for (const transport of ["websocket", "sse", "stream", "longpoll", "jsonp"]) {
  test(`forced ${transport}: the token expires; getToken, resume, every message once`, async (t) => {
    if (unsupported) return t.skip(unsupported);
    const { page, minted } = await tokenPage(() => ({ channels: ["/chat/**"] }));
    const channel = `/chat/token/${transport}`;
    await start(page, { ...FAST, transports: [transport] }, channel, { getToken: true });
    await until(async () => (await subscribers(channel)) >= 1, `a ${transport} subscriber of ${channel}`);
    // Publish all along: before the token lapses, while the client is away fetching a fresh
    // one and reconnecting, and after.
    let n = 0;
    const sent = [];
    const send = async () => sent.push((await publish(channel, { n: ++n })).id);
    for (let i = 0; i < 3; i++) await send();
    const deadline = Date.now() + WAIT_MS;
    while (minted.calls < 2) {
      if (Date.now() > deadline) assert.fail(`getToken was not asked again (${minted.calls} calls)`);
      await send();
      await new Promise((r) => setTimeout(r, 150));
    }
    // The fresh connection is up: a few more after it.
    await page.waitForFunction(() => window.h.state === "connected", null, { timeout: WAIT_MS });
    for (let i = 0; i < 3; i++) await send();
    await page.waitForFunction((count) => window.received.length >= count, sent.length, { timeout: WAIT_MS });
    // A moment for a duplicate to show up, were one coming.
    await new Promise((r) => setTimeout(r, 300));
    const got = await page.evaluate(() => window.received);
    assert.deepEqual(
      got.map((m) => m.data.n),
      sent.map((_, i) => i + 1),
      "every message once, in order",
    );
    assert.deepEqual(
      got.map((m) => m.id),
      sent,
    );
    const seen = await page.evaluate(() => ({
      tokens: window.tokens,
      errors: window.errors,
      transports: window.transports,
      transport: window.h.transport,
      gaps: window.gaps,
    }));
    assert.ok(minted.calls >= 2, "getToken was called again");
    assert.deepEqual(seen.tokens.slice(0, 2), ["initial", "expired"]);
    assert.deepEqual(seen.errors, []);
    assert.deepEqual(seen.transports, [], "no step-down");
    assert.deepEqual(seen.gaps, []);
    assert.equal(seen.transport, transport);
    await page.evaluate(() => window.h.close());
    await page.close();
  });
}

test("a lapsed static token: the WebSocket upgrade is refused (401), the client stops, no step-down", async (t) => {
  if (unsupported) return t.skip(unsupported);
  const page = await browser.newPage();
  await page.goto(`${site.base}/pages/halley-js/index.html`);
  // Past the server's leeway too.
  const token = mint({ sub: "alice", exp: now() - 60, channels: ["/chat/**"] });
  await start(page, { ...FAST, transports: ["websocket", "sse"], token }, "/chat/token/static");
  await page.waitForFunction(() => window.h.state === "unauthorized", null, { timeout: WAIT_MS });
  await new Promise((r) => setTimeout(r, 500));
  const seen = await page.evaluate(() => ({
    errors: window.errors,
    transports: window.transports,
    state: window.h.state,
  }));
  assert.equal(seen.state, "unauthorized", "and it stays so");
  assert.deepEqual(seen.transports, []);
  assert.equal(seen.errors.length, 1);
  assert.equal(seen.errors[0].status, 401);
  await page.evaluate(() => window.h.close());
  await page.close();
});

test("a token that does not cover the channel: 403, an error, not retried", async (t) => {
  if (unsupported) return t.skip(unsupported);
  const { page, minted } = await tokenPage(() => ({ channels: ["/chat/elsewhere/**"] }));
  await start(page, { ...FAST, transports: ["stream"] }, "/chat/token/forbidden", { getToken: true });
  await page.waitForFunction(() => window.h.state === "unauthorized", null, { timeout: WAIT_MS });
  await new Promise((r) => setTimeout(r, 500));
  const seen = await page.evaluate(() => ({ errors: window.errors, tokens: window.tokens }));
  assert.equal(seen.errors.length, 1);
  assert.equal(seen.errors[0].status, 403);
  assert.equal(minted.calls, 1, "no fresh token asked for a 403");
  assert.deepEqual(seen.tokens, ["initial"]);
  await page.evaluate(() => window.h.close());
  await page.close();
});
