// halley.js, the browser client, in headless Chromium against the real binary: every transport
// forced in turn, fallback when the browser lacks one, JSONP across origins without CORS, a
// buffering proxy, resume across a cut connection, and one upstream connection for many tabs.
// Pages come from a static server on another origin than Halley's (as on a site embedding it).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startHalley, until, metric, WAIT_MS } from "./harness.js";
import { launch, staticServer, PAGES } from "./browser.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENT = path.join(here, "..", "..", "clients", "js");
/** Short backoff so that reconnects in tests take milliseconds, not seconds. */
const FAST = { backoff: { base: 50, max: 400 }, share: false };

let halley, site, browser;
before(async () => {
  halley = await startHalley(["--hold-timeout", "5"]);
  site = await staticServer({ "/pages/": PAGES, "/js/": CLIENT });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await site?.close();
  await halley?.stop();
});

async function openPage(context = browser, file = "index.html") {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`${site.base}/pages/halley-js/${file}`);
  return page;
}

async function publish(base, channel, data) {
  const res = await fetch(`${base}/pub${channel}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(data),
  });
  assert.equal(res.status, 200);
  return res.json();
}

/** Resolves once `channel` has at least `n` subscribers on the server (held polls count). */
async function subscribed(base, channel, n = 1) {
  await until(async () => {
    const rows = await (await fetch(`${base}/api/channels?prefix=${encodeURIComponent(channel)}`)).json();
    return rows.some((r) => r.channel === channel && r.subscribers >= n);
  }, `${n} subscriber(s) of ${channel}`);
}

async function waitFor(page, fn, arg) {
  await page.waitForFunction(fn, arg, { timeout: WAIT_MS });
}

/** Publishes `data` once the server holds the page's subscription; the page must get exactly it. */
async function deliversTo(page, channel, data) {
  await subscribed(halley.base, channel);
  const sent = await publish(halley.base, channel, data);
  await waitFor(page, () => window.received.length >= 1);
  assert.deepEqual(await page.evaluate(() => window.received), [{ channel, id: sent.id, data }]);
  return sent;
}

async function closePage(page) {
  await page.evaluate(() => window.h.close());
  await page.close();
}

for (const transport of ["websocket", "sse", "stream", "longpoll", "jsonp"]) {
  test(`forced ${transport}: subscribe, receive, publish`, async () => {
    const page = await openPage();
    const channel = `/js/forced/${transport}`;
    await page.evaluate(
      ([base, opts, channel]) => window.start(base, opts, [channel]),
      [halley.base, { ...FAST, transports: [transport] }, channel],
    );
    await deliversTo(page, channel, { n: 1, via: transport });
    assert.equal(await page.evaluate(() => window.h.transport), transport);
    // Polls come and go: wait for the next one to be held rather than catch the gap between.
    await until(
      async () => (await metric(halley.base, `halley_subscribers{transport="${transport}"}`)) >= 1,
      `the server to count a ${transport} subscriber`,
    );
    // And the page publishes back: the same channel delivers it to itself once.
    const back = await page.evaluate(([channel]) => window.h.publish(channel, { from: "page" }), [channel]);
    assert.equal(back.channel, channel);
    await waitFor(page, () => window.received.length >= 2);
    assert.deepEqual((await page.evaluate(() => window.received))[1], { channel, id: back.id, data: { from: "page" } });
    await closePage(page);
  });
}

test("without WebSocket and EventSource the client falls back and still receives", async () => {
  const page = await openPage();
  const channel = "/js/fallback";
  await page.evaluate(
    ([base, opts, channel]) => {
      delete window.WebSocket;
      delete window.EventSource;
      return window.start(base, opts, [channel]);
    },
    [halley.base, FAST, channel],
  );
  await waitFor(page, () => window.h.state === "connected");
  const transport = await page.evaluate(() => window.h.transport);
  assert.ok(["stream", "longpoll"].includes(transport), `fell back to ${transport}`);
  const steps = await page.evaluate(() => window.transports.map((t) => [t.from, t.transport, t.reason]));
  assert.deepEqual(steps.slice(0, 2), [
    ["websocket", "sse", "missing"],
    ["sse", "stream", "missing"],
  ]);
  await deliversTo(page, channel, "after fallback");
  await closePage(page);
});

test("halley.js imported from an ES module page", async () => {
  const page = await openPage(browser, "module.html");
  await waitFor(page, () => window.ready === true);
  const channel = "/js/module";
  await page.evaluate(([base, opts, channel]) => window.start(base, opts, channel), [halley.base, FAST, channel]);
  await deliversTo(page, channel, { esm: true });
  await closePage(page);
});

test("JSONP from another origin with no fetch, XHR, WebSocket or EventSource: subscribe and publish", async () => {
  const page = await openPage();
  const channel = "/js/jsonp-only";
  await page.evaluate(
    ([base, opts, channel]) => {
      // Script tags are all that is left: no CORS request can be made at all.
      for (const name of ["fetch", "XMLHttpRequest", "WebSocket", "EventSource"]) delete window[name];
      return window.start(base, opts, [channel]);
    },
    [halley.base, { ...FAST, transports: ["jsonp"] }, channel],
  );
  assert.notEqual(new URL(site.base).port, new URL(halley.base).port, "the page is on another origin");
  await subscribed(halley.base, channel);
  const sent = await publish(halley.base, channel, { to: "page" });
  await waitFor(page, () => window.received.length >= 1);
  const back = await page.evaluate(([channel]) => window.h.publish(channel, { from: "page" }), [channel]);
  assert.match(back.id, /^[0-9a-f]+-\d+$/);
  await waitFor(page, () => window.received.length >= 2);
  assert.deepEqual(await page.evaluate(() => window.received), [
    { channel, id: sent.id, data: { to: "page" } },
    { channel, id: back.id, data: { from: "page" } },
  ]);
  await closePage(page);
});

/**
 * An HTTP proxy that buffers: it holds each response body until the upstream one has ended, as
 * a misconfigured gateway does — with `headersFirst`, after passing the headers on at once.
 * Streams never end, so nothing of their bodies gets through; long-poll answers do. It does not
 * pass WebSocket upgrades either.
 */
function bufferingProxy(targetPort, { headersFirst = false } = {}) {
  const server = http.createServer((req, res) => {
    const upstream = http.request(
      { host: "127.0.0.1", port: targetPort, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        const chunks = [];
        const headers = { ...answer.headers };
        delete headers["transfer-encoding"];
        delete headers.connection;
        if (headersFirst) {
          res.writeHead(answer.statusCode, headers);
          res.flushHeaders();
        }
        answer.on("data", (c) => chunks.push(c));
        answer.on("end", () => {
          const body = Buffer.concat(chunks);
          if (!headersFirst) {
            headers["content-length"] = String(body.length);
            res.writeHead(answer.statusCode, headers);
          }
          res.end(body);
        });
        answer.on("error", () => res.destroy());
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on("upgrade", (req, socket) => socket.destroy());
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        base: `http://127.0.0.1:${server.address().port}`,
        close: () => {
          server.closeAllConnections();
          return new Promise((r) => server.close(r));
        },
      }),
    ),
  );
}

