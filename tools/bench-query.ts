// Query figures (issues 5 and 12, DESIGN §7): ad-hoc evaluation over 1,000 servers and one
// server over the range, through the HTTP API of a core node (its workers evaluate), the catch-up
// of a stored query from storage, and its results served over HTTP under load (wrk, autocannon).

import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve } from '@hono/node-server';
import { Pool } from 'undici';
import { openNode, type CoreNode } from '../core/node.js';
import { BatchMaker, blockStart } from './bench-batch.js';
import type { Figure } from './bench-edge.js';
import { httpLoad, wrkInstalled, type LoadClient } from './bench-http.js';
import { countQl, metricsQl, VictoriaMetrics, vmBinary, vmValues, type VmFleet } from './bench-peer-vm.js';

const storedText = 'FROM * SELECT bench.metric_0 WINDOW 5s COMPUTE min, max, avg, p99';

/**
 * 25 racks × 40 servers × 20 realistic gauges for `seconds` from `t`, into the node's workers as
 * the HTTP thread hands them over (each second's bodies built while the previous are stored).
 */
const fleet: VmFleet = { racks: 25, servers: 40, metrics: 20, seedOf: (r) => 300 + r, rackName: (r) => `q-r${r}` };

async function ingest(node: CoreNode, t: number, seconds: number): Promise<number> {
  const makers = Array.from({ length: fleet.racks }, (_, r) => new BatchMaker({ rack: fleet.rackName(r), servers: fleet.servers, metrics: fleet.metrics, distShare: 0, seed: fleet.seedOf(r), shards: node.pool.shards, session: 3000 + r }));
  let points = 0;
  let pending: Promise<void> = Promise.resolve();
  for (let k = 0; k < seconds; k++) {
    const bodies = makers.map((m) => m.body(t + k));
    await pending;
    if (k % 60 === 0 && k > 0) await node.pool.flush(Date.now() + 30 * 86_400_000); // the minutes before, written
    pending = Promise.all(bodies.map((b) => node.pool.ingest(b))).then((rs) => {
      for (const r of rs) {
        if (r.status !== 204) throw new Error(`bench query INVALID RUN: ingest of second ${t + k} answered ${r.status}: ${r.error}`);
        points += r.points;
      }
    });
  }
  await pending;
  await node.pool.flush(Date.now() + 30 * 86_400_000);
  return points;
}

async function timeMs(reps: number, f: () => Promise<void>): Promise<{ p50: number; max: number }> {
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const s = process.hrtime.bigint();
    await f();
    times.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  times.sort((a, b) => a - b);
  return { p50: times[Math.floor(reps / 2)]!, max: times[reps - 1]! };
}

interface Window {
  startMs: number;
  servers: number;
  count: number;
  values: Record<string, number>;
}

async function windowsOf(url: string): Promise<Window[]> {
  const res = await fetch(url);
  const text = await res.text();
  if (res.status !== 200) throw new Error(`bench query INVALID RUN: GET ${url} answered ${res.status} ${text}`);
  return (JSON.parse(text) as { windows: Window[] }).windows;
}

/**
 * The same through undici's own request API on one kept-alive connection: the client a program
 * that queries all day would use (Node's fetch is built on it and costs 0.35–0.8 ms more per
 * call on this box — more than the whole answer of a small query).
 */
async function windowsOfLean(client: Pool, base: string, url: string): Promise<Window[]> {
  const res = await client.request({ path: url.slice(base.length), method: 'GET' });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`bench query INVALID RUN: GET ${url} answered ${res.statusCode} ${text}`);
  return (JSON.parse(text) as { windows: Window[] }).windows;
}

// Issue 14's table: one metric, 120 windows of 5 s, over the fleet and over 40 servers spread
// across it (one or two per rack), per function set; VictoriaMetrics 1.79 on the same samples
// and apm before issue 14 (DESIGN §7, measured 2026-12-01).
const tableShapes = [
  { label: 'min, max', fns: 'min, max', vm1000: '8.5–16.6', vm40: '0.8–1.1', before1000: '42', before40: '32–36' },
  { label: 'avg', fns: 'avg', vm1000: '15.6–26.1', vm40: '—', before1000: '50', before40: '32–36' },
  { label: 'p50, p90, p99 exact', fns: 'p50, p90, p99', vm1000: '100–140', vm40: '4.6–5.9', before1000: '94', before40: '32–36' },
  { label: 'all six', fns: 'min, max, avg, p50, p90, p99', vm1000: '138', vm40: '—', before1000: '90', before40: '32–36' },
] as const;

