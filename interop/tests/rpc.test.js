// Calls to the application and webhooks, driven by clients nobody here wrote: the official
// CometD client's remoteCall and Faye's publish to /service/**, against the halley binary with
// --rpc-url and --webhook-url pointing at a small application in this process. The webhook
// signature is checked with Node's own crypto, as an application would.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import crypto from "node:crypto";
import faye from "faye";
import { adapt } from "cometd-nodejs-client";
import { CometD } from "cometd";
import { startHalley, inbox } from "./harness.js";

adapt();

const SECRET = "interop-webhook-secret";

/** What the application got: webhook events, and RPC calls. */
const events = inbox();
const calls = [];

/** The application: /rpc answers calls by method, /events takes webhooks. */
function application() {
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const answer = (status, value) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(value));
      };
      if (req.url === "/events") {
        // What an application does with a webhook: check the signature, then use the events.
        const expected =
          "sha256=" + crypto.createHmac("sha256", SECRET).update(body).digest("hex");
        const given = req.headers["x-halley-signature"] ?? "";
        const valid =
          given.length === expected.length &&
          crypto.timingSafeEqual(Buffer.from(given), Buffer.from(expected));
        if (!valid) return answer(401, { error: "bad signature" });
        for (const event of JSON.parse(body).events) events.push(event);
        return answer(200, {});
      }
      const call = JSON.parse(body);
      calls.push(call);
      switch (call.method) {
        case "echo":
          return answer(200, { data: { echo: call.data, client: call.client } });
        case "fail":
          return answer(500, { error: "boom" });
        case "refuse":
          return answer(403, { error: "not for you" });
        default:
          return answer(404, { error: `no method ${call.method}` });
      }
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

let app;
let halley;
before(async () => {
  app = await application();
  const base = `http://127.0.0.1:${app.address().port}`;
  halley = await startHalley([
    "--hold-timeout", "5",
    "--rpc-url", `${base}/rpc`,
    "--webhook-url", `${base}/events`,
    "--webhook-secret", SECRET,
  ]);
});
after(async () => {
  await halley.stop();
  app.close();
});

function cometdClient(transport) {
  const cometd = new CometD();
  if (transport === "long-polling") {
    cometd.unregisterTransport("websocket");
    cometd.unregisterTransport("callback-polling");
  }
  cometd.configure({ url: halley.cometd, logLevel: "warn" });
  return cometd;
}

const handshake = (c) =>
  new Promise((resolve, reject) => c.handshake((r) => (r.successful ? resolve(r) : reject(new Error(JSON.stringify(r))))));
const remoteCall = (c, target, data) =>
  new Promise((resolve) => c.remoteCall(target, data, 5000, resolve));

for (const transport of ["websocket", "long-polling"]) {
  test(`cometd ${transport}: remoteCall gets the application's answer, or its failure`, async () => {
    const cometd = cometdClient(transport);
    const shook = await handshake(cometd);
    assert.equal(cometd.getTransport().type, transport);
    const reply = await remoteCall(cometd, "echo", { n: 1 });
    assert.equal(reply.successful, true, JSON.stringify(reply));
    assert.deepEqual(reply.data, { echo: { n: 1 }, client: shook.clientId });
    assert.equal(calls.at(-1).channel, "/service/echo");

    const failed = await remoteCall(cometd, "fail", {});
    assert.equal(failed.successful, false, JSON.stringify(failed));
    assert.match(failed.error, /^502:\/service\/fail:/);
    const refused = await remoteCall(cometd, "refuse", {});
    assert.equal(refused.successful, false, JSON.stringify(refused));
    assert.equal(refused.error, "403:/service/refuse:not for you");
    await new Promise((resolve) => cometd.disconnect(resolve));
  });
}

test("faye: a publish to /service/** is acknowledged when the application answers, failed when it fails", async () => {
  const client = new faye.Client(halley.cometd, { timeout: 10, retry: 1 });
  await client.publish("/service/echo", { from: "faye" });
  assert.deepEqual(calls.at(-1).data, { from: "faye" });
  // A publication is a thenable, not a Promise.
  const failed = new Promise((resolve, reject) => client.publish("/service/fail", {}).then(resolve, reject));
  await assert.rejects(failed, (e) => e.code === 502);
  await client.disconnect();
});

test("webhooks: signed batches of occupancy events reach the application", async () => {
  const cometd = cometdClient("websocket");
  await handshake(cometd);
  await new Promise((resolve, reject) =>
    cometd.subscribe("/interop/hooked", () => {}, (r) => (r.successful ? resolve() : reject(new Error(JSON.stringify(r))))),
  );
  for (;;) {
    const event = await events.next("the channel_occupied webhook");
    if (event.channel === "/interop/hooked") {
      assert.equal(event.name, "channel_occupied");
      break;
    }
  }
  await new Promise((resolve) => cometd.disconnect(resolve));
});
