// What the core has seen: racks, servers (id, rack, first/last seen) and metrics (hash, name,
// kind, first/last seen), kept in LMDB and mirrored in memory. Servers get small integer ids
// that storage rows use; metrics are keyed by their stable 64-bit name hash (schema/names.ts),
// so a node that owns a subset of metrics needs no id translation (DESIGN §1 scale-out).

import type { Database } from 'lmdb';
import { HashIndex } from '../lib/hashtable.js';
import { hashKey } from '../schema/names.js';

export interface ServerInfo {
  id: number;
  name: string;
  rack: string;
  firstSeenMs: number;
  lastSeenMs: number;
}

export interface MetricInfo {
  hash: string;
  name: string | null;
  kind: number;
  firstSeenMs: number;
  lastSeenMs: number;
}

export interface StoredServer {
  id: number;
  rack: string;
  first: number;
  last: number;
}

export interface StoredMetric {
  lo: number;
  hi: number;
  name: string | null;
  kind: number;
  first: number;
  last: number;
  /** The server id that introduced it (per-server cardinality limit); absent: none known. */
  by?: number;
}

/** Why a new metric was not registered: its server's budget or the registry's total is spent. */
export type OverflowScope = 'server' | 'total';

export class Registry {
  private readonly serversByName = new Map<string, ServerInfo>();
  private readonly serversById: (ServerInfo | undefined)[] = [];
  /** Ids of retired servers, reused first (so ids, and arrays indexed by them, stay about the count of servers). */
  private readonly freeServerIds: number[] = [];
  private readonly metricIndex: HashIndex;
  /** By metric index; undefined: retired (its index is reused by the next new metric). */
  private readonly metrics: (MetricInfo | undefined)[] = [];
  private readonly metricHashes: Uint32Array;
  private readonly dirtyServers = new Set<ServerInfo>();
  private readonly dirtyMetrics = new Set<number>();
  /** The last-seen time on disk of each server (by id) and metric (by index): touchDue() writes the ones far behind. */
  private readonly savedServerMs: number[] = [];
  private readonly savedMetricMs: number[] = [];
  /** Server id that introduced each metric (−1: none known), and how many each server introduced. */
  private readonly metricBy: number[] = [];
  private readonly introducedBy: number[] = [];
  /** New metrics refused, by scope: each batch that names a refused metric counts once more. */
  readonly overflow: Record<OverflowScope, number> = { server: 0, total: 0 };
  /** Servers and metrics forgotten by retire() (not seen for longer than the retention keeps rows). */
  readonly retired = { servers: 0, metrics: 0 };
  /** Changes whenever a server is registered or retired (answers kept per window key on it: a glob may select another set). */
  serverEpoch = 0;

  constructor(
    private readonly serverDb: Database<StoredServer, string>,
    private readonly metricDb: Database<StoredMetric, string>,
    readonly metricsMax: number,
  ) {
    this.metricIndex = new HashIndex(metricsMax);
    this.metricHashes = new Uint32Array(2 * metricsMax);
    for (const { key, value } of serverDb.getRange()) {
      const info = { id: value.id, name: key, rack: value.rack, firstSeenMs: value.first, lastSeenMs: value.last };
      this.serversByName.set(key, info);
      this.serversById[value.id] = info;
      this.savedServerMs[value.id] = value.last;
    }
    // Ids of servers retired before the restart, reused first (highest last: pop() takes the lowest).
    for (let id = this.serversById.length - 1; id >= 0; id--) if (this.serversById[id] === undefined) this.freeServerIds.push(id);
    for (const { value } of metricDb.getRange()) {
      const m = this.metricIndex.insert(value.lo, value.hi);
      if (m < 0) break;
      this.metricHashes[2 * m] = value.lo;
      this.metricHashes[2 * m + 1] = value.hi;
      this.metrics[m] = { hash: hashKey(value.lo, value.hi), name: value.name, kind: value.kind, firstSeenMs: value.first, lastSeenMs: value.last };
      this.savedMetricMs[m] = value.last;
      this.noteOwner(m, value.by ?? -1);
    }
  }

  private noteOwner(m: number, serverId: number): void {
    this.metricBy[m] = serverId;
    if (serverId >= 0) this.introducedBy[serverId] = (this.introducedBy[serverId] ?? 0) + 1;
  }

