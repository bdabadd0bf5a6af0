// The HTTP thread's side of the workers (issue 12): starts one worker thread per store group,
// routes each request's sections to the workers owning their shards (as bytes, in one
// transferred buffer per worker, no re-encoding), answers once every section is durable,
// routes queries by their metric's shard, and restarts a worker that dies (it replays its WAL;
// the process stays up, the death is logged and counted).

import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { Body, decodeFrame, type RejectReason } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';
import { hashName, hashNameOften } from '../schema/names.js';
import { originRack, sectionAt, type RackSecondMessage } from '../schema/section.js';
import { BufferPool } from './buffers.js';
import { coreLimits as L } from './limits.js';
import type { ExportChunk } from './history/export.js';
import { openLayout, Placement } from './layout.js';
import { RecordBatcher, RecordFramer, restoreBatchBytes, SnapshotError, type RestoreSummary } from './snapshot.js';
import { worseIngest, type Reply, type SectionRef, type ToMain, type ToWorker, type WorkerConfig, type WorkerMetric, type WorkerStats } from './protocol.js';
import type { WindowResult } from './query/eval.js';
import type { StoredOptions, StoredQuery } from './query/stored.js';
import type { StoreIngestResult, StoreOptions, StreamPosition } from './store.js';

export interface PoolOptions {
  dataDir: string;
  /** Worker threads wanted (at most one per store runs). */
  workers: number;
  /** S for a new data directory (ignored, but checked, for an existing one). */
  shards?: number;
  store: Omit<StoreOptions, 'dir' | 'shards' | 'shardCount'>;
  stored: StoredOptions;
  retentionSweepMs: number;
  registrySaveMs: number;
  /** A request a worker has not answered in this time is answered 503 (the rack retries). */
  requestTimeoutMs: number;
  /** Ingest requests waiting for one worker; beyond it a request is answered 503 (counted) before its sections are copied. */
  ingestWaitingMax: number;
  /** Ad-hoc queries and export chunks waiting for one worker; beyond it 503 worker_busy (counted). */
  queriesWaitingMax?: number;
  /** A worker up this long since it was ready starts its deaths in a row again (default 60 s). */
  upResetMs?: number;
  /** A worker silent this long (no report, no answer) or not up this long is unhealthy (default 30 s; see health()). */
  silentMs?: number;
}

export type IngestResult =
  /** logged: a cluster node published it to the shards' streams; their owners apply it (and count its points) in order. */
  | { status: 204; points: number; duplicates: number; msg: RackSecondMessage; logged?: boolean }
  /** pointsStored: points the other workers stored before this answer (their sections are now duplicates of a retry). */
  | { status: 400 | 409 | 503; error: string; reason: string; shards?: number; pointsStored?: number }
  | { status: 403; reason: 'rack_not_allowed'; rack: string; error: string };

/**
 * A request sent to a worker. `answered` runs once when the worker answers it or dies, even
 * after its asker was answered 503 for a timeout: the message still waits in the worker's
 * queue until then, and what bounds that queue (ingestWaiting, queriesWaiting) counts it.
 */
type Pending = { resolve: (r: Reply) => void; timer: NodeJS.Timeout | null; answered?: (r: Reply | null) => void };

interface Slot {
  index: number;
  worker: Worker | null;
  ready: Promise<void> | null;
  /** Its thread said 'ready' (its WAL is replayed); before, requests other than 'stop' are answered 503 at once. */
  isReady: boolean;
  pending: Map<number, Pending>;
  stats: WorkerStats | null;
  /** Counters of this slot's earlier threads (a restarted worker counts from 0): added to its own, so sums never go back. */
  carried: { counters: Record<string, number>; rejected: Record<string, number> };
  deaths: number;
  /** performance.now() when its thread last started, and when it was last ready. */
  startedAt: number;
  readyAt: number;
  /** Ingest requests sent and not answered by the worker yet (timed out or not). */
  ingestWaiting: number;
  /** Ad-hoc queries and export chunks sent and not answered by the worker yet (timed out or not). */
  queriesWaiting: number;
  /** performance.now() of its thread's last message (it reports every second), and when it last stopped being up (it was up before). */
  heardAt: number;
  downAt: number;
  /** Found silent past silentMs by the watchdog (logged and counted once until it speaks again). */
  silent: boolean;
}

export class ShardPool {
  readonly placement: Placement;
  private readonly slots: Slot[] = [];
  private nextId = 1;
  /** Worker buffers of the ingest path, handed back in the workers' answers (core/buffers.ts). */
  readonly buffers = new BufferPool(ingestBuffersBytesMax);
  private defs: StoredQuery[] = [];
  private stopping = false;
  /** Tests (stallWorker): the next worker thread started is busy this long before its replay. */
  private stallNextStartMs = 0;
  readonly counters = { ingest_busy: 0, ingest_unavailable: 0, queries_busy: 0, requests_ingested: 0, requests_duplicate: 0, worker_deaths: 0, worker_start_failures: 0, worker_stalls: 0, worker_restarts: 0, requests_timed_out: 0, shards_mismatch: 0, wal_replayed: 0 };
  readonly rejected: Partial<Record<RejectReason | 'not_a_second', number>> = {};
  /** Each new or revised stored-query window. */
  onWindow: ((qid: string, w: WindowResult, query: string) => void) | null = null;

  private constructor(private readonly opts: PoolOptions) {
    const layout = openLayout(opts.dataDir, { shards: opts.shards, stores: Math.max(1, opts.workers) });
    this.placement = new Placement(layout, opts.workers);
    if (this.placement.workers < opts.workers) console.error(`apm core: ${opts.dataDir} was created with ${layout.stores} stores; running ${this.placement.workers} workers (one per store) of the ${opts.workers} asked for`);
  }

