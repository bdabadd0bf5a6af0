// Test helper: decodes a second's datagrams and merges them per metric name, the way a
// receiver must (several summaries of one distribution merge into one).

import { decodeFrame, nameAt, type EdgeSecondMessage, type SeriesColumns } from '../schema/codec.js';
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

/** Order-independent form of a server-second's summaries, merged per hash (for equality checks). */
export function canonical(blocks: SeriesColumns[]): { points: Record<string, [number, number]>; dists: Record<string, [number, number, number, number, string]> } {
  const points: Record<string, [number, number]> = {};
  const acc = new Map<string, { count: number; sum: number; min: number; max: number; sketch: SketchAccumulator }>();
  for (const c of blocks) {
    for (let i = 0; i < c.pointKinds.length; i++) points[hashKey(c.pointHashes[2 * i]!, c.pointHashes[2 * i + 1]!)] = [c.pointKinds[i]!, c.pointValues[i]!];
    let start = 0;
    for (let i = 0; i < c.distKinds.length; i++) {
      const k = hashKey(c.distHashes[2 * i]!, c.distHashes[2 * i + 1]!);
      let d = acc.get(k);
      if (d === undefined) acc.set(k, (d = { count: 0, sum: 0, min: Infinity, max: -Infinity, sketch: new SketchAccumulator() }));
      d.count += c.distCounts[i]!;
      d.sum += c.distSums[i]!;
      d.min = Math.min(d.min, c.distMins[i]!);
      d.max = Math.max(d.max, c.distMaxes[i]!);
      d.sketch.addEncoded(c.sketchBytes, start, c.sketchEnds[i]!);
      start = c.sketchEnds[i]!;
    }
  }
  const dists: Record<string, [number, number, number, number, string]> = {};
  for (const [k, d] of [...acc].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const bytes = new Uint8Array(d.sketch.encodedBytes());
    d.sketch.encodeInto(bytes, 0);
    dists[k] = [d.count, Number(d.sum.toPrecision(12)), d.min, d.max, Buffer.from(bytes).toString('hex')];
  }
  return { points, dists };
}

/** Prometheus text → { 'name{labels}': value }. */
export function parseProm(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}
