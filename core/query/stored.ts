// Stored-query evaluation (issue 5; in the worker that owns the query's metric since issue 12).
// Definitions come from the HTTP thread's catalog (core/query/catalog.ts); this side keeps each
// query's cursor (the next window to evaluate) and its results in the store of the metric's
// shard, evaluates windows once their watermark (end + lateness) passes, and re-evaluates
// windows that late data touched (a changed result gets revision + 1). After downtime the
// missed windows are computed from storage, a bounded number per tick. Results of one tick
// are written in one transaction, then announced (the catalog serves and streams them).

import type { Database, RootDatabase } from 'lmdb';
import { coreLimits } from '../limits.js';
import { EvalLimitError, evaluate, openEvaluation, type Evaluation, type EvalOptions, type MetricReader, type WindowResult } from './eval.js';
import { parseQuery, type Query } from './parse.js';
import { windowJson } from './windowjson.js';
import { deleteRange } from '../../lib/lmdb.js';

export interface StoredQuery {
  id: string;
  name: string;
  query: string;
  createdMs: number;
}

interface QueryState {
  def: StoredQuery;
  parsed: Query;
  /** The shard of its metric (StoredOptions.shardOf; −1: unknown): late data of other shards does not touch it. */
  shard: number;
  /** Start (s) of the next window to evaluate. */
  next: number;
  /** Start (s) of its first window (the one before it was created, or last edited): late data never revises one before it. */
  first: number;
  /** Windows per evaluation: windowsPerTickMax, a quarter of it after each tick past the budget (issue 16.1). */
  step: number;
  /** Ticks past the budget in a row; the query waits storedEvalMs × 2^(failures − 1) (at most storedEvalRetryMaxMs) after one. */
  failures: number;
  /** Clock time (ms, the budget's clock) before which the query is not tried again. */
  retryAtMs: number;
  /** Late seconds that arrived while the query waited: revised when it runs again. */
  late: Set<number>;
  /**
   * A single window too large for one tick's budget, read a block at a time over several ticks
   * (before: retried whole, it stopped at the same place every time and the query produced
   * nothing more, for good). `revision`: it was stored already (late data touched it).
   */
  slice: { start: number; ev: Evaluation; readUpTo: number; revision: boolean } | null;
}

export interface StoredOptions {
  latenessMs: number;
  /** Windows one query may evaluate per tick; the rest are counted as behind and caught up next tick. */
  windowsPerTickMax: number;
  lateSecondsMax: number;
  /** Time budget of one query's tick (default coreLimits.storedEvalMs). */
  evalBudgetMs?: number;
  /** The clock budgets are read on (default performance.now; tests step it). */
  clockMs?: () => number;
  /** Seconds per block of the store (default 60): a window read over several ticks is read a block at a time. */
  blockSeconds?: number;
  /** Exact values an evaluation holds before it sketches (default coreLimits.evalExactValuesMax; tests make it small). */
  exactValuesMax?: number;
  /** The shard of a metric: late data is noted per shard, and revises only the queries of its shard's metrics (absent: every query). */
  shardOf?: (metric: string) => number;
}

export type Listener = (queryId: string, w: WindowResult) => void;

/**
 * Windows read over several ticks at once (each holds up to evalExactValuesMax doubles and its
 * sketches): another query whose window is past the budget waits in back-off until one ends.
 */
const slicesMax = 4;

interface Cursor {
  query: string;
  next: number;
  /** QueryState.first (absent in cursors written before it was kept: taken from the query's creation time). */
  first?: number;
}

export class StoredQueries {
  private readonly cursors: Database<Cursor, string>;
  /** Window results as JSON text: served by concatenation, without a parse per request. */
  private readonly results: Database<string, string>;
  private readonly states = new Map<string, QueryState>();
  /** Seconds of late data waiting for the next tick, by shard (−1: any shard; at most lateSecondsMax in all). */
  private readonly lateSeconds = new Map<number, Set<number>>();
  private lateCount = 0;
  /** The furthest cursor of any query (an overestimate after a refused commit): data at or past it is late for none. */
  private nextMax = -Infinity;
  private running: Promise<void> | null = null;
  private stopping = false;
  /** evaluation_over_budget: query ticks stopped by their time budget (also counted in evaluation_errors). */
  readonly counters = { windows_evaluated: 0, windows_revised: 0, windows_behind: 0, late_seconds_dropped: 0, evaluation_errors: 0, evaluation_over_budget: 0, results_deleted: 0, windows_adopted: 0, windows_adopt_refused: 0, windows_sliced: 0 };
  /** Each new or revised window, once stored, with the text it was evaluated for. */
  onWindow: ((queryId: string, w: WindowResult, query: string) => void) | null = null;

