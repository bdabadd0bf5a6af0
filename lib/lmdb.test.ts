import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deleteRange, openLmdb } from './lmdb.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('deleteRange', () => {
  it('deletes [start, end) in batches, and ends at the next batch once stopped says so (a store about to close)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-lmdb-'));
    dirs.push(dir);
    const env = openLmdb({ path: dir, maxDbs: 2 });
    const db = env.openDB<number, number>({ name: 'k' });
    env.transactionSync(() => {
      for (let k = 0; k < 100; k++) void db.put(k, k);
    });
    // All of [10, 60) in batches of 7.
    expect(await deleteRange(env, db, 10, 60, 7)).toBe(50);
    expect([...db.getKeys({ start: 0, end: 100 })].length).toBe(50);
    // Stopped after the first batch: one batch of [60, 100) goes, the rest stays for the next sweep.
    let batches = 0;
    expect(await deleteRange(env, db, 60, 100, 7, () => batches++ >= 1)).toBe(7);
    expect([...db.getKeys({ start: 60, end: 100 })].length).toBe(33);
    // Stopped before it starts: nothing goes.
    expect(await deleteRange(env, db, 60, 100, 7, () => true)).toBe(0);
    await env.close();
  });
});
