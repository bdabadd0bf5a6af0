// The storage row: one metric × one rack × one block of seconds (core/store.ts explains the
// layout). Per server a presence map and the values; per second the rack rollup. Values are
// decimal-scaled integers, delta-encoded as varints when that is exact, raw doubles when not;
// the whole row is then deflated. Decoding returns columns (typed arrays), never a point object.

import { deflateRawSync, inflateRawSync } from 'node:zlib';

export const rowVersion = 1;

/** Growable byte writer with 53-bit varints. */
export class ByteWriter {
  buf = new Uint8Array(1 << 16);
  pos = 0;
  private dv = new DataView(this.buf.buffer);

  reset(): void {
    this.pos = 0;
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n));
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }

  u8(v: number): void {
    this.room(1);
    this.buf[this.pos++] = v;
  }

  /** Unsigned integer < 2^53. */
  varint(v: number): void {
    this.room(8);
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.pos++] = v;
  }

  f64(v: number): void {
    this.room(8);
    this.dv.setFloat64(this.pos, v, true);
    this.pos += 8;
  }

  bytes(src: Uint8Array, start: number, end: number): void {
    this.room(end - start);
    this.buf.set(src.subarray(start, end), this.pos);
    this.pos += end - start;
  }
}

/** Bounds-checked reader over an inflated row; a malformed row throws RowError. */
export class RowError extends Error {}

class ByteReader {
  pos = 0;
  readonly dv: DataView;
  constructor(readonly buf: Uint8Array) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  private need(n: number): void {
    if (this.pos + n > this.buf.length) throw new RowError(`row truncated at ${this.pos}`);
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  varint(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      this.need(1);
      const b = this.buf[this.pos++]!;
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 0x80;
    }
    throw new RowError('varint too long');
  }
  f64(): number {
    this.need(8);
    const v = this.dv.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }
  skip(n: number): number {
    this.need(n);
    const at = this.pos;
    this.pos += n;
    return at;
  }
}

const zz = (n: number) => (n >= 0 ? n * 2 : -n * 2 - 1);
const unzz = (z: number) => (z % 2 === 0 ? z / 2 : -(z + 1) / 2);
const intLimit = 2 ** 50;

/** Smallest decimal exponent (0..9) that turns every value into an exact integer, or −1. */
function decimalExponent(vals: Float64Array, from: number, to: number): number {
  let e = 0;
  let scale = 1;
  for (let i = from; i < to; i++) {
    const v = vals[i]!;
    for (;;) {
      const r = Math.round(v * scale);
      if (Math.abs(r) < intLimit && r / scale === v) break;
      if (++e > 9) return -1;
      scale *= 10;
    }
  }
  return e;
}

/** Writes seconds (ascending offsets < blockSeconds) as "all" or a bitmap. */
function writePresence(w: ByteWriter, secs: Uint16Array, from: number, to: number, blockSeconds: number): void {
  if (to - from === blockSeconds) {
    w.u8(1);
    return;
  }
  w.u8(2);
  const bytes = Math.ceil(blockSeconds / 8);
  const at = w.pos;
  for (let i = 0; i < bytes; i++) w.u8(0);
  for (let i = from; i < to; i++) w.buf[at + (secs[i]! >> 3)]! |= 1 << (secs[i]! & 7);
}

function readPresence(r: ByteReader, blockSeconds: number, out: Uint16Array, at: number): number {
  const mode = r.u8();
  if (mode === 1) {
    for (let s = 0; s < blockSeconds; s++) out[at + s] = s;
    return blockSeconds;
  }
  if (mode !== 2) throw new RowError(`presence mode ${mode}`);
  const start = r.skip(Math.ceil(blockSeconds / 8));
  let n = 0;
  for (let s = 0; s < blockSeconds; s++) if (r.buf[start + (s >> 3)]! & (1 << (s & 7))) out[at + n++] = s;
  return n;
}

const varintLen = (v: number) => (v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : Math.ceil(Math.log2(v + 1) / 7));
/** Mode flag: values are offsets from the series' minimum (noisy but stationary series), not deltas. */
const offsetMode = 0x40;

/**
 * Point values of one series: decimal integers when exact — as zig-zag deltas (random walks,
 * slow drifts) or as offsets from the minimum (noise around a level), whichever is smaller —
 * else raw doubles.
 */