  constructor(
    private readonly root: RootDatabase,
    private readonly store: MetricReader,
    private readonly opts: StoredOptions,
  ) {
    this.cursors = root.openDB({ name: 'query-cursors', encoding: 'json' });
    this.results = root.openDB({ name: 'results', encoding: 'string' });
  }

  get size(): number {
    return this.states.size;
  }

  /**
   * Makes this store's queries exactly `defs`: new ones start (at their stored cursor if the
   * text is the same, else at the window before now), changed ones restart with their old
   * results dropped, missing ones are dropped with their results.
   */
  sync(defs: readonly StoredQuery[], nowMs: number, elsewhere: readonly StoredQuery[] = []): void {
    const want = new Map(defs.map((d) => [d.id, d]));
    // Queries another node evaluates now (a cluster): not evaluated here, but their results and
    // cursor stay, so when evaluation comes back here it resumes where it stopped (the windows
    // in between are evaluated from the stored data) instead of losing the history. An edited
    // one's results go as usual once it is synced here again.
    const kept = new Map(elsewhere.filter((d) => !want.has(d.id)).map((d) => [d.id, d]));
    for (const id of kept.keys()) this.forgetState(id);
    const drop: string[] = [];
    for (const id of this.states.keys()) if (!want.has(id)) drop.push(id);
    for (const { key, value } of this.cursors.getRange()) if (!want.has(key) && kept.get(key)?.query !== value.query && !drop.includes(key)) drop.push(key);
    const puts: [string, Cursor][] = [];
    for (const d of defs) {
      const s = this.states.get(d.id);
      if (s !== undefined && s.def.query === d.query) {
        s.def = d;
        continue;
      }
      const parsed = parseQuery(d.query);
      const cursor = this.cursors.get(d.id);
      const fresh = alignedStart(nowMs, parsed.windowSeconds) - parsed.windowSeconds;
      let next = fresh;
      let first = fresh;
      if (cursor !== undefined && cursor.query === d.query) {
        next = cursor.next;
        first = cursor.first ?? Math.min(next, alignedStart(d.createdMs, parsed.windowSeconds) - parsed.windowSeconds);
      } else if (cursor !== undefined || s !== undefined) drop.push(d.id); // edited: old results no longer describe it
      this.forgetState(d.id);
      this.states.set(d.id, { def: d, parsed, shard: this.opts.shardOf?.(parsed.metric) ?? -1, next, first, step: this.opts.windowsPerTickMax, failures: 0, retryAtMs: -Infinity, late: new Set(), slice: null });
      puts.push([d.id, { query: d.query, next, first }]);
    }
    const dropKeys = drop.flatMap((id) => [...this.results.getKeys({ start: `${id}:`, end: `${id};` })]);
    this.root.transactionSync(() => {
      for (const id of drop) if (!want.has(id)) void this.cursors.remove(id);
      for (const k of dropKeys) void this.results.remove(k);
      for (const [id, c] of puts) void this.cursors.put(id, c);
    });
    for (const id of drop) if (!want.has(id)) this.forgetState(id);
    this.cursorsMoved();
    // Data replayed from the WAL: windows evaluated over it before the restart are redone (a
    // changed result is a revision). Before, late data acknowledged just before a restart never
    // revised its window: the late seconds waiting for the next tick were in memory only.
    for (const sec of this.replayed.splice(0)) this.noteData(sec);
  }

  /**
   * How long ago the oldest window still waiting for evaluation ended (s; 0 with none waiting).
   * On time this stays at about the lateness; a query catching up shows how far behind it is.
   */
  lagSeconds(nowMs: number): number {
    let lag = 0;
    for (const s of this.states.values()) lag = Math.max(lag, nowMs / 1000 - (s.next + s.parsed.windowSeconds));
    return lag;
  }

