// A panel's windows as typed-array columns, what the chart draws from them, and which axis each
// function goes on (issue 15). Plain ES module without DOM use: the page imports it and
// core/ui/columns.test.ts runs it in node.
//
// Why columns: 12 panels × 24 h of 1 s windows is a million windows; as parsed JSON objects in a
// Map they held 230 MiB of JS heap, and every redraw sorted and copied them. Here a window is a
// row of eight numbers and one per function (start, end, servers, count, revision, flags, values).

const flagAdhoc = 1;

/** Windows sorted by start, one row each; a value a window lacks is NaN. */
export class WindowColumns {
  constructor() {
    /** Function keys in the order first seen (the series order). */
    this.keys = [];
    this.n = 0;
    this.cap = 0;
    this.#alloc(0);
  }

  #alloc(cap) {
    const grow = (Type, old, fill) => {
      const a = new Type(cap);
      if (fill !== undefined) a.fill(fill);
      if (old !== undefined) a.set(old.subarray(0, Math.min(this.n, cap)));
      return a;
    };
    this.startMs = grow(Float64Array, this.startMs);
    this.endMs = grow(Float64Array, this.endMs);
    this.servers = grow(Uint32Array, this.servers);
    this.count = grow(Float64Array, this.count);
    this.revision = grow(Uint32Array, this.revision);
    this.flags = grow(Uint8Array, this.flags);
    this.values = (this.values ?? []).map((v) => grow(Float64Array, v, NaN));
    this.cap = cap;
  }

  /** Room for `rows` in all (a load reserves its range's windows: no doubling, no waste). */
  reserve(rows) {
    if (rows > this.cap) this.#alloc(rows);
  }

  #ensure(rows) {
    if (rows > this.cap) this.#alloc(Math.max(rows, this.cap * 2, 64));
  }

  #keyIndex(k) {
    let i = this.keys.indexOf(k);
    if (i < 0) {
      i = this.keys.push(k) - 1;
      this.values.push(new Float64Array(this.cap).fill(NaN));
    }
    return i;
  }

  clear() {
    this.n = 0;
  }

  /** First row whose start is ≥ ms (n when none). */
  lowerBound(ms) {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.startMs[mid] < ms) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  isAdhoc(i) {
    return (this.flags[i] & flagAdhoc) !== 0;
  }

  /** Whether a window replaces row i: a stored window never yields to an older revision. */
  #replaces(i, w) {
    return this.isAdhoc(i) || !(this.revision[i] > w.revision);
  }

  #write(i, w, adhoc) {
    this.startMs[i] = w.startMs;
    this.endMs[i] = w.endMs ?? w.startMs;
    this.servers[i] = w.servers;
    this.count[i] = w.count;
    this.revision[i] = w.revision;
    this.flags[i] = adhoc ? flagAdhoc : 0;
    for (const v of this.values) v[i] = NaN;
    for (const k in w.values) this.values[this.#keyIndex(k)][i] = w.values[k] ?? NaN;
  }

  /** Inserts or replaces one window (a live one: usually after the last row). */
  upsert(w, adhoc = false) {
    const i = this.n > 0 && w.startMs > this.startMs[this.n - 1] ? this.n : this.lowerBound(w.startMs);
    if (i < this.n && this.startMs[i] === w.startMs) {
      if (this.#replaces(i, w)) this.#write(i, w, adhoc);
      return;
    }
    this.#insertAt(i, w, adhoc);
  }

  #insertAt(i, w, adhoc) {
    this.#ensure(this.n + 1);
    if (i < this.n) {
      for (const a of this.#arrays()) a.copyWithin(i + 1, i, this.n);
    }
    this.n++;
    this.#write(i, w, adhoc);
  }

  #arrays() {
    return [this.startMs, this.endMs, this.servers, this.count, this.revision, this.flags, ...this.values];
  }

  /**
   * Merges a batch of windows (a page of history, any order): appended when it comes after the
   * rows, otherwise one merge pass over both — never a shift per window.
   * `keepExisting`: a window already present stays (ad-hoc fills never replace stored results).
   */
  upsertMany(ws, { adhoc = false, keepExisting = false } = {}) {
    if (ws.length === 0) return;
    let sorted = true;
    for (let j = 1; j < ws.length && sorted; j++) sorted = ws[j - 1].startMs < ws[j].startMs;
    if (!sorted) ws = [...ws].sort((a, b) => a.startMs - b.startMs);
    // Every key first: the merge below moves the value columns that exist when it starts.
    for (const w of ws) for (const k in w.values) this.#keyIndex(k);
    if (this.n === 0 || ws[0].startMs > this.startMs[this.n - 1]) {
      this.#ensure(this.n + ws.length);
      for (const w of ws) this.#write(this.n++, w, adhoc);
      return;
    }
    if (ws[ws.length - 1].startMs < this.startMs[0]) {
      // An older page (history loads newest first): the rows move right once, as a block.
      this.#ensure(this.n + ws.length);
      for (const a of this.#arrays()) a.copyWithin(ws.length, 0, this.n);
      ws.forEach((w, j) => this.#write(j, w, adhoc));
      this.n += ws.length;
      return;
    }
    // Merge from the back into room made at the end: old rows move right at most once.
    const extra = ws.length;
    this.#ensure(this.n + extra);
    const arrays = this.#arrays();
    for (const a of arrays) a.copyWithin(extra, 0, this.n);
    let src = extra; // next old row
    const srcEnd = this.n + extra;
    let out = 0;
    for (const w of ws) {
      while (src < srcEnd && this.startMs[src] < w.startMs) this.#move(arrays, src++, out++);
      if (src < srcEnd && this.startMs[src] === w.startMs) {
        this.#move(arrays, src++, out);
        if (!keepExisting && this.#replaces(out, w)) this.#write(out, w, adhoc);
        out++;
      } else this.#write(out++, w, adhoc);
    }
    if (out === src) out = srcEnd; // the rest of the old rows are in place
    else while (src < srcEnd) this.#move(arrays, src++, out++);
    this.n = out;
  }

  #move(arrays, from, to) {
    if (from !== to) for (const a of arrays) a[to] = a[from];
  }

  /** Drops the rows before `ms` (a live range slid past them); amortized: at least 1/64 of them. */
  /**
   * A live window: stored, and rows before `keepFromMs` dropped (amortized, see dropBefore). Here
   * and not only when the chart is drawn: a hidden tab draws nothing (no animation frames) while
   * its live stream goes on, and its rows grew for days.
   */
  upsertLive(w, keepFromMs) {
    this.upsert(w);
    this.dropBefore(keepFromMs);
  }

  dropBefore(ms) {
    const k = this.lowerBound(ms);
    if (k === 0 || k < Math.max(64, this.n >> 6)) return;
    for (const a of this.#arrays()) a.copyWithin(0, k, this.n);
    this.n -= k;
  }

  /** Keeps only the rows `keep(i)` says (ad-hoc windows sized for another range go). */
  filter(keep) {
    const arrays = this.#arrays();
    let out = 0;
    for (let i = 0; i < this.n; i++) if (keep(i)) this.#move(arrays, i, out++);
    this.n = out;
  }

  /** A row as the API's window object (for the latest line, hover, tests). */
  row(i) {
    const values = {};
    this.keys.forEach((k, j) => {
      const v = this.values[j][i];
      if (!Number.isNaN(v)) values[k] = v;
    });
    return { startMs: this.startMs[i], endMs: this.endMs[i], servers: this.servers[i], count: this.count[i], values, revision: this.revision[i], adhoc: this.isAdhoc(i) };
  }

  /** The row whose window holds `ms`, else the nearest start within `slackMs`; -1 when none. */
  rowAt(ms, slackMs) {
    const i = this.lowerBound(ms + 1) - 1; // last start ≤ ms
    if (i >= 0 && ms < Math.max(this.endMs[i], this.startMs[i] + 1)) return i;
    let best = -1;
    let dist = slackMs;
    for (const j of [i, i + 1]) {
      if (j < 0 || j >= this.n) continue;
      const d = Math.abs(this.startMs[j] - ms);
      if (d <= dist) {
        best = j;
        dist = d;
      }
    }
    return best;
  }
}

/**
 * Rows to reserve for a range's history: its windows, but no more than the pages a load fetches
 * (each of at most `windowsPerAnswer`) and a margin for live windows and an ad-hoc fill. Before,
 * every window of the range was reserved, and the page filled each function's column with NaN:
 * a link with from=0 asked for 359 M rows (2.9 GB a function), and the tab ran out of memory.
 */
export function historyRows(fromMs, toMs, windowMs, pagesMax, windowsPerAnswer) {
  const windows = Math.max(0, Math.ceil((toMs - fromMs) / windowMs));
  return Math.min(windows, pagesMax * windowsPerAnswer) + windowsPerAnswer + 64;
}

/**
 * What uPlot draws for rows [lo, hi): every window when they are at most 2 per pixel column,
 * otherwise per bucket of ≥ 1 pixel (aligned to absolute time, a whole number of windows, so a
 * sliding live range does not reshuffle them) each function's minimum and maximum in the order
 * they occurred — the same pixels as drawing every window, from ~2 points per pixel. A gap longer
 * than 1.5 windows (or than a bucket) breaks the line. `rowOf[i]` is the row of point i when
 * every window is drawn (-1 for a break), null when decimated: the hover then looks the time up.
 */
export function plotColumns(cols, { lo, hi, windowMs, fromMs, toMs, pixels }) {
  const px = Math.max(1, Math.floor(pixels));
  if (hi - lo <= 2 * px) return plotEvery(cols, lo, hi, windowMs);
  return plotBuckets(cols, { lo, hi, windowMs, bucketMs: Math.ceil((toMs - fromMs) / px / windowMs) * windowMs });
}

/** Every window of rows [lo, hi), a null point where a gap exceeds 1.5 windows. */
function plotEvery(cols, lo, hi, windowMs) {
  const xs = [];
  const ys = cols.keys.map(() => []);
  const rowOf = [];
  for (let i = lo; i < hi; i++) {
    if (i > lo) {
      const prevWidth = cols.endMs[i - 1] - cols.startMs[i - 1];
      if (cols.startMs[i] - cols.startMs[i - 1] > 1.5 * Math.max(windowMs, prevWidth)) {
        xs.push((cols.endMs[i - 1] + 1) / 1000);
        for (const y of ys) y.push(null);
        rowOf.push(-1);
      }
    }
    xs.push(cols.startMs[i] / 1000);
    ys.forEach((y, j) => {
      const v = cols.values[j][i];
      y.push(Number.isNaN(v) ? null : v);
    });
    rowOf.push(i);
  }
  return { data: [xs, ...ys], rowOf, bucketMs: 0 };
}

/** Each bucket's minimum and maximum per function, in the order they occurred. */
function plotBuckets(cols, { lo, hi, windowMs, bucketMs }) {
  const xs = [];
  const ys = cols.keys.map(() => []);
  const k = cols.keys.length;
  const min = new Float64Array(k);
  const max = new Float64Array(k);
  const minAt = new Int32Array(k);
  const maxAt = new Int32Array(k);
  let bucket = NaN;
  let lastEnd = 0;
  const flush = () => {
    const b0 = bucket * bucketMs;
    xs.push((b0 + bucketMs * 0.25) / 1000, (b0 + bucketMs * 0.75) / 1000);
    for (let j = 0; j < k; j++) {
      if (minAt[j] < 0) ys[j].push(null, null);
      else if (minAt[j] <= maxAt[j]) ys[j].push(min[j], max[j]);
      else ys[j].push(max[j], min[j]);
    }
  };
  for (let i = lo; i < hi; i++) {
    const s = cols.startMs[i];
    const b = Math.floor(s / bucketMs);
    if (b !== bucket) {
      if (!Number.isNaN(bucket)) {
        flush();
        // A gap of at least a bucket shows as a break (between the two buckets' points).
        if (s - lastEnd >= bucketMs) {
          xs.push(((bucket + 1) * bucketMs) / 1000);
          for (const y of ys) y.push(null);
        }
      }
      bucket = b;
      min.fill(Infinity);
      max.fill(-Infinity);
      minAt.fill(-1);
      maxAt.fill(-1);
    }
    for (let j = 0; j < k; j++) {
      const v = cols.values[j][i];
      if (Number.isNaN(v)) continue;
      if (v < min[j]) {
        min[j] = v;
        minAt[j] = i;
      }
      if (v > max[j]) {
        max[j] = v;
        maxAt[j] = i;
      }
    }
    lastEnd = Math.max(cols.endMs[i], s + windowMs);
  }
  if (!Number.isNaN(bucket)) flush();
  return { data: [xs, ...ys], rowOf: null, bucketMs };
}

/** Functions in the metric's own unit: they share an axis so their lines compare (p99 vs avg). */
const valueFns = /^(min|max|avg|percentile\(.*\))$/;

/**
 * Which axis each function goes on: 'left' or 'right' (at most two; more would be unreadable).
 * By kind, not by magnitude alone: min, max, avg and percentiles are in the metric's unit and must
 * stay comparable on one axis; sum (unit × observations) and count (observations) are totals that
 * grow with the fleet and the window and would flatten them (sum 2.8 M beside avg 596). So values
 * go left, totals right; when all three kinds are there, count joins whichever of the other two
 * is nearer its order of magnitude (`magnitude(key)`: the largest |value| in range, or NaN).
 */
export function axisOf(keys, magnitude) {
  const kind = (k) => (valueFns.test(k) ? 'value' : k === 'sum' ? 'sum' : 'count');
  const kinds = new Set(keys.map(kind));
  const side = new Map();
  if (kinds.size <= 1) {
    for (const k of keys) side.set(k, 'left');
    return side;
  }
  let countWith = 'right';
  if (kinds.size === 3) {
    const log = (ks) => {
      const m = Math.max(...ks.map((k) => Math.abs(magnitude(k))).filter((v) => Number.isFinite(v) && v > 0));
      return m > 0 && Number.isFinite(m) ? Math.log10(m) : NaN;
    };
    const c = log(keys.filter((k) => kind(k) === 'count'));
    const v = log(keys.filter((k) => kind(k) === 'value'));
    const s = log(keys.filter((k) => kind(k) === 'sum'));
    countWith = Math.abs(c - v) < Math.abs(c - s) ? 'left' : 'right';
  }
  for (const k of keys) {
    const kk = kind(k);
    // Without values (count and sum only), sum takes the left.
    const left = kinds.has('value') ? kk === 'value' || (kk === 'count' && countWith === 'left') : kk === 'sum';
    side.set(k, left ? 'left' : 'right');
  }
  return side;
}
