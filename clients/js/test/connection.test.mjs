// The connection's life against the real relay: restart (1012) with resubscription and a fresh
// token, a dead relay found by the pong timeout, giving up after the maximum attempts, refused
// tokens that stop at once, and the bounded queue.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import WebSocket from "ws";
import { RelayClient, PermanentCloseError } from "../dist/index.js";
import { RELAY_BIN, FAST_UPSTREAM, startRelay, waitFor, converge, record, nextEvent } from "./helpers.mjs";

const cleanup = [];
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
});

function hashToken(token) {
  const out = spawnSync(RELAY_BIN, ["--hash-token"], { input: token, encoding: "utf8" });
  assert.equal(out.status, 0, out.stderr);
  return out.stdout.trim();
}

function tokenConfig(...tokens) {
  return (
    FAST_UPSTREAM +
    tokens
      .map((t, i) => `\n[[security.tokens]]\nname = "bot${i}"\nsha256 = "${hashToken(t)}"\npermission = "public"\n`)
      .join("")
  );
}

function client(options) {
  const c = new RelayClient({ WebSocket, backoff: { baseMs: 100, capMs: 500 }, ...options });
  cleanup.push(() => c.close());
  return c;
}

test("relay restart: 1012, reconnect with a fresh token, subscriptions replayed, books equal the new truth", async () => {
  const config = tokenConfig("tok-1", "tok-2");
  let relay = await startRelay({ config });
  cleanup.push(() => relay.stop());
  const markets = (await relay.admin("markets")).slice(0, 2);
  // Two valid tokens, handed out in turn: each connect attempt calls the function again.
  let calls = 0;
  const c = client({
    url: relay.ws,
    token: async () => `tok-${(calls++ % 2) + 1}`,
    maxReconnects: 50,
  });
  const closes = record(c, "close");
  const callsAtOpen = [];
  c.on("open", () => callsAtOpen.push(calls));
  const seen = new Set();
  const handle = c.subscribe({ channels: ["orderbook_delta", "ticker"], marketTickers: markets }, (m) =>
    seen.add(m.type),
  );
  await waitFor(() => markets.every((t) => c.book(t)), "every book");
  assert.equal(calls, 1);

  await relay.stop("SIGTERM");
  // The process has exited; the client's close event may still be on its way through the loop.
  await waitFor(() => closes.length > 0, "the close from the stopping relay");
  assert.deepEqual(
    { code: closes[0]?.code, reason: closes[0]?.reason, permanent: closes[0]?.permanent },
    { code: 1012, reason: "service restart", permanent: false },
  );
  assert.ok(closes[0].reconnectInMs >= 0);
  assert.equal(c.readyState, RelayClient.CONNECTING, "reconnecting counts as CONNECTING");
  assert.equal(c.book(markets[0]), undefined, "books are not trusted across a reconnect");

  relay = await startRelay({ config, listen: relay.listen });
  cleanup.push(() => relay.stop());
  seen.clear();
  await waitFor(() => markets.every((t) => c.book(t)), "every book after the restart", 15_000);
  assert.equal(callsAtOpen.length, 2);
  assert.ok(callsAtOpen[1] > callsAtOpen[0], "the token function was called again for the new connection");
  assert.ok(
    closes.slice(1).every((e) => !/401/.test(e.error)),
    `no token was refused: ${JSON.stringify(closes)}`,
  );
  assert.equal(c.state, "open");
  // Each channel's subscription is replayed as its own command: the books can be there before
  // the ticker's reply.
  await waitFor(() => typeof handle.sids().ticker === "number", "the ticker's replayed sid");
  const sids = handle.sids();
  assert.equal(typeof sids.orderbook_delta, "number");
  assert.equal(typeof sids.ticker, "number");
  await converge(relay, c, markets);
  await waitFor(() => seen.has("ticker"), "ticker messages on the replayed subscription");
});

test("a dead relay (SIGSTOP) is found by the pong timeout within 10 s; the client comes back after SIGCONT", async () => {
  const relay = await startRelay();
  cleanup.push(() => relay.stop("SIGKILL"));
  const markets = (await relay.admin("markets")).slice(0, 2);
  const c = client({ url: relay.ws, pingIntervalMs: 1000, pongTimeoutMs: 2000, connectTimeoutMs: 2000, maxReconnects: 50 });
  c.subscribe({ channels: ["orderbook_delta"], marketTickers: markets });
  await waitFor(() => markets.every((t) => c.book(t)), "every book");

  const stopped = Date.now();
  relay.proc.kill("SIGSTOP");
  const lost = await nextEvent(c, "close", () => true, 10_000);
  const elapsed = Date.now() - stopped;
  assert.match(lost.reason, /pong timeout/);
  assert.ok(elapsed < 10_000, `found after ${elapsed} ms`);
  assert.equal(lost.permanent, false);

  relay.proc.kill("SIGCONT");
  await waitFor(() => c.state === "open" && markets.every((t) => c.book(t)), "the client back with books", 15_000);
  await converge(relay, c, markets);
});

