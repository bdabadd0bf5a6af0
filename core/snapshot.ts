// Copying one shard between core nodes (issue 13): a node that becomes an owner of a shard, or
// was away longer than the shard's stream keeps messages, copies a current owner's data of that
// shard and then reads the rest from the stream. Store ids (racks, servers) are local to a store
// and differ between nodes, so a snapshot names them: rows travel with their rack's and servers'
// names and are renumbered (and re-encoded) on arrival; metric hashes are portable.
//
// The snapshot of a shard is taken from one read transaction of each of the store's two LMDB
// environments, opened in one synchronous step (WAL environment first): rows are written by
// this thread only, and a block's WAL entries are deleted only after its rows committed, so every
// acknowledged section is in the rows or in the WAL of the snapshot (or both: a replay skips what
// a row holds, by WAL seq, which the copy keeps). The stream sequence it reports is the one
// committed with those WAL entries and de-duplication marks.
//
// Stored-query results are not copied: the new owner evaluates its queries again from the rows.
//
// Format (version 4; versions 1 to 3 are the same, their row records never hold version 5 rows
// — version 2's never version 4 ones, version 1's never version 3 ones —, so a core of this
// version reads all four and an older core refuses a newer version by its preamble), a byte stream:
//   preamble   "APMSHS" u16 version (little-endian)
//   records    u8 type, u32 payload length, u32 CRC-32 of type and payload, payload
//     1 header  u16 shard, u16 S, u16 blockSeconds, f64 applied stream seq, f64 source WAL seq bound
//     2 rack    u32 source rack id, name (UTF-8, the rest)
//     3 server  u32 source server id, u16 rack name length, rack name, name
//     4 metric  u32 hash lo, u32 hash hi, u8 kind, u8 named, name
//     5 row     u32 block, u32 hash lo, u32 hash hi, u32 source rack id, f64 WAL seq, row bytes (core/block.ts, source server ids)
//     6 wal     f64 WAL seq, a ShardSection frame as the WAL holds it
//     7 mark    u16 key length, key, value (core/dedup.ts, keyed by rack name)
//     8 end     f64 applied, f64 rows, f64 WAL entries, f64 marks
//   in this order: header; racks, servers and metrics each before the first row naming them; rows
//   (key order); WAL entries; marks; end. A stream without its end record is truncated.
// Integers above 2^32 (sequences) travel as f64: they stay below 2^53.

import { crc32 } from 'node:zlib';
import type { Database, RootDatabase, Transaction } from 'lmdb';
import { shardOf } from '../schema/section.js';
import { decodeRow, encodeRow, renumberServers, RowError, rowServerIds } from './block.js';
import { ChunkMemo, rowKey, storedRowBytes } from './rowgroups.js';
import { walKeySeq, walKeyShard } from './walkey.js';

/** Written by this core: row records may hold version 5 rows (core/block.ts: with a CRC-32), which cores before it cannot decode. */
export const snapshotFormatVersion = 4;
/** Read by this core: version 1 to 3 streams hold rows of versions 1 to 4, which it decodes. */
const snapshotFormatVersionMin = 1;
const magic = Buffer.from('APMSHS', 'latin1');
const preambleBytes = magic.length + 2;
const recordHeadBytes = 9;

/** A worker's snapshot chunk: about this many bytes (a record larger than it is a chunk of its own). One message's copy, never a shard's worth. */
export const snapshotChunkBytes = 1 << 20;
/**
 * Records handed to a worker per restore step: re-encoding rows costs ~100 ns a point, so 256 KiB
 * of rows (~250k points) is ~25 ms of the worker's turn, which other shards' ingest waits out.
 */
export const restoreBatchBytes = 256 * 1024;
/** The largest record accepted: a WAL entry is at most a section of a request (schema/limits.ts batchBytesMax, 64 MiB). */
export const snapshotRecordBytesMax = 64 * 1024 * 1024 + 64;
/** Entries read from LMDB per range call: a snapshot holds no cursor between its chunks. */
const rangePageEntries = 256;
/** Source servers and racks a restore maps (each a Map entry): above any registry's serversMax and rack id bound. */
const dictionaryEntriesMax = 1 << 20;
/** Open snapshot cursors per worker: each pins a read transaction (LMDB cannot reuse pages freed after it). */
export const snapshotCursorsMax = 4;
/** Shard restores under way per worker: each refuses its shard's ingest until it ends. */
export const restoresMax = 4;
/** A snapshot cursor or a restore that hears nothing for this long is closed (a copy that died mid-way). */
export const snapshotIdleMs = 120_000;

