// talk, the chat demo at `/`, and its widget, in headless Chromium against the real binary: two
// people chat (names, colours, escaping), the commands (/join /exit /list /color) as the *other*
// person sees them, presence lists, a server restart on the same port mid-chat, the widget on a
// page of another origin talking to a page on `/`, and keyboard-only use.
//
// With SCREENSHOTS=1 it also writes docs/talk.png, docs/talk-dark.png and docs/widget.png.
//
// The pages are the binary's built-in copies (`cargo build -p halley` after editing clients/js);
// TALK_ASSETS=1 serves clients/js from disk instead (`halley serve --assets`).
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startHalley, until, WAIT_MS } from "./harness.js";
import { launch, routingProxy, staticServer, PAGES } from "./browser.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(here, "..", "..");
const DOCS = path.join(ROOT, "docs");
const SCREENSHOTS = process.env.SCREENSHOTS === "1";
/** A member leaves one second after its last connection closed (default 10 s), so leave notices
 * arrive well within a test's bounded waits. */
const ARGS = ["--presence-grace", "1", "--hold-timeout", "5"];
if (process.env.TALK_ASSETS === "1") ARGS.push("--assets", path.join(ROOT, "clients", "js"));

/** Starts Halley on `port`: the restart test needs the same port again, so that the pages'
 * clients find the server where it was. */
function startHalleyOn(port) {
  return startHalley(ARGS, { listen: `127.0.0.1:${port}` });
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

let halley, browser;
const contexts = new Set();
before(async () => {
  halley = await startHalleyOn(await freePort());
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await halley?.stop();
});

/** A person: their own browser context (own localStorage), the chat page, a nickname. */
async function person(name, { url = `${halley.base}/`, viewport, colorScheme = "light", remembered, transports } = {}) {
  const context = await browser.newContext({ viewport: viewport ?? { width: 1000, height: 640 }, colorScheme });
  contexts.add(context);
  // The page hands window.talkClientOptions to new Halley(): here, to force a transport.
  if (transports) await context.addInitScript((t) => { window.talkClientOptions = { transports: t }; }, transports);
  // A returning visitor: nickname and colour already in localStorage (no nickname form).
  if (remembered) {
    await context.addInitScript(([n, c]) => {
      localStorage.setItem("halley.talk.name", n);
      localStorage.setItem("halley.talk.color", c);
    }, remembered);
  }
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`page error (${name}):`, e.message));
  if (process.env.TALK_DEBUG) {
    // What the page logs and receives, when a test needs explaining.
    page.on("console", (m) => console.error(name, m.text()));
    page.on("websocket", (ws) => {
      console.error(name, "ws", ws.url());
      ws.on("framereceived", (f) => console.error(name, "frame", f.payload));
      ws.on("close", () => console.error(name, "ws closed"));
    });
  }
  await page.goto(url);
  if (remembered) {
    await online(page, url.includes("host.html") ? "#halley-talk-widget" : "");
  } else if (name) {
    await page.getByLabel("Nickname").fill(name);
    await page.getByLabel("Nickname").press("Enter");
    await online(page);
  }
  return page;
}

/** Closes every page and waits until the server has nobody left in any room (grace: 1 s), so
 * that the next test starts with empty rooms. */
async function closeAll() {
  for (const c of contexts) await c.close();
  contexts.clear();
  await until(async () => {
    const answer = await (await fetch(`${halley.base}/api/presence?prefix=/talk`)).json();
    return answer.channels.length === 0;
  }, "empty rooms after a test");
}
afterEach(closeAll);

async function online(page, root = "") {
  await page.locator(`${root} .talk-status[data-state="online"]`).first().waitFor({ timeout: WAIT_MS });
}

/** Types a line into the chat's message box and sends it with Enter, as a person would. */
async function type(page, text, root = "") {
  const input = page.locator(`${root} .talk-form .talk-input`);
  await input.fill(text);
  await input.press("Enter");
}

/** The log as data: [{kind, name, color, text, channel}]. */
function lines(page, root = "") {
  return page.locator(`${root} .talk-log > .talk-line`).evaluateAll((items) =>
    items.map((li) => {
      const name = li.querySelector(".talk-line--message > .talk-name");
      return {
        kind: li.dataset.kind,
        channel: li.dataset.channel,
        name: name ? name.textContent : null,
        color: name ? name.dataset.color : null,
        css: name ? getComputedStyle(name).getPropertyValue("--talk-user").trim() : null,
        text: li.querySelector(":scope > .talk-text")?.textContent ?? "",
      };
    }),
  );
}

