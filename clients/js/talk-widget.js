// talk widget — Halley's chat in the corner of any page, on any origin.
//
//   <script src="http://HALLEY/talk-widget.js" async></script>
//
// Optional attributes on that script tag: data-room="support" (start in /talk/support instead of
// the lobby), data-title="Chat with us" (the button and panel title), data-open (start open),
// data-token-url="/halley-token" (sign in with tokens from the page's own application: a URL
// that answers {"token": "…"} for the signed-in visitor, fetched with their cookies; the chat
// then shows the name and colour the token gives and asks for no nickname).
//
// It finds Halley's address from its own src, so the page needs nothing else. The chat itself is
// talk/talk.js (the same code as the full page at `/`), mounted in a shadow root together with
// talk/talk.css, so the host page's styles don't reach it and its styles don't reach the page.
// halley.js and talk.js are loaded only when the chat is first opened: a page view that never
// opens it costs one small script and no connection, and nobody appears in the room.
(function () {
  "use strict";
  if (window.__halleyTalkWidget) return; // included twice: one widget is enough
  window.__halleyTalkWidget = true;

  var script = document.currentScript;
  if (!script) {
    // Inserted by another script after load: find ourselves by name.
    var all = document.getElementsByTagName("script");
    for (var i = all.length - 1; i >= 0; i--) {
      if (/\/talk-widget\.js(\?|#|$)/.test(all[i].src)) { script = all[i]; break; }
    }
  }
  if (!script || !script.src) return;
  // Everything before /talk-widget.js, so Halley behind a path prefix works too.
  var base = script.src.replace(/[?#].*$/, "").replace(/\/talk-widget\.js$/, "");
  var title = script.getAttribute("data-title") || "Chat";
  var room = script.getAttribute("data-room");
  // Relative to the page that embeds the widget: the token comes from that page's application.
  var tokenUrl = script.getAttribute("data-token-url");
  if (tokenUrl) tokenUrl = new URL(tokenUrl, document.baseURI).href;
  var KEY = "halley.talk.widget.open";

  function remembered() {
    try { return window.sessionStorage.getItem(KEY) === "1"; } catch (e) { return false; }
  }
  function remember(open) {
    try { window.sessionStorage.setItem(KEY, open ? "1" : "0"); } catch (e) { /* storage off */ }
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text) node.textContent = text;
    return node;
  }

  /** A speech-bubble icon (SVG: emoji fonts are not everywhere). */
  function bubble() {
    var NS = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "20");
    svg.setAttribute("height", "20");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS(NS, "path");
    path.setAttribute("d", "M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v8a2.5 2.5 0 0 1-2.5 2.5H10l-4.2 3.6c-.5.4-1.3.1-1.3-.6V16A2.5 2.5 0 0 1 4 13.5z");
    path.setAttribute("fill", "currentColor");
    svg.appendChild(path);
    return svg;
  }

  var loading = null;
  function load(src) {
    return new Promise(function (resolve, reject) {
      var tag = document.createElement("script");
      tag.src = src;
      tag.async = false;
      tag.onload = resolve;
      tag.onerror = function () { reject(new Error("could not load " + src)); };
      (document.head || document.documentElement).appendChild(tag);
    });
  }
  function loadChat() {
    if (!loading) {
      loading = (window.Halley ? Promise.resolve() : load(base + "/halley.js")).then(function () {
        return window.HalleyTalk ? null : load(base + "/talk/talk.js");
      }).catch(function (err) {
        loading = null; // the server may be back next time the chat is opened
        throw err;
      });
    }
    return loading;
  }

  function build() {
    var host = el("div", { id: "halley-talk-widget", "data-halley": base });
    // The host element is the only thing in the page's own DOM; keep page CSS off it as well.
    host.style.cssText = "all: initial; position: static; display: block;";
    var shadow = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;

    var reset = el("style", {});
    reset.textContent =
      ":host { all: initial; }" +
      ".talk-widget { visibility: hidden; }" + // until talk.css arrives: no unstyled flash
      ".talk-widget.talk-widget--ready { visibility: visible; }" +
      ".talk-widget-badge { min-width: 1.3rem; padding: 0 0.35rem; border-radius: 999px;" +
      " background: var(--talk-accent-text); color: var(--talk-accent); font-size: 0.75rem; }";
    var css = el("link", { rel: "stylesheet", href: base + "/talk/talk.css" });

    var root = el("div", { class: "talk-widget" });
    var panelId = "halley-talk-panel";
    var panel = el("section", { class: "talk-widget-panel", id: panelId, "aria-label": title });
    panel.hidden = true;
    var bar = el("div", { class: "talk-widget-bar" });
    var heading = el("h2", { class: "talk-widget-title" }, title);
    var close = el("button", { class: "talk-widget-close", type: "button", "aria-label": "Minimise " + title.toLowerCase() }, "–");
    bar.appendChild(heading);
    bar.appendChild(close);
    var mountPoint = el("div", { class: "talk-widget-mount" });
    panel.appendChild(bar);
    panel.appendChild(mountPoint);

    var launcher = el("button", {
      class: "talk-widget-launcher", type: "button", "aria-expanded": "false", "aria-controls": panelId,
    });
    var icon = bubble();
    var label = el("span", {}, title);
    var badge = el("span", { class: "talk-widget-badge" });
    badge.hidden = true;
    launcher.appendChild(icon);
    launcher.appendChild(label);
    launcher.appendChild(badge);

    root.appendChild(panel);
    root.appendChild(launcher);
    shadow.appendChild(reset);
    shadow.appendChild(css);
    shadow.appendChild(root);
    css.onload = css.onerror = function () { root.classList.add("talk-widget--ready"); };

    var chat = null;
    var unread = 0;

    function setUnread(n) {
      unread = n;
      badge.hidden = n === 0;
      badge.textContent = String(n);
      launcher.setAttribute("aria-label", n ? title + ", " + n + " new" : title);
    }

    function open(focus) {
      panel.hidden = false;
      launcher.setAttribute("aria-expanded", "true");
      remember(true);
      setUnread(0);
      if (chat) {
        if (focus) chat.focus();
        return;
      }
      var status = mountPoint.querySelector(".talk-widget-loading");
      if (!status) {
        status = el("p", { class: "talk-hint talk-widget-loading", role: "status", style: "padding: 1rem" });
        mountPoint.appendChild(status);
      }
      status.textContent = "Loading the chat…";
      loadChat().then(function () {
        status.remove();
        if (chat) return;
        var into = el("div", {});
        into.style.height = "100%";
        mountPoint.appendChild(into);
        chat = window.HalleyTalk.mount(into, {
          url: base,
          compact: true,
          room: room || undefined,
          tokenUrl: tokenUrl || undefined,
          onMessage: function (line) {
            if (panel.hidden && !line.mine) setUnread(unread + 1);
          },
        });
        if (focus) chat.focus();
      }, function (err) {
        status.textContent = "The chat could not load (" + err.message + "). Fold it and open it again to retry.";
      });
    }

    function collapse(focusLauncher) {
      panel.hidden = true;
      launcher.setAttribute("aria-expanded", "false");
      remember(false);
      if (focusLauncher) launcher.focus();
    }

    launcher.addEventListener("click", function () {
      if (panel.hidden) open(true);
      else collapse(false);
    });
    close.addEventListener("click", function () { collapse(true); });
    panel.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        event.stopPropagation();
        collapse(true);
      }
    });

    // For the embedding page's own scripts: open or fold the widget, and reach the chat
    // (`mount`'s handle; null until the chat was first opened).
    window.HalleyTalkWidget = {
      open: function () { open(true); },
      close: function () { collapse(false); },
      chat: function () { return chat; },
    };

    document.body.appendChild(host);
    if (script.hasAttribute("data-open") || remembered()) open(false);
  }

  if (document.body) build();
  else document.addEventListener("DOMContentLoaded", build);
})();
