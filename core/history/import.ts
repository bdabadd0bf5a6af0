// Import of history (issue 15): VictoriaMetrics' JSON-lines import format, one series a line,
//   {"metric":{"__name__":"rpc.latency","server":"web-01","rack":"r1"},"values":[1.5,2],"timestamps":[1733000000000,1733000001000]}
// streamed from the request body with bounded memory whatever its size, stored as gauges through
// the same durable path as racks' requests: the points are grouped into (rack, second) requests,
// cut into shard sections and handed to the workers, which answer once each section is in its
// shard's WAL. The import answers only after every request it made is durable.
//
// Labels: `server` (else `instance` without a `:port`, else `host`) is the server id; `rack` is
// optional (default `import`); other labels are not kept (series differing only in them are one
// apm series). Each server-second keeps its last sample (apm stores per-second points). A line
// that cannot be taken is refused alone, counted by reason, and the import goes on.
//
// De-duplication: an import has its own session and numbers its requests; its sections carry
// origin "import", so the core keeps their de-duplication apart from live racks' (core/dedup.ts)
// and a request retried after a 503 is not stored twice. One import runs at a time per core.

import { randomInt } from 'node:crypto';
import { columnsFor, KindCode, type SeriesColumns } from '../../schema/codec.js';
import { batchServersMax, secondMin } from '../../schema/limits.js';
import { hashName, isMetricName, isServerId } from '../../schema/names.js';
import { originImport, SectionCutter } from '../../schema/section.js';
import { windowSeqs } from '../dedup.js';
import { orderBy } from './order.js';
import type { IngestResult } from '../pool.js';

/** A bare NaN, Inf, +Inf, -Inf (or Infinity) as an array element: what VictoriaMetrics' export writes for them. */
const specialNumbers = /([[,]\s*)(?:NaN|[+-]?Inf(?:inity)?)(?=\s*[,\]])/g;

export const importLimits = {
  /**
   * One series line. A line is parsed whole on the HTTP thread: 53 MiB took 0.5–0.7 s of it
   * (JSON.parse, this box), 7.9 MiB 39–48 ms (a 420,000-sample line, three rounds). Exporters
   * split series by time (apm's export: at most ~200,000 points a line, ~4 MB; VictoriaMetrics':
   * `max_rows_per_line`); 8 MiB holds ~4 days of one per-second series. A longer line is
   * refused alone (line_too_long), saying so.
   */
  lineBytesMax: 8 * 1024 * 1024,
  /** Points held before they are cut into requests and made durable (~22 B each): bounds the import's memory. */
  pointsBufferedMax: 1_000_000,
  /** Requests awaiting the workers at once. History often has few series a second, so its
   * requests are small: many share each synced commit (group commit). Well under the workers'
   * ingestWaitingPerWorkerMax (512), so live racks keep their room. */
  inFlightMax: 64,
  /** A request answered 503 (a busy or restarting worker, a full head) is retried for this long, then the import stops with 503. */
  retryForMs: 120_000,
  /** Refused lines described in the answer (all are counted). */
  errorsListedMax: 20,
  /** Samples further in the future than this are refused (clock skew in the source). */
  futureSecondsMax: 300,
  /** Metrics in one request: the cutter's table. */
  metricsPerRequestMax: 1 << 16,
} as const;

export const importRackDefault = 'import';

/** How far (in seqs) requests in flight may spread: half the core's de-duplication window. */
const dedupWindowSpan = windowSeqs / 2;

export type LineRefusal = 'bad_json' | 'bad_name' | 'no_server' | 'bad_server' | 'bad_rack' | 'rack_not_allowed' | 'bad_columns' | 'line_too_long';
export type PointRefusal = 'bad_value' | 'bad_time' | 'past_retention' | 'core_refused';

export interface ImportSummary {
  /** Lines read (blank lines not counted). */
  lines: number;
  /** Lines whose series was taken (some of its points may still be refused). */
  series: number;
  /** Points read from taken lines. */
  points: number;
  /** Points the workers stored (after each server-second keeps its last sample). */
  stored: number;
  /** Samples that shared a server-second with a later one (the later is kept). */
  sameSecond: number;
  linesRefused: Partial<Record<LineRefusal, number>>;
  pointsRefused: Partial<Record<PointRefusal, number>>;
  /** The first refused lines, with why. */
  errors: { line: number; reason: string; error: string }[];
  /** Requests made (one per rack-second and up to batchServersMax servers). */
  requests: number;
  fromSecond: number | null;
  toSecond: number | null;
  ms: number;
}

