// Regression tests of issue 16 that need a whole node (the others sit beside their modules).

import { afterEach, describe, expect, it, vi } from 'vitest';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeFrame, Encoder, KindCode } from '../schema/codec.js';
import { hashName } from '../schema/names.js';
import { batchBytesMax } from '../schema/limits.js';
import { openLmdb } from '../lib/lmdb.js';
import { encodeRackSecond, rackSecondBody, SectionCutter, shardOf, type SectionFrame } from '../schema/section.js';
import { buildColumns, type PointInput } from '../schema/testdata.js';
import { openNode, type CoreNode } from './node.js';
import type { WindowResult } from './query/eval.js';

const S = 4;
const now = Math.floor(Date.now() / 1000);
const t0 = now - 600 - (now % 60);
const open: { node: CoreNode; dir: string }[] = [];
afterEach(async () => {
  for (const { node, dir } of open.splice(0)) {
    await node.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

async function start(limits: Parameters<typeof openNode>[0]['limits'] = {}, dir = mkdtempSync(join(tmpdir(), 'apm-regress-'))): Promise<CoreNode> {
  const node = await openNode({ dataDir: dir, workers: 1, shards: S, queryLatenessMs: 0, flushGraceMs: 0, limits });
  open.push({ node, dir });
  return node;
}

let seq = 1;
async function post(node: CoreNode, rack: string, second: number, servers: Record<string, PointInput[]>, names: string[] = []): Promise<void> {
  const body = rackSecondBody({ rack, session: 1, seq: seq++, second, late: false, shards: S, servers: Object.entries(servers).map(([server, points]) => ({ server, blocks: [buildColumns(points, [])] })), rollup: buildColumns([], [], names) });
  expect((await node.app.request('/api/v1/ingest', { method: 'POST', body })).status).toBe(204);
}

async function query(node: CoreNode, text: string, from: number, to: number): Promise<WindowResult[]> {
  const r = await node.app.request(`/api/v1/query?q=${encodeURIComponent(text)}&from=${from * 1000}&to=${to * 1000}`);
  expect(r.status).toBe(200);
  return ((await r.json()) as { windows: WindowResult[] }).windows;
}

describe('answers that join several workers', () => {
  it('regression: a malformed section on one worker (400) does not hide a retryable refusal on another (503): the rack dropped a body whose valid sections were never stored', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-regress-'));
    const node = await openNode({ dataDir: dir, workers: 2, shards: S, queryLatenessMs: 0, flushGraceMs: 0 });
    open.push({ node, dir });
    const names = Array.from({ length: 24 }, (_, i) => `mix.${i}`);
    const good = rackSecondBody({ rack: 'mix', session: 1, seq: 1, second: t0 + 1, late: false, shards: S, servers: [{ server: 'mix-1', blocks: [buildColumns(names.map((name) => ({ name, kind: KindCode.Gauge, value: 1 })), [])] }], rollup: buildColumns([], [], names) });
    const d = decodeFrame(good, batchBytesMax);
    if (!d.ok || d.msg.type !== 'rackSecond') throw new Error('bad test body');
    const m = d.msg;
    const sections: SectionFrame[] = [];
    let at = 0;
    m.sectionShards.forEach((shard, i) => {
      const frame = m.sectionBytes.slice(at, m.sectionEnds[i]);
      at = m.sectionEnds[i]!;
      // Shard 0's section (worker 0's only one here) fails its own checksum; shard 1's (worker 1) is valid.
      if (shard === 0) frame[frame.length >> 1] = frame[frame.length >> 1]! ^ 0xff;
      if (shard < 2) sections.push({ shard, frame });
    });
    expect(sections.map((x) => x.shard)).toEqual([0, 1]);
    const body = encodeRackSecond(new Encoder(), m, sections, m.servers);
    // Worker 1 fails this request: its section is valid and not stored.
    await node.pool.failWorker(1, { nextIngest: true });
    const first = await node.app.request('/api/v1/ingest', { method: 'POST', body });
    expect(first.status).toBe(503);
    // The rack's retries (worker 1 restarts from its WAL meanwhile): worker 1 stores its sections; shard 0's is refused again, alone.
    let retry = 503;
    for (let i = 0; i < 100 && retry === 503; i++) {
      await new Promise((r) => setTimeout(r, 50));
      retry = (await node.app.request('/api/v1/ingest', { method: 'POST', body })).status;
    }
    expect(retry).toBe(400);
    const h = new Uint32Array(2);
    const stored = names.filter((n) => (hashName(n, h, 0), shardOf(h[0]!, S) === 1));
    expect(stored.length).toBeGreaterThan(0);
    for (const n of stored) expect((await query(node, `FROM mix-1 SELECT ${n} WINDOW 1m COMPUTE count`, t0, t0 + 60))[0]?.values.count).toBe(1);
  });
});

describe('bounds of the ingest path', () => {
  it('ingest requests waiting for a worker are bounded: beyond the limit 503 worker_busy, counted, and nothing stored twice or lost on retry', async () => {
    const node = await start({ ingestWaitingPerWorkerMax: 1 });
    const bodies = [0, 1, 2, 3].map((k) => rackSecondBody({ rack: 'busy', session: 1, seq: 1000 + k, second: t0 + k, late: false, shards: S, servers: [{ server: 'b-1', blocks: [buildColumns([{ name: 'busy.x', kind: KindCode.Gauge, value: 1 }], [])] }], rollup: buildColumns([], []) }));
    const statuses = await Promise.all(bodies.map(async (body) => (await node.app.request('/api/v1/ingest', { method: 'POST', body })).status));
    expect(statuses.filter((x) => x === 204).length).toBeGreaterThan(0);
    expect(statuses.filter((x) => x === 503).length).toBeGreaterThan(0);
    expect(await (await node.app.request('/metrics')).text()).toMatch(new RegExp(`apm_core_requests_rejected_total\\{reason="worker_busy"\\} ${statuses.filter((x) => x === 503).length}\\b`));
    // The racks retry: every second once.
    for (const body of bodies) expect((await node.app.request('/api/v1/ingest', { method: 'POST', body })).status).toBe(204);
    const [w] = await query(node, 'FROM b-1 SELECT busy.x WINDOW 1m COMPUTE count', t0, t0 + 60);
    expect(w!.values.count).toBe(4);
  });

  it('an ingest request that timed out still counts against its worker until the worker answers it: the bound holds the worker\'s queue, not only its askers', async () => {
    const node = await start({ ingestWaitingPerWorkerMax: 2, workerRequestTimeoutMs: 300 });
    const body = (k: number) => rackSecondBody({ rack: 'slow', session: 1, seq: 2000 + k, second: t0 + k, late: false, shards: S, servers: [{ server: 's-1', blocks: [buildColumns([{ name: 'slow.x', kind: KindCode.Gauge, value: 1 }], [])] }], rollup: buildColumns([], []) });
    const send = async (k: number) => {
      const r = await node.app.request('/api/v1/ingest', { method: 'POST', body: body(k) });
      return { status: r.status, reason: r.status === 204 ? null : ((await r.json()) as { reason: string }).reason };
    };
    await node.pool.stallWorker(0, 3000);
    // Two requests wait past the timeout: their askers get 503, the messages stay queued.
    expect(await Promise.all([send(0), send(1)])).toEqual([
      { status: 503, reason: 'worker_unavailable' },
      { status: 503, reason: 'worker_unavailable' },
    ]);
    // Before the fix the count went back to 0 on the timeouts, and this one was queued behind them too.
    expect(await send(2)).toEqual({ status: 503, reason: 'worker_busy' });
    // Every refusal counted by its reason.
    expect(await (await node.app.request('/metrics')).text()).toMatch(/apm_core_requests_rejected_total\{reason="worker_unavailable"\} 2\b/);
    // Once the worker turns again it stores the two queued ones; the racks' retries are duplicates.
    await waitFor(async () => (await send(2)).status === 204);
    for (const k of [0, 1]) expect((await send(k)).status).toBe(204);
    const [w] = await query(node, 'FROM s-1 SELECT slow.x WINDOW 1m COMPUTE count', t0, t0 + 60);
    expect(w!.values.count).toBe(3);
  });

  it('list requests arriving while one is being gathered share it (before: each Prometheus label-values call queued a whole metric list in every worker, without bound, ahead of its ingest)', async () => {
    const node = await start({ workerRequestTimeoutMs: 300 });
    await post(node, 'ls', t0, { 'ls-1': [{ name: 'ls.x', kind: KindCode.Gauge, value: 1 }] }, ['ls.x']);
    await node.pool.stallWorker(0, 3000);
    const timedOut = node.pool.counters.requests_timed_out;
    const names = '/api/v1/label/__name__/values';
    const statuses = await Promise.all(Array.from({ length: 50 }, async () => (await node.app.request(names)).status));
    expect(statuses.filter((x) => x !== 503 && x !== 200)).toEqual([]);
    // A few requests reached the worker (each timed out: one per 300 ms while it is stalled), not 50.
    expect(node.pool.counters.requests_timed_out - timedOut).toBeLessThan(10);
    // The answer of the first 200 (a later request may still meet the stalled worker: 503).
    let data: string[] | undefined;
    await waitFor(async () => {
      const r = await node.app.request(names);
      if (r.status !== 200) return false;
      data = ((await r.json()) as { data: string[] }).data;
      return true;
    });
    expect(data).toEqual(['ls.x']);
  });

  it('scrapes of /metrics arriving while one asks the workers share it (before: each queued a stats request in every worker, without bound)', async () => {
    const node = await start();
    await node.pool.stallWorker(0, 4000);
    const timedOut = node.pool.counters.requests_timed_out;
    const statuses = await Promise.all(Array.from({ length: 30 }, async () => (await node.app.request('/metrics')).status));
    expect(new Set(statuses)).toEqual(new Set([200]));
    // Each gather waits 2 s for a busy worker (its last report stands): one or two gathers, not 30.
    expect(node.pool.counters.requests_timed_out - timedOut).toBeLessThan(5);
  });

  it('a worker that dies while starting is counted as such (before: only as a death, with nothing to tell a crash loop at start), and comes back once its stores open', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-regress-start-'));
    const node = await start({}, dir);
    await post(node, 'sf', t0, { 'sf-1': [{ name: 'sf.x', kind: KindCode.Gauge, value: 3 }] });
    // Its store directory replaced by a file: the restarted thread cannot open it.
    renameSync(join(dir, 'store-0'), join(dir, 'store-0.moved'));
    writeFileSync(join(dir, 'store-0'), 'not a directory');
    const spy = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      await node.pool.failWorker(0);
      await waitFor(() => node.pool.counters.worker_start_failures >= 2);
      expect(await (await node.app.request('/metrics')).text()).toMatch(/^apm_core_worker_start_failures_total [2-9]\b/m);
      rmSync(join(dir, 'store-0'));
      renameSync(join(dir, 'store-0.moved'), join(dir, 'store-0'));
      await waitFor(() => node.pool.stats().workersUp === 1, 20_000);
    } finally {
      spy.mockRestore();
    }
    const [w] = await query(node, 'FROM sf-1 SELECT sf.x WINDOW 1m COMPUTE sum', t0, t0 + 60);
    expect(w!.values.sum).toBe(3);
  });

  it('a restarted worker whose stored queries could not be handed over is asked again (before: they stayed unevaluated until the next change of the definitions)', async () => {
    const node = await start();
    const pool = node.pool as unknown as { syncSlot: (slot: unknown) => Promise<void> };
    const real = pool.syncSlot.bind(node.pool);
    let calls = 0;
    const spy = vi.spyOn(pool, 'syncSlot').mockImplementation(async (slot: unknown) => {
      if (++calls === 1) throw new Error('injected by a test');
      return real(slot);
    });
    const log = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const restarts = node.pool.counters.worker_restarts;
      await node.pool.failWorker(0);
      await waitFor(() => node.pool.counters.worker_restarts > restarts && calls >= 2, 10_000);
      expect(log.mock.calls.some((c) => String(c[0]).includes('stored queries not handed to worker 0 (injected by a test); trying again in 1000 ms'))).toBe(true);
    } finally {
      spy.mockRestore();
      log.mockRestore();
    }
  });

  it('a worker that dies soon after a long start waits longer before its next restart (before: its time starting counted as time up, so its deaths in a row started again from 0)', async () => {
    const node = await start({ workerUpResetMs: 1000 });
    const logged: string[] = [];
    const log = vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void logged.push(a.join(' ')));
    try {
      // Its next start takes 1.5 s (> workerUpResetMs) before it is ready; it dies again at once after.
      await node.pool.stallWorker(0, 1500, true);
      await node.pool.failWorker(0);
      await waitFor(() => node.pool.stats().workersUp === 1 && node.pool.counters.worker_restarts >= 1, 15_000);
      await node.pool.failWorker(0);
      await waitFor(() => logged.filter((l) => l.includes('worker 0 died (exit 1)')).length >= 2);
    } finally {
      log.mockRestore();
    }
    const deaths = logged.filter((l) => l.includes('worker 0 died (exit 1)'));
    expect(deaths[0]).toContain('restarting it from its WAL in 100 ms');
    expect(deaths[1]).toContain('restarting it from its WAL in 200 ms');
    await waitFor(() => node.pool.stats().workersUp === 1, 15_000);
  });

  it('a worker thread that is starting (replaying its WAL) refuses requests at once with 503, instead of queueing them unseen until its replay ends', async () => {
    const node = await start();
    await post(node, 'rp', t0, { 'rp-1': [{ name: 'rp.x', kind: KindCode.Gauge, value: 5 }] });
    await node.pool.stallWorker(0, 4000, true);
    const restarts = node.pool.counters.worker_restarts;
    await node.pool.failWorker(0);
    await waitFor(() => node.pool.counters.worker_restarts > restarts);
    const body = rackSecondBody({ rack: 'rp', session: 1, seq: seq++, second: t0 + 1, late: false, shards: S, servers: [{ server: 'rp-1', blocks: [buildColumns([{ name: 'rp.x', kind: KindCode.Gauge, value: 6 }], [])] }], rollup: buildColumns([], []) });
    const r = await node.app.request('/api/v1/ingest', { method: 'POST', body });
    expect(r.status).toBe(503);
    expect(((await r.json()) as { error: string }).error).toMatch(/worker 0 is starting \(replaying its WAL\); retry/);
    // Nor is it counted up, nor does a list of metrics without its own look whole (before: 200 without them).
    expect(node.pool.stats().workersUp).toBe(0);
    expect((await node.app.request('/api/v1/metrics')).status).toBe(503);
    await waitFor(async () => (await node.app.request('/api/v1/ingest', { method: 'POST', body })).status === 204, 20_000);
    const [w] = await query(node, 'FROM rp-1 SELECT rp.x WINDOW 1m COMPUTE sum', t0, t0 + 60);
    expect(w!.values.sum).toBe(11);
  });
});

