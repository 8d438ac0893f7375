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
