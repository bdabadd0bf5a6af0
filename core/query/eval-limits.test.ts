// The bounds of one evaluation (issue 16.1, 16.11): its time budget (ad-hoc and stored) and the
// memory its exact percentiles may hold. Evaluated over a store in this thread, on a clock the
// tests step, so that a budget is passed without a slow test.

import { afterAll, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeFrame, KindCode } from '../../schema/codec.js';
import { batchBytesMax } from '../../schema/limits.js';
import { hashName } from '../../schema/names.js';
import { rackSecondBody, sectionAt } from '../../schema/section.js';
import { buildColumns, type PointInput } from '../../schema/testdata.js';
import { createApi } from '../api.js';
import { openNode } from '../node.js';
import { WorkerError, type ShardPool } from '../pool.js';
import { Store } from '../store.js';
import { EvalLimitError, evaluate, type EvalStats } from './eval.js';
import { parseQuery } from './parse.js';
import { StoredQueries } from './stored.js';

const S = 8;
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
const t0 = 1_790_000_040 - (1_790_000_040 % 3600); // an hour start

function openStore(): Store {
  const dir = mkdtempSync(join(tmpdir(), 'apm-evlim-'));
  dirs.push(dir);
  return new Store({ dir, shardCount: S, shards: Array.from({ length: S }, (_, k) => k), retentionSeconds: 100 * 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 31, metricsMax: 100, metricsPerServerMax: 100, serversMax: 10_000, racksMax: 100, sliceMs: 20, diskBytesMax: 0, diskReserveBytes: 0 });
}

const seqs = new Map<string, number>();
/** One rack second: `servers` servers of `rack`, each with the gauge `value(server, second)`. */
function ingest(store: Store, o: { rack: string; second: number; servers: number; value: (s: number, t: number) => number }): void {
  const seq = (seqs.get(o.rack) ?? 0) + 1;
  seqs.set(o.rack, seq);
  const servers = Array.from({ length: o.servers }, (_, s) => ({ server: `${o.rack}-s${s}`, blocks: [buildColumns([{ name: 'g', kind: KindCode.Gauge, value: o.value(s, o.second) } satisfies PointInput], [])] }));
  const r = decodeFrame(rackSecondBody({ rack: o.rack, session: 1, seq, second: o.second, late: false, shards: S, servers, rollup: buildColumns([], []) }), batchBytesMax);
  if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('BUG: test body does not decode');
  const m = r.msg;
  expect(store.ingest(m, [...m.sectionShards].map((shard, i) => ({ shard, bytes: sectionAt(m, i).slice() }))).status).toBe(204);
}

/** 4 racks × 5 servers, one second in each of 10 blocks (minutes) of a gauge, written as rows: 40 rows. */
function loadRows(): Store {
  const store = openStore();
  for (let t = t0; t < t0 + 600; t += 60) for (const rack of ['r1', 'r2', 'r3', 'r4']) ingest(store, { rack, second: t, servers: 5, value: (s, tt) => s * 1000 + (tt - t0) });
  while (store.writeSlice(Date.now() + 3_600_000));
  return store;
}

/** A clock that moves `stepMs` each time it is read. */
function steppingClock(stepMs: number): { clockMs: () => number; reads: () => number } {
  let now = 0;
  let reads = 0;
  return {
    clockMs: () => {
      reads++;
      return (now += stepMs);
    },
    reads: () => reads,
  };
}

