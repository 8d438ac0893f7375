/**
 * Desired subscriptions, kept across reconnects. Callers hold handles; the server holds one sid
 * per channel per connection (a second `subscribe` on a held channel is merged or refused,
 * depending on the server), so the handles of one channel are merged into one server
 * subscription whose markets are the union of theirs. `nextCommand` compares what is wanted with
 * what the server has confirmed and names the one command that moves them closer; the client
 * sends it, feeds the reply back, and asks again.
 */

/** All markets (a channel subscribed without a market filter). */
export const ALL = "all" as const;
export type Markets = Set<string> | typeof ALL;

/** What one `subscribe()` call asked for. */
export interface SubscribeSpec {
  channels: string[];
  /** Market filter; leave out for every market (channels that allow it). */
  marketTickers?: string[];
}

/** A command the client should send for a channel, and what its success will mean. */
export type Step =
  | { kind: "subscribe"; markets: Markets }
  | { kind: "add"; markets: string[] }
  | { kind: "delete"; markets: string[] }
  | { kind: "unsubscribe" };

/** One channel: who wants it, and what the server has confirmed on this connection. */
export class ChannelState {
  readonly channel: string;
  /** Handle id to its market filter. */
  readonly wanted = new Map<number, Markets>();
  /** The server's sid, once `subscribed` arrived on this connection. */
  sid: number | undefined;
  /** Markets the server confirmed; undefined while not subscribed. */
  live: Markets | undefined;
  /** The command in flight (one at a time per channel): its id and step. */
  inflight: { id: number; step: Step } | undefined;
  /** The last seq seen on the sid (sequenced channels). */
  lastSeq: number | undefined;
  /** Set when the server refused a subscribe: not retried until the next connection. */
  refused = false;
  /** Set when the subscription must be dropped and made again (e.g. get_snapshot refused). */
  resubscribe = false;

  constructor(channel: string) {
    this.channel = channel;
  }

  /** The union of what the handles want; undefined when nobody does. */
  desired(): Markets | undefined {
    if (this.wanted.size === 0) return undefined;
    const union = new Set<string>();
    for (const m of this.wanted.values()) {
      if (m === ALL) return ALL;
      for (const t of m) union.add(t);
    }
    return union;
  }

  /** Forgets everything the server had: a new connection starts from nothing. */
  reset(): void {
    this.sid = undefined;
    this.live = undefined;
    this.inflight = undefined;
    this.lastSeq = undefined;
    this.refused = false;
    this.resubscribe = false;
  }

  /** The next command to send, or undefined when in step (or waiting on a reply). */
  nextStep(): Step | undefined {
    if (this.inflight || this.refused) return undefined;
    const want = this.desired();
    if (this.live === undefined) {
      if (want === undefined) return undefined;
      return { kind: "subscribe", markets: want };
    }
    if (want === undefined || this.resubscribe) return { kind: "unsubscribe" };
    if (this.live === ALL) return undefined; // a superset; messages are filtered per handle
    if (want === ALL) return { kind: "unsubscribe" }; // then subscribed again without a filter
    const add = [...want].filter((t) => !(this.live as Set<string>).has(t));
    if (add.length) return { kind: "add", markets: add };
    const del = [...this.live].filter((t) => !want.has(t));
    if (del.length) return { kind: "delete", markets: del };
    return undefined;
  }

  /** The command object for `step` with id `id`. */
  command(id: number, step: Step): Record<string, unknown> {
    switch (step.kind) {
      case "subscribe": {
        const params: Record<string, unknown> = { channels: [this.channel] };
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
            action: step.kind === "add" ? "add_markets" : "delete_markets",
          },
        };
      case "unsubscribe":
        return { id, cmd: "unsubscribe", params: { sids: [this.sid] } };
    }
  }

  /** The server accepted the in-flight command. */
  confirm(sid?: number): void {
    const step = this.inflight?.step;
    this.inflight = undefined;
    if (!step) return;
    switch (step.kind) {
      case "subscribe":
        this.sid = sid;
        this.live = step.markets === ALL ? ALL : new Set(step.markets);
        this.lastSeq = undefined;
        break;
      case "add":
        if (this.live instanceof Set) for (const t of step.markets) this.live.add(t);
        break;
      case "delete":
        if (this.live instanceof Set) for (const t of step.markets) this.live.delete(t);
        break;
      case "unsubscribe":
        this.sid = undefined;
        this.live = undefined;
        this.lastSeq = undefined;
        this.resubscribe = false;
        break;
    }
  }

  /** Whether a message about `ticker` (undefined: not market-specific) is wanted by handle `id`. */
  wants(id: number, ticker: string | undefined): boolean {
    const m = this.wanted.get(id);
    if (m === undefined) return false;
    return m === ALL || ticker === undefined || m.has(ticker);
  }
}
