// One store (issue 12): an LMDB environment holding some of a node's shards (core/layout.ts),
// owned by one worker thread. Every key but the WAL's begins with its shard (u16), so a shard is
// a contiguous key range in each of those databases and can be copied on its own:
//   log     [seq u48][shard] → a ShardSection frame (the WAL, core/walkey.ts): written (synced)
//           before the request that carried it is acknowledged, appended at the end in arrival
//           order; deleted from the front once every entry before it is in written rows. With
//           dedup, in an environment of its own (<store>/wal): the rows' file holds rows only.
//           The one key range not led by its shard: a shard's entries are picked out of it.
//   rows    [shard][block u32][metric hash hi, lo][rack id u32] → [WAL seq u48][pointer] into
//           groups, or [WAL seq u48][row] (written before row groups): one metric's per-second
//           values for every server of a rack over a block (core/block.ts). The WAL seq is the
//           newest entry the row holds: a replay skips older ones.
//   groups  [shard][block u32][group id u32] → the rows one slice wrote for that (shard, block),
//           concatenated and cut into chunks of whole LMDB pages (core/rowgroups.ts: a row alone
//           would take whole pages); a row may continue into the chunks with the next ids.
//   dedup   [shard][rack] → the newest (session, seq) seen and a window of recent seqs.
//   racks, servers, metrics: this store's registry (ids are store-local).
// Sections go to the head (core/head.ts) at ingest; rows are written continuously in slices of
// a bounded time (`sliceMs`), so the worker keeps ingesting while a large block is written.

import { statfsSync } from 'node:fs';
import { join } from 'node:path';
import { TransactionFlags, type Database, type RootDatabase, type Transaction } from 'lmdb';
import { Body, decodeFrame, KindCode, nameAt, type RejectReason } from '../schema/codec.js';
import { batchBytesMax, rollupServer, sectionPointsMax } from '../schema/limits.js';
import { closeLmdb, deleteRange, openLmdb, writeFailure } from '../lib/lmdb.js';
import { hashKey } from '../schema/names.js';
import { originRack, shardOf, type ShardSectionMessage } from '../schema/section.js';
import { SketchAccumulator } from '../schema/sketch.js';
import { decodeRow, encodeRow, headerBytes, RowError, RowScratch, type DecodedRow, type RowDecodeOptions, type RowReadOptions } from './block.js';
import { Dedup, dedupEntriesMax, windowSeqs } from './dedup.js';
import { coreLimits } from './limits.js';
import { buildRow, ColumnPool, indexEntryBytes, MetricHead } from './head.js';
import { Registry } from './registry.js';
import { RowCache, rowCacheBytesMax } from './rowcache.js';
import { RowDirectories, type Directory, type DirectoryRow } from './rowdirectory.js';
import { RowVersions } from './rowversions.js';
import { ChunkMemo, groupKey, isPointer, packRows, pageBytes, pointedLength, rowKey, storedRowBytes, type KeyValue } from './rowgroups.js';
import { UnpackArena } from '../schema/pointpack.js';
import { legacyWalKeyParts, walKey, walKeySeq, walKeyShard } from './walkey.js';
import { restoreFromStream, ShardRestore, snapshotChunks, SnapshotError, type RestoreSummary, type ShardIo } from './snapshot.js';

/** Keys of corrupt rows remembered so that each is counted once (core/store.ts noteCorrupt): ~40 B each. */
const corruptRowsKeptMax = 10_000;

/** Distinct seconds of a WAL replay noted for stored queries (a WAL holds minutes of seconds; the late-seconds set holds 100,000). */
const replayedSecondsMax = 100_000;

/**
 * Puts `key` at the end of `db` with LMDB's MDB_APPEND: the full last page is left as it is and a
 * new one begun (without it, a page split at the end leaves two half-full pages). A key not
 * above every other is not written, and lmdb-js says so only through the put's answer (checked:
 * the transaction would commit without it): callers append only above the largest key they put,
 * and a refused one throws.
 * lmdb-js takes the flag in put's options; its types declare only a version there.
 */
function appendPut(db: Database<Uint8Array, Buffer>, key: Buffer, value: Buffer): void {
  const put = (db.put as unknown as (k: Buffer, v: Buffer, o: { append: boolean }) => Promise<boolean> & { result?: boolean }).call(db, key, value, { append: true });
  // In a write transaction lmdb-js answers at once (`result`): a dropped append fails the commit (503, retried), never an acknowledged loss.
  if (put.result === false) throw new Error(`BUG: WAL entry ${walKeySeq(key)} of shard ${walKeyShard(key)} is not above the WAL's last key; the append was refused`);
}

export interface StoreOptions {
  dir: string;
  /** S: shards of the node (the shard of a metric is hash lo32 mod S). */
  shardCount: number;
  /** The shards this store holds. */
  shards: readonly number[];
  retentionSeconds: number;
  blockSeconds: number;
  mapBytes: number;
  /** A block is written this long after it ends (late sections within it stay in memory). */
  flushGraceMs: number;
  headBytesMax: number;
  metricsMax: number;
  metricsPerServerMax: number;
  serversMax: number;
  racksMax: number;
  /** Seconds ahead of the clock a second may be (default coreLimits.futureSecondsMax). */
  futureSecondsMax?: number;
  /** Points one request's sections may decode to (default sectionPointsMax; tests make it small). */
  requestPointsMax?: number;
  /** coreLimits.lastSeenSaveMs for this store (tests make it 0: every save writes every entry, retirement without its margin). */
  lastSeenSaveMs?: number;
  /** Longest a row-writing slice runs before the worker turns to ingest again. */
  sliceMs: number;
  diskBytesMax: number;
  diskReserveBytes: number;
  /**
   * WAL bytes of blocks due for writing beyond each shard's newest due block (rows behind the
   * ingest, as in a backfill): past it ingest answers 503 rows_behind; past a quarter of it the
   * worker gives row writing more of its time. Bounds how far the WAL — and so the LMDB file,
   * which never shrinks — outgrows the rows. Absent: no bound.
   */
  walBacklogBytesMax?: number;
}

/** One section as a worker receives it: its bytes (8-byte aligned) and what the request said of it. */
export interface SectionIn {
  shard: number;
  bytes: Uint8Array;
}

export interface RequestHeader {
  rack: string;
  session: number;
  seq: number;
  second: number;
  late: boolean;
  /** originRack (absent: the same) or originImport (schema/section.ts). */
  origin?: number;
  /**
   * A cluster node's request from shard `shard`'s stream (issue 13): one section, stream
   * sequence `seq`, delivered right after `after` (the previous message the node received from
   * that stream, or the sequence it had applied when its consumer started). It is applied only
   * when `after` is the shard's applied sequence, and that sequence is recorded in the
   * transaction that stores the section, so a crash replays exactly what was not applied.
   */
  stream?: StreamPosition;
}

/** Where a stream request lies in its shard's stream (RequestHeader.stream). */
export interface StreamPosition {
  seq: number;
  after: number;
  /**
   * The stream's time for the message (ms), when known: recorded with the applied sequence as the
   * shard's mark (streamMark), which the consumer checks against the stream when it opens.
   */
  ms?: number;
}

/** The applied sequence of a shard whose restore from another node did not complete: copy it again. */
export const restoringSeq = -1;

export type StoreIngestResult =
  | { status: 204; points: number; duplicates: number }
  /** 409 stream_gap: a stream request whose `after` is not the applied sequence (the consumer restarts from it). */
  | { status: 400 | 409 | 503; error: string; reason: string; applied?: number };

interface ShardHead {
  /** block → metric index → rack id → head. */
  blocks: Map<number, Map<number, Map<number, MetricHead>>>;
  /** block → WAL keys of its sections (deleted once the block's heads are all written). */
  wal: Map<number, Buffer[]>;
  /** block → bytes of its WAL entries. */
  walBytes: Map<number, number>;
  /** block → the least WAL seq of its entries (what the WAL's front waits for: walFloor). */
  walMin: Map<number, number>;
  lastArrivalMs: Map<number, number>;
  /**
   * block → the racks with sections in it, each with the most entries (server × metric) one of its
   * sections had: a metric's columns are sized by its first section and double as more servers
   * come, and a metric new in the block gets its own; headGrowth charges a section with more
   * entries than any before it of its rack.
   */
  racksIn: Map<number, Map<number, number>>;
}

/**
 * A copy of b by its length (the array under lmdb-js' buffer is larger, and slice() copies all of
 * it), with storage of its own (Buffer.from takes a slice of Node's 8 KiB pool and a kept copy
 * keeps all of the pool's slab alive).
 */
function ownCopy(b: Uint8Array): Uint8Array {
  return Uint8Array.prototype.slice.call(b, 0, b.length) as Uint8Array;
}

/** What a row's bytes kept in its directory cost beside their length (their array and its storage). */
const keptRowBytesOverhead = 120;
const rackIdsMax = 1 << 14; // head keys pack (metric, rack); racksMax stays below
/** Registry entries one periodic save writes at most (~2 ms a thousand): the rest at the next. */
const registryEntriesPerSaveMax = 20_000;

/** About what a metric's head costs beside its columns (MetricHead.bytes' fixed part and its map entries). */
const metricHeadBytes = 300;
/** A block without head data: no head racks to visit. */
const noRackIds: readonly number[] = [];
/** Page size of a new WAL environment (see the constructor). */
export const walPageBytes = 16_384;
/** Names waiting for their metric's first data: a few seconds of a fleet's new names. */
const pendingNamesMax = 65_536;

