// Copying a shard between core nodes over HTTP (issue 13): the owner serves a consistent snapshot
// of one shard as a binary stream (core/snapshot.ts has the format), and a node that becomes an
// owner, or was away longer than the shard's stream keeps messages, streams it into its own
// store with copyShardFrom, then reads the rest from the stream from the snapshot's applied
// sequence. The route needs role admin when tokens are on (core/auth.ts accessFor).

import type { Hono } from 'hono';
import { request } from 'undici';
import type { ShardPool } from '../pool.js';
import { SnapshotError, snapshotIdleMs, type RestoreSummary } from '../snapshot.js';
import { applyStaged, stageSnapshot } from './staged-copy.js';

export const snapshotContentType = 'application/x-apm-shard-snapshot';
/** The snapshot route of a shard (relative to a node's base URL). */
export const snapshotPath = (shard: number) => `/api/v1/cluster/shards/${shard}/snapshot`;
/** How long the source may take to open a snapshot (its worker reads the first chunk) before the copy gives up. */
const copyHeadersTimeoutMs = 60_000;
/** Bytes of an error answer kept for the message (the rest is dropped). */
const errorBodyBytesMax = 4096;

/** GET /api/v1/cluster/shards/:shard/snapshot: the shard's snapshot, streamed chunk by chunk as the reader takes them. */
/**
 * `serves`: whether this node holds shard k whole now (an owner caught up, no copy into it under
 * way); a snapshot of anything else would hand a joiner partial data as if it were complete.
 */
export function addSnapshotRoutes(app: Hono, pool: ShardPool, serves: (shard: number) => boolean = () => true): void {
  app.get('/api/v1/cluster/shards/:shard/snapshot', async (c) => {
    const text = c.req.param('shard');
    const shard = /^[0-9]{1,5}$/.test(text) ? Number(text) : -1;
    if (shard < 0 || shard >= pool.shards) return c.json({ error: `shard ${JSON.stringify(text.slice(0, 20))} is not in 0..${pool.shards - 1}` }, 400);
    if (!serves(shard)) return c.json({ error: `this node does not hold shard ${shard} whole now (not an owner that has caught up, or a copy into it is under way): copy it from another owner`, reason: 'snapshot_unavailable' }, 503);
    const it = pool.snapshotShard(shard);
    let first: IteratorResult<Uint8Array, void>;
    try {
      // The first chunk before the answer: a worker with no room for another cursor is a 503, not a broken stream.
      first = await it.next();
    } catch (err) {
      return c.json({ error: `snapshot of shard ${shard} not available: ${(err as Error).message}`, reason: 'snapshot_unavailable' }, 503);
    }
    const body = new ReadableStream<Uint8Array>(
      {
        start(controller) {
          if (first.done === true) controller.close();
          else controller.enqueue(first.value);
        },
        // One chunk at a time, when the socket has taken the previous one (highWaterMark 1).
        async pull(controller) {
          try {
            const r = await it.next();
            if (r.done === true) controller.close();
            else controller.enqueue(r.value);
          } catch (err) {
            // The reader sees a stream without its end record: a truncated copy it refuses whole.
            console.error(`core: snapshot of shard ${shard} failed mid-way: ${(err as Error).message}`);
            controller.error(err);
          }
        },
        async cancel() {
          await it.return();
        },
      },
      { highWaterMark: 1 },
    );
    return c.body(body, 200, { 'content-type': snapshotContentType, 'cache-control': 'no-store' });
  });
}

/**
 * Copies shard `shard` from the node at `baseUrl` into this node's store (replacing what it held
 * of the shard) and returns what the restore put in place; `authorization` is sent as is (an
 * admin token's "Bearer …" when the source has tokens on). The copy is staged whole in
 * `stageDir` first (core/cluster/staged-copy.ts): a download that fails leaves the shard as it
 * was; a restore that fails after it leaves the shard empty, marked restoring.
 */
export async function copyShardFrom(pool: ShardPool, baseUrl: string, shard: number, authorization: string | undefined, stageDir: string): Promise<RestoreSummary> {
  const url = `${baseUrl.replace(/\/+$/, '')}${snapshotPath(shard)}`;
  let res: Awaited<ReturnType<typeof request>>;
  try {
    res = await request(url, { method: 'GET', headers: authorization === undefined ? {} : { authorization }, headersTimeout: copyHeadersTimeoutMs, bodyTimeout: snapshotIdleMs });
  } catch (err) {
    throw new SnapshotError(`copying shard ${shard}: GET ${url} failed (${(err as Error).message}); is the source node up?`, { cause: err });
  }
  if (res.statusCode !== 200) {
    const detail = await boundedText(res.body);
    throw new SnapshotError(`copying shard ${shard}: GET ${url} answered ${res.statusCode}: ${detail}`);
  }
  const type = res.headers['content-type'];
  if (type !== snapshotContentType) {
    res.body.destroy();
    throw new SnapshotError(`copying shard ${shard}: GET ${url} answered ${String(type)}, not ${snapshotContentType}: is it an apm core?`);
  }
  let staged: { path: string; bytes: number };
  try {
    staged = await stageSnapshot(stageDir, shard, res.body);
  } catch (err) {
    throw new SnapshotError(`copying shard ${shard} from ${baseUrl}: ${(err as Error).message}; what this node held of the shard is untouched`, { cause: err });
  } finally {
    // A download that failed mid-way stops reading: the connection goes.
    if (!res.body.readableEnded) res.body.destroy();
  }
  return applyStaged(pool, staged.path, shard);
}

async function boundedText(body: AsyncIterable<Buffer> & { destroy(): void }): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const b of body) {
    parts.push(b.subarray(0, errorBodyBytesMax - n));
    n += Math.min(b.length, errorBodyBytesMax - n);
    if (n >= errorBodyBytesMax) break;
  }
  body.destroy();
  return Buffer.concat(parts).toString('utf8');
}
