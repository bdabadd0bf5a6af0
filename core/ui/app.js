// apm dashboard (issue 6). Plain ES module, no build step: stored queries as live uPlot charts
// fed by each query's SSE stream, history from the results API (paged to the API's per-answer
// bound), ad-hoc queries where stored results do not reach, create/edit/delete with parse errors
// shown at their position, and a fleet view of servers, racks, the system's own health and, on a
// cluster node, the cluster's nodes and shards.

import { axisOf, historyRows, plotColumns, WindowColumns } from './columns.js';

/** The API answers at most this many windows per request (core/query/routes.ts). */
const windowsPerAnswerMax = 3600;
/** Stored-results pages per load: 24 h of 1 s windows. */
const resultPagesMax = 24;
/** Ad-hoc gap fills use the query's WINDOW, coarsened to one of these until one answer holds the gap. */
const coarseWindowsSeconds = [1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400];
/** While history pages arrive, a chart is redrawn at most this often (its numbers each page). */
const chartLoadingMs = 500;
/** Reconnect back-off for live streams. */
const retryMsMin = 500;
/** How far back a reconnect re-reads stored results: late data revises windows up to the racks' late horizon (600 s) after they close. */
const revisionHorizonMs = 660_000;
const retryMsMax = 10_000;
/** Server states: a server reports each second; the racks forward ~2–3 s after it ends. */
const lateAfterMs = 10_000;
const silentAfterMs = 60_000;
/** Rows shown in the server table before asking to filter (the fleet has 10,000 servers). */
const serverRowsMax = 500;
/**
 * Cluster shard rows at most (schema/limits.ts shardsMax): each refresh rewrites only the rows
 * whose owners, readiness or lag changed, inside a scrolling box.
 */
const clusterShardRowsMax = 4096;
/** Retries of a request the core rate-limited (429, waiting its Retry-After). */
const rateRetriesMax = 3;
/** A request to the core unanswered this long is given up (the page says so and tries again later). */
const apiTimeoutMs = 30_000;
const palette = ['#2c6ecb', '#d9480f', '#2b8a3e', '#862e9c', '#e67700', '#0b7285', '#c2255c', '#5c940d'];

const $ = (id) => document.getElementById(id);
const state = {
  token: localStorage.getItem('apm.token') ?? '',
  /** Live: the last `spanMs` up to now, sliding. Otherwise a fixed [fromMs, toMs). */
  range: { live: true, spanMs: 3_600_000, fromMs: 0, toMs: 0 },
  panels: new Map(),
  clockOffsetMs: 0,
  fleetTimer: 0,
  /** Answers of GET /api/v1/cluster still wanted: a newer request makes an older one's answer stale. */
  clusterSeq: 0,
  editing: null,
  /** When an answer last said it came from a node cut off from the cluster's log (0: never). */
  staleAtMs: 0,
};

/** An unmarked answer hides the stale mark only this long after the last marked one: panels' metrics live on different nodes. */
const staleHoldMs = 30_000;

class ApiError extends Error {
  constructor(status, body) {
    super(body.error ?? `HTTP ${status}`);
    this.status = status;
    this.position = body.position;
  }
}

/**
 * fetch() against the core, with the token; JSON in and out; errors as ApiError. Each try ends
 * after apiTimeoutMs: a hung core (a stopped process, a half-open connection) held every request
 * for good, and the browser's six connections per host with them.
 */
async function api(path, init = {}) {
  const headers = new Headers(init.headers);
  if (state.token) headers.set('authorization', `Bearer ${state.token}`);
  if (init.body !== undefined) headers.set('content-type', 'application/json');
  const once = async () => {
    try {
      return await fetch(path, { ...init, headers, signal: AbortSignal.timeout(apiTimeoutMs) });
    } catch (err) {
      if (err?.name === 'TimeoutError') throw new ApiError(0, { error: `no answer in ${apiTimeoutMs / 1000} s` });
      throw err;
    }
  };
  let r = await once();
  // Rate limited (a burst of panels loading history): wait as told, a few times at most.
  for (let tries = 0; r.status === 429 && tries < rateRetriesMax; tries++) {
    const waitS = Math.min(10, Number(r.headers.get('retry-after')) || 1);
    await new Promise((resolve) => setTimeout(resolve, waitS * 1000));
    r = await once();
  }
  // A cluster node cut off from its log answers from what it holds and says since when (x-apm-stale-since).
  if (/\/results$|^\/api\/v1\/query$/.test(path.split('?')[0])) showStale(r.headers.get('x-apm-stale-since'));
  if (r.status === 204) return null;
  let body = {};
  try {
    body = await r.json();
  } catch (err) {
    // The deadline can pass while the body arrives, too.
    if (err?.name === 'TimeoutError' || err?.name === 'AbortError') throw new ApiError(0, { error: `no answer in ${apiTimeoutMs / 1000} s` });
    body = { error: `HTTP ${r.status} with a body that is not JSON` };
  }
  if (r.status === 401) showTokenBar(body.error);
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

const now = () => Date.now() + state.clockOffsetMs;

function currentRange() {
  if (state.range.live) {
    const toMs = now();
    return { fromMs: toMs - state.range.spanMs, toMs };
  }
  return { fromMs: state.range.fromMs, toMs: state.range.toMs };
}

function windowSecondsOf(query) {
  const m = /\bWINDOW\s+(\d+)([smhd])\b/i.exec(query);
  if (m === null) return 5;
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2].toLowerCase()];
}

function fmt(v) {
  if (v === null || v === undefined) return '–';
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e9 || a < 1e-3)) return v.toExponential(3);
  return v.toLocaleString('en-US', { maximumFractionDigits: a >= 100 ? 1 : 4 });
}

/** A function's key as an axis label says it: percentile(99) → p99. */
function shortFn(k) {
  return k.replace(/^percentile\((.*)\)$/, 'p$1');
}

const compact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 2 });
/** Axis ticks: 2.8M rather than 2,800,000, unless that would make two ticks read the same. */
function axisValues(vals) {
  const short = vals.map((v) => (v === null || Math.abs(v) < 10_000 ? fmt(v) : compact.format(v)));
  return new Set(short).size === short.length ? short : vals.map(fmt);
}

function fmtSpan(ms) {
  if (ms < 60_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 3_600_000) return `${+(ms / 60_000).toFixed(1)} min`;
  return `${+(ms / 3_600_000).toFixed(1)} h`;
}