describe('regression: an evaluation had no time budget (issue 16.1)', () => {
  const store = loadRows();
  afterAll(() => store.close());
  const q = parseQuery('FROM * SELECT g WINDOW 1m COMPUTE count, max, p99');

  it('stops past its budget, checking the clock every few rows, with an error naming the budget and what to do', () => {
    const whole = evaluate(store, q, t0, t0 + 600);
    expect(whole.reduce((a, w) => a + w.count, 0)).toBe(4 * 5 * 10);
    // Each clock read is 500 ms later: the 2 s ad-hoc budget is passed at the 4th check after the start.
    const clock = steppingClock(500);
    const stats: EvalStats = { rows: 0, windowsSketched: 0, exactValuesHeldMax: 0, sketchesAllocated: 0, seenBitsBytes: 0 };
    let err: unknown;
    try {
      evaluate(store, q, t0, t0 + 600, { clockMs: clock.clockMs }, stats);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EvalLimitError);
    expect((err as EvalLimitError).reason).toBe('time_budget');
    expect((err as Error).message).toMatch(/^evaluation time budget: "FROM \* SELECT g WINDOW 1m COMPUTE count, max, percentile\(99\)" stopped after 2500 ms > its budget of 2000 ms, having read 31 rows and completed \d+ of 10 windows; narrow from\/to/);
    // Checked every 8 blocks and row keys passed (10 blocks of 4 rows: 5 a block); the 5th check
    // (at the 40th, the last key of the 8th block) is past the budget.
    expect(stats.rows).toBe(31);
    expect(clock.reads()).toBe(6);
  });

  it('regression: a range reaching the end of 32-bit seconds (2106) is read up to there (a window past it made a row key out of range: 503 with a RangeError)', () => {
    for (const w of ['1d', '1h', '7m']) expect(evaluate(store, parseQuery(`FROM * SELECT g WINDOW ${w} COMPUTE count`), 4_294_900_000, 4_294_967_295), w).toEqual([]);
  });

  it('regression: holds its budget over rows that hold none of the servers asked for, and blocks without rows (before: checked only between rows visited)', () => {
    for (const text of ['FROM rack:nomatch SELECT g WINDOW 1m COMPUTE max', 'FROM * SELECT g WINDOW 1m COMPUTE max']) {
      const clock = steppingClock(1000);
      // 10 blocks and 40 row keys, and 100 blocks more without rows.
      expect(() => evaluate(store, parseQuery(text), t0, t0 + 6600, { clockMs: clock.clockMs }), text).toThrow(/^evaluation time budget/);
      expect(clock.reads(), text).toBe(4);
    }
  });

  it('holds its budget while matching server patterns too (before: every pattern against every server, unchecked — seconds for many patterns over a large fleet)', () => {
    const big = loadRows();
    try {
      ingest(big, { rack: 'big', second: t0, servers: 200, value: () => 1 });
      const patterns = parseQuery(`FROM ${Array.from({ length: 50 }, (_, i) => `*nomatch${i}*`).join(',')} SELECT g WINDOW 1m COMPUTE count`);
      expect(evaluate(big, patterns, t0, t0 + 600)).toEqual([]);
      // Each clock read 1 s later: started at 1 s, budget 2 s; checks every 64 servers, the third past it.
      const clock = steppingClock(1000);
      expect(() => evaluate(big, patterns, t0, t0 + 600, { clockMs: clock.clockMs })).toThrow(/^evaluation time budget: ".*" stopped after 3000 ms > its budget of 2000 ms while matching its server patterns against 220 servers; name fewer patterns, or servers by id$/);
    } finally {
      big.close();
    }
  });

  it("regression: counts a query answered 400 for too many windows under its reason, in apm's ad-hoc answers and the Prometheus API alike (before: bad_request)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-evlim-node-'));
    dirs.push(dir);
    const node = await openNode({ dataDir: dir, workers: 1, shards: S, queryLatenessMs: 0 });
    try {
      const adhoc = await node.app.request(`/api/v1/query?q=${encodeURIComponent('FROM * SELECT g WINDOW 1s COMPUTE max')}&from=-2h&to=now`);
      expect(adhoc.status).toBe(400);
      expect(((await adhoc.json()) as { reason: string }).reason).toBe('too_many_windows');
      const end = Math.floor(Date.now() / 1000);
      expect((await node.app.request(`/api/v1/query_range?query=${encodeURIComponent('FROM * SELECT g COMPUTE max')}&start=${end - 86_400}&end=${end}&step=1`)).status).toBe(400);
      expect(await (await node.app.request('/metrics')).text()).toMatch(/^apm_core_query_requests_refused_total\{reason="too_many_windows"\} 2$/m);
    } finally {
      await node.close();
    }
  });

  it('answers 503 for an ad-hoc query stopped by its budget, with the reason, counted', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-evlim-node-'));
    dirs.push(dir);
    const node = await openNode({ dataDir: dir, workers: 1, shards: S, queryLatenessMs: 0 });
    try {
      const message = new EvalLimitError('time_budget', '"FROM * SELECT g WINDOW 1m COMPUTE p99" stopped after 2001 ms > its budget of 2000 ms').message;
      // The worker answers with the error's text; the HTTP thread tells the budget from other failures.
      const pool = new Proxy(node.pool, { get: (p, k) => (k === 'query' || k === 'queryJson' ? () => Promise.reject(new WorkerError(message)) : Reflect.get(p, k)) }) as ShardPool;
      const app = createApi({ pool, servers: node.servers, stored: node.stored }, { ingestBodyBytesMax: 100_000 });
      const r = await app.request(`/api/v1/query?q=${encodeURIComponent('FROM * SELECT g WINDOW 1m COMPUTE p99')}&from=-1h`);
      expect(r.status).toBe(503);
      expect(await r.json()).toEqual({ error: message, reason: 'time_budget' });
      expect(await (await app.request('/metrics')).text()).toMatch(/^apm_core_query_requests_refused_total\{reason="time_budget"\} 1$/m);
    } finally {
      await node.close();
    }
  });

  it("stops a stored query's tick past its budget, counts it, waits, and catches up later with fewer windows at a time", async () => {
    // A clock moving `step` ms a read while the evaluation runs too long, then held still.
    let now = 0;
    let step = 400;
    const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100, evalBudgetMs: 1000, clockMs: () => (now += step) });
    // Created "at" t0 + 60: its first window is [t0, t0 + 60).
    stored.sync([{ id: 'q1', name: 'g', query: 'FROM * SELECT g WINDOW 1m COMPUTE count', createdMs: 0 }], (t0 + 60) * 1000);
    await stored.tick((t0 + 600) * 1000);
    expect(stored.counters.evaluation_over_budget).toBe(1);
    expect(stored.resultsJson('q1', 0, 8.64e15, 100)).toEqual([]);
    // Within its back-off (1 s after it stopped) it is not tried again.
    step = 0;
    await stored.tick((t0 + 600) * 1000);
    expect(stored.counters.evaluation_over_budget).toBe(1);
    // After it, on a clock that stays inside the budget, it catches up.
    now += 1001;
    step = 1;
    await stored.tick((t0 + 600) * 1000);
    const counts = stored.resultsJson('q1', 0, 8.64e15, 100).map((j) => (JSON.parse(j) as { count: number }).count);
    expect(counts).toEqual(Array<number>(10).fill(4 * 5));
    expect(stored.counters.evaluation_over_budget).toBe(1);
  });
});

