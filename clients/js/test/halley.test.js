// Unit tests of halley.js's pure parts (Halley._internal): ids, dedupe and resume bookkeeping,
// backoff, the transport ladder, channel matching and subscribe URLs. No DOM, no server:
//   node --test clients/js/test/
"use strict";
const { test, before } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

let I;
before(async () => {
  // A dynamic import works whether Node takes halley.js for CommonJS or for a module: either
  // way the script sets globalThis.Halley.
  await import(path.join(__dirname, "..", "halley.js"));
  I = globalThis.Halley._internal;
});

test("message ids parse as <epoch hex>-<offset decimal>", () => {
  const check = (text, expected) => assert.deepEqual(I.parseId(text), expected, text);
  check("ff-10", { epoch: "ff", offset: "10" });
  check("FF-010", { epoch: "ff", offset: "10" });
  check("0-0", { epoch: "0", offset: "0" });
  check("ffffffffffffffff-18446744073709551615", { epoch: "ffffffffffffffff", offset: "18446744073709551615" });
  for (const bad of ["", "-1", "1-", "g-1", "1-1-1", "1-x", "+1-1", null, undefined, 5]) check(bad, null);
});

test("ids compare within an epoch, exactly beyond 2^53, and not across epochs", () => {
  const check = (a, b, sign) => {
    const c = I.compareIds(a, b);
    if (Number.isNaN(sign)) assert.ok(Number.isNaN(c), `${a} vs ${b}`);
    else assert.equal(Math.sign(c), sign, `${a} vs ${b}`);
  };
  check("a-1", "a-2", -1);
  check("a-2", "a-1", 1);
  check("a-7", "a-7", 0);
  check("a-9", "a-10", -1); // numeric, not lexicographic
  check("a-9007199254740993", "a-9007199254740992", 1); // past Number's precision
  check("a-18446744073709551615", "a-18446744073709551614", 1);
  check("a-1", "b-1", NaN);
  check("a-1", "junk", NaN);
});

test("resume: new ids pass once, in order; replays and relays are dropped", () => {
  const r = new I.Resume(100);
  assert.equal(r.lastId, null);
  assert.equal(r.accept("e-1"), true);
  assert.equal(r.accept("e-2"), true);
  assert.equal(r.accept("e-2"), false, "the same id again");
  assert.equal(r.accept("e-1"), false, "an older id (replayed after a reconnect)");
  assert.equal(r.accept("e-5"), true, "ids skip (other channels), that is fine");
  assert.equal(r.lastId, "e-5");
  assert.equal(r.accept("e-4"), false, "below the last id");
  assert.equal(r.accept(undefined), true, "no id: nothing to dedupe against");
});

test("resume: a new epoch (server restarted) is adopted and the old one retired", () => {
  const r = new I.Resume(100);
  r.accept("a0-10");
  assert.equal(r.accept("b1-1"), true);
  assert.equal(r.lastId, "b1-1");
  assert.equal(r.accept("a0-11"), false, "a straggler of the retired epoch");
  assert.equal(r.accept("b1-2"), true);
  r.advance("a0-50");
  assert.equal(r.lastId, "b1-2");
});

test("resume: the server's position only moves the last id forward", () => {
  const r = new I.Resume(100);
  r.advance("e-3");
  assert.equal(r.lastId, "e-3");
  r.advance("e-2");
  assert.equal(r.lastId, "e-3");
  r.advance("e-9");
  assert.equal(r.lastId, "e-9");
  assert.equal(r.accept("e-9"), false, "a message at the position was delivered already");
  r.advance("garbage");
  assert.equal(r.lastId, "e-9");
  r.advance("f-0");
  assert.equal(r.lastId, "f-0", "a new epoch after a gap");
});

test("resume: the dedupe window is bounded", () => {
  const r = new I.Resume(3);
  for (let i = 1; i <= 10; i++) r.accept(`e-${i}`);
  assert.equal(r.seen.size, 3);
  assert.deepEqual([...r.seen], ["e-8", "e-9", "e-10"]);
});

test("backoff: full jitter below an exponentially growing cap", () => {
  const b = { base: 100, max: 1000 };
  const top = () => 0.999999;
  assert.equal(I.backoffDelay(0, b, () => 0), 0);
  assert.equal(I.backoffDelay(0, b, top), 99);
  assert.equal(I.backoffDelay(1, b, top), 199);
  assert.equal(I.backoffDelay(3, b, top), 799);
  assert.equal(I.backoffDelay(4, b, top), 999, "capped at max");
  assert.equal(I.backoffDelay(500, b, top), 999, "huge attempt counts do not overflow");
  for (let i = 0; i < 100; i++) {
    const d = I.backoffDelay(2, b);
    assert.ok(d >= 0 && d < 400, `${d}`);
  }
});

