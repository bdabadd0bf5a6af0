// The storage row: one metric × one rack × one block of seconds (core/store.ts explains the
// layout). Per server a presence map and the values; per second the rack rollup. Decoding
// returns columns (typed arrays), never a point object.
//
// Version 5 (twenty-eighth session): version 4's bytes, its marker 0x46, then a CRC-32 of all of
// them (u32, little-endian). A row is kept for a year: a byte changed on the disk since it was
// written is found when the row is read (RowError, counted as a corrupt row and skipped) instead
// of read as other values. Checked at every decode of bytes read from LMDB; only bytes a reader
// kept in memory after they passed (RowDecodeOptions.checked) are not checked again.
// Version 4 (issue 14, fifth session), not deflated, so that a reader touches only what a query
// needs:
//   u8 0x36 (marker: version 4; like 0x16 and 0x26 a deflate stream never starts with it, block type 3)
//   u8 kind, u8 blockSeconds, varint n
//   series of n  server ids (ascending), through the value codec (a rack's run of ids: ~3 B)
//   series of n  directory: byte length of each server's segment, through the value codec
//   u8 layout    0: segments as below; 1 (dense): every server has a point at every second of the
//                block and no summaries, and a segment is its values' series alone
//   u8 habit     1 then u8 mode << 4 | e, u8 coder << 6 | param: what the first server's values'
//                series chose, which every server's values' series is written with (core/codec/
//                values.ts: ~10 bits less per series when they choose alike); 0 none (no points)
//   varint len + aggregates, or len 0 (rows of < 4 servers): per span of 5 s of the block (the
//                shortest window; 1 s when the block is not a multiple of 5 s), count / sum / min /
//                max over the row's servers (rowAggregates: sums added in the order the evaluator
//                adds them) — u8 span, presence of each span, counts (one varint when all equal,
//                else a series), min and max series, sums as decimals + ulps from them (writeSums)
//   varint len + the rack rollup (summaries), or len 0
//   n segments, one per server: u8 flags (1 points, 2 summaries, 4 points at every second,
//                8 summaries at every second), [points' bitmap unless 4, series],
//                [summaries' bitmap unless 8, each summary]
// Version 3 (0x26): the same without the habit byte, with aggregates per second (no span byte):
// 0.091 B/point on the comparison mix, against 0.027 per 5 s. A window of a multiple of 5 s
// (every window is aligned to its length) takes whole spans; other windows read the values.
// Version 2 (0x16): ids as varint deltas, the directory as varints, no layout byte, and a segment
// is u8 flags (1 points, 2 summaries) then for each part a presence byte (1 every second, 2 a
// bitmap follows) — 4–5 B per server (0.067 B/point on the comparison mix; v3 head: 0.016).
// A decoder reads the directory and decodes the segments of the servers asked for only; with
// `secondsOnlyFor` it reads each segment's presence map and skips its values (the aggregates answer).
// Version 1: the same per-server content inline (no directory, no aggregates), deflated whole.
// Values go through core/codec/values.ts (writeSeries / readSeries).

import { crc32, inflateRawSync } from 'node:zlib';
import { checkedHabit, readSeries, seriesHabit, ValueCodecError, writeSeries, type SeriesHabit } from './codec/values.js';

/** First byte of a version 2 row: low bits 110 are deflate's reserved block type, never a v1 row's first byte. */
export const rowV2Marker = 0x16;
/** First byte of a version 3 row: deflate's reserved block type too. */
export const rowV3Marker = 0x26;
/** First byte of a version 4 row: deflate's reserved block type too. */
export const rowV4Marker = 0x36;
/** First byte of a version 5 row (what encodeRow writes: version 4 and a CRC-32 trailer): deflate's reserved block type too. */
export const rowV5Marker = 0x46;
/** Bytes of a version 5 row's trailer (its CRC-32). */
const rowCrcBytes = 4;
/** Seconds per aggregate span of a version 4 row: the shortest query window. */
export const aggregateSpanSeconds = 5;

/** The span of a block's aggregates: 5 s, or 1 s for a block that is not a multiple of 5 s. */
export const aggregateSpanOf = (blockSeconds: number) => (blockSeconds % aggregateSpanSeconds === 0 ? aggregateSpanSeconds : 1);

/** Whether a stored row has a directory (version 2 to 5; version 1 is deflated whole). */
const isDirected = (marker: number | undefined) => marker === rowV5Marker || marker === rowV4Marker || marker === rowV3Marker || marker === rowV2Marker;
/** Whether a stored row has version 4's layout (a habit, aggregates per span): versions 4 and 5. */
const isV4Layout = (marker: number | undefined) => marker === rowV5Marker || marker === rowV4Marker;

/**
 * A stored row's bytes without a version 5 row's CRC-32 trailer, the CRC checked unless
 * `unchecked` (these very bytes passed it before: RowDecodeOptions.checked); a row of an older
 * version as it is. Throws RowError when the CRC does not match.
 */
export function rowBody(stored: Uint8Array, unchecked = false): Uint8Array {
  if (stored[0] !== rowV5Marker) return stored;
  const end = stored.length - rowCrcBytes;
  if (end < 1) throw new RowError(`a version 5 row of ${stored.length} bytes has no room for its CRC`);
  const body = stored.subarray(0, end);
  if (unchecked) return body;
  const want = (stored[end]! | (stored[end + 1]! << 8) | (stored[end + 2]! << 16) | (stored[end + 3]! << 24)) >>> 0;
  if (crc32(body) !== want) throw new RowError('row CRC-32 does not match: its bytes changed after it was written');
  return body;
}
const rowV1Version = 1;
/** Rows of fewer servers carry no aggregates (their values are as quick to read). */
const aggregatesServersMin = 4;

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

/** A malformed row: decoding throws this. */
export class RowError extends Error {}

/** Bounds-checked reader over a row's bytes; a malformed row throws RowError. */
export class ByteReader {
  pos = 0;
  /** Made on the first f64 (a DataView costs ~70 ns: a tenth of a dense row's read of one server). */
  private dv: DataView | null = null;
  constructor(readonly buf: Uint8Array) {}
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
    const v = (this.dv ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength)).getFloat64(this.pos, true);
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

const unzz = (z: number) => (z % 2 === 0 ? z / 2 : -(z + 1) / 2);

/** Writes seconds (ascending offsets < blockSeconds) as "all" or a bitmap. */
function writePresence(w: ByteWriter, secs: Uint16Array, from: number, to: number, blockSeconds: number): void {
  if (to - from === blockSeconds) {
    w.u8(1);
    return;
  }
  w.u8(2);
  writeBitmap(w, secs, from, to, blockSeconds);
}

/** Writes seconds (ascending offsets < blockSeconds) as a bitmap of ⌈blockSeconds / 8⌉ bytes. */
function writeBitmap(w: ByteWriter, secs: Uint16Array, from: number, to: number, blockSeconds: number): void {
  const bytes = Math.ceil(blockSeconds / 8);
  const at = w.pos;
  for (let i = 0; i < bytes; i++) w.u8(0);
  for (let i = from; i < to; i++) w.buf[at + (secs[i]! >> 3)]! |= 1 << (secs[i]! & 7);
}

