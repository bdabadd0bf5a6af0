import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { KindCode, nameAt, nameColumns, type EdgeSecondMessage, type SeriesColumns } from '../schema/codec.js';
import { rollupServer } from '../schema/limits.js';
import { hashName } from '../schema/names.js';
import { SectionCutter, sectionAt, shardOf } from '../schema/section.js';
import { buildColumns, type DistInput, type PointInput } from '../schema/testdata.js';
import { RackMerger } from './merge.js';
import { decodeSecond, recut as recutBodies } from './recut.js';

const unbounded = { sectionBytesMax: 1 << 30, bodyBytesMax: 1 << 30, metricBytesMax: 1 << 30 };

/** A re-cut that fits one body (no bound reached): its bytes. */
function recut(cutter: SectionCutter, body: Uint8Array, shards: number): Uint8Array {
  const out = recutBodies(cutter, body, shards, unbounded, () => {
    throw new Error('a second body was numbered');
  });
  expect(out).toHaveLength(1);
  return out[0]!.bytes;
}

const header = { rack: 'r1', session: 0xdeadbeef, seq: 77, second: 1_790_000_000, late: true };

function msg(series: SeriesColumns): EdgeSecondMessage {
  return { type: 'edgeSecond', server: 's', session: 1, seq: 1, second: header.second, part: 0, parts: 1, sentMs: 0, series };
}

/** Every point, summary (rollups as server "rollup") and name a body holds, as sorted strings; checks each is in its shard. */
function contents(body: Uint8Array): string[] {
  const { sections } = decodeSecond(body);
  const out: string[] = [];
  for (const s of sections) {
    for (let i = 0; i < s.pointEnds.length; i++) {
      expect(shardOf(s.pointHashes[2 * i]!, s.shards)).toBe(s.shard);
      for (let e = i === 0 ? 0 : s.pointEnds[i - 1]!; e < s.pointEnds[i]!; e++) out.push(`p ${s.pointHashes[2 * i]}:${s.pointHashes[2 * i + 1]} ${s.servers[s.pointServers[e]!]} ${s.pointKinds[i]} ${s.pointValues[e]}`);
    }
    for (let i = 0; i < s.distEnds.length; i++) {
      expect(shardOf(s.distHashes[2 * i]!, s.shards)).toBe(s.shard);
      for (let e = i === 0 ? 0 : s.distEnds[i - 1]!; e < s.distEnds[i]!; e++) {
        const server = s.distServers[e] === rollupServer ? 'rollup' : s.servers[s.distServers[e]!];
        const sketch = Buffer.from(s.sketchBytes.subarray(e === 0 ? 0 : s.sketchEnds[e - 1]!, s.sketchEnds[e]!)).toString('hex');
        out.push(`d ${s.distHashes[2 * i]}:${s.distHashes[2 * i + 1]} ${server} ${s.distCounts[e]} ${s.distSums[e]} ${s.distMins[e]} ${s.distMaxes[e]} ${sketch}`);
      }
    }
    for (let j = 0; j < s.nameEnds.length; j++) out.push(`n ${s.nameHashes[2 * j]}:${s.nameHashes[2 * j + 1]} ${nameAt(s, j)}`);
  }
  return out.sort();
}

/** A merged second as the rack builds it: servers' blocks, distribution rollups, every name. */
function second(perServer: [number, number][][], shards: number) {
  const names = new Set<string>();
  const parts = perServer.map((entries, j) => {
    const seen = new Set<number>();
    const points: PointInput[] = [];
    const dists: DistInput[] = [];
    for (const [m, v] of entries) {
      if (seen.has(m)) continue;
      seen.add(m);
      // Metric m's kind is fixed by m: gauge, counter or distribution.
      if (m % 3 === 2) dists.push({ name: `lat.${m}`, values: [v, v * 2 + 1] });
      else points.push({ name: `m.${m}`, kind: m % 3 === 0 ? KindCode.Gauge : KindCode.Counter, value: v });
    }
    for (const p of points) names.add(p.name);
    for (const d of dists) names.add(d.name);
    return { server: `s-${j}`, parts: [msg(buildColumns(points, dists))] };
  });
  const merged = new RackMerger(1024).merge(parts);
  const list = [...names];
  const hashes = new Uint32Array(2 * list.length);
  list.forEach((n, i) => hashName(n, hashes, 2 * i));
  return { ...header, shards, servers: merged.servers, rollup: { ...merged.rollup, ...nameColumns(hashes, list) } };
}

