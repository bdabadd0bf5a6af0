// The core's storage engine (issue 4). Layout, one LMDB environment:
//   wal      arrival number → rack batch bytes: written (and synced) before a batch is
//            acknowledged; removed in the same transaction that writes the batch's rows.
//   rows     [block start u32][metric hash hi, lo][rack id u32] (big-endian, so keys sort by
//            time, then metric, then rack) → one deflated row (core/block.ts): a metric's
//            per-second values of every server of a rack over a block of seconds, plus the
//            rack rollup per second. A stored query reads one metric over a range: a few
//            contiguous keys per block. Retention deletes whole leading blocks.
//   seen     "rack:batch_seq" → second: a retried batch the core already has is acknowledged
//            again, not stored twice.
//   servers, racks, metrics: the registry (core/registry.ts).
// Batches wait in memory (the head) until their block ends plus a grace period, then become
// rows. A restart replays the WAL into the head. Late batches for a written block are merged
// into its rows.

import { statfsSync } from 'node:fs';
import type { Database, RootDatabase } from 'lmdb';
import { decodeFrame, type RackBatchMessage, type RejectReason } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';
import { openLmdb, writeFailure } from '../schema/lmdb.js';
import { decodeRow, encodeRow, RowError, type DecodedRow } from './block.js';
import { admitMetrics, withoutMetrics } from './cardinality.js';
import { Registry } from './registry.js';
import { asDecoded, RowBuilder, type BatchItem } from './rows.js';

export interface StoreOptions {
  dir: string;
  retentionSeconds: number;
  blockSeconds: number;
  /** LMDB map size: the most the data files may grow to. */
  mapBytes: number;
  /** A block is written this long after it ends (late batches within it stay in memory). */
  flushGraceMs: number;
  headBytesMax: number;
  metricsMax: number;
  /** Servers and racks the registry accepts; a batch naming new ones beyond it is refused (counted). */
  serversMax?: number;
  /** New metrics one server may introduce; beyond it (or metricsMax) their points are dropped, counted. */
  metricsPerServerMax?: number;
  racksMax?: number;
  /** Storage budget: ingest answers 503 once the data in use reaches it (0: no budget). */
  diskBytesMax: number;
  /** Ingest answers 503 while the file system has less free space than this. */
  diskReserveBytes: number;
}

export type IngestResult = { status: 204; duplicate: boolean; points: number } | { status: 400 | 503; error: string; reason: string };

interface HeadItem extends BatchItem {
  walKey: number;
  rackId: number;
  bytes: number;
}

export class Store {
  readonly registry: Registry;
  private readonly root: RootDatabase;
  private readonly wal: Database<Uint8Array, number>;
  private readonly rows: Database<Uint8Array, Buffer>;
  private readonly seen: Database<number, string>;
  private readonly racks: Database<number, string>;
  private readonly rackIds = new Map<string, number>();
  private readonly head = new Map<number, HeadItem[]>();
  /** Last arrival per head block: a block still receiving (a rack replaying its spool) waits. */
  private readonly lastArrivalMs = new Map<number, number>();
  private headBytes = 0;
  private walSeq: number;
  private readonly builder: RowBuilder;
  private flushing = false;
  readonly counters = {
    batches_ingested: 0,
    batches_duplicate: 0,
    batches_late: 0,
    points_ingested: 0,
    summaries_ingested: 0,
    bytes_ingested: 0,
    storage_full: 0,
    head_full: 0,
    registry_full: 0,
    rows_written: 0,
    rows_merged: 0,
    flush_errors: 0,
    rows_corrupt: 0,
    retention_rows_deleted: 0,
    wal_replayed: 0,
    /** Points and summaries of metrics refused by the cardinality limits (not stored). */
    points_dropped_overflow: 0,
  };
  readonly rejected: Partial<Record<RejectReason | 'not_a_batch', number>> = {};
  lastError = '';
  /** Called with a batch's second once it is durable (stored queries re-evaluate late windows). */
  onIngest: ((second: number) => void) | null = null;
  private room = { checkedMs: 0, reason: '' };

