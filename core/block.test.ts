import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { deflateRawSync } from 'node:zlib';
import { decodeRow, encodeRow, rowAggregates, RowError, RowScratch, rowParts, rowServerIds, rowV3Marker, rowV4Marker, rowV5Marker, selectServers, type DecodedRow, type RowInput, type SummaryColumns } from './block.js';
import { seriesHabit, writeSeries } from './codec/values.js';

function summaries(secs: number[], src: Uint8Array): SummaryColumns {
  const n = secs.length;
  return {
    secs: Uint16Array.from(secs),
    count: Float64Array.from(secs, (s) => s + 1),
    sum: Float64Array.from(secs, (s) => s * 1.5),
    min: Float64Array.from(secs, (s) => -s),
    max: Float64Array.from(secs, (s) => s * 2),
    sketchSrc: new Array<Uint8Array>(n).fill(src),
    sketchStart: new Uint32Array(n),
    sketchEnd: new Uint32Array(n).fill(src.length),
  };
}

const sketch = Uint8Array.of(0, 0, 1, 2, 1);
const noZero = (v: number) => (Object.is(v, -0) ? 0 : v);
const value = fc.oneof(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.integer({ min: -1e6, max: 1e6 }), fc.integer({ min: -99999, max: 99999 }).map((n) => n / 100));
/** Per server: the seconds it has a point at, 60 candidate values, and whether it has a summary at its first second. */
const serversArb = fc.array(fc.tuple(fc.uniqueArray(fc.integer({ min: 0, max: 59 }), { maxLength: 60 }), fc.array(value, { minLength: 60, maxLength: 60 }), fc.boolean()), { minLength: 1, maxLength: 12 });

/** A row of these servers (ids j * 7 + 1): points, a summary at second 3 for flagged servers, a rollup at 0, 5, 59. */
function rowOf(ss: [number[], number[], boolean][]): RowInput {
  const pointStart = new Int32Array(ss.length + 1);
  const distStart = new Int32Array(ss.length + 1);
  const secs: number[] = [];
  const vals: number[] = [];
  const dsecs: number[] = [];
  ss.forEach(([present, v, dist], j) => {
    pointStart[j] = secs.length;
    distStart[j] = dsecs.length;
    for (const s of [...present].sort((a, b) => a - b)) {
      secs.push(s);
      vals.push(v[s]!);
    }
    if (dist) dsecs.push(3);
  });
  pointStart[ss.length] = secs.length;
  distStart[ss.length] = dsecs.length;
  return {
    kind: 0,
    blockSeconds: 60,
    serverIds: Uint32Array.from(ss, (_, j) => j * 7 + 1),
    serversOmitted: 0,
    entries: 'values',
    aggregates: null,
    pointStart,
    pointSecs: Uint16Array.from(secs),
    pointVals: Float64Array.from(vals),
    distStart,
    dist: summaries(dsecs, sketch),
    rollup: summaries([0, 5, 59], sketch),
    rollupFrom: 0,
    rollupTo: 3,
  };
}

/** Servers 0..99 marked by `keep` (the row tests use ids below 100). */
const bitmap = (keep: (sid: number) => boolean) => Uint8Array.from({ length: 100 }, (_, sid) => (keep(sid) ? 1 : 0));

/** Servers 0..1099 marked by `keep` (dense rows use ids firstId .. firstId + 39). */
const bitmap100 = (keep: (sid: number) => boolean, firstId: number) => Uint8Array.from({ length: 1100 }, (_, sid) => (sid >= firstId && sid < firstId + 40 && keep(sid) ? 1 : 0));

/** Bytes of one series through the value codec alone, with the row's habit (its first values' series' choices). */
function seriesBytes(vals: number[], first: number[]): number {
  let n = 0;
  writeSeries({ bytes: (_src, start, end) => void (n += end - start) }, Float64Array.from(vals), 0, vals.length, seriesHabit(Float64Array.from(first), 0, first.length));
  return n;
}

/** 1..40 servers, each with a value at every one of 60 seconds. */
const denseArb = fc.array(fc.array(value, { minLength: 60, maxLength: 60 }), { minLength: 1, maxLength: 40 });

