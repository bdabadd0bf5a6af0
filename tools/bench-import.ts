// `apm bench --only import` (issue 15): history into a real `apm core` process through POST
// /api/v1/import (VictoriaMetrics JSON lines, streamed from a file) and out through GET
// /api/v1/export: points per second and the core's CPU-seconds per million points, for a wide
// history (many series a second: big requests) and a narrow one (few series a second: one small
// request per second). Fails loudly when the core did not store every point.

import { createReadStream, createWriteStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Figure } from './bench-edge.js';
import { cpuTicks, drained, startCore, ticksPerSecond } from './bench-proc.js';

interface Shape {
  name: string;
  servers: number;
  metrics: number;
  seconds: number;
}

/** Writes the shape as JSON lines: one line per (server, metric) with all its seconds. */
async function writeHistory(file: string, s: Shape, t0: number): Promise<number> {
  const out = createWriteStream(file);
  let points = 0;
  const ts = Array.from({ length: s.seconds }, (_, i) => (t0 + i) * 1000);
  const tsText = JSON.stringify(ts);
  for (let v = 0; v < s.servers; v++) {
    for (let m = 0; m < s.metrics; m++) {
      const values = ts.map((_, i) => Math.round((v * 7 + m * 13 + ((i * 31) % 1000)) * 100) / 100);
      const line = `{"metric":{"__name__":"bench.import.m${m}","server":"imp-${v}","rack":"rack-${v % 8}"},"values":${JSON.stringify(values)},"timestamps":${tsText}}\n`;
      points += s.seconds;
      if (!out.write(line)) await once(out, 'drain');
    }
  }
  out.end();
  await once(out, 'finish');
  return points;
}

async function importOnce(s: Shape): Promise<Figure[]> {
  const dir = mkdtempSync(join(tmpdir(), 'apm-bench-import-'));
  const core = await startCore(['--workers', '2']);
  try {
    const now = Math.floor(Date.now() / 1000);
    const t0 = now - 86_400 - (now % 60) - s.seconds;
    const file = join(dir, 'history.jsonl');
    const points = await writeHistory(file, s, t0);
    const bytes = statSync(file).size;
    const cpu0 = cpuTicks(core.pid);
    const w0 = performance.now();
    const res = await fetch(`${core.url}/api/v1/import`, { method: 'POST', body: Readable.toWeb(createReadStream(file)) as ReadableStream, duplex: 'half' } as RequestInit);
    const summary = (await res.json()) as { stored?: number; error?: string };
    const wallS = (performance.now() - w0) / 1000;
    const cpuS = (cpuTicks(core.pid) - cpu0) / ticksPerSecond;
    if (res.status !== 200 || summary.stored !== points) throw new Error(`import bench (${s.name}): HTTP ${res.status}, stored ${summary.stored} of ${points} points: ${summary.error ?? JSON.stringify(summary).slice(0, 300)}`);
    // The import answers once its points are in the WAL; their rows are written after. That CPU
    // is the import's too, measured apart, and the export starts on a quiet core (before: the
    // rows were written during the export, charged to it).
    await drained(core, { points, timeoutMs: 600_000 });
    const rowsCpuS = (cpuTicks(core.pid) - cpu0) / ticksPerSecond - cpuS;
    // Export everything back (all metrics, the whole span) and count the points.
    const url = new URL('/api/v1/export', core.url);
    for (let m = 0; m < s.metrics; m++) url.searchParams.append('match[]', `bench.import.m${m}`);
    url.searchParams.set('from', String(t0 * 1000));
    url.searchParams.set('to', String((t0 + s.seconds) * 1000));
    const e0 = performance.now();
    const ecpu0 = cpuTicks(core.pid);
    const ex = await fetch(url);
    let exported = 0;
    let tail = '';
    for await (const chunk of ex.body as unknown as AsyncIterable<Uint8Array>) {
      const text = tail + Buffer.from(chunk).toString('utf8');
      const lines = text.split('\n');
      tail = lines.pop()!;
      for (const l of lines) if (l !== '') exported += (JSON.parse(l) as { values: number[] }).values.length;
    }
    const exS = (performance.now() - e0) / 1000;
    const exCpuS = (cpuTicks(core.pid) - ecpu0) / ticksPerSecond;
    if (exported !== points) throw new Error(`import bench (${s.name}): exported ${exported} of ${points} points`);
    const label = `${s.name}: ${s.servers} servers × ${s.metrics} metrics × ${s.seconds} s (${(points / 1e6).toFixed(2)} M points, ${(bytes / 1048576).toFixed(0)} MiB JSON)`;
    return [
      { name: `import ${label}`, value: points / wallS, unit: 'points/s' },
      { name: `import ${s.name}: core CPU per million points until the answer (in the WAL; 2 workers)`, value: cpuS / (points / 1e6), unit: 'CPU-s/M' },
      { name: `import ${s.name}: core CPU per million points, answer and rows written`, value: (cpuS + rowsCpuS) / (points / 1e6), unit: 'CPU-s/M' },
      { name: `export ${s.name}: points/s read back (and parsed by the bench)`, value: exported / exS, unit: 'points/s' },
      { name: `export ${s.name}: core CPU per million points`, value: exCpuS / (points / 1e6), unit: 'CPU-s/M' },
    ];
  } finally {
    await core.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function importFigures(quick: boolean): Promise<Figure[]> {
  const shapes: Shape[] = quick
    ? [
        { name: 'wide', servers: 100, metrics: 20, seconds: 300 },
        { name: 'narrow', servers: 2, metrics: 5, seconds: 3600 },
      ]
    : [
        { name: 'wide', servers: 200, metrics: 50, seconds: 600 },
        { name: 'narrow', servers: 2, metrics: 5, seconds: 6 * 3600 },
      ];
  const out: Figure[] = [];
  for (const s of shapes) out.push(...(await importOnce(s)));
  return out;
}
