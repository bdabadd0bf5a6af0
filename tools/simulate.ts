// `apm simulate`: N servers × M metrics sent to racks as real edges would (issue 7): the same
// wire encoding as `apm edge`, one EdgeSecond per datagram, sequence numbers, names for new
// series and a periodic refresh, and answers to NACKs from a resend ring. Values come from
// deterministic shapes stepped over columns (tools/shapes.ts); distribution seconds are drawn
// from precomputed summaries, so the simulator stays cheaper than what it drives.

import dgram from 'node:dgram';
import { randomInt } from 'node:crypto';
import { authHeaderBytes, open, sign, type KeySet } from '../schema/auth.js';
import { Body, Encoder, FrameArena, KindCode, decodeFrame, emptyColumns, nameColumns, type NackMessage, type SeriesColumns } from '../schema/codec.js';
import { datagramBytesDefault, udpPayloadBytesMax } from '../schema/limits.js';
import { hashName, hashKey } from '../schema/names.js';
import { SortedSketchEncoder } from '../schema/sketch.js';
import { ResendRing } from '../edge/ring.js';
import { frameBytesBound } from '../edge/packetizer.js';
import { ShapeColumns, shapeOf, Shape } from './shapes.js';

export interface SimulatorOptions {
  /** The racks; `keys` overrides the shared `keys` for one rack (each rack's key file names it, issue 16.5). */
  racks: { host: string; port: number; keys?: KeySet | null }[];
  servers: number;
  metrics: number;
  /** Share of metrics that are latency distributions. */
  distShare: number;
  datagramBytes: number;
  seed: number;
  /** Server id prefix; servers are `<prefix>-<rack>-<n>`. */
  prefix: string;
  /** Seconds sent per wall-clock second (1: real time; more: backfill from the past). */
  speedup?: number;
  /** Exact observations of the servers and metrics matching these are passed to `record`. */
  recordServers?: RegExp;
  recordMetrics?: RegExp;
  record?: (line: RecordedObservation) => void;
  /** Keys shared with the racks (`--key-file`): datagrams are signed, NACKs must be. */
  keys?: KeySet | null;
  /** Added to the wall clock (ms), to play edges with skewed clocks (`--clock-offset`, for tests). */
  clockOffsetMs?: number;
}

/** One second of one series as sent: a gauge/counter value, or a distribution's observations. */
export interface RecordedObservation {
  server: string;
  metric: string;
  second: number;
  kind: 'gauge' | 'counter' | 'distribution';
  values: number[];
}

const variants = 32;
const shapeNames = ['cpu', 'rpc_count', 'config', 'queue_unacked', 'carts'];

/** Precomputed distribution seconds: per variant count, sum, min, max and encoded sketch. */
interface DistPool {
  /** The observations of each variant (for --record). */
  values: Float64Array[];
  count: Uint32Array;
  sum: Float64Array;
  min: Float64Array;
  max: Float64Array;
  sketch: Uint8Array[];
}

function distPool(seed: number): DistPool {
  let s = seed >>> 0 || 1;
  const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
  const enc = new SortedSketchEncoder();
  const pool: DistPool = { values: [], count: new Uint32Array(variants), sum: new Float64Array(variants), min: new Float64Array(variants), max: new Float64Array(variants), sketch: [] };
  for (let v = 0; v < variants; v++) {
    const n = 5 + Math.floor(rand() * 40);
    const vals = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const g = Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
      vals[i] = Math.round(Math.exp(2.5 + 0.8 * g) * 100) / 100; // ms, lognormal around 12 ms
    }
    vals.sort();
    const out = new Uint8Array(enc.bin(vals, null, 0, n));
    enc.encode(out, 0);
    pool.count[v] = n;
    pool.sum[v] = vals.reduce((a, b) => a + b, 0);
    pool.min[v] = vals[0]!;
    pool.max[v] = vals[n - 1]!;
    pool.sketch.push(out);
    pool.values.push(vals);
  }
  return pool;
}

interface SimServer {
  id: string;
  rack: SimulatorOptions['racks'][number];
  session: number;
  seq: number;
  ring: ResendRing;
  bornSecond: number;
  /**
   * Memory of the frames of the last ringSeconds + 1 seconds, second t in arenas[t mod that]:
   * reused once its second has left the ring (which holds at most ringSeconds), so that sending
   * allocates nothing once every arena has reached its size. One array per datagram was a fifth
   * of this process' CPU (allocation, and the collector's work on tens of thousands of array
   * buffers a second); a fresh array per second still paid for zeroing and first-touching it.
   */
  arenas: (FrameArena | undefined)[];
  /** Bytes the last second's frames took (with alignment): a new arena is sized by it. */
  secondBytes: number;
}

