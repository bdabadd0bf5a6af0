// Query routing in a core cluster (issue 13): any node answers any API call.
//
// - A route whose answer is one metric's data (ad-hoc /api/v1/query?q=, the Prometheus
//   query_range and instant query, export, a stored query's results) is answered where the
//   metric's shard is: locally when this node serves the shard (it owns it and has caught up),
//   else proxied to the shard's first ready owner with the same method, path, query and body and
//   the caller's own Authorization header (never a node credential: the owner checks the
//   caller's token and role itself). A stored query's results go to its evaluating node, the
//   first ready owner, even when this node is a later owner (it does not evaluate the query).
// - A proxied request carries forwardedHeader; a node never proxies such a request again: it
//   answers it itself or says 503 (no loops while two nodes' views of the placement differ).
// - Lists across metrics (/api/v1/metrics, the Prometheus label values, series, metadata) fan
//   out: this node answers for the shards it serves, one ready owner per other shard answers
//   with localHeader (only its own ready shards), the answers are merged and de-duplicated.
//
// Both headers may come from any client: a forged forwardedHeader only gets a local answer or
// a 503, a forged localHeader only a partial list. Neither lends any rights.

import { Readable } from 'node:stream';
import type { Context, MiddlewareHandler, Next } from 'hono';
import { Agent, request, type Dispatcher } from 'undici';
import { hashName } from '../../schema/names.js';
import type { PromText } from '../../lib/prom.js';
import { shardOf } from '../../schema/section.js';
import { metricOfMatch } from '../history/routes.js';
import type { QueryCatalog } from '../query/catalog.js';
import { parseQueryOften } from '../query/parse.js';
import { parseForProm, promLimits, scalarLiteral } from '../query/prom.js';
import type { ClusterView, NodeState } from './view.js';

declare module 'hono' {
  interface ContextVariableMap {
    /** A cluster list route: the metrics this node answers for (those of the shards it serves); absent: all. */
    apmShardFilter: (metric: string) => boolean;
  }
}

export const clusterRouteLimits = {
  /** The owner's answer must start within this: its ad-hoc budget (adHocEvalMs, 2 s) plus queueing. */
  proxyHeadersTimeoutMs: 10_000,
  /**
   * An owner that has not begun to answer within this gets the next ready owner asked beside it
   * (the first answer wins). Above what a healthy owner takes for nearly every request (ad-hoc
   * queries of 1,000 servers × 10 min answer in ~5–50 ms), below the ad-hoc budget (2 s), so only
   * the heaviest queries and hung owners cost a second ask.
   */
  proxyHedgeAfterMs: 1_000,
  /**
   * An owner silent for proxyHedgeAfterMs is asked GET /healthz first (its HTTP thread answers
   * within milliseconds even while its workers evaluate or write): only one that does not answer
   * this fast gets the next owner asked beside it. A live owner computing a heavy query is left
   * to finish (asked again each proxyHedgeAfterMs), instead of a second owner doing it all again.
   */
  proxyProbeTimeoutMs: 500,
  /** Silence between two chunks of a proxied body (an export reads a chunk of ~200,000 points at a time). */
  proxyBodyIdleMs: 30_000,
  proxyConnectTimeoutMs: 2_000,
  /** Proxied requests open at once; beyond it 503 (each holds a socket to the owner and a client's connection). */
  proxiesInFlightMax: 256,
  /** A node whose connection failed is asked last for this long (it is probably down; KV says so within 10 s). */
  unreachableForMs: 10_000,
  /** Connections to one other node. */
  connectionsPerNodeMax: 64,
  /** A node's part of a list must arrive within this (else the list is answered without it, with a warning). */
  fanoutTimeoutMs: 5_000,
  /** Bytes of one node's part of a list: 10,000 names (listValuesMax) of up to 128 characters, with room for metadata. */
  fanoutBytesMax: 16 * 1024 * 1024,
} as const;

/** Set on a proxied request: the id of the node that proxied it (a loop guard). */
export const forwardedHeader = 'x-apm-forwarded-by';
/** Set on a 503 of a node that does not serve the shard asked for (a proxy then asks the next owner). */
export const shardUnavailableHeader = 'x-apm-shard-unavailable';
/** Set on a fanned-out list request: answer only for the shards this node serves. */
export const localHeader = 'x-apm-local-shards';

