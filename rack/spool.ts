// The rack's on-disk spool (issue 3): every closed batch is written here before it is sent,
// and leaves only once the core acknowledged it, so a core outage or a rack crash loses
// nothing that was spooled. Bounded by bytes: once full, the oldest batch is dropped and counted.
// When the disk refuses (file system below its free-space reserve, or a write fails), batches
// are held in memory (bounded) and still forwarded, and move to disk once it has room again —
// recovery without a restart (issue 8).
// Its meta also holds the rack's sender identity for the core's de-duplication (DESIGN §9:
// rack, session, seq) and the last shard count the core told the rack (issue 12).
// While the disk refuses, where a restarted rack resumes is kept in a small file made when the
// spool opens and overwritten in place (`delivered-through`): overwriting blocks a file already
// has needs no free space, so a full disk does not make a restart probe edges again for seconds
// the core already acknowledged (their distributions would have counted twice).

import { randomInt } from 'node:crypto';
import { closeSync, openSync, readSync, statfsSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Database, RootDatabase } from 'lmdb';
import { shardsDefault } from '../schema/limits.js';
import { closeLmdb, openLmdb, writeFailure } from '../lib/lmdb.js';
import { isValidShardCount } from '../schema/section.js';

/** Memory for the newest spooled batches (~10 s of a full rack's batches). */
const recentBytesMax = 16 * 1024 * 1024;

export interface SpoolEntry {
  seq: number;
  bytes: Uint8Array;
}

export interface SpoolOptions {
  /** The spool's byte bound (--spool-bytes); beyond it the oldest batch is dropped and counted. */
  bytesMax: number;
  /** Free file-system bytes kept: below it, batches are held in memory instead of written. */
  reserveBytes: number;
  /** Batches held in memory while the disk refuses; beyond it the oldest is dropped and counted. */
  memoryBytesMax: number;
}

/** Room beyond a write's own bytes that a refusing spool waits for (LMDB's pages, its meta writes). */
const roomSlackBytes = 256 * 1024;
/** How often the free space is read (a statfs per batch would be wasted work). */
const freeSpaceCheckMs = 1000;
/** The file a refusing spool keeps its delivered-through second in (see the top of this file). */
const markFile = 'delivered-through';

/** The mark's 16 bytes: the second twice (a torn or foreign file reads as no mark). */
function encodeMark(second: number): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setFloat64(0, second, true);
  v.setFloat64(8, second, true);
  return b;
}

/** The second a mark file holds, or -1 when it is missing, short or torn. */
function readMark(path: string): number {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return -1;
  }
  try {
    const b = new Uint8Array(16);
    if (readSync(fd, b, 0, 16, 0) !== 16) return -1;
    const v = new DataView(b.buffer);
    const a = v.getFloat64(0, true);
    return a === v.getFloat64(8, true) && Number.isInteger(a) && a >= -1 ? a : -1;
  } finally {
    closeSync(fd);
  }
}

/**
 * Batch numbers reserved on disk at a time (Spool.takeSeq): a synced write per 64 batches, and a
 * reopen goes on after the reserved numbers (a gap of < 64, far inside the core's de-duplication
 * window of 4,096 numbers, so batches still held are not taken for old ones).
 */
export const seqReserveBlock = 64;

