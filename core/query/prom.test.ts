// The Prometheus API's read side (issue 15) through a whole core node: answer shapes, step →
// WINDOW, errors, lists, form POSTs, auth and rate limits; and its pure helpers.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KindCode } from '../../schema/codec.js';
import { rackSecondBody } from '../../schema/section.js';
import { buildColumns, type DistInput, type PointInput } from '../../schema/testdata.js';
import { ApiAuth, hashToken, parseTokens, TokenSet } from '../auth.js';
import { coreLimits } from '../limits.js';
import { openNode, type CoreNode } from '../node.js';
import { WorkerError } from '../pool.js';
import { RateLimiter } from '../ratelimit.js';
import type { WindowResult } from './eval.js';
import { evalFailure, parseSelector, matches, namesMatching, planRange, promDurationMs, promFloat, promSettleMs, promTimeMs, scalarLiteral, PromError } from './prom.js';
import { parseQuery, queryLimits } from './parse.js';

const S = 8;
const now = Math.floor(Date.now() / 1000);
const t0 = now - 600 - (now % 60); // a block start 10 minutes ago: every window complete
const seconds = 20;
const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

interface PromAnswer {
  status: 'success' | 'error';
  data?: unknown;
  errorType?: string;
  error?: string;
  warnings?: string[];
}
type Series = { metric: Record<string, string>; values: [number, string][] };
type Sample = { metric: Record<string, string>; value: [number, string] };

let seq = 1;
function body(second: number, rack: string, servers: Record<string, { points?: PointInput[]; dists?: DistInput[] }>, names: string[] = []): Uint8Array {
  return rackSecondBody({
    rack,
    session: 5,
    seq: seq++,
    second,
    late: false,
    shards: S,
    servers: Object.entries(servers).map(([server, c]) => ({ server, blocks: [buildColumns(c.points ?? [], c.dists ?? [])] })),
    rollup: buildColumns([], [], names),
  });
}

/** 20 seconds from t0: web-0..3 on rack r1 and db-0 on r2; gauge cpu = 10 s + k, distribution rpc.latency [s + 1, k + 1] (server s, second t0 + k). */
async function feed(node: CoreNode, headers: Record<string, string> = {}): Promise<void> {
  for (let k = 0; k < seconds; k++) {
    const web: Record<string, { points: PointInput[]; dists: DistInput[] }> = {};
    for (let s = 0; s < 4; s++) web[`web-${s}`] = { points: [{ name: 'cpu', kind: KindCode.Gauge, value: 10 * s + k }], dists: [{ name: 'rpc.latency', values: [s + 1, k + 1] }] };
    const names = k === 0 ? ['cpu', 'rpc.latency'] : [];
    for (const b of [body(t0 + k, 'r1', web, names), body(t0 + k, 'r2', { 'db-0': { points: [{ name: 'cpu', kind: KindCode.Gauge, value: 1000 }] } }, names)]) {
      expect((await node.app.request('/api/v1/ingest', { method: 'POST', body: b, headers })).status).toBe(204);
    }
  }
}

function requester(node: CoreNode, headers: Record<string, string> = {}) {
  return async (path: string, form?: Record<string, string | string[]>): Promise<{ status: number; body: PromAnswer }> => {
    let init: RequestInit = { headers };
    if (form !== undefined) {
      const f = new URLSearchParams();
      for (const [k, v] of Object.entries(form)) for (const x of Array.isArray(v) ? v : [v]) f.append(k, x);
      init = { method: 'POST', body: f.toString(), headers: { ...headers, 'content-type': 'application/x-www-form-urlencoded' } };
    }
    const r = await node.app.request(path, init);
    return { status: r.status, body: (await r.json()) as PromAnswer };
  };
}

const qs = (o: Record<string, string | number>) => new URLSearchParams(Object.entries(o).map(([k, v]): [string, string] => [k, String(v)])).toString();

