import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { decodeRow, encodeRow, RowError, type RowInput, type SummaryColumns } from './block.js';

function summaries(secs: number[], src: Uint8Array): SummaryColumns {
  const n = secs.length;
  return {
    secs: Uint16Array.from(secs),
    count: Float64Array.from(secs, (s) => s + 1),
    sum: Float64Array.from(secs, (s) => s * 1.5),
    min: Float64Array.from(secs, (s) => -s),
    max: Float64Array.from(secs, (s) => s * 2),
    sketchSrc: new Array<Uint8Array>(n).fill(src),
    sketchStart: new Uint32Array(n),
    sketchEnd: new Uint32Array(n).fill(src.length),
  };
}

describe('storage row encoding', () => {
  it('round-trips any values exactly, with any presence pattern', () => {
    const value = fc.oneof(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.integer({ min: -1e6, max: 1e6 }), fc.integer({ min: -99999, max: 99999 }).map((n) => n / 100));
    const series = fc.array(fc.tuple(fc.uniqueArray(fc.integer({ min: 0, max: 59 }), { maxLength: 60 }), fc.array(value, { minLength: 60, maxLength: 60 })), { minLength: 1, maxLength: 5 });
    fc.assert(
      fc.property(series, (ss) => {
        const pointStart = new Int32Array(ss.length + 1);
        const secs: number[] = [];
        const vals: number[] = [];
        ss.forEach(([present, v], j) => {
          pointStart[j] = secs.length;
          for (const s of [...present].sort((a, b) => a - b)) {
            secs.push(s);
            vals.push(v[s]!);
          }
        });
        pointStart[ss.length] = secs.length;
        const sketch = Uint8Array.of(0, 0, 1, 2, 1);
        const input: RowInput = {
          kind: 0,
          blockSeconds: 60,
          serverIds: Uint32Array.from(ss, (_, j) => j * 7 + 1),
          pointStart,
          pointSecs: Uint16Array.from(secs),
          pointVals: Float64Array.from(vals),
          distStart: new Int32Array(ss.length + 1).fill(0).map((_, j) => (j === 0 ? 0 : 1)),
          dist: summaries([3], sketch),
          rollup: summaries([0, 5, 59], sketch),
          rollupFrom: 0,
          rollupTo: 3,
        };
        const row = decodeRow(encodeRow(input));
        expect(Array.from(row.serverIds)).toEqual(Array.from(input.serverIds));
        expect(Array.from(row.pointStart)).toEqual(Array.from(pointStart));
        expect(Array.from(row.pointSecs)).toEqual(secs);
        expect(Array.from(row.pointVals).map((v) => (Object.is(v, -0) ? 0 : v))).toEqual(vals.map((v) => (Object.is(v, -0) ? 0 : v)));
        expect(Array.from(row.dist.count)).toEqual([4]);
        expect(Array.from(row.rollup.secs)).toEqual([0, 5, 59]);
        expect(Array.from(row.rollup.sketchSrc[2]!.subarray(row.rollup.sketchStart[2], row.rollup.sketchEnd[2]))).toEqual(Array.from(sketch));
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a corrupt row with RowError', () => {
    expect(() => decodeRow(Uint8Array.of(1, 2, 3))).toThrow(RowError);
  });
});
