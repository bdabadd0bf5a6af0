// The core's HTTP API (DESIGN §5) over Hono: ingest, registry, process metrics, health.
// Query routes arrive with the query engine (issue 5). One error shape: {"error": "..."}.

import type { IncomingMessage } from 'node:http';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { lmdbCounters } from '../lib/lmdb.js';
import { PromText } from '../lib/prom.js';
import { ApiAuth, mayRack } from './auth.js';
import { BodyBudget, BodyError, BufferPool, readBodyInto } from './buffers.js';
import { coreLimits } from './limits.js';
import { rateLimit, type RateLimiter } from './ratelimit.js';
import { WorkerError, type IngestResult, type ShardPool } from './pool.js';
import type { WorkerMetric } from './protocol.js';
import { addSnapshotRoutes } from './cluster/snapshot-routes.js';
import type { QueryCatalog } from './query/catalog.js';
import { addPromRoutes, promPath } from './query/prom.js';
import { addQueryRoutes } from './query/routes.js';
import { addHistoryRoutes } from './history/routes.js';
import { addDashboardRoutes } from './dashboard.js';
import type { ClusterQueries } from './cluster/queries.js';
import { ClusterRouting } from './cluster/routes.js';
import type { ClusterView } from './cluster/view.js';
import type { ServerTable } from './servers.js';
import { CoreStatus } from './status.js';

export interface ApiOptions {
  ingestBodyBytesMax: number;
  /** Bytes of ingest bodies being read or ingested at once (default 256 MiB). */
  ingestBodiesHeldBytesMax?: number;
  /** Token checks (core/auth.ts); absent: auth off, the loopback dev default. */
  auth?: ApiAuth;
  /** Per-client rate limit of the query API; absent: none. */
  queryRate?: RateLimiter;
  /** The fleet view's health figures (sampled by the daemon); absent: an unsampled one. */
  status?: CoreStatus;
  /** A core cluster (issue 13): one-metric routes go to their shard's ready owner, lists span every node (core/cluster/routes.ts); absent: a single node. */
  cluster?: ClusterView;
  /** The cluster's stored queries (core/cluster/queries.ts), for their counters at /metrics. */
  clusterQueries?: ClusterQueries;
  /**
   * Where a rack second POSTed here (or an import's) goes instead of this node's workers: a
   * cluster node publishes it to the shards' streams (core/cluster/ingest.ts). Absent: the pool.
   */
  ingest?: (body: Uint8Array, mayRack: (rack: string) => boolean) => Promise<IngestResult>;
  /**
   * Whether racks and imports may send this node packed points (schema/pointpack.ts): true for a
   * single node (it reads them); a cluster node says what the cluster's settings say, as what it
   * takes goes to every owner's stream and an owner from before the pack would refuse it.
   */
  pointPack?: boolean;
  /** A cluster node's GET /api/v1/cluster answer (core/cluster/status.ts). */
  clusterStatus?: () => object;
  /** More lines for /metrics (a cluster node's consumers and placement). */
  metricsExtra?: (p: PromText) => void;
}

/** What the HTTP thread serves from: the workers, the server list and the stored-query catalog. */
export interface CoreParts {
  pool: ShardPool;
  servers: ServerTable;
  stored: QueryCatalog;
}