/** Waits until some log line satisfies `match` and returns it. */
async function line(page, match, what, root = "") {
  try {
    return await until(async () => (await lines(page, root)).find(match), what);
  } catch (e) {
    const log = (await lines(page, root)).map((l) => `${l.kind} ${l.name ?? ""} ${l.text}`);
    throw new Error(`${e.message}; the log has:\n  ${log.join("\n  ")}`);
  }
}

const said = (name, text) => (l) => l.kind === "message" && l.name === name && l.text === text;
const notice = (kind, text) => (l) => l.kind === kind && l.text.includes(text);

/** Names in the "here now" list. */
function whoIsHere(page, root = "") {
  return page.locator(`${root} .talk-who-list .talk-name`).evaluateAll((els) =>
    els.map((e) => `${e.textContent}${e.dataset.color ? " " + e.dataset.color : ""}`).sort(),
  );
}

async function hereNow(page, expected, root = "") {
  await until(async () => JSON.stringify(await whoIsHere(page, root)) === JSON.stringify([...expected].sort()), `here now = ${expected}`).catch(async (e) => {
    throw new Error(`${e.message}; have ${JSON.stringify(await whoIsHere(page, root))}`);
  });
}

test("two people chat: name, colour and text arrive; user text is never HTML; presence lists both", async () => {
  const alice = await person("alice");
  await type(alice, "/color 1e90ff");
  const bob = await person("bob");
  await type(bob, "/color e8590c");

  // alice was there first: she sees bob arrive.
  await line(alice, notice("join", "bob joined #lobby"), "alice sees bob join");
  await type(alice, "hi bob");
  const got = await line(bob, said("alice", "hi bob"), "bob gets alice's message");
  assert.equal(got.color, "#1e90ff");
  assert.equal(got.css, "#1e90ff");
  assert.equal(got.channel, "/talk");

  await type(bob, "hello alice");
  assert.equal((await line(alice, said("bob", "hello alice"), "alice gets bob's message")).color, "#e8590c");

  // Markup in a message is shown as text, not parsed.
  const evil = `<img src=x onerror="window.pwned=1"><b>bold</b>`;
  await type(alice, evil);
  await line(bob, said("alice", evil), "bob gets the markup as text");
  assert.equal(await bob.locator(".talk-log img, .talk-log b").count(), 0);
  assert.equal(await bob.evaluate(() => window.pwned), undefined);

  await hereNow(alice, ["alice #1e90ff", "bob #e8590c"]);
  await hereNow(bob, ["alice #1e90ff", "bob #e8590c"]);

  // rupy's /push lands in the lobby, {name, message} like the chat's own messages.
  const res = await fetch(`${halley.base}/push?name=rupy&message=${encodeURIComponent("from curl")}`);
  assert.equal(res.status, 200);
  await line(alice, said("rupy", "from curl"), "a rupy push in the lobby");

  // The nickname is remembered: a reload goes straight back into the chat.
  await bob.reload();
  await online(bob);
  await line(bob, notice("room", "You are in #lobby as bob"), "bob is back without the nickname form");
});

test("arriving in a room shows its last lines from history, above the arrival, once", async () => {
  const alice = await person("alice");
  await type(alice, "/join history");
  await alice.locator('.talk[data-room="/talk/history"]').waitFor({ timeout: WAIT_MS });
  for (const text of ["first", "second", "third"]) {
    await type(alice, text);
    await line(alice, said("alice", text), `alice sees her "${text}"`);
  }
  const bob = await person("bob");
  await type(bob, "/join history");
  await line(bob, (l) => l.kind === "earlier" && l.text === "third", "bob gets the room's last lines");
  const log = await lines(bob);
  const arrival = log.findIndex((l) => l.kind === "room" && l.text.includes("#history"));
  const earlier = log.filter((l) => l.kind === "earlier" && l.channel === "/talk/history");
  assert.deepEqual(earlier.map((l) => `${l.name}: ${l.text}`), ["alice: first", "alice: second", "alice: third"]);
  assert.ok(log.indexOf(earlier[2]) < arrival, "history comes before 'You are in #history'");
  // What is said from now on comes live, once.
  await type(alice, "fourth");
  await line(bob, said("alice", "fourth"), "bob gets the new line live");
  const after = await lines(bob);
  assert.equal(after.filter((l) => l.text === "fourth").length, 1);
});

