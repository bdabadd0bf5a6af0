// Value codec of a storage row (issue 14): one server's values in one block (≤ 60 doubles in
// practice, any n works), as a bit stream that ends on a byte boundary. Bit-exact for every
// double (−0, NaN payloads, ±Inf, subnormals): decode(encode(x)) has x's bits.
//
// Format of one series of n values (n is known to the reader; n = 0 writes nothing), bits
// little-endian first:
//   mode 2 bits: 0 decimal values, 1 decimal deltas, 2 decimal delta-of-deltas, 3 float
//   decimal: e 4 bits (values are integers x / 10^e, |x| < 2^50, checked exactly on encode),
//            then `mode` leading integers (x0; for mode 2 also the first delta), each zig-zag
//            as a 6-bit length + bits, then the n − mode residuals, coded one of two ways (1 bit):
//     PFOR:  base (zig-zag, the minimum), width b (6 bits), 1 bit: exceptions follow, their
//            count c (bits for 0..m) and high-bit width (6 bits); then every residual − base
//            in b bits, then c × (position, high bits) of those that do not fit
//     Rice:  base, k (5 bits), escape width (6 bits), then per residual − base: q = r >> k in
//            unary (q < 16; 16 ones escape to the whole r in the escape width), then k low bits
//   float: 1 bit: 0 raw 64-bit doubles, 1 Gorilla XOR against the previous value's bits
// The encoder computes the exact bit cost of every (transform, coder, parameter) and keeps the
// cheapest, so a constant costs its header (b = 0), an arithmetic run the same in mode 1, a
// counter's total is deltas (its rate) and a rate is values.
// With a habit (what a row's series usually choose; core/block.ts keeps one per row, taken from
// its first series), a series spends 1 bit instead of mode and e when they are the habit's (then
// `mode` and `e` above are not written), and 1 bit before its residuals instead of the coder bit
// and its width or k when those are the habit's: up to 11 bits of a series' header (39 bits on
// average on the comparison mix, 53 for CPU walks, including the byte alignment).
//
// Measured (`apm bench --only codec`, 2 cores shared; 200 servers × 40 metrics × 600 s of
// tools/shapes-compare.ts in rows of 40 servers × 60 s; values only, B/point):
//   shape                 this codec  + deflate 6  + brotli 11   today (varints + deflate 6)
//   cpu walk, 2 decimals      1.214       1.216        1.216        1.303
//   counter rates             0.677       0.679        0.678        0.761
//   counter totals            0.734       0.736        0.736        1.170
//   queues                    0.281       0.270        0.259        0.323
//   latencies, 2 decimals     1.434       1.437        1.436        1.684
//   mixed (rates)             0.902       0.900        0.897        1.018
//   mixed (totals)            0.916       0.915        0.912        1.120
//   not in the mix: near-constants (tools/shapes.ts) 0.093 alone, 0.054 deflated, today 0.055;
//   daily cycles 0.804, 0.797, today 0.817.
//   encode 75–90 ns/point (today with deflate 69–89), decode 11.5–19 ns/point (today with
//   inflate 19.5–20); deflate 1 of the new rows +30–48 ns/point, inflate +4–6.
//   With a habit per row (as core/block.ts writes rows; the bench since the fifth session, 3 B
//   a row counted): cpu 1.194, counter rates 0.668, queues 0.268, latencies 1.426, mixed 0.889;
//   encode 60 ns/point, decode 11.1.
// An entropy stage gains < 0.5 % on the mix (a bit-packed stream has few byte repeats); it pays
// only where series repeat across a row's servers: constants (−42 %) and idle queues (−4 %).
//
// Why this design: the bench's mix is dominated by noise bits (a CPU walk's steps, a latency's
// 2 decimals), where a per-series bit width (VictoriaMetrics' nearest delta is varint bytes +
// zstd; ALP's FOR bit-packing) is already within ~0.5 bit of the entropy; outliers (latency
// spikes, queue bursts) are patched exceptions, not a wider width for all; skewed small values
// (idle queues) need an entropy code, which Rice is, decodable 60 values at a time without a
// table; one width per series plus exceptions beat widths per 8 or 16 values, whose headers cost
// more than they save on 60 values. Gorilla XOR is kept only
// for values that are not short decimals (ALP's and Chimp's point: decimal scaling first).