describe('regression: a stored query revising many late windows, each reading a few rows, passed its budget unchecked', () => {
  it('stops between windows once past the budget, counted', async () => {
    const store = loadRows();
    try {
      let stepping = false;
      let now = 0;
      const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100, evalBudgetMs: 1000, clockMs: () => (stepping ? (now += 10_000) : now) });
      stored.sync([{ id: 'q1', name: 'g', query: 'FROM * SELECT g WINDOW 1s COMPUTE count', createdMs: 0 }], (t0 + 1) * 1000);
      await stored.tick((t0 + 600) * 1000);
      expect(stored.counters.evaluation_over_budget).toBe(0);
      // Late data in 10 seconds: 10 windows to revise, each of one block's 4 rows (under the 8 between two looks at the clock).
      for (let k = 0; k < 10; k++) stored.noteData(t0 + 60 * k);
      stepping = true;
      await stored.tick((t0 + 600) * 1000);
      expect(stored.counters.evaluation_over_budget).toBe(1);
    } finally {
      store.close();
    }
  });
});

describe('regression: a stored query whose revisions did not fit one tick redid the same first windows on every retry and never reached the rest', () => {
  it('keeps only the late seconds it did not revise, so each retry goes on where the last stopped', async () => {
    const store = loadRows();
    try {
      let stepping = false;
      let now = 0;
      const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100, evalBudgetMs: 1000, clockMs: () => (stepping ? (now += 400) : now) });
      stored.sync([{ id: 'q1', name: 'g', query: 'FROM * SELECT g WINDOW 1s COMPUTE count', createdMs: 0 }], (t0 + 1) * 1000);
      await stored.tick((t0 + 600) * 1000);
      // Late data in 10 seconds, one a block: 10 windows to revise, only a few fit a tick on this clock.
      for (let k = 0; k < 10; k++) {
        ingest(store, { rack: 'r5', second: t0 + 60 * k, servers: 1, value: () => 7 });
        stored.noteData(t0 + 60 * k);
      }
      const revisions = () => stored.resultsJson('q1', 0, 8.64e15, 1000).map((j) => JSON.parse(j) as { startMs: number; revision: number; count: number }).filter((w) => (w.startMs / 1000 - t0) % 60 === 0);
      for (let tick = 0; tick < 20 && revisions().some((w) => w.revision === 0); tick++) {
        stepping = true;
        await stored.tick((t0 + 600) * 1000);
        stepping = false;
        now += 120_000; // past any back-off
      }
      expect(stored.counters.evaluation_over_budget).toBeGreaterThan(1);
      expect(revisions().map((w) => [w.revision, w.count])).toEqual(Array.from({ length: 10 }, () => [1, 21]));
    } finally {
      store.close();
    }
  });
});