export class Store {
  readonly registry: Registry;
  private readonly root: RootDatabase;
  private readonly walEnv: RootDatabase;
  private readonly wal: Database<Uint8Array, Buffer>;
  private readonly rows: Database<Uint8Array, Buffer>;
  /** Row groups: the rows one slice writes for one (shard, block), packed (see packRows). */
  private readonly groups: Database<Uint8Array, Buffer>;
  private readonly state: Database<number, string>;
  /** Per shard, the newest stream sequence applied (cluster nodes; in the WAL's environment, committed with the sections). */
  private readonly streamDb: Database<number, number>;
  /** Per shard, the creation time of its stream when it was last read (a cluster node: a stream made again while it was down). */
  private readonly streamCreatedDb: Database<string, number>;
  /** Per shard, its mark: the newest applied stream message whose time was known, [sequence, the stream's time in ms] (see streamMark). */
  private readonly streamMarkDb: Database<[number, number], number>;
  private readonly streamApplied = new Map<number, number>();
  /** The newest row group id (unique per store; persisted with the groups). */
  private groupSeq = 0;
  private readonly racks: Database<number, string>;
  private readonly rackIds = new Map<string, number>();
  /** Rack ids assigned since the last slice of rows (written with it). */
  private readonly racksDirty = new Map<string, number>();
  private readonly rackNamesById: (string | undefined)[] = [];
  /** When each rack last sent (persisted with the registry's last-seen times; retire() forgets racks silent past the retention). */
  private readonly rackSeen: Database<number, string>;
  private readonly rackSeenMs = new Map<string, number>();
  /** Ids of retired racks, reused first (lowest first: popped from the end). */
  private readonly freeRackIds: number[] = [];
  readonly dedup: Dedup;
  /** Racks this store takes: racksMax, or fewer when the de-duplication table cannot hold that many racks' windows for every shard. */
  readonly racksMax: number;
  private readonly heads = new Map<number, ShardHead>();
  private headBytes = 0;
  /** Bytes of WAL entries whose rows are not written yet. */
  private walBytes = 0;
  /**
   * Entries of written blocks not deleted yet, a group per written (shard, block): the WAL is
   * deleted from its front, up to the oldest entry of a block not written (walFloor), so deletes
   * free whole pages. Bounded: past walDoneBytesMax (a block held back, as a second far ahead of
   * the clock is, keeps every entry after it) they go whatever their place (wal_deleted_held).
   */
  private walDone: { keys: Buffer[]; bytes: number }[] = [];
  /** Where ingestMany's sections are unpacked (schema/pointpack.ts): reused by the next call. */
  private readonly unpacked = new UnpackArena(16 * 1024 * 1024);
  /** The largest seq put into the WAL (appendPut takes only keys above it). */
  private walTail = 0;
  private walDoneBytes = 0;
  private walSeq: number;
  private readonly acc = new SketchAccumulator();
  /** Columns rows are decoded into by `read` (its visitor is done with a row before the next). */
  private readonly rowScratch = new RowScratch();
  private readonly readChunk = (rowKey: Uint8Array, id: number) => this.groups.getBinaryFast(groupKey(rowKey, id));
  /** The chunk `read` holds, and its scratch for rows spanning chunks. */
  private readonly chunkMemo = new ChunkMemo((k) => this.groups.getBinaryFast(k));
  /**
   * Point columns of written heads, reused by new ones (head.ts): a block's heads are written
   * while the next block's start, so up to half the head bound is kept (within what live heads
   * leave of it); a fleet's next block then reuses the last one's memory instead of faulting in
   * new pages (a fixed 512 MiB covered 3% of a block at 20 M points/s).
   */
  private readonly columns: ColumnPool;
  /** Names whose metric has no admitted data yet (hash key → name). */
  private readonly pendingNames = new Map<string, string>();
  readonly counters = {
    requests_ingested: 0,
    /** Sections refused alone (they do not decode or check); their request's other sections are stored. */
    sections_refused: 0,
    /** Synced ingest transactions: fewer than requests when requests wait together (group commit). */
    commits: 0,
    sections_ingested: 0,
    sections_duplicate: 0,
    sections_late: 0,
    points_ingested: 0,
    summaries_ingested: 0,
    /** Stream messages (cluster) delivered again after they were applied: acknowledged, not stored again. */
    stream_redelivered: 0,
    /** Stream messages that did not follow the applied sequence (the consumer restarts from it). */
    stream_gaps: 0,
    /** Stream messages refused for good (malformed): the stream moves past them, counted by reason. */
    stream_refused: 0,
    /** Shard streams found made again or cut back under what was applied (read again from their first message). */
    stream_resets: 0,
    bytes_ingested: 0,
    storage_full: 0,
    head_full: 0,
    rows_written: 0,
    /** Bytes of rows in groups that a later merge replaced (freed when their block passes the retention). */
    group_bytes_orphaned: 0,
    /** Row-group chunks the retention deleted (a slice's run of rows is cut into chunks of 8 pages). */
    retention_groups_deleted: 0,
    /** Bytes of row values written (encoded rows, before LMDB pages). */
    row_bytes_written: 0,
    /** Ingest requests refused because rows were too far behind (walBacklogBytesMax). */
    rows_behind: 0,
    rows_merged: 0,
    row_slices: 0,
    slices_over_50ms: 0,
    flush_errors: 0,
    rows_corrupt: 0,
    /** Stored-query reads of rows (issue 14): found decoded in the row cache, decoded, evicted; bytes held (a gauge). */
    row_cache_hits: 0,
    row_cache_misses: 0,
    row_cache_evicted: 0,
    row_cache_bytes: 0,
    /** Reads of a block's row directory (core/rowdirectory.ts): kept and unchanged, read from LMDB, evicted; bytes held (a gauge). */
    row_directory_hits: 0,
    row_directory_misses: 0,
    row_directory_evicted: 0,
    row_directory_bytes: 0,
    /** Ad-hoc answers' windows (core/query/windowcache.ts, kept by the worker beside this store): from the cache, evaluated, evicted; held (a gauge). */
    answer_cache_hits: 0,
    answer_cache_misses: 0,
    answer_cache_evicted: 0,
    answer_cache_windows: 0,
    retention_rows_deleted: 0,
    wal_replayed: 0,
    wal_unapplied: 0,
    wal_corrupt: 0,
    /** WAL entries deleted while an older one was still needed (walDone past its bound). */
    wal_deleted_held: 0,
    /** Sections unpacked apart from the arena (UnpackArena.overflows, this store's). */
    unpack_overflows: 0,
    /** Points and summaries of metrics refused by the cardinality limits (not stored). */
    points_dropped_overflow: 0,
    /** Points and summaries of servers refused because the registry is full. */
    points_dropped_servers: 0,
    servers_refused: 0,
    names_pending_dropped: 0,
    /** Points and summaries whose value cannot be stored (not finite, inconsistent): that entry alone. */
    points_dropped_bad_value: 0,
    /** Seconds replayed from the WAL at start beyond replayedSecondsMax: stored, but their stored queries' windows not evaluated again. */
    replayed_seconds_dropped: 0,
    /** Registry entries whose last-seen time a periodic save wrote again (a share per save: those far behind). */
    registry_entries_saved: 0,
    /** Rack rollups of a distribution's second not kept: a server summary of that second was refused (its servers' sketches answer instead). */
    rollups_dropped_partial: 0,
    /** Points and summaries of a kind other than their metric's (issue 16.6): a gauge or counter of a distribution metric, or the reverse. */
    points_dropped_kind_conflict: 0,
    /** Summaries of one series-second left out of a row because merged their count would pass 2³² − 1 (a rollup: that second's). */
    summaries_dropped_count_overflow: 0,
    servers_retired: 0,
    metrics_retired: 0,
    racks_retired: 0,
    /** Shard snapshots (issue 13, core/snapshot.ts): taken for another node; restored here, and failed restores. */
    shard_snapshots: 0,
    shard_restores: 0,
    shard_restores_failed: 0,
    /** What restores took in: rows, WAL entries and de-duplication marks. */
    restored_rows: 0,
    restored_wal_entries: 0,
    restored_marks: 0,
    /** Restored servers and metrics this store's registry refused (full, or a metric of another kind here): their entries are left out or unlisted. */
    restore_servers_refused: 0,
    restore_metrics_refused: 0,
  };
  readonly rejected: Partial<Record<RejectReason | 'not_a_section' | 'wrong_section' | 'too_many_points' | 'racks_full' | 'past_retention' | 'future', number>> = {};
  /** Decoded rows stored queries read again (core/rowcache.ts). */
  private rowCache = new RowCache(rowCacheBytesMax, this.counters);
  private readonly directories = new RowDirectories(this.counters);
  /** When each block's rows last changed: cached answers (core/query/windowcache.ts) check it. */
  readonly rowVersions = new RowVersions();
  /** Longest row-writing slice (ms) since the last read of it: the pause a slice causes ingest. */
  sliceMsMax = 0;
  lastError = '';
  /** Set by stopBackgroundWork; long sweeps ask `stopped` between batches. */
  private stopping = false;
  private readonly stopped = () => this.stopping;
  /** Called with a section's shard and second once it is durable (stored queries re-evaluate late windows). */
  onIngest: ((shard: number, second: number) => void) | null = null;
  /**
   * Seconds of the sections replayed from the WAL at open (onIngest is not set yet then): stored
   * queries re-evaluate windows over them once they know their queries (late data acknowledged
   * before a restart revised nothing). Taken by the worker; at most replayedSecondsMax.
   */
  readonly replayedSeconds = new Set<number>();
  private room = { checkedMs: 0, reason: '' };
  /** Seconds before this have had their block written at least once, per shard. */
  private readonly flushedThrough = new Map<number, number>();
  /** Kind of each registered metric, by registry index: the kind it was first admitted with. */
  private metricKinds = new Uint8Array(1024);
  /** Keys (latin1) of stored rows counted as corrupt (noteCorrupt): at most corruptRowsKeptMax. */
  private readonly corruptRows = new Set<string>();

  constructor(readonly opts: StoreOptions) {
    if (opts.racksMax >= rackIdsMax) throw new Error(`BUG: racksMax ${opts.racksMax} ≥ ${rackIdsMax} (head keys pack rack ids)`);
    this.columns = new ColumnPool(Math.floor(opts.headBytesMax / 2), () => opts.headBytesMax - this.headBytes);
    this.root = openLmdb({ path: opts.dir, mapSize: opts.mapBytes, maxDbs: 16 });
    // The WAL (and the de-duplication marks committed with it) in an environment of its own: its
    // file is sized by the WAL's high-water mark (bounded: walBacklogBytesMax), and its freed pages
    // — runs of many pages per section — never fragment the rows' file, which then holds rows only.
    //
    // Its pages are 16 KiB (walPageBytes) where a new data directory makes it. A section (~13 KB:
    // a 40-server rack's second of one of 64 shards at 2,000 metrics a server) then takes one
    // overflow page instead of a run of four, and LMDB's free list — every page of every section,
    // freed a block at a time — holds a quarter as many ids: with 4 KiB pages, merging that list
    // at each commit (mdb_freelist_save) was 11 % of a warmed-up core's CPU (perf), and ingest
    // per CPU-second fell from ~4.5 M points fresh to 3.5–3.9 M after a few minutes. With 16 KiB:
    // 4.2–4.5 M (1 worker), 5.1 M (2 workers), docs/figures.md (eighteenth session). A directory
    // whose WAL was made with 4 KiB pages keeps them (LMDB reads the size from the file).
    // Since racks pack their points (schema/pointpack.ts), such a section is ~4 KB and sits in a
    // leaf page, about four to a page: fewer page ids still. Tried (twenty-sixth session, the core
    // bench's 2-worker run): 4 KiB pages wrote 3.0 GB to the disk instead of 4.3 at no better rate;
    // keys ordered by sequence before shard, each shard's block deleted as soon as it was written,
    // wrote 11.7 GB (every page of the block's seconds rewritten once per shard). Keyed by sequence
    // and deleted from the front only (core/walkey.ts, deleteWritten): 1.4 GB (twenty-seventh).
    this.walEnv = openLmdb({ path: join(opts.dir, 'wal'), mapSize: opts.mapBytes, maxDbs: 8, pageSize: walPageBytes });
    this.wal = this.walEnv.openDB<Uint8Array, Buffer>({ name: 'log', encoding: 'binary', keyEncoding: 'binary' });
    this.rows = this.root.openDB<Uint8Array, Buffer>({ name: 'rows', encoding: 'binary', keyEncoding: 'binary' });
    this.racks = this.root.openDB<number, string>({ name: 'racks', encoding: 'json' });
    this.rackSeen = this.root.openDB<number, string>({ name: 'rackSeen', encoding: 'json' });
    this.groups = this.root.openDB<Uint8Array, Buffer>({ name: 'groups', encoding: 'binary', keyEncoding: 'binary' });
    this.state = this.root.openDB<number, string>({ name: 'state', encoding: 'json' });
    this.groupSeq = this.state.get('groupSeq') ?? 0;
    checkStoreFormat(this.state, opts.dir);
    const pageSize = (this.groups.getStats() as { pageSize: number }).pageSize;
    if (pageSize !== pageBytes) throw new Error(`${opts.dir}: LMDB pages of ${pageSize} B, but row groups are cut for ${pageBytes}-byte pages (core/rowgroups.ts); this build cannot use this data directory`);
    const dedupDb = this.walEnv.openDB<Buffer, Buffer>({ name: 'dedup', encoding: 'binary', keyEncoding: 'binary' });
    this.streamDb = this.walEnv.openDB<number, number>({ name: 'stream', encoding: 'json', keyEncoding: 'uint32' });
    for (const { key, value } of this.streamDb.getRange()) this.streamApplied.set(key, value);
    this.streamCreatedDb = this.walEnv.openDB<string, number>({ name: 'streamCreated', encoding: 'json', keyEncoding: 'uint32' });
    this.streamMarkDb = this.walEnv.openDB<[number, number], number>({ name: 'streamMark', encoding: 'json', keyEncoding: 'uint32' });
    moveFromRoot(this.root, this.walEnv, ['wal', 'dedup']);
    migrateLegacyWal(this.walEnv, this.wal);
    this.dedup = new Dedup(dedupDb, { racksMax: opts.racksMax, shards: opts.shards.length });
    // Racks whose de-duplication windows the table holds for every shard of this store: beyond
    // them, a rack is refused (racks_full, counted) rather than taken while the table evicts
    // active racks' windows, whose retries were then stored twice (5,000 racks on 32 shards).
    this.racksMax = Math.min(opts.racksMax, Math.floor(dedupEntriesMax / Math.max(4, opts.shards.length)));
    const openedMs = Date.now();
    for (const { key, value } of this.racks.getRange()) {
      this.rackIds.set(key, value);
      this.rackNamesById[value] = key;
      // A rack without a stored time (a store older than rack retirement): seen now.
      this.rackSeenMs.set(key, this.rackSeen.get(key) ?? openedMs);
    }
    for (let id = this.rackNamesById.length - 1; id >= 1; id--) if (this.rackNamesById[id] === undefined) this.freeRackIds.push(id);
    // Times of racks whose id never became durable (a crash before their first rows): dropped.
    const orphans = [...this.rackSeen.getKeys()].filter((name) => !this.rackIds.has(name));
    if (orphans.length > 0) this.root.transactionSync(() => orphans.forEach((name) => this.rackSeen.remove(name)));
    this.registry = new Registry(this.root.openDB({ name: 'servers', encoding: 'json' }), this.root.openDB({ name: 'metrics', encoding: 'json' }), opts.metricsMax);
    for (let mi = 0; mi < this.registry.metricIndexLimit; mi++) {
      const m = this.registry.metricAt(mi);
      if (m !== undefined) this.noteKind(mi, m.kind);
    }
    for (const k of opts.shards) this.heads.set(k, { blocks: new Map(), wal: new Map(), walBytes: new Map(), walMin: new Map(), lastArrivalMs: new Map(), racksIn: new Map() });
    let last = 0;
    for (const key of this.wal.getKeys({ reverse: true, limit: 1 })) last = walKeySeq(key as Buffer);
    this.walTail = last;
    // WAL seqs never go back, even when the WAL is empty: rows record the newest seq they hold
    // and a replay skips older entries, so a seq reused after a restart (the WAL had been
    // emptied) made a later crash drop acknowledged late data for a written block. The next seq
    // is persisted with every slice of rows; a directory written before that starts above the
    // clock in ms (its seqs counted from 1 and never came near).
    const persisted = this.state.get('walSeq');
    this.walSeq = Math.max(last + 1, persisted ?? Date.now());
    this.replayWal();
  }

  /**
   * Moves shard `shard`'s stream past message `seq` that cannot be stored (it does not decode;
   * counted by the caller's reason), in stream order like ingestMany: 'refused' once recorded,
   * else why not (retry).
   */
  skipStream(shard: number, seq: number, after: number): 'refused' | string {
    if (!this.heads.has(shard)) return `shard ${shard} is not in this store`;
    const now = this.streamApplied.get(shard) ?? 0;
    if (seq <= now) return 'refused';
    if (after !== now) {
      this.counters.stream_gaps++;
      return `stream_gap: message ${seq} follows ${after}, but ${now} is applied`;
    }
    const failed = this.recordStreamSeq(shard, seq);
    if (failed !== null) return failed;
    this.counters.stream_refused++;
    return 'refused';
  }