const enum RecordType {
  Header = 1,
  Rack = 2,
  Server = 3,
  Metric = 4,
  Row = 5,
  Wal = 6,
  Mark = 7,
  End = 8,
}

/** A snapshot stream that is truncated, corrupt, or does not fit this node (the message says which). */
export class SnapshotError extends Error {}

/** What a restore put in place. */
export interface RestoreSummary {
  /** The stream sequence the shard has applied now (the source's at its snapshot). */
  applied: number;
  rows: number;
  walEntries: number;
  marks: number;
  /** Bytes of the snapshot stream (pool.restoreShard; a store-level restore counts what it parsed). */
  bytes: number;
}

/**
 * What a snapshot and a restore need of a store (core/store.ts implements it over its private
 * state): the databases to read from inside read transactions, names of store-local ids, and the
 * store's own write paths for rows, WAL entries and marks.
 */
export interface ShardIo {
  readonly shardCount: number;
  readonly blockSeconds: number;
  holds(shard: number): boolean;
  readonly rootEnv: RootDatabase;
  readonly walEnv: RootDatabase;
  readonly rows: Database<Uint8Array, Buffer>;
  readonly groups: Database<Uint8Array, Buffer>;
  readonly wal: Database<Uint8Array, Buffer>;
  readonly dedup: Database<Buffer, Buffer>;
  /** The applied stream sequence of a shard as a read transaction of the WAL environment sees it. */
  appliedIn(shard: number, txn: Transaction): number;
  /** The next WAL seq of the store: every seq in a snapshot taken now is below it. */
  walSeqBound(): number;
  rackName(id: number): string | undefined;
  server(id: number): { name: string; rack: string } | undefined;
  /** The registry's metrics by index now, and the index of a hash (−1: none). */
  /** The registered metric at a registry index (undefined: none, or retired). */
  metricAt(mi: number): { name: string | null; kind: number } | undefined;
  metricIndex(lo: number, hi: number): number;
  /** Refuses the shard's ingest, records the restoring marker as its applied sequence (restoringSeq, synced), forgets its head and marks and deletes its data. */
  beginRestore(shard: number): Promise<void>;
  /** Makes everything restored durable, then records `applied` (synced) and takes ingest again. */
  endRestore(shard: number, applied: number): void;
  /** After a failed restore: deletes what was restored; the shard stays marked restoring (it must be copied again) and takes no stream messages. */
  abortRestore(shard: number): Promise<void>;
  /** This store's id of a rack (registered); throws SnapshotError when the store holds racksMax racks. */
  rackIdFor(name: string): number;
  /** This store's id of a server (registered with `rack` when new), or −1: the registry is full. */
  serverIdFor(name: string, rack: string): number;
  /** Registers a metric and its name; false when it is refused (the registry is full) or has another kind here. */
  registerMetric(lo: number, hi: number, kind: number, name: string | null): boolean;
  /** Writes restored rows ([WAL seq u48][row]) of a shard, packed in row groups, in one transaction. */
  writeRows(rows: { key: Buffer; value: Buffer }[], walSeqMax: number): void;
  /** Stores WAL entries of a shard under their seqs and adds them to the head as a replay does. */
  replayWal(shard: number, entries: { seq: number; bytes: Buffer }[]): void;
  /** Writes de-duplication marks of a shard and takes them into memory; throws SnapshotError for a malformed one. */
  adoptMarks(shard: number, marks: { key: Buffer; value: Buffer }[]): void;
  /** Rows' servers or metrics the target could not take (counted in the store's counters). */
  noteDropped(what: 'servers_refused' | 'metrics_refused', n: number): void;
  /** A row that does not decode (RowError), under its key in this store: counted once per key, however many snapshots or restores meet it (Store.noteCorrupt). */
  noteCorruptRow(key: Buffer, err: RowError, what: string): void;
}

/** Growable record writer: chunks of whole records. */
class RecordWriter {
  private buf = Buffer.allocUnsafe(snapshotChunkBytes + 4096);
  private pos = 0;
  private recordAt = -1;

