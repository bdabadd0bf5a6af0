// Per-second aggregation at the edge (DESIGN §3). Columnar: one slot per series in typed
// arrays; a second's distribution observations sit in flat buffers until the second closes.
// Nothing here touches a socket or a clock: the caller says which second an observation
// belongs to and when a second closes.

import { KindCode } from '../schema/codec.js';
import { summaryCountMax } from '../schema/limits.js';
import { hashKey, hashName, isMetricName } from '../schema/names.js';
import { edgeLimits } from './limits.js';

export interface AggregatorOptions {
  seriesMax: number;
  observationsPerSecondMax: number;
  counterIdleSeconds: number;
  seriesEvictSeconds: number;
  /** Distinct members counted per set series per second (default edgeLimits). */
  setValuesPerSeriesMax?: number;
  /** Distinct (series, member) pairs held per second across all sets (default edgeLimits). */
  setValuesPerSecondMax?: number;
  /**
   * Name prefixes of the edge's own series (its counters, the host collector's readings): a
   * client's series may not take them (`reserved_name`), and the edge's own (observe with
   * `own`) have ownSeriesMax slots of their own, so a client filling seriesMax cannot silence
   * the counters that report it.
   */
  reservedPrefixes?: readonly string[];
  ownSeriesMax?: number;
}

/**
 * A StatsD set (`|s`) series: its value for a server-second is the number of distinct members
 * seen in that second, sent as a gauge (the wire has no set kind). Exact up to 64-bit member
 * hash collisions (chance ≈ n² / 2^65 for n members), and up to setValuesPerSeriesMax members per
 * series-second: beyond it the count stops there (a lower bound) and each line with a member
 * not yet counted is dropped as `set_values_limit`; when the second's shared table holds
 * setValuesPerSecondMax members, as `set_values_full`. Across servers (the rack's rollup, a
 * query's sum) the per-server counts add up, which over-counts members seen on several
 * servers: a union needs a mergeable distinct-count sketch (HyperLogLog) per summary.
 */
export const SetKind = 3;
/** The kind of a series at the edge: the wire kinds and sets (sent as gauges). */
export type SeriesKind = KindCode | typeof SetKind;

/**
 * Why an observation (or a series' second) was not sent; each is a counter
 * (`apm.edge.dropped.<reason>`). `overflow` (issue 16.4): the rack refuses a datagram holding a
 * non-finite value or sum, and with it every other series of the datagram, so a series whose
 * second would not be finite is not sent for that second and counted once here: a counter
 * whose sum, or a distribution whose positive or negative observations' sum, passes
 * ±Number.MAX_VALUE (±1.8e308; bounding both halves keeps every partial sum — a summary split
 * across datagrams, the rack's merge of them — finite too); a relative gauge update that would
 * leave the gauge non-finite is refused (the gauge keeps its value) and counted likewise. A
 * distribution's second whose count (its values' weights, 1 / rate each) would not fit the
 * wire's 32-bit count is not sent either, for the same reason (the rack's datagram check).
 */
export const dropReasons = {
  series_limit: 'a new series beyond --series-max',
  observations_full: 'distribution values beyond observationsPerSecondMax in one second',
  kind_conflict: 'a name already used with another type',
  hash_collision: 'a name whose 64-bit hash another name has',
  bad_name: 'a name outside [A-Za-z0-9_.:-]{1,128}',
  not_finite: 'a value that is not a finite number',
  overflow: 'a second whose sum would pass ±1.8e308, or whose count (sampled values weigh 1 / rate) 2³² − 1 (not sent)',
  late: 'an observation for a second already closed',
  reserved_name: "a client's name under a prefix of the edge's own series (apm.edge., and host. with the host collector)",
  set_values_limit: 'a set member beyond setValuesPerSeriesMax distinct ones in a series-second',
  set_values_full: 'a set member beyond setValuesPerSecondMax in one second across sets',
} as const;

export type DropReason = keyof typeof dropReasons;

