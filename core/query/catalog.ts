// Stored-query definitions on the HTTP thread (issue 12): kept in the node's meta environment,
// handed to the workers that own their metrics (core/pool.ts), and the newest results of each
// query in memory, fed by the workers as windows close, so the results API and live streams
// answer without a worker round trip. Older ranges are read from the owning worker's store.
// A stored definition that no longer parses is set aside (counted, listed), never fatal (issue 16).
// Where definitions are kept is a DefinitionStore: the node's meta LMDB (LmdbDefinitions), or in
// a cluster KV apm-queries (core/cluster/queries.ts), whose watch feeds other nodes' changes in
// through applyChange(); there each node's workers evaluate only the queries it is the first
// ready owner of (evaluatesHere), and windows from other nodes arrive through receiveWindow().

import { randomBytes } from 'node:crypto';
import type { Database } from 'lmdb';
import { WorkerError, type ShardPool } from '../pool.js';
import type { WindowResult } from './eval.js';
import { parseQuery, type Query } from './parse.js';
import type { Listener, StoredQuery } from './stored.js';

/** Where stored-query definitions are kept. */
export interface DefinitionStore {
  /** Every definition kept now (read once, when the catalog is built). */
  load(): StoredQuery[];
  /** Keeps a new definition; throws DefinitionConflict when its id is taken. */
  create(def: StoredQuery): Promise<void>;
  /** Replaces a definition; throws DefinitionConflict when another writer changed it since this node last saw it. */
  update(def: StoredQuery): Promise<void>;
  remove(id: string): Promise<void>;
}

/** Two writers changed one definition at once (a cluster's KV compare-and-set refused this one): answered 409. */
export class DefinitionConflict extends Error {}

/** Definitions in the node's meta environment (one node, no cluster). */
export class LmdbDefinitions implements DefinitionStore {
  constructor(private readonly db: Database<StoredQuery & { next?: number }, string>) {}
  load(): StoredQuery[] {
    return [...this.db.getRange()].map(({ value }) => ({ id: value.id, name: value.name, query: value.query, createdMs: value.createdMs }));
  }
  async create(def: StoredQuery): Promise<void> {
    await this.db.put(def.id, def);
  }
  async update(def: StoredQuery): Promise<void> {
    await this.db.put(def.id, def);
  }
  async remove(id: string): Promise<void> {
    await this.db.remove(id);
  }
}

export interface CatalogOptions {
  queriesMax: number;
  /** A cluster: whether this node's workers evaluate the queries of `metric` (it is the first ready owner of its shard); absent: all. */
  evaluatesHere?: (metric: string) => boolean;
  /** Called with each window this node's own workers evaluated (a cluster publishes it to the other nodes). */
  onOwnWindow?: (id: string, w: WindowResult) => void;
  /** Newest windows per query kept in memory for the results API (2 h of 5 s windows by default). */
  recentWindowsMax?: number;
}

interface Recent {
  starts: number[];
  json: string[];
  /** True while memory holds every result the query has. */
  all: boolean;
  /** Windows remembered since this record was made (an answer kept by resultsAnswer is current while it does not change). */
  changes?: number;
}

/** Answers of the results route kept (many dashboards read the same range between two windows), by count and bytes. */
const answersKeptMax = 64;
const answersKeptBytesMax = 16 * 1024 * 1024;
/**
 * At most this long (ms): results the retention deleted, or (in a cluster) a query whose windows
 * stopped arriving here, change no record; an answer is served at most this much older than them.
 */
const answerKeepMs = 1000;