export class ImportError extends Error {
  constructor(
    readonly status: 400 | 503,
    message: string,
    readonly summary: ImportSummary,
    /** 'body': the body stream failed, not a line or the core. */
    readonly reason?: string,
  ) {
    super(message);
  }
}

export interface ImportDeps {
  shards: number;
  /** Whether its sections may carry packed points (ApiOptions.pointPack; default true). */
  pointPack?: boolean;
  retentionSeconds: number;
  /** Makes one RackSecond body durable (ShardPool.ingest). */
  ingest: (body: Uint8Array) => Promise<IngestResult>;
  /** Whether the caller may write for this rack (its token's racks=). */
  mayRack: (rack: string) => boolean;
  /** The rack a known server is in: a series without a rack label goes there (not to rack "import"). */
  rackOfServer?: (server: string) => string | undefined;
  /** Servers of a request made durable, and the newest second they had data for. */
  onStored?: (rack: string, servers: readonly string[], second: number) => void;
  nowMs?: () => number;
  /** Smaller bounds (tests: several flushes, a long line, without megabytes of input). */
  limits?: { pointsBufferedMax?: number; lineBytesMax?: number };
}

/** Reads `body` to its end and imports it; throws ImportError (with what was done) when it cannot finish. */
export async function runImport(body: AsyncIterable<Uint8Array>, deps: ImportDeps): Promise<ImportSummary> {
  const imp = new Importer(deps);
  return imp.run(body);
}

class Importer {
  private readonly t0 = performance.now();
  private readonly summary: ImportSummary = { lines: 0, series: 0, points: 0, stored: 0, sameSecond: 0, linesRefused: {}, pointsRefused: {}, errors: [], requests: 0, fromSecond: null, toSecond: null, ms: 0 };
  private readonly cutter = new SectionCutter(importLimits.metricsPerRequestMax);
  private readonly session = randomInt(1, 2 ** 32);
  private seq = 0;
  private readonly bufferMax: number;
  private readonly lineBytesMax: number;
  // The buffer: one entry per point, interned racks, servers and metrics (reset at each flush).
  private readonly sec: Uint32Array;
  private readonly rackOf: Uint16Array;
  private readonly serverOf: Uint32Array;
  private readonly metricOf: Uint32Array;
  private readonly val: Float64Array;
  /** Milliseconds within its second (a server-second keeps its latest sample). */
  private readonly msOf: Uint16Array;
  private n = 0;
  private racks: string[] = [];
  private rackIds = new Map<string, number>();
  private servers: string[] = [];
  private serverIds = new Map<string, number>();
  private metrics: string[] = [];
  private metricIds = new Map<string, number>();
  private inFlight = new Set<Promise<void>>();
  /** Seqs of the requests in flight: the newest may run at most dedupWindowSpan ahead of the oldest. */
  private readonly inFlightSeqs = new Set<number>();
  private failure: ImportError | null = null;
  /** Set when the import fails: requests still retrying give up. */
  private stopping = false;

  constructor(private readonly deps: ImportDeps) {
    this.bufferMax = deps.limits?.pointsBufferedMax ?? importLimits.pointsBufferedMax;
    this.lineBytesMax = deps.limits?.lineBytesMax ?? importLimits.lineBytesMax;
    this.sec = new Uint32Array(this.bufferMax);
    this.rackOf = new Uint16Array(this.bufferMax);
    this.serverOf = new Uint32Array(this.bufferMax);
    this.metricOf = new Uint32Array(this.bufferMax);
    this.val = new Float64Array(this.bufferMax);
    this.msOf = new Uint16Array(this.bufferMax);
  }

