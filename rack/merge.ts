// One closed second of a rack → what the SectionCutter cuts into the core's shard sections
// (issue 3, DESIGN §9): every server's summaries (its parts as they came, split distributions
// merged back) and, per distribution metric, the rollup across the rack's servers (count, sum,
// min, max, merged sketch). Columnar: typed arrays per server and per second, nothing per point.

import { KindCode, columnsFor, emptyColumns, withColumns, type EdgeSecondMessage, type SeriesColumns, type ServerBlocks } from '../schema/codec.js';
import { HashIndex } from '../lib/hashtable.js';
import { summaryCountMax } from '../schema/limits.js';
import { hashKey } from '../schema/names.js';
import { SketchAccumulator } from '../schema/sketch.js';

export interface ServerParts {
  server: string;
  parts: EdgeSecondMessage[];
}

export interface MergedSecond {
  /** Per server, its parts' blocks as they came (the cutter reads them in place). */
  servers: ServerBlocks[];
  /** Distribution rollups only (summary columns; no points, no names). */
  rollup: SeriesColumns;
  /** Summaries (points + distributions) across all servers. */
  summaries: number;
}

export class RackMerger {
  private readonly index: HashIndex;
  private readonly mHashes: Uint32Array;
  private readonly mKind: Uint8Array;
  private readonly mCount: Float64Array;
  private readonly mSum: Float64Array;
  private readonly mMin: Float64Array;
  private readonly mMax: Float64Array;
  private readonly mSketches: Int32Array; // sketch ranges per metric (for the counting sort)
  private readonly acc = new SketchAccumulator();
  private sketchScratch = new Uint8Array(1 << 20);
  private distMetric = new Int32Array(1 << 12);
  /** Metrics beyond metricsMax in one second: left out of the rollup (server rows still carry them). */
  rollupOverflow = 0;
  /**
   * Rollups left out because their servers' counts add up past 2³² − 1, what the wire's counts
   * and sketch bins hold (the rack stopped on encoding one). The servers' own summaries still
   * go; the core answers that second's whole-rack percentiles from them.
   */
  rollupsCountOverflow = 0;
  /**
   * One server's summaries of one metric in a second, sent in several entries (a sketch too large
   * for one datagram is split), whose counts add up past 2³² − 1 or whose sums overflow: that
   * summary is left out (the wire holds neither), the server's other series and every other
   * server go. Before, encoding it threw, and the rack lost the whole second of every server.
   */
  readonly split = { overflow: 0 };

  constructor(readonly metricsMax: number) {
    this.index = new HashIndex(metricsMax);
    this.mHashes = new Uint32Array(2 * metricsMax);
    this.mKind = new Uint8Array(metricsMax);
    this.mCount = new Float64Array(metricsMax);
    this.mSum = new Float64Array(metricsMax);
    this.mMin = new Float64Array(metricsMax);
    this.mMax = new Float64Array(metricsMax);
    this.mSketches = new Int32Array(metricsMax);
  }

  merge(input: ServerParts[]): MergedSecond {
    // A loop, not input.map(): map's result was sometimes a holey array, sometimes a packed one,
    // and the cutter's passes over it, optimized for one, were thrown away for the other.
    const servers: ServerBlocks[] = [];
    for (const s of input) servers.push({ server: s.server, blocks: serverBlocks(s.parts, this.split) });
    const rows: SeriesColumns[] = [];
    let summaries = 0;
    for (const s of servers) {
      for (const c of s.blocks) {
        rows.push(c);
        summaries += c.pointKinds.length + c.distKinds.length;
      }
    }
    return { servers, rollup: this.rollup(rows), summaries };
  }

  private metric(lo: number, hi: number, kind: number): number {
    const before = this.index.size;
    const m = this.index.insert(lo, hi);
    if (m < 0) {
      this.rollupOverflow++;
      return -1;
    }
    if (m === before) {
      this.mHashes[2 * m] = lo;
      this.mHashes[2 * m + 1] = hi;
      this.mKind[m] = kind;
      this.mCount[m] = 0;
      this.mSum[m] = 0;
      this.mMin[m] = Infinity;
      this.mMax[m] = -Infinity;
      this.mSketches[m] = 0;
    }
    return m;
  }

