// `apm core --nats …`: the cluster options of the core's command line, and joining (issue 13).
// core/main.ts calls clusterOptions() to read them and joinCluster() before it opens the data
// directory (the directory's S must be the cluster's).

import { readFileSync } from 'node:fs';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectNats, parseNatsUrls, type ClusterSettings, type NatsAuth } from '../../schema/log.js';
import { parseDurationMs, parseIntOption, UsageError } from '../../lib/args.js';
import { ClusterNode } from './node.js';

export const clusterHelp = `Cluster (without --nats the core runs alone):
  --nats <url,...>        join a cluster through these NATS servers (JetStream on): racks publish
                         to one stream per shard, every shard is owned by --replicas nodes
  --node <id>             this node's id, [A-Za-z0-9_-]{1,32} (required with --nats)
  --url <url>             this node's API as other nodes reach it (default http://<--listen>;
                         required when --listen is 0.0.0.0 or ::)
  --nats-creds <file>     NATS credentials (.creds); or --nats-user <name> --nats-password-file <file>
  --replicas <n>          nodes owning each shard (a cluster setting, default 2)
  --stream-replicas <n>   replicas of each shard's stream (a cluster setting; default: the NATS
                         URLs given, at most 3)
  --stream-max-age <dur>  a stream keeps messages this long (a cluster setting, default 24h); a
                         node further behind rebuilds the shard from a live owner's rows
  --replace-after <dur>   a dead owner's shards get a new owner after this long (default 60s)
  --cluster-token-file <file>  bearer token (role admin) this node sends to other nodes when it
                         copies a shard from them (required with --tokens)
Cluster settings are written by the first node; a node started with different ones refuses to start.`;

export const clusterOptionSpec = {
  nats: { type: 'string' },
  node: { type: 'string' },
  url: { type: 'string' },
  'nats-creds': { type: 'string' },
  'nats-user': { type: 'string' },
  'nats-password-file': { type: 'string' },
  replicas: { type: 'string' },
  'stream-replicas': { type: 'string' },
  'stream-max-age': { type: 'string' },
  'replace-after': { type: 'string' },
  'cluster-token-file': { type: 'string' },
} as const;

type ClusterValues = Partial<Record<keyof typeof clusterOptionSpec, string>>;

export interface ClusterStart {
  nc: NatsConnection;
  settings: ClusterSettings;
  node: ClusterNode;
  /** The Authorization header this node sends to other nodes (copying shards), or undefined. */
  authorization: string | undefined;
}

const nodeIdPattern = /^[A-Za-z0-9_-]{1,32}$/;

/**
 * Connects, agrees on the settings and joins. `shardsWanted` is --shards (absent: the cluster's,
 * or the default for the first node). `copyShard` is bound later, once the workers run.
 */
export async function joinCluster(
  v: ClusterValues,
  o: { listenUrl: string; listenHost: string; tokens: boolean; workers: number; shardsWanted: number | undefined; shardsDefault: number; copyShard: (fromUrl: string, shard: number, authorization: string | undefined) => Promise<number> },
): Promise<ClusterStart> {
  // Other nodes proxy queries to this URL and copy shards from it: it must reach this node.
  if (v.url === undefined && /^(0\.0\.0\.0|::|\[::\])$/.test(o.listenHost)) throw new UsageError(`--listen ${o.listenHost}: other nodes cannot reach ${o.listenUrl}; give --url with this node's address as they reach it (e.g. --url http://10.0.0.5:8080)`);
  if (v.url !== undefined && !/^https?:\/\/[^\s/]+/.test(v.url)) throw new UsageError(`--url ${v.url}: an http(s) URL other nodes reach this node at, e.g. http://10.0.0.5:8080`);
  // With tokens every node's API asks for one: a node copying a shard must show one (role admin).
  if (o.tokens && v['cluster-token-file'] === undefined) throw new UsageError("--tokens in a cluster needs --cluster-token-file: a node copying a shard from another shows that token (role admin in every node's --tokens file); without it every copy fails 401 and a joining node never becomes an owner");
  const urls = (() => {
    try {
      return parseNatsUrls(v.nats!);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  })();
  if (v.node === undefined || !nodeIdPattern.test(v.node)) throw new UsageError(`--node ${JSON.stringify(v.node ?? '')}: a cluster node needs an id like core-1 (${nodeIdPattern.source})`);
  if (v['nats-password-file'] !== undefined && v['nats-user'] === undefined) throw new UsageError('--nats-password-file needs --nats-user');
  const auth: NatsAuth = { credsFile: v['nats-creds'], user: v['nats-user'], passwordFile: v['nats-password-file'] };
  const want: Partial<ClusterSettings> = {};
  if (v.replicas !== undefined) want.ownerReplicas = parseIntOption(v.replicas, '--replicas', 2, 1, 5);
  if (v['stream-replicas'] !== undefined) want.streamReplicas = parseIntOption(v['stream-replicas'], '--stream-replicas', 3, 1, 5);
  if (v['stream-max-age'] !== undefined) want.streamMaxAgeSeconds = Math.round(parseDurationMs(v['stream-max-age'], '--stream-max-age', 10_000, 10 * 365 * 86_400_000) / 1000);
  if (o.shardsWanted !== undefined) want.shards = o.shardsWanted;
  const authorization = v['cluster-token-file'] === undefined ? undefined : `Bearer ${readFileSync(v['cluster-token-file'], 'utf8').split('\n')[0]!.trim()}`;
  const nc = await connectNats(urls, auth, `apm-core-${v.node}`);
  try {
    const settings = await ClusterNode.settingsFor(nc, { ...want, shards: want.shards ?? o.shardsDefault, streamReplicas: want.streamReplicas ?? Math.min(3, urls.length) });
    let node: ClusterNode | null = null;
    node = await ClusterNode.join(nc, settings, {
      node: v.node,
      url: v.url ?? o.listenUrl,
      workers: o.workers,
      want,
      heartbeatMs: 2000,
      deadAfterMs: 10_000,
      replaceAfterMs: v['replace-after'] === undefined ? 60_000 : parseDurationMs(v['replace-after'], '--replace-after', 1000, 30 * 86_400_000),
      movesMax: 8,
      readyLagMax: 8,
      copyShard: (fromUrl, shard) => o.copyShard(fromUrl, shard, authorization),
    });
    return { nc, settings, node, authorization };
  } catch (err) {
    await nc.close().catch(() => undefined);
    if ((err as Error).message.startsWith('this node cannot join')) throw new UsageError((err as Error).message);
    throw err;
  }
}