  /** Opens the data directory and starts the workers (each replays its WAL first). */
  static async open(opts: PoolOptions): Promise<ShardPool> {
    const pool = new ShardPool(opts);
    for (let w = 0; w < pool.placement.workers; w++) pool.slots.push({ index: w, worker: null, ready: null, isReady: false, pending: new Map(), stats: null, carried: { counters: {}, rejected: {} }, deaths: 0, startedAt: 0, readyAt: 0, ingestWaiting: 0, queriesWaiting: 0, heardAt: 0, downAt: performance.now(), silent: false });
    await Promise.all(pool.slots.map((s) => pool.start(s)));
    pool.watchdog = setInterval(() => pool.watch(), 1000).unref();
    return pool;
  }

  /** Seconds of history kept (an import refuses older points). */
  get retentionSeconds(): number {
    return this.opts.store.retentionSeconds;
  }

  get shards(): number {
    return this.placement.layout.shards;
  }

  get workers(): number {
    return this.slots.length;
  }

  private config(w: number): WorkerConfig {
    const stores = this.placement.storesOf(w);
    const shardsOfStore: Record<number, number[]> = {};
    for (const e of stores) shardsOfStore[e] = this.placement.shardsOf(e);
    return {
      worker: w,
      dataDir: this.opts.dataDir,
      layout: this.placement.layout,
      stores,
      shardsOfStore,
      store: { ...this.opts.store, shardCount: this.shards, ...perStore(this.opts.store, this.placement.layout.stores) },
      stored: this.opts.stored,
      retentionSweepMs: this.opts.retentionSweepMs,
      registrySaveMs: this.opts.registrySaveMs,
      nice: L.workerNice,
      ...(this.stallNextStartMs === 0 ? {} : { stallStartMs: this.stallNextStartMs }),
    };
  }

  private start(slot: Slot): Promise<void> {
    const worker = new Worker(workerScript(), { workerData: this.config(slot.index) });
    this.stallNextStartMs = 0;
    slot.worker = worker;
    slot.isReady = false;
    slot.startedAt = performance.now();
    slot.ready = new Promise<void>((resolve, reject) => {
      const onMessage = (m: ToMain) => {
        if (m.t === 'ready') {
          this.counters.wal_replayed += m.replayed;
          slot.isReady = true;
          slot.readyAt = performance.now();
          resolve();
        }
        this.onMessage(slot, m);
      };
      worker.on('message', onMessage);
      worker.once('error', (err) => {
        console.error(`apm core: worker ${slot.index} failed: ${err.stack ?? err.message}`);
        reject(err);
      });
      worker.once('exit', (code) => {
        reject(new Error(`worker ${slot.index} exited with ${code} while starting`));
        this.died(slot, worker, code);
      });
    });
    return slot.ready;
  }

  private onMessage(slot: Slot, m: ToMain): void {
    slot.heardAt = performance.now();
    if (slot.silent) {
      slot.silent = false;
      console.error(`apm core: worker ${slot.index} answers again`);
    }
    switch (m.t) {
      case 'reply': {
        const p = slot.pending.get(m.id);
        if (p === undefined) return;
        slot.pending.delete(m.id);
        if (p.timer !== null) clearTimeout(p.timer);
        p.resolve(m);
        p.answered?.(m);
        return;
      }
      case 'window':
        this.onWindow?.(m.qid, m.w, m.query);
        return;
      case 'stats':
        slot.stats = m.stats;
        return;
      case 'log':
        console.error(`apm core: worker ${slot.index}: ${m.message}`);
        return;
      case 'ready':
        return;
    }
  }

  /** A worker that dies is logged, counted and started again from its WAL; its requests get 503. */
  private died(slot: Slot, worker: Worker, code: number): void {
    if (slot.worker !== worker) return;
    const wasReady = slot.isReady;
    slot.worker = null;
    slot.isReady = false;
    // Down since it was last up: a crash loop's deaths do not start the count again.
    if (wasReady) slot.downAt = performance.now();
    slot.silent = false;
    for (const [id, p] of slot.pending) {
      if (p.timer !== null) clearTimeout(p.timer);
      p.resolve({ t: 'reply', id, error: `worker ${slot.index} stopped (exit ${code}) before answering; retry` });
      p.answered?.(null);
    }
    slot.pending.clear();
    // Its counters go on in the next thread's; its gauges (memory, WAL, lag) end with it.
    if (slot.stats !== null) {
      for (const [k, v] of Object.entries(slot.stats.counters)) if (!gaugeCounters.has(k)) slot.carried.counters[k] = (slot.carried.counters[k] ?? 0) + v;
      for (const [k, v] of Object.entries(slot.stats.rejected)) slot.carried.rejected[k] = (slot.carried.rejected[k] ?? 0) + v;
      slot.stats = null;
    }
    if (this.stopping) return;
    this.counters.worker_deaths++;
    // Died before it was ready (its stores did not open, or its replay threw): a restart may meet the same.
    if (!wasReady) this.counters.worker_start_failures++;
    // Deaths in a row grow the back-off; a worker that stayed up a minute starts the count again.
    // (Up a minute since it was ready: a long replay before a death is not time up.)
    if (wasReady && performance.now() - slot.readyAt > (this.opts.upResetMs ?? 60_000)) slot.deaths = 0;
    slot.deaths++;
    const delayMs = Math.min(30_000, 100 * 2 ** Math.min(8, slot.deaths - 1));
    console.error(`apm core: worker ${slot.index} died (exit ${code})${wasReady ? '' : ' while starting (opening its stores or replaying its WAL)'}; restarting it from its WAL in ${delayMs} ms`);
    setTimeout(() => {
      if (this.stopping) return;
      this.counters.worker_restarts++;
      this.start(slot)
        .then(() => this.resync(slot, slot.worker, 0))
        .catch((err: unknown) => console.error(`apm core: worker ${slot.index} did not restart: ${(err as Error).message}`));
    }, delayMs).unref();
  }

