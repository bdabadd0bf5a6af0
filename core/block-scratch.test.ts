import { describe, expect, it } from 'vitest';
import { decodeRow, encodeRow, rowServerIds, type RowInput } from './block.js';

// In a file of its own: decodeRow's scratch arrays are the module's, and this needs them as a
// fresh worker has them (none grown past 1,024 servers).

/** A row of n servers (ids 3j + 1), one point each at second 0. */
function wide(n: number): RowInput {
  return {
    kind: 0,
    blockSeconds: 60,
    serverIds: Uint32Array.from({ length: n }, (_, j) => 3 * j + 1),
    serversOmitted: 0,
    entries: 'values',
    aggregates: null,
    pointStart: Int32Array.from({ length: n + 1 }, (_, j) => j),
    pointSecs: new Uint16Array(n),
    pointVals: Float64Array.from({ length: n }, (_, j) => j / 4),
    distStart: new Int32Array(n + 1),
    dist: { secs: new Uint16Array(0), count: new Float64Array(0), sum: new Float64Array(0), min: new Float64Array(0), max: new Float64Array(0), sketchSrc: [], sketchStart: new Int32Array(0), sketchEnd: new Int32Array(0) },
    rollup: { secs: new Uint16Array(0), count: new Float64Array(0), sum: new Float64Array(0), min: new Float64Array(0), max: new Float64Array(0), sketchSrc: [], sketchStart: new Int32Array(0), sketchEnd: new Int32Array(0) },
  } as unknown as RowInput;
}

describe('row decoding scratch', () => {
  it('regression: decodes every server id of a row past 1,024 servers after rowServerIds grew the other scratch arrays (before: the 1,025th on read as id 0)', () => {
    const input = wide(1500);
    const stored = encodeRow(input);
    expect(Array.from(rowServerIds(stored))).toEqual(Array.from(input.serverIds));
    const row = decodeRow(stored);
    expect(Array.from(row.serverIds)).toEqual(Array.from(input.serverIds));
    expect(Array.from(row.pointVals)).toEqual(Array.from(input.pointVals));
  });
});
