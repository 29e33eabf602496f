// latencyReport: halley.js sending its measured delivery latencies to the server
// (POST /api/latency), in Node with a fake WebSocket for the subscription and a fake fetch for
// the publishes and the reports — what a report holds, how they are batched, bounded and spaced,
// and that none is sent when the option is off. The server side is crates/halley-http/tests/
// client_latency.rs; the real browser against the real server, interop/tests/halley-js.test.js.
//   node --test clients/js/test/
"use strict";
const { test, before, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const { until, FakeWebSocket, last } = require("../testing/fakes.js");

let Halley;
let I;
before(async () => {
  await import(path.join(__dirname, "..", "halley.js"));
  Halley = globalThis.Halley;
  I = Halley._internal;
});

const realFetch = globalThis.fetch;
let reports = [];
let nextId = 1;

const json = (value) => new Response(JSON.stringify(value), { status: 200, headers: { "content-type": "application/json" } });

const clients = [];
function client(options) {
  reports = [];
  FakeWebSocket.all = [];
  globalThis.WebSocket = FakeWebSocket;
  globalThis.fetch = async (url, init = {}) => {
    const u = new URL(String(url));
    if (u.pathname === "/api/latency") {
      const body = JSON.parse(init.body);
      reports.push({ at: Date.now(), channel: u.searchParams.get("channel"), body, headers: init.headers });
      return json({ recorded: body.ms.length });
    }
    // A publish: answered with the next id.
    return json({ channel: u.pathname.slice("/pub".length), id: `e-${nextId++}`, subscribers: 1 });
  };
  const h = new Halley("http://halley.test", { share: false, transports: ["websocket"], debounce: 5, ...options });
  clients.push(h);
  return h;
}
afterEach(() => {
  for (const h of clients.splice(0)) h.close();
  globalThis.fetch = realFetch;
  delete globalThis.WebSocket;
});

/** Publishes `data` on `channel` and delivers it back on the fake socket: one latency figure. */
async function roundTrip(h, channel, data) {
  const answer = await h.publish(channel, data);
  last().deliver({ channel, id: answer.id, data });
  return answer;
}

async function connected(h, channels) {
  for (const c of channels) h.subscribe(c, () => {});
  await until(() => FakeWebSocket.all.length === 1, "a socket");
  last().accept();
  assert.equal(h.transport, "websocket");
}

test("reportInterval: off by default, true is 10 s, a number is seconds but at least 1", () => {
  assert.equal(I.reportInterval(undefined), 0);
  assert.equal(I.reportInterval(false), 0);
  assert.equal(I.reportInterval(0), 0);
  assert.equal(I.reportInterval(-5), 0);
  assert.equal(I.reportInterval("10"), 0);
  assert.equal(I.reportInterval(true), 10);
  assert.equal(I.reportInterval(30), 30);
  assert.equal(I.reportInterval(0.01), 1);
  assert.equal(Halley.DEFAULTS.latencyReport, false);
});

test("Pending: grouped by channel and transport, at most 64 figures, out-of-range ones left out", () => {
  const p = new I.Pending();
  assert.equal(p.add("/a", "sse", 1.23456789), true);
  assert.equal(p.add("/b", "sse", 2), true);
  assert.equal(p.add("/a", "sse", 3), true);
  assert.equal(p.add("/a", "websocket", 4), true);
  for (const bad of [-1, NaN, Infinity, 60001, undefined]) assert.equal(p.add("/a", "sse", bad), false, String(bad));
  assert.equal(p.size, 4);
  assert.deepEqual(p.take(), { channel: "/a", transport: "sse", ms: [1.235, 3] });
  assert.deepEqual(p.take(), { channel: "/b", transport: "sse", ms: [2] });
  assert.deepEqual(p.take(), { channel: "/a", transport: "websocket", ms: [4] });
  assert.equal(p.take(), null);
  assert.equal(p.size, 0);
  for (let i = 0; i < 100; i++) p.add("/a", "sse", i);
  assert.equal(p.size, 64);
  assert.equal(p.dropped, 36);
  assert.equal(p.take().ms.length, 64);
});

test("with latencyReport the client's figures are POSTed in one report per interval", async () => {
  const h = client({ latencyReport: 1, key: "backend-key" });
  const seen = [];
  const sent = [];
  h.on("latency", (l) => seen.push(l));
  h.on("report", (r) => sent.push(r));
  await connected(h, ["/room/a"]);
  const started = Date.now();
  for (let n = 0; n < 3; n++) await roundTrip(h, "/room/a", { n });
  assert.equal(seen.length, 3);
  await until(() => reports.length === 1, "a report");
  const [report] = reports;
  assert.equal(report.channel, "/room/a");
  assert.equal(report.body.transport, "websocket");
  assert.deepEqual(Object.keys(report.body).sort(), ["ms", "transport"]);
  assert.equal(report.body.ms.length, 3);
  for (const ms of report.body.ms) assert.ok(ms >= 0 && ms < 5000, String(ms));
  assert.equal(report.headers["content-type"], "application/json");
  assert.equal(report.headers["x-halley-key"], "backend-key");
  // Not before the interval: the figures were batched.
  assert.ok(report.at - started >= 900, `${report.at - started} ms`);
  await until(() => sent.length === 1, "the report event");
  assert.deepEqual(sent[0], { channel: "/room/a", transport: "websocket", count: 3, error: null });
});

test("two channels' figures go in two reports, an interval apart", async () => {
  const h = client({ latencyReport: 1 });
  await connected(h, ["/room/a", "/room/b"]);
  await roundTrip(h, "/room/a", 1);
  await roundTrip(h, "/room/b", 2);
  await until(() => reports.length === 2, "two reports");
  assert.deepEqual(
    reports.map((r) => [r.channel, r.body.ms.length]),
    [
      ["/room/a", 1],
      ["/room/b", 1],
    ],
  );
  assert.ok(reports[1].at - reports[0].at >= 900, `${reports[1].at - reports[0].at} ms apart`);
});

test("without latencyReport nothing is reported; after close() nothing more is sent", async () => {
  const off = client();
  const seen = [];
  off.on("latency", (l) => seen.push(l));
  await connected(off, ["/room/a"]);
  await roundTrip(off, "/room/a", 1);
  assert.equal(seen.length, 1);
  assert.equal(off._reportTimer, null);
  off.close();
  const on = client({ latencyReport: 1 });
  await connected(on, ["/room/a"]);
  await roundTrip(on, "/room/a", 1);
  assert.notEqual(on._reportTimer, null);
  on.close();
  assert.equal(on._reportTimer, null);
  assert.equal(reports.length, 0);
});
