// Input limits of the core API (issue 8): each refused with a clear error and counted.

import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KindCode } from '../schema/codec.js';
import { rackSecondBody } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { coreLimits } from './limits.js';
import { openNode } from './node.js';
import { queryLimits } from './query/parse.js';

const dir = mkdtempSync(join(tmpdir(), 'apm-limits-'));
const node = await openNode({ dataDir: dir, workers: 1, shards: 8, queryLatenessMs: 0, flushGraceMs: 0, limits: { ingestBodyBytesMax: 100_000 } });
afterAll(async () => {
  await node.close();
  rmSync(dir, { recursive: true, force: true });
});
const app = node.app;
const now = Math.floor(Date.now() / 1000);

async function error(res: Response | Promise<Response>, status: number): Promise<string> {
  const r = await res;
  expect(r.status).toBe(status);
  return ((await r.json()) as { error: string }).error;
}

describe('API input limits', () => {
  it('refuses bad server ids and metric names at ingest (bad_name, counted)', async () => {
    const body = (server: string, name: string) =>
      rackSecondBody({ rack: 'r1', session: 1, seq: 1, second: now - 5, late: false, shards: 8, servers: [{ server, blocks: [buildColumns([{ name, kind: KindCode.Gauge, value: 1 }], [])] }], rollup: buildColumns([], [], [name]) });
    expect(await error(app.request('/api/v1/ingest', { method: 'POST', body: body('web 1', 'cpu') }), 400)).toMatch(/bad_name.*"web 1"/);
    expect(await error(app.request('/api/v1/ingest', { method: 'POST', body: body('web-1', 'cpu load') }), 400)).toMatch(/bad_name/);
    // The server id is refused by the HTTP thread, the metric name by the worker owning its
    // shard: both count under one reason.
    expect(await (await app.request('/metrics')).text()).toMatch(/^apm_core_requests_rejected_total\{reason="bad_name"\} 2$/m);
  });

  it('refuses oversized bodies, long queries and long ranges, each counted', async () => {
    const big = JSON.stringify({ name: 'x', query: 'y'.repeat(coreLimits.queryBodyBytesMax) });
    expect(await error(app.request('/api/v1/queries', { method: 'POST', body: big, headers: { 'content-type': 'application/json' } }), 413)).toMatch(/body exceeds 16384 bytes/);
    const long = `FROM ${'a,'.repeat(queryLimits.queryCharsMax)}b SELECT cpu WINDOW 1s COMPUTE max`;
    expect(await error(app.request(`/api/v1/query?q=${encodeURIComponent(long)}`), 400)).toMatch(/query is \d+ characters > limit 4096/);
    const q = encodeURIComponent('FROM * SELECT cpu WINDOW 1d COMPUTE max');
    expect(await error(app.request(`/api/v1/query?q=${q}&from=-40d`), 400)).toMatch(/spans 40 days > limit 31 days; .*stored query/);
    expect((await app.request(`/api/v1/query?q=${q}&from=-30d`)).status).toBe(200);
    const def = await node.stored.create('cpu', 'FROM * SELECT cpu WINDOW 1d COMPUTE max', Date.now());
    expect(await error(app.request(`/api/v1/queries/${def.id}/results?from=0&to=now`), 400)).toMatch(/days > limit 3660 days/);
    const m = await (await app.request('/metrics')).text();
    expect(m).toMatch(/apm_core_query_requests_refused_total\{reason="body_too_large"\} 1/);
    expect(m).toMatch(/apm_core_query_requests_refused_total\{reason="bad_request"\} 3/);
  });
});
