// Kill and restart tiers under load (issue 8): a real core, a real rack and the simulator
// (recording what it sends) on loopback; each tier is SIGKILLed while data flows and started
// again, and the core is then compared, server by server and second by second, with the record.
// What the design promises (DESIGN §1, rack/spool.ts, core/store.ts):
// - the core acknowledges a batch only once it is durable, and the rack keeps a batch spooled
//   until acknowledged: a core crash loses nothing;
// - a rack crash loses nothing: what it had spooled is replayed, and the seconds it held open
//   in memory or that were sent while it was down are asked again from the edges' resend rings
//   (the restarted rack resumes after the newest spooled second, rack/reassembly.ts);
// - an edge (simulator) restart is counted and files every second under its own second;
// - a stored query evaluates the windows it missed while the core was down, and revises those
//   that late (replayed) batches complete.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RecordedObservation } from '../tools/simulate.js';
import { parseProm } from './merge-helper.js';
import { spawnApm, until, type Daemon } from './proc.js';

const servers = 4;
const metrics = 20;
// A gauge, a counter and a distribution.
const recorded = ['sim.cpu.0', 'sim.rpc_count.8', 'sim.rpc_latency_ms.0'];
const latenessS = 1;
const storedWindowS = 2;

const dir = mkdtempSync(join(tmpdir(), 'apm-restart-'));
const recordFile = join(dir, 'record.jsonl');
let core: Daemon;
let corePort = 0;
let rack: Daemon;
let rackUdp = 0;
let rackHttp = 0;
let sim: Daemon;
let storedId = '';

