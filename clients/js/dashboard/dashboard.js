// Halley's live dashboard: reads `GET /api/dashboard` (Server-Sent Events framing, one JSON
// snapshot of the cluster per second) with fetch, so that the backend key goes in the
// X-Halley-Key header, and draws what it says. No build step, no library: plain DOM and SVG.
// The key is kept in sessionStorage (this tab, until it closes), never in the URL.
(function () {
  "use strict";

  const STORAGE = "halley.dashboard.key";
  /** Samples kept for the charts: two minutes at one a second. */
  const HISTORY = 120;
  /** Reconnect backoff after the stream ends or fails (not after a refusal). */
  const RETRY_MIN = 1000;
  const RETRY_MAX = 10000;
  const COLORS = {
    sse: "#2a9d8f", websocket: "#e76f51", longpoll: "#264653", bayeux: "#8e44ad",
    stream: "#e9c46a", jsonp: "#3a86ff", iframe: "#8d99ae", multipart: "#ff006e",
    pull: "#6a994e", "dom-events": "#bc6c25", gif: "#5e548e",
    published: "#3a86ff", delivered: "#2a9d60", lagged: "#d68a00", gaps: "#c0392b",
  };

  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  let controller = null;
  let timer = null;
  let retry = RETRY_MIN;
  const history = [];

  function storedKey() {
    try {
      return sessionStorage.getItem(STORAGE) || "";
    } catch (_) {
      return "";
    }
  }

  function setStatus(state, text) {
    const el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  async function watch() {
    clearTimeout(timer);
    if (controller) controller.abort();
    const mine = (controller = new AbortController());
    const key = storedKey();
    const headers = { Accept: "text/event-stream" };
    if (key) headers["X-Halley-Key"] = key;
    setStatus("connecting", "connecting…");
    let res;
    try {
      res = await fetch("api/dashboard", { headers, cache: "no-store", signal: mine.signal });
    } catch (_) {
      if (!mine.signal.aborted) again("cannot reach the server");
      return;
    }
    if (!res.ok) {
      let message = res.statusText;
      try {
        message = (await res.json()).error || message;
      } catch (_) {
        // Not JSON: the status says enough.
      }
      if (res.status === 401 || res.status === 403) refused(res.status, message);
      else again(`${res.status}: ${message}`);
      return;
    }
    $("refusal").hidden = true;
    $("board").hidden = false;
    retry = RETRY_MIN;
    setStatus("live", "live");
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (_) {
      if (mine.signal.aborted) return;
    }
    if (!mine.signal.aborted) again("the stream ended");
  }

  function onEvent(block) {
    let name = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trimStart();
    }
    if (name === "stats" && data) render(JSON.parse(data));
  }

  function refused(status, message) {
    setStatus("refused", `refused (${status})`);
    const box = $("refusal");
    box.textContent = `Refused (${status}): ${message}. Enter the backend key (--publish-key) to watch.`;
    box.hidden = false;
    $("board").hidden = true;
    $("key").focus();
  }

  function again(why) {
    setStatus("retrying", `${why}; again in ${Math.round(retry / 1000)} s`);
    timer = setTimeout(watch, retry);
    retry = Math.min(retry * 2, RETRY_MAX);
  }

  // ---- drawing ----

  function text(selector, value) {
    for (const el of document.querySelectorAll(selector)) el.textContent = value;
  }

  function number(n) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 });
  }

  function cell(tr, value, cls) {
    const td = document.createElement("td");
    td.textContent = value;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function rows(tbody, items, fill, empty) {
    tbody.replaceChildren();
    if (items.length === 0) {
      const tr = tbody.insertRow();
      const td = cell(tr, empty, "empty");
      td.colSpan = tbody.closest("table").tHead.rows[0].cells.length;
      return;
    }
    for (const item of items) fill(tbody.insertRow(), item);
  }

  /** A line chart of `series` ([{name, values}]) over the last HISTORY samples, right-aligned. */
  function chart(svg, legend, series) {
    // Drawn at the size it is shown, so that labels are not stretched.
    const W = Math.max(100, svg.clientWidth || 600), H = Math.max(60, svg.clientHeight || 150), PAD = 14;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    let max = 1;
    for (const s of series) for (const v of s.values) max = Math.max(max, v);
    const top = niceCeil(max);
    const x = (i, n) => ((i + HISTORY - n) / (HISTORY - 1)) * W;
    const y = (v) => H - PAD / 2 - (v / top) * (H - PAD * 1.5);
    svg.replaceChildren();
    for (const f of [0, 0.5, 1]) {
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("x1", 0);
      line.setAttribute("x2", W);
      line.setAttribute("y1", y(top * f));
      line.setAttribute("y2", y(top * f));
      line.setAttribute("stroke", "#e2e5ea");
      svg.appendChild(line);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", 2);
      label.setAttribute("y", y(top * f) - 2);
      label.textContent = number(top * f);
      svg.appendChild(label);
    }
    legend.replaceChildren();
    for (const s of series) {
      const n = s.values.length;
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", s.values.map((v, i) => `${x(i, n).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", COLORS[s.name] || "#333");
      line.setAttribute("stroke-width", 2);
      svg.appendChild(line);
      const li = document.createElement("li");
      const swatch = document.createElement("i");
      swatch.style.background = COLORS[s.name] || "#333";
      li.append(swatch, `${s.name} ${number(s.values[n - 1])}`);
      legend.appendChild(li);
    }
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function render(s) {
    const c = s.cluster;
    history.push({ transports: c.transports, rates: c.rates });
    if (history.length > HISTORY) history.shift();

    const degraded = !s.healthy || s.errors.length > 0;
    setStatus(degraded ? "degraded" : "live", degraded ? "degraded" : "live");
    text("#node", s.node ? `node ${s.node}` : "single node");
    text("#updated", new Date(s.time).toLocaleTimeString());
    const errors = $("errors");
    errors.hidden = s.errors.length === 0;
    errors.textContent = s.errors.join(" · ");

    text('[data-metric="connections"]', number(c.connections));
    text('[data-metric="subscriptions"]', number(c.subscriptions));
    text('[data-metric="rate.published"]', number(c.rates.published));
    text('[data-metric="rate.delivered"]', number(c.rates.delivered));
    text('[data-metric="lagged"]', number(c.lagged));
    text('[data-metric="gaps"]', number(c.gaps));
    text('[data-metric="channels"]', number(s.channels.count));
    text('[data-metric="members"]', number(s.presence.members));
    text('[data-metric="nodes"]', c.reached > c.nodes ? `${c.nodes} of ${c.reached}` : number(c.nodes));
    text('[data-metric="broker"]', s.healthy ? "ok" : "down");

    const names = Object.keys(c.transports);
    rows($("transports"), names, (tr, name) => {
      cell(tr, name);
      cell(tr, number(c.transports[name]), "n").dataset.metric = `transport.${name}`;
    }, "none");
    // Only transports that had somebody in the window: eleven flat lines say nothing.
    const used = names.filter((name) => history.some((h) => (h.transports[name] || 0) > 0));
    chart($("chart-transports"), $("legend-transports"),
      used.map((name) => ({ name, values: history.map((h) => h.transports[name] || 0) })));
    chart($("chart-rates"), $("legend-rates"), ["published", "delivered"].map((name) =>
      ({ name, values: history.map((h) => h.rates[name] || 0) })));
    chart($("chart-trouble"), $("legend-trouble"), ["lagged", "gaps"].map((name) =>
      ({ name, values: history.map((h) => h.rates[name] || 0) })));

    rows($("channels"), s.channels.busiest, (tr, row) => {
      cell(tr, row.channel);
      // Messages a second over the last sample (by traffic first, then subscribers).
      cell(tr, number(row.rate), "n").dataset.metric = `channel.rate.${row.channel}`;
      cell(tr, number(row.subscribers), "n");
      cell(tr, row.last_id || "", "id").title = row.last_id || "";
    }, "no channels");
    rows($("presence"), s.presence.busiest, (tr, row) => {
      cell(tr, row.channel);
      cell(tr, number(row.members), "n");
    }, "nobody present");
    rows($("nodes"), s.nodes, (tr, n) => {
      cell(tr, (n.node || "this node") + (n.here && n.node ? " (here)" : ""));
      cell(tr, n.healthy ? "up" : "broker down", n.healthy ? "up" : "down");
      cell(tr, number(n.connections), "n");
      cell(tr, number(n.subscriptions), "n");
      cell(tr, number(n.rates && n.rates.published), "n");
      cell(tr, number(n.rates && n.rates.delivered), "n");
      cell(tr, number(n.lagged), "n");
      cell(tr, number(n.gaps), "n");
      cell(tr, number(n.broker_errors), "n");
    }, "no nodes");
  }

  // ---- the key ----

  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value;
    $("key").value = "";
    try {
      if (key) sessionStorage.setItem(STORAGE, key);
    } catch (_) {
      // Storage refused (private mode settings): nothing to keep it in.
    }
    retry = RETRY_MIN;
    watch();
  });
  $("forget").addEventListener("click", () => {
    try {
      sessionStorage.removeItem(STORAGE);
    } catch (_) {
      // Nothing kept.
    }
    watch();
  });

  watch();
})();