  private watchdog: NodeJS.Timeout | null = null;

  /**
   * The watchdog, every second: a worker that is up and has sent nothing — not even its report of
   * every second — for silentMs is stuck in a step that does not end (a bug: every step of a
   * worker is bounded far below that). It is logged and counted once, and health() says so, so
   * that a supervisor's liveness probe (GET /healthz) restarts the process and the cluster's
   * proxies go to the shard's other owner. It is not terminated from here: a thread stopped from
   * outside while it holds an LMDB transaction can take the whole process down natively (see
   * failWorker), and a stuck step may well hold one.
   */
  private watch(): void {
    const now = performance.now();
    const silentMs = this.opts.silentMs ?? 30_000;
    for (const slot of this.slots) {
      if (slot.worker === null || !slot.isReady || slot.silent || now - slot.heardAt <= silentMs) continue;
      slot.silent = true;
      this.counters.worker_stalls++;
      console.error(`apm core: worker ${slot.index} has said nothing for ${Math.round((now - slot.heardAt) / 1000)} s (stuck in a step that does not end); /healthz answers 503 until it does`);
    }
  }

  /**
   * Problems a liveness probe should see (empty: healthy): a worker silent for silentMs (see
   * watch), or not up for that long since it was last up while it keeps dying (a crash loop), or
   * for ten times that in any case (a replay that does not end). A worker that died once and
   * replays a long WAL is given that time: a probe failing then would restart the process into
   * the same replay.
   */
  health(): string[] {
    const now = performance.now();
    const silentMs = this.opts.silentMs ?? 30_000;
    const problems: string[] = [];
    for (const slot of this.slots) {
      if (slot.worker !== null && slot.isReady) {
        if (now - slot.heardAt > silentMs) problems.push(`worker ${slot.index} has said nothing for ${Math.round((now - slot.heardAt) / 1000)} s`);
      } else if (now - slot.downAt > silentMs && (slot.deaths >= 2 || now - slot.downAt > 10 * silentMs)) {
        problems.push(`worker ${slot.index} has not been up for ${Math.round((now - slot.downAt) / 1000)} s (${slot.worker === null ? 'restarting' : 'replaying its WAL'}; ${slot.deaths} deaths in a row)`);
      }
    }
    return problems;
  }

  /**
   * Hands a restarted worker its stored queries, again after a back-off while that fails (before:
   * one failure left them unevaluated until the next change of the definitions). Ends when the
   * thread it was for is gone (its successor is synced by its own restart).
   */
  private resync(slot: Slot, worker: Worker | null, attempt: number): Promise<void> {
    return this.syncSlot(slot).catch((err: unknown) => {
      if (this.stopping || slot.worker !== worker || worker === null) return;
      const waitMs = Math.min(30_000, 1000 * 2 ** Math.min(5, attempt));
      console.error(`apm core: stored queries not handed to worker ${slot.index} (${(err as Error).message}); trying again in ${waitMs} ms`);
      setTimeout(() => void this.resync(slot, worker, attempt + 1), waitMs).unref();
    });
  }

  /**
   * Sends `msg` to the worker; answered 503-like (an error reply) when it does not answer within
   * `timeoutMs`. `answered` runs when the worker does answer or dies, timed out or not.
   */
  private request(slot: Slot, msg: ToWorker, transfer: ArrayBuffer[] = [], timeoutMs = this.opts.requestTimeoutMs, answered?: (r: Reply | null) => void): Promise<Reply> {
    const worker = slot.worker;
    // A thread replaying its WAL takes no requests yet: they would wait unseen in its queue for
    // as long as the replay lasts. 'stop' waits (the thread closes its stores once it is up).
    if (worker === null || (!slot.isReady && msg.t !== 'stop')) {
      answered?.(null);
      return Promise.resolve({ t: 'reply', id: msg.id, error: `worker ${slot.index} ${worker === null ? 'is restarting' : 'is starting (replaying its WAL)'}; retry` });
    }
    return new Promise<Reply>((resolve) => {
      const p: Pending = { resolve, timer: null, answered };
      p.timer = setTimeout(() => {
        this.counters.requests_timed_out++;
        resolve({ t: 'reply', id: msg.id, error: `worker ${slot.index} did not answer within ${timeoutMs} ms; retry` });
        // Still queued in the worker: kept until it answers when something counts it, so that
        // the count bounds the worker's queue; forgotten otherwise.
        if (answered === undefined) slot.pending.delete(msg.id);
        else (p.timer = null), (p.resolve = () => {});
      }, timeoutMs);
      slot.pending.set(msg.id, p);
      try {
        worker.postMessage(msg, transfer);
      } catch (err) {
        // Not sent (a message that cannot be cloned): answered now, and nothing counts it.
        slot.pending.delete(msg.id);
        if (p.timer !== null) clearTimeout(p.timer);
        resolve({ t: 'reply', id: msg.id, error: `worker ${slot.index}: the request could not be sent: ${(err as Error).message}` });
        answered?.(null);
      }
    });
  }

