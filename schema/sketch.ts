// DDSketch at 1% relative accuracy (DESIGN §2) with our own sparse wire encoding.
//
// The key mapping is the one of @datadog/sketches-js (LogarithmicMapping, gamma = 1.0202), so
// a key means the same bucket here as in Datadog's sketches. The stores are ours: the edge
// builds bins from a second's sorted values, racks and the core merge encoded bins into a
// dense accumulator, and negative values, zero and positive values are all merged correctly
// (sketches-js' merge() ignores the negative store, its issue #22).
//
// Encoding of one summary's bins (all varints ≤ 2^32 − 1, see schema/varint.ts):
//   zeroCount
//   negBins, then for each: key (first: zig-zag of the key; later: delta ≥ 1 from the previous), count ≥ 1
//   posBins, the same
// Negative values are binned by the key of |v|; both stores are written in ascending key.
// One value costs 5 bytes; 100 latency values ~130; 10,000 values ~600.

import { LogarithmicMapping } from '@datadog/sketches-js/dist/ddsketch/mapping/index.js';
import { sketchRelativeAccuracy, summaryCountMax } from './limits.js';
import { VarintReader, varintBytes, writeVarint, zigzag, unzigzag } from './varint.js';

const mapping = new LogarithmicMapping(sketchRelativeAccuracy);

/** Smallest |v| with a key of its own; smaller magnitudes count in the zero bucket. */
export const sketchMinIndexable: number = mapping.minPossible;
/** Keys of every finite double fall in [sketchKeyMin, sketchKeyMax]. */
export const sketchKeyMin: number = mapping.key(mapping.minPossible);
export const sketchKeyMax: number = mapping.key(Number.MAX_VALUE);
const keySpan = sketchKeyMax - sketchKeyMin + 1;

/** Key of a magnitude ≥ sketchMinIndexable. */
export function sketchKey(magnitude: number): number {
  return mapping.key(magnitude);
}

/** The value a key stands for: within 1% of every value that maps to it. */
export function sketchValue(key: number): number {
  return mapping.value(key);
}

/**
 * Builds the encoding of sorted values (ascending, finite) with optional integer weights.
 * Scratch space is allocated once per encoder; `encode` never allocates.
 */
export class SortedSketchEncoder {
  private readonly negKeys = new Int32Array(keySpan);
  private readonly negCounts = new Float64Array(keySpan);
  private readonly posKeys = new Int32Array(keySpan);
  private readonly posCounts = new Float64Array(keySpan);
  private negLen = 0;
  private posLen = 0;
  private zeroCount = 0;

  /** Bins values[from..to) and returns the bytes their encoding needs. */
  bin(values: Float64Array, weights: Uint32Array | null, from: number, to: number): number {
    this.negLen = 0;
    this.posLen = 0;
    this.zeroCount = 0;
    for (let i = from; i < to; i++) {
      const v = values[i]!;
      const w = weights === null ? 1 : weights[i]!;
      if (v >= sketchMinIndexable) {
        const k = mapping.key(v);
        if (this.posLen > 0 && this.posKeys[this.posLen - 1] === k) this.posCounts[this.posLen - 1]! += w;
        else {
          this.posKeys[this.posLen] = k;
          this.posCounts[this.posLen++] = w;
        }
      } else if (v <= -sketchMinIndexable) {
        // Sorted ascending, so |v| and its key descend: bins come out in descending key order.
        const k = mapping.key(-v);
        if (this.negLen > 0 && this.negKeys[this.negLen - 1] === k) this.negCounts[this.negLen - 1]! += w;
        else {
          this.negKeys[this.negLen] = k;
          this.negCounts[this.negLen++] = w;
        }
      } else {
        this.zeroCount += w;
      }
    }
    return this.encodedBytes();
  }

  private encodedBytes(): number {
    let n = varintBytes(this.zeroCount) + varintBytes(this.negLen) + varintBytes(this.posLen);
    for (let i = 0; i < this.negLen; i++) {
      const j = this.negLen - 1 - i;
      const key = this.negKeys[j]!;
      n += i === 0 ? varintBytes(zigzag(key)) : varintBytes(key - this.negKeys[j + 1]!);
      n += varintBytes(this.negCounts[j]!);
    }
    for (let i = 0; i < this.posLen; i++) {
      const key = this.posKeys[i]!;
      n += i === 0 ? varintBytes(zigzag(key)) : varintBytes(key - this.posKeys[i - 1]!);
      n += varintBytes(this.posCounts[i]!);
    }
    return n;
  }