/** 0, 1, … blockSeconds − 1 (copied in one call for a series present every second). */
const everySecond = Uint16Array.from({ length: 256 }, (_, s) => s);

function readPresence(r: ByteReader, blockSeconds: number, out: Uint16Array, at: number): number {
  const mode = r.u8();
  if (mode === 1) return readEverySecond(blockSeconds, out, at);
  if (mode !== 2) throw new RowError(`presence mode ${mode}`);
  return readBitmap(r, blockSeconds, out, at);
}

/** 0 .. blockSeconds − 1, k times over (read only: shared by every dense row decoded for its seconds). */
let repeated = new Uint16Array(0);
let repeatedSeconds = 0;
function everySecondRepeated(k: number, blockSeconds: number): Uint16Array {
  if (repeatedSeconds !== blockSeconds || repeated.length < k * blockSeconds) {
    repeated = new Uint16Array(Math.max(k, repeatedSeconds === blockSeconds ? repeated.length / blockSeconds : 0, 64) * blockSeconds);
    repeatedSeconds = blockSeconds;
    for (let i = 0; i < repeated.length; i++) repeated[i] = i % blockSeconds;
  }
  return repeated.subarray(0, k * blockSeconds);
}

/** everySecond[0, blockSeconds) of the last call, kept for the next segment of the same block length (a view costs ~30 ns; a dense row has one per server). */
let everySecondView = everySecond.subarray(0, 0);

function readEverySecond(blockSeconds: number, out: Uint16Array, at: number): number {
  if (everySecondView.length !== blockSeconds) everySecondView = everySecond.subarray(0, blockSeconds);
  out.set(everySecondView, at);
  return blockSeconds;
}

function readBitmap(r: ByteReader, blockSeconds: number, out: Uint16Array, at: number): number {
  const start = r.skip(Math.ceil(blockSeconds / 8));
  let n = 0;
  for (let s = 0; s < blockSeconds; s++) if (r.buf[start + (s >> 3)]! & (1 << (s & 7))) out[at + n++] = s;
  return n;
}

/** Mode flag: values are offsets from the series' minimum (noisy but stationary series), not deltas. */
const offsetMode = 0x40;

/** Reads version 1 point values (n into out[at ..]): decimal integers as zig-zag deltas or offsets from the minimum, or raw doubles. */
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

// Version 2 rows' values go through core/codec/values.ts (writeSeries / readSeries); version 1
// rows keep readValues for good (data directories hold them).

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
  writeSummaryEntries(w, c, from, to);
}

/** Summaries' entries, after their presence: count, sum, min, max, sketch. */
function writeSummaryEntries(w: ByteWriter, c: SummaryColumns, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    w.varint(c.count[i]!);
    w.f64(c.sum[i]!);
    w.f64(c.min[i]!);
    w.f64(c.max[i]!);
    w.varint(c.sketchEnd[i]! - c.sketchStart[i]!);
    w.bytes(c.sketchSrc[i]!, c.sketchStart[i]!, c.sketchEnd[i]!);
  }
}

/**
 * Per span of a block (`span` seconds), over every server of a row: the count, sum, min and max
 * of its points and summaries. A span's sum adds, from +0 and second by second, each second's
 * sum, itself added server by server (points, then summaries) from +0 — the order in which
 * core/query/eval.ts adds a row's values, so either path gives the same double.
 */
export interface RowAggregates {
  /** Seconds per span: 5 (version 4), or 1 (version 3, and blocks not a multiple of 5 s). */
  span: number;
  /** First second of each span with at least one entry, ascending; the columns below are indexed alike. */
  secs: Uint16Array;
  count: Float64Array;
  sum: Float64Array;
  min: Float64Array;
  max: Float64Array;
}

/** The aggregates of a row's entries (all of its servers) per `span` seconds, or null when it has none. */
export function rowAggregates(x: DecodedRow, span = aggregateSpanOf(x.blockSeconds)): RowAggregates | null {
  if (x.entries !== 'values' || x.serversOmitted !== 0) throw new Error('BUG: aggregates of a partly decoded row');
  const S = x.blockSeconds;
  const has = new Uint8Array(S);
  const count = new Float64Array(S);
  const sum = new Float64Array(S);
  const min = new Float64Array(S).fill(Infinity);
  const max = new Float64Array(S).fill(-Infinity);
  const d = x.dist;
  for (let j = 0; j < x.serverIds.length; j++) {
    for (let i = x.pointStart[j]!; i < x.pointStart[j + 1]!; i++) {
      const s = x.pointSecs[i]!;
      const v = x.pointVals[i]!;
      has[s] = 1;
      count[s]! += 1;
      sum[s]! += v;
      if (v < min[s]!) min[s] = v;
      if (v > max[s]!) max[s] = v;
    }
    for (let i = x.distStart[j]!; i < x.distStart[j + 1]!; i++) {
      const s = d.secs[i]!;
      has[s] = 1;
      count[s]! += d.count[i]!;
      sum[s]! += d.sum[i]!;
      if (d.min[i]! < min[s]!) min[s] = d.min[i]!;
      if (d.max[i]! > max[s]!) max[s] = d.max[i]!;
    }
  }
  if (!(span >= 1 && S % span === 0)) throw new Error(`BUG: aggregates per ${span} s of a block of ${S} s`);
  let k = 0;
  for (let s0 = 0; s0 < S; s0 += span) {
    let any = 0;
    for (let s = s0; s < s0 + span; s++) any |= has[s]!;
    k += any;
  }
  if (k === 0) return null;
  const a: RowAggregates = { span, secs: new Uint16Array(k), count: new Float64Array(k), sum: new Float64Array(k), min: new Float64Array(k), max: new Float64Array(k) };
  k = 0;
  for (let s0 = 0; s0 < S; s0 += span) {
    let any = false;
    let c = 0;
    let total = 0;
    let lo = Infinity;
    let hi = -Infinity;
    for (let s = s0; s < s0 + span; s++) {
      if (has[s] === 0) continue;
      any = true;
      c += count[s]!;
      total += sum[s]!;
      if (min[s]! < lo) lo = min[s]!;
      if (max[s]! > hi) hi = max[s]!;
    }
    if (!any) continue;
    a.secs[k] = s0;
    a.count[k] = c;
    a.sum[k] = total;
    a.min[k] = lo;
    a.max[k++] = hi;
  }
  return a;
}

