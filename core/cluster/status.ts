// What a cluster node tells about its cluster (issue 13): GET /api/v1/cluster (nodes, placement,
// this node's consumers; `apm cluster status` prints it) and the cluster's lines of /metrics.

import type { LogIngest } from './ingest.js';
import type { PromText } from '../../lib/prom.js';
import type { ClusterNode } from './node.js';

export interface ClusterStatus {
  node: string;
  settings: ClusterNode['settings'];
  placementRevision: number;
  nodes: ReturnType<ClusterNode['nodes']>;
  placement: ReturnType<ClusterNode['placement']>;
  /** This node's consumers, one per shard it owns or joins. */
  shards: ReturnType<ClusterNode['shardStates']>;
  counters: Record<string, number>;
  /** Since when this node's heartbeats fail past the dead-after time (ISO 8601; null: they are written). */
  cutOffSince: string | null;
  /** Keys of KV apm-nodes whose records do not check (not routed to, never placed on; they keep their shards while they heartbeat). */
  unreadableNodes: { id: string; silentMs: number }[];
}

export function clusterStatus(n: ClusterNode): ClusterStatus {
  const cutOff = n.cutOffSinceMs();
  return { node: n.nodeId, settings: n.settings, placementRevision: n.placementRevision(), nodes: n.nodes(), placement: n.placement(), shards: n.shardStates(), counters: { ...n.counters, ...n.consumerCounters() }, cutOffSince: cutOff === null ? null : new Date(cutOff).toISOString(), unreadableNodes: n.unreadable() };
}

/** The cluster's lines of a node's /metrics: consumer lag per shard, placement revision, membership. */
export function clusterMetrics(p: PromText, n: ClusterNode, streamRefused: Record<string, number> = {}, logIngest?: LogIngest): void {
  p.gauge('apm_core_cluster_placement_revision', 'KV revision of the shard placement this node follows', n.placementRevision());
  p.gauge('apm_core_cluster_nodes', 'Nodes known in KV apm-nodes, by liveness', n.nodes().filter((x) => x.live).length, { state: 'live' });
  p.gauge('apm_core_cluster_nodes', 'Nodes known in KV apm-nodes, by liveness', n.nodes().filter((x) => !x.live).length, { state: 'dead' });
  for (const s of n.shardStates()) {
    p.gauge('apm_core_cluster_consumer_lag', "Messages of a shard's stream this node has not applied yet (-1: not known yet)", s.lag, { shard: String(s.shard), role: s.role });
    p.gauge('apm_core_cluster_applied_seq', "Newest stream sequence of a shard this node applied", s.applied, { shard: String(s.shard) });
    p.gauge('apm_core_cluster_shard_ready', 'Whether this node answers a shard (owner and caught up)', s.ready ? 1 : 0, { shard: String(s.shard) });
  }
  const c = { ...n.counters, ...n.consumerCounters() };
  for (const [k, v] of Object.entries(c)) p.counter(`apm_core_cluster_${k}_total`, `Cluster node: ${k.replace(/_/g, ' ')}`, v);
  if (logIngest !== undefined) {
    const c = logIngest.counters;
    p.counter('apm_core_cluster_ingest_published_total', 'Rack seconds posted to this node (HTTP ingest, imports) and published to the streams', c.published);
    p.counter('apm_core_cluster_ingest_publish_failures_total', 'Rack seconds not acknowledged by every stream (answered 503; the sender retries)', c.publish_failures);
    p.counter('apm_core_cluster_ingest_republished_total', 'Acknowledged rack seconds published again after the connection to NATS came back (the streams de-duplicate)', c.republished);
    p.counter('apm_core_cluster_ingest_republish_failures_total', 'Re-publishes that failed (kept for the next reconnect)', c.republish_failures);
    p.counter('apm_core_cluster_ingest_kept_evicted_total', 'Acknowledged rack seconds forgotten before their keep time (its byte bound): not re-published after a reconnect', c.kept_evicted);
    p.counters('apm_core_cluster_ingest_refused_total', 'Rack seconds posted to this node and refused before anything was published, by reason (answered 4xx: the sender drops them)', 'reason', logIngest.refused);
    p.gauge('apm_core_cluster_ingest_kept_bytes', 'Bytes of acknowledged rack seconds kept for a re-publish after a reconnect', logIngest.keptBytes);
  }
  p.counters('apm_core_cluster_messages_refused_by_reason_total', 'Stream messages refused for good (the stream moves past them), by reason: they do not decode or belong to another shard, or their rack is past racksMax (racks_full)', 'reason', streamRefused);
}