  /**
   * Per distribution across servers: stats in one pass, then sketches grouped by a counting sort
   * and merged. Gauges and counters get no rollup: the core stores only distributions' (whole-rack
   * percentiles, DESIGN §9), and sketching every gauge cost the rack most of its merge time.
   */
  private rollup(rows: SeriesColumns[]): SeriesColumns {
    let dists = 0;
    for (const c of rows) dists += c.distKinds.length;
    if (dists === 0) return emptyColumns();
    this.index.clear();
    if (dists > this.distMetric.length) this.distMetric = new Int32Array(dists);
    const distMetric = this.distMetric;
    let dAt = 0;
    let sketches = 0;
    for (const c of rows) {
      for (let i = 0; i < c.distKinds.length; i++) {
        const m = this.metric(c.distHashes[2 * i]!, c.distHashes[2 * i + 1]!, c.distKinds[i]!);
        distMetric[dAt++] = m;
        if (m < 0) continue;
        this.mCount[m]! += c.distCounts[i]!;
        this.mSum[m]! += c.distSums[i]!;
        if (c.distMins[i]! < this.mMin[m]!) this.mMin[m] = c.distMins[i]!;
        if (c.distMaxes[i]! > this.mMax[m]!) this.mMax[m] = c.distMaxes[i]!;
        this.mSketches[m]! += 1;
        sketches++;
      }
    }
    const n = this.index.size;
    // Counting sort: metric m's sketch ranges are sk*[sStart[m] .. sStart[m + 1]).
    const sStart = new Int32Array(n + 1);
    for (let m = 0; m < n; m++) sStart[m + 1] = sStart[m]! + this.mSketches[m]!;
    const skRow = new Int32Array(sketches);
    const skStart = new Uint32Array(sketches);
    const skEnd = new Uint32Array(sketches);
    const sFill = sStart.slice(0, n);
    dAt = 0;
    rows.forEach((c, r) => {
      for (let i = 0; i < c.distKinds.length; i++) {
        const m = distMetric[dAt++]!;
        if (m < 0) continue;
        const k = sFill[m]!++;
        skRow[k] = r;
        skStart[k] = i === 0 ? 0 : c.sketchEnds[i - 1]!;
        skEnd[k] = c.sketchEnds[i]!;
      }
    });
    // Metrics kept (a count past the wire's 32 bits is not), compacted in place: kept ≤ m.
    let kept = 0;
    const sketchEnds = new Uint32Array(n);
    let at = 0;
    for (let m = 0; m < n; m++) {
      if (this.mCount[m]! > summaryCountMax) {
        this.rollupsCountOverflow++;
        continue;
      }
      for (let k = sStart[m]!; k < sStart[m + 1]!; k++) {
        const c = rows[skRow[k]!]!;
        // Checked when the datagram was decoded (schema/codec.ts checkDists).
        this.acc.addChecked(c.sketchBytes, skStart[k]!, skEnd[k]!);
      }
      this.ensureScratch(at + this.acc.encodedBytes());
      at = this.acc.encodeInto(this.sketchScratch, at);
      this.acc.reset();
      sketchEnds[kept] = at;
      if (kept !== m) {
        this.mHashes[2 * kept] = this.mHashes[2 * m]!;
        this.mHashes[2 * kept + 1] = this.mHashes[2 * m + 1]!;
        this.mKind[kept] = this.mKind[m]!;
        this.mCount[kept] = this.mCount[m]!;
        this.mSum[kept] = this.mSum[m]!;
        this.mMin[kept] = this.mMin[m]!;
        this.mMax[kept] = this.mMax[m]!;
      }
      kept++;
    }
    return withColumns(emptyColumns(), {
      distHashes: this.mHashes.slice(0, 2 * kept),
      distKinds: this.mKind.slice(0, kept),
      distCounts: Uint32Array.from(this.mCount.subarray(0, kept)),
      distSums: this.mSum.slice(0, kept),
      distMins: this.mMin.slice(0, kept),
      distMaxes: this.mMax.slice(0, kept),
      sketchEnds: sketchEnds.subarray(0, kept),
      sketchBytes: this.sketchScratch.slice(0, at),
    });
  }

  private ensureScratch(bytes: number): void {
    if (bytes <= this.sketchScratch.length) return;
    const next = new Uint8Array(Math.max(bytes, this.sketchScratch.length * 2));
    next.set(this.sketchScratch);
    this.sketchScratch = next;
  }
}

/**
 * One server's blocks for the batch: its parts as they came (names stripped: the rack relays
 * names in the rollup), unless a distribution was split across entries, then one merged block.
 */
function serverBlocks(parts: EdgeSecondMessage[], split: { overflow: number }): SeriesColumns[] {
  let dists = 0;
  for (const p of parts) dists += p.series.distKinds.length;
  if (dists > 1 && hasDuplicateHashes(parts)) return [concatParts(parts, split)];
  // A loop, not parts.map(): one kind of array whichever branch made it (see merge()).
  const out: SeriesColumns[] = [];
  for (const p of parts) out.push(p.series.nameEnds.length === 0 ? p.series : withoutNames(p.series));
  return out;
}

function hasDuplicateHashes(parts: EdgeSecondMessage[]): boolean {
  let n = 0;
  for (const p of parts) n += p.series.distKinds.length;
  const seen = new HashIndex(n);
  for (const p of parts) {
    const h = p.series.distHashes;
    for (let i = 0; i < h.length; i += 2) {
      const before = seen.size;
      if (seen.insert(h[i]!, h[i + 1]!) < before) return true;
    }
  }
  return false;
}

/**
 * One server's parts as one block; distributions split across parts (or within one) merged back,
 * each one whose merge passes what the wire holds left out and counted in `split.overflow`.
 */