describe('a cluster node\'s stream path', () => {
  it('a stream message of a new rack past racksMax is refused for good, counted, and the shard\'s stream moves on (before: retried for good, holding the shard on every owner until its backlog aged out)', async () => {
    const node = await start({ racksMax: 1 });
    const body = (rack: string, second: number) => rackSecondBody({ rack, session: 1, seq: seq++, second, late: false, shards: S, servers: [{ server: `${rack}-1`, blocks: [buildColumns([{ name: 'st.x', kind: KindCode.Gauge, value: 1 }], [])] }], rollup: buildColumns([], []) });
    const first = body('sa', t0);
    const r = decodeFrame(first, batchBytesMax);
    if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('not a RackSecond');
    const shard = r.msg.sectionShards[0]!;
    expect(await node.pool.ingestStream(first, shard, { seq: 1, after: 0 })).toMatchObject({ points: 1 });
    expect(await node.pool.ingestStream(body('sb', t0), shard, { seq: 2, after: 1 })).toBe('refused');
    expect(node.pool.streamRefused).toMatchObject({ racks_full: 1 });
    expect(await node.pool.ingestStream(body('sa', t0 + 1), shard, { seq: 3, after: 2 })).toMatchObject({ points: 1 });
  });
});

describe('the worker watchdog', () => {
  it('a worker stuck in a step that does not end, or not up for long, makes /healthz answer 503 saying which, counted once (before: ok while every request to it timed out)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-regress-watch-'));
    const node = await start({ workerSilentMs: 1000, workerUpResetMs: 1000 }, dir);
    const health = async () => {
      const r = await node.app.request('/healthz');
      return { status: r.status, text: await r.text() };
    };
    expect(await health()).toEqual({ status: 200, text: 'ok\n' });
    const logged: string[] = [];
    const log = vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void logged.push(a.join(' ')));
    try {
      await node.pool.stallWorker(0, 3000);
      await waitFor(async () => (await health()).status === 503, 2900);
      expect((await health()).text).toMatch(/^unhealthy: worker 0 has said nothing for \d+ s\n$/);
      await waitFor(async () => (await health()).status === 200, 10_000);
      expect(node.pool.counters.worker_stalls).toBe(1);
      expect(await (await node.app.request('/metrics')).text()).toMatch(/^apm_core_worker_stalls_total 1$/m);
      expect(logged.filter((l) => l.includes('worker 0 has said nothing'))).toHaveLength(1);
      expect(logged.some((l) => l.includes('worker 0 answers again'))).toBe(true);
      // A worker that cannot start (its store directory replaced by a file) is a crash loop.
      renameSync(join(dir, 'store-0'), join(dir, 'store-0.moved'));
      writeFileSync(join(dir, 'store-0'), 'not a directory');
      await node.pool.failWorker(0);
      await waitFor(async () => (await health()).status === 503, 10_000);
      expect((await health()).text).toMatch(/worker 0 has not been up for \d+ s \((restarting|replaying its WAL); \d+ deaths in a row\)/);
      rmSync(join(dir, 'store-0'));
      renameSync(join(dir, 'store-0.moved'), join(dir, 'store-0'));
      await waitFor(async () => (await health()).status === 200, 20_000);
      // One death and a long replay (2.5 s > workerSilentMs) is not a crash loop: healthy while it
      // replays (a failing probe would restart the process into the same replay).
      await waitFor(() => node.pool.stats().workersUp === 1, 20_000);
      await new Promise((r) => setTimeout(r, 1500)); // its deaths in a row start again (workerUpResetMs)
      await node.pool.stallWorker(0, 2500, true);
      const restarts = node.pool.counters.worker_restarts;
      await node.pool.failWorker(0);
      const seen = new Set<number>();
      await waitFor(async () => {
        seen.add((await health()).status);
        return node.pool.counters.worker_restarts > restarts && node.pool.stats().workersUp === 1;
      }, 20_000);
      expect([...seen]).toEqual([200]);
    } finally {
      log.mockRestore();
    }
  });
});