/** 40 servers spread over the 25 racks of ingest(): two in each of the first 15 racks, one in the others. */
function spreadServers(): string[] {
  const out: string[] = [];
  for (let r = 0; r < 25; r++) {
    out.push(`q-r${r}-${(r * 7) % 40}`);
    if (r < 15) out.push(`q-r${r}-${(r * 7 + 20) % 40}`);
  }
  return out;
}

async function shapesTable(base: string, t: number, seconds: number): Promise<Figure[]> {
  const out: Figure[] = [];
  const lean = new Pool(base, { connections: 1 });
  // VictoriaMetrics side by side when installed (Debian: apt install victoria-metrics), fed the
  // table's first 600 s of every series: both systems on this box, one at a time.
  const bin = vmBinary();
  let vm: VictoriaMetrics | null = null;
  try {
    if (bin === null) console.log('  victoria-metrics is not installed (Debian: apt install victoria-metrics; or APM_BENCH_VM=<binary>): the table compares with DESIGN §7\'s published figures only');
    else {
      vm = await VictoriaMetrics.start(bin);
      const c0 = performance.now();
      const samples = await vm.importFleet(fleet, t, 600);
      console.log(`  ${vm.version} on 127.0.0.1 beside apm: ${samples.toLocaleString('en-US')} samples imported (the same shapes and seeds) in ${((performance.now() - c0) / 1000).toFixed(1)} s`);
    }
    return await shapesTableWith(base, t, seconds, lean, vm, out);
  } finally {
    await lean.close();
    await vm?.stop();
  }
}

/**
 * VictoriaMetrics' p50 for one cell (nocache=1, warmed as apm's), after checking (untimed) that it
 * holds the same points per window as apm and gives apm's min, max and avg for each window (the
 * counts alone would pass a window shifted by a second), and that its percentiles lie within its
 * buckets' width of apm's exact ones.
 */
async function vmCell(vm: VictoriaMetrics, lean: Pool, base: string, t: number, fns: string[], servers: readonly string[] | null, apm: Window[], apmUrl: string): Promise<{ apm: { p50: number; max: number }; vm: { p50: number; max: number } }> {
  const selector = servers === null ? '{__name__="bench.metric_0"}' : `{__name__="bench.metric_0", server=~"${servers.join('|')}"}`;
  const [start, end] = [t + 4, t + 4 + 119 * 5];
  const label = `VictoriaMetrics, ${fns.join(', ')} over ${servers === null ? 'every server' : `${servers.length} servers`}`;
  const counts = vmValues(await vm.query(countQl(selector), start, end, 5), '');
  const same = await vm.query(metricsQl(['min', 'max', 'avg'], selector), start, end, 5);
  const apmSame = await windowsOfLean(lean, base, `${base}/api/v1/query?q=${encodeURIComponent(`FROM ${servers === null ? '*' : servers.join(',')} SELECT bench.metric_0 WINDOW 5s COMPUTE min, max, avg`)}&from=${t * 1000}&to=${(t + 600) * 1000}&nocache=1`);
  const path = vm.rangePath(metricsQl(fns, selector), start, end, 5);
  let result = await vm.get(path);
  if (apmSame.length !== apm.length) throw new Error(`bench query INVALID RUN: ${label}: apm gave ${apmSame.length} and ${apm.length} windows`);
  for (const [i, w] of apm.entries()) {
    const at = w.startMs / 1000;
    if (counts.get(at) !== w.count) throw new Error(`bench query INVALID RUN: ${label}: window ${at} holds ${counts.get(at)} points, apm ${w.count}`);
    for (const f of ['min', 'max', 'avg']) {
      const v = vmValues(same, f).get(at);
      const want = apmSame[i]!.values[f]!;
      const close = v !== undefined && (f === 'avg' ? Math.abs(v - want) <= 1e-9 * Math.max(1, Math.abs(want)) : v === want);
      if (!close) throw new Error(`bench query INVALID RUN: ${label}: window ${at} ${f} = ${v}, apm ${want}`);
    }
    for (const f of fns.filter((x) => /^p\d+$/.test(x))) {
      const v = vmValues(result, String(Number(f.slice(1)) / 100)).get(at);
      const want = w.values[`percentile(${f.slice(1)})`]!;
      // Its buckets are ~12 % wide; interpolated within one, an estimate stays within ~25 %.
      if (v === undefined || !(Math.abs(v - want) <= 0.25 * Math.max(1, Math.abs(want)))) throw new Error(`bench query INVALID RUN: ${label}: window ${at} ${f} = ${v}, apm (exact) ${want}`);
    }
  }
  for (let i = 0; i < 30; i++) result = await vm.get(path);
  let again: Window[] = [];
  const turns = await timeInTurns(
    41,
    async () => void (again = await windowsOfLean(lean, base, apmUrl)),
    async () => void (result = await vm.get(path)),
  );
  if (again.length !== apm.length) throw new Error(`bench query INVALID RUN: ${label}: apm gave ${again.length} windows in turns, ${apm.length} before`);
  return { apm: turns[0], vm: turns[1] };
}

