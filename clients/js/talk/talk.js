// talk — Halley's chat demo (after rupy's talk): nicknames, rooms, presence, colours.
//
// A classic script (no build step, no modules) so that it loads the same way from Halley's own
// page and, cross-origin, from the embeddable widget. It defines `window.HalleyTalk.mount(element,
// options)`, which builds the whole chat inside `element` (a plain element or one inside a shadow
// root) and returns a handle. It needs `window.Halley` (halley.js) loaded first.
//
// Wire shapes (see clients/js/PROTOCOL.md):
// - the lobby is channel `/talk` (rupy's `/push` default), a room `r` is `/talk/r`;
// - a chat message is `{"name","message","color"}` (rupy's `/push` publishes `{name,message}`);
//   where the server stamps messages (a namespace with `stamp = true`), it adds
//   `"from": {"user", "info": {"name","color"}}` from the sender's token, and the chat shows
//   that name and colour instead of the ones the sender wrote (which anyone could forge);
// - presence info is `{"name","color"}`; the server publishes `{"presence":"join"|"leave"|
//   "update","info":{…},"was":{…}}` on the room's channel, and answers
//   `GET /api/presence?channel=C` and `GET /api/presence?prefix=/talk/`.
//
// Every piece of user text reaches the DOM through textContent, never innerHTML, and a colour
// from the wire is used only after it matched COLOR_RE.
(function (global) {
  "use strict";

  var LOBBY = "/talk";
  /** A room name is one channel segment (DESIGN.md §2), kept short so it fits a header. */
  var ROOM_RE = /^[A-Za-z0-9_.~:@!-]{1,40}$/;
  var COLOR_RE = /^#[0-9a-f]{6}$/;
  var NAME_MAX = 32;
  var MESSAGE_MAX = 2000;
  /** Lines kept in the log; older ones are removed so a long session doesn't grow the page. */
  var LOG_MAX = 500;
  /** Lines of a room's history shown on arrival (the subscription's `recent`; at most 100). */
  var EARLIER = 30;
  var STORE = "halley.talk.";
  /** Default colours (by a hash of the name) for people who never chose one: distinct hues;
   * talk.css adjusts the lightness of any colour to the theme so that names stay readable. */
  var PALETTE = ["#1e90ff", "#d6336c", "#2f9e44", "#e8590c", "#845ef7", "#0c8599", "#c2255c", "#b08800"];

  var HELP = [
    ["/join room", "create and join a room (letters, digits and - _ . ~ : @ !)"],
    ["/exit", "leave this room for the lobby; in the lobby, leave the chat"],
    ["/list", "rooms with people in them"],
    ["/color rrggbb", "your name's colour, e.g. /color 1e90ff"],
    ["/nick name", "change your nickname"],
    ["/help", "this help"],
  ];

  // ---- small helpers -------------------------------------------------------------------------

  /** Builds an element; string children become text nodes (never parsed as HTML). */
  function h(doc, tag, attrs) {
    var node = doc.createElement(tag);
    if (attrs) {
      for (var key in attrs) {
        var value = attrs[key];
        if (value === undefined || value === null || value === false) continue;
        if (key === "text") node.textContent = value;
        else if (key === "class") node.className = value;
        else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
        else node.setAttribute(key, value === true ? "" : value);
      }
    }
    for (var i = 3; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(typeof child === "string" ? doc.createTextNode(child) : child);
    }
    return node;
  }

  function storage(kind) {
    try {
      var s = global[kind];
      var probe = STORE + "probe";
      s.setItem(probe, "1");
      s.removeItem(probe);
      return s;
    } catch (e) {
      // Storage can be disabled (privacy settings, sandboxed iframes): remember nothing then.
      var memory = {};
      return {
        getItem: function (k) { return Object.prototype.hasOwnProperty.call(memory, k) ? memory[k] : null; },
        setItem: function (k, v) { memory[k] = String(v); },
        removeItem: function (k) { delete memory[k]; },
      };
    }
  }

  /** `#RGB`, `RRGGBB`, `#rrggbb` → `#rrggbb`; anything else → null. */
  function normalizeColor(text) {
    if (typeof text !== "string") return null;
    var t = text.trim().toLowerCase();
    if (t.charAt(0) !== "#") t = "#" + t;
    if (/^#[0-9a-f]{3}$/.test(t)) t = "#" + t[1] + t[1] + t[2] + t[2] + t[3] + t[3];
    return COLOR_RE.test(t) ? t : null;
  }

  function defaultColor(name) {
    var hash = 0;
    for (var i = 0; i < name.length; i++) hash = (hash * 31 + name.charCodeAt(i)) >>> 0;
    return PALETTE[hash % PALETTE.length];
  }

  function cleanName(text) {
    // Control characters would only confuse other people's screens; collapse whitespace.
    var t = String(text || "").replace(/[\u0000-\u001f\u007f]/g, "").replace(/\s+/g, " ").trim();
    return t.length > NAME_MAX ? t.slice(0, NAME_MAX) : t;
  }

  function roomChannel(room) {
    return room === "lobby" ? LOBBY : LOBBY + "/" + room;
  }

  function roomLabel(channel) {
    return channel === LOBBY ? "#lobby" : "#" + channel.slice(LOBBY.length + 1);
  }

  function isTalkChannel(channel) {
    return channel === LOBBY || (channel.indexOf(LOBBY + "/") === 0 && ROOM_RE.test(channel.slice(LOBBY.length + 1)));
  }

  function randomId() {
    var bytes = new Uint8Array(12);
    (global.crypto || global.msCrypto).getRandomValues(bytes);
    var out = "";
    for (var i = 0; i < bytes.length; i++) out += ("0" + bytes[i].toString(16)).slice(-2);
    return out;
  }

  function sameInfo(a, b) {
    return !!a && !!b && a.name === b.name && a.color === b.color;
  }

  /** Who a presence info names, with a colour safe to use. */
  function person(info) {
    var name = info && typeof info.name === "string" ? cleanName(info.name) : "";
    var color = (info && normalizeColor(info.color)) || (name ? defaultColor(name) : null);
    return { name: name || "someone", color: color };
  }

  /**
   * The claims of a JWT, read without checking its signature: for showing who the chat signs
   * you in as. The server checks the token; nothing here is trusted for anything else.
   */
  function tokenClaims(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      var binary = global.atob(part);
      var bytes = new Uint8Array(binary.length);
      for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
      var claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : {};
    } catch (e) {
      return {};
    }
  }

  /**
   * Where the chat gets tokens: `getToken()` (a string or a promise of one), or `tokenUrl`, which
   * is fetched with the browser's credentials (the application's session cookie) and answers
   * `{"token": "…"}`. Null when neither is given: the chat asks for a nickname instead.
   */
  function tokenSource(options) {
    if (typeof options.getToken === "function") {
      return function () {
        return Promise.resolve().then(options.getToken);
      };
    }
    if (!options.tokenUrl) return null;
    var url = String(options.tokenUrl);
    return function () {
      return fetch(url, { credentials: "include", cache: "no-store", headers: { accept: "application/json" } }).then(function (res) {
        if (res.status === 401 || res.status === 403) throw new Error("you are not signed in");
        if (!res.ok) throw new Error("the sign-in answered HTTP " + res.status);
        return res.json();
      }).then(function (answer) {
        var token = answer && answer.token;
        if (typeof token !== "string" || !token) throw new Error("the sign-in gave no token");
        return token;
      });
    };
  }

  /** Who vouched-for data says sent it: `from` as the server stamps it, or null. */
  function stamped(data) {
    var from = data && data.from;
    if (!from || typeof from !== "object" || Array.isArray(from)) return null;
    var info = from.info && typeof from.info === "object" ? from.info : {};
    var user = typeof from.user === "string" ? from.user : null;
    if (typeof info.name !== "string" && !user) return null;
    return { user: user, info: { name: typeof info.name === "string" ? info.name : user, color: info.color } };
  }

  function clock(date) {
    return ("0" + date.getHours()).slice(-2) + ":" + ("0" + date.getMinutes()).slice(-2);
  }

  // ---- the chat ------------------------------------------------------------------------------

  /**
   * Builds the chat inside `root` and starts it.
   * options.url      Halley's base URL (default: this page's origin)
   * options.room     the room to start in (default: the lobby)
   * options.compact  the widget layout (presence folded into one line)
   * options.hash     keep the room in location.hash (the full page)
   * options.title    keep an unread count in document.title (the full page)
   * options.Halley   the client constructor (default: window.Halley)
   * options.getToken a function giving a token (string or promise) for Halley: the chat signs in
   *                   with it instead of asking for a nickname, and shows the name and colour of
   *                   the token's `info` (the server stamps them on every message)
   * options.tokenUrl  the same from a URL that answers `{"token": "…"}` (fetched with cookies)
   * options.onMessage called with {channel, name, message, mine} for each chat line (the widget's
   *                   unread badge)
   */
  function mount(root, options) {
    options = options || {};
    var doc = root.ownerDocument || document;
    var base = String(options.url || global.location.origin).replace(/\/+$/, "");
    var local = storage("localStorage");
    var session = storage("sessionStorage");
    var HalleyClient = options.Halley || global.Halley;
    var getToken = tokenSource(options);

    var state = {
      name: cleanName(local.getItem(STORE + "name")),
      color: normalizeColor(local.getItem(STORE + "color")),
      // One member id per tab, kept over reloads so a reload within the grace period is not
      // seen by others as a leave and a join.
      member: session.getItem(STORE + "member") || randomId(),
      room: LOBBY,
      client: null,
      sub: null,
      online: false,
      everOnline: false,
      members: [],
      /** The room's "You are in …" line: its earlier lines go above it. */
      arrival: null,
      unread: 0,
      sent: [],
      recall: -1,
      /** Signed in with a token: name and colour come from it, `user` is its subject. */
      signed: !!getToken,
      user: null,
      /** The first token, fetched before the chat starts; halley.js asks getToken for the next. */
      token: null,
    };
    if (state.signed) {
      state.name = "";
      state.color = null;
    }
    session.setItem(STORE + "member", state.member);
    if (options.room && ROOM_RE.test(options.room)) state.room = roomChannel(String(options.room).toLowerCase());
    if (options.hash) {
      var fromHash = decodeURIComponent(global.location.hash.slice(1));
      if (fromHash && ROOM_RE.test(fromHash)) state.room = roomChannel(fromHash.toLowerCase());
    }

    root.classList.add("talk");
    if (options.compact) root.classList.add("talk--compact");
    while (root.firstChild) root.removeChild(root.firstChild);

    var uid = "talk-" + randomId().slice(0, 6);

    // Header: where you are and whether the connection is up.
    // The widget lives inside someone else's page, where an h1 would claim to be its title.
    var heading = options.compact ? "h2" : "h1";
    var roomTitle = h(doc, heading, { class: "talk-room", id: uid + "-room", text: roomLabel(state.room) });
    var statusDot = h(doc, "span", { class: "talk-status-dot", "aria-hidden": "true" });
    var statusText = h(doc, "span", { class: "talk-status-text", text: "offline" });
    var status = h(doc, "p", { class: "talk-status", "data-state": "offline", role: "status" }, statusDot, statusText);
    var header = h(doc, "header", { class: "talk-header" },
      h(doc, "div", { class: "talk-brand" }, h(doc, "span", { class: "talk-logo", "aria-hidden": "true", text: "☄" }), roomTitle),
      status);

    // The log: one element per line; role=log makes screen readers announce new lines politely.
    var log = h(doc, "div", {
      class: "talk-log", role: "log", "aria-live": "polite", "aria-relevant": "additions",
      "aria-labelledby": uid + "-room", tabindex: "0",
    });

    // Who is here.
    var whoTitle = h(doc, options.compact ? "h3" : "h2", { class: "talk-who-title", id: uid + "-who", text: "Here now" });
    var whoCount = h(doc, "span", { class: "talk-who-count", text: "0" });
    var whoList = h(doc, "ul", { class: "talk-who-list", "aria-labelledby": uid + "-who" });
    var who = h(doc, "aside", { class: "talk-who", "aria-labelledby": uid + "-who" },
      h(doc, "div", { class: "talk-who-head" }, whoTitle, whoCount), whoList);

    // The message form.
    var input = h(doc, "input", {
      class: "talk-input", id: uid + "-input", type: "text", autocomplete: "off", spellcheck: "true",
      maxlength: String(MESSAGE_MAX), "aria-describedby": uid + "-hint", enterkeyhint: "send",
    });
    var inputLabel = h(doc, "label", { class: "talk-label", for: uid + "-input", text: "Message" });
    var send = h(doc, "button", { class: "talk-send", type: "submit", text: "Send" });
    var hint = h(doc, "p", { class: "talk-hint", id: uid + "-hint", text: "Enter sends. Type /help for commands." });
    var form = h(doc, "form", { class: "talk-form", autocomplete: "off" },
      inputLabel, h(doc, "div", { class: "talk-form-row" }, input, send), hint);

    var chat = h(doc, "div", { class: "talk-chat", hidden: true },
      header, h(doc, "div", { class: "talk-body" }, log, who), form);

    // The nickname form, shown until there is a nickname.
    var nickInput = h(doc, "input", {
      class: "talk-input", id: uid + "-nick", type: "text", autocomplete: "nickname", required: true,
      maxlength: String(NAME_MAX), value: state.name || "",
    });
    var nickError = h(doc, "p", { class: "talk-error", id: uid + "-nick-error", role: "alert" });
    nickInput.setAttribute("aria-describedby", uid + "-nick-error");
    var nickForm = h(doc, "form", { class: "talk-nick", autocomplete: "off" },
      h(doc, heading, { class: "talk-nick-title" }, h(doc, "span", { class: "talk-logo", "aria-hidden": "true", text: "☄" }), " talk"),
      h(doc, "p", { class: "talk-nick-lead", text: "A chat room on Halley. Pick a nickname to join the lobby." }),
      h(doc, "label", { class: "talk-label", for: uid + "-nick", text: "Nickname" }),
      h(doc, "div", { class: "talk-form-row" }, nickInput, h(doc, "button", { class: "talk-send", type: "submit", text: "Join" })),
      nickError);

    // With a token, a sign-in panel instead: who you are comes from the token.
    var signinLead = h(doc, "p", { class: "talk-nick-lead", role: "status", text: "Signing in…" });
    var signinError = h(doc, "p", { class: "talk-error", role: "alert" });
    var signinRetry = h(doc, "button", { class: "talk-send", type: "button", text: "Try again", hidden: true });
    var signin = h(doc, "div", { class: "talk-nick talk-signin", hidden: true },
      h(doc, heading, { class: "talk-nick-title" }, h(doc, "span", { class: "talk-logo", "aria-hidden": "true", text: "☄" }), " talk"),
      signinLead, signinError, signinRetry);

    root.appendChild(nickForm);
    root.appendChild(signin);
    root.appendChild(chat);

    // ---- the log ----

    function atBottom() {
      return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    }

    function append(item) {
      var stick = atBottom();
      log.appendChild(item);
      while (log.childNodes.length > LOG_MAX) log.removeChild(log.firstChild);
      if (stick) log.scrollTop = log.scrollHeight;
      if (options.title && doc.hidden) {
        state.unread++;
        doc.title = "(" + state.unread + ") " + baseTitle;
      }
      return item;
    }

    function nameTag(p) {
      var tag = h(doc, "span", { class: "talk-name", "data-name": p.name, "data-color": p.color || undefined });
      // talk.css turns the colour into one readable on the current (light or dark) background.
      if (p.color) tag.style.setProperty("--talk-user", p.color);
      tag.textContent = p.name;
      return tag;
    }

    function time() {
      var now = new Date();
      return h(doc, "time", { class: "talk-time", datetime: now.toISOString(), text: clock(now) });
    }

    function system(kind, parts) {
      var line = h(doc, "div", { class: "talk-line talk-line--" + kind, "data-kind": kind }, time());
      var body = h(doc, "span", { class: "talk-text" });
      for (var i = 0; i < parts.length; i++) {
        var part = parts[i];
        body.appendChild(typeof part === "string" ? doc.createTextNode(part) : part);
      }
      line.appendChild(body);
      return append(line);
    }

    /** A chat message's line; `earlier` marks one from before you arrived (no arrival time). */
    function messageLine(channel, data, earlier) {
      var p, text;
      var from = stamped(data);
      if (data && typeof data === "object" && !Array.isArray(data)) {
        // The server's word on who sent it, where it stamps messages; else what the sender wrote.
        p = person(from ? from.info : data);
        text = typeof data.message === "string" ? data.message : JSON.stringify(data.message === undefined ? data : data.message);
      } else {
        // Plain publishes (`curl -d hi /pub/talk`) have no sender; show them anyway.
        p = { name: "?", color: null };
        text = typeof data === "string" ? data : JSON.stringify(data);
      }
      var mine = state.user && from ? from.user === state.user : p.name === state.name && p.color === myColor();
      var stamp = earlier ? h(doc, "span", { class: "talk-time", text: "earlier" }) : time();
      var line = h(doc, "div", {
        class: "talk-line talk-line--message" + (mine ? " talk-line--mine" : "") + (earlier ? " talk-line--earlier" : ""),
        "data-kind": earlier ? "earlier" : "message", "data-channel": channel,
        "data-from": from && from.user ? from.user : undefined,
      }, stamp, nameTag(p), h(doc, "span", { class: "talk-text", text: text }));
      return { line: line, name: p.name, text: text, mine: mine };
    }

    function chatLine(channel, data) {
      var m = messageLine(channel, data, false);
      append(m.line);
      if (options.onMessage) options.onMessage({ channel: channel, name: m.name, message: m.text, mine: m.mine });
    }

    /**
     * One of the room's last lines, which the subscription delivers first (`recent`, marked so
     * by the server), shown above "You are in …". They and the live ones come on one
     * connection, so nothing said meanwhile is missed or shown twice. Presence notices from
     * before are left out: who is here now is in the list.
     */
    function earlierLine(channel, data) {
      var anchor = state.arrival;
      if (data && typeof data === "object" && typeof data.presence === "string") return;
      if (!anchor || !anchor.parentNode) return;
      var stay = atBottom();
      anchor.parentNode.insertBefore(messageLine(channel, data, true).line, anchor);
      if (stay) log.scrollTop = log.scrollHeight;
    }

    function roomButton(channel) {
      var label = roomLabel(channel);
      return h(doc, "button", {
        class: "talk-link", type: "button", "data-channel": channel, text: label,
        "aria-label": "Join " + label,
        onclick: function () { enterRoom(channel); input.focus(); },
      });
    }

    // ---- presence ----

    function myColor() {
      return state.color || defaultColor(state.name);
    }

    function myInfo() {
      return { name: state.name, color: myColor() };
    }

    function renderWho() {
      while (whoList.firstChild) whoList.removeChild(whoList.firstChild);
      // One line per person (name and colour), however many tabs they have open.
      var seen = {};
      var people = state.members.map(person).filter(function (p) {
        var key = p.name + "\n" + p.color;
        if (seen[key]) return false;
        seen[key] = true;
        return true;
      }).sort(function (a, b) {
        return a.name.localeCompare(b.name);
      });
      for (var i = 0; i < people.length; i++) {
        var me = people[i].name === state.name && people[i].color === myColor();
        whoList.appendChild(h(doc, "li", { class: "talk-who-item" + (me ? " talk-who-item--me" : "") },
          h(doc, "span", { class: "talk-dot", "aria-hidden": "true", style: people[i].color ? "background:" + people[i].color : undefined }),
          nameTag(people[i]), me ? h(doc, "span", { class: "talk-you", text: " (you)" }) : null));
      }
      whoCount.textContent = String(people.length);
      whoCount.setAttribute("aria-label", people.length === 1 ? "1 person" : people.length + " people");
    }

    var presenceTimer = null;
    var presenceAsked = 0;
    /** Asks the server who is in the current room; the answer replaces the local list. */
    function refreshPresence(delay) {
      clearTimeout(presenceTimer);
      // An answer still on its way was taken before whatever made us ask again: drop it.
      var asked = ++presenceAsked;
      presenceTimer = setTimeout(function () {
        var channel = state.room;
        var asking = state.client && typeof state.client.presence === "function"
          ? state.client.presence(channel)
          : getJSON("/api/presence?channel=" + encodeURIComponent(channel));
        asking.then(function (answer) {
          if (asked !== presenceAsked || channel !== state.room || !state.sub) return;
          state.members = Array.isArray(answer.members) ? answer.members.slice() : [];
          renderWho();
        }, function () { /* offline: the list stays as it was and is asked again on reconnect */ });
      }, delay || 0);
    }

    function onPresence(channel, notice) {
      var info = notice.info;
      var p = person(info);
      var mine = sameInfo(info, myInfo());
      var i;
      // state.members counts declarations: one person with two tabs is there twice, and is
      // announced as joining when the first arrives and as leaving when the last has gone.
      if (notice.presence === "join") {
        var listed = state.members.some(function (m) { return sameInfo(m, info); });
        state.members.push(info);
        if (!mine && !listed) system("join", [nameTag(p), " joined " + roomLabel(channel)]);
      } else if (notice.presence === "leave") {
        for (i = 0; i < state.members.length; i++) {
          if (sameInfo(state.members[i], info)) { state.members.splice(i, 1); break; }
        }
        var still = state.members.some(function (m) { return sameInfo(m, info); });
        if (!mine && !still) system("leave", [nameTag(p), " left " + roomLabel(channel)]);
      } else if (notice.presence === "update") {
        var was = person(notice.was);
        for (i = 0; i < state.members.length; i++) {
          if (sameInfo(state.members[i], notice.was)) { state.members[i] = info; break; }
        }
        if (!mine) {
          if (was.name !== p.name) system("update", [nameTag(was), " is now known as ", nameTag(p)]);
          else system("update", [nameTag(p), " changed colour"]);
        }
      } else {
        return;
      }
      renderWho();
      // The notices keep the list current at once; the server's answer corrects it shortly after
      // (two tabs with the same name and colour, notices missed while offline).
      refreshPresence(300);
    }

    // ---- the connection ----

    function getJSON(path) {
      return fetch(base + path, { headers: { accept: "application/json" } }).then(function (res) {
        if (!res.ok) throw new Error(path + ": HTTP " + res.status);
        return res.json();
      });
    }

    function setStatus(kind, text) {
      status.setAttribute("data-state", kind);
      statusText.textContent = text;
      root.setAttribute("data-connection", kind);
    }

    /** halley.js reports `{state, transport}`; the header shows it, the log notes outages. */
    function onState(change) {
      var now = (change && change.state) || "";
      status.setAttribute("title", change && change.transport ? "transport: " + change.transport : "");
      status.setAttribute("data-transport", (change && change.transport) || "");
      if (now === "connected") {
        var back = !state.online && state.everOnline;
        state.online = true;
        state.everOnline = true;
        setStatus("online", "connected");
        if (back) {
          system("info", ["Reconnected."]);
          refreshPresence(300);
        }
      } else if (now === "reconnecting") {
        if (state.online) system("info", ["Connection lost; reconnecting…"]);
        state.online = false;
        setStatus("connecting", "reconnecting…");
      } else if (now === "connecting") {
        state.online = false;
        setStatus("connecting", "connecting…");
      } else if (now === "unauthorized") {
        // The token was refused and no fresh one came (signed out, or the session ended).
        state.online = false;
        setStatus("offline", "signed out");
        system("error", [state.signed ? "Your sign-in has ended: sign in again to chat." : "The server refused the connection."]);
      } else {
        // idle (nothing subscribed) or closed: we are out of the chat.
        state.online = false;
        setStatus("offline", "offline");
      }
    }

    function connect() {
      if (state.client) return state.client;
      if (typeof HalleyClient !== "function") {
        system("error", ["Cannot load the Halley client (halley.js)."]);
        return null;
      }
      var clientOptions = { member: state.member };
      if (state.signed) {
        // The first token is the one the chat signed in with; later ones (it expired) come
        // from the same source, and say who you are again.
        clientOptions.token = state.token;
        clientOptions.getToken = function () {
          return getToken().then(function (token) {
            adopt(token);
            return token;
          });
        };
      }
      for (var key in options.clientOptions || {}) clientOptions[key] = options.clientOptions[key];
      var client = new HalleyClient(base, clientOptions);
      state.client = client;
      setStatus("connecting", "connecting…");
      if (typeof client.on === "function") {
        client.on("state", onState);
        client.on("gap", function () {
          system("info", ["Some messages may have been missed while you were away."]);
        });
      }
      return client;
    }

    /** Subscribes to a room and declares this tab a member of it, on one connection. */
    function subscribe(channel) {
      var client = connect();
      if (!client) return null;
      var handler = function (data, msg) {
        var ch = (msg && msg.channel) || channel;
        if (ch !== state.room) return;
        if (msg && msg.recent === true) earlierLine(ch, data);
        else if (data && typeof data === "object" && typeof data.presence === "string") onPresence(ch, data);
        else chatLine(ch, data);
      };
      // Presence is declared apart from the subscription so that /color and /nick can change it
      // in place (the others get one `update` notice instead of a leave and a join).
      client.setPresence(channel, { member: state.member, info: myInfo() });
      var sub = client.subscribe(channel, handler, { recent: EARLIER });
      return {
        unsubscribe: function () {
          sub.unsubscribe();
          if (state.client === client) client.setPresence(channel, null);
        },
      };
    }

    function enterRoom(channel) {
      if (channel === state.room && state.sub) return;
      var previous = state.sub;
      var label = roomLabel(channel);
      state.room = channel;
      state.members = [];
      renderWho();
      state.sub = subscribe(channel);
      if (previous) previous.unsubscribe();
      roomTitle.textContent = label;
      inputLabel.textContent = "Message " + label;
      if (options.hash) {
        var wanted = channel === LOBBY ? "" : "#" + channel.slice(LOBBY.length + 1);
        if (global.location.hash !== wanted) global.history.replaceState(null, "", wanted || global.location.pathname + global.location.search);
      }
      if (options.title) {
        baseTitle = label + " · talk";
        doc.title = baseTitle;
      }
      root.setAttribute("data-room", channel);
      state.arrival = system("room", ["You are in " + label + " as ", nameTag(person(myInfo())), "."]);
      refreshPresence(0);
    }

    /** Same room, new info: the server tells the others with an `update` notice. */
    function reannounce() {
      if (!state.sub || !state.client) return;
      state.client.setPresence(state.room, { member: state.member, info: myInfo() });
      refreshPresence(300);
    }

    function leaveChat() {
      if (state.sub) state.sub.unsubscribe();
      state.sub = null;
      var client = state.client;
      state.client = null;
      if (client && typeof client.close === "function") client.close();
      state.online = false;
      state.everOnline = false;
      state.members = [];
      renderWho();
      setStatus("offline", "offline");
      root.setAttribute("data-room", "");
      system("info", ["You left the chat. ",
        h(doc, "button", { class: "talk-link", type: "button", text: "Rejoin the lobby", onclick: function () { enterRoom(LOBBY); input.focus(); } }),
        " or type /join room."]);
    }

    // ---- commands ----

    function help() {
      var list = h(doc, "dl", { class: "talk-help" });
      for (var i = 0; i < HELP.length; i++) {
        list.appendChild(h(doc, "dt", { text: HELP[i][0] }));
        list.appendChild(h(doc, "dd", { text: HELP[i][1] }));
      }
      system("help", ["Commands:", list]);
    }

    function listRooms() {
      // Over the client when there is one (it falls back to JSONP where CORS is off). The rooms
      // under /talk/ and the lobby are asked apart: a listing by the prefix /talk would reach
      // beyond the chat (/talkative…), which a server that locks /talk down does not allow.
      var client = state.client && typeof state.client.rooms === "function" ? state.client : null;
      var rooms = client ? client.rooms(LOBBY + "/") : getJSON("/api/presence?prefix=" + encodeURIComponent(LOBBY + "/"));
      var lobby = client ? client.presence(LOBBY) : getJSON("/api/presence?channel=" + encodeURIComponent(LOBBY));
      Promise.all([rooms, lobby]).then(function (answers) {
        var listed = Array.isArray(answers[0].channels) ? answers[0].channels.slice() : [];
        var members = Array.isArray(answers[1].members) ? answers[1].members : [];
        if (members.length) listed.push({ channel: LOBBY, count: members.length, members: members });
        var rows = listed.filter(function (row) {
          return row && typeof row.channel === "string" && isTalkChannel(row.channel);
        });
        rows.sort(function (a, b) {
          return a.channel === LOBBY ? -1 : b.channel === LOBBY ? 1 : a.channel.localeCompare(b.channel);
        });
        if (!rows.length) {
          system("list", ["Nobody is in any room."]);
          return;
        }
        var list = h(doc, "ul", { class: "talk-rooms" });
        for (var i = 0; i < rows.length; i++) {
          var count = Number(rows[i].count) || 0;
          var names = (Array.isArray(rows[i].members) ? rows[i].members : []).map(function (m) { return person(m).name; });
          list.appendChild(h(doc, "li", { class: "talk-rooms-item", "data-channel": rows[i].channel, "data-count": String(count) },
            roomButton(rows[i].channel),
            h(doc, "span", { class: "talk-rooms-count", text: " " + count + (count === 1 ? " person" : " people") }),
            names.length ? h(doc, "span", { class: "talk-rooms-names", text: " — " + names.join(", ") }) : null));
        }
        system("list", ["Rooms:", list]);
      }, function (err) {
        system("error", ["Could not list rooms: " + err.message]);
      });
    }

    function command(text) {
      var match = /^\/(\S+)\s*(.*)$/.exec(text);
      var name = match[1].toLowerCase();
      var arg = match[2].trim();
      switch (name) {
        case "join":
        case "j": {
          var room = arg.replace(/^#/, "").toLowerCase();
          if (!room) return system("error", ["Usage: /join room"]);
          if (!ROOM_RE.test(room)) {
            return system("error", ["“" + arg + "” is not a room name: use up to 40 letters, digits and - _ . ~ : @ !"]);
          }
          var channel = roomChannel(room);
          if (channel === state.room && state.sub) return system("info", ["You are already in " + roomLabel(channel) + "."]);
          return enterRoom(channel);
        }
        case "exit":
        case "leave":
        case "part":
          if (!state.sub) return system("info", ["You are not in the chat. Type /join room or /join lobby."]);
          if (state.room !== LOBBY) return enterRoom(LOBBY);
          return leaveChat();
        case "list":
        case "rooms":
          return listRooms();
        case "color":
        case "colour": {
          if (state.signed) return system("info", ["Your colour comes from your sign-in: ", nameTag(person(myInfo())), " " + myColor() + "."]);
          if (!arg) return system("info", ["Your colour is ", nameTag(person(myInfo())), " " + myColor() + ". Change it with /color rrggbb."]);
          var color = normalizeColor(arg);
          if (!color) return system("error", ["“" + arg + "” is not a colour: use six hex digits, e.g. /color 1e90ff"]);
          if (color === myColor()) return system("info", ["That is already your colour."]);
          state.color = color;
          local.setItem(STORE + "color", color);
          system("info", ["Your colour is now ", nameTag(person(myInfo())), "."]);
          return reannounce();
        }
        case "nick":
        case "name": {
          if (state.signed) return system("info", ["Your name comes from your sign-in: you are ", nameTag(person(myInfo())), "."]);
          var nick = cleanName(arg);
          if (!nick) return system("error", ["Usage: /nick name"]);
          var keep = state.color;
          state.name = nick;
          state.color = keep;
          local.setItem(STORE + "name", nick);
          system("info", ["You are now ", nameTag(person(myInfo())), "."]);
          return reannounce();
        }
        case "help":
        case "?":
          return help();
        default:
          return system("error", ["Unknown command /" + name + ". Type /help for the list."]);
      }
    }

    function say(text) {
      if (!state.sub || !state.client) {
        system("error", ["You are not in a room. Type /join room or /join lobby."]);
        return Promise.resolve(false);
      }
      var data = { name: state.name, message: text, color: myColor() };
      return Promise.resolve(state.client.publish(state.room, data)).then(function () {
        return true;
      }, function (err) {
        system("error", ["Not sent (" + ((err && err.message) || "server unreachable") + "). It is back in the box; press Enter to retry."]);
        return false;
      });
    }

    // ---- wiring ----

    var baseTitle = doc.title;

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var text = input.value.trim();
      if (!text) return;
      state.sent.push(text);
      if (state.sent.length > 50) state.sent.shift();
      state.recall = -1;
      input.value = "";
      if (text.charAt(0) === "/" && text.charAt(1) !== "/") {
        command(text);
        return;
      }
      if (text.slice(0, 2) === "//") text = text.slice(1);
      say(text).then(function (ok) {
        if (!ok && !input.value) input.value = text;
      });
    });

    // Up and Down recall what you sent, as in a terminal.
    input.addEventListener("keydown", function (event) {
      if (event.key !== "ArrowUp" && event.key !== "ArrowDown") return;
      if (!state.sent.length) return;
      if (event.key === "ArrowUp") {
        state.recall = state.recall < 0 ? state.sent.length - 1 : Math.max(0, state.recall - 1);
      } else {
        if (state.recall < 0) return;
        state.recall = state.recall + 1 >= state.sent.length ? -1 : state.recall + 1;
      }
      input.value = state.recall < 0 ? "" : state.sent[state.recall];
      event.preventDefault();
    });

    nickForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var nick = cleanName(nickInput.value);
      if (!nick) {
        nickError.textContent = "Please type a nickname.";
        nickInput.setAttribute("aria-invalid", "true");
        nickInput.focus();
        return;
      }
      nickInput.removeAttribute("aria-invalid");
      nickError.textContent = "";
      state.name = nick;
      local.setItem(STORE + "name", nick);
      start(true);
    });

    if (options.hash) {
      // Editing the address (or a link to `#room`) moves you there.
      global.addEventListener("hashchange", function () {
        var wanted = decodeURIComponent(global.location.hash.slice(1)).toLowerCase();
        var channel = !wanted ? LOBBY : ROOM_RE.test(wanted) ? roomChannel(wanted) : null;
        if (channel && state.sub && channel !== state.room) enterRoom(channel);
      });
    }

    if (options.title) {
      doc.addEventListener("visibilitychange", function () {
        if (!doc.hidden && state.unread) {
          state.unread = 0;
          doc.title = baseTitle;
        }
      });
    }

    function start(focus) {
      nickForm.hidden = true;
      chat.hidden = false;
      enterRoom(state.room);
      if (focus) input.focus();
    }

    /** Takes name, colour and subject from a token (for display; the server checks it). */
    function adopt(token) {
      var claims = tokenClaims(token);
      var info = claims.info && typeof claims.info === "object" ? claims.info : {};
      state.token = token;
      state.user = typeof claims.sub === "string" ? claims.sub : null;
      state.name = cleanName(typeof info.name === "string" ? info.name : state.user) || "someone";
      state.color = normalizeColor(info.color);
    }

    function signIn() {
      signin.hidden = false;
      signinLead.textContent = "Signing in…";
      signinError.textContent = "";
      signinRetry.hidden = true;
      getToken().then(function (token) {
        if (typeof token !== "string" || !token) throw new Error("the sign-in gave no token");
        adopt(token);
        signin.hidden = true;
        start(false);
      }, function (err) {
        signinLead.textContent = "Sign in to chat.";
        signinError.textContent = "Could not sign you in: " + ((err && err.message) || err) + ".";
        signinRetry.hidden = false;
      });
    }
    signinRetry.addEventListener("click", signIn);

    if (state.signed) signIn();
    else if (state.name) start(false);
    else nickForm.hidden = false;

    return {
      /** The chat's input, for hosts that want to focus it. */
      input: input,
      /** The halley.js client while in the chat (null after /exit from the lobby). */
      client: function () { return state.client; },
      focus: function () { (state.name || state.signed ? input : nickInput).focus(); },
      /** Leaves the room and closes the connection. */
      destroy: function () {
        if (state.sub) state.sub.unsubscribe();
        state.sub = null;
        if (state.client && typeof state.client.close === "function") state.client.close();
        state.client = null;
      },
    };
  }

  global.HalleyTalk = { mount: mount, LOBBY: LOBBY, normalizeColor: normalizeColor };
})(typeof window !== "undefined" ? window : this);
