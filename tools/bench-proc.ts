// A real `apm core` process for the core benches (issue 12): started as `node dist/tools/cli.js
// core` on a free loopback port with a fresh data directory, fed over HTTP with undici, its CPU
// (utime + stime of the whole process: the HTTP thread and every worker thread) read from /proc.

import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Pool } from 'undici';
import { prom } from './bench-fleet.js';

/** USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s on Linux. */
export const ticksPerSecond = 100;

export interface CoreProcess {
  url: string;
  pid: number;
  proc: ChildProcess;
  /** Its last lines of output (for error messages). */
  lines: string[];
  /** SIGTERM, wait for the exit, delete the data directory. */
  stop(): Promise<void>;
}

/**
 * Starts a daemon under bench as an operator starts it: through tools/apm, with its node flags
 * for that command (it execs node, so the pid is the daemon's). APM_BENCH_NODE_ARGS (e.g.
 * --cpu-prof) profiles it under load: tools/apm passes them to node as APM_NODE_ARGS.
 */
export function spawnBenched(args: string[], stdio: StdioOptions): ChildProcess {
  const apm = fileURLToPath(new URL('../../tools/apm', import.meta.url));
  return spawn(apm, args, { stdio, env: { ...process.env, APM_NODE_ARGS: process.env.APM_BENCH_NODE_ARGS ?? '' } });
}

