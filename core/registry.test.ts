// The server and metric registry's persistence (core/registry.ts).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openLmdb } from '../lib/lmdb.js';
import { Registry, type StoredMetric, type StoredServer } from './registry.js';

const dir = mkdtempSync(join(tmpdir(), 'apm-registry-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('Registry', () => {
  it('regression: entries whose write transaction failed are written by the next one (they were marked written before the commit: lost, and their ids later given to others)', async () => {
    const root = openLmdb({ path: dir, maxDbs: 4 });
    const dbs = () => [root.openDB<StoredServer, string>({ name: 'servers', encoding: 'json' }), root.openDB<StoredMetric, string>({ name: 'metrics', encoding: 'json' })] as const;
    const reg = new Registry(...dbs(), 100);
    reg.server('web-1', 'r1', 1000);
    expect(() =>
      root.transactionSync(() => {
        reg.flushDirty();
        throw new Error('MDB_MAP_FULL'); // the commit fails: nothing of it is written
      }),
    ).toThrow();
    expect(new Registry(...dbs(), 100).serverByName('web-1')).toBeUndefined();
    root.transactionSync(() => reg.flushDirty());
    reg.flushed();
    expect(new Registry(...dbs(), 100).serverByName('web-1')?.id).toBe(reg.serverByName('web-1')!.id);
    await root.close();
  });

  it('regression: a periodic save writes the last-seen times far behind, spread over time, not every entry each time (a million metrics rewritten every 10 s held a worker ~2.3 s)', async () => {
    const root = openLmdb({ path: mkdtempSync(join(tmpdir(), 'apm-registry-due-')), maxDbs: 4 });
    const dbs = () => [root.openDB<StoredServer, string>({ name: 'servers', encoding: 'json' }), root.openDB<StoredMetric, string>({ name: 'metrics', encoding: 'json' })] as const;
    const reg = new Registry(...dbs(), 2000);
    const step = 600_000;
    const save = () => {
      root.transactionSync(() => reg.flushDirty());
      reg.flushed();
    };
    const seeAll = (ms: number) => {
      reg.server('s-1', 'r1', ms);
      for (let m = 0; m < 1000; m++) reg.metric(m + 1, 7, 0, ms);
    };
    seeAll(0);
    save();
    // Seen every second since: 10 s on, nothing is due.
    seeAll(10_000);
    expect(reg.touchDue(step, 100_000)).toBe(0);
    // Past step plus the jitter (up to step again) every entry is, spread between the two.
    const due: number[] = [];
    for (let t = step; t <= 2 * step; t += step / 10) {
      seeAll(t);
      due.push(reg.touchDue(step, 100_000));
      save();
    }
    expect(due.reduce((a, b) => a + b, 0)).toBe(1001);
    expect(Math.max(...due)).toBeLessThan(300);
    // At most `most` a save; the rest the next time.
    seeAll(5 * step);
    expect(reg.touchDue(step, 400)).toBe(400);
    save();
    expect(reg.touchDue(step, 10_000)).toBe(601);
    save();
    // What is on disk lags what is in memory by less than two steps.
    const reread = new Registry(...dbs(), 2000);
    expect(reread.serverByName('s-1')!.lastSeenMs).toBe(5 * step);
    await root.close();
  });

  it('regression: with more entries due than a save writes, each save goes on where the last stopped (before: each began at the start, and the last entries were never written again)', async () => {
    const root = openLmdb({ path: mkdtempSync(join(tmpdir(), 'apm-registry-rr-')), maxDbs: 4 });
    const reg = new Registry(root.openDB<StoredServer, string>({ name: 'servers', encoding: 'json' }), root.openDB<StoredMetric, string>({ name: 'metrics', encoding: 'json' }), 4000);
    const step = 600_000;
    const saveEvery = 10_000;
    // 20 a save: 2 a second, for 3,000 entries due every 10 to 20 minutes (~3.3 a second).
    const most = 20;
    for (let m = 0; m < 3000; m++) reg.metric(m + 1, 9, 0, 0);
    root.transactionSync(() => reg.flushDirty());
    reg.flushed();
    for (let t = saveEvery; t <= 3 * 3600_000; t += saveEvery) {
      for (let m = 0; m < 3000; m++) reg.metric(m + 1, 9, 0, t);
      reg.touchDue(step, most);
      root.transactionSync(() => reg.flushDirty());
      reg.flushed();
    }
    const reread = new Registry(root.openDB<StoredServer, string>({ name: 'servers', encoding: 'json' }), root.openDB<StoredMetric, string>({ name: 'metrics', encoding: 'json' }), 4000);
    // Every entry's time on disk lags by at most twice the step and one pass over them all (3,000 / 20 saves of 10 s).
    const lagMax = Math.max(...reread.allMetrics().map((m) => 3 * 3600_000 - m.lastSeenMs));
    expect(lagMax).toBeLessThanOrEqual(2 * step + (3000 / most) * saveEvery + saveEvery);
    await root.close();
  });
});
