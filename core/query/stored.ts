// Stored queries (issue 5): kept in LMDB, evaluated window by window once a window's
// watermark (end + lateness) passes, results stored and pushed to live subscribers. Batches
// that arrive for seconds already evaluated make the windows holding them re-evaluate; a
// changed result gets revision + 1. After downtime the missed windows are computed from storage.

import { randomBytes } from 'node:crypto';
import type { Database, RootDatabase } from 'lmdb';
import type { Store } from '../store.js';
import { evaluate, type WindowResult } from './eval.js';
import { parseQuery, type Query } from './parse.js';

export interface StoredQuery {
  id: string;
  name: string;
  query: string;
  createdMs: number;
}

interface QueryState {
  def: StoredQuery;
  parsed: Query;
  /** Start (s) of the next window to evaluate. */
  next: number;
}

export interface StoredOptions {
  latenessMs: number;
  /** Newest windows per query kept in memory for the results API (2 h of 5 s windows by default). */
  recentWindowsMax?: number;
  /** Windows one query may evaluate per tick; the rest are counted as behind and caught up next tick. */
  windowsPerTickMax: number;
  queriesMax: number;
  lateSecondsMax: number;
}

export type Listener = (queryId: string, w: WindowResult) => void;

export class StoredQueries {
  private readonly defs: Database<StoredQuery & { next?: number }, string>;
  /** Window results as JSON text: served by concatenation, without a parse per request. */
  private readonly results: Database<string, string>;
  private readonly states = new Map<string, QueryState>();
  private readonly lateSeconds = new Set<number>();
  /** Newest results per query as JSON, in memory: the results API answers from here when it can. */
  private readonly recent = new Map<string, { starts: number[]; json: string[]; all: boolean }>();
  private readonly listeners = new Set<Listener>();
  private lock: Promise<unknown> = Promise.resolve();
  readonly counters = { windows_evaluated: 0, windows_revised: 0, windows_behind: 0, late_seconds_dropped: 0, evaluation_errors: 0 };

  constructor(
    root: RootDatabase,
    private readonly store: Store,
    private readonly opts: StoredOptions,
  ) {
    this.defs = root.openDB({ name: 'queries', encoding: 'json' });
    this.results = root.openDB({ name: 'results', encoding: 'string' });
    for (const { value } of this.defs.getRange()) {
      const parsed = parseQuery(value.query);
      this.states.set(value.id, { def: { id: value.id, name: value.name, query: value.query, createdMs: value.createdMs }, parsed, next: value.next ?? alignedStart(value.createdMs, parsed.windowSeconds) });
      this.warm(value.id);
    }
  }

  list(): StoredQuery[] {
    return [...this.states.values()].map((s) => s.def);
  }

  get(id: string): StoredQuery | undefined {
    return this.states.get(id)?.def;
  }

  /** Creates a stored query (throws QueryError on a bad query; Error when at the limit). */
  async create(name: string, query: string, nowMs: number): Promise<StoredQuery> {
    const parsed = parseQuery(query);
    if (this.states.size >= this.opts.queriesMax) throw new Error(`at most ${this.opts.queriesMax} stored queries; delete one first`);
    const def: StoredQuery = { id: randomBytes(6).toString('hex'), name, query: parsed.text, createdMs: nowMs };
    // Start with the window before creation, so a new chart has a point at once.
    const next = alignedStart(nowMs, parsed.windowSeconds) - parsed.windowSeconds;
    await this.defs.put(def.id, { ...def, next });
    this.states.set(def.id, { def, parsed, next });
    this.recent.set(def.id, { starts: [], json: [], all: true });
    return def;
  }

  /**
   * Replaces a stored query's name and text, keeping its id. Its old results no longer
   * describe it, so they are deleted and evaluation restarts at the window before now, like a
   * new query (the dashboard fills older ranges with ad-hoc queries).
   */
  async update(id: string, name: string, query: string, nowMs: number): Promise<StoredQuery | undefined> {
    const parsed = parseQuery(query);
    return this.exclusive(() => this.replace(id, name, parsed, nowMs));
  }

