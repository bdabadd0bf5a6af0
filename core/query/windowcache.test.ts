import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeFrame, KindCode } from '../../schema/codec.js';
import { batchBytesMax } from '../../schema/limits.js';
import { hashName } from '../../schema/names.js';
import { rackSecondBody, sectionAt, shardOf } from '../../schema/section.js';
import { buildColumns, type PointInput } from '../../schema/testdata.js';
import { openNode } from '../node.js';
import { Store } from '../store.js';
import { evaluate } from './eval.js';
import { parseQuery } from './parse.js';
import { WindowCache, type AnswerCacheCounters } from './windowcache.js';

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
const S = 4;
// Whole blocks of 60 s, well in the past (the head writes them when the test flushes).
const t0 = Math.floor(Date.now() / 1000 / 3600) * 3600 - 2 * 86400;

function openStore(sliceMs = 20, shards = [0, 1, 2, 3]): Store {
  const dir = mkdtempSync(join(tmpdir(), 'apm-wcache-'));
  dirs.push(dir);
  return new Store({ dir, shardCount: S, shards, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 100, metricsPerServerMax: 100, serversMax: 100, racksMax: 10, sliceMs, diskBytesMax: 0, diskReserveBytes: 0 });
}

const counters = (): AnswerCacheCounters => ({ answer_cache_hits: 0, answer_cache_misses: 0, answer_cache_evicted: 0, answer_cache_windows: 0 });

const seqs = new Map<string, number>();
/** One rack-second of gauge `g` (and `h`) for some servers, as a rack sends it; `late` after its block was written. */
function put(store: Store, rack: string, second: number, values: [string, number][], late = false): void {
  const seq = (seqs.get(rack) ?? 0) + 1;
  seqs.set(rack, seq);
  const servers = values.map(([server, v]) => {
    const points: PointInput[] = [
      { name: 'g', kind: KindCode.Gauge, value: v },
      { name: 'h', kind: KindCode.Gauge, value: -v },
    ];
    return { server, blocks: [buildColumns(points, [])] };
  });
  const f = decodeFrame(rackSecondBody({ rack, session: 1, seq, second, late, shards: S, servers, rollup: buildColumns([], [], ['g', 'h']) }), batchBytesMax);
  if (!f.ok || f.msg.type !== 'rackSecond') throw new Error('BUG: test body does not decode');
  const msg = f.msg;
  const sections = [...msg.sectionShards].map((shard, i) => ({ shard, bytes: sectionAt(msg, i).slice() })).filter((x) => store.opts.shards.includes(x.shard));
  expect(store.ingest(msg, sections).status).toBe(204);
}

const flush = (store: Store) => {
  while (store.writeSlice(Date.now() + 86_400_000));
};
const servers = (rack: string) => Array.from({ length: 5 }, (_, i) => `${rack}-${i}`);
/** Seconds [from, to) of both racks, values from the second and the server. */
function fill(store: Store, from: number, to: number, bump = 0): void {
  for (let t = from; t < to; t++) for (const rack of ['ra', 'rb']) put(store, rack, t, servers(rack).map((s, i) => [s, ((t - t0) % 17) + i * 3 + bump] as [string, number]));
}

/** A store holding seconds [t0, t0 + seconds) of both racks, written as rows. */
function filledStore(seconds: number): Store {
  const store = openStore();
  fill(store, t0, t0 + seconds);
  flush(store);
  return store;
}

