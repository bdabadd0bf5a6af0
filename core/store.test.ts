import { afterEach, describe, expect, it, vi } from 'vitest';
import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeFrame, Encoder, KindCode, type SeriesColumns } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';
import { hashName } from '../schema/names.js';
import { encodeShardSection, originImport, rackSecondBody, sectionAt } from '../schema/section.js';
import { SketchAccumulator } from '../schema/sketch.js';
import { buildColumns, type DistInput, type PointInput } from '../schema/testdata.js';
import type { DecodedRow } from './block.js';
import { openLmdb } from '../lib/lmdb.js';
import { coreLimits } from './limits.js';
import { evaluate } from './query/eval.js';
import { parseQuery } from './query/parse.js';
import { Store, storeFormat, walPageBytes, type RequestHeader, type SectionIn, type StoreOptions } from './store.js';
import { decodeRow, RowError, rowServerIds, rowV4Marker } from './block.js';
import { groupKey, rowKey, storedRowBytes } from './rowgroups.js';
import { walKeySeq, walKeyShard } from './walkey.js';

const t0 = 1_790_000_040; // a fixed second: the stores below keep 100 years, so it stays inside their retention
const S = 4;
const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

function options(dir: string, over: Partial<StoreOptions> = {}): StoreOptions {
  return { dir, shardCount: S, shards: [0, 1, 2, 3], retentionSeconds: 100 * 365 * 86400, blockSeconds: 60, mapBytes: 1 << 30, flushGraceMs: 0, headBytesMax: 1 << 30, metricsMax: 10_000, metricsPerServerMax: 10_000, serversMax: 10_000, racksMax: 100, sliceMs: 20, diskBytesMax: 0, diskReserveBytes: 0, lastSeenSaveMs: 0, ...over };
}

function open(over: Partial<StoreOptions> = {}): Store {
  const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
  dirs.push(dir);
  return new Store(options(dir, over));
}

let seq = 1;
/** One rack second as the store receives it from its worker: the header and the sections' bytes. */
function batch(second: number, servers: Record<string, { points?: PointInput[]; dists?: DistInput[] }>, rack = 'r1', rollup?: SeriesColumns, shards = S): [RequestHeader, SectionIn[]] {
  const h = { rack, session: 9, seq: seq++, second, late: false };
  const body = rackSecondBody({
    ...h,
    shards,
    servers: Object.entries(servers).map(([server, c]) => ({ server, blocks: [buildColumns(c.points ?? [], c.dists ?? [])] })),
    rollup: rollup ?? buildColumns([], [], []),
  });
  const r = decodeFrame(body, batchBytesMax);
  if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('not a RackSecond');
  const m = r.msg;
  return [h, Array.from(m.sectionShards, (shard, i) => ({ shard, bytes: sectionAt(m, i).slice() }))];
}

/** A WAL key as builds before core/walkey.ts wrote it: [shard u16][seq u48]. */
function legacyKey(key: Buffer): Buffer {
  const k = Buffer.alloc(8);
  k.writeUInt16BE(walKeyShard(key), 0);
  k.writeUIntBE(walKeySeq(key), 2, 6);
  return k;
}

/** Writes every due row, as the worker does slice by slice. */
function flushAll(store: Store, nowMs = Date.now() + 3600_000): void {
  while (store.writeSlice(nowMs));
}

/** Everything stored for a metric, as { "server@second": value | summary }. */
function dump(store: Store, name: string, from: number, to: number) {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  const out: Record<string, unknown> = {};
  const acc = new SketchAccumulator();
  store.read(h[0]!, h[1]!, from, to, (row: DecodedRow, block) => {
    row.serverIds.forEach((sid, j) => {
      const server = store.registry.serverById(sid)!.name;
      for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) {
        const sec = block + row.pointSecs[i]!;
        if (sec >= from && sec < to) out[`${server}@${sec}`] = row.pointVals[i];
      }
      const d = row.dist;
      for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) {
        acc.reset();
        acc.addEncoded(d.sketchSrc[i]!, d.sketchStart[i]!, d.sketchEnd[i]!);
        out[`${server}@${block + d.secs[i]!}`] = { count: d.count[i], sum: d.sum[i], min: d.min[i], max: d.max[i], p50: acc.quantile(0.5, d.min[i], d.max[i]) };
      }
    });
  });
  return out;
}