/** A dense row: servers firstId, firstId + 1, … (a rack's run of ids), no summaries, no rollup. */
function denseRow(vals: number[][], firstId: number): RowInput {
  const n = vals.length;
  return {
    kind: 0,
    blockSeconds: 60,
    serverIds: Uint32Array.from(vals, (_, j) => firstId + j),
    serversOmitted: 0,
    entries: 'values',
    aggregates: null,
    pointStart: Int32Array.from({ length: n + 1 }, (_, j) => 60 * j),
    pointSecs: Uint16Array.from({ length: 60 * n }, (_, i) => i % 60),
    pointVals: Float64Array.from(vals.flat()),
    distStart: new Int32Array(n + 1),
    dist: summaries([], sketch),
    rollup: summaries([], sketch),
    rollupFrom: 0,
    rollupTo: 0,
  };
}

/** Plain columns of a row, for comparison (-0 read as 0: the value codec stores 0). */
function plain(row: DecodedRow) {
  const d = row.dist;
  return {
    serverIds: Array.from(row.serverIds),
    serversOmitted: row.serversOmitted,
    pointStart: Array.from(row.pointStart),
    pointSecs: Array.from(row.pointSecs),
    pointVals: Array.from(row.pointVals, noZero),
    distStart: Array.from(row.distStart),
    dist: [Array.from(d.secs), Array.from(d.count), Array.from(d.sum), Array.from(d.min), Array.from(d.max)],
    sketches: d.sketchSrc.map((src, i) => Array.from(src.subarray(d.sketchStart[i], d.sketchEnd[i]))),
    rollup: [Array.from(row.rollup.secs), Array.from(row.rollup.count)],
    rollupSketches: row.rollup.sketchSrc.map((src, i) => Array.from(src.subarray(row.rollup.sketchStart[i], row.rollup.sketchEnd[i]))),
  };
}

