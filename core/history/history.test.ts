// Import and export of history (issue 15) through a whole core node: JSON lines in, stored
// through the workers' WAL, read back by queries and by export; refusals counted per line.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { rackSecondBody, sectionAt } from '../../schema/section.js';
import { buildColumns } from '../../schema/testdata.js';
import { openNode, type CoreNode } from '../node.js';
import type { WindowResult } from '../query/eval.js';
import { decodeFrame, KindCode } from '../../schema/codec.js';
import type { RackSecondMessage } from '../../schema/section.js';
import type { IngestResult } from '../pool.js';
import { batchBytesMax } from '../../schema/limits.js';
import { Dedup, windowSeqs } from '../dedup.js';
import { runImport, type ImportSummary } from './import.js';
import { historyLimits, idleBounded } from './routes.js';
import { WorkerError } from '../pool.js';

const S = 8;
const now = Math.floor(Date.now() / 1000);
const t0 = now - 7200 - (now % 60); // two hours ago, a block start

function line(name: string, labels: Record<string, string>, points: [number, number][]): string {
  return JSON.stringify({ metric: { __name__: name, ...labels }, values: points.map((p) => p[1]), timestamps: points.map((p) => p[0] * 1000) });
}

/** runImport of `lines` on a clock at `nowSec`, each request decoded and answered by `answer`. */
function importAt(lines: string[], nowSec: number, answer: (msg: RackSecondMessage) => IngestResult) {
  return runImport(chunks(lines.join('\n'), 64), {
    shards: 1,
    retentionSeconds: 86_400,
    nowMs: () => nowSec * 1000,
    mayRack: () => true,
    ingest: async (b) => {
      const r = decodeFrame(b, batchBytesMax);
      if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('BUG: not a RackSecond');
      return answer(r.msg);
    },
  });
}

