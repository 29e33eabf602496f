// The talk chat with identities that cannot be forged, in headless Chromium: Halley started with
// examples/talk-app/halley.toml (the chat's channels need a token; stamp = true) and the example
// application (examples/talk-app/app.mjs) in front of it. Two people sign in on the app, chat
// in the widget it embeds, and see each other under the names and colours of their tokens; a
// message forged by alice to pass for bob — over the chat's own client, with a raw fetch and
// over a raw WebSocket — is shown as alice's; anonymous publishes are refused; the nickname
// commands say the name comes from the sign-in; a token that expires is replaced from the app
// without the chat noticing, and once signed out the chat says so; Halley's own page signs in
// with a token URL on its own origin (behind the app's proxy), never on another.
//   cargo build -p halley && cd interop && npm ci && node --test tests/talk-app.test.js
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startHalley, until, WAIT_MS } from "./harness.js";
import { launch, routingProxy } from "./browser.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(here, "..", "..");
const EXAMPLE = path.join(ROOT, "examples", "talk-app");
/** The widget's root: everything of the chat is inside its shadow root. */
const W = "#halley-talk-widget";

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts the example app on `port`; resolves once it says where it listens. */
function startApp(port, env = {}) {
  const child = spawn(process.execPath, [path.join(EXAMPLE, "app.mjs")], {
    env: { ...process.env, PORT: String(port), HALLEY_URL: halley.base, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the app did not start")), WAIT_MS);
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      if (out.includes("listening on")) {
        clearTimeout(timer);
        resolve({
          base: `http://127.0.0.1:${port}`,
          stop: () =>
            new Promise((done) => {
              if (child.exitCode !== null || child.signalCode !== null) return done();
              child.once("exit", done);
              child.kill("SIGTERM");
            }),
        });
      }
    });
    child.once("exit", (code) => reject(new Error(`the app exited early (${code})`)));
  });
}

let halley, app, shortApp, browser, proxyPort;
const contexts = new Set();
before(async () => {
  const [appPort, shortPort] = [await freePort(), await freePort()];
  proxyPort = await freePort();
  const args = [
    "--config", path.join(EXAMPLE, "halley.toml"),
    // The test's own ports, instead of the file's 127.0.0.1:3000.
    "--allowed-origins", [appPort, shortPort, proxyPort].map((p) => `http://127.0.0.1:${p}`).join(","),
    // Members leave 1 s after their last connection; lapsed tokens are noticed within 1 s.
    "--presence-grace", "1", "--heartbeat", "1", "--hold-timeout", "5",
  ];
  if (process.env.TALK_ASSETS === "1") args.push("--assets", path.join(ROOT, "clients", "js"));
  halley = await startHalley(args);
  app = await startApp(appPort);
  // The same app minting tokens valid for one second: the chat has to fetch fresh ones.
  shortApp = await startApp(shortPort, { TOKEN_TTL: "1" });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await app?.stop();
  await shortApp?.stop();
  await halley?.stop();
});
afterEach(async () => {
  for (const c of contexts) await c.close();
  contexts.clear();
});

/** Someone signs in on the app (their own browser context) and waits for the chat to be up. */
async function signIn(name, color, { on = app } = {}) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  contexts.add(context);
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`page error (${name}):`, e.message));
  if (process.env.TALK_DEBUG) page.on("console", (m) => console.error(name, m.text()));
  await page.goto(`${on.base}/`);
  await page.getByLabel("Name").fill(name);
  await page.getByLabel("Colour").fill(color);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator(`${W} .talk-status[data-state="online"]`).waitFor({ timeout: WAIT_MS });
  return page;
}

async function type(page, text) {
  const input = page.locator(`${W} .talk-form .talk-input`);
  await input.fill(text);
  await input.press("Enter");
}