function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtAge(ms) {
  if (ms < 0) return 'now';
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s ago`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s ago`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min ago`;
  return `${Math.round(ms / 3_600_000)} h ago`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

/**
 * Fetches `[fromMs, toMs)` in pages the API accepts, handing each page's windows to `onPage` as it
 * arrives (false stops); `base` is a path with or without a query string.
 */
async function paged(base, fromMs, toMs, windowMs, pagesMax, onPage) {
  const span = windowsPerAnswerMax * windowMs;
  const sep = base.includes('?') ? '&' : '?';
  // Newest pages first: when the cap cuts, it is the oldest history that is left out.
  let pages = 0;
  for (let to = toMs; to > fromMs && pages < pagesMax; to -= span, pages++) {
    const from = Math.max(fromMs, to - span);
    const r = await api(`${base}${sep}from=${Math.floor(from)}&to=${Math.ceil(to)}`);
    if (onPage(r.windows) === false) return;
  }
}

class Panel {
  constructor(def) {
    this.def = def;
    this.windowMs = windowSecondsOf(def.query) * 1000;
    /** Every window in range, as columns (columns.js); the chart draws a view of them. */
    this.cols = new WindowColumns();
    /** Axis of each function (axisOf), chosen once per definition so lines do not jump between axes. */
    this.sides = null;
    /** What the chart shows now: rows [lo, hi), and the start of each drawn point when every window is drawn. */
    this.view = null;
    this.layout = '';
    this.received = 0;
    this.plot = null;
    this.chartStale = true;
    this.chartDrawnMs = 0;
    this.loading = false;
    this.opened = false;
    this.renderQueued = false;
    this.loadSeq = 0;
    this.disposed = false;
    this.note = '';
    this.build();
  }

  build() {
    this.stateEl = el('span', { class: 'state' }, 'connecting');
    this.countEl = el('span', { class: 'received' });
    this.revisedEl = el('span', { class: 'revised' });
    this.noteEl = el('span', { class: 'note' });
    this.hoverEl = el('div', { class: 'hover' });
    this.latestEl = el('div', { class: 'latest' });
    this.chartEl = el('div', { class: 'chart' });
    this.titleEl = el('h3');
    this.queryEl = el('div', { class: 'q mono' });
    const edit = el('button', { type: 'button', class: 'edit', onclick: () => openEditor(this.def) }, 'Edit');
    const del = el('button', { type: 'button', class: 'delete', onclick: () => this.remove() }, 'Delete');
    this.root = el('article', { class: 'panel', 'data-id': this.def.id }, el('header', {}, this.titleEl, edit, del), this.queryEl, this.chartEl, this.hoverEl, this.latestEl, el('footer', {}, this.stateEl, this.countEl, this.revisedEl, this.noteEl));
    this.describe();
  }

  describe() {
    this.titleEl.textContent = this.def.name;
    this.queryEl.textContent = this.def.query;
  }

  /** A changed definition (edited here or elsewhere): history and stream start over. */
  redefine(def) {
    const changed = def.query !== this.def.query;
    this.def = def;
    this.describe();
    if (!changed) return;
    this.windowMs = windowSecondsOf(def.query) * 1000;
    this.cols = new WindowColumns();
    this.sides = null;
    this.view = null;
    this.plot?.destroy();
    this.plot = null;
    void this.load();
  }

  async remove() {
    if (!confirm(`Delete the stored query "${this.def.name}" and its results?`)) return;
    try {
      await api(`/api/v1/queries/${this.def.id}`, { method: 'DELETE' });
      this.dispose();
    } catch (err) {
      alert(`Could not delete: ${err.message}`);
    }
  }

  /**
   * Removes the panel for good: a history load still in flight stops at its next page and draws
   * nothing (before, it made a chart for the detached panel, which uPlot then kept for good).
   * `sync` false: the caller removes several and syncs the live stream once.
   */
  dispose(sync = true) {
    this.disposed = true;
    this.loadSeq++;
    this.plot?.destroy();
    this.plot = null;
    this.root.remove();
    state.panels.delete(this.def.id);
    $('empty').hidden = state.panels.size > 0;
    if (sync) live.sync();
  }

  /** The shared stream (re)opened: after the first time, fetch what closed while it was down. */
  streamOpen() {
    this.setState('live', 'live');
    if (this.opened) void this.backfill();
    this.opened = true;
  }

  receive(w) {
    this.received++;
    // A fixed range keeps only its own windows (live ranges are pruned as they slide).
    const { fromMs, toMs } = currentRange();
    if (!state.range.live && (w.startMs < fromMs - this.windowMs || w.startMs >= toMs)) return;
    if (state.range.live) this.cols.upsertLive(w, fromMs - this.windowMs);
    else this.cols.upsert(w);
    // Decimated, a new window changes one pixel column at most (111 s of windows at 24 h): the
    // chart follows every quarter column, the numbers every window (12 × 24 h redrawn each
    // second cost ~100 ms a second; apm bench --only page).
    const v = this.view;
    this.queueRender(!(v !== null && v.bucketMs > 0 && performance.now() - this.chartDrawnMs < v.bucketMs / 4));
  }

  setState(text, cls) {
    this.stateEl.textContent = text;
    this.stateEl.className = `state ${cls}`;
  }

  /** The newest window from stored results (not an ad-hoc fill), or -1. */
  newestStored() {
    for (let i = this.cols.n - 1; i >= 0; i--) if (!this.cols.isAdhoc(i)) return i;
    return -1;
  }

  newestStartMs() {
    const i = this.newestStored();
    return i < 0 ? NaN : this.cols.startMs[i];
  }

  /**
   * History for the current range: stored results, then ad-hoc for what they do not cover. Each
   * page is drawn as it arrives (newest first), so a 24 h range shows its last hour at once.
   */
  async load() {
    const seq = ++this.loadSeq;
    const { fromMs, toMs } = currentRange();
    const W = this.windowMs;
    const cols = this.cols;
    // Ad-hoc windows were sized for the previous range; mixed with others they would overlap.
    cols.filter((i) => !cols.isAdhoc(i));
    cols.reserve(historyRows(fromMs, toMs, W, resultPagesMax, windowsPerAnswerMax));
    let firstStored = Math.min(toMs, now());
    this.loading = true;
    try {
      await paged(`/api/v1/queries/${encodeURIComponent(this.def.id)}/results`, fromMs, toMs, W, resultPagesMax, (windows) => {
        if (seq !== this.loadSeq) return false;
        cols.upsertMany(windows);
        if (windows.length > 0) firstStored = Math.min(firstStored, windows[0].startMs, windows[windows.length - 1].startMs);
        // The first page at once, then the chart every chartLoadingMs: redrawing 24 h after each
        // of 24 pages kept the main thread from parsing the next ones (all 12 panels: 2× slower).
        this.queueRender(performance.now() - this.chartDrawnMs >= chartLoadingMs);
        return true;
      });
      if (seq !== this.loadSeq) return;
      this.note = '';
      if (firstStored - fromMs >= W) await this.fillAdhoc(seq, fromMs, firstStored);
    } catch (err) {
      this.note = `history: ${err.message}`;
    }
    if (seq === this.loadSeq) this.loading = false;
    this.queueRender();
  }

  /** Windows before the stored results begin, from storage, at a window that fits one answer. */
  async fillAdhoc(seq, fromMs, toMs) {
    const base = windowSecondsOf(this.def.query);
    const needed = (toMs - fromMs) / 1000 / windowsPerAnswerMax;
    const ws = coarseWindowsSeconds.find((s) => s >= base && s % base === 0 && s >= needed) ?? 86400;
    const text = this.def.query.replace(/\bWINDOW\s+\d+[smhd]\b/i, `WINDOW ${ws}s`);
    const r = await api(`/api/v1/query?q=${encodeURIComponent(text)}&from=${Math.floor(fromMs)}&to=${Math.ceil(toMs)}`);
    if (seq !== this.loadSeq) return;
    this.cols.upsertMany(r.windows, { adhoc: true, keepExisting: true });
    this.note = `before ${new Date(toMs).toLocaleTimeString()}: ad-hoc${ws === base ? '' : ` at ${ws} s windows`}`;
  }

  /**
   * After a reconnect: what closed while the stream was down (paged: the gap may be long), and
   * the revision horizon before it — windows revised meanwhile were sent on a stream nobody read
   * (before, the chart kept their old values until the range changed).
   */
  async backfill() {
    const seq = this.loadSeq;
    const { fromMs, toMs } = currentRange();
    const i = this.newestStored();
    const last = i < 0 ? fromMs : Math.max(fromMs, this.cols.startMs[i] - revisionHorizonMs);
    try {
      await paged(`/api/v1/queries/${encodeURIComponent(this.def.id)}/results`, last, Math.min(toMs, now()) + this.windowMs, this.windowMs, resultPagesMax, (windows) => {
        // A load started meanwhile (edit, range change) owns the windows now.
        if (seq !== this.loadSeq) return false;
        this.cols.upsertMany(windows);
        return true;
      });
    } catch (err) {
      this.note = `catch-up: ${err.message}`;
    }
    this.queueRender();
  }

  /** Renders in the next frame: the chart too unless `chart` is false (the numbers only). */
  queueRender(chart = true) {
    this.chartStale ||= chart;
    if (this.renderQueued || this.disposed) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  render() {
    if (this.disposed) return;
    if (this.chartStale || this.plot === null) {
      this.chartStale = false;
      this.renderChart();
    }
    this.renderText();
  }

  /**
   * Draws the windows in range. The chart gets at most ~2 points per pixel column (plotColumns:
   * each bucket's min and max), so 86,400 windows cost what 1,000 do, and is built once: later
   * renders only give it new data (setData), unless a function or axis appeared.
   */
  renderChart() {
    const { fromMs, toMs } = currentRange();
    const cols = this.cols;
    this.chartDrawnMs = performance.now();
    if (state.range.live) cols.dropBefore(fromMs - this.windowMs);
    const lo = cols.lowerBound(fromMs - this.windowMs);
    const hi = cols.lowerBound(toMs);
    this.xRange = [fromMs / 1000, toMs / 1000];
    const pixels = Math.max(300, this.chartEl.clientWidth || 560);
    const p = plotColumns(cols, { lo, hi, windowMs: this.windowMs, fromMs, toMs, pixels });
    this.view = { lo, hi, bucketMs: p.bucketMs, startOf: p.rowOf === null ? null : p.rowOf.map((i) => (i < 0 ? NaN : cols.startMs[i])) };
    const sides = this.axisSides(lo, hi);
    const layout = cols.keys.map((k) => `${k}:${sides.get(k)}`).join(',');
    if (this.plot === null || layout !== this.layout) {
      this.plot?.destroy();
      this.layout = layout;
      this.plot = new uPlot(this.options(sides), p.data, this.chartEl);
    } else {
      this.plot.setData(p.data);
    }
    // For tests and the page bench: windows drawn, points drawn for them.
    this.root.setAttribute('data-windows', String(hi - lo));
    this.root.setAttribute('data-points', String(p.data[0].length));
    this.root.setAttribute('data-loading', String(this.loading));
  }

  /** Rows [lo, hi) of the current range (indices move as rows come and go: looked up each time). */
  rowsInRange() {
    const { fromMs, toMs } = currentRange();
    return { lo: this.cols.lowerBound(fromMs - this.windowMs), hi: this.cols.lowerBound(toMs) };
  }

  renderText() {
    const cols = this.cols;
    const { lo, hi } = this.rowsInRange();
    this.renderLatest();
    this.countEl.textContent = `${this.received} live windows received`;
    let revised = 0;
    for (let i = lo; i < hi; i++) if (cols.revision[i] > 0) revised++;
    this.revisedEl.textContent = revised > 0 ? `▲ ${revised} windows revised by late data` : '';
    this.noteEl.textContent = this.note;
  }

  /** Each function's axis: kept once chosen, chosen again when a function appears. */
  axisSides(lo, hi) {
    const keys = this.cols.keys;
    if (this.sides !== null && keys.every((k) => this.sides.has(k))) return this.sides;
    const magnitude = (k) => {
      const v = this.cols.values[keys.indexOf(k)];
      let m = 0;
      for (let i = lo; i < hi; i++) {
        const a = Math.abs(v[i]);
        if (a > m) m = a; // false for NaN
      }
      return m > 0 ? m : NaN;
    };
    this.sides = axisOf(keys, magnitude);
    return this.sides;
  }

  renderLatest() {
    const i = this.newestStored();
    this.latestEl.replaceChildren();
    if (i < 0) return;
    const w = this.cols.row(i);
    this.latestEl.setAttribute('data-start', String(w.startMs));
    this.latestEl.append(el('span', {}, `${new Date(w.startMs).toLocaleTimeString()}:`));
    for (const [k, v] of Object.entries(w.values)) this.latestEl.append(el('span', { 'data-fn': k, 'data-value': String(v) }, `${k} `, el('b', {}, fmt(v))));
    this.latestEl.append(el('span', { class: 'hint' }, `${w.servers} servers · ${w.count} observations`));
  }

  /**
   * Two value axes at most (axisOf says why): left for the metric's values, right for totals,
   * each labelled with its functions; a right-axis series says so in the legend. The legend and
   * the hover line show the window under the cursor exactly, even where the chart is decimated.
   * Lines 1 px wide: a canvas without GPU strokes them 4× faster than 1.5 px (apm bench --only page).
   */
  options(sides) {
    const width = Math.max(300, this.chartEl.clientWidth || 560);
    const keys = this.cols.keys;
    const two = new Set(sides.values()).size > 1;
    const axis = (side) => ({
      scale: side,
      side: side === 'left' ? 3 : 1,
      label: two ? keys.filter((k) => sides.get(k) === side).map(shortFn).join(' · ') : undefined,
      labelSize: two ? 20 : 0,
      grid: { show: side === 'left' },
      values: (u, vals) => axisValues(vals),
      // As wide as its longest label (1,000,000 needs more than 0.5).
      size: (u, labels) => (labels ? Math.max(40, ...labels.map((l) => String(l).length * 7.5 + 18)) : 50),
    });
    return {
      width,
      height: 240,
      scales: { x: { time: true, range: () => this.xRange }, left: { auto: true }, right: { auto: true } },
      series: [
        { value: (u, v, si, idx) => this.legendTime(u, idx) },
        ...keys.map((k, i) => ({ label: two && sides.get(k) === 'right' ? `${k} (right axis)` : k, scale: sides.get(k), stroke: palette[i % palette.length], width: 1, value: (u, v, si, idx) => this.legendValue(u, si, idx) })),
      ],
      axes: [{}, axis('left'), ...(two ? [axis('right')] : [])],
      cursor: { drag: { x: true, y: false, setScale: false } },
      legend: { live: true },
      hooks: {
        setCursor: [(u) => this.showHover(u)],
        setSelect: [(u) => this.zoomTo(u)],
        draw: [(u) => this.drawRevisions(u)],
      },
    };
  }

  /** The row under the cursor: the drawn window itself, or (decimated) the window at the cursor's time. */
  rowAtCursor(u, idx) {
    const view = this.view;
    if (idx === null || idx === undefined || view === null) return -1;
    if (view.startOf !== null) {
      const s = view.startOf[idx];
      return s === undefined || Number.isNaN(s) ? -1 : this.cols.rowAt(s, 0);
    }
    const r = this.cols.rowAt(u.posToVal(u.cursor.left, 'x') * 1000, view.bucketMs / 2);
    return r >= 0 && this.cols.startMs[r] >= this.xRange[0] * 1000 - this.windowMs ? r : -1;
  }

  legendTime(u, idx) {
    const r = this.rowAtCursor(u, idx);
    return r < 0 ? '–' : new Date(this.cols.startMs[r]).toLocaleString();
  }

  legendValue(u, si, idx) {
    const r = this.rowAtCursor(u, idx);
    const v = r < 0 ? NaN : this.cols.values[si - 1]?.[r];
    return v === undefined || Number.isNaN(v) ? '–' : fmt(v);
  }

  showHover(u) {
    const r = this.rowAtCursor(u, u.cursor.idx);
    if (r < 0) {
      this.hoverEl.textContent = '';
      return;
    }
    const w = this.cols.row(r);
    const decimated = this.view?.startOf === null ? ` · each pixel here is ${fmtSpan(this.view.bucketMs)}: drag to zoom` : '';
    this.hoverEl.textContent = `${new Date(w.startMs).toLocaleString()} · ${w.servers} servers · ${w.count} observations${w.revision > 0 ? ` · revision ${w.revision} (late data)` : ''}${w.adhoc ? ' · ad-hoc' : ''}${decimated}`;
  }

  zoomTo(u) {
    if (u.select.width < 4) return;
    const from = u.posToVal(u.select.left, 'x') * 1000;
    const to = u.posToVal(u.select.left + u.select.width, 'x') * 1000;
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    setRange({ live: false, fromMs: Math.floor(from), toMs: Math.ceil(to) });
  }

  /** A small orange triangle above each window revised by late data (one per pixel column). */
  drawRevisions(u) {
    if (this.view === null) return;
    const { lo, hi } = this.rowsInRange();
    const cols = this.cols;
    const ctx = u.ctx;
    ctx.save();
    ctx.fillStyle = '#e67700';
    let lastX = NaN;
    for (let i = lo; i < Math.min(hi, cols.n); i++) {
      if (!(cols.revision[i] > 0)) continue;
      const x = Math.round(u.valToPos(cols.startMs[i] / 1000, 'x', true));
      if (x === lastX) continue;
      lastX = x;
      const y = u.bbox.top;
      ctx.beginPath();
      ctx.moveTo(x - 5, y);
      ctx.lineTo(x + 5, y);
      ctx.lineTo(x, y + 8);
      ctx.fill();
    }
    ctx.restore();
  }

  resize() {
    this.plot?.setSize({ width: Math.max(300, this.chartEl.clientWidth), height: 240 });
    // The decimation follows the width.
    this.queueRender();
  }
}

/**
 * One live stream for every panel (`/api/v1/live?ids=…`): a browser holds at most 6 HTTP/1.1
 * connections per host, so a stream per chart would leave none for the page's other requests.
 * EventSource retries a dropped connection itself; an HTTP error (a query deleted elsewhere,
 * 503 while the core starts) closes it, and it is reopened with back-off for the current panels.
 */
const live = {
  es: null,
  ids: '',
  retryMs: retryMsMin,
  timer: 0,
  /** A stream was open before: the next 'open' may follow a gap, so the list is read again. */
  everOpen: false,

  /** Opens the stream for the current panels if they changed (or it is closed). */
  sync() {
    const ids = [...state.panels.keys()].sort().join(',');
    if (ids === this.ids && this.es !== null) return;
    this.close();
    this.ids = ids;
    // Open with no panel too: the stream tells of definitions created elsewhere.
    this.open();
  },

  open() {
    const q = new URLSearchParams({ ids: this.ids, definitions: '1' });
    if (state.token) q.set('access_token', state.token);
    const es = new EventSource(`/api/v1/live?${q}`);
    this.es = es;
    es.addEventListener('open', () => {
      // Reconnected on its own (the browser's retry): what changed while it was down is listed again.
      if (this.everOpen) definitions.changed();
      this.everOpen = true;
      this.retryMs = retryMsMin;
      for (const p of state.panels.values()) p.streamOpen();
    });
    es.addEventListener('definitions', () => definitions.changed());
    es.addEventListener('window', (e) => {
      const { id, window } = JSON.parse(e.data);
      state.panels.get(id)?.receive(window);
    });
    es.addEventListener('error', () => {
      for (const p of state.panels.values()) p.setState('reconnecting…', 'down');
      if (es.readyState !== EventSource.CLOSED) return;
      this.close();
      // Jittered: every page open on a core that restarted would come back in step.
      this.timer = setTimeout(() => void this.reopen(), this.retryMs * (0.5 + Math.random()));
      this.retryMs = Math.min(this.retryMs * 2, retryMsMax);
    });
  },

  async reopen() {
    // The list first: a query deleted elsewhere would refuse the whole stream (404).
    if (!(await refreshQueries())) {
      this.timer = setTimeout(() => void this.reopen(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, retryMsMax);
      return;
    }
    this.sync();
  },

  close() {
    clearTimeout(this.timer);
    this.es?.close();
    this.es = null;
    // A stream this page opens itself follows a listing (or needs none): only the browser's own
    // reconnects of one stream list the queries again.
    this.everOpen = false;
  },
};

// ---- stored queries list --------------------------------------------------------------------

/**
 * Lists the stored queries again when the live stream says they changed (created, edited or
 * deleted here, elsewhere, or on another node of a cluster): one listing at a time, and one more
 * after it when another change came meanwhile.
 */
const definitions = {
  running: null,
  again: false,
  changed() {
    if (this.running !== null) {
      this.again = true;
      return;
    }
    this.running = refreshQueries().finally(() => {
      this.running = null;
      if (this.again) {
        this.again = false;
        this.changed();
      }
    });
  },
};

/** Loads the stored queries: new ones get a panel, gone ones lose theirs. False when the core did not answer. */
async function refreshQueries() {
  let list;
  try {
    list = (await api('/api/v1/queries')).queries;
    setConn('', false);
  } catch (err) {
    setConn(`core: ${err.message}`, true);
    return false;
  }
  const seen = new Set();
  for (const def of list) {
    seen.add(def.id);
    const p = state.panels.get(def.id);
    if (p !== undefined) {
      p.redefine(def);
      continue;
    }
    const panel = new Panel(def);
    state.panels.set(def.id, panel);
    $('panels').append(panel.root);
    void panel.load();
  }
  for (const [id, p] of state.panels) if (!seen.has(id)) p.dispose(false);
  $('empty').hidden = state.panels.size > 0;
  live.sync();
  return true;
}

/**
 * Shows that data answers come from a node cut off from the cluster's log since `iso`; null (an
 * unmarked answer) hides it once no marked answer came for staleHoldMs. In a cluster each panel's
 * metric lives on its own shard's nodes: one panel's unmarked answer hid another's mark, and the
 * header said the page was current while a panel showed data from a cut-off node.
 */
function showStale(iso) {
  const el = $('stale');
  if (iso === null) {
    if (Date.now() - state.staleAtMs >= staleHoldMs) el.hidden = true;
    return;
  }
  state.staleAtMs = Date.now();
  el.hidden = false;
  el.textContent = `data as of ${new Date(iso).toLocaleString()}: this core lost the cluster's log then, newer points may be missing`;
}

