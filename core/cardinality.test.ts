// Metric cardinality at ingest (issue 8; in the store since issue 12): a new metric is registered
// only while the server that introduces it has budget (metricsPerServerMax) and the store's
// registry has room (metricsMax); a refused metric's points and summaries are not stored, and
// counted. Names wait for their metric's data, so a name never registers a metric on its own.

import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeFrame, KindCode } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';
import { hashName } from '../schema/names.js';
import { rackSecondBody, sectionAt } from '../schema/section.js';
import { SketchAccumulator } from '../schema/sketch.js';
import { buildColumns, type DistInput, type PointInput } from '../schema/testdata.js';
import { openNode } from './node.js';
import { Store, type StoreIngestResult, type StoreOptions } from './store.js';

const S = 8;
const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));
const t = Math.floor(Date.now() / 1000) - 100;

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'apm-card-'));
  dirs.push(dir);
  return dir;
}

/** One store holding every shard of the node, as a worker runs it (core/worker.ts), in this thread. */
function open(over: Partial<StoreOptions>, dir = tempDir()): Store {
  return new Store({
    dir,
    shardCount: S,
    shards: Array.from({ length: S }, (_, k) => k),
    retentionSeconds: 365 * 86400,
    blockSeconds: 60,
    mapBytes: 1 << 30,
    flushGraceMs: 0,
    headBytesMax: 1 << 30,
    metricsMax: 10_000,
    metricsPerServerMax: 20_000,
    serversMax: 1000,
    racksMax: 100,
    sliceMs: 20,
    diskBytesMax: 0,
    diskReserveBytes: 0,
    ...over,
  });
}

type Servers = Record<string, { points?: PointInput[]; dists?: DistInput[] }>;
const gauges = (ms: string[]) => ({ points: ms.map((name, i) => ({ name, kind: KindCode.Gauge as const, value: i + 1 })) });

let seq = 1;
/** One rack-second as the rack sends it (every name of the second travels with the shard of its metric). */
function body(second: number, servers: Servers, names = [...new Set(Object.values(servers).flatMap((c) => [...(c.points ?? []), ...(c.dists ?? [])].map((x) => x.name)))]): Uint8Array {
  return rackSecondBody({
    rack: 'r1',
    session: 1,
    seq: seq++,
    second,
    late: false,
    shards: S,
    servers: Object.entries(servers).map(([server, c]) => ({ server, blocks: [buildColumns(c.points ?? [], c.dists ?? [])] })),
    rollup: buildColumns([], [], names),
  });
}

/** Ingests a body into the store the way a worker does: its sections, each in its own aligned buffer. */
function ingest(store: Store, b: Uint8Array): StoreIngestResult {
  const r = decodeFrame(b, batchBytesMax);
  if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('BUG: test body does not decode');
  const m = r.msg;
  const sections = [...m.sectionShards].map((shard, i) => ({ shard, bytes: sectionAt(m, i).slice() }));
  return store.ingest({ rack: m.rack, session: m.session, seq: m.seq, second: m.second, late: m.late }, sections);
}

function hashOf(metric: string): [number, number] {
  const h = new Uint32Array(2);
  hashName(metric, h, 0);
  return [h[0]!, h[1]!];
}

/** Servers that have a stored value of `metric` at `second`. */
function holders(store: Store, metric: string, second: number): string[] {
  const out: string[] = [];
  store.read(...hashOf(metric), second, second + 1, (row, block) =>
    row.serverIds.forEach((sid, j) => {
      let held = false;
      for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) if (block + row.pointSecs[i]! === second) held = true;
      for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) if (block + row.dist.secs[i]! === second) held = true;
      if (held) out.push(store.registry.serverById(sid)!.name);
    }),
  );
  return out.sort();
}