/** A closed second as columns; the arrays are scratch space valid until the next close. */
export interface ClosedSecond {
  second: number;
  pointLen: number;
  pointSlots: Int32Array;
  pointKinds: Uint8Array;
  pointValues: Float64Array;
  distLen: number;
  distSlots: Int32Array;
  /** Distribution i's observations are values[distFrom[i] .. distTo[i]), sorted ascending, with weights. */
  distFrom: Int32Array;
  distTo: Int32Array;
  values: Float64Array;
  weights: Uint32Array;
}

const noSecond = -1;

/** Largest sum of a summary's positive (or negative) values: a millionth below the largest double, far more than any summing order's rounding. */
const sumMagnitudeMax = Number.MAX_VALUE * (1 - 2 ** -20);

export class Aggregator {
  readonly names: (string | null)[];
  readonly kinds: Uint8Array;
  /** (lo, hi) name hash per slot. */
  readonly hashes: Uint32Array;
  readonly createdSecond: Int32Array;
  readonly lastSeenSecond: Int32Array;
  private readonly slotByName = new Map<string, number>();
  private readonly slotByHash = new Map<string, number>();
  private readonly freeSlots: number[] = [];
  /** Open-addressing index from the FNV-1a hash of a name's bytes to its slot (StatsD path). */
  private readonly byteSlots: Int32Array;
  private readonly byteHash: Uint32Array;
  private nextSlot = 0;

  // Current second.
  private second = noSecond;
  private readonly touched: Int32Array;
  private touchedLen = 0;
  private readonly touchedIn: Int32Array; // second in which the slot was last touched
  private readonly value: Float64Array; // gauge: last value; counter: sum; set: distinct members
  private readonly gaugeLast: Float64Array; // survives seconds, for relative gauges
  private readonly obsCount: Int32Array;
  private readonly weighted: Uint8Array;
  private readonly obsSlot: Int32Array;
  private readonly obsValue: Float64Array;
  private readonly obsWeight: Uint32Array;
  private obsLen = 0;

  // Output scratch.
  private readonly out: ClosedSecond;
  private readonly order: Int32Array;
  /** Per distribution of the closing second: sums of its positive and negative observations. */
  private readonly sumPos: Float64Array;
  /** Per distribution of the closing second: its count (the sum of its values' weights). */
  private readonly weightSum: Float64Array;
  private readonly sumNeg: Float64Array;

  // Set members of the open second: open addressing over (slot, 64-bit member hash); an
  // entry is live when its epoch is the open second's (no clearing). Allocated on first use.
  private setSlot = new Int32Array(0);
  private setH1 = new Uint32Array(0);
  private setH2 = new Uint32Array(0);
  private setEpoch = new Int32Array(0);
  private setLen = 0;
  private epoch = 1;
  private readonly setPerSeriesMax: number;
  private readonly setPerSecondMax: number;

  readonly drops = Object.fromEntries(Object.keys(dropReasons).map((k) => [k, 0])) as Record<DropReason, number>;
  observations = 0;

  /** 1 for a slot of the edge's own series (see AggregatorOptions.reservedPrefixes). */
  private readonly own: Uint8Array;
  private ownCount = 0;
  private readonly ownMax: number;
  private readonly reserved: readonly string[];

  constructor(private readonly opts: AggregatorOptions) {
    this.ownMax = opts.ownSeriesMax ?? 0;
    this.reserved = opts.reservedPrefixes ?? [];
    const n = opts.seriesMax + this.ownMax;
    this.own = new Uint8Array(n);
    const m = opts.observationsPerSecondMax;
    this.setPerSeriesMax = opts.setValuesPerSeriesMax ?? edgeLimits.setValuesPerSeriesMax;
    this.setPerSecondMax = opts.setValuesPerSecondMax ?? edgeLimits.setValuesPerSecondMax;
    this.names = new Array<string | null>(n).fill(null);
    this.kinds = new Uint8Array(n);
    this.hashes = new Uint32Array(2 * n);
    this.createdSecond = new Int32Array(n);
    this.lastSeenSecond = new Int32Array(n);
    let size = 16;
    while (size < 2 * n) size *= 2;
    this.byteSlots = new Int32Array(size).fill(-1);
    this.byteHash = new Uint32Array(size);
    this.touched = new Int32Array(n);
    this.touchedIn = new Int32Array(n).fill(noSecond);
    this.value = new Float64Array(n);
    this.gaugeLast = new Float64Array(n);
    this.obsCount = new Int32Array(n);
    this.weighted = new Uint8Array(n);
    this.obsSlot = new Int32Array(m);
    this.obsValue = new Float64Array(m);
    this.obsWeight = new Uint32Array(m);
    this.order = new Int32Array(m);
    this.sumPos = new Float64Array(n);
    this.weightSum = new Float64Array(n);
    this.sumNeg = new Float64Array(n);
    this.out = {
      second: noSecond,
      pointLen: 0,
      pointSlots: new Int32Array(n),
      pointKinds: new Uint8Array(n),
      pointValues: new Float64Array(n),
      distLen: 0,
      distSlots: new Int32Array(n),
      distFrom: new Int32Array(n),
      distTo: new Int32Array(n),
      values: new Float64Array(m),
      weights: new Uint32Array(m),
    };
  }