  /**
   * Deletes results of windows that start before the retention, in bounded transactions (they
   * describe rows already deleted; without it a stored query's results grew for ever). Returns
   * how many went.
   */
  async retentionSweep(nowMs: number, retentionSeconds: number, batchKeys = 5000): Promise<number> {
    const cutoffMs = nowMs - retentionSeconds * 1000;
    let deleted = 0;
    // Every query with results here: those evaluated here, and those another cluster node
    // evaluates whose windows this store keeps (adopt) or kept before the evaluation moved —
    // each has a cursor (before: only the first, and the others' results were never deleted).
    const ids = new Set(this.states.keys());
    for (const id of this.cursors.getKeys()) ids.add(id);
    for (const id of ids) deleted += await deleteRange(this.root, this.results, resultKey(id, 0), resultKey(id, cutoffMs), batchKeys, () => this.stopping);
    this.counters.results_deleted += deleted;
    return deleted;
  }

  /** Stored results with start in [fromMs, toMs), at most `limit + 1` (the caller refuses more than limit). */
  resultsJson(id: string, fromMs: number, toMs: number, limit: number): string[] {
    const out: string[] = [];
    for (const e of this.results.getRange({ start: resultKey(id, Math.max(0, fromMs)), end: resultKey(id, toMs) })) {
      out.push(e.value);
      if (out.length > limit) break;
    }
    return out;
  }

  /** The newest `limit` results of a query, ascending (the catalog's memory after a restart). */
  newestJson(id: string, limit: number): string[] {
    const newest = [...this.results.getRange({ start: resultKey(id, Number.MAX_SAFE_INTEGER), end: resultKey(id, 0), reverse: true, limit })].map((e) => e.value);
    return newest.reverse();
  }

  /**
   * Windows another cluster node evaluated and published (its queries' results, received by this
   * node): kept with this store's results, and the query's cursor moved past them, so when the
   * evaluation moves here (a placement change) this node serves the query's whole history and
   * goes on from the last window it received — before, it started at the window before now and
   * its results API answered only from then on, without saying so. Windows of a query this store
   * evaluates itself are ignored (its own are the truth here); a text other than the cursor's
   * (an edit) starts the query's results afresh.
   */
  adopt(windows: readonly { qid: string; query: string; json: string }[]): number {
    const cursors = new Map<string, Cursor>();
    const puts = new Map<string, string>();
    const restarted: string[] = [];
    for (const { qid, query, json } of windows) {
      if (this.states.has(qid)) continue;
      let w: WindowResult;
      let W: number;
      try {
        w = JSON.parse(json) as WindowResult;
        W = parseQuery(query).windowSeconds;
      } catch {
        this.counters.windows_adopt_refused++;
        continue;
      }
      if (!Number.isSafeInteger(w.startMs) || w.startMs < 0 || w.startMs % (W * 1000) !== 0) {
        this.counters.windows_adopt_refused++;
        continue;
      }
      const start = w.startMs / 1000;
      // A revision lower than the one kept (hand-overs may come out of order): the kept one
      // stands. An equal one replaces it — revisions are counted by each evaluating node, so a
      // node that took a query over may number its revision as one another node kept already.
      const key = resultKey(qid, w.startMs);
      const kept = puts.get(key) ?? (restarted.includes(qid) ? undefined : this.results.get(key));
      if (kept !== undefined && (JSON.parse(kept) as WindowResult).revision > w.revision && (cursors.get(qid) ?? this.cursors.get(qid))?.query === query) continue;
      let c = cursors.get(qid) ?? this.cursors.get(qid);
      if (c === undefined || c.query !== query) {
        if (c !== undefined && !restarted.includes(qid)) restarted.push(qid);
        c = { query, next: start + W, first: start };
      } else c = { query, next: Math.max(c.next, start + W), first: Math.min(c.first ?? start, start) };
      cursors.set(qid, c);
      puts.set(key, json);
    }
    if (puts.size === 0) return 0;
    const stale = restarted.flatMap((id) => [...this.results.getKeys({ start: `${id}:`, end: `${id};` })]);
    this.root.transactionSync(() => {
      for (const k of stale) void this.results.remove(k);
      for (const [k, json] of puts) void this.results.put(k, json);
      for (const [id, c] of cursors) void this.cursors.put(id, c);
    });
    this.counters.windows_adopted += puts.size;
    return puts.size;
  }

