// Copying shards between two real nodes over real HTTP (issue 13): node A (1 worker) holds the
// data, node B (2 workers, a registry seeded in another order, so every store id differs) copies
// each shard from A's snapshot route and must then answer every query exactly as A does.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import { Hono } from 'hono';
import { decodeFrame, KindCode } from '../../schema/codec.js';
import { batchBytesMax } from '../../schema/limits.js';
import { hashName } from '../../schema/names.js';
import { rackSecondBody, sectionAt, shardOf } from '../../schema/section.js';
import { buildColumns, type DistInput, type PointInput } from '../../schema/testdata.js';
import { ApiAuth, hashToken, parseTokens, TokenSet } from '../auth.js';
import { openNode, type CoreNode } from '../node.js';
import type { WindowResult } from '../query/eval.js';
import { parseQuery } from '../query/parse.js';
import { WindowCache } from '../query/windowcache.js';
import { SnapshotError } from '../snapshot.js';
import { restoringSeq, Store, type StoreOptions } from '../store.js';
import { addSnapshotRoutes, copyShardFrom, snapshotContentType, snapshotPath } from './snapshot-routes.js';
import { copiesDir, recoverStagedCopies, stageSnapshot } from './staged-copy.js';

const S = 8;
const nowS = Math.floor(Date.now() / 1000);
/** Two hours back: the blocks are written only when a test flushes (grace 6 h). */
const t0 = nowS - 7200 - (nowS % 60);
const graceMs = 6 * 3600_000;
const flushAllMs = () => Date.now() + 24 * 3600_000;
const session = 5;

const racks = ['r1', 'r2', 'r3'];
const serversOf = (rack: string) => Array.from({ length: 5 }, (_, i) => `s-${rack}-${i}`);
const gauges = ['g.0', 'g.1', 'g.2', 'g.3'];
const counters = ['c.0', 'c.1'];
const dists = ['d.0', 'd.1'];

/** Metric names whose shard is `shard` (stream messages carry one section: one shard's metrics). */
function namesOfShard(shard: number, n: number): string[] {
  const out: string[] = [];
  const h = new Uint32Array(2);
  for (let i = 0; out.length < n; i++) {
    hashName(`st.${shard}.${i}`, h, 0);
    if (shardOf(h[0]!, S) === shard) out.push(`st.${shard}.${i}`);
  }
  return out;
}
const streamShards = [1, 6];
const streamMetrics = new Map(streamShards.map((k) => [k, namesOfShard(k, 2)]));

/** One rack's second: every server's gauges, counters and distributions (values exact in binary, so sums do not depend on their order). */
function rackBody(rack: string, second: number, seq: number, opts: { bump?: number; servers?: string[] } = {}): Uint8Array {
  const bump = opts.bump ?? 0;
  const rollup = new Map<string, number[]>();
  const servers = (opts.servers ?? serversOf(rack)).map((server, si) => {
    const r = racks.indexOf(rack);
    const points: PointInput[] = [
      ...gauges.map((name, i) => ({ name, kind: KindCode.Gauge as const, value: ((second * 7 + si * 13 + i * 3 + r) % 50) * 0.25 + bump })),
      ...counters.map((name, i) => ({ name, kind: KindCode.Counter as const, value: (second % 17) + si + i + r * 10 + bump })),
    ];
    const ds: DistInput[] = dists.map((name, i) => ({ name, values: [1 + ((second + si) % 9), 10 + i + r, 0.5 * ((second * 3 + si) % 11)] }));
    for (const d of ds) rollup.set(d.name, [...(rollup.get(d.name) ?? []), ...d.values]);
    return { server, blocks: [buildColumns(points, ds)] };
  });
  const names = seq <= racks.length ? [...gauges, ...counters, ...dists] : [];
  return rackSecondBody({ rack, session, seq, second, late: false, shards: S, servers, rollup: buildColumns([], [...rollup].map(([name, values]) => ({ name, values })), names) });
}

