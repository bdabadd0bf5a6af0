import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeFrame, KindCode, type EdgeSecondMessage } from '../../schema/codec.js';
import { batchBytesMax } from '../../schema/limits.js';
import { rackSecondBody, sectionAt } from '../../schema/section.js';
import { buildColumns, type DistInput, type PointInput } from '../../schema/testdata.js';
import { RackMerger } from '../../rack/merge.js';
import { openNode, type CoreNode, type NodeOptions } from '../node.js';
import { Store } from '../store.js';
import { evaluate, orderStatistic, orderStatistics, type WindowResult } from './eval.js';
import { LmdbDefinitions, QueryCatalog } from './catalog.js';
import { compileGlob } from './glob.js';
import { fnKey, parseQuery, type Query } from './parse.js';
import { StoredQueries } from './stored.js';

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
const S = 8;

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'apm-eval-'));
  dirs.push(dir);
  return dir;
}

/** A node of two workers (a query's metric may live in either); close it when done. */
function openAt(dir: string, over: Partial<NodeOptions> = {}): Promise<CoreNode> {
  return openNode({ dataDir: dir, workers: 2, shards: S, queryLatenessMs: 0, flushGraceMs: 0, ...over });
}

// Raw observations the reference evaluator works from.
interface Obs {
  server: string;
  rack: string;
  second: number;
  metric: string;
  value: number;
}

const racks: Record<string, string[]> = { r1: ['web-1', 'web-2', 'web-3', 'web-4'], r2: ['db-1', 'db-2', 'db-3'] };
// A block boundary (a multiple of 60) two to three minutes ahead: a new stored query starts at
// the window before real now (core/query/stored.ts sync), and the workers' own timers (at real
// now) neither write these blocks nor evaluate these windows, so each test decides when
// (node.pool.flush, node.pool.tick).
const t0 = Math.ceil(Date.now() / 60_000) * 60 + 120;
const seconds = 180;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

/** One rack-second of gauges for one server (session 1). */
function gaugeBody(o: { rack: string; seq: number; second: number; server: string; points: PointInput[]; late?: boolean }): Uint8Array {
  return rackSecondBody({ rack: o.rack, session: 1, seq: o.seq, second: o.second, late: o.late ?? false, shards: S, servers: [{ server: o.server, blocks: [buildColumns(o.points, [])] }], rollup: buildColumns([], []) });
}

async function ingest(node: CoreNode, body: Uint8Array): Promise<void> {
  const r = await node.pool.ingest(body);
  expect(r.status).toBe(204);
}

/** Generates observations and stores them as racks would send them; returns the raw truth. */
async function load(node: CoreNode): Promise<Obs[]> {
  const r = rng(11);
  const obs: Obs[] = [];
  const merger = new RackMerger(100);
  let seq = 1;
  for (let t = t0; t < t0 + seconds; t++) {
    for (const [rack, servers] of Object.entries(racks)) {
      const parts: { server: string; parts: EdgeSecondMessage[] }[] = [];
      for (const server of servers) {
        if (server === 'db-3' && t < t0 + 30) continue; // appears later
        const points: PointInput[] = [];
        const dists: DistInput[] = [];
        if (r() > 0.1) {
          const v = Math.round((r() - 0.3) * 10_000) / 100; // negative values too
          points.push({ name: 'g', kind: KindCode.Gauge, value: v });
          obs.push({ server, rack, second: t, metric: 'g', value: v });
        }
        const k = Math.floor(r() * 5);
        if (k > 0) {
          const values = Array.from({ length: k }, () => Math.round(Math.exp(1 + 3 * r()) * 1000) / 1000);
          dists.push({ name: 'lat', values });
          for (const v of values) obs.push({ server, rack, second: t, metric: 'lat', value: v });
        }
        parts.push({ server, parts: [{ type: 'edgeSecond', server, session: 1, seq: 0, second: t, part: 0, parts: 1, sentMs: 0, series: buildColumns(points, dists) }] });
      }
      const m = merger.merge(parts);
      await ingest(node, rackSecondBody({ rack, session: 1, seq: seq++, second: t, late: false, shards: S, servers: m.servers, rollup: m.rollup }));
    }
    // Blocks written so far go to rows (the third one partly): reads then span rows, a row
    // plus head entries of the same block, and the head.
    if (t === t0 + 125) {
      await node.pool.flush(Date.now() + 3_600_000);
      expect((await node.pool.freshStats()).counters.rows_written).toBeGreaterThan(0);
    }
  }
  return obs;
}

/** A stored query's results with start in [fromMs, toMs), as the results API serves them. */
async function results(node: CoreNode, id: string, fromMs = 0, toMs = 8.64e15): Promise<WindowResult[]> {
  return (await node.stored.resultsJson(id, fromMs, toMs, 10_000)).map((j) => JSON.parse(j) as WindowResult);
}

/** Plain, obviously-correct evaluation over raw observations. */
function reference(obs: Obs[], q: Query, from: number, to: number): Map<number, { servers: number; count: number; values: Record<string, number> }> {
  const tests = q.selectors.map((s): ((o: Obs) => boolean) => {
    if (s.type === 'all') return () => true;
    if (s.type === 'server') return (o) => o.server === s.id;
    const match = compileGlob(s.pattern);
    return s.type === 'glob' ? (o) => match(o.server) : (o) => match(o.rack);
  });
  const picked = obs.filter((o) => o.metric === q.metric && tests.some((t) => t(o)));
  const W = q.windowSeconds;
  const out = new Map<number, { servers: number; count: number; values: Record<string, number> }>();
  // Every window that overlaps [from, to): the first is the one containing `from` (issue 16.12).
  for (let start = Math.floor(from / W) * W; start < to; start += W) {
    const inWin = picked.filter((o) => o.second >= start && o.second < start + W);
    if (inWin.length === 0) continue;
    const vals = inWin.map((o) => o.value).sort((a, b) => a - b);
    const values: Record<string, number> = {};
    for (const f of q.functions) {
      const sum = vals.reduce((a, b) => a + b, 0);
      values[fnKey(f)] = f.type === 'min' ? vals[0]! : f.type === 'max' ? vals[vals.length - 1]! : f.type === 'count' ? vals.length : f.type === 'sum' ? sum : f.type === 'avg' ? sum / vals.length : vals[Math.floor((Math.round(f.p * 1e6) * (vals.length - 1)) / 1e8)]!; // exact for p of ≤ 6 decimals
    }
    out.set(start * 1000, { servers: new Set(inWin.map((o) => o.server)).size, count: vals.length, values });
  }
  return out;
}