  /**
   * Validates a RackSecond and makes every section durable in its shard's worker; 204 only then.
   * A second of a rack `mayRack` refuses is answered 403 before anything is stored (issue 16.3).
   */
  async ingest(body: Uint8Array, mayRack: (rack: string) => boolean = () => true, stream?: StreamPosition): Promise<IngestResult> {
    const r = decodeFrame(body, batchBytesMax, { expect: Body.RackSecond });
    if (!r.ok || r.msg.type !== 'rackSecond') {
      const reason = r.ok ? 'not_a_second' : r.reason;
      this.rejected[reason] = (this.rejected[reason] ?? 0) + 1;
      return { status: 400, reason, error: r.ok ? `expected a RackSecond (wire v2), got a ${r.msg.type}` : `request refused (${r.reason}): ${r.detail}` };
    }
    const msg = r.msg;
    if (stream !== undefined && msg.sectionShards.length !== 1) return { status: 400, reason: 'not_one_section', error: `a stream message holds one section; this one holds ${msg.sectionShards.length}` };
    if (!mayRack(msg.rack)) return { status: 403, reason: 'rack_not_allowed', rack: msg.rack, error: `not allowed to send for rack ${msg.rack}` };
    if (msg.shards !== this.shards) {
      this.counters.shards_mismatch++;
      return { status: 409, reason: 'shards_mismatch', shards: this.shards, error: `the rack cut its sections for ${msg.shards} shards; this core has ${this.shards}: ask GET /api/v1/placement and cut again` };
    }
    // Per worker: its sections copied, 8-byte aligned, into one buffer that is transferred.
    const perWorker = new Map<number, { refs: SectionRef[]; size: number }>();
    for (let i = 0; i < msg.sectionShards.length; i++) {
      const shard = msg.sectionShards[i]!;
      const w = this.placement.workerOfShard(shard);
      let g = perWorker.get(w);
      if (g === undefined) perWorker.set(w, (g = { refs: [], size: 0 }));
      const len = sectionAt(msg, i).length;
      g.refs.push({ shard, start: g.size, end: g.size + len });
      g.size += (len + 7) & ~7;
    }
    // Each waiting request holds a copy of its sections: a bounded number per worker. A worker
    // that is not up is refused before anything is copied or stored by the others (whose
    // sections would be stored again, as duplicates, by every retry during a long replay).
    for (const w of perWorker.keys()) {
      const slot = this.slots[w]!;
      if (slot.worker === null || !slot.isReady) {
        this.counters.ingest_unavailable++;
        return { status: 503, reason: 'worker_unavailable', error: `worker ${w} is ${slot.worker === null ? 'restarting' : 'starting (replaying its WAL)'}; retry` };
      }
      if (slot.ingestWaiting >= this.opts.ingestWaitingMax) {
        this.counters.ingest_busy++;
        return { status: 503, reason: 'worker_busy', error: `worker ${w} has ${this.opts.ingestWaitingMax} ingest requests waiting; retry later` };
      }
    }
    const replies = [...perWorker].map(async ([w, g]) => {
      const slot = this.slots[w]!;
      const buf = this.buffers.take(g.size);
      const bytes = new Uint8Array(buf);
      let k = 0;
      for (let i = 0; i < msg.sectionShards.length; i++) {
        if (this.placement.workerOfShard(msg.sectionShards[i]!) !== w) continue;
        bytes.set(sectionAt(msg, i), g.refs[k++]!.start);
      }
      const h = { rack: msg.rack, session: msg.session, seq: msg.seq, second: msg.second, late: msg.late, origin: msg.origin ?? originRack, ...(stream === undefined ? {} : { stream }) };
      slot.ingestWaiting++;
      return this.request(slot, { t: 'ingest', id: this.nextId++, h, sections: g.refs, buf }, [buf], undefined, (r) => {
        slot.ingestWaiting--;
        if (r?.buf !== undefined) this.buffers.give(r.buf);
      });
    });
    let points = 0;
    let duplicates = 0;
    let worst: IngestResult | null = null;
    for (const reply of await Promise.all(replies)) {
      const res: StoreIngestResult | undefined = reply.result;
      if (res === undefined) {
        const unavailable: IngestResult = { status: 503, reason: 'worker_unavailable', error: reply.error ?? 'no answer' };
        worst = worst === null ? unavailable : worseIngest(worst, unavailable);
        continue;
      }
      if (res.status === 204) {
        points += res.points;
        duplicates += res.duplicates;
      } else worst = worst === null ? res : worseIngest(worst, res);
    }
    if (worst !== null) {
      if (worst.reason === 'worker_unavailable') this.counters.ingest_unavailable++;
      return { ...worst, pointsStored: points };
    }
    this.counters.requests_ingested++;
    if (duplicates > 0 && points === 0) this.counters.requests_duplicate++;
    return { status: 204, points, duplicates, msg };
  }

  private slotOfMetric(name: string): Slot {
    const h = new Uint32Array(2);
    hashNameOften(name, h, 0);
    return this.slots[this.placement.workerOfShard(this.placement.shardOfHash(h[0]!))]!;
  }

  storeOfMetric(name: string): number {
    const h = new Uint32Array(2);
    hashName(name, h, 0);
    return this.placement.storeOfShard(this.placement.shardOfHash(h[0]!));
  }

  /**
   * Evaluates an ad-hoc query in the worker owning its metric (throws when it fails). Windows it
   * answered before and whose rows have not changed come from its cache (core/query/windowcache.ts)
   * unless `cache` is false.
   */
  async query(text: string, metric: string, fromSec: number, toSec: number, cache = true): Promise<WindowResult[]> {
    const r = await this.queryRequest(this.slotOfMetric(metric), { t: 'query', id: this.nextId++, query: text, fromSec, toSec, cache });
    if (r.error !== undefined) throw new WorkerError(r.error);
    return r.windows ?? [];
  }

