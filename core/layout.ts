// The data directory of a core node (DESIGN §9, issue 12), fixed when it is created:
//   core.json        {"format": 2, "shards": S, "stores": E}: S shards (metric hash lo32 mod S)
//                    kept in E LMDB environments ("stores"), shard k in store k mod E.
//   meta/            LMDB: stored-query definitions and the server registry (small, shared).
//   store-<e>/       LMDB: the WAL, rows, de-duplication marks, metric registry and stored-query
//                    results of the shards k ≡ e (mod E); every key starts with its shard, so a
//                    shard's data is a contiguous key range that can be copied on its own.
// Workers own stores: worker w of N owns the stores e ≡ w (mod N). A store is one environment,
// so the sections of one request that land on one worker commit in one synced transaction per
// store: fsyncs per second grow with the workers, not with S (docs/design-notes.md, "Shards").
// E is the worker count the directory was created with; a core started later with more
// workers than stores runs E of them (it says so), one with fewer gives a worker several stores.

import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { shardsDefault, shardsMax } from '../schema/limits.js';
import { isValidShardCount, shardOf } from '../schema/section.js';

export const layoutFormat = 2;

export interface Layout {
  shards: number;
  stores: number;
}

export class LayoutError extends Error {}

/** Reads core.json, or creates it with `create` when the directory has none. */
export function openLayout(dir: string, create: { shards?: number; stores: number }): Layout {
  const file = join(dir, 'core.json');
  if (!existsSync(file)) {
    if (existsSync(join(dir, 'data.mdb'))) {
      throw new LayoutError(`${dir} holds a data directory of an earlier apm core (one LMDB file, no core.json); this core keeps shards (format ${layoutFormat}). Start with a new --data directory`);
    }
    const layout = { shards: create.shards ?? shardsDefault, stores: create.stores };
    checkLayout(layout, file);
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, `${JSON.stringify({ format: layoutFormat, ...layout })}\n`);
    renameSync(tmp, file);
    return layout;
  }
  let parsed: { format?: unknown; shards?: unknown; stores?: unknown };
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8')) as typeof parsed;
  } catch (err) {
    throw new LayoutError(`${file} does not parse (${(err as Error).message}); it records the data directory's shards and stores — restore it from a backup`, { cause: err });
  }
  if (parsed.format !== layoutFormat) throw new LayoutError(`${file} has format ${String(parsed.format)}; this core reads format ${layoutFormat}`);
  const layout = { shards: Number(parsed.shards), stores: Number(parsed.stores) };
  checkLayout(layout, file);
  if (create.shards !== undefined && create.shards !== layout.shards) {
    throw new LayoutError(`--shards ${create.shards}, but ${dir} was created with ${layout.shards} shards (S is fixed when a data directory is created); drop --shards or use a new --data directory`);
  }
  return layout;
}

function checkLayout(l: Layout, file: string): void {
  if (!isValidShardCount(l.shards)) throw new LayoutError(`${file}: shards ${l.shards} is not a power of two in 1..${shardsMax}`);
  if (!Number.isInteger(l.stores) || l.stores < 1 || l.stores > l.shards) throw new LayoutError(`${file}: stores ${l.stores} is not in 1..shards (${l.shards})`);
}

/** Where shards live and which worker owns them. */
export class Placement {
  /** Workers that run: at most one per store. */
  readonly workers: number;

  constructor(
    readonly layout: Layout,
    workersWanted: number,
  ) {
    this.workers = Math.max(1, Math.min(workersWanted, layout.stores));
  }

  shardOfHash(lo: number): number {
    return shardOf(lo, this.layout.shards);
  }

  storeOfShard(shard: number): number {
    return shard % this.layout.stores;
  }

  workerOfShard(shard: number): number {
    return this.storeOfShard(shard) % this.workers;
  }

  /** The stores worker w owns. */
  storesOf(w: number): number[] {
    const out: number[] = [];
    for (let e = w; e < this.layout.stores; e += this.workers) out.push(e);
    return out;
  }

  /** The shards store e holds. */
  shardsOf(store: number): number[] {
    const out: number[] = [];
    for (let k = store; k < this.layout.shards; k += this.layout.stores) out.push(k);
    return out;
  }
}