describe('Prometheus API on a core node', () => {
  let dir: string;
  let node: CoreNode;
  let prom: ReturnType<typeof requester>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'apm-prom-'));
    node = await openNode({ dataDir: dir, workers: 1, shards: S, queryLatenessMs: 0, flushGraceMs: 0 });
    prom = requester(node);
    await feed(node);
  });
  afterAll(async () => {
    await node.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('query_range answers a matrix: one series per function, a sample at each window end, values as strings', async () => {
    const query = 'FROM web-* SELECT cpu WINDOW 5s COMPUTE min, max, avg, count, p50';
    const { status, body: r } = await prom(`/api/v1/query_range?${qs({ query, start: t0, end: t0 + seconds, step: '5s' })}`);
    expect(status).toBe(200);
    expect(r.status).toBe('success');
    expect(r.warnings).toBeUndefined();
    const { resultType, result } = r.data as { resultType: string; result: Series[] };
    expect(resultType).toBe('matrix');
    const text = 'FROM web-* SELECT cpu WINDOW 5s COMPUTE min, max, avg, count, percentile(50)';
    expect(result.map((s) => s.metric)).toEqual(['min', 'max', 'avg', 'count', 'p50'].map((f) => ({ __name__: 'cpu', function: f, query: text })));
    // The window ending at t0 holds no data: no sample. Window [t0 + 5i, t0 + 5i + 5): servers 0..3, k in 5i..5i+4.
    const ends = [5, 10, 15, 20].map((d) => t0 + d);
    expect(result[0]!.values).toEqual(ends.map((e) => [e, String(e - 5 - t0)]));
    expect(result[1]!.values).toEqual(ends.map((e) => [e, String(30 + e - 1 - t0)]));
    expect(result[2]!.values).toEqual(ends.map((e) => [e, String(15 + e - 3 - t0)]));
    expect(result[3]!.values).toEqual(ends.map((e) => [e, '20']));
  });

  it('query_range without WINDOW takes the step as the window', async () => {
    const { body: r } = await prom(`/api/v1/query_range?${qs({ query: 'FROM * SELECT cpu COMPUTE count, max', start: t0 - 30, end: t0 + 60, step: 10 })}`);
    const result = (r.data as { result: Series[] }).result;
    expect(result[0]!.metric).toEqual({ __name__: 'cpu', function: 'count', query: 'FROM * SELECT cpu WINDOW 10s COMPUTE count, max' });
    // Two windows of 10 s with data: 5 servers × 10 seconds each.
    expect(result[0]!.values).toEqual([
      [t0 + 10, '50'],
      [t0 + 20, '50'],
    ]);
    expect(result[1]!.values).toEqual([
      [t0 + 10, '1000'],
      [t0 + 20, '1000'],
    ]);
  });

  it('a step coarser than WINDOW merges whole windows (and says so); a finer one is refused', async () => {
    const query = 'FROM web-* SELECT cpu WINDOW 5s COMPUTE count, min, max';
    // step 7s → windows of 10 s: the multiple of W at or above the step.
    const { body: r } = await prom(`/api/v1/query_range?${qs({ query, start: t0, end: t0 + seconds, step: 7 })}`);
    expect(r.warnings).toEqual(['step 7s > WINDOW 5s: evaluated with WINDOW 10s (whole windows of the query merged)']);
    const result = (r.data as { result: Series[] }).result;
    expect(result[0]!.metric.query).toBe('FROM web-* SELECT cpu WINDOW 10s COMPUTE count, min, max');
    expect(result.map((s) => s.values)).toEqual([
      [
        [t0 + 10, '40'],
        [t0 + 20, '40'],
      ],
      [
        [t0 + 10, '0'],
        [t0 + 20, '10'],
      ],
      [
        [t0 + 10, '39'],
        [t0 + 20, '49'],
      ],
    ]);
    const fine = await prom(`/api/v1/query_range?${qs({ query, start: t0, end: t0 + seconds, step: '2s' })}`);
    expect(fine.status).toBe(400);
    expect(fine.body).toMatchObject({ status: 'error', errorType: 'bad_data' });
    expect(fine.body.error).toMatch(/step 2s is shorter than the query's WINDOW 5s.*Min step/);
  });

  it('query (instant) answers a vector of the newest complete window ending at or before time', async () => {
    const query = 'FROM web-1 SELECT cpu WINDOW 5s COMPUTE max, avg';
    const { status, body: r } = await prom(`/api/v1/query?${qs({ query, time: t0 + 13.5 })}`);
    expect(status).toBe(200);
    // [t0 + 5, t0 + 10): web-1 is 10 + k, k 5..9.
    expect(r.data).toEqual({
      resultType: 'vector',
      result: [
        { metric: { __name__: 'cpu', function: 'max', query }, value: [t0 + 10, '19'] },
        { metric: { __name__: 'cpu', function: 'avg', query }, value: [t0 + 10, '17'] },
      ],
    });
    // Default time now: the newest window is after the data, so an empty vector.
    expect((await prom(`/api/v1/query?${qs({ query })}`)).body.data).toEqual({ resultType: 'vector', result: [] });
    // Distributions' percentiles come from the merged sketches (1% relative).
    const lat = (await prom(`/api/v1/query?${qs({ query: 'FROM rack:r1 SELECT rpc.latency WINDOW 20s COMPUTE p99, count', time: t0 + 20 })}`)).body.data as { result: Sample[] };
    expect(lat.result.map((s) => s.metric.function)).toEqual(['p99', 'count']);
    expect(Number(lat.result[0]!.value[1])).toBeCloseTo(20, -0.5);
    expect(lat.result[1]!.value).toEqual([t0 + 20, '160']);
  });

  it('answers Grafana\'s health check (1+1 at time 4) with a scalar', async () => {
    expect((await prom(`/api/v1/query?${qs({ query: '1+1', time: 4 })}`)).body).toEqual({ status: 'success', data: { resultType: 'scalar', result: [4, '2'] } });
    // Grafana posts it as a form by default.
    expect((await prom('/api/v1/query', { query: '1+1', time: '4' })).body.data).toEqual({ resultType: 'scalar', result: [4, '2'] });
  });

  it('keeps apm\'s own /api/v1/query?q= shape', async () => {
    const r = await node.app.request(`/api/v1/query?${qs({ q: 'FROM web-1 SELECT cpu WINDOW 5s COMPUTE max', from: (t0 + 5) * 1000, to: (t0 + 10) * 1000 })}`);
    expect(r.status).toBe(200);
    const j = (await r.json()) as { query: string; windows: WindowResult[] };
    expect(j.query).toBe('FROM web-1 SELECT cpu WINDOW 5s COMPUTE max');
    expect(j.windows).toMatchObject([{ startMs: (t0 + 5) * 1000, values: { max: 19 } }]);
    expect(await (await node.app.request('/api/v1/query')).json()).toEqual({ error: "missing q=<query> (apm's answer), or query=<query> for the Prometheus API's" });
  });

  it('takes form POSTs for query_range, query, series and labels', async () => {
    const range = await prom('/api/v1/query_range', { query: 'FROM db-0 SELECT cpu WINDOW 10s COMPUTE max', start: String(t0), end: String(t0 + 10), step: '10s' });
    expect(range.status).toBe(200);
    expect((range.body.data as { result: Series[] }).result[0]!.values).toEqual([[t0 + 10, '1000']]);
    const instant = await prom('/api/v1/query', { query: 'FROM db-0 SELECT cpu WINDOW 10s COMPUTE count', time: new Date((t0 + 10) * 1000).toISOString() });
    expect((instant.body.data as { result: Sample[] }).result[0]!.value).toEqual([t0 + 10, '10']);
    expect((await prom('/api/v1/series', { 'match[]': ['cpu', '{__name__="rpc.latency"}'] })).body.data).toEqual([{ __name__: 'cpu' }, { __name__: 'rpc.latency' }]);
    expect((await prom('/api/v1/labels', {})).body.data).toEqual(['__name__', 'function', 'query', 'rack', 'server']);
  });

  it('refuses what it cannot run with Prometheus-shaped errors', async () => {
    const f = async (path: string, status: number, errorType: string, error: RegExp) => {
      const r = await prom(path);
      expect(r.status, path).toBe(status);
      expect(r.body.status, path).toBe('error');
      expect(r.body.errorType, path).toBe(errorType);
      expect(r.body.error, path).toMatch(error);
    };
    const q = 'FROM * SELECT cpu WINDOW 1s COMPUTE max';
    // PromQL: apm's language is named, with an example.
    await f(`/api/v1/query?${qs({ query: 'rate(http_requests_total[5m])' })}`, 400, 'bad_data', /not PromQL: FROM <servers> SELECT <metric>/);
    await f(`/api/v1/query_range?${qs({ query: 'up', start: t0, end: t0 + 10, step: 1 })}`, 400, 'bad_data', /not PromQL/);
    // An apm parse error keeps the parser's message and position.
    await f(`/api/v1/query?${qs({ query: 'FROM * SELECT cpu WINDOW 5s COMPUTE median' })}`, 400, 'bad_data', /expected min, max, avg, count, sum, percentile\(p\) or pNN at 36/);
    // An instant query has no step for a missing WINDOW.
    await f(`/api/v1/query?${qs({ query: 'FROM * SELECT cpu COMPUTE max' })}`, 400, 'bad_data', /add WINDOW <duration>/);
    await f(`/api/v1/query_range?${qs({ query: q, end: t0, step: 1 })}`, 400, 'bad_data', /missing start=/);
    await f(`/api/v1/query_range?${qs({ query: q, start: t0, end: t0 + 10 })}`, 400, 'bad_data', /missing step=/);
    await f(`/api/v1/query_range?${qs({ query: q, start: t0, end: t0 + 10, step: '0s' })}`, 400, 'bad_data', /zero or negative query resolution step/);
    await f(`/api/v1/query_range?${qs({ query: q, start: t0, end: t0 + 10, step: 'soon' })}`, 400, 'bad_data', /invalid parameter step="soon"/);
    await f(`/api/v1/query_range?${qs({ query: q, start: 'yesterday', end: t0, step: 1 })}`, 400, 'bad_data', /invalid parameter start="yesterday"/);
    await f(`/api/v1/query_range?${qs({ query: q, start: t0, end: t0 - 10, step: 1 })}`, 400, 'bad_data', /end timestamp .* must not be before start/);
    // Bounds: windows per answer, and the ad-hoc range.
    await f(`/api/v1/query_range?${qs({ query: q, start: t0 - 7200, end: t0, step: 1 })}`, 400, 'bad_data', /7201 windows of 1s > 3600 per answer; raise the step/);
    await f(`/api/v1/query_range?${qs({ query: 'FROM * SELECT cpu WINDOW 1d COMPUTE max', start: t0 - 40 * 86400, end: t0, step: '1d' })}`, 400, 'bad_data', /spans 40 days > the ad-hoc limit of 31 days/);
    await f(`/api/v1/series?${qs({ 'match[]': '{__name__=~"cpu[0-9]"}' })}`, 400, 'bad_data', /literals, \., \.\*, \.\+ and \| only/);
    await f('/api/v1/series', 400, 'bad_data', /no match\[\] parameter/);
    // Every refusal is counted, by reason.
    const metrics = await (await node.app.request('/metrics')).text();
    expect(Number(/apm_core_query_requests_refused_total\{reason="bad_request"\} (\d+)/.exec(metrics)?.[1])).toBeGreaterThanOrEqual(14);
  });

  it('lists label names and values, series and metadata, within their limits', async () => {
    const values = async (name: string, extra: Record<string, string> = {}) => (await prom(`/api/v1/label/${name}/values?${qs(extra)}`)).body;
    expect((await values('__name__')).data).toEqual(['cpu', 'rpc.latency']);
    expect((await values('__name__', { 'match[]': '{__name__=~"rpc\\\\..+"}' })).data).toEqual(['rpc.latency']);
    expect((await values('server')).data).toEqual(['db-0', 'web-0', 'web-1', 'web-2', 'web-3']);
    expect((await values('rack')).data).toEqual(['r1', 'r2']);
    expect((await values('function')).data).toContain('p99');
    expect((await values('job')).data).toEqual([]);
    // limit: truncated, with Prometheus' warning, and counted.
    const cut = await values('server', { limit: '2' });
    expect(cut).toEqual({ status: 'success', data: ['db-0', 'web-0'], warnings: [expect.stringMatching(/^results truncated due to limit \(2\)/)] });
    expect(await (await node.app.request('/metrics')).text()).toMatch(/apm_core_prom_answers_truncated_total\{route="label_values"\} 1/);
    // Series: bare names, quoted names, regexes (as globs), negations.
    const series = async (...m: string[]) => (await prom(`/api/v1/series?${m.map((x) => `match[]=${encodeURIComponent(x)}`).join('&')}`)).body.data;
    expect(await series('cpu')).toEqual([{ __name__: 'cpu' }]);
    expect(await series('{"rpc.latency"}')).toEqual([{ __name__: 'rpc.latency' }]);
    expect(await series('{__name__=~".+"}')).toEqual([{ __name__: 'cpu' }, { __name__: 'rpc.latency' }]);
    expect(await series('{__name__=~"(cpu|mem)"}')).toEqual([{ __name__: 'cpu' }]);
    expect(await series('{__name__!="cpu", __name__=~"rpc.*"}')).toEqual([{ __name__: 'rpc.latency' }]);
    expect(await series('cpu{job="api"}')).toEqual([]);
    const meta = (await prom('/api/v1/metadata')).body.data as Record<string, { type: string }[]>;
    expect(Object.fromEntries(Object.entries(meta).map(([k, v]) => [k, v[0]!.type]))).toEqual({ cpu: 'gauge', 'rpc.latency': 'summary' });
    expect((await prom('/api/v1/status/buildinfo')).body).toMatchObject({ status: 'success', data: { version } });
    expect((await prom('/api/v1/query_exemplars?query=test')).body).toEqual({ status: 'success', data: [] });
    expect((await prom(`/api/v1/format_query?${qs({ query: 'from  web-*  select cpu compute P99,max' })}`)).body.data).toBe('FROM web-* SELECT cpu COMPUTE percentile(99), max');
  });

  it('lists stored query texts as values of the query label', async () => {
    const created = await node.app.request('/api/v1/queries', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'cpu', query: 'from * select cpu window 1m compute max' }) });
    expect(created.status).toBe(201);
    expect((await prom('/api/v1/label/query/values')).body.data).toEqual(['FROM * SELECT cpu WINDOW 1m COMPUTE max']);
  });

  it('regression: answers no window whose seconds may still be on their way (ending within promSettleMs of now)', async () => {
    const now = Date.now();
    const s = Math.floor(now / 1000) - 1;
    const body = rackSecondBody({ rack: 'fresh', session: 9, seq: 1, second: s, late: false, shards: S, servers: [{ server: 'fresh-1', blocks: [buildColumns([{ name: 'fresh.g', kind: KindCode.Gauge, value: 1 }], [])] }], rollup: buildColumns([], [], ['fresh.g']) });
    expect((await node.pool.ingest(body)).status).toBe(204);
    const { body: r } = await prom(`/api/v1/query_range?${qs({ query: 'FROM * SELECT fresh.g WINDOW 1s COMPUTE count', start: s - 10, end: Math.ceil(now / 1000), step: '1s' })}`);
    // The second just ended is stored, but its window is not answered yet: a rack may still send its other servers.
    expect((r.data as { result: Series[] }).result.flatMap((x) => x.values)).toEqual([]);
    const { body: later } = await prom(`/api/v1/query_range?${qs({ query: 'FROM * SELECT fresh.g WINDOW 1s COMPUTE count', start: s - 10, end: s + 1, step: '1s' })}`);
    expect(later.status).toBe('success');
    expect(promSettleMs).toBeGreaterThanOrEqual(2000);
  });
});