describe('regression: a stored window whose sum overflowed to Infinity was revised at every re-evaluation (JSON keeps it as null, which never matched)', () => {
  it('keeps its revision when nothing changed', async () => {
    const store = openStore();
    try {
      ingest(store, { rack: 'inf', second: t0, servers: 2, value: () => 1e308 });
      const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100 });
      stored.sync([{ id: 'q1', name: 'g', query: 'FROM * SELECT g WINDOW 1s COMPUTE sum, max', createdMs: 0 }], t0 * 1000);
      await stored.tick((t0 + 10) * 1000);
      stored.noteData(t0);
      await stored.tick((t0 + 10) * 1000);
      const [w] = stored.resultsJson('q1', 0, 8.64e15, 10).map((j) => JSON.parse(j) as { revision: number; values: Record<string, number | null> });
      expect(w).toMatchObject({ revision: 0, values: { sum: null, max: 1e308 } });
      expect(stored.counters.windows_revised).toBe(0);
    } finally {
      store.close();
    }
  });
});

describe('regression: exact percentiles of gauges over a large window had no memory bound (issue 16.11)', () => {
  it('holds at most exactValuesMax values, sketching the fullest window past it (1% relative), and says so in the window', () => {
    const store = openStore();
    // 500 servers × 2 minutes: 60,000 values in one 2 m window.
    for (let t = t0; t < t0 + 120; t++) ingest(store, { rack: 'r1', second: t, servers: 500, value: (s, tt) => 1 + s * 120 + (tt - t0) });
    const exact = Array.from({ length: 60_000 }, (_, i) => 1 + i);
    const q = parseQuery('FROM * SELECT g WINDOW 2m COMPUTE count, min, max, p50, p99');
    // Bound above the window's values: exact.
    const [w0] = evaluate(store, q, t0, t0 + 120, { exactValuesMax: 1e6 });
    expect(w0).not.toHaveProperty('sketched');
    expect(w0!.values['percentile(99)']).toBe(exact[Math.floor(0.99 * 59_999)]);
    // Bound 10,000: the window is sketched; count, min and max stay exact; percentiles within 1%.
    const stats: EvalStats = { rows: 0, windowsSketched: 0, exactValuesHeldMax: 0, sketchesAllocated: 0, seenBitsBytes: 0 };
    const [w] = evaluate(store, q, t0, t0 + 120, { exactValuesMax: 10_000 }, stats);
    expect(w).toMatchObject({ sketched: true, count: 60_000, values: { count: 60_000, min: 1, max: 60_000 } });
    for (const p of [50, 99]) {
      const want = exact[Math.floor((p / 100) * 59_999)]!;
      expect(Math.abs(w!.values[`percentile(${p})`]! - want)).toBeLessThanOrEqual(want * 0.01);
    }
    expect(stats.exactValuesHeldMax).toBeLessThanOrEqual(10_000);
    expect(stats.windowsSketched).toBe(1);
    // Small windows: each is sketched only when the open ones do not fit together (1 s: 500 values each, a block's 60 open at once).
    const ten = parseQuery('FROM * SELECT g WINDOW 1s COMPUTE p50');
    const roomy = evaluate(store, ten, t0, t0 + 120, { exactValuesMax: 60 * 512 });
    expect(roomy.length).toBe(120);
    expect(roomy.every((x) => x.sketched === undefined)).toBe(true);
    const tightStats: EvalStats = { rows: 0, windowsSketched: 0, exactValuesHeldMax: 0, sketchesAllocated: 0, seenBitsBytes: 0 };
    const tight = evaluate(store, ten, t0, t0 + 120, { exactValuesMax: 10_000 }, tightStats);
    expect(tight.filter((x) => x.sketched === true).length).toBe(tightStats.windowsSketched);
    expect(tightStats.windowsSketched).toBeGreaterThan(0);
    expect(tight.some((x) => x.sketched === undefined)).toBe(true);
    expect(tightStats.exactValuesHeldMax).toBeLessThanOrEqual(10_000);
    // Whether sketched or not, each answer is within 1% of the exact one.
    tight.forEach((x, i) => {
      const vals = Array.from({ length: 500 }, (_, s) => 1 + s * 120 + i);
      const want = vals[Math.floor(0.5 * 499)]!;
      expect(Math.abs(x.values['percentile(50)']! - want)).toBeLessThanOrEqual(want * 0.01);
    });
    return store.close();
  });
});