test("commands: /color, /join, /list, /exit and their validation, as the other person sees them", async () => {
  const alice = await person("alice2");
  const bob = await person("bob2");
  await line(alice, notice("join", "bob2 joined #lobby"), "alice sees bob join");

  // /color: refused when not a colour; else bob sees an update and the new colour.
  await type(alice, "/color red");
  await line(alice, notice("error", "is not a colour"), "a bad colour is refused");
  await type(alice, "/color #12B886");
  await line(bob, notice("update", "alice2 changed colour"), "bob sees alice's colour change");
  await hereNow(bob, ["alice2 #12b886", `bob2 ${await myColor(bob)}`]);
  await type(alice, "green now");
  assert.equal((await line(bob, said("alice2", "green now"), "alice's green message")).color, "#12b886");

  // /join validates the name, then moves alice: bob sees her leave the lobby.
  await type(alice, "/join no spaces please");
  await line(alice, notice("error", "is not a room name"), "a bad room name is refused");
  await type(alice, "/join Games");
  await alice.locator('.talk[data-room="/talk/games"]').waitFor({ timeout: WAIT_MS });
  await line(bob, notice("leave", "alice2 left #lobby"), "bob sees alice leave the lobby");
  await hereNow(bob, [`bob2 ${await myColor(bob)}`]);
  await hereNow(alice, ["alice2 #12b886"]);

  // /list: rooms and counts from the server.
  await type(bob, "/list");
  const counts = await until(async () => {
    const rows = await bob.locator(".talk-log .talk-rooms").last().locator(".talk-rooms-item").evaluateAll((items) =>
      Object.fromEntries(items.map((i) => [i.dataset.channel, Number(i.dataset.count)])),
    );
    return rows["/talk/games"] ? rows : null;
  }, "the room list");
  assert.deepEqual(counts, { "/talk": 1, "/talk/games": 1 });

  // bob follows alice by clicking the room in the list; alice sees him join.
  await bob.locator(".talk-log .talk-rooms").last().getByRole("button", { name: "Join #games" }).click();
  await line(alice, notice("join", "bob2 joined #games"), "alice sees bob join #games");
  await type(bob, "in games");
  await line(alice, said("bob2", "in games"), "a message in #games");

  // Messages stay in their room: a lobby message does not reach #games.
  await fetch(`${halley.base}/push?name=rupy&message=lobby-only`);
  await type(bob, "after the lobby message");
  await line(alice, said("bob2", "after the lobby message"), "the later #games message");
  assert.equal((await lines(alice)).some(said("rupy", "lobby-only")), false);

  // /exit in a room goes back to the lobby; bob sees alice leave #games.
  await type(alice, "/exit");
  await alice.locator('.talk[data-room="/talk"]').waitFor({ timeout: WAIT_MS });
  await line(bob, notice("leave", "alice2 left #games"), "bob sees alice leave #games");
  // /exit in the lobby leaves the chat; /list from bob shows nobody in the lobby.
  await type(alice, "/exit");
  await line(alice, notice("info", "You left the chat"), "alice left the chat");
  await alice.locator('.talk-status[data-state="offline"]').waitFor({ timeout: WAIT_MS });
  await until(async () => {
    await type(bob, "/list");
    const rows = await bob.locator(".talk-log .talk-rooms").last().locator(".talk-rooms-item").evaluateAll((items) =>
      items.map((i) => `${i.dataset.channel}=${i.dataset.count}`),
    );
    return JSON.stringify(rows) === JSON.stringify(["/talk/games=1"]);
  }, "the lobby empty in /list");

  // Back in: the Rejoin button, then /join games; bob sees her arrive; /nick renames her.
  await alice.getByRole("button", { name: "Rejoin the lobby" }).click();
  await alice.locator('.talk[data-room="/talk"] .talk-status[data-state="online"]').waitFor({ timeout: WAIT_MS });
  await type(alice, "/join games");
  await line(bob, notice("join", "alice2 joined #games"), "bob sees alice come back");
  await type(alice, "/nick alicia");
  await line(bob, notice("update", "alice2 is now known as alicia"), "bob sees the new nickname");
  await hereNow(bob, ["alicia #12b886", `bob2 ${await myColor(bob)}`]);

  // /help lists the commands.
  await type(bob, "/help");
  const help = await line(bob, (l) => l.kind === "help", "help");
  for (const c of ["/join", "/exit", "/list", "/color", "/help"]) assert.ok(help.text.includes(c), c);
});

async function myColor(page) {
  return page.locator(".talk-who-item--me .talk-name").first().getAttribute("data-color");
}