/**
 * Set on an answer of a node cut off from NATS (ClusterView.cutOffSinceMs): the time (ISO 8601)
 * since which data of its shards may be missing from it.
 */
export const staleSinceHeader = 'x-apm-stale-since';
/** On a part of a cluster-wide list: the shards it covers (those the answering node serves now), as a hex bitmap. */
export const coveredShardsHeader = 'x-apm-covered-shards';

/** Shards as a hex bitmap (bit s of nibble ⌊s/4⌋), and back (null: absent or malformed). */
export function shardsToHex(has: (s: number) => boolean, S: number): string {
  let out = '';
  for (let n = 0; n < Math.ceil(S / 4); n++) {
    let v = 0;
    for (let b = 0; b < 4; b++) if (n * 4 + b < S && has(n * 4 + b)) v |= 1 << b;
    out += v.toString(16);
  }
  return out;
}

export function shardsFromHex(text: string | undefined, S: number): Set<number> | null {
  if (text === undefined || text.length !== Math.ceil(S / 4) || !/^[0-9a-f]*$/.test(text)) return null;
  const out = new Set<number>();
  for (let n = 0; n < text.length; n++) {
    const v = parseInt(text[n]!, 16);
    for (let b = 0; b < 4; b++) if ((v & (1 << b)) !== 0) out.add(n * 4 + b);
  }
  return out;
}

/** Response headers passed back from the owner (besides the body and status). */
const passedHeaders = ['content-type', 'cache-control', 'retry-after', 'www-authenticate', staleSinceHeader];

/** The shard of a metric (its name's hash lo32, as ShardPool and the racks cut it). */
export function shardOfMetric(name: string, shards: number): number {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  return shardOf(h[0]!, shards);
}

type ListRoute = 'metrics' | 'label_values' | 'series' | 'metadata';

/** The cluster-wide list a request asks for, or null. Label values of `function` and `query` are the same on every node. */
function listRoute(method: string, path: string): ListRoute | null {
  const get = method === 'GET' || method === 'HEAD';
  if (get && path === '/api/v1/metrics') return 'metrics';
  if (get && path === '/api/v1/metadata') return 'metadata';
  if ((get || method === 'POST') && path === '/api/v1/series') return 'series';
  const m = /^\/api\/v1\/label\/([^/]+)\/values$/.exec(path);
  if (get && m !== null && ['__name__', 'server', 'rack'].includes(m[1]!)) return 'label_values';
  return null;
}

const resultsPath = /^\/api\/v1\/queries\/([^/]+)\/results$/;

/** What one metric's route needs: its metrics, and whether it must reach the evaluating node. */
interface Target {
  metrics: string[];
  evaluator: boolean;
}

type ProxyResult = 'ok' | 'failed' | 'timeout' | 'busy' | 'unavailable' | 'loop' | 'spans_nodes' | 'rerouted' | 'hedged';

/** What asking the owners of a request came to: an answer to pass on, every owner failed (the last one's error), or none answered usably. */
type Asked = { kind: 'answer'; r: Dispatcher.ResponseData } | { kind: 'failed'; node: NodeState; err: unknown } | { kind: 'none' };

/** Whether proxy() answers a failure itself (503) or leaves it to its caller (null). */
interface ProxyOptions {
  orNull: boolean;
}

export class ClusterRouting {
  readonly proxied: Record<ProxyResult, number> = { ok: 0, failed: 0, timeout: 0, busy: 0, unavailable: 0, loop: 0, spans_nodes: 0, rerouted: 0, hedged: 0 };
  /** GET /healthz asked of an owner silent for proxyHedgeAfterMs (see clusterRouteLimits.proxyProbeTimeoutMs). */
  probes = 0;
  readonly fanout = { ok: 0, failed: 0, shards_missing: 0, truncated: 0 };
  /** Requests for its own shards while this node was cut off from NATS: asked of another owner, or answered here marked stale. */
  readonly cutOff = { proxied: 0, stale: 0 };
  private inFlight = 0;
  private readonly agent = new Agent({
    connections: clusterRouteLimits.connectionsPerNodeMax,
    headersTimeout: clusterRouteLimits.proxyHeadersTimeoutMs,
    bodyTimeout: clusterRouteLimits.proxyBodyIdleMs,
    connect: { timeout: clusterRouteLimits.proxyConnectTimeoutMs },
  });

  constructor(
    private readonly view: ClusterView,
    private readonly stored: QueryCatalog,
  ) {}