  /** Seconds replayed from the WAL at start, noted once the first sync tells which queries there are. */
  private replayed: number[] = [];

  /** Seconds whose data was replayed from the WAL at start (it may be late data no window saw yet). */
  noteReplayed(seconds: Iterable<number>): void {
    this.replayed = [...seconds];
  }

  /** Notes that data arrived for `second`: windows already evaluated over it are redone. */
  noteData(second: number, shard = -1): void {
    // Once per section of every request: one comparison, not a pass over every query (before:
    // O(queries) per section on the ingest path).
    if (!(second < this.nextMax)) return;
    let set = this.lateSeconds.get(shard);
    if (set?.has(second) === true) return;
    if (this.lateCount >= this.opts.lateSecondsMax) {
      this.counters.late_seconds_dropped++;
      return;
    }
    if (set === undefined) this.lateSeconds.set(shard, (set = new Set()));
    set.add(second);
    this.lateCount++;
  }

  /** nextMax again from every query's cursor (after the queries changed). */
  private cursorsMoved(): void {
    this.nextMax = -Infinity;
    for (const s of this.states.values()) if (s.next > this.nextMax) this.nextMax = s.next;
  }

  /** Ends a results sweep at its next batch (the store is about to close); runs are bounded already. */
  stopBackgroundWork(): void {
    this.stopping = true;
  }

  /** Evaluates every window whose watermark has passed, then re-evaluates windows touched by late data. */
  tick(nowMs: number): Promise<void> {
    this.running ??= this.evaluateDue(nowMs).finally(() => (this.running = null));
    return this.running;
  }

  /**
   * tick(nowMs) once any run under way has ended: that run (the worker's timer's) may be as of
   * an earlier time, or may have taken its late seconds before newer data arrived.
   */
  async tickAfter(nowMs: number): Promise<void> {
    while (this.running !== null) await this.running.catch(() => undefined);
    await this.tick(nowMs);
  }

