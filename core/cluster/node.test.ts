// ClusterNode's decisions for a shard whose owners fell behind its stream (down longer than its
// max age), without NATS: the node's placement, peers and consumer are set as its rounds see them.

import { describe, expect, it } from 'vitest';
import { ClusterNode } from './node.js';
import type { NodeState } from './view.js';

interface Inside {
  settings: unknown;
  pool: unknown;
  doc: unknown;
  nodeStates: NodeState[];
  consumers: Map<number, unknown>;
  counters: Record<string, number>;
  consumerCounters(): Record<string, number>;
  follow(): Promise<void>;
  startConsumer(k: number, applied: number, acceptLoss?: boolean): void;
}

function peer(id: string, applied: number | undefined, silentMs = 0): NodeState {
  return { id, url: 'http://127.0.0.1:1', workers: 1, startedMs: 0, ready: [], lag: { 0: -1 }, applied: applied === undefined ? {} : { 0: applied }, copyFailing: [], live: true, heartbeatMs: 0, silentMs } as unknown as NodeState;
}

/** Node `me` (applied 5,000 of shard 0, whose stream now starts at 9,000) after `rounds` rounds beside `others`. */
async function rounds(me: string, others: NodeState[], n = 5, mine = 5000, joining = false): Promise<{ started: [number, number, boolean][]; copies: number; counters: Record<string, number>; consumerCounters: Record<string, number> }> {
  const Ctor = ClusterNode as unknown as new (nc: unknown, o: unknown) => Inside;
  let copies = 0;
  const node = new Ctor({}, { node: me, url: 'http://127.0.0.1:1', workers: 1, want: {}, heartbeatMs: 2000, deadAfterMs: 10_000, replaceAfterMs: 60_000, movesMax: 8, readyLagMax: 8, copyShard: async () => (copies++, 0), log: () => undefined });
  node.settings = { shards: 1, ownerReplicas: 2 };
  node.pool = { shards: 1, streamSeqs: async () => ({ 0: mine }), restartFromStream: async () => undefined };
  node.doc = { shards: [joining ? { owners: others.map((o) => o.id), joining: [me] } : { owners: [me, ...others.map((o) => o.id)], joining: [] }] };
  node.nodeStates = [peer(me, mine), ...others];
  node.consumers.set(0, { state: 'behind_stream', caughtUp: false, streamFirst: 9000, applied: mine, lag: Infinity, lastError: '', counters: { messages_applied: 70, stream_resets: 1 } });
  const started: [number, number, boolean][] = [];
  node.startConsumer = (k, applied, acceptLoss = false) => {
    started.push([k, applied, acceptLoss]);
    node.consumers.set(k, { state: 'consuming', caughtUp: false, streamFirst: 9000, applied, lag: 100, lastError: '', counters: { messages_applied: 2, stream_resets: 0 } });
  };
  for (let i = 0; i < n; i++) await node.follow();
  return { started, copies, counters: node.counters, consumerCounters: node.consumerCounters() };
}

describe('an owner behind its stream with no ready owner to copy from', () => {
  it('regression: when every live owner is behind too, the one that applied the most (ties: the lowest id) reads on from the stream, counted (before: each waited for the other for good)', async () => {
    const a = await rounds('a', [peer('b', 5000)]);
    expect(a.started).toEqual([[0, 5000, true]]);
    expect(a.counters.shards_resumed_with_gap).toBe(1);
    // The replaced consumer's counts stay in the node's (before: /metrics' totals went back).
    expect(a.consumerCounters).toEqual({ messages_applied: 72, stream_resets: 1 });
    // b, the other of the tie, waits (and copies from a once a is ready).
    expect((await rounds('b', [peer('a', 5000)])).started).toEqual([]);
    // An owner that applied more resumes instead.
    expect((await rounds('a', [peer('b', 6000)])).started).toEqual([]);
    expect((await rounds('b', [peer('a', 4000)])).started).toEqual([[0, 5000, true]]);
  });

  it('regression: owners whose copies all failed (applied −1) break the tie too: the lowest id empties its shard and reads the whole stream, the other copies from it later', async () => {
    expect((await rounds('a', [peer('b', -1)], 5, -1)).started).toEqual([[0, 0, true]]);
    expect((await rounds('b', [peer('a', -1)], 5, -1)).started).toEqual([]);
    // An owner that holds data wins over one at −1.
    expect((await rounds('a', [peer('b', 5000)], 5, -1)).started).toEqual([]);
  });

  it('regression: a joiner holding nothing waits a quarter of an hour for silent owners before it reads the stream alone (before: after the minute of replace-after, and it then answered for the shard with only what the stream keeps)', async () => {
    expect((await rounds('c', [peer('a', 5000, 61_000), peer('b', 5000, 61_000)], 5, 0, true)).started).toEqual([]);
    expect((await rounds('c', [peer('a', 5000, 14 * 60_000), peer('b', 5000, 14 * 60_000)], 5, 0, true)).started).toEqual([]);
    expect((await rounds('c', [peer('a', 5000, 16 * 60_000), peer('b', 5000, 16 * 60_000)], 5, 0, true)).started).toEqual([[0, 0, true]]);
  });

  it('waits while a live owner may still be a source: it reaches the stream, or has not said what it applied', async () => {
    expect((await rounds('a', [peer('b', 8999)])).started).toEqual([]);
    expect((await rounds('a', [peer('b', undefined)])).started).toEqual([]);
  });

  it('reads on from the stream when every other owner has been silent past the replace-after time', async () => {
    expect((await rounds('b', [peer('a', 8999, 61_000)])).started).toEqual([[0, 5000, true]]);
  });
});

