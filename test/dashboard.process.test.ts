// The dashboard in a real browser (issue 6): Debian's Chromium driven by playwright-core against
// a real core fed by a real rack and simulator. Creates a stored query through the UI, sees its
// chart receive live windows whose values equal the API's, sees a parse error marked at its
// position, keeps receiving windows after the core restarts, and saves a screenshot to artifacts/.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page, type Route } from 'playwright-core';
import { KindCode } from '../schema/codec.js';
import { rackSecondBody } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import type { WindowResult as Window } from '../core/query/eval.js';
import { spawnApm, until, type Daemon } from './proc.js';

const chromiumPath = '/usr/bin/chromium';
const artifacts = fileURLToPath(new URL('../artifacts/', import.meta.url));


const cleanup: (() => Promise<unknown> | void)[] = [];
afterAll(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function startCore(data: string, listen = '127.0.0.1:0'): Promise<{ core: Daemon; url: string }> {
  const core = spawnApm(['core', '--listen', listen, '--data', data, '--query-lateness', '1500ms']);
  const m = await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//, 20_000);
  return { core, url: m[1]! };
}

describe('dashboard in Chromium', () => {
  let browser: Browser;
  let page: Page;
  let url: string;
  let core: Daemon;
  const data = mkdtempSync(join(tmpdir(), 'apm-dash-'));

  beforeAll(async () => {
    ({ core, url } = await startCore(data));
    cleanup.push(() => core.stop('SIGKILL'));
    const rack = spawnApm(['rack', '--rack', 'r1', '--listen', '127.0.0.1:0', '--core', url, '--http', '127.0.0.1:0', '--spool', mkdtempSync(join(tmpdir(), 'apm-dash-spool-')), '--lateness', '1s']);
    cleanup.push(() => rack.stop('SIGKILL'));
    const rackPort = (await rack.waitFor(/UDP on 127\.0\.0\.1:(\d+)/, 20_000))[1]!;
    const sim = spawnApm(['simulate', '--rack', `127.0.0.1:${rackPort}`, '--servers', '6', '--metrics', '20', '--seconds', '150', '--prefix', 'web']);
    cleanup.push(() => sim.stop('SIGKILL'));
    await until(async () => {
      const r = (await (await fetch(`${url}/api/v1/metrics`)).json()) as { metrics: { name: string }[] };
      return r.metrics.some((m) => m.name === 'sim.cpu.0') ? true : undefined;
    }, 30_000, 'the simulated metrics at the core');
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    cleanup.push(() => browser.close());
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const external: string[] = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(url)) external.push(r.url());
    });
    cleanup.push(() => expect(external, 'requests beyond the core').toEqual([]));
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    cleanup.push(() => expect(errors, 'uncaught errors in the page').toEqual([]));
    // Issue 15: every load asked for /favicon.ico and got a 404.
    const notFound: string[] = [];
    page.on('response', (r) => {
      if (r.status() === 404) notFound.push(r.url());
    });
    cleanup.push(() => expect(notFound, 'requests answered 404').toEqual([]));
    await page.goto(url);
  });

  it('links an icon the core serves', async () => {
    const href = (await page.locator('link[rel="icon"]').getAttribute('href'))!;
    const r = await fetch(new URL(href, url));
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('image/svg+xml');
  });

  it('creates a stored query from the pickers and its chart receives live windows equal to the API', async () => {
    await page.getByRole('button', { name: 'New stored query' }).click();
    await page.getByRole('textbox', { name: 'Name', exact: true }).fill('web cpu');
    // The pickers are fed by the registry APIs: a glob of the simulated servers, a metric name.
    await page.locator('#server-picker option[value="web-*"]').waitFor({ state: 'attached' });
    await page.selectOption('#server-picker', 'web-*');
    await page.getByLabel('metric picker').fill('sim.cpu.0');
    await page.getByRole('button', { name: 'Use metric' }).click();
    await expect.poll(() => page.inputValue('#q-text')).toBe('FROM web-* SELECT sim.cpu.0 WINDOW 5s COMPUTE min, max, avg, p99');
    await page.getByRole('button', { name: 'Save' }).click();

    const panel = page.locator('article.panel', { hasText: 'web cpu' });
    await panel.waitFor();
    const id = (await panel.getAttribute('data-id'))!;
    // Two windows pushed over SSE after creation: the chart is live, not loaded once.
    await until(async () => {
      const t = (await panel.locator('.received').textContent()) ?? '';
      return Number(/^(\d+)/.exec(t)?.[1] ?? 0) >= 2 ? true : undefined;
    }, 40_000, 'two live windows in the chart');
    const latest = panel.locator('.latest');
    const startMs = Number(await latest.getAttribute('data-start'));
    const shown: Record<string, number> = {};
    for (const span of await latest.locator('[data-fn]').all()) shown[(await span.getAttribute('data-fn'))!] = Number(await span.getAttribute('data-value'));
    const api = (await (await fetch(`${url}/api/v1/queries/${id}/results?from=${startMs}&to=${startMs + 5000}`)).json()) as { windows: Window[] };
    expect(api.windows).toHaveLength(1);
    expect(shown).toEqual(api.windows[0]!.values);
    expect(Object.keys(shown)).toEqual(['min', 'max', 'avg', 'percentile(99)']);
    expect(api.windows[0]!.servers).toBe(6);
    // uPlot drew one series per function.
    await expect.poll(() => panel.locator('.u-legend .u-series').count()).toBe(5);
  });

  it('marks a window revised by late data, with the revised values', async () => {
    const panel = page.locator('article.panel', { hasText: 'web cpu' });
    const id = (await panel.getAttribute('data-id'))!;
    const startMs = Number(await panel.locator('.latest').getAttribute('data-start'));
    // A batch for a second of that (already evaluated) window, from a server the query selects.
    const { shards } = (await (await fetch(`${url}/api/v1/placement`)).json()) as { shards: number };
    const body = rackSecondBody({ rack: 'late-rack', session: 1, seq: 1, second: startMs / 1000 + 2, late: true, shards, servers: [{ server: 'web-late-1', blocks: [buildColumns([{ name: 'sim.cpu.0', kind: KindCode.Gauge, value: 1e6 }], [])] }], rollup: buildColumns([], [], ['sim.cpu.0']) });
    expect((await fetch(`${url}/api/v1/ingest`, { method: 'POST', body })).status).toBe(204);
    await expect.poll(() => panel.locator('.revised').textContent(), { timeout: 15_000 }).toBe('▲ 1 windows revised by late data');
    const api = (await (await fetch(`${url}/api/v1/queries/${id}/results?from=${startMs}&to=${startMs + 5000}`)).json()) as { windows: Window[] };
    expect(api.windows[0]).toMatchObject({ revision: 1, servers: 7, values: { max: 1e6 } });
  });

  it('marks a parse error at the position the API reports', async () => {
    const bad = 'FROM web-* SELEKT sim.cpu.0 WINDOW 5s COMPUTE max';
    const api = (await (await fetch(`${url}/api/v1/query?q=${encodeURIComponent(bad)}`)).json()) as { error: string; position: number };
    expect(api.position).toBe(11);
    await page.getByRole('button', { name: 'New stored query' }).click();
    await page.getByRole('textbox', { name: 'Name', exact: true }).fill('broken');
    await page.locator('#q-text').fill(bad);
    await page.getByRole('button', { name: 'Save' }).click();
    const box = page.locator('#q-error');
    await expect.poll(() => box.locator('.message').textContent()).toBe(api.error);
    expect(Number(await box.locator('mark').getAttribute('data-position'))).toBe(api.position);
    expect(await box.locator('mark').textContent()).toBe('S');
    const list = (await (await fetch(`${url}/api/v1/queries`)).json()) as { queries: { name: string }[] };
    expect(list.queries.map((q) => q.name)).toEqual(['web cpu']);
    await page.getByRole('button', { name: 'Cancel' }).click();
  });

  it('keeps the chart live across a core restart (the stream reconnects)', async () => {
    const panel = page.locator('article.panel', { hasText: 'web cpu' });
    const port = new URL(url).port;
    expect(await core.stop('SIGTERM')).toBe(0);
    await until(async () => ((await panel.locator('.state').textContent()) === 'reconnecting…' ? true : undefined), 10_000, 'the panel to notice');
    const before = await panel.locator('.latest').getAttribute('data-start');
    ({ core } = await startCore(data, `127.0.0.1:${port}`));
    cleanup.push(() => core.stop('SIGKILL'));
    await until(async () => ((await panel.locator('.state').textContent()) === 'live' ? true : undefined), 30_000, 'the stream to reconnect');
    await until(async () => (Number(await panel.locator('.latest').getAttribute('data-start')) > Number(before) + 5000 ? true : undefined), 40_000, 'newer windows after the restart');
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });
  });

  it('regression: shows a window revised while its live stream was down once it reconnects (before: only windows after the newest it had were read again)', async () => {
    const panel = page.locator('article.panel', { hasText: 'web cpu' });
    const revisedBefore = await panel.locator('.revised').textContent();
    expect(revisedBefore).toBe('▲ 1 windows revised by late data');
    const id = (await panel.getAttribute('data-id'))!;
    // A stored window not revised yet (the previous test revised one).
    const stored = (await (await fetch(`${url}/api/v1/queries/${id}/results?from=${Date.now() - 600_000}&to=${Date.now()}`)).json()) as { windows: Window[] };
    const startMs = stored.windows.find((w) => w.revision === 0)!.startMs;
    // The stream cut (the core restarted) and kept from reconnecting while late data revises a window.
    await page.route('**/api/v1/live**', (r) => r.abort());
    const port = new URL(url).port;
    expect(await core.stop('SIGTERM')).toBe(0);
    ({ core } = await startCore(data, `127.0.0.1:${port}`));
    cleanup.push(() => core.stop('SIGKILL'));
    const { shards } = (await (await fetch(`${url}/api/v1/placement`)).json()) as { shards: number };
    const body = rackSecondBody({ rack: 'late-rack', session: 1, seq: 2, second: startMs / 1000 + 1, late: true, shards, servers: [{ server: 'web-late-1', blocks: [buildColumns([{ name: 'sim.cpu.0', kind: KindCode.Gauge, value: 2e6 }], [])] }], rollup: buildColumns([], [], ['sim.cpu.0']) });
    expect((await fetch(`${url}/api/v1/ingest`, { method: 'POST', body })).status).toBe(204);
    await until(async () => {
      const api = (await (await fetch(`${url}/api/v1/queries/${id}/results?from=${startMs}&to=${startMs + 5000}`)).json()) as { windows: Window[] };
      return api.windows[0]?.values['max'] === 2e6 ? true : undefined;
    }, 20_000, 'the window revised in the store');
    await page.unroute('**/api/v1/live**');
    await until(async () => ((await panel.locator('.state').textContent()) === 'live' ? true : undefined), 30_000, 'the stream to reconnect');
    await expect.poll(() => panel.locator('.revised').textContent(), { timeout: 15_000 }).toBe('▲ 2 windows revised by late data');
  });

  it('stays usable with more stored queries than the browser has connections per host (6)', async () => {
    for (let i = 0; i < 7; i++) {
      const r = await fetch(`${url}/api/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: `extra ${i}`, query: `FROM web-* SELECT sim.cpu.${i + 1} WINDOW 5s COMPUTE max` }) });
      expect(r.status).toBe(201);
    }
    await page.reload();
    await expect.poll(() => page.locator('article.panel').count()).toBe(8);
    // One multiplexed stream feeds every chart: each goes live and receives windows.
    await expect.poll(() => page.locator('article.panel .state.live').count(), { timeout: 15_000 }).toBe(8);
    await expect.poll(() => page.locator('article.panel', { hasText: 'extra 6' }).locator('.received').textContent(), { timeout: 20_000 }).toMatch(/^[1-9]/);
  });

  it('regression: shows stored queries created, edited and deleted elsewhere without a reload (before: the page listed them only at start and after its own saves)', async () => {
    const before = await page.locator('article.panel').count();
    const r = await fetch(`${url}/api/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'made elsewhere', query: 'FROM web-* SELECT sim.cpu.2 WINDOW 5s COMPUTE max' }) });
    expect(r.status).toBe(201);
    const id = ((await r.json()) as { id: string }).id;
    const panel = page.locator(`article.panel[data-id="${id}"]`);
    await expect.poll(() => panel.count(), { timeout: 10_000 }).toBe(1);
    await expect.poll(() => panel.locator('.state').textContent(), { timeout: 15_000 }).toBe('live');
    const edited = 'FROM web-* SELECT sim.cpu.3 WINDOW 10s COMPUTE min';
    expect((await fetch(`${url}/api/v1/queries/${id}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'edited elsewhere', query: edited }) })).status).toBe(200);
    await expect.poll(() => panel.locator('.q').textContent(), { timeout: 10_000 }).toBe(edited);
    expect(await panel.locator('h3').textContent()).toBe('edited elsewhere');
    expect((await fetch(`${url}/api/v1/queries/${id}`, { method: 'DELETE' })).status).toBe(204);
    await expect.poll(() => panel.count(), { timeout: 10_000 }).toBe(0);
    expect(await page.locator('article.panel').count()).toBe(before);
  });

  it('draws values and totals on their own axes (sum beside avg no longer flattens avg), with the range from the URL', async () => {
    const r = await fetch(`${url}/api/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'mixed', query: 'FROM web-* SELECT sim.cpu.0 WINDOW 5s COMPUTE sum, avg, max' }) });
    expect(r.status).toBe(201);
    const id = ((await r.json()) as { id: string }).id;
    // A new hash on the same page is a range change; a reload reads it from the URL.
    await page.goto(`${url}/#last=15m`);
    await expect.poll(() => page.inputValue('#range')).toBe('900000');
    await page.reload();
    expect(await page.inputValue('#range')).toBe('900000');
    const panel = page.locator(`article.panel[data-id="${id}"]`);
    await expect.poll(async () => Number(await panel.getAttribute('data-windows')), { timeout: 20_000 }).toBeGreaterThan(2);
    // x, left (the metric's values), right (totals), each labelled with its functions.
    await expect.poll(() => panel.locator('.u-axis').count()).toBe(3);
    expect(await panel.locator('.u-legend .u-series .u-label').allTextContents()).toEqual(['Time', 'sum (right axis)', 'avg', 'max']);
    const scales = (await page.evaluate(`(() => {
      const p = window.__apm.panels.get(${JSON.stringify(id)});
      const values = (i) => p.plot.data[i].filter((v) => v !== null);
      const axes = p.plot.axes.slice(1).map((a) => ({ scale: a.scale, side: a.side, label: a.label }));
      return { axes, left: p.plot.scales.left, right: p.plot.scales.right, sum: values(1), max: values(3) };
    })()`)) as { axes: object[]; left: { min: number; max: number }; right: { min: number; max: number }; sum: number[]; max: number[] };
    // uPlot draws axis labels on the canvas: read them from the chart (side 3 left, 1 right).
    expect(scales.axes).toEqual([
      { scale: 'left', side: 3, label: 'avg · max' },
      { scale: 'right', side: 1, label: 'sum' },
    ]);
    // The left scale spans the values, not the sums; the right one holds the sums.
    expect(scales.left.max).toBeLessThanOrEqual(2 * Math.max(...scales.max) + 1);
    expect(scales.left.max).toBeGreaterThanOrEqual(Math.max(...scales.max));
    expect(scales.right.max).toBeGreaterThanOrEqual(Math.max(...scales.sum));
    expect(scales.right.min).toBeLessThanOrEqual(Math.min(...scales.sum));
    // Hover: the legend shows the window under the cursor, as the API has it.
    await panel.scrollIntoViewIfNeeded();
    const box = (await panel.locator('.u-over').boundingBox())!;
    await page.mouse.move(box.x + box.width - 40, box.y + box.height / 2);
    await expect.poll(() => panel.locator('.hover').textContent()).toMatch(/servers/);
    const shown = await panel.locator('.u-legend .u-series').nth(3).locator('.u-value').textContent();
    const hovered = (await page.evaluate(`(() => {
      const p = window.__apm.panels.get(${JSON.stringify(id)});
      const r = p.rowAtCursor(p.plot, p.plot.cursor.idx);
      return p.cols.row(r);
    })()`)) as { startMs: number; values: { max: number }; adhoc: boolean };
    // Windows from before the query existed are ad-hoc evaluations of the same text.
    const from = `from=${hovered.startMs}&to=${hovered.startMs + 5000}`;
    const api = (await (await fetch(hovered.adhoc ? `${url}/api/v1/query?q=${encodeURIComponent('FROM web-* SELECT sim.cpu.0 WINDOW 5s COMPUTE sum, avg, max')}&${from}` : `${url}/api/v1/queries/${id}/results?${from}`)).json()) as { windows: Window[] };
    expect(api.windows[0]!.values.max).toBe(hovered.values.max);
    expect(shown).toBe(hovered.values.max.toLocaleString('en-US', { maximumFractionDigits: Math.abs(hovered.values.max) >= 100 ? 1 : 4 }));
    mkdirSync(artifacts, { recursive: true });
    await panel.screenshot({ path: join(artifacts, 'dashboard-axes.png') });
    await page.mouse.move(0, 0);
  });

  it('shows the fleet: servers with their state and the core health', async () => {
    await page.getByRole('button', { name: 'Fleet' }).click();
    // The six simulated servers and the one that sent the late batch.
    await expect.poll(() => page.locator('#servers tbody tr').count(), { timeout: 10_000 }).toBe(7);
    expect(await page.locator('#racks tbody tr[data-rack="late-rack"] td').nth(1).textContent()).toBe('1');
    expect(await page.locator('#servers tbody tr[data-server="web-r1-00001"] td').nth(2).textContent()).toBe('reporting');
    const racks = page.locator('#racks tbody tr[data-rack="r1"] td');
    expect(await racks.nth(1).textContent()).toBe('6');
    // The rack's own report (sent every 5 s) reaches the fleet view: lost 0, spool drained.
    await expect.poll(() => racks.nth(9).textContent(), { timeout: 15_000 }).toMatch(/ago$/);
    expect(await racks.nth(7).textContent()).toBe('0');
    // The spool holds at most the batch in flight to the core (it leaves on the core's 204).
    expect(Number(/\((\d+)\)$/.exec((await racks.nth(8).textContent()) ?? '')?.[1])).toBeLessThanOrEqual(1);
    await expect.poll(async () => Number(((await page.locator('[data-card="ingest points/s"] .v').textContent()) ?? '0').replace(/,/g, '')), { timeout: 15_000 }).toBeGreaterThan(0);
    await page.screenshot({ path: join(artifacts, 'fleet.png'), fullPage: true });
  });

  it('says when the data comes from a cluster node cut off from its log (x-apm-stale-since on the results)', async () => {
    // A single core is never cut off: the header is added to its real answers on their way to the page.
    const since = '2026-12-04T05:00:00.000Z';
    const mark = async (route: Route) => {
      const r = await route.fetch();
      await route.fulfill({ response: r, headers: { ...r.headers(), 'x-apm-stale-since': since } });
    };
    await page.route(/\/results\?/, mark);
    await page.getByRole('button', { name: 'Stored queries' }).click();
    await page.reload();
    const stale = page.locator('#stale');
    await expect.poll(() => stale.isVisible(), { timeout: 15_000 }).toBe(true);
    expect(await stale.textContent()).toMatch(/^data as of .*2026.*: this core lost the cluster's log then/);
    // Regression: an unmarked answer (in a cluster, another panel's metric on a node that is not cut
    // off; here the editor's check of a query as it is typed) keeps the mark. Before, it hid it:
    // the header said the page was current while a panel showed data from a cut-off node, and
    // this test failed once in CI when a panel's ad-hoc fill came after its marked results.
    await page.locator('#new-query').click();
    const unmarked = page.waitForResponse((r) => r.url().includes('/api/v1/query?'), { timeout: 10_000 });
    await page.locator('#q-text').fill('FROM * SELECT cpu WINDOW 5s COMPUTE max');
    expect((await unmarked).headers()['x-apm-stale-since']).toBeUndefined();
    await page.waitForTimeout(200);
    expect(await stale.isVisible()).toBe(true);
    await page.keyboard.press('Escape');
    await page.unroute(/\/results\?/, mark);
    await page.reload();
    await expect.poll(async () => (await page.locator('.panel').count()) > 0 && !(await stale.isVisible()), { timeout: 15_000 }).toBe(true);
  });
});

