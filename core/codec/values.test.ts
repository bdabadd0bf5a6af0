import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { checkedHabit, readSeries, seriesHabit, ValueCodecError, writeSeries, type SeriesHabit, type SeriesWriter } from './values.js';

/** A growable SeriesWriter, like core/block.ts ByteWriter. */
class Sink implements SeriesWriter {
  buf = new Uint8Array(64);
  pos = 0;
  bytes(src: Uint8Array, start: number, end: number): void {
    if (this.pos + end - start > this.buf.length) {
      const next = new Uint8Array(Math.max(this.buf.length * 2, this.pos + end - start));
      next.set(this.buf.subarray(0, this.pos));
      this.buf = next;
    }
    this.buf.set(src.subarray(start, end), this.pos);
    this.pos += end - start;
  }
  done(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }
}

const bitsOf = (a: Float64Array) => Array.from(new BigUint64Array(a.buffer, a.byteOffset, a.length), (b) => b.toString(16));

function encode(series: Float64Array[], habit: SeriesHabit | null = null): Uint8Array {
  const w = new Sink();
  for (const s of series) writeSeries(w, s, 0, s.length, habit);
  return w.done();
}

/** Every series back bit for bit, read one after another from one buffer, every byte used. */
function roundTrip(series: Float64Array[], habit: SeriesHabit | null = null): void {
  const buf = encode(series, habit);
  const r = { buf, pos: 0 };
  for (const s of series) {
    const out = new Float64Array(s.length + 2).fill(7);
    readSeries(r, out, 1, s.length, habit);
    expect(bitsOf(out.subarray(1, 1 + s.length))).toEqual(bitsOf(s));
    expect([out[0], out[s.length + 1]]).toEqual([7, 7]);
  }
  expect(r.pos).toBe(buf.length);
}

const f64 = (xs: number[]) => Float64Array.from(xs);
/** Any 64-bit pattern, NaN payloads included. */
const anyBits = fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff })).map(([lo, hi]) => {
  const u = Uint32Array.of(lo, hi);
  return new Float64Array(u.buffer)[0]!;
});
const special = fc.constantFrom(0, -0, NaN, Infinity, -Infinity, 1e300, -1e-300, 5e-324, 2 ** 53, -(2 ** 52) - 1, 0.1, 1 / 3, Number.MAX_VALUE, Number.MIN_VALUE);
const decimal = fc.tuple(fc.integer({ min: -(2 ** 40), max: 2 ** 40 }), fc.integer({ min: 0, max: 6 })).map(([n, e]) => n / 10 ** e);
const seriesOf = (v: fc.Arbitrary<number>) => fc.array(v, { minLength: 1, maxLength: 70 }).map(f64);
/** A walk with steps of up to ±step, scaled by 10^−e. */
const walk = (step: number) =>
  fc.tuple(fc.integer({ min: -1e9, max: 1e9 }), fc.array(fc.integer({ min: -step, max: step }), { minLength: 0, maxLength: 69 }), fc.integer({ min: 0, max: 3 })).map(([x0, steps, e]) => {
    let x = x0;
    return f64([x0, ...steps.map((s) => (x += s))].map((x) => x / 10 ** e));
  });

