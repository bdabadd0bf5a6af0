// Window evaluation (DESIGN §3): for the selected servers, one metric and tumbling windows
// aligned to the epoch, the union of all observations in each window. min, max, count, sum and
// avg are exact; percentiles are exact (sorted values) for gauges and counters and from merged
// DDSketches (1% relative) for distributions — never an average of per-server percentiles.
// Columnar: rows are visited as typed arrays; per window only running sums and, when a
// percentile is asked for, the values or one sketch accumulator.
//
// Bounds of one evaluation (issue 16.1, 16.11), so that no query holds its worker (and the
// ingest of that worker's shards) for long, nor takes unbounded memory:
// - time: the clock is read every evalBudgetCheckRows rows or blocks passed; past the budget (ad-hoc:
//   adHocEvalMs; a stored query's tick: storedEvalMs) the evaluation stops with EvalLimitError;
// - windows: at most evalWindowsMax, refused before anything is read;
// - exact values: at most evalExactValuesMax doubles held at once; past it the open window
//   holding the most switches to a sketch (1% relative) and its result says "sketched": true;
// - servers seen per window: one bit per (server, open window), in a ring of the windows one
//   block can touch (a block of 60 s touches at most ceil(60 / W) + 1), whatever the range.
// The range is the windows that overlap [from, to): the first is the window containing `from`
// (issue 16.12: `WINDOW 1h` over the last 10 minutes answers the current hour).

import { hashNameOften } from '../../schema/names.js';
import { quantileRank, SketchAccumulator } from '../../schema/sketch.js';
import { aggregateSpanSeconds, type DecodedRow, type RowReadOptions } from '../block.js';
import { coreLimits } from '../limits.js';
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
  /**
   * Present when this window's percentiles of gauge or counter values come from a sketch (1%
   * relative error, DESIGN §3) instead of the exact sorted values: the evaluation held more than
   * evalExactValuesMax values (issue 16.11). Distributions' percentiles are always sketched.
   */
  sketched?: true;
}

export type EvalLimitReason = 'time_budget' | 'too_many_windows';

/** An evaluation refused or stopped by one of its bounds; the message says which and what to do. */
export class EvalLimitError extends Error {
  constructor(
    readonly reason: EvalLimitReason,
    message: string,
  ) {
    super(`${limitPrefix[reason]}${message}`);
  }
}

// Messages cross the worker boundary as text: these prefixes let the HTTP thread tell them apart.
const limitPrefix: Record<EvalLimitReason, string> = { time_budget: 'evaluation time budget: ', too_many_windows: 'evaluation bound: ' };

/** The bound a worker's error message names, or null when it is another failure. */
export function evalLimitReasonOf(message: string): EvalLimitReason | null {
  for (const [reason, prefix] of Object.entries(limitPrefix)) if (message.startsWith(prefix)) return reason as EvalLimitReason;
  return null;
}

export interface EvalOptions {
  /** The clock the budget is read on (ms; default performance.now). Tests step it. */
  clockMs?: () => number;
  /** Stop once clockMs() passes this (default: the clock at the start + budgetMs). */
  deadlineMs?: number;
  /** The budget the deadline stands for, for the error message (default coreLimits.adHocEvalMs). */
  budgetMs?: number;
  /** Exact values held at once before the fullest open window is sketched (default coreLimits.evalExactValuesMax). */
  exactValuesMax?: number;
}

/** What an evaluation cost, for callers that report it (tests, benches). */
export interface EvalStats {
  rows: number;
  /** Windows switched from exact values to a sketch. */
  windowsSketched: number;
  /** Most doubles held for exact percentiles at once (array capacity). */
  exactValuesHeldMax: number;
  /** Sketch accumulators allocated (~1.1 MB of address space each, touched only where used). */
  sketchesAllocated: number;
  /** Bytes of the per-window server bits (the ring). */
  seenBitsBytes: number;
}

/** What evaluation reads: one store's registry and rows of a metric (core/store.ts). */
export interface MetricReader {
  readonly registry: Registry;
  rackName(rackId: number): string | undefined;
  /** Rows may hold more servers than `opts.servers` asks for (a cached or head row): the visitor tests each. A row is valid during its visit only (its columns are reused). */
  read(lo: number, hi: number, fromSecond: number, toSecond: number, visit: (row: DecodedRow, blockStart: number, rackId: number) => void, opts?: RowReadOptions): void;
}

/**
 * The query's selection in one store: server ids chosen by id or glob, and a test of rack ids
 * for `rack:` selectors. A rack selector selects what that rack carried (issue 16: a server that
 * moved racks keeps its history under the racks that carried it); server selectors select a
 * server's observations whichever rack carried them.
 */
