// The node's server list on the HTTP thread (issue 12): which servers report, through which
// rack, first and last seen — read from each request's server ids (RackSecond.servers), so the
// fleet view and GET /api/v1/servers need no worker. Kept in the meta environment; bounded by
// serversMax (new servers beyond it are counted, not listed; their data is stored regardless);
// a server not seen for longer than the retention keeps rows is forgotten, as the workers' registries forget it.
// Which rack carried which observation is the workers' business (rows are keyed by rack).

import type { Database } from 'lmdb';
import { coreLimits } from './limits.js';

export interface ServerInfo {
  name: string;
  rack: string;
  firstSeenMs: number;
  lastSeenMs: number;
}

export class ServerTable {
  private readonly byName = new Map<string, ServerInfo>();
  private readonly dirty = new Set<ServerInfo>();
  refused = 0;
  /** Servers forgotten: last seen before the retention (plus the hour data may run ahead of the clock). */
  forgotten = 0;
  /** Grows when a server is listed, moves rack, changes by an import or is forgotten (not for a last-seen time). */
  changes = 0;

  constructor(
    private readonly db: Database<{ rack: string; first: number; last: number }, string>,
    private readonly serversMax: number,
    /** Forget servers last seen longer ago than this (plus forgetMarginMs); Infinity: never. */
    private readonly retentionMs = Number.POSITIVE_INFINITY,
  ) {
    for (const { key, value } of db.getRange()) this.byName.set(key, { name: key, rack: value.rack, firstSeenMs: value.first, lastSeenMs: value.last });
  }

  get size(): number {
    return this.byName.size;
  }

  /** Notes that `rack` carried data of these servers now. */
  seen(rack: string, names: readonly string[], nowMs: number): void {
    for (const name of names) {
      let s = this.byName.get(name);
      if (s === undefined) {
        if (this.byName.size >= this.serversMax) {
          this.refused++;
          continue;
        }
        s = { name, rack, firstSeenMs: nowMs, lastSeenMs: nowMs };
        this.byName.set(name, s);
        this.dirty.add(s);
        this.changes++;
      } else if (s.rack !== rack) {
        s.rack = rack;
        this.dirty.add(s);
        this.changes++;
      }
      s.lastSeenMs = Math.max(s.lastSeenMs, nowMs);
    }
  }

  /**
   * Notes servers whose history was imported (at `atMs`, the newest second of theirs): a server
   * not known yet is listed with its rack; a known one keeps its rack (an import never moves a
   * live server) and its first-seen time moves back when the import reaches further.
   */
  imported(rack: string, names: readonly string[], atMs: number): void {
    for (const name of names) {
      const s = this.byName.get(name);
      if (s === undefined) {
        if (this.byName.size >= this.serversMax) {
          this.refused++;
          continue;
        }
        const n = { name, rack, firstSeenMs: atMs, lastSeenMs: atMs };
        this.byName.set(name, n);
        this.dirty.add(n);
        this.changes++;
      } else if (atMs < s.firstSeenMs || atMs > s.lastSeenMs) {
        s.firstSeenMs = Math.min(s.firstSeenMs, atMs);
        s.lastSeenMs = Math.max(s.lastSeenMs, atMs);
        this.dirty.add(s);
        this.changes++;
      }
    }
  }

  all(): ServerInfo[] {
    return [...this.byName.values()];
  }

  /** The rack a server was last seen in (undefined: not known). */
  rackOf(name: string): string | undefined {
    return this.byName.get(name)?.rack;
  }

  /** Persists new and moved servers, and everyone's last-seen time when `all` (forgetting those silent past the retention then). */
  async save(opts: { all: boolean }, nowMs = Date.now()): Promise<void> {
    const gone: string[] = [];
    if (opts.all) {
      for (const s of this.byName.values()) {
        if (s.lastSeenMs >= nowMs - this.retentionMs - forgetMarginMs) continue;
        gone.push(s.name);
        this.byName.delete(s.name);
        this.dirty.delete(s);
        this.changes++;
      }
      this.forgotten += gone.length;
    }
    const list = opts.all ? this.all() : [...this.dirty];
    this.dirty.clear();
    if (list.length === 0 && gone.length === 0) return;
    await this.db.transaction(() => {
      for (const name of gone) void this.db.remove(name);
      for (const s of list) void this.db.put(s.name, { rack: s.rack, first: s.firstSeenMs, last: s.lastSeenMs });
    });
  }
}

/** Beyond the retention before a server is forgotten: what a second may run ahead of the clock, and some. */
const forgetMarginMs = coreLimits.futureSecondsMax * 1000 + 180_000;
