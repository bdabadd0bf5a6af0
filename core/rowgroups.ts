// Row groups (core/store.ts): the rows one slice writes for a (shard, block) are concatenated
// into one byte run, stored in the `groups` database as chunks, and each row's key in `rows`
// holds a pointer to its bytes: [WAL seq u48][pointerTag][chunk id u32][offset u32][length u32]
// — the first chunk holding the row, where in it the row starts, and its length.
//
// Why chunks of whole pages (issue 14, third session): LMDB keeps a value larger than about half
// a page in overflow pages of its own, so a value wastes the rest of its last page. Groups cut
// at whole rows (at most 64 KiB) wasted ~2 KB each (0.047 B/point, 4.5 % of the rows on the
// comparison mix), and a group of exactly 64 KiB took 17 pages, not 16. Now a run is cut where
// pages end: every chunk but the last fills its overflow pages exactly, and the last is either
// small enough to sit inside a leaf page (shared with other entries) or ends in one partial
// page. A row may so continue into the next chunks, which have the next ids (ids are allocated
// in order, one per chunk); rows written before this (chunks cut at whole rows) never do, so
// their pointers read the same way.

import { RowError } from './block.js';

/** LMDB's page size here (lmdb-js' default; checked against the environment by a test). */
export const pageBytes = 4096;
/**
 * Bytes of an overflow run's page header (this LMDB build, lmdb-js 3.x: 24, with the txnid):
 * a value of n bytes takes ⌈(n + 24) / pageBytes⌉ overflow pages. Checked by a test.
 */
export const overflowHeaderBytes = 24;
/**
 * The largest chunk LMDB keeps inside a leaf page with a 10-byte group key: ((4096 − 24) / 2
 * rounded to even) − 2 (a node's index) − 8 (its header) − 10 (the key). Checked by a test.
 */
export const chunkInlineBytesMax = 2016;
/**
 * A full chunk: 8 overflow pages exactly. A row's read copies its chunk out of LMDB (lmdb-js
 * copies a value into its buffer; 0.8 µs for 64 KB): 32 KB keeps that below the old groups' mean
 * (43 KB on the comparison mix), and a row of the mix (~2.5 KB) continues into the next chunk
 * (one more read) ~8 % of the time.
 */
export const chunkBytes = 8 * pageBytes - overflowHeaderBytes;

/** A rows value pointing into chunks: [WAL seq u48][pointerTag][chunk id u32][offset u32][length u32]. */
export const pointerBytes = 19;
/** Row bytes begin with their version (≥ 1), never 0. */
export const pointerTag = 0;

/**
 * Sizes of the chunks a run of `runBytes` bytes is cut into: full chunks (whole pages), then the
 * rest as a page-exact part and a tail that fits a leaf page, or as one chunk when the tail would
 * not fit a leaf page anyway (it then wastes less than a page − chunkInlineBytesMax).
 */
export function chunkSizes(runBytes: number): number[] {
  if (!(runBytes > 0) || !Number.isInteger(runBytes)) throw new Error(`BUG: a row group run of ${runBytes} B`);
  const sizes: number[] = [];
  let rest = runBytes;
  while (rest > chunkBytes) {
    sizes.push(chunkBytes);
    rest -= chunkBytes;
  }
  const whole = Math.floor((rest + overflowHeaderBytes) / pageBytes) * pageBytes - overflowHeaderBytes;
  const tail = rest - whole;
  if (rest > chunkInlineBytesMax && whole > 0 && tail > 0 && tail <= chunkInlineBytesMax) sizes.push(whole, tail);
  else sizes.push(rest);
  return sizes;
}

/** A row group chunk's key: the (shard, block) of its rows' keys, then its id. */
/** A row's key in `rows`: [shard u16][block u32][metric hash hi, lo][rack id u32] (core/store.ts). */
export function rowKey(shard: number, block: number, lo: number, hi: number, rackId: number): Buffer {
  const k = Buffer.allocUnsafe(18);
  k.writeUInt16BE(shard, 0);
  k.writeUInt32BE(block, 2);
  k.writeUInt32BE(hi, 6);
  k.writeUInt32BE(lo, 10);
  k.writeUInt32BE(rackId >>> 0, 14);
  return k;
}

