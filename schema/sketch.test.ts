import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { DDSketch } from '@datadog/sketches-js';
import { SketchAccumulator, SortedSketchEncoder, sketchCount, sketchKeyMax, sketchKeyMin } from './sketch.js';

const encoder = new SortedSketchEncoder();

function encode(values: number[]): Uint8Array {
  const sorted = Float64Array.from(values).sort();
  const size = encoder.bin(sorted, null, 0, sorted.length);
  const out = new Uint8Array(size);
  expect(encoder.encode(out, 0)).toBe(size);
  return out;
}

function exactAt(sorted: Float64Array, q: number): number {
  return sorted[Math.floor(q * (sorted.length - 1))]!;
}

// Seeded generator so failures reproduce.
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

const quantiles = [0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1];

describe('sketch accuracy against exact rank', () => {
  const r = rng(42);
  const n = 20_000;
  const sets: Record<string, number[]> = {
    lognormal: Array.from({ length: n }, () => Math.exp(3 + 1.5 * gaussian(r))),
    uniform: Array.from({ length: n }, () => r() * 1000),
    bimodal: Array.from({ length: n }, () => (r() < 0.7 ? 5 + r() : 800 + 100 * r())),
    constant: Array.from({ length: n }, () => 42.5),
    negative: Array.from({ length: n }, () => -Math.exp(2 + gaussian(r))),
    mixedSign: Array.from({ length: n }, () => (r() < 0.1 ? 0 : (r() < 0.5 ? -1 : 1) * Math.exp(4 * gaussian(r)))),
  };
  for (const [name, values] of Object.entries(sets)) {
    it(`${name}: every quantile within 1% relative`, () => {
      const sorted = Float64Array.from(values).sort();
      const acc = new SketchAccumulator();
      const bytes = encode(values);
      expect(acc.addEncoded(bytes, 0, bytes.length)).toBe(n);
      for (const q of quantiles) {
        const want = exactAt(sorted, q);
        const got = acc.quantile(q, sorted[0]!, sorted[n - 1]!);
        expect(Math.abs(got - want)).toBeLessThanOrEqual(Math.abs(want) * 0.01 + 1e-300);
      }
    });
  }

  it('matches sketches-js bucket for bucket on positive values', () => {
    const dd = new DDSketch({ relativeAccuracy: 0.01 });
    const acc = new SketchAccumulator();
    for (const v of sets.lognormal!) {
      dd.accept(v);
      acc.addValue(v);
    }
    for (const q of quantiles.slice(1, -1)) expect(acc.quantile(q)).toBe(dd.getValueAtQuantile(q));
  });
});

describe('sketch encoding properties', () => {
  const finite = fc.double({ noNaN: true, noDefaultInfinity: true });
  const values = fc.array(fc.oneof(finite, fc.constantFrom(0, -0, 1, -1, 5e-324, -5e-324)), { maxLength: 300 });

  it('merge(a, b) encodes exactly like sketching a ∪ b (negatives, zero, positives)', () => {
    fc.assert(
      fc.property(values, values, (a, b) => {
        const acc = new SketchAccumulator();
        const ea = encode(a);
        const eb = encode(b);
        expect(acc.addEncoded(ea, 0, ea.length)).toBe(a.length);
        expect(acc.addEncoded(eb, 0, eb.length)).toBe(b.length);
        const merged = new Uint8Array(acc.encodedBytes());
        acc.encodeInto(merged, 0);
        expect(merged).toEqual(encode([...a, ...b]));
      }),
      { numRuns: 500 },
    );
  });

  it('addChecked (one walk, for sketches checked on decode) merges exactly as addEncoded, and throws on a malformed one', () => {
    fc.assert(
      fc.property(values, values, (a, b) => {
        const once = new SketchAccumulator();
        const twice = new SketchAccumulator();
        for (const x of [encode(a), encode(b)]) expect(once.addChecked(x, 0, x.length)).toBe(twice.addEncoded(x, 0, x.length));
        const [p, q] = [once, twice].map((acc) => {
          const out = new Uint8Array(acc.encodedBytes());
          acc.encodeInto(out, 0);
          return out;
        });
        expect(p).toEqual(q);
      }),
      { numRuns: 300 },
    );
    expect(() => new SketchAccumulator().addChecked(Uint8Array.of(0, 0, 1, 2), 0, 4)).toThrow(/BUG/);
  });

  it('decode(encode(x)) re-encodes to the same bytes and counts', () => {
    fc.assert(
      fc.property(values, (a) => {
        const bytes = encode(a);
        expect(sketchCount(bytes, 0, bytes.length)).toBe(a.length);
        const acc = new SketchAccumulator();
        acc.addEncoded(bytes, 0, bytes.length);
        const again = new Uint8Array(acc.encodedBytes());
        acc.encodeInto(again, 0);
        expect(again).toEqual(bytes);
        acc.reset();
        expect(acc.count()).toBe(0);
      }),
      { numRuns: 500 },
    );
  });

  it('weights count as repeated observations', () => {
    const sorted = Float64Array.of(-3, 0, 2, 2, 7);
    const weights = Uint32Array.of(2, 1, 3, 1, 10);
    const size = encoder.bin(sorted, weights, 0, sorted.length);
    const out = new Uint8Array(size);
    encoder.encode(out, 0);
    expect(sketchCount(out, 0, size)).toBe(17);
  });

  it('rejects malformed bins instead of reading past them', () => {
    const f = (bytes: number[], why: string) => expect(sketchCount(Uint8Array.from(bytes), 0, bytes.length), why).toBe(-1);
    f([], 'empty');
    f([0, 0], 'missing the positive store');
    f([0, 0, 1, 2], 'bin without a count');
    f([0, 0, 1, 2, 0], 'zero count');
    f([0, 0, 2, 2, 1, 0, 1], 'zero key delta');
    f([0, 0, 0, 9], 'trailing byte');
    f([0, 0, 100, 2, 1], 'more bins than bytes');
    f([0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0], 'varint longer than 5 bytes');
    const big = (sketchKeyMax + 10) * 2;
    f([0, 0, 1, 0x80 | (big & 0x7f), 0x80 | ((big >> 7) & 0x7f), big >> 14, 1], 'key beyond the finite range');
    expect(sketchKeyMin).toBeLessThan(-30000);
  });
});
