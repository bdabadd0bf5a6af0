import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as flatbuffers from 'flatbuffers';
import { crc32 } from 'node:zlib';
import { Body, Encoder, KindCode, decodeFrame, nameAt, type EdgeSecondMessage, type Message, type SeriesColumns } from './codec.js';
import { Envelope, EdgeSecond } from './generated/apm_generated.js';
import { buildColumns } from './testdata.js';
import { SketchAccumulator } from './sketch.js';

const enc = new Encoder();
const columns = buildColumns(
  [
    { name: 'cpu.user', kind: KindCode.Gauge, value: 12.5 },
    { name: 'rpc.count', kind: KindCode.Counter, value: 1042 },
    { name: 'queue.depth', kind: KindCode.Gauge, value: -3 },
  ],
  [
    { name: 'rpc.latency', values: [1.5, 2, 2, 9.75, 120] },
    { name: 'temp.delta', values: [-4, 0, 3.25] },
  ],
  ['cpu.user', 'rpc.latency'],
);
const header = { server: 'web-01', session: 0xdeadbeef, seq: 77, second: 1_790_000_000, part: 2, parts: 5, sentMs: 1_790_000_000_123 };

function decodeOk(frame: Uint8Array): Message {
  const r = decodeFrame(frame, 65_507);
  if (!r.ok) throw new Error(`${r.reason}: ${r.detail}`);
  return r.msg;
}

function plain(c: SeriesColumns): Record<string, number[]> {
  return Object.fromEntries(Object.entries(c).map(([k, v]) => [k, Array.from(v as ArrayLike<number>)]));
}

describe('codec round trips', () => {
  it('EdgeSecond decodes to what was encoded, and generated accessors agree', () => {
    const frame = enc.edgeSecond({ ...header, series: columns });
    const msg = decodeOk(frame) as EdgeSecondMessage;
    expect(msg).toMatchObject({ type: 'edgeSecond', ...header });
    expect(plain(msg.series)).toEqual(plain(columns));
    expect(nameAt(msg.series, 1)).toBe('rpc.latency');
    // The generated code reads the same bytes the same way.
    const env = Envelope.getRootAsEnvelope(new flatbuffers.ByteBuffer(frame.subarray(0, frame.length - 4)));
    const es = env.body(new EdgeSecond()) as EdgeSecond;
    expect(es.server()).toBe('web-01');
    expect(es.seq()).toBe(77);
    expect(Array.from(es.series()!.pointValuesArray()!)).toEqual([12.5, 1042, -3]);
  });

  it('Nack and RackBatch round-trip', () => {
    const nack = decodeOk(enc.nack({ server: 'db-7', session: 1, second: 1_790_000_001, missingParts: Uint16Array.of(0, 3), unknownHashes: Uint32Array.of(1, 2) }));
    expect(nack).toMatchObject({ type: 'nack', server: 'db-7', second: 1_790_000_001 });
    expect(Array.from((nack as { missingParts: Uint16Array }).missingParts)).toEqual([0, 3]);
    const batch = decodeOk(
      enc.rackBatch({ rack: 'r1', batchSeq: 2 ** 40 + 3, second: 1_790_000_002, late: true, servers: [{ server: 'a', blocks: [columns] }, { server: 'b', blocks: [columns] }], rollup: columns }),
    );
    if (batch.type !== 'rackBatch') throw new Error('wrong type');
    expect(batch).toMatchObject({ rack: 'r1', batchSeq: 2 ** 40 + 3, late: true });
    expect(batch.servers.map((s) => s.server)).toEqual(['a', 'b']);
    expect(plain(batch.servers[1]!.series)).toEqual(plain(columns));
    expect(plain(batch.rollup)).toEqual(plain(columns));
  });

  it("concatenates a server's blocks column by column, rebasing sketch and name ends", () => {
    const other = buildColumns([{ name: 'x.y', kind: KindCode.Counter, value: 5 }], [{ name: 'lat', values: [3, 4] }], ['x.y']);
    const batch = decodeOk(enc.rackBatch({ rack: 'r', batchSeq: 1, second: 1_790_000_000, late: false, servers: [{ server: 'a', blocks: [columns, other] }], rollup: other }));
    if (batch.type !== 'rackBatch') throw new Error('wrong type');
    const c = batch.servers[0]!.series;
    expect(Array.from(c.pointValues)).toEqual([12.5, 1042, -3, 5]);
    expect(Array.from(c.distCounts)).toEqual([5, 3, 2]);
    expect(Array.from(c.sketchEnds)).toEqual([...Array.from(columns.sketchEnds), columns.sketchBytes.length + other.sketchEnds[0]!]);
    expect([nameAt(c, 0), nameAt(c, 1), nameAt(c, 2)]).toEqual(['cpu.user', 'rpc.latency', 'x.y']);
  });

  it('decodes frames that arrive at an unaligned offset', () => {
    const frame = enc.edgeSecond({ ...header, series: columns });
    const shifted = new Uint8Array(frame.length + 3).subarray(3);
    shifted.set(frame);
    expect(plain((decodeOk(shifted) as EdgeSecondMessage).series)).toEqual(plain(columns));
  });
});

