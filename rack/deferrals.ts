// Spooled batches that wait before they are tried again: a re-cut for a new shard count that the
// spool cannot write now (its disk below the reserve). Newer batches go on meanwhile. Bounded:
// beyond `max` the oldest deferral is forgotten (that batch is then simply tried again sooner).

export class Deferrals {
  private readonly until = new Map<number, number>();

  constructor(private readonly max = 4096) {}

  get size(): number {
    return this.until.size;
  }

  defer(seq: number, untilMs: number): void {
    if (!this.until.has(seq) && this.until.size >= this.max) this.until.delete(this.until.keys().next().value!);
    this.until.set(seq, untilMs);
  }

  /** Adds to `into` the batches still waiting at `nowMs`, and forgets those whose wait is over. */
  addWaiting(nowMs: number, into: Set<number>): void {
    for (const [seq, until] of this.until) {
      if (until > nowMs) into.add(seq);
      else this.until.delete(seq);
    }
  }
}