  async run(body: AsyncIterable<Uint8Array>): Promise<ImportSummary> {
    try {
      return await this.read(body);
    } catch (err) {
      // Never answer while requests of this import still run: a next import would share their
      // de-duplication entries, and their points would miss the summary. They stop retrying.
      if (!(err instanceof ImportError) && this.failure === null) {
        // The body stream failed (a client that went away, a corrupt gzip stream): the whole
        // lines read before it are stored, and the summary, which the answer and the counters
        // carry, says so.
        try {
          await this.flush();
          await Promise.all(this.inFlight);
        } catch {
          // Counted in the summary by the requests themselves.
        }
      }
      this.stopping = true;
      await Promise.allSettled(this.inFlight);
      if (err instanceof ImportError) throw this.done(err);
      throw this.done(new ImportError(400, `import stopped: ${(err as Error).message}; the whole lines before it are stored (see stored)`, this.summary, 'body'));
    }
  }

  private async read(body: AsyncIterable<Uint8Array>): Promise<ImportSummary> {
    const decoder = new TextDecoder();
    let parts: Uint8Array[] = [];
    let partBytes = 0;
    let skipping = false;
    for await (const chunk of body) {
      let at = 0;
      while (at < chunk.length) {
        const nl = chunk.indexOf(10, at);
        const end = nl < 0 ? chunk.length : nl;
        if (!skipping) {
          if (partBytes + end - at > this.lineBytesMax) {
            skipping = true;
            parts = [];
            partBytes = 0;
          } else {
            parts.push(chunk.subarray(at, end));
            partBytes += end - at;
          }
        }
        if (nl < 0) break;
        if (skipping) this.refuseLongLine();
        else await this.line(decoder.decode(parts.length === 1 ? parts[0] : Buffer.concat(parts, partBytes)));
        skipping = false;
        parts = [];
        partBytes = 0;
        at = nl + 1;
        if (this.failure !== null) throw this.done(this.failure);
      }
      // The chunk's bytes may be reused by the stream once we return: keep a copy of a partial line.
      if (parts.length > 0 && parts[parts.length - 1]!.buffer === chunk.buffer) parts[parts.length - 1] = parts[parts.length - 1]!.slice();
    }
    if (skipping) this.refuseLongLine();
    else if (partBytes > 0) await this.line(decoder.decode(Buffer.concat(parts, partBytes)));
    await this.flush();
    await Promise.all(this.inFlight);
    if (this.failure !== null) throw this.done(this.failure);
    return this.done(null);
  }

  private done<T>(x: T): T extends null ? ImportSummary : T {
    this.summary.ms = Math.round(performance.now() - this.t0);
    return (x ?? this.summary) as T extends null ? ImportSummary : T;
  }

  private refuseLine(reason: LineRefusal, error: string): void {
    this.summary.lines++;
    this.summary.linesRefused[reason] = (this.summary.linesRefused[reason] ?? 0) + 1;
    if (this.summary.errors.length < importLimits.errorsListedMax) this.summary.errors.push({ line: this.summary.lines, reason, error });
  }

  private refuseLongLine(): void {
    this.refuseLine('line_too_long', `longer than ${this.lineBytesMax} bytes; split the series by time (VictoriaMetrics' export: max_rows_per_line=100000)`);
  }

  private refusePoints(reason: PointRefusal, n: number): void {
    if (n > 0) this.summary.pointsRefused[reason] = (this.summary.pointsRefused[reason] ?? 0) + n;
  }

