import { describe, expect, it } from 'vitest';
import { HashIndex } from './hashtable.js';
import { hashName } from './names.js';

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
});