export class Spool {
  private readonly root: RootDatabase;
  private readonly batches: Database<Uint8Array, number>;
  private readonly meta: Database<number, string>;
  private bytesHeld = 0;
  private count = 0;
  /** Batches written by this process and not yet removed: sent without reading them back. */
  private readonly recent = new Map<number, Uint8Array>();
  private recentBytes = 0;
  private nextSeq: number;
  /** Newest second of a batch written here (kept with each write): where a restarted rack resumes. */
  closedThrough: number;
  /**
   * Seconds of the batches held in memory (not late ones), by number: while any is held, a
   * restart resumes before the oldest, which the core may not have yet.
   */
  private readonly unwrittenSeconds = new Map<number, number>();
  /** The delivered-through file, opened when the spool opens (null: it could not be made). */
  private mark: FileHandle | null = null;
  private markOpening: Promise<void>;
  /** The second the mark file holds (or is being written with). */
  private markSecond: number;
  private markWrite: Promise<void> = Promise.resolve();
  /** Writes of the mark file that failed (counted with writeErrors as well). */
  markWriteErrors = 0;
  /**
   * Random non-zero id of this spool's sequence numbers, made when the spool has none (a new or
   * emptied directory). The core de-duplicates by (rack, session, seq): a rack restarted on a
   * new spool starts again at seq 1, and only a new session keeps the core from taking those
   * bodies for duplicates of the old spool's.
   */
  session: number;
  /**
   * Numbers below this may have been handed out (persisted before any is): a rack restarted
   * after batches went out from memory only (the disk refusing them, so nextSeq was not written
   * with them) must not number new batches as those, which the core took and would drop as
   * duplicates. Reserved seqReserveBlock at a time.
   */
  private seqReserved: number;
  /** Sessions changed because a reservation could not be written (the disk full): counted. */
  sessionRotations = 0;
  private shardCount: number;
  private metaWrite: Promise<void> = Promise.resolve();
  /** Batches the disk refused, by number (ascending: numbers are taken in order). */
  private readonly unwritten = new Map<number, Uint8Array>();
  private unwrittenBytes = 0;
  private diskChecked = { atMs: 0, low: false };
  /** Oldest batches dropped: beyond the spool bound, or beyond the memory bound while the disk refuses. */
  droppedBatches = 0;
  droppedBytes = 0;
  droppedInMemory = 0;
  /** Writes that failed (e.g. ENOSPC), and batches not written because free space was below the reserve. */
  writeErrors = 0;
  diskLowBatches = 0;
  private refusing = false;
  private movingToDisk = false;
  /** Acknowledged batches whose removal the disk refused: skipped, removed once it has room
   *  (after a restart they would be sent again, and the core de-duplicates them). */
  private readonly removeFailed = new Set<number>();
  /** Removals in flight (their batch is still readable until the commit). */
  private readonly removing = new Set<number>();
  readonly bytesMax: number;

  constructor(
    readonly dir: string,
    private readonly opts: SpoolOptions,
  ) {
    this.bytesMax = opts.bytesMax;
    // Room for the bound plus LMDB's own overhead (free pages, B-tree, copy-on-write).
    this.root = openLmdb({ path: dir, mapSize: Math.max(64 * 1024 * 1024, opts.bytesMax * 2 + 64 * 1024 * 1024), maxDbs: 4 });
    this.batches = this.root.openDB<Uint8Array, number>({ name: 'batches', encoding: 'binary' });
    this.meta = this.root.openDB<number, string>({ name: 'meta', encoding: 'json' });
    for (const { value } of this.batches.getRange()) {
      this.bytesHeld += value.length;
      this.count++;
    }
    // Batch numbers never repeat across restarts: the core de-duplicates by (rack, batch_seq).
    const last = [...this.batches.getKeys({ reverse: true, limit: 1 })][0] ?? 0;
    this.nextSeq = Math.max(this.meta.get('nextSeq') ?? 1, this.meta.get('seqReserved') ?? 1, last + 1);
    this.seqReserved = this.nextSeq;
    // The mark is newer than meta's closedThrough when the disk refused the last batches' writes.
    this.closedThrough = Math.max(this.meta.get('closedThrough') ?? -1, readMark(join(dir, markFile)));
    this.markSecond = this.closedThrough;
    this.markOpening = this.openMark();
    const session = this.meta.get('session');
    this.session = session !== undefined && Number.isInteger(session) && session > 0 && session < 2 ** 32 ? session : randomInt(1, 2 ** 32);
    const shards = this.meta.get('shards');
    this.shardCount = shards !== undefined && isValidShardCount(shards) ? shards : shardsDefault;
    // Written now (and with every batch): a session must be durable before a body carries it.
    if (session !== this.session) this.metaWrite = this.persistMeta();
  }

  /** Makes the mark file now, while the disk is likely to have room (its blocks are then overwritten in place). */
  private async openMark(): Promise<void> {
    const path = join(this.dir, markFile);
    try {
      const fd = openSync(path, 'a+');
      closeSync(fd);
      const handle = await open(path, 'r+');
      await handle.write(encodeMark(this.markSecond), 0, 16, 0);
      await handle.datasync();
      this.mark = handle;
    } catch (err) {
      this.markWriteErrors++;
      console.error(`rack spool: cannot make ${path}: ${(err as Error).message}; a restart while the disk refuses writes may ask edges again for seconds already delivered`);
    }
  }

