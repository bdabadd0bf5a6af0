// Query figures (issue 5, DESIGN §7): ad-hoc evaluation over 1,000 servers, one server over a
// day, and stored-query results served over HTTP under autocannon load.

import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { serve } from '@hono/node-server';
import { createApi } from '../core/api.js';
import { evaluate } from '../core/query/eval.js';
import { parseQuery } from '../core/query/parse.js';
import { StoredQueries } from '../core/query/stored.js';
import { Store } from '../core/store.js';
import { BatchMaker } from './bench-core.js';
import type { Figure } from './bench-edge.js';

const run = promisify(execFile);

/** 25 racks × 40 servers × 20 realistic gauges for `seconds`, in a fresh store. */
async function fleetStore(seconds: number): Promise<{ store: Store; dir: string; t: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'apm-bench-query-'));
  const store = new Store({ dir, retentionSeconds: 365 * 86400, blockSeconds: 60, mapBytes: 2 ** 34, flushGraceMs: 0, headBytesMax: 2 ** 32, metricsMax: 10_000, diskBytesMax: 0, diskReserveBytes: 0 });
  const makers = Array.from({ length: 25 }, (_, r) => new BatchMaker(`q-r${r}`, 40, 20, 0, 300 + r));
  const start = Math.floor(Date.now() / 1000) - 2 * 86400;
  const t = start - (start % 3600);
  for (let k = 0; k < seconds; k++) {
    for (const m of makers) await store.ingest(m.batch(t + k));
    if (k % 60 === 59) await store.flushDue(Date.now() + 86_400_000);
  }
  await store.flushDue(Date.now() + 86_400_000);
  return { store, dir, t };
}

function timeMs(reps: number, f: () => void): { p50: number; max: number } {
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const s = process.hrtime.bigint();
    f();
    times.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  times.sort((a, b) => a - b);
  return { p50: times[Math.floor(reps / 2)]!, max: times[reps - 1]! };
}

export async function queryFigures(quick: boolean): Promise<Figure[]> {
  const seconds = quick ? 600 : 3600;
  const { store, dir, t } = await fleetStore(seconds);
  const out: Figure[] = [];
  const minutes = seconds / 60;
  for (const [label, fns, span] of [
    ['min, max', 'min, max', 600],
    ['exact p99', 'p99', 600],
    ['min, max, avg, p99', 'min, max, avg, p99', seconds],
  ] as const) {
    const q = parseQuery(`FROM * SELECT bench.metric_0 WINDOW 5s COMPUTE ${fns}`);
    let windows = 0;
    const r = timeMs(5, () => (windows = evaluate(store, q, t, t + span).length));
    const peer = label === 'exact p99' ? 117 : label === 'min, max' ? 13 : undefined;
    out.push({ name: `ad-hoc: 1 metric × 1,000 servers × ${span / 60} min of 5 s windows (${windows}), ${label}`, value: r.p50, unit: `ms p50 (max ${r.max.toFixed(0)} ms)`, target: peer === undefined ? undefined : `VictoriaMetrics ≈ ${peer} ms` });
  }
  const one = parseQuery('FROM q-r0-0 SELECT bench.metric_0 WINDOW 1m COMPUTE avg, max, p99');
  const r1 = timeMs(5, () => evaluate(store, one, t, t + seconds));
  out.push({ name: `ad-hoc: 1 server × 1 metric × ${minutes} min of 1 m windows`, value: r1.p50, unit: 'ms p50' });

  // Stored results over HTTP under load: 1 h (or 10 min) of 5 s windows per request.
  const stored = new StoredQueries(store.env, store, { latenessMs: 0, windowsPerTickMax: 100_000, queriesMax: 10, lateSecondsMax: 1000 });
  const def = await stored.create('cpu', 'FROM * SELECT bench.metric_0 WINDOW 5s COMPUTE min, max, avg, p99', t * 1000);
  const f0 = process.hrtime.bigint();
  await stored.tick((t + seconds) * 1000);
  const catchUpMs = Number(process.hrtime.bigint() - f0) / 1e6;
  out.push({ name: `stored query catch-up: ${seconds / 5} windows of 1,000 servers computed from storage`, value: catchUpMs, unit: 'ms' });
  const app = createApi(store, stored, { ingestBodyBytesMax: 1 << 20 });
  const server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => server.once('listening', () => r()));
  const port = (server.address() as { port: number }).port;
  const url = `http://127.0.0.1:${port}/api/v1/queries/${def.id}/results?from=${t * 1000}&to=${(t + seconds) * 1000}`;
  const autocannon = fileURLToPath(new URL('../../node_modules/.bin/autocannon', import.meta.url));
  const { stdout } = await run(process.execPath, [autocannon, '-j', '-c', '10', '-d', quick ? '5' : '10', url], { maxBuffer: 1 << 24 });
  const res = JSON.parse(stdout) as { requests: { average: number }; latency: { p50: number; p99: number }; non2xx: number };
  out.push({ name: `GET results (${seconds / 5} windows of 5 s), 10 connections: requests/s`, value: res.requests.average, unit: '/s' });
  out.push({ name: '  … latency p50 / p99', value: res.latency.p50, unit: `ms / ${res.latency.p99} ms p99`, target: 'p99 ≤ 5 ms (for 1 h)' });
  if (res.non2xx > 0) throw new Error(`BUG: ${res.non2xx} failed requests under load`);
  await new Promise((r) => server.close(r));
  await store.close();
  rmSync(dir, { recursive: true, force: true });
  return out;
}