export function resolveServers(q: Query, registry: Registry, overBudget: () => void = () => undefined): { selected: Uint8Array; size: number; rackTest: ((rack: string) => boolean) | null } {
  const all = q.selectors.some((sel) => sel.type === 'all');
  // Each pattern once: a query may repeat one (256 copies of `*q*` tested every server 256 times).
  const globs = [...new Set(q.selectors.flatMap((sel) => (sel.type === 'glob' ? [sel.pattern] : [])))].map((p) => compileGlob(p));
  const rackTests = q.selectors.flatMap((sel) => (sel.type === 'rack' ? [compileGlob(sel.pattern)] : []));
  const rackTest = rackTests.length === 0 ? null : (rack: string) => rackTests.some((t) => t(rack));
  if (all) {
    // `*`: every server, marked by id without a name test (a stored query over the fleet runs this every window).
    const every = registry.allServerIds();
    return { selected: every.marks, size: every.count, rackTest };
  }
  // Server ids are registry indexes (core/registry.ts): about the count of servers.
  let selected = new Uint8Array(registry.serverIdLimit + 1);
  let size = 0;
  const pick = (id: number) => {
    if (id >= selected.length) {
      const grown = new Uint8Array(id + 1);
      grown.set(selected);
      selected = grown;
    }
    if (selected[id] === 0) {
      selected[id] = 1;
      size++;
    }
  };
  // Named servers by lookup; every server is tested only when a glob asks.
  for (const sel of q.selectors) {
    const s = sel.type === 'server' ? registry.serverByName(sel.id) : undefined;
    if (s !== undefined) pick(s.id);
  }
  if (globs.length > 0) {
    // Globs × servers × id length can take seconds (256 globs over 100,000 servers: ~7 s): the
    // query's time budget holds here too.
    let tested = 0;
    for (const s of registry.allServers()) {
      if ((++tested & 63) === 0) overBudget();
      if (globs.some((t) => t(s.name))) pick(s.id);
    }
  }
  return { selected, size, rackTest };
}

/**
 * Evaluates every window that overlaps [fromSec, toSec) — from the window containing fromSec —
 * within the bounds above (throws EvalLimitError past them); windows without observations are
 * omitted. `stats`, when given, receives what the evaluation cost.
 */
export function evaluate(store: MetricReader, q: Query, fromSec: number, toSec: number, opts: EvalOptions = {}, stats?: EvalStats): WindowResult[] {
  const ev = openEvaluation(store, q, fromSec, toSec, opts, stats);
  if (ev === null) return [];
  ev.read(ev.first, ev.end);
  return ev.finish();
}

/**
 * An evaluation read in pieces (a stored query's window too large for one tick's budget: its
 * blocks are read over several ticks): read() takes the rows of [from, to) — pieces must follow
 * each other and start and end on block boundaries (or the evaluation's own bounds), so every
 * row is read once and in the order evaluate() reads them (the same sums, to the bit) — and
 * finish() gives the windows. The servers are chosen when it is opened.
 */
export interface Evaluation {
  /** The first window's start and the last window's end (s). */
  readonly first: number;
  readonly end: number;
  read(from: number, to: number): void;
  finish(): WindowResult[];
}

