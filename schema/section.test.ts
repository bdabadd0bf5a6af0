import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { crc32 } from 'node:zlib';
import { decodeFrame, Encoder, FrameArena, KindCode, nameAt, type Message } from './codec.js';
import { batchBytesMax, rollupServer, sectionNamesMax } from './limits.js';
import { hashName } from './names.js';
import { encodeRackSecond, encodeShardSection, rackSecondBody, sectionAt, SectionCutter, shardOf, type ShardSectionMessage } from './section.js';
import { buildColumns } from './testdata.js';

function decodeOk(frame: Uint8Array): Message {
  const r = decodeFrame(frame, batchBytesMax);
  if (!r.ok) throw new Error(`${r.reason}: ${r.detail}`);
  return r.msg;
}

const header = { rack: 'r1', session: 7, seq: 42, second: 1_790_000_000, late: false };

/** Every (metric name, server, value) a decoded body holds, sorted. */
function pointsOf(body: Uint8Array): string[] {
  const m = decodeOk(body);
  if (m.type !== 'rackSecond') throw new Error('not a RackSecond');
  const out: string[] = [];
  for (let i = 0; i < m.sectionShards.length; i++) {
    const s = decodeOk(sectionAt(m, i).slice()) as ShardSectionMessage;
    expect(s.shard).toBe(m.sectionShards[i]);
    expect(s).toMatchObject({ ...header, shards: m.shards });
    for (let k = 0; k < s.pointEnds.length; k++) {
      expect(shardOf(s.pointHashes[2 * k]!, s.shards)).toBe(s.shard);
      for (let e = k === 0 ? 0 : s.pointEnds[k - 1]!; e < s.pointEnds[k]!; e++) out.push(`${s.pointHashes[2 * k]}/${s.servers[s.pointServers[e]!]}/${s.pointValues[e]}`);
    }
  }
  return out.sort();
}

/** 30 servers, each with a gauge `small` (its index) and a distribution `wide` whose sketch takes ~600 B. */
function wideServers() {
  return Array.from({ length: 30 }, (_, j) => ({
    server: `wide-${j}`,
    blocks: [buildColumns([{ name: 'small', kind: KindCode.Gauge as const, value: j }], [{ name: 'wide', values: Array.from({ length: 200 }, (_, v) => 1.07 ** v + j) }])],
  }));
}

/** Every section of `bodies` in order, each checked to be within `sectionBytesMax`. */
function sectionsOf(bodies: readonly { bytes: Uint8Array }[], sectionBytesMax: number): ShardSectionMessage[] {
  const out: ShardSectionMessage[] = [];
  for (const b of bodies) {
    const m = decodeOk(b.bytes);
    if (m.type !== 'rackSecond') throw new Error('not a RackSecond');
    for (let i = 0; i < m.sectionShards.length; i++) {
      expect(sectionAt(m, i).length).toBeLessThanOrEqual(sectionBytesMax);
      out.push(decodeOk(sectionAt(m, i).slice()) as ShardSectionMessage);
    }
  }
  return out;
}

/** The one section of a body that holds one. */
function soleSection(body: Uint8Array): ShardSectionMessage {
  const m = decodeOk(body);
  if (m.type !== 'rackSecond') throw new Error('not a RackSecond');
  expect(m.sectionShards.length).toBe(1);
  return decodeOk(sectionAt(m, 0).slice()) as ShardSectionMessage;
}

