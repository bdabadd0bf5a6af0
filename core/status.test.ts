// The fleet view's status table (core/status.ts): rack reports are bounded by count and by age.

import { describe, expect, it } from 'vitest';
import { CoreStatus, parseRackStatus, type RackStatus } from './status.js';

const report = parseRackStatus({ partsLost: 1 }) as RackStatus;

describe('regression: the racks\' status table never expired entries (issue 16.3)', () => {
  it('drops a report once its rack has sent none for the TTL, and makes room for new racks', () => {
    const s = new CoreStatus({ racksMax: 2, samplesMax: 11, reportTtlMs: 60_000 });
    expect(s.report('r1', report, 0)).toBe(true);
    expect(s.report('r2', report, 10_000)).toBe(true);
    // Full: a third rack is refused while both reports are fresh.
    expect(s.report('r3', report, 30_000)).toBe(false);
    expect(s.racksRefused).toBe(1);
    // r1 keeps reporting; r2 falls silent.
    expect(s.report('r1', report, 50_000)).toBe(true);
    expect(s.rackReports(69_000).map((r) => r.rack)).toEqual(['r2', 'r1']);
    expect(s.rackReports(70_001).map((r) => r.rack)).toEqual(['r1']);
    expect(s.racksExpired).toBe(1);
    // Room again: r3 is taken.
    expect(s.report('r3', report, 71_000)).toBe(true);
    expect(s.rackReports(71_000).map((r) => [r.rack, r.reportedMs])).toEqual([
      ['r1', 50_000],
      ['r3', 71_000],
    ]);
    expect(s.rackCount).toBe(2);
  });
});