for (const headersFirst of [false, true]) {
  test(`behind a proxy that buffers ${headersFirst ? "bodies (headers pass)" : "whole responses"} the client steps down to long-poll and still delivers`, async () => {
    const proxy = await bufferingProxy(halley.port, { headersFirst });
    const page = await openPage();
    const channel = `/js/buffered/${headersFirst}`;
    await page.evaluate(
      ([base, opts, channel]) => window.start(base, opts, [channel]),
      [proxy.base, { ...FAST, flushTimeout: 1500 }, channel],
    );
    await waitFor(page, () => window.h.transport === "longpoll" && window.h.state === "connected");
    const steps = await page.evaluate(() => window.transports.map((t) => [t.from, t.transport, t.reason]));
    assert.deepEqual(steps.slice(-2), [
      ["sse", "stream", "buffered"],
      ["stream", "longpoll", "buffered"],
    ]);
    await deliversTo(page, channel, "through the proxy");
    await closePage(page);
    await proxy.close();
  });
}

/**
 * A TCP proxy we can cut: `cut()` drops every connection, `down` refuses new ones,
 * `refuseUpgrades` drops WebSocket handshakes only (counting them in `upgradesRefused`), and
 * `target` says which Halley the next connections go to.
 */
function cuttableProxy(targetPort) {
  const sockets = new Set();
  const state = { down: false, refuseUpgrades: false, upgradesRefused: 0, target: targetPort };
  const server = net.createServer((client) => {
    if (state.down) return client.destroy();
    if (state.refuseUpgrades) {
      client.once("data", (head) => {
        if (/^upgrade:\s*websocket/im.test(head.toString("latin1"))) {
          state.upgradesRefused += 1;
          return client.destroy();
        }
        client.pause();
        client.unshift(head);
        connect(client);
      });
      return;
    }
    connect(client);
  });
  const connect = (client) => {
    const upstream = net.connect(state.target, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  };
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve(
        Object.assign(state, {
          base: `http://127.0.0.1:${server.address().port}`,
          cut() {
            for (const s of sockets) s.destroy();
          },
          close() {
            this.cut();
            return new Promise((r) => server.close(r));
          },
        }),
      ),
    ),
  );
}

