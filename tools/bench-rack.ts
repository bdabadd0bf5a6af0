// Rack figures (issue 3, DESIGN §7): server-seconds per CPU-second one `apm rack` process
// sustains (2,000 gauges per server, and with 5% distributions) at 1432- and 8192-byte
// datagrams, loss, the time from a second's end to its batch acknowledged by the core, and the
// cost of one rack at its real size (40 servers), fixed costs included.

import type { ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import http from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { KindCode } from '../schema/codec.js';
import { shardsDefault } from '../schema/limits.js';
import { Verifier } from '../schema/verify.js';
import { Aggregator } from '../edge/aggregator.js';
import { Packetizer } from '../edge/packetizer.js';
import type { Figure } from './bench-edge.js';
import { stopChild } from './bench-fleet.js';
import { spawnBenched } from './bench-proc.js';

interface FieldOffsets {
  seq: number;
  second: number;
  sentMs: number;
}

/** Byte offsets of EdgeSecond.seq, .second and .sent_ms in a frame, found with the verifier. */
function fieldOffsets(frame: Uint8Array): FieldOffsets {
  const v = new Verifier(frame.subarray(0, frame.length - 4));
  const env = v.tableAt(0, 'Envelope');
  const body = v.tableAt(v.field(env, 2, 4, 'body'), 'EdgeSecond');
  const at = { seq: v.field(body, 2, 4, 'seq'), second: v.field(body, 3, 4, 'second'), sentMs: v.field(body, 6, 8, 'sent_ms') };
  if (at.seq === 0 || at.second === 0 || at.sentMs === 0) throw new Error(`BUG: a template frame lacks seq, second or sent_ms (${JSON.stringify(at)}); build it with non-default values`);
  return at;
}

/** Stamps a template frame with a current second and send time: the rack refuses clock-skewed
 *  datagrams (issue 8), so a frame from a fixed past second would measure only the refusals. */
function patch(frame: Uint8Array, at: FieldOffsets, seq: number, second: number, sentMs: number): void {
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  dv.setUint32(at.seq, seq >>> 0, true);
  dv.setUint32(at.second, second, true);
  dv.setFloat64(at.sentMs, sentMs, true);
  dv.setUint32(frame.length - 4, crc32(frame.subarray(0, frame.length - 4)), true);
}

/**
 * One server's second as frames (2,000 metrics, `distShare` of them distributions of 20 values),
 * and names-only frames for all of them: sent once at the start, as an edge answers the rack's
 * first name asks, so the measured seconds do not ask every server for names every second.
 */
function serverFrames(server: string, datagramBytes: number, distShare: number, seed: number): { data: Uint8Array[]; names: Uint8Array[] } {
  const agg = new Aggregator({ seriesMax: 4000, observationsPerSecondMax: 100_000, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
  let s = seed >>> 0;
  const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const dists = Math.round(2000 * distShare);
  const t = 1_790_000_000;
  for (let i = 0; i < 2000 - dists; i++) agg.observe(`svc.metric_${i}`, KindCode.Gauge, Math.round(r() * 1e4) / 100, t);
  for (let d = 0; d < dists; d++) for (let k = 0; k < 20; k++) agg.observe(`svc.latency_${d}`, KindCode.Distribution, Math.exp(1 + 2 * r()), t);
  const pk = new Packetizer({ server, session: 1, datagramBytes });
  // seq and sent_ms start non-zero: a field equal to its default (0) is left out of the buffer, and patch() needs it there.
  const header = { second: t, sentMs: 1, seq: 1 };
  const data = pk.pack(agg.close(t + 1), agg, header, () => false);
  return { data, names: pk.namesOnly(agg, [...agg.names.keys()], header) };
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/** A rack's /metrics at one instant, with its CPU ticks read just before. */
interface Sample {
  cpu: number;
  atMs: number;
  text: string;
}

async function sample(pid: number, port: number): Promise<Sample> {
  const cpu = cpuTicks(pid);
  const atMs = performance.now();
  return { cpu, atMs, text: await (await fetch(`http://127.0.0.1:${port}/metrics`)).text() };
}

/** A series' value in a /metrics text (the full series name, labels included); NaN when absent. */
function valueOf(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return Number(line?.split(' ')[1] ?? NaN);
}

/** What a counter grew by between two samples. */
const grew = (a: Sample, b: Sample, series: string) => valueOf(b.text, series) - valueOf(a.text, series);

interface RackRun {
  serverSecondsPerCpuSecond: number;
  lossPercent: number;
  ackP50: number;
  ackP99: number;
  cpuPercent: number;
  /** Body bytes the sink received per point merged (packed points: ~3 for gauges). */
  bytesPerPoint: number;
}

/** Drives `servers` simulated edges for `seconds` into a real rack and a sink core. */
export async function runRack(servers: number, seconds: number, datagramBytes: number, distShare: number, warmup = 3): Promise<RackRun> {
  // A sink for the core: answers the placement as the core does (its S, and that it reads packed
  // points: the rack then packs them, as in production) and acknowledges each body (the rack's
  // latency histogram measures from a second's end to this acknowledgement).
  const sink = { bodies: 0, bytes: 0 };
  const core = http.createServer((req, res) => {
    req.on('data', (c: Buffer) => (sink.bytes += c.length));
    req.on('end', () => {
      if (req.method === 'GET' && req.url === '/api/v1/placement') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ shards: shardsDefault, pointPack: true }));
      if (req.url === '/api/v1/ingest') sink.bodies++;
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => core.listen(0, '127.0.0.1', r));
  const corePort = (core.address() as { port: number }).port;
  const spool = mkdtempSync(join(tmpdir(), 'apm-bench-rack-'));
  // Every path, a throw included, stops the rack and removes the sockets and the spool.
  const held: { rack: ChildProcess | null; sock: dgram.Socket | null } = { rack: null, sock: null };
  try {
    const rack = (held.rack = spawnBenched(['rack', '--rack', 'bench', '--listen', '127.0.0.1:0', '--core', `http://127.0.0.1:${corePort}`, '--http', '127.0.0.1:0', '--spool', spool, '--servers-max', String(servers), '--lateness', '1s'], ['ignore', 'pipe', 'inherit']));
    const ports = await new Promise<{ udp: number; http: number }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('bench rack INVALID RUN: apm rack printed no ready line in 60 s')), 60_000);
      rack.stdout!.on('data', (d: Buffer) => {
        const m = /UDP on [^:]+:(\d+) .*metrics on http:\/\/[^:]+:(\d+)/.exec(d.toString());
        if (m) {
          clearTimeout(timer);
          resolve({ udp: Number(m[1]), http: Number(m[2]) });
        }
      });
      rack.once('exit', () => {
        clearTimeout(timer);
        reject(new Error('apm rack exited during start-up'));
      });
    });
    // Precompute each server's frames once; every second only the second, seq and CRC change.
    const built = Array.from({ length: servers }, (_, i) => serverFrames(`bench-${String(i).padStart(5, '0')}`, datagramBytes, distShare, i + 1));
    const templates = built.map((b) => b.data);
    const offsets = templates.map((fs) => fs.map(fieldOffsets));
    const partsPerSecond = templates.reduce((a, fs) => a + fs.length, 0);
    const udp = (held.sock = dgram.createSocket({ type: 'udp4', sendBufferSize: 8 * 1024 * 1024 }));
    const seqs = new Uint32Array(servers);
    // Servers send in 25 slices over the first half of the second (edges' clocks and close
    // delays differ; one burst of every server at once would only measure the socket buffer).
    const slices = 25;
    const sendSlice = (second: number, slice: number) => {
      for (let i = slice; i < servers; i += slices) {
        const fs = templates[i]!;
        for (let p = 0; p < fs.length; p++) {
          patch(fs[p]!, offsets[i]![p]!, seqs[i]! + p + 1, second, Date.now());
          udp.send(fs[p]!, ports.udp, '127.0.0.1');
        }
        seqs[i]! += fs.length;
      }
    };
    let s0: Sample | null = null;
    let bytes0 = 0;
    for (let k = 0; k < warmup + seconds; k++) {
      const now = Date.now();
      await new Promise((r) => setTimeout(r, 1000 - (now % 1000) + 5));
      let second = Math.floor(Date.now() / 1000);
      if (k === 0) {
        // Names first (an edge's answers to the rack's name asks), spread like the seconds.
        for (let slice = 0; slice < slices; slice++) {
          for (let i = slice; i < servers; i += slices) {
            for (const f of built[i]!.names) {
              patch(f, fieldOffsets(f), ++seqs[i]!, second, Date.now());
              udp.send(f, ports.udp, '127.0.0.1');
            }
          }
          await new Promise((r) => setTimeout(r, 20));
        }
      }
      if (k === warmup) {
        // The warm-up's seconds close (1 s lateness) and go before the window opens: the window
        // holds the measured seconds' whole cost (received, merged, cut, spooled, posted) and
        // nothing else of the load.
        await new Promise((r) => setTimeout(r, 2500));
        s0 = await sample(rack.pid!, ports.http);
        bytes0 = sink.bytes;
        await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
        second = Math.floor(Date.now() / 1000);
      }
      for (let slice = 0; slice < slices; slice++) {
        sendSlice(second, slice);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    // Wait for the measured seconds to close (1 s lateness) and reach the sink.
    await new Promise((r) => setTimeout(r, 2500));
    const s1 = await sample(rack.pid!, ports.http);
    const sinkBodies = sink.bodies;
    const sinkBytes = sink.bytes - bytes0;
    if (s0 === null) throw new Error('BUG: no sample at the window start');
    const cpuSeconds = (s1.cpu - s0.cpu) / 100;
    const received = grew(s0, s1, 'apm_rack_parts_received_total');
    const expected = partsPerSecond * seconds;
    // What the rack did in the window: the figure counts server-seconds merged and forwarded (the
    // sink acknowledged them), not parts sent (before: a rack that only decoded looked as cheap).
    const merged = grew(s0, s1, 'apm_rack_summaries_merged_total');
    const acked = grew(s0, s1, 'apm_rack_batches_acked_total');
    const serverSeconds = merged / 2000;
    const failures = ['apm_rack_internal_failures_total{unit="datagram"}', 'apm_rack_internal_failures_total{unit="second"}', 'apm_rack_batches_spool_failed_total', 'apm_rack_section_metrics_dropped_total', 'apm_rack_metrics_too_large_total', 'apm_rack_rollup_overflow_total']
      .map((m) => [m, grew(s0!, s1, m)] as const)
      .filter(([, n]) => n !== 0);
    // A run where the rack refused, lost or dropped anything measures nothing: say so, never print a figure.
    const invalid: string[] = [];
    if (!(received > 0)) invalid.push(`the rack accepted ${received} of ${expected} parts (refusals by reason: ${rejections(s1.text) || 'none'})`);
    if (!(serverSeconds >= 0.99 * servers * seconds)) invalid.push(`the rack merged ${serverSeconds} of ${servers * seconds} server-seconds`);
    if (!(acked >= seconds) || sinkBodies < seconds) invalid.push(`the core acknowledged ${acked} bodies for ${seconds} seconds (${sinkBodies} received by the sink)`);
    if (failures.length > 0) invalid.push(`the rack dropped or failed: ${failures.map(([m, n]) => `${m} ${n}`).join(', ')}`);
    if (!(cpuSeconds > 0)) invalid.push(`the rack used ${cpuSeconds} CPU-seconds`);
    // The sink says it reads packed points, as the core does: a rack that did not pack measures another rack.
    if (valueOf(s1.text, 'apm_rack_points_packed') !== 1) invalid.push('the rack did not pack its points (apm_rack_points_packed is not 1)');
    if (invalid.length > 0) throw new Error(`bench rack INVALID RUN (${servers} servers, ${datagramBytes} B, ${distShare * 100}% distributions): ${invalid.join('; ')}`);
    const q = latencyQuantiles(s0.text, s1.text);
    return {
      serverSecondsPerCpuSecond: serverSeconds / cpuSeconds,
      lossPercent: (100 * Math.max(0, expected - received)) / expected,
      ackP50: q.p50,
      ackP99: q.p99,
      cpuPercent: (100 * cpuSeconds) / ((s1.atMs - s0.atMs) / 1000),
      bytesPerPoint: sinkBytes / merged,
    };
  } finally {
    if (held.rack !== null) await stopChild(held.rack);
    held.sock?.close();
    core.close();
    rmSync(spool, { recursive: true, force: true });
  }
}

/** The rack's non-zero datagram refusal counters, as `reason=n, …`. */
function rejections(text: string): string {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^apm_rack_datagrams_rejected_total\{reason="([^"]+)"\} (\d+)/.exec(line);
    if (m && m[2] !== '0') out.push(`${m[1]}=${m[2]}`);
  }
  return out.join(', ');
}