export function groupKey(rowKeyOf: Uint8Array, id: number): Buffer {
  const k = Buffer.allocUnsafe(10);
  k.set(rowKeyOf.subarray(0, 6), 0);
  k.writeUInt32BE(id, 6);
  return k;
}

export interface KeyValue {
  key: Buffer;
  value: Buffer;
}

/**
 * Packs rows ([WAL seq u48][row], sorted by key) into chunks: the rows of one (shard, block) form
 * one run, cut by chunkSizes; chunk ids are `firstId`, firstId + 1, …. Returns the chunks, each
 * row's pointer, and the next free id.
 */
export function packRows(puts: readonly KeyValue[], firstId: number): { groups: KeyValue[]; pointers: KeyValue[]; nextId: number } {
  const groups: KeyValue[] = [];
  const pointers: KeyValue[] = [];
  let id = firstId;
  let a = 0;
  while (a < puts.length) {
    // One run: the rows of the same (shard, block), the first 6 key bytes.
    let b = a;
    let bytes = 0;
    while (b < puts.length && (b === a || puts[b]!.key.compare(puts[a]!.key, 0, 6, 0, 6) === 0)) bytes += puts[b++]!.value.length - 6;
    const run = Buffer.allocUnsafe(bytes);
    let at = 0;
    const sizes = chunkSizes(bytes);
    // ends[c]: where chunk c ends in the run.
    const ends: number[] = [];
    let end = 0;
    for (const n of sizes) ends.push((end += n));
    let c = 0;
    for (let i = a; i < b; i++) {
      const row = puts[i]!.value;
      while (at >= ends[c]!) c++;
      row.copy(run, at, 6);
      const ptr = Buffer.allocUnsafe(pointerBytes);
      row.copy(ptr, 0, 0, 6);
      ptr[6] = pointerTag;
      ptr.writeUInt32BE(id + c, 7);
      ptr.writeUInt32BE(at - (c === 0 ? 0 : ends[c - 1]!), 11);
      ptr.writeUInt32BE(row.length - 6, 15);
      pointers.push({ key: puts[i]!.key, value: ptr });
      at += row.length - 6;
    }
    let from = 0;
    for (let k = 0; k < sizes.length; k++) {
      groups.push({ key: groupKey(puts[a]!.key, id + k), value: run.subarray(from, ends[k]!) });
      from = ends[k]!;
    }
    id += sizes.length;
    a = b;
  }
  return { groups, pointers, nextId: id };
}

/** Whether a rows value is a pointer into chunks (else it holds its row inline, after the WAL seq). */
export function isPointer(value: Uint8Array): boolean {
  return value.length === pointerBytes && value[6] === pointerTag;
}

/** The row length a pointer names. */
export function pointedLength(value: Uint8Array): number {
  return Buffer.from(value.buffer, value.byteOffset, value.length).readUInt32BE(15);
}

/**
 * The row bytes (after the WAL seq) of a rows value: inline, or through its pointer into chunks
 * read by `chunk` (the chunk of group key groupKey(key, id); undefined: missing). A row inside one chunk is a view of what
 * `chunk` returned, valid as long as that is; a row spanning chunks is copied into
 * `spill(length)` (an array of at least that length: a reader's reused scratch) or a new array.
 * Throws RowError for a pointer to a missing or short chunk.
 */