  /**
   * A query, export or stored-results request, at most queriesWaitingMax waiting per worker: the worker takes
   * messages in order, so queries queued without bound delayed its ingest by seconds each. The
   * worker skips a query whose deadline (this side's timeout) has passed.
   */
  private async queryRequest(slot: Slot, msg: Extract<ToWorker, { t: 'query' | 'export' | 'results' }>): Promise<Reply> {
    const max = this.opts.queriesWaitingMax ?? Infinity;
    if (slot.queriesWaiting >= max) {
      this.counters.queries_busy++;
      return { t: 'reply', id: msg.id, error: `worker ${slot.index} has ${max} queries waiting; retry later` };
    }
    slot.queriesWaiting++;
    return this.request(slot, msg.t === 'query' ? { ...msg, deadlineMs: Date.now() + this.opts.requestTimeoutMs } : msg, [], undefined, () => void slot.queriesWaiting--);
  }

  /**
   * The same answer as `query`, as the JSON text of its windows, serialized by the worker: the
   * HTTP thread neither copies the windows out of a message nor serializes them (an answer of
   * 120 windows: 0.15–0.3 ms less per answer of the 40-server cells over HTTP, issue 14, tenth session).
   */
  async queryJson(text: string, metric: string, fromSec: number, toSec: number, cache = true): Promise<string> {
    const r = await this.queryRequest(this.slotOfMetric(metric), { t: 'query', id: this.nextId++, query: text, fromSec, toSec, json: true, cache });
    if (r.error !== undefined) throw new WorkerError(r.error);
    if (r.windowsJson === undefined) throw new WorkerError('no windows in the answer');
    return r.windowsJson;
  }

  /** One bounded chunk of a metric's stored points as JSON lines (core/history/export.ts). */
  async exportChunk(metric: string, fromSec: number, toSec: number, entriesMax: number, rackFrom = 0): Promise<ExportChunk> {
    const r = await this.queryRequest(this.slotOfMetric(metric), { t: 'export', id: this.nextId++, metric, fromSec, toSec, entriesMax, rackFrom });
    if (r.error !== undefined || r.chunk === undefined) throw new WorkerError(r.error ?? 'no export chunk in the answer');
    return r.chunk;
  }

  /** Stored results of a query from its worker's store (JSON texts, ascending). */
  async results(def: { id: string; metric: string }, range: { fromMs: number; toMs: number; limit: number; newest?: boolean }): Promise<string[]> {
    // Counted as a query (results under HTTP load queued without bound otherwise).
    const r = await this.queryRequest(this.slotOfMetric(def.metric), { t: 'results', id: this.nextId++, metric: def.metric, qid: def.id, fromMs: range.fromMs, toMs: range.toMs, limit: range.limit, newest: range.newest ?? false });
    if (r.error !== undefined) throw new WorkerError(r.error);
    return r.json ?? [];
  }

  /** Keeps windows another cluster node evaluated in the store of their metric (StoredQueries.adopt); returns those kept. */
  async adoptWindows(metric: string, windows: { qid: string; query: string; json: string }[]): Promise<number> {
    const r = await this.request(this.slotOfMetric(metric), { t: 'adoptWindows', id: this.nextId++, metric, windows });
    if (r.error !== undefined) throw new WorkerError(r.error);
    return r.adopted ?? 0;
  }

  /**
   * Hands every stored-query definition to the worker owning its metric. `elsewhere`: queries
   * another cluster node evaluates now; not evaluated here, their results kept (stored.ts sync).
   */
  async sync(defs: StoredQuery[], metricOf: (d: StoredQuery) => string, elsewhere: StoredQuery[] = []): Promise<void> {
    this.defs = defs;
    this.elsewhere = elsewhere;
    this.metricOf = metricOf;
    await Promise.all(this.slots.map((s) => this.syncSlot(s)));
  }

  private elsewhere: StoredQuery[] = [];

  private metricOf: (d: StoredQuery) => string = () => '';

  private async syncSlot(slot: Slot): Promise<void> {
    const defsByStore: Record<number, StoredQuery[]> = {};
    for (const e of this.placement.storesOf(slot.index)) defsByStore[e] = [];
    for (const d of this.defs) defsByStore[this.storeOfMetric(this.metricOf(d))]?.push(d);
    const elsewhereByStore: Record<number, StoredQuery[]> = {};
    for (const e of this.placement.storesOf(slot.index)) elsewhereByStore[e] = [];
    for (const d of this.elsewhere) elsewhereByStore[this.storeOfMetric(this.metricOf(d))]?.push(d);
    const r = await this.request(slot, { t: 'sync', id: this.nextId++, defsByStore, elsewhereByStore });
    if (r.error !== undefined) throw new WorkerError(r.error);
  }