/** evaluate() in pieces; null when nothing can match (an empty range, no server selected). */
export function openEvaluation(store: MetricReader, q: Query, fromSec: number, toSec: number, opts: EvalOptions = {}, stats?: EvalStats): Evaluation | null {
  const W = q.windowSeconds;
  const first = Math.floor(fromSec / W) * W;
  if (fromSec >= toSec) return null;
  const n = Math.ceil((toSec - first) / W);
  if (n > coreLimits.evalWindowsMax) throw new EvalLimitError('too_many_windows', `"${q.text}" from ${fromSec} to ${toSec} (s) is ${n} windows > evalWindowsMax ${coreLimits.evalWindowsMax}; use a longer WINDOW or a shorter range`);
  const end = first + n * W;
  const clock = opts.clockMs ?? (() => performance.now());
  const budgetMs = opts.budgetMs ?? coreLimits.adHocEvalMs;
  const startedMs = clock();
  const deadlineMs = opts.deadlineMs ?? startedMs + budgetMs;
  const exactMax = opts.exactValuesMax ?? coreLimits.evalExactValuesMax;
  const { selected, size, rackTest } = resolveServers(q, store.registry, () => {
    const nowMs = clock();
    if (nowMs > deadlineMs) throw new EvalLimitError('time_budget', `"${q.text}" stopped after ${Math.round(nowMs - startedMs)} ms > its budget of ${budgetMs} ms while matching its server patterns against ${store.registry.serverCount} servers; name fewer patterns, or servers by id`);
  });
  if (size === 0 && rackTest === null) return null;
  // Rows of racks a `rack:` selector names are taken whole; the test runs once per rack id.
  const rackWhole = new Map<number, boolean>();
  const wholeRack = (rackId: number) => {
    let w = rackWhole.get(rackId);
    if (w === undefined) rackWhole.set(rackId, (w = rackTest !== null && rackTest(store.rackName(rackId) ?? '')));
    return w;
  };
  /** Whether a row's server counts: its rack is taken whole, or it is selected (a function, not a closure made per row). */
  const isSelected = (whole: boolean, sid: number): boolean => whole || (sid < selected.length && selected[sid] === 1);
  const h = new Uint32Array(2);
  hashNameOften(q.metric, h, 0);
  const wantPct = q.functions.some((f) => f.type === 'percentile');
  // Window sums are added up second by second in a fixed order (GroupedSums): only when asked for.
  const wantSum = q.functions.some((f) => f.type === 'avg' || f.type === 'sum');
  const count = new Float64Array(n);
  const sum = new Float64Array(n);
  const min = new Float64Array(n).fill(Infinity);
  const max = new Float64Array(n).fill(-Infinity);
  const serversIn = new Int32Array(n);
  const st: EvalStats = stats ?? { rows: 0, windowsSketched: 0, exactValuesHeldMax: 0, sketchesAllocated: 0, seenBitsBytes: 0 };
  const values = new ExactValues(n, exactMax, st);
  const sketches: (SketchAccumulator | undefined)[] = new Array(n);
  const pool: SketchAccumulator[] = [];
  const sketchOf = (w: number) => {
    let acc = sketches[w];
    if (acc === undefined) {
      acc = pool.pop();
      if (acc === undefined) {
        acc = new SketchAccumulator();
        st.sketchesAllocated++;
      }
      sketches[w] = acc;
    }
    return acc;
  };
  const out: WindowResult[] = [];
  // Which servers reported in each open window: one bit per (server, window), in a ring of
  // slots (set on the first row, from its block length); a window's slot is cleared when it is final.
  // By id (retired servers leave ids free until reused: ids may pass the count of servers).
  const stride = store.registry.serverIdLimit + 1;
  /** Bytes of seenBits per open window. */
  const slotBytes = Math.ceil(stride / 8);
  let slots = 0;
  let seenBits = new Uint8Array(0);
  let finalized = 0;
  const finalize = (upTo: number) => {
    for (; finalized < upTo; finalized++) {
      const w = finalized;
      // A sketched window's values are all in its sketch already (ExactValues.push).
      if (count[w]! > 0) out.push(result(q, first + w * W, W, { count: count[w]!, sum: sum[w]!, min: min[w]!, max: max[w]!, servers: serversIn[w]! }, values.exact(w), sketches[w], values.sketched(w)));
      const acc = sketches[w];
      if (acc !== undefined) {
        acc.reset();
        pool.push(acc);
      }
      sketches[w] = undefined;
      values.drop(w);
      if (slots > 0) seenBits.fill(0, (w % slots) * slotBytes, ((w % slots) + 1) * slotBytes);
    }
  };
  const mark = (w: number, sid: number) => {
    if (sid >= stride) return;
    const at = (w % slots) * slotBytes + (sid >>> 3);
    const m = 1 << (sid & 7);
    if ((seenBits[at]! & m) === 0) {
      seenBits[at]! |= m;
      serversIn[w]! += 1;
    }
  };
  const overBudget = () => {
    const nowMs = clock();
    if (nowMs <= deadlineMs) return;
    throw new EvalLimitError(
      'time_budget',
      `"${q.text}" stopped after ${Math.round(nowMs - startedMs)} ms > its budget of ${budgetMs} ms, having read ${st.rows} rows and completed ${finalized} of ${n} windows; narrow from/to, select fewer servers, or use a longer WINDOW`,
    );
  };
  // A deadline given by the caller (a stored query's tick: one budget for many evaluations, e.g.
  // a revision per late window, each reading a few rows) is looked at before anything is read.
  if (opts.deadlineMs !== undefined) overBudget();
  let lastBlock = -1;
  let rolled = new Uint8Array(0);
  // Per second of the row being read: count and sum of the selected servers' entries. Once the
  // row is read, the sums of the seconds of each group of `group` seconds (5 when the window is
  // a multiple of 5 s, else 1; groups aligned to multiples of it) are added from +0, and each
  // group's sum to its window — the order in which a row's aggregates (core/block.ts
  // rowAggregates: per 5 s, or per second in version 3 rows) sum, so both paths give the same doubles.
  let secHas = new Uint8Array(0);
  // The window of each second of the block being read (−1: outside [first, end)), set per block.
  let winOf = new Int32Array(0);
  let secCount = new Float64Array(0);
  let secSum = new Float64Array(0);
  const sumGroup = W % aggregateSpanSeconds === 0 ? aggregateSpanSeconds : 1;
  const sums = new GroupedSums(sum, sumGroup, first, W);
  // Every registered server selected (`*`): rows are decoded whole, with no test per server.
  const everyServer = rackTest === null && size >= store.registry.serverCount;
  // Blocks, row keys and head rows passed, visited or not: the budget holds for reads that skip every row.
  let passed = 0;
  const tick = () => {
    if (++passed % coreLimits.evalBudgetCheckRows === 0) overBudget();
  };
  const readOpts: RowReadOptions = { servers: everyServer ? undefined : selected, wholeRack: rackTest === null ? undefined : wholeRack, secondsOnlyFor: wantPct ? undefined : W, tick };
  // visitDense's scratch: where each selected server's points start.
  let denseAt = new Int32Array(64);
  let denseSid = new Uint32Array(64);
  const visit = (row: DecodedRow, block: number, rackId: number): void => {
    st.rows++; // the budget is checked by readOpts.tick, for every row key and block passed
    if (slots === 0) {
      // A block touches at most ceil(blockSeconds / W) + 1 windows: those are all the open ones.
      slots = Math.min(n, Math.ceil(row.blockSeconds / W) + 1);
      seenBits = new Uint8Array(slots * slotBytes);
      st.seenBitsBytes = seenBits.length;
      rolled = new Uint8Array(row.blockSeconds);
      secHas = new Uint8Array(row.blockSeconds);
      secCount = new Float64Array(row.blockSeconds);
      secSum = new Float64Array(row.blockSeconds);
      winOf = new Int32Array(row.blockSeconds);
    }
    if (block !== lastBlock) {
      // Rows come block by block in time order: windows ending before this block are complete.
      finalize(Math.max(0, Math.min(n, Math.floor((block - first) / W))));
      lastBlock = block;
      for (let s = 0; s < winOf.length; s++) winOf[s] = block + s < first || block + s >= end ? -1 : Math.floor((block + s - first) / W);
    }
    const whole = wholeRack(rackId);
    // The rack's rollup answers percentiles, and the row's aggregates everything else, only when
    // every server of the row is selected (issue 12: a server that moved racks may be in the
    // row but not in the selection).
    // A row without servers (all of them refused by serversMax: only the rack's rollup was kept)
    // answers nothing: its rollup describes servers this store does not hold (it was added to
    // every query's percentiles, "every server of the row" being none).
    const held = row.serverIds.length > 0;
    let allSelected = held && row.serversOmitted === 0 && (whole || everyServer);
    if (!allSelected && held && row.serversOmitted === 0 && (wantPct ? row.rollup.secs.length > 0 : row.aggregates !== null)) {
      allSelected = true;
      for (let j = 0; j < row.serverIds.length && allSelected; j++) if (!isSelected(whole, row.serverIds[j]!)) allSelected = false;
    }
    if (!wantPct && allSelected && row.aggregates !== null && W % row.aggregates.span === 0) {
      addAggregates(row, block);
      return;
    }
    if (row.entries !== 'values') throw new Error(`BUG: a row of seconds only for "${q.text}"`);
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
        sketchOf(Math.floor((sec - first) / W)).addEncoded(r.sketchSrc[i]!, r.sketchStart[i]!, r.sketchEnd[i]!);
      }
    }
    if (!wantPct && row.distStart[row.serverIds.length] === 0 && visitDense(row, block, whole)) return;
    const pointSecs = row.pointSecs;
    const pointVals = row.pointVals;
    const secs = row.blockSeconds;
    for (let j = 0; j < row.serverIds.length; j++) {
      const sid = row.serverIds[j]!;
      if (!isSelected(whole, sid)) continue;
      // A server's points in runs of one window (seconds ascending): per run one mark, one
      // min/max store and one copy of its values (issue 14: per point, this visit was a third
      // of a 1,000-server percentile query).
      for (let i = row.pointStart[j]!, e = row.pointStart[j + 1]!; i < e; ) {
        const s0 = pointSecs[i]!;
        // (a second past the block, which a valid row has not, is outside every window)
        const w = s0 < secs ? winOf[s0]! : -1;
        let r = i + 1;
        while (r < e && pointSecs[r]! < secs && winOf[pointSecs[r]!] === w) r++;
        if (w >= 0) {
          let lo = min[w]!;
          let hi = max[w]!;
          if (wantSum) {
            // Sums per second first, as the row's aggregates add them (GroupedSums).
            for (let x = i; x < r; x++) {
              const v = pointVals[x]!;
              const s = pointSecs[x]!;
              secHas[s] = 1;
              secCount[s]! += 1;
              secSum[s]! += v;
              if (v < lo) lo = v;
              if (v > hi) hi = v;
            }
          } else {
            // Counts are whole numbers: added per window, in any order, they are the same.
            count[w]! += r - i;
            for (let x = i; x < r; x++) {
              const v = pointVals[x]!;
              if (v < lo) lo = v;
              if (v > hi) hi = v;
            }
          }
          min[w] = lo;
          max[w] = hi;
          mark(w, sid);
          if (wantPct) values.pushRun(w, pointVals, i, r, finalized, sketchOf);
        }
        i = r;
      }
      const d = row.dist;
      let lastW = -1;
      for (let i = row.distStart[j]!, e = row.distStart[j + 1]!; i < e; i++) {
        const s = d.secs[i]!;
        const w = winOf[s]!;
        if (!(w >= 0)) continue;
        if (wantSum) {
          secHas[s] = 1;
          secCount[s]! += d.count[i]!;
          secSum[s]! += d.sum[i]!;
        } else count[w]! += d.count[i]!;
        if (d.min[i]! < min[w]!) min[w] = d.min[i]!;
        if (d.max[i]! > max[w]!) max[w] = d.max[i]!;
        if (w !== lastW) mark(w, sid), (lastW = w);
        if (wantPct && !(useRollup && rolled[s] === 1)) sketchOf(w).addEncoded(d.sketchSrc[i]!, d.sketchStart[i]!, d.sketchEnd[i]!);
      }
    }
    if (!wantSum) return;
    for (let s = 0; s < row.blockSeconds; s++) {
      if (secHas[s] === 0) continue;
      count[winOf[s]!]! += secCount[s]!;
      sums.add(block + s, secSum[s]!);
      secHas[s] = 0;
      secCount[s] = 0;
      secSum[s] = 0;
    }
    sums.flush();
  };
  /**
   * visit() of a row whose selected servers have every second of the block and no summaries (a
   * dense row: most rows), when no percentile is asked: second by second across the servers (each
   * second's sum in server order, as visit adds them; a min/max query's sums go unused), without
   * the per-second columns or a run per window. False, having done nothing, when a selected
   * server lacks a second.
   */
  function visitDense(row: DecodedRow, block: number, whole: boolean): boolean {
    const S = row.blockSeconds;
    let k = 0;
    if (denseAt.length < row.serverIds.length) {
      denseAt = new Int32Array(2 * row.serverIds.length);
      denseSid = new Uint32Array(2 * row.serverIds.length);
    }
    for (let j = 0; j < row.serverIds.length; j++) {
      const sid = row.serverIds[j]!;
      if (!(whole || (sid < selected.length && selected[sid] === 1))) continue;
      if (row.pointStart[j + 1]! - row.pointStart[j]! !== S) return false;
      denseSid[k] = sid;
      denseAt[k++] = row.pointStart[j]!;
    }
    if (k === 0) return true;
    const vals = row.pointVals;
    const a0 = denseAt[0]!;
    const a1 = denseAt[1]!;
    // Group by group (GroupedSums' groups: G seconds from a multiple of G, each inside one window
    // as windows start at multiples of W, a multiple of G; cut where the block ends, as
    // GroupedSums is flushed after each row): a group's total from 0, second by second, then
    // added to its window — what GroupedSums does, without a call a second.
    const G = sumGroup;
    let lastW = -1;
    for (let s = 0; s < S; ) {
      const w = winOf[s]!;
      const groupEnd = Math.min(S, s + G - ((block + s) % G));
      if (!(w >= 0)) {
        s = groupEnd;
        continue;
      }
      count[w]! += k * (groupEnd - s);
      let total = 0;
      let lo = min[w]!;
      let hi = max[w]!;
      // One or two servers (a few servers spread over racks: most rows hold one or two of them)
      // without the loop over servers; the same sums (a second's total from +0: v, then v + u).
      if (k === 1) {
        for (let i = a0 + s, e = a0 + groupEnd; i < e; i++) {
          const v = vals[i]!;
          total += v;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
        s = groupEnd;
      } else if (k === 2) {
        for (; s < groupEnd; s++) {
          const v = vals[a0 + s]!;
          const u = vals[a1 + s]!;
          total += v + u;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
          if (u < lo) lo = u;
          if (u > hi) hi = u;
        }
      } else {
        for (; s < groupEnd; s++) {
          let t = 0;
          for (let x = 0; x < k; x++) {
            const v = vals[denseAt[x]! + s]!;
            t += v;
            if (v < lo) lo = v;
            if (v > hi) hi = v;
          }
          total += t;
        }
      }
      min[w] = lo;
      max[w] = hi;
      sum[w]! += total;
      if (w !== lastW) {
        for (let x = 0; x < k; x++) mark(w, denseSid[x]!);
        lastW = w;
      }
    }
    return true;
  }
  /** A whole row's count, sum, min and max from its aggregates (added up by `sums`' groups); its servers from their seconds. */
  function addAggregates(row: DecodedRow, block: number): void {
    const a = row.aggregates!;
    for (let i = 0; i < a.secs.length; i++) {
      const sec = block + a.secs[i]!;
      if (sec < first || sec >= end) continue;
      const w = Math.floor((sec - first) / W);
      count[w]! += a.count[i]!;
      sums.add(sec, a.sum[i]!);
      if (a.min[i]! < min[w]!) min[w] = a.min[i]!;
      if (a.max[i]! > max[w]!) max[w] = a.max[i]!;
    }
    sums.flush();
    for (let j = 0; j < row.serverIds.length; j++) {
      const sid = row.serverIds[j]!;
      markSeconds(sid, block, row.pointSecs, row.pointStart[j]!, row.pointStart[j + 1]!);
      markSeconds(sid, block, row.dist.secs, row.distStart[j]!, row.distStart[j + 1]!);
    }
  }
  /** Marks server sid in each window its seconds secs[from, to) (ascending) fall in. */
  function markSeconds(sid: number, block: number, secs: Uint16Array, from: number, to: number): void {
    if (to > from && secs[to - 1]! - secs[from]! === to - from - 1) {
      // Seconds without a gap (most servers: every second): the windows they span.
      const lo = Math.max(first, block + secs[from]!);
      const hi = Math.min(end, block + secs[to - 1]! + 1);
      for (let w = Math.floor((lo - first) / W); w * W + first < hi; w++) mark(w, sid);
      return;
    }
    let lastW = -1;
    for (let i = from; i < to; i++) {
      const sec = block + secs[i]!;
      if (sec < first || sec >= end) continue;
      const w = Math.floor((sec - first) / W);
      if (w !== lastW) mark(w, sid), (lastW = w);
    }
  }
  return {
    first,
    end,
    read: (from, to) => {
      if (Math.max(first, from) < Math.min(end, to)) store.read(h[0]!, h[1]!, Math.max(first, from), Math.min(end, to), visit, readOpts);
    },
    finish: () => {
      finalize(n);
      return out;
    },
  };
}

