import { afterEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openLmdb } from '../lib/lmdb.js';
import { RowError } from './block.js';
import { ChunkMemo, chunkBytes, chunkInlineBytesMax, chunkSizes, groupKey, overflowHeaderBytes, packRows, pageBytes, pointerBytes, pointerTag, storedRowBytes, type KeyValue } from './rowgroups.js';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Overflow pages LMDB gives a value of n bytes (0: it sits in a leaf page), per this module's constants. */
const overflowPages = (n: number) => (n <= chunkInlineBytesMax ? 0 : Math.ceil((n + overflowHeaderBytes) / pageBytes));

/** A rows key [shard u16][block u32][metric hi, lo][rack u32] (as core/store.ts rowKey). */
function key(shard: number, block: number, metric: number, rack: number): Buffer {
  const k = Buffer.alloc(18);
  k.writeUInt16BE(shard, 0);
  k.writeUInt32BE(block, 2);
  k.writeUInt32BE(metric, 10);
  k.writeUInt32BE(rack, 14);
  return k;
}

/** A rows value before packing: WAL seq, then `n` row bytes (first byte ≥ 1, as a row's version). */
function rowValue(seq: number, n: number, fill: number): Buffer {
  const v = Buffer.alloc(6 + n);
  v.writeUIntBE(seq, 0, 6);
  for (let i = 6; i < v.length; i++) v[i] = 1 + ((fill + i * 31) % 255);
  return v;
}

