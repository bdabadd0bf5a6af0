// Query routing and stored queries in a core cluster (issue 13), over real processes where it
// matters: one real nats-server, two in-process core nodes each served on a loopback port, and
// a fake ClusterView per node that the test controls (which node owns and serves which shard).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { KindCode } from '../../schema/codec.js';
import type { ClusterSettings } from '../../schema/log.js';
import { rackSecondBody } from '../../schema/section.js';
import { buildColumns } from '../../schema/testdata.js';
import { NatsCluster } from '../../tools/nats-servers.js';
import { ApiAuth, hashToken, parseTokens, TokenSet } from '../auth.js';
import { openNode, type CoreNode } from '../node.js';
import { forwardedHeader, shardOfMetric, staleSinceHeader } from './routes.js';
import type { ClusterView, NodeState, PlacementDoc } from './view.js';

const S = 4;
const now = Math.floor(Date.now() / 1000);
const t0 = now - 600 - (now % 60);

/** The cluster as the test decides it: owners per shard (in order) and the nodes that are ready. */
class FakeCluster {
  owners: string[][] = Array.from({ length: S }, () => []);
  readonly ready = new Set<string>();
  /** Nodes whose own consumer fell behind while their record still says ready (KV lags the node). */
  readonly behind = new Set<string>();
  /** Nodes whose heartbeats fail past the dead-after time, and since when. */
  readonly cutOff = new Map<string, number>();
  readonly states = new Map<string, NodeState>();
  private readonly listeners: (() => void)[] = [];
  readonly settings: ClusterSettings = { format: 1, shards: S, ownerReplicas: 1, streamReplicas: 1, streamMaxAgeSeconds: 86_400, duplicateWindowSeconds: 600 };

  view(nodeId: string, nc: NatsConnection): ClusterView {
    this.states.set(nodeId, { id: nodeId, url: '', workers: 1, startedMs: Date.now(), ready: [], lag: {}, applied: {}, copyFailing: [], live: true, heartbeatMs: Date.now(), silentMs: 0 });
    const cluster = this;
    return {
      nodeId,
      settings: this.settings,
      nc,
      nodes: () => [...this.states.values()],
      placement: (): PlacementDoc => ({ shards: this.owners.map((o) => ({ owners: o, joining: [] })) }),
      placementRevision: () => 1,
      readyOwners: (shard) => (cluster.owners[shard] ?? []).filter((id) => cluster.ready.has(id)).map((id) => cluster.states.get(id)!),
      servesLocally: (shard) => cluster.ready.has(nodeId) && !cluster.behind.has(nodeId) && (cluster.owners[shard] ?? []).includes(nodeId),
      onChange: (f) => void this.listeners.push(f),
      cutOffSinceMs: () => cluster.cutOff.get(nodeId) ?? null,
    };
  }

  change(): void {
    for (const f of this.listeners) f();
  }
}