function writeAggregates(w: ByteWriter, a: RowAggregates, blockSeconds: number): void {
  const k = a.secs.length;
  w.u8(a.span);
  const spans = new Uint16Array(k);
  for (let i = 0; i < k; i++) spans[i] = a.secs[i]! / a.span;
  writePresence(w, spans, 0, k, blockSeconds / a.span);
  let same = true;
  for (let i = 1; i < k && same; i++) same = a.count[i] === a.count[0];
  if (same) {
    w.u8(0);
    w.varint(a.count[0]!);
  } else {
    w.u8(1);
    writeSeries(w, a.count, 0, k);
  }
  writeSeries(w, a.min, 0, k);
  writeSeries(w, a.max, 0, k);
  writeSums(w, a.sum, k);
}

// Sums of decimals are rarely decimals themselves (0.1 + 0.2), and as doubles they cost the
// codec ~5 B each: they are stored as the nearest decimal of some exponent (which packs like
// the values) plus their distance from it in units in the last place (a few), with the odd sum
// far from any decimal (a cancellation near 0) kept raw. Exact: the bits come back.
const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);
f64[0] = 1;
if (u32[1] !== 0x3ff00000) throw new Error('BUG: row sums assume a little-endian platform');
/** Ulps a sum may lie from its decimal before it is kept raw. */
const ulpsMax = 4096;

/** The distance in ulps from d to v (same sign, both finite), or NaN when it is not small. */
function ulpsFrom(d: number, v: number): number {
  if (!Number.isFinite(v) || !Number.isFinite(d)) return NaN;
  f64[0] = d;
  const dl = u32[0]!;
  const dh = u32[1]!;
  f64[0] = v;
  const vl = u32[0]!;
  const vh = u32[1]!;
  if (((dh ^ vh) & 0x80000000) !== 0) return NaN;
  const diff = (vh - dh) * 4294967296 + (vl - dl);
  return Math.abs(diff) <= ulpsMax ? diff : NaN;
}

/** d moved by `ulps` units in the last place (ulpsFrom's inverse). */
function addUlps(d: number, ulps: number): number {
  f64[0] = d;
  const lo = u32[0]! + ulps;
  const carry = Math.floor(lo / 4294967296);
  u32[0] = lo - carry * 4294967296;
  u32[1] = u32[1]! + carry;
  return f64[0];
}

function writeSums(w: ByteWriter, sums: Float64Array, k: number): void {
  const dec = new Float64Array(k);
  const ulps = new Float64Array(k);
  const raw: number[] = [];
  for (let e = 0; e <= 9; e++) {
    const scale = 10 ** e;
    raw.length = 0;
    for (let i = 0; i < k && raw.length <= k / 4; i++) {
      const v = sums[i]!;
      const d = Math.round(v * scale) / scale;
      const u = ulpsFrom(d, v);
      if (Number.isNaN(u)) {
        raw.push(i);
        dec[i] = i === 0 ? 0 : dec[i - 1]!;
        ulps[i] = 0;
      } else {
        dec[i] = d;
        ulps[i] = u;
      }
    }
    if (raw.length > k / 4) continue;
    w.u8(1);
    w.varint(raw.length);
    for (const i of raw) {
      w.varint(i);
      w.f64(sums[i]!);
    }
    writeSeries(w, dec, 0, k);
    writeSeries(w, ulps, 0, k);
    return;
  }
  w.u8(0);
  writeSeries(w, sums, 0, k);
}

function readSums(r: ByteReader, out: Float64Array, k: number): void {
  const mode = r.u8();
  if (mode === 0) return readSeries(r, out, 0, k);
  if (mode !== 1) throw new RowError(`aggregate sum mode ${mode}`);
  const rawN = r.varint();
  if (rawN > k) throw new RowError(`${rawN} raw sums of ${k}`);
  const rawAt = new Int32Array(rawN);
  const rawVal = new Float64Array(rawN);
  for (let j = 0; j < rawN; j++) {
    rawAt[j] = r.varint();
    rawVal[j] = r.f64();
    if (rawAt[j]! >= k) throw new RowError(`raw sum at ${rawAt[j]} of ${k}`);
  }
  readSeries(r, out, 0, k);
  const ulps = new Float64Array(k);
  readSeries(r, ulps, 0, k);
  for (let i = 0; i < k; i++) {
    const u = ulps[i]!;
    if (!(Math.abs(u) <= ulpsMax) || !Number.isInteger(u)) throw new RowError(`sum ${i} is ${u} ulps from its decimal`);
    if (u !== 0) out[i] = addUlps(out[i]!, u);
  }
  for (let j = 0; j < rawN; j++) out[rawAt[j]!] = rawVal[j]!;
}

/** A row's aggregates: per second (version 3), or per the span its first byte gives (version 4). */
function readAggregates(r: ByteReader, blockSeconds: number, v4: boolean): RowAggregates {
  // Only the span the evaluator groups by (aggregateSpanOf): another would answer sums added in another order.
  const span = v4 ? r.u8() : 1;
  if (v4 && span !== aggregateSpanOf(blockSeconds)) throw new RowError(`aggregates per ${span} s in a block of ${blockSeconds} s`);
  const secs = new Uint16Array(blockSeconds / span);
  const k = readPresence(r, blockSeconds / span, secs, 0);
  for (let i = 0; i < k; i++) secs[i] = secs[i]! * span;
  const a: RowAggregates = { span, secs: secs.subarray(0, k), count: new Float64Array(k), sum: new Float64Array(k), min: new Float64Array(k), max: new Float64Array(k) };
  const mode = r.u8();
  if (mode === 0) a.count.fill(r.varint());
  else if (mode === 1) readSeries(r, a.count, 0, k);
  else throw new RowError(`aggregate count mode ${mode}`);
  readSeries(r, a.min, 0, k);
  readSeries(r, a.max, 0, k);
  readSums(r, a.sum, k);
  return a;
}

/** What one row holds, as the store assembles it: a row's columns plus the rollup range to write. */
export interface RowInput extends DecodedRow {
  /** Rollup entries [rollupFrom, rollupTo) of rollup, one per second. */
  rollupFrom: number;
  rollupTo: number;
}

const scratch = new ByteWriter();
const segments = new ByteWriter();
const section = new ByteWriter();

/** Segment flags (versions 3 and 4): points, summaries, and which of them are there every second. */
const segPoints = 1;
const segSummaries = 2;
const segPointsAll = 4;
const segSummariesAll = 8;
/** Layouts (versions 3 and 4): segments with their flags, or dense (values' series alone). */
const layoutFlagged = 0;
const layoutDense = 1;

/** Whether every server of x has a point at every second and none has summaries. */
function isDense(x: RowInput): boolean {
  const n = x.serverIds.length;
  if (n === 0 || x.distStart[n] !== x.distStart[0]) return false;
  for (let j = 0; j < n; j++) if (x.pointStart[j + 1]! - x.pointStart[j]! !== x.blockSeconds) return false;
  return true;
}

