// `apm core`: options → Store + API + timers → signals (STYLE "Thin entry points").

import { mkdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parseBytes, parseDurationMs, parseHostPort, parseIntOption, parseFlags, UsageError } from '../lib/args.js';
import { ApiAuth, TokenFileError, TokenSet } from './auth.js';
import { coreLimits } from './limits.js';
import { serveHttp } from './http-server.js';
import { RateLimiter } from './ratelimit.js';
import { LayoutError } from './layout.js';
import { openNode, type CoreNode } from './node.js';
import { guardLmdbRejections } from '../lib/lmdb.js';
import { clusterHelp, clusterOptionSpec, joinCluster, type ClusterStart } from './cluster/start.js';
import { copyShardFrom } from './cluster/snapshot-routes.js';
import { copiesDir, recoverStagedCopies } from './cluster/staged-copy.js';
import { clusterMetrics, clusterStatus } from './cluster/status.js';
import { RackSeconds } from './cluster/racks-seen.js';
import { LogIngest } from './cluster/ingest.js';
import type { PromText } from '../lib/prom.js';
import { shardsDefault, shardsMax } from '../schema/limits.js';

export const coreHelp = `apm core: stores every per-second point and serves the API and dashboard

Usage: apm core --listen 127.0.0.1:8080 --data <dir> [options]

  --listen <host:port>   HTTP address (default 127.0.0.1:8080)
  --data <dir>           data directory (default ./data/core)
  --workers <n>          worker threads that own the shards and do all storage and query work
                         (default: this machine's available parallelism, ${availableParallelism()}); a data
                         directory keeps as many stores as workers it was created with, and runs at
                         most that many workers
  --shards <n>           S, shards of a new data directory: a power of two in 1..${shardsMax} (default
                         ${shardsDefault}); fixed once created (metric hash mod S picks a metric's shard)
  --retention <dur>      keep data this long, e.g. 365d, 12h (default 365d)
  --disk-bytes-max <sz>  storage budget, e.g. 500GiB: ingest answers 503 (racks spool) once the
                         data in use reaches it, and resumes when retention frees room (default: none;
                         ingest also answers 503 when the file system has < 256 MiB free)
  --query-lateness <d>   a stored-query window is evaluated this long after it ends (default 3s:
                         the racks' 2 s lateness plus forwarding); later data revises it
  --tokens <file>        API tokens, one "<sha256 hex> <role> <name>" a line (roles read, write,
                         ingest, admin; an ingest line ends in racks=<id>,… or racks=*: the racks
                         it may send for); create entries with 'apm token create'. Reread on SIGHUP.
                         Without it the API is open, which is allowed only on loopback.
  --query-rate <n>       query API requests per second per token, or per client address without
                         --tokens (burst ${coreLimits.queryBurst}; an ad-hoc query costs ${coreLimits.adHocQueryCost}; 0: no limit).
                         Default ${coreLimits.queryRatePerSecond} with --tokens, 0 without (on loopback every client is you)
  --help                 this text

${clusterHelp}

Stops on SIGINT/SIGTERM after writing what it holds.`;

const loopback = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

