import { describe, expect, it } from 'vitest';
import { ResendRing } from './ring.js';

const frame = (second: number, part: number) => Uint8Array.of(second & 255, part);

describe('ResendRing', () => {
  it('keeps the newest seconds within its bounds, the oldest going first', () => {
    const ring = new ResendRing(2, 1000);
    for (const s of [10, 11, 12]) ring.put(s, [frame(s, 0), frame(s, 1)]);
    expect(ring.get(10, 0)).toBeUndefined();
    expect(ring.get(12, 1)).toEqual(frame(12, 1));
    expect([ring.evictedSeconds, ring.heldBytes]).toEqual([1, 8]);
  });

  it('regression: a stamp sent twice (the wall clock stepped back) is answered for neither copy (before: the second replaced the first, and a NACK for the first copy\'s lost part was answered with the other second\'s data, which the rack filed into the first)', () => {
    const ring = new ResendRing(8, 1 << 20);
    ring.put(20, [frame(20, 0), frame(20, 1)]);
    ring.put(20, [frame(99, 0), frame(99, 1)]);
    expect([ring.get(20, 0), ring.get(20, 1)]).toEqual([undefined, undefined]);
    // A third copy is not kept either; other stamps are.
    ring.put(20, [frame(77, 0)]);
    ring.put(21, [frame(21, 0)]);
    expect([ring.get(20, 0), ring.get(21, 0)]).toEqual([undefined, frame(21, 0)]);
    expect([ring.repeatedSeconds, ring.heldBytes]).toEqual([1, 2]);
  });
});
