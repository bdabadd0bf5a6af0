// Rack → core contract v2 (DESIGN §9, issue 12). The rack closes a second and cuts it into one
// ShardSection per shard with data, metric-major: per metric its kind, the column of server
// indexes and the column of values (gauges, counters: packed, schema/pointpack.ts) or summaries
// (distributions, then the rack's rollup of them). The HTTP body, RackSecond, carries the
// sections as opaque frames plus their shard numbers, so the core routes each to its shard's
// worker without decoding it; the worker verifies the section. shard = (metric hash lo32) mod
// S, S a power of two.

import type * as flatbuffers from 'flatbuffers';
import { checkNames, concatVector, Encoder, FrameArena, KindCode, requireSecond, requireServerId, verifyName, type SeriesColumns, type ServerBlocks } from './codec.js';
import { Body, RackSecond, ShardSection } from './generated/apm_generated.js';
import { HashIndex } from '../lib/hashtable.js';
import { PointPacker, unpackPoints } from './pointpack.js';
import { batchServersMax, rackIdBytesMax, rollupServer, sectionNamesMax, serverIdBytesMax, shardsMax } from './limits.js';
import { sketchCount } from './sketch.js';
import { Reject, type TableRef, type VectorRef, type Verifier } from './verify.js';

/** The shard of a metric (hash lo32 mod S; S a power of two). */
export function shardOf(lo: number, shards: number): number {
  return (lo >>> 0) & (shards - 1);
}

export function isValidShardCount(s: number): boolean {
  return Number.isInteger(s) && s >= 1 && s <= shardsMax && (s & (s - 1)) === 0;
}

/** Identity of a rack second: every section of it carries the same. */
export interface SecondHeader {
  rack: string;
  session: number;
  seq: number;
  second: number;
  late: boolean;
  shards: number;
  /**
   * Who sent it: originRack (absent: the same) or originImport (history through POST
   * /api/v1/import). The core de-duplicates each origin apart (core/dedup.ts).
   */
  origin?: number;
}

export const originRack = 0;
export const originImport = 1;

/** One shard's part of a rack second, decoded: columns are typed-array views into the frame. */
export interface ShardSectionMessage extends SecondHeader {
  type: 'shardSection';
  shard: number;
  /** Shared with other sections decoded from the same list (serverList): never changed. */
  servers: readonly string[];
  /** Metric i (hash pointHashes[2i], [2i + 1]) has entries [pointEnds[i − 1], pointEnds[i]). */
  pointHashes: Uint32Array;
  pointKinds: Uint8Array;
  pointEnds: Uint32Array;
  pointServers: Uint16Array;
  pointValues: Float64Array;
  /** Metric i has summaries [distEnds[i − 1], distEnds[i]); server rollupServer is the rack rollup. */
  distHashes: Uint32Array;
  distEnds: Uint32Array;
  distServers: Uint16Array;
  distCounts: Uint32Array;
  distSums: Float64Array;
  distMins: Float64Array;
  distMaxes: Float64Array;
  sketchEnds: Uint32Array;
  sketchBytes: Uint8Array;
  nameHashes: Uint32Array;
  nameEnds: Uint32Array;
  nameBytes: Uint8Array;
  /**
   * Entries whose value cannot be stored (a point not finite; a summary with count 0, a sum,
   * min or max not finite, min > max, or a sketch that does not hold its count): 1 marks one.
   * Null when there are none. The receiver refuses those entries alone, counted (issue 16.4).
   */
  pointBad: Uint8Array | null;
  distBad: Uint8Array | null;
  /** Whether the points came packed (point_pack) rather than as point_servers and point_values. */
  packed: boolean;
}

/** The HTTP body: a rack second's sections as frames, with their shards. */
export interface RackSecondMessage extends SecondHeader {
  type: 'rackSecond';
  sectionShards: Uint16Array;
  /** Section i is sectionBytes[sectionEnds[i − 1] .. sectionEnds[i]). */
  sectionEnds: Uint32Array;
  sectionBytes: Uint8Array;
  /** The rack's servers in this second (shared, as ShardSectionMessage.servers). */
  servers: readonly string[];
}

/** What bodies() cuts a second within: a section's bytes, a body's, and one metric's (past it the metric is left out, counted). */
export interface CutBounds {
  sectionBytesMax: number;
  bodyBytesMax: number;
  metricBytesMax: number;
}

/** One cut section. */
export interface SectionFrame {
  shard: number;
  frame: Uint8Array;
}

/** What the rack merged for a second: every server's summaries, the distribution rollups and new names. */
export interface CutInput extends SecondHeader {
  servers: readonly ServerBlocks[];
  /** Per metric, the merge across the rack's servers; only distributions' are kept (the core stores no others). */
  rollup: SeriesColumns;
}

/** Section i of a decoded RackSecond, as its own bytes (a view). */
export function sectionAt(m: RackSecondMessage, i: number): Uint8Array {
  return m.sectionBytes.subarray(i === 0 ? 0 : m.sectionEnds[i - 1]!, m.sectionEnds[i]!);
}

// ---------------------------------------------------------------------------------------------
// Cutting (the rack): one counting sort of every entry by (shard, metric), then each shard's
// entries are contiguous and its section's columns are subarrays of a few scratch arrays.

class Grow {
  u16 = new Uint16Array(1024);
  u32 = new Uint32Array(1024);
  f64 = new Float64Array(1024);
}

export class SectionCutter {
  private readonly index: HashIndex;
  private readonly mLo: Uint32Array;
  private readonly mHi: Uint32Array;
  private readonly mKind: Uint8Array;
  private readonly mPoints: Int32Array;
  private readonly mDists: Int32Array;
  private readonly mRank: Int32Array;
  private readonly encoder = new Encoder();
  private readonly arena = new FrameArena();
  // Entries in arrival order: metric index, server index, source position.
  private pm = new Int32Array(1 << 16);
  private dm = new Int32Array(1 << 12);
  private pOut = { servers: new Uint16Array(1 << 16), values: new Float64Array(1 << 16) };
  private dOut = new Grow();
  private dStats = { counts: new Uint32Array(1 << 12), sums: new Float64Array(1 << 12), mins: new Float64Array(1 << 12), maxes: new Float64Array(1 << 12), ends: new Uint32Array(1 << 12) };
  private sketch = new Uint8Array(1 << 20);
  /** Metrics beyond metricsMax in one second: left out (counted by the caller from this). */
  overflow = 0;
  /**
   * Rollups left out because their sum is not finite (issue 16.4: two servers' 1e308 overflow
   * it). The servers' own summaries still go; the core answers that second's whole-rack
   * percentiles from them.
   */
  rollupsNotFinite = 0;
  /**
   * Whether sections carry their points packed (point_pack). A rack packs only once its core
   * said it reads them (GET /api/v1/placement `pointPack`, or the cluster's settings): a core
   * from before would refuse them as malformed, and the rack drops what is refused so.
   */
  packPoints = true;