  /** Commits `seq` as shard `shard`'s applied stream sequence (no data with it); null, or why not. */
  private recordStreamSeq(shard: number, seq: number, forgetMark = false): string | null {
    try {
      this.walEnv.transactionSync(() => {
        this.streamDb.put(shard, seq);
        // (Rebased: the mark names a message of the stream as it was.)
        if (forgetMark) this.streamMarkDb.remove(shard);
      });
    } catch (err) {
      this.lastError = writeFailure(err);
      return `storage write failed (${this.lastError})`;
    }
    this.streamApplied.set(shard, seq);
    return null;
  }

  /**
   * Sets shard `shard`'s applied stream sequence to `seq`, below what it was: its stream was made
   * again, or lost its tail (a NATS server's storage lost), and sequences up to the old one now
   * name other messages. Reading from `seq` + 1 applies them; sections stored already are
   * dropped as duplicates by the (rack, session, seq) marks.
   */
  rebaseStream(shard: number, seq: number): string | null {
    if (!this.heads.has(shard)) return `shard ${shard} is not in this store`;
    const now = this.streamApplied.get(shard) ?? 0;
    if (!(seq >= 0 && seq <= now)) return `BUG: rebasing shard ${shard}'s stream from ${now} to ${seq}`;
    const failed = this.recordStreamSeq(shard, seq, true);
    if (failed === null) this.counters.stream_resets++;
    return failed;
  }

  /**
   * Empties shard `shard`, left restoring by a copy that did not complete (restoringSeq; its
   * rows may be partial, or all there when a crash came right after the mark), and records
   * stream sequence 0, so that its consumer reads the shard's stream from its first message.
   * For a cluster node with no other live owner to copy from: what aged out of the stream is
   * lost, and the caller counts and logs it.
   */
  async restartFromStream(shard: number): Promise<void> {
    if (!this.heads.has(shard)) throw new Error(`shard ${shard} is not in this store`);
    const now = this.streamApplied.get(shard) ?? 0;
    if (now !== restoringSeq) throw new Error(`shard ${shard} has applied stream sequence ${now}, not a copy that did not complete: nothing to start again`);
    if (this.restoring.has(shard)) throw new SnapshotError(`shard ${shard} is being restored already; wait for that copy to end`);
    this.restoring.add(shard);
    try {
      await this.wipeShard(shard);
      const failed = this.recordStreamSeq(shard, 0);
      if (failed !== null) throw new Error(failed);
    } finally {
      this.restoring.delete(shard);
    }
  }

  /**
   * The creation time of shard `shard`'s stream as this store last saw it, and, with `created`,
   * that time noted (durably, beside the applied sequence). A node that restarts compares it
   * with the stream's: a stream made again while it was down (its NATS storage lost) numbers
   * other messages with the sequences it applied. Returns the time known before, or an error.
   */
  streamCreated(shard: number, created?: string): { before: string | null } | { error: string } {
    if (!this.heads.has(shard)) return { error: `shard ${shard} is not in this store` };
    const before = this.streamCreatedDb.get(shard) ?? null;
    if (created !== undefined && created !== before) {
      try {
        this.walEnv.transactionSync(() => void this.streamCreatedDb.put(shard, created));
      } catch (err) {
        this.lastError = writeFailure(err);
        return { error: `storage write failed (${this.lastError})` };
      }
    }
    return { before };
  }

  /**
   * Shard `shard`'s mark: the newest applied message of its stream whose time was known, by
   * sequence and the stream's time for it (ms), recorded in the transaction that applied it
   * (ingestMany, from RequestHeader.stream.ms). A consumer compares it with the stream's message
   * under that sequence when it opens: a stream that lost its tail in a correlated crash and grew
   * back past it numbers other messages with sequences this node applied. Gone when the stream
   * is rebased or the shard wiped. Null: none.
   */
  streamMark(shard: number): { mark: { seq: number; ms: number } | null } | { error: string } {
    if (!this.heads.has(shard)) return { error: `shard ${shard} is not in this store` };
    const v = this.streamMarkDb.get(shard);
    return { mark: Array.isArray(v) && v.length === 2 ? { seq: v[0], ms: v[1] } : null };
  }

  /** Per shard of this store, the newest stream sequence applied (0: none; restoringSeq: a copy into it did not complete). */
  streamSeqs(): Record<number, number> {
    const out: Record<number, number> = {};
    for (const k of this.heads.keys()) out[k] = this.streamApplied.get(k) ?? 0;
    return out;
  }

  /** The LMDB environment (stored-query state of these shards lives beside their data). */
  get env(): RootDatabase {
    return this.root;
  }

  get heldBytes(): number {
    return this.headBytes;
  }

  /** Bytes of WAL entries whose rows are not written yet. */
  get unwrittenWalBytes(): number {
    return this.walBytes;
  }

  /** Entries in the WAL once its queued deletes are committed: unwritten, and written ones waiting for the front (walFloor). */
  async walEntries(): Promise<number> {
    await this.walEnv.committed;
    return (this.wal.getStats() as { entryCount: number }).entryCount;
  }

  /** WAL bytes of due blocks beyond each shard's newest due one: how far row writing is behind. */
  walBacklogBytes(nowMs: number): number {
    let behind = 0;
    for (const head of this.heads.values()) {
      let newest = -1;
      let sum = 0;
      for (const [block, bytes] of head.walBytes) {
        if (!this.isDue(block, nowMs)) continue;
        sum += bytes;
        if (block > newest) newest = block;
      }
      if (newest >= 0) behind += sum - (head.walBytes.get(newest) ?? 0);
    }
    return behind;
  }

  /** Whether row writing is behind enough for the worker to give it more of its time. */
  rowsBehind(nowMs: number): boolean {
    return this.walBacklogBytes(nowMs) > this.backlogMax / 4;
  }

  private get backlogMax(): number {
    return this.opts.walBacklogBytesMax ?? Number.POSITIVE_INFINITY;
  }

  private isDue(block: number, nowMs: number): boolean {
    return (block + this.opts.blockSeconds) * 1000 + this.opts.flushGraceMs <= nowMs;
  }

  blockOf(second: number): number {
    return second - (second % this.opts.blockSeconds);
  }

  rackName(id: number): string | undefined {
    return this.rackNamesById[id];
  }

  /** Rack ids given so far (ids are 0 .. rackCount − 1). */
  rackCount(): number {
    return this.rackNamesById.length;
  }

  /** A rack's id, registering it when new. Small: it is inlined into toHead, whose own closures must stay inlined too (a fifth of ingest). */
  private rackId(name: string): number {
    return this.rackIds.get(name) ?? this.newRackId(name);
  }

  private newRackId(name: string): number {
    // Ids from 1; a retired rack's id first.
    const id = this.freeRackIds.pop() ?? Math.max(1, this.rackNamesById.length);
    this.rackIds.set(name, id);
    this.rackNamesById[id] = name;
    // Durable in the transaction of the first rows keyed by it (an asynchronous put could
    // land after them, or never: a restart would then give the id to another rack).
    this.racksDirty.set(name, id);
    return id;
  }

  /** Notes that data of `name` arrived at nowMs (retire() forgets racks silent past the retention). */
  private noteRackSeen(name: string, nowMs: number): void {
    if (nowMs > (this.rackSeenMs.get(name) ?? 0)) this.rackSeenMs.set(name, nowMs);
  }

  /** Sections acknowledged but not yet written as rows come back into the head. */
  private replayWal(): void {
    // In the order the sections came (WAL seq: the keys' order), so the registry's limits
    // (serversMax, metricsMax, the per-server share) decide as they did before the restart.
    // Shard by shard (the keys' order before core/walkey.ts), a server refused at ingest could
    // take the place of one admitted, whose acknowledged points were then dropped, uncounted.
    const keys: Buffer[] = [];
    for (const key of this.wal.getKeys()) keys.push(Buffer.from(key as Uint8Array));
    for (const key of keys) {
      const value = this.wal.get(key);
      if (value === undefined) continue;
      const seq = walKeySeq(key);
      const r = decodeFrame(value, batchBytesMax, { expect: Body.ShardSection });
      if (!r.ok || r.msg.type !== 'shardSection' || !this.heads.has(r.msg.shard)) {
        this.counters.wal_corrupt++;
        console.error(`core: WAL entry ${seq} does not decode (${r.ok ? `a ${r.msg.type}` : r.detail}); it is kept for inspection`);
        continue;
      }
      try {
        const sids = this.serverIds(r.msg, Date.now(), true);
        this.toHead(r.msg, sids, seq, Buffer.from(key), value.length, true);
        this.noteRackSeen(r.msg.rack, Date.now());
        if (this.replayedSeconds.size < replayedSecondsMax || this.replayedSeconds.has(r.msg.second)) this.replayedSeconds.add(r.msg.second);
        // Their windows are not evaluated again (as late seconds past lateSecondsMax are not).
        else this.counters.replayed_seconds_dropped++;
      } catch (err) {
        // An entry that decodes but cannot be applied (a bound lowered since it was taken, a
        // bug): that entry, kept and counted, not a worker that dies on every start.
        this.counters.wal_unapplied++;
        console.error(`core: WAL entry ${seq} (rack ${r.msg.rack} second ${r.msg.second} shard ${r.msg.shard}) could not be replayed (${(err as Error).message}); it is kept for inspection`);
        continue;
      }
      this.counters.wal_replayed++;
    }
  }

  /**
   * About what storing these sections adds to the head: twice their bytes, and for a rack's first
   * section of a block in its shard, its points' columns for the whole block (a metric's columns
   * are sized by its first section: 8 B a second of the block per server) and each metric's head.
   * Twice the bytes alone under-counted a block's first second 15–30× (a review's script: a
   * 4 MiB bound answered 204 up to 11 MB), so the bound did not hold. A later section with more
   * entries than any before it of its rack and block (metrics new in the block, or wider: a
   * first second of one server, then one of a thousand) is charged twice the columns of the
   * entries past that most (before: nothing — 6.5 × the bound after one such section). Entries
   * that move between metrics without growing in total are not charged (a metric's columns at
   * most double then).
   */
  private headGrowth(valid: readonly { decoded: ShardSectionMessage[] }[], bytes: number): number {
    let grows = bytes * 2;
    for (const v of valid) {
      for (const m of v.decoded) {
        const rackId = this.rackIds.get(m.rack);
        const seen = rackId === undefined ? undefined : this.heads.get(m.shard)?.racksIn.get(this.blockOf(m.second))?.get(rackId);
        // 8 B a second per server, its slot (4 B, the columns' server ids) and, past a few servers, its slot index entry.
        const columns = m.pointServers.length * (this.opts.blockSeconds * 8 + 4 + indexEntryBytes);
        if (seen === undefined) grows += columns + (m.pointEnds.length + m.distEnds.length) * metricHeadBytes;
        else {
          // Entries past the most the rack sent in a section of this block: new metrics or wider
          // ones, charged twice (columns double as they grow).
          const more = m.pointServers.length + m.distServers.length - seen;
          if (more > 0) grows += 2 * more * (this.opts.blockSeconds * 8 + 4 + indexEntryBytes) + Math.min(more, m.pointEnds.length + m.distEnds.length) * metricHeadBytes;
        }
      }
    }
    return grows;
  }

  /** Store-local server ids of a section's servers (−1: refused, the registry is full; a replay's refusals were counted when they came). */
  private serverIds(m: ShardSectionMessage, nowMs: number, replay = false): Int32Array {
    const ids = new Int32Array(m.servers.length);
    m.servers.forEach((name, j) => {
      if (this.registry.serverByName(name) === undefined && this.registry.serverCount >= this.opts.serversMax) {
        ids[j] = -1;
        if (!replay) this.counters.servers_refused++;
        return;
      }
      ids[j] = this.registry.server(name, m.rack, nowMs).id;
    });
    return ids;
  }

  /** One request (see ingestMany). */
  ingest(h: RequestHeader, sections: readonly SectionIn[], nowMs = Date.now()): StoreIngestResult {
    return this.ingestMany([{ h, sections }], nowMs)[0]!;
  }

