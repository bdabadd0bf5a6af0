// A Rack in this process with real sockets: UDP datagrams in, RackSecond bodies out to a fake
// core on loopback (contract v2, issue 12): sessions, placement, 409 shards_mismatch.

import { afterEach, describe, expect, it, vi } from 'vitest';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Encoder, KindCode } from '../schema/codec.js';
import { buildColumns } from '../schema/testdata.js';
import { FakeCore } from '../test/fake-core.js';
import { parseProm } from '../test/merge-helper.js';
import { until } from '../test/proc.js';
import { rackLimits, type RackLimits } from './limits.js';
import { Rack } from './rack.js';
import { decodeSecond } from './recut.js';
import { seqReserveBlock, Spool } from './spool.js';

const cleanup: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function startCore(): Promise<FakeCore> {
  const core = new FakeCore();
  await core.start();
  cleanup.push(() => core.stop());
  return core;
}

interface Started {
  rack: Rack;
  udpPort: number;
  httpPort: number;
  /** Stops the rack once (later calls and the cleanup do nothing). */
  stop: () => Promise<void>;
}

async function startRack(corePort: number, spoolDir: string, corePath = ''): Promise<Started> {
  return startRackWith(corePort, spoolDir, {}, corePath);
}

async function startRackWith(corePort: number, spoolDir: string, limits: Partial<RackLimits>, corePath = ''): Promise<Started> {
  const rack = new Rack({
    rack: 'r1',
    listenHost: '127.0.0.1',
    listenPort: 0,
    coreUrl: `http://127.0.0.1:${corePort}${corePath}`,
    spoolDir,
    httpHost: '127.0.0.1',
    httpPort: 0,
    latenessMs: 200,
    token: null,
    allowList: null,
    limits: { ...rackLimits, resumeHoldMs: 0, backoffMinMs: 20, backoffMaxMs: 200, ...limits },
  });
  const ports = await rack.start();
  let stopping: Promise<void> | null = null;
  const stop = () => (stopping ??= rack.stop());
  cleanup.push(stop);
  return { rack, udpPort: ports.udpPort, httpPort: ports.httpPort, stop };
}

/** An edge: one datagram per second with a gauge, a counter and a distribution, names attached. */
class Edge {
  private readonly sock = dgram.createSocket('udp4');
  private seq = 1;
  constructor(private readonly server: string) {
    cleanup.push(() => void this.sock.close());
  }

  send(port: number, second: number): void {
    const series = buildColumns(
      [
        { name: 'cpu', kind: KindCode.Gauge, value: second % 1000 },
        { name: 'requests', kind: KindCode.Counter, value: 3 },
      ],
      [{ name: 'latency', values: [1, 2, second % 7] }],
      ['cpu', 'requests', 'latency'],
    );
    this.sock.send(new Encoder().edgeSecond({ server: this.server, session: 9, seq: this.seq++, second, part: 0, parts: 1, sentMs: Date.now(), series }), port, '127.0.0.1');
  }
}

const nowSecond = () => Math.floor(Date.now() / 1000);

async function rackMetrics(httpPort: number): Promise<Map<string, number>> {
  return parseProm(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text());
}