describe('Store', () => {
  it('round-trips gauges, counters, negative values and distributions through the head and through rows', () => {
    const store = open();
    expect(store.ingest(...batch(t0, { a: { points: [{ name: 'cpu', kind: KindCode.Gauge, value: 12.25 }, { name: 'req', kind: KindCode.Counter, value: 7 }] }, b: { points: [{ name: 'cpu', kind: KindCode.Gauge, value: -3.5 }] } })).status).toBe(204);
    expect(store.ingest(...batch(t0 + 1, { a: { points: [{ name: 'cpu', kind: KindCode.Gauge, value: 1e-7 }], dists: [{ name: 'lat', values: [5, -1, 0, 20] }] } })).status).toBe(204);
    // A gap (t0 + 2 missing) and a server appearing later.
    store.ingest(...batch(t0 + 3, { c: { points: [{ name: 'cpu', kind: KindCode.Gauge, value: 99 }] } }));
    const want = { [`a@${t0}`]: 12.25, [`b@${t0}`]: -3.5, [`a@${t0 + 1}`]: 1e-7, [`c@${t0 + 3}`]: 99 };
    expect(dump(store, 'cpu', t0, t0 + 10)).toEqual(want); // from the head
    expect(dump(store, 'lat', t0, t0 + 10)).toEqual({ [`a@${t0 + 1}`]: { count: 4, sum: 24, min: -1, max: 20, p50: 0 } });
    flushAll(store);
    expect(store.counters.rows_written).toBeGreaterThan(0);
    expect(store.heldBytes).toBe(0);
    expect(dump(store, 'cpu', t0, t0 + 10)).toEqual(want); // from LMDB rows
    expect(dump(store, 'req', t0, t0 + 10)).toEqual({ [`a@${t0}`]: 7 });
    expect(dump(store, 'cpu', t0 + 1, t0 + 3)).toEqual({ [`a@${t0 + 1}`]: 1e-7 });
    expect(store.registry.allServers().map((s) => [s.name, s.rack])).toEqual([['a', 'r1'], ['b', 'r1'], ['c', 'r1']]);
    return store.close();
  });

  it("keeps a block's row directory (keys, pointers, headers, row bytes) while the block is unchanged, and reads the block again after any change: a row merged with late data, a new rack's row, a retention sweep", async () => {
    const store = open();
    const q = (value: number): { points: PointInput[] } => ({ points: [{ name: 'q', kind: KindCode.Gauge, value }] });
    expect(store.ingest(...batch(t0, { a: q(1) })).status).toBe(204);
    flushAll(store);
    expect(dump(store, 'q', t0, t0 + 60)).toEqual({ [`a@${t0}`]: 1 });
    const misses = store.counters.row_directory_misses;
    expect(dump(store, 'q', t0, t0 + 60)).toEqual({ [`a@${t0}`]: 1 });
    expect(store.counters.row_directory_hits).toBeGreaterThan(0);
    expect(store.counters.row_directory_misses).toBe(misses);
    expect(store.counters.row_directory_bytes).toBeGreaterThan(0);
    // The row's bytes kept with it: a third read looks up no row-group chunk.
    const groups = (store as unknown as { groups: { getBinaryFast: (k: Buffer) => unknown } }).groups;
    const get = vi.spyOn(groups, 'getBinaryFast');
    expect(dump(store, 'q', t0, t0 + 60)).toEqual({ [`a@${t0}`]: 1 });
    expect(get).not.toHaveBeenCalled();
    get.mockRestore();
    // Late data merged into the written row: its new bytes, not the kept pointer's.
    expect(store.ingest(...batch(t0 + 1, { a: q(3), b: q(2) })).status).toBe(204);
    flushAll(store);
    expect(dump(store, 'q', t0, t0 + 60)).toEqual({ [`a@${t0}`]: 1, [`a@${t0 + 1}`]: 3, [`b@${t0 + 1}`]: 2 });
    // Another rack's row in the same block: a key the kept directory had not.
    expect(store.ingest(...batch(t0 + 2, { c: q(4) }, 'r2')).status).toBe(204);
    flushAll(store);
    expect(dump(store, 'q', t0, t0 + 60)).toEqual({ [`a@${t0}`]: 1, [`a@${t0 + 1}`]: 3, [`b@${t0 + 1}`]: 2, [`c@${t0 + 2}`]: 4 });
    // Swept by the retention: nothing read, nothing counted corrupt.
    await store.retentionSweep((t0 + 100 * 365 * 86400 + 4200) * 1000);
    expect(dump(store, 'q', t0, t0 + 60)).toEqual({});
    expect(store.counters.rows_corrupt).toBe(0);
    return store.close();
  });

  it('merges late data into a written block, and stores a retried request once', () => {
    const store = open();
    store.ingest(...batch(t0, { a: { points: [{ name: 'q', kind: KindCode.Gauge, value: 1 }], dists: [{ name: 'd', values: [1, 2] }] } }));
    flushAll(store);
    const late = batch(t0, { b: { points: [{ name: 'q', kind: KindCode.Gauge, value: 2 }] }, a: { dists: [{ name: 'd', values: [3] }] } });
    const sections = late[1].length;
    expect(store.ingest(...late)).toMatchObject({ status: 204, duplicates: 0 });
    expect(store.ingest(...late)).toMatchObject({ status: 204, duplicates: sections, points: 0 });
    flushAll(store);
    expect(dump(store, 'q', t0, t0 + 1)).toEqual({ [`a@${t0}`]: 1, [`b@${t0}`]: 2 });
    expect(dump(store, 'd', t0, t0 + 1)).toMatchObject({ [`a@${t0}`]: { count: 3, sum: 6, min: 1, max: 3 } });
    expect(store.counters).toMatchObject({ sections_duplicate: sections, rows_merged: 2 });
    return store.close();
  });

  it('regression: reads late data over a written row as the row writer will write it (a re-sent point replaces, a summary part that would pass 2³² − 1 is refused), so the answer does not change when the row is written', () => {
    const store = open();
    const heavy = (value: number): DistInput => ({ name: 'hv', values: [value], weights: [3e9] });
    store.ingest(...batch(t0, { a: { points: [{ name: 'q', kind: KindCode.Gauge, value: 1 }], dists: [heavy(5)] }, b: { dists: [{ name: 'hv', values: [7] }] } }));
    flushAll(store);
    store.ingest(...batch(t0, { a: { points: [{ name: 'q', kind: KindCode.Gauge, value: 4 }], dists: [heavy(6)] } }));
    /** Every entry read, as "server@second": [points…] or [summary counts…]. */
    const entries = (name: string) => {
      const h = new Uint32Array(2);
      hashName(name, h, 0);
      const out: Record<string, number[]> = {};
      store.read(h[0]!, h[1]!, t0, t0 + 60, (row: DecodedRow, block) => {
        row.serverIds.forEach((sid, j) => {
          const at = (sec: number) => (out[`${store.registry.serverById(sid)!.name}@${block + sec}`] ??= []);
          for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) at(row.pointSecs[i]!).push(row.pointVals[i]!);
          for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) at(row.dist.secs[i]!).push(row.dist.count[i]!);
        });
      });
      return out;
    };
    // Before: the stored row and the head were read as two rows: a@t0 held [1, 4] and [3e9, 3e9].
    const before = [entries('q'), entries('hv')];
    expect(before).toEqual([{ [`a@${t0}`]: [4] }, { [`a@${t0}`]: [3e9], [`b@${t0}`]: [1] }]);
    flushAll(store);
    expect([entries('q'), entries('hv')]).toEqual(before);
    return store.close();
  });

  it('adds a second\'s values of a subset of a row\'s servers in server order, then the seconds in order, whichever way the row is read (every second of a block: dense; one missing; from the head)', () => {
    const store = open();
    // Servers a, b, c (ids in that order) of one rack with 0.1, 0.2, 0.3 every second; d too, not asked for.
    const second = (sec: number, skipC = false) =>
      store.ingest(...batch(sec, Object.fromEntries((['a', 'b', 'c', 'd'] as const).filter((x) => !(skipC && x === 'c')).map((x, i) => [x, { points: [{ name: 'fs', kind: KindCode.Gauge, value: [0.1, 0.2, 0.3, 5][i]! } as PointInput] }]))));
    for (let k = 0; k < 60; k++) second(t0 + k);
    for (let k = 0; k < 60; k++) second(t0 + 60 + k, k === 59); // c misses the block's last second
    const q = parseQuery('FROM a, b, c SELECT fs WINDOW 5s COMPUTE sum, avg, count');
    const head = evaluate(store, q, t0, t0 + 120);
    flushAll(store);
    const rows = evaluate(store, q, t0, t0 + 120);
    // Per second ((0 + 0.1) + 0.2) + 0.3, five of them from 0: what the other order (0.6 a second) does not give.
    const perSecond = 0 + 0.1 + 0.2 + 0.3;
    let five = 0;
    for (let i = 0; i < 5; i++) five += perSecond;
    expect(perSecond).not.toBe(0.3 + 0.2 + 0.1);
    expect(rows[0]!.values).toEqual({ sum: five, avg: five / 15, count: 15 });
    expect(rows[12]!.values.sum).toBe(five);
    expect(rows).toEqual(head);
    return store.close();
  });

  it('regression: visits a block\'s head racks in rack order with its stored rows, so a sum does not change in its last bit when the rows are written (before: in the order the racks arrived)', () => {
    const store = open();
    const one = (rack: string, second: number, value: number) => store.ingest(...batch(second, { [`${rack}-s`]: { points: [{ name: 'fsum', kind: KindCode.Gauge, value }] } }, rack));
    // Rack ids by first arrival: r1, r2, r3. In the next block they arrive the other way round.
    for (const r of ['r1', 'r2', 'r3']) one(r, t0, 1);
    flushAll(store);
    for (const [r, v] of [['r3', 0.3], ['r2', 0.2], ['r1', 0.1]] as const) one(r, t0 + 60, v);
    const q = parseQuery('FROM * SELECT fsum WINDOW 60s COMPUTE sum, avg');
    const before = evaluate(store, q, t0 + 60, t0 + 120);
    flushAll(store);
    const after = evaluate(store, q, t0 + 60, t0 + 120);
    // 0.1 + 0.2 + 0.3 is 0.6000000000000001 in rack order, 0.6 the other way round.
    expect(after[0]!.values.sum).toBe(0.1 + 0.2 + 0.3);
    expect(before).toEqual(after);
    return store.close();
  });

  it('forgets servers, metrics and racks not seen for longer than the retention keeps rows (their ids reused), keeps the others, and not while a head holds data before the cutoff; a reopen keeps that', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-retire-'));
    dirs.push(dir);
    const opts = options(dir, { retentionSeconds: 3600, futureSecondsMax: 60 });
    const store = new Store(opts);
    const gauge = (name: string, value: number): { points: PointInput[] } => ({ points: [{ name, kind: KindCode.Gauge, value }] });
    const at = (second: number) => second * 1000;
    // Two servers of a rack and its metric seen once, at t0; a server that keeps sending, on another rack.
    expect(store.ingest(...batch(t0, { old1: gauge('old.m', 1), old2: gauge('old.m', 2) }, 'r-old'), at(t0)).status).toBe(204);
    expect(store.ingest(...batch(t0, { keep: gauge('keep.m', 5) }, 'r-keep'), at(t0)).status).toBe(204);
    flushAll(store);
    const oldIds = ['old1', 'old2'].map((n) => store.registry.serverByName(n)!.id);
    const index = (st: Store, name: string) => {
      const h = new Uint32Array(2);
      hashName(name, h, 0);
      return st.registry.indexOf(h[0]!, h[1]!);
    };
    const oldIndex = index(store, 'old.m');
    expect(oldIndex).toBeGreaterThanOrEqual(0);
    const keepId = store.registry.serverByName('keep')!.id;
    expect(keepId).toBeGreaterThan(Math.max(...oldIds));
    expect(store.ingest(...batch(t0 + 4000, { keep: gauge('keep.m', 6) }, 'r-keep'), at(t0 + 4000)).status).toBe(204);
    // A head still holding a block before the cutoff (late data for it, not yet written): nothing is forgotten.
    expect(store.ingest(...batch(t0 + 590, { keep: gauge('keep.m', 7) }, 'r-keep'), at(t0 + 3700)).status).toBe(204);
    await store.retentionSweep(at(t0 + 4200));
    expect(store.registry.serverByName('old1')).toBeDefined();
    // Written (and swept: the cutoff, t0 + 600, is past it), the rows hold nothing before the cutoff.
    flushAll(store);
    await store.retentionSweep(at(t0 + 4200));
    expect(['old1', 'old2', 'keep'].map((n) => store.registry.serverByName(n)?.id)).toEqual([undefined, undefined, keepId]);
    expect([index(store, 'old.m'), index(store, 'keep.m') >= 0]).toEqual([-1, true]);
    expect(store.counters).toMatchObject({ servers_retired: 2, metrics_retired: 1, racks_retired: 1 });
    expect(store.registry.serverCount).toBe(1);
    // Ids past the count of servers (the retired ones were lower): a query still counts the kept server.
    const q = evaluate(store, parseQuery('FROM keep SELECT keep.m WINDOW 60s COMPUTE count, max'), t0 + 3960, t0 + 4020);
    expect(q.map((w) => [w.servers, w.values.count, w.values.max])).toEqual([[1, 1, 6]]);
    // New names take the freed ids: the lowest server id, the metric's index, the rack's id.
    expect(store.ingest(...batch(t0 + 4100, { fresh: gauge('new.m', 9) }, 'r-new'), at(t0 + 4100)).status).toBe(204);
    expect(store.registry.serverByName('fresh')!.id).toBe(Math.min(...oldIds));
    expect(index(store, 'new.m')).toBe(oldIndex);
    expect(dump(store, 'new.m', t0 + 4000, t0 + 4200)).toEqual({ [`fresh@${t0 + 4100}`]: 9 });
    expect(dump(store, 'keep.m', t0, t0 + 4200)).toEqual({ [`keep@${t0 + 4000}`]: 6 });
    flushAll(store);
    await store.close();
    const again = new Store(opts);
    dirs.push(dir);
    expect(['old1', 'old2', 'keep', 'fresh'].map((n) => again.registry.serverByName(n)?.id)).toEqual([undefined, undefined, keepId, Math.min(...oldIds)]);
    expect(index(again, 'old.m')).toBe(-1);
    expect(dump(again, 'new.m', t0 + 4000, t0 + 4200)).toEqual({ [`fresh@${t0 + 4100}`]: 9 });
    // The other freed server id is taken next, after the reopen too.
    expect(again.ingest(...batch(t0 + 4110, { fresh2: gauge('new.m', 10) }, 'r-new'), at(t0 + 4110)).status).toBe(204);
    expect(again.registry.serverByName('fresh2')!.id).toBe(Math.max(...oldIds));
    await again.close();
  });

  it('regression: a shard snapshot taken after a metric was retired describes each metric by its own index (before: by its position in the list of live metrics, so a copy took a gauge for a distribution and dropped its points for good)', async () => {
    const opts = { retentionSeconds: 3600, futureSecondsMax: 60 };
    const src = open(opts);
    const at = (second: number) => second * 1000;
    const g = (name: string, value: number): PointInput => ({ name, kind: KindCode.Gauge, value });
    // Registry indexes by first arrival: old.m 0, keep.d 1, keep.g 2.
    src.ingest(...batch(t0, { old: { points: [g('old.m', 1)] } }, 'r-old'), at(t0));
    src.ingest(...batch(t0, { keep: { dists: [{ name: 'keep.d', values: [1, 2] }] } }, 'r-keep'), at(t0));
    src.ingest(...batch(t0, { keep: { points: [g('keep.g', 5)] } }, 'r-keep'), at(t0));
    src.ingest(...batch(t0 + 4000, { keep: { dists: [{ name: 'keep.d', values: [3] }], points: [g('keep.g', 6)] } }, 'r-keep'), at(t0 + 4000));
    flushAll(src);
    await src.retentionSweep(at(t0 + 4200));
    expect(src.counters.metrics_retired).toBe(1);
    const dst = open();
    for (let shard = 0; shard < S; shard++) await dst.restoreShard(shard, [...src.snapshotShard(shard)]);
    // Live points of both on the copy are stored, none refused as of another kind.
    const r = dst.ingest(...batch(t0 + 4100, { keep: { points: [g('keep.g', 8)], dists: [{ name: 'keep.d', values: [4] }] } }, 'r-keep'));
    expect(r).toMatchObject({ status: 204, points: 2 });
    expect(dst.counters.points_dropped_kind_conflict).toBe(0);
    await src.close();
    await dst.close();
  });

  it('regression: a retired server\'s share of the per-server metric limit is given up durably with its removal (before: a restart right after gave the metrics it introduced back to its id, and so to the next new server, whose own metrics were refused)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-retire-quota-'));
    dirs.push(dir);
    const opts = options(dir, { retentionSeconds: 3600, futureSecondsMax: 60, metricsPerServerMax: 2 });
    const at = (second: number) => second * 1000;
    const g = (name: string, value: number): PointInput => ({ name, kind: KindCode.Gauge, value });
    let st = new Store(opts);
    // X introduces two metrics (its whole share); another server keeps sending them.
    st.ingest(...batch(t0, { X: { points: [g('q1', 1), g('q2', 1)] } }, 'rx'), at(t0));
    flushAll(st);
    const xId = st.registry.serverByName('X')!.id;
    st.ingest(...batch(t0 + 4000, { keep: { points: [g('q1', 2), g('q2', 2)] } }, 'rk'), at(t0 + 4000));
    flushAll(st);
    await st.retentionSweep(at(t0 + 4200));
    expect(st.registry.serverByName('X')).toBeUndefined();
    await st.close(); // no registry save or row slice after the retire
    st = new Store(opts);
    expect(st.registry.introducedCount(xId)).toBe(0);
    const r = st.ingest(...batch(t0 + 4100, { Z: { points: [g('z1', 1), g('z2', 1)] } }, 'rz'), at(t0 + 4100));
    expect(st.registry.serverByName('Z')!.id).toBe(xId);
    expect(r).toMatchObject({ status: 204, points: 2 });
    await st.close();
  });

  it('regression: a rack\'s last-seen time is saved only once its id is (before: a rack whose first rows were never written left a time on disk no retire could reach), and a snapshot being read holds retirement off', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-rackseen-'));
    dirs.push(dir);
    const opts = options(dir, { retentionSeconds: 3600, futureSecondsMax: 60 });
    const at = (second: number) => second * 1000;
    let st = new Store(opts);
    st.ingest(...batch(t0, { a: { points: [{ name: 'rs', kind: KindCode.Gauge, value: 1 }] } }, 'r-unwritten'), at(t0));
    st.saveRegistry();
    await st.close(); // before its rows (and so its rack id) were written; the WAL replays the request
    const env = openLmdb({ path: dir, maxDbs: 16 });
    expect(env.openDB<number, string>({ name: 'rackSeen', encoding: 'json' }).get('r-unwritten')).toBeUndefined();
    await env.close();
    // Another store: a snapshot being read holds retirement off (the sweep deletes the rows; the names stay until it ends).
    st = open({ retentionSeconds: 3600, futureSecondsMax: 60 });
    st.ingest(...batch(t0, { a: { points: [{ name: 'rs', kind: KindCode.Gauge, value: 1 }] } }, 'r-a'), at(t0));
    flushAll(st);
    const chunks = st.snapshotShard(0);
    chunks.next();
    await st.retentionSweep(at(t0 + 4200));
    expect([st.counters.racks_retired, st.registry.serverByName('a') !== undefined]).toEqual([0, true]);
    for (const _ of chunks);
    await st.retentionSweep(at(t0 + 4200));
    expect([st.counters.racks_retired, st.counters.servers_retired, st.registry.serverByName('a')]).toEqual([1, 1, undefined]);
    await st.close();
  });

  it('regression: a WAL entry that decodes but cannot be replayed is kept and counted, and the others are replayed (before: the throw ended the worker at every start)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-unapplied-'));
    dirs.push(dir);
    const first = new Store(options(dir));
    for (let k = 0; k < 3; k++) expect(first.ingest(...batch(t0 + k, { u: { points: [{ name: 'unap', kind: KindCode.Gauge, value: k + 1 }] } })).status).toBe(204);
    await first.close(); // not written as rows: all three come back from the WAL
    const proto = Store.prototype as unknown as { toHead: (...a: unknown[]) => number };
    const real = proto.toHead;
    let calls = 0;
    const spy = vi.spyOn(proto, 'toHead').mockImplementation(function (this: unknown, ...a: unknown[]) {
      if (++calls === 2) throw new Error('BUG: injected by a test');
      return real.apply(this, a);
    });
    const log = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    let again: Store;
    try {
      again = new Store(options(dir));
    } finally {
      spy.mockRestore();
      log.mockRestore();
    }
    expect(again.counters).toMatchObject({ wal_unapplied: 1, wal_replayed: 2 });
    expect(Object.keys(dump(again, 'unap', t0, t0 + 3)).length).toBe(2);
    await again.close();
  });

  it('a retention sweep with nothing to forget writes no transaction (each is a synced commit, every 10 s); one reaching before 1970 deletes nothing (it threw on a negative row key)', async () => {
    const century = open();
    await expect(century.retentionSweep(Date.now())).resolves.toBe(0);
    await century.close();
    const store = open({ retentionSeconds: 3600 });
    store.ingest(...batch(Math.floor(Date.now() / 1000) - 120, { a: { points: [{ name: 'calm', kind: KindCode.Gauge, value: 1 }] } }));
    flushAll(store);
    const root = (store as unknown as { root: { transactionSync: (f: () => void) => void } }).root;
    const spy = vi.spyOn(root, 'transactionSync');
    try {
      await store.retentionSweep(Date.now());
      expect(spy).not.toHaveBeenCalled();
    } finally {
      spy.mockRestore();
    }
    return store.close();
  });

  it('commits requests that wait together in one transaction, a copy inside the group stored once', () => {
    const store = open();
    const a = batch(t0, { a: { points: [{ name: 'g', kind: KindCode.Gauge, value: 1 }], dists: [{ name: 'gd', values: [1] }] } });
    const b = batch(t0 + 1, { a: { points: [{ name: 'g', kind: KindCode.Gauge, value: 2 }], dists: [{ name: 'gd', values: [2] }] } });
    const bad: [RequestHeader, SectionIn[]] = [{ ...a[0], seq: 999 }, [{ shard: 0, bytes: new Uint8Array(40) }]];
    const results = store.ingestMany([a, b, a, bad].map(([h, sections]) => ({ h, sections })));
    expect(results.map((r) => r.status)).toEqual([204, 204, 204, 400]);
    expect(results[2]).toMatchObject({ points: 0, duplicates: a[1].length });
    expect(store.counters.commits).toBe(1);
    expect(dump(store, 'g', t0, t0 + 2)).toEqual({ [`a@${t0}`]: 1, [`a@${t0 + 1}`]: 2 });
    expect(Object.values(dump(store, 'gd', t0, t0 + 2)).map((x) => (x as { count: number }).count)).toEqual([1, 1]);
    return store.close();
  });

  it('records its store format, and refuses a data directory written by a newer format instead of taking its rows for corrupt ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-format-'));
    dirs.push(dir);
    const first = new Store(options(dir));
    await first.close();
    const root = openLmdb({ path: dir, maxDbs: 16, mapSize: 1 << 30 });
    const state = root.openDB<number, string>({ name: 'state', encoding: 'json' });
    expect(state.get('format')).toBe(storeFormat);
    await state.put('format', storeFormat + 1);
    await root.close();
    expect(() => new Store(options(dir))).toThrow(new RegExp(`written by a newer apm \\(store format ${storeFormat + 1}; this build reads up to ${storeFormat}\\)`));
  });

  it('a rack restarted on an empty spool (new session, seq from 1) is not taken for a duplicate', () => {
    const store = open();
    const [h1, s1] = batch(t0, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: 1 }] } });
    store.ingest(h1, s1);
    // The same rack id, a new session, and the same seq as before: new data, stored.
    const [h2, s2] = batch(t0 + 1, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: 2 }] } });
    expect(store.ingest({ ...h2, session: 10, seq: h1.seq }, s2.map((s) => ({ ...s, bytes: resection(s.bytes, { session: 10, seq: h1.seq }) })))).toMatchObject({ status: 204, duplicates: 0 });
    expect(dump(store, 'x', t0, t0 + 2)).toEqual({ [`a@${t0}`]: 1, [`a@${t0 + 1}`]: 2 });
    return store.close();
  });

  it('a server beyond the registry bound loses only its own points (counted), never the rest of the second', () => {
    const store = open({ serversMax: 2 });
    expect(store.ingest(...batch(t0, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: 1 }] }, b: {} })).status).toBe(204);
    expect(store.ingest(...batch(t0 + 1, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: 2 }] }, c: { points: [{ name: 'x', kind: KindCode.Gauge, value: 3 }] } })).status).toBe(204);
    expect(dump(store, 'x', t0, t0 + 2)).toEqual({ [`a@${t0}`]: 1, [`a@${t0 + 1}`]: 2 });
    // Ingested counts what was stored only (it counted the refused server's point too).
    expect(store.counters).toMatchObject({ servers_refused: 1, points_dropped_servers: 1, points_ingested: 2 });
    return store.close();
  });

  it('refuses a NaN point alone (counted), and a malformed section with 400', () => {
    const store = open();
    const r = store.ingest(...batch(t0, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: NaN }, { name: 'y', kind: KindCode.Gauge, value: 1 }] } }));
    expect(r).toMatchObject({ status: 204 });
    expect(dump(store, 'x', t0, t0 + 1)).toEqual({});
    expect(dump(store, 'y', t0, t0 + 1)).toEqual({ [`a@${t0}`]: 1 });
    expect(store.counters.points_dropped_bad_value).toBe(1);
    expect(store.counters.points_ingested).toBe(1);
    expect(store.ingest({ rack: 'r1', session: 1, seq: 1, second: t0, late: false }, [{ shard: 0, bytes: new Uint8Array(40) }]).status).toBe(400);
    expect(store.rejected).toMatchObject({ bad_checksum: 1 });
    return store.close();
  });

  it('replays acknowledged sections from the WAL after a restart, and not what rows already hold', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    const a = new Store(options(dir));
    a.ingest(...batch(t0, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 5 }], dists: [{ name: 'd', values: [1, 2] }] } }));
    await a.close(); // not written: only the WAL has it
    const b = new Store(options(dir));
    expect(b.counters.wal_replayed).toBeGreaterThan(0);
    expect(dump(b, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 5 });
    flushAll(b);
    await b.close();
    const c = new Store(options(dir));
    expect(c.counters.wal_replayed).toBe(0);
    expect(dump(c, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 5 });
    expect(dump(c, 'd', t0, t0 + 1)).toMatchObject({ [`s1@${t0}`]: { count: 2 } });
    await c.close();
  });

  it('regression: never reuses a WAL seq after a restart with an empty WAL, so late data for a written block survives a crash', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    const a = new Store(options(dir));
    for (let k = 0; k < 20; k++) a.ingest(...batch(t0 + k, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: k }] } }));
    flushAll(a); // the block's row holds WAL seqs up to the 20th; the WAL is emptied
    await a.close();
    const b = new Store(options(dir));
    expect(b.unwrittenWalBytes).toBe(0);
    // Late data for the written block, acknowledged, then a crash before its row is rewritten.
    expect(b.ingest(...batch(t0 + 30, { late: { points: [{ name: 'm', kind: KindCode.Gauge, value: 99 }] } })).status).toBe(204);
    await b.close();
    // Its replay must not be skipped as "held by the row" (the seq restarted at 1 before the fix).
    const c = new Store(options(dir));
    expect(c.counters.wal_replayed).toBe(1);
    expect(dump(c, 'm', t0 + 30, t0 + 31)).toEqual({ [`late@${t0 + 30}`]: 99 });
    flushAll(c);
    expect(Object.keys(dump(c, 'm', t0, t0 + 60))).toHaveLength(21);
    await c.close();
  });

  it('regression: a rack id is durable in the transaction of the first rows keyed by it (it was an asynchronous put that could land later, or never)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    const store = new Store(options(dir));
    store.ingest(...batch(t0, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 1 }] } }, 'rack-a'));
    flushAll(store);
    // Read in the same turn as the slice's commit: nothing asynchronous has run yet.
    const racks = store.env.openDB<number, string>({ name: 'racks', encoding: 'json' });
    expect(racks.get('rack-a')).toBe(1);
    await store.close();
  });

  it('keeps the WAL in an environment of its own and moves a WAL left in the rows\' environment by an older version into it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    const a = new Store(options(dir));
    const sameAgain = batch(t0, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 5 }] } });
    a.ingest(...sameAgain);
    await a.close();
    // As an older version left it: the WAL and the de-duplication marks in the rows' environment.
    const walEnv = openLmdb({ path: join(dir, 'wal'), mapSize: 1 << 30, maxDbs: 4 });
    const root = openLmdb({ path: dir, mapSize: 1 << 30, maxDbs: 16 });
    // (Its WAL's keys led with the shard: core/walkey.ts.)
    for (const [name, older, key] of [['log', 'wal', legacyKey], ['dedup', 'dedup', (k: Buffer) => k]] as const) {
      const from = walEnv.openDB<Buffer, Buffer>({ name, encoding: 'binary', keyEncoding: 'binary' });
      const to = root.openDB<Buffer, Buffer>({ name: older, encoding: 'binary', keyEncoding: 'binary' });
      const entries = [...from.getRange()];
      expect(entries.length).toBeGreaterThan(0);
      root.transactionSync(() => entries.forEach((e) => to.put(key(e.key), e.value)));
      walEnv.transactionSync(() => entries.forEach((e) => from.remove(e.key)));
    }
    await root.close();
    await walEnv.close();
    const b = new Store(options(dir));
    expect(b.counters.wal_replayed).toBe(1);
    expect(dump(b, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 5 });
    // The moved de-duplication marks hold: the same request again is a duplicate.
    expect(b.ingest(...sameAgain)).toMatchObject({ status: 204, duplicates: 1 });
    expect(b.unwrittenWalBytes).toBeGreaterThan(0);
    flushAll(b);
    await b.close();
    const c = new Store(options(dir));
    expect([c.counters.wal_replayed, c.unwrittenWalBytes]).toEqual([0, 0]);
    expect(dump(c, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 5 });
    await c.close();
  });

  it('moves a WAL whose keys led with the shard (before core/walkey.ts) into the log led by the seq, and replays it in arrival order', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    const a = new Store(options(dir, { serversMax: 2 }));
    // Three servers for two places, their sections in two shards: the order of arrival decides who is refused.
    a.ingest(...batch(t0, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 1 }, { name: 'n', kind: KindCode.Gauge, value: 1 }] } }));
    a.ingest(...batch(t0, { s2: { points: [{ name: 'n', kind: KindCode.Gauge, value: 2 }] } }));
    a.ingest(...batch(t0, { s3: { points: [{ name: 'm', kind: KindCode.Gauge, value: 3 }, { name: 'n', kind: KindCode.Gauge, value: 3 }] } }));
    const before = { m: dump(a, 'm', t0, t0 + 1), n: dump(a, 'n', t0, t0 + 1) };
    expect(before).toEqual({ m: { [`s1@${t0}`]: 1 }, n: { [`s1@${t0}`]: 1, [`s2@${t0}`]: 2 } });
    const entries = await a.walEntries();
    expect(entries).toBeGreaterThanOrEqual(4);
    await a.close();
    const walEnv = openLmdb({ path: join(dir, 'wal'), mapSize: 1 << 30, maxDbs: 8 });
    const log = walEnv.openDB<Buffer, Buffer>({ name: 'log', encoding: 'binary', keyEncoding: 'binary' });
    const legacy = walEnv.openDB<Buffer, Buffer>({ name: 'wal', encoding: 'binary', keyEncoding: 'binary' });
    const all = [...log.getRange()];
    walEnv.transactionSync(() => all.forEach((e) => (legacy.put(legacyKey(e.key), e.value), log.remove(e.key))));
    await walEnv.close();
    const b = new Store(options(dir, { serversMax: 2 }));
    expect(b.counters.wal_replayed).toBe(entries);
    expect({ m: dump(b, 'm', t0, t0 + 1), n: dump(b, 'n', t0, t0 + 1) }).toEqual(before);
    expect(await b.walEntries()).toBe(entries);
    flushAll(b);
    expect(await b.walEntries()).toBe(0);
    await b.close();
  });

  it('deletes the WAL from its front: a written block\'s entries stay while an older entry\'s block is unwritten, and go with it or at a clean close; past walDoneBytesMax they go anyway, counted', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    const now = Math.floor(Date.now() / 1000);
    const a = new Store(options(dir, { flushGraceMs: 60_000 }));
    // The current block (not due for a minute) first, then an old one (due at once).
    a.ingest(...batch(now, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 1 }] } }));
    a.ingest(...batch(t0, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 2 }] } }));
    // 3 s on: the old block is quiet (2 s) and written; the current one is not due.
    flushAll(a, Date.now() + 3000);
    expect(a.counters.rows_written).toBe(1);
    expect(a.unwrittenWalBytes).toBeGreaterThan(0);
    expect(dump(a, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 2 });
    expect(await a.walEntries()).toBe(2);
    // A clean close deletes the written block's entry: a restart replays only the unwritten one.
    await a.close();
    const b = new Store(options(dir, { flushGraceMs: 60_000 }));
    expect(b.counters.wal_replayed).toBe(1);
    expect(dump(b, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 2 });
    expect(dump(b, 'm', now, now + 1)).toEqual({ [`s1@${now}`]: 1 });
    flushAll(b, Date.now() + 3000);
    expect(b.counters.rows_written).toBe(0);
    expect(await b.walEntries()).toBe(1);
    flushAll(b);
    expect(await b.walEntries()).toBe(0);
    expect(b.counters.wal_deleted_held).toBe(0);
    await b.close();
    // A backlog bound of a few bytes: the written block's entry goes though the older one waits.
    const c = open({ flushGraceMs: 60_000, walBacklogBytesMax: 64 });
    c.ingest(...batch(now, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 1 }] } }));
    c.ingest(...batch(t0, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 2 }] } }));
    flushAll(c, Date.now() + 3000);
    expect(c.counters.rows_written).toBe(1);
    expect(await c.walEntries()).toBe(1);
    expect(c.counters.wal_deleted_held).toBe(1);
    await c.close();
  });

  it('makes a new WAL with 16 KiB pages (a section: one overflow page, a quarter of the free list), and keeps a 4 KiB WAL of an older directory as it is', async () => {
    const fresh = open();
    expect(fresh.walPageBytes()).toBe(walPageBytes);
    await fresh.close();
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    // As a directory made before: its WAL's environment has 4 KiB pages.
    const old = openLmdb({ path: join(dir, 'wal'), mapSize: 1 << 30, maxDbs: 8, pageSize: 4096 });
    old.openDB({ name: 'wal', encoding: 'binary', keyEncoding: 'binary' });
    await old.close();
    const a = new Store(options(dir));
    expect(a.walPageBytes()).toBe(4096);
    a.ingest(...batch(t0, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 5 }] } }));
    await a.close();
    const b = new Store(options(dir));
    expect(b.counters.wal_replayed).toBe(1);
    expect(dump(b, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 5 });
    await b.close();
  });

  it('a crash between row slices replays only the sections whose rows were not written (distribution counts not doubled)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    // One shard, and sliceMs 0: one row per slice, so the block is half written when the "crash" comes.
    const one = { shardCount: 1, shards: [0] };
    const a = new Store(options(dir, { ...one, sliceMs: 0 }));
    const dists = { s1: { dists: [{ name: 'd1', values: [1, 2] }, { name: 'd2', values: [3] }, { name: 'd3', values: [4] }, { name: 'd4', values: [5] }] } };
    a.ingest(...batch(t0, dists, 'r1', undefined, 1));
    a.ingest(...batch(t0 + 1, dists, 'r1', undefined, 1));
    expect(a.writeSlice(Date.now() + 3600_000)).toBe(true); // more to write
    expect(a.writeSlice(Date.now() + 3600_000)).toBe(true);
    expect(a.counters.rows_written).toBe(2);
    await a.close();
    const b = new Store(options(dir, one));
    expect(b.counters.wal_replayed).toBe(2);
    flushAll(b);
    for (const d of ['d1', 'd2', 'd3', 'd4']) expect(Object.values(dump(b, d, t0, t0 + 2)).map((x) => (x as { count: number }).count)).toEqual(d === 'd1' ? [2, 2] : [1, 1]);
    await b.close();
  });

  it('deletes rows past the retention', async () => {
    const store = open({ retentionSeconds: 120 });
    const now = Math.floor(Date.now() / 1000);
    // Stored 10 minutes ago, when it was inside the retention.
    expect(store.ingest(...batch(now - 600, { a: { points: [{ name: 'old', kind: KindCode.Gauge, value: 1 }] } }), (now - 590) * 1000).status).toBe(204);
    store.ingest(...batch(now, { a: { points: [{ name: 'old', kind: KindCode.Gauge, value: 2 }] } }));
    flushAll(store);
    expect(await store.retentionSweep(Date.now())).toBe(1);
    expect(dump(store, 'old', now - 700, now + 1)).toEqual({ [`a@${now}`]: 2 });
    // The old block's row group went with it; the new block's stays.
    expect(store.counters.retention_groups_deleted).toBe(1);
    await store.close();
  });

  it('regression: refuses a second the retention has passed (400 past_retention, counted) instead of acknowledging what its sweep deletes', async () => {
    const store = open({ retentionSeconds: 120 });
    const now = Math.floor(Date.now() / 1000);
    const nowMs = now * 1000;
    const oldest = now - 120 - ((now - 120) % 60); // the oldest block the sweep keeps
    const tooOld = store.ingest(...batch(oldest - 1, { a: { points: [{ name: 'ret', kind: KindCode.Gauge, value: 1 }] } }), nowMs);
    expect(tooOld).toMatchObject({ status: 400, reason: 'past_retention' });
    expect(store.rejected.past_retention).toBe(1);
    // The oldest kept block and everything after it are stored; the refused second is not.
    expect(store.ingest(...batch(oldest, { a: { points: [{ name: 'ret', kind: KindCode.Gauge, value: 2 }] } }), nowMs).status).toBe(204);
    expect(store.ingest(...batch(now, { a: { points: [{ name: 'ret', kind: KindCode.Gauge, value: 3 }] } }), nowMs).status).toBe(204);
    flushAll(store);
    expect(await store.retentionSweep(nowMs)).toBe(0);
    expect(dump(store, 'ret', oldest - 60, now + 1)).toEqual({ [`a@${oldest}`]: 2, [`a@${now}`]: 3 });
    await store.close();
  });

  it('regression: a section that does not decode is refused alone, counted; the request\'s other sections are stored (before: 400 for the request, and the rack dropped every shard\'s good sections with it)', () => {
    const store = open();
    const now = Math.floor(Date.now() / 1000);
    const points = Array.from({ length: 40 }, (_, i) => ({ name: `sec.${i}`, kind: KindCode.Gauge as const, value: i }));
    const [h, sections] = batch(now, { a: { points } });
    expect(sections.length).toBeGreaterThan(1);
    // One section's bytes cut short: its frame no longer checks.
    sections[0] = { shard: sections[0]!.shard, bytes: sections[0]!.bytes.subarray(0, 24) };
    const r = store.ingest(h, sections, now * 1000);
    expect(r.status).toBe(204);
    expect(store.counters.sections_refused).toBe(1);
    expect((r as { points: number }).points).toBeGreaterThan(0);
    expect((r as { points: number }).points).toBeLessThan(40);
    // Every section bad: refused as before.
    const [h2, bad] = batch(now, { a: { points } });
    expect(store.ingest(h2, bad.map((x) => ({ shard: x.shard, bytes: x.bytes.subarray(0, 24) })), now * 1000).status).toBe(400);
    void store.close();
  });

  it('regression: refuses a second more than an hour ahead of its clock (400 future, counted); before, it was acknowledged and held in the head and the WAL until that date', async () => {
    const store = open();
    const now = Math.floor(Date.now() / 1000);
    const far = store.ingest(...batch(now + 10 * 365 * 86_400, { a: { points: [{ name: 'fut', kind: KindCode.Gauge, value: 1 }] } }), now * 1000);
    expect(far).toMatchObject({ status: 400, reason: 'future' });
    expect(store.rejected.future).toBe(1);
    expect(store.ingest(...batch(now + coreLimits.futureSecondsMax, { a: { points: [{ name: 'fut', kind: KindCode.Gauge, value: 2 }] } }), now * 1000).status).toBe(204);
    await store.close();
  });

  it('packs the rows one slice writes for a (shard, block) into row groups that fill LMDB pages, reads them back exactly, and merges late data into a new group', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    // One shard, one slice: every row of the block in one run of chunks.
    const one = { shardCount: 1, shards: [0], sliceMs: 60_000 };
    const store = new Store(options(dir, one));
    const servers: Record<string, { points: PointInput[] }> = {};
    const metrics = Array.from({ length: 50 }, (_, m) => `g.${m}`);
    for (let t = t0; t < t0 + 60; t++) {
      for (let v = 0; v < 40; v++) servers[`s${v}`] = { points: metrics.map((name, m) => ({ name, kind: KindCode.Gauge, value: Math.round(1000 * Math.sin(t + v * 7 + m)) / 100 })) };
      store.ingest(...batch(t, servers, 'r1', undefined, 1));
    }
    flushAll(store);
    const bytes = store.counters.row_bytes_written;
    expect(store.counters.rows_written).toBe(50);
    // In use: the groups' pages plus small pointers, within 10% of the row bytes (alone, each
    // ~2 KB row took an overflow page of 4 KiB).
    expect(store.rowsUsedBytes()).toBeLessThan(bytes * 1.1 + 8 * 4096);
    // Chunks of whole pages (issue 14): the slice's run of rows (~100 KB) wastes less than half a
    // page of overflow pages beyond their headers (groups cut at whole rows, up to 64 KiB, wasted
    // the tail of each group's last page: 4.6 KB here, 0.4 KB now).
    const groups = (store as unknown as { groups: { getStats(): { overflowPages: number; pageSize: number; entryCount: number } } }).groups.getStats();
    expect(store.counters.row_slices).toBe(1);
    expect(groups.overflowPages * groups.pageSize - 24 * groups.entryCount - (bytes - 6 * 50)).toBeLessThan(groups.pageSize / 2);
    const want = (m: number, v: number, t: number) => Math.round(1000 * Math.sin(t + v * 7 + m)) / 100;
    for (const m of [0, 17, 49]) {
      const got = dump(store, `g.${m}`, t0, t0 + 60);
      expect(Object.keys(got)).toHaveLength(40 * 60);
      expect(got[`s3@${t0 + 5}`]).toBe(want(m, 3, t0 + 5));
    }
    // Late data for g.17: its row is rebuilt from the group's bytes and written in a group of its own.
    store.ingest(...batch(t0 + 10, { late: { points: [{ name: 'g.17', kind: KindCode.Gauge, value: 42 }] } }, 'r1', undefined, 1));
    flushAll(store);
    expect(store.counters.rows_merged).toBe(1);
    expect(store.counters.group_bytes_orphaned).toBeGreaterThan(0);
    const g17 = dump(store, 'g.17', t0, t0 + 60);
    expect([g17[`late@${t0 + 10}`], g17[`s39@${t0 + 59}`], Object.keys(g17).length]).toEqual([42, want(17, 39, t0 + 59), 40 * 60 + 1]);
    await store.close();
    // After a restart too.
    const again = new Store(options(dir, one));
    expect(dump(again, 'g.49', t0, t0 + 60)[`s0@${t0}`]).toBe(want(49, 0, t0));
    await again.close();
  });

  it('answers 503 with the cause while the disk is really full (a tmpfs), keeps what it acknowledged, and recovers without a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-full-'));
    // Root, as in CI: a file system that fills up. No free-space reserve, so LMDB's own write
    // fails; a filler file takes the room and is deleted to give it back.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir]);
    try {
      const store = new Store(options(join(dir, 'core')));
      const points = (v: number) => ({ 'web-1': { points: Array.from({ length: 200 }, (_, i) => ({ name: `m.${i}`, kind: KindCode.Gauge as const, value: v + i })) } });
      expect(store.ingest(...batch(t0, points(1))).status).toBe(204);
      writeFileSync(join(dir, 'filler'), new Uint8Array(0));
      try {
        for (;;) appendFileSync(join(dir, 'filler'), new Uint8Array(64 * 1024));
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      let refused = 0;
      let retry: ReturnType<typeof batch> | null = null;
      for (let i = 1; i < 40 && refused === 0; i++) {
        const b = batch(t0 + i, points(i + 1));
        const r = store.ingest(...b);
        if (r.status === 503) {
          refused = i;
          retry = b;
          expect(r.reason).toBe('storage_full');
          expect((r as { error: string }).error).toMatch(/^storage write failed \(.+\); free disk space/);
        } else expect(r.status).toBe(204);
      }
      expect(refused).toBeGreaterThan(0);
      // Regression: the registry's periodic save into the full disk is counted, not thrown (it
      // threw from the worker's timer: the worker died every 10 s).
      const errors = store.counters.flush_errors;
      expect(() => store.saveRegistry()).not.toThrow();
      expect(store.counters.flush_errors).toBe(errors + 1);
      rmSync(join(dir, 'filler'));
      // The rack retries the refused request: now stored, and every acknowledged second is there.
      expect(store.ingest(...retry!).status).toBe(204);
      flushAll(store, Date.now() + 1e9);
      const stored = dump(store, 'm.7', t0, t0 + 60);
      expect(Object.keys(stored).length).toBe(refused + 1);
      expect(stored[`web-1@${t0 + refused}`]).toBe(refused + 1 + 7);
      await store.close();
    } finally {
      execFileSync('umount', ['-l', dir]); // lazy: a failed assertion above may leave the store open
    }
  });

  it('keeps an import\'s de-duplication apart from its rack\'s: an import into r1 does not reopen r1\'s window (issue 15)', () => {
    const store = open();
    const point = (value: number) => ({ a: { points: [{ name: 'x', kind: KindCode.Gauge as const, value }] } });
    const [h1, s1] = batch(t0, point(1));
    expect(store.ingest(h1, s1)).toMatchObject({ status: 204, duplicates: 0 });
    // An import of history into the same rack id, its own session, seq 1.
    const [h2, s2] = batch(t0 - 600, point(7));
    const imp = { session: 77, seq: 1, origin: originImport };
    expect(store.ingest({ ...h2, ...imp }, s2.map((s) => ({ ...s, bytes: resection(s.bytes, imp) })))).toMatchObject({ status: 204, duplicates: 0 });
    // The live rack retries its request: still known as stored (without origins the import's session had replaced r1's).
    expect(store.ingest(h1, s1)).toMatchObject({ status: 204, duplicates: 1 });
    // An import section under a rack header (or the reverse) is refused, not mixed up.
    expect(store.ingest(h2, s2.map((s) => ({ ...s, bytes: resection(s.bytes, imp) }))).status).toBe(400);
    expect(dump(store, 'x', t0 - 600, t0 + 1)).toEqual({ [`a@${t0 - 600}`]: 7, [`a@${t0}`]: 1 });
    return store.close();
  });

  it('refuses a new rack beyond racksMax with 503 racks_full, counted, before storing anything; known racks go on (regression: it threw past 16,384)', () => {
    const store = open({ racksMax: 2 });
    const point = { a: { points: [{ name: 'x', kind: KindCode.Gauge as const, value: 1 }] } };
    expect(store.ingest(...batch(t0, point, 'r1')).status).toBe(204);
    expect(store.ingest(...batch(t0, point, 'r2')).status).toBe(204);
    expect(store.ingest(...batch(t0, point, 'r3'))).toMatchObject({ status: 503, reason: 'racks_full' });
    expect(store.rejected).toMatchObject({ racks_full: 1 });
    expect(store.ingest(...batch(t0 + 1, point, 'r1')).status).toBe(204);
    // Two new racks in one group commit cannot both pass the bound.
    const many = open({ racksMax: 1 });
    const res = many.ingestMany([batch(t0, point, 'p'), batch(t0, point, 'q')].map(([h, sections]) => ({ h, sections })));
    expect(res.map((r) => r.status)).toEqual([204, 503]);
    expect(() => open({ racksMax: 1 << 14 })).toThrow(/racksMax/);
    return Promise.all([store.close(), many.close()]);
  });

  it('bounds how far rows may lag the ingest: past walBacklogBytesMax of due WAL (beyond each shard\'s newest due block) ingest is refused with 503 rows_behind until rows are written', () => {
    const point = { a: { points: [{ name: 'x', kind: KindCode.Gauge as const, value: 1 }] } };
    const probe = open();
    const [h, sec] = batch(t0, point);
    probe.ingest(h, sec);
    const perSecond = probe.unwrittenWalBytes;
    // Room for the backlog of about three seconds' WAL; blocks t0, t0+60, t0+120 are all due (an old backfill).
    const store = open({ walBacklogBytesMax: perSecond * 3 + 1 });
    for (let b = 0; b < 4; b++) expect(store.ingest(...batch(t0 + 60 * b, point)).status).toBe(204);
    expect(store.walBacklogBytes(Date.now())).toBe(3 * perSecond);
    expect(store.rowsBehind(Date.now())).toBe(true);
    expect(store.ingest(...batch(t0 + 240, point)).status).toBe(204);
    // Four due blocks beyond the newest: refused, counted, nothing stored.
    expect(store.ingest(...batch(t0 + 300, point))).toMatchObject({ status: 503, reason: 'rows_behind' });
    expect(store.counters.rows_behind).toBe(1);
    flushAll(store);
    expect([store.unwrittenWalBytes, store.walBacklogBytes(Date.now())]).toEqual([0, 0]);
    expect(store.ingest(...batch(t0 + 300, point)).status).toBe(204);
    expect(store.counters.row_bytes_written).toBeGreaterThan(0);
    return Promise.all([probe.close(), store.close()]);
  });
});