  /**
   * Applies one message of shard `shard`'s stream (a cluster node's consumer): its points, or
   * 'refused' when it can never be stored (counted by reason; the stream moves past it), or why
   * it cannot be applied now (the consumer starts again from the applied sequence).
   */
  async ingestStream(body: Uint8Array, shard: number, stream: StreamPosition): Promise<{ points: number; msg: RackSecondMessage } | 'refused' | string> {
    const r = decodeFrame(body, batchBytesMax, { expect: Body.RackSecond });
    let bad: string | null = null;
    if (!r.ok) bad = r.reason;
    else if (r.msg.type !== 'rackSecond') bad = 'not_a_second';
    else if (r.msg.shards !== this.shards) bad = 'shards_mismatch';
    else if (r.msg.sectionShards.length !== 1 || r.msg.sectionShards[0] !== shard) bad = 'wrong_section';
    if (bad !== null) {
      this.streamRefused[bad] = (this.streamRefused[bad] ?? 0) + 1;
      return this.skipStream(shard, stream.seq, stream.after);
    }
    const res = await this.ingest(body, () => true, stream);
    if (res.status === 204) return { points: res.points, msg: res.msg };
    if (res.status === 400) {
      this.streamRefused[res.reason] = (this.streamRefused[res.reason] ?? 0) + 1;
      return 'refused';
    }
    // A new rack beyond racksMax: rack ids are never given back, so no retry will take it.
    // Refused for good (this rack's section of this second, counted): retried, it held the
    // shard's stream on every owner for good, until the backlog aged out of the stream.
    if (res.status === 503 && res.reason === 'racks_full') {
      this.streamRefused[res.reason] = (this.streamRefused[res.reason] ?? 0) + 1;
      return this.skipStream(shard, stream.seq, stream.after);
    }
    return `${res.status} ${res.reason}: ${res.error}`;
  }

  /** Stream messages refused for good, by reason (they never decoded, never belonged to their shard, or came from a rack past racksMax). */
  readonly streamRefused: Record<string, number> = {};

  /** Moves a shard's stream past a message that cannot be stored (see Store.skipStream). */
  async skipStream(shard: number, seq: number, after: number): Promise<'refused' | string> {
    const slot = this.slots[this.placement.workerOfShard(shard)]!;
    const r = await this.request(slot, { t: 'streamSkip', id: this.nextId++, shard, seq, after });
    return r.skip ?? r.error ?? 'no answer';
  }

  /** The creation time of shard `shard`'s stream its store last saw, and with `created`, that one noted (see Store.streamCreated). */
  async streamCreated(shard: number, created?: string): Promise<string | null> {
    const slot = this.slots[this.placement.workerOfShard(shard)]!;
    const r = await this.request(slot, { t: 'streamCreated', id: this.nextId++, shard, ...(created === undefined ? {} : { created }) });
    if (r.error !== undefined || r.created === undefined) throw new WorkerError(r.error ?? 'no creation time in the answer');
    return r.created;
  }

  /** Shard `shard`'s mark: its newest applied stream message whose time was known (see Store.streamMark). */
  async streamMark(shard: number): Promise<{ seq: number; ms: number } | null> {
    const slot = this.slots[this.placement.workerOfShard(shard)]!;
    const r = await this.request(slot, { t: 'streamMark', id: this.nextId++, shard });
    if (r.error !== undefined || r.mark === undefined) throw new WorkerError(r.error ?? 'no mark in the answer');
    return r.mark;
  }

  /** Lowers a shard's applied stream sequence (its stream was made again or cut back; see Store.rebaseStream). */
  async rebaseStream(shard: number, seq: number): Promise<void> {
    const slot = this.slots[this.placement.workerOfShard(shard)]!;
    const r = await this.request(slot, { t: 'streamRebase', id: this.nextId++, shard, seq });
    if (r.error !== undefined) throw new WorkerError(r.error);
  }

  /** Empties a shard left by a copy that did not complete and sets its applied stream sequence to 0 (see Store.restartFromStream). */
  async restartFromStream(shard: number): Promise<void> {
    const slot = this.slots[this.placement.workerOfShard(shard)]!;
    const r = await this.request(slot, { t: 'streamRestart', id: this.nextId++, shard });
    if (r.error !== undefined) throw new WorkerError(r.error);
  }

  /** Per shard, the newest stream sequence applied (cluster nodes; 0: none). */
  async streamSeqs(): Promise<Record<number, number>> {
    const replies = await Promise.all(this.slots.map((s) => this.request(s, { t: 'streamSeqs', id: this.nextId++ })));
    const out: Record<number, number> = {};
    for (const r of replies) {
      if (r.error !== undefined || r.seqs === undefined) throw new WorkerError(r.error ?? 'no stream sequences in the answer');
      Object.assign(out, r.seqs);
    }
    return out;
  }

  /**
   * A consistent snapshot of one shard as a byte stream in chunks (core/snapshot.ts), read from
   * its worker one chunk per request; finish the iteration or break out of it (the cursor closes).
   */
  async *snapshotShard(shard: number): AsyncGenerator<Uint8Array, void, void> {
    this.checkShard(shard);
    const slot = this.slots[this.placement.workerOfShard(shard)]!;
    let r = await this.request(slot, { t: 'snapshotOpen', id: this.nextId++, shard });
    let cursor = -1;
    try {
      for (;;) {
        if (r.error !== undefined || r.snapshot === undefined) throw new SnapshotError(`snapshot of shard ${shard}: ${r.error ?? 'no chunk in the answer'}`);
        cursor = r.snapshot.cursor;
        if (r.snapshot.done) {
          cursor = -1;
          return;
        }
        yield new Uint8Array(r.snapshot.bytes);
        r = await this.request(slot, { t: 'snapshotNext', id: this.nextId++, cursor });
      }
    } finally {
      // Left early (the reader went away): the worker's cursor holds read transactions until closed.
      if (cursor >= 0) void this.request(slot, { t: 'snapshotClose', id: this.nextId++, cursor });
    }
  }