/** Starts `apm core` with `args` (beside --listen and --data) and waits for its ready line. */
export async function startCore(args: string[]): Promise<CoreProcess> {
  const data = mkdtempSync(join(tmpdir(), 'apm-bench-core-'));
  const proc = spawnBenched(['core', '--listen', '127.0.0.1:0', '--data', `${data}/core`, ...args], ['ignore', 'pipe', 'pipe']);
  const lines: string[] = [];
  const url = await new Promise<string>((resolve, reject) => {
    let ready = false;
    const timer = setTimeout(() => reject(new Error(`apm core ${args.join(' ')} printed no ready line in 60 s:\n${lines.join('\n')}`)), 60_000);
    const onData = (d: Buffer) => {
      for (const l of d.toString().split('\n')) if (l !== '') lines.push(l);
      if (lines.length > 100) lines.splice(0, lines.length - 100);
      const m = ready ? null : /apm core: (http:\/\/127\.0\.0\.1:\d+)\//.exec(lines.join('\n'));
      if (m !== null) {
        ready = true;
        clearTimeout(timer);
        resolve(m[1]!);
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (!ready) reject(new Error(`apm core ${args.join(' ')} exited (${code ?? signal}) during start-up:\n${lines.join('\n')}`));
    });
  }).catch((err: unknown) => {
    // Nothing left behind by a start that failed (before: the core ran on, orphaned, and its data stayed).
    proc.kill('SIGKILL');
    rmSync(data, { recursive: true, force: true });
    throw err;
  });
  return {
    url,
    pid: proc.pid!,
    proc,
    lines,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 60_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** utime + stime of every thread of `pid`, in ticks (1/100 s). */
export function cpuTicks(pid: number, file = `/proc/${pid}/stat`): number {
  const s = readFileSync(file, 'latin1');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/** The whole machine's CPU time from /proc/stat, in ticks summed over its CPUs: busy (user, nice, system, irq, softirq, steal), idle, iowait. */
export interface BoxTicks {
  busy: number;
  idle: number;
  iowait: number;
}

export function boxTicks(): BoxTicks {
  const f = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  return { busy: user + nice + system + irq + softirq + steal, idle, iowait };
}

/**
 * Where the whole machine's CPU went between two boxTicks() samples, in % of one core (a 2-core
 * machine has 200 %): the core (`coreTicks`), this bench process (`benchTicks`), every other
 * process and the kernel's own threads, and the time no thread ran (waiting for the disk, or idle).
 */
export function boxShares(before: BoxTicks, after: BoxTicks, coreTicks: number, benchTicks: number): string {
  const total = after.busy + after.idle + after.iowait - (before.busy + before.idle + before.iowait);
  if (!(total > 0)) return 'box: no ticks';
  const cores = availableParallelism();
  const pct = (t: number) => `${((100 * cores * t) / total).toFixed(0)}%`;
  const others = after.busy - before.busy - coreTicks - benchTicks;
  return `box of ${cores * 100}%: core ${pct(coreTicks)}, this bench ${pct(benchTicks)}, other processes ${pct(Math.max(0, others))}, waiting for the disk ${pct(after.iowait - before.iowait)}, idle ${pct(after.idle - before.idle)}`;
}

/** utime + stime per thread of `pid` (thread id → ticks); the main thread's id is `pid`. */
export function threadTicks(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      out.set(Number(tid), cpuTicks(pid, `/proc/${pid}/task/${tid}/stat`));
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

/**
 * Where a process's CPU went between two threadTicks() samples, as text: its main thread (the
 * core's HTTP thread) and its busiest other threads (workers; V8 and libuv helpers), in % of one core.
 */
export function threadShares(pid: number, before: Map<number, number>, after: Map<number, number>, seconds: number): { text: string; totalPercent: number } {
  const percent = (ticks: number) => (100 * ticks) / ticksPerSecond / seconds;
  const pct = (ticks: number) => `${percent(ticks).toFixed(0)}%`;
  const others: number[] = [];
  for (const [tid, t] of after) if (tid !== pid) others.push(t - (before.get(tid) ?? 0));
  others.sort((a, b) => b - a);
  const main = (after.get(pid) ?? 0) - (before.get(pid) ?? 0);
  const rest = others.slice(3).reduce((a, b) => a + b, 0);
  return { text: `main ${pct(main)}, busiest others ${others.slice(0, 3).map(pct).join(' ')}, the rest ${pct(rest)}`, totalPercent: percent(main + others.reduce((a, b) => a + b, 0)) };
}

/** The core's /metrics as name → value; throws naming the core's last output when it is gone. */
export async function coreMetrics(core: CoreProcess): Promise<Map<string, number>> {
  if (core.proc.exitCode !== null || core.proc.signalCode !== null) throw new Error(`apm core exited (${core.proc.exitCode ?? core.proc.signalCode}) during the run:\n${core.lines.join('\n')}`);
  return prom(`${core.url}/metrics`);
}

/** A counter or gauge of a /metrics map (0 when absent: counters with no events yet). */
export function metric(m: Map<string, number>, name: string): number {
  return m.get(name) ?? 0;
}

/** Every non-zero `apm_core_requests_rejected_total{reason=…}` increase between two samples, as text. */
export function rejections(before: Map<string, number>, after: Map<string, number>): string {
  const out: string[] = [];
  for (const [k, v] of after) if (k.startsWith('apm_core_requests_rejected_total{') && v - (before.get(k) ?? 0) > 0) out.push(`${k.slice(k.indexOf('{'))}=${v - (before.get(k) ?? 0)}`);
  return out.join(', ');
}

export interface SendResult {
  bodies: number;
  /** Answers 503 (head full, worker busy) that were retried, as a rack retries them. */
  retried: number;
  /** performance.now() when the last body was acknowledged. */
  ackedAt: number;
}

const contentType = 'application/x-apm-second';

/**
 * Posts each rack's bodies in order, the racks concurrently (one request in flight per rack, as
 * `apm rack` forwards). A 503 is retried after 20 ms (counted); any other answer but 204 throws.
 */
export async function sendRacks(pool: Pool, core: CoreProcess, racks: readonly (readonly Uint8Array[])[]): Promise<SendResult> {
  let bodies = 0;
  let retried = 0;
  let ackedAt = performance.now();
  await Promise.all(
    racks.map(async (list, r) => {
      for (let k = 0; k < list.length; k++) {
        const retryUntil = Date.now() + 120_000;
        for (;;) {
          let res;
          try {
            res = await pool.request({ path: '/api/v1/ingest', method: 'POST', body: list[k]!, headers: { 'content-type': contentType } });
          } catch (err) {
            throw new Error(`rack ${r} body ${k}: ${(err as Error).message}; the core's last output:\n${core.lines.join('\n')}`, { cause: err });
          }
          const text = await res.body.text();
          if (res.statusCode === 204) break;
          if (res.statusCode !== 503 || Date.now() > retryUntil) throw new Error(`rack ${r} body ${k}: the core answered ${res.statusCode} ${text}`);
          retried++;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        bodies++;
        ackedAt = performance.now();
      }
    }),
  );
  return { bodies, retried, ackedAt };
}

export interface Drained {
  metrics: Map<string, number>;
  /** performance.now() of the /metrics sample that showed it. */
  at: number;
}

/**
 * Waits until the core has ingested `points` (points + summaries counters) and holds nothing
 * unwritten: apm_core_head_bytes is 0 and apm_core_rows_written_total stopped growing (a scrape
 * asks the workers; one busy for more than 2 s answers with its last report, up to 1 s old).
 * `onSample` sees each /metrics sample (every `everyMs`).
 */
export async function drained(core: CoreProcess, o: { points: number; timeoutMs: number; everyMs?: number; onSample?: (m: Map<string, number>, at: number) => void }): Promise<Drained> {
  const deadline = Date.now() + o.timeoutMs;
  let prevRows = -1;
  for (;;) {
    const m = await coreMetrics(core);
    const at = performance.now();
    o.onSample?.(m, at);
    const points = metric(m, 'apm_core_points_ingested_total') + metric(m, 'apm_core_summaries_ingested_total');
    const rows = metric(m, 'apm_core_rows_written_total');
    if (points >= o.points && metric(m, 'apm_core_head_bytes') === 0 && rows === prevRows) return { metrics: m, at };
    prevRows = rows;
    if (Date.now() > deadline) {
      throw new Error(`the core did not write its head within ${o.timeoutMs / 1000} s: ${points} of ${o.points} points ingested, apm_core_head_bytes ${metric(m, 'apm_core_head_bytes')}, ${rows} rows written, flush errors ${metric(m, 'apm_core_flush_errors_total')}; its last output:\n${core.lines.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, o.everyMs ?? 100));
  }
}

/** Bytes the kernel says are available for new allocations (MemAvailable). */
export function memAvailableBytes(): number {
  const m = /MemAvailable:\s+(\d+) kB/.exec(readFileSync('/proc/meminfo', 'latin1'));
  return Number(m?.[1] ?? 0) * 1024;
}

/** A JSON GET that must answer 200. */
export async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}