import { decimalExponent, decimalExponentMax, pow10 } from '../../lib/decimal.js';

/** What writeSeries needs of a byte writer (core/block.ts ByteWriter has it). */
export interface SeriesWriter {
  bytes(src: Uint8Array, start: number, end: number): void;
}

/** What readSeries needs of a byte reader: the buffer and a position it advances. */
export interface SeriesReader {
  readonly buf: Uint8Array;
  pos: number;
}

/** A malformed series (truncated, impossible field); the row is corrupt. */
export class ValueCodecError extends Error {}

const enum Mode {
  Values = 0,
  Delta = 1,
  Delta2 = 2,
  Float = 3,
}

const enum Coder {
  Pfor = 0,
  Rice = 1,
}

/**
 * What a row's series usually choose: mode (0–3), decimal exponent e (0 for floats), coder (0 PFOR,
 * 1 Rice) and its parameter (PFOR width or Rice k). Writer and reader of a series pass the same one.
 */
export interface SeriesHabit {
  mode: number;
  e: number;
  coder: number;
  param: number;
}

/** A habit read from storage: null when a field is out of range (the row is corrupt). */
export function checkedHabit(h: SeriesHabit): SeriesHabit | null {
  const ok = h.mode >= 0 && h.mode <= 3 && h.e >= 0 && h.e <= exponentMax && (h.coder === Coder.Pfor ? h.param <= widthMax : h.coder === Coder.Rice && h.param <= riceKMax) && h.param >= 0;
  return ok ? h : null;
}

/** The habit of the series being written or read (module state: one series at a time), or null. */
let habit: SeriesHabit | null = null;
/** What the last series written chose (seriesHabit). */
const chose: SeriesHabit = { mode: 0, e: 0, coder: 0, param: 0 };

/** Decimal integers stay below this so that deltas of deltas (and their zig-zag) are exact. */
const intLimit = 2 ** 50;
const exponentMax = decimalExponentMax;
/** A residual − base is < 2^54 (a delta of deltas spans 2^53 at most): widths fit 6 bits. */
const widthMax = 54;
const riceKMax = 24;
const riceEscape = 16;

const pow2 = Float64Array.from({ length: widthMax + 1 }, (_, b) => 2 ** b);

const zz = (n: number) => (n >= 0 ? n * 2 : -n * 2 - 1);
const unzz = (z: number) => (z % 2 === 0 ? z / 2 : -(z + 1) / 2);

/** Bits needed for a non-negative integer < 2^54 (0 for 0). */
function bitLen(x: number): number {
  if (x < 0x80000000) return 32 - Math.clz32(x);
  return 63 - Math.clz32(Math.floor(x / 0x80000000));
}

const ctz32 = (x: number) => 31 - Math.clz32(x & -x);

// ---- bit writer (module state: one series at a time, never re-entered) ----

let wbuf = new Uint8Array(1 << 12);
let wpos = 0;
let acc = 0;
let accBits = 0;

/** Appends the nb ≤ 24 low bits of v (v < 2^nb). */
function put(v: number, nb: number): void {
  acc |= v << accBits;
  accBits += nb;
  while (accBits >= 8) {
    if (wpos === wbuf.length) {
      const next = new Uint8Array(wbuf.length * 2);
      next.set(wbuf);
      wbuf = next;
    }
    wbuf[wpos++] = acc & 0xff;
    acc >>>= 8;
    accBits -= 8;
  }
}

/** Appends an integer 0 ≤ v < 2^nb, nb ≤ 54. */
function putBig(v: number, nb: number): void {
  while (nb > 24) {
    put(v % 0x1000000, 24);
    v = Math.floor(v / 0x1000000);
    nb -= 24;
  }
  put(v, nb);
}

