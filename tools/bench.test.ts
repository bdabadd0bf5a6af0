import { describe, expect, it } from 'vitest';
import { UsageError } from '../lib/args.js';
import { benchHelp, benchSections, main } from './bench.js';
import { latencyQuantiles } from './bench-rack.js';

describe('apm bench', () => {
  it('refuses an --only that names no section (it ran nothing and printed nothing)', async () => {
    await expect(main(['--only', 'nope'])).rejects.toThrow(UsageError);
    await expect(main(['--only', 'nope'])).rejects.toThrow(/not a section; one of: edge, auth/);
  });

  it('lists every section in its help', () => {
    for (const s of benchSections) expect(benchHelp).toContain(s);
  });
});

describe('bench rack: acknowledgement latency', () => {
  const text = (counts: number[]) => [0.5, 1, 1.5, 2, Infinity].map((le, i) => `apm_rack_forward_latency_seconds_bucket{le="${le === Infinity ? '+Inf' : le}"} ${counts[i]}`).join('\n');
  it('regression: counts only what the window added, interpolated within its bucket (before: the whole run, warm-up included, as a bucket upper bound: every run printed 1.5 s)', () => {
    // Warm-up: 10 slow acknowledgements (1.5–2 s); the window: 100 more, all between 1 and 1.5 s.
    const before = text([0, 0, 0, 10, 10]);
    const after = text([0, 0, 100, 110, 110]);
    const q = latencyQuantiles(before, after);
    expect(q.p50).toBeCloseTo(1.25, 5);
    expect(q.p99).toBeCloseTo(1.495, 5);
    expect(latencyQuantiles(after, after)).toEqual({ p50: NaN, p99: NaN });
  });
});