  private async replace(id: string, name: string, parsed: Query, nowMs: number): Promise<StoredQuery | undefined> {
    const s = this.states.get(id);
    if (s === undefined) return undefined;
    const def: StoredQuery = { id, name, query: parsed.text, createdMs: s.def.createdMs };
    const next = alignedStart(nowMs, parsed.windowSeconds) - parsed.windowSeconds;
    await this.dropResults(id);
    await this.defs.put(id, { ...def, next });
    this.states.set(id, { def, parsed, next });
    this.recent.set(id, { starts: [], json: [], all: true });
    return def;
  }

  /**
   * How long ago the oldest window still waiting for evaluation ended, over every stored query
   * (s; 0 with none waiting). On time, this stays at about the lateness; a query catching up
   * after downtime shows how far behind it is.
   */
  lagSeconds(nowMs: number): number {
    let lag = 0;
    for (const s of this.states.values()) lag = Math.max(lag, nowMs / 1000 - (s.next + s.parsed.windowSeconds));
    return lag;
  }

  private async dropResults(id: string): Promise<void> {
    const keys = [...this.results.getKeys({ start: `${id}:`, end: `${id};` })];
    await this.results.transaction(() => keys.forEach((k) => this.results.remove(k)));
  }

  delete(id: string): Promise<boolean> {
    return this.exclusive(() => this.remove(id));
  }

  private async remove(id: string): Promise<boolean> {
    if (!this.states.delete(id)) return false;
    this.recent.delete(id);
    await this.defs.remove(id);
    await this.dropResults(id);
    return true;
  }

  private get recentMax(): number {
    return this.opts.recentWindowsMax ?? 1440;
  }

  /** Loads a query's newest results into memory (after a restart). */
  private warm(id: string): void {
    const newest = [...this.results.getRange({ start: resultKey(id, Number.MAX_SAFE_INTEGER), end: resultKey(id, 0), reverse: true, limit: this.recentMax })];
    newest.reverse();
    this.recent.set(id, { starts: newest.map((e) => Number(e.key.slice(id.length + 1))), json: newest.map((e) => e.value), all: newest.length < this.recentMax });
  }

  private remember(id: string, startMs: number, json: string): void {
    let r = this.recent.get(id);
    if (r === undefined) this.recent.set(id, (r = { starts: [], json: [], all: true }));
    const last = r.starts.length - 1;
    if (last < 0 || startMs > r.starts[last]!) {
      r.starts.push(startMs);
      r.json.push(json);
      if (r.starts.length > this.recentMax + 256) {
        // Drop the oldest in chunks; from now on the memory covers only the newest windows.
        r.starts.splice(0, 256);
        r.json.splice(0, 256);
        r.all = false;
      }
      return;
    }
    const i = lowerBound(r.starts, startMs);
    if (r.starts[i] === startMs) r.json[i] = json;
    else if (i > 0 || r.all) {
      r.starts.splice(i, 0, startMs);
      r.json.splice(i, 0, json);
    }
  }

  /** Stored results with start in [fromMs, toMs), ascending. */
  results_(id: string, fromMs: number, toMs: number): WindowResult[] {
    return this.resultsJson(id, fromMs, toMs, Infinity).map((j) => JSON.parse(j) as WindowResult);
  }

  /** The same as JSON texts, at most `limit + 1` of them (the caller refuses more than limit). */
  resultsJson(id: string, fromMs: number, toMs: number, limit: number): string[] {
    const r = this.recent.get(id);
    if (r !== undefined && (r.all || (r.starts.length > 0 && fromMs >= r.starts[0]!))) {
      const a = lowerBound(r.starts, fromMs);
      const b = lowerBound(r.starts, toMs);
      return r.json.slice(a, Math.min(b, a + limit + 1));
    }
    const out: string[] = [];
    for (const e of this.results.getRange({ start: resultKey(id, Math.max(0, fromMs)), end: resultKey(id, toMs) })) {
      out.push(e.value);
      if (out.length > limit) break;
    }
    return out;
  }

