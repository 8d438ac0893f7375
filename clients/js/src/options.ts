/** The client's options with their defaults filled in, validated once at construction. */

import { BackoffOptions, DEFAULT_BACKOFF } from "./backoff.js";
import type { RelayClientOptions } from "./types.js";

/** Defaults: the practices the relay follows on its side (30 s pings, 10 s pong deadline, ...). */
export const DEFAULTS = {
  maxReconnects: 10,
  stableMs: 10_000,
  pingIntervalMs: 30_000,
  pongTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  maxQueue: 1000,
  highWaterMark: 1 << 20,
} as const;

export type ResolvedOptions = Required<Omit<RelayClientOptions, "token" | "WebSocket" | "backoff">> & {
  backoff: BackoffOptions;
};

/** Fills in defaults; throws a `RangeError` naming every bad option. */
export function resolveOptions(options: RelayClientOptions): ResolvedOptions {
  const o: ResolvedOptions = {
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
    relayEvents: options.relayEvents ?? true,
  };
  const problems: string[] = [];
  const positive = [
    "stableMs",
    "pingIntervalMs",
    "pongTimeoutMs",
    "connectTimeoutMs",
    "maxQueue",
    "highWaterMark",
  ] as const;
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