/** A section re-encoded with another session and seq (a rack that started over). */
function resection(bytes: Uint8Array, h: { session: number; seq: number; origin?: number }): Uint8Array {
  const r = decodeFrame(bytes, batchBytesMax);
  if (!r.ok || r.msg.type !== 'shardSection') throw new Error('not a section');
  return encodeShardSection(new Encoder(), { ...r.msg, ...h }, r.msg);
}

describe('regression: whose share of the per-server metric limit a new metric takes', () => {
  it('the first of its servers with room, not the first listed: one server at its limit no longer refuses a metric for the whole rack', async () => {
    const s = open({ metricsPerServerMax: 3 });
    // Server a (listed first) introduces 3 metrics: its share is spent.
    s.ingest(...batch(t0, { a: { points: [0, 1, 2].map((i) => ({ name: `junk${i}`, kind: KindCode.Gauge, value: 1 })) } }));
    for (let k = 1; k <= 3; k++) s.ingest(...batch(t0 + k, Object.fromEntries(['a', 'b', 'c', 'd'].map((n) => [n, { points: [{ name: 'http.requests', kind: KindCode.Counter, value: 5 }] }]))));
    expect(s.counters.points_dropped_overflow).toBe(0);
    expect(s.counters.points_ingested).toBe(3 + 12);
    expect(s.registry.introducedCount(s.registry.serverByName('b')!.id)).toBe(1);
    await s.close();
  });

  it('regression: a request whose packed sections decode to more points than the largest request held unpacked is refused whole, counted (a value every server shares takes no byte: 105 KB made 67 MB of columns a section)', async () => {
    const s = open({ requestPointsMax: 50 });
    const servers = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, k) => [`s${k}`, { points: [{ name: 'flat', kind: KindCode.Gauge as const, value: 7 }, { name: 'flat2', kind: KindCode.Gauge as const, value: 7 }] }]));
    expect(s.ingest(...batch(t0, servers(20))).status).toBe(204);
    expect(s.ingest(...batch(t0 + 1, servers(30)))).toMatchObject({ status: 400, reason: 'too_many_points' });
    expect(s.rejected.too_many_points).toBe(1);
    expect(s.counters.points_ingested).toBe(40);
    await s.close();
  });

  it('servers refused by serversMax introduce nothing: their metrics do not fill the registry (before: the refused server\'s names took every slot)', async () => {
    const s = open({ serversMax: 1, metricsPerServerMax: 3, metricsMax: 50 });
    s.ingest(...batch(t0, { a: { points: [{ name: 'ok', kind: KindCode.Gauge, value: 1 }] } }));
    for (let k = 0; k < 5; k++) s.ingest(...batch(t0 + 1 + k, { b: { points: Array.from({ length: 10 }, (_, i) => ({ name: `junk${k}.${i}`, kind: KindCode.Gauge, value: 1 })) } }));
    expect(s.registry.allMetrics().length).toBe(1);
    expect(s.counters.points_dropped_servers).toBe(50);
    s.ingest(...batch(t0 + 10, { a: { points: [{ name: 'legit', kind: KindCode.Gauge, value: 1 }] } }));
    expect(s.counters.points_dropped_overflow).toBe(0);
    expect(s.counters.points_ingested).toBe(2);
    await s.close();
  });
});

