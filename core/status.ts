// The system's own health for the dashboard's fleet view (issue 6): ingest rates from the
// core's counters sampled each second, freshness (newest second ingested, stored-query lag),
// and the status each rack reports about itself (loss recovered and lost, spool depth) — so
// one page on the core shows every tier without reaching the racks' own HTTP ports; and the
// StatsD lines the edges refused, per reason, fleet-wide (issue 15).

import { coreLimits } from './limits.js';

export interface RackStatus {
  /** What the rack reported (numbers only; unknown fields are ignored). */
  datagramsReceived: number;
  datagramsRejected: number;
  partsRecovered: number;
  partsLost: number;
  partsLate: number;
  secondsIncomplete: number;
  spoolBytes: number;
  spoolBatches: number;
  spoolDropped: number;
  forwardFailures: number;
  servers: number;
  /** Newest second the core acknowledged to this rack (Unix seconds, 0 if none). */
  ackedSecond: number;
}

const rackFields: (keyof RackStatus)[] = [
  'datagramsReceived',
  'datagramsRejected',
  'partsRecovered',
  'partsLost',
  'partsLate',
  'secondsIncomplete',
  'spoolBytes',
  'spoolBatches',
  'spoolDropped',
  'forwardFailures',
  'servers',
  'ackedSecond',
];

export interface StatusOptions {
  /** Racks whose reports are kept (the registry's bound); more are counted and refused. */
  racksMax: number;
  /** A report older than this is dropped (issue 16.3: the table expires entries); default coreLimits.rackReportTtlMs. */
  reportTtlMs?: number;
  /** One-second samples kept for rates: the rate is over this span. */
  samplesMax: number;
}

interface Sample {
  atMs: number;
  points: number;
  batches: number;
  bytes: number;
}

/** Parses a rack's report; returns an error text for anything that is not a flat object of finite numbers. */
export function parseRackStatus(body: unknown): RackStatus | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'body must be a JSON object of counters';
  const src = body as Record<string, unknown>;
  const out = {} as RackStatus;
  for (const f of rackFields) {
    const v = src[f] ?? 0;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) return `"${f}" must be a non-negative number, got ${JSON.stringify(v)}`;
    out[f] = v;
  }
  return out;
}

export class CoreStatus {
  private readonly samples: Sample[] = [];
  /** Reports in the order they arrived (each report moves its rack to the end): oldest first. */
  private readonly racks = new Map<string, { status: RackStatus; reportedMs: number }>();
  private readonly reportTtlMs: number;
  newestSecond = 0;
  racksRefused = 0;
  /** Reports dropped for age (their rack stopped reporting). */
  racksExpired = 0;
  /** StatsD lines the fleet's edges refused, per reason (issue 15). */
  readonly statsdRefusals = new StatsdRefusals();

  constructor(private readonly opts: StatusOptions) {
    this.reportTtlMs = opts.reportTtlMs ?? coreLimits.rackReportTtlMs;
  }

  /** Called for every batch made durable. */
  noteSecond(second: number): void {
    if (second > this.newestSecond) this.newestSecond = second;
  }

  /** Takes a one-second sample of the ingest counters (cumulative). */
  sample(atMs: number, c: { points: number; batches: number; bytes: number }): void {
    this.samples.push({ atMs, points: c.points, batches: c.batches, bytes: c.bytes });
    if (this.samples.length > this.opts.samplesMax) this.samples.shift();
  }

  /** Stores a rack's report; false when the table is full of unexpired reports and the rack is new (counted). */
  report(rack: string, status: RackStatus, nowMs: number): boolean {
    this.expire(nowMs);
    const known = this.racks.delete(rack);
    if (!known && this.racks.size >= this.opts.racksMax) {
      this.racksRefused++;
      return false;
    }
    this.racks.set(rack, { status, reportedMs: nowMs });
    return true;
  }

  /** Drops reports older than the TTL, oldest first (the map is in arrival order). */
  private expire(nowMs: number): void {
    for (const [rack, r] of this.racks) {
      if (nowMs - r.reportedMs <= this.reportTtlMs) break;
      this.racks.delete(rack);
      this.racksExpired++;
    }
  }

  get rackCount(): number {
    return this.racks.size;
  }

  /** Rates over the sampled span (per second); zeros until two samples exist. */
  rates(): { pointsPerSecond: number; batchesPerSecond: number; bytesPerSecond: number; spanMs: number } {
    const a = this.samples[0];
    const b = this.samples[this.samples.length - 1];
    if (a === undefined || b === undefined || b.atMs <= a.atMs) return { pointsPerSecond: 0, batchesPerSecond: 0, bytesPerSecond: 0, spanMs: 0 };
    const s = (b.atMs - a.atMs) / 1000;
    return { pointsPerSecond: (b.points - a.points) / s, batchesPerSecond: (b.batches - a.batches) / s, bytesPerSecond: (b.bytes - a.bytes) / s, spanMs: b.atMs - a.atMs };
  }