/** A stream message: one section (metrics of one shard only), from rack `rs`. */
function streamBody(shard: number, seq: number): Uint8Array {
  const names = streamMetrics.get(shard)!;
  const second = t0 + 100 + seq;
  const servers = ['st-a', 'st-b'].map((server, si) => ({ server, blocks: [buildColumns(names.map((name, i) => ({ name, kind: KindCode.Gauge as const, value: seq * 4 + si + i })), [])] }));
  return rackSecondBody({ rack: 'rs', session: 1000 + shard, seq, second, late: false, shards: S, servers, rollup: buildColumns([], [], seq === 1 ? names : []) });
}

const allMetrics = () => [...gauges, ...counters, ...dists, ...[...streamMetrics.values()].flat()];
const selections = ['FROM * SELECT %m WINDOW 10s COMPUTE count, sum, min, max, avg, p50, p99', 'FROM rack:r2 SELECT %m WINDOW 30s COMPUTE count, sum, min, max, avg, p90', 'FROM s-r1-0, s-r3-4, st-b SELECT %m WINDOW 1m COMPUTE count, sum, avg, p50', 'FROM s-r2-*, st-* SELECT %m WINDOW 5s COMPUTE min, max, p99, count'];

async function answers(node: CoreNode): Promise<Record<string, WindowResult[]>> {
  const out: Record<string, WindowResult[]> = {};
  for (const m of allMetrics()) for (const q of selections) out[q.replace('%m', m)] = await node.pool.query(q.replace('%m', m), m, t0, t0 + 240);
  return out;
}