/** One server's segment (versions 3 and 4): its values' series alone when dense, else flags, bitmaps and entries. */
function writeSegment(seg: ByteWriter, x: RowInput, j: number, dense: boolean, habit: SeriesHabit | null): void {
  const p0 = x.pointStart[j]!;
  const p1 = x.pointStart[j + 1]!;
  if (dense) {
    writeSeries(seg, x.pointVals, p0, p1, habit);
    return;
  }
  const d0 = x.distStart[j]!;
  const d1 = x.distStart[j + 1]!;
  const S = x.blockSeconds;
  seg.u8((p1 > p0 ? segPoints : 0) | (d1 > d0 ? segSummaries : 0) | (p1 - p0 === S ? segPointsAll : 0) | (d1 - d0 === S ? segSummariesAll : 0));
  if (p1 > p0) {
    if (p1 - p0 !== S) writeBitmap(seg, x.pointSecs, p0, p1, S);
    writeSeries(seg, x.pointVals, p0, p1, habit);
  }
  if (d1 > d0) {
    if (d1 - d0 !== S) writeBitmap(seg, x.dist.secs, d0, d1, S);
    writeSummaryEntries(seg, x.dist, d0, d1);
  }
}

const idsScratch = { f64: new Float64Array(256) };

/** Encodes one row (version 5; see the top of this file). The input must be a whole row with values. */
export function encodeRow(x: RowInput): Uint8Array {
  if (x.entries !== 'values' || x.serversOmitted !== 0) throw new Error('BUG: encoding a partly decoded row');
  const w = scratch;
  w.reset();
  w.u8(rowV5Marker);
  w.u8(x.kind);
  w.u8(x.blockSeconds);
  const n = x.serverIds.length;
  w.varint(n);
  if (idsScratch.f64.length < n) idsScratch.f64 = new Float64Array(2 * n);
  const f = idsScratch.f64;
  for (let j = 0; j < n; j++) {
    const id = x.serverIds[j]!;
    if (j > 0 && id <= x.serverIds[j - 1]!) throw new Error(`BUG: row servers not ascending (${id} after ${x.serverIds[j - 1]})`);
    f[j] = id;
  }
  writeSeries(w, f, 0, n);
  const dense = isDense(x);
  let habit: SeriesHabit | null = null;
  for (let j = 0; j < n && habit === null; j++) if (x.pointStart[j + 1]! > x.pointStart[j]!) habit = seriesHabit(x.pointVals, x.pointStart[j]!, x.pointStart[j + 1]!);
  const seg = segments;
  seg.reset();
  for (let j = 0; j < n; j++) {
    const at = seg.pos;
    writeSegment(seg, x, j, dense, habit);
    f[j] = seg.pos - at;
  }
  writeSeries(w, f, 0, n);
  w.u8(dense ? layoutDense : layoutFlagged);
  if (habit === null) w.u8(0);
  else {
    w.u8(1);
    w.u8((habit.mode << 4) | habit.e);
    w.u8((habit.coder << 6) | habit.param);
  }
  const a = n >= aggregatesServersMin ? rowAggregates(x) : null;
  section.reset();
  if (a !== null) writeAggregates(section, a, x.blockSeconds);
  w.varint(section.pos);
  w.bytes(section.buf, 0, section.pos);
  section.reset();
  if (x.rollupTo > x.rollupFrom) writeSummaries(section, x.rollup, x.rollupFrom, x.rollupTo, x.blockSeconds);
  w.varint(section.pos);
  w.bytes(section.buf, 0, section.pos);
  w.bytes(seg.buf, 0, seg.pos);
  const crc = crc32(w.buf.subarray(0, w.pos));
  for (let k = 0; k < rowCrcBytes; k++) w.u8((crc >>> (8 * k)) & 0xff);
  return w.buf.slice(0, w.pos);
}

/** A row's columns (entries grouped by server, seconds ascending), as decoded or as built. */
export interface DecodedRow {
  kind: number;
  blockSeconds: number;
  /** The servers decoded, ascending (all of the row's unless a decode asked for some). */
  serverIds: Uint32Array;
  /** Servers of the row left out by the decode's `servers` test (0: serverIds is the whole row). */
  serversOmitted: number;
  /**
   * 'seconds': only the seconds of entries were decoded (pointSecs, dist.secs); pointVals is
   * empty and dist's other columns are zero — `aggregates` answers for the whole row.
   */
  entries: 'values' | 'seconds';
  /** Aggregates per span over all the row's servers (rowAggregates), or null (small or version 1 rows, or a subset decoded). */
  aggregates: RowAggregates | null;
  /** Point entries of server j: [pointStart[j], pointStart[j + 1]) of pointSecs/pointVals. */
  pointStart: Int32Array;
  pointSecs: Uint16Array;
  pointVals: Float64Array;
  /** Distribution entries of server j: [distStart[j], distStart[j + 1]) of dist. */
  distStart: Int32Array;
  dist: SummaryColumns;
  /** Rack rollup per second (distributions only; like aggregates, absent when a subset was decoded). */
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
  readSummaryEntries(r, c, at, n);
  return n;
}

/** n summaries' entries into c from `at` (their seconds are read already). */
function readSummaryEntries(r: ByteReader, c: SummaryColumns, at: number, n: number): void {
  for (let i = at; i < at + n; i++) {
    c.count[i] = r.varint();
    c.sum[i] = r.f64();
    c.min[i] = r.f64();
    c.max[i] = r.f64();
    const len = r.varint();
    c.sketchStart[i] = r.skip(len);
    c.sketchEnd[i] = c.sketchStart[i]! + len;
  }
}

/** Zeroes entries [from, to) but their seconds (a row of seconds only, decoded into reused columns, reads as a new one). */
function clearSummaryEntries(c: SummaryColumns, from: number, to: number): void {
  c.count.fill(0, from, to);
  c.sum.fill(0, from, to);
  c.min.fill(0, from, to);
  c.max.fill(0, from, to);
  c.sketchStart.fill(0, from, to);
  c.sketchEnd.fill(0, from, to);
}

/** What to decode of a row (decodeRow). */
export interface RowDecodeOptions {
  /** Decode the entries of the servers marked 1 here (by id; beyond its length: not) only; the others are left out (serversOmitted counts them). */
  servers?: Uint8Array;
  /**
   * The reader's window in seconds, when its aggregates may answer: a row with aggregates whose
   * span divides it, and no server left out, is decoded for the seconds of entries only
   * (entries: 'seconds').
   */
  secondsOnlyFor?: number;
  /**
   * Columns to decode into, reused row after row (a reader that is done with a row before it
   * decodes the next: Store.read). Without it every column is a new array — on this VM an
   * array of more than 64 B has a backing store of its own and cost ~1 µs, which was a third of
   * a 40-server query's row (issue 14, tenth session).
   */
  scratch?: RowScratch;
  /**
   * Where this row's header (server ids, directory, layout, offsets) is kept once read: a reader
   * that reads the same stored row again (core/rowdirectory.ts) passes the same slot and the
   * header is not read again. Only for bytes that never change while the slot is kept.
   */
  header?: HeaderSlot;
  /**
   * These very bytes (not the same row read again from LMDB) passed their CRC-32 at an earlier
   * decode: a version 5 row's CRC is not computed again (a reader keeping a row's bytes in memory
   * with its header, core/rowdirectory.ts). Bytes read again from the disk are checked again.
   */
  checked?: boolean;
}