describe('regression: the Prometheus API lists metric names without sorting them per request', () => {
  it('builds the sorted names once per change of them (before: every label-values, series and metadata call sorted every name on the HTTP thread: ~2.7 s at 2,000,000)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-prom-names-'));
    const node = await openNode({ dataDir: dir, workers: 1, shards: S, queryLatenessMs: 0, flushGraceMs: 0 });
    try {
      const prom = requester(node);
      const put = async (name: string) => expect((await node.app.request('/api/v1/ingest', { method: 'POST', body: body(t0, 'rn', { 'n-0': { points: [{ name, kind: KindCode.Gauge, value: 1 }] } }, [name]) })).status).toBe(204);
      await put('names.b');
      await put('names.a');
      await node.pool.freshStats();
      let gathered = 0;
      const metrics = node.pool.metrics.bind(node.pool);
      node.pool.metrics = () => (gathered++, metrics());
      const values = async () => (await prom('/api/v1/label/__name__/values')).body.data;
      expect(await values()).toEqual(['names.a', 'names.b']);
      expect(await values()).toEqual(['names.a', 'names.b']);
      expect((await prom(`/api/v1/series?${qs({ 'match[]': 'names.a' })}`)).body.data).toEqual([{ __name__: 'names.a' }]);
      expect(gathered).toBe(1);
      // A metric named since: listed once the workers report the change (every second; here asked now).
      await put('names.0');
      await node.pool.freshStats();
      expect(await values()).toEqual(['names.0', 'names.a', 'names.b']);
      expect(gathered).toBe(2);
      // Metadata in the same order, with kinds.
      expect(Object.keys((await prom('/api/v1/metadata')).body.data as object)).toEqual(['names.0', 'names.a', 'names.b']);
    } finally {
      await node.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Prometheus API with tokens and a rate limit', () => {
  let dir: string;
  let node: CoreNode;
  const reader = 'apm_reader-token';
  const ingester = 'apm_ingest-token';

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'apm-prom-auth-'));
    const tokens = new TokenSet(parseTokens(`${hashToken(reader)} read grafana\n${hashToken(ingester)} ingest rack racks=*\n`, 'test'));
    const queryRate = new RateLimiter({ ratePerSecond: 0.001, burst: 2 * coreLimits.adHocQueryCost, bucketsMax: 10 });
    node = await openNode({ dataDir: dir, workers: 1, shards: S, flushGraceMs: 0, auth: new ApiAuth({ tokens }), queryRate });
    await feed(node, { authorization: `Bearer ${ingester}` });
  });
  afterAll(async () => {
    await node.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes Grafana\'s Bearer header on GET and POST (role read), refuses others, and charges query_range as an ad-hoc query', async () => {
    const query = 'FROM web-* SELECT cpu WINDOW 10s COMPUTE max';
    const asReader = requester(node, { authorization: `Bearer ${reader}` });
    // Lists cost 1: they do not eat into the range queries below.
    expect((await asReader('/api/v1/labels', {})).status).toBe(200);
    expect((await requester(node)(`/api/v1/labels`)).status).toBe(401);
    expect((await requester(node, { authorization: `Bearer ${ingester}` })('/api/v1/query_range', { query, start: String(t0), end: String(t0 + 20), step: '10' })).status).toBe(403);
    const get = await asReader(`/api/v1/query_range?${qs({ query, start: t0, end: t0 + 20, step: 10 })}`);
    expect(get.status).toBe(200);
    expect((get.body.data as { result: Series[] }).result[0]!.values).toEqual([
      [t0 + 10, '39'],
      [t0 + 20, '49'],
    ]);
    // The burst held two ad-hoc queries and a list: the second range query is refused.
    const post = await asReader('/api/v1/query_range', { query, start: String(t0), end: String(t0 + 20), step: '10' });
    expect(post.status).toBe(429);
    const metrics = await (await node.app.request('/metrics', { headers: { authorization: `Bearer ${reader}` } })).text();
    expect(metrics).toMatch(/apm_core_query_requests_refused_total\{reason="rate_limited"\} 1/);
    expect(metrics).toMatch(/apm_core_http_auth_failures_total\{reason="forbidden"\} 1/);
  });
});

