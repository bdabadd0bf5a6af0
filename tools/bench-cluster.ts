// Cluster figures (issue 13): real nats-server (3, streams R3) and `apm core --nats` processes on
// this box (tools/cluster-harness.ts). Rack seconds of realistic shapes (tools/bench-batch.ts) are
// built first, then published to the shards' streams as `apm rack --nats` does.
//   ingest    with 1, 2 and 3 core nodes (2 owners per shard; 1 with one node): CPU-seconds per
//             million points each node applied (the target: flat within 10% — on 2 cores the wall
//             rate cannot grow with nodes, the cost per point must not), measured after a warm-up
//             (a process's first points pay its JIT and heap growth once) on three clusters that
//             run side by side and take turns, an idle node's CPU, the NATS servers' CPU per
//             million points published, and the log's bytes per point (one replica).
//   failover  3 nodes under load, one SIGKILLed: time to the first complete answer from the other
//             owner; then the killed node restarted: its catch-up rate in points applied per second.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connectNats, streamOf } from '../schema/log.js';
import { hashName } from '../schema/names.js';
import { shardOf } from '../schema/section.js';
import { BatchMaker } from './bench-batch.js';
import type { Figure } from './bench-edge.js';
import { prom } from './bench-fleet.js';
import { Pool } from 'undici';
import { cpuTicks, sendRacks, startCore, ticksPerSecond } from './bench-proc.js';
import { ClusterHarness, type CoreProc } from './cluster-harness.js';

const shards = 16;

interface Load {
  racks: Uint8Array[][];
  points: number;
  bytes: number;
}

function buildLoad(racks: number, servers: number, metrics: number, seconds: number, t0: number, prefix = 'bench'): Load {
  const out: Uint8Array[][] = [];
  let points = 0;
  let bytes = 0;
  for (let r = 0; r < racks; r++) {
    const m = new BatchMaker({ rack: `${prefix}-r${r}`, servers, metrics, distShare: 0.05, seed: 7 + r, shards });
    const bodies: Uint8Array[] = [];
    for (let s = 0; s < seconds; s++) {
      const b = m.body(t0 + s);
      bodies.push(b);
      bytes += b.length;
      points += m.pointsPerSecond;
    }
    out.push(bodies);
  }
  return { racks: out, points, bytes };
}

/** Publishes every rack's seconds, the racks in parallel, each in order. */
async function publishAll(h: ClusterHarness, load: Load): Promise<void> {
  await Promise.all(
    load.racks.map(async (bodies) => {
      for (const b of bodies) await h.publish(b);
    }),
  );
}

async function commitsOf(url: string): Promise<number> {
  return (await prom(`${url}/metrics`)).get('apm_core_ingest_commits_total') ?? 0;
}

async function pointsOf(url: string): Promise<number> {
  const m = await prom(`${url}/metrics`);
  return (m.get('apm_core_points_ingested_total') ?? 0) + (m.get('apm_core_summaries_ingested_total') ?? 0);
}

/** True once a node holds nothing unwritten: its head is empty and its rows' count stopped growing. */
async function quiet(url: string): Promise<boolean> {
  const a = await prom(`${url}/metrics`);
  await new Promise((r) => setTimeout(r, 300));
  const b = await prom(`${url}/metrics`);
  return (b.get('apm_core_head_bytes') ?? 1) === 0 && (a.get('apm_core_rows_written_total') ?? -1) === b.get('apm_core_rows_written_total');
}

async function waitFor(what: string, timeoutMs: number, cond: () => Promise<boolean>): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await cond().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`INVALID RUN: ${what} did not happen within ${timeoutMs} ms`);
}

