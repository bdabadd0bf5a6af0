// Decoded rows kept for stored queries (issue 14), which read the same blocks window after
// window: an LRU bounded in bytes. A row is found under its key and the WAL seq and length its
// stored value begins with, so a row rewritten by a merge (late data: a newer seq) is never
// served from an older decode; the old entry ages out.

import type { DecodedRow } from './block.js';

/**
 * Bytes of decoded rows a store keeps: a stored query over 1,000 servers reads 25 rack rows of
 * about 40 KB decoded per block, so this holds a few minutes of blocks of ~30 such queries'
 * metrics — small beside the head's budget.
 */
export const rowCacheBytesMax = 64 * 1024 * 1024;

export interface RowCacheCounters {
  row_cache_hits: number;
  row_cache_misses: number;
  row_cache_evicted: number;
}

export class RowCache {
  private readonly rows = new Map<string, { row: DecodedRow; bytes: number }>();
  /** Bytes held (the estimate of rowBytes). */
  bytes = 0;

  constructor(
    readonly bytesMax: number,
    private readonly counters: RowCacheCounters,
  ) {}

  /** The cache key of a stored row: its key and the WAL seq and length of its value. */
  static keyOf(key: Uint8Array, seq: number, valueBytes: number): string {
    return `${Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('latin1')}:${seq}:${valueBytes}`;
  }

  /** The row cached under `key` (now the most recently used), counted as a hit or a miss. */
  get(key: string): DecodedRow | undefined {
    const e = this.rows.get(key);
    if (e === undefined) {
      this.counters.row_cache_misses++;
      return undefined;
    }
    this.counters.row_cache_hits++;
    this.rows.delete(key);
    this.rows.set(key, e);
    return e.row;
  }

  /** Keeps a whole decoded row, evicting the least recently used beyond the bound (a row over an eighth of it is not kept). */
  put(key: string, row: DecodedRow, storedBytes: number): void {
    if (row.serversOmitted !== 0 || row.entries !== 'values') throw new Error('BUG: caching a partly decoded row');
    row = fitted(row);
    const bytes = rowBytes(row, storedBytes);
    if (bytes > this.bytesMax / 8) return;
    const old = this.rows.get(key);
    if (old !== undefined) {
      this.rows.delete(key);
      this.bytes -= old.bytes;
    }
    this.rows.set(key, { row, bytes });
    this.bytes += bytes;
    for (const [k, e] of this.rows) {
      if (this.bytes <= this.bytesMax) break;
      this.rows.delete(k);
      this.bytes -= e.bytes;
      this.counters.row_cache_evicted++;
    }
  }

  get size(): number {
    return this.rows.size;
  }
}

/** A view that owns its whole buffer (a copy when it views part of a larger one). */
function fit<T extends Uint16Array | Uint32Array | Int32Array | Float64Array>(a: T): T {
  return a.byteLength === a.buffer.byteLength ? a : (a.slice() as T);
}

/**
 * The row with its columns copied to their used lengths: a decode sizes them for every
 * server-second of the row, so a sparse row kept as decoded held up to ~15× the bytes its views
 * show (and the bound counts).
 */
function fitted(row: DecodedRow): DecodedRow {
  const summaries = (c: DecodedRow['dist']) => ({ ...c, secs: fit(c.secs), count: fit(c.count), sum: fit(c.sum), min: fit(c.min), max: fit(c.max), sketchStart: fit(c.sketchStart), sketchEnd: fit(c.sketchEnd) });
  return { ...row, serverIds: fit(row.serverIds), pointStart: fit(row.pointStart), pointSecs: fit(row.pointSecs), pointVals: fit(row.pointVals), distStart: fit(row.distStart), dist: summaries(row.dist), rollup: summaries(row.rollup) };
}

/** Bytes a decoded row holds: its columns (whole buffers: see fitted) and the stored bytes its sketches point into. */
function rowBytes(row: DecodedRow, storedBytes: number): number {
  let n = storedBytes + 512;
  for (const a of [row.serverIds, row.pointStart, row.pointSecs, row.pointVals, row.distStart, row.dist.secs, row.dist.count, row.dist.sum, row.dist.min, row.dist.max, row.dist.sketchStart, row.dist.sketchEnd]) n += a.byteLength;
  n += 8 * (row.dist.sketchSrc.length + row.rollup.sketchSrc.length) + 60 * row.rollup.secs.length;
  if (row.aggregates !== null) n += 34 * row.aggregates.secs.length;
  return n;
}
