import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { KindCode } from '../schema/codec.js';
import { SketchAccumulator } from '../schema/sketch.js';
import { decodeRow, encodeRow, summaryColumns, type DecodedRow } from './block.js';
import { buildRow, ColumnPool, MetricHead } from './head.js';

const B = 60;
const acc = new SketchAccumulator();

function head(o: { blockSeconds?: number; pool?: ColumnPool } = {}): MetricHead {
  return new MetricHead({ kind: KindCode.Gauge, metricLo: 1, metricHi: 2, rackId: 0, blockSeconds: o.blockSeconds ?? B, pool: o.pool ?? null });
}

/** One section's points: [server id, value] in the section's order. */
function feed(h: MetricHead, sec: number, entries: readonly (readonly [number, number])[]): void {
  h.openSection(sec, entries.length);
  for (const [sid, v] of entries) h.addPoint(sid, v);
}

/** A row's points as { server: [second, value][] }. */
function pointsOf(r: DecodedRow): Record<number, [number, number][]> {
  const out: Record<number, [number, number][]> = {};
  r.serverIds.forEach((sid, j) => {
    const list: [number, number][] = [];
    for (let i = r.pointStart[j]!; i < r.pointStart[j + 1]!; i++) list.push([r.pointSecs[i]!, r.pointVals[i]!]);
    out[sid] = list;
  });
  return out;
}

/** A stored row with these points (servers ascending, seconds ascending), through the row codec. */
function storedRow(points: Record<number, [number, number][]>, blockSeconds = B): DecodedRow {
  const ids = Object.keys(points).map(Number).sort((a, b) => a - b);
  const pointStart = new Int32Array(ids.length + 1);
  const secs: number[] = [];
  const vals: number[] = [];
  ids.forEach((sid, j) => {
    pointStart[j] = secs.length;
    for (const [s, v] of points[sid]!) secs.push(s), vals.push(v);
  });
  pointStart[ids.length] = secs.length;
  const empty = summaryColumns(0);
  const row = {
    kind: KindCode.Gauge,
    blockSeconds,
    serverIds: Uint32Array.from(ids),
    serversOmitted: 0,
    entries: 'values' as const,
    aggregates: null,
    pointStart,
    pointSecs: Uint16Array.from(secs),
    pointVals: Float64Array.from(vals),
    distStart: new Int32Array(ids.length + 1),
    dist: empty,
    rollup: empty,
    rollupFrom: 0,
    rollupTo: 0,
  };
  return decodeRow(encodeRow(row));
}

/**
 * What buildRow should give, the straightforward way: the head's arrivals, then the stored
 * row's entries, sorted stably by (server, second); the first of a (server, second) wins.
 */
function reference(arrivals: readonly { sid: number; sec: number; v: number }[], old: DecodedRow | undefined): Record<number, [number, number][]> {
  // The newest arrival wins (first in the list after a stable sort), then the head over the row.
  const all = [...arrivals].reverse();
  if (old !== undefined) {
    old.serverIds.forEach((sid, j) => {
      for (let i = old.pointStart[j]!; i < old.pointStart[j + 1]!; i++) all.push({ sid, sec: old.pointSecs[i]!, v: old.pointVals[i]! });
    });
  }
  all.sort((a, b) => a.sid - b.sid || a.sec - b.sec); // Array.prototype.sort is stable
  const out: Record<number, [number, number][]> = {};
  for (const e of all) {
    const list = (out[e.sid] ??= []);
    if (list.length > 0 && list[list.length - 1]![0] === e.sec) continue;
    list.push([e.sec, e.v]);
  }
  return out;
}

function check(r: DecodedRow): void {
  for (let j = 1; j < r.serverIds.length; j++) expect(r.serverIds[j]).toBeGreaterThan(r.serverIds[j - 1]!);
  expect(r.pointStart[r.serverIds.length]).toBe(r.pointSecs.length);
}