/** A version 2–5 row's header as decodeDirected reads it before any server's segment. */
export interface RowHeader {
  v3: boolean;
  v4: boolean;
  kind: number;
  blockSeconds: number;
  /** Servers in the row. */
  n: number;
  /** Server ids, ascending ([0, n): a scratch array may be longer). */
  ids: Uint32Array;
  /** Each server's segment end, from the first segment's start ([0, n)). */
  ends: Int32Array;
  layout: SegmentLayout;
  habit: SeriesHabit | null;
  aggAt: number;
  aggLen: number;
  rollAt: number;
  rollLen: number;
  /** Where the first segment starts. */
  segAt: number;
}

/** Holds a row's header between reads (RowDecodeOptions.header). */
export interface HeaderSlot {
  header: RowHeader | null;
}

/** Bytes a kept header costs (its arrays and fields), for a bound on the headers kept. */
export function headerBytes(h: RowHeader): number {
  // Its two typed arrays (each with storage of its own) and the object: measured ~870 B at 40 servers.
  return 8 * h.n + 550;
}

/**
 * Reused columns of decodeRow (RowDecodeOptions.scratch): grown to the largest row decoded,
 * never shrunk (bounded by the largest row: servers × block seconds entries). A row decoded into
 * them is overwritten by the next decode with the same scratch.
 */
export class RowScratch {
  ids = new Uint32Array(64);
  pointStart = new Int32Array(65);
  distStart = new Int32Array(65);
  pointSecs = new Uint16Array(4096);
  pointVals = new Float64Array(4096);
  dist: SummaryColumns = summaryColumns(0);

  /**
   * The last view given of each column, by its length: a row's columns are views of these, and
   * the rows of one read mostly repeat their lengths (a server or two of each rack, or whole
   * racks), so a view is made once per length change, not five per row (~30 ns each: a tenth
   * of a row's decode when it holds one server).
   */
  private idsV = this.ids.subarray(0, 0);
  private pointStartV = this.pointStart.subarray(0, 0);
  private distStartV = this.distStart.subarray(0, 0);
  private pointSecsV = this.pointSecs.subarray(0, 0);
  private pointValsV = this.pointVals.subarray(0, 0);

  /** Room for k servers and `cap` entries. */
  fit(k: number, cap: number): void {
    if (this.ids.length < k) {
      this.ids = new Uint32Array(2 * k);
      this.pointStart = new Int32Array(2 * k + 1);
      this.distStart = new Int32Array(2 * k + 1);
      this.idsV = this.ids.subarray(0, 0);
      this.pointStartV = this.pointStart.subarray(0, 0);
      this.distStartV = this.distStart.subarray(0, 0);
    }
    if (this.pointSecs.length < cap) {
      this.pointSecs = new Uint16Array(2 * cap);
      this.pointVals = new Float64Array(2 * cap);
      this.pointSecsV = this.pointSecs.subarray(0, 0);
      this.pointValsV = this.pointVals.subarray(0, 0);
    }
  }

  /** ids[0, n) (within what fit made room for). */
  idsOf(n: number): Uint32Array {
    return this.idsV.length === n ? this.idsV : (this.idsV = this.ids.subarray(0, n));
  }

  pointStartOf(n: number): Int32Array {
    return this.pointStartV.length === n ? this.pointStartV : (this.pointStartV = this.pointStart.subarray(0, n));
  }

  distStartOf(n: number): Int32Array {
    return this.distStartV.length === n ? this.distStartV : (this.distStartV = this.distStart.subarray(0, n));
  }

  pointSecsOf(n: number): Uint16Array {
    return this.pointSecsV.length === n ? this.pointSecsV : (this.pointSecsV = this.pointSecs.subarray(0, n));
  }

  pointValsOf(n: number): Float64Array {
    return this.pointValsV.length === n ? this.pointValsV : (this.pointValsV = this.pointVals.subarray(0, n));
  }

  /** Summary columns for `cap` entries whose sketches are in `src`. */
  summaries(cap: number, src: Uint8Array): SummaryColumns {
    if (this.dist.secs.length < cap) this.dist = summaryColumns(2 * cap);
    this.dist.sketchSrc.fill(src, 0, cap);
    return this.dist;
  }
}

/** What a reader of a metric's rows needs of them (Store.read): which servers, and caching. */
export interface RowReadOptions {
  /** The servers whose entries are needed, marked 1 by id (absent: all). Rows may hold more. */
  servers?: Uint8Array;
  /** Racks whose rows are needed whole whatever `servers` says (`rack:` selectors). */
  wholeRack?: (rackId: number) => boolean;
  /** Only rows of rack ids in [from, to) (an export's chunk of a large block); others are not read. */
  racks?: { from: number; to: number };
  /** Rows whose aggregates answer windows of this many seconds may come with the seconds of entries only (see RowDecodeOptions). */
  secondsOnlyFor?: number;
  /** Keep whole decoded rows in the store's row cache and use them (stored queries re-read blocks). */
  cache?: boolean;
  /**
   * Called for every block and every stored row key the read passes, visited or not (a reader's
   * time budget: rows holding none of the servers asked for, and blocks without rows, cost time
   * the visitor never sees). May throw to stop the read.
   */
  tick?: () => void;
}

/**
 * Decodes a stored row (version 1 to 5); throws RowError when it is malformed or its CRC does not
 * match. With options, a version 2 to 5 row is read only where they need (the directory locates
 * each server's bytes).
 */
export function decodeRow(stored: Uint8Array, opts: RowDecodeOptions = {}): DecodedRow {
  if (isDirected(stored[0])) {
    const body = rowBody(stored, opts.checked === true);
    try {
      return decodeDirected(body, opts);
    } catch (err) {
      if (err instanceof ValueCodecError) throw new RowError(`row values do not decode: ${err.message}`, { cause: err });
      throw err;
    }
  }
  const row = decodeV1(stored);
  const keep = opts.servers;
  return keep === undefined ? row : selectServers(row, (sid) => sid < keep.length && keep[sid] === 1);
}

const noValues = new Float64Array(0);
const emptySummaries: SummaryColumns = summaryColumns(0);
/** A row decoded for none of its servers (kind, blockSeconds and serversOmitted set per row). */
const noServers: DecodedRow = Object.freeze({
  kind: 0,
  blockSeconds: 0,
  serverIds: new Uint32Array(0),
  serversOmitted: 0,
  entries: 'values',
  aggregates: null,
  pointStart: new Int32Array(1),
  pointSecs: new Uint16Array(0),
  pointVals: noValues,
  distStart: new Int32Array(1),
  dist: emptySummaries,
  rollup: emptySummaries,
});
/** Values of a segment read only to pass over them (secondsOnly on a row holding points and summaries). */
let passOver = new Float64Array(256);
/** Scratch of decodeDirected: segment ends, which servers are picked, ids and lengths as the codec gives them (no allocation per row for them). */
let endsScratch = new Int32Array(1024);
let rowIdsScratch = new Uint32Array(1024);