describe('regression: a WAL replay counts no refusal again', () => {
  it('servers refused and their points are counted when they come, not again at the replay (a restarted worker\'s counts continue the dead one\'s)', async () => {
    const s = open({ serversMax: 1 });
    s.ingest(...batch(t0, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: 1 }] }, b: { points: [{ name: 'x', kind: KindCode.Gauge, value: 2 }] } }));
    expect([s.counters.servers_refused, s.counters.points_dropped_servers]).toEqual([1, 1]);
    s.saveRegistry();
    await s.close();
    const again = new Store(options(dirs[dirs.length - 1]!, { serversMax: 1 }));
    expect(again.counters.wal_replayed).toBeGreaterThan(0);
    expect([again.counters.servers_refused, again.counters.points_dropped_servers]).toEqual([0, 0]);
    await again.close();
  });
});

describe('regression: a WAL replay in the order sections came', () => {
  it('the registry\'s limits decide as they did before the restart (before: shard by shard, a server refused at ingest took the place of one admitted, whose acknowledged points were dropped)', async () => {
    const h = new Uint32Array(2);
    const shardOfName = (n: string) => (hashName(n, h, 0), h[0]! & (S - 1));
    let inLast = '';
    let inFirst = '';
    for (let i = 0; inLast === '' || inFirst === ''; i++) {
      const n = `met${i}`;
      if (shardOfName(n) === S - 1 && inLast === '') inLast = n;
      if (shardOfName(n) === 0 && inFirst === '') inFirst = n;
    }
    const count = (st: Store, n: string) => {
      hashName(n, h, 0);
      let k = 0;
      st.read(h[0]!, h[1]!, t0, t0 + 60, (row) => void (k += row.pointVals.length));
      return k;
    };
    const a = open({ serversMax: 1 });
    // c (in the last shard) comes first and is admitted; d (in shard 0) is refused.
    expect(a.ingest(...batch(t0, { c: { points: [{ name: inLast, kind: KindCode.Gauge, value: 1 }] } })).status).toBe(204);
    expect(a.ingest(...batch(t0 + 1, { d: { points: [{ name: inFirst, kind: KindCode.Gauge, value: 2 }] } })).status).toBe(204);
    expect([count(a, inLast), count(a, inFirst)]).toEqual([1, 0]);
    // Stopped before the registry was saved (with rows, or every 10 s): the replay decides again.
    await a.close();
    const b = new Store(options(dirs[dirs.length - 1]!, { serversMax: 1 }));
    expect([count(b, inLast), count(b, inFirst)]).toEqual([1, 0]);
    expect(b.registry.allServers().map((x) => x.name)).toEqual(['c']);
    await b.close();
  });
});

