// talk-app: a small application in front of Halley's talk chat. It signs people in (a name and
// a colour: a stand-in for your real sign-in), keeps a session cookie, mints short-lived Halley
// tokens for the signed-in person at /token, and serves a page that embeds the chat with the
// widget script from Halley. Halley stamps every message with the sender's token (stamp = true
// in halley.toml), so nobody can chat under somebody else's name.
//
//   cargo run -p halley -- --config examples/talk-app/halley.toml
//   node examples/talk-app/app.mjs                    # then open http://127.0.0.1:3000/
//
// Node's own modules only. Settings (environment): PORT (3000), HOST (127.0.0.1), HALLEY_URL
// (http://127.0.0.1:8000: where browsers find Halley), HALLEY_SECRET (else the hs256-secret of
// the halley.toml next to this file), TOKEN_TTL (seconds a token is valid, 300).
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const PORT = Number(process.env.PORT ?? 3000);
const HOST = process.env.HOST ?? "127.0.0.1";
const HALLEY_URL = (process.env.HALLEY_URL ?? "http://127.0.0.1:8000").replace(/\/+$/, "");
/** A token lives this long; the chat fetches a fresh one from /token when Halley says it expired. */
const TOKEN_TTL = Number(process.env.TOKEN_TTL ?? 300);
/** A session (the cookie) lives this long. */
const SESSION_SECS = 12 * 60 * 60;
/** Sessions kept at most; signing in beyond drops the oldest, so memory stays bounded. */
const MAX_SESSIONS = 10_000;
/** Bytes of a sign-in form read at most; a larger body is refused (413). */
const MAX_FORM = 4096;
/** The chat's channels: the lobby and its rooms. */
const CHANNELS = ["/talk", "/talk/**"];
const COOKIE = "talk_session";
const NAME_MAX = 32;

/** The secret Halley checks tokens with: HALLEY_SECRET, else the one in ./halley.toml. */
function secret() {
  if (process.env.HALLEY_SECRET) return process.env.HALLEY_SECRET;
  const toml = fs.readFileSync(path.join(here, "halley.toml"), "utf8");
  const match = toml.match(/^\s*hs256-secret\s*=\s*"([^"]+)"/m);
  if (!match) throw new Error("no hs256-secret in halley.toml; set HALLEY_SECRET");
  return match[1];
}
const SECRET = secret();

