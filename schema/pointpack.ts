// A section's gauges and counters packed (ShardSection.point_pack, rack → core contract v2):
// servers and values in about 2 bytes a point instead of 10 (a uint16 and a double). The core's
// HTTP thread receives every byte of a section over TCP and the shard's WAL writes every byte of
// it; at 10 bytes a point those were, after the workers' own work, the core's largest costs
// (issue 12: the HTTP thread spent 38 % of its time in the kernel, the disk took 350 MB/s).
//
// Per metric, its c entries (point_ends say how many), one after the other:
//   mode     one byte: 0x80 the servers are listed, 0x40 the values are raw doubles, 0x0f the
//            decimal exponent e (0 when raw); no other bit may be set
//   servers  listed: c zig-zag varints, the first server's index, then each one's step from
//            the one before (in order, every step is 1 or more; the receiver marks a point that
//            repeats or goes back a server as bad, as it does in the unpacked columns).
//            Not listed: the servers are 0, 1, …, c − 1, as when every server sent the metric.
//   values   raw: c little-endian doubles. Decimal: the zig-zag varint of the least mantissa b,
//            a byte w (0–4), then c offsets m − b of w bytes each, little-endian (w = 0: every
//            value is b); the value is m / 10^e, and the packer checked that this gives back
//            exactly the double it was given (lib/decimal.ts). One width a metric, not a varint
//            a value: the reader takes no branch per value (4.4–5.0 ns a point against 7.7–8.7
//            with varints, whose mispredicted lengths cost most), and a metric's values share a
//            magnitude anyway.
// Varints are LEB128 below 2^32 (schema/varint.ts): a decimal metric's mantissas lie below 2^31
// in magnitude, else its values go raw; so do NaN, ±∞ and −0. Decimal is chosen only when it
// is smaller. A point takes at most 10 bytes (a listed server's step 2, a section
// naming fewer than 1,024 servers; a double 8) and a metric 1 more: within the 10 a point and 17
// a metric that the cutter reserves (SectionCutter.rangeBytes).
//
// On the simulator's shapes (40 % CPU walks with two decimals, 60 % integers), 40 servers ×
// 2,000 gauges pack in 2.0 bytes a point, and a rack's body takes 3.0 bytes a point against 11.1
// before (`apm bench --only core` prints its bodies' size). Packing takes ~14 ns a point on the
// rack, unpacking ~5 ns on the core (a micro run on this box).

import { decimalExponent, pow10 } from '../lib/decimal.js';
import { sectionPointsMax } from './limits.js';
import { Reject } from './verify.js';
import { VarintReader, unzigzag, varintBytes, writeVarint, zigzag } from './varint.js';

const serversListed = 0x80;
const rawValues = 0x40;
const exponentBits = 0x0f;
/** Decimal mantissas lie below this in magnitude: their zig-zag, and their spread, fit 32 bits. */
const mantissaLimit = 2 ** 31;

/** Packs columns into one scratch buffer, reused: the rack's cutter packs every section of every second. */
export class PointPacker {
  private out = new Uint8Array(1 << 12);
  private mantissas = new Float64Array(256);
  /** The exponent of the last decimal form written (decimal() returns where it ended). */
  private exponent = 0;

  /**
   * The packed form of metrics whose entries end at `ends` (ascending, the last = values.length)
   * with those entries' server indexes and values. A view of the scratch buffer, good until the
   * next call.
   */
  pack(ends: Uint32Array, servers: Uint16Array, values: Float64Array): Uint8Array {
    const worst = 11 * values.length + ends.length;
    if (this.out.length < worst) this.out = new Uint8Array(Math.max(worst, 2 * this.out.length));
    let at = 0;
    let start = 0;
    for (let i = 0; i < ends.length; i++) {
      const end = ends[i]!;
      at = this.metric(servers, values, start, end, at);
      start = end;
    }
    return this.out.subarray(0, at);
  }

  private metric(servers: Uint16Array, values: Float64Array, start: number, end: number, at: number): number {
    const out = this.out;
    const c = end - start;
    const modeAt = at++;
    let mode = 0;
    for (let k = 0; k < c; k++) {
      if (servers[start + k] !== k) {
        mode = serversListed;
        break;
      }
    }
    if (mode === serversListed) {
      let prev = 0;
      for (let k = start; k < end; k++) {
        const s = servers[k]!;
        at = writeVarint(out, at, zigzag(s - prev));
        prev = s;
      }
    }
    const valuesAt = at;
    const decimalEnd = this.decimal(values, start, end, at);
    if (decimalEnd >= 0) {
      out[modeAt] = mode | this.exponent;
      return decimalEnd;
    }
    out[modeAt] = mode | rawValues;
    out.set(new Uint8Array(values.buffer, values.byteOffset + 8 * start, 8 * c), valuesAt);
    return valuesAt + 8 * c;
  }

