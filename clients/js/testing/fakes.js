// Stand-ins for the browser's WebSocket and EventSource, shared by the halley.js unit tests in
// ../test/ (kept outside test/ so that `node --test` does not take this file for a test).
"use strict";

/** Resolves once `fn()` is truthy; fails after 5 s (bounded, never a fixed sleep). */
async function until(fn, what) {
  const deadline = Date.now() + 5000;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.closed = false;
    FakeWebSocket.all.push(this);
  }
  close() {
    this.closed = true;
  }
  // What the server side of the test does:
  accept() {
    this.onopen?.();
  }
  deliver(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  drop(code = 1006) {
    this.onclose?.({ code });
  }
}
FakeWebSocket.all = [];

class FakeEventSource {
  constructor(url) {
    this.url = url;
    this.listeners = {};
    FakeEventSource.all.push(this);
  }
  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }
  close() {
    this.closed = true;
  }
  /** Headers are in and the stream opens with its position, as Halley's does. */
  accept(position = "e-0") {
    this.onopen?.({});
    this.emit("position", { event: "position", last_id: position });
  }
  emit(type, obj) {
    for (const fn of this.listeners[type] ?? []) fn({ data: JSON.stringify(obj) });
  }
  message(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  /** The stream ended (or was refused before it began): EventSource fires a bare error. */
  fail() {
    this.onerror?.({});
  }
}
FakeEventSource.all = [];

const sockets = () => FakeWebSocket.all;
const last = () => sockets()[sockets().length - 1];
/** The values of query parameter `name` in `url` (ws: or http:). */
const param = (url, name) => new URL(url.replace(/^ws/, "http")).searchParams.getAll(name);

module.exports = { until, FakeWebSocket, FakeEventSource, sockets, last, param };
