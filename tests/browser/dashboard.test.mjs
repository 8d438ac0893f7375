// The relay's /dashboard in headless Chromium (Debian's, driven by playwright-core; no browser is
// ever downloaded) against the real relay binary with its embedded simulator (`relay --demo`).
// The tests run in order on one relay and one page: what a user sees at load, books equal to the
// simulator's truth, an upstream drop and its recovery, a relay restart; then a relay that wants a
// token. The page as it stands after the drop is saved as docs/dashboard.png.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync } from "node:child_process";
import { chromium } from "playwright-core";
import { FAST_UPSTREAM, RELAY_BIN, startRelay, waitFor } from "../../clients/js/test/helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
const SCREENSHOT = join(ROOT, "docs/dashboard.png");

let relay;
let context;
let profile;
let page;
/** Console errors and uncaught page errors, as text. */
const errors = [];
/** Every WebSocket URL the page opened. */
const sockets = [];

async function launch() {
  profile = mkdtempSync(join(tmpdir(), "relay-dashboard-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 860 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

async function open(url) {
  const p = await context.newPage();
  p.on("console", (m) => m.type() === "error" && errors.push(`console: ${m.text()}`));
  p.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  p.on("websocket", (ws) => sockets.push(ws.url()));
  await p.goto(url);
  return p;
}

const text = (p, selector) => p.locator(selector).textContent();

/** The depth view as `book()` shows a book: each side lowest price first. */
async function depth(p) {
  return p.evaluate(() => {
    const side = (id) =>
      [...document.querySelectorAll(`#${id} tbody tr`)].map((tr) => [tr.dataset.price, tr.dataset.size]).reverse();
    const table = document.getElementById("depth-yes");
    return { ticker: table.dataset.ticker, trusted: table.dataset.trusted, yes: side("depth-yes"), no: side("depth-no") };
  });
}

/** Pauses the simulator and waits until the page's depth view equals the true book. */
async function depthEqualsTruth(p, ticker) {
  await relay.admin("pause", {});
  try {
    const truth = await relay.truth(ticker);
    await waitFor(async () => {
      const shown = await depth(p);
      return shown.ticker === ticker && JSON.stringify({ yes: shown.yes, no: shown.no }) === JSON.stringify(truth);
    }, `the depth view of ${ticker} to equal the simulator's book`);
    return truth;
  } finally {
    await relay.admin("resume", {});
  }
}

before(async () => {
  relay = await startRelay();
  await launch();
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await relay?.stop();
});

test("the page loads without console errors, OPEN, upstream subscribed, every market listed", async () => {
  page = await open(`${relay.http}/dashboard`);
  await waitFor(async () => (await text(page, "#conn-state")) === "OPEN", "the page's connection OPEN");
  await waitFor(async () => (await text(page, "#upstream-state")) === "subscribed", "upstream subscribed");
  const markets = await relay.admin("markets");
  await waitFor(
    async () => (await page.locator("#markets tbody tr").count()) === markets.length,
    `${markets.length} markets listed`,
  );
  const listed = await page.locator("#markets tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.ticker));
  assert.deepEqual(listed, [...markets].sort());
  // Every market's best bid appears (its book arrived through the page's own WebSocket).
  await waitFor(
    () => page.locator("#markets tbody tr").evaluateAll((rows) => rows.every((r) => /^\d\.\d+$/.test(r.cells[1].textContent))),
    "a best yes bid on every market row",
  );
  await waitFor(async () => Number(await text(page, "#clients")) >= 1, "the page counted among the relay's clients");
  await waitFor(async () => /\d/.test(await text(page, "#latency-p99")), "the relay's latency p99 shown");
  assert.equal(sockets.length, 1);
  assert.ok(!sockets[0].includes("token"), `no token in the WebSocket URL: ${sockets[0]}`);
  assert.deepEqual(errors, []);
});

test("the selected market's depth view equals the simulator's book after a pause", async () => {
  const markets = (await relay.admin("markets")).sort();
  const ticker = markets[3];
  await page.locator(`#markets tbody tr[data-ticker="${ticker}"]`).click();
  assert.equal(await text(page, "#depth-ticker"), ticker);
  const truth = await depthEqualsTruth(page, ticker);
  assert.ok(truth.yes.length > 0 && truth.no.length > 0, "the simulator's book has both sides");
  // The list agrees with the book: best yes bid and ask (1 - best no bid).
  const row = page.locator(`#markets tbody tr[data-ticker="${ticker}"] td`);
  const bid = truth.yes.at(-1)[0];
  const ask = (1 - Number(truth.no.at(-1)[0])).toFixed(4);
  assert.equal(Number(await row.nth(1).textContent()).toFixed(4), bid);
  assert.equal(Number(await row.nth(2).textContent()).toFixed(4), ask);
  assert.deepEqual(errors, []);
});

test("at 2,000 msg/s the page renders at most once a frame and its books stay exact", async (t) => {
  await page.evaluate(() => {
    window.frames_ = 0;
    const tick = () => {
      window.frames_++;
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const before = await page.evaluate(() => ({ ...window.dashboardStats, frames: window.frames_ }));
  const total = (await relay.status()).upstream_messages_total;
  await relay.admin("fault/rate", { msgs_per_sec: 2000 });
  try {
    await waitFor(
      async () => (await relay.status()).upstream_messages_total - total >= 4000,
      "4,000 upstream messages at 2,000/s",
      20_000,
    );
  } finally {
    await relay.admin("fault/rate", { msgs_per_sec: 100 });
  }
  const after = await page.evaluate(() => ({ ...window.dashboardStats, frames: window.frames_ }));
  const [messages, renders, frames] = ["messages", "renders", "frames"].map((k) => after[k] - before[k]);
  t.diagnostic(`${messages} market messages, ${renders} renders, ${frames} animation frames`);
  assert.ok(messages >= 2000, `the page received ${messages} market messages`);
  assert.ok(renders <= frames + 2, `${renders} renders in ${frames} frames`);
  assert.ok(renders * 4 < messages, `${renders} renders for ${messages} messages`);
  await depthEqualsTruth(page, await text(page, "#depth-ticker"));
  assert.deepEqual(errors, []);
});

test("an upstream drop shows on the page and recovers", async () => {
  const before = (await relay.status()).upstream.connects;
  await relay.admin("fault/drop", {});
  await waitFor(
    () => page.locator("#events li", { hasText: "upstream disconnected" }).count(),
    "the disconnect in the page's events",
  );
  await waitFor(async () => (await text(page, "#last-disconnect")) !== "none", "the last disconnect reason");
  await waitFor(async () => (await text(page, "#upstream-state")) === "subscribed", "upstream subscribed again");
  await waitFor(
    async () => (await text(page, "#upstream-connects")).startsWith(`${before + 1} (`),
    "one more upstream connect",
  );
  // The books came back: the depth view equals the truth again.
  await depthEqualsTruth(page, await text(page, "#depth-ticker"));
  assert.equal(await text(page, "#conn-state"), "OPEN", "the page's own connection never dropped");
  assert.deepEqual(errors, []);
  // The picture the README shows: live again after the drop, the drop in the events.
  await waitFor(async () => (await relay.status()).upstream_messages_per_second > 0, "market data flowing");
  await waitFor(async () => !(await text(page, "#rate-in")).startsWith("0/"), "the rate shown");
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
});

test("a blackholed upstream shows as disconnected within the relay's upstream liveness window", async (t) => {
  const drops = () => page.locator("#events li", { hasText: "upstream disconnected" }).count();
  const before = await drops();
  const start = Date.now();
  await relay.admin("fault/blackhole", { seconds: 30 });
  await waitFor(async () => (await drops()) > before, "the blackhole's disconnect in the page's events");
  // FAST_UPSTREAM: nothing for 2 s (liveness window) or no pong within 1 s of a ping.
  const shownAfter = Date.now() - start;
  t.diagnostic(`the blackhole shown after ${shownAfter} ms`);
  assert.ok(shownAfter < 5000, `shown after ${shownAfter} ms`);
  await waitFor(async () => (await text(page, "#upstream-state")) === "subscribed", "upstream subscribed again");
  assert.deepEqual(errors, []);
});

test("a relay restart shows reconnecting, then OPEN with books again", async () => {
  const listen = relay.listen;
  await relay.stop();
  await waitFor(
    async () => /^reconnecting in \d+ s$/.test(await text(page, "#conn-state")),
    "the page showing 'reconnecting in N s'",
  );
  await waitFor(async () => (await text(page, "#relay-reachable")) === "unreachable", "the relay shown unreachable");
  assert.equal(await text(page, "#upstream-state"), "unknown", "no stale upstream state while the relay is away");
  relay = await startRelay({ listen });
  await waitFor(async () => (await text(page, "#conn-state")) === "OPEN", "the page OPEN again", 20_000);
  await waitFor(async () => (await text(page, "#upstream-state")) === "subscribed", "upstream subscribed");
  await depthEqualsTruth(page, await text(page, "#depth-ticker"));
});

test("a relay that stops answering shows within its pong timeout, and OPEN once it is back", async (t) => {
  const PONG_TIMEOUT_MS = 2000;
  const paused = await startRelay({
    config: `${FAST_UPSTREAM}\n[downstream]\npong_timeout_seconds = ${PONG_TIMEOUT_MS / 1000}\n`,
  });
  try {
    const p = await open(`${paused.http}/dashboard`);
    await waitFor(async () => (await text(p, "#conn-state")) === "OPEN", "the page OPEN");
    const start = Date.now();
    await paused.stop("SIGSTOP");
    await waitFor(async () => (await text(p, "#conn-state")) !== "OPEN", "the page no longer OPEN", 10_000);
    const shownAfter = Date.now() - start;
    t.diagnostic(`a stopped relay shown after ${shownAfter} ms (pong timeout ${PONG_TIMEOUT_MS} ms)`);
    assert.ok(shownAfter <= PONG_TIMEOUT_MS + 1000, `shown after ${shownAfter} ms`);
    assert.match(await text(p, "#conn-state"), /^(reconnecting in \d+ s|CONNECTING)$/);
    paused.proc.kill("SIGCONT");
    await waitFor(async () => (await text(p, "#conn-state")) === "OPEN", "the page OPEN again", 20_000);
    await p.close();
  } finally {
    paused.proc.kill("SIGCONT");
    await paused.stop();
  }
});

test("a relay that wants a token: the page asks, sends it as the first message, keeps it per tab", async () => {
  const TOKEN = "dashboard-token";
  const hash = spawnSync(RELAY_BIN, ["--hash-token"], { input: TOKEN, encoding: "utf8" }).stdout.trim();
  const secured = await startRelay({
    config: `${FAST_UPSTREAM}\n[[security.tokens]]\nname = "ops"\nsha256 = "${hash}"\npermission = "public"\n`,
  });
  try {
    sockets.length = 0;
    const p = await open(`${secured.http}/dashboard`);
    await p.locator("#token-form").waitFor({ state: "visible" });
    assert.equal(sockets.length, 0, "no connection before a token");
    // A wrong token is refused and asked for again.
    await p.fill("#token-input", "wrong");
    await p.click("#token-form button");
    await waitFor(async () => (await text(p, "#token-error")).includes("refused"), "the refusal shown");
    assert.equal(await p.evaluate(() => sessionStorage.length), 0, "a refused token is forgotten");
    await p.fill("#token-input", TOKEN);
    await p.click("#token-form button");
    await waitFor(async () => (await text(p, "#conn-state")) === "OPEN", "OPEN with the token");
    await waitFor(async () => (await text(p, "#upstream-state")) === "subscribed", "upstream subscribed");
    await waitFor(() => p.locator("#depth-yes tbody tr").count(), "a book through the token's connection");
    assert.ok(sockets.length >= 2 && sockets.every((u) => !u.includes(TOKEN) && !u.includes("token=")), sockets.join());
    assert.equal(await p.evaluate(() => sessionStorage.getItem("kalshi-relay-token")), TOKEN);
    assert.equal(await p.evaluate(() => localStorage.length), 0, "nothing kept beyond the tab");
    await p.close();
  } finally {
    await secured.stop();
  }
});