function setConn(text, bad) {
  $('conn').textContent = text;
  $('conn').className = bad ? 'conn bad' : 'conn';
}

// ---- editor -----------------------------------------------------------------------------------

function openEditor(def) {
  state.editing = def ?? null;
  $('editor-title').textContent = def ? `Edit “${def.name}”` : 'New stored query';
  $('q-name').value = def?.name ?? '';
  $('q-text').value = def?.query ?? '';
  $('q-error').hidden = true;
  $('editor').hidden = false;
  void loadPickers();
  $('q-name').focus();
}

/** Shows the API's parse error under the query, with the offending character marked. */
function showParseError(text, message, position) {
  const box = $('q-error');
  box.replaceChildren(el('div', { class: 'message' }, message));
  if (typeof position === 'number') {
    const at = Math.max(0, Math.min(position, text.length));
    const pre = el('pre', { class: 'mono' }, text.slice(0, at), el('mark', { 'data-position': String(at) }, text.slice(at, at + 1) || ' '), text.slice(at + 1));
    box.append(pre);
    const ta = $('q-text');
    ta.focus();
    ta.setSelectionRange(at, Math.min(text.length, at + 1));
  }
  box.hidden = false;
}

async function saveEditor(ev) {
  ev.preventDefault();
  const body = JSON.stringify({ name: $('q-name').value, query: $('q-text').value });
  const text = $('q-text').value;
  try {
    const editing = state.editing;
    if (editing) await api(`/api/v1/queries/${encodeURIComponent(editing.id)}`, { method: 'PUT', body });
    else await api('/api/v1/queries', { method: 'POST', body });
    $('editor').hidden = true;
    await refreshQueries();
  } catch (err) {
    showParseError(text, err.message, err.position);
  }
}

