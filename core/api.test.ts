import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeFrame, KindCode } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';
import { rackSecondBody, sectionAt, type ShardSectionMessage } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { openNode } from './node.js';

const dir = mkdtempSync(join(tmpdir(), 'apm-api-'));
// Two workers: the HTTP thread routes sections and queries to the worker owning each shard.
const node = await openNode({ dataDir: dir, workers: 2, shards: 8, queryLatenessMs: 0, flushGraceMs: 0, limits: { ingestBodyBytesMax: 100_000, storedQueriesMax: 3 } });
afterAll(async () => {
  await node.close();
  rmSync(dir, { recursive: true, force: true });
});
const app = node.app;
const now = Math.floor(Date.now() / 1000);
const json = (method: string, body: unknown) => ({ method, body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

async function ingest(second: number, value: number, seq: number): Promise<number> {
  const body = rackSecondBody({ rack: 'r1', session: 1, seq, second, late: false, shards: 8, servers: [{ server: 'web-1', blocks: [buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value }], [])] }], rollup: buildColumns([], [], ['cpu']) });
  return (await app.request('/api/v1/ingest', { method: 'POST', body })).status;
}

describe('core HTTP API', () => {
  it('says in its placement whether racks may pack points, and its imports pack only then (a cluster made before the pack: its older owners would refuse packed sections)', async () => {
    expect(await (await app.request('/api/v1/placement')).json()).toMatchObject({ shards: 8, pointPack: true });
    const packedOf = (body: Uint8Array) => {
      const r = decodeFrame(body, batchBytesMax);
      if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('not a RackSecond');
      const m = r.msg;
      return m.sectionEnds.length === 0 ? [] : Array.from(m.sectionEnds, (_, i) => (decodeFrame(sectionAt(m, i).slice(), batchBytesMax) as { msg: ShardSectionMessage }).msg.packed);
    };
    for (const pointPack of [false, true]) {
      const d = mkdtempSync(join(tmpdir(), 'apm-api-pack-'));
      const bodies: Uint8Array[] = [];
      let other: Awaited<ReturnType<typeof openNode>> | null = null;
      // As a cluster node: what it takes is handed on (to the streams there); here, to its own pool.
      other = await openNode({ dataDir: d, workers: 1, shards: 8, queryLatenessMs: 0, pointPack, ingest: (b) => (bodies.push(b.slice()), other!.pool.ingest(b)) });
      try {
        expect(await (await other.app.request('/api/v1/placement')).json()).toMatchObject({ pointPack });
        const line = JSON.stringify({ metric: { __name__: 'imp.cpu', server: 'imp-1' }, values: [1.5, 2.5], timestamps: [(now - 60) * 1000, (now - 59) * 1000] });
        expect((await other.app.request('/api/v1/import', { method: 'POST', body: line + '\n' })).status).toBe(200);
        const packed = bodies.flatMap(packedOf);
        expect(packed.length).toBeGreaterThan(0);
        expect(new Set(packed)).toEqual(new Set([pointPack]));
      } finally {
        await other.close();
        rmSync(d, { recursive: true, force: true });
      }
    }
  });

  it('builds the list of metrics once for every call asking while it is built, and afresh after (before: each call its own, ~33 MB at 200,000 metrics)', async () => {
    const pool = node.pool as unknown as { metrics: () => Promise<unknown> };
    const real = pool.metrics.bind(node.pool);
    let builds = 0;
    pool.metrics = () => (builds++, real());
    try {
      const answers = await Promise.all(Array.from({ length: 8 }, () => app.request('/api/v1/metrics')));
      expect(answers.map((r) => r.status)).toEqual(Array(8).fill(200));
      expect(builds).toBe(1);
      expect(answers[0]!.headers.get('content-type')).toContain('application/json');
      expect((await app.request('/api/v1/metrics')).status).toBe(200);
      expect(builds).toBe(2);
    } finally {
      pool.metrics = real;
    }
  });

  it('ingests, lists servers and metrics, and refuses bad bodies with a reason', async () => {
    expect(await ingest(now - 20, 10, 1)).toBe(204);
    expect(await ingest(now - 19, 30, 2)).toBe(204);
    const bad = await app.request('/api/v1/ingest', { method: 'POST', body: new Uint8Array(64) });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { reason: string }).reason).toBe('bad_checksum');
    expect((await app.request('/api/v1/ingest', { method: 'POST', body: new Uint8Array(200_000) })).status).toBe(413);
    expect(await (await app.request('/api/v1/servers')).json()).toMatchObject({ servers: [{ id: 'web-1', rack: 'r1' }] });
    expect(await (await app.request('/api/v1/metrics')).json()).toMatchObject({ metrics: [{ name: 'cpu', kind: 'gauge' }] });
    expect((await app.request('/healthz')).status).toBe(200);
    expect(await (await app.request('/metrics')).text()).toMatch(/^apm_core_requests_ingested_total 2$/m);
    expect((await app.request('/nope')).status).toBe(404);
  });

  it('regression: a body without sections stores nothing and so names no server and moves no clock (before: its servers were listed for the retention, and a second in 2100 made the freshness negative)', async () => {
    const far = 4_102_444_800; // 2100-01-01
    const ghosts = Array.from({ length: 50 }, (_, i) => ({ server: `ghost-${i}`, blocks: [buildColumns([], [])] }));
    const body = rackSecondBody({ rack: 'r-ghost', session: 1, seq: 1, second: far, late: false, shards: 8, servers: ghosts, rollup: buildColumns([], []) });
    const r = await app.request('/api/v1/ingest', { method: 'POST', body });
    expect(r.status).toBe(204);
    const listed = ((await (await app.request('/api/v1/servers')).json()) as { servers: { id: string }[] }).servers;
    expect(listed.filter((s) => s.id.startsWith('ghost-'))).toEqual([]);
    const st = ((await (await app.request('/api/v1/status')).json()) as { core: { freshnessLagMs: number | null } }).core;
    // (Other tests here ingest seconds up to a few ahead of the clock: within minutes, not 74 years.)
    expect(st.freshnessLagMs === null || st.freshnessLagMs > -3_600_000).toBe(true);
  });

  it('regression: builds the list of servers again only when a server came, moved or went, or a second later (before: every call, 155 ms at 100,000 servers, and eight clients in a loop stalled ingest)', async () => {
    const table = node.servers as unknown as { all: () => unknown[] };
    const real = table.all.bind(node.servers);
    let builds = 0;
    table.all = () => (builds++, real());
    try {
      await app.request('/api/v1/servers');
      const before = builds;
      for (let i = 0; i < 10; i++) expect((await app.request('/api/v1/servers')).status).toBe(200);
      expect(builds - before).toBeLessThanOrEqual(1);
      // A new server is listed at once.
      node.servers.seen('r-new', ['listed-at-once'], Date.now());
      const listed = ((await (await app.request('/api/v1/servers')).json()) as { servers: { id: string }[] }).servers;
      expect(listed.map((x) => x.id)).toContain('listed-at-once');
    } finally {
      table.all = real;
    }
  });

  it('answers ad-hoc queries with exact windows and clear errors', async () => {
    const q = encodeURIComponent('FROM web-* SELECT cpu WINDOW 1s COMPUTE max, avg, p50');
    const r = (await (await app.request(`/api/v1/query?q=${q}&from=${(now - 30) * 1000}&to=now`)).json()) as { query: string; windows: { startMs: number; values: Record<string, number> }[] };
    expect(r.query).toBe('FROM web-* SELECT cpu WINDOW 1s COMPUTE max, avg, percentile(50)');
    expect(r.windows.map((w) => [w.startMs, w.values])).toEqual([
      [(now - 20) * 1000, { max: 10, avg: 10, 'percentile(50)': 10 }],
      [(now - 19) * 1000, { max: 30, avg: 30, 'percentile(50)': 30 }],
    ]);
    const iso = new Date((now - 19) * 1000).toISOString();
    const one = (await (await app.request(`/api/v1/query?q=${q}&from=${encodeURIComponent(iso)}&to=-1s`)).json()) as { windows: unknown[] };
    expect(one.windows.length).toBe(1);
    const parse = await app.request(`/api/v1/query?q=${encodeURIComponent('FROM * SELECT cpu WINDOW 5x COMPUTE max')}`);
    expect([parse.status, await parse.json()]).toEqual([400, { error: 'expected a duration like 5s after WINDOW at 25', position: 25 }]);
    expect((await app.request(`/api/v1/query?q=${q}&from=-1d`)).status).toBe(400); // 86,400 windows
    expect((await app.request(`/api/v1/query?q=${q}&from=yesterday`)).status).toBe(400);
  });

  it('creates, lists, serves, streams and deletes stored queries', async () => {
    const bad = await app.request('/api/v1/queries', json('POST', { name: 'x', query: 'FROM * SELECT cpu WINDOW 5s COMPUTE median' }));
    expect([bad.status, ((await bad.json()) as { position: number }).position]).toEqual([400, 36]);
    const created = await app.request('/api/v1/queries', json('POST', { name: 'CPU', query: 'from * select cpu window 1s compute max' }));
    expect(created.status).toBe(201);
    const def = (await created.json()) as { id: string; name: string; query: string; createdMs: number };
    expect(def).toMatchObject({ name: 'CPU', query: 'FROM * SELECT cpu WINDOW 1s COMPUTE max' });
    expect(((await (await app.request('/api/v1/queries')).json()) as { queries: unknown[] }).queries).toEqual([def]);
    expect(await (await app.request(`/api/v1/queries/${def.id}`)).json()).toEqual(def);
    expect((await app.request('/api/v1/queries/ffffff')).status).toBe(404);

    // Live: subscribe, then a new second arrives and its window is evaluated (in the worker
    // owning cpu's shard, streamed from the HTTP thread).
    const live = await app.request(`/api/v1/queries/${def.id}/live`);
    expect(live.headers.get('content-type')).toMatch(/text\/event-stream/);
    const reader = live.body!.getReader();
    await node.pool.tick(Date.now());
    expect(await ingest(now + 2, 77, 3)).toBe(204);
    await node.pool.tick((now + 3) * 1000);
    let text = '';
    while (!text.includes('\n\n')) text += new TextDecoder().decode((await reader.read()).value);
    expect(text).toMatch(/^event: window\ndata: /m);
    const w = JSON.parse(/data: (.*)/.exec(text)![1]!) as { startMs: number; values: { max: number }; revision: number };
    expect(w).toMatchObject({ startMs: (now + 2) * 1000, values: { max: 77 }, revision: 0 });
    await reader.cancel();

    const results = (await (await app.request(`/api/v1/queries/${def.id}/results?from=${(now - 5) * 1000}&to=${(now + 10) * 1000}`)).json()) as { id: string; windows: { startMs: number }[] };
    expect(results.id).toBe(def.id);
    expect(results.windows.map((x) => x.startMs)).toContain((now + 2) * 1000);
    expect((await app.request(`/api/v1/queries/${def.id}`, { method: 'DELETE' })).status).toBe(204);
    expect((await app.request(`/api/v1/queries/${def.id}`, { method: 'DELETE' })).status).toBe(404);
  });
});