  constructor(readonly opts: StoreOptions) {
    this.root = openLmdb({ path: opts.dir, mapSize: opts.mapBytes, maxDbs: 8 });
    this.wal = this.root.openDB<Uint8Array, number>({ name: 'wal', encoding: 'binary' });
    this.rows = this.root.openDB<Uint8Array, Buffer>({ name: 'rows', encoding: 'binary', keyEncoding: 'binary' });
    this.seen = this.root.openDB<number, string>({ name: 'seen', encoding: 'json' });
    this.racks = this.root.openDB<number, string>({ name: 'racks', encoding: 'json' });
    for (const { key, value } of this.racks.getRange()) this.rackIds.set(key, value);
    this.registry = new Registry(this.root.openDB({ name: 'servers', encoding: 'json' }), this.root.openDB({ name: 'metrics', encoding: 'json' }), opts.metricsMax);
    this.builder = new RowBuilder(opts.metricsMax);
    this.walSeq = ([...this.wal.getKeys({ reverse: true, limit: 1 })][0] ?? 0) + 1;
    this.replayWal();
  }

  /** Batches acknowledged but not yet written as rows come back into the head. */
  private replayWal(): void {
    for (const { key, value } of this.wal.getRange()) {
      const r = decodeFrame(value, batchBytesMax);
      if (!r.ok || r.msg.type !== 'rackBatch') {
        console.error(`core: WAL entry ${key} does not decode (${r.ok ? 'not a batch' : r.detail}); it is kept for inspection`);
        continue;
      }
      const serverIds = this.serverIds(r.msg, Date.now());
      this.addToHead(this.admitted(r.msg, serverIds, Date.now()), key, value.length, serverIds);
      this.counters.wal_replayed++;
    }
  }

  private rackId(name: string): number {
    let id = this.rackIds.get(name);
    if (id === undefined) {
      id = this.rackIds.size + 1;
      this.rackIds.set(name, id);
      void this.racks.put(name, id);
    }
    return id;
  }

  private serverIds(msg: RackBatchMessage, nowMs: number): Uint32Array {
    return Uint32Array.from(msg.servers, (s) => this.registry.server(s.server, msg.rack, nowMs).id);
  }

  private addToHead(msg: RackBatchMessage, walKey: number, bytes: number, serverIds = this.serverIds(msg, Date.now())): void {
    const block = this.blockOf(msg.second);
    let items = this.head.get(block);
    if (items === undefined) this.head.set(block, (items = []));
    items.push({ msg, serverIds, walKey, rackId: this.rackId(msg.rack), bytes });
    this.headBytes += bytes;
    this.lastArrivalMs.set(block, Date.now());
  }

  blockOf(second: number): number {
    return second - (second % this.opts.blockSeconds);
  }

  get heldBytes(): number {
    return this.headBytes;
  }

