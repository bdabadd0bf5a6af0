// Every bound of the core in one place, each with why it has its value.

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
} as const;

export type CoreLimits = { -readonly [K in keyof typeof coreLimits]: number };