function compare(got: WindowResult[], want: ReturnType<typeof reference>, q: Query, exactPercentiles: boolean): void {
  expect(got.map((w) => w.startMs)).toEqual([...want.keys()]);
  for (const w of got) {
    const r = want.get(w.startMs)!;
    expect([w.servers, w.count, w.endMs - w.startMs]).toEqual([r.servers, r.count, q.windowSeconds * 1000]);
    for (const f of q.functions) {
      const k = fnKey(f);
      const g = w.values[k]!;
      const e = r.values[k]!;
      if (f.type === 'percentile' && !exactPercentiles) expect(Math.abs(g - e), `${k} at ${w.startMs}`).toBeLessThanOrEqual(Math.abs(e) * 0.01);
      else if (f.type === 'sum' || f.type === 'avg') expect(g).toBeCloseTo(e, 6);
      else expect(g, `${k} at ${w.startMs}`).toBe(e);
    }
  }
}

describe('query evaluation against a reference over raw observations', async () => {
  const node = await openAt(tempDir(), { queryLatenessMs: 3000, limits: { lateSecondsMax: 1000 } });
  afterAll(() => node.close());
  const obs = await load(node);
  const cases: [string, boolean][] = [];
  for (const sel of ['*', 'web-*', 'web-2', 'rack:r2', 'db-?,web-1', 'rack:r*']) {
    for (const win of ['1s', '5s', '1m']) {
      cases.push([`FROM ${sel} SELECT g WINDOW ${win} COMPUTE min, max, avg, count, sum, p50, p99, percentile(0), percentile(100)`, true]);
      cases.push([`FROM ${sel} SELECT lat WINDOW ${win} COMPUTE min, max, avg, count, sum, p50, p90, p99.9`, false]);
    }
  }
  for (const [text, exact] of cases) {
    it(text, async () => {
      const q = parseQuery(text);
      // A range that starts mid-window and spans rows and the head; evaluated by the worker owning the metric.
      compare(await node.pool.query(q.text, q.metric, t0 + 3, t0 + seconds), reference(obs, q, t0 + 3, t0 + seconds), q, exact);
    });
  }

  it('stored queries evaluate closed windows, and late data raises the revision', async () => {
    const def = await node.stored.create('g', 'FROM * SELECT g WINDOW 5s COMPUTE count, max', Date.now());
    await node.pool.tick((t0 + seconds) * 1000 + 3000);
    const before = await results(node, def.id, t0 * 1000, (t0 + seconds) * 1000);
    expect(before.length).toBe(seconds / 5);
    expect(before[0]).toMatchObject({ startMs: t0 * 1000, revision: 0 });
    // The results route keeps its answer text while no window of the query arrives.
    const url = `/api/v1/queries/${def.id}/results?from=${t0 * 1000}&to=${(t0 + seconds) * 1000}`;
    const viaHttp = async () => ((await (await node.app.request(url)).json()) as { windows: WindowResult[] }).windows;
    const sent = { ...node.stored.answerCounters };
    expect(await viaHttp()).toEqual(before);
    expect(await viaHttp()).toEqual(before);
    expect([node.stored.answerCounters.built - sent.built, node.stored.answerCounters.kept - sent.kept]).toEqual([1, 1]);
    const live: WindowResult[] = [];
    node.stored.subscribe((id, w) => id === def.id && live.push(w));
    // A late request: a new server of a new rack reports 1e6 at t0 + 7.
    await ingest(node, gaugeBody({ rack: 'r9', seq: 1, second: t0 + 7, late: true, server: 'late-1', points: [{ name: 'g', kind: KindCode.Gauge, value: 1e6 }] }));
    await node.pool.tick((t0 + seconds) * 1000 + 4000);
    const after = await results(node, def.id, (t0 + 5) * 1000, (t0 + 10) * 1000);
    expect(after[0]).toMatchObject({ revision: 1, values: { max: 1e6, count: before[1]!.count + 1 } });
    expect(live.map((w) => [w.startMs, w.revision])).toEqual([[(t0 + 5) * 1000, 1]]);
    // Regression (kept answers): the revised window is answered at once, not a second later.
    expect((await viaHttp())[1]).toMatchObject({ revision: 1, values: { max: 1e6 } });
    // 70 more ranges beside the one kept: at most 64 answers stay kept, the rest evicted and counted.
    const evicted = node.stored.answerCounters.evicted;
    for (let i = 1; i <= 70; i++) expect((await node.app.request(`/api/v1/queries/${def.id}/results?from=${t0 * 1000}&to=${(t0 + seconds + i) * 1000}`)).status).toBe(200);
    const a = node.stored.answerCounters;
    expect(a.evicted - evicted).toBe(71 - 64);
    expect(await (await node.app.request('/metrics')).text()).toMatch(new RegExp(`^apm_core_results_answers_evicted_total ${a.evicted}$`, 'm'));
  });
});

