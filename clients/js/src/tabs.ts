/**
 * `SharedRelayClient`: the browser tab's side of one connection shared by every tab of an origin.
 *
 * With SharedWorker (`mode: "shared-worker"`, the default where it exists) the connection lives in
 * the worker. Without it (`mode: "broadcast"`), the tabs elect a leader with a Web Lock (released
 * when its tab closes, so the next waiting tab takes over), the leader runs the hub, and the
 * others talk to it over a BroadcastChannel. Either way the tab keeps a mirror of the books its
 * subscriptions cover, built from the messages the hub routes to it (already seq-checked there).
 */

import { Books, BookView } from "./book.js";
import type {
  ConnectionState,
  MessageCallback,
  RelayClientEvents,
  RelayClientOptions,
  ServerMessage,
  SubscriptionHandle,
  SubscriptionInfo,
  TokenSource,
} from "./client.js";
import { PermanentCloseError } from "./client.js";
import { Emitter } from "./emitter.js";
import { HubMessage, Hub, PortableOptions, TabMessage } from "./hub.js";
import { SubscribeSpec } from "./subscriptions.js";

export interface SharedRelayClientOptions extends Omit<RelayClientOptions, "WebSocket" | "token"> {
  token?: TokenSource;
  /** URL of `shared-worker.js` from this package (needed for the SharedWorker mode). */
  workerUrl?: string | URL;
  /** `auto` (default): SharedWorker where it exists and `workerUrl` is given, else `broadcast`. */
  mode?: "auto" | "shared-worker" | "broadcast";
  /** Tabs with the same name share a connection (default `kalshi-relay-client`). */
  name?: string;
}

interface Link {
  post(m: TabMessage): void;
  close(): void;
}