describe('MetricHead and buildRow', () => {
  it('regression: keeps the newest arrival of a (server, second), as a merge into a written row does (it kept the first: a correction counted as taken was dropped)', () => {
    const h = head();
    feed(h, 0, [[7, 1], [9, 2]]);
    // The same second again (a correction, a re-import): the new values.
    feed(h, 0, [[7, 10], [9, 20]]);
    // A server twice in one section.
    feed(h, 1, [[7, 3], [7, 30], [9, 4]]);
    expect(h.points).toBe(4);
    const r = buildRow(h, undefined, B, acc);
    check(r);
    expect(pointsOf(r)).toEqual({ 7: [[0, 10], [1, 30]], 9: [[0, 20], [1, 4]] });
  });

  it('merges a stored row, the head winning a second both have', () => {
    const old = storedRow({ 3: [[0, 100], [5, 105], [59, 159]], 7: [[2, 102], [4, 104]] });
    const h = head();
    feed(h, 4, [[7, 4], [8, 4.5]]);
    feed(h, 5, [[3, 5], [7, 5.5]]);
    const r = buildRow(h, old, B, acc);
    check(r);
    expect(pointsOf(r)).toEqual({ 3: [[0, 100], [5, 5], [59, 159]], 7: [[2, 102], [4, 4], [5, 5.5]], 8: [[4, 4.5]] });
    // Through the codec as the store writes it.
    expect(pointsOf(decodeRow(encodeRow(r)))).toEqual(pointsOf(r));
  });

  it('takes servers in another order in later seconds, and a server appearing mid-block', () => {
    const h = head();
    feed(h, 0, [[5, 0.5], [2, 0.2], [9, 0.9]]);
    feed(h, 1, [[9, 1.9], [5, 1.5], [2, 1.2]]);
    // Server 4 appears; 2 is missing this second.
    feed(h, 30, [[5, 30.5], [4, 30.4], [9, 30.9]]);
    feed(h, 31, [[5, 31.5], [2, 31.2], [4, 31.4], [9, 31.9]]);
    const r = buildRow(h, undefined, B, acc);
    check(r);
    expect(pointsOf(r)).toEqual({
      2: [[0, 0.2], [1, 1.2], [31, 31.2]],
      4: [[30, 30.4], [31, 31.4]],
      5: [[0, 0.5], [1, 1.5], [30, 30.5], [31, 31.5]],
      9: [[0, 0.9], [1, 1.9], [30, 30.9], [31, 31.9]],
    });
  });

  it('grows its slots past the first section, keeping what it holds', () => {
    const h = head();
    feed(h, 3, [[1000, 1]]);
    expect(h.slotsCap).toBe(1);
    const want: Record<number, [number, number][]> = { 1000: [[3, 1]] };
    // 50 servers, one more each second, in descending ids: the slots double several times and
    // pass the linear search to the map.
    for (let s = 4; s < 54; s++) {
      const entries: [number, number][] = [];
      for (let k = 0; k <= s - 4; k++) entries.push([999 - k, s * 1000 + k]);
      feed(h, s, entries);
      for (const [sid, v] of entries) (want[sid] ??= []).push([s, v]);
    }
    // A late second, before the first section's.
    feed(h, 0, [[1000, -1], [990, -2]]);
    want[1000]!.unshift([0, -1]);
    want[990]!.unshift([0, -2]);
    expect(h.slotsCap).toBeGreaterThanOrEqual(51);
    const r = buildRow(h, undefined, B, acc);
    check(r);
    expect(pointsOf(r)).toEqual(want);
  });

  it('builds the row of a metric present on one server only', () => {
    const h = head();
    for (let s = 0; s < B; s += 10) feed(h, s, [[42, s]]);
    expect(h.slotsCap).toBe(1);
    const r = buildRow(h, undefined, B, acc);
    expect(Array.from(r.serverIds)).toEqual([42]);
    expect(pointsOf(r)).toEqual({ 42: [0, 10, 20, 30, 40, 50].map((s) => [s, s]) });
  });

  it('a head on recycled memory holds nothing of the one before', () => {
    const pool = new ColumnPool(1 << 20);
    const first = head({ pool });
    for (let s = 0; s < B; s++) feed(first, s, [[1, s], [2, s], [3, s]]);
    first.release();
    const h = head({ pool });
    feed(h, 10, [[3, 7], [2, 8], [1, 9]]);
    feed(h, 20, [[2, 1]]);
    const r = buildRow(h, undefined, B, acc);
    expect(pointsOf(r)).toEqual({ 1: [[10, 9]], 2: [[10, 8], [20, 1]], 3: [[10, 7]] });
  });

  it('equals a sort-based reference on random sections and stored rows', () => {
    const value = fc.double({ noNaN: true, noDefaultInfinity: true });
    const section = (blockSeconds: number, servers: number[]) =>
      fc.record({ sec: fc.integer({ min: 0, max: blockSeconds - 1 }), entries: fc.array(fc.tuple(fc.constantFrom(...servers), value), { maxLength: 24 }) });
    const input = fc
      .record({ blockSeconds: fc.integer({ min: 1, max: 12 }), servers: fc.uniqueArray(fc.integer({ min: 0, max: 2 ** 31 - 1 }), { minLength: 1, maxLength: 30 }) })
      .chain(({ blockSeconds, servers }) =>
        fc.record({
          blockSeconds: fc.constant(blockSeconds),
          sections: fc.array(section(blockSeconds, servers), { maxLength: 30 }),
          old: fc.option(fc.dictionary(fc.constantFrom(...servers.map(String)), fc.uniqueArray(fc.tuple(fc.integer({ min: 0, max: blockSeconds - 1 }), value), { selector: (e) => e[0], minLength: 1 })), { nil: undefined }),
        }),
      );
    fc.assert(
      fc.property(input, ({ blockSeconds, sections, old }) => {
        const pool = new ColumnPool(1 << 20);
        // Leftovers in the pool's memory must not show.
        const before = head({ blockSeconds, pool });
        feed(before, blockSeconds - 1, [[1, 1], [2, 2]]);
        before.release();
        const h = head({ blockSeconds, pool });
        const arrivals: { sid: number; sec: number; v: number }[] = [];
        for (const { sec, entries } of sections) {
          feed(h, sec, entries);
          for (const [sid, v] of entries) arrivals.push({ sid, sec, v });
        }
        let stored: DecodedRow | undefined;
        if (old !== undefined && Object.keys(old).length > 0) {
          const points: Record<number, [number, number][]> = {};
          for (const [sid, list] of Object.entries(old)) points[Number(sid)] = [...list].sort((a, b) => a[0] - b[0]);
          stored = storedRow(points, blockSeconds);
        }
        const r = buildRow(h, stored, blockSeconds, acc);
        check(r);
        expect(pointsOf(r)).toEqual(reference(arrivals, stored));
        expect(Array.from(r.serverIds)).toEqual(Object.keys(reference(arrivals, stored)).map(Number).sort((a, b) => a - b));
      }),
      { numRuns: 300 },
    );
  });
});

describe('ColumnPool', () => {
  it('keeps written heads\' columns only within its bound and the room its store leaves', () => {
    let room = 1 << 20;
    const pool = new ColumnPool(1 << 20, () => room);
    const a = pool.take(40, 60);
    const b = pool.take(40, 60);
    const bytes = 40 * 60 * 8 + 40 * 4;
    pool.give(a);
    expect(pool.keptBytes).toBe(bytes);
    room = bytes + 10; // the store's live heads now leave room for one set only
    pool.give(b);
    expect(pool.keptBytes).toBe(bytes);
    expect(pool.take(40, 60)).toBe(a);
    expect(pool.keptBytes).toBe(0);
  });
});
