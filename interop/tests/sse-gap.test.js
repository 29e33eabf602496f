// Chromium's own EventSource across a gap (issue 12): the `gap` event carries an `id:`, so an
// EventSource that reconnects before the next message sends that position as Last-Event-ID and
// resumes from it, instead of sending the id that had the gap and being told of it again on
// every reconnect.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { startHalley, metric } from "./harness.js";
import { launch } from "./browser.js";

/**
 * A TCP proxy in front of Halley whose `cut()` drops every open connection, as a network blip
 * would: an EventSource behind it reconnects by itself.
 */
function cuttingProxy(port) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    client.pipe(upstream);
    upstream.pipe(client);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        base: `http://127.0.0.1:${server.address().port}`,
        cut() {
          for (const s of sockets) s.destroy();
        },
        close() {
          for (const s of sockets) s.destroy();
          return new Promise((r) => server.close(r));
        },
      }),
    ),
  );
}

let halley, proxy, browser;
before(async () => {
  halley = await startHalley();
  proxy = await cuttingProxy(halley.port);
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await halley?.stop();
});

async function publish(channel, text) {
  const res = await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: text });
  assert.equal(res.status, 200);
  return (await res.json()).id;
}

test("an EventSource told of a gap resumes from the gap event's id when it reconnects", async () => {
  // An id of another epoch (as after a server restart): a gap, and nothing to replay.
  const real = await publish("/es/other", "x");
  const [epoch, offset] = real.split("-");
  const foreign = `${(BigInt(`0x${epoch}`) ^ 0x10n).toString(16)}-${offset}`;
  const channel = "/es/gap";

  const page = await browser.newPage();
  await page.goto(`${proxy.base}/healthz`);
  await page.evaluate(
    ([channel, foreign]) => {
      window.events = [];
      window.opens = 0;
      const es = new EventSource(`/sub${channel}?transport=sse&last_id=${foreign}`);
      es.onopen = () => (window.opens += 1);
      es.addEventListener("gap", (e) => window.events.push({ type: "gap", lastEventId: e.lastEventId }));
      es.onmessage = (e) => window.events.push({ type: "message", lastEventId: e.lastEventId, data: e.data });
      window.es = es;
    },
    [channel, foreign],
  );
  await page.waitForFunction(() => window.events.length === 1, null, { timeout: 15000 });
  const [gap] = await page.evaluate(() => window.events);
  assert.equal(gap.type, "gap");
  assert.match(gap.lastEventId, /^[0-9a-f]+-\d+$/, "the gap event has an id");
  assert.equal(await metric(halley.base, "halley_resume_gaps_total"), 1);

  // A blip before any message: the EventSource reconnects by itself, with the gap's id.
  proxy.cut();
  await page.waitForFunction(() => window.opens >= 2, null, { timeout: 15000 });
  // Open means its response head arrived: the resumed subscription exists.
  const id = await publish(channel, "after the blip");
  await page.waitForFunction(() => window.events.length >= 2, null, { timeout: 15000 });
  assert.deepEqual(await page.evaluate(() => window.events), [
    gap,
    { type: "message", lastEventId: id, data: "after the blip" },
  ]);
  // The reconnect had no gap: the count did not move.
  assert.equal(await metric(halley.base, "halley_resume_gaps_total"), 1);
  await page.evaluate(() => window.es.close());
  await page.close();
});