/** Appends the nb ≤ 32 low bits of an unsigned 32-bit v. */
function putU32(v: number, nb: number): void {
  if (nb <= 24) put(v & ((1 << nb) - 1), nb);
  else {
    put(v & 0xffff, 16);
    put((v >>> 16) & ((1 << (nb - 16)) - 1), nb - 16);
  }
}

/** A signed integer as a 6-bit length and its zig-zag bits. */
function putVarBits(n: number): void {
  const z = zz(n);
  const len = bitLen(z);
  put(len, 6);
  putBig(z, len);
}

const varBitsCost = (n: number) => 6 + bitLen(zz(n));

// ---- encoder ----

let ints = new Float64Array(64);
let deltas = new Float64Array(64);
let dods = new Float64Array(64);
const lenHist = new Int32Array(widthMax + 2);

/** The cheapest coding of m residuals found by plan(). */
class Plan {
  cost = 0;
  coder = Coder.Pfor;
  base = 0;
  /** PFOR width or Rice k. */
  param = 0;
  /** Width of an exception's high bits (PFOR) or of an escaped residual (Rice). */
  wide = 0;
  exceptions = 0;
  copy(p: Plan): void {
    this.cost = p.cost;
    this.coder = p.coder;
    this.base = p.base;
    this.param = p.param;
    this.wide = p.wide;
    this.exceptions = p.exceptions;
  }
}
const cand = new Plan();
const best = new Plan();

/**
 * Cheapest PFOR or Rice coding of res[0 .. m) into p (cost in bits, header included); min and max
 * are those of res[0 .. m) (the caller found them while computing the residuals).
 */
function plan(res: Float64Array, m: number, p: Plan, min: number, max: number): void {
  const maxBits = bitLen(max - min);
  for (let b = 0; b <= maxBits; b++) lenHist[b] = 0;
  let sum = 0;
  for (let i = 0; i < m; i++) {
    const r = res[i]! - min;
    lenHist[bitLen(r)]!++;
    sum += r;
  }
  const head = 2 + 1 + varBitsCost(min);
  const cw = bitLen(m);
  const pw = bitLen(m - 1);
  // PFOR: width b, the values longer than b are exceptions.
  p.coder = Coder.Pfor;
  p.base = min;
  p.cost = Infinity;
  let longer = m - lenHist[0]!;
  for (let b = 0; b <= maxBits; b++) {
    if (b > 0) longer -= lenHist[b]!;
    const cost = head + 6 + 1 + m * b + (longer > 0 ? cw + 6 + longer * (pw + maxBits - b) : 0);
    if (cost < p.cost) {
      p.cost = cost;
      p.param = b;
      p.exceptions = longer;
      p.wide = maxBits - b;
    }
  }
  if (maxBits === 0) return;
  // Rice: k around log2 of the mean residual (⌊log2 y⌋ = bitLen(⌊y⌋) − 1 for y ≥ 1); the three
  // costs in one pass, as q(k + 1) = ⌊q(k) / 2⌋ (exact: halving a double is).
  const k0 = Math.max(0, bitLen(Math.floor(sum / m + 1)) - 2);
  const kTop = Math.min(k0 + 2, riceKMax);
  if (kTop < k0) return;
  // Without a pass when no Rice k can be cheaper: while no residual escapes (maxBits − k ≤ 4),
  // a residual costs q + 1 + k bits with q = ⌊r / 2^k⌋ > r / 2^k − 1, so the series costs more
  // than m(1 + k) + sum / 2^k − m. Evenly spread residuals (noise) end here; skewed ones do not.
  if (maxBits <= 31 && maxBits - k0 <= 4) {
    let bound = Infinity;
    for (let k = k0; k <= kTop; k++) bound = Math.min(bound, head + 5 + 6 + m * (1 + k) + Math.max(0, sum / pow2[k]! - m));
    if (bound >= p.cost) return;
  }
  const escaped = riceEscape + maxBits;
  let c0 = 0;
  let c1 = 0;
  let c2 = 0;
  if (maxBits <= 31) {
    for (let i = 0; i < m; i++) {
      const q = (res[i]! - min) >>> k0;
      c0 += q < riceEscape ? q + 1 + k0 : escaped;
      const q1 = q >>> 1;
      c1 += q1 < riceEscape ? q1 + 2 + k0 : escaped;
      const q2 = q >>> 2;
      c2 += q2 < riceEscape ? q2 + 3 + k0 : escaped;
    }
  } else {
    const div = pow2[k0]!;
    for (let i = 0; i < m; i++) {
      const q = Math.floor((res[i]! - min) / div);
      c0 += q < riceEscape ? q + 1 + k0 : escaped;
      const q1 = Math.floor(q / 2);
      c1 += q1 < riceEscape ? q1 + 2 + k0 : escaped;
      const q2 = Math.floor(q / 4);
      c2 += q2 < riceEscape ? q2 + 3 + k0 : escaped;
    }
  }
  for (let k = k0; k <= kTop; k++) {
    const cost = head + 5 + 6 + (k === k0 ? c0 : k === k0 + 1 ? c1 : c2);
    if (cost < p.cost) {
      p.cost = cost;
      p.coder = Coder.Rice;
      p.param = k;
      p.wide = maxBits;
    }
  }
}

