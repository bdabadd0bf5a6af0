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
  /** Distinct metrics the registry tracks (hash → name, kind). */
  metricsMax: 2_000_000,
  /** LMDB map size: address space reserved (lmdb-js grows it on demand; --disk-bytes-max is the budget). */
  mapBytes: 1024 ** 4,
  /** Free file-system space below which ingest answers 503 (room for LMDB to finish its work). */
  diskReserveBytes: 256 * 1024 * 1024,
  /** Longest a row-writing transaction runs before its worker turns to ingest again (issue 12:
   * no shard stops ingesting for more than about 50 ms, whatever the fleet size). */
  rowSliceMs: 20,
  /** A worker that has not answered a request in this time gets it answered 503 (racks retry). */
  workerRequestTimeoutMs: 30_000,
  /** The meta environment holds stored-query definitions and the server list: small. */
  metaMapBytes: 1024 ** 3,
  /** Retention sweep period. */
  retentionSweepMs: 10_000,
  /** Servers and racks the registry accepts: 10× the design fleet. */
  serversMax: 100_000,
  racksMax: 10_000,
  /** Stored queries per core. */
  storedQueriesMax: 1000,
  /** Windows one stored query evaluates per scheduler tick (catch-up after downtime spreads over ticks). */
  windowsPerTickMax: 720,
  /** Distinct late seconds remembered for re-evaluation between ticks. */
  lateSecondsMax: 100_000,
  /** Registry last-seen times are persisted this often. */
  registrySaveMs: 10_000,
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
  /** Query API requests per second per token (or client address): a dashboard refreshing a
   * dozen panels stays far below; a script in a loop is slowed before it starves ingest of CPU. */
  queryRatePerSecond: 20,
  /** Requests a client may make at once after being idle: a dashboard loading every panel. */
  queryBurst: 100,
  /** Cost of an ad-hoc query in rate-limit tokens: it evaluates from storage (ms to 100s of ms
   * of CPU), where a list or stored result is served from memory. */
  adHocQueryCost: 5,
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
} as const;

export type CoreLimits = { -readonly [K in keyof typeof coreLimits]: number };

// An ad-hoc query must fit in a full bucket, or no client could ever run one.
assert(coreLimits.queryBurst >= coreLimits.adHocQueryCost, 'BUG: queryBurst < adHocQueryCost');
