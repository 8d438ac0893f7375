/**
 * `RelayClient`: one WebSocket connection to the relay (or the exchange) that stays up.
 *
 * The connection is a small state machine: `connecting` -> `open` -> (lost) -> `reconnecting`
 * (a backoff timer) -> `connecting` ... until `close()`, a permanent close code, or the maximum
 * number of consecutive failed attempts. Everything the caller asked for lives outside the
 * connection (subscriptions, queued commands) and is replayed on every new one; everything the
 * server gave (sids, seqs, books) is reset with it.
 */

import { backoffDelay } from "./backoff.js";
import { BookView, Books } from "./book.js";
import { classifyClose, describeClose } from "./close-codes.js";
import { Emitter } from "./emitter.js";
import { ResolvedOptions, resolveOptions } from "./options.js";
import { ALL, ChannelState, Markets, SubscribeSpec } from "./subscriptions.js";
import {
  ConnectionState,
  MessageCallback,
  PermanentCloseError,
  RelayClientEvents,
  RelayClientOptions,
  RelayStatus,
  ServerMessage,
  SubscriptionHandle,
  SubscriptionInfo,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

export * from "./types.js";

/** A caller's subscription: what it asked for, where its messages go, and its handle. */
interface HandleEntry {
  spec: SubscribeSpec;
  onMessage: MessageCallback;
  handle: SubscriptionHandle;
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;
/** Channels whose data carry `seq` per sid. */
const SEQUENCED = new Set(["orderbook_delta", "trade", "market_lifecycle_v2"]);
/** Error codes that end a sid: resubscribe. */
const TERMINAL_ERRORS = new Set([10, 17, 25]);
/** How often a paused (backpressured) queue looks at `bufferedAmount` again. */
const DRAIN_POLL_MS = 50;
/** How long `close()` waits for the close handshake before dropping the socket. */
const CLOSE_GRACE_MS = 2000;

export class RelayClient extends Emitter<RelayClientEvents> {
  static readonly CONNECTING = CONNECTING;
  static readonly OPEN = OPEN;
  static readonly CLOSING = CLOSING;
  static readonly CLOSED = CLOSED;

  readonly #o: ResolvedOptions;
  readonly #token: TokenSource | undefined;
  readonly #ctor: WebSocketConstructor;
  #ws: WebSocketLike | undefined;
  #state: ConnectionState = "connecting";
  /** Consecutive failed attempts since the last stable connection. */
  #attempts = 0;
  #lastError: Error | undefined;
  #stopped = false;
  /** The token the server refused (4001): never presented again. */
  #refusedToken: string | undefined;
  #currentToken: string | undefined;
  #nextId = 1;
  #timers = {
    reconnect: undefined as ReturnType<typeof setTimeout> | undefined,
    connect: undefined as ReturnType<typeof setTimeout> | undefined,
    stable: undefined as ReturnType<typeof setTimeout> | undefined,
    ping: undefined as ReturnType<typeof setInterval> | undefined,
    pong: undefined as ReturnType<typeof setTimeout> | undefined,
    drain: undefined as ReturnType<typeof setTimeout> | undefined,
  };
  #pingId: number | undefined;
  /** Caller commands waiting for an open, drained socket (bounded by `maxQueue`). */
  #queue: string[] = [];
  /** Subscription commands for the current connection; sent before the caller's queue. */
  #control: string[] = [];
  readonly #channels = new Map<string, ChannelState>();
  readonly #handles = new Map<number, HandleEntry>();
  #nextHandle = 1;
  /** Command id to the channel whose in-flight command it is. */
  readonly #pending = new Map<number, ChannelState>();
  /** `get_snapshot` command ids to their channel. */
  readonly #snapshotRequests = new Map<number, ChannelState>();
  readonly #books = new Books();
  #closed: Promise<void> | undefined;
  #resolveClosed: (() => void) | undefined;

  constructor(options: RelayClientOptions) {
    super();
    if (!options || typeof options.url !== "string") throw new TypeError("RelayClient: options.url is required");
    const ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ctor) {
      throw new TypeError("RelayClient: no global WebSocket here; pass one, e.g. { WebSocket } from 'ws'");
    }
    this.#ctor = ctor;
    this.#token = options.token;
    this.#o = resolveOptions(options);
    queueMicrotask(() => void this.#connect());
  }

  /** The standard ready state: CONNECTING (also while waiting to reconnect), OPEN, CLOSING, CLOSED. */
  get readyState(): number {
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

  get state(): ConnectionState {
    return this.#state;
  }

  /** Consecutive failed attempts since the last stable connection. */
  get attempts(): number {
    return this.#attempts;
  }

  /**
   * Sends a command (an object, serialized here). Queued while connecting, reconnecting or while
   * the socket drains; throws when the queue is full or the client is closed. Subscriptions go
   * through `subscribe`, which replays them after every reconnect.
   */
  send(command: Record<string, unknown>): void {
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
  get queued(): number {
    return this.#queue.length + this.#control.length;
  }

  /** Bytes the socket holds unsent (0 while not connected). */
  get bufferedAmount(): number {
    return this.#ws?.bufferedAmount ?? 0;
  }

  /** A fresh command id, unique on this client (for commands sent with `send`). */
  nextId(): number {
    return this.#nextId++;
  }

  /**
   * Subscribes `channels` (for `marketTickers`, or every market when left out). `onMessage` gets
   * each data message for them (books already checked and applied); for `orderbook_delta`, a
   * market whose book the client already holds is delivered at once as a snapshot.
   */
  subscribe(spec: SubscribeSpec, onMessage: MessageCallback = () => {}): SubscriptionHandle {
    if (!spec || !Array.isArray(spec.channels) || spec.channels.length === 0) {
      throw new TypeError("RelayClient.subscribe: channels must be a non-empty array");
    }
    if (this.#state === "closed") throw new Error("RelayClient: subscribe on a closed client");
    const id = this.#nextHandle++;
    const markets: Markets = spec.marketTickers ? new Set(spec.marketTickers) : ALL;
    const channels = [...new Set(spec.channels)];
    const handle: SubscriptionHandle = {
      id,
      channels,
      marketTickers: spec.marketTickers ? [...spec.marketTickers] : undefined,
      sids: () => Object.fromEntries(channels.map((c) => [c, this.#channels.get(c)?.sid])),
      unsubscribe: () => this.#unsubscribe(id),
    };
    this.#handles.set(id, { spec: { ...spec, channels }, onMessage, handle });
    for (const c of channels) {
      let ch = this.#channels.get(c);
      if (!ch) this.#channels.set(c, (ch = new ChannelState(c)));
      ch.wanted.set(id, markets);
      if (c === "orderbook_delta" && markets !== ALL) this.#replayBooks(ch, id, [...markets]);
    }
    this.#reconcile();
    return handle;
  }

  /** The market's book if the client trusts it (snapshot received, every delta since applied). */
  book(ticker: string): BookView | undefined {
    return this.#books.view(ticker);
  }

  /** Tickers whose books the client currently trusts. */
  bookTickers(): string[] {
    return this.#books.trustedTickers();
  }

  /** What the server has confirmed on this connection: channel, sid, markets. */
  subscriptions(): SubscriptionInfo[] {
    return [...this.#channels.values()].map((ch) => ({
      channel: ch.channel,
      sid: ch.sid,
      markets: ch.live === undefined ? undefined : ch.live === ALL ? ALL : [...ch.live],
    }));
  }

  /** Closes for good (code 1000); resolves once the socket is closed. */
  close(): Promise<void> {
    if (this.#closed) return this.#closed;
    this.#closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.#stopped = true;
    this.#clearTimers();
    const ws = this.#ws;
    if (ws && ws.readyState <= OPEN) {
      this.#setState("closing");
      // A peer that never answers the close frame is dropped after the grace period.
      const force = setTimeout(() => {
        ws.terminate?.();
        this.#onClose(ws, 1000, "client closed");
      }, CLOSE_GRACE_MS);
      const done = () => clearTimeout(force);
      this.on("state", ({ state }) => state === "closed" && done());
      try {
        ws.close(1000, "client closed");
      } catch {
        this.#onClose(ws, 1000, "client closed");
      }
    } else {
      this.#finish();
    }
    return this.#closed;
  }

  // ---- connection lifecycle ----

  async #connect(): Promise<void> {
    if (this.#stopped) return;
    this.#setState("connecting");
    let token: string | undefined;
    try {
      token = typeof this.#token === "function" ? await this.#token() : this.#token;
    } catch (e) {
      return this.#failed(asError(e, "token function failed"));
    }
    if (this.#stopped) return;
    if (token !== undefined && token === this.#refusedToken) {
      return this.#stop(new PermanentCloseError(4001, "unauthorized: the token was refused and not renewed"));
    }
    this.#currentToken = token;
    const url = new URL(this.#o.url);
    if (this.#o.relayEvents) url.searchParams.set("relay_events", "1");
    if (token && this.#o.authMode === "query") url.searchParams.set("token", token);
    let ws: WebSocketLike;
    try {
      ws =
        token && this.#o.authMode === "header"
          ? new this.#ctor(url.toString(), { headers: { Authorization: `Bearer ${token}` } })
          : new this.#ctor(url.toString());
    } catch (e) {
      return this.#failed(asError(e, "cannot create the WebSocket"));
    }
    this.#ws = ws;
    this.#lastError = undefined;
    this.#timers.connect = setTimeout(() => {
      this.#lastError = new Error(`connect timeout after ${this.#o.connectTimeoutMs} ms`);
      this.#drop(ws, "connect timeout");
    }, this.#o.connectTimeoutMs);
    ws.onopen = () => this.#onOpen(ws, token);
    ws.onmessage = (ev) => this.#onMessage(ws, ev.data);
    ws.onclose = (ev) => this.#onClose(ws, ev.code, ev.reason);
    ws.onerror = (ev) => {
      const err = (ev as { error?: unknown; message?: string }).error;
      const message = (ev as { message?: string }).message;
      this.#lastError = err instanceof Error ? err : new Error(message || "WebSocket error");
    };
    // Node's `ws`: protocol pongs prove the connection alive too.
    ws.on?.("pong", () => ws === this.#ws && this.#alive());
  }

  #onOpen(ws: WebSocketLike, token: string | undefined): void {
    if (ws !== this.#ws) return;
    clearTimeout(this.#timers.connect);
    if (this.#stopped) return;
    if (token && this.#o.authMode === "message") {
      ws.send(JSON.stringify({ id: this.#nextId++, cmd: "auth", params: { token } }));
    }
    this.#setState("open");
    this.emit("open", { url: this.#o.url });
    this.#timers.stable = setTimeout(() => (this.#attempts = 0), this.#o.stableMs);
    this.#timers.ping = setInterval(() => this.#ping(), this.#o.pingIntervalMs);
    this.#reconcile();
    this.#flush();
  }

  #onClose(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.#ws) return;
    detach(ws);
    this.#ws = undefined;
    this.#clearConnectionTimers();
    this.#resetConnectionState();
    if (this.#stopped) return this.#finish();
    const verdict = classifyClose(code, this.#lastError?.message);
    if (verdict.kind === "refused" && typeof this.#token === "function") {
      // A token function may hand out a new token: try it, but never the refused one again.
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
  #failed(error: Error, code = 1006, reason = error.message): void {
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

  #stop(error: Error): void {
    this.#stopped = true;
    this.#clearTimers();
    this.emit("error", error);
    this.#finish();
  }

  #finish(): void {
    this.#setState("closed");
    this.#resolveClosed?.();
  }

  /** Abandons a socket that is dead or hung: no close handshake to wait for. */
  #drop(ws: WebSocketLike, reason: string): void {
    if (ws !== this.#ws) return;
    try {
      if (ws.terminate) ws.terminate();
      else ws.close(4000, reason);
    } catch {
      // Already closed: nothing to release.
    }
    this.#onClose(ws, 1006, reason);
  }

  #ping(): void {
    const ws = this.#ws;
    if (!ws || this.#pingId !== undefined) return;
    this.#pingId = this.#nextId++;
    try {
      ws.send(JSON.stringify({ id: this.#pingId, cmd: "ping" }));
      ws.ping?.();
    } catch {
      // A send on a closing socket: the close event follows.
    }
    this.#timers.pong = setTimeout(() => {
      this.#lastError = new Error(`pong timeout: no pong within ${this.#o.pongTimeoutMs} ms`);
      this.#drop(ws, "pong timeout");
    }, this.#o.pongTimeoutMs);
  }

  #alive(): void {
    this.#pingId = undefined;
    clearTimeout(this.#timers.pong);
  }

  #setState(state: ConnectionState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.emit("state", { state, readyState: this.readyState, attempt: this.#attempts });
  }

  #clearConnectionTimers(): void {
    const t = this.#timers;
    clearTimeout(t.connect);
    clearTimeout(t.stable);
    clearInterval(t.ping);
    clearTimeout(t.pong);
    clearTimeout(t.drain);
    this.#pingId = undefined;
  }

  #clearTimers(): void {
    this.#clearConnectionTimers();
    clearTimeout(this.#timers.reconnect);
  }

  /** Sids, seqs, pending replies and book trust belong to one connection. */
  #resetConnectionState(): void {
    for (const ch of this.#channels.values()) ch.reset();
    this.emit("subscriptions", this.subscriptions());
    this.#pending.clear();
    this.#snapshotRequests.clear();
    this.#control = [];
    this.#stale(this.#books.distrust());
  }

  // ---- sending ----

  /** Sends control commands, then queued ones, while the socket is open and not backed up. */
  #flush(): void {
    const ws = this.#ws;
    if (!ws || this.#state !== "open") return;
    clearTimeout(this.#timers.drain);
    this.#timers.drain = undefined;
    while (this.#control.length || this.#queue.length) {
      if (ws.bufferedAmount > this.#o.highWaterMark) {
        this.#timers.drain = setTimeout(() => this.#flush(), DRAIN_POLL_MS);
        return;
      }
      const next = this.#control.length ? this.#control.shift()! : this.#queue.shift()!;
      try {
        ws.send(next);
      } catch (e) {
        this.#lastError = asError(e, "send failed");
        return;
      }
    }
  }

  // ---- subscriptions ----

  #unsubscribe(id: number): void {
    const entry = this.#handles.get(id);
    if (!entry) return;
    this.#handles.delete(id);
    for (const c of entry.spec.channels) this.#channels.get(c)?.wanted.delete(id);
    // Books nobody subscribes to any more are dropped.
    const ob = this.#channels.get("orderbook_delta")?.desired();
    this.#books.retain((t) => ob !== undefined && (ob === ALL || ob.has(t)));
    this.#reconcile();
  }

  /** Issues the next command of every channel that is out of step with what its handles want. */
  #reconcile(): void {
    if (this.#state !== "open") return;
    for (const ch of this.#channels.values()) {
      const step = ch.nextStep();
      if (!step) {
        if (ch.wanted.size === 0 && ch.live === undefined && !ch.inflight) this.#channels.delete(ch.channel);
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
  #replayBooks(ch: ChannelState, id: number, tickers: string[]): void {
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

  #requestSnapshots(ch: ChannelState, tickers: string[]): void {
    if (ch.sid === undefined || tickers.length === 0) return;
    const id = this.#nextId++;
    this.#snapshotRequests.set(id, ch);
    const params = { sid: ch.sid, market_tickers: tickers, action: "get_snapshot" };
    this.#control.push(JSON.stringify({ id, cmd: "update_subscription", params }));
    this.#flush();
  }

  // ---- receiving ----

  #onMessage(ws: WebSocketLike, data: unknown): void {
    if (ws !== this.#ws) return;
    let m: ServerMessage;
    try {
      m = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      this.emit("error", new Error("a frame that is not JSON"));
      return;
    }
    if (!m || typeof m.type !== "string") return;
    this.emit("message", m);
    if (m.id !== undefined && m.id === this.#pingId && (m.type === "pong" || m.type === "error")) {
      // The exchange answers our ping with error 5 (unknown command): alive all the same.
      return this.#alive();
    }
    switch (m.type) {
      case "relay_status":
        return this.emit("status", m.msg as RelayStatus);
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

  #onReply(m: ServerMessage): void {
    if (m.id !== undefined && this.#snapshotRequests.delete(m.id)) return;
    const ch = m.id !== undefined ? this.#pending.get(m.id) : undefined;
    if (!ch) return;
    this.#pending.delete(m.id!);
    const sid = m.type === "subscribed" ? m.msg?.sid : m.sid;
    ch.confirm(typeof sid === "number" ? sid : undefined);
    this.emit("subscriptions", this.subscriptions());
    this.#reconcile();
  }

  #onError(m: ServerMessage): void {
    const err = new Error(`server error ${m.msg?.code}: ${m.msg?.msg}`);
    if (m.id !== undefined) {
      const snap = this.#snapshotRequests.get(m.id);
      if (snap) {
        // No get_snapshot here (an older server): make the subscription again instead.
        this.#snapshotRequests.delete(m.id);
        snap.resubscribe = true;
        return this.#reconcile();
      }
      const ch = this.#pending.get(m.id);
      if (ch) {
        this.#pending.delete(m.id);
        ch.inflight = undefined;
        ch.refused = true;
        this.#deliver(ch, undefined, m);
        this.emit("error", err);
        return;
      }
    }
    if (m.sid !== undefined) {
      const ch = this.#channelBySid(m.sid);
      if (ch) {
        this.#deliver(ch, undefined, m);
        if (TERMINAL_ERRORS.has(m.msg?.code)) {
          // The sid is dead: its books cannot be trusted; subscribe again.
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

  #onLagged(msg: Record<string, unknown>): void {
    // Books the relay could not repair wait for their next snapshot.
    this.#stale(this.#books.distrust(Array.isArray(msg.books_stale) ? (msg.books_stale as string[]) : []));
    this.emit("lagged", msg);
  }

  #onData(m: ServerMessage): void {
    if (m.sid === undefined) return;
    const ch = this.#channelBySid(m.sid);
    if (!ch) return;
    if (typeof m.seq === "number" && SEQUENCED.has(ch.channel)) {
      const last = ch.lastSeq;
      if (last !== undefined && m.seq <= last) return; // a duplicate
      ch.lastSeq = m.seq;
      if (last !== undefined && m.seq !== last + 1) {
        this.emit("gap", { channel: ch.channel, sid: m.sid, expected: last + 1, got: m.seq });
        if (ch.channel === "orderbook_delta") {
          // The lost message could be any market's: none of this sid's books can be trusted.
          const tickers = this.#distrustChannel(ch);
          this.#requestSnapshots(ch, tickers);
        }
      }
    }
    const ticker = m.msg?.market_ticker ?? m.msg?.ticker;
    if (m.type === "orderbook_snapshot" || m.type === "orderbook_delta") {
      if (typeof ticker !== "string" || !m.msg) return;
      const result = this.#books.apply(m.type, m.msg, ticker);
      if (result === "skipped") return; // never applied to a book we cannot trust
      if (result === "bad") {
        this.#stale([ticker]);
        return this.#requestSnapshots(ch, [ticker]);
      }
    }
    this.#deliver(ch, typeof ticker === "string" ? ticker : undefined, m);
  }

  #deliver(ch: ChannelState, ticker: string | undefined, m: ServerMessage): void {
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

  #channelBySid(sid: number): ChannelState | undefined {
    for (const ch of this.#channels.values()) if (ch.sid === sid) return ch;
    return undefined;
  }

  /** Marks every book of an orderbook channel untrusted; returns the channel's tickers. */
  #distrustChannel(ch: ChannelState): string[] {
    if (ch.channel !== "orderbook_delta" || ch.live === undefined) return [];
    const tickers = ch.live === ALL ? this.#books.tickers() : [...ch.live];
    this.#stale(this.#books.distrust(tickers));
    return tickers;
  }

  #stale(tickers: string[]): void {
    if (tickers.length) this.emit("book_stale", { tickers });
  }
}

/** Stops listening to an abandoned socket (an error listener stays: `ws` throws on unheard errors). */
function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
}

function asError(e: unknown, context: string): Error {
  return e instanceof Error ? e : new Error(`${context}: ${String(e)}`);
}