async function* chunks(text: string, size: number): AsyncIterable<Uint8Array> {
  const b = Buffer.from(text);
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

describe.each([1, 2])('import and export with %i worker(s)', (workers) => {
  let dir: string;
  let node: CoreNode;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `apm-history-${workers}-`));
    node = await openNode({ dataDir: dir, workers, shards: S, queryLatenessMs: 0, flushGraceMs: 0, retentionSeconds: 86_400 });
  });
  afterAll(async () => {
    await node.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function post(body: string | Uint8Array, headers: Record<string, string> = {}): Promise<{ status: number; json: ImportSummary & { error?: string; reason?: string } }> {
    const r = await node.app.request('/api/v1/import', { method: 'POST', body, headers });
    return { status: r.status, json: (await r.json()) as ImportSummary & { error?: string } };
  }

  async function query(text: string, from: number, to: number): Promise<WindowResult[]> {
    const r = await node.app.request(`/api/v1/query?q=${encodeURIComponent(text)}&from=${from * 1000}&to=${to * 1000}`);
    expect(r.status).toBe(200);
    return ((await r.json()) as { windows: WindowResult[] }).windows;
  }

  async function exported(metric: string, from: number, to: number): Promise<{ metric: Record<string, string>; values: number[]; timestamps: number[] }[]> {
    const r = await node.app.request(`/api/v1/export?match[]=${encodeURIComponent(metric)}&from=${from * 1000}&to=${to * 1000}`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toContain('application/x-ndjson');
    const text = await r.text();
    return text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { metric: Record<string, string>; values: number[]; timestamps: number[] });
  }

  it('stores every series of a JSON-lines body as gauges, answers queries from it, and exports the same points', async () => {
    const lines: string[] = [];
    for (let s = 0; s < 5; s++) {
      const pts: [number, number][] = [];
      for (let t = t0; t < t0 + 180; t++) pts.push([t, s * 1000 + (t - t0)]);
      // server, instance (its :port dropped) and host name the server; rack defaults to "import".
      const labels: Record<string, string> = s === 0 ? { instance: 'db-0:9100' } : s === 1 ? { host: 'db-1', rack: 'r9' } : { server: `db-${s}`, rack: 'r9', job: 'ignored' };
      lines.push(line('imp.load', labels, pts));
    }
    const r = await post(lines.join('\n') + '\n');
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ lines: 5, series: 5, points: 900, stored: 900, linesRefused: {}, pointsRefused: {}, fromSecond: t0, toSecond: t0 + 179 });
    const w = await query('FROM db-* SELECT imp.load WINDOW 60s COMPUTE count, min, max, sum', t0, t0 + 180);
    expect(w.map((x) => x.values)).toEqual([0, 1, 2].map((k) => ({ count: 300, min: 60 * k, max: 4000 + 60 * k + 59, sum: 60 * (0 + 1000 + 2000 + 3000 + 4000) + 5 * (60 * 60 * k + (59 * 60) / 2) })));
    // Racks are kept: rack:r9 is db-1..db-4.
    expect((await query('FROM rack:r9 SELECT imp.load WINDOW 60s COMPUTE min', t0, t0 + 60))[0]!.values).toEqual({ min: 1000 });
    const out = await exported('imp.load', t0, t0 + 180);
    expect(out.map((l) => [l.metric['server'], l.metric['rack']]).sort()).toEqual([['db-0', 'import'], ['db-1', 'r9'], ['db-2', 'r9'], ['db-3', 'r9'], ['db-4', 'r9']]);
    for (const l of out) {
      const s = Number(l.metric['server']!.slice(3));
      expect(l.metric['__name__']).toBe('imp.load');
      expect(l.timestamps).toEqual(Array.from({ length: 180 }, (_, i) => (t0 + i) * 1000));
      expect(l.values).toEqual(Array.from({ length: 180 }, (_, i) => s * 1000 + i));
    }
    // Imported servers are listed with their rack, last seen at their newest imported second.
    const servers = ((await (await node.app.request('/api/v1/servers')).json()) as { servers: { id: string; rack: string; lastSeenMs: number }[] }).servers;
    expect(servers.find((s) => s.id === 'db-2')).toMatchObject({ rack: 'r9', lastSeenMs: (t0 + 179) * 1000 });
  });

  it('refuses each bad line alone, by reason, and each bad point alone; keeps the last sample of a server-second', async () => {
    const body = [
      'not json',
      JSON.stringify({ values: [1], timestamps: [t0 * 1000] }),
      line('bad name!', { server: 'a' }, [[t0, 1]]),
      line('imp.bad', {}, [[t0, 1]]),
      line('imp.bad', { server: 'no spaces' }, [[t0, 1]]),
      line('imp.bad', { server: 'a', rack: 'r/1' }, [[t0, 1]]),
      JSON.stringify({ metric: { __name__: 'imp.bad', server: 'a' }, values: [1, 2], timestamps: [t0 * 1000] }),
      '',
      // Good line: a NaN-free null, a time before 2001, one past the retention, one far in the future, two samples in one second.
      JSON.stringify({ metric: { __name__: 'imp.mixed', server: 'mix-1' }, values: [null, 1, 2, 3, 4, 5], timestamps: [t0 * 1000, 5_000, (now - 90_000) * 1000, (now + 3600) * 1000, (t0 + 1) * 1000, (t0 + 1) * 1000 + 500] }),
    ].join('\n');
    const r = await post(body);
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({
      lines: 8,
      series: 1,
      points: 6,
      stored: 1,
      sameSecond: 1,
      linesRefused: { bad_json: 2, bad_name: 1, no_server: 1, bad_server: 1, bad_rack: 1, bad_columns: 1 },
      pointsRefused: { bad_value: 1, bad_time: 2, past_retention: 1 },
    });
    expect(r.json.errors.map((e) => [e.line, e.reason])).toEqual([
      [1, 'bad_json'],
      [2, 'bad_json'],
      [3, 'bad_name'],
      [4, 'no_server'],
      [5, 'bad_server'],
      [6, 'bad_rack'],
      [7, 'bad_columns'],
    ]);
    expect((await exported('imp.mixed', t0, t0 + 2))[0]).toMatchObject({ values: [5], timestamps: [(t0 + 1) * 1000] });
    const metrics = await (await node.app.request('/metrics')).text();
    expect(metrics).toMatch(/apm_core_import_lines_refused_total\{reason="bad_json"\} [2-9]/);
    expect(metrics).toMatch(/apm_core_import_points_refused_total\{reason="same_second"\} [1-9]/);
  });

  it('regression: a body that fails half way is answered with the summary of what was stored, and counted (before: no summary, and its stored points not counted)', async () => {
    const lines = Array.from({ length: 40 }, (_, s) => line('imp.cut', { server: `cut-${s}` }, Array.from({ length: 60 }, (_, i): [number, number] => [t0 + 1200 + i, s + i])));
    const gz = gzipSync(lines.join('\n'));
    const before = await (await node.app.request('/metrics')).text();
    const storedTotal = (text: string) => Number(/apm_core_import_points_stored_total (\d+)/.exec(text)?.[1] ?? 0);
    const r = await post(gz.subarray(0, gz.length - 8), { 'content-encoding': 'gzip' });
    expect(r.status).toBe(400);
    // The last line was cut with the stream: the 39 whole ones before it are stored.
    expect(r.json).toMatchObject({ reason: 'body', lines: 39, stored: 2340 });
    expect(storedTotal(await (await node.app.request('/metrics')).text()) - storedTotal(before)).toBe(2340);
  });

  it('takes a gzip body, and a body in small chunks with lines split across them; holds a bounded buffer (several flushes) and refuses an over-long line alone', async () => {
    const lines = Array.from({ length: 20 }, (_, s) =>
      line(
        'imp.chunked',
        { server: `ch-${s}` },
        Array.from({ length: 60 }, (_, i): [number, number] => [t0 + 600 + i, s + i / 100]),
      ),
    );
    const gz = await post(gzipSync(lines.slice(0, 10).join('\n')), { 'content-encoding': 'gzip' });
    expect(gz.json).toMatchObject({ series: 10, stored: 600 });
    const long = line('imp.chunked', { server: 'ch-long' }, Array.from({ length: 500 }, (_, i): [number, number] => [t0 + 600 + i, i]));
    const s = await runImport(chunks([...lines.slice(10, 15), long, ...lines.slice(15)].join('\n'), 7), {
      shards: S,
      retentionSeconds: 86_400,
      ingest: (b) => node.pool.ingest(b),
      mayRack: () => true,
      limits: { pointsBufferedMax: 97, lineBytesMax: 4096 },
    });
    expect(s).toMatchObject({ lines: 11, series: 10, stored: 600, linesRefused: { line_too_long: 1 } });
    expect(s.errors[0]).toMatchObject({ line: 6, reason: 'line_too_long' });
    const w = await query('FROM ch-* SELECT imp.chunked WINDOW 60s COMPUTE count, sum', t0 + 600, t0 + 660);
    expect(w[0]!.values['count']).toBe(1200);
    expect(w[0]!.values['sum']).toBeCloseTo(60 * (19 * 20) / 2 + 20 * (59 * 60) / 200, 6);
    expect(await post(Buffer.from([0x1f, 0x8b, 1, 2, 3]), { 'content-encoding': 'gzip' })).toMatchObject({ status: 400 });
    expect((await post('x', { 'content-encoding': 'br' })).status).toBe(415);
  });

  it('regression: a line past 8 MiB is refused alone by default, saying how to split it (before: 64 MiB, parsed whole on the HTTP thread, ~0.7 s of it)', async () => {
    const pts = Array.from({ length: 420_000 }, (_, i): [number, number] => [t0 + (i % 3600), i + 0.25]);
    const big = line('imp.big', { server: 'big-1' }, pts);
    expect(big.length).toBeGreaterThan(8 * 1024 * 1024);
    const s = await runImport(chunks([line('imp.small', { server: 'big-1' }, [[t0, 1]]), big].join('\n'), 1 << 20), { shards: S, retentionSeconds: 86_400, ingest: (b) => node.pool.ingest(b), mayRack: () => true });
    expect(s).toMatchObject({ lines: 2, series: 1, stored: 1, linesRefused: { line_too_long: 1 } });
    expect(s.errors[0]!.error).toMatch(/longer than 8388608 bytes; split the series by time \(VictoriaMetrics' export: max_rows_per_line=100000\)/);
  });

  it('regression: a counter exports with apm_kind="counter" and imports back as a counter (before: it came back a gauge)', async () => {
    const body = rackSecondBody({ rack: 'live', session: 6, seq: 1, second: t0 + 950, late: false, shards: S, servers: [{ server: 'live-2', blocks: [buildColumns([{ name: 'imp.ctr', kind: KindCode.Counter, value: 7 }], [])] }], rollup: buildColumns([], [], ['imp.ctr']) });
    expect((await node.pool.ingest(body)).status).toBe(204);
    const [out] = await exported('imp.ctr', t0 + 950, t0 + 951);
    expect(out!.metric).toMatchObject({ __name__: 'imp.ctr', apm_kind: 'counter' });
    // Into a metric new to the core (the same line under another name): a counter.
    const r = await post(JSON.stringify({ ...out, metric: { ...out!.metric, __name__: 'imp.ctr2' } }));
    expect(r.json).toMatchObject({ stored: 1, pointsRefused: {} });
    const metrics = ((await (await node.app.request('/api/v1/metrics')).json()) as { metrics: { name: string; kind: string }[] }).metrics;
    expect(metrics.find((m) => m.name === 'imp.ctr2')?.kind).toBe('counter');
  });

  it('regression: of two samples of one server-second the latest is kept, whatever their order in the line (before: the last in the file)', async () => {
    const ms = (k: number, off: number) => (t0 + k) * 1000 + off;
    const r = await post(`{"metric":{"__name__":"imp.latest","server":"lt-1"},"values":[1,2,3,4],"timestamps":[${ms(920, 900)},${ms(920, 100)},${ms(921, 100)},${ms(921, 900)}]}`);
    expect(r.json).toMatchObject({ stored: 2, sameSecond: 2 });
    const out = await exported('imp.latest', t0 + 920, t0 + 922);
    expect(out[0]!.values).toEqual([1, 4]);
  });

  it('regression: a series without a rack label goes to its server\'s known rack, replacing what the rack sent (before: stored again under rack "import", and the server\'s queries counted both)', async () => {
    const body = rackSecondBody({ rack: 'rlive', session: 7, seq: 1, second: t0 + 930, late: false, shards: S, servers: [{ server: 'live-9', blocks: [buildColumns([{ name: 'imp.both', kind: KindCode.Gauge, value: 5 }], [])] }], rollup: buildColumns([], [], ['imp.both']) });
    expect((await node.app.request('/api/v1/ingest', { method: 'POST', body })).status).toBe(204);
    const r = await post(line('imp.both', { server: 'live-9' }, [[t0 + 930, 7]]));
    expect(r.json).toMatchObject({ stored: 1 });
    const [w] = await query('FROM live-9 SELECT imp.both WINDOW 60s COMPUTE count, max', t0 + 900, t0 + 960);
    expect(w!.values).toEqual({ count: 1, max: 7 });
  });

  it('regression: bare NaN, +Inf and -Inf values (VictoriaMetrics writes them so) are refused each alone; the line\'s finite points are stored (before: the whole line refused as bad_json)', async () => {
    const ts = [910, 911, 912, 913, 914].map((k) => (t0 + k) * 1000).join(',');
    const r = await post(`{"metric":{"__name__":"imp.special","server":"sp-1"},"values":[1,NaN,+Inf,-Inf,5],"timestamps":[${ts}]}`);
    expect(r.json).toMatchObject({ lines: 1, points: 5, stored: 2, linesRefused: {}, pointsRefused: { bad_value: 3 } });
    const [w] = await query('FROM sp-1 SELECT imp.special WINDOW 60s COMPUTE count, sum', t0 + 900, t0 + 960);
    expect(w!.values).toEqual({ count: 2, sum: 6 });
  });

  it('regression: -0 exports as -0 and imports back as -0 (before: JSON wrote 0)', async () => {
    const r = await post(`{"metric":{"__name__":"imp.negzero","server":"nz-1"},"values":[-0,0,-1.5e-300],"timestamps":[${[900, 901, 902].map((k) => (t0 + k) * 1000).join(',')}]}`);
    expect(r.json).toMatchObject({ stored: 3, pointsRefused: {} });
    const res = await node.app.request(`/api/v1/export?match[]=imp.negzero&from=${t0 * 1000}&to=${(t0 + 960) * 1000}`);
    const text = await res.text();
    expect(text).toContain('"values":[-0,0,-1.5e-300]');
    const [out] = text.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { values: number[] });
    expect(Object.is(out!.values[0], -0)).toBe(true);
    expect(Object.is(out!.values[1], 0)).toBe(true);
    // Regression: a `from` inside a second starts at the next whole one (before: floor took in the point before it).
    const [cut] = await exported('imp.negzero', t0 + 900.5, t0 + 960);
    expect(cut!.timestamps).toEqual([(t0 + 901) * 1000, (t0 + 902) * 1000]);
  });

  it('counts points the workers refuse (a gauge import into a distribution metric) and stores the rest', async () => {
    const body = rackSecondBody({ rack: 'live', session: 5, seq: 1, second: t0 + 900, late: false, shards: S, servers: [{ server: 'live-1', blocks: [buildColumns([], [{ name: 'imp.dist', values: [1, 2, 3] }])] }], rollup: buildColumns([], [], ['imp.dist']) });
    expect((await node.pool.ingest(body)).status).toBe(204);
    const r = await post([line('imp.dist', { server: 'live-1' }, [[t0 + 901, 1]]), line('imp.fine', { server: 'live-1' }, [[t0 + 901, 1]])].join('\n'));
    expect(r.json).toMatchObject({ series: 2, stored: 1, pointsRefused: { core_refused: 1 } });
    // A distribution exports as four gauges per server.
    const out = await exported('imp.dist', t0 + 900, t0 + 901);
    expect(Object.fromEntries(out.map((l) => [l.metric['__name__'], l.values]))).toEqual({ 'imp.dist.count': [3], 'imp.dist.sum': [6], 'imp.dist.min': [1], 'imp.dist.max': [3] });
  });

  it('exports in bounded chunks (one block or more each) whose lines together hold every point once', async () => {
    const pts: [number, number][] = Array.from({ length: 600 }, (_, i) => [t0 + 1200 + i, i]);
    expect((await post(line('imp.long', { server: 'lg-1' }, pts))).json).toMatchObject({ stored: 600 });
    const seen: number[] = [];
    let at: number | null = t0 + 1230;
    let rack = 0;
    let chunks = 0;
    while (at !== null) {
      const c = await node.pool.exportChunk('imp.long', at, t0 + 1790, 50, rack);
      chunks++;
      for (const l of c.lines) seen.push(...(JSON.parse(l) as { timestamps: number[] }).timestamps.map((ms) => ms / 1000));
      at = c.nextSecond;
      rack = c.nextRack;
    }
    // Ten blocks, one or more chunks each (50 entries is less than a rack's block: read a range of racks at a time).
    expect(chunks).toBeGreaterThanOrEqual(9);
    expect(seen).toEqual(Array.from({ length: 560 }, (_, i) => t0 + 1230 + i));
  });

  it('regression: a chunk a busy worker refuses is asked again, and a core that cannot read at first answers 503 before any data (before: the export stopped at the first refusal and answered 200)', async () => {
    const pts: [number, number][] = Array.from({ length: 120 }, (_, i) => [t0 + 3000 + i, i]);
    expect((await post(line('imp.busy', { server: 'bz-1' }, pts))).json).toMatchObject({ stored: 120 });
    const pool = node.pool as unknown as { exportChunk: (...a: unknown[]) => Promise<unknown> };
    const real = pool.exportChunk.bind(node.pool);
    let refusals = 2;
    pool.exportChunk = (...a: unknown[]) => (refusals-- > 0 ? Promise.reject(new WorkerError('worker 0 has 16 queries waiting; retry later')) : real(...a));
    try {
      const ok = await node.app.request(`/api/v1/export?match[]=imp.busy&from=${(t0 + 3000) * 1000}&to=${(t0 + 3120) * 1000}`);
      expect(ok.status).toBe(200);
      const lines = (await ok.text()).split('\n').filter((l) => l !== '');
      expect(lines.some((l) => l.includes('error'))).toBe(false);
      expect(lines.reduce((n, l) => n + (JSON.parse(l) as { values: number[] }).values.length, 0)).toBe(120);
      // Never able to read within the retry time: 503 before any data.
      pool.exportChunk = () => Promise.reject(new WorkerError('worker 0 is restarting; retry'));
      const limits = historyLimits as { exportRetryMs: number };
      const saved = limits.exportRetryMs;
      limits.exportRetryMs = 300;
      try {
        const refused = await node.app.request(`/api/v1/export?match[]=imp.busy&from=${(t0 + 3000) * 1000}&to=${(t0 + 3120) * 1000}`);
        expect(refused.status).toBe(503);
      } finally {
        limits.exportRetryMs = saved;
      }
    } finally {
      pool.exportChunk = real;
    }
  });

  it('reads a block larger than a chunk a range of racks at a time, each chunk within its bound, every point once (before: the whole block in one step, 1.4 s of a worker at 40,000 servers)', async () => {
    const own = mkdtempSync(join(tmpdir(), `apm-history-slice-${workers}-`));
    const n = await openNode({ dataDir: own, workers, shards: S, queryLatenessMs: 0, flushGraceMs: 0, retentionSeconds: 86_400 });
    try {
      const block = t0 + 1800;
      for (let k = 0; k < 4; k++) {
        for (let s = 0; s < 60; s++) {
          const servers = Array.from({ length: 10 }, (_, j) => ({ server: `sl-${k}-${j}`, blocks: [buildColumns([{ name: 'sl.x', kind: KindCode.Gauge, value: 1000 * k + 10 * j + s }], [])] }));
          expect((await n.pool.ingest(rackSecondBody({ rack: `sl-${k}`, session: 9, seq: s + 1, second: block + s, late: false, shards: S, servers, rollup: buildColumns([], [], ['sl.x']) }))).status).toBe(204);
        }
      }
      // A day with nothing in it before that block: one chunk walks all of it, and stops before the
      // block of many rows, which starts a chunk of its own (c732939 read one block, and one rack
      // range of it, a chunk: a year's export of a sparse metric was >500,000 worker calls).
      expect(await n.pool.exportChunk('sl.x', block - 86_400, block + 60, 600)).toEqual({ lines: [], nextSecond: block, nextRack: 0, entries: 0 });
      const values: number[] = [];
      const cursors: [number | null, number, number][] = [];
      let at: number | null = block;
      let rack = 0;
      while (at !== null) {
        // 600 entries: one rack's block (10 servers × 60 s).
        const c = await n.pool.exportChunk('sl.x', at, block + 60, 600, rack);
        for (const l of c.lines) values.push(...(JSON.parse(l) as { values: number[] }).values);
        at = c.nextSecond;
        rack = c.nextRack;
        cursors.push([at, rack, c.entries]);
      }
      // One rack a chunk, only racks with rows of this metric.
      expect(cursors.map((x) => x[2])).toEqual([600, 600, 600, 600]);
      expect(cursors.slice(0, -1).every(([at, next], i) => at === block && next === (i === 0 ? cursors[0]![1] : cursors[i - 1]![1] + 1))).toBe(true);
      expect(cursors[cursors.length - 1]!.slice(0, 2)).toEqual([null, 0]);
      const want = [0, 1, 2, 3].flatMap((k) => Array.from({ length: 10 }, (_, j) => Array.from({ length: 60 }, (_, s) => 1000 * k + 10 * j + s)).flat());
      expect(values.sort((a, b) => a - b)).toEqual(want.sort((a, b) => a - b));
    } finally {
      await n.close();
      rmSync(own, { recursive: true, force: true });
    }
  });

  it('a span with nothing in it is looked at a day of blocks per chunk, and clamped to the retention: from=0 no longer holds a worker for a minute', async () => {
    // Before: one chunk walked every block of the span in one worker message (from 1970 to 2106: ~75 s).
    const c = await node.pool.exportChunk('imp.none', 0, 2 ** 32, 200_000);
    expect(c).toEqual({ lines: [], nextSecond: 1440 * 60, nextRack: 0, entries: 0 });
    const pts: [number, number][] = [[t0 + 5, 1], [t0 + 7, 2]];
    expect((await post(line('imp.clamped', { server: 'cl-1' }, pts))).json).toMatchObject({ stored: 2 });
    const all = await exported('imp.clamped', 0, 2 ** 32 - 1);
    expect(all.map((l) => l.values)).toEqual([[1, 2]]);
  });

  it('answers clear errors: no match, a selector it cannot export, bad times; one import at a time', async () => {
    expect((await node.app.request('/api/v1/export')).status).toBe(400);
    expect((await node.app.request('/api/v1/export?match[]=' + encodeURIComponent('{job="x"}'))).status).toBe(400);
    expect((await node.app.request('/api/v1/export?match[]=x&from=yesterday')).status).toBe(400);
    expect((await node.app.request(`/api/v1/export?match[]=${encodeURIComponent('{__name__="imp.load"}')}&from=-3h`)).status).toBe(200);
    // A second import while one streams its body: 409.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow = new ReadableStream<Uint8Array>({
      async pull(ctl) {
        await gate;
        ctl.enqueue(Buffer.from(line('imp.slow', { server: 's' }, [[t0, 1]])));
        ctl.close();
      },
    });
    const first = node.app.request('/api/v1/import', { method: 'POST', body: slow, duplex: 'half' } as RequestInit);
    await new Promise((r) => setTimeout(r, 50));
    const second = await post(line('imp.slow', { server: 's' }, [[t0, 2]]));
    expect(second).toMatchObject({ status: 409, json: { reason: 'import_running' } });
    release();
    expect((await first).status).toBe(200);
  });
});