/** The forward-latency histogram's cumulative buckets in a /metrics text, [upper bound, count]. */
function latencyBuckets(text: string): [number, number][] {
  const buckets: [number, number][] = [];
  for (const line of text.split('\n')) {
    const m = /^apm_rack_forward_latency_seconds_bucket\{le="([^"]+)"\} (\d+)/.exec(line);
    if (m) buckets.push([m[1] === '+Inf' ? Infinity : Number(m[1]), Number(m[2])]);
  }
  return buckets;
}

/**
 * p50/p99 of the acknowledgements between two samples of the rack's forward-latency histogram:
 * the buckets' growth, interpolated linearly within the bucket a quantile falls in (before: the
 * whole run's buckets, warm-up included, and a bucket's upper bound, so every run printed 1.5 s).
 */
export function latencyQuantiles(before: string, after: string): { p50: number; p99: number } {
  const b0 = new Map(latencyBuckets(before));
  const grown = latencyBuckets(after).map(([le, c]) => [le, c - (b0.get(le) ?? 0)] as [number, number]);
  const total = grown[grown.length - 1]?.[1] ?? 0;
  const at = (q: number) => {
    const want = q * total;
    let lowLe = 0;
    let lowCount = 0;
    for (const [le, c] of grown) {
      if (c >= want) return le === Infinity ? lowLe : c === lowCount ? le : lowLe + ((le - lowLe) * (want - lowCount)) / (c - lowCount);
      lowLe = le;
      lowCount = c;
    }
    return NaN;
  };
  return total === 0 ? { p50: NaN, p99: NaN } : { p50: at(0.5), p99: at(0.99) };
}

