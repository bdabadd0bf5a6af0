// Query routes of the core API (DESIGN §5): stored queries, their results and live stream,
// and ad-hoc queries. Errors are {"error"} (parse errors add {"position"}).

import assert from 'node:assert';
import type { Context, Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import { coreLimits } from '../limits.js';
import { WorkerError, type ShardPool } from '../pool.js';
import { DefinitionConflict, StoredQueryLimit, type QueryCatalog } from './catalog.js';
import { evalLimitReasonOf, type WindowResult } from './eval.js';
import { parseQuery, parseQueryOften, QueryError } from './parse.js';
import { promInstant } from './prom.js';
import { parseTime, TimeError } from './time.js';

export const routeLimits = {
  /** Windows starting inside the range of one answer (ad-hoc or stored): 1 h of 1 s windows;
   * more is a clear 400. The window containing `from` comes on top (coreLimits.evalWindowsMax). */
  windowsPerAnswerMax: 3600,
  /** Live subscribers in all: each holds a connection and a small queue. A client's share is
   * coreLimits.liveStreamsPerClientMax. */
  subscribersMax: 1000,
  /** Events queued for one slow subscriber before it is dropped. */
  subscriberQueueMax: 256,
  keepAliveMs: 15_000,
  /** A write to a live stream (an event or a keep-alive) not taken by the client's socket within this is a client that stopped reading: dropped. */
  writeStallMs: 30_000,
  nameCharsMax: 200,
  /** Stored queries on one multiplexed live stream: every stored query of a core. */
  idsPerStreamMax: 1000,
} as const;

// An evaluation computes the windows an answer holds plus the one containing `from`; a client's
// share of the live streams leaves room for others.
assert(coreLimits.evalWindowsMax >= routeLimits.windowsPerAnswerMax + 1, 'BUG: evalWindowsMax < windowsPerAnswerMax + 1');
assert(coreLimits.liveStreamsPerClientMax < routeLimits.subscribersMax, 'BUG: liveStreamsPerClientMax ≥ subscribersMax');

export function addQueryRoutes(app: Hono, pool: ShardPool, stored: QueryCatalog): { subscribers: () => number; dropped: () => number; revoked: () => number } {
  let subscribers = 0;
  let dropped = 0;
  /** Live streams closed because their token was revoked (a tokens file reloaded without it). */
  let revoked = 0;
  const bad = (err: unknown, c: Context) => {
    if (err instanceof QueryError) return { body: { error: err.message, position: err.position }, status: 400 as const };
    if (err instanceof TimeError) return { body: { error: err.message }, status: 400 as const };
    if (err instanceof WorkerError) {
      // An evaluation past its time budget (issue 16.1) may fit when the worker is less busy or
      // the range shorter: 503; one with more windows than any evaluation computes: 400.
      const reason = evalLimitReasonOf(err.message);
      if (reason !== null) c.set('apmRefusal', reason);
      return { body: { error: err.message, ...(reason === null ? {} : { reason }) }, status: reason === 'too_many_windows' ? (400 as const) : (503 as const) };
    }
    throw err;
  };
  // Bounded ranges (issue 8): an ad-hoc query reads storage over all of it.
  const range = (from: string | undefined, to: string | undefined, rangeMsMax: number, hint: string) => {
    const now = Date.now();
    const toMs = parseTime(to, now, now, 'to');
    const fromMs = parseTime(from, toMs - 3_600_000, now, 'from');
    if (fromMs >= toMs) throw new TimeError(`from (${fromMs}) must be before to (${toMs})`);
    if (toMs - fromMs > rangeMsMax) throw new TimeError(`from..to spans ${Math.round((toMs - fromMs) / 86_400_000)} days > limit ${rangeMsMax / 86_400_000} days; ${hint}`);
    return { fromMs, toMs };
  };

  app.post('/api/v1/queries', async (c) => {
    const d = await readDefinition(c.req.raw);
    if (typeof d === 'string') return c.json({ error: d }, 400);
    try {
      return c.json(await stored.create(d.name, d.query, Date.now()), 201);
    } catch (err) {
      if (err instanceof QueryError) return c.json({ error: err.message, position: err.position }, 400);
      if (err instanceof StoredQueryLimit) return c.json({ error: err.message }, 409);
      // Not stored (the store refused: a full disk): the client may retry.
      return c.json({ error: `not stored: ${(err as Error).message}` }, 503);
    }
  });

  app.get('/api/v1/queries', (c) => c.json({ queries: stored.list(), ...(stored.unloadable.length > 0 ? { unloadable: stored.unloadable } : {}) }));

  app.get('/api/v1/queries/:id', (c) => {
    const q = stored.get(c.req.param('id'));
    return q === undefined ? c.json({ error: `no stored query ${c.req.param('id')}` }, 404) : c.json(q);
  });

  app.delete('/api/v1/queries/:id', async (c) => ((await stored.delete(c.req.param('id'))) ? c.body(null, 204) : c.json({ error: `no stored query ${c.req.param('id')}` }, 404)));

  // Edit: same id, new name and text; the old results are dropped (StoredQueries.update).
  app.put('/api/v1/queries/:id', async (c) => {
    const d = await readDefinition(c.req.raw);
    if (typeof d === 'string') return c.json({ error: d }, 400);
    try {
      const q = await stored.update(c.req.param('id'), d.name, d.query);
      return q === undefined ? c.json({ error: `no stored query ${c.req.param('id')}` }, 404) : c.json(q);
    } catch (err) {
      // Another node changed it meanwhile (a cluster's KV compare-and-set, core/cluster/queries.ts).
      if (err instanceof DefinitionConflict) return c.json({ error: err.message, reason: 'conflict' }, 409);
      const r = bad(err, c);
      return c.json(r.body, r.status);
    }
  });

  app.get('/api/v1/queries/:id/results', async (c) => {
    const q = stored.get(c.req.param('id'));
    if (q === undefined) return c.json({ error: `no stored query ${c.req.param('id')}` }, 404);
    try {
      const { fromMs, toMs } = range(c.req.query('from'), c.req.query('to'), coreLimits.resultsRangeMsMax, 'narrow from/to');
      // From the window containing `from`, as ad-hoc answers (issue 16.12); that window comes on
      // top of the windowsPerAnswerMax that start inside the range.
      const Wms = (stored.parsed(q.id) ?? parseQuery(q.query)).windowSeconds * 1000;
      const firstMs = Math.floor(fromMs / Wms) * Wms;
      const most = routeLimits.windowsPerAnswerMax + (firstMs < fromMs ? 1 : 0);
      // Stored as JSON text: the answer is assembled without parsing them, and the same answer is
      // sent again while no window of the query arrived (for at most a second).
      const body = await stored.resultsAnswer(q.id, firstMs, toMs, most, (windows) =>
        windows.length > most ? null : Buffer.from(`{"id":${JSON.stringify(q.id)},"query":${JSON.stringify(q.query)},"windows":[${windows.join(',')}]}`),
      );
      if (body === null) {
        c.set('apmRefusal', 'too_many_windows');
        return c.json({ error: `more than ${routeLimits.windowsPerAnswerMax} windows per answer; narrow from/to`, reason: 'too_many_windows' }, 400);
      }
      return c.body(body, 200, { 'content-type': 'application/json' });
    } catch (err) {
      const r = bad(err, c);
      return c.json(r.body, r.status);
    }
  });

  /** Streams windows of the queries in `ids` as SSE `window` events until the client leaves; `who` holds one of its slots meanwhile. */
  const liveStream = (c: Context, ids: ReadonlySet<string>, tagged: boolean, who: string, definitions: boolean) =>
    streamSSE(c, async (stream) => {
      // w null: the definitions changed (a `definitions` event, in order with the windows).
      const queue: { id: string; w: WindowResult | null }[] = [];
      const stillAllowed = c.get('apmStillAllowed') as (() => boolean) | undefined;
      let wake: (() => void) | null = null;
      let closed = false;
      const enqueue = (id: string, w: WindowResult | null) => {
        if (queue.length >= routeLimits.subscriberQueueMax) drop(); // a client this far behind may not hold memory
        else queue.push({ id, w });
        wake?.();
      };
      const unsubscribe = stored.subscribe((id, w) => {
        if (!ids.has(id) || closed) return;
        enqueue(id, w);
      });
      // A dashboard's stream (definitions=1) is told when any definition changes, so the page
      // lists them again (a panel created, edited or deleted elsewhere).
      const unsubscribeDefinitions = definitions
        ? stored.onDefinitions(() => {
            if (closed || (queue.length > 0 && queue[queue.length - 1]!.w === null)) return;
            enqueue('', null);
          })
        : () => undefined;
      // A dropped client's write never completes (its socket is full): abort the stream, which
      // ends that write, the loop, and so gives back the slot (before: counted, never let go).
      const drop = () => {
        if (closed) return;
        closed = true;
        dropped++;
        stream.abort();
      };
      /** Writes, dropping the client when its socket takes nothing for writeStallMs. */
      const write = async (w: () => Promise<unknown>) => {
        const stall = setTimeout(drop, routeLimits.writeStallMs);
        try {
          await w();
        } finally {
          clearTimeout(stall);
        }
      };
      stream.onAbort(() => {
        closed = true;
        wake?.();
      });
      try {
        while (!closed) {
          // A token revoked since the stream opened (SIGHUP) ends it: before, it streamed on for good.
          if (stillAllowed !== undefined && !stillAllowed()) {
            revoked++;
            break;
          }
          const e = queue.shift();
          if (e !== undefined) {
            const w = e.w;
            if (w === null) {
              await write(() => stream.writeSSE({ event: 'definitions', data: '{}' }));
              continue;
            }
            const data = tagged ? `{"id":${JSON.stringify(e.id)},"window":${JSON.stringify(w)}}` : JSON.stringify(w);
            await write(() => stream.writeSSE({ event: 'window', data, id: `${w.startMs}:${w.revision}` }));
            continue;
          }
          await new Promise<void>((resolve) => {
            wake = resolve;
            setTimeout(resolve, routeLimits.keepAliveMs).unref();
          });
          wake = null;
          if (!closed && queue.length === 0) await write(() => stream.write(': keep-alive\n\n'));
        }
      } finally {
        unsubscribe();
        unsubscribeDefinitions();
        release(who);
      }
    });
  // Slots are taken before the stream starts and given back when it ends, so requests arriving
  // together cannot all pass the checks (issue 16.10: one token opened every slot).
  const streamsOf = new Map<string, number>();
  const release = (who: string) => {
    subscribers--;
    const n = (streamsOf.get(who) ?? 1) - 1;
    if (n <= 0) streamsOf.delete(who);
    else streamsOf.set(who, n);
  };
  /** Takes a slot for the client, or answers why not (503: the node is full; 429: the client's share is). */
  const openLive = (c: Context, ids: ReadonlySet<string>, tagged: boolean, definitions = false) => {
    if (subscribers >= routeLimits.subscribersMax) {
      c.set('apmRefusal', 'live_full');
      return c.json({ error: `${routeLimits.subscribersMax} live subscribers already; try later` }, 503);
    }
    const who = c.get('apmClient') ?? 'unknown';
    const held = streamsOf.get(who) ?? 0;
    if (held >= coreLimits.liveStreamsPerClientMax) {
      c.set('apmRefusal', 'live_share');
      return c.json(
        { error: `"${who}" holds ${held} live streams, its share of the ${routeLimits.subscribersMax} slots (liveStreamsPerClientMax ${coreLimits.liveStreamsPerClientMax}); close some, or carry several queries on one stream: GET /api/v1/live?ids=<id>,<id>,…` },
        429,
        { 'Retry-After': String(Math.ceil(routeLimits.keepAliveMs / 1000)) },
      );
    }
    subscribers++;
    streamsOf.set(who, held + 1);
    try {
      return liveStream(c, ids, tagged, who, definitions);
    } catch (err) {
      release(who);
      throw err;
    }
  };

  app.get('/api/v1/queries/:id/live', (c) => {
    const q = stored.get(c.req.param('id'));
    if (q === undefined) return c.json({ error: `no stored query ${c.req.param('id')}` }, 404);
    return openLive(c, new Set([q.id]), false);
  });

  // Several stored queries on one stream: a browser holds at most 6 HTTP/1.1 connections per
  // host, so a dashboard with a stream per chart would starve its own other requests.
  // Events carry {"id", "window"}.
  // `definitions=1` (a dashboard's): also a `definitions` event whenever a stored query is
  // created, edited or deleted (here, elsewhere, or on another node of a cluster); `ids` may then
  // be empty (a page with no panel yet learns of the first one).
  app.get('/api/v1/live', (c) => {
    const ids = (c.req.query('ids') ?? '').split(',').filter((x) => x !== '');
    const definitions = c.req.query('definitions') === '1';
    if (ids.length === 0 && !definitions) return c.json({ error: 'missing ids=<id>,<id>,… (stored query ids), or definitions=1' }, 400);
    if (ids.length > routeLimits.idsPerStreamMax) return c.json({ error: `${ids.length} ids > ${routeLimits.idsPerStreamMax} per stream` }, 400);
    const unknown = ids.filter((id) => stored.get(id) === undefined);
    if (unknown.length > 0) return c.json({ error: `no stored query ${unknown.join(', ')}`, unknown }, 404);
    return openLive(c, new Set(ids), true, definitions);
  });

  app.get('/api/v1/query', async (c) => {
    // query= is the Prometheus API (Grafana, promtool: core/query/prom.ts); q= is apm's own shape.
    if (c.req.query('q') === undefined && c.req.query('query') !== undefined) return promInstant(c, pool);
    try {
      const text = c.req.query('q');
      if (text === undefined) return c.json({ error: 'missing q=<query> (apm\'s answer), or query=<query> for the Prometheus API\'s' }, 400);
      const q = parseQueryOften(text);
      const { fromMs, toMs } = range(c.req.query('from'), c.req.query('to'), coreLimits.adHocRangeMsMax, 'narrow from/to, or make it a stored query (its results keep for the retention)');
      // The answer starts with the window containing `from` (issue 16.12); the bound counts the
      // windows that start inside the range, so that one comes on top.
      const Wms = q.windowSeconds * 1000;
      const windows = Math.ceil(toMs / Wms) - Math.ceil(fromMs / Wms);
      if (windows > routeLimits.windowsPerAnswerMax) {
        c.set('apmRefusal', 'too_many_windows');
        return c.json({ error: `${windows} windows > ${routeLimits.windowsPerAnswerMax} per answer; use a longer WINDOW or a shorter range`, reason: 'too_many_windows' }, 400);
      }
      // Evaluated by the worker that owns the metric's shard: the HTTP thread never reads rows.
      // nocache=1 (as VictoriaMetrics spells it): every window evaluated, none taken from or kept in the worker's answer cache.
      const answer = await pool.queryJson(q.text, q.metric, Math.floor(fromMs / 1000), Math.ceil(toMs / 1000), c.req.query('nocache') !== '1');
      return c.body(`{"query":${JSON.stringify(q.text)},"windows":${answer}}`, 200, { 'content-type': 'application/json' });
    } catch (err) {
      const r = bad(err, c);
      return c.json(r.body, r.status);
    }
  });

  return { subscribers: () => subscribers, dropped: () => dropped, revoked: () => revoked };
}

/** A stored query's definition from a request body, or an error text. The name defaults to the query. */
// eslint-disable-next-line no-control-regex
const unshowable = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

async function readDefinition(req: Request): Promise<{ name: string; query: string } | string> {
  let body: { name?: unknown; query?: unknown };
  try {
    body = (await req.json()) as typeof body;
  } catch {
    return 'body must be JSON {"name": "...", "query": "..."}';
  }
  if (typeof body !== 'object' || body === null) return 'body must be JSON {"name": "...", "query": "..."}';
  if (typeof body.query !== 'string') return '"query" must be a string';
  const given = typeof body.name === 'string' && body.name.trim() !== '';
  if (given && (body.name as string).trim().length > routeLimits.nameCharsMax) return `"name" is longer than ${routeLimits.nameCharsMax} characters`;
  // Control and bidirectional-override characters: a name shown in a panel header and a delete
  // confirmation could hide or reverse the text after it.
  if (given && unshowable.test(body.name as string)) return '"name" holds a control or bidirectional-formatting character (U+0000–U+001F, U+007F–U+009F, U+200E–U+200F, U+202A–U+202E, U+2066–U+2069)';
  // Defaulted from a query longer than a name may be: its beginning (before: refused, naming a "name" never sent).
  const name = given ? (body.name as string).trim() : body.query.length > routeLimits.nameCharsMax ? `${body.query.slice(0, routeLimits.nameCharsMax - 1)}…` : body.query;
  return { name, query: body.query };
}