  /**
   * While batches are held in memory or the disk refuses: the newest second whose every batch is
   * on disk or acknowledged goes to the mark file (meta cannot be written then).
   */
  private noteDelivered(): void {
    if (!this.refusing && this.unwritten.size === 0) return;
    const safe = this.resumeAfter();
    if (safe <= this.markSecond) return;
    this.markSecond = safe;
    this.markWrite = this.markWrite.then(async () => {
      await this.markOpening;
      if (this.mark === null || this.markSecond !== safe) return;
      try {
        await this.mark.write(encodeMark(safe), 0, 16, 0);
        await this.mark.datasync();
      } catch (err) {
        this.markWriteErrors++;
        this.writeErrors++;
        writeFailure(err);
      }
    });
  }

  /**
   * Where a restart resumes: closedThrough, but before any second held only in memory (not late;
   * `writing`: batches being written with it, which do not hold it back).
   */
  private resumeAfter(writing?: ReadonlySet<number>): number {
    let safe = this.closedThrough;
    for (const [seq, second] of this.unwrittenSeconds) if (!writing?.has(seq) && second - 1 < safe) safe = second - 1;
    return safe;
  }

  /** Forgets a batch held in memory (written, acknowledged or dropped). */
  private forgetUnwritten(seq: number, bytes: Uint8Array): void {
    this.unwritten.delete(seq);
    this.unwrittenBytes -= bytes.length;
    this.unwrittenSeconds.delete(seq);
  }

  /** Shards the core last said it has (DESIGN §9), or shardsDefault until it ever said. */
  get shards(): number {
    return this.shardCount;
  }

  /** Records a shard count the core gave (GET /api/v1/placement, or a 409 shards_mismatch). */
  async setShards(shards: number): Promise<void> {
    if (!isValidShardCount(shards)) throw new Error(`BUG: shards ${shards} is not a power of two`);
    if (shards === this.shardCount) return;
    this.shardCount = shards;
    await (this.metaWrite = this.persistMeta());
  }

  /** Writes session and shards; a refused write is counted and repeated with the next batch. */
  private async persistMeta(): Promise<void> {
    try {
      await this.root.transaction(() => {
        this.meta.put('session', this.session);
        // With the numbers reserved under it: a session taken in memory (takeSeq) is written
        // only together with what covers the numbers it handed out.
        this.meta.put('seqReserved', this.seqReserved);
        this.meta.put('shards', this.shardCount);
      });
    } catch (err) {
      this.writeErrors++;
      writeFailure(err);
    }
  }

  get heldBytes(): number {
    return this.bytesHeld + this.unwrittenBytes;
  }

  get heldBatches(): number {
    return this.count + this.unwritten.size;
  }

  /** Batches held only in memory because the disk refused them (lost if the rack dies). */
  get memoryBatches(): number {
    return this.unwritten.size;
  }

  get memoryBytes(): number {
    return this.unwrittenBytes;
  }

  /**
   * The next batch number. Numbers are reserved on disk a block at a time before one is handed
   * out (a tiny synced write, one per seqReserveBlock batches). When even that write fails (a
   * full disk), this spool takes a new session, in memory: a restart then reuses the old
   * session only with numbers never handed out under it.
   */
  takeSeq(): number {
    if (this.nextSeq >= this.seqReserved) {
      const reserved = this.nextSeq + seqReserveBlock;
      // Not into a disk known to refuse (lmdb-js retrying commits into a full file system
      // corrupted its heap: see write()); a new session needs no write.
      let why = this.refusing || this.diskLow() ? 'the disk is full or below its reserve' : null;
      if (why === null) {
        try {
          this.root.transactionSync(() => this.meta.put('seqReserved', reserved));
        } catch (err) {
          this.writeErrors++;
          why = writeFailure(err);
        }
      }
      if (why !== null) {
        this.session = randomInt(1, 2 ** 32);
        this.sessionRotations++;
        console.error(`rack spool: cannot reserve batch numbers in ${this.dir} (${why}); batches go out under a new session ${this.session.toString(16)}, which a restart does not reuse`);
      }
      this.seqReserved = reserved;
    }
    return this.nextSeq++;
  }

  /**
   * Stores a batch durably, or in memory while the disk refuses (then true as well: it is still
   * forwarded); drops the oldest while over a bound. False only for a batch dropped at once.
   */
  async put(seq: number, bytes: Uint8Array, second?: number): Promise<boolean> {
    if (this.unwritten.size > 0 || this.diskLow()) {
      this.hold(seq, bytes, second);
      await this.writeUnwritten();
      const kept = this.boundMemory(seq);
      this.noteDelivered();
      return kept;
    }
    if (this.removeFailed.size > 0) await this.retryRemovals();
    if (!this.roomFor(bytes.length) || !(await this.write([[seq, bytes]]))) {
      this.hold(seq, bytes, second);
      const kept = this.boundMemory(seq);
      this.noteDelivered();
      return kept;
    }
    this.noteWritten(seq, bytes);
    await this.boundDisk(seq);
    return true;
  }

