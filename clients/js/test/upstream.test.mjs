// The client against the real relay while the exchange side misbehaves: the relay keeps the
// client connected, tells it through relay_status, and its books end equal to the simulator's.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RelayClient } from "../dist/index.js";
import { startRelay, waitFor, converge, record, nextEvent } from "./helpers.mjs";

let relay;
let markets;
const clients = [];

function client(options = {}) {
  const c = new RelayClient({ url: relay.ws, WebSocket, backoff: { baseMs: 100, capMs: 500 }, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  relay = await startRelay();
  markets = (await relay.admin("markets")).slice(0, 3);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await relay?.stop();
});

test("books from the relay equal the simulator's truth", async () => {
  const c = client();
  const seen = [];
  const h = c.subscribe({ channels: ["orderbook_delta"], marketTickers: markets }, (m) => seen.push(m.type));
  await waitFor(() => markets.every((t) => c.book(t)), "every book");
  assert.equal(c.readyState, RelayClient.OPEN);
  assert.equal(typeof h.sids().orderbook_delta, "number");
  await converge(relay, c, markets);
  assert.ok(seen.includes("orderbook_snapshot"));
  await waitFor(() => seen.includes("orderbook_delta"), "a delta after the snapshots");
});

test("upstream drop: the client stays connected, is told, and its books recover", async () => {
  const c = client();
  const status = record(c, "status");
  const states = record(c, "state");
  c.subscribe({ channels: ["orderbook_delta"], marketTickers: markets });
  await waitFor(() => markets.every((t) => c.book(t)), "every book");
  await relay.admin("fault/drop", {});
  await waitFor(() => status.some((s) => s.upstream === "disconnected"), "relay_status disconnected");
  const lost = status.findIndex((s) => s.upstream === "disconnected");
  await waitFor(() => status.slice(lost).some((s) => s.upstream === "subscribed"), "relay_status subscribed again");
  await converge(relay, c, markets);
  assert.deepEqual(
    states.map((s) => s.state),
    ["open"],
    "the client never reconnected",
  );
});

test("upstream blackhole: found by the relay's liveness check, books recover", async () => {
  const c = client();
  const status = record(c, "status");
  c.subscribe({ channels: ["orderbook_delta"], marketTickers: markets });
  await waitFor(() => markets.every((t) => c.book(t)), "every book");
  await relay.admin("fault/blackhole", { seconds: 300 });
  const down = await nextEvent(c, "status", (s) => s.upstream === "disconnected", 10_000);
  assert.ok(down.reason, "the disconnect names its reason");
  await nextEvent(c, "status", (s) => s.upstream === "subscribed", 10_000);
  await converge(relay, c, markets);
  assert.equal(c.state, "open");
});

test("a gap on the exchange feed, repaired by the relay: books equal the truth", async () => {
  const c = client();
  const snapshots = [];
  c.subscribe({ channels: ["orderbook_delta"], marketTickers: markets }, (m) => {
    if (m.type === "orderbook_snapshot") snapshots.push(m.msg.market_ticker);
  });
  await waitFor(() => markets.every((t) => c.book(t)), "every book");
  const first = snapshots.length;
  await relay.admin("fault/gap", {});
  await waitFor(() => snapshots.length > first, "the relay's repair snapshot");
  await converge(relay, c, markets);
});

test("a gap seen by the client itself (connected to the exchange): get_snapshot, book equals the truth", async () => {
  // The demo's simulator speaks the exchange protocol: the client talks to it directly, so the
  // seq gap reaches the client and the client must repair it.
  // Fast pings: the exchange answers the relay's ping command with error 5, which proves the
  // connection alive just as well.
  const c = client({ url: relay.sim, relayEvents: false, pingIntervalMs: 300, pongTimeoutMs: 1000 });
  const closes = record(c, "close");
  const pingReplies = [];
  c.on("message", (m) => m.type === "error" && m.msg?.code === 5 && pingReplies.push(m.id));
  const gaps = record(c, "gap");
  const stale = record(c, "book_stale");
  const sent = [];
  c.on("message", (m) => m.type === "ok" && sent.push(m));
  c.subscribe({ channels: ["orderbook_delta"], marketTickers: markets });
  await waitFor(() => markets.every((t) => c.book(t)), "every book");
  await relay.admin("fault/gap", {});
  await waitFor(() => gaps.length > 0, "the client to see the gap");
  assert.equal(gaps[0].got, gaps[0].expected + 1);
  assert.ok(stale.some((s) => s.tickers.length > 0), "books were marked stale");
  await converge(relay, c, markets);
  await waitFor(() => pingReplies.length >= 3, "three answered pings");
  assert.deepEqual(closes, [], "the exchange's ping replies kept the connection");
});

test("handles on one channel share one sid; unsubscribing one keeps the other's markets", async () => {
  const c = client();
  const a = [];
  const b = [];
  const ha = c.subscribe({ channels: ["orderbook_delta"], marketTickers: [markets[0]] }, (m) => a.push(m));
  const hb = c.subscribe({ channels: ["orderbook_delta"], marketTickers: [markets[1], markets[2]] }, (m) => b.push(m));
  await waitFor(() => markets.every((t) => c.book(t)), "every book");
  assert.equal(ha.sids().orderbook_delta, hb.sids().orderbook_delta);
  assert.ok(a.every((m) => m.msg.market_ticker === markets[0]), "handle a only gets its market");
  assert.ok(b.every((m) => m.msg.market_ticker !== markets[0]), "handle b never gets a's market");
  hb.unsubscribe();
  await waitFor(() => {
    const sub = c.subscriptions().find((s) => s.channel === "orderbook_delta");
    return sub && JSON.stringify(sub.markets) === JSON.stringify([markets[0]]);
  }, "the server subscription narrowed to a's market");
  assert.equal(c.book(markets[1]), undefined, "books nobody wants are dropped");
  const before = a.length;
  await waitFor(() => a.length > before, "a's data to keep flowing");
  // A late handle on a held market gets the book at once, as a snapshot.
  const late = [];
  c.subscribe({ channels: ["orderbook_delta"], marketTickers: [markets[0]] }, (m) => late.push(m));
  await waitFor(() => late.some((m) => m.type === "orderbook_snapshot"), "a snapshot for the late handle");
});

test("application pings alone keep a healthy connection (as in a browser, which cannot send ping frames)", async () => {
  // `ws` without its protocol ping: only {"cmd":"ping"} and the relay's pong prove liveness.
  class BrowserLike extends WebSocket {
    ping = undefined;
  }
  const c = client({ WebSocket: BrowserLike, pingIntervalMs: 300, pongTimeoutMs: 1000 });
  const closes = record(c, "close");
  const pongs = [];
  c.on("message", (m) => m.type === "pong" && pongs.push(m.id));
  await waitFor(() => pongs.length >= 4, "four pongs");
  assert.deepEqual(closes, []);
  assert.equal(c.state, "open");
});
