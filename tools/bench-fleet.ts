// The fleet benchmark (issue 7): real `apm core`, `apm rack` (one per 40 servers) and
// `apm simulate` processes on loopback, ramped through fleet sizes; per step the points offered
// and stored, CPU seconds per million points and RSS of each tier (from /proc), UDP loss and
// recovery, freshness over the live stream, disk per point, results-API latency under
// load (wrk when installed, else autocannon), and whether the step kept up. The headline: the largest fleet sustained.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { httpLoad, wrkInstalled, type LoadClient } from './bench-http.js';

const apm = fileURLToPath(new URL('../../tools/apm', import.meta.url));

export interface FleetStep {
  servers: number;
  metricsPerServer: number;
  pointsPerSecondOffered: number;
  pointsPerSecondStored: number;
  coreCpuSecondsPerMillionPoints: number;
  rackCpuSecondsPerMillionPoints: number;
  simulatorCpuPercent: number;
  coreRssMiB: number;
  rackRssMiBMax: number;
  udpLossPercent: number;
  udpLostForGoodPercent: number;
  freshnessP50Ms: number;
  freshnessP99Ms: number;
  /** Observations of one metric present in the stored-query windows, as a share of all expected. */
  completenessPercent: number;
  /** Windows whose first result was revised by data that arrived after the window closed. */
  revisedWindowsPercent: number;
  /** Windows that ended in the measured interval and never arrived on the live stream (within 5 s of their close). */
  windowsMissing: number;
  resultsQueryP99Ms: number;
  /** The load client of resultsQueryP99Ms (tools/bench-http.ts). */
  resultsQueryClient: LoadClient;
  keptUp: boolean;
}

interface Proc {
  proc: ChildProcess;
  lines: string[];
}

/** Starts `apm <args>` and waits (at most 60 s; the process is killed then) for its ready line. */
export function start(args: string[], ready: RegExp, startMs = 60_000): Promise<Proc & { match: RegExpExecArray }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(apm, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let done = false;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      proc.kill('SIGKILL');
      reject(new Error(`bench INVALID RUN: apm ${args[0]} printed no ready line in ${startMs / 1000} s:\n${lines.join('\n')}`));
    }, startMs);
    const onData = (d: Buffer) => {
      for (const l of d.toString().split('\n')) if (l !== '') lines.push(l);
      if (lines.length > 200) lines.splice(0, lines.length - 200);
      const m = done ? null : ready.exec(lines.join('\n'));
      if (m) {
        done = true;
        clearTimeout(timer);
        resolve({ proc, lines, match: m });
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (!done) reject(new Error(`apm ${args[0]} exited (${code ?? signal}) during start-up:\n${lines.join('\n')}`));
      done = true;
    });
  });
}

/**
 * CPU ticks and RSS of a live process. Throws when it is gone: a dead child read as zeros, so a
 * simulator that crashed mid-step printed a negative CPU share and blamed the system's capacity,
 * and a crashed edge's RSS fell to 0 in the soak (a "trend" that looked like no leak).
 */
export function stat(pid: number): { ticks: number; rssMiB: number } {
  let s: string;
  let status: string;
  try {
    s = readFileSync(`/proc/${pid}/stat`, 'latin1');
    status = readFileSync(`/proc/${pid}/status`, 'latin1');
  } catch (err) {
    throw new Error(`bench INVALID RUN: process ${pid} is gone (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): a child died during the run`);
  }
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // A zombie (exited, not yet reaped) has no VmRSS: dead too.
  if (f[0] === 'Z') throw new Error(`bench INVALID RUN: process ${pid} exited during the run`);
  const rss = /VmRSS:\s+(\d+)/.exec(status);
  return { ticks: Number(f[11]) + Number(f[12]), rssMiB: Number(rss?.[1] ?? 0) / 1024 };
}

/** Stops a child: SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited (at once if it had). */
export async function stopChild(p: ChildProcess, graceMs = 30_000): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((r) => p.once('exit', r));
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Throws naming the child that has exited, if any (checked before a step's figures are computed). */
export function assertAlive(children: readonly { name: string; proc: ChildProcess }[]): void {
  for (const c of children) {
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) throw new Error(`bench INVALID RUN: ${c.name} exited (${c.proc.exitCode ?? c.proc.signalCode}) during the run`);
  }
}