describe('copying shards between nodes over HTTP', () => {
  let dirA: string;
  let dirB: string;
  let a: CoreNode;
  let b: CoreNode;
  let server: ServerType;
  let base: string;
  let want: Record<string, WindowResult[]>;
  const seqs = new Map(racks.map((r) => [r, 1]));
  const nextSeq = (rack: string) => {
    const s = seqs.get(rack)!;
    seqs.set(rack, s + 1);
    return s;
  };
  /** A request A stored (B must take it as a duplicate once it has A's marks). */
  let storedOnA: Uint8Array;

  beforeAll(async () => {
    dirA = mkdtempSync(join(tmpdir(), 'apm-snap-a-'));
    dirB = mkdtempSync(join(tmpdir(), 'apm-snap-b-'));
    a = await openNode({ dataDir: dirA, workers: 1, shards: S, flushGraceMs: graceMs, queryLatenessMs: 0 });
    b = await openNode({ dataDir: dirB, workers: 2, shards: S, flushGraceMs: graceMs, queryLatenessMs: 0 });
    // B's registries see the servers and racks first in another order: its ids differ from A's.
    const reversed = [...racks].reverse();
    for (const [i, rack] of reversed.entries()) expect((await b.pool.ingest(rackBody(rack, t0 + 3000, 1000 + i, { servers: [...serversOf(rack)].reverse() }))).status).toBe(204);
    const app = new Hono();
    const tokens = new TokenSet(parseTokens(`${hashToken('admin-secret')} admin adm\n${hashToken('read-secret')} read rd\n`, 'test tokens'));
    app.use('*', new ApiAuth({ tokens }).middleware());
    addSnapshotRoutes(app, a.pool);
    const port = await new Promise<number>((resolve) => {
      server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 }, (info) => resolve(info.port));
    });
    base = `http://127.0.0.1:${port}`;

    // A: two blocks written as rows, then a third block and late data for the first in the WAL only.
    for (let t = t0; t < t0 + 80; t += 4) for (const rack of racks) expect((await a.pool.ingest(rackBody(rack, t, nextSeq(rack)))).status).toBe(204);
    for (const k of streamShards) for (let n = 1; n <= 3; n++) expect((await a.pool.ingest(streamBody(k, n), () => true, { seq: n, after: n - 1 })).status).toBe(204);
    await a.pool.flush(flushAllMs());
    for (let t = t0 + 120; t < t0 + 130; t++) for (const rack of racks) expect((await a.pool.ingest(rackBody(rack, t, nextSeq(rack)))).status).toBe(204);
    storedOnA = rackBody('r1', t0 + 1, nextSeq('r1'), { bump: 100 });
    expect(await a.pool.ingest(storedOnA)).toMatchObject({ status: 204, duplicates: 0 });
    for (const k of streamShards) expect((await a.pool.ingest(streamBody(k, 4), () => true, { seq: 4, after: 3 })).status).toBe(204);
    want = await answers(a);
  });

  afterAll(async () => {
    server?.close();
    await a?.close();
    await b?.close();
    rmSync(dirA, { recursive: true, force: true });
    rmSync(dirB, { recursive: true, force: true });
  });

  async function copyAll(): Promise<void> {
    const total = { rows: 0, walEntries: 0, marks: 0 };
    for (let k = 0; k < S; k++) {
      const r = await copyShardFrom(b.pool, base, k, 'Bearer admin-secret', copiesDir(dirB));
      expect(r.bytes).toBeGreaterThan(0);
      total.rows += r.rows;
      total.walEntries += r.walEntries;
      total.marks += r.marks;
    }
    // Rows, WAL entries and marks all travelled.
    expect(Math.min(total.rows, total.walEntries, total.marks)).toBeGreaterThan(0);
  }

  it('needs an admin token', async () => {
    await expect(copyShardFrom(b.pool, base, 0, undefined, copiesDir(dirB))).rejects.toThrow(/answered 401/);
    await expect(copyShardFrom(b.pool, base, 0, 'Bearer read-secret', copiesDir(dirB))).rejects.toThrow(/answered 403.*needs role admin/);
    const r = await fetch(`${base}${snapshotPath(S)}`, { headers: { authorization: 'Bearer admin-secret' } });
    expect(r.status).toBe(400);
  });

  it('answers every query on the copy exactly as on the source, rows and WAL alike, with the same applied sequences', async () => {
    // Every query of a rack's metrics has windows (a stream metric's rack is rs, not r2).
    expect(Object.entries(want).filter(([q, w]) => w.length === 0 && !/rack:r2 SELECT st\./.test(q))).toEqual([]);
    await copyAll();
    expect(await answers(b)).toEqual(want);
    const seqsA = await a.pool.streamSeqs();
    expect(seqsA[1]).toBe(4);
    expect(await b.pool.streamSeqs()).toEqual(seqsA);
    // What was in A's WAL is in B's head, written as rows later: the answers stay.
    await b.pool.flush(flushAllMs());
    expect(await answers(b)).toEqual(want);
  });

  it('a second copy replaces the first (nothing doubles)', async () => {
    await copyAll();
    expect(await answers(b)).toEqual(want);
    expect(await b.pool.streamSeqs()).toEqual(await a.pool.streamSeqs());
  });

  it('a truncated or corrupt stream is refused whole and leaves the shard empty, marked restoring (copied again, never read on from the stream)', async () => {
    const k = streamShards[0]!;
    const r = await fetch(`${base}${snapshotPath(k)}`, { headers: { authorization: 'Bearer admin-secret' } });
    expect(r.headers.get('content-type')).toBe(snapshotContentType);
    const bytes = new Uint8Array(await r.arrayBuffer());
    const metric = streamMetrics.get(k)![0]!;
    const q = `FROM * SELECT ${metric} WINDOW 10s COMPUTE count, sum`;
    const f = async (input: Uint8Array, why: RegExp) => {
      // In pieces of 1000 B, as a socket would deliver them.
      const pieces = async function* () {
        for (let at = 0; at < input.length; at += 1000) yield input.subarray(at, at + 1000);
      };
      const err = await b.pool.restoreShard(k, pieces()).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SnapshotError);
      expect((err as Error).message).toMatch(why);
      expect((err as Error).message).toMatch(/marked restoring/);
      expect((await b.pool.streamSeqs())[k]).toBe(restoringSeq);
      expect(await b.pool.query(q, metric, t0, t0 + 240)).toEqual([]);
    };
    // Answered (and kept in the worker's answer cache) before the failed restores wipe the shard.
    expect((await b.pool.query(q, metric, t0, t0 + 240)).length).toBeGreaterThan(0);
    await f(bytes.subarray(0, Math.floor(bytes.length / 2)), /truncated/); // cut inside a record
    await f(bytes.subarray(0, bytes.length - 41), /truncated/); // the end record (41 B) cut off: whole records only
    const flipped = bytes.slice();
    flipped[Math.floor(bytes.length / 3)]! ^= 0x40;
    await f(flipped, /CRC|corrupt/);
    await f(new TextEncoder().encode('{"error":"not a snapshot"}'), /not a shard snapshot/);
    // Copied again, it answers as the source.
    await copyShardFrom(b.pool, base, k, 'Bearer admin-secret', copiesDir(dirB));
    const onA = await a.pool.query(q, metric, t0, t0 + 240);
    expect(onA.length).toBeGreaterThan(0);
    expect(await b.pool.query(q, metric, t0, t0 + 240)).toEqual(onA);
    expect((await b.pool.streamSeqs())[k]).toBe(4);
  });

  it('regression: a copy whose source dies mid-stream leaves what this node held of the shard untouched (before: the shard was emptied once the source answered, and lost with the source)', async () => {
    const k = streamShards[0]!;
    const metric = streamMetrics.get(k)![0]!;
    const q = `FROM * SELECT ${metric} WINDOW 10s COMPUTE count, sum`;
    const held = await b.pool.query(q, metric, t0, t0 + 240);
    expect(held.length).toBeGreaterThan(0);
    const heldSeq = (await b.pool.streamSeqs())[k]!;
    expect(heldSeq).toBeGreaterThan(0);
    // A source that sends half of a real snapshot, then closes the connection.
    const whole = Buffer.from(await (await fetch(`${base}${snapshotPath(k)}`, { headers: { authorization: 'Bearer admin-secret' } })).arrayBuffer());
    const dying = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': snapshotContentType, 'content-length': String(whole.length) });
      res.write(whole.subarray(0, whole.length >> 1), () => res.destroy());
    });
    const port = await new Promise<number>((resolve) => dying.listen(0, '127.0.0.1', () => resolve((dying.address() as AddressInfo).port)));
    try {
      const err = await copyShardFrom(b.pool, `http://127.0.0.1:${port}`, k, undefined, copiesDir(dirB)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SnapshotError);
      expect((err as Error).message).toMatch(/untouched/);
    } finally {
      dying.close();
    }
    expect((await b.pool.streamSeqs())[k]).toBe(heldSeq);
    expect(await b.pool.query(q, metric, t0, t0 + 240)).toEqual(held);
    // Nothing staged is left behind.
    expect(readdirSync(copiesDir(dirB))).toEqual([]);
  });

  it('a copy interrupted while it replaced the shard is applied again from its staged file at start; other staged files are removed', async () => {
    const k = streamShards[0]!;
    const metric = streamMetrics.get(k)![0]!;
    const q = `FROM * SELECT ${metric} WINDOW 10s COMPUTE count, sum`;
    const onA = await a.pool.query(q, metric, t0, t0 + 240);
    const whole = new Uint8Array(await (await fetch(`${base}${snapshotPath(k)}`, { headers: { authorization: 'Bearer admin-secret' } })).arrayBuffer());
    const pieces = async function* (bytes: Uint8Array) {
      for (let at = 0; at < bytes.length; at += 1000) yield bytes.subarray(at, at + 1000);
    };
    const dir = copiesDir(dirB);
    await stageSnapshot(dir, k, pieces(whole));
    // A truncated stream is not staged (and leaves no part behind).
    await expect(stageSnapshot(dir, k + 1, pieces(whole.subarray(0, whole.length - 41)))).rejects.toThrow(/truncated/);
    expect(readdirSync(dir)).toEqual([`shard-${k}.snap`]);
    // The process stopped while the copy replaced the shard: emptied, marked restoring.
    await expect(b.pool.restoreShard(k, pieces(whole.subarray(0, whole.length >> 1)))).rejects.toThrow(/marked restoring/);
    expect((await b.pool.streamSeqs())[k]).toBe(restoringSeq);
    // Leftovers: a download cut short, and a copy of a shard whose restore completed.
    const other = streamShards[1]!;
    writeFileSync(join(dir, `shard-${other}.snap`), 'done already');
    writeFileSync(join(dir, `shard-${other}.snap.part`), 'cut short');
    const lines: string[] = [];
    expect(await recoverStagedCopies(b.pool, dirB, (l) => lines.push(l))).toEqual([k]);
    expect(lines.join('\n')).toMatch(new RegExp(`shard ${k}: its copy was interrupted`));
    expect((await b.pool.streamSeqs())[k]).toBe((await a.pool.streamSeqs())[k]);
    expect(await b.pool.query(q, metric, t0, t0 + 240)).toEqual(onA);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('keeps ingesting after the copy: its marks make a request A stored a duplicate, and the stream goes on from the applied sequence', async () => {
    expect(await b.pool.ingest(storedOnA)).toMatchObject({ status: 204, points: 0 });
    const fresh = rackBody('r2', t0 + 200, 5000);
    expect(await b.pool.ingest(fresh)).toMatchObject({ status: 204, duplicates: 0 });
    const [w] = await b.pool.query('FROM rack:r2 SELECT g.0 WINDOW 1s COMPUTE count', 'g.0', t0 + 200, t0 + 201);
    expect(w!.values.count).toBe(5);
    const k = streamShards[1]!;
    expect((await b.pool.ingest(streamBody(k, 5), () => true, { seq: 5, after: 4 })).status).toBe(204);
    expect((await b.pool.streamSeqs())[k]).toBe(5);
    // A message already applied on A (and so in the copy) is a redelivery.
    expect(await b.pool.ingest(streamBody(k, 3), () => true, { seq: 3, after: 2 })).toMatchObject({ status: 204, points: 0 });
  });
});