describe('regression: a stored query edited while its worker evaluates it', () => {
  it('serves no window of the old text as a result of the new one (before: windows evaluated for the old text after the edit landed in the new record, served and streamed)', async () => {
    const node = await start();
    const nowMs = Date.now();
    const nowS = Math.floor(nowMs / 1000);
    for (let t = nowS - 5; t < nowS + 30; t++) await post(node, 'ed', t, { 'ed-1': [{ name: 'ed.g', kind: KindCode.Gauge, value: t }] });
    let stale = 0;
    for (let k = 0; k < 10; k++) {
      const def = await node.stored.create('g', 'FROM * SELECT ed.g WINDOW 1s COMPUTE max', nowMs);
      const ticked = node.pool.tick(nowMs + 2000 + k * 1000);
      const edited = node.stored.update(def.id, 'g', 'FROM * SELECT ed.g WINDOW 1s COMPUTE min');
      await Promise.all([ticked, edited]);
      const windows = await node.stored.resultsJson(def.id, 0, 2 ** 42, 1000);
      stale += windows.filter((j) => j.includes('"max"')).length;
      await node.stored.delete(def.id);
    }
    expect(stale).toBe(0);
  });
});

describe('a stream step after a commit that throws', () => {
  it('answers every ingest request of the failed commit (before: a stream step committed the waiting requests, caught the error and answered only itself, so they held the worker\'s ingest bound for good: every later ingest 503 worker_busy)', async () => {
    const node = await start({ ingestWaitingPerWorkerMax: 1, workerRequestTimeoutMs: 5000 });
    const body = (k: number) => rackSecondBody({ rack: 'thr', session: 1, seq: 3000 + k, second: t0 + k, late: false, shards: S, servers: [{ server: 't-1', blocks: [buildColumns([{ name: 'thr.x', kind: KindCode.Gauge, value: 1 }], [])] }], rollup: buildColumns([], []) });
    const send = async (k: number) => (await node.app.request('/api/v1/ingest', { method: 'POST', body: body(k) })).status;
    await node.pool.failWorker(0, { nextIngest: true });
    // The worker busy for a moment: the ingest and the stream step reach it together, and the
    // step commits the waiting request first (as a cluster node's consumer does). 1.5 s: with
    // 300 ms, a loaded CI machine's test thread once posted the step after the stall had ended
    // (the worker then died of the ingest alone, and the step was answered "stopped").
    await node.pool.stallWorker(0, 1500);
    const [res, skip] = await Promise.all([node.pool.ingest(body(0)), node.pool.skipStream(0, 1, 0)]);
    expect(res).toMatchObject({ status: 503 });
    expect(skip).toContain('fault injected by a test');
    // Regression: the throw is fatal there too, as on the ingest path — the worker restarts from
    // its WAL (before: it went on, its head perhaps short of what its WAL held).
    await vi.waitFor(() => expect(node.pool.counters.worker_deaths).toBe(1), { timeout: 10_000 });
    // The bound is free again: the rack's retry and the next second are stored (once the worker is back).
    await vi.waitFor(async () => expect(await send(0)).toBe(204), { timeout: 20_000, interval: 200 });
    expect(await send(1)).toBe(204);
    const [w] = await query(node, 'FROM t-1 SELECT thr.x WINDOW 1m COMPUTE count', t0, t0 + 60);
    expect(w!.values.count).toBe(2);
  });
});

