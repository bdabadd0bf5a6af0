// The head (issue 12): what a shard holds in memory before it becomes rows, metric-major.
// One MetricHead per (block, metric, rack): that metric's points for the rack's servers as a
// dense server × second matrix, filled section by section — a section carries a metric's column
// for every server of the rack, in the same server order each second — plus any summaries, and
// reading one metric touches that metric's heads only. buildRow() turns a head into a row
// (servers ascending, each one's seconds ascending), merging an already stored row when late
// data arrives, into what core/block.ts encodes.

import { summaryCountMax } from '../schema/limits.js';
import { SketchAccumulator } from '../schema/sketch.js';
import { summaryColumns, trimSummaries, type DecodedRow, type RowInput, type SummaryColumns } from './block.js';

/** Growable summary columns with their sketches copied into one arena. */
class Summaries {
  n = 0;
  sid = new Int32Array(0);
  sec = new Uint16Array(0);
  count = new Float64Array(0);
  sum = new Float64Array(0);
  min = new Float64Array(0);
  max = new Float64Array(0);
  start = new Uint32Array(0);
  end = new Uint32Array(0);
  arena = new Uint8Array(0);
  arenaUsed = 0;

  get bytes(): number {
    return this.sid.length * 60 + this.arena.length;
  }

  add(sid: number, sec: number, count: number, sum: number, min: number, max: number, src: Uint8Array, from: number, to: number): void {
    if (this.n === this.sid.length) this.grow(Math.max(8, this.n * 2));
    const len = to - from;
    if (this.arenaUsed + len > this.arena.length) {
      const a = new Uint8Array(Math.max(256, this.arena.length * 2, this.arenaUsed + len));
      a.set(this.arena.subarray(0, this.arenaUsed));
      this.arena = a;
    }
    this.arena.set(src.subarray(from, to), this.arenaUsed);
    const i = this.n++;
    this.sid[i] = sid;
    this.sec[i] = sec;
    this.count[i] = count;
    this.sum[i] = sum;
    this.min[i] = min;
    this.max[i] = max;
    this.start[i] = this.arenaUsed;
    this.end[i] = this.arenaUsed += len;
  }

  private grow(cap: number): void {
    const g = <T extends Int32Array | Uint16Array | Float64Array | Uint32Array>(a: T, make: (n: number) => T): T => {
      const b = make(cap);
      b.set(a as never);
      return b;
    };
    this.sid = g(this.sid, (n) => new Int32Array(n));
    this.sec = g(this.sec, (n) => new Uint16Array(n));
    this.count = g(this.count, (n) => new Float64Array(n));
    this.sum = g(this.sum, (n) => new Float64Array(n));
    this.min = g(this.min, (n) => new Float64Array(n));
    this.max = g(this.max, (n) => new Float64Array(n));
    this.start = g(this.start, (n) => new Uint32Array(n));
    this.end = g(this.end, (n) => new Uint32Array(n));
  }
}

/** A head's point memory: values second-major (slotsCap per second) and its slots' server ids. */
interface HeadColumns {
  vals: Float64Array;
  sids: Int32Array;
}

/**
 * Point memory for heads: that of written heads is kept for new ones of the same capacity (each
 * minute a live fleet's heads are written and as many new ones start), and new memory is carved
 * from 1 MiB slabs. Allocating a head's typed arrays one by one cost ~115 µs a head (measured
 * with the former three point columns: 16,000 heads 1.8 s; the same bytes as slabs: 0.35 s with
 * first touch) — a tenth of ingest CPU. A slab lives while any of its heads does; heads of one
 * slab start together and are written together (one block), so a slab is not pinned long.
 * Bounded in bytes; beyond it memory goes to the collector.
 */
export class ColumnPool {
  private readonly free = new Map<number, HeadColumns[]>();
  private bytes = 0;
  private slab = new ArrayBuffer(0);
  private slabUsed = 0;

  /**
   * `room`: bytes the pool may hold now besides `bytesMax` (the store passes what its head bound
   * leaves free, so live heads and kept columns together stay within the head's memory bound).
   */
  constructor(
    readonly bytesMax: number,
    private readonly room: () => number = () => Number.POSITIVE_INFINITY,
  ) {}

  /** Bytes of columns kept for reuse. */
  get keptBytes(): number {
    return this.bytes;
  }

