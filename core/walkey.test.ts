import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { legacyWalKeyParts, walKey, walKeySeq, walKeyShard } from './walkey.js';

describe('WAL keys', () => {
  it('give back their seq (up to 2^48 − 1) and shard, and sort as (seq, shard): the WAL is a queue in arrival order', () => {
    const entry = fc.record({ seq: fc.integer({ min: 0, max: 2 ** 48 - 1 }), shard: fc.integer({ min: 0, max: 0xffff }) });
    fc.assert(
      fc.property(entry, entry, (a, b) => {
        const ka = walKey(a.seq, a.shard);
        expect([walKeySeq(ka), walKeyShard(ka)]).toEqual([a.seq, a.shard]);
        const byKey = Math.sign(Buffer.compare(ka, walKey(b.seq, b.shard)));
        expect(byKey).toBe(Math.sign(a.seq - b.seq || a.shard - b.shard));
      }),
      { numRuns: 5000 },
    );
    for (const seq of [2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 48 - 1]) expect(walKeySeq(walKey(seq, 7))).toBe(seq);
  });

  it('reads the layout before them, shard first', () => {
    const k = Buffer.alloc(8);
    k.writeUInt16BE(41, 0);
    k.writeUIntBE(1_764_900_000_123, 2, 6);
    expect(legacyWalKeyParts(k)).toEqual({ shard: 41, seq: 1_764_900_000_123 });
  });
});
