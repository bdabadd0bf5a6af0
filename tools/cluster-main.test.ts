import { describe, expect, it } from 'vitest';
import type { ClusterStatus } from '../core/cluster/status.js';
import { formatStatus } from './cluster-main.js';

const status = (over: Partial<ClusterStatus>): ClusterStatus => ({
  node: 'n1',
  settings: { format: 1, shards: 2, ownerReplicas: 2, streamReplicas: 1, streamMaxAgeSeconds: 86_400, duplicateWindowSeconds: 600 },
  placementRevision: 7,
  nodes: [{ id: 'n1', url: 'http://127.0.0.1:8080', workers: 2, startedMs: 0, ready: [0, 1], lag: { 0: 0, 1: 3 }, applied: { 0: 10, 1: 12 }, copyFailing: [], live: true, heartbeatMs: 0, silentMs: 1200 }],
  placement: { shards: [{ owners: ['n1', 'odd'], joining: [] }, { owners: ['n1'], joining: [] }] },
  shards: [],
  counters: {},
  cutOffSince: null,
  unreadableNodes: [],
  ...over,
});

describe('apm cluster status', () => {
  it('prints nodes, their lag and the placement with ready owners starred', () => {
    const text = formatStatus(status({}));
    expect(text).toMatch(/^n1 +live +2 +2 +3 +1\.2 s ago +http:\/\/127\.0\.0\.1:8080$/m);
    expect(text).toMatch(/^0 +n1\* odd\s*$/m);
    expect(text).not.toMatch(/cut off/);
  });

  it('says when the node asked is cut off from NATS, and lists nodes whose records do not check with the shards they keep', () => {
    const text = formatStatus(status({ cutOffSince: '2026-12-04T05:00:00.000Z', unreadableNodes: [{ id: 'odd', silentMs: 800 }] }));
    expect(text).toMatch(/n1 is cut off from NATS since 2026-12-04T05:00:00.000Z/);
    expect(text).toMatch(/^odd +bad +1 +- +- +0\.8 s ago +\(its KV record does not check/m);
  });
});