  /** The server's id, registering it (or its move to another rack); changes persist with flushDirty(). */
  server(name: string, rack: string, nowMs: number): ServerInfo {
    let s = this.serversByName.get(name);
    if (s === undefined) {
      s = { id: this.freeServerIds.pop() ?? this.serversById.length, name, rack, firstSeenMs: nowMs, lastSeenMs: nowMs };
      this.serversByName.set(name, s);
      this.serversById[s.id] = s;
      this.dirtyServers.add(s);
      this.serverEpoch++;
    } else if (s.rack !== rack) {
      s.rack = rack;
      this.dirtyServers.add(s);
    }
    s.lastSeenMs = Math.max(s.lastSeenMs, nowMs);
    return s;
  }

  /** Notes a known server as seen at nowMs (rows of it arrived another way: a restored shard). */
  seen(s: ServerInfo, nowMs: number): ServerInfo {
    s.lastSeenMs = Math.max(s.lastSeenMs, nowMs);
    return s;
  }

  serverById(id: number): ServerInfo | undefined {
    return this.serversById[id];
  }

  serverByName(name: string): ServerInfo | undefined {
    return this.serversByName.get(name);
  }

  get serverCount(): number {
    return this.serversByName.size;
  }

  /** Metrics registered (the index's count: not a pass over them, which took 30 ms a second at a million). */
  get metricCount(): number {
    return this.metricIndex.size;
  }

  /** One past the highest server id in use or free: arrays indexed by server id take this length. */
  get serverIdLimit(): number {
    return this.serversById.length;
  }

  /** Every server id marked 1 in a new array indexed by id (one slot spare), and how many there are. */
  allServerIds(): { marks: Uint8Array; count: number } {
    const marks = new Uint8Array(this.serversById.length + 1);
    let count = 0;
    for (let id = 0; id < this.serversById.length; id++) {
      if (this.serversById[id] === undefined) continue;
      marks[id] = 1;
      count++;
    }
    return { marks, count };
  }

  allServers(): ServerInfo[] {
    return this.serversById.filter((s): s is ServerInfo => s !== undefined);
  }

  /** Notes a metric seen in a batch (kind from its summaries); returns its index or −1 when full. */
  metric(lo: number, hi: number, kind: number, nowMs: number): number {
    let m = this.metricIndex.get(lo, hi);
    if (m < 0) {
      m = this.metricIndex.insert(lo, hi);
      if (m < 0) {
        this.overflow.total++;
        return -1;
      }
      this.metricHashes[2 * m] = lo;
      this.metricHashes[2 * m + 1] = hi;
      this.metrics[m] = { hash: hashKey(lo, hi), name: null, kind, firstSeenMs: nowMs, lastSeenMs: nowMs };
      this.noteOwner(m, -1);
      this.dirtyMetrics.add(m);
    }
    const info = this.metrics[m]!;
    if (nowMs > info.lastSeenMs) info.lastSeenMs = nowMs;
    return m;
  }

  /** The index of a registered metric, or −1 (no side effects). */
  indexOf(lo: number, hi: number): number {
    return this.metricIndex.get(lo, hi);
  }

  /** The index of a registered metric (updating its last-seen time), or −1. */
  touch(lo: number, hi: number, nowMs: number): number {
    const m = this.metricIndex.get(lo, hi);
    const info = m < 0 ? undefined : this.metrics[m]!;
    if (info !== undefined && nowMs > info.lastSeenMs) info.lastSeenMs = nowMs;
    return m;
  }

  /**
   * Registers a new metric introduced by `serverId` (−1: unknown, only the total applies), unless
   * that server has introduced `perServerMax` already or the registry is full; refusals counted.
   */
  admit(opts: { lo: number; hi: number; kind: number; nowMs: number; serverId: number; perServerMax: number }): OverflowScope | null {
    const { lo, hi, serverId } = opts;
    const known = this.metricIndex.get(lo, hi);
    if (known >= 0) return null;
    if (serverId >= 0 && (this.introducedBy[serverId] ?? 0) >= opts.perServerMax) {
      this.overflow.server++;
      return 'server';
    }
    const m = this.metric(lo, hi, opts.kind, opts.nowMs);
    if (m < 0) return 'total';
    this.noteOwner(m, serverId); // metric() noted it with no owner
    return null;
  }

