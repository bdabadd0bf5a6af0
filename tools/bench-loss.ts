// Loss benchmark (issue 8): a real core, rack and simulator inside a network namespace, with
// the kernel dropping a random share of the datagrams sent to the rack (nftables). Per loss
// level: packets the kernel dropped, parts the rack NACKed, recovered and lost for good, and
// how many server-seconds and points reached the core exactly as the simulator sent them.
// test/loss.process.test.ts runs the same `lossRun` at 5% and asserts nothing is lost.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Netns } from '../test/netns.js';
import type { Figure } from './bench-edge.js';
import type { RecordedObservation } from './simulate.js';

export interface LossRunOptions {
  /** Share of the rack's inbound UDP datagrams the kernel drops, 0..100 (%). */
  percent: number;
  servers: number;
  metrics: number;
  /** Seconds of data compared (the run lasts a few seconds more: start-up and closing). */
  seconds: number;
  /** Metrics the simulator records and the core is checked for (a regular expression). */
  recordMetrics: string;
  /** The rack's lateness (s): how long it has to recover a second's missing parts. */
  latenessSeconds: number;
}

export interface LossRun {
  percent: number;
  /** Datagrams to the rack's port dropped by the nftables rule. */
  kernelDropped: number;
  partsReceived: number;
  partsNacked: number;
  partsRecovered: number;
  partsLost: number;
  secondsIncomplete: number;
  /** Seconds compared (sent and closed at the rack while the simulator could still resend). */
  secondsCompared: number;
  /** (server, second) pairs compared, and those whose every recorded metric reached the core exactly. */
  serverSeconds: number;
  serverSecondsComplete: number;
  /** (server, metric, second) summaries compared, and those stored exactly (count and sum). */
  points: number;
  pointsExact: number;
  /** The first differences found, for a failure message. */
  mismatches: string[];
}

interface Window {
  startMs: number;
  count: number;
  values: { count?: number; sum?: number };
}

