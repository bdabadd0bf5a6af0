// Open-addressing map from a 64-bit metric hash (lo, hi uint32) to a dense index 0..n−1.
// Typed arrays only: lookups and inserts allocate nothing, so merge loops can use it per point.

export class HashIndex {
  private keysLo: Uint32Array;
  private keysHi: Uint32Array;
  private slots: Int32Array; // −1 empty, else the dense index
  private mask: number;
  private count = 0;
  /** Dense indexes handed out so far (those below it are live or free). */
  private next = 0;
  /** Dense indexes of deleted entries, reused first (allocated at the first delete). */
  private free: Int32Array | null = null;
  private freeN = 0;

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

  /** The slot a key's probe starts at. The hash is already uniform (SHA-256 bytes): mixing lo is enough. */
  private home(lo: number, hi: number): number {
    return Math.imul(lo ^ (hi >>> 7), 0x9e3779b1) & this.mask;
  }

  private probe(lo: number, hi: number): number {
    let i = this.home(lo, hi);
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

  /** The dense index of (lo, hi), adding it if new (a deleted entry's index first, else the next); −1 when full. */
  insert(lo: number, hi: number): number {
    const i = this.probe(lo, hi);
    const s = this.slots[i]!;
    if (s >= 0) return s;
    if (this.count >= this.capacity) return -1;
    this.keysLo[i] = lo;
    this.keysHi[i] = hi;
    const index = this.freeN > 0 ? this.free![--this.freeN]! : this.next++;
    this.slots[i] = index;
    this.count++;
    return index;
  }

  /**
   * Removes (lo, hi); returns the dense index it had (the next insert reuses it), or −1. Later
   * entries of its probe run move back (linear probing without tombstones: lookups stay as short).
   */
  delete(lo: number, hi: number): number {
    let i = this.probe(lo, hi);
    const index = this.slots[i]!;
    if (index < 0) return -1;
    for (let j = (i + 1) & this.mask; this.slots[j]! >= 0; j = (j + 1) & this.mask) {
      const h = this.home(this.keysLo[j]!, this.keysHi[j]!);
      // An entry whose probe starts in (i, j] is still found from there; any other moves into the hole.
      if (i <= j ? i < h && h <= j : i < h || h <= j) continue;
      this.keysLo[i] = this.keysLo[j]!;
      this.keysHi[i] = this.keysHi[j]!;
      this.slots[i] = this.slots[j]!;
      i = j;
    }
    this.slots[i] = -1;
    this.count--;
    (this.free ??= new Int32Array(this.capacity))[this.freeN++] = index;
    return index;
  }

  clear(): void {
    if (this.count === 0 && this.next === 0) return;
    this.slots.fill(-1);
    this.count = 0;
    this.next = 0;
    this.freeN = 0;
  }
}