export async function rackFigures(quick: boolean): Promise<Figure[]> {
  const out: Figure[] = [];
  const seconds = quick ? 4 : 10;
  for (const [label, share] of [
    ['2,000 gauges', 0],
    ['5% distributions', 0.05],
  ] as const) {
    for (const size of [1432, 8192]) {
      const servers = size === 1432 ? 300 : 400;
      const r = await runRack(servers, seconds, size, share);
      const tag = `${label}, ${size} B, ${servers} servers`;
      out.push({ name: `rack server-seconds per CPU-second (${tag})`, value: r.serverSecondsPerCpuSecond, unit: '/s', target: '≥ 2,000' });
      out.push({ name: `rack summaries per CPU-second (${tag})`, value: r.serverSecondsPerCpuSecond * 2000, unit: '/s', target: '≥ 4 M' });
      out.push({ name: `rack CPU (${tag})`, value: r.cpuPercent, unit: '% of one core' });
      out.push({ name: `rack → core body bytes per point (${tag})`, value: r.bytesPerPoint, unit: 'B' });
      out.push({ name: `parts lost (${tag})`, value: r.lossPercent, unit: '%' });
      out.push({ name: `second end → batch acked, p50 / p99 (${tag}, lateness 1 s)`, value: r.ackP50, unit: `s / ${r.ackP99.toFixed(2)} s` });
    }
  }
  // One rack at its real size (DESIGN: 40 servers): what a deployed rack costs, fixed costs
  // included (timers, per-second cutting into every shard's section, the spool's commit, the
  // POST, V8's compiler and collector threads), which 300 servers' figures hide. Longer, as its
  // CPU is small against this box's noise, and a longer warm-up: code that runs once a second
  // takes V8 a minute to optimize (compilations per 10 s at 40 servers: 114, 23, 10, 8, 5, …).
  const one = await runRack(40, quick ? 6 : 20, 1432, 0, quick ? 3 : 30);
  out.push({ name: 'rack server-seconds per CPU-second (one rack: 40 servers × 2,000 gauges, 1432 B)', value: one.serverSecondsPerCpuSecond, unit: '/s', target: '≥ 2,000' });
  out.push({ name: 'rack CPU (one rack: 40 servers × 2,000 gauges, 1432 B)', value: one.cpuPercent, unit: '% of one core' });
  out.push({ name: 'rack → core body bytes per point (one rack: 40 servers × 2,000 gauges, 1432 B)', value: one.bytesPerPoint, unit: 'B' });
  out.push({ name: 'parts lost (one rack: 40 servers × 2,000 gauges, 1432 B)', value: one.lossPercent, unit: '%' });
  return out;
}
