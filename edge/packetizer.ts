// Splits a closed second into EdgeSecond datagrams of at most `datagramBytes` (DESIGN §6).
// Points (gauges, counters) cost 17 bytes each; a distribution costs 41 bytes plus its sparse
// sketch. A distribution whose sketch alone would not fit is split into several summaries of
// disjoint value ranges: summaries are mergeable, so the rack merges them back exactly.
// Names ride in the same datagram as their series, for the seconds a NamePolicy says.

import { Encoder, emptyColumns, nameColumns, type SeriesColumns } from '../schema/codec.js';
import { partsMax, serverSecondBytesMax } from '../schema/limits.js';
import { SortedSketchEncoder } from '../schema/sketch.js';
import type { ClosedSecond } from './aggregator.js';

/** Bytes of a frame before any column: root, identifier, tables, vtables, CRC (measured + margin). */
export const frameFixedBytes = 160;
const vectorBytes = 4 + 7; // length prefix + worst-case alignment padding
const pointBytes = 8 + 1 + 8;
const distBytes = 8 + 1 + 4 + 8 + 8 + 8 + 4;
const nameEntryBytes = 8 + 4;

export interface SeriesTable {
  readonly names: readonly (string | null)[];
  readonly hashes: Uint32Array;
}

export interface PacketizerOptions {
  server: string;
  session: number;
  datagramBytes: number;
  /** Bytes added to each frame after packing (the auth header, schema/auth.ts); 0 when unsigned. */
  authBytes?: number;
}

export interface PacketHeader {
  second: number;
  sentMs: number;
  /** Sequence number of the first datagram; the packetizer numbers the rest. */
  seq: number;
}

/** Upper bound of a frame's size with the given content (test-checked against real frames). */
export function frameBytesBound(serverBytes: number, points: number, dists: number, sketchBytes: number, names: number, nameBytes: number): number {
  let n = frameFixedBytes + serverBytes;
  if (points > 0) n += 3 * vectorBytes + points * pointBytes;
  if (dists > 0) n += 8 * vectorBytes + dists * distBytes + sketchBytes;
  if (names > 0) n += 3 * vectorBytes + names * nameEntryBytes + nameBytes;
  return n;
}

export class Packetizer {
  private readonly encoder = new Encoder();
  private readonly sketcher = new SortedSketchEncoder();
  private readonly serverBytes: number;
  /** Largest frame: the datagram size less what signing adds. */
  readonly frameBytesMax: number;
  /** Largest sketch a single summary may carry in one datagram. */
  readonly sketchBytesBudget: number;
  // Distribution chunks of the second being packed.
  private chunkLen = 0;
  private chunkSlot = new Int32Array(1024);
  private chunkCount = new Uint32Array(1024);
  private chunkSum = new Float64Array(1024);
  private chunkMin = new Float64Array(1024);
  private chunkMax = new Float64Array(1024);
  private chunkEnd = new Uint32Array(1024);
  private sketchBuf = new Uint8Array(64 * 1024);
  splitSummaries = 0;
  /** Seconds sent without the names they were to carry: with them they took more than partsMax datagrams (the rack asks for names it lacks). */
  namesDeferred = 0;
  /** Series (points and summary chunks) not sent: their second took more than partsMax datagrams even without names. */
  seriesOverParts = 0;

  constructor(private readonly opts: PacketizerOptions) {
    this.serverBytes = Buffer.byteLength(opts.server) + 1;
    this.frameBytesMax = opts.datagramBytes - (opts.authBytes ?? 0);
    this.sketchBytesBudget = this.frameBytesMax - frameBytesBound(this.serverBytes, 0, 1, 0, 1, 128);
    if (this.sketchBytesBudget < 64) throw new Error(`datagram size ${opts.datagramBytes} leaves no room for a sketch`);
  }

  /** The frames of one closed second, in part order. `named(slot)` says whose names to include. */
  pack(closed: ClosedSecond, table: SeriesTable, header: PacketHeader, named: (slot: number) => boolean): Uint8Array[] {
    this.chunkDistributions(closed);
    let parts = this.plan(closed, table, named);
    // The wire allows partsMax datagrams a second (the rack refuses a part numbered beyond, and
    // with it the whole second), and a rack holds serverSecondBytesMax of one server's second
    // (it refuses the parts beyond: 10,000 series with 80-character names took 1.2 MB, and their
    // resends were refused again): names go first, then the series past the last part that fits.
    if (this.fitting(parts) < parts.length) {
      this.namesDeferred++;
      parts = this.plan(closed, table, () => false);
    }
    const keep = this.fitting(parts);
    for (let p = keep; p < parts.length; p++) this.seriesOverParts += parts[p]!.points + parts[p]!.dists;
    parts.length = keep;
    const frames: Uint8Array[] = [];
    for (let p = 0; p < parts.length; p++) {
      const part = parts[p]!;
      const series = this.columns(closed, table, part);
      const frame = this.encoder.edgeSecond({
        server: this.opts.server,
        session: this.opts.session,
        seq: (header.seq + p) >>> 0,
        second: header.second,
        part: p,
        parts: parts.length,
        sentMs: header.sentMs,
        series,
      });
      if (frame.length > this.frameBytesMax) {
        throw new Error(`BUG: part ${p} is ${frame.length} bytes > frame size ${this.frameBytesMax} (estimate ${part.bytes})`);
      }
      frames.push(frame);
    }
    return frames;
  }