/**
 * Adds a row's per-second (or per-span) sums into their windows' sums a group of `group` seconds
 * at a time (groups aligned to multiples of `group`; `group` divides the window): each group's
 * sum from +0, second by second, then into its window — rowAggregates' order. flush() after each row.
 */
class GroupedSums {
  private at = -1;
  private total = 0;

  constructor(
    private readonly sums: Float64Array,
    private readonly group: number,
    private readonly first: number,
    private readonly W: number,
  ) {}

  /** Adds the sum of second `sec` (seconds ascending within a row). */
  add(sec: number, v: number): void {
    const g = Math.floor(sec / this.group);
    if (g !== this.at) {
      this.flush();
      this.at = g;
    }
    this.total += v;
  }

  /** Adds the open group's sum to its window. */
  flush(): void {
    if (this.at >= 0) this.sums[Math.floor((this.at * this.group - this.first) / this.W)]! += this.total;
    this.at = -1;
    this.total = 0;
  }
}

/**
 * Exact values of the open windows, for percentiles of gauges and counters, in growable
 * Float64Arrays. The capacity held in all is at most `max` doubles: past it, the open window
 * holding the most is switched to its sketch for good (issue 16.11).
 */
class ExactValues {
  private readonly vals: (Float64Array | undefined)[];
  private readonly len: Int32Array;
  private readonly toSketch: Uint8Array;
  private held = 0;
  /** Highest window given a value (the open windows are [finalized, top]). */
  private top = -1;
  /** Values the last window dropped held (its first array's size for the next). */
  private lastLen = 0;

