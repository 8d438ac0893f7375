/** The client's public types: options, events, messages, handles, and its one error class. */

import type { BackoffOptions } from "./backoff.js";
import { describeClose } from "./close-codes.js";

/** What the client needs of a WebSocket: the browser's, Node's global one, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  /** `ws` only: protocol ping, hard close, and its event API (for pongs). */
  ping?: () => void;
  terminate?: () => void;
  on?: (event: string, fn: (...args: unknown[]) => void) => void;
}

/** A WebSocket constructor; `ws` accepts options with headers as its second argument. */
export type WebSocketConstructor = new (url: string, protocolsOrOptions?: unknown) => WebSocketLike;

/** A token, or a function (possibly async) called before each connect for a fresh one. */
export type TokenSource = string | (() => string | Promise<string>);

export interface RelayClientOptions {
  /** `ws://host:port/trade-api/ws/v2` (or the exchange's URL). */
  url: string;
  /** Client token for the relay. */
  token?: TokenSource;
  /**
   * How the token is presented: `header` (`Authorization: Bearer`, Node only), `message` (a first
   * `{"cmd":"auth"}`, works everywhere) or `query` (`?token=`, ends up in access logs; opt-in).
   * Default: `header` when a `WebSocket` constructor is passed in (Node's `ws`), else `message`.
   */
  authMode?: "header" | "message" | "query";
  /** WebSocket constructor; default the global `WebSocket`. In Node 20 pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Consecutive failed reconnect attempts before giving up with `max_reconnects` (default 10). */
  maxReconnects?: number;
  /** Reconnect delays (default 1 s, x2, capped at 30 s, jitter 0.5 = a factor in [0.5, 1.5)). */
  backoff?: Partial<BackoffOptions>;
  /** A connection open this long resets the attempt count (default 10000 ms). */
  stableMs?: number;
  /** Application ping interval (default 30000 ms). */
  pingIntervalMs?: number;
  /** No pong within this after a ping means the connection is dead (default 10000 ms). */
  pongTimeoutMs?: number;
  /** A connection not open within this counts as failed (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Commands held while not connected or while the socket drains, at most (default 1000). */
  maxQueue?: number;
  /** Sending pauses while the socket's `bufferedAmount` is above this (default 1 MiB). */
  highWaterMark?: number;
  /** Ask the relay for `relay_status` / `relay_lagged` events (`?relay_events=1`, default true). */
  relayEvents?: boolean;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closing" | "closed";

/** The relay's `relay_status` body: `upstream` is `subscribed`, `disconnected`, `gave_up`, ... */
export interface RelayStatus {
  upstream: string;
  since_ms?: number;
  reason?: string;
  [key: string]: unknown;
}

/** A message from the server, as parsed JSON. */
export interface ServerMessage {
  type: string;
  id?: number;
  sid?: number;
  seq?: number;
  msg?: any;
  [key: string]: unknown;
}

export interface RelayClientEvents {
  state: { state: ConnectionState; readyState: number; attempt: number };
  open: { url: string };
  /** A connection (or an attempt) ended: why, and whether and when the client tries again. */
  close: { code: number; reason: string; permanent: boolean; reconnectInMs?: number; error: string };
  status: RelayStatus;
  lagged: Record<string, unknown>;
  gap: { channel: string; sid: number; expected: number; got: number };
  book_stale: { tickers: string[] };
  max_reconnects: { attempts: number; error: Error };
  error: Error;
  message: ServerMessage;
  /** What the server confirmed changed (`subscriptions()` after it). */
  subscriptions: SubscriptionInfo[];
}

/** One channel's server subscription on the current connection. */
export interface SubscriptionInfo {
  channel: string;
  sid: number | undefined;
  markets: string[] | "all" | undefined;
}

/** What `subscribe` returns: stable for the client's life while sids change underneath. */
export interface SubscriptionHandle {
  readonly id: number;
  readonly channels: readonly string[];
  readonly marketTickers: readonly string[] | undefined;
  /** The current server sid per channel (undefined while not subscribed). */
  sids(): Record<string, number | undefined>;
  unsubscribe(): void;
}

export type MessageCallback = (message: ServerMessage, handle: SubscriptionHandle) => void;

/** A close the client will not retry unchanged (bad token, oversized message, ...). */
export class PermanentCloseError extends Error {
  readonly code: number;
  readonly reason: string;
  constructor(code: number, reason: string) {
    super(`connection closed permanently: ${describeClose(code, reason)}`);
    this.name = "PermanentCloseError";
    this.code = code;
    this.reason = reason;
  }
}