/** The chat's log as data: [{kind, name, color, text, from, mine}]. */
function lines(page) {
  return page.locator(`${W} .talk-log > .talk-line`).evaluateAll((items) =>
    items.map((li) => {
      const name = li.querySelector(".talk-line--message > .talk-name");
      return {
        kind: li.dataset.kind,
        name: name ? name.textContent : null,
        color: name ? name.dataset.color : null,
        text: li.querySelector(":scope > .talk-text")?.textContent ?? "",
        from: li.dataset.from ?? null,
        mine: li.classList.contains("talk-line--mine"),
      };
    }),
  );
}

async function line(page, match, what) {
  try {
    return await until(async () => (await lines(page)).find(match), what);
  } catch (e) {
    const log = (await lines(page)).map((l) => `${l.kind} ${l.name ?? ""} ${l.text}`);
    throw new Error(`${e.message}; the log has:\n  ${log.join("\n  ")}`);
  }
}

const said = (text) => (l) => l.kind === "message" && l.text === text;

function whoIsHere(page) {
  return page.locator(`${W} .talk-who-list .talk-name`).evaluateAll((els) =>
    els.map((e) => `${e.textContent} ${e.dataset.color}`).sort(),
  );
}

async function hereNow(page, expected) {
  await until(async () => JSON.stringify(await whoIsHere(page)) === JSON.stringify([...expected].sort()), `here now = ${expected}`)
    .catch(async (e) => {
      throw new Error(`${e.message}; have ${JSON.stringify(await whoIsHere(page))}`);
    });
}

test("two people sign in on the app and chat under the names and colours of their tokens", async () => {
  const alice = await signIn("Alice", "#1e90ff");
  const bob = await signIn("Bob", "#2f9e44");
  // No nickname form: who you are comes from the sign-in.
  assert.equal(await alice.locator(`${W} form.talk-nick`).isHidden(), true);
  await alice.locator(`${W} .talk-line--room`).filter({ hasText: "You are in #lobby as Alice" }).waitFor({ timeout: WAIT_MS });

  await type(alice, "hello from alice");
  const got = await line(bob, said("hello from alice"), "bob gets alice's message");
  assert.equal(got.name, "Alice");
  assert.equal(got.color, "#1e90ff");
  assert.match(got.from, /^u-[0-9a-f]{12}$/, "the line names the token's subject");
  assert.equal(got.mine, false);
  assert.equal((await line(alice, said("hello from alice"), "alice's own line")).mine, true);

  await type(bob, "hi alice");
  const back = await line(alice, said("hi alice"), "alice gets bob's message");
  assert.deepEqual([back.name, back.color], ["Bob", "#2f9e44"]);

  // Presence comes from the tokens too.
  await hereNow(alice, ["Alice #1e90ff", "Bob #2f9e44"]);
  await hereNow(bob, ["Alice #1e90ff", "Bob #2f9e44"]);

  // /nick and /color cannot change it.
  await type(bob, "/nick Alice");
  await line(bob, (l) => l.kind === "info" && l.text.includes("Your name comes from your sign-in"), "/nick refused");
  await type(bob, "/color ff0000");
  await line(bob, (l) => l.kind === "info" && l.text.includes("Your colour comes from your sign-in"), "/color refused");
  await type(bob, "still bob");
  const still = await line(alice, said("still bob"), "bob's next message");
  assert.deepEqual([still.name, still.color], ["Bob", "#2f9e44"]);

  // Rooms work as before: /join, and /list lists the lobby and the room.
  await type(alice, "/join games");
  await alice.locator(`${W} .talk[data-room="/talk/games"] .talk-status[data-state="online"]`).waitFor({ timeout: WAIT_MS });
  // (alice stays listed in the lobby for the grace period: ask until she is gone from it.)
  await until(async () => {
    await type(bob, "/list");
    const rows = await bob.locator(`${W} .talk-log .talk-rooms`).last().locator(".talk-rooms-item").evaluateAll((els) =>
      els.map((i) => `${i.dataset.channel}=${i.dataset.count}`),
    );
    return JSON.stringify(rows) === JSON.stringify(["/talk=1", "/talk/games=1"]);
  }, "the lobby and #games in /list, one person each");
});

