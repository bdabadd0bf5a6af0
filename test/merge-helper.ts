// Test helper: decodes a second's datagrams and merges them per metric name, the way a
// receiver must (several summaries of one distribution merge into one).

import { decodeFrame, nameAt, type EdgeSecondMessage } from '../schema/codec.js';
import { hashKey, hashName } from '../schema/names.js';
import { SketchAccumulator } from '../schema/sketch.js';

export interface MergedDist {
  count: number;
  sum: number;
  min: number;
  max: number;
  sketch: SketchAccumulator;
  summaries: number;
}

export interface MergedSecond {
  points: Map<string, { kind: number; value: number }>;
  dists: Map<string, MergedDist>;
  parts: number;
  names: Map<string, string>;
}

export function decodeAll(frames: Uint8Array[]): EdgeSecondMessage[] {
  return frames.map((f) => {
    const r = decodeFrame(f, 65_507);
    if (!r.ok) throw new Error(`${r.reason}: ${r.detail}`);
    if (r.msg.type !== 'edgeSecond') throw new Error(`unexpected ${r.msg.type}`);
    return r.msg;
  });
}

/** Merges the parts of one server-second; `known` names resolve hashes without a dictionary. */
export function mergeSecond(msgs: EdgeSecondMessage[], known: string[] = []): MergedSecond {
  const names = new Map<string, string>();
  const h = new Uint32Array(2);
  for (const n of known) {
    hashName(n, h, 0);
    names.set(hashKey(h[0]!, h[1]!), n);
  }
  for (const m of msgs) for (let j = 0; j < m.series.nameEnds.length; j++) names.set(hashKey(m.series.nameHashes[2 * j]!, m.series.nameHashes[2 * j + 1]!), nameAt(m.series, j));
  const nameOf = (hashes: Uint32Array, i: number) => names.get(hashKey(hashes[2 * i]!, hashes[2 * i + 1]!)) ?? `#${hashKey(hashes[2 * i]!, hashes[2 * i + 1]!)}`;
  const out: MergedSecond = { points: new Map(), dists: new Map(), parts: msgs.length, names };
  for (const m of msgs) {
    const s = m.series;
    for (let i = 0; i < s.pointKinds.length; i++) out.points.set(nameOf(s.pointHashes, i), { kind: s.pointKinds[i]!, value: s.pointValues[i]! });
    let start = 0;
    for (let i = 0; i < s.distKinds.length; i++) {
      const name = nameOf(s.distHashes, i);
      let d = out.dists.get(name);
      if (d === undefined) out.dists.set(name, (d = { count: 0, sum: 0, min: Infinity, max: -Infinity, sketch: new SketchAccumulator(), summaries: 0 }));
      d.count += s.distCounts[i]!;
      d.sum += s.distSums[i]!;
      d.min = Math.min(d.min, s.distMins[i]!);
      d.max = Math.max(d.max, s.distMaxes[i]!);
      d.sketch.addEncoded(s.sketchBytes, start, s.sketchEnds[i]!);
      d.summaries++;
      start = s.sketchEnds[i]!;
    }
  }
  return out;
}
