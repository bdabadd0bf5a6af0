import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Encoder, KindCode } from '../schema/codec.js';
import { HashIndex } from '../schema/hashtable.js';
import { hashName } from '../schema/names.js';
import { buildColumns } from '../schema/testdata.js';
import { filterColumns } from './cardinality.js';
import { Store, type StoreOptions } from './store.js';

const enc = new Encoder();
const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));
const t = Math.floor(Date.now() / 1000) - 100;

function open(over: Partial<StoreOptions>, dir = mkdtempSync(join(tmpdir(), 'apm-card-'))): Store {
  dirs.push(dir);
  return new Store({ dir, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 1 << 30, flushGraceMs: 0, headBytesMax: 1 << 30, metricsMax: 10_000, diskBytesMax: 0, diskReserveBytes: 0, ...over });
}

let seq = 1;
/** One rack-second: each server's gauges, and every name in the rollup's dictionary (as racks send). */
function batch(second: number, servers: Record<string, string[]>): Uint8Array {
  const names = [...new Set(Object.values(servers).flat())];
  return enc.rackBatch({
    rack: 'r1',
    batchSeq: seq++,
    second,
    late: false,
    servers: Object.entries(servers).map(([server, ms]) => ({ server, blocks: [buildColumns(ms.map((name, i) => ({ name, kind: KindCode.Gauge, value: i + 1 })), [])] })),
    rollup: buildColumns([], [], names),
  });
}

/** Servers that have a stored value of `metric` at `second`. */
function holders(store: Store, metric: string, second: number): string[] {
  const h = new Uint32Array(2);
  hashName(metric, h, 0);
  const out: string[] = [];
  store.read(h[0]!, h[1]!, second, second + 1, (row, block) =>
    row.serverIds.forEach((sid, j) => {
      for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) if (block + row.pointSecs[i]! === second) out.push(store.registry.serverById(sid)!.name);
    }),
  );
  return out.sort();
}

const names = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}.${i}`);

describe('metric cardinality limits', () => {
  it('refuses new metrics beyond a server\'s budget, drops their points (counted) and keeps the other servers\' metrics', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-card-'));
    const store = open({ metricsPerServerMax: 3 }, dir);
    expect((await store.ingest(batch(t, { bomb: names('req', 6), good: ['cpu', 'mem'] }))).status).toBe(204);
    expect(store.registry.overflow).toEqual({ server: 3, total: 0 });
    expect(store.counters.points_dropped_overflow).toBe(3);
    expect(holders(store, 'req.0', t)).toEqual(['bomb']);
    expect(holders(store, 'req.5', t)).toEqual([]);
    expect(holders(store, 'cpu', t)).toEqual(['good']);
    expect(store.registry.metricByName('req.5')).toBeUndefined();
    expect(store.registry.metricByName('mem')).toBeDefined();
    // A metric the bomb was refused is admitted when a server with budget introduces it; from
    // then on every server's points of it are kept.
    await store.ingest(batch(t + 1, { good: ['req.5'] }));
    await store.ingest(batch(t + 2, { bomb: ['req.5', 'req.0'] }));
    expect(holders(store, 'req.5', t + 2)).toEqual(['bomb']);
    // The budget survives a restart (each metric remembers which server introduced it).
    await store.close();
    const again = open({ metricsPerServerMax: 3 }, dir);
    const replayed = again.registry.overflow.server; // the WAL's batches were admitted again
    expect(holders(again, 'req.4', t)).toEqual([]);
    await again.ingest(batch(t + 3, { bomb: ['req.new'] }));
    expect(again.registry.overflow.server).toBe(replayed + 1);
    expect(holders(again, 'req.new', t + 3)).toEqual([]);
    await again.close();
  });

  it('refuses new metrics once the registry is full, whoever sends them, and counts the dropped points', async () => {
    const store = open({ metricsMax: 4 });
    await store.ingest(batch(t, { a: names('x', 3), b: names('y', 3) }));
    expect(store.registry.overflow).toEqual({ server: 0, total: 2 });
    expect(store.counters.points_dropped_overflow).toBe(2);
    expect(store.registry.allMetrics().length).toBe(4);
    expect([...names('x', 3), ...names('y', 3)].map((m) => holders(store, m, t).length)).toEqual([1, 1, 1, 1, 0, 0]);
    await store.close();
  });

  it('filters columns without disturbing the kept distributions\' sketches', () => {
    const c = buildColumns(
      [{ name: 'g', kind: KindCode.Gauge, value: 1 }],
      [
        { name: 'd0', values: [1, 2, 3] },
        { name: 'd1', values: [10, 20] },
        { name: 'd2', values: [100, 200, 300, 400] },
      ],
    );
    const drop = new HashIndex(4);
    const h = new Uint32Array(2);
    hashName('d1', h, 0);
    drop.insert(h[0]!, h[1]!);
    const { columns, dropped } = filterColumns(c, drop);
    expect(dropped).toBe(1);
    expect([...columns.distCounts]).toEqual([3, 4]);
    const slice = (x: typeof c, i: number) => [...x.sketchBytes.subarray(i === 0 ? 0 : x.sketchEnds[i - 1]!, x.sketchEnds[i]!)];
    expect(slice(columns, 0)).toEqual(slice(c, 0));
    expect(slice(columns, 1)).toEqual(slice(c, 2));
    expect([...columns.pointValues]).toEqual([1]);
    expect(filterColumns(c, new HashIndex(1)).columns).toBe(c); // nothing to drop: no copy
  });
});