  /** The middleware createApi installs before the query, Prometheus and history routes. */
  middleware(): MiddlewareHandler {
    return async (c, next) => {
      const list = listRoute(c.req.method, c.req.path);
      if (list !== null) return this.list(c, next, list);
      const t = await this.targetOf(c);
      if (t === null) return next();
      return this.route(c, next, t);
    };
  }

  /**
   * Answers locally, proxies, or refuses with 503 (no ready owner; a proxied request for a shard
   * not served here). A request naming metrics of several shards (an export) is answered here
   * when this node serves them all, else proxied to the ready owners of them all (before: to the
   * owners of its last metric's shard, which could fail over to a node missing the others).
   */
  private async route(c: Context, next: Next, t: Target): Promise<Response | void> {
    const S = this.view.settings.shards;
    let local = true;
    // Ready owners of every shard named (not this node), in the first shard's order.
    let common: NodeState[] | null = null;
    const firsts = new Set<string>();
    for (const metric of t.metrics) {
      const shard = shardOfMetric(metric, S);
      const owners = this.view.readyOwners(shard);
      const here = t.evaluator ? owners[0]?.id === this.view.nodeId : this.view.servesLocally(shard);
      if (!here) local = false;
      // The evaluator of a stored query's results is the first ready owner only; data has every
      // ready owner but this node: the nodes' records say ready for a moment after this node's
      // consumer fell behind, and a request proxied to itself would only be refused as a loop.
      const mine = t.evaluator ? owners.slice(0, 1) : owners.filter((n) => n.id !== this.view.nodeId);
      common = common === null ? mine : common.filter((n) => mine.some((m) => m.id === n.id));
      if (mine[0] !== undefined) firsts.add(mine[0].id);
      else if (!here) return this.refuse(c, 'unavailable', `shard ${shard} (metric ${metric}) has no ready owner: its owners are down or still catching up; retry shortly`);
    }
    const candidates = common ?? [];
    if (local) return this.local(c, next, candidates.filter((n) => n.id !== this.view.nodeId));
    // A proxied request is never proxied again, nor refused for good: the proxying node's view differed from this one's.
    if (c.req.header(forwardedHeader) !== undefined) {
      return this.refuse(c, 'loop', `this node (${this.view.nodeId}) does not ${t.evaluator ? 'evaluate the stored queries of' : 'serve'} every shard this request reads (${t.metrics.join(', ')}), and the request was already proxied (by ${c.req.header(forwardedHeader)}): the nodes' views of the placement differ for a moment; retry shortly`);
    }
    if (candidates.length === 0) {
      this.proxied.spans_nodes++;
      c.set('apmRefusal', 'spans_nodes');
      return c.json({ error: `the metrics of this request live on different nodes (first ready owners ${[...firsts].join(', ')}) and no node serves them all; ask for them one request each`, reason: 'spans_nodes' }, 400);
    }
    return (await this.proxy(c, this.ordered(candidates), { orNull: false }))!;
  }

  /**
   * Answers here. A node cut off from NATS holds its shards only up to when it was cut off, while
   * the other owners may go on (before: it kept answering from what it held, unmarked): it asks
   * another ready owner of its last view first, and answers itself only when none answers, marked
   * with the time since which it may miss data (staleSinceHeader). When the whole log is down
   * every owner is cut off, and the answer is as stale wherever it comes from.
   */
  private async local(c: Context, next: Next, others: NodeState[]): Promise<Response | void> {
    const since = this.view.cutOffSinceMs();
    if (since === null) return next();
    // Owners that refused a connection lately are skipped, not only tried last: a node cut off
    // from its peers as well would pay a connect timeout per owner on every request.
    const reachable = others.filter((n) => (this.unreachableUntil.get(n.id) ?? 0) <= Date.now());
    if (reachable.length > 0 && c.req.header(forwardedHeader) === undefined) {
      const r = await this.proxy(c, reachable, { orNull: true });
      if (r !== null) {
        this.cutOff.proxied++;
        return r;
      }
    }
    await next();
    this.cutOff.stale++;
    c.res.headers.set(staleSinceHeader, new Date(since).toISOString());
  }

