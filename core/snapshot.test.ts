import { describe, expect, it } from 'vitest';
import { RecordFramer, SnapshotError, snapshotFormatVersion } from './snapshot.js';

/** A stream's preamble: "APMSHS" and its format version. */
function preamble(version: number): Uint8Array {
  const b = Buffer.alloc(8);
  b.write('APMSHS', 0, 'latin1');
  b.writeUInt16LE(version, 6);
  return b;
}

describe('shard snapshot format versions', () => {
  it('writes format 4 (rows of version 5, which older cores cannot decode), reads formats 1 to 4, and refuses another with what to do', () => {
    expect(snapshotFormatVersion).toBe(4);
    for (const v of [1, 2, 3, 4]) expect(new RecordFramer().push(preamble(v))).toEqual([]);
    for (const v of [0, 5]) {
      const err = (() => {
        try {
          new RecordFramer().push(preamble(v));
        } catch (e) {
          return e;
        }
        return null;
      })();
      expect(err).toBeInstanceOf(SnapshotError);
      expect((err as Error).message).toBe(`shard snapshot format ${v}; this core reads formats 1–4: run the same apm version on both nodes`);
    }
  });
});
