// Edge figures (issue 2, DESIGN §7): wire bytes and datagrams per server-second, decode time
// per second, and a real `apm edge` process's CPU and RSS under 2,000 metrics + 20,000 lines/s.

import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Body, KindCode, decodeFrame } from '../schema/codec.js';
import { hashName } from '../schema/names.js';
import { Aggregator, dropReasons } from '../edge/aggregator.js';
import { malformedReasons, refusedReasons } from '../edge/statsd.js';
import { Packetizer } from '../edge/packetizer.js';

export interface Figure {
  name: string;
  value: number;
  unit: string;
  target?: string;
}

const t0 = 1_790_000_000;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

/** One server-second of `gauges` gauges and `dists` distributions of `perDist` observations, packed. */
function packSecond(datagramBytes: number, gauges: number, dists: number, perDist: number, namedSeconds: boolean): Uint8Array[] {
  const agg = new Aggregator({ seriesMax: 10_000, observationsPerSecondMax: 200_000, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
  const r = rng(7);
  for (let i = 0; i < gauges; i++) agg.observe(`svc.component.metric_${i}`, KindCode.Gauge, Math.round(r() * 10000) / 100, t0);
  for (let d = 0; d < dists; d++) {
    for (let k = 0; k < perDist; k++) agg.observe(`svc.rpc.latency_${d}`, KindCode.Distribution, Math.round(Math.exp(2 + 1.2 * (r() + r() + r() - 1.5)) * 1000) / 1000, t0);
  }
  const pk = new Packetizer({ server: 'web-0001.dc1', session: 1, datagramBytes });
  // Steady state: no names (they ride along for new series and once per 30 s per series).
  return pk.pack(agg.close(t0 + 1), agg, { second: t0, sentMs: 0, seq: 0 }, () => namedSeconds);
}

export function wireFigures(): Figure[] {
  const out: Figure[] = [];
  for (const [label, gauges, dists] of [
    ['2,000 gauges', 2000, 0],
    ['1,900 gauges + 100 distributions × 50', 1900, 100],
  ] as const) {
    for (const size of [1432, 8192]) {
      const frames = packSecond(size, gauges, dists, 50, false);
      const bytes = frames.reduce((a, f) => a + f.length, 0);
      out.push({ name: `wire bytes per server-second, ${label}, ${size} B datagrams`, value: bytes, unit: 'B' });
      out.push({ name: `datagrams per server-second, ${label}, ${size} B datagrams`, value: frames.length, unit: '' });
    }
    const named = packSecond(1432, gauges, dists, 50, true).reduce((a, f) => a + f.length, 0);
    out.push({ name: `wire bytes per server-second with every name attached, ${label}, 1432 B`, value: named, unit: 'B' });
  }
  for (const [label, dists] of [
    ['2,000 gauges', 0],
    ['1,900 gauges + 100 distributions', 100],
  ] as const) {
    const frames = packSecond(1432, 2000 - dists, dists, 50, false);
    const rounds = 2000;
    let sink = 0;
    for (let i = 0; i < 200; i++) for (const f of frames) sink += decodeFrame(f, 65_507).ok ? 1 : 0;
    const start = process.hrtime.bigint();
    for (let i = 0; i < rounds; i++) for (const f of frames) sink += decodeFrame(f, 65_507).ok ? 1 : 0;
    const us = Number(process.hrtime.bigint() - start) / 1000 / rounds;
    if (sink !== (rounds + 200) * frames.length) throw new Error('BUG: benchmark frames failed to decode');
    out.push({ name: `decode + validate one server-second (${label}, 1432 B parts)`, value: us, unit: 'µs' });
  }
  return out;
}

function procStat(pid: number): { cpuTicks: number; rssBytes: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const cpuTicks = Number(fields[11]) + Number(fields[12]);
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
  return { cpuTicks, rssBytes: Number(rss?.[1] ?? 0) * 1024 };
}

/** Runs a real edge under 20,000 lines/s over 2,000 metrics for `seconds`, measuring CPU and RSS. */
export async function edgeProcessFigures(seconds: number): Promise<Figure[]> {
  const rack = dgram.createSocket('udp4');
  let rackDatagrams = 0;
  let rackBytes = 0;
  // The edge's own counters travel in its datagrams (apm.edge.*, deltas per second): the lines it
  // parsed, and anything it refused or dropped, read here to check the load it was measured under.
  const h = new Uint32Array(2);
  const keyOf = (name: string) => (hashName(name, h, 0), `${h[0]}:${h[1]}`);
  const parsedKey = keyOf('apm.edge.statsd.lines');
  const dropNames = [
    'apm.edge.statsd_queue_dropped',
    ...Object.keys(malformedReasons).map((r) => `apm.edge.statsd.malformed.${r}`),
    ...Object.keys(refusedReasons).map((r) => `apm.edge.statsd.refused.${r}`),
    ...Object.keys(dropReasons).map((r) => `apm.edge.dropped.${r}`),
  ];
  const dropKeys = new Map(dropNames.map((n) => [keyOf(n), n]));
  const edgeSaid = { parsed: 0, dropped: new Map<string, number>(), undecodable: 0 };
  rack.on('message', (m) => {
    rackDatagrams++;
    rackBytes += m.length;
    const d = decodeFrame(m, 65_507, { expect: Body.EdgeSecond });
    if (!d.ok || d.msg.type !== 'edgeSecond') return void edgeSaid.undecodable++;
    const c = d.msg.series;
    for (let i = 0; i < c.pointKinds.length; i++) {
      const key = `${c.pointHashes[2 * i]}:${c.pointHashes[2 * i + 1]}`;
      if (key === parsedKey) edgeSaid.parsed += c.pointValues[i]!;
      else {
        const name = dropKeys.get(key) ?? null;
        if (name !== null) edgeSaid.dropped.set(name, (edgeSaid.dropped.get(name) ?? 0) + c.pointValues[i]!);
      }
    }
  });
  await new Promise<void>((r) => rack.bind(0, '127.0.0.1', r));
  // Through the launcher, as users run it (it sets the edge's V8 flags; `exec` keeps the pid).
  const apm = fileURLToPath(new URL('../../tools/apm', import.meta.url));
  const child = spawn(apm, ['edge', '--server', 'bench-edge', '--rack', `127.0.0.1:${rack.address().port}`, '--statsd', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      const m = /StatsD on [^:]+:(\d+)/.exec(d.toString());
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', () => reject(new Error('apm edge exited during start-up')));
  });
  // 2,000 metrics: 1,800 gauges, 100 counters, 100 timers; 20 lines per datagram, 1,000 datagrams/s.
  const lines: string[] = [];
  for (let i = 0; i < 1800; i++) lines.push(`app.gauge_${i}:`);
  for (let i = 0; i < 100; i++) lines.push(`app.count_${i}:`);
  for (let i = 0; i < 100; i++) lines.push(`app.latency_${i}:`);
  const client = dgram.createSocket('udp4');
  const r = rng(3);
  let cursor = 0;
  let linesSent = 0;
  const sendTick = (linesPerTick: number) => {
    for (let sent = 0; sent < linesPerTick; sent += 20) {
      linesSent += 20;
      let payload = '';
      for (let k = 0; k < 20; k++) {
        const i = cursor++ % lines.length;
        const type = i < 1800 ? 'g' : i < 1900 ? 'c' : 'ms';
        payload += `${lines[i]}${(r() * 100).toFixed(2)}|${type}${k === 19 ? '' : '\n'}`;
      }
      client.send(payload, port, '127.0.0.1');
    }
  };
  const warmupS = 3;
  const timer = setInterval(() => sendTick(200), 10); // 200 lines per 10 ms = 20,000 lines/s
  await new Promise((res) => setTimeout(res, warmupS * 1000));
  const a = procStat(child.pid!);
  const sent0 = linesSent;
  const d0 = rackDatagrams;
  const b0 = rackBytes;
  const start = Date.now();
  let rssMax = 0;
  while (Date.now() - start < seconds * 1000) {
    await new Promise((res) => setTimeout(res, 500));
    rssMax = Math.max(rssMax, procStat(child.pid!).rssBytes);
  }
  const b = procStat(child.pid!);
  const elapsedS = (Date.now() - start) / 1000;
  const offered = (linesSent - sent0) / elapsedS;
  const d1 = rackDatagrams;
  const b1 = rackBytes;
  clearInterval(timer);
  // The last seconds' counters reach the sink (an edge closes a second after it ends).
  await new Promise((res) => setTimeout(res, 2500));
  child.kill('SIGTERM');
  await new Promise((res) => child.once('exit', res));
  client.close();
  rack.close();
  const ticksPerS = 100; // USER_HZ on Linux
  if (d1 - d0 === 0) throw new Error(`bench edge INVALID RUN: the edge sent no datagrams to the rack in ${elapsedS.toFixed(0)} s of load`);
  // The figure holds only for the load it claims: every line sent parsed (the edge's own count,
  // over the whole run), nothing dropped, and the offered rate near 20,000 lines/s.
  const dropped = [...edgeSaid.dropped].filter(([, n]) => n > 0);
  const invalid: string[] = [];
  if (edgeSaid.parsed < 0.99 * linesSent) invalid.push(`the edge parsed ${edgeSaid.parsed} of the ${linesSent} lines sent`);
  if (dropped.length > 0) invalid.push(`the edge refused or dropped: ${dropped.map(([n, k]) => `${n} ${k}`).join(', ')}`);
  if (edgeSaid.undecodable > 0) invalid.push(`${edgeSaid.undecodable} of its datagrams did not decode`);
  if (offered < 0.95 * 20_000) invalid.push(`the load offered ${offered.toFixed(0)} lines/s, not ~20,000 (this box is too busy)`);
  if (invalid.length > 0) throw new Error(`bench edge INVALID RUN: ${invalid.join('; ')}`);
  const cpuPercent = ((b.cpuTicks - a.cpuTicks) / ticksPerS / elapsedS) * 100;
  return [
    { name: 'edge CPU at 2,000 metrics + 20,000 StatsD lines/s (host collector on)', value: cpuPercent, unit: '% of one core', target: '≤ 1%' },
    { name: 'edge RSS (max) under that load', value: rssMax / 1024 / 1024, unit: 'MiB', target: '≤ 64 MiB' },
    { name: 'StatsD lines offered per second in the measured window (all parsed, none dropped)', value: offered, unit: 'lines/s' },
    { name: 'edge → rack datagrams per second under that load', value: (d1 - d0) / elapsedS, unit: '/s' },
    { name: 'edge → rack bytes per second under that load', value: (b1 - b0) / elapsedS, unit: 'B/s' },
  ];
}
