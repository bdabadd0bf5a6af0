// Core figures (issue 4, DESIGN §7): ingest points per CPU-second from HTTP body to durable
// LMDB rows, bytes on disk per gauge point for an hour of realistic data (the LMDB file's
// size), and read speed for the shapes stored queries and histories use.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { Encoder, KindCode, emptyColumns, type EdgeSecondMessage, type SeriesColumns } from '../schema/codec.js';
import { hashName } from '../schema/names.js';
import { buildColumns } from '../schema/testdata.js';
import { RackMerger } from '../rack/merge.js';
import { Store } from '../core/store.js';
import type { Figure } from './bench-edge.js';
import { ShapeColumns } from './shapes.js';

/** Builds one rack's batch per second from shape columns (servers × metrics). */
export class BatchMaker {
  private readonly encoder = new Encoder();
  private readonly merger = new RackMerger(100_000);
  private readonly hashes: Uint32Array;
  private readonly kinds: Uint8Array;
  private readonly shapes: ShapeColumns;
  private readonly distBlock: SeriesColumns | null;
  private seq = 1;

  constructor(
    readonly rack: string,
    readonly servers: number,
    readonly metrics: number,
    distShare: number,
    seed: number,
  ) {
    const gauges = metrics - Math.round(metrics * distShare);
    this.hashes = new Uint32Array(2 * gauges);
    for (let i = 0; i < gauges; i++) hashName(`bench.metric_${i}`, this.hashes, 2 * i);
    this.kinds = new Uint8Array(gauges).fill(KindCode.Gauge);
    this.shapes = new ShapeColumns(servers * gauges, seed, gauges);
    this.distBlock = gauges === metrics ? null : distColumns(metrics - gauges);
  }

  batch(second: number): Uint8Array {
    this.shapes.step(second);
    const g = this.kinds.length;
    const parts: EdgeSecondMessage[][] = [];
    for (let s = 0; s < this.servers; s++) {
      const series: SeriesColumns = { ...emptyColumns(), pointHashes: this.hashes, pointKinds: this.kinds, pointValues: this.shapes.values.subarray(s * g, (s + 1) * g) };
      const list: EdgeSecondMessage[] = [{ type: 'edgeSecond', server: `${this.rack}-${s}`, session: 1, seq: 0, second, part: 0, parts: 1, sentMs: 0, series }];
      if (this.distBlock !== null) list.push({ ...list[0]!, part: 1, parts: 2, series: this.distBlock });
      parts.push(list);
    }
    const merged = this.merger.merge(parts.map((p, s) => ({ server: `${this.rack}-${s}`, parts: p })));
    return this.encoder.rackBatch({ rack: this.rack, batchSeq: this.seq++, second, late: false, servers: merged.servers, rollup: merged.rollup });
  }

  get pointsPerBatch(): number {
    return this.servers * this.metrics;
  }
}

/** n distributions of 20 latency-like values each (the same every second). */
function distColumns(n: number): SeriesColumns {
  return buildColumns([], Array.from({ length: n }, (_, i) => ({ name: `bench.latency_${i}`, values: Array.from({ length: 20 }, (_, k) => Math.exp(1 + ((k * 7 + i) % 30) / 10)) })));
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

async function promValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
}

/** A real `apm core` fed over HTTP by `racks` racks of 40 servers × 2,000 metrics, backfilling `seconds`. */
async function ingestRun(seconds: number, racks: number, distShare: number): Promise<{ perCpuSecond: number; wallPerSecond: number; cpuPercent: number }> {
  const data = mkdtempSync(join(tmpdir(), 'apm-bench-core-'));
  const cli = fileURLToPath(new URL('./cli.js', import.meta.url));
  const nodeArgs = (process.env.APM_BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a.length > 0);
  const child = spawn(process.execPath, [...nodeArgs, cli, 'core', '--listen', '127.0.0.1:0', '--data', data], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      const m = /(http:\/\/127\.0\.0\.1:\d+)\//.exec(d.toString());
      if (m) resolve(m[1]!);
    });
    child.once('exit', () => reject(new Error('apm core exited during start-up')));
  });
  const makers = Array.from({ length: racks }, (_, r) => new BatchMaker(`bench-r${r}`, 40, 2000, distShare, r + 1));
  const pool = new Pool(url, { connections: racks });
  // Backfill from three hours ago: every block is due for writing as soon as it is complete.
  const start = Math.floor(Date.now() / 1000) - 3 * 3600;
  const t0 = Date.now();
  const cpu0 = cpuTicks(child.pid!);
  let points = 0;
  await Promise.all(
    makers.map(async (m) => {
      for (let k = 0; k < seconds; k++) {
        const body = m.batch(start - (start % 60) + k);
        const res = await pool.request({ path: '/api/v1/ingest', method: 'POST', body, headers: { 'content-type': 'application/x-apm-batch' } });
        await res.body.dump();
        if (res.statusCode !== 204) throw new Error(`core answered ${res.statusCode}`);
        points += m.pointsPerBatch;
      }
    }),
  );
  // Durable in rows: wait for the head to be written out.
  while ((await promValue(url, 'apm_core_head_bytes')) > 0) await new Promise((r) => setTimeout(r, 100));
  const cpuSeconds = (cpuTicks(child.pid!) - cpu0) / 100;
  const wallSeconds = (Date.now() - t0) / 1000;
  await pool.close();
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  rmSync(data, { recursive: true, force: true });
  return { perCpuSecond: points / cpuSeconds, wallPerSecond: points / wallSeconds, cpuPercent: (100 * cpuSeconds) / wallSeconds };
}