  /** Validates a rack batch and makes it durable; 204 only once it survives a crash. */
  async ingest(body: Uint8Array): Promise<IngestResult> {
    const r = decodeFrame(body, batchBytesMax);
    if (!r.ok || r.msg.type !== 'rackBatch') {
      const reason = r.ok ? 'not_a_batch' : r.reason;
      this.rejected[reason] = (this.rejected[reason] ?? 0) + 1;
      return { status: 400, reason, error: r.ok ? `expected a RackBatch, got a ${r.msg.type}` : `batch refused (${r.reason}): ${r.detail}` };
    }
    const msg = r.msg;
    const seenKey = `${msg.rack}:${msg.batchSeq}`;
    if (this.seen.get(seenKey) !== undefined) {
      this.counters.batches_duplicate++;
      return { status: 204, duplicate: true, points: 0 };
    }
    const full = this.storageFull();
    if (full !== '') {
      this.counters.storage_full++;
      return { status: 503, reason: 'storage_full', error: full };
    }
    if (this.headBytes + body.length > this.opts.headBytesMax) {
      this.counters.head_full++;
      return { status: 503, reason: 'head_full', error: `the core holds ${this.headBytes} B of unwritten batches (limit ${this.opts.headBytesMax}); retry later` };
    }
    const newServers = msg.servers.filter((s) => this.registry.serverByName(s.server) === undefined).length;
    const newRack = this.rackIds.has(msg.rack) ? 0 : 1;
    if (this.registry.serverCount + newServers > (this.opts.serversMax ?? 1_000_000) || this.rackIds.size + newRack > (this.opts.racksMax ?? 100_000)) {
      this.counters.registry_full++;
      return { status: 400, reason: 'registry_full', error: `the registry holds ${this.registry.serverCount} servers and ${this.rackIds.size} racks (limits ${this.opts.serversMax ?? 1_000_000} / ${this.opts.racksMax ?? 100_000}); batch from rack ${msg.rack} names new ones` };
    }
    const now = Date.now();
    const serverIds = this.serverIds(msg, now);
    const admitted = this.admitted(msg, serverIds, now);
    const walKey = this.walSeq++;
    try {
      await this.root.transaction(() => {
        this.wal.put(walKey, body);
        this.seen.put(seenKey, msg.second);
        this.registry.flushDirty();
      });
    } catch (err) {
      this.counters.storage_full++;
      this.lastError = writeFailure(err);
      return { status: 503, reason: 'storage_full', error: `storage write failed (${this.lastError}); free disk space or raise --map-bytes; the rack will retry` };
    }
    this.addToHead(admitted, walKey, body.length, serverIds);
    this.onIngest?.(msg.second);
    if (msg.second < this.flushedThrough) this.counters.batches_late++;
    let points = 0;
    let summaries = 0;
    for (const s of msg.servers) {
      points += s.series.pointKinds.length;
      summaries += s.series.distKinds.length;
    }
    this.counters.batches_ingested++;
    this.counters.points_ingested += points;
    this.counters.summaries_ingested += summaries;
    this.counters.bytes_ingested += body.length;
    return { status: 204, duplicate: false, points: points + summaries };
  }

  /**
   * Registers the batch's metrics within the cardinality limits (core/cardinality.ts) and learns
   * their names; returns the batch without the refused metrics' data (counted).
   */
  private admitted(msg: RackBatchMessage, serverIds: Uint32Array, now: number): RackBatchMessage {
    const drop = admitMetrics(this.registry, msg, serverIds, { nowMs: now, perServerMax: this.opts.metricsPerServerMax ?? this.opts.metricsMax });
    const r = msg.rollup;
    let start = 0;
    for (let j = 0; j < r.nameEnds.length; j++) {
      const end = r.nameEnds[j]!;
      if (drop === null || drop.get(r.nameHashes[2 * j]!, r.nameHashes[2 * j + 1]!) < 0) this.registry.name(r.nameHashes[2 * j]!, r.nameHashes[2 * j + 1]!, Buffer.from(r.nameBytes.buffer, r.nameBytes.byteOffset + start, end - start).toString('latin1'), now);
      start = end;
    }
    if (drop === null) return msg;
    const kept = withoutMetrics(msg, drop);
    this.counters.points_dropped_overflow += kept.dropped;
    return kept.msg;
  }

  /** Seconds before this have had their block written at least once. */
  private flushedThrough = 0;

  /** Writes every block whose end plus grace has passed. Returns the rows written. */
  async flushDue(nowMs: number): Promise<number> {
    if (this.flushing) return 0;
    this.flushing = true;
    let written = 0;
    try {
      // Due: ended plus grace, and quiet for a moment (a backfilling rack sends a block's seconds
      // back to back: writing it once beats merging it into its row every second) — unless
      // memory is getting short.
      const pressed = this.headBytes > this.opts.headBytesMax / 2;
      const quietMs = Math.min(2000, this.opts.flushGraceMs);
      const due = [...this.head.keys()]
        .filter((b) => (b + this.opts.blockSeconds) * 1000 + this.opts.flushGraceMs <= nowMs && (pressed || nowMs - (this.lastArrivalMs.get(b) ?? 0) >= quietMs))
        .sort((a, b) => a - b);
      for (const block of due) written += await this.flushBlock(block);
    } finally {
      this.flushing = false;
    }
    return written;
  }

