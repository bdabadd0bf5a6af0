// The dashboard's window columns, decimation and axis choice (columns.js, issue 15), in node.

import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { axisOf, historyRows, plotColumns, WindowColumns, type ApiWindow } from './columns.js';

const win = (s: number, v: number, revision = 0, extra: Record<string, number> = {}): ApiWindow => ({ startMs: s * 1000, endMs: s * 1000 + 1000, servers: 3, count: 10, values: { max: v, ...extra }, revision });
const rows = (c: WindowColumns) => Array.from({ length: c.n }, (_, i) => c.row(i));

describe('WindowColumns', () => {
  it('holds the same windows as a map by start, whatever order pages and live windows come in (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.array(fc.record({ s: fc.integer({ min: 0, max: 300 }), v: fc.integer(), rev: fc.integer({ min: 0, max: 3 }) }), { maxLength: 40 }), { maxLength: 8 }), (batches) => {
        const c = new WindowColumns();
        const want = new Map<number, ApiWindow>();
        for (const [b, batch] of batches.entries()) {
          // Unique starts within a page, like the API's.
          const page = [...new Map(batch.map((x) => [x.s, win(x.s, x.v, x.rev)])).values()];
          if (b % 2 === 0) c.upsertMany(page);
          else for (const w of page) c.upsert(w);
          for (const w of page) {
            const old = want.get(w.startMs);
            if (old === undefined || !(old.revision > w.revision)) want.set(w.startMs, w);
          }
        }
        const got = rows(c);
        expect(got.map((r) => r.startMs)).toEqual([...want.keys()].sort((a, b) => a - b));
        for (const r of got) expect(r.values).toEqual(want.get(r.startMs)!.values);
      }),
    );
  });

  it('keeps stored windows over ad-hoc ones, drops what a live range left, finds the window at a time', () => {
    const c = new WindowColumns();
    c.upsertMany([win(10, 1), win(11, 2)]);
    // An ad-hoc fill never replaces a stored window.
    c.upsertMany([win(9, 9), win(10, 99)], { adhoc: true, keepExisting: true });
    expect(rows(c).map((r) => [r.startMs / 1000, r.values.max, r.adhoc])).toEqual([
      [9, 9, true],
      [10, 1, false],
      [11, 2, false],
    ]);
    // A new function key later: earlier rows lack it (NaN → absent).
    c.upsert(win(12, 3, 0, { 'percentile(99)': 7 }));
    expect(c.keys).toEqual(['max', 'percentile(99)']);
    expect(c.row(1).values).toEqual({ max: 1 });
    expect(c.rowAt(10_500, 0)).toBe(1);
    expect(c.rowAt(20_000, 1000)).toBe(-1);
    expect(c.rowAt(13_400, 2000)).toBe(3);
    c.filter((i) => !c.isAdhoc(i));
    expect(rows(c).map((r) => r.startMs / 1000)).toEqual([10, 11, 12]);
    // dropBefore is amortized: a few rows stay until enough of them piled up.
    c.dropBefore(12_000);
    expect(c.n).toBe(3);
    const big = new WindowColumns();
    big.upsertMany(Array.from({ length: 1000 }, (_, i) => win(i, i)));
    big.dropBefore(100_000);
    expect(big.n).toBe(900);
    expect(big.row(0).startMs).toBe(100_000);
  });
});

