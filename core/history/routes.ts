// Routes for moving history in and out (issue 15): POST /api/v1/import takes VictoriaMetrics
// JSON lines (core/history/import.ts), GET /api/v1/export writes them (core/history/export.ts).

import type { Hono } from 'hono';
import { stream } from 'hono/streaming';
import { isMetricName } from '../../schema/names.js';
import { mayRack } from '../auth.js';
import { WorkerError, type IngestResult, type ShardPool } from '../pool.js';
import { parseTime, TimeError } from '../query/time.js';
import type { ServerTable } from '../servers.js';
import { exportLimits, type ExportChunk } from './export.js';
import { ImportError, runImport, type ImportSummary } from './import.js';

export const historyLimits = {
  /** Metrics one export names (each is read chunk by chunk). */
  exportMetricsMax: 100,
  /** Imports running at once: their requests share the import origin's de-duplication per rack. */
  importsAtOnce: 1,
  /** How long an export asks again for a chunk a busy or restarting worker refused, before it stops. */
  exportRetryMs: 30_000,
  /** An import whose body sends nothing this long ends (what came is stored): one quiet client held the only import slot for good. */
  importIdleMs: 120_000,
} as const;

/**
 * The chunks of `body`, ending it with an error when none comes for `idleMs` (the stream is
 * cancelled). For a body read while a slot is held: a sender that stops sending gives it back.
 */
