import { describe, expect, it } from 'vitest';
import { RowDirectories, type DirectoryRow } from './rowdirectory.js';

const rows = (n: number): DirectoryRow[] => Array.from({ length: n }, (_, i) => ({ rackId: i, key: Buffer.alloc(18), pointer: null, walSeq: 1, header: null, bytes: null }));
const counters = () => ({ row_directory_hits: 0, row_directory_misses: 0, row_directory_evicted: 0 });

describe('row directories (a block\'s stored rows kept between reads)', () => {
  it('answers a directory only while its block has no later change, and counts hits and misses', () => {
    const c = counters();
    const dirs = new RowDirectories(c);
    const k = RowDirectories.keyOf(1, 2, 3, 60);
    dirs.put(k, 5, rows(2));
    expect(dirs.get(k, 5)?.rows).toHaveLength(2);
    expect(dirs.get(k, 0)?.rows).toHaveLength(2);
    // A change at epoch 6: read again, and the stale one is gone.
    expect(dirs.get(k, 6)).toBeUndefined();
    expect(dirs.size).toBe(0);
    expect(dirs.bytes).toBe(0);
    expect(c).toEqual({ row_directory_hits: 2, row_directory_misses: 1, row_directory_evicted: 0 });
  });

  it('stays within its bytes, headers counted as they are kept: least recently used out first; one past a tenth of the bound is not kept, nor one without rows', () => {
    const c = counters();
    const dirs = new RowDirectories(c, 100_000);
    const a = dirs.put('a', 1, rows(10)); // 300 + 10 × 500 B
    dirs.put('b', 1, rows(10));
    dirs.get('a', 0); // a used last
    dirs.grew('a', a, 80_000);
    expect(dirs.bytes).toBe(90_600);
    dirs.put('c', 1, rows(5)); // 93,400 B: within
    dirs.put('d', 1, rows(14)); // 100,700 B, past: b (least recently used) goes
    expect([dirs.get('b', 0), dirs.get('a', 0) !== undefined, dirs.get('d', 0) !== undefined]).toEqual([undefined, true, true]);
    expect(dirs.bytes).toBe(95_400);
    expect(c.row_directory_evicted).toBe(1);
    // Past a tenth of the bound: answered, not kept.
    expect(dirs.put('big', 1, rows(20)).rows).toHaveLength(20);
    expect(dirs.get('big', 0)).toBeUndefined();
    // Regression: a block without rows is not kept (before: kept at no cost counted, without end).
    const size = dirs.size;
    for (let b = 0; b < 1000; b++) dirs.put(`empty-${b}`, 1, []);
    expect([dirs.size, dirs.bytes]).toEqual([size, 95_400]);
    // A header of a directory no longer kept costs nothing.
    dirs.grew('b', a, 100);
    expect(dirs.bytes).toBe(95_400);
    dirs.clear();
    expect([dirs.size, dirs.bytes]).toEqual([0, 0]);
  });

  it("keeps rows' bytes only within a tenth of the bound per directory (regression: one wide block's rows, kept on their first read, pushed every other directory out)", () => {
    const c = counters();
    const dirs = new RowDirectories(c, 1_000_000);
    for (let i = 0; i < 20; i++) dirs.put(`small-${i}`, 1, rows(2));
    const big = dirs.put('big', 1, rows(100)); // 50,300 B
    let kept = 0;
    for (let r = 0; r < 100; r++) {
      if (!dirs.keeps('big', big, 50_120)) continue;
      dirs.grew('big', big, 50_120);
      kept++;
    }
    expect(kept).toBe(0); // 50,300 + 50,120 > 100,000
    const wide = dirs.put('wide', 1, rows(10)); // 5,300 B
    for (let r = 0; r < 10; r++) if (dirs.keeps('wide', wide, 20_000)) dirs.grew('wide', wide, 20_000);
    expect(wide.bytes).toBe(85_300); // four rows' bytes kept, the rest read again each time
    expect(dirs.size).toBe(22);
    expect(c.row_directory_evicted).toBe(0);
    // Not kept at all: nothing may grow it.
    expect(dirs.keeps('gone', wide, 1)).toBe(false);
  });
});
