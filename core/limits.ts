// Every bound of the core in one place, each with why it has its value.

import assert from 'node:assert';
import { batchBytesMax } from '../schema/limits.js';

export const coreLimits = {
  /** Largest ingest body: one rack-second (40 servers × 2,000 series ≈ 1.6 MB) with wide margin. */
  ingestBodyBytesMax: batchBytesMax,
  /** Seconds per storage row: 60 gives compression a minute of history per series. */
  blockSeconds: 60,
  /** A block is written this long after it ends; batches later than that are merged into it. */
  flushGraceMs: 5_000,
  /** Unwritten batches held in memory; beyond it ingest answers 503 and racks spool. */
  headBytesMax: 4 * 1024 * 1024 * 1024,
  /** WAL bytes of due blocks a node's rows may lag behind the ingest beyond each shard's newest
   * due block (a backfill, a slow disk), split over its stores; past it ingest answers 503
   * rows_behind (racks spool). The LMDB file never shrinks, so this bounds how much a backfill
   * inflates it beyond its rows: ~ this plus two blocks of WAL. */
  walBacklogBytesMax: 512 * 1024 * 1024,
  /** Distinct metrics the registry tracks (hash → name, kind). */
  metricsMax: 2_000_000,
  /** LMDB map size: address space reserved (lmdb-js grows it on demand; --disk-bytes-max is the budget). */
  mapBytes: 1024 ** 4,
  /** Free file-system space below which ingest answers 503 (room for LMDB to finish its work). */
  diskReserveBytes: 256 * 1024 * 1024,
  /** Longest a row-writing transaction runs before its worker turns to ingest again (issue 12:
   * no shard stops ingesting for more than about 50 ms, whatever the fleet size). */
  rowSliceMs: 10,
  /** Added to the process' nice value for the worker threads (Linux sets it per thread; the
   * HTTP thread keeps the process' own): when the cores are busy the HTTP thread answers first. */
  workerNice: 5,
  /** A worker that has not answered a request in this time gets it answered 503 (racks retry). */
  workerRequestTimeoutMs: 30_000,
  /** A worker up this long since it was ready starts its count of deaths in a row (the restart back-off) again. */
  workerUpResetMs: 60_000,
  /** A worker that is up and sends nothing (it reports every second) for this long, or is not up
   * for this long, makes /healthz answer 503 (core/pool.ts, watch and health): every step of a
   * worker is bounded far below it, so it is a step that does not end or a crash loop. */
  workerSilentMs: 30_000,
  /** Ingest requests waiting for one worker (each holds a copy of its sections, ~1 MB for a
   * 40-server second): a node's racks keep one or two in flight each, so 512 is ~250 racks'
   * worth; beyond it 503 and the racks retry from their spools. */
  ingestWaitingPerWorkerMax: 512,
  /** Ad-hoc queries (and exports) waiting for one worker: a worker takes its messages in order,
   * so each query queued there delays the ingest behind it by up to its 2 s budget. Beyond it 503
   * worker_busy (counted); a query whose answer is no longer awaited is not evaluated. */
  queriesWaitingPerWorkerMax: 16,
  /** The meta environment holds stored-query definitions and the server list: small. */
  metaMapBytes: 1024 ** 3,
  /** Retention sweep period. */
  retentionSweepMs: 10_000,
  /** Servers and racks the registry accepts: 10× the design fleet. */
  serversMax: 100_000,
  /** Per store, at most 131,072 ÷ its shards (its de-duplication windows, core/dedup.ts): 4,096 racks with 2 workers and 64 shards, 16× the design fleet's 250. */
  racksMax: 10_000,
  /** Seconds ahead of the core's clock a rack second may be (400 `future` beyond): a sender's
   * clock an hour off is a clock to fix, and such a block would wait in the head until then. */
  futureSecondsMax: 3600,
  /** Stored queries per core. */
  storedQueriesMax: 1000,
  /** Windows one stored query evaluates per scheduler tick (catch-up after downtime spreads over ticks). */
  windowsPerTickMax: 720,
  /** Distinct late seconds remembered for re-evaluation between ticks. */
  lateSecondsMax: 100_000,
  /** Registry last-seen times are persisted this often: those due (below). */
  registrySaveMs: 10_000,
  /**
   * A server's or metric's last-seen time is written again once it moved on by this much plus a
   * jitter of up to as much again per entry, so a save writes a share of the entries, not all
   * (a million metrics rewritten every 10 s held each worker ~2.3 s). Retirement keeps four
   * times this as a margin: the times on disk lag by up to twice it, and by a pass over every
   * entry more when more are due than saves write (2,000,000 metrics: ~17 minutes).
   */
  lastSeenSaveMs: 10 * 60_000,
  /** One-second samples of the ingest counters behind the dashboard's rates: rates over 10 s. */
  statusSamplesMax: 11,
  /** New metrics one server may introduce: 10× the design's 2,000 per server. A server that
   * mints names (a request id in a metric name) fills its own budget, not the whole registry;
   * its further new metrics are refused and their points dropped, both counted. */
  metricsPerServerMax: 20_000,

  // HTTP API (issue 8).
  /** Lines in a tokens file: far above any team's tokens; bounds start-up and SIGHUP work. */
  tokenLinesMax: 100_000,
  /** Characters of a presented token: ours are 47; longer ones are refused before hashing. */
  tokenCharsMax: 512,
  /** Racks one ingest token may name in racks= (issue 16.3): a rack has its own token, a relay
   * a few dozen; a token for more uses racks=*. Bounds a line's parse and its set. */
  tokenRacksMax: 1000,
  /** A rack's status report is dropped from the fleet view this long after it was sent (issue
   * 16.3: the table expires entries). Racks report every 5 s; 10 min spans a rack restart and a
   * short core-rack partition, and a retired or renamed rack leaves the table on its own. */
  rackReportTtlMs: 10 * 60_000,
  /** Query API requests per second per token (or client address): a dashboard refreshing a
   * dozen panels stays far below; a script in a loop is slowed before it starves ingest of CPU. */
  queryRatePerSecond: 20,
  /** Requests a client may make at once after being idle: a dashboard loading every panel. */
  queryBurst: 100,
  /** Cost of an ad-hoc query in rate-limit tokens: it evaluates from storage (ms to 100s of ms
   * of CPU), where a list or stored result is served from memory. */
  adHocQueryCost: 5,
  /** Live (SSE) streams one client (token name, or client address when auth is off) may hold
   * at once: a tenth of the node's subscribersMax (1,000), so one token cannot take every slot
   * (issue 16.10). A dashboard holds one multiplexed stream per open tab. */
  liveStreamsPerClientMax: 100,
  /** Cost of opening a live stream in rate-limit tokens (issue 16.10): it holds a connection
   * and a queue for as long as the client likes, so it costs as much as an ad-hoc query; a
   * client can open queryBurst / liveStreamCost = 20 at once, then 4 a second. */
  liveStreamCost: 5,
  /** Rate-limit buckets kept (one per token name or client address); the least recently used
   * goes beyond it, so a flood of addresses costs bounded memory. */
  rateBucketsMax: 10_000,
  /** Body of a stored-query create or edit: a 4,096-character query and a 200-character name
   * as JSON, with room for escaping. */
  queryBodyBytesMax: 16 * 1024,
  /** Range of an ad-hoc query: it reads every block of the range from storage; longer ranges
   * belong to stored queries. */
  adHocRangeMsMax: 31 * 86_400_000,
  /** Range of a stored query's results request: the longest retention (10 years). */
  resultsRangeMsMax: 10 * 366 * 86_400_000,

  // Evaluation (issue 16.1, 16.11): what one evaluation may cost its worker, which meanwhile
  // ingests nothing for its shards.
  /** Time budget of one ad-hoc evaluation: past it the evaluation stops and the API answers 503
   * with the reason. A day of a 1,000-server gauge reads ~1,440 rows in well under 1 s on the
   * development box; 2 s is a stall the racks absorb (they spool and retry), not an outage. */
  adHocEvalMs: 2_000,
  /** Time budget of one stored query's tick (its new windows and revisions): past it the tick
   * is abandoned (counted), and retried later with a quarter of the windows per evaluation. */
  storedEvalMs: 1_000,
  /** Longest wait before a stored query that ran past its budget is tried again (the wait
   * doubles from storedEvalMs with each failure in a row), so a query that never fits costs its
   * worker at most storedEvalMs a minute. */
  storedEvalRetryMaxMs: 60_000,
  /** Rows and blocks passed between two looks at the clock (visited or not): a row decodes in
   * tens of µs, a clock read is ~50 ns, so the check is free and the budget is overrun by a few rows at most. */
  evalBudgetCheckRows: 8,
  /** Exact values held at once by one evaluation for percentiles of gauges and counters
   * (issue 16.11): 1 M doubles, 8 MB (16 MB with array growth). Past it the window holding the
   * most values switches to a sketch (1% relative error, DESIGN §3), and its result says so
   * ("sketched": true). `FROM * SELECT g WINDOW 1d COMPUTE p99` at 10,000 servers is 864 M values. */
  evalExactValuesMax: 1_000_000,
  /** Windows one evaluation computes: the answer bound (routes' windowsPerAnswerMax) plus the
   * window that contains `from`. Beyond it an evaluation is refused, never attempted. */
  evalWindowsMax: 3601,
} as const;

export type CoreLimits = { -readonly [K in keyof typeof coreLimits]: number };

// An ad-hoc query must fit in a full bucket, or no client could ever run one; a live stream too.
assert(coreLimits.queryBurst >= coreLimits.adHocQueryCost, 'BUG: queryBurst < adHocQueryCost');
assert(coreLimits.queryBurst >= coreLimits.liveStreamCost, 'BUG: queryBurst < liveStreamCost');
// A stored query's tick must be able to evaluate at least one window within its budget's back-off.
assert(coreLimits.storedEvalRetryMaxMs >= coreLimits.storedEvalMs, 'BUG: storedEvalRetryMaxMs < storedEvalMs');