describe('recut (a spooled body for a new shard count)', () => {
  it('keeps every point, summary, rollup and name, each in its new shard, and the body’s identity (property)', () => {
    const cutter = new SectionCutter(1024);
    const entries = fc.array(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: -1000, max: 1000 })), { maxLength: 25 });
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 7 }), fc.array(entries, { minLength: 1, maxLength: 6 }), (log1, log2, perServer) => {
        const input = second(perServer, 2 ** log1);
        const before = cutter.body(input);
        const after = recut(cutter, before, 2 ** log2);
        const direct = cutter.body({ ...input, shards: 2 ** log2 });
        expect(contents(after)).toEqual(contents(before));
        expect(contents(after)).toEqual(contents(direct));
        const d = decodeSecond(after).message;
        expect({ rack: d.rack, session: d.session, seq: d.seq, second: d.second, late: d.late, shards: d.shards, servers: d.servers }).toEqual({ ...header, shards: 2 ** log2, servers: input.servers.map((s) => s.server) });
      }),
      { numRuns: 150 },
    );
  });

  it('carries the distribution rollups (server 0xffff) and names of shards without data', () => {
    const cutter = new SectionCutter(64);
    const input = second([[[2, 5], [0, 1]], [[2, 7]]], 64);
    // A name whose metric sent nothing this second still reaches its shard.
    const extra = new Uint32Array(2);
    hashName('idle.metric', extra, 0);
    const names = [...Array(input.rollup.nameEnds.length).keys()].map((j) => nameAt(input.rollup, j));
    const all = new Uint32Array([...input.rollup.nameHashes, ...extra]);
    const withIdle = { ...input, rollup: { ...input.rollup, ...nameColumns(all, [...names, 'idle.metric']) } };
    const body = recut(cutter, cutter.body(withIdle), 4);
    const c = contents(body);
    expect(c.filter((l) => l.includes(' rollup '))).toHaveLength(1);
    expect(c.filter((l) => l.startsWith('n ')).map((l) => l.split(' ')[2]).sort()).toEqual(['idle.metric', 'lat.2', 'm.0']);
  });

  it('regression: a re-cut past the bounds goes on in more bodies, each within them, the first keeping the spooled identity (before: one body of any size)', () => {
    const cutter = new SectionCutter(1024);
    // 300 metrics on 3 servers, cut for 1 shard: one body.
    const input = second([0, 1, 2].map((j) => Array.from({ length: 300 }, (_, m): [number, number] => [m, m * 10 + j])), 1);
    const before = cutter.body(input);
    const bounds = { sectionBytesMax: 8 * 1024, bodyBytesMax: 16 * 1024, metricBytesMax: 64 * 1024 };
    // For 64 shards each section carries its own header and server list, and for 1 shard one section holds all: both pass these bounds.
    expect(cutter.body({ ...input, shards: 64 }).length).toBeGreaterThan(bounds.bodyBytesMax);
    let next = 500;
    for (const shards of [64, 1]) {
      const from = shards === 64 ? before : cutter.body({ ...input, shards: 64 });
      const out = recutBodies(cutter, from, shards, bounds, () => ({ session: 42, seq: next++ }));
      expect(out.length).toBeGreaterThan(1);
      expect(out.map((b) => [b.session, b.seq, b.second])).toEqual(out.map((_, i) => (i === 0 ? [header.session, header.seq, header.second] : [42, next - out.length + i, header.second])));
      for (const b of out) {
        expect(b.bytes.length).toBeLessThanOrEqual(bounds.bodyBytesMax);
        const m = decodeSecond(b.bytes).message;
        for (let i = 0; i < m.sectionShards.length; i++) expect(sectionAt(m, i).length).toBeLessThanOrEqual(bounds.sectionBytesMax);
      }
      expect(out.flatMap((b) => contents(b.bytes)).sort()).toEqual(contents(before));
    }
  });

  it('refuses what is not a readable RackSecond', () => {
    const cutter = new SectionCutter(64);
    const body = cutter.body(second([[[0, 1]]], 8));
    const bad = body.slice();
    bad[bad.length - 20]! ^= 0x40;
    expect(() => recut(cutter, bad, 4)).toThrow(/not a readable body/);
  });
});