function writeResiduals(res: Float64Array, m: number, p: Plan): void {
  chose.coder = p.coder;
  chose.param = p.param;
  const usual = habit !== null && habit.coder === p.coder && habit.param === p.param;
  if (habit !== null) put(usual ? 1 : 0, 1);
  if (!usual) put(p.coder, 1);
  putVarBits(p.base);
  const base = p.base;
  if (p.coder === Coder.Rice) {
    const k = p.param;
    const div = pow2[k]!;
    if (!usual) put(k, 5);
    put(p.wide, 6);
    for (let i = 0; i < m; i++) {
      const r = res[i]! - base;
      const q = Math.floor(r / div);
      if (q < riceEscape) {
        put((1 << q) - 1, q + 1);
        putBig(r - q * div, k);
      } else {
        put((1 << riceEscape) - 1, riceEscape);
        putBig(r, p.wide);
      }
    }
    return;
  }
  const b = p.param;
  const div = pow2[b]!;
  if (!usual) put(b, 6);
  put(p.exceptions > 0 ? 1 : 0, 1);
  if (p.exceptions > 0) {
    put(p.exceptions, bitLen(m));
    put(p.wide, 6);
  }
  if (b <= 24 && b + p.wide <= 31) {
    // Every residual below 2^31: integer masks instead of a double's remainder.
    const mask = div - 1;
    for (let i = 0; i < m; i++) put((res[i]! - base) & mask, b);
  } else for (let i = 0; i < m; i++) putBig((res[i]! - base) % div, b);
  if (p.exceptions === 0) return;
  const pw = bitLen(m - 1);
  for (let i = 0; i < m; i++) {
    const high = Math.floor((res[i]! - base) / div);
    if (high === 0) continue;
    put(i, pw);
    putBig(high, p.wide);
  }
}

function grow(n: number): void {
  if (ints.length >= n) return;
  ints = new Float64Array(n);
  deltas = new Float64Array(n);
  dods = new Float64Array(n);
}