describe('storage row encoding (version 5)', () => {
  it('round-trips any servers, seconds and values exactly', () => {
    fc.assert(
      fc.property(serversArb, (ss) => {
        const input = rowOf(ss);
        const stored = encodeRow(input);
        expect(stored[0]).toBe(rowV5Marker);
        expect(Array.from(rowServerIds(stored))).toEqual(Array.from(input.serverIds));
        const row = decodeRow(stored);
        expect(plain(row)).toEqual(plain(input));
        expect(row.entries).toBe('values');
      }),
      { numRuns: 300 },
    );
  });

  it('decodes a subset of servers as the full decode filtered', () => {
    fc.assert(
      fc.property(serversArb, fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }), (ss, pick) => {
        const stored = encodeRow(rowOf(ss));
        const keep = (sid: number) => pick[(sid - 1) / 7]!;
        expect(plain(decodeRow(stored, { servers: bitmap(keep) }))).toEqual(plain(selectServers(decodeRow(stored), keep)));
      }),
      { numRuns: 300 },
    );
  });

  it('decodes into reused columns (RowScratch) as into new ones, row after row, whole, by server and as seconds only', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.oneof(serversArb.map((ss) => rowOf(ss)), denseArb.map((v) => denseRow(v, 1))), fc.array(fc.boolean(), { minLength: 41, maxLength: 41 }), fc.constantFrom(undefined, 5, 60)), { minLength: 1, maxLength: 8 }), (rows) => {
        const scratch = new RowScratch();
        for (const [input, pick, secondsOnlyFor] of rows) {
          const stored = encodeRow(input);
          const servers = pick[40] ? undefined : bitmap((sid) => pick[sid % 40]!);
          // The scratch's row is compared before the next decode overwrites it.
          expect(plain(decodeRow(stored, { servers, secondsOnlyFor, scratch }))).toEqual(plain(decodeRow(stored, { servers, secondsOnlyFor })));
        }
      }),
      { numRuns: 200 },
    );
  });

  it('stores aggregates per 5 s over every server (rows of ≥ 4), equal to those of the decoded row', () => {
    fc.assert(
      fc.property(serversArb, (ss) => {
        const stored = encodeRow(rowOf(ss));
        const row = decodeRow(stored);
        const want = rowAggregates(row);
        if (ss.length < 4) expect(row.aggregates).toBeNull();
        else {
          const a = row.aggregates!;
          expect(want).not.toBeNull();
          expect(a.span).toBe(5);
          // Bit for bit (Object.is): the same additions in the same order.
          for (const k of ['secs', 'count', 'sum', 'min', 'max'] as const) expect(Array.from(a[k], noZero)).toEqual(Array.from(want![k], noZero));
        }
      }),
      { numRuns: 300 },
    );
  });

  it('aggregates a span as its seconds: counts, min and max of its entries, the sum of each second\'s sum over the servers in order', () => {
    fc.assert(
      fc.property(serversArb, (ss) => {
        const row = decodeRow(encodeRow(rowOf(ss)));
        const a = rowAggregates(row);
        const bySecond = new Map<number, { count: number; sum: number; min: number; max: number }>();
        const add = (s: number, count: number, sum: number, lo: number, hi: number) => {
          const e = bySecond.get(s) ?? { count: 0, sum: 0, min: Infinity, max: -Infinity };
          bySecond.set(s, { count: e.count + count, sum: e.sum + sum, min: Math.min(e.min, lo), max: Math.max(e.max, hi) });
        };
        for (let j = 0; j < row.serverIds.length; j++) {
          for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) add(row.pointSecs[i]!, 1, row.pointVals[i]!, row.pointVals[i]!, row.pointVals[i]!);
          for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) add(row.dist.secs[i]!, row.dist.count[i]!, row.dist.sum[i]!, row.dist.min[i]!, row.dist.max[i]!);
        }
        const spans: number[][] = [];
        for (let s0 = 0; s0 < 60; s0 += 5) {
          const seconds = [...bySecond.keys()].filter((s) => s >= s0 && s < s0 + 5).sort((x, y) => x - y);
          if (seconds.length === 0) continue;
          let sum = 0;
          for (const s of seconds) sum += bySecond.get(s)!.sum;
          const es = seconds.map((s) => bySecond.get(s)!);
          spans.push([s0, es.reduce((x, e) => x + e.count, 0), sum, Math.min(...es.map((e) => e.min)), Math.max(...es.map((e) => e.max))]);
        }
        if (bySecond.size === 0) expect(a).toBeNull();
        else expect([0, 1, 2, 3, 4].map((c) => Array.from([a!.secs, a!.count, a!.sum, a!.min, a!.max][c]!, noZero))).toEqual([0, 1, 2, 3, 4].map((c) => spans.map((x) => noZero(x[c]!))));
      }),
      { numRuns: 200 },
    );
  });

  it('refuses a version 4 row whose aggregates claim another span than 5 s (their sums would not match the values path)', () => {
    const all = Array.from({ length: 60 }, (_, s) => s);
    const stored = encodeRow(rowOf([1, 2, 3, 4].map((k) => [all, all.map((s) => s * k + 0.1), false] as [number[], number[], boolean])));
    expect(decodeRow(stored).aggregates!.span).toBe(5);
    // The aggregates' section follows the head: its varint length, then the span byte.
    const at = rowParts(stored).head + 1;
    expect(stored[at]).toBe(5);
    for (const span of [1, 10, 60]) {
      const bad = stored.slice();
      bad[at] = span;
      expect(() => decodeRow(bad), `span ${span}`).toThrow(RowError);
    }
  });

  it('decodes only the seconds of entries when asked and the aggregates answer the window', () => {
    fc.assert(
      fc.property(serversArb, fc.boolean(), fc.constantFrom(1, 5, 7, 10, 60), (ss, some, window) => {
        const stored = encodeRow(rowOf(ss));
        const full = decodeRow(stored);
        const keep = some ? (sid: number) => sid !== 1 : undefined;
        const row = decodeRow(stored, { servers: keep === undefined ? undefined : bitmap(keep), secondsOnlyFor: window });
        // Only a whole row with aggregates skips values (server 1 is in every row: `some` leaves it
        // out), and only for windows its spans of 5 s divide.
        const skips = full.aggregates !== null && keep === undefined && window % 5 === 0;
        expect(row.entries).toBe(skips ? 'seconds' : 'values');
        const want = keep === undefined ? full : selectServers(full, keep);
        expect([Array.from(row.serverIds), Array.from(row.pointStart), Array.from(row.pointSecs), Array.from(row.distStart), Array.from(row.dist.secs)]).toEqual([
          Array.from(want.serverIds),
          Array.from(want.pointStart),
          Array.from(want.pointSecs),
          Array.from(want.distStart),
          Array.from(want.dist.secs),
        ]);
        if (skips) expect(row.pointVals.length).toBe(0);
      }),
      { numRuns: 200 },
    );
  });

  it('writes dense rows (every server at every second, no summaries) as bare series: ids, directory, habit and segment headers under 0.3 B per server (version 2: 4–5 B)', () => {
    // A rack of 40 servers whose series look alike (2-decimal walks): the directory's lengths
    // differ little, and the whole head stays under 0.3 B a server beyond its fixed bytes.
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const walks = Array.from({ length: 40 }, () => {
      let v = Math.round(rand() * 10000) / 100;
      return Array.from({ length: 60 }, () => (v = Math.round((v + (rand() - 0.5) * 4) * 100) / 100));
    });
    expect(rowParts(encodeRow(denseRow(walks, 200))).head).toBeLessThanOrEqual(3 + 2 + 0.3 * 40 + 12 + 3);
    fc.assert(
      fc.property(denseArb, fc.integer({ min: 0, max: 1000 }), fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }), (vals, firstId, pick) => {
        const input = denseRow(vals, firstId);
        const stored = encodeRow(input);
        const n = vals.length;
        expect(plain(decodeRow(stored))).toEqual(plain(input));
        const parts = rowParts(stored);
        // Segments are the values' series alone, under the habit of the first.
        const lengths = vals.map((v) => seriesBytes(v, vals[0]!));
        expect(parts.segments).toBe(lengths.reduce((a, b) => a + b, 0));
        // A rack's run of ids (2 B), the habit (3 B) and the segment lengths through the value
        // codec: bit-packed deltas, so bounded by their spread — arbitrary series (a raw one
        // beside a constant) differ by hundreds of bytes and cost ~11 bits a server; a fixed
        // 0.3 B a server held only for look-alike series and failed at random (22 B for 4).
        const spread = Math.max(...lengths) - Math.min(...lengths);
        expect(parts.head).toBeLessThanOrEqual(3 + 2 + 3 + 12 + Math.ceil((n * Math.ceil(Math.log2(2 * spread + 1))) / 8));
        const keep = (sid: number) => pick[sid - firstId]!;
        expect(plain(decodeRow(stored, { servers: bitmap100(keep, firstId) }))).toEqual(plain(selectServers(decodeRow(stored), keep)));
        const seconds = decodeRow(stored, { secondsOnlyFor: 5 });
        expect([seconds.entries, Array.from(seconds.pointSecs), Array.from(seconds.pointStart)]).toEqual([n >= 4 ? 'seconds' : 'values', Array.from(input.pointSecs), Array.from(input.pointStart)]);
      }),
      { numRuns: 200 },
    );
  });

  it('marks a part present at every second in its segment\'s flags (no presence byte, no bitmap)', () => {
    // Server 1 every second, server 8 at three seconds: one flag byte each, and a bitmap for server 8 only.
    const stored = encodeRow(rowOf([[Array.from({ length: 60 }, (_, s) => s), new Array<number>(60).fill(2), false], [[0, 7, 59], new Array<number>(60).fill(3), false]]));
    const first = new Array<number>(60).fill(2);
    const series = seriesBytes(first, first) + seriesBytes([3, 3, 3], first);
    expect(rowParts(stored).segments).toBe(series + 2 + 8);
  });

  it('refuses a corrupt or truncated row with RowError', () => {
    expect(() => decodeRow(Uint8Array.of(1, 2, 3))).toThrow(RowError);
    const stored = encodeRow(rowOf([[[0, 1, 2], new Array<number>(60).fill(1.5), true], [[5], new Array<number>(60).fill(2), false]]));
    for (let cut = 1; cut < stored.length; cut++) expect(() => decodeRow(stored.subarray(0, cut)), `cut at ${cut}`).toThrow(RowError);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: stored.length - 1 }), fc.integer({ min: 0, max: 255 }), (at, b) => {
        const bad = stored.slice();
        bad[at] = b;
        try {
          decodeRow(bad);
        } catch (err) {
          expect(err).toBeInstanceOf(RowError);
        }
      }),
    );
  });
});