  /**
   * Lets go of kept columns until `bytes` are freed or none is left (they go to the collector):
   * live heads come first in the head's bound. Returns the bytes let go.
   */
  shed(bytes: number): number {
    let freed = 0;
    for (const [key, list] of this.free) {
      while (list.length > 0 && freed < bytes) {
        const c = list.pop()!;
        const b = columnsBytes(c.sids.length, c.vals.length / c.sids.length);
        this.bytes -= b;
        freed += b;
      }
      if (list.length === 0) this.free.delete(key);
      if (freed >= bytes) break;
    }
    return freed;
  }

  /** Columns for slotsCap servers × blockSeconds; their contents are left over (the head fills what it uses). */
  take(slotsCap: number, blockSeconds: number): HeadColumns {
    const c = this.free.get(poolKey(slotsCap, blockSeconds))?.pop();
    if (c !== undefined) {
      this.bytes -= columnsBytes(slotsCap, blockSeconds);
      return c;
    }
    return this.carve(slotsCap, blockSeconds);
  }

  give(c: HeadColumns): void {
    const cap = c.sids.length;
    const blockSeconds = c.vals.length / cap;
    const bytes = columnsBytes(cap, blockSeconds);
    if (this.bytes + bytes > Math.min(this.bytesMax, this.room())) return;
    const key = poolKey(cap, blockSeconds);
    let list = this.free.get(key);
    if (list === undefined) this.free.set(key, (list = []));
    list.push(c);
    this.bytes += bytes;
  }

  /** Both columns in one stretch of a slab (values first: 8-byte aligned). */
  private carve(slotsCap: number, blockSeconds: number): HeadColumns {
    const bytes = columnsBytes(slotsCap, blockSeconds);
    let buf = this.slab;
    let at = this.slabUsed;
    if (bytes > slabBytes / 4) {
      buf = new ArrayBuffer(bytes);
      at = 0;
    } else {
      if (at + bytes > buf.byteLength) {
        this.slab = buf = new ArrayBuffer(slabBytes);
        at = 0;
      }
      this.slabUsed = at + bytes;
    }
    const n = slotsCap * blockSeconds;
    return { vals: new Float64Array(buf, at, n), sids: new Int32Array(buf, at + n * 8, slotsCap) };
  }
}

const slabBytes = 1 << 20;
/** Seconds of a block are < 2^16 (rows keep them as Uint16). */
const poolKey = (slotsCap: number, blockSeconds: number) => slotsCap * 65_536 + blockSeconds;
const columnsBytes = (slotsCap: number, blockSeconds: number) => slotsCap * blockSeconds * 8 + Math.ceil(slotsCap / 2) * 8;

/** Server slots found by a linear search up to this many; past it by a map. */
const linearSlotsMax = 8;
/** About what a Map entry costs (V8's ordered hash table: key, value, chain, bucket share, growth slack). */
export const indexEntryBytes = 48;

export interface MetricHeadOptions {
  kind: number;
  metricLo: number;
  metricHi: number;
  rackId: number;
  blockSeconds: number;
  /** Where point memory comes from and goes back to; null: carved, never kept (tests). */
  pool: ColumnPool | null;
}

/**
 * One metric × one rack × one block in memory. Points are dense: a slot per server (in order of
 * first appearance) and a matrix of values, vals[second × slotsCap + slot], NaN where absent —
 * 8 B a cell instead of 14 B an appended (server, second, value), no sort when the row is built.
 * Second-major, so that a section (one second, the rack's servers in order) writes one stretch;
 * buildRow reads a server's seconds with a stride, once per block.
 * Values that reach it are finite (Store.toHead refuses the section decoder's `pointBad`), so
 * NaN is free to mean "absent". Seconds are filled with NaN as sections first reach them
 * (sections come second by second): rows at and past `secondsFilled` hold leftovers.
 */