  /**
   * Ready owners, those that refused a connection lately last: a node killed a moment ago is
   * still live in KV for up to the dead-after time (10 s), and its requests go to the other
   * owner at once instead of failing until then.
   */
  private ordered(owners: NodeState[]): NodeState[] {
    const now = Date.now();
    const bad = (n: NodeState) => (this.unreachableUntil.get(n.id) ?? 0) > now;
    return [...owners.filter((n) => !bad(n)), ...owners.filter(bad)];
  }

  /** Nodes whose connection failed, until when they are tried last (bounded: one entry per node of the placement). */
  private readonly unreachableUntil = new Map<string, number>();

  private refuse(c: Context, result: 'unavailable' | 'loop', error: string): Response {
    this.proxied[result]++;
    c.set('apmRefusal', 'shard_unavailable');
    return c.json({ error, reason: 'shard_unavailable' }, 503, { [shardUnavailableHeader]: this.view.nodeId });
  }

  /** The metrics a one-metric route reads, or null when it reads none (or cannot say: the local route answers the error). */
  private async targetOf(c: Context): Promise<Target | null> {
    const { method, path } = c.req;
    const one = (metric: string | null): Target | null => (metric === null ? null : { metrics: [metric], evaluator: false });
    if (path === '/api/v1/query' && method === 'GET') {
      const q = c.req.query('q');
      return one(q !== undefined ? metricOf(() => parseQueryOften(q).metric) : promMetric(c.req.query('query')));
    }
    if ((path === '/api/v1/query' && method === 'POST') || (path === '/api/v1/query_range' && (method === 'GET' || method === 'POST'))) return one(promMetric(await promParam(c, 'query')));
    if (path === '/api/v1/export' && method === 'GET') {
      const names = [...(c.req.queries('match[]') ?? []), ...(c.req.queries('metric') ?? [])].map(metricOfMatch);
      return names.length === 0 || names.includes(null) ? null : { metrics: names as string[], evaluator: false };
    }
    const m = method === 'GET' ? resultsPath.exec(path) : null;
    if (m !== null) {
      // A malformed escape (`%ZZ`) is no query's id: the local route answers 404 (it threw: a 500).
      let id: string;
      try {
        id = decodeURIComponent(m[1]!);
      } catch {
        return null;
      }
      const metric = this.stored.metricOf(id);
      return metric === undefined ? null : { metrics: [metric], evaluator: true };
    }
    return null;
  }

  /**
   * The same request to the first of `owners` that answers, its answer streamed back. An owner
   * that fails (refused, reset, timed out, a 503 saying it does not serve the shard, or with
   * `orNull` any 5xx or 429) passes the request to the next; one that has not begun to answer
   * within proxyHedgeAfterMs gets the next owner asked beside it (a hedged request), and the
   * first usable answer wins while the other is aborted. Every proxied route only reads, so a
   * second ask costs work, never a double effect. Before: a hung owner (stopped, swapping, cut
   * off behind a firewall that drops) held every request for its shards for the headers timeout
   * (10 s) and then failed it, for as long as its record said live. A failure is a 503, or null
   * with `orNull` (no owner answered; nothing is counted as proxied then).
   */
  private async proxy(c: Context, owners: NodeState[], o: ProxyOptions): Promise<Response | null> {
    const to = owners[0]!;
    if (this.inFlight >= clusterRouteLimits.proxiesInFlightMax) {
      if (o.orNull) return null;
      this.proxied.busy++;
      c.set('apmRefusal', 'proxy_busy');
      return c.json({ error: `${this.inFlight} requests are being proxied by this node already (proxiesInFlightMax ${clusterRouteLimits.proxiesInFlightMax}); retry shortly, or ask node ${to.id} (${to.url}) directly`, reason: 'proxy_busy' }, 503);
    }
    const url = new URL(c.req.url);
    const body = c.req.method === 'GET' || c.req.method === 'HEAD' ? undefined : await c.req.text();
    this.inFlight++;
    const asked = await this.firstAnswer(owners, (node, signal) => request(`${node.url.replace(/\/+$/, '')}${url.pathname}${url.search}`, { method: c.req.method as Dispatcher.HttpMethod, headers: this.forwardHeaders(c), body, dispatcher: this.agent, signal }), o);
    if (asked.kind === 'failed') {
      this.inFlight--;
      if (o.orNull) return null;
      const { node, err } = asked;
      const timeout = /TIMEOUT/.test((err as { code?: string }).code ?? '');
      this.proxied[timeout ? 'timeout' : 'failed']++;
      c.set('apmRefusal', 'proxy_failed');
      return c.json({ error: `node ${node.id} (${node.url}), ${owners.length > 1 ? 'the last ready owner tried' : 'the owner'} of this request's shard, did not answer ${c.req.method} ${url.pathname}${timeout ? ' in time' : ''}: ${(err as Error).message}; retry shortly`, reason: 'proxy_failed' }, 503);
    }
    if (asked.kind === 'none') {
      // Every owner said it does not serve the shard (only with orNull: else the last one's 503 is passed on).
      this.inFlight--;
      if (o.orNull) return null;
      throw new Error('BUG: proxy without an answer or an error');
    }
    const r = asked.r;
    this.proxied.ok++;
    let released = false;
    const release = () => {
      if (!released) (released = true), this.inFlight--;
    };
    r.body.once('close', release);
    r.body.once('error', release);
    const out = new Headers();
    for (const k of passedHeaders) {
      const v = r.headers[k];
      if (typeof v === 'string') out.set(k, v);
    }
    if (c.req.method === 'HEAD' || r.statusCode === 204 || r.statusCode === 304) {
      r.body.resume();
      release();
      return new Response(null, { status: r.statusCode, headers: out });
    }
    return new Response(Readable.toWeb(r.body) as ReadableStream<Uint8Array>, { status: r.statusCode, headers: out });
  }