  constructor(readonly metricsMax: number) {
    this.index = new HashIndex(metricsMax);
    this.mLo = new Uint32Array(metricsMax);
    this.mHi = new Uint32Array(metricsMax);
    this.mKind = new Uint8Array(metricsMax);
    this.mPoints = new Int32Array(metricsMax + 1);
    this.mDists = new Int32Array(metricsMax + 1);
    this.mRank = new Int32Array(metricsMax);
  }

  private metric(lo: number, hi: number, kind: number): number {
    const before = this.index.size;
    const m = this.index.insert(lo, hi);
    if (m < 0) {
      this.overflow++;
      return -1;
    }
    if (m === before) {
      this.mLo[m] = lo;
      this.mHi[m] = hi;
      this.mKind[m] = kind;
      this.mPoints[m] = 0;
      this.mDists[m] = 0;
    }
    return m;
  }

  /** The HTTP body for one destination: every section of the second. */
  body(input: CutInput): Uint8Array {
    // The sections live only until they are copied into the body: written into reused memory.
    this.arena.reset();
    return encodeRackSecond(this.encoder, input, this.cutInto(input, this.arena), input.servers.map((s) => s.server));
  }

  /** Cuts a merged second into one section frame per shard with data (ascending shard). */
  cut(input: CutInput): SectionFrame[] {
    return this.cutInto(input, undefined);
  }

  /** Rack seconds that needed more than one body (bodies()). */
  secondsSplit = 0;
  /** Metrics of a second left out by bodies() because their entries alone pass a body's bound (each counted once a second). */
  metricsTooLarge = 0;

  /**
   * The second as bodies of at most `o.bodyBytesMax` bytes whose sections hold at most
   * `o.sectionBytesMax` each, every body numbered by `take()` (its session and seq). One body
   * with one section per shard, as body(), unless a shard's section would pass its bound: it is
   * then cut by metrics into several sections, which go in different bodies (a body holds one
   * section per shard: the core de-duplicates per (rack, session, seq, shard)), and bodies are
   * filled up to their bound. Every section still holds all servers' entries of its metrics, so
   * rollups and whole-rack percentiles stay whole. A metric whose section alone would pass
   * `o.metricBytesMax` (what one message or request can carry) is left out of this second and
   * counted (metricsTooLarge); one between the bounds goes in a section and a body of its own.
   * A shard cut into several sections sends its names after its metrics: with the last metrics'
   * section when they fit there, else in sections of names only.
   */
  bodies(input: Omit<CutInput, 'seq' | 'session'>, take: () => { session: number; seq: number }, o: CutBounds): { session: number; seq: number; bytes: Uint8Array }[] {
    const c = this.prepare(input.servers, input.rollup, input.shards);
    const servers = input.servers.map((x) => x.server);
    let idBytes = 0;
    for (const id of c.ids) idBytes += id.length + 12;
    const bodyFixed = 1024 + idBytes;
    // Pieces: a shard's rank range [a, b), names with the first piece of a shard.
    type Piece = { shard: number; a: number; b: number; names: ShardNames | undefined; bytes: number };
    const pieces: Piece[] = [];
    const base = 1024 + idBytes;
    const add = (shard: number, a: number, b: number) => {
      const all = c.named.get(shard);
      const whole = base + namesBytes(all) + this.rangeBytes(a, b, c.pStart, c.dStart);
      if (whole <= o.sectionBytesMax && (all?.ends.length ?? 0) <= sectionNamesMax) return void pieces.push({ shard, a, b, names: all, bytes: whole });
      // Past the bound: the metrics are cut first, then the names follow, on the last metrics'
      // piece when they fit there, else in pieces of names only (an empty metric range). After
      // the metrics: bodies are stored in seq order, and the core keeps names of metrics it has no
      // data of yet only in a bounded table. (Names went whole with the first piece: a first
      // second with 100,000 new names in one shard made a section no NATS message could carry.)
      const firstPiece = pieces.length;
      let start = a;
      let bytes = base;
      const close = (end: number) => void pieces.push({ shard, a: start, b: end, names: undefined, bytes });
      for (let r = a; r < b; r++) {
        const one = this.rangeBytes(r, r + 1, c.pStart, c.dStart);
        if (base + one > o.metricBytesMax) {
          // Not sendable. What came before it goes as a piece.
          if (r > start) close(r);
          this.metricsTooLarge++;
          start = r + 1;
          bytes = base;
          continue;
        }
        if (r > start && bytes + one > o.sectionBytesMax) {
          close(r);
          start = r;
          bytes = base;
        }
        bytes += one;
      }
      if (b > start) close(b);
      const parts = splitNames(all, o.sectionBytesMax - base);
      const last = pieces.length > firstPiece ? pieces[pieces.length - 1]! : undefined;
      if (parts.length === 1 && last !== undefined && last.bytes + namesBytes(parts[0]) <= o.sectionBytesMax) {
        last.names = parts[0];
        last.bytes += namesBytes(parts[0]);
      } else for (const part of parts) pieces.push({ shard, a: b, b, names: part, bytes: base + namesBytes(part) });
    };
    this.eachShard(c, add);
    // Bodies filled in order: a piece goes in the first body with room that lacks its shard.
    const plans: { pieces: Piece[]; shards: Set<number>; bytes: number }[] = [];
    for (const piece of pieces) {
      let plan = plans.find((x) => !x.shards.has(piece.shard) && x.bytes + piece.bytes + 16 <= o.bodyBytesMax);
      if (plan === undefined) plans.push((plan = { pieces: [], shards: new Set(), bytes: bodyFixed }));
      plan.pieces.push(piece);
      plan.shards.add(piece.shard);
      plan.bytes += piece.bytes + 16;
    }
    if (plans.length > 1) this.secondsSplit++;
    // Nothing to cut (servers without entries or names): one body, as body() sends, with no sections.
    if (plans.length === 0) plans.push({ pieces: [], shards: new Set(), bytes: bodyFixed });
    return plans.map((plan) => {
      const { session, seq } = take();
      const h: SecondHeader = { ...input, session, seq };
      this.arena.reset();
      const frames = plan.pieces.map((x) => ({ shard: x.shard, frame: this.section(h, { shard: x.shard, ids: c.ids, names: x.names, arena: this.arena }, c.byRank, x.a, x.b, c.pStart, c.dStart) }));
      frames.sort((x, y) => x.shard - y.shard);
      return { session, seq, bytes: encodeRackSecond(this.encoder, h, frames, servers) };
    });
  }