function startCore(port = 0): Promise<number> {
  core = spawnApm(['core', '--listen', `127.0.0.1:${port}`, '--data', join(dir, 'core')]);
  return core.waitFor(/apm core: http:\/\/127\.0\.0\.1:(\d+)\//, 20_000).then((m) => Number(m[1]));
}

async function startRack(udpPort = 0): Promise<{ readyMs: number; spooled: number }> {
  rack = spawnApm(['rack', '--rack', 'r1', '--listen', `127.0.0.1:${udpPort}`, '--core', `http://127.0.0.1:${corePort}`, '--http', '127.0.0.1:0', '--spool', join(dir, 'spool'), '--lateness', `${latenessS}s`]);
  const m = await rack.waitFor(/UDP on 127\.0\.0\.1:(\d+) .*metrics on http:\/\/127\.0\.0\.1:(\d+).*spool (\d+) batches/, 20_000);
  rackUdp = Number(m[1]);
  rackHttp = Number(m[2]);
  return { readyMs: Date.now(), spooled: Number(m[3]) };
}

async function startSim(): Promise<void> {
  sim = spawnApm(['simulate', '--rack', `127.0.0.1:${rackUdp}`, '--servers', String(servers), '--metrics', String(metrics), '--prefix', 'rs', '--record', recordFile, '--record-metrics', `^(${recorded.map((m) => m.replace(/\./g, '\\.')).join('|')})$`]);
  await sim.waitFor(/apm simulate: \d+ servers/, 20_000);
}

async function rackMetrics(): Promise<Map<string, number>> {
  return parseProm(await (await fetch(`http://127.0.0.1:${rackHttp}/metrics`)).text());
}

async function getJson<T>(path: string): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${corePort}${path}`);
  if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

interface Window {
  startMs: number;
  count: number;
  revision?: number;
  values: { count?: number; sum?: number };
}

function adHoc(from: string, metric: string, windowS: number, fromS: number, toS: number): Promise<Window[]> {
  const q = `FROM ${from} SELECT ${metric} WINDOW ${windowS}s COMPUTE count, sum`;
  return getJson<{ windows: Window[] }>(`/api/v1/query?q=${encodeURIComponent(q)}&from=${fromS * 1000}&to=${(toS + 1) * 1000}`).then((r) => r.windows);
}

/** Resolves `offsetMs` into the next wall-clock second: after a second's burst was sent and recorded. */
async function atOffset(offsetMs: number): Promise<number> {
  const now = Date.now();
  await new Promise((r) => setTimeout(r, 1000 - (now % 1000) + offsetMs));
  return Math.floor(Date.now() / 1000);
}

/** SIGKILLs at 700 ms into a second (the second before was sent whole, its record flushed); returns that second. */
async function kill(d: Daemon): Promise<number> {
  const second = await atOffset(700);
  d.child.kill('SIGKILL');
  await d.exited();
  return second;
}

interface Comparison {
  /** (server, metric, second) summaries compared with the record. */
  compared: number;
  /** Seconds with at least one recorded summary missing at the core, and how many per second. */
  lostBySecond: Map<number, number>;
  /** Present but different from the record, or present and never sent. */
  wrong: string[];
}

/** Waits until every server's `toS` is stored, then compares [fromS, toS] with the record. */
async function compare(fromS: number, toS: number): Promise<Comparison> {
  await until(async () => ((await adHoc('*', 'sim.cpu.0', 1, toS, toS))[0]?.count === servers ? true : undefined), 25_000, `all ${servers} servers' second ${toS} at the core`);
  const want = new Map<string, { count: number; sum: number }>();
  for (const line of readFileSync(recordFile, 'utf8').split('\n')) {
    if (line === '') continue;
    const r = JSON.parse(line) as RecordedObservation;
    if (r.second < fromS || r.second > toS) continue;
    const k = `${r.server} ${r.metric} ${r.second}`;
    if (want.has(k)) throw new Error(`${k} recorded twice: two simulators sent one second`);
    want.set(k, { count: r.values.length, sum: r.values.reduce((a, b) => a + b, 0) });
  }
  const out: Comparison = { compared: 0, lostBySecond: new Map(), wrong: [] };
  for (let i = 0; i < servers; i++) {
    const server = `rs-r1-${String(i).padStart(5, '0')}`;
    for (const metric of recorded) {
      const got = new Map((await adHoc(server, metric, 1, fromS, toS)).map((w) => [w.startMs / 1000, w]));
      for (let s = fromS; s <= toS; s++) {
        const w = want.get(`${server} ${metric} ${s}`);
        const g = got.get(s);
        if (w === undefined) {
          if (g !== undefined) out.wrong.push(`${server} ${metric} ${s}: never sent, core has count ${g.values.count}`);
          continue;
        }
        out.compared++;
        if (g === undefined) out.lostBySecond.set(s, (out.lostBySecond.get(s) ?? 0) + 1);
        else if (g.values.count !== w.count || g.values.sum !== w.sum) out.wrong.push(`${server} ${metric} ${s}: sent count ${w.count} sum ${w.sum}, core has count ${g.values.count} sum ${g.values.sum}`);
      }
    }
  }
  return out;
}

/** The stored query's results over [fromS, toS] come to equal an ad-hoc evaluation from storage. */
async function storedCaughtUp(fromS: number, toS: number): Promise<Window[]> {
  const from = Math.floor(fromS / storedWindowS) * storedWindowS;
  const to = Math.floor((toS + 1) / storedWindowS) * storedWindowS - 1; // whole windows only
  let last = '';
  try {
    return await until(
      async () => {
        const want = (await adHoc('*', 'sim.cpu.0', storedWindowS, from, to)).map((w) => [w.startMs, w.values.count, w.values.sum]);
        const res = await getJson<{ windows: Window[] }>(`/api/v1/queries/${storedId}/results?from=${from * 1000}&to=${(to + 1) * 1000}`);
        const got = res.windows.map((w) => [w.startMs, w.values.count, w.values.sum]);
        last = `stored ${JSON.stringify(got)}\nad-hoc ${JSON.stringify(want)}`;
        return JSON.stringify(got) === JSON.stringify(want) && want.length >= (to + 1 - from) / storedWindowS - 3 ? res.windows : undefined;
      },
      20_000,
      `the stored query's windows ${from}..${to} to match storage`,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${last}`, { cause: err });
  }
}

beforeAll(async () => {
  corePort = await startCore();
  await startRack();
  const created = await fetch(`http://127.0.0.1:${corePort}/api/v1/queries`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'restart', query: `FROM * SELECT sim.cpu.0 WINDOW ${storedWindowS}s COMPUTE count, sum` }),
  });
  expect(created.status).toBe(201);
  storedId = ((await created.json()) as { id: string }).id;
  await startSim();
  await until(async () => ((await adHoc('*', 'sim.cpu.0', 1, Math.floor(Date.now() / 1000) - 10, Math.floor(Date.now() / 1000))).length > 0 ? true : undefined), 20_000, 'first data at the core');
});

