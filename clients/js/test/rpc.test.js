// h.rpc(): a call to the application behind the server, in Node with a fake fetch standing in
// for the server — the request it makes, the answer it resolves with, the errors it rejects
// with, and the token it carries (refreshed once on a 401).
//   node --test clients/js/test/
"use strict";
const { test, before, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

let Halley;
before(async () => {
  await import(path.join(__dirname, "..", "halley.js"));
  Halley = globalThis.Halley;
});

const realFetch = globalThis.fetch;
let requests = [];
/** How the fake server answers: `answer(url, init)` → a Response. */
let answer = () => new Response("null", { status: 200 });

const clients = [];
function client(options) {
  requests = [];
  globalThis.fetch = async (url, init = {}) => {
    requests.push({ url: String(url), init });
    return answer(String(url), init);
  };
  const h = new Halley("http://halley.test", { share: false, transports: ["longpoll"], ...options });
  clients.push(h);
  return h;
}
afterEach(() => {
  for (const h of clients.splice(0)) h.close();
  globalThis.fetch = realFetch;
  answer = () => new Response("null", { status: 200 });
});

const json = (status, value) =>
  new Response(JSON.stringify(value), { status, headers: { "content-type": "application/json" } });

test("a call is a POST of JSON to /rpc/{method}; it resolves with the application's answer", async () => {
  const h = client({ token: "tok-1" });
  answer = () => json(200, { found: ["bob"] });
  assert.deepEqual(await h.rpc("users/find", { name: "bob" }), { found: ["bob"] });
  assert.deepEqual(await h.rpc("/users/find"), { found: ["bob"] });
  assert.deepEqual(
    requests.map((r) => [r.url, r.init.method, r.init.body, r.init.headers["content-type"], r.init.headers.authorization]),
    [
      ["http://halley.test/rpc/users/find", "POST", '{"name":"bob"}', "application/json", "Bearer tok-1"],
      ["http://halley.test/rpc/users/find", "POST", "null", "application/json", "Bearer tok-1"],
    ],
  );
});

test("a refused, failed, unreachable or slow call rejects with its status and reason", async () => {
  const h = client();
  for (const [status, error] of [
    [403, "not your address book"],
    [502, "the application failed: HTTP 500"],
    [503, "the application is unreachable: connection refused"],
    [504, "the application did not answer within 5s"],
  ]) {
    answer = () => json(status, { error });
    await assert.rejects(h.rpc("users/find", {}), (e) => e.status === status && e.reason === error);
  }
});

test("a method that is no channel path is refused before any request", async () => {
  const h = client();
  for (const method of ["", "users/*", "a//b", 42, null]) {
    await assert.rejects(h.rpc(method, {}), /bad rpc method/);
  }
  assert.equal(requests.length, 0);
});

test("a call answered 401 is made once more with a fresh token", async () => {
  let minted = 0;
  const h = client({ getToken: async () => `t${++minted}` });
  answer = (url, init) =>
    init.headers.authorization === "Bearer t1" ? json(401, { error: "token expired" }) : json(200, 7);
  assert.equal(await h.rpc("count"), 7);
  assert.deepEqual(
    requests.map((r) => r.init.headers.authorization),
    ["Bearer t1", "Bearer t2"],
  );
});

test("publish: type and ttl ride the URL; a lost answer is retried with the same Idempotency-Key", async () => {
  const h = client({ backoff: { base: 5, max: 10 } });
  let calls = 0;
  answer = () => {
    calls += 1;
    if (calls === 1) throw new TypeError("network down"); // the answer is lost
    if (calls === 2) return json(409, { error: "under way" });
    return json(200, { channel: "/p", id: "e-1", subscribers: 0 });
  };
  assert.deepEqual(await h.publish("/p", { n: 1 }, { type: "tick", ttl: 30 }), { channel: "/p", id: "e-1", subscribers: 0 });
  assert.equal(requests.length, 3);
  const keys = new Set(requests.map((r) => r.init.headers["idempotency-key"]));
  assert.equal(keys.size, 1, "one key for the publish and its retries");
  assert.match([...keys][0], /^[A-Za-z0-9]{24}$/);
  assert.equal(requests[0].url, "http://halley.test/pub/p?type=tick&ttl=30");
  // A new publish, a new key; a refusal is not retried.
  answer = () => json(400, { error: "bad type" });
  await assert.rejects(h.publish("/p", 1, { type: "a b" }), (e) => e.status === 400);
  assert.equal(requests.length, 4);
  assert.notEqual(requests[3].init.headers["idempotency-key"], requests[0].init.headers["idempotency-key"]);
});