  /** cut(), the frames in `arena` (views valid until its reset) or fresh. */
  private cutInto(input: CutInput, arena: FrameArena | undefined): SectionFrame[] {
    const c = this.prepare(input.servers, input.rollup, input.shards);
    const out: SectionFrame[] = [];
    this.eachShard(c, (shard, a, b) => out.push({ shard, frame: this.section(input, { shard, ids: c.ids, names: c.named.get(shard), arena }, c.byRank, a, b, c.pStart, c.dStart) }));
    out.sort((x, y) => x.shard - y.shard);
    return out;
  }

  /**
   * Counts, ranks and places every entry; what sections are then cut from. The hot passes take
   * the server list and rollup themselves, not the object holding them: inputs built by other
   * callers (a spread, a re-cut) have other hidden classes, and code optimized for one was
   * thrown away ("wrong map") and optimized again every few seconds.
   */
  private prepare(servers: readonly ServerBlocks[], rollup: SeriesColumns, shards: number): Prepared {
    if (!isValidShardCount(shards)) throw new Error(`BUG: shards ${shards} is not a power of two in 1..${shardsMax}`);
    if (servers.length >= rollupServer) throw new Error(`BUG: ${servers.length} servers in one second`);
    this.index.clear();
    const { points, dists } = this.count(servers, rollup);
    const shardOfRank = this.rank(shards);
    const M = this.index.size;
    // Offsets per rank: points and summaries of the metric ranked r start at pStart[r], dStart[r].
    const pStart = new Int32Array(M + 1);
    const dStart = new Int32Array(M + 1);
    const byRank = new Int32Array(M);
    for (let m = 0; m < M; m++) byRank[this.mRank[m]!] = m;
    for (let r = 0; r < M; r++) {
      pStart[r + 1] = pStart[r]! + this.mPoints[byRank[r]!]!;
      dStart[r + 1] = dStart[r]! + this.mDists[byRank[r]!]!;
    }
    this.place(servers, rollup, points, dists, pStart, dStart);
    // Once per second, not per section: names grouped by shard, server ids as UTF-8.
    const named = namesByShard(rollup, shards);
    const ids = servers.map((s) => Buffer.from(s.server, 'latin1'));
    return { M, shardOfRank, byRank, pStart, dStart, named, ids };
  }

  /** Each shard with data: its rank range; then each shard with names only (an empty range: the core learns them early). */
  private eachShard(c: Prepared, f: (shard: number, a: number, b: number) => void): void {
    const seen = new Set<number>();
    for (let a = 0; a < c.M; ) {
      const shard = c.shardOfRank[a]!;
      let b = a + 1;
      while (b < c.M && c.shardOfRank[b] === shard) b++;
      seen.add(shard);
      f(shard, a, b);
      a = b;
    }
    for (const shard of c.named.keys()) if (!seen.has(shard)) f(shard, 0, 0);
  }

  /** About what ranks [a, b) take in a section (columns, sketches), from the placed entries. */
  private rangeBytes(a: number, b: number, pStart: Int32Array, dStart: Int32Array): number {
    const d0 = dStart[a]!;
    const d1 = dStart[b]!;
    const sketches = (d1 === 0 ? 0 : this.dStats.ends[d1 - 1]!) - (d0 === 0 ? 0 : this.dStats.ends[d0 - 1]!);
    // Per point: server index 2 + value 8; per summary: server 2, count 4, sum/min/max 24, sketch end 4; per metric: hashes 8, kind 1, ends 4 and 4.
    return 10 * (pStart[b]! - pStart[a]!) + 34 * (d1 - d0) + sketches + 17 * (b - a);
  }

  /** Pass 1: every entry's metric, and entries per metric. */
  private count(servers: readonly ServerBlocks[], r: SeriesColumns): { points: number; dists: number } {
    let points = 0;
    let dists = r.distKinds.length;
    // Index loops: for-of's iterator protocol deoptimized these passes ("wrong map") whenever an
    // array of another elements kind came by.
    for (let j = 0; j < servers.length; j++) {
      const blocks = servers[j]!.blocks;
      for (let b = 0; b < blocks.length; b++) (points += blocks[b]!.pointKinds.length), (dists += blocks[b]!.distKinds.length);
    }
    if (points > this.pm.length) this.pm = new Int32Array(points);
    if (dists > this.dm.length) this.dm = new Int32Array(dists);
    let p = 0;
    let d = 0;
    for (let j = 0; j < servers.length; j++) {
      const blocks = servers[j]!.blocks;
      for (let b = 0; b < blocks.length; b++) {
        const c = blocks[b]!;
        let guess = -1;
        for (let i = 0; i < c.pointKinds.length; i++) {
          const lo = c.pointHashes[2 * i]!;
          const hi = c.pointHashes[2 * i + 1]!;
          // Edges list metrics alike every second: the metric after the previous one is the best guess.
          const g = guess + 1;
          const m = g > 0 && g < this.index.size && this.mLo[g] === lo && this.mHi[g] === hi ? g : this.metric(lo, hi, c.pointKinds[i]!);
          guess = m;
          this.pm[p++] = m;
          if (m >= 0) this.mPoints[m]! += 1;
        }
        for (let i = 0; i < c.distKinds.length; i++) {
          const m = this.metric(c.distHashes[2 * i]!, c.distHashes[2 * i + 1]!, KindCode.Distribution);
          this.dm[d++] = m;
          if (m >= 0) this.mDists[m]! += 1;
        }
      }
    }
    for (let i = 0; i < r.distKinds.length; i++) {
      // Only distributions' rollups are stored (whole-rack percentiles); a gauge's would cost more than its 40 values.
      let m = r.distKinds[i] === KindCode.Distribution ? this.index.get(r.distHashes[2 * i]!, r.distHashes[2 * i + 1]!) : -1;
      if (m >= 0 && !Number.isFinite(r.distSums[i]!)) {
        this.rollupsNotFinite++;
        m = -1;
      }
      this.dm[d++] = m >= 0 && this.mDists[m]! > 0 ? m : -1;
      if (this.dm[d - 1]! >= 0) this.mDists[m]! += 1;
    }
    return { points: p, dists: d };
  }