  /** Metrics `serverId` introduced (its share of the per-server cardinality limit). */
  introducedCount(serverId: number): number {
    return this.introducedBy[serverId] ?? 0;
  }

  name(lo: number, hi: number, name: string, nowMs: number): void {
    const m = this.metric(lo, hi, 0, nowMs);
    if (m < 0 || this.metrics[m]!.name === name) return;
    this.metrics[m]!.name = name;
    this.dirtyMetrics.add(m);
    this.namesVersion++;
  }

  /** Changes to the set of metric names (a name learned or changed, metrics retired): a list of names built at one version holds until the next. */
  namesVersion = 0;

  metricByName(name: string): { lo: number; hi: number; info: MetricInfo } | undefined {
    // Cold path (query planning): a linear scan over at most metricsMax entries.
    for (let m = 0; m < this.metrics.length; m++) {
      const info = this.metrics[m];
      if (info !== undefined && info.name === name) return { lo: this.metricHashes[2 * m]!, hi: this.metricHashes[2 * m + 1]!, info };
    }
    return undefined;
  }

  /** One past the highest metric index in use or free. */
  get metricIndexLimit(): number {
    return this.metrics.length;
  }

  /** The metric at a registry index (undefined: none, or retired): indexes are not positions in allMetrics(). */
  metricAt(m: number): MetricInfo | undefined {
    return this.metrics[m];
  }

  allMetrics(): MetricInfo[] {
    return this.metrics.filter((m): m is MetricInfo => m !== undefined);
  }

  /**
   * Writes new and changed entries (call inside a write transaction), and flushed() once it
   * committed: a transaction that fails leaves them to be written again. (They were cleared here:
   * a failed commit lost them, later rows referred to ids never persisted, and after a restart
   * those ids went to other servers and metrics.)
   */
  flushDirty(): void {
    for (const s of this.dirtyServers) this.serverDb.put(s.name, { id: s.id, rack: s.rack, first: s.firstSeenMs, last: s.lastSeenMs });
    for (const m of this.dirtyMetrics) this.putMetric(m, this.metricBy[m] ?? -1);
  }

  private putMetric(m: number, by: number): void {
    const info = this.metrics[m]!;
    this.metricDb.put(info.hash, { lo: this.metricHashes[2 * m]!, hi: this.metricHashes[2 * m + 1]!, name: info.name, kind: info.kind, first: info.firstSeenMs, last: info.lastSeenMs, ...(by >= 0 ? { by } : {}) });
  }

  /** The transaction holding flushDirty's writes committed (a synchronous one: nothing changed between). */
  flushed(): void {
    for (const s of this.dirtyServers) this.savedServerMs[s.id] = s.lastSeenMs;
    for (const m of this.dirtyMetrics) {
      const info = this.metrics[m];
      if (info !== undefined) this.savedMetricMs[m] = info.lastSeenMs;
    }
    this.dirtyServers.clear();
    this.dirtyMetrics.clear();
  }

  /**
   * Marks for writing the servers and metrics whose last-seen time moved on by `stepMs` plus a
   * jitter of up to `stepMs` per entry since it was written, at most `most` of them (the rest next
   * time); returns how many. Before, every save rewrote every entry.
   */
  touchDue(stepMs: number, most: number): number {
    // Each pass goes on where the last stopped (round robin): with more due than `most`, the
    // entries at the end are reached too (before: each pass began at the start and spent its
    // share there, and the last entries' times on disk fell behind without bound).
    const due = (lastSeenMs: number, savedMs: number | undefined, i: number) => lastSeenMs - (savedMs ?? -Infinity) >= stepMs + jitter(i, stepMs);
    const servers = roundRobin(this.serversById.length, this.touchServerAt, most, (id) => {
      const s = this.serversById[id];
      if (s === undefined || this.dirtyServers.has(s) || !due(s.lastSeenMs, this.savedServerMs[id], id)) return false;
      this.dirtyServers.add(s);
      return true;
    });
    this.touchServerAt = servers.next;
    const metrics = roundRobin(this.metrics.length, this.touchMetricAt, most - servers.taken, (m) => {
      const info = this.metrics[m];
      if (info === undefined || this.dirtyMetrics.has(m) || !due(info.lastSeenMs, this.savedMetricMs[m], m)) return false;
      this.dirtyMetrics.add(m);
      return true;
    });
    this.touchMetricAt = metrics.next;
    return servers.taken + metrics.taken;
  }