/**
 * Every scratch array of a row's servers to at least n, each checked on its own (regression: one
 * grown without another — rowServerIds grew all but the ids — decoded the servers past the
 * 1,024th of a later row as id 0).
 */
function growScratch(n: number): void {
  if (endsScratch.length < n) endsScratch = new Int32Array(2 * n);
  if (rowIdsScratch.length < n) rowIdsScratch = new Uint32Array(2 * n);
  if (pickedScratch.length < n) pickedScratch = new Int32Array(2 * n);
  if (f64Scratch.length < n) f64Scratch = new Float64Array(2 * n);
}
let pickedScratch = new Int32Array(1024);
let f64Scratch = new Float64Array(1024);

/** Server ids (v2: varint deltas; v3: a series) into ends[0 .. n), checked ascending u32. */
function readIds(r: ByteReader, v3: boolean, n: number, ends: Int32Array): void {
  let prev = -1;
  if (v3) readSeries(r, f64Scratch, 0, n);
  for (let j = 0; j < n; j++) {
    const id = v3 ? f64Scratch[j]! : (prev < 0 ? 0 : prev) + r.varint();
    if (!Number.isInteger(id) || id > 0xffffffff || id <= prev) throw new RowError(`server id ${id} after ${prev} in a row`);
    ends[j] = id;
    prev = id;
  }
}

/** The directory (v2: varints; v3: a series) as segment ends into ends[0 .. n); returns their total. */
function readDirectory(r: ByteReader, v3: boolean, n: number, ends: Int32Array, rowBytes: number): number {
  if (v3) readSeries(r, f64Scratch, 0, n);
  let total = 0;
  for (let j = 0; j < n; j++) {
    const len = v3 ? f64Scratch[j]! : r.varint();
    if (!Number.isInteger(len) || len < 0 || (total += len) > rowBytes) throw new RowError(`directory entry ${j} is ${len} B in a row of ${rowBytes}`);
    ends[j] = total;
  }
  return total;
}

/** Where decoded entries go (decodeDirected's columns and their fill). */
interface SegmentOut {
  pointSecs: Uint16Array;
  pointVals: Float64Array;
  p: number;
  dist: SummaryColumns | null;
  d: number;
  cap: number;
  /** Where summary columns come from (else new arrays). */
  scratch: RowScratch | undefined;
}

type SegmentLayout = 'v2' | 'flagged' | 'dense';

/** The seconds of a segment's part: v2 a presence byte first; v3 every second when the flag `all` says so, else a bitmap. */
function partSeconds(r: ByteReader, layout: SegmentLayout, all: boolean, blockSeconds: number, out: Uint16Array, at: number): number {
  if (layout === 'v2') return readPresence(r, blockSeconds, out, at);
  return all ? readEverySecond(blockSeconds, out, at) : readBitmap(r, blockSeconds, out, at);
}

/** Reads one server's segment [r.pos, to) into o: version 2, or 3/4 flagged or dense; `secondsOnly` leaves values out. */
function readSegment(r: ByteReader, layout: SegmentLayout, o: SegmentOut, to: number, blockSeconds: number, secondsOnly: boolean, habit: SeriesHabit | null): void {
  if (layout === 'dense') {
    readEverySecond(blockSeconds, o.pointSecs, o.p);
    if (!secondsOnly) {
      readSeries(r, o.pointVals, o.p, blockSeconds, habit);
      if (r.pos !== to) throw new RowError(`dense segment ends at ${r.pos}, its directory entry at ${to}`);
    }
    o.p += blockSeconds;
    return;
  }
  const flags = r.u8();
  if (layout === 'v2' ? flags > 3 : flags > 15 || (flags & segPointsAll && !(flags & segPoints)) || (flags & segSummariesAll && !(flags & segSummaries))) throw new RowError(`segment flags ${flags}`);
  if ((flags & segPoints) !== 0) {
    const m = partSeconds(r, layout, (flags & segPointsAll) !== 0, blockSeconds, o.pointSecs, o.p);
    if (!secondsOnly) readSeries(r, o.pointVals, o.p, m, habit);
    else if ((flags & segSummaries) !== 0) {
      if (passOver.length < m) passOver = new Float64Array(blockSeconds);
      readSeries(r, passOver, 0, m, habit);
    }
    o.p += m;
  }
  if ((flags & segSummaries) !== 0) {
    const dist = (o.dist ??= o.scratch === undefined ? summaryColumns(o.cap, r.buf) : o.scratch.summaries(o.cap, r.buf));
    const m = partSeconds(r, layout, (flags & segSummariesAll) !== 0, blockSeconds, dist.secs, o.d);
    if (!secondsOnly) readSummaryEntries(r, dist, o.d, m);
    else if (o.scratch !== undefined) clearSummaryEntries(dist, o.d, o.d + m);
    o.d += m;
  }
  if (secondsOnly ? r.pos > to : r.pos !== to) throw new RowError(`segment ends at ${r.pos}, its directory entry at ${to}`);
}

/** A version 4 row's habit byte(s): the values' series' habit, or null (none). */
function readHabit(r: ByteReader): SeriesHabit | null {
  const flag = r.u8();
  if (flag === 0) return null;
  if (flag !== 1) throw new RowError(`row habit flag ${flag}`);
  const a = r.u8();
  const b = r.u8();
  const habit = checkedHabit({ mode: a >> 4, e: a & 15, coder: b >> 6, param: b & 63 });
  if (habit === null) throw new RowError(`row habit ${a}, ${b} out of range`);
  return habit;
}

/**
 * A version 2–5 row's header. Into the module's scratch arrays (valid until the next read), or,
 * with `own`, into arrays of its own (a header kept in a HeaderSlot).
 */
function readHeader(stored: Uint8Array, own: boolean): RowHeader {
  // v3: version 3 to 5 (ids and directory as series, a layout byte); v4: version 4 or 5 (aggregates with a span).
  const v3 = stored[0] !== rowV2Marker;
  const v4 = isV4Layout(stored[0]);
  const r = new ByteReader(stored);
  r.u8();
  const kind = r.u8();
  const blockSeconds = r.u8();
  const n = r.varint();
  if (n > stored.length) throw new RowError(`${n} servers in a row of ${stored.length} bytes`);
  growScratch(n);
  const ids = own ? new Uint32Array(n) : rowIdsScratch;
  const ends = own ? new Int32Array(n) : endsScratch;
  readIds(r, v3, n, ends);
  for (let j = 0; j < n; j++) ids[j] = ends[j]!;
  const total = readDirectory(r, v3, n, ends, stored.length);
  let layout: SegmentLayout = 'v2';
  if (v3) {
    const l = r.u8();
    if (l !== layoutFlagged && l !== layoutDense) throw new RowError(`row layout ${l}`);
    layout = l === layoutDense ? 'dense' : 'flagged';
  }
  const habit = v4 ? readHabit(r) : null;
  const aggLen = r.varint();
  const aggAt = r.skip(aggLen);
  const rollLen = r.varint();
  const rollAt = r.skip(rollLen);
  const segAt = r.pos;
  if (segAt + total !== stored.length) throw new RowError(`row directory says ${total} segment bytes, the row has ${stored.length - segAt}`);
  return { v3, v4, kind, blockSeconds, n, ids, ends, layout, habit, aggAt, aggLen, rollAt, rollLen, segAt };
}

