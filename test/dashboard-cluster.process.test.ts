// The dashboard's fleet view of a core cluster (issue 13: "The fleet view shows nodes, shards,
// owners, consumer lag per shard"), in Debian's Chromium driven by playwright-core: a NATS server
// and 2 real `apm core --nats` nodes with API tokens (tools/cluster-harness.ts), 8 shards each
// owned by both. The page on one node shows both nodes and every shard with its owners, ready
// marks and per-owner lag as GET /api/v1/cluster has them; a failing cluster answer is an error
// line, not a broken view; a single core's fleet view has no cluster section and never asks.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import type { ClusterStatus } from '../core/cluster/status.js';
import { ClusterHarness } from '../tools/cluster-harness.js';
import { spawnApm, until } from './proc.js';

const chromiumPath = '/usr/bin/chromium';
const artifacts = fileURLToPath(new URL('../artifacts/', import.meta.url));
const S = 8;

const cleanup: (() => Promise<unknown> | void)[] = [];
afterAll(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
}, 30_000);

/** A token of `role` added to `file` by `apm token create` (the plain token is its last line). */
async function createToken(file: string, role: string, name: string): Promise<string> {
  const t = spawnApm(['token', 'create', '--role', role, '--name', name, '--tokens', file]);
  expect(await t.exited()).toBe(0);
  return t.output[t.output.length - 1]!;
}

async function clusterOf(url: string, token: string): Promise<ClusterStatus | null> {
  const r = await fetch(`${url}/api/v1/cluster`, { headers: { authorization: `Bearer ${token}` } }).catch(() => null);
  return r?.ok === true ? ((await r.json()) as ClusterStatus) : null;
}

/** The placement has every shard on both nodes, both live and ready on it (ClusterHarness.settled, with a token). */
function settled(s: ClusterStatus | null): boolean {
  if (s === null || s.placement.shards.length !== S || s.nodes.filter((n) => n.live).length !== 2) return false;
  return s.placement.shards.every((x, k) => x.joining.length === 0 && x.owners.length === 2 && x.owners.every((o) => s.nodes.find((n) => n.id === o)?.ready.includes(k) === true));
}

/** A lag as the page writes it: '–' none reported, '?' not known yet (-1). */
function lagText(v: number | undefined): string {
  return v === undefined ? '–' : v < 0 ? '?' : v.toLocaleString('en-US');
}

/**
 * A 64-shard answer made from a real one: c1 owns and is ready on every shard, c2 too except
 * every 4th shard (3, 7, …), which dead node c3 owns with c1 while c2 joins; c2's lag on shard 0
 * as given.
 */
function wide(real: ClusterStatus, o: { lagOfShard0: number }): ClusterStatus {
  const shards = [...Array(64).keys()];
  const odd = (k: number) => k % 4 === 3;
  const [c1, c2] = ['c1', 'c2'].map((id) => real.nodes.find((n) => n.id === id)!);
  const lag = (ks: number[]) => Object.fromEntries(ks.map((k) => [k, 0]));
  return {
    ...real,
    settings: { ...real.settings, shards: 64 },
    nodes: [
      { ...c1!, ready: shards, lag: lag(shards) },
      { ...c2!, ready: shards.filter((k) => !odd(k)), lag: { ...lag(shards), 0: o.lagOfShard0 } },
      { ...c2!, id: 'c3', url: 'http://127.0.0.1:9', live: false, heartbeatMs: c2!.heartbeatMs - 600_000, silentMs: 600_000, ready: shards.filter(odd), lag: {} },
    ],
    placement: { shards: shards.map((k) => (odd(k) ? { owners: ['c3', 'c1'], joining: ['c2'] } : { owners: ['c1', 'c2'], joining: [] })) },
  };
}

/** Requests the page sent, and what must stay empty: pages errors, requests beyond `origin`, 404s. */
function watch(page: Page, origin: string): { requests: string[] } {
  const requests: string[] = [];
  const external: string[] = [];
  const errors: string[] = [];
  const notFound: string[] = [];
  page.on('request', (r) => {
    requests.push(r.url());
    if (!r.url().startsWith(origin)) external.push(r.url());
  });
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('response', (r) => {
    if (r.status() === 404) notFound.push(r.url());
  });
  cleanup.push(() => {
    expect(external, 'requests beyond the core').toEqual([]);
    expect(errors, 'uncaught errors in the page').toEqual([]);
    expect(notFound, 'requests answered 404').toEqual([]);
  });
  return { requests };
}