  /** Where touchDue's next pass over the servers and the metrics begins. */
  private touchServerAt = 0;
  private touchMetricAt = 0;

  /**
   * Forgets every server and metric last seen before `beforeMs` — the caller knows no row or head
   * holds them (all their data is older than the retention keeps) — so that the registry holds
   * what the retained data refers to, not every name seen over the store's life (renamed and
   * replaced hosts, metrics of retired software). Their entries are removed in `transact` first
   * (a synchronous write transaction the caller may add its own removals to: called when anything
   * here goes or `callerWrites`; if it throws, nothing is forgotten); then a new server
   * takes a retired id, a new metric a retired index. Returns how many of each went.
   */
  retire(beforeMs: number, transact: (write: () => void) => void, callerWrites = false): { servers: number; metrics: number } {
    const servers = this.allServers().filter((s) => s.lastSeenMs < beforeMs);
    const metrics: number[] = [];
    for (let m = 0; m < this.metrics.length; m++) if (this.metrics[m] !== undefined && this.metrics[m]!.lastSeenMs < beforeMs) metrics.push(m);
    const gone = new Set(servers.map((s) => s.id));
    // Metrics a retired server introduced count for no server now (a new one may take its id).
    const orphaned: number[] = [];
    for (let m = 0; m < this.metrics.length; m++) if (this.metrics[m] !== undefined && gone.has(this.metricBy[m] ?? -1) && this.metrics[m]!.lastSeenMs >= beforeMs) orphaned.push(m);
    // Nothing to remove: no transaction (each is a synced commit; the sweep runs every 10 s).
    if (servers.length === 0 && metrics.length === 0 && orphaned.length === 0 && !callerWrites) return { servers: 0, metrics: 0 };
    transact(() => {
      for (const s of servers) this.serverDb.remove(s.name);
      for (const m of metrics) this.metricDb.remove(this.metrics[m]!.hash);
      // With the servers' removal: a crash after it must not give their metrics back to the id's next holder.
      for (const m of orphaned) this.putMetric(m, -1);
    });
    for (const s of servers) {
      this.serversByName.delete(s.name);
      this.serversById[s.id] = undefined;
      this.dirtyServers.delete(s);
      this.introducedBy[s.id] = 0;
      this.freeServerIds.push(s.id);
    }
    // Lowest ids first out of the stack.
    this.freeServerIds.sort((a, b) => b - a);
    for (const m of metrics) {
      const by = this.metricBy[m] ?? -1;
      if (by >= 0 && !gone.has(by)) this.introducedBy[by] = Math.max(0, (this.introducedBy[by] ?? 0) - 1);
      this.metricIndex.delete(this.metricHashes[2 * m]!, this.metricHashes[2 * m + 1]!);
      this.metrics[m] = undefined;
      this.metricBy[m] = -1;
      this.dirtyMetrics.delete(m);
    }
    for (const m of orphaned) this.metricBy[m] = -1;
    if (servers.length > 0) this.serverEpoch++;
    if (metrics.length > 0) this.namesVersion++;
    this.retired.servers += servers.length;
    this.retired.metrics += metrics.length;
    return { servers: servers.length, metrics: metrics.length };
  }
}

/** A fixed share of `stepMs` per entry (0 ≤ jitter < stepMs): entries come due spread over time, not all at once. */
function jitter(id: number, stepMs: number): number {
  return (Math.imul(id + 1, 0x9e3779b1) >>> 0) % Math.max(1, Math.floor(stepMs));
}

/**
 * Visits indexes 0..count−1 from `from` round, until `take` returned true `most` times; returns
 * how many it took and where the next pass should begin (after the last taken, or `from` again
 * when the pass went all the way round).
 */
function roundRobin(count: number, from: number, most: number, take: (i: number) => boolean): { taken: number; next: number } {
  let taken = 0;
  for (let k = 0; k < count && taken < most; k++) {
    const i = (from + k) % count;
    if (take(i) && ++taken >= most) return { taken, next: (i + 1) % count };
  }
  return { taken, next: count === 0 ? 0 : from % count };
}
