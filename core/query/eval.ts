// Window evaluation (DESIGN §3): for the selected servers, one metric and tumbling windows
// aligned to the epoch, the union of all observations in each window. min, max, count, sum and
// avg are exact; percentiles are exact (sorted values) for gauges and counters and from merged
// DDSketches (1% relative) for distributions — never an average of per-server percentiles.
// Columnar: rows are visited as typed arrays; per window only running sums and, when a
// percentile is asked for, the values or one sketch accumulator.

import { hashName } from '../../schema/names.js';
import { SketchAccumulator } from '../../schema/sketch.js';
import type { DecodedRow } from '../block.js';
import type { Registry } from '../registry.js';
import { compileGlob } from './glob.js';
import { fnKey, type Query } from './parse.js';

export interface WindowResult {
  startMs: number;
  endMs: number;
  servers: number;
  count: number;
  values: Record<string, number>;
  revision: number;
}

/** What evaluation reads: one store's registry and rows of a metric (core/store.ts). */
export interface MetricReader {
  readonly registry: Registry;
  rackName(rackId: number): string | undefined;
  read(lo: number, hi: number, fromSecond: number, toSecond: number, visit: (row: DecodedRow, blockStart: number, rackId: number) => void): void;
}

/**
 * The query's selection in one store: server ids chosen by id or glob, and a test of rack ids
 * for `rack:` selectors. A rack selector selects what that rack carried (issue 16: a server that
 * moved racks keeps its history under the racks that carried it); server selectors select a
 * server's observations whichever rack carried them.
 */
export function resolveServers(q: Query, registry: Registry): { selected: Uint8Array; size: number; rackTest: ((rack: string) => boolean) | null } {
  const servers = registry.allServers();
  let maxId = 0;
  for (const s of servers) maxId = Math.max(maxId, s.id);
  const selected = new Uint8Array(maxId + 1);
  let size = 0;
  const all = q.selectors.some((sel) => sel.type === 'all');
  const tests = q.selectors.flatMap((sel) => (sel.type === 'server' ? [(name: string) => name === sel.id] : sel.type === 'glob' ? [compileGlob(sel.pattern)] : []));
  const rackTests = q.selectors.flatMap((sel) => (sel.type === 'rack' ? [compileGlob(sel.pattern)] : []));
  for (const s of servers) {
    if (all || tests.some((t) => t(s.name))) {
      selected[s.id] = 1;
      size++;
    }
  }
  return { selected, size, rackTest: rackTests.length === 0 ? null : (rack) => rackTests.some((t) => t(rack)) };
}

