// Answers of ad-hoc queries kept per window (issue 14), as VictoriaMetrics keeps rollup results:
// a dashboard or Grafana asks the same query again every few seconds over a range shifted by a
// few windows; only the windows it has not seen, or whose rows changed, are evaluated again.
//
// A window's answer is kept with the store's row epoch at the time it was computed
// (core/rowversions.ts), and served while no block it overlaps has changed since: rows written
// (late data merged, a restore, a wipe) or deleted by the retention. A window that overlaps a
// block whose data is still in the head (not yet written as rows) is never kept: its answer
// changes as data arrives. Nor is a window whose percentiles were switched to a sketch: whether
// that happens depends on the other windows open with it (evalExactValuesMax), not on its own
// rows alone. So a cached answer equals a fresh evaluation, window for window, except that a
// window a fresh evaluation of a longer range would sketch may come exact from the cache; a
// test checks that against random histories of ingest, late data, row writing and retention.
//
// Bounded in windows, per store and per query; least recently asked queries go first, and a
// query's oldest windows before its newer ones. `cache: false` (`nocache=1` on the HTTP API)
// evaluates everything and keeps nothing.

import { hashName } from '../../schema/names.js';
import { coreLimits } from '../limits.js';
import { evaluate, type EvalOptions, type MetricReader, type WindowResult } from './eval.js';
import type { Query } from './parse.js';
import { windowJson } from './windowjson.js';

/**
 * Windows kept per store: ~640 B each with their JSON (measured: 48,000 windows of min, max, avg,
 * p99 took 30.5 MB of heap), ~32 MB. An hour of 5 s windows is 720: ~70 such panels.
 */
export const answerCacheWindowsMax = 50_000;
/** Windows kept per query: two of the longest answers (evalWindowsMax). */
export const answerCacheWindowsPerQueryMax = 2 * coreLimits.evalWindowsMax;

/** What the cache needs of a store beside reading rows (core/store.ts Store has it). */
export interface VersionedReader extends MetricReader {
  readonly opts: { readonly blockSeconds: number };
  blockOf(second: number): number;
  readonly rowVersions: { readonly epoch: number };
  /** The epoch of the last change to one metric's rows of a block; Infinity while the head holds its data. */
  blockVersion(lo: number, hi: number, block: number): number;
}

export interface AnswerCacheCounters {
  /** Windows answered from the cache, and evaluated. */
  answer_cache_hits: number;
  answer_cache_misses: number;
  /** Windows dropped to stay within the bounds. */
  answer_cache_evicted: number;
  /** Windows held (a gauge). */
  answer_cache_windows: number;
}

interface Kept {
  /** null: the window had no observations. */
  result: WindowResult | null;
  /** The store's row epoch when it was computed. */
  epoch: number;
  /** result's JSON text, once an answer needed it. */
  json?: string;
}

export class WindowCache {
  /** Query key → window start (s) → answer; both in least-recently-used order. */
  private readonly queries = new Map<string, Map<number, Kept>>();
  private windows = 0;

  constructor(
    private readonly counters: AnswerCacheCounters,
    private readonly windowsMax = answerCacheWindowsMax,
    private readonly perQueryMax = answerCacheWindowsPerQueryMax,
  ) {}

  /**
   * evaluate(store, q, fromSec, toSec, opts), with the windows kept from earlier answers that are
   * still current; the windows evaluated now are kept where they are final.
   */
  evaluate(store: VersionedReader, q: Query, fromSec: number, toSec: number, opts: EvalOptions = {}): WindowResult[] {
    return this.answer(store, q, fromSec, toSec, opts).map((e) => e.result!);
  }

  /** The JSON text of this.evaluate(…) (as JSON.stringify writes it), from each window's text, kept with it. */
  evaluateJson(store: VersionedReader, q: Query, fromSec: number, toSec: number, opts: EvalOptions = {}): string {
    let json = '[';
    for (const [i, e] of this.answer(store, q, fromSec, toSec, opts).entries()) json += (i === 0 ? '' : ',') + (e.json ??= windowJson(e.result!));
    return `${json}]`;
  }

