// Builds storage rows (core/block.ts) from ingested rack batches: for one rack and one block
// of seconds, every entry (point, distribution, rollup) is appended to flat typed arrays,
// grouped by metric with a counting sort, then by server, with duplicates of one (server,
// second) resolved (points: the first wins — new data is appended before old; summaries: merged).

import type { RackBatchMessage, SeriesColumns } from '../schema/codec.js';
import { HashIndex } from '../schema/hashtable.js';
import { SketchAccumulator } from '../schema/sketch.js';
import type { DecodedRow, RowInput, SummaryColumns } from './block.js';

/** A batch the store holds, with its servers' registry ids. */
export interface BatchItem {
  msg: RackBatchMessage;
  serverIds: Uint32Array;
}

/** One row ready to encode: its metric hash and content. */
export interface BuiltRow {
  lo: number;
  hi: number;
  input: RowInput;
}

class Grow {
  m = new Int32Array(1024);
  sid = new Int32Array(1024);
  sec = new Uint16Array(1024);
  val = new Float64Array(1024);
  count = new Float64Array(1024);
  sum = new Float64Array(1024);
  min = new Float64Array(1024);
  max = new Float64Array(1024);
  start = new Uint32Array(1024);
  end = new Uint32Array(1024);
  src: Uint8Array[] = [];
  n = 0;

  reset(): void {
    this.n = 0;
    this.src.length = 0;
  }

  private grow(): void {
    const c = this.m.length * 2;
    const g = <T extends Int32Array | Uint16Array | Float64Array | Uint32Array>(a: T, make: (n: number) => T): T => {
      const b = make(c);
      b.set(a as never);
      return b;
    };
    this.m = g(this.m, (n) => new Int32Array(n));
    this.sid = g(this.sid, (n) => new Int32Array(n));
    this.sec = g(this.sec, (n) => new Uint16Array(n));
    this.val = g(this.val, (n) => new Float64Array(n));
    this.count = g(this.count, (n) => new Float64Array(n));
    this.sum = g(this.sum, (n) => new Float64Array(n));
    this.min = g(this.min, (n) => new Float64Array(n));
    this.max = g(this.max, (n) => new Float64Array(n));
    this.start = g(this.start, (n) => new Uint32Array(n));
    this.end = g(this.end, (n) => new Uint32Array(n));
  }

  point(m: number, sid: number, sec: number, v: number): void {
    if (this.n === this.m.length) this.grow();
    const i = this.n++;
    this.m[i] = m;
    this.sid[i] = sid;
    this.sec[i] = sec;
    this.val[i] = v;
  }

  summary(m: number, sid: number, sec: number, count: number, sum: number, min: number, max: number, src: Uint8Array, start: number, end: number): void {
    if (this.n === this.m.length) this.grow();
    const i = this.n++;
    this.m[i] = m;
    this.sid[i] = sid;
    this.sec[i] = sec;
    this.count[i] = count;
    this.sum[i] = sum;
    this.min[i] = min;
    this.max[i] = max;
    this.src[i] = src;
    this.start[i] = start;
    this.end[i] = end;
  }
}

export class RowBuilder {
  private readonly metrics: HashIndex;
  private readonly mLo: Uint32Array;
  private readonly mHi: Uint32Array;
  private readonly mKind: Uint8Array;
  private readonly points = new Grow();
  private readonly dists = new Grow();
  private readonly rollups = new Grow();
  private readonly acc = new SketchAccumulator();

  constructor(readonly metricsMax: number) {
    this.metrics = new HashIndex(metricsMax);
    this.mLo = new Uint32Array(metricsMax);
    this.mHi = new Uint32Array(metricsMax);
    this.mKind = new Uint8Array(metricsMax);
  }

  /** Starts a new (rack, block). */
  begin(): void {
    this.metrics.clear();
    this.points.reset();
    this.dists.reset();
    this.rollups.reset();
  }

  private metric(lo: number, hi: number, kind: number): number {
    const before = this.metrics.size;
    const m = this.metrics.insert(lo, hi);
    if (m === before && m >= 0) {
      this.mLo[m] = lo;
      this.mHi[m] = hi;
      this.mKind[m] = kind;
    }
    return m;
  }