describe('import requests and the core\'s de-duplication window', () => {
  it('regression: a request retrying after 503 is never passed by windowSeqs later ones (its retry was taken for already stored, and dropped)', async () => {
    const dedup = new Dedup({ getRange: () => [] } as unknown as ConstructorParameters<typeof Dedup>[0], { racksMax: 100 });
    const stored = new Set<number>();
    let refusals = 0;
    let newestWhileRefused = 0;
    const nowSec = 1_790_000_000;
    const lines = Array.from({ length: 5000 }, (_, i) => JSON.stringify({ metric: { __name__: 'm', server: 's1' }, values: [i], timestamps: [(nowSec - 6000 + i) * 1000] }));
    const summary = await runImport(chunks(lines.join('\n'), 1 << 16), {
      shards: 1,
      retentionSeconds: 86_400,
      nowMs: () => nowSec * 1000,
      mayRack: () => true,
      ingest: async (b) => {
        await new Promise((r) => setImmediate(r));
        const r = decodeFrame(b, batchBytesMax);
        if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('BUG: not a RackSecond');
        const m = r.msg;
        if (!stored.has(1)) newestWhileRefused = Math.max(newestWhileRefused, m.seq);
        // The first request is refused five times (a head full for a moment), the others pass.
        if (m.seq === 1 && refusals < 5) {
          refusals++;
          return { status: 503, reason: 'head_full', error: 'busy', pointsStored: 0 };
        }
        if (dedup.seen(0, m.rack, m.origin ?? 0, m.session, m.seq)) return { status: 204, points: 0, duplicates: 1, msg: m };
        dedup.mark(0, m.rack, m.origin ?? 0, m.session, m.seq);
        stored.add(m.seq);
        return { status: 204, points: 1, duplicates: 0, msg: m };
      },
    });
    expect(stored.size).toBe(5000);
    expect(summary.stored).toBe(5000);
    expect(dedup.counters.too_old).toBe(0);
    expect(newestWhileRefused).toBeLessThan(1 + windowSeqs / 2 + 1);
  });

  it('counts the points other workers stored before a 503 (their retried sections are duplicates), and answers only when every request has ended', async () => {
    const nowSec = 1_790_000_000;
    let attempts = 0;
    let running = 0;
    const tried = new Set<number>();
    const lines = [JSON.stringify({ metric: { __name__: 'm', server: 's1' }, values: [1, 2, 3, 4], timestamps: [0, 1, 2, 3].map((k) => (nowSec - 100 + k) * 1000) })];
    const summary = await importAt(lines, nowSec, (msg) => {
      // Of each 1-point request: the first try, one worker stored it and another answered 503;
      // the retry finds it stored there (a duplicate).
      attempts++;
      if (!tried.has(msg.seq)) {
        tried.add(msg.seq);
        return { status: 503, reason: 'rows_behind', error: 'behind', pointsStored: 1 };
      }
      return { status: 204, points: 0, duplicates: 1, msg };
    });
    expect(summary).toMatchObject({ stored: 4, pointsRefused: {} });
    expect(attempts).toBe(8);
    // A failing import waits for its requests before it answers.
    const failing = runImport(chunks([lines[0]!, 'x'.repeat(10)].join('\n'), 64), {
      shards: 1,
      retentionSeconds: 86_400,
      nowMs: () => nowSec * 1000,
      mayRack: () => true,
      ingest: async () => {
        running++;
        await new Promise((r) => setTimeout(r, 30));
        running--;
        return { status: 400, reason: 'bad', error: 'refused' };
      },
    });
    await failing;
    expect(running).toBe(0);
  });

  it('regression: a rack the core cannot take (503 racks_full) costs that rack\'s points, counted, and the import goes on (before: retried 120 s, then the import stopped, the rest neither stored nor counted)', async () => {
    const nowSec = 1_790_000_000;
    const series = (rack: string, s: number) => JSON.stringify({ metric: { __name__: 'm', server: `${rack}-s${s}`, rack }, values: [1, 2, 3], timestamps: [0, 1, 2].map((k) => (nowSec - 100 + k) * 1000) });
    const lines = [series('ra', 0), series('rb', 0), series('ra', 1), series('rb', 1)];
    const t = performance.now();
    // One point a server a request: the points stored are its servers.
    const summary = await importAt(lines, nowSec, (msg) =>
      msg.rack === 'rb' ? { status: 503, reason: 'racks_full', error: 'this store holds data of 1 racks (racksMax 1)' } : { status: 204, points: msg.servers.length, duplicates: 0, msg },
    );
    expect(performance.now() - t).toBeLessThan(5000);
    expect(summary).toMatchObject({ stored: 6, pointsRefused: { core_refused: 6 } });
    expect(summary.errors.some((e) => e.reason === 'core_refused:racks_full')).toBe(true);
  });
});

