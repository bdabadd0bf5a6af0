import { describe, expect, it } from 'vitest';
import { Deferrals } from './deferrals.js';

describe('Deferrals', () => {
  it('keeps a batch waiting until its time, then forgets it; holds at most max, forgetting the oldest', () => {
    const d = new Deferrals(2);
    d.defer(1, 1000);
    d.defer(2, 2000);
    const at = (now: number) => {
      const s = new Set<number>();
      d.addWaiting(now, s);
      return [...s].sort();
    };
    expect(at(500)).toEqual([1, 2]);
    expect(at(1500)).toEqual([2]);
    expect(d.size).toBe(1);
    d.defer(3, 3000);
    d.defer(4, 3000);
    expect(d.size).toBe(2);
    expect(at(1500)).toEqual([3, 4]);
  });
});