  /**
   * Makes several requests' sections for this store durable in one synced transaction (group
   * commit: the requests waiting in a worker's queue share one fsync), then adds them to the
   * head. A section already stored (same rack, session and seq for its shard) is skipped and
   * counted; the checks and the commit run without a turn in between, so two copies of one
   * request — in one group or not — cannot both land. A malformed request is refused alone.
   */
  ingestMany(reqs: readonly { h: RequestHeader; sections: readonly SectionIn[] }[], nowMs = Date.now()): StoreIngestResult[] {
    // The last call's sections are in the head (copied) or refused: their unpacked points are free.
    this.unpacked.reset();
    const results: StoreIngestResult[] = [];
    const valid: { i: number; decoded: ShardSectionMessage[]; bytes: Uint8Array[] }[] = [];
    // Stream requests (cluster): applied in stream order only; the sequences this group applies.
    const applied = new Map<number, number>();
    /** The stream's time of each shard's newest applied message, when known (its mark). */
    const appliedMs = new Map<number, number>();
    const refusedForGood: { shard: number; seq: number }[] = [];
    // Requests answered 204 as copies of a request earlier in this group: they stand or fall with it.
    const inGroupCopies: number[] = [];
    reqs.forEach((r, i) => {
      const st = r.h.stream;
      if (st !== undefined) {
        const shard = r.sections[0]?.shard ?? -1;
        const now = applied.get(shard) ?? this.streamApplied.get(shard) ?? 0;
        if (r.sections.length !== 1 || !this.heads.has(shard)) {
          // Not refused for good (400 would move the stream past it): the pool checks this first, so it is a bug upstream.
          results[i] = { status: 503, reason: 'wrong_section', error: `BUG: a stream request holds one section of a shard of this store` };
          return;
        }
        if (st.seq <= now) {
          this.counters.stream_redelivered++;
          results[i] = { status: 204, points: 0, duplicates: 1 };
          if (st.seq > (this.streamApplied.get(shard) ?? 0)) inGroupCopies.push(i);
          return;
        }
        if (st.after !== now) {
          this.counters.stream_gaps++;
          results[i] = { status: 409, reason: 'stream_gap', error: `stream of shard ${shard}: message ${st.seq} follows ${st.after}, but ${now} is applied`, applied: now };
          return;
        }
        const d = this.decodeRequest(r.h, r.sections, nowMs);
        if ('decoded' in d) valid.push({ i, decoded: d.decoded, bytes: d.bytes });
        else {
          results[i] = d;
          if (d.status !== 400) return;
          // Refused for good (counted by reason): the stream moves past it.
          refusedForGood.push({ shard, seq: st.seq });
        }
        applied.set(shard, st.seq);
        if (st.ms !== undefined) appliedMs.set(shard, st.ms);
        else appliedMs.delete(shard);
        return;
      }
      const d = this.decodeRequest(r.h, r.sections, nowMs);
      if ('decoded' in d) valid.push({ i, decoded: d.decoded, bytes: d.bytes });
      else results[i] = d;
    });
    const refuse = (r: StoreIngestResult) => {
      for (const v of valid) results[v.i] = r;
      // Nothing of this group is stored: a stream's later requests must not pass the refused ones.
      for (let i = 0; i < reqs.length; i++) if (reqs[i]!.h.stream !== undefined && results[i]?.status === 400) results[i] = r;
      for (const i of inGroupCopies) results[i] = r;
      return results;
    };
    const full = this.storageFull(nowMs);
    if (full !== '') {
      this.counters.storage_full += valid.length;
      return refuse({ status: 503, reason: 'storage_full', error: full });
    }
    let bytes = 0;
    for (const v of valid) for (const b of v.bytes) bytes += b.length;
    if (this.backlogMax < Number.POSITIVE_INFINITY) {
      const behind = this.walBacklogBytes(nowMs);
      if (behind > this.backlogMax) {
        this.counters.rows_behind += valid.length;
        return refuse({ status: 503, reason: 'rows_behind', error: `rows are ${behind} B of WAL behind the ingest (limit ${this.backlogMax}); retry later` });
      }
    }
    const grows = this.headGrowth(valid, bytes);
    // Columns kept for reuse count too (live heads and kept columns together stay within the
    // bound: before, kept ones came on top, up to 1.5 × it); they give way to live data first.
    const over = this.headBytes + this.columns.keptBytes + grows - this.opts.headBytesMax;
    // (Only when that makes the request fit: a refused one leaves them for the next block.)
    if (over > 0 && this.headBytes + grows <= this.opts.headBytesMax) this.columns.shed(over);
    if (this.headBytes + this.columns.keptBytes + grows > this.opts.headBytesMax) {
      this.counters.head_full += valid.length;
      return refuse({ status: 503, reason: 'head_full', error: `the core holds ${this.headBytes} B of unwritten data and these requests would add about ${grows} B (limit ${this.opts.headBytesMax}); retry later` });
    }
    const fresh: { i: number; m: ShardSectionMessage; bytes: Uint8Array; seq: number; key: Buffer }[] = [];
    const duplicates = new Map<number, number>();
    for (const v of valid) {
      v.decoded.forEach((m, k) => {
        if (this.dedup.seen(m.shard, m.rack, m.origin ?? originRack, m.session, m.seq)) duplicates.set(v.i, (duplicates.get(v.i) ?? 0) + 1);
        else {
          this.dedup.mark(m.shard, m.rack, m.origin ?? originRack, m.session, m.seq);
          const seq = this.walSeq++;
          fresh.push({ i: v.i, m, bytes: v.bytes[k]!, seq, key: walKey(seq, m.shard) });
        }
      });
    }
    let dups = 0;
    for (const n of duplicates.values()) dups += n;
    this.counters.sections_duplicate += dups;
    // A request's sections share their server list (schema/section.ts serverList): its ids once.
    let last: { servers: readonly string[]; rack: string; ids: Int32Array; refused: number } | null = null;
    const sids = fresh.map((f) => {
      if (last !== null && last.servers === f.m.servers && last.rack === f.m.rack) {
        this.counters.servers_refused += last.refused;
        return last.ids;
      }
      const refused = this.counters.servers_refused;
      const ids = this.serverIds(f.m, nowMs);
      last = { servers: f.m.servers, rack: f.m.rack, ids, refused: this.counters.servers_refused - refused };
      return ids;
    });
    try {
      // Registry entries go with the rows that refer to them (writeSlice); a replay registers again.
      this.walEnv.transactionSync(() => {
        // Seqs only grow (above every key: the constructor, restores), so each goes at the end;
        // a put with MDB_APPEND of a key below the last is dropped without an error by lmdb-js,
        // so one is appended only above walTail (a plain put otherwise: correct, only slower).
        for (const f of fresh) {
          const value = Buffer.from(f.bytes.buffer, f.bytes.byteOffset, f.bytes.byteLength);
          if (f.seq > this.walTail) {
            appendPut(this.wal, f.key, value);
            this.walTail = f.seq;
          } else void this.wal.put(f.key, value);
        }
        this.dedup.persist();
        for (const [shard, seq] of applied) {
          this.streamDb.put(shard, seq);
          const ms = appliedMs.get(shard);
          if (ms !== undefined) this.streamMarkDb.put(shard, [seq, ms]);
        }
      });
    } catch (err) {
      this.dedup.rollback();
      for (let i = 0; i < reqs.length; i++) if (reqs[i]!.h.stream !== undefined && results[i]?.status === 400) results[i] = { status: 503, reason: 'storage_full', error: 'storage write failed; retry' };
      for (const i of inGroupCopies) results[i] = { status: 503, reason: 'storage_full', error: 'storage write failed; retry' };
      this.counters.storage_full += valid.length;
      this.lastError = writeFailure(err);
      return refuse({ status: 503, reason: 'storage_full', error: `storage write failed (${this.lastError}); free disk space; the rack will retry` });
    }
    this.dedup.committed();
    for (const [shard, seq] of applied) this.streamApplied.set(shard, seq);
    this.counters.stream_refused += refusedForGood.length;
    const points = new Map<number, number>();
    fresh.forEach((f, k) => {
      points.set(f.i, (points.get(f.i) ?? 0) + this.toHead(f.m, sids[k]!, f.seq, f.key, f.bytes.length, false, nowMs));
      this.onIngest?.(f.m.shard, f.m.second);
      if (f.m.second < (this.flushedThrough.get(f.m.shard) ?? 0)) this.counters.sections_late++;
    });
    this.counters.requests_ingested += valid.length;
    this.counters.sections_ingested += fresh.length;
    this.counters.unpack_overflows = this.unpacked.overflows;
    this.counters.bytes_ingested += bytes;
    this.counters.commits++;
    for (const v of valid) results[v.i] = { status: 204, points: points.get(v.i) ?? 0, duplicates: duplicates.get(v.i) ?? 0 };
    return results;
  }

  /** A request's sections decoded and checked against its header, or why it is refused. */
  private decodeRequest(h: RequestHeader, sections: readonly SectionIn[], nowMs: number): { decoded: ShardSectionMessage[]; bytes: Uint8Array[] } | StoreIngestResult {
    // A second whose block the retention sweep deletes is refused, not acknowledged and then
    // deleted unseen (an import of old history, a rack that spooled past the retention).
    const oldestBlock = this.blockOf(Math.floor(nowMs / 1000) - this.opts.retentionSeconds);
    if (this.blockOf(h.second) < oldestBlock) {
      this.rejected.past_retention = (this.rejected.past_retention ?? 0) + 1;
      return { status: 400, reason: 'past_retention', error: `second ${h.second} is older than the retention (${this.opts.retentionSeconds} s) keeps: rows before ${new Date(oldestBlock * 1000).toISOString()} are deleted; nothing of this second is stored` };
    }
    // A second far ahead of this core's clock is never due: its block would sit in the head and
    // the WAL until that date (out of the rows-behind backlog too), until head_full refused
    // every rack. Racks refuse edges more than 10 s off their clock; this is for a rack (or an
    // import) whose own clock is wrong.
    const ahead = this.opts.futureSecondsMax ?? coreLimits.futureSecondsMax;
    if (h.second > Math.floor(nowMs / 1000) + ahead) {
      this.rejected.future = (this.rejected.future ?? 0) + 1;
      return { status: 400, reason: 'future', error: `second ${h.second} is ${h.second - Math.floor(nowMs / 1000)} s ahead of this core's clock (at most ${ahead} s are taken): check the sender's clock; nothing of this second is stored` };
    }
    // Rack ids are bounded (head keys pack them): a new rack beyond racksMax is refused before
    // anything is stored, and the rack's spool keeps its data until an operator makes room.
    if (!this.rackIds.has(h.rack) && this.rackIds.size >= this.racksMax) {
      this.rejected.racks_full = (this.rejected.racks_full ?? 0) + 1;
      return { status: 503, reason: 'racks_full', error: `this core holds data of ${this.rackIds.size} racks (racksMax ${this.racksMax}); rack ${h.rack} is refused` };
    }
    const decoded: ShardSectionMessage[] = [];
    const kept: Uint8Array[] = [];
    let refused: StoreIngestResult | null = null;
    // Packed points (schema/pointpack.ts) can take no byte each: the columns a request's sections
    // decode to are bounded by what the largest request held unpacked, not by their bytes.
    let points = 0;
    for (const s of sections) {
      // A shard being restored from another node (core/snapshot.ts) takes nothing until its copy is whole.
      if (this.restoring.has(s.shard)) return { status: 503, reason: 'shard_restoring', error: `shard ${s.shard} is being restored from another node; retry when the copy is done` };
      const r = decodeFrame(s.bytes, batchBytesMax, { expect: Body.ShardSection, points: this.unpacked });
      if (!r.ok || r.msg.type !== 'shardSection') {
        // That section alone is refused, counted and logged; the request's other sections are
        // stored (a 400 made the rack drop the whole second, every shard's good sections with it).
        const reason = r.ok ? 'not_a_section' : r.reason;
        this.rejected[reason] = (this.rejected[reason] ?? 0) + 1;
        this.counters.sections_refused++;
        if (this.counters.sections_refused === 1 || this.counters.sections_refused % 1000 === 0) console.error(`core: a section of ${h.rack} seq ${h.seq} second ${h.second} for shard ${s.shard} refused (${r.ok ? `a ${r.msg.type}` : `${r.reason}: ${r.detail}`}); the request's other sections are stored (${this.counters.sections_refused} refused so far)`);
        refused ??= { status: 400, reason, error: r.ok ? `expected a ShardSection, got a ${r.msg.type}` : `section for shard ${s.shard} refused (${r.reason}): ${r.detail}` };
        continue;
      }
      const m = r.msg;
      if (m.shard !== s.shard || !this.heads.has(m.shard) || m.shards !== this.opts.shardCount || m.rack !== h.rack || m.session !== h.session || m.seq !== h.seq || m.second !== h.second || (m.origin ?? originRack) !== (h.origin ?? originRack)) {
        this.rejected.wrong_section = (this.rejected.wrong_section ?? 0) + 1;
        return { status: 400, reason: 'wrong_section', error: `section of ${m.rack} session ${m.session} seq ${m.seq} second ${m.second} shard ${m.shard}/${m.shards} does not belong to request ${h.rack} ${h.session} ${h.seq} ${h.second} shard ${s.shard}/${this.opts.shardCount}` };
      }
      points += m.pointValues.length;
      const pointsMax = this.opts.requestPointsMax ?? sectionPointsMax;
      if (points > pointsMax) {
        this.rejected.too_many_points = (this.rejected.too_many_points ?? 0) + 1;
        return { status: 400, reason: 'too_many_points', error: `request ${h.rack} seq ${h.seq} decodes to more than ${pointsMax} points (more than the largest request holds unpacked)` };
      }
      decoded.push(m);
      kept.push(s.bytes);
    }
    // Nothing of it good (a cluster's message is one section): refused whole, as before.
    if (decoded.length === 0 && refused !== null) return refused;
    // Registered now, so that two new racks in one group commit cannot both pass the bound.
    this.rackId(h.rack);
    this.noteRackSeen(h.rack, nowMs);
    return { decoded, bytes: kept };
  }

