// The relay's dashboard. Figures come from /status and /metrics on the origin that served the page;
// markets come through the relay's own WebSocket with kalshi-relay-client (books kept and
// seq-checked by the client). Incoming data only marks parts dirty; the DOM is written once per
// animation frame, so a busy feed costs one render a frame however many messages arrive.
import { RelayClient } from "/dashboard/relay-client.js";

const TOKEN_KEY = "kalshi-relay-token";
const STATUS_EVERY_MS = 1000;
const METRICS_EVERY_MS = 2000;
const MARKETS_EVERY_MS = 10000;
const FETCH_TIMEOUT_MS = 3000;
/** Books the page keeps (one orderbook_delta subscription for all of them). */
const MAX_BOOKS = 100;
const MAX_EVENTS = 60;
/** Latency quantiles are over the scrapes of the last minute. */
const LATENCY_WINDOW_MS = 60000;

const $ = (id) => document.getElementById(id);

const view = {
  conn: { state: "connecting", reconnectAt: undefined, gaveUp: false, error: undefined },
  status: undefined, // the last /status document
  reachable: undefined,
  upstream: undefined, // {upstream, since_ms, reason}: the newest of /status and relay_status
  markets: [], // tickers shown, sorted
  trades: new Map(), // ticker -> last trade yes price
  selected: decodeURIComponent((/(?:^#|&)market=([^&]+)/.exec(location.hash) ?? [])[1] ?? "") || undefined,
  latency: [], // [{t, buckets: [[le, cumulative]]}]
  counters: {},
};

// ---- render scheduling ----

const dirty = new Set();
const dirtyMarkets = new Set();
let frame = 0;
/** Market messages received and renders done (read by the browser tests: one render a frame). */
const stats = { messages: 0, renders: 0 };
window.dashboardStats = stats;
function invalidate(part) {
  dirty.add(part);
  if (!frame) frame = requestAnimationFrame(render);
}
function render() {
  frame = 0;
  stats.renders++;
  const parts = [...dirty];
  dirty.clear();
  for (const part of parts) renderers[part]();
}

const renderers = {
  conn: renderConn,
  status: renderStatus,
  metrics: renderMetrics,
  marketList: renderMarketList,
  marketRows: renderMarketRows,
  depth: renderDepth,
};

// ---- formatting ----

const pad = (n) => String(n).padStart(2, "0");
function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function ago(ms) {
  let s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  s %= 60;
  return m < 60 ? `${m} min ${s} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}
function duration(seconds) {
  if (seconds === undefined || seconds === null || !Number.isFinite(seconds)) return "—";
  if (seconds < 1e-3) return `${(seconds * 1e6).toFixed(0)} µs`;
  if (seconds < 1) return `${(seconds * 1e3).toFixed(seconds < 0.01 ? 2 : 1)} ms`;
  return `${seconds.toFixed(2)} s`;
}
/** "0.4200" -> "0.42"; "0.4250" stays. */
const price = (p) => (p === undefined ? "—" : p.replace(/^(\d+\.\d\d)00$/, "$1"));
/** "25.00" -> "25". */
const size = (s) => s.replace(/\.00$/, "");
/** A price string in 1/10000 dollars. */
const units = (p) => Math.round(Number(p) * 10000);
const fromUnits = (u) => `${Math.floor(u / 10000)}.${String(u % 10000).padStart(4, "0")}`;
function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}
function setState(id, text, state) {
  setText(id, text);
  $(id).dataset.state = state;
}

// ---- events log ----

function logEvent(what, detail) {
  const li = document.createElement("li");
  const b = document.createElement("b");
  b.textContent = what;
  li.append(`${clock(Date.now())} `, b, detail ? `: ${detail}` : "");
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// ---- the page's own connection ----

let client;
let countdown;

function wsUrl(ws) {
  return `${ws.tls ? "wss" : "ws"}://${location.hostname}:${ws.port}${ws.path}`;
}

function startClient(ws) {
  const pongMs = Math.max(1000, (ws.pong_timeout_seconds ?? 10) * 1000);
  const options = {
    url: wsUrl(ws),
    maxReconnects: 20,
    // A dead relay shows within its own pong timeout: ping every third of it, wait half of it.
    pingIntervalMs: pongMs / 3,
    pongTimeoutMs: pongMs / 2,
    backoff: { capMs: 10000 },
    authMode: "message",
  };
  if (ws.token_required) options.token = () => sessionStorage.getItem(TOKEN_KEY) ?? "";
  view.conn = { state: "connecting", reconnectAt: undefined, gaveUp: false, error: undefined };
  const c = new RelayClient(options);
  client = c;
  // A replaced client's late events (its close) must not describe the new one.
  const on = (event, fn) => c.on(event, (e) => c === client && fn(e));
  on("state", ({ state }) => {
    if (state !== "reconnecting") view.conn.reconnectAt = undefined;
    if (state === "open" && view.conn.state !== "open") logEvent("page connected", options.url);
    view.conn.state = state;
    invalidate("conn");
  });
  on("close", ({ code, reason, reconnectInMs }) => {
    if (reconnectInMs !== undefined) view.conn.reconnectAt = Date.now() + reconnectInMs;
    logEvent("page disconnected", `${code}${reason ? ` ${reason}` : ""}`);
    invalidate("conn");
  });
  on("max_reconnects", ({ attempts }) => {
    view.conn.gaveUp = true;
    logEvent("page gave up", `after ${attempts} attempts`);
    invalidate("conn");
  });
  on("error", (err) => {
    if (err?.code === 4001) {
      sessionStorage.removeItem(TOKEN_KEY);
      view.conn.error = "token refused";
      askToken("The relay refused that token.");
    } else if (err?.code !== undefined) {
      view.conn.error = err.message;
    }
    invalidate("conn");
  });
  on("status", (s) => {
    noteUpstream(s);
    invalidate("status");
  });
  on("lagged", (m) => logEvent("page lagged", `repaired ${(m.books_repaired ?? []).length} books`));
  on("book_stale", ({ tickers }) => {
    for (const t of tickers) dirtyMarkets.add(t);
    invalidate("marketRows");
    invalidate("depth");
  });
  client.subscribe({ channels: ["trade"] }, (m) => {
    const t = m.msg?.market_ticker;
    if (m.type !== "trade" || !t) return;
    view.trades.set(t, m.msg.yes_price_dollars);
    markMarket(t);
  });
  booksWanted = new Set();
  subscribeBooks();
  countdown ??= setInterval(() => view.conn.reconnectAt && invalidate("conn"), 250);
}

function renderConn() {
  const c = view.conn;
  let text = c.state.toUpperCase();
  let state = c.state;
  if (c.gaveUp) [text, state] = ["gave up", "closed"];
  else if (c.state === "reconnecting" && c.reconnectAt) {
    text = `reconnecting in ${Math.max(0, Math.ceil((c.reconnectAt - Date.now()) / 1000))} s`;
  } else if (c.state === "closed" && c.error) text = `CLOSED (${c.error})`;
  setState("conn-state", text, state);
  $("retry").hidden = !(c.gaveUp || (c.state === "closed" && c.error !== "token refused"));
}

// ---- token ----

function askToken(message) {
  $("token-error").textContent = message ?? "";
  $("token-form").hidden = false;
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  $("token-form").hidden = true;
  void client?.close();
  startClient(view.status.websocket);
});

// ---- /status ----

function noteUpstream(s) {
  if (!s || typeof s.upstream !== "string") return;
  const prev = view.upstream;
  if (prev && (prev.since_ms ?? 0) > (s.since_ms ?? 0)) return; // older news
  if (!prev || prev.upstream !== s.upstream || prev.since_ms !== s.since_ms) {
    const detail = s.reason ?? (s.failures !== undefined ? `${s.failures} failures` : "");
    logEvent(`upstream ${s.upstream.replace("_", " ")}`, detail);
  }
  view.upstream = s;
}

async function getJson(path) {
  const res = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

async function pollStatus() {
  try {
    const status = await getJson("/status");
    const first = !view.status;
    view.status = status;
    if (view.reachable !== true) logEvent("relay reachable");
    view.reachable = true;
    noteUpstream(status.upstream);
    if (first) {
      if (status.websocket.token_required && !sessionStorage.getItem(TOKEN_KEY)) askToken();
      else startClient(status.websocket);
      void pollMarkets();
    }
  } catch (e) {
    if (view.reachable !== false) logEvent("relay unreachable", e.message);
    view.reachable = false;
  }
  invalidate("status");
  setTimeout(pollStatus, STATUS_EVERY_MS);
}

function renderStatus() {
  const s = view.status;
  setState("relay-reachable", view.reachable ? "reachable" : view.reachable === false ? "unreachable" : "…",
    view.reachable ? "ok" : "unreachable");
  const up = view.upstream;
  if (view.reachable === false && view.conn.state !== "open") {
    // Neither /status nor the WebSocket answers: the last state seen is no longer news.
    setState("upstream-state", "unknown", "unreachable");
    setText("upstream-detail", "unknown: the relay does not answer");
  } else if (up) {
    setState("upstream-state", up.upstream, up.upstream);
    let detail = up.upstream + (up.reason ? ` (${up.reason})` : up.failures ? ` (${up.failures} failures)` : "");
    const quiet = quietSeconds(s);
    if (up.upstream === "subscribed" && quiet >= 5) detail += `, no market data for ${quiet} s`;
    setText("upstream-detail", detail);
    setText("upstream-since", up.since_ms ? `${clock(up.since_ms)} (${ago(up.since_ms)})` : "—");
  }
  if (!s) return;
  const u = s.upstream;
  setText("upstream-connects", `${u.connects} (${Math.max(0, u.connects - 1)} reconnects)`);
  const last = u.last_disconnect;
  setText("last-disconnect", last ? `${last.reason}, ${clock(last.at_ms)} (${ago(last.at_ms)} ago)` : "none");
  setState("ready", s.ready ? "yes" : `no: ${s.reason}`, s.ready ? "ok" : "disconnected");
  setText("clients", String(s.clients));
  setText("topics", String(s.topics));
  setText("cached-markets", String(s.cached_markets));
  setText("stale-books", String(s.stale_books));
  setText("uptime", ago(Date.now() - s.uptime_seconds * 1000));
  setText("rate-in", `${s.upstream_messages_per_second}/s`);
  setText("rate-out", `${s.downstream_messages_per_second}/s`);
  drawThroughput(s.throughput);
}

/** Trailing seconds with no upstream message. */
function quietSeconds(s) {
  const rates = s?.throughput?.in ?? [];
  let n = 0;
  for (let i = rates.length - 1; i >= 0 && rates[i] === 0; i--) n++;
  return n * (s?.throughput?.interval_seconds ?? 1);
}

function drawThroughput(t) {
  const canvas = $("throughput");
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const slots = 180;
  const max = Math.max(1, ...t.in, ...t.out) * 1.1;
  g.strokeStyle = css.getPropertyValue("--line");
  g.fillStyle = css.getPropertyValue("--dim");
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (const f of [0.5, 1]) {
    const y = h - (h - 4) * (f / 1.1);
    g.beginPath();
    g.moveTo(0, y);
    g.lineTo(w, y);
    g.stroke();
    g.fillText(`${Math.round((max / 1.1) * f)}/s`, 4, y - 2);
  }
  g.fillText(`last ${Math.round((slots * t.interval_seconds) / 60)} min`, w - 60, h - 4);
  for (const [series, color] of [[t.in, "--in"], [t.out, "--out"]]) {
    g.strokeStyle = css.getPropertyValue(color);
    g.lineWidth = 1.5;
    g.beginPath();
    series.forEach((v, i) => {
      const x = w - ((series.length - 1 - i) / (slots - 1)) * w;
      const y = h - (h - 4) * (v / max);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
}

// ---- /metrics ----

function parseMetrics(text) {
  const series = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    if (!series.has(m[1])) series.set(m[1], []);
    series.get(m[1]).push({ labels: m[2] ?? "", value: Number(m[3]) });
  }
  return series;
}

const sum = (series, name) => (series.get(name) ?? []).reduce((a, s) => a + s.value, 0);

function buckets(series, name) {
  const out = new Map();
  for (const s of series.get(`${name}_bucket`) ?? []) {
    const le = /le="([^"]+)"/.exec(s.labels)?.[1];
    if (le === undefined) continue;
    const bound = le === "+Inf" ? Infinity : Number(le);
    out.set(bound, (out.get(bound) ?? 0) + s.value);
  }
  return [...out.entries()].sort((a, b) => a[0] - b[0]);
}

/** Prometheus' histogram_quantile: linear within the bucket the rank falls in. */
function quantile(q, cumulative) {
  const total = cumulative.at(-1)?.[1] ?? 0;
  if (total <= 0) return undefined;
  const rank = q * total;
  let [lower, below] = [0, 0];
  for (const [le, count] of cumulative) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      return count === below ? le : lower + ((le - lower) * (rank - below)) / (count - below);
    }
    [lower, below] = [le, count];
  }
  return lower;
}

async function pollMetrics() {
  try {
    const res = await fetch("/metrics", { cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
    if (!res.ok) throw new Error(`/metrics: HTTP ${res.status}`);
    const series = parseMetrics(await res.text());
    const now = Date.now();
    view.latency.push({ t: now, buckets: buckets(series, "relay_latency_seconds") });
    while (view.latency.length > 2 && now - view.latency[1].t >= LATENCY_WINDOW_MS) view.latency.shift();
    view.counters = {
      lags: sum(series, "relay_fanout_lags_total"),
      repairs: sum(series, "relay_fanout_repairs_total"),
      slow: sum(series, "relay_fanout_slow_consumer_disconnects_total"),
    };
    invalidate("metrics");
  } catch {
    // /status already says the relay is unreachable.
  }
  setTimeout(pollMetrics, METRICS_EVERY_MS);
}

function renderMetrics() {
  const first = view.latency[0];
  const last = view.latency.at(-1);
  if (last) {
    // The difference of two cumulative scrapes is the histogram of the time between them.
    const base = new Map(first !== last ? first.buckets : []);
    const window = last.buckets.map(([le, c]) => [le, c - (base.get(le) ?? 0)]);
    setText("latency-p50", duration(quantile(0.5, window)));
    setText("latency-p99", duration(quantile(0.99, window)));
    setText("latency-window", first !== last ? `last ${Math.round((last.t - first.t) / 1000)} s` : "since start");
  }
  const c = view.counters;
  setText("lags", String(c.lags ?? 0));
  setText("repairs", String(c.repairs ?? 0));
  setText("slow-closes", String(c.slow ?? 0));
}

// ---- markets ----

let booksWanted = new Set();

async function pollMarkets() {
  try {
    const { markets } = await getJson("/status/markets");
    const shown = markets.slice(0, MAX_BOOKS);
    if (shown.join() !== view.markets.join()) {
      view.markets = shown;
      setText("markets-note", markets.length > MAX_BOOKS ? `first ${MAX_BOOKS} of ${markets.length}` : `${markets.length}`);
      if (!view.selected || !shown.includes(view.selected)) view.selected = view.selected ?? shown[0];
      subscribeBooks();
      invalidate("marketList");
      invalidate("depth");
    }
  } catch {
    // Retried on the next round.
  }
  setTimeout(pollMarkets, MARKETS_EVERY_MS);
}

/** One subscription for the books not yet asked for (the client merges them into one sid). */
function subscribeBooks() {
  if (!client) return;
  const added = view.markets.filter((t) => !booksWanted.has(t));
  if (added.length === 0) return;
  for (const t of added) booksWanted.add(t);
  client.subscribe({ channels: ["orderbook_delta"], marketTickers: added }, (m) => {
    const t = m.msg?.market_ticker;
    if (t) markMarket(t);
  });
}

function markMarket(ticker) {
  stats.messages++;
  dirtyMarkets.add(ticker);
  invalidate("marketRows");
  if (ticker === view.selected) invalidate("depth");
}

function renderMarketList() {
  const body = $("markets").tBodies[0];
  body.replaceChildren(
    ...view.markets.map((t) => {
      const tr = document.createElement("tr");
      tr.dataset.ticker = t;
      for (let i = 0; i < 4; i++) tr.append(document.createElement("td"));
      tr.cells[0].textContent = t;
      tr.addEventListener("click", () => select(t));
      return tr;
    }),
  );
  for (const t of view.markets) dirtyMarkets.add(t);
  renderMarketRows();
}

function renderMarketRows() {
  const body = $("markets").tBodies[0];
  for (const tr of body.rows) {
    const t = tr.dataset.ticker;
    tr.classList.toggle("selected", t === view.selected);
    if (!dirtyMarkets.has(t)) continue;
    const book = client?.book(t);
    const bid = book?.yes.at(-1)?.[0];
    const noBid = book?.no.at(-1)?.[0];
    tr.cells[1].textContent = book ? price(bid) : "…";
    tr.cells[2].textContent = book ? price(noBid && fromUnits(10000 - units(noBid))) : "…";
    tr.cells[3].textContent = price(view.trades.get(t));
  }
  dirtyMarkets.clear();
}

function select(ticker) {
  view.selected = ticker;
  history.replaceState(null, "", `#market=${encodeURIComponent(ticker)}`);
  invalidate("marketRows");
  invalidate("depth");
}

function renderDepth() {
  const t = view.selected;
  setText("depth-ticker", t ?? "");
  const book = t ? client?.book(t) : undefined;
  setText("depth-note", !t ? "" : book ? "" : "waiting for a snapshot");
  $("depth-yes").dataset.ticker = t ?? "";
  $("depth-yes").dataset.trusted = book ? "true" : "false";
  const largest = Math.max(1, ...(book ? [...book.yes, ...book.no].map(([, s]) => Number(s)) : []));
  for (const side of ["yes", "no"]) {
    const levels = book ? [...book[side]].reverse() : []; // best bid on top
    $(`depth-${side}`).tBodies[0].replaceChildren(
      ...levels.map(([p, s]) => {
        const tr = document.createElement("tr");
        tr.dataset.price = p;
        tr.dataset.size = s;
        const pc = document.createElement("td");
        pc.textContent = price(p);
        const sc = document.createElement("td");
        sc.className = "size";
        const bar = document.createElement("span");
        bar.style.width = `${(100 * Number(s)) / largest}%`;
        sc.append(bar, size(s));
        tr.append(pc, sc);
        return tr;
      }),
    );
  }
}

// ---- start ----

const retry = document.createElement("button");
retry.id = "retry";
retry.type = "button";
retry.textContent = "retry";
retry.hidden = true;
retry.addEventListener("click", () => {
  void client?.close();
  startClient(view.status.websocket);
  invalidate("conn");
});
$("conn-state").after(" ", retry);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) for (const part of Object.keys(renderers)) invalidate(part);
});
setInterval(() => invalidate("status"), 1000); // the "ago" texts
void pollStatus();
void pollMetrics();
invalidate("conn");
