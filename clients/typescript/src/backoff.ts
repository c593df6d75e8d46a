/**
 * The delay before reconnect attempt `attempt` (0-based): `base` doubling up to `max`, with
 * "equal jitter" (between half and all of it), so many clients cut off together do not
 * come back together.
 */
export function backoffDelay(attempt: number, base = 500, max = 30000, random = Math.random): number {
  const full = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return full / 2 + (full / 2) * random();
}