  constructor(
    n: number,
    private readonly max: number,
    private readonly stats: EvalStats,
  ) {
    this.vals = new Array(n);
    this.len = new Int32Array(n);
    this.toSketch = new Uint8Array(n);
  }

  sketched(w: number): boolean {
    return this.toSketch[w] === 1;
  }

  /** Window w's values so far (a view; sorting it in place is fine once w is final), or undefined. */
  exact(w: number): Float64Array | undefined {
    const a = this.vals[w];
    return a === undefined ? undefined : a.subarray(0, this.len[w]!);
  }

  /** Adds v to window w: to its exact values while they fit the bound, else to its sketch. */
  push(w: number, v: number, finalized: number, sketchOf: (w: number) => SketchAccumulator): void {
    let a = this.vals[w];
    const k = this.len[w]!;
    if (a === undefined || k === a.length) {
      // Doubling, or as far as the bound lets this array grow (so one window may fill it).
      // A window's first array holds what the last window done held (windows of one query are
      // alike; before: doubled from 64 in each, a tenth of a 1,000-server percentile query's
      // time), within a sixteenth of the bound; then doubled. Not the selection's size: servers
      // registered are not servers reporting this metric, and the capacities of many windows
      // so sized passed the bound, which sketched windows holding a few values.
      let cap = a === undefined ? Math.max(64, Math.min(this.lastLen, this.max >>> 4)) : 2 * k;
      if (this.held + cap - k > this.max && this.max - this.held > 0) cap = Math.max(k + 1, k + this.max - this.held);
      const extra = cap - k;
      // Room first, so that the bound holds at every moment: the fullest open window (this one,
      // if it is the fullest) goes to its sketch.
      while (this.held + extra > this.max) {
        const big = this.fullest(finalized, w);
        this.toSketch[big] = 1;
        this.stats.windowsSketched++;
        this.spillInto(big, sketchOf(big));
        if (big === w) {
          sketchOf(w).addValue(v);
          return;
        }
      }
      const grown = new Float64Array(cap);
      if (a !== undefined) grown.set(a);
      this.held += extra;
      this.vals[w] = a = grown;
      if (w > this.top) this.top = w;
      if (this.held > this.stats.exactValuesHeldMax) this.stats.exactValuesHeldMax = this.held;
    }
    a[k] = v;
    this.len[w] = k + 1;
  }