export async function clusterFigures(quick: boolean): Promise<Figure[]> {
  const figures: Figure[] = [];
  const t0 = Math.floor(Date.now() / 1000) - 3600;
  const load = buildLoad(4, 40, quick ? 100 : 400, quick ? 10 : 60, t0);
  const loads = [load, ...Array.from({ length: quick ? 0 : 4 }, (_, i) => buildLoad(4, 40, 400, 60, t0 - 300 * (i + 1), `rep${i + 1}`))];
  // Other racks (their own Msg-Ids), earlier seconds: what each node applies before it is measured.
  const warm = buildLoad(4, 40, quick ? 100 : 400, quick ? 5 : 30, t0 - 1800, 'warm');
  // The nodes' warm-up, in pieces published until every node has applied as many points as
  // `warm` holds (what one node alone applies of it).
  const warmPieces = Array.from({ length: 4 }, (_, i) => buildLoad(4, 40, quick ? 100 : 400, quick ? 3 : 15, t0 - 2400 - 60 * i, `warm${i + 1}`));
  console.log(`  (load: 4 racks × 40 servers × ${quick ? 100 : 400} metrics × ${quick ? 10 : 60} s = ${(load.points / 1e6).toFixed(2)} M points, ${(load.bytes / 2 ** 20).toFixed(1)} MiB of rack seconds; ${shards} shards)`);
  // The same bodies POSTed to one core without a cluster: what the log path costs beside it.
  const single = await startCore(['--workers', '1', '--shards', String(shards)]);
  try {
    const pool = new Pool(single.url, { connections: 8 });
    const w0 = await pointsOf(single.url);
    await sendRacks(pool, single, warm.racks);
    await waitFor('the warm-up stored and its rows written by the single core', 300_000, async () => (await pointsOf(single.url)) - w0 >= warm.points && (await quiet(single.url)));
    const cpu0 = cpuTicks(single.pid);
    const p0 = await pointsOf(single.url);
    await sendRacks(pool, single, load.racks);
    await waitFor('every point stored and its rows written by the single core', 300_000, async () => (await pointsOf(single.url)) - p0 >= load.points && (await quiet(single.url)));
    await pool.close();
    const cpuPerM = (cpuTicks(single.pid) - cpu0) / ticksPerSecond / (load.points / 1e6);
    figures.push({ name: 'single core, no cluster (POST /api/v1/ingest, the same bodies): CPU-s per M points stored and written to rows', value: cpuPerM, unit: 'CPU-s/M' });
  } finally {
    await single.stop();
  }
  // The three clusters (1, 2 and 3 nodes, each on its own 3 NATS servers) run side by side and
  // their runs alternate: this box's cost per point drifts by a third over minutes (one node
  // measured 0.43–0.59 CPU-s/M in one block of runs and 0.51–0.59 in the next, two nodes
  // 0.65–0.78 then 0.50–0.65: the NATS servers' cost moved with them), so clusters measured one
  // after the other compared minutes, not node counts.
  const clusters: Cluster[] = [];
  try {
    for (const nodes of [1, 2, 3]) {
      const dir = mkdtempSync(join(tmpdir(), 'apm-bench-cluster-'));
      const h = await ClusterHarness.start(dir, 3).catch((err: unknown) => {
        rmSync(dir, { recursive: true, force: true });
        throw err;
      });
      const ids = Array.from({ length: nodes }, (_, i) => `b${i + 1}`);
      const c: Cluster = { nodes, dir, h, cores: [], natsPids: [], replicas: Math.min(2, nodes), idleMs: [], warmed: [], warmPublished: 0, runs: [] };
      clusters.push(c);
      for (const id of ids) await h.startCore(id, ['--workers', '1', '--shards', String(shards)]);
      await waitFor(`${nodes} nodes settled`, 120_000, () => h.settled('b1', nodes)).catch(async (err: Error) => {
        throw new Error(`${err.message}:\n${await h.describe()}`);
      });
      c.cores = ids.map((id) => h.cores.get(id)!);
      c.natsPids = Array.from({ length: h.nats.size }, (_, i) => h.nats.pid(i)!);
    }
    // Idle: what a settled node costs with nothing to apply (heartbeats, pulls kept open, timers).
    await new Promise((r) => setTimeout(r, 2000));
    const idle0 = clusters.map((c) => c.cores.map((p) => cpuTicks(p.child.pid!)));
    await new Promise((r) => setTimeout(r, quick ? 3000 : 10_000));
    for (const [j, c] of clusters.entries()) c.idleMs = c.cores.map((p, i) => ((cpuTicks(p.child.pid!) - idle0[j]![i]!) / ticksPerSecond / (quick ? 3 : 10)) * 1000);
    // Then warm up: a node's first million points also pay its JIT compiling and its heap
    // growing (perf: V8's compiler and marking threads were a third of a fresh node's CPU),
    // once per process. Every node applies as many warm-up points as one node alone would: with
    // one fixed warm-up a node of 3 applied two thirds of it, and its first measured run cost
    // 15–20 % more than the next ones (0.88 against 0.73–0.75 CPU-s/M), which one node's did not.
    for (const c of clusters) {
      const w0 = await Promise.all(c.cores.map((p) => pointsOf(p.url)));
      for (const piece of warmPieces) {
        const before = await Promise.all(c.cores.map((p) => pointsOf(p.url)));
        await publishAll(c.h, piece);
        c.warmPublished += piece.points;
        await waitFor(`a warm-up piece applied on ${c.replicas} owners`, 300_000, async () => {
          const p = await Promise.all(c.cores.map((x) => pointsOf(x.url)));
          return p.reduce((a, b) => a + b, 0) - before.reduce((a, b) => a + b, 0) >= c.replicas * piece.points && (await Promise.all(c.cores.map((x) => quiet(x.url)))).every(Boolean);
        });
        const p = await Promise.all(c.cores.map((x) => pointsOf(x.url)));
        if (p.every((x, i) => x - w0[i]! >= warm.points)) break;
      }
      c.warmed = await Promise.all(c.cores.map(async (p, i) => (await pointsOf(p.url)) - w0[i]!));
    }
    // The load, measured `loads.length` times per cluster (other racks each time), the clusters
    // in turn, each round starting with the next one; the figures are each cluster's run with
    // the median cost.
    for (const [r, l] of loads.entries()) {
      for (let j = 0; j < clusters.length; j++) {
        const c = clusters[(r + j) % clusters.length]!;
        c.runs.push(await measure(c.h, c.cores, c.natsPids, c.replicas, l));
      }
    }
    const perNode: number[] = [];
    for (const c of clusters) {
      const { nodes, h, replicas, runs, idleMs, warmed } = c;
      const inOrder = runs.map((x) => x.mean.toFixed(2)).join(', ');
      const sorted = [...runs].sort((a, b) => a.mean - b.mean);
      const run = sorted[Math.floor(sorted.length / 2)]!;
      const { cpuPerM, commitsPerM, natsCpu, publishedMs, wallMs } = run;
      const nc = await connectNats(h.nats.urls, { user: 'core', passwordFile: h.passFile }, 'bench');
      const jsm = await jetstreamManager(nc);
      let logBytes = 0;
      for (let k = 0; k < shards; k++) logBytes += (await jsm.streams.info(streamOf(k))).state.bytes;
      await nc.close();
      perNode.push(run.mean);
      figures.push({ name: `${nodes} node(s): core CPU-s per M points applied and written to rows, after ${(Math.min(...warmed) / 1e6).toFixed(2)}–${(Math.max(...warmed) / 1e6).toFixed(2)} M points of warm-up per node, mean over nodes, median of ${runs.length} runs alternated with the other clusters' (runs in order ${inOrder}; max node ${Math.max(...cpuPerM).toFixed(2)})`, value: run.mean, unit: 'CPU-s/M', target: 'flat within 10% from 1 to 3 nodes' });
      figures.push({ name: `${nodes} node(s): an idle node's CPU, 2 s after the nodes settled, mean over nodes (${shards} shards in all; max ${Math.max(...idleMs).toFixed(0)})`, value: idleMs.reduce((a, b) => a + b, 0) / idleMs.length, unit: 'ms per s' });
      figures.push({ name: `${nodes} node(s): synced ingest commits per M points applied, mean over nodes (each an fsync: its kernel time is the node's CPU)`, value: commitsPerM, unit: 'commits/M' });
      figures.push({ name: `${nodes} node(s): points applied per wall second, all owners (published in ${(publishedMs / 1000).toFixed(1)} s)`, value: (replicas * load.points) / (wallMs / 1000), unit: 'points/s' });
      figures.push({ name: `${nodes} node(s): NATS servers' CPU-s per M points published (3 servers, streams R3)`, value: natsCpu / (load.points / 1e6), unit: 'CPU-s/M' });
      figures.push({ name: `${nodes} node(s): log bytes per point (one replica of the streams; rack seconds were ${(load.bytes / load.points).toFixed(2)} B/point)`, value: logBytes / (c.warmPublished + loads.reduce((a, x) => a + x.points, 0)), unit: 'B/point' });
    }
    // The same comparison round by round (each round's three runs are minutes apart at most).
    const roundSpreads = loads.map((_, r) => {
      const m = clusters.map((c) => c.runs[r]!.mean);
      return (Math.max(...m) - Math.min(...m)) / Math.min(...m);
    });
    roundSpreads.sort((a, b) => a - b);
    figures.push({ name: `core CPU-s per M points: spread from 1 to 3 nodes within one round, median of ${loads.length} rounds (${roundSpreads.map((x) => (100 * x).toFixed(0)).join(', ')} %)`, value: 100 * roundSpreads[Math.floor(roundSpreads.length / 2)]!, unit: '%' });
    const spread = (Math.max(...perNode) - Math.min(...perNode)) / Math.min(...perNode);
    figures.push({ name: "core CPU-s per M points: spread from 1 to 3 nodes (the clusters' medians)", value: 100 * spread, unit: '%', target: '≤ 10%' });
    figures.push(...(await failover(clusters[2]!.h, quick, t0 + 100)));
  } finally {
    for (const c of clusters) {
      await c.h.stop();
      rmSync(c.dir, { recursive: true, force: true });
    }
  }
  return figures;
}