  /** Registers a section's metrics and names and appends its columns to the head; returns entries added. */
  private toHead(m: ShardSectionMessage, sids: Int32Array, seq: number, key: Buffer, bytes: number, replay: boolean, nowMs = Date.now()): number {
    const head = this.heads.get(m.shard)!;
    const block = this.blockOf(m.second);
    const sec = m.second - block;
    const rackId = this.rackId(m.rack);
    if (rackId >= rackIdsMax) throw new Error(`BUG: rack id ${rackId} ≥ ${rackIdsMax} (racksMax must stay below)`);
    let metrics = head.blocks.get(block);
    if (metrics === undefined) head.blocks.set(block, (metrics = new Map()));
    let racksIn = head.racksIn.get(block);
    if (racksIn === undefined) head.racksIn.set(block, (racksIn = new Map()));
    racksIn.set(rackId, Math.max(racksIn.get(rackId) ?? 0, m.pointServers.length + m.distServers.length));
    const wal = head.wal.get(block);
    if (wal === undefined) head.wal.set(block, [key]);
    else wal.push(key);
    head.walBytes.set(block, (head.walBytes.get(block) ?? 0) + bytes);
    head.walMin.set(block, Math.min(head.walMin.get(block) ?? seq, seq));
    this.walBytes += bytes;
    head.lastArrivalMs.set(block, Date.now());
    // Last-seen times of the metrics (the ingest's clock: a test's, or now).
    const now = nowMs;
    let added = 0;
    // Why target() gave no head: the cardinality limits, or the entries' kind (issue 16.6).
    let kindConflict = false;
    // Whose share of the per-server metric limit a new metric takes: the first of its servers in
    // the section with room (before: the first listed, so one server at its limit made a metric
    // refused for the whole rack), none of the refused ones (id −1: outside every limit, their
    // names filled the registry); −2: no server of the entries is registered (their points go).
    const introducer = (servers: Uint16Array, from: number, to: number): number => {
      let first = -2;
      for (let e = from; e < to; e++) {
        const j = servers[e]!;
        if (j === rollupServer) {
          if (first === -2) first = -1; // the rack's rollup: no owner, the total limit applies
          continue;
        }
        const sid = sids[j]!;
        if (sid < 0) continue;
        if (first < 0) first = sid;
        if (this.registry.introducedCount(sid) < this.opts.metricsPerServerMax) return sid;
      }
      return first;
    };
    let noServer = false;
    const target = (lo: number, hi: number, kind: number, servers: Uint16Array, from: number, to: number): MetricHead | null => {
      kindConflict = false;
      noServer = false;
      let mi = this.registry.touch(lo, hi, now);
      if (mi < 0) {
        const by = introducer(servers, from, to);
        if (by === -2) {
          noServer = true;
          return null;
        }
        mi = this.admit(lo, hi, kind, by, now);
      }
      if (mi < 0) return null;
      // One kind per metric: the first admitted wins; a distribution's entries for a gauge or
      // counter metric (or the reverse) are refused, so every reader sees one kind (issue 16.6).
      if ((this.metricKinds[mi] === KindCode.Distribution) !== (kind === KindCode.Distribution)) {
        kindConflict = true;
        return null;
      }
      // A replayed section whose rows were written before the crash: its entries are in them already.
      if (replay && this.storedThrough(m.shard, block, lo, hi, rackId) >= seq) return null;
      let racks = metrics.get(mi);
      if (racks === undefined) metrics.set(mi, (racks = new Map()));
      let mh = racks.get(rackId);
      if (mh === undefined) {
        // Its points' matrix is sized by their first section (MetricHead.openSection).
        mh = new MetricHead({ kind, metricLo: lo, metricHi: hi, rackId, blockSeconds: this.opts.blockSeconds, pool: this.columns });
        racks.set(rackId, mh);
        this.headBytes += mh.bytes;
      }
      return mh;
    };
    let from = 0;
    for (let i = 0; i < m.pointEnds.length; i++) {
      const to = m.pointEnds[i]!;
      const mh = target(m.pointHashes[2 * i]!, m.pointHashes[2 * i + 1]!, m.pointKinds[i]!, m.pointServers, from, to);
      if (mh === null) {
        if (noServer) this.counters.points_dropped_servers += replay ? 0 : to - from;
        else if (kindConflict) this.counters.points_dropped_kind_conflict += replay ? 0 : to - from;
        else this.counters.points_dropped_overflow += replay ? 0 : to - from;
      } else {
        const before = mh.bytes;
        // Sized by the section's servers at most: its entries may repeat one (marked bad, skipped).
        mh.openSection(sec, Math.min(to - from, m.servers.length));
        let took = 0;
        for (let e = from; e < to; e++) {
          const sid = sids[m.pointServers[e]!]!;
          if (sid < 0) {
            if (!replay) this.counters.points_dropped_servers++;
            continue;
          }
          // The decoder marks every non-finite value (schema/section.ts checkSectionPoints), so the
          // head only ever sees finite ones: it marks absent seconds with NaN.
          if (m.pointBad !== null && m.pointBad[e] === 1) {
            this.counters.points_dropped_bad_value += replay ? 0 : 1;
            continue;
          }
          // A (server, second) the head holds already counts as taken: its newest value is kept.
          mh.addPoint(sid, m.pointValues[e]!);
          took++;
        }
        // Only what the head took: refused servers and bad values are counted under their reasons.
        mh.walSeq = Math.max(mh.walSeq, seq);
        this.headBytes += mh.bytes - before;
        added += took;
        // A replay's points were counted when they were acknowledged (a restarted worker's counts continue the dead one's: core/pool.ts).
        if (!replay) this.counters.points_ingested += took;
      }
      from = to;
    }
    from = 0;
    for (let i = 0; i < m.distEnds.length; i++) {
      const to = m.distEnds[i]!;
      const mh = target(m.distHashes[2 * i]!, m.distHashes[2 * i + 1]!, KindCode.Distribution, m.distServers, from, to);
      if (mh === null) {
        // The rack's rollup is not an observation: only the servers' summaries count.
        let summaries = 0;
        for (let e = from; e < to; e++) if (m.distServers[e] !== rollupServer) summaries++;
        if (noServer) this.counters.points_dropped_servers += replay ? 0 : summaries;
        else if (kindConflict) this.counters.points_dropped_kind_conflict += replay ? 0 : summaries;
        else this.counters.points_dropped_overflow += replay ? 0 : summaries;
      } else {
        const before = mh.bytes;
        // The rack's rollup merges every server's summary of the second: kept only when each of
        // them is stored too. One refused (its server beyond serversMax, a bad value) leaves the
        // rollup holding observations no stored server has, and percentiles over the whole rack
        // would come from it (before: they did); the servers' own sketches answer that second.
        let rollupAt = -1;
        let refused = false;
        for (let e = from; e < to; e++) {
          const server = m.distServers[e]!;
          const sStart = e === 0 ? 0 : m.sketchEnds[e - 1]!;
          if (server === rollupServer) {
            rollupAt = e;
            continue;
          }
          if (m.distBad !== null && m.distBad[e] === 1) {
            this.counters.points_dropped_bad_value += replay ? 0 : 1;
            refused = true;
            continue;
          }
          const sid = sids[server]!;
          if (sid < 0) {
            if (!replay) this.counters.points_dropped_servers++;
            refused = true;
            continue;
          }
          mh.addDist(sid, sec, m.distCounts[e]!, m.distSums[e]!, m.distMins[e]!, m.distMaxes[e]!, m.sketchBytes, sStart, m.sketchEnds[e]!);
          if (!replay) this.counters.summaries_ingested++;
          added++;
        }
        if (rollupAt >= 0) {
          const e = rollupAt;
          if (m.distBad !== null && m.distBad[e] === 1) this.counters.points_dropped_bad_value += replay ? 0 : 1;
          else if (refused) this.counters.rollups_dropped_partial += replay ? 0 : 1;
          else mh.addRollup(sec, m.distCounts[e]!, m.distSums[e]!, m.distMins[e]!, m.distMaxes[e]!, m.sketchBytes, e === 0 ? 0 : m.sketchEnds[e - 1]!, m.sketchEnds[e]!);
        }
        mh.walSeq = Math.max(mh.walSeq, seq);
        this.headBytes += mh.bytes - before;
      }
      from = to;
    }
    this.learnNames(m, now);
    return added;
  }

  /**
   * Names of admitted metrics are recorded; a name for a metric with no data yet waits (bounded)
   * until its data is admitted, so a name alone never registers a metric past the cardinality
   * limits, nor with a guessed kind (issue 16).
   */
  private learnNames(m: ShardSectionMessage, nowMs: number): void {
    for (let j = 0; j < m.nameEnds.length; j++) {
      const lo = m.nameHashes[2 * j]!;
      const hi = m.nameHashes[2 * j + 1]!;
      if (this.registry.indexOf(lo, hi) >= 0) this.registry.name(lo, hi, nameAt(m, j), nowMs);
      else {
        if (this.pendingNames.size >= pendingNamesMax) {
          this.pendingNames.delete(this.pendingNames.keys().next().value!);
          this.counters.names_pending_dropped++;
        }
        this.pendingNames.set(hashKey(lo, hi), nameAt(m, j));
      }
    }
  }

  /** The registry index of a metric, registering it within the cardinality limits (−1: refused). */
  private admit(lo: number, hi: number, kind: number, firstServer: number, nowMs: number): number {
    const known = this.registry.touch(lo, hi, nowMs);
    if (known >= 0) return known;
    if (this.registry.admit({ lo, hi, kind, nowMs, serverId: firstServer, perServerMax: this.opts.metricsPerServerMax }) !== null) return -1;
    this.noteKind(this.registry.indexOf(lo, hi), kind);
    const waiting = this.pendingNames.get(hashKey(lo, hi));
    if (waiting !== undefined) {
      this.registry.name(lo, hi, waiting, nowMs);
      this.pendingNames.delete(hashKey(lo, hi));
    }
    return this.registry.indexOf(lo, hi);
  }

  private noteKind(mi: number, kind: number): void {
    if (mi >= this.metricKinds.length) {
      const grown = new Uint8Array(Math.max(mi + 1, 2 * this.metricKinds.length));
      grown.set(this.metricKinds);
      this.metricKinds = grown;
    }
    this.metricKinds[mi] = kind;
  }

  /** The WAL seq a stored row holds entries through (0: no row). */
  private storedThrough(shard: number, block: number, lo: number, hi: number, rackId: number): number {
    const v = this.rows.get(rowKey(shard, block, lo, hi, rackId));
    return v === undefined ? 0 : readU48(v, 0);
  }

  /** Blocks due for writing (ended plus grace, and quiet), oldest first, per shard. */
  private dueBlocks(nowMs: number): { shard: number; block: number }[] {
    const pressed = this.headBytes > this.opts.headBytesMax / 2;
    const quietMs = Math.min(2000, this.opts.flushGraceMs);
    const due: { shard: number; block: number }[] = [];
    for (const [shard, head] of this.heads) {
      for (const block of head.wal.keys()) {
        // A backfilling rack sends a block's seconds back to back: writing it once beats merging it every second.
        if (this.isDue(block, nowMs) && (pressed || nowMs - (head.lastArrivalMs.get(block) ?? 0) >= quietMs)) due.push({ shard, block });
      }
    }
    return due.sort((a, b) => a.block - b.block || a.shard - b.shard);
  }

  /** The least WAL seq of an entry whose block is not written (Infinity: none). */
  private walFloor(): number {
    let floor = Number.POSITIVE_INFINITY;
    for (const head of this.heads.values()) for (const min of head.walMin.values()) floor = Math.min(floor, min);
    return floor;
  }

  /**
   * Deletes the entries of written blocks before walFloor (all of them past walDoneBytesMax), in
   * one transaction (not in bounded chunks over later slices: that pattern — a queue's deletes
   * spread over many small transactions while others append — broke lmdb-js' freelist in a 1 h
   * backfill, "reserved freelist had a data entry with zero-size", cf. kriszyp/lmdb-js#321). Not
   * synced: were the deletes lost in a crash, the replay skips what the rows hold and deletes
   * them again.
   */
  private deleteWritten(): void {
    const needed = this.walFloor();
    const floor = this.walDoneBytes > this.walDoneBytesMax() ? Number.POSITIVE_INFINITY : needed;
    const gone = this.takeDone((k) => walKeySeq(k) >= floor);
    if (floor > needed) for (const k of gone) if (walKeySeq(k) > needed) this.counters.wal_deleted_held++;
    if (gone.length === 0) return;
    gone.sort(Buffer.compare);
    this.walEnv
      .transaction(() => {
        for (const k of gone) this.wal.remove(k);
      })
      .catch((err: unknown) => {
        this.counters.flush_errors++;
        console.error(`core: deleting written blocks' WAL entries failed (${writeFailure(err)}); a restart replays and deletes them`);
      });
  }

  /** Takes the keys out of walDone that `keep` does not keep, its bytes in proportion (they are counted per block). */
  private takeDone(keep: (key: Buffer) => boolean): Buffer[] {
    const taken: Buffer[] = [];
    const kept: { keys: Buffer[]; bytes: number }[] = [];
    for (const d of this.walDone) {
      const rest: Buffer[] = [];
      for (const k of d.keys) (keep(k) ? rest : taken).push(k);
      const bytes = rest.length === d.keys.length ? d.bytes : Math.round((d.bytes * rest.length) / d.keys.length);
      this.walDoneBytes -= d.bytes - bytes;
      if (rest.length > 0) kept.push({ keys: rest, bytes });
    }
    this.walDone = kept;
    if (kept.length === 0) this.walDoneBytes = 0;
    return taken;
  }

  /** Bytes of written blocks' entries kept for deleting from the WAL's front: a quarter of the backlog bound, or 128 MiB. */
  private walDoneBytesMax(): number {
    return Math.min(this.backlogMax, 512 * 1024 * 1024) / 4;
  }