afterAll(async () => {
  for (const d of [sim, rack, core]) await d?.stop('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

/** Waits until the rack has failed to forward at least twice and holds batches: it is spooling. */
async function rackSpooling(): Promise<number> {
  const failed0 = (await rackMetrics()).get('apm_rack_batches_failed_total')!;
  return until(
    async () => {
      const m = await rackMetrics();
      return m.get('apm_rack_batches_failed_total')! >= failed0 + 2 && m.get('apm_rack_spool_batches')! >= 2 ? m.get('apm_rack_spool_batches')! : undefined;
    },
    20_000,
    'the rack to spool while the core is down',
  );
}

const lostReport: string[] = [];

describe('kill and restart tiers under load', () => {
  it('(a) core SIGKILLed and restarted: the rack spools and replays, nothing acknowledged or spooled is lost', async () => {
    const fromS = Math.floor(Date.now() / 1000) - 2;
    const killedS = await kill(core);
    const held = await rackSpooling();
    corePort = await startCore(corePort);
    await until(async () => ((await rackMetrics()).get('apm_rack_spool_batches')! <= 1 ? true : undefined), 20_000, 'the spool to drain into the restarted core');
    const c = await compare(fromS, Math.max(killedS + 4, Math.floor(Date.now() / 1000) - latenessS - 1));
    expect(c.wrong).toEqual([]);
    expect([...c.lostBySecond]).toEqual([]);
    expect(c.compared).toBeGreaterThanOrEqual(recorded.length * servers * 6);
    // The windows of the downtime were evaluated after the restart, complete.
    const windows = await storedCaughtUp(fromS, Math.floor(Date.now() / 1000) - latenessS - 2);
    expect(windows.some((w) => w.startMs >= killedS * 1000 && w.startMs < (killedS + 2) * 1000)).toBe(true);
    lostReport.push(`(a) core killed at ${killedS}.7, rack held ${held} batches: ${c.compared} summaries compared, 0 lost`);
  }, 60_000);

  it('(b) rack SIGKILLed and restarted: what it spooled is replayed and the seconds it missed are asked again from the edges: nothing lost', async () => {
    const fromS = Math.floor(Date.now() / 1000) - 2;
    const killedS = await kill(rack);
    // Down for about two seconds of sends (no listener: the kernel drops them).
    await atOffset(500);
    await atOffset(500);
    const restarted = await startRack(rackUdp);
    const readyS = Math.floor(restarted.readyMs / 1000);
    await until(async () => ((await rackMetrics()).get('apm_rack_batches_acked_total')! >= 3 ? true : undefined), 20_000, 'the restarted rack forwarding');
    const toS = Math.max(readyS + 2, Math.floor(Date.now() / 1000) - latenessS - 1);
    const c = await compare(fromS, toS);
    expect(c.wrong).toEqual([]);
    const lost = [...c.lostBySecond.keys()].sort((a, b) => a - b);
    // The second open in memory at the kill and those sent while the rack was down came back
    // from the edges' resend rings, asked by the restarted rack.
    expect(lost, `killed at ${killedS}, ready at ${restarted.readyMs}`).toEqual([]);
    expect((await rackMetrics()).get('apm_rack_resume_probes_total')).toBeGreaterThanOrEqual(servers * 2);
    expect(c.compared).toBeGreaterThanOrEqual(recorded.length * servers * 6);
    const lostSummaries = [...c.lostBySecond.values()].reduce((a, b) => a + b, 0);
    lostReport.push(`(b) rack killed at ${killedS}.7, ready at ${(restarted.readyMs / 1000).toFixed(1)}: lost seconds ${lost.join(',')} = ${lostSummaries / recorded.length} server-seconds (${(lostSummaries / recorded.length) * metrics} points) of ${c.compared / recorded.length} compared`);
    await storedCaughtUp(fromS, toS - 1);
  }, 60_000);

  it('(c) simulator (edges) SIGKILLed and restarted: the rack counts the restarts, every second is filed under its own second', async () => {
    const restarts0 = (await rackMetrics()).get('apm_rack_edge_restarts_total')!;
    const fromS = Math.floor(Date.now() / 1000) - 2;
    const killedS = await kill(sim);
    await startSim();
    await until(async () => ((await rackMetrics()).get('apm_rack_edge_restarts_total')! >= restarts0 + servers ? true : undefined), 10_000, 'the rack to see every edge restart');
    const toS = killedS + 4;
    const c = await compare(fromS, toS);
    expect(c.wrong).toEqual([]);
    expect([...c.lostBySecond]).toEqual([]);
    expect(c.compared).toBeGreaterThanOrEqual(recorded.length * servers * 5);
    expect((await rackMetrics()).get('apm_rack_edge_restarts_total')).toBe(restarts0 + servers);
    await storedCaughtUp(fromS, toS - 1);
    lostReport.push(`(c) simulator killed at ${killedS}.7 and restarted: ${c.compared} summaries compared, 0 lost, ${servers} edge restarts counted`);
  }, 60_000);

  it('(d) core then rack SIGKILLed, restarted rack first then core: spooled batches survive both, the stored query catches up', async () => {
    const fromS = Math.floor(Date.now() / 1000) - 2;
    const coreKilledS = await kill(core);
    const held = await rackSpooling();
    const rackKilledS = await kill(rack);
    const restarted = await startRack(rackUdp);
    // The restarted rack found what the first one spooled, and keeps spooling while the core is away.
    expect(restarted.spooled).toBeGreaterThanOrEqual(held);
    const readyS = Math.floor(restarted.readyMs / 1000);
    await rackSpooling();
    corePort = await startCore(corePort);
    await until(async () => ((await rackMetrics()).get('apm_rack_spool_batches')! <= 1 ? true : undefined), 20_000, 'the spool to drain into the restarted core');
    const toS = Math.max(readyS + 2, Math.floor(Date.now() / 1000) - latenessS - 1);
    const c = await compare(fromS, toS);
    expect(c.wrong).toEqual([]);
    const lost = [...c.lostBySecond.keys()].sort((a, b) => a - b);
    expect(lost, `rack killed at ${rackKilledS}, ready at ${restarted.readyMs}`).toEqual([]);
    expect(c.compared).toBeGreaterThanOrEqual(recorded.length * servers * 6);
    const windows = await storedCaughtUp(fromS, toS - 1);
    expect(windows.some((w) => w.startMs >= coreKilledS * 1000 && w.startMs < (coreKilledS + 2) * 1000)).toBe(true);
    const lostSummaries = [...c.lostBySecond.values()].reduce((a, b) => a + b, 0);
    lostReport.push(`(d) core killed at ${coreKilledS}.7, rack (holding ${held} batches) at ${rackKilledS}.7, rack ready at ${(restarted.readyMs / 1000).toFixed(1)} with ${restarted.spooled} spooled: lost seconds ${lost.join(',') || 'none'} = ${lostSummaries / recorded.length} server-seconds (${(lostSummaries / recorded.length) * metrics} points) of ${c.compared / recorded.length} compared`);
    console.log(lostReport.join('\n'));
  }, 60_000);
});
