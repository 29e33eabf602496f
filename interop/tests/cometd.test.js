// The official CometD JavaScript client (npm cometd + cometd-nodejs-client), unmodified.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { adapt } from "cometd-nodejs-client";
import { CometD, AckExtension } from "cometd";
import { startHalley, inbox, until, lossyProxy } from "./harness.js";

adapt();

let halley;
before(async () => {
  halley = await startHalley(["--hold-timeout", "5"]);
});
after(async () => {
  await halley.stop();
});

function client(url, transport, configure = {}) {
  const cometd = new CometD();
  if (transport === "long-polling") {
    cometd.unregisterTransport("websocket");
    cometd.unregisterTransport("callback-polling");
  }
  cometd.configure({ url, logLevel: "warn", ...configure });
  return cometd;
}

const call = (fn) =>
  new Promise((resolve, reject) =>
    fn((reply) => (reply.successful ? resolve(reply) : reject(new Error(JSON.stringify(reply))))),
  );
const handshake = (c) => call((cb) => c.handshake(cb));
const subscribe = (c, channel, box) =>
  new Promise((resolve, reject) => {
    const sub = c.subscribe(channel, (m) => box.push(m), (reply) =>
      reply.successful ? resolve(sub) : reject(new Error(JSON.stringify(reply))),
    );
  });
const publish = (c, channel, data) => call((cb) => c.publish(channel, data, cb));
const unsubscribe = (c, sub) => call((cb) => c.unsubscribe(sub, cb));
const disconnect = (c) => call((cb) => c.disconnect(cb));

for (const transport of ["websocket", "long-polling"]) {
  test(`cometd ${transport}: handshake, subscribe, publish, receive, unsubscribe, disconnect`, async () => {
    const cometd = client(halley.cometd, transport);
    await handshake(cometd);
    assert.equal(cometd.getTransport().type, transport);
    const box = inbox();
    const sub = await subscribe(cometd, `/interop/${transport}`, box);
    await publish(cometd, `/interop/${transport}`, { text: "hello", n: 1 });
    const message = await box.next();
    assert.equal(message.channel, `/interop/${transport}`);
    assert.deepEqual(message.data, { text: "hello", n: 1 });
    await unsubscribe(cometd, sub);
    const rows = await (await fetch(`${halley.base}/api/channels?prefix=/interop/${transport}`)).json();
    assert.ok(rows.every((r) => r.subscribers === 0), JSON.stringify(rows));
    await disconnect(cometd);
    assert.ok(cometd.isDisconnected());
  });
}

test("cometd wildcard subscription and delivery from the native publish API", async () => {
  const cometd = client(halley.cometd, "websocket");
  await handshake(cometd);
  const box = inbox();
  await subscribe(cometd, "/native/**", box);
  const res = await fetch(`${halley.base}/pub/native/a/b`, { method: "POST", body: "from POST /pub" });
  assert.equal(res.status, 200);
  const message = await box.next();
  assert.equal(message.channel, "/native/a/b");
  assert.equal(message.data, "from POST /pub");
  await disconnect(cometd);
});

test("cometd publish reaches a native SSE subscriber", async () => {
  const cometd = client(halley.cometd, "long-polling");
  await handshake(cometd);
  const controller = new AbortController();
  const sse = await fetch(`${halley.base}/sub/bridge/x`, {
    headers: { accept: "text/event-stream" },
    signal: controller.signal,
  });
  assert.equal(sse.status, 200);
  await publish(cometd, "/bridge/x", { from: "cometd" });
  const reader = sse.body.getReader();
  let text = "";
  while (!text.includes('data: {"from":"cometd"}')) {
    const { value, done } = await reader.read();
    assert.ok(!done, "stream ended early");
    text += new TextDecoder().decode(value);
  }
  controller.abort();
  await disconnect(cometd);
});