describe('storage row CRC (version 5)', () => {
  const input = rowOf([[[0, 1, 2, 59], new Array<number>(60).fill(1.5), true], [[5, 6], [2.25, -3], false], [[7], new Array<number>(60).fill(4), true]]);
  const stored = encodeRow(input);

  it('refuses a row with any byte changed after the marker, or its trailer, with RowError (before, version 4: most such rows decoded, as other values)', () => {
    expect(rowParts(stored).crc).toBe(4);
    for (let at = 1; at < stored.length; at++) {
      for (const flip of [0x01, 0x80, 0xff]) {
        const bad = stored.slice();
        bad[at]! ^= flip;
        expect(() => decodeRow(bad), `byte ${at} ^ ${flip}`).toThrow(RowError);
        expect(() => decodeRow(bad, { servers: bitmap((sid) => sid === input.serverIds[1]), scratch: new RowScratch() }), `byte ${at} ^ ${flip}, one server`).toThrow(RowError);
        expect(() => decodeRow(bad, { secondsOnlyFor: 5 }), `byte ${at} ^ ${flip}, seconds only`).toThrow(RowError);
        expect(() => rowServerIds(bad), `byte ${at} ^ ${flip}, server ids`).toThrow(RowError);
      }
    }
  });

  it('checks the CRC of bytes decoded with a kept header unless the caller says these very bytes passed it (review: a kept header turned the check off for the row read again from the disk)', () => {
    const slot = { header: null };
    const servers = bitmap((sid) => sid === input.serverIds[0]);
    expect(decodeRow(stored, { header: slot, servers }).serverIds.length).toBe(1);
    expect(slot.header).not.toBeNull();
    // The same row read again from the disk, one bit of its last server's values changed since.
    const bad = stored.slice();
    bad[bad.length - 6]! ^= 0x04;
    expect(() => decodeRow(bad, { header: slot, servers })).toThrow(/CRC-32 does not match/);
    expect(() => decodeRow(bad, { header: slot, servers, checked: false })).toThrow(/CRC-32 does not match/);
    // The bytes the header was read from, kept in memory: not checked again.
    expect(decodeRow(stored, { header: slot, servers, checked: true }).serverIds.length).toBe(1);
  });

  it('reads a version 4 row (no CRC) as before', () => {
    const v4 = stored.slice(0, stored.length - 4);
    v4[0] = rowV4Marker;
    expect(plain(decodeRow(v4))).toEqual(plain(decodeRow(stored)));
    expect(Array.from(rowServerIds(v4))).toEqual(Array.from(input.serverIds));
    expect(rowParts(v4).crc).toBe(0);
    const slot = { header: null };
    const last = input.serverIds[2]!;
    expect(plain(decodeRow(v4, { header: slot, servers: bitmap((sid) => sid === last) }))).toEqual(plain(selectServers(decodeRow(stored), (sid) => sid === last)));
    expect(slot.header).not.toBeNull();
  });
});

