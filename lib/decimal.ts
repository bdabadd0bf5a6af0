// Decimal doubles: a value that is an integer x times 10^−e, found and checked exactly, so that
// x / 10^e gives back the very double (IEEE division is correctly rounded, and both x and 10^e
// are exact for the ranges used here). The storage codec (core/codec/values.ts) stores such
// integers in its rows, and the wire packs a section's values as them (schema/pointpack.ts).

/** The largest exponent tried (4 bits in the storage codec's header and the wire's mode byte); every 10^e up to it is an exact double. */
export const decimalExponentMax = 15;

/** 10^e for e = 0 … decimalExponentMax. */
export const pow10 = Float64Array.from({ length: decimalExponentMax + 1 }, (_, e) => 10 ** e);

/**
 * Smallest e ≤ decimalExponentMax with every value of vals[from, to) an integer · 10^−e whose
 * integer is below `limit` in magnitude, else −1. NaN, ±∞ and −0 (which no integer gives back)
 * have none.
 */
export function decimalExponent(vals: Float64Array, from: number, to: number, limit: number): number {
  let e = 0;
  let scale = 1;
  for (let i = from; i < to; i++) {
    const v = vals[i]!;
    if (v !== v || Object.is(v, -0)) return -1;
    for (;;) {
      const x = Math.round(v * scale);
      if (Math.abs(x) < limit && x / scale === v) break;
      if (++e > decimalExponentMax) return -1;
      scale = pow10[e]!;
    }
  }
  return e;
}
