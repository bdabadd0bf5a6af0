import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openLmdb } from '../lib/lmdb.js';
import { ServerTable } from './servers.js';

describe('ServerTable (the node\'s server list, real LMDB)', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

  it('regression: forgets servers silent past the retention, durably, so the list makes room for new ones (before: it kept every name ever seen, and once serversMax were listed no new server was)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-servers-'));
    dirs.push(dir);
    const hour = 3600_000;
    const open = () => {
      const env = openLmdb({ path: dir, mapSize: 1 << 24, maxDbs: 4 });
      return { env, table: new ServerTable(env.openDB({ name: 'servers', encoding: 'json' }), 2, 24 * hour) };
    };
    let { env, table } = open();
    table.seen('r1', ['old'], 0);
    table.seen('r1', ['busy'], 0);
    table.seen('r1', ['busy'], 25 * hour);
    table.seen('r2', ['new'], 25 * hour);
    expect(table.refused).toBe(1); // full: two listed
    await table.save({ all: true }, 25 * hour);
    expect(table.all().map((s) => s.name).sort()).toEqual(['busy', 'old']); // within the retention and the hour's margin
    await table.save({ all: true }, 26 * hour);
    expect([table.all().map((s) => s.name), table.forgotten]).toEqual([['busy'], 1]);
    table.seen('r2', ['new'], 26 * hour);
    expect(table.all().map((s) => s.name).sort()).toEqual(['busy', 'new']);
    await table.save({ all: true }, 26 * hour);
    await env.close();
    ({ env, table } = open());
    expect(table.all().map((s) => s.name).sort()).toEqual(['busy', 'new']);
    await env.close();
  });
});
