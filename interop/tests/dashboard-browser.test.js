// The live dashboard (issue 15) in Chromium: `/dashboard` without the backend key shows the
// server's refusal; with it (typed into the page's form, kept in sessionStorage, sent as a
// header) it shows live numbers that move when subscribers connect and messages flow.
// `DASHBOARD_SCREENSHOT=docs/dashboard.png` saves the page (the README's picture): two nodes on a
// redis-server of the test's own, seeded with channels, transports, presence members and traffic
// so that there is something to see.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import { spawn } from "node:child_process";
import WebSocket from "ws";
import { startHalley, until } from "./harness.js";
import { launch } from "./browser.js";

const KEY = "dashboard-test-key";
let halley, browser;
const open = [];

before(async () => {
  halley = await startHalley(["--publish-key", KEY]);
  browser = await launch();
});
after(async () => {
  for (const c of open) c.close();
  await browser?.close();
  await halley?.stop();
});

/** A subscriber held open from Node (its own connection) until the test ends: SSE, or the
 * transport its query names when `accept` is not given. */
function sse(path, accept = "text/event-stream", base = halley.base) {
  return new Promise((resolve, reject) => {
    const headers = accept ? { accept } : {};
    const req = http.get(`${base}${path}`, { headers }, (res) => {
      assert.equal(res.statusCode, 200);
      res.resume();
      const handle = { close: () => req.destroy() };
      open.push(handle);
      resolve(handle);
    });
    req.on("error", (e) => (e.code === "ECONNRESET" ? null : reject(e)));
  });
}