/** Seconds of frames a simulated edge keeps to answer NACKs (ResendRing). */
const ringSeconds = 10;

/** A backfill's sending per turn of the event loop, at most (its timers and signal handlers run between). */
const backfillTurnMs = 100;

export class Simulator {
  private readonly encoder = new Encoder();
  /** One socket per rack, connected to it: a send then skips the address lookup Node does per datagram (a quarter of this process' CPU). */
  private readonly sockets = new Map<SimulatorOptions['racks'][number], dgram.Socket>();
  private readonly servers: SimServer[] = [];
  private readonly byId = new Map<string, SimServer>();
  private readonly gauges: number;
  private readonly dists: number;
  private readonly names: string[];
  private readonly hashes: Uint32Array;
  private readonly kinds: Uint8Array;
  private readonly shapes: ShapeColumns;
  private readonly pool: DistPool;
  private readonly nameOf = new Map<string, number>();
  private readonly distPerPart: number;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private s: number;
  private readonly keys: KeySet | null;
  /** Frames are packed to this size, leaving room for the auth header when signing. */
  private readonly frameBytesMax: number;
  readonly counters = { seconds: 0, seconds_late: 0, points_sent: 0, datagrams_sent: 0, bytes_sent: 0, nacks: 0, nacks_refused: 0, resent: 0, resend_missed: 0, names_sent: 0 };
  /** Socket errors by code (a rack not listening yet answers ICMP port unreachable). */
  readonly sendErrors: Record<string, number> = {};

  constructor(private readonly opts: SimulatorOptions) {
    if (opts.racks.length === 0) throw new Error('simulate: give at least one --rack host:port');
    this.s = opts.seed >>> 0 || 1;
    this.keys = opts.keys ?? null;
    // Every MAC covers the rack's id, which only a key file naming it (rack=<id>) tells us.
    for (const r of opts.racks) {
      const k = r.keys ?? this.keys;
      if (k !== null && k.rack === null) throw new Error(`simulate: the key file for rack ${r.host}:${r.port} names no rack; add rack=<its --rack id> to its lines (every MAC covers the rack id)`);
    }
    this.frameBytesMax = opts.datagramBytes - (this.keys === null && opts.racks.every((r) => (r.keys ?? null) === null) ? 0 : authHeaderBytes);
    this.dists = Math.round(opts.metrics * opts.distShare);
    this.gauges = opts.metrics - this.dists;
    this.names = [];
    for (let i = 0; i < this.gauges; i++) this.names.push(`sim.${shapeNames[shapeOf(i)]}.${i}`);
    for (let d = 0; d < this.dists; d++) this.names.push(`sim.rpc_latency_ms.${d}`);
    this.hashes = new Uint32Array(2 * opts.metrics);
    this.names.forEach((n, i) => {
      hashName(n, this.hashes, 2 * i);
      this.nameOf.set(hashKey(this.hashes[2 * i]!, this.hashes[2 * i + 1]!), i);
    });
    this.kinds = Uint8Array.from({ length: this.gauges }, (_, i) => (shapeOf(i) === Shape.Counter ? KindCode.Counter : KindCode.Gauge));
    this.shapes = new ShapeColumns(opts.servers * this.gauges, opts.seed, this.gauges);
    this.pool = distPool(opts.seed + 1);
    const now = Math.floor(this.now() / 1000);
    for (let i = 0; i < opts.servers; i++) {
      const r = Math.floor(i / 40) % opts.racks.length;
      const server: SimServer = {
        id: `${opts.prefix}-r${r + 1}-${String(i).padStart(5, '0')}`,
        rack: opts.racks[r]!,
        session: randomInt(1, 0xffffffff),
        seq: 1,
        ring: new ResendRing(ringSeconds, 512 * 1024),
        arenas: new Array<FrameArena | undefined>(ringSeconds + 1),
        bornSecond: now,
        secondBytes: 1 << 12,
      };
      this.servers.push(server);
      this.byId.set(server.id, server);
    }
    // Distributions per part, from the same size bound the edge uses, for the widest pooled
    // sketch and the longest name (points are packed exactly, per second, in sendServer).
    const maxSketch = Math.max(...this.pool.sketch.map((k) => k.length));
    const maxName = Math.max(...this.names.map((x) => x.length));
    let n = 1;
    while (frameBytesBound(65, 0, n + 1, (n + 1) * maxSketch, n + 1, (n + 1) * maxName) <= this.frameBytesMax) n++;
    this.distPerPart = n;
    for (const r of opts.racks) {
      if (this.sockets.has(r)) continue;
      const socket = dgram.createSocket({ type: r.host.includes(':') ? 'udp6' : 'udp4', sendBufferSize: 16 * 1024 * 1024 });
      // A connected socket takes datagrams from its rack's address only: NACKs come back on it
      // (--rack must be the address the rack answers from, as on loopback).
      socket.on('message', (msg) => this.onNack(msg, r.keys ?? this.keys));
      this.sockets.set(r, socket);
    }
  }