describe('fleet view of a core cluster in Chromium', () => {
  let h: ClusterHarness;
  let browser: Browser;
  let reader: string;
  let single: string;
  const dir = mkdtempSync(join(tmpdir(), 'apm-dash-cluster-'));

  beforeAll(async () => {
    // One NATS server is enough for the view (streams R1); the nodes need tokens, and an admin
    // token to copy shards from each other.
    h = await ClusterHarness.start(join(dir, 'cluster'), 1);
    cleanup.push(() => h.stop());
    const tokens = join(dir, 'tokens');
    const admin = await createToken(tokens, 'admin', 'nodes');
    reader = await createToken(tokens, 'read', 'viewer');
    writeFileSync(join(dir, 'admin.token'), `${admin}\n`);
    const flags = ['--workers', '1', '--shards', String(S), '--replace-after', '120s', '--tokens', tokens, '--cluster-token-file', join(dir, 'admin.token')];
    const alone = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', join(dir, 'single'), '--workers', '1', '--shards', String(S)]);
    cleanup.push(() => alone.stop('SIGKILL'));
    const [, , m] = await Promise.all([h.startCore('c1', flags), h.startCore('c2', flags), alone.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//, 20_000)]);
    single = m[1]!;
    const c1 = h.cores.get('c1')!.url;
    await until(async () => (settled(await clusterOf(c1, reader)) ? true : undefined), 40_000, 'every shard on both nodes, ready');
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    cleanup.push(() => browser.close());
  }, 60_000);

  it('shows both nodes and every shard with its owners, ready marks and per-owner lag', async () => {
    const c1 = h.cores.get('c1')!;
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    watch(page, c1.url);
    await page.goto(c1.url);
    // The page asks for a token (401), then sends it with every API call, the cluster's too.
    await page.locator('#token-bar').waitFor({ state: 'visible' });
    await page.locator('#token').fill(reader);
    await page.getByRole('button', { name: 'Use token' }).click();
    await page.getByRole('button', { name: 'Fleet' }).click();
    await page.locator('#cluster').waitFor({ state: 'visible', timeout: 10_000 });
    await expect.poll(() => page.locator('#cluster-shards tbody tr').count(), { timeout: 10_000 }).toBe(S);

    // Nodes: both live, each owning and ready on all 8 shards, the page's own node marked.
    const want = (await clusterOf(c1.url, reader))!;
    for (const n of want.nodes) {
      const cells = page.locator(`#cluster-nodes tbody tr[data-node="${n.id}"] td`);
      expect(await cells.nth(0).textContent()).toBe(n.id === 'c1' ? 'c1 (this page)' : n.id);
      expect(await cells.nth(1).textContent()).toBe('live');
      expect(await cells.nth(2).textContent()).toBe(String(S));
      expect(await cells.nth(3).textContent()).toBe('0');
      expect(await cells.nth(4).textContent()).toBe(String(S));
      expect(await cells.nth(5).textContent()).toMatch(/^\d[\d,]*$/);
      expect(await cells.nth(6).textContent()).toMatch(/^\d+\.\d s$/);
      expect(await cells.nth(7).textContent()).toBe(n.url);
    }
    expect(await page.locator('#cluster-nodes tbody tr').count()).toBe(2);
    expect(await page.locator('#cluster-ready').textContent()).toBe('every shard has 2 ready owners');
    expect(await page.locator('#cluster-summary').textContent()).toMatch(/^seen from c1 · 2 of 2 nodes live · 8 shards, 2 owners each, streams R1 · placement revision \d+$/);

    // Shards: the owners in placement order, each marked ready, and each one's lag from its own heartbeat.
    const shown = await page.locator('#cluster-shards tbody tr').evaluateAll((rows) =>
      rows.map((tr) => ({
        shard: Number(tr.getAttribute('data-shard')),
        owners: [...tr.querySelectorAll('.owner')].map((s) => `${s.getAttribute('data-node')}:${s.getAttribute('data-ready')}:${s.textContent}`),
        lag: [...tr.querySelectorAll('.owner-lag')].map((s) => `${s.getAttribute('data-node')}:${s.textContent}`),
        joining: tr.cells[3]!.textContent,
      })),
    );
    expect(shown.map((r) => r.shard)).toEqual([...Array(S).keys()]);
    // Lag changes with every heartbeat: compared with an answer read after the page's (idle cluster: 0 or the same).
    const after = (await clusterOf(c1.url, reader))!;
    for (const r of shown) {
      const owners = after.placement.shards[r.shard]!.owners;
      expect(owners).toHaveLength(2);
      expect(r.owners).toEqual(owners.map((o) => `${o}:true:${o} ✓`));
      expect(r.lag).toEqual(owners.map((o) => `${o}:${lagText(after.nodes.find((n) => n.id === o)!.lag[r.shard])}`));
      expect(r.joining).toBe('');
    }
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'fleet-cluster.png'), fullPage: true });

    // 64 shards, a dead owner and a joiner (an answer made up from the real one): the shard rows
    // scroll in a bounded box; a refresh rewrites only the rows that changed.
    let answer = wide(after, { lagOfShard0: 0 });
    await page.route('**/api/v1/cluster', (r) => r.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(answer) }));
    const refresh = () => page.locator('#server-filter').dispatchEvent('input'); // the fleet view refreshes at once
    await refresh();
    await expect.poll(() => page.locator('#cluster-shards tbody tr').count(), { timeout: 10_000 }).toBe(64);
    expect((await page.locator('#cluster .scroll').boundingBox())!.height).toBeLessThanOrEqual(360);
    expect(await page.locator('#cluster-ready').textContent()).toBe('16 shards with fewer than 2 ready owners');
    expect(await page.locator('#cluster-nodes tbody tr[data-node="c3"] td').nth(1).textContent()).toBe('dead');
    const row3 = page.locator('#cluster-shards tbody tr[data-shard="3"]');
    expect(await row3.locator('.owner').allTextContents()).toEqual(['c3 ✗', 'c1 ✓']);
    expect(await row3.locator('.owner-lag').allTextContents()).toEqual(['–', '0']);
    expect(await row3.locator('.joiner').allTextContents()).toEqual(['c2']);
    expect(await row3.getAttribute('class')).toBe('short');
    const mark = () => page.locator('#cluster-shards tbody td:first-child').evaluateAll((tds) => tds.forEach((td) => td.setAttribute('data-kept', '')));
    await mark();
    answer = wide(after, { lagOfShard0: 1234 });
    await refresh();
    await expect.poll(() => page.locator('#cluster-shards tbody tr[data-shard="0"] .owner-lag').allTextContents(), { timeout: 10_000 }).toEqual(['0', '1,234']);
    expect(await page.locator('#cluster-shards tbody td[data-kept]').count()).toBe(63);
    await page.unroute('**/api/v1/cluster');

    // A failing answer: an error line in the section, the rest of the view goes on.
    await page.route('**/api/v1/cluster', (r) => r.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ error: 'cluster view not ready' }) }));
    await refresh();
    await expect.poll(() => page.locator('#cluster-error').textContent(), { timeout: 10_000 }).toBe('cluster status: cluster view not ready (the tables show the last answer)');
    expect(await page.locator('#cluster-nodes tbody tr').count()).toBe(3);
    expect(await page.locator('[data-card="metrics"]').count()).toBe(1);
    // The real answer again: the line goes, the table shrinks back to 8 shards.
    await page.unroute('**/api/v1/cluster');
    await refresh();
    await page.locator('#cluster-error').waitFor({ state: 'hidden', timeout: 10_000 });
    await expect.poll(() => page.locator('#cluster-shards tbody tr').count(), { timeout: 10_000 }).toBe(S);
    await page.close();
  });

  it('shows no cluster section for a single core, and does not ask for one', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const { requests } = watch(page, single);
    await page.goto(single);
    await page.getByRole('button', { name: 'Fleet' }).click();
    await page.locator('[data-card="metrics"]').waitFor();
    // Two refreshes (every 5 s): the section stays hidden.
    await expect.poll(() => requests.filter((u) => u.endsWith('/api/v1/status')).length, { timeout: 10_000 }).toBeGreaterThanOrEqual(3);
    expect(await page.locator('#cluster').isHidden()).toBe(true);
    expect(requests.filter((u) => u.includes('/api/v1/cluster'))).toEqual([]);
    await page.close();
  });
});