/** Evaluates every window whose start lies in [fromSec, toSec); windows without observations are omitted. */
export function evaluate(store: MetricReader, q: Query, fromSec: number, toSec: number): WindowResult[] {
  const W = q.windowSeconds;
  const first = Math.ceil(fromSec / W) * W;
  if (first >= toSec) return [];
  const n = Math.ceil((toSec - first) / W);
  const end = first + n * W;
  const { selected, size, rackTest } = resolveServers(q, store.registry);
  if (size === 0 && rackTest === null) return [];
  // Rows of racks a `rack:` selector names are taken whole; the test runs once per rack id.
  const rackWhole = new Map<number, boolean>();
  const wholeRack = (rackId: number) => {
    let w = rackWhole.get(rackId);
    if (w === undefined) rackWhole.set(rackId, (w = rackTest !== null && rackTest(store.rackName(rackId) ?? '')));
    return w;
  };
  const h = new Uint32Array(2);
  hashName(q.metric, h, 0);
  const wantPct = q.functions.some((f) => f.type === 'percentile');
  const count = new Float64Array(n);
  const sum = new Float64Array(n);
  const min = new Float64Array(n).fill(Infinity);
  const max = new Float64Array(n).fill(-Infinity);
  // Which servers reported in each window: one bit per (window, server).
  const stride = store.registry.serverCount + 1;
  const seenBits = new Uint8Array(Math.ceil((n * stride) / 8));
  const serversIn = new Int32Array(n);
  const values: (number[] | undefined)[] = new Array(n);
  const sketches: (SketchAccumulator | undefined)[] = new Array(n);
  const pool: SketchAccumulator[] = [];
  const out: WindowResult[] = [];
  let finalized = 0;
  const finalize = (upTo: number) => {
    for (; finalized < upTo; finalized++) {
      const w = finalized;
      if (count[w]! > 0) out.push(result(q, first + w * W, W, count[w]!, sum[w]!, min[w]!, max[w]!, serversIn[w]!, values[w], sketches[w]));
      const acc = sketches[w];
      if (acc !== undefined) {
        acc.reset();
        pool.push(acc);
      }
      sketches[w] = undefined;
      values[w] = undefined;
    }
  };
  const mark = (w: number, sid: number) => {
    if (sid >= stride) return;
    const bit = w * stride + sid;
    const byte = bit >>> 3;
    const m = 1 << (bit & 7);
    if ((seenBits[byte]! & m) === 0) {
      seenBits[byte]! |= m;
      serversIn[w]! += 1;
    }
  };
  let lastBlock = -1;
  const rolled = new Uint8Array(1 << 16);
  store.read(h[0]!, h[1]!, first, end, (row, block, rackId) => {
    const whole = wholeRack(rackId);
    const isSelected = (sid: number) => whole || (sid < selected.length && selected[sid] === 1);
    // The rack's rollup answers percentiles only when every server the row holds is selected
    // (issue 12: a server that moved racks may be in the row but not in the selection).
    let allSelected = whole;
    if (!allSelected && wantPct && row.rollup.secs.length > 0) {
      allSelected = true;
      for (let j = 0; j < row.serverIds.length && allSelected; j++) if (!isSelected(row.serverIds[j]!)) allSelected = false;
    }
    const useRollup = wantPct && allSelected && row.rollup.secs.length > 0;
    // Seconds the rollup answers; a second without one (its sum overflowed at the rack) is
    // answered from the servers' own sketches.
    if (useRollup) {
      rolled.fill(0, 0, row.blockSeconds);
      const r = row.rollup;
      for (let i = 0; i < r.secs.length; i++) {
        const sec = block + r.secs[i]!;
        if (sec < first || sec >= end) continue;
        rolled[r.secs[i]!] = 1;
        const w = Math.floor((sec - first) / W);
        (sketches[w] ??= pool.pop() ?? new SketchAccumulator()).addEncoded(r.sketchSrc[i]!, r.sketchStart[i]!, r.sketchEnd[i]!);
      }
    }
    if (block !== lastBlock) {
      // Rows come block by block in time order: windows ending before this block are complete.
      finalize(Math.max(0, Math.min(n, Math.floor((block - first) / W))));
      lastBlock = block;
    }
    for (let j = 0; j < row.serverIds.length; j++) {
      const sid = row.serverIds[j]!;
      if (!isSelected(sid)) continue;
      for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) {
        const sec = block + row.pointSecs[i]!;
        if (sec < first || sec >= end) continue;
        const w = Math.floor((sec - first) / W);
        const v = row.pointVals[i]!;
        count[w]! += 1;
        sum[w]! += v;
        if (v < min[w]!) min[w] = v;
        if (v > max[w]!) max[w] = v;
        mark(w, sid);
        if (wantPct) (values[w] ??= []).push(v);
      }
      const d = row.dist;
      for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) {
        const sec = block + d.secs[i]!;
        if (sec < first || sec >= end) continue;
        const w = Math.floor((sec - first) / W);
        count[w]! += d.count[i]!;
        sum[w]! += d.sum[i]!;
        if (d.min[i]! < min[w]!) min[w] = d.min[i]!;
        if (d.max[i]! > max[w]!) max[w] = d.max[i]!;
        mark(w, sid);
        if (wantPct && !(useRollup && rolled[d.secs[i]!] === 1)) (sketches[w] ??= pool.pop() ?? new SketchAccumulator()).addEncoded(d.sketchSrc[i]!, d.sketchStart[i]!, d.sketchEnd[i]!);
      }
    }
  });
  finalize(n);
  return out;
}

function result(q: Query, startSec: number, W: number, count: number, sum: number, min: number, max: number, servers: number, vals: number[] | undefined, acc: SketchAccumulator | undefined): WindowResult {
  const values: Record<string, number> = {};
  let sorted: Float64Array | undefined;
  // Gauge values in a window of a metric that also has distributions (it changed kind) join the sketch.
  if (acc !== undefined && vals !== undefined) for (const v of vals) acc.addValue(v);
  for (const f of q.functions) {
    const key = fnKey(f);
    switch (f.type) {
      case 'min':
        values[key] = min;
        break;
      case 'max':
        values[key] = max;
        break;
      case 'avg':
        values[key] = sum / count;
        break;
      case 'count':
        values[key] = count;
        break;
      case 'sum':
        values[key] = sum;
        break;
      case 'percentile': {
        if (acc !== undefined) {
          values[key] = acc.quantile(f.p / 100, min, max);
        } else {
          sorted ??= Float64Array.from(vals ?? []).sort();
          values[key] = sorted[Math.floor((f.p / 100) * (sorted.length - 1))] ?? NaN;
        }
        break;
      }
    }
  }
  return { startMs: startSec * 1000, endMs: (startSec + W) * 1000, servers, count, values, revision: 0 };
}
