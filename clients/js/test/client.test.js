// The client's connection logic in Node, with fake WebSocket and EventSource classes standing in
// for the browser's: one connection for a burst of subscribes, dispatch by channel, resume and
// dedupe across reconnects, gaps, planned reconnects, idling, stepping down.
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

const clients = [];
function client(options) {
  FakeWebSocket.all = [];
  FakeEventSource.all = [];
  globalThis.WebSocket = FakeWebSocket;
  globalThis.EventSource = FakeEventSource;
  const h = new Halley("http://halley.test", {
    share: false,
    transports: ["websocket"],
    debounce: 5,
    backoff: { base: 5, max: 20 },
    ...options,
  });
  const log = { states: [], transports: [], gaps: [], messages: [] };
  h.on("state", (s) => log.states.push(s.state));
  h.on("transport", (t) => log.transports.push(t));
  h.on("gap", (g) => log.gaps.push(g));
  clients.push(h);
  return { h, log };
}
afterEach(() => {
  for (const h of clients.splice(0)) h.close();
  delete globalThis.WebSocket;
  delete globalThis.EventSource;
});


test("a burst of subscribes is one connection carrying every channel", async () => {
  const { h, log } = client();
  const got = [];
  h.subscribe("/a", (data) => got.push(["a", data]));
  h.subscribe("/b", (data) => got.push(["b", data]));
  h.subscribe("/c/**", (data, m) => got.push(["c", data, m.channel]));
  await until(() => sockets().length === 1, "a socket");
  assert.equal(last().url, "ws://halley.test/sub/a?channel=%2Fb&channel=%2Fc%2F**&position=1");
  assert.deepEqual(log.states, ["connecting"]);
  last().accept();
  assert.equal(h.state, "connected");
  assert.equal(h.transport, "websocket");
  last().deliver({ channel: "/a", id: "e-1", data: 1 });
  last().deliver({ channel: "/c/x/y", id: "e-2", data: 2 });
  last().deliver({ channel: "/b", id: "e-3", data: 3 });
  assert.deepEqual(got, [["a", 1], ["c", 2, "/c/x/y"], ["b", 3]]);
  assert.equal(h.lastId, "e-3");
  assert.equal(sockets().length, 1);
});

test("a dropped connection resumes from the last id; replayed messages are not delivered twice", async () => {
  const { h, log } = client();
  const got = [];
  h.subscribe("/a", (data, m) => got.push(m.id));
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ channel: "/a", id: "e-1", data: 1 });
  last().deliver({ channel: "/a", id: "e-2", data: 2 });
  last().drop();
  assert.equal(h.state, "reconnecting");
  await until(() => sockets().length === 2, "a second socket");
  assert.deepEqual(param(last().url, "last_id"), ["e-2"]);
  last().accept();
  for (const id of ["e-1", "e-2", "e-3", "e-3", "e-4"]) last().deliver({ channel: "/a", id, data: 0 });
  assert.deepEqual(got, ["e-1", "e-2", "e-3", "e-4"]);
  assert.deepEqual(log.states, ["connecting", "connected", "reconnecting", "connected"]);
});

test("a gap control object is a gap event, and delivery goes on in the new epoch", async () => {
  const { h, log } = client();
  const got = [];
  h.subscribe("/a", (data, m) => got.push(m.id));
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ channel: "/a", id: "a1-7", data: 0 });
  last().drop();
  await until(() => sockets().length === 2, "a second socket");
  last().accept();
  last().deliver({ event: "gap", channel: "/a", last_id: "b2-0" });
  last().deliver({ channel: "/a", id: "b2-1", data: 0 });
  assert.deepEqual(log.gaps, [{ channel: "/a", lastId: "b2-0" }]);
  assert.deepEqual(got, ["a1-7", "b2-1"]);
  assert.equal(h.lastId, "b2-1");
});