/** Polls `f` until it returns a value other than undefined (bounded). */
async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('core cluster: query routing and stored queries', () => {
  const dir = mkdtempSync(join(tmpdir(), 'apm-cluster-routes-'));
  const cluster = new FakeCluster();
  const tokens = { read: 'read-token-0123456789', write: 'write-token-0123456789', bOnly: 'b-only-admin-0123456789', ingest: 'ingest-token-0123456789' };
  const line = (t: string, role: string, name: string) => `${hashToken(t)} ${role} ${name}`;
  let nats: NatsCluster;
  const ncs: NatsConnection[] = [];
  const nodes: Record<'A' | 'B', { node: CoreNode; server: ServerType; url: string }> = {} as never;
  // mA lives in a shard only A owns, mB in one only B owns (the other shards: B).
  const names = Array.from({ length: 64 }, (_, i) => `svc.m${i}`);
  const mA = names[0]!;
  const mB = names.find((n) => shardOfMetric(n, S) !== shardOfMetric(mA, S))!;
  let seq = 1;
  let ticker: NodeJS.Timeout | null = null;

  const auth = (token: string) => ({ authorization: `Bearer ${token}` });
  const get = (n: 'A' | 'B', path: string, token = tokens.read, extra: Record<string, string> = {}, signal?: AbortSignal) => fetch(`${nodes[n].url}${path}`, { headers: { ...auth(token), ...extra }, signal });
  const ingest = (n: 'A' | 'B', metric: string, second: number, value: number) =>
    fetch(`${nodes[n].url}/api/v1/ingest`, {
      method: 'POST',
      headers: auth(tokens.ingest),
      body: rackSecondBody({
        rack: 'r1',
        session: 5,
        seq: seq++,
        second,
        late: false,
        shards: S,
        servers: [0, 1].map((s) => ({ server: `web-${s}`, blocks: [buildColumns([{ name: metric, kind: KindCode.Gauge, value: value + s }], [])] })),
        rollup: buildColumns([], [], [metric]),
      }),
    });
  /** Makes node `id` at `url` the first ready owner of mA's shard, before A; the function returned undoes it. */
  const ownerBeforeA = (id: string, url: string): (() => void) => {
    cluster.states.set(id, { ...cluster.states.get('A')!, id, url });
    cluster.ready.add(id);
    cluster.owners[shardOfMetric(mA, S)] = [id, 'A'];
    return () => {
      cluster.ready.delete(id);
      cluster.states.delete(id);
      cluster.owners[shardOfMetric(mA, S)] = ['A'];
    };
  };

  const metric = async (n: 'A' | 'B', name: string, label = ''): Promise<number> => {
    const text = await (await get(n, '/metrics')).text();
    const m = new RegExp(`^${name}${label === '' ? '' : `\\{${label}\\}`} (\\d+)$`, 'm').exec(text);
    return m === null ? 0 : Number(m[1]);
  };

  beforeAll(async () => {
    nats = await NatsCluster.start({ dir: join(dir, 'nats'), n: 1 });
    for (let s = 0; s < S; s++) cluster.owners[s] = [s === shardOfMetric(mA, S) ? 'A' : 'B'];
    const common = [line(tokens.read, 'read', 'reader'), line(tokens.write, 'write', 'writer'), line(tokens.ingest, 'ingest', 'rack racks=*')];
    for (const id of ['A', 'B'] as const) {
      const nc = await connect({ servers: nats.url(0), user: nats.users.core.user, pass: nats.users.core.pass });
      ncs.push(nc);
      const view = cluster.view(id, nc);
      cluster.ready.add(id);
      const file = [...common, ...(id === 'B' ? [line(tokens.bOnly, 'admin', 'b-admin')] : [])].join('\n');
      const node = await openNode({ dataDir: join(dir, id), workers: 1, shards: S, queryLatenessMs: 0, flushGraceMs: 0, auth: new ApiAuth({ tokens: new TokenSet(parseTokens(file, `tokens-${id}`)) }), cluster: view });
      const port = await new Promise<number>((resolve) => {
        nodes[id] = { node, server: serve({ fetch: node.app.fetch, hostname: '127.0.0.1', port: 0 }, (info) => resolve(info.port)), url: '' };
      });
      nodes[id].url = `http://127.0.0.1:${port}`;
      cluster.states.get(id)!.url = nodes[id].url;
    }
    // Each node stores only its own metric: 10 s of two servers.
    for (let t = t0; t < t0 + 10; t++) {
      expect((await ingest('A', mA, t, t - t0)).status).toBe(204);
      expect((await ingest('B', mB, t, 100 + t - t0)).status).toBe(204);
    }
  }, 30_000);

  afterAll(async () => {
    if (ticker !== null) clearInterval(ticker);
    for (const n of Object.values(nodes)) {
      n.server.close();
      await n.node.close();
    }
    for (const nc of ncs) await nc.close();
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('answers an ad-hoc query, a Prometheus range query and an export through the node that does not own the metric', async () => {
    const q = encodeURIComponent(`FROM web-* SELECT ${mA} WINDOW 5s COMPUTE avg, max, count`);
    const range = `&from=${t0 * 1000}&to=${(t0 + 10) * 1000}`;
    const owner = await get('A', `/api/v1/query?q=${q}${range}`);
    const other = await get('B', `/api/v1/query?q=${q}${range}`);
    expect(owner.status).toBe(200);
    expect(other.status).toBe(200);
    const want = (await owner.json()) as { windows: unknown[] };
    expect(want.windows).toHaveLength(2);
    expect(await other.json()).toEqual(want);
    // Prometheus' range query, a form POST (Grafana's default): the body travels too.
    const form = `query=${q}&start=${t0}&end=${t0 + 10}&step=5`;
    const post = (n: 'A' | 'B') => fetch(`${nodes[n].url}/api/v1/query_range`, { method: 'POST', headers: { ...auth(tokens.read), 'content-type': 'application/x-www-form-urlencoded' }, body: form });
    const promA = await (await post('A')).json();
    expect((promA as { data: { result: unknown[] } }).data.result.length).toBeGreaterThan(0);
    expect(await (await post('B')).json()).toEqual(promA);
    const exp = async (n: 'A' | 'B') => (await get(n, `/api/v1/export?metric=${mA}${range}`)).text();
    const lines = await exp('A');
    expect(lines.split('\n').filter((l) => l !== '')).toHaveLength(2);
    expect(await exp('B')).toBe(lines);
    expect(await metric('B', 'apm_core_cluster_proxied_total', 'result="ok"')).toBeGreaterThanOrEqual(3);
  });

  it("forwards the caller's own token: never a stronger one", async () => {
    const q = encodeURIComponent(`FROM * SELECT ${mA} WINDOW 5s COMPUTE avg`);
    // An admin token B knows but A does not: B lets it pass, A (the owner) refuses it.
    const r = await get('B', `/api/v1/query?q=${q}&from=${t0 * 1000}&to=${(t0 + 10) * 1000}`, tokens.bOnly);
    expect(r.status).toBe(401);
    expect(((await r.json()) as { error: string }).error).toMatch(/unknown token/);
    // A read token cannot create a stored query through either node.
    for (const n of ['A', 'B'] as const) {
      const c = await fetch(`${nodes[n].url}/api/v1/queries`, { method: 'POST', headers: { ...auth(tokens.read), 'content-type': 'application/json' }, body: JSON.stringify({ query: `FROM * SELECT ${mB} WINDOW 1s COMPUTE max` }) });
      expect(c.status).toBe(403);
    }
    expect(((await (await get('A', '/api/v1/queries')).json()) as { queries: unknown[] }).queries).toEqual([]);
  });

  it('never proxies a proxied request again, and answers 503 when no owner is ready', async () => {
    const q = encodeURIComponent(`FROM * SELECT ${mA} WINDOW 5s COMPUTE avg`);
    const loops = await metric('B', 'apm_core_cluster_proxied_total', 'result="loop"');
    const r = await get('B', `/api/v1/query?q=${q}`, tokens.read, { [forwardedHeader]: 'A' });
    expect(r.status).toBe(503);
    expect(((await r.json()) as { reason: string }).reason).toBe('shard_unavailable');
    expect(await metric('B', 'apm_core_cluster_proxied_total', 'result="loop"')).toBe(loops + 1);
    cluster.ready.delete('A');
    try {
      for (const n of ['A', 'B'] as const) {
        const u = await get(n, `/api/v1/query?q=${q}`);
        expect(u.status).toBe(503);
        expect(await u.json()).toMatchObject({ reason: 'shard_unavailable' });
      }
      expect(await metric('B', 'apm_core_cluster_proxied_total', 'result="unavailable"')).toBeGreaterThanOrEqual(1);
      // Lists still answer, saying what is missing.
      const l = (await (await get('B', '/api/v1/metrics')).json()) as { metrics: { name: string }[]; warnings: string[] };
      expect(l.metrics.map((m) => m.name)).toEqual([mB]);
      expect(l.warnings[0]).toMatch(/no ready owner/);
    } finally {
      cluster.ready.add('A');
    }
  });

  it('never proxies to itself: a node behind on its own shard while its record still says ready answers 503 unavailable, or asks the other owner', async () => {
    const q = encodeURIComponent(`FROM * SELECT ${mA} WINDOW 5s COMPUTE avg`);
    const loops = await metric('A', 'apm_core_cluster_proxied_total', 'result="loop"');
    cluster.behind.add('A');
    try {
      const r = await get('A', `/api/v1/query?q=${q}`);
      expect(r.status).toBe(503);
      const body = (await r.json()) as { reason: string; error: string };
      expect(body.reason).toBe('shard_unavailable');
      expect(body.error).toMatch(/no ready owner/);
      expect(await metric('A', 'apm_core_cluster_proxied_total', 'result="loop"')).toBe(loops);
      // With B a ready owner too, A asks B (which answers from its own copy: nothing of mA there, so no windows).
      cluster.owners[shardOfMetric(mA, S)] = ['A', 'B'];
      const viaB = await get('A', `/api/v1/query?q=${q}`);
      expect(viaB.status).toBe(200);
      expect(await metric('A', 'apm_core_cluster_proxied_total', 'result="loop"')).toBe(loops);
      // A list from A names B's part for that shard instead of skipping it.
      const l = (await (await get('A', '/api/v1/metrics')).json()) as { metrics: { name: string }[]; warnings: string[] };
      expect(l.warnings ?? []).toEqual([]);
      expect(l.metrics.map((m) => m.name)).toEqual([mB]);
    } finally {
      cluster.behind.delete('A');
      cluster.owners[shardOfMetric(mA, S)] = ['A'];
    }
  });

  it('a node cut off from NATS asks another owner of its shard, and answers itself only marked stale (before: it answered from what it held, unmarked, while the other owner went on)', async () => {
    const q = encodeURIComponent(`FROM web-* SELECT ${mA} WINDOW 5s COMPUTE max`);
    const range = `&from=${t0 * 1000}&to=${(t0 + 10) * 1000}`;
    const fresh = (await (await get('A', `/api/v1/query?q=${q}${range}`)).json()) as { windows: unknown[] };
    expect(fresh.windows).toHaveLength(2);
    const since = Date.now() - 30_000;
    cluster.owners[shardOfMetric(mA, S)] = ['A', 'B'];
    cluster.cutOff.set('A', since);
    const urlB = cluster.states.get('B')!.url;
    try {
      // B, the other owner, answers (from its own copy: it holds nothing of mA, so no windows).
      const viaB = await get('A', `/api/v1/query?q=${q}${range}`);
      expect(viaB.status).toBe(200);
      expect(viaB.headers.get(staleSinceHeader)).toBeNull();
      expect(((await viaB.json()) as { windows: unknown[] }).windows).toEqual([]);
      expect(await metric('A', 'apm_core_cluster_cut_off_answers_total', 'result="proxied"')).toBe(1);
      // An owner that answers 500: answered here, stale, rather than passing its failure on.
      const failing = createServer((_q, res) => void res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"boom"}'));
      const port = await new Promise<number>((resolve) => failing.listen(0, '127.0.0.1', () => resolve((failing.address() as AddressInfo).port)));
      cluster.states.get('B')!.url = `http://127.0.0.1:${port}`;
      try {
        const viaFailing = await get('A', `/api/v1/query?q=${encodeURIComponent(`FROM web-* SELECT ${mA} WINDOW 5s COMPUTE min`)}${range}`);
        expect(viaFailing.status).toBe(200);
        expect(viaFailing.headers.get(staleSinceHeader)).toBe(new Date(since).toISOString());
      } finally {
        failing.close();
      }
      // B unreachable (it resets every connection): A answers from what it holds, saying since when it may miss data.
      let hits = 0;
      const resetter = createNetServer((sock) => {
        hits++;
        sock.destroy();
      });
      const resetPort = await new Promise<number>((resolve) => resetter.listen(0, '127.0.0.1', () => resolve((resetter.address() as AddressInfo).port)));
      cluster.states.get('B')!.url = `http://127.0.0.1:${resetPort}`;
      try {
        const stale = await get('A', `/api/v1/query?q=${q}${range}`);
        expect(stale.status).toBe(200);
        expect(stale.headers.get(staleSinceHeader)).toBe(new Date(since).toISOString());
        expect(await stale.json()).toEqual(fresh);
        expect(await metric('A', 'apm_core_cluster_cut_off_answers_total', 'result="stale"')).toBe(2);
        expect(hits).toBeGreaterThanOrEqual(1);
        // B is now known unreachable: skipped, not asked again on every request (a connect timeout each, when blackholed).
        const before = hits;
        const again = await get('A', `/api/v1/query?q=${q}${range}`);
        expect(again.headers.get(staleSinceHeader)).toBe(new Date(since).toISOString());
        expect(hits).toBe(before);
      } finally {
        resetter.close();
      }
      // Through B, which proxies to A: the mark comes along.
      cluster.owners[shardOfMetric(mA, S)] = ['A'];
      const throughB = await get('B', `/api/v1/query?q=${q}${range}`);
      expect(throughB.headers.get(staleSinceHeader)).toBe(new Date(since).toISOString());
      // A list from A says the same.
      expect((await get('A', '/api/v1/metrics')).headers.get(staleSinceHeader)).toBe(new Date(since).toISOString());
      // So does a list from B, which asks A for its shard's part (before: B's list came unmarked).
      const listB = await get('B', '/api/v1/metrics');
      expect(listB.headers.get(staleSinceHeader)).toBe(new Date(since).toISOString());
      const listed = (await listB.json()) as { metrics: { name: string }[]; warnings: string[] };
      expect(listed.metrics.map((m) => m.name)).toEqual([mA, mB].sort());
      expect(listed.warnings.join(' ')).toMatch(/node A is cut off from the log since/);
    } finally {
      cluster.cutOff.delete('A');
      cluster.states.get('B')!.url = urlB;
      cluster.owners[shardOfMetric(mA, S)] = ['A'];
    }
    expect((await get('A', `/api/v1/query?q=${q}${range}`)).headers.get(staleSinceHeader)).toBeNull();
  });

  it('asks the next owner beside one that has not begun to answer within a second, and asks a hung owner last after that (before: every request for its shards waited 10 s, then failed)', async () => {
    const q = encodeURIComponent(`FROM web-* SELECT ${mA} WINDOW 5s COMPUTE max`);
    const range = `&from=${t0 * 1000}&to=${(t0 + 10) * 1000}`;
    const want = await (await get('A', `/api/v1/query?q=${q}${range}`)).json();
    // H takes connections and never answers: a stopped process, or one whose disk hangs.
    const held: import('node:net').Socket[] = [];
    const asked: string[] = [];
    let closed = 0;
    const hung = createNetServer((sock) => {
      held.push(sock);
      sock.on('close', () => closed++).on('error', () => {});
      sock.on('data', (d) => asked.push(...d.toString('latin1').split('\r\n').filter((l) => /^[A-Z]+ \//.test(l)).map((l) => l.split(/[? ]/).slice(0, 2).join(' '))));
    });
    const port = await new Promise<number>((resolve) => hung.listen(0, '127.0.0.1', () => resolve((hung.address() as AddressInfo).port)));
    const undo = ownerBeforeA('H', `http://127.0.0.1:${port}`);
    const hedged = await metric('B', 'apm_core_cluster_proxied_total', 'result="hedged"');
    const rerouted = await metric('B', 'apm_core_cluster_proxied_total', 'result="rerouted"');
    try {
      const started = Date.now();
      const r = await get('B', `/api/v1/query?q=${q}${range}`, tokens.read, {}, AbortSignal.timeout(8_000));
      expect(r.status).toBe(200);
      expect(await r.json()).toEqual(want);
      expect(Date.now() - started).toBeLessThan(8_000);
      // The request, and the /healthz probe that found H silent too.
      expect(asked).toEqual(['GET /api/v1/query', 'GET /healthz']);
      expect(await metric('B', 'apm_core_cluster_proxied_total', 'result="hedged"')).toBe(hedged + 1);
      // A hedge is not a reroute (no owner failed or refused).
      expect(await metric('B', 'apm_core_cluster_proxied_total', 'result="rerouted"')).toBe(rerouted);
      // H is now asked last: the next request goes to A at once, and H sees no new connection.
      const again = await get('B', `/api/v1/query?q=${q}${range}`, tokens.read, {}, AbortSignal.timeout(8_000));
      expect(await again.json()).toEqual(want);
      expect(await metric('B', 'apm_core_cluster_proxied_total', 'result="hedged"')).toBe(hedged + 1);
      // The request left at H was aborted, its connection closed.
      await until('the hedged-away request to be aborted', async () => (closed === held.length ? true : undefined), 5_000);
    } finally {
      for (const x of held) x.destroy();
      hung.close();
      undo();
    }
  });

  it('leaves an owner that is slow but alive (its /healthz answers) to finish, without asking another owner to do the same work again (before: every request slower than 1 s was asked of two owners)', async () => {
    const q = encodeURIComponent(`FROM web-* SELECT ${mA} WINDOW 5s COMPUTE max`);
    const range = `&from=${t0 * 1000}&to=${(t0 + 10) * 1000}`;
    // L answers /healthz at once and a query after 2.5 s, with an answer of its own (A's would differ).
    const fromL = { windows: [], from: 'L' };
    const queries: string[] = [];
    const slow = createServer((req, res) => {
      if (req.url === '/healthz') return void res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      queries.push(req.url ?? '');
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(fromL)), 2_500);
    });
    const port = await new Promise<number>((resolve) => slow.listen(0, '127.0.0.1', () => resolve((slow.address() as AddressInfo).port)));
    const undo = ownerBeforeA('L', `http://127.0.0.1:${port}`);
    const hedged = await metric('B', 'apm_core_cluster_proxied_total', 'result="hedged"');
    const probes = await metric('B', 'apm_core_cluster_proxy_probes_total');
    try {
      const r = await get('B', `/api/v1/query?q=${q}${range}`, tokens.read, {}, AbortSignal.timeout(8_000));
      expect(r.status).toBe(200);
      expect(await r.json()).toEqual(fromL);
      expect(queries.length).toBe(1);
      expect(await metric('B', 'apm_core_cluster_proxied_total', 'result="hedged"')).toBe(hedged);
      // Asked at 1 s and at 2 s of silence.
      expect(await metric('B', 'apm_core_cluster_proxy_probes_total')).toBe(probes + 2);
    } finally {
      slow.close();
      undo();
    }
  });

  it('regression: an owner whose URL cannot be parsed is a failure like any other (before: an exception past the proxy, its slot never given back), and a refusal passed on keeps its body', async () => {
    const q = encodeURIComponent(`FROM web-* SELECT ${mA} WINDOW 5s COMPUTE max`);
    const range = `&from=${t0 * 1000}&to=${(t0 + 10) * 1000}`;
    const want = await (await get('A', `/api/v1/query?q=${q}${range}`)).json();
    const undo = ownerBeforeA('X', 'http://10.0.0.5:99999');
    try {
      const r = await get('B', `/api/v1/query?q=${q}${range}`);
      expect(r.status).toBe(200);
      expect(await r.json()).toEqual(want);
    } finally {
      undo();
    }
    // A, mA's only owner, behind on it while its record says ready: it refuses B's proxied request (503, shard unavailable), and B passes that on whole.
    cluster.behind.add('A');
    try {
      const r = await get('B', `/api/v1/query?q=${q}${range}`);
      expect(r.status).toBe(503);
      expect(await r.json()).toMatchObject({ reason: 'shard_unavailable' });
    } finally {
      cluster.behind.delete('A');
    }
  });

  it('regression: a proxied export naming metrics of shards no node serves together is refused 503 (retryable), not 400 spans_nodes', async () => {
    const r = await get('B', `/api/v1/export?metric=${mA}&metric=${mB}`, tokens.read, { [forwardedHeader]: 'A' });
    expect(r.status).toBe(503);
    expect(await r.json()).toMatchObject({ reason: 'shard_unavailable' });
    // Asked directly, the same export is the client's to split, in either order (before: 503 "no
    // ready owner" for mA's shard when mB came first, though A, asked, serves it).
    for (const path of [`/api/v1/export?metric=${mA}&metric=${mB}`, `/api/v1/export?metric=${mB}&metric=${mA}`]) {
      for (const n of ['A', 'B'] as const) expect([n, path, (await get(n, path)).status]).toEqual([n, path, 400]);
    }
  });

  it("an export naming metrics of two shards goes to a node that serves both (before: 400 spans_nodes from a node serving one of them, or a fail-over by the last metric's owners only)", async () => {
    // mC shares mB's shard; only A holds it. B and A both own that shard for this test.
    const mC = names.find((n) => n !== mB && shardOfMetric(n, S) === shardOfMetric(mB, S))!;
    for (let t = t0; t < t0 + 10; t++) expect((await ingest('A', mC, t, 200 + t - t0)).status).toBe(204);
    cluster.owners[shardOfMetric(mB, S)] = ['B', 'A'];
    try {
      const range = `&from=${t0 * 1000}&to=${(t0 + 10) * 1000}`;
      const path = `/api/v1/export?metric=${mA}&metric=${mC}${range}`;
      const fromA = await get('A', path);
      expect(fromA.status).toBe(200);
      const lines = (await fromA.text()).split('\n').filter((l) => l !== '');
      expect(lines).toHaveLength(4);
      // B serves mC's shard but not mA's: A serves both, so B asks A.
      const fromB = await get('B', path);
      expect(fromB.status).toBe(200);
      expect((await fromB.text()).split('\n').filter((l) => l !== '')).toEqual(lines);
    } finally {
      cluster.owners[shardOfMetric(mB, S)] = ['B'];
    }
  });

  it('lists the metrics of every node from either node', async () => {
    for (const n of ['A', 'B'] as const) {
      const l = (await (await get(n, '/api/v1/metrics')).json()) as { metrics: { name: string }[]; warnings?: string[] };
      expect(l.metrics.map((m) => m.name)).toEqual([mA, mB].sort());
      expect(l.warnings).toBeUndefined();
      const v = (await (await get(n, '/api/v1/label/__name__/values')).json()) as { data: string[] };
      expect(v.data).toEqual([mA, mB].sort());
      const s = (await (await get(n, `/api/v1/series?match[]=${encodeURIComponent('{__name__=~"svc.*"}')}`)).json()) as { data: { __name__: string }[] };
      expect(s.data.map((x) => x.__name__)).toEqual([mA, mB].sort());
      const md = (await (await get(n, '/api/v1/metadata')).json()) as { data: Record<string, unknown> };
      expect(Object.keys(md.data)).toEqual([mA, mB].sort());
    }
  });

  it("regression: a list says which shards are missing when a node's part leaves out shards it was asked for (its consumer behind while its record says ready; before: left out silently)", async () => {
    const before = await metric('A', 'apm_core_cluster_fanout_shards_missing_total');
    cluster.behind.add('B');
    try {
      const l = (await (await get('A', '/api/v1/metrics')).json()) as { metrics: { name: string }[]; warnings?: string[] };
      expect(l.metrics.map((m) => m.name)).toEqual([mA]);
      expect(l.warnings?.join(' ')).toMatch(new RegExp(`${S - 1} of ${S} shards have no ready owner that answered for them .*\\b${shardOfMetric(mB, S)}\\b`));
      expect(await metric('A', 'apm_core_cluster_fanout_shards_missing_total')).toBe(before + S - 1);
    } finally {
      cluster.behind.delete('B');
    }
  });

  it('keeps stored queries in KV: listed everywhere, evaluated by the first ready owner only, streamed live on every node', async () => {
    const c = await fetch(`${nodes.A.url}/api/v1/queries`, { method: 'POST', headers: { ...auth(tokens.write), 'content-type': 'application/json' }, body: JSON.stringify({ name: 'b max', query: `FROM * SELECT ${mB} WINDOW 1s COMPUTE max` }) });
    expect(c.status).toBe(201);
    const { id } = (await c.json()) as { id: string };
    await until('the query listed on B', async () => (((await (await get('B', '/api/v1/queries')).json()) as { queries: { id: string }[] }).queries.some((q) => q.id === id) ? true : undefined));
    // B owns mB's shard: data keeps arriving there, each second as it happens.
    ticker = setInterval(() => void ingest('B', mB, Math.floor(Date.now() / 1000), 7).catch(() => undefined), 250);
    const sse = await fetch(`${nodes.A.url}/api/v1/queries/${id}/live?access_token=${tokens.read}`);
    expect(sse.status).toBe(200);
    const reader = sse.body!.getReader();
    let text = '';
    await until('a live window on A (evaluated on B)', async () => {
      const { value } = await reader.read();
      text += new TextDecoder().decode(value);
      return text.includes('event: window') ? true : undefined;
    }, 20_000);
    await reader.cancel();
    expect(text).toMatch(/"max":8/);
    expect(await metric('A', 'apm_core_query_windows_evaluated_total')).toBe(0);
    expect(await metric('B', 'apm_core_query_windows_evaluated_total')).toBeGreaterThan(0);
    expect(await metric('A', 'apm_core_cluster_query_windows_total', 'result="received"')).toBeGreaterThan(0);
    // Results history comes from the evaluating node, through either node.
    const res = await get('A', `/api/v1/queries/${id}/results?from=-5m`);
    expect(res.status).toBe(200);
    // A malformed escape is no query's id: 404 (before: decodeURIComponent threw, a 500).
    expect((await get('A', '/api/v1/queries/%ZZ/results?from=-5m')).status).toBe(404);
    const before = ((await res.json()) as { windows: { startMs: number; values: Record<string, number> }[] }).windows;
    expect(before.length).toBeGreaterThan(0);
    // A keeps what it receives (in its own store): every window B evaluated so far.
    await until('A keeps the windows it received', async () => ((await metric('A', 'apm_core_cluster_query_windows_kept_total', 'result="kept"')) >= before.length ? true : undefined));
    // Ownership moves: A becomes the shard's first ready owner and takes the query over.
    cluster.owners[shardOfMetric(mB, S)] = ['A', 'B'];
    cluster.change();
    await until('A evaluates the query, B no longer', async () => ((await metric('A', 'apm_core_cluster_queries_evaluated')) === 1 && (await metric('B', 'apm_core_cluster_queries_evaluated')) === 0 ? true : undefined));
    // Regression: A's store holds the history from before it took over — what its results API
    // reads beyond the newest windows kept in memory, and after a restart (before: only windows
    // since the takeover, from a cursor started at the window before now) — and it goes on from there.
    const kept = (await nodes.A.node.pool.results({ id, metric: mB }, { fromMs: 0, toMs: Date.now() + 60_000, limit: 10_000 })).map((j) => JSON.parse(j) as { startMs: number; values: Record<string, number> });
    const byStart = new Map(kept.map((w) => [w.startMs, w.values]));
    for (const w of before) expect(byStart.get(w.startMs), `window ${w.startMs}`).toEqual(w.values);
    const api = ((await (await get('A', `/api/v1/queries/${id}/results?from=-5m`)).json()) as { windows: { startMs: number }[] }).windows;
    expect(api[0]!.startMs).toBe(before[0]!.startMs);
    // Deleted through B: gone on A.
    expect((await fetch(`${nodes.B.url}/api/v1/queries/${id}`, { method: 'DELETE', headers: auth(tokens.write) })).status).toBe(204);
    await until('the query gone on A', async () => ((await get('A', `/api/v1/queries/${id}`)).status === 404 ? true : undefined));
  }, 40_000);
});
