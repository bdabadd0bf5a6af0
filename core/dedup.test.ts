// De-duplication marks (core/dedup.ts): how many (shard, rack) entries a store keeps, and which go.

import { describe, expect, it } from 'vitest';
import { Dedup } from './dedup.js';

const noDisk = { getRange: () => [], get: () => undefined, put: () => undefined, remove: () => undefined } as unknown as ConstructorParameters<typeof Dedup>[0];

describe('Dedup', () => {
  it('regression: holds every (shard, rack) of racksMax racks over the store\'s shards (it held racksMax × 4: active racks were evicted and their retries stored twice)', () => {
    const d = new Dedup(noDisk, { racksMax: 100, shards: 32 });
    for (let r = 0; r < 20; r++) for (let k = 0; k < 32; k++) d.mark(k, `r${r}`, 0, 1, 7);
    expect(d.counters.evicted).toBe(0);
    let seen = 0;
    for (let r = 0; r < 20; r++) for (let k = 0; k < 32; k++) if (d.seen(k, `r${r}`, 0, 1, 7)) seen++;
    expect(seen).toBe(640);
  });

  it('evicts the least recently marked entry first, not the oldest made', () => {
    const d = new Dedup(noDisk, { racksMax: 1, shards: 4 }); // 4 entries
    for (let k = 0; k < 4; k++) d.mark(k, 'busy', 0, 1, 1);
    d.mark(0, 'busy', 0, 1, 2); // shard 0 is in use again
    d.mark(0, 'new', 0, 1, 1); // a fifth entry: shard 1's goes (least recently marked)
    expect(d.counters.evicted).toBe(1);
    expect([d.seen(0, 'busy', 0, 1, 2), d.seen(1, 'busy', 0, 1, 1), d.seen(2, 'busy', 0, 1, 1)]).toEqual([true, false, true]);
  });
});
