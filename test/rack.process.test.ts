// Real `apm edge` and `apm rack` processes on loopback, a lossy relay between them and a
// fake core behind: loss is recovered by NACKs, duplicates and reordering change nothing,
// garbage is refused and counted, a core outage and a rack SIGKILL lose nothing spooled.

import { afterEach, describe, expect, it } from 'vitest';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SeriesColumns } from '../schema/codec.js';
import { FakeCore } from './fake-core.js';
import { canonical, parseProm } from './merge-helper.js';
import { spawnApm, until, type Daemon } from './proc.js';
import { LossyRelay } from './relay.js';

const daemons: Daemon[] = [];
const closers: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const d of daemons.splice(0)) await d.stop('SIGKILL');
  for (const c of closers.splice(0)) await c();
});

async function startRack(corePort: number, spool: string, udpPort = 0): Promise<{ rack: Daemon; udpPort: number; httpPort: number }> {
  const rack = spawnApm(['rack', '--rack', 'r1', '--listen', `127.0.0.1:${udpPort}`, '--core', `http://127.0.0.1:${corePort}`, '--http', '127.0.0.1:0', '--spool', spool, '--lateness', '2s']);
  daemons.push(rack);
  const m = await rack.waitFor(/UDP on 127\.0\.0\.1:(\d+) .*metrics on http:\/\/127\.0\.0\.1:(\d+)/);
  return { rack, udpPort: Number(m[1]), httpPort: Number(m[2]) };
}

async function startEdge(server: string, rackPort: number): Promise<number> {
  const edge = spawnApm(['edge', '--server', server, '--rack', `127.0.0.1:${rackPort}`, '--statsd', '127.0.0.1:0', '--no-host']);
  daemons.push(edge);
  return Number((await edge.waitFor(/StatsD on 127\.0\.0\.1:(\d+)/))[1]);
}

async function metrics(httpPort: number): Promise<Map<string, number>> {
  return parseProm(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text());
}

