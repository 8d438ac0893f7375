#!/usr/bin/env node
// A bot on the relay: keeps order books, logs the account's fills, and rides out relay restarts
// and upstream outages (the client reconnects, re-authenticates and resubscribes by itself).
//
//   node examples/bot.mjs [ws://127.0.0.1:8080/trade-api/ws/v2] [MARKET ...]
//
// Without markets it watches the first three the ticker channel names. RELAY_TOKEN is sent as
// the token if set; BOT_SUMMARY_MS sets how often the books are summarized (default 5000).
import WebSocket from "ws";
import { RelayClient } from "kalshi-relay-client";

const url = process.argv[2] ?? "ws://127.0.0.1:8080/trade-api/ws/v2";
const wanted = process.argv.slice(3);
const summaryMs = Number(process.env.BOT_SUMMARY_MS ?? 5000);
const log = (...parts) => console.log(new Date().toISOString(), ...parts);

const client = new RelayClient({
  url,
  WebSocket, // Node 20 has no global WebSocket; `ws` also lets the token travel as a header
  token: process.env.RELAY_TOKEN ? async () => process.env.RELAY_TOKEN : undefined,
  maxReconnects: 30, // about ten minutes of outage at the 30 s cap, then give up loudly
});

client.on("state", ({ state, attempt }) => log("state", state + (attempt ? ` attempt=${attempt}` : "")));
client.on("close", ({ code, reason, reconnectInMs, error }) =>
  log("closed", code, reason || error, reconnectInMs === undefined ? "" : `reconnect in ${reconnectInMs} ms`),
);
client.on("status", (s) => log("upstream", s.upstream, s.reason ?? ""));
client.on("lagged", (l) => log("lagged", JSON.stringify(l)));
client.on("error", (e) => log("error", e.message));
client.on("max_reconnects", ({ attempts, error }) => {
  log("giving up after", attempts, "attempts:", error.message);
  process.exit(1);
});

// The account's fills: every one is logged. The relay closes a private subscriber whose fills it
// could not deliver; after such a reconnect, reconcile with the exchange's REST fills.
client.subscribe({ channels: ["fill"] }, (m) => {
  if (m.type !== "fill") return;
  const f = m.msg;
  log("fill", f.market_ticker, f.outcome_side ?? f.side, f.book_side ?? "", `${f.count_fp} @ ${f.yes_price_dollars}`);
});

function watch(tickers) {
  log("watching", tickers.join(" "));
  client.subscribe({ channels: ["orderbook_delta"], marketTickers: tickers });
  setInterval(() => {
    for (const t of tickers) {
      const book = client.book(t);
      if (!book) {
        log("book", t, "(waiting for a snapshot)");
        continue;
      }
      // Bids only, lowest first: the best YES bid is the last; YES ask = 1 - best NO bid.
      const bestYes = book.yes.at(-1)?.[0];
      const bestNo = book.no.at(-1)?.[0];
      const ask = bestNo === undefined ? undefined : (1 - Number(bestNo)).toFixed(4);
      log("book", t, `yes_bid=${bestYes ?? "-"}`, `yes_ask=${ask ?? "-"}`, `levels=${book.yes.length}/${book.no.length}`);
    }
  }, summaryMs).unref();
}

if (wanted.length) {
  watch(wanted);
} else {
  // Learn some market names from the ticker channel, then drop it.
  const seen = new Set();
  const tickers = client.subscribe({ channels: ["ticker"] }, (m) => {
    if (m.type !== "ticker" || seen.size >= 3) return;
    seen.add(m.msg.market_ticker);
    if (seen.size === 3) {
      tickers.unsubscribe();
      watch([...seen]);
    }
  });
}

const keepAlive = setInterval(() => {}, 1 << 30);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    log("stopping");
    clearInterval(keepAlive);
    await client.close();
    process.exit(0);
  });
}
