// `apm bench --only disk` (issue 14): bytes on disk per point, through a real `apm core --workers 2`
// fed the comparison mix (tools/shapes-compare.ts: CPU-like walk, counters, queues, latencies;
// the mix VictoriaMetrics stores at 1.54 B/sample) as fast as it takes it — a backfill, racks'
// bodies cut as `apm rack` cuts them. After the first 10 minutes of data and again at the end
// (every row written, the WAL empty): encoded rows per point, LMDB pages in use per point, the
// data files' size per point (their high-water mark: LMDB never shrinks a file), and the WAL's
// high-water during the run. Fails loudly when the core did not store every point.

import { Pool } from 'undici';
import { emptyColumns, KindCode, type SeriesColumns } from '../schema/codec.js';
import { hashName } from '../schema/names.js';
import { shardsDefault } from '../schema/limits.js';
import { SectionCutter } from '../schema/section.js';
import type { Figure } from './bench-edge.js';
import { coreMetrics, cpuTicks, drained, metric, rejections, sendRacks, startCore, ticksPerSecond } from './bench-proc.js';
import { MixColumns, mixShapeNames } from './shapes-compare.js';

interface DiskRun {
  racks: number;
  metrics: number;
  /** Minutes of data, and the minute after which a first figure is taken. */
  minutes: number;
  firstMinutes: number;
}

const serversPerRack = 40;

/** One rack's second: every server's metrics as gauges (names with the first second). */
function rackBody(cutter: SectionCutter, mix: MixColumns, rack: number, second: number, seq: number, hashes: Uint32Array, names: string[] | null): Uint8Array {
  const m = mix.metrics;
  const kinds = new Uint8Array(m).fill(KindCode.Gauge);
  const servers = Array.from({ length: serversPerRack }, (_, k) => {
    const s = rack * serversPerRack + k;
    const cols: SeriesColumns = { ...emptyColumns(), pointHashes: hashes, pointKinds: kinds, pointValues: mix.values.subarray(s * m, (s + 1) * m) };
    return { server: `disk-${s}`, blocks: [cols] };
  });
  const rollup = emptyColumns();
  if (names !== null) {
    rollup.nameHashes = hashes;
    rollup.nameBytes = Buffer.from(names.join(''), 'latin1');
    rollup.nameEnds = new Uint32Array(names.length);
    let end = 0;
    names.forEach((n, i) => (rollup.nameEnds[i] = end += n.length));
  }
  return cutter.body({ rack: `disk-r${rack}`, session: 7, seq, second, late: false, shards: shardsDefault, servers, rollup });
}