test("ladder: a missing transport is stepped over, a working one is kept", () => {
  const l = new I.Ladder(["websocket", "sse", "stream", "longpoll", "jsonp"], 3);
  assert.equal(l.current, "websocket");
  assert.deepEqual(l.failed("missing"), { transport: "sse", stepped: true, wrapped: false });
  assert.deepEqual(l.failed("connect"), { transport: "stream", stepped: true, wrapped: false }, "never worked: step down at once");
  l.opened();
  l.worked();
  assert.deepEqual(l.failed("dropped"), { transport: "stream", stepped: false, wrapped: false }, "it worked and ended: stay");
  assert.deepEqual(l.failed("connect"), { transport: "stream", stepped: false, wrapped: false });
  assert.deepEqual(l.failed("connect"), { transport: "stream", stepped: false, wrapped: false });
  assert.deepEqual(l.failed("connect"), { transport: "longpoll", stepped: true, wrapped: false }, "third failure in a row");
});

test("ladder: a connection that worked resets the failure count; a mere open does not", () => {
  const l = new I.Ladder(["websocket", "longpoll"], 3);
  l.opened();
  l.failed("connect");
  l.failed("connect");
  l.worked();
  l.failed("connect");
  l.failed("connect");
  assert.equal(l.current, "websocket");
  // Opens that are cut at once (reported as 'connect') do not reset it: the third steps down.
  l.opened();
  assert.deepEqual(l.failed("connect"), { transport: "longpoll", stepped: true, wrapped: false });
});

test("ladder: a buffered stream is banned; past the bottom it wraps to the top", () => {
  const l = new I.Ladder(["sse", "stream", "longpoll"], 3);
  assert.deepEqual(l.failed("buffered"), { transport: "stream", stepped: true, wrapped: false });
  assert.deepEqual(l.failed("buffered"), { transport: "longpoll", stepped: true, wrapped: false });
  assert.deepEqual(l.failed("connect"), { transport: "longpoll", stepped: false, wrapped: true }, "only longpoll is left");
  assert.equal(l.current, "longpoll");
});

test("ladder: wrapping restarts at the best transport not banned", () => {
  const l = new I.Ladder(["websocket", "sse", "longpoll"], 3);
  l.failed("connect"); // websocket → sse
  l.failed("connect"); // sse → longpoll
  assert.deepEqual(l.failed("connect"), { transport: "websocket", stepped: true, wrapped: true });
});

test("ladder: if everything got banned, the bans are lifted", () => {
  const l = new I.Ladder(["sse", "stream"], 3);
  l.failed("buffered");
  assert.deepEqual(l.failed("buffered"), { transport: "sse", stepped: true, wrapped: true });
  assert.equal(l.banned.size, 0);
  assert.throws(() => new I.Ladder([]));
});

test("ladder: held polls cut again and again step down, towards interval polling", () => {
  const l = new I.Ladder(["longpoll", "jsonp", "poll"], 3);
  l.opened();
  assert.deepEqual(l.failed("cut"), { transport: "longpoll", stepped: false, wrapped: false });
  assert.deepEqual(l.failed("cut"), { transport: "longpoll", stepped: false, wrapped: false });
  assert.deepEqual(l.failed("cut"), { transport: "jsonp", stepped: true, wrapped: false });
  l.opened();
  l.failed("cut");
  l.failed("cut");
  assert.deepEqual(l.failed("cut"), { transport: "poll", stepped: true, wrapped: false });
});

test("channel names and patterns", () => {
  for (const ok of ["/a", "/a/b", "/chat/room-1", "/x/a.b~c:d@e!f_g"]) {
    assert.ok(I.isChannel(ok), ok);
    assert.ok(I.isPattern(ok), ok);
  }
  for (const ok of ["/a/*", "/a/**", "/**", "/*"]) {
    assert.ok(I.isPattern(ok), ok);
    assert.ok(!I.isChannel(ok), ok);
  }
  for (const bad of ["", "/", "a", "/a/", "//a", "/a b", "/a/*/b", "/a/***", "/a*", "/" + "a".repeat(255), null]) {
    assert.ok(!I.isPattern(bad), String(bad));
    assert.ok(!I.isChannel(bad), String(bad));
  }
});

test("matching a message's channel against subscriptions, as the server does", () => {
  const check = (pattern, channel, expected) => assert.equal(I.matchChannel(pattern, channel), expected, `${pattern} ${channel}`);
  check("/a/b", "/a/b", true);
  check("/a/b", "/a/bc", false);
  check("/a/*", "/a/b", true);
  check("/a/*", "/a/b/c", false);
  check("/a/*", "/a", false);
  check("/a/**", "/a/b/c", true);
  check("/a/**", "/a", false);
  check("/a/**", "/ab/c", false);
  check("/**", "/x/y", true);
  check("/**", "/meta/connect", false);
  check("/**", "/inbox/0123abcd", false);
  check("/inbox/*", "/inbox/0123abcd", false);
  check("/inbox/0123abcd", "/inbox/0123abcd", true);
});