  /** Ranks metrics by (shard, first appearance); returns the shard of each rank. */
  private rank(shards: number): Int32Array {
    const M = this.index.size;
    const perShard = new Int32Array(shards + 1);
    for (let m = 0; m < M; m++) perShard[shardOf(this.mLo[m]!, shards) + 1]! += 1;
    for (let s = 0; s < shards; s++) perShard[s + 1]! += perShard[s]!;
    const shardOfRank = new Int32Array(M);
    for (let m = 0; m < M; m++) {
      const s = shardOf(this.mLo[m]!, shards);
      const r = perShard[s]!++;
      this.mRank[m] = r;
      shardOfRank[r] = s;
    }
    return shardOfRank;
  }

  /** Pass 2: entries into their (shard, metric) place, sketches concatenated in that order. */
  private place(servers: readonly ServerBlocks[], r: SeriesColumns, points: number, dists: number, pStart: Int32Array, dStart: Int32Array): void {
    if (points > this.pOut.values.length) this.pOut = { servers: new Uint16Array(points), values: new Float64Array(points) };
    if (dists > this.dStats.counts.length) this.dStats = { counts: new Uint32Array(dists), sums: new Float64Array(dists), mins: new Float64Array(dists), maxes: new Float64Array(dists), ends: new Uint32Array(dists) };
    if (dists > this.dOut.u16.length) this.dOut.u16 = new Uint16Array(dists);
    // Where each summary's sketch comes from, placed by rank: source array, start, end.
    const src: Uint8Array[] = new Array<Uint8Array>(dists);
    const sStart = new Uint32Array(dists);
    const sEnd = new Uint32Array(dists);
    const pAt = pStart.slice();
    const dAt = dStart.slice();
    let p = 0;
    let d = 0;
    for (let j = 0; j < servers.length; j++) {
      const blocks = servers[j]!.blocks;
      for (let b = 0; b < blocks.length; b++) {
        const c = blocks[b]!;
        for (let i = 0; i < c.pointKinds.length; i++) {
          const m = this.pm[p++]!;
          if (m < 0) continue;
          const k = pAt[this.mRank[m]!]!++;
          this.pOut.servers[k] = j;
          this.pOut.values[k] = c.pointValues[i]!;
        }
        for (let i = 0; i < c.distKinds.length; i++) {
          const m = this.dm[d++]!;
          if (m >= 0) this.putDist(c, i, dAt[this.mRank[m]!]!++, j, src, sStart, sEnd);
        }
      }
    }
    for (let i = 0; i < r.distKinds.length; i++) {
      const m = this.dm[d++]!;
      if (m >= 0) this.putDist(r, i, dAt[this.mRank[m]!]!++, rollupServer, src, sStart, sEnd);
    }
    // Sketches, concatenated in placed order.
    const total = dStart[dStart.length - 1]!;
    let bytes = 0;
    for (let k = 0; k < total; k++) bytes += sEnd[k]! - sStart[k]!;
    if (bytes > this.sketch.length) this.sketch = new Uint8Array(Math.max(bytes, this.sketch.length * 2));
    // Byte by byte: a sketch is tens of bytes, and a subarray per summary to set() from was an
    // object per summary (30,000 a second at 300 servers with 5 % distributions).
    const out = this.sketch;
    let at = 0;
    for (let k = 0; k < total; k++) {
      const from = src[k]!;
      const end = sEnd[k]!;
      for (let i = sStart[k]!; i < end; i++) out[at++] = from[i]!;
      this.dStats.ends[k] = at;
    }
  }

  /** Summary i of `c` into placed position k; its sketch's source noted for the concatenation. */
  private putDist(c: SeriesColumns, i: number, k: number, server: number, src: Uint8Array[], sStart: Uint32Array, sEnd: Uint32Array): void {
    this.dOut.u16[k] = server;
    this.dStats.counts[k] = c.distCounts[i]!;
    this.dStats.sums[k] = c.distSums[i]!;
    this.dStats.mins[k] = c.distMins[i]!;
    this.dStats.maxes[k] = c.distMaxes[i]!;
    src[k] = c.sketchBytes;
    sStart[k] = i === 0 ? 0 : c.sketchEnds[i - 1]!;
    sEnd[k] = c.sketchEnds[i]!;
  }

  /** Encodes ranks [a, b) (one shard's metrics) as a section frame. */
  private section(input: SecondHeader, to: { shard: number; ids: Uint8Array[]; names: ShardNames | undefined; arena: FrameArena | undefined }, byRank: Int32Array, a: number, b: number, pStart: Int32Array, dStart: Int32Array): Uint8Array {
    const { shard, names } = to;
    const p0 = pStart[a]!;
    const p1 = pStart[b]!;
    const d0 = dStart[a]!;
    const d1 = dStart[b]!;
    const pointMetrics: number[] = [];
    const distMetrics: number[] = [];
    for (let r = a; r < b; r++) {
      if (pStart[r + 1]! > pStart[r]!) pointMetrics.push(r);
      if (dStart[r + 1]! > dStart[r]!) distMetrics.push(r);
    }
    const pointHashes = new Uint32Array(2 * pointMetrics.length);
    const pointKinds = new Uint8Array(pointMetrics.length);
    const pointEnds = new Uint32Array(pointMetrics.length);
    for (let i = 0; i < pointMetrics.length; i++) {
      const r = pointMetrics[i]!;
      const m = byRank[r]!;
      pointHashes[2 * i] = this.mLo[m]!;
      pointHashes[2 * i + 1] = this.mHi[m]!;
      pointKinds[i] = this.mKind[m] === KindCode.Distribution ? KindCode.Gauge : this.mKind[m]!;
      pointEnds[i] = pStart[r + 1]! - p0;
    }
    const distHashes = new Uint32Array(2 * distMetrics.length);
    const distEnds = new Uint32Array(distMetrics.length);
    for (let i = 0; i < distMetrics.length; i++) {
      const r = distMetrics[i]!;
      const m = byRank[r]!;
      distHashes[2 * i] = this.mLo[m]!;
      distHashes[2 * i + 1] = this.mHi[m]!;
      distEnds[i] = dStart[r + 1]! - d0;
    }
    const sk0 = d0 === 0 ? 0 : this.dStats.ends[d0 - 1]!;
    const sk1 = d1 === 0 ? 0 : this.dStats.ends[d1 - 1]!;
    const sketchEnds = this.dStats.ends.slice(d0, d1);
    for (let i = 0; i < sketchEnds.length; i++) sketchEnds[i]! -= sk0;
    return encodeShardSection(this.encoder, input, {
      shard,
      servers: to.ids,
      pointHashes,
      pointKinds,
      pointEnds,
      pointServers: this.pOut.servers.subarray(p0, p1),
      pointValues: this.pOut.values.subarray(p0, p1),
      distHashes,
      distEnds,
      distServers: this.dOut.u16.subarray(d0, d1),
      distCounts: this.dStats.counts.subarray(d0, d1),
      distSums: this.dStats.sums.subarray(d0, d1),
      distMins: this.dStats.mins.subarray(d0, d1),
      distMaxes: this.dStats.maxes.subarray(d0, d1),
      sketchEnds,
      sketchBytes: this.sketch.subarray(sk0, sk1),
      nameHashes: names?.hashes ?? new Uint32Array(0),
      nameEnds: names?.ends ?? new Uint32Array(0),
      nameBytes: names?.bytes ?? new Uint8Array(0),
    }, to.arena, !this.packPoints);
  }
}

