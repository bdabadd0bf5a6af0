// The core's longest pause (issue 12, DESIGN §7 "≤ 50 ms"): a real `apm core` ingests 60
// seconds of one minute-block for a fleet (racks of 40 servers), then writes the block's rows
// while a worker thread of this process asks GET /healthz every 5 ms on one keep-alive
// connection. Figures: the longest and p99 round trip while rows are written (from a second
// before apm_core_rows_written_total was first seen rising to apm_core_head_bytes reaching 0),
// the longest during ingest, and the longest row-writing slice the workers report.

import { Worker } from 'node:worker_threads';
import { Client, Pool } from 'undici';
import { BatchMaker, blockStart } from './bench-batch.js';
import type { Figure } from './bench-edge.js';
import { coreMetrics, drained, getJson, memAvailableBytes, metric, rejections, sendRacks, startCore, threadShares, threadTicks } from './bench-proc.js';
import type { PollerData } from './bench-poll.js';

const pollIntervalMs = 5;
/** Samples the poller keeps: 2^18 round trips, 20 minutes at one per 5 ms. */
const pollSamplesMax = 1 << 18;
/** Bytes per point of one block while it is ingested: the bench's prebuilt bodies (≈ 10.5) and
 *  the core's head (typed columns with room to grow, ≈ 16), with margin. */
const bytesPerPointHeld = 32;

interface Poller {
  /** Round trips (ms) of requests started in [fromMs, toMs) (epoch ms), and one still in flight for its time so far. */
  between(fromMs: number, toMs: number): number[];
  failed(): number;
  stop(): Promise<void>;
}