  /** A batch held in memory; `second` (not for late batches) keeps a restart from resuming past it. */
  private hold(seq: number, bytes: Uint8Array, second: number | undefined): void {
    this.unwritten.set(seq, bytes);
    this.unwrittenBytes += bytes.length;
    if (second !== undefined) this.unwrittenSeconds.set(seq, second);
  }

  /** One transaction; false (counted, logged once per episode) when the disk refuses it. */
  private async write(entries: [number, Uint8Array][]): Promise<boolean> {
    // Where a restart resumes, as of now (the transaction runs on a later turn, when seconds held
    // only in memory may have closed): before any second held in memory and not in this write.
    const closedThrough = this.unwrittenSeconds.size === 0 ? this.closedThrough : this.resumeAfter(new Set(entries.map(([seq]) => seq)));
    try {
      await this.root.transaction(() => {
        for (const [seq, bytes] of entries) this.batches.put(seq, bytes);
        this.meta.put('nextSeq', this.nextSeq);
        this.meta.put('closedThrough', closedThrough);
        this.meta.put('session', this.session);
        this.meta.put('seqReserved', this.seqReserved);
        this.meta.put('shards', this.shardCount);
      });
      if (this.refusing) console.error(`rack spool: ${this.dir} accepts writes again; ${this.unwritten.size} batches held in memory move to disk`);
      this.refusing = false;
      return true;
    } catch (err) {
      this.writeErrors++;
      const why = writeFailure(err);
      if (!this.refusing) console.error(`rack spool: cannot write to ${this.dir}: ${why}; holding batches in memory (up to ${this.opts.memoryBytesMax} B) and retrying; free disk space`);
      this.refusing = true;
      return false;
    }
  }

  /** Moves batches held in memory to disk once it has room (oldest first, all in one go). */
  private async writeUnwritten(): Promise<void> {
    if (this.movingToDisk || this.unwritten.size === 0 || this.diskLow() || !this.roomFor(this.unwrittenBytes)) return;
    this.movingToDisk = true;
    try {
      await this.moveToDisk();
    } finally {
      this.movingToDisk = false;
    }
  }

  private async moveToDisk(): Promise<void> {
    await this.retryRemovals();
    const entries = [...this.unwritten];
    if (!(await this.write(entries))) return;
    // Every entry leaves memory at once, before any await: while one was both on disk and in
    // memory, oldest() listed it twice, it was sent twice, and a copy sent after a newer session's
    // batch was stored twice by the core (and a second removal made the spool's counts negative).
    const rewrites: [number, Uint8Array][] = [];
    const removals: number[] = [];
    for (const [seq, bytes] of entries) {
      const now = this.unwritten.get(seq);
      if (now !== undefined) {
        this.forgetUnwritten(seq, now);
        this.noteWritten(seq, now);
        // Replaced (re-cut) while its old bytes were being written: the new ones over them.
        if (now !== bytes) rewrites.push([seq, now]);
      } else {
        // Acknowledged by the core while the write was in flight: written, then removed (no reader lists it meanwhile).
        this.removing.add(seq);
        removals.push(seq);
      }
    }
    // Unless acknowledged meanwhile (its removal came first: writing it again would bring it back).
    for (const [seq, now] of rewrites) if (this.recent.get(seq) === now && !this.removing.has(seq)) await this.rewrite(seq, now);
    for (const seq of removals) {
      await this.removeFromDisk(seq);
      this.removing.delete(seq);
    }
    await this.boundDisk(entries[entries.length - 1]![0]);
  }

  /**
   * After a write failed, whether the file system has room for `bytes` more now (statfs, every
   * time while refusing; always true otherwise). LMDB is not asked again until it has: lmdb-js
   * retrying a commit into a full file system corrupted its heap (a garbage buffer size, then
   * malloc() aborted the process) — one failure is survivable, a run of them was not.
   */
  private roomFor(bytes: number): boolean {
    if (!this.refusing) return true;
    try {
      const fs = statfsSync(this.dir);
      return fs.bavail * fs.bsize >= bytes + roomSlackBytes;
    } catch {
      return true; // statfs unsupported: the write itself says
    }
  }

