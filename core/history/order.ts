// The order in which an import's buffered points are cut into requests: by (second, rack,
// server, metric), ties in arrival order. A comparator sort of the 1,000,000 buffered points
// held the HTTP thread ~0.5–1 s per flush (every import of a large file flushes again and
// again); this stable LSD radix sort, 16 bits a pass over the columns' used ranges, takes a few
// passes of linear work.

/**
 * Indexes 0..n−1 sorted by `columns` (unsigned integers below 2^32; the first column is the most
 * significant), equal keys in index order.
 */
export function orderBy(n: number, columns: readonly ArrayLike<number>[]): Uint32Array {
  let src = new Uint32Array(n);
  for (let i = 0; i < n; i++) src[i] = i;
  if (n < 2) return src;
  let dst = new Uint32Array(n);
  const count = new Uint32Array(65_537);
  // Least significant column first: each stable pass keeps the order of the passes before it.
  for (let c = columns.length - 1; c >= 0; c--) {
    const col = columns[c]!;
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = col[i]!;
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const span = max - min;
    // Values minus the column's least are below 2^32: `>>>` reads them exactly.
    for (let shift = 0; shift < 32 && span >= 2 ** shift; shift += 16) {
      count.fill(0);
      for (let i = 0; i < n; i++) count[(((col[src[i]!]! - min) >>> shift) & 0xffff) + 1]! += 1;
      for (let d = 1; d <= 65_536; d++) count[d]! += count[d - 1]!;
      for (let i = 0; i < n; i++) {
        const x = src[i]!;
        dst[count[((col[x]! - min) >>> shift) & 0xffff]!++] = x;
      }
      const t = src;
      src = dst;
      dst = t;
    }
  }
  return src;
}
