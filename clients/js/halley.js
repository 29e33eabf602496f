/*!
 * halley.js — the browser client of Halley's native API (clients/js/PROTOCOL.md).
 *
 * One file, no build step, no dependencies. It is a *classic script*: it has no `import` or
 * `export`, so the same file works
 *   - from a plain tag:  <script src="https://halley.example/halley.js"></script>
 *                        then `new Halley(url)` (it sets `globalThis.Halley`);
 *   - from an ES module: import "https://halley.example/halley.js";
 *                        const { Halley } = globalThis;
 *     (a file without `export` is also a valid module; importing it runs it once);
 *   - from Node (CommonJS `require`), for the unit tests of its pure parts.
 * Why not a real `export`: the server serves one file, /halley.js, and a file with `export` is a
 * syntax error as a classic script, while the reverse works.
 *
 * Overview
 *   const h = new Halley("https://halley.example", { transports, share, backoff, ... });
 *   const sub = h.subscribe("/chat/room", (data, message) => ..., { presence: { name } });
 *   await h.publish("/chat/room", { text: "hi" });
 *   const found = await h.rpc("users/find", { name: "bob" });   // the application answers
 *   sub.unsubscribe(); h.close();
 *
 * The pieces, top to bottom:
 *   - pure helpers (ids, dedupe window, backoff, transport ladder, channel matching, URLs),
 *     exported as `Halley._internal` for the unit tests in clients/js/test/;
 *   - the five transports (WebSocket, SSE, fetch stream, long-poll, JSONP), each an opener
 *     that reports open / frame / position / fail to its caller;
 *   - `Upstream`: one connection for a set of channels, walking the transport ladder with
 *     backoff and resuming from the last id;
 *   - `Halley`: subscriptions, events, publishing, calls to the application, inboxes,
 *     presence, and sharing one Upstream between the tabs of an origin (Web Locks elect a
 *     leader, BroadcastChannel carries subscriptions in and messages out).
 */