  /**
   * Asks `owners` in order for one answer (see proxy()): the next owner when one fails or has not
   * answered within proxyHedgeAfterMs; the first usable answer wins and the others are aborted.
   * An owner that failed or was outrun is asked last for unreachableForMs.
   */
  private firstAnswer(owners: NodeState[], ask: (node: NodeState, signal: AbortSignal) => Promise<Dispatcher.ResponseData>, o: ProxyOptions): Promise<Asked> {
    return new Promise<Asked>((resolve) => {
      const aborts: AbortController[] = [];
      let next = 0;
      let pending = 0;
      let done = false;
      let hedge: NodeJS.Timeout | null = null;
      /** After proxyHedgeAfterMs of silence from `node` (the owner asked last): asks the next owner beside it, unless its /healthz says it lives. */
      const arm = (node: NodeState, i: number) => {
        hedge = setTimeout(() => {
          if (done || next !== i + 1) return;
          void this.lives(node).then((alive) => {
            if (done || next !== i + 1) return;
            if (alive) return arm(node, i);
            this.proxied.hedged++;
            askedLast(node);
            start();
          });
        }, clusterRouteLimits.proxyHedgeAfterMs);
      };
      let last: Asked = { kind: 'none' };
      const finish = (a: Asked) => {
        done = true;
        if (hedge !== null) clearTimeout(hedge);
        for (const ac of aborts) ac.abort();
        resolve(a);
      };
      const askedLast = (node: NodeState) => {
        if (this.unreachableUntil.size < 4096 || this.unreachableUntil.has(node.id)) this.unreachableUntil.set(node.id, Date.now() + clusterRouteLimits.unreachableForMs);
      };
      // The next owner, if any; false when none is left.
      const start = (): boolean => {
        if (next >= owners.length) return false;
        const i = next++;
        const node = owners[i]!;
        const ac = new AbortController();
        aborts.push(ac);
        pending++;
        if (hedge !== null) clearTimeout(hedge);
        hedge = null;
        if (next < owners.length) arm(node, i);
        // A target undici cannot even parse (a node's --url) throws at once: a failure of that owner like any other.
        let asked: Promise<Dispatcher.ResponseData>;
        try {
          asked = ask(node, ac.signal);
        } catch (err) {
          asked = Promise.reject(err);
        }
        asked.then(
          (r) => {
            pending--;
            if (done) return void r.body.destroy();
            // That owner does not serve the shard in its own view (placement moved a moment ago), or with orNull any failure of it (5xx, 429): the next one may answer.
            const unusable = (r.statusCode === 503 && r.headers[shardUnavailableHeader] !== undefined) || (o.orNull && (r.statusCode >= 500 || r.statusCode === 429));
            if (!unusable) {
              aborts.splice(aborts.indexOf(ac), 1);
              return finish({ kind: 'answer', r });
            }
            // The last owner's refusal is passed on as it is (without orNull), its body kept whole.
            if (!o.orNull && next >= owners.length && pending === 0) {
              aborts.splice(aborts.indexOf(ac), 1);
              return finish({ kind: 'answer', r });
            }
            void r.body.dump().catch(() => {});
            if (start()) this.proxied.rerouted++;
            else if (pending === 0) finish(last);
          },
          (err: unknown) => {
            pending--;
            if (done) return;
            askedLast(node);
            last = { kind: 'failed', node, err };
            if (start()) this.proxied.rerouted++;
            else if (pending === 0) finish(last);
          },
        );
        return true;
      };
      start();
    });
  }