/** One cluster of the comparison: its NATS servers, nodes and what was measured on it. */
interface Cluster {
  nodes: number;
  dir: string;
  h: ClusterHarness;
  cores: CoreProc[];
  natsPids: number[];
  /** Owners per shard. */
  replicas: number;
  idleMs: number[];
  /** Points each node applied while warming up. */
  warmed: number[];
  warmPublished: number;
  /** In the order measured. */
  runs: Run[];
}

interface Run {
  cpuPerM: number[];
  /** cpuPerM's mean over the nodes. */
  mean: number;
  commitsPerM: number;
  natsCpu: number;
  publishedMs: number;
  wallMs: number;
}

/** Publishes `load` to settled, warmed-up nodes and measures it until applied on every owner and its rows written. */
async function measure(h: ClusterHarness, cores: CoreProc[], natsPids: number[], replicas: number, load: Load): Promise<Run> {
  const cpu0 = cores.map((c) => cpuTicks(c.child.pid!));
  const nats0 = natsPids.map((p) => cpuTicks(p));
  const p0 = await Promise.all(cores.map((c) => pointsOf(c.url)));
  const k0 = await Promise.all(cores.map((c) => commitsOf(c.url)));
  const start = Date.now();
  await publishAll(h, load);
  const publishedMs = Date.now() - start;
  await waitFor(`every point applied on ${replicas} owners`, 300_000, async () => {
    const p = await Promise.all(cores.map((c) => pointsOf(c.url)));
    return p.reduce((a, b) => a + b, 0) - p0.reduce((a, b) => a + b, 0) >= replicas * load.points;
  });
  const wallMs = Date.now() - start;
  const p1 = await Promise.all(cores.map((c) => pointsOf(c.url)));
  // The CPU counted is the points' whole cost: applied, and their rows written.
  await waitFor(`the rows written on ${cores.length} node(s)`, 300_000, async () => (await Promise.all(cores.map((c) => quiet(c.url)))).every(Boolean));
  const cpuPerM = cores.map((c, i) => (cpuTicks(c.child.pid!) - cpu0[i]!) / ticksPerSecond / ((p1[i]! - p0[i]!) / 1e6));
  const k1 = await Promise.all(cores.map((c) => commitsOf(c.url)));
  const commitsPerM = cores.reduce((a, _, i) => a + (k1[i]! - k0[i]!) / ((p1[i]! - p0[i]!) / 1e6), 0) / cores.length;
  const natsCpu = natsPids.reduce((a, p, i) => a + cpuTicks(p) - nats0[i]!, 0) / ticksPerSecond;
  return { cpuPerM, mean: cpuPerM.reduce((a, b) => a + b, 0) / cpuPerM.length, commitsPerM, natsCpu, publishedMs, wallMs };
}