/**
 * Two systems timed in turns, one request each, `reps` times; each one's p50 and max. A moment
 * the box is busy (a background merge, another process) then costs both alike: timed one after
 * the other, a disturbance during one cell's 21 calls made one run's 40-spread avg 1.24× with
 * every column of that row slower, its cached answers too (twenty-fifth session).
 */
async function timeInTurns(reps: number, a: () => Promise<void>, b: () => Promise<void>): Promise<[{ p50: number; max: number }, { p50: number; max: number }]> {
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < reps; i++) {
    for (const [f, times] of [[a, ta], [b, tb]] as const) {
      const s = process.hrtime.bigint();
      await f();
      times.push(Number(process.hrtime.bigint() - s) / 1e6);
    }
  }
  const stat = (x: number[]) => {
    x.sort((p, q) => p - q);
    return { p50: x[Math.floor(reps / 2)]!, max: x[reps - 1]! };
  };
  return [stat(ta), stat(tb)];
}

// Each cell three ways: every window evaluated (nocache=1: what the engine costs); the same
// query again (its windows from the worker's answer cache, core/query/windowcache.ts: a panel
// redrawn, a second viewer); and a dashboard's refresh, the range 5 s later at each call (one
// new window evaluated, 119 from the cache; needs data past the range: not with --quick).
async function shapesTableWith(base: string, t: number, seconds: number, lean: Pool, vm: VictoriaMetrics | null, out: Figure[]): Promise<Figure[]> {
  const refreshes = seconds >= 600 + 5 * 60;
  const lines = [
    '                                   apm p50 ms (max)',
    '                                   every window (nocache=1)       same query again (cache)    refresh +5 s',
    '  servers  functions               fetch          undici          fetch         undici        undici          before   VictoriaMetrics (every window)',
  ];
  const ms = (r: { p50: number; max: number }) => `${r.p50.toFixed(2).padStart(6)} (${r.max.toFixed(1)})`.padEnd(15);
  const peer: string[] = [];
  for (const [servers, from] of [[1000, '*'], [40, spreadServers().join(',')]] as const) {
    for (const shape of tableShapes) {
      const q = encodeURIComponent(`FROM ${from} SELECT bench.metric_0 WINDOW 5s COMPUTE ${shape.fns}`);
      let windows: Window[] = [];
      const urlAt = (shift: number) => `${base}/api/v1/query?q=${q}&from=${(t + shift) * 1000}&to=${(t + shift + 600) * 1000}`;
      const cached = urlAt(0);
      const url = `${cached}&nocache=1`;
      const check = (client: string) => {
        if (windows.length !== 120 || windows.some((w) => w.servers !== servers || w.count !== servers * 5)) {
          throw new Error(`bench query INVALID RUN: ${shape.label} over ${servers} servers (${client}) gave ${windows.length} windows (want 120), servers per window ${[...new Set(windows.map((w) => w.servers))].join(', ')} (want ${servers}), points ${[...new Set(windows.map((w) => w.count))].join(', ')} (want ${servers * 5})`);
        }
      };
      // Warm: the worker's code optimized for this shape (a core answers queries all day; after 5
      // calls the 40-server cells still took ~30 % longer than after 30).
      for (let i = 0; i < 30; i++) await windowsOf(url), await windowsOfLean(lean, base, url);
      const r = await timeMs(21, async () => void (windows = await windowsOf(url)));
      check('fetch');
      windows = [];
      const rl = await timeMs(21, async () => void (windows = await windowsOfLean(lean, base, url)));
      check('undici.request');
      const atStart = windows; // the windows from t, for the side-by-side check
      for (let i = 0; i < 5; i++) await windowsOf(cached), await windowsOfLean(lean, base, cached);
      windows = [];
      const c = await timeMs(21, async () => void (windows = await windowsOf(cached)));
      check('fetch, cached');
      windows = [];
      const cl = await timeMs(21, async () => void (windows = await windowsOfLean(lean, base, cached)));
      check('undici.request, cached');
      let shift = 0;
      const refresh = refreshes ? await timeMs(21, async () => void (windows = await windowsOfLean(lean, base, urlAt((shift += 5))))) : null;
      if (refresh !== null) check('undici.request, refreshed');
      const published = servers === 1000 ? shape.vm1000 : shape.vm40;
      const before = servers === 1000 ? shape.before1000 : shape.before40;
      lines.push(`  ${String(servers).padStart(7)}  ${shape.label.padEnd(22)}  ${ms(r)}${ms(rl)}${ms(c)}${ms(cl)}${refresh === null ? '—'.padEnd(15) : ms(refresh)} ${before.padStart(6)}   ${published}`);
      const cell = `issue 14 table: 1 metric × ${servers} servers${servers === 40 ? ' (spread, 1–2 per rack)' : ''} × 120 windows of 5 s, ${shape.label}`;
      out.push({ name: cell, value: r.p50, unit: `ms p50 with fetch, nocache=1 (max ${r.max.toFixed(1)} ms; before ${before} ms)`, target: `VictoriaMetrics ${published} ms` });
      out.push({ name: `${cell}, undici.request`, value: rl.p50, unit: `ms p50, nocache=1 (max ${rl.max.toFixed(1)} ms)`, target: `VictoriaMetrics ${published} ms` });
      if (vm !== null) {
        const { apm: a, vm: v } = await vmCell(vm, lean, base, t, shape.fns.split(', '), servers === 1000 ? null : spreadServers(), atStart, url);
        const ratio = a.p50 / v.p50;
        peer.push(`  ${String(servers).padStart(7)}  ${shape.label.padEnd(22)}  ${ms(a)}${ms(v)}${ratio.toFixed(2).padStart(6)}×  ${ratio < 1 ? 'apm faster' : 'VictoriaMetrics faster'}`);
        out.push({ name: `${cell}, VictoriaMetrics side by side (undici.request, nocache=1)`, value: v.p50, unit: `ms p50 (max ${v.max.toFixed(1)} ms)` });
        out.push({ name: `${cell}, apm side by side (undici.request, nocache=1, in turns with VictoriaMetrics)`, value: a.p50, unit: `ms p50 (max ${a.max.toFixed(1)} ms)` });
        out.push({ name: `${cell}, apm ÷ VictoriaMetrics side by side`, value: ratio, unit: '× (undici p50 ÷ undici p50, timed in turns; below 1: apm faster)', target: '< 1' });
      }
      // The cached cells have no VictoriaMetrics column: its figures were taken in another harness,
      // with its cache state not recorded; only every-window (nocache=1) cells compare with them.
      out.push({ name: `${cell}, same query again (answer cache), fetch`, value: c.p50, unit: `ms p50 (max ${c.max.toFixed(1)} ms)` });
      out.push({ name: `${cell}, same query again (answer cache), undici.request`, value: cl.p50, unit: `ms p50 (max ${cl.max.toFixed(1)} ms)` });
      if (refresh !== null) out.push({ name: `${cell}, refreshed (range +5 s per call, answer cache), undici.request`, value: refresh.p50, unit: `ms p50 (max ${refresh.max.toFixed(1)} ms)` });
    }
  }
  // What any answer costs here: the client's fetch and the route, in this process, without evaluation.
  const floor = await timeMs(21, async () => void (await (await fetch(`${base}/api/v1/placement`)).text()));
  const floorLean = await timeMs(21, async () => void (await (await lean.request({ path: '/api/v1/placement', method: 'GET' })).body.text()));
  lines.push(`  HTTP floor (GET /api/v1/placement from this process): fetch ${floor.p50.toFixed(2)} ms p50, undici.request ${floorLean.p50.toFixed(2)} ms p50`);
  if (vm !== null) {
    lines.push('', `  side by side on this box, every window (nocache=1), undici.request on one kept-alive connection each, timed in turns (41 each); ${vm.version}:`);
    lines.push('  servers  functions               apm p50 (max)  VM p50 (max)   apm ÷ VM');
    lines.push(...peer);
    lines.push('  (VictoriaMetrics: min/max/avg as MetricsQL rollups; percentiles by histogram_quantiles over histogram_over_time, its own fleet percentile, ~12 % buckets, where apm\'s are exact)');
  }
  console.log(lines.join('\n'));
  out.push({ name: 'issue 14 table: HTTP floor, GET /api/v1/placement from the bench process, fetch', value: floor.p50, unit: 'ms p50' });
  out.push({ name: 'issue 14 table: HTTP floor, the same with undici.request', value: floorLean.p50, unit: 'ms p50' });
  return out;
}