let validateTimer = 0;
/** Checks the text while typing (a zero-length ad-hoc query parses without reading data). */
function validateSoon() {
  clearTimeout(validateTimer);
  validateTimer = setTimeout(async () => {
    const text = $('q-text').value;
    if (text.trim() === '') return;
    try {
      const t = now();
      await api(`/api/v1/query?q=${encodeURIComponent(text)}&from=${t - 1000}&to=${t}`);
      $('q-error').hidden = true;
    } catch (err) {
      if (err.status === 400 && $('q-text').value === text) showParseError(text, err.message, err.position);
    }
  }, 600);
}

async function loadPickers() {
  try {
    const [{ servers }, { metrics }] = await Promise.all([api('/api/v1/servers'), api('/api/v1/metrics')]);
    const sel = $('server-picker');
    sel.replaceChildren(el('option', { value: '' }, 'choose…'), el('option', { value: '*' }, '* (every server)'));
    const racks = [...new Set(servers.map((s) => s.rack))].sort();
    // Globs: the first name segment (web-*) and the name without its trailing number (web-r1-*).
    const globs = new Set();
    for (const s of servers) {
      const dash = s.id.indexOf('-');
      if (dash > 0) globs.add(`${s.id.slice(0, dash)}-*`);
      const stem = s.id.replace(/[0-9]+$/, '');
      if (stem.length > 0 && stem !== s.id) globs.add(`${stem}*`);
    }
    for (const r of racks) sel.append(el('option', { value: `rack:${r}` }, `rack:${r}`));
    for (const g of [...globs].sort().slice(0, 500)) sel.append(el('option', { value: g }, g));
    for (const s of [...servers].sort((a, b) => a.id.localeCompare(b.id)).slice(0, 2000)) sel.append(el('option', { value: s.id }, s.id));
    $('metric-list').replaceChildren(...metrics.slice(0, 5000).map((m) => el('option', { value: m.name }, m.kind)));
  } catch (err) {
    $('q-error').hidden = false;
    $('q-error').textContent = `pickers: ${err.message}`;
  }
}

