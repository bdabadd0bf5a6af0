import { describe, expect, it } from 'vitest';
import { HashIndex } from './hashtable.js';
import { hashName } from '../schema/names.js';

describe('HashIndex', () => {
  it('assigns dense indexes, finds them again, refuses beyond capacity, and clears', () => {
    const t = new HashIndex(1000);
    const h = new Uint32Array(2 * 1001);
    for (let i = 0; i <= 1000; i++) hashName(`m.${i}`, h, 2 * i);
    for (let i = 0; i < 1000; i++) expect(t.insert(h[2 * i]!, h[2 * i + 1]!)).toBe(i);
    expect(t.insert(h[2000]!, h[2001]!)).toBe(-1);
    for (let i = 0; i < 1000; i++) expect(t.get(h[2 * i]!, h[2 * i + 1]!)).toBe(i);
    expect(t.insert(h[10]!, h[11]!)).toBe(5);
    // Same low word, different high word: distinct keys.
    const u = new HashIndex(4);
    expect([u.insert(1, 2), u.insert(1, 3), u.get(1, 2), u.get(1, 3), u.get(1, 4)]).toEqual([0, 1, 0, 1, -1]);
    t.clear();
    expect([t.size, t.get(h[0]!, h[1]!)]).toEqual([0, -1]);
  });

  it('deletes entries: the others stay found (probe runs closed up, property over random keys), a deleted index is reused, the capacity counts live entries', () => {
    const cap = 300;
    const t = new HashIndex(cap);
    const h = new Uint32Array(2 * 5000);
    for (let i = 0; i < 5000; i++) hashName(`d.${i}`, h, 2 * i);
    // Keys whose probes collide often: a table of 1024 slots, 300 live, churned 20,000 times.
    const live = new Map<number, number>();
    let seed = 7;
    const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n);
    for (let step = 0; step < 20_000; step++) {
      const k = rnd(5000);
      if (live.has(k)) {
        expect(t.delete(h[2 * k]!, h[2 * k + 1]!)).toBe(live.get(k));
        live.delete(k);
      } else {
        const index = t.insert(h[2 * k]!, h[2 * k + 1]!);
        if (live.size >= cap) expect(index).toBe(-1);
        else {
          expect(index).toBeGreaterThanOrEqual(0);
          expect(index).toBeLessThan(cap);
          expect([...live.values()]).not.toContain(index);
          live.set(k, index);
        }
      }
      if (step % 997 === 0) for (let x = 0; x < 5000; x++) expect(t.get(h[2 * x]!, h[2 * x + 1]!)).toBe(live.get(x) ?? -1);
    }
    expect(t.size).toBe(live.size);
    expect(t.delete(1, 1)).toBe(-1);
  });
});
