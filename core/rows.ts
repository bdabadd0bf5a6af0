// Builds storage rows (core/block.ts) from ingested rack batches: for one rack and one block
// of seconds, every entry (point, distribution, rollup) is appended to flat typed arrays, then
// ordered by (metric, server) with one stable counting sort — entries of a (metric, server)
// keep arrival order, which is second order — and duplicates of one (server, second) are
// resolved (points: the first wins, new data is appended before stored data; summaries merge).

import { KindCode, type RackBatchMessage, type SeriesColumns } from '../schema/codec.js';
import { HashIndex } from '../schema/hashtable.js';
import { SketchAccumulator } from '../schema/sketch.js';
import { summaryColumns, trimSummaries, type DecodedRow, type RowInput, type SummaryColumns } from './block.js';

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

/** Growable columns of entries: metric, server, second, value (points) or a summary. */
class Entries {
  m = new Int32Array(0);
  sid = new Int32Array(0);
  sec = new Uint16Array(0);
  val = new Float64Array(0);
  count = new Float64Array(0);
  sum = new Float64Array(0);
  min = new Float64Array(0);
  max = new Float64Array(0);
  start = new Uint32Array(0);
  end = new Uint32Array(0);
  src: Uint8Array[] = [];
  n = 0;

  constructor(readonly summaries: boolean) {}

  reset(): void {
    this.n = 0;
    this.src.length = 0;
  }

  /** Makes room for `more` entries (grows by doubling, copying once per doubling). */
  reserve(more: number): void {
    const need = this.n + more;
    if (need <= this.m.length) return;
    const c = Math.max(need, this.m.length * 2, 1024);
    const g = <T extends Int32Array | Uint16Array | Float64Array | Uint32Array>(a: T, make: (n: number) => T): T => {
      const b = make(c);
      b.set(a.subarray(0, this.n) as never);
      return b;
    };
    this.m = g(this.m, (n) => new Int32Array(n));
    this.sid = g(this.sid, (n) => new Int32Array(n));
    this.sec = g(this.sec, (n) => new Uint16Array(n));
    if (!this.summaries) {
      this.val = g(this.val, (n) => new Float64Array(n));
      return;
    }
    this.count = g(this.count, (n) => new Float64Array(n));
    this.sum = g(this.sum, (n) => new Float64Array(n));
    this.min = g(this.min, (n) => new Float64Array(n));
    this.max = g(this.max, (n) => new Float64Array(n));
    this.start = g(this.start, (n) => new Uint32Array(n));
    this.end = g(this.end, (n) => new Uint32Array(n));
  }

  point(m: number, sid: number, sec: number, v: number): void {
    const i = this.n++;
    this.m[i] = m;
    this.sid[i] = sid;
    this.sec[i] = sec;
    this.val[i] = v;
  }

  summary(m: number, sid: number, sec: number, count: number, sum: number, min: number, max: number, src: Uint8Array, start: number, end: number): void {
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
  private readonly points = new Entries(false);
  private readonly dists = new Entries(true);
  private readonly rollups = new Entries(true);
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
    let points = 0;
    let dists = 0;
    for (const s of item.msg.servers) {
      points += s.series.pointKinds.length;
      dists += s.series.distKinds.length;
    }
    this.points.reserve(points);
    this.dists.reserve(dists);
    this.rollups.reserve(item.msg.rollup.distKinds.length);
    item.msg.servers.forEach((s, j) => this.addColumns(s.series, item.serverIds[j]!, sec, only));
    const r = item.msg.rollup;
    let start = 0;
    for (let i = 0; i < r.distKinds.length; i++) {
      const end = r.sketchEnds[i]!;
      const lo = r.distHashes[2 * i]!;
      const hi = r.distHashes[2 * i + 1]!;
      // Rollups of gauges and counters are not stored: the row holds every server's value of
      // that second already, and a 40-value sketch per second would cost more than the values.
      if (r.distKinds[i] === KindCode.Distribution && (only === undefined || (only.lo === lo && only.hi === hi))) {
        const m = this.metric(lo, hi, r.distKinds[i]!);
        if (m >= 0) this.rollups.summary(m, -1, sec, r.distCounts[i]!, r.distSums[i]!, r.distMins[i]!, r.distMaxes[i]!, r.sketchBytes, start, end);
      }
      start = end;
    }
  }

