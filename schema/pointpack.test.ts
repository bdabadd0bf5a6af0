import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { concatVector, decodeFrame, Encoder, KindCode } from './codec.js';
import { Body, ShardSection } from './generated/apm_generated.js';
import { batchBytesMax, sectionPointsMax } from './limits.js';
import { PointPacker, UnpackArena, unpackPoints } from './pointpack.js';
import { encodeShardSection, type ShardSectionMessage } from './section.js';
import { Reject } from './verify.js';

/** Columns of metrics given as lists of [server, value]. */
function columns(metrics: readonly (readonly [number, number])[][]) {
  const ends = new Uint32Array(metrics.length);
  const servers: number[] = [];
  const values: number[] = [];
  metrics.forEach((m, i) => {
    for (const [s, v] of m) {
      servers.push(s);
      values.push(v);
    }
    ends[i] = servers.length;
  });
  return { ends, servers: Uint16Array.from(servers), values: Float64Array.from(values) };
}

/** The same bits (−0, NaN payloads and all). */
function bitsOf(v: Float64Array): string {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex');
}

const serverCount = 1024;

/** Values of every kind a metric may hold: integers, short decimals, long doubles, ±∞, NaN, −0, subnormals, huge. */
const value = fc.oneof(
  fc.integer({ min: -1000, max: 100_000 }),
  fc.integer({ min: 0, max: 10_000 }).map((x) => x / 100),
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 }),
  fc.double(),
  fc.constantFrom(-0, 0, NaN, Infinity, -Infinity, 5e-324, 2 ** 53, -(2 ** 60), 0.1 + 0.2, 1e15 + 0.3),
);

/** A metric: every server 0..c−1 (as a rack of servers that all sent it), with any values or one value for all, or some servers in order, or any servers in any order (repeats too). */
const metric = fc.oneof(
  fc.array(value, { minLength: 1, maxLength: 50 }).map((vs) => vs.map((v, k) => [k, v] as const)),
  fc.tuple(value, fc.integer({ min: 1, max: 50 })).map(([v, c]) => Array.from({ length: c }, (_, k) => [k, v] as const)),
  fc.array(fc.tuple(fc.integer({ min: 0, max: serverCount - 1 }), value), { minLength: 1, maxLength: 50 }).map((l) => [...l].sort((a, b) => a[0] - b[0])),
  fc.array(fc.tuple(fc.integer({ min: 0, max: serverCount - 1 }), value), { minLength: 1, maxLength: 50 }),
);