  /** Adds src[from, to) to window w (push for each, with one check of room when they fit). */
  pushRun(w: number, src: Float64Array, from: number, to: number, finalized: number, sketchOf: (w: number) => SketchAccumulator): void {
    const a = this.vals[w];
    const k = this.len[w]!;
    if (a !== undefined && this.toSketch[w] === 0 && k + (to - from) <= a.length) {
      for (let i = from; i < to; i++) a[k + i - from] = src[i]!;
      this.len[w] = k + (to - from);
      return;
    }
    for (let i = from; i < to; i++) {
      if (this.toSketch[w] === 1) sketchOf(w).addValue(src[i]!);
      else this.push(w, src[i]!, finalized, sketchOf);
    }
  }

  /** The open window holding the most values (w when none holds more). */
  private fullest(finalized: number, w: number): number {
    let big = w;
    for (let x = finalized; x <= this.top; x++) if ((this.vals[x]?.length ?? 0) > (this.vals[big]?.length ?? 0)) big = x;
    return big;
  }

  /** Adds window w's exact values (if any) to `acc` and frees them. */
  private spillInto(w: number, acc: SketchAccumulator): void {
    const a = this.vals[w];
    if (a === undefined) return;
    for (let i = 0; i < this.len[w]!; i++) acc.addValue(a[i]!);
    this.drop(w);
  }

