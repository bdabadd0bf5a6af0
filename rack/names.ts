// The rack's metric-name dictionary: hash → name, learned from edge datagrams, relayed to the
// core with each batch (new names first, then a slow round-robin refresh so that a core that
// lost its registry relearns every name), and asked from edges when a hash has no name yet.

import type { SeriesColumns } from '../schema/codec.js';
import { nameAt, nameColumns, verifyName } from '../schema/codec.js';
import { HashIndex } from '../schema/hashtable.js';

export class NameTable {
  private readonly index: HashIndex;
  private readonly hashes: Uint32Array;
  private readonly names: string[] = [];
  private fresh: number[] = [];
  private refreshCursor = 0;
  collisions = 0;
  overflow = 0;
  /** Names whose hash did not match (a corrupted or forged dictionary entry): not learned. */
  badHashes = 0;

  constructor(readonly namesMax: number) {
    this.index = new HashIndex(namesMax);
    this.hashes = new Uint32Array(2 * namesMax);
  }

  get size(): number {
    return this.names.length;
  }

  has(lo: number, hi: number): boolean {
    return this.index.get(lo, hi) >= 0;
  }

  /** Learns the dictionary entries of a block (hashes were verified by the decoder). */
  learn(c: SeriesColumns): void {
    for (let j = 0; j < c.nameEnds.length; j++) {
      const lo = c.nameHashes[2 * j]!;
      const hi = c.nameHashes[2 * j + 1]!;
      const known = this.index.get(lo, hi);
      if (known >= 0) {
        // The same name again costs a compare; only a different one is hashed (frames are
        // decoded without hashing every name: the rack checks here, once per new name).
        if (this.names[known] !== nameAt(c, j)) {
          if (verifyName(c, j)) this.collisions++;
          else this.badHashes++;
        }
        continue;
      }
      if (!verifyName(c, j)) {
        this.badHashes++;
        continue;
      }
      const idx = this.index.insert(lo, hi);
      if (idx < 0) {
        this.overflow++;
        continue;
      }
      this.hashes[2 * idx] = lo;
      this.hashes[2 * idx + 1] = hi;
      this.names.push(nameAt(c, j));
      this.fresh.push(idx);
    }
  }

  /** Appends up to `max` hashes of `c` without a known name to `out` (as lo, hi pairs). */
  unknownIn(c: SeriesColumns, out: number[], max: number): void {
    this.scanUnknown(c.pointHashes, out, max);
    this.scanUnknown(c.distHashes, out, max);
  }

  private scanUnknown(h: Uint32Array, out: number[], max: number): void {
    for (let i = 0; i < h.length && out.length < 2 * max; i += 2) if (this.index.get(h[i]!, h[i + 1]!) < 0) out.push(h[i]!, h[i + 1]!);
  }

  /** Name columns for the next batch: names learned since the last one plus `refresh` older ones. */
  forBatch(refresh: number): Pick<SeriesColumns, 'nameHashes' | 'nameEnds' | 'nameBytes'> {
    const pick = this.fresh;
    this.fresh = [];
    for (let k = 0; k < refresh && this.names.length > 0; k++) {
      pick.push(this.refreshCursor);
      this.refreshCursor = (this.refreshCursor + 1) % this.names.length;
    }
    // Plain loops: this runs once a second, and V8 compiled a fresh closure here again each time.
    const hashes = new Uint32Array(2 * pick.length);
    const names: string[] = [];
    for (let i = 0; i < pick.length; i++) {
      const idx = pick[i]!;
      hashes[2 * i] = this.hashes[2 * idx]!;
      hashes[2 * i + 1] = this.hashes[2 * idx + 1]!;
      names.push(this.names[idx]!);
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