export class SharedRelayClient extends Emitter<RelayClientEvents> {
  /** Where the connection lives for this tab. */
  readonly mode: "shared-worker" | "broadcast";
  readonly #options: SharedRelayClientOptions;
  #link: Link | undefined;
  #state: RelayClientEvents["state"] = {
    state: "connecting",
    readyState: 0,
    attempt: 0,
  };
  #subs: SubscriptionInfo[] = [];
  readonly #handles = new Map<
    number,
    { spec: SubscribeSpec; onMessage: MessageCallback; handle: SubscriptionHandle }
  >();
  #nextHid = 1;
  readonly #books = new Books();
  #closed = false;
  /** Broadcast mode: true while this tab holds the connection for the others. */
  #leader = false;
  #releaseLock: (() => void) | undefined;
  readonly #onPageHide = () => this.#link?.post({ t: "bye" });

  constructor(options: SharedRelayClientOptions) {
    super();
    if (!options || typeof options.url !== "string") throw new TypeError("SharedRelayClient: options.url is required");
    this.#options = options;
    const hasSharedWorker = typeof SharedWorker !== "undefined";
    const want = options.mode ?? "auto";
    if (want === "shared-worker" && (!hasSharedWorker || !options.workerUrl)) {
      throw new TypeError("SharedRelayClient: shared-worker mode needs SharedWorker and options.workerUrl");
    }
    this.mode = want === "broadcast" || !hasSharedWorker || !options.workerUrl ? "broadcast" : "shared-worker";
    if (this.mode === "shared-worker") this.#link = this.#workerLink();
    else this.#broadcastLink();
    globalThis.addEventListener?.("pagehide", this.#onPageHide);
  }

  get state(): ConnectionState {
    return this.#closed ? "closed" : this.#state.state;
  }

  get readyState(): number {
    return this.#closed ? 3 : this.#state.readyState;
  }

  /** Broadcast mode: whether this tab holds the connection. */
  get isLeader(): boolean {
    return this.#leader;
  }

  subscribe(spec: SubscribeSpec, onMessage: MessageCallback = () => {}): SubscriptionHandle {
    if (!spec || !Array.isArray(spec.channels) || spec.channels.length === 0) {
      throw new TypeError("SharedRelayClient.subscribe: channels must be a non-empty array");
    }
    if (this.#closed) throw new Error("SharedRelayClient: subscribe on a closed client");
    const hid = this.#nextHid++;
    const channels = [...new Set(spec.channels)];
    const clean: SubscribeSpec = { channels, marketTickers: spec.marketTickers ? [...spec.marketTickers] : undefined };
    const handle: SubscriptionHandle = {
      id: hid,
      channels,
      marketTickers: clean.marketTickers,
      sids: () => Object.fromEntries(channels.map((c) => [c, this.#subs.find((s) => s.channel === c)?.sid])),
      unsubscribe: () => {
        if (!this.#handles.delete(hid)) return;
        this.#link?.post({ t: "unsub", hid });
        this.#books.retain((t) => this.#bookOwner(t) !== undefined);
      },
    };
    this.#handles.set(hid, { spec: clean, onMessage, handle });
    this.#link?.post({ t: "sub", hid, spec: clean });
    return handle;
  }

  /** The market's book if trusted: the same view as `RelayClient.book`. */
  book(ticker: string): BookView | undefined {
    return this.#books.view(ticker);
  }

  bookTickers(): string[] {
    return this.#books.trustedTickers();
  }

  /** Sends a command on the shared connection (errors come back as `error` events). */
  send(command: Record<string, unknown>): void {
    if (this.#closed) throw new Error("SharedRelayClient: send on a closed client");
    this.#link?.post({ t: "send", command });
  }

  /** Leaves the shared connection (it stays up for the other tabs). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    globalThis.removeEventListener?.("pagehide", this.#onPageHide);
    this.#link?.post({ t: "bye" });
    this.#link?.close();
    this.#link = undefined;
    this.#releaseLock?.();
    this.emit("state", { state: "closed", readyState: 3, attempt: 0 });
  }

  // ---- links to the hub ----

  #hello(link: Link): void {
    const { token, workerUrl: _w, mode: _m, name: _n, ...rest } = this.#options;
    const options: PortableOptions = { ...rest, token: typeof token === "string" ? token : undefined };
    link.post({ t: "hello", options, tokenFn: typeof token === "function" });
    for (const [hid, { spec }] of this.#handles) link.post({ t: "sub", hid, spec });
  }

  #workerLink(): Link {
    const worker = new SharedWorker(this.#options.workerUrl!, { type: "module", name: this.#name() });
    const port = worker.port;
    port.onmessage = (ev) => this.#fromHub(ev.data as HubMessage, (m) => port.postMessage(m));
    port.start();
    const link: Link = { post: (m) => port.postMessage(m), close: () => port.close() };
    this.#hello(link);
    return link;
  }

  /**
   * BroadcastChannel mode. Messages are `{to, from, body}`: `to` is "hub" or a tab id. The tab that
   * gets the lock runs the hub; a new leader announces itself and every tab says hello again.
   */
  #broadcastLink(): void {
    const me = `tab-${Math.random().toString(36).slice(2)}-${Date.now()}`;
    const channel = new BroadcastChannel(this.#name());
    let hub: Hub | undefined;
    const toHub = (m: TabMessage) => {
      if (hub) hub.receive(me, m);
      else channel.postMessage({ to: "hub", from: me, body: m });
    };
    const link: Link = { post: toHub, close: () => channel.close() };
    this.#link = link;
    channel.onmessage = (ev) => {
      const { to, from, body } = (ev.data ?? {}) as { to: string; from: string; body: unknown };
      if (to === "hub" && hub) {
        if (body && (body as TabMessage).t === "hello") {
          hub.detach(from);
          hub.attach(from, (m) => channel.postMessage({ to: from, from: "hub", body: m }));
        }
        hub.receive(from, body as TabMessage);
      } else if (to === me) {
        this.#fromHub(body as HubMessage, toHub);
      } else if (to === "*" && (body as { t?: string })?.t === "leader" && !hub) {
        // A new leader, a new connection: say hello again; books wait for fresh snapshots.
        this.#distrustAll();
        this.#hello(link);
      }
    };
    const becomeLeader = () => {
      if (this.#closed) return;
      this.#leader = true;
      hub = new Hub();
      hub.attach(me, (m) => queueMicrotask(() => this.#fromHub(m, toHub)));
      this.#distrustAll();
      this.#hello(link);
      channel.postMessage({ to: "*", from: me, body: { t: "leader" } });
    };
    const locks = (globalThis.navigator as Navigator | undefined)?.locks;
    if (locks) {
      void locks.request(`${this.#name()}:leader`, () => {
        becomeLeader();
        return new Promise<void>((resolve) => (this.#releaseLock = resolve));
      });
      // Until a leader answers, the hello waits in no queue: the leader's announcement asks again.
      this.#hello(link);
    } else {
      becomeLeader(); // no Web Locks: every tab holds its own connection
    }
    const closeLink = link.close;
    link.close = () => {
      // The connection goes with the leader; whoever gets the lock next opens a new one.
      hub?.close();
      hub = undefined;
      closeLink();
    };
  }

  #name(): string {
    return this.#options.name ?? "kalshi-relay-client";
  }

  // ---- from the hub ----

  #fromHub(m: HubMessage, reply: (m: TabMessage) => void): void {
    if (this.#closed || !m) return;
    switch (m.t) {
      case "ping":
        return reply({ t: "alive" });
      case "token?":
        return void this.#answerToken(m.rid, reply);
      case "msg":
        return this.#onMessage(m.hid, m.m as ServerMessage);
      case "event":
        return this.#onEvent(m.name, m.payload);
    }
  }

  async #answerToken(rid: number, reply: (m: TabMessage) => void): Promise<void> {
    const source = this.#options.token;
    try {
      const token = typeof source === "function" ? await source() : source;
      reply({ t: "token", rid, token });
    } catch (e) {
      reply({ t: "token", rid, error: String(e) });
    }
  }

  #onEvent(name: keyof RelayClientEvents, payload: unknown): void {
    switch (name) {
      case "state":
        this.#state = payload as RelayClientEvents["state"];
        break;
      case "subscriptions":
        this.#subs = payload as SubscriptionInfo[];
        break;
      case "book_stale":
        this.#books.distrust((payload as { tickers: string[] }).tickers);
        break;
      case "error":
        payload = revive(payload as Record<string, unknown>);
        break;
      case "max_reconnects": {
        const p = payload as { attempts: number; error: Record<string, unknown> };
        payload = { attempts: p.attempts, error: revive(p.error) };
        break;
      }
    }
    this.emit(name, payload as never);
  }

  #onMessage(hid: number, m: ServerMessage): void {
    const entry = this.#handles.get(hid);
    if (!entry) return;
    const ticker = m.msg?.market_ticker;
    if ((m.type === "orderbook_snapshot" || m.type === "orderbook_delta") && typeof ticker === "string") {
      // A tab with several handles on one market gets each delta once per handle: only the
      // oldest handle's copy is applied. Snapshots replace the book, so any copy will do.
      if (m.type === "orderbook_snapshot" || this.#bookOwner(ticker) === hid) {
        this.#books.apply(m.type, m.msg, ticker);
      }
    }
    try {
      entry.onMessage(m, entry.handle);
    } catch (e) {
      console.error("kalshi-relay-client: a subscription callback threw", e);
    }
  }

  /** The oldest handle of this tab whose order book subscription covers `ticker`. */
  #bookOwner(ticker: string): number | undefined {
    for (const [hid, { spec }] of this.#handles) {
      if (!spec.channels.includes("orderbook_delta")) continue;
      if (!spec.marketTickers || spec.marketTickers.includes(ticker)) return hid;
    }
    return undefined;
  }

  #distrustAll(): void {
    this.#books.distrust();
  }
}

function revive(p: Record<string, unknown>): Error {
  if (p.name === "PermanentCloseError" && typeof p.code === "number") {
    return new PermanentCloseError(p.code, String(p.reason ?? ""));
  }
  const e = new Error(String(p.message));
  e.name = String(p.name ?? "Error");
  return e;
}