describe('regression: late seconds held for stored queries in back-off', () => {
  it('are bounded by lateSecondsMax for all the queries together (before: per query — 20 queries held 20 × the bound)', async () => {
    const store = loadRows();
    try {
      let slow = false;
      let now = 0;
      const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100, evalBudgetMs: 500, clockMs: () => (now += slow ? 1000 : 0) });
      const queries = 20;
      stored.sync(Array.from({ length: queries }, (_, i) => ({ id: `q${i}`, name: 'g', query: `FROM *, x${i} SELECT g WINDOW 1s COMPUTE count`, createdMs: 0 })), (t0 + 1) * 1000);
      const quiet = vi.spyOn(console, 'error').mockImplementation(() => undefined);
      try {
        await stored.tick((t0 + 60) * 1000);
        // Every query past its budget: each waits in back-off.
        slow = true;
        await stored.tick((t0 + 61) * 1000);
        expect(stored.counters.evaluation_over_budget).toBe(queries);
        // A spool drains: 300 distinct late seconds arrive while they wait.
        for (let s = 0; s < 300; s++) stored.noteData(t0 - 1000 + s);
        await stored.tick((t0 + 62) * 1000);
      } finally {
        quiet.mockRestore();
      }
      // What the queries hold, counted from their states: the bound's own count must not drift from it.
      const states = (stored as unknown as { states: Map<string, { late: Set<number> }> }).states;
      expect([...states.values()].reduce((n, st) => n + st.late.size, 0)).toBe(stored.lateHeld);
      expect(stored.lateHeld).toBeLessThanOrEqual(100);
      expect(stored.lateHeld).toBeGreaterThan(0);
      expect(stored.counters.late_seconds_dropped).toBeGreaterThan(0);
      // Deleting the queries gives their held seconds back.
      stored.sync([], (t0 + 62) * 1000);
      expect(stored.lateHeld).toBe(0);
    } finally {
      await store.close();
    }
  });
});