describe('regression: racks beyond what the de-duplication table holds', () => {
  it('are refused racks_full, counted, instead of evicting active racks\' windows (their retries were stored twice)', async () => {
    const store = open({ shardCount: 64, shards: Array.from({ length: 64 }, (_, k) => k), racksMax: 10_000 });
    expect(store.racksMax).toBe(2048);
    const reqs = Array.from({ length: 2049 }, (_, r) => {
      const [h, sections] = batch(t0, { [`s${r}`]: { points: [{ name: 'rk.x', kind: KindCode.Gauge, value: 1 }] } }, `r${r}`, undefined, 64);
      return { h, sections };
    });
    const results = store.ingestMany(reqs);
    expect(results.filter((x) => x.status === 204)).toHaveLength(2048);
    expect(results[2048]).toMatchObject({ status: 503, reason: 'racks_full' });
    expect(store.dedup.counters.evicted).toBe(0);
    await store.close();
  });
});

describe('regression: the head\'s memory bound at a block\'s first second', () => {
  it('counts the columns a rack\'s first section of a block sizes for the whole block: refused head_full before they are made (before: twice the bytes, and a 4 MiB bound answered 204 up to 11 MB)', async () => {
    const max = 4 << 20;
    const s = open({ headBytesMax: max });
    const reqs = Array.from({ length: 8 }, (_, r) => {
      const [h, sections] = batch(t0, { [`s${r}`]: { points: Array.from({ length: 2000 }, (_, i) => ({ name: `m${i}`, kind: KindCode.Gauge, value: i })) } }, `rack${r}`);
      return { h, sections };
    });
    const res = s.ingestMany(reqs);
    expect(res.map((x) => [x.status, (x as { reason?: string }).reason])).toEqual(reqs.map(() => [503, "head_full"]));
    expect(s.heldBytes).toBeLessThanOrEqual(max);
    // One rack at a time fits until the bound; the next second of a rack already in the block costs only its bytes.
    const first = s.ingestMany([reqs[0]!]);
    expect(first[0]!.status).toBe(204);
    expect(s.heldBytes).toBeLessThanOrEqual(max);
    const [h1, sec1] = batch(t0 + 1, { s0: { points: Array.from({ length: 2000 }, (_, i) => ({ name: `m${i}`, kind: KindCode.Gauge, value: i })) } }, 'rack0');
    expect(s.ingest(h1, sec1).status).toBe(204);
    expect(s.heldBytes).toBeLessThanOrEqual(max);
    await s.close();
  });

  it('counts the columns kept for reuse, which give way to live heads (before: kept ones came on top of the bound, up to 1.5 × it)', async () => {
    const max = 64 << 20;
    const s = open({ headBytesMax: max });
    const columns = (s as unknown as { columns: { keptBytes: number } }).columns;
    const rack = (second: number, servers: number, name: string): [RequestHeader, SectionIn[]] => {
      const sv: Record<string, { points: PointInput[] }> = {};
      for (let k = 0; k < servers; k++) sv[`${name}-s${k}`] = { points: Array.from({ length: 100 }, (_, i): PointInput => ({ name: `c${i}`, kind: KindCode.Gauge, value: k })) };
      return batch(second, sv, name);
    };
    // A block of 500-server columns, written: its columns are kept for reuse.
    expect(s.ingest(...rack(t0, 500, 'ka')).status).toBe(204);
    flushAll(s);
    expect(columns.keptBytes).toBeGreaterThan(0);
    // The next block's racks are of another size: they fill the bound, the kept columns giving way.
    let taken = 0;
    for (let r = 0; r < 20; r++) {
      const res = s.ingest(...rack(t0 + 60, 300, `kb${r}`));
      if (res.status !== 204) break;
      taken++;
      expect(s.heldBytes + columns.keptBytes).toBeLessThanOrEqual(max);
    }
    expect(taken).toBeGreaterThan(2);
    expect(s.heldBytes + columns.keptBytes).toBeLessThanOrEqual(max);
    await s.close();
  });

  it('holds when a later section of a rack is wider than its first (before: a first second of one server, then one of a thousand, grew the columns by doubling uncharged: 6.5 × the bound)', async () => {
    const max = 16 << 20;
    const s = open({ headBytesMax: max });
    const points = (k: number): PointInput[] => Array.from({ length: 200 }, (_, i) => ({ name: `w${i}`, kind: KindCode.Gauge, value: k }));
    expect(s.ingest(...batch(t0, { s0: { points: points(1) } }, 'wide')).status).toBe(204);
    const many: Record<string, { points: PointInput[] }> = {};
    for (let k = 0; k < 1000; k++) many[`w-${k}`] = { points: points(2) };
    const r = s.ingest(...batch(t0 + 1, many, 'wide'));
    expect(r).toMatchObject({ status: 503, reason: 'head_full' });
    expect(s.heldBytes).toBeLessThanOrEqual(max);
    // A section no larger than one the rack sent already costs its bytes only.
    const narrow: Record<string, { points: PointInput[] }> = { s0: { points: points(3) } };
    expect(s.ingest(...batch(t0 + 2, narrow, 'wide')).status).toBe(204);
    await s.close();
  });

  it('holds when a later section of a rack brings metrics new in the block, or widens metrics that were narrow (before: charged its bytes only: 6.7 × the bound)', async () => {
    const max = 16 << 20;
    const names = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);
    const servers = (n: number, metrics: string[]) => Object.fromEntries(Array.from({ length: n }, (_, k) => [`n-${k}`, { points: metrics.map((name): PointInput => ({ name, kind: KindCode.Gauge, value: k })) }]));
    // New metrics in the second second.
    const a = open({ headBytesMax: max });
    expect(a.ingest(...batch(t0, servers(500, names('b', 20)), 'grow')).status).toBe(204);
    expect(a.ingest(...batch(t0 + 1, servers(500, [...names('b', 20), ...names('m', 400)]), 'grow'))).toMatchObject({ status: 503, reason: 'head_full' });
    expect(a.heldBytes).toBeLessThanOrEqual(max);
    await a.close();
    // Metrics of one server in the first second, of 500 in the next.
    const b = open({ headBytesMax: max });
    const first = servers(500, names('b', 20));
    first['n-0'] = { points: [...names('b', 20), ...names('m', 400)].map((name): PointInput => ({ name, kind: KindCode.Gauge, value: 0 })) };
    expect(b.ingest(...batch(t0, first, 'grow')).status).toBe(204);
    expect(b.ingest(...batch(t0 + 1, servers(500, [...names('b', 20), ...names('m', 400)]), 'grow'))).toMatchObject({ status: 503, reason: 'head_full' });
    expect(b.heldBytes).toBeLessThanOrEqual(max);
    await b.close();
  });
});

