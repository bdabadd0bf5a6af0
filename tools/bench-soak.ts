// The soak benchmark (issue 8): a fleet the box sustains, run for minutes, with every tier's
// resident memory and open file descriptors sampled from /proc. Leaks show up as a slope: the
// figures are each tier's RSS and fds after warm-up and at the end, and the RSS trend per minute
// over the run (least squares), with the data kept flowing end to end (stored points counted).

import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { Figure } from './bench-edge.js';
import { prom, start, stat, stopChild } from './bench-fleet.js';

export interface SoakOptions {
  servers: number;
  metrics: number;
  minutes: number;
}

/** Samples are taken this often; the first minute is warm-up (JIT, registries, spool file). */
const sampleMs = 10_000;
const warmupMs = 60_000;

/** Resident memory split as the kernel counts it: anonymous (heaps: where a leak shows) and
 *  file-backed (LMDB's memory map: pages of the data file, which grows with the data). */
function rss(pid: number): { anonMiB: number; fileMiB: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'latin1');
    const kib = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
    return { anonMiB: kib('RssAnon') / 1024, fileMiB: (kib('RssFile') + kib('RssShmem')) / 1024 };
  } catch {
    return { anonMiB: 0, fileMiB: 0 };
  }
}

function fds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

/** Least-squares slope of y over x (x in minutes). */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

interface Tier {
  name: string;
  pid: number;
  samples: { atMin: number; rssMiB: number; anonMiB: number; fileMiB: number; fds: number }[];
}