function startPoller(url: string): Poller {
  const samples = new SharedArrayBuffer(pollSamplesMax * 2 * 8);
  const state = new SharedArrayBuffer(8);
  const inFlight = new SharedArrayBuffer(8);
  const data: PollerData = { url, intervalMs: pollIntervalMs, samples, state, inFlight };
  const worker = new Worker(new URL('./bench-poll.js', import.meta.url), { workerData: data });
  let error: Error | null = null;
  worker.on('error', (e) => (error = e));
  const s = new Float64Array(samples);
  const st = new Int32Array(state);
  const fl = new Float64Array(inFlight);
  return {
    between(fromMs, toMs) {
      if (error !== null) throw new Error(`the /healthz poller failed: ${(error as Error).message}`);
      const out: number[] = [];
      const n = Atomics.load(st, 0);
      for (let i = 0; i < n; i++) if (s[2 * i]! >= fromMs && s[2 * i]! < toMs) out.push(Math.abs(s[2 * i + 1]!));
      const since = fl[0]!;
      if (since !== 0 && since >= fromMs && since < toMs) out.push(Date.now() - since);
      return out;
    },
    failed() {
      const n = Atomics.load(st, 0);
      let bad = 0;
      for (let i = 0; i < n; i++) if (s[2 * i + 1]! < 0) bad++;
      return bad;
    },
    async stop() {
      Atomics.store(st, 1, 1);
      const exited = new Promise((r) => worker.once('exit', r));
      // A request stuck in a hung core would hold the worker: it gets 10 s, then is terminated.
      const timer = setTimeout(() => void worker.terminate(), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

interface PauseRun {
  servers: number;
  metrics: number;
  workers: number;
  writeMaxMs: number;
  writeP99Ms: number;
  writeSamples: number;
  writeSeconds: number;
  ingestMaxMs: number;
  sliceMsMax: number;
  rows: number;
  probeMaxMs: number;
  probeP99Ms: number;
  probes: number;
  probes503: number;
  /** The core's CPU by thread while it wrote the block. */
  threads: { text: string; totalPercent: number };
}

/**
 * Re-sends one small rack second (1 server × 32 metrics, on most shards) every 20 ms: after the
 * first copy every answer is a duplicate, so each round trip is the HTTP thread plus the wait in
 * every worker's queue — how long a worker writing rows keeps ingest waiting.
 */
function startProbe(url: string, body: Uint8Array): { between(fromMs: number, toMs: number): number[]; answered503(): number; stop(): Promise<void> } {
  const client = new Client(url);
  const samples: { startMs: number; rttMs: number }[] = [];
  let stopping = false;
  let unavailable = 0;
  let failure: unknown = null;
  const loop = (async () => {
    while (!stopping) {
      const startMs = Date.now();
      const t0 = performance.now();
      const res = await client.request({ path: '/api/v1/ingest', method: 'POST', body, headers: { 'content-type': 'application/x-apm-second' } });
      const text = await res.body.text();
      if (res.statusCode === 503) unavailable++;
      else if (res.statusCode !== 204) throw new Error(`the probe's rack second was answered ${res.statusCode} ${text}`);
      const rttMs = performance.now() - t0;
      samples.push({ startMs, rttMs });
      if (rttMs < 20) await new Promise((r) => setTimeout(r, 20 - rttMs));
    }
  })().catch((err: unknown) => {
    failure = err;
  });
  return {
    between: (fromMs, toMs) => samples.filter((x) => x.startMs >= fromMs && x.startMs < toMs).map((x) => x.rttMs),
    answered503: () => unavailable,
    async stop() {
      stopping = true;
      await loop;
      if (!client.closed) await client.close();
      if (failure !== null) throw failure;
    },
  };
}

const quantile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? NaN;

/** One minute-block of `servers` × `metrics` gauges ingested, then written under a /healthz poll and an ingest probe. */
async function pauseRun(servers: number, metrics: number): Promise<PauseRun> {
  const racks = Math.ceil(servers / 40);
  const core = await startCore([]);
  const pool = new Pool(core.url, { connections: racks });
  let poller: Poller | null = null;
  let probe: ReturnType<typeof startProbe> | null = null;
  try {
    const placement = await getJson<{ shards: number; workers: number }>(`${core.url}/api/v1/placement`);
    // A block three hours back: due for writing 2 s after its last second arrives.
    const block = blockStart(Math.floor(Date.now() / 1000) - 3 * 3600);
    const makers = Array.from({ length: racks }, (_, r) => new BatchMaker({ rack: `pause-r${r}`, servers: 40, metrics, distShare: 0, seed: 50 + r, shards: placement.shards, session: 2000 + r }));
    const bodies = makers.map((m) => Array.from({ length: 60 }, (_, k) => m.body(block + k)));
    const points = racks * 40 * metrics * 60;
    // The probe's second (a block of its own) is stored and written before the measurement.
    const probeBody = new BatchMaker({ rack: 'pause-probe', servers: 1, metrics: 32, distShare: 0, seed: 9, shards: placement.shards, session: 2999 }).body(block - 120);
    await sendRacks(pool, core, [[probeBody]]);
    await drained(core, { points: 32, timeoutMs: 60_000 });
    poller = startPoller(core.url);
    const m0 = await coreMetrics(core);
    const ingestFrom = Date.now();
    const sent = await sendRacks(pool, core, bodies);
    bodies.length = 0; // the bodies' memory goes back before the write
    const ackedMs = Date.now() - (performance.now() - sent.ackedAt);
    probe = startProbe(core.url, probeBody);
    const threads0 = threadTicks(core.pid);
    // Rows: watch them rise and the head fall. A worker resets its longest slice whenever its
    // figures are read (its own 1 s report or a scrape), so the maximum seen is a lower bound.
    let lastIdleSampleMs = ackedMs;
    let rowsSeen = metric(m0, 'apm_core_rows_written_total');
    let sliceMsMax = 0;
    let headMax = 0;
    let rising = false;
    const done = await drained(core, {
      points: metric(m0, 'apm_core_points_ingested_total') + points,
      timeoutMs: 900_000,
      everyMs: 200,
      onSample: (m) => {
        const rows = metric(m, 'apm_core_rows_written_total');
        if (!rising && rows === rowsSeen) lastIdleSampleMs = Date.now();
        if (rows > rowsSeen) rising = true;
        rowsSeen = rows;
        headMax = Math.max(headMax, metric(m, 'apm_core_head_bytes'));
        if (rising) sliceMsMax = Math.max(sliceMsMax, metric(m, 'apm_core_row_slice_ms_max'));
      },
    });
    const doneMs = Date.now();
    const threads = threadShares(core.pid, threads0, threadTicks(core.pid), (doneMs - ackedMs) / 1000);
    await probe.stop();
    // The write began after the last sample without new rows (a busy worker may answer a scrape
    // with its report of up to 1 s before: a second of margin).
    const writeFrom = Math.max(ackedMs, lastIdleSampleMs - 1000);
    const write = poller.between(writeFrom, doneMs).sort((a, b) => a - b);
    const ingest = poller.between(ingestFrom, ackedMs);
    const probes = probe.between(writeFrom, doneMs).sort((a, b) => a - b);
    const failed = poller.failed();
    const m1 = done.metrics;
    const d = (k: string) => metric(m1, k) - metric(m0, k);
    const invalid: string[] = [];
    if (d('apm_core_points_ingested_total') !== points) invalid.push(`the core counted ${d('apm_core_points_ingested_total')} of the ${points} points sent`);
    if (!(d('apm_core_rows_written_total') > 0)) invalid.push('no rows written');
    if (!rising) invalid.push('apm_core_rows_written_total was never seen rising');
    if (!(headMax > 0)) invalid.push('apm_core_head_bytes was never seen above 0');
    if (write.length < 10) invalid.push(`only ${write.length} /healthz answers while rows were written`);
    if (probes.length === 0) invalid.push('no ingest probe answered while rows were written');
    if (failed > 0) invalid.push(`${failed} /healthz requests failed`);
    if (invalid.length > 0) throw new Error(`bench core pause INVALID RUN (${servers} servers × ${metrics} metrics): ${invalid.join('; ')} (refusals: ${rejections(m0, m1) || 'none'})`);
    return {
      servers,
      metrics,
      workers: placement.workers,
      writeMaxMs: write[write.length - 1]!,
      writeP99Ms: quantile(write, 0.99),
      writeSamples: write.length,
      writeSeconds: (doneMs - writeFrom) / 1000,
      ingestMaxMs: Math.max(0, ...ingest),
      sliceMsMax,
      rows: d('apm_core_rows_written_total'),
      probeMaxMs: probes[probes.length - 1]!,
      probeP99Ms: quantile(probes, 0.99),
      probes: probes.length,
      probes503: probe.answered503(),
      threads,
    };
  } finally {
    await probe?.stop().catch(() => undefined);
    await poller?.stop();
    await pool.close();
    await core.stop();
  }
}

/** Metrics per server that fit this machine's free memory for one block of `servers` (a multiple of 100). */
function metricsThatFit(servers: number, metrics: number): number {
  const room = memAvailableBytes() * 0.6 - 2 ** 30;
  const fit = Math.floor(room / (servers * 60 * bytesPerPointHeld) / 100) * 100;
  return Math.max(100, Math.min(metrics, fit));
}

export async function pauseFigures(quick: boolean): Promise<Figure[]> {
  const out: Figure[] = [];
  const cases = quick ? [{ servers: 240, metrics: 200 }] : [
    { servers: 240, metrics: 2000 },
    { servers: 1000, metrics: 2000 },
  ];
  for (const c of cases) {
    const metrics = metricsThatFit(c.servers, c.metrics);
    const note = metrics < c.metrics ? ` (metrics cut from ${c.metrics} to fit ${(memAvailableBytes() / 2 ** 30).toFixed(1)} GiB available)` : quick ? ' (--quick)' : '';
    const r = await pauseRun(c.servers, metrics);
    const tag = `${r.servers} servers × ${r.metrics} metrics${note}, ${r.workers} workers`;
    out.push(
      { name: `longest /healthz wait while a minute-block is written (${tag})`, value: r.writeMaxMs, unit: 'ms', target: '≤ 50 ms' },
      { name: `  /healthz p99 over ${r.writeSamples} polls in ${r.writeSeconds.toFixed(1)} s of writing ${r.rows} rows`, value: r.writeP99Ms, unit: 'ms' },
      { name: '  longest row-writing slice (apm_core_row_slice_ms_max, as scraped every 200 ms)', value: r.sliceMsMax, unit: 'ms' },
      { name: `  longest ingest round trip while it is written (${r.probes} duplicate rack seconds, 1 per 20 ms${r.probes503 > 0 ? `, ${r.probes503} answered 503` : ''})`, value: r.probeMaxMs, unit: `ms (p99 ${r.probeP99Ms.toFixed(1)} ms)` },
      { name: '  longest /healthz wait while that block was ingested', value: r.ingestMaxMs, unit: 'ms' },
      { name: `  core CPU from the last ack to the head written, by thread: ${r.threads.text}`, value: r.threads.totalPercent, unit: '% of one core' },
    );
  }
  return out;
}