/** Seconds and values of the version 2 and 3 fixtures below (servers 2 and 40 every second). */
const all = Array.from({ length: 60 }, (_, s) => s);
const wave = all.map((i) => Math.round((50 + 10 * Math.sin(i)) * 100) / 100);

describe('storage row encoding (version 2, as data directories hold it)', () => {
  // Written by the version 2 encoder (commit 47f0cd3), kind 2: servers 2 (every second, 2
  // decimals), 3 (seconds 0, 7, 59: raw doubles), 5 (every second, 3·s, and a summary at second
  // 3), 9 (a summary at second 10 only), 40 (every second, 1000 − s); a rollup at 0, 5, 59.
  const v2 =
    'FgI8BQIBAgQfWSMuKQecBwEBgMHAggBioCOU3QN3WAIwARgsAZgA3oJfwgf9WQeAyENe4NtZB4DIQ/7gGwAAAAAAMAAQAAAA' +
    'AADwARgAAAAAAEgGGAAAAAAAKAAQAAAAAAAYABAAAAAAAGgAEAAAAAAAOADwgx+F61G4Hu7ibr311lvfa+qpp556aDZ/FK5H' +
    '4fpzcT0K16NQlP//////L7TJJptssl1FFllkkcVwPfXUU0+90FtvvfXWC2fqqaeeekjlcMMNN1xEM/XUU0+dV/XUU089/RdS' +
    'SCGFFBrRW2+99dZLmm666aY7XbgehetRcFW4HoXrUVplk0022eR1VlhhhRXWkpBNNtlkczRTTz311PulsMIKK6xeyCGHHHJo' +
    'keONN954I+WRRx555MV100033fRCAAAAAADAnU022WSTFSXyyCOPPAxxww033HBQNtlkk022nBRSSCGFRKSQQgoppDitk046' +
    '6aRvFVtsscW2Eb311ltvxfWmm2666cxRuB6F69FIpHA9CtdjksINN9xwU5dHHnnkkW2HPmhfgvYlivkHwQJ9QQABAgAXIqr9' +
    'kHSQQDtqA5020FqSQAMAAAAAAAAAiOtRuB6NhAR6FK5H4eKEBIrrUbgevYQE+ihcj8JNgwSK61G4Hk2DBCKF61G4ZoQE4qwD' +
    'QOQhv/EfrkfhenyGBKJwPQrXA4YEUrgehevxhgQCAAAAAMCEBGKPwvUolIUEamZmZmYGhwSK61G4Hv2HBAIAAAAA0IcEonA9' +
    'CtfjhgQarkfhekyGBErhehSuz4YEAgAAAAAwiARij8L1KGSJBKJwPQrXi4kEiutRuB69iATiehSuR/GHBLJH4XoUHogE+ihc' +
    'j8JViQRij8L1KLSKBFK4HoXrMYsEIoXrUbiWigTqUbgehauJBKJwPQrXg4kEIoXrUbh+igS6HoXrUfCLBAIAAAAAwIwE4noU' +
    'rkdpjATao3A9CneLBML1KFyPAosEUrgeheuxiwQihetRuB6NBBquR+F6NI4EamZmZmYujgSK61G4Hk2NBML1KFyPmowE+ihc' +
    'j8L1jAT6KFyPwkWOBLoehetRkI8Ecj0K16PgjwRK4XoUriePBArXo3A9So4EIoXrUbhOjgRij8L1KGyPBGpmZmZm1pAEonA9' +
    'Ctd7kQQihetRuP6QBIrrUbgeDZAEAgAAAADAjwQqXI/C9ZiQBOpRuB6FC5IE+ihcj8L9kgT6KFyPwv2SBAKAYFAI/v//v//+' +
    '/7ubB2YCIQAAAAAAAAgBAAAAAAAAAAAAAAAAAAAAgAAAAAAAAAAABQAAAQIBBgAAAAAAAB5AAAAAAAAAFMAAAAAAAAAkQAUA' +
    'AAECATwAAAAAACBWQAAAAAAAgE3AAAAAAACAXUAFAAABAgEBAYgG6C/QF/O613EeKYhWnotPWOQA4DmMPb6ckXWCfPgx7y3/' +
    'nia8QLZxk/6eUGEAlR4M/fzyCAFkgSjro520KaBCfzt3OxnR4QJxGXr4dM0NALzD2eSXGQECgQAAAAAAAAjDaCGi2g9JAOKs' +
    'A0DkIb/xr6qqqqqqqv4BAwEBYDAAAggAAAAAAAAABAAAAAAAABJAAAAAAAAACMAAAAAAAAAYQAUAAAECAQICAAQAAAAAAAAL' +
    'AAAAAAAALkAAAAAAAAAkwAAAAAAAADRABQAAAQIBAQHBAn1BAA==';

  it('still decodes, whole, by server and as seconds only, with its aggregates', () => {
    const stored = Buffer.from(v2, 'base64');
    expect(stored[0]).toBe(0x16);
    const row = decodeRow(stored);
    expect(plain(row)).toMatchObject({
      serverIds: [2, 3, 5, 9, 40],
      serversOmitted: 0,
      pointStart: [0, 60, 63, 123, 123, 183],
      pointVals: [...wave, Math.PI, -1e300, 1 / 3, ...all.map((s) => s * 3), ...all.map((s) => 1000 - s)],
      distStart: [0, 0, 0, 1, 2, 2],
      dist: [[3, 10], [4, 11], [4.5, 15], [-3, -10], [6, 20]],
      rollup: [[0, 5, 59], [1, 6, 60]],
    });
    expect(Array.from(rowServerIds(stored))).toEqual([2, 3, 5, 9, 40]);
    const want = rowAggregates(row, 1)!;
    for (const k of ['secs', 'count', 'sum', 'min', 'max'] as const) expect(Array.from(row.aggregates![k], noZero)).toEqual(Array.from(want[k], noZero));
    const keep = (sid: number) => sid === 3 || sid === 9;
    expect(plain(decodeRow(stored, { servers: bitmap(keep) }))).toEqual(plain(selectServers(row, keep)));
    // Per-second aggregates answer any window.
    expect(row.aggregates!.span).toBe(1);
    const seconds = decodeRow(stored, { secondsOnlyFor: 7 });
    expect([seconds.entries, Array.from(seconds.pointSecs), Array.from(seconds.dist.secs)]).toEqual(['seconds', Array.from(row.pointSecs), [3, 10]]);
    // Written again (a merge of late data), it becomes version 5 with the same content.
    const again = encodeRow({ ...row, rollupFrom: 0, rollupTo: row.rollup.secs.length });
    expect(again[0]).toBe(rowV5Marker);
    expect(plain(decodeRow(again))).toEqual(plain(row));
  });
});

