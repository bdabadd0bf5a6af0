import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { orderBy } from './order.js';

describe('orderBy (an import flush\'s order)', () => {
  it('equals a stable comparator sort by the columns, first column most significant (property)', () => {
    const value = fc.oneof(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 1_700_000_000, max: 1_700_200_000 }));
    fc.assert(
      fc.property(fc.array(fc.tuple(value, value, value, value), { maxLength: 300 }), (rows) => {
        const cols = [0, 1, 2, 3].map((c) => Float64Array.from(rows, (r) => r[c]!));
        const want = rows.map((_, i) => i).sort((a, b) => cols[0]![a]! - cols[0]![b]! || cols[1]![a]! - cols[1]![b]! || cols[2]![a]! - cols[2]![b]! || cols[3]![a]! - cols[3]![b]! || a - b);
        expect([...orderBy(rows.length, cols)]).toEqual(want);
      }),
      { numRuns: 300 },
    );
  });
});
