// What halley.js does when the application acts on its connection through the server's
// control API (PROTOCOL.md, "The application's control API"): a `disconnected` notice is a
// server close — reconnect after a backoff, resume from the last id, no token refresh, no step
// down; an `unsubscribed` notice ends that channel's subscriptions; on long-poll both arrive
// as headers of an answer.
//   node --test clients/js/test/
"use strict";
const { test, before, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const { until, FakeWebSocket, FakeEventSource, sockets, last, param } = require("../testing/fakes.js");

let Halley;
before(async () => {
  await import(path.join(__dirname, "..", "halley.js"));
  Halley = globalThis.Halley;
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The channels a subscribe URL asks for: the path's, then each `channel` parameter. */
function channels(url) {
  const u = new URL(url.replace(/^ws/, "http"));
  return [u.pathname.replace(/^\/sub/, ""), ...u.searchParams.getAll("channel")].sort();
}

const realFetch = globalThis.fetch;
let requests = [];
let fetchAnswer = () => new Response("[]", { status: 200 });

const clients = [];
function client(options) {
  FakeWebSocket.all = [];
  FakeEventSource.all = [];
  requests = [];
  globalThis.WebSocket = FakeWebSocket;
  globalThis.EventSource = FakeEventSource;
  globalThis.fetch = async (url, init = {}) => {
    requests.push({ url: String(url), init });
    return fetchAnswer(String(url), init);
  };
  const h = new Halley("http://halley.test", {
    share: false,
    transports: ["websocket", "sse"],
    debounce: 5,
    backoff: { base: 5, max: 20 },
    ...options,
  });
  const log = { states: [], transports: [], errors: [], tokens: [], disconnected: [], unsubscribed: [] };
  h.on("state", (s) => log.states.push(s.state));
  h.on("transport", (t) => log.transports.push(t));
  h.on("error", (e) => log.errors.push(e));
  h.on("token", (t) => log.tokens.push(t.reason));
  h.on("disconnected", (d) => log.disconnected.push(d.reason));
  h.on("unsubscribed", (u) => log.unsubscribed.push(u.channel));
  clients.push(h);
  return { h, log };
}
afterEach(() => {
  for (const h of clients.splice(0)) h.close();
  delete globalThis.WebSocket;
  delete globalThis.EventSource;
  globalThis.fetch = realFetch;
  fetchAnswer = () => new Response("[]", { status: 200 });
});

test("WebSocket: disconnected then close 1008 → reconnect on WebSocket from the last id, no token refresh", async () => {
  let calls = 0;
  const { h, log } = client({ getToken: async () => `t${++calls}` });
  const got = [];
  h.subscribe("/chat/a", (data, m) => got.push(m.id));
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ channel: "/chat/a", id: "e-1", data: 1 });
  last().deliver({ event: "disconnected", reason: "see you" });
  last().drop(1008); // the close that follows the notice says 1008 too: not an expiry here
  await until(() => sockets().length === 2, "a second socket");
  assert.ok(sockets()[0].closed);
  assert.deepEqual(param(last().url, "last_id"), ["e-1"]);
  assert.deepEqual(channels(last().url), ["/chat/a"], "the subscription is intact");
  assert.deepEqual(param(last().url, "token"), ["t1"], "the same token: a disconnect is not an expiry");
  assert.equal(calls, 1);
  assert.deepEqual(log.disconnected, ["see you"]);
  assert.deepEqual(log.transports, [], "not the transport's fault");
  assert.deepEqual(log.errors, []);
  assert.ok(log.states.includes("reconnecting"), log.states.join());
  last().accept();
  last().deliver({ channel: "/chat/a", id: "e-2", data: 2 });
  assert.deepEqual(got, ["e-1", "e-2"]);
  assert.equal(h.state, "connected");
});

test("SSE: event disconnected → a new EventSource after a backoff, not a step down", async () => {
  const { log } = (() => {
    const c = client({ transports: ["sse", "stream"] });
    c.h.subscribe("/chat/a", () => {});
    return c;
  })();
  await until(() => FakeEventSource.all.length === 1, "an EventSource");
  const first = FakeEventSource.all[0];
  first.accept("e-3");
  first.emit("disconnected", { event: "disconnected", reason: "disconnected by the application" });
  first.fail(); // and the stream ends
  await until(() => FakeEventSource.all.length === 2, "a second EventSource");
  assert.ok(first.closed);
  assert.deepEqual(param(FakeEventSource.all[1].url, "last_id"), ["e-3"]);
  assert.deepEqual(log.disconnected, ["disconnected by the application"]);
  assert.deepEqual(log.transports, []);
  assert.equal(requests.length, 0, "no fetch stream tried");
});

test("disconnects in a row back off further each time (the backoff is not reset by reconnecting)", async () => {
  // The jitter taken at its top, so each wait is the backoff's cap for its attempt: 10, 20,
  // 40, 80 ms. Timers never fire early, so these are lower bounds the test can rely on.
  const random = Math.random;
  Math.random = () => 0.999999;
  try {
    const { h } = client({ backoff: { base: 10, max: 10000 } });
    h.subscribe("/chat/a", () => {});
    await until(() => sockets().length === 1, "a socket");
    const waits = [];
    for (let i = 1; i <= 4; i++) {
      last().accept();
      last().deliver({ event: "disconnected", reason: "again" });
      const at = Date.now();
      await until(() => sockets().length === i + 1, `socket ${i + 1}`);
      waits.push(Date.now() - at);
    }
    assert.ok(waits[3] >= 79, `the fourth wait (${waits.join(", ")} ms) is the fourth attempt's`);
    // A message delivered shows the connection works: the next disconnect starts over.
    last().accept();
    last().deliver({ channel: "/chat/a", id: "e-1", data: 1 });
    last().deliver({ event: "disconnected", reason: "once more" });
    await until(() => sockets().length === 6, "socket 6");
  } finally {
    Math.random = random;
  }
});

test("unsubscribed: that channel's subscriptions end, the others go on, the next connection asks without it", async () => {
  const { h, log } = client();
  const got = { a: [], b: [] };
  const a = h.subscribe("/chat/a", (data) => got.a.push(data));
  h.subscribe("/chat/b", (data) => got.b.push(data));
  await until(() => sockets().length === 1, "a socket");
  assert.deepEqual(channels(last().url), ["/chat/a", "/chat/b"]);
  last().accept();
  last().deliver({ event: "unsubscribed", channel: "/chat/a" });
  assert.deepEqual(log.unsubscribed, ["/chat/a"]);
  // A message of the channel still in flight reaches no callback any more.
  last().deliver({ channel: "/chat/a", id: "e-1", data: "late" });
  last().deliver({ channel: "/chat/b", id: "e-2", data: "kept" });
  assert.deepEqual(got, { a: [], b: ["kept"] });
  await until(() => sockets().length === 2, "a connection for the new set");
  assert.deepEqual(channels(last().url), ["/chat/b"]);
  assert.deepEqual(param(last().url, "last_id"), ["e-2"]);
  a.unsubscribe(); // harmless on a subscription the server ended
  assert.deepEqual(log.errors, []);
  assert.deepEqual(log.transports, []);
});

test("unsubscribed from the last channel, then disconnected: idle, no reconnect", async () => {
  const { h, log } = client();
  h.subscribe("/chat/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ event: "unsubscribed", channel: "/chat/a" });
  last().deliver({ event: "disconnected", reason: "unsubscribed from every channel" });
  last().drop(1008);
  await until(() => h.state === "idle", "idle");
  await sleep(60);
  assert.equal(sockets().length, 1, "nothing to connect for");
  assert.deepEqual(log.unsubscribed, ["/chat/a"]);
});

test("long-poll: the headers of an answer say unsubscribed and disconnected (percent-encoded)", async () => {
  const { h, log } = client({ transports: ["longpoll"], pollSettle: 5 });
  let n = 0;
  fetchAnswer = () => {
    n += 1;
    if (n === 1) {
      return new Response(JSON.stringify([{ channel: "/chat/b", id: "e-4", data: 4 }]), {
        status: 200,
        headers: {
          "x-halley-last-id": "e-4",
          "x-halley-unsubscribed": "/chat/a",
          "x-halley-disconnected": "spam %E2%80%94 again",
        },
      });
    }
    return new Promise(() => {}); // held
  };
  const got = [];
  h.subscribe("/chat/a", () => got.push("a"));
  h.subscribe("/chat/b", (data, m) => got.push(m.id));
  await until(() => requests.length === 2, "a second poll");
  assert.deepEqual(got, ["e-4"]);
  assert.deepEqual(log.unsubscribed, ["/chat/a"]);
  assert.deepEqual(log.disconnected, ["spam — again"]);
  assert.deepEqual(channels(requests[1].url), ["/chat/b"]);
  assert.deepEqual(param(requests[1].url, "last_id"), ["e-4"]);
});

test("long-poll: X-Halley-Expired (a revocation) → getToken → poll again from the last id", async () => {
  let calls = 0;
  const { log } = (() => {
    const c = client({ transports: ["longpoll"], pollSettle: 5, getToken: async () => `p${++calls}` });
    c.h.subscribe("/chat/a", () => {});
    return c;
  })();
  let n = 0;
  fetchAnswer = () => {
    n += 1;
    if (n === 1) {
      return new Response("[]", {
        status: 200,
        headers: { "x-halley-last-id": "e-7", "x-halley-expired": "token revoked" },
      });
    }
    return new Promise(() => {});
  };
  await until(() => requests.length === 2, "a second poll");
  assert.deepEqual(param(requests[1].url, "token"), ["p2"]);
  assert.deepEqual(param(requests[1].url, "last_id"), ["e-7"]);
  assert.deepEqual(log.tokens, ["initial", "expired"]);
});