describe('regression: an import names each metric in the request that carries its points', () => {
  it('a server that does not fit the request so far goes to the next with its metrics\' names (before: its names went in the earlier request, without their points)', async () => {
    const nowSec = t0 + 600;
    const lines = Array.from({ length: 1025 }, (_, i) => line('imp.common', { server: `s${String(i).padStart(5, '0')}`, rack: 'r1' }, [[t0, 1]]));
    lines.push(line('imp.only-last', { server: 's01024', rack: 'r1' }, [[t0, 7]]));
    const requests: { points: Set<string>; names: Set<string> }[] = [];
    const summary = await importAt(lines, nowSec, (msg) => {
      const points = new Set<string>();
      const names = new Set<string>();
      for (let i = 0; i < msg.sectionShards.length; i++) {
        const r = decodeFrame(sectionAt(msg, i), batchBytesMax);
        if (!r.ok || r.msg.type !== 'shardSection') throw new Error('BUG: not a ShardSection');
        const s = r.msg;
        for (let k = 0; k < s.pointHashes.length; k += 2) points.add(`${s.pointHashes[k]},${s.pointHashes[k + 1]}`);
        for (let k = 0; k < s.nameHashes.length; k += 2) names.add(`${s.nameHashes[k]},${s.nameHashes[k + 1]}`);
      }
      requests.push({ points, names });
      return { status: 204, points: msg.servers.length, duplicates: 0, msg };
    });
    expect(summary.requests).toBe(2);
    expect(requests.length).toBe(2);
    for (const r of requests) expect([...r.points].filter((p) => !r.names.has(p))).toEqual([]);
  });
});

describe('an import body that stops sending', () => {
  it('regression: ends after the idle time, its stream cancelled (before: one quiet client held the only import slot for good, every other import answered 409)', async () => {
    let cancelled = false;
    const body = new ReadableStream<Uint8Array>({
      start(ctl) {
        ctl.enqueue(new TextEncoder().encode('{"metric":'));
      },
      cancel() {
        cancelled = true;
      },
    });
    const got: number[] = [];
    const started = Date.now();
    const read = (async () => {
      for await (const chunk of idleBounded(body, 200)) got.push(chunk.length);
    })();
    await expect(read).rejects.toThrow('no byte of the body came for 0.2 s');
    expect(Date.now() - started).toBeLessThan(5000);
    expect(got).toEqual([10]);
    expect(cancelled).toBe(true);
  });

  it('passes a body that keeps sending, however long it takes in all', async () => {
    let n = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(ctl) {
        await new Promise((r) => setTimeout(r, 50));
        if (n++ < 6) ctl.enqueue(new Uint8Array(3));
        else ctl.close();
      },
    });
    const got: number[] = [];
    for await (const chunk of idleBounded(body, 120)) got.push(chunk.length);
    expect(got).toEqual([3, 3, 3, 3, 3, 3]);
  });
});
