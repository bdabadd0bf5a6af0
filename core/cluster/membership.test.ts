// Membership and placement of a cluster node (core/cluster/node.ts) against what another program
// may leave in KV apm-nodes and apm-placement: one real nats-server, one ClusterNode in this
// process (no workers attached: heartbeats, reads and placement only), fast rounds.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { buckets, ensureStreams, streamOf } from '../../schema/log.js';
import type { ShardPool } from '../pool.js';
import { ApplyQueue, ShardConsumer } from './consumer.js';
import { NatsCluster } from '../../tools/nats-servers.js';
import { until } from '../../test/proc.js';
import { ClusterNode, type ClusterNodeOptions } from './node.js';
import { parseNodeRecord, parsePlacement } from './placement.js';

const S = 4;

/** A node's options as these tests run it: fast rounds, short liveness bounds. */
function nodeOptions(over: Partial<ClusterNodeOptions> & Pick<ClusterNodeOptions, 'copyShard' | 'log'>): ClusterNodeOptions {
  return { node: 'n1', url: 'http://127.0.0.1:1', workers: 1, want: {}, heartbeatMs: 200, deadAfterMs: 2_000, replaceAfterMs: 2_000, movesMax: 8, readyLagMax: 8, ...over };
}

describe('a cluster node and what KV holds', () => {
  const dir = mkdtempSync(join(tmpdir(), 'apm-membership-'));
  let nats: NatsCluster;
  let nc: NatsConnection;
  let node: ClusterNode;
  let kvNodes: KV;
  let kvPlacement: KV;
  const logged: string[] = [];

  beforeAll(async () => {
    nats = await NatsCluster.start({ dir: join(dir, 'nats'), n: 1 });
    nc = await connect({ servers: nats.url(0), user: nats.users.core.user, pass: nats.users.core.pass });
    const settings = await ClusterNode.settingsFor(nc, { shards: S, streamReplicas: 1 });
    node = await ClusterNode.join(nc, settings, nodeOptions({ copyShard: () => Promise.reject(new Error('no copies here')), log: (l) => void logged.push(l) }));
    const kvm = new Kvm(nc);
    kvNodes = await kvm.open(buckets.nodes);
    kvPlacement = await kvm.open(buckets.placement);
    await until(() => (node.placementRevision() > 0 && node.placement().shards.length === S && node.placement().shards.every((s) => s.owners.includes('n1')) ? true : undefined), 15_000, 'the first placement');
  }, 30_000);

  afterAll(async () => {
    await node?.close();
    await nc?.close();
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('refuses a node record that does not check (counted, logged once) and keeps placing; one cannot pose as another node (before: `ready: 5` failed every placer round, and a record\'s id won over its key)', async () => {
    const failures = node.counters.round_failures;
    await kvNodes.put('ghost', JSON.stringify({ id: 'n1', url: 'http://evil.example', workers: 1, startedMs: 1, ready: 5, lag: {}, applied: {} }));
    await kvNodes.put('n9', JSON.stringify({ id: 'n9', url: 'http://127.0.0.1:2', workers: 1, startedMs: 1, ready: [0, 1, 2, 3, 4], lag: {}, applied: {} }));
    await until(() => (node.counters.node_records_refused >= 2 ? true : undefined), 15_000, 'both refused');
    const rounds = node.counters.heartbeats;
    await until(() => (node.counters.heartbeats >= rounds + 5 ? true : undefined), 15_000, 'more rounds');
    expect(node.counters.round_failures).toBe(failures);
    expect(node.nodes().map((n) => [n.id, n.url])).toEqual([['n1', 'http://127.0.0.1:1']]);
    // Logged once per key, not every round.
    expect(logged.filter((l) => l.includes('key ghost is not a node record'))).toHaveLength(1);
    await kvNodes.delete('ghost');
    await kvNodes.delete('n9');
  });

  it('keeps its heartbeat while a round waits on its workers (before: the heartbeat was the round\'s first step, so a round held 10 s made the others take this node for dead)', async () => {
    const inner = node as unknown as { follow: () => Promise<void> };
    const follow = inner.follow.bind(node);
    let held = 0;
    inner.follow = async () => {
      held++;
      await new Promise((r) => setTimeout(r, 2_500));
      return follow();
    };
    try {
      await until(() => (held > 0 ? true : undefined), 15_000, 'a round held');
      const beats = node.counters.heartbeats;
      await new Promise((r) => setTimeout(r, 2_000));
      // Every 200 ms while the round waits: about 10.
      expect(node.counters.heartbeats - beats).toBeGreaterThanOrEqual(5);
      expect(node.nodes().find((n) => n.id === 'n1')?.live).toBe(true);
    } finally {
      inner.follow = follow;
    }
  });

  it('writes a good placement over one that does not parse (before: it kept the last good one\'s revision, and every compare-and-set failed for good)', async () => {
    const written = node.counters.placements_written;
    await kvPlacement.put('shards', '{"x":1}');
    const doc = await until(
      async () => {
        const e = await kvPlacement.get('shards');
        try {
          return e === null ? undefined : parsePlacement(e.string(), S);
        } catch {
          return undefined;
        }
      },
      15_000,
      'a good placement again',
    );
    expect(doc.shards.every((s) => s.owners.includes('n1'))).toBe(true);
    expect(node.counters.placements_written).toBeGreaterThan(written);
  });

  it('keeps a shard owned by a live node whose record does not check until the replace-after time, then replaces it (before: that node was taken for gone at once, and another joined its shard)', async () => {
    // "zbad" sorts after n1: n1 stays the placer.
    const doc = { shards: Array.from({ length: S }, (_, k) => ({ owners: k === 0 ? ['zbad'] : ['n1'], joining: [] as string[] })) };
    const beat = () => kvNodes.put('zbad', JSON.stringify({ id: 'zbad', url: 'http://127.0.0.1:3', workers: 1, startedMs: 1, ready: 'all', lag: {}, applied: {} }));
    await beat();
    const beating = setInterval(() => void beat().catch(() => undefined), 200);
    try {
      await kvPlacement.put('shards', JSON.stringify(doc));
      await until(() => (node.placement().shards[0]?.owners[0] === 'zbad' ? true : undefined), 15_000, 'the placement read');
      const rounds = node.counters.heartbeats;
      await until(() => (node.counters.heartbeats >= rounds + 3 ? true : undefined), 15_000, 'more rounds');
      // Within the replace-after time (2 s here): kept, nobody joins.
      expect(node.placement().shards[0]).toEqual({ owners: ['zbad'], joining: [] });
      // Past it: nothing can be routed to it, so the shard gets an owner that can answer.
      await until(() => (node.placement().shards[0]?.joining.includes('n1') ? true : undefined), 15_000, 'n1 joining shard 0');
    } finally {
      clearInterval(beating);
      await kvNodes.delete('zbad');
      await kvPlacement.put('shards', JSON.stringify({ shards: Array.from({ length: S }, () => ({ owners: ['n1'], joining: [] })) }));
    }
  });

  it('holds placement while the smallest live id has a record it cannot read (before: both placed by their own views and overwrote each other every round)', async () => {
    await until(() => (node.placement().shards.every((s) => s.owners.includes('n1')) ? true : undefined), 15_000, 'a settled placement');
    const beat = () => kvNodes.put('a0', JSON.stringify({ id: 'a0', url: 'http://127.0.0.1:3', workers: 1, startedMs: 1, ready: 'all', lag: {}, applied: {} }));
    await beat();
    const beating = setInterval(() => void beat().catch(() => undefined), 200);
    const doc = { shards: Array.from({ length: S }, (_, k) => ({ owners: k === 0 ? [] : ['n1'], joining: [] as string[] })) };
    try {
      const held = node.counters.placement_rounds_held;
      await kvPlacement.put('shards', JSON.stringify(doc));
      await until(() => (node.counters.placement_rounds_held >= held + 5 ? true : undefined), 15_000, 'rounds held');
      // Shard 0 has no owner, and n1 would fill it; it holds instead.
      expect(node.placement().shards[0]).toEqual({ owners: [], joining: [] });
      expect(logged.some((l) => /placement held: node a0/.test(l))).toBe(true);
    } finally {
      clearInterval(beating);
      await kvNodes.delete('a0');
    }
    await until(() => (node.placement().shards[0]?.owners.includes('n1') ? true : undefined), 15_000, 'n1 placing again');
  });

  it('says it is cut off once its heartbeats have failed past the dead-after time, and since when (the query routes mark its answers stale)', async () => {
    const kv = (node as unknown as { kvNodes: KV }).kvNodes;
    const put = kv.put.bind(kv);
    expect(node.cutOffSinceMs()).toBeNull();
    // A consumer as the node holds one (this test attaches no workers): caught up before the cut-off.
    const consumers = (node as unknown as { consumers: Map<number, unknown> }).consumers;
    const fake = { caughtUp: true, state: 'reading', lag: 0, applied: 1, lastError: '', counters: {}, unsure() { this.caughtUp = false; }, stop: async () => undefined, remove: async () => undefined };
    consumers.set(S - 1, fake);
    const before = Date.now();
    kv.put = () => Promise.reject(new Error('NATS is away'));
    try {
      // deadAfterMs is 2 s here.
      const since = await until(() => node.cutOffSinceMs() ?? undefined, 15_000, 'cut off');
      expect(Date.now() - since).toBeGreaterThan(2_000);
      expect(since).toBeGreaterThanOrEqual(before - 1_000);
      expect(since).toBeLessThanOrEqual(before + 250);
    } finally {
      kv.put = put;
    }
    await until(() => (node.cutOffSinceMs() === null ? true : undefined), 15_000, 'back');
    // Back: not ready until its consumer's next pull tells (before: it stayed caught up from before the cut-off, answering unmarked).
    expect(fake.caughtUp).toBe(false);
    consumers.delete(S - 1);
  });
});

describe('a shard consumer nobody pulls from', () => {
  it('is deleted by the server after its inactivity bound (before: a node id gone for good left its S durable consumers for good)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-consumer-inactive-'));
    const nats = await NatsCluster.start({ dir: join(dir, 'nats'), n: 1 });
    const nc = await connect({ servers: nats.url(0), user: nats.users.core.user, pass: nats.users.core.pass });
    try {
      const settings = await ClusterNode.settingsFor(nc, { shards: S, streamReplicas: 1 });
      await ensureStreams(await jetstreamManager(nc), settings);
      const jsm = await jetstreamManager(nc);
      // The worker side as a stand-in: nothing applied, nothing to apply (the stream is empty).
      const pool = { streamSeqs: async () => new Array<number>(S).fill(0), streamCreated: async () => null, streamMark: async () => null, ingestStream: async () => 'refused' } as unknown as ShardPool;
      const c = new ShardConsumer({ node: 'gone', shard: 0, batch: 64, readyLagMax: 2, readyBehindMsMax: 5_000, backoffMinMs: 10, backoffMaxMs: 10, inactiveMs: 1_500 }, pool, new ApplyQueue(pool, { holdMs: 10, burstMax: 64, inFlightMax: 64 }), jetstream(nc), jsm);
      c.start(0);
      await until(async () => ((await jsm.consumers.info(streamOf(0), c.durable).catch(() => null)) === null ? undefined : true), 15_000, 'its durable consumer');
      await c.stop();
      await until(async () => ((await jsm.consumers.info(streamOf(0), c.durable).catch(() => null)) === null ? true : undefined), 20_000, 'the consumer deleted by the server');
    } finally {
      await nc.close();
      await nats.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 40_000);
});

describe('a join that never catches up', () => {
  it('is given up and reported, so the placer picks another joiner (before: a joiner whose copy succeeded but never caught up held its move slot for good)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-join-slow-'));
    const nats = await NatsCluster.start({ dir: join(dir, 'nats'), n: 1 });
    const nc = await connect({ servers: nats.url(0), user: nats.users.core.user, pass: nats.users.core.pass });
    let node: ClusterNode | null = null;
    const beats: NodeJS.Timeout[] = [];
    try {
      const settings = await ClusterNode.settingsFor(nc, { shards: S, streamReplicas: 1 });
      await ensureStreams(await jetstreamManager(nc), settings);
      const kvm = new Kvm(nc);
      const kvNodes = await kvm.create(buckets.nodes, { history: 1, replicas: 1 });
      const kvPlacement = await kvm.create(buckets.placement, { history: 1, replicas: 1 });
      // n0 (the placer: the smallest id) is the test: it owns every shard, has applied 50 of shard 0, and places n1 as shard 0's joiner.
      const n0 = () => kvNodes.put('n0', JSON.stringify({ id: 'n0', url: 'http://127.0.0.1:9', workers: 1, startedMs: 1, ready: [0, 1, 2, 3], lag: {}, applied: { 0: 50, 1: 0, 2: 0, 3: 0 }, copyFailing: [] }));
      await n0();
      beats.push(setInterval(() => void n0().catch(() => undefined), 200));
      await kvPlacement.put('shards', JSON.stringify({ shards: Array.from({ length: S }, (_, k) => ({ owners: ['n0'], joining: k === 0 ? ['n1'] : [] })) }));
      // Shard 0's stream holds more than n1 will ever apply.
      const js = jetstream(nc);
      for (let i = 0; i < 80; i++) await js.publish(`apm.shard.0`, new Uint8Array([i]));
      // n1's workers take nothing: its consumer of shard 0 never catches up.
      const seqs = new Array<number>(S).fill(0);
      const pool = { shards: S, streamSeqs: async () => [...seqs], streamCreated: async () => null, streamMark: async () => null, rebaseStream: async () => undefined, ingestStream: () => new Promise((r) => setTimeout(() => r('not applied: this test applies nothing'), 50)), skipStream: async () => 'refused' } as unknown as ShardPool;
      let copies = 0;
      node = await ClusterNode.join(
        nc,
        settings,
        nodeOptions({
          joinCatchUpMaxMs: 2_000,
          copyShard: async () => {
            copies++;
            seqs[0] = 50;
            return 50;
          },
          log: () => undefined,
        }),
      );
      node.attach(pool);
      const rec = await until(
        async () => {
          const e = await kvNodes.get('n1');
          const r = e === null ? null : (JSON.parse(e.string()) as { copyFailing: number[] });
          return r !== null && r.copyFailing.includes(0) ? r : undefined;
        },
        20_000,
        'n1 reporting shard 0',
      );
      expect(rec.copyFailing).toEqual([0]);
      expect(copies).toBe(1);
      expect(node.counters.joins_given_up).toBe(1);
    } finally {
      for (const b of beats) clearInterval(b);
      await node?.close();
      await nc.close();
      await nats.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 40_000);
});

