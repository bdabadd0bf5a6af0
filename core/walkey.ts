// Keys of a store's WAL (core/store.ts): [seq u48][shard u16], big-endian, so the WAL is one
// queue in arrival order. A commit appends its sections at the end of the B-tree (LMDB's append:
// full pages, none split), and entries go from its front once every block they belong to is
// written. Keyed by shard first (before the twenty-seventh session), each commit rewrote the last
// leaf page of every shard it touched (16 KiB a shard for a ~4 KB section) and freeing a block
// rewrote them again: the core bench wrote 39 bytes to the disk per point ingested, 32 of them
// the WAL's (/proc/<pid>/io), for sections of 3.2 bytes a point.

/** The WAL key of entry `seq`, a section of `shard`. */
export function walKey(seq: number, shard: number): Buffer {
  const k = Buffer.allocUnsafe(8);
  k.writeUIntBE(seq, 0, 6);
  k.writeUInt16BE(shard, 6);
  return k;
}

/** The entry's seq. */
export function walKeySeq(key: Uint8Array): number {
  // From the bytes (no Buffer view made per call: this runs for every section ingested and deleted).
  return (key[0]! * 256 + key[1]!) * 2 ** 32 + (((key[2]! << 24) | (key[3]! << 16) | (key[4]! << 8) | key[5]!) >>> 0);
}

/** The entry's shard. */
export function walKeyShard(key: Uint8Array): number {
  return (key[6]! << 8) | key[7]!;
}

/** Keys of the WAL before a directory's migration (shard first): [shard u16][seq u48]. */
export function legacyWalKeyParts(key: Uint8Array): { shard: number; seq: number } {
  const b = Buffer.from(key.buffer, key.byteOffset, key.byteLength);
  return { shard: b.readUInt16BE(0), seq: b.readUIntBE(2, 6) };
}