function websocket(path, base = halley.base) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base.replace("http", "ws")}${path}`);
    ws.once("open", () => {
      open.push({ close: () => ws.terminate() });
      resolve(ws);
    });
    ws.once("error", reject);
  });
}

async function publish(channel, text, base = halley.base) {
  const res = await fetch(`${base}/pub${channel}`, {
    method: "POST",
    headers: { "x-halley-key": KEY },
    body: text,
  });
  assert.equal(res.status, 200);
}

const metric = (page, name) =>
  page.evaluate((n) => document.querySelector(`[data-metric="${n}"]`)?.textContent ?? null, name);

test("without the key the dashboard shows the refusal; with it, live numbers", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const urls = [];
  page.on("request", (r) => urls.push(r.url()));
  await page.goto(`${halley.base}/dashboard`);

  // No key: the server's 401 and its reason, no numbers.
  const refusal = await until(
    () => page.evaluate(() => !document.getElementById("refusal").hidden && document.getElementById("refusal").textContent),
    "the refusal",
  );
  assert.match(refusal, /401/);
  assert.match(refusal, /publish key/);
  assert.equal(await page.evaluate(() => document.getElementById("board").hidden), true);

  // A wrong key: 401 again, said as such.
  await page.fill("#key", "not-the-key");
  await page.click('#key-form button[type="submit"]');
  await until(async () => /wrong key/.test(await page.textContent("#refusal")), "the wrong key refused");

  // The key: live.
  await page.fill("#key", KEY);
  await page.click('#key-form button[type="submit"]');
  await until(async () => (await page.getAttribute("#status", "data-state")) === "live", "live");
  await until(async () => (await metric(page, "transport.sse")) === "0", "the transports table");
  assert.equal(await metric(page, "transport.websocket"), "0");
  // The key never went into a URL (those end in logs).
  assert.ok(urls.every((u) => !u.includes(KEY)), urls.join("\n"));
  assert.equal(await page.evaluate(() => sessionStorage.getItem("halley.dashboard.key")), KEY);

  // Subscribers connect: the page counts them by transport.
  for (let i = 0; i < 3; i++) await sse("/sub/dash/busy");
  await websocket("/sub/dash/busy");
  await sse("/sub/dash/quiet");
  await until(async () => (await metric(page, "transport.sse")) === "4", "four SSE subscribers shown");
  await until(async () => (await metric(page, "transport.websocket")) === "1", "one WebSocket shown");
  await until(async () => (await metric(page, "subscriptions")) === "5", "five subscriptions");
  const busiest = await until(
    () => page.evaluate(() => {
      const row = document.querySelector("#channels tr");
      return row && row.cells.length === 4 && [row.cells[0].textContent, row.cells[1].textContent, row.cells[2].textContent];
    }),
    "the busiest channel",
  );
  // No traffic yet: ranked by subscribers.
  assert.deepEqual(busiest, ["/dash/busy", "0", "4"]);

  // Messages flow on the quieter channel: deliveries per second above zero, and that channel,
  // published to at a nonzero rate, tops the busiest channels (ranked by traffic before
  // subscribers). Publishing goes on until a sample has seen some (samples are 1 s).
  const number = (text) => Number((text ?? "0").replace(/,/g, ""));
  let published = 0;
  await until(async () => {
    await publish("/dash/quiet", `tick ${published++}`);
    // One sample's numbers, read at once.
    const [publishedRate, delivered, top, rate] = await page.evaluate(() => [
      document.querySelector('[data-metric="rate.published"]')?.textContent,
      document.querySelector('[data-metric="rate.delivered"]')?.textContent,
      document.querySelector("#channels tr")?.cells[0].textContent,
      document.querySelector('[data-metric="channel.rate./dash/quiet"]')?.textContent,
    ]);
    return number(publishedRate) > 0 && number(delivered) > 0 && top === "/dash/quiet" && number(rate) > 0;
  }, "/dash/quiet on top of the busiest channels with a rate above zero");

  // Subscribers leave: the count goes down again.
  for (const c of open.splice(0)) c.close();
  await until(async () => (await metric(page, "transport.sse")) === "0", "SSE subscribers gone");
  await until(async () => (await metric(page, "transport.websocket")) === "0", "WebSocket gone");

  // Forgetting the key is refused again.
  await page.click("#forget");
  await until(async () => (await page.getAttribute("#status", "data-state")) === "refused", "refused again");
  await page.close();
});

/** A redis-server of the test's own on a free port (for the screenshot's two nodes). */
async function startRedis() {
  const port = await new Promise((resolve) => {
    const probe = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  await until(
    () => new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.end();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    }),
    "redis-server listening",
  );
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill("SIGTERM") };
}

test("the screenshot: two nodes on Redis, seeded", { timeout: 120000, skip: !process.env.DASHBOARD_SCREENSHOT }, async () => {
  const redis = await startRedis();
  const one = await startHalley(["--publish-key", KEY, "--broker", redis.url]);
  const two = await startHalley(["--publish-key", KEY, "--broker", redis.url]);
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    await page.goto(`${one.base}/dashboard`);
    await page.fill("#key", KEY);
    await page.click('#key-form button[type="submit"]');
    await until(async () => (await page.getAttribute("#status", "data-state")) === "live", "live");
    const member = (name, i) =>
      encodeURIComponent(JSON.stringify({ channel: "/talk/lobby", member: `member-${name}-${i}`, info: { name } }));
    const people = ["ann", "bob", "cho", "dee", "eve", "fay", "gus"];
    const on = (node, path, accept) => sse(path, accept, node.base);
    for (const [i, name] of people.entries()) await on(i % 2 ? one : two, `/sub/talk/lobby?presence=${member(name, i)}`);
    for (let i = 0; i < 6; i++) await websocket("/sub/game/42/**", i % 3 ? two.base : one.base);
    for (let i = 0; i < 4; i++) await on(two, "/sub/prices/eur");
    for (let i = 0; i < 3; i++) await on(one, "/sub/prices/usd?transport=stream", null);
    // Forty seconds of traffic at a varying rate on both nodes so that the charts have a
    // shape. The pause only paces the traffic (this picture is not an assertion).
    const started = Date.now();
    let n = 0;
    while (Date.now() - started < 40000) {
      const second = Math.floor((Date.now() - started) / 1000);
      const burst = 1 + ((second * 7) % 11);
      for (let i = 0; i < burst; i++) {
        const channel = ["/talk/lobby", "/game/42/moves", "/prices/eur", "/prices/usd"][n % 4];
        await publish(channel, `m${n}`, n % 3 ? one.base : two.base);
        n++;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    await until(async () => (await metric(page, "members")) === "7", "presence shown");
    await until(async () => (await metric(page, "nodes")) === "2", "both nodes shown");
    fs.writeFileSync(process.env.DASHBOARD_SCREENSHOT, await page.screenshot({ fullPage: true }));
    await page.close();
  } finally {
    for (const c of open.splice(0)) c.close();
    await one.stop();
    await two.stop();
    redis.stop();
  }
});