const template = (from, metric) => `FROM ${from} SELECT ${metric} WINDOW 5s COMPUTE min, max, avg, p99`;

/** Puts the chosen servers into FROM, or the chosen metric into SELECT, keeping the rest. */
function setClause(clause, value) {
  const ta = $('q-text');
  const text = ta.value;
  if (clause === 'FROM') {
    const m = /^(\s*FROM\s+)([\s\S]*?)(\s+SELECT\b)/i.exec(text);
    ta.value = m ? `${m[1]}${value}${text.slice(m[0].length - m[3].length)}` : template(value, 'cpu.user');
  } else {
    const m = /(\bSELECT\s+)(\S+)/i.exec(text);
    ta.value = m ? text.slice(0, m.index) + m[1] + value + text.slice(m.index + m[0].length) : template('*', value);
  }
  validateSoon();
}

// ---- time range -------------------------------------------------------------------------------

function setRange(r) {
  state.range = { ...state.range, ...r };
  syncRangeControls();
  history.replaceState(null, '', rangeHash(state.range));
  for (const p of state.panels.values()) {
    if (!state.range.live) p.cols.clear();
    void p.load();
    p.queueRender();
  }
}

/** The range in the page's URL (#last=24h, #from=<ms>&to=<ms>): a reload or a shared link keeps it. */
function rangeHash(r) {
  if (!r.live) return `#from=${r.fromMs}&to=${r.toMs}`;
  return r.spanMs % 3_600_000 === 0 ? `#last=${r.spanMs / 3_600_000}h` : `#last=${r.spanMs / 60_000}m`;
}