  /** Whether a node's HTTP thread answers GET /healthz within proxyProbeTimeoutMs. */
  private async lives(node: NodeState): Promise<boolean> {
    this.probes++;
    try {
      const r = await request(`${node.url.replace(/\/+$/, '')}/healthz`, { dispatcher: this.agent, signal: AbortSignal.timeout(clusterRouteLimits.proxyProbeTimeoutMs) });
      await r.body.dump();
      return r.statusCode === 200;
    } catch {
      return false;
    }
  }

  /** Headers of a request to another node: the caller's token unchanged, its body's type, the loop guard. */
  private forwardHeaders(c: Context, extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { [forwardedHeader]: this.view.nodeId, ...extra };
    for (const k of ['authorization', 'content-type', 'accept']) {
      const v = c.req.header(k);
      if (v !== undefined) h[k] = v;
    }
    return h;
  }

  /** A cluster-wide list: this node's part, then one ready owner's per other shard, merged. */
  private async list(c: Context, next: Next, route: ListRoute): Promise<Response | void> {
    const S = this.view.settings.shards;
    c.set('apmShardFilter', (metric) => this.view.servesLocally(shardOfMetric(metric, S)));
    if (c.req.header(localHeader) !== undefined) {
      // A part of another node's list: marked as this node's whole answers are when it is cut off.
      await next();
      const since = this.view.cutOffSinceMs();
      if (since !== null) c.res.headers.set(staleSinceHeader, new Date(since).toISOString());
      // Which shards this part holds: the asker asks another owner for those it left out.
      c.res.headers.set(coveredShardsHeader, shardsToHex((s) => this.view.servesLocally(s), S));
      return;
    }
    const ask = new Map<string, NodeState>();
    /** The shards each asked node is asked for. */
    const askedFor = new Map<string, number[]>();
    const missing: number[] = [];
    for (let s = 0; s < S; s++) {
      if (this.view.servesLocally(s)) continue;
      // Another node: this one's record may still say ready while its own consumer catches up, and its local part leaves that shard out.
      const o = this.view.readyOwners(s).find((n) => n.id !== this.view.nodeId);
      if (o === undefined) missing.push(s);
      else {
        ask.set(o.id, o);
        askedFor.set(o.id, [...(askedFor.get(o.id) ?? []), s]);
      }
    }
    const body = c.req.method === 'POST' ? await c.req.text() : undefined; // read before the local route: it is cached for it
    await next();
    // Cut off from NATS: this node's own part may miss what its shards took since (see local()).
    let since = this.view.cutOffSinceMs();
    if (since !== null) c.res.headers.set(staleSinceHeader, new Date(since).toISOString());
    if (c.res.status !== 200 || (ask.size === 0 && missing.length === 0)) return;
    const parts: ListAnswer[] = [(await c.res.json()) as ListAnswer];
    const warnings: string[] = [];
    // Shards a node was asked for and left out of its part (its consumer fell behind while its
    // record still said ready): asked of another ready owner once; missing then, said and counted
    // (before: left out silently).
    const left: number[] = [];
    const asked = new Set<string>(ask.keys());
    const take = async (nodes: NodeState[]) => {
      for (const a of await Promise.all(nodes.map((n) => this.fetchPart(c, n, body)))) {
        if (typeof a === 'string') {
          warnings.push(a);
          continue;
        }
        parts.push(a.answer);
        if (a.covered !== null) for (const s of askedFor.get(a.node) ?? []) if (!a.covered.has(s)) left.push(s);
        // A part from a node cut off from NATS: the list carries the earliest such time (before: unmarked).
        if (a.staleSinceMs !== null) {
          warnings.push(`node ${a.node} is cut off from the log since ${new Date(a.staleSinceMs).toISOString()}: the metrics of its shards may miss what came since`);
          since = since === null ? a.staleSinceMs : Math.min(since, a.staleSinceMs);
        }
      }
    };
    await take([...ask.values()]);
    if (left.length > 0) {
      const again = new Map<string, NodeState>();
      askedFor.clear();
      for (const s of left.splice(0)) {
        const o = this.view.readyOwners(s).find((n) => n.id !== this.view.nodeId && !asked.has(n.id));
        if (o === undefined) missing.push(s);
        else {
          again.set(o.id, o);
          askedFor.set(o.id, [...(askedFor.get(o.id) ?? []), s]);
        }
      }
      await take([...again.values()]);
      missing.push(...left);
    }
    if (missing.length > 0) {
      this.fanout.shards_missing += missing.length;
      missing.sort((a, b) => a - b);
      warnings.push(`${missing.length} of ${S} shards have no ready owner that answered for them (${missing.slice(0, 16).join(', ')}${missing.length > 16 ? ', …' : ''}): their metrics are missing from this list`);
    }
    const merged = mergeLists(route, parts, listLimit(new URL(c.req.url).searchParams.get('limit')), warnings);
    if (merged.truncated) this.fanout.truncated++;
    c.res = new Response(JSON.stringify(merged.answer), { status: 200, headers: { 'content-type': 'application/json', ...(since === null ? {} : { [staleSinceHeader]: new Date(since).toISOString() }) } });
  }