describe('stored queries across a restart', () => {
  it('keep their definition and cursor, and compute the windows missed while down from storage', async () => {
    const dir = tempDir();
    const ingestRange = async (node: CoreNode, from: number, to: number, seq0: number) => {
      for (let t = from; t < to; t++) await ingest(node, gaugeBody({ rack: 'r1', seq: seq0 + t - from, second: t, server: 's1', points: [{ name: 'up', kind: KindCode.Gauge, value: t - t0 }] }));
    };
    let node = await openAt(dir, { queryLatenessMs: 1000 });
    const def = await node.stored.create('up', 'FROM s1 SELECT up WINDOW 10s COMPUTE max, count', Date.now());
    await ingestRange(node, t0, t0 + 20, 1);
    await node.pool.tick((t0 + 21) * 1000);
    expect((await results(node, def.id)).map((w) => w.values.max)).toEqual([9, 19]);
    await node.close();
    // Down while seconds t0+20 .. t0+60 are written: a node on the same data whose queries never
    // reach those windows (its workers tick at real now, before t0), as a core replaying its WAL.
    node = await openAt(dir, { queryLatenessMs: 1000 });
    await ingestRange(node, t0 + 20, t0 + 60, 100);
    await node.pool.flush(Date.now() + 3_600_000);
    await node.close();
    node = await openAt(dir, { queryLatenessMs: 1000 });
    expect(node.stored.get(def.id)).toMatchObject({ name: 'up', query: 'FROM s1 SELECT up WINDOW 10s COMPUTE max, count' });
    expect((await results(node, def.id)).map((w) => w.values.max)).toEqual([9, 19]); // loaded from the worker's store
    await node.pool.tick((t0 + 61) * 1000);
    expect((await results(node, def.id)).map((w) => [w.values.max, w.values.count])).toEqual([[9, 10], [19, 10], [29, 10], [39, 10], [49, 10], [59, 10]]);
    await node.close();
  });

  it('count their lag from the end of the oldest waiting window', async () => {
    // The worker's side (core/query/stored.ts) over one store in this thread, at chosen times.
    const store = new Store({ dir: tempDir(), shardCount: S, shards: Array.from({ length: S }, (_, k) => k), retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 100, metricsPerServerMax: 100, serversMax: 100, racksMax: 10, sliceMs: 20, diskBytesMax: 0, diskReserveBytes: 0 });
    const stored = new StoredQueries(store.env, store, { latenessMs: 1000, windowsPerTickMax: 1000, lateSecondsMax: 100 });
    stored.sync([{ id: 'q1', name: 'up', query: 'FROM s1 SELECT up WINDOW 10s COMPUTE max, count', createdMs: t0 * 1000 }], t0 * 1000);
    for (let t = t0; t < t0 + 60; t++) {
      const m = decodeFrame(gaugeBody({ rack: 'r1', seq: 1 + t - t0, second: t, server: 's1', points: [{ name: 'up', kind: KindCode.Gauge, value: t - t0 }] }), batchBytesMax);
      if (!m.ok || m.msg.type !== 'rackSecond') throw new Error('BUG: test body does not decode');
      const msg = m.msg;
      expect(store.ingest(msg, [...msg.sectionShards].map((shard, i) => ({ shard, bytes: sectionAt(msg, i).slice() }))).status).toBe(204);
    }
    await stored.tick((t0 + 21) * 1000);
    // Behind by the windows not evaluated: the oldest waiting one ([t0+20, t0+30)) ended 31 s before.
    expect(stored.lagSeconds((t0 + 61) * 1000)).toBe(31);
    await stored.tick((t0 + 61) * 1000);
    expect(stored.lagSeconds((t0 + 61) * 1000)).toBeLessThanOrEqual(0);
    expect(stored.resultsJson('q1', 0, 8.64e15, 100).map((j) => (JSON.parse(j) as WindowResult).values.max)).toEqual([9, 19, 29, 39, 49, 59]);
    // Results of windows that start before the retention go with the rows (they grew for ever):
    // 30 s of retention at t0 + 60 keeps the windows from t0 + 30 on; in bounded transactions.
    expect(await stored.retentionSweep((t0 + 60) * 1000, 30, 2)).toBe(3);
    expect(stored.resultsJson('q1', 0, 8.64e15, 100).map((j) => (JSON.parse(j) as WindowResult).values.max)).toEqual([39, 49, 59]);
    expect(stored.counters.results_deleted).toBe(3);
    await store.close();
  });
});

describe('regression: stored-query ticks that fail, and late data from before a query existed', () => {
  const storeAt = () => new Store({ dir: tempDir(), shardCount: S, shards: Array.from({ length: S }, (_, k) => k), retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 100, metricsPerServerMax: 100, serversMax: 100, racksMax: 10, sliceMs: 20, diskBytesMax: 0, diskReserveBytes: 0 });
  const put = (store: Store, seq: number, t: number, value: number) => {
    const m = decodeFrame(gaugeBody({ rack: 'r1', seq, second: t, server: 's1', points: [{ name: 'up', kind: KindCode.Gauge, value }] }), batchBytesMax);
    if (!m.ok || m.msg.type !== 'rackSecond') throw new Error('BUG: test body does not decode');
    const msg = m.msg;
    expect(store.ingest(msg, [...msg.sectionShards].map((shard, i) => ({ shard, bytes: sectionAt(msg, i).slice() }))).status).toBe(204);
  };
  const starts = (stored: StoredQueries) => stored.resultsJson('q1', 0, 8.64e15, 100).map((j) => (JSON.parse(j) as WindowResult).startMs / 1000 - t0);

  it('a tick whose results cannot be stored is evaluated again by the next (before: its windows were missing until a restart)', async () => {
    const store = storeAt();
    for (let t = t0; t < t0 + 60; t++) put(store, 1 + t - t0, t, t - t0);
    const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100 });
    stored.sync([{ id: 'q1', name: 'up', query: 'FROM s1 SELECT up WINDOW 10s COMPUTE count', createdMs: t0 * 1000 }], (t0 + 10) * 1000);
    const real = store.env.transactionSync.bind(store.env);
    store.env.transactionSync = (() => {
      throw new Error('MDB_MAP_FULL (injected by a test)');
    }) as typeof store.env.transactionSync;
    await expect(stored.tick((t0 + 30) * 1000)).rejects.toThrow(/injected/);
    store.env.transactionSync = real;
    await stored.tick((t0 + 60) * 1000);
    expect(starts(stored)).toEqual([0, 10, 20, 30, 40, 50]);
    await store.close();
  });

  it('late data acknowledged just before a restart revises its window after it (before: the late seconds waiting for the next tick were in memory only)', async () => {
    const dir = tempDir();
    const open = () => new Store({ dir, shardCount: S, shards: Array.from({ length: S }, (_, k) => k), retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 100, metricsPerServerMax: 100, serversMax: 100, racksMax: 10, sliceMs: 20, diskBytesMax: 0, diskReserveBytes: 0 });
    const def = { id: 'q1', name: 'up', query: 'FROM s1 SELECT up WINDOW 10s COMPUTE max', createdMs: t0 * 1000 };
    const before = open();
    for (let t = t0; t < t0 + 60; t++) put(before, 1 + t - t0, t, t - t0);
    const first = new StoredQueries(before.env, before, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100 });
    first.sync([def], (t0 + 10) * 1000);
    await first.tick((t0 + 60) * 1000);
    put(before, 100, t0 + 5, 99); // acknowledged (in the WAL); the process stops before its next tick
    await before.close();
    const after = open();
    const stored = new StoredQueries(after.env, after, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100 });
    stored.noteReplayed(after.replayedSeconds);
    stored.sync([def], (t0 + 61) * 1000);
    await stored.tick((t0 + 61) * 1000);
    const [w] = stored.resultsJson('q1', 0, 8.64e15, 1).map((j) => JSON.parse(j) as WindowResult);
    expect([w!.startMs / 1000 - t0, w!.values.max, w!.revision]).toEqual([0, 99, 1]);
    await after.close();
  });

  it('late data revises no window before the query\'s first (before: it made results dated before the query existed)', async () => {
    const store = storeAt();
    for (let t = t0; t < t0 + 60; t++) put(store, 1 + t - t0, t, t - t0);
    const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100 });
    stored.sync([{ id: 'q1', name: 'up', query: 'FROM s1 SELECT up WINDOW 10s COMPUTE max', createdMs: (t0 + 40) * 1000 }], (t0 + 40) * 1000);
    await stored.tick((t0 + 60) * 1000);
    expect(starts(stored)).toEqual([30, 40, 50]);
    // A rack's spool delivers a second from before the query was created, and one inside it.
    put(store, 100, t0 + 5, 99);
    stored.noteData(t0 + 5);
    put(store, 101, t0 + 35, 99);
    stored.noteData(t0 + 35);
    await stored.tick((t0 + 61) * 1000);
    expect(starts(stored)).toEqual([30, 40, 50]);
    expect(stored.counters.windows_revised).toBe(1);
    await store.close();
  });
});

