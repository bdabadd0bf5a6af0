// The dashboard's HTTP side (issue 6): page and assets with cache validators, strict CSP, the
// fleet view's status route and the racks' reports — in process through app.request().

import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openNode } from './node.js';
import { CoreStatus, parseRackStatus } from './status.js';

const dir = mkdtempSync(join(tmpdir(), 'apm-dash-'));
// racksMax 2: the status table keeps the reports of two racks.
const node = await openNode({ dataDir: dir, workers: 1, shards: 8, retentionSeconds: 86400, queryLatenessMs: 0, flushGraceMs: 0, limits: { ingestBodyBytesMax: 100_000, racksMax: 2, statusSamplesMax: 11 } });
afterAll(async () => {
  await node.close();
  rmSync(dir, { recursive: true, force: true });
});
const app = node.app;
const post = (body: unknown) => ({ method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json' } });

describe('dashboard routes', () => {
  it('serves the page with hashed asset URLs, immutable assets, 304 on a matching ETag and a CSP without external sources', async () => {
    const page = await app.request('/');
    expect(page.status).toBe(200);
    expect(page.headers.get('cache-control')).toBe('no-cache');
    const csp = page.headers.get('content-security-policy')!;
    expect(csp).toContain("default-src 'self'");
    expect(csp).not.toMatch(/https?:/);
    const html = await page.text();
    const urls = [...html.matchAll(/(?:src|href)="(\/ui\/[^"]+)"/g)].map((m) => m[1]!);
    expect(urls.map((u) => u.replace(/\?v=[0-9a-f]{12}$/, ''))).toEqual(['/ui/favicon.svg', '/ui/uplot.css', '/ui/app.css', '/ui/uplot.js', '/ui/app.js']);
    for (const u of urls) {
      const r = await app.request(u);
      expect(r.status, u).toBe(200);
      expect(r.headers.get('cache-control'), u).toBe('public, max-age=31536000, immutable');
      expect((await r.arrayBuffer()).byteLength, u).toBeGreaterThan(u.includes('favicon') ? 100 : 1000);
      expect((await app.request(u, { headers: { 'if-none-match': r.headers.get('etag')! } })).status, u).toBe(304);
    }
    // A stale hash is served but not cached for a year.
    expect((await app.request('/ui/app.js?v=000000000000')).headers.get('cache-control')).toBe('no-cache');
    expect((await app.request('/ui/nope.js')).status).toBe(404);
    expect(html).not.toContain('{{');
  });

  it('serves an icon: the page links its hashed URL, /favicon.ico answers browsers that ask anyway (issue 15: a 404 on every load)', async () => {
    const html = await (await app.request('/')).text();
    expect(html).toMatch(/<link rel="icon" href="\/ui\/favicon\.svg\?v=[0-9a-f]{12}" type="image\/svg\+xml">/);
    const r = await app.request('/favicon.ico');
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('image/svg+xml');
    expect(r.headers.get('cache-control')).toBe('public, max-age=86400');
    expect(await r.text()).toMatch(/^<svg /);
    expect((await app.request('/favicon.ico', { headers: { 'if-none-match': r.headers.get('etag')! } })).status).toBe(304);
    // app.js imports ./columns.js: served too, revalidated (its URL has no hash).
    const cols = await app.request('/ui/columns.js');
    expect(cols.status).toBe(200);
    expect(cols.headers.get('cache-control')).toBe('no-cache');
  });

  it('keeps each rack report, validates it, bounds the table and shows it in the status', async () => {
    const good = { datagramsReceived: 10, partsRecovered: 3, partsLost: 1, spoolBytes: 4096, spoolBatches: 2, servers: 40 };
    expect((await app.request('/api/v1/racks/r1/status', post(good))).status).toBe(204);
    // not JSON, a negative counter, a bad rack id
    expect((await app.request('/api/v1/racks/r1/status', post('{'))).status).toBe(400);
    const neg = await app.request('/api/v1/racks/r1/status', post({ partsLost: -1 }));
    expect(((await neg.json()) as { error: string }).error).toBe('"partsLost" must be a non-negative number, got -1');
    expect((await app.request(`/api/v1/racks/${'x'.repeat(300)}/status`, post(good))).status).toBe(400);
    expect((await app.request('/api/v1/racks/r2/status', post(good))).status).toBe(204);
    // racksMax 2: a third rack is refused and counted, the known ones still report.
    expect((await app.request('/api/v1/racks/r3/status', post(good))).status).toBe(429);
    expect((await app.request('/api/v1/racks/r1/status', post({ ...good, partsLost: 5 }))).status).toBe(204);
    const s = (await (await app.request('/api/v1/status')).json()) as { core: { racksRefused: number }; racks: { id: string; report: { partsLost: number; spoolBytes: number } | null }[] };
    expect(s.core).toMatchObject({ racksRefused: 1, shards: 8, workers: 1, workersUp: 1 });
    expect(await (await app.request('/metrics')).text()).toMatch(/^apm_core_rack_reports_refused_total 1$/m);
    expect(s.racks.map((r) => [r.id, r.report?.partsLost, r.report?.spoolBytes])).toEqual([
      ['r1', 5, 4096],
      ['r2', 1, 4096],
    ]);
  });
});

describe('multiplexed live stream', () => {
  it('refuses a stream without ids or with an unknown one', async () => {
    expect((await app.request('/api/v1/live')).status).toBe(400);
    const r = await app.request('/api/v1/live?ids=nope');
    expect(r.status).toBe(404);
    expect(await r.json()).toEqual({ error: 'no stored query nope', unknown: ['nope'] });
  });
});

describe('CoreStatus', () => {
  it('computes ingest rates over the sampled span and tracks the newest second', () => {
    const s = new CoreStatus({ racksMax: 10, samplesMax: 3 });
    expect(s.rates().pointsPerSecond).toBe(0);
    s.sample(1000, { points: 0, batches: 0, bytes: 0 });
    s.sample(2000, { points: 500, batches: 1, bytes: 100 });
    s.sample(3000, { points: 1500, batches: 2, bytes: 300 });
    expect(s.rates()).toEqual({ pointsPerSecond: 750, batchesPerSecond: 1, bytesPerSecond: 150, spanMs: 2000 });
    // the oldest sample leaves the span
    s.sample(4000, { points: 1600, batches: 3, bytes: 300 });
    expect(s.rates().pointsPerSecond).toBe(550);
    s.noteSecond(50);
    s.noteSecond(40);
    expect(s.newestSecond).toBe(50);
  });

  it('refuses reports that are not flat objects of finite non-negative numbers', () => {
    expect(parseRackStatus([])).toBe('body must be a JSON object of counters');
    expect(parseRackStatus({ spoolBytes: 'x' })).toBe('"spoolBytes" must be a non-negative number, got "x"');
    expect(parseRackStatus({ spoolBytes: Infinity })).toMatch(/spoolBytes/);
    expect(parseRackStatus({ spoolBytes: 7 })).toMatchObject({ spoolBytes: 7, partsLost: 0 });
  });
});
