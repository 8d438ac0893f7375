// kalshi-relay-client (clients/js/src) bundled for the relay's dashboard by tests/browser/bundle.mjs.
// Generated: do not edit. Rebuild with `npm run bundle` in tests/browser.

// ../../clients/js/src/backoff.ts
var DEFAULT_BACKOFF = { baseMs: 1e3, factor: 2, capMs: 3e4, jitter: 0.5 };
function backoffDelay(attempt, o = DEFAULT_BACKOFF, random = Math.random) {
  const exp = Math.min(o.capMs, o.baseMs * Math.pow(o.factor, Math.max(0, attempt - 1)));
  return Math.floor(exp * (1 - o.jitter + 2 * o.jitter * random()));
}

// ../../clients/js/src/book.ts
var PRICE_DIGITS = 4;
var SIZE_DIGITS = 2;
function parseFixed(value, digits) {
  const text = typeof value === "number" ? String(value) : value;
  if (typeof text !== "string") return void 0;
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text.trim());
  if (!m) return void 0;
  const frac = (m[3] ?? "").padEnd(digits, "0");
  if (frac.length > digits && /[1-9]/.test(frac.slice(digits))) return void 0;
  const units = Number(m[2]) * 10 ** digits + Number(frac.slice(0, digits) || "0");
  if (!Number.isSafeInteger(units)) return void 0;
  return m[1] === "-" ? -units : units;
}
function formatFixed(units, digits) {
  const sign = units < 0 ? "-" : "";
  const abs = Math.abs(units);
  const scale = 10 ** digits;
  return `${sign}${Math.floor(abs / scale)}.${String(abs % scale).padStart(digits, "0")}`;
}
var OrderBook = class {
  ticker;
  marketId;
  trusted = false;
  #sides = { yes: /* @__PURE__ */ new Map(), no: /* @__PURE__ */ new Map() };
  constructor(ticker) {
    this.ticker = ticker;
  }
  /** Replaces the book with an `orderbook_snapshot` body; false (and untrusted) if it is malformed. */
  applySnapshot(msg) {
    const sides = { yes: /* @__PURE__ */ new Map(), no: /* @__PURE__ */ new Map() };
    for (const side of ["yes", "no"]) {
      const levels = msg[`${side}_dollars_fp`] ?? [];
      if (!Array.isArray(levels)) return this.#distrust();
      for (const level of levels) {
        if (!Array.isArray(level)) return this.#distrust();
        const price = parseFixed(level[0], PRICE_DIGITS);
        const size = parseFixed(level[1], SIZE_DIGITS);
        if (price === void 0 || size === void 0 || size < 0) return this.#distrust();
        if (size > 0) sides[side].set(price, size);
      }
    }
    this.#sides = sides;
    if (typeof msg.market_id === "string") this.marketId = msg.market_id;
    this.trusted = true;
    return true;
  }
  /** Applies an `orderbook_delta` body; false (and untrusted) if it is malformed or would go negative. */
  applyDelta(msg) {
    const side = msg.side;
    const price = parseFixed(msg.price_dollars, PRICE_DIGITS);
    const delta = parseFixed(msg.delta_fp, SIZE_DIGITS);
    if (side !== "yes" && side !== "no" || price === void 0 || delta === void 0) {
      return this.#distrust();
    }
    const levels = this.#sides[side];
    const size = (levels.get(price) ?? 0) + delta;
    if (size < 0) return this.#distrust();
    if (size === 0) levels.delete(price);
    else levels.set(price, size);
    return true;
  }
  /** The book in snapshot form: `{yes: [["0.0800","300.00"], ...], no: [...]}`, lowest price first. */
  view() {
    const side = (levels) => [...levels.entries()].sort((a, b) => a[0] - b[0]).map(([p, s]) => [formatFixed(p, PRICE_DIGITS), formatFixed(s, SIZE_DIGITS)]);
    return { yes: side(this.#sides.yes), no: side(this.#sides.no) };
  }
  /** The book as an `orderbook_snapshot` body (empty sides left out, as the exchange does). */
  snapshotBody() {
    const v = this.view();
    const body = { market_ticker: this.ticker };
    if (this.marketId !== void 0) body.market_id = this.marketId;
    if (v.yes.length) body.yes_dollars_fp = v.yes;
    if (v.no.length) body.no_dollars_fp = v.no;
    return body;
  }
  #distrust() {
    this.trusted = false;
    return false;
  }
};
var Books = class {
  #books = /* @__PURE__ */ new Map();
  /** The book of `ticker` if it is trusted. */
  view(ticker) {
    const b = this.#books.get(ticker);
    return b?.trusted ? b.view() : void 0;
  }
  get(ticker) {
    return this.#books.get(ticker);
  }
  tickers() {
    return [...this.#books.keys()];
  }
  trustedTickers() {
    return [...this.#books.values()].filter((b) => b.trusted).map((b) => b.ticker);
  }
  /** Marks these books (default: all) untrusted; returns the tickers that were trusted. */
  distrust(tickers = this.#books.keys()) {
    const marked = [];
    for (const t of [...tickers]) {
      const b = this.#books.get(t);
      if (b?.trusted) {
        b.trusted = false;
        marked.push(t);
      }
    }
    return marked;
  }
  /**
   * Applies an `orderbook_snapshot` or `orderbook_delta` body: `applied`; `skipped` (a delta for
   * a book not trusted, never applied); or `bad` (malformed, or a level would go negative: the
   * book is untrusted now and needs a fresh snapshot).
   */
  apply(type, msg, ticker) {
    let b = this.#books.get(ticker);
    if (!b) this.#books.set(ticker, b = new OrderBook(ticker));
    if (type === "orderbook_snapshot") return b.applySnapshot(msg) ? "applied" : "bad";
    if (!b.trusted) return "skipped";
    return b.applyDelta(msg) ? "applied" : "bad";
  }
  /** Drops the books `keep` says nobody wants. */
  retain(keep) {
    for (const t of [...this.#books.keys()]) if (!keep(t)) this.#books.delete(t);
  }
};

// ../../clients/js/src/close-codes.ts
var PERMANENT = /* @__PURE__ */ new Map([
  [1002, "protocol error"],
  [1007, "invalid UTF-8"],
  [1008, "policy violation"],
  [1009, "message too big"],
  [4001, "unauthorized"]
]);
function isPermanentClose(code) {
  return PERMANENT.has(code);
}
function describeClose(code, reason) {
  const known = PERMANENT.get(code);
  const text = reason || known || (code === 1006 ? "connection lost" : "closed");
  return `${code} ${text}`;
}
function classifyClose(code, errorMessage) {
  const http = /Unexpected server response: (\d+)/.exec(errorMessage ?? "")?.[1];
  if (code === 4001 || http === "401") return { kind: "refused" };
  if (http === "403") return { kind: "permanent", code: 1008 };
  if (isPermanentClose(code)) return { kind: "permanent", code };
  return { kind: "retry" };
}

// ../../clients/js/src/emitter.ts
var Emitter = class {
  #listeners = /* @__PURE__ */ new Map();
  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    let set = this.#listeners.get(event);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this.#listeners.set(event, set);
    }
    set.add(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }
  /** Calls every listener; one that throws is reported on the console and does not stop the others. */
  emit(event, payload) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (e) {
        console.error(`kalshi-relay-client: a '${String(event)}' listener threw`, e);
      }
    }
  }
};

// ../../clients/js/src/options.ts
var DEFAULTS = {
  maxReconnects: 10,
  stableMs: 1e4,
  pingIntervalMs: 3e4,
  pongTimeoutMs: 1e4,
  connectTimeoutMs: 1e4,
  maxQueue: 1e3,
  highWaterMark: 1 << 20
};
function resolveOptions(options) {
  const o = {
    url: options.url,
    authMode: options.authMode ?? (options.WebSocket ? "header" : "message"),
    maxReconnects: options.maxReconnects ?? DEFAULTS.maxReconnects,
    backoff: { ...DEFAULT_BACKOFF, ...options.backoff },
    stableMs: options.stableMs ?? DEFAULTS.stableMs,
    pingIntervalMs: options.pingIntervalMs ?? DEFAULTS.pingIntervalMs,
    pongTimeoutMs: options.pongTimeoutMs ?? DEFAULTS.pongTimeoutMs,
    connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
    maxQueue: options.maxQueue ?? DEFAULTS.maxQueue,
    highWaterMark: options.highWaterMark ?? DEFAULTS.highWaterMark,
    relayEvents: options.relayEvents ?? true
  };
  const problems = [];
  const positive = [
    "stableMs",
    "pingIntervalMs",
    "pongTimeoutMs",
    "connectTimeoutMs",
    "maxQueue",
    "highWaterMark"
  ];
  for (const key of positive) {
    if (!(o[key] > 0)) problems.push(`${key} = ${o[key]}: must be > 0`);
  }
  if (!(o.maxReconnects >= 0)) problems.push(`maxReconnects = ${o.maxReconnects}: must be >= 0`);
  const b = o.backoff;
  if (!(b.baseMs > 0)) problems.push(`backoff.baseMs = ${b.baseMs}: must be > 0`);
  if (!(b.factor >= 1)) problems.push(`backoff.factor = ${b.factor}: must be >= 1`);
  if (!(b.capMs >= b.baseMs)) problems.push(`backoff.capMs = ${b.capMs}: must be >= backoff.baseMs`);
  if (!(b.jitter >= 0 && b.jitter < 1)) problems.push(`backoff.jitter = ${b.jitter}: must be in [0, 1)`);
  if (!["header", "message", "query"].includes(o.authMode)) {
    problems.push(`authMode = ${o.authMode}: must be header, message or query`);
  }
  if (problems.length) throw new RangeError(`RelayClient: ${problems.join("; ")}`);
  return o;
}

// ../../clients/js/src/subscriptions.ts
var ALL = "all";
var ChannelState = class {
  channel;
  /** Handle id to its market filter. */
  wanted = /* @__PURE__ */ new Map();
  /** The server's sid, once `subscribed` arrived on this connection. */
  sid;
  /** Markets the server confirmed; undefined while not subscribed. */
  live;
  /** The command in flight (one at a time per channel): its id and step. */
  inflight;
  /** The last seq seen on the sid (sequenced channels). */
  lastSeq;
  /** Set when the server refused a subscribe: not retried until the next connection. */
  refused = false;
  /** Set when the subscription must be dropped and made again (e.g. get_snapshot refused). */
  resubscribe = false;
  constructor(channel) {
    this.channel = channel;
  }
  /** The union of what the handles want; undefined when nobody does. */
  desired() {
    if (this.wanted.size === 0) return void 0;
    const union = /* @__PURE__ */ new Set();
    for (const m of this.wanted.values()) {
      if (m === ALL) return ALL;
      for (const t of m) union.add(t);
    }
    return union;
  }
  /** Forgets everything the server had: a new connection starts from nothing. */
  reset() {
    this.sid = void 0;
    this.live = void 0;
    this.inflight = void 0;
    this.lastSeq = void 0;
    this.refused = false;
    this.resubscribe = false;
  }
  /** The next command to send, or undefined when in step (or waiting on a reply). */
  nextStep() {
    if (this.inflight || this.refused) return void 0;
    const want = this.desired();
    if (this.live === void 0) {
      if (want === void 0) return void 0;
      return { kind: "subscribe", markets: want };
    }
    if (want === void 0 || this.resubscribe) return { kind: "unsubscribe" };
    if (this.live === ALL) return void 0;
    if (want === ALL) return { kind: "unsubscribe" };
    const add = [...want].filter((t) => !this.live.has(t));
    if (add.length) return { kind: "add", markets: add };
    const del = [...this.live].filter((t) => !want.has(t));
    if (del.length) return { kind: "delete", markets: del };
    return void 0;
  }
  /** The command object for `step` with id `id`. */
  command(id, step) {
    switch (step.kind) {
      case "subscribe": {
        const params = { channels: [this.channel] };
        if (step.markets !== ALL) params.market_tickers = [...step.markets];
        return { id, cmd: "subscribe", params };
      }
      case "add":
      case "delete":
        return {
          id,
          cmd: "update_subscription",
          params: {
            sid: this.sid,
            market_tickers: step.markets,
            action: step.kind === "add" ? "add_markets" : "delete_markets"
          }
        };
      case "unsubscribe":
        return { id, cmd: "unsubscribe", params: { sids: [this.sid] } };
    }
  }
  /** The server accepted the in-flight command. */
  confirm(sid) {
    const step = this.inflight?.step;
    this.inflight = void 0;
    if (!step) return;
    switch (step.kind) {
      case "subscribe":
        this.sid = sid;
        this.live = step.markets === ALL ? ALL : new Set(step.markets);
        this.lastSeq = void 0;
        break;
      case "add":
        if (this.live instanceof Set) for (const t of step.markets) this.live.add(t);
        break;
      case "delete":
        if (this.live instanceof Set) for (const t of step.markets) this.live.delete(t);
        break;
      case "unsubscribe":
        this.sid = void 0;
        this.live = void 0;
        this.lastSeq = void 0;
        this.resubscribe = false;
        break;
    }
  }
  /** Whether a message about `ticker` (undefined: not market-specific) is wanted by handle `id`. */
  wants(id, ticker) {
    const m = this.wanted.get(id);
    if (m === void 0) return false;
    return m === ALL || ticker === void 0 || m.has(ticker);
  }
};

// ../../clients/js/src/types.ts
var PermanentCloseError = class extends Error {
  code;
  reason;
  constructor(code, reason) {
    super(`connection closed permanently: ${describeClose(code, reason)}`);
    this.name = "PermanentCloseError";
    this.code = code;
    this.reason = reason;
  }
};

// ../../clients/js/src/client.ts
var CONNECTING = 0;
var OPEN = 1;
var CLOSING = 2;
var CLOSED = 3;
var SEQUENCED = /* @__PURE__ */ new Set(["orderbook_delta", "trade", "market_lifecycle_v2"]);
var TERMINAL_ERRORS = /* @__PURE__ */ new Set([10, 17, 25]);
var DRAIN_POLL_MS = 50;
var CLOSE_GRACE_MS = 2e3;
var RelayClient = class extends Emitter {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSING = CLOSING;
  static CLOSED = CLOSED;
  #o;
  #token;
  #ctor;
  #ws;
  #state = "connecting";
  /** Consecutive failed attempts since the last stable connection. */
  #attempts = 0;
  #lastError;
  #stopped = false;
  /** The token the server refused (4001): never presented again. */
  #refusedToken;
  #currentToken;
  #nextId = 1;
  #timers = {
    reconnect: void 0,
    connect: void 0,
    stable: void 0,
    ping: void 0,
    pong: void 0,
    drain: void 0
  };
  #pingId;
  /** Caller commands waiting for an open, drained socket (bounded by `maxQueue`). */
  #queue = [];
  /** Subscription commands for the current connection; sent before the caller's queue. */
  #control = [];
  #channels = /* @__PURE__ */ new Map();
  #handles = /* @__PURE__ */ new Map();
  #nextHandle = 1;
  /** Command id to the channel whose in-flight command it is. */
  #pending = /* @__PURE__ */ new Map();
  /** `get_snapshot` command ids to their channel. */
  #snapshotRequests = /* @__PURE__ */ new Map();
  #books = new Books();
  #closed;
  #resolveClosed;
  constructor(options) {
    super();
    if (!options || typeof options.url !== "string") throw new TypeError("RelayClient: options.url is required");
    const ctor = options.WebSocket ?? globalThis.WebSocket;
    if (!ctor) {
      throw new TypeError("RelayClient: no global WebSocket here; pass one, e.g. { WebSocket } from 'ws'");
    }
    this.#ctor = ctor;
    this.#token = options.token;
    this.#o = resolveOptions(options);
    queueMicrotask(() => void this.#connect());
  }
  /** The standard ready state: CONNECTING (also while waiting to reconnect), OPEN, CLOSING, CLOSED. */
  get readyState() {
    switch (this.#state) {
      case "open":
        return OPEN;
      case "closing":
        return CLOSING;
      case "closed":
        return CLOSED;
      default:
        return CONNECTING;
    }
  }
  get state() {
    return this.#state;
  }
  /** Consecutive failed attempts since the last stable connection. */
  get attempts() {
    return this.#attempts;
  }
  /**
   * Sends a command (an object, serialized here). Queued while connecting, reconnecting or while
   * the socket drains; throws when the queue is full or the client is closed. Subscriptions go
   * through `subscribe`, which replays them after every reconnect.
   */
  send(command) {
    if (this.#state === "closed" || this.#state === "closing") {
      throw new Error(`RelayClient: send on a ${this.#state} client`);
    }
    if (this.#queue.length >= this.#o.maxQueue) {
      throw new Error(`RelayClient: send queue full (${this.#o.maxQueue} commands waiting)`);
    }
    this.#queue.push(JSON.stringify(command));
    this.#flush();
  }
  /** Commands waiting to be handed to the socket (not connected yet, or backpressure). */
  get queued() {
    return this.#queue.length + this.#control.length;
  }
  /** Bytes the socket holds unsent (0 while not connected). */
  get bufferedAmount() {
    return this.#ws?.bufferedAmount ?? 0;
  }
  /** A fresh command id, unique on this client (for commands sent with `send`). */
  nextId() {
    return this.#nextId++;
  }
  /**
   * Subscribes `channels` (for `marketTickers`, or every market when left out). `onMessage` gets
   * each data message for them (books already checked and applied); for `orderbook_delta`, a
   * market whose book the client already holds is delivered at once as a snapshot.
   */
  subscribe(spec, onMessage = () => {
  }) {
    if (!spec || !Array.isArray(spec.channels) || spec.channels.length === 0) {
      throw new TypeError("RelayClient.subscribe: channels must be a non-empty array");
    }
    if (this.#state === "closed") throw new Error("RelayClient: subscribe on a closed client");
    const id = this.#nextHandle++;
    const markets = spec.marketTickers ? new Set(spec.marketTickers) : ALL;
    const channels = [...new Set(spec.channels)];
    const handle = {
      id,
      channels,
      marketTickers: spec.marketTickers ? [...spec.marketTickers] : void 0,
      sids: () => Object.fromEntries(channels.map((c) => [c, this.#channels.get(c)?.sid])),
      unsubscribe: () => this.#unsubscribe(id)
    };
    this.#handles.set(id, { spec: { ...spec, channels }, onMessage, handle });
    for (const c of channels) {
      let ch = this.#channels.get(c);
      if (!ch) this.#channels.set(c, ch = new ChannelState(c));
      ch.wanted.set(id, markets);
      if (c === "orderbook_delta" && markets !== ALL) this.#replayBooks(ch, id, [...markets]);
    }
    this.#reconcile();
    return handle;
  }
  /** The market's book if the client trusts it (snapshot received, every delta since applied). */
  book(ticker) {
    return this.#books.view(ticker);
  }
  /** Tickers whose books the client currently trusts. */
  bookTickers() {
    return this.#books.trustedTickers();
  }
  /** What the server has confirmed on this connection: channel, sid, markets. */
  subscriptions() {
    return [...this.#channels.values()].map((ch) => ({
      channel: ch.channel,
      sid: ch.sid,
      markets: ch.live === void 0 ? void 0 : ch.live === ALL ? ALL : [...ch.live]
    }));
  }
  /** Closes for good (code 1000); resolves once the socket is closed. */
  close() {
    if (this.#closed) return this.#closed;
    this.#closed = new Promise((resolve) => this.#resolveClosed = resolve);
    this.#stopped = true;
    this.#clearTimers();
    const ws = this.#ws;
    if (ws && ws.readyState <= OPEN) {
      this.#setState("closing");
      const force = setTimeout(() => {
        ws.terminate?.();
        this.#onClose(ws, 1e3, "client closed");
      }, CLOSE_GRACE_MS);
      const done = () => clearTimeout(force);
      this.on("state", ({ state }) => state === "closed" && done());
      try {
        ws.close(1e3, "client closed");
      } catch {
        this.#onClose(ws, 1e3, "client closed");
      }
    } else {
      this.#finish();
    }
    return this.#closed;
  }
  // ---- connection lifecycle ----
  async #connect() {
    if (this.#stopped) return;
    this.#setState("connecting");
    let token;
    try {
      token = typeof this.#token === "function" ? await this.#token() : this.#token;
    } catch (e) {
      return this.#failed(asError(e, "token function failed"));
    }
    if (this.#stopped) return;
    if (token !== void 0 && token === this.#refusedToken) {
      return this.#stop(new PermanentCloseError(4001, "unauthorized: the token was refused and not renewed"));
    }
    this.#currentToken = token;
    const url = new URL(this.#o.url);
    if (this.#o.relayEvents) url.searchParams.set("relay_events", "1");
    if (token && this.#o.authMode === "query") url.searchParams.set("token", token);
    let ws;
    try {
      ws = token && this.#o.authMode === "header" ? new this.#ctor(url.toString(), { headers: { Authorization: `Bearer ${token}` } }) : new this.#ctor(url.toString());
    } catch (e) {
      return this.#failed(asError(e, "cannot create the WebSocket"));
    }
    this.#ws = ws;
    this.#lastError = void 0;
    this.#timers.connect = setTimeout(() => {
      this.#lastError = new Error(`connect timeout after ${this.#o.connectTimeoutMs} ms`);
      this.#drop(ws, "connect timeout");
    }, this.#o.connectTimeoutMs);
    ws.onopen = () => this.#onOpen(ws, token);
    ws.onmessage = (ev) => this.#onMessage(ws, ev.data);
    ws.onclose = (ev) => this.#onClose(ws, ev.code, ev.reason);
    ws.onerror = (ev) => {
      const err = ev.error;
      const message = ev.message;
      this.#lastError = err instanceof Error ? err : new Error(message || "WebSocket error");
    };
    ws.on?.("pong", () => ws === this.#ws && this.#alive());
  }
  #onOpen(ws, token) {
    if (ws !== this.#ws) return;
    clearTimeout(this.#timers.connect);
    if (this.#stopped) return;
    if (token && this.#o.authMode === "message") {
      ws.send(JSON.stringify({ id: this.#nextId++, cmd: "auth", params: { token } }));
    }
    this.#setState("open");
    this.emit("open", { url: this.#o.url });
    this.#timers.stable = setTimeout(() => this.#attempts = 0, this.#o.stableMs);
    this.#timers.ping = setInterval(() => this.#ping(), this.#o.pingIntervalMs);
    this.#reconcile();
    this.#flush();
  }
  #onClose(ws, code, reason) {
    if (ws !== this.#ws) return;
    detach(ws);
    this.#ws = void 0;
    this.#clearConnectionTimers();
    this.#resetConnectionState();
    if (this.#stopped) return this.#finish();
    const verdict = classifyClose(code, this.#lastError?.message);
    if (verdict.kind === "refused" && typeof this.#token === "function") {
      this.#refusedToken = this.#currentToken;
    } else if (verdict.kind !== "retry") {
      const permanentCode = verdict.kind === "refused" ? 4001 : verdict.code;
      const err = new PermanentCloseError(permanentCode, reason || this.#lastError?.message || "");
      this.emit("close", { code, reason, permanent: true, error: err.message });
      return this.#stop(err);
    }
    this.#failed(this.#lastError ?? new Error(`closed: ${describeClose(code, reason)}`), code, reason);
  }
  /** A connection attempt or a connection ended: back off and retry, or give up. */
  #failed(error, code = 1006, reason = error.message) {
    this.#lastError = error;
    if (this.#attempts >= this.#o.maxReconnects) {
      this.emit("close", { code, reason, permanent: false, error: error.message });
      this.#setState("closed");
      this.#stopped = true;
      this.emit("max_reconnects", { attempts: this.#attempts, error });
      this.#finish();
      return;
    }
    this.#attempts += 1;
    const delay = backoffDelay(this.#attempts, this.#o.backoff);
    this.emit("close", { code, reason, permanent: false, reconnectInMs: delay, error: error.message });
    this.#setState("reconnecting");
    this.#timers.reconnect = setTimeout(() => void this.#connect(), delay);
  }
  #stop(error) {
    this.#stopped = true;
    this.#clearTimers();
    this.emit("error", error);
    this.#finish();
  }
  #finish() {
    this.#setState("closed");
    this.#resolveClosed?.();
  }
  /** Abandons a socket that is dead or hung: no close handshake to wait for. */
  #drop(ws, reason) {
    if (ws !== this.#ws) return;
    try {
      if (ws.terminate) ws.terminate();
      else ws.close(4e3, reason);
    } catch {
    }
    this.#onClose(ws, 1006, reason);
  }
  #ping() {
    const ws = this.#ws;
    if (!ws || this.#pingId !== void 0) return;
    this.#pingId = this.#nextId++;
    try {
      ws.send(JSON.stringify({ id: this.#pingId, cmd: "ping" }));
      ws.ping?.();
    } catch {
    }
    this.#timers.pong = setTimeout(() => {
      this.#lastError = new Error(`pong timeout: no pong within ${this.#o.pongTimeoutMs} ms`);
      this.#drop(ws, "pong timeout");
    }, this.#o.pongTimeoutMs);
  }
  #alive() {
    this.#pingId = void 0;
    clearTimeout(this.#timers.pong);
  }
  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.emit("state", { state, readyState: this.readyState, attempt: this.#attempts });
  }
  #clearConnectionTimers() {
    const t = this.#timers;
    clearTimeout(t.connect);
    clearTimeout(t.stable);
    clearInterval(t.ping);
    clearTimeout(t.pong);
    clearTimeout(t.drain);
    this.#pingId = void 0;
  }
  #clearTimers() {
    this.#clearConnectionTimers();
    clearTimeout(this.#timers.reconnect);
  }
  /** Sids, seqs, pending replies and book trust belong to one connection. */
  #resetConnectionState() {
    for (const ch of this.#channels.values()) ch.reset();
    this.emit("subscriptions", this.subscriptions());
    this.#pending.clear();
    this.#snapshotRequests.clear();
    this.#control = [];
    this.#stale(this.#books.distrust());
  }
  // ---- sending ----
  /** Sends control commands, then queued ones, while the socket is open and not backed up. */
  #flush() {
    const ws = this.#ws;
    if (!ws || this.#state !== "open") return;
    clearTimeout(this.#timers.drain);
    this.#timers.drain = void 0;
    while (this.#control.length || this.#queue.length) {
      if (ws.bufferedAmount > this.#o.highWaterMark) {
        this.#timers.drain = setTimeout(() => this.#flush(), DRAIN_POLL_MS);
        return;
      }
      const next = this.#control.length ? this.#control.shift() : this.#queue.shift();
      try {
        ws.send(next);
      } catch (e) {
        this.#lastError = asError(e, "send failed");
        return;
      }
    }
  }
  // ---- subscriptions ----
  #unsubscribe(id) {
    const entry = this.#handles.get(id);
    if (!entry) return;
    this.#handles.delete(id);
    for (const c of entry.spec.channels) this.#channels.get(c)?.wanted.delete(id);
    const ob = this.#channels.get("orderbook_delta")?.desired();
    this.#books.retain((t) => ob !== void 0 && (ob === ALL || ob.has(t)));
    this.#reconcile();
  }
  /** Issues the next command of every channel that is out of step with what its handles want. */
  #reconcile() {
    if (this.#state !== "open") return;
    for (const ch of this.#channels.values()) {
      const step = ch.nextStep();
      if (!step) {
        if (ch.wanted.size === 0 && ch.live === void 0 && !ch.inflight) this.#channels.delete(ch.channel);
        continue;
      }
      const id = this.#nextId++;
      ch.inflight = { id, step };
      this.#pending.set(id, ch);
      this.#control.push(JSON.stringify(ch.command(id, step)));
    }
    this.#flush();
  }
  /** Gives handle `id` the books it asked for that the client already holds. */
  #replayBooks(ch, id, tickers) {
    queueMicrotask(() => {
      const entry = this.#handles.get(id);
      if (!entry) return;
      for (const t of tickers) {
        const b = this.#books.get(t);
        if (b?.trusted) {
          entry.onMessage({ type: "orderbook_snapshot", sid: ch.sid, msg: b.snapshotBody() }, entry.handle);
        }
      }
    });
  }
  #requestSnapshots(ch, tickers) {
    if (ch.sid === void 0 || tickers.length === 0) return;
    const id = this.#nextId++;
    this.#snapshotRequests.set(id, ch);
    const params = { sid: ch.sid, market_tickers: tickers, action: "get_snapshot" };
    this.#control.push(JSON.stringify({ id, cmd: "update_subscription", params }));
    this.#flush();
  }
  // ---- receiving ----
  #onMessage(ws, data) {
    if (ws !== this.#ws) return;
    let m;
    try {
      m = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      this.emit("error", new Error("a frame that is not JSON"));
      return;
    }
    if (!m || typeof m.type !== "string") return;
    this.emit("message", m);
    if (m.id !== void 0 && m.id === this.#pingId && (m.type === "pong" || m.type === "error")) {
      return this.#alive();
    }
    switch (m.type) {
      case "relay_status":
        return this.emit("status", m.msg);
      case "relay_lagged":
        return this.#onLagged(m.msg ?? {});
      case "subscribed":
      case "ok":
      case "unsubscribed":
        return this.#onReply(m);
      case "error":
        return this.#onError(m);
      default:
        return this.#onData(m);
    }
  }
  #onReply(m) {
    if (m.id !== void 0 && this.#snapshotRequests.delete(m.id)) return;
    const ch = m.id !== void 0 ? this.#pending.get(m.id) : void 0;
    if (!ch) return;
    this.#pending.delete(m.id);
    const sid = m.type === "subscribed" ? m.msg?.sid : m.sid;
    ch.confirm(typeof sid === "number" ? sid : void 0);
    this.emit("subscriptions", this.subscriptions());
    this.#reconcile();
  }
  #onError(m) {
    const err = new Error(`server error ${m.msg?.code}: ${m.msg?.msg}`);
    if (m.id !== void 0) {
      const snap = this.#snapshotRequests.get(m.id);
      if (snap) {
        this.#snapshotRequests.delete(m.id);
        snap.resubscribe = true;
        return this.#reconcile();
      }
      const ch = this.#pending.get(m.id);
      if (ch) {
        this.#pending.delete(m.id);
        ch.inflight = void 0;
        ch.refused = true;
        this.#deliver(ch, void 0, m);
        this.emit("error", err);
        return;
      }
    }
    if (m.sid !== void 0) {
      const ch = this.#channelBySid(m.sid);
      if (ch) {
        this.#deliver(ch, void 0, m);
        if (TERMINAL_ERRORS.has(m.msg?.code)) {
          this.#distrustChannel(ch);
          if (ch.inflight) this.#pending.delete(ch.inflight.id);
          ch.reset();
          this.#reconcile();
        }
        return;
      }
    }
    this.emit("error", err);
  }
  #onLagged(msg) {
    this.#stale(this.#books.distrust(Array.isArray(msg.books_stale) ? msg.books_stale : []));
    this.emit("lagged", msg);
  }
  #onData(m) {
    if (m.sid === void 0) return;
    const ch = this.#channelBySid(m.sid);
    if (!ch) return;
    if (typeof m.seq === "number" && SEQUENCED.has(ch.channel)) {
      const last = ch.lastSeq;
      if (last !== void 0 && m.seq <= last) return;
      ch.lastSeq = m.seq;
      if (last !== void 0 && m.seq !== last + 1) {
        this.emit("gap", { channel: ch.channel, sid: m.sid, expected: last + 1, got: m.seq });
        if (ch.channel === "orderbook_delta") {
          const tickers = this.#distrustChannel(ch);
          this.#requestSnapshots(ch, tickers);
        }
      }
    }
    const ticker = m.msg?.market_ticker ?? m.msg?.ticker;
    if (m.type === "orderbook_snapshot" || m.type === "orderbook_delta") {
      if (typeof ticker !== "string" || !m.msg) return;
      const result = this.#books.apply(m.type, m.msg, ticker);
      if (result === "skipped") return;
      if (result === "bad") {
        this.#stale([ticker]);
        return this.#requestSnapshots(ch, [ticker]);
      }
    }
    this.#deliver(ch, typeof ticker === "string" ? ticker : void 0, m);
  }
  #deliver(ch, ticker, m) {
    for (const id of ch.wanted.keys()) {
      if (!ch.wants(id, ticker)) continue;
      const entry = this.#handles.get(id);
      if (!entry) continue;
      try {
        entry.onMessage(m, entry.handle);
      } catch (e) {
        console.error("kalshi-relay-client: a subscription callback threw", e);
      }
    }
  }
  #channelBySid(sid) {
    for (const ch of this.#channels.values()) if (ch.sid === sid) return ch;
    return void 0;
  }
  /** Marks every book of an orderbook channel untrusted; returns the channel's tickers. */
  #distrustChannel(ch) {
    if (ch.channel !== "orderbook_delta" || ch.live === void 0) return [];
    const tickers = ch.live === ALL ? this.#books.tickers() : [...ch.live];
    this.#stale(this.#books.distrust(tickers));
    return tickers;
  }
  #stale(tickers) {
    if (tickers.length) this.emit("book_stale", { tickers });
  }
};
function detach(ws) {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {
  };
}
function asError(e, context) {
  return e instanceof Error ? e : new Error(`${context}: ${String(e)}`);
}
export {
  PermanentCloseError,
  RelayClient
};
