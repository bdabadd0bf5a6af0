// What the core has seen: racks, servers (id, rack, first/last seen) and metrics (hash, name,
// kind, first/last seen), kept in LMDB and mirrored in memory. Servers get small integer ids
// that storage rows use; metrics are keyed by their stable 64-bit name hash (schema/names.ts),
// so a node that owns a subset of metrics needs no id translation (DESIGN §1 scale-out).

import type { Database } from 'lmdb';
import { HashIndex } from '../schema/hashtable.js';
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
  private readonly serversById: ServerInfo[] = [];
  private readonly metricIndex: HashIndex;
  private readonly metrics: MetricInfo[] = [];
  private readonly metricHashes: Uint32Array;
  private readonly dirtyServers = new Set<ServerInfo>();
  private readonly dirtyMetrics = new Set<number>();
  /** Server id that introduced each metric (−1: none known), and how many each server introduced. */
  private readonly metricBy: number[] = [];
  private readonly introducedBy: number[] = [];
  /** New metrics refused, by scope: each batch that names a refused metric counts once more. */
  readonly overflow: Record<OverflowScope, number> = { server: 0, total: 0 };

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
    }
    for (const { value } of metricDb.getRange()) {
      const m = this.metricIndex.insert(value.lo, value.hi);
      if (m < 0) break;
      this.metricHashes[2 * m] = value.lo;
      this.metricHashes[2 * m + 1] = value.hi;
      this.metrics[m] = { hash: hashKey(value.lo, value.hi), name: value.name, kind: value.kind, firstSeenMs: value.first, lastSeenMs: value.last };
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
      s = { id: this.serversById.length, name, rack, firstSeenMs: nowMs, lastSeenMs: nowMs };
      this.serversByName.set(name, s);
      this.serversById.push(s);
      this.dirtyServers.add(s);
    } else if (s.rack !== rack) {
      s.rack = rack;
      this.dirtyServers.add(s);
    }
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
    return this.serversById.filter((s) => s !== undefined);
  }

  /** Notes a metric seen in a batch (kind from its summaries); returns its index or −1 when full. */
  metric(lo: number, hi: number, kind: number, nowMs: number): number {
    const before = this.metricIndex.size;
    const m = this.metricIndex.insert(lo, hi);
    if (m < 0) {
      this.overflow.total++;
      return -1;
    }
    if (m === before) {
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
    if (m >= 0 && nowMs > this.metrics[m]!.lastSeenMs) this.metrics[m]!.lastSeenMs = nowMs;
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
  }

  metricByName(name: string): { lo: number; hi: number; info: MetricInfo } | undefined {
    // Cold path (query planning): a linear scan over at most metricsMax entries.
    for (let m = 0; m < this.metrics.length; m++) {
      if (this.metrics[m]!.name === name) return { lo: this.metricHashes[2 * m]!, hi: this.metricHashes[2 * m + 1]!, info: this.metrics[m]! };
    }
    return undefined;
  }

  allMetrics(): MetricInfo[] {
    return this.metrics.slice();
  }

  /**
   * Writes new and changed entries (call inside a write transaction), and flushed() once it
   * committed: a transaction that fails leaves them to be written again. (They were cleared here:
   * a failed commit lost them, later rows referred to ids never persisted, and after a restart
   * those ids went to other servers and metrics.)
   */
  flushDirty(): void {
    for (const s of this.dirtyServers) this.serverDb.put(s.name, { id: s.id, rack: s.rack, first: s.firstSeenMs, last: s.lastSeenMs });
    for (const m of this.dirtyMetrics) {
      const info = this.metrics[m]!;
      const by = this.metricBy[m] ?? -1;
      this.metricDb.put(info.hash, { lo: this.metricHashes[2 * m]!, hi: this.metricHashes[2 * m + 1]!, name: info.name, kind: info.kind, first: info.firstSeenMs, last: info.lastSeenMs, ...(by >= 0 ? { by } : {}) });
    }
  }

  /** The transaction holding flushDirty's writes committed (a synchronous one: nothing changed between). */
  flushed(): void {
    this.dirtyServers.clear();
    this.dirtyMetrics.clear();
  }

  /** Persists last-seen times of everything (a periodic, cheap sweep). */
  touchAll(): void {
    for (const s of this.serversByName.values()) this.dirtyServers.add(s);
    for (let m = 0; m < this.metrics.length; m++) this.dirtyMetrics.add(m);
  }
}