describe('regression: a rack whose servers were all refused', () => {
  it('adds its rollup to no query (before: a row of no servers counted as "every server selected", and its rollup moved another rack\'s server\'s p50 from 5 to 8.9)', async () => {
    const s = open({ serversMax: 2 });
    const withRollup = (second: number, rack: string, servers: Record<string, number[]>): [RequestHeader, SectionIn[]] => {
      const all = Object.values(servers).flat();
      return batch(second, Object.fromEntries(Object.entries(servers).map(([k, values]) => [k, { dists: [{ name: 'rr.d', values }] }])), rack, buildColumns([], [{ name: 'rr.d', values: all }], ['rr.d']));
    };
    s.ingest(...withRollup(t0 + 1, 'r1', { a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], b: [2, 3, 4] }));
    s.ingest(...withRollup(t0 + 1, 'r2', { c: Array(40).fill(9) as number[], e: [9] }));
    expect(s.counters.servers_refused).toBe(2);
    const q = parseQuery('FROM a SELECT rr.d WINDOW 60s COMPUTE count, p50');
    const p50 = () => evaluate(s, q, t0, t0 + 60)[0]!.values['percentile(50)']!;
    expect(p50() / 5).toBeCloseTo(1, 1);
    flushAll(s);
    expect(p50() / 5).toBeCloseTo(1, 1);
    await s.close();
  });
});