  /** Free space below the reserve: checked at most once a second (statfs). */
  private diskLow(nowMs = Date.now()): boolean {
    if (nowMs - this.diskChecked.atMs < freeSpaceCheckMs) return this.diskChecked.low;
    let low = false;
    try {
      const fs = statfsSync(this.dir);
      low = fs.bavail * fs.bsize < this.opts.reserveBytes;
    } catch {
      // statfs unsupported: write errors still move batches to memory.
    }
    if (low && !this.diskChecked.low) console.error(`rack spool: ${this.dir} has less than ${this.opts.reserveBytes} B free; holding batches in memory (up to ${this.opts.memoryBytesMax} B); free disk space`);
    this.diskChecked = { atMs: nowMs, low };
    if (low) this.diskLowBatches++;
    return low;
  }

  private boundMemory(seq: number): boolean {
    while (this.unwrittenBytes > this.opts.memoryBytesMax && this.unwritten.size > 0) {
      const [oldest, bytes] = this.unwritten.entries().next().value!;
      this.forgetUnwritten(oldest, bytes);
      this.droppedBatches++;
      this.droppedBytes += bytes.length;
      this.droppedInMemory++;
      if (oldest === seq) return false;
    }
    return true;
  }

  private noteWritten(seq: number, bytes: Uint8Array): void {
    this.bytesHeld += bytes.length;
    this.count++;
    this.remember(seq, bytes);
  }

  /** Keeps the newest batches in memory (bounded) so that forwarding them costs no read. */
  private remember(seq: number, bytes: Uint8Array): void {
    const before = this.recent.get(seq);
    if (before !== undefined) this.recentBytes -= before.length;
    this.recent.set(seq, bytes);
    this.recentBytes += bytes.length;
    for (const [k, v] of this.recent) {
      if (this.recentBytes <= recentBytesMax) break;
      this.recent.delete(k);
      this.recentBytes -= v.length;
    }
  }

  private async boundDisk(seq: number): Promise<void> {
    while (this.bytesHeld > this.bytesMax && this.count > 1) {
      const oldest = this.oldest(1)[0];
      if (oldest === undefined || oldest.seq === seq) break;
      this.droppedBatches++;
      this.droppedBytes += oldest.bytes.length;
      await this.remove(oldest.seq);
    }
  }

  /** Up to `limit` oldest batches, in order, skipping numbers in `exclude` (disk and memory merged). */
  oldest(limit: number, exclude?: ReadonlySet<number>): SpoolEntry[] {
    const out: SpoolEntry[] = [];
    for (const key of this.batches.getKeys()) {
      // (A key still in memory is on its way to disk: listed once, from memory, below.)
      if (exclude?.has(key) || this.removeFailed.has(key) || this.removing.has(key) || this.unwritten.has(key)) continue;
      const bytes = this.recent.get(key) ?? this.batches.get(key);
      if (bytes !== undefined) out.push({ seq: key, bytes });
      if (out.length >= limit) break;
    }
    if (this.unwritten.size === 0) return out;
    for (const [seq, bytes] of this.unwritten) if (!exclude?.has(seq)) out.push({ seq, bytes });
    return out.sort((a, b) => a.seq - b.seq).slice(0, limit);
  }

  /**
   * Replaces a held batch's bytes (a body re-cut for a new shard count). A batch removed
   * meanwhile stays removed; when the disk refuses, memory serves the new bytes and the disk
   * keeps the old ones (re-cut again if read back).
   */
  async replace(seq: number, bytes: Uint8Array): Promise<void> {
    const held = this.unwritten.get(seq);
    if (held !== undefined) {
      this.unwritten.set(seq, bytes);
      this.unwrittenBytes += bytes.length - held.length;
      return;
    }
    if (this.removing.has(seq) || this.removeFailed.has(seq)) return;
    const old = this.recent.get(seq) ?? this.batches.get(seq);
    if (old === undefined) return;
    // Accounting first, as remove() does: a removal racing the write subtracts the new size.
    this.bytesHeld += bytes.length - old.length;
    this.remember(seq, bytes);
    await this.rewrite(seq, bytes);
  }

  /** A held batch's new bytes on disk; when the disk refuses, memory (`recent`) serves them and the disk keeps the old. */
  private async rewrite(seq: number, bytes: Uint8Array): Promise<void> {
    try {
      await this.batches.put(seq, bytes);
    } catch (err) {
      this.writeErrors++;
      writeFailure(err);
    }
  }

