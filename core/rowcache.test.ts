import { describe, expect, it } from 'vitest';
import { decodeRow, encodeRow, summaryColumns, type DecodedRow } from './block.js';
import { RowCache } from './rowcache.js';

/** A row of `n` servers with a point every `every` seconds of a 60-s block. */
function sparseRow(n: number, every: number) {
  const per = Math.ceil(60 / every);
  const pointSecs = new Uint16Array(n * per);
  const pointVals = new Float64Array(n * per);
  for (let j = 0; j < n; j++) for (let k = 0; k < per; k++) (pointSecs[j * per + k] = k * every), (pointVals[j * per + k] = j + k / 4);
  return { kind: 0, blockSeconds: 60, serverIds: Uint32Array.from({ length: n }, (_, j) => j + 1), serversOmitted: 0, entries: 'values' as const, aggregates: null, pointStart: Int32Array.from({ length: n + 1 }, (_, j) => j * per), pointSecs, pointVals, distStart: new Int32Array(n + 1), dist: summaryColumns(0), rollup: summaryColumns(0), rollupFrom: 0, rollupTo: 0 };
}

/** Bytes of every distinct buffer the row's columns hold (what the cache really keeps alive). */
function held(row: DecodedRow): number {
  const buffers = new Set<ArrayBufferLike>();
  for (const a of [row.serverIds, row.pointStart, row.pointSecs, row.pointVals, row.distStart]) buffers.add(a.buffer);
  for (const c of [row.dist, row.rollup]) for (const a of [c.secs, c.count, c.sum, c.min, c.max, c.sketchStart, c.sketchEnd]) buffers.add(a.buffer);
  let n = 0;
  for (const b of buffers) n += b.byteLength;
  return n;
}

describe('RowCache', () => {
  it('regression: counts what a kept row holds (before: a sparse row decoded into columns for every server-second was counted by its used part, up to ~15× less, so the bound did not hold)', () => {
    for (const [n, every] of [[40, 1], [40, 10], [200, 60]] as const) {
      const stored = encodeRow(sparseRow(n, every));
      const row = decodeRow(stored.slice());
      const cache = new RowCache(64 << 20, { row_cache_hits: 0, row_cache_misses: 0, row_cache_evicted: 0 });
      cache.put('k', row, stored.length);
      const kept = cache.get('k')!;
      expect(kept.pointVals).toEqual(row.pointVals);
      expect(kept.pointSecs).toEqual(row.pointSecs);
      expect(held(kept) + stored.length, `${n} servers, a point every ${every} s`).toBeLessThanOrEqual(cache.bytes);
    }
  });
});
