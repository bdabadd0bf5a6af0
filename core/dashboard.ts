// The dashboard (issue 6): static page and assets under `/` and `/ui/`, served from memory with
// content-hash URLs (immutable caching) and a strict CSP (no external requests), plus the
// status routes the fleet view reads: `GET /api/v1/status` and the racks' own reports
// (`POST /api/v1/racks/:rack/status`).

import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Hono } from 'hono';
import { isServerId } from '../schema/names.js';
import type { ShardPool } from './pool.js';
import type { QueryCatalog } from './query/catalog.js';
import type { ServerTable } from './servers.js';
import { parseRackStatus, type CoreStatus } from './status.js';

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
  /** Path with the content hash, as the page refers to it. */
  url: string;
}

/**
 * The page's own files live in core/ui (plain ES modules: nothing to build on the user's side):
 * beside this module when it runs from source (tests), two levels up from dist/core when built.
 */
const uiDir = [new URL('./ui/', import.meta.url), new URL('../../core/ui/', import.meta.url)].map((u) => fileURLToPath(u)).find((d) => existsSync(`${d}index.html`)) ?? fileURLToPath(new URL('./ui/', import.meta.url));
const require = createRequire(import.meta.url);

const csp = [
  "default-src 'self'",
  "script-src 'self'",
  "connect-src 'self'",
  // uPlot positions its cursor and legend with inline style attributes.
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

function asset(path: string, name: string, type: string): Asset {
  const body = readFileSync(path);
  const hash = createHash('sha256').update(body).digest('hex').slice(0, 12);
  return { body, type, etag: `"${hash}"`, url: `/ui/${name}?v=${hash}` };
}

/** Loads the page and its assets (once, at start-up: a missing file fails the start, not a request). */
export function loadAssets(): { index: Asset; byName: Map<string, Asset> } {
  const list = [
    asset(require.resolve('uplot/dist/uPlot.iife.min.js'), 'uplot.js', 'text/javascript; charset=utf-8'),
    asset(require.resolve('uplot/dist/uPlot.min.css'), 'uplot.css', 'text/css; charset=utf-8'),
    asset(`${uiDir}app.js`, 'app.js', 'text/javascript; charset=utf-8'),
    asset(`${uiDir}app.css`, 'app.css', 'text/css; charset=utf-8'),
    // Imported by app.js as ./columns.js (no hash in that URL: revalidated, a 304 per load).
    asset(`${uiDir}columns.js`, 'columns.js', 'text/javascript; charset=utf-8'),
    asset(`${uiDir}favicon.svg`, 'favicon.svg', 'image/svg+xml'),
  ];
  const byName = new Map(list.map((a) => [a.url.slice('/ui/'.length, a.url.indexOf('?')), a]));
  let html = readFileSync(`${uiDir}index.html`, 'utf8');
  for (const [name, a] of byName) html = html.replaceAll(`{{${name}}}`, a.url);
  const body = Buffer.from(html);
  const index: Asset = { body, type: 'text/html; charset=utf-8', etag: `"${createHash('sha256').update(body).digest('hex').slice(0, 12)}"`, url: '/' };
  return { index, byName };
}

export interface DashboardDeps {
  pool: ShardPool;
  servers: ServerTable;
  stored: QueryCatalog;
  status: CoreStatus;
  /** A cluster node's GET /api/v1/cluster answer (core/cluster/status.ts); absent: a single node. */
  clusterStatus?: () => object;
}

export function addDashboardRoutes(app: Hono, deps: DashboardDeps): void {
  const { index, byName } = loadAssets();
  const send = (a: Asset, ifNoneMatch: string | undefined, cacheControl: string): Response => {
    const headers = { 'content-type': a.type, etag: a.etag, 'cache-control': cacheControl, 'x-content-type-options': 'nosniff', 'content-security-policy': csp };
    if (ifNoneMatch === a.etag) return new Response(null, { status: 304, headers });
    return new Response(a.body, { status: 200, headers });
  };
  // The page revalidates (cheap 304) so a new core's assets are picked up; assets are immutable by URL.
  app.get('/', (c) => send(index, c.req.header('if-none-match'), 'no-cache'));
  // The page names its icon (a hashed /ui/ URL); this answers browsers that ask by habit (an API
  // URL opened in a tab), which otherwise log a 404 each time. A day: the URL carries no hash.
  const favicon = byName.get('favicon.svg')!;
  app.get('/favicon.ico', (c) => send(favicon, c.req.header('if-none-match'), 'public, max-age=86400'));
  app.get('/ui/:name', (c) => {
    const a = byName.get(c.req.param('name'));
    if (a === undefined) return c.json({ error: `no dashboard asset ${c.req.param('name')}` }, 404);
    const immutable = c.req.query('v') === a.etag.slice(1, -1);
    return send(a, c.req.header('if-none-match'), immutable ? 'public, max-age=31536000, immutable' : 'no-cache');
  });

  // `cluster`: whether this core answers GET /api/v1/cluster (a cluster node); the fleet view asks
  // that route only then (a single node answers it 404).
  app.get('/api/v1/status', (c) => c.json({ ...statusJson(deps, Date.now()), cluster: deps.clusterStatus !== undefined }));
  if (deps.clusterStatus !== undefined) {
    const status = deps.clusterStatus;
    app.get('/api/v1/cluster', (c) => c.json(status()));
  }

  app.post('/api/v1/racks/:rack/status', async (c) => {
    const rack = c.req.param('rack');
    if (!isServerId(rack)) return c.json({ error: `rack id ${JSON.stringify(rack.slice(0, 80))} is not a valid id (DESIGN §3 server id syntax)` }, 400);
    let body: unknown;
    try {
      body = await c.req.json();
    } catch {
      return c.json({ error: 'body must be a JSON object of counters' }, 400);
    }
    const s = parseRackStatus(body);
    if (typeof s === 'string') return c.json({ error: s }, 400);
    if (!deps.status.report(rack, s, Date.now())) return c.json({ error: `the core keeps reports of at most its racks limit; rack ${rack} refused` }, 429);
    return c.body(null, 204);
  });
}

/** What the fleet view shows: core rates and lag, per rack its servers and its own report, and the StatsD lines refused by reason. */
export function statusJson(deps: DashboardDeps, nowMs: number): object {
  const { pool, servers, stored, status } = deps;
  const st = pool.stats();
  const c = st.counters;
  const racks = new Map<string, { servers: number; lastSeenMs: number }>();
  for (const s of servers.all()) {
    const r = racks.get(s.rack) ?? { servers: 0, lastSeenMs: 0 };
    r.servers++;
    r.lastSeenMs = Math.max(r.lastSeenMs, s.lastSeenMs);
    racks.set(s.rack, r);
  }
  const reports = new Map(status.rackReports().map((r) => [r.rack, r]));
  return {
    nowMs,
    core: {
      ...status.rates(),
      newestSecondMs: status.newestSecond * 1000,
      freshnessLagMs: status.newestSecond === 0 ? null : nowMs - (status.newestSecond + 1) * 1000,
      queryLagMs: Math.round(st.lagSeconds * 1000),
      pointsIngested: (c.points_ingested ?? 0) + (c.summaries_ingested ?? 0),
      batchesIngested: pool.counters.requests_ingested,
      batchesLate: c.sections_late ?? 0,
      batchesDuplicate: c.sections_duplicate ?? 0,
      storageFull: c.storage_full ?? 0,
      headBytes: st.heldBytes,
      diskBytes: st.diskBytes,
      servers: servers.size,
      metrics: st.metrics,
      storedQueries: stored.list().length,
      shards: pool.shards,
      workers: pool.workers,
      workersUp: st.workersUp,
      workerRestarts: pool.counters.worker_restarts,
      racksRefused: status.racksRefused,
    },
    racks: [...new Set([...racks.keys(), ...reports.keys()])].sort().map((id) => ({
      id,
      servers: racks.get(id)?.servers ?? 0,
      lastSeenMs: racks.get(id)?.lastSeenMs ?? 0,
      reportedMs: reports.get(id)?.reportedMs ?? null,
      report: reports.get(id)?.status ?? null,
    })),
    // StatsD lines the edges refused, per reason, fleet-wide over the last minutes (cached; issue 15).
    statsdRefused: status.statsdRefusals.view(pool, nowMs),
  };
}