for (const transport of ["websocket", "sse", "stream", "longpoll", "jsonp"]) {
  test(`resume over ${transport} after the connection is cut: no loss, no duplicates`, async () => {
    const proxy = await cuttableProxy(halley.port);
    const page = await openPage();
    const channel = `/js/resume/${transport}`;
    await page.evaluate(
      ([base, opts, channel]) => window.start(base, opts, [channel]),
      [proxy.base, { ...FAST, transports: [transport] }, channel],
    );
    await subscribed(halley.base, channel);
    const ids = [(await publish(halley.base, channel, 1)).id];
    await waitFor(page, () => window.received.length >= 1);

    // Cut the connection and keep the way back closed while two messages are published.
    proxy.down = true;
    proxy.cut();
    await until(async () => {
      const rows = await (await fetch(`${halley.base}/api/channels?prefix=${channel}`)).json();
      return rows.every((r) => r.subscribers === 0);
    }, "the server to see the subscriber gone");
    ids.push((await publish(halley.base, channel, 2)).id);
    ids.push((await publish(halley.base, channel, 3)).id);
    proxy.down = false;

    await waitFor(page, () => window.received.length >= 3);
    // One more after the reconnect: had anything been delivered twice, it would show now.
    await subscribed(halley.base, channel);
    ids.push((await publish(halley.base, channel, 4)).id);
    await waitFor(page, () => window.received.length >= 4);
    const received = await page.evaluate(() => window.received);
    assert.deepEqual(received.map((m) => m.id), ids);
    assert.deepEqual(received.map((m) => m.data), [1, 2, 3, 4]);
    assert.equal(await page.evaluate(() => window.h.transport), transport);
    assert.deepEqual(await page.evaluate(() => window.gaps), []);
    await closePage(page);
    await proxy.close();
  });
}

for (const transport of ["websocket", "sse", "stream", "longpoll", "jsonp"]) {
  test(`resume over ${transport} when the connection is cut before its first message`, async () => {
    const proxy = await cuttableProxy(halley.port);
    const page = await openPage();
    const channel = `/js/resume-early/${transport}`;
    await page.evaluate(
      ([base, opts, channel]) => window.start(base, opts, [channel]),
      [proxy.base, { ...FAST, transports: [transport] }, channel],
    );
    await subscribed(halley.base, channel);
    // The stream said where it starts (polls: their answers' position).
    await waitFor(page, () => window.h.lastId !== null);
    proxy.down = true;
    proxy.cut();
    await until(async () => {
      const rows = await (await fetch(`${halley.base}/api/channels?prefix=${channel}`)).json();
      return rows.every((r) => r.subscribers === 0);
    }, "the server to see the subscriber gone");
    const sent = await publish(halley.base, channel, "while away");
    proxy.down = false;
    await waitFor(page, () => window.received.length >= 1);
    assert.deepEqual(await page.evaluate(() => window.received), [{ channel, id: sent.id, data: "while away" }]);
    await closePage(page);
    await proxy.close();
  });
}