  private addColumns(c: SeriesColumns, sid: number, sec: number, only?: { lo: number; hi: number }): void {
    if (only !== undefined) return this.addOne(c, sid, sec, only);
    const mLo = this.mLo;
    const mHi = this.mHi;
    const points = this.points;
    let guess = -1;
    for (let i = 0; i < c.pointKinds.length; i++) {
      const lo = c.pointHashes[2 * i]!;
      const hi = c.pointHashes[2 * i + 1]!;
      // Servers list metrics in the same order every second: try the next index first.
      const g = guess + 1;
      const m = g > 0 && g < this.metrics.size && mLo[g] === lo && mHi[g] === hi ? g : this.metric(lo, hi, c.pointKinds[i]!);
      guess = m;
      if (m >= 0) points.point(m, sid, sec, c.pointValues[i]!);
    }
    let start = 0;
    for (let i = 0; i < c.distKinds.length; i++) {
      const end = c.sketchEnds[i]!;
      const m = this.metric(c.distHashes[2 * i]!, c.distHashes[2 * i + 1]!, c.distKinds[i]!);
      if (m >= 0) this.dists.summary(m, sid, sec, c.distCounts[i]!, c.distSums[i]!, c.distMins[i]!, c.distMaxes[i]!, c.sketchBytes, start, end);
      start = end;
    }
  }

  /** Where the previous server block had the one metric a head read wants (servers of one fleet list metrics alike). */
  private pointHint = 0;