describe('shard sections (rack → core v2)', () => {
  it('every point lands once, in its metric’s shard, with its server and value (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 6 }), fc.array(fc.array(fc.tuple(fc.integer({ min: 0, max: 30 }), fc.double({ noNaN: true, noDefaultInfinity: true })), { maxLength: 20 }), { minLength: 1, maxLength: 6 }), (log2S, perServer) => {
        const shards = 2 ** log2S;
        const servers = perServer.map((pts, j) => {
          const seen = new Set<number>();
          const points = pts.filter(([m]) => !seen.has(m) && seen.add(m)).map(([m, v]) => ({ name: `m.${m}`, kind: KindCode.Gauge as const, value: v }));
          return { server: `s-${j}`, blocks: [buildColumns(points, [])] };
        });
        const want: string[] = [];
        servers.forEach((s) => {
          const c = s.blocks[0]!;
          for (let i = 0; i < c.pointValues.length; i++) want.push(`${c.pointHashes[2 * i]}/${s.server}/${c.pointValues[i]}`);
        });
        const body = rackSecondBody({ ...header, shards, servers, rollup: buildColumns([], []) });
        expect(pointsOf(body)).toEqual(want.sort());
      }),
      { numRuns: 200 },
    );
  });

  it('one cutter, second after second: each body (sections written in reused memory) equals one built from fresh frames, and stays intact', () => {
    const cutter = new SectionCutter(1 << 12);
    const inputs = [3, 40, 1, 25].map((servers, k) => ({
      ...header,
      seq: k + 1,
      shards: 8,
      servers: Array.from({ length: servers }, (_, j) => ({
        server: `web-${j}`,
        blocks: [buildColumns(Array.from({ length: 50 + 20 * k }, (_, i) => ({ name: `m.${i}`, kind: KindCode.Gauge as const, value: i * 1.5 + j + k })), k % 2 === 0 ? [{ name: 'lat', values: [j, j + 1, 2.5] }] : [])],
      })),
      rollup: buildColumns([], [], ['m.0']),
    }));
    const want = inputs.map((input) => encodeRackSecond(new Encoder(), input, new SectionCutter(1 << 12).cut(input), input.servers.map((s) => s.server)));
    const bodies = inputs.map((input) => cutter.body(input));
    bodies.forEach((b, k) => expect(Buffer.from(b).equals(Buffer.from(want[k]!))).toBe(true));
  });

  it('FrameArena: frames start 8-byte aligned, and views taken before it grows keep their bytes', () => {
    const arena = new FrameArena();
    const first = arena.take(13);
    first.fill(7);
    const big = arena.take(200_000);
    big.fill(9);
    expect(first.byteOffset % 8).toBe(0);
    expect(big.byteOffset % 8).toBe(0);
    expect([...first]).toEqual(new Array(13).fill(7));
    const third = arena.take(5);
    expect(third.byteOffset % 8).toBe(0);
    arena.reset();
    expect(arena.take(8).byteOffset).toBe(0);
  });

  it('distributions carry every server’s summary, then the rollup; gauge rollups are not sent; names go to their shard', () => {
    const a = buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 1 }], [{ name: 'lat', values: [1, 2, 3] }]);
    const b = buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 2 }], [{ name: 'lat', values: [10] }]);
    const rollup = buildColumns([], [{ name: 'lat', values: [1, 2, 3, 10] }, { name: 'cpu', values: [1, 2] }], ['lat', 'cpu']);
    rollup.distKinds[1] = KindCode.Gauge;
    const cutter = new SectionCutter(1024);
    const sections = cutter.cut({ ...header, shards: 1, servers: [{ server: 'a', blocks: [a] }, { server: 'b', blocks: [b] }], rollup });
    expect(sections).toHaveLength(1);
    const s = decodeOk(sections[0]!.frame) as ShardSectionMessage;
    expect(Array.from(s.distServers)).toEqual([0, 1, rollupServer]);
    expect(Array.from(s.distCounts)).toEqual([3, 1, 4]);
    expect(Array.from(s.pointServers)).toEqual([0, 1]);
    expect([nameAt(s, 0), nameAt(s, 1)].sort()).toEqual(['cpu', 'lat']);
    // With 8 shards each name travels with its own shard's section.
    const eight = cutter.cut({ ...header, shards: 8, servers: [{ server: 'a', blocks: [a] }, { server: 'b', blocks: [b] }], rollup });
    const h = new Uint32Array(2);
    hashName('lat', h, 0);
    const lat = eight.find((x) => x.shard === shardOf(h[0]!, 8))!;
    const ls = decodeOk(lat.frame) as ShardSectionMessage;
    expect(Array.from(ls.distCounts)).toEqual([3, 1, 4]);
  });

  it('regression: a summary repeating its metric\'s server is marked bad (the head merged both: the server\'s count and sum doubled), and a list naming one server twice is refused', () => {
    const twice = buildColumns([], [{ name: 'lat', values: [1, 2, 3] }]);
    const again = buildColumns([], [{ name: 'lat', values: [4, 5, 6] }]);
    const cutter = new SectionCutter(1024);
    const [one] = cutter.cut({ ...header, shards: 1, servers: [{ server: 'a', blocks: [twice, again] }], rollup: buildColumns([], []) });
    const s = decodeOk(one!.frame) as ShardSectionMessage;
    expect(Array.from(s.distServers)).toEqual([0, 0]);
    expect(s.distBad === null ? [] : Array.from(s.distBad)).toEqual([0, 1]);
    const points = buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 1 }], []);
    const [dup] = cutter.cut({ ...header, shards: 1, servers: [{ server: 's0', blocks: [points] }, { server: 's0', blocks: [points] }], rollup: buildColumns([], []) });
    const r = decodeFrame(dup!.frame, batchBytesMax);
    expect(r.ok ? 'ok' : [r.reason, r.detail]).toEqual(['bad_value', 'the list of 2 servers names one server twice']);
  });

  it('a list of servers byte for byte the last one decoded is answered with the same array, its bounds checked as before; a list one byte apart or of another length is decoded afresh', () => {
    const cutter = new SectionCutter(1024);
    const points = buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 1 }], []);
    const frame = (names: string[]) => cutter.cut({ ...header, shards: 1, servers: names.map((server) => ({ server, blocks: [points] })), rollup: buildColumns([], []) })[0]!.frame.slice();
    const servers = (f: Uint8Array) => (decodeOk(f) as ShardSectionMessage).servers;
    const first = servers(frame(['web-1', 'web-2']));
    expect(servers(frame(['web-1', 'web-2']))).toBe(first);
    expect(servers(frame(['web-1', 'web-3']))).toEqual(['web-1', 'web-3']);
    expect(servers(frame(['web-1', 'web-2']))).toEqual(['web-1', 'web-2']);
    expect(servers(frame(['web-1', 'web-22']))).toEqual(['web-1', 'web-22']);
    expect(servers(frame(['web-1']))).toEqual(['web-1']);
    expect(servers(frame(['web-1', 'web-2', 'web-3']))).toEqual(['web-1', 'web-2', 'web-3']);
    // Same names as the last list, but the last one's terminating NUL overwritten: refused, not taken from the cache.
    const bad = frame(['web-1', 'web-2', 'web-3']);
    const at = Buffer.from(bad).indexOf('web-3\0', 0, 'latin1');
    bad[at + 5] = 0x41;
    new DataView(bad.buffer, bad.byteOffset).setUint32(bad.length - 4, crc32(bad.subarray(0, bad.length - 4)), true);
    const r = decodeFrame(bad, batchBytesMax);
    expect(r.ok ? 'ok' : [r.reason, r.detail]).toEqual(['out_of_bounds', 'server name overruns the message or is not NUL-terminated']);
  });

  it('regression: a name repeated in a section is hashed once, the repeats compared byte for byte (64 MiB of one name repeated held a worker ~8 s); a repeat with other bytes, or more than sectionNamesMax names, is refused; the cutter sends each name once', () => {
    const cutter = new SectionCutter(1 << 17);
    const points = buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 1 }], []);
    // The cutter sends a name once, whatever its input repeats (a rack's new names and its refresh).
    const [cut] = cutter.cut({ ...header, shards: 1, servers: [{ server: 's0', blocks: [points] }], rollup: buildColumns([], [], ['cpu', 'mem', 'cpu']) });
    const m = decodeOk(cut!.frame) as ShardSectionMessage;
    expect([nameAt(m, 0), nameAt(m, 1), m.nameEnds.length]).toEqual(['cpu', 'mem', 2]);
    // Sections made by hand with a dictionary of their own.
    const withNames = (names: string[], edit?: (c: ReturnType<typeof buildColumns>) => void) => {
      const d = buildColumns([], [], names);
      edit?.(d);
      return decodeFrame(encodeShardSection(new Encoder(), m, { ...m, nameHashes: d.nameHashes, nameEnds: d.nameEnds, nameBytes: d.nameBytes }), batchBytesMax);
    };
    const repeated = withNames([...Array<string>(60_000).fill('cpu'), 'mem', 'cpu']);
    expect(repeated.ok && repeated.msg.type === 'shardSection' && repeated.msg.nameEnds.length).toBe(60_002);
    const tooMany = withNames(Array<string>(sectionNamesMax + 1).fill('cpu'));
    expect(tooMany.ok ? 'ok' : tooMany.reason).toBe('bad_columns');
    // Same hash as an earlier name, other bytes: refused.
    const forged = withNames(['cpu', 'mem', 'cpx'], (d) => d.nameHashes.set(d.nameHashes.subarray(0, 2), 4));
    expect(forged.ok ? 'ok' : [forged.reason, forged.detail]).toEqual(['bad_name', 'name 2 has the hash of name 0 but other bytes']);
  });

  it('bodies(): a shard with more new names than one section takes (sectionNamesMax) sends them in several sections, each name once', () => {
    const cutter = new SectionCutter(1 << 12);
    let seq = 0;
    const names = Array.from({ length: sectionNamesMax + 5000 }, (_, i) => `n${i}`);
    const points = buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 1 }], []);
    const bodies = cutter.bodies({ rack: 'r1', second: header.second, late: false, shards: 1, servers: [{ server: 's0', blocks: [points] }], rollup: buildColumns([], [], names) }, () => ({ session: 1, seq: ++seq }), { sectionBytesMax: 64 << 20, bodyBytesMax: 64 << 20, metricBytesMax: 64 << 20 });
    const sections = sectionsOf(bodies, 64 << 20);
    expect(sections.length).toBeGreaterThan(1);
    for (const x of sections) expect(x.nameEnds.length).toBeLessThanOrEqual(sectionNamesMax);
    expect(sections.reduce((a, x) => a + x.nameEnds.length, 0)).toBe(names.length);
  });

  it('bodies(): a second past its bounds goes as several numbered bodies, each section within its bound, one section per shard a body, every metric whole and once', () => {
    const servers = Array.from({ length: 30 }, (_, j) => ({
      server: `big-${j}`,
      blocks: [buildColumns(Array.from({ length: 300 }, (_, i) => ({ name: `g.${i}`, kind: KindCode.Gauge as const, value: i + j / 100 })), Array.from({ length: 5 }, (_, k) => ({ name: `lat.${k}`, values: [j, k + 1, 2.5 * j] })))],
    }));
    const rollup = buildColumns([], Array.from({ length: 5 }, (_, k) => ({ name: `lat.${k}`, values: Array.from({ length: 30 }, (_, j) => j) })), ['g.0', 'g.1', 'lat.0']);
    const input = { rack: 'r1', second: header.second, late: false, shards: 4, servers, rollup };
    const whole = new SectionCutter(1 << 12).body({ ...input, session: 7, seq: 42 });
    // Within bounds: one body, the same bytes as body().
    const one = new SectionCutter(1 << 12).bodies(input, () => ({ session: 7, seq: 42 }), { sectionBytesMax: 1 << 20, bodyBytesMax: 1 << 20, metricBytesMax: 1 << 20 });
    expect(one.map((b) => b.seq)).toEqual([42]);
    expect(Buffer.from(one[0]!.bytes).equals(Buffer.from(whole))).toBe(true);
    // Past them: several.
    const cutter = new SectionCutter(1 << 12);
    const bounds = { sectionBytesMax: 8 * 1024, bodyBytesMax: 24 * 1024, metricBytesMax: 24 * 1024 };
    let seq = 0;
    const bodies = cutter.bodies(input, () => ({ session: 9, seq: ++seq }), bounds);
    expect(bodies.length).toBeGreaterThan(2);
    expect(bodies.map((b) => b.seq)).toEqual(bodies.map((_, k) => 1 + k));
    expect(cutter.secondsSplit).toBe(1);
    expect(cutter.metricsTooLarge).toBe(0);
    const points: string[] = [];
    const dists = new Map<number, number[]>();
    const names: string[] = [];
    for (const b of bodies) {
      expect(b.bytes.length).toBeLessThanOrEqual(bounds.bodyBytesMax);
      const m = decodeOk(b.bytes);
      if (m.type !== 'rackSecond') throw new Error('not a RackSecond');
      expect(m).toMatchObject({ rack: 'r1', session: 9, seq: b.seq, second: header.second, shards: 4 });
      expect(new Set(m.sectionShards).size).toBe(m.sectionShards.length);
      for (let i = 0; i < m.sectionShards.length; i++) {
        expect(sectionAt(m, i).length).toBeLessThanOrEqual(bounds.sectionBytesMax);
        const x = decodeOk(sectionAt(m, i).slice()) as ShardSectionMessage;
        expect(x).toMatchObject({ seq: b.seq, session: 9, shard: m.sectionShards[i] });
        for (let k = 0; k < x.pointEnds.length; k++) for (let e = k === 0 ? 0 : x.pointEnds[k - 1]!; e < x.pointEnds[k]!; e++) points.push(`${x.pointHashes[2 * k]}/${x.servers[x.pointServers[e]!]}/${x.pointValues[e]}`);
        for (let k = 0; k < x.distEnds.length; k++) {
          // A distribution's summaries (every server's, then the rollup) are in one section.
          expect(dists.has(x.distHashes[2 * k]!)).toBe(false);
          dists.set(x.distHashes[2 * k]!, Array.from(x.distServers.subarray(k === 0 ? 0 : x.distEnds[k - 1]!, x.distEnds[k]!)));
        }
        for (let k = 0; k < x.nameEnds.length; k++) names.push(nameAt(x, k));
      }
    }
    expect(points.sort()).toEqual(pointsOf(whole));
    expect(dists.size).toBe(5);
    for (const servers of dists.values()) expect(servers).toEqual([...Array.from({ length: 30 }, (_, j) => j), rollupServer]);
    expect(names.sort()).toEqual(['g.0', 'g.1', 'lat.0']);
  });

  it('bodies(): a metric whose entries alone pass a body\'s bound is left out of that second, counted; the others go', () => {
    const servers = wideServers();
    const cutter = new SectionCutter(1 << 12);
    let seq = 0;
    const bodies = cutter.bodies({ rack: 'r1', second: header.second, late: false, shards: 1, servers, rollup: buildColumns([], []) }, () => ({ session: 1, seq: ++seq }), { sectionBytesMax: 8 * 1024, bodyBytesMax: 64 * 1024, metricBytesMax: 8 * 1024 });
    expect(cutter.metricsTooLarge).toBe(1);
    expect(bodies).toHaveLength(1);
    const x = soleSection(bodies[0]!.bytes);
    expect(x.distEnds.length).toBe(0);
    expect(Array.from(x.pointValues)).toEqual(Array.from({ length: 30 }, (_, j) => j));
  });

  it('bodies(): a metric past the section bound but within metricBytesMax goes in a section and body of its own; a second with nothing to cut is still one (empty) body', () => {
    const servers = wideServers();
    const cutter = new SectionCutter(1 << 12);
    let seq = 0;
    const bounds = { sectionBytesMax: 8 * 1024, bodyBytesMax: 8 * 1024, metricBytesMax: 1 << 20 };
    const bodies = cutter.bodies({ rack: 'r1', second: header.second, late: false, shards: 1, servers, rollup: buildColumns([], []) }, () => ({ session: 1, seq: ++seq }), bounds);
    expect(cutter.metricsTooLarge).toBe(0);
    expect(bodies).toHaveLength(2);
    const sections = bodies.map((b) => soleSection(b.bytes));
    expect(sections.map((x) => x.distEnds.length).sort()).toEqual([0, 1]);
    expect(bodies.some((b) => b.bytes.length > bounds.bodyBytesMax)).toBe(true);
    // Servers with nothing in them: one body with no sections, as body() sends.
    const empty = cutter.bodies({ rack: 'r1', second: header.second, late: false, shards: 4, servers: [{ server: 'idle', blocks: [buildColumns([], [])] }], rollup: buildColumns([], []) }, () => ({ session: 1, seq: ++seq }), bounds);
    expect(empty).toHaveLength(1);
    const m = decodeOk(empty[0]!.bytes);
    expect(m).toMatchObject({ type: 'rackSecond', servers: ['idle'] });
  });

  it('bodies(): a shard\'s names go whole with its first section even when its first metric is left out', () => {
    const servers = Array.from({ length: 30 }, (_, j) => ({
      server: `nm-${j}`,
      blocks: [buildColumns([], [{ name: 'wide', values: Array.from({ length: 200 }, (_, v) => 1.07 ** v + j) }])],
    }));
    const cutter = new SectionCutter(1 << 12);
    let seq = 0;
    const bodies = cutter.bodies({ rack: 'r1', second: header.second, late: false, shards: 1, servers, rollup: buildColumns([], [], ['wide', 'other.name']) }, () => ({ session: 1, seq: ++seq }), { sectionBytesMax: 8 * 1024, bodyBytesMax: 8 * 1024, metricBytesMax: 8 * 1024 });
    expect(cutter.metricsTooLarge).toBe(1);
    expect(bodies).toHaveLength(1);
    const x = soleSection(bodies[0]!.bytes);
    expect(x.distEnds.length).toBe(0);
    expect([nameAt(x, 0), nameAt(x, 1)].sort()).toEqual(['other.name', 'wide']);
  });

  it('bodies(): a shard\'s names past a section\'s bound are cut into sections of names only, each within the bound, every name once (before: they went whole with its first section, past any NATS message)', () => {
    const many = Array.from({ length: 3000 }, (_, i) => `service.endpoint.latency.histogram.bucket.${String(i).padStart(6, '0')}`);
    const servers = Array.from({ length: 4 }, (_, j) => ({ server: `nm-${j}`, blocks: [buildColumns([{ name: many[0]!, kind: KindCode.Gauge, value: j }], [])] }));
    const cutter = new SectionCutter(1 << 12);
    let seq = 0;
    const bounds = { sectionBytesMax: 32 * 1024, bodyBytesMax: 64 * 1024, metricBytesMax: 32 * 1024 };
    const bodies = cutter.bodies({ rack: 'r1', second: header.second, late: false, shards: 1, servers, rollup: buildColumns([], [], many) }, () => ({ session: 1, seq: ++seq }), bounds);
    const names: string[] = [];
    const values: number[] = [];
    for (const x of sectionsOf(bodies, bounds.sectionBytesMax)) {
      for (let k = 0; k < x.nameEnds.length; k++) names.push(nameAt(x, k));
      values.push(...x.pointValues);
    }
    expect(bodies.length).toBeGreaterThan(4);
    expect(names.sort()).toEqual([...many].sort());
    expect(values.sort()).toEqual([0, 1, 2, 3]);
  });

  it('bodies(): names near the bound and a large first metric still make no section past the bound, and the names come after the metrics (the core holds names of metrics it has no data of in a bounded table)', () => {
    // ~31 KB of names, and a distribution of 30 servers (~18 KB): together past 32 KiB.
    const many = Array.from({ length: 420 }, (_, i) => `service.endpoint.latency.histogram.bucket.${String(i).padStart(6, '0')}`);
    const cutter = new SectionCutter(1 << 12);
    let seq = 0;
    const bounds = { sectionBytesMax: 32 * 1024, bodyBytesMax: 64 * 1024, metricBytesMax: 32 * 1024 };
    // The shard's first (and only) metric is the large one.
    const servers = Array.from({ length: 30 }, (_, j) => ({ server: `wide-${j}`, blocks: [buildColumns([], [{ name: 'wide', values: Array.from({ length: 200 }, (_, v) => 1.07 ** v + j) }])] }));
    const bodies = cutter.bodies({ rack: 'r1', second: header.second, late: false, shards: 1, servers, rollup: buildColumns([], [], many) }, () => ({ session: 1, seq: ++seq }), bounds);
    const order: string[] = [];
    let names = 0;
    for (const x of sectionsOf(bodies, bounds.sectionBytesMax)) {
      if (x.pointEnds.length + x.distEnds.length > 0) order.push('metrics');
      if (x.nameEnds.length > 0) order.push('names');
      names += x.nameEnds.length;
    }
    expect(names).toBe(many.length);
    // Every section with names comes after every section with metrics (or is the last of them).
    expect(order.lastIndexOf('metrics')).toBeLessThan(order.indexOf('names'));
  });

  it('refuses any truncated or bit-flipped section or body (fuzz)', () => {
    const c = buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 1 }], [{ name: 'lat', values: [1, 2, 3] }], ['cpu']);
    const body = rackSecondBody({ ...header, shards: 4, servers: [{ server: 'a', blocks: [c] }], rollup: buildColumns([], [{ name: 'lat', values: [1, 2, 3] }]) });
    const section = new SectionCutter(64).cut({ ...header, shards: 4, servers: [{ server: 'a', blocks: [c] }], rollup: buildColumns([], []) })[0]!.frame;
    for (const frame of [body, section]) {
      for (let n = 0; n < frame.length; n += 7) expect(decodeFrame(frame.subarray(0, n), batchBytesMax).ok).toBe(false);
      for (let i = 0; i < 2000; i++) {
        const bad = frame.slice();
        bad[Math.floor(Math.random() * bad.length)]! ^= 1 << Math.floor(Math.random() * 8);
        expect(decodeFrame(bad, batchBytesMax).ok).toBe(false);
      }
    }
  });
});