/** Sends StatsD load to every edge for `seconds`: 120 gauges and 4 timers × 5 values per 100 ms. */
async function load(statsdPorts: number[], seconds: number): Promise<void> {
  const sock = dgram.createSocket('udp4');
  closers.push(() => void sock.close());
  const end = Date.now() + seconds * 1000;
  let tick = 0;
  while (Date.now() < end) {
    for (const port of statsdPorts) {
      const lines: string[] = [];
      for (let g = 0; g < 120; g++) lines.push(`load.gauge.${g}:${(tick * 7 + g) % 101}|g`);
      for (let t = 0; t < 4; t++) for (let k = 0; k < 5; k++) lines.push(`load.timer.${t}:${1 + ((tick * 13 + k * 31 + t) % 500) / 10}|ms`);
      lines.push('load.requests:3|c');
      for (let i = 0; i < lines.length; i += 40) sock.send(lines.slice(i, i + 40).join('\n'), port, '127.0.0.1');
    }
    tick++;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** What the core received per server-second (on-time and late batches merged). */
function coreView(core: FakeCore): Map<string, SeriesColumns[]> {
  const out = new Map<string, SeriesColumns[]>();
  // A retried batch the core already had is not repeated (the fake core de-duplicates).
  for (const b of core.batches) {
    for (const s of b.servers) {
      const k = `${s.server}@${b.second}`;
      out.set(k, [...(out.get(k) ?? []), s.series]);
    }
  }
  return out;
}

describe('apm rack process', () => {
  it('regression: refuses --servers-max above 1024 at start (before: accepted up to 100,000, and with more than 1,024 edges every second\'s body was undecodable at the core: all lost)', async () => {
    const rack = spawnApm(['rack', '--rack', 'r-max', '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--spool', mkdtempSync(join(tmpdir(), 'apm-rack-max-')), '--servers-max', '1025']);
    daemons.push(rack);
    expect(await rack.exited()).toBe(2);
    expect(rack.output.join('\n')).toMatch(/--servers-max.*1024/);
  });

  it('recovers 7% loss with NACKs; duplicates and reordering change nothing', async () => {
    const core = new FakeCore();
    const corePort = await core.start();
    closers.push(() => core.stop());
    const { udpPort, httpPort } = await startRack(corePort, mkdtempSync(join(tmpdir(), 'apm-rack-')));
    const relay = new LossyRelay({ rackPort: udpPort, lossRate: 0.07, dupRate: 0.1, reorderMaxMs: 30, seed: 99 });
    const relayPort = await relay.start();
    closers.push(() => relay.close());
    const ports = await Promise.all(['e1', 'e2', 'e3'].map((s) => startEdge(s, relayPort)));
    await load(ports, 6);
    // Let the last seconds close at the watermark (2 s) and reach the core.
    const lastSent = Math.max(...[...relay.sent.values()].flatMap((m) => [...m.keys()]));
    const view = await until(() => {
      const v = coreView(core);
      return ['e1', 'e2', 'e3'].every((s) => v.has(`${s}@${lastSent}`)) ? v : undefined;
    }, 15_000, 'the last second at the core');
    let compared = 0;
    for (const [server, seconds] of relay.sent) {
      for (const [second, parts] of seconds) {
        if (second >= lastSent) continue; // may still be closing
        const want = canonical([...parts.values()].map((p) => p.series));
        expect(canonical(view.get(`${server}@${second}`) ?? []), `${server} second ${second}`).toEqual(want);
        compared++;
      }
    }
    expect(compared).toBeGreaterThanOrEqual(15);
    const m = await metrics(httpPort);
    expect(relay.dropped).toBeGreaterThan(5);
    expect(m.get('apm_rack_parts_recovered_total')).toBeGreaterThan(0);
    expect(m.get('apm_rack_parts_lost_total')).toBe(0);
    expect(m.get('apm_rack_parts_duplicate_total')).toBeGreaterThan(0);
    // Names reached the core with the batches; every body was a RackSecond cut for the core's S.
    expect(core.names()).toContain('load.timer.3');
    expect([core.invalid, core.mismatches, [...core.contentTypes]]).toEqual([0, 0, ['application/x-apm-second']]);
  });

  it('refuses garbage at a high rate, keeps serving a good edge, and stays bounded', async () => {
    const core = new FakeCore();
    const corePort = await core.start();
    closers.push(() => core.stop());
    const { rack, udpPort, httpPort } = await startRack(corePort, mkdtempSync(join(tmpdir(), 'apm-rack-')));
    const statsd = await startEdge('good-1', udpPort);
    const junk = dgram.createSocket('udp4');
    closers.push(() => void junk.close());
    let s = 7;
    const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    const blast = (async () => {
      for (let round = 0; round < 60; round++) {
        for (let i = 0; i < 500; i++) {
          const b = Buffer.alloc(16 + Math.floor(rand() * 1400));
          for (let j = 0; j < b.length; j++) b[j] = rand() * 256;
          if (i % 2 === 0) b.write('APM1', 4, 'latin1');
          junk.send(b, udpPort, '127.0.0.1');
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await Promise.all([blast, load([statsd], 4)]);
    const after = await until(() => (core.batches.length >= 4 ? core.batches.length : undefined), 10_000, 'batches from the good edge');
    expect(after).toBeGreaterThanOrEqual(4);
    const metricsNow = await metrics(httpPort);
    let rejected = 0;
    for (const [k, v] of metricsNow) if (k.startsWith('apm_rack_datagrams_rejected_total')) rejected += v;
    expect(rejected).toBeGreaterThan(20_000);
    expect(metricsNow.get('apm_rack_datagrams_rejected_total{reason="bad_checksum"}')).toBeGreaterThan(10_000);
    expect(metricsNow.get('apm_rack_parts_lost_total')).toBe(0);
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${rack.child.pid}/status`, 'latin1'))![1]);
    expect(rssKb).toBeLessThan(400 * 1024);
  });

  it('spools through a 20 s core outage and a rack SIGKILL; replays everything spooled, in order', async () => {
    const core = new FakeCore();
    const corePort = await core.start();
    closers.push(() => core.stop());
    const spool = mkdtempSync(join(tmpdir(), 'apm-rack-'));
    const first = await startRack(corePort, spool);
    const statsd = await startEdge('spool-1', first.udpPort);
    const loading = load([statsd], 40);
    await until(() => (core.batches.length > 0 ? true : undefined), 10_000, 'a first batch');
    await core.stop();
    const outageStart = Date.now();
    // While the core is away, batches pile up in the spool.
    await new Promise((r) => setTimeout(r, 8000));
    const before = await metrics(first.httpPort);
    const spooledBatches = before.get('apm_rack_batches_spooled_total')!;
    expect(before.get('apm_rack_spool_batches')).toBeGreaterThanOrEqual(4);
    await first.rack.stop('SIGKILL');
    const second = await startRack(corePort, spool, first.udpPort);
    await second.rack.waitFor(/spool \d+ batches/);
    expect(Number((/spool (\d+) batches/.exec(second.rack.output.join('\n')) ?? [])[1])).toBeGreaterThanOrEqual(4);
    await new Promise((r) => setTimeout(r, Math.max(0, 20_000 - (Date.now() - outageStart))));
    await core.start(corePort);
    // Every batch spooled before the kill reaches the core, and batches arrive in order.
    const seqs = await until(() => {
      const s = new Set(core.batches.map((b) => b.seq));
      for (let i = 1; i <= spooledBatches; i++) if (!s.has(i)) return undefined;
      return core.batches.map((b) => b.seq);
    }, 20_000, `batches 1..${spooledBatches} at the core`);
    const distinct = seqs.filter((q, i) => seqs.indexOf(q) === i);
    expect(distinct).toEqual([...distinct].sort((a, b) => a - b));
    const m = await metrics(second.httpPort);
    expect(m.get('apm_rack_batches_replayed_total')).toBeGreaterThanOrEqual(4);
    await loading;
    // The spool drains once the core is back.
    let held = Infinity;
    const deadline = Date.now() + 10_000;
    while (held > 1 && Date.now() < deadline) {
      held = (await metrics(second.httpPort)).get('apm_rack_spool_batches')!;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(held).toBeLessThanOrEqual(1);
  }, 90_000);
});