export async function soakFigures(opts: SoakOptions): Promise<Figure[]> {
  const data = mkdtempSync(join(tmpdir(), 'apm-bench-soak-'));
  const procs: ChildProcess[] = [];
  try {
    const core = await start(['core', '--listen', '127.0.0.1:0', '--data', `${data}/core`], /apm core: (http:\/\/127\.0\.0\.1:\d+)\//);
    procs.push(core.proc);
    const url = core.match[1]!;
    const tiers: Tier[] = [{ name: 'core', pid: core.proc.pid!, samples: [] }];
    const racks: string[] = [];
    const rackPorts: number[] = [];
    for (let r = 0; r < Math.ceil(opts.servers / 40); r++) {
      const rack = await start(['rack', '--rack', `s${r}`, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--core', url, '--spool', `${data}/rack-${r}`], /UDP on 127\.0\.0\.1:(\d+) .*metrics on (http:\/\/127\.0\.0\.1:\d+)/);
      procs.push(rack.proc);
      rackPorts.push(Number(rack.match[1]));
      racks.push(rack.match[2]!);
      tiers.push({ name: `rack s${r}`, pid: rack.proc.pid!, samples: [] });
    }
    // A real edge with its host collector, beside the simulated fleet.
    const edge = await start(['edge', '--server', 'soak-edge', '--rack', `127.0.0.1:${rackPorts[0]}`, '--statsd', '127.0.0.1:0'], /apm edge/);
    procs.push(edge.proc);
    tiers.push({ name: 'edge', pid: edge.proc.pid!, samples: [] });
    // Stored queries and a live subscriber keep the query path busy too.
    for (const q of ['FROM * SELECT sim.cpu.0 WINDOW 5s COMPUTE max, p99, count', 'FROM * SELECT sim.rpc_latency_ms.0 WINDOW 5s COMPUTE p50, p99']) {
      await fetch(`${url}/api/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: q, query: q }) });
    }
    const sim = await start(['simulate', ...rackPorts.flatMap((p) => ['--rack', `127.0.0.1:${p}`]), '--servers', String(opts.servers), '--metrics', String(opts.metrics), '--prefix', 'soak'], /apm simulate: \d+ servers/);
    procs.push(sim.proc);
    const t0 = Date.now();
    const end = t0 + opts.minutes * 60_000;
    let c0: Map<string, number> | null = null;
    let warmAt = 0;
    console.log(`  soak: ${opts.servers} servers × ${opts.metrics} metrics + an edge for ${opts.minutes} min; a sample every ${sampleMs / 1000} s`);
    while (Date.now() < end) {
      await new Promise((r) => setTimeout(r, sampleMs));
      const atMin = (Date.now() - t0) / 60_000;
      if (c0 === null && Date.now() - t0 >= warmupMs) {
        c0 = await prom(`${url}/metrics`);
        warmAt = Date.now();
      }
      if (Date.now() - t0 < warmupMs) continue;
      for (const t of tiers) t.samples.push({ atMin, rssMiB: stat(t.pid).rssMiB, ...rss(t.pid), fds: fds(t.pid) });
      const last = tiers
        .map((t) => {
          const x = t.samples[t.samples.length - 1]!;
          return `${t.name} ${x.anonMiB.toFixed(0)}+${x.fileMiB.toFixed(0)} MiB/${x.fds} fds`;
        })
        .join(', ');
      console.log(`  ${atMin.toFixed(1).padStart(5)} min: ${last}`);
    }
    const c1 = await prom(`${url}/metrics`);
    const rk = await Promise.all(racks.map((r) => prom(`${r}/metrics`)));
    const points = (m: Map<string, number>) => (m.get('apm_core_points_ingested_total') ?? 0) + (m.get('apm_core_summaries_ingested_total') ?? 0);
    if (c0 === null || !(points(c1) > points(c0))) {
      throw new Error(`bench soak INVALID RUN: ${c0 === null ? `the run (${opts.minutes} min) ended before its ${warmupMs / 60_000} min warm-up` : `the core stored no points after warm-up (${points(c1)} in all)`}; the core's last output:\n${core.lines.slice(-20).join('\n')}`);
    }
    const out: Figure[] = [
      { name: 'soak: points stored per second after warm-up', value: c0 === null ? 0 : (points(c1) - points(c0)) / ((Date.now() - warmAt) / 1000), unit: 'points/s' },
      { name: 'soak: parts lost for good (all racks)', value: rk.reduce((a, m) => a + (m.get('apm_rack_parts_lost_total') ?? 0), 0), unit: 'parts' },
    ];
    for (const t of tiers.filter((x) => x.name === 'core' || x.name === 'rack s0' || x.name === 'edge')) {
      const first = t.samples[0];
      const lastS = t.samples[t.samples.length - 1];
      if (first === undefined || lastS === undefined) continue;
      const xs = t.samples.map((s) => s.atMin);
      const secondHalf = t.samples.filter((s) => s.atMin >= (first.atMin + lastS.atMin) / 2);
      out.push(
        { name: `soak: ${t.name} RSS after warm-up → end`, value: first.rssMiB, unit: `→ ${lastS.rssMiB.toFixed(1)} MiB (max ${Math.max(...t.samples.map((s) => s.rssMiB)).toFixed(1)})` },
        { name: `soak: ${t.name} anonymous RSS (heaps) after warm-up → end`, value: first.anonMiB, unit: `→ ${lastS.anonMiB.toFixed(1)} MiB` },
        { name: `soak: ${t.name} anonymous RSS trend, whole run`, value: slope(xs, t.samples.map((s) => s.anonMiB)), unit: 'MiB/min' },
        { name: `soak: ${t.name} anonymous RSS trend, second half`, value: slope(secondHalf.map((s) => s.atMin), secondHalf.map((s) => s.anonMiB)), unit: 'MiB/min' },
        { name: `soak: ${t.name} file-backed RSS (LMDB map) after warm-up → end`, value: first.fileMiB, unit: `→ ${lastS.fileMiB.toFixed(1)} MiB` },
        { name: `soak: ${t.name} open fds after warm-up → end`, value: first.fds, unit: `→ ${lastS.fds} (max ${Math.max(...t.samples.map((s) => s.fds))})` },
      );
    }
    return out;
  } finally {
    for (const p of procs.reverse()) await stopChild(p);
    rmSync(data, { recursive: true, force: true });
  }
}