  /**
   * Writes rows of due blocks for at most about `sliceMs` in one transaction; returns whether due
   * work remains (the worker calls again on its next turn, after any waiting ingest).
   */
  writeSlice(nowMs: number): boolean {
    const due = this.dueBlocks(nowMs);
    if (due.length === 0) return false;
    const t0 = performance.now();
    const written: { shard: number; head: ShardHead; block: number; metrics: Map<number, Map<number, MetricHead>>; mi: number; rackId: number; mh: MetricHead }[] = [];
    const puts: { key: Buffer; value: Buffer }[] = [];
    const emptied: { shard: number; head: ShardHead; block: number }[] = [];
    let more = false;
    outer: for (const { shard, block } of due) {
      const head = this.heads.get(shard)!;
      const metrics = head.blocks.get(block) ?? new Map<number, Map<number, MetricHead>>();
      for (const [mi, racks] of metrics) {
        for (const [rackId, mh] of racks) {
          // At least one row per slice, so that any budget makes progress.
          if (puts.length > 0 && performance.now() - t0 > this.opts.sliceMs) {
            more = true;
            break outer;
          }
          const key = rowKey(shard, block, mh.metricLo, mh.metricHi, rackId);
          puts.push({ key, value: this.rowValue(key, mh) });
          written.push({ shard, head, block, metrics, mi, rackId, mh });
        }
      }
      emptied.push({ shard, head, block });
    }
    // In key order: the B-tree fills pages front to back instead of splitting them at random,
    // and a (shard, block)'s rows are neighbours in their groups.
    puts.sort((a, b) => Buffer.compare(a.key, b.key));
    const packed = this.packRows(puts);
    try {
      this.root.transactionSync(() => {
        for (const g of packed.groups) this.groups.put(g.key, g.value);
        for (const p of packed.pointers) this.rows.put(p.key, p.value);
        for (const [name, id] of this.racksDirty) this.racks.put(name, id);
        this.state.put('groupSeq', this.groupSeq);
        this.state.put('walSeq', this.walSeq);
        // The registry entries the rows refer to are durable no later than the rows.
        this.registry.flushDirty();
      });
      this.registry.flushed();
    } catch (err) {
      this.counters.flush_errors++;
      this.lastError = writeFailure(err);
      console.error(`core: writing rows failed (${this.lastError}); their sections stay in the WAL and are retried`);
      return false;
    }
    for (const e of emptied) {
      const keys = e.head.wal.get(e.block);
      if (keys === undefined) continue;
      const bytes = e.head.walBytes.get(e.block) ?? 0;
      this.walDone.push({ keys, bytes });
      this.walDoneBytes += bytes;
    }
    if (this.corruptRows.size > 0) for (const p of puts) this.corruptRows.delete(p.key.toString('latin1'));
    for (const w of written) {
      this.rowVersions.wrote(w.shard, w.block);
      const racks = w.metrics.get(w.mi);
      racks?.delete(w.rackId);
      if (racks !== undefined && racks.size === 0) w.metrics.delete(w.mi);
      this.headBytes -= w.mh.bytes;
      w.mh.release();
    }
    for (const e of emptied) {
      e.head.blocks.delete(e.block);
      e.head.racksIn.delete(e.block);
      e.head.wal.delete(e.block);
      this.walBytes -= e.head.walBytes.get(e.block) ?? 0;
      e.head.walBytes.delete(e.block);
      e.head.walMin.delete(e.block);
      e.head.lastArrivalMs.delete(e.block);
      this.flushedThrough.set(e.shard, Math.max(this.flushedThrough.get(e.shard) ?? 0, e.block + this.opts.blockSeconds));
    }
    this.racksDirty.clear();
    if (emptied.length > 0) this.deleteWritten();
    this.counters.rows_written += puts.length;
    for (const p of puts) this.counters.row_bytes_written += p.value.length;
    this.counters.row_slices++;
    const ms = performance.now() - t0;
    this.sliceMsMax = Math.max(this.sliceMsMax, ms);
    if (ms > 50) this.counters.slices_over_50ms++;
    return more;
  }

  /** Packs a slice's rows (sorted by key) into row groups of whole pages (core/rowgroups.ts), with ids from the store's sequence. */
  private packRows(puts: readonly KeyValue[]): { groups: KeyValue[]; pointers: KeyValue[] } {
    // Chunk ids are u32 and never reused: at 2^32 the store cannot write rows (years at a full
    // fleet's rate per store); said plainly instead of a RangeError from a buffer write.
    let bytes = 0;
    for (const p of puts) bytes += p.value.length;
    if (this.groupSeq + 2 * puts.length + Math.ceil(bytes / 1024) > 0xffffffff) throw new Error(`row group ids are exhausted in this store (${this.groupSeq} of 2^32 used): copy its shards to a new data directory (apm cluster, or a fresh node)`);
    const packed = packRows(puts, this.groupSeq + 1);
    this.groupSeq = packed.nextId - 1;
    return packed;
  }

  /**
   * The row bytes (after the WAL seq) of a rows value: inline (a row written before row groups)
   * or through its pointer into a group's chunks; a view valid until the next LMDB read (or an
   * array of its own). Throws RowError for a pointer to a missing or short chunk.
   */
  private rowBytes(key: Uint8Array, value: Uint8Array): Uint8Array {
    return storedRowBytes(key, value, this.readChunk);
  }

  /** A head's row value: WAL seq, then the row (merged with the stored one, if any). */
  private rowValue(key: Buffer, mh: MetricHead): Buffer {
    const stored = this.rows.get(key);
    let old: DecodedRow | undefined;
    if (stored !== undefined) {
      try {
        old = decodeRow(this.rowBytes(key, stored));
        // Its bytes in their group are garbage until the block passes the retention.
        if (isPointer(stored)) this.counters.group_bytes_orphaned += pointedLength(stored);
        this.counters.rows_merged++;
      } catch (err) {
        if (!(err instanceof RowError)) throw err;
        // The head's data is written over it: what the stored row held is gone. Said, not only
        // counted: also when a read counted the row before (a write over it happens once).
        const what = 'late data for its block is written without what it held';
        if (!this.noteCorrupt(key, err, what)) console.error(`core: a stored row counted as corrupt before (${err.message}); ${what}`);
      }
    }
    const row = encodeRow(buildRow(mh, old, this.opts.blockSeconds, this.acc, this.counters));
    const out = Buffer.allocUnsafe(6 + row.length);
    writeU48(out, 0, Math.max(mh.walSeq, stored === undefined ? 0 : readU48(stored, 0)));
    out.set(row, 6);
    return out;
  }

  /**
   * Visits every row of one metric with data in [fromSecond, toSecond), block by block in time
   * order: stored rows, then the head's (built on the fly). Rows are columnar (core/block.ts);
   * `opts` lets a stored row be decoded only where the reader needs it, or come from the cache.
   * A row is valid during its visit only: the next row is decoded into the same columns, and its
   * sketches may point into a buffer the next row reuses.
   */
  read(lo: number, hi: number, fromSecond: number, toSecond: number, visit: (row: DecodedRow, blockStart: number, rackId: number) => void, opts: RowReadOptions = {}): void {
    const shard = shardOf(lo, this.opts.shardCount);
    const head = this.heads.get(shard);
    if (head === undefined) throw new Error(`BUG: shard ${shard} is not in this store`);
    const mi = this.registry.indexOf(lo, hi);
    const S = this.opts.blockSeconds;
    // Decoded into reused columns: a row is the visitor's during its visit only.
    const some: RowDecodeOptions = { servers: opts.servers, secondsOnlyFor: opts.secondsOnlyFor, scratch: this.rowScratch };
    const whole: RowDecodeOptions = { secondsOnlyFor: opts.secondsOnlyFor, scratch: this.rowScratch };
    const chunks = this.chunkMemo;
    chunks.forget();
    const tick = opts.tick;
    // Row keys hold 32-bit seconds: a range reaching past 2106 ends there.
    const last = Math.min(toSecond, 2 ** 32);
    const rackFrom = opts.racks?.from ?? 0;
    const rackTo = Math.min(opts.racks?.to ?? 0xffffffff, 0xffffffff);
    for (let block = this.blockOf(fromSecond); block < last; block += S) {
      tick?.();
      const racks = mi < 0 ? undefined : head.blocks.get(block)?.get(mi);
      // The head's racks of this block, ascending: visited in one rack order with the stored rows,
      // as they will be once written (sums added in another order could differ in the last bit).
      const headIds = racks === undefined ? noRackIds : [...racks.keys()].filter((id) => id >= rackFrom && id < rackTo).sort((a, b) => a - b);
      let next = 0;
      const headBelow = (limit: number) => {
        for (; next < headIds.length && headIds[next]! < limit; next++) {
          tick?.();
          visit(buildRow(racks!.get(headIds[next]!)!, undefined, S, this.acc), block, headIds[next]!);
        }
      };
      // The block's rows (kept, or read from LMDB: core/rowdirectory.ts), then each row's bytes.
      const dk = RowDirectories.keyOf(shard, lo, hi, block);
      const { dir, kept } = this.directoryOf(dk, shard, lo, hi, block, rackFrom, rackTo, tick);
      for (const e of dir.rows) {
        const rackId = e.rackId;
        if (rackId < rackFrom || rackId >= rackTo) continue;
        tick?.();
        headBelow(rackId);
        const key = e.key;
        try {
          let bytes = e.bytes;
          // Bytes kept in memory with their header passed their CRC when the header was read;
          // bytes read again from LMDB (a header kept without them) are checked again.
          const checked = bytes !== null && e.header !== null;
          if (bytes === null) {
            // A row inline (written before row groups): its value again, in lmdb-js' reused buffer.
            const value = e.pointer ?? this.rows.getBinaryFast(key);
            if (value === undefined) continue;
            bytes = storedRowBytes(key, value, chunks.chunk, chunks.spill);
            if (this.directories.keeps(dk, dir, bytes.length + keptRowBytesOverhead)) {
              bytes = e.bytes = ownCopy(bytes);
              this.directories.grew(dk, dir, bytes.length + keptRowBytesOverhead);
            }
          }
          const walSeq = e.walSeq;
          const mh = racks?.get(rackId);
          if (mh !== undefined) {
            // Late data over a written row: read as the row writer will write them, merged (a
            // point of the same server-second replaced, a summary part that would overflow
            // refused), not as two rows whose parts the reader would add up; else the answer
            // would change when the row is written. (A stored row that does not decode: the
            // head's alone, as the writer does.)
            const stored = decodeRow(bytes, { scratch: this.rowScratch });
            if (headIds[next] === rackId) next++;
            visit(buildRow(mh, stored, S, this.acc), block, rackId);
            continue;
          }
          let row: DecodedRow;
          if (opts.cache === true) row = this.cachedRow(key, walSeq, bytes);
          else {
            const o = opts.wholeRack?.(rackId) === true ? whole : some;
            const had = e.header !== null;
            o.header = e;
            o.checked = checked;
            row = decodeRow(bytes, o);
            if (!had && e.header !== null) {
              // Kept within the directory's tenth of the bound, as its rows' bytes are.
              const cost = headerBytes(e.header);
              if (this.directories.keeps(dk, dir, cost)) this.directories.grew(dk, dir, cost);
              else e.header = null;
            }
          }
          // A row none of whose servers are asked for has nothing for the reader.
          if (row.serverIds.length > 0 || row.serversOmitted === 0) visit(row, block, rackId);
        } catch (err) {
          if (!(err instanceof RowError)) throw err;
          // A kept directory's row deleted since (a retention sweep between its batches, before
          // its block's version moved): gone, not corrupt; the directory is read again next time.
          if (kept && this.rows.getBinaryFast(key) === undefined) {
            this.directories.forget(dk);
            continue;
          }
          this.noteCorrupt(key, err, 'reads skip it');
        }
      }
      this.counters.row_directory_bytes = this.directories.bytes;
      headBelow(Number.POSITIVE_INFINITY);
    }
  }

  /**
   * The stored rows of one metric in one block, ascending by rack id: kept since a read at an
   * epoch no change to the block has passed (kept: true), else read from LMDB (keys, and each
   * value: a row group pointer, copied) and kept.
   */
  private directoryOf(dk: string, shard: number, lo: number, hi: number, block: number, rackFrom: number, rackTo: number, tick: (() => void) | undefined): { dir: Directory; kept: boolean } {
    // A part of the racks (an export's chunk of a large block): read for it alone, not kept (a
    // whole history exported would push out the blocks queries read).
    const part = rackFrom > 0 || rackTo < 0xffffffff;
    if (!part) {
      const kept = this.directories.get(dk, this.rowVersions.version(shard, block));
      if (kept !== undefined) return { dir: kept, kept: true };
    }
    const epoch = this.rowVersions.epoch;
    const rows: DirectoryRow[] = [];
    // Keys, then each value into lmdb-js' reused buffer (a range with values copies each into a
    // new buffer: several times slower for rows stored inline). Each key passed counts for the
    // reader's time budget.
    for (const key of this.rows.getKeys({ start: rowKey(shard, block, lo, hi, rackFrom), end: rowKey(shard, block, lo, hi, rackTo) })) {
      tick?.();
      // getBinaryFast's buffer is lmdb-js' own, its `length` set to the value's: view it by that.
      const value = this.rows.getBinaryFast(key);
      if (value === undefined) continue;
      rows.push({ rackId: key.readUInt32BE(14), key: ownCopy(key) as Buffer, pointer: isPointer(value) ? ownCopy(value) : null, walSeq: readU48(value, 0), header: null, bytes: null });
    }
    return part ? { dir: { epoch, rows, bytes: 0 }, kept: false } : { dir: this.directories.put(dk, epoch, rows), kept: false };
  }

