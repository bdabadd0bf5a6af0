import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countQl, metricsQl, VictoriaMetrics, vmBinary, vmValues, type VmFleet } from './bench-peer-vm.js';
import { ShapeColumns } from './shapes.js';

// The query bench's peer (tools/bench-peer-vm.ts) against the real VictoriaMetrics that .ci/run
// installs (Debian's victoria-metrics): the samples it imports are the bench's, and each MetricsQL
// cell gives, per 5 s window, what apm's window [t, t + 5) holds.
const bin = vmBinary();
const fleet: VmFleet = { racks: 2, servers: 3, metrics: 2, seedOf: (r) => 300 + r, rackName: (r) => `pv-r${r}` };
const t = 1_790_000_040;
const seconds = 60;

/** The bench's samples of metric 0, per window start second: every server's values in it. */
function expected(): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (let r = 0; r < fleet.racks; r++) {
    const shapes = new ShapeColumns(fleet.servers * fleet.metrics, fleet.seedOf(r), fleet.metrics);
    for (let k = 0; k < seconds; k++) {
      shapes.step(t + k);
      const w = t + k - (k % 5);
      const list = out.get(w) ?? [];
      for (let s = 0; s < fleet.servers; s++) list.push(shapes.values[s * fleet.metrics]!);
      out.set(w, list);
    }
  }
  return out;
}

describe('bench query: which VictoriaMetrics', () => {
  it('refuses an APM_BENCH_VM that does not run (asked for, it is never skipped as not installed)', () => {
    expect(() => vmBinary({ APM_BENCH_VM: '/nonexistent/victoria-metrics' })).toThrow(/INVALID RUN: APM_BENCH_VM=\/nonexistent\/victoria-metrics does not run/);
    expect(() => vmBinary({ APM_BENCH_VM: 'false' })).toThrow(/exit status 1/);
  });
});

describe.skipIf(bin === null && process.env.CI === undefined)('bench query: VictoriaMetrics side by side', () => {
  let vm: VictoriaMetrics;
  beforeAll(async () => {
    if (bin === null) throw new Error('victoria-metrics is not installed: .ci/run installs Debian\'s victoria-metrics');
    vm = await VictoriaMetrics.start(bin);
  }, 40_000);
  afterAll(async () => {
    await vm?.stop();
  });

  it('imports the bench\'s samples and answers each window as apm\'s [t, t + 5 s) (min, max, avg, count; percentiles per phi)', async () => {
    expect(await vm.importFleet(fleet, t, seconds)).toBe(fleet.racks * fleet.servers * fleet.metrics * seconds);
    const selector = '{__name__="bench.metric_0"}';
    const [start, end] = [t + 4, t + 4 + 11 * 5];
    const answer = await vm.query(metricsQl(['min', 'max', 'avg', 'p50', 'p99'], selector), start, end, 5);
    const counts = vmValues(await vm.query(countQl(selector), start, end, 5), '');
    const want = expected();
    expect([...want.keys()]).toHaveLength(12);
    for (const [w, vals] of want) {
      expect(counts.get(w)).toBe(fleet.racks * fleet.servers * 5);
      expect(vmValues(answer, 'min').get(w)).toBe(Math.min(...vals));
      expect(vmValues(answer, 'max').get(w)).toBe(Math.max(...vals));
      expect(vmValues(answer, 'avg').get(w)).toBeCloseTo(vals.reduce((a, b) => a + b, 0) / vals.length, 9);
      // Its histogram buckets: within their width of the exact rank's value.
      const sorted = [...vals].sort((a, b) => a - b);
      const p50 = vmValues(answer, '0.5').get(w)!;
      expect(Math.abs(p50 - sorted[Math.floor(0.5 * (sorted.length - 1))]!) / Math.max(1, Math.abs(p50))).toBeLessThan(0.25);
      expect(vmValues(answer, '0.99').get(w)).toBeDefined();
    }
    // A selector by server names, as the 40-spread cells ask.
    const two = `{__name__="bench.metric_0", server=~"pv-r0-1|pv-r1-2"}`;
    const twoCounts = vmValues(await vm.query(countQl(two), start, end, 5), '');
    for (const w of want.keys()) expect(twoCounts.get(w)).toBe(10);
  }, 60_000);

  it('fails loudly, naming the query, when VictoriaMetrics refuses one', async () => {
    await expect(vm.query('min(', t, t + 60, 5)).rejects.toThrow(/INVALID RUN: victoria-metrics answered 4\d\d/);
  });
});
