// The Faye node client (npm faye), unmodified, and Faye ↔ CometD across protocols.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import faye from "faye";
import { adapt } from "cometd-nodejs-client";
import { CometD } from "cometd";
import { startHalley, inbox, until, metric } from "./harness.js";

adapt();

let halley;
before(async () => {
  halley = await startHalley(["--hold-timeout", "5"]);
});
after(async () => {
  await halley.stop();
});

function fayeClient(transport) {
  const client = new faye.Client(halley.cometd, { timeout: 10, retry: 1 });
  if (transport === "long-polling") {
    client.disable("websocket");
    client.disable("eventsource");
  }
  return client;
}

/**
 * Disconnects a Faye client for good. Its disconnect() does nothing before the handshake is
 * through, and a client left running retries for ever — after Halley stopped that kept this
 * test process alive (seen once in CI).
 */
async function disconnect(client) {
  await until(() => client._state === client.CONNECTED, "the faye client to be connected");
  await client.disconnect();
}

for (const transport of ["websocket", "long-polling"]) {
  test(`faye ${transport}: handshake, subscribe, publish, receive, unsubscribe, disconnect`, async () => {
    const client = fayeClient(transport);
    const box = inbox();
    const channel = `/faye/${transport.replace("-", "_")}`;
    const sub = client.subscribe(channel, (m) => box.push(m));
    await sub;
    if (transport === "websocket") {
      await until(
        async () => (await metric(halley.base, 'halley_subscribers{transport="websocket"}')) >= 1,
        "faye to move to websocket",
      );
    }
    await client.publish(channel, { text: "hi from faye" });
    assert.deepEqual(await box.next(), { text: "hi from faye" });
    await sub.cancel();
    await until(async () => {
      const rows = await (await fetch(`${halley.base}/api/channels?prefix=${channel}`)).json();
      return rows.every((r) => r.subscribers === 0);
    }, "unsubscribe");
    await disconnect(client);
  });
}

test("faye publishes, the official cometd client receives", async () => {
  const cometd = new CometD();
  cometd.configure({ url: halley.cometd, logLevel: "warn" });
  await new Promise((resolve, reject) => cometd.handshake((r) => (r.successful ? resolve() : reject(r))));
  const box = inbox();
  await new Promise((resolve, reject) =>
    cometd.subscribe("/cross/room", (m) => box.push(m), (r) => (r.successful ? resolve() : reject(r))),
  );
  const client = fayeClient("websocket");
  await client.publish("/cross/room", { from: "faye" });
  const message = await box.next();
  assert.deepEqual(message.data, { from: "faye" });
  await disconnect(client);
  await new Promise((resolve) => cometd.disconnect(resolve));
});

test("faye long-polling: an extension's ext.recent on /meta/subscribe gets the channel's newest first", async () => {
  const channel = "/faye/recent";
  for (let i = 1; i <= 6; i++) {
    const r = await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: JSON.stringify({ n: i }), headers: { "content-type": "application/json" } });
    assert.equal(r.status, 200);
  }
  const client = fayeClient("long-polling");
  // Faye's documented way to add fields to its messages: an outgoing extension.
  client.addExtension({
    outgoing(message, callback) {
      if (message.channel === "/meta/subscribe") message.ext = { ...(message.ext || {}), recent: 2 };
      callback(message);
    },
  });
  const box = inbox();
  await client.subscribe(channel, (m) => box.push(m));
  const r = await fetch(`${halley.base}/pub${channel}`, { method: "POST", body: JSON.stringify({ n: 7 }), headers: { "content-type": "application/json" } });
  assert.equal(r.status, 200);
  const got = [];
  for (let i = 0; i < 3; i++) got.push((await box.next()).n);
  assert.deepEqual(got, [5, 6, 7]);
  await disconnect(client);
});
