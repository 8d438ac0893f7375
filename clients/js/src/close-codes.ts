/**
 * What a close code means for the client: the relay closes with a reconnectable code (1000, 1001,
 * 1011-1014) whenever reconnecting helps, and with a permanent one when the same connection would
 * fail the same way again.
 */

/** Closes after which reconnecting unchanged cannot succeed. */
const PERMANENT = new Map<number, string>([
  [1002, "protocol error"],
  [1007, "invalid UTF-8"],
  [1008, "policy violation"],
  [1009, "message too big"],
  [4001, "unauthorized"],
]);

/** True when the close code says: do not reconnect unchanged. */
export function isPermanentClose(code: number): boolean {
  return PERMANENT.has(code);
}

/** A short human description of a close code, for errors and logs. */
export function describeClose(code: number, reason: string): string {
  const known = PERMANENT.get(code);
  const text = reason || known || (code === 1006 ? "connection lost" : "closed");
  return `${code} ${text}`;
}

/**
 * What to do after a connection ended: `retry`, or `refused` (the token was refused: retry only
 * with a different one), or `permanent` with the close code to report. A refused handshake never
 * reaches a close code: Node's `ws` reports the HTTP status in its error (401 is a refused token,
 * 403 a refused Origin, which is treated as 1008).
 */
export function classifyClose(
  code: number,
  errorMessage: string | undefined,
): { kind: "retry" } | { kind: "refused" } | { kind: "permanent"; code: number } {
  const http = /Unexpected server response: (\d+)/.exec(errorMessage ?? "")?.[1];
  if (code === 4001 || http === "401") return { kind: "refused" };
  if (http === "403") return { kind: "permanent", code: 1008 };
  if (isPermanentClose(code)) return { kind: "permanent", code };
  return { kind: "retry" };
}