describe('regression: WINDOW 1h with from=-10m returned no window when no hour starts inside the range (issue 16.12)', () => {
  it('answers from the window containing `from`, the same in ad-hoc answers and in stored results', async () => {
    const H = now - (now % 3600); // the current hour; data 10 minutes before it, in the previous hour
    for (let k = 0; k < 10; k++) {
      const body = rackSecondBody({ rack: 'r1', session: 2, seq: 100 + k, second: H - 600 + k, late: false, shards: 8, servers: [{ server: 'web-1', blocks: [buildColumns([{ name: 'hourly', kind: KindCode.Gauge, value: k }], [])] }], rollup: buildColumns([], [], ['hourly']) });
      expect((await app.request('/api/v1/ingest', { method: 'POST', body })).status).toBe(204);
    }
    // A range inside the previous hour, where no hour starts.
    const range = `from=${(H - 300) * 1000}&to=${(H - 100) * 1000}`;
    const adHoc = (await (await app.request(`/api/v1/query?q=${encodeURIComponent('FROM * SELECT hourly WINDOW 1h COMPUTE count, sum')}&${range}`)).json()) as { windows: { startMs: number; count: number; values: Record<string, number> }[] };
    expect(adHoc.windows).toMatchObject([{ startMs: (H - 3600) * 1000, endMs: H * 1000, count: 10, values: { count: 10, sum: 45 } }]);
    // The stored query's first window is the previous hour; evaluated by the next tick.
    const created = (await (await app.request('/api/v1/queries', json('POST', { name: 'hourly', query: 'FROM * SELECT hourly WINDOW 1h COMPUTE count, sum' }))).json()) as { id: string };
    const stored = async () => ((await (await app.request(`/api/v1/queries/${created.id}/results?${range}`)).json()) as { windows: unknown[] }).windows;
    for (let i = 0; i < 50 && (await stored()).length === 0; i++) {
      await node.pool.tick(Date.now());
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(await stored()).toEqual(adHoc.windows.map((w) => ({ ...w, revision: 0 })));
    // The window containing `from` comes on top of the windows starting inside the range.
    const hourOfSeconds = `from=${(H - 3599) * 1000}&to=${(H + 1) * 1000}`;
    expect((await app.request(`/api/v1/query?q=${encodeURIComponent('FROM * SELECT hourly WINDOW 1s COMPUTE count')}&${hourOfSeconds}`)).status).toBe(200);
    expect((await app.request(`/api/v1/query?q=${encodeURIComponent('FROM * SELECT hourly WINDOW 1s COMPUTE count')}&from=${(H - 3600) * 1000 - 1}&to=${(H + 1) * 1000}`)).status).toBe(400);
    expect((await app.request(`/api/v1/queries/${created.id}`, { method: 'DELETE' })).status).toBe(204);
  });
});