export class MetricHead {
  readonly kind: number;
  readonly metricLo: number;
  readonly metricHi: number;
  readonly rackId: number;
  readonly blockSeconds: number;
  /** Cells holding a value: the head's points, each (server, second) once. */
  points = 0;
  /** Slot → server id; slots [0, slotsN) are in use. */
  slotSids: Int32Array = noSids;
  slotsN = 0;
  slotsCap = 0;
  /** vals[second × slotsCap + slot]: the value, or NaN when none came. */
  vals: Float64Array = noVals;
  /** Seconds [0, secondsFilled) are initialised. */
  secondsFilled = 0;
  /** Slot the next entry of the section probably belongs to (a rack lists its servers in the same order each second). */
  private cursor = 0;
  /** vals index of the current section's second, slot 0. */
  private rowAt = 0;
  private second = 0;
  /** Server id → slot, once there are more than linearSlotsMax slots. */
  private slotIndex: Map<number, number> | null = null;
  private readonly pool: ColumnPool | null;
  /** Distribution summaries and the rack's rollups; most heads (gauges, counters) never have any. */
  private distCols: Summaries | null = null;
  private rollupCols: Summaries | null = null;
  /** Newest WAL sequence whose entries are in this head (a stored row records it: replay skips what a row holds). */
  walSeq = 0;

  constructor(o: MetricHeadOptions) {
    this.kind = o.kind;
    this.metricLo = o.metricLo;
    this.metricHi = o.metricHi;
    this.rackId = o.rackId;
    this.blockSeconds = o.blockSeconds;
    this.pool = o.pool;
  }

  /** Hands the point memory back to the pool (the head is written and gone). */
  release(): void {
    if (this.slotsCap > 0) this.pool?.give({ sids: this.slotSids, vals: this.vals });
    this.slotsCap = this.slotsN = this.secondsFilled = this.points = 0;
    this.slotSids = noSids;
    this.vals = noVals;
    this.slotIndex = null;
  }

  get dist(): Summaries {
    return this.distCols ?? noEntries;
  }

  get rollup(): Summaries {
    return this.rollupCols ?? noEntries;
  }

  /** Appends a server's summary of one second (sketch bytes copied). */
  addDist(sid: number, sec: number, count: number, sum: number, min: number, max: number, src: Uint8Array, from: number, to: number): void {
    (this.distCols ??= new Summaries()).add(sid, sec, count, sum, min, max, src, from, to);
  }

  /** Appends the rack's rollup of one second. */
  addRollup(sec: number, count: number, sum: number, min: number, max: number, src: Uint8Array, from: number, to: number): void {
    (this.rollupCols ??= new Summaries()).add(-1, sec, count, sum, min, max, src, from, to);
  }

  /** Approximate bytes held (for the head's memory bound). */
  get bytes(): number {
    const index = this.slotIndex === null ? 0 : this.slotsN * indexEntryBytes;
    return (this.slotsCap > 0 ? columnsBytes(this.slotsCap, this.blockSeconds) : 0) + index + (this.distCols?.bytes ?? 0) + (this.rollupCols?.bytes ?? 0) + 200;
  }

  /**
   * Starts a section's points of second `sec` (at most `entries` of them): the first section
   * sizes the slots for its entries, and the cursor restarts. Call before addPoint.
   */
  openSection(sec: number, entries: number): void {
    if (sec < 0 || sec >= this.blockSeconds) throw new Error(`BUG: second ${sec} outside a block of ${this.blockSeconds} s`);
    if (this.slotsCap === 0) this.allot(Math.max(1, entries));
    if (sec >= this.secondsFilled) {
      this.vals.fill(NaN, this.secondsFilled * this.slotsCap, (sec + 1) * this.slotsCap);
      this.secondsFilled = sec + 1;
    }
    this.second = sec;
    this.rowAt = sec * this.slotsCap;
    this.cursor = 0;
  }

  /**
   * Server `sid`'s value (finite) for the open section's second. A value the head holds for that
   * (server, second) already is replaced: the newest arrival wins, as it does once the block is
   * a row (a merge takes the newer), so a correction (a re-import) does not depend on whether
   * its block was written yet. Returns whether the cell was empty.
   */
  addPoint(sid: number, v: number): boolean {
    let s = this.cursor;
    if (s >= this.slotsN || this.slotSids[s] !== sid) s = this.slotOf(sid);
    this.cursor = s + 1;
    const i = this.rowAt + s;
    const empty = this.vals[i] !== this.vals[i];
    this.vals[i] = v;
    if (empty) this.points++;
    return empty;
  }

