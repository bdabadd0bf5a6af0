// Open-addressing map from a 64-bit metric hash (lo, hi uint32) to a dense index 0..n−1.
// Typed arrays only: lookups and inserts allocate nothing, so merge loops can use it per point.

export class HashIndex {
  private keysLo: Uint32Array;
  private keysHi: Uint32Array;
  private slots: Int32Array; // −1 empty, else the dense index
  private mask: number;
  private count = 0;

  constructor(
    /** Most entries it will hold; insert() returns −1 beyond it. */
    readonly capacity: number,
  ) {
    let size = 16;
    while (size < capacity * 2) size *= 2;
    this.keysLo = new Uint32Array(size);
    this.keysHi = new Uint32Array(size);
    this.slots = new Int32Array(size).fill(-1);
    this.mask = size - 1;
  }

  get size(): number {
    return this.count;
  }

  private probe(lo: number, hi: number): number {
    // The hash is already uniform (SHA-256 bytes): mixing lo is enough.
    let i = Math.imul(lo ^ (hi >>> 7), 0x9e3779b1) & this.mask;
    for (;;) {
      const s = this.slots[i]!;
      if (s < 0 || (this.keysLo[i] === lo && this.keysHi[i] === hi)) return i;
      i = (i + 1) & this.mask;
    }
  }

  /** The dense index of (lo, hi), or −1. */
  get(lo: number, hi: number): number {
    return this.slots[this.probe(lo, hi)]!;
  }

  /** The dense index of (lo, hi), adding it as the next index if new; −1 when full. */
  insert(lo: number, hi: number): number {
    const i = this.probe(lo, hi);
    const s = this.slots[i]!;
    if (s >= 0) return s;
    if (this.count >= this.capacity) return -1;
    this.keysLo[i] = lo;
    this.keysHi[i] = hi;
    this.slots[i] = this.count;
    return this.count++;
  }

  clear(): void {
    if (this.count === 0) return;
    this.slots.fill(-1);
    this.count = 0;
  }
}