  /** Writes the bins of the last `bin` call at `pos`; returns the position after them. */
  encode(out: Uint8Array, pos: number): number {
    let p = writeVarint(out, pos, this.zeroCount);
    p = writeVarint(out, p, this.negLen);
    for (let i = 0; i < this.negLen; i++) {
      const j = this.negLen - 1 - i; // ascending key order on the wire
      const key = this.negKeys[j]!;
      p = writeVarint(out, p, i === 0 ? zigzag(key) : key - this.negKeys[j + 1]!);
      p = writeVarint(out, p, this.negCounts[j]!);
    }
    p = writeVarint(out, p, this.posLen);
    for (let i = 0; i < this.posLen; i++) {
      const key = this.posKeys[i]!;
      p = writeVarint(out, p, i === 0 ? zigzag(key) : key - this.posKeys[i - 1]!);
      p = writeVarint(out, p, this.posCounts[i]!);
    }
    return p;
  }
}

/** Reads one store; adds into `dense` (indexed key − sketchKeyMin) when given. Returns its count or −1. */
function walkStore(r: VarintReader, dense: Float64Array | null, range: Int32Array | null): number {
  const bins = r.next();
  // Every bin takes at least 2 bytes: refuse counts the remaining bytes cannot hold.
  if (r.failed || bins > (r.end - r.pos) / 2) return -1;
  let total = 0;
  let key = 0;
  for (let i = 0; i < bins; i++) {
    const k = r.next();
    const count = r.next();
    if (r.failed || count === 0) return -1;
    if (i === 0) key = unzigzag(k);
    else if (k === 0) return -1;
    else key += k;
    if (key < sketchKeyMin || key > sketchKeyMax) return -1;
    total += count;
    if (dense !== null && range !== null) {
      const idx = key - sketchKeyMin;
      dense[idx]! += count;
      if (idx < range[0]!) range[0] = idx;
      if (idx > range[1]!) range[1] = idx;
    }
  }
  return total;
}

/**
 * Validates the encoded bins in bytes[start..end) and returns their total count, or −1 when
 * they are malformed (bad varint, zero count, key out of range, trailing bytes).
 */
export function sketchCount(bytes: Uint8Array, start: number, end: number): number {
  return walkSketch(bytes, start, end, null);
}

function walkSketch(bytes: Uint8Array, start: number, end: number, acc: SketchAccumulator | null): number {
  const r = new VarintReader(bytes, start, end);
  const zero = r.next();
  if (r.failed) return -1;
  const neg = walkStore(r, acc === null ? null : acc.neg, acc === null ? null : acc.negRange);
  if (neg < 0) return -1;
  const pos = walkStore(r, acc === null ? null : acc.pos, acc === null ? null : acc.posRange);
  if (pos < 0 || r.pos !== end) return -1;
  if (acc !== null) acc.zero += zero;
  return zero + neg + pos;
}

/**
 * Dense merge target for many encoded sketches (one second of a rack, one window of a query).
 * Memory is fixed (~1.2 MB); `reset` clears only the touched key range.
 */
export class SketchAccumulator {
  readonly neg = new Float64Array(keySpan);
  readonly pos = new Float64Array(keySpan);
  /** [lowest, highest] touched index, or [keySpan, −1] when empty. */
  readonly negRange = Int32Array.of(keySpan, -1);
  readonly posRange = Int32Array.of(keySpan, -1);
  zero = 0;

  /** Merges encoded bins; returns their count, or −1 (and merges nothing) when malformed. */
  addEncoded(bytes: Uint8Array, start: number, end: number): number {
    if (sketchCount(bytes, start, end) < 0) return -1;
    return walkSketch(bytes, start, end, this);
  }

  /**
   * Merges encoded bins a decoder has already checked (sketchCount ≥ 0: the rack's datagrams,
   * schema/codec.ts): one walk instead of addEncoded's two. Returns their count; a sketch that
   * is malformed after all is a bug (thrown; part of it may have been merged).
   */
  addChecked(bytes: Uint8Array, start: number, end: number): number {
    const n = walkSketch(bytes, start, end, this);
    if (n < 0) throw new Error(`BUG: a sketch checked on decode is malformed (bytes ${start}..${end})`);
    return n;
  }