  /** Appends a batch's entries; `only` restricts to one metric hash (reads of the head). */
  addBatch(item: BatchItem, blockStart: number, only?: { lo: number; hi: number }): void {
    const sec = item.msg.second - blockStart;
    item.msg.servers.forEach((s, j) => this.addColumns(s.series, item.serverIds[j]!, sec, only));
    const r = item.msg.rollup;
    let start = 0;
    for (let i = 0; i < r.distKinds.length; i++) {
      const end = r.sketchEnds[i]!;
      const lo = r.distHashes[2 * i]!;
      const hi = r.distHashes[2 * i + 1]!;
      if (only === undefined || (only.lo === lo && only.hi === hi)) {
        const m = this.metric(lo, hi, r.distKinds[i]!);
        if (m >= 0) this.rollups.summary(m, -1, sec, r.distCounts[i]!, r.distSums[i]!, r.distMins[i]!, r.distMaxes[i]!, r.sketchBytes, start, end);
      }
      start = end;
    }
  }

  private addColumns(c: SeriesColumns, sid: number, sec: number, only?: { lo: number; hi: number }): void {
    const mLo = this.mLo;
    const mHi = this.mHi;
    let guess = -1;
    for (let i = 0; i < c.pointKinds.length; i++) {
      const lo = c.pointHashes[2 * i]!;
      const hi = c.pointHashes[2 * i + 1]!;
      if (only !== undefined && (only.lo !== lo || only.hi !== hi)) continue;
      // Servers list metrics in the same order every second: try the next index first.
      const g = guess + 1;
      const m = g > 0 && g < this.metrics.size && mLo[g] === lo && mHi[g] === hi ? g : this.metric(lo, hi, c.pointKinds[i]!);
      guess = m;
      if (m >= 0) this.points.point(m, sid, sec, c.pointValues[i]!);
    }
    let start = 0;
    for (let i = 0; i < c.distKinds.length; i++) {
      const end = c.sketchEnds[i]!;
      const lo = c.distHashes[2 * i]!;
      const hi = c.distHashes[2 * i + 1]!;
      if (only === undefined || (only.lo === lo && only.hi === hi)) {
        const m = this.metric(lo, hi, c.distKinds[i]!);
        if (m >= 0) this.dists.summary(m, sid, sec, c.distCounts[i]!, c.distSums[i]!, c.distMins[i]!, c.distMaxes[i]!, c.sketchBytes, start, end);
      }
      start = end;
    }
  }

  /** The metrics seen since begin(), as (lo, hi) pairs. */
  metricHashes(): { lo: number; hi: number }[] {
    const out: { lo: number; hi: number }[] = [];
    for (let m = 0; m < this.metrics.size; m++) out.push({ lo: this.mLo[m]!, hi: this.mHi[m]! });
    return out;
  }