describe('parseNodeRecord', () => {
  const good = { id: 'n1', url: 'http://10.0.0.1:8080', workers: 2, startedMs: 1_700_000_000_000, ready: [0, 3], lag: { 0: 0, 3: -1 }, applied: { 0: 12, 3: 0 } };
  it('takes a record that checks, keeping only its fields', () => {
    // copyFailing is optional (a node of an older apm sends none).
    expect(parseNodeRecord(JSON.stringify({ ...good, extra: 'x' }), 'n1', S)).toEqual({ ...good, copyFailing: [] });
    expect(parseNodeRecord(JSON.stringify({ ...good, copyFailing: [2] }), 'n1', S)).toEqual({ ...good, copyFailing: [2] });
  });
  it.each([
    ['another node\'s id', { ...good, id: 'n2' }, /not its key/],
    ['a url that is not http(s)', { ...good, url: 'file:///etc/passwd' }, /url/],
    ['ready not a list', { ...good, ready: 5 }, /ready/],
    ['a ready shard out of range', { ...good, ready: [4] }, /ready shard/],
    ['applied missing', { ...good, applied: undefined }, /applied/],
    ['a lag that is not a number', { ...good, lag: { 0: 'x' } }, /lag/],
    ['workers 0', { ...good, workers: 0 }, /workers/],
    ['a copyFailing shard out of range', { ...good, copyFailing: [9] }, /copyFailing/],
  ])('refuses %s', (_what, rec, why) => {
    expect(() => parseNodeRecord(JSON.stringify(rec), 'n1', S)).toThrow(why);
  });
});