  /** One node's part of a list (with the time since which it may miss data, when it is cut off), or a warning saying why it is missing. */
  private async fetchPart(c: Context, n: NodeState, body: string | undefined): Promise<{ answer: ListAnswer; node: string; staleSinceMs: number | null; covered: Set<number> | null } | string> {
    const url = new URL(c.req.url);
    try {
      const r = await request(`${n.url.replace(/\/+$/, '')}${url.pathname}${url.search}`, {
        method: c.req.method as Dispatcher.HttpMethod,
        headers: this.forwardHeaders(c, { [localHeader]: '1' }),
        body,
        dispatcher: this.agent,
        headersTimeout: clusterRouteLimits.fanoutTimeoutMs,
        bodyTimeout: clusterRouteLimits.fanoutTimeoutMs,
        signal: AbortSignal.timeout(clusterRouteLimits.fanoutTimeoutMs),
      });
      const chunks: Buffer[] = [];
      let bytes = 0;
      for await (const chunk of r.body as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (bytes > clusterRouteLimits.fanoutBytesMax) {
          r.body.destroy();
          throw new Error(`answer exceeds fanoutBytesMax ${clusterRouteLimits.fanoutBytesMax} bytes`);
        }
        chunks.push(chunk);
      }
      if (r.statusCode !== 200) throw new Error(`status ${r.statusCode}: ${Buffer.concat(chunks).toString('utf8').slice(0, 200)}`);
      this.fanout.ok++;
      const stale = r.headers[staleSinceHeader];
      const staleSinceMs = typeof stale === 'string' && Number.isFinite(Date.parse(stale)) ? Date.parse(stale) : null;
      const covered = r.headers[coveredShardsHeader];
      return { answer: JSON.parse(Buffer.concat(chunks).toString('utf8')) as ListAnswer, node: n.id, staleSinceMs, covered: shardsFromHex(typeof covered === 'string' ? covered : undefined, this.view.settings.shards) };
    } catch (err) {
      this.fanout.failed++;
      return `node ${n.id} (${n.url}) did not give its part of this list (${(err as Error).message}): the metrics of its shards are missing`;
    }
  }

  writeMetrics(p: PromText): void {
    p.counters('apm_core_cluster_proxied_total', "Requests for another node's shard, by result: ok (proxied, the owner answered), failed and timeout (the owner did not answer; 503), busy (proxiesInFlightMax; 503), unavailable (no ready owner; 503), loop (an already proxied request for a shard not served here; 503), spans_nodes (an export naming metrics of several nodes; 400), rerouted (an owner failed or did not serve the shard; the next ready owner was asked), hedged (an owner had not begun to answer within 1 s, nor answered /healthz within 0.5 s; the next ready owner was asked beside it, the first answer won)", 'result', this.proxied);
    p.counter('apm_core_cluster_proxy_probes_total', 'GET /healthz asked of an owner that had not begun to answer a proxied request within 1 s (one that answers is left to finish; one that does not is hedged)', this.probes);
    p.counters('apm_core_cluster_fanout_total', 'Parts of cluster-wide lists asked of other nodes, by result (failed: the list was answered without it, with a warning)', 'result', { ok: this.fanout.ok, failed: this.fanout.failed });
    p.counter('apm_core_cluster_fanout_shards_missing_total', 'Shards left out of cluster-wide lists: no ready owner answered for them', this.fanout.shards_missing);
    p.counter('apm_core_cluster_fanout_truncated_total', 'Cluster-wide lists cut at their limit after merging', this.fanout.truncated);
    p.counters('apm_core_cluster_cut_off_answers_total', "Requests for this node's own shards while its heartbeats failed past the dead-after time (cut off from NATS), by how they were answered: proxied (another owner answered) or stale (answered here, with the x-apm-stale-since header)", 'result', this.cutOff);
  }