  /**
   * Replaces a held batch by the first of its re-cut bodies and adds the others under their own
   * numbers, all in one transaction: a crash or a refused write leaves the old batch alone, never
   * the old batch beside some of the new ones (re-cut again, those would be sent twice, under new
   * numbers the core cannot see as copies). 'refused': nothing written (the disk refuses; try
   * again later); 'gone': the batch was removed meanwhile. A batch held in memory only is
   * replaced there, its new bodies beside it (lost with the process either way).
   */
  async replaceSplit(seq: number, first: Uint8Array, more: readonly { seq: number; bytes: Uint8Array }[]): Promise<'written' | 'refused' | 'gone'> {
    const held = this.unwritten.get(seq);
    if (held !== undefined) {
      // Being moved to disk right now (the old bytes): replaced after, not under, that write.
      if (this.movingToDisk) return 'refused';
      this.unwritten.set(seq, first);
      this.unwrittenBytes += first.length - held.length;
      for (const m of more) this.hold(m.seq, m.bytes, this.unwrittenSeconds.get(seq));
      // The memory bound holds for the new bodies too (the oldest held go first, counted).
      this.boundMemory(-1);
      return 'written';
    }
    if (this.removing.has(seq) || this.removeFailed.has(seq)) return 'gone';
    const old = this.recent.get(seq) ?? this.batches.get(seq);
    if (old === undefined) return 'gone';
    let bytes = first.length;
    for (const m of more) bytes += m.bytes.length;
    if (this.diskLow() || !this.roomFor(bytes)) return 'refused';
    // Accounting first, as replace() does: a removal racing the write subtracts the new size.
    this.bytesHeld += first.length - old.length;
    this.remember(seq, first);
    try {
      await this.root.transaction(() => {
        this.batches.put(seq, first);
        for (const m of more) this.batches.put(m.seq, m.bytes);
        this.meta.put('nextSeq', this.nextSeq);
        this.meta.put('seqReserved', this.seqReserved);
      });
    } catch (err) {
      this.writeErrors++;
      writeFailure(err);
      this.refusing = true;
      // Undone only while the batch is still held: a removal racing the write subtracted the new size already.
      if (!this.removing.has(seq) && !this.removeFailed.has(seq) && this.recent.get(seq) === first) {
        this.bytesHeld -= first.length - old.length;
        this.remember(seq, old);
      }
      return 'refused';
    }
    for (const m of more) this.noteWritten(m.seq, m.bytes);
    return 'written';
  }

  /** Whether a write to disk would be tried now (not below the reserve, not refusing for lack of room). */
  writable(): boolean {
    return !this.diskLow() && this.roomFor(0);
  }

  /** Removes an acknowledged (or dropped) batch; a second call for the same number does nothing. */
  async remove(seq: number): Promise<void> {
    const held = this.unwritten.get(seq);
    if (held !== undefined) {
      this.forgetUnwritten(seq, held);
      this.noteDelivered();
      return;
    }
    if (this.removing.has(seq) || this.removeFailed.has(seq)) return;
    const cached = this.recent.get(seq);
    const size = cached?.length ?? this.batches.get(seq)?.length;
    if (size === undefined) return;
    if (cached !== undefined) {
      this.recent.delete(seq);
      this.recentBytes -= size;
    }
    this.bytesHeld -= size;
    this.count--;
    this.removing.add(seq);
    await this.removeFromDisk(seq);
    this.removing.delete(seq);
  }

  /** Deletes the batch from LMDB; when the disk refuses, it is skipped and deleted later. */
  private async removeFromDisk(seq: number): Promise<void> {
    if (!this.roomFor(0)) {
      this.removeFailed.add(seq);
      return;
    }
    try {
      await this.batches.remove(seq);
    } catch (err) {
      this.writeErrors++;
      writeFailure(err);
      this.removeFailed.add(seq);
    }
  }

  private async retryRemovals(): Promise<void> {
    if (!this.roomFor(0)) return;
    for (const seq of [...this.removeFailed]) {
      try {
        await this.batches.remove(seq);
        this.removeFailed.delete(seq);
      } catch (err) {
        writeFailure(err);
        return;
      }
    }
  }

  async close(): Promise<void> {
    await this.metaWrite;
    this.diskChecked.atMs = 0;
    await this.writeUnwritten();
    if (this.unwritten.size > 0) console.error(`rack spool: ${this.unwritten.size} batches (${this.unwrittenBytes} B) held in memory could not be written to ${this.dir} and are lost with this process`);
    await this.markOpening;
    await this.markWrite;
    await this.mark?.close();
    await closeLmdb(this.root, `rack spool ${this.dir}`);
  }
}
