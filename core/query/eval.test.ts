import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Encoder, KindCode, type EdgeSecondMessage } from '../../schema/codec.js';
import { buildColumns, type DistInput, type PointInput } from '../../schema/testdata.js';
import { RackMerger } from '../../rack/merge.js';
import { Store } from '../store.js';
import { evaluate, type WindowResult } from './eval.js';
import { compileGlob } from './glob.js';
import { fnKey, parseQuery, type Query } from './parse.js';
import { StoredQueries } from './stored.js';

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function openStore(): Store {
  const dir = mkdtempSync(join(tmpdir(), 'apm-eval-'));
  dirs.push(dir);
  return new Store({ dir, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 1000, diskBytesMax: 0, diskReserveBytes: 0 });
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
const t0 = 1_790_000_040; // a block boundary (multiple of 60)
const seconds = 180;
const enc = new Encoder();

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

/** Generates observations and stores them as racks would send them; returns the raw truth. */
async function load(store: Store): Promise<Obs[]> {
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
      const res = await store.ingest(enc.rackBatch({ rack, batchSeq: seq++, second: t, late: false, servers: m.servers, rollup: m.rollup }));
      expect(res.status).toBe(204);
    }
    // Blocks written so far go to rows (the third one partly): reads then span rows, a row
    // plus head batches of the same block, and the head.
    if (t === t0 + 125) expect(await store.flushDue(Date.now() + 10_000)).toBeGreaterThan(0);
  }
  return obs;
}

/** Plain, obviously-correct evaluation over raw observations. */
function reference(obs: Obs[], q: Query, from: number, to: number): Map<number, { servers: number; count: number; values: Record<string, number> }> {
  const pick = (o: Obs) =>
    o.metric === q.metric &&
    q.selectors.some((s) => (s.type === 'all' ? true : s.type === 'server' ? o.server === s.id : s.type === 'glob' ? compileGlob(s.pattern)(o.server) : compileGlob(s.pattern)(o.rack)));
  const W = q.windowSeconds;
  const out = new Map<number, { servers: number; count: number; values: Record<string, number> }>();
  for (let start = Math.ceil(from / W) * W; start < to; start += W) {
    const inWin = obs.filter((o) => pick(o) && o.second >= start && o.second < start + W);
    if (inWin.length === 0) continue;
    const vals = inWin.map((o) => o.value).sort((a, b) => a - b);
    const values: Record<string, number> = {};
    for (const f of q.functions) {
      const sum = vals.reduce((a, b) => a + b, 0);
      values[fnKey(f)] = f.type === 'min' ? vals[0]! : f.type === 'max' ? vals[vals.length - 1]! : f.type === 'count' ? vals.length : f.type === 'sum' ? sum : f.type === 'avg' ? sum / vals.length : vals[Math.floor((f.p / 100) * (vals.length - 1))]!;
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
  const store = openStore();
  const obs = await load(store);
  const cases: [string, boolean][] = [];
  for (const sel of ['*', 'web-*', 'web-2', 'rack:r2', 'db-?,web-1', 'rack:r*']) {
    for (const win of ['1s', '5s', '1m']) {
      cases.push([`FROM ${sel} SELECT g WINDOW ${win} COMPUTE min, max, avg, count, sum, p50, p99, percentile(0), percentile(100)`, true]);
      cases.push([`FROM ${sel} SELECT lat WINDOW ${win} COMPUTE min, max, avg, count, sum, p50, p90, p99.9`, false]);
    }
  }
  for (const [text, exact] of cases) {
    it(text, () => {
      const q = parseQuery(text);
      // A range that starts mid-window and spans rows and the head.
      compare(evaluate(store, q, t0 + 3, t0 + seconds), reference(obs, q, t0 + 3, t0 + seconds), q, exact);
    });
  }

  it('stored queries evaluate closed windows, and late data raises the revision', async () => {
    const stored = new StoredQueries(store.env, store, { latenessMs: 3000, windowsPerTickMax: 1000, queriesMax: 10, lateSecondsMax: 1000 });
    store.onIngest = (s) => stored.noteData(s);
    const def = await stored.create('g', 'FROM * SELECT g WINDOW 5s COMPUTE count, max', (t0 + 5) * 1000);
    await stored.tick((t0 + seconds) * 1000 + 3000);
    const before = stored.results_(def.id, t0 * 1000, (t0 + seconds) * 1000);
    expect(before.length).toBe(seconds / 5);
    expect(before[0]).toMatchObject({ startMs: t0 * 1000, revision: 0 });
    const live: WindowResult[] = [];
    stored.subscribe((_, w) => live.push(w));
    // A late batch: a new server reports 1e6 at t0 + 7.
    const late = enc.rackBatch({ rack: 'r9', batchSeq: 1, second: t0 + 7, late: true, servers: [{ server: 'late-1', blocks: [buildColumns([{ name: 'g', kind: KindCode.Gauge, value: 1e6 }], [])] }], rollup: buildColumns([], []) });
    expect((await store.ingest(late)).status).toBe(204);
    await stored.tick((t0 + seconds) * 1000 + 4000);
    const after = stored.results_(def.id, (t0 + 5) * 1000, (t0 + 10) * 1000);
    expect(after[0]).toMatchObject({ revision: 1, values: { max: 1e6, count: before[1]!.count + 1 } });
    expect(live.map((w) => [w.startMs, w.revision])).toEqual([[(t0 + 5) * 1000, 1]]);
  });
});

describe('stored queries across a restart', () => {
  it('keep their definition and cursor, and compute the windows missed while down from storage', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-restart-'));
    dirs.push(dir);
    const opts = { dir, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 100, diskBytesMax: 0, diskReserveBytes: 0 };
    const sq = { latenessMs: 1000, windowsPerTickMax: 1000, queriesMax: 10, lateSecondsMax: 100 };
    const ingestRange = async (store: Store, from: number, to: number, seq0: number) => {
      for (let t = from; t < to; t++) {
        const body = enc.rackBatch({ rack: 'r1', batchSeq: seq0 + t - from, second: t, late: false, servers: [{ server: 's1', blocks: [buildColumns([{ name: 'up', kind: KindCode.Gauge, value: t - t0 }], [])] }], rollup: buildColumns([], []) });
        expect((await store.ingest(body)).status).toBe(204);
      }
    };
    let store = new Store(opts);
    let stored = new StoredQueries(store.env, store, sq);
    const def = await stored.create('up', 'FROM s1 SELECT up WINDOW 10s COMPUTE max, count', t0 * 1000);
    await ingestRange(store, t0, t0 + 20, 1);
    await stored.tick((t0 + 21) * 1000);
    expect(stored.results_(def.id, 0, Infinity).map((w) => w.values.max)).toEqual([9, 19]);
    await store.close();
    // Down while seconds t0+20 .. t0+60 are written by another core of the same data (a restart replay).
    store = new Store(opts);
    await ingestRange(store, t0 + 20, t0 + 60, 100);
    await store.flushDue(Date.now() + 3_600_000);
    await store.close();
    store = new Store(opts);
    stored = new StoredQueries(store.env, store, sq);
    expect(stored.get(def.id)).toMatchObject({ name: 'up', query: 'FROM s1 SELECT up WINDOW 10s COMPUTE max, count' });
    // Behind by the windows missed: the oldest waiting one ([t0+20, t0+30)) ended 31 s before.
    expect(stored.lagSeconds((t0 + 61) * 1000)).toBe(31);
    await stored.tick((t0 + 61) * 1000);
    expect(stored.lagSeconds((t0 + 61) * 1000)).toBeLessThanOrEqual(0);
    expect(stored.results_(def.id, 0, Infinity).map((w) => [w.values.max, w.values.count])).toEqual([[9, 10], [19, 10], [29, 10], [39, 10], [49, 10], [59, 10]]);
    await store.close();
  });
});