  /** The slot of server sid, made if it has none. */
  private slotOf(sid: number): number {
    const n = this.slotsN;
    if (n <= linearSlotsMax) {
      for (let s = 0; s < n; s++) if (this.slotSids[s] === sid) return s;
    } else {
      let index = this.slotIndex;
      if (index === null) {
        index = this.slotIndex = new Map();
        for (let s = 0; s < n; s++) index.set(this.slotSids[s]!, s);
      }
      const s = index.get(sid);
      if (s !== undefined) return s;
    }
    if (n === this.slotsCap) this.grow(n * 2);
    this.slotSids[n] = sid;
    this.slotIndex?.set(sid, n);
    this.slotsN = n + 1;
    return n;
  }

  private allot(slotsCap: number): void {
    const c = (this.pool ?? unpooled).take(slotsCap, this.blockSeconds);
    this.slotSids = c.sids;
    this.vals = c.vals;
    this.slotsCap = slotsCap;
  }

  /** Room for slotsCap servers: the filled seconds move to a larger matrix, the new slots absent. */
  private grow(slotsCap: number): void {
    const oldCap = this.slotsCap;
    const oldVals = this.vals;
    const oldSids = this.slotSids;
    this.allot(slotsCap);
    this.slotSids.set(oldSids.subarray(0, this.slotsN));
    for (let sec = 0; sec < this.secondsFilled; sec++) {
      const to = sec * slotsCap;
      this.vals.set(oldVals.subarray(sec * oldCap, sec * oldCap + this.slotsN), to);
      this.vals.fill(NaN, to + this.slotsN, to + slotsCap);
    }
    this.rowAt = this.second * slotsCap;
    this.pool?.give({ sids: oldSids, vals: oldVals });
  }

  /** Slots in ascending order of their servers' ids. */
  slotsByServer(): Int32Array {
    const order = new Int32Array(this.slotsN);
    let ascending = true;
    for (let s = 0; s < this.slotsN; s++) {
      order[s] = s;
      if (s > 0 && this.slotSids[s]! < this.slotSids[s - 1]!) ascending = false;
    }
    if (!ascending) order.sort((a, b) => this.slotSids[a]! - this.slotSids[b]!);
    return order;
  }
}

const noSids = new Int32Array(0);
const noVals = new Float64Array(0);

// Summary entries are sorted (points need not: the head's matrix is in order already).
// Sort keys pack (server, second, arrival index) into one exact double: server ids < 2^20,
// seconds < 2^16, entries per row < 2^17 (a rack of 1,024 servers × 60 s × 2 is 122,880).
const idxBits = 131_072;
const secBits = 65_536;
const keyServersMax = 1 << 20;

/** Entry order by (server, second), stable (earlier arrivals first). */
function orderBy(sid: Int32Array, sec: Uint16Array, n: number): Int32Array {
  const fast = byServerIfSecondsAscend(sid, sec, n);
  if (fast !== null) return fast;
  const order = new Int32Array(n);
  if (n < idxBits && n > 0) {
    const keys = new Float64Array(n);
    let sorted = true;
    for (let i = 0; i < n; i++) {
      if (sid[i]! >= keyServersMax) sorted = false;
      keys[i] = (sid[i]! * secBits + sec[i]!) * idxBits + i;
    }
    if (sorted) {
      keys.sort();
      for (let i = 0; i < n; i++) order[i] = keys[i]! % idxBits;
      return order;
    }
  }
  for (let i = 0; i < n; i++) order[i] = i;
  return order.sort((a, b) => sid[a]! - sid[b]! || sec[a]! - sec[b]! || a - b);
}

/**
 * The common case: entries arrived second by second, so their seconds never decrease and a
 * stable counting sort by server gives (server, second) order — linear, no comparison sort.
 * Null when seconds go back (late data, a merged stored row) or the servers span too widely.
 */
function byServerIfSecondsAscend(sid: Int32Array, sec: Uint16Array, n: number): Int32Array | null {
  if (n === 0) return new Int32Array(0);
  let lo = sid[0]!;
  let hi = lo;
  for (let i = 1; i < n; i++) {
    if (sec[i]! < sec[i - 1]!) return null;
    const v = sid[i]!;
    if (v < lo) lo = v;
    else if (v > hi) hi = v;
  }
  if (hi - lo >= countingSpanMax) return null;
  const start = new Int32Array(hi - lo + 2);
  for (let i = 0; i < n; i++) start[sid[i]! - lo + 1]! += 1;
  for (let k = 1; k < start.length; k++) start[k]! += start[k - 1]!;
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[start[sid[i]! - lo]!++] = i;
  return order;
}