/** The range a URL's hash names (spans the range picker offers), or null. */
function rangeFromHash(hash) {
  const h = new URLSearchParams(hash.replace(/^#/, ''));
  const last = /^(\d+)(m|h)$/.exec(h.get('last') ?? '');
  if (last !== null) {
    const spanMs = Number(last[1]) * (last[2] === 'h' ? 3_600_000 : 60_000);
    return [...$('range').options].some((o) => o.value === String(spanMs)) ? { live: true, spanMs } : null;
  }
  const fromMs = Number(h.get('from'));
  const toMs = Number(h.get('to'));
  return h.has('from') && h.has('to') && fromMs < toMs ? { live: false, fromMs, toMs } : null;
}

function toLocalInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 19);
}

function syncRangeControls() {
  const r = state.range;
  const sel = $('range');
  if (r.live) sel.value = String(r.spanMs);
  else sel.value = 'custom';
  $('custom').hidden = r.live;
  if (!r.live) {
    $('from').value = toLocalInput(r.fromMs);
    $('to').value = toLocalInput(r.toMs);
  }
  $('live').disabled = r.live;
}

function pan(direction) {
  const { fromMs, toMs } = currentRange();
  const shift = ((toMs - fromMs) / 2) * direction;
  const to = Math.min(now(), toMs + shift);
  setRange({ live: false, fromMs: to - (toMs - fromMs), toMs: to });
}

// ---- fleet view -------------------------------------------------------------------------------

function serverState(lastSeenMs, nowMs) {
  const age = nowMs - lastSeenMs;
  return age <= lateAfterMs ? 'reporting' : age <= silentAfterMs ? 'late' : 'silent';
}

function card(label, value, bad = false) {
  return el('div', { class: bad ? 'card bad' : 'card', 'data-card': label }, el('div', { class: 'v' }, value), el('div', { class: 'k' }, label));
}

/**
 * One fleet refresh at a time: a slow core's answers no longer pile up a new pair every 5 s. A
 * refresh asked for meanwhile (the filter typed) runs once after it.
 */
const fleetRefresh = { running: false, again: false };

async function refreshFleet() {
  if (fleetRefresh.running) {
    fleetRefresh.again = true;
    return;
  }
  fleetRefresh.running = true;
  try {
    do {
      fleetRefresh.again = false;
      await refreshFleetOnce();
    } while (fleetRefresh.again);
  } finally {
    fleetRefresh.running = false;
  }
}

async function refreshFleetOnce() {
  let status;
  let servers;
  try {
    [status, { servers }] = await Promise.all([api('/api/v1/status'), api('/api/v1/servers')]);
    setConn('', false);
  } catch (err) {
    setConn(`core: ${err.message}`, true);
    return;
  }
  state.clockOffsetMs = status.nowMs - Date.now();
  const counts = { reporting: 0, late: 0, silent: 0 };
  const perRack = new Map();
  for (const s of servers) {
    const st = serverState(s.lastSeenMs, status.nowMs);
    counts[st]++;
    const r = perRack.get(s.rack) ?? { reporting: 0, late: 0, silent: 0 };
    r[st]++;
    perRack.set(s.rack, r);
  }
  renderHealth(status, counts);
  // Its own request and error line: a cluster answer that fails leaves the rest of the view alone.
  void refreshCluster(status.cluster === true);
  renderRacks(status, perRack);
  renderStatsdRefusals(status);
  renderServers(servers, status.nowMs);
}

function renderHealth(status, counts) {
  const c = status.core;
  let recovered = 0;
  let lost = 0;
  let spoolBytes = 0;
  let spoolBatches = 0;
  for (const r of status.racks) {
    recovered += r.report?.partsRecovered ?? 0;
    lost += r.report?.partsLost ?? 0;
    spoolBytes += r.report?.spoolBytes ?? 0;
    spoolBatches += r.report?.spoolBatches ?? 0;
  }
  $('health').replaceChildren(
    card('ingest points/s', fmt(Math.round(c.pointsPerSecond))),
    card('freshness lag', c.freshnessLagMs === null ? '–' : `${(c.freshnessLagMs / 1000).toFixed(1)} s`, c.freshnessLagMs > 10_000),
    card('stored-query lag', `${(c.queryLagMs / 1000).toFixed(1)} s`, c.queryLagMs > 30_000),
    card('parts recovered', fmt(recovered)),
    card('parts lost for good', fmt(lost), lost > 0),
    card('spool depth', `${fmtBytes(spoolBytes)} · ${spoolBatches} batches`, spoolBatches > 10),
    card('servers', `${counts.reporting} / ${counts.late} / ${counts.silent}`, counts.silent > 0),
    card('metrics', fmt(c.metrics)),
    card('disk in use', fmtBytes(c.diskBytes)),
    card('batches late / duplicate', `${fmt(c.batchesLate)} / ${fmt(c.batchesDuplicate)}`),
  );
  $('health').title = 'servers: reporting / late / silent';
}

/**
 * StatsD lines the edges refused, per reason, fleet-wide over the last minutes (issue 15:
 * status.statsdRefused, computed by the core every 15 s from the edges' apm.edge.* counters;
 * `apm edge --help` says what each reason means). Builds its own heading and table after the
 * racks table the first time.
 */