test("meta-channel tricks are refused (Faye CVE-2020-11020 family)", async () => {
  // The official client refuses these itself, so they go over raw HTTP: it is the server
  // that must hold the line against any client.
  const post = async (batch) =>
    (await fetch(halley.cometd, { method: "POST", body: JSON.stringify(batch) })).json();
  const [hs] = await post([{ channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"] }]);
  const clientId = hs.clientId;
  const replies = await post([
    { channel: "/meta/subscribe/x", clientId, subscription: "/secret", id: "1" },
    { channel: "/meta/subscribe", clientId, subscription: "/meta/*", id: "2" },
    { channel: "/meta/subscribe", clientId, subscription: "/meta/connect", id: "3" },
    { channel: "/a/*", clientId, data: 1, id: "4" },
    { channel: "/meta/connect", clientId: "forged", id: "5" },
  ]);
  const errors = Object.fromEntries(replies.map((r) => [r.id, [r.successful, r.error]]));
  assert.deepEqual(errors, {
    1: [false, "403:/meta/subscribe/x:Unknown meta channel"],
    2: [false, "403:/meta/*:Forbidden"],
    3: [false, "403:/meta/connect:Forbidden"],
    4: [false, "405:/a/*:cannot publish to a wildcard"],
    5: [false, "402::Unknown client"],
  });
  assert.equal(replies.find((r) => r.id === "5").advice.reconnect, "handshake");
  // Nothing was subscribed: a publish to /secret reaches no one.
  const res = await (await fetch(`${halley.base}/pub/secret`, { method: "POST", body: "x" })).json();
  assert.equal(res.subscribers, 0);
});

async function ackRun(withAck) {
  const proxy = await lossyProxy(halley.port);
  const cometd = client(proxy.url, "long-polling", { backoffIncrement: 50, maxBackoff: 200 });
  let serverAck;
  cometd.addListener("/meta/handshake", (m) => (serverAck = m.ext?.ack));
  if (withAck) cometd.registerExtension("ack", new AckExtension());
  await handshake(cometd);
  const channel = `/ack/${withAck}`;
  const box = inbox();
  await subscribe(cometd, channel, box);
  // The response that carries "first" is lost on the way to the client.
  const swallowed = proxy.swallowResponseContaining('"data":"first"');
  await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: "first" });
  await swallowed;
  await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: "second" });
  await until(() => box.items.some((m) => m.data === "second"), "the second message");
  const received = box.items.map((m) => m.data);
  await disconnect(cometd);
  await proxy.close();
  return { serverAck, received };
}

test("cometd AckExtension: ack enabled, nothing lost across a forced reconnect", async () => {
  const { serverAck, received } = await ackRun(true);
  assert.equal(serverAck, true, "handshake reply carries ext.ack = true");
  assert.deepEqual(received, ["first", "second"]);
});

test("control: without the ack extension the swallowed message is lost", async () => {
  const { received } = await ackRun(false);
  assert.deepEqual(received, ["second"]);
});

for (const transport of ["websocket", "long-polling"]) {
  test(`cometd ${transport}: subscribe with ext.recent gets the channel's newest first, then live, none twice`, async () => {
    const channel = `/interop/recent/${transport}`;
    for (let i = 1; i <= 8; i++) {
      const r = await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: String(i) });
      assert.equal(r.status, 200);
    }
    const cometd = client(halley.cometd, transport);
    await handshake(cometd);
    const box = inbox();
    // The subscribe message's fields come from the client's subscribeProps, unmodified client.
    await new Promise((resolve, reject) => {
      cometd.subscribe(channel, (m) => box.push(m), { ext: { recent: 3 } }, (reply) =>
        reply.successful ? resolve() : reject(new Error(JSON.stringify(reply))),
      );
    });
    const r = await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: "9" });
    assert.equal(r.status, 200);
    const got = [];
    for (let i = 0; i < 4; i++) {
      const m = await box.next();
      got.push([m.data, m.recent === true]);
    }
    assert.deepEqual(got, [["6", true], ["7", true], ["8", true], ["9", false]]);
    await disconnect(cometd);
  });
}