describe('a rack second in several bodies', () => {
  it('bodies of one rack second with different metrics of the same shard are all stored, each metric whole (its whole-rack percentile from its rollup)', async () => {
    const node = await start();
    const cutter = new SectionCutter(1 << 12);
    const names = Array.from({ length: 200 }, (_, i) => `split.${i}`);
    const servers = Array.from({ length: 10 }, (_, j) => ({ server: `sp-${j}`, blocks: [buildColumns(names.map((name, i) => ({ name, kind: KindCode.Gauge, value: i + j })), [{ name: 'split.lat', values: [j, 10 + j] }])] }));
    const rollup = buildColumns([], [{ name: 'split.lat', values: Array.from({ length: 10 }, (_, j) => [j, 10 + j]).flat() }], [...names, 'split.lat']);
    const bodies = cutter.bodies({ rack: 'sp', second: t0 + 5, late: false, shards: S, servers, rollup }, () => ({ session: 1, seq: seq++ }), { sectionBytesMax: 4096, bodyBytesMax: 8192, metricBytesMax: 8192 });
    // Shard sections were cut by metrics: some shard is in more than one body.
    expect(bodies.length).toBeGreaterThan(S);
    for (const b of bodies) expect((await node.app.request('/api/v1/ingest', { method: 'POST', body: b.bytes })).status).toBe(204);
    for (const i of [0, 77, 199]) {
      const [w] = await query(node, `FROM sp-* SELECT split.${i} WINDOW 1m COMPUTE sum, count`, t0, t0 + 60);
      expect(w!.values).toEqual({ sum: 10 * i + 45, count: 10 });
    }
    const [w] = await query(node, 'FROM * SELECT split.lat WINDOW 1m COMPUTE count, min, max, percentile(50)', t0, t0 + 60);
    expect(w!.values).toMatchObject({ count: 20, min: 0, max: 19 });
    const p50 = w!.values['percentile(50)']!;
    expect(p50).toBeGreaterThan(9 * 0.98);
    expect(p50).toBeLessThan(10 * 1.02);
  });
});