  get size(): number {
    return this.pos;
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  preamble(): void {
    this.room(preambleBytes);
    magic.copy(this.buf, this.pos);
    this.buf.writeUInt16LE(snapshotFormatVersion, this.pos + magic.length);
    this.pos += preambleBytes;
  }

  begin(type: RecordType): this {
    this.room(recordHeadBytes);
    this.recordAt = this.pos;
    this.buf[this.pos] = type;
    this.pos += recordHeadBytes;
    return this;
  }

  u8(v: number): this {
    this.room(1);
    this.buf[this.pos++] = v;
    return this;
  }

  u16(v: number): this {
    this.room(2);
    this.pos = this.buf.writeUInt16LE(v, this.pos);
    return this;
  }

  u32(v: number): this {
    this.room(4);
    this.pos = this.buf.writeUInt32LE(v >>> 0, this.pos);
    return this;
  }

  f64(v: number): this {
    this.room(8);
    this.pos = this.buf.writeDoubleLE(v, this.pos);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }

  text(s: string): this {
    return this.bytes(Buffer.from(s, 'utf8'));
  }

  end(): void {
    const at = this.recordAt;
    const len = this.pos - at - recordHeadBytes;
    if (len > snapshotRecordBytesMax) throw new Error(`BUG: a snapshot record of ${len} B > snapshotRecordBytesMax ${snapshotRecordBytesMax}`);
    this.buf.writeUInt32LE(len, at + 1);
    const crc = crc32(this.buf.subarray(at + recordHeadBytes, this.pos), crc32(this.buf.subarray(at, at + 1)));
    this.buf.writeUInt32LE(crc, at + 5);
    this.recordAt = -1;
  }

  /** The bytes written since the last take (a copy of their own: it is transferred between threads). */
  take(): Uint8Array {
    const out = new Uint8Array(this.pos);
    out.set(this.buf.subarray(0, this.pos));
    this.pos = 0;
    return out;
  }
}

/**
 * A consistent snapshot of one shard of a store as chunks of whole records (see the top of this
 * file), about snapshotChunkBytes each. The read transactions are opened at the first `next()`
 * and held until the generator ends or is returned: a consumer must finish or `return()` it.
 */
export function* snapshotChunks(io: ShardIo, shard: number, chunkBytes = snapshotChunkBytes): Generator<Uint8Array, void, void> {
  if (!io.holds(shard)) throw new SnapshotError(`shard ${shard} is not in this store`);
  // WAL environment first: see the top of this file.
  const walTxn = io.walEnv.useReadTransaction();
  let rootTxn: Transaction | null = null;
  try {
    rootTxn = io.rootEnv.useReadTransaction();
    const applied = io.appliedIn(shard, walTxn);
    const w = new RecordWriter();
    w.preamble();
    w.begin(RecordType.Header).u16(shard).u16(io.shardCount).u16(io.blockSeconds).f64(applied).f64(io.walSeqBound()).end();
    const sentRacks = new Set<number>();
    const sentServers = new Set<number>();
    const sentMetrics = new Set<number>();
    // The last chunk kept: rows of a group are neighbours in key order (core/rowgroups.ts).
    const txn = rootTxn;
    const groups = new ChunkMemo((gk) => io.groups.get(gk, { transaction: txn }) as Buffer | undefined);
    let rows = 0;
    for (const { key, value } of pages(io.rows, shardKey(shard, 18), shardKey(shard + 1, 18), rootTxn)) {
      const block = key.readUInt32BE(2);
      const hi = key.readUInt32BE(6);
      const lo = key.readUInt32BE(10);
      const rackId = key.readUInt32BE(14);
      let bytes: Uint8Array;
      let ids: Uint32Array;
      try {
        bytes = storedRowBytes(key, value, groups.chunk, groups.spill);
        ids = rowServerIds(bytes);
      } catch (err) {
        // The source cannot read it either (its queries skip it, counted as rows_corrupt).
        if (!(err instanceof RowError)) throw err;
        io.noteCorruptRow(key, err, 'shard snapshots leave it out');
        continue;
      }
      if (!sentRacks.has(rackId)) {
        const name = io.rackName(rackId);
        if (name === undefined) throw new Error(`BUG: row of shard ${shard} block ${block} names rack id ${rackId}, which the store does not know`);
        w.begin(RecordType.Rack).u32(rackId).text(name).end();
        sentRacks.add(rackId);
      }
      for (const id of ids) {
        if (sentServers.has(id)) continue;
        const s = io.server(id);
        if (s === undefined) throw new Error(`BUG: row of shard ${shard} block ${block} names server id ${id}, which the registry does not know`);
        const rack = Buffer.from(s.rack, 'utf8');
        w.begin(RecordType.Server).u32(id).u16(rack.length).bytes(rack).text(s.name).end();
        sentServers.add(id);
      }
      const mi = io.metricIndex(lo, hi);
      if (mi >= 0 && !sentMetrics.has(mi)) {
        const m = io.metricAt(mi);
        if (m !== undefined) {
          w.begin(RecordType.Metric).u32(lo).u32(hi).u8(m.kind).u8(m.name === null ? 0 : 1).text(m.name ?? '').end();
          sentMetrics.add(mi);
        }
      }
      w.begin(RecordType.Row).u32(block).u32(lo).u32(hi).u32(rackId).f64(value.readUIntBE(0, 6)).bytes(bytes).end();
      rows++;
      if (w.size >= chunkBytes) yield w.take();
    }
    let walEntries = 0;
    // The WAL is one queue of every shard's entries (core/walkey.ts): the shard's keys are picked
    // out first (keys only: other shards' sections are not read), then their values one by one.
    const walKeys: Buffer[] = [];
    for (const key of io.wal.getKeys({ transaction: walTxn })) if (walKeyShard(key as Buffer) === shard) walKeys.push(Buffer.from(key as Buffer));
    for (const key of walKeys) {
      const value = io.wal.get(key, { transaction: walTxn });
      if (value === undefined) continue;
      w.begin(RecordType.Wal).f64(walKeySeq(key)).bytes(value).end();
      walEntries++;
      if (w.size >= chunkBytes) yield w.take();
    }
    let marks = 0;
    for (const { key, value } of pages(io.dedup, shardKey(shard, 2), shardKey(shard + 1, 2), walTxn)) {
      w.begin(RecordType.Mark).u16(key.length).bytes(key).bytes(value).end();
      marks++;
      if (w.size >= chunkBytes) yield w.take();
    }
    w.begin(RecordType.End).f64(applied).f64(rows).f64(walEntries).f64(marks).end();
    yield w.take();
  } finally {
    rootTxn?.done();
    walTxn.done();
  }
}

/** The first key of a shard's range in a database whose keys start with the shard (u16), `length` bytes long. */
function shardKey(shard: number, length: number): Buffer {
  const k = Buffer.alloc(length);
  k.writeUInt16BE(Math.min(shard, 0xffff), 0);
  if (shard > 0xffff) k.fill(0xff);
  return k;
}

/** The entries of [start, end) in pages of rangePageEntries (each page a range call of its own: no cursor outlives a yield). */
function* pages(db: Database<Uint8Array, Buffer>, start: Buffer, end: Buffer, txn: Transaction): Generator<{ key: Buffer; value: Buffer }> {
  let from: Buffer = start;
  let exclusiveStart = false;
  for (;;) {
    const page = [...db.getRange({ start: from, end, exclusiveStart, limit: rangePageEntries, transaction: txn })].map((e) => ({ key: Buffer.from(e.key), value: e.value as Buffer }));
    yield* page;
    if (page.length < rangePageEntries) return;
    from = page[page.length - 1]!.key;
    exclusiveStart = true;
  }
}

/**
 * Cuts a snapshot byte stream, as it arrives in pieces of any size, into whole records, each
 * checked (length bound, CRC); the preamble is checked first. Memory: one record being filled.
 */
export class RecordFramer {
  /** Bytes pushed so far. */
  bytes = 0;
  private state: 'preamble' | 'head' | 'record' = 'preamble';
  private pending: Buffer = Buffer.alloc(preambleBytes);
  private filled = 0;
  private partial = false;
  private records = 0;

