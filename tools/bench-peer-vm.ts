// VictoriaMetrics beside apm (issue 14's table, DESIGN §7): the single-node server of Debian's
// `victoria-metrics` package (1.79, the version DESIGN's published figures name) started on
// loopback with a data directory of its own, fed the very samples the query bench stores in apm
// (tools/shapes.ts' shapes with tools/bench-batch.ts' seeds, stepped the same way) and asked each
// cell of the table as MetricsQL with nocache=1, on the same box, one system at a time.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import { ShapeColumns } from './shapes.js';

/**
 * The `victoria-metrics` binary to run: APM_BENCH_VM (which must run: asked for, it is never
 * skipped quietly), else the one on PATH, else null (not installed).
 */
export function vmBinary(env: NodeJS.ProcessEnv = process.env): string | null {
  const asked = env.APM_BENCH_VM;
  const bin = asked ?? 'victoria-metrics';
  const r = spawnSync(bin, ['-version'], { stdio: 'ignore', timeout: 10_000 });
  if (r.error === undefined && r.status === 0) return bin;
  if (asked !== undefined) throw new Error(`bench query INVALID RUN: APM_BENCH_VM=${asked} does not run (${r.error?.message ?? `exit status ${r.status}`})`);
  return null;
}

/** What a MetricsQL range query answers: per series, its labels and its [seconds, "value"] points. */
export interface VmSeries {
  metric: Record<string, string>;
  values: [number, string][];
}

/** The racks, servers and metrics of tools/bench-query.ts' ingest(), as VictoriaMetrics labels. */
export interface VmFleet {
  racks: number;
  servers: number;
  metrics: number;
  /** The seed of rack r's shapes (BatchMaker's `seed`). */
  seedOf: (rack: number) => number;
  rackName: (rack: number) => string;
}