/** A stored row's bytes (through its row group's chunks), as the store reads them. */
function storedRow(io: { rows: { get(k: Buffer): Buffer | undefined }; groups: { get(k: Buffer): Buffer | undefined } }, key: Buffer): Uint8Array {
  return storedRowBytes(key, io.rows.get(key)!, (k: Uint8Array, id: number) => io.groups.get(groupKey(k, id)));
}

describe('regression: a shard snapshot holding a row its source cannot read', () => {
  it('restores the rest of the shard, that row skipped and counted (before: the whole restore failed on it, every retry the same)', async () => {
    const a = open();
    const b = open();
    for (let s = 0; s < 60; s++) a.ingest(...batch(t0 + s, { x: { points: [{ name: 'cr.g', kind: KindCode.Gauge, value: s * 1.5 }] }, y: { points: [{ name: 'cr.g', kind: KindCode.Gauge, value: s }] } }, 'r1'));
    flushAll(a);
    const h = new Uint32Array(2);
    hashName('cr.g', h, 0);
    const shard = h[0]! & (S - 1);
    const io = a as unknown as { rows: { get(k: Buffer): Buffer | undefined; putSync(k: Buffer, v: Buffer): void }; groups: { get(k: Buffer): Buffer | undefined } };
    // Its rack id is 1 or 0: the one with a row.
    const key = [0, 1, 2].map((r) => rowKey(shard, t0 - (t0 % 60), h[0]!, h[1]!, r)).find((k) => io.rows.get(k) !== undefined)!;
    const value = io.rows.get(key)!;
    const v5 = Buffer.from(storedRow(io, key));
    // As a version 4 row (no CRC: a data directory of an older build holds such rows), a byte
    // flipped so that its server ids still decode and its values do not. (A version 5 row with a
    // byte flipped is refused whole, its server ids too: the snapshot skips it at its source.)
    const bytes = Buffer.concat([Buffer.from([rowV4Marker]), v5.subarray(1, v5.length - 4)]);
    let bad: Buffer | null = null;
    for (let p = bytes.length - 1; p > 3 && bad === null; p--) {
      const c = Buffer.from(bytes);
      c[p]! ^= 0xff;
      try {
        rowServerIds(c);
      } catch {
        continue;
      }
      try {
        decodeRow(c);
      } catch (e) {
        if (e instanceof RowError) bad = c;
      }
    }
    expect(bad).not.toBeNull();
    io.rows.putSync(key, Buffer.concat([value.subarray(0, 6), bad!]));
    await b.restoreShard(shard, [...a.snapshotShard(shard)]);
    expect(b.counters.rows_corrupt).toBe(1);
    // The copy has nothing of that row but what the snapshot's WAL entries still hold (never more than was ingested).
    const [w] = evaluate(b, parseQuery('FROM * SELECT cr.g WINDOW 60s COMPUTE count'), t0, t0 + 60);
    expect(w === undefined || w.count === 120).toBe(true);
    await a.close();
    await b.close();
  });
});