  /**
   * Replaces one shard's data by a snapshot stream's (core/snapshot.ts): the worker empties the
   * shard (marked restoring), takes the stream's records in batches and records the applied sequence
   * last. A truncated or corrupt stream throws SnapshotError and leaves the shard empty and marked restoring.
   */
  async restoreShard(shard: number, chunks: AsyncIterable<Uint8Array>): Promise<RestoreSummary> {
    this.checkShard(shard);
    const slot = this.slots[this.placement.workerOfShard(shard)]!;
    const ask = async (msg: ToWorker, transfer: ArrayBuffer[] = [], timeoutMs?: number) => {
      const r = await this.request(slot, msg, transfer, timeoutMs);
      if (r.error !== undefined) throw new SnapshotError(r.error);
      return r;
    };
    await ask({ t: 'restoreBegin', id: this.nextId++, shard }, [], restoreWipeTimeoutMs);
    const framer = new RecordFramer();
    try {
      const batcher = new RecordBatcher(restoreBatchBytes);
      const send = (b: Buffer) => ask({ t: 'restoreBatch', id: this.nextId++, shard, buf: b.buffer as ArrayBuffer }, [b.buffer as ArrayBuffer]);
      for await (const chunk of chunks) for (const rec of framer.push(chunk)) for (const batch of batcher.add(rec)) await send(batch);
      framer.end();
      const last = batcher.flush();
      if (last !== null) await send(last);
      const r = await ask({ t: 'restoreEnd', id: this.nextId++, shard });
      if (r.restored === undefined) throw new SnapshotError('no restore summary in the answer');
      return { ...r.restored, bytes: framer.bytes };
    } catch (err) {
      const abort = await this.request(slot, { t: 'restoreAbort', id: this.nextId++, shard }, [], restoreWipeTimeoutMs);
      const left = abort.error === undefined ? 'it is left empty, marked restoring (copy it again)' : `emptying it failed too (${abort.error}); it is marked restoring (copy it again)`;
      throw new SnapshotError(`restoring shard ${shard} failed after ${framer.bytes} B of its snapshot: ${(err as Error).message}; ${left}: copy it again`, { cause: err });
    }
  }

  private checkShard(shard: number): void {
    if (!Number.isInteger(shard) || shard < 0 || shard >= this.shards) throw new SnapshotError(`shard ${shard} is not in 0..${this.shards - 1}`);
  }

  /**
   * Every metric of every shard. Callers while one list is being gathered share it (each a copy
   * of the array): list routes (Prometheus labels, series, metadata; a cluster's metric list) queued
   * a whole list per call in every worker, without bound, ahead of its ingest.
   */
  async metrics(): Promise<WorkerMetric[]> {
    this.metricsGathering ??= this.gatherMetrics().finally(() => (this.metricsGathering = null));
    return (await this.metricsGathering).slice();
  }

  private metricsGathering: Promise<WorkerMetric[]> | null = null;

  private async gatherMetrics(): Promise<WorkerMetric[]> {
    const replies = await Promise.all(this.slots.map((s) => this.request(s, { t: 'metrics', id: this.nextId++ })));
    // Not a partial list that looks whole (a worker replaying its WAL, or restarting): the asker answers 503.
    const failed = replies.find((r) => r.error !== undefined);
    if (failed !== undefined) throw new WorkerError(failed.error!);
    return replies.flatMap((r) => r.metrics ?? []);
  }

  /** Writes every due row now (tests and benches; the workers do it on their own timers). */
  async flush(nowMs: number): Promise<void> {
    await Promise.all(this.slots.map((s) => this.request(s, { t: 'flush', id: this.nextId++, nowMs })));
  }

  /** Evaluates due stored-query windows as of `nowMs` now (tests; the workers tick on their own). */
  async tick(nowMs: number): Promise<void> {
    await Promise.all(this.slots.map((s) => this.request(s, { t: 'tick', id: this.nextId++, nowMs })));
  }

  /** Asks every worker for its figures now (a busy worker's last report stands), then sums them. */
  async freshStats(): Promise<WorkerStats & { workersUp: number }> {
    // Scrapes while one is asking share it (each queued a stats request in every worker, without bound).
    this.statsAsking ??= Promise.all(
      this.slots.map(async (s) => {
        const r = await this.request(s, { t: 'stats', id: this.nextId++ }, [], statsWaitMs);
        if (r.stats !== undefined) s.stats = r.stats;
      }),
    ).finally(() => (this.statsAsking = null));
    await this.statsAsking;
    return this.stats();
  }

  private statsAsking: Promise<unknown> | null = null;

  /** The workers' latest reports, summed (maxima for lags and pauses). */
  stats(): WorkerStats & { workersUp: number } {
    const total: WorkerStats & { workersUp: number } = { counters: {}, rejected: {}, heldBytes: 0, walBytes: 0, walFileBytes: 0, diskBytes: 0, usedBytes: 0, lagSeconds: 0, sliceMsMax: 0, servers: 0, metrics: 0, storedQueries: 0, namesVersion: 0, workersUp: 0 };
    for (const s of this.slots) {
      if (s.worker !== null && s.isReady) total.workersUp++;
      for (const [k, v] of Object.entries(s.carried.counters)) total.counters[k] = (total.counters[k] ?? 0) + v;
      for (const [k, v] of Object.entries(s.carried.rejected)) total.rejected[k] = (total.rejected[k] ?? 0) + v;
      const st = s.stats;
      if (st === null) continue;
      for (const [k, v] of Object.entries(st.counters)) total.counters[k] = (total.counters[k] ?? 0) + v;
      for (const [k, v] of Object.entries(st.rejected)) total.rejected[k] = (total.rejected[k] ?? 0) + v;
      total.heldBytes += st.heldBytes;
      total.walBytes += st.walBytes;
      total.walFileBytes += st.walFileBytes;
      total.diskBytes += st.diskBytes;
      total.usedBytes += st.usedBytes;
      total.lagSeconds = Math.max(total.lagSeconds, st.lagSeconds);
      total.sliceMsMax = Math.max(total.sliceMsMax, st.sliceMsMax);
      total.servers = Math.max(total.servers, st.servers);
      total.metrics += st.metrics;
      total.storedQueries += st.storedQueries;
      total.namesVersion += st.namesVersion;
    }
    return total;
  }