describe('a placement document gone from KV apm-placement', () => {
  const old = [
    { owners: ['a', 'c'], joining: [] },
    { owners: ['c', 'd'], joining: [] },
    { owners: ['d', 'a'], joining: [] },
    { owners: ['c', 'a'], joining: [] },
  ];
  const holder = (id: string, shards: number[]) => ({ ...peer(id, 9), ready: shards, applied: Object.fromEntries(shards.map((k) => [k, 9])) }) as unknown as NodeState;

  async function placerAfterDelete(doc: unknown): Promise<{ owners: string[]; joining: string[] }[]> {
    const Ctor = ClusterNode as unknown as new (nc: unknown, o: unknown) => Inside & { kvPlacement: unknown; kvNodes: unknown; readPlacement(): Promise<void>; place(): Promise<void> };
    const node = new Ctor({}, { node: 'a', url: 'http://127.0.0.1:1', workers: 1, want: {}, heartbeatMs: 2000, deadAfterMs: 10_000, replaceAfterMs: 60_000, movesMax: 8, readyLagMax: 8, copyShard: async () => 0, log: () => undefined });
    Object.defineProperty(node, 'startedMs', { value: 0 });
    node.settings = { shards: 4, ownerReplicas: 2 };
    const written: { doc: { shards: { owners: string[]; joining: string[] }[] } | null } = { doc: null };
    node.kvPlacement = { get: async () => null, create: async (_k: string, v: string) => ((written.doc = JSON.parse(v)), 1) };
    node.kvNodes = { delete: async () => undefined };
    node.doc = doc;
    node.nodeStates = [holder('a', [0, 2, 3]), holder('b', []), holder('c', [0, 1, 3]), holder('d', [1, 2])];
    await node.readPlacement();
    await node.place();
    if (written.doc === null) throw new Error('nothing written');
    return written.doc.shards;
  }

  it('regression: the placer writes back the last one it followed: every owner keeps its shards (before: a fresh round robin gave shards to nodes holding nothing of them, which answered for them)', async () => {
    const shards = await placerAfterDelete({ shards: old });
    expect(shards.map((s) => s.owners)).toEqual(old.map((s) => s.owners));
  });

  it('a placer that never read one rebuilds it from what the nodes consume', async () => {
    const shards = await placerAfterDelete(null);
    expect(shards.map((s) => [...s.owners].sort())).toEqual(old.map((s) => [...s.owners].sort()));
  });
});

describe('a node joining a shard with nothing of it', () => {
  it('regression: copies from a ready owner even when that owner reports applied 0 (its stream made again: it holds the rows, reads the new stream from 0; before, the joiner read the empty stream and became an owner without the shard\'s history)', async () => {
    const Ctor = ClusterNode as unknown as new (nc: unknown, o: unknown) => Inside & { copying: Set<number> };
    const copied: string[] = [];
    const node = new Ctor({}, { node: 'x', url: 'http://127.0.0.1:1', workers: 1, want: {}, heartbeatMs: 2000, deadAfterMs: 10_000, replaceAfterMs: 60_000, movesMax: 8, readyLagMax: 8, copyShard: async (url: string) => (copied.push(url), 0), log: () => undefined });
    node.settings = { shards: 1, ownerReplicas: 2 };
    node.pool = { shards: 1, streamSeqs: async () => ({ 0: 0 }) };
    node.doc = { shards: [{ owners: ['a', 'd'], joining: ['x'] }] };
    node.nodeStates = [{ ...peer('a', 0), url: 'http://127.0.0.1:7', ready: [0] } as unknown as NodeState, peer('x', undefined)];
    const started: number[] = [];
    node.startConsumer = (k) => void started.push(k);
    await node.follow();
    await new Promise((r) => setTimeout(r, 10));
    expect(copied).toEqual(['http://127.0.0.1:7']);
  });
});