  close(): Promise<void> {
    return this.agent.close();
  }
}

/** The metric of a query text, or null when it does not parse (the local route says why). */
function metricOf(f: () => string): string | null {
  try {
    return f();
  } catch {
    return null;
  }
}

/** The metric of a Prometheus API query (apm's language); null for a scalar literal, a missing or bad text. */
function promMetric(text: string | undefined): string | null {
  if (text === undefined || scalarLiteral(text) !== null) return null;
  return metricOf(() => parseForProm(text, 1).q.metric);
}

/** A Prometheus API parameter: a form POST's body wins over the URL (as prom.ts reads it). */
async function promParam(c: Context, name: string): Promise<string | undefined> {
  const type = (c.req.header('content-type') ?? '').toLowerCase();
  if (c.req.method === 'POST' && type.startsWith('application/x-www-form-urlencoded')) {
    const v = new URLSearchParams(await c.req.text()).get(name);
    if (v !== null) return v;
  }
  return c.req.query(name);
}

interface MetricEntry {
  name: string;
  kind: string;
  firstSeenMs: number;
  lastSeenMs: number;
}
/** A node's list answer: /api/v1/metrics' {metrics}, or a Prometheus {status, data, warnings}. */
type ListAnswer = { metrics?: MetricEntry[]; data?: unknown; warnings?: string[] };

function listLimit(asked: string | null): number {
  const n = asked === null || asked === '' || asked === '0' ? promLimits.listValuesMax : Number(asked);
  return Number.isInteger(n) && n > 0 ? Math.min(n, promLimits.listValuesMax) : promLimits.listValuesMax;
}

/** Merges the nodes' parts of a list: de-duplicated, sorted, cut at `limit` (Prometheus lists), warnings kept. */
export function mergeLists(route: ListRoute, parts: readonly ListAnswer[], limit: number, warnings: string[]): { answer: object; truncated: boolean } {
  const all = [...new Set([...parts.flatMap((p) => p.warnings ?? []), ...warnings])];
  const withWarnings = (o: object, w: string[]) => (w.length > 0 ? { ...o, warnings: w } : o);
  if (route === 'metrics') {
    const by = new Map<string, MetricEntry>();
    for (const m of parts.flatMap((p) => p.metrics ?? [])) {
      const had = by.get(m.name);
      by.set(m.name, had === undefined ? { ...m } : { ...had, firstSeenMs: Math.min(had.firstSeenMs, m.firstSeenMs), lastSeenMs: Math.max(had.lastSeenMs, m.lastSeenMs) });
    }
    return { answer: withWarnings({ metrics: [...by.values()].sort((a, b) => (a.name < b.name ? -1 : 1)) }, all), truncated: false };
  }
  const cut = <T>(items: T[]): T[] => {
    if (items.length <= limit) return items;
    all.push(`results truncated due to limit (${limit}) after merging the nodes' lists; narrow match[]`);
    return items.slice(0, limit);
  };
  let data: unknown;
  if (route === 'label_values') data = cut([...new Set(parts.flatMap((p) => (Array.isArray(p.data) ? (p.data as string[]) : [])))].sort());
  else if (route === 'series') data = cut([...new Set(parts.flatMap((p) => (Array.isArray(p.data) ? (p.data as { __name__: string }[]).map((s) => s.__name__) : [])))].sort()).map((n) => ({ __name__: n }));
  else {
    const by: Record<string, unknown> = {};
    for (const p of parts) if (typeof p.data === 'object' && p.data !== null) Object.assign(by, p.data);
    data = Object.fromEntries(cut(Object.keys(by).sort()).map((k) => [k, by[k]]));
  }
  const truncated = all.some((w) => w.includes('after merging'));
  return { answer: withWarnings({ status: 'success', data }, all), truncated };
}
