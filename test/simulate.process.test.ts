// The simulator drives a real rack through a lossy relay: every simulated server's every
// second reaches the (fake) core complete, with the metric names relayed.

import { afterEach, describe, expect, it } from 'vitest';
import { createSocket } from 'node:dgram';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hashName } from '../schema/names.js';
import { Simulator, type RecordedObservation } from '../tools/simulate.js';
import { FakeCore } from './fake-core.js';
import { parseProm } from './merge-helper.js';
import { spawnApm, until, type Daemon } from './proc.js';
import { LossyRelay } from './relay.js';

const cleanup: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

describe('apm simulate', () => {
  it('sends every server-second complete through 5% loss, answering NACKs', async () => {
    const core = new FakeCore();
    const corePort = await core.start();
    cleanup.push(() => core.stop());
    const rack: Daemon = spawnApm(['rack', '--rack', 'sim', '--listen', '127.0.0.1:0', '--core', `http://127.0.0.1:${corePort}`, '--http', '127.0.0.1:0', '--spool', mkdtempSync(join(tmpdir(), 'apm-sim-')), '--lateness', '1s']);
    cleanup.push(() => rack.stop('SIGKILL'));
    const m = await rack.waitFor(/UDP on 127\.0\.0\.1:(\d+) .*metrics on (http:\/\/127\.0\.0\.1:\d+)/);
    const relay = new LossyRelay({ rackPort: Number(m[1]), lossRate: 0.05, dupRate: 0, reorderMaxMs: 0, seed: 3 });
    const relayPort = await relay.start();
    cleanup.push(() => relay.close());
    const recorded: RecordedObservation[] = [];
    const sim = new Simulator({
      racks: [{ host: '127.0.0.1', port: relayPort }],
      servers: 20,
      metrics: 300,
      distShare: 0.05,
      datagramBytes: 1432,
      seed: 9,
      prefix: 't',
      recordServers: /-00003$/,
      recordMetrics: /^sim\.(cpu\.0|rpc_latency_ms\.2)$/,
      record: (o) => recorded.push(o),
    });
    await sim.start();
    cleanup.push(() => sim.stop());
    const full = await until(() => {
      const b = core.batches.filter((x) => x.servers.length === 20);
      return b.length >= 4 ? b : undefined;
    }, 20_000, 'four batches with all 20 servers');
    for (const b of full.slice(1)) {
      for (const s of b.servers) expect(s.series.pointKinds.length + s.series.distKinds.length, `${s.server} at ${b.second}`).toBe(300);
    }
    expect(core.names()).toContain('sim.rpc_latency_ms.14');
    const rm = parseProm(await (await fetch(`${m[2]}/metrics`)).text());
    expect(relay.dropped).toBeGreaterThan(0);
    expect(rm.get('apm_rack_parts_recovered_total')).toBeGreaterThan(0);
    expect(rm.get('apm_rack_parts_lost_total')).toBe(0);
    expect(sim.counters.resent).toBeGreaterThan(0);
    // The recorded observations are exactly what reached the core for that server.
    const h = new Uint32Array(4);
    hashName('sim.cpu.0', h, 0);
    hashName('sim.rpc_latency_ms.2', h, 2);
    let checked = 0;
    for (const b of full) {
      const s = b.servers.find((x) => x.server === 't-r1-00003')!;
      const cpu = recorded.find((o) => o.second === b.second && o.metric === 'sim.cpu.0')!;
      const lat = recorded.find((o) => o.second === b.second && o.metric === 'sim.rpc_latency_ms.2')!;
      const pi = [...Array(s.series.pointKinds.length).keys()].find((i) => s.series.pointHashes[2 * i] === h[0] && s.series.pointHashes[2 * i + 1] === h[1])!;
      expect(s.series.pointValues[pi]).toBe(cpu.values[0]);
      const di = [...Array(s.series.distKinds.length).keys()].find((i) => s.series.distHashes[2 * i] === h[2] && s.series.distHashes[2 * i + 1] === h[3])!;
      expect([s.series.distCounts[di], s.series.distMins[di], s.series.distMaxes[di]]).toEqual([lat.values.length, Math.min(...lat.values), Math.max(...lat.values)]);
      checked++;
    }
    expect(checked).toBeGreaterThanOrEqual(4);
  });
});

describe('regression: apm simulate stops and refuses as its --help says', () => {
  it('a --speedup backfill stops at --seconds and on SIGTERM (before: it sent its whole hour of backlog first, 16 s at 40 servers)', async () => {
    const sink = await new Promise<ReturnType<typeof createSocket>>((resolve) => {
      const s = createSocket('udp4');
      s.bind(0, '127.0.0.1', () => resolve(s));
    });
    cleanup.push(() => void sink.close());
    const port = sink.address().port;
    const timed = spawnApm(['simulate', '--rack', `127.0.0.1:${port}`, '--servers', '40', '--metrics', '200', '--speedup', '100000', '--seconds', '1']);
    cleanup.push(() => timed.stop('SIGKILL'));
    const t0 = Date.now();
    expect(await timed.exited()).toBe(0);
    expect(Date.now() - t0).toBeLessThan(6000);
    const signalled = spawnApm(['simulate', '--rack', `127.0.0.1:${port}`, '--servers', '40', '--metrics', '200', '--speedup', '100000']);
    cleanup.push(() => signalled.stop('SIGKILL'));
    await signalled.waitFor(/servers × 200 metrics/);
    const t1 = Date.now();
    await signalled.stop('SIGTERM');
    expect(Date.now() - t1).toBeLessThan(2000);
    expect(signalled.output.join('\n')).toMatch(/SIGTERM; sent \d+ seconds/);
  });

  it('refuses a destination port 0, a --record path it cannot write, a --seconds no timer can wait and a --prefix no rack takes, with exit 2 and a clear line (before: stack traces, or a run that ended at once)', async () => {
    for (const [args, why] of [
      [['--rack', '127.0.0.1:0'], /--rack "127\.0\.0\.1:0": port 0 is not a port to send to/],
      [['--rack', '127.0.0.1:9', '--record', '/nonexistent/dir/x.jsonl'], /--record \/nonexistent\/dir\/x\.jsonl: ENOENT/],
      [['--rack', '127.0.0.1:9', '--seconds', '3000000'], /--seconds "3000000" must be an integer in 0\.\.2000000/],
      [['--rack', '127.0.0.1:9', '--prefix', 'bad id'], /--prefix "bad id": server ids are/],
    ] as const) {
      const d = spawnApm(['simulate', ...args, '--servers', '1', '--metrics', '1']);
      cleanup.push(() => d.stop('SIGKILL'));
      expect(await d.exited()).toBe(2);
      expect(d.output.join('\n')).toMatch(why);
      expect(d.output.join('\n')).not.toMatch(/\n\s+at /);
    }
  });
});
