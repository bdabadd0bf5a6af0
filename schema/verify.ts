// Bounds checking for FlatBuffers read from the network. FlatBuffers' JavaScript runtime has
// no verifier (DESIGN §2): these checks run before any generated accessor or typed-array view
// touches a buffer. Every offset, vtable, length and alignment is checked against the buffer;
// every loop is bounded by the buffer's size. Failures throw Reject, which decoders turn into
// a typed result; nothing else escapes.

import type { UnpackArena } from './pointpack.js';

export type RejectReason =
  | 'too_short'
  | 'too_large'
  | 'bad_checksum'
  | 'bad_identifier'
  | 'bad_version'
  | 'out_of_bounds'
  | 'bad_columns'
  | 'bad_value'
  | 'bad_sketch'
  | 'bad_name'
  | 'unexpected_body';

export class Reject extends Error {
  constructor(
    readonly reason: RejectReason,
    detail: string,
  ) {
    super(detail);
  }
}

/** A verified table: where it is and where its vtable says each field lives. */
export interface TableRef {
  readonly pos: number;
  readonly vtable: number;
  readonly vtableBytes: number;
  readonly tableBytes: number;
}

export interface VectorRef {
  /** Byte offset of the first element. */
  readonly start: number;
  /** Number of elements. */
  readonly length: number;
}

const emptyVector: VectorRef = { start: 0, length: 0 };

export class Verifier {
  readonly view: DataView;
  /** Check each dictionary name against its hash (SHA-256); off when the caller checks only names it does not know. */
  nameHashes = true;
  /** Memory for a section's unpacked points (schema/pointpack.ts); null: a fresh buffer per section. */
  points: UnpackArena | null = null;
  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  // `what` and `part` (" table", " vtable", " length") name the checked thing; they are joined
  // only when a check fails: building the name on every call was most of a decode's garbage.
  private need(pos: number, size: number, what: string, part = ''): void {
    if (!Number.isInteger(pos) || pos < 0 || size < 0 || pos + size > this.bytes.length) {
      throw new Reject('out_of_bounds', `${what}${part} at ${pos}+${size} is outside the ${this.bytes.length}-byte message`);
    }
  }

  private aligned(pos: number, align: number, what: string, part = ''): void {
    if (pos % align !== 0) throw new Reject('out_of_bounds', `${what}${part} at ${pos} is not ${align}-byte aligned`);
  }

  /** The table whose position is stored as a uoffset at `at`. */
  tableAt(at: number, what: string): TableRef {
    this.need(at, 4, what);
    this.aligned(at, 4, what);
    return this.table(at + this.view.getUint32(at, true), what);
  }

  table(pos: number, what: string): TableRef {
    this.need(pos, 4, what, ' table');
    this.aligned(pos, 4, what, ' table');
    const vtable = pos - this.view.getInt32(pos, true);
    this.need(vtable, 4, what, ' vtable');
    this.aligned(vtable, 2, what, ' vtable');
    const vtableBytes = this.view.getUint16(vtable, true);
    const tableBytes = this.view.getUint16(vtable + 2, true);
    if (vtableBytes < 4 || vtableBytes % 2 !== 0) throw new Reject('out_of_bounds', `${what} vtable size ${vtableBytes} is invalid`);
    this.need(vtable, vtableBytes, what, ' vtable');
    if (tableBytes < 4) throw new Reject('out_of_bounds', `${what} table size ${tableBytes} is invalid`);
    this.need(pos, tableBytes, what, ' table');
    return { pos, vtable, vtableBytes, tableBytes };
  }

  /** Absolute position of field `slot` (0-based) of size `size`, or 0 when absent. */
  field(t: TableRef, slot: number, size: number, what: string): number {
    const entry = 4 + 2 * slot;
    if (entry + 2 > t.vtableBytes) return 0;
    const off = this.view.getUint16(t.vtable + entry, true);
    if (off === 0) return 0;
    if (off + size > t.tableBytes) throw new Reject('out_of_bounds', `${what} at table offset ${off} overruns its ${t.tableBytes}-byte table`);
    this.aligned(t.pos + off, Math.min(size, 8), what);
    return t.pos + off;
  }

  u8(t: TableRef, slot: number, what: string): number {
    const p = this.field(t, slot, 1, what);
    return p === 0 ? 0 : this.view.getUint8(p);
  }
  u16(t: TableRef, slot: number, what: string): number {
    const p = this.field(t, slot, 2, what);
    return p === 0 ? 0 : this.view.getUint16(p, true);
  }
  u32(t: TableRef, slot: number, what: string): number {
    const p = this.field(t, slot, 4, what);
    return p === 0 ? 0 : this.view.getUint32(p, true);
  }
  f64(t: TableRef, slot: number, what: string): number {
    const p = this.field(t, slot, 8, what);
    return p === 0 ? 0 : this.view.getFloat64(p, true);
  }
  /** A uint64 field that must fit in a JavaScript number (≤ 2^53). */
  u53(t: TableRef, slot: number, what: string): number {
    const p = this.field(t, slot, 8, what);
    if (p === 0) return 0;
    const hi = this.view.getUint32(p + 4, true);
    if (hi >= 0x200000) throw new Reject('bad_value', `${what} exceeds 2^53`);
    return hi * 0x100000000 + this.view.getUint32(p, true);
  }

  /** Vector field of `elemBytes`-sized scalars, at most `maxLength` long; empty when absent. */
  vector(t: TableRef, slot: number, elemBytes: number, maxLength: number, what: string): VectorRef {
    const p = this.field(t, slot, 4, what);
    if (p === 0) return emptyVector;
    const at = p + this.view.getUint32(p, true);
    this.need(at, 4, what, ' length');
    this.aligned(at, 4, what, ' length');
    const length = this.view.getUint32(at, true);
    if (length > maxLength) throw new Reject('out_of_bounds', `${what} has ${length} elements > limit ${maxLength}`);
    if (length === 0) return emptyVector;
    const start = at + 4;
    this.need(start, length * elemBytes, what);
    this.aligned(start, elemBytes, what);
    return { start, length };
  }

  /** UTF-8 string field of at most `maxBytes`; null when absent. */
  string(t: TableRef, slot: number, maxBytes: number, what: string): string | null {
    const p = this.field(t, slot, 4, what);
    if (p === 0) return null;
    const at = p + this.view.getUint32(p, true);
    this.need(at, 4, what, ' length');
    this.aligned(at, 4, what, ' length');
    const length = this.view.getUint32(at, true);
    if (length > maxBytes) throw new Reject('bad_name', `${what} is ${length} bytes > limit ${maxBytes}`);
    this.need(at + 4, length + 1, what);
    if (this.bytes[at + 4 + length] !== 0) throw new Reject('out_of_bounds', `${what} is not NUL-terminated`);
    try {
      return utf8.decode(this.bytes.subarray(at + 4, at + 4 + length));
    } catch (cause) {
      throw new Reject('bad_name', `${what} is not valid UTF-8: ${String(cause)}`);
    }
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