  /** The unexpired reports, by rack. */
  rackReports(nowMs = Date.now()): { rack: string; reportedMs: number; status: RackStatus }[] {
    this.expire(nowMs);
    return [...this.racks].map(([rack, r]) => ({ rack, reportedMs: r.reportedMs, status: r.status }));
  }
}

/**
 * Bounds of the fleet's StatsD refusal table (issue 15). Here rather than in core/limits.ts
 * because only this table uses them.
 */
export const statsdRefusalLimits = {
  /** "Recently": the refusals summed over the last 5 minutes (an edge counts a reason each second). */
  windowSeconds: 300,
  /** The table is recomputed at most this often, and only while someone reads the status: one
   *  metric list and one small query per reason seen, one query at a time. */
  refreshMs: 15_000,
  /** Reasons shown: ~20 exist (`apm edge --help`); more names under the prefixes are counted, not queried. */
  reasonsMax: 64,
  /** Query windows: 30 of them per reason per refresh. */
  querySeconds: 10,
} as const;

/** The edge's refusal families (edge/edge.ts reportSelf): `<prefix><reason>` counters. */
export const refusalPrefixes = ['apm.edge.statsd.malformed.', 'apm.edge.statsd.refused.', 'apm.edge.dropped.'] as const;

/** What the table is computed from (the pool: its metric list and ad-hoc queries). */
export interface RefusalSource {
  metrics(): Promise<{ name: string | null; lastSeenMs: number }[]>;
  query(text: string, metric: string, fromSec: number, toSec: number): Promise<{ values: Record<string, number> }[]>;
}

export interface RefusalRow {
  /** The counter, e.g. apm.edge.statsd.refused.event. */
  metric: string;
  /** malformed, refused or dropped. */
  family: string;
  reason: string;
  /** Lines (or values, for dropped) refused fleet-wide in the window. */
  count: number;
}

export interface RefusalTable {
  /** When the figures were computed (null before the first refresh ends). */
  updatedMs: number | null;
  windowSeconds: number;
  rows: RefusalRow[];
  /** Reason counters beyond reasonsMax, not queried. */
  omitted: number;
  /** Why the last refresh failed (the previous rows are kept), else null. */
  error: string | null;
}

/**
 * StatsD lines refused fleet-wide per reason, from the stored `apm.edge.statsd.malformed.*`,
 * `apm.edge.statsd.refused.*` and `apm.edge.dropped.*` counters (every server's edge sends
 * them). Cached: a status request reads the last table and, when it is older than refreshMs,
 * starts one refresh in the background (never two at once), so requests never wait on queries.
 */
export class StatsdRefusals {
  private table: RefusalTable = { updatedMs: null, windowSeconds: statsdRefusalLimits.windowSeconds, rows: [], omitted: 0, error: null };
  private refreshing: Promise<void> | null = null;
  private startedMs = -Infinity;
  refreshes = 0;

  /** The newest table; starts a refresh when it is stale and none is running. */
  view(source: RefusalSource, nowMs: number): RefusalTable {
    if (this.refreshing === null && nowMs - this.startedMs >= statsdRefusalLimits.refreshMs) {
      this.startedMs = nowMs;
      this.refreshing = this.refresh(source, nowMs).finally(() => (this.refreshing = null));
    }
    return this.table;
  }

  /** Resolves when the running refresh (if any) ends (tests). */
  async settled(): Promise<void> {
    await this.refreshing;
  }

  /** Recomputes the table for the window ending at `nowMs`; a failure keeps the old rows and says why. */
  async refresh(source: RefusalSource, nowMs: number): Promise<void> {
    const L = statsdRefusalLimits;
    const toSec = Math.ceil(nowMs / 1000);
    const fromSec = toSec - L.windowSeconds;
    try {
      // Counters idle for counterIdleSeconds stop; a reason unseen since the window began has nothing in it.
      const names = (await source.metrics())
        .filter((m) => m.name !== null && m.lastSeenMs >= (fromSec - 60) * 1000 && refusalPrefixes.some((p) => m.name!.startsWith(p)))
        .map((m) => m.name!)
        .sort();
      const rows: RefusalRow[] = [];
      for (const metric of names.slice(0, L.reasonsMax)) {
        const windows = await source.query(`FROM * SELECT ${metric} WINDOW ${L.querySeconds}s COMPUTE sum`, metric, fromSec, toSec);
        const count = windows.reduce((n, w) => n + (w.values.sum ?? 0), 0);
        const prefix = refusalPrefixes.find((p) => metric.startsWith(p))!;
        if (count > 0) rows.push({ metric, family: prefix.split('.').at(-2)!, reason: metric.slice(prefix.length), count });
      }
      rows.sort((a, b) => b.count - a.count || a.metric.localeCompare(b.metric));
      this.table = { updatedMs: nowMs, windowSeconds: L.windowSeconds, rows, omitted: Math.max(0, names.length - L.reasonsMax), error: null };
    } catch (err) {
      this.table = { ...this.table, error: `the refusal table was not refreshed at ${new Date(nowMs).toISOString()}: ${(err as Error).message}` };
    } finally {
      this.refreshes++;
    }
  }
}
