// When the edge's seconds close, and what timestamp each carries (issue 16.9).
//
// Seconds close by the monotonic clock: one per elapsed second of it, whatever the wall clock
// does. Each second is stamped with the wall-clock second current when it opened; the grid of
// seconds is re-aligned to the wall clock each time one opens, so in steady state a second is
// exactly a wall-clock second ([k s, k+1 s) by the wall clock, closed closeDelayMs after).
//
// A stepped wall clock (NTP stepping, an operator's `date -s`):
// - A step shows in the stamps from the next second that opens: that second is stamped with
//   the nearest wall-clock second to its start and lasts until the next wall-clock second
//   boundary (0.5–1.5 s), and the cadence stays one second per monotonic second.
// - Back by k seconds: the next k seconds repeat stamps already sent. The rack reassembles by
//   (server, second), so it takes a repeated second's parts as duplicates of the first ones
//   (apm_rack_parts_duplicate_total) or, when the part count differs, refuses them
//   (parts_mismatch): about k seconds of this edge's data are lost, counted at the rack, and
//   sending resumes normally after them. (Stamps that kept counting up instead would run k
//   seconds ahead of the corrected clock for good; the rack refuses seconds more than 30 s ahead.)
//   Before this fix, the open second closed only when the wall clock passed its end again:
//   nothing was sent for k seconds, then those k seconds of observations went out as one.
// - Forward by k seconds: k stamps are skipped; the rack sees a gap (no data, nothing lost).
// - The resend ring is keyed by stamp: after a step back, a repeated stamp's newer frames
//   replace the older ones, so a NACK for the older ones gets the newer (refused as above).
// - Datagrams are signed with the wall clock (schema/auth.ts); a rack more than
//   --clock-skew-max away from it refuses them (clock_skew), as for any skewed edge.
// The edge's own bookkeeping (series age, idle counters, eviction, name refresh) counts the
// monotonic `index` of seconds, so a step does not evict every series or keep idle counters
// alive for an hour.

/** Wall-clock and monotonic time in ms; tests inject one they can step. */
export interface EdgeClock {
  /** Unix time in ms (may step). */
  wallMs(): number;
  /** Monotonic time in ms (never steps; any origin). */
  monoMs(): number;
}

export const systemClock: EdgeClock = { wallMs: () => Date.now(), monoMs: () => performance.now() };

const secondMs = 1000;

/** The open second: its monotonic index, its wall-clock stamp and its monotonic end. */
export class SecondClock {
  /** Monotonic index of the open second (the aggregator's second number): 0 for the first, +1 per monotonic second; −1 before the first. */
  index = -1;
  /** Unix second the open second is sent as. */
  stamp = -1;
  /** Monotonic time at which the open second ends. */
  endMs = 0;

  constructor(private readonly clock: EdgeClock) {}

  /** Opens the first second, the one holding monotonic time `monoMs`. */
  start(monoMs: number): void {
    this.index = 0;
    this.openAt(monoMs, Math.floor);
  }

  /**
   * Opens the second after the open one (which the caller has just closed) for an event at
   * monotonic time `monoMs` ≥ its end: the next on the grid, or — after a stall of more than
   * a second (nothing was observed in between) — the one holding `monoMs`, its index counting
   * the seconds skipped.
   */
  advance(monoMs: number): void {
    if (monoMs < this.endMs + secondMs) {
      this.index++;
      // Starts on a wall-clock second boundary unless the clock stepped: the nearest one.
      this.openAt(this.endMs, Math.round);
    } else {
      this.index += 1 + Math.floor((monoMs - this.endMs) / secondMs);
      this.openAt(monoMs, Math.floor);
    }
  }

  private openAt(startMs: number, toSecond: (x: number) => number): void {
    const wallAtStart = this.clock.wallMs() - (this.clock.monoMs() - startMs);
    this.stamp = toSecond(wallAtStart / secondMs);
    this.endMs = startMs + (this.stamp + 1) * secondMs - wallAtStart;
  }
}