describe('dashboard with API tokens', () => {
  it('asks for a token, then loads the queries and opens the live stream with it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-dash-auth-'));
    const tokensFile = join(dir, 'tokens');
    const token = async (role: string, name: string) => {
      const t = spawnApm(['token', 'create', '--role', role, '--name', name, '--tokens', tokensFile]);
      expect(await t.exited()).toBe(0);
      return t.output[t.output.length - 1]!;
    };
    const writer = await token('write', 'ops');
    const reader = await token('read', 'viewer');
    const core = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', join(dir, 'core'), '--tokens', tokensFile]);
    cleanup.push(() => core.stop('SIGKILL'));
    const url = (await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//, 20_000))[1]!;
    const created = await fetch(`${url}/api/v1/queries`, { method: 'POST', headers: { authorization: `Bearer ${writer}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'guarded', query: 'FROM * SELECT cpu WINDOW 5s COMPUTE max' }) });
    expect(created.status).toBe(201);
    const browser = await chromium.launch({ executablePath: chromiumPath, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
    cleanup.push(() => browser.close());
    const page = await browser.newPage();
    await page.goto(url);
    // The page and its assets are public; the API answers 401, so the page asks for a token.
    await page.locator('#token-bar').waitFor({ state: 'visible' });
    await page.locator('#token').fill('apm_wrong');
    await page.getByRole('button', { name: 'Use token' }).click();
    await expect.poll(() => page.locator('#token-error').textContent()).toMatch(/token/i);
    await page.locator('#token').fill(reader);
    await page.getByRole('button', { name: 'Use token' }).click();
    const panel = page.locator('article.panel', { hasText: 'guarded' });
    await panel.waitFor();
    // The live stream authenticates with ?access_token= (EventSource cannot send headers).
    await expect.poll(() => panel.locator('.state').textContent(), { timeout: 10_000 }).toBe('live');
    expect(await page.evaluate('localStorage.getItem("apm.token")')).toBe(reader);
  });
});
