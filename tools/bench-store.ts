// In-process figures of one Store (core/store.ts) holding every shard of a temp directory, fed
// the sections a worker receives (issue 12): a read of one metric × 1,000 servers × 1 minute
// from the head (ingested, not written) and from written rows — time and bytes allocated —,
// bytes on disk per gauge point for an hour of realistic data, the same metric over the hour,
// and one series over a day.

import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { shardsDefault } from '../schema/limits.js';
import { Store } from '../core/store.js';
import { BatchMaker, blockStart, metricHash } from './bench-batch.js';
import type { Figure } from './bench-edge.js';

const S = shardsDefault;
/** Far enough ahead that every block is due for writing. */
const farFutureMs = () => Date.now() + 86_400_000;

function openStore(dir: string): Store {
  return new Store({
    dir,
    shardCount: S,
    shards: Array.from({ length: S }, (_, k) => k),
    retentionSeconds: 10 * 365 * 86_400,
    blockSeconds: 60,
    mapBytes: 2 ** 36,
    flushGraceMs: 0,
    headBytesMax: 2 ** 33,
    metricsMax: 100_000,
    metricsPerServerMax: 20_000,
    serversMax: 100_000,
    racksMax: 10_000,
    sliceMs: 20,
    diskBytesMax: 0,
    diskReserveBytes: 0,
  });
}

/** A turn of the event loop, as a worker takes between messages and slices: lmdb-js ends its
 *  shared read transaction there, and LMDB reuses freed pages only once no reader holds them. */
const turn = () => new Promise((r) => setImmediate(r));

async function ingestSecond(store: Store, makers: BatchMaker[], second: number): Promise<number> {
  let points = 0;
  for (const m of makers) {
    const { header, sections } = m.sections(second);
    const r = store.ingest(header, sections);
    if (r.status !== 204) throw new Error(`bench store INVALID RUN: ingest of ${header.rack} second ${second} answered ${r.status}: ${r.error}`);
    points += r.points;
    await turn();
  }
  return points;
}

async function writeAll(store: Store): Promise<void> {
  while (store.writeSlice(farFutureMs())) await turn();
  await turn();
}

let gcFn: (() => void) | null = null;
/** A full collection (before each measured read, so the bytes counted are the read's own). */
function gc(): void {
  if (gcFn === null) {
    v8.setFlagsFromString('--expose-gc');
    gcFn = vm.runInNewContext('gc') as () => void;
  }
  gcFn();
}

interface ReadCost {
  ms: number;
  /** Heap and external (typed array, Buffer) bytes allocated, including what collections during the read freed. */
  bytes: number;
  points: number;
}

/** Median time and allocation of `reps` reads (after one unmeasured read). */
function readCost(reps: number, read: () => number): ReadCost {
  read();
  const runs: ReadCost[] = [];
  for (let i = 0; i < reps; i++) {
    gc();
    const profiler = new v8.GCProfiler();
    const m0 = process.memoryUsage();
    profiler.start();
    const t0 = process.hrtime.bigint();
    const points = read();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const gcs = profiler.stop();
    const m1 = process.memoryUsage();
    let freed = 0;
    for (const g of gcs.statistics) {
      const b = g.beforeGC.heapStatistics;
      const a = g.afterGC.heapStatistics;
      freed += b.usedHeapSize - a.usedHeapSize + (b.externalMemory - a.externalMemory);
    }
    runs.push({ ms, bytes: m1.heapUsed - m0.heapUsed + (m1.external - m0.external) + freed, points });
  }
  const mid = (k: 'ms' | 'bytes') => runs.map((r) => r[k]).sort((a, b) => a - b)[Math.floor(reps / 2)]!;
  return { ms: mid('ms'), bytes: mid('bytes'), points: runs[0]!.points };
}

/** Points of one metric in [from, to), read from `store` (head or rows). */
function readMetric(store: Store, name: string, from: number, to: number): number {
  const { lo, hi } = metricHash(name);
  let n = 0;
  store.read(lo, hi, from, to, (row) => (n += row.pointVals.length));
  return n;
}

/**
 * 25 racks × 40 servers × 20 realistic gauges for `seconds` (from a block two days back): the
 * first minute read from the head and then from its rows, then the rest written minute by minute
 * and the file measured. Reading one metric touches only that metric's heads and rows, so 20
 * metrics per server stand for 2,000 here.
 */