  /** One series line: checked, then its points buffered (flushing when the buffer fills). */
  private async line(text: string): Promise<void> {
    if (text.trim() === '') return;
    let o: { metric?: Record<string, unknown>; values?: unknown; timestamps?: unknown };
    try {
      o = JSON.parse(text) as typeof o;
    } catch (err) {
      // VictoriaMetrics writes stale and infinite samples as bare NaN, +Inf, -Inf (Go's format),
      // which JSON does not have: such a line is read again with those as null, each then refused
      // alone as bad_value (before: the whole line, every finite point of it, as bad_json).
      const special = text.replace(specialNumbers, '$1null');
      if (special === text) return this.refuseLine('bad_json', (err as Error).message);
      try {
        o = JSON.parse(special) as typeof o;
      } catch {
        return this.refuseLine('bad_json', (err as Error).message);
      }
    }
    const labels = typeof o === 'object' && o !== null && typeof o.metric === 'object' && o.metric !== null ? o.metric : null;
    if (labels === null) return this.refuseLine('bad_json', 'a line is {"metric":{...},"values":[...],"timestamps":[...]}');
    const name = labels['__name__'];
    if (typeof name !== 'string' || !isMetricName(name)) return this.refuseLine('bad_name', `__name__ ${JSON.stringify(name)} is not [A-Za-z0-9_.:-]{1,128}`);
    const server = serverOf(labels);
    if (server === null) return this.refuseLine('no_server', 'no "server", "instance" or "host" label names the server');
    if (!isServerId(server)) return this.refuseLine('bad_server', `server ${JSON.stringify(server)} is not [A-Za-z0-9._-]{1,64}`);
    // No rack label: the server's own rack when the core knows it, so that the series replaces
    // what its racks sent for those seconds (before: stored again under rack "import", and every
    // query of the server counted both: a VictoriaMetrics backfill over live seconds doubled them).
    const rack = labels['rack'] === undefined ? (this.deps.rackOfServer?.(server) ?? importRackDefault) : labels['rack'];
    if (typeof rack !== 'string' || !isServerId(rack)) return this.refuseLine('bad_rack', `rack ${JSON.stringify(rack)} is not [A-Za-z0-9._-]{1,64}`);
    if (!this.deps.mayRack(rack)) return this.refuseLine('rack_not_allowed', `this token may not write for rack ${rack}`);
    const { values, timestamps } = o;
    if (!Array.isArray(values) || !Array.isArray(timestamps) || values.length !== timestamps.length) return this.refuseLine('bad_columns', '"values" and "timestamps" must be arrays of one length');
    this.summary.lines++;
    this.summary.series++;
    this.summary.points += values.length;
    // apm's export names a counter's kind (apm_kind="counter"); any other series is a gauge.
    const kind = labels['apm_kind'] === 'counter' ? KindCode.Counter : KindCode.Gauge;
    const nowSec = Math.floor((this.deps.nowMs?.() ?? Date.now()) / 1000);
    const oldest = nowSec - this.deps.retentionSeconds;
    let ids: { rack: number; server: number; metric: number } | null = null;
    const newest = nowSec + importLimits.futureSecondsMax;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      const ts = timestamps[i];
      if (typeof v !== 'number' || !Number.isFinite(v)) {
        this.refusePoints('bad_value', 1);
        continue;
      }
      if (typeof ts !== 'number' || !Number.isFinite(ts)) {
        this.refusePoints('bad_time', 1);
        continue;
      }
      const second = Math.floor(ts / 1000);
      if (second < secondMin || second > newest) {
        this.refusePoints('bad_time', 1);
        continue;
      }
      if (second < oldest) {
        this.refusePoints('past_retention', 1);
        continue;
      }
      // Rack indexes are 16-bit in the buffer (the core holds far fewer racks).
      if (this.n === this.bufferMax || (ids === null && this.racks.length === 0xffff && !this.rackIds.has(rack))) {
        await this.flush();
        ids = null; // a flush empties the interned names
      }
      // One line is one series: its names are interned once (again after a flush), not per point.
      ids ??= { rack: intern(this.racks, this.rackIds, rack), server: intern(this.servers, this.serverIds, server), metric: intern(this.metrics, this.metricIds, kind === KindCode.Counter ? name + counterMark : name) };
      const k = this.n++;
      this.sec[k] = second;
      this.rackOf[k] = ids.rack;
      this.serverOf[k] = ids.server;
      this.metricOf[k] = ids.metric;
      this.val[k] = v;
      this.msOf[k] = ts - second * 1000;
      if (this.summary.fromSecond === null || second < this.summary.fromSecond) this.summary.fromSecond = second;
      if (this.summary.toSecond === null || second > this.summary.toSecond) this.summary.toSecond = second;
    }
  }

  /** Cuts the buffer into (rack, second) requests, oldest second first, and sends them. */
  private async flush(): Promise<void> {
    if (this.n === 0) return;
    const n = this.n;
    // Grouped by (second, rack), then server and metric, arrival order kept (core/history/order.ts).
    const order = orderBy(n, [this.sec.subarray(0, n), this.rackOf.subarray(0, n), this.serverOf.subarray(0, n), this.metricOf.subarray(0, n)]);
    // The (second, rack) key fits a double exactly (second < 2^32, rack index < 2^16).
    const key = (i: number) => this.sec[i]! * 65_536 + this.rackOf[i]!;
    const hashes = new Uint32Array(2 * this.metrics.length);
    this.metrics.forEach((m, i) => hashName(metricName(m), hashes, 2 * i));
    for (let a = 0; a < n; ) {
      let b = a + 1;
      while (b < n && key(order[b]!) === key(order[a]!)) b++;
      await this.sendSecond(order.subarray(a, b), hashes);
      a = b;
      if (this.failure !== null) return;
    }
    this.n = 0;
    this.racks = [];
    this.rackIds = new Map();
    this.servers = [];
    this.serverIds = new Map();
    this.metrics = [];
    this.metricIds = new Map();
  }

  /** One (rack, second): its points by server (up to batchServersMax servers a request). */
  private async sendSecond(points: Uint32Array, hashes: Uint32Array): Promise<void> {
    const first = points[0]!;
    const rack = this.racks[this.rackOf[first]!]!;
    const second = this.sec[first]!;
    let group: { server: string; blocks: SeriesColumns[] }[] = [];
    const named = new Set<number>();
    const send = async () => {
      if (group.length === 0) return;
      await this.send(rack, second, group, named);
      group = [];
      named.clear();
    };
    for (let a = 0; a < points.length; ) {
      const server = this.serverOf[points[a]!]!;
      let b = a + 1;
      while (b < points.length && this.serverOf[points[b]!] === server) b++;
      // Sorted by metric, then arrival: of a run of one metric the latest sample is kept (the
      // last to arrive of those at the latest millisecond). Before: the last to arrive, so an
      // unsorted line kept an earlier sample of the second.
      const keep: number[] = [];
      for (let i = a; i < b; ) {
        let j = i + 1;
        let best = points[i]!;
        while (j < b && this.metricOf[points[j]!] === this.metricOf[points[i]!]) {
          if (this.msOf[points[j]!]! >= this.msOf[best]!) best = points[j]!;
          j++;
        }
        this.summary.sameSecond += j - i - 1;
        keep.push(best);
        i = j;
      }
      // The request so far goes first when this server would pass a bound; then its metrics are
      // named in the request that carries their points (before: named in the earlier one, whose
      // points they were not, so a name depended on the store's bounded list of waiting names).
      let fresh = 0;
      for (const p of keep) if (!named.has(this.metricOf[p]!)) fresh++;
      if (group.length === batchServersMax || named.size + fresh > importLimits.metricsPerRequestMax) await send();
      const cols = pointColumns(keep.length);
      keep.forEach((p, j) => {
        const m = this.metricOf[p]!;
        cols.pointHashes[2 * j] = hashes[2 * m]!;
        cols.pointHashes[2 * j + 1] = hashes[2 * m + 1]!;
        cols.pointValues[j] = this.val[p]!;
        if (this.metrics[m]!.endsWith(counterMark)) cols.pointKinds[j] = KindCode.Counter;
        named.add(m);
      });
      group.push({ server: this.servers[server]!, blocks: [cols] });
      a = b;
    }
    await send();
  }

  /** One request, made durable with at most inFlightMax others waiting; a 503 is retried with back-off. */
  private async send(rack: string, second: number, servers: { server: string; blocks: SeriesColumns[] }[], named: Set<number>): Promise<void> {
    const rollup = pointColumns(0);
    const names = [...named].map((m) => metricName(this.metrics[m]!));
    rollup.nameHashes = new Uint32Array(2 * names.length);
    names.forEach((nm, j) => hashName(nm, rollup.nameHashes, 2 * j));
    rollup.nameBytes = Buffer.from(names.join(''), 'latin1');
    rollup.nameEnds = new Uint32Array(names.length);
    let end = 0;
    names.forEach((nm, j) => (rollup.nameEnds[j] = end += nm.length));
    this.cutter.packPoints = this.deps.pointPack ?? true;
    const body = this.cutter.body({ rack, session: this.session, seq: ++this.seq, second, late: false, shards: this.deps.shards, origin: originImport, servers, rollup });
    let sent = 0;
    for (const s of servers) sent += s.blocks[0]!.pointValues.length;
    const serverNames = servers.map((s) => s.server);
    this.summary.requests++;
    const seq = this.seq;
    // The core remembers a window of windowSeqs seqs per (shard, rack, origin); one older than the
    // newest stored by that much counts as already stored. A request retrying after a 503 while
    // the others run on must stay inside it, or its retry would be taken for stored and dropped.
    while (this.inFlight.size >= importLimits.inFlightMax || (this.inFlightSeqs.size > 0 && seq - Math.min(...this.inFlightSeqs) >= dedupWindowSpan)) await Promise.race(this.inFlight);
    this.inFlightSeqs.add(seq);
    const p = this.deliver(body, sent).then(
      (stored) => {
        this.summary.stored += stored;
        this.refusePoints('core_refused', sent - stored);
        this.deps.onStored?.(rack, serverNames, second);
      },
      (err: unknown) => {
        this.failure ??= err instanceof ImportError ? err : new ImportError(503, String(err), this.summary);
      },
    );
    const tracked = p.finally(() => {
      this.inFlight.delete(tracked);
      this.inFlightSeqs.delete(seq);
    });
    this.inFlight.add(tracked);
  }

  /**
   * Points stored of one request. A 503 may come after some workers stored their sections (they
   * say how many points): those count, and the retry's sections there are duplicates. A retry
   * after an answer that never came (a worker timed out) finds everything stored: all duplicates,
   * counted as the points sent (the core's per-point refusals in them are not known here).
   */
  private async deliver(body: Uint8Array, sent: number): Promise<number> {
    const until = performance.now() + importLimits.retryForMs;
    let waitMs = 50;
    let stored = 0;
    for (;;) {
      const r = await this.deps.ingest(body);
      // In a cluster the request is in the shards' streams (durable); their owners apply it and count refusals.
      if (r.status === 204 && r.logged === true) return sent;
      if (r.status === 204) return r.duplicates > 0 && r.points === 0 && stored === 0 ? sent : stored + r.points;
      if (r.status === 503) stored += r.pointsStored ?? 0;
      if (r.status !== 503 || lastingRefusals.has(r.reason)) {
        // Refused whole (a rack beyond the core's bound, a token's racks): this request's points
        // alone, counted and described; the import goes on. (racks_full was retried for 120 s,
        // then stopped the import, the rest of the file neither stored nor counted.)
        if (this.summary.errors.length < importLimits.errorsListedMax) this.summary.errors.push({ line: this.summary.lines, reason: `core_refused:${r.reason}`, error: r.error });
        return stored + ('pointsStored' in r ? (r.pointsStored ?? 0) : 0);
      }
      if (this.stopping) throw new ImportError(503, 'the import stopped (another request failed)', this.summary);
      if (performance.now() + waitMs > until) throw new ImportError(503, `the core stayed busy for ${importLimits.retryForMs / 1000} s (${r.reason}: ${r.error}); points up to second ${this.summary.toSecond} may be partly stored — importing the same file again stores nothing twice within a second`, this.summary);
      await new Promise((res) => setTimeout(res, waitMs));
      waitMs = Math.min(2000, waitMs * 2);
    }
  }
}

/** Ends an interned metric key of a counter's series (a metric name never holds it). */
const counterMark = '\u0000';
const metricName = (key: string) => (key.endsWith(counterMark) ? key.slice(0, -1) : key);

/** 503 reasons that waiting does not change within an import: its request is refused, counted, and the import goes on. */
const lastingRefusals: ReadonlySet<string> = new Set(['racks_full']);

/** The server id of a series: `server`, else `instance` without its `:port`, else `host`. */
function serverOf(labels: Record<string, unknown>): string | null {
  if (typeof labels['server'] === 'string') return labels['server'];
  if (typeof labels['instance'] === 'string') return labels['instance'].replace(/:\d{1,5}$/, '');
  if (typeof labels['host'] === 'string') return labels['host'];
  return null;
}

function intern(list: string[], ids: Map<string, number>, s: string): number {
  let i = ids.get(s);
  if (i === undefined) {
    i = list.length;
    list.push(s);
    ids.set(s, i);
  }
  return i;
}

/** Gauge columns for n points, no summaries, no names. */
function pointColumns(n: number): SeriesColumns {
  const c = columnsFor({ points: n, dists: 0, sketchBytes: 0 });
  c.pointKinds.fill(KindCode.Gauge);
  return c;
}
