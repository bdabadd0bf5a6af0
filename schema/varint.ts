// Unsigned LEB128 varints bounded to 32 bits, and zig-zag for signed keys (schema/sketch.ts).

/** Bytes needed to write `value` (0 ≤ value < 2^32) as a varint. */
export function varintBytes(value: number): number {
  if (value < 0x80) return 1;
  if (value < 0x4000) return 2;
  if (value < 0x200000) return 3;
  if (value < 0x10000000) return 4;
  return 5;
}

/** Writes `value` (0 ≤ value < 2^32) at `pos`; returns the position after it. */
export function writeVarint(out: Uint8Array, pos: number, value: number): number {
  let v = value;
  while (v >= 0x80) {
    out[pos++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  out[pos++] = v;
  return pos;
}

export function zigzag(n: number): number {
  return n >= 0 ? n * 2 : -n * 2 - 1;
}

export function unzigzag(z: number): number {
  return z % 2 === 0 ? z / 2 : -(z + 1) / 2;
}

/**
 * Cursor for reading varints out of untrusted bytes: every read is bounded by `end`, and a
 * varint longer than 5 bytes or ≥ 2^32 sets `failed` instead of throwing.
 */
export class VarintReader {
  pos: number;
  failed = false;
  constructor(
    readonly bytes: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  next(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 5; i++) {
      if (this.pos >= this.end) break;
      const b = this.bytes[this.pos++]!;
      result += (b & 0x7f) * scale;
      if (b < 0x80) {
        if (result > 0xffffffff) break;
        return result;
      }
      scale *= 0x80;
    }
    this.failed = true;
    this.pos = this.end;
    return 0;
  }
}