describe('issue 16 regressions through a node', () => {
  it('history follows a server\'s current rack (16.5): a query sees every observation of the selected servers, whichever racks carried them', async () => {
    const node = await start();
    const g = (v: number): PointInput[] => [{ name: 'h.x', kind: KindCode.Gauge, value: v }];
    // r1 carries web-01 for 10 s, then r1 restarts as r1b and carries it on.
    for (let k = 0; k < 10; k++) await post(node, 'r1', t0 + k, { 'web-01': g(1) });
    for (let k = 10; k < 12; k++) await post(node, 'r1b', t0 + k, { 'web-01': g(1) });
    // Two edges claiming web-02 on two racks, alternating: both are its observations.
    for (let k = 0; k < 10; k++) await post(node, k % 2 === 0 ? 'ra' : 'rb', t0 + k, { 'web-02': g(k % 2 === 0 ? 10 : 12) });
    const [w1] = await query(node, 'FROM web-01 SELECT h.x WINDOW 1m COMPUTE sum', t0, t0 + 60);
    expect(w1!.values.sum).toBe(12);
    const [w2] = await query(node, 'FROM web-02 SELECT h.x WINDOW 1m COMPUTE sum', t0, t0 + 60);
    expect(w2!.values.sum).toBe(110);
    const [all] = await query(node, 'FROM * SELECT h.x WINDOW 1m COMPUTE sum', t0, t0 + 60);
    expect(all!.values.sum).toBe(122);
    await node.pool.flush(Date.now() + 3_600_000);
    const [rows] = await query(node, 'FROM * SELECT h.x WINDOW 1m COMPUTE sum', t0, t0 + 60);
    expect(rows!.values.sum).toBe(122);
  });

  it('the per-server new-metric limit did nothing (16.8): names arriving after the data no longer register metrics without an owner', async () => {
    const node = await start({ metricsPerServerMax: 5 });
    const minted = Array.from({ length: 20 }, (_, i) => ({ name: `mint.${i}`, kind: KindCode.Counter as const, value: 1 }));
    // The rack sends newly learned names with a later second than their data.
    await post(node, 'r1', t0, { bomb: minted });
    await post(node, 'r1', t0 + 1, { bomb: [] }, minted.map((m) => m.name));
    const listed = ((await (await node.app.request('/api/v1/metrics')).json()) as { metrics: { name: string; kind: string }[] }).metrics.filter((m) => m.name.startsWith('mint.'));
    expect(listed).toHaveLength(5);
    expect(listed.every((m) => m.kind === 'counter')).toBe(true);
    const text = await (await node.app.request('/metrics')).text();
    expect(text).toMatch(/apm_core_points_dropped_total\{reason="metric_overflow"\} 15\b/);
  });

  it('one stored query stopped the core from starting (16.2): a definition that no longer parses is set aside, listed and deletable', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-regress-'));
    mkdirSync(join(dir, 'meta'), { recursive: true });
    const meta = openLmdb({ path: join(dir, 'meta'), mapSize: 1 << 26, maxDbs: 4 });
    const bad = { id: 'badbadbadbad', name: 'old', query: 'FROM web-[ SELECT x WINDOW 5s COMPUTE max', createdMs: Date.now() };
    await meta.openDB({ name: 'queries', encoding: 'json' }).put(bad.id, bad);
    await meta.close();
    const node = await start({}, dir);
    const list = (await (await node.app.request('/api/v1/queries')).json()) as { queries: unknown[]; unloadable: { id: string; error: string }[] };
    expect(list.queries).toEqual([]);
    expect(list.unloadable).toMatchObject([{ id: bad.id }]);
    expect(await (await node.app.request('/metrics')).text()).toMatch(/apm_core_queries_unloadable 1\b/);
    expect((await node.app.request(`/api/v1/queries/${bad.id}`, { method: 'DELETE' })).status).toBe(204);
    expect(((await (await node.app.request('/api/v1/queries')).json()) as { unloadable?: unknown[] }).unloadable).toBeUndefined();
  });
});