  private async evaluateDue(nowMs: number): Promise<void> {
    const lateByShard = new Map(this.lateSeconds);
    this.lateSeconds.clear();
    this.lateCount = 0;
    const anyShard = [...(lateByShard.get(-1) ?? [])];
    let every: number[] | null = null;
    /** The late seconds that may touch query s: its metric's shard's and those of no known shard (all of them when its shard is unknown). */
    const lateOf = (s: QueryState): number[] => {
      if (s.shard < 0) return (every ??= [...new Set([...lateByShard.values()].flatMap((x) => [...x]))]);
      const own = lateByShard.get(s.shard);
      return own === undefined ? anyShard : anyShard.length === 0 ? [...own] : [...new Set([...own, ...anyShard])];
    };
    const clock = this.opts.clockMs ?? (() => performance.now());
    const budgetMs = this.opts.evalBudgetMs ?? coreLimits.storedEvalMs;
    /** Per query with something to store: its windows, its cursor before this tick, the late seconds it took. */
    const done: { s: QueryState; pending: Map<string, WindowResult>; next: number; late: number[] }[] = [];
    for (const s of [...this.states.values()]) {
      if (this.states.get(s.def.id) !== s) continue; // edited or deleted meanwhile
      const startedMs = clock();
      const late = lateOf(s);
      if (startedMs < s.retryAtMs) {
        this.holdLate(s, late);
        continue;
      }
      const pending = new Map<string, WindowResult>();
      const next = s.next;
      // One budget for this query's whole tick: its new windows and its revisions (issue 16.1).
      const budget: EvalOptions = { clockMs: clock, deadlineMs: startedMs + budgetMs, budgetMs, exactValuesMax: this.opts.exactValuesMax };
      if (s.slice !== null) {
        // A window read over several ticks: this tick reads on. Late seconds of blocks it has not
        // read yet are read with them; the others wait for a revision after it.
        const sl = s.slice;
        this.holdLate(s, late.filter((sec) => !(sec >= sl.readUpTo && sec < sl.start + s.parsed.windowSeconds)));
        try {
          this.readSlice(s, pending, startedMs + budgetMs, clock);
        } catch (err) {
          s.slice = null;
          this.counters.evaluation_errors++;
          console.error(`core: stored query ${s.def.id} failed: ${(err as Error).message}`);
        }
        // A revision read whole: its window comes back (as a late second) if the commit fails.
        if (pending.size > 0 || s.next !== next) done.push({ s, pending, next, late: s.slice === null && sl.revision ? [sl.start] : [] });
        await new Promise((r) => setImmediate(r));
        continue;
      }
      const mine = [...late, ...s.late];
      // Window starts revised this tick: their late seconds are done even if the budget ends the tick.
      const revised = new Set<number>();
      this.evaluating = null;
      try {
        this.advance(s, nowMs, pending, budget);
        this.revise(s, mine, pending, budget, revised);
        this.clearLate(s);
        s.failures = 0;
      } catch (err) {
        this.counters.evaluation_errors++;
        if (err instanceof EvalLimitError && err.reason === 'time_budget') {
          // Only what is left waits (before: every late second again, so a retry redid the same
          // first windows, ran out at the same point, and never reached the rest).
          const W = s.parsed.windowSeconds;
          this.clearLate(s);
          const left = revised.size === 0 ? mine : mine.filter((sec) => !revised.has(sec - (((sec % W) + W) % W)));
          const one = this.evaluating as { start: number; windows: number; revision: boolean } | null;
          if (one !== null && one.windows === 1 && this.slicing() < slicesMax) this.startSlice(s, one.start, one.revision, left, err);
          else this.overBudget(s, left, clock(), budgetMs, err);
        } else console.error(`core: stored query ${s.def.id} failed: ${(err as Error).message}`);
      }
      if (pending.size > 0 || s.next !== next) done.push({ s, pending, next, late: mine });
      // One query at a time: ingest and reads of this worker run in between.
      await new Promise((r) => setImmediate(r));
    }
    // Every query's new windows and cursor of this tick in one transaction: one sync per tick, not per query.
    const live = done.filter((d) => this.states.get(d.s.def.id) === d.s);
    if (live.length === 0) return;
    try {
      this.commit(live);
    } catch (err) {
      // Nothing of this tick is stored (a full disk): each cursor goes back and the late seconds
      // wait, so the next tick evaluates it all again. Before, the cursors stayed past windows
      // never stored and the late seconds were forgotten: those windows were missing for good.
      for (const d of live) {
        d.s.next = d.next;
        this.holdLate(d.s, d.late);
      }
      throw err;
    }
  }

  /** Queries reading a window over several ticks now. */
  private slicing(): number {
    let n = 0;
    for (const s of this.states.values()) if (s.slice !== null) n++;
    return n;
  }

  /** The windows an evaluation under way covers (which one failed, when one window alone is past the budget). */
  private evaluating: { start: number; windows: number; revision: boolean } | null = null;

  /**
   * One window alone past a tick's budget: read a block at a time over the next ticks, each within
   * the budget (readSlice), then stored as any window is. Its late seconds are the slice's to
   * read, except those of blocks it has read already, which wait for a revision after it.
   */
  private startSlice(s: QueryState, start: number, revision: boolean, late: number[], err: Error): void {
    const W = s.parsed.windowSeconds;
    // No deadline of its own: readSlice looks at the tick's clock between blocks.
    const ev = openEvaluation(this.store, s.parsed, start, start + W, { exactValuesMax: this.opts.exactValuesMax, deadlineMs: Infinity, budgetMs: Infinity });
    // The tick was past its budget (counted as such); the window goes on in slices, not in back-off.
    this.counters.evaluation_over_budget++;
    this.counters.windows_sliced++;
    this.holdLate(s, late.filter((sec) => sec < start || sec >= start + W));
    s.failures = 0;
    s.retryAtMs = -Infinity;
    if (ev === null) return;
    s.slice = { start, ev, readUpTo: start, revision };
    if (this.counters.windows_sliced === 1 || this.counters.windows_sliced % 1000 === 0) console.error(`core: stored query ${s.def.id}: ${err.message}; its window at ${new Date(start * 1000).toISOString()} is read over several ticks, a block at a time (${this.counters.windows_sliced} windows so far)`);
  }