  private async flushBlock(block: number): Promise<number> {
    const items = this.head.get(block) ?? [];
    const byRack = new Map<number, HeadItem[]>();
    for (const it of items) {
      const list = byRack.get(it.rackId);
      if (list === undefined) byRack.set(it.rackId, [it]);
      else list.push(it);
    }
    let written = 0;
    try {
      await this.root.transaction(() => {
        for (const [rackId, list] of byRack) written += this.writeRackBlock(block, rackId, list);
        for (const it of items) this.wal.remove(it.walKey);
      });
    } catch (err) {
      this.counters.flush_errors++;
      this.lastError = writeFailure(err);
      console.error(`core: writing block ${block} failed (${this.lastError}); its batches stay in the WAL and are retried`);
      return 0;
    }
    this.head.delete(block);
    this.lastArrivalMs.delete(block);
    for (const it of items) this.headBytes -= it.bytes;
    this.counters.rows_written += written;
    this.flushedThrough = Math.max(this.flushedThrough, block + this.opts.blockSeconds);
    return written;
  }

  /** Inside a write transaction: builds and writes (merging with stored rows) one rack's block. */
  private writeRackBlock(block: number, rackId: number, items: HeadItem[]): number {
    const b = this.builder;
    b.begin();
    items.sort((x, y) => x.msg.second - y.msg.second || x.walKey - y.walKey);
    for (const it of items) b.addBatch(it, block);
    for (const { lo, hi } of b.metricHashes()) {
      const old = this.rows.get(rowKey(block, lo, hi, rackId));
      if (old === undefined) continue;
      try {
        b.addRow(lo, hi, decodeRow(old));
        this.counters.rows_merged++;
      } catch (err) {
        if (!(err instanceof RowError)) throw err;
        this.counters.rows_corrupt++;
      }
    }
    // In key order: the B-tree fills pages front to back instead of splitting them at random.
    const rows = b.build(this.opts.blockSeconds).map((r) => ({ key: rowKey(block, r.lo, r.hi, rackId), input: r.input }));
    rows.sort((x, y) => Buffer.compare(x.key, y.key));
    for (const r of rows) this.rows.put(r.key, encodeRow(r.input));
    return rows.length;
  }

  /**
   * Visits every row of one metric with data in [fromSecond, toSecond): written rows and the
   * head alike. `racks` limits to those rack ids. Rows are columnar (core/block.ts).
   */
  read(lo: number, hi: number, fromSecond: number, toSecond: number, visit: (row: DecodedRow, blockStart: number, rackId: number) => void, racks?: ReadonlySet<number>): void {
    const S = this.opts.blockSeconds;
    for (let block = this.blockOf(fromSecond); block < toSecond; block += S) {
      for (const { key, value } of this.rows.getRange({ start: rowKey(block, lo, hi, 0), end: rowKey(block, lo, hi, 0xffffffff) })) {
        const rackId = key.readUInt32BE(12);
        if (racks !== undefined && !racks.has(rackId)) continue;
        try {
          visit(decodeRow(value), block, rackId);
        } catch (err) {
          if (!(err instanceof RowError)) throw err;
          this.counters.rows_corrupt++;
        }
      }
      const items = this.head.get(block);
      if (items === undefined) continue;
      const byRack = new Map<number, HeadItem[]>();
      for (const it of items) {
        if (racks !== undefined && !racks.has(it.rackId)) continue;
        const list = byRack.get(it.rackId);
        if (list === undefined) byRack.set(it.rackId, [it]);
        else list.push(it);
      }
      for (const [rackId, list] of byRack) {
        const b = new RowBuilder(1);
        b.begin();
        for (const it of [...list].sort((x, y) => x.msg.second - y.msg.second || x.walKey - y.walKey)) b.addBatch(it, block, { lo, hi });
        for (const r of b.build(S)) visit(asDecoded(r.input), block, rackId);
      }
    }
  }

