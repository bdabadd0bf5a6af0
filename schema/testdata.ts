// Builders of valid wire content for tests and benchmarks (not used by the daemons).

import { type SeriesColumns, KindCode } from './codec.js';
import { hashName } from './names.js';
import { SortedSketchEncoder } from './sketch.js';

export interface DistInput {
  name: string;
  values: number[];
  /** Each value's weight (a sampled StatsD value stands for 1 / rate); 1 each when absent. */
  weights?: number[];
}

export interface PointInput {
  name: string;
  kind: KindCode.Gauge | KindCode.Counter;
  value: number;
}

/** Columns for the given points and distributions; names listed in `named` get dictionary entries. */
export function buildColumns(points: PointInput[], dists: DistInput[], named: string[] = []): SeriesColumns {
  const enc = new SortedSketchEncoder();
  const pointHashes = new Uint32Array(points.length * 2);
  points.forEach((p, i) => hashName(p.name, pointHashes, 2 * i));
  const distHashes = new Uint32Array(dists.length * 2);
  dists.forEach((d, i) => hashName(d.name, distHashes, 2 * i));
  const weightOf = (d: DistInput, i: number) => d.weights?.[i] ?? 1;
  const sketches: Uint8Array[] = dists.map((d) => {
    const order = d.values.map((_, i) => i).sort((a, b) => d.values[a]! - d.values[b]!);
    const sorted = Float64Array.from(order, (i) => d.values[i]!);
    const out = new Uint8Array(enc.bin(sorted, d.weights === undefined ? null : Uint32Array.from(order, (i) => weightOf(d, i)), 0, sorted.length));
    enc.encode(out, 0);
    return out;
  });
  const sketchEnds = new Uint32Array(dists.length);
  let end = 0;
  sketches.forEach((s, i) => (sketchEnds[i] = end += s.length));
  const sketchBytes = new Uint8Array(end);
  let at = 0;
  for (const s of sketches) {
    sketchBytes.set(s, at);
    at += s.length;
  }
  const nameHashes = new Uint32Array(named.length * 2);
  named.forEach((n, i) => hashName(n, nameHashes, 2 * i));
  const nameBytes = Buffer.from(named.join(''), 'latin1');
  const nameEnds = new Uint32Array(named.length);
  let nend = 0;
  named.forEach((n, i) => (nameEnds[i] = nend += n.length));
  return {
    pointHashes,
    pointKinds: Uint8Array.from(points.map((p) => p.kind)),
    pointValues: Float64Array.from(points.map((p) => p.value)),
    distHashes,
    distKinds: new Uint8Array(dists.length).fill(KindCode.Distribution),
    distCounts: Uint32Array.from(dists.map((d) => d.values.reduce((a, _, i) => a + weightOf(d, i), 0))),
    distSums: Float64Array.from(dists.map((d) => d.values.reduce((a, v, i) => a + v * weightOf(d, i), 0))),
    distMins: Float64Array.from(dists.map((d) => Math.min(...d.values))),
    distMaxes: Float64Array.from(dists.map((d) => Math.max(...d.values))),
    sketchEnds,
    sketchBytes: new Uint8Array(sketchBytes),
    nameHashes,
    nameEnds,
    nameBytes: new Uint8Array(nameBytes),
  };
}
