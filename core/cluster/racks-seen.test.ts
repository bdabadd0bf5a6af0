import { describe, expect, it } from 'vitest';
import { RackSeconds } from './racks-seen.js';

describe('RackSeconds (a cluster node noting each rack second once)', () => {
  it('notes a rack second once however many shards it comes through, and only a newer one after', () => {
    const r = new RackSeconds(10);
    expect([r.note('a', 100), r.note('a', 100), r.note('a', 99), r.note('a', 101)]).toEqual([true, false, false, true]);
  });

  it('past its bound forgets the least recently updated rack instead of ignoring new racks', () => {
    // Before: a node that had seen racksMax racks never noted a new one (no server list, no fleet view for it).
    const r = new RackSeconds(2);
    expect(r.note('a', 1)).toBe(true);
    expect(r.note('b', 1)).toBe(true);
    expect(r.note('a', 2)).toBe(true); // a is now the most recently updated
    expect(r.note('c', 1)).toBe(true); // b goes
    expect([r.size, r.forgotten]).toEqual([2, 1]);
    expect(r.note('a', 2)).toBe(false); // a was kept, and this second is not newer
    expect(r.note('b', 1)).toBe(true); // b is new again; a, updated before c came, goes
    expect([r.size, r.forgotten]).toEqual([2, 2]);
    expect(r.note('c', 1)).toBe(false);
  });
});
