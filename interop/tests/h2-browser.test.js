// Chromium over TLS and HTTP/2 (issue 15): more than six EventSources to one origin at once,
// all live. Over HTTP/1.1 a browser opens at most six connections per origin, so a seventh
// EventSource would wait for one of them to close; over HTTP/2 they are streams of one
// connection. A WebSocket (wss://, HTTP/1.1 by ALPN) works beside them.
//
// The certificate is made here with the openssl CLI for 127.0.0.1; Chromium is told to trust
// exactly that key (--ignore-certificate-errors-spki-list), nothing else.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { startHalley, until, metric } from "./harness.js";
import { CHROMIUM_ARGS } from "./browser.js";

/** EventSources opened at once: more than HTTP/1.1's six per origin. */
const STREAMS = 10;

let halley, browser, dir;
before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "halley-h2-"));
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
  ], { stdio: "ignore" });
  // The base64 SHA-256 of the certificate's public key: what Chromium is told to accept.
  const spki = execFileSync("sh", ["-c",
    `openssl x509 -in '${cert}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`,
  ]).toString().trim();
  halley = await startHalley(["--tls-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key]);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${spki}`],
  });
});
after(async () => {
  await browser?.close();
  await halley?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function subscribers(channel) {
  const list = await (await fetch(`${halley.base}/api/channels?prefix=/h2`)).json();
  return list.find((c) => c.channel === channel)?.subscribers ?? 0;
}

test(`${STREAMS} EventSources to one origin over HTTP/2 all receive`, async () => {
  assert.ok(halley.tlsBase, "halley logged its TLS address");
  const page = await browser.newPage();
  await page.goto(`${halley.tlsBase}/healthz`);
  const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  assert.equal(protocol, "h2");
  await page.evaluate((n) => {
    window.received = [];
    window.opened = 0;
    for (let i = 0; i < n; i++) {
      const source = new EventSource(`/sub/h2/s${i}`);
      source.onopen = () => window.opened++;
      source.onmessage = (e) => window.received.push(`${i}:${e.data}`);
    }
  }, STREAMS);
  await until(() => page.evaluate((n) => window.opened === n, STREAMS), `${STREAMS} EventSources open`);
  for (let i = 0; i < STREAMS; i++) {
    await until(async () => (await subscribers(`/h2/s${i}`)) === 1, `a subscriber of /h2/s${i}`);
  }
  for (let i = 0; i < STREAMS; i++) {
    const res = await fetch(`${halley.base}/pub/h2/s${i}`, { method: "POST", body: `hello ${i}` });
    assert.equal(res.status, 200);
  }
  const received = await until(
    () => page.evaluate((n) => (window.received.length === n ? window.received : null), STREAMS),
    "every EventSource's message",
  );
  assert.deepEqual(
    [...received].sort(),
    Array.from({ length: STREAMS }, (_, i) => `${i}:hello ${i}`).sort(),
  );
  // The streams share a connection: all of Halley's open connections (the browser's, and this
  // test's own fetches on the plain port) are fewer than HTTP/1.1 would need for the streams.
  const open = await metric(halley.base, "halley_connections");
  assert.ok(open < 6, `${open} connections for ${STREAMS} streams`);
  await page.close();
});

test("a WebSocket over TLS (wss://, HTTP/1.1) beside HTTP/2 streams", async () => {
  const page = await browser.newPage();
  await page.goto(`${halley.tlsBase}/healthz`);
  await page.evaluate(() => {
    window.frames_ = [];
    window.ws = new WebSocket(`wss://${location.host}/sub/h2/ws`);
    window.ws.onmessage = (e) => window.frames_.push(e.data);
  });
  await until(() => page.evaluate(() => window.ws.readyState === 1), "the WebSocket open");
  await until(async () => (await subscribers("/h2/ws")) === 1, "the WebSocket subscribed");
  await fetch(`${halley.base}/pub/h2/ws`, { method: "POST", body: "over wss" });
  const frames = await until(
    () => page.evaluate(() => (window.frames_.length ? window.frames_ : null)),
    "a frame",
  );
  assert.match(frames[0], /over wss/);
  await page.close();
});
