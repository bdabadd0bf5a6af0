import { describe, expect, it } from 'vitest';
import { KindCode, type EdgeSecondMessage, type SeriesColumns } from '../schema/codec.js';
import { SketchAccumulator, SortedSketchEncoder } from '../schema/sketch.js';
import { buildColumns, type PointInput } from '../schema/testdata.js';
import { hashName } from '../schema/names.js';
import { RackMerger, concatParts } from './merge.js';

const t0 = 1_790_000_000;

function msg(series: SeriesColumns, part = 0, parts = 1): EdgeSecondMessage {
  return { type: 'edgeSecond', server: 's', session: 1, seq: part, second: t0, part, parts, sentMs: 0, series };
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

function encodeValues(values: number[]): number[] {
  const sorted = Float64Array.from(values).sort();
  const enc = new SortedSketchEncoder();
  const out = new Uint8Array(enc.bin(sorted, null, 0, sorted.length));
  enc.encode(out, 0);
  return Array.from(out);
}

function rollupOf(c: SeriesColumns, name: string) {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  for (let i = 0; i < c.distKinds.length; i++) {
    if (c.distHashes[2 * i] !== h[0] || c.distHashes[2 * i + 1] !== h[1]) continue;
    const start = i === 0 ? 0 : c.sketchEnds[i - 1]!;
    return { kind: c.distKinds[i], count: c.distCounts[i], sum: c.distSums[i], min: c.distMins[i], max: c.distMaxes[i], sketch: Array.from(c.sketchBytes.subarray(start, c.sketchEnds[i])) };
  }
  return undefined;
}

describe('RackMerger rollups', () => {
  it('per distribution across servers: exact count/sum/min/max, and the sketch of the union', () => {
    const r = rng(5);
    const servers = 40;
    const lat: number[] = [];
    const input = Array.from({ length: servers }, (_, s) => {
      const vals = Array.from({ length: 1 + (s % 7) }, () => Math.round(Math.exp(r() * 6) * 100) / 100);
      lat.push(...vals);
      const points: PointInput[] = [{ name: 'cpu', kind: KindCode.Gauge, value: Math.round(r() * 1000) - 300 }];
      if (s % 3 === 0) points.push({ name: 'only.some', kind: KindCode.Counter as const, value: s });
      return { server: `web-${s}`, parts: [msg(buildColumns(points, [{ name: 'lat', values: vals }]))] };
    });
    const merged = new RackMerger(1000).merge(input);
    expect(merged.servers.map((s) => s.server)).toEqual(input.map((s) => s.server));
    expect(merged.summaries).toBe(40 * 2 + 14);
    const l = rollupOf(merged.rollup, 'lat')!;
    expect([l.kind, l.count, l.min, l.max]).toEqual([KindCode.Distribution, lat.length, Math.min(...lat), Math.max(...lat)]);
    expect(l.sum).toBeCloseTo(lat.reduce((a, b) => a + b, 0), 9);
    expect(l.sketch).toEqual(encodeValues(lat));
    // Gauges and counters get no rollup: the core stores none (DESIGN §9).
    expect(rollupOf(merged.rollup, 'cpu')).toBeUndefined();
    expect(rollupOf(merged.rollup, 'only.some')).toBeUndefined();
    expect([merged.rollup.distKinds.length, merged.rollup.pointKinds.length]).toEqual([1, 0]);
  });

  it('a second of gauges only has an empty rollup', () => {
    const cols = buildColumns([{ name: 'g', kind: KindCode.Gauge, value: 1 }], []);
    const m = new RackMerger(16).merge([{ server: 'a', parts: [msg(cols)] }, { server: 'b', parts: [msg(cols)] }]);
    expect([m.rollup.distKinds.length, m.rollup.sketchBytes.length, m.summaries]).toEqual([0, 0, 2]);
  });

  it('merges a distribution split across parts back into one summary', () => {
    const a = buildColumns([{ name: 'g', kind: KindCode.Gauge, value: 1 }], [{ name: 'd', values: [1, 2, 3] }]);
    const b = buildColumns([], [{ name: 'd', values: [-4, 50] }]);
    const c = concatParts([msg(a, 0, 2), msg(b, 1, 2)]);
    expect(Array.from(c.distCounts)).toEqual([5]);
    expect([c.distSums[0], c.distMins[0], c.distMaxes[0]]).toEqual([52, -4, 50]);
    expect(Array.from(c.sketchBytes)).toEqual(encodeValues([1, 2, 3, -4, 50]));
    const acc = new SketchAccumulator();
    expect(acc.addEncoded(c.sketchBytes, 0, c.sketchEnds[0]!)).toBe(5);
    expect(Array.from(c.pointValues)).toEqual([1]);
  });

  it("leaves out a rollup whose servers' counts add up past 2³² − 1, counted; the servers' summaries and the other rollups stay", () => {
    // Each server's summary is valid (3e9 < 2³²); merged, the sketch's bin could not be encoded
    // and the rack process stopped on it.
    const heavy = (value: number) => buildColumns([], [{ name: 'heavy', values: [value], weights: [3e9] }, { name: 'lat', values: [value, 2] }]);
    const merger = new RackMerger(16);
    const m = merger.merge([{ server: 'a', parts: [msg(heavy(5))] }, { server: 'b', parts: [msg(heavy(7))] }]);
    expect(merger.rollupsCountOverflow).toBe(1);
    expect(rollupOf(m.rollup, 'heavy')).toBeUndefined();
    expect(rollupOf(m.rollup, 'lat')).toMatchObject({ count: 4, min: 2, max: 7, sketch: encodeValues([5, 2, 7, 2]) });
    expect(m.servers.map((s) => rollupOf(s.blocks[0]!, 'heavy')?.count)).toEqual([3e9, 3e9]);
    // Alone, the same summary is kept whole.
    const one = merger.merge([{ server: 'a', parts: [msg(heavy(5))] }]);
    expect(rollupOf(one.rollup, 'heavy')?.count).toBe(3e9);
    expect(merger.rollupsCountOverflow).toBe(1);
  });

  it("regression: one server's summary split over parts whose counts add up past 2³² − 1 is left out, counted; its other series and the other servers go (before: encoding it threw, and the rack lost the whole second of every server)", () => {
    const part = (p: number, value: number) => buildColumns(p === 0 ? [{ name: 'cpu', kind: KindCode.Gauge, value: 3 }] : [], [{ name: 'heavy', values: [value], weights: [3e9] }, { name: `lat${p}`, values: [value] }]);
    const merger = new RackMerger(16);
    const honest = buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 9 }], [{ name: 'heavy', values: [1] }]);
    const m = merger.merge([
      { server: 'evil', parts: [msg(part(0, 5), 0, 2), msg(part(1, 5), 1, 2)] },
      { server: 'honest', parts: [msg(honest)] },
    ]);
    expect(merger.split.overflow).toBe(1);
    const [evil, ok] = m.servers;
    expect(evil!.blocks).toHaveLength(1);
    expect(rollupOf(evil!.blocks[0]!, 'heavy')).toBeUndefined();
    expect([rollupOf(evil!.blocks[0]!, 'lat0')?.count, rollupOf(evil!.blocks[0]!, 'lat1')?.count]).toEqual([1, 1]);
    expect(Array.from(evil!.blocks[0]!.pointValues)).toEqual([3]);
    expect(rollupOf(ok!.blocks[0]!, 'heavy')?.count).toBe(1);
    expect(rollupOf(m.rollup, 'heavy')).toMatchObject({ count: 1, min: 1, max: 1 });
    // In two bins (none past 32 bits), the count was cut to 32 bits without a word.
    const m1 = merger.merge([{ server: 'evil', parts: [msg(part(0, 5), 0, 2), msg(part(1, 7), 1, 2)] }]);
    expect(merger.split.overflow).toBe(2);
    expect(rollupOf(m1.servers[0]!.blocks[0]!, 'heavy')).toBeUndefined();
    // A sum that overflows merged is left out the same way.
    const big = buildColumns([], [{ name: 'big', values: [1.5e308] }]);
    const m2 = merger.merge([{ server: 'evil', parts: [msg(big, 0, 2), msg(big, 1, 2)] }]);
    expect(merger.split.overflow).toBe(3);
    expect(m2.servers[0]!.blocks[0]!.distKinds.length).toBe(0);
  });

  it('counts metrics beyond its bound instead of failing', () => {
    const merger = new RackMerger(2);
    const cols = buildColumns(
      [],
      ['a', 'b', 'c'].map((name) => ({ name, values: [1, 2] })),
    );
    const m = merger.merge([{ server: 's', parts: [msg(cols)] }]);
    expect(m.rollup.distKinds.length).toBe(2);
    expect(merger.rollupOverflow).toBe(1);
    expect(m.servers[0]!.blocks[0]!.distKinds.length).toBe(3);
  });
});
