// What a cluster node knows of its cluster (issue 13), as the query routes, the stored queries
// and the status pages read it. core/cluster/node.ts keeps it current from JetStream KV:
// apm-nodes (membership, heartbeats) and apm-placement (shard → owners).

import type { NatsConnection } from '@nats-io/transport-node';
import type { ClusterSettings } from '../../schema/log.js';

/** What a node writes under its id in KV apm-nodes with every heartbeat. */
export interface NodeRecord {
  id: string;
  /** Base URL of its HTTP API (queries are proxied there). */
  url: string;
  workers: number;
  startedMs: number;
  /** Shards it owns and has caught up on (it answers them). */
  ready: number[];
  /** Per shard it consumes: messages of the stream it has not applied yet. */
  lag: Record<number, number>;
  /** Per shard it consumes: the newest stream sequence applied. */
  applied: Record<number, number>;
  /** Shards whose copy into it failed several times in a row lately: the placer drops it as their joiner and picks another node. */
  copyFailing: number[];
}

export interface NodeState extends NodeRecord {
  /** Heartbeat seen within the dead-after time, by the KV's own timestamps. */
  live: boolean;
  /** The KV's timestamp of its newest heartbeat (ms). */
  heartbeatMs: number;
  /** How much older its newest heartbeat is than the newest one in KV apm-nodes (ms; the NATS servers' clock only). */
  silentMs: number;
}

/** KV apm-placement, key "shards": per shard its owners (in order) and the nodes copying it to become owners. */
export interface PlacementDoc {
  shards: { owners: string[]; joining: string[] }[];
}

export interface ClusterView {
  readonly nodeId: string;
  readonly settings: ClusterSettings;
  readonly nc: NatsConnection;
  /** Every node of KV apm-nodes, as last read. */
  nodes(): NodeState[];
  placement(): PlacementDoc;
  /** The KV revision of the placement (0: none written yet). */
  placementRevision(): number;
  /** Live owners of `shard` that have caught up, in placement order: the first answers and evaluates its stored queries. */
  readyOwners(shard: number): NodeState[];
  /** This node owns `shard` and has caught up: it answers the shard itself. */
  servesLocally(shard: number): boolean;
  /**
   * When this node's heartbeats have failed for longer than the dead-after time (the others take
   * it for dead: it is cut off from NATS, or NATS is down), the time of the last one written (ms);
   * else null. Its own shards then stop at what it applied while the other owners may go on.
   */
  cutOffSinceMs(): number | null;
  /** Called after the placement or a node's liveness or readiness changed. */
  onChange(f: () => void): void;
}