/** An HS256 JWT: base64url(header).base64url(claims).base64url(HMAC-SHA256 of the two). */
function mint(claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${crypto.createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** The token for a signed-in person: who (sub), what Halley shows (info), where (channels). */
function tokenFor(session) {
  const now = Math.floor(Date.now() / 1000);
  return mint({
    sub: session.user,
    iat: now,
    exp: now + TOKEN_TTL,
    info: { name: session.name, color: session.color },
    channels: CHANNELS,
    publish: CHANNELS,
  });
}

// ---- sessions ------------------------------------------------------------------------------

/** Session id → {user, name, color, expires}. A Map keeps insertion order: oldest first. */
const sessions = new Map();

function newSession(name, color) {
  while (sessions.size >= MAX_SESSIONS) sessions.delete(sessions.keys().next().value);
  const id = crypto.randomBytes(24).toString("base64url");
  // The user id is the token's subject: unique per sign-in, whatever name was chosen.
  const user = `u-${crypto.randomBytes(6).toString("hex")}`;
  sessions.set(id, { user, name, color, expires: Date.now() + SESSION_SECS * 1000 });
  return id;
}

function cookies(req) {
  const out = {};
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const i = part.indexOf("=");
    if (i > 0) out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

/** The session the request's cookie names, if it is still valid. */
function sessionOf(req) {
  const id = cookies(req)[COOKIE];
  const session = id && sessions.get(id);
  if (!session) return null;
  if (session.expires < Date.now()) {
    sessions.delete(id);
    return null;
  }
  return { id, ...session };
}

function sessionCookie(id, maxAge) {
  // HttpOnly: page scripts never see it. SameSite=Lax: other sites' forms don't carry it.
  return `${COOKIE}=${id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${maxAge}`;
}

// ---- pages ---------------------------------------------------------------------------------

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>${escape(title)}</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; }
  label { display: block; margin-top: 1rem; }
  input[type=text] { font: inherit; padding: 0.3rem 0.5rem; width: 16rem; }
  button { font: inherit; margin-top: 1rem; padding: 0.3rem 1rem; }
  .who { display: inline-block; width: 0.8rem; height: 0.8rem; border-radius: 50%; vertical-align: middle; }
  .error { color: #c92a2a; }
</style>
</head>
<body>
${body}
</body>
</html>
`;
}

function signInPage(error) {
  return page("Sign in · talk-app", `<h1>talk-app</h1>
<p>A small application in front of Halley's chat. Sign in, and the chat knows you by the name
and colour you choose here: Halley takes them from your token, and nobody can post as you.</p>
<form method="post" action="/signin">
  <label for="name">Name</label>
  <input type="text" id="name" name="name" required maxlength="${NAME_MAX}" autocomplete="nickname" autofocus>
  <label for="color">Colour</label>
  <input type="color" id="color" name="color" value="#1e90ff">
  ${error ? `<p class="error" role="alert">${escape(error)}</p>` : ""}
  <div><button type="submit">Sign in</button></div>
</form>`);
}

function chatPage(session) {
  // The widget comes from Halley; it fetches tokens from this application's /token (the
  // visitor's cookie goes with it) and talks to Halley with them.
  return page("talk-app", `<h1>talk-app</h1>
<p>Signed in as <span class="who" style="background:${escape(session.color)}"></span>
<strong>${escape(session.name)}</strong>.</p>
<form method="post" action="/signout"><button type="submit">Sign out</button></form>
<p>The chat is in the corner. Your name and colour in it come from your sign-in.</p>
<script src="${escape(HALLEY_URL)}/talk-widget.js" data-token-url="/token" data-title="Chat" data-open async></script>`);
}

// ---- requests ------------------------------------------------------------------------------

function send(res, status, type, body, headers = {}) {
  res.writeHead(status, {
    "content-type": type,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    ...headers,
  });
  res.end(body);
}

function json(res, status, value) {
  send(res, status, "application/json", JSON.stringify(value));
}

function redirect(res, location, headers = {}) {
  res.writeHead(303, { location, "cache-control": "no-store", ...headers });
  res.end();
}

/** Reads a urlencoded form, at most MAX_FORM bytes. */
function readForm(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM) {
        reject(Object.assign(new Error("form too large"), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(new URLSearchParams(Buffer.concat(chunks).toString("utf8"))));
    req.on("error", reject);
  });
}

/**
 * A form posted from another site is refused: browsers send Origin with a POST, and it must be
 * this application's (Host names it).
 */
function sameOrigin(req) {
  const origin = req.headers.origin;
  if (!origin || origin === "null") return !origin;
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}

function cleanName(text) {
  return String(text ?? "")
    .replace(/[\u0000-\u001f\u007f]/g, "")
    .replace(/\s+/g, " ")
    .trim()
    .slice(0, NAME_MAX);
}

async function handle(req, res) {
  const url = new URL(req.url, "http://app");
  const route = `${req.method} ${url.pathname}`;
  if (route === "GET /") {
    const session = sessionOf(req);
    return send(res, 200, "text/html; charset=utf-8", session ? chatPage(session) : signInPage());
  }
  if (route === "GET /token") {
    // What the chat calls (fetch with credentials, same origin): a fresh token, or 401.
    const session = sessionOf(req);
    if (!session) return json(res, 401, { error: "not signed in" });
    return json(res, 200, { token: tokenFor(session) });
  }
  if (route === "POST /signin") {
    if (!sameOrigin(req)) return json(res, 403, { error: "cross-site sign-in refused" });
    const form = await readForm(req);
    const name = cleanName(form.get("name"));
    const color = String(form.get("color") ?? "").toLowerCase();
    if (!name) return send(res, 400, "text/html; charset=utf-8", signInPage("Please type a name."));
    if (!/^#[0-9a-f]{6}$/.test(color)) {
      return send(res, 400, "text/html; charset=utf-8", signInPage("Please pick a colour."));
    }
    const id = newSession(name, color);
    return redirect(res, "/", { "set-cookie": sessionCookie(id, SESSION_SECS) });
  }
  if (route === "POST /signout") {
    if (!sameOrigin(req)) return json(res, 403, { error: "cross-site sign-out refused" });
    const session = sessionOf(req);
    if (session) sessions.delete(session.id);
    return redirect(res, "/", { "set-cookie": sessionCookie("", 0) });
  }
  return json(res, 404, { error: "not found" });
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((error) => {
    if (!res.headersSent) json(res, error.status ?? 500, { error: error.message });
    else res.destroy();
  });
});
server.listen(PORT, HOST, () => {
  const { port } = server.address();
  console.log(`talk-app listening on http://${HOST}:${port}/ (Halley at ${HALLEY_URL})`);
});
// Nothing to save: sessions live in memory, and signing in again is all a restart costs.
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));
