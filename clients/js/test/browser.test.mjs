// Headless Chromium (Debian's, driven by playwright-core; never a downloaded browser): tabs of one
// origin share one relay connection, see the simulator's true books, and survive a tab closing.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync } from "node:child_process";
import { chromium } from "playwright-core";
import { FAST_UPSTREAM, RELAY_BIN, startRelay, waitFor, same } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const here = fileURLToPath(new URL(".", import.meta.url));
const root = resolve(here, "..");
const TOKEN = "browser-token";

let server;
let origin;
let relay;
let context;
let profile;
let markets;

/** Serves the built client under /dist/ and the test page at /. */
function serve() {
  const types = { ".js": "text/javascript", ".html": "text/html", ".map": "application/json" };
  return createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const file = path === "/" ? join(here, "browser/page.html") : normalize(join(root, path));
    if (path !== "/" && !file.startsWith(join(root, "dist") + "/")) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = readFileSync(file);
      res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
}

before(async () => {
  server = serve();
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  origin = `http://127.0.0.1:${server.address().port}`;
  const hash = spawnSync(RELAY_BIN, ["--hash-token"], { input: TOKEN, encoding: "utf8" }).stdout.trim();
  relay = await startRelay({
    config:
      FAST_UPSTREAM +
      `\n[security]\nallowed_origins = ["${origin}"]\n` +
      `\n[[security.tokens]]\nname = "page"\nsha256 = "${hash}"\npermission = "public"\n`,
  });
  markets = (await relay.admin("markets")).slice(0, 2);
  profile = mkdtempSync(join(tmpdir(), "relay-js-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
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
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await relay?.stop();
  server?.close();
});

async function open(params) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  const q = new URLSearchParams({ ws: relay.ws, token: TOKEN, markets: markets.join(","), ...params });
  await page.goto(`${origin}/?${q}`);
  page.errors = errors;
  return page;
}

const booksOf = (page) => page.evaluate((ts) => ts.map((t) => window.client.book(t) ?? null), markets);

/** Pauses the simulator and waits until every page's books equal the truth. */
async function converge(pages) {
  await relay.admin("pause", {});
  try {
    const truth = await Promise.all(markets.map((t) => relay.truth(t)));
    for (const page of pages) {
      await waitFor(async () => {
        const books = await booksOf(page);
        return books.every((b, i) => same(b ?? undefined, truth[i]));
      }, "the page's books to equal the simulator's");
    }
  } finally {
    await relay.admin("resume", {});
  }
}

async function flowing(page) {
  const before = await page.evaluate(() => window.count());
  await waitFor(async () => (await page.evaluate(() => window.count())) > before + 3, "data to keep flowing");
}

test("two tabs share one connection through the SharedWorker and see the true books; one closing keeps the other's data flowing", async () => {
  const a = await open({ name: "shared" });
  const b = await open({ name: "shared" });
  for (const page of [a, b]) {
    assert.equal(await page.evaluate(() => window.client.mode), "shared-worker");
    await waitFor(async () => (await booksOf(page)).every(Boolean), "books in the page");
  }
  assert.equal((await relay.status()).clients, 1, "one relay connection for both tabs");
  // Both pages' books equal the simulator's, checked while it is paused.
  await converge([a, b]);

  await a.close();
  await flowing(b);
  assert.equal((await relay.status()).clients, 1);
  await converge([b]);
  assert.deepEqual(b.errors, []);
  await b.close();
  await waitFor(async () => (await relay.status()).clients === 0, "the connection to close with the last tab");
});

test("without SharedWorker: one tab elected leader holds the connection; when it closes the other takes over", async () => {
  const a = await open({ name: "elected", mode: "broadcast" });
  const b = await open({ name: "elected", mode: "broadcast" });
  for (const page of [a, b]) {
    assert.equal(await page.evaluate(() => window.client.mode), "broadcast");
    await waitFor(async () => (await booksOf(page)).every(Boolean), "books in the page");
  }
  assert.deepEqual(
    [await a.evaluate(() => window.client.isLeader), await b.evaluate(() => window.client.isLeader)],
    [true, false],
  );
  assert.equal((await relay.status()).clients, 1, "one relay connection for both tabs");
  await converge([a, b]);

  await a.close();
  await waitFor(() => b.evaluate(() => window.client.isLeader), "the other tab to take over");
  await waitFor(async () => (await booksOf(b)).every(Boolean), "books after the takeover");
  await flowing(b);
  await waitFor(async () => (await relay.status()).clients === 1, "one connection, the new leader's");
  await converge([b]);
  assert.deepEqual(b.errors, []);
  await b.close();
});