/** Widest range of server ids the counting sort takes (a table of this many counters). */
const countingSpanMax = 1 << 16;

/**
 * The row of a head, merged with the row already stored for it (late data): per server its
 * seconds ascending; of two points for one (server, second) the head's wins (it is newer);
 * summaries of one (server, second) merge (the rack sends each part once).
 */
export function buildRow(h: MetricHead, old: DecodedRow | undefined, blockSeconds: number, acc: SketchAccumulator, dropped: SummaryDrops = uncounted): RowInput {
  if (blockSeconds !== h.blockSeconds) throw new Error(`BUG: building a row of ${blockSeconds} s from a head of ${h.blockSeconds} s`);
  const dist = withOld(h.dist, old, (o) => o.dist, (o, j) => [o.distStart[j]!, o.distStart[j + 1]!]);
  const rollup = withOld(h.rollup, old, (o) => o.rollup, null);
  const dOrder = orderBy(dist.sid, dist.sec, dist.n);
  const slots = h.slotsByServer();
  const ids = rowServers(h, slots, old, dist, dOrder);
  const n = ids.length;
  const oldIds = old?.serverIds ?? noIds;
  const oldPoints = old?.pointVals.length ?? 0;
  const pointStart = new Int32Array(n + 1);
  const pointSecs = new Uint16Array(h.points + oldPoints);
  const pointVals = new Float64Array(h.points + oldPoints);
  const distStart = new Int32Array(n + 1);
  const dOut = dist.n === 0 ? noSummaries : summaryColumns(dist.n);
  let a = 0;
  let b = 0;
  let di = 0;
  let po = 0;
  let dn = 0;
  for (let j = 0; j < n; j++) {
    const sid = ids[j]!;
    pointStart[j] = po;
    const slot = a < slots.length && h.slotSids[slots[a]!] === sid ? slots[a++]! : -1;
    while (b < oldIds.length && oldIds[b]! < sid) b++;
    let o0 = 0;
    let o1 = 0;
    if (old !== undefined && b < oldIds.length && oldIds[b] === sid) {
      o0 = old.pointStart[b]!;
      o1 = old.pointStart[b + 1]!;
    }
    po = putPoints(h, slot, old, o0, o1, pointSecs, pointVals, po);
    distStart[j] = dn;
    const dFirst = dn;
    for (; di < dist.n && dist.sid[dOrder[di]!] === sid; di++) {
      // Two parts of one server-second whose counts add up past the wire's 32 bits (or sums past a double): the later is refused.
      if (mergeOverflows(dist, dOrder[di]!, dOut, dn, dFirst)) dropped.summaries_dropped_count_overflow++;
      else dn = putSummary(dist, dOrder[di]!, dOut, dn, dFirst, acc);
    }
  }
  pointStart[n] = po;
  distStart[n] = dn;
  const rOrder = orderBy(new Int32Array(rollup.n), rollup.sec, rollup.n);
  const rOut = rollup.n === 0 ? noSummaries : summaryColumns(rollup.n);
  let rn = 0;
  // A second whose rollups add up past the wire's 32 bits keeps none: its servers' summaries answer it.
  let noRollup = -1;
  for (let i = 0; i < rollup.n; i++) {
    const e = rOrder[i]!;
    if (rollup.sec[e] === noRollup) continue;
    if (mergeOverflows(rollup, e, rOut, rn, 0)) {
      dropped.summaries_dropped_count_overflow++;
      noRollup = rollup.sec[e]!;
      rn--;
    } else rn = putSummary(rollup, e, rOut, rn, 0, acc);
  }
  return {
    kind: old?.kind ?? h.kind,
    blockSeconds,
    serverIds: Uint32Array.from(ids),
    serversOmitted: 0,
    entries: 'values',
    // A head row has none (its readers read its values); encodeRow computes a stored row's.
    aggregates: null,
    pointStart,
    pointSecs: pointSecs.subarray(0, po),
    pointVals: pointVals.subarray(0, po),
    distStart,
    dist: dn === 0 ? noSummaries : trimSummaries(dOut, dn),
    rollup: rn === 0 ? noSummaries : trimSummaries(rOut, rn),
    rollupFrom: 0,
    rollupTo: rn,
  };
}