/** Writes the decimal form; false (nothing written) when a value does not scale back exactly. */
function writeDecimal(vals: Float64Array, from: number, n: number, e: number): boolean {
  grow(n);
  const scale = pow10[e]!;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = Math.round(vals[from + i]! * scale);
    // decimalExponent checked each value at the exponent it had then; check again at e.
    if (x / scale !== vals[from + i]! || !(Math.abs(x) < intLimit)) return false;
    ints[i] = x;
    if (x < min) min = x;
    if (x > max) max = x;
  }
  plan(ints, n, best, min, max);
  let mode = Mode.Values;
  if (n >= 2) {
    min = Infinity;
    max = -Infinity;
    for (let i = 1; i < n; i++) {
      const d = ints[i]! - ints[i - 1]!;
      deltas[i - 1] = d;
      if (d < min) min = d;
      if (d > max) max = d;
    }
    plan(deltas, n - 1, cand, min, max);
    cand.cost += varBitsCost(ints[0]!);
    if (cand.cost < best.cost) {
      best.copy(cand);
      mode = Mode.Delta;
    }
  }
  if (n >= 3) {
    min = Infinity;
    max = -Infinity;
    for (let i = 1; i < n - 1; i++) {
      const d = deltas[i]! - deltas[i - 1]!;
      dods[i - 1] = d;
      if (d < min) min = d;
      if (d > max) max = d;
    }
    plan(dods, n - 2, cand, min, max);
    cand.cost += varBitsCost(ints[0]!) + varBitsCost(deltas[0]!);
    if (cand.cost < best.cost) {
      best.copy(cand);
      mode = Mode.Delta2;
    }
  }
  chose.mode = mode;
  chose.e = e;
  putModeAndExponent(mode, e);
  if (mode === Mode.Values) writeResiduals(ints, n, best);
  else if (mode === Mode.Delta) {
    putVarBits(ints[0]!);
    writeResiduals(deltas, n - 1, best);
  } else {
    putVarBits(ints[0]!);
    putVarBits(deltas[0]!);
    writeResiduals(dods, n - 2, best);
  }
  return true;
}

const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);
/** Index of the low and high 32-bit halves of a double in u32 (platform byte order). */
const loIdx = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1 ? 0 : 1;
const hiIdx = 1 - loIdx;

/** Appends len bits of the 64-bit (hi, lo) starting at bit sh. */
function putRange(hi: number, lo: number, sh: number, len: number): void {
  let l = lo;
  let h = hi;
  if (sh >= 32) {
    l = hi >>> (sh - 32);
    h = 0;
  } else if (sh > 0) {
    l = ((lo >>> sh) | (hi << (32 - sh))) >>> 0;
    h = hi >>> sh;
  }
  if (len <= 32) putU32(l, len);
  else {
    putU32(l, 32);
    putU32(h, len - 32);
  }
}

/** Gorilla XOR of the doubles: each against the previous one's bits (the first against 0). */
function writeGorilla(vals: Float64Array, from: number, to: number): void {
  let plo = 0;
  let phi = 0;
  let pLz = -1;
  let pTz = 0;
  for (let i = from; i < to; i++) {
    f64[0] = vals[i]!;
    const lo = u32[loIdx]!;
    const hi = u32[hiIdx]!;
    const xlo = (lo ^ plo) >>> 0;
    const xhi = (hi ^ phi) >>> 0;
    plo = lo;
    phi = hi;
    if ((xlo | xhi) === 0) {
      put(0, 1);
      continue;
    }
    const lz = Math.min(31, xhi !== 0 ? Math.clz32(xhi) : 32 + Math.clz32(xlo));
    const tz = xlo !== 0 ? ctz32(xlo) : 32 + ctz32(xhi);
    if (pLz >= 0 && lz >= pLz && tz >= pTz) {
      put(1, 2);
      putRange(xhi, xlo, pTz, 64 - pLz - pTz);
      continue;
    }
    const len = 64 - lz - tz;
    put(3, 2);
    put(lz, 5);
    put(len - 1, 6);
    putRange(xhi, xlo, tz, len);
    pLz = lz;
    pTz = tz;
  }
}

/** The mode (2 bits) and a decimal's exponent (4 bits), or 1 bit when they are the habit's. */
function putModeAndExponent(mode: number, e: number): void {
  if (habit !== null) {
    const usual = habit.mode === mode && habit.e === e;
    put(usual ? 1 : 0, 1);
    if (usual) return;
  }
  put(mode, 2);
  if (mode !== Mode.Float) put(e, 4);
}