  /** The whole records completed by `chunk` (views or copies: valid until they are used). */
  push(chunk: Uint8Array): Buffer[] {
    const c = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    this.bytes += c.length;
    const out: Buffer[] = [];
    let at = 0;
    while (at < c.length) {
      if (!this.partial) {
        // Whole in this chunk: a view, no copy.
        const need = this.need(c, at);
        if (need !== null && at + need <= c.length) {
          this.complete(c.subarray(at, at + need), out);
          at += need;
          continue;
        }
        this.pending = Buffer.allocUnsafe(need ?? recordHeadBytes);
        this.filled = 0;
        this.partial = true;
        if (need === null) this.state = 'head';
      }
      const n = Math.min(this.pending.length - this.filled, c.length - at);
      c.copy(this.pending, this.filled, at, at + n);
      this.filled += n;
      at += n;
      if (this.filled < this.pending.length) break;
      this.partial = false;
      if (this.state === 'head') {
        // The head is in: the whole record is filled into a buffer of its size.
        const head = this.pending;
        const len = this.payloadLength(head, 0);
        this.pending = Buffer.allocUnsafe(recordHeadBytes + len);
        head.copy(this.pending, 0);
        this.filled = recordHeadBytes;
        this.state = 'record';
        this.partial = this.filled < this.pending.length;
        if (this.partial) continue;
      }
      this.complete(this.pending, out);
    }
    return out;
  }