  /** How many of a second's first parts fit what a rack takes: partsMax datagrams, serverSecondBytesMax bytes (as sent, signatures included). */
  private fitting(parts: readonly PartPlan[]): number {
    const auth = this.opts.authBytes ?? 0;
    let bytes = 0;
    let k = 0;
    while (k < parts.length && k < partsMax && bytes + parts[k]!.bytes + auth <= serverSecondBytesMax) bytes += parts[k++]!.bytes + auth;
    return k;
  }

  /** A datagram that carries only names (parts = 0): the answer to a NACK that asked for them. `namesPerFrame` gets each frame's count. */
  namesOnly(table: SeriesTable, slots: number[], header: PacketHeader, namesPerFrame?: number[]): Uint8Array[] {
    const frames: Uint8Array[] = [];
    let i = 0;
    while (i < slots.length) {
      const group: number[] = [];
      let bytes = 0;
      while (i < slots.length) {
        const name = table.names[slots[i]!];
        if (name == null) {
          i++;
          continue;
        }
        if (frameBytesBound(this.serverBytes, 0, 0, 0, group.length + 1, bytes + name.length) > this.frameBytesMax) break;
        group.push(slots[i++]!);
        bytes += name.length;
      }
      if (group.length === 0) break;
      namesPerFrame?.push(group.length);
      const series = emptyWithNames(table, group);
      frames.push(
        this.encoder.edgeSecond({ server: this.opts.server, session: this.opts.session, seq: header.seq, second: header.second, part: 0, parts: 0, sentMs: header.sentMs, series }),
      );
    }
    return frames;
  }

  private chunkDistributions(closed: ClosedSecond): void {
    this.chunkLen = 0;
    let sketchAt = 0;
    const stack: number[] = [];
    for (let d = 0; d < closed.distLen; d++) {
      stack.push(closed.distFrom[d]!, closed.distTo[d]!);
      while (stack.length > 0) {
        const to = stack.pop()!;
        const from = stack.pop()!;
        const size = this.sketcher.bin(closed.values, closed.weights, from, to);
        if (size > this.sketchBytesBudget && to - from > 1) {
          const mid = (from + to) >>> 1;
          stack.push(mid, to, from, mid); // lower half first
          this.splitSummaries++;
          continue;
        }
        this.ensureChunks(this.chunkLen + 1, sketchAt + size);
        sketchAt = this.sketcher.encode(this.sketchBuf, sketchAt);
        this.addChunk(closed, closed.distSlots[d]!, from, to, sketchAt);
      }
    }
  }

  private addChunk(closed: ClosedSecond, slot: number, from: number, to: number, sketchEnd: number): void {
    // Neumaier summation: the sum stays exact to the last bit for realistic inputs.
    let sum = 0;
    let comp = 0;
    let count = 0;
    for (let i = from; i < to; i++) {
      const w = closed.weights[i]!;
      const x = closed.values[i]! * w;
      const t = sum + x;
      comp += Math.abs(sum) >= Math.abs(x) ? sum - t + x : x - t + sum;
      sum = t;
      count += w;
    }
    const c = this.chunkLen++;
    this.chunkSlot[c] = slot;
    this.chunkCount[c] = count;
    this.chunkSum[c] = sum + comp;
    this.chunkMin[c] = closed.values[from]!;
    this.chunkMax[c] = closed.values[to - 1]!;
    this.chunkEnd[c] = sketchEnd;
  }

  private ensureChunks(chunks: number, sketchBytes: number): void {
    if (chunks > this.chunkSlot.length) {
      const n = this.chunkSlot.length * 2;
      this.chunkSlot = grow(this.chunkSlot, new Int32Array(n));
      this.chunkCount = grow(this.chunkCount, new Uint32Array(n));
      this.chunkSum = grow(this.chunkSum, new Float64Array(n));
      this.chunkMin = grow(this.chunkMin, new Float64Array(n));
      this.chunkMax = grow(this.chunkMax, new Float64Array(n));
      this.chunkEnd = grow(this.chunkEnd, new Uint32Array(n));
    }
    if (sketchBytes > this.sketchBuf.length) this.sketchBuf = grow(this.sketchBuf, new Uint8Array(Math.max(sketchBytes, this.sketchBuf.length * 2)));
  }