describe('regression: a live-stream client that stops reading', () => {
  it('is dropped and gives back its slot once its queue is full (before: counted as dropped, its slot held until it closed the socket)', async () => {
    const node = await start();
    const { serveHttp } = await import('./http-server.js');
    const { server, port } = await serveHttp(node.app.fetch, '127.0.0.1', 0);
    try {
      const created = (await (await node.app.request('/api/v1/queries', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ query: 'FROM * SELECT cpu WINDOW 1s COMPUTE max' }) })).json()) as { id: string };
      const gauge = async (name: string) => Number(new RegExp(`^${name} (\\d+)`, 'm').exec(await (await node.app.request('/metrics')).text())?.[1]);
      const { connect } = await import('node:net');
      const sock = connect(port, '127.0.0.1');
      await new Promise((r) => sock.once('connect', r));
      sock.write(`GET /api/v1/queries/${created.id}/live HTTP/1.1\r\nHost: x\r\n\r\n`);
      sock.pause(); // never reads: the socket's buffers fill, then every write waits
      const { until } = await import('../test/proc.js');
      await until(async () => ((await gauge('apm_core_live_subscribers')) === 1 ? true : undefined), 5000, 'the stream open');
      const pad = 'x'.repeat(2000);
      for (let i = 0; i < 10_000; i++) {
        node.stored.receiveWindow(created.id, { startMs: 1_790_000_000_000 + i * 1000, endMs: 1_790_000_001_000 + i * 1000, servers: 1, count: 1, values: { max: i }, revision: 0, pad } as unknown as WindowResult);
        if (i % 50 === 49) await new Promise((r) => setTimeout(r, 5));
      }
      await until(async () => ((await gauge('apm_core_live_subscribers')) === 0 ? true : undefined), 5000, 'the slot given back while the client still holds its socket');
      expect(await gauge('apm_core_live_subscribers_dropped_total')).toBe(1);
      sock.destroy();
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});

