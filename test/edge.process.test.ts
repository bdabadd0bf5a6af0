// A real DogStatsD client (hot-shots) → a running `apm edge` process → a test receiver on
// loopback standing in for the rack: every per-second summary is checked exactly.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import dgram from 'node:dgram';
import StatsD from 'hot-shots';
import { Encoder, decodeFrame, type EdgeSecondMessage } from '../schema/codec.js';
import { hashName } from '../schema/names.js';
import { mergeSecond } from './merge-helper.js';
import { nextSecond, spawnApm, until, type Daemon } from './proc.js';

interface Received {
  frame: Buffer;
  msg: EdgeSecondMessage;
  from: dgram.RemoteInfo;
}

describe('apm edge process', () => {
  let rack: dgram.Socket;
  let edge: Daemon;
  let statsdPort = 0;
  const got: Received[] = [];

  beforeAll(async () => {
    rack = dgram.createSocket('udp4');
    rack.on('message', (frame, from) => {
      const r = decodeFrame(frame, 65_507);
      if (!r.ok || r.msg.type !== 'edgeSecond') throw new Error(`edge sent an invalid datagram: ${JSON.stringify(r)}`);
      got.push({ frame, msg: r.msg, from });
    });
    await new Promise<void>((r) => rack.bind(0, '127.0.0.1', r));
    edge = spawnApm(['edge', '--server', 'test-edge-1', '--rack', `127.0.0.1:${rack.address().port}`, '--statsd', '127.0.0.1:0', '--no-host']);
    statsdPort = Number((await edge.waitFor(/StatsD on 127\.0\.0\.1:(\d+)/))[1]);
  });

  afterAll(async () => {
    await edge?.stop('SIGKILL');
    rack?.close();
  });

  const partsOf = (second: number) => got.filter((g) => g.msg.second === second && g.msg.parts > 0);
  const complete = (second: number) => {
    const parts = partsOf(second);
    return parts.length > 0 && new Set(parts.map((p) => p.msg.part)).size === parts[0]!.msg.parts ? parts : undefined;
  };

  it('aggregates a real DogStatsD client exactly per second', async () => {
    // Sending must fit inside one wall-clock second; on a loaded machine retry with fresh names.
    let second = 0;
    let latencies: number[] = [];
    let app = '';
    for (let attempt = 0; ; attempt++) {
      app = `app${attempt}`;
      const sent = await sendWorkload(statsdPort, app);
      second = sent.second;
      latencies = sent.latencies;
      if (sent.inOneSecond) break;
      expect(attempt, 'the workload never fit in one wall-clock second').toBeLessThan(2);
    }
    const parts = await until(() => complete(second), 5000, `every part of second ${second}`);
    const s = mergeSecond(parts.map((p) => p.msg));
    expect(s.points.get(`${app}.queue.depth`)).toEqual({ kind: 0, value: 199 });
    expect(s.points.get(`${app}.rpc.count`)).toEqual({ kind: 1, value: 400 });
    expect(s.points.get('good.one')).toEqual({ kind: 1, value: 5 });
    const lat = s.dists.get(`${app}.rpc.latency`)!;
    const sorted = [...latencies].sort((a, b) => a - b);
    expect([lat.count, lat.min, lat.max]).toEqual([200, sorted[0], sorted[199]]);
    expect(lat.sum).toBeCloseTo(latencies.reduce((a, b) => a + b, 0), 9);
    for (const q of [0.5, 0.9, 0.99]) {
      const exact = sorted[Math.floor(q * 199)]!;
      expect(Math.abs(lat.sketch.quantile(q, lat.min, lat.max) - exact)).toBeLessThanOrEqual(exact * 0.01);
    }
    const bytes = s.dists.get(`${app}.payload.bytes`)!;
    expect([bytes.count, bytes.sum, bytes.min, bytes.max]).toEqual([200, 200 * 1000 + 3 * (199 * 200) / 2, 1000, 1597]);
    const batch = s.dists.get(`${app}.batch.size`)!;
    expect([batch.count, batch.sum, batch.min, batch.max]).toEqual([200, -100, -5, 4]);
    expect(batch.sketch.quantile(0, batch.min, batch.max)).toBe(-5);
    // Rank 0.5 × 199 = 99.5 → the 100th value, −1 (values −5..4, 20 each).
    expect(Math.abs(batch.sketch.quantile(0.5, batch.min, batch.max) + 1)).toBeLessThanOrEqual(0.01);
    // The edge's own counters travel in its stream; they describe the second they were counted in.
    const own = await until(() => {
      const later = got.filter((g) => g.msg.second > second && g.msg.parts > 0).map((g) => g.msg);
      const m = mergeSecond(later);
      return m.points.has('apm.edge.statsd.malformed.bad_syntax') ? m : undefined;
    }, 5000, 'apm.edge.* counters');
    expect(own.points.get('apm.edge.statsd.malformed.bad_syntax')!.value + (s.points.get('apm.edge.statsd.malformed.bad_syntax')?.value ?? 0)).toBe(1);
  });

  it('answers a NACK from its resend ring with the identical datagram, and sends names on request', async () => {
    const [first] = got.filter((g) => g.msg.parts > 0);
    const { msg, from } = first!;
    const before = got.length;
    const nack = new Encoder().nack({ server: msg.server, session: msg.session, second: msg.second, missingParts: Uint16Array.of(msg.part), unknownHashes: new Uint32Array(0) });
    rack.send(nack, from.port, from.address);
    const resent = await until(() => got.slice(before).find((g) => g.msg.second === msg.second && g.msg.part === msg.part), 3000, 'the resent part');
    expect(Buffer.compare(resent.frame, first!.frame)).toBe(0);

    const h = new Uint32Array(2);
    hashName('good.one', h, 0);
    const ask = new Encoder().nack({ server: msg.server, session: msg.session, second: msg.second, missingParts: new Uint16Array(0), unknownHashes: h });
    const mark = got.length;
    rack.send(ask, from.port, from.address);
    const names = await until(() => got.slice(mark).find((g) => g.msg.parts === 0), 3000, 'a names-only datagram');
    expect(mergeSecond([names.msg]).names.size).toBe(1);
    expect([...mergeSecond([names.msg]).names.values()]).toEqual(['good.one']);

    // A NACK for another session (a restarted edge) is refused, not answered.
    const stale = new Encoder().nack({ server: msg.server, session: (msg.session + 1) >>> 0, second: msg.second, missingParts: Uint16Array.of(msg.part), unknownHashes: new Uint32Array(0) });
    const mark2 = got.length;
    rack.send(stale, from.port, from.address);
    await new Promise((r) => setTimeout(r, 300));
    expect(got.slice(mark2).filter((g) => g.msg.second === msg.second && g.msg.part === msg.part)).toEqual([]);
  });

  it('flushes the second it holds on SIGTERM and exits 0', async () => {
    const second = await nextSecond();
    const raw = dgram.createSocket('udp4');
    await new Promise((r) => raw.send('final.gauge:42|g', statsdPort, '127.0.0.1', r));
    raw.close();
    await edge.waitFor(/StatsD on/); // still running
    await new Promise((r) => setTimeout(r, 100));
    expect(await edge.stop('SIGTERM')).toBe(0);
    const last = mergeSecond(got.filter((g) => g.msg.second === second).map((g) => g.msg));
    expect(last.points.get('final.gauge')).toEqual({ kind: 0, value: 42 });
  });
});

async function sendWorkload(statsdPort: number, prefix: string): Promise<{ second: number; latencies: number[]; inOneSecond: boolean }> {
  const client = new StatsD({ host: '127.0.0.1', port: statsdPort, maxBufferSize: 0, errorHandler: (e) => console.error(e) });
  const second = await nextSecond();
  const latencies: number[] = [];
  for (let i = 0; i < 200; i++) {
    const ms = Math.round(Math.exp(1 + (i % 37) / 9) * 100) / 100;
    latencies.push(ms);
    client.timing(`${prefix}.rpc.latency`, ms, { env: 'test' });
    client.increment(`${prefix}.rpc.count`, 2);
    client.gauge(`${prefix}.queue.depth`, i);
    client.distribution(`${prefix}.payload.bytes`, 1000 + i * 3);
    client.histogram(`${prefix}.batch.size`, (i % 10) - 5);
  }
  await new Promise<void>((r) => client.close(() => r()));
  const raw = dgram.createSocket('udp4');
  await new Promise((r) => raw.send('bad line\nalso:1|zz\ngood.one:5|c', statsdPort, '127.0.0.1', r));
  raw.close();
  return { second, latencies, inOneSecond: Math.floor(Date.now() / 1000) === second };
}