test("a subscription change is a new connection with the same last id; the state stays connected", async () => {
  const { h, log } = client();
  const a = h.subscribe("/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ channel: "/a", id: "e-5", data: 0 });
  h.subscribe("/b", () => {});
  a.unsubscribe();
  await until(() => sockets().length === 2, "a second socket");
  assert.ok(sockets()[0].closed, "the old connection is closed");
  assert.equal(last().url, "ws://halley.test/sub/b?position=1&last_id=e-5");
  last().accept();
  assert.deepEqual(log.states, ["connecting", "connected"]);
});

test("with nothing subscribed the client is idle and holds no connection", async () => {
  const { h } = client();
  const a = h.subscribe("/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  a.unsubscribe();
  await until(() => h.state === "idle", "idle");
  assert.ok(last().closed);
  assert.equal(h.transport, null);
});

test("presence and inbox secrets ride the subscribe URL", async () => {
  const { h } = client({ member: "member-0001" });
  h.subscribe("/room", () => {}, { presence: { name: "al" } });
  h.setPresence("/lobby", { member: "custom-member", info: { name: "al" } });
  await until(() => sockets().length === 1, "a socket");
  assert.deepEqual(param(last().url, "channel"), ["/room"]);
  assert.deepEqual(
    param(last().url, "presence").map((p) => JSON.parse(p)),
    [
      { channel: "/lobby", member: "custom-member", info: { name: "al" } },
      { channel: "/room", member: "member-0001", info: { name: "al" } },
    ],
  );
  assert.throws(() => h.subscribe("/x", () => {}, { presence: { blob: "x".repeat(600) } }), /512 bytes/);
  assert.throws(() => h.subscribe("/inbox/abc", () => {}), /inbox/);
  assert.throws(() => h.subscribe("/meta/connect", () => {}), /cannot subscribe/);
  assert.throws(() => h.subscribe("/a/*", () => {}, { presence: { n: 1 } }), /exact channel/);
  assert.throws(() => h.subscribe("no-slash", () => {}), /bad channel/);
});

test("more than 16 channels are refused at subscribe", async () => {
  const { h } = client();
  for (let i = 0; i < 16; i++) h.subscribe(`/c/${i}`, () => {});
  h.subscribe("/c/0", () => {}); // a channel already there costs nothing
  assert.throws(() => h.subscribe("/c/16", () => {}), /at most 16/);
});

test("a missing transport is stepped over at once", async () => {
  const { h, log } = client({ transports: ["sse", "websocket"] });
  delete globalThis.EventSource;
  h.subscribe("/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  assert.deepEqual(log.transports, [{ transport: "websocket", from: "sse", reason: "missing" }]);
});

test("a transport that opens and is cut at once, three times, is given up", async () => {
  const { h, log } = client({ transports: ["websocket", "sse"] });
  h.subscribe("/a", () => {});
  for (let n = 1; n <= 3; n++) {
    await until(() => sockets().length === n, `socket ${n}`);
    last().accept();
    last().drop();
  }
  await until(() => FakeEventSource.all.length === 1, "an EventSource");
  assert.deepEqual(log.transports, [{ transport: "sse", from: "websocket", reason: "connect" }]);
  const es = FakeEventSource.all[0];
  assert.match(es.url, /^http:\/\/halley\.test\/sub\/a\?transport=sse&format=json&position=1$/);
  es.accept();
  const got = [];
  h.subscribe("/b", (data) => got.push(data));
  await until(() => FakeEventSource.all.length === 2, "a second EventSource");
  FakeEventSource.all[1].accept();
  FakeEventSource.all[1].onmessage({ data: JSON.stringify({ channel: "/b", id: "e-1", data: "hi" }) });
  FakeEventSource.all[1].emit("gap", { channel: "/b", last_id: "e-0" });
  assert.deepEqual(got, ["hi"]);
  assert.equal(log.gaps.length, 1);
});

test("a connection that delivered before it dropped is not held against its transport", async () => {
  const { h, log } = client({ transports: ["websocket", "sse"] });
  h.subscribe("/a", () => {});
  for (let n = 1; n <= 5; n++) {
    await until(() => sockets().length === n, `socket ${n}`);
    last().accept();
    last().deliver({ channel: "/a", id: `e-${n}`, data: n });
    last().drop();
  }
  await until(() => sockets().length === 6, "socket 6");
  assert.deepEqual(log.transports, []);
  assert.equal(FakeEventSource.all.length, 0);
});

test("close() ends everything and says so", async () => {
  const { h, log } = client();
  h.subscribe("/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  h.close();
  assert.ok(last().closed);
  assert.equal(h.state, "closed");
  assert.equal(log.states.at(-1), "closed");
  assert.throws(() => h.subscribe("/a", () => {}), /closed/);
});

test("the same gap told again (a poll resuming from the same id) is one gap event", async () => {
  const { h, log } = client();
  h.subscribe("/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ channel: "/a", id: "a1-3", data: 0 });
  last().deliver({ event: "gap", channel: "/a", last_id: "a1-3" });
  last().deliver({ event: "gap", channel: "/a", last_id: "a1-3" });
  assert.equal(log.gaps.length, 1);
  last().deliver({ channel: "/a", id: "b2-1", data: 0 });
  last().deliver({ event: "gap", channel: "/a", last_id: "b2-1" });
  assert.equal(log.gaps.length, 2, "a gap after newer messages is news");
});

test("a stream's opening position is where a reconnect resumes, even with no message yet", async () => {
  const { h } = client();
  h.subscribe("/a", () => {});
  await until(() => sockets().length === 1, "a socket");
  last().accept();
  last().deliver({ event: "position", last_id: "e-41" });
  assert.equal(h.lastId, "e-41");
  last().drop();
  await until(() => sockets().length === 2, "a second socket");
  assert.deepEqual(param(last().url, "last_id"), ["e-41"]);
});

test("SSE counts as open at its first event, not at its headers (a proxy may pass those alone)", async () => {
  const { h, log } = client({ transports: ["sse", "websocket"], flushTimeout: 30 });
  h.subscribe("/a", () => {});
  await until(() => FakeEventSource.all.length === 1, "an EventSource");
  FakeEventSource.all[0].onopen?.({}); // headers, and then nothing
  assert.equal(h.state, "connecting");
  await until(() => log.transports.length === 1, "a step down");
  assert.deepEqual(log.transports, [{ transport: "websocket", from: "sse", reason: "buffered" }]);
  assert.ok(FakeEventSource.all[0].closed);
});

test("recent: the newest messages first on the first connection, and for a channel added to a resumed one", async () => {
  const { h } = client();
  const got = [];
  h.subscribe("/a", (data, m) => got.push(m.id), { recent: 3 });
  await until(() => sockets().length === 1, "a socket");
  assert.deepEqual(param(last().url, "recent"), ["3"]);
  assert.deepEqual(param(last().url, "added"), ["/a"]);
  last().accept();
  for (const id of ["e-2", "e-4", "e-5", "e-7"]) last().deliver({ channel: "/a", id, data: 0 });
  // Resumed after a drop: a resume, not the newest again.
  last().drop();
  await until(() => sockets().length === 2, "a second socket");
  assert.deepEqual(param(last().url, "recent"), []);
  last().accept();
  // A channel added with recent: the new connection asks for it alone; its messages at or
  // before the last id are delivered (once), and the position does not go back.
  h.subscribe("/b", (data, m) => got.push("b " + m.id), { recent: 2 });
  await until(() => sockets().length === 3, "a third socket");
  assert.deepEqual(param(last().url, "recent"), ["2"]);
  assert.deepEqual(param(last().url, "added"), ["/b"]);
  assert.deepEqual(param(last().url, "last_id"), ["e-7"]);
  last().accept();
  for (const [channel, id, recent] of [["/b", "e-3", true], ["/b", "e-6", true], ["/a", "e-6", true], ["/b", "e-6", true], ["/b", "e-1"], ["/b", "e-8"]]) {
    last().deliver({ channel, id, data: 0, recent });
  }
  assert.deepEqual(got, ["e-2", "e-4", "e-5", "e-7", "b e-3", "b e-6", "b e-8"]);
  assert.equal(h.lastId, "e-8");
  assert.throws(() => h.subscribe("/c/*", () => {}, { recent: 2 }), /exact channel/);
  assert.throws(() => h.subscribe("/c", () => {}, { recent: 101 }), /1 to 100/);
});