const names = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}.${i}`);

describe('metric cardinality limits', () => {
  it("refuses new metrics beyond a server's budget, drops their points (counted) and keeps the other servers' metrics", async () => {
    const dir = tempDir();
    const store = open({ metricsPerServerMax: 3 }, dir);
    const req = names('req', 6);
    expect(ingest(store, body(t, { bomb: gauges(req), good: gauges(['cpu', 'mem']) })).status).toBe(204);
    expect(store.registry.overflow).toEqual({ server: 3, total: 0 });
    expect(store.counters.points_dropped_overflow).toBe(3);
    // Which three of bomb's six come first depends on their shards; three are kept, three refused.
    const kept = req.filter((m) => holders(store, m, t).length > 0);
    const refused = req.filter((m) => !kept.includes(m));
    expect(kept.length).toBe(3);
    for (const m of kept) expect(holders(store, m, t), m).toEqual(['bomb']);
    for (const m of refused) expect(store.registry.metricByName(m), m).toBeUndefined();
    expect(holders(store, 'cpu', t)).toEqual(['good']);
    expect(store.registry.metricByName('mem')).toBeDefined();
    expect(store.registry.introducedCount(store.registry.serverByName('bomb')!.id)).toBe(3);
    // A metric the bomb was refused is admitted when a server with budget introduces it; from
    // then on every server's points of it are kept.
    expect(ingest(store, body(t + 1, { good: gauges([refused[0]!]) })).status).toBe(204);
    expect(ingest(store, body(t + 2, { bomb: gauges([refused[0]!, kept[0]!]) })).status).toBe(204);
    expect(holders(store, refused[0]!, t + 2)).toEqual(['bomb']);
    expect(store.registry.metricByName(refused[0]!)).toBeDefined(); // its name waited for its data
    // The budget survives a restart (each metric remembers which server introduced it); the
    // worker saves the registry when it stops.
    store.saveRegistry();
    await store.close();
    const again = open({ metricsPerServerMax: 3 }, dir);
    const replayed = again.registry.overflow.server; // the WAL's sections were admitted again
    expect(holders(again, refused[1]!, t)).toEqual([]);
    expect(ingest(again, body(t + 3, { bomb: gauges(['req.new']) })).status).toBe(204);
    expect(again.registry.overflow.server).toBe(replayed + 1);
    expect(holders(again, 'req.new', t + 3)).toEqual([]);
    await again.close();
  });

  it('refuses new metrics once the registry is full, whoever sends them, and counts the dropped points', async () => {
    const store = open({ metricsMax: 4 });
    const all = [...names('x', 3), ...names('y', 3)];
    expect(ingest(store, body(t, { a: gauges(names('x', 3)), b: gauges(names('y', 3)) })).status).toBe(204);
    expect(store.registry.overflow).toEqual({ server: 0, total: 2 });
    expect(store.counters.points_dropped_overflow).toBe(2);
    expect(store.registry.allMetrics().length).toBe(4);
    // Four metrics stored (one server each), two nowhere; only the stored ones are named.
    expect(all.map((m) => holders(store, m, t).length).sort()).toEqual([0, 0, 1, 1, 1, 1]);
    for (const m of all) expect(store.registry.metricByName(m) !== undefined, m).toBe(holders(store, m, t).length > 0);
    await store.close();
  });

  it("refuses one distribution without disturbing the kept distributions' summaries and sketches", async () => {
    const values = { d0: [1, 2, 3], d1: [10, 20], d2: [100, 200, 300, 400] };
    // Server a spends its budget of 3 on g, d0 and d2; then d1 is new and refused, whatever its
    // shard. The same seconds go to a store without the limit: the kept metrics must be stored alike.
    const load = (store: Store) => {
      ingest(store, body(t, { a: { points: [{ name: 'g', kind: KindCode.Gauge, value: 1 }], dists: [{ name: 'd0', values: [1] }, { name: 'd2', values: [1] }] } }));
      return ingest(store, body(t + 1, { a: { points: [{ name: 'g', kind: KindCode.Gauge, value: 1 }], dists: Object.entries(values).map(([name, v]) => ({ name, values: v })) } }));
    };
    const limited = open({ metricsPerServerMax: 3 });
    const free = open({});
    expect(load(limited)).toEqual({ status: 204, points: 3, duplicates: 0 }); // g, d0 and d2
    expect(load(free)).toEqual({ status: 204, points: 4, duplicates: 0 });
    expect(limited.counters.points_dropped_overflow).toBe(1);
    /** Summaries of `metric` at t + 1: count, sum, min, max, median and the sketch's bytes. */
    const summaries = (store: Store, metric: string) => {
      const acc = new SketchAccumulator();
      const out: unknown[][] = [];
      store.read(...hashOf(metric), t + 1, t + 2, (row, block) => {
        const d = row.dist;
        for (let i = 0; i < d.secs.length; i++) {
          if (block + d.secs[i]! !== t + 1) continue;
          acc.reset();
          acc.addEncoded(d.sketchSrc[i]!, d.sketchStart[i]!, d.sketchEnd[i]!);
          out.push([d.count[i], d.sum[i], d.min[i], d.max[i], acc.quantile(0.5, d.min[i]!, d.max[i]!), [...d.sketchSrc[i]!.subarray(d.sketchStart[i]!, d.sketchEnd[i]!)]]);
        }
      });
      return out;
    };
    expect(summaries(limited, 'd0')).toEqual(summaries(free, 'd0'));
    expect(summaries(limited, 'd2')).toEqual(summaries(free, 'd2'));
    expect(summaries(limited, 'd1')).toEqual([]);
    expect(summaries(free, 'd1').length).toBe(1);
    // And they are the values sent: exact count, sum, min, max; medians within the sketch's 1%.
    const [d0] = summaries(limited, 'd0') as [number, number, number, number, number][];
    const [d2] = summaries(limited, 'd2') as [number, number, number, number, number][];
    expect(d0!.slice(0, 4)).toEqual([3, 6, 1, 3]);
    expect(d2!.slice(0, 4)).toEqual([4, 1000, 100, 400]);
    expect(Math.abs(d0![4]! - 2)).toBeLessThanOrEqual(0.02);
    expect(Math.abs(d2![4]! - 200)).toBeLessThanOrEqual(2);
    await limited.close();
    await free.close();
  });
});

describe('names', () => {
  it('wait for their metric\'s data: a name alone registers nothing; the data registers the metric with its kind and the name', async () => {
    const store = open({});
    expect(ingest(store, body(t, { a: {} }, ['lat'])).status).toBe(204);
    expect(store.registry.indexOf(...hashOf('lat'))).toBe(-1);
    expect(store.registry.allMetrics()).toEqual([]);
    // The data arrives later, without its name: the waiting name is attached.
    expect(ingest(store, body(t + 1, { a: { dists: [{ name: 'lat', values: [5] }] } }, [])).status).toBe(204);
    expect(store.registry.metricByName('lat')?.info).toMatchObject({ name: 'lat', kind: KindCode.Distribution });
    await store.close();
  });
});

describe('cardinality limits through a node', () => {
  it('counts refused metrics and their dropped points at /metrics and lists only admitted metrics', async () => {
    const dir = tempDir();
    const node = await openNode({ dataDir: dir, workers: 1, shards: S, queryLatenessMs: 0, flushGraceMs: 0, limits: { metricsPerServerMax: 3 } });
    try {
      const res = await node.app.request('/api/v1/ingest', { method: 'POST', body: body(t, { bomb: gauges(names('req', 6)), good: gauges(['cpu', 'mem']) }) });
      expect(res.status).toBe(204);
      // /metrics asks the workers at scrape time.
      const text = await (await node.app.request('/metrics')).text();
      const want = [/^apm_core_metrics_overflow_total\{scope="server"\} 3$/m, /^apm_core_metrics_overflow_total\{scope="total"\} 0$/m, /^apm_core_points_dropped_total\{reason="metric_overflow"\} 3$/m, /^apm_core_metrics 5$/m];
      for (const re of want) expect(text).toMatch(re);
      const listed = ((await (await node.app.request('/api/v1/metrics')).json()) as { metrics: { name: string }[] }).metrics.map((m) => m.name);
      expect(listed.filter((n) => n.startsWith('req.')).length).toBe(3);
      expect(listed.filter((n) => !n.startsWith('req.'))).toEqual(['cpu', 'mem']);
    } finally {
      await node.close();
    }
  });
});
