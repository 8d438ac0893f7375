/**
 * The hub: one `RelayClient` serving several tabs ("peers"). It runs in the SharedWorker, or in
 * the tab elected leader when there is no SharedWorker. Each tab's subscriptions become handles
 * on the one client (which merges them into one server subscription per channel), and each
 * message goes to the tabs whose handles asked for it. Tabs talk to it with the small message
 * protocol below, over a MessagePort or a BroadcastChannel.
 */

import { RelayClient, RelayClientEvents, RelayClientOptions, SubscriptionHandle } from "./client.js";
import { SubscribeSpec } from "./subscriptions.js";

/** Options a tab can send (no functions or constructors cross a port). */
export type PortableOptions = Omit<RelayClientOptions, "token" | "WebSocket"> & { token?: string };

/** Tab to hub. */
export type TabMessage =
  | { t: "hello"; options: PortableOptions; tokenFn: boolean }
  | { t: "sub"; hid: number; spec: SubscribeSpec }
  | { t: "unsub"; hid: number }
  | { t: "send"; command: Record<string, unknown> }
  | { t: "token"; rid: number; token?: string; error?: string }
  | { t: "alive" }
  | { t: "bye" };

/** Hub to tab. */
export type HubMessage =
  | { t: "msg"; hid: number; m: unknown }
  | { t: "event"; name: keyof RelayClientEvents; payload: unknown }
  | { t: "token?"; rid: number }
  | { t: "ping" };

/** Events the hub forwards to every tab. */
const FORWARDED: (keyof RelayClientEvents)[] = [
  "state",
  "open",
  "close",
  "status",
  "lagged",
  "gap",
  "book_stale",
  "max_reconnects",
  "error",
  "subscriptions",
];

/** Peers are pinged this often; one silent for two rounds is gone (a closed tab never says so). */
export const PEER_HEARTBEAT_MS = 5000;
/** How long a tab's token function may take. */
const TOKEN_TIMEOUT_MS = 10_000;

interface Peer {
  post: (m: HubMessage) => void;
  tokenFn: boolean;
  specs: Map<number, SubscribeSpec>;
  handles: Map<number, SubscriptionHandle>;
  missed: number;
}

export class Hub {
  #client: RelayClient | undefined;
  #options: PortableOptions | undefined;
  readonly #peers = new Map<string, Peer>();
  #nextRid = 1;
  readonly #tokenWaits = new Map<number, (token: string | undefined) => void>();
  #heartbeat: ReturnType<typeof setInterval> | undefined;

  /** Number of tabs served. */
  get peers(): number {
    return this.#peers.size;
  }

  attach(id: string, post: (m: HubMessage) => void): void {
    this.#peers.set(id, { post, tokenFn: false, specs: new Map(), handles: new Map(), missed: 0 });
    this.#heartbeat ??= setInterval(() => this.#beat(), PEER_HEARTBEAT_MS);
  }

