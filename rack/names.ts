// The rack's metric-name dictionary: hash → name, learned from edge datagrams, relayed to the
// core with each batch (new names first, then a slow round-robin refresh so that a core that
// lost its registry relearns every name), and asked from edges when a hash has no name yet.

import type { SeriesColumns } from '../schema/codec.js';
import { nameAt, nameColumns, verifyName } from '../schema/codec.js';
import { HashIndex } from '../lib/hashtable.js';

/** One generation of names: hash → dense index → name. */
class Generation {
  readonly index: HashIndex;
  readonly hashes: Uint32Array;
  names: string[] = [];

  constructor(capacity: number) {
    this.index = new HashIndex(capacity);
    this.hashes = new Uint32Array(2 * capacity);
  }

  /** Adds a name not held; −1 when full. */
  add(lo: number, hi: number, name: string): number {
    const idx = this.index.insert(lo, hi);
    if (idx < 0) return -1;
    this.hashes[2 * idx] = lo;
    this.hashes[2 * idx + 1] = hi;
    this.names.push(name);
    return idx;
  }

  clear(): void {
    this.index.clear();
    this.names = [];
  }
}

/**
 * Bounded by two generations of namesMax / 2 each: names go into the current one; when it is
 * full it becomes the previous one (the one before is forgotten) and a new one starts. A name
 * found in the previous generation moves into the current one, so names still in use survive
 * and names unseen for a whole generation are forgotten (relearned by asking an edge if they
 * come back). Before, the table only grew: once a million names had been seen (a client naming
 * metrics by request id, over hours), no new name ever reached the core.
 */
export class NameTable {
  private cur: Generation;
  private prev: Generation;
  /** New names (hash pairs and names) for the next batch. */
  private freshHashes: number[] = [];
  private freshNames: string[] = [];
  private refreshCursor = 0;
  collisions = 0;
  /** Names forgotten: left in a generation that ended without them being seen again. */
  forgotten = 0;
  /** Generations started (the rack looks again at every server's names after one). */
  generation = 0;
  /** Names whose hash did not match (a corrupted or forged dictionary entry): not learned. */
  badHashes = 0;

  constructor(readonly namesMax: number) {
    const half = Math.max(1, Math.floor(namesMax / 2));
    this.cur = new Generation(half);
    this.prev = new Generation(half);
  }

  /** Names held (both generations). */
  get size(): number {
    return this.cur.names.length + this.prev.names.length;
  }

  has(lo: number, hi: number): boolean {
    return this.lookup(lo, hi) !== undefined;
  }

  /** The name of (lo, hi), moved into the current generation when found in the previous one. */
  private lookup(lo: number, hi: number): string | undefined {
    const i = this.cur.index.get(lo, hi);
    if (i >= 0) return this.cur.names[i];
    const j = this.prev.index.get(lo, hi);
    if (j < 0) return undefined;
    const name = this.prev.names[j]!;
    this.keep(lo, hi, name);
    return name;
  }

  /** Adds to the current generation, starting a new one when it is full. */
  private keep(lo: number, hi: number, name: string): void {
    if (this.cur.add(lo, hi, name) >= 0) return;
    // The previous generation's names not seen again are forgotten; the current one becomes it.
    this.forgotten += this.prev.names.length - this.movedOut();
    const old = this.prev;
    old.clear();
    this.prev = this.cur;
    this.cur = old;
    this.generation++;
    this.refreshCursor = 0;
    this.cur.add(lo, hi, name);
  }

  /** Names of the previous generation that are also in the current one (moved). */
  private movedOut(): number {
    let n = 0;
    for (let j = 0; j < this.prev.names.length; j++) if (this.cur.index.get(this.prev.hashes[2 * j]!, this.prev.hashes[2 * j + 1]!) >= 0) n++;
    return n;
  }

  /** Learns the dictionary entries of a block (hashes were verified by the decoder). */
  learn(c: SeriesColumns): void {
    for (let j = 0; j < c.nameEnds.length; j++) {
      const lo = c.nameHashes[2 * j]!;
      const hi = c.nameHashes[2 * j + 1]!;
      const known = this.lookup(lo, hi);
      if (known !== undefined) {
        // The same name again costs a compare; only a different one is hashed (frames are
        // decoded without hashing every name: the rack checks here, once per new name).
        if (known !== nameAt(c, j)) {
          if (verifyName(c, j)) this.collisions++;
          else this.badHashes++;
        }
        continue;
      }
      if (!verifyName(c, j)) {
        this.badHashes++;
        continue;
      }
      const name = nameAt(c, j);
      this.keep(lo, hi, name);
      // Relayed with the next batch; past a generation's worth in one second, by the refresh.
      if (this.freshNames.length < this.cur.index.capacity) {
        this.freshHashes.push(lo, hi);
        this.freshNames.push(name);
      }
    }
  }

  /** Appends up to `max` hashes of `c` without a known name to `out` (as lo, hi pairs). */
  unknownIn(c: SeriesColumns, out: number[], max: number): void {
    this.scanUnknown(c.pointHashes, out, max);
    this.scanUnknown(c.distHashes, out, max);
  }

  private scanUnknown(h: Uint32Array, out: number[], max: number): void {
    for (let i = 0; i < h.length && out.length < 2 * max; i += 2) if (!this.has(h[i]!, h[i + 1]!)) out.push(h[i]!, h[i + 1]!);
  }

  /** Name columns for the next batch: names learned since the last one plus `refresh` older ones (of the current generation). */
  forBatch(refresh: number): Pick<SeriesColumns, 'nameHashes' | 'nameEnds' | 'nameBytes'> {
    const g = this.cur;
    const fresh = this.freshNames.length;
    const n = fresh + Math.min(refresh, g.names.length);
    // Plain loops: this runs once a second, and V8 compiled a fresh closure here again each time.
    const hashes = new Uint32Array(2 * n);
    const names: string[] = [];
    for (let i = 0; i < fresh; i++) {
      hashes[2 * i] = this.freshHashes[2 * i]!;
      hashes[2 * i + 1] = this.freshHashes[2 * i + 1]!;
      names.push(this.freshNames[i]!);
    }
    this.freshHashes = [];
    this.freshNames = [];
    for (let i = fresh; i < n; i++) {
      const idx = this.refreshCursor;
      this.refreshCursor = (this.refreshCursor + 1) % g.names.length;
      hashes[2 * i] = g.hashes[2 * idx]!;
      hashes[2 * i + 1] = g.hashes[2 * idx + 1]!;
      names.push(g.names[idx]!);
    }
    return nameColumns(hashes, names);
  }
}

/**
 * A 32-bit signature (FNV-1a over the words) of the hashes a server sent in a second, in order.
 * Edges send the same series in the same order every second, so an unchanged signature means
 * a set already found fully named: the rack skips looking up its ~2,000 hashes again.
 */
export function hashesSignature(blocks: readonly Pick<SeriesColumns, 'pointHashes' | 'distHashes'>[]): number {
  let h = 0x811c9dc5;
  for (const c of blocks) {
    const p = c.pointHashes;
    for (let i = 0; i < p.length; i++) h = Math.imul(h ^ p[i]!, 0x01000193);
    const d = c.distHashes;
    for (let i = 0; i < d.length; i++) h = Math.imul(h ^ d[i]!, 0x01000193);
  }
  return h >>> 0;
}