export async function* idleBounded(body: ReadableStream<Uint8Array>, idleMs: number): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  try {
    for (;;) {
      let timer: NodeJS.Timeout | undefined;
      const idle = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no byte of the body came for ${idleMs / 1000} s`)), idleMs);
      });
      try {
        const r = await Promise.race([reader.read(), idle]);
        if (r.done) return;
        yield r.value;
      } finally {
        clearTimeout(timer);
      }
    }
  } finally {
    reader.cancel().catch(() => undefined);
  }
}

/** What /metrics shows of imports and exports. */
export class HistoryCounters {
  imports = 0;
  importsFailed = 0;
  importsRefusedBusy = 0;
  linesRefused: Record<string, number> = {};
  pointsStored = 0;
  pointsRefused: Record<string, number> = {};
  exports = 0;
  exportLines = 0;
  exportsFailed = 0;
  /** Export chunks asked again after a busy or restarting worker refused them. */
  exportRetries = 0;

  add(s: ImportSummary): void {
    this.pointsStored += s.stored;
    for (const [k, v] of Object.entries(s.linesRefused)) this.linesRefused[k] = (this.linesRefused[k] ?? 0) + v;
    for (const [k, v] of Object.entries(s.pointsRefused)) this.pointsRefused[k] = (this.pointsRefused[k] ?? 0) + v;
    this.pointsRefused['same_second'] = (this.pointsRefused['same_second'] ?? 0) + s.sameSecond;
  }
}

export function addHistoryRoutes(app: Hono, deps: { pool: ShardPool; servers: ServerTable; ingest?: (body: Uint8Array) => Promise<IngestResult>; pointPack?: boolean }): HistoryCounters {
  const { pool, servers } = deps;
  const ingest = deps.ingest ?? ((b: Uint8Array) => pool.ingest(b));
  const counters = new HistoryCounters();
  let running = 0;

  app.post('/api/v1/import', async (c) => {
    const grant = c.get('apmRacks') ?? '*';
    // A token that may send for no rack could store nothing: refused before it takes the slot.
    if (grant !== '*' && grant.size === 0) return c.json({ error: 'this token may send for no rack (racks= is empty): it cannot import', reason: 'rack_not_allowed' }, 403);
    if (running >= historyLimits.importsAtOnce) {
      counters.importsRefusedBusy++;
      return c.json({ error: 'an import is running on this core; run imports one after another (they share its de-duplication)', reason: 'import_running' }, 409);
    }
    const raw = c.req.raw.body;
    if (raw === null) return c.json({ error: 'the body holds the JSON lines to import (one series a line: {"metric":{"__name__":…,"server":…},"values":[…],"timestamps":[…]})' }, 400);
    const encoding = (c.req.header('content-encoding') ?? 'identity').toLowerCase();
    if (encoding !== 'identity' && encoding !== 'gzip') return c.json({ error: `content-encoding ${encoding} is not taken; send identity or gzip` }, 415);
    const body = idleBounded(encoding === 'gzip' ? raw.pipeThrough(new DecompressionStream('gzip')) : raw, historyLimits.importIdleMs);
    running++;
    counters.imports++;
    try {
      const summary = await runImport(body, {
        shards: pool.shards,
        pointPack: deps.pointPack ?? true,
        retentionSeconds: pool.retentionSeconds,
        ingest,
        mayRack: (rack) => mayRack(grant, rack),
        rackOfServer: (name) => servers.rackOf(name),
        onStored: (rack, names, second) => servers.imported(rack, names, second * 1000),
      });
      counters.add(summary);
      return c.json(summary, 200);
    } catch (err) {
      counters.importsFailed++;
      if (err instanceof ImportError) {
        counters.add(err.summary);
        return c.json({ error: err.message, ...(err.reason === undefined ? {} : { reason: err.reason }), ...err.summary }, err.status);
      }
      return c.json({ error: `import stopped: ${(err as Error).message}`, reason: 'body' }, 400);
    } finally {
      running--;
    }
  });

  app.get('/api/v1/export', async (c) => {
    const matches = [...c.req.queries('match[]') ?? [], ...c.req.queries('metric') ?? []];
    if (matches.length === 0) return c.json({ error: 'name the metrics: match[]=<metric> (or {__name__="<metric>"}), repeatable; from/to bound the time (default: the last hour)' }, 400);
    if (matches.length > historyLimits.exportMetricsMax) return c.json({ error: `${matches.length} metrics > ${historyLimits.exportMetricsMax} per export` }, 400);
    const names: string[] = [];
    for (const m of matches) {
      const name = metricOfMatch(m);
      if (name === null) return c.json({ error: `match ${JSON.stringify(m)} is not a metric name nor {__name__="<metric name>"} (apm exports whole metrics; filter servers after)` }, 400);
      names.push(name);
    }
    let fromMs: number;
    let toMs: number;
    try {
      const now = Date.now();
      toMs = parseTime(c.req.query('to'), now, now, 'to');
      fromMs = parseTime(c.req.query('from'), toMs - 3_600_000, now, 'from');
    } catch (err) {
      if (err instanceof TimeError) return c.json({ error: err.message }, 400);
      throw err;
    }
    if (fromMs >= toMs) return c.json({ error: `from (${fromMs}) must be before to (${toMs})` }, 400);
    // Nothing is kept before the retention nor stored past the core's clock (+ the racks' skew).
    fromMs = Math.max(fromMs, Date.now() - pool.retentionSeconds * 1000 - 60_000);
    toMs = Math.min(toMs, Date.now() + 3_600_000);
    counters.exports++;
    // The first whole second at or after `from` (floor took in a point before a from in ms).
    const start = Math.ceil(fromMs / 1000);
    const end = Math.ceil(toMs / 1000);
    let aborted = false;
    // A chunk is a read: one refused for a busy or restarting worker is asked again, with
    // back-off, for up to exportRetryMs (before: the export stopped at the first refusal — one
    // dashboard refresh could cut a year-long export — and answered 200 even before any data).
    const chunkOf = async (name: string, at: number, rack: number): Promise<ExportChunk> => {
      const until = Date.now() + historyLimits.exportRetryMs;
      for (let wait = 50; ; wait = Math.min(2 * wait, 1000)) {
        try {
          return await pool.exportChunk(name, at, end, exportLimits.entriesPerChunkMax, rack);
        } catch (err) {
          if (!(err instanceof WorkerError) || Date.now() + wait > until || aborted) throw err;
          counters.exportRetries++;
          await new Promise((r) => setTimeout(r, wait));
        }
      }
    };
    // The first chunk before the answer's status: a core that cannot read now answers 503.
    let first: ExportChunk;
    try {
      first = await chunkOf(names[0]!, start, 0);
    } catch (err) {
      counters.exportsFailed++;
      if (err instanceof WorkerError) return c.json({ error: `export: ${err.message}`, reason: 'unavailable' }, 503);
      throw err;
    }
    c.header('content-type', 'application/x-ndjson');
    return stream(c, async (out) => {
      out.onAbort(() => {
        aborted = true;
      });
      try {
        for (const [k, name] of names.entries()) {
          let at: number | null = start;
          let rack = 0;
          while (at !== null && at < end && !aborted) {
            // One bounded chunk at a time, written before the next is read: memory stays one chunk.
            const chunk: ExportChunk = k === 0 && at === start && rack === 0 ? first : await chunkOf(name, at, rack);
            if (chunk.lines.length > 0) await out.write(chunk.lines.join('\n') + '\n');
            counters.exportLines += chunk.lines.length;
            at = chunk.nextSecond;
            rack = chunk.nextRack;
          }
        }
      } catch (err) {
        // The status is sent: the stream ends with a line saying why, which an import refuses (counted), and no more.
        counters.exportsFailed++;
        const why = err instanceof WorkerError ? err.message : String(err);
        await out.write(JSON.stringify({ error: `export stopped: ${why}` }) + '\n');
      }
    });
  });

  return counters;
}

/** The metric a match[] names: `name` or `{__name__="name"}`; null for anything else. */
export function metricOfMatch(m: string): string | null {
  const t = m.trim();
  if (isMetricName(t)) return t;
  const sel = /^\{\s*__name__\s*=\s*"([^"]+)"\s*\}$/.exec(t);
  return sel !== null && isMetricName(sel[1]!) ? sel[1]! : null;
}
