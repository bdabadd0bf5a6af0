// A core worker thread (issue 12): owns some stores (core/layout.ts) and does all their work —
// ingest into the WAL and head, row writing in bounded slices, retention, stored-query
// evaluation and ad-hoc queries of their metrics. The HTTP thread (core/pool.ts) talks to it
// with messages; section bytes arrive in a transferred buffer, never re-encoded.

import { getPriority, setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { hashNameOften } from '../schema/names.js';
import { guardLmdbRejections } from '../lib/lmdb.js';
import { shardOf } from '../schema/section.js';
import { exportChunk } from './history/export.js';
import { evaluate } from './query/eval.js';
import { parseQueryOften } from './query/parse.js';
import { StoredQueries, type StoredQuery } from './query/stored.js';
import { windowsJson } from './query/windowjson.js';
import { WindowCache } from './query/windowcache.js';
import { Store, type StoreIngestResult, type StoreOptions } from './store.js';
import { restoresMax, snapshotCursorsMax, snapshotIdleMs, type ShardRestore } from './snapshot.js';
import { worseIngest, type ToMain, type ToWorker, type WorkerConfig, type WorkerStats } from './protocol.js';

const config = workerData as WorkerConfig;
const port = parentPort!;

/**
 * The HTTP thread goes first when the cores are busy: this thread runs `config.nice` above the
 * process' nice value (Linux keeps one per thread; the HTTP thread keeps the process' own).
 * While 1,000 servers' minute-block was ingested, the longest /healthz wait was 382, 494, 433 ms
 * with the workers at nice 0 and 310, 153, 206 ms at 5 (thirteenth session).
 */
const niceWanted = Math.min(19, getPriority() + config.nice);
try {
  setPriority(niceWanted);
} catch (err) {
  port.postMessage({ t: 'log', message: `could not set its nice value to ${niceWanted}: ${(err as Error).message}; it runs at the process' priority` } satisfies ToMain);
}

interface Owned {
  index: number;
  store: Store;
  stored: StoredQueries;
  /** Ad-hoc answers per window, kept while their rows do not change. */
  answers: WindowCache;
}

function post(m: ToMain): void {
  port.postMessage(m);
}

guardLmdbRejections((message) => post({ t: 'log', message: `an LMDB write failed (${message}); free disk space — the write is retried or refused with 503` }));

/** Tests only: the thread runs without turning its event loop for `ms` (at most 10 s). */
function busyFor(ms: number): void {
  const until = performance.now() + Math.min(ms, 10_000);
  while (performance.now() < until);
}

if (config.stallStartMs !== undefined) busyFor(config.stallStartMs);
const owned = new Map<number, Owned>();
for (const index of config.stores) {
  const opts: StoreOptions = { ...config.store, dir: `${config.dataDir}/store-${index}`, shards: config.shardsOfStore[index]! };
  const store = new Store(opts);
  // Stored queries read the same blocks window after window: their rows go through the store's row cache (issue 14).
  const cachedReads = { registry: store.registry, rackName: (id: number) => store.rackName(id), read: ((lo, hi, from, to, visit, o) => store.read(lo, hi, from, to, visit, { ...o, cache: true })) satisfies Store['read'] };
  // Late data is noted per shard: it revises only the queries of that shard's metrics.
  const stored = new StoredQueries(store.env, cachedReads, { ...config.stored, shardOf: shardOfMetric, blockSeconds: config.store.blockSeconds });
  stored.onWindow = (qid, w, query) => post({ t: 'window', qid, w, query });
  store.onIngest = (shard, second) => stored.noteData(second, shard);
  stored.noteReplayed(store.replayedSeconds);
  store.replayedSeconds.clear();
  owned.set(index, { index, store, stored, answers: new WindowCache(store.counters) });
}

function storeOfShard(shard: number): Owned {
  const o = owned.get(shard % config.layout.stores);
  if (o === undefined) throw new Error(`BUG: shard ${shard} (store ${shard % config.layout.stores}) is not owned by worker ${config.worker}`);
  return o;
}

function shardOfMetric(name: string): number {
  const h = new Uint32Array(2);
  hashNameOften(name, h, 0);
  return shardOf(h[0]!, config.layout.shards);
}

function storeOfMetric(name: string): Owned {
  return storeOfShard(shardOfMetric(name));
}

/** Longest row slice per 1 s report over the last 10 reports: /metrics shows the longest of the last 10 s. */
const sliceMaxes: number[] = [];

function stats(opts: { periodic: boolean }): WorkerStats {
  const counters: Record<string, number> = {};
  const rejected: Record<string, number> = {};
  let heldBytes = 0;
  let walBytes = 0;
  let walFileBytes = 0;
  let diskBytes = 0;
  let usedBytes = 0;
  let lagSeconds = 0;
  let sliceMsMax = 0;
  let servers = 0;
  let metrics = 0;
  let storedQueries = 0;
  let namesVersion = 0;
  const now = Date.now();
  for (const { store, stored } of owned.values()) {
    const add = (src: Record<string, number>, dst: Record<string, number>) => {
      for (const [k, v] of Object.entries(src)) dst[k] = (dst[k] ?? 0) + v;
    };
    add(store.counters, counters);
    add(stored.counters, counters);
    add(store.dedup.counters as Record<string, number>, counters);
    add(store.rejected as Record<string, number>, rejected);
    counters.metrics_overflow_server = (counters.metrics_overflow_server ?? 0) + store.registry.overflow.server;
    counters.metrics_overflow_total = (counters.metrics_overflow_total ?? 0) + store.registry.overflow.total;
    heldBytes += store.heldBytes;
    walBytes += store.unwrittenWalBytes;
    walFileBytes += store.walFileBytes();
    diskBytes += store.diskBytes();
    usedBytes += store.usedBytes();
    lagSeconds = Math.max(lagSeconds, stored.lagSeconds(now));
    sliceMsMax = Math.max(sliceMsMax, store.sliceMsMax);
    if (opts.periodic) store.sliceMsMax = 0;
    servers = Math.max(servers, store.registry.serverCount);
    metrics += store.registry.metricCount;
    storedQueries += stored.size;
    namesVersion += store.registry.namesVersion;
  }
  if (opts.periodic) {
    sliceMaxes.push(sliceMsMax);
    if (sliceMaxes.length > 10) sliceMaxes.shift();
  }
  sliceMsMax = Math.max(sliceMsMax, ...sliceMaxes);
  return { counters, rejected, heldBytes, walBytes, walFileBytes, diskBytes, usedBytes, lagSeconds, sliceMsMax, servers, metrics, storedQueries, namesVersion };
}

/**
 * Set by the 'stop' message. From then on nothing new starts against the stores: a row-writing
 * step or an ingest turn already queued (setImmediate) returns, and a message is refused. The
 * stores close only after the asynchronous work that uses them (below) has settled — a step
 * that ran on a closing store crashed the process on SIGTERM (SIGSEGV, 2 of 12 under load).
 */
let stopping = false;
/** Set once the stores start closing: an ingest turn still queued answers instead of writing. */
let closing = false;
/** Longest a stop waits for that work (a stored-query run is bounded far below it). */
const stopWaitMs = 10_000;
/** Asynchronous work that reads or writes the stores (stored-query runs, sweeps, restores). */
const inFlight = new Set<Promise<unknown>>();
function track<T>(p: Promise<T>): Promise<T> {
  inFlight.add(p);
  const done = () => void inFlight.delete(p);
  p.then(done, done);
  return p;
}

/** Row writing per turn while rows are behind the ingest (Store.rowsBehind): several slices. */
const behindTurnMs = 50;

/** Row writing, continuously: one slice per turn while work is due, so ingest runs in between. */
let writing = false;
function writeRows(): void {
  if (writing) return;
  writing = true;
  const step = () => {
    if (stopping) {
      writing = false;
      return;
    }
    let more = false;
    const t0 = performance.now();
    for (const { store } of owned.values()) {
      let again = store.writeSlice(Date.now());
      // Rows behind the ingest (a backfill): slices back to back for up to behindTurnMs, so the
      // WAL — and the file, which never shrinks — stops growing; ingest waits meanwhile.
      while (again && performance.now() - t0 < behindTurnMs && store.rowsBehind(Date.now())) again = store.writeSlice(Date.now());
      more = again || more;
    }
    if (more) setImmediate(step);
    else writing = false;
  };
  step();
}

const timers = [
  setInterval(writeRows, 250),
  setInterval(() => post({ t: 'stats', stats: stats({ periodic: true }) }), 1000),
  setInterval(() => {
    for (const { stored } of owned.values()) void track(stored.tick(Date.now())).catch((e: unknown) => post({ t: 'log', message: `stored queries failed: ${String(e)}` }));
  }, 250),
  setInterval(() => {
    for (const { store, stored } of owned.values()) {
      void track(store.retentionSweep(Date.now())).catch((e: unknown) => post({ t: 'log', message: `retention sweep failed: ${String(e)}` }));
      void track(stored.retentionSweep(Date.now(), config.store.retentionSeconds)).catch((e: unknown) => post({ t: 'log', message: `retention sweep of stored-query results failed: ${String(e)}` }));
    }
  }, config.retentionSweepMs),
  setInterval(() => {
    for (const { store } of owned.values()) store.saveRegistry();
  }, config.registrySaveMs),
];

port.on('message', (m: ToWorker) => {
  try {
    if (stopping && m.t !== 'stop') throw new Error(`worker ${config.worker} is stopping`);
    handle(m);
  } catch (err) {
    if ('id' in m) post({ t: 'reply', id: m.id, error: (err as Error).message });
    else post({ t: 'log', message: `worker ${config.worker}: ${(err as Error).stack ?? String(err)}` });
  }
});

type IngestMessage = Extract<ToWorker, { t: 'ingest' }>;
const pendingIngest: IngestMessage[] = [];

/**
 * Commits every waiting request: per store one transaction, then one answer per request. When
 * that throws (a bug, or a store that broke), every request of the batch is answered with the
 * error before it goes on: the HTTP thread counts each request until it is answered, so a batch
 * left unanswered held its slots of the ingest bound for the thread's life — after
 * ingestWaitingMax such, every ingest of the worker was refused 503 (a stream step that commits
 * the waiting requests first, below, caught the error and answered only itself).
 */
function ingestPending(): void {
  const batch = pendingIngest.splice(0);
  try {
    commitIngest(batch);
  } catch (err) {
    for (const m of batch) post({ t: 'reply', id: m.id, error: `worker ${config.worker} could not store the request: ${(err as Error).message}; retry` });
    throw err;
  }
}

/**
 * The waiting ingest requests, committed before a stream step (the stream's order is the order
 * of arrival here). A throw there is fatal, as on the ingest path (setImmediate(ingestPending)):
 * after a commit that threw, the head may hold part of what the WAL holds, and only a restart
 * (its replay) makes them agree. Before, the step's handler caught it and the worker went on: a
 * retry was answered as a duplicate, its data missing from answers until a restart.
 */
function commitWaiting(): void {
  if (pendingIngest.length === 0) return;
  try {
    ingestPending();
  } catch (err) {
    setImmediate(() => {
      throw err;
    });
    throw err;
  }
}

/** Tests ('fail' with nextIngest): the next commit of ingest requests throws, as a bug would. */
let failNextIngest = false;

function commitIngest(batch: IngestMessage[]): void {
  if (failNextIngest) {
    failNextIngest = false;
    throw new Error('fault injected by a test');
  }
  if (closing) {
    // Not stored, not acknowledged: the HTTP thread answers 503 and the rack sends it again.
    for (const m of batch) post({ t: 'reply', id: m.id, error: `worker ${config.worker} is stopping` });
    return;
  }
  // Per store, the requests' sections for it; per request, its answers from each store.
  const perStore = new Map<Owned, { req: number; h: IngestMessage['h']; sections: { shard: number; bytes: Uint8Array }[] }[]>();
  batch.forEach((m, req) => {
    const buf = new Uint8Array(m.buf);
    const byStore = new Map<Owned, { shard: number; bytes: Uint8Array }[]>();
    for (const s of m.sections) {
      const o = storeOfShard(s.shard);
      let list = byStore.get(o);
      if (list === undefined) byStore.set(o, (list = []));
      list.push({ shard: s.shard, bytes: buf.subarray(s.start, s.end) });
    }
    for (const [o, sections] of byStore) {
      let reqs = perStore.get(o);
      if (reqs === undefined) perStore.set(o, (reqs = []));
      reqs.push({ req, h: m.h, sections });
    }
  });
  const answers = batch.map((): StoreIngestResult => ({ status: 204, points: 0, duplicates: 0 }));
  for (const [o, reqs] of perStore) {
    const results = o.store.ingestMany(reqs);
    reqs.forEach((r, k) => {
      const res = results[k]!;
      const a = answers[r.req]!;
      if (a.status !== 204) {
        if (res.status !== 204) answers[r.req] = worseIngest(a, res);
        return;
      }
      if (res.status !== 204) answers[r.req] = res;
      else answers[r.req] = { status: 204, points: a.points + res.points, duplicates: a.duplicates + res.duplicates };
    });
  }
  // The store copied what it keeps (WAL values, head columns, names): the buffers go back for reuse.
  batch.forEach((m, req) => port.postMessage({ t: 'reply', id: m.id, result: answers[req]!, buf: m.buf } satisfies ToMain, [m.buf]));
}

// Shard snapshots for another node and restores from one (issue 13, core/snapshot.ts). Both are
// bounded in number and closed when their requests stop coming (a copy that died mid-way).
interface Cursor {
  gen: Generator<Uint8Array, void, void>;
  timer: NodeJS.Timeout;
}
const cursors = new Map<number, Cursor>();
let nextCursor = 1;
interface RestoreUnderWay {
  restore: ShardRestore;
  /** null while the shard is being emptied (begin) or after an abort started. */
  timer: NodeJS.Timeout | null;
}
const restores = new Map<number, RestoreUnderWay>();

function closeCursor(cursor: number): void {
  const c = cursors.get(cursor);
  if (c === undefined) return;
  clearTimeout(c.timer);
  cursors.delete(cursor);
  // Ends its read transactions (the generator's finally).
  c.gen.return();
}

function idle(what: string, onIdle: () => void): NodeJS.Timeout {
  return setTimeout(() => {
    post({ t: 'log', message: `${what} heard nothing for ${snapshotIdleMs} ms; closed` });
    onIdle();
  }, snapshotIdleMs).unref();
}

/** The cursor's next chunk, transferred; the cursor closes when it is done or fails. */
function snapshotStep(id: number, cursor: number): void {
  const c = cursors.get(cursor);
  if (c === undefined) throw new Error(`snapshot cursor ${cursor} is not open (ended, or idle for ${snapshotIdleMs} ms); start the copy again`);
  let r: IteratorResult<Uint8Array, void>;
  try {
    r = c.gen.next();
  } catch (err) {
    closeCursor(cursor);
    throw err;
  }
  clearTimeout(c.timer);
  if (r.done === true) closeCursor(cursor);
  else c.timer = idle(`snapshot cursor ${cursor}`, () => closeCursor(cursor));
  const bytes = r.done === true ? new Uint8Array(0) : r.value;
  const buf = bytes.buffer as ArrayBuffer;
  if (bytes.byteOffset !== 0 || bytes.byteLength !== buf.byteLength) throw new Error('BUG: a snapshot chunk is not a buffer of its own');
  port.postMessage({ t: 'reply', id, snapshot: { cursor, bytes: buf, done: r.done === true } } satisfies ToMain, [buf]);
}

function abortRestore(shard: number, reply: number | null): void {
  const u = restores.get(shard);
  if (u === undefined) {
    if (reply !== null) post({ t: 'reply', id: reply });
    return;
  }
  if (u.timer !== null) clearTimeout(u.timer);
  u.timer = null;
  void track(u.restore.abort()).then(
    () => {
      restores.delete(shard);
      if (reply !== null) post({ t: 'reply', id: reply });
    },
    (err: unknown) => {
      restores.delete(shard);
      const message = `emptying shard ${shard} after a failed restore failed: ${(err as Error).message}`;
      if (reply !== null) post({ t: 'reply', id: reply, error: message });
      else post({ t: 'log', message });
    },
  );
}

function restoreOf(shard: number): RestoreUnderWay {
  const u = restores.get(shard);
  if (u === undefined || u.timer === null) throw new Error(`no restore of shard ${shard} is under way (ended, failed, or idle for ${snapshotIdleMs} ms); copy the shard again`);
  clearTimeout(u.timer);
  u.timer = idle(`the restore of shard ${shard}`, () => abortRestore(shard, null));
  return u;
}

type SnapshotMessage = Extract<ToWorker, { t: 'snapshotOpen' | 'snapshotNext' | 'snapshotClose' | 'restoreBegin' | 'restoreBatch' | 'restoreEnd' | 'restoreAbort' }>;

function handleSnapshot(m: SnapshotMessage): void {
  switch (m.t) {
    case 'snapshotOpen': {
      if (cursors.size >= snapshotCursorsMax) throw new Error(`worker ${config.worker} has ${snapshotCursorsMax} shard snapshots open; retry when one ends`);
      const cursor = nextCursor++;
      cursors.set(cursor, { gen: storeOfShard(m.shard).store.snapshotShard(m.shard), timer: idle(`snapshot cursor ${cursor}`, () => closeCursor(cursor)) });
      return snapshotStep(m.id, cursor);
    }
    case 'snapshotNext':
      return snapshotStep(m.id, m.cursor);
    case 'snapshotClose':
      closeCursor(m.cursor);
      return post({ t: 'reply', id: m.id });
    case 'restoreBegin': {
      if (restores.has(m.shard)) throw new Error(`a restore of shard ${m.shard} is under way already; wait for it to end`);
      if (restores.size >= restoresMax) throw new Error(`worker ${config.worker} has ${restoresMax} shard restores under way; retry when one ends`);
      const u: RestoreUnderWay = { restore: storeOfShard(m.shard).store.shardRestore(m.shard), timer: null };
      restores.set(m.shard, u);
      // The idle clock starts once the shard is empty (emptying a large shard takes a while).
      void track(u.restore.begin()).then(
        () => {
          u.timer = idle(`the restore of shard ${m.shard}`, () => abortRestore(m.shard, null));
          post({ t: 'reply', id: m.id });
        },
        (err: unknown) => {
          restores.delete(m.shard);
          post({ t: 'reply', id: m.id, error: (err as Error).message });
        },
      );
      return;
    }
    case 'restoreBatch':
      restoreOf(m.shard).restore.apply(Buffer.from(m.buf));
      return post({ t: 'reply', id: m.id });
    case 'restoreEnd': {
      const u = restoreOf(m.shard);
      const restored = u.restore.finish();
      clearTimeout(u.timer!);
      restores.delete(m.shard);
      return post({ t: 'reply', id: m.id, restored });
    }
    case 'restoreAbort':
      return abortRestore(m.shard, m.id);
  }
}

function handle(m: ToWorker): void {
  switch (m.t) {
    case 'snapshotOpen':
    case 'snapshotNext':
    case 'snapshotClose':
    case 'restoreBegin':
    case 'restoreBatch':
    case 'restoreEnd':
    case 'restoreAbort':
      return handleSnapshot(m);
    case 'ingest': {
      // Group commit: requests that arrive while the worker is busy wait here and are committed
      // together on the next turn, one synced transaction per store for all of them.
      pendingIngest.push(m);
      if (pendingIngest.length === 1) setImmediate(ingestPending);
      return;
    }
    case 'query': {
      // Its asker stopped waiting (the HTTP side answered 503): not evaluated.
      if (m.deadlineMs !== undefined && Date.now() > m.deadlineMs) return post({ t: 'reply', id: m.id, error: 'the query waited past its deadline in the worker; retry' });
      const q = parseQueryOften(m.query);
      const o = storeOfMetric(q.metric);
      if (m.cache === false) {
        const windows = evaluate(o.store, q, m.fromSec, m.toSec);
        return post(m.json === true ? { t: 'reply', id: m.id, windowsJson: windowsJson(windows) } : { t: 'reply', id: m.id, windows });
      }
      return post(m.json === true ? { t: 'reply', id: m.id, windowsJson: o.answers.evaluateJson(o.store, q, m.fromSec, m.toSec) } : { t: 'reply', id: m.id, windows: o.answers.evaluate(o.store, q, m.fromSec, m.toSec) });
    }
    case 'export': {
      const o = storeOfMetric(m.metric);
      return post({ t: 'reply', id: m.id, chunk: exportChunk(o.store, m.metric, m.fromSec, m.toSec, config.store.blockSeconds, m.entriesMax, m.rackFrom) });
    }
    case 'sync': {
      for (const [index, defs] of Object.entries(m.defsByStore)) owned.get(Number(index))?.stored.sync(defs as StoredQuery[], Date.now(), m.elsewhereByStore[Number(index)] ?? []);
      return post({ t: 'reply', id: m.id });
    }
    case 'adoptWindows':
      return post({ t: 'reply', id: m.id, adopted: storeOfMetric(m.metric).stored.adopt(m.windows) });
    case 'results': {
      const o = storeOfMetric(m.metric);
      return post({ t: 'reply', id: m.id, json: m.newest ? o.stored.newestJson(m.qid, m.limit) : o.stored.resultsJson(m.qid, m.fromMs, m.toMs, m.limit) });
    }
    case 'metrics': {
      const out: { name: string | null; kind: number; firstSeenMs: number; lastSeenMs: number }[] = [];
      for (const { store } of owned.values()) for (const x of store.registry.allMetrics()) out.push({ name: x.name, kind: x.kind, firstSeenMs: x.firstSeenMs, lastSeenMs: x.lastSeenMs });
      return post({ t: 'reply', id: m.id, metrics: out });
    }
    case 'streamSkip': {
      // After the requests already waiting: the stream's order is the order of arrival here.
      commitWaiting();
      return post({ t: 'reply', id: m.id, skip: storeOfShard(m.shard).store.skipStream(m.shard, m.seq, m.after) });
    }
    case 'streamRebase': {
      commitWaiting();
      const err = storeOfShard(m.shard).store.rebaseStream(m.shard, m.seq);
      return post({ t: 'reply', id: m.id, ...(err === null ? {} : { error: err }) });
    }
    case 'streamRestart': {
      commitWaiting();
      void track(storeOfShard(m.shard).store.restartFromStream(m.shard)).then(
        () => post({ t: 'reply', id: m.id }),
        (err: unknown) => post({ t: 'reply', id: m.id, error: (err as Error).message }),
      );
      return;
    }
    case 'streamCreated': {
      const r = storeOfShard(m.shard).store.streamCreated(m.shard, m.created);
      return post('error' in r ? { t: 'reply', id: m.id, error: r.error } : { t: 'reply', id: m.id, created: r.before });
    }
    case 'streamMark': {
      const r = storeOfShard(m.shard).store.streamMark(m.shard);
      return post('error' in r ? { t: 'reply', id: m.id, error: r.error } : { t: 'reply', id: m.id, mark: r.mark });
    }
    case 'streamSeqs': {
      const seqs: Record<number, number> = {};
      for (const { store } of owned.values()) Object.assign(seqs, store.streamSeqs());
      return post({ t: 'reply', id: m.id, seqs });
    }
    case 'stats':
      return post({ t: 'reply', id: m.id, stats: stats({ periodic: false }) });
    case 'flush': {
      // Tests and benches: write every due row now (as the timer would, without waiting for it).
      for (const { store } of owned.values()) while (store.writeSlice(m.nowMs));
      return post({ t: 'reply', id: m.id });
    }
    case 'tick': {
      // Tests: evaluate stored queries as of nowMs (after a timer run under way), and answer once done.
      void track(Promise.all([...owned.values()].map((o) => o.stored.tickAfter(m.nowMs)))).then(() => post({ t: 'reply', id: m.id }));
      return;
    }
    case 'stop': {
      shutdownOnce('stop').then(
        () => post({ t: 'reply', id: m.id }),
        (err: unknown) => post({ t: 'reply', id: m.id, error: `its stores did not close cleanly: ${(err as Error).message}` }),
      );
      return;
    }
    case 'stall': {
      post({ t: 'reply', id: m.id });
      setImmediate(() => busyFor(m.ms));
      return;
    }
    case 'fail': {
      post({ t: 'reply', id: m.id });
      if (m.nextIngest === true) return void (failNextIngest = true);
      // Tests: the worker dies of an error nothing catches, as it would of a bug.
      setImmediate(() => {
        throw new Error('fault injected by a test');
      });
      return;
    }
  }
}

/**
 * Stops every timer, waits (bounded) for the asynchronous work on the stores, and closes them.
 * 'stop' first commits and answers the requests received before it; after an uncaught error
 * those are left to the HTTP thread, which answers them 503 (retry) when this thread exits.
 */
async function shutdown(why: 'stop' | 'fatal'): Promise<void> {
  stopping = true;
  // A step that throws (after an uncaught error the state may be broken) is logged, and the
  // stores are still closed: an environment left open as the thread ends crashes the process.
  const step = (what: string, f: () => void) => {
    try {
      f();
    } catch (err) {
      post({ t: 'log', message: `while it stops, ${what} failed: ${(err as Error).message}` });
    }
  };
  step('stopping timers and background work', () => {
    for (const t of timers) clearInterval(t);
    for (const { store, stored } of owned.values()) {
      store.stopBackgroundWork();
      stored.stopBackgroundWork();
    }
  });
  step('closing snapshot cursors', () => {
    for (const cursor of [...cursors.keys()]) closeCursor(cursor);
  });
  // Bounded: work that never settles (a bug) delays the stop by stopWaitMs, not for good.
  const deadline = Date.now() + stopWaitMs;
  while (inFlight.size > 0 && Date.now() < deadline) await Promise.race([Promise.allSettled([...inFlight]), new Promise((r) => setTimeout(r, deadline - Date.now()))]);
  if (inFlight.size > 0) post({ t: 'log', message: `worker ${config.worker}: ${inFlight.size} tasks still running after ${stopWaitMs} ms; closing its stores anyway` });
  // Requests received before the stop are committed and answered, not dropped.
  if (why === 'stop' && pendingIngest.length > 0) ingestPending();
  closing = true;
  let failed: unknown = null;
  for (const { store } of owned.values()) {
    // Every store is closed even when saving its registry or closing another one fails.
    if (why === 'stop') {
      try {
        store.saveRegistry();
      } catch (err) {
        failed ??= err;
      }
    }
    await store.close().catch((err: unknown) => (failed ??= err));
  }
  if (failed !== null) throw failed;
}

/** One shutdown per thread: a 'stop' and an uncaught error share it. */
let shuttingDown: Promise<void> | null = null;
function shutdownOnce(why: 'stop' | 'fatal'): Promise<void> {
  shuttingDown ??= shutdown(why);
  return shuttingDown;
}

/**
 * An error nothing caught ends this thread, but not abruptly. A thread that ends while an LMDB
 * commit of its own is under way lets lmdb-js close the environment under that commit (its
 * cleanup hook, src/env.cpp closeEnv): a native crash that takes the whole process down — the
 * suite lost a test file's process to it when a test stopped a worker with terminate() while it
 * wrote rows. So the stores are closed first, after their commits settle, and then the thread
 * exits; the HTTP thread counts the death and starts the worker again from its WAL.
 */
let fatal = false;
process.on('uncaughtException', (err) => {
  const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
  if (fatal) return post({ t: 'log', message: `another uncaught error while it stops: ${text}` });
  fatal = true;
  post({ t: 'log', message: `uncaught error; closing its stores, then exiting to be restarted: ${text}` });
  // Last resort: a close that never settles must not leave a thread that refuses everything.
  setTimeout(() => {
    post({ t: 'log', message: `its stores did not close within ${stopWaitMs * 3} ms; exiting anyway` });
    process.exit(1);
  }, stopWaitMs * 3).unref();
  shutdownOnce('fatal')
    .then(
      () => post({ t: 'log', message: 'its stores are closed; exiting' }),
      (e: unknown) => post({ t: 'log', message: `its stores did not close cleanly: ${(e as Error).message}` }),
    )
    .finally(() => process.exit(1));
});

post({ t: 'ready', replayed: [...owned.values()].reduce((n, o) => n + o.store.counters.wal_replayed, 0) });
