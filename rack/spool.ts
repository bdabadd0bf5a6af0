// The rack's on-disk spool (issue 3): every closed batch is written here before it is sent,
// and leaves only once the core acknowledged it, so a core outage or a rack crash loses
// nothing that was spooled. Bounded by bytes: once full, the oldest batch is dropped and counted.

import { open, type Database, type RootDatabase } from 'lmdb';

/** Memory for the newest spooled batches (~10 s of a full rack's batches). */
const recentBytesMax = 16 * 1024 * 1024;

export interface SpoolEntry {
  seq: number;
  bytes: Uint8Array;
}

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
  droppedBatches = 0;
  droppedBytes = 0;
  writeErrors = 0;

  constructor(
    readonly dir: string,
    readonly bytesMax: number,
  ) {
    // Room for the bound plus LMDB's own overhead (free pages, B-tree, copy-on-write).
    this.root = open({ path: dir, mapSize: Math.max(64 * 1024 * 1024, bytesMax * 2 + 64 * 1024 * 1024), maxDbs: 4 });
    this.batches = this.root.openDB<Uint8Array, number>({ name: 'batches', encoding: 'binary' });
    this.meta = this.root.openDB<number, string>({ name: 'meta', encoding: 'json' });
    for (const { value } of this.batches.getRange()) {
      this.bytesHeld += value.length;
      this.count++;
    }
    // Batch numbers never repeat across restarts: the core de-duplicates by (rack, batch_seq).
    const last = [...this.batches.getKeys({ reverse: true, limit: 1 })][0] ?? 0;
    this.nextSeq = Math.max(this.meta.get('nextSeq') ?? 1, last + 1);
  }

  get heldBytes(): number {
    return this.bytesHeld;
  }

  get heldBatches(): number {
    return this.count;
  }

  /** Reserves the next batch number (persisted with the next put). */
  takeSeq(): number {
    return this.nextSeq++;
  }

  /** Durably stores a batch; drops the oldest while over the byte bound. */
  async put(seq: number, bytes: Uint8Array): Promise<boolean> {
    try {
      await this.root.transaction(() => {
        this.batches.put(seq, bytes);
        this.meta.put('nextSeq', this.nextSeq);
      });
    } catch (err) {
      this.writeErrors++;
      console.error(`rack spool: cannot write batch ${seq} (${bytes.length} B) to ${this.dir}: ${(err as Error).message}; it is dropped and counted`);
      return false;
    }
    this.bytesHeld += bytes.length;
    this.count++;
    // Keep the newest batches in memory (bounded) so that forwarding them costs no read.
    this.recent.set(seq, bytes);
    this.recentBytes += bytes.length;
    for (const [k, v] of this.recent) {
      if (this.recentBytes <= recentBytesMax) break;
      this.recent.delete(k);
      this.recentBytes -= v.length;
    }
    while (this.bytesHeld > this.bytesMax && this.count > 1) {
      const oldest = this.oldest(1)[0];
      if (oldest === undefined || oldest.seq === seq) break;
      this.droppedBatches++;
      this.droppedBytes += oldest.bytes.length;
      await this.remove(oldest.seq);
    }
    return true;
  }

  /** Up to `limit` oldest batches, in order, skipping numbers in `exclude`. */
  oldest(limit: number, exclude?: ReadonlySet<number>): SpoolEntry[] {
    const out: SpoolEntry[] = [];
    for (const key of this.batches.getKeys()) {
      if (exclude?.has(key)) continue;
      const bytes = this.recent.get(key) ?? this.batches.get(key);
      if (bytes !== undefined) out.push({ seq: key, bytes });
      if (out.length >= limit) break;
    }
    return out;
  }

  async remove(seq: number): Promise<void> {
    const cached = this.recent.get(seq);
    const size = cached?.length ?? this.batches.get(seq)?.length;
    if (size === undefined) return;
    if (cached !== undefined) {
      this.recent.delete(seq);
      this.recentBytes -= size;
    }
    await this.batches.remove(seq);
    this.bytesHeld -= size;
    this.count--;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
