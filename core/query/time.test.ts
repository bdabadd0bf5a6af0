import { describe, expect, it } from 'vitest';
import { parseTime, TimeError } from './time.js';

const now = Date.UTC(2026, 11, 1, 12, 0, 0);

describe('from/to times (DESIGN §5)', () => {
  const f = (value: string | undefined, want: number) => expect(parseTime(value, 123, now, 'from')).toBe(want);
  const refused = (value: string, message: RegExp) => {
    try {
      parseTime(value, 0, now, 'to');
    } catch (e) {
      expect(e).toBeInstanceOf(TimeError);
      expect((e as TimeError).message).toMatch(message);
      return;
    }
    throw new Error(`no error for ${value}`);
  };

  it('reads Unix ms, ISO-8601, now and relative times', () => {
    // absent: the caller's default
    f(undefined, 123);
    f('', 123);
    // Unix ms, ISO, now, relative
    f('1790000000000', 1_790_000_000_000);
    f('2026-12-01T11:00:00Z', now - 3_600_000);
    f('now', now);
    f(' -15m ', now - 900_000);
    f('-2d', now - 2 * 86_400_000);
    // the range's ends
    f('0', 0);
    f(String(4_294_967_295_000), 4_294_967_295_000);
  });

  it('to=999999999999999 answers 500 (value out of range) instead of 400 (issue 16.12)', () => {
    refused('999999999999999', /to="999999999999999" \(\+033658-09-27T01:46:39\.999Z\) is outside 1970-01-01T00:00:00\.000Z\.\.2106-02-07T06:28:15\.000Z/);
    refused(String(4_294_967_295_000 + 1), /is outside/);
    refused('99999999999999999999999', /to="99999999999999999999999" is outside .*; give a time in that range/);
    refused('9999-12-31', /is outside/);
    refused('-99999999d', /is outside/);
    refused(`-${'9'.repeat(400)}s`, /is outside/);
    // not a time at all
    refused('yesterday', /is not Unix ms, an ISO-8601 time, now, or -<n>s\|m\|h\|d/);
    refused('2026-02-31Tnonsense', /is not Unix ms/);
  });

  it('a default outside the range is clamped to it (from = to − 1 h when to is near the epoch)', () => {
    expect(parseTime(undefined, -3_000_000, now, 'from')).toBe(0);
    expect(parseTime(undefined, 2 ** 53, now, 'to')).toBe(4_294_967_295_000);
  });
});