describe('stored-query windows another cluster node evaluated (StoredQueries.adopt)', () => {
  it('are kept with their cursor, so a takeover serves the history and goes on from the last one; ignored for a query evaluated here; an edit starts afresh', async () => {
    const store = loadRows();
    const stores = [store];
    try {
      const def = { id: 'q1', name: 'g', query: 'FROM * SELECT g WINDOW 1m COMPUTE count', createdMs: 0 };
      // The evaluating node: its windows of the first 5 minutes.
      const there = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100 });
      const published: string[] = [];
      there.onWindow = (_id, w) => published.push(JSON.stringify(w));
      there.sync([def], (t0 + 60) * 1000);
      await there.tick((t0 + 300) * 1000);
      expect(published.length).toBe(5);
      // This node: a store of its own, whose rows are never read (every window was received).
      const mine = openStore();
      stores.push(mine);
      const here = new StoredQueries(mine.env, { registry: mine.registry, rackName: (id: number) => mine.rackName(id), read: () => { throw new Error('not read: every window was received'); } }, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100 });
      here.sync([], (t0 + 60) * 1000, [def]);
      expect(here.adopt(published.map((json) => ({ qid: 'q1', query: def.query, json })))).toBe(5);
      expect(here.resultsJson('q1', 0, 8.64e15, 100)).toEqual(published);
      // The evaluation moves here: nothing is evaluated again (the reader would throw) until a new window is due.
      here.sync([def], (t0 + 300) * 1000);
      await here.tick((t0 + 300) * 1000);
      expect(here.counters.windows_evaluated).toBe(0);
      // Windows of a query this node evaluates are its own: a received copy is ignored (and
      // below, for one evaluated elsewhere, an older revision than the one kept is too).
      expect(here.adopt([{ qid: 'q1', query: def.query, json: published[0]! }])).toBe(0);
      // Another text (an edit elsewhere): the old results go, the new start afresh.
      here.sync([], (t0 + 300) * 1000, [{ ...def, query: 'FROM * SELECT g WINDOW 1m COMPUTE max' }]);
      const edited = JSON.stringify({ startMs: (t0 + 240) * 1000, endMs: (t0 + 300) * 1000, servers: 20, count: 20, values: { max: 4000 }, revision: 0 });
      expect(here.adopt([{ qid: 'q1', query: 'FROM * SELECT g WINDOW 1m COMPUTE max', json: edited }])).toBe(1);
      expect(here.resultsJson('q1', 0, 8.64e15, 100)).toEqual([edited]);
      const revised = edited.replace('"revision":0', '"revision":2').replace('"max":4000', '"max":4001');
      expect(here.adopt([{ qid: 'q1', query: 'FROM * SELECT g WINDOW 1m COMPUTE max', json: revised }, { qid: 'q1', query: 'FROM * SELECT g WINDOW 1m COMPUTE max', json: edited }])).toBe(1);
      expect(here.resultsJson('q1', 0, 8.64e15, 100)).toEqual([revised]);
      expect(here.adopt([{ qid: 'q1', query: 'FROM * SELECT g WINDOW 1m COMPUTE max', json: edited }])).toBe(0);
      expect(here.resultsJson('q1', 0, 8.64e15, 100)).toEqual([revised]);
      // Results kept for a query evaluated elsewhere are swept by the retention too (before: only
      // the queries evaluated here were, and the kept ones grew for good).
      expect(await here.retentionSweep((t0 + 300 + 3600) * 1000, 3600)).toBe(1);
      expect(here.resultsJson('q1', 0, 8.64e15, 100)).toEqual([]);
      // Not a window of the query's windows: refused, counted.
      expect(here.adopt([{ qid: 'q1', query: 'FROM * SELECT g WINDOW 1m COMPUTE max', json: '{"startMs":1234}' }])).toBe(0);
      expect(here.counters.windows_adopt_refused).toBe(1);
    } finally {
      for (const st of stores) await st.close();
    }
  });
});

describe('regression: late data that does not touch a stored query\'s metric', () => {
  it('revises only the queries of its shard, and a window whose only change is exact percentiles where a sketch was is no revision (before: every query re-evaluated, and sketched windows came back "revised")', async () => {
    const store = openStore();
    try {
      for (let t = t0; t < t0 + 60; t++) ingest(store, { rack: 'r1', second: t, servers: 20, value: (s, tt) => ((s * 7919 + tt * 104729) % 1000) });
      // Reads by metric hash: which queries were evaluated.
      const reads = new Map<number, number>();
      const counting = { registry: store.registry, rackName: (id: number) => store.rackName(id), read: ((lo, hi, from, to, visit, o) => (reads.set(lo, (reads.get(lo) ?? 0) + 1), store.read(lo, hi, from, to, visit, o))) satisfies Store['read'] };
      // 200 exact values stand for the 1,000,000 of ~17k servers × 60 windows of 1 s in a catch-up.
      const stored = new StoredQueries(store.env, counting, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 1000, exactValuesMax: 200, shardOf: (m) => (m === 'g' ? 1 : 2) });
      stored.sync(
        [
          { id: 'q', name: 'q', query: 'FROM * SELECT g WINDOW 1s COMPUTE p50, count', createdMs: t0 * 1000 },
          { id: 'h', name: 'h', query: 'FROM * SELECT h WINDOW 1s COMPUTE max', createdMs: t0 * 1000 },
        ],
        t0 * 1000 + 1,
      );
      await stored.tick((t0 + 60) * 1000);
      const before = stored.resultsJson('q', 0, 8.64e15, 100);
      expect(before.some((j) => (JSON.parse(j) as { sketched?: boolean }).sketched === true)).toBe(true);
      const revised = stored.counters.windows_revised;
      const hRead = () => [...reads.entries()].filter(([lo]) => lo !== hashOf('g')).reduce((n, [, c]) => n + c, 0);
      const hReads = hRead();
      // Late data of another metric in g's shard, at t0 + 10: q's window is evaluated again, alone (exact now).
      // (Ticks at the same time: no new window is due.)
      stored.noteData(t0 + 10, 1);
      await stored.tick((t0 + 60) * 1000);
      expect(stored.counters.windows_revised).toBe(revised);
      expect(stored.resultsJson('q', 0, 8.64e15, 100)).toEqual(before);
      // h's shard saw nothing late: h was not read again.
      expect(hRead()).toBe(hReads);
      // Late data in h's shard reads h again, not g.
      const gReads = reads.get(hashOf('g'))!;
      stored.noteData(t0 + 20, 2);
      await stored.tick((t0 + 60) * 1000);
      expect(reads.get(hashOf('g'))).toBe(gReads);
      expect(hRead()).toBeGreaterThan(hReads);
    } finally {
      await store.close();
    }
  });
});