describe('row groups of whole pages (issue 14)', () => {
  it('LMDB takes values as the constants say: a chunk fills 8 overflow pages exactly, a tail of chunkInlineBytesMax stays in a leaf page', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-rowgroups-'));
    dirs.push(dir);
    const root = openLmdb({ path: dir, mapSize: 1 << 26 });
    const db = root.openDB<Buffer, Buffer>({ name: 'groups', encoding: 'binary', keyEncoding: 'binary' });
    const k = groupKey(key(0, 60, 1, 1), 7);
    const pagesOf = async (n: number) => {
      await db.put(k, Buffer.alloc(n, 1));
      const st = db.getStats() as { overflowPages: number; pageSize: number };
      expect(st.pageSize).toBe(pageBytes);
      await db.remove(k);
      return st.overflowPages;
    };
    expect(await pagesOf(chunkInlineBytesMax)).toBe(0);
    expect(await pagesOf(chunkInlineBytesMax + 1)).toBe(1);
    expect(await pagesOf(chunkBytes)).toBe(8);
    expect(await pagesOf(chunkBytes + 1)).toBe(9);
    expect(await pagesOf(pageBytes - overflowHeaderBytes)).toBe(1);
    await root.close();
  });

  it('cuts a run so that it wastes less than a page minus a leaf-sized tail (64 KiB groups of whole rows wasted up to a page each)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 400_000 }), (n) => {
        const sizes = chunkSizes(n);
        expect(sizes.reduce((a, b) => a + b, 0)).toBe(n);
        expect(sizes.every((s) => s > 0 && s <= chunkBytes + chunkInlineBytesMax)).toBe(true);
        // Every chunk but the last two fills its pages exactly.
        for (const s of sizes.slice(0, -2)) expect(s).toBe(chunkBytes);
        // Pages' bytes beyond each overflow run's header and data.
        const wasted = sizes.reduce((a, s) => a + (overflowPages(s) === 0 ? 0 : overflowPages(s) * pageBytes - overflowHeaderBytes - s), 0);
        expect(wasted).toBeLessThan(pageBytes - chunkInlineBytesMax);
      }),
    );
    // A case each: a leaf-sized run, one page exactly, a page plus a leaf-sized tail, a tail too big for a leaf page.
    expect(chunkSizes(2000)).toEqual([2000]);
    expect(chunkSizes(pageBytes - overflowHeaderBytes)).toEqual([pageBytes - overflowHeaderBytes]);
    expect(chunkSizes(pageBytes - overflowHeaderBytes + 100)).toEqual([pageBytes - overflowHeaderBytes, 100]);
    expect(chunkSizes(2 * chunkBytes + 3000)).toEqual([chunkBytes, chunkBytes, 3000]);
  });

  it('reads every row back exactly through its pointer, rows spanning chunks included, each (shard, block) in chunks of its own', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ shard: fc.integer({ min: 0, max: 2 }), block: fc.integer({ min: 0, max: 2 }), bytes: fc.integer({ min: 1, max: 40_000 }) }), { minLength: 1, maxLength: 60 }), fc.integer({ min: 1, max: 1000 }), (rows, firstId) => {
        const puts: KeyValue[] = rows.map((r, i) => ({ key: key(r.shard, 60 * r.block, i, 1), value: rowValue(100 + i, r.bytes, i) }));
        puts.sort((a, b) => Buffer.compare(a.key, b.key));
        const packed = packRows(puts, firstId);
        const chunks = new Map(packed.groups.map((g) => [g.key.toString('hex'), g.value]));
        expect(chunks.size).toBe(packed.groups.length);
        expect(packed.nextId).toBe(firstId + packed.groups.length);
        for (const g of packed.groups) expect(g.value.length).toBeGreaterThan(0);
        packed.pointers.forEach((p, i) => {
          expect(p.key).toBe(puts[i]!.key);
          expect(p.value.length).toBe(pointerBytes);
          expect(p.value.subarray(0, 6)).toEqual(puts[i]!.value.subarray(0, 6));
          const got = storedRowBytes(p.key, p.value, (rk, id) => chunks.get(groupKey(rk, id).toString('hex')));
          expect(Buffer.from(got).equals(puts[i]!.value.subarray(6))).toBe(true);
        });
      }),
      { numRuns: 60 },
    );
  });

  it('a reader holding its last chunk (ChunkMemo) reads each chunk from LMDB once and every row back exactly, through lmdb-js\' reused buffer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-rowgroups-'));
    dirs.push(dir);
    const root = openLmdb({ path: dir, mapSize: 1 << 27 });
    const groups = root.openDB<Buffer, Buffer>({ name: 'groups', encoding: 'binary', keyEncoding: 'binary' });
    const rows = root.openDB<Buffer, Buffer>({ name: 'rows', encoding: 'binary', keyEncoding: 'binary' });
    // Two blocks of 60 racks' rows of 300 B – 9 KB: some rows span chunks.
    const puts: KeyValue[] = [];
    for (const block of [60, 120]) for (let rack = 0; rack < 60; rack++) puts.push({ key: key(0, block, 5, rack), value: rowValue(block + rack, 300 + ((rack * 7919) % 9000), rack) });
    const packed = packRows(puts, 1);
    await root.transaction(() => {
      for (const g of packed.groups) void groups.put(g.key, g.value);
      for (const p of packed.pointers) void rows.put(p.key, p.value);
    });
    let gets = 0;
    const memo = new ChunkMemo((k) => (gets++, groups.getBinaryFast(k)));
    let spanning = 0;
    for (const [i, p] of puts.entries()) {
      // The pointer through getBinaryFast too: the same reused buffer the chunk came through.
      const value = rows.getBinaryFast(p.key)!;
      if (value.readUInt32BE(11) + value.readUInt32BE(15) > chunkBytes) spanning++;
      const got = storedRowBytes(p.key, value, memo.chunk, memo.spill);
      expect(Buffer.from(got).equals(puts[i]!.value.subarray(6)), `row ${i}`).toBe(true);
    }
    expect(spanning).toBeGreaterThan(0);
    expect(gets).toBe(packed.groups.length);
    // Forgetting makes the next row read its chunk again.
    memo.forget();
    storedRowBytes(puts[0]!.key, rows.getBinaryFast(puts[0]!.key)!, memo.chunk, memo.spill);
    expect(gets).toBe(packed.groups.length + 1);

    await root.close();
  });

  it("regression: reads a row spanning chunks right through lmdb-js' reused buffer without a memo (the writer's merge of late data does; before, the first piece was a Buffer view the next chunk's read overwrote, the row did not decode, and the merge wrote the head alone over it)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-rowgroups-'));
    dirs.push(dir);
    const root = openLmdb({ path: dir, mapSize: 1 << 27 });
    const groups = root.openDB<Buffer, Buffer>({ name: 'groups', encoding: 'binary', keyEncoding: 'binary' });
    const puts: KeyValue[] = [];
    for (let rack = 0; rack < 30; rack++) puts.push({ key: key(0, 60, 5, rack), value: rowValue(rack, 2000 + ((rack * 7919) % 9000), rack) });
    const packed = packRows(puts, 1);
    await root.transaction(() => {
      for (const g of packed.groups) void groups.put(g.key, g.value);
    });
    let spanning = 0;
    for (const [i, p] of packed.pointers.entries()) {
      const value = Buffer.from(p.value);
      if (value.readUInt32BE(11) + value.readUInt32BE(15) > chunkBytes) spanning++;
      const got = storedRowBytes(p.key, value, (rk, id) => groups.getBinaryFast(groupKey(rk, id)));
      expect(Buffer.from(got).equals(puts[i]!.value.subarray(6)), `row ${i}`).toBe(true);
    }
    expect(spanning).toBeGreaterThan(0);
    await root.close();
  });

  it('reads rows stored inline and rows of groups written before chunks (whole rows, up to 64 KiB), and refuses a pointer to a missing chunk', () => {
    const k = key(1, 120, 5, 3);
    // Inline: [WAL seq][row].
    const inline = rowValue(9, 30, 4);
    expect(Buffer.from(storedRowBytes(k, inline, () => undefined)).equals(inline.subarray(6))).toBe(true);
    // An old group: two whole rows; the pointer names the second (offset 3000, 2000 B).
    const group = Buffer.concat([rowValue(0, 3000, 1).subarray(6), rowValue(0, 2000, 2).subarray(6)]);
    const ptr = Buffer.alloc(pointerBytes);
    ptr.writeUIntBE(9, 0, 6);
    ptr.writeUInt32BE(41, 7);
    ptr.writeUInt32BE(3000, 11);
    ptr.writeUInt32BE(2000, 15);
    const old = new Map([[groupKey(k, 41).toString('hex'), group]]);
    expect(Buffer.from(storedRowBytes(k, ptr, (rk, id) => old.get(groupKey(rk, id).toString('hex')))).equals(group.subarray(3000))).toBe(true);
    // Longer than the group and no next chunk: refused.
    ptr.writeUInt32BE(2500, 15);
    expect(() => storedRowBytes(k, ptr, (rk, id) => old.get(groupKey(rk, id).toString('hex')))).toThrow(RowError);
    expect(() => storedRowBytes(k, ptr, () => undefined)).toThrow(RowError);
  });
});

describe('a corrupt row pointer', () => {
  it('regression: a pointer naming more bytes than its chunks hold is refused before the row\'s array is made (one naming 4 GiB allocated it first, and a reader\'s scratch kept it)', () => {
    const key = new Uint8Array(16);
    const ptr = Buffer.alloc(pointerBytes);
    ptr[6] = pointerTag;
    ptr.writeUInt32BE(7, 7); // chunk 7
    ptr.writeUInt32BE(0, 11); // offset 0
    ptr.writeUInt32BE(0xfffffff0, 15); // ~4 GiB
    const chunks = new Map([[7, new Uint8Array(100)]]);
    let spilled = 0;
    expect(() =>
      storedRowBytes(key, ptr, (_k, id) => chunks.get(id), (n) => {
        spilled = n;
        return new Uint8Array(0);
      }),
    ).toThrow(RowError);
    expect(spilled).toBe(0);
  });
});