export async function prom(url: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const text = await (await fetch(url)).text();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

const sumOf = (maps: Map<string, number>[], key: string) => maps.reduce((a, m) => a + (m.get(key) ?? 0), 0);

/** One fleet size: starts everything, warms up, measures for `seconds`, stops everything. */
export async function fleetStep(servers: number, metrics: number, seconds: number): Promise<FleetStep> {
  const data = mkdtempSync(join(tmpdir(), 'apm-bench-fleet-'));
  const procs: ChildProcess[] = [];
  try {
    const core = await start(['core', '--listen', '127.0.0.1:0', '--data', `${data}/core`], /apm core: (http:\/\/127\.0\.0\.1:\d+)\//);
    procs.push(core.proc);
    const url = core.match[1]!;
    const racks: { udp: number; http: string; pid: number }[] = [];
    for (let r = 0; r < Math.ceil(servers / 40); r++) {
      const rack = await start(['rack', '--rack', `b${r}`, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--core', url, '--spool', `${data}/rack-${r}`], /UDP on 127\.0\.0\.1:(\d+) .*metrics on (http:\/\/127\.0\.0\.1:\d+)/);
      procs.push(rack.proc);
      racks.push({ udp: Number(rack.match[1]), http: rack.match[2]!, pid: rack.proc.pid! });
    }
    const created = await fetch(`${url}/api/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'cpu', query: 'FROM * SELECT sim.cpu.0 WINDOW 5s COMPUTE max, p99, count' }) });
    const { id } = (await created.json()) as { id: string };
    const sim = await start(['simulate', ...racks.flatMap((r) => ['--rack', `127.0.0.1:${r.udp}`]), '--servers', String(servers), '--metrics', String(metrics), '--prefix', 'fleet'], /apm simulate: \d+ servers/);
    procs.push(sim.proc);
    // Freshness: window close (end + the core's 3 s query lateness) → event on the live stream.
    // Every window's first arrival is kept by its end; the step then judges exactly the windows
    // that ended in the measured interval (before: those that happened to arrive while it ran, so
    // the late ones — the slow ones — were left out, and a stream that stalled still kept up).
    const arrived = new Map<number, number>();
    const finalCount = new Map<number, number>();
    const revised = new Set<number>();
    const abort = new AbortController();
    const live = (async () => {
      const res = await fetch(`${url}/api/v1/queries/${id}/live`, { signal: abort.signal });
      const reader = res.body!.getReader();
      let text = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        text += new TextDecoder().decode(value);
        let i: number;
        while ((i = text.indexOf('\n\n')) >= 0) {
          const m = /data: (.*)/.exec(text.slice(0, i));
          text = text.slice(i + 2);
          if (m === null) continue;
          const w = JSON.parse(m[1]!) as { endMs: number; revision: number; servers: number; count: number };
          // Completeness from the data itself (every server reports sim.cpu.0 every second), on
          // each window's final revision; revisions mean data arrived after the window closed.
          if (w.revision === 0) {
            if (arrived.size < 10_000) arrived.set(w.endMs, Date.now());
            finalCount.set(w.endMs, w.count);
          } else if (finalCount.has(w.endMs)) {
            finalCount.set(w.endMs, w.count);
            revised.add(w.endMs);
          }
        }
      }
    })().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 12_000)); // warm-up: every server named, racks closing seconds
    const c0 = await prom(`${url}/metrics`);
    const r0 = await Promise.all(racks.map((r) => prom(`${r.http}/metrics`)));
    const t0 = { core: stat(core.proc.pid!).ticks, racks: racks.reduce((a, r) => a + stat(r.pid).ticks, 0), sim: stat(sim.proc.pid!).ticks, at: Date.now() };
    let rackRss = 0;
    let coreRss = 0;
    const end = Date.now() + seconds * 1000;
    // (Windows closing during the measurement are counted; the first may straddle its start.)
    while (Date.now() < end) {
      await new Promise((r) => setTimeout(r, 1000));
      coreRss = Math.max(coreRss, stat(core.proc.pid!).rssMiB);
      for (const r of racks) rackRss = Math.max(rackRss, stat(r.pid).rssMiB);
    }
    const t1 = { core: stat(core.proc.pid!).ticks, racks: racks.reduce((a, r) => a + stat(r.pid).ticks, 0), sim: stat(sim.proc.pid!).ticks, at: Date.now() };
    const c1 = await prom(`${url}/metrics`);
    const r1 = await Promise.all(racks.map((r) => prom(`${r.http}/metrics`)));
    const dt = (t1.at - t0.at) / 1000;
    const stored = (c1.get('apm_core_points_ingested_total')! + c1.get('apm_core_summaries_ingested_total')! - c0.get('apm_core_points_ingested_total')! - c0.get('apm_core_summaries_ingested_total')!) / dt;
    const millions = (stored * dt) / 1e6;
    // Parts accepted on time or late (a fleet running behind delivers them late: still received).
    const received = sumOf(r1, 'apm_rack_parts_received_total') + sumOf(r1, 'apm_rack_parts_late_total') - sumOf(r0, 'apm_rack_parts_received_total') - sumOf(r0, 'apm_rack_parts_late_total');
    const nacked = sumOf(r1, 'apm_rack_parts_nacked_total') - sumOf(r0, 'apm_rack_parts_nacked_total');
    const lost = sumOf(r1, 'apm_rack_parts_lost_total') - sumOf(r0, 'apm_rack_parts_lost_total');
    // A step where nothing reached the racks or the core measures nothing: say so, never print zeros.
    if (!(stored > 0) || !(received > 0)) {
      const refused = [...c1].filter(([k, v]) => k.startsWith('apm_core_requests_rejected_total{') && v > (c0.get(k) ?? 0)).map(([k, v]) => `${k.slice(k.indexOf('{'))}=${v - (c0.get(k) ?? 0)}`);
      abort.abort(); // the live stream ends here, not when the core is stopped
      throw new Error(`bench fleet INVALID RUN (${servers} servers): the core stored ${stored} points/s and the racks accepted ${received} parts in ${dt.toFixed(0)} s (core refusals: ${refused.join(', ') || 'none'}); the core's last output:\n${core.lines.slice(-20).join('\n')}`);
    }
    // The windows that ended in the measured interval; each gets until its close (end + 3 s
    // lateness) plus 5 s to arrive — one window late is no longer keeping up.
    const expected: number[] = [];
    for (let e = Math.ceil(t0.at / 5000) * 5000; e <= t1.at; e += 5000) expected.push(e);
    const lastDue = (expected[expected.length - 1] ?? t1.at) + 3000 + 5000;
    while (Date.now() < lastDue && expected.some((e) => !arrived.has(e))) await new Promise((r) => setTimeout(r, 200));
    await new Promise((r) => setTimeout(r, 3000)); // revisions of the last windows
    const missing = expected.filter((e) => !arrived.has(e));
    const lags = expected.filter((e) => arrived.has(e)).map((e) => arrived.get(e)! - (e + 3000));
    const load = await httpLoad(wrkInstalled() ? 'wrk' : 'autocannon', `${url}/api/v1/queries/${id}/results?from=-1h`, 10, 5);
    abort.abort();
    if (load.failed > 0 || !(load.requests > 0)) throw new Error(`bench fleet INVALID RUN (${servers} servers): results under load (${load.client}) ${load.requests} requests, ${load.failed} failed`);
    await live;
    lags.sort((a, b) => a - b);
    const q = (p: number) => lags[Math.min(lags.length - 1, Math.floor(p * (lags.length - 1)))] ?? NaN;
    const offered = servers * metrics;
    const counts = expected.filter((e) => finalCount.has(e)).map((e) => finalCount.get(e)!);
    const completeness = counts.length === 0 ? 0 : counts.reduce((a, b) => a + b, 0) / (counts.length * servers * 5);
    return {
      servers,
      metricsPerServer: metrics,
      pointsPerSecondOffered: offered,
      pointsPerSecondStored: stored,
      coreCpuSecondsPerMillionPoints: (t1.core - t0.core) / 100 / millions,
      rackCpuSecondsPerMillionPoints: (t1.racks - t0.racks) / 100 / millions,
      simulatorCpuPercent: (t1.sim - t0.sim) / dt,
      coreRssMiB: coreRss,
      rackRssMiBMax: rackRss,
      udpLossPercent: (100 * nacked) / Math.max(1, received + lost),
      udpLostForGoodPercent: (100 * lost) / Math.max(1, received + lost),
      freshnessP50Ms: q(0.5),
      freshnessP99Ms: q(0.99),
      resultsQueryP99Ms: load.p99Ms,
      resultsQueryClient: load.client,
      completenessPercent: 100 * completeness,
      revisedWindowsPercent: counts.length === 0 ? 0 : (100 * expected.filter((e) => revised.has(e)).length) / counts.length,
      windowsMissing: missing.length,
      // Kept up: every window complete (all servers' seconds stored), each result on the live
      // stream within one window (5 s) of its close, and the core's intake rate within 5% of
      // the offered rate (it is sampled over whole seconds of up to one batch per rack, hence the slack).
      keptUp: missing.length === 0 && completeness >= 0.999 && lags.length > 0 && q(1) <= 5000 && stored >= 0.95 * offered,
      // (A revised window still counts as kept up: eventual consistency, DESIGN §3.)
    };
  } finally {
    for (const p of procs.reverse()) await stopChild(p);
    rmSync(data, { recursive: true, force: true });
  }
}
