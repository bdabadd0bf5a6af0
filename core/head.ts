// The head (issue 12): what a shard holds in memory before it becomes rows, metric-major.
// One MetricHead per (block, metric, rack): typed columns of that metric's entries for the
// rack's servers, appended section by section — a section carries a metric's column for every
// server of the rack, so ingest is a few typed-array copies per metric, and reading one metric
// touches that metric's heads only. buildRow() orders a head's entries by (server, second) —
// merging an already stored row when late data arrives — into what core/block.ts encodes.

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

interface PointColumns {
  sid: Int32Array;
  sec: Uint16Array;
  val: Float64Array;
}

/**
 * Point columns for heads: those of written heads are kept for new ones of the same size (each
 * minute a live fleet's heads are written and as many new ones start), and new ones are carved
 * from 1 MiB slabs. Allocating three typed arrays per head one by one cost ~115 µs a head
 * (16,000 heads: 1.8 s; the same bytes as slabs: 0.35 s with first touch) — a tenth of ingest
 * CPU. A slab lives while any of its heads does; heads of one slab start together and are
 * written together (one block), so a slab is not pinned long. Bounded in bytes; beyond it
 * columns go to the collector.
 */
export class ColumnPool {
  private readonly free = new Map<number, PointColumns[]>();
  private bytes = 0;
  private slab = new ArrayBuffer(0);
  private slabUsed = 0;

  constructor(readonly bytesMax: number) {}

  take(cap: number): PointColumns {
    const c = this.free.get(cap)?.pop();
    if (c !== undefined) {
      this.bytes -= cap * 14;
      return c;
    }
    return this.carve(cap);
  }

  give(c: PointColumns): void {
    const cap = c.sid.length;
    if (this.bytes + cap * 14 > this.bytesMax) return;
    let list = this.free.get(cap);
    if (list === undefined) this.free.set(cap, (list = []));
    list.push(c);
    this.bytes += cap * 14;
  }

  /** Three columns of cap entries in one stretch of a slab (values first: 8-byte aligned). */
  private carve(cap: number): PointColumns {
    const bytes = Math.ceil((cap * 14) / 8) * 8;
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
    return { val: new Float64Array(buf, at, cap), sid: new Int32Array(buf, at + cap * 8, cap), sec: new Uint16Array(buf, at + cap * 12, cap) };
  }
}

const slabBytes = 1 << 20;

/** One metric × one rack × one block in memory. */
export class MetricHead {
  pn = 0;
  pSid: Int32Array;
  pSec: Uint16Array;
  pVal: Float64Array;
  /** Distribution summaries and the rack's rollups; most heads (gauges, counters) never have any. */
  private distCols: Summaries | null = null;
  private rollupCols: Summaries | null = null;
  /** Newest WAL sequence whose entries are in this head (a stored row records it: replay skips what a row holds). */
  walSeq = 0;

  constructor(
    readonly kind: number,
    readonly metricLo: number,
    readonly metricHi: number,
    readonly rackId: number,
    pointsHint: number,
    private readonly pool: ColumnPool | null = null,
  ) {
    const cap = Math.max(8, pointsHint);
    const c = (pool ?? unpooled).take(cap);
    this.pSid = c.sid;
    this.pSec = c.sec;
    this.pVal = c.val;
  }

  /** Hands the point columns back to the pool (the head is written and gone). */
  release(): void {
    this.pool?.give({ sid: this.pSid, sec: this.pSec, val: this.pVal });
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
    return this.pSid.length * 14 + (this.distCols?.bytes ?? 0) + (this.rollupCols?.bytes ?? 0) + 200;
  }