  drop(w: number): void {
    const a = this.vals[w];
    if (a !== undefined) this.held -= a.length;
    if (this.len[w]! > 0) this.lastLen = this.len[w]!;
    this.vals[w] = undefined;
    this.len[w] = 0;
  }
}

interface WindowStats {
  count: number;
  sum: number;
  min: number;
  max: number;
  servers: number;
}

function result(q: Query, startSec: number, W: number, s: WindowStats, vals: Float64Array | undefined, acc: SketchAccumulator | undefined, sketched: boolean): WindowResult {
  const values: Record<string, number> = {};
  // A metric keeps one kind per store (core/store.ts, issue 16.6); rows written before that rule
  // may hold points beside summaries: those values join the sketch.
  if (acc !== undefined && vals !== undefined) for (const v of vals) acc.addValue(v);
  // Exact percentiles of many values: every rank asked for, selected at once (orderStatistics);
  // of a few, each alone below.
  let exact: Map<number, number> | undefined;
  if (acc === undefined && vals !== undefined && vals.length >= bucketSelectMin) {
    const ranks = q.functions.flatMap((f) => (f.type === 'percentile' ? [Math.floor(quantileRank(f.p / 100, vals.length))] : []));
    if (ranks.length > 0) exact = orderStatistics(vals, ranks);
  }
  for (const f of q.functions) {
    const key = fnKey(f);
    switch (f.type) {
      case 'min':
        values[key] = s.min;
        break;
      case 'max':
        values[key] = s.max;
        break;
      case 'avg':
        values[key] = s.sum / s.count;
        break;
      case 'count':
        values[key] = s.count;
        break;
      case 'sum':
        values[key] = s.sum;
        break;
      case 'percentile': {
        if (acc !== undefined) {
          values[key] = acc.quantile(f.p / 100, s.min, s.max);
        } else {
          // (a few values: each rank selected alone, without orderStatistics' set-up per window)
          const a = vals ?? new Float64Array(0);
          const rank = Math.floor(quantileRank(f.p / 100, a.length));
          values[key] = a.length === 0 ? NaN : exact !== undefined ? exact.get(rank)! : orderStatistic(a, rank);
        }
        break;
      }
    }
  }
  const out: WindowResult = { startMs: startSec * 1000, endMs: (startSec + W) * 1000, servers: s.servers, count: s.count, values, revision: 0 };
  if (sketched) out.sketched = true;
  return out;
}

/**
 * The k-th smallest of a for each k of ks (a map from k), each what orderStatistic gives: the
 * values are counted into buckets of equal width between their min and max (a monotone map, so
 * the k-th smallest lies in the bucket where the counts pass k, at rank k less the counts below),
 * and only the buckets holding an asked rank are gathered and selected in, bucketed again while
 * large (issue 14: quickselect took 10 ns a value per rank, branches mispredicted on every
 * compare; selection was a quarter of a 1,000-server percentile query). Zeros of both signs fall
 * in one bucket, and values below it are negative: the −0-before-+0 order holds within it.
 * Small arrays, and values without a finite spread, are selected directly (selectRanks).
 */