function writeFloat(vals: Float64Array, from: number, to: number): void {
  chose.mode = Mode.Float;
  chose.e = 0;
  chose.coder = 0;
  chose.param = 0;
  const start = wpos;
  putModeAndExponent(Mode.Float, 0);
  put(1, 1);
  writeGorilla(vals, from, to);
  // Raw doubles cost the same header (1 bit under a float habit, 3 under another, 2 without), a flag and 64 bits each.
  const headBits = habit === null ? 2 : habit.mode === Mode.Float ? 1 : 3;
  if ((wpos - start) * 8 + accBits <= headBits + 1 + 64 * (to - from)) return;
  wpos = start;
  acc = 0;
  accBits = 0;
  putModeAndExponent(Mode.Float, 0);
  put(0, 1);
  for (let i = from; i < to; i++) {
    f64[0] = vals[i]!;
    putU32(u32[loIdx]!, 32);
    putU32(u32[hiIdx]!, 32);
  }
}

/**
 * Appends vals[from .. to) to w, byte-aligned; readSeries with n = to − from (and the same
 * habit) reads them back bit-exact.
 */
export function writeSeries(w: SeriesWriter, vals: Float64Array, from: number, to: number, withHabit: SeriesHabit | null = null): void {
  const n = to - from;
  if (n <= 0) return;
  habit = withHabit;
  encode(vals, from, to, n);
  habit = null;
  w.bytes(wbuf, 0, wpos);
}

/** What writeSeries chooses for vals[from .. to) without a habit: the habit a row's series take from it. */
export function seriesHabit(vals: Float64Array, from: number, to: number): SeriesHabit {
  habit = null;
  if (to > from) encode(vals, from, to, to - from);
  else Object.assign(chose, { mode: 0, e: 0, coder: 0, param: 0 });
  return { ...chose };
}

/** Encodes one series into the module's buffer [0, wpos). */
function encode(vals: Float64Array, from: number, to: number, n: number): void {
  wpos = 0;
  acc = 0;
  accBits = 0;
  const e = decimalExponent(vals, from, to, intLimit);
  if (e < 0 || !writeDecimal(vals, from, n, e)) {
    wpos = 0;
    acc = 0;
    accBits = 0;
    writeFloat(vals, from, to);
  }
  if (accBits > 0) put(0, 8 - accBits);
}

// ---- decoder (module state: one series at a time) ----

let rbuf: Uint8Array = new Uint8Array(0);
let rbit = 0;
let rEnd = 0;

function need(nb: number): void {
  if (rbit + nb > rEnd) throw new ValueCodecError(`value series truncated: ${nb} bits wanted at bit ${rbit} of ${rEnd}`);
}

/** Next nb ≤ 24 bits (bounds checked by the caller through need()). */
function get(nb: number): number {
  const i = rbit >>> 3;
  const w = i + 3 < rbuf.length ? rbuf[i]! | (rbuf[i + 1]! << 8) | (rbuf[i + 2]! << 16) | (rbuf[i + 3]! << 24) : tail(i);
  const v = (w >>> (rbit & 7)) & ((1 << nb) - 1);
  rbit += nb;
  return v;
}

/** The last bytes of the buffer as a 32-bit word, zeros beyond its end. */
function tail(i: number): number {
  let w = 0;
  for (let k = 0; k < 4 && i + k < rbuf.length; k++) w |= rbuf[i + k]! << (8 * k);
  return w;
}

function getBig(nb: number): number {
  if (nb <= 24) return get(nb);
  let v = 0;
  let scale = 1;
  while (nb > 24) {
    v += get(24) * scale;
    scale *= 0x1000000;
    nb -= 24;
  }
  return v + get(nb) * scale;
}

function getU32(nb: number): number {
  if (nb <= 24) return get(nb);
  const lo = get(16);
  return (lo | (get(nb - 16) << 16)) >>> 0;
}

function getVarBits(): number {
  need(6);
  const len = get(6);
  if (len > widthMax) throw new ValueCodecError(`value series: integer of ${len} bits (at most ${widthMax})`);
  need(len);
  return unzz(getBig(len));
}