  /** Room for `more` points; returns the index to write the first at. */
  reservePoints(more: number): number {
    const need = this.pn + more;
    if (need > this.pSid.length) {
      const cap = Math.max(need, this.pSid.length * 2);
      const sid = new Int32Array(cap);
      sid.set(this.pSid.subarray(0, this.pn));
      const sec = new Uint16Array(cap);
      sec.set(this.pSec.subarray(0, this.pn));
      const val = new Float64Array(cap);
      val.set(this.pVal.subarray(0, this.pn));
      this.pSid = sid;
      this.pSec = sec;
      this.pVal = val;
    }
    const at = this.pn;
    this.pn = need;
    return at;
  }
}

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
export function buildRow(h: MetricHead, old: DecodedRow | undefined, blockSeconds: number, acc: SketchAccumulator): RowInput {
  // Points: the head's, then the stored row's.
  let pSid = h.pSid;
  let pSec = h.pSec;
  let pVal = h.pVal;
  let pn = h.pn;
  if (old !== undefined && old.pointVals.length > 0) {
    const on = old.pointVals.length;
    pSid = new Int32Array(pn + on);
    pSid.set(h.pSid.subarray(0, pn));
    pSec = new Uint16Array(pn + on);
    pSec.set(h.pSec.subarray(0, pn));
    pVal = new Float64Array(pn + on);
    pVal.set(h.pVal.subarray(0, pn));
    pSec.set(old.pointSecs, pn);
    pVal.set(old.pointVals, pn);
    for (let j = 0; j < old.serverIds.length; j++) pSid.fill(old.serverIds[j]!, pn + old.pointStart[j]!, pn + old.pointStart[j + 1]!);
    pn += on;
  }
  const dist = withOld(h.dist, old, (o) => o.dist, (o, j) => [o.distStart[j]!, o.distStart[j + 1]!]);
  const rollup = withOld(h.rollup, old, (o) => o.rollup, null);
  const pOrder = orderBy(pSid, pSec, pn);
  const dOrder = orderBy(dist.sid, dist.sec, dist.n);
  // Servers of the row: the union of both columns' servers, ascending.
  const ids: number[] = [];
  const take = (sid: number) => {
    if (ids.length === 0 || ids[ids.length - 1]! < sid) ids.push(sid);
  };
  let a = 0;
  let b = 0;
  while (a < pn || b < dist.n) {
    const ps = a < pn ? pSid[pOrder[a]!]! : Infinity;
    const ds = b < dist.n ? dist.sid[dOrder[b]!]! : Infinity;
    if (ps <= ds) take(pSid[pOrder[a++]!]!);
    else take(dist.sid[dOrder[b++]!]!);
  }
  const n = ids.length;
  const pointStart = new Int32Array(n + 1);
  const pointSecs = new Uint16Array(pn);
  const pointVals = new Float64Array(pn);
  const distStart = new Int32Array(n + 1);
  const dOut = dist.n === 0 ? noSummaries : summaryColumns(dist.n);
  let pi = 0;
  let di = 0;
  let po = 0;
  let dn = 0;
  for (let j = 0; j < n; j++) {
    const sid = ids[j]!;
    pointStart[j] = po;
    const first = po;
    for (; pi < pn && pSid[pOrder[pi]!] === sid; pi++) {
      const e = pOrder[pi]!;
      if (po > first && pointSecs[po - 1] === pSec[e]) continue; // the first (newest) wins
      pointSecs[po] = pSec[e]!;
      pointVals[po++] = pVal[e]!;
    }
    distStart[j] = dn;
    const dFirst = dn;
    for (; di < dist.n && dist.sid[dOrder[di]!] === sid; di++) dn = putSummary(dist, dOrder[di]!, dOut, dn, dFirst, acc);
  }
  pointStart[n] = po;
  distStart[n] = dn;
  const rOrder = orderBy(new Int32Array(rollup.n), rollup.sec, rollup.n);
  const rOut = rollup.n === 0 ? noSummaries : summaryColumns(rollup.n);
  let rn = 0;
  for (let i = 0; i < rollup.n; i++) rn = putSummary(rollup, rOrder[i]!, rOut, rn, 0, acc);
  return {
    kind: old?.kind ?? h.kind,
    blockSeconds,
    serverIds: Uint32Array.from(ids),
    serversOmitted: 0,
    entries: 'values',
    // Computed by encodeRow for a stored row, by Store.read for a head read.
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
  const f: FlatSummaries = {
    n,
    sid: new Int32Array(n),
    sec: new Uint16Array(n),
    count: new Float64Array(n),
    sum: new Float64Array(n),
    min: new Float64Array(n),
    max: new Float64Array(n),
    src: new Array<Uint8Array>(n).fill(h.arena, 0, h.n),
    start: new Uint32Array(n),
    end: new Uint32Array(n),
  };
  f.sid.set(h.sid.subarray(0, h.n));
  f.sec.set(h.sec.subarray(0, h.n));
  f.count.set(h.count.subarray(0, h.n));
  f.sum.set(h.sum.subarray(0, h.n));
  f.min.set(h.min.subarray(0, h.n));
  f.max.set(h.max.subarray(0, h.n));
  f.start.set(h.start.subarray(0, h.n));
  f.end.set(h.end.subarray(0, h.n));
  if (o === undefined || old === undefined || on === 0) return f;
  f.sec.set(o.secs, h.n);
  f.count.set(o.count, h.n);
  f.sum.set(o.sum, h.n);
  f.min.set(o.min, h.n);
  f.max.set(o.max, h.n);
  f.start.set(o.sketchStart, h.n);
  f.end.set(o.sketchEnd, h.n);
  for (let i = 0; i < on; i++) f.src[h.n + i] = o.sketchSrc[i]!;
  if (range === null) f.sid.fill(-1, h.n);
  else
    for (let j = 0; j < old.serverIds.length; j++) {
      const [from, to] = range(old, j);
      f.sid.fill(old.serverIds[j]!, h.n + from, h.n + to);
    }
  return f;
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