describe('codec rejects bad input with a reason', () => {
  const good = enc.edgeSecond({ ...header, series: columns });
  const f = (bytes: Uint8Array, reason: string) => {
    const r = decodeFrame(bytes, 8192);
    expect(r.ok ? 'ok' : r.reason).toBe(reason);
  };
  const recrc = (fb: Uint8Array): Uint8Array => {
    const out = Uint8Array.from(fb);
    new DataView(out.buffer).setUint32(out.length - 4, crc32(out.subarray(0, out.length - 4)), true);
    return out;
  };
  it('names each failure', () => {
    f(new Uint8Array(9000), 'too_large');
    f(new Uint8Array(8), 'too_short');
    f(Uint8Array.from(good).fill(7, 40, 41), 'bad_checksum');
    const badId = Uint8Array.from(good);
    badId[4] = 0x58;
    f(recrc(badId), 'bad_identifier');
    const bogusRoot = Uint8Array.from(good);
    new DataView(bogusRoot.buffer).setUint32(0, 0x7ffffff0, true);
    f(recrc(bogusRoot), 'out_of_bounds');
    // A non-finite value.
    const nan = buildColumns([{ name: 'x', kind: KindCode.Gauge, value: NaN }], []);
    f(enc.edgeSecond({ ...header, series: nan }), 'bad_value');
    // A name whose hash was tampered with.
    const tampered = { ...columns, nameHashes: Uint32Array.from(columns.nameHashes).fill(1, 0, 1) };
    f(enc.edgeSecond({ ...header, series: tampered }), 'bad_name');
    // Distribution count disagreeing with its sketch.
    f(enc.edgeSecond({ ...header, series: { ...columns, distCounts: Uint32Array.of(5, 4) } }), 'bad_sketch');
    // Columns of different lengths.
    f(enc.edgeSecond({ ...header, series: { ...columns, pointKinds: Uint8Array.of(0, 0) } }), 'bad_columns');
    f(enc.edgeSecond({ ...header, server: 'bad server!', series: columns }), 'bad_name');
    f(enc.edgeSecond({ ...header, part: 5, series: columns }), 'bad_value');
    // Regression: a summary of kind gauge (0) or counter (1): the rack took the metric for a gauge
    // from that server on and left out the rack's rollup of every other server, uncounted.
    f(enc.edgeSecond({ ...header, series: { ...columns, distKinds: Uint8Array.from(columns.distKinds).fill(0, 0, 1) } }), 'bad_value');
    f(enc.edgeSecond({ ...header, series: { ...columns, distKinds: Uint8Array.from(columns.distKinds).fill(1, 0, 1) } }), 'bad_value');
  });

  it('regression: a receiver expecting one body type refuses another before decoding its body (an EdgeSecond at the core cost a whole decode, millions of name hashes, before it was refused)', () => {
    // A tampered name: decoding the body finds it; a receiver of Nacks never gets that far.
    const tampered = enc.edgeSecond({ ...header, series: { ...columns, nameHashes: Uint32Array.from(columns.nameHashes).fill(1, 0, 1) } });
    const all = decodeFrame(tampered, 8192);
    expect(all.ok ? 'ok' : all.reason).toBe('bad_name');
    const nackOnly = decodeFrame(tampered, 8192, { expect: Body.Nack });
    expect(nackOnly.ok ? 'ok' : [nackOnly.reason, nackOnly.detail]).toEqual(['unexpected_body', 'expected body Nack, got EdgeSecond']);
    const valid = decodeFrame(good, 8192, { expect: Body.EdgeSecond });
    expect(valid.ok && valid.msg.type).toBe('edgeSecond');
  });
});