  /**
   * Writes the decimal form at `at`; returns where it ends, or −1 (nothing written) when a value
   * has none (lib/decimal.ts) or raw is as small. One pass from exponent 0; a value that needs
   * a larger one starts it again there.
   */
  private decimal(values: Float64Array, start: number, end: number, at: number): number {
    const c = end - start;
    if (this.mantissas.length < c) this.mantissas = new Float64Array(Math.max(c, 2 * this.mantissas.length));
    const m = this.mantissas;
    let e = 0;
    let scale = 1;
    let least = Infinity;
    let most = -Infinity;
    for (let k = 0; k < c; k++) {
      const v = values[start + k]!;
      const x = Math.round(v * scale);
      if (x / scale === v && Math.abs(x) < mantissaLimit && (x !== 0 || 1 / v > 0)) {
        m[k] = x;
        if (x < least) least = x;
        if (x > most) most = x;
        continue;
      }
      // This value needs a larger exponent, or has none (NaN, ±∞, −0, too many digits): the
      // pass starts again at it. One that needs no larger exponent failed for its size, and a
      // larger exponent only makes its mantissa larger.
      const need = decimalExponent(values, start + k, start + k + 1, mantissaLimit);
      if (need <= e) return -1;
      e = need;
      scale = pow10[e]!;
      least = Infinity;
      most = -Infinity;
      k = -1;
    }
    // Every offset above the least in the same width, so the reader needs no branch per value.
    const spread = most - least;
    const w = spread === 0 ? 0 : spread < 0x100 ? 1 : spread < 0x10000 ? 2 : spread < 0x1000000 ? 3 : 4;
    if (varintBytes(zigzag(least)) + 1 + c * w >= 8 * c) return -1;
    const out = this.out;
    at = writeVarint(out, at, zigzag(least));
    out[at++] = w;
    // Offsets lie below 2^32 (mantissas below 2^31 in magnitude): shifts are exact.
    if (w === 1) for (let k = 0; k < c; k++) out[at++] = m[k]! - least;
    else if (w === 2) {
      for (let k = 0; k < c; k++) {
        const d = m[k]! - least;
        out[at] = d;
        out[at + 1] = d >>> 8;
        at += 2;
      }
    } else if (w > 2) {
      for (let k = 0; k < c; k++) {
        const d = (m[k]! - least) >>> 0;
        for (let b = 0; b < w; b++) out[at + b] = d >>> (8 * b);
        at += w;
      }
    }
    this.exponent = e;
    return at;
  }
}

/**
 * Memory for unpacked sections that a caller reuses: a worker unpacked each section into a
 * buffer of its own (10 B a point: ~130 MB/s outside V8's heap at the core bench's ~13 M
 * points/s, computed), and a fifth of its collections were V8's answer to that ("external memory
 * pressure", --trace-gc). Parts
 * are handed out front to back, 8-byte aligned, and all given back at once (reset) by a caller
 * done with every message decoded into them. Bounded: past partsBytesMax it hands out nothing
 * (the section takes a buffer of its own, as without an arena; counted in `overflows`) until the
 * next reset. A store's (16 MiB) is outside the head's bound, as the decoded sections always were.
 */
export class UnpackArena {
  private buffer = new ArrayBuffer(0);
  /** Bytes handed out of `buffer`, and since the last reset (of earlier buffers too). */
  private used = 0;
  private handed = 0;
  /** Parts refused past partsBytesMax (those sections took buffers of their own). */
  overflows = 0;

  constructor(readonly partsBytesMax = 64 * 1024 * 1024) {}

  /** `bytes` of memory until the next reset, or null past the bound. */
  take(bytes: number): { buffer: ArrayBuffer; offset: number } | null {
    const size = (bytes + 7) & ~7;
    if (this.handed + size > this.partsBytesMax) {
      this.overflows++;
      return null;
    }
    if (this.used + size > this.buffer.byteLength) {
      // A larger one; parts handed out from the old one stay valid (their views hold it).
      this.buffer = new ArrayBuffer(Math.min(this.partsBytesMax, Math.max(2 * this.buffer.byteLength, this.handed + size, 1 << 20)));
      this.used = 0;
    }
    const offset = this.used;
    this.used += size;
    this.handed += size;
    return { buffer: this.buffer, offset };
  }

  /** Every part handed out is the caller's no more. */
  reset(): void {
    this.used = 0;
    this.handed = 0;
  }
}