export async function main(argv: string[]): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      listen: { type: 'string', default: '127.0.0.1:8080' },
      data: { type: 'string', default: './data/core' },
      workers: { type: 'string' },
      shards: { type: 'string' },
      retention: { type: 'string', default: '365d' },
      'disk-bytes-max': { type: 'string' },
      'query-lateness': { type: 'string', default: '3s' },
      tokens: { type: 'string' },
      'query-rate': { type: 'string' },
      ...clusterOptionSpec,
      help: { type: 'boolean', default: false },
    },
    coreHelp,
  );
  if (values.help) {
    console.log(coreHelp);
    return;
  }
  // A full disk must not end the core (issue 8): lmdb-js may leave a failed commit's rejection unhandled
  // (each worker guards its own thread the same way).
  let lmdbLogged = 0;
  guardLmdbRejections((message) => {
    if (Date.now() - lmdbLogged > 10_000) console.error(`core: an LMDB write failed (${message}); free disk space — the write is retried or refused with 503`);
    lmdbLogged = Date.now();
  });
  const listen = parseHostPort(values.listen!, '--listen');
  if (!loopback.test(listen.host) && values.tokens === undefined) {
    throw new UsageError(
      `--listen ${values.listen}: listening beyond loopback needs API tokens, or anyone who can reach the port can read and delete everything. Create a tokens file with 'apm token create --role admin --name me --tokens /etc/apm/tokens', then start with --tokens /etc/apm/tokens (or bind to 127.0.0.1)`,
    );
  }
  const auth = new ApiAuth({ tokens: values.tokens === undefined ? null : readTokens(values.tokens) });
  const queryRate = parseIntOption(values['query-rate'], '--query-rate', values.tokens === undefined ? 0 : coreLimits.queryRatePerSecond, 0, 1_000_000);
  const retentionMs = parseDurationMs(values.retention!, '--retention', 5_000, 10 * 365 * 86_400_000);
  mkdirSync(values.data!, { recursive: true });
  const workers = parseIntOption(values.workers, '--workers', availableParallelism(), 1, 256);
  const shards = values.shards === undefined ? undefined : parseIntOption(values.shards, '--shards', shardsDefault, 1, shardsMax);
  if (shards !== undefined && (shards & (shards - 1)) !== 0) throw new UsageError(`--shards ${shards}: must be a power of two (metric hash mod S must be a mask); try ${2 ** Math.round(Math.log2(shards))}`);
  // A cluster node agrees on the settings first: the data directory's S must be the cluster's.
  let cluster: ClusterStart | null = null;
  let opened: CoreNode | null = null;
  if (values.nats !== undefined) {
    cluster = await joinCluster(values, {
      listenUrl: `http://${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}`,
      listenHost: listen.host,
      tokens: values.tokens !== undefined,
      workers,
      shardsWanted: shards,
      shardsDefault,
      copyShard: (fromUrl, shard, authorization) => {
        if (opened === null) return Promise.reject(new Error('the workers are not running yet'));
        return copyShardFrom(opened.pool, fromUrl, shard, authorization, copiesDir(values.data!)).then((r) => r.applied);
      },
    });
  } else {
    const given = Object.keys(clusterOptionSpec).filter((k) => k !== 'nats' && values[k as keyof typeof values] !== undefined);
    if (given.length > 0) throw new UsageError(`--${given.join(', --')} ${given.length === 1 ? 'needs' : 'need'} --nats (they configure a cluster node)`);
  }
  const logIngest = cluster === null ? null : new LogIngest(cluster.node.jetstream, cluster.settings.shards);
  if (logIngest !== null) logIngest.accepts = { retentionSeconds: Math.floor(retentionMs / 1000), futureSecondsMax: coreLimits.futureSecondsMax, blockSeconds: coreLimits.blockSeconds };
  // Re-publishes what it acknowledged when its connection to NATS comes back (core/cluster/ingest.ts).
  if (cluster !== null) void logIngest!.watch(cluster.node.nc).catch((err: unknown) => console.error(`apm core: following the NATS connection failed: ${(err as Error).message}`));
  let node: CoreNode;
  try {
    node = await openNode({
      dataDir: values.data!,
      workers,
      shards: cluster?.settings.shards ?? shards,
      cluster: cluster?.node,
      // A cluster made before the pack holds owners that would refuse packed sections.
      pointPack: cluster === null || cluster.settings.pointPack === true,
      ...(cluster === null ? {} : { ingest: (body: Uint8Array, may: (rack: string) => boolean) => logIngest!.ingest(body, may), metricsExtra: (p: PromText) => clusterMetrics(p, cluster!.node, opened?.pool.streamRefused ?? {}, logIngest!), clusterStatus: () => clusterStatus(cluster!.node) }),
      retentionSeconds: Math.floor(retentionMs / 1000),
      queryLatenessMs: parseDurationMs(values['query-lateness']!, '--query-lateness', 0, 600_000),
      diskBytesMax: values['disk-bytes-max'] === undefined ? 0 : parseBytes(values['disk-bytes-max'], '--disk-bytes-max', 1024 * 1024, 2 ** 50),
      auth,
      queryRate: queryRate === 0 ? undefined : new RateLimiter({ ratePerSecond: queryRate, burst: coreLimits.queryBurst, bucketsMax: coreLimits.rateBucketsMax }),
    });
  } catch (err) {
    if (err instanceof LayoutError) throw new UsageError(`--data ${values.data}: ${err.message}`);
    throw err;
  }
  opened = node;
  if (cluster !== null) {
    // The server list and the fleet view learn of racks from the seconds the consumers apply
    // (each second comes once per shard: core/cluster/racks-seen.ts notes it once).
    const racksSeen = new RackSeconds(coreLimits.racksMax);
    cluster.node.onApplied = (m) => {
      if (!racksSeen.note(m.rack, m.second)) return;
      node.servers.seen(m.rack, m.servers, Date.now());
      node.status.noteSecond(m.second);
    };
    // A copy that was replacing a shard when this process stopped is applied again from its
    // staged file before any stream is read (core/cluster/staged-copy.ts).
    await recoverStagedCopies(node.pool, values.data!, (line) => console.error(`apm core: ${line}`));
    cluster.node.attach(node.pool);
  }
  const { pool, servers, status, app } = node;
  const { port } = await serveHttp(app.fetch, listen.host, listen.port).catch((err: Error) => {
    throw new UsageError(`cannot listen on ${values.listen}: ${err.message} (another apm core?); choose another --listen`);
  });
  if (cluster !== null && values.url === undefined) cluster.node.setUrl(`http://${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${port}`);
  // Handlers go in before the ready line: whoever waits for that line may signal at once.
  const stop = async (signal: string) => {
    console.log(`apm core: ${signal}, writing what it holds`);
    clearInterval(sampleTimer);
    clearInterval(registryTimer);
    await cluster?.node.close();
    await node.close();
    await cluster?.nc.close().catch(() => undefined);
    process.exit(0);
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGHUP', () => reloadTokens(auth, values.tokens));
  const authNote = auth.tokens === null ? 'no auth (loopback dev default)' : `${auth.tokens.size} tokens from ${values.tokens}`;
  const clusterNote = cluster === null ? '' : `, node ${cluster.node.nodeId} of a cluster through ${values.nats}`;
  console.log(`apm core: http://${listen.host}:${port}/ (data ${values.data}, ${pool.shards} shards on ${pool.workers} workers, retention ${values.retention}, ${pool.counters.wal_replayed} sections replayed from the WAL, ${authNote}${clusterNote})`);
  const sampleTimer = setInterval(() => {
    const c = pool.stats().counters;
    status.sample(Date.now(), { points: (c.points_ingested ?? 0) + (c.summaries_ingested ?? 0), batches: pool.counters.requests_ingested, bytes: c.bytes_ingested ?? 0 });
    void servers.save({ all: false }).catch(() => undefined);
  }, 1000);
  const registryTimer = setInterval(() => void servers.save({ all: true }).catch(() => undefined), coreLimits.registrySaveMs);
}

function readTokens(file: string): TokenSet {
  try {
    return TokenSet.read(file);
  } catch (err) {
    if (err instanceof TokenFileError) throw new UsageError(`--tokens ${err.message}`);
    throw err;
  }
}

/** SIGHUP: the tokens file is read again; a bad file keeps the tokens in use (and says why). */
function reloadTokens(auth: ApiAuth, file: string | undefined): void {
  if (file === undefined || auth.tokens === null) {
    console.error('apm core: SIGHUP, but no --tokens file to reload (auth is off)');
    return;
  }
  try {
    auth.tokens = TokenSet.read(file);
    console.log(`apm core: SIGHUP, reloaded ${auth.tokens.size} tokens from ${file}`);
  } catch (err) {
    console.error(`apm core: SIGHUP, tokens file not reloaded, keeping the ${auth.tokens.size} tokens in use: ${(err as Error).message}`);
  }
}
