// The newest second applied per rack on a cluster node (issue 13): each rack second comes once
// per shard it has data in, and the server list and the fleet view should learn of it once.
// Bounded: beyond racksMax racks the least recently updated one is forgotten (its next second is
// then simply noted again), so a node that has seen more racks over its life than the bound
// still notes new ones.

export class RackSeconds {
  private readonly newest = new Map<string, number>();
  /** Racks forgotten to make room (churn, not loss: nothing is refused; their next second is noted again). */
  forgotten = 0;

  constructor(readonly racksMax: number) {}

  /** True when `second` is newer than any second of `rack` noted (and notes it). */
  note(rack: string, second: number): boolean {
    const prev = this.newest.get(rack);
    if (prev !== undefined && prev >= second) return false;
    // Map order is update order: the first key is the least recently updated rack.
    if (prev !== undefined) this.newest.delete(rack);
    else if (this.newest.size >= this.racksMax) {
      const oldest = this.newest.keys().next().value!;
      this.newest.delete(oldest);
      this.forgotten++;
    }
    this.newest.set(rack, second);
    return true;
  }

  get size(): number {
    return this.newest.size;
  }
}
