import { describe, expect, it } from 'vitest';
import { hashName, hashNameOften } from './names.js';

describe('hashNameOften', () => {
  it('gives what hashName gives, for names asked again and for more names than it remembers (each at its own offset)', () => {
    // 1,500 names twice: past its bound of 1,024, the oldest forgotten and hashed again.
    const names = Array.from({ length: 3000 }, (_, i) => `m.${i % 1500}`);
    const want = new Uint32Array(2);
    const got = new Uint32Array(6);
    for (const [i, name] of [...names, ...names.slice(0, 40)].entries()) {
      hashName(name, want, 0);
      const at = 2 * (i % 3);
      hashNameOften(name, got, at);
      expect([got[at], got[at + 1]], name).toEqual([want[0], want[1]]);
    }
  });
});