/** Decodes a version 2 to 5 row (its CRC trailer already taken off, see the top of this file), only where `opts` needs. */
function decodeDirected(stored: Uint8Array, opts: RowDecodeOptions): DecodedRow {
  const slot = opts.header;
  let h = slot?.header ?? null;
  if (h === null) {
    h = readHeader(stored, slot !== undefined);
    if (slot !== undefined) slot.header = h;
  }
  const { v4, kind, blockSeconds, n, ends, layout, habit, aggAt, aggLen, rollAt, rollLen, segAt } = h;
  const keep = opts.servers;
  growScratch(n);
  // Which servers are picked: their indices in the row, ascending.
  const picked = pickedScratch;
  const rowIds = h.ids;
  let k = 0;
  if (keep === undefined) for (; k < n; k++) picked[k] = k;
  else {
    const marked = keep.length;
    for (let j = 0; j < n; j++) {
      const id = rowIds[j]!;
      if (id < marked && keep[id] === 1) picked[k++] = j;
    }
  }
  // None of its servers asked for (most rows of a query over a few servers): nothing more to read.
  if (k === 0 && n > 0) {
    // A literal, not a spread of noServers: spreading a frozen object cost ~130 ns, a tenth of a
    // one-server query (240 of its 250 rows come here).
    const z = noServers;
    return { kind, blockSeconds, serverIds: z.serverIds, serversOmitted: n, entries: 'values', aggregates: null, pointStart: z.pointStart, pointSecs: z.pointSecs, pointVals: z.pointVals, distStart: z.distStart, dist: z.dist, rollup: z.rollup };
  }
  const scratch = opts.scratch;
  scratch?.fit(k, k * blockSeconds);
  const ids = scratch === undefined ? new Uint32Array(k) : scratch.idsOf(k);
  for (let x = 0; x < k; x++) ids[x] = rowIds[picked[x]!]!;
  const r = new ByteReader(stored);
  // Aggregates and the rollup describe the whole row: a subset's reader has no use for them.
  let aggregates: RowAggregates | null = null;
  if (aggLen > 0 && k === n) {
    r.pos = aggAt;
    aggregates = readAggregates(r, blockSeconds, v4);
    if (r.pos !== aggAt + aggLen) throw new RowError(`aggregates end at ${r.pos}, not ${aggAt + aggLen}`);
  }
  let rollup = emptySummaries;
  if (rollLen > 0 && k === n) {
    r.pos = rollAt;
    rollup = summaryColumns(blockSeconds, stored);
    const rolled = readSummaries(r, rollup, 0, blockSeconds);
    if (r.pos !== rollAt + rollLen) throw new RowError(`rollup ends at ${r.pos}, not ${rollAt + rollLen}`);
    rollup = trimSummaries(rollup, rolled);
  }
  const secondsOnly = opts.secondsOnlyFor !== undefined && aggregates !== null && k === n && opts.secondsOnlyFor % aggregates.span === 0;
  const cap = k * blockSeconds;
  const pointStart = scratch === undefined ? new Int32Array(k + 1) : scratch.pointStartOf(k + 1);
  const distStart = scratch === undefined ? new Int32Array(k + 1) : scratch.distStartOf(k + 1).fill(0);
  if (secondsOnly && layout === 'dense') {
    // Every server has every second and nothing else: the seconds are known without reading a
    // segment (a whole-fleet min/max/avg reads only aggregates and these).
    for (let j = 0; j <= k; j++) pointStart[j] = j * blockSeconds;
    return { kind, blockSeconds, serverIds: ids, serversOmitted: 0, entries: 'seconds', aggregates, pointStart, pointSecs: everySecondRepeated(k, blockSeconds), pointVals: noValues, distStart, dist: emptySummaries, rollup };
  }
  const o: SegmentOut = {
    pointSecs: scratch === undefined ? new Uint16Array(cap) : scratch.pointSecs,
    pointVals: secondsOnly ? noValues : scratch === undefined ? new Float64Array(cap) : scratch.pointVals,
    p: 0,
    dist: null,
    d: 0,
    cap,
    scratch,
  };
  for (let x = 0; x < k; x++) {
    const j = picked[x]!;
    pointStart[x] = o.p;
    distStart[x] = o.d;
    r.pos = segAt + (j === 0 ? 0 : ends[j - 1]!);
    readSegment(r, layout, o, segAt + ends[j]!, blockSeconds, secondsOnly, habit);
  }
  pointStart[k] = o.p;
  distStart[k] = o.d;
  return {
    kind,
    blockSeconds,
    serverIds: ids,
    serversOmitted: n - k,
    entries: secondsOnly ? 'seconds' : 'values',
    aggregates,
    pointStart,
    pointSecs: scratch === undefined ? o.pointSecs.subarray(0, o.p) : scratch.pointSecsOf(o.p),
    pointVals: secondsOnly ? noValues : scratch === undefined ? o.pointVals.subarray(0, o.p) : scratch.pointValsOf(o.p),
    distStart,
    dist: o.dist === null ? emptySummaries : trimSummaries(o.dist, o.d),
    rollup,
  };
}

/** Largest inflated version-1 row taken (1,024 servers × 60 s of summaries fit well within). */
const rowV1BytesMax = 32 * 1024 * 1024;

/** Version 1: inflate, then every server's entries inline. */
function decodeV1(stored: Uint8Array): DecodedRow {
  let raw: Uint8Array;
  try {
    // Bounded: a corrupt row whose first byte fell here inflated 65 KB into 64 MiB before it
    // was refused (a legit version-1 row is a rack's block: well under this).
    raw = inflateRawSync(stored, { maxOutputLength: rowV1BytesMax });
  } catch (cause) {
    throw new RowError('row does not inflate (or inflates past the bound of a row)', { cause });
  }
  const r = new ByteReader(raw);
  if (r.u8() !== rowV1Version) throw new RowError('unknown row version');
  const kind = r.u8();
  const blockSeconds = r.u8();
  const n = r.varint();
  // Each server takes at least an id byte and a presence byte: a count past that is corrupt
  // (1,000,000 servers in 2.9 KB allocated 2.6 GB of columns).
  if (n > 1_000_000 || n > raw.length / 2) throw new RowError(`${n} servers in a row of ${raw.length} bytes`);
  const serverIds = new Uint32Array(n);
  let prev = 0;
  for (let j = 0; j < n; j++) {
    const step = r.varint();
    if ((j > 0 && step === 0) || prev + step > 0xffffffff) throw new RowError(`server ids of a row are not ascending 32-bit ids (server ${j})`);
    serverIds[j] = prev += step;
  }
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
  return {
    kind,
    blockSeconds,
    serverIds,
    serversOmitted: 0,
    entries: 'values',
    aggregates: null,
    pointStart,
    pointSecs: pointSecs.subarray(0, p),
    pointVals: pointVals.subarray(0, p),
    distStart,
    dist: trimSummaries(dist ?? summaryColumns(0, raw), d),
    rollup: trimSummaries(rollup, rolled),
  };
}