  /** Appends an existing stored row's entries (after the new ones: new points win). */
  addRow(lo: number, hi: number, row: DecodedRow): void {
    const m = this.metric(lo, hi, row.kind);
    if (m < 0) return;
    for (let j = 0; j < row.serverIds.length; j++) {
      const sid = row.serverIds[j]!;
      for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) this.points.point(m, sid, row.pointSecs[i]!, row.pointVals[i]!);
      const d = row.dist;
      for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) this.dists.summary(m, sid, d.secs[i]!, d.count[i]!, d.sum[i]!, d.min[i]!, d.max[i]!, d.sketchSrc[i]!, d.sketchStart[i]!, d.sketchEnd[i]!);
    }
    const r = row.rollup;
    for (let i = 0; i < r.secs.length; i++) this.rollups.summary(m, -1, r.secs[i]!, r.count[i]!, r.sum[i]!, r.min[i]!, r.max[i]!, r.sketchSrc[i]!, r.sketchStart[i]!, r.sketchEnd[i]!);
  }

  /** Groups everything appended into one row per metric. */
  build(blockSeconds: number): BuiltRow[] {
    const n = this.metrics.size;
    const pOrder = groupByMetric(this.points, n);
    const dOrder = groupByMetric(this.dists, n);
    const rOrder = groupByMetric(this.rollups, n);
    const out: BuiltRow[] = [];
    for (let m = 0; m < n; m++) {
      const p = entriesByServerSecond(this.points, pOrder.order, pOrder.start[m]!, pOrder.start[m + 1]!);
      const d = entriesByServerSecond(this.dists, dOrder.order, dOrder.start[m]!, dOrder.start[m + 1]!);
      const r = entriesByServerSecond(this.rollups, rOrder.order, rOrder.start[m]!, rOrder.start[m + 1]!);
      out.push({ lo: this.mLo[m]!, hi: this.mHi[m]!, input: this.rowInput(this.mKind[m]!, blockSeconds, p, d, r) });
    }
    return out;
  }

  private rowInput(kind: number, blockSeconds: number, p: number[], d: number[], r: number[]): RowInput {
    const P = this.points;
    const ids = [...new Set([...p.map((i) => P.sid[i]!), ...d.map((i) => this.dists.sid[i]!)])].sort((a, b) => a - b);
    const pointStart = new Int32Array(ids.length + 1);
    const distStart = new Int32Array(ids.length + 1);
    const pointSecs = new Uint16Array(p.length);
    const pointVals = new Float64Array(p.length);
    let pn = 0;
    let pi = 0;
    let di = 0;
    const dist = emptySummaries(d.length);
    let dn = 0;
    ids.forEach((sid, j) => {
      pointStart[j] = pn;
      for (; pi < p.length && P.sid[p[pi]!] === sid; pi++) {
        const e = p[pi]!;
        if (pn > pointStart[j]! && pointSecs[pn - 1] === P.sec[e]) continue; // same second: the first wins
        pointSecs[pn] = P.sec[e]!;
        pointVals[pn++] = P.val[e]!;
      }
      distStart[j] = dn;
      for (; di < d.length && this.dists.sid[d[di]!] === sid; di++) dn = this.putSummary(this.dists, d[di]!, dist, dn, distStart[j]!);
    });
    pointStart[ids.length] = pn;
    distStart[ids.length] = dn;
    const rollup = emptySummaries(r.length);
    let rn = 0;
    for (const e of r) rn = this.putSummary(this.rollups, e, rollup, rn, 0);
    return {
      kind,
      blockSeconds,
      serverIds: Uint32Array.from(ids),
      pointStart,
      pointSecs: pointSecs.subarray(0, pn),
      pointVals: pointVals.subarray(0, pn),
      distStart,
      dist: trimSummaries(dist, dn),
      rollup: trimSummaries(rollup, rn),
      rollupFrom: 0,
      rollupTo: rn,
    };
  }

  /** Appends entry e to out at n, merging with out[n − 1] when it is the same second. */
  private putSummary(g: Grow, e: number, out: SummaryColumns, n: number, groupStart: number): number {
    if (n > groupStart && out.secs[n - 1] === g.sec[e]) {
      const k = n - 1;
      this.acc.reset();
      this.acc.addEncoded(out.sketchSrc[k]!, out.sketchStart[k]!, out.sketchEnd[k]!);
      this.acc.addEncoded(g.src[e]!, g.start[e]!, g.end[e]!);
      const merged = new Uint8Array(this.acc.encodedBytes());
      this.acc.encodeInto(merged, 0);
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
}

/** Counting sort of entry indexes by metric (stable). */
function groupByMetric(g: Grow, metrics: number): { order: Int32Array; start: Int32Array } {
  const start = new Int32Array(metrics + 1);
  for (let i = 0; i < g.n; i++) start[g.m[i]! + 1]! += 1;
  for (let m = 0; m < metrics; m++) start[m + 1]! += start[m]!;
  const fill = start.slice(0, metrics);
  const order = new Int32Array(g.n);
  for (let i = 0; i < g.n; i++) order[fill[g.m[i]!]!++] = i;
  return { order, start };
}

/** Entries order[from..to) sorted by (server, second), stable (insertion order breaks ties). */
function entriesByServerSecond(g: Grow, order: Int32Array, from: number, to: number): number[] {
  const idx = Array.from(order.subarray(from, to));
  for (let i = 1; i < idx.length; i++) {
    const a = idx[i - 1]!;
    const b = idx[i]!;
    if (g.sid[a]! > g.sid[b]! || (g.sid[a] === g.sid[b] && g.sec[a]! > g.sec[b]!)) {
      idx.sort((x, y) => g.sid[x]! - g.sid[y]! || g.sec[x]! - g.sec[y]! || x - y);
      break;
    }
  }
  return idx;
}

function emptySummaries(n: number): SummaryColumns {
  return {
    secs: new Uint16Array(n),
    count: new Float64Array(n),
    sum: new Float64Array(n),
    min: new Float64Array(n),
    max: new Float64Array(n),
    sketchSrc: new Array<Uint8Array>(n),
    sketchStart: new Uint32Array(n),
    sketchEnd: new Uint32Array(n),
  };
}

function trimSummaries(c: SummaryColumns, n: number): SummaryColumns {
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

/** A built row seen as a decoded one (reads of the head skip the encode/decode round trip). */
export function asDecoded(x: RowInput): DecodedRow {
  return { kind: x.kind, blockSeconds: x.blockSeconds, serverIds: x.serverIds, pointStart: x.pointStart, pointSecs: x.pointSecs, pointVals: x.pointVals, distStart: x.distStart, dist: x.dist, rollup: x.rollup };
}