/**
 * The columns of a packed section: `ends` as received (checked here as the unpacked columns'
 * are), `serverCount` the section's servers. Throws Reject when the bytes do not hold exactly
 * those entries or name a server beyond the list.
 */
export function unpackPoints(pack: Uint8Array, ends: Uint32Array, serverCount: number, arena: UnpackArena | null = null): { servers: Uint16Array; values: Float64Array } {
  const n = ends.length === 0 ? 0 : ends[ends.length - 1]!;
  if (n > sectionPointsMax) throw new Reject('bad_columns', `point_pack: ${n} points > ${sectionPointsMax} in one section`);
  // Both columns in one buffer: a backing store per section, not two (each one outside V8's heap
  // is memory the collector accounts for and frees apart), or a part of the caller's arena.
  const at = arena?.take(10 * n) ?? null;
  const buffer = at?.buffer ?? new ArrayBuffer(10 * n);
  const offset = at?.offset ?? 0;
  const values = new Float64Array(buffer, offset, n);
  const servers = new Uint16Array(buffer, offset + 8 * n, n);
  const r = new VarintReader(pack, 0, pack.length);
  let start = 0;
  for (let i = 0; i < ends.length; i++) {
    const end = ends[i]!;
    if (end <= start || end > n) throw new Reject('bad_columns', `point_pack: metric ${i} ends at ${end}, not within ${start + 1}..${n}`);
    if (r.pos >= pack.length) throw new Reject('bad_columns', `point_pack: metric ${i} of ${ends.length} is missing`);
    const mode = pack[r.pos++]!;
    if ((mode & ~(serversListed | rawValues | exponentBits)) !== 0 || ((mode & rawValues) !== 0 && (mode & exponentBits) !== 0)) {
      throw new Reject('bad_value', `point_pack: metric ${i} has mode 0x${mode.toString(16)}`);
    }
    if ((mode & serversListed) !== 0) {
      let s = 0;
      for (let k = start; k < end; k++) {
        s += unzigzag(r.next());
        // At once: a failed read takes no byte, and a hostile count would go on for millions.
        if (r.failed) throw new Reject('bad_columns', `point_pack: metric ${i}'s servers hold a bad or truncated varint`);
        if (s < 0 || s >= serverCount) throw new Reject('bad_value', `point_pack: point ${k} names server ${s} of ${serverCount}`);
        servers[k] = s;
      }
    } else {
      if (end - start > serverCount) throw new Reject('bad_value', `point_pack: metric ${i} has ${end - start} points for ${serverCount} servers`);
      for (let k = start; k < end; k++) servers[k] = k - start;
    }
    if ((mode & rawValues) !== 0) {
      const bytes = 8 * (end - start);
      if (r.pos + bytes > pack.length) throw new Reject('bad_columns', `point_pack: metric ${i}'s ${end - start} doubles overrun the pack`);
      new Uint8Array(values.buffer, values.byteOffset + 8 * start, bytes).set(pack.subarray(r.pos, r.pos + bytes));
      r.pos += bytes;
    } else {
      const scale = pow10[mode & exponentBits]!;
      const least = unzigzag(r.next());
      if (r.pos >= pack.length) throw new Reject('bad_columns', `point_pack: metric ${i}'s width is missing`);
      const w = pack[r.pos++]!;
      if (w > 4) throw new Reject('bad_value', `point_pack: metric ${i}'s offsets are ${w} bytes wide`);
      const c = end - start;
      let p = r.pos;
      if (p + c * w > pack.length) throw new Reject('bad_columns', `point_pack: metric ${i}'s ${c} offsets overrun the pack`);
      if (w === 0) values.fill(least / scale, start, end);
      else if (w === 1) for (let k = start; k < end; k++) values[k] = (least + pack[p++]!) / scale;
      else if (w === 2) {
        for (let k = start; k < end; k++, p += 2) values[k] = (least + (pack[p]! | (pack[p + 1]! << 8))) / scale;
      } else if (w === 3) {
        for (let k = start; k < end; k++, p += 3) values[k] = (least + (pack[p]! | (pack[p + 1]! << 8) | (pack[p + 2]! << 16))) / scale;
      } else {
        for (let k = start; k < end; k++, p += 4) values[k] = (least + (pack[p]! | (pack[p + 1]! << 8) | (pack[p + 2]! << 16)) + pack[p + 3]! * 0x1000000) / scale;
      }
      r.pos = p;
    }
    if (r.failed) throw new Reject('bad_columns', `point_pack: metric ${i} has a bad or truncated varint`);
    start = end;
  }
  if (r.pos !== pack.length) throw new Reject('bad_columns', `point_pack: ${pack.length - r.pos} bytes belong to no metric`);
  return { servers, values };
}