/**
 * Kills one of 3 nodes under load and asks the third node, which owns none of the metric's
 * shard, so the answer must come through its proxy from the surviving owner; then the restarted
 * node's catch-up. (Asking the other owner measured no failover: an owner answers its own shards
 * from its own data, before and after the kill.)
 */
async function failover(h: ClusterHarness, quick: boolean, t0: number): Promise<Figure[]> {
  const m = new BatchMaker({ rack: 'bench-fo', servers: 40, metrics: quick ? 100 : 400, distShare: 0.05, seed: 99, shards });
  const st = await h.status('b1');
  // A metric whose shard b3 owns first, asked at the node owning none of it: its queries must move to the other owner.
  let metric = '';
  let asked = '';
  for (let i = 0; i < 400 && metric === ''; i++) {
    const name = `bench.metric_${i}`;
    const owners = st.placement.shards[shardOfName(name)]?.owners ?? [];
    const other = ['b1', 'b2'].find((n) => !owners.includes(n));
    if (owners[0] === 'b3' && owners.length === 2 && other !== undefined) {
      metric = name;
      asked = other;
    }
  }
  if (metric === '') throw new Error('INVALID RUN: no shard with b3 as first of two owners and a third node owning none of it');
  let second = t0;
  let stop = false;
  const publisher = (async () => {
    while (!stop) {
      await h.publish(m.body(second++));
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  await new Promise((r) => setTimeout(r, 3000));
  const via = h.cores.get(asked)!.url;
  const q = (from: number, to: number) => fetch(`${via}/api/v1/query?q=${encodeURIComponent(`FROM * SELECT ${metric} WINDOW 1s COMPUTE count`)}&from=${from * 1000}&to=${to * 1000}`);
  const proxiedOk = async () => (await prom(`${via}/metrics`)).get('apm_core_cluster_proxied_total{result="ok"}') ?? 0;
  const proxied0 = await proxiedOk();
  const killedAt = Date.now();
  await h.killCore('b3');
  let answeredMs = -1;
  while (Date.now() - killedAt < 30_000) {
    const upTo = second - 2;
    const r = await q(t0, upTo).catch(() => null);
    if (r !== null && r.ok) {
      const w = ((await r.json()) as { windows: { values: { count: number } }[] }).windows;
      if (w.length === upTo - t0 && w.every((x) => x.values.count === 40)) {
        answeredMs = Date.now() - killedAt;
        break;
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  // b3 stays down while a backlog builds, then restarts and catches up.
  const backlogFrom = second;
  await new Promise((r) => setTimeout(r, quick ? 5000 : 15_000));
  stop = true;
  await publisher;
  const backlogSeconds = second - backlogFrom;
  const restartedAt = Date.now();
  const b3 = await h.startCore('b3', ['--workers', '1', '--shards', String(shards)]);
  await waitFor('b3 caught up', 120_000, () => h.settled('b1', 3));
  const caughtUpMs = Date.now() - restartedAt;
  const applied = await pointsOf(b3.url);
  if (answeredMs < 0) throw new Error('INVALID RUN: no complete answer within 30 s of the SIGKILL');
  if ((await proxiedOk()) <= proxied0) throw new Error(`INVALID RUN: node ${asked} answered the failover query without proxying it (apm_core_cluster_proxied_total{result="ok"} did not grow): no failover was measured`);
  return [
    { name: 'failover: SIGKILL of a node → first complete answer from the other owner, through a node owning neither copy', value: answeredMs, unit: 'ms', target: '≤ 10,000 ms' },
    { name: `catch-up of the restarted node (${backlogSeconds} s of backlog; ${(applied / 1e6).toFixed(2)} M points applied, restart included)`, value: applied / (caughtUpMs / 1000), unit: 'points/s' },
  ];
}

function shardOfName(name: string): number {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  return shardOf(h[0]!, shards);
}
