// Access tokens in halley.js, in Node with fake WebSocket / EventSource / fetch: the token on
// every URL and request, getToken() before the first connection and again when the token
// expires or is refused, resume without loss or duplicates, and giving up (not stepping down)
// on a 401 that cannot be helped or a 403.
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

/** fetch as the tests' server answers it: `fetchAnswer(url, init)` → a Response. */
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
    transports: ["websocket"],
    debounce: 5,
    backoff: { base: 5, max: 20 },
    ...options,
  });
  const log = { states: [], transports: [], errors: [], tokens: [] };
  h.on("state", (s) => log.states.push(s.state));
  h.on("transport", (t) => log.transports.push(t));
  h.on("error", (e) => log.errors.push(e));
  h.on("token", (t) => log.tokens.push(t.reason));
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

const refused = (status, error) =>
  new Response(JSON.stringify({ error }), { status, headers: { "content-type": "application/json" } });

/** A JWT-shaped token (unsigned: the client only ever reads `exp`). */
function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.sig`;
}

test("a static token rides every subscribe URL, and one-shot requests as Authorization: Bearer", async () => {
  const { h } = client({ token: "tok-1", transports: ["websocket", "sse"] });
  h.subscribe("/chat/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  assert.deepEqual(param(last().url, "token"), ["tok-1"]);
  fetchAnswer = () => new Response(JSON.stringify({ channel: "/chat/a", id: "e-1", subscribers: 1 }), { status: 200 });
  await h.publish("/chat/a", { n: 1 });
  await h.history("/chat/a");
  await h.presence("/chat/a");
  await h.rooms("/chat");
  await h.send("http://halley.test/inbox/abc", "hi");
  assert.equal(requests.length, 5);
  for (const r of requests) {
    assert.equal(r.init.headers.authorization, "Bearer tok-1", r.url);
    assert.ok(!r.url.includes("tok-1"), "not in the URL of a fetch");
  }
  // SSE too (EventSource sends no headers).
  const { h: h2 } = client({ token: "tok-2", transports: ["sse"] });
  h2.subscribe("/chat/b", () => {});
  await until(() => FakeEventSource.all.length === 1, "an EventSource");
  assert.deepEqual(param(FakeEventSource.all[0].url, "token"), ["tok-2"]);
});

test("getToken is asked before the first connection; its token is on the URL", async () => {
  let calls = 0;
  const { h, log } = client({ getToken: () => new Promise((r) => setTimeout(() => r(`fresh-${++calls}`), 10)) });
  h.subscribe("/chat/a", () => {});
  await sleep(5);
  assert.equal(sockets().length, 0, "no connection before the token is in");
  await until(() => sockets().length === 1, "a socket");
  assert.equal(calls, 1);
  assert.deepEqual(param(last().url, "token"), ["fresh-1"]);
  assert.deepEqual(log.tokens, ["initial"]);
  // One-shot requests wait for the same token rather than asking again.
  await h.history("/chat/a");
  assert.equal(calls, 1);
  assert.equal(requests.at(-1).init.headers.authorization, "Bearer fresh-1");
});

test("WebSocket: an expired notice → getToken → reconnect at once from the last id, nothing lost or doubled", async () => {
  let calls = 0;
  const { h, log } = client({ getToken: async () => `t${++calls}`, backoff: { base: 60000, max: 60000 } });
  const got = [];
  h.subscribe("/chat/a", (data, m) => got.push(m.id));
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ channel: "/chat/a", id: "e-1", data: 1 });
  last().deliver({ channel: "/chat/a", id: "e-2", data: 2 });
  last().deliver({ event: "expired", error: "token expired" });
  last().drop(1008);
  // A backoff of a minute would time this out: the first refresh does not wait.
  await until(() => sockets().length === 2, "a second socket");
  assert.ok(sockets()[0].closed);
  assert.equal(calls, 2);
  assert.deepEqual(param(last().url, "token"), ["t2"]);
  assert.deepEqual(param(last().url, "last_id"), ["e-2"]);
  last().accept();
  for (const id of ["e-2", "e-3", "e-4"]) last().deliver({ channel: "/chat/a", id, data: 0 });
  assert.deepEqual(got, ["e-1", "e-2", "e-3", "e-4"]);
  assert.deepEqual(log.tokens, ["initial", "expired"]);
  assert.deepEqual(log.transports, [], "an expiry is not the transport's fault");
  assert.deepEqual(log.errors, []);
  assert.equal(h.state, "connected");
});

test("WebSocket closed with 1008 and no notice is an expiry too", async () => {
  let calls = 0;
  const { h, log } = client({ getToken: async () => `t${++calls}`, transports: ["websocket", "sse"] });
  h.subscribe("/chat/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ event: "position", last_id: "e-9" });
  last().drop(1008);
  await until(() => sockets().length === 2, "a second socket");
  assert.deepEqual(param(last().url, "last_id"), ["e-9"]);
  assert.deepEqual(param(last().url, "token"), ["t2"]);
  assert.deepEqual(log.transports, []);
  assert.equal(FakeEventSource.all.length, 0);
});

test("SSE: event expired → getToken → a new EventSource from the last id with the new token", async () => {
  let calls = 0;
  const { h, log } = client({ transports: ["sse", "websocket"], getToken: async () => `s${++calls}` });
  const got = [];
  h.subscribe("/chat/a", (data, m) => got.push(m.id));
  await until(() => FakeEventSource.all.length === 1, "an EventSource");
  const first = FakeEventSource.all[0];
  first.accept("e-0");
  first.message({ channel: "/chat/a", id: "e-1", data: 1 });
  first.emit("expired", { event: "expired", error: "token expired" });
  first.fail(); // and then the stream ends
  await until(() => FakeEventSource.all.length === 2, "a second EventSource");
  assert.ok(first.closed);
  const second = FakeEventSource.all[1];
  assert.deepEqual(param(second.url, "token"), ["s2"]);
  assert.deepEqual(param(second.url, "last_id"), ["e-1"]);
  second.accept("e-1");
  second.message({ channel: "/chat/a", id: "e-1", data: 1 });
  second.message({ channel: "/chat/a", id: "e-2", data: 2 });
  assert.deepEqual(got, ["e-1", "e-2"]);
  assert.deepEqual(log.tokens, ["initial", "expired"]);
  assert.deepEqual(log.transports, []);
  assert.equal(sockets().length, 0, "did not step down to WebSocket");
});

test("an expired notice with only a static token: unauthorized, and no reconnect", async () => {
  const { h, log } = client({ token: "static" });
  h.subscribe("/chat/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ event: "expired", error: "token expired" });
  last().drop(1008);
  await until(() => h.state === "unauthorized", "unauthorized");
  await sleep(80);
  assert.equal(sockets().length, 1, "no reconnect");
  assert.deepEqual(log.errors, [{ event: "error", error: "token expired", status: 401 }]);
  // A new token from the application brings it back, from where it was.
  h.setToken("static-2");
  await until(() => sockets().length === 2, "a second socket");
  assert.deepEqual(param(last().url, "token"), ["static-2"]);
});

test("a refused WebSocket with a static token: 401 seen by a probe, unauthorized, no step-down, no hammering", async () => {
  const { h, log } = client({ token: "revoked", transports: ["websocket", "sse", "stream"] });
  fetchAnswer = (url) => (url.includes("transport=stream") ? refused(401, "token revoked") : new Response("{}"));
  h.subscribe("/chat/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().drop(1006); // the upgrade answered 401: the page sees only 1006, before open
  await until(() => h.state === "unauthorized", "unauthorized");
  await sleep(80);
  assert.equal(sockets().length, 1);
  assert.equal(FakeEventSource.all.length, 0);
  assert.deepEqual(log.transports, []);
  assert.equal(requests.length, 1, "one probe, nothing more");
  assert.deepEqual(param(requests[0].url, "token"), ["revoked"]);
  assert.deepEqual(log.errors, [{ event: "error", error: "token revoked", status: 401 }]);
});

test("a refused WebSocket with getToken: probe says 401 → fresh token → reconnect on WebSocket", async () => {
  let calls = 0;
  const { h, log } = client({ getToken: async () => `g${++calls}`, transports: ["websocket", "sse"] });
  fetchAnswer = () => refused(401, "bad signature");
  h.subscribe("/chat/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().drop(1006);
  await until(() => sockets().length === 2, "a second socket");
  assert.deepEqual(param(last().url, "token"), ["g2"]);
  last().accept();
  assert.equal(h.state, "connected");
  assert.deepEqual(log.tokens, ["initial", "unauthorized"]);
  assert.deepEqual(log.transports, []);
});

test("a WebSocket that fails for another reason still steps down (the probe finds the token fine)", async () => {
  const { log } = (() => {
    const c = client({ token: "good", transports: ["websocket", "sse"] });
    c.h.subscribe("/chat/a", () => {});
    return c;
  })();
  fetchAnswer = () => new Response("\n", { status: 200 });
  await until(() => sockets().length === 1, "a socket");
  last().drop(1006);
  await until(() => FakeEventSource.all.length === 1, "an EventSource");
  assert.deepEqual(log.transports, [{ transport: "sse", from: "websocket", reason: "connect" }]);
});

test("403 (the token does not cover the channel): an error, and no retry", async () => {
  const { h, log } = client({ transports: ["stream"], getToken: async () => "g" });
  fetchAnswer = () => refused(403, "not allowed on /secret/a");
  h.subscribe("/secret/a", () => {});
  await until(() => h.state === "unauthorized", "unauthorized");
  await sleep(80);
  assert.equal(requests.length, 1, "not retried");
  assert.deepEqual(log.errors, [{ event: "error", error: "not allowed on /secret/a", status: 403 }]);
  assert.deepEqual(log.tokens, ["initial"], "no fresh token asked for a 403");
});

test("long-poll: the next poll answered 401 token expired → getToken → resume from the last id", async () => {
  let calls = 0;
  const { h, log } = client({ transports: ["longpoll"], getToken: async () => `p${++calls}`, pollSettle: 5 });
  const got = [];
  let n = 0;
  fetchAnswer = (url) => {
    n += 1;
    if (n === 1) {
      return new Response(JSON.stringify([{ channel: "/chat/a", id: "e-1", data: 1 }]), {
        status: 200,
        headers: { "x-halley-last-id": "e-1" },
      });
    }
    if (param(url, "token")[0] === "p1") return refused(401, "token expired");
    return new Promise(() => {}); // held
  };
  h.subscribe("/chat/a", (data, m) => got.push(m.id));
  await until(() => requests.length === 3, "a third poll");
  assert.deepEqual(param(requests[1].url, "token"), ["p1"]);
  assert.deepEqual(param(requests[2].url, "token"), ["p2"]);
  assert.deepEqual(param(requests[2].url, "last_id"), ["e-1"]);
  assert.deepEqual(got, ["e-1"]);
  assert.deepEqual(log.tokens, ["initial", "expired"]);
  assert.deepEqual(log.errors, []);
});

test("getToken failing: unauthorized, an error event, no connection attempts", async () => {
  const { h, log } = client({
    getToken: () => Promise.reject(new Error("login required")),
  });
  h.subscribe("/chat/a", () => {});
  await until(() => h.state === "unauthorized", "unauthorized");
  await sleep(50);
  assert.equal(sockets().length, 0);
  assert.equal(log.errors.length, 1);
  assert.equal(log.errors[0].status, 401);
  assert.match(log.errors[0].error, /getToken failed: login required/);
});

test("a token refused again and again right after refreshing: bounded retries, then unauthorized", async () => {
  let calls = 0;
  const { h } = client({ transports: ["stream"], getToken: async () => `same-${++calls}` });
  fetchAnswer = () => refused(401, "token revoked");
  h.subscribe("/chat/a", () => {});
  await until(() => h.state === "unauthorized", "unauthorized");
  const asked = calls;
  await sleep(100);
  assert.equal(calls, asked);
  assert.ok(calls <= 5, `getToken called ${calls} times`);
});

test("a publish answered 401 is retried once with a fresh token", async () => {
  let calls = 0;
  const { h, log } = client({ getToken: async () => `q${++calls}` });
  fetchAnswer = (url, init) =>
    init.headers.authorization === "Bearer q1"
      ? refused(401, "bad signature")
      : new Response(JSON.stringify({ channel: "/chat/a", id: "e-5", subscribers: 0 }));
  const answer = await h.publish("/chat/a", "hi");
  assert.equal(answer.id, "e-5");
  assert.deepEqual(
    requests.map((r) => r.init.headers.authorization),
    ["Bearer q1", "Bearer q2"],
  );
  assert.deepEqual(log.tokens, ["initial", "unauthorized"]);
});

test("tokenExpiry reads a JWT's exp and nothing else", () => {
  const { tokenExpiry } = Halley._internal;
  assert.equal(tokenExpiry(jwt({ sub: "a", exp: 1700000000 })), 1700000000000);
  assert.equal(tokenExpiry(jwt({ sub: "a" })), null);
  assert.equal(tokenExpiry("opaque"), null);
  assert.equal(tokenExpiry("a.!!!.c"), null);
  assert.equal(tokenExpiry(null), null);
});