  /** The stream ended: throws when it stopped inside a record or before any. */
  end(): void {
    if (this.state === 'preamble' || this.partial) throw new SnapshotError(`the snapshot stream is truncated: it ended ${this.state === 'preamble' ? 'inside its preamble' : `inside a record (${this.filled} of ${this.pending.length} B)`} after ${this.bytes} B and ${this.records} records`);
  }

  /** Bytes of the next unit starting at `at` (null: its length is not in this chunk yet). */
  private need(c: Buffer, at: number): number | null {
    if (this.state === 'preamble') return preambleBytes;
    if (at + recordHeadBytes > c.length) return null;
    this.state = 'record';
    return recordHeadBytes + this.payloadLength(c, at);
  }

  private payloadLength(b: Buffer, at: number): number {
    const len = b.readUInt32LE(at + 1);
    if (len > snapshotRecordBytesMax) throw new SnapshotError(`snapshot record ${this.records + 1} (type ${b[at]}) claims ${len} B > ${snapshotRecordBytesMax}: the stream is corrupt`);
    return len;
  }

  private complete(unit: Buffer, out: Buffer[]): void {
    if (this.state === 'preamble') {
      if (!unit.subarray(0, magic.length).equals(magic)) throw new SnapshotError('not a shard snapshot (no APMSHS preamble): is the URL a core\'s /api/v1/cluster/shards/:shard/snapshot?');
      const version = unit.readUInt16LE(magic.length);
      if (version < snapshotFormatVersionMin || version > snapshotFormatVersion) throw new SnapshotError(`shard snapshot format ${version}; this core reads formats ${snapshotFormatVersionMin}–${snapshotFormatVersion}: run the same apm version on both nodes`);
      this.state = 'head';
      return;
    }
    checkRecord(unit, 0, this.records + 1);
    this.records++;
    this.state = 'head';
    out.push(unit);
  }
}

/** Whether a whole record (as RecordFramer gives it) is a stream's end record: a stream whose last record is not one is truncated. */
export function isEndRecord(record: Uint8Array): boolean {
  return record[0] === RecordType.End;
}

/** Checks the record at `at` (length within `b`, CRC); returns its end. */
function checkRecord(b: Buffer, at: number, index: number): number {
  if (at + recordHeadBytes > b.length) throw new SnapshotError(`snapshot record ${index} is truncated (${b.length - at} B, its head is ${recordHeadBytes})`);
  const len = b.readUInt32LE(at + 1);
  const end = at + recordHeadBytes + len;
  if (len > snapshotRecordBytesMax || end > b.length) throw new SnapshotError(`snapshot record ${index} (type ${b[at]}) claims ${len} B; ${b.length - at - recordHeadBytes} B are there: the stream is corrupt`);
  const crc = crc32(b.subarray(at + recordHeadBytes, end), crc32(b.subarray(at, at + 1)));
  if (crc !== b.readUInt32LE(at + 5)) throw new SnapshotError(`snapshot record ${index} (type ${b[at]}, ${len} B) fails its CRC: the stream is corrupt`);
  return end;
}

/** Bounds-checked reader of one record's payload. */
class PayloadReader {
  private at = 0;
  constructor(
    private readonly b: Buffer,
    private readonly what: string,
  ) {}
  private need(n: number): number {
    if (this.at + n > this.b.length) throw new SnapshotError(`${this.what}: its payload of ${this.b.length} B ends at ${this.at}, ${n} more B expected: the stream is corrupt`);
    const at = this.at;
    this.at += n;
    return at;
  }
  u8(): number {
    return this.b[this.need(1)]!;
  }
  u16(): number {
    return this.b.readUInt16LE(this.need(2));
  }
  u32(): number {
    return this.b.readUInt32LE(this.need(4));
  }
  /** An integer sent as f64 (a sequence or a count). */
  int(): number {
    const v = this.b.readDoubleLE(this.need(8));
    if (!Number.isSafeInteger(v) || v < 0) throw new SnapshotError(`${this.what}: ${v} is not a count or sequence: the stream is corrupt`);
    return v;
  }
  bytes(n: number): Buffer {
    const at = this.need(n);
    return this.b.subarray(at, at + n);
  }
  rest(): Buffer {
    return this.bytes(this.b.length - this.at);
  }
  text(n = this.b.length - this.at): string {
    return this.bytes(n).toString('utf8');
  }
}

/**
 * Restores one shard of a store from snapshot records: begin() wipes the shard (marked restoring),
 * apply() takes batches of whole records in stream order, finish() checks the end record and
 * records the applied sequence last; abort() after a failure wipes what came. A crash at any
 * point before finish() leaves the shard marked restoring: the cluster copies it again (it never reads the stream on top of a partial copy).
 */
export class ShardRestore {
  private phase: 'new' | 'begun' | 'rows' | 'wal' | 'marks' | 'ended' | 'finished' | 'aborted' = 'new';
  private applied = 0;
  /** The source's WAL seq bound (header): every seq in the stream is below it. */
  private seqBound = 0;
  private readonly racks = new Map<number, number>();
  private readonly servers = new Map<number, number>();
  /** This store's ids given to the snapshot's servers: two names never share one (a corrupt stream could try). */
  private readonly serverTargets = new Set<number>();
  private records = 0;
  readonly counts = { rows: 0, walEntries: 0, marks: 0 };