  /** Reads on a sliced window, a block at a time, until the deadline; stores it once read whole. */
  private readSlice(s: QueryState, pending: Map<string, WindowResult>, deadlineMs: number, clock: () => number): void {
    const sl = s.slice!;
    const W = s.parsed.windowSeconds;
    const B = this.opts.blockSeconds ?? 60;
    const end = sl.start + W;
    // At least one block per tick, whatever the clock says: a slice always moves.
    do {
      const to = Math.min(end, (Math.floor(sl.readUpTo / B) + 1) * B);
      sl.ev.read(sl.readUpTo, to);
      sl.readUpTo = to;
    } while (sl.readUpTo < end && clock() <= deadlineMs);
    if (sl.readUpTo < end) return;
    for (const w of sl.ev.finish()) pending.set(resultKey(s.def.id, w.startMs), w);
    s.slice = null;
    this.counters.windows_evaluated++;
    if (!sl.revision && s.next === sl.start) {
      s.next = end;
      if (end > this.nextMax) this.nextMax = end;
    }
  }

  /**
   * A tick past its budget: the windows it evaluated so far stay (in `pending`, the cursor is
   * past them), the rest wait: the query is tried again after a back-off, a quarter of the
   * windows per evaluation at a time; its late seconds are kept for then. Counted and logged.
   */
  private overBudget(s: QueryState, late: number[], stoppedMs: number, budgetMs: number, err: Error): void {
    this.counters.evaluation_over_budget++;
    s.failures++;
    s.step = Math.max(1, Math.floor(s.step / 4));
    const waitMs = Math.min(coreLimits.storedEvalRetryMaxMs, budgetMs * 2 ** (s.failures - 1));
    s.retryAtMs = stoppedMs + waitMs;
    this.holdLate(s, late);
    console.error(`core: stored query ${s.def.id}: ${err.message}; retried in ${Math.round(waitMs / 1000)} s with at most ${s.step} windows per evaluation`);
  }

  /**
   * Keeps late seconds for a query that does not run this tick. One bound for all the queries'
   * held seconds together, lateSecondsMax as for the shared set (before: per query, so a
   * thousand queries in back-off held a hundred million while a spool drained).
   */
  private holdLate(s: QueryState, late: readonly number[]): void {
    for (const sec of late) {
      if (s.late.has(sec)) continue;
      if (this.lateHeld >= this.opts.lateSecondsMax) {
        this.counters.late_seconds_dropped++;
        continue;
      }
      s.late.add(sec);
      this.lateHeld++;
    }
  }

  /** Late seconds held for queries in back-off, all queries together (≤ lateSecondsMax). */
  lateHeld = 0;

  private clearLate(s: QueryState): void {
    this.lateHeld -= s.late.size;
    s.late.clear();
  }

  /** Drops a query's state (deleted, edited, evaluated elsewhere), with the late seconds it held. */
  private forgetState(id: string): void {
    const s = this.states.get(id);
    if (s === undefined) return;
    this.clearLate(s);
    this.states.delete(id);
  }

  private advance(s: QueryState, nowMs: number, pending: Map<string, WindowResult>, budget: EvalOptions): void {
    const W = s.parsed.windowSeconds;
    let done = 0;
    while ((s.next + W) * 1000 + this.opts.latenessMs <= nowMs) {
      if (done >= this.opts.windowsPerTickMax) {
        this.counters.windows_behind++;
        break;
      }
      // Catch-up evaluates many windows in one read (at most `step`: fewer after a tick past its budget).
      const upTo = Math.min(s.next + W * Math.min(s.step, this.opts.windowsPerTickMax - done), Math.floor((nowMs - this.opts.latenessMs) / 1000 / W) * W);
      this.evaluating = { start: s.next, windows: (upTo - s.next) / W, revision: false };
      for (const w of evaluate(this.store, s.parsed, s.next, upTo, budget)) pending.set(resultKey(s.def.id, w.startMs), w);
      const evaluated = Math.max(1, (upTo - s.next) / W);
      done += evaluated;
      this.counters.windows_evaluated += evaluated;
      s.next = upTo;
      if (upTo > this.nextMax) this.nextMax = upTo;
      // Windows that fit: the step grows back, twice as many at a time.
      s.step = Math.min(this.opts.windowsPerTickMax, s.step * 2);
    }
  }