describe('regression: ad-hoc queries queued in a worker without bound', () => {
  it('beyond queriesWaitingPerWorkerMax a query is answered 503 at once, counted (before: queued, each delaying the ingest behind it)', async () => {
    const node = await start({ queriesWaitingPerWorkerMax: 2 });
    await post(node, 'r1', t0, { 'q-1': [{ name: 'cpu', kind: KindCode.Gauge, value: 1 }] }, ['cpu']);
    const url = `/api/v1/query?q=${encodeURIComponent('FROM * SELECT cpu WINDOW 1s COMPUTE max')}&from=${t0 * 1000}&to=${(t0 + 60) * 1000}&nocache=1`;
    const answers = await Promise.all(Array.from({ length: 10 }, async () => {
      const r = await node.app.request(url);
      return { status: r.status, text: await r.text() };
    }));
    const busy = answers.filter((a) => a.status === 503);
    expect(busy.length).toBeGreaterThanOrEqual(1);
    expect(busy.every((a) => /2 queries waiting; retry later/.test(a.text))).toBe(true);
    expect(answers.filter((a) => a.status === 200).length).toBeGreaterThanOrEqual(2);
    expect(await (await node.app.request('/metrics')).text()).toMatch(new RegExp(`apm_core_worker_queries_busy_total ${busy.length}\\b`));
  });
});

