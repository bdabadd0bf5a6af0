// Where a worker's shards live (issue 12, DESIGN §9): one LMDB environment per worker holding
// all its shards (keys prefixed by shard), or one environment per shard. Every request carries
// a section for most shards, and each must be durable before the request is acknowledged: in one
// environment that is one synced commit per request; with an environment per shard it is one
// synced commit per shard touched. This measures both on this machine's disk.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Database, RootDatabase } from 'lmdb';
import { openLmdb } from '../lib/lmdb.js';
import type { Figure } from './bench-edge.js';

/** Sections of one request as one worker of two sees them: S = 64 shards, 32 per worker. */
const shardsPerWorker = 32;
/** A rack second of 40 servers × 2,000 gauges is ~1 MB: ~30 KB per shard section. */
const sectionBytes = 30 * 1024;

function run(label: string, envs: { root: RootDatabase; db: Database<Buffer, Buffer> }[], shardOfEnv: (e: number) => number[], seconds: number): { requestsPerSecond: number; commitsPerRequest: number } {
  const section = Buffer.alloc(sectionBytes, 7);
  const key = Buffer.alloc(8);
  let requests = 0;
  let commits = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    for (let e = 0; e < envs.length; e++) {
      const { root, db } = envs[e]!;
      root.transactionSync(() => {
        for (const shard of shardOfEnv(e)) {
          key.writeUInt16BE(shard, 0);
          key.writeUIntBE(requests, 2, 6);
          void db.put(Buffer.from(key), section);
        }
      });
      commits++;
    }
    requests++;
  }
  const elapsed = (performance.now() - t0) / 1000;
  if (requests === 0) throw new Error(`bench stores (${label}): no request committed in ${seconds} s`);
  return { requestsPerSecond: requests / elapsed, commitsPerRequest: commits / requests };
}

export function storeLayoutFigures(quick: boolean): Figure[] {
  const seconds = quick ? 2 : 6;
  const dir = mkdtempSync(join(tmpdir(), 'apm-bench-stores-'));
  try {
    const open = (path: string) => {
      const root = openLmdb({ path, mapSize: 1 << 30, maxDbs: 2 });
      return { root, db: root.openDB<Buffer, Buffer>({ name: 'wal', encoding: 'binary', keyEncoding: 'binary' }) };
    };
    const one = [open(join(dir, 'worker'))];
    const perWorker = run('one environment per worker', one, () => Array.from({ length: shardsPerWorker }, (_, k) => k), seconds);
    const many = Array.from({ length: shardsPerWorker }, (_, k) => open(join(dir, `shard-${k}`)));
    const perShard = run('one environment per shard', many, (e) => [e], seconds);
    for (const e of [...one, ...many]) void e.root.close();
    return [
      { name: `requests/s, ${shardsPerWorker} sections of ${sectionBytes / 1024} KiB each, one environment per worker (1 synced commit each)`, value: perWorker.requestsPerSecond, unit: 'req/s' },
      { name: `requests/s, the same with one environment per shard (${perShard.commitsPerRequest} synced commits each)`, value: perShard.requestsPerSecond, unit: 'req/s' },
      { name: 'environment per worker ÷ environment per shard', value: perWorker.requestsPerSecond / perShard.requestsPerSecond, unit: '×' },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