describe('a stored query evaluated by another cluster node for a while', () => {
  it('keeps its results and cursor here, and resumes where it stopped when evaluation comes back', async () => {
    const store = new Store({ dir: tempDir(), shardCount: S, shards: Array.from({ length: S }, (_, k) => k), retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 100, metricsPerServerMax: 100, serversMax: 100, racksMax: 10, sliceMs: 20, diskBytesMax: 0, diskReserveBytes: 0 });
    const stored = new StoredQueries(store.env, store, { latenessMs: 1000, windowsPerTickMax: 1000, lateSecondsMax: 100 });
    const def = { id: 'q1', name: 'up', query: 'FROM s1 SELECT up WINDOW 10s COMPUTE max', createdMs: t0 * 1000 };
    stored.sync([def], t0 * 1000);
    for (let t = t0; t < t0 + 60; t++) {
      const m = decodeFrame(gaugeBody({ rack: 'r1', seq: 1 + t - t0, second: t, server: 's1', points: [{ name: 'up', kind: KindCode.Gauge, value: t - t0 }] }), batchBytesMax);
      if (!m.ok || m.msg.type !== 'rackSecond') throw new Error('BUG: test body does not decode');
      const msg = m.msg;
      expect(store.ingest(msg, [...msg.sectionShards].map((shard, i) => ({ shard, bytes: sectionAt(msg, i).slice() }))).status).toBe(204);
    }
    const maxes = () => stored.resultsJson('q1', 0, 8.64e15, 100).map((j) => (JSON.parse(j) as WindowResult).values.max);
    await stored.tick((t0 + 21) * 1000);
    expect(maxes()).toEqual([9, 19]);
    // Another node evaluates it now: nothing is evaluated here, and nothing is deleted.
    stored.sync([], (t0 + 22) * 1000, [def]);
    await stored.tick((t0 + 41) * 1000);
    expect(maxes()).toEqual([9, 19]);
    // Back here: it resumes at its cursor (the windows in between come from the stored data).
    stored.sync([def], (t0 + 42) * 1000);
    await stored.tick((t0 + 61) * 1000);
    expect(maxes()).toEqual([9, 19, 29, 39, 49, 59]);
    // An edit made while elsewhere drops the old results here (they no longer describe it).
    stored.sync([], (t0 + 62) * 1000, [{ ...def, query: 'FROM s1 SELECT up WINDOW 10s COMPUTE min' }]);
    expect(maxes()).toEqual([]);
    await store.close();
  });
});

