import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { UsageError } from '../lib/args.js';
import { benchHelp, benchSections, main } from './bench.js';
import { latencyQuantiles } from './bench-rack.js';
import { boxShares, boxTicks } from './bench-proc.js';

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

describe('bench core: where the whole machine\'s CPU went', () => {
  it('splits the ticks between the core, the bench, other processes, disk waits and idle, in % of one core', () => {
    const cores = availableParallelism();
    // 1 s on every CPU: 100 ticks each; the core used 120, the bench 10, something else 20; 10 waiting for the disk; the rest idle.
    const total = 100 * cores;
    const before = { busy: 1000, idle: 5000, iowait: 300 };
    const after = { busy: 1000 + 150, idle: 5000 + total - 160, iowait: 300 + 10 };
    const pct = (t: number) => `${((100 * cores * t) / total).toFixed(0)}%`;
    expect(boxShares(before, after, 120, 10)).toBe(`box of ${cores * 100}%: core ${pct(120)}, this bench ${pct(10)}, other processes ${pct(20)}, waiting for the disk ${pct(10)}, idle ${pct(total - 160)}`);
    // Ticks of the core and the bench counted past the machine's busy ticks (sampled a tick apart): no negative share.
    expect(boxShares(before, after, 145, 10)).toContain('other processes 0%');
    expect(boxShares(before, before, 0, 0)).toBe('box: no ticks');
  });

  it('reads the machine\'s ticks from /proc/stat, growing', async () => {
    const a = boxTicks();
    await new Promise((r) => setTimeout(r, 50));
    const b = boxTicks();
    expect(a.busy + a.idle + a.iowait).toBeGreaterThan(0);
    expect(b.busy + b.idle + b.iowait).toBeGreaterThan(a.busy + a.idle + a.iowait);
  });
});
