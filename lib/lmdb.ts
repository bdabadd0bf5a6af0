// LMDB as every tier opens it (core store, rack spool). Two lmdb-js behaviours would turn a full
// disk into a crash (an unhandled rejection ends a Node process), found with a real full tmpfs:
// - with event-turn batching (its default), each batch starts with an internal write whose
//   promise nobody holds; when the commit fails, that promise rejects unhandled;
// - a failed commit's error carries `commitError`, a second rejected promise (lmdb-js #368).
// So batching is off (our writes are explicit transactions, one per batch or second) and every
// caller that catches a write error passes it through `writeFailure`.

import { open, type Database, type Key, type RootDatabase, type RootDatabaseOptionsWithPath } from 'lmdb';

/**
 * Deletes the keys of `db` in [start, end) in synced transactions of at most `batch` keys,
 * letting the event loop run between them (retention sweeps: ingest and queries go on). Returns
 * how many went. `stopped`: asked before each batch; true ends the sweep there (the environment
 * is about to close; the next sweep goes on from what is left).
 */
export async function deleteRange<K extends Key>(env: RootDatabase, db: Database<unknown, K>, start: K, end: K, batch: number, stopped: () => boolean = () => false): Promise<number> {
  let deleted = 0;
  for (;;) {
    if (stopped()) return deleted;
    const keys = [...db.getKeys({ start, end, limit: batch })];
    if (keys.length === 0) return deleted;
    env.transactionSync(() => {
      for (const k of keys) void db.remove(k);
    });
    deleted += keys.length;
    if (keys.length < batch) return deleted;
    await new Promise((r) => setImmediate(r));
  }
}

/** Failed commits that reached the process guard below (exported at each daemon's /metrics). */
export const lmdbCounters = { commit_failures_unhandled: 0 };

/** Opens an LMDB environment with the options a full disk needs (see above). */
export function openLmdb(opts: RootDatabaseOptionsWithPath): RootDatabase {
  return open({ ...opts, eventTurnBatching: false });
}

/** How long closeLmdb waits for lmdb-js before it gives up on a flush that will not come. */
export const closeWaitMs = 2000;

/**
 * Closes an environment, waiting at most `waitMs`. After a commit failed (a full disk) and
 * before one succeeds, lmdb-js' close waits for a flush promise of the failed commit that never
 * settles, so a daemon stopping while its disk is full would wait for good. Leaving without it is
 * safe: LMDB aborted the failed transaction, and its files are consistent without a close.
 * Returns whether the close finished.
 */
export async function closeLmdb(env: RootDatabase, what: string, waitMs = closeWaitMs): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const gaveUp = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), waitMs);
    timer.unref();
  });
  try {
    const closed = await Promise.race([env.close().then(() => true as const), gaveUp]);
    if (!closed) console.error(`${what}: LMDB did not close within ${waitMs} ms (a commit failed before, e.g. the disk is full); leaving it open: its files are consistent`);
    return closed;
  } finally {
    clearTimeout(timer);
  }
}

/** The message of a failed LMDB write, after handling its companion `commitError` rejection. */
export function writeFailure(err: unknown): string {
  const e = err as { message?: string; commitError?: Promise<unknown> };
  e.commitError?.catch(() => undefined);
  return e.message ?? String(err);
}

/**
 * For daemons: a rejection that lmdb-js raised for a failed commit and nobody handled (a write
 * whose caller has no `writeFailure`, or lmdb-js' own) is counted through `onFailure` instead of
 * ending the process — the write's own caller already sees and handles the failure. Any other
 * unhandled rejection is still a bug and still crashes the process.
 */
export function guardLmdbRejections(onFailure: (message: string) => void): void {
  process.on('unhandledRejection', (reason) => {
    const stack = reason instanceof Error ? (reason.stack ?? '') : '';
    // A failed commit: lmdb-js' "Commit failed" (with commitError) or the system error behind it
    // (numeric code). Our own exceptions inside a transaction callback are neither: they crash.
    const e = reason as { commitError?: unknown; code?: unknown };
    const commitFailure = e !== null && typeof e === 'object' && (e.commitError !== undefined || typeof e.code === 'number');
    if (commitFailure && /[\\/]node_modules[\\/]lmdb[\\/]/.test(stack)) {
      lmdbCounters.commit_failures_unhandled++;
      onFailure(writeFailure(reason));
      return;
    }
    throw reason;
  });
}