test("the server restarts on the same port mid-chat: both pages reconnect by themselves and chat again", async () => {
  const alice = await person("carol");
  const bob = await person("dave");
  await type(alice, "before the restart");
  await line(bob, said("carol", "before the restart"), "a message before the restart");

  await halley.stop();
  await alice.locator('.talk-status[data-state="connecting"]').waitFor({ timeout: WAIT_MS });
  await bob.locator('.talk-status[data-state="connecting"]').waitFor({ timeout: WAIT_MS });
  // Sending while the server is away fails visibly and keeps the text for another try.
  await type(alice, "into the void");
  await line(alice, notice("error", "Not sent"), "the failed send is reported");
  assert.equal(await alice.locator(".talk-form .talk-input").inputValue(), "into the void");
  halley = await startHalleyOn(halley.port);

  // Nobody touched the pages: halley.js reconnects with its own backoff.
  await online(alice);
  await online(bob);
  await line(alice, notice("info", "Reconnected"), "alice is told she is back");
  // Presence was lost with the in-memory server; the reconnects declared it again.
  await hereNow(alice, [`carol ${await myColor(alice)}`, `dave ${await myColor(bob)}`]);
  await type(bob, "after the restart");
  await line(alice, said("dave", "after the restart"), "a message after the restart");
  // The kept text goes out with Enter now.
  await alice.locator(".talk-form .talk-input").press("Enter");
  await line(bob, said("carol", "into the void"), "the retried message");
});

test("the widget on a page of another origin chats with the page at /, without the page's styles", async () => {
  const site = await staticServer({ "/pages/": PAGES });
  try {
    const erin = await person("erin", { remembered: ["erin", "#d6336c"] });
    const host = await person(null, {
      url: `${site.base}/pages/talk/host.html?halley=${encodeURIComponent(halley.base)}`,
      viewport: { width: 1100, height: 720 },
    });
    const W = "#halley-talk-widget";
    const launcher = host.locator(`${W} .talk-widget-launcher`);
    await launcher.waitFor({ timeout: WAIT_MS });
    assert.equal(await launcher.getAttribute("aria-expanded"), "false");
    // Nothing is loaded, nobody joins, until the chat is opened.
    assert.equal(await host.evaluate(() => typeof window.HalleyTalk), "undefined");

    await launcher.click();
    assert.equal(await launcher.getAttribute("aria-expanded"), "true");
    const nick = host.locator(`${W} .talk-nick .talk-input`);
    await nick.fill("frank");
    await nick.press("Enter");
    await online(host, W);
    await line(erin, notice("join", "frank joined #lobby"), "the page sees the widget's person join");

    await type(host, "hello from another site", W);
    await line(erin, said("frank", "hello from another site"), "widget → page");
    await type(erin, "hello back");
    await line(host, said("erin", "hello back"), "page → widget", W);

    // The host page's loud styles (serif fonts, yellow dashed buttons) stay outside.
    const style = await host.locator(`${W} .talk-form .talk-send`).evaluate((b) => {
      const s = getComputedStyle(b);
      return { font: s.fontFamily, background: s.backgroundColor, border: s.borderTopStyle };
    });
    assert.doesNotMatch(style.font, /Georgia/);
    assert.notEqual(style.background, "rgb(255, 225, 77)");
    assert.notEqual(style.border, "dashed");

    // Collapse with Escape: the panel hides, focus returns to the launcher; messages meanwhile
    // show as a count on it.
    await host.locator(`${W} .talk-form .talk-input`).press("Escape");
    assert.equal(await launcher.getAttribute("aria-expanded"), "false");
    assert.equal(await host.evaluate(() => document.activeElement?.id), "halley-talk-widget");
    await type(erin, "while you were away");
    await host.locator(`${W} .talk-widget-badge:not([hidden])`).waitFor({ timeout: WAIT_MS });
    assert.equal(await host.locator(`${W} .talk-widget-badge`).textContent(), "1");
    // From the keyboard: Enter on the focused launcher opens it with focus in the message box.
    await host.keyboard.press("Enter");
    assert.equal(await launcher.getAttribute("aria-expanded"), "true");
    await line(host, said("erin", "while you were away"), "the message that came while folded", W);
    assert.equal(await host.locator(`${W} .talk-widget-badge`).isHidden(), true);
    assert.equal(await host.evaluate(() => document.activeElement.shadowRoot.activeElement.id.endsWith("-input")), true);
    await host.keyboard.type("typed in the widget");
    await host.keyboard.press("Enter");
    await line(erin, said("frank", "typed in the widget"), "keyboard → widget → page");
    await host.keyboard.press("Escape");

    // The tag's options: data-room, data-title, data-open.
    const support = await person("ivan", {
      url: `${site.base}/pages/talk/host.html?open&room=support&title=${encodeURIComponent("Ask us")}&halley=${encodeURIComponent(halley.base)}`,
      remembered: ["ivan", "#845ef7"],
    });
    await support.locator(`${W} .talk[data-room="/talk/support"]`).waitFor({ timeout: WAIT_MS });
    assert.equal(await support.locator(`${W} .talk-widget-title`).textContent(), "Ask us");
    await type(erin, "/list");
    await line(erin, (l) => l.kind === "list" && l.text.includes("#support 1 person — ivan"), "ivan in #support");

    if (SCREENSHOTS) {
      await type(erin, "the widget is a shadow root, so the Gazette's serif styles stay out");
      await launcher.click();
      await line(host, said("erin", "the widget is a shadow root, so the Gazette's serif styles stay out"), "last line", W);
      await type(host, "looks tidy from here, thanks", W);
      await line(host, (l) => l.kind === "message" && l.name === "frank" && l.text.startsWith("looks tidy"), "own line", W);
      await host.locator(`${W} .talk-form .talk-input`).evaluate((el) => el.blur());
      await host.screenshot({ path: path.join(DOCS, "widget.png") });
    }
  } finally {
    await site.close();
  }
});