/** The servers of a whole decoded row that pass `keep` (copies; serversOmitted counts the rest; without aggregates and rollup). */
export function selectServers(row: DecodedRow, keep: (serverId: number) => boolean): DecodedRow {
  const js: number[] = [];
  for (let j = 0; j < row.serverIds.length; j++) if (keep(row.serverIds[j]!)) js.push(j);
  if (js.length === row.serverIds.length) return row;
  const serversOmitted = row.serversOmitted + row.serverIds.length - js.length;
  return { ...row, ...gatherServers(row, js), serverIds: Uint32Array.from(js, (j) => row.serverIds[j]!), serversOmitted, aggregates: null, rollup: emptySummaries };
}

/** The columns of servers `js` (indexes into the row, in this order) of a whole decoded row, copied. */
function gatherServers(row: DecodedRow, js: readonly number[]): Pick<DecodedRow, 'pointStart' | 'pointSecs' | 'pointVals' | 'distStart' | 'dist'> {
  let pn = 0;
  let dn = 0;
  for (const j of js) {
    pn += row.pointStart[j + 1]! - row.pointStart[j]!;
    dn += row.distStart[j + 1]! - row.distStart[j]!;
  }
  const pointStart = new Int32Array(js.length + 1);
  const distStart = new Int32Array(js.length + 1);
  const pointSecs = new Uint16Array(pn);
  const pointVals = new Float64Array(pn);
  const dist = summaryColumns(dn);
  let p = 0;
  let d = 0;
  js.forEach((j, o) => {
    pointStart[o] = p;
    distStart[o] = d;
    const p0 = row.pointStart[j]!;
    const p1 = row.pointStart[j + 1]!;
    pointSecs.set(row.pointSecs.subarray(p0, p1), p);
    pointVals.set(row.pointVals.subarray(p0, p1), p);
    p += p1 - p0;
    for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++, d++) {
      dist.secs[d] = row.dist.secs[i]!;
      dist.count[d] = row.dist.count[i]!;
      dist.sum[d] = row.dist.sum[i]!;
      dist.min[d] = row.dist.min[i]!;
      dist.max[d] = row.dist.max[i]!;
      dist.sketchSrc[d] = row.dist.sketchSrc[i]!;
      dist.sketchStart[d] = row.dist.sketchStart[i]!;
      dist.sketchEnd[d] = row.dist.sketchEnd[i]!;
    }
  });
  pointStart[js.length] = p;
  distStart[js.length] = d;
  return { pointStart, pointSecs, pointVals, distStart, dist };
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

/**
 * The server ids of a stored row (any version), ascending, without decoding its values when it
 * is version 2 (a shard snapshot names a row's servers: core/snapshot.ts). Throws RowError.
 */
export function rowServerIds(row: Uint8Array): Uint32Array {
  if (!isDirected(row[0])) return decodeV1(row).serverIds;
  const stored = rowBody(row);
  const r = new ByteReader(stored);
  r.skip(3);
  const n = r.varint();
  if (n > stored.length) throw new RowError(`${n} servers in a row of ${stored.length} bytes`);
  growScratch(n);
  try {
    readIds(r, stored[0] !== rowV2Marker, n, endsScratch);
  } catch (err) {
    if (err instanceof ValueCodecError) throw new RowError(`row server ids do not decode: ${err.message}`, { cause: err });
    throw err;
  }
  return Uint32Array.from(endsScratch.subarray(0, n));
}

/** Where a version 2 to 5 row's bytes go (tests, benches): the head (marker to habit: ids, directory), aggregates and rollup (each with its length), segments, and a version 5 row's CRC. Throws RowError. */
export function rowParts(row: Uint8Array): { head: number; aggregates: number; rollup: number; segments: number; crc: number } {
  if (!isDirected(row[0])) throw new RowError('not a version 2 to 5 row');
  const stored = rowBody(row);
  const v3 = stored[0] !== rowV2Marker;
  const r = new ByteReader(stored);
  r.skip(3);
  const n = r.varint();
  if (n > stored.length) throw new RowError(`${n} servers in a row of ${stored.length} bytes`);
  const ends = new Int32Array(n);
  if (f64Scratch.length < n) f64Scratch = new Float64Array(2 * n);
  readIds(r, v3, n, ends);
  const segments = readDirectory(r, v3, n, ends, stored.length);
  if (v3) r.u8();
  if (isV4Layout(stored[0])) readHabit(r);
  const head = r.pos;
  r.skip(r.varint());
  const aggregates = r.pos - head;
  r.skip(r.varint());
  const rollup = r.pos - head - aggregates;
  if (r.pos + segments !== stored.length) throw new RowError(`row directory says ${segments} segment bytes, the row has ${stored.length - r.pos}`);
  return { head, aggregates, rollup, segments, crc: row.length - stored.length };
}

/**
 * A whole decoded row with its servers renumbered by `idOf` (another store's ids: a shard restored
 * from another node, core/snapshot.ts) and put in ascending order of the new ids, as encodeRow
 * needs; a server `idOf` maps below 0 is left out (the target's registry is full). Entries are
 * copied (sketches still point into the row's bytes); aggregates are not carried: encodeRow
 * computes them again in the new server order, the order the evaluator then adds values in.
 */
export function renumberServers(row: DecodedRow, idOf: (serverId: number) => number): RowInput {
  if (row.entries !== 'values' || row.serversOmitted !== 0) throw new Error('BUG: renumbering a partly decoded row');
  const order: { j: number; id: number }[] = [];
  for (let j = 0; j < row.serverIds.length; j++) {
    const id = idOf(row.serverIds[j]!);
    if (id >= 0) order.push({ j, id });
  }
  order.sort((a, b) => a.id - b.id);
  for (let k = 1; k < order.length; k++) if (order[k]!.id === order[k - 1]!.id) throw new Error(`BUG: two servers of a row renumbered to ${order[k]!.id}`);
  return {
    ...row,
    ...gatherServers(row, order.map((o) => o.j)),
    serverIds: Uint32Array.from(order, (o) => o.id),
    serversOmitted: 0,
    aggregates: null,
    rollupFrom: 0,
    rollupTo: row.rollup.secs.length,
  };
}
