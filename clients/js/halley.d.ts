// Types for halley.js, the browser client of Halley's native API (clients/js/PROTOCOL.md).
//
// halley.js is a classic script with no `export`: it sets `globalThis.Halley`.
//   <script src="/halley.js"></script>             → `new Halley(url)`
//   import "/halley.js"; const { Halley } = globalThis;   (from an ES module)
// These declarations describe that global.

/** Transports, in the order the client prefers them. */
export type Transport = "websocket" | "sse" | "stream" | "longpoll" | "jsonp" | "poll";

/**
 * `idle`: no subscriptions, nothing open. `unauthorized`: the server refused the token (401 with
 * no `getToken` to get a fresh one, or `getToken` failed, or 403: the token does not cover the
 * channels); the client stopped reconnecting until `setToken()` or a change of subscriptions.
 */
export type State = "connecting" | "connected" | "reconnecting" | "closed" | "idle" | "unauthorized";

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface HalleyOptions {
  /** Transports to try, best first (default: all five). `['longpoll']` forces one. */
  transports?: Transport[];
  /** One upstream connection for all tabs of this origin (Web Locks + BroadcastChannel). Default true. */
  share?: boolean;
  /** A stream with no first byte within this many ms is taken as buffered by a proxy: step down. Default 4000. */
  flushTimeout?: number;
  /** A long-poll/JSONP request older than this is given up. Default 40000 (server holds 25 s). */
  pollTimeout?: number;
  /** A poll pending this long without failing counts as connected. Default 1000. */
  pollSettle?: number;
  /** Interval polling (`poll`): ms to the next poll after one with messages. Default 2000. */
  pollInterval?: number;
  /** Interval polling: each empty answer in a row doubles the wait, up to this many ms. Default 30000. */
  pollIntervalMax?: number;
  /** Reconnect delay: random in [0, min(max, base·2^attempt)) ms. Default {base: 500, max: 30000}. */
  backoff?: { base?: number; max?: number };
  /** A transport that once worked is given up after this many failures to open in a row. Default 3. */
  stepDownAfter?: number;
  /** A fetch stream silent this long (no heartbeat) is reopened. Default 45000. */
  idleTimeout?: number;
  /** Subscription changes within this many ms make one reconnect. Default 20. */
  debounce?: number;
  /** Recent message ids remembered to drop duplicates. Default 1000. */
  dedupeWindow?: number;
  /** Publish key (server `--publish-key`). */
  key?: string | null;
  /** Presence member id, 8–64 of [A-Za-z0-9_-]. Default: random per instance. */
  member?: string | null;
  /**
   * Access token (a JWT your application's server minted). Sent as `?token=` on subscribe URLs
   * (every transport) and `Authorization: Bearer` on fetch/XHR requests (`?token=` over JSONP).
   */
  token?: string | null;
  /**
   * Called for a token before the first connection (unless `token` is given) and whenever a
   * fresh one is needed: the server said the token expired, or refused it with 401. A rejection
   * (or an empty string) stops the client in state `unauthorized`. With tabs sharing one
   * connection, the leader tab's is the one the connection uses.
   */
  getToken?: (() => string | Promise<string>) | null;
  /**
   * Report this client's measured delivery latencies (the `latency` event) to the server,
   * `POST /api/latency`, counted in its `/metrics` as `halley_client_latency_seconds`:
   * `true` for a report every 10 s at most, a number of seconds between reports (at least 1).
   * A report holds one channel's figures, at most 64 (more wait for the next report; beyond 64
   * waiting, new ones are dropped), each at most 60 000 ms. The caller must be allowed to
   * subscribe to the channel; none is sent over JSONP. Default `false`.
   */
  latencyReport?: boolean | number;
}

/** A message as the server sends it. */
export interface Message<T = Json> {
  channel: string;
  /** Opaque, resumable: `<epoch hex>-<offset>`. */
  id: string;
  data: T;
}

export interface Subscription {
  readonly channel: string;
  unsubscribe(): void;
}

/** Presence info: what others see of a member (≤ 512 bytes of JSON), e.g. {name, color}. */
export type PresenceInfo = { [key: string]: Json };

/** `info`, or `{member, info}` to choose the member id (8–64 of [A-Za-z0-9_-]) for it. */
export type PresenceOption = PresenceInfo | { member?: string; info: PresenceInfo };

export interface SubscribeOptions {
  /** Be a member of this (exact) channel while subscribed. */
  presence?: PresenceOption;
  /**
   * The (exact) channel's newest messages first, 1–100, then the live ones: nothing missed
   * or repeated in between.
   */
  recent?: number;
}

export interface PublishOptions {
  /** The message's type: SSE's `event:` name, `"type"` in its object (1–64 of A-Za-z0-9_.:-). */
  type?: string;
  /** Seconds the message stays in history (a resume, `recent`); live delivery is unaffected. */
  ttl?: number;
}

export interface Published {
  channel: string;
  id: string;
  subscribers: number;
}

