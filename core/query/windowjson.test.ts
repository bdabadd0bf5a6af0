import { describe, expect, it } from 'vitest';
import type { WindowResult } from './eval.js';
import { windowJson, windowsJson } from './windowjson.js';

/** A small deterministic generator (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const special = [0, -0, 1, -1, NaN, Infinity, -Infinity, 1e300, -1e300, 5e-324, 1e21, 1e-7, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), 2 ** 53, 2147483647000, 2147483646000, -2147483648000, -2147483647000, 1000, -1000, 0.1 + 0.2, 25.793050000000004];

describe('windowJson', () => {
  it('writes what JSON.stringify writes, for every kind of number in every field and the keys functions have', () => {
    const r = rng(7);
    const pick = (): number => {
      const u = r();
      if (u < 0.3) return special[Math.floor(r() * special.length)]!;
      if (u < 0.5) return Math.floor(r() * 4e9) * 1000; // ms times (multiples of 1,000, some past 2³¹ s)
      if (u < 0.7) return Math.floor((r() - 0.5) * 2 ** 40);
      if (u < 0.85) return (r() - 0.5) * 10 ** Math.floor(r() * 40 - 20);
      return Math.round(r() * 1e6) / 100;
    };
    const keys = ['min', 'max', 'avg', 'count', 'sum', 'percentile(99)', 'percentile(99.9)', 'percentile(0.001)'];
    const windows: WindowResult[] = [];
    for (let i = 0; i < 5000; i++) {
      const values: Record<string, number> = {};
      for (const k of keys) if (r() < 0.5) values[k] = pick();
      const w: WindowResult = { startMs: pick(), endMs: pick(), servers: pick(), count: pick(), values, revision: r() < 0.8 ? 0 : Math.floor(r() * 10) };
      if (r() < 0.2) w.sketched = true;
      windows.push(w);
      expect(windowJson(w)).toBe(JSON.stringify(w));
    }
    expect(windowsJson(windows)).toBe(JSON.stringify(windows));
    expect(windowsJson([])).toBe('[]');
  });
});
