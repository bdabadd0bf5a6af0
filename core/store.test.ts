import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Encoder, KindCode, type SeriesColumns } from '../schema/codec.js';
import { hashName } from '../schema/names.js';
import { SketchAccumulator } from '../schema/sketch.js';
import { buildColumns, type DistInput, type PointInput } from '../schema/testdata.js';
import type { DecodedRow } from './block.js';
import { Store, type StoreOptions } from './store.js';

const t0 = 1_790_000_040; // a multiple of 60 minus 0: block starts at 1_790_000_040 - 1_790_000_040 % 60
const enc = new Encoder();
const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

function open(over: Partial<StoreOptions> = {}): Store {
  const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
  dirs.push(dir);
  return new Store({ dir, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 1 << 30, flushGraceMs: 0, headBytesMax: 1 << 30, metricsMax: 10_000, diskBytesMax: 0, diskReserveBytes: 0, ...over });
}

let seq = 1;
function batch(second: number, servers: Record<string, { points?: PointInput[]; dists?: DistInput[] }>, rack = 'r1', rollup?: SeriesColumns): Uint8Array {
  return enc.rackBatch({
    rack,
    batchSeq: seq++,
    second,
    late: false,
    servers: Object.entries(servers).map(([server, c]) => ({ server, blocks: [buildColumns(c.points ?? [], c.dists ?? [])] })),
    rollup: rollup ?? buildColumns([], [], []),
  });
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
  it('round-trips gauges, counters, negative values and distributions through the head and through rows', async () => {
    const store = open();
    expect((await store.ingest(batch(t0, { a: { points: [{ name: 'cpu', kind: KindCode.Gauge, value: 12.25 }, { name: 'req', kind: KindCode.Counter, value: 7 }] }, b: { points: [{ name: 'cpu', kind: KindCode.Gauge, value: -3.5 }] } }))).status).toBe(204);
    expect((await store.ingest(batch(t0 + 1, { a: { points: [{ name: 'cpu', kind: KindCode.Gauge, value: 1e-7 }], dists: [{ name: 'lat', values: [5, -1, 0, 20] }] } }))).status).toBe(204);
    // A gap (t0 + 2 missing) and a server appearing later.
    await store.ingest(batch(t0 + 3, { c: { points: [{ name: 'cpu', kind: KindCode.Gauge, value: 99 }] } }));
    const want = { [`a@${t0}`]: 12.25, [`b@${t0}`]: -3.5, [`a@${t0 + 1}`]: 1e-7, [`c@${t0 + 3}`]: 99 };
    expect(dump(store, 'cpu', t0, t0 + 10)).toEqual(want); // from the head
    expect(dump(store, 'lat', t0, t0 + 10)).toEqual({ [`a@${t0 + 1}`]: { count: 4, sum: 24, min: -1, max: 20, p50: 0 } });
    expect(await store.flushDue(Date.now() + 3600_000)).toBeGreaterThan(0);
    expect(store.heldBytes).toBe(0);
    expect(dump(store, 'cpu', t0, t0 + 10)).toEqual(want); // from LMDB rows
    expect(dump(store, 'req', t0, t0 + 10)).toEqual({ [`a@${t0}`]: 7 });
    expect(dump(store, 'cpu', t0 + 1, t0 + 3)).toEqual({ [`a@${t0 + 1}`]: 1e-7 });
    expect(store.registry.allServers().map((s) => [s.name, s.rack])).toEqual([['a', 'r1'], ['b', 'r1'], ['c', 'r1']]);
    await store.close();
  });

  it('merges late data into a written block, and acknowledges a retried batch once', async () => {
    const store = open();
    await store.ingest(batch(t0, { a: { points: [{ name: 'q', kind: KindCode.Gauge, value: 1 }], dists: [{ name: 'd', values: [1, 2] }] } }));
    await store.flushDue(Date.now() + 3600_000);
    const late = batch(t0, { b: { points: [{ name: 'q', kind: KindCode.Gauge, value: 2 }] }, a: { dists: [{ name: 'd', values: [3] }] } });
    expect(await store.ingest(late)).toMatchObject({ status: 204, duplicate: false });
    expect(await store.ingest(late)).toMatchObject({ status: 204, duplicate: true });
    await store.flushDue(Date.now() + 3600_000);
    expect(dump(store, 'q', t0, t0 + 1)).toEqual({ [`a@${t0}`]: 1, [`b@${t0}`]: 2 });
    expect(dump(store, 'd', t0, t0 + 1)).toMatchObject({ [`a@${t0}`]: { count: 3, sum: 6, min: 1, max: 3 } });
    expect(store.counters).toMatchObject({ batches_duplicate: 1, rows_merged: 2 });
    await store.close();
  });

  it('refuses batches naming servers beyond the registry bound, and counts them', async () => {
    const store = open({ serversMax: 2 });
    expect((await store.ingest(batch(t0, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: 1 }] }, b: {} }))).status).toBe(204);
    expect(await store.ingest(batch(t0 + 1, { c: { points: [{ name: 'x', kind: KindCode.Gauge, value: 1 }] } }))).toMatchObject({ status: 400, reason: 'registry_full' });
    expect((await store.ingest(batch(t0 + 2, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: 2 }] } }))).status).toBe(204);
    expect(store.counters.registry_full).toBe(1);
    await store.close();
  });

  it('refuses a batch holding NaN with 400 and counts it', async () => {
    const store = open();
    const r = await store.ingest(batch(t0, { a: { points: [{ name: 'x', kind: KindCode.Gauge, value: NaN }] } }));
    expect(r).toMatchObject({ status: 400, reason: 'bad_value' });
    expect((await store.ingest(new Uint8Array(40))).status).toBe(400);
    expect(store.rejected).toMatchObject({ bad_value: 1 });
    await store.close();
  });

  it('replays acknowledged batches from the WAL after a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-'));
    dirs.push(dir);
    const opts = { dir, retentionSeconds: 86400 * 365, blockSeconds: 60, mapBytes: 1 << 30, flushGraceMs: 0, headBytesMax: 1 << 30, metricsMax: 1000, diskBytesMax: 0, diskReserveBytes: 0 };
    const a = new Store(opts);
    await a.ingest(batch(t0, { s1: { points: [{ name: 'm', kind: KindCode.Gauge, value: 5 }] } }));
    await a.close(); // not flushed: only the WAL has it
    const b = new Store(opts);
    expect(b.counters.wal_replayed).toBe(1);
    expect(dump(b, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 5 });
    await b.flushDue(Date.now() + 3600_000);
    await b.close();
    const c = new Store(opts);
    expect(c.counters.wal_replayed).toBe(0);
    expect(dump(c, 'm', t0, t0 + 1)).toEqual({ [`s1@${t0}`]: 5 });
    await c.close();
  });

  it('deletes rows past the retention', async () => {
    const store = open({ retentionSeconds: 120 });
    const now = Math.floor(Date.now() / 1000);
    await store.ingest(batch(now - 600, { a: { points: [{ name: 'old', kind: KindCode.Gauge, value: 1 }] } }));
    await store.ingest(batch(now, { a: { points: [{ name: 'old', kind: KindCode.Gauge, value: 2 }] } }));
    await store.flushDue(Date.now() + 3600_000);
    expect(await store.retentionSweep(Date.now())).toBe(1);
    expect(dump(store, 'old', now - 700, now + 1)).toEqual({ [`a@${now}`]: 2 });
    await store.close();
  });

  it('answers 503 with the cause while the disk is really full (a tmpfs), keeps what it acknowledged, and recovers without a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-store-full-'));
    // Root, as in CI: a file system that fills up. No free-space reserve, so LMDB's own write
    // fails; a filler file takes the room and is deleted to give it back.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir]);
    try {
      const store = new Store({ dir: join(dir, 'core'), retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 1 << 30, flushGraceMs: 0, headBytesMax: 1 << 30, metricsMax: 10_000, diskBytesMax: 0, diskReserveBytes: 0 });
      const points = (v: number) => ({ 'web-1': { points: Array.from({ length: 200 }, (_, i) => ({ name: `m.${i}`, kind: KindCode.Gauge as const, value: v + i })) } });
      expect((await store.ingest(batch(t0, points(1)))).status).toBe(204);
      writeFileSync(join(dir, 'filler'), new Uint8Array(0));
      try {
        for (;;) appendFileSync(join(dir, 'filler'), new Uint8Array(64 * 1024));
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      let refused = 0;
      for (let i = 1; i < 40 && refused === 0; i++) {
        const r = await store.ingest(batch(t0 + i, points(i + 1)));
        if (r.status === 503) {
          refused = i;
          expect(r.reason).toBe('storage_full');
          expect(r.error).toMatch(/^storage write failed \(.+\); free disk space/);
        } else expect(r.status).toBe(204);
      }
      expect(refused).toBeGreaterThan(0);
      rmSync(join(dir, 'filler'));
      // The rack retries the refused batch: now stored, and every acknowledged second is there.
      expect((await store.ingest(batch(t0 + refused, points(refused + 1)))).status).toBe(204);
      await store.flushDue(Date.now() + 1e9);
      const stored = dump(store, 'm.7', t0, t0 + 60);
      expect(Object.keys(stored).length).toBe(refused + 1);
      expect(stored[`web-1@${t0 + refused}`]).toBe(refused + 1 + 7);
      await store.close();
    } finally {
      execFileSync('umount', [dir]);
    }
  });
});
