// Stored queries in a core cluster (issue 13). The definitions live in KV apm-queries, not in a
// node's meta LMDB: any node creates, edits and deletes them there (compare-and-set where two
// nodes could race), and every node watches the bucket, so every node lists every query.
// Evaluation: each node hands its workers only the queries whose metric's shard it is the
// first ready owner of (ClusterView.readyOwners), again whenever the placement, a node's
// readiness or a definition changes, so each query is evaluated by one live node. That node
// publishes each new or revised window on core NATS (resultsSubject); every node subscribes and
// feeds its newest-window cache and live streams, so /api/v1/queries/:id/live and /api/v1/live
// answer on any node, and keeps them in its own store (StoredQueries.adopt), so that when a
// placement change makes it the evaluator it serves the whole history and goes on from there. A
// results range is proxied to the evaluating node (core/cluster/routes.ts).

import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { Kvm, type KV, type KvWatchEntry } from '@nats-io/kv';
import { headers, type Subscription } from '@nats-io/transport-node';
import { buckets, resultsSubject, retryJetStream } from '../../schema/log.js';
import type { PromText } from '../../lib/prom.js';
import type { ShardPool } from '../pool.js';
import { DefinitionConflict, QueryCatalog, type DefinitionStore } from '../query/catalog.js';
import type { WindowResult } from '../query/eval.js';
import type { StoredQuery } from '../query/stored.js';
import { shardOfMetric } from './routes.js';
import type { ClusterView } from './view.js';

export const clusterQueryLimits = {
  /** Replicas of KV apm-queries: the definitions outlive any NATS server (at most the stream replicas). */
  bucketReplicasMax: 3,
  /** A node waits this long for the bucket's current definitions at start before it refuses to start. */
  loadTimeoutMs: 15_000,
  /** Characters of a stored-query id taken from a results subject (ids are 12 hex digits). */
  idCharsMax: 64,
  /** Bytes of one definition in KV: a name (200) and a query text (bounded by the body limit). */
  definitionBytesMax: 32 * 1024,
  /**
   * Bytes KV apm-queries holds, set when a node creates it (an existing bucket keeps its
   * settings): a full bucket refuses new definitions (discard new), answered 503, rather than
   * growing without bound. A definition takes ~200 B, so this is far above any node's limit.
   */
  bucketBytesMax: 64 * 1024 * 1024,
  /**
   * Windows received from the evaluating nodes are kept in this node's store too (so that when the
   * evaluation moves here this node serves the whole history and goes on from there), handed to
   * the workers every adoptEveryMs, at most adoptWindowsMax waiting (beyond: counted, dropped —
   * a takeover then evaluates those windows again from the rows).
   */
  adoptEveryMs: 1000,
  adoptWindowsMax: 100_000,
  /** The bucket's watch, when it ends, is opened again after this long, doubling up to watchRetryMaxMs. */
  watchRetryMinMs: 500,
  watchRetryMaxMs: 30_000,
} as const;

/** Header naming the node that published a window: a node skips its own (it kept them already). */
const originHeader = 'Apm-Node';
const resultsPrefix = resultsSubject('');

export interface ClusterQueriesOptions {
  queriesMax: number;
  recentWindowsMax?: number;
  log?: (line: string) => void;
}

/** Definitions in KV apm-queries: each write compares the revision this node last saw. */
class KvDefinitions implements DefinitionStore {
  /** Revision of each key as last seen (own writes and the watch); bounded by the keys of the bucket. */
  readonly revisions = new Map<string, number>();
  snapshot: StoredQuery[] = [];

  /** keysMax: the catalog keeps or lists at most this many definitions (queriesMax kept, as many set aside per reason). */
  constructor(
    private readonly kv: KV,
    readonly keysMax: number,
  ) {}

  /** Records a key's revision; a key beyond keysMax is not recorded (the catalog does not hold it either). */
  saw(key: string, revision: number): void {
    if (this.revisions.has(key) || this.revisions.size < this.keysMax) this.revisions.set(key, revision);
  }

  load(): StoredQuery[] {
    return this.snapshot;
  }

  async create(def: StoredQuery): Promise<void> {
    try {
      this.saw(def.id, await this.kv.create(def.id, JSON.stringify(def)));
    } catch (err) {
      if (isWrongLastSequence(err)) throw new DefinitionConflict(`stored query id ${def.id} is taken in KV ${buckets.queries}; create it again (a new id is drawn)`, { cause: err });
      throw err;
    }
  }

  async update(def: StoredQuery): Promise<void> {
    const rev = this.revisions.get(def.id);
    if (rev === undefined) throw new DefinitionConflict(`stored query ${def.id} is not in KV ${buckets.queries} as this node last saw it; GET it again and retry`);
    try {
      this.saw(def.id, await this.kv.update(def.id, JSON.stringify(def), rev));
    } catch (err) {
      if (isWrongLastSequence(err)) throw new DefinitionConflict(`stored query ${def.id} was changed by another node meanwhile (revision ${rev} is no longer the newest); GET it again and retry`, { cause: err });
      throw err;
    }
  }

