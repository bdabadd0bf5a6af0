// Dashboard page figures (issue 15): 12 stored-query panels of 24 h of 1 s windows (86,400 each,
// five functions from count to sum) in Debian's Chromium driven by playwright-core. The page and
// its assets come from core/dashboard.ts' own loader; the API calls the page makes are answered
// with synthetic windows by a small HTTP server on 127.0.0.1 (playwright's request interception
// carries each body through the DevTools protocol, which took longer than the page itself), so
// the figures are the page's, not a core's: time to the first chart painted, to every chart holding its 24 h,
// the longest main-thread task meanwhile, the JS heap, and the time of one live update.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadAssets } from '../core/dashboard.js';
import type { Figure } from './bench-edge.js';

const chromiumPath = '/usr/bin/chromium';
const panels = 12;
const daySeconds = 86_400;
const windowsPerAnswerMax = 3600;

/** Each 1 s window of [fromS, toS) as the API's JSON (a revision now and then). */
function windowsJson(panel: number, fromS: number, toS: number): string[] {
  const parts: string[] = [];
  for (let s = fromS; s < toS; s++) {
    const count = 4000 + ((s * 7 + panel * 13) % 1400);
    const avg = 596 + 120 * Math.sin(s / 900 + panel) + ((s * 31) % 17);
    const max = avg * 3 + ((s * 11) % 97);
    const p99 = avg * 2.2 + ((s * 5) % 41);
    const sum = avg * count;
    parts.push(`{"startMs":${s * 1000},"endMs":${s * 1000 + 1000},"servers":40,"count":${count},"values":{"count":${count},"sum":${sum},"avg":${avg},"max":${max},"percentile(99)":${p99}},"revision":${s % 5000 === 0 ? 1 : 0}}`);
  }
  return parts;
}

const pageScript = `
  window.__bench = { firstChartMs: 0, allChartsMs: 0, longestTaskMs: 0 };
  new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__bench.longestTaskMs = Math.max(window.__bench.longestTaskMs, e.duration); }).observe({ type: 'longtask', buffered: true });
  const poll = () => {
    const charts = document.querySelectorAll('.panel .uplot').length;
    // Drawn after its history finished loading, with (nearly) a day of windows.
    const complete = [...document.querySelectorAll('.panel')].filter((p) => p.getAttribute('data-loading') === 'false' && Number(p.getAttribute('data-windows')) >= ${daySeconds - 60}).length;
    if (charts > 0 && window.__bench.firstChartMs === 0) window.__bench.firstChartMs = performance.now();
    if (complete === ${panels} && window.__bench.allChartsMs === 0) window.__bench.allChartsMs = performance.now();
    if (window.__bench.allChartsMs === 0) requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
`;