describe('point_pack (schema/pointpack.ts)', () => {
  it('gives back every server and every value bit for bit (property)', () => {
    const packer = new PointPacker();
    fc.assert(
      fc.property(fc.array(metric, { maxLength: 20 }), (metrics) => {
        const c = columns(metrics);
        const pack = packer.pack(c.ends, c.servers, c.values);
        expect(pack.length).toBeLessThanOrEqual(11 * c.values.length + c.ends.length);
        const back = unpackPoints(pack.slice(), c.ends, serverCount);
        expect(Array.from(back.servers)).toEqual(Array.from(c.servers));
        expect(bitsOf(back.values)).toBe(bitsOf(c.values));
      }),
      { numRuns: 2000 },
    );
  });

  it('unpacks into an UnpackArena: parts one after the other, each intact while later ones are taken (its buffer grows beside them); past its bound a part of its own; all reused after a reset', () => {
    const packer = new PointPacker();
    const arena = new UnpackArena(1 << 21);
    fc.assert(
      fc.property(fc.array(fc.array(metric, { minLength: 1, maxLength: 20 }), { minLength: 1, maxLength: 12 }), (sections) => {
        arena.reset();
        const cols = sections.map(columns);
        const back = cols.map((c) => unpackPoints(packer.pack(c.ends, c.servers, c.values).slice(), c.ends, serverCount, arena));
        cols.forEach((c, k) => {
          expect(Array.from(back[k]!.servers)).toEqual(Array.from(c.servers));
          expect(bitsOf(back[k]!.values)).toBe(bitsOf(c.values));
        });
      }),
      { numRuns: 500 },
    );
    // A part past the buffer's end: a larger buffer, the parts of the old one intact.
    const grow = new UnpackArena(8 << 20);
    const a = grow.take(900_000)!;
    const first = new Uint8Array(a.buffer, a.offset, 900_000).fill(7);
    const b = grow.take(300_000)!;
    expect(b.buffer).not.toBe(a.buffer);
    expect(b.buffer.byteLength).toBeGreaterThanOrEqual(1_200_000);
    new Uint8Array(b.buffer, b.offset, 300_000).fill(9);
    expect(first.every((x) => x === 7)).toBe(true);
    // Past the bound: null (counted), and the section takes a buffer of its own.
    const small = new UnpackArena(64);
    expect(small.take(40)).toMatchObject({ offset: 0 });
    expect(small.take(40)).toBeNull();
    expect(small.overflows).toBe(1);
    small.reset();
    expect(small.take(40)).toMatchObject({ offset: 0 });
    const c = columns([[[0, 1.5], [1, 2.5], [2, 3.5], [3, 4.5], [4, 5.5], [5, 6.5], [6, 7.5]]]);
    const own = unpackPoints(packer.pack(c.ends, c.servers, c.values).slice(), c.ends, serverCount, small);
    expect(Array.from(own.values)).toEqual([1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]);
  });

  it('regression: a large integer before a value with decimals goes raw (the pass went back to the integer\'s exponent and looped for good)', () => {
    const packer = new PointPacker();
    for (const values of [[-21_474_837, 2.11], [2.11, -21_474_837], [2 ** 30, 0.5, 3]]) {
      const c = columns([values.map((v, k) => [k, v] as const)]);
      const pack = packer.pack(c.ends, c.servers, c.values);
      expect(pack[0]).toBe(0x40);
      expect(bitsOf(unpackPoints(pack.slice(), c.ends, serverCount).values)).toBe(bitsOf(c.values));
    }
  });

  it('takes a byte or two a value for what metrics hold, none for a constant, and no server bytes when every server sent the metric', () => {
    const packer = new PointPacker();
    const servers = Uint16Array.from({ length: 40 }, (_, k) => k);
    const one = (values: number[]) => packer.pack(Uint32Array.of(values.length), servers.subarray(0, values.length), Float64Array.from(values)).length;
    // CPU percent with two decimals: the mode, the least mantissa, the width, then 2 bytes a value.
    expect(one(Array.from({ length: 40 }, (_, k) => Math.round(4000 + 37 * k) / 100))).toBe(1 + 2 + 1 + 2 * 40);
    // Counters near each other: a byte a value.
    expect(one(Array.from({ length: 40 }, (_, k) => 1_000_000 + k))).toBe(1 + 3 + 1 + 40);
    // The same value on every server: nothing a value.
    expect(one(Array.from({ length: 40 }, () => 65_536))).toBe(1 + 3 + 1);
    // Doubles that are not short decimals go raw: 8 bytes a value.
    expect(one(Array.from({ length: 40 }, (_, k) => Math.PI * (k + 1)))).toBe(1 + 8 * 40);
    // Servers listed when some did not send it: a byte a server more.
    const some = Uint16Array.from({ length: 20 }, (_, k) => 2 * k);
    expect(packer.pack(Uint32Array.of(20), some, new Float64Array(20)).length).toBe(1 + 20 + 1 + 1);
  });

  it('refuses bytes that do not hold exactly the entries (truncated, trailing, bad mode, a server past the list, more points than bytes), with a reason (fuzz)', () => {
    const packer = new PointPacker();
    const c = columns([
      Array.from({ length: 30 }, (_, k) => [k, k / 4] as const),
      [[3, 1.5], [9, Math.PI], [700, -2]],
      Array.from({ length: 12 }, (_, k) => [k, 1e6 + k] as const),
    ]);
    const pack = packer.pack(c.ends, c.servers, c.values).slice();
    const reason = (bytes: Uint8Array, ends = c.ends, count = serverCount): string => {
      try {
        unpackPoints(bytes, ends, count);
        return 'ok';
      } catch (e) {
        expect(e).toBeInstanceOf(Reject);
        return (e as Reject).reason;
      }
    };
    expect(reason(pack)).toBe('ok');
    for (let n = 0; n < pack.length; n++) expect(reason(pack.subarray(0, n))).not.toBe('ok');
    expect(reason(Uint8Array.from([...pack, 0]))).toBe('bad_columns');
    expect(reason(pack, c.ends, 700)).toBe('bad_value');
    expect(reason(pack, Uint32Array.of(30, 33, 45, 46))).toBe('bad_columns');
    expect(reason(pack, Uint32Array.of(30, 30, 45))).toBe('bad_columns');
    expect(reason(Uint8Array.of(0x20, 0), Uint32Array.of(1))).toBe('bad_value');
    expect(reason(Uint8Array.of(0x41, 0, 0, 0, 0, 0, 0, 0, 0), Uint32Array.of(1))).toBe('bad_value');
    // More points than a frame could hold unpacked: refused before any column is made (a value
    // shared by every server takes no byte, so the bytes alone do not bound the columns).
    expect(reason(Uint8Array.of(0, 0, 0), Uint32Array.of(sectionPointsMax + 1))).toBe('bad_columns');
    // Offsets wider than 4 bytes, and offsets past the end.
    expect(reason(Uint8Array.of(0, 0, 5, 0, 0, 0, 0, 0), Uint32Array.of(1))).toBe('bad_value');
    expect(reason(Uint8Array.of(0, 0, 2, 0, 0, 0), Uint32Array.of(2))).toBe('bad_columns');
    // Implied servers 0..c−1 beyond the section's list.
    expect(reason(Uint8Array.of(0, 0, 0, 0), Uint32Array.of(3), 2)).toBe('bad_value');
    for (let i = 0; i < 5000; i++) {
      const bad = pack.slice();
      bad[Math.floor(Math.random() * bad.length)]! ^= 1 << Math.floor(Math.random() * 8);
      const r = reason(bad);
      if (r === 'ok') {
        // A flip inside a value or a server step may still be well formed: then it decodes within bounds.
        const back = unpackPoints(bad, c.ends, serverCount);
        expect(back.values.length).toBe(c.values.length);
      }
    }
  });

  it('a section from a rack before the pack (point_servers and point_values) decodes to the same columns; a section with both forms is refused', () => {
    const enc = new Encoder();
    const c = columns([
      Array.from({ length: 40 }, (_, k) => [k, k + 0.25] as const),
      [[1, -0], [5, NaN], [5, 2]],
    ]);
    const section = {
      shard: 0,
      servers: Array.from({ length: 40 }, (_, k) => `s${k}`),
      pointHashes: new Uint32Array(4),
      pointKinds: Uint8Array.of(KindCode.Gauge, KindCode.Counter),
      pointEnds: c.ends,
      pointServers: c.servers,
      pointValues: c.values,
      distHashes: new Uint32Array(0),
      distEnds: new Uint32Array(0),
      distServers: new Uint16Array(0),
      distCounts: new Uint32Array(0),
      distSums: new Float64Array(0),
      distMins: new Float64Array(0),
      distMaxes: new Float64Array(0),
      sketchEnds: new Uint32Array(0),
      sketchBytes: new Uint8Array(0),
      nameHashes: new Uint32Array(0),
      nameEnds: new Uint32Array(0),
      nameBytes: new Uint8Array(0),
    };
    const h = { rack: 'r1', session: 1, seq: 1, second: 1_790_000_000, late: false, shards: 1 };
    const decode = (frame: Uint8Array) => {
      const r = decodeFrame(frame, batchBytesMax);
      if (!r.ok) throw new Error(`${r.reason}: ${r.detail}`);
      return r.msg as ShardSectionMessage;
    };
    const packed = encodeShardSection(enc, h, section).slice();
    const old = encodeShardSection(enc, h, section, undefined, true).slice();
    // Both forms in one section (no encoder writes it): refused, not read either way.
    const b = enc.begin(4096);
    const ids = ShardSection.createServersVector(b, section.servers.map((id) => b.createString(id)));
    const v = (data: ArrayBufferView, bytes: number) => concatVector(b, [data], bytes);
    const both = enc.end(
      Body.ShardSection,
      ShardSection.createShardSection(b, b.createString(h.rack), h.session, BigInt(h.seq), h.second, false, 0, 1, ids, v(section.pointHashes, 8), v(section.pointKinds, 1), v(section.pointEnds, 4), v(c.servers, 2), v(c.values, 8), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, v(new PointPacker().pack(c.ends, c.servers, c.values), 1)),
    ).slice();
    const refused = decodeFrame(both, batchBytesMax);
    expect(refused.ok ? 'ok' : [refused.reason, refused.detail]).toEqual(['bad_columns', 'point_pack beside point_servers or point_values']);
    expect(packed.length).toBeLessThan(old.length - 300);
    for (const m of [decode(packed), decode(old)]) {
      expect(Array.from(m.pointServers)).toEqual(Array.from(c.servers));
      expect(bitsOf(m.pointValues)).toBe(bitsOf(c.values));
      // NaN, and the second point of server 5, marked bad in both forms.
      expect(Array.from(m.pointBad ?? [])).toEqual([...new Array(41).fill(0), 1, 1]);
    }
  });
});