async function fleetHour(seconds: number): Promise<Figure[]> {
  const dir = mkdtempSync(join(tmpdir(), 'apm-bench-store-'));
  const store = openStore(dir);
  try {
    const makers = Array.from({ length: 25 }, (_, r) => new BatchMaker({ rack: `disk-r${r}`, servers: 40, metrics: 20, distShare: 0, seed: 100 + r, shards: S }));
    const t = blockStart(Math.floor(Date.now() / 1000) - 2 * 86_400);
    let points = 0;
    for (let k = 0; k < 60; k++) points += await ingestSecond(store, makers, t + k);
    const head = readCost(5, () => readMetric(store, 'bench.metric_0', t, t + 60));
    if (store.counters.rows_written !== 0 || head.points !== 60_000) throw new Error(`bench store INVALID RUN: the head read found ${head.points} of 60,000 points (${store.counters.rows_written} rows written before it)`);
    await writeAll(store);
    if (store.heldBytes !== 0) throw new Error(`bench store INVALID RUN: ${store.heldBytes} B still in the head after writing every due block`);
    const rows = readCost(5, () => readMetric(store, 'bench.metric_0', t, t + 60));
    if (rows.points !== 60_000) throw new Error(`bench store INVALID RUN: the row read found ${rows.points} of 60,000 points`);
    for (let k = 60; k < seconds; k++) {
      points += await ingestSecond(store, makers, t + k);
      if (k % 60 === 59) await writeAll(store);
    }
    await writeAll(store);
    const expected = 25 * 40 * 20 * seconds;
    if (points !== expected || store.counters.points_ingested !== expected) throw new Error(`bench store INVALID RUN: ${points} points ingested (store counted ${store.counters.points_ingested}) of ${expected}`);
    // The rows' file and the WAL's (its own environment since issue 14), as allocated on disk.
    const fileBytes = statSync(join(dir, 'data.mdb')).blocks * 512;
    const walFileBytes = statSync(join(dir, 'wal', 'data.mdb')).blocks * 512;
    const usedBytes = store.rowsUsedBytes();
    const all = readCost(3, () => readMetric(store, 'bench.metric_0', t, t + seconds));
    if (all.points !== 1000 * seconds) throw new Error(`bench store INVALID RUN: reading the whole range found ${all.points} of ${1000 * seconds} points`);
    const minutes = Math.round(seconds / 60);
    const kib = (b: number) => `ms, ${(b / 1024).toFixed(0)} KiB allocated`;
    return [
      { name: 'head read: one metric × 1,000 servers × 1 min (25 racks, ingested, not written)', value: head.ms, unit: kib(head.bytes) },
      { name: '  the same minute read from its written rows (decoded to columns)', value: rows.ms, unit: kib(rows.bytes) },
      { name: `bytes on disk per gauge point: the rows' LMDB file after ${minutes} min × 1,000 servers × 20 realistic gauges`, value: fileBytes / points, unit: 'B', target: '≤ 1' },
      { name: '  (pages in use by rows and row groups per point, without LMDB free pages)', value: usedBytes / points, unit: 'B' },
      { name: `  (the WAL's file, ${(walFileBytes / 2 ** 20).toFixed(0)} MiB, per point)`, value: walFileBytes / points, unit: 'B' },
      { name: `read one metric × 1,000 servers × ${minutes} min (${all.points} points, decoded to columns)`, value: all.ms, unit: kib(all.bytes) },
    ];
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One server × 4 metrics × `seconds`, written hour by hour; one series read back. */
async function longHistory(seconds: number): Promise<Figure[]> {
  const dir = mkdtempSync(join(tmpdir(), 'apm-bench-day-'));
  const store = openStore(dir);
  try {
    const maker = new BatchMaker({ rack: 'day', servers: 1, metrics: 4, distShare: 0, seed: 7, shards: S });
    const t = blockStart(Math.floor(Date.now() / 1000) - 3 * 86_400);
    for (let k = 0; k < seconds; k++) {
      await ingestSecond(store, [maker], t + k);
      if (k % 3600 === 3599) await writeAll(store);
    }
    await writeAll(store);
    const r = readCost(3, () => readMetric(store, 'bench.metric_0', t, t + seconds));
    if (r.points !== seconds) throw new Error(`bench store INVALID RUN: the day read found ${r.points} of ${seconds} points`);
    return [{ name: `read one server × one metric × ${Math.round(seconds / 3600)} h (${r.points} points)`, value: r.ms, unit: 'ms' }];
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function storeFigures(quick: boolean): Promise<Figure[]> {
  return [...(await fleetHour(quick ? 600 : 3600)), ...(await longHistory(quick ? 3600 : 86_400))];
}