/** A second counted, ranked and placed by the cutter (its scratch arrays hold the entries). */
interface Prepared {
  M: number;
  shardOfRank: Int32Array;
  byRank: Int32Array;
  pStart: Int32Array;
  dStart: Int32Array;
  named: Map<number, ShardNames>;
  ids: Uint8Array[];
}

interface ShardNames {
  hashes: Uint32Array;
  ends: Uint32Array;
  bytes: Uint8Array;
}

/** Bytes a shard's names take in a section (their bytes, hashes and ends). */
function namesBytes(n: ShardNames | undefined): number {
  return n === undefined ? 0 : n.bytes.length + 12 * n.ends.length;
}

/** A shard's names in parts of at most `bytesMax` (namesBytes) and sectionNamesMax names each, at least one name a part; none: []. */
function splitNames(n: ShardNames | undefined, bytesMax: number): ShardNames[] {
  if (n === undefined) return [];
  if (namesBytes(n) <= bytesMax && n.ends.length <= sectionNamesMax) return [n];
  const parts: ShardNames[] = [];
  let from = 0;
  while (from < n.ends.length) {
    const start = from === 0 ? 0 : n.ends[from - 1]!;
    let to = from + 1;
    while (to < n.ends.length && to - from < sectionNamesMax && n.ends[to]! - start + 12 * (to + 1 - from) <= bytesMax) to++;
    const ends = new Uint32Array(to - from);
    for (let i = from; i < to; i++) ends[i - from] = n.ends[i]! - start;
    parts.push({ hashes: n.hashes.slice(2 * from, 2 * to), ends, bytes: n.bytes.slice(start, n.ends[to - 1]!) });
    from = to;
  }
  return parts;
}

/** The names of a block's dictionary grouped by shard. */
function namesByShard(c: Pick<SeriesColumns, 'nameHashes' | 'nameEnds' | 'nameBytes'>, shards: number): Map<number, ShardNames> {
  const out = new Map<number, ShardNames>();
  if (c.nameEnds.length === 0) return out;
  const groups = new Map<number, number[]>();
  // Each name once (a rack's new names and its refresh can both hold one).
  const once = new HashIndex(c.nameEnds.length);
  for (let j = 0; j < c.nameEnds.length; j++) {
    const before = once.size;
    if (once.insert(c.nameHashes[2 * j]!, c.nameHashes[2 * j + 1]!) < before) continue;
    const s = shardOf(c.nameHashes[2 * j]!, shards);
    let g = groups.get(s);
    if (g === undefined) groups.set(s, (g = []));
    g.push(j);
  }
  for (const [s, js] of groups) {
    const hashes = new Uint32Array(2 * js.length);
    const ends = new Uint32Array(js.length);
    let bytes = 0;
    for (const j of js) bytes += c.nameEnds[j]! - (j === 0 ? 0 : c.nameEnds[j - 1]!);
    const buf = new Uint8Array(bytes);
    let at = 0;
    for (let i = 0; i < js.length; i++) {
      const j = js[i]!;
      const start = j === 0 ? 0 : c.nameEnds[j - 1]!;
      buf.set(c.nameBytes.subarray(start, c.nameEnds[j]!), at);
      at += c.nameEnds[j]! - start;
      hashes[2 * i] = c.nameHashes[2 * j]!;
      hashes[2 * i + 1] = c.nameHashes[2 * j + 1]!;
      ends[i] = at;
    }
    out.set(s, { hashes, ends, bytes: buf });
  }
  return out;
}

/** A section's columns; server ids as strings or already UTF-8 encoded (the cutter encodes them once per second). */
type SectionColumns = Omit<ShardSectionMessage, 'type' | 'pointBad' | 'distBad' | 'packed' | 'servers' | keyof SecondHeader> & { servers: readonly (string | Uint8Array)[] };

/** The cutter's packer (schema/pointpack.ts): one per thread, its scratch reused by every section. */
const packer = new PointPacker();

/**
 * Encodes one section (its header from `h`), its points packed (point_pack). `unpacked` writes
 * them as point_servers and point_values instead, as racks before the pack did (tests of the
 * receiver's compatibility only).
 */
export function encodeShardSection(enc: Encoder, h: SecondHeader, c: SectionColumns, into?: FrameArena, unpacked = false): Uint8Array {
  const pack = unpacked || c.pointEnds.length === 0 ? new Uint8Array(0) : packer.pack(c.pointEnds, c.pointServers, c.pointValues);
  const listed = pack.length === 0;
  // Every column's bytes plus its vector's length and padding; the columns named one by one
  // (Object.values over c walked a dictionary per section, and its iterator deoptimized this).
  let bytes = 1024 + 16 * 18;
  bytes += c.pointHashes.byteLength + c.pointKinds.byteLength + c.pointEnds.byteLength + pack.byteLength + (listed ? c.pointServers.byteLength + c.pointValues.byteLength : 0);
  bytes += c.distHashes.byteLength + c.distEnds.byteLength + c.distServers.byteLength + c.distCounts.byteLength + c.distSums.byteLength + c.distMins.byteLength + c.distMaxes.byteLength;
  bytes += c.sketchEnds.byteLength + c.sketchBytes.byteLength + c.nameHashes.byteLength + c.nameEnds.byteLength + c.nameBytes.byteLength;
  const serverIds = c.servers;
  for (let i = 0; i < serverIds.length; i++) bytes += serverIds[i]!.length + 8;
  const b = enc.begin(bytes);
  const rack = b.createString(h.rack);
  const ids: flatbuffers.Offset[] = [];
  for (const s of c.servers) ids.push(b.createString(s));
  const servers = ShardSection.createServersVector(b, ids);
  const body = ShardSection.createShardSection(
    b,
    rack,
    h.session,
    BigInt(h.seq),
    h.second,
    h.late,
    c.shard,
    h.shards,
    servers,
    one(b, c.pointHashes, 8),
    one(b, c.pointKinds, 1),
    one(b, c.pointEnds, 4),
    listed ? one(b, c.pointServers, 2) : 0,
    listed ? one(b, c.pointValues, 8) : 0,
    one(b, c.distHashes, 8),
    one(b, c.distEnds, 4),
    one(b, c.distServers, 2),
    one(b, c.distCounts, 4),
    one(b, c.distSums, 8),
    one(b, c.distMins, 8),
    one(b, c.distMaxes, 8),
    one(b, c.sketchEnds, 4),
    one(b, c.sketchBytes, 1),
    one(b, c.nameHashes, 8),
    one(b, c.nameEnds, 4),
    one(b, c.nameBytes, 1),
    h.origin ?? originRack,
    one(b, pack, 1),
  );
  return enc.end(Body.ShardSection, body, into);
}