describe('storage row encoding (version 3, as data directories hold it)', () => {
  // Written by the version 3 encoder (commit ec61424): the content of the version 2 row above,
  // with aggregates per second.
  const v3 =
    'JgI8BcCBwwAxfwYAgg9SjkkEAACcBwEBgMHAggBioCOU3QN3WAIwARgsAZgA3oJfwgf9WQeAyENe4NtZB4DIQ/7gGwAAAAAAMAAQ' +
    'AAAAAADwARgAAAAAAEgGGAAAAAAAKAAQAAAAAAAYABAAAAAAAGgAEAAAAAAAOADwgx+F61G4Hu7ibr311lvfa+qpp556aDZ/FK5H' +
    '4fpzcT0K16NQlP//////L7TJJptssl1FFllkkcVwPfXUU0+90FtvvfXWC2fqqaeeekjlcMMNN1xEM/XUU0+dV/XUU089/RdSSCGF' +
    'FBrRW2+99dZLmm666aY7XbgehetRcFW4HoXrUVplk0022eR1VlhhhRXWkpBNNtlkczRTTz311PulsMIKK6xeyCGHHHJokeONN954' +
    'I+WRRx555MV100033fRCAAAAAADAnU022WSTFSXyyCOPPAxxww033HBQNtlkk022nBRSSCGFRKSQQgoppDitk0466aRvFVtsscW2' +
    'Eb311ltvxfWmm2666cxRuB6F69FIpHA9CtdjksINN9xwU5dHHnnkkW2HPmhfgvYlivkHwQJ9QQABAgAXIqr9kHSQQDtqA5020FqS' +
    'QAMAAAAAAAAAiOtRuB6NhAR6FK5H4eKEBIrrUbgevYQE+ihcj8JNgwSK61G4Hk2DBCKF61G4ZoQE4qwDQOQhv/EfrkfhenyGBKJw' +
    'PQrXA4YEUrgehevxhgQCAAAAAMCEBGKPwvUolIUEamZmZmYGhwSK61G4Hv2HBAIAAAAA0IcEonA9CtfjhgQarkfhekyGBErhehSu' +
    'z4YEAgAAAAAwiARij8L1KGSJBKJwPQrXi4kEiutRuB69iATiehSuR/GHBLJH4XoUHogE+ihcj8JViQRij8L1KLSKBFK4HoXrMYsE' +
    'IoXrUbiWigTqUbgehauJBKJwPQrXg4kEIoXrUbh+igS6HoXrUfCLBAIAAAAAwIwE4noUrkdpjATao3A9CneLBML1KFyPAosEUrge' +
    'heuxiwQihetRuB6NBBquR+F6NI4EamZmZmYujgSK61G4Hk2NBML1KFyPmowE+ihcj8L1jAT6KFyPwkWOBLoehetRkI8Ecj0K16Pg' +
    'jwRK4XoUriePBArXo3A9So4EIoXrUbhOjgRij8L1KGyPBGpmZmZm1pAEonA9Ctd7kQQihetRuP6QBIrrUbgeDZAEAgAAAADAjwQq' +
    'XI/C9ZiQBOpRuB6FC5IE+ihcj8L9kgT6KFyPwv2SBAKAYFAI/v//v//+/7ubB2YCIQAAAAAAAAgBAAAAAAAAAAAAAAAAAAAAgAAA' +
    'AAAAAAAABQAAAQIBBgAAAAAAAB5AAAAAAAAAFMAAAAAAAAAkQAUAAAECATwAAAAAACBWQAAAAAAAgE3AAAAAAACAXUAFAAABAgEF' +
    'iAboL9AX87rXcR4piFaei09Y5ADgOYw9vpyRdYJ8+DHvLf+eJrxAtnGT/p5QYQCVHgz9/PIIAWSBKOujnbQpoEJ/O3c7GdHhAnEZ' +
    'evh0zQ0AvMPZ5JcZAYEAAAAAAAAIw2ghotoPSQDirANA5CG/8a+qqqqqqqr+AQcBYDAACAAAAAAAAAAEAAAAAAAAEkAAAAAAAAAI' +
    'wAAAAAAAABhABQAAAQIBAgAEAAAAAAAACwAAAAAAAC5AAAAAAAAAJMAAAAAAAAA0QAUAAAECAQXBAn1BAA==';

  it('still decodes, whole, by server and as seconds only for any window, with per-second aggregates', () => {
    const stored = Buffer.from(v3, 'base64');
    expect(stored[0]).toBe(rowV3Marker);
    const row = decodeRow(stored);
    expect(plain(row)).toMatchObject({
      serverIds: [2, 3, 5, 9, 40],
      pointStart: [0, 60, 63, 123, 123, 183],
      pointVals: [...wave, Math.PI, -1e300, 1 / 3, ...all.map((s) => s * 3), ...all.map((s) => 1000 - s)],
      dist: [[3, 10], [4, 11], [4.5, 15], [-3, -10], [6, 20]],
      rollup: [[0, 5, 59], [1, 6, 60]],
    });
    const a = row.aggregates!;
    expect(a.span).toBe(1);
    expect(Array.from(a.secs)).toEqual(all);
    // Second 3: servers 2, 5 (a point and a summary of count 4, sum 4.5) and 40, added in that order.
    expect([a.count[3], a.sum[3], a.min[3], a.max[3]]).toEqual([7, wave[3]! + 9 + 4.5 + 997, -3, 997]);
    const keep = (sid: number) => sid === 3 || sid === 40;
    expect(plain(decodeRow(stored, { servers: bitmap(keep) }))).toEqual(plain(selectServers(row, keep)));
    for (const window of [1, 7]) expect(decodeRow(stored, { secondsOnlyFor: window }).entries).toBe('seconds');
    const again = encodeRow({ ...row, rollupFrom: 0, rollupTo: row.rollup.secs.length });
    expect(again[0]).toBe(rowV5Marker);
    const back = decodeRow(again);
    expect(plain(back)).toEqual(plain(row));
    expect(back.aggregates!.span).toBe(5);
  });
});