  constructor(
    private readonly io: ShardIo,
    readonly shard: number,
  ) {}

  async begin(): Promise<void> {
    if (this.phase !== 'new') throw new Error(`BUG: restore of shard ${this.shard} begun twice`);
    if (!this.io.holds(this.shard)) throw new SnapshotError(`shard ${this.shard} is not in this store`);
    await this.io.beginRestore(this.shard);
    this.phase = 'begun';
  }

  /** Applies a batch of whole records (as RecordFramer cut them, concatenated). */
  apply(batch: Buffer): void {
    const rows: { key: Buffer; value: Buffer }[] = [];
    let rowSeqMax = 0;
    const wal: { seq: number; bytes: Buffer }[] = [];
    const marks: { key: Buffer; value: Buffer }[] = [];
    let at = 0;
    while (at < batch.length) {
      const end = checkRecord(batch, at, this.records + 1);
      const type = batch[at]!;
      const p = new PayloadReader(batch.subarray(at + recordHeadBytes, end), `snapshot record ${this.records + 1} (type ${type})`);
      this.records++;
      at = end;
      switch (type) {
        case RecordType.Header:
          this.expect(['begun'], 'the header');
          this.header(p);
          this.phase = 'rows';
          break;
        case RecordType.Rack:
          this.expect(['rows'], 'a rack');
          this.rack(p);
          break;
        case RecordType.Server:
          this.expect(['rows'], 'a server');
          this.server(p);
          break;
        case RecordType.Metric:
          this.expect(['rows'], 'a metric');
          this.metric(p);
          break;
        case RecordType.Row: {
          this.expect(['rows'], 'a row');
          const r = this.row(p);
          if (r !== null) {
            rows.push(r);
            rowSeqMax = Math.max(rowSeqMax, r.value.readUIntBE(0, 6));
          }
          this.counts.rows++;
          break;
        }
        case RecordType.Wal: {
          this.expect(['rows', 'wal'], 'a WAL entry');
          this.phase = 'wal';
          const seq = this.seq(p.int());
          // A buffer of its own at offset 0: the section's columns are read as aligned typed arrays.
          const section = p.rest();
          const bytes = Buffer.from(new ArrayBuffer(section.length));
          section.copy(bytes);
          wal.push({ seq, bytes });
          this.counts.walEntries++;
          break;
        }
        case RecordType.Mark: {
          this.expect(['rows', 'wal', 'marks'], 'a de-duplication mark');
          this.phase = 'marks';
          const key = Buffer.from(p.bytes(p.u16()));
          marks.push({ key, value: Buffer.from(p.rest()) });
          this.counts.marks++;
          break;
        }
        case RecordType.End:
          this.expect(['rows', 'wal', 'marks'], 'the end record');
          this.endRecord(p);
          this.phase = 'ended';
          break;
        default:
          throw new SnapshotError(`snapshot record ${this.records} has type ${type}, which format ${snapshotFormatVersion} does not have: the stream is corrupt`);
      }
    }
    // In stream order: rows before the WAL entries a replay checks against them.
    if (rows.length > 0) this.io.writeRows(rows, rowSeqMax);
    if (wal.length > 0) this.io.replayWal(this.shard, wal);
    if (marks.length > 0) this.io.adoptMarks(this.shard, marks);
  }