/** One typed array as a vector (0 when empty). */
function one(b: flatbuffers.Builder, data: ArrayBufferView, elemBytes: number): flatbuffers.Offset {
  return concatVector(b, [data], elemBytes);
}

/** The HTTP body holding `sections` (a worker copies its sections out, aligned, before decoding them). */
export function encodeRackSecond(enc: Encoder, h: SecondHeader, sections: readonly SectionFrame[], servers: readonly string[]): Uint8Array {
  const shards = Uint16Array.from(sections, (s) => s.shard);
  const ends = new Uint32Array(sections.length);
  let total = 0;
  sections.forEach((s, i) => (ends[i] = total += s.frame.length));
  let bytes = total + 1024 + 6 * sections.length;
  for (const s of servers) bytes += s.length + 8;
  const b = enc.begin(bytes);
  const rack = b.createString(h.rack);
  const ids: flatbuffers.Offset[] = [];
  for (const s of servers) ids.push(b.createString(s));
  const names = RackSecond.createServersVector(b, ids);
  const sh = concatVector(b, [shards], 2);
  const en = concatVector(b, [ends], 4);
  const frames: Uint8Array[] = [];
  for (const s of sections) frames.push(s.frame);
  const by = concatVector(b, frames, 1);
  return enc.end(Body.RackSecond, RackSecond.createRackSecond(b, rack, h.session, BigInt(h.seq), h.second, h.late, h.shards, sh, en, by, names, h.origin ?? originRack));
}

/** Cuts and wraps in one call (tests and tools; the rack keeps a SectionCutter). */
export function rackSecondBody(input: CutInput, metricsMax = 1 << 16): Uint8Array {
  return new SectionCutter(Math.max(1024, metricsMax)).body(input);
}

// ---------------------------------------------------------------------------------------------
// Decoding (called by decodeFrame in schema/codec.ts; throws Reject).

function header(v: Verifier, t: TableRef, what: string, slots: { rack: number; session: number; seq: number; second: number; late: number; shards: number; origin: number }): SecondHeader {
  const shards = v.u16(t, slots.shards, `${what}.shards`);
  if (!isValidShardCount(shards)) throw new Reject('bad_value', `${what}.shards ${shards} is not a power of two in 1..${shardsMax}`);
  const origin = v.u8(t, slots.origin, `${what}.origin`);
  if (origin !== originRack && origin !== originImport) throw new Reject('bad_value', `${what}.origin ${origin} is neither ${originRack} (rack) nor ${originImport} (import)`);
  return {
    origin,
    rack: requireServerId(v.string(t, slots.rack, rackIdBytesMax, `${what}.rack`), 'rack id'),
    session: v.u32(t, slots.session, `${what}.session`),
    seq: v.u53(t, slots.seq, `${what}.seq`),
    second: requireSecond(v.u32(t, slots.second, `${what}.second`)),
    late: v.u8(t, slots.late, `${what}.late`) !== 0,
    shards,
  };
}

export function decodeRackSecond(v: Verifier, t: TableRef): RackSecondMessage {
  const h = header(v, t, 'RackSecond', { rack: 0, session: 1, seq: 2, second: 3, late: 4, shards: 5, origin: 10 });
  const buf = v.bytes.buffer as ArrayBuffer;
  const base = v.bytes.byteOffset;
  const sh = v.vector(t, 6, 2, shardsMax, 'RackSecond.section_shards');
  const en = v.vector(t, 7, 4, shardsMax, 'RackSecond.section_ends');
  const by = v.vector(t, 8, 1, v.bytes.length, 'RackSecond.section_bytes');
  const sectionShards = new Uint16Array(buf, base + sh.start, sh.length);
  const sectionEnds = new Uint32Array(buf, base + en.start, en.length);
  if (sectionShards.length !== sectionEnds.length) throw new Reject('bad_columns', `${sectionShards.length} section shards for ${sectionEnds.length} sections`);
  let prev = 0;
  for (let i = 0; i < sectionEnds.length; i++) {
    if (sectionShards[i]! >= h.shards || (i > 0 && sectionShards[i]! <= sectionShards[i - 1]!)) throw new Reject('bad_value', `section ${i} is for shard ${sectionShards[i]} (shards ${h.shards}, ascending, once each)`);
    if (sectionEnds[i]! <= prev || sectionEnds[i]! > by.length) throw new Reject('bad_columns', `section ${i} ends at ${sectionEnds[i]}, outside ${prev}..${by.length}`);
    prev = sectionEnds[i]!;
  }
  if (prev !== by.length) throw new Reject('bad_columns', `${by.length - prev} section bytes belong to no section`);
  const servers = serverList(v, v.vector(t, 9, 4, batchServersMax, 'RackSecond.servers'));
  return { type: 'rackSecond', ...h, sectionShards, sectionEnds, sectionBytes: new Uint8Array(buf, base + by.start, by.length), servers };
}