export function concatParts(parts: EdgeSecondMessage[], split: { overflow: number } = { overflow: 0 }): SeriesColumns {
  if (parts.length === 1 && !hasDuplicateDists(parts[0]!.series)) return withoutNames(parts[0]!.series);
  let points = 0;
  let dists = 0;
  let sketchBytes = 0;
  for (const p of parts) {
    points += p.series.pointKinds.length;
    dists += p.series.distKinds.length;
    sketchBytes += p.series.sketchBytes.length;
  }
  const out = columnsFor({ points, dists, sketchBytes });

  let pAt = 0;
  let dAt = 0;
  let sAt = 0;
  for (const { series: c } of parts) {
    out.pointHashes.set(c.pointHashes, 2 * pAt);
    out.pointKinds.set(c.pointKinds, pAt);
    out.pointValues.set(c.pointValues, pAt);
    pAt += c.pointKinds.length;
    out.distHashes.set(c.distHashes, 2 * dAt);
    out.distKinds.set(c.distKinds, dAt);
    out.distCounts.set(c.distCounts, dAt);
    out.distSums.set(c.distSums, dAt);
    out.distMins.set(c.distMins, dAt);
    out.distMaxes.set(c.distMaxes, dAt);
    for (let i = 0; i < c.sketchEnds.length; i++) out.sketchEnds[dAt + i] = sAt + c.sketchEnds[i]!;
    out.sketchBytes.set(c.sketchBytes, sAt);
    dAt += c.distKinds.length;
    sAt += c.sketchBytes.length;
  }
  return hasDuplicateDists(out) ? mergeDuplicateDists(out, split) : out;
}

function withoutNames(c: SeriesColumns): SeriesColumns {
  return withColumns(c, { nameHashes: new Uint32Array(0), nameEnds: new Uint32Array(0), nameBytes: new Uint8Array(0) });
}

function hasDuplicateDists(c: SeriesColumns): boolean {
  const n = c.distKinds.length;
  if (n < 2) return false;
  const seen = new HashIndex(n);
  for (let i = 0; i < n; i++) {
    const before = seen.size;
    if (seen.insert(c.distHashes[2 * i]!, c.distHashes[2 * i + 1]!) < before) return true;
  }
  return false;
}

/** Rare path (a sketch too large for one datagram was split): merge entries of one hash. */
function mergeDuplicateDists(c: SeriesColumns, split: { overflow: number }): SeriesColumns {
  const groups = new Map<string, number[]>();
  for (let i = 0; i < c.distKinds.length; i++) {
    const k = hashKey(c.distHashes[2 * i]!, c.distHashes[2 * i + 1]!);
    const g = groups.get(k);
    if (g === undefined) groups.set(k, [i]);
    else g.push(i);
  }
  const n = groups.size;
  const acc = new SketchAccumulator();
  const sketches: Uint8Array[] = [];
  // Only the summary columns: points and names of `c` stay as they are.
  const { distHashes, distKinds, distCounts, distSums, distMins, distMaxes, sketchEnds } = columnsFor({ points: 0, dists: n, sketchBytes: 0 });
  const out = { distHashes, distKinds, distCounts, distSums, distMins, distMaxes, sketchEnds };

  let j = 0;
  let end = 0;
  for (const idx of groups.values()) {
    const first = idx[0]!;
    out.distHashes[2 * j] = c.distHashes[2 * first]!;
    out.distHashes[2 * j + 1] = c.distHashes[2 * first + 1]!;
    out.distKinds[j] = c.distKinds[first] ?? KindCode.Distribution;
    let count = 0;
    let sum = 0;
    let min = Infinity;
    let max = -Infinity;
    for (const i of idx) {
      count += c.distCounts[i]!;
      sum += c.distSums[i]!;
      min = Math.min(min, c.distMins[i]!);
      max = Math.max(max, c.distMaxes[i]!);
    }
    // Checked before the sketches are added: a bin past 32 bits would throw while encoding.
    if (count > summaryCountMax || !Number.isFinite(sum)) {
      split.overflow++;
      continue;
    }
    for (const i of idx) acc.addChecked(c.sketchBytes, i === 0 ? 0 : c.sketchEnds[i - 1]!, c.sketchEnds[i]!);
    const bytes = new Uint8Array(acc.encodedBytes());
    acc.encodeInto(bytes, 0);
    acc.reset();
    sketches.push(bytes);
    out.distCounts[j] = count;
    out.distSums[j] = sum;
    out.distMins[j] = min;
    out.distMaxes[j] = max;
    out.sketchEnds[j++] = end += bytes.length;
  }
  const sketchBytes = new Uint8Array(end);
  let at = 0;
  for (const s of sketches) {
    sketchBytes.set(s, at);
    at += s.length;
  }
  const kept = {
    distHashes: out.distHashes.subarray(0, 2 * j),
    distKinds: out.distKinds.subarray(0, j),
    distCounts: out.distCounts.subarray(0, j),
    distSums: out.distSums.subarray(0, j),
    distMins: out.distMins.subarray(0, j),
    distMaxes: out.distMaxes.subarray(0, j),
    sketchEnds: out.sketchEnds.subarray(0, j),
  };
  return withColumns(c, { ...kept, sketchBytes });
}