(function (root) {
  "use strict";

  /** What the server accepts on one connection (PROTOCOL.md: MAX_SUB_CHANNELS, MAX_PRESENCE). */
  var MAX_SUB_CHANNELS = 16;
  /** Publishes and arrivals remembered to time this client's own deliveries. */
  var TIMING_KEPT = 64;
  /**
   * Latency reports (`latencyReport`): most figures waiting to be sent (the server's
   * MAX_SAMPLES per report; more are dropped until a report goes), the shortest time between
   * two reports (s), the default, and the largest figure sent (the server's MAX_SAMPLE_MS).
   */
  var LATENCY_REPORT_SAMPLES = 64;
  var LATENCY_REPORT_MIN_S = 1;
  var LATENCY_REPORT_DEFAULT_S = 10;
  var LATENCY_REPORT_MAX_MS = 60000;
  /** Retries of a publish whose answer was lost (with its Idempotency-Key: published once). */
  var PUBLISH_RETRIES = 2;
  /** Most newest messages a subscription may ask for first (the server's MAX_RECENT). */
  var MAX_RECENT = 100;
  var MAX_PRESENCE = 16;
  var MAX_PRESENCE_INFO = 512;
  /** An empty long-poll answer faster than this (ms) was not held. */
  var QUICK_POLL_MS = 100;
  /** A connection that lived this long (ms) worked, even if it delivered nothing. */
  var STABLE_MS = 5000;

  /**
   * Transports in order of preference; the ladder steps down this list. `poll` is interval
   * polling (requests the server answers at once), the last resort where even long-poll holds
   * are cut by something in between.
   */
  var TRANSPORTS = ["websocket", "sse", "stream", "longpoll", "jsonp", "poll"];

  var DEFAULTS = {
    transports: TRANSPORTS,
    /** Share one upstream connection between the tabs of this origin. */
    share: true,
    /**
     * A stream that delivers no first byte within this many ms is taken to be buffered by a
     * proxy (every stream transport writes something as soon as it opens): step down.
     */
    flushTimeout: 4000,
    /** Longer than the server's long-poll hold (25 s by default): a poll still open is lost. */
    pollTimeout: 40000,
    /**
     * A fetch stream silent this long is taken as dead (a half-open connection) and reopened.
     * The server writes a heartbeat every 15 s by default; this allows for two missed.
     */
    idleTimeout: 45000,
    /** A poll pending this long without failing counts as connected (it is held, not refused). */
    pollSettle: 1000,
    /**
     * Interval polling (`poll`): ms between polls after one that brought messages; each empty
     * answer in a row doubles the wait, up to `pollIntervalMax`.
     */
    pollInterval: 2000,
    pollIntervalMax: 30000,
    /** Exponential backoff with full jitter between reconnects, in ms. */
    backoff: { base: 500, max: 30000 },
    /** Failures to open in a row after which a transport that once worked is given up. */
    stepDownAfter: 3,
    /** Subscription changes within this many ms make one reconnect. */
    debounce: 20,
    /** How many recent message ids are remembered to drop duplicates. */
    dedupeWindow: 1000,
    /** Publish key (`--publish-key` on the server), sent as X-Halley-Key or `key=`. */
    key: null,
    /** Presence member id; default: random per Halley instance (8–64 of [A-Za-z0-9_-]). */
    member: null,
    /**
     * Access token (a JWT the application's server minted), sent as `?token=` on subscribe
     * URLs and `Authorization: Bearer` on one-shot requests. Never logged.
     */
    token: null,
    /**
     * `() => string | Promise<string>`: called for a token before the first connection (when
     * `token` is not given) and whenever a fresh one is needed (expired, refused with 401).
     */
    getToken: null,
    /**
     * Send this client's measured delivery latencies (the "latency" event) to the server
     * (`POST /api/latency`, `halley_client_latency_seconds` in its /metrics): `true` for a
     * report every 10 s at most, a number for every that many seconds (at least 1); each report
     * holds one channel's figures, at most 64. Off by default.
     */
    latencyReport: false,
  };

  /** Auth failures in a row (refused again right after a fresh token) before giving up. */
  var MAX_AUTH_RETRIES = 3;

  // ---------------------------------------------------------------------------------------
  // Pure helpers (unit-tested in Node; no DOM here).

  /**
   * Parses a message id `<epoch hex>-<offset decimal>` (crates/halley-proto/src/id.rs).
   * Offsets are u64 and may exceed 2^53, so they stay decimal strings (no leading zeros).
   * @param {string} id
   * @returns {{epoch: string, offset: string} | null}
   */
  function parseId(id) {
    if (typeof id !== "string") return null;
    var m = /^([0-9a-fA-F]+)-([0-9]+)$/.exec(id);
    if (!m) return null;
    return {
      epoch: m[1].toLowerCase().replace(/^0+(?=.)/, ""),
      offset: m[2].replace(/^0+(?=.)/, ""),
    };
  }

  /**
   * Orders two ids of one epoch: negative, 0, positive. NaN when they are not comparable
   * (different epochs — the server's history was lost in between — or malformed).
   */
  function compareIds(a, b) {
    var x = parseId(a);
    var y = parseId(b);
    if (!x || !y || x.epoch !== y.epoch) return NaN;
    if (x.offset.length !== y.offset.length) return x.offset.length - y.offset.length;
    return x.offset < y.offset ? -1 : x.offset > y.offset ? 1 : 0;
  }

  /**
   * Resume bookkeeping and duplicate suppression. Ids grow across all channels of a server
   * and each connection delivers in id order, so within one epoch anything at or below the
   * last id is a duplicate (a replay after reconnect, a relay from another tab). A bounded set
   * of recent ids also catches repeats whatever their order. An epoch that was replaced by a
   * newer one (server restart) is retired: its stragglers are dropped.
   * @param {number} [windowSize]
   */
  function Resume(windowSize) {
    this.lastId = null;
    this.window = windowSize || 1000;
    this.seen = new Set();
    this.order = [];
    this.retired = new Set();
  }
  /**
   * True if the message with this id is new (and remembers it); false for a duplicate.
   * `older`: one of a channel's newest messages the server sends first for a channel this
   * connection adds (`recent`), at or before the last id: new if not seen, and the position
   * stays where it is.
   */
  Resume.prototype.accept = function (id, older) {
    var parsed = parseId(id);
    if (!parsed) return true; // no usable id: nothing to dedupe against
    if (this.seen.has(id) || this.retired.has(parsed.epoch)) return false;
    if (older) {
      this.remember(id);
      return true;
    }
    if (this.lastId !== null) {
      var c = compareIds(id, this.lastId);
      if (c <= 0) return false;
    }
    this.remember(id);
    this.move(id, parsed);
    return true;
  };
  /** The server says "resume from here" (long-poll's X-Halley-Last-Id): only ever forward. */
  Resume.prototype.advance = function (id) {
    var parsed = parseId(id);
    if (!parsed || this.retired.has(parsed.epoch)) return;
    if (this.lastId !== null && compareIds(id, this.lastId) <= 0) return;
    this.move(id, parsed);
  };
  Resume.prototype.move = function (id, parsed) {
    var old = parseId(this.lastId);
    if (old && old.epoch !== parsed.epoch) this.retired.add(old.epoch);
    this.lastId = id;
  };
  Resume.prototype.remember = function (id) {
    this.seen.add(id);
    this.order.push(id);
    while (this.order.length > this.window) this.seen.delete(this.order.shift());
  };

  /**
   * Delay before reconnect attempt `attempt` (0-based): exponential backoff with full jitter,
   * uniformly random in [0, min(max, base·2^attempt)), so that many clients cut off at once do
   * not come back at once.
   */
  function backoffDelay(attempt, backoff, random) {
    var base = (backoff && backoff.base) || DEFAULTS.backoff.base;
    var max = (backoff && backoff.max) || DEFAULTS.backoff.max;
    var cap = Math.min(max, base * Math.pow(2, Math.min(attempt, 30)));
    return Math.floor((random || Math.random)() * cap);
  }

  /**
   * The transport ladder. `current` is the transport to try. Reports:
   *   opened()        it opened: it is now proven;
 *   worked()        it delivered or stayed up: its failure count resets;
   *   failed(reason)  'missing' (the browser lacks it) or 'buffered' (a proxy holds the
   *                   stream): banned for good and stepped over; 'connect' (could not open):
   *                   step down at once if it never worked, else after `stepDownAfter` in a
   *                   row; 'cut' (a held poll failed: something in between cut it) counts
   *                   like 'connect', so that holds cut again and again lead down to
   *                   interval polling; 'dropped' (it worked and then ended): stay.
   * Stepping past the last transport wraps to the first one not banned (`wrapped`): everything
   * failed, which is a server outage more than a transport problem, so the caller backs off.
   * @param {string[]} list
   * @param {number} [stepDownAfter]
   */
  function Ladder(list, stepDownAfter) {
    if (!list || list.length === 0) throw new Error("halley: no transports to try");
    this.list = list.slice();
    this.index = 0;
    this.stepDownAfter = stepDownAfter || DEFAULTS.stepDownAfter;
    this.proven = new Set();
    this.banned = new Set();
    this.failures = 0;
  }
  Object.defineProperty(Ladder.prototype, "current", {
    get: function () {
      return this.list[this.index];
    },
  });
  Ladder.prototype.opened = function () {
    this.proven.add(this.current);
  };
  /** It delivered or stayed up a while: failures so far no longer count. */
  Ladder.prototype.worked = function () {
    this.failures = 0;
  };
  /** @returns {{transport: string, stepped: boolean, wrapped: boolean}} */
  Ladder.prototype.failed = function (reason) {
    var t = this.current;
    if (reason === "dropped") return { transport: t, stepped: false, wrapped: false };
    var hard = reason === "missing" || reason === "buffered";
    if (hard) this.banned.add(t);
    this.failures += 1;
    if (!hard && this.proven.has(t) && this.failures < this.stepDownAfter) {
      return { transport: t, stepped: false, wrapped: false };
    }
    this.failures = 0;
    for (var i = this.index + 1; i < this.list.length; i++) {
      if (!this.banned.has(this.list[i])) {
        this.index = i;
        return { transport: this.list[i], stepped: true, wrapped: false };
      }
    }
    // Nothing left below: start over at the top. If everything is banned, the bans were
    // probably wrong (a slow network looks like a buffering proxy): lift all but 'missing'.
    var first = this.firstUsable();
    if (first < 0) {
      this.banned.clear();
      first = 0;
    }
    this.index = first;
    return { transport: this.list[first], stepped: this.list[first] !== t, wrapped: true };
  };
  Ladder.prototype.firstUsable = function () {
    for (var i = 0; i < this.list.length; i++) if (!this.banned.has(this.list[i])) return i;
    return -1;
  };

  var SEGMENT = "[A-Za-z0-9_.~:@!-]+";
  var CHANNEL_RE = new RegExp("^(?:/" + SEGMENT + ")+$");
  var PATTERN_RE = new RegExp("^(?:/" + SEGMENT + ")*(?:/\\*\\*?)?$");

  /** A channel one can publish to: `/a/b`, no wildcards, at most 255 bytes. */
  function isChannel(name) {
    return typeof name === "string" && name.length <= 255 && CHANNEL_RE.test(name);
  }
  /** A channel or a pattern one can subscribe to: may end in `/*` or `/**`. */
  function isPattern(name) {
    return typeof name === "string" && name.length > 1 && name.length <= 255 && PATTERN_RE.test(name);
  }

  /**
   * Whether subscription `pattern` selects `channel`, as the server decides it (halley-proto
   * Pattern::matches): wildcards never select `/meta/**` or `/inbox/**`.
   */
  function matchChannel(pattern, channel) {
    if (pattern === channel) return true;
    if (channel.indexOf("/meta/") === 0 || channel.indexOf("/inbox/") === 0) return false;
    var deep = /\/\*\*$/.test(pattern);
    if (!deep && !/\/\*$/.test(pattern)) return false;
    var prefix = pattern.replace(/\*+$/, "");
    if (channel.indexOf(prefix) !== 0) return false;
    var rest = channel.slice(prefix.length);
    return rest.length > 0 && (deep || rest.indexOf("/") < 0);
  }

  /**
   * The set of channels, inbox secrets and presence declarations one connection carries, in a
   * canonical order (so that equal sets compare equal as JSON).
   * @param {Array<{channels: Array<{channel: string, inbox?: string}>, presence: Array<{channel: string, member: string, info: object}>}>} specs
   */
  function mergeSpecs(specs) {
    var channels = new Map();
    var presence = new Map();
    specs.forEach(function (spec) {
      (spec.channels || []).forEach(function (c) {
        var key = c.channel + "\n" + (c.inbox || "");
        var entry = c.inbox ? { channel: c.channel, inbox: c.inbox } : { channel: c.channel };
        // The most recent messages any subscriber of the channel asked for.
        var had = channels.get(key);
        var recent = Math.max((had && had.recent) || 0, c.recent || 0);
        if (recent > 0) entry.recent = recent;
        channels.set(key, entry);
      });
      (spec.presence || []).forEach(function (p) {
        presence.set(p.channel + "\n" + p.member, p);
        // A declared member is on a channel of its connection.
        if (!channels.has(p.channel + "\n")) channels.set(p.channel + "\n", { channel: p.channel });
      });
    });
    var byKey = function (a, b) {
      return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
    };
    return {
      channels: Array.from(channels.entries()).sort(byKey).map(function (e) {
        return e[1];
      }),
      presence: Array.from(presence.entries()).sort(byKey).map(function (e) {
        return e[1];
      }),
    };
  }

  /**
   * The URL of a subscribe request (PROTOCOL.md): the first channel in the path, the others as
   * `channel=` parameters, one `inbox=` per inbox secret, one `presence=` per declaration.
   * @param {string} base  absolute http(s) URL of the server, no trailing slash
   * @param {string} transport
   * @param {{channels: Array<{channel: string, inbox?: string}>, presence: Array<object>}} spec
   * @param {string|null} lastId
   * @param {string|null} [token]
   * @param {string[]} [fresh]  channels to get their newest messages first (`recent`, `added`)
   */
  function subscribeUrl(base, transport, spec, lastId, token, fresh) {
    var first = spec.channels[0].channel;
    var params = [];
    spec.channels.slice(1).forEach(function (c) {
      params.push("channel=" + encodeURIComponent(c.channel));
    });
    spec.channels.forEach(function (c) {
      if (c.inbox) params.push("inbox=" + encodeURIComponent(c.inbox));
    });
    spec.presence.forEach(function (p) {
      params.push(
        "presence=" + encodeURIComponent(JSON.stringify({ channel: p.channel, member: p.member, info: p.info })),
      );
    });
    // Interval polling is a long-poll the server may not hold.
    if (transport === "poll") params.push("transport=longpoll", "wait=0");
    else if (transport !== "websocket") params.push("transport=" + transport);
    if (transport === "sse" || transport === "stream") params.push("format=json");
    // Streams open with {"event":"position","last_id"}: where to resume from if the connection
    // breaks before the first message (polls carry it in every answer anyway).
    if (transport === "websocket" || transport === "sse" || transport === "stream") params.push("position=1");
    if (lastId) params.push("last_id=" + encodeURIComponent(lastId));
    // Channels new to this connection that asked for their newest messages: they come first,
    // atomically with the live flow (PROTOCOL.md).
    if (fresh && fresh.length) {
      var most = 0;
      spec.channels.forEach(function (c) {
        if (fresh.indexOf(c.channel) >= 0) most = Math.max(most, c.recent || 0);
      });
      params.push("recent=" + most);
      fresh.forEach(function (c) {
        params.push("added=" + encodeURIComponent(c));
      });
    }
    // EventSource, WebSocket and script tags cannot send headers: the token rides the URL, and
    // so it does on every transport, for one rule.
    if (token) params.push("token=" + encodeURIComponent(token));
    var url = base + "/sub" + first + (params.length ? "?" + params.join("&") : "");
    if (transport === "websocket") url = url.replace(/^http/, "ws");
    return url;
  }

  /**
   * Splits newline-delimited text into complete lines; returns them and the unfinished rest.
   * @returns {{lines: string[], rest: string}}
   */
  function splitLines(buffered) {
    var parts = buffered.split("\n");
    var rest = parts.pop();
    return { lines: parts, rest: rest };
  }

  /**
   * When a JWT says it expires (ms since the epoch), read without verifying (the server does
   * that); null for a token that is not a JWT or has no `exp`. Only a hint: used where the
   * browser cannot see why a connection failed (a refused script tag).
   */
  function tokenExpiry(token) {
    if (typeof token !== "string") return null;
    var parts = token.split(".");
    if (parts.length !== 3) return null;
    try {
      var b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      while (b64.length % 4) b64 += "=";
      var text = typeof root.atob === "function" ? root.atob(b64) : Buffer.from(b64, "base64").toString("binary");
      var claims = JSON.parse(text);
      return claims && typeof claims.exp === "number" ? claims.exp * 1000 : null;
    } catch (e) {
      return null;
    }
  }

  /**
   * The client's credential: a static `token`, and/or `getToken()` for fresh ones. One fetch at
   * a time (concurrent needs share it). `onToken(reason)` is told after each fresh token.
   * @param {{token: string|null, getToken: function|null}} options
   * @param {function(string)} [onToken]
   */
  function Auth(options, onToken) {
    this.token = options.token || null;
    this.getToken = typeof options.getToken === "function" ? options.getToken : null;
    this.inflight = null;
    this.onToken = onToken || function () {};
  }
  /** Whether requests carry a token at all. */
  Auth.prototype.active = function () {
    return !!(this.token || this.getToken);
  };
  Auth.prototype.canRefresh = function () {
    return !!this.getToken;
  };
  /** The fetch to wait for before a request: one in flight, or the first one. Else null. */
  Auth.prototype.pending = function () {
    if (this.inflight) return this.inflight;
    if (this.getToken && !this.token) return this.refresh("initial");
    return null;
  };
  /** Asks getToken() for a fresh token (reason: initial | expired | unauthorized). */
  Auth.prototype.refresh = function (reason) {
    if (this.inflight) return this.inflight;
    if (!this.getToken) return Promise.reject(new Error("halley: no getToken to refresh the token with"));
    var self = this;
    var asked;
    try {
      asked = Promise.resolve(this.getToken());
    } catch (e) {
      asked = Promise.reject(e);
    }
    this.inflight = asked.then(
      function (t) {
        self.inflight = null;
        if (typeof t !== "string" || !t.trim()) throw new Error("halley: getToken gave no token");
        self.token = t.trim();
        self.onToken(reason);
        return self.token;
      },
      function (e) {
        self.inflight = null;
        throw e;
      },
    );
    return this.inflight;
  };

  function nowMs() {
    return root.performance && root.performance.now ? root.performance.now() : Date.now();
  }

  /**
   * End-to-end delivery latency of a client's own publishes: from calling publish to the
   * message arriving on a subscription. The push may arrive before the publish's answer
   * (which names the id), so both sides are kept, each bounded to TIMING_KEPT entries.
   */
  function Timing() {
    this.sent = new Map();
    this.seen = new Map();
  }
  /** A publish answered with `id`: its latency if it already arrived, else null (kept). */
  Timing.prototype.published = function (id, started, now) {
    var at = this.seen.get(id);
    if (at !== undefined) {
      this.seen.delete(id);
      return Math.max(0, at - started);
    }
    keep(this.sent, id, started);
    return null;
  };
  /** A message arrived: its latency if this client published it, else null (kept briefly). */
  Timing.prototype.arrived = function (id, now) {
    if (typeof id !== "string") return null;
    var started = this.sent.get(id);
    if (started !== undefined) {
      this.sent.delete(id);
      return Math.max(0, now - started);
    }
    keep(this.seen, id, now);
    return null;
  };
  function keep(map, key, value) {
    map.set(key, value);
    if (map.size > TIMING_KEPT) map.delete(map.keys().next().value);
  }

  /** The `latencyReport` option as seconds between reports, or 0 for off. */
  function reportInterval(option) {
    if (option === true) return LATENCY_REPORT_DEFAULT_S;
    if (typeof option === "number" && option > 0) return Math.max(LATENCY_REPORT_MIN_S, option);
    return 0;
  }

  /**
   * Latency figures waiting to be reported, by channel and transport, at most
   * LATENCY_REPORT_SAMPLES in all (later ones are dropped, counted in `dropped`). `take` gives
   * the oldest group as one report's `{channel, transport, ms}`.
   */
  function Pending() {
    this.groups = new Map();
    this.size = 0;
    this.dropped = 0;
  }
  Pending.prototype.add = function (channel, transport, ms) {
    if (!(ms >= 0 && ms <= LATENCY_REPORT_MAX_MS)) return false;
    if (this.size >= LATENCY_REPORT_SAMPLES) {
      this.dropped++;
      return false;
    }
    var key = transport + " " + channel;
    var group = this.groups.get(key);
    if (!group) this.groups.set(key, (group = { channel: channel, transport: transport, ms: [] }));
    // Milliseconds to the microsecond: what the server's buckets can tell apart.
    group.ms.push(Math.round(ms * 1000) / 1000);
    this.size++;
    return true;
  };
  Pending.prototype.take = function () {
    var first = this.groups.keys().next();
    if (first.done) return null;
    var group = this.groups.get(first.value);
    this.groups.delete(first.value);
    this.size -= group.ms.length;
    return group;
  };

  function randomId(length) {
    var alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    var out = "";
    var bytes = null;
    if (root.crypto && root.crypto.getRandomValues) bytes = root.crypto.getRandomValues(new Uint8Array(length));
    for (var i = 0; i < length; i++) {
      var r = bytes ? bytes[i] : Math.floor(Math.random() * 256);
      out += alphabet[r % alphabet.length];
    }
    return out;
  }

  /** Whether the browser has what a transport needs. */
  function available(transport) {
    switch (transport) {
      case "websocket":
        return typeof root.WebSocket === "function";
      case "sse":
        return typeof root.EventSource === "function";
      case "stream":
        return (
          typeof root.fetch === "function" &&
          typeof root.ReadableStream === "function" &&
          typeof root.TextDecoder === "function" &&
          typeof root.AbortController === "function"
        );
      case "longpoll":
      case "poll":
        return typeof root.fetch === "function" || typeof root.XMLHttpRequest === "function";
      case "jsonp":
        return typeof root.document === "object" && root.document !== null;
      default:
        return false;
    }
  }

  function absoluteBase(url) {
    var base = url;
    if (root.location && root.location.href) base = new URL(url || "/", root.location.href).href;
    base = String(base).replace(/[?#].*$/, "").replace(/\/+$/, "");
    return base.replace(/^ws/, "http");
  }

  /** Calls `fn`; an exception in user code is reported without breaking the caller's loop. */
  function safely(fn, args) {
    try {
      fn.apply(null, args);
    } catch (e) {
      setTimeout(function () {
        throw e;
      }, 0);
    }
  }

  // ---------------------------------------------------------------------------------------
  // One-shot HTTP: fetch, else XHR, else (or when asked) JSONP.

  /**
   * @returns {Promise<{status: number, header: function(string): (string|null), text: string}>}
   *   with `.abort()` on the promise.
   */
  function httpRequest(method, url, body, headers, timeout) {
    var abort = function () {};
    var promise = new Promise(function (resolve, reject) {
      var timer = null;
      if (typeof root.fetch === "function") {
        var ctrl = typeof root.AbortController === "function" ? new root.AbortController() : null;
        abort = function () {
          if (ctrl) ctrl.abort();
        };
        if (timeout) timer = setTimeout(abort, timeout);
        root
          .fetch(url, {
            method: method,
            body: body,
            headers: headers,
            cache: "no-store",
            signal: ctrl ? ctrl.signal : undefined,
          })
          .then(function (res) {
            return res.text().then(function (text) {
              clearTimeout(timer);
              resolve({
                status: res.status,
                header: function (n) {
                  return res.headers.get(n);
                },
                text: text,
              });
            });
          })
          .catch(function (e) {
            clearTimeout(timer);
            reject(e);
          });
        return;
      }
      var xhr = new root.XMLHttpRequest();
      abort = function () {
        xhr.abort();
      };
      xhr.open(method, url, true);
      Object.keys(headers || {}).forEach(function (k) {
        xhr.setRequestHeader(k, headers[k]);
      });
      if (timeout) xhr.timeout = timeout;
      xhr.onload = function () {
        resolve({
          status: xhr.status,
          header: function (n) {
            return xhr.getResponseHeader(n);
          },
          text: xhr.responseText,
        });
      };
      xhr.onerror = xhr.ontimeout = xhr.onabort = function () {
        reject(new Error("halley: request failed"));
      };
      xhr.send(body === undefined ? null : body);
    });
    promise.abort = function () {
      abort();
    };
    return promise;
  }

  var jsonpSeq = 0;
  var jsonpPrefix = "__halley_" + randomId(6) + "_";

  /**
   * Loads `url&callback=NAME` as a script and resolves with the arguments NAME was called with.
   * The promise has `.abort()`: the script is removed and a late answer ignored.
   */
  function jsonpRequest(url, timeout) {
    var doc = root.document;
    var name = jsonpPrefix + ++jsonpSeq;
    var script = doc.createElement("script");
    var timer = null;
    var settled = false;
    var fail;
    var cleanup = function () {
      clearTimeout(timer);
      if (script.parentNode) script.parentNode.removeChild(script);
      // A removed script may still arrive and call its callback; keep a no-op a while.
      root[name] = function () {};
      setTimeout(function () {
        delete root[name];
      }, 60000);
    };
    var promise = new Promise(function (resolve, reject) {
      fail = function (e) {
        if (settled) return;
        settled = true;
        cleanup();
        reject(e);
      };
      root[name] = function () {
        if (settled) return;
        settled = true;
        var args = Array.prototype.slice.call(arguments);
        cleanup();
        resolve(args);
      };
      script.async = true;
      script.src = url + (url.indexOf("?") < 0 ? "?" : "&") + "callback=" + name;
      script.onerror = function () {
        fail(new Error("halley: JSONP request failed"));
      };
      if (timeout) {
        timer = setTimeout(function () {
          fail(new Error("halley: JSONP request timed out"));
        }, timeout);
      }
      (doc.head || doc.documentElement).appendChild(script);
    });
    promise.abort = function () {
      fail(new Error("halley: aborted"));
    };
    return promise;
  }

  /** `url` with `token=` added (script tags send no headers). */
  function withToken(url, token) {
    if (!token) return url;
    return url + (url.indexOf("?") < 0 ? "?" : "&") + "token=" + encodeURIComponent(token);
  }

  /** `headers` with `Authorization: Bearer` added when there is a token. */
  function authHeaders(headers, token) {
    if (token) headers.authorization = "Bearer " + token;
    return headers;
  }

  function parseAnswer(res) {
    var body = null;
    try {
      body = res.text ? JSON.parse(res.text) : null;
    } catch (e) {
      body = null;
    }
    if (res.status >= 400 || res.status === 0) {
      var err = new Error("halley: " + ((body && body.error) || "HTTP " + res.status));
      err.status = res.status;
      if (body && body.error) err.reason = body.error;
      throw err;
    }
    return body;
  }

  // ---------------------------------------------------------------------------------------
  // Transports. Each opener gets `ctx` (url(), options) and `h` with
  //   h.open()           the connection works (first bytes / 101 / first answer);
  //   h.frame(object)    a message object or a control object ({event: ...});
  //   h.position(id)     resume from here even without a message (long-poll, JSONP);
  //   h.fail(reason, info) it ended: 'connect', 'buffered', 'dropped', 'refused' (4xx),
  //                      'unauthorized' (401), 'forbidden' (403) with info {status, error},
  //                      or 'expired' (the server ended it: the token lapsed);
  // (a `disconnected` notice — the application ended the connection — comes as a frame, and
  // the Upstream ends it there)
  // and returns { close() }. Calls after close() or after fail() are ignored by the caller.

  /** A header the server percent-encodes (a reason may be any text); null when absent. */
  function decodeHeader(value) {
    if (value === null || value === undefined) return null;
    try {
      return decodeURIComponent(value);
    } catch (e) {
      return value;
    }
  }

  /** The failure reason for an HTTP status that refused a subscription. */
  function refusal(status) {
    if (status === 401) return "unauthorized";
    if (status === 403) return "forbidden";
    return status >= 400 && status < 500 ? "refused" : "connect";
  }

  /** The `error` of a JSON error body, or null. */
  function errorOf(text) {
    try {
      var body = JSON.parse(text);
      return body && typeof body.error === "string" ? body.error : null;
    } catch (e) {
      return null;
    }
  }

  var OPENERS = {};

  OPENERS.websocket = function (ctx, h) {
    var opened = false;
    var ws;
    try {
      ws = new root.WebSocket(ctx.url());
    } catch (e) {
      h.fail("connect");
      return { close: function () {} };
    }
    // A proxy that does not pass upgrades may leave the handshake hanging.
    var timer = setTimeout(function () {
      h.fail("buffered");
      ws.close();
    }, ctx.options.flushTimeout);
    ws.onopen = function () {
      opened = true;
      clearTimeout(timer);
      h.open();
    };
    ws.onmessage = function (e) {
      var obj;
      try {
        obj = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      h.frame(obj);
    };
    ws.onerror = function () {};
    ws.onclose = function (e) {
      clearTimeout(timer);
      // 1008 (policy violation) is how the server ends a connection whose token lapsed; the
      // `expired` frame before it usually said so already.
      h.fail(opened ? (e && e.code === 1008 ? "expired" : "dropped") : "connect");
    };
    return {
      close: function () {
        clearTimeout(timer);
        ws.onopen = ws.onmessage = ws.onclose = null;
        try {
          ws.close();
        } catch (e) {
          /* already closed */
        }
      },
    };
  };

  OPENERS.sse = function (ctx, h) {
    var opened = false;
    var es = new root.EventSource(ctx.url());
    // EventSource's own `open` fires with the response headers, which a proxy that buffers
    // bodies lets through: only the first event (the `position` the stream opens with) shows
    // that the body flows.
    var timer = setTimeout(function () {
      es.close();
      h.fail("buffered");
    }, ctx.options.flushTimeout);
    var flowing = function () {
      if (opened) return;
      opened = true;
      clearTimeout(timer);
      h.open();
    };
    es.onmessage = function (e) {
      var obj;
      try {
        obj = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      flowing();
      h.frame(obj);
    };
    ["position", "gap", "lagged", "reconnect", "expired", "disconnected", "unsubscribed"].forEach(function (type) {
      es.addEventListener(type, function (e) {
        var obj = {};
        try {
          obj = JSON.parse(e.data) || {};
        } catch (err) {
          /* keep the event */
        }
        obj.event = type;
        flowing();
        h.frame(obj);
      });
    });
    es.onerror = function (e) {
      // A server-sent `event: error` arrives here too, as a MessageEvent with data.
      if (e && typeof e.data === "string") {
        var obj = {};
        try {
          obj = JSON.parse(e.data) || {};
        } catch (err) {
          /* ignore */
        }
        obj.event = "error";
        h.frame(obj);
        return;
      }
      // EventSource would reconnect by itself, with its own idea of the URL; we reconnect
      // with the current channel set and last id instead.
      clearTimeout(timer);
      es.close();
      h.fail(opened ? "dropped" : "connect");
    };
    return {
      close: function () {
        clearTimeout(timer);
        es.onmessage = es.onerror = null;
        es.close();
      },
    };
  };

  OPENERS.stream = function (ctx, h) {
    var ctrl = new root.AbortController();
    var opened = false;
    var closed = false;
    var timer = setTimeout(function () {
      closed = true;
      ctrl.abort();
      h.fail("buffered");
    }, ctx.options.flushTimeout);
    var end = function (reason, info) {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      h.fail(reason, info);
    };
    root
      .fetch(ctx.url(), { cache: "no-store", signal: ctrl.signal })
      .then(function (res) {
        if (closed) return;
        if (!res.ok) {
          var reason = refusal(res.status);
          if (reason === "unauthorized" || reason === "forbidden") {
            res.text().then(errorOf, function () {
              return null;
            }).then(function (error) {
              end(reason, { status: res.status, error: error });
            });
            return;
          }
          end(reason);
          return;
        }
        if (!res.body) {
          end("missing"); // a fetch without streaming bodies
          return;
        }
        var reader = res.body.getReader();
        var decoder = new root.TextDecoder();
        var rest = "";
        var pump = function () {
          return reader.read().then(function (chunk) {
            if (closed) return;
            if (chunk.done) return end(opened ? "dropped" : "connect");
            if (!opened) {
              opened = true;
              h.open();
            }
            // Heartbeats keep it alive; silence means the connection died without a FIN.
            clearTimeout(timer);
            timer = setTimeout(function () {
              ctrl.abort();
              end("dropped");
            }, ctx.options.idleTimeout);
            var split = splitLines(rest + decoder.decode(chunk.value, { stream: true }));
            rest = split.rest;
            for (var i = 0; i < split.lines.length && !closed; i++) {
              var line = split.lines[i].trim();
              if (!line) continue; // heartbeat
              var obj;
              try {
                obj = JSON.parse(line);
              } catch (err) {
                continue;
              }
              h.frame(obj);
            }
            return pump();
          });
        };
        return pump();
      })
      .catch(function () {
        end(opened ? "dropped" : "connect");
      });
    return {
      close: function () {
        closed = true;
        clearTimeout(timer);
        ctrl.abort();
      },
    };
  };

  /**
   * Long-poll, JSONP and interval polling share the loop: one request after another, each
   * resuming. Held polls (`interval` false) follow each other at once; a held poll that fails
   * after it was held was cut by something in between ('cut'). Interval polls wait
   * `pollInterval` after an answer with messages, doubling while answers are empty.
   */
  function pollLoop(ctx, h, once, interval) {
    var opened = false;
    var closed = false;
    var pending = null;
    var settle = null;
    var markOpen = function () {
      if (opened || closed) return;
      opened = true;
      clearTimeout(settle);
      h.open();
    };
    var quick = 0;
    var idle = 0;
    var wait = null;
    var next = function () {
      if (closed) return;
      // A refused or unreachable poll fails fast; one still pending after a moment is held.
      if (!opened) settle = setTimeout(markOpen, ctx.options.pollSettle);
      var sent = Date.now();
      pending = once(ctx.url(), ctx);
      pending.then(
        function (answer) {
          if (closed) return;
          clearTimeout(settle);
          if (answer.refused) {
            closed = true;
            h.fail(refusal(answer.status), { status: answer.status, error: answer.error });
            return;
          }
          markOpen();
          if (answer.gap) h.frame({ event: "gap", last_id: answer.lastId || null });
          for (var i = 0; i < answer.messages.length && !closed; i++) h.frame(answer.messages[i]);
          if (answer.lastId && !closed) h.position(answer.lastId);
          // What the application did to this connection (the control API), after the
          // position, so that a reconnect resumes from there.
          (answer.unsubscribed || []).forEach(function (channel) {
            if (!closed) h.frame({ event: "unsubscribed", channel: channel });
          });
          if (answer.expired && !closed) h.frame({ event: "expired", error: answer.expired });
          if (answer.disconnected && !closed) h.frame({ event: "disconnected", reason: answer.disconnected });
          if (closed) return;
          // An empty answer is normally one the server held until its timeout. Empty answers
          // that come back at once (a draining server, a cache in the way) would make this a
          // busy loop: after a few, wait, and longer each time; Retry-After wins.
          quick = answer.messages.length === 0 && Date.now() - sent < QUICK_POLL_MS ? quick + 1 : 0;
          var delay = answer.retryAfter > 0 ? answer.retryAfter * 1000 : quick >= 3 ? backoffDelay(quick - 3, ctx.options.backoff) : 0;
          if (interval) {
            idle = answer.messages.length === 0 ? idle + 1 : 0;
            var every = ctx.options.pollInterval * Math.pow(2, Math.min(idle, 30));
            delay = Math.max(answer.retryAfter * 1000 || 0, Math.min(ctx.options.pollIntervalMax, every));
          }
          if (delay > 0) wait = setTimeout(next, delay);
          else next();
        },
        function () {
          if (closed) return;
          clearTimeout(settle);
          closed = true;
          h.fail(!opened ? "connect" : interval ? "dropped" : "cut");
        },
      );
    };
    next();
    return {
      close: function () {
        closed = true;
        clearTimeout(settle);
        clearTimeout(wait);
        if (pending) pending.abort();
      },
    };
  }

  OPENERS.longpoll = function (ctx, h) {
    return pollLoop(ctx, h, longpollRequest, false);
  };

  OPENERS.poll = function (ctx, h) {
    return pollLoop(ctx, h, longpollRequest, true);
  };

  /** One long-poll request (held or not: the URL says), as the poll loop reads it. */
  function longpollRequest(url, ctx) {
    var req = httpRequest("GET", url, undefined, undefined, ctx.options.pollTimeout);
    var answer = req.then(function (res) {
      if (res.status >= 400 && res.status < 500) return { refused: true, status: res.status, error: errorOf(res.text) };
      if (res.status !== 200) throw new Error("halley: HTTP " + res.status);
      var messages = JSON.parse(res.text);
      var unsubscribed = decodeHeader(res.header("x-halley-unsubscribed"));
      return {
        messages: Array.isArray(messages) ? messages : [],
        lastId: res.header("x-halley-last-id"),
        gap: res.header("x-halley-gap") === "true",
        retryAfter: Number(res.header("retry-after")) || 0,
        unsubscribed: unsubscribed ? unsubscribed.split(",") : [],
        disconnected: decodeHeader(res.header("x-halley-disconnected")),
        expired: decodeHeader(res.header("x-halley-expired")),
      };
    });
    answer.abort = req.abort;
    return answer;
  }

  OPENERS.jsonp = function (ctx, h) {
    return pollLoop(ctx, h, function (url) {
      var req = jsonpRequest(url, ctx.options.pollTimeout);
      var answer = req.then(function (args) {
        var meta = args[1] || {};
        return {
          messages: Array.isArray(args[0]) ? args[0] : [],
          lastId: meta.last_id,
          gap: !!meta.gap,
          unsubscribed: Array.isArray(meta.unsubscribed) ? meta.unsubscribed : [],
          disconnected: typeof meta.disconnected === "string" ? meta.disconnected : null,
          expired: typeof meta.expired === "string" ? meta.expired : null,
        };
      });
      answer.abort = req.abort;
      return answer;
    }, false);
  };

  // ---------------------------------------------------------------------------------------
  // Upstream: one connection for a set of channels.

  /**
   * @param {string} base
   * @param {object} options
   * @param {Resume} resume
   * @param {{message: function(object), control: function(object), position: function(string),
   *          state: function(string, string|null), transport: function(object)}} events
   * @param {Auth} [auth]
   */
  function Upstream(base, options, resume, events, auth) {
    this.base = base;
    this.options = options;
    this.resume = resume;
    this.events = events;
    this.auth = auth || new Auth({});
    /** Auth failures since the last connection that opened. */
    this.authAttempts = 0;
    /** Set when a refusal stopped the reconnecting (401 with nothing to refresh, 403). */
    this.halted = false;
    this.ladder = new Ladder(options.transports, options.stepDownAfter);
    this.spec = { channels: [], presence: [] };
    this.specKey = "";
    /** Channels whose newest messages (`recent`) a connection already gave. */
    this.recentDone = new Set();
    this.conn = null;
    this.gen = 0;
    this.attempt = 0;
    this.everConnected = false;
    this.timer = null;
    this.closed = false;
  }

  /** A new channel set: reconnect (debounced) with the same last id. */
  Upstream.prototype.update = function (spec) {
    var key = JSON.stringify(spec);
    if (key === this.specKey || this.closed) return;
    // A channel left and subscribed again gets its newest messages again.
    var kept = new Set(
      spec.channels.map(function (c) {
        return c.channel;
      }),
    );
    this.recentDone.forEach(function (c, _, done) {
      if (!kept.has(c)) done.delete(c);
    });
    this.spec = spec;
    this.specKey = key;
    this.planned = true;
    // Another set of channels may well be allowed where the last was refused.
    this.halted = false;
    this.authAttempts = 0;
    this.schedule(this.options.debounce);
  };

  Upstream.prototype.schedule = function (delay) {
    var self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () {
      self.timer = null;
      self.connect();
    }, delay);
  };

  Upstream.prototype.stop = function () {
    this.gen += 1;
    if (this.conn) {
      var conn = this.conn;
      this.conn = null;
      conn.close();
    }
  };

  Upstream.prototype.connect = function () {
    this.stop();
    if (this.closed) return;
    if (this.spec.channels.length === 0) {
      this.connectedNow = false;
      this.events.state("idle", null);
      return;
    }
    var transport = this.ladder.current;
    if (!available(transport)) {
      this.failed(this.gen, "missing");
      return;
    }
    var gen = this.gen;
    var self = this;
    var spec = this.spec;
    // A new channel set is not a lost connection: stay 'connected' until the new one opens
    // (or fails).
    if (!(this.planned && this.connectedNow)) this.events.state(this.everConnected ? "reconnecting" : "connecting", transport);
    // A token to fetch first (the first one, or a fresh one after expiry): connect once it is in.
    var wait = this.auth.pending();
    if (wait) {
      wait.then(
        function () {
          if (gen === self.gen && !self.closed) self.connect();
        },
        function (e) {
          if (gen === self.gen && !self.closed) self.halt(401, "getToken failed: " + ((e && e.message) || e));
        },
      );
      return;
    }
    if (spec.channels.length > MAX_SUB_CHANNELS || spec.presence.length > MAX_PRESENCE) {
      // The server refuses more (PROTOCOL.md); connecting with none would be worse than
      // connecting with the first ones and saying so.
      this.events.control({ event: "error", error: "more than 16 channels or presence declarations: only the first 16 are connected" });
      spec = { channels: spec.channels.slice(0, MAX_SUB_CHANNELS), presence: spec.presence.slice(0, MAX_PRESENCE) };
    }
    this.planned = false;
    this.connectedNow = false;
    this.openedAt = 0;
    this.delivered = false;
    this.retryHint = 0;
    var live = function () {
      return gen === self.gen && !self.closed;
    };
    var position = function (id) {
      var before = self.resume.lastId;
      self.resume.advance(id);
      if (self.resume.lastId !== before) self.events.position(self.resume.lastId);
    };
    this.connSpec = spec;
    // Channels that asked for their newest messages and have not had them: asked for on this
    // connection's requests until one opens. With a last id, what comes for them at or before
    // it is those (the connection resumes everything else after it).
    var fresh = spec.channels
      .filter(function (c) {
        return c.recent > 0 && !c.inbox && !self.recentDone.has(c.channel);
      })
      .map(function (c) {
        return c.channel;
      });
    var olderUpTo = this.resume.lastId;
    var ctx = {
      options: this.options,
      url: function () {
        var pending = fresh.filter(function (c) {
          return !self.recentDone.has(c);
        });
        return subscribeUrl(self.base, transport, spec, self.resume.lastId, self.auth.token, pending);
      },
    };
    this.conn = OPENERS[transport](ctx, {
      open: function () {
        if (!live()) return;
        fresh.forEach(function (c) {
          self.recentDone.add(c);
        });
        self.ladder.opened();
        self.authAttempts = 0;
        self.openedAt = Date.now();
        self.everConnected = true;
        self.connectedNow = true;
        self.events.state("connected", transport);
      },
      frame: function (obj) {
        if (!live() || !obj || typeof obj !== "object") return;
        if (typeof obj.event === "string") {
          // A stream says where it starts, so that a reconnect before the first message still
          // resumes from there.
          if (obj.event === "position" && obj.last_id) position(obj.last_id);
          if (obj.event === "reconnect" && typeof obj.retry === "number") self.retryHint = obj.retry;
          self.events.control(obj);
          // The token lapsed (or was revoked); the server ends the connection now. Not the
          // transport's fault.
          if (obj.event === "expired") self.failed(gen, "expired", { status: 401, error: obj.error || "token expired" });
          // The application ended the connection (not a ban): come back after a backoff.
          if (obj.event === "disconnected") self.failed(gen, "disconnected");
          return;
        }
        if (!self.delivered) {
          self.delivered = true;
          self.ladder.worked();
          self.attempt = 0;
        }
        // One of a fresh channel's newest (the server marks them), at or before the last id
        // this connection resumed from: new to this client, though older than its position.
        var older = obj.recent === true && olderUpTo !== null && fresh.indexOf(obj.channel) >= 0 && compareIds(obj.id, olderUpTo) <= 0;
        if (self.resume.accept(obj.id, older)) self.events.message(obj, older);
      },
      position: function (id) {
        if (live()) position(id);
      },
      fail: function (reason, info) {
        if (!live()) return;
        self.failed(gen, reason, info);
      },
    });
  };

  Upstream.prototype.failed = function (gen, reason, info) {
    if (gen !== this.gen || this.closed) return;
    var transport = this.ladder.current;
    this.stop();
    this.connectedNow = false;
    if (reason === "unauthorized" || reason === "forbidden" || reason === "expired") {
      this.authFailed(reason === "forbidden" ? 403 : 401, info && info.error, reason);
      return;
    }
    if (reason === "connect" && this.auth.active() && (transport === "websocket" || transport === "sse" || transport === "jsonp")) {
      // A refused WebSocket upgrade or EventSource shows the page no status, and a refused
      // script tag no more than a load error: was it the token? Ask, before blaming the transport.
      var self = this;
      var now = this.gen;
      this.whyRefused(transport, function (why) {
        if (now !== self.gen || self.closed) return;
        if (why) self.authFailed(why.status, why.error, why.status === 403 ? "forbidden" : "unauthorized");
        else self.stepFailed("connect");
      });
      return;
    }
    this.stepFailed(reason);
  };

  /**
   * Calls back with {status, error} if the token is why `transport` could not open, else null.
   * WebSocket and SSE: the same subscription as a fetch stream, given up at its headers (the
   * server checks the token before anything else). Where fetch cannot reach the server (JSONP
   * without CORS) the token's own `exp` is the only hint.
   */
  Upstream.prototype.whyRefused = function (transport, done) {
    var token = this.auth.token;
    var expiry = tokenExpiry(token);
    var hint = expiry !== null && expiry <= Date.now() ? { status: 401, error: "token expired" } : null;
    if (transport === "jsonp" || !available("stream") || !this.connSpec) {
      done(hint);
      return;
    }
    var ctrl = new root.AbortController();
    var finished = false;
    var finish = function (why) {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      ctrl.abort();
      done(why);
    };
    var timer = setTimeout(function () {
      finish(null);
    }, this.options.flushTimeout);
    var url = subscribeUrl(this.base, "stream", { channels: this.connSpec.channels, presence: [] }, null, token);
    root.fetch(url, { cache: "no-store", signal: ctrl.signal }).then(
      function (res) {
        if (res.status !== 401 && res.status !== 403) return finish(null);
        res.text().then(errorOf, function () {
          return null;
        }).then(function (error) {
          finish({ status: res.status, error: error });
        });
      },
      function () {
        finish(null);
      },
    );
  };

  /**
   * A refusal for the token's sake. 401 (expired, revoked, bad): with getToken, fetch a fresh
   * token and reconnect at once, resuming from the last id (refused again right after, back
   * off; after MAX_AUTH_RETRIES, give up); without it, stop. 403 (the token does not cover the
   * channels): stop. Never held against the transport.
   */
  Upstream.prototype.authFailed = function (status, error, reason) {
    var transport = this.ladder.current;
    if (status === 403) return this.halt(403, error || "forbidden");
    if (!this.auth.canRefresh()) return this.halt(401, error || (reason === "expired" ? "token expired" : "unauthorized"));
    this.authAttempts += 1;
    if (this.authAttempts > MAX_AUTH_RETRIES) return this.halt(401, error || "unauthorized");
    var self = this;
    var gen = this.gen;
    this.events.state(this.everConnected ? "reconnecting" : "connecting", transport);
    this.auth.refresh(reason === "unauthorized" && /expired/i.test(error || "") ? "expired" : reason).then(
      function () {
        if (gen !== self.gen || self.closed) return;
        var delay = self.authAttempts === 1 ? 0 : backoffDelay(self.authAttempts - 2, self.options.backoff);
        self.schedule(delay);
      },
      function (e) {
        if (gen !== self.gen || self.closed) return;
        self.halt(401, "getToken failed: " + ((e && e.message) || e));
      },
    );
  };

  /** Stops reconnecting after a refusal: 'unauthorized' state and an error event. */
  Upstream.prototype.halt = function (status, error) {
    this.stop();
    clearTimeout(this.timer);
    this.timer = null;
    this.halted = true;
    this.connectedNow = false;
    this.events.control({ event: "error", error: error, status: status });
    this.events.state("unauthorized", this.ladder.current);
  };

  /** A new token from the application (setToken): try again now if a refusal stopped us. */
  Upstream.prototype.retry = function () {
    if (this.closed || !this.halted) return;
    this.halted = false;
    this.authAttempts = 0;
    this.schedule(0);
  };

  /** What a failure to open or a cut means for the ladder and the backoff. */
  Upstream.prototype.stepFailed = function (reason) {
    // A held poll cut by something in between (a proxy's timeout shorter than the hold). One
    // that got messages through is a working transport that dropped; cut again and again with
    // nothing delivered, it is stepped down from, towards interval polling.
    if (reason === "cut" && this.delivered) reason = "dropped";
    if (reason === "dropped") {
      // A connection that delivered, or lived a while, worked: start the backoff afresh. One
      // cut soon after opening, with nothing delivered, is no better than one that never
      // opened (a proxy that kills upgrades after the handshake, say).
      var stable = this.delivered || Date.now() - this.openedAt >= STABLE_MS;
      if (stable) {
        this.attempt = 0;
        this.ladder.worked();
      } else {
        reason = "connect";
      }
    }
    var from = this.ladder.current;
    // A refusal (an HTTP error answer: bad channel, wrong inbox secret, origin not allowed,
    // server overloaded) is not the transport's fault, nor is a disconnect by the application:
    // back off and try again on it. The backoff grows with each one in a row, so a client the
    // application keeps disconnecting does not hammer the server.
    var blameless = reason === "refused" || reason === "disconnected";
    var step = blameless ? { transport: from, stepped: false, wrapped: false } : this.ladder.failed(reason);
    if (step.stepped) this.events.transport({ transport: step.transport, from: from, reason: reason });
    if (reason === "refused") this.events.control({ event: "error", error: "subscription refused by the server" });
    if (step.stepped && !step.wrapped) {
      this.schedule(0);
      return;
    }
    var delay = Math.max(backoffDelay(this.attempt, this.options.backoff), this.retryHint || 0);
    this.attempt += 1;
    this.events.state("reconnecting", step.transport);
    this.schedule(delay);
  };

  /** The browser says the network is back: stop waiting out the backoff. */
  Upstream.prototype.online = function () {
    if (this.closed || this.halted || this.conn || !this.timer) return;
    this.schedule(0);
  };

  Upstream.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.timer);
    this.stop();
  };

  // ---------------------------------------------------------------------------------------
  // Halley: the public client.

  var MEMBER_RE = /^[A-Za-z0-9_-]{8,64}$/;

  /**
   * A presence option, `info` or `{member, info}` (member id of one's own choosing), as
   * `{member, info}`; null for none.
   */
  function presenceOption(value, member) {
    if (value === null || value === undefined || value === false) return null;
    if (typeof value !== "object" || Array.isArray(value)) throw new Error("halley: presence info must be an object");
    var keys = Object.keys(value);
    var wrapped =
      value.info !== null &&
      typeof value.info === "object" &&
      keys.every(function (k) {
        return k === "member" || k === "info";
      });
    var p = wrapped ? { member: value.member || member, info: value.info } : { member: member, info: value };
    if (!MEMBER_RE.test(p.member)) throw new Error("halley: presence member id must be 8-64 of [A-Za-z0-9_-]");
    if (utf8Length(JSON.stringify(p.info)) > MAX_PRESENCE_INFO) {
      throw new Error("halley: presence info is more than " + MAX_PRESENCE_INFO + " bytes of JSON");
    }
    return p;
  }

  function utf8Length(text) {
    return typeof root.TextEncoder === "function" ? new root.TextEncoder().encode(text).length : unescape(encodeURIComponent(text)).length;
  }

  var canShare = function () {
    return (
      typeof root.BroadcastChannel === "function" &&
      !!root.navigator &&
      !!root.navigator.locks &&
      typeof root.navigator.locks.request === "function"
    );
  };

  /** How often a leader looks for tabs that went away without saying goodbye. */
  var PRUNE_MS = 3000;

  /**
   * A client of one Halley server.
   * @param {string} [url]  the server (`https://halley.example`); default: this page's origin
   * @param {object} [options]  see DEFAULTS above and halley.d.ts
   */
  function Halley(url, options) {
    if (!(this instanceof Halley)) return new Halley(url, options);
    var opts = {};
    Object.keys(DEFAULTS).forEach(function (k) {
      opts[k] = options && options[k] !== undefined ? options[k] : DEFAULTS[k];
    });
    opts.backoff = Object.assign({}, DEFAULTS.backoff, (options && options.backoff) || {});
    opts.transports = opts.transports.filter(function (t) {
      return TRANSPORTS.indexOf(t) >= 0;
    });
    if (opts.transports.length === 0) throw new Error("halley: no known transport in options.transports");
    this.url = absoluteBase(url);
    this.options = opts;
    this.member = opts.member || randomId(20);
    this._subs = new Map();
    this._nextSub = 1;
    this._presence = new Map();
    this._inboxes = [];
    this._inboxPromise = null;
    this._listeners = {};
    this._resume = new Resume(opts.dedupeWindow);
    this._state = "connecting";
    this._transport = null;
    this._tab = randomId(16);
    this._closed = false;
    this._upstream = null;
    this._peers = new Map();
    this._pushTimer = null;
    this._gapAt = undefined;
    /** Delivery latency of this client's own publishes: publish times and arrivals by id. */
    this._timing = new Timing();
    /** Figures waiting for the next latency report (`latencyReport`), and its timer. */
    this._reportEvery = reportInterval(opts.latencyReport);
    this._pending = new Pending();
    this._reportTimer = null;
    var self = this;
    this._auth = new Auth(opts, function (reason) {
      // Say that a fresh token came in (never which one).
      if (self.role === "leader") self._post({ t: "token", info: { reason: reason } });
      self._emit("token", { reason: reason });
    });
    this.role = "solo";
    if (opts.share && canShare()) this._share();
    else this._lead();
  }

  Object.defineProperty(Halley.prototype, "state", {
    get: function () {
      return this._state;
    },
  });
  Object.defineProperty(Halley.prototype, "transport", {
    get: function () {
      return this._transport;
    },
  });
  Object.defineProperty(Halley.prototype, "lastId", {
    get: function () {
      return this._resume.lastId;
    },
  });

  /**
   * Listens to 'state' ({state, transport}), 'transport' ({transport, from, reason}),
   * 'gap' ({channel, lastId}), 'inbox' (data, message), 'message' (message), 'error' (object),
   * 'token' ({reason}: a fresh token came from getToken; reason initial | expired | unauthorized),
   * 'disconnected' ({reason}: the application ended the connection; the client reconnects
   * after a backoff), 'unsubscribed' ({channel}: the application took this channel off; its
   * subscriptions have ended), 'latency' ({channel, id, ms}: one of this client's publishes
   * came back on its subscription after ms), 'report' ({channel, transport, count, error}: a
   * latency report was sent, error null, or failed; with `latencyReport`).
   * @returns {function(): void} removes the listener
   */
  Halley.prototype.on = function (event, fn) {
    (this._listeners[event] = this._listeners[event] || []).push(fn);
    var self = this;
    return function () {
      self.off(event, fn);
    };
  };
  Halley.prototype.off = function (event, fn) {
    var list = this._listeners[event] || [];
    var i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
  };
  Halley.prototype._emit = function (event) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this._listeners[event] || []).slice().forEach(function (fn) {
      safely(fn, args);
    });
  };

  /**
   * Subscribes to a channel or pattern (`/a/*`, `/a/**`). `fn(data, message)` gets every
   * message once, in id order. With `{presence: info}` this client is a member of `channel`
   * with `info` while subscribed. With `{recent: n}` (an exact channel, 1–100) `fn` first gets
   * the channel's newest n messages, then the live ones, with nothing missed or repeated in
   * between (the server reads both at once); again after the channel was left and taken up
   * again, not when the connection merely resumes. Those messages have `recent: true`.
   */
  Halley.prototype.subscribe = function (channel, fn, options) {
    if (this._closed) throw new Error("halley: closed");
    if (!isPattern(channel)) throw new Error("halley: bad channel name " + JSON.stringify(channel));
    // The server refuses these, and one refused channel would fail the connection of all.
    if (/^\/(meta|service|inbox)(\/|$)/.test(channel)) {
      throw new Error("halley: cannot subscribe to " + channel + " (inboxes: use inbox())");
    }
    if (typeof fn !== "function") throw new Error("halley: subscribe needs a callback");
    var presence = presenceOption(options && options.presence, this.member);
    if (presence && !isChannel(channel)) throw new Error("halley: presence needs an exact channel");
    var recent = options && options.recent;
    if (recent !== undefined && recent !== null && recent !== 0) {
      if (!(Number.isInteger(recent) && recent > 0 && recent <= MAX_RECENT)) {
        throw new Error("halley: recent is a number of messages, 1 to " + MAX_RECENT);
      }
      if (!isChannel(channel)) throw new Error("halley: recent needs an exact channel");
    } else {
      recent = 0;
    }
    var known = this._localSpec().channels.some(function (c) {
      return c.channel === channel;
    });
    if (!known && this._localSpec().channels.length >= MAX_SUB_CHANNELS) {
      throw new Error("halley: at most " + MAX_SUB_CHANNELS + " channels per client (subscribe to a pattern instead)");
    }
    var id = this._nextSub++;
    var self = this;
    this._subs.set(id, { channel: channel, fn: fn, presence: presence, recent: recent });
    this._changed();
    return {
      channel: channel,
      unsubscribe: function () {
        if (self._subs.delete(id)) self._changed();
      },
    };
  };

  /**
   * Declares (or with `null` withdraws) presence on `channel`, subscribed or not. `presence` is
   * the info object, or `{member, info}` to choose the member id for this declaration.
   */
  Halley.prototype.setPresence = function (channel, presence) {
    if (!isChannel(channel)) throw new Error("halley: bad channel name " + JSON.stringify(channel));
    var p = presenceOption(presence, this.member);
    if (p) this._presence.set(channel, p);
    else this._presence.delete(channel);
    this._changed();
  };

  /**
   * Publishes `data` (any JSON value) to `channel`. Resolves with {channel, id, subscribers}.
   * `options`: `{type, ttl}` (the message's type and seconds in history). A publish whose
   * answer is lost is sent again with the same `Idempotency-Key`: the server publishes it once.
   */
  Halley.prototype.publish = function (channel, data, options) {
    if (!isChannel(channel)) return Promise.reject(new Error("halley: cannot publish to " + JSON.stringify(channel)));
    var json = JSON.stringify(data === undefined ? null : data);
    var key = this.options.key;
    var self = this;
    // The message's type and time to live (README, "Publishing").
    var extra = "";
    if (options && options.type !== undefined) extra += "&type=" + encodeURIComponent(options.type);
    if (options && options.ttl !== undefined) extra += "&ttl=" + encodeURIComponent(options.ttl);
    // One key for this publish and its retries: the server publishes it once.
    var idempotencyKey = randomId(24);
    var started = nowMs();
    var attempt = function (n) {
      return self._authed(function (token) {
        if (self._jsonp()) {
          var url = self.url + "/pub" + channel + "?data=" + encodeURIComponent(json) + (key ? "&key=" + encodeURIComponent(key) : "") + extra;
          return jsonpRequest(withToken(url, token), self.options.pollTimeout).then(function (args) {
            return args[0];
          });
        }
        var headers = authHeaders({ "content-type": "application/json", "idempotency-key": idempotencyKey }, token);
        if (key) headers["x-halley-key"] = key;
        var url = self.url + "/pub" + channel + (extra ? "?" + extra.slice(1) : "");
        return httpRequest("POST", url, json, headers).then(parseAnswer);
      }).catch(function (e) {
        // Lost on the way (no answer), under way elsewhere (409), or the server busy (503):
        // the same key again, at most PUBLISH_RETRIES times. JSONP has no key: not retried.
        var again = !self._jsonp() && (e.status === undefined || e.status === 0 || e.status === 409 || e.status === 503);
        if (!again || n >= PUBLISH_RETRIES || self._closed) throw e;
        return new Promise(function (resolve) {
          setTimeout(resolve, backoffDelay(n, self.options.backoff) + 50);
        }).then(function () {
          return attempt(n + 1);
        });
      });
    };
    return attempt(0).then(function (answer) {
      // This client's own message, when it comes back on its subscriptions, says how long a
      // delivery took end to end (the "latency" event).
      var took = answer && answer.id ? self._timing.published(answer.id, started, nowMs()) : null;
      if (took !== null) self._latency(answer.channel, answer.id, took);
      return answer;
    });
  };

  /**
   * Calls the application behind the server (its `rpc-url`) with `data` (any JSON value) and
   * resolves with its answer. `method` names what to call: `users/find` (or `/users/find`) is
   * `POST /rpc/users/find`, judged by the server as a publish to `/service/users/find`.
   * Rejects with an Error whose `status` says why: 401/403 the server's policy refused, a 4xx
   * of the application's own (its `error` as `reason`), 502 the application failed, 503 it is
   * unreachable or busy, 504 it did not answer in time, 501 the server has no rpc-url.
   */
  Halley.prototype.rpc = function (method, data) {
    var path = typeof method === "string" ? "/" + method.replace(/^\//, "") : null;
    if (!path || !isChannel("/service" + path)) {
      return Promise.reject(new Error("halley: bad rpc method " + JSON.stringify(method)));
    }
    var json = JSON.stringify(data === undefined ? null : data);
    var key = this.options.key;
    var self = this;
    return this._authed(function (token) {
      // A call is a POST with a body; a script tag cannot make one.
      if (self._jsonp()) return Promise.reject(new Error("halley: rpc needs fetch or XMLHttpRequest (CORS)"));
      var headers = authHeaders({ "content-type": "application/json" }, token);
      if (key) headers["x-halley-key"] = key;
      return httpRequest("POST", self.url + "/rpc" + path, json, headers).then(parseAnswer);
    });
  };

  /**
   * One delivery of this client's own publish took `ms`: the "latency" event, and a figure for
   * the next report when `latencyReport` is on. A report goes once `latencyReport` seconds
   * have passed since its first figure came, so two reports are at least that far apart.
   */
  Halley.prototype._latency = function (channel, id, ms) {
    this._emit("latency", { channel: channel, id: id, ms: ms });
    if (!this._reportEvery || this._closed || !this._transport) return;
    if (this._pending.add(channel, this._transport, ms)) this._scheduleReport();
  };

  Halley.prototype._scheduleReport = function () {
    if (this._reportTimer !== null || this._pending.size === 0) return;
    var self = this;
    this._reportTimer = setTimeout(function () {
      self._reportTimer = null;
      self._report();
    }, this._reportEvery * 1000);
  };

  /** Sends the oldest channel's figures (`POST /api/latency`); what fails is not sent again. */
  Halley.prototype._report = function () {
    if (this._closed) return;
    var group = this._pending.take();
    if (!group) return;
    // A report is a POST with a body: over JSONP (no CORS assumed) none is sent.
    if (!this._jsonp()) {
      var self = this;
      var key = this.options.key;
      var url = this.url + "/api/latency?channel=" + encodeURIComponent(group.channel);
      var body = JSON.stringify({ transport: group.transport, ms: group.ms });
      this._authed(function (token) {
        var headers = authHeaders({ "content-type": "application/json" }, token);
        if (key) headers["x-halley-key"] = key;
        return httpRequest("POST", url, body, headers).then(parseAnswer);
      }).then(
        function (answer) {
          self._emit("report", { channel: group.channel, transport: group.transport, count: group.ms.length, error: null });
          return answer;
        },
        function (e) {
          self._emit("report", { channel: group.channel, transport: group.transport, count: group.ms.length, error: (e && e.message) || String(e) });
        },
      );
    }
    this._scheduleReport();
  };

  /** Replaces the token (for apps that refresh it themselves); reconnects if a refusal stopped. */
  Halley.prototype.setToken = function (token) {
    this._auth.token = token || null;
    if (this._upstream) this._upstream.retry();
  };

  /**
   * Runs `request(token)` with the current token (after the first getToken(), if it is still
   * on its way); answered 401 and able to refresh, once more with a fresh token.
   */
  Halley.prototype._authed = function (request) {
    var auth = this._auth;
    var go = function () {
      return request(auth.token);
    };
    var wait = auth.pending();
    var first = wait ? wait.then(go) : go();
    if (!auth.canRefresh()) return first;
    return first.catch(function (e) {
      if (!e || e.status !== 401) throw e;
      return auth.refresh(/expired/i.test(e.reason || "") ? "expired" : "unauthorized").then(go);
    });
  };

  /**
   * This client's private address: `{url, channel}`. Anyone may POST to `url`; messages to it
   * arrive as 'inbox' events (`h.on('inbox', (data, message) => …)`). One per Halley instance.
   */
  Halley.prototype.inbox = function () {
    var self = this;
    if (!this._inboxPromise) {
      var minted = this._authed(function (token) {
        return self._jsonp()
          ? jsonpRequest(withToken(self.url + "/api/inbox", token), self.options.pollTimeout).then(function (args) {
              return args[0];
            })
          : httpRequest("POST", self.url + "/api/inbox", "", authHeaders({}, token)).then(parseAnswer);
      });
      this._inboxPromise = minted.then(
        function (box) {
          self._inboxes.push({ channel: box.channel, secret: box.secret });
          self._changed();
          return { url: self.url + (box.path || box.channel), channel: box.channel };
        },
        function (e) {
          self._inboxPromise = null;
          throw e;
        },
      );
    }
    return this._inboxPromise;
  };

  /**
   * Sends `data` to an inbox address (the `url` another client's inbox() returned). The owner
   * gets `data` as it is, over every transport.
   */
  Halley.prototype.send = function (address, data) {
    var json = JSON.stringify(data === undefined ? null : data);
    var key = this.options.key;
    var self = this;
    return this._authed(function (token) {
      if (self._jsonp()) {
        // A script tag can only GET: the JSON travels in `data`.
        var url = address + "?data=" + encodeURIComponent(json) + (key ? "&key=" + encodeURIComponent(key) : "");
        return jsonpRequest(withToken(url, token), self.options.pollTimeout).then(function (args) {
          return args[0];
        });
      }
      var headers = authHeaders({ "content-type": "application/json" }, token);
      if (key) headers["x-halley-key"] = key;
      return httpRequest("POST", address, json, headers).then(parseAnswer);
    });
  };

  /** Who is on `channel`: the server's `{channel, members: [info, …]}`. */
  Halley.prototype.presence = function (channel) {
    return this._get("/api/presence?channel=" + encodeURIComponent(channel));
  };

  /** Channels under `prefix` with members: the server's `{channels: [{channel, count, members}]}`. */
  Halley.prototype.rooms = function (prefix) {
    return this._get("/api/presence?prefix=" + encodeURIComponent(prefix || "/"));
  };

  /**
   * The newest `limit` (default 20, at most 100) messages of `channel` still in the server's
   * history, oldest first: the server's `{channel, messages: [{channel, id, data}, …]}`. For
   * context on arrival; the subscription itself only brings what comes after it.
   */
  Halley.prototype.history = function (channel, limit) {
    var query = "?channel=" + encodeURIComponent(channel) + (limit ? "&limit=" + Number(limit) : "");
    return this._get("/api/history" + query);
  };

  Halley.prototype._get = function (path) {
    var self = this;
    return this._authed(function (token) {
      if (self._jsonp()) {
        return jsonpRequest(withToken(self.url + path, token), self.options.pollTimeout).then(function (args) {
          return args[0];
        });
      }
      return httpRequest("GET", self.url + path, undefined, authHeaders({}, token)).then(parseAnswer);
    });
  };

  /** One-shot requests go over JSONP when that is the transport in use (no CORS assumed). */
  Halley.prototype._jsonp = function () {
    var only = this.options.transports.length === 1 && this.options.transports[0] === "jsonp";
    return only || this._transport === "jsonp" || !available("longpoll");
  };

  /** Stops everything: subscriptions, the connection, the tab's part in sharing. */
  Halley.prototype.close = function () {
    if (this._closed) return;
    this._closed = true;
    this._subs.clear();
    this._presence.clear();
    clearTimeout(this._pushTimer);
    clearTimeout(this._reportTimer);
    this._reportTimer = null;
    clearInterval(this._pruneTimer);
    if (this._upstream) this._upstream.close();
    this._upstream = null;
    if (this._onOnline) root.removeEventListener("online", this._onOnline);
    if (this._onPageHide) root.removeEventListener("pagehide", this._onPageHide);
    if (this._onPageShow) root.removeEventListener("pageshow", this._onPageShow);
    if (this._bc) {
      this._post({ t: "bye", from: this._tab });
      this._bc.close();
    }
    if (this._releaseLeader) this._releaseLeader();
    if (this._releaseTab) this._releaseTab();
    this._setState("closed", null);
  };

  // What this instance wants from the connection.
  Halley.prototype._localSpec = function () {
    var self = this;
    var channels = [];
    var presence = [];
    this._subs.forEach(function (s) {
      channels.push(s.recent ? { channel: s.channel, recent: s.recent } : { channel: s.channel });
      if (s.presence) presence.push({ channel: s.channel, member: s.presence.member, info: s.presence.info });
    });
    this._presence.forEach(function (p, channel) {
      presence.push({ channel: channel, member: p.member, info: p.info });
    });
    this._inboxes.forEach(function (b) {
      channels.push({ channel: b.channel, inbox: b.secret });
    });
    return mergeSpecs([{ channels: channels, presence: presence }]);
  };

  Halley.prototype._changed = function () {
    if (this._closed) return;
    if (this.role === "follower") {
      var self = this;
      clearTimeout(this._pushTimer);
      this._pushTimer = setTimeout(function () {
        self._announce();
      }, this.options.debounce);
      return;
    }
    this._refresh();
  };

  Halley.prototype._refresh = function () {
    if (!this._upstream) return;
    var specs = [this._localSpec()];
    this._peers.forEach(function (p) {
      specs.push(p.spec);
    });
    this._upstream.update(mergeSpecs(specs));
  };

  Halley.prototype._setState = function (state, transport) {
    if (state === this._state && transport === this._transport) return;
    this._state = state;
    this._transport = transport;
    this._emit("state", { state: state, transport: transport });
  };

  Halley.prototype._dispatch = function (m) {
    this._emit("message", m);
    var took = this._timing.arrived(m.id, nowMs());
    if (took !== null) this._latency(m.channel, m.id, took);
    for (var i = 0; i < this._inboxes.length; i++) {
      if (this._inboxes[i].channel === m.channel) {
        this._emit("inbox", m.data, m);
        return;
      }
    }
    this._subs.forEach(function (s) {
      if (matchChannel(s.channel, m.channel)) safely(s.fn, [m.data, m]);
    });
  };

  Halley.prototype._control = function (obj) {
    if (obj.event === "gap") {
      // One gap per position: polls that resume from the same id again (nothing newer arrived
      // yet) are told about the same gap again.
      var at = this._resume.lastId;
      if (this._gapAt === at) return;
      this._gapAt = at;
      this._emit("gap", { channel: obj.channel || null, lastId: obj.last_id || null });
    } else if (obj.event === "error") {
      this._emit("error", obj);
    } else if (obj.event === "unsubscribed" && typeof obj.channel === "string") {
      // The application took this channel off (the control API): the subscriptions to it
      // end here, or the next connection would ask for it again.
      var gone = [];
      this._subs.forEach(function (s, id) {
        if (s.channel === obj.channel) gone.push(id);
      });
      if (gone.length === 0) return;
      var subs = this._subs;
      gone.forEach(function (id) {
        subs.delete(id);
      });
      this._changed();
      this._emit("unsubscribed", { channel: obj.channel });
    } else if (obj.event === "disconnected") {
      this._emit("disconnected", { reason: obj.reason || null });
    }
  };

  // Runs the connection in this tab: alone ('solo') or for every tab ('leader').
  Halley.prototype._lead = function () {
    var self = this;
    var relay = function (msg) {
      if (self.role === "leader") self._post(msg);
    };
    this._upstream = new Upstream(this.url, this.options, this._resume, {
      message: function (m, older) {
        relay(older ? { t: "msg", m: m, older: true } : { t: "msg", m: m });
        self._dispatch(m);
      },
      control: function (obj) {
        relay({ t: "ctl", obj: obj });
        self._control(obj);
      },
      position: function (id) {
        relay({ t: "pos", id: id });
      },
      state: function (state, transport) {
        relay({ t: "state", state: state, transport: transport });
        self._setState(state, transport);
      },
      transport: function (info) {
        relay({ t: "transport", info: info });
        self._emit("transport", info);
      },
    }, this._auth);
    if (typeof root.addEventListener === "function" && !this._onOnline) {
      this._onOnline = function () {
        if (self._upstream) self._upstream.online();
      };
      root.addEventListener("online", this._onOnline);
    }
    this._refresh();
  };

  // Sharing between tabs. Every instance holds a lock of its own (so the leader can tell
  // which tabs are gone) and queues for the leader lock; whoever holds that runs the
  // connection, the others are followers.
  Halley.prototype._share = function () {
    var self = this;
    var name = "halley:" + this.url;
    this.role = "follower";
    this._lockName = name;
    this._bc = new root.BroadcastChannel(name);
    this._bc.onmessage = function (e) {
      self._onPeer(e.data);
    };
    root.navigator.locks.request(name + "#tab:" + this._tab, function () {
      if (self._closed) return undefined;
      return new Promise(function (resolve) {
        self._releaseTab = resolve;
      });
    });
    root.navigator.locks.request(name, function () {
      if (self._closed) return undefined;
      return new Promise(function (resolve) {
        self._releaseLeader = resolve;
        self._becomeLeader();
      });
    });
    // A follower tab going away says so, so that the leader drops its channels and presence
    // now rather than at its next check; coming back from the back/forward cache, it rejoins.
    if (typeof root.addEventListener === "function") {
      this._onPageHide = function () {
        if (self.role === "follower") self._post({ t: "bye", from: self._tab });
      };
      this._onPageShow = function (e) {
        if (e && e.persisted) self._announce();
      };
      root.addEventListener("pagehide", this._onPageHide);
      root.addEventListener("pageshow", this._onPageShow);
    }
    this._announce();
  };

  Halley.prototype._post = function (msg) {
    if (!this._bc) return;
    try {
      this._bc.postMessage(msg);
    } catch (e) {
      /* closed */
    }
  };

  Halley.prototype._announce = function () {
    if (this._closed || this.role !== "follower") return;
    this._post({ t: "subs", from: this._tab, spec: this._localSpec(), lastId: this._resume.lastId });
  };

  Halley.prototype._becomeLeader = function () {
    var self = this;
    this.role = "leader";
    clearTimeout(this._pushTimer);
    this._peers.clear();
    var wasUp = this._state === "connected" || this._state === "reconnecting";
    this._lead();
    // Taking over from a leader that went away: for this tab it is a reconnect.
    this._upstream.everConnected = wasUp;
    this._post({ t: "hello", from: this._tab });
    this._pruneTimer = setInterval(function () {
      self._prune();
    }, PRUNE_MS);
  };

  Halley.prototype._prune = function () {
    var self = this;
    if (this._peers.size === 0 || !root.navigator.locks.query) return;
    root.navigator.locks.query().then(function (snapshot) {
      var alive = new Set(
        (snapshot.held || []).concat(snapshot.pending || []).map(function (l) {
          return l.name;
        }),
      );
      var changed = false;
      self._peers.forEach(function (_, tab) {
        if (!alive.has(self._lockName + "#tab:" + tab)) {
          self._peers.delete(tab);
          changed = true;
        }
      });
      if (changed) self._refresh();
    });
  };

  Halley.prototype._onPeer = function (msg) {
    if (!msg || typeof msg !== "object" || this._closed) return;
    if (this.role === "leader") {
      if (msg.t === "subs") {
        this._peers.set(msg.from, { spec: msg.spec });
        if (msg.lastId) this._resume.advance(msg.lastId);
        this._refresh();
        // Tell the newcomer how things stand (not 'idle': its channels are on their way).
        if (this._state !== "idle") this._post({ t: "state", state: this._state, transport: this._transport });
      } else if (msg.t === "bye") {
        if (this._peers.delete(msg.from)) this._refresh();
      }
      return;
    }
    switch (msg.t) {
      case "hello":
        this._announce();
        break;
      case "msg":
        if (this._resume.accept(msg.m.id, msg.older === true)) this._dispatch(msg.m);
        break;
      case "pos":
        this._resume.advance(msg.id);
        break;
      case "ctl":
        this._control(msg.obj);
        break;
      case "state":
        this._setState(msg.state, msg.transport);
        break;
      case "transport":
        this._emit("transport", msg.info);
        break;
      case "token":
        this._emit("token", msg.info);
        break;
    }
  };

  Halley.TRANSPORTS = TRANSPORTS.slice();
  Halley.DEFAULTS = DEFAULTS;
  /** The pure parts, for unit tests. Not a stable API. */
  Halley._internal = {
    parseId: parseId,
    compareIds: compareIds,
    Resume: Resume,
    Timing: Timing,
    Pending: Pending,
    reportInterval: reportInterval,
    backoffDelay: backoffDelay,
    Ladder: Ladder,
    isChannel: isChannel,
    isPattern: isPattern,
    matchChannel: matchChannel,
    mergeSpecs: mergeSpecs,
    subscribeUrl: subscribeUrl,
    splitLines: splitLines,
    available: available,
    tokenExpiry: tokenExpiry,
    Auth: Auth,
  };

  root.Halley = Halley;
  if (typeof module === "object" && module && module.exports) module.exports = Halley;
})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this);