  async remove(id: string): Promise<void> {
    await this.kv.delete(id);
    this.revisions.delete(id);
  }
}

function isWrongLastSequence(err: unknown): boolean {
  return err instanceof JetStreamApiError && (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown);
}

/** A definition from a KV entry, or null when it is not one (counted by the caller). */
export function definitionOf(key: string, text: string): StoredQuery | null {
  if (text.length > clusterQueryLimits.definitionBytesMax) return null;
  let v: Partial<StoredQuery>;
  try {
    v = JSON.parse(text) as Partial<StoredQuery>;
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null || v.id !== key || typeof v.name !== 'string' || typeof v.query !== 'string' || typeof v.createdMs !== 'number') return null;
  return { id: v.id, name: v.name, query: v.query, createdMs: v.createdMs };
}

/** A window from a results message, or null when it is not one. */
export function windowOf(text: string): WindowResult | null {
  let w: Partial<WindowResult>;
  try {
    w = JSON.parse(text) as Partial<WindowResult>;
  } catch {
    return null;
  }
  if (typeof w !== 'object' || w === null || !Number.isFinite(w.startMs) || !Number.isFinite(w.endMs) || !Number.isInteger(w.revision) || typeof w.values !== 'object' || w.values === null) return null;
  return w as WindowResult;
}

/** The stored-query catalog of a cluster node, kept from KV apm-queries and the results subjects. */
export class ClusterQueries {
  readonly counters = { windows_published: 0, windows_publish_failed: 0, windows_received: 0, windows_bad: 0, definitions_bad: 0, definitions_dropped: 0, resyncs: 0, resync_failures: 0, watch_restarts: 0, windows_kept: 0, windows_keep_dropped: 0, windows_keep_failed: 0 };
  catalog!: QueryCatalog;
  /** Received windows waiting to be kept in the store of their metric, by metric. */
  private readonly toKeep = new Map<string, { qid: string; query: string; json: string }[]>();
  private toKeepCount = 0;
  private keepTimer: NodeJS.Timeout | null = null;
  /** Hand-overs to the workers one after another, in the order the windows came (a revision never overtaken by an older one). */
  private keeping: Promise<void> = Promise.resolve();
  private pool!: ShardPool;
  private sub: Subscription | null = null;
  private watch: { stop(): void } | null = null;
  private resyncing: Promise<void> | null = null;
  private resyncAgain = false;
  private closed = false;
  private readonly log: (line: string) => void;

  private constructor(
    private readonly view: ClusterView,
    private readonly defs: KvDefinitions,
    log: ((line: string) => void) | undefined,
  ) {
    this.log = log ?? ((l) => console.error(`apm core [${view.nodeId}]: ${l}`));
  }

  /** Opens (creates if absent) KV apm-queries, reads every definition, and starts evaluating this node's share. */
  static async open(view: ClusterView, pool: ShardPool, o: ClusterQueriesOptions): Promise<ClusterQueries> {
    const kv = await retryJetStream(`KV ${buckets.queries}`, () => new Kvm(view.nc).create(buckets.queries, { history: 1, replicas: Math.min(clusterQueryLimits.bucketReplicasMax, view.settings.streamReplicas), max_bytes: clusterQueryLimits.bucketBytesMax, maxValueSize: clusterQueryLimits.definitionBytesMax }));
    // Kept, set aside beyond the limit, set aside unparsable: the catalog holds at most 3 × queriesMax.
    const cq = new ClusterQueries(view, new KvDefinitions(kv, 3 * o.queriesMax), o.log);
    cq.pool = pool;
    await cq.load(kv);
    cq.catalog = new QueryCatalog(cq.defs, pool, {
      queriesMax: o.queriesMax,
      recentWindowsMax: o.recentWindowsMax,
      evaluatesHere: (metric) => cq.evaluatesHere(metric),
      onOwnWindow: (id, w) => cq.publish(id, w),
    });
    cq.sub = view.nc.subscribe(`${resultsPrefix}>`, {
      callback: (err, msg) => {
        if (err === null) cq.receive(msg.subject, msg.string(), msg.headers?.get(originHeader));
        else cq.counters.windows_bad++;
      },
    });
    view.onChange(() => cq.resync());
    await cq.catalog.start();
    return cq;
  }

  /** Whether this node evaluates the stored queries of `metric`: it is the first ready owner of its shard. */
  evaluatesHere(metric: string): boolean {
    return this.view.readyOwners(shardOfMetric(metric, this.view.settings.shards))[0]?.id === this.view.nodeId;
  }