test("keyboard only: Tab reaches the nickname and message boxes, Enter sends, focus is visible", async () => {
  const listener = await person("grace");
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  contexts.add(context);
  const page = await context.newPage();
  await page.goto(`${halley.base}/`);

  const focused = () => page.evaluate(() => {
    const el = document.activeElement;
    const label = el?.labels?.[0]?.textContent ?? el?.getAttribute("aria-label") ?? el?.textContent;
    return { label, outline: el ? getComputedStyle(el).outlineStyle : null };
  });
  async function tabTo(label) {
    for (let i = 0; i < 20; i++) {
      await page.keyboard.press("Tab");
      const f = await focused();
      if (f.label === label) return f;
    }
    throw new Error(`Tab never reached ${label}`);
  }

  const nick = await tabTo("Nickname");
  assert.equal(nick.outline, "solid");
  await page.keyboard.type("heidi");
  await page.keyboard.press("Enter");
  await online(page);
  await page.evaluate(() => document.activeElement.blur());
  const box = await tabTo("Message #lobby");
  assert.equal(box.outline, "solid");
  await page.keyboard.type("typed without a mouse");
  await page.keyboard.press("Enter");
  await line(listener, said("heidi", "typed without a mouse"), "the keyboard message");
  // Commands work the same way, and the log is a live region screen readers announce.
  await page.keyboard.type("/join quiet");
  await page.keyboard.press("Enter");
  await page.locator('.talk[data-room="/talk/quiet"]').waitFor({ timeout: WAIT_MS });
  // The room is in the address, and the address takes you to a room.
  assert.equal(await page.evaluate(() => location.hash), "#quiet");
  await page.evaluate(() => { location.hash = "#loud"; });
  await page.locator('.talk[data-room="/talk/loud"]').waitFor({ timeout: WAIT_MS });
  assert.equal(await page.locator(".talk-log").getAttribute("role"), "log");
  assert.equal(await page.locator(".talk-log").getAttribute("aria-live"), "polite");
});

