// `from` / `to` parameters (DESIGN §5): Unix milliseconds, an ISO-8601 time, or relative to now
// (`-15m`, `-1h`, `now`).

export const timeLimits = {
  /** Earliest time: the epoch. Nothing is stored before it, and the wire's seconds are unsigned. */
  timeMsMin: 0,
  /** Latest time: seconds travel and are stored as 32-bit unsigned Unix seconds (schema/apm.fbs
   * `second: uint`, the core's row keys), so 2106-02-07T06:28:15Z. A later time used to reach
   * storage and fail there as a 500 "value out of range" (issue 16.12). */
  timeMsMax: 0xffff_ffff * 1000,
} as const;

/** A time parameter the API refuses (answered 400 with the message). */
export class TimeError extends Error {}

const unitMs = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/**
 * The time `value` names, in Unix ms within timeLimits; `fallbackMs` (clamped to them) when it
 * is absent. Throws TimeError naming the parameter, the value and the accepted forms or range.
 */
export function parseTime(value: string | undefined, fallbackMs: number, nowMs: number, name: string): number {
  if (value === undefined || value === '') return Math.min(Math.max(fallbackMs, timeLimits.timeMsMin), timeLimits.timeMsMax);
  const ms = timeOf(value.trim(), nowMs);
  if (ms === null) throw new TimeError(`${name}=${JSON.stringify(value)} is not Unix ms, an ISO-8601 time, now, or -<n>s|m|h|d`);
  if (!(ms >= timeLimits.timeMsMin && ms <= timeLimits.timeMsMax)) {
    const at = Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? ` (${new Date(ms).toISOString()})` : '';
    throw new TimeError(
      `${name}=${JSON.stringify(value)}${at} is outside ${new Date(timeLimits.timeMsMin).toISOString()}..${new Date(timeLimits.timeMsMax).toISOString()}, the times apm stores (32-bit Unix seconds); give a time in that range`,
    );
  }
  return ms;
}

/** The value's time in ms (possibly out of range or not finite), or null when it has none of the forms. */
function timeOf(v: string, nowMs: number): number | null {
  if (v === 'now') return nowMs;
  const rel = /^-(\d+)(s|m|h|d)$/.exec(v);
  if (rel !== null) return nowMs - Number(rel[1]) * unitMs[rel[2] as keyof typeof unitMs];
  if (/^\d+$/.test(v)) return Number(v);
  if (/^\d{4}-\d{2}-\d{2}/.test(v)) {
    const ms = Date.parse(v);
    if (Number.isFinite(ms)) return ms;
  }
  return null;
}
