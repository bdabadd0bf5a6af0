// Which stored rows one metric has in one block, and where their bytes are (issue 14): a read of
// a few servers spread over many racks (40 servers in 25 racks: 250 rows for 10 minutes) passed
// an LMDB cursor and a pointer lookup per row, then read each row's server ids and directory
// again, for one or two of its servers — together about a quarter of the query. A store keeps,
// per (shard, metric, block), the rows' keys and pointers and, once a row is decoded, its header
// (core/block.ts RowHeader), as VictoriaMetrics keeps its blocks' headers in memory.
//
// Never stale: a directory is taken at the store's row epoch (core/rowversions.ts) and used only
// while its block has no later change (a row written or merged, a retention sweep, a shard
// restored or wiped); a pointer names bytes that never change once written (a row group chunk),
// so a header kept for it stays true. Bounded in bytes (rows and the headers kept with them),
// least recently used first out.

import type { HeaderSlot, RowHeader } from './block.js';

/** One stored row of a directory: its rack, key and value (a pointer, or the row inline). */
export interface DirectoryRow extends HeaderSlot {
  rackId: number;
  /** The row's key (its own copy). */
  key: Buffer;
  /** The row's value as stored: a pointer into row groups (19 B), or an old row inline (read by key again). */
  pointer: Uint8Array | null;
  walSeq: number;
  header: RowHeader | null;
  /**
   * The row's bytes (after the WAL seq), its own copy, once a reader of a kept directory has read
   * them: the next reader neither looks up its row group chunk nor copies a row spanning two (a
   * sixth of a query over 40 servers in 25 racks, issue 14). They never change while the
   * directory is kept (a pointer names bytes written once; a row rewritten moves its block's version).
   */
  bytes: Uint8Array | null;
}

export interface Directory {
  epoch: number;
  rows: DirectoryRow[];
  /** Its bytes: rows, and the headers kept so far (counted as they are read). */
  bytes: number;
}

export interface RowDirectoryCounters {
  row_directory_hits: number;
  row_directory_misses: number;
  row_directory_evicted: number;
}

/** Bytes of directories a store keeps (~500 B a row, ~1.4 KB with the header of a row of 40 servers, plus its bytes once read: ~2 KB for 40 servers × 60 s of gauges). */
export const rowDirectoryBytesMax = 32 * 1024 * 1024;
/** What a row costs in a directory beside its header: the object, its key and pointer (each with storage of its own). Measured ~500 B. */
const rowBytes = 500;
/** What a directory costs beside its rows: its map entry, key text, object and array. */
const directoryBytes = 300;

export class RowDirectories {
  private readonly dirs = new Map<string, Directory>();
  /** Bytes held in all directories. */
  bytes = 0;

  constructor(
    private readonly counters: RowDirectoryCounters,
    readonly bytesMax = rowDirectoryBytesMax,
  ) {}

  static keyOf(shard: number, lo: number, hi: number, block: number): string {
    return `${shard}:${lo}:${hi}:${block}`;
  }

  /** The directory taken at an epoch at or after `version` (its block's last change), or undefined. */
  get(key: string, version: number): Directory | undefined {
    const d = this.dirs.get(key);
    if (d === undefined || d.epoch < version) {
      if (d !== undefined) this.drop(key, d);
      this.counters.row_directory_misses++;
      return undefined;
    }
    this.counters.row_directory_hits++;
    this.dirs.delete(key);
    this.dirs.set(key, d);
    return d;
  }

  /**
   * Keeps the rows of a block read at `epoch`; returns the directory, kept or not: one without
   * rows is not (a read over a range without data, a metric never sent: before, each such block
   * was kept, at no cost counted — 773,047 of them, 238 MB, for one query over a long range),
   * nor one past a tenth of the bound.
   */
  put(key: string, epoch: number, rows: DirectoryRow[]): Directory {
    const d: Directory = { epoch, rows, bytes: directoryBytes + rows.length * rowBytes };
    const old = this.dirs.get(key);
    if (old !== undefined) this.drop(key, old);
    if (rows.length === 0 || d.bytes > this.bytesMax / 10) return d;
    this.dirs.set(key, d);
    this.bytes += d.bytes;
    this.evict();
    return d;
  }

  /**
   * Whether `d` is the directory kept under `key` and may grow by `more` bytes: a directory stays
   * within a tenth of the bound, as one is put (a wide block's rows, e.g. racks of 1,000 servers,
   * are read again from their chunks; kept, one block's rows emptied the whole bound).
   */
  keeps(key: string, d: Directory, more: number): boolean {
    return this.dirs.get(key) === d && d.bytes + more <= this.bytesMax / 10;
  }

  /** A header or row bytes costing `bytes` were kept with a row of `d` (if d is still kept, it costs them). */
  grew(key: string, d: Directory, bytes: number): void {
    if (this.dirs.get(key) !== d) return;
    d.bytes += bytes;
    this.bytes += bytes;
    this.evict();
  }

  private evict(): void {
    for (const [k, d] of this.dirs) {
      if (this.bytes <= this.bytesMax) break;
      this.drop(k, d);
      this.counters.row_directory_evicted++;
    }
  }

  /** The directory under `key` goes (one of its rows is gone). */
  forget(key: string): void {
    const d = this.dirs.get(key);
    if (d !== undefined) this.drop(key, d);
  }

  /** Every directory goes (a shard restored or wiped: keys may name other bytes). */
  clear(): void {
    this.dirs.clear();
    this.bytes = 0;
  }

  get size(): number {
    return this.dirs.size;
  }

  private drop(key: string, d: Directory): void {
    this.dirs.delete(key);
    this.bytes -= d.bytes;
  }
}