/** The hot loop: m values of b ≤ 24 bits plus base into out[at ..] (bounds checked by the caller). */
function unpack(out: Float64Array, at: number, m: number, b: number, base: number): void {
  const buf = rbuf;
  const mask = (1 << b) - 1;
  // Below this bit a 4-byte load stays inside the buffer.
  const safe = (buf.length - 3) * 8;
  let bit = rbit;
  for (let i = 0; i < m; i++) {
    const j = bit >>> 3;
    const w = bit < safe ? buf[j]! | (buf[j + 1]! << 8) | (buf[j + 2]! << 16) | (buf[j + 3]! << 24) : tail(j);
    out[at + i] = base + ((w >>> (bit & 7)) & mask);
    bit += b;
  }
  rbit = bit;
}

/** m Rice codes (parameter k, escapes of `wide` bits) plus base into out[at ..]; checks bounds per value. */
function riceUnpack(out: Float64Array, at: number, m: number, k: number, wide: number, base: number): void {
  const buf = rbuf;
  const safe = (buf.length - 3) * 8;
  const div = pow2[k]!;
  const kMask = (1 << k) - 1;
  let bit = rbit;
  for (let i = 0; i < m; i++) {
    // The next 25+ bits (zeros past the end); q = the ones before the first zero.
    let j = bit >>> 3;
    let w = (bit < safe ? buf[j]! | (buf[j + 1]! << 8) | (buf[j + 2]! << 16) | (buf[j + 3]! << 24) : tail(j)) >>> (bit & 7);
    // 32 ones in view (an escape followed by ones) leave ~w = 0, where ctz32 would say −1.
    const q = w === -1 || w === 0xffffffff ? 32 : ctz32(~w);
    if (q < riceEscape) {
      if (bit + q + 1 + k > rEnd) throw new ValueCodecError(`value series truncated: Rice code at bit ${bit} of ${rEnd}`);
      bit += q + 1;
      j = bit >>> 3;
      w = bit < safe ? buf[j]! | (buf[j + 1]! << 8) | (buf[j + 2]! << 16) | (buf[j + 3]! << 24) : tail(j);
      out[at + i] = base + q * div + ((w >>> (bit & 7)) & kMask);
      bit += k;
    } else {
      rbit = bit + riceEscape;
      need(wide);
      out[at + i] = base + getBig(wide);
      bit = rbit;
    }
  }
  rbit = bit;
}

/** Reads m residuals into out[at .. at + m). */
function readResiduals(out: Float64Array, at: number, m: number): void {
  let usual = false;
  if (habit !== null) {
    need(1);
    usual = get(1) === 1;
  }
  need(usual ? 0 : 1);
  const coder = usual ? habit!.coder : get(1);
  const base = getVarBits();
  if (coder === Coder.Rice) {
    need(usual ? 6 : 11);
    const k = usual ? habit!.param : get(5);
    const wide = get(6);
    if (k > riceKMax || wide > widthMax) throw new ValueCodecError(`value series: Rice k ${k}, escape width ${wide}`);
    riceUnpack(out, at, m, k, wide, base);
    return;
  }
  const cw = bitLen(m);
  need(usual ? 1 : 7);
  const b = usual ? habit!.param : get(6);
  const some = get(1);
  need(some * cw);
  const c = some === 1 ? get(cw) : 0;
  if (b > widthMax || c > m) throw new ValueCodecError(`value series: width ${b}, ${c} exceptions of ${m}`);
  need(some * 6);
  const wide = some === 1 ? get(6) : 0;
  if (b + wide > widthMax) throw new ValueCodecError(`value series: width ${b} + ${wide} bits`);
  need(m * b);
  if (b <= 24) unpack(out, at, m, b, base);
  else for (let i = 0; i < m; i++) out[at + i] = base + getBig(b);
  if (c === 0) return;
  const pw = bitLen(m - 1);
  need(c * (pw + wide));
  const mul = pow2[b]!;
  for (let j = 0; j < c; j++) {
    const pos = get(pw);
    if (pos >= m) throw new ValueCodecError(`value series: exception at ${pos} of ${m}`);
    out[at + pos] = out[at + pos]! + getBig(wide) * mul;
  }
}