function renderStatsdRefusals(status) {
  const t = status.statsdRefused;
  if (t === undefined) return;
  let table = $('statsd-refused');
  if (table === null) {
    table = el('table', { id: 'statsd-refused', class: 'grid' }, el('thead', {}, el('tr', {}, el('th', {}, 'family'), el('th', {}, 'reason'), el('th', { title: 'lines (malformed, refused) or values (dropped)' }, 'count'), el('th', {}, 'metric'))), el('tbody'));
    const note = el('p', { id: 'statsd-refused-note', class: 'hint' });
    $('racks').after(el('h2', {}, 'StatsD lines refused'), note, table);
  }
  const minutes = Math.round(t.windowSeconds / 60);
  const when = t.updatedMs === null ? 'computing…' : `computed ${fmtAge(status.nowMs - t.updatedMs)}`;
  const parts = [`fleet-wide, last ${minutes} min, ${when}`];
  if (t.updatedMs !== null && t.rows.length === 0) parts.push('none refused');
  if (t.omitted > 0) parts.push(`${t.omitted} more reasons not shown`);
  if (t.error !== null) parts.push(t.error);
  $('statsd-refused-note').textContent = parts.join(' · ');
  const rows = t.rows.map((r) =>
    el('tr', { 'data-reason': r.metric }, el('td', {}, r.family), el('td', {}, r.reason), el('td', { class: 'n' }, fmt(r.count)), el('td', {}, r.metric)),
  );
  table.tBodies[0].replaceChildren(...rows);
}

/**
 * The cluster section (issue 13), shown when this core is a cluster node (status.cluster): its
 * nodes and, per shard, the owners (✓ ready), each owner's consumer lag and the nodes joining,
 * from GET /api/v1/cluster (core/cluster/status.ts). A single node shows nothing.
 */
async function refreshCluster(isCluster) {
  const seq = ++state.clusterSeq;
  const section = $('cluster');
  if (!isCluster) {
    section.hidden = true;
    return;
  }
  let s;
  try {
    s = await api('/api/v1/cluster');
  } catch (err) {
    if (seq !== state.clusterSeq) return;
    // 404: not a cluster node after all (restarted without --nats between the two requests).
    section.hidden = err.status === 404;
    // The tables keep the last answer, if any, under the error line.
    $('cluster-error').textContent = `cluster status: ${err.message}${$('cluster-body').hidden ? '' : ' (the tables show the last answer)'}`;
    $('cluster-error').hidden = false;
    return;
  }
  if (seq !== state.clusterSeq) return;
  section.hidden = false;
  $('cluster-error').hidden = true;
  $('cluster-body').hidden = false;
  // Ready shards as sets: 4096 shards × owners looked up in lists of thousands took too long.
  const nodes = new Map(s.nodes.map((n) => [n.id, { live: n.live, ready: new Set(n.live ? n.ready : []), lag: n.lag }]));
  // Ready owners a shard should have: the owner replicas, or fewer while fewer nodes are live.
  const want = Math.max(1, Math.min(s.settings.ownerReplicas, s.nodes.filter((n) => n.live).length));
  renderClusterSummary(s, nodes, want);
  renderClusterNodes(s);
  renderClusterShards(s, nodes, want);
}

/** Whether `id` is live and has caught up on `shard` (a dead node's last heartbeat does not count). */
function readyOn(nodes, id, shard) {
  return nodes.get(id)?.ready.has(shard) === true;
}

/** An owner's consumer lag for `shard` from its heartbeat: '–' unknown node or none reported, '?' not known yet (-1). */
function lagText(nodes, id, shard) {
  const v = nodes.get(id)?.lag[shard];
  return v === undefined ? '–' : v < 0 ? '?' : fmt(v);
}

function renderClusterSummary(s, nodes, want) {
  const st = s.settings;
  let short = 0;
  s.placement.shards.forEach((x, k) => {
    if (x.owners.filter((o) => readyOn(nodes, o, k)).length < want) short++;
  });
  const live = s.nodes.filter((n) => n.live).length;
  $('cluster-summary').textContent = `seen from ${s.node} · ${live} of ${s.nodes.length} nodes live · ${st.shards} shards, ${st.ownerReplicas} owners each, streams R${st.streamReplicas} · placement revision ${s.placementRevision}`;
  const ready = $('cluster-ready');
  ready.textContent = s.placement.shards.length === 0 ? 'no placement written yet' : short === 0 ? `every shard has ${want} ready owners` : `${short} shards with fewer than ${want} ready owners`;
  ready.className = s.placement.shards.length === 0 || short > 0 ? 'cluster-ready bad' : 'cluster-ready';
}

function renderClusterNodes(s) {
  const owns = new Map();
  const joins = new Map();
  for (const x of s.placement.shards) {
    for (const o of x.owners) owns.set(o, (owns.get(o) ?? 0) + 1);
    for (const j of x.joining) joins.set(j, (joins.get(j) ?? 0) + 1);
  }
  const rows = [...s.nodes].sort((a, b) => a.id.localeCompare(b.id)).map((n) => {
    let lag = 0;
    let unknown = false;
    for (const v of Object.values(n.lag)) {
      if (v < 0) unknown = true;
      else lag += v;
    }
    return el(
      'tr',
      { 'data-node': n.id, class: n.live ? '' : 'dead' },
      el('td', {}, n.id, n.id === s.node ? el('span', { class: 'hint' }, ' (this page)') : ''),
      el('td', { class: n.live ? 'st-reporting' : 'st-silent' }, n.live ? 'live' : 'dead'),
      el('td', { class: 'n' }, String(owns.get(n.id) ?? 0)),
      el('td', { class: 'n' }, String(joins.get(n.id) ?? 0)),
      el('td', { class: 'n' }, String(n.ready.length)),
      el('td', { class: 'n', title: unknown ? 'some shards: not known yet' : '' }, `${fmt(lag)}${unknown ? ' ?' : ''}`),
      el('td', { class: 'n' }, `${(Math.max(0, n.silentMs) / 1000).toFixed(1)} s`),
      el('td', { class: 'mono' }, n.url),
    );
  });
  $('cluster-nodes').tBodies[0].replaceChildren(...rows);
}

