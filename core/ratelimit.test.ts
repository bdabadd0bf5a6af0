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
    for (let i = 0; i < 20; i++) expect((await get('/api/v1/status', t.alice)).status).toBe(200);
    for (let i = 0; i < 20; i++) expect((await app.request('/api/v1/ingest', { method: 'POST', body: 'x', headers: { authorization: `Bearer ${t.rack}` } })).status).toBe(400);
    expect(await (await get('/metrics', t.alice)).text()).toMatch(/apm_core_http_rate_limited_total 2\b/);
  });

  it('keys on the client address when auth is off', async () => {
    const app = createApi(parts, { ingestBodyBytesMax: 100_000, queryRate: new RateLimiter({ ratePerSecond: 1, burst: 2, bucketsMax: 10 }) });
    expect([(await app.request('/api/v1/queries')).status, (await app.request('/api/v1/queries')).status, (await app.request('/api/v1/queries')).status]).toEqual([200, 200, 429]);
  });
});

describe('regression: one read token could take every live-stream slot (issue 16.10)', () => {
  const t = { alice: 'tok-alice', admin: 'tok-admin' };
  const auth = new ApiAuth({ tokens: new TokenSet(parseTokens(`${hashToken(t.alice)} read alice\n${hashToken(t.admin)} admin me`, 'f')) });
  const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

  it("holds a client to its share of the slots (429, counted); others still get streams; a closed stream gives its slot back", async () => {
    // A rate limit that does not get in the way here (the next test checks it).
    const app = createApi(parts, { ingestBodyBytesMax: 100_000, auth, queryRate: new RateLimiter({ ratePerSecond: 1, burst: 1e6, bucketsMax: 100 }) });
    const def = await node.stored.create('share', 'FROM * SELECT cpu WINDOW 1s COMPUTE max', Date.now());
    const open: Response[] = [];
    for (let i = 0; i < coreLimits.liveStreamsPerClientMax; i++) {
      const r = await app.request(i % 2 === 0 ? `/api/v1/queries/${def.id}/live` : `/api/v1/live?ids=${def.id}`, as(t.alice));
      expect(r.status).toBe(200);
      open.push(r);
    }
    const refused = await app.request(`/api/v1/live?ids=${def.id}`, as(t.alice));
    expect(refused.status).toBe(429);
    expect(((await refused.json()) as { error: string }).error).toMatch(/"alice" holds 100 live streams, its share of the 1000 slots/);
    // The admin's dashboard still gets its stream.
    const admin = await app.request(`/api/v1/live?ids=${def.id}`, as(t.admin));
    expect(admin.status).toBe(200);
    expect(await (await app.request('/metrics', as(t.admin))).text()).toMatch(/^apm_core_query_requests_refused_total\{reason="live_share"\} 1$/m);
    // Closing one gives alice a slot again.
    await open.pop()!.body!.cancel();
    await admin.body!.cancel();
    await new Promise((r) => setTimeout(r, 50));
    const again = await app.request(`/api/v1/live?ids=${def.id}`, as(t.alice));
    expect(again.status).toBe(200);
    await again.body!.cancel();
    for (const r of open) await r.body!.cancel();
  });

  it('counts opening a live stream against the client\'s rate', async () => {
    const app = createApi(parts, { ingestBodyBytesMax: 100_000, auth, queryRate: new RateLimiter({ ratePerSecond: 1, burst: coreLimits.queryBurst, bucketsMax: 100 }) });
    const def = await node.stored.create('rate', 'FROM * SELECT cpu WINDOW 1s COMPUTE max', Date.now());
    const fit = Math.floor(coreLimits.queryBurst / coreLimits.liveStreamCost);
    const statuses: number[] = [];
    const open: Response[] = [];
    for (let i = 0; i <= fit; i++) {
      const r = await app.request(`/api/v1/live?ids=${def.id}`, as(t.alice));
      statuses.push(r.status);
      if (r.status === 200) open.push(r);
    }
    expect(statuses).toEqual([...Array<number>(fit).fill(200), 429]);
    for (const r of open) await r.body!.cancel();
  });
});