export function decodeShardSection(v: Verifier, t: TableRef): ShardSectionMessage {
  const h = header(v, t, 'ShardSection', { rack: 0, session: 1, seq: 2, second: 3, late: 4, shards: 6, origin: 25 });
  const shard = v.u16(t, 5, 'ShardSection.shard');
  if (shard >= h.shards) throw new Reject('bad_value', `shard ${shard} ≥ shards ${h.shards}`);
  const servers = serverList(v, v.vector(t, 7, 4, batchServersMax, 'ShardSection.servers'));
  const buf = v.bytes.buffer as ArrayBuffer;
  const base = v.bytes.byteOffset;
  const max = v.bytes.length;
  const col = <T>(slot: number, elemBytes: number, make: (b: ArrayBuffer, o: number, n: number) => T, perElem = 1): T => {
    const r = v.vector(t, slot, elemBytes, max, `ShardSection field ${slot}`);
    return make(buf, base + r.start, r.length * perElem);
  };
  const u32 = (b: ArrayBuffer, o: number, n: number) => new Uint32Array(b, o, n);
  const u16 = (b: ArrayBuffer, o: number, n: number) => new Uint16Array(b, o, n);
  const u8 = (b: ArrayBuffer, o: number, n: number) => new Uint8Array(b, o, n);
  const f64 = (b: ArrayBuffer, o: number, n: number) => new Float64Array(b, o, n);
  const m: ShardSectionMessage = {
    type: 'shardSection',
    ...h,
    shard,
    servers,
    pointHashes: col(8, 8, u32, 2),
    pointKinds: col(9, 1, u8),
    pointEnds: col(10, 4, u32),
    pointServers: col(11, 2, u16),
    pointValues: col(12, 8, f64),
    distHashes: col(13, 8, u32, 2),
    distEnds: col(14, 4, u32),
    distServers: col(15, 2, u16),
    distCounts: col(16, 4, u32),
    distSums: col(17, 8, f64),
    distMins: col(18, 8, f64),
    distMaxes: col(19, 8, f64),
    sketchEnds: col(20, 4, u32),
    sketchBytes: col(21, 1, u8),
    nameHashes: col(22, 8, u32, 2),
    nameEnds: col(23, 4, u32),
    nameBytes: col(24, 1, u8),
    pointBad: null,
    distBad: null,
    packed: false,
  };
  const pack = col(26, 1, u8);
  if (pack.length > 0) {
    if (m.pointServers.length > 0 || m.pointValues.length > 0) throw new Reject('bad_columns', 'point_pack beside point_servers or point_values');
    const unpacked = unpackPoints(pack, m.pointEnds, servers.length, v.points);
    m.pointServers = unpacked.servers;
    m.pointValues = unpacked.values;
    m.packed = true;
  }
  checkSectionPoints(m);
  checkSectionDists(m);
  checkSectionNames(m, shard, v.nameHashes);
  return m;
}

/**
 * The name dictionary: bounded in number, each name in this shard, valid, and hashing to its
 * hash. The cheap checks come first, and a name repeating an earlier one's hash (a rack may send
 * a new name and, by its refresh, the same one again) is compared with it byte for byte instead
 * of hashed again: 64 MiB of one short name repeated cost a worker ~8 s of SHA-256.
 */
function checkSectionNames(m: ShardSectionMessage, shard: number, verifyHashes: boolean): void {
  const names = m.nameEnds.length;
  if (names > sectionNamesMax) throw new Reject('bad_columns', `${names} names > ${sectionNamesMax} in one section`);
  if (m.nameHashes.length !== 2 * names) throw new Reject('bad_columns', `${m.nameHashes.length / 2} name hashes for ${names} names`);
  for (let j = 0; j < names; j++) if (shardOf(m.nameHashes[2 * j]!, m.shards) !== shard) throw new Reject('bad_value', `name ${j} belongs to shard ${shardOf(m.nameHashes[2 * j]!, m.shards)}, not ${shard}`);
  checkNames(m, false);
  if (!verifyHashes || names === 0) return;
  const index = new HashIndex(names);
  /** The name each distinct hash was first met at. */
  const firstOf = new Int32Array(names);
  for (let j = 0; j < names; j++) {
    const distinct = index.size;
    const d = index.insert(m.nameHashes[2 * j]!, m.nameHashes[2 * j + 1]!);
    if (d === distinct) {
      firstOf[d] = j;
      if (!verifyName(m, j)) throw new Reject('bad_name', `name ${j} does not match its hash`);
    } else if (!sameName(m, j, firstOf[d]!)) throw new Reject('bad_name', `name ${j} has the hash of name ${firstOf[d]} but other bytes`);
  }
}

/** Whether names j and k of a dictionary are the same bytes. */
function sameName(m: Pick<ShardSectionMessage, 'nameEnds' | 'nameBytes'>, j: number, k: number): boolean {
  const js = j === 0 ? 0 : m.nameEnds[j - 1]!;
  const ks = k === 0 ? 0 : m.nameEnds[k - 1]!;
  const len = m.nameEnds[j]! - js;
  if (m.nameEnds[k]! - ks !== len) return false;
  for (let i = 0; i < len; i++) if (m.nameBytes[js + i] !== m.nameBytes[ks + i]) return false;
  return true;
}

/**
 * The last server list decoded, for the next one: every section of a rack's second carries the
 * rack's list, as does the request (65 lists alike per request at 64 shards). Decoded afresh,
 * each made 40 strings, 40 buffers and a Set: 42 % of what a worker allocated while ingesting
 * (a sampling heap profile of Store.ingestMany, twenty-seventh session). A list whose names are
 * byte for byte the last one's is checked (bounds, as below) and answered with the same array.
 */
const lastList = { names: [] as readonly string[], bytes: new Uint8Array(0), ends: new Uint32Array(0) };

/** A vector of server ids (uoffsets to strings), each checked; the last one's array when alike. */
function serverList(v: Verifier, list: VectorRef): readonly string[] {
  if (list.length > 0 && sameAsLast(v, list)) return lastList.names;
  const servers: string[] = [];
  for (let i = 0; i < list.length; i++) servers.push(requireServerId(stringAt(v, list.start + 4 * i), 'server id'));
  // Each server once: two indexes of one server passed the one-entry-per-server checks, and
  // its points or summaries counted twice.
  if (new Set(servers).size !== servers.length) throw new Reject('bad_value', `the list of ${servers.length} servers names one server twice`);
  const ends = new Uint32Array(servers.length);
  let bytes = 0;
  for (let i = 0; i < servers.length; i++) ends[i] = bytes += servers[i]!.length;
  const copy = new Uint8Array(bytes);
  for (let i = 0; i < servers.length; i++) {
    const from = nameStart(v, list.start + 4 * i);
    copy.set(v.bytes.subarray(from, from + v.view.getUint32(from - 4, true)), i === 0 ? 0 : ends[i - 1]!);
  }
  lastList.names = servers;
  lastList.bytes = copy;
  lastList.ends = ends;
  return servers;
}