  /** Greedy packing: each part covers a run of points and then a run of chunks. */
  private plan(closed: ClosedSecond, table: SeriesTable, named: (slot: number) => boolean): PartPlan[] {
    const parts: PartPlan[] = [];
    let cur = newPart(0, 0);
    const fits = (points: number, dists: number, sketch: number, names: number, nameBytes: number) =>
      frameBytesBound(this.serverBytes, points, dists, sketch, names, nameBytes) <= this.frameBytesMax;
    const total = closed.pointLen + this.chunkLen;
    for (let e = 0; e < total; e++) {
      const isPoint = e < closed.pointLen;
      const c = e - closed.pointLen;
      const slot = isPoint ? closed.pointSlots[e]! : this.chunkSlot[c]!;
      const sketch = isPoint ? 0 : this.chunkEnd[c]! - (c === 0 ? 0 : this.chunkEnd[c - 1]!);
      const name = named(slot) ? (table.names[slot] ?? null) : null;
      const nameLen = name === null ? 0 : name.length;
      const add = (p: PartPlan) =>
        fits(p.points + (isPoint ? 1 : 0), p.dists + (isPoint ? 0 : 1), p.sketchBytes + sketch, p.names.length + (name === null ? 0 : 1), p.nameBytes + nameLen);
      if (!add(cur)) {
        if (cur.points + cur.dists === 0) throw new Error(`BUG: one series does not fit an empty ${this.frameBytesMax}-byte frame`);
        parts.push(cur);
        cur = newPart(isPoint ? e : closed.pointLen, isPoint ? 0 : c);
      }
      if (isPoint) cur.points++;
      else cur.dists++;
      cur.sketchBytes += sketch;
      if (name !== null) {
        cur.names.push(slot);
        cur.nameBytes += nameLen;
      }
      cur.bytes = frameBytesBound(this.serverBytes, cur.points, cur.dists, cur.sketchBytes, cur.names.length, cur.nameBytes);
    }
    if (cur.points + cur.dists > 0 || parts.length === 0) parts.push(cur);
    return parts;
  }

  private columns(closed: ClosedSecond, table: SeriesTable, part: PartPlan): SeriesColumns {
    const pointHashes = new Uint32Array(2 * part.points);
    for (let i = 0; i < part.points; i++) {
      const slot = closed.pointSlots[part.pointFrom + i]!;
      pointHashes[2 * i] = table.hashes[2 * slot]!;
      pointHashes[2 * i + 1] = table.hashes[2 * slot + 1]!;
    }
    const c0 = part.chunkFrom;
    const c1 = c0 + part.dists;
    const sketchStart = c0 === 0 ? 0 : this.chunkEnd[c0 - 1]!;
    const distHashes = new Uint32Array(2 * part.dists);
    const sketchEnds = new Uint32Array(part.dists);
    for (let i = 0; i < part.dists; i++) {
      const slot = this.chunkSlot[c0 + i]!;
      distHashes[2 * i] = table.hashes[2 * slot]!;
      distHashes[2 * i + 1] = table.hashes[2 * slot + 1]!;
      sketchEnds[i] = this.chunkEnd[c0 + i]! - sketchStart;
    }
    const names = emptyWithNames(table, part.names);
    return {
      pointHashes,
      pointKinds: closed.pointKinds.subarray(part.pointFrom, part.pointFrom + part.points),
      pointValues: closed.pointValues.subarray(part.pointFrom, part.pointFrom + part.points),
      distHashes,
      distKinds: new Uint8Array(part.dists).fill(2),
      distCounts: this.chunkCount.subarray(c0, c1),
      distSums: this.chunkSum.subarray(c0, c1),
      distMins: this.chunkMin.subarray(c0, c1),
      distMaxes: this.chunkMax.subarray(c0, c1),
      sketchEnds,
      sketchBytes: this.sketchBuf.subarray(sketchStart, part.dists === 0 ? sketchStart : this.chunkEnd[c1 - 1]!),
      nameHashes: names.nameHashes,
      nameEnds: names.nameEnds,
      nameBytes: names.nameBytes,
    };
  }
}

interface PartPlan {
  pointFrom: number;
  points: number;
  chunkFrom: number;
  dists: number;
  sketchBytes: number;
  names: number[];
  nameBytes: number;
  bytes: number;
}

function newPart(pointFrom: number, chunkFrom: number): PartPlan {
  return { pointFrom, points: 0, chunkFrom, dists: 0, sketchBytes: 0, names: [], nameBytes: 0, bytes: 0 };
}

function grow<T extends Int32Array | Uint32Array | Float64Array | Uint8Array>(from: T, to: T): T {
  to.set(from as never);
  return to;
}

function emptyWithNames(table: SeriesTable, slots: readonly number[]): SeriesColumns {
  const hashes = new Uint32Array(2 * slots.length);
  slots.forEach((s, i) => {
    hashes[2 * i] = table.hashes[2 * s]!;
    hashes[2 * i + 1] = table.hashes[2 * s + 1]!;
  });
  return { ...emptyColumns(), ...nameColumns(hashes, slots.map((s) => table.names[s] ?? '')) };
}