/** What `-version` prints; Debian's build prints nothing, so then the package's version. */
function vmVersion(bin: string): string {
  const printed = (spawnSync(bin, ['-version'], { encoding: 'utf8' }).stdout ?? '').trim();
  if (printed !== '') return printed;
  const pkg = spawnSync('dpkg-query', ['-W', '-f=${Version}', 'victoria-metrics'], { encoding: 'utf8' });
  return pkg.status === 0 && pkg.stdout.trim() !== '' ? `victoria-metrics ${pkg.stdout.trim()} (Debian)` : `${bin} (version not printed)`;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

export class VictoriaMetrics {
  private constructor(
    readonly base: string,
    private readonly proc: ChildProcess,
    private readonly dir: string,
    private readonly client: Pool,
    readonly version: string,
    private readonly log: string[],
  ) {}

  /** Starts the server on 127.0.0.1 with a fresh data directory; answers once /health says OK (30 s at most). */
  static async start(bin: string): Promise<VictoriaMetrics> {
    const dir = mkdtempSync(join(tmpdir(), 'apm-bench-vm-'));
    const port = await freePort();
    const proc = spawn(bin, [`-storageDataPath=${dir}`, `-httpListenAddr=127.0.0.1:${port}`, '-retentionPeriod=100y', '-loggerLevel=ERROR'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const log: string[] = [];
    proc.on('error', (err) => void (log.length < 50 && log.push(`spawn: ${err.message}`)));
    proc.stderr!.setEncoding('utf8').on('data', (s: string) => void (log.length < 50 && log.push(s.trim())));
    const base = `http://127.0.0.1:${port}`;
    const client = new Pool(base, { connections: 1 });
    const version = vmVersion(bin);
    const vm = new VictoriaMetrics(base, proc, dir, client, version, log);
    const until = Date.now() + 30_000;
    for (;;) {
      if (vm.exited()) {
        await vm.stop();
        throw new Error(`bench query INVALID RUN: victoria-metrics exited (${proc.exitCode ?? proc.signalCode}) at start (its port ${port} taken since it was found free?): ${log.join(' | ')}`);
      }
      try {
        const res = await client.request({ path: '/health', method: 'GET' });
        const text = await res.body.text();
        if (res.statusCode === 200 && text.trim() === 'OK') return vm;
      } catch {
        // not listening yet
      }
      if (Date.now() > until) {
        await vm.stop();
        throw new Error(`bench query INVALID RUN: victoria-metrics did not answer /health within 30 s: ${log.join(' | ')}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Imports `seconds` seconds from `t` of every series of `fleet` (JSON lines, one POST per rack:
   * VictoriaMetrics' fastest ingest format), flushes them to searchable parts, and checks it holds
   * every sample of `bench.metric_0`. Returns the samples imported.
   */
  async importFleet(fleet: VmFleet, t: number, seconds: number): Promise<number> {
    let samples = 0;
    const stamps = JSON.stringify(Array.from({ length: seconds }, (_, k) => (t + k) * 1000));
    for (let r = 0; r < fleet.racks; r++) {
      const series = fleet.servers * fleet.metrics;
      const shapes = new ShapeColumns(series, fleet.seedOf(r), fleet.metrics);
      const values = Array.from({ length: series }, () => new Float64Array(seconds));
      for (let k = 0; k < seconds; k++) {
        shapes.step(t + k);
        for (let i = 0; i < series; i++) values[i]![k] = shapes.values[i]!;
      }
      const rack = fleet.rackName(r);
      const lines: string[] = [];
      for (let i = 0; i < series; i++) {
        const s = Math.floor(i / fleet.metrics);
        const labels = JSON.stringify({ __name__: `bench.metric_${i % fleet.metrics}`, server: `${rack}-${s}`, rack });
        lines.push(`{"metric":${labels},"values":${JSON.stringify(Array.from(values[i]!))},"timestamps":${stamps}}`);
      }
      const res = await this.client.request({ path: '/api/v1/import', method: 'POST', body: lines.join('\n') + '\n' });
      const text = await res.body.text();
      if (res.statusCode !== 204 && res.statusCode !== 200) throw new Error(`bench query INVALID RUN: victoria-metrics import of rack ${rack} answered ${res.statusCode} ${text.slice(0, 300)}`);
      samples += series * seconds;
    }
    const flushed = await this.client.request({ path: '/internal/force_flush', method: 'GET' });
    await flushed.body.text();
    await this.settled();
    const want = fleet.racks * fleet.servers * seconds;
    const until = Date.now() + 30_000;
    for (;;) {
      const got = await this.query(`sum(count_over_time({__name__="bench.metric_0"}[${seconds}s]))`, t + seconds - 1, t + seconds - 1, 1);
      const n = Number(got[0]?.values[0]?.[1] ?? 0);
      if (n === want) return samples;
      if (Date.now() > until) throw new Error(`bench query INVALID RUN: victoria-metrics holds ${n} samples of bench.metric_0 after import (want ${want}): ${this.log.join(' | ')}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /**
   * Waits (30 s at most) until no merge of parts runs nor rows wait to be added: the import's
   * background work would otherwise overlap the timing of either system on a 2-core box.
   */
  async settled(): Promise<void> {
    const until = Date.now() + 30_000;
    let quiet = 0;
    while (Date.now() < until) {
      const res = await this.client.request({ path: '/metrics', method: 'GET' });
      const text = await res.body.text();
      let busy = 0;
      for (const line of text.split('\n')) if (/^(vm_active_merges|vm_pending_rows)\{/.test(line)) busy += Number(line.slice(line.lastIndexOf(' ') + 1)) || 0;
      quiet = busy === 0 ? quiet + 1 : 0;
      if (quiet >= 3) return;
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** The request path of a range query over [start, end] seconds at `step` seconds, its rollup cache off. */
  rangePath(query: string, start: number, end: number, step: number): string {
    return `/api/v1/query_range?${new URLSearchParams({ query, start: String(start), end: String(end), step: `${step}s`, nocache: '1' }).toString()}`;
  }

  /** A range query on the kept-alive connection (the bench's undici client for apm too). */
  async get(path: string): Promise<VmSeries[]> {
    const res = await this.client.request({ path, method: 'GET' });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`bench query INVALID RUN: victoria-metrics answered ${res.statusCode} to ${decodeURIComponent(path).slice(0, 200)}: ${text.slice(0, 300)}`);
    return (JSON.parse(text) as { data: { result: VmSeries[] } }).data.result;
  }

  query(query: string, start: number, end: number, step: number): Promise<VmSeries[]> {
    return this.get(this.rangePath(query, start, end, step));
  }

  /** Whether the process has ended (by exit or by a signal: exitCode alone stays null then). */
  exited(): boolean {
    return this.proc.exitCode !== null || this.proc.signalCode !== null || this.proc.pid === undefined;
  }

  async stop(): Promise<void> {
    await this.client.close().catch(() => undefined);
    if (!this.exited()) {
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGTERM');
      const killer = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(killer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * apm's COMPUTE list of one table cell as MetricsQL over `selector`, the window [T−5 s, T) of apm
 * being VictoriaMetrics' (T−5 s, T] shifted by a second (samples lie on whole seconds): series
 * named by the function, as apm names its values. VictoriaMetrics has no exact percentile across
 * series: its own answer for "p99 of a fleet" is histogram_quantiles over histogram_over_time
 * (buckets of about 12 % relative width), which reads the same raw samples. The points per
 * window are asked apart (countQl), untimed: a query reads its samples once per subquery.
 */
export function metricsQl(fns: readonly string[], selector: string): string {
  const parts: string[] = [];
  for (const f of fns) {
    if (f === 'min') parts.push(`alias(min(min_over_time(${selector}[5s])), "min")`);
    else if (f === 'max') parts.push(`alias(max(max_over_time(${selector}[5s])), "max")`);
    else if (f === 'avg') parts.push(`alias(sum(sum_over_time(${selector}[5s])) / sum(count_over_time(${selector}[5s])), "avg")`);
  }
  const phis = fns.filter((f) => /^p\d+$/.test(f)).map((f) => Number(f.slice(1)) / 100);
  if (phis.length > 0) parts.push(`histogram_quantiles("phi", ${phis.join(', ')}, sum(histogram_over_time(${selector}[5s])) by (vmrange))`);
  return parts.length === 1 ? parts[0]! : `union(${parts.join(', ')})`;
}

/** The points per window over `selector` (the check that VictoriaMetrics holds what apm holds). */
export function countQl(selector: string): string {
  return `sum(count_over_time(${selector}[5s]))`;
}

/** The series of `name` (a function of metricsQl, phi for a percentile, '' for an answer's only series) in an answer, by window start second. */
export function vmValues(result: VmSeries[], name: string): Map<number, number> {
  const s = name === '' ? result[0] : result.find((r) => r.metric['__name__'] === name || r.metric['phi'] === name);
  return new Map((s?.values ?? []).map(([at, v]) => [at - 4, Number(v)]));
}