describe('Prometheus API helpers', () => {
  it('writes values as Prometheus does', () => {
    const f = (v: number, want: string) => expect(promFloat(v)).toBe(want);
    f(NaN, 'NaN');
    f(Infinity, '+Inf');
    f(-Infinity, '-Inf');
    f(0.1, '0.1');
    f(1e21, '1000000000000000000000'); // never in exponent form
    f(1.5e-7, '0.00000015');
  });

  it('reads durations and times as Prometheus does', () => {
    expect(promDurationMs('5s', 'step')).toBe(5000);
    expect(promDurationMs('1m30s', 'step')).toBe(90_000);
    expect(promDurationMs('0.5', 'step')).toBe(500);
    expect(promDurationMs('250ms', 'step')).toBe(250);
    expect(() => promDurationMs('-5', 'step')).toThrow(/zero or negative/);
    expect(() => promDurationMs('5x', 'step')).toThrow(/not a duration/);
    expect(promTimeMs('1700000000.25', 0, 'time')).toBe(1_700_000_000_250);
    expect(promTimeMs('2023-11-14T22:13:20Z', 0, 'time')).toBe(1_700_000_000_000);
    // Regression: numbers as Go's ParseFloat reads them (they were refused), and RFC 3339 needs
    // its zone (a time without one was read as this machine's local time).
    expect([promTimeMs('1.7e9', 0, 'time'), promDurationMs('1e1', 'step'), promDurationMs('.5', 'step')]).toEqual([1_700_000_000_000, 10_000, 500]);
    expect(promTimeMs('2023-11-15T00:13:20.5+02:00', 0, 'time')).toBe(1_700_000_000_500);
    expect(() => promTimeMs('2023-11-14T22:13:20', 0, 'time')).toThrow(/not Unix seconds/);
    expect(() => promTimeMs('5000000000', 0, 'time')).toThrow(/outside 1970..2106/);
  });

  it('plans the complete windows ending in [start, min(end, now)]', () => {
    const nowMs = 1_000_000_000;
    const p = planRange('FROM * SELECT m WINDOW 5s COMPUTE max', { startMs: 999_990_500, endMs: 1_000_100_000, stepMs: 5000, nowMs });
    expect([p.firstEndMs, p.lastEndMs, p.windows, p.q.windowSeconds]).toEqual([999_995_000, 1_000_000_000, 2, 5]);
    // Never before the epoch's first window.
    expect(planRange('FROM * SELECT m COMPUTE max', { startMs: 0, endMs: 10_000, stepMs: 5000, nowMs }).firstEndMs).toBe(5000);
    // A step of 12 s over WINDOW 5s: 15 s windows.
    expect(planRange('FROM * SELECT m WINDOW 5s COMPUTE max', { startMs: 0, endMs: 60_000, stepMs: 12_000, nowMs }).q.text).toBe('FROM * SELECT m WINDOW 15s COMPUTE max');
    expect(() => planRange('FROM * SELECT m COMPUTE max', { startMs: 0, endMs: 86_400_000, stepMs: 3 * 86_400_000, nowMs: 2 * 86_400_000 })).toThrow(/windows of 259200s > the longest WINDOW/);
    // A text at the length limit with WINDOW 1s, widened to 10s: the worker parses the text
    // again, so it is refused here as bad_data (before: a 500, then a 422 from the worker).
    // Widened to 5s, the same length: taken.
    const tail = ' SELECT m WINDOW 1s COMPUTE max';
    const ids: string[] = [];
    while (`FROM ${[...ids, 'x'.repeat(64)].join(', ')}${tail}`.length <= queryLimits.queryCharsMax) ids.push(`h${ids.length}-`.padEnd(64, 'x'));
    ids.push('z'.repeat(queryLimits.queryCharsMax - `FROM ${ids.join(', ')}, ${tail}`.length));
    const atLimit = `FROM ${ids.join(', ')}${tail}`;
    expect(parseQuery(atLimit).text.length).toBe(queryLimits.queryCharsMax);
    expect(() => planRange(atLimit, { startMs: 0, endMs: 60_000, stepMs: 10_000, nowMs })).toThrow(/with the step's window \(WINDOW 10s\) the query is 4097 characters > limit 4096/);
    const wide = planRange(atLimit, { startMs: 0, endMs: 60_000, stepMs: 5_000, nowMs });
    expect([wide.q.windowSeconds, wide.q.text.endsWith(' WINDOW 5s COMPUTE max'), parseQuery(wide.q.text).selectors.length]).toEqual([5, true, ids.length]);
  });

  it('regression: bounds the name tests of match[] (before, 12 selectors of 165 wildcard alternatives over 20,000 names held the HTTP thread 5 s); literal alternatives cost one lookup', () => {
    const names = Array.from({ length: 1000 }, (_, i) => `m.${i}`);
    const wild = parseSelector(`{__name__=~"${Array.from({ length: 100 }, (_, i) => `.*q${i}.*`).join('|')}"}`);
    expect(wild[0]!.cost).toBe(100);
    expect(() => namesMatching(names, [wild, wild], 150_000)).toThrow(/would test 1000 metric names 200 times each/);
    expect(namesMatching(names, [wild], 150_000)).toEqual([]);
    const literal = parseSelector(`{__name__=~"${Array.from({ length: 120 }, (_, i) => `m\\\\.${i * 3}`).join('|')}"}`);
    expect(literal[0]!.cost).toBe(1);
    expect(namesMatching(names, [literal], 1000)).toHaveLength(120);
  });

  it('reads series selectors without building regular expressions from them', () => {
    const f = (sel: string, name: string, want: boolean) => expect(matches(parseSelector(sel), { __name__: name }), `${sel} ~ ${name}`).toBe(want);
    f('rpc.latency', 'rpc.latency', true);
    f('{__name__=~"rpc\\\\.lat.*"}', 'rpc.latency', true);
    f('{__name__=~"rpc\\\\.lat.*"}', 'rpcxlatency', false);
    f('{__name__=~"a|b"}', 'b', true);
    f('{__name__!~"a|b"}', 'b', false);
    f("{__name__='x:y'}", 'x:y', true);
    f('{__name__=~`.+`, job=""}', 'm', true);
    // Escaped characters no name holds match nothing (before: `\]` made a 500, `\[a-z\]` a character set).
    f('{__name__=~`a.*\\]`}', 'a', false);
    f('{__name__=~`a.*\\]|b`}', 'b', true);
    f('{__name__=~`.*\\[a-z\\]`}', 'b', false);
    f('{__name__=~`.*\\/x`}', 'a/x', false);
    f('{__name__=~`web\\-.*`}', 'web-1', true);
    // Anchors are what Prometheus implies anyway (before: refused as bad_data, though Grafana users write them).
    f('{__name__=~"^rpc.*$"}', 'rpc.latency', true);
    f('{__name__=~"^rpc.*$"}', 'xrpc', false);
    f('{__name__=~"^(a|b)$"}', 'b', true);
    f('{__name__=~"^a$|^b$"}', 'b', true);
    f('{__name__!~"^a$"}', 'a', false);
    f('{__name__=~`a\\$`}', 'a', false);
    expect(() => parseSelector('{__name__=~"(a+)+b"}')).toThrow(PromError);
    expect(() => parseSelector('{__name__="x"')).toThrow(/expected \{…\} after the name|cannot read/);
  });

  it('answers 1+1 and other scalar arithmetic only', () => {
    expect(scalarLiteral('1+1')).toBe(2);
    expect(scalarLiteral(' 2 * 3.5 ')).toBe(7);
    expect(scalarLiteral('42')).toBe(42);
    expect(scalarLiteral('1+1+1')).toBeNull();
    expect(scalarLiteral('up')).toBeNull();
  });

  it('maps a worker\'s failures to Prometheus error types', () => {
    const f = (message: string, type: string, status: number) => {
      const e = evalFailure(new WorkerError(message));
      expect([e.type, e.status]).toEqual([type, status]);
    };
    f('evaluation time budget: "q" stopped after 2001 ms', 'timeout', 503);
    f('evaluation bound: "q" is 4000 windows', 'bad_data', 400);
    f('worker 0 did not answer within 30000 ms; retry', 'unavailable', 503);
    // Regression: a busy worker's refusal was 422 execution (final for Grafana), apm's own route 503.
    f('worker 0 has 16 queries waiting; retry later', 'unavailable', 503);
    f('the query waited past its deadline in the worker; retry', 'unavailable', 503);
    f('MDB_CORRUPTED', 'execution', 422);
  });
});

describe('Prometheus times, steps and durations', () => {
  const bad = (f: () => number) => {
    try {
      f();
      return 'taken';
    } catch (err) {
      return (err as PromError).type;
    }
  };
  it('regression: a long value is refused before any pattern is tried (before: 32 KB of digits and an `x` backtracked 1.8 s on the HTTP thread, which also serves ingest)', () => {
    const hostile = `${'1'.repeat(32_000)}x`;
    expect(() => promTimeMs(hostile, 0, 'start')).toThrow(/longer than 64 characters/);
    expect(() => promDurationMs(hostile, 'step')).toThrow(/longer than 64 characters/);
    expect([promTimeMs('1.7e9', 0, 't'), promTimeMs('.5', 0, 't'), promDurationMs('0.5', 's')]).toEqual([1.7e12, 500, 500]);
  });

  it('regression: refuses dates that do not exist and durations out of order, as Prometheus does (before: 2026-02-30 was March 2, and 1s1m was 61 s)', () => {
    expect(bad(() => promTimeMs('2026-02-30T00:00:00Z', 0, 'start'))).toBe('bad_data');
    expect(bad(() => promTimeMs('2026-01-01T24:00:00Z', 0, 'start'))).toBe('bad_data');
    expect(promTimeMs('2024-02-29T12:00:00.5+01:00', 0, 'start')).toBe(Date.UTC(2024, 1, 29, 11, 0, 0, 500));
    expect(bad(() => promDurationMs('1s1m', 'step'))).toBe('bad_data');
    expect(bad(() => promDurationMs('1h1h', 'step'))).toBe('bad_data');
    expect([promDurationMs('1m30s', 'step'), promDurationMs('1y2w3d4h5m6s7ms', 'step'), promDurationMs('500ms', 'step')]).toEqual([90_000, 33_019_506_007, 500]);
  });
});
