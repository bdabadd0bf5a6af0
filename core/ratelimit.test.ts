import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createApi } from './api.js';
import { ApiAuth, hashToken, parseTokens, TokenSet } from './auth.js';
import { coreLimits } from './limits.js';
import { openNode } from './node.js';
import { RateLimiter } from './ratelimit.js';

const dir = mkdtempSync(join(tmpdir(), 'apm-rate-'));
const node = await openNode({ dataDir: dir, workers: 1, shards: 4, queryLatenessMs: 0 });
afterAll(async () => {
  await node.close();
  rmSync(dir, { recursive: true, force: true });
});
const parts = { pool: node.pool, servers: node.servers, stored: node.stored };

describe('token buckets', () => {
  it('allows a burst, then refills at the rate, and says how long to wait', () => {
    const r = new RateLimiter({ ratePerSecond: 10, burst: 5, bucketsMax: 100 });
    for (let i = 0; i < 5; i++) expect(r.take('a', 1, 1000)).toBe(0);
    expect(r.take('a', 1, 1000)).toBe(100); // one token comes back in 100 ms
    expect(r.take('b', 1, 1000)).toBe(0); // another client has its own bucket
    expect(r.take('a', 1, 1100)).toBe(0);
    expect(r.take('a', 3, 1100)).toBe(300);
    expect(r.take('a', 1, 60_000)).toBe(0);
    expect(r.counters.limited).toBe(2);
  });

  it('keeps at most bucketsMax buckets, evicting the least recently used', () => {
    const r = new RateLimiter({ ratePerSecond: 1, burst: 1, bucketsMax: 3 });
    for (const k of ['a', 'b', 'c']) r.take(k, 1, 0);
    r.take('a', 1, 0); // a is now the most recent
    r.take('d', 1, 0); // evicts b
    expect(r.size).toBe(3);
    expect(r.counters.buckets_evicted).toBe(1);
    expect(r.take('a', 1, 0)).toBeGreaterThan(0); // still remembered: still empty
    expect(r.take('b', 1, 0)).toBe(0); // forgotten: a fresh bucket
  });
});

describe('query API rate limit', () => {
  it('answers 429 with Retry-After after the burst, per token, and never limits ingest', async () => {
    const t = { alice: 'tok-a', bob: 'tok-b', rack: 'tok-r' };
    const auth = new ApiAuth({ tokens: new TokenSet(parseTokens(`${hashToken(t.alice)} read alice\n${hashToken(t.bob)} read bob\n${hashToken(t.rack)} ingest rack`, 'f')) });
    const queryRate = new RateLimiter({ ratePerSecond: 1, burst: 10, bucketsMax: 100 });
    const app = createApi(parts, { ingestBodyBytesMax: 100_000, auth, queryRate });
    const get = (path: string, token: string) => app.request(path, { headers: { authorization: `Bearer ${token}` } });
    for (let i = 0; i < 10; i++) expect((await get('/api/v1/queries', t.alice)).status).toBe(200);
    const limited = await get('/api/v1/queries', t.alice);
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(((await limited.json()) as { error: string }).error).toMatch(/rate limit: "alice" .* retry after \d+ s/);
    // An ad-hoc query costs more than a list: bob's burst of 10 holds only 10 / cost of them.
    const q = `/api/v1/query?q=${encodeURIComponent('FROM * SELECT cpu WINDOW 1s COMPUTE max')}&from=-10s`;
    const fit = Math.floor(10 / coreLimits.adHocQueryCost);
    const statuses = [];
    for (let i = 0; i <= fit; i++) statuses.push((await get(q, t.bob)).status);
    expect(statuses).toEqual([...Array<number>(fit).fill(200), 429]);
    // Other routes are not metered.
    for (let i = 0; i < 20; i++) expect((await get('/api/v1/servers', t.alice)).status).toBe(200);
    for (let i = 0; i < 20; i++) expect((await app.request('/api/v1/ingest', { method: 'POST', body: 'x', headers: { authorization: `Bearer ${t.rack}` } })).status).toBe(400);
    expect(await (await get('/metrics', t.alice)).text()).toMatch(/apm_core_http_rate_limited_total 2\b/);
  });

  it('keys on the client address when auth is off', async () => {
    const app = createApi(parts, { ingestBodyBytesMax: 100_000, queryRate: new RateLimiter({ ratePerSecond: 1, burst: 2, bucketsMax: 10 }) });
    expect([(await app.request('/api/v1/queries')).status, (await app.request('/api/v1/queries')).status, (await app.request('/api/v1/queries')).status]).toEqual([200, 200, 429]);
  });
});