describe('a stored row whose bytes changed on the disk (version 5: a CRC-32)', () => {
  it('is skipped by reads, never read as other values, and counted once however often it is read (before: most such rows decoded; a corrupt row counted at every read)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    let store = new Store(options(dir));
    const base = Math.floor(Date.now() / 60_000) * 60 - 7200;
    for (let s = 0; s < 60; s++) store.ingest(...batch(base + s, { x: { points: [{ name: 'crc.g', kind: KindCode.Gauge, value: 1000 + s }] }, y: { points: [{ name: 'crc.g', kind: KindCode.Gauge, value: 2000 + s }] } }, 'r1'));
    for (let s = 0; s < 60; s++) store.ingest(...batch(base + s, { z: { points: [{ name: 'crc.g', kind: KindCode.Gauge, value: 3000 + s }] } }, 'r2'));
    flushAll(store);
    const h = new Uint32Array(2);
    hashName('crc.g', h, 0);
    const shard = h[0]! & (S - 1);
    const io = store as unknown as { rows: { get(k: Buffer): Buffer | undefined; putSync(k: Buffer, v: Buffer): void }; groups: { get(k: Buffer): Buffer | undefined } };
    const keys = [0, 1, 2, 3].map((r) => rowKey(shard, base, h[0]!, h[1]!, r)).filter((k) => io.rows.get(k) !== undefined);
    expect(keys).toHaveLength(2);
    const sum = () => {
      const [w] = evaluate(store, parseQuery('FROM * SELECT crc.g WINDOW 60s COMPUTE count, min, max'), base, base + 60);
      return w?.values;
    };
    expect(sum()).toEqual({ count: 180, min: 1000, max: 3059 });
    // Rack r1's row (servers x and y): one bit of one value changed on the disk.
    const key = keys.find((k) => {
      const ids = rowServerIds(storedRow(io, k));
      return ids.length === 2;
    })!;
    const value = io.rows.get(key)!;
    const bytes = Buffer.from(storedRow(io, key));
    // A bit of the row's values changed such that, without the CRC (as version 4), the row would
    // still decode, to other values.
    let bad: Buffer | null = null;
    for (let at = bytes.length - 5; at > 0 && bad === null; at--) {
      const c = Buffer.from(bytes);
      c[at]! ^= 0x10;
      try {
        const v4 = decodeRow(Buffer.concat([Buffer.from([rowV4Marker]), c.subarray(1, c.length - 4)]));
        if (!v4.pointVals.every((v, i) => v === [...Array.from({ length: 60 }, (_, s) => 1000 + s), ...Array.from({ length: 60 }, (_, s) => 2000 + s)][i])) bad = c;
      } catch {
        continue;
      }
    }
    expect(bad).not.toBeNull();
    expect(() => decodeRow(bad!)).toThrow(/CRC-32 does not match/);
    io.rows.putSync(key, Buffer.concat([value.subarray(0, 6), bad!]));
    // Opened again: nothing of the row kept in memory from the reads before.
    await store.close();
    store = new Store(options(dir));
    const errors = vi.spyOn(console, 'error').mockImplementation(() => {});
    try {
      for (let k = 0; k < 3; k++) expect(sum(), `read ${k + 1}`).toEqual({ count: 60, min: 3000, max: 3059 });
      expect(store.counters.rows_corrupt).toBe(1);
      expect(errors.mock.calls.filter((c) => String(c[0]).includes('does not decode'))).toHaveLength(1);
      // Shard snapshots (a copy, its retries) leave it out and do not count it again (review: each counted it once more).
      const copy = open();
      for (let k = 0; k < 2; k++) await copy.restoreShard(shard, [...store.snapshotShard(shard)]);
      expect(store.counters.rows_corrupt).toBe(1);
      expect(copy.counters.rows_corrupt).toBe(0);
      const [w] = evaluate(copy, parseQuery('FROM * SELECT crc.g WINDOW 60s COMPUTE count, min, max'), base, base + 60);
      expect(w?.values).toEqual({ count: 60, min: 3000, max: 3059 });
      await copy.close();
    } finally {
      errors.mockRestore();
    }
    await store.close();
  });
});

describe('regression: late data merged into a written row that spans chunks', () => {
  it('keeps every summary the row held (before: the merge read the row through a Buffer view the next chunk overwrote, took it for corrupt and wrote the head alone over it)', () => {
    const store = open();
    const base = Math.floor(Date.now() / 60_000) * 60 - 7200;
    const h = new Uint32Array(2);
    hashName('merged.d', h, 0);
    const count = () => {
      let n = 0;
      store.read(h[0]!, h[1]!, base, base + 60, (row: DecodedRow) => {
        for (let i = 0; i < row.distStart[row.serverIds.length]!; i++) n += row.dist.count[i]!;
      });
      return n;
    };
    // One second at a time, each written at once: from the second on, each write merges into the
    // stored row (~4 KB for 40 servers, alone in its run: it crosses a chunk boundary).
    for (let k = 1; k <= 4; k++) {
      const servers: Record<string, { dists: DistInput[] }> = {};
      for (let s = 0; s < 40; s++) servers[`m${s}`] = { dists: [{ name: 'merged.d', values: [k, k + 0.5] }] };
      expect(store.ingest(...batch(base + k, servers)).status).toBe(204);
      flushAll(store);
      expect(count(), `after second ${k}`).toBe(80 * k);
    }
    expect(store.counters.rows_merged).toBe(3);
    expect(store.counters.rows_corrupt).toBe(0);
    void store.close();
  });
});