describe('regression: a section repeating one server in a metric', () => {
  it('keeps that server\'s first point, drops the repeats as bad values, and sizes the head by servers (before: by entries, ~50× the section\'s bytes, again on every WAL replay)', async () => {
    const node = await start();
    const gauge = async (name: string) => Number(new RegExp(`^${name.replace(/[{}"]/g, (c) => `\\${c}`)} (\\d+)`, 'm').exec(await (await node.app.request('/metrics')).text())?.[1]);
    const repeats: PointInput[] = Array.from({ length: 20_000 }, (_, i) => ({ name: 'dup.g', kind: KindCode.Gauge, value: i + 1 }));
    await post(node, 'r1', t0, { 'd-1': repeats, 'd-2': [{ name: 'dup.g', kind: KindCode.Gauge, value: 7 }] }, ['dup.g']);
    const [w] = await query(node, 'FROM * SELECT dup.g WINDOW 1s COMPUTE count, min, max', t0, t0 + 1);
    expect(w!.values).toEqual({ count: 2, min: 1, max: 7 });
    expect(await gauge('apm_core_points_dropped_total{reason="bad_value"}')).toBe(19_999);
    // Two servers' worth of a 60 s block (~1 KB), not 20,000 servers' (~9.6 MB).
    expect(await gauge('apm_core_head_bytes')).toBeLessThan(200_000);
  });
});

async function waitFor(cond: () => Promise<boolean> | boolean, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