export interface Inbox {
  /** Absolute URL anyone may POST to (or GET `?message=…&callback=` over JSONP). */
  url: string;
  /** The inbox's channel, `/inbox/H`; its messages arrive as 'inbox' events. */
  channel: string;
}

export interface PresenceAnswer {
  channel: string;
  members: Array<{ [key: string]: Json }>;
}

export interface RoomsAnswer {
  channels: Array<{ channel: string; count: number; members: Array<{ [key: string]: Json }> }>;
}

/** `GET /api/history`: a channel's newest messages, oldest first. */
export interface HistoryAnswer {
  channel: string;
  messages: Message[];
}

export interface HalleyEvents {
  state: (change: { state: State; transport: Transport | null }) => void;
  /** The client stepped to another transport; reason: missing | connect | buffered. */
  transport: (change: { transport: Transport; from: Transport; reason: string }) => void;
  /** The server could not resume from the last id: messages may have been lost. */
  gap: (gap: { channel: string | null; lastId: string | null }) => void;
  /**
   * One of this client's own publishes came back on its subscriptions: milliseconds from
   * `publish()` to its arrival, end to end (the server's own publish→write part is
   * `halley_delivery_latency_seconds` in `/metrics`).
   */
  latency: (latency: { channel: string; id: string; ms: number }) => void;
  /** A latency report (`latencyReport`) was sent (`error` null) or failed. */
  report: (report: { channel: string; transport: Transport; count: number; error: string | null }) => void;
  /** A message to this client's inbox. */
  inbox: (data: Json, message: Message) => void;
  /** Every message, before the subscription callbacks. */
  message: (message: Message) => void;
  /**
   * A server `error` control object, or a refused subscription. `status` 401 or 403 when the
   * token was refused and the client stopped (state `unauthorized`).
   */
  error: (error: { event: "error"; error?: string; status?: number }) => void;
  /** A fresh token came from `getToken` (never which one): at start, after expiry, after a 401. */
  token: (info: { reason: "initial" | "expired" | "unauthorized" }) => void;
  /**
   * The application ended the connection (the server's control API). Not a ban: the client
   * reconnects after a backoff (a revoked token comes as an expiry instead).
   */
  disconnected: (info: { reason: string | null }) => void;
  /**
   * The application took this channel off (the server's control API): this client's
   * subscriptions to it have ended, and are not renewed on reconnect.
   */
  unsubscribed: (info: { channel: string }) => void;
}

declare class HalleyClient {
  /** @param url the server, e.g. "https://halley.example" (default: this page's origin) */
  constructor(url?: string, options?: HalleyOptions);
  readonly url: string;
  readonly options: Required<HalleyOptions>;
  /** This instance's presence member id. */
  readonly member: string;
  readonly state: State;
  readonly transport: Transport | null;
  /** The id to resume from. */
  readonly lastId: string | null;
  /** 'solo' (own connection), 'leader' (the connection for all tabs) or 'follower'. */
  readonly role: "solo" | "leader" | "follower";

  subscribe<T = Json>(
    channel: string,
    callback: (data: T, message: Message<T>) => void,
    options?: SubscribeOptions,
  ): Subscription;
  publish(channel: string, data: Json, options?: PublishOptions): Promise<Published>;
  /**
   * Calls the application behind the server (`rpc-url`): `POST /rpc/{method}` with `data`;
   * resolves with the application's answer. Rejects with an `Error` whose `status` is 401/403
   * (the server's policy), a 4xx of the application (its `error` as `reason`), 502 (it
   * failed), 503 (unreachable or busy), 504 (too slow) or 501 (no rpc-url).
   */
  rpc<T = Json>(method: string, data?: Json): Promise<T>;
  /** Declares presence on an exact channel (`null` withdraws it). */
  setPresence(channel: string, presence: PresenceOption | null): void;
  presence(channel: string): Promise<PresenceAnswer>;
  rooms(prefix?: string): Promise<RoomsAnswer>;
  /** The newest `limit` (default 20, at most 100) messages of `channel` in history, oldest first. */
  history(channel: string, limit?: number): Promise<HistoryAnswer>;
  /** Mints (once per instance) this client's inbox. */
  inbox(): Promise<Inbox>;
  /** Sends to an inbox URL (over JSONP the owner gets a string: non-strings as JSON text). */
  send(address: string, data: Json): Promise<unknown>;
  on<E extends keyof HalleyEvents>(event: E, listener: HalleyEvents[E]): () => void;
  off<E extends keyof HalleyEvents>(event: E, listener: HalleyEvents[E]): void;
  /**
   * Replaces the token (for an app that refreshes it itself). The next requests and reconnects
   * carry it; a client stopped in `unauthorized` reconnects at once, from its last id.
   */
  setToken(token: string | null): void;
  close(): void;

  static readonly TRANSPORTS: Transport[];
}

export { HalleyClient as Halley };

declare global {
  // The global halley.js sets when it runs.
  // eslint-disable-next-line no-var
  var Halley: typeof HalleyClient;
}