test("one person in two tabs: one connection, both tabs chat, listed once, leaves with the last tab", async () => {
  const bob = await person("bob3");
  const tab1 = await person("judy");
  await line(bob, notice("join", "judy joined #lobby"), "bob sees judy join");
  // A second tab of judy's browser: nickname remembered, a member of its own, sharing the
  // first tab's connection (halley.js elects one tab to hold it).
  const tab2 = await tab1.context().newPage();
  await tab2.goto(`${halley.base}/`);
  await online(tab2);
  const roles = await Promise.all([tab1, tab2].map((t) => t.evaluate(() => window.talk.client().role)));
  assert.deepEqual(roles.sort(), ["follower", "leader"]);
  await type(bob, "hi judy");
  await line(tab1, said("bob3", "hi judy"), "tab 1 gets bob's message");
  await line(tab2, said("bob3", "hi judy"), "tab 2 gets bob's message");
  await type(tab2, "from the second tab");
  await line(bob, said("judy", "from the second tab"), "bob gets the second tab's message");
  await until(async () => {
    const answer = await (await fetch(`${halley.base}/api/presence?channel=/talk`)).json();
    return answer.members.length === 3;
  }, "three members on the server (bob, judy twice)");
  await hereNow(bob, [`bob3 ${await myColor(bob)}`, `judy ${await myColor(tab1)}`]);
  assert.equal(await bob.locator(".talk-who-count").textContent(), "2");

  // Closing one tab is not leaving; closing the last one is.
  await tab1.close();
  await until(async () => {
    const answer = await (await fetch(`${halley.base}/api/presence?channel=/talk`)).json();
    return answer.members.length === 2;
  }, "judy's first tab gone from the server");
  await type(tab2, "still here in tab 2");
  await line(bob, said("judy", "still here in tab 2"), "the second tab still chats");
  assert.equal((await lines(bob)).some(notice("leave", "judy left")), false);
  await tab2.close();
  await line(bob, notice("leave", "judy left #lobby"), "bob sees judy leave with her last tab");
  await hereNow(bob, [`bob3 ${await myColor(bob)}`]);
});

test("behind a proxy that mounts Halley at /halley/, the page finds its scripts and server there", async () => {
  const proxy = await routingProxy({ "/halley/": halley.port });
  try {
    const mia = await person("mia", { url: `${proxy.base}/halley/` });
    assert.equal(await mia.evaluate(() => window.talk.client().url), `${proxy.base}/halley`);
    // talk.css came through the proxy too (relative address).
    assert.equal(await mia.locator(".talk-chat").evaluate((e) => getComputedStyle(e).borderTopLeftRadius), "12px");
    const ned = await person("ned");
    await type(mia, "through the proxy");
    await line(ned, said("mia", "through the proxy"), "proxy page → direct page");
    await type(ned, "and back");
    await line(mia, said("ned", "and back"), "direct page → proxy page");
    await line(mia, notice("join", "ned joined #lobby"), "presence through the proxy");
  } finally {
    await proxy.close();
  }
});

for (const transport of ["sse", "stream", "longpoll", "jsonp"]) {
  test(`the chat over ${transport} alone: messages both ways, presence, a colour change`, async () => {
    const opts = { transports: [transport] };
    const kim = await person("kim", opts);
    const lee = await person("lee", opts);
    assert.equal(await kim.locator(".talk-status").getAttribute("data-transport"), transport);
    await line(kim, notice("join", "lee joined #lobby"), "kim sees lee join");
    await type(kim, `over ${transport}`);
    await line(lee, said("kim", `over ${transport}`), "kim → lee");
    await type(lee, "and back");
    await line(kim, said("lee", "and back"), "lee → kim");
    await type(lee, "/color 7048e8");
    await line(kim, notice("update", "lee changed colour"), "kim sees lee's colour change");
    await hereNow(kim, [`kim ${await myColor(kim)}`, "lee #7048e8"]);
    await type(lee, "/list");
    await line(lee, (l) => l.kind === "list" && l.text.includes("#lobby 2 people"), "the room list");
  });
}

test("screenshot of the chat page", { skip: !SCREENSHOTS }, async () => {
  const opts = (name, color) => ({ viewport: { width: 1100, height: 620 }, remembered: [name, color] });
  const alice = await person("alice", opts("alice", "#1e90ff"));
  const bob = await person("bob", opts("bob", "#e8590c"));
  const carol = await person("carol", opts("carol", "#2f9e44"));
  await line(alice, notice("join", "carol joined"), "carol joins");
  const script = [
    [alice, "alice", "Morning! Did everyone see the comet last night?"],
    [bob, "bob", "Only through the clouds. Is it still visible tonight?"],
    [carol, "carol", "Yes, low in the west just after sunset. Bring binoculars."],
    [alice, "alice", "Let's meet in #observing, I'll post the times there."],
  ];
  for (const [page, name, text] of script) {
    await type(page, text);
    await line(alice, said(name, text), text);
  }
  await type(bob, "/join observing");
  await line(alice, notice("leave", "bob left #lobby"), "bob leaves for #observing");
  await type(alice, "/list");
  await line(alice, (l) => l.kind === "list", "the room list");
  await alice.locator(".talk-form .talk-input").fill("/join observing");
  await alice.screenshot({ path: path.join(DOCS, "talk.png") });
  await alice.emulateMedia({ colorScheme: "dark" });
  await alice.screenshot({ path: path.join(DOCS, "talk-dark.png") });
});