describe('plotColumns', () => {
  it('draws every window when they fit, with a break at a gap', () => {
    const c = new WindowColumns();
    c.upsertMany([win(0, 1), win(1, 2), win(5, 3)]);
    const p = plotColumns(c, { lo: 0, hi: c.n, windowMs: 1000, fromMs: 0, toMs: 10_000, pixels: 800 });
    expect(p.data).toEqual([[0, 1, 2.001, 5], [1, 2, null, 3]]);
    expect(p.rowOf).toEqual([0, 1, -1, 2]);
  });

  it('decimates to min and max per bucket, in the order they occurred, keeping every extreme (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: -1e9, max: 1e9, noNaN: true }), { minLength: 50, maxLength: 2000 }), fc.integer({ min: 5, max: 40 }), (vs, pixels) => {
        const c = new WindowColumns();
        c.upsertMany(vs.map((v, i) => win(i, v)));
        const p = plotColumns(c, { lo: 0, hi: c.n, windowMs: 1000, fromMs: 0, toMs: vs.length * 1000, pixels });
        if (vs.length <= 2 * pixels) return;
        const [xs, ys] = p.data;
        expect(p.rowOf).toBeNull();
        expect(xs.length).toBeLessThanOrEqual(2 * (pixels + 2));
        for (let i = 1; i < xs.length; i++) expect(xs[i]!).toBeGreaterThan(xs[i - 1]!);
        const drawn = ys!.filter((y): y is number => y !== null);
        // + 0: a chart draws −0 and +0 alike; Math.min prefers −0, the decimation the first of equal values.
        expect(Math.max(...drawn) + 0).toBe(Math.max(...vs) + 0);
        expect(Math.min(...drawn) + 0).toBe(Math.min(...vs) + 0);
        // Each bucket's pair is its minimum and maximum.
        for (let i = 0; i < xs.length; i += 2) {
          const b0 = Math.floor((xs[i]! * 1000) / p.bucketMs) * p.bucketMs;
          const inBucket = vs.filter((_, s) => s * 1000 >= b0 && s * 1000 < b0 + p.bucketMs);
          expect([Math.min(ys![i]!, ys![i + 1]!) + 0, Math.max(ys![i]!, ys![i + 1]!) + 0]).toEqual([Math.min(...inBucket) + 0, Math.max(...inBucket) + 0]);
        }
      }),
    );
  });

  it('breaks a decimated line where a gap spans a bucket', () => {
    const c = new WindowColumns();
    c.upsertMany([...Array.from({ length: 500 }, (_, i) => win(i, 1)), ...Array.from({ length: 500 }, (_, i) => win(1500 + i, 2))]);
    const p = plotColumns(c, { lo: 0, hi: c.n, windowMs: 1000, fromMs: 0, toMs: 2_000_000, pixels: 100 });
    const [xs, ys] = p.data;
    expect(ys!.filter((y) => y === null)).toHaveLength(1);
    for (let i = 1; i < xs.length; i++) expect(xs[i]!).toBeGreaterThan(xs[i - 1]!);
  });
});

describe('axisOf', () => {
  const f = (keys: string[], mags: Record<string, number>, want: Record<string, string>) => expect(Object.fromEntries(axisOf(keys, (k) => mags[k] ?? NaN))).toEqual(want);
  it('puts values and totals on their own axes, at most two', () => {
    // One kind: one axis.
    f(['min', 'max', 'avg', 'percentile(99)'], {}, { min: 'left', max: 'left', avg: 'left', 'percentile(99)': 'left' });
    // The case: sum 2.8 M beside avg 596.
    f(['sum', 'avg'], { sum: 2.8e6, avg: 596 }, { sum: 'right', avg: 'left' });
    // Count and sum without values: sum left, count right.
    f(['count', 'sum'], { count: 4700, sum: 2.8e6 }, { count: 'right', sum: 'left' });
    // All three kinds: count joins the nearer magnitude (4,700 is nearer 1,800 than 2.8 M)...
    f(['count', 'sum', 'avg', 'max'], { count: 4700, sum: 2.8e6, avg: 596, max: 1800 }, { count: 'left', sum: 'right', avg: 'left', max: 'left' });
    // ...or the sum's (values around 0.5).
    f(['count', 'sum', 'avg'], { count: 4700, sum: 2350, avg: 0.5 }, { count: 'right', sum: 'right', avg: 'left' });
  });
});

describe('regression: the page\'s memory for a range', () => {
  it('reserves at most the pages a load fetches, whatever the range (before: from=0 with 5 s windows reserved 359 M rows, 2.9 GB a function)', () => {
    expect(historyRows(0, 1_800_000_000_000, 5000, 24, 3600)).toBe(24 * 3600 + 3600 + 64);
    expect(historyRows(0, 3_600_000, 5000, 24, 3600)).toBe(720 + 3600 + 64);
    const c = new WindowColumns();
    c.reserve(historyRows(0, 1_800_000_000_000, 5000, 24, 3600));
    c.upsert({ startMs: 0, servers: 1, count: 1, values: { max: 1, min: 0, avg: 0.5, 'percentile(99)': 1 }, revision: 0 });
    expect(c.cap * 8 * c.values.length).toBeLessThan(4 * 1024 * 1024);
  });

  it('live windows drop what slid out of the range as they come, not only when the chart is drawn (a hidden tab draws nothing: before, 3 days of 1 s windows piled up)', () => {
    const c = new WindowColumns();
    const rangeMs = 900_000;
    for (let s = 0; s < 3 * 86_400; s++) c.upsertLive({ startMs: s * 1000, servers: 1, count: 1, values: { max: s }, revision: 0 }, s * 1000 - rangeMs - 1000);
    expect(c.n).toBeLessThan(2 * 901 + 64);
    expect(c.startMs[c.n - 1]).toBe((3 * 86_400 - 1) * 1000);
  });
});