export function createApi(parts: CoreParts, opts: ApiOptions): Hono {
  const { pool, servers, stored } = parts;
  const app = new Hono();
  const http = { ingest_requests: 0, ingest_too_large: 0, ingest_bad_body: 0, ingest_length_required: 0, ingest_body_timeout: 0 };
  // Bodies of rack seconds, recycled (core/buffers.ts): racks send one request at a time each.
  const bodies = new BufferPool(ingestBodiesBytesMax);
  const bodyBudget = new BodyBudget(opts.ingestBodiesHeldBytesMax ?? ingestBodiesHeldBytesMax);
  // Before every route: auth decides who is asking, the rate limit keys on it (issue 8).
  const auth = opts.auth ?? new ApiAuth({ tokens: null });
  app.use('*', auth.middleware());
  // Refusals of the query API, by reason (issue 8: every refusal counted; auth
  // failures have their own counter). Registered first so it sees every later middleware's answer.
  const refused: Record<string, number> = {};
  app.use('/api/v1/*', async (c, next) => {
    await next();
    const reason = c.res.status >= 400 ? (c.get('apmRefusal') ?? refusalReason(c.req.path, c.res.status)) : null;
    if (reason !== null) refused[reason] = (refused[reason] ?? 0) + 1;
  });
  const queryRate = opts.queryRate;
  if (queryRate !== undefined) {
    // The query API only: /api/v1/query* and /api/v1/queries*, never ingest (racks retry on
    // their own schedule and their spool absorbs a slow core). Opening a live stream costs as
    // much as an ad-hoc query (issue 16.10), and so does a Prometheus range query (issue 15: it
    // evaluates from storage like one); the Prometheus API's lists, and the lists of metrics and servers, cost 1.
    const cost = (path: string) =>
      path === '/api/v1/query' || path === '/api/v1/query_range' || path === '/api/v1/export' ? coreLimits.adHocQueryCost : livePath.test(path) ? coreLimits.liveStreamCost : path.startsWith('/api/v1/quer') || promPath.test(path) || path === '/api/v1/metrics' || path === '/api/v1/servers' ? 1 : 0;
    app.use('/api/v1/*', rateLimit(queryRate, cost));
  }
  // Every body but ingest's (which has its own, larger limit below) and an import's (streamed,
  // any size, in bounded memory) is a small JSON document.
  const smallBody = bodyLimit({
    maxSize: coreLimits.queryBodyBytesMax,
    onError: (c) => c.json({ error: `${c.req.method} ${c.req.path}: body exceeds ${coreLimits.queryBodyBytesMax} bytes; a stored query's JSON is far smaller` }, 413),
  });
  app.use('*', (c, next) => (c.req.path === '/api/v1/ingest' || c.req.path === '/api/v1/import' || c.req.method === 'GET' || c.req.method === 'HEAD' ? next() : smallBody(c, next)));
  // In a cluster, before every route that reads a metric's data or lists metrics (issue 13).
  const routing = opts.cluster === undefined ? null : new ClusterRouting(opts.cluster, stored);
  if (routing !== null) app.use('*', routing.middleware());
  const live = addQueryRoutes(app, pool, stored);
  const prom = addPromRoutes(app, { pool, servers, stored });
  const ingest = opts.ingest ?? ((body: Uint8Array, may: (rack: string) => boolean) => pool.ingest(body, may));
  const pointPack = opts.pointPack ?? true;
  const history = addHistoryRoutes(app, { pool, servers, ingest: (b) => ingest(b, () => true), pointPack });
  // A cluster node hands a copy of a shard to a node that joins it (admin only; core/snapshot.ts).
  if (opts.cluster !== undefined) {
    const cluster = opts.cluster;
    addSnapshotRoutes(app, pool, (shard) => cluster.servesLocally(shard));
  }
  const status = opts.status ?? new CoreStatus({ racksMax: coreLimits.racksMax, samplesMax: coreLimits.statusSamplesMax });
  addDashboardRoutes(app, { pool, servers, stored, status, clusterStatus: opts.clusterStatus });

  app.onError((err, c) => {
    console.error(`core: ${c.req.method} ${c.req.path} failed:`, err);
    return c.json({ error: `internal error: ${err.message}` }, 500);
  });
  app.notFound((c) => c.json({ error: `no route for ${c.req.method} ${c.req.path}` }, 404));

  const tooLarge = (c: Context) => {
    http.ingest_too_large++;
    return c.json({ error: `ingest body exceeds ${opts.ingestBodyBytesMax} bytes`, reason: 'too_large' }, 413);
  };
  const ingestLimit = bodyLimit({ maxSize: opts.ingestBodyBytesMax, onError: tooLarge });
  /**
   * The socket of a request whose body goes straight into a recycled buffer (core/buffers.ts):
   * its length declared, not chunked, and for this node's workers (which copy it). Such a request
   * must never reach Hono's body: reading `c.req.raw.body` (bodyLimit does) makes
   * @hono/node-server attach a web stream to the socket, which copies every chunk we read into a
   * queue nobody reads — the whole body allocated twice, on the HTTP thread's heap.
   */
  const direct = (c: Context): { incoming: IncomingMessage; declared: number } | null => {
    const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
    const declared = Number(c.req.header('content-length'));
    if (incoming === undefined || !Number.isSafeInteger(declared) || declared <= 0 || c.req.header('transfer-encoding') !== undefined) return null;
    return { incoming, declared };
  };
  app.post(
    '/api/v1/ingest',
    // A direct body over the bound is refused here, as bodyLimit refuses the others: before the
    // handler counts the request and before anything is read.
    (c, next) => {
      const d = direct(c);
      if (d !== null) return d.declared > opts.ingestBodyBytesMax ? tooLarge(c) : next();
      // From a socket, a body must declare its length (a rack always does): a chunked one was
      // buffered whole outside the bodies' budget, so a few never-ending ones held gigabytes.
      // (Requests made in process, without a socket, are tests and tools: bodyLimit bounds them.)
      if ((c.env as { incoming?: IncomingMessage } | undefined)?.incoming !== undefined) {
        http.ingest_length_required++;
        return c.json({ error: 'an ingest body must declare its Content-Length (not chunked, not empty); racks always do', reason: 'length_required' }, 411);
      }
      return ingestLimit(c, next);
    },
    async (c) => {
      http.ingest_requests++;
      // The body straight from the socket into a recycled buffer when `direct`; otherwise through Hono.
      const d = direct(c);
      let pooled: ArrayBuffer | null = null;
      let body: Uint8Array;
      if (d !== null) {
        try {
          const r = await readBodyInto(d.incoming, d.declared, opts.ingestBodyBytesMax, bodies, bodyBudget);
          pooled = r.buf;
          body = new Uint8Array(r.buf, 0, r.length);
        } catch (err) {
          if (!(err instanceof BodyError)) throw err;
          if (err.status === 413) http.ingest_too_large++;
          else if (err.status === 400) http.ingest_bad_body++;
          else if (err.status === 408) {
            // The rest of a stalled body is not waited for: the connection closes after the answer.
            http.ingest_body_timeout++;
            c.header('connection', 'close');
          }
          return c.json({ error: err.message, reason: err.status === 413 ? 'too_large' : err.status === 503 ? 'bodies_full' : err.status === 408 ? 'body_timeout' : 'bad_body' }, err.status);
        }
      } else body = new Uint8Array(await c.req.arrayBuffer());
      try {
        // Only the racks the token names (issue 16.3): checked on the decoded container, before any worker sees it.
        const grant = c.get('apmRacks') ?? '*';
        const r = await ingest(body, (rack) => mayRack(grant, rack));
        if (r.status === 204) {
          // A body without sections stores nothing, and no worker checked its second: it names no
          // server and moves no clock (before: 204 with its servers listed for the retention, and a
          // second in 2100 made the dashboard's freshness negative until a restart).
          if (r.msg.sectionShards.length > 0) {
            servers.seen(r.msg.rack, r.msg.servers, Date.now());
            status.noteSecond(r.msg.second);
          }
          return c.body(null, 204);
        }
        if (r.status === 403) return auth.rackRefused(c, c.get('apmClient') ?? 'unknown', grant, r.rack);
        return c.json({ error: r.error, reason: r.reason, ...(r.shards === undefined ? {} : { shards: r.shards }) }, r.status);
      } finally {
        // The workers have their own copies, and the decoded message's strings are copies too.
        if (pooled !== null) {
          bodyBudget.release(pooled.byteLength);
          bodies.give(pooled);
        }
      }
    },
  );

  // Racks ask for S (and, with a cluster, the placement) before they cut sections (issue 12).
  // pointPack: racks may send packed points (schema/pointpack.ts); they pack only when told so, as
  // a core from before would refuse such sections as malformed (ApiOptions.pointPack).
  app.get('/api/v1/placement', (c) => c.json({ shards: pool.shards, workers: pool.workers, pointPack }));

  // The list of servers, built again only when a server came, moved or went, or a second later
  // (for last-seen times): at 100,000 servers one answer is 13 MB and 155 ms of this thread, and
  // eight clients asking in a loop took ingest's p50 from 4 ms to 368 ms.
  let serversList: { atMs: number; changes: number; text: string } | null = null;
  app.get('/api/v1/servers', (c) => {
    const nowMs = Date.now();
    if (serversList === null || serversList.changes !== servers.changes || nowMs - serversList.atMs >= 1000) {
      serversList = { atMs: nowMs, changes: servers.changes, text: JSON.stringify({ servers: servers.all().map((s) => ({ id: s.name, rack: s.rack, firstSeenMs: s.firstSeenMs, lastSeenMs: s.lastSeenMs })) }) };
    }
    return c.body(serversList.text, 200, { 'content-type': 'application/json' });
  });

  // The list of every metric, built once for all who ask while it is being built: with 200,000
  // metrics one answer is ~33 MB and ~1 s of this thread, and eight asked at once held ~700 MB
  // (each built its own). Not kept after: a metric just stored is listed by the next call. A
  // cluster node's list (its shards) is built per call.
  let metricsList: Promise<string> | null = null;
  const metricsBody = async (keep: ((name: string) => boolean) | undefined): Promise<string> => {
    // In the order of the sorted names (built once per change of them), not sorted per request.
    const key = pool.namesKey();
    const all = await pool.metrics();
    const byName = new Map<string, WorkerMetric>();
    for (const m of all) if (m.name !== null && (keep === undefined || keep(m.name))) byName.set(m.name, m);
    const metrics: { name: string; kind: string; firstSeenMs: number; lastSeenMs: number }[] = [];
    for (const name of await pool.sortedNames({ metrics: all, key })) {
      const m = byName.get(name);
      if (m === undefined) continue;
      byName.delete(name);
      metrics.push({ name, kind: kindName(m.kind), firstSeenMs: m.firstSeenMs, lastSeenMs: m.lastSeenMs });
    }
    // Named in the last second (not in the sorted list yet): merged in their places.
    if (byName.size > 0) {
      const late = [...byName.values()].map((m) => ({ name: m.name!, kind: kindName(m.kind), firstSeenMs: m.firstSeenMs, lastSeenMs: m.lastSeenMs }));
      late.sort((a, b) => (a.name < b.name ? -1 : 1));
      const merged: typeof metrics = [];
      let i = 0;
      for (const m of metrics) {
        while (i < late.length && late[i]!.name < m.name) merged.push(late[i++]!);
        merged.push(m);
      }
      merged.push(...late.slice(i));
      return JSON.stringify({ metrics: merged });
    }
    return JSON.stringify({ metrics });
  };
  app.get('/api/v1/metrics', async (c) => {
    try {
      const keep = c.get('apmShardFilter'); // a cluster: the metrics of the shards this node answers for
      if (keep !== undefined) return c.body(await metricsBody(keep), 200, { 'content-type': 'application/json' });
      if (metricsList === null) {
        const list = metricsBody(undefined);
        metricsList = list;
        const done = () => (metricsList = metricsList === list ? null : metricsList);
        list.then(done, done);
      }
      return c.body(await metricsList, 200, { 'content-type': 'application/json' });
    } catch (err) {
      if (!(err instanceof WorkerError)) throw err;
      return c.json({ error: `the metric list is incomplete: ${err.message}` }, 503);
    }
  });

  // A liveness probe: 503 while a worker is stuck or has not been up for workerSilentMs (ShardPool.health).
  app.get('/healthz', (c) => {
    const problems = pool.health();
    return problems.length === 0 ? c.text('ok\n') : c.text(`unhealthy: ${problems.join('; ')}\n`, 503);
  });

  app.get('/metrics', async (c) => {
    const p = new PromText();
    const st = await pool.freshStats();
    const s = (k: string) => st.counters[k] ?? 0;
    p.counter('apm_core_ingest_requests_total', 'POST /api/v1/ingest requests', http.ingest_requests);
    // A reason can come from both sides (bad_name: a server id on this thread, a metric name in a worker): summed.
    const rejected: Record<string, number> = { ...st.rejected };
    for (const [k, v] of Object.entries(pool.rejected)) rejected[k] = (rejected[k] ?? 0) + v;
    p.counters('apm_core_requests_rejected_total', 'Ingest requests refused, by reason (a section refused by its worker counts under its reason)', 'reason', {
      ...rejected,
      too_large: http.ingest_too_large,
      bad_body: http.ingest_bad_body,
      length_required: http.ingest_length_required,
      body_timeout: http.ingest_body_timeout,
      bodies_full: bodyBudget.refused,
      shards_mismatch: pool.counters.shards_mismatch,
      worker_busy: pool.counters.ingest_busy,
      worker_unavailable: pool.counters.ingest_unavailable,
      storage_full: s('storage_full'),
      head_full: s('head_full'),
      rows_behind: s('rows_behind'),
    });
    for (const [name, b] of [['bodies', bodies], ['workers', pool.buffers]] as const) {
      for (const [event, v] of Object.entries(b.counters)) p.counter('apm_core_ingest_buffers_total', 'Ingest buffers (rack-second bodies; the copies each worker receives) by pool and event: reused, allocated (none free of that size), discarded (pool at its bound)', v, { pool: name, event });
      p.gauge('apm_core_ingest_buffers_kept_bytes', 'Bytes of ingest buffers kept for reuse, by pool (bounded)', b.keptBytes, { pool: name });
    }
    p.counter('apm_core_requests_ingested_total', 'Rack seconds made durable in every shard they name', pool.counters.requests_ingested);
    p.counter('apm_core_sections_ingested_total', 'Shard sections made durable', s('sections_ingested'));
    p.counter('apm_core_ingest_commits_total', 'Synced ingest transactions (requests waiting together share one: group commit)', s('commits'));
    p.counter('apm_core_sections_refused_total', "Sections refused alone (they do not decode or check; by reason in apm_core_requests_rejected_total); their request's other sections are stored", s('sections_refused'));
    p.counter('apm_core_sections_duplicate_total', 'Sections of retried requests acknowledged again without storing (same rack, session, seq)', s('sections_duplicate'));
    p.counter('apm_core_sections_too_old_total', 'Sections older than the de-duplication window, taken as duplicates', s('too_old'));
    p.counter('apm_core_sections_late_total', "Sections for a second before the newest block this worker wrote in its shard since it started (late for the shard; those whose block has rows are merged into them: apm_core_rows_merged_total)", s('sections_late'));
    p.counter('apm_core_points_ingested_total', 'Gauge and counter points ingested', s('points_ingested'));
    p.counter('apm_core_summaries_ingested_total', 'Distribution summaries ingested', s('summaries_ingested'));
    p.counter('apm_core_bytes_ingested_total', 'Section bytes ingested', s('bytes_ingested'));
    p.counter('apm_core_rows_written_total', 'Storage rows written', s('rows_written'));
    p.counter('apm_core_rows_merged_total', 'Stored rows merged with late data', s('rows_merged'));
    p.counter('apm_core_rows_corrupt_total', 'Stored rows that failed to decode (skipped)', s('rows_corrupt'));
    p.counters('apm_core_row_cache_reads_total', 'Stored-query reads of rows: found decoded in the row cache (hit) or decoded (miss)', 'result', { hit: s('row_cache_hits'), miss: s('row_cache_misses') });
    p.counter('apm_core_row_cache_evicted_total', 'Decoded rows evicted from the row cache (least recently used, beyond its byte bound)', s('row_cache_evicted'));
    p.counters('apm_core_answer_cache_windows_total', 'Windows of ad-hoc answers: kept from an earlier answer whose rows have not changed (hit) or evaluated (miss)', 'result', { hit: s('answer_cache_hits'), miss: s('answer_cache_misses') });
    p.counter('apm_core_answer_cache_evicted_total', 'Windows of ad-hoc answers dropped from the cache to stay within its bounds', s('answer_cache_evicted'));
    p.gauge('apm_core_answer_cache_windows', 'Windows of ad-hoc answers held in the caches', s('answer_cache_windows'));
    p.gauge('apm_core_row_cache_bytes', 'Bytes of decoded rows held in the row caches', s('row_cache_bytes'));
    p.counters('apm_core_row_directory_reads_total', "Reads of a block's stored rows of one metric: their keys, pointers and headers kept from an earlier read of the unchanged block (hit) or read from LMDB (miss)", 'result', { hit: s('row_directory_hits'), miss: s('row_directory_misses') });
    p.counter('apm_core_row_directory_evicted_total', 'Row directories dropped to stay within their byte bound (least recently used)', s('row_directory_evicted'));
    p.gauge('apm_core_row_directory_bytes', "Bytes of blocks' row directories (keys, pointers, headers) held", s('row_directory_bytes'));
    p.counter('apm_core_row_slices_total', 'Row-writing transactions (each bounded in time)', s('row_slices'));
    p.gauge('apm_core_row_slice_ms_max', 'Longest row-writing slice in the last 10 s (ms): the longest a worker stops ingesting to write rows', st.sliceMsMax);
    p.counter('apm_core_row_slices_over_50ms_total', 'Row-writing slices longer than 50 ms (the pause target)', s('slices_over_50ms'));
    p.counter('apm_core_flush_errors_total', 'Row writes that failed and will be retried', s('flush_errors'));
    p.counter('apm_core_retention_rows_deleted_total', 'Rows deleted past the retention', s('retention_rows_deleted'));
    p.counter('apm_core_retention_results_deleted_total', 'Stored-query results deleted past the retention (windows that start before it)', s('results_deleted'));
    p.counter('apm_core_wal_replayed_total', 'Sections replayed from the WAL when workers started', s('wal_replayed'));
    p.counter('apm_core_wal_corrupt_total', 'WAL entries that did not decode at replay (kept for inspection)', s('wal_corrupt'));
    p.counter('apm_core_wal_unapplied_total', 'WAL entries that decoded but could not be replayed into the head (kept for inspection, logged)', s('wal_unapplied'));
    p.counter('apm_core_wal_deleted_held_total', "WAL entries of written blocks deleted while an older entry's block was unwritten (past a quarter of walBacklogBytesMax waiting for the WAL's front)", s('wal_deleted_held'));
    p.counter('apm_core_unpack_overflows_total', "Sections unpacked into a buffer of their own because the store's unpack arena (16 MiB per ingest call) was full", s('unpack_overflows'));
    p.gauge('apm_core_head_bytes', 'Bytes of data not yet written as rows', st.heldBytes);
    p.gauge('apm_core_wal_bytes', 'Bytes of WAL entries whose rows are not written yet', st.walBytes);
    p.counter('apm_core_row_bytes_written_total', 'Bytes of encoded rows written (before LMDB pages)', s('row_bytes_written'));
    p.gauge('apm_core_disk_bytes', 'Size of the LMDB data files (rows and WAL)', st.diskBytes);
    p.gauge('apm_core_wal_file_bytes', "Size of the WAL's LMDB files (in apm_core_disk_bytes; their high-water mark, bounded by walBacklogBytesMax plus the blocks being filled)", st.walFileBytes);
    p.gauge('apm_core_disk_used_bytes', 'Bytes of LMDB pages holding rows and WAL now (the rest of the files is free pages, reused before they grow)', st.usedBytes);
    p.gauge('apm_core_servers', 'Servers known', servers.size);
    p.gauge('apm_core_metrics', 'Metrics known', st.metrics);
    p.gauge('apm_core_shards', 'Shards of this node (S)', pool.shards);
    p.gauge('apm_core_workers', 'Worker threads running', st.workersUp);
    p.counter('apm_core_worker_deaths_total', 'Worker threads that died (each is restarted from its WAL)', pool.counters.worker_deaths);
    p.counter('apm_core_worker_stalls_total', 'Times a worker thread that was up said nothing for workerSilentMs (a step that does not end); /healthz answers 503 meanwhile', pool.counters.worker_stalls);
    p.counter('apm_core_worker_start_failures_total', 'Worker threads that died before they were ready: their stores did not open or their WAL replay failed (restarted with a growing back-off; the log says why)', pool.counters.worker_start_failures);
    p.counter('apm_core_worker_requests_timed_out_total', 'Requests a worker did not answer in time (answered 503)', pool.counters.requests_timed_out);
    p.counter('apm_core_worker_queries_busy_total', 'Ad-hoc queries and export chunks answered 503 at once: their worker had queriesWaitingPerWorkerMax waiting', pool.counters.queries_busy);
    p.counter('apm_core_query_windows_evaluated_total', 'Stored-query windows evaluated', s('windows_evaluated'));
    p.counter('apm_core_query_windows_revised_total', 'Stored-query windows re-evaluated with a new result (late data)', s('windows_revised'));
    p.counter('apm_core_query_windows_behind_total', 'Scheduler ticks that left windows for the next tick (catching up)', s('windows_behind'));
    p.counter('apm_core_query_errors_total', 'Stored-query evaluations that failed', s('evaluation_errors'));
    p.counter('apm_core_query_over_budget_total', 'Stored-query ticks stopped by their time budget (storedEvalMs; retried later with fewer windows at a time, also in apm_core_query_errors_total)', s('evaluation_over_budget'));
    p.counter('apm_core_query_late_seconds_replay_dropped_total', 'Seconds replayed from the WAL at start beyond 100,000 distinct: stored, but the stored-query windows over them not evaluated again', s('replayed_seconds_dropped'));
    p.counter('apm_core_query_windows_sliced_total', "Stored-query windows too large for one tick's budget, read over several ticks a block at a time", s('windows_sliced'));
    p.counter('apm_core_query_windows_adopted_total', 'Stored-query windows another cluster node evaluated, kept in this node\'s store (a takeover serves the whole history)', s('windows_adopted'));
    p.counter('apm_core_query_late_seconds_dropped_total', 'Late seconds not re-evaluated because the set was full', s('late_seconds_dropped'));
    p.counters('apm_core_results_answers_total', 'Answers of GET /api/v1/queries/:id/results: the same bytes sent again (no window of the query arrived since, at most 1 s) or built', 'result', { kept: stored.answerCounters.kept, built: stored.answerCounters.built });
    p.counter('apm_core_results_answers_evicted_total', 'Kept results answers dropped to stay within 64 answers and 16 MiB', stored.answerCounters.evicted);
    p.gauge('apm_core_results_answers_bytes', 'Bytes of results answers kept', stored.answerCounters.bytes);
    p.gauge('apm_core_queries_unloadable', 'Stored queries set aside, not evaluated, listed at GET /api/v1/queries: their text no longer parses, or (a cluster) the store holds more than the limit', stored.unloadable.length);
    p.counter('apm_core_queries_dropped_total', 'Stored-query definitions from the store neither kept nor listed: the set-aside lists were full', stored.definitionsDropped);
    p.counter('apm_core_queries_sync_deferred_total', 'Stored-query changes made durable whose workers were told later (a worker restarting or busy)', stored.syncDeferred);
    p.gauge('apm_core_live_subscribers', 'Open live (SSE) streams', live.subscribers());
    p.counter('apm_core_live_subscribers_dropped_total', 'Live streams dropped for falling behind', live.dropped());
    p.counter('apm_core_live_subscribers_revoked_total', 'Live streams ended because their token was revoked (a tokens file reloaded without it)', live.revoked());
    p.counters('apm_core_registry_retired_total', "Servers, metrics and racks forgotten after the retention sweep: not seen for longer than the retention keeps rows (their ids are reused); listed_server: the node's server list (GET /api/v1/servers)", 'kind', { server: s('servers_retired'), metric: s('metrics_retired'), rack: s('racks_retired'), listed_server: servers.forgotten });
    p.counters('apm_core_metrics_overflow_total', 'New metrics refused, by scope: server (it introduced metricsPerServerMax) or total (registry full); counted per section naming one', 'scope', { server: s('metrics_overflow_server'), total: s('metrics_overflow_total') });
    p.counter('apm_core_rollups_dropped_partial_total', "Rack rollups of a distribution's second not kept because a server summary of that second was refused (its servers' own sketches answer percentiles instead)", s('rollups_dropped_partial'));
    p.counters('apm_core_points_dropped_total', 'Points and summaries not stored, by reason (kind_conflict: of another kind than their metric, which keeps the kind it was first stored with; count_overflow: a part of a series-second, or a rack rollup of one second, whose counts merged would pass 2^32 - 1 or whose sums would overflow)', 'reason', { metric_overflow: s('points_dropped_overflow'), server_overflow: s('points_dropped_servers'), bad_value: s('points_dropped_bad_value'), kind_conflict: s('points_dropped_kind_conflict'), count_overflow: s('summaries_dropped_count_overflow') });
    p.counter('apm_core_servers_refused_total', "Servers not registered: a worker's registry is full (their points are dropped, counted above), or the node's server list is (not listed; their data is stored)", s('servers_refused') + servers.refused);
    p.counter('apm_core_rack_reports_refused_total', 'Rack status reports refused: more racks than the status table holds', status.racksRefused);
    p.counter('apm_core_rack_reports_expired_total', 'Rack status reports dropped from the fleet view: their rack sent none for rackReportTtlMs', status.racksExpired);
    p.gauge('apm_core_rack_reports', 'Racks with an unexpired status report', status.rackCount);
    p.counter('apm_core_lmdb_unhandled_failures_total', 'Failed LMDB commits whose rejection lmdb-js left unhandled (caught, not a crash)', lmdbCounters.commit_failures_unhandled);
    p.counters('apm_core_http_auth_failures_total', 'Requests refused by auth, by reason (missing token, unknown token, role forbids the route, rack: the token does not name the rack it sent for)', 'reason', auth.failures);
    p.counters('apm_core_query_requests_refused_total', 'Query API requests answered with an error, by reason (bad_request: parse errors, ranges and sizes over their limits; too_many_windows: more windows than one answer holds; live_share: the client holds its share of the live-stream slots; live_full: every slot is taken; time_budget: an evaluation ran past its budget; execution: a Prometheus API query that could not run)', 'reason', refused);
    p.counters('apm_core_prom_answers_truncated_total', 'Prometheus API list answers (label values, series, metadata) cut at their limit, by route', 'route', prom.truncated);
    p.counter('apm_core_imports_total', 'POST /api/v1/import requests taken', history.imports);
    p.counter('apm_core_imports_failed_total', 'Imports that stopped before their end (the core stayed busy, a broken body); what they acknowledged is stored', history.importsFailed);
    p.counter('apm_core_imports_refused_busy_total', 'Imports refused with 409: another was running', history.importsRefusedBusy);
    p.counter('apm_core_import_points_stored_total', 'Imported points stored', history.pointsStored);
    p.counters('apm_core_import_lines_refused_total', 'Imported series lines refused, by reason', 'reason', history.linesRefused);
    p.counters('apm_core_import_points_refused_total', 'Imported points not stored, by reason (same_second: a later sample of the server-second was kept; core_refused: the workers dropped it, see apm_core_points_dropped_total)', 'reason', history.pointsRefused);
    p.counter('apm_core_exports_total', 'GET /api/v1/export requests', history.exports);
    p.counter('apm_core_export_lines_total', 'JSON lines exported', history.exportLines);
    p.counter('apm_core_exports_failed_total', 'Exports that stopped early (their stream ends with an error line), or answered 503 before any data (a worker busy or restarting for 30 s)', history.exportsFailed);
    p.counter('apm_core_export_chunks_retried_total', 'Export chunks asked again after a busy or restarting worker refused them (an export retries for up to 30 s)', history.exportRetries);
    p.counter('apm_core_http_rate_limited_total', 'Query API requests refused with 429 (per-client rate limit)', queryRate?.counters.limited ?? 0);
    p.counter('apm_core_http_rate_buckets_evicted_total', 'Rate-limit buckets evicted (more clients than rateBucketsMax)', queryRate?.counters.buckets_evicted ?? 0);
    routing?.writeMetrics(p);
    opts.clusterQueries?.writeMetrics(p);
    opts.metricsExtra?.(p);
    return c.text(p.toString(), 200, { 'content-type': 'text/plain; version=0.0.4' });
  });

  return app;
}

/** Rack-second bodies kept for reuse: racks send one request at a time each, ~1 MB at 2,000 metrics × 40 servers. */
const ingestBodiesBytesMax = 64 * 1024 * 1024;
/** Bytes of bodies being read or ingested at once (core/buffers.ts BodyBudget): ~250 racks' seconds of ~1 MB. */
const ingestBodiesHeldBytesMax = 256 * 1024 * 1024;

const livePath = /^\/api\/v1\/(queries\/[^/]+\/)?live$/;

/** The reason a query API answer counts as refused, or null (success, or not a query route). */
function refusalReason(path: string, status: number): string | null {
  // 401 and 403 are auth's: counted once, in apm_core_http_auth_failures_total.
  if (status < 400 || status === 401 || status === 403 || !(path.startsWith('/api/v1/quer') || livePath.test(path) || promPath.test(path))) return null;
  const reasons: Record<number, string> = { 400: 'bad_request', 404: 'not_found', 409: 'conflict', 413: 'body_too_large', 422: 'execution', 429: 'rate_limited', 503: 'busy' };
  return reasons[status] ?? 'error';
}

export function kindName(kind: number): string {
  return ['gauge', 'counter', 'distribution'][kind] ?? 'unknown';
}
