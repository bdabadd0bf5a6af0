// The system's own health for the dashboard's fleet view (issue 6): ingest rates from the
// core's counters sampled each second, freshness (newest second ingested, stored-query lag),
// and the status each rack reports about itself (loss recovered and lost, spool depth) — so
// one page on the core shows every tier without reaching the racks' own HTTP ports.

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
  private readonly racks = new Map<string, { status: RackStatus; reportedMs: number }>();
  newestSecond = 0;
  racksRefused = 0;

  constructor(private readonly opts: StatusOptions) {}

  /** Called for every batch made durable. */
  noteSecond(second: number): void {
    if (second > this.newestSecond) this.newestSecond = second;
  }

  /** Takes a one-second sample of the ingest counters (cumulative). */
  sample(atMs: number, c: { points: number; batches: number; bytes: number }): void {
    this.samples.push({ atMs, points: c.points, batches: c.batches, bytes: c.bytes });
    if (this.samples.length > this.opts.samplesMax) this.samples.shift();
  }

  /** Stores a rack's report; false when the table is full and the rack is new (counted). */
  report(rack: string, status: RackStatus, nowMs: number): boolean {
    if (!this.racks.has(rack) && this.racks.size >= this.opts.racksMax) {
      this.racksRefused++;
      return false;
    }
    this.racks.set(rack, { status, reportedMs: nowMs });
    return true;
  }

  /** Rates over the sampled span (per second); zeros until two samples exist. */
  rates(): { pointsPerSecond: number; batchesPerSecond: number; bytesPerSecond: number; spanMs: number } {
    const a = this.samples[0];
    const b = this.samples[this.samples.length - 1];
    if (a === undefined || b === undefined || b.atMs <= a.atMs) return { pointsPerSecond: 0, batchesPerSecond: 0, bytesPerSecond: 0, spanMs: 0 };
    const s = (b.atMs - a.atMs) / 1000;
    return { pointsPerSecond: (b.points - a.points) / s, batchesPerSecond: (b.batches - a.batches) / s, bytesPerSecond: (b.bytes - a.bytes) / s, spanMs: b.atMs - a.atMs };
  }

  rackReports(): { rack: string; reportedMs: number; status: RackStatus }[] {
    return [...this.racks].map(([rack, r]) => ({ rack, reportedMs: r.reportedMs, status: r.status }));
  }
}