test("merging subscription sets: one entry per channel, presence channels included, canonical order", () => {
  const merged = I.mergeSpecs([
    { channels: [{ channel: "/b" }, { channel: "/a" }], presence: [] },
    { channels: [{ channel: "/a" }, { channel: "/inbox/h", inbox: "s" }], presence: [{ channel: "/p", member: "m1", info: { n: 1 } }] },
    { channels: [], presence: [{ channel: "/p", member: "m1", info: { n: 2 } }, { channel: "/p", member: "m2", info: {} }] },
  ]);
  assert.deepEqual(merged.channels, [{ channel: "/a" }, { channel: "/b" }, { channel: "/inbox/h", inbox: "s" }, { channel: "/p" }]);
  assert.deepEqual(merged.presence, [
    { channel: "/p", member: "m1", info: { n: 2 } },
    { channel: "/p", member: "m2", info: {} },
  ]);
  // Equal sets, built in another order, serialise the same (the reconnect check compares JSON).
  const again = I.mergeSpecs([{ channels: [{ channel: "/b" }, { channel: "/a" }], presence: [] }]);
  const other = I.mergeSpecs([{ channels: [{ channel: "/a" }, { channel: "/b" }], presence: [] }]);
  assert.equal(JSON.stringify(again), JSON.stringify(other));
});

test("subscribe URLs per transport (PROTOCOL.md)", () => {
  const spec = I.mergeSpecs([
    { channels: [{ channel: "/a/**" }, { channel: "/inbox/h", inbox: "sec" }], presence: [{ channel: "/room", member: "m12345678", info: { name: "al" } }] },
  ]);
  const base = "https://h.example:8443";
  const presence = encodeURIComponent(JSON.stringify({ channel: "/room", member: "m12345678", info: { name: "al" } }));
  const rest = `channel=%2Finbox%2Fh&channel=%2Froom&inbox=sec&presence=${presence}`;
  assert.equal(I.subscribeUrl(base, "websocket", spec, null), `wss://h.example:8443/sub/a/**?${rest}&position=1`);
  assert.equal(I.subscribeUrl(base, "sse", spec, "e-3"), `${base}/sub/a/**?${rest}&transport=sse&format=json&position=1&last_id=e-3`);
  assert.equal(I.subscribeUrl(base, "stream", spec, null), `${base}/sub/a/**?${rest}&transport=stream&format=json&position=1`);
  assert.equal(I.subscribeUrl(base, "longpoll", spec, "e-3"), `${base}/sub/a/**?${rest}&transport=longpoll&last_id=e-3`);
  assert.equal(I.subscribeUrl(base, "jsonp", spec, null), `${base}/sub/a/**?${rest}&transport=jsonp`);
  assert.equal(I.subscribeUrl(base, "poll", spec, "e-3"), `${base}/sub/a/**?${rest}&transport=longpoll&wait=0&last_id=e-3`);
  const one = I.mergeSpecs([{ channels: [{ channel: "/x" }], presence: [] }]);
  assert.equal(I.subscribeUrl("http://h", "websocket", one, null), "ws://h/sub/x?position=1");
});

test("NDJSON framing: complete lines out, the unfinished rest kept", () => {
  assert.deepEqual(I.splitLines('{"a":1}\n\n{"b"'), { lines: ['{"a":1}', ""], rest: '{"b"' });
  assert.deepEqual(I.splitLines(""), { lines: [], rest: "" });
  assert.deepEqual(I.splitLines("x\n"), { lines: ["x"], rest: "" });
});

test("no DOM, no transports; construction checks its options", () => {
  for (const t of ["websocket", "sse", "jsonp"]) assert.equal(I.available(t), false, t);
  assert.equal(I.available("carrier-pigeon"), false);
  assert.throws(() => new globalThis.Halley("http://h", { transports: ["carrier-pigeon"] }), /no known transport/);
});

test("Timing: a client's own publish timed from publish to arrival, whichever side comes first", () => {
  const { Timing } = globalThis.Halley._internal;
  const t = new Timing();
  // The answer first, then the push.
  assert.equal(t.published("e-1", 100, 105), null);
  assert.equal(t.arrived("e-1", 130), 30);
  // The push first (common: the push beats the HTTP answer).
  assert.equal(t.arrived("e-2", 140), null);
  assert.equal(t.published("e-2", 120, 150), 20);
  // Others' messages are not timed, and each id once.
  assert.equal(t.arrived("e-3", 160), null);
  assert.equal(t.arrived("e-1", 170), null);
  // Bounded.
  for (let i = 0; i < 1000; i++) t.arrived(`x-${i}`, i);
  assert.ok(t.seen.size <= 64 && t.sent.size <= 64);
});
