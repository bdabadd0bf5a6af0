// The system's own health for the dashboard's fleet view (issue 6): ingest rates from the
// core's counters sampled each second, freshness (newest second ingested, stored-query lag),
// and the status each rack reports about itself (loss recovered and lost, spool depth) — so
// one page on the core shows every tier without reaching the racks' own HTTP ports.

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
