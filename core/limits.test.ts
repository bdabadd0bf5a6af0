// Input limits of the core API (issue 8): each refused with a clear error and counted.

import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Encoder, KindCode } from '../schema/codec.js';
import { buildColumns } from '../schema/testdata.js';
import { createApi } from './api.js';
import { coreLimits } from './limits.js';
import { queryLimits } from './query/parse.js';
import { StoredQueries } from './query/stored.js';
import { Store } from './store.js';

const dir = mkdtempSync(join(tmpdir(), 'apm-limits-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const store = new Store({ dir, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 30, flushGraceMs: 0, headBytesMax: 2 ** 30, metricsMax: 1000, diskBytesMax: 0, diskReserveBytes: 0 });
const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 1000, queriesMax: 10, lateSecondsMax: 100 });
const app = createApi(store, stored, { ingestBodyBytesMax: 100_000 });
const enc = new Encoder();
const now = Math.floor(Date.now() / 1000);

async function error(res: Response | Promise<Response>, status: number): Promise<string> {
  const r = await res;
  expect(r.status).toBe(status);
  return ((await r.json()) as { error: string }).error;
}

describe('API input limits', () => {
  it('refuses bad server ids and metric names at ingest (bad_name, counted)', async () => {
    const body = (server: string, name: string) =>
      enc.rackBatch({ rack: 'r1', batchSeq: 1, second: now - 5, late: false, servers: [{ server, blocks: [buildColumns([{ name, kind: KindCode.Gauge, value: 1 }], [])] }], rollup: buildColumns([], [], [name]) });
    expect(await error(app.request('/api/v1/ingest', { method: 'POST', body: body('web 1', 'cpu') }), 400)).toMatch(/bad_name.*"web 1"/);
    expect(await error(app.request('/api/v1/ingest', { method: 'POST', body: body('web-1', 'cpu load') }), 400)).toMatch(/bad_name/);
    expect(await (await app.request('/metrics')).text()).toMatch(/apm_core_batches_rejected_total\{reason="bad_name"\} 2/);
  });

  it('refuses oversized bodies, long queries and long ranges, each counted', async () => {
    const big = JSON.stringify({ name: 'x', query: 'y'.repeat(coreLimits.queryBodyBytesMax) });
    expect(await error(app.request('/api/v1/queries', { method: 'POST', body: big, headers: { 'content-type': 'application/json' } }), 413)).toMatch(/body exceeds 16384 bytes/);
    const long = `FROM ${'a,'.repeat(queryLimits.queryCharsMax)}b SELECT cpu WINDOW 1s COMPUTE max`;
    expect(await error(app.request(`/api/v1/query?q=${encodeURIComponent(long)}`), 400)).toMatch(/query is \d+ characters > limit 4096/);
    const q = encodeURIComponent('FROM * SELECT cpu WINDOW 1d COMPUTE max');
    expect(await error(app.request(`/api/v1/query?q=${q}&from=-40d`), 400)).toMatch(/spans 40 days > limit 31 days; .*stored query/);
    expect((await app.request(`/api/v1/query?q=${q}&from=-30d`)).status).toBe(200);
    const def = await stored.create('cpu', 'FROM * SELECT cpu WINDOW 1d COMPUTE max', Date.now());
    expect(await error(app.request(`/api/v1/queries/${def.id}/results?from=0&to=now`), 400)).toMatch(/days > limit 3660 days/);
    const m = await (await app.request('/metrics')).text();
    expect(m).toMatch(/apm_core_query_requests_refused_total\{reason="body_too_large"\} 1/);
    expect(m).toMatch(/apm_core_query_requests_refused_total\{reason="bad_request"\} 3/);
  });
});