test("a name forged by alice is shown as alice's, however it is sent; anonymous publishes are refused", async () => {
  const alice = await signIn("Alice", "#1e90ff");
  const bob = await signIn("Bob", "#2f9e44");
  const forged = (message) => ({
    name: "Bob",
    color: "#2f9e44",
    message,
    from: { user: "u-000000000000", info: { name: "Bob", color: "#2f9e44" } },
  });

  // 1. Over the chat's own client (what anyone can do from the browser's console).
  await alice.evaluate((data) => window.HalleyTalkWidget.chat().client().publish("/talk", data), forged("forged over the chat's client"));
  // 2. With a raw fetch, carrying alice's token from the app.
  const status = await alice.evaluate(
    async ([base, data]) => {
      const { token } = await (await fetch("/token")).json();
      const res = await fetch(`${base}/pub/talk`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify(data),
      });
      return res.status;
    },
    [halley.base, forged("forged with fetch")],
  );
  assert.equal(status, 200);
  // 3. Over a raw WebSocket on the lobby: the frame is published, and comes back stamped.
  const echoed = await alice.evaluate(
    async ([base, data]) => {
      const { token } = await (await fetch("/token")).json();
      const ws = new WebSocket(`${base.replace(/^http/, "ws")}/sub/talk?token=${encodeURIComponent(token)}`);
      return new Promise((resolve, reject) => {
        ws.onopen = () => ws.send(JSON.stringify(data));
        ws.onmessage = (event) => {
          const message = JSON.parse(event.data);
          if (message.data && message.data.message === data.message) {
            ws.close();
            resolve(message.data);
          }
        };
        ws.onerror = () => reject(new Error("websocket failed"));
      });
    },
    [halley.base, forged("forged over a websocket")],
  );
  assert.equal(echoed.from.info.name, "Alice");
  assert.equal(echoed.name, "Bob", "what the client wrote stays, but nobody shows it");

  for (const text of ["forged over the chat's client", "forged with fetch", "forged over a websocket"]) {
    for (const [who, page] of [["bob", bob], ["alice", alice]]) {
      const got = await line(page, said(text), `${who} gets "${text}"`);
      assert.deepEqual([got.name, got.color], ["Alice", "#1e90ff"], `${who}: "${text}"`);
    }
  }

  // Anonymous: refused on every way in, so nothing of it reaches the chat.
  const anonymous = await bob.evaluate(async (base) => {
    const body = JSON.stringify({ name: "Alice", message: "anonymous" });
    const post = await fetch(`${base}/pub/talk`, { method: "POST", headers: { "content-type": "application/json" }, body });
    const push = await fetch(`${base}/push?name=Alice&message=anonymous`);
    const ws = await new Promise((resolve) => {
      const socket = new WebSocket(`${base.replace(/^http/, "ws")}/sub/talk`);
      socket.onopen = () => {
        socket.close();
        resolve("open");
      };
      socket.onerror = () => resolve("refused");
    });
    return { post: post.status, push: push.status, ws };
  }, halley.base);
  assert.deepEqual(anonymous, { post: 401, push: 401, ws: "refused" });
  // A forged token (signed with another secret) is refused too.
  const badToken = await bob.evaluate(async (base) => {
    const { token } = await (await fetch("/token")).json();
    const [head, claims] = token.split(".");
    const res = await fetch(`${base}/pub/talk`, {
      method: "POST",
      headers: { authorization: `Bearer ${head}.${claims}.AAAA`, "content-type": "application/json" },
      body: JSON.stringify({ message: "bad signature" }),
    });
    return res.status;
  }, halley.base);
  assert.equal(badToken, 401);
  await type(alice, "after the refusals");
  await line(bob, said("after the refusals"), "the next real message");
  const log = await lines(bob);
  assert.equal(log.some((l) => l.text === "anonymous" || l.text === "bad signature"), false);
  assert.deepEqual(
    log.filter((l) => l.kind === "message" && l.name === "Bob").map((l) => l.text),
    [],
    "nothing in the log passes for bob",
  );
});

