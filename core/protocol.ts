// Messages between the HTTP thread (core/pool.ts) and a worker (core/worker.ts).

import type { ExportChunk } from './history/export.js';
import type { Layout } from './layout.js';
import type { WindowResult } from './query/eval.js';
import type { RestoreSummary } from './snapshot.js';
import type { StoredOptions, StoredQuery } from './query/stored.js';
import type { RequestHeader, StoreIngestResult, StoreOptions } from './store.js';

export interface WorkerConfig {
  worker: number;
  dataDir: string;
  layout: Layout;
  /** The stores this worker owns. */
  stores: number[];
  /** Shards of each store, by store index. */
  shardsOfStore: Record<number, number[]>;
  store: Omit<StoreOptions, 'dir' | 'shards'>;
  stored: StoredOptions;
  retentionSweepMs: number;
  registrySaveMs: number;
  /** Added to the process' nice value for the worker thread (core/limits.ts workerNice). */
  nice: number;
  /** Tests: the thread is busy this long before it opens its stores, as during a long WAL replay. */
  stallStartMs?: number;
}

/** Sections of one request for one worker: byte ranges of `buf` (each 8-byte aligned). */
export interface SectionRef {
  shard: number;
  start: number;
  end: number;
}

export type ToWorker =
  | { t: 'ingest'; id: number; h: RequestHeader; sections: SectionRef[]; buf: ArrayBuffer }
  /** `json`: the windows answered as their JSON text (`windowsJson`), for the HTTP thread to send as it is. */
  | { t: 'query'; id: number; query: string; fromSec: number; toSec: number; json?: boolean; /** false: evaluate every window, keep none (core/query/windowcache.ts). */ cache?: boolean; /** Date.now() past which nobody awaits the answer: not evaluated then. */ deadlineMs?: number }
  | { t: 'export'; id: number; metric: string; fromSec: number; toSec: number; entriesMax: number; /** The chunk's first rack id in fromSec's block (core/history/export.ts). */ rackFrom: number }
  | { t: 'sync'; id: number; defsByStore: Record<number, StoredQuery[]>; elsewhereByStore: Record<number, StoredQuery[]> }
  | { t: 'results'; id: number; metric: string; qid: string; fromMs: number; toMs: number; limit: number; newest: boolean }
  /** Windows of stored queries another cluster node evaluated, for the store of `metric` (StoredQueries.adopt). */
  | { t: 'adoptWindows'; id: number; metric: string; windows: { qid: string; query: string; json: string }[] }
  | { t: 'metrics'; id: number }
  | { t: 'streamSeqs'; id: number }
  /** The stream creation time a shard's store last saw (`created`: note this one). */
  | { t: 'streamCreated'; id: number; shard: number; created?: string }
  | { t: 'streamMark'; id: number; shard: number }
  | { t: 'streamSkip'; id: number; shard: number; seq: number; after: number }
  | { t: 'streamRebase'; id: number; shard: number; seq: number }
  | { t: 'streamRestart'; id: number; shard: number }
  | { t: 'stats'; id: number }
  | { t: 'flush'; id: number; nowMs: number }
  | { t: 'tick'; id: number; nowMs: number }
  | { t: 'stop'; id: number }
  /** Tests: the worker throws an error nothing catches (a worker that dies is restarted from its WAL), or with `nextIngest`, its next commit of ingest requests throws. */
  | { t: 'fail'; id: number; nextIngest?: boolean }
  /** Tests: the thread answers, then is busy for `ms` (at most 10 s), as in a long synchronous step. */
  | { t: 'stall'; id: number; ms: number }
  // Shard snapshots (issue 13, core/snapshot.ts): a cursor answers one chunk per request; a
  // restore takes batches of whole records between its begin (wipe) and its end (applied seq).
  | { t: 'snapshotOpen'; id: number; shard: number }
  | { t: 'snapshotNext'; id: number; cursor: number }
  | { t: 'snapshotClose'; id: number; cursor: number }
  | { t: 'restoreBegin'; id: number; shard: number }
  | { t: 'restoreBatch'; id: number; shard: number; buf: ArrayBuffer }
  | { t: 'restoreEnd'; id: number; shard: number }
  | { t: 'restoreAbort'; id: number; shard: number };

export interface WorkerStats {
  counters: Record<string, number>;
  rejected: Record<string, number>;
  heldBytes: number;
  /** WAL bytes whose rows are not written yet. */
  walBytes: number;
  /** Bytes the WAL's files take (their high-water marks; diskBytes includes them). */
  walFileBytes: number;
  diskBytes: number;
  usedBytes: number;
  lagSeconds: number;
  /** Longest row-writing slice since the previous report (ms). */
  sliceMsMax: number;
  servers: number;
  metrics: number;
  storedQueries: number;
  /** Sum of its stores' Registry.namesVersion: unchanged, the metric names it lists are too. */
  namesVersion: number;
}

export interface WorkerMetric {
  name: string | null;
  kind: number;
  firstSeenMs: number;
  lastSeenMs: number;
}

export type Reply = { t: 'reply'; id: number; error?: string; result?: StoreIngestResult;
  /** An ingest request's buffer, handed back (transferred) for reuse once the store copied what it keeps. */
  buf?: ArrayBuffer; windows?: WindowResult[]; windowsJson?: string; json?: string[]; adopted?: number; metrics?: WorkerMetric[]; stats?: WorkerStats; chunk?: ExportChunk; seqs?: Record<number, number>; skip?: string; created?: string | null; mark?: { seq: number; ms: number } | null;
  /** A snapshot cursor's next chunk (transferred; empty when done). */
  snapshot?: { cursor: number; bytes: ArrayBuffer; done: boolean };
  restored?: Omit<RestoreSummary, 'bytes'>;
};

export type ToMain = Reply | { t: 'ready'; replayed: number } | { t: 'window'; qid: string; w: WindowResult; /** The text it was evaluated for (an edit may have changed it since). */ query: string } | { t: 'stats'; stats: WorkerStats } | { t: 'log'; message: string };

/**
 * The answer for a request refused in two places (two stores of a worker, two workers): a
 * retryable refusal (503) wins over a final one (400), else the first stands. A rack drops a
 * body answered 400, so a 400 for one malformed section must not hide a 503 (storage full, a
 * worker away) for sections that were valid and not stored; on the retry the stored ones are
 * duplicates and the malformed one is refused again, alone.
 */
export function worseIngest<T extends { status: number }>(a: T, b: T): T {
  return a.status !== 503 && b.status === 503 ? b : a;
}
