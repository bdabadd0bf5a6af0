import { describe, expect, it } from 'vitest';
import { RowVersions } from './rowversions.js';

describe('RowVersions', () => {
  it('remembers a bounded number of blocks per shard; a forgotten block answers an epoch no older than its own', () => {
    const v = new RowVersions(3);
    for (let b = 0; b < 10; b++) v.wrote(0, b * 60);
    expect(v.epoch).toBe(10);
    // The last three are exact; the others answer the latest forgotten epoch (7), never less than their own.
    expect([7, 8, 9].map((b) => v.version(0, b * 60))).toEqual([8, 9, 10]);
    for (let b = 0; b < 7; b++) expect(v.version(0, b * 60)).toBe(7);
    expect((v as unknown as { shards: Map<number, { blocks: Map<number, number> }> }).shards.get(0)!.blocks.size).toBe(3);
    // A block never written since the store opened, in a shard never written: 0.
    expect(v.version(1, 0)).toBe(0);
  });

  it('a shard-wide change dates every block of the shard; a retention cut dates the blocks below it only', () => {
    const v = new RowVersions();
    v.wrote(0, 0);
    v.wrote(0, 60);
    v.wrote(1, 60);
    v.deletedBelow(0, 60);
    expect([v.version(0, 0), v.version(0, 60), v.version(1, 0)]).toEqual([4, 2, 0]);
    v.wroteShard(1);
    expect([v.version(1, 0), v.version(1, 60), v.version(0, 120)]).toEqual([5, 5, 0]);
  });
});