/** An hour (or `seconds`) of 1,000 servers × 20 realistic gauges written in-process; file size and reads. */
export async function diskAndReads(seconds: number): Promise<Figure[]> {
  const dir = mkdtempSync(join(tmpdir(), 'apm-bench-disk-'));
  const store = new Store({ dir, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 34, flushGraceMs: 0, headBytesMax: 2 ** 32, metricsMax: 10_000, diskBytesMax: 0, diskReserveBytes: 0 });
  const makers = Array.from({ length: 25 }, (_, r) => new BatchMaker(`disk-r${r}`, 40, 20, 0, 100 + r));
  const start = Math.floor(Date.now() / 1000) - 2 * 86400;
  const t = start - (start % 60);
  let points = 0;
  for (let k = 0; k < seconds; k++) {
    for (const m of makers) {
      const r = await store.ingest(m.batch(t + k));
      if (r.status !== 204) throw new Error(`ingest: ${JSON.stringify(r)}`);
      points += m.pointsPerBatch;
    }
    if (k % 60 === 59) await store.flushDue(Date.now() + 86_400_000);
  }
  await store.flushDue(Date.now() + 86_400_000);
  const fileBytes = statSync(join(dir, 'data.mdb')).blocks * 512;
  const usedBytes = store.usedBytes();
  // Reads: one metric over 1,000 servers for the whole range; repeated for a stable figure.
  const h = new Uint32Array(2);
  hashName('bench.metric_0', h, 0);
  let visited = 0;
  const reps = 5;
  const r0 = process.hrtime.bigint();
  for (let i = 0; i < reps; i++) store.read(h[0]!, h[1]!, t, t + seconds, (row) => (visited += row.pointVals.length));
  const readMs = Number(process.hrtime.bigint() - r0) / 1e6 / reps;
  await store.close();
  rmSync(dir, { recursive: true, force: true });
  const minutes = Math.round(seconds / 60);
  return [
    { name: `bytes on disk per gauge point: LMDB file after ${minutes} min × 1,000 servers × 20 realistic gauges`, value: fileBytes / points, unit: 'B', target: '≤ 1' },
    { name: '  (pages in use per point, without LMDB free pages)', value: usedBytes / points, unit: 'B' },
    { name: `read one metric × 1,000 servers × ${minutes} min (${visited / reps} points, decoded to columns)`, value: readMs, unit: 'ms' },
  ];
}

/** One server × one metric × `seconds` (a day by default), stored and read back. */
async function longHistory(seconds: number): Promise<Figure[]> {
  const dir = mkdtempSync(join(tmpdir(), 'apm-bench-day-'));
  const store = new Store({ dir, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 32, flushGraceMs: 0, headBytesMax: 1 << 30, metricsMax: 100, diskBytesMax: 0, diskReserveBytes: 0 });
  const maker = new BatchMaker('day', 1, 4, 0, 7);
  const start = Math.floor(Date.now() / 1000) - 3 * 86400;
  const t = start - (start % 60);
  for (let k = 0; k < seconds; k++) {
    await store.ingest(maker.batch(t + k));
    if (k % 3600 === 3599) await store.flushDue(Date.now() + 86_400_000);
  }
  await store.flushDue(Date.now() + 86_400_000);
  const h = new Uint32Array(2);
  hashName('bench.metric_0', h, 0);
  let n = 0;
  const r0 = process.hrtime.bigint();
  store.read(h[0]!, h[1]!, t, t + seconds, (row) => (n += row.pointVals.length));
  const ms = Number(process.hrtime.bigint() - r0) / 1e6;
  await store.close();
  rmSync(dir, { recursive: true, force: true });
  return [{ name: `read one server × one metric × ${Math.round(seconds / 3600)} h (${n} points)`, value: ms, unit: 'ms' }];
}

export async function coreFigures(quick: boolean): Promise<Figure[]> {
  const out: Figure[] = [];
  for (const [label, share] of [
    ['gauges only', 0],
    ['5% distributions', 0.05],
  ] as const) {
    const r = await ingestRun(quick ? 30 : 120, 2, share);
    out.push({ name: `core ingest, HTTP body → durable LMDB rows, per CPU-second (${label})`, value: r.perCpuSecond / 1e6, unit: 'M points/s', target: '≥ 10 M' });
    out.push({ name: `  wall-clock rate with 2 racks posting (${label}); core CPU ${r.cpuPercent.toFixed(0)}% of one core`, value: r.wallPerSecond / 1e6, unit: 'M points/s' });
  }
  out.push(...(await diskAndReads(quick ? 600 : 3600)));
  out.push(...(await longHistory(quick ? 6 * 3600 : 86_400)));
  return out;
}