/** Whether `list` names lastList's servers, in order (its offsets checked as stringAt checks them). */
function sameAsLast(v: Verifier, list: VectorRef): boolean {
  const { ends, bytes } = lastList;
  if (list.length !== ends.length) return false;
  for (let i = 0; i < list.length; i++) {
    const from = nameStart(v, list.start + 4 * i);
    const length = v.view.getUint32(from - 4, true);
    const at = i === 0 ? 0 : ends[i - 1]!;
    if (length !== ends[i]! - at) return false;
    for (let k = 0; k < length; k++) if (v.bytes[from + k] !== bytes[at + k]) return false;
  }
  return true;
}

/** Where the characters of the string at vector slot `at` begin, checked (its length is the u32 before them). */
function nameStart(v: Verifier, at: number): number {
  // A string in a vector is a uoffset from its slot; Verifier.string reads a table field, so
  // build the equivalent check here.
  const view = v.view;
  if (at + 4 > v.bytes.length) throw new Reject('out_of_bounds', `server name offset at ${at} is outside the message`);
  const pos = at + view.getUint32(at, true);
  if (pos % 4 !== 0 || pos + 4 > v.bytes.length) throw new Reject('out_of_bounds', `server name at ${pos} is outside the message or unaligned`);
  const length = view.getUint32(pos, true);
  if (length > serverIdBytesMax) throw new Reject('bad_name', `server name is ${length} bytes > limit ${serverIdBytesMax}`);
  if (pos + 4 + length + 1 > v.bytes.length || v.bytes[pos + 4 + length] !== 0) throw new Reject('out_of_bounds', 'server name overruns the message or is not NUL-terminated');
  return pos + 4;
}

function stringAt(v: Verifier, at: number): string | null {
  const from = nameStart(v, at);
  return Buffer.from(v.bytes.buffer, v.bytes.byteOffset + from, v.view.getUint32(from - 4, true)).toString('latin1');
}

/** Ends ascend, stay within the column, and every metric's hash belongs to this shard. */
function checkRanges(what: string, hashes: Uint32Array, ends: Uint32Array, entries: number, shard: number, shards: number): void {
  if (hashes.length !== 2 * ends.length) throw new Reject('bad_columns', `${what}: ${hashes.length / 2} hashes for ${ends.length} metrics`);
  let prev = 0;
  for (let i = 0; i < ends.length; i++) {
    if (ends[i]! <= prev) throw new Reject('bad_columns', `${what}: metric ${i} has no entries or ends before the previous one`);
    if (ends[i]! > entries) throw new Reject('bad_columns', `${what}: metric ${i} ends at ${ends[i]} > ${entries} entries`);
    if (shardOf(hashes[2 * i]!, shards) !== shard) throw new Reject('bad_value', `${what}: metric ${i} belongs to shard ${shardOf(hashes[2 * i]!, shards)}, not ${shard}`);
    prev = ends[i]!;
  }
  if (prev !== entries) throw new Reject('bad_columns', `${what}: ${entries - prev} entries belong to no metric`);
}

function checkSectionPoints(m: ShardSectionMessage): void {
  const n = m.pointValues.length;
  if (m.pointServers.length !== n || m.pointKinds.length !== m.pointEnds.length) throw new Reject('bad_columns', `point columns disagree: ${m.pointServers.length} servers, ${n} values, ${m.pointKinds.length} kinds, ${m.pointEnds.length} metrics`);
  checkRanges('points', m.pointHashes, m.pointEnds, n, m.shard, m.shards);
  for (let i = 0; i < m.pointKinds.length; i++) if (m.pointKinds[i]! > KindCode.Counter) throw new Reject('bad_value', `point metric ${i} has kind ${m.pointKinds[i]}`);
  const servers = m.servers.length;
  let metric = 0;
  for (let i = 0; i < n; i++) {
    if (m.pointServers[i]! >= servers) throw new Reject('bad_value', `point ${i} names server ${m.pointServers[i]} of ${servers}`);
    // One point per server of a metric, in server order (as SectionCutter places them). A point
    // repeating its metric's server (an edge that sent a metric in two parts) is marked bad, that
    // point's problem alone, like a non-finite value; the core sizes a metric's head by its
    // servers, not its entries (a section repeating one server took ~50× its bytes of head).
    if (m.pointEnds[metric] === i) metric++;
    const first = metric === 0 ? 0 : m.pointEnds[metric - 1]!;
    if (!Number.isFinite(m.pointValues[i]!) || (i > first && m.pointServers[i]! <= m.pointServers[i - 1]!)) (m.pointBad ??= new Uint8Array(n))[i] = 1;
  }
}

function checkSectionDists(m: ShardSectionMessage): void {
  const n = m.distCounts.length;
  if (m.distServers.length !== n || m.distSums.length !== n || m.distMins.length !== n || m.distMaxes.length !== n || m.sketchEnds.length !== n) {
    throw new Reject('bad_columns', `summary columns disagree in length (counts: ${n})`);
  }
  checkRanges('summaries', m.distHashes, m.distEnds, n, m.shard, m.shards);
  const servers = m.servers.length;
  let start = 0;
  let metric = 0;
  for (let i = 0; i < n; i++) {
    while (m.distEnds[metric]! <= i) metric++;
    const server = m.distServers[i]!;
    const first = metric === 0 ? 0 : m.distEnds[metric - 1]!;
    // The rollup, when present, is its metric's last entry.
    if (server >= servers && !(server === rollupServer && i === m.distEnds[metric]! - 1)) throw new Reject('bad_value', `summary ${i} names server ${server} of ${servers}`);
    const count = m.distCounts[i]!;
    const min = m.distMins[i]!;
    const max = m.distMaxes[i]!;
    const end = m.sketchEnds[i]!;
    if (end < start || end > m.sketchBytes.length) throw new Reject('bad_sketch', `summary ${i} sketch ends at ${end}, outside ${start}..${m.sketchBytes.length}`);
    // A bad value is that summary's problem alone: marked, not a reason to refuse the section.
    // So is a summary repeating its metric's server (one summary per server, in server order, as
    // SectionCutter places them; the rollup comes last): the head merged the two, and the
    // server's count and sum doubled.
    if (count === 0 || !Number.isFinite(m.distSums[i]!) || !Number.isFinite(min) || !Number.isFinite(max) || min > max || (i > first && server <= m.distServers[i - 1]!) || sketchCount(m.sketchBytes, start, end) !== count) {
      (m.distBad ??= new Uint8Array(n))[i] = 1;
    }
    start = end;
  }
  if (start !== m.sketchBytes.length) throw new Reject('bad_sketch', `${m.sketchBytes.length - start} sketch bytes belong to no summary`);
}