  /**
   * Evaluates again the windows (before the cursor) that late seconds fall in, oldest first, runs
   * of adjacent windows in one read (at most `step` windows, as catch-up); each window start done
   * goes into `revised`.
   */
  private revise(s: QueryState, late: number[], pending: Map<string, WindowResult>, budget: EvalOptions, revised: Set<number>): void {
    const W = s.parsed.windowSeconds;
    const set = new Set<number>();
    for (const sec of late) {
      const start = sec - (((sec % W) + W) % W);
      // Never before its first window: late data made results dated before the query existed.
      if (start < s.next && start >= s.first) set.add(start);
    }
    const starts = [...set].sort((a, b) => a - b);
    for (let i = 0; i < starts.length; ) {
      let j = i + 1;
      while (j < starts.length && j - i < s.step && starts[j] === starts[j - 1]! + W) j++;
      const from = starts[i]!;
      const to = starts[j - 1]! + W;
      this.evaluating = { start: from, windows: j - i, revision: true };
      for (const w of evaluate(this.store, s.parsed, from, to, budget)) pending.set(resultKey(s.def.id, w.startMs), w);
      for (let k = i; k < j; k++) revised.add(starts[k]!);
      i = j;
    }
  }

  /** Stores the queries' new and changed windows and their cursors in one transaction, then announces them. */
  private commit(done: readonly { s: QueryState; pending: Map<string, WindowResult> }[]): void {
    const changed: [StoredQuery, string, WindowResult, string][] = [];
    for (const { s, pending } of done) {
      for (const [key, w] of pending) {
        const oldJson = this.results.get(key);
        const old = oldJson === undefined ? undefined : (JSON.parse(oldJson) as WindowResult);
        if (old !== undefined) {
          if (sameValues(old, w) || sameButExactness(old, w)) continue;
          w.revision = old.revision + 1;
          this.counters.windows_revised++;
        }
        changed.push([s.def, key, w, windowJson(w)]);
      }
    }
    this.root.transactionSync(() => {
      for (const [, key, , json] of changed) void this.results.put(key, json);
      for (const { s } of done) void this.cursors.put(s.def.id, { query: s.def.query, next: s.next, first: s.first });
    });
    for (const [def, , w] of changed) this.onWindow?.(def.id, w, def.query);
  }
}

/** Whether a stored window (read back from JSON) holds the values of a new one. */
function sameValues(a: WindowResult, b: WindowResult): boolean {
  if (a.count !== b.count || a.servers !== b.servers) return false;
  // JSON keeps ±Infinity and NaN as null: compared as stored (before: a sum that overflowed never matched, and every re-evaluation revised its window).
  for (const k of Object.keys(b.values)) if (a.values[k] !== asStored(b.values[k])) return false;
  return true;
}

/**
 * Whether a window evaluated again differs from the stored one only in how its gauge percentiles
 * were computed: the first evaluation, in a catch-up with many windows open, sketched them past
 * the exact-values bound; one window alone is exact. Same observations (count, servers, every
 * other value): not a revision — before, late data of another metric re-evaluated the window and
 * it came back "revised" with none of its data changed.
 */
function sameButExactness(a: WindowResult, b: WindowResult): boolean {
  if ((a.sketched === true) === (b.sketched === true) || a.count !== b.count || a.servers !== b.servers) return false;
  for (const k of Object.keys(b.values)) if (!k.startsWith('percentile(') && a.values[k] !== asStored(b.values[k])) return false;
  return true;
}

function asStored(v: number | null | undefined): number | null | undefined {
  return typeof v === 'number' && !Number.isFinite(v) ? null : v;
}

function alignedStart(ms: number, W: number): number {
  const s = Math.floor(ms / 1000);
  return s - (s % W);
}

/** Keys sort by query, then window start (zero-padded ms). */
function resultKey(id: string, startMs: number): string {
  return `${id}:${String(Math.max(0, startMs)).padStart(15, '0')}`;
}