for (const transport of ["websocket", "sse", "stream", "longpoll", "jsonp"]) {
  test(`over ${transport}, a server that lost its history (restart, new epoch) shows up as a gap event`, async () => {
    const other = await startHalley(["--hold-timeout", "5"]);
    const proxy = await cuttableProxy(halley.port);
    const page = await openPage();
    const channel = `/js/gap/${transport}`;
    await page.evaluate(
      ([base, opts, channel]) => window.start(base, opts, [channel]),
      [proxy.base, { ...FAST, transports: [transport] }, channel],
    );
    await subscribed(halley.base, channel);
    await publish(halley.base, channel, "before");
    await waitFor(page, () => window.received.length >= 1);
    // The "restarted" server: another process, another epoch, behind the same address.
    proxy.target = other.port;
    proxy.cut();
    await waitFor(page, () => window.gaps.length >= 1);
    await subscribed(other.base, channel);
    const after = await publish(other.base, channel, "after");
    await waitFor(page, () => window.received.length >= 2);
    assert.deepEqual((await page.evaluate(() => window.received)).map((m) => [m.id, m.data]).slice(1), [[after.id, "after"]]);
    assert.equal(await page.evaluate(() => window.h.lastId), after.id);
    assert.equal(await page.evaluate(() => window.gaps.length), 1, "one gap, not one per reconnect");
    await closePage(page);
    await proxy.close();
    await other.stop();
  });
}

test("three tabs of one origin share one upstream connection; when the leader closes another takes over", async () => {
  // A Halley of its own, so that its gauges count this test's connections only.
  const own = await startHalley(["--hold-timeout", "5"]);
  const context = await browser.newContext();
  const tabs = [];
  for (let i = 0; i < 3; i++) {
    const page = await openPage(context);
    await page.evaluate(
      ([base, opts, channel]) => window.start(base, opts, [channel]),
      [own.base, { backoff: { base: 50, max: 400 }, transports: ["websocket"] }, `/js/tabs/${i}`],
    );
    tabs.push(page);
  }
  const roles = async () => Promise.all(tabs.map((p) => (p.isClosed() ? "closed" : p.evaluate(() => window.h.role))));
  await until(async () => (await roles()).sort().join() === "follower,follower,leader", "one leader, two followers");
  for (let i = 0; i < 3; i++) await subscribed(own.base, `/js/tabs/${i}`);
  const sockets = () => metric(own.base, 'halley_subscribers{transport="websocket"}');
  // A channel set change replaces the connection: the old one may take a moment to go.
  await until(async () => (await sockets()) === 1, "one WebSocket for three tabs");
  const held = await (await fetch(`${own.base}/metrics`)).text();
  for (const line of held.split("\n").filter((l) => l.startsWith("halley_subscribers{"))) {
    if (!line.includes('"websocket"')) assert.match(line, / 0$/, line);
  }

  // Each tab gets the messages of its own channel, once.
  const sent = [];
  for (let i = 0; i < 3; i++) sent.push(await publish(own.base, `/js/tabs/${i}`, { tab: i }));
  for (let i = 0; i < 3; i++) {
    await waitFor(tabs[i], () => window.received.length >= 1);
    assert.deepEqual(await tabs[i].evaluate(() => window.received), [{ channel: `/js/tabs/${i}`, id: sent[i].id, data: { tab: i } }]);
    assert.equal(await tabs[i].evaluate(() => window.h.state), "connected");
  }
  // A follower publishes too (directly: a publish holds no connection open).
  const follower = tabs[(await roles()).indexOf("follower")];
  const fromFollower = await follower.evaluate(() => window.h.publish("/js/tabs/0", "from a follower"));
  await waitFor(tabs[0], () => window.received.length >= 2);
  assert.equal((await tabs[0].evaluate(() => window.received))[1].id, fromFollower.id);

  // A follower's presence and inbox ride the leader's connection.
  const info = { name: "follower" };
  await follower.evaluate(([info]) => window.h.setPresence("/js/tabs/lobby", info), [info]);
  await until(async () => {
    const answer = await (await fetch(`${own.base}/api/presence?channel=/js/tabs/lobby`)).json();
    return answer.members.some((m) => m.name === "follower");
  }, "the follower's presence");
  const box = await follower.evaluate(() => window.h.inbox());
  // Sent at once: the leader's reconnect with the inbox resumes from before it, so it arrives.
  const ping = await fetch(box.url, { method: "POST", headers: { "content-type": "application/json" }, body: '"ping"' });
  assert.equal(ping.status, 200);
  await waitFor(follower, () => window.inboxed.length > 0);
  assert.deepEqual((await follower.evaluate(() => window.inboxed)).map((m) => m.data), ["ping"]);
  for (const t of tabs) assert.ok(!(await t.evaluate(() => window.received.some((m) => m.channel.startsWith("/inbox/")))));
  await until(async () => (await sockets()) === 1, "still one WebSocket");

  // Close the leader tab; publish at once, before anyone took over: nothing may be lost.
  const leader = (await roles()).indexOf("leader");
  await tabs[leader].close();
  const rest = [0, 1, 2].filter((i) => i !== leader);
  const afterClose = [];
  for (const i of rest) afterClose.push(await publish(own.base, `/js/tabs/${i}`, { after: i }));
  await until(async () => (await roles()).filter((r) => r === "leader").length === 1, "a new leader");
  for (const [k, i] of rest.entries()) {
    await waitFor(tabs[i], (id) => window.received.some((m) => m.id === id), afterClose[k].id);
  }
  await until(async () => (await sockets()) === 1, "one WebSocket again, the new leader's");
  for (const i of rest) {
    const ids = (await tabs[i].evaluate(() => window.received)).map((m) => m.id);
    assert.equal(new Set(ids).size, ids.length, `no duplicates in tab ${i}`);
  }
  // The follower's inbox survived the change of leader.
  const before = await follower.evaluate(() => window.inboxed.length);
  await fetch(box.url, { method: "POST", headers: { "content-type": "application/json" }, body: '"after"' });
  await waitFor(follower, (n) => window.inboxed.length > n, before);

  // A follower tab closing takes its channel off the shared connection.
  const newRoles = await roles();
  const gone = newRoles.indexOf("follower");
  await tabs[gone].close();
  await until(async () => {
    const rows = await (await fetch(`${own.base}/api/channels?prefix=/js/tabs/${gone}`)).json();
    return rows.every((r) => r.subscribers === 0);
  }, "the closed follower's channel to be dropped");
  await context.close();
  await own.stop();
});

