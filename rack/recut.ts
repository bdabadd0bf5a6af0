// Re-cutting a spooled RackSecond for another shard count (issue 12): the core answered 409
// shards_mismatch, or told the rack its S after the body was cut. The body's sections are
// decoded and their metric columns regrouped per server, which is the cutter's input again
// (every point, every summary including the rollups, every name), then cut with the new S.
// Rare (an S change is an operator's decision), so clarity wins over speed here.

import { Body, KindCode, columnsFor, decodeFrame, type SeriesColumns, type ServerBlocks } from '../schema/codec.js';
import { batchBytesMax, rollupServer } from '../schema/limits.js';
import { sectionAt, type CutBounds, type CutInput, type RackSecondMessage, type SectionCutter, type ShardSectionMessage } from '../schema/section.js';

/** A decoded body: the cutter's input it was cut from, its sections, and the container. */
export interface DecodedSecond {
  input: CutInput;
  message: RackSecondMessage;
  sections: ShardSectionMessage[];
}

/** Decodes a RackSecond and every section; throws (with what is wrong) on anything else. */
export function decodeSecond(body: Uint8Array): DecodedSecond {
  const r = decodeFrame(body, batchBytesMax, { expect: Body.RackSecond });
  if (!r.ok) throw new Error(`not a readable body: ${r.reason}: ${r.detail}`);
  if (r.msg.type !== 'rackSecond') throw new Error(`not a RackSecond but a ${r.msg.type}`);
  const m = r.msg;
  const sections: ShardSectionMessage[] = [];
  for (let i = 0; i < m.sectionShards.length; i++) {
    const s = decodeFrame(sectionAt(m, i), batchBytesMax, { expect: Body.ShardSection });
    if (!s.ok) throw new Error(`section ${i} (shard ${m.sectionShards[i]}): ${s.reason}: ${s.detail}`);
    if (s.msg.type !== 'shardSection') throw new Error(`section ${i} is a ${s.msg.type}`);
    const x = s.msg;
    if (x.rack !== m.rack || x.session !== m.session || x.seq !== m.seq || x.second !== m.second || x.shards !== m.shards || x.shard !== m.sectionShards[i]) {
      throw new Error(`section ${i} is ${x.rack}/${x.session}/${x.seq} shard ${x.shard}/${x.shards}, its body ${m.rack}/${m.session}/${m.seq} shard ${m.sectionShards[i]}/${m.shards}`);
    }
    if (x.servers.length !== m.servers.length || x.servers.some((id, j) => id !== m.servers[j])) throw new Error(`section ${i} lists other servers than its body`);
    sections.push(x);
  }
  const { servers, rollup } = regroup(m.servers, sections);
  return { input: { rack: m.rack, session: m.session, seq: m.seq, second: m.second, late: m.late, shards: m.shards, servers, rollup }, message: m, sections };
}

/** A body re-cut: its identity (session, seq), the second it holds, and its bytes. */
export interface RecutBody {
  session: number;
  seq: number;
  second: number;
  bytes: Uint8Array;
}

/**
 * The same second cut for `shards` within `bounds`, as the rack cuts a new second
 * (SectionCutter.bodies). The first body keeps the spooled body's identity (rack, session,
 * seq, second, late). A second that no longer fits one body at the new S (one section's
 * per-section overhead times many more shards, or much larger sections for far fewer: past
 * what a NATS message carries) goes on in more bodies numbered by `take` (the spool's session
 * and next seqs). Before, the re-cut was one body whatever its size: a section past the NATS
 * payload was refused five times, then dropped with the second's points.
 */
export function recut(cutter: SectionCutter, body: Uint8Array, shards: number, bounds: CutBounds, take: () => { session: number; seq: number }): RecutBody[] {
  const { input } = decodeSecond(body);
  let first = true;
  const numbered = () => {
    if (!first) return take();
    first = false;
    return { session: input.session, seq: input.seq };
  };
  return cutter.bodies({ ...input, shards }, numbered, bounds).map((b) => ({ ...b, second: input.second }));
}