export function orderStatistics(a: Float64Array, ks: readonly number[], depth = 0): Map<number, number> {
  const n = a.length;
  if (n < bucketSelectMin || depth >= 3) return selectRanks(a, ks);
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = a[i]!;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === hi) {
    // One value throughout (a bucket of a queue's zeros): every rank is it — for zeros, −0 below
    // as many ranks as there are −0s.
    const out = new Map<number, number>();
    let negZeros = 0;
    if (lo === 0) for (let i = 0; i < n; i++) if (1 / a[i]! < 0) negZeros++;
    for (const k of ks) out.set(k, lo === 0 ? (k < negZeros ? -0 : 0) : lo);
    return out;
  }
  const B = Math.min(4096, 1 << Math.ceil(Math.log2(n / 4)));
  const scale = B / (hi - lo);
  // NaN (never stored), ±Infinity or a span past the largest double: no buckets.
  if (!(scale > 0 && scale < Infinity)) return selectRanks(a, ks);
  if (bucketOf.length < n) bucketOf = new Uint16Array(n);
  const counts = new Int32Array(B);
  for (let i = 0; i < n; i++) {
    // (a[i] − lo)·scale is in [0, B] (monotone in a[i]): truncation is its floor.
    let b = ((a[i]! - lo) * scale) | 0;
    if (b >= B) b = B - 1;
    bucketOf[i] = b;
    counts[b]!++;
  }
  // Each rank's bucket and the values below it.
  const order = [...new Set(ks)].sort((x, y) => x - y);
  const slotOf = new Int16Array(B).fill(-1);
  const slots: { bucket: number; below: number; ranks: number[] }[] = [];
  let b = 0;
  let below = 0;
  for (const k of order) {
    while (below + counts[b]! <= k) below += counts[b++]!;
    if (slotOf[b] === -1) {
      slotOf[b] = slots.length;
      slots.push({ bucket: b, below, ranks: [] });
    }
    slots[slotOf[b]!]!.ranks.push(k - below);
  }
  // A bucket holding a quarter of the values or more (a queue's zeros, all but a far outlier, a
  // value repeated) spares too little to gather: selected directly, so the worst case costs the
  // two passes above more than quickselect (bucketed again, nested outliers took 5 times as long).
  if (slots.some((sl) => 4 * counts[sl.bucket]! >= n)) return selectRanks(a, ks);
  const gathered = slots.map((sl) => new Float64Array(counts[sl.bucket]!));
  const fill = new Int32Array(slots.length);
  for (let i = 0; i < n; i++) {
    const sl = slotOf[bucketOf[i]!]!;
    if (sl >= 0) gathered[sl]![fill[sl]!++] = a[i]!;
  }
  const out = new Map<number, number>();
  slots.forEach((sl, i) => {
    const inner = orderStatistics(gathered[i]!, sl.ranks, depth + 1);
    for (const r of sl.ranks) out.set(r + sl.below, inner.get(r)!);
  });
  return out;
}

/** Below this many values, ranks are selected directly. */
const bucketSelectMin = 2048;
/** Scratch of orderStatistics: each value's bucket. */
let bucketOf = new Uint16Array(0);

/**
 * orderStatistics by quickselect: from the smallest k up, each next one selected among a(k, n) of
 * the one before (after a selection those hold the n − k − 1 largest values). Not above a zero:
 * which of −0 and +0 lie above it depends on the partitions, so the next is selected over the
 * whole array again.
 */
function selectRanks(a: Float64Array, ks: readonly number[]): Map<number, number> {
  const out = new Map<number, number>();
  const order = [...new Set(ks)].sort((x, y) => x - y);
  let from = 0;
  for (const k of order) {
    const v = from === 0 ? orderStatistic(a, k) : orderStatistic(a.subarray(from), k - from);
    out.set(k, v);
    from = v === 0 ? 0 : k + 1;
  }
  return out;
}

/**
 * The k-th smallest of a — what a[k] would be after a.sort(), −0 before +0 included — by
 * quickselect (Hoare partitions, median-of-three pivots) in place: a window's percentiles cost
 * O(n) each instead of a sort (issue 14). Past a bound on rounds, the range left is sorted.
 */
export function orderStatistic(a: Float64Array, k: number): number {
  let lo = 0;
  let hi = a.length - 1;
  for (let rounds = 0; hi > lo; rounds++) {
    if (hi - lo < 16 || rounds > 64) {
      a.subarray(lo, hi + 1).sort();
      break;
    }
    const mid = (lo + hi) >>> 1;
    const x = a[lo]!;
    const y = a[mid]!;
    const z = a[hi]!;
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : x < z ? x : y < z ? z : y;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i++] = a[j]!;
        a[j--] = t;
      }
    }
    // [lo, j] ≤ pivot ≤ [i, hi]; between them, values equal to the pivot.
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else break;
  }
  const v = a[k]!;
  if (v !== 0) return v;
  // A zero: sorted, the −0s come before the +0s; which is at k depends on how many of each.
  let below = 0;
  for (let i = 0; i < a.length; i++) if (a[i]! < 0 || Object.is(a[i], -0)) below++;
  return k < below ? -0 : 0;
}