/** A page whose client is started with `options` and no subscriptions yet. */
async function client(base, options, context = browser) {
  const page = await openPage(context);
  await page.evaluate(([base, opts]) => window.start(base, opts, []), [base, options]);
  return page;
}

test("presence: members declared with subscribe, join and leave notices, who is here, which rooms", async () => {
  const own = await startHalley(["--presence-grace", "1"]);
  const room = "/js/room/one";
  const watcher = await client(own.base, FAST);
  await watcher.evaluate(([room]) => window.h.subscribe(room, (data) => window.received.push(data)), [room]);
  await subscribed(own.base, room);

  const alice = await client(own.base, FAST);
  const info = { name: "alice", color: "#1e90ff" };
  await alice.evaluate(([room, info]) => window.h.subscribe(room, () => {}, { presence: info }), [room, info]);
  await waitFor(watcher, () => window.received.some((d) => d && d.presence === "join"));
  assert.deepEqual((await watcher.evaluate(() => window.received)).find((d) => d.presence === "join"), { presence: "join", info });

  assert.deepEqual(await watcher.evaluate(([room]) => window.h.presence(room), [room]), { channel: room, members: [info] });
  const rooms = await watcher.evaluate(() => window.h.rooms("/js/room"));
  assert.deepEqual(rooms.channels, [{ channel: room, count: 1, members: [info] }]);

  // The same over JSONP, from a page that cannot make a CORS request at all.
  const jsonp = await openPage();
  await jsonp.evaluate(
    ([base, opts]) => {
      for (const name of ["fetch", "XMLHttpRequest"]) delete window[name];
      return window.start(base, opts, []);
    },
    [own.base, { ...FAST, transports: ["jsonp"] }],
  );
  assert.deepEqual(await jsonp.evaluate(([room]) => window.h.presence(room), [room]), { channel: room, members: [info] });
  assert.equal((await jsonp.evaluate(() => window.h.rooms("/js/room"))).channels[0].count, 1);

  // Changing one's info is an update; leaving (after the grace period) a leave.
  const renamed = { name: "alice2", color: "#1e90ff" };
  await alice.evaluate(([room, info]) => window.h.setPresence(room, info), [room, renamed]);
  await waitFor(watcher, () => window.received.some((d) => d && d.presence === "update"));
  await alice.evaluate(() => window.h.close());
  await waitFor(watcher, () => window.received.some((d) => d && d.presence === "leave"));
  assert.deepEqual(await watcher.evaluate(([room]) => window.h.presence(room), [room]), { channel: room, members: [] });
  for (const p of [watcher, alice, jsonp]) await p.close();
  await own.stop();
});