export class QueryCatalog {
  private readonly defs = new Map<string, { def: StoredQuery; parsed: Query }>();
  private readonly recent = new Map<string, Recent>();
  /** resultsAnswer's texts by query id and range, oldest first. */
  private readonly answers = new Map<string, { r: Recent | undefined; changes: number; atMs: number; text: Uint8Array<ArrayBuffer> | null }>();
  /** resultsAnswer: answers sent again (kept) or built, kept ones evicted by the bounds, bytes held. */
  readonly answerCounters = { kept: 0, built: 0, evicted: 0, bytes: 0 };
  private readonly listeners = new Set<Listener>();
  /** Told after any definition was created, edited, renamed or deleted (here or, in a cluster, elsewhere). */
  private readonly definitionListeners = new Set<() => void>();
  /** Definitions that no longer parse: kept, not evaluated, listed with the reason (at most queriesMax). */
  private readonly unparsable: { id: string; query: string; error: string }[] = [];
  /**
   * Definitions the store holds beyond queriesMax (a cluster: two nodes created at once near the
   * limit, or this node's limit is lower than another's): not evaluated here, listed; the oldest
   * learned takes the first place a deletion frees. At most queriesMax.
   */
  private readonly overLimit = new Map<string, StoredQuery>();
  /** Definitions from the store neither kept nor listed: both lists above were full (each logged). */
  definitionsDropped = 0;
  private lock: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly db: DefinitionStore,
    private readonly pool: ShardPool,
    private readonly opts: CatalogOptions,
  ) {
    for (const def of db.load()) this.learn(def);
    pool.onWindow = (id, w, query) => {
      // A window of the text before an edit, evaluated before the worker heard of it: not this
      // query's any more (before, it was served and streamed as a result of the new text).
      if (this.defs.get(id)?.def.query !== query) return;
      this.remember(id, w);
      opts.onOwnWindow?.(id, w);
    };
  }

  /** Every definition set aside, with why: the text no longer parses, or it is beyond the limit. */
  get unloadable(): { id: string; query: string; error: string }[] {
    const out = [...this.unparsable];
    for (const def of this.overLimit.values()) out.push({ id: def.id, query: def.query, error: `beyond the limit of ${this.opts.queriesMax} stored queries (created elsewhere meanwhile): not evaluated; delete a query to make room` });
    return out;
  }

  /**
   * Takes a definition the store holds that this catalog does not (at start, or another writer's
   * change): kept and evaluated; set aside when its text does not parse or the catalog is full.
   * Returns whether it was kept.
   */
  private learn(def: StoredQuery): boolean {
    let parsed: Query;
    try {
      parsed = parseQuery(def.query);
    } catch (err) {
      if (this.unparsable.length >= this.opts.queriesMax) return this.drop(def, 'it does not parse');
      this.unparsable.push({ id: def.id, query: def.query, error: (err as Error).message });
      console.error(`apm core: stored query ${def.id} (${JSON.stringify(def.query.slice(0, 200))}) does not parse (${(err as Error).message}); set aside — delete it with DELETE /api/v1/queries/${def.id}`);
      return false;
    }
    if (this.defs.size >= this.opts.queriesMax) {
      if (this.overLimit.size >= this.opts.queriesMax) return this.drop(def, 'the catalog is full');
      this.overLimit.set(def.id, def);
      console.error(`apm core: stored query ${def.id} is beyond the limit of ${this.opts.queriesMax} stored queries; set aside, not evaluated — delete a query to make room, or delete it with DELETE /api/v1/queries/${def.id}`);
      return false;
    }
    this.defs.set(def.id, { def, parsed });
    this.recent.set(def.id, { starts: [], json: [], all: false });
    return true;
  }

  private drop(def: StoredQuery, why: string): false {
    this.definitionsDropped++;
    if (this.definitionsDropped === 1 || this.definitionsDropped % 1000 === 0) console.error(`apm core: stored query ${def.id} not kept (${why}) and not listed: ${this.opts.queriesMax} are set aside already (${this.definitionsDropped} dropped so far); delete set-aside queries from the store`);
    return false;
  }

  /** Forgets a set-aside definition; true when there was one. */
  private forgetSetAside(id: string): boolean {
    if (this.overLimit.delete(id)) return true;
    const at = this.unparsable.findIndex((u) => u.id === id);
    if (at < 0) return false;
    this.unparsable.splice(at, 1);
    return true;
  }

  /** After a deletion: the oldest definition set aside beyond the limit takes the free place. */
  private admitOverLimit(): void {
    while (this.defs.size < this.opts.queriesMax && this.overLimit.size > 0) {
      const [id, def] = this.overLimit.entries().next().value as [string, StoredQuery];
      this.overLimit.delete(id);
      this.learn(def);
    }
  }

  /** Hands the definitions to the workers and loads each query's newest results into memory. */
  async start(): Promise<void> {
    await this.syncWorkers();
    for (const { def, parsed } of this.defs.values()) {
      const json = await this.pool.results({ id: def.id, metric: parsed.metric }, { fromMs: 0, toMs: 0, limit: this.recentMax, newest: true });
      const r = { starts: json.map((j) => (JSON.parse(j) as WindowResult).startMs), json, all: json.length < this.recentMax };
      const live = this.recent.get(def.id);
      // Windows that arrived while loading are newer: a new one goes after the loaded ones, a
      // revision of a loaded one replaces it (before: dropped, and memory served the old version
      // until the next restart — likely right after one, when replayed seconds revise windows).
      if (live !== undefined) for (let i = 0; i < live.starts.length; i++) placeWindow(r, live.starts[i]!, live.json[i]!);
      this.recent.set(def.id, r);
    }
  }

  private syncWorkers(): Promise<void> {
    const here = this.opts.evaluatesHere;
    const all = [...this.defs.values()];
    return this.pool.sync(
      all.filter((d) => here === undefined || here(d.parsed.metric)).map((d) => d.def),
      (d) => this.defs.get(d.id)?.parsed.metric ?? '',
      here === undefined ? [] : all.filter((d) => !here(d.parsed.metric)).map((d) => d.def),
    );
  }

  /** Hands the workers the definitions again (a cluster: after the placement or a node's readiness changed). */
  resync(): Promise<void> {
    return this.exclusive(() => this.syncWorkers());
  }

  /**
   * A change another writer made (a cluster's KV watch): `def` null for a deletion. The node's
   * own changes come back here too and change nothing. Throws nothing: a definition that does
   * not parse is set aside as at start.
   */
  applyChange(id: string, def: StoredQuery | null): Promise<void> {
    return this.exclusive(async () => {
      const had = this.defs.get(id);
      const setAside = this.forgetSetAside(id);
      if (def === null) {
        if (had === undefined) {
          if (setAside) this.definitionsChanged();
          return;
        }
        this.defs.delete(id);
        this.recent.delete(id);
        this.admitOverLimit();
        this.definitionsChanged();
        await this.syncWorkers();
        return;
      }
      if (had !== undefined && had.def.query === def.query) {
        // Renamed, or this node's own change coming back (results stand; nothing new to tell).
        if (had.def.name !== def.name) this.definitionsChanged();
        had.def = def;
        return;
      }
      this.definitionsChanged();
      if (had !== undefined) (this.defs.delete(id), this.recent.delete(id));
      // Results of another text, or none yet: memory holds all only from here on (learn).
      const kept = this.learn(def);
      if (kept || had !== undefined) await this.syncWorkers();
    });
  }

  /** A window another node evaluated (a cluster's results subject): kept and streamed as a local one. */
  receiveWindow(id: string, w: WindowResult): void {
    this.remember(id, w);
  }

  list(): StoredQuery[] {
    return [...this.defs.values()].map((d) => d.def);
  }

  get(id: string): StoredQuery | undefined {
    return this.defs.get(id)?.def;
  }

  /** The metric a stored query reads (undefined: no such query). */
  metricOf(id: string): string | undefined {
    return this.defs.get(id)?.parsed.metric;
  }

  /** Creates a stored query (throws QueryError on a bad query; StoredQueryLimit when at the limit). */
  create(name: string, query: string, nowMs: number): Promise<StoredQuery> {
    const parsed = parseQuery(query);
    return this.exclusive(async () => {
      if (this.defs.size >= this.opts.queriesMax) throw new StoredQueryLimit(`at most ${this.opts.queriesMax} stored queries; delete one first`);
      const def: StoredQuery = { id: randomBytes(6).toString('hex'), name, query: parsed.text, createdMs: nowMs };
      await this.db.create(def);
      this.defs.set(def.id, { def, parsed });
      this.recent.set(def.id, { starts: [], json: [], all: true });
      this.definitionsChanged();
      await this.syncAfterChange();
      return def;
    });
  }

  /**
   * Replaces a stored query's name and text, keeping its id. Its old results no longer describe
   * it: the worker drops them and evaluation restarts at the window before now.
   */
  update(id: string, name: string, query: string): Promise<StoredQuery | undefined> {
    const parsed = parseQuery(query);
    return this.exclusive(async () => {
      const d = this.defs.get(id);
      if (d === undefined) return undefined;
      const def: StoredQuery = { id, name, query: parsed.text, createdMs: d.def.createdMs };
      await this.db.update(def);
      const old = d.parsed;
      this.defs.set(id, { def, parsed });
      this.definitionsChanged();
      if (old.text === parsed.text) return def; // renamed: results stand
      this.recent.set(id, { starts: [], json: [], all: true });
      // The worker drops the old results; a new metric may live in another worker, which starts it.
      await this.syncAfterChange();
      return def;
    });
  }

  delete(id: string): Promise<boolean> {
    return this.exclusive(async () => {
      if (this.overLimit.has(id) || this.unparsable.some((u) => u.id === id)) {
        await this.db.remove(id);
        this.forgetSetAside(id);
        this.definitionsChanged();
        return true;
      }
      if (!this.defs.has(id)) return false;
      await this.db.remove(id); // first: a store that refuses leaves the catalog as it was
      this.defs.delete(id);
      this.recent.delete(id);
      this.admitOverLimit();
      this.definitionsChanged();
      await this.syncAfterChange();
      return true;
    });
  }

  /**
   * The workers told of a change already made durable. A worker restarting or too busy to answer
   * gets every definition when it is back (ShardPool.sync keeps them; a restart syncs its slot),
   * so the change stands and its caller is told so: before, it was answered 409 or 503 although
   * it had taken effect, and a client that retried a create made the query twice.
   */
  private async syncAfterChange(): Promise<void> {
    try {
      await this.syncWorkers();
    } catch (err) {
      if (!(err instanceof WorkerError)) throw err;
      this.syncDeferred++;
      console.error(`apm core: stored queries changed; a worker gets them when it answers again (${err.message})`);
    }
  }

  /** Changes whose workers were told later (a worker restarting or busy). */
  syncDeferred = 0;

  /** One change at a time: the workers see definitions in the order they were made. */
  private exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.lock.then(f, f);
    this.lock = run.catch(() => undefined);
    return run;
  }

  lagSeconds(): number {
    return this.pool.stats().lagSeconds;
  }

  private get recentMax(): number {
    return this.opts.recentWindowsMax ?? 1440;
  }

  private remember(id: string, w: WindowResult): void {
    const r = this.recent.get(id);
    if (r === undefined) return; // deleted meanwhile
    r.changes = (r.changes ?? 0) + 1;
    if (placeWindow(r, w.startMs, JSON.stringify(w)) && r.starts.length > this.recentMax + 256) {
      // Drop the oldest in chunks; from now on the memory covers only the newest windows.
      r.starts.splice(0, 256);
      r.json.splice(0, 256);
      r.all = false;
    }
    for (const l of this.listeners) l(id, w);
  }

  /**
   * build(resultsJson(id, fromMs, toMs, limit)), the same text again while no window of the query
   * arrived and for at most answerKeepMs (a results answer of 720 windows is ~90 KB of text).
   */
  async resultsAnswer(id: string, fromMs: number, toMs: number, limit: number, build: (windows: string[]) => Uint8Array<ArrayBuffer> | null): Promise<Uint8Array<ArrayBuffer> | null> {
    const key = `${id} ${fromMs} ${toMs} ${limit}`;
    const r = this.recent.get(id);
    const changes = r?.changes ?? 0;
    const atMs = performance.now();
    const kept = this.answers.get(key);
    if (kept !== undefined && kept.r === r && kept.changes === changes && atMs - kept.atMs < answerKeepMs) {
      this.answerCounters.kept++;
      return kept.text;
    }
    const text = build(await this.resultsJson(id, fromMs, toMs, limit));
    this.answerCounters.built++;
    this.forgetAnswer(key);
    const bytes = text?.length ?? 0;
    if (bytes > answersKeptBytesMax / 4) return text;
    for (const k of this.answers.keys()) {
      if (this.answers.size < answersKeptMax && this.answerCounters.bytes + bytes <= answersKeptBytesMax) break;
      this.forgetAnswer(k);
      this.answerCounters.evicted++;
    }
    this.answers.set(key, { r, changes, atMs, text });
    this.answerCounters.bytes += bytes;
    return text;
  }

  private forgetAnswer(key: string): void {
    const a = this.answers.get(key);
    if (a === undefined) return;
    this.answers.delete(key);
    this.answerCounters.bytes -= a.text?.length ?? 0;
  }

  /** The parsed text of a stored query (undefined: none with that id). */
  parsed(id: string): Query | undefined {
    return this.defs.get(id)?.parsed;
  }

  /** Stored results with start in [fromMs, toMs) as JSON texts, at most `limit + 1` of them. */
  async resultsJson(id: string, fromMs: number, toMs: number, limit: number): Promise<string[]> {
    const r = this.recent.get(id);
    if (r !== undefined && (r.all || (r.starts.length > 0 && fromMs >= r.starts[0]!))) {
      const a = lowerBound(r.starts, fromMs);
      const b = lowerBound(r.starts, toMs);
      return r.json.slice(a, Math.min(b, a + limit + 1));
    }
    const d = this.defs.get(id);
    if (d === undefined) return [];
    return this.pool.results({ id, metric: d.parsed.metric }, { fromMs, toMs, limit });
  }

  subscribe(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /**
   * Calls `l` after each change to the definitions (a dashboard's live stream tells its page,
   * which lists them again: before, a page kept deleted panels and drew an edited query's new
   * windows into its old chart until reloaded).
   */
  onDefinitions(l: () => void): () => void {
    this.definitionListeners.add(l);
    return () => this.definitionListeners.delete(l);
  }

  private definitionsChanged(): void {
    for (const l of this.definitionListeners) l();
  }
}

/**
 * A window into a query's newest results: after the others (returns true), or in place of the
 * one of its start (a revision), or inside the range memory holds; one older than all while
 * memory holds only the newest windows is left to the store.
 */
function placeWindow(r: Recent, start: number, json: string): boolean {
  const last = r.starts.length - 1;
  if (last < 0 || start > r.starts[last]!) {
    r.starts.push(start);
    r.json.push(json);
    return true;
  }
  const i = lowerBound(r.starts, start);
  if (r.starts[i] === start) r.json[i] = json;
  else if (i > 0 || r.all) {
    r.starts.splice(i, 0, start);
    r.json.splice(i, 0, json);
  }
  return false;
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

/** Creating a stored query past the catalog's bound (answered 409). */
export class StoredQueryLimit extends Error {}
