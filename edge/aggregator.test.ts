import { describe, expect, it } from 'vitest';
import { KindCode } from '../schema/codec.js';
import { Aggregator, type ClosedSecond } from './aggregator.js';

const t0 = 1_790_000_000;
const opts = { seriesMax: 8, observationsPerSecondMax: 100, counterIdleSeconds: 300, seriesEvictSeconds: 600 };

/** The closed second as { name: value } for points and { name: sorted values } for distributions. */
function summary(agg: Aggregator, c: ClosedSecond) {
  const points: Record<string, number> = {};
  for (let i = 0; i < c.pointLen; i++) points[agg.names[c.pointSlots[i]!]!] = c.pointValues[i]!;
  const dists: Record<string, number[]> = {};
  for (let i = 0; i < c.distLen; i++) {
    const vals: number[] = [];
    for (let k = c.distFrom[i]!; k < c.distTo[i]!; k++) for (let w = 0; w < c.weights[k]!; w++) vals.push(c.values[k]!);
    dists[agg.names[c.distSlots[i]!]!] = vals;
  }
  return { points, dists };
}

describe('Aggregator semantics (DESIGN §3)', () => {
  it('gauge keeps the last value, counters sum scaled increments, distributions keep every value', () => {
    const agg = new Aggregator(opts);
    agg.observe('g', KindCode.Gauge, 5, t0);
    agg.observe('g', KindCode.Gauge, 7, t0);
    agg.observe('c', KindCode.Counter, 2, t0);
    agg.observe('c', KindCode.Counter, 3, t0, 4); // @0.25
    agg.observe('d', KindCode.Distribution, 9, t0);
    agg.observe('d', KindCode.Distribution, -1, t0);
    agg.observe('d', KindCode.Distribution, 4, t0, 2); // @0.5: counts twice
    expect(summary(agg, agg.close(t0 + 1))).toEqual({ points: { g: 7, c: 14 }, dists: { d: [-1, 4, 4, 9] } });
  });

  it('relative gauges move the last value across seconds; idle gauges emit nothing', () => {
    const agg = new Aggregator(opts);
    agg.observe('q', KindCode.Gauge, 10, t0);
    agg.close(t0 + 1);
    agg.observe('q', KindCode.Gauge, 3, t0 + 1, 1, true);
    agg.observe('q', KindCode.Gauge, -5, t0 + 1, 1, true);
    expect(summary(agg, agg.close(t0 + 2)).points).toEqual({ q: 8 });
    expect(summary(agg, agg.close(t0 + 3)).points).toEqual({});
  });

  it('a counter emits 0 for idle seconds for 5 minutes, then stops', () => {
    const agg = new Aggregator(opts);
    agg.observe('c', KindCode.Counter, 1, t0);
    agg.close(t0 + 1);
    expect(summary(agg, agg.close(t0 + 2)).points).toEqual({ c: 0 });
    agg.close(t0 + 300);
    expect(summary(agg, agg.close(t0 + 301)).points).toEqual({ c: 0 });
    expect(summary(agg, agg.close(t0 + 302)).points).toEqual({});
  });

  it('bounds series and observations with counted drops, refuses kind changes and bad names', () => {
    const agg = new Aggregator({ ...opts, seriesMax: 2, observationsPerSecondMax: 3 });
    expect(agg.observe('a', KindCode.Distribution, 1, t0)).toBeNull();
    expect(agg.observe('b', KindCode.Gauge, 1, t0)).toBeNull();
    expect(agg.observe('c', KindCode.Gauge, 1, t0)).toBe('series_limit');
    expect(agg.observe('b', KindCode.Counter, 1, t0)).toBe('kind_conflict');
    expect(agg.observe('a', KindCode.Distribution, 2, t0)).toBeNull();
    expect(agg.observe('a', KindCode.Distribution, 3, t0)).toBeNull();
    expect(agg.observe('a', KindCode.Distribution, 4, t0)).toBe('observations_full');
    expect(agg.observe('b', KindCode.Gauge, NaN, t0)).toBe('not_finite');
    expect(agg.observe('b', KindCode.Gauge, 1, t0 - 1)).toBe('late');
    expect(new Aggregator(opts).observe('bad name', KindCode.Gauge, 1, t0)).toBe('bad_name');
    expect(agg.drops).toMatchObject({ series_limit: 1, kind_conflict: 1, observations_full: 1, not_finite: 1, late: 1 });
    expect(summary(agg, agg.close(t0 + 1)).dists).toEqual({ a: [1, 2, 3] });
  });

  it('forgets series idle past the eviction age and reuses their slots', () => {
    const agg = new Aggregator({ ...opts, seriesMax: 1 });
    agg.observe('old', KindCode.Gauge, 1, t0);
    agg.close(t0 + 700);
    agg.close(t0 + 701);
    expect(agg.observe('new', KindCode.Gauge, 2, t0 + 701)).toBeNull();
    expect(agg.slotOf('old')).toBeUndefined();
    expect(summary(agg, agg.close(t0 + 702)).points).toEqual({ new: 2 });
  });
});