describe('Rack → core (RackSecond bodies)', () => {
  it('regression: reaches a core behind a reverse proxy at a path prefix (--core http://host/apm/): the prefix was dropped', async () => {
    const core = await startCore();
    core.prefix = '/apm';
    const edge = new Edge('web-1');
    const r = await startRack(core.port, mkdtempSync(join(tmpdir(), 'apm-rack-prefix-')), '/apm/');
    const s1 = nowSecond();
    edge.send(r.udpPort, s1);
    await until(() => (core.batches.length === 1 ? true : undefined), 5000, 'a body through the prefix');
    expect([core.batches[0]!.second, core.placementRequests > 0]).toEqual([s1, true]);
  });

  it('regression: a rack on a new spool gets a new session, so the core does not take its seq 1 for a duplicate; a restart on the same spool keeps session and seq', async () => {
    const core = await startCore();
    const dir = mkdtempSync(join(tmpdir(), 'apm-rack-session-'));
    const edge = new Edge('web-1');
    const first = await startRack(core.port, dir);
    const s1 = nowSecond();
    edge.send(first.udpPort, s1);
    await until(() => (core.batches.length === 1 ? true : undefined), 5000, 'the first body');
    await first.stop();
    const session1 = core.batches[0]!.session;
    expect([core.batches[0]!.seq, core.batches[0]!.second, session1]).toEqual([1, s1, first.rack.spool.session]);

    // The spool is deleted: the next rack starts at seq 1 again, under a new session.
    rmSync(dir, { recursive: true, force: true });
    const second = await startRack(core.port, dir);
    const s2 = nowSecond() + 1;
    edge.send(second.udpPort, s2);
    await until(() => (core.batches.length === 2 ? true : undefined), 5000, 'the new spool’s first body at the core');
    await second.stop();
    const b = core.batches[1]!;
    expect([b.seq, b.second, core.duplicates]).toEqual([1, s2, 0]);
    expect(b.session).not.toBe(session1);
    expect(b.servers.map((s) => s.server)).toEqual(['web-1']);

    // Restarted on the same spool: same session, a seq past those reserved before (never one used).
    const third = await startRack(core.port, dir);
    const s3 = nowSecond() + 1;
    edge.send(third.udpPort, s3);
    await until(() => (core.batches.length === 3 ? true : undefined), 5000, 'the restarted rack’s body');
    expect([core.batches[2]!.session, core.batches[2]!.seq, core.duplicates]).toEqual([b.session, 1 + seqReserveBlock, 0]);
  });

  it('asks the core for its shard count (retrying while it fails), cuts with it, and re-cuts a body the core refuses with 409 shards_mismatch', async () => {
    const core = await startCore();
    core.shards = 8;
    core.placementStatus = 503;
    const dir = mkdtempSync(join(tmpdir(), 'apm-rack-shards-'));
    const { rack, udpPort, httpPort } = await startRack(core.port, dir);
    await until(() => (core.placementRequests >= 2 ? true : undefined), 5000, 'placement retries');
    core.placementStatus = 200;
    await until(() => (rack.spool.shards === 8 ? true : undefined), 5000, 'the core’s 8 shards learned');
    const edge = new Edge('web-1');
    const s1 = nowSecond();
    edge.send(udpPort, s1);
    await until(() => (core.batches.length === 1 ? true : undefined), 5000, 'a body cut for 8 shards');
    expect([core.batches[0]!.shards, core.mismatches]).toEqual([8, 0]);

    // The core now has 2 shards (say, a new data directory): the next body is refused once, re-cut and taken.
    core.shards = 2;
    edge.send(udpPort, s1 + 1);
    await until(() => (core.batches.length === 2 ? true : undefined), 5000, 'the re-cut body');
    const b = core.batches[1]!;
    expect([b.shards, b.seq, b.second, core.mismatches, rack.spool.shards]).toEqual([2, 2, s1 + 1, 1, 2]);
    // Nothing lost in the re-cut: every point, the distribution and its rollup, every name.
    const sec = b.servers[0]!.series;
    expect([sec.pointKinds.length, sec.distKinds.length, b.rollup.distKinds.length]).toEqual([2, 1, 1]);
    expect(core.names()).toEqual(new Set(['cpu', 'requests', 'latency']));
    const m = await rackMetrics(httpPort);
    expect([m.get('apm_rack_shards'), m.get('apm_rack_shards_mismatch_total'), m.get('apm_rack_batches_recut_total'), m.get('apm_rack_batches_rejected_total')]).toEqual([2, 1, 1, 0]);
    expect(m.get('apm_rack_placement_failures_total')).toBeGreaterThanOrEqual(2);
    expect(m.get('apm_rack_session')).toBe(rack.spool.session);
  });

  it('packs points only for a core that says it reads them; a core from before the pack gets them unpacked (it would refuse packed ones as malformed, and the rack drop them)', async () => {
    const old = await startCore();
    old.pointPack = false;
    const fresh = await startCore();
    const a = await startRack(old.port, mkdtempSync(join(tmpdir(), 'apm-rack-oldcore-')));
    const b = await startRack(fresh.port, mkdtempSync(join(tmpdir(), 'apm-rack-newcore-')));
    const packs = (r: Rack) => (r as unknown as { corePacks(): boolean }).corePacks();
    await until(() => (old.placementRequests >= 1 && packs(b.rack) ? true : undefined), 5000, 'both placements answered');
    expect(packs(a.rack)).toBe(false);
    const s1 = nowSecond();
    new Edge('web-1').send(a.udpPort, s1);
    new Edge('web-1').send(b.udpPort, s1);
    await until(() => (old.batches.length === 1 && fresh.batches.length === 1 ? true : undefined), 5000, 'a body at each core');
    const packed = (c: FakeCore) => c.batches[0]!.sections.filter((s) => s.pointEnds.length > 0).map((s) => s.packed);
    expect(new Set(packed(old))).toEqual(new Set([false]));
    expect(new Set(packed(fresh))).toEqual(new Set([true]));
    // The same points either way.
    for (const c of [old, fresh]) expect(Array.from(c.batches[0]!.servers[0]!.series.pointValues)).toEqual([s1 % 1000, 3]);
  });

  it('regression: a spooled body re-cut for a new shard count that passes bodyBytesMax goes on in more bodies, every point delivered (before: one body of any size)', async () => {
    const core = await startCore();
    core.shards = 1;
    const bodyBytesMax = 8 * 1024;
    const { rack, udpPort, httpPort } = await startRackWith(core.port, mkdtempSync(join(tmpdir(), 'apm-rack-recut-split-')), { bodyBytesMax });
    await until(() => (rack.spool.shards === 1 ? true : undefined), 5000, 'the core’s 1 shard learned');
    const sock = dgram.createSocket('udp4');
    cleanup.push(() => void sock.close());
    const send = (second: number, seq: number) => {
      const series = buildColumns(Array.from({ length: 200 }, (_, i) => ({ name: `g.${i}`, kind: KindCode.Gauge, value: i + second % 10 })), []);
      sock.send(new Encoder().edgeSecond({ server: 'web-1', session: 9, seq, second, part: 0, parts: 1, sentMs: Date.now(), series }), udpPort, '127.0.0.1');
    };
    const s1 = nowSecond();
    send(s1, 1);
    await until(() => (core.batches.length === 1 ? true : undefined), 5000, 'one body for 1 shard');
    // 64 shards: each of ~60 sections carries its own header, so the second no longer fits one body.
    core.shards = 64;
    send(s1 + 1, 2);
    await until(() => (core.batches.filter((b) => b.second === s1 + 1).length > 1 && core.batches.filter((b) => b.second === s1 + 1).reduce((n, b) => n + b.servers[0]!.series.pointKinds.length, 0) === 200 ? true : undefined), 5000, 'the re-cut second, in several bodies');
    const recut = core.batches.filter((b) => b.second === s1 + 1);
    for (const b of recut) expect([b.shards, b.bytes <= bodyBytesMax]).toEqual([64, true]);
    expect(recut.map((b) => b.seq).sort((a, b) => a - b)[0]).toBe(2);
    expect(new Set(recut.map((b) => b.seq)).size).toBe(recut.length);
    const m = await rackMetrics(httpPort);
    expect([m.get('apm_rack_batches_recut_total'), m.get('apm_rack_batches_rejected_total')]).toEqual([1, 0]);
    expect(m.get('apm_rack_seconds_split_total')).toBeGreaterThanOrEqual(1);
  });

  it('regression: a re-cut that needs more bodies while the disk is below its reserve waits, and newer batches go on (before: all sending stopped behind it)', async () => {
    const core = await startCore();
    core.shards = 1;
    const dir = mkdtempSync(join(tmpdir(), 'apm-rack-recut-low-'));
    const sock = dgram.createSocket('udp4');
    cleanup.push(() => void sock.close());
    const send = (port: number, second: number, seq: number) => {
      const series = buildColumns(Array.from({ length: 200 }, (_, i) => ({ name: `g.${i}`, kind: KindCode.Gauge, value: i })), []);
      sock.send(new Encoder().edgeSecond({ server: 'web-1', session: 9, seq, second, part: 0, parts: 1, sentMs: Date.now(), series }), port, '127.0.0.1');
    };
    // A batch cut for 1 shard stays on disk: the core is away.
    const first = await startRackWith(core.port, dir, { bodyBytesMax: 8 * 1024 });
    await until(() => (first.rack.spool.shards === 1 ? true : undefined), 5000, 'the core’s 1 shard learned');
    core.status = 503;
    const s1 = nowSecond();
    send(first.udpPort, s1, 1);
    await until(() => (first.rack.spool.heldBatches === 1 ? true : undefined), 5000, 'the batch spooled');
    await first.stop();
    // Back with 64 shards; the disk now below the rack's reserve: the old batch's split cannot be written.
    core.status = 204;
    core.shards = 64;
    const again = await startRackWith(core.port, dir, { bodyBytesMax: 8 * 1024, spoolReserveBytes: Number.MAX_SAFE_INTEGER });
    await until(() => (again.rack.spool.shards === 64 ? true : undefined), 5000, 'the core’s 64 shards learned');
    send(again.udpPort, nowSecond() + 1, 2);
    await until(() => (core.batches.some((b) => b.second !== s1) ? true : undefined), 8000, 'a newer batch past the waiting one');
    expect(core.batches.some((b) => b.second === s1)).toBe(false);
    expect((await rackMetrics(again.httpPort)).get('apm_rack_batches_recut_deferred_total')).toBeGreaterThanOrEqual(1);
  });

  it('a rack restarted while the core is down cuts with the shard count it learned before', async () => {
    const core = await startCore();
    core.shards = 4;
    const dir = mkdtempSync(join(tmpdir(), 'apm-rack-down-'));
    const first = await startRack(core.port, dir);
    await until(() => (first.rack.spool.shards === 4 ? true : undefined), 5000, 'the core’s 4 shards learned');
    await first.stop();
    await core.stop();
    const again = await startRack(core.port, dir);
    const edge = new Edge('web-2');
    edge.send(again.udpPort, nowSecond());
    await until(() => (again.rack.spool.heldBatches >= 1 ? true : undefined), 5000, 'a spooled body');
    const body = again.rack.spool.oldest(1)[0]!.bytes;
    expect(decodeSecond(body).input.shards).toBe(4);
    await again.stop();
    const spool = new Spool(dir, { bytesMax: 1 << 30, reserveBytes: 0, memoryBytesMax: 1 << 20 });
    cleanup.push(() => spool.close());
    expect([spool.shards, spool.heldBatches]).toEqual([4, 1]);
  });

  it('regression: an error the rack did not expect costs one datagram or one second, counted; before, it ended the process', async () => {
    const core = await startCore();
    const { rack, udpPort, httpPort } = await startRack(core.port, mkdtempSync(join(tmpdir(), 'apm-rack-bug-')));
    const edge = new Edge('web-1');
    // Stand-ins for bugs: the name table throws on the first datagram, the merger on the next second.
    const inner = rack as unknown as { names: { learn(...a: unknown[]): void }; merger: { merge(...a: unknown[]): unknown } };
    const learn = inner.names.learn.bind(inner.names);
    const merge = inner.merger.merge.bind(inner.merger);
    let learnFails = 1;
    let mergeFails = 0;
    inner.names.learn = (...a) => {
      if (learnFails-- > 0) throw new Error('bug in learn');
      learn(...a);
    };
    inner.merger.merge = (...a) => {
      if (mergeFails-- > 0) throw new Error('bug in merge');
      return merge(...a);
    };
    const spy = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const s1 = nowSecond();
      edge.send(udpPort, s1);
      await until(async () => ((await rackMetrics(httpPort)).get('apm_rack_internal_failures_total{unit="datagram"}') === 1 ? true : undefined), 5000, 'the datagram counted');
      mergeFails = 1;
      edge.send(udpPort, s1 + 1);
      await until(async () => ((await rackMetrics(httpPort)).get('apm_rack_internal_failures_total{unit="second"}') === 1 ? true : undefined), 5000, 'the second counted');
      edge.send(udpPort, s1 + 2);
      await until(() => (core.batches.some((b) => b.second === s1 + 2) ? true : undefined), 5000, 'the next second at the core');
      expect(core.batches.map((b) => b.second)).toEqual([s1 + 2]);
      expect(spy.mock.calls.map((c) => String(c[0])).filter((l) => l.startsWith('rack: BUG:'))).toHaveLength(2);
    } finally {
      spy.mockRestore();
    }
  });

  it('regression: a second past bodyBytesMax goes as several bodies, each numbered and within the bound, every point once; before, one body the core refused (413) and the rack dropped', async () => {
    const core = await startCore();
    const { udpPort, httpPort } = await startRackWith(core.port, mkdtempSync(join(tmpdir(), 'apm-rack-split-')), { bodyBytesMax: 16 * 1024 });
    const sock = dgram.createSocket('udp4');
    cleanup.push(() => void sock.close());
    const s1 = nowSecond();
    const names = Array.from({ length: 400 }, (_, i) => `wide.${i}`);
    for (let j = 0; j < 8; j++) {
      const series = buildColumns(names.map((name, i) => ({ name, kind: KindCode.Gauge, value: i + j / 10 })), [{ name: 'wide.lat', values: [j, 2 * j] }], [...names, 'wide.lat']);
      sock.send(new Encoder().edgeSecond({ server: `w-${j}`, session: 3, seq: 1, second: s1, part: 0, parts: 1, sentMs: Date.now(), series }), udpPort, '127.0.0.1');
    }
    const points = () => core.batches.filter((b) => b.second === s1).reduce((n, b) => n + b.servers.reduce((k, x) => k + x.series.pointValues.length, 0), 0);
    await until(() => (points() === 8 * 400 ? true : undefined), 8000, 'every point at the core');
    const bodies = core.batches.filter((b) => b.second === s1);
    expect(bodies.length).toBeGreaterThan(1);
    expect(new Set(bodies.map((b) => b.seq)).size).toBe(bodies.length);
    for (const b of bodies) expect(b.bytes).toBeLessThanOrEqual(16 * 1024);
    // The distribution went whole: its 8 servers' summaries in one body.
    expect(bodies.filter((b) => b.servers.some((x) => x.series.distKinds.length > 0)).map((b) => b.servers.filter((x) => x.series.distKinds.length > 0).length)).toEqual([8]);
    expect((await rackMetrics(httpPort)).get('apm_rack_seconds_split_total')).toBe(1);
    expect(core.invalid).toBe(0);
  });

  it('regression: a 404 (a wrong path, a proxy) keeps the batches and retries; before, each was dropped as sent and the spool emptied', async () => {
    const core = await startCore();
    const { rack, udpPort, httpPort } = await startRack(core.port, mkdtempSync(join(tmpdir(), 'apm-rack-404-')));
    core.status = 404;
    const edge = new Edge('web-1');
    const s1 = nowSecond();
    for (let k = 0; k < 3; k++) edge.send(udpPort, s1 + k);
    await until(async () => ((await rackMetrics(httpPort)).get('apm_rack_batches_failed_total') ?? 0) >= 1 ? true : undefined, 8000, 'a failed forward');
    expect((await rackMetrics(httpPort)).get('apm_rack_batches_rejected_total')).toBe(0);
    expect(rack.spool.heldBatches).toBeGreaterThanOrEqual(1);
    core.status = 204;
    await until(() => (core.batches.length >= 1 && rack.spool.heldBatches === 0 ? true : undefined), 15_000, 'the held batches at the core');
  });

  it('regression: a core that sends its answer a byte at a time is given up on at the request timeout, counted, and retried; before, the forwarder waited for good', async () => {
    const core = await startCore();
    core.status = 503;
    core.dripMs = 100;
    const { rack, udpPort, httpPort } = await startRackWith(core.port, mkdtempSync(join(tmpdir(), 'apm-rack-drip-')), { forwardTimeoutMs: 500 });
    const edge = new Edge('web-1');
    edge.send(udpPort, nowSecond());
    await until(async () => ((await rackMetrics(httpPort)).get('apm_rack_batches_failed_total') ?? 0) >= 2 ? true : undefined, 10_000, 'failed forwards, one per timeout');
    core.status = 204;
    core.dripMs = 0;
    await until(() => (core.batches.length >= 1 && rack.spool.heldBatches === 0 ? true : undefined), 15_000, 'the batch at the core');
  });
});