  /** The second being aggregated, or −1 before the first observation. */
  get openSecond(): number {
    return this.second;
  }

  get seriesCount(): number {
    return this.slotByName.size;
  }

  slotOf(name: string): number | undefined {
    return this.slotByName.get(name);
  }

  slotOfHash(lo: number, hi: number): number | undefined {
    return this.slotByHash.get(hashKey(lo, hi));
  }

  /**
   * Records one observation of `second` (DESIGN §3). `weight` scales counters and repeats
   * distribution values (1 / sample rate); `relative` applies a gauge as a delta. Returns the
   * drop reason, or null when it was aggregated. The caller closes earlier seconds first.
   * `own`: one of the edge's own series (AggregatorOptions.reservedPrefixes).
   */
  observe(name: string, kind: KindCode, value: number, second: number, weight = 1, relative = false, own = false): DropReason | null {
    if (this.second === noSecond) this.second = second;
    if (second !== this.second) return this.drop('late');
    if (!Number.isFinite(value)) return this.drop('not_finite');
    const slot = this.slotFor(name, kind, second, own);
    if (slot < 0) return this.lastDrop;
    return this.observeSlot(slot, kind, value, second, weight, relative);
  }

  /**
   * The slot of the series named by latin1 bytes[start..end) (the StatsD hot path: no string
   * is made for a known name), or −1 when refused (the drop is counted).
   */
  slotForBytes(bytes: Uint8Array, start: number, end: number, kind: SeriesKind, second: number, values = 1): number {
    const slot = this.slotForBytesOnce(bytes, start, end, kind, second);
    // A refused series loses every value its line carried (DogStatsD packs several: name:1:2:3|d).
    if (slot < 0 && values > 1) this.drops[this.lastDrop] += values - 1;
    return slot;
  }