/** Sections' metric-major columns → one block per server, the rollups and the names. */
function regroup(ids: readonly string[], sections: readonly ShardSectionMessage[]): { servers: ServerBlocks[]; rollup: SeriesColumns } {
  const n = ids.length;
  // Sizes per server; index n is the rollup.
  const points = new Int32Array(n + 1);
  const dists = new Int32Array(n + 1);
  const sketchBytes = new Int32Array(n + 1);
  let names = 0;
  let nameBytes = 0;
  for (const s of sections) {
    for (let e = 0; e < s.pointServers.length; e++) points[s.pointServers[e]!]! += 1;
    for (let e = 0; e < s.distServers.length; e++) {
      const j = s.distServers[e] === rollupServer ? n : s.distServers[e]!;
      dists[j]! += 1;
      sketchBytes[j]! += s.sketchEnds[e]! - (e === 0 ? 0 : s.sketchEnds[e - 1]!);
    }
    names += s.nameEnds.length;
    nameBytes += s.nameBytes.length;
  }
  const cols = Array.from({ length: n + 1 }, (_, j) => columnsFor({ points: points[j]!, dists: dists[j]!, sketchBytes: sketchBytes[j]! }));
  const pAt = new Int32Array(n + 1);
  const dAt = new Int32Array(n + 1);
  const sAt = new Int32Array(n + 1);
  for (const s of sections) {
    for (let i = 0; i < s.pointEnds.length; i++) {
      for (let e = i === 0 ? 0 : s.pointEnds[i - 1]!; e < s.pointEnds[i]!; e++) {
        const j = s.pointServers[e]!;
        const c = cols[j]!;
        const k = pAt[j]!++;
        c.pointHashes[2 * k] = s.pointHashes[2 * i]!;
        c.pointHashes[2 * k + 1] = s.pointHashes[2 * i + 1]!;
        c.pointKinds[k] = s.pointKinds[i]!;
        c.pointValues[k] = s.pointValues[e]!;
      }
    }
    for (let i = 0; i < s.distEnds.length; i++) {
      for (let e = i === 0 ? 0 : s.distEnds[i - 1]!; e < s.distEnds[i]!; e++) {
        const j = s.distServers[e] === rollupServer ? n : s.distServers[e]!;
        const c = cols[j]!;
        const k = dAt[j]!++;
        c.distHashes[2 * k] = s.distHashes[2 * i]!;
        c.distHashes[2 * k + 1] = s.distHashes[2 * i + 1]!;
        c.distKinds[k] = KindCode.Distribution;
        c.distCounts[k] = s.distCounts[e]!;
        c.distSums[k] = s.distSums[e]!;
        c.distMins[k] = s.distMins[e]!;
        c.distMaxes[k] = s.distMaxes[e]!;
        const sketch = s.sketchBytes.subarray(e === 0 ? 0 : s.sketchEnds[e - 1]!, s.sketchEnds[e]!);
        c.sketchBytes.set(sketch, sAt[j]!);
        c.sketchEnds[k] = sAt[j]! += sketch.length;
      }
    }
  }
  const rollup = cols[n]!;
  rollup.nameHashes = new Uint32Array(2 * names);
  rollup.nameEnds = new Uint32Array(names);
  rollup.nameBytes = new Uint8Array(nameBytes);
  let j = 0;
  let at = 0;
  for (const s of sections) {
    rollup.nameHashes.set(s.nameHashes, 2 * j);
    for (let k = 0; k < s.nameEnds.length; k++) rollup.nameEnds[j + k] = at + s.nameEnds[k]!;
    rollup.nameBytes.set(s.nameBytes, at);
    j += s.nameEnds.length;
    at += s.nameBytes.length;
  }
  return { servers: ids.map((server, i) => ({ server, blocks: [cols[i]!] })), rollup };
}