describe('value codec', () => {
  it('round-trips arbitrary doubles bit for bit', () => {
    fc.assert(fc.property(fc.array(seriesOf(fc.oneof(anyBits, fc.double())), { minLength: 1, maxLength: 4 }), (s) => roundTrip(s)), { numRuns: 500 });
  });

  it('round-trips decimal-looking values, special values and mixes of both', () => {
    fc.assert(fc.property(fc.array(seriesOf(decimal), { minLength: 1, maxLength: 4 }), (s) => roundTrip(s)), { numRuns: 500 });
    fc.assert(fc.property(fc.array(seriesOf(fc.oneof(special, decimal, fc.integer())), { minLength: 1, maxLength: 4 }), (s) => roundTrip(s)), { numRuns: 500 });
  });

  it('round-trips integer runs, counters, walks with outliers and constants', () => {
    const counter = fc.tuple(fc.integer({ min: 0, max: 2 ** 45 }), fc.array(fc.nat(2000), { maxLength: 69 })).map(([x0, inc]) => {
      let x = x0;
      return f64([x0, ...inc.map((d) => (x += d))]);
    });
    const constant = fc.tuple(fc.oneof(decimal, special, anyBits), fc.integer({ min: 1, max: 70 })).map(([v, n]) => new Float64Array(n).fill(v));
    const spiky = fc.tuple(walk(3), fc.array(fc.tuple(fc.nat(69), fc.integer({ min: -(2 ** 48), max: 2 ** 48 })), { maxLength: 5 })).map(([s, spikes]) => {
      for (const [i, v] of spikes) if (i < s.length) s[i] = v;
      return s;
    });
    // Mostly 0 or small with rare large values (idle queues: the Rice coder and its escapes).
    const skewed = fc.array(fc.oneof({ weight: 20, arbitrary: fc.constant(0) }, { weight: 8, arbitrary: fc.nat(3) }, { weight: 1, arbitrary: fc.nat(2 ** 40) }), { minLength: 1, maxLength: 70 }).map(f64);
    fc.assert(fc.property(fc.array(fc.oneof(walk(1), walk(300), walk(2 ** 20), counter, constant, spiky, skewed), { minLength: 1, maxLength: 5 }), (s) => roundTrip(s)), { numRuns: 1000 });
  });

  it('round-trips the edges of the decimal range', () => {
    // Integers at and beyond 2^50 (the float path), exponents up to 15 and past it.
    roundTrip([f64([2 ** 50 - 1, -(2 ** 50) + 1, 0]), f64([2 ** 50, 1]), f64([1e-15, 2e-15]), f64([1e-16]), f64([123456.789012345])]);
    // NaNs with payloads and both signs, in runs and alone.
    const nan = (hi: number, lo: number) => new Float64Array(Uint32Array.of(lo, hi).buffer)[0]!;
    roundTrip([f64([nan(0x7ff80000, 1), nan(0xfff00000, 5), NaN, nan(0x7ff00000, 0xffffffff), -0, 0, -0]), f64([nan(0x7ff12345, 0x6789)])]);
    // A constant, an arithmetic run, a zero run, one value.
    roundTrip([new Float64Array(60).fill(42.5), Float64Array.from({ length: 60 }, (_, i) => 1000 + 7 * i), new Float64Array(60), f64([3])]);
  });

  it('reads a Rice escape (a residual of 16 or more times 2^k, written whole)', () => {
    // mode 0, e 0, Rice, base 0 (length 0), k 0, escape width 5; then 16 ones and 21 in 5 bits; then 3 as 1110.
    const bits: [number, number][] = [[0, 2], [0, 4], [1, 1], [0, 6], [0, 5], [5, 6], [0xffff, 16], [21, 5], [0b0111, 4]];
    const bytes = new Uint8Array(8);
    let at = 0;
    for (const [v, nb] of bits) for (let i = 0; i < nb; i++, at++) if ((v >> i) & 1) bytes[at >> 3]! |= 1 << (at & 7);
    const r = { buf: bytes.subarray(0, Math.ceil(at / 8)), pos: 0 };
    const out = new Float64Array(2);
    readSeries(r, out, 0, 2);
    expect(Array.from(out)).toEqual([21, 3]);
    expect(r.pos).toBe(r.buf.length);
    expect(() => readSeries({ buf: r.buf.subarray(0, 5), pos: 0 }, out, 0, 2)).toThrow(ValueCodecError);
  });

  it('reads Rice escapes followed by ones (32 ones in one word; found by the codec bench)', () => {
    // An idle queue after a burst: Rice k = 0, escapes for 31 and 22.
    roundTrip([f64([31, 22, 15, 11, 7, 5, 4, 3, 2, 1, 0, 0, 0, 0, 3, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])]);
  });

  it('round-trips long series (beyond one block)', () => {
    roundTrip([Float64Array.from({ length: 5000 }, (_, i) => Math.sin(i) * 1e6), Float64Array.from({ length: 5000 }, (_, i) => (i * 37) % 1001)]);
  });

  it('codes a constant and an arithmetic run in a few bytes', () => {
    expect(encode([new Float64Array(60).fill(42.5)]).length).toBeLessThanOrEqual(5);
    expect(encode([Float64Array.from({ length: 60 }, (_, i) => 1e6 + 7 * i)]).length).toBeLessThanOrEqual(9);
  });

  it('rejects any truncation with ValueCodecError', () => {
    fc.assert(
      fc.property(fc.oneof(walk(300), seriesOf(anyBits), seriesOf(decimal), seriesOf(fc.oneof({ weight: 9, arbitrary: fc.nat(2) }, { weight: 1, arbitrary: fc.nat(5000) }))), (s) => {
        const buf = encode([s]);
        for (let len = 0; len < buf.length; len++) expect(() => readSeries({ buf: buf.subarray(0, len), pos: 0 }, new Float64Array(s.length), 0, s.length)).toThrow(ValueCodecError);
      }),
      { numRuns: 200 },
    );
  });

  it('on a mutated buffer throws ValueCodecError or reads within the buffer, never anything else', () => {
    fc.assert(
      fc.property(fc.oneof(walk(300), seriesOf(anyBits), seriesOf(fc.oneof(decimal, special))), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }), (s, flips) => {
        const buf = encode([s]);
        for (const [at, x] of flips) buf[at % buf.length]! ^= x;
        const r = { buf, pos: 0 };
        try {
          readSeries(r, new Float64Array(s.length), 0, s.length);
        } catch (e) {
          expect(e).toBeInstanceOf(ValueCodecError);
          return;
        }
        expect(r.pos).toBeLessThanOrEqual(buf.length);
      }),
      { numRuns: 2000 },
    );
  });

  // Habits (what a row's series usually choose, core/block.ts): any habit, the first series' or
  // one that fits none, writes series that read back bit for bit with it.
  const anySeries = fc.oneof(walk(300), walk(3), seriesOf(anyBits), seriesOf(fc.oneof(decimal, special)), seriesOf(fc.oneof({ weight: 9, arbitrary: fc.nat(2) }, { weight: 1, arbitrary: fc.nat(5000) })));
  const anyHabit = fc.oneof(fc.record({ mode: fc.nat(3), e: fc.nat(15), coder: fc.constant(0), param: fc.nat(54) }), fc.record({ mode: fc.nat(3), e: fc.nat(15), coder: fc.constant(1), param: fc.nat(24) }));

  it('round-trips any series under any habit, its own first series\' or another', () => {
    fc.assert(
      fc.property(fc.array(anySeries, { minLength: 1, maxLength: 6 }), anyHabit, fc.boolean(), (series, other, own) => {
        const habit = own ? seriesHabit(series[0]!, 0, series[0]!.length) : other;
        expect(checkedHabit(habit)).toEqual(habit);
        roundTrip(series, habit);
      }),
      { numRuns: 500 },
    );
  });

  it('saves about 10 bits a series of a row whose series choose alike (walks of 2 decimals)', () => {
    const rows = Array.from({ length: 40 }, (_, j) => {
      let x = 5000 + 37 * j;
      return Float64Array.from({ length: 60 }, (_, i) => (x += ((i * 7919 + j * 104729) % 301) - 150) / 100);
    });
    const habit = seriesHabit(rows[0]!, 0, 60);
    const without = encode(rows).length;
    const withHabit = encode(rows, habit).length;
    roundTrip(rows, habit);
    expect(without - withHabit).toBeGreaterThanOrEqual(40);
  });

  it('under a habit, rejects any truncation with ValueCodecError and survives mutation', () => {
    fc.assert(
      fc.property(anySeries, anyHabit, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }), (s, habit, flips) => {
        const buf = encode([s], habit);
        for (let len = 0; len < buf.length; len++) expect(() => readSeries({ buf: buf.subarray(0, len), pos: 0 }, new Float64Array(s.length), 0, s.length, habit)).toThrow(ValueCodecError);
        for (const [at, x] of flips) buf[at % buf.length]! ^= x;
        const r = { buf, pos: 0 };
        try {
          readSeries(r, new Float64Array(s.length), 0, s.length, habit);
        } catch (e) {
          expect(e).toBeInstanceOf(ValueCodecError);
          return;
        }
        expect(r.pos).toBeLessThanOrEqual(buf.length);
      }),
      { numRuns: 500 },
    );
  });

  it('refuses a habit out of range', () => {
    for (const h of [{ mode: 4, e: 0, coder: 0, param: 0 }, { mode: 0, e: 16, coder: 0, param: 0 }, { mode: 0, e: 0, coder: 2, param: 0 }, { mode: 0, e: 0, coder: 0, param: 55 }, { mode: 0, e: 0, coder: 1, param: 25 }]) expect(checkedHabit(h)).toBeNull();
  });

  it('refuses a series claimed longer than its output', () => {
    expect(() => readSeries({ buf: Uint8Array.of(0, 0), pos: 0 }, new Float64Array(2), 1, 2)).toThrow(RangeError);
  });
});
