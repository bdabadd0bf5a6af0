// Export of history (issue 15), the worker's side: one metric's stored points over a span, as
// VictoriaMetrics JSON lines (the format POST /api/v1/import takes), a bounded chunk at a time:
//   {"metric":{"__name__":"rpc.count","server":"web-01","rack":"r1"},"values":[3,4],"timestamps":[1733000000000,1733000001000]}
// One line per (server, rack) per chunk, points in time order. A distribution is exported as four
// gauge series per (server, rack) — `<name>.count`, `.sum`, `.min`, `.max` — its sketches are not
// (the format holds numbers only); importing them back gives those four gauges. The rack rollup
// of a distribution is not exported (it is the merge of the servers' summaries). A counter's
// series carry the label apm_kind="counter", which the import reads (it takes any other series
// as a gauge), so a counter comes back a counter.

import { hashName } from '../../schema/names.js';
import { KindCode } from '../../schema/codec.js';
import type { DecodedRow } from '../block.js';
import type { MetricReader } from '../query/eval.js';

export const exportLimits = {
  /** Points (or summaries) one chunk holds before it stops at a block boundary: ~10 MB of JSON, ~100 ms of a worker. */
  entriesPerChunkMax: 200_000,
  /**
   * Blocks one chunk looks at, data or not: a day of 60 s blocks, ~1.5 ms when empty. Without it
   * a span with nothing in it (from=0) was one worker message walking every block to 2106: 75 s
   * in which that worker's shards ingested nothing.
   */
  blocksPerChunkMax: 1440,
} as const;

export interface ExportChunk {
  /** JSON lines, without their newline. */
  lines: string[];
  /** Where the next chunk starts (null: the span is done). */
  nextSecond: number | null;
  /** The next chunk's first rack id in the block of nextSecond (0: the block from its start). */
  nextRack: number;
  entries: number;
}

/** What an export reads: a store's rows, how many rack ids it gave, and which racks have rows of a metric in a block (a large block is read some racks at a time). */
export type ExportReader = MetricReader & { rackCount(): number; rackIdsOf(lo: number, hi: number, block: number): number[] };

interface Series {
  labels: { __name__: string; server: string; rack: string; apm_kind?: 'counter' };
  values: number[];
  timestamps: number[];
}

/**
 * The chunk of `name` from `fromSecond` (whole blocks of `blockSeconds`, at least one) up to
 * `toSecond` exclusive, stopping after the block that reaches entriesMax, or after
 * blocksPerChunkMax blocks. A block with more of this metric's rows (one per rack) than a chunk
 * holds, by the store's servers per rack, starts a chunk of its own and is read that many rows
 * at a time, one group a chunk, from rack id `rackFrom`: one block of 40,000 servers was 2.4 M
 * entries read in one step, ~1.4 s (a reviewer's script) in which the worker's shards ingested
 * nothing.
 */
