// `apm cluster status`: a cluster's nodes, shard placement and consumer lag, as one node sees them.

import { parseOptions, UsageError } from '../lib/args.js';
import { answerError, authHeaders, coreUrl, unreachable } from './core-client.js';
import type { ClusterStatus } from '../core/cluster/status.js';

export const clusterHelp = `apm cluster status: a core cluster's nodes, shard placement and consumer lag

Usage: apm cluster status [--core <url>] [--json]

  --core <url>   any node of the cluster (default http://127.0.0.1:8080); APM_TOKEN is sent
  --json         the node's answer (GET /api/v1/cluster) as it is
  --help         this text`;

export async function clusterMain(argv: string[]): Promise<void> {
  const { values, positionals } = parseOptions(argv, { core: { type: 'string', default: 'http://127.0.0.1:8080' }, json: { type: 'boolean', default: false }, help: { type: 'boolean', default: false } }, clusterHelp);
  if (values.help) {
    console.log(clusterHelp);
    return;
  }
  if (positionals[0] !== 'status' || positionals.length !== 1) throw new UsageError(`expected 'apm cluster status'\n\n${clusterHelp}`);
  const url = coreUrl(values.core!, '/api/v1/cluster');
  let res: Response;
  // Each failure a clear line, no stack: exit 1 when the core cannot be reached or answers an
  // error, 2 for a core that is no cluster node (the command was aimed wrong).
  try {
    res = await fetch(url, { headers: authHeaders() });
  } catch (err) {
    throw unreachable(values.core!, err, 'apm core --nats …');
  }
  if (res.status === 404) throw new UsageError(`${values.core} is not a cluster node (started without --nats)`);
  if (!res.ok) throw answerError(res.status, `${url}: HTTP ${res.status} ${(await res.text()).slice(0, 300)}`);
  let s: ClusterStatus;
  try {
    s = (await res.json()) as ClusterStatus;
  } catch (err) {
    throw new UsageError(`${url} did not answer JSON (${(err as Error).message}): is it an apm core?`);
  }
  if (values.json) {
    console.log(JSON.stringify(s, null, 2));
    return;
  }
  console.log(formatStatus(s));
}

export function formatStatus(s: ClusterStatus): string {
  const out: string[] = [];
  out.push(`cluster seen from ${s.node}: ${s.settings.shards} shards, ${s.settings.ownerReplicas} owners each, streams R${s.settings.streamReplicas}, max age ${s.settings.streamMaxAgeSeconds} s; placement revision ${s.placementRevision}`);
  if (s.cutOffSince !== null && s.cutOffSince !== undefined) out.push(`${s.node} is cut off from NATS since ${s.cutOffSince} (its heartbeats fail): what follows is as of then, and its answers carry x-apm-stale-since`);
  out.push('', 'NODE'.padEnd(16) + 'STATE'.padEnd(7) + 'OWNS'.padEnd(6) + 'READY'.padEnd(7) + 'LAG'.padEnd(9) + 'HEARTBEAT'.padEnd(11) + 'URL');
  for (const n of s.nodes) {
    const owns = s.placement.shards.filter((x) => x.owners.includes(n.id)).length;
    const lag = Object.values(n.lag).reduce((a, b) => a + Math.max(0, b), 0);
    out.push(n.id.padEnd(16) + (n.live ? 'live' : 'dead').padEnd(7) + String(owns).padEnd(6) + String(n.ready.length).padEnd(7) + String(lag).padEnd(9) + `${(n.silentMs / 1000).toFixed(1)} s ago`.padEnd(11) + n.url);
  }
  for (const n of s.unreadableNodes ?? []) {
    const owns = s.placement.shards.filter((x) => x.owners.includes(n.id)).length;
    out.push(n.id.padEnd(16) + 'bad'.padEnd(7) + String(owns).padEnd(6) + '-'.padEnd(7) + '-'.padEnd(9) + `${(n.silentMs / 1000).toFixed(1)} s ago`.padEnd(11) + '(its KV record does not check: not routed to, never placed on)');
  }
  out.push('', 'SHARD  OWNERS (ready*)                 JOINING');
  const ready = new Map(s.nodes.map((n) => [n.id, new Set(n.live ? n.ready : [])]));
  s.placement.shards.forEach((x, k) => {
    const owners = x.owners.map((o) => `${o}${ready.get(o)?.has(k) === true ? '*' : ''}`).join(' ');
    out.push(`${String(k).padEnd(7)}${owners.padEnd(32)}${x.joining.join(' ')}`);
  });
  return out.join('\n');
}