describe('editing a stored query', () => {
  it('keeps its id, drops the old results, evaluates the new text, and refuses a bad one without change', async () => {
    const store = openStore();
    const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 1000, queriesMax: 10, lateSecondsMax: 100 });
    for (let t = t0; t < t0 + 40; t++) {
      const body = enc.rackBatch({ rack: 'r1', batchSeq: t, second: t, late: false, servers: [{ server: 's1', blocks: [buildColumns([{ name: 'x', kind: KindCode.Gauge, value: t - t0 }, { name: 'y', kind: KindCode.Gauge, value: 100 + t - t0 }], [])] }], rollup: buildColumns([], []) });
      await store.ingest(body);
    }
    const def = await stored.create('q', 'FROM * SELECT x WINDOW 10s COMPUTE max', t0 * 1000);
    await stored.tick((t0 + 20) * 1000);
    expect(stored.results_(def.id, 0, Infinity).map((w) => w.values.max)).toEqual([9, 19]);
    await expect(stored.update(def.id, 'q', 'FROM * SELEKT y', (t0 + 20) * 1000)).rejects.toThrow(/SELECT/);
    expect(stored.get(def.id)!.query).toBe('FROM * SELECT x WINDOW 10s COMPUTE max');
    const edited = await stored.update(def.id, 'q2', 'FROM * SELECT y WINDOW 10s COMPUTE max', (t0 + 20) * 1000);
    expect(edited).toMatchObject({ id: def.id, name: 'q2', createdMs: def.createdMs });
    expect(stored.results_(def.id, 0, Infinity)).toEqual([]);
    await stored.tick((t0 + 40) * 1000);
    // Evaluation restarts at the window before the edit: y's maxima from there on.
    expect(stored.results_(def.id, 0, Infinity).map((w) => w.values.max)).toEqual([119, 129, 139]);
    expect(await stored.update('nope', 'n', 'FROM * SELECT y WINDOW 10s COMPUTE max', 0)).toBeUndefined();
    await store.close();
  });
});

describe('stored results in memory', () => {
  it('serve the newest windows from memory and older ones from LMDB, identically', async () => {
    const store = openStore();
    const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 1000, queriesMax: 10, lateSecondsMax: 100, recentWindowsMax: 4 });
    for (let t = t0; t < t0 + 300; t++) {
      const body = enc.rackBatch({ rack: 'r1', batchSeq: t, second: t, late: false, servers: [{ server: 's1', blocks: [buildColumns([{ name: 'x', kind: KindCode.Gauge, value: t - t0 }], [])] }], rollup: buildColumns([], []) });
      await store.ingest(body);
    }
    const def = await stored.create('x', 'FROM * SELECT x WINDOW 1s COMPUTE max', t0 * 1000);
    await stored.tick((t0 + 300) * 1000);
    const all = stored.results_(def.id, t0 * 1000, (t0 + 300) * 1000);
    expect(all.map((w) => w.values.max)).toEqual(Array.from({ length: 300 }, (_, i) => i));
    // The newest few come from memory; a range reaching further back falls back to LMDB.
    expect(stored.results_(def.id, (t0 + 297) * 1000, (t0 + 300) * 1000).map((w) => w.values.max)).toEqual([297, 298, 299]);
    expect(stored.results_(def.id, (t0 + 10) * 1000, (t0 + 13) * 1000).map((w) => w.values.max)).toEqual([10, 11, 12]);
    await store.close();
  });
});