/** One row per shard, reused: a row is rebuilt only when its text changed (64-4096 shards, every 5 s). */
function renderClusterShards(s, nodes, want) {
  const tbody = $('cluster-shards').tBodies[0];
  const shards = s.placement.shards;
  const n = Math.min(shards.length, clusterShardRowsMax);
  while (tbody.rows.length > n) tbody.lastElementChild.remove();
  for (let k = 0; k < n; k++) {
    const x = shards[k];
    const owners = x.owners.map((o) => ({ id: o, ready: readyOn(nodes, o, k), lag: lagText(nodes, o, k) }));
    const joining = x.joining.map((j) => ({ id: j, lag: lagText(nodes, j, k) }));
    const sig = JSON.stringify([owners, joining, want]);
    let tr = tbody.rows[k];
    if (tr === undefined) tr = tbody.appendChild(el('tr', { 'data-shard': String(k) }));
    if (tr.dataset.sig === sig) continue;
    tr.dataset.sig = sig;
    const readyCount = owners.filter((o) => o.ready).length;
    tr.className = readyCount === 0 ? 'short bad' : readyCount < want ? 'short' : '';
    const ownerSpans = owners.map((o) => el('span', { class: o.ready ? 'owner ready' : 'owner', 'data-node': o.id, 'data-ready': String(o.ready), title: o.ready ? 'ready: caught up, answers this shard' : 'not ready: catching up, or the node is dead' }, `${o.id} ${o.ready ? '✓' : '✗'}`));
    const lagSpans = owners.map((o) => el('span', { class: 'owner-lag', 'data-node': o.id, title: `${o.id}: messages of this shard's stream not applied yet` }, o.lag));
    const joinSpans = joining.map((j) => el('span', { class: 'joiner', 'data-node': j.id, title: `${j.id}: copying this shard to become an owner; lag ${j.lag}` }, j.id));
    tr.replaceChildren(el('td', { class: 'n' }, String(k)), el('td', {}, ...ownerSpans), el('td', { class: 'n' }, ...lagSpans), el('td', {}, ...joinSpans));
  }
  $('cluster-shards-more').textContent = shards.length > n ? `${shards.length - n} more shards not shown` : '';
}

function renderRacks(status, perRack) {
  const rows = status.racks.map((r) => {
    const st = perRack.get(r.id) ?? { reporting: 0, late: 0, silent: 0 };
    const rep = r.report;
    return el(
      'tr',
      { 'data-rack': r.id },
      el('td', {}, r.id),
      el('td', { class: 'n' }, String(r.servers)),
      el('td', { class: 'n st-reporting' }, String(st.reporting)),
      el('td', { class: 'n st-late' }, String(st.late)),
      el('td', { class: 'n st-silent' }, String(st.silent)),
      el('td', {}, r.lastSeenMs ? fmtAge(status.nowMs - r.lastSeenMs) : '–'),
      el('td', { class: 'n' }, rep ? fmt(rep.partsRecovered) : '–'),
      el('td', { class: 'n' }, rep ? fmt(rep.partsLost) : '–'),
      el('td', { class: 'n' }, rep ? `${fmtBytes(rep.spoolBytes)} (${rep.spoolBatches})` : '–'),
      el('td', {}, r.reportedMs ? fmtAge(status.nowMs - r.reportedMs) : 'none'),
    );
  });
  $('racks').tBodies[0].replaceChildren(...rows);
}

function renderServers(servers, nowMs) {
  const f = $('server-filter').value.trim();
  const re = f === '' ? null : new RegExp(`^${f.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}`);
  const shown = servers.filter((s) => re === null || re.test(s.id)).sort((a, b) => a.id.localeCompare(b.id));
  const rows = shown.slice(0, serverRowsMax).map((s) => {
    const st = serverState(s.lastSeenMs, nowMs);
    return el('tr', { 'data-server': s.id }, el('td', {}, s.id), el('td', {}, s.rack), el('td', { class: `st-${st}` }, st), el('td', {}, fmtAge(nowMs - s.lastSeenMs)), el('td', {}, new Date(s.firstSeenMs).toLocaleString()));
  });
  $('servers').tBodies[0].replaceChildren(...rows);
  $('servers-more').textContent = shown.length > serverRowsMax ? `${shown.length - serverRowsMax} more servers: filter to narrow` : '';
}

// ---- page -------------------------------------------------------------------------------------

function showView(view) {
  for (const b of document.querySelectorAll('.tab')) b.setAttribute('aria-selected', String(b.dataset.view === view));
  $('view-queries').hidden = view !== 'queries';
  $('view-fleet').hidden = view !== 'fleet';
  clearInterval(state.fleetTimer);
  if (view === 'fleet') {
    void refreshFleet();
    state.fleetTimer = setInterval(() => void refreshFleet(), 5000);
  }
}

function showTokenBar(message) {
  $('token-bar').hidden = false;
  $('token-error').textContent = state.token ? message ?? 'token refused' : '';
}

function wire() {
  for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => showView(b.dataset.view));
  $('new-query').addEventListener('click', () => openEditor(null));
  $('cancel').addEventListener('click', () => ($('editor').hidden = true));
  $('editor').addEventListener('submit', (ev) => void saveEditor(ev));
  $('q-text').addEventListener('input', validateSoon);
  $('server-picker').addEventListener('change', (e) => e.target.value && setClause('FROM', e.target.value));
  $('use-metric').addEventListener('click', () => $('metric-picker').value && setClause('SELECT', $('metric-picker').value));
  $('range').addEventListener('change', (e) => {
    if (e.target.value === 'custom') {
      const { fromMs, toMs } = currentRange();
      setRange({ live: false, fromMs, toMs });
    } else setRange({ live: true, spanMs: Number(e.target.value) });
  });
  $('apply').addEventListener('click', () => {
    const fromMs = new Date($('from').value).getTime();
    const toMs = new Date($('to').value).getTime();
    if (!(fromMs < toMs)) return alert('“from” must be before “to”');
    setRange({ live: false, fromMs, toMs });
  });
  $('pan-back').addEventListener('click', () => pan(-1));
  $('pan-forward').addEventListener('click', () => pan(1));
  $('live').addEventListener('click', () => setRange({ live: true }));
  window.addEventListener('hashchange', () => {
    const r = rangeFromHash(location.hash);
    if (r !== null) setRange(r);
  });
  $('server-filter').addEventListener('input', () => void refreshFleet());
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.token = $('token').value.trim();
    localStorage.setItem('apm.token', state.token);
    $('token-bar').hidden = true;
    for (const p of state.panels.values()) p.dispose(false);
    void refreshQueries();
  });
  window.addEventListener('resize', () => state.panels.forEach((p) => p.resize()));
  // Live mode slides the x axis between windows too: about a pixel's worth of time per step
  // (every second over 15 min, every ~2 min over 24 h), not a redraw per second of 17,280 points.
  let slidMs = 0;
  setInterval(() => {
    if (!state.range.live || Date.now() - slidMs < state.range.spanMs / 900) return;
    slidMs = Date.now();
    state.panels.forEach((p) => p.queueRender());
  }, 1000);
}

async function main() {
  wire();
  state.range = { ...state.range, ...rangeFromHash(location.hash) };
  syncRangeControls();
  // For the page bench and a look from the console.
  window.__apm = { panels: state.panels };
  try {
    const s = await api('/api/v1/status');
    state.clockOffsetMs = s.nowMs - Date.now();
  } catch {
    // The token bar or the connection line says why; the rest still loads.
  }
  await refreshQueries();
}

// uPlot is a deferred classic script; modules run after it.
void main();
