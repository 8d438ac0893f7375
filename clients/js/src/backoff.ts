/** Reconnect delays: exponential, capped, multiplied by a random factor so a fleet spreads out. */
export interface BackoffOptions {
  /** First delay in ms (default 1000). */
  baseMs: number;
  /** Growth per attempt (default 2). */
  factor: number;
  /** Largest delay before jitter, in ms (default 30000). */
  capMs: number;
  /** The delay is multiplied by a random factor in [1 - jitter, 1 + jitter) (default 0.5). */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 1000, factor: 2, capMs: 30_000, jitter: 0.5 };

/** The delay before reconnect attempt `attempt` (1-based): base * factor^(attempt-1), capped, jittered. */
export function backoffDelay(
  attempt: number,
  o: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const exp = Math.min(o.capMs, o.baseMs * Math.pow(o.factor, Math.max(0, attempt - 1)));
  return Math.floor(exp * (1 - o.jitter + 2 * o.jitter * random()));
}