test("tokens that expire are replaced from the app; the chat goes on under the same name", async () => {
  const carol = await signIn("Carol", "#d6336c", { on: shortApp });
  const dave = await signIn("Dave", "#845ef7");
  let fetched = 0;
  carol.on("request", (request) => {
    if (new URL(request.url()).pathname === "/token") fetched += 1;
  });
  // The server ends carol's connection when her one-second token lapses (plus its clock
  // leeway); the chat fetches a fresh token from the app and reconnects.
  await until(() => fetched >= 1, "carol's chat fetching a fresh token");
  await carol.locator(`${W} .talk-status[data-state="online"]`).waitFor({ timeout: WAIT_MS });
  await type(carol, "with a fresh token");
  const got = await line(dave, said("with a fresh token"), "dave gets carol's message");
  assert.deepEqual([got.name, got.color], ["Carol", "#d6336c"]);
  // Signed out (in the background, the page stays): at the next expiry the app has no token
  // for her, and the chat says so instead of retrying for ever.
  const status = await carol.evaluate(async () => (await fetch("/signout", { method: "POST" })).status);
  assert.equal(status, 200, "the sign-out redirects to the sign-in page");
  await line(carol, (l) => l.kind === "error" && l.text.includes("Your sign-in has ended"), "carol is told she is signed out");
  await carol.locator(`${W} .talk-status[data-state="offline"]`).waitFor({ timeout: WAIT_MS });
});

test("signed out, the app hands out no token, and Halley's own page ignores a token URL of another origin", async () => {
  const res = await fetch(`${app.base}/token`);
  assert.equal(res.status, 401);
  assert.deepEqual(await res.json(), { error: "not signed in" });
  // A sign-in posted from another site is refused.
  const cross = await fetch(`${app.base}/signin`, {
    method: "POST",
    headers: { origin: "http://evil.example", "content-type": "application/x-www-form-urlencoded" },
    body: "name=Mallory&color=%23000000",
  });
  assert.equal(cross.status, 403);

  const context = await browser.newContext();
  contexts.add(context);
  const page = await context.newPage();
  await page.goto(`${halley.base}/?token-url=${encodeURIComponent(`${app.base}/token`)}`);
  // Not signed in with somebody else's tokens: the nickname form, as without a token URL.
  await page.getByLabel("Nickname").waitFor({ timeout: WAIT_MS });
  assert.equal(await page.locator(".talk-signin").isHidden(), true);
});

test("Halley's own page behind the app's proxy signs in with ?token-url= on the same origin", async () => {
  // One origin: the app at /, Halley at /halley/ (a site that mounts Halley in a sub-path).
  const proxy = await routingProxy({ "/": Number(new URL(app.base).port), "/halley/": halley.port }, { port: proxyPort });
  try {
    const erin = await signIn("Erin", "#0c8599", { on: proxy });
    // The same browser (the session cookie), now on Halley's full page, with the app's token URL.
    await erin.goto(`${proxy.base}/halley/?token-url=/token`);
    await erin.locator('.talk-status[data-state="online"]').waitFor({ timeout: WAIT_MS });
    assert.equal(await erin.getByLabel("Nickname").isHidden(), true);
    const frank = await signIn("Frank", "#e8590c");
    const input = erin.locator(".talk-form .talk-input");
    await input.fill("from the full page");
    await input.press("Enter");
    const got = await line(frank, said("from the full page"), "frank gets erin's message");
    assert.deepEqual([got.name, got.color], ["Erin", "#0c8599"]);
  } finally {
    await proxy.close();
  }
});