  subscribe(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Notes that data arrived for `second`: windows already evaluated over it are redone. */
  noteData(second: number): void {
    if (!this.anyPast(second)) return;
    if (this.lateSeconds.size >= this.opts.lateSecondsMax) {
      this.counters.late_seconds_dropped++;
      return;
    }
    this.lateSeconds.add(second);
  }

  private anyPast(second: number): boolean {
    for (const s of this.states.values()) if (s.next > second) return true;
    return false;
  }

  /** Evaluates every window whose watermark has passed, then re-evaluates windows touched by late data. */
  tick(nowMs: number): Promise<void> {
    return this.exclusive(() => this.evaluateDue(nowMs));
  }

  /**
   * Runs `f` after every change or evaluation already started: an edit or delete never
   * interleaves with an evaluation writing results of the old definition (its awaits included).
   */
  private exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.lock.then(f, f);
    this.lock = run.catch(() => undefined);
    return run;
  }

  private async evaluateDue(nowMs: number): Promise<void> {
    const late = [...this.lateSeconds];
    this.lateSeconds.clear();
    for (const s of this.states.values()) {
      try {
        await this.advance(s, nowMs);
        await this.revise(s, late);
      } catch (err) {
        this.counters.evaluation_errors++;
        console.error(`core: stored query ${s.def.id} failed: ${(err as Error).message}`);
      }
    }
  }

  private async advance(s: QueryState, nowMs: number): Promise<void> {
    const W = s.parsed.windowSeconds;
    let done = 0;
    while ((s.next + W) * 1000 + this.opts.latenessMs <= nowMs) {
      if (done >= this.opts.windowsPerTickMax) {
        this.counters.windows_behind++;
        break;
      }
      // Catch-up evaluates many windows in one read.
      const upTo = Math.min(s.next + W * (this.opts.windowsPerTickMax - done), Math.floor((nowMs - this.opts.latenessMs) / 1000 / W) * W);
      const windows = evaluate(this.store, s.parsed, s.next, upTo);
      for (const w of windows) await this.publish(s, w, false);
      const evaluated = Math.max(1, (upTo - s.next) / W);
      done += evaluated;
      this.counters.windows_evaluated += evaluated;
      s.next = upTo;
      if (this.states.get(s.def.id) !== s) return; // edited or deleted meanwhile
      await this.defs.put(s.def.id, { ...s.def, next: s.next });
    }
  }

  private async revise(s: QueryState, late: number[]): Promise<void> {
    const W = s.parsed.windowSeconds;
    const starts = new Set<number>();
    for (const sec of late) {
      const start = sec - (((sec % W) + W) % W);
      if (start < s.next) starts.add(start);
    }
    for (const start of starts) {
      const [w] = evaluate(this.store, s.parsed, start, start + W);
      if (w !== undefined) await this.publish(s, w, true);
    }
  }

  private async publish(s: QueryState, w: WindowResult, revision: boolean): Promise<void> {
    // An evaluation that began before the query was edited or deleted must not land under its id.
    if (this.states.get(s.def.id) !== s) return;
    const key = resultKey(s.def.id, w.startMs);
    const oldJson = this.results.get(key);
    const old = oldJson === undefined ? undefined : (JSON.parse(oldJson) as WindowResult);
    if (old !== undefined) {
      if (sameValues(old, w)) return;
      w.revision = old.revision + 1;
      this.counters.windows_revised++;
    } else if (revision) {
      w.revision = 0;
    }
    const json = JSON.stringify(w);
    await this.results.put(key, json);
    this.remember(s.def.id, w.startMs, json);
    for (const l of this.listeners) l(s.def.id, w);
  }
}

/** First index with a[i] ≥ x (a ascending). */
function lowerBound(a: number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function sameValues(a: WindowResult, b: WindowResult): boolean {
  if (a.count !== b.count || a.servers !== b.servers) return false;
  for (const k of Object.keys(b.values)) if (a.values[k] !== b.values[k]) return false;
  return true;
}

function alignedStart(ms: number, W: number): number {
  const s = Math.floor(ms / 1000);
  return s - (s % W);
}

/** Keys sort by query, then window start (zero-padded ms). */
function resultKey(id: string, startMs: number): string {
  return `${id}:${String(Math.max(0, startMs)).padStart(15, '0')}`;
}
