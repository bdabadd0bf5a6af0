// `from` / `to` parameters (DESIGN §5): Unix milliseconds, an ISO-8601 time, or relative to now
// (`-15m`, `-1h`, `now`).

export class TimeError extends Error {}

export function parseTime(value: string | undefined, fallbackMs: number, nowMs: number, name: string): number {
  if (value === undefined || value === '') return fallbackMs;
  const v = value.trim();
  if (v === 'now') return nowMs;
  const rel = /^-(\d+)(s|m|h|d)$/.exec(v);
  if (rel !== null) return nowMs - Number(rel[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[rel[2] as 's']!;
  if (/^\d{1,15}$/.test(v)) return Number(v);
  if (/^\d{4}-\d{2}-\d{2}/.test(v)) {
    const ms = Date.parse(v);
    if (Number.isFinite(ms)) return ms;
  }
  throw new TimeError(`${name}=${JSON.stringify(value)} is not Unix ms, an ISO-8601 time, now, or -<n>s|m|h|d`);
}
