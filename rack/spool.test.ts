import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool } from './spool.js';

describe('Spool (real LMDB files)', () => {
  it('keeps batches in order across a reopen, never reuses a number, and drops the oldest beyond its bound', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-'));
    const s = new Spool(dir, 1000);
    for (let i = 0; i < 3; i++) expect(await s.put(s.takeSeq(), new Uint8Array(300).fill(i))).toBe(true);
    expect(s.oldest(10).map((e) => [e.seq, e.bytes[0]])).toEqual([[1, 0], [2, 1], [3, 2]]);
    expect(s.oldest(10, new Set([1])).map((e) => e.seq)).toEqual([2, 3]);
    await s.put(s.takeSeq(), new Uint8Array(300).fill(3)); // 1200 B > 1000: batch 1 goes
    expect([s.heldBatches, s.heldBytes, s.droppedBatches]).toEqual([3, 900, 1]);
    await s.remove(2);
    await s.close();

    const again = new Spool(dir, 1000);
    expect(again.oldest(10).map((e) => [e.seq, e.bytes[0]])).toEqual([[3, 2], [4, 3]]);
    expect([again.heldBatches, again.heldBytes]).toEqual([2, 600]);
    expect(again.takeSeq()).toBe(5);
    await again.close();
  });
});