  /** The LMDB environment, for other core state (stored queries) kept beside the data. */
  get env(): RootDatabase {
    return this.root;
  }

  rackIdOf(name: string): number | undefined {
    return this.rackIds.get(name);
  }

  rackNames(): Map<number, string> {
    return new Map([...this.rackIds].map(([n, id]) => [id, n]));
  }

  /** Deletes rows older than the retention, in bounded transactions. Returns rows deleted. */
  async retentionSweep(nowMs: number, batchRows = 5000): Promise<number> {
    const cutoff = this.blockOf(Math.floor(nowMs / 1000) - this.opts.retentionSeconds);
    const end = rowKey(cutoff, 0, 0, 0);
    let deleted = 0;
    for (;;) {
      const keys = [...this.rows.getKeys({ end, limit: batchRows })];
      if (keys.length === 0) break;
      await this.root.transaction(() => {
        for (const k of keys) this.rows.remove(k);
      });
      deleted += keys.length;
      if (keys.length < batchRows) break;
      await new Promise((r) => setImmediate(r)); // let ingest and queries run between chunks
    }
    const seenCutoff = Math.floor(nowMs / 1000) - Math.max(3600, this.opts.retentionSeconds);
    const oldSeen = [...this.seen.getRange()].filter((e) => e.value < seenCutoff).map((e) => e.key);
    if (oldSeen.length > 0) await this.root.transaction(() => oldSeen.forEach((k) => this.seen.remove(k)));
    this.counters.retention_rows_deleted += deleted;
    return deleted;
  }

  /** Persists registry last-seen times. */
  async saveRegistry(): Promise<void> {
    this.registry.touchAll();
    await this.root.transaction(() => this.registry.flushDirty());
  }

  /** Bytes the data file takes on disk (its high-water mark; freed pages are reused, not returned). */
  diskBytes(): number {
    const s = this.root.getStats() as { pageSize?: number; lastPageNumber?: number };
    return ((s.lastPageNumber ?? 0) + 1) * (s.pageSize ?? 4096);
  }

  /** Bytes of pages holding data now (falls when retention deletes rows). */
  usedBytes(): number {
    let pages = 0;
    let pageSize = 4096;
    for (const db of [this.wal, this.rows, this.seen, this.racks]) {
      const st = db.getStats() as { pageSize: number; treeBranchPageCount: number; treeLeafPageCount: number; overflowPages: number };
      pages += st.treeBranchPageCount + st.treeLeafPageCount + st.overflowPages;
      pageSize = st.pageSize;
    }
    return pages * pageSize;
  }

  /** '' when there is room to ingest, else why not (checked at most every 500 ms). */
  storageFull(nowMs = Date.now()): string {
    if (nowMs - this.room.checkedMs < 500) return this.room.reason;
    this.room.checkedMs = nowMs;
    this.room.reason = '';
    if (this.opts.diskBytesMax > 0) {
      const used = this.usedBytes();
      if (used >= this.opts.diskBytesMax) this.room.reason = `storage budget reached: ${used} B in use ≥ --disk-bytes-max ${this.opts.diskBytesMax}; shorten --retention or raise the budget; the rack spools and retries`;
    }
    if (this.room.reason === '') {
      try {
        const fs = statfsSync(this.opts.dir);
        const free = fs.bavail * fs.bsize;
        if (free < this.opts.diskReserveBytes) this.room.reason = `disk nearly full: ${free} B free < reserve ${this.opts.diskReserveBytes} B at ${this.opts.dir}; free space; the rack spools and retries`;
      } catch {
        // statfs unsupported: rely on write errors.
      }
    }
    return this.room.reason;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

export function rowKey(block: number, lo: number, hi: number, rackId: number): Buffer {
  const k = Buffer.allocUnsafe(16);
  k.writeUInt32BE(block, 0);
  k.writeUInt32BE(hi, 4);
  k.writeUInt32BE(lo, 8);
  k.writeUInt32BE(rackId >>> 0, 12);
  return k;
}