describe('storage row encoding (version 1, as data directories hold it)', () => {
  // Written by the version 1 encoder (commit 488178e): servers 3 (every second, 2 decimals), 9
  // (seconds 0, 7, 59: raw doubles), 12 (one summary at second 3); a rollup at 0, 5, 59.
  const v1 =
    'Y2SwYWZmY2Z0OmD3gn0j31e+rxyfGTUvsv7kOcrfwn2CmeE8cw/3cf5PPCdY1X8y/uP4ybeW7z77LMa4J2yPeZfwf+e8wMRzhaWf5wL/T+49LBxPmCZwreG/yHuSLXgF4y/23Xzv+J5wvGDUe8TaxnuY/wvXTmaGe8xzuE/yP+VhYGpkAAOO/xK6LiG/FTkd5pQydNg8Mf8XCgZX7RkYmDggahhYIJSQA1TPAQgt4cDKwMDIxMikCBVnZEAFDTAGRB0bhCMHNUYEaowK1BgbME8hDCLd4AuRboiFSgMA';
  const v3 = Array.from({ length: 60 }, (_, i) => Math.round((50 + 10 * Math.sin(i)) * 100) / 100);

  it('still decodes, whole and by server', () => {
    const stored = Buffer.from(v1, 'base64');
    const row = decodeRow(stored);
    expect(plain(row)).toMatchObject({
      serverIds: [3, 9, 12],
      serversOmitted: 0,
      pointStart: [0, 60, 63, 63],
      pointVals: [...v3, Math.PI, -1e300, 1 / 3],
      distStart: [0, 0, 0, 1],
      dist: [[3], [4], [4.5], [-3], [6]],
      rollup: [[0, 5, 59], [1, 6, 60]],
    });
    expect(row.aggregates).toBeNull();
    const some = decodeRow(stored, { servers: bitmap((sid) => sid === 9), secondsOnlyFor: 5 });
    expect(plain(some)).toMatchObject({ serverIds: [9], serversOmitted: 2, pointSecs: [0, 7, 59], pointVals: [Math.PI, -1e300, 1 / 3] });
    // Written again (a merge of late data), it becomes version 4 with the same content.
    const again = decodeRow(encodeRow({ ...row, rollupFrom: 0, rollupTo: row.rollup.secs.length }));
    expect(plain(again)).toEqual(plain(row));
  });
});

describe('version-1 rows, corrupt', () => {
  it('regression: a row claiming more servers than its bytes can hold, or ids not ascending, or inflating past the bound, is refused before its columns are made (2.9 KB claiming 1,000,000 servers allocated 2.6 GB)', () => {
    const varint = (n: number) => {
      const out: number[] = [];
      while (n >= 0x80) {
        out.push((n & 0x7f) | 0x80);
        n = Math.floor(n / 128);
      }
      out.push(n);
      return out;
    };
    const v1 = (body: number[], pad = 0) => new Uint8Array(deflateRawSync(Buffer.concat([Buffer.from(body), Buffer.alloc(pad)])));
    expect(() => decodeRow(v1([1, 1, 255, ...varint(1_000_000)], 1_900_000))).toThrow(/servers in a row of/);
    expect(() => decodeRow(v1([1, 1, 255, ...varint(1_000_000)], 3_000_000))).toThrow(/not ascending/);
    expect(() => decodeRow(v1([1, 1, 60, 2, 5, 0, 0, 0]))).toThrow(/not ascending/);
    expect(() => decodeRow(v1([1, 1, 60, 0], 40 * 1024 * 1024))).toThrow(/inflates past the bound/);
  });
});