  private slotForBytesOnce(bytes: Uint8Array, start: number, end: number, kind: SeriesKind, second: number): number {
    let h = 0x811c9dc5;
    for (let i = start; i < end; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
    const mask = this.byteSlots.length - 1;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const slot = this.byteSlots[i]!;
      if (slot < 0) break;
      if (this.byteHash[i] !== h >>> 0) continue;
      const name = this.names[slot];
      if (name == null || name.length !== end - start) continue;
      let same = true;
      for (let k = 0; k < name.length && same; k++) same = name.charCodeAt(k) === bytes[start + k];
      if (!same) continue;
      if (this.own[slot] === 1) {
        this.drop('reserved_name');
        return -1;
      }
      if (this.kinds[slot] !== kind) {
        this.drop('kind_conflict');
        return -1;
      }
      return slot;
    }
    const name = Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start).toString('latin1');
    const slot = this.slotFor(name, kind, second);
    if (slot >= 0) this.indexBytes(slot, h >>> 0);
    return slot;
  }

  private indexBytes(slot: number, h: number): void {
    const mask = this.byteSlots.length - 1;
    let i = h & mask;
    while (this.byteSlots[i]! >= 0) i = (i + 1) & mask;
    this.byteSlots[i] = slot;
    this.byteHash[i] = h;
  }

  /** Records one observation of a known slot (see observe()). */
  observeSlot(slot: number, kind: KindCode, value: number, second: number, weight = 1, relative = false): DropReason | null {
    if (this.second === noSecond) this.second = second;
    if (second !== this.second) return this.drop('late');
    if (!Number.isFinite(value)) return this.drop('not_finite');
    if (kind === KindCode.Gauge && relative && !Number.isFinite(this.gaugeLast[slot]! + value)) return this.drop('overflow');
    // Before touch: a distribution touched with no value would close as a summary of count 0,
    // which the rack refuses with the whole datagram carrying it.
    if (kind === KindCode.Distribution && this.obsLen >= this.obsValue.length) return this.drop('observations_full');
    this.touch(slot, second);
    switch (kind) {
      case KindCode.Gauge:
        this.value[slot] = relative ? this.gaugeLast[slot]! + value : value;
        this.gaugeLast[slot] = this.value[slot]!;
        break;
      case KindCode.Counter:
        this.value[slot]! += value * weight;
        break;
      case KindCode.Distribution: {
        const w = Math.max(1, Math.round(weight));
        this.obsSlot[this.obsLen] = slot;
        this.obsValue[this.obsLen] = value;
        this.obsWeight[this.obsLen++] = w;
        this.obsCount[slot]! += 1;
        if (w !== 1) this.weighted[slot] = 1;
        break;
      }
    }
    this.observations++;
    return null;
  }

  /** Adds a member to a set series' second (the string form of observeSetBytes, for tests and cold paths). */
  observeSet(name: string, member: string, second: number): DropReason | null {
    if (this.second === noSecond) this.second = second;
    const slot = this.slotFor(name, SetKind, second);
    if (slot < 0) return this.lastDrop;
    const b = Buffer.from(member, 'latin1');
    return this.observeSetBytes(slot, b, 0, b.length, second);
  }

  /** Adds the member bytes[start..end) to set slot `slot`'s second: counted once however often it comes (see SetKind). */
  observeSetBytes(slot: number, bytes: Uint8Array, start: number, end: number, second: number): DropReason | null {
    if (this.second === noSecond) this.second = second;
    if (second !== this.second) return this.drop('late');
    if (this.setEpoch.length === 0) this.allocateSets();
    let h1 = 0x811c9dc5;
    let h2 = 0x9747b28c;
    for (let i = start; i < end; i++) {
      const c = bytes[i]!;
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h2 = Math.imul(h2 ^ c, 0x5bd1e995);
      h2 ^= h2 >>> 15;
    }
    h1 >>>= 0;
    h2 >>>= 0;
    const mask = this.setEpoch.length - 1;
    let i = (h1 ^ Math.imul(slot + 1, 0x9e3779b1)) & mask;
    for (; this.setEpoch[i] === this.epoch; i = (i + 1) & mask) {
      if (this.setSlot[i] === slot && this.setH1[i] === h1 && this.setH2[i] === h2) {
        this.observations++;
        return null;
      }
    }
    // A series whose every member of the second is dropped sends nothing rather than a 0.
    const counted = this.touchedIn[slot] === second ? this.value[slot]! : 0;
    if (counted >= this.setPerSeriesMax) return this.drop('set_values_limit');
    if (this.setLen >= this.setPerSecondMax) return this.drop('set_values_full');
    this.touch(slot, second);
    this.setEpoch[i] = this.epoch;
    this.setSlot[i] = slot;
    this.setH1[i] = h1;
    this.setH2[i] = h2;
    this.setLen++;
    this.value[slot]! += 1;
    this.observations++;
    return null;
  }

  /** The members table: a power of two at least twice setValuesPerSecondMax, so probes stay short and always end. */
  private allocateSets(): void {
    let size = 16;
    while (size < 2 * this.setPerSecondMax) size *= 2;
    this.setSlot = new Int32Array(size);
    this.setH1 = new Uint32Array(size);
    this.setH2 = new Uint32Array(size);
    this.setEpoch = new Int32Array(size);
  }

  /** Marks a slot as observed in `second`, resetting its per-second state on its first observation. */
  private touch(slot: number, second: number): void {
    this.lastSeenSecond[slot] = second;
    if (this.touchedIn[slot] === second) return;
    this.touchedIn[slot] = second;
    this.touched[this.touchedLen++] = slot;
    this.value[slot] = 0;
    this.obsCount[slot] = 0;
    this.weighted[slot] = 0;
  }

  private lastDrop: DropReason = 'late';

  private drop(reason: DropReason): DropReason {
    this.drops[reason]++;
    this.lastDrop = reason;
    return reason;
  }

  private slotFor(name: string, kind: SeriesKind, second: number, own = false): number {
    const known = this.slotByName.get(name);
    if (known !== undefined) {
      if (this.own[known] !== (own ? 1 : 0)) {
        this.drop('reserved_name');
        return -1;
      }
      if (this.kinds[known] !== kind) {
        this.drop('kind_conflict');
        return -1;
      }
      return known;
    }
    if (!isMetricName(name)) {
      this.drop('bad_name');
      return -1;
    }
    if (!own && this.reserved.length > 0 && this.reserved.some((p) => name.startsWith(p))) {
      this.drop('reserved_name');
      return -1;
    }
    // Client series take at most seriesMax slots, the edge's own at most ownMax: one never
    // takes the other's room.
    const full = own ? this.ownCount >= this.ownMax : this.slotByName.size - this.ownCount >= this.opts.seriesMax;
    const slot = full ? -1 : this.freeSlots.length > 0 ? this.freeSlots.pop()! : this.nextSlot < this.kinds.length ? this.nextSlot++ : -1;
    if (slot < 0) {
      this.drop('series_limit');
      return -1;
    }
    hashName(name, this.hashes, 2 * slot);
    const hk = hashKey(this.hashes[2 * slot]!, this.hashes[2 * slot + 1]!);
    if (this.slotByHash.has(hk)) {
      // Two names, one 64-bit hash: the rack could not tell them apart, so the newcomer is refused.
      this.freeSlots.push(slot);
      this.drop('hash_collision');
      return -1;
    }
    this.slotByName.set(name, slot);
    this.slotByHash.set(hk, slot);
    this.own[slot] = own ? 1 : 0;
    if (own) this.ownCount++;
    this.names[slot] = name;
    this.kinds[slot] = kind;
    this.createdSecond[slot] = second;
    this.gaugeLast[slot] = 0;
    this.touchedIn[slot] = noSecond;
    return slot;
  }

  /**
   * Closes the open second and starts `next`: returns its summaries as columns (DESIGN §3),
   * including a 0 for every counter seen in the last counterIdleSeconds but idle now.
   */
  close(next: number): ClosedSecond {
    const out = this.out;
    const second = this.second;
    out.second = second;
    out.pointLen = 0;
    out.distLen = 0;
    if (second !== noSecond) {
      this.emitTouched(out);
      this.emitIdleCounters(out, second);
      this.sortObservations(out);
      this.evict(second);
    }
    this.second = next;
    this.touchedLen = 0;
    this.obsLen = 0;
    this.setLen = 0;
    this.epoch++;
    return out;
  }

  private emitTouched(out: ClosedSecond): void {
    for (let i = 0; i < this.touchedLen; i++) {
      const slot = this.touched[i]!;
      const kind = this.kinds[slot]!;
      if (kind === KindCode.Distribution) {
        out.distSlots[out.distLen++] = slot;
      } else if (!Number.isFinite(this.value[slot]!)) {
        this.drops.overflow++; // a counter's sum past ±MAX_VALUE (see DropReason)
      } else {
        out.pointSlots[out.pointLen] = slot;
        out.pointKinds[out.pointLen] = kind === SetKind ? KindCode.Gauge : kind;
        out.pointValues[out.pointLen++] = this.value[slot]!;
      }
    }
  }

  private emitIdleCounters(out: ClosedSecond, second: number): void {
    for (let slot = 0; slot < this.nextSlot; slot++) {
      if (this.names[slot] === null || this.kinds[slot] !== KindCode.Counter || this.touchedIn[slot] === second) continue;
      if (second - this.lastSeenSecond[slot]! > this.opts.counterIdleSeconds) continue;
      out.pointSlots[out.pointLen] = slot;
      out.pointKinds[out.pointLen] = KindCode.Counter;
      out.pointValues[out.pointLen++] = 0;
    }
  }

  /**
   * Groups observations by series (counting sort), drops the series whose sums overflow
   * (see DropReason), then sorts each series' values.
   */
  private sortObservations(out: ClosedSecond): void {
    let at = 0;
    for (let i = 0; i < out.distLen; i++) {
      const slot = out.distSlots[i]!;
      out.distFrom[i] = at;
      out.distTo[i] = at; // used as the fill cursor below
      at += this.obsCount[slot]!;
      this.obsCount[slot] = i; // slot → its dist index, until the next touch resets it
      this.sumPos[i] = 0;
      this.sumNeg[i] = 0;
      this.weightSum[i] = 0;
    }
    for (let j = 0; j < this.obsLen; j++) {
      const d = this.obsCount[this.obsSlot[j]!]!;
      const k = out.distTo[d]!++;
      const v = this.obsValue[j]!;
      const w = this.obsWeight[j]!;
      out.values[k] = v;
      out.weights[k] = w;
      if (v > 0) this.sumPos[d]! += v * w;
      else this.sumNeg[d]! += v * w;
      this.weightSum[d]! += w;
    }
    let kept = 0;
    for (let i = 0; i < out.distLen; i++) {
      // The packetizer sums a summary sorted (negatives first) and compensated, in chunks of
      // sorted runs: every partial sum then lies within [sumNeg, sumPos], whatever the order
      // rounded them to here. Both must stay clear of the largest double by more than any
      // rounding of the order can move them (before: only finite here, and 1.8e308, 9e291, 9e291
      // went out with a NaN sum that made the rack refuse the whole datagram).
      if (!(this.sumPos[i]! <= sumMagnitudeMax && -this.sumNeg[i]! <= sumMagnitudeMax) || this.weightSum[i]! > summaryCountMax) {
        this.drops.overflow++;
        continue;
      }
      out.distSlots[kept] = out.distSlots[i]!;
      out.distFrom[kept] = out.distFrom[i]!;
      out.distTo[kept++] = out.distTo[i]!;
    }
    out.distLen = kept;
    for (let i = 0; i < out.distLen; i++) {
      const from = out.distFrom[i]!;
      const to = out.distTo[i]!;
      if (this.weighted[out.distSlots[i]!] === 0) out.values.subarray(from, to).sort();
      else this.sortWeighted(out, from, to);
    }
  }

  private sortWeighted(out: ClosedSecond, from: number, to: number): void {
    const n = to - from;
    const order = this.order.subarray(0, n);
    for (let i = 0; i < n; i++) order[i] = from + i;
    order.sort((a, b) => out.values[a]! - out.values[b]!);
    const vals = Float64Array.from(order, (k) => out.values[k]!);
    const ws = Uint32Array.from(order, (k) => out.weights[k]!);
    out.values.set(vals, from);
    out.weights.set(ws, from);
  }

  private evict(second: number): void {
    let evicted = 0;
    for (let slot = 0; slot < this.nextSlot; slot++) {
      const name = this.names[slot];
      if (name == null || second - this.lastSeenSecond[slot]! <= this.opts.seriesEvictSeconds) continue;
      this.slotByName.delete(name);
      this.slotByHash.delete(hashKey(this.hashes[2 * slot]!, this.hashes[2 * slot + 1]!));
      this.names[slot] = null;
      if (this.own[slot] === 1) this.ownCount--;
      this.own[slot] = 0;
      this.freeSlots.push(slot);
      evicted++;
    }
    if (evicted > 0) this.rebuildByteIndex();
  }

  /** Open addressing has no cheap delete: after evictions the byte index is rebuilt (rare). */
  private rebuildByteIndex(): void {
    this.byteSlots.fill(-1);
    for (let slot = 0; slot < this.nextSlot; slot++) {
      const name = this.names[slot];
      if (name == null) continue;
      let h = 0x811c9dc5;
      for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
      this.indexBytes(slot, h >>> 0);
    }
  }
}
