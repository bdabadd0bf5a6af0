import { describe, expect, it } from 'vitest';
import { KindCode } from '../schema/codec.js';
import { Aggregator, type ClosedSecond } from './aggregator.js';
import { StatsdParser } from './statsd.js';

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

  it('regression: a distribution whose sum could overflow in some order is dropped as overflow (before: finite in arrival order, NaN in the packetizer\'s sorted one, and the rack refused the whole datagram)', () => {
    const agg = new Aggregator(opts);
    for (const v of [1.7976931348623157e308, 9e291, 9e291]) agg.observe('huge', KindCode.Distribution, v, t0);
    agg.observe('fine', KindCode.Distribution, 1e300, t0);
    const closed = summary(agg, agg.close(t0 + 1));
    expect(Object.keys(closed.dists)).toEqual(['fine']);
    expect(agg.drops.overflow).toBe(1);
  });

  it('regression: a refused series counts every value of a packed line (DogStatsD name:1:2:3|d), not one', () => {
    const agg = new Aggregator({ ...opts, seriesMax: 1 });
    const parser = new StatsdParser(4096);
    const feed = (text: string) => parser.parse(Buffer.from(text, 'latin1'), { second: t0, stamp: t0 }, agg);
    feed('g:1|g');
    feed('g:1:2:3|d\nbad name:4:5|g\nnew:6:7:8:9|c');
    expect(agg.drops).toMatchObject({ kind_conflict: 3, series_limit: 4 });
    expect(agg.drops.bad_name).toBe(2);
  });

  it('regression: a distribution first seen once the observations are full is not sent as a summary of count 0 (the rack refused its whole datagram)', () => {
    const agg = new Aggregator({ ...opts, observationsPerSecondMax: 2 });
    agg.observe('busy', KindCode.Distribution, 1, t0);
    agg.observe('busy', KindCode.Distribution, 2, t0);
    expect(agg.observe('g', KindCode.Gauge, 42, t0)).toBeNull();
    expect(agg.observe('late', KindCode.Distribution, 7, t0)).toBe('observations_full');
    const c = agg.close(t0 + 1);
    expect(summary(agg, c)).toEqual({ points: { g: 42 }, dists: { busy: [1, 2] } });
    for (let i = 0; i < c.distLen; i++) expect(c.distTo[i]! - c.distFrom[i]!).toBeGreaterThan(0);
  });

  it('a set counts distinct members per second, sent as a gauge; repeats and other seconds do not add', () => {
    const agg = new Aggregator(opts);
    for (const m of ['u1', 'u2', 'u1', 'u3', 'u2']) expect(agg.observeSet('users', m, t0)).toBeNull();
    agg.observeSet('other', 'u1', t0); // same member, other series: counted there
    const c = agg.close(t0 + 1);
    expect(summary(agg, c).points).toEqual({ users: 3, other: 1 });
    expect([...c.pointKinds.subarray(0, c.pointLen)]).toEqual([KindCode.Gauge, KindCode.Gauge]);
    agg.observeSet('users', 'u1', t0 + 1);
    expect(summary(agg, agg.close(t0 + 2)).points).toEqual({ users: 1 });
    // An idle set sends nothing (it is not a counter).
    expect(summary(agg, agg.close(t0 + 3)).points).toEqual({});
    expect(agg.observe('users', KindCode.Gauge, 1, t0 + 3)).toBe('kind_conflict');
  });

  it('a set is bounded per series and per second, with counted drops; the count is a lower bound', () => {
    const agg = new Aggregator({ ...opts, setValuesPerSeriesMax: 3, setValuesPerSecondMax: 5 });
    for (let i = 0; i < 5; i++) agg.observeSet('a', `m${i}`, t0); // 3 counted, 2 dropped
    expect(agg.observeSet('a', 'm0', t0)).toBeNull(); // a counted member repeats freely
    expect(agg.observeSet('b', 'x', t0)).toBeNull();
    expect(agg.observeSet('b', 'y', t0)).toBeNull();
    expect(agg.observeSet('c', 'z', t0)).toBe('set_values_full');
    expect(agg.drops).toMatchObject({ set_values_limit: 2, set_values_full: 1 });
    // c had no member counted: it sends nothing rather than a 0.
    expect(summary(agg, agg.close(t0 + 1)).points).toEqual({ a: 3, b: 2 });
    // The table is per second: the next second starts empty.
    for (let i = 0; i < 3; i++) agg.observeSet('c', `n${i}`, t0 + 1);
    expect(summary(agg, agg.close(t0 + 2)).points).toEqual({ c: 3 });
  });

  it('a set counts exactly many distinct members over many seconds (no stale entries between seconds)', () => {
    const agg = new Aggregator({ ...opts, seriesMax: 64, setValuesPerSeriesMax: 4096, setValuesPerSecondMax: 4096 });
    for (let s = 0; s < 20; s++) {
      const want: Record<string, number> = {};
      for (let k = 0; k < 8; k++) {
        const n = 1 + ((s * 7 + k * 13) % 400);
        for (let i = 0; i < 2 * n; i++) agg.observeSet(`set${k}`, `user-${(i * 7919) % n}-${s % 3}`, t0 + s);
        want[`set${k}`] = n;
      }
      expect(summary(agg, agg.close(t0 + s + 1)).points).toEqual(want);
    }
    expect(agg.drops.set_values_limit + agg.drops.set_values_full).toBe(0);
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