  /** The rack ids with rows of one metric in one block, stored or in the head, ascending: what an export cuts a large block by. */
  rackIdsOf(lo: number, hi: number, block: number): number[] {
    const shard = shardOf(lo, this.opts.shardCount);
    const ids = new Set<number>();
    for (const key of this.rows.getKeys({ start: rowKey(shard, block, lo, hi, 0), end: rowKey(shard, block, lo, hi, 0xffffffff) })) ids.add(key.readUInt32BE(14));
    const mi = this.registry.indexOf(lo, hi);
    const head = mi < 0 ? undefined : this.heads.get(shard)?.blocks.get(block)?.get(mi);
    if (head !== undefined) for (const id of head.keys()) ids.add(id);
    return [...ids].sort((a, b) => a - b);
  }

  /**
   * The epoch (RowVersions) of the last change to the rows `read` visits for one metric and block,
   * or Infinity while the head holds data of them (an answer read from the head is not final).
   */
  blockVersion(lo: number, hi: number, block: number): number {
    const shard = shardOf(lo, this.opts.shardCount);
    const mi = this.registry.indexOf(lo, hi);
    if (mi >= 0 && this.heads.get(shard)?.blocks.get(block)?.has(mi) === true) return Infinity;
    return this.rowVersions.version(shard, block);
  }

  /**
   * Counts a stored row that does not decode (RowError: malformed, or its CRC does not match)
   * once, however often it is read (before: every read of it counted again), and says so at the
   * first and every 1,000th. Remembered by key, at most corruptRowsKeptMax (then forgotten all
   * at once: counted again if read again); a row written over it (writeSlice) or deleted (a
   * retention sweep, a wiped shard: forgetCorrupt) is forgotten. Returns whether it was new.
   */
  private noteCorrupt(key: Buffer, err: RowError, what: string): boolean {
    const k = key.toString('latin1');
    if (this.corruptRows.has(k)) return false;
    if (this.corruptRows.size >= corruptRowsKeptMax) this.corruptRows.clear();
    this.corruptRows.add(k);
    this.counters.rows_corrupt++;
    if (this.counters.rows_corrupt === 1 || this.counters.rows_corrupt % 1000 === 0) console.error(`core: a stored row does not decode (${err.message}); ${what} (${this.counters.rows_corrupt} corrupt rows so far, apm_core_rows_corrupt_total)`);
    return true;
  }

  /** Forgets the corrupt rows of `shard` in blocks before `belowBlock` (their rows deleted: a retention sweep, a wiped shard). */
  private forgetCorrupt(shard: number, belowBlock: number): void {
    if (this.corruptRows.size === 0) return;
    for (const k of this.corruptRows) {
      // Row keys: [shard u16][block u32]…, here one char per byte (latin1).
      const keyShard = (k.charCodeAt(0) << 8) | k.charCodeAt(1);
      const block = ((k.charCodeAt(2) << 24) | (k.charCodeAt(3) << 16) | (k.charCodeAt(4) << 8) | k.charCodeAt(5)) >>> 0;
      if (keyShard === shard && block < belowBlock) this.corruptRows.delete(k);
    }
  }

  /** A stored row, whole, from the row cache or decoded into it (found by key, WAL seq and length: never stale). */
  private cachedRow(key: Buffer, walSeq: number, bytes: Uint8Array): DecodedRow {
    const k = RowCache.keyOf(key, walSeq, bytes.length);
    let row = this.rowCache.get(k);
    if (row === undefined) {
      // Kept: its own bytes (sketches point into them), not a view of LMDB's reused buffer.
      row = decodeRow(Uint8Array.prototype.slice.call(bytes));
      this.rowCache.put(k, row, bytes.length);
    }
    this.counters.row_cache_bytes = this.rowCache.bytes;
    return row;
  }

  /** Deletes rows older than the retention, in bounded transactions. Returns rows deleted. */
  async retentionSweep(nowMs: number, batchRows = 5000): Promise<number> {
    const cutoff = this.blockOf(Math.floor(nowMs / 1000) - this.opts.retentionSeconds);
    // A retention reaching before 1970 (a library store's): nothing is older (row keys hold unsigned seconds).
    if (cutoff <= 0) return 0;
    let deleted = 0;
    for (const shard of this.opts.shards) {
      // Before and after, whatever happens between: an answer cached while the sweep runs may
      // hold rows it then deletes.
      this.rowVersions.deletedBelow(shard, cutoff);
      this.forgetCorrupt(shard, cutoff);
      try {
        deleted += await deleteRange(this.root, this.rows, rowKey(shard, 0, 0, 0, 0), rowKey(shard, cutoff, 0, 0, 0), batchRows, this.stopped);
        // Row groups of those blocks (their rows' pointers went above, or before a restart).
        this.counters.retention_groups_deleted += await deleteRange(this.root, this.groups, groupKey(rowKey(shard, 0, 0, 0, 0), 0), groupKey(rowKey(shard, cutoff, 0, 0, 0), 0), batchRows, this.stopped);
      } finally {
        this.rowVersions.deletedBelow(shard, cutoff);
      }
    }
    this.counters.retention_rows_deleted += deleted;
    if (!this.stopping) this.retire(cutoff);
    return deleted;
  }

  /**
   * After a sweep deleted every row before `cutoff` (a block start): forgets the servers, metrics
   * and racks last seen so long ago that none of their data can be in a row or the head — data
   * comes at most futureSecondsMax ahead of its arrival, and last-seen times are saved every
   * registrySaveMs — so the registry and the rack table hold what the retained data refers to,
   * not every name seen over the store's life (replaced hosts, renamed racks, retired metrics).
   * Skipped while a head still holds a block before the cutoff or a shard is being restored.
   */
  private retire(cutoff: number): void {
    for (const head of this.heads.values()) for (const block of head.blocks.keys()) if (block < cutoff) return;
    if (this.restoring.size > 0 || this.snapshotsOpen > 0) return;
    const ahead = this.opts.futureSecondsMax ?? coreLimits.futureSecondsMax;
    const beforeMs = (cutoff - ahead - 2 * this.opts.blockSeconds) * 1000 - Math.max(60_000, coreLimits.registrySaveMs + 4 * (this.opts.lastSeenSaveMs ?? coreLimits.lastSeenSaveMs));
    const racks = [...this.rackSeenMs].filter(([, ms]) => ms < beforeMs).map(([name]) => name);
    try {
      // One transaction: the racks' and the registry's entries go together or not at all.
      const gone = this.registry.retire(beforeMs, (write) =>
        this.root.transactionSync(() => {
          for (const name of racks) {
            this.racks.remove(name);
            this.rackSeen.remove(name);
          }
          write();
        }),
        racks.length > 0,
      );
      this.counters.servers_retired += gone.servers;
      this.counters.metrics_retired += gone.metrics;
    } catch (err) {
      this.counters.flush_errors++;
      this.lastError = writeFailure(err);
      console.error(`core: forgetting servers, metrics and racks not seen since ${new Date(beforeMs).toISOString()} failed (${this.lastError}); tried again after the next sweep`);
      return;
    }
    for (const name of racks) {
      const id = this.rackIds.get(name)!;
      this.rackIds.delete(name);
      this.rackSeenMs.delete(name);
      this.racksDirty.delete(name);
      this.rackNamesById[id] = undefined;
      this.freeRackIds.push(id);
    }
    if (racks.length > 0) this.freeRackIds.sort((a, b) => b - a);
    this.counters.racks_retired += racks.length;
  }

  /** Persists registry last-seen times. */
  /** Persists the registry's last-seen times (every registrySaveMs); a refused write is counted and tried again next time, never thrown (a full disk made the worker die every 10 s). */
  saveRegistry(): void {
    // The entries whose last-seen time on disk is far behind, a bounded share per save.
    this.counters.registry_entries_saved += this.registry.touchDue(this.opts.lastSeenSaveMs ?? coreLimits.lastSeenSaveMs, registryEntriesPerSaveMax);
    try {
      this.root.transactionSync(() => {
        this.registry.flushDirty();
        // Racks whose id is durable (a new one's goes with its first rows: until then it has no entry here either).
        for (const [name, ms] of this.rackSeenMs) if (!this.racksDirty.has(name)) this.rackSeen.put(name, ms);
      });
      this.registry.flushed();
    } catch (err) {
      this.counters.flush_errors++;
      this.lastError = writeFailure(err);
      if (this.counters.flush_errors === 1 || this.counters.flush_errors % 100 === 0) console.error(`core: saving the server and metric registry failed (${this.lastError}); written again with the next rows or save`);
    }
  }

  /** Bytes the data files take on disk (their high-water marks; freed pages are reused, not returned). */
  diskBytes(): number {
    return this.walFileBytes() + fileBytes(this.root);
  }

  /** Page size of the WAL's environment (walPageBytes, or 4 KiB in a directory made before). */
  walPageBytes(): number {
    return (this.wal.getStats() as { pageSize: number }).pageSize;
  }

  /** Bytes the WAL's file takes (its high-water mark). */
  walFileBytes(): number {
    return fileBytes(this.walEnv);
  }

  /** Bytes of pages holding data now, WAL included (falls when retention deletes rows). */
  usedBytes(): number {
    return this.pagesBytes([this.wal, this.rows, this.groups]);
  }

  /** Bytes of pages holding rows now (their pointers and groups). */
  rowsUsedBytes(): number {
    return this.pagesBytes([this.rows, this.groups]);
  }