/** Runs the page once; throws (INVALID RUN) when the charts did not all appear with their windows. */
export async function pageFigures(): Promise<Figure[]> {
  const { chromium } = await import('playwright-core');
  const { index, byName } = loadAssets();
  const stops: (() => Promise<void>)[] = [];
  const browser = await chromium.launch({ executablePath: chromiumPath, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--enable-precise-memory-info'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    // Enabled before the page loads: ScriptDuration and TaskDuration add up from then on.
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    const nowMs = Date.now();
    const nowS = Math.floor(nowMs / 1000);
    const ids = Array.from({ length: panels }, (_, i) => `q${i}`);
    // Made before the page starts: serving a page is a join, so the figures are the page's.
    const firstS = nowS - daySeconds - 300;
    const made = ids.map((_, i) => windowsJson(i, firstS, nowS + 1));
    const madeEndS = nowS + 1;
    const resultsPage = (panel: number, fromS: number, toS: number) => {
      const early = fromS < firstS ? windowsJson(panel, fromS, Math.min(toS, firstS)) : [];
      const mid = made[panel]!.slice(Math.max(0, fromS - firstS), Math.max(0, Math.min(toS, madeEndS) - firstS));
      const late = toS > madeEndS ? windowsJson(panel, Math.max(fromS, madeEndS), toS) : [];
      return `{"windows":[${[...early, ...mid, ...late].join(',')}]}`;
    };
    let resultPages = 0;
    let resultBytes = 0;
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    const server = createServer((req, res) => {
      const r = answer(new URL(req.url ?? '/', origin));
      if (r.pageBytes !== undefined) {
        resultPages++;
        resultBytes += r.pageBytes;
      }
      res.writeHead(r.status, { 'content-type': r.type, 'cache-control': 'no-store' });
      res.end(r.body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    stops.push(() => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    /** What the core would answer, from synthetic windows. */
    const answer = (url: URL): { status: number; type: string; body: string | Buffer; pageBytes?: number } => {
      const json = (body: string, status = 200) => ({ status, type: 'application/json', body });
      if (url.pathname === '/') return { status: 200, type: index.type, body: index.body };
      // To compare with another version of the page (e.g. the last commit's): APM_BENCH_PAGE_APP_JS=<file>.
      if (url.pathname === '/ui/app.js' && process.env.APM_BENCH_PAGE_APP_JS) return { status: 200, type: 'text/javascript', body: readFileSync(process.env.APM_BENCH_PAGE_APP_JS) };
      if (url.pathname.startsWith('/ui/')) {
        const a = byName.get(url.pathname.slice('/ui/'.length));
        return a === undefined ? json('{"error":"no asset"}', 404) : { status: 200, type: a.type, body: a.body };
      }
      if (url.pathname === '/api/v1/status') return json(JSON.stringify({ nowMs: Date.now(), core: {}, racks: [] }));
      if (url.pathname === '/api/v1/queries') return json(JSON.stringify({ queries: ids.map((id, i) => ({ id, name: `rpc latency ${i}`, query: `FROM web-* SELECT rpc.latency_ms.${i} WINDOW 1s COMPUTE count, sum, avg, max, p99` })) }));
      if (url.pathname === '/api/v1/live') {
        // One live window per panel, then the stream ends; retry 1 h: no reconnect during the run.
        const events = ids.map((id, i) => `event: window\ndata: ${JSON.stringify({ id, window: JSON.parse(resultsPage(i, nowS, nowS + 1)).windows[0] })}\n\n`).join('');
        return { status: 200, type: 'text/event-stream', body: `retry: 3600000\n\n${events}` };
      }
      const m = /^\/api\/v1\/queries\/q(\d+)\/results$/.exec(url.pathname);
      if (m !== null) {
        const fromS = Math.ceil(Number(url.searchParams.get('from')) / 1000);
        // Closed windows only, up to the second now (the data was made up to the bench's start).
        const toS = Math.min(Math.floor(Date.now() / 1000), Math.ceil(Number(url.searchParams.get('to')) / 1000));
        if (toS - fromS > windowsPerAnswerMax + 1) return json('{"error":"more than 3600 windows per answer"}', 400);
        const body = resultsPage(Number(m[1]), fromS, toS);
        return { ...json(body), pageBytes: body.length };
      }
      if (url.pathname === '/api/v1/query') return json('{"query":"","windows":[]}');
      return json(`{"error":"bench: no route ${url.pathname}"}`, 404);
    };
    await page.addInitScript(pageScript);
    await page.goto(`${origin}/#last=24h`);
    // A page without the range in its URL: choose 24 h as a user would.
    if ((await page.inputValue('#range')) !== String(daySeconds * 1000)) await page.selectOption('#range', String(daySeconds * 1000));
    await page.waitForFunction('window.__bench.allChartsMs > 0', undefined, { timeout: 180_000, polling: 200 }).catch(async () => {
      const seen = await page.evaluate(`[...document.querySelectorAll('.panel')].map((p) => (p.querySelector('.uplot') ? 'chart ' : 'no chart ') + p.getAttribute('data-windows') + (p.getAttribute('data-loading') === 'true' ? ' loading' : '')).join(', ')`).catch((err: Error) => err.message);
      throw new Error(`bench page INVALID RUN: ${panels} charts of ${daySeconds} windows not drawn within 180 s (${resultPages} result pages served; panels: ${seen}; page errors: ${errors.join('; ') || 'none'})`);
    });
    const b = (await page.evaluate('window.__bench')) as { firstChartMs: number; allChartsMs: number; longestTaskMs: number };
    if (!(b.firstChartMs > 0)) throw new Error('bench page INVALID RUN: no chart was drawn');
    if (errors.length > 0) throw new Error(`bench page INVALID RUN: errors in the page: ${errors.join('; ')}`);
    const metrics = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((x) => [x.name, x.value]));
    // usedSize is V8's heap (JSHeapUsedSize); backingStorageSize the ArrayBuffers' memory outside it.
    const heap = async () => (await cdp.send('Runtime.getHeapUsage')) as { usedSize: number; backingStorageSize?: number };
    await cdp.send('HeapProfiler.collectGarbage');
    const heapRetained = await heap();
    const loaded = await metrics();
    const heapLoaded = await heap();
    await checkHover(page, (second) => (JSON.parse(windowsJson(0, second, second + 1)[0]!) as { values: { avg: number } }).values.avg);
    await page.screenshot({ path: 'artifacts/bench-page.png' }).catch(() => undefined);
    const pagesServed = resultPages;
    const bytesServed = resultBytes;
    // The floor under "every chart": the same pages fetched and parsed by a bare loop, 6 at a
    // time (the browser's connections per host), nothing kept.
    const fetchOnlyMs = (await page.evaluate(`(async () => {
      const urls = [];
      const to = Date.now();
      for (let p = 0; p < ${panels}; p++) for (let k = 0; k < 24; k++) urls.push('/api/v1/queries/q' + p + '/results?from=' + (to - (k + 1) * 3600000) + '&to=' + (to - k * 3600000));
      const t = performance.now();
      let next = 0;
      const worker = async () => {
        while (next < urls.length) {
          const r = await fetch(urls[next++]);
          if ((await r.json()).windows.length === 0) throw new Error('empty page');
        }
      };
      await Promise.all(Array.from({ length: 6 }, worker));
      return performance.now() - t;
    })()`)) as number;
    const before = await metrics();
    const update = await liveUpdateMs(page);
    const after = await metrics();
    if (process.env.APM_BENCH_PAGE_DEBUG) for (const k of Object.keys(after)) if (/Duration$/.test(k)) console.log(`    ${k} during the live updates: ${((after[k]! - before[k]!) * 1000).toFixed(1)} ms`);
    const MiB = 2 ** 20;
    return [
      { name: `page: time to the first chart painted (${panels} panels × 24 h of 1 s windows)`, value: b.firstChartMs, unit: 'ms' },
      { name: `page: time to every chart holding its 24 h (${pagesServed} result pages, ${(bytesServed / MiB).toFixed(0)} MiB of JSON)`, value: b.allChartsMs, unit: 'ms' },
      { name: `page: the same ${pagesServed} pages fetched and parsed by a bare loop, kept nowhere (the transport's floor)`, value: fetchOnlyMs, unit: 'ms' },
      { name: 'page: main-thread script time until then (CDP ScriptDuration)', value: (loaded.ScriptDuration ?? NaN) * 1000, unit: 'ms' },
      { name: 'page: longest main-thread task while loading', value: b.longestTaskMs, unit: 'ms' },
      { name: 'page: JS heap used when loaded (CDP JSHeapUsedSize)', value: (loaded.JSHeapUsedSize ?? NaN) / MiB, unit: 'MiB' },
      { name: 'page: JS heap used after a GC (what the page keeps)', value: heapRetained.usedSize / MiB, unit: 'MiB' },
      { name: 'page: ArrayBuffer memory after a GC (typed-array columns, outside the JS heap)', value: (heapRetained.backingStorageSize ?? NaN) / MiB, unit: 'MiB', target: `${((heapLoaded.backingStorageSize ?? NaN) / MiB).toFixed(0)} MiB when loaded` },
      { name: `page: one live window into each of the ${panels} panels, until shown (median of 5)`, value: update.updateMs, unit: 'ms' },
      { name: `page: a full render of the ${panels} panels (columns → chart data, setData, numbers), synchronous part`, value: update.renderMs, unit: 'ms' },
      { name: `page: uPlot redraw of the ${panels} charts`, value: update.drawMs, unit: 'ms' },
    ];
  } finally {
    await browser.close();
    for (const stop of stops) await stop();
  }
}

/**
 * A live window for every panel through the page's own hook (`window.__apm.receive`), timed until
 * the next frames have drawn them; NaN when the page has no such hook.
 */
async function liveUpdateMs(page: import('playwright-core').Page): Promise<{ updateMs: number; renderMs: number; drawMs: number }> {
  return (await page.evaluate(`(async () => {
    if (!window.__apm) return { updateMs: NaN, renderMs: NaN, drawMs: NaN };
    const panels = [...window.__apm.panels.values()];
    const runs = [];
    for (let k = 1; k <= 5; k++) {
      const t = performance.now();
      for (const p of panels) {
        const last = p.newestStartMs();
        p.receive({ startMs: last + 1000, endMs: last + 2000, servers: 40, count: 4100, values: { count: 4100, sum: 2.4e6, avg: 600, max: 1800, 'percentile(99)': 1300 }, revision: 0 });
      }
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      runs.push(performance.now() - t);
    }
    const t = performance.now();
    for (const p of panels) {
      p.renderChart();
      p.renderText();
    }
    const renderMs = performance.now() - t;
    // uPlot commits in a microtask: await one to time the drawing itself.
    const t2 = performance.now();
    for (const p of panels) p.plot.redraw(true, true);
    await Promise.resolve();
    const drawMs = performance.now() - t2;
    return { updateMs: runs.sort((a, b) => a - b)[2], renderMs, drawMs };
  })()`)) as { updateMs: number; renderMs: number; drawMs: number };
}

/**
 * Hovers the middle of the first chart (24 h decimated to its pixels) and checks that the legend
 * shows the avg of the window under the cursor exactly as served (`avgAt(second)`).
 */
async function checkHover(page: import('playwright-core').Page, avgAt: (second: number) => number): Promise<void> {
  const over = page.locator('article.panel').first().locator('.u-over');
  const box = await over.boundingBox();
  if (box === null) throw new Error('bench page INVALID RUN: the first chart has no plot area');
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  if ((await page.evaluate('window.__apm === undefined')) === true) return; // another page (APM_BENCH_PAGE_APP_JS) without the hook
  const got = (await page.evaluate(`(() => {
    const p = [...window.__apm.panels.values()][0];
    const r = p.rowAtCursor(p.plot, p.plot.cursor.idx);
    const legend = [...p.root.querySelectorAll('.u-legend .u-series')].find((e) => e.querySelector('.u-label')?.textContent === 'avg');
    return { decimated: p.view.startOf === null, row: r < 0 ? null : p.cols.row(r), shown: legend?.querySelector('.u-value')?.textContent };
  })()`)) as { decimated: boolean; row: { startMs: number; values: { avg: number } } | null; shown: string | undefined };
  const want = got.row === null ? NaN : avgAt(got.row.startMs / 1000);
  const wantText = want.toLocaleString('en-US', { maximumFractionDigits: Math.abs(want) >= 100 ? 1 : 4 });
  if (!got.decimated || got.row === null || got.row.values.avg !== want || got.shown !== wantText) {
    throw new Error(`bench page INVALID RUN: hovering a decimated 24 h chart should show the window under the cursor exactly; got ${JSON.stringify(got)}, want avg ${want} shown as ${wantText}`);
  }
  await page.mouse.move(0, 0);
}