function writeValues(w: ByteWriter, vals: Float64Array, from: number, to: number): void {
  const e = decimalExponent(vals, from, to);
  if (e < 0) {
    w.u8(0xff);
    for (let i = from; i < to; i++) w.f64(vals[i]!);
    return;
  }
  const scale = 10 ** e;
  let min = Infinity;
  let prev = 0;
  let deltaBytes = 0;
  for (let i = from; i < to; i++) {
    const n = Math.round(vals[i]! * scale);
    deltaBytes += varintLen(zz(n - prev));
    prev = n;
    if (n < min) min = n;
  }
  let offsetBytes = varintLen(zz(min));
  for (let i = from; i < to; i++) offsetBytes += varintLen(Math.round(vals[i]! * scale) - min);
  if (offsetBytes < deltaBytes) {
    w.u8(e | offsetMode);
    w.varint(zz(min));
    for (let i = from; i < to; i++) w.varint(Math.round(vals[i]! * scale) - min);
    return;
  }
  w.u8(e);
  prev = 0;
  for (let i = from; i < to; i++) {
    const n = Math.round(vals[i]! * scale);
    w.varint(zz(n - prev));
    prev = n;
  }
}

function readValues(r: ByteReader, out: Float64Array, at: number, n: number): void {
  const e = r.u8();
  if (e === 0xff) {
    for (let i = 0; i < n; i++) out[at + i] = r.f64();
    return;
  }
  if ((e & offsetMode) !== 0) {
    const scale = 10 ** (e & ~offsetMode);
    if ((e & ~offsetMode) > 9) throw new RowError(`decimal exponent ${e}`);
    const min = unzz(r.varint());
    for (let i = 0; i < n; i++) out[at + i] = (min + r.varint()) / scale;
    return;
  }
  if (e > 9) throw new RowError(`decimal exponent ${e}`);
  const scale = 10 ** e;
  let prev = 0;
  for (let i = 0; i < n; i++) {
    prev += unzz(r.varint());
    out[at + i] = prev / scale;
  }
}

/** Summaries (distributions, rollups) of one series: a presence map then count, sum, min, max, sketch. */
export interface SummaryColumns {
  secs: Uint16Array;
  count: Float64Array;
  sum: Float64Array;
  min: Float64Array;
  max: Float64Array;
  /** Sketch i is sketchSrc[i][sketchStart[i] .. sketchEnd[i]). */
  sketchSrc: Uint8Array[];
  sketchStart: Uint32Array;
  sketchEnd: Uint32Array;
}

function writeSummaries(w: ByteWriter, c: SummaryColumns, from: number, to: number, blockSeconds: number): void {
  writePresence(w, c.secs, from, to, blockSeconds);
  for (let i = from; i < to; i++) {
    w.varint(c.count[i]!);
    w.f64(c.sum[i]!);
    w.f64(c.min[i]!);
    w.f64(c.max[i]!);
    w.varint(c.sketchEnd[i]! - c.sketchStart[i]!);
    w.bytes(c.sketchSrc[i]!, c.sketchStart[i]!, c.sketchEnd[i]!);
  }
}

/** What one row holds, as the store assembles it: a row's columns plus the rollup range to write. */
export interface RowInput extends DecodedRow {
  /** Rollup entries [rollupFrom, rollupTo) of rollup, one per second. */
  rollupFrom: number;
  rollupTo: number;
}

const scratch = new ByteWriter();

/** Encodes and deflates one row. */
export function encodeRow(x: RowInput): Uint8Array {
  const w = scratch;
  w.reset();
  w.u8(rowVersion);
  w.u8(x.kind);
  w.u8(x.blockSeconds);
  const n = x.serverIds.length;
  w.varint(n);
  let prev = 0;
  for (let j = 0; j < n; j++) {
    w.varint(x.serverIds[j]! - prev);
    prev = x.serverIds[j]!;
  }
  for (let j = 0; j < n; j++) {
    const p0 = x.pointStart[j]!;
    const p1 = x.pointStart[j + 1]!;
    if (p1 === p0) w.u8(0);
    else {
      writePresence(w, x.pointSecs, p0, p1, x.blockSeconds);
      writeValues(w, x.pointVals, p0, p1);
    }
    const d0 = x.distStart[j]!;
    const d1 = x.distStart[j + 1]!;
    if (d1 === d0) w.u8(0);
    else writeSummaries(w, x.dist, d0, d1, x.blockSeconds);
  }
  if (x.rollupTo === x.rollupFrom) w.u8(0);
  else writeSummaries(w, x.rollup, x.rollupFrom, x.rollupTo, x.blockSeconds);
  return deflateRawSync(w.buf.subarray(0, w.pos), { level: 6 });
}