async function diskRun(r: DiskRun): Promise<Figure[]> {
  const core = await startCore(['--workers', '2']);
  const pool = new Pool(core.url, { connections: r.racks, pipelining: 1 });
  const names = Array.from({ length: r.metrics }, (_, i) => `disk.${mixShapeNames[i % 4]}.${i}`);
  const hashes = new Uint32Array(2 * r.metrics);
  names.forEach((n, i) => hashName(n, hashes, 2 * i));
  const mix = new MixColumns(r.racks * serversPerRack, r.metrics, { counters: 'rate', seed: 14 });
  const cutters = Array.from({ length: r.racks }, () => new SectionCutter(Math.max(1024, 2 * r.metrics)));
  const pointsPerSecond = r.racks * serversPerRack * r.metrics;
  const now = Math.floor(Date.now() / 1000);
  const t0 = now - 2 * 86_400 - (now % 3600);
  const out: Figure[] = [];
  let walMax = 0;
  let fileMax = 0;
  const sampler = setInterval(() => {
    void coreMetrics(core)
      .then((m) => {
        walMax = Math.max(walMax, metric(m, 'apm_core_wal_bytes'));
        fileMax = Math.max(fileMax, metric(m, 'apm_core_disk_bytes'));
      })
      .catch(() => undefined);
  }, 250);
  try {
    const m0 = await coreMetrics(core);
    const cpu0 = cpuTicks(core.pid);
    const w0 = performance.now();
    let retried = 0;
    let sent = 0;
    const take = async (label: string) => {
      const d = await drained(core, { points: sent, timeoutMs: 900_000 });
      const m = d.metrics;
      const dp = (k: string) => metric(m, k) - metric(m0, k);
      const stored = dp('apm_core_points_ingested_total');
      if (stored !== sent) throw new Error(`bench disk INVALID RUN: the core stored ${stored} of ${sent} points (refusals: ${rejections(m0, m) || 'none'})`);
      const rows = dp('apm_core_row_bytes_written_total');
      if (!(rows > 0)) throw new Error('bench disk INVALID RUN: no rows written');
      const per = (b: number) => b / sent;
      const cpuS = (cpuTicks(core.pid) - cpu0) / ticksPerSecond;
      const wallS = (d.at - w0) / 1000;
      out.push(
        { name: `${label}: encoded rows per point (the row bytes written)`, value: per(rows), unit: 'B/point', target: '≤ 1.0 in use; VictoriaMetrics 1.54' },
        { name: `${label}: LMDB pages in use per point (rows + the empty WAL)`, value: per(metric(m, 'apm_core_disk_used_bytes')), unit: 'B/point', target: '≤ 1.0' },
        { name: `${label}: data files per point (their high-water mark; ${(metric(m, 'apm_core_disk_bytes') / 2 ** 20).toFixed(0)} MiB)`, value: per(metric(m, 'apm_core_disk_bytes')), unit: 'B/point' },
        { name: `${label}: rows' data files per point (all but the WAL's)`, value: per(metric(m, 'apm_core_disk_bytes') - metric(m, 'apm_core_wal_file_bytes')), unit: 'B/point' },
        { name: `${label}: WAL files (${(metric(m, 'apm_core_wal_file_bytes') / 2 ** 20).toFixed(0)} MiB; WAL high-water during the run ${(walMax / 2 ** 20).toFixed(0)} MiB), per point stored`, value: per(metric(m, 'apm_core_wal_file_bytes')), unit: 'B/point' },
        { name: `${label}: core ingest wall rate, bodies to rows written (${retried} bodies retried after 503: ${rejections(m0, m) || 'none'})`, value: sent / wallS / 1e6, unit: 'M points/s' },
        { name: `${label}: core CPU-seconds per million points`, value: cpuS / (sent / 1e6), unit: 'CPU-s/M' },
      );
    };
    // Seconds in order, every rack's body of a second sent at once, the next second's built meanwhile.
    for (let k = 0; k < r.minutes * 60; k++) {
      mix.step();
      const bodies = cutters.map((c, rack) => [rackBody(c, mix, rack, t0 + k, k + 1, hashes, k === 0 ? names : null)]);
      const res = await sendRacks(pool, core, bodies);
      retried += res.retried;
      sent += pointsPerSecond;
      if (k + 1 === r.firstMinutes * 60) await take(`after ${r.firstMinutes} min (${(sent / 1e6).toFixed(0)} M points)`);
    }
    if (r.minutes !== r.firstMinutes) await take(`after ${r.minutes} min (${(sent / 1e6).toFixed(0)} M points)`);
    const fileNow = metric(await coreMetrics(core), 'apm_core_disk_bytes');
    if (fileMax > fileNow) out.push({ name: '  (the files grew no further than this)', value: fileMax / 2 ** 20, unit: 'MiB' });
    return out;
  } finally {
    clearInterval(sampler);
    await pool.close();
    await core.stop();
  }
}

export async function diskFigures(quick: boolean): Promise<Figure[]> {
  const r: DiskRun = quick ? { racks: 5, metrics: 200, minutes: 10, firstMinutes: 10 } : { racks: 25, metrics: 200, minutes: 30, firstMinutes: 10 };
  console.log(`  (${r.racks * serversPerRack} servers × ${r.metrics} metrics of the comparison mix, ${r.minutes} min of data sent as fast as the core takes it)`);
  return diskRun(r);
}
