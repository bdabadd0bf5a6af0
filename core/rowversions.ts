// Which blocks' rows changed, and when (issue 14): the store counts every change to its rows in
// one epoch and remembers, per (shard, block), the epoch of the last change. An answer computed
// from rows at epoch E (core/query/windowcache.ts) is still the answer while none of the blocks
// it read has a later change. In memory only: a restarted worker starts with empty caches.
//
// Bounded: a shard remembers its blocksPerShardMax most recently changed blocks; a block it has
// forgotten answers with the latest epoch it forgot (too new, never too old: a cached answer can
// be dropped for nothing, never kept past a change).

/** Blocks remembered per shard (a day of one-minute blocks, ~100 KB per shard at most). */
export const blocksPerShardMax = 1440;

interface ShardVersions {
  /** Epoch of the last change of each remembered block (insertion order: oldest change first). */
  blocks: Map<number, number>;
  /** The latest epoch among forgotten blocks. */
  forgotten: number;
  /** The last change to the whole shard (a restore, a wipe). */
  whole: number;
  /** Blocks below this were deleted by the retention at epoch `deletedAt`. */
  deletedBelow: number;
  deletedAt: number;
}

export class RowVersions {
  /** The epoch of the latest change (0: none since the store opened). */
  epoch = 0;
  private readonly shards = new Map<number, ShardVersions>();

  constructor(private readonly blocksMax = blocksPerShardMax) {}

  private of(shard: number): ShardVersions {
    let v = this.shards.get(shard);
    if (v === undefined) this.shards.set(shard, (v = { blocks: new Map(), forgotten: 0, whole: 0, deletedBelow: -Infinity, deletedAt: 0 }));
    return v;
  }

  /** Rows of (shard, block) were written (new, or merged with late data). */
  wrote(shard: number, block: number): void {
    const v = this.of(shard);
    const epoch = ++this.epoch;
    v.blocks.delete(block);
    v.blocks.set(block, epoch);
    if (v.blocks.size > this.blocksMax) {
      for (const [b, e] of v.blocks) {
        v.blocks.delete(b);
        v.forgotten = Math.max(v.forgotten, e);
        if (v.blocks.size <= this.blocksMax) break;
      }
    }
  }

  /** Any row of the shard may have changed (restored, wiped). */
  wroteShard(shard: number): void {
    this.of(shard).whole = ++this.epoch;
  }

  /** Rows of the shard's blocks below `block` were deleted (retention). */
  deletedBelow(shard: number, block: number): void {
    const v = this.of(shard);
    v.deletedBelow = Math.max(v.deletedBelow, block);
    v.deletedAt = ++this.epoch;
  }

  /** The epoch of the last change to rows of (shard, block) this store knows of (0: none since it opened). */
  version(shard: number, block: number): number {
    const v = this.shards.get(shard);
    if (v === undefined) return 0;
    const own = v.blocks.get(block) ?? v.forgotten;
    return Math.max(own, v.whole, block < v.deletedBelow ? v.deletedAt : 0);
  }
}