  /** The windows with observations. */
  private answer(store: VersionedReader, q: Query, fromSec: number, toSec: number, opts: EvalOptions): Kept[] {
    const W = q.windowSeconds;
    if (fromSec >= toSec) return [];
    const first = Math.floor(fromSec / W) * W;
    const n = Math.ceil((toSec - first) / W);
    // Refused by evaluate, with its message.
    if (n > coreLimits.evalWindowsMax) return evaluate(store, q, fromSec, toSec, opts).map((result) => ({ result, epoch: -1 }));
    // A server registered (or retired) since could change what a glob selects: answers are kept per registry epoch.
    const key = `${store.registry.serverEpoch} ${q.text}`;
    const h = new Uint32Array(2);
    hashName(q.metric, h, 0);
    const S = store.opts.blockSeconds;
    const blockVersions = new Map<number, number>();
    const versionOf = (ws: number) => {
      let v = 0;
      for (let b = store.blockOf(ws); b < ws + W; b += S) {
        let x = blockVersions.get(b);
        if (x === undefined) blockVersions.set(b, (x = store.blockVersion(h[0]!, h[1]!, b)));
        if (x > v) v = x;
      }
      return v;
    };
    let kept = this.queries.get(key);
    if (kept !== undefined) {
      this.queries.delete(key);
      this.queries.set(key, kept);
    }
    const got: (Kept | undefined)[] = new Array(n);
    let lo = -1;
    let hi = -1;
    for (let i = 0; i < n; i++) {
      const e = kept?.get(first + i * W);
      if (e !== undefined && versionOf(first + i * W) <= e.epoch) got[i] = e;
      else {
        if (lo < 0) lo = i;
        hi = i;
      }
    }
    if (lo >= 0) {
      // Windows between the first and the last one missing are evaluated again in one pass.
      const epoch = store.rowVersions.epoch;
      const from = first + lo * W;
      const fresh = evaluate(store, q, from, first + (hi + 1) * W, opts);
      const byStart = new Map<number, WindowResult>();
      for (const r of fresh) byStart.set(r.startMs / 1000, r);
      this.counters.answer_cache_misses += hi - lo + 1;
      if (kept === undefined) this.queries.set(key, (kept = new Map()));
      for (let i = lo; i <= hi; i++) {
        const ws = first + i * W;
        const e: Kept = { result: byStart.get(ws) ?? null, epoch };
        got[i] = e;
        if (versionOf(ws) <= epoch && e.result?.sketched !== true) this.keep(kept, ws, e);
        else if (kept.delete(ws)) this.windows--;
      }
      if (kept.size === 0) this.queries.delete(key);
    }
    this.counters.answer_cache_hits += n - (lo < 0 ? 0 : hi - lo + 1);
    this.counters.answer_cache_windows = this.windows;
    const answer: Kept[] = [];
    for (const e of got) if (e!.result !== null) answer.push(e!);
    return answer;
  }

  private keep(kept: Map<number, Kept>, ws: number, e: Kept): void {
    if (kept.delete(ws)) this.windows--;
    kept.set(ws, e);
    this.windows++;
    if (kept.size > this.perQueryMax) this.dropFirst(kept, kept.size - this.perQueryMax);
    for (const [k, other] of this.queries) {
      if (this.windows <= this.windowsMax) return;
      if (other === kept) continue;
      this.windows -= other.size;
      this.counters.answer_cache_evicted += other.size;
      this.queries.delete(k);
    }
    // This query alone is over the bound: its oldest windows go.
    if (this.windows > this.windowsMax) this.dropFirst(kept, this.windows - this.windowsMax);
  }

  private dropFirst(kept: Map<number, Kept>, count: number): void {
    let left = count;
    for (const k of kept.keys()) {
      if (left-- <= 0) break;
      kept.delete(k);
      this.windows--;
      this.counters.answer_cache_evicted++;
    }
  }

  /** Windows held (for tests and /metrics). */
  get size(): number {
    return this.windows;
  }
}