  /** After the end record: records the applied sequence (last) and takes the shard's ingest again. */
  finish(): Omit<RestoreSummary, 'bytes'> {
    if (this.phase !== 'ended') throw new SnapshotError(`the snapshot stream of shard ${this.shard} is truncated: it ended after ${this.records} records without its end record`);
    this.io.endRestore(this.shard, this.applied);
    this.phase = 'finished';
    return { applied: this.applied, ...this.counts };
  }

  /** After a failure: the shard is emptied again, marked restoring. */
  async abort(): Promise<void> {
    if (this.phase === 'finished' || this.phase === 'aborted') return;
    const begun = this.phase !== 'new';
    this.phase = 'aborted';
    if (begun) await this.io.abortRestore(this.shard);
  }

  private expect(phases: readonly ShardRestore['phase'][], what: string): void {
    if (!phases.includes(this.phase)) throw new SnapshotError(`snapshot record ${this.records} is ${what}, out of order (restore of shard ${this.shard} is at ${this.phase}): the stream is corrupt`);
  }

  private header(p: PayloadReader): void {
    const shard = p.u16();
    const shards = p.u16();
    const blockSeconds = p.u16();
    this.applied = p.int();
    this.seqBound = p.int();
    if (shard !== this.shard) throw new SnapshotError(`the snapshot is of shard ${shard}, not of shard ${this.shard}`);
    if (shards !== this.io.shardCount) throw new SnapshotError(`the snapshot's node has ${shards} shards, this one ${this.io.shardCount}: nodes of a cluster need the same --shards`);
    if (blockSeconds !== this.io.blockSeconds) throw new SnapshotError(`the snapshot's rows are blocks of ${blockSeconds} s, this node's of ${this.io.blockSeconds} s`);
    if (this.seqBound >= 2 ** 48) throw new SnapshotError(`the snapshot's WAL seq bound ${this.seqBound} ≥ 2^48: the stream is corrupt`);
  }

  private rack(p: PayloadReader): void {
    const id = p.u32();
    const name = p.text();
    if (name.length === 0) throw new SnapshotError(`snapshot record ${this.records}: a rack without a name: the stream is corrupt`);
    this.bound(this.racks);
    this.racks.set(id, this.io.rackIdFor(name));
  }

  private server(p: PayloadReader): void {
    const id = p.u32();
    const rack = p.text(p.u16());
    const name = p.text();
    if (name.length === 0) throw new SnapshotError(`snapshot record ${this.records}: a server without a name: the stream is corrupt`);
    this.bound(this.servers);
    const to = this.io.serverIdFor(name, rack);
    if (to < 0) this.io.noteDropped('servers_refused', 1);
    else if (this.serverTargets.has(to) || this.servers.has(id)) throw new SnapshotError(`snapshot record ${this.records}: server ${id} (${name}) is named twice: the stream is corrupt`);
    else this.serverTargets.add(to);
    this.servers.set(id, to);
  }

  private metric(p: PayloadReader): void {
    const lo = p.u32();
    const hi = p.u32();
    const kind = p.u8();
    const named = p.u8();
    const name = p.text();
    if (shardOf(lo, this.io.shardCount) !== this.shard) throw new SnapshotError(`snapshot record ${this.records}: metric ${hi.toString(16)}${lo.toString(16)} is not of shard ${this.shard}: the stream is corrupt`);
    // Its rows are read by hash whether or not it is registered; the registry lists it and holds its kind.
    if (!this.io.registerMetric(lo, hi, kind, named === 1 ? name : null)) this.io.noteDropped('metrics_refused', 1);
  }