describe('ad-hoc answers kept per window (issue 14)', () => {
  it('answers again from the cache, evaluates only the windows a shifted range adds, and equals a fresh evaluation', async () => {
    const store = filledStore(600);
    const c = counters();
    const cache = new WindowCache(c);
    const q = parseQuery('FROM ra-1,rb-2,rb-4 SELECT g WINDOW 5s COMPUTE min, max, avg, p90');
    const first = cache.evaluate(store, q, t0, t0 + 300);
    expect(first).toEqual(evaluate(store, q, t0, t0 + 300));
    expect(first.length).toBe(60);
    expect(c).toMatchObject({ answer_cache_hits: 0, answer_cache_misses: 60, answer_cache_windows: 60 });
    expect(cache.evaluate(store, q, t0, t0 + 300)).toEqual(first);
    expect(c).toMatchObject({ answer_cache_hits: 60, answer_cache_misses: 60 });
    // As a dashboard refreshing: the range moves 20 s (4 windows); 56 come from the cache.
    const shifted = cache.evaluate(store, q, t0 + 20, t0 + 320);
    expect(shifted).toEqual(evaluate(store, q, t0 + 20, t0 + 320));
    expect(c).toMatchObject({ answer_cache_hits: 116, answer_cache_misses: 64, answer_cache_windows: 64 });
    // As JSON text: the same as the windows', and the same text again while they are current.
    const text = cache.evaluateJson(store, q, t0 + 20, t0 + 320);
    expect(text).toBe(JSON.stringify(shifted));
    expect(cache.evaluateJson(store, q, t0 + 20, t0 + 320)).toBe(text);
    expect(cache.evaluateJson(store, q, t0, t0 + 300)).toBe(JSON.stringify(first));
    // Another query's answers are its own.
    const other = parseQuery('FROM ra-1,rb-2,rb-4 SELECT h WINDOW 5s COMPUTE min, max, avg, p90');
    expect(cache.evaluate(store, other, t0, t0 + 300)).toEqual(evaluate(store, other, t0, t0 + 300));
    expect(c.answer_cache_misses).toBe(124);
    await store.close();
  });

  it('regression: never serves a window whose rows changed (late data merged) or whose data is still in the head', async () => {
    const store = openStore();
    fill(store, t0, t0 + 120);
    // Known before the first answer (a server registered since changes the cache's key).
    put(store, 'ra', t0 + 110, [['ra-late', 5]]);
    flush(store);
    const c = counters();
    const cache = new WindowCache(c);
    const q = parseQuery('FROM * SELECT g WINDOW 10s COMPUTE max, count');
    const before = cache.evaluate(store, q, t0, t0 + 120);
    expect(before).toEqual(evaluate(store, q, t0, t0 + 120));
    expect(before[0]!.values).toEqual({ max: 21, count: 100 });
    // Late data for the first block: in the head, then merged into its rows.
    put(store, 'ra', t0 + 3, [['ra-late', 1000]], true);
    const fromHead = cache.evaluate(store, q, t0, t0 + 120);
    expect(fromHead[0]!.values).toEqual({ max: 1000, count: 101 });
    expect(fromHead).toEqual(evaluate(store, q, t0, t0 + 120));
    // The first block's windows were evaluated again; the second block's came from the cache.
    expect(c.answer_cache_hits).toBe(6);
    flush(store);
    expect(store.counters.rows_merged).toBeGreaterThan(0);
    const merged = cache.evaluate(store, q, t0, t0 + 120);
    expect(merged).toEqual(fromHead);
    expect(merged).toEqual(evaluate(store, q, t0, t0 + 120));
    // Windows over a block in the head were not kept: the merge's windows are evaluated now.
    expect(c.answer_cache_hits).toBe(12);
    // Late data again, written as rows before anyone asks: the cached windows are not served.
    put(store, 'ra', t0 + 75, [['ra-late', 2000]], true);
    flush(store);
    const again = cache.evaluate(store, q, t0, t0 + 120);
    expect(again[7]!.values).toEqual({ max: 2000, count: 101 });
    expect(again).toEqual(evaluate(store, q, t0, t0 + 120));
    // A window ahead of the data (no block yet) is not kept as empty once data arrives for it.
    expect(cache.evaluate(store, q, t0 + 120, t0 + 180)).toEqual([]);
    put(store, 'rb', t0 + 125, [['rb-0', 7]]);
    expect(cache.evaluate(store, q, t0 + 120, t0 + 180).map((w) => w.values)).toEqual([{ max: 7, count: 1 }]);
    await store.close();
  });

  it('never keeps a window switched to a sketch (whether it is depends on the other windows open with it)', async () => {
    const store = filledStore(120);
    const c = counters();
    const cache = new WindowCache(c);
    const q = parseQuery('FROM * SELECT g WINDOW 10s COMPUTE p50');
    // At most 150 exact values held at once: windows of 100 values are sketched when two are open.
    const answer = cache.evaluate(store, q, t0, t0 + 120, { exactValuesMax: 150 });
    expect(answer).toEqual(evaluate(store, q, t0, t0 + 120, { exactValuesMax: 150 }));
    const sketched = answer.filter((w) => w.sketched === true).length;
    expect(sketched).toBeGreaterThan(0);
    expect(cache.size).toBe(12 - sketched);
    await store.close();
  });

  it('forgets windows of blocks the retention deleted', async () => {
    const store = filledStore(120);
    const cache = new WindowCache(counters());
    const q = parseQuery('FROM * SELECT g WINDOW 30s COMPUTE min, count');
    expect(cache.evaluate(store, q, t0, t0 + 120).length).toBe(4);
    // A retention that ends after the first block: its rows go.
    const nowMs = (t0 + 60 + store.opts.retentionSeconds) * 1000;
    expect(await store.retentionSweep(nowMs)).toBeGreaterThan(0);
    const after = cache.evaluate(store, q, t0, t0 + 120);
    expect(after).toEqual(evaluate(store, q, t0, t0 + 120));
    expect(after.map((w) => w.startMs / 1000)).toEqual([t0 + 60, t0 + 90]);
    await store.close();
  });

  it('regression: a retention sweep that fails part way leaves no answer cached in between served', async () => {
    const h = new Uint32Array(2);
    hashName('g', h, 0);
    // A store of g's shard alone: every batch of the sweep deletes one of g's rows.
    const store = openStore(20, [shardOf(h[0]!, S)]);
    for (let t = t0; t < t0 + 120; t++) for (const rack of ['ra', 'rb', 'rc', 'rd']) put(store, rack, t, [[`${rack}-0`, t - t0]]);
    flush(store);
    const cache = new WindowCache(counters());
    const q = parseQuery('FROM * SELECT g WINDOW 30s COMPUTE count');
    const root = (store as unknown as { root: { transactionSync: (f: () => unknown) => unknown } }).root;
    const commit = root.transactionSync.bind(root);
    // The first block's 4 rows go one per batch; a query runs between two batches.
    const sweep = store.retentionSweep((t0 + 60 + store.opts.retentionSeconds) * 1000, 1);
    expect(cache.evaluate(store, q, t0, t0 + 120).map((w) => w.count)).toEqual([90, 90, 120, 120]);
    let calls = 0;
    root.transactionSync = (f) => {
      if (++calls === 2) throw new Error('test: the disk failed');
      return commit(f);
    };
    await expect(sweep).rejects.toThrow(/disk failed/);
    root.transactionSync = commit;
    const fresh = evaluate(store, q, t0, t0 + 120);
    expect(fresh.map((w) => w.count)).toEqual([60, 60, 120, 120]);
    expect(cache.evaluate(store, q, t0, t0 + 120)).toEqual(fresh);
    await store.close();
  });

  it('stays within its bounds in windows, per store and per query, and counts what it drops', async () => {
    const store = filledStore(300);
    const c = counters();
    const cache = new WindowCache(c, 100, 50);
    const q = (i: number) => parseQuery(`FROM ra-${i} SELECT g WINDOW 5s COMPUTE max`);
    // One query of 60 windows keeps its newest 50.
    expect(cache.evaluate(store, q(0), t0, t0 + 300)).toEqual(evaluate(store, q(0), t0, t0 + 300));
    expect([cache.size, c.answer_cache_evicted]).toEqual([50, 10]);
    expect(cache.evaluate(store, q(0), t0 + 50, t0 + 300)).toEqual(evaluate(store, q(0), t0 + 50, t0 + 300));
    expect(c.answer_cache_hits).toBe(50);
    // Three more queries: the least recently asked go first; never more than 100 windows.
    for (let i = 1; i <= 3; i++) {
      expect(cache.evaluate(store, q(i), t0, t0 + 200)).toEqual(evaluate(store, q(i), t0, t0 + 200));
      expect(cache.size).toBeLessThanOrEqual(100);
    }
    expect(c.answer_cache_evicted).toBe(10 + 50 + 40);
    expect(c.answer_cache_windows).toBe(cache.size);
    await store.close();
  });

  it('equals a fresh evaluation through any history of ingest, late data, partial row writing and retention (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant('put' as const), block: fc.integer({ min: 0, max: 5 }), sec: fc.integer({ min: 0, max: 59 }), rack: fc.constantFrom('ra', 'rb'), server: fc.integer({ min: 0, max: 6 }), v: fc.integer({ min: -50, max: 50 }) }),
            fc.record({ op: fc.constant('slice' as const), n: fc.integer({ min: 1, max: 6 }) }),
            fc.record({ op: fc.constant('sweep' as const), block: fc.integer({ min: 0, max: 3 }) }),
            fc.record({ op: fc.constant('query' as const), from: fc.integer({ min: 0, max: 359 }), len: fc.integer({ min: 1, max: 240 }), w: fc.constantFrom(1, 5, 7, 60, 90), sel: fc.constantFrom('*', 'ra-*', 'ra-1,rb-3,rb-6', 'rack:rb'), fn: fc.constantFrom('max, count', 'min, avg, p50'), json: fc.boolean() }),
          ),
          { minLength: 5, maxLength: 40 },
        ),
        async (ops) => {
          // One row per slice: blocks are often half written when a query comes.
          const store = openStore(0);
          const cache = new WindowCache(counters(), 400, 200);
          for (const o of ops) {
            if (o.op === 'put') {
              const second = t0 + o.block * 60 + o.sec;
              put(store, o.rack, second, [[`${o.rack}-${o.server}`, o.v]]);
            } else if (o.op === 'slice') {
              for (let i = 0; i < o.n; i++) store.writeSlice(Date.now() + 86_400_000);
            } else if (o.op === 'sweep') {
              await store.retentionSweep((t0 + o.block * 60 + store.opts.retentionSeconds) * 1000);
            } else {
              const q = parseQuery(`FROM ${o.sel} SELECT g WINDOW ${o.w}s COMPUTE ${o.fn}`);
              const from = t0 + o.from;
              const fresh = evaluate(store, q, from, from + o.len);
              if (o.json) expect(cache.evaluateJson(store, q, from, from + o.len)).toBe(JSON.stringify(fresh));
              else expect(cache.evaluate(store, q, from, from + o.len)).toEqual(fresh);
            }
          }
          await store.close();
        },
      ),
      { numRuns: 60 },
    );
  });

  it('over HTTP: nocache=1 evaluates every window and gives the same answer; /metrics counts hits and misses', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-wcache-node-'));
    dirs.push(dir);
    const node = await openNode({ dataDir: dir, workers: 2, shards: 8, queryLatenessMs: 0, flushGraceMs: 0 });
    try {
      const now = Math.floor(Date.now() / 1000);
      for (let k = 0; k < 30; k++) {
        const body = rackSecondBody({ rack: 'r1', session: 1, seq: k + 1, second: now - 100 + k, late: false, shards: 8, servers: [{ server: 'web-1', blocks: [buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: k }], [])] }], rollup: buildColumns([], [], ['cpu']) });
        expect((await node.pool.ingest(body)).status).toBe(204);
      }
      await node.pool.flush(Date.now() + 86_400_000);
      const url = `/api/v1/query?q=${encodeURIComponent('FROM web-* SELECT cpu WINDOW 5s COMPUTE max, count')}&from=${(now - 100) * 1000}&to=${(now - 70) * 1000}`;
      const texts: string[] = [];
      for (const u of [url, url, `${url}&nocache=1`]) texts.push(await (await node.app.request(u)).text());
      expect(new Set(texts).size).toBe(1);
      expect((JSON.parse(texts[0]!) as { windows: unknown[] }).windows.length).toBeGreaterThanOrEqual(6);
      const metrics = await (await node.app.request('/metrics')).text();
      const n = (result: string) => Number(new RegExp(`^apm_core_answer_cache_windows_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(metrics)?.[1]);
      // The first answer's windows were evaluated and kept, the second's came from the cache; nocache=1 counts neither.
      expect(n('hit')).toBe(n('miss'));
      expect(n('hit')).toBeGreaterThanOrEqual(6);
    } finally {
      await node.close();
    }
  });
});
