// De-duplication of rack sections per shard (DESIGN §9, issue 12): for each (shard, rack) the
// rack's current session, the highest seq seen and a bitmap of the `windowSeqs` seqs below it.
// A rack sends in order with a few requests in flight, so a retried request is either the
// high-water mark or within the window; one older than the window is treated as already seen
// (counted). Bounded by shards × racks, never by time. A rack started on an empty spool picks a
// new session: its seq 1 is new, not a duplicate of the old session's seq 1.

import type { Database } from 'lmdb';

/** Seqs below the high-water mark whose arrival is remembered (a rack retries far fewer out of order). */
export const windowSeqs = 4096;
const windowBytes = windowSeqs / 8;
/** Entries one store's table holds at most: ~530 B each, 64 MiB. */
export const dedupEntriesMax = 131_072;

interface Entry {
  session: number;
  hwm: number;
  bits: Uint8Array;
}

export class Dedup {
  private readonly entries = new Map<string, Entry>();
  /** Keys changed since the last persist() (evicted ones are removed then). */
  private readonly dirty = new Set<string>();
  readonly counters = { too_old: 0, sessions_replaced: 0, evicted: 0 };

  /** Entries held: one per (shard, rack, origin) in use, least recently marked evicted first. */
  private readonly entriesMax: number;

  /**
   * `racksMax` racks may each send to every one of `shards` shards of this store: the table
   * holds that many (it held racksMax × 4, whatever the shards: with 32 shards a store evicted
   * active racks from 1,250 racks on, and their retried requests were stored twice), up to
   * dedupEntriesMax (64 MiB of windows).
   */
  constructor(
    private readonly db: Database<Buffer, Buffer>,
    opts: { racksMax: number; shards?: number },
  ) {
    this.entriesMax = Math.min(dedupEntriesMax, Math.max(4, opts.racksMax * Math.max(4, opts.shards ?? 4)));
    for (const { key, value } of db.getRange()) {
      const e = decode(value);
      if (e !== null) this.entries.set(key.toString('latin1'), e);
    }
  }

  get size(): number {
    return this.entries.size;
  }

  /** True when (rack, session, seq) of this origin is already stored for this shard. */
  seen(shard: number, rack: string, origin: number, session: number, seq: number): boolean {
    const e = this.entries.get(entryKey(shard, rack, origin));
    if (e === undefined || e.session !== session || seq > e.hwm) return false;
    if (e.hwm - seq >= windowSeqs) {
      this.counters.too_old++;
      return true;
    }
    return (e.bits[(seq % windowSeqs) >>> 3]! & (1 << (seq & 7))) !== 0;
  }

  /** Records (rack, session, seq) as stored, in memory; persist() writes it in the storing transaction. */
  mark(shard: number, rack: string, origin: number, session: number, seq: number): void {
    const k = entryKey(shard, rack, origin);
    let e = this.entries.get(k);
    if (e !== undefined) {
      // Least recently marked first in the map's order: the entry moves to its end.
      this.entries.delete(k);
      this.entries.set(k, e);
    }
    if (e === undefined || e.session !== session) {
      if (e !== undefined) this.counters.sessions_replaced++;
      else if (this.entries.size >= this.entriesMax) this.evictOne();
      e = { session, hwm: seq, bits: new Uint8Array(windowBytes) };
      this.entries.set(k, e);
    } else if (seq > e.hwm) {
      // Slide the window: seqs hwm+1 .. seq−1 have not arrived (yet).
      if (seq - e.hwm >= windowSeqs) e.bits.fill(0);
      else for (let s = e.hwm + 1; s < seq; s++) e.bits[(s % windowSeqs) >>> 3]! &= ~(1 << (s & 7));
      e.hwm = seq;
    }
    e.bits[(seq % windowSeqs) >>> 3]! |= 1 << (seq & 7);
    this.dirty.add(k);
  }

  /** Writes what mark() changed (call inside the transaction that stores the sections). */
  persist(): void {
    for (const k of this.dirty) {
      const e = this.entries.get(k);
      if (e === undefined) void this.db.remove(Buffer.from(k, 'latin1'));
      else void this.db.put(Buffer.from(k, 'latin1'), encode(e));
    }
  }

  /** The transaction that persisted the marks committed. */
  committed(): void {
    this.dirty.clear();
  }

  /** After a failed commit: what mark() changed comes back from storage. */
  rollback(): void {
    for (const k of this.dirty) {
      const v = this.db.get(Buffer.from(k, 'latin1'));
      const e = v === undefined ? null : decode(v);
      if (e === null) this.entries.delete(k);
      else this.entries.set(k, e);
    }
    this.dirty.clear();
  }

  /**
   * Forgets a shard's entries in memory (its marks on disk are being replaced: a shard restored
   * from another node, core/snapshot.ts). Call between commits (nothing of the shard is dirty then).
   */
  forgetShard(shard: number): void {
    const prefix = String.fromCharCode(shard >>> 8, shard & 0xff);
    for (const k of this.entries.keys()) {
      if (!k.startsWith(prefix)) continue;
      this.entries.delete(k);
      this.dirty.delete(k);
    }
  }

  /**
   * Takes in an entry as another node stored it (its key and value bytes; a restored shard's
   * marks, which the caller writes to disk); false when the value is not an entry.
   */
  adopt(key: Buffer, value: Buffer): boolean {
    const e = decode(value);
    if (e === null) return false;
    const k = key.toString('latin1');
    if (!this.entries.has(k) && this.entries.size >= this.entriesMax) this.evictOne();
    this.entries.set(k, e);
    return true;
  }

  private evictOne(): void {
    const k = this.entries.keys().next().value;
    if (k === undefined) return;
    this.entries.delete(k);
    this.dirty.add(k);
    this.counters.evicted++;
  }
}

/**
 * Shard first, so a shard's marks are one key range (copied with the shard). An import's marks
 * are apart from its rack's (a NUL and the origin after the rack id, which never holds a NUL):
 * an import into rack r1 while r1 sends live keeps r1's window whole.
 */
function entryKey(shard: number, rack: string, origin: number): string {
  return String.fromCharCode(shard >>> 8, shard & 0xff) + rack + (origin === 0 ? '' : `\0${origin}`);
}

function encode(e: Entry): Buffer {
  const b = Buffer.allocUnsafe(12 + windowBytes);
  b.writeUInt32LE(e.session, 0);
  b.writeDoubleLE(e.hwm, 4);
  b.set(e.bits, 12);
  return b;
}

function decode(v: Buffer): Entry | null {
  if (v.length !== 12 + windowBytes) return null;
  return { session: v.readUInt32LE(0), hwm: v.readDoubleLE(4), bits: Uint8Array.from(v.subarray(12)) };
}