/** A row's columns (entries grouped by server, seconds ascending), as decoded or as built. */
export interface DecodedRow {
  kind: number;
  blockSeconds: number;
  serverIds: Uint32Array;
  /** Point entries of server j: [pointStart[j], pointStart[j + 1]) of pointSecs/pointVals. */
  pointStart: Int32Array;
  pointSecs: Uint16Array;
  pointVals: Float64Array;
  /** Distribution entries of server j: [distStart[j], distStart[j + 1]) of dist. */
  distStart: Int32Array;
  dist: SummaryColumns;
  /** Rack rollup per second (distributions only). */
  rollup: SummaryColumns;
}

/** Summary columns for n entries (sketch sources filled with `src` when given). */
export function summaryColumns(n: number, src?: Uint8Array): SummaryColumns {
  const sketchSrc = new Array<Uint8Array>(n);
  if (src !== undefined) sketchSrc.fill(src);
  return {
    secs: new Uint16Array(n),
    count: new Float64Array(n),
    sum: new Float64Array(n),
    min: new Float64Array(n),
    max: new Float64Array(n),
    sketchSrc,
    sketchStart: new Uint32Array(n),
    sketchEnd: new Uint32Array(n),
  };
}

function readSummaries(r: ByteReader, c: SummaryColumns, at: number, blockSeconds: number): number {
  const n = readPresence(r, blockSeconds, c.secs, at);
  for (let i = at; i < at + n; i++) {
    c.count[i] = r.varint();
    c.sum[i] = r.f64();
    c.min[i] = r.f64();
    c.max[i] = r.f64();
    const len = r.varint();
    c.sketchStart[i] = r.skip(len);
    c.sketchEnd[i] = c.sketchStart[i]! + len;
  }
  return n;
}

/** Inflates and decodes a row; throws RowError when it is malformed. */
export function decodeRow(stored: Uint8Array): DecodedRow {
  let raw: Uint8Array;
  try {
    raw = inflateRawSync(stored);
  } catch (cause) {
    throw new RowError('row does not inflate', { cause });
  }
  const r = new ByteReader(raw);
  if (r.u8() !== rowVersion) throw new RowError('unknown row version');
  const kind = r.u8();
  const blockSeconds = r.u8();
  const n = r.varint();
  if (n > 1_000_000) throw new RowError(`${n} servers in a row`);
  const serverIds = new Uint32Array(n);
  let prev = 0;
  for (let j = 0; j < n; j++) serverIds[j] = prev += r.varint();
  // At most blockSeconds entries per server and section.
  const cap = n * blockSeconds;
  const pointSecs = new Uint16Array(cap);
  const pointVals = new Float64Array(cap);
  const pointStart = new Int32Array(n + 1);
  // Distribution columns are allocated only when a row has distribution entries.
  let dist: SummaryColumns | null = null;
  const distStart = new Int32Array(n + 1);
  let p = 0;
  let d = 0;
  for (let j = 0; j < n; j++) {
    pointStart[j] = p;
    distStart[j] = d;
    if (r.buf[r.pos] === 0) r.pos++;
    else {
      const k = readPresence(r, blockSeconds, pointSecs, p);
      readValues(r, pointVals, p, k);
      p += k;
    }
    if (r.buf[r.pos] === 0) r.pos++;
    else d += readSummaries(r, (dist ??= summaryColumns(cap, raw)), d, blockSeconds);
  }
  pointStart[n] = p;
  distStart[n] = d;
  const rollup = summaryColumns(blockSeconds, raw);
  let rolled = 0;
  if (r.buf[r.pos] === 0) r.pos++;
  else rolled = readSummaries(r, rollup, 0, blockSeconds);
  if (r.pos !== raw.length) throw new RowError(`${raw.length - r.pos} trailing bytes`);
  return { kind, blockSeconds, serverIds, pointStart, pointSecs: pointSecs.subarray(0, p), pointVals: pointVals.subarray(0, p), distStart, dist: trimSummaries(dist ?? summaryColumns(0, raw), d), rollup: trimSummaries(rollup, rolled) };
}

/** The first n entries of c (views; sketch sources copied). */
export function trimSummaries(c: SummaryColumns, n: number): SummaryColumns {
  return {
    secs: c.secs.subarray(0, n),
    count: c.count.subarray(0, n),
    sum: c.sum.subarray(0, n),
    min: c.min.subarray(0, n),
    max: c.max.subarray(0, n),
    sketchSrc: c.sketchSrc.slice(0, n),
    sketchStart: c.sketchStart.subarray(0, n),
    sketchEnd: c.sketchEnd.subarray(0, n),
  };
}