export async function queryFigures(quick: boolean): Promise<Figure[]> {
  const seconds = quick ? 600 : 3600;
  const dir = mkdtempSync(join(tmpdir(), 'apm-bench-query-'));
  // Its data lies hours ahead of the clock (below): the core takes that here.
  const node = await openNode({ dataDir: dir, workers: availableParallelism(), queryLatenessMs: 0, limits: { futureSecondsMax: 6 * 3600 } });
  const server = serve({ fetch: node.app.fetch, hostname: '127.0.0.1', port: 0 });
  try {
    await new Promise<void>((r) => server.once('listening', () => r()));
    const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    // A stored query starts at the window before it was created. For an hour of its results to
    // exist without waiting an hour, the query is created first and the data lies ahead of the
    // clock (past anything ingest reaches in real time); the catch-up ticks evaluate as of its end.
    const def = await node.stored.create('cpu', storedText, Date.now());
    const t = blockStart(Math.floor(Date.now() / 1000)) + (quick ? 1200 : 3 * 3600);
    const points = await ingest(node, t, seconds);
    if (points !== 1000 * 20 * seconds) throw new Error(`bench query INVALID RUN: ${points} of ${1000 * 20 * seconds} points stored`);
    const out: Figure[] = [];
    const minutes = seconds / 60;
    for (const [label, fns, span] of [
      ['min, max', 'min, max', 600],
      ['exact p99', 'p99', 600],
      ['min, max, avg, p99', 'min, max, avg, p99', seconds],
    ] as const) {
      const q = encodeURIComponent(`FROM * SELECT bench.metric_0 WINDOW 5s COMPUTE ${fns}`);
      let windows: Window[] = [];
      const url = `${base}/api/v1/query?q=${q}&from=${t * 1000}&to=${(t + span) * 1000}&nocache=1`;
      // Warm, as the table below: the first calls after ingest measure V8 compiling the evaluator.
      for (let i = 0; i < 10; i++) await windowsOf(url);
      const r = await timeMs(5, async () => void (windows = await windowsOf(url)));
      if (windows.length !== span / 5 || windows.some((w) => w.servers !== 1000)) throw new Error(`bench query INVALID RUN: ${label} over ${span} s gave ${windows.length} windows (want ${span / 5}), servers per window ${[...new Set(windows.map((w) => w.servers))].join(', ')} (want 1000)`);
      const peer = label === 'exact p99' ? 117 : label === 'min, max' ? 13 : undefined;
      out.push({ name: `ad-hoc over HTTP: 1 metric × 1,000 servers × ${span / 60} min of 5 s windows (${windows.length}), ${label}`, value: r.p50, unit: `ms p50 (max ${r.max.toFixed(0)} ms)`, target: peer === undefined ? undefined : `VictoriaMetrics ≈ ${peer} ms` });
    }
    const one = encodeURIComponent('FROM q-r0-0 SELECT bench.metric_0 WINDOW 1m COMPUTE avg, max, p99');
    let oneWindows: Window[] = [];
    const r1 = await timeMs(5, async () => void (oneWindows = await windowsOf(`${base}/api/v1/query?q=${one}&from=${t * 1000}&to=${(t + seconds) * 1000}&nocache=1`)));
    if (oneWindows.length !== minutes || oneWindows.some((w) => w.count !== 60)) throw new Error(`bench query INVALID RUN: one server gave ${oneWindows.length} windows of 1 m (want ${minutes}, 60 points each)`);
    out.push({ name: `ad-hoc over HTTP: 1 server × 1 metric × ${minutes} min of 1 m windows`, value: r1.p50, unit: 'ms p50' });
    out.push(...(await shapesTable(base, t, seconds)));

    // Stored results over HTTP under load: 1 h (or 10 min) of 5 s windows per request.
    const resultsUrl = `${base}/api/v1/queries/${def.id}/results?from=${t * 1000}&to=${(t + seconds) * 1000}`;
    const c0 = performance.now();
    let stored: string[] = [];
    for (let tick = 0; tick < 100 && stored.length < seconds / 5; tick++) {
      await node.pool.tick((t + seconds) * 1000 + 1000);
      stored = await node.stored.resultsJson(def.id, t * 1000, (t + seconds) * 1000, 3600);
    }
    const catchUpMs = performance.now() - c0;
    const got = await windowsOf(resultsUrl);
    if (got.length !== seconds / 5 || got.some((w) => w.servers !== 1000)) throw new Error(`bench query INVALID RUN: the stored query has ${got.length} windows (want ${seconds / 5}) of ${[...new Set(got.map((w) => w.servers))].join(', ')} servers (want 1000)`);
    out.push({ name: `stored query catch-up: ${seconds / 5} windows of 1,000 servers (from ${Math.round((t - def.createdMs / 1000) / 60)} min before the data) computed from storage`, value: catchUpMs, unit: 'ms' });
    // Under load: 10 connections, by wrk when installed (tools/bench-http.ts says why), then by
    // autocannon as every session before the twelfth measured it. Each warmed 2 s, not counted.
    const clients: LoadClient[] = wrkInstalled() ? ['wrk', 'autocannon'] : ['autocannon'];
    if (clients[0] !== 'wrk') console.log('  wrk is not installed (Debian: apt install wrk): results under load are autocannon\'s, whose own lag at ~100 KB an answer is in its figures');
    for (const client of clients) {
      await httpLoad(client, resultsUrl, 10, 2);
      const res = await httpLoad(client, resultsUrl, 10, quick ? 5 : 10);
      if (res.failed > 0 || !(res.requests > 0)) throw new Error(`bench query INVALID RUN: under load (${client}) ${res.requests} requests, ${res.failed} failed`);
      const first = client === clients[0];
      out.push({ name: `GET results (${seconds / 5} windows of 5 s), 10 connections, ${client}: requests/s`, value: res.requestsPerS, unit: '/s' });
      // autocannon's percentiles are whole milliseconds: the mean says what a p50 of 0 or 1 hides.
      out.push({ name: `  … latency mean (p50 / p90 / p99 / max${client === 'autocannon' ? ', whole ms' : ''})`, value: res.meanMs, unit: `ms (${res.p50Ms} / ${res.p90Ms} / ${res.p99Ms} / ${res.maxMs} ms)`, target: first ? 'p99 ≤ 5 ms (for 1 h; here the core does nothing else — bench fleet measures it beside a fleet)' : undefined });
    }
    return out;
  } finally {
    await new Promise((r) => server.close(r));
    await node.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