  /** A row re-keyed and renumbered for this store ([WAL seq][row]), or null when none of its servers is left. */
  private row(p: PayloadReader): { key: Buffer; value: Buffer } | null {
    const block = p.u32();
    const lo = p.u32();
    const hi = p.u32();
    const srcRack = p.u32();
    const seq = this.seq(p.int());
    const bytes = p.rest();
    const what = `row of shard ${this.shard} block ${block} rack ${srcRack} (record ${this.records})`;
    if (shardOf(lo, this.io.shardCount) !== this.shard || block % this.io.blockSeconds !== 0) throw new SnapshotError(`${what}: not a key of this shard: the stream is corrupt`);
    const rackId = this.racks.get(srcRack);
    if (rackId === undefined) throw new SnapshotError(`${what}: its rack was not named before it: the stream is corrupt`);
    const key = rowKey(this.shard, block, lo, hi, rackId);
    let encoded: Uint8Array;
    let row: ReturnType<typeof decodeRow>;
    try {
      row = decodeRow(bytes);
    } catch (err) {
      if (!(err instanceof RowError)) throw err;
      // A row the source cannot read either (its queries skip it, counted there as rows_corrupt;
      // the snapshot checks its server ids, and a version 5 row's CRC, only): skipped and counted
      // here too, once per key however often the shard is restored. Before, the whole restore
      // failed on it, every retry the same, and the shard could never be copied.
      this.io.noteCorruptRow(key, err, 'the restore leaves it out');
      return null;
    }
    try {
      if (row.blockSeconds !== this.io.blockSeconds) throw new RowError(`blocks of ${row.blockSeconds} s`);
      const missing = row.serverIds.find((id) => !this.servers.has(id));
      if (missing !== undefined) throw new SnapshotError(`${what}: server ${missing} was not named before it: the stream is corrupt`);
      const renumbered = renumberServers(row, (id) => this.servers.get(id)!);
      if (renumbered.serverIds.length === 0 && renumbered.rollupTo === 0) return null;
      encoded = encodeRow(renumbered);
    } catch (err) {
      if (err instanceof RowError) throw new SnapshotError(`${what} does not decode (${err.message}): the stream is corrupt`, { cause: err });
      throw err;
    }
    const value = Buffer.allocUnsafe(6 + encoded.length);
    value.writeUIntBE(seq, 0, 6);
    value.set(encoded, 6);
    return { key, value };
  }

  private endRecord(p: PayloadReader): void {
    const applied = p.int();
    const rows = p.int();
    const walEntries = p.int();
    const marks = p.int();
    if (applied !== this.applied || rows !== this.counts.rows || walEntries !== this.counts.walEntries || marks !== this.counts.marks) {
      throw new SnapshotError(`the snapshot's end record counts applied ${applied}, ${rows} rows, ${walEntries} WAL entries, ${marks} marks; the stream held applied ${this.applied}, ${this.counts.rows}, ${this.counts.walEntries}, ${this.counts.marks}: the stream is corrupt`);
    }
  }

  private seq(v: number): number {
    if (v >= this.seqBound) throw new SnapshotError(`snapshot record ${this.records}: WAL seq ${v} ≥ the header's bound ${this.seqBound}: the stream is corrupt`);
    return v;
  }

  private bound(m: Map<number, number>): void {
    if (m.size >= dictionaryEntriesMax) throw new SnapshotError(`the snapshot names more than ${dictionaryEntriesMax} racks or servers: no registry holds that many; the stream is corrupt`);
  }
}

/** Restores a shard of a store from a snapshot byte stream in pieces of any size (Store.restoreShard; the pool does the same across threads). */
export async function restoreFromStream(io: ShardIo, shard: number, chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<RestoreSummary> {
  const restore = new ShardRestore(io, shard);
  const framer = new RecordFramer();
  await restore.begin();
  try {
    const batcher = new RecordBatcher(restoreBatchBytes);
    for await (const chunk of chunks) for (const rec of framer.push(chunk)) for (const batch of batcher.add(rec)) restore.apply(batch);
    framer.end();
    const last = batcher.flush();
    if (last !== null) restore.apply(last);
    return { ...restore.finish(), bytes: framer.bytes };
  } catch (err) {
    await restore.abort();
    throw err;
  }
}

/**
 * Collects whole records into batches of about `bytesMax` (a larger record is a batch alone),
 * each copied into an ArrayBuffer of its own (it can be transferred to a worker). The records
 * are views of the stream's chunks, which must stay unchanged until their batch is out.
 */
export class RecordBatcher {
  private recs: Buffer[] = [];
  private size = 0;

  constructor(private readonly bytesMax: number) {}

  /** The batches `rec` completes (0 or 1). */
  add(rec: Buffer): Buffer[] {
    const out: Buffer[] = [];
    if (this.size > 0 && this.size + rec.length > this.bytesMax) out.push(this.flush()!);
    this.recs.push(rec);
    this.size += rec.length;
    return out;
  }

  flush(): Buffer | null {
    if (this.size === 0) return null;
    const b = Buffer.from(new ArrayBuffer(this.size));
    let at = 0;
    for (const r of this.recs) at += r.copy(b, at);
    this.recs = [];
    this.size = 0;
    return b;
  }
}