for (const mode of ["cors", "jsonp"]) {
  test(`inbox over ${mode}: mint an address, receive what others send to it`, async () => {
    const opts = mode === "jsonp" ? { ...FAST, transports: ["jsonp"] } : FAST;
    const owner = await client(halley.base, opts);
    if (mode === "jsonp") await owner.evaluate(() => ["fetch", "XMLHttpRequest"].forEach((n) => delete window[n]));
    // A message first, so that the client has a position to resume from when the channel set
    // grows by the inbox: what is sent to the inbox from then on cannot be missed.
    const channel = `/js/inbox-owner/${mode}`;
    await owner.evaluate(([c]) => window.h.subscribe(c, (data) => window.received.push(data)), [channel]);
    await subscribed(halley.base, channel);
    await publish(halley.base, channel, "hello");
    await waitFor(owner, () => window.received.length >= 1);

    const box = await owner.evaluate(() => window.h.inbox());
    assert.match(box.channel, /^\/inbox\/[0-9a-f]+$/);
    assert.equal(box.url, `${halley.base}${box.channel}`);
    assert.deepEqual(await owner.evaluate(() => window.h.inbox()), box, "one inbox per client");

    const sender = await client(halley.base, opts);
    await sender.evaluate(([url]) => window.h.send(url, { psst: 1 }), [box.url]);
    const res = await fetch(box.url, { method: "POST", headers: { "content-type": "application/json" }, body: '{"from":"node"}' });
    assert.equal(res.status, 200);
    await waitFor(owner, () => window.inboxed.length >= 2);
    const got = await owner.evaluate(() => window.inboxed);
    assert.deepEqual(got.map((m) => m.data), [{ psst: 1 }, { from: "node" }], "JSON arrives as sent, JSONP too");
    assert.ok(got.every((m) => m.channel === box.channel));
    assert.deepEqual(await owner.evaluate(() => window.received), ["hello"], "inbox messages do not reach subscriptions");

    // Nobody else can subscribe to the address.
    const stolen = await fetch(`${halley.base}/sub${box.channel}?transport=longpoll`);
    assert.equal(stolen.status, 403);
    for (const p of [owner, sender]) {
      await p.evaluate(() => window.h.close());
      await p.close();
    }
  });
}

test("a burst of subscription changes is one reconnect carrying the whole channel set", async () => {
  const page = await openPage();
  const channels = [0, 1, 2, 3, 4].map((i) => `/js/burst/${i}`);
  await page.evaluate(
    ([base, opts, channels]) => {
      // Count the WebSockets the client opens.
      const Native = window.WebSocket;
      window.opened = 0;
      window.WebSocket = function (url) {
        window.opened += 1;
        return new Native(url);
      };
      window.start(base, opts, channels);
    },
    [halley.base, { ...FAST, transports: ["websocket"] }, channels],
  );
  for (const c of channels) await subscribed(halley.base, c);
  assert.equal(await page.evaluate(() => window.opened), 1, "five subscribes, one connection");
  const first = await publish(halley.base, channels[4], 4);
  await waitFor(page, () => window.received.length >= 1);

  // Drop two, add one, in one burst: one more connection, resuming from the same position.
  await page.evaluate(() => {
    window.subs["/js/burst/0"].unsubscribe();
    window.subs["/js/burst/1"].unsubscribe();
    window.h.subscribe("/js/burst/extra", (data, m) => window.received.push({ channel: m.channel, id: m.id, data }));
  });
  await subscribed(halley.base, "/js/burst/extra");
  assert.equal(await page.evaluate(() => window.opened), 2);
  assert.equal(await page.evaluate(() => window.h.state), "connected", "a planned reconnect is not a lost connection");
  const second = await publish(halley.base, "/js/burst/extra", "extra");
  await publish(halley.base, channels[0], "not any more");
  const third = await publish(halley.base, channels[2], 2);
  await waitFor(page, () => window.received.length >= 3);
  // In id order: had /js/burst/0 still been subscribed, its message would sit before the last.
  assert.deepEqual((await page.evaluate(() => window.received)).map((m) => m.id), [first.id, second.id, third.id]);
  const rows = await (await fetch(`${halley.base}/api/channels?prefix=/js/burst/`)).json();
  assert.deepEqual(rows.filter((r) => r.subscribers > 0).map((r) => r.channel).sort(), ["/js/burst/2", "/js/burst/3", "/js/burst/4", "/js/burst/extra"]);
  assert.ok(!(await page.evaluate(() => window.states.some((s) => s.state === "reconnecting"))));
  await closePage(page);
});