function readDecimal(mode: number, e: number, out: Float64Array, at: number, n: number): void {
  if (n < mode + 1) throw new ValueCodecError(`value series: mode ${mode} with ${n} values`);
  const scale = pow10[e]!;
  if (mode === Mode.Values) {
    readResiduals(out, at, n);
    for (let i = 0; i < n; i++) out[at + i] = out[at + i]! / scale;
    return;
  }
  let x = getVarBits();
  out[at] = x / scale;
  if (mode === Mode.Delta) {
    readResiduals(out, at + 1, n - 1);
    for (let i = 1; i < n; i++) out[at + i] = (x += out[at + i]!) / scale;
    return;
  }
  let d = getVarBits();
  out[at + 1] = (x += d) / scale;
  readResiduals(out, at + 2, n - 2);
  for (let i = 2; i < n; i++) out[at + i] = (x += d += out[at + i]!) / scale;
}

function readFloat(out: Float64Array, at: number, n: number): void {
  need(1);
  if (get(1) === 0) {
    need(64 * n);
    for (let i = 0; i < n; i++) {
      u32[loIdx] = getU32(32);
      u32[hiIdx] = getU32(32);
      out[at + i] = f64[0]!;
    }
    return;
  }
  let plo = 0;
  let phi = 0;
  let pLz = -1;
  let pTz = 0;
  for (let i = 0; i < n; i++) {
    need(1);
    if (get(1) !== 0) {
      need(1);
      let sh = pTz;
      let len = 64 - pLz - pTz;
      if (get(1) === 1) {
        need(11);
        pLz = get(5);
        len = get(6) + 1;
        pTz = sh = 64 - pLz - len;
        if (sh < 0) throw new ValueCodecError(`value series: XOR window ${pLz} + ${len} bits`);
      } else if (pLz < 0) throw new ValueCodecError('value series: XOR window reused before one was set');
      need(len);
      const l = len <= 32 ? getU32(len) : getU32(32);
      const h = len > 32 ? getU32(len - 32) : 0;
      let xlo = l;
      let xhi = h;
      if (sh >= 32) {
        xhi = l << (sh - 32);
        xlo = 0;
      } else if (sh > 0) {
        xhi = (h << sh) | (l >>> (32 - sh));
        xlo = l << sh;
      }
      plo = (plo ^ xlo) >>> 0;
      phi = (phi ^ xhi) >>> 0;
    }
    u32[loIdx] = plo;
    u32[hiIdx] = phi;
    out[at + i] = f64[0]!;
  }
}

/**
 * Reads n values written by writeSeries (with the same habit) from r.buf at r.pos into
 * out[at .. at + n); advances r.pos. Throws ValueCodecError when malformed.
 */
export function readSeries(r: SeriesReader, out: Float64Array, at: number, n: number, withHabit: SeriesHabit | null = null): void {
  if (n <= 0) return;
  if (at < 0 || at + n > out.length) throw new RangeError(`readSeries: ${n} values at ${at} do not fit ${out.length}`);
  rbuf = r.buf;
  rbit = r.pos * 8;
  rEnd = rbuf.length * 8;
  habit = withHabit;
  try {
    let mode: number;
    let e = 0;
    need(habit !== null ? 1 : 0);
    if (habit !== null && get(1) === 1) {
      mode = habit.mode;
      e = habit.e;
    } else {
      need(2);
      mode = get(2);
      if (mode !== Mode.Float) {
        need(4);
        e = get(4);
      }
    }
    if (mode === Mode.Float) readFloat(out, at, n);
    else readDecimal(mode, e, out, at, n);
  } finally {
    habit = null;
  }
  r.pos = Math.ceil(rbit / 8);
}