/** Servers of the row, ascending: the head's, the stored row's with points, and the summaries'. */
function rowServers(h: MetricHead, slots: Int32Array, old: DecodedRow | undefined, dist: FlatSummaries, dOrder: Int32Array): number[] {
  const ids: number[] = [];
  const oldIds = old?.serverIds ?? noIds;
  let a = 0;
  let b = 0;
  let c = 0;
  for (;;) {
    // A stored server without points comes in through the summaries, if at all.
    while (old !== undefined && b < oldIds.length && old.pointStart[b + 1] === old.pointStart[b]) b++;
    const hs = a < slots.length ? h.slotSids[slots[a]!]! : Infinity;
    const os = b < oldIds.length ? oldIds[b]! : Infinity;
    const ds = c < dist.n ? dist.sid[dOrder[c]!]! : Infinity;
    const sid = Math.min(hs, os, ds);
    if (sid === Infinity) return ids;
    if (ids.length === 0 || ids[ids.length - 1]! < sid) ids.push(sid);
    if (hs === sid) a++;
    else if (os === sid) b++;
    else c++;
  }
}

/**
 * One server's points into pointSecs/pointVals at po, seconds ascending: the head's (slot, or −1
 * for none) merged with the stored row's [o0, o1), the head's winning a second both have.
 */
function putPoints(h: MetricHead, slot: number, old: DecodedRow | undefined, o0: number, o1: number, pointSecs: Uint16Array, pointVals: Float64Array, po: number): number {
  let k = o0;
  if (slot >= 0 && old !== undefined) {
    const vals = h.vals;
    const cap = h.slotsCap;
    const oSecs = old.pointSecs;
    for (let sec = 0, i = slot; sec < h.secondsFilled; sec++, i += cap) {
      const v = vals[i]!;
      if (v !== v) continue;
      for (; k < o1 && oSecs[k]! < sec; k++, po++) {
        pointSecs[po] = oSecs[k]!;
        pointVals[po] = old.pointVals[k]!;
      }
      if (k < o1 && oSecs[k] === sec) k++;
      pointSecs[po] = sec;
      pointVals[po++] = v;
    }
  } else if (slot >= 0) {
    const vals = h.vals;
    const cap = h.slotsCap;
    for (let sec = 0, i = slot; sec < h.secondsFilled; sec++, i += cap) {
      const v = vals[i]!;
      if (v !== v) continue;
      pointSecs[po] = sec;
      pointVals[po++] = v;
    }
  }
  if (old !== undefined && k < o1) {
    pointSecs.set(old.pointSecs.subarray(k, o1), po);
    pointVals.set(old.pointVals.subarray(k, o1), po);
    po += o1 - k;
  }
  return po;
}

const noIds = new Uint32Array(0);

/** Flat summary entries: the head's, then the stored row's (server −1 for rollups). */
interface FlatSummaries {
  n: number;
  sid: Int32Array;
  sec: Uint16Array;
  count: Float64Array;
  sum: Float64Array;
  min: Float64Array;
  max: Float64Array;
  src: Uint8Array[];
  start: Uint32Array;
  end: Uint32Array;
}

