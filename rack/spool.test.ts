import { afterAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { shardsDefault } from '../schema/limits.js';
import { seqReserveBlock, Spool } from './spool.js';

describe('Spool (real LMDB files)', () => {
  it('keeps batches in order across a reopen, never reuses a number, and drops the oldest beyond its bound', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-'));
    const s = new Spool(dir, { bytesMax: 1000, reserveBytes: 0, memoryBytesMax: 1 << 20 });
    for (let i = 0; i < 3; i++) expect(await s.put(s.takeSeq(), new Uint8Array(300).fill(i))).toBe(true);
    expect(s.oldest(10).map((e) => [e.seq, e.bytes[0]])).toEqual([[1, 0], [2, 1], [3, 2]]);
    expect(s.oldest(10, new Set([1])).map((e) => e.seq)).toEqual([2, 3]);
    await s.put(s.takeSeq(), new Uint8Array(300).fill(3)); // 1200 B > 1000: batch 1 goes
    expect([s.heldBatches, s.heldBytes, s.droppedBatches]).toEqual([3, 900, 1]);
    await s.remove(2);
    await s.close();

    const again = new Spool(dir, { bytesMax: 1000, reserveBytes: 0, memoryBytesMax: 1 << 20 });
    expect(again.oldest(10).map((e) => [e.seq, e.bytes[0]])).toEqual([[3, 2], [4, 3]]);
    expect([again.heldBatches, again.heldBytes]).toEqual([2, 600]);
    // Numbers are reserved on disk a block at a time: a reopen goes on past the block, never back.
    expect(again.takeSeq()).toBe(1 + seqReserveBlock);
    await again.close();
  });

  it('regression: a new or emptied spool directory gets a new session (seq restarts at 1 and the core must not take it for a duplicate); a reopen keeps both', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-session-'));
    const opts = { bytesMax: 1 << 20, reserveBytes: 0, memoryBytesMax: 1 << 20 };
    const a = new Spool(dir, opts);
    expect(a.session).toBeGreaterThan(0);
    expect(a.session).toBeLessThan(2 ** 32);
    for (let i = 0; i < 3; i++) await a.put(a.takeSeq(), new Uint8Array(10));
    await a.close();
    const reopened = new Spool(dir, opts);
    expect([reopened.session, reopened.takeSeq()]).toEqual([a.session, 1 + seqReserveBlock]);
    await reopened.close();
    // The operator deletes the spool (or the rack moves to a new disk): same rack id, seq 1 again.
    rmSync(dir, { recursive: true, force: true });
    const fresh = new Spool(dir, opts);
    expect(fresh.takeSeq()).toBe(1);
    expect(fresh.session).not.toBe(a.session);
    // The new session is durable before any batch: a crash now and a restart keep it.
    await fresh.close();
    const again = new Spool(dir, opts);
    expect(again.session).toBe(fresh.session);
    await again.close();
  });

  it('keeps the shard count the core gave across a reopen (shardsDefault until then)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-shards-'));
    const opts = { bytesMax: 1 << 20, reserveBytes: 0, memoryBytesMax: 1 << 20 };
    const s = new Spool(dir, opts);
    expect(s.shards).toBe(shardsDefault);
    await s.setShards(16);
    await expect(s.setShards(12)).rejects.toThrow(/power of two/);
    await s.close();
    const again = new Spool(dir, opts);
    expect(again.shards).toBe(16);
    await again.close();
  });

  it('replaces a held batch (a re-cut body): read back, counted at its new size, kept across a reopen', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-replace-'));
    const opts = { bytesMax: 1 << 20, reserveBytes: 0, memoryBytesMax: 1 << 20 };
    const s = new Spool(dir, opts);
    for (let i = 0; i < 3; i++) await s.put(s.takeSeq(), new Uint8Array(100).fill(i));
    await s.replace(2, new Uint8Array(150).fill(9));
    await s.replace(7, new Uint8Array(5)); // not held: nothing happens
    expect(s.oldest(10).map((e) => [e.seq, e.bytes.length, e.bytes[0]])).toEqual([[1, 100, 0], [2, 150, 9], [3, 100, 2]]);
    expect(s.heldBytes).toBe(350);
    await s.remove(2);
    expect(s.heldBytes).toBe(200);
    await s.replace(3, new Uint8Array(50).fill(8));
    await s.close();
    const again = new Spool(dir, opts);
    expect(again.oldest(10).map((e) => [e.seq, e.bytes.length, e.bytes[0]])).toEqual([[1, 100, 0], [3, 50, 8]]);
    expect(again.heldBytes).toBe(150);
    await again.close();
  });

  it('regression: a batch held in memory and replaced (re-cut) while it is being moved to disk keeps its new bytes on disk and in the counts (before: the old bytes went to disk and the memory count kept the difference for good)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-replace-moving-'));
    const opts = { bytesMax: 1 << 20, reserveBytes: Number.MAX_SAFE_INTEGER, memoryBytesMax: 1 << 20 };
    const s = new Spool(dir, opts);
    for (let i = 0; i < 3; i++) await s.put(s.takeSeq(), new Uint8Array(100).fill(i));
    expect(s.memoryBatches).toBe(3);
    // Room again (as the 1-s statfs check would find): the next put moves the held batches to disk.
    const inner = s as unknown as { opts: { reserveBytes: number }; diskChecked: { atMs: number; low: boolean }; movingToDisk: boolean; unwritten: Map<number, Uint8Array> };
    inner.opts.reserveBytes = 0;
    inner.diskChecked = { atMs: 0, low: false };
    const moving = s.put(s.takeSeq(), new Uint8Array(100).fill(3));
    // The re-cut of batch 2 lands while its old bytes are being written (a synced commit: milliseconds).
    await new Promise((r) => setImmediate(r));
    expect([inner.movingToDisk, inner.unwritten.has(2)]).toEqual([true, true]);
    await s.replace(2, new Uint8Array(150).fill(9));
    expect(await moving).toBe(true);
    expect([s.memoryBatches, s.memoryBytes, s.heldBatches, s.heldBytes]).toEqual([0, 0, 4, 450]);
    expect(s.oldest(10).map((e) => [e.seq, e.bytes.length, e.bytes[0]])).toEqual([[1, 100, 0], [2, 150, 9], [3, 100, 2], [4, 100, 3]]);
    await s.close();
    const again = new Spool(dir, { ...opts, reserveBytes: 0 });
    expect(again.oldest(10).map((e) => [e.seq, e.bytes.length, e.bytes[0]])).toEqual([[1, 100, 0], [2, 150, 9], [3, 100, 2], [4, 100, 3]]);
    expect(again.heldBytes).toBe(450);
    await again.close();
  });

  it('holds its memory bound when a batch held in memory is split into several bodies (the oldest held go first, counted)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-split-memory-'));
    const s = new Spool(dir, { bytesMax: 1 << 20, reserveBytes: Number.MAX_SAFE_INTEGER, memoryBytesMax: 300 });
    for (let i = 0; i < 3; i++) await s.put(s.takeSeq(), new Uint8Array(100).fill(i));
    expect(await s.replaceSplit(3, new Uint8Array(100).fill(7), [{ seq: s.takeSeq(), bytes: new Uint8Array(100).fill(8) }])).toBe('written');
    expect([s.memoryBytes, s.droppedInMemory]).toEqual([300, 1]);
    expect(s.oldest(10).map((e) => [e.seq, e.bytes[0]])).toEqual([[2, 1], [3, 7], [4, 8]]);
    await s.close();
  });

  it('replaces a batch by the first of its re-cut bodies and adds the others in one transaction, or writes none of them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-split-'));
    const opts = { bytesMax: 1 << 20, reserveBytes: 0, memoryBytesMax: 1 << 20 };
    const s = new Spool(dir, opts);
    for (let i = 0; i < 2; i++) await s.put(s.takeSeq(), new Uint8Array(100).fill(i));
    await s.close();
    // The disk below its reserve: nothing is written, the old batch stays whole (re-cut again later: nothing of this cut was written or sent).
    const low = new Spool(dir, { ...opts, reserveBytes: Number.MAX_SAFE_INTEGER });
    const extra = low.takeSeq();
    expect(await low.replaceSplit(1, new Uint8Array(60).fill(7), [{ seq: extra, bytes: new Uint8Array(70).fill(8) }])).toBe('refused');
    expect(low.oldest(10).map((e) => [e.seq, e.bytes.length, e.bytes[0]])).toEqual([[1, 100, 0], [2, 100, 1]]);
    await low.close();
    const s2 = new Spool(dir, opts);
    const e2 = s2.takeSeq();
    expect(await s2.replaceSplit(1, new Uint8Array(60).fill(7), [{ seq: e2, bytes: new Uint8Array(70).fill(8) }])).toBe('written');
    expect(await s2.replaceSplit(9, new Uint8Array(1), [])).toBe('gone');
    expect(s2.heldBytes).toBe(230);
    await s2.close();
    const again = new Spool(dir, opts);
    expect(again.oldest(10).map((e) => [e.seq, e.bytes.length, e.bytes[0]])).toEqual([[1, 60, 7], [2, 100, 1], [e2, 70, 8]]);
    expect([again.heldBatches, again.heldBytes]).toEqual([3, 230]);
    await again.close();
  });

  it('holds batches in memory while the disk is full (a real tmpfs), forwards them in order, and moves them to disk once there is room', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-full-'));
    // A file system that really fills up (root, as in CI); a filler file takes the room and is
    // deleted to give it back. With a reserve (as a rack runs): once statfs shows less free than
    // it, nothing is committed into the full file system. (Without one, LMDB's own write failed
    // and lmdb-js' failed commit could corrupt its heap: it aborted the suite's worker in two of
    // the last sessions' runs, with a negative buffer size in its error.)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', dir]);
    unmount.push(dir);
    const opts = { bytesMax: 1 << 30, reserveBytes: 1 << 20, memoryBytesMax: 1_500_000 };
    const s = new Spool(join(dir, 'spool'), opts);
    const batch = (i: number) => new Uint8Array(100_000).fill(i & 255);
    let puts = 0;
    for (; puts < 5; puts++) expect(await s.put(s.takeSeq(), batch(puts))).toBe(true);
    expect(s.writeErrors).toBe(0);
    writeFileSync(join(dir, 'filler'), new Uint8Array(0));
    try {
      for (;;) appendFileSync(join(dir, 'filler'), new Uint8Array(16 * 1024));
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    await new Promise((r) => setTimeout(r, 1100)); // the spool's free-space check (once a second) sees it
    for (; puts < 15; puts++) expect(await s.put(s.takeSeq(), batch(puts))).toBe(true);
    expect(s.writeErrors, 'commits tried into the full file system').toBe(0);
    expect([s.memoryBatches, s.heldBatches, s.droppedBatches]).toEqual([10, 15, 0]);
    // Forwarding sees disk and memory as one queue, oldest first.
    expect(s.oldest(100).map((e) => [e.seq, e.bytes[0]])).toEqual(Array.from({ length: 15 }, (_, i) => [i + 1, i]));
    // Beyond the memory bound (15 × 100 kB = 1.5 MB) the oldest in memory is dropped, and counted.
    for (; puts < 21; puts++) await s.put(s.takeSeq(), batch(puts));
    expect([s.droppedInMemory, s.memoryBatches]).toEqual([1, 15]);
    expect(s.oldest(100).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, ...Array.from({ length: 15 }, (_, i) => i + 7)]);
    // The core acknowledges batch 1 meanwhile (removing it may fail too: it is skipped either way).
    await s.remove(1);
    // Room again: the next put moves everything held in memory to disk, in order, without a restart.
    rmSync(join(dir, 'filler'));
    await new Promise((r) => setTimeout(r, 1100)); // seen by the free-space check
    await s.put(s.takeSeq(), batch(puts++));
    expect([s.memoryBatches, s.heldBatches]).toEqual([0, 20]);
    const expected = [2, 3, 4, 5, ...Array.from({ length: 16 }, (_, i) => i + 7)];
    expect(s.oldest(100).map((e) => e.seq)).toEqual(expected);
    await s.close();
    const again = new Spool(join(dir, 'spool'), opts);
    expect(again.oldest(100).map((e) => e.seq)).toEqual(expected);
    expect(again.oldest(100).map((e) => e.bytes[0])).toEqual(expected.map((q) => (q - 1) & 255));
    await again.close();
  });

  it('regression: a restart while the disk is full resumes after the seconds the core acknowledged from memory (meta could not be written: edges were asked again for them, and their distributions counted twice)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-mark-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', dir]);
    unmount.push(dir);
    // A reserve, so that the spool holds batches in memory once the disk is full without trying
    // an LMDB commit into it (lmdb-js' failed commits can corrupt its heap: the test above covers
    // one); the mark file is still overwritten on a file system with no free block.
    const opts = { bytesMax: 1 << 30, reserveBytes: 1 << 20, memoryBytesMax: 1_500_000 };
    const s = new Spool(join(dir, 'spool'), opts);
    const put = async (second: number, late = false) => {
      if (!late) s.closedThrough = second;
      const seq = s.takeSeq();
      expect(await s.put(seq, new Uint8Array(100_000).fill(second & 255), late ? undefined : second)).toBe(true);
      return seq;
    };
    await put(100);
    await put(101);
    expect(s.writeErrors).toBe(0);
    writeFileSync(join(dir, 'filler'), new Uint8Array(0));
    try {
      for (;;) appendFileSync(join(dir, 'filler'), new Uint8Array(16 * 1024));
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    await new Promise((r) => setTimeout(r, 1100)); // the spool's free-space check (once a second) sees it
    // Held in memory: 102 and 103 (the core acknowledges both), then 104 (not acknowledged), and
    // a late batch of second 90, acknowledged or not, which moves nothing.
    const a = await put(102);
    const b = await put(103);
    const late = await put(90, true);
    const c = await put(104);
    expect([s.memoryBatches, s.writeErrors]).toEqual([4, 0]);
    await s.remove(a);
    await s.remove(b);
    await s.close();
    // Reopened while the disk is still full: resumes after 103, before 104 (which edges are asked for again).
    const again = new Spool(join(dir, 'spool'), opts);
    expect(again.closedThrough).toBe(103);
    expect([late, c].every((q) => q > b)).toBe(true);
    await again.close();
    // Room again and a normal write: meta holds the newer second, and a reopen takes the larger.
    rmSync(join(dir, 'filler'));
    const third = new Spool(join(dir, 'spool'), opts);
    third.closedThrough = 110;
    expect(await third.put(third.takeSeq(), new Uint8Array(10), 110)).toBe(true);
    await third.close();
    const fourth = new Spool(join(dir, 'spool'), opts);
    expect(fourth.closedThrough).toBe(110);
    await fourth.close();
  });

  it('regression: never numbers a batch as one that went out from memory before a restart (the disk refused it, so nextSeq was not written: the core dropped the new batches as duplicates)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-seq-'));
    // Below the reserve from the start: every batch is held in memory, and no number is written with one.
    const low = { bytesMax: 1 << 20, reserveBytes: Number.MAX_SAFE_INTEGER, memoryBytesMax: 1 << 20 };
    const s = new Spool(dir, low);
    const sent: string[] = [];
    for (let i = 0; i < 5; i++) {
      const seq = s.takeSeq();
      sent.push(`${s.session}/${seq}`);
      expect(await s.put(seq, new Uint8Array(10))).toBe(true);
      await s.remove(seq); // acknowledged by the core
    }
    expect(s.sessionRotations).toBe(1);
    await s.close();
    // Reopened with room on the disk: its next numbers (under whatever session) are new.
    const again = new Spool(dir, { ...low, reserveBytes: 0 });
    const next = Array.from({ length: 5 }, () => `${again.session}/${again.takeSeq()}`);
    expect(next.filter((k) => sent.includes(k))).toEqual([]);
    // With room, numbers are reserved on disk: a reopen goes on past them, same session.
    const session = again.session;
    await again.close();
    const third = new Spool(dir, { ...low, reserveBytes: 0 });
    expect([third.session, third.takeSeq() > 5]).toEqual([session, true]);
    await third.close();
  });

  it('regression: while batches held in memory move to disk, none is listed twice, and one acknowledged meanwhile is removed once (before: listed twice, sent twice — stored twice across a session change — and the spool\'s counts went negative)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-move-'));
    const o = { bytesMax: 1 << 30, reserveBytes: Number.MAX_SAFE_INTEGER, memoryBytesMax: 1 << 26 };
    const s = new Spool(dir, o);
    for (let i = 0; i < 5; i++) {
      const seq = s.takeSeq();
      s.closedThrough = 1_790_000_000 + seq;
      await s.put(seq, new Uint8Array(5000).fill(seq), 1_790_000_000 + seq);
    }
    expect(s.memoryBatches).toBe(5);
    o.reserveBytes = 0;
    await new Promise((r) => setTimeout(r, 1100)); // the free-space check (once a second) sees room
    const six = s.takeSeq();
    const moving = s.put(six, new Uint8Array(5000).fill(6), 1_790_000_000 + six);
    await s.remove(1); // acknowledged while the move is written
    let done = false;
    void moving.then(() => (done = true));
    const twice: string[] = [];
    for (let i = 0; i < 2000 && !done; i++) {
      const l = s.oldest(16).map((e) => e.seq);
      if (new Set(l).size !== l.length) twice.push(l.join(','));
      await new Promise((r) => setImmediate(r));
    }
    await moving;
    expect(twice).toEqual([]);
    expect(s.oldest(16).map((e) => e.seq)).toEqual([2, 3, 4, 5, 6]);
    for (const seq of [2, 2, 3]) await s.remove(seq); // a repeated acknowledgement changes nothing
    expect([s.heldBatches, s.memoryBatches]).toEqual([3, 0]);
    await s.close();
    const again = new Spool(dir, o);
    expect(again.oldest(16).map((e) => e.seq)).toEqual([4, 5, 6]);
    await again.close();
  });

  it('keeps batches in memory while free space is below the reserve', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-spool-low-'));
    const s = new Spool(dir, { bytesMax: 1 << 20, reserveBytes: Number.MAX_SAFE_INTEGER, memoryBytesMax: 1 << 20 });
    for (let i = 0; i < 3; i++) expect(await s.put(s.takeSeq(), new Uint8Array(10).fill(i))).toBe(true);
    expect([s.memoryBatches, s.diskLowBatches, s.writeErrors]).toEqual([3, 1, 0]);
    expect(s.oldest(10).map((e) => e.seq)).toEqual([1, 2, 3]);
    await s.remove(2);
    expect(s.oldest(10).map((e) => e.seq)).toEqual([1, 3]);
    await s.close();
  });
});

const unmount: string[] = [];
afterAll(() => {
  // Lazy: a spool closed while its disk was full leaves its LMDB environment open (lib/lmdb.ts closeLmdb).
  for (const d of unmount) execFileSync('umount', ['-l', d]);
});