  private pagesBytes(dbs: readonly Database<Uint8Array, Buffer>[]): number {
    let pages = 0;
    let pageSize = 4096;
    for (const db of dbs) {
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
      if (used >= this.opts.diskBytesMax) this.room.reason = `storage budget reached: ${used} B in use ≥ this store's share of --disk-bytes-max (${this.opts.diskBytesMax} B); shorten --retention or raise the budget; the rack spools and retries`;
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

  // ---- Shard snapshots (issue 13): the format and the logic are in core/snapshot.ts; the store
  // lends it its databases, names of its ids and its write paths (ShardIo).

  /** Shards being restored from another node: their ingest is refused (503 shard_restoring) until the restore ends. */
  private readonly restoring = new Set<number>();
  private io: ShardIo | null = null;

  /** A consistent snapshot of one shard as chunks of a byte stream (core/snapshot.ts); finish or return() it. */
  snapshotShard(shard: number, chunkBytes?: number): Generator<Uint8Array, void, void> {
    this.counters.shard_snapshots++;
    return this.snapshotting(snapshotChunks(this.shardIo(), shard, chunkBytes));
  }

  /** Snapshots being read: retire() waits for them (they name servers and racks by id, from a read transaction older than the sweep). */
  private snapshotsOpen = 0;

  private *snapshotting(chunks: Generator<Uint8Array, void, void>): Generator<Uint8Array, void, void> {
    this.snapshotsOpen++;
    try {
      yield* chunks;
    } finally {
      this.snapshotsOpen--;
    }
  }

  /** Replaces one shard's data by a snapshot stream's (core/snapshot.ts); on failure the shard is left empty and marked restoring (restoringSeq). */
  async restoreShard(shard: number, chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<RestoreSummary> {
    return restoreFromStream(this.shardIo(), shard, chunks);
  }

  /** A restore driven a batch of records at a time (the worker: chunks arrive as messages). */
  shardRestore(shard: number): ShardRestore {
    return new ShardRestore(this.shardIo(), shard);
  }

  private shardIo(): ShardIo {
    if (this.io !== null) return this.io;
    const dedupDb = this.walEnv.openDB<Buffer, Buffer>({ name: 'dedup', encoding: 'binary', keyEncoding: 'binary' });
    // Restored data is committed with NO_SYNC_FLUSH each step; endRestore's synced commits make
    // it durable before the applied sequence is recorded (a crash before leaves the restoring
    // marker). In an environment opened with lmdb-js' overlappingSync (its default here) such a
    // commit is still flushed by the committing thread, only after the write lock is released
    // (docs/figures.md, "The /healthz tail at 1,000 servers"): the committing thread still waits.
    const unsynced = TransactionFlags.ABORTABLE | TransactionFlags.SYNCHRONOUS_COMMIT | TransactionFlags.NO_SYNC_FLUSH;
    this.io = {
      shardCount: this.opts.shardCount,
      blockSeconds: this.opts.blockSeconds,
      holds: (shard) => this.heads.has(shard),
      rootEnv: this.root,
      walEnv: this.walEnv,
      rows: this.rows,
      groups: this.groups,
      wal: this.wal,
      dedup: dedupDb,
      appliedIn: (shard, txn: Transaction) => this.streamDb.get(shard, { transaction: txn }) ?? 0,
      walSeqBound: () => this.walSeq,
      rackName: (id) => this.rackNamesById[id],
      server: (id) => this.registry.serverById(id),
      metricAt: (mi) => this.registry.metricAt(mi),
      metricIndex: (lo, hi) => this.registry.indexOf(lo, hi),
      beginRestore: async (shard) => {
        if (this.restoring.has(shard)) throw new SnapshotError(`shard ${shard} is being restored already; wait for that copy to end`);
        this.restoring.add(shard);
        try {
          await this.wipeShard(shard);
        } catch (err) {
          this.restoring.delete(shard);
          throw err;
        }
      },
      endRestore: (shard, applied) => {
        this.root.transactionSync(() => this.persistRegistryState());
        this.registry.flushed();
        this.walEnv.transactionSync(() => this.streamDb.put(shard, applied));
        this.streamApplied.set(shard, applied);
        this.restoring.delete(shard);
        this.counters.shard_restores++;
      },
      abortRestore: async (shard) => {
        this.counters.shard_restores_failed++;
        try {
          await this.wipeShard(shard);
        } finally {
          this.restoring.delete(shard);
        }
      },
      rackIdFor: (name) => {
        if (!this.rackIds.has(name) && this.rackIds.size >= this.racksMax) throw new SnapshotError(`this store holds data of ${this.rackIds.size} racks (racksMax ${this.racksMax}); the snapshot's rack ${name} does not fit: raise the racks limit`);
        this.noteRackSeen(name, Date.now());
        return this.rackId(name);
      },
      serverIdFor: (name, rack) => {
        const known = this.registry.serverByName(name);
        // Seen now: its restored rows are recent, whatever it last sent here (retire() goes by it).
        if (known !== undefined) return this.registry.seen(known, Date.now()).id;
        if (this.registry.serverCount >= this.opts.serversMax) return -1;
        return this.registry.server(name, rack, Date.now()).id;
      },
      registerMetric: (lo, hi, kind, name) => {
        const nowMs = Date.now();
        let mi = this.registry.touch(lo, hi, nowMs);
        if (mi < 0) {
          // The source admitted it within the same limits: only the registry's total applies.
          mi = this.registry.metric(lo, hi, kind, nowMs);
          if (mi < 0) return false;
          this.noteKind(mi, kind);
        } else if ((this.metricKinds[mi] === KindCode.Distribution) !== (kind === KindCode.Distribution)) return false;
        if (name !== null) this.registry.name(lo, hi, name, nowMs);
        return true;
      },
      writeRows: (rows, walSeqMax) => {
        rows.sort((a, b) => Buffer.compare(a.key, b.key));
        const packed = this.packRows(rows);
        // Restored rows keep the source's WAL seqs (a replay compares entries against them); the
        // store's own seqs go above them, so later entries of the shard are never skipped.
        this.walSeq = Math.max(this.walSeq, walSeqMax + 1);
        this.root.transactionSync(() => {
          for (const g of packed.groups) this.groups.put(g.key, g.value);
          for (const p of packed.pointers) this.rows.put(p.key, p.value);
          this.persistRegistryState();
        }, unsynced);
        this.registry.flushed();
        for (const shard of new Set(rows.map((r) => r.key.readUInt16BE(0)))) this.rowVersions.wroteShard(shard);
        this.counters.restored_rows += rows.length;
      },
      replayWal: (shard, entries) => {
        const msgs = entries.map((e) => {
          const r = decodeFrame(e.bytes, batchBytesMax, { expect: Body.ShardSection });
          if (!r.ok || r.msg.type !== 'shardSection' || r.msg.shard !== shard || r.msg.shards !== this.opts.shardCount) throw new SnapshotError(`WAL entry ${e.seq} of the snapshot is not a section of shard ${shard}/${this.opts.shardCount} (${r.ok ? `a ${r.msg.type} of shard ${r.msg.type === 'shardSection' ? `${r.msg.shard}/${r.msg.shards}` : '-'}` : r.detail}): the stream is corrupt`);
          if (!this.rackIds.has(r.msg.rack) && this.rackIds.size >= this.racksMax) throw new SnapshotError(`this store holds data of ${this.rackIds.size} racks (racksMax ${this.racksMax}); the snapshot's rack ${r.msg.rack} does not fit: raise the racks limit`);
          return r.msg;
        });
        for (const e of entries) this.walSeq = Math.max(this.walSeq, e.seq + 1);
        const keys = entries.map((e) => walKey(e.seq, shard));
        for (const e of entries) this.walTail = Math.max(this.walTail, e.seq);
        this.walEnv.transactionSync(() => entries.forEach((e, i) => this.wal.put(keys[i]!, e.bytes)), unsynced);
        // As a replay after a restart: what a restored row holds already (by WAL seq) is skipped.
        msgs.forEach((m, i) => {
          this.toHead(m, this.serverIds(m, Date.now(), true), entries[i]!.seq, keys[i]!, entries[i]!.bytes.length, true);
          this.noteRackSeen(m.rack, Date.now());
        });
        this.counters.restored_wal_entries += entries.length;
      },
      adoptMarks: (shard, marks) => {
        for (const { key, value } of marks) {
          if (key.length <= 2 || key.readUInt16BE(0) !== shard || value.length !== 12 + windowSeqs / 8) throw new SnapshotError(`a de-duplication mark of the snapshot (key of ${key.length} B, value of ${value.length} B) is not one of shard ${shard}: the stream is corrupt`);
        }
        this.walEnv.transactionSync(() => {
          for (const { key, value } of marks) dedupDb.put(key, value);
        }, unsynced);
        for (const { key, value } of marks) if (!this.dedup.adopt(key, value)) throw new SnapshotError(`a de-duplication mark of shard ${shard} does not decode: the stream is corrupt`);
        this.counters.restored_marks += marks.length;
      },
      noteDropped: (what, n) => {
        if (what === 'servers_refused') this.counters.restore_servers_refused += n;
        else this.counters.restore_metrics_refused += n;
      },
      noteCorruptRow: (key, err, what) => void this.noteCorrupt(key, err, what),
    };
    return this.io;
  }

  /** Racks, registry entries and the store's sequences, written in the caller's transaction (as writeSlice writes them). */
  private persistRegistryState(): void {
    for (const [name, id] of this.racksDirty) this.racks.put(name, id);
    this.racksDirty.clear();
    this.state.put('groupSeq', this.groupSeq);
    this.state.put('walSeq', this.walSeq);
    this.registry.flushDirty();
  }

  /**
   * Empties one shard of this store: its applied stream sequence becomes `restoringSeq` first
   * (synced: a crash after it leaves a shard whose partial data must be copied again, never read
   * on from the stream: that would store what the partial copy holds twice), then its head, marks
   * and cached rows in memory, then its rows, row groups, WAL entries and marks on disk in
   * bounded transactions. Only a completed restore (endRestore) records a real sequence.
   */
  private async wipeShard(shard: number): Promise<void> {
    // The stream creation time it noted goes too: a copy holds what the source read, of whatever stream that was.
    this.walEnv.transactionSync(() => {
      this.streamDb.put(shard, restoringSeq);
      this.streamCreatedDb.remove(shard);
      this.streamMarkDb.remove(shard);
    });
    this.streamApplied.set(shard, restoringSeq);
    this.rowVersions.wroteShard(shard);
    try {
      await this.emptyShard(shard);
    } finally {
      // Again once the rows are gone, or as far as a failed delete got.
      this.rowVersions.wroteShard(shard);
    }
  }

  /** wipeShard's work once the shard is marked restoring. */
  private async emptyShard(shard: number): Promise<void> {
    this.forgetCorrupt(shard, Number.POSITIVE_INFINITY);
    const head = this.heads.get(shard)!;
    for (const metrics of head.blocks.values()) {
      for (const racks of metrics.values()) {
        for (const mh of racks.values()) {
          this.headBytes -= mh.bytes;
          mh.release();
        }
      }
    }
    for (const bytes of head.walBytes.values()) this.walBytes -= bytes;
    head.blocks.clear();
    head.racksIn.clear();
    head.wal.clear();
    head.walBytes.clear();
    head.walMin.clear();
    // Its written blocks' entries waiting for the WAL's front go with the rest of its entries below.
    this.takeDone((k) => walKeyShard(k) !== shard);
    head.lastArrivalMs.clear();
    this.flushedThrough.delete(shard);
    this.dedup.forgetShard(shard);
    // Cached rows are found by key, WAL seq and length: a restored row could match an old one's.
    this.rowCache = new RowCache(rowCacheBytesMax, this.counters);
    this.counters.row_cache_bytes = 0;
    this.directories.clear();
    this.counters.row_directory_bytes = 0;
    this.chunkMemo.forget();
    // A written block's WAL deletes still queued must not land on restored entries.
    await this.walEnv.committed;
    const batch = 5000;
    const first = rowKey(shard, 0, 0, 0, 0);
    const next = rowKey(shard + 1, 0, 0, 0, 0);
    await deleteRange(this.root, this.rows, first, next, batch, this.stopped);
    await deleteRange(this.root, this.groups, groupKey(first, 0), groupKey(next, 0), batch, this.stopped);
    // The WAL's keys lead with the seq: the shard's are picked out of it (as many as the WAL holds,
    // bounded by walBacklogBytesMax) and deleted in one transaction, not in batches scattered
    // through the queue while other shards append (the pattern of kriszyp/lmdb-js#321, deleteWritten).
    const walKeys: Buffer[] = [];
    for (const key of this.wal.getKeys()) if (walKeyShard(key as Buffer) === shard) walKeys.push(Buffer.from(key as Buffer));
    if (walKeys.length > 0) await this.walEnv.transaction(() => walKeys.forEach((k) => this.wal.remove(k)));
    await deleteRange(this.walEnv, this.shardIo().dedup, first.subarray(0, 2), next.subarray(0, 2), batch, this.stopped);
  }

  /** Ends retention sweeps and shard wipes at their next batch (the store is about to close). */
  stopBackgroundWork(): void {
    this.stopping = true;
  }

  async close(): Promise<void> {
    // Written blocks' entries waiting for the WAL's front go now: a clean restart then replays
    // only what rows do not hold (after a crash, a replay skips them by the rows' seqs).
    const done = this.takeDone(() => false);
    if (done.length > 0) {
      try {
        done.sort(Buffer.compare);
        this.walEnv.transactionSync(() => done.forEach((k) => this.wal.remove(k)));
      } catch (err) {
        console.error(`core: deleting written blocks' WAL entries at close failed (${writeFailure(err)}); the next start replays and deletes them`);
      }
    }
    await closeLmdb(this.root, `core store ${this.opts.dir}`);
    await closeLmdb(this.walEnv, `core store ${this.opts.dir} (WAL)`);
  }
}

function fileBytes(env: RootDatabase): number {
  const s = env.getStats() as { pageSize?: number; lastPageNumber?: number };
  return ((s.lastPageNumber ?? 0) + 1) * (s.pageSize ?? 4096);
}

/**
 * Moves the entries of `names` from `from` into `to` (a data directory written before the WAL had
 * its own environment), in batches of at most moveBatch entries, each copied and synced before it
 * is deleted from `from`: memory stays one batch, and a crash in between repeats a batch harmlessly.
 */
function moveFromRoot(from: RootDatabase, to: RootDatabase, names: readonly string[]): void {
  const moveBatch = 1000;
  for (const name of names) {
    const src = from.openDB<Buffer, Buffer>({ name, encoding: 'binary', keyEncoding: 'binary' });
    const dst = to.openDB<Buffer, Buffer>({ name, encoding: 'binary', keyEncoding: 'binary' });
    for (;;) {
      const entries = [...src.getRange({ limit: moveBatch })];
      if (entries.length === 0) break;
      to.transactionSync(() => {
        for (const { key, value } of entries) dst.put(key, value);
      });
      from.transactionSync(() => {
        for (const { key } of entries) src.remove(key);
      });
    }
  }
}

/**
 * Moves a WAL written before core/walkey.ts (database `wal`, keys shard first) into `log` (seq
 * first), in batches, each entry put before it is removed: a crash midway leaves each entry in
 * one of the two (a seq taken twice would be put twice under one key: the same bytes), and the
 * next start goes on. A build before this one refuses the directory (store format 4).
 */
function migrateLegacyWal(env: RootDatabase, log: Database<Uint8Array, Buffer>): void {
  const legacy = env.openDB<Buffer, Buffer>({ name: 'wal', encoding: 'binary', keyEncoding: 'binary' });
  for (;;) {
    const entries = [...legacy.getRange({ limit: 1000 })];
    if (entries.length === 0) return;
    env.transactionSync(() => {
      for (const { key, value } of entries) {
        const { shard, seq } = legacyWalKeyParts(key);
        log.put(walKey(seq, shard), value);
        legacy.remove(key);
      }
    });
  }
}

function writeU48(b: Buffer, at: number, v: number): void {
  b.writeUIntBE(v, at, 6);
}

function readU48(b: Buffer | Uint8Array, at: number): number {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).readUIntBE(at, 6);
}

/**
 * What this build writes into a store: 2 = rows of version 3 in chunked row groups (third
 * session); 3 = rows of version 4 (aggregates per 5 s, fifth session); 4 = the WAL keyed by seq
 * first (`log`, core/walkey.ts: a build before it would find its `wal` empty and lose what the log
 * holds, then hand out the log's seqs again), twenty-seventh session; 5 = rows of version 5 (a
 * CRC-32 after version 4's bytes, core/block.ts: a build before it would take every new row
 * for a corrupt one, and a merge of late data would write over it), twenty-eighth session. A build reads every
 * format up to its own and refuses a newer one instead of taking its rows for corrupt ones (a
 * merge of late data would then overwrite them). Builds before format 2 do not check: never run
 * one on a data directory a newer build has written.
 */
export const storeFormat = 5;

function checkStoreFormat(state: Database<number, string>, dir: string): void {
  const found = state.get('format');
  if (found !== undefined && found > storeFormat) throw new Error(`${dir} was written by a newer apm (store format ${found}; this build reads up to ${storeFormat}): run that version or a newer one`);
  if (found !== storeFormat) state.putSync('format', storeFormat);
}