test("a transport that worked and then keeps failing to open is given up after three tries", async () => {
  const proxy = await cuttableProxy(halley.port);
  const page = await openPage();
  const channel = "/js/step-down";
  await page.evaluate(
    ([base, opts, channel]) => window.start(base, opts, [channel]),
    [proxy.base, { ...FAST, stepDownAfter: 3 }, channel],
  );
  await subscribed(halley.base, channel);
  const ids = [(await publish(halley.base, channel, "over websocket")).id];
  await waitFor(page, () => window.received.length >= 1);
  assert.equal(await page.evaluate(() => window.h.transport), "websocket");

  // From now on the way refuses WebSocket handshakes; everything else passes.
  proxy.refuseUpgrades = true;
  proxy.cut();
  ids.push((await publish(halley.base, channel, "while switching")).id);
  await waitFor(page, () => window.h.transport === "sse" && window.h.state === "connected");
  assert.equal(proxy.upgradesRefused, 3, "three failed tries, then the next transport");
  assert.deepEqual(await page.evaluate(() => window.transports), [{ transport: "sse", from: "websocket", reason: "connect" }]);
  await subscribed(halley.base, channel);
  ids.push((await publish(halley.base, channel, "over sse")).id);
  await waitFor(page, () => window.received.length >= 3);
  assert.deepEqual((await page.evaluate(() => window.received)).map((m) => m.id), ids);
  await closePage(page);
  await proxy.close();
});

test("served by Halley itself: /halley.js loads, and new Halley() talks to the page's origin", async () => {
  const own = await startHalley(["--assets", CLIENT]);
  const page = await browser.newPage();
  await page.goto(`${own.base}/healthz`);
  await page.addScriptTag({ url: "/halley.js" });
  const channel = "/js/same-origin";
  const url = await page.evaluate(([channel]) => {
    window.received = [];
    window.h = new Halley();
    window.h.subscribe(channel, (data) => window.received.push(data));
    return window.h.url;
  }, [channel]);
  assert.equal(url, own.base);
  await subscribed(own.base, channel);
  await page.evaluate(([channel]) => window.h.publish(channel, "same origin"), [channel]);
  await waitFor(page, () => window.received.length >= 1);
  assert.deepEqual(await page.evaluate(() => window.received), ["same origin"]);
  assert.equal(await page.evaluate(() => window.h.transport), "websocket");
  await page.close();
  await own.stop();
});

for (const transport of ["websocket", "sse"]) {
  test(`latencyReport over ${transport}: the page's own publishes reach /metrics as halley_client_latency_seconds`, async () => {
    const sample = `halley_client_latency_seconds_count{transport="${transport}"}`;
    const before = await metric(halley.base, sample);
    assert.equal(typeof before, "number", `${sample} in /metrics`);
    const page = await openPage();
    const channel = `/js/latency/${transport}`;
    await page.evaluate(
      ([base, opts, channel]) => {
        window.start(base, opts, [channel]);
        window.latencies = [];
        window.reports = [];
        window.h.on("latency", (l) => window.latencies.push(l.ms));
        window.h.on("report", (r) => window.reports.push(r));
      },
      [halley.base, { ...FAST, transports: [transport], latencyReport: 1 }, channel],
    );
    await subscribed(halley.base, channel);
    for (let n = 1; n <= 3; n++) {
      await page.evaluate(([channel, n]) => window.h.publish(channel, { n }), [channel, n]);
      await waitFor(page, (n) => window.latencies.length >= n, n);
    }
    // One report (the three figures of one channel), sent within the interval, taken.
    await waitFor(page, () => window.reports.length >= 1);
    const [report] = await page.evaluate(() => window.reports);
    assert.deepEqual(report, { channel, transport, count: 3, error: null });
    assert.equal(await metric(halley.base, sample), before + 3);
    await closePage(page);
  });
}
