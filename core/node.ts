// One core node assembled (issue 12): the shard workers (core/pool.ts), the meta environment
// (stored-query definitions, server list) and the HTTP API on top. `apm core` and the tests
// build it the same way; the options default to the core's limits (core/limits.ts).

import { mkdirSync } from 'node:fs';
import type { Hono } from 'hono';
import type { RootDatabase } from 'lmdb';
import { openLmdb } from '../lib/lmdb.js';
import { createApi, type ApiOptions } from './api.js';
import type { ApiAuth } from './auth.js';
import { coreLimits } from './limits.js';
import { ShardPool } from './pool.js';
import { ClusterQueries } from './cluster/queries.js';
import type { ClusterView } from './cluster/view.js';
import { LmdbDefinitions, QueryCatalog } from './query/catalog.js';
import type { RateLimiter } from './ratelimit.js';
import { ServerTable } from './servers.js';
import { CoreStatus } from './status.js';

export interface NodeOptions {
  dataDir: string;
  workers: number;
  /** S for a new data directory. */
  shards?: number;
  retentionSeconds?: number;
  queryLatenessMs?: number;
  diskBytesMax?: number;
  diskReserveBytes?: number;
  auth?: ApiAuth;
  queryRate?: RateLimiter;
  /** Overrides of core/limits.ts (tests use small ones). */
  limits?: Partial<{ -readonly [K in keyof typeof coreLimits]: number }>;
  /** Write a block this long after it ends (default coreLimits.flushGraceMs). */
  flushGraceMs?: number;
  /**
   * A core cluster (issue 13; core/cluster/node.ts keeps it): stored queries live in KV
   * apm-queries and each is evaluated by its shard's first ready owner; the API proxies and fans
   * out (core/cluster/routes.ts). Absent: a single node (definitions in the meta environment).
   */
  cluster?: ClusterView;
  /** See ApiOptions.ingest (a cluster node: publish to the shards' streams). */
  ingest?: ApiOptions['ingest'];
  /** See ApiOptions.metricsExtra. */
  metricsExtra?: ApiOptions['metricsExtra'];
  /** See ApiOptions.clusterStatus. */
  clusterStatus?: ApiOptions['clusterStatus'];
  /** See ApiOptions.pointPack (a cluster node: what the cluster's settings say). */
  pointPack?: boolean;
}

export interface CoreNode {
  pool: ShardPool;
  servers: ServerTable;
  stored: QueryCatalog;
  status: CoreStatus;
  app: Hono;
  meta: RootDatabase;
  close(): Promise<void>;
}

export async function openNode(o: NodeOptions): Promise<CoreNode> {
  const L = { ...coreLimits, ...o.limits };
  mkdirSync(o.dataDir, { recursive: true });
  const pool = await ShardPool.open({
    dataDir: o.dataDir,
    workers: o.workers,
    shards: o.shards,
    store: {
      retentionSeconds: o.retentionSeconds ?? 365 * 86_400,
      blockSeconds: L.blockSeconds,
      mapBytes: L.mapBytes,
      diskBytesMax: o.diskBytesMax ?? 0,
      diskReserveBytes: o.diskReserveBytes ?? L.diskReserveBytes,
      flushGraceMs: o.flushGraceMs ?? L.flushGraceMs,
      headBytesMax: L.headBytesMax,
      walBacklogBytesMax: L.walBacklogBytesMax,
      metricsMax: L.metricsMax,
      metricsPerServerMax: L.metricsPerServerMax,
      serversMax: L.serversMax,
      racksMax: L.racksMax,
      futureSecondsMax: L.futureSecondsMax,
      sliceMs: L.rowSliceMs,
    },
    stored: { latenessMs: o.queryLatenessMs ?? 3000, windowsPerTickMax: L.windowsPerTickMax, lateSecondsMax: L.lateSecondsMax },
    retentionSweepMs: Math.min(L.retentionSweepMs, Math.max(1000, ((o.retentionSeconds ?? 365 * 86_400) * 1000) / 4)),
    registrySaveMs: L.registrySaveMs,
    requestTimeoutMs: L.workerRequestTimeoutMs,
    upResetMs: L.workerUpResetMs,
    silentMs: L.workerSilentMs,
    ingestWaitingMax: L.ingestWaitingPerWorkerMax,
    queriesWaitingMax: L.queriesWaitingPerWorkerMax,
  });
  const meta = openLmdb({ path: `${o.dataDir}/meta`, mapSize: L.metaMapBytes, maxDbs: 4 });
  const servers = new ServerTable(meta.openDB({ name: 'servers', encoding: 'json' }), L.serversMax, (o.retentionSeconds ?? 365 * 86_400) * 1000);
  const clusterQueries = o.cluster === undefined ? undefined : await ClusterQueries.open(o.cluster, pool, { queriesMax: L.storedQueriesMax });
  const stored = clusterQueries?.catalog ?? new QueryCatalog(new LmdbDefinitions(meta.openDB({ name: 'queries', encoding: 'json' })), pool, { queriesMax: L.storedQueriesMax });
  if (clusterQueries === undefined) await stored.start();
  const status = new CoreStatus({ racksMax: L.racksMax, samplesMax: L.statusSamplesMax });
  const app = createApi({ pool, servers, stored }, { ingestBodyBytesMax: L.ingestBodyBytesMax, status, auth: o.auth, queryRate: o.queryRate, cluster: o.cluster, clusterQueries, ingest: o.ingest, metricsExtra: o.metricsExtra, clusterStatus: o.clusterStatus, pointPack: o.pointPack });
  return {
    pool,
    servers,
    stored,
    status,
    app,
    meta,
    async close() {
      clusterQueries?.close();
      await servers.save({ all: true }).catch(() => undefined);
      await pool.close();
      await meta.close();
    },
  };
}