  /**
   * Every metric name, sorted: built once per change of the names (namesKey), not per request —
   * sorting 2,000,000 names held the HTTP thread ~2.7 s for each Grafana autocomplete and each
   * metric picker. A name registered in the last second may be missing. The array is shared: do
   * not change it.
   */
  async sortedNames(from?: { metrics: readonly WorkerMetric[]; key: string }): Promise<readonly string[]> {
    // Keyed by what the names were as of before the gather (a version reported while the workers
    // answered must not label a list that may lack its names).
    const key = from?.key ?? this.namesKey();
    if (this.names?.key === key) return this.names.list;
    this.namesBuilding ??= (async () => {
      // From a list the caller has already (one gather, not two), with the key it read before it.
      const list = [...new Set((from?.metrics ?? (await this.metrics())).flatMap((m) => (m.name === null ? [] : [m.name])))];
      list.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      return { key, list };
    })().finally(() => (this.namesBuilding = null));
    this.names = await this.namesBuilding;
    return this.names.list;
  }

  private names: { key: string; list: string[] } | null = null;
  private namesBuilding: Promise<{ key: string; list: string[] }> | null = null;

  /**
   * What the metric names depend on, as the workers last reported it (every second): each
   * thread's start and its stores' names versions. Equal keys, equal names — up to a second
   * late (a list of names keyed by it may miss a metric named in the last second).
   */
  namesKey(): string {
    return this.slots.map((s) => `${s.startedAt}:${s.stats?.namesVersion ?? 'none'}`).join(',');
  }

  /**
   * Makes one worker thread die of an uncaught error (tests: a dead worker is restarted from its
   * WAL), or with `nextIngest`, makes its next commit of ingest requests throw. Not terminate():
   * a thread stopped from outside while it commits to LMDB can crash the process (core/worker.ts,
   * the uncaughtException handler).
   */
  async failWorker(index: number, opts: { nextIngest?: boolean } = {}): Promise<void> {
    const slot = this.slots[index];
    if (slot === undefined) throw new Error(`no worker ${index}`);
    const r = await this.request(slot, { t: 'fail', id: this.nextId++, ...opts });
    if (r.error !== undefined) throw new WorkerError(r.error);
  }

  /**
   * Tests: keeps a worker thread from turning its event loop for `ms` (a long synchronous step),
   * now or, with `atNextStart`, in the next thread started before it replays its WAL.
   */
  async stallWorker(index: number, ms: number, atNextStart = false): Promise<void> {
    const slot = this.slots[index];
    if (slot === undefined) throw new Error(`no worker ${index}`);
    if (atNextStart) return void (this.stallNextStartMs = ms);
    const r = await this.request(slot, { t: 'stall', id: this.nextId++, ms });
    if (r.error !== undefined) throw new WorkerError(r.error);
  }

  /** Stops the workers after they write what they must (their WAL holds the head). */
  async close(): Promise<void> {
    this.stopping = true;
    if (this.watchdog !== null) clearInterval(this.watchdog);
    await Promise.all(this.slots.map((s) => this.request(s, { t: 'stop', id: this.nextId++ })));
    await Promise.all(this.slots.map((s) => s.worker?.terminate()));
  }
}

export class WorkerError extends Error {}

/**
 * A node's limits as each of its E stores applies them: budgets split evenly (a metric hash
 * spreads a server's metrics and the registry evenly over stores; 10% slack for the unevenness
 * of a few thousand hashes), counts of servers and racks whole (every store sees every server).
 */
function perStore(o: PoolOptions['store'], stores: number): Pick<StoreOptions, 'diskBytesMax' | 'headBytesMax' | 'metricsMax' | 'metricsPerServerMax' | 'walBacklogBytesMax'> {
  const share = (n: number) => (stores === 1 ? n : Math.ceil((n / stores) * 1.1));
  return {
    diskBytesMax: Math.floor(o.diskBytesMax / stores),
    headBytesMax: Math.floor(o.headBytesMax / stores),
    metricsMax: share(o.metricsMax),
    metricsPerServerMax: share(o.metricsPerServerMax),
    ...(o.walBacklogBytesMax === undefined ? {} : { walBacklogBytesMax: Math.floor(o.walBacklogBytesMax / stores) }),
  };
}

/** Emptying a shard before and after a restore: bounded transactions over all its rows (minutes for a large shard, not the 30 s of a request). */
const restoreWipeTimeoutMs = 10 * 60_000;
/** Ingest buffers kept for reuse (each waiting request holds one per worker; a rack second is ~1 MB at 2,000 metrics × 40 servers). */
const ingestBuffersBytesMax = 64 * 1024 * 1024;

/** A /metrics scrape waits this long for a busy worker's figures, then uses its last report. */
const statsWaitMs = 2000;

/** The compiled worker script: beside this file in dist/, or dist/core/worker.js when running from source (tests). */
function workerScript(): URL {
  const here = new URL('./worker.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  const fromSource = new URL('../dist/core/worker.js', import.meta.url);
  if (existsSync(fileURLToPath(fromSource))) return fromSource;
  throw new Error(`no compiled worker at ${fileURLToPath(here)} or ${fileURLToPath(fromSource)}; run 'npx tsc -p tsconfig.json' first`);
}

/** Entries of a worker's `counters` that are levels, not counts (not carried over a restart). */
const gaugeCounters = new Set(['row_cache_bytes', 'row_directory_bytes', 'answer_cache_windows']);