export function storedRowBytes(key: Uint8Array, value: Uint8Array, chunk: (rowKey: Uint8Array, id: number) => Uint8Array | undefined, spill?: (length: number) => Uint8Array): Uint8Array {
  if (!isPointer(value)) return new Uint8Array(value.buffer, value.byteOffset + 6, value.length - 6);
  // The pointer's fields first: reading a chunk may reuse the buffer `value` is in.
  const dv = new DataView(value.buffer, value.byteOffset, pointerBytes);
  const id = dv.getUint32(7);
  const at = dv.getUint32(11);
  const length = dv.getUint32(15);
  const first = chunk(key, id);
  if (first === undefined || at >= first.length) throw new RowError(`row group ${id} is missing or shorter than ${at + 1} B`);
  // A plain view (Buffer.subarray builds a Buffer, several times dearer).
  if (at + length <= first.length) return new Uint8Array(first.buffer, first.byteOffset + at, length);
  // The pieces first (copies: reading a chunk may reuse the buffer of the one before), the row's
  // array once they cover its length: a corrupt pointer naming 4 GiB allocated it before the
  // missing chunk was found (and a reader's scratch kept it). Copied by Uint8Array's slice: a
  // chunk may be a Buffer (lmdb-js' getBinaryFast), whose slice() is a view — the next chunk's
  // read overwrote the first piece, the row did not decode, and a merge of late data wrote the
  // head alone over it: every point the row held was lost.
  const copy = (b: Uint8Array, from: number, to: number) => Uint8Array.prototype.slice.call(b, from, to);
  const pieces: Uint8Array[] = [copy(first, at, first.length)];
  let got = first.length - at;
  for (let next = id + 1; got < length; next++) {
    const more = chunk(key, next);
    if (more === undefined || more.length === 0) throw new RowError(`row group ${next} is missing (a row of ${length} B starting in group ${id} continues into it)`);
    const take = Math.min(more.length, length - got);
    pieces.push(copy(more, 0, take));
    got += take;
  }
  const out = spill === undefined ? new Uint8Array(length) : spill(length).subarray(0, length);
  let o = 0;
  for (const p of pieces) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Chunks as a reader of many rows sees them (Store.read, a snapshot): the last chunk read is
 * held, copied out of lmdb-js' reused buffer, so the rows of one metric in one block — neighbours
 * in their run — cost one LMDB read and one copy per chunk instead of one per row (a 40-server
 * query over 25 racks read the same 32 KB chunk ~8 times). Also the scratch a row spanning chunks
 * is copied into. The held buffer and that scratch grow to the largest chunk or row seen, no
 * further. (Rows read again by later readers are kept by the store's row directories, each
 * row's own bytes: core/rowdirectory.ts.)
 */
export class ChunkMemo {
  /** The held chunk's group key (the row key's (shard, block), then its id), when `held`. */
  private readonly key = Buffer.alloc(10);
  private held = false;
  private bytes = new Uint8Array(chunkBytes);
  /** The held chunk (a view of `bytes`). */
  private view: Uint8Array = new Uint8Array(0);
  private spilled = new Uint8Array(0);

  constructor(private readonly get: (groupKey: Buffer) => Uint8Array | undefined) {}

  /** Forgets the held chunk (a reader starting, a shard wiped: its restored chunks may reuse group keys). */
  forget(): void {
    this.held = false;
  }

  /** The chunk `id` of a row key's (shard, block), as `get` gives it; a view valid until this memo reads another. */
  readonly chunk = (rowKey: Uint8Array, id: number): Uint8Array | undefined => {
    if (this.held && this.holds(rowKey, id)) return this.view;
    this.held = false;
    const gk = groupKey(rowKey, id);
    const got = this.get(gk);
    if (got === undefined) return undefined;
    // lmdb-js' buffer has its `length` set to the value's; its array is longer: view it by that.
    const n = got.length;
    if (this.bytes.length < n) this.bytes = new Uint8Array(n);
    this.bytes.set(new Uint8Array(got.buffer, got.byteOffset, n));
    gk.copy(this.key);
    this.held = true;
    this.view = this.bytes.subarray(0, n);
    return this.view;
  };

  private holds(rowKey: Uint8Array, id: number): boolean {
    const k = this.key;
    for (let i = 0; i < 6; i++) if (k[i] !== rowKey[i]) return false;
    return k.readUInt32BE(6) === id;
  }

  /** Scratch of at least n bytes for a row spanning chunks (storedRowBytes' `spill`). */
  readonly spill = (n: number): Uint8Array => {
    if (this.spilled.length < n) this.spilled = new Uint8Array(Math.max(n, 2 * this.spilled.length));
    return this.spilled;
  };
}