/** Every view a decoded message hands out must lie inside the frame's own bytes. */
function assertWithin(msg: Message, frame: Uint8Array): void {
  const check = (c: SeriesColumns) => {
    for (const view of Object.values(c) as ArrayBufferView[]) {
      if (view.byteLength === 0) continue;
      expect(view.byteOffset + view.byteLength).toBeLessThanOrEqual(view.buffer.byteLength);
      expect(view.byteLength).toBeLessThanOrEqual(frame.length);
    }
    const acc = new SketchAccumulator();
    let start = 0;
    for (let i = 0; i < c.sketchEnds.length; i++) {
      expect(acc.addEncoded(c.sketchBytes, start, c.sketchEnds[i]!)).toBe(c.distCounts[i]);
      start = c.sketchEnds[i]!;
    }
  };
  if (msg.type === 'edgeSecond') check(msg.series);
  if (msg.type === 'rackBatch') {
    msg.servers.forEach((s) => check(s.series));
    check(msg.rollup);
  }
}

describe('fuzz: random, truncated and mutated frames never crash or read out of bounds', () => {
  // Seeded so a failure reproduces.
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const samples = [
    enc.edgeSecond({ ...header, series: columns }),
    enc.nack({ server: 's', session: 9, second: 1_790_000_000, missingParts: Uint16Array.of(1, 2, 3), unknownHashes: Uint32Array.of(5, 6) }),
    enc.rackBatch({ rack: 'r', batchSeq: 1, second: 1_790_000_000, late: false, servers: [{ server: 'a', blocks: [columns] }], rollup: columns }),
  ];
  const fixCrc = (b: Uint8Array) => {
    new DataView(b.buffer, b.byteOffset).setUint32(b.length - 4, crc32(b.subarray(0, b.length - 4)), true);
    return b;
  };

  it('40,000 cases: rejected with a reason or decoded within bounds', () => {
    const reasons = new Map<string, number>();
    let accepted = 0;
    for (let i = 0; i < 40_000; i++) {
      const base = samples[i % samples.length]!;
      let frame: Uint8Array;
      const mode = i % 4;
      if (mode === 0) {
        frame = new Uint8Array(Math.floor(rand() * 600));
        for (let j = 0; j < frame.length; j++) frame[j] = rand() * 256;
        if (frame.length >= 8 && rand() < 0.5) frame.set([0x41, 0x50, 0x4d, 0x31], 4);
        if (frame.length >= 16) fixCrc(frame);
      } else if (mode === 1) {
        frame = fixCrc(Uint8Array.from(base.subarray(0, 4 + Math.floor(rand() * (base.length - 4)))));
      } else {
        frame = Uint8Array.from(base);
        const flips = 1 + Math.floor(rand() * 8);
        for (let k = 0; k < flips; k++) frame[Math.floor(rand() * (frame.length - 4))]! ^= 1 << Math.floor(rand() * 8);
        if (mode === 3) fixCrc(frame);
      }
      const r = decodeFrame(frame, 65_507);
      if (r.ok) {
        accepted++;
        assertWithin(r.msg, frame);
      } else {
        reasons.set(r.reason, (reasons.get(r.reason) ?? 0) + 1);
        expect(r.detail.length).toBeGreaterThan(0);
      }
    }
    // Uncorrected flips must all be caught by the CRC; corrected ones mostly by the verifier.
    expect(reasons.get('bad_checksum')).toBeGreaterThanOrEqual(10_000);
    expect(reasons.get('out_of_bounds') ?? 0).toBeGreaterThan(100);
    expect(accepted).toBeLessThan(40_000);
  });
});

describe('generated code', () => {
  it('is what flatc makes of schema/apm.fbs today (run `npm run schema` after editing it)', () => {
    const out = mkdtempSync(join(tmpdir(), 'apm-fbs-'));
    execFileSync('flatc', ['--ts', '--ts-flat-files', '-o', out, 'schema/apm.fbs']);
    expect(readFileSync(join(out, 'apm_generated.ts'), 'utf8')).toBe(readFileSync('schema/generated/apm_generated.ts', 'utf8'));
  });
});
