// Copies of a shard into this node that keep failing (issue 13): after `inRowToReport` failures
// in a row the node reports the shard in its heartbeat (NodeRecord.copyFailing), and the placer
// drops it as that shard's joiner and picks another node. A report lasts `reportMs`, doubled
// with each report that follows another without a good copy between them (at most
// `reportMaxMs`): a node that can never copy a shard (a wrong token, a full disk) is picked
// again after 10 minutes, then 20, 40, … — not every 10 minutes for good, three failed copies
// (each a snapshot an owner serves) every time.
//
// Failures count "in a row" only within `reportMs` of each other (two failures weeks apart are
// not a pattern). A good copy clears the count but not the doubling: a join given up after its
// copy succeeded (it never caught up) would otherwise start over at 10 minutes every time; the
// doubling starts over once the node owns the shard (`promoted`) or a day after the last report.
//
// Bounded: one entry per shard (at most S), forgotten `reportMaxMs` after its last failure or
// report.

export interface CopyFailureOptions {
  inRowToReport: number;
  reportMs: number;
  reportMaxMs: number;
}

interface Entry {
  /** Failures since the last report (or the first failure). */
  inRow: number;
  /** When the last failure was. */
  lastFailMs: number;
  /** Reports made without a good copy between them. */
  reports: number;
  /** The current report lasts until then (0: none made). */
  reportUntilMs: number;
}

export class CopyFailures {
  private readonly byShard = new Map<number, Entry>();

  constructor(private readonly o: CopyFailureOptions) {
    if (!(o.inRowToReport >= 1 && o.reportMs > 0 && o.reportMaxMs >= o.reportMs)) throw new Error(`copy failure options out of range: ${JSON.stringify(o)}`);
  }

  /**
   * A copy of `shard` failed at `nowMs`; true when this failure starts a report. Failures while
   * a report lasts do not count (the placer takes a round or two to see it and drop the node).
   */
  failed(shard: number, nowMs: number): boolean {
    const e = this.entry(shard);
    if (nowMs < e.reportUntilMs) return false;
    if (nowMs - e.lastFailMs > this.o.reportMs) e.inRow = 0;
    e.lastFailMs = nowMs;
    e.inRow++;
    if (e.inRow < this.o.inRowToReport) return false;
    e.inRow = 0;
    e.reports++;
    e.reportUntilMs = nowMs + Math.min(this.o.reportMaxMs, this.o.reportMs * 2 ** Math.min(e.reports - 1, 30));
    return true;
  }

  /**
   * A join of `shard` that copied but did not catch up in time (a stream faster than this node
   * applies it): reported at once, as if its copies had failed (the placer picks another joiner).
   */
  gaveUp(shard: number, nowMs: number): void {
    const e = this.entry(shard);
    if (nowMs < e.reportUntilMs) return;
    e.inRow = this.o.inRowToReport - 1;
    e.lastFailMs = nowMs;
    this.failed(shard, nowMs);
  }

  /** A copy of `shard` succeeded: the failures in a row are forgotten (not the reports: see above). */
  succeeded(shard: number): void {
    const e = this.byShard.get(shard);
    if (e !== undefined) e.inRow = 0;
  }

  /** This node owns `shard` now: everything about it is forgotten. */
  promoted(shard: number): void {
    this.byShard.delete(shard);
  }

  private entry(shard: number): Entry {
    let e = this.byShard.get(shard);
    if (e === undefined) this.byShard.set(shard, (e = { inRow: 0, lastFailMs: Number.NEGATIVE_INFINITY, reports: 0, reportUntilMs: 0 }));
    return e;
  }

  /** How long the report that `failed` just started lasts (ms), for the log. */
  reportLengthMs(shard: number, nowMs: number): number {
    const e = this.byShard.get(shard);
    return e === undefined ? 0 : Math.max(0, e.reportUntilMs - nowMs);
  }

  /** Shards reported at `nowMs`, ascending; forgets entries long past their last report. */
  reported(nowMs: number): number[] {
    const out: number[] = [];
    for (const [k, e] of this.byShard) {
      if (nowMs < e.reportUntilMs) out.push(k);
      else if (nowMs - Math.max(e.reportUntilMs, e.lastFailMs) > this.o.reportMaxMs) this.byShard.delete(k);
    }
    return out.sort((a, b) => a - b);
  }

  get size(): number {
    return this.byShard.size;
  }
}