  /** The simulated fleet's clock (the wall clock plus --clock-offset). */
  private now(): number {
    return Date.now() + (this.opts.clockOffsetMs ?? 0);
  }

  private rand(): number {
    this.s = (Math.imul(this.s, 1664525) + 1013904223) >>> 0;
    return this.s / 4294967296;
  }

  async start(): Promise<void> {
    for (const [rack, socket] of this.sockets) {
      await new Promise<void>((r) => socket.bind(0, r));
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.connect(rack.port, rack.host, () => {
          socket.removeListener('error', reject);
          // A rack not listening yet answers ICMP port unreachable: a connected socket reports it; an edge keeps sending.
          socket.on('error', (err: NodeJS.ErrnoException) => {
            const code = err.code ?? 'unknown';
            if (this.sendErrors[code] === undefined) console.error(`apm simulate: sending to rack ${rack.host}:${rack.port}: ${err.message} (counted from now on by code)`);
            this.sendErrors[code] = (this.sendErrors[code] ?? 0) + 1;
          });
          resolve();
        });
      });
    }
    const speedup = this.opts.speedup ?? 1;
    if (speedup <= 1) {
      // Real time: each second is sent just after it ends, as an edge does — every second, even
      // when sending one ran late (then the missed ones go out at once, counted as late).
      let next = Math.floor(this.now() / 1000);
      const tick = () => {
        const now = this.now();
        this.timer = setTimeout(() => {
          const send = async () => {
            const due = Math.floor(this.now() / 1000) - 1;
            if (due > next) this.counters.seconds_late += due - next;
            while (next <= due && !this.stopped) await this.sendSecond(next++, next <= due ? 1 : 25);
          };
          if (!this.stopped) void send().then(tick);
        }, 1000 - (now % 1000) + 30);
      };
      tick();
      return;
    }
    // Backfill: seconds from the past, `speedup` of them per wall-clock second.
    const t0 = Math.floor(this.now() / 1000) - 3600;
    const started = Date.now();
    let next = t0;
    // At most backfillTurnMs of sending a turn, then timers and signals run (a turn cut short goes
    // on at once after them): a catch-up of an hour went on to its end before --seconds or
    // SIGTERM could stop it (16 s at 40 servers).
    const tick = (delayMs: number) => {
      this.timer = setTimeout(() => {
        if (this.stopped) return;
        const due = t0 + Math.floor(((Date.now() - started) / 1000) * speedup);
        const until = Date.now() + backfillTurnMs;
        const send = async () => {
          while (next <= due && next < Math.floor(this.now() / 1000) - 1 && !this.stopped) {
            if (Date.now() >= until) return true;
            await this.sendSecond(next++, 1);
          }
          return false;
        };
        void send().then((cut) => tick(cut ? 0 : 50));
      }, delayMs);
    };
    tick(50);
  }

  /** CPU this process used, in seconds (so benchmarks can subtract the simulator). */
  cpuSeconds(): number {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  }

  /** Stops sending and closes the sockets; a second call does nothing. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    await Promise.all([...this.sockets.values()].map((socket) => new Promise<void>((r) => socket.close(() => r()))));
  }

  /** Sends second t for every server, spread over ~half a second (edges do not all send at once). */
  async sendSecond(t: number, slicesMax = 25): Promise<void> {
    this.shapes.step(t);
    const slices = Math.min(slicesMax, this.servers.length);
    for (let slice = 0; slice < slices && !this.stopped; slice++) {
      for (let i = slice; i < this.servers.length; i += slices) this.sendServer(i, t);
      if (slice < slices - 1) await new Promise((r) => setTimeout(r, 15));
    }
    this.counters.seconds++;
  }

  private named(server: SimServer, metric: number, t: number): boolean {
    return t - server.bornSecond < 5 || metric % 30 === t % 30;
  }

  private sendServer(i: number, t: number): void {
    const server = this.servers[i]!;
    const g = this.gauges;
    const values = this.shapes.values.subarray(i * g, (i + 1) * g);
    const frames: Uint8Array[] = [];
    // The second's frames are carved from its arena (SimServer.arenas).
    const slot = t % (ringSeconds + 1);
    let arena = server.arenas[slot];
    if (arena === undefined) server.arenas[slot] = arena = new FrameArena(server.secondBytes);
    arena.reset();
    // Gauges and counters packed greedily as the edge's packetizer does (names cost only when
    // attached); distributions in the parts after them.
    const serverBytes = Buffer.byteLength(server.id) + 1;
    const bounds = [0];
    let count = 0;
    let named = 0;
    let nameBytes = 0;
    for (let m = 0; m < g; m++) {
      const len = this.named(server, m, t) ? this.names[m]!.length : -1;
      if (frameBytesBound(serverBytes, count + 1, 0, 0, named + (len >= 0 ? 1 : 0), nameBytes + Math.max(0, len)) > this.frameBytesMax) {
        bounds.push(m);
        count = 0;
        named = 0;
        nameBytes = 0;
      }
      count++;
      if (len >= 0) {
        named++;
        nameBytes += len;
      }
    }
    if (g > 0) bounds.push(g);
    const pointParts = bounds.length - 1;
    const distPerPart = this.distPerPart;
    const distParts = Math.ceil(this.dists / distPerPart);
    const parts = pointParts + distParts;
    for (let p = 0; p < pointParts; p++) {
      const from = bounds[p]!;
      const to = bounds[p + 1]!;
      const series: SeriesColumns = { ...emptyColumns(), pointHashes: this.hashes.subarray(2 * from, 2 * to), pointKinds: this.kinds.subarray(from, to), pointValues: values.subarray(from, to), ...this.nameColumns(server, from, to, t) };
      frames.push(this.frame(server, t, frames.length, parts, series, arena));
    }
    for (let p = 0; p < distParts; p++) {
      const from = g + p * distPerPart;
      const to = Math.min(g + this.dists, from + distPerPart);
      frames.push(this.frame(server, t, frames.length, parts, { ...this.distColumns(from, to), ...this.nameColumns(server, from, to, t) }, arena));
    }
    let bytes = 0;
    for (const f of frames) bytes += f.length + 8;
    server.secondBytes = bytes + (bytes >> 4);
    server.ring.put(t, frames);
    for (const f of frames) this.send(server, f);
    this.counters.points_sent += this.opts.metrics;
    if (this.opts.record !== undefined && this.opts.recordServers?.test(server.id) === true) this.recordServer(server, values, t);
  }

  /** Writes what `server` sent for `t` for the recorded metrics (the picks of its distributions are in lastPicks). */
  private recordServer(server: SimServer, values: Float64Array, t: number): void {
    const want = this.opts.recordMetrics;
    for (let m = 0; m < this.gauges; m++) {
      if (want !== undefined && !want.test(this.names[m]!)) continue;
      this.opts.record!({ server: server.id, metric: this.names[m]!, second: t, kind: this.kinds[m] === KindCode.Counter ? 'counter' : 'gauge', values: [values[m]!] });
    }
    this.lastPicks.forEach((v, k) => {
      const m = this.gauges + k;
      if (want !== undefined && !want.test(this.names[m]!)) return;
      this.opts.record!({ server: server.id, metric: this.names[m]!, second: t, kind: 'distribution', values: Array.from(this.pool.values[v]!) });
    });
  }

  private frame(server: SimServer, t: number, part: number, parts: number, series: SeriesColumns, arena: FrameArena): Uint8Array {
    const f = this.encoder.edgeSecond({ server: server.id, session: server.session, seq: server.seq++ >>> 0, second: t, part, parts, sentMs: this.now(), series }, arena);
    if (f.length > this.frameBytesMax) throw new Error(`BUG: simulated part of ${f.length} B > ${this.frameBytesMax}`);
    return f;
  }

  /** The variant each distribution of the server being sent drew (for --record). */
  private lastPicks: number[] = [];

  private distColumns(from: number, to: number): SeriesColumns {
    const n = to - from;
    const pick = Uint8Array.from({ length: n }, () => Math.floor(this.rand() * variants));
    if (from === this.gauges) this.lastPicks = [];
    this.lastPicks.push(...pick);
    const ends = new Uint32Array(n);
    let end = 0;
    for (let k = 0; k < n; k++) ends[k] = end += this.pool.sketch[pick[k]!]!.length;
    const bytes = new Uint8Array(end);
    let at = 0;
    for (let k = 0; k < n; k++) {
      bytes.set(this.pool.sketch[pick[k]!]!, at);
      at += this.pool.sketch[pick[k]!]!.length;
    }
    return {
      ...emptyColumns(),
      distHashes: this.hashes.subarray(2 * from, 2 * to),
      distKinds: new Uint8Array(n).fill(KindCode.Distribution),
      distCounts: Uint32Array.from(pick, (v) => this.pool.count[v]!),
      distSums: Float64Array.from(pick, (v) => this.pool.sum[v]!),
      distMins: Float64Array.from(pick, (v) => this.pool.min[v]!),
      distMaxes: Float64Array.from(pick, (v) => this.pool.max[v]!),
      sketchEnds: ends,
      sketchBytes: bytes,
    };
  }

  private nameColumns(server: SimServer, from: number, to: number, t: number): Pick<SeriesColumns, 'nameHashes' | 'nameEnds' | 'nameBytes'> {
    const idx: number[] = [];
    for (let m = from; m < to; m++) if (this.named(server, m, t)) idx.push(m);
    return this.namesOf(idx);
  }

  private namesOf(idx: number[]): Pick<SeriesColumns, 'nameHashes' | 'nameEnds' | 'nameBytes'> {
    const hashes = new Uint32Array(2 * idx.length);
    idx.forEach((m, k) => {
      hashes[2 * k] = this.hashes[2 * m]!;
      hashes[2 * k + 1] = this.hashes[2 * m + 1]!;
    });
    this.counters.names_sent += idx.length;
    return nameColumns(hashes, idx.map((m) => this.names[m]!));
  }

  /** Sends a frame, signed at send time when keys are set (rings hold frames unsigned). */
  private send(server: SimServer, frame: Uint8Array): void {
    if (this.stopped) return;
    const keys = server.rack.keys ?? this.keys;
    const datagram = keys === null ? frame : sign(keys, frame, this.now());
    this.counters.datagrams_sent++;
    this.counters.bytes_sent += datagram.length;
    this.sockets.get(server.rack)!.send(datagram);
  }

  private onNack(msg: Buffer, keys: KeySet | null): void {
    let frame: Uint8Array = msg;
    if (keys !== null) {
      // MAC only: the simulator trusts its loopback peers' timing (the edge also checks age and replays).
      const o = open(keys, msg);
      if (!o.ok) {
        this.counters.nacks_refused++;
        return;
      }
      frame = o.frame;
    }
    const r = decodeFrame(frame, udpPayloadBytesMax, { expect: Body.Nack });
    if (!r.ok || r.msg.type !== 'nack') return;
    const nack: NackMessage = r.msg;
    const server = this.byId.get(nack.server);
    if (server === undefined || server.session !== nack.session) return;
    this.counters.nacks++;
    for (const p of nack.missingParts) {
      const f = server.ring.get(nack.second, p);
      if (f === undefined) this.counters.resend_missed++;
      else {
        this.counters.resent++;
        this.send(server, f);
      }
    }
    if (nack.unknownHashes.length > 0) {
      const idx: number[] = [];
      for (let i = 0; i < nack.unknownHashes.length; i += 2) {
        const m = this.nameOf.get(hashKey(nack.unknownHashes[i]!, nack.unknownHashes[i + 1]!));
        if (m !== undefined) idx.push(m);
      }
      for (let k = 0; k < idx.length; k += 20) {
        const f = this.encoder.edgeSecond({ server: server.id, session: server.session, seq: server.seq, second: nack.second, part: 0, parts: 0, sentMs: this.now(), series: { ...emptyColumns(), ...this.namesOf(idx.slice(k, k + 20)) } });
        this.send(server, f);
      }
    }
  }
}

export const simulateDefaults = { datagramBytes: datagramBytesDefault, distShare: 0.05, seed: 1 };