  /** Watches the bucket; resolves once every entry written before the watch began has arrived. */
  private async load(kv: KV): Promise<void> {
    const lastSeq = (await kv.status()).streamInfo.state.last_seq;
    const initial = new Map<string, StoredQuery>();
    let loaded!: () => void;
    const done = new Promise<void>((resolve) => (loaded = resolve));
    if (lastSeq === 0) loaded();
    void watchAgain({
      open: (from) => kv.watch(from === 0 ? {} : { resumeFromRevision: from }),
      onEntry: async (e) => {
        const def = this.entry(e);
        if (this.catalog === undefined) {
          if (def === null) initial.delete(e.key);
          else if (def !== undefined && (initial.has(e.key) || initial.size < this.defs.keysMax)) initial.set(e.key, def);
          else if (def !== undefined) this.counters.definitions_dropped++;
          if (e.revision >= lastSeq) {
            this.defs.snapshot = [...initial.values()];
            loaded();
          }
        } else if (def !== undefined) {
          await this.catalog.applyChange(e.key, def).catch((err: unknown) => this.log(`applying stored query ${e.key} from KV ${buckets.queries} failed: ${(err as Error).message}`));
        }
      },
      current: (iter) => {
        this.watch = iter;
        if (this.closed) iter.stop();
      },
      closed: () => this.closed,
      restarted: (why) => {
        this.counters.watch_restarts++;
        this.log(`watch of KV ${buckets.queries} ${why}`);
      },
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`KV ${buckets.queries} did not deliver its ${lastSeq} entries within ${clusterQueryLimits.loadTimeoutMs} ms; is JetStream healthy?`)), clusterQueryLimits.loadTimeoutMs);
      timer.unref();
    });
    try {
      await Promise.race([done, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** A watch entry as a change: the definition, null for a deletion, undefined for an entry that is not a definition (counted). */
  private entry(e: KvWatchEntry): StoredQuery | null | undefined {
    if (e.operation !== 'PUT') {
      this.defs.revisions.delete(e.key);
      return null;
    }
    this.defs.saw(e.key, e.revision);
    const def = definitionOf(e.key, e.string());
    if (def === null) {
      this.counters.definitions_bad++;
      this.log(`KV ${buckets.queries} key ${JSON.stringify(e.key.slice(0, 80))} (revision ${e.revision}) is not a stored query; ignored — delete it from the bucket`);
      return undefined;
    }
    return def;
  }

  /** Hands the workers their share again; calls arriving meanwhile make one more pass. */
  resync(): void {
    if (this.closed) return;
    if (this.resyncing !== null) {
      this.resyncAgain = true;
      return;
    }
    this.resyncing = (async () => {
      do {
        this.resyncAgain = false;
        this.counters.resyncs++;
        await this.catalog.resync().catch((err: unknown) => {
          this.counters.resync_failures++;
          this.log(`handing stored queries to the workers failed: ${(err as Error).message}; retried at the next cluster change`);
        });
      } while (this.resyncAgain && !this.closed);
      this.resyncing = null;
    })();
  }

  private publish(id: string, w: WindowResult): void {
    try {
      const h = headers();
      h.set(originHeader, this.view.nodeId);
      this.view.nc.publish(resultsSubject(id), JSON.stringify(w), { headers: h });
      this.counters.windows_published++;
    } catch (err) {
      // A closed connection: the windows are stored here and served by the results route.
      this.counters.windows_publish_failed++;
      if (this.counters.windows_publish_failed === 1) this.log(`publishing stored-query windows failed: ${(err as Error).message}; other nodes' live streams miss them until NATS is back`);
    }
  }

  private receive(subject: string, text: string, origin: string | undefined): void {
    if (origin === this.view.nodeId) return; // kept when this node's worker announced it
    const id = subject.slice(resultsPrefix.length);
    const w = windowOf(text);
    if (w === null || id === '' || id.length > clusterQueryLimits.idCharsMax) {
      this.counters.windows_bad++;
      return;
    }
    this.counters.windows_received++;
    this.catalog.receiveWindow(id, w);
    this.keepLater(id, text);
  }

  /** A received window, to be kept in this node's store of its metric (flushed every adoptEveryMs). */
  private keepLater(id: string, json: string): void {
    const def = this.catalog.get(id);
    const metric = this.catalog.metricOf(id);
    if (def === undefined || metric === undefined) return;
    if (this.toKeepCount >= clusterQueryLimits.adoptWindowsMax) {
      this.counters.windows_keep_dropped++;
      return;
    }
    let list = this.toKeep.get(metric);
    if (list === undefined) this.toKeep.set(metric, (list = []));
    list.push({ qid: id, query: def.query, json });
    this.toKeepCount++;
    if (this.keepTimer === null && !this.closed) {
      this.keepTimer = setTimeout(() => {
        this.keepTimer = null;
        void this.keepNow();
      }, clusterQueryLimits.adoptEveryMs);
      this.keepTimer.unref();
    }
  }

  /** Hands the waiting windows to the workers (one request per metric), after any hand-over under way. */
  keepNow(): Promise<void> {
    const run = this.keeping.then(() => this.keepWaiting());
    this.keeping = run.catch(() => undefined);
    return run;
  }

  private async keepWaiting(): Promise<void> {
    const batches = [...this.toKeep];
    this.toKeep.clear();
    this.toKeepCount = 0;
    for (const [metric, windows] of batches) {
      try {
        this.counters.windows_kept += await this.pool.adoptWindows(metric, windows);
      } catch (err) {
        this.counters.windows_keep_failed += windows.length;
        if (this.counters.windows_keep_failed === windows.length) this.log(`keeping received stored-query windows failed: ${(err as Error).message}; a takeover evaluates them again from the rows`);
      }
    }
  }

  /** Stored queries this node's workers evaluate now. */
  evaluatedHere(): number {
    let n = 0;
    for (const d of this.catalog.list()) {
      const metric = this.catalog.metricOf(d.id);
      if (metric !== undefined && this.evaluatesHere(metric)) n++;
    }
    return n;
  }

  writeMetrics(p: PromText): void {
    const c = this.counters;
    p.counters('apm_core_cluster_query_windows_total', 'Stored-query windows on core NATS: published (evaluated here), publish_failed, received (from the evaluating node), bad (not a window; ignored)', 'result', {
      published: c.windows_published,
      publish_failed: c.windows_publish_failed,
      received: c.windows_received,
      bad: c.windows_bad,
    });
    p.counters('apm_core_cluster_query_windows_kept_total', "Received stored-query windows kept in this node's store (so a takeover serves the whole history), or not: dropped (more than adoptWindowsMax waiting), failed (the worker refused)", 'result', { kept: c.windows_kept, dropped: c.windows_keep_dropped, failed: c.windows_keep_failed });
    p.counter('apm_core_cluster_query_definitions_bad_total', `Entries of KV ${buckets.queries} that are not stored queries (ignored)`, c.definitions_bad);
    p.counter('apm_core_cluster_query_definitions_dropped_total', `Definitions in KV ${buckets.queries} beyond what this node holds at start (3 × its stored-query limit): not read`, c.definitions_dropped);
    p.counter('apm_core_cluster_query_resyncs_total', 'Times the stored queries were handed to the workers again (placement, readiness or definitions changed)', c.resyncs);
    p.counter('apm_core_cluster_query_resync_failures_total', 'Hand-overs to the workers that failed (retried at the next change)', c.resync_failures);
    p.counter('apm_core_cluster_query_watch_restarts_total', `Times the watch of KV ${buckets.queries} ended or failed and was opened again from the next revision`, c.watch_restarts);
    p.gauge('apm_core_cluster_queries_evaluated', 'Stored queries this node evaluates (it is the first ready owner of their shard)', this.evaluatedHere());
  }

  close(): void {
    this.closed = true;
    this.sub?.unsubscribe();
    this.watch?.stop();
    if (this.keepTimer !== null) clearTimeout(this.keepTimer);
    this.keepTimer = null;
  }
}

/**
 * Reads a KV watch for as long as `closed()` is false, opening it again from the revision after
 * the last entry whenever it ends or fails, with a backoff (500 ms doubling to 30 s). A watch's
 * ordered consumer gives up after a few minutes without a JetStream quorum and then simply ended:
 * a node never saw another node's stored-query changes again, without a word.
 */
export async function watchAgain(o: {
  open: (fromRevision: number) => Promise<AsyncIterable<KvWatchEntry> & { stop(): void }>;
  onEntry: (e: KvWatchEntry) => Promise<void>;
  current: (iter: { stop(): void }) => void;
  closed: () => boolean;
  restarted: (why: string) => void;
  sleep?: (ms: number) => Promise<void>;
}): Promise<void> {
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref()));
  let revision = 0;
  let backoffMs: number = clusterQueryLimits.watchRetryMinMs;
  while (!o.closed()) {
    let why: string;
    try {
      const iter = await o.open(revision === 0 ? 0 : revision + 1);
      o.current(iter);
      for await (const e of iter) {
        revision = e.revision;
        backoffMs = clusterQueryLimits.watchRetryMinMs;
        await o.onEntry(e);
      }
      why = `ended after revision ${revision}`;
    } catch (err) {
      why = `failed after revision ${revision}: ${(err as Error).message}`;
    }
    if (o.closed()) return;
    o.restarted(`${why}; watching again from ${revision + 1} in ${backoffMs} ms`);
    await sleep(backoffMs);
    backoffMs = Math.min(clusterQueryLimits.watchRetryMaxMs, backoffMs * 2);
  }
}