describe('editing a stored query', () => {
  it('keeps its id, drops the old results, evaluates the new text, and refuses a bad one without change', async () => {
    const node = await openAt(tempDir());
    for (let t = t0; t < t0 + 40; t++) {
      const points: PointInput[] = [{ name: 'x', kind: KindCode.Gauge, value: t - t0 }, { name: 'y', kind: KindCode.Gauge, value: 100 + t - t0 }];
      await ingest(node, gaugeBody({ rack: 'r1', seq: t - t0 + 1, second: t, server: 's1', points }));
    }
    const def = await node.stored.create('q', 'FROM * SELECT x WINDOW 10s COMPUTE max', Date.now());
    await node.pool.tick((t0 + 20) * 1000);
    expect((await results(node, def.id)).map((w) => w.values.max)).toEqual([9, 19]);
    const put = (body: unknown) => node.app.request(`/api/v1/queries/${def.id}`, { method: 'PUT', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
    const bad = await put({ name: 'q', query: 'FROM * SELEKT y' });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/SELECT/);
    expect(node.stored.get(def.id)!.query).toBe('FROM * SELECT x WINDOW 10s COMPUTE max');
    expect((await results(node, def.id)).map((w) => w.values.max)).toEqual([9, 19]);
    const edited = await node.stored.update(def.id, 'q2', 'FROM * SELECT y WINDOW 10s COMPUTE max');
    expect(edited).toMatchObject({ id: def.id, name: 'q2', createdMs: def.createdMs });
    expect(await results(node, def.id)).toEqual([]);
    // Dropped in the workers too, wherever x and y live.
    for (const metric of ['x', 'y']) expect(await node.pool.results({ id: def.id, metric }, { fromMs: 0, toMs: 8.64e15, limit: 100 })).toEqual([]);
    await node.pool.tick((t0 + 40) * 1000);
    // Evaluation restarts at the window before the edit (real now, before t0), not at the old
    // cursor (t0 + 20): y's maxima for every window.
    expect((await results(node, def.id)).map((w) => w.values.max)).toEqual([109, 119, 129, 139]);
    expect(await node.stored.update('nope', 'n', 'FROM * SELECT y WINDOW 10s COMPUTE max')).toBeUndefined();
    await node.close();
  });
});

describe('stored results in memory', () => {
  it('serve the newest windows from memory and older ones from LMDB, identically', async () => {
    const node = await openAt(tempDir());
    // A catalog that keeps 4 windows in memory, over this node's workers (it takes the place of
    // the node's own: the workers evaluate its queries and report their windows to it).
    const catalog = new QueryCatalog(new LmdbDefinitions(node.meta.openDB({ name: 'queries-small', encoding: 'json' })), node.pool, { queriesMax: 10, recentWindowsMax: 4 });
    await catalog.start();
    for (let t = t0; t < t0 + 300; t++) await ingest(node, gaugeBody({ rack: 'r1', seq: t - t0 + 1, second: t, server: 's1', points: [{ name: 'x', kind: KindCode.Gauge, value: t - t0 }] }));
    const def = await catalog.create('x', 'FROM * SELECT x WINDOW 1s COMPUTE max', Date.now());
    await node.pool.tick((t0 + 300) * 1000);
    const range = async (from: number, to: number) => (await catalog.resultsJson(def.id, (t0 + from) * 1000, (t0 + to) * 1000, 3600)).map((j) => (JSON.parse(j) as WindowResult).values.max);
    expect(await range(0, 300)).toEqual(Array.from({ length: 300 }, (_, i) => i));
    // The newest few come from memory; a range reaching further back falls back to LMDB.
    expect(await range(297, 300)).toEqual([297, 298, 299]);
    expect(await range(10, 13)).toEqual([10, 11, 12]);
    // Memory and the worker's store hold the same texts.
    const fromStore = await node.pool.results({ id: def.id, metric: 'x' }, { fromMs: (t0 + 290) * 1000, toMs: (t0 + 300) * 1000, limit: 100 });
    expect(await catalog.resultsJson(def.id, (t0 + 290) * 1000, (t0 + 300) * 1000, 100)).toEqual(fromStore);
    await node.close();
  });
});

describe('regression: pool.tick(nowMs) answered before evaluating as of nowMs', () => {
  it('evaluates as of nowMs even when the worker timer\'s own tick is under way', async () => {
    // The worker's timer ticks every 250 ms at real now; an explicit tick arriving during that
    // run was answered when that run ended, without evaluating as of its own time.
    const node = await openAt(tempDir());
    const def = await node.stored.create('up', 'FROM s1 SELECT up WINDOW 1s COMPUTE max', Date.now());
    // Other queries make each timer run longer (a commit per query), so an explicit tick often lands in one.
    for (let k = 0; k < 30; k++) await node.stored.create(`other-${k}`, `FROM s${k} SELECT up WINDOW 1s COMPUTE max`, Date.now());
    const missed: number[] = [];
    for (let i = 0; i < 30; i++) {
      const t = t0 + i;
      await ingest(node, gaugeBody({ rack: 'r1', seq: i + 1, second: t, server: 's1', points: [{ name: 'up', kind: KindCode.Gauge, value: i }] }));
      await node.pool.tick((t + 1) * 1000);
      if ((await results(node, def.id, t * 1000, (t + 1) * 1000)).length === 0) missed.push(t);
      await new Promise((r) => setTimeout(r, 37)); // land at different points of the timer's period
    }
    expect(missed).toEqual([]);
    await node.close();
  });
});

describe('regression: whole-rack percentiles were wrong when one metric arrived as different kinds (issue 16.6)', () => {
  // `mix` from the issue: a gauge on a-01 (1000, 2000) and a timer on a-02 (1…6). Rule: a metric
  // keeps the kind it was first stored with; entries of the other kind are refused and counted
  // (kind_conflict), so every path (head, rows, the rack's rollup, per-server sketches) sees one kind.
  const edge = (server: string, second: number, points: PointInput[], dists: DistInput[]) => ({ server, parts: [{ type: 'edgeSecond' as const, server, session: 1, seq: 0, second, part: 0, parts: 1, sentMs: 0, series: buildColumns(points, dists) }] });

  it('answers the same for rack:r1 and for its servers, from the head and from rows, with the other kind refused and counted', async () => {
    const node = await openAt(tempDir());
    const merger = new RackMerger(100);
    let seq = 1;
    const names = buildColumns([], [], ['mix', 'mix2']);
    const send = async (second: number, servers: ReturnType<typeof edge>[]) => {
      const m = merger.merge(servers);
      const rollup = { ...m.rollup, nameHashes: names.nameHashes, nameEnds: names.nameEnds, nameBytes: names.nameBytes };
      await ingest(node, rackSecondBody({ rack: 'r1', session: 1, seq: seq++, second, late: false, shards: S, servers: m.servers, rollup }));
    };
    const timer = [1, 2, 3, 4, 5, 6];
    // mix: both kinds in its first second (the gauge's points are stored first: a gauge metric).
    await send(t0, [edge('a-02', t0, [], [{ name: 'mix', values: timer }]), edge('a-01', t0, [{ name: 'mix', kind: KindCode.Gauge, value: 1000 }], [])]);
    await send(t0 + 1, [edge('a-01', t0 + 1, [{ name: 'mix', kind: KindCode.Gauge, value: 2000 }], []), edge('a-02', t0 + 1, [], [{ name: 'mix', values: timer }])]);
    // mix2: the timer comes first (a distribution metric); the gauge later.
    await send(t0, [edge('a-02', t0, [], [{ name: 'mix2', values: timer }])]);
    await send(t0 + 1, [edge('a-01', t0 + 1, [{ name: 'mix2', kind: KindCode.Gauge, value: 1000 }], [])]);
    await send(t0 + 2, [edge('a-01', t0 + 2, [{ name: 'mix2', kind: KindCode.Gauge, value: 2000 }], [])]);
    const answers = async (metric: string) => {
      const out: Record<string, WindowResult[]> = {};
      for (const sel of ['rack:r1', 'a-01,a-02', '*']) out[sel] = await node.pool.query(`FROM ${sel} SELECT ${metric} WINDOW 10s COMPUTE count, p25, p50, p75`, metric, t0, t0 + 10);
      return out;
    };
    for (const when of ['head', 'rows']) {
      if (when === 'rows') await node.pool.flush(Date.now() + 3_600_000);
      const mix = await answers('mix');
      expect(mix['rack:r1'], when).toEqual(mix['a-01,a-02']);
      expect(mix['*'], when).toEqual(mix['a-01,a-02']);
      expect(mix['rack:r1']![0]).toMatchObject({ count: 2, servers: 1, values: { count: 2, 'percentile(25)': 1000, 'percentile(50)': 1000, 'percentile(75)': 1000 } });
      const mix2 = await answers('mix2');
      expect(mix2['rack:r1'], when).toEqual(mix2['a-01,a-02']);
      expect(mix2['*'], when).toEqual(mix2['a-01,a-02']);
      const w = mix2['rack:r1']![0]!;
      expect([w.count, w.servers]).toEqual([6, 1]);
      for (const [p, exact] of [['percentile(25)', 2], ['percentile(50)', 3], ['percentile(75)', 4]] as const) expect(Math.abs(w.values[p]! - exact)).toBeLessThanOrEqual(exact * 0.01);
    }
    const kinds = ((await (await node.app.request('/api/v1/metrics')).json()) as { metrics: { name: string; kind: string }[] }).metrics;
    expect(kinds.filter((m) => m.name.startsWith('mix'))).toMatchObject([{ name: 'mix', kind: 'gauge' }, { name: 'mix2', kind: 'distribution' }]);
    // Refused: a-02's two timer seconds of mix, a-01's two gauge seconds of mix2.
    expect(await (await node.app.request('/metrics')).text()).toMatch(/^apm_core_points_dropped_total\{reason="kind_conflict"\} 4$/m);
    await node.close();
  });
});

describe('rows v2 (issue 14): aggregates, subset decoding and the row cache change no answer', () => {
  // One store in this thread: two racks of 6 servers (rows of ≥ 4 carry aggregates), a gauge of
  // awkward doubles (sums depend on the order of additions) with gaps, and a distribution.
  const racks2: Record<string, string[]> = { ra: Array.from({ length: 6 }, (_, i) => `a-${i}`), rb: Array.from({ length: 6 }, (_, i) => `b-${i}`) };
  const openStore = (blockSeconds = 60, serversMax = 100) =>
    new Store({ dir: tempDir(), shardCount: S, shards: Array.from({ length: S }, (_, k) => k), retentionSeconds: 365 * 86400, blockSeconds, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 100, metricsPerServerMax: 100, serversMax, racksMax: 10, sliceMs: 20, diskBytesMax: 0, diskReserveBytes: 0 });
  const seqs = new Map<string, number>();
  const put = (store: Store, rack: string, second: number, servers: { server: string; points: PointInput[]; dists: DistInput[] }[], late = false) => {
    const merger = new RackMerger(100);
    const m = merger.merge(servers.map((s) => ({ server: s.server, parts: [{ type: 'edgeSecond' as const, server: s.server, session: 1, seq: 0, second, part: 0, parts: 1, sentMs: 0, series: buildColumns(s.points, s.dists) }] })));
    const seq = (seqs.get(rack) ?? 0) + 1;
    seqs.set(rack, seq);
    const f = decodeFrame(rackSecondBody({ rack, session: 1, seq, second, late, shards: S, servers: m.servers, rollup: m.rollup }), batchBytesMax);
    if (!f.ok || f.msg.type !== 'rackSecond') throw new Error('BUG: test body does not decode');
    const msg = f.msg;
    expect(store.ingest(msg, [...msg.sectionShards].map((shard, i) => ({ shard, bytes: sectionAt(msg, i).slice() }))).status).toBe(204);
  };
  const flush = (store: Store) => {
    while (store.writeSlice(Date.now() + 86_400_000));
  };
  let r = rng(14);
  const obs: Obs[] = [];
  const load14 = (store: Store) => {
    r = rng(14);
    obs.length = 0;
    for (let t = t0; t < t0 + 150; t++) {
      for (const [rack, servers] of Object.entries(racks2)) {
        put(
          store,
          rack,
          t,
          servers.flatMap((server, si) => {
            // 'd': every server at every second (dense rows: their seconds are not read from segments).
            const dv = (((t - t0) * 31 + si * 7 + rack.charCodeAt(1)) % 97) / 4;
            const points: PointInput[] = [{ name: 'd', kind: KindCode.Gauge, value: dv }];
            obs.push({ server, rack, second: t, metric: 'd', value: dv });
            const dists: DistInput[] = [];
            if (r() > 0.15) {
              const v = (r() - 0.4) * 10 ** Math.floor(r() * 6); // many digits: sums differ by order
              points.push({ name: 'g', kind: KindCode.Gauge, value: v });
              obs.push({ server, rack, second: t, metric: 'g', value: v });
            }
            if (r() > 0.3) {
              const values = Array.from({ length: 1 + Math.floor(r() * 4) }, () => Math.round(r() * 1e5) / 1000);
              dists.push({ name: 'lat', values });
              for (const v of values) obs.push({ server, rack, second: t, metric: 'lat', value: v });
            }
            return [{ server, points, dists }];
          }),
        );
      }
    }
  };
  /** The store read as before issue 14: whole rows, no aggregates, no cache. */
  const plainReader = (store: Store) => ({
    registry: store.registry,
    rackName: (id: number) => store.rackName(id),
    read: (lo: number, hi: number, from: number, to: number, visit: Parameters<Store['read']>[4]) => store.read(lo, hi, from, to, (row, block, rack) => visit({ ...row, aggregates: null }, block, rack)),
  });
  const cachedReader = (store: Store) => ({ registry: store.registry, rackName: (id: number) => store.rackName(id), read: ((lo, hi, from, to, visit, o) => store.read(lo, hi, from, to, visit, { ...o, cache: true })) satisfies Store['read'] });
  const texts: string[] = [];
  for (const sel of ['*', 'rack:ra', 'a-*', 'a-1,b-4,b-5', 'b-0,b-1,b-2,b-3,b-4,b-5']) {
    for (const win of sel === '*' || sel.startsWith('a-1') ? ['1s', '5s', '7s', '1m'] : ['7s', '10s']) {
      texts.push(`FROM ${sel} SELECT g WINDOW ${win} COMPUTE min, max, avg, sum, count`);
      texts.push(`FROM ${sel} SELECT g WINDOW ${win} COMPUTE min, max, avg, p50, p99`);
      texts.push(`FROM ${sel} SELECT lat WINDOW ${win} COMPUTE min, max, avg, sum, count`);
    }
    for (const win of ['5s', '1m', '7s']) texts.push(`FROM ${sel} SELECT d WINDOW ${win} COMPUTE min, max, avg, sum, count`);
  }

  // Blocks of 60 s have aggregates per 5 s; blocks of 12 s (not a multiple of 5) per second,
  // grouped by 5 s by the evaluator for windows of a multiple of 5 s, as the values are.
  it.each([60, 12])('answers identically from the head, from rows (aggregates, subsets), from whole rows without aggregates, and from the cache; the same as a brute-force evaluation (blocks of %i s)', (blockSeconds) => {
    const store = openStore(blockSeconds);
    load14(store);
    const fromHead = texts.map((text) => evaluate(store, parseQuery(text), t0 + 2, t0 + 150));
    flush(store);
    for (const [k, text] of texts.entries()) {
      const q = parseQuery(text);
      const seen = { seconds: 0, subsets: 0 };
      const counting = { registry: store.registry, rackName: (id: number) => store.rackName(id), read: ((lo, hi, from, to, visit, o) => store.read(lo, hi, from, to, (row, b, rack) => {
        if (row.entries === 'seconds') seen.seconds++;
        if (row.serversOmitted > 0) seen.subsets++;
        visit(row, b, rack);
      }, o)) satisfies Store['read'] };
      const rows = evaluate(counting, q, t0 + 2, t0 + 150);
      // The paths under test are taken: aggregates (spans of 5 s) for whole racks without
      // percentiles when the window is a multiple of 5 s, subsets for servers picked.
      const spans = q.windowSeconds % (blockSeconds % 5 === 0 ? 5 : 1) === 0;
      if (!text.includes('p50') && spans && (text.includes('FROM *') || text.includes('rack:ra'))) expect(seen.seconds, text).toBeGreaterThan(0);
      if (!spans) expect(seen.seconds, text).toBe(0);
      if (text.includes('a-1,b-4')) expect(seen.subsets, text).toBeGreaterThan(0);
      expect(rows, `${text}: rows vs head`).toEqual(fromHead[k]);
      expect(evaluate(plainReader(store), q, t0 + 2, t0 + 150), `${text}: without aggregates or subsets`).toEqual(rows);
      expect(evaluate(cachedReader(store), q, t0 + 2, t0 + 150), `${text}: cache, first`).toEqual(rows);
      expect(evaluate(cachedReader(store), q, t0 + 2, t0 + 150), `${text}: cache, again`).toEqual(rows);
      compare(rows, reference(obs, q, t0 + 2, t0 + 150), q, q.metric === 'g');
    }
    expect(store.counters.row_cache_hits).toBeGreaterThan(0);
    return store.close();
  });

  it('regression: a row rewritten by late data is never served from the cache stale', async () => {
    const store = openStore();
    const q = parseQuery('FROM * SELECT g WINDOW 10s COMPUTE max, count');
    const servers = racks2.ra!;
    for (let t = t0; t < t0 + 60; t++) put(store, 'ra', t, servers.map((server) => ({ server, points: [{ name: 'g', kind: KindCode.Gauge, value: t - t0 }], dists: [] })));
    flush(store);
    const before = evaluate(cachedReader(store), q, t0, t0 + 60);
    expect(before[0]!.values).toEqual({ max: 9, count: 60 });
    expect(evaluate(cachedReader(store), q, t0, t0 + 60)).toEqual(before);
    const hits = store.counters.row_cache_hits;
    expect(hits).toBeGreaterThan(0);
    // Late: a new server of the rack at t0 + 3 with 1000; the block's row is merged and rewritten.
    put(store, 'ra', t0 + 3, [{ server: 'a-late', points: [{ name: 'g', kind: KindCode.Gauge, value: 1000 }], dists: [] }], true);
    flush(store);
    expect(store.counters.rows_merged).toBeGreaterThan(0);
    const misses = store.counters.row_cache_misses;
    const after = evaluate(cachedReader(store), q, t0, t0 + 60);
    expect(after[0]!.values).toEqual({ max: 1000, count: 61 });
    expect(after.slice(1)).toEqual(before.slice(1));
    expect(store.counters.row_cache_misses).toBe(misses + 1);
    expect(evaluate(store, q, t0, t0 + 60)).toEqual(after);
    await store.close();
  });

  it("regression: a distribution's whole-rack percentiles leave out the rack rollup of a second whose server summaries were refused (before: a server beyond serversMax was in the rollup, so the answer held observations no stored server had)", () => {
    const store = openStore(60, 3);
    try {
      const servers = ['z1', 'z2', 'z3', 'z4', 'z5'];
      for (let t = t0; t < t0 + 10; t++) {
        put(store, 'rz', t, servers.map((server, i) => ({ server, points: [], dists: [{ name: 'lat', values: i < 3 ? [i + 1] : Array<number>(20).fill(2.9) }] })));
      }
      expect(store.counters.points_dropped_servers).toBe(20);
      expect(store.counters.rollups_dropped_partial).toBe(10);
      const q = parseQuery('FROM * SELECT lat WINDOW 10s COMPUTE count, max, p50');
      const check = (where: string) => {
        const [w] = evaluate(store, q, t0, t0 + 10);
        expect(w!.count, where).toBe(30);
        expect(w!.values['max'], where).toBe(3);
        // The exact p50 of the 30 stored observations is 2 (sketches: within 1 %).
        expect(Math.abs(w!.values['percentile(50)']! - 2), where).toBeLessThan(0.02);
      };
      check('head');
      flush(store);
      check('rows');
    } finally {
      void store.close();
    }
  });
});

describe('regression: exact percentiles lost a rank to rounding (0.29 · 100 = 28.999…)', () => {
  it('percentile(p) of the values 0..100 is p, for every whole p, from the head and from rows; a distribution\'s sketch too', async () => {
    const node = await openAt(tempDir());
    const servers = Array.from({ length: 101 }, (_, i) => ({ server: `pc-${i}`, blocks: [buildColumns([{ name: 'pc.g', kind: KindCode.Gauge, value: i }], [])] }));
    await ingest(node, rackSecondBody({ rack: 'pc', session: 1, seq: 1, second: t0, late: false, shards: S, servers, rollup: buildColumns([], []) }));
    const dist = [{ server: 'pd-0', blocks: [buildColumns([], [{ name: 'pc.d', values: Array.from({ length: 101 }, (_, i) => 2 ** (i / 4)) }])] }];
    await ingest(node, rackSecondBody({ rack: 'pd', session: 1, seq: 1, second: t0, late: false, shards: S, servers: dist, rollup: buildColumns([], []) }));
    const ps = Array.from({ length: 101 }, (_, p) => p);
    // At most 32 functions a query: in slices.
    const q = async (metric: string) => {
      const values: Record<string, number> = {};
      for (let i = 0; i < ps.length; i += 32) Object.assign(values, (await node.pool.query(`FROM * SELECT ${metric} WINDOW 1s COMPUTE ${ps.slice(i, i + 32).map((p) => `percentile(${p})`).join(', ')}`, metric, t0, t0 + 1))[0]!.values);
      return [{ values }];
    };
    for (const when of ['head', 'rows']) {
      if (when === 'rows') await node.pool.flush(Date.now() + 3_600_000);
      const [w] = await q('pc.g');
      expect(ps.filter((p) => w!.values[`percentile(${p})`] !== p).map((p) => [p, w!.values[`percentile(${p})`]]), when).toEqual([]);
      // The sketch answers within its 1 % of the value of the right rank (2^(p/4): neighbours
      // are 19 % apart, each in its own bucket), never a rank off.
      const [d] = await q('pc.d');
      expect(ps.filter((p) => Math.abs(d!.values[`percentile(${p})`]! / 2 ** (p / 4) - 1) > 0.01), when).toEqual([]);
    }
    await node.close();
  });
});

describe('orderStatistic (exact percentiles without a sort, issue 14)', () => {
  it('is what a sort puts at k, for any values (duplicates, −0 and +0) and any k', () => {
    const v = fc.oneof(fc.double({ noNaN: true }), fc.constantFrom(0, -0, 1, -1), fc.integer({ min: -5, max: 5 }));
    fc.assert(
      fc.property(fc.array(v, { minLength: 1, maxLength: 300 }), fc.nat(), (xs, kk) => {
        const k = kk % xs.length;
        const sorted = Float64Array.from(xs).sort();
        expect(Object.is(orderStatistic(Float64Array.from(xs), k), sorted[k])).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('gives several ranks at once, each what a sort puts there (zeros of both signs among them)', () => {
    const v = fc.oneof(fc.double({ noNaN: true }), fc.constantFrom(0, -0, 1, -1), fc.integer({ min: -5, max: 5 }));
    // Arrays of few distinct values past the size that is sorted outright: partitions leave
    // zeros of both signs on both sides of a zero.
    const xsOf = fc.oneof(fc.array(v, { minLength: 1, maxLength: 300 }), fc.array(fc.constantFrom(0, -0, 1, -1), { minLength: 17, maxLength: 100 }));
    fc.assert(
      fc.property(xsOf, fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), (xs, kks) => {
        const ks = kks.map((kk) => kk % xs.length);
        const sorted = Float64Array.from(xs).sort();
        const got = orderStatistics(Float64Array.from(xs), ks);
        for (const k of ks) expect(Object.is(got.get(k), sorted[k])).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });

  it('gives the same past the size it buckets at (2,048 values): spreads, skews, outliers, repeats, zeros of both signs', () => {
    const shapes: ((i: number, r: () => number) => number)[] = [
      (_, r) => Math.round(r() * 6000) / 100, // a CPU-like gauge
      (_, r) => Math.exp(r() * 30), // a wide skew
      (i, r) => (i % 997 === 0 ? 1e12 : r() * 100), // far outliers
      (i, r) => (i % 3 === 0 ? 1e300 * r() : i % 3 === 1 ? -1e300 * r() : r()), // a span past the largest double
      (i, r) => (r() < 0.9 ? (i % 2 === 0 ? 0 : -0) : Math.round(r() * 500)), // a queue: zeros of both signs
      (i, r) => (i % 50 === 0 ? 7 + r() : 7), // a value repeated
      (i, r) => (r() - 0.5) * 1e-310, // subnormals
    ];
    fc.assert(
      fc.property(fc.integer({ min: 0, max: shapes.length - 1 }), fc.integer({ min: 2048, max: 9000 }), fc.integer(), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 4 }), (shape, n, seed, ps) => {
        let st = seed >>> 0 || 1;
        const r = () => ((st = (Math.imul(st, 1664525) + 1013904223) >>> 0) / 4294967296);
        const xs = Float64Array.from({ length: n }, (_, i) => shapes[shape]!(i, r));
        const ks = ps.map((p) => Math.min(n - 1, Math.floor(p * n)));
        const sorted = xs.slice().sort();
        const got = orderStatistics(xs, ks);
        for (const k of ks) expect(Object.is(got.get(k), sorted[k])).toBe(true);
      }),
      { numRuns: 150 },
    );
  });
});