export function exportChunk(store: ExportReader, name: string, fromSecond: number, toSecond: number, blockSeconds: number, entriesMax: number = exportLimits.entriesPerChunkMax, rackFrom = 0): ExportChunk {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  const series = new Map<string, Series>();
  let entries = 0;
  let block = fromSecond - (fromSecond % blockSeconds);
  const get = (server: string, rack: string, suffix: string): Series => {
    const key = `${server}\u0000${rack}\u0000${suffix}`;
    let s = series.get(key);
    if (s === undefined) series.set(key, (s = { labels: { __name__: name + suffix, server, rack }, values: [], timestamps: [] }));
    return s;
  };
  const add = (s: Series, second: number, v: number) => {
    s.values.push(v);
    s.timestamps.push(second * 1000);
  };
  // Rows (racks) per chunk: entriesMax over a rack's entries in a block (the store's servers
  // spread over its racks). A block with more rows of this metric is read that many rows at a
  // time, one group a chunk, from rack id `rackFrom` on; the others go whole, many a chunk.
  const perRack = Math.max(1, Math.ceil(store.registry.serverCount / Math.max(1, store.rackCount()))) * blockSeconds;
  const rowsPerChunk = Math.max(1, Math.floor(entriesMax / perRack));
  const first = block;
  const blocksEnd = block + exportLimits.blocksPerChunkMax * blockSeconds;
  /** Set when this chunk read part of a block: the rack id the next chunk starts from (null: the block is done). */
  let nextRack: number | null | undefined;
  while (block < toSecond && block < blocksEnd && entries < entriesMax) {
    const ids = store.rackIdsOf(h[0]!, h[1]!, block);
    let racks: { from: number; to: number } | undefined;
    if (rackFrom > 0 || ids.length > rowsPerChunk) {
      // A large block starts a chunk of its own.
      if (block !== first) break;
      const left = ids.filter((id) => id >= rackFrom);
      racks = { from: rackFrom, to: left.length > rowsPerChunk ? left[rowsPerChunk]! : Number.MAX_SAFE_INTEGER };
      nextRack = left.length > rowsPerChunk ? left[rowsPerChunk]! : null;
    }
    store.read(h[0]!, h[1]!, block, block + blockSeconds, (row: DecodedRow, blockStart: number, rackId: number) => {
      const rack = store.rackName(rackId) ?? `rack-${rackId}`;
      row.serverIds.forEach((sid, j) => {
        const server = store.registry.serverById(sid)?.name;
        if (server === undefined) return;
        if (row.kind !== KindCode.Distribution) {
          const s = get(server, rack, '');
          if (row.kind === KindCode.Counter) s.labels.apm_kind = 'counter';
          for (let i = row.pointStart[j]!; i < row.pointStart[j + 1]!; i++) {
            const second = blockStart + row.pointSecs[i]!;
            if (second < fromSecond || second >= toSecond) continue;
            add(s, second, row.pointVals[i]!);
            entries++;
          }
          return;
        }
        const d = row.dist;
        const cols = [
          ['.count', d.count],
          ['.sum', d.sum],
          ['.min', d.min],
          ['.max', d.max],
        ] as const;
        for (const [suffix, col] of cols) {
          const s = get(server, rack, suffix);
          for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) {
            const second = blockStart + d.secs[i]!;
            if (second >= fromSecond && second < toSecond) add(s, second, col[i]!);
          }
        }
        for (let i = row.distStart[j]!; i < row.distStart[j + 1]!; i++) {
          const second = blockStart + d.secs[i]!;
          if (second >= fromSecond && second < toSecond) entries++;
        }
      });
    }, racks === undefined ? {} : { racks });
    block += blockSeconds;
    if (racks !== undefined) break;
  }
  const lines: string[] = [];
  for (const s of series.values()) {
    if (s.values.length === 0) continue;
    // Rows of one block come per rack, stored then head: keep each series in time order.
    if (!ascending(s.timestamps)) sortTogether(s);
    lines.push(`{"metric":${JSON.stringify(s.labels)},"values":[${s.values.map(numberJson).join(',')}],"timestamps":[${s.timestamps.join(',')}]}`);
  }
  // A large block not done: the next chunk reads its next racks from the same second (rows of racks that came meanwhile included).
  if (typeof nextRack === 'number') return { lines, nextSecond: fromSecond, nextRack, entries };
  return { lines, nextSecond: block < toSecond ? block : null, nextRack: 0, entries };
}

function ascending(xs: number[]): boolean {
  for (let i = 1; i < xs.length; i++) if (xs[i]! < xs[i - 1]!) return false;
  return true;
}

function sortTogether(s: Series): void {
  const order = s.timestamps.map((_, i) => i).sort((a, b) => s.timestamps[a]! - s.timestamps[b]!);
  s.values = order.map((i) => s.values[i]!);
  s.timestamps = order.map((i) => s.timestamps[i]!);
}

/** A value as JSON, -0 as -0 (JSON.stringify writes 0: an export imported back changed the value's sign bit). Values are finite: the edges and the import refuse the others. */
function numberJson(v: number): string {
  return Object.is(v, -0) ? '-0' : String(v);
}