test("the maximum attempts are surfaced as max_reconnects with the last error, then nothing more", async () => {
  const relay = await startRelay();
  const c = client({ url: relay.ws, maxReconnects: 3, backoff: { baseMs: 50, capMs: 200 } });
  await nextEvent(c, "open");
  const states = record(c, "state");
  await relay.stop("SIGKILL");
  const gaveUp = await nextEvent(c, "max_reconnects", () => true, 10_000);
  assert.equal(gaveUp.attempts, 3);
  assert.match(gaveUp.error.message, /ECONNREFUSED|closed|connect/);
  assert.equal(c.readyState, RelayClient.CLOSED);
  // Exactly three reconnect attempts.
  assert.equal(states.filter((s) => s.state === "connecting").length, 3);
  assert.equal(states.at(-1).state, "closed");
  assert.throws(() => c.send({ id: 1, cmd: "list_subscriptions" }), /closed/);
});

test("refused tokens stop at once: 4001 after a first-message auth, 401 on the handshake header", async () => {
  const relay = await startRelay({ config: tokenConfig("good") });
  cleanup.push(() => relay.stop());

  const byMessage = client({ url: relay.ws, token: "bad", authMode: "message" });
  const states = record(byMessage, "state");
  const err = await nextEvent(byMessage, "error");
  assert.ok(err instanceof PermanentCloseError);
  assert.equal(err.code, 4001);
  assert.match(err.reason, /unauthorized/);
  assert.equal(byMessage.readyState, RelayClient.CLOSED);
  assert.deepEqual(
    states.map((s) => s.state),
    ["open", "closed"],
  );

  const byHeader = client({ url: relay.ws, token: "bad" });
  const err2 = await nextEvent(byHeader, "error");
  assert.ok(err2 instanceof PermanentCloseError);
  assert.equal(err2.code, 4001);

  // A token function may renew the token, but the refused one is never presented again.
  let calls = 0;
  const renewing = client({ url: relay.ws, token: () => (calls++, "bad") });
  const err3 = await nextEvent(renewing, "error");
  assert.equal(err3.code, 4001);
  assert.equal(calls, 2);

  // The good token, by first message, reads data.
  const good = client({ url: relay.ws, token: "good", authMode: "message" });
  const market = (await relay.admin("markets"))[0];
  good.subscribe({ channels: ["orderbook_delta"], marketTickers: [market] });
  await waitFor(() => good.book(market), "a book with the good token");
});

test("commands are queued while connecting, up to the bound, and sent once open", async () => {
  const relay = await startRelay();
  cleanup.push(() => relay.stop());
  const c = client({ url: relay.ws, maxQueue: 5 });
  assert.equal(c.readyState, RelayClient.CONNECTING);
  const ids = [];
  for (let i = 0; i < 5; i++) {
    const id = c.nextId();
    ids.push(id);
    c.send({ id, cmd: "list_subscriptions" });
  }
  assert.throws(() => c.send({ id: c.nextId(), cmd: "list_subscriptions" }), /queue full/);
  const replies = new Set();
  c.on("message", (m) => m.type === "ok" && ids.includes(m.id) && replies.add(m.id));
  await waitFor(() => replies.size === 5, "a reply to every queued command");
});

test("backpressure: while the relay reads nothing, sending pauses at the high-water mark and the queue holds", async () => {
  const relay = await startRelay({
    config: FAST_UPSTREAM + "\n[security]\ncommands_per_second = 1000000.0\ncommand_burst = 1000000.0\n",
  });
  cleanup.push(() => relay.stop("SIGKILL"));
  const highWaterMark = 256 * 1024;
  const c = client({ url: relay.ws, highWaterMark, maxQueue: 1000 });
  await nextEvent(c, "open");
  const replies = new Set();
  c.on("message", (m) => m.id !== undefined && replies.add(m.id));
  relay.proc.kill("SIGSTOP");
  // 300 commands of 60 KB (18 MB): more than the kernel's socket buffers take.
  const pad = "x".repeat(60_000);
  const ids = [];
  for (let i = 0; i < 300; i++) {
    const id = c.nextId();
    ids.push(id);
    c.send({ id, cmd: "list_subscriptions", params: { pad } });
  }
  // The socket only gains bytes through a send made at or below the mark, so it never holds more
  // than the mark plus one command; sampled on every poll while it backs up and drains.
  const bound = highWaterMark + 61_000;
  let worst = 0;
  const sample = () => (worst = Math.max(worst, c.bufferedAmount));
  // While open, the queue holds only because the socket is above the mark.
  await waitFor(() => sample() && c.queued > 0, "the socket to back up");
  assert.ok(c.queued > 100, `only ${c.queued} commands held back`);
  relay.proc.kill("SIGCONT");
  await waitFor(() => sample() >= 0 && c.queued === 0, "the queue to drain", 20_000);
  assert.ok(worst > highWaterMark && worst <= bound, `at most ${worst} bytes buffered (bound ${bound})`);
  await waitFor(() => ids.every((id) => replies.has(id)), "a reply to every command", 20_000);
  assert.equal(c.state, "open");
});