function hashOf(name: string): number {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  return h[0]!;
}

describe('regression: a stored query whose one window is past a tick\'s budget', () => {
  it('reads that window over several ticks, a block at a time, and stores what evaluate() answers (before: retried whole, it stopped at the same place each time: no result, for good)', async () => {
    const store = loadRows();
    try {
      let now = 0;
      // Every look at the clock 600 ms later: the whole window never fits a tick (budget 1 s); a slice reads a block or two.
      const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 720, lateSecondsMax: 100, evalBudgetMs: 1000, blockSeconds: 60, clockMs: () => (now += 600) });
      const text = 'FROM * SELECT g WINDOW 10m COMPUTE count, sum, max, p50';
      const quiet = vi.spyOn(console, 'error').mockImplementation(() => undefined);
      let ticks = 0;
      try {
        // Its first window is [t0, t0 + 600): the ten blocks of loadRows().
        stored.sync([{ id: 'q1', name: 'big', query: text, createdMs: (t0 + 600) * 1000 }], (t0 + 600) * 1000 + 1);
        for (; ticks < 30 && stored.resultsJson('q1', 0, 8.64e15, 10).length === 0; ticks++) await stored.tick((t0 + 600) * 1000);
      } finally {
        quiet.mockRestore();
      }
      expect(stored.resultsJson('q1', 0, 8.64e15, 10).map((j) => JSON.parse(j) as unknown)).toEqual(evaluate(store, parseQuery(text), t0, t0 + 600));
      expect(ticks).toBeGreaterThan(2);
      expect(stored.counters.windows_sliced).toBe(1);
      // The cursor went on past it.
      expect(stored.lagSeconds((t0 + 600) * 1000)).toBeLessThanOrEqual(0);
      // Late data in it: revised over several ticks too; a commit refused once (a full disk)
      // brings the window back (before: its late seconds were the slice's, and it was lost).
      ingest(store, { rack: 'r5', second: t0 + 30, servers: 5, value: () => 1 });
      stored.noteData(t0 + 30);
      const root = (stored as unknown as { root: { transactionSync: (f: () => void) => void } }).root;
      const commit = root.transactionSync.bind(root);
      let refuse = true;
      let refused = 0;
      root.transactionSync = (f) => {
        // The cursor commit of the first ticks goes through; the one storing the revision fails once.
        if (refuse && stored.counters.windows_sliced === 2 && (stored as unknown as { slicing(): number }).slicing() === 0) {
          refuse = false;
          refused++;
          throw new Error('MDB_MAP_FULL (a test)');
        }
        commit(f);
      };
      const quiet2 = vi.spyOn(console, 'error').mockImplementation(() => undefined);
      try {
        for (let i = 0; i < 40 && (JSON.parse(stored.resultsJson('q1', 0, 8.64e15, 10)[0]!) as { revision: number }).revision === 0; i++) await stored.tick((t0 + 600) * 1000).catch(() => undefined);
      } finally {
        quiet2.mockRestore();
        root.transactionSync = commit;
      }
      expect(refused).toBe(1);
      expect(JSON.parse(stored.resultsJson('q1', 0, 8.64e15, 10)[0]!)).toMatchObject({ revision: 1, count: 4 * 5 * 10 + 5 });
    } finally {
      store.close();
    }
  });
});