  /** A tab left (said bye, or stopped answering): its subscriptions go; the last one closes the client. */
  detach(id: string): void {
    const peer = this.#peers.get(id);
    if (!peer) return;
    this.#peers.delete(id);
    for (const h of peer.handles.values()) h.unsubscribe();
    if (this.#peers.size === 0) {
      clearInterval(this.#heartbeat);
      this.#heartbeat = undefined;
      void this.#client?.close();
      this.#client = undefined;
    }
  }

  /** Ends the hub: every peer detached, the connection closed. */
  close(): void {
    for (const id of [...this.#peers.keys()]) this.detach(id);
  }

  receive(id: string, msg: TabMessage): void {
    const peer = this.#peers.get(id);
    if (!peer || !msg || typeof msg !== "object") return;
    peer.missed = 0;
    switch (msg.t) {
      case "hello":
        peer.tokenFn = msg.tokenFn;
        this.#options ??= msg.options;
        this.#ensureClient();
        peer.post({ t: "event", name: "state", payload: this.#stateOf() });
        peer.post({ t: "event", name: "subscriptions", payload: this.#client!.subscriptions() });
        return;
      case "sub": {
        peer.specs.set(msg.hid, msg.spec);
        const client = this.#ensureClient();
        if (client) peer.handles.set(msg.hid, this.#subscribe(client, peer, msg.hid, msg.spec));
        return;
      }
      case "unsub":
        peer.specs.delete(msg.hid);
        peer.handles.get(msg.hid)?.unsubscribe();
        peer.handles.delete(msg.hid);
        return;
      case "send":
        try {
          this.#ensureClient()?.send(msg.command);
        } catch (e) {
          peer.post({ t: "event", name: "error", payload: portableError(e) });
        }
        return;
      case "token":
        this.#tokenWaits.get(msg.rid)?.(msg.token);
        return;
      case "alive":
        return;
      case "bye":
        return this.detach(id);
    }
  }

  /** The client, made on the first hello and again (with every tab's subscriptions) after it gave up. */
  #ensureClient(): RelayClient | undefined {
    if (this.#client && this.#client.state !== "closed") return this.#client;
    if (!this.#options) return undefined;
    const options = this.#options;
    const client = new RelayClient({
      ...options,
      token: options.token !== undefined || this.#anyTokenFn() ? () => this.#token() : undefined,
    });
    this.#client = client;
    for (const name of FORWARDED) {
      client.on(name, (payload) => this.#broadcast({ t: "event", name, payload: portable(name, payload) }));
    }
    for (const peer of this.#peers.values()) {
      peer.handles.clear();
      for (const [hid, spec] of peer.specs) peer.handles.set(hid, this.#subscribe(client, peer, hid, spec));
    }
    return client;
  }

  #subscribe(client: RelayClient, peer: Peer, hid: number, spec: SubscribeSpec): SubscriptionHandle {
    return client.subscribe(spec, (m) => peer.post({ t: "msg", hid, m }));
  }

  #anyTokenFn(): boolean {
    return [...this.#peers.values()].some((p) => p.tokenFn);
  }

  /** A fresh token from a tab that has a token function, else the static one. */
  async #token(): Promise<string> {
    const fallback = this.#options?.token;
    const peer = [...this.#peers.values()].find((p) => p.tokenFn);
    if (!peer) {
      if (fallback === undefined) throw new Error("no tab can provide a token");
      return fallback;
    }
    const rid = this.#nextRid++;
    const token = await new Promise<string | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), TOKEN_TIMEOUT_MS);
      this.#tokenWaits.set(rid, (t) => {
        clearTimeout(timer);
        resolve(t);
      });
      peer.post({ t: "token?", rid });
    });
    this.#tokenWaits.delete(rid);
    if (token === undefined) {
      if (fallback === undefined) throw new Error("the tab's token function gave no token");
      return fallback;
    }
    return token;
  }

  #stateOf() {
    const c = this.#client;
    return { state: c?.state ?? "connecting", readyState: c?.readyState ?? 0, attempt: c?.attempts ?? 0 };
  }

  #broadcast(m: HubMessage): void {
    for (const p of this.#peers.values()) p.post(m);
  }

  #beat(): void {
    for (const [id, p] of [...this.#peers]) {
      if (++p.missed > 2) this.detach(id);
      else p.post({ t: "ping" });
    }
  }
}

/** Errors lose their class across a port: send name, message and close details. */
export function portableError(e: unknown): Record<string, unknown> {
  const err = e instanceof Error ? e : new Error(String(e));
  const out: Record<string, unknown> = { name: err.name, message: err.message };
  for (const k of ["code", "reason"]) {
    const v = (err as unknown as Record<string, unknown>)[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

function portable(name: keyof RelayClientEvents, payload: unknown): unknown {
  if (name === "error") return portableError(payload);
  if (name === "max_reconnects") {
    const p = payload as RelayClientEvents["max_reconnects"];
    return { attempts: p.attempts, error: portableError(p.error) };
  }
  return payload;
}
