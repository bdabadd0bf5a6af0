// A shard copied from another node is first written whole to a file of this node's data
// directory (`copies/shard-<k>.snap`), its records checked (CRCs, the end record last), and only
// then replaces what this node held of the shard (core/pool.ts restoreShard: the worker empties
// the shard, then takes the records). Before, the shard was emptied as soon as the source
// answered: a source that died mid-copy left this node with nothing of the shard, and an owner
// behind its stream with no other owner alive then read only what the stream still held —
// up to a year of rows lost for a copy that failed. Now a failed download leaves the shard as it
// was (its owner can still read on from the stream with the gap counted), and a crash while the
// copy replaces the shard finds the whole file at the next start and applies it again
// (recoverStagedCopies). The cost is disk: a copy's size, for the few copies under way.

import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ShardPool } from '../pool.js';
import { isEndRecord, RecordFramer, SnapshotError, type RestoreSummary } from '../snapshot.js';

/** Where a data directory keeps copies being staged. */
export const copiesDir = (dataDir: string) => join(dataDir, 'copies');

const stagedName = (shard: number) => `shard-${shard}.snap`;

/** Bytes read from a staged file per chunk handed to the restore. */
const readChunkBytes = 1 << 20;

/**
 * Writes a snapshot stream to `<dir>/shard-<k>.snap`, checking each record as it arrives, and
 * makes it durable (fsync, then rename from `.part`, then the directory's fsync). Throws
 * SnapshotError for a stream that is corrupt, truncated or ends without its end record; the
 * partial file is removed. Returns the path and the stream's bytes.
 */
export async function stageSnapshot(dir: string, shard: number, chunks: AsyncIterable<Uint8Array>): Promise<{ path: string; bytes: number }> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, stagedName(shard));
  const part = `${path}.part`;
  const file = await open(part, 'w');
  const framer = new RecordFramer();
  let ended = false;
  try {
    for await (const chunk of chunks) {
      for (const rec of framer.push(chunk)) {
        if (ended) throw new SnapshotError(`the snapshot of shard ${shard} goes on after its end record: the stream is corrupt`);
        ended = isEndRecord(rec);
      }
      await file.write(chunk);
    }
    framer.end();
    if (!ended) throw new SnapshotError(`the snapshot stream of shard ${shard} is truncated: it stopped after ${framer.bytes} B without its end record`);
    await file.sync();
  } catch (err) {
    await file.close().catch(() => undefined);
    await rm(part, { force: true });
    if (err instanceof SnapshotError) throw err;
    throw new SnapshotError(`staging the copy of shard ${shard} in ${dir} failed: ${(err as Error).message}`, { cause: err });
  }
  await file.close();
  await rename(part, path);
  await syncDir(dir);
  return { path, bytes: framer.bytes };
}

/** The staged file's bytes as chunks, for ShardPool.restoreShard. */
async function* fileChunks(path: string): AsyncGenerator<Uint8Array> {
  for await (const chunk of createReadStream(path, { highWaterMark: readChunkBytes })) yield chunk as Buffer;
}

/**
 * Replaces this node's data of `shard` by a staged copy; the file is removed once the restore
 * recorded its applied sequence. A restore that fails leaves the file (a crash is taken up again
 * by recoverStagedCopies; a refused one is replaced by the next copy).
 */
export async function applyStaged(pool: ShardPool, path: string, shard: number): Promise<RestoreSummary> {
  const r = await pool.restoreShard(shard, fileChunks(path));
  await rm(path, { force: true });
  return r;
}

/**
 * At start, before the node reads any stream: a whole staged copy of a shard whose restore did
 * not complete (its applied sequence is the restoring marker) is applied again; other files (a
 * restore that completed before its file was removed, a `.part` of a download cut short) are
 * removed. Returns the shards restored.
 */
export async function recoverStagedCopies(pool: ShardPool, dataDir: string, log: (line: string) => void): Promise<number[]> {
  const dir = copiesDir(dataDir);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const seqs = await pool.streamSeqs();
  const restored: number[] = [];
  for (const name of names) {
    const path = join(dir, name);
    const m = /^shard-(\d+)\.snap$/.exec(name);
    const shard = m === null ? -1 : Number(m[1]);
    if (m === null || shard >= pool.shards || !((seqs[shard] ?? 0) < 0)) {
      await rm(path, { force: true });
      continue;
    }
    try {
      const r = await applyStaged(pool, path, shard);
      restored.push(shard);
      log(`shard ${shard}: its copy was interrupted while it replaced the shard; applied again from ${path} (${r.rows} rows, applied sequence ${r.applied})`);
    } catch (err) {
      log(`shard ${shard}: applying the staged copy ${path} again failed (${(err as Error).message}); the shard is copied from another owner`);
      await rm(path, { force: true });
    }
  }
  return restored;
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
