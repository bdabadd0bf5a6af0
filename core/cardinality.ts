// Metric cardinality at ingest (issue 8): a batch's new metrics are registered only while their
// server's budget (metrics it introduced) and the registry's total allow; a refused metric's
// points and summaries are taken out of the batch before it reaches the head, and counted.
// Steady state costs one registry probe per rack metric per batch (as before); servers' columns
// are scanned only when a batch names metrics the registry does not hold.

import type { RackBatchMessage, SeriesColumns } from '../schema/codec.js';
import { HashIndex } from '../schema/hashtable.js';
import type { Registry } from './registry.js';

export interface AdmitOptions {
  nowMs: number;
  perServerMax: number;
}

/** Notes the batch's metrics; returns the refused ones (null: none), whose data must not be stored. */
export function admitMetrics(reg: Registry, msg: RackBatchMessage, serverIds: Uint32Array, opts: AdmitOptions): HashIndex | null {
  const fresh = freshMetrics(reg, msg.rollup, opts.nowMs);
  if (fresh === null) return null;
  const owners = firstServers(fresh.index, msg, serverIds);
  let drop: HashIndex | null = null;
  for (let k = 0; k < fresh.index.size; k++) {
    const lo = fresh.lo[k]!;
    const hi = fresh.hi[k]!;
    if (reg.admit({ lo, hi, kind: fresh.kind[k]!, nowMs: opts.nowMs, serverId: owners[k]!, perServerMax: opts.perServerMax }) === null) continue;
    drop ??= new HashIndex(fresh.index.size);
    drop.insert(lo, hi);
  }
  return drop;
}

interface Fresh {
  index: HashIndex;
  lo: Uint32Array;
  hi: Uint32Array;
  kind: Uint8Array;
}

/** The rack's metrics (rollup entries and names) the registry does not hold, or null. */
function freshMetrics(reg: Registry, r: SeriesColumns, nowMs: number): Fresh | null {
  let fresh: Fresh | null = null;
  const n = r.distKinds.length + r.nameEnds.length;
  const note = (lo: number, hi: number, kind: number) => {
    if (reg.touch(lo, hi, nowMs) >= 0) return;
    fresh ??= { index: new HashIndex(n), lo: new Uint32Array(n), hi: new Uint32Array(n), kind: new Uint8Array(n) };
    const before = fresh.index.size;
    const k = fresh.index.insert(lo, hi);
    if (k !== before) return;
    fresh.lo[k] = lo;
    fresh.hi[k] = hi;
    fresh.kind[k] = kind;
  };
  for (let i = 0; i < r.distKinds.length; i++) note(r.distHashes[2 * i]!, r.distHashes[2 * i + 1]!, r.distKinds[i]!);
  // Names without rollup entries (a name refresh) register with kind 0, as before.
  for (let j = 0; j < r.nameEnds.length; j++) note(r.nameHashes[2 * j]!, r.nameHashes[2 * j + 1]!, 0);
  return fresh;
}

/** For each fresh metric, the registry id of the first server in the batch that has it (−1: none). */
function firstServers(fresh: HashIndex, msg: RackBatchMessage, serverIds: Uint32Array): Int32Array {
  const owners = new Int32Array(fresh.size).fill(-1);
  let left = fresh.size;
  for (let j = 0; j < msg.servers.length && left > 0; j++) {
    const c = msg.servers[j]!.series;
    for (const hashes of [c.pointHashes, c.distHashes]) {
      for (let i = 0; i < hashes.length; i += 2) {
        const k = fresh.get(hashes[i]!, hashes[i + 1]!);
        if (k < 0 || owners[k]! >= 0) continue;
        owners[k] = serverIds[j]!;
        left--;
      }
    }
  }
  return owners;
}

/** The batch without the `drop` metrics' entries, and how many server entries were taken out. */
export function withoutMetrics(msg: RackBatchMessage, drop: HashIndex): { msg: RackBatchMessage; dropped: number } {
  let dropped = 0;
  const servers = msg.servers.map((s) => {
    const f = filterColumns(s.series, drop);
    dropped += f.dropped;
    return { ...s, series: f.columns };
  });
  return { msg: { ...msg, servers, rollup: filterColumns(msg.rollup, drop).columns }, dropped };
}

/** Columns without entries whose hash is in `drop` (names are kept: they are only a dictionary). */
export function filterColumns(c: SeriesColumns, drop: HashIndex): { columns: SeriesColumns; dropped: number } {
  const keepP: number[] = [];
  for (let i = 0; i < c.pointKinds.length; i++) if (drop.get(c.pointHashes[2 * i]!, c.pointHashes[2 * i + 1]!) < 0) keepP.push(i);
  const keepD: number[] = [];
  for (let i = 0; i < c.distKinds.length; i++) if (drop.get(c.distHashes[2 * i]!, c.distHashes[2 * i + 1]!) < 0) keepD.push(i);
  const dropped = c.pointKinds.length - keepP.length + (c.distKinds.length - keepD.length);
  if (dropped === 0) return { columns: c, dropped };
  const pick = <T extends Uint8Array | Uint32Array | Float64Array>(a: T, keep: number[], make: (n: number) => T): T => {
    const out = make(keep.length);
    keep.forEach((i, k) => (out[k] = a[i]!));
    return out;
  };
  const pairs = (a: Uint32Array, keep: number[]) => {
    const out = new Uint32Array(2 * keep.length);
    keep.forEach((i, k) => out.set(a.subarray(2 * i, 2 * i + 2), 2 * k));
    return out;
  };
  const sketchEnds = new Uint32Array(keepD.length);
  const sketchBytes = new Uint8Array(keepD.reduce((n, i) => n + c.sketchEnds[i]! - (i === 0 ? 0 : c.sketchEnds[i - 1]!), 0));
  let at = 0;
  keepD.forEach((i, k) => {
    const start = i === 0 ? 0 : c.sketchEnds[i - 1]!;
    sketchBytes.set(c.sketchBytes.subarray(start, c.sketchEnds[i]!), at);
    at += c.sketchEnds[i]! - start;
    sketchEnds[k] = at;
  });
  const columns: SeriesColumns = {
    ...c,
    pointHashes: pairs(c.pointHashes, keepP),
    pointKinds: pick(c.pointKinds, keepP, (n) => new Uint8Array(n)),
    pointValues: pick(c.pointValues, keepP, (n) => new Float64Array(n)),
    distHashes: pairs(c.distHashes, keepD),
    distKinds: pick(c.distKinds, keepD, (n) => new Uint8Array(n)),
    distCounts: pick(c.distCounts, keepD, (n) => new Uint32Array(n)),
    distSums: pick(c.distSums, keepD, (n) => new Float64Array(n)),
    distMins: pick(c.distMins, keepD, (n) => new Float64Array(n)),
    distMaxes: pick(c.distMaxes, keepD, (n) => new Float64Array(n)),
    sketchEnds,
    sketchBytes,
  };
  return { columns, dropped };
}