describe('Store snapshots', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
  function open(over: Partial<StoreOptions> = {}): Store {
    const dir = mkdtempSync(join(tmpdir(), 'apm-snap-store-'));
    dirs.push(dir);
    const o: StoreOptions = { dir, shardCount: S, shards: Array.from({ length: S }, (_, k) => k), retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 1 << 30, flushGraceMs: 0, headBytesMax: 1 << 30, metricsMax: 10_000, metricsPerServerMax: 10_000, serversMax: 10_000, racksMax: 100, sliceMs: 1000, diskBytesMax: 0, diskReserveBytes: 0, ...over };
    return new Store(o);
  }
  function ingest(store: Store, body: Uint8Array): void {
    const r = decodeFrame(body, batchBytesMax);
    if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('not a RackSecond');
    const m = r.msg;
    const res = store.ingest({ rack: m.rack, session: m.session, seq: m.seq, second: m.second, late: false }, Array.from(m.sectionShards, (shard, i) => ({ shard, bytes: sectionAt(m, i).slice() })));
    expect(res.status).toBe(204);
  }
  /** Every stored entry of a metric by server name and second (ids differ between stores; names do not). */
  function dump(store: Store, name: string): Record<string, unknown> {
    const h = new Uint32Array(2);
    hashName(name, h, 0);
    const out: Record<string, unknown> = {};
    store.read(h[0]!, h[1]!, t0, t0 + 600, (row, block) => {
      row.serverIds.forEach((sid, j) => {
        const server = store.registry.serverById(sid)!.name;
        for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) out[`${server}@${block + row.pointSecs[i]!}`] = ((out[`${server}@${block + row.pointSecs[i]!}`] as number[] | undefined) ?? []).concat(row.pointVals[i]!);
        for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) out[`${server}@${block + row.dist.secs[i]!}`] = ((out[`${server}@${block + row.dist.secs[i]!}`] as number[] | undefined) ?? []).concat(row.dist.count[i]!, row.dist.sum[i]!);
      });
    });
    return out;
  }

  it('regression: a server a restore brings rows of counts as seen now (before: a store that last heard of it past the retention forgot it at the next sweep, and its id, with the restored rows, went to the next new server)', async () => {
    const opts = { retentionSeconds: 3600, futureSecondsMax: 60 };
    const dst = open(opts);
    let src = open(opts);
    const second = (server: string, metric: string, at: number, value: number) => {
      const m = decodeFrame(rackSecondBody({ rack: 'r1', session, seq: at, second: at, late: false, shards: S, servers: [{ server, blocks: [buildColumns([{ name: metric, kind: KindCode.Gauge, value }], [])] }], rollup: buildColumns([], [], []) }), batchBytesMax);
      if (!m.ok || m.msg.type !== 'rackSecond') throw new Error('not a RackSecond');
      const msg = m.msg;
      return [{ rack: 'r1', session, seq: at, second: at, late: false }, Array.from(msg.sectionShards, (shard, i) => ({ shard, bytes: sectionAt(msg, i).slice() }))] as const;
    };
    const recent = t0 + 5400;
    const old = recent - 3 * 3600;
    // The destination heard of X only long ago (a metric of another shard); the source has X's recent rows.
    const other = gauges.find((g) => shardOfName(g) !== shardOfName('g.0'))!;
    expect(dst.ingest(...second('X', other, old, 1), old * 1000 + 500).status).toBe(204);
    while (dst.writeSlice(flushAllMs()));
    expect(src.ingest(...second('X', 'g.0', recent, 42), recent * 1000 + 500).status).toBe(204);
    while (src.writeSlice(flushAllMs()));
    // Reopened: the written block's WAL entries are gone (a snapshot with them replays them, which registers X anew).
    await src.close();
    src = new Store({ ...src.opts });
    await dst.restoreShard(shardOfName('g.0'), [...src.snapshotShard(shardOfName('g.0'), 4096)]);
    const xId = dst.registry.serverByName('X')!.id;
    await dst.retentionSweep(Date.now());
    expect(dst.registry.serverByName('X')?.id).toBe(xId);
    expect(dst.ingest(...second('Y', other, recent + 60, 7)).status).toBe(204);
    expect(dst.registry.serverByName('Y')!.id).not.toBe(xId);
    const h = new Uint32Array(2);
    hashName('g.0', h, 0);
    const seen: string[] = [];
    dst.read(h[0]!, h[1]!, recent, recent + 1, (row) => row.serverIds.forEach((sid) => seen.push(dst.registry.serverById(sid)!.name)));
    expect(seen).toEqual(['X']);
    await src.close();
    await dst.close();
  });

  it('a snapshot taken while written blocks still have their WAL entries restores each entry once; every truncation is refused', async () => {
    const src = open();
    for (let t = t0; t < t0 + 30; t++) for (const [i, rack] of racks.entries()) ingest(src, rackBody(rack, t, 1 + (t - t0) * 3 + i));
    // Rows written, their WAL entries' delete not yet committed: the snapshot holds both.
    while (src.writeSlice(flushAllMs()));
    const chunks = [...src.snapshotShard(shardOfName('g.0'), 4096)];
    expect(chunks.length).toBeGreaterThan(2);
    const dst = open();
    ingest(dst, rackBody('r3', t0 + 500, 1, { servers: [...serversOf('r3')].reverse() }));
    const r = await dst.restoreShard(shardOfName('g.0'), chunks);
    expect(r.rows).toBeGreaterThan(0);
    for (const m of [...gauges, ...dists].filter((x) => shardOfName(x) === shardOfName('g.0'))) expect(dump(dst, m)).toEqual(dump(src, m));
    // An answer kept by the worker's cache (core/query/windowcache.ts) goes with the wiped shard.
    const cacheCounters = { answer_cache_hits: 0, answer_cache_misses: 0, answer_cache_evicted: 0, answer_cache_windows: 0 };
    const answers = new WindowCache(cacheCounters);
    const q = parseQuery('FROM * SELECT g.0 WINDOW 10s COMPUTE count, sum');
    const copied = answers.evaluate(dst, q, t0, t0 + 60);
    expect(copied.length).toBe(3);
    expect(answers.evaluate(dst, q, t0, t0 + 60)).toEqual(copied);
    expect(cacheCounters.answer_cache_hits).toBe(6);
    const all = Buffer.concat(chunks);
    for (let cut = 0; cut < all.length; cut += Math.max(1, Math.floor(all.length / 60))) {
      await expect(dst.restoreShard(shardOfName('g.0'), [all.subarray(0, cut)])).rejects.toThrow(SnapshotError);
      expect(dst.streamSeqs()[shardOfName('g.0')]).toBe(restoringSeq);
      expect(dump(dst, 'g.0')).toEqual({});
      expect(answers.evaluate(dst, q, t0, t0 + 60)).toEqual([]);
    }
    await src.close();
    await dst.close();
  });
});

function shardOfName(name: string): number {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  return shardOf(h[0]!, S);
}