  /** Adds one finite value `weight` times. */
  addValue(value: number, weight = 1): void {
    if (value >= sketchMinIndexable) bump(this.pos, this.posRange, mapping.key(value) - sketchKeyMin, weight);
    else if (value <= -sketchMinIndexable) bump(this.neg, this.negRange, mapping.key(-value) - sketchKeyMin, weight);
    else this.zero += weight;
  }

  count(): number {
    let n = this.zero;
    for (let i = this.negRange[0]!; i <= this.negRange[1]!; i++) n += this.neg[i]!;
    for (let i = this.posRange[0]!; i <= this.posRange[1]!; i++) n += this.pos[i]!;
    return n;
  }

  /**
   * The value at rank q·(n−1) (0 ≤ q ≤ 1) within 1% relative error, clamped to [min, max]
   * when the caller knows them exactly. NaN when empty.
   */
  quantile(q: number, min = -Infinity, max = Infinity): number {
    const n = this.count();
    if (n === 0) return NaN;
    const rank = quantileRank(q, n);
    let seen = 0;
    let v = NaN;
    // Most negative values first: descending |v| key.
    for (let i = this.negRange[1]!; i >= this.negRange[0]! && Number.isNaN(v); i--) {
      seen += this.neg[i]!;
      if (seen > rank) v = -mapping.value(i + sketchKeyMin);
    }
    if (Number.isNaN(v)) {
      seen += this.zero;
      if (seen > rank) v = 0;
    }
    for (let i = this.posRange[0]!; i <= this.posRange[1]! && Number.isNaN(v); i++) {
      seen += this.pos[i]!;
      if (seen > rank) v = mapping.value(i + sketchKeyMin);
    }
    if (Number.isNaN(v)) v = mapping.value(this.posRange[1]! + sketchKeyMin);
    return Math.min(max, Math.max(min, v));
  }

  /** Bytes the encoding of the current content needs. */
  encodedBytes(): number {
    return this.encodeInto(null, 0);
  }

  /** Writes the current content at `pos` (sizes it when `out` is null); returns the end position. */
  encodeInto(out: Uint8Array | null, pos: number): number {
    let p = put(out, pos, this.zero);
    p = encodeDenseStore(out, p, this.neg, this.negRange);
    return encodeDenseStore(out, p, this.pos, this.posRange);
  }

  reset(): void {
    clearRange(this.neg, this.negRange);
    clearRange(this.pos, this.posRange);
    this.zero = 0;
  }
}

function bump(store: Float64Array, range: Int32Array, idx: number, weight: number): void {
  store[idx]! += weight;
  if (idx < range[0]!) range[0] = idx;
  if (idx > range[1]!) range[1] = idx;
}

function clearRange(store: Float64Array, range: Int32Array): void {
  if (range[1]! >= range[0]!) store.fill(0, range[0]!, range[1]! + 1);
  range[0] = keySpan;
  range[1] = -1;
}

function put(out: Uint8Array | null, pos: number, value: number): number {
  if (value > summaryCountMax) throw new Error(`BUG: sketch bin count ${value} exceeds the 32-bit wire limit`);
  return out === null ? pos + varintBytes(value) : writeVarint(out, pos, value);
}

function encodeDenseStore(out: Uint8Array | null, pos: number, store: Float64Array, range: Int32Array): number {
  let bins = 0;
  for (let i = range[0]!; i <= range[1]!; i++) if (store[i]! > 0) bins++;
  let p = put(out, pos, bins);
  let prev = 0;
  let first = true;
  for (let i = range[0]!; i <= range[1]!; i++) {
    const c = store[i]!;
    if (c === 0) continue;
    const key = i + sketchKeyMin;
    p = put(out, p, first ? zigzag(key) : key - prev);
    p = put(out, p, c);
    prev = key;
    first = false;
  }
  return p;
}

/**
 * The rank (0-based, maybe fractional) of quantile q among n values: q·(n − 1), snapped to the
 * whole number it misses by rounding only (q = 0.29 is not exact in binary: 0.29 · 100 =
 * 28.999…, which took the 29th value for percentile(29) of 101 values instead of the 30th).
 */
export function quantileRank(q: number, n: number): number {
  const rank = q * (n - 1);
  const whole = Math.round(rank);
  return Math.abs(rank - whole) <= 1e-9 * Math.max(1, whole) ? whole : rank;
}
