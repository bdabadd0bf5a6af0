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
});