  /** One metric of one server block: checks the hinted position first, scans only on a miss. */
  private addOne(c: SeriesColumns, sid: number, sec: number, only: { lo: number; hi: number }): void {
    const p = findHash(c.pointHashes, only.lo, only.hi, this.pointHint);
    if (p >= 0) {
      this.pointHint = p;
      const m = this.metric(only.lo, only.hi, c.pointKinds[p]!);
      if (m >= 0) this.points.point(m, sid, sec, c.pointValues[p]!);
    }
    // Distribution columns are short: scan them all (a split distribution has several entries).
    for (let d = findHash(c.distHashes, only.lo, only.hi, -1); d >= 0; d = findHash(c.distHashes, only.lo, only.hi, -1, d + 1)) {
      const m = this.metric(only.lo, only.hi, c.distKinds[d]!);
      if (m >= 0) this.dists.summary(m, sid, sec, c.distCounts[d]!, c.distSums[d]!, c.distMins[d]!, c.distMaxes[d]!, c.sketchBytes, d === 0 ? 0 : c.sketchEnds[d - 1]!, c.sketchEnds[d]!);
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
    this.points.reserve(row.pointVals.length);
    this.dists.reserve(row.dist.secs.length);
    this.rollups.reserve(row.rollup.secs.length);
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
    const servers = serverOrdinals(this.points, this.dists);
    const p = sortEntries(this.points, n, servers);
    const d = sortEntries(this.dists, n, servers);
    const r = sortEntries(this.rollups, n, null);
    const out: BuiltRow[] = [];
    for (let m = 0; m < n; m++) out.push({ lo: this.mLo[m]!, hi: this.mHi[m]!, input: this.rowInput(m, blockSeconds, p, d, r) });
    return out;
  }

  private rowInput(m: number, blockSeconds: number, p: Sorted, d: Sorted, r: Sorted): RowInput {
    const P = this.points;
    const D = this.dists;
    const p0 = p.metricStart[m]!;
    const p1 = p.metricStart[m + 1]!;
    const d0 = d.metricStart[m]!;
    const d1 = d.metricStart[m + 1]!;
    // Servers of this row, ascending by id (ordinals are ascending by id).
    const ids: number[] = [];
    let pi = p0;
    let di = d0;
    while (pi < p1 || di < d1) {
      const ps = pi < p1 ? P.sid[p.order[pi]!]! : Infinity;
      const ds = di < d1 ? D.sid[d.order[di]!]! : Infinity;
      const sid = Math.min(ps, ds);
      ids.push(sid);
      while (pi < p1 && P.sid[p.order[pi]!] === sid) pi++;
      while (di < d1 && D.sid[d.order[di]!] === sid) di++;
    }
    const pointStart = new Int32Array(ids.length + 1);
    const distStart = new Int32Array(ids.length + 1);
    const pointSecs = new Uint16Array(p1 - p0);
    const pointVals = new Float64Array(p1 - p0);
    const dist = d1 === d0 ? noSummaries : summaryColumns(d1 - d0);
    let pn = 0;
    let dn = 0;
    pi = p0;
    di = d0;
    for (let j = 0; j < ids.length; j++) {
      const sid = ids[j]!;
      pointStart[j] = pn;
      const groupFrom = pi;
      while (pi < p1 && P.sid[p.order[pi]!] === sid) pi++;
      pn = this.putPoints(p.order, groupFrom, pi, pointSecs, pointVals, pn);
      distStart[j] = dn;
      for (; di < d1 && D.sid[d.order[di]!] === sid; di++) dn = this.putSummary(D, d.order[di]!, dist, dn, distStart[j]!);
    }
    pointStart[ids.length] = pn;
    distStart[ids.length] = dn;
    const r0 = r.metricStart[m]!;
    const r1 = r.metricStart[m + 1]!;
    const rollup = r1 === r0 ? noSummaries : summaryColumns(r1 - r0);
    const rIdx = bySecond(this.rollups, r.order, r0, r1);
    let rn = 0;
    for (const e of rIdx) rn = this.putSummary(this.rollups, e, rollup, rn, 0);
    return {
      kind: this.mKind[m]!,
      blockSeconds,
      serverIds: Uint32Array.from(ids),
      pointStart,
      pointSecs: pointSecs.subarray(0, pn),
      pointVals: pointVals.subarray(0, pn),
      distStart,
      dist: dn === 0 ? noSummaries : trimSummaries(dist, dn),
      rollup: rn === 0 ? noSummaries : trimSummaries(rollup, rn),
      rollupFrom: 0,
      rollupTo: rn,
    };
  }

  /** One (metric, server) group of points into ascending seconds; the first of equal seconds wins. */
  private putPoints(order: Int32Array, from: number, to: number, secs: Uint16Array, vals: Float64Array, n: number): number {
    const P = this.points;
    let sorted = true;
    for (let i = from + 1; i < to && sorted; i++) if (P.sec[order[i]!]! < P.sec[order[i - 1]!]!) sorted = false;
    const idx = sorted ? order.subarray(from, to) : bySecond(P, order, from, to);
    const start = n;
    for (let k = 0; k < idx.length; k++) {
      const e = idx[k]!;
      if (n > start && secs[n - 1] === P.sec[e]) continue;
      secs[n] = P.sec[e]!;
      vals[n++] = P.val[e]!;
    }
    return n;
  }

  /** Appends entry e to out at n, merging with out[n − 1] when it is the same second. */
  private putSummary(g: Entries, e: number, out: SummaryColumns, n: number, groupStart: number): number {
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

/** Shared empty summary columns: most rows (gauges) have neither distributions nor rollups. */
const noSummaries: SummaryColumns = summaryColumns(0);

interface Sorted {
  order: Int32Array;
  /** Entries of metric m are order[metricStart[m] .. metricStart[m + 1]). */
  metricStart: Int32Array;
}

/** Ordinal per server id (ascending id → ascending ordinal), as a lookup table. */
function serverOrdinals(...groups: Entries[]): { ord: Int32Array; count: number } {
  let maxId = 0;
  for (const g of groups) for (let i = 0; i < g.n; i++) if (g.sid[i]! > maxId) maxId = g.sid[i]!;
  const ord = new Int32Array(maxId + 1).fill(-1);
  for (const g of groups) for (let i = 0; i < g.n; i++) ord[g.sid[i]!] = 0;
  let count = 0;
  for (let id = 0; id <= maxId; id++) if (ord[id] === 0) ord[id] = count++;
  return { ord, count };
}

/** Stable counting sort of entries by (metric, server ordinal); rollups (no server) by metric. */
function sortEntries(g: Entries, metrics: number, servers: { ord: Int32Array; count: number } | null): Sorted {
  const width = servers === null ? 1 : Math.max(1, servers.count);
  const buckets = new Int32Array(metrics * width + 1);
  const key = new Int32Array(g.n);
  for (let i = 0; i < g.n; i++) {
    const k = g.m[i]! * width + (servers === null ? 0 : servers.ord[g.sid[i]!]!);
    key[i] = k;
    buckets[k + 1]! += 1;
  }
  for (let k = 0; k < metrics * width; k++) buckets[k + 1]! += buckets[k]!;
  const metricStart = new Int32Array(metrics + 1);
  for (let m = 0; m <= metrics; m++) metricStart[m] = buckets[m * width]!;
  const order = new Int32Array(g.n);
  for (let i = 0; i < g.n; i++) order[buckets[key[i]!]!++] = i;
  return { order, metricStart };
}

/** Entries order[from..to) by ascending second, stable (rare path: stored rows merged with late data). */
function bySecond(g: Entries, order: Int32Array, from: number, to: number): Int32Array {
  const idx = order.slice(from, to);
  for (let i = 1; i < idx.length; i++) {
    const e = idx[i]!;
    let j = i - 1;
    while (j >= 0 && g.sec[idx[j]!]! > g.sec[e]!) {
      idx[j + 1] = idx[j]!;
      j--;
    }
    idx[j + 1] = e;
  }
  return idx;
}

/** A built row read as a decoded one (reads of the head skip the encode/decode round trip). */
export function asDecoded(x: RowInput): DecodedRow {
  return x;
}

/** Index of hash (lo, hi) in a (lo, hi)-pair column: `hint` first, then a scan from `from`; −1 if absent. */
function findHash(h: Uint32Array, lo: number, hi: number, hint: number, from = 0): number {
  if (hint >= from && 2 * hint + 1 < h.length && h[2 * hint] === lo && h[2 * hint + 1] === hi) return hint;
  for (let i = from; 2 * i + 1 < h.length; i++) if (h[2 * i] === lo && h[2 * i + 1] === hi) return i;
  return -1;
}