/** One loss level end to end; the namespace and every process are gone when it returns. */
export async function lossRun(o: LossRunOptions): Promise<LossRun> {
  const dir = mkdtempSync(join(tmpdir(), 'apm-loss-'));
  const ns = await Netns.create('loss');
  try {
    const core = ns.spawnApm(['core', '--listen', '127.0.0.1:0', '--data', join(dir, 'core')]);
    const coreUrl = (await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//, 20_000))[1]!;
    const rack = ns.spawnApm(['rack', '--rack', 'r1', '--listen', '127.0.0.1:0', '--core', coreUrl, '--http', '127.0.0.1:0', '--spool', join(dir, 'spool'), '--lateness', `${o.latenessSeconds}s`]);
    const m = await rack.waitFor(/UDP on 127\.0\.0\.1:(\d+) .*metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/, 20_000);
    const rackPort = Number(m[1]);
    const rackMetrics = m[2]!;
    await ns.dropUdp(rackPort, o.percent);
    const record = join(dir, 'record.jsonl');
    const sim = ns.spawnApm(['simulate', '--rack', `127.0.0.1:${rackPort}`, '--servers', String(o.servers), '--metrics', String(o.metrics), '--prefix', 'loss', '--record', record, '--record-metrics', o.recordMetrics]);
    await sim.waitFor(/apm simulate: \d+ servers/, 20_000);
    const startedS = Math.floor(Date.now() / 1000);
    // Let `seconds` seconds be sent, then wait until the rack closed them (lateness + a tick).
    const lastS = startedS + o.seconds;
    await sleepUntil((lastS + 1) * 1000 + o.latenessSeconds * 1000 + 400);
    // Counters now cover only seconds closed while the simulator could answer NACKs.
    const rm = parseProm((await ns.request(rackMetrics)).text);
    const kernelDropped = await ns.droppedPackets();
    await sim.stop('SIGTERM');
    await until(async () => parseProm((await ns.request(rackMetrics)).text).get('apm_rack_spool_batches') === 0, 20_000, 'the rack spool to drain into the core');
    const recorded = readFileSync(record, 'utf8')
      .split('\n')
      .filter((l) => l.length > 0)
      .map((l) => JSON.parse(l) as RecordedObservation)
      .filter((r) => r.second <= lastS);
    const cmp = await compareWithCore(ns, coreUrl, recorded);
    const c = (k: string) => rm.get(k) ?? NaN;
    return {
      percent: o.percent,
      kernelDropped,
      partsReceived: c('apm_rack_parts_received_total'),
      partsNacked: c('apm_rack_parts_nacked_total'),
      partsRecovered: c('apm_rack_parts_recovered_total'),
      partsLost: c('apm_rack_parts_lost_total'),
      secondsIncomplete: c('apm_rack_seconds_incomplete_total'),
      ...cmp,
    };
  } finally {
    await ns.delete();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Asks the core, server by server and metric by metric, for what the record says was sent. */
async function compareWithCore(ns: Netns, coreUrl: string, recorded: RecordedObservation[]): Promise<Omit<LossRun, 'percent' | 'kernelDropped' | 'partsReceived' | 'partsNacked' | 'partsRecovered' | 'partsLost' | 'secondsIncomplete'>> {
  const want = new Map<string, Map<number, { count: number; sum: number }>>();
  const seconds = new Set<number>();
  for (const r of recorded) {
    const k = `${r.server} ${r.metric}`;
    let bySecond = want.get(k);
    if (bySecond === undefined) want.set(k, (bySecond = new Map()));
    bySecond.set(r.second, { count: r.values.length, sum: r.values.reduce((a, b) => a + b, 0) });
    seconds.add(r.second);
  }
  if (seconds.size === 0) throw new Error('the simulator recorded nothing: did it start sending?');
  const fromMs = Math.min(...seconds) * 1000;
  const toMs = (Math.max(...seconds) + 1) * 1000;
  const bad = new Set<string>(); // "server second" pairs with any metric missing or wrong
  const mismatches: string[] = [];
  let pointsExact = 0;
  let points = 0;
  const keys = [...want.keys()];
  for (let i = 0; i < keys.length; i += 8) {
    await Promise.all(
      keys.slice(i, i + 8).map(async (k) => {
        const [server, metric] = k.split(' ') as [string, string];
        const q = `FROM ${server} SELECT ${metric} WINDOW 1s COMPUTE count, sum`;
        const got = new Map<number, Window>();
        const res = await ns.getJson<{ windows: Window[] }>(`${coreUrl}/api/v1/query?q=${encodeURIComponent(q)}&from=${fromMs}&to=${toMs}`);
        for (const w of res.windows) got.set(w.startMs / 1000, w);
        for (const [second, w] of want.get(k)!) {
          points++;
          const g = got.get(second);
          got.delete(second);
          if (g !== undefined && g.values.count === w.count && g.values.sum === w.sum) {
            pointsExact++;
            continue;
          }
          bad.add(`${server} ${second}`);
          if (mismatches.length < 10) mismatches.push(`${server} ${metric} second ${second}: sent count ${w.count} sum ${w.sum}, core has ${g === undefined ? 'nothing' : `count ${g.values.count} sum ${g.values.sum}`}`);
        }
        // Anything else the core holds for this series in the range was never sent: misfiled.
        for (const [second, g] of got) {
          bad.add(`${server} ${second}`);
          if (mismatches.length < 10) mismatches.push(`${server} ${metric} second ${second}: never sent, core has count ${g.values.count}`);
        }
      }),
    );
  }
  const servers = new Set(recorded.map((r) => r.server));
  const serverSeconds = new Set(recorded.map((r) => `${r.server} ${r.second}`)).size;
  return { secondsCompared: seconds.size, serverSeconds, serverSecondsComplete: serverSeconds - [...bad].filter((b) => servers.has(b.split(' ')[0]!)).length, points, pointsExact, mismatches };
}

function parseProm(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function sleepUntil(ms: number): Promise<void> {
  const wait = ms - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}

async function until(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** `apm bench --only loss`: 1%, 5% and 20% kernel loss, 8 servers × 100 metrics each. */
export async function lossFigures(quick: boolean): Promise<Figure[]> {
  const figures: Figure[] = [];
  for (const percent of [1, 5, 20]) {
    let r: LossRun;
    try {
      r = await lossRun({ percent, servers: 8, metrics: 100, seconds: quick ? 8 : 20, recordMetrics: '.', latenessSeconds: 2 });
    } catch (err) {
      if (/cannot create network namespace/.test((err as Error).message)) {
        console.log(`  loss section not run: ${(err as Error).message}`);
        return figures;
      }
      throw err;
    }
    const at = `kernel loss ${percent}%`;
    // Nothing received or compared measures nothing: say so, never print zeros or NaN.
    if (!(r.partsReceived > 0) || !(r.points > 0) || !(r.serverSeconds > 0)) {
      throw new Error(`bench loss INVALID RUN (${at}): the rack accepted ${r.partsReceived} parts; ${r.points} points over ${r.serverSeconds} server-seconds compared with the core`);
    }
    figures.push(
      { name: `${at}: rack datagrams dropped by the kernel (nftables counter)`, value: r.kernelDropped, unit: 'packets' },
      { name: `${at}: parts NACKed by the rack`, value: r.partsNacked, unit: 'parts' },
      { name: `${at}: parts recovered by NACK`, value: r.partsRecovered, unit: 'parts' },
      { name: `${at}: parts lost for good`, value: r.partsLost, unit: 'parts' },
      { name: `${at}: server-seconds complete at the core (${r.serverSeconds} compared)`, value: (100 * r.serverSecondsComplete) / r.serverSeconds, unit: '%' },
      { name: `${at}: points stored exactly (${r.points} compared)`, value: (100 * r.pointsExact) / r.points, unit: '%' },
    );
    for (const line of r.mismatches.slice(0, 3)) console.log(`    (${at}) ${line}`);
  }
  return figures;
}
