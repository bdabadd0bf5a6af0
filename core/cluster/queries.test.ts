// The watch of KV apm-queries (core/cluster/queries.ts watchAgain): opened again from the next
// revision when it ends. Before, a watch whose ordered consumer gave up (minutes without a
// JetStream quorum) ended silently, and the node never saw another node's changes again.

import { describe, expect, it } from 'vitest';
import type { KvWatchEntry } from '@nats-io/kv';
import { watchAgain } from './queries.js';

const entry = (revision: number, key: string) => ({ revision, key, operation: 'PUT' }) as unknown as KvWatchEntry;

/** A watch delivering `entries` then ending (or failing with `fail`). */
function watchOf(entries: KvWatchEntry[], fail?: string) {
  return {
    stop: () => undefined,
    async *[Symbol.asyncIterator]() {
      for (const e of entries) yield e;
      if (fail !== undefined) throw new Error(fail);
    },
  };
}

describe('the stored-query watch', () => {
  it('is opened again from the revision after its last entry when it ends or fails, with a growing backoff, until closed', async () => {
    const opened: number[] = [];
    const seen: number[] = [];
    const why: string[] = [];
    const slept: number[] = [];
    let closed = false;
    const watches = [watchOf([entry(1, 'a'), entry(2, 'b')]), watchOf([], 'no quorum'), watchOf([entry(3, 'c')])];
    await watchAgain({
      open: async (from) => {
        opened.push(from);
        const w = watches.shift();
        if (w === undefined) {
          closed = true;
          return watchOf([]);
        }
        return w;
      },
      onEntry: async (e) => void seen.push(e.revision),
      current: () => undefined,
      closed: () => closed,
      restarted: (w) => void why.push(w),
      sleep: async (ms) => void slept.push(ms),
    });
    expect(opened).toEqual([0, 3, 3, 4]);
    expect(seen).toEqual([1, 2, 3]);
    expect(why).toEqual([
      'ended after revision 2; watching again from 3 in 500 ms',
      'failed after revision 2: no quorum; watching again from 3 in 1000 ms',
      'ended after revision 3; watching again from 4 in 500 ms',
    ]);
    expect(slept).toEqual([500, 1000, 500]);
  });
});