function withOld(h: Summaries, old: DecodedRow | undefined, pick: (o: DecodedRow) => SummaryColumns, range: ((o: DecodedRow, j: number) => [number, number]) | null): FlatSummaries {
  const o = old === undefined ? undefined : pick(old);
  const on = o?.secs.length ?? 0;
  const n = h.n + on;
  // The stored row's summaries first, then the head's: in the order they came, as if the row had
  // not been written yet. (Head first, a part refused for passing what a summary carries was the
  // earlier one when its row had been written, the later one otherwise: which value a server-
  // second kept depended on when its row was written; and sums of three parts were added in
  // another order.)
  const f: FlatSummaries = {
    n,
    sid: new Int32Array(n),
    sec: new Uint16Array(n),
    count: new Float64Array(n),
    sum: new Float64Array(n),
    min: new Float64Array(n),
    max: new Float64Array(n),
    src: new Array<Uint8Array>(n).fill(h.arena, on, n),
    start: new Uint32Array(n),
    end: new Uint32Array(n),
  };
  f.sid.set(h.sid.subarray(0, h.n), on);
  f.sec.set(h.sec.subarray(0, h.n), on);
  f.count.set(h.count.subarray(0, h.n), on);
  f.sum.set(h.sum.subarray(0, h.n), on);
  f.min.set(h.min.subarray(0, h.n), on);
  f.max.set(h.max.subarray(0, h.n), on);
  f.start.set(h.start.subarray(0, h.n), on);
  f.end.set(h.end.subarray(0, h.n), on);
  if (o === undefined || old === undefined || on === 0) return f;
  f.sec.set(o.secs, 0);
  f.count.set(o.count, 0);
  f.sum.set(o.sum, 0);
  f.min.set(o.min, 0);
  f.max.set(o.max, 0);
  f.start.set(o.sketchStart, 0);
  f.end.set(o.sketchEnd, 0);
  for (let i = 0; i < on; i++) f.src[i] = o.sketchSrc[i]!;
  if (range === null) f.sid.fill(-1, 0, on);
  else
    for (let j = 0; j < old.serverIds.length; j++) {
      const [from, to] = range(old, j);
      f.sid.fill(old.serverIds[j]!, from, to);
    }
  return f;
}

/** Summaries a row leaves out (the store's counters; a read of the head counts into a scratch one). */
export interface SummaryDrops {
  /** Summaries of one series-second whose counts add up past 2³² − 1 (a count and a sketch bin must fit 32 bits) or whose sums overflow. */
  summaries_dropped_count_overflow: number;
}

/** Where a read of the head (not a row written) counts what it leaves out: nowhere that is reported. */
const uncounted: SummaryDrops = { summaries_dropped_count_overflow: 0 };

/**
 * Whether putSummary would merge entry e into out[n − 1] past what a summary carries: a count
 * past 32 bits, or a sum past ±1.8e308 (before: stored as Infinity, every average and sum over
 * it Infinity; the decoder refuses non-finite sums, the merge made one).
 */
function mergeOverflows(g: FlatSummaries, e: number, out: SummaryColumns, n: number, groupStart: number): boolean {
  return n > groupStart && out.secs[n - 1] === g.sec[e] && (out.count[n - 1]! + g.count[e]! > summaryCountMax || !Number.isFinite(out.sum[n - 1]! + g.sum[e]!));
}

/** Appends entry e to out at n, merging it into out[n − 1] when that is the same second. */
function putSummary(g: FlatSummaries, e: number, out: SummaryColumns, n: number, groupStart: number, acc: SketchAccumulator): number {
  if (n > groupStart && out.secs[n - 1] === g.sec[e]) {
    const k = n - 1;
    acc.reset();
    acc.addEncoded(out.sketchSrc[k]!, out.sketchStart[k]!, out.sketchEnd[k]!);
    acc.addEncoded(g.src[e]!, g.start[e]!, g.end[e]!);
    const merged = new Uint8Array(acc.encodedBytes());
    acc.encodeInto(merged, 0);
    out.count[k]! += g.count[e]!;
    out.sum[k]! += g.sum[e]!;
    out.min[k] = Math.min(out.min[k]!, g.min[e]!);
    out.max[k] = Math.max(out.max[k]!, g.max[e]!);
    out.sketchSrc[k] = merged;
    out.sketchStart[k] = 0;
    out.sketchEnd[k] = merged.length;
    return n;
  }
  out.secs[n] = g.sec[e]!;
  out.count[n] = g.count[e]!;
  out.sum[n] = g.sum[e]!;
  out.min[n] = g.min[e]!;
  out.max[n] = g.max[e]!;
  out.sketchSrc[n] = g.src[e]!;
  out.sketchStart[n] = g.start[e]!;
  out.sketchEnd[n] = g.end[e]!;
  return n + 1;
}

/** Columns of heads made without a pool (tests, replays of one section): carved, never kept. */
const unpooled = new ColumnPool(0);
const noSummaries: SummaryColumns = summaryColumns(0);
/** What a head without summaries reads as (never written to). */
const noEntries = Object.freeze(new Summaries()) as Summaries;
