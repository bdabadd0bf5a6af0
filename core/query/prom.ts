// The read side of the Prometheus HTTP API (issue 15), so that Grafana's built-in Prometheus
// data source, promtool and any Prometheus client can chart apm. The `query` parameter carries
// apm's own language (Grafana passes the text through):
//   FROM web-* SELECT rpc.latency [WINDOW 5s] COMPUTE min, max, avg, p99
// and the answers have Prometheus' shapes: one series per function, labelled
// {__name__: metric, function: "p99" | "avg" | …, query: the canonical text evaluated}.
//
// Semantics (README "Grafana"):
// - A sample at time t is the window that ENDS at t, [t − W, t): Prometheus' range functions
//   look back from their evaluation time (max_over_time(x[5s]) at t covers (t − 5s, t]), so a
//   Prometheus user reads an apm sample the same way, and a sample never shows data from after
//   its timestamp. Only complete windows are answered: ending at or before both `end` and
//   now − promSettleMs (the 3 s stored queries also wait: racks close a second about 2 s after
//   it ends and forward it), so the newest point does not dip while its data is on its way.
// - query_range: `step` becomes the WINDOW when the text has none. With WINDOW W, step < W is
//   refused (a step finer than the windows would invent samples), and step ≥ W evaluates windows
//   of W × ceil(step / W): Grafana zoomed out gets coarser windows. Merging the summaries of a
//   coarser window is exact for min/max/sum/count/avg; percentiles are the same computation
//   (exact values or merged sketches) over the coarser window.
// - query (instant): the newest complete window ending at or before `time` (default now), one
//   sample per function at that window's end. An instant query has no step: it needs WINDOW.
//   `1+1` and other arithmetic of two number literals answer a scalar: Grafana's "Save & test"
//   sends `1+1` (pkg/promlib/healthcheck.go).
// - Lists (labels, label values, series, metadata) come from the registries, not filtered by
//   time (first/last seen are arrival times, not data times), each bounded by promLimits.
// Errors: {"status":"error","errorType":…,"error":…} with 400 bad_data, 422 execution, 503
// timeout / unavailable, as Prometheus answers.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Context, Hono } from 'hono';
import { coreLimits } from '../limits.js';
import { WorkerError, type ShardPool } from '../pool.js';
import type { WorkerMetric } from '../protocol.js';
import type { ServerTable } from '../servers.js';
import type { QueryCatalog } from './catalog.js';
import { evalLimitReasonOf, type WindowResult } from './eval.js';
import { compileGlob, GlobError } from './glob.js';
import { decimalText, fnKey, parseQuery, QueryError, queryLimits, type Fn, type Query } from './parse.js';
import { timeLimits } from './time.js';

export const promLimits = {
  /** Windows in one query_range answer: the ad-hoc query's bound (1 h of 1 s windows), which
   * the evaluation bound (coreLimits.evalWindowsMax) is sized for. Prometheus' own is 11,000. */
  windowsPerAnswerMax: 3600,
  /** Values in one label-values, series or metadata answer: Grafana shows at most 10,000
   * suggestions (SUGGESTIONS_LIMIT in its language provider); more is truncated with a warning. */
  listValuesMax: 10_000,
  /** match[] selectors in one request: a query editor sends one or two. */
  matchersMax: 32,
  /** Characters of one match[] selector: a metric name (128) with matchers around it. */
  selectorCharsMax: 1024,
  /** Alternatives of one =~ regex (`a|b|c`): a Grafana multi-value variable's worth. */
  regexAlternativesMax: 256,
  /**
   * Name tests one label-values or series request may make (names × its selectors' matcher
   * costs, Matcher.cost), on the HTTP thread: ~0.1 µs each, so ~0.5 s at most. 12 selectors of
   * 165 wildcard alternatives over 20,000 metrics held the thread 5 s.
   */
  matchTestsMax: 4_000_000,
} as const;

/** Prometheus' error types, with the status each is answered with. */
const errorStatus = { bad_data: 400, execution: 422, timeout: 503, unavailable: 503 } as const;
export type PromErrorType = keyof typeof errorStatus;

/** A refused Prometheus request: its errorType (and so its HTTP status) and what to do. */
export class PromError extends Error {
  constructor(
    readonly type: PromErrorType,
    message: string,
    /** The refusal reason counted at /metrics, when the status alone does not say it. */
    readonly reason?: string,
  ) {
    super(message);
  }
  get status(): 400 | 422 | 503 {
    return errorStatus[this.type];
  }
}

/** A float as Prometheus writes sample values: shortest round-trip decimal, NaN, +Inf, -Inf. */
export function promFloat(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return decimalText(v);
}

const durationUnitMs: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000, y: 31_536_000_000 };

/** A Prometheus duration (`5s`, `1m30s`, `500ms`) or float seconds (`15`, `0.5`) in ms; throws PromError naming `name`. */
export function promDurationMs(value: string | undefined, name: string): number {
  if (value === undefined || value === '') throw new PromError('bad_data', `missing ${name}=<duration> (e.g. 5s, or seconds like 5)`);
  const v = value.trim();
  if (v.length > promNumberCharsMax) throw tooLong(name, value);
  let ms: number | null = null;
  if (goFloat.test(v)) ms = Number(v) * 1000;
  else if (promDuration.test(v)) {
    ms = 0;
    for (const m of v.matchAll(/(\d+)(ms|[smhdwy])/g)) ms += Number(m[1]) * durationUnitMs[m[2]!]!;
  }
  if (ms === null || !Number.isFinite(ms)) throw new PromError('bad_data', `invalid parameter ${name}=${JSON.stringify(value.slice(0, 40))}: not a duration like 5s, 1m30s or seconds like 5`);
  if (ms <= 0) throw new PromError('bad_data', `invalid parameter ${name}=${JSON.stringify(value)}: zero or negative query resolution step widths are not accepted; give a positive step like 5s`);
  return ms;
}

/**
 * A decimal number as Prometheus (Go's ParseFloat) reads times and steps: 1700000000, 1.7e9, .5,
 * -3, 1e1. Unambiguous (before, `\d+\.?\d*` could split a run of digits n ways: 32 KB of digits
 * and an `x` held the HTTP thread 1.8 s), and tried only on values of at most promNumberCharsMax.
 */
const goFloat = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
/** Longest time, step or duration value read (a float has at most ~25 characters, an RFC 3339 time 35). */
const promNumberCharsMax = 64;
function tooLong(name: string, value: string): PromError {
  return new PromError('bad_data', `invalid parameter ${name}=${JSON.stringify(value.slice(0, 40))}…: longer than ${promNumberCharsMax} characters, no time or duration is`);
}

/** Prometheus' duration: units in order y w d h m s ms, each at most once (`1s1m`, `1h1h` are refused, as Prometheus does). */
const promDuration = /^(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m(?!s))?(\d+s)?(\d+ms)?$/;

/** Whether an RFC 3339 time's date and clock exist (Date.parse took 2026-02-30 for March 2 and 24:00:00 for the next day; Go refuses both). */
function validCalendar(v: string): boolean {
  const [y, mo, d, h, mi, s] = [v.slice(0, 4), v.slice(5, 7), v.slice(8, 10), v.slice(11, 13), v.slice(14, 16), v.slice(17, 19)].map(Number) as [number, number, number, number, number, number];
  const daysIn = new Date(Date.UTC(y, mo, 0)).getUTCDate();
  return mo >= 1 && mo <= 12 && d >= 1 && d <= daysIn && h <= 23 && mi <= 59 && s <= 59;
}

/** A Prometheus time (Unix seconds, possibly fractional, or RFC 3339) in ms, or `fallbackMs` when absent. */
export function promTimeMs(value: string | undefined, fallbackMs: number, name: string): number {
  if (value === undefined || value === '') return fallbackMs;
  const v = value.trim();
  if (v.length > promNumberCharsMax) throw tooLong(name, value);
  let ms = NaN;
  if (goFloat.test(v)) ms = Math.round(Number(v) * 1000);
  // RFC 3339 says the zone (Z or ±hh:mm); without it Date.parse takes this machine's local time.
  else if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(v) && validCalendar(v)) ms = Date.parse(v);
  if (!Number.isFinite(ms)) throw new PromError('bad_data', `invalid parameter ${name}=${JSON.stringify(value.slice(0, 40))}: not Unix seconds (e.g. 1700000000.5) or an RFC 3339 time`);
  if (ms < timeLimits.timeMsMin || ms > timeLimits.timeMsMax) {
    throw new PromError('bad_data', `invalid parameter ${name}=${JSON.stringify(value.slice(0, 40))}: outside 1970..2106, the times apm stores (32-bit Unix seconds)`);
  }
  return ms;
}

function requiredTimeMs(p: { get(name: string): string | undefined }, name: string): number {
  const v = p.get(name);
  if (v === undefined || v === '') throw new PromError('bad_data', `missing ${name}=<Unix seconds or RFC 3339 time>`);
  return promTimeMs(v, NaN, name);
}

/** The label value of a function: p99, p99.9, min, avg… (the `function` label). */
export function fnLabel(f: Fn): string {
  return f.type === 'percentile' ? `p${decimalText(f.p)}` : f.type;
}

/** Whether the query text has a WINDOW clause (keywords are whole words between spaces or commas). */
function hasWindow(text: string): boolean {
  return text.split(/[\s,]+/).some((w) => w.toUpperCase() === 'WINDOW');
}

const promqlHint = 'apm reads its own query language here, not PromQL: FROM <servers> SELECT <metric> [WINDOW <d>] COMPUTE <functions>, e.g. FROM web-* SELECT rpc.latency COMPUTE avg, p99 (in Grafana: the Code editor)';

/**
 * Parses apm query text from a Prometheus client. Without WINDOW, `windowSeconds` (the step) is
 * added before COMPUTE; the parser itself keeps requiring WINDOW for every other caller. A text
 * that is not apm's language gets the PromQL hint.
 */
export function parseForProm(text: string, windowSeconds: number | null): { q: Query; windowGiven: boolean } {
  if (!/^\s*FROM\s/i.test(text)) throw new PromError('bad_data', `${promqlHint}; got ${JSON.stringify(text.slice(0, 80))}`);
  try {
    if (hasWindow(text)) return { q: parseQuery(text), windowGiven: true };
    if (windowSeconds === null) throw new PromError('bad_data', `an instant query has no step to take the window from: add WINDOW <duration> to ${JSON.stringify(text.slice(0, 80))}, e.g. ... WINDOW 1m COMPUTE ...`);
    const m = /\sCOMPUTE(?=\s)/i.exec(text);
    if (m === null) return { q: parseQuery(text), windowGiven: false }; // the parser says what is missing
    return { q: parseQuery(`${text.slice(0, m.index)} WINDOW ${windowSeconds}s${text.slice(m.index)}`), windowGiven: false };
  } catch (err) {
    if (err instanceof QueryError) throw new PromError('bad_data', `${err.message} (query ${JSON.stringify(text.slice(0, 200))})`);
    throw err;
  }
}

/**
 * The same query with another window (its canonical text holds " WINDOW <d> " once: keywords are
 * never selectors or metrics). The worker parses the text again, so a text the new window
 * takes past the length limit (`WINDOW 1s` → `WINDOW 10s` at 4,096 characters) is refused here
 * as bad_data (it was a 500, then a 422 from the worker).
 */
export function withWindowSeconds(q: Query, windowSeconds: number): Query {
  if (q.windowSeconds === windowSeconds) return q;
  const text = q.text.replace(/ WINDOW \S+ COMPUTE /, ` WINDOW ${windowSeconds}s COMPUTE `);
  if (text.length > queryLimits.queryCharsMax) throw new PromError('bad_data', `with the step's window (WINDOW ${windowSeconds}s) the query is ${text.length} characters > limit ${queryLimits.queryCharsMax}; shorten it by a few characters, or zoom in`);
  return { ...q, windowSeconds, text };
}

export interface RangePlan {
  /** The query evaluated (its window is the effective one). */
  q: Query;
  /** Windows to evaluate: those ending in [firstEndMs, lastEndMs] (none when lastEndMs < firstEndMs). */
  firstEndMs: number;
  lastEndMs: number;
  windows: number;
  warnings: string[];
}

/**
 * What a query_range evaluates: the effective window from the text's WINDOW and `step`, and the
 * complete windows whose end lies in [start, min(end, now)]; throws PromError past the bounds.
 */
/** A window is answered once this long past its end: its seconds have reached the core (racks close a second ~2 s late). */
export const promSettleMs = 3000;

export function planRange(text: string, o: { startMs: number; endMs: number; stepMs: number; nowMs: number }): RangePlan {
  if (o.endMs < o.startMs) throw new PromError('bad_data', `invalid parameter end: end timestamp (${o.endMs / 1000}) must not be before start time (${o.startMs / 1000})`);
  if (o.endMs - o.startMs > coreLimits.adHocRangeMsMax) throw new PromError('bad_data', `start..end spans ${Math.round((o.endMs - o.startMs) / 86_400_000)} days > the ad-hoc limit of ${coreLimits.adHocRangeMsMax / 86_400_000} days; narrow the time range, or make it a stored query`);
  const warnings: string[] = [];
  const stepSeconds = o.stepMs / 1000;
  const stepWindow = Math.max(1, Math.ceil(stepSeconds - 1e-9));
  const { q: asked, windowGiven } = parseForProm(text, Math.min(stepWindow, queryLimits.windowSecondsMax));
  let W = windowGiven ? asked.windowSeconds : stepWindow;
  if (windowGiven) {
    if (stepSeconds < W - 1e-9) {
      throw new PromError('bad_data', `step ${stepSeconds}s is shorter than the query's WINDOW ${W}s: each sample is one window, so samples cannot be closer than W; set the step (Grafana: Min step, or Min interval) to ${W}s or more, or drop WINDOW to take the step as the window`);
    }
    W *= Math.ceil(stepSeconds / W - 1e-9);
    if (W !== asked.windowSeconds) warnings.push(`step ${stepSeconds}s > WINDOW ${asked.windowSeconds}s: evaluated with WINDOW ${W}s (whole windows of the query merged)`);
  } else if (stepSeconds < 1) warnings.push(`step ${stepSeconds}s is finer than apm's 1 s resolution: evaluated with WINDOW 1s`);
  if (W > queryLimits.windowSecondsMax) throw new PromError('bad_data', `step ${stepSeconds}s makes windows of ${W}s > the longest WINDOW, ${queryLimits.windowSecondsMax}s; narrow the time range or lower the step`);
  const q = withWindowSeconds(asked, W);
  const Wms = W * 1000;
  // The first window starts at the epoch at the earliest.
  const firstEndMs = Math.max(Wms, Math.ceil(o.startMs / Wms) * Wms);
  const lastEndMs = Math.floor(Math.min(o.endMs, o.nowMs) / Wms) * Wms;
  const windows = lastEndMs < firstEndMs ? 0 : (lastEndMs - firstEndMs) / Wms + 1;
  if (windows > promLimits.windowsPerAnswerMax) {
    throw new PromError('bad_data', `exceeded maximum resolution: ${windows} windows of ${W}s > ${promLimits.windowsPerAnswerMax} per answer; raise the step (Grafana: Min step or Max data points) or narrow the time range`, 'too_many_windows');
  }
  return { q, firstEndMs, lastEndMs, windows, warnings };
}

type Labels = Record<string, string>;

/** The labels of a query's series per distinct function, in the query's order. */
function seriesOf(q: Query): { key: string; metric: Labels }[] {
  const seen = new Set<string>();
  const out: { key: string; metric: Labels }[] = [];
  for (const f of q.functions) {
    const key = fnKey(f);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ key, metric: { __name__: q.metric, function: fnLabel(f), query: q.text } });
  }
  return out;
}

/** Prometheus `matrix`: one series per function, a sample at each window's end; series without samples left out. */
export function toMatrix(q: Query, windows: readonly WindowResult[]): { metric: Labels; values: [number, string][] }[] {
  return seriesOf(q)
    .map(({ key, metric }) => ({ metric, values: windows.filter((w) => w.values[key] !== undefined).map((w): [number, string] => [w.endMs / 1000, promFloat(w.values[key]!)]) }))
    .filter((s) => s.values.length > 0);
}

/** Prometheus `vector`: one sample per function from one window, at its end. */
export function toVector(q: Query, w: WindowResult | undefined): { metric: Labels; value: [number, string] }[] {
  if (w === undefined) return [];
  return seriesOf(q)
    .filter(({ key }) => w.values[key] !== undefined)
    .map(({ key, metric }) => ({ metric, value: [w.endMs / 1000, promFloat(w.values[key]!)] }));
}

/** `a op b` of two number literals, or one literal: Grafana's health check sends `1+1`. Null for anything else. */
export function scalarLiteral(text: string): number | null {
  const num = '([+-]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:[eE][+-]?\\d+)?)';
  const m = new RegExp(`^\\s*${num}\\s*(?:([-+*/%^])\\s*${num}\\s*)?$`).exec(text);
  if (m === null) return null;
  const a = Number(m[1]);
  if (m[2] === undefined) return a;
  const b = Number(m[3]);
  switch (m[2]) {
    case '+':
      return a + b;
    case '-':
      return a - b;
    case '*':
      return a * b;
    case '/':
      return a / b;
    case '%':
      return a % b;
    default:
      return a ** b;
  }
}

/** Why an evaluation in a worker failed, as a Prometheus error. */
export function evalFailure(err: WorkerError): PromError {
  const reason = evalLimitReasonOf(err.message);
  if (reason === 'time_budget') return new PromError('timeout', `${err.message} (the core's ad-hoc budget, adHocEvalMs ${coreLimits.adHocEvalMs} ms)`, 'time_budget');
  if (reason === 'too_many_windows') return new PromError('bad_data', err.message, 'too_many_windows');
  // A worker that is busy, restarting or stopping: retry (a busy worker's refusal was answered 422
  // execution, which Grafana and promtool take as final, while apm's own route answered 503).
  if (/did not answer within|is starting|is restarting|before answering|queries waiting|past its deadline|is stopping|could not be sent/.test(err.message)) return new PromError('unavailable', err.message);
  return new PromError('execution', err.message);
}

// ---- selectors (match[]) ----

type MatchOp = '=' | '!=' | '=~' | '!~';
export interface Matcher {
  name: string;
  op: MatchOp;
  value: string;
  /** For =~ and !~: the value as globs (a subset of RE2 that cannot backtrack: issue 16.1). */
  test: (s: string) => boolean;
  /** Tests one name costs: 1, or a regex's wildcard alternatives (+1 for its literal ones, one set lookup). */
  cost: number;
}

/**
 * A Prometheus series selector: `name`, `name{l="v", …}`, `{l=~"re", …}` or `{"quoted.name"}`.
 * Regexes are the subset that maps onto apm's globs (literals, `.`, `.*`, `.+`, `|`, one group
 * around the whole): no RegExp is built from client text.
 */
export function parseSelector(sel: string): Matcher[] {
  if (sel.length > promLimits.selectorCharsMax) throw new PromError('bad_data', `match[] selector is ${sel.length} characters > ${promLimits.selectorCharsMax}`);
  const s = sel.trim();
  const bad = (why: string) => new PromError('bad_data', `invalid match[] ${JSON.stringify(s.slice(0, 80))}: ${why}; expected a metric name or {__name__="…"} (apm metrics are [A-Za-z0-9_.:-])`);
  const out: Matcher[] = [];
  const head = /^[A-Za-z0-9_.:-]+/.exec(s);
  if (head !== null) out.push(matcher('__name__', '=', head[0]));
  const rest = s.slice(head?.[0].length ?? 0).trim();
  if (rest === '') {
    if (out.length === 0) throw bad('empty selector');
    return out;
  }
  if (!rest.startsWith('{') || !rest.endsWith('}')) throw bad('expected {…} after the name');
  const body = rest.slice(1, -1);
  // Items: l op "v" | "quoted name" ; values in "…", '…' or `…`.
  const item = /\s*(?:([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)|("(?:[^"\\]|\\.)*"))\s*(,|$)/y;
  let at = 0;
  while (at < body.length) {
    item.lastIndex = at;
    const m = item.exec(body);
    if (m === null) throw bad(`cannot read the matcher at ${JSON.stringify(body.slice(at, at + 30))}`);
    if (m[4] !== undefined) out.push(matcher('__name__', '=', unquote(m[4])));
    else out.push(matcher(m[1]!, m[2] as MatchOp, unquote(m[3]!)));
    at = item.lastIndex;
    if (m[5] === '') break;
  }
  if (out.length === 0) throw bad('no matchers');
  return out;
}

function unquote(q: string): string {
  const inner = q.slice(1, -1);
  return q.startsWith('`') ? inner : inner.replace(/\\(.)/g, '$1');
}

function matcher(name: string, op: MatchOp, value: string): Matcher {
  if (op === '=' || op === '!=') return { name, op, value, test: (s) => (s === value) === (op === '='), cost: 1 };
  const alts = regexAsGlobs(value);
  // Literal alternatives (a Grafana multi-value variable: a|b|c) in one set, the wildcard ones tested each.
  const literals = new Set(alts.flatMap((a) => (typeof a === 'string' ? [a] : [])));
  const globs = alts.flatMap((a) => (typeof a === 'string' ? [] : [a]));
  const any = (s: string) => literals.has(s) || globs.some((t) => t(s));
  return { name, op, value, test: op === '=~' ? any : (s) => !any(s), cost: globs.length + (literals.size > 0 ? 1 : 0) };
}

/**
 * A regex of the supported subset as one entry per alternative: the name it is (no wildcard), or
 * its test; PromError for anything else.
 */
function regexAsGlobs(re: string): (string | ((s: string) => boolean))[] {
  let body = unanchored(re);
  const group = /^\((?:\?:)?(.*)\)$/.exec(body);
  if (group !== null && !/[()]/.test(group[1]!)) body = group[1]!;
  const alts = body.split('|').map(unanchored);
  if (alts.length > promLimits.regexAlternativesMax) throw new PromError('bad_data', `regex ${JSON.stringify(re.slice(0, 60))} has ${alts.length} alternatives > ${promLimits.regexAlternativesMax}`);
  return alts.map((alt) => {
    let glob = '';
    let wild = false;
    // An escaped character no server, rack or metric name holds: the alternative matches nothing
    // (before, `\[`, `\]` or `\*` went into the glob as its syntax: a 500, or a character set).
    let never = false;
    for (let i = 0; i < alt.length; i++) {
      const ch = alt[i]!;
      if (ch === '\\' && i + 1 < alt.length && /[^A-Za-z0-9]/.test(alt[i + 1]!)) {
        const lit = alt[++i]!;
        if (/[._:-]/.test(lit)) glob += lit;
        else never = true;
      } else if (ch === '.' && (alt[i + 1] === '*' || alt[i + 1] === '+')) {
        glob += alt[++i] === '*' ? '*' : '?*';
        wild = true;
      } else if (ch === '.') {
        glob += '?';
        wild = true;
      } else if (/[A-Za-z0-9_:-]/.test(ch)) glob += ch;
      else throw new PromError('bad_data', `regex ${JSON.stringify(re.slice(0, 60))}: apm matches names with literals, ., .*, .+ and | only (no ${JSON.stringify(ch)}); escape a literal dot as \\.`);
    }
    if (never) return () => false;
    if (!wild) return glob;
    if (glob.includes(':')) throw new PromError('bad_data', `regex ${JSON.stringify(re.slice(0, 60))}: ':' together with wildcards is not supported; list the names with |`);
    try {
      return compileGlob(glob);
    } catch (err) {
      if (err instanceof GlobError) throw new PromError('bad_data', `regex ${JSON.stringify(re.slice(0, 60))}: ${err.message}`);
      throw err;
    }
  });
}

/** Without a leading ^ and a trailing unescaped $: Prometheus anchors every regex at both ends anyway. */
function unanchored(re: string): string {
  let out = re.startsWith('^') ? re.slice(1) : re;
  if (out.endsWith('$') && !/(^|[^\\])(\\\\)*\\\$$/.test(out)) out = out.slice(0, -1);
  return out;
}

/** The names matching any selector; bad_data when that would take more than `testsMax` tests (on the HTTP thread). */
export function namesMatching(names: readonly string[], selectors: readonly (readonly Matcher[])[], testsMax: number = promLimits.matchTestsMax): string[] {
  const cost = selectors.reduce((a, sel) => a + sel.reduce((b, m) => b + m.cost, 0), 0);
  if (names.length * cost > testsMax) {
    throw new PromError('bad_data', `match[] would test ${names.length} metric names ${cost} times each (> ${testsMax} tests); use fewer wildcard alternatives (literal names cost one lookup), or fewer selectors`);
  }
  return names.filter((m) => selectors.some((sel) => matches(sel, { __name__: m })));
}

/** Whether a series' labels satisfy every matcher (an absent label is ""). */
export function matches(ms: readonly Matcher[], labels: Labels): boolean {
  return ms.every((m) => m.test(labels[m.name] ?? ''));
}

// ---- routes ----

/** The Prometheus API's routes besides /api/v1/query* (rate limits and refusal counts key on it). */
export const promPath = /^\/api\/v1\/(labels|label\/[^/]+\/values|series|metadata|status\/buildinfo|rules|format_query)$/;

/** Request parameters: the URL's and, for a form POST, the body's (the body wins for single values, as Go's FormValue). */
class Params {
  constructor(
    private readonly url: URLSearchParams,
    private readonly form: URLSearchParams | null,
  ) {}
  static async of(c: Context): Promise<Params> {
    const url = new URL(c.req.url).searchParams;
    const type = c.req.header('content-type') ?? '';
    const form = c.req.method === 'POST' && type.toLowerCase().startsWith('application/x-www-form-urlencoded') ? new URLSearchParams(await c.req.text()) : null;
    return new Params(url, form);
  }
  get(name: string): string | undefined {
    return this.form?.get(name) ?? this.url.get(name) ?? undefined;
  }
  all(name: string): string[] {
    return [...(this.form?.getAll(name) ?? []), ...this.url.getAll(name)];
  }
}

export interface PromParts {
  pool: ShardPool;
  servers: ServerTable;
  stored: QueryCatalog;
}

/** Counters of the Prometheus routes, exported at /metrics. */
export interface PromCounters {
  /** List answers cut at promLimits.listValuesMax (or the client's limit), by route. */
  truncated: Record<string, number>;
}

/** The functions apm computes, as `function` label values (any pNN with 0 ≤ NN ≤ 100 works). */
const functionLabels = ['avg', 'count', 'max', 'min', 'p50', 'p90', 'p95', 'p99', 'p99.9', 'sum'];
const labelNames = ['__name__', 'function', 'query', 'rack', 'server'];

/** Registers the Prometheus read routes; GET /api/v1/query?query= arrives through routes.ts (promInstant). */
export function addPromRoutes(app: Hono, parts: PromParts): PromCounters {
  const counters: PromCounters = { truncated: {} };
  const { pool, servers, stored } = parts;
  /** Runs a handler with the request's parameters, answering PromErrors in Prometheus' shape. */
  const handle = (fn: (p: Params, c: Context) => Promise<unknown> | unknown) => async (c: Context) => {
    try {
      const r = await fn(await Params.of(c), c);
      return c.json(r as object);
    } catch (err) {
      return promFailure(c, err);
    }
  };
  const success = (data: unknown, warnings: string[] = []) => ({ status: 'success', data, ...(warnings.length > 0 ? { warnings } : {}) });
  /** The first items of a sorted list (Prometheus' `limit` parameter, at most listValuesMax) and the truncation warning. */
  const limited = <T>(route: string, items: readonly T[], p: Params): { items: readonly T[]; warnings: string[] } => {
    const asked = p.get('limit');
    const n = asked === undefined || asked === '' || asked === '0' ? promLimits.listValuesMax : Number(asked);
    if (!Number.isInteger(n) || n < 0) throw new PromError('bad_data', `invalid parameter limit=${JSON.stringify(asked)}: not a non-negative integer`);
    const max = Math.min(n, promLimits.listValuesMax);
    if (items.length <= max) return { items, warnings: [] };
    counters.truncated[route] = (counters.truncated[route] ?? 0) + 1;
    return { items: items.slice(0, max), warnings: [`results truncated due to limit (${max}${max === promLimits.listValuesMax ? ", the core's listValuesMax" : ''}); narrow match[]`] };
  };
  const limitedList = <T>(route: string, items: readonly T[], p: Params) => {
    const r = limited(route, items, p);
    return success(r.items, r.warnings);
  };
  const selectors = (p: Params, required: boolean) => {
    const raw = p.all('match[]');
    if (required && raw.length === 0) throw new PromError('bad_data', 'no match[] parameter provided; give a metric name or {__name__=~"rpc.*"}');
    if (raw.length > promLimits.matchersMax) throw new PromError('bad_data', `${raw.length} match[] > ${promLimits.matchersMax}`);
    // Each distinct selector once: a repeated one adds no answer, only work.
    return [...new Set(raw)].map(parseSelector);
  };

  // Every metric name, sorted: built once per change of the names (the workers report a version
  // every second), not per request — sorting 2,000,000 names held this thread ~2.7 s for each
  // Grafana autocomplete. In a cluster (core/cluster/routes.ts), only the metrics of the shards
  // this node answers for: the other nodes give theirs (a filter keeps the order).
  const metricNames = async (c: Context, from?: { metrics: readonly WorkerMetric[]; key: string }) => {
    const keep = c.get('apmShardFilter');
    const list = await pool.sortedNames(from);
    return keep === undefined ? list : list.filter((n) => keep(n));
  };

  const range = handle(async (p) => {
    const text = p.get('query');
    if (text === undefined) throw new PromError('bad_data', 'missing query=<apm query>');
    const nowMs = Date.now();
    const plan = planRange(text, { startMs: requiredTimeMs(p, 'start'), endMs: requiredTimeMs(p, 'end'), stepMs: promDurationMs(p.get('step'), 'step'), nowMs: nowMs - promSettleMs });
    const windows = plan.windows === 0 ? [] : await evaluate(pool, plan.q, plan.firstEndMs - plan.q.windowSeconds * 1000, plan.lastEndMs);
    return success({ resultType: 'matrix', result: toMatrix(plan.q, windows) }, [...plan.warnings, ...sketchedWarning(windows)]);
  });
  app.get('/api/v1/query_range', range);
  app.post('/api/v1/query_range', range);
  app.post('/api/v1/query', (c) => promInstant(c, pool));

  // Every series of apm carries the same label names, so match[] is not read: Grafana sends
  // whatever its PromQL parser made of apm's text there, and a refusal would only cost a retry.
  const labels = handle(() => success(labelNames));
  app.get('/api/v1/labels', labels);
  app.post('/api/v1/labels', labels);

  app.get(
    '/api/v1/label/:name/values',
    handle(async (p, c) => {
      const name = c.req.param('name');
      const ms = selectors(p, false);
      let values: readonly string[];
      if (name === '__name__') values = ms.length === 0 ? await metricNames(c) : namesMatching(await metricNames(c), ms);
      else if (name === 'server') values = servers.all().map((s) => s.name).sort();
      else if (name === 'rack') values = [...new Set(servers.all().map((s) => s.rack))].sort();
      else if (name === 'function') values = functionLabels;
      else if (name === 'query') values = [...new Set(stored.list().map((q) => q.query))].sort();
      else values = [];
      return limitedList('label_values', values, p);
    }),
  );

  const series = handle(async (p, c) => {
    const ms = selectors(p, true);
    const names = await metricNames(c);
    return limitedList('series', namesMatching(names, ms).map((m) => ({ __name__: m })), p);
  });
  app.get('/api/v1/series', series);
  app.post('/api/v1/series', series);

  app.get(
    '/api/v1/metadata',
    handle(async (p, c) => {
      const only = p.get('metric');
      const keep = c.get('apmShardFilter');
      // In the order of the sorted names (built once per change of them, not sorted per request).
      const kinds = new Map<string, number>();
      const key = pool.namesKey();
      const listed = await pool.metrics();
      for (const m of listed) if (m.name !== null) kinds.set(m.name, m.kind);
      const all = only === undefined || only === '' ? await metricNames(c, { metrics: listed, key }) : kinds.has(only) && (keep === undefined || keep(only)) ? [only] : [];
      const r = limited('metadata', all, p);
      const data: Record<string, { type: string; help: string; unit: string }[]> = {};
      for (const name of r.items) {
        const kind = kinds.get(name);
        if (kind !== undefined) data[name] = [{ type: promType(kind), help: `apm ${['gauge', 'counter', 'distribution'][kind] ?? 'metric'}: FROM <servers> SELECT ${name} [WINDOW <d>] COMPUTE min, max, avg, count, sum, pNN`, unit: '' }];
      }
      return success(data, r.warnings);
    }),
  );

  app.get(
    '/api/v1/status/buildinfo',
    handle(() => success({ version: packageVersion(), revision: '', branch: '', buildUser: '', buildDate: '', goVersion: '' })),
  );

  // apm keeps no exemplars and no Prometheus rules: empty, truthful answers (Grafana asks for
  // both when a data source loads, and ignores failures, but logs them in the browser).
  const exemplars = handle(() => success([]));
  app.get('/api/v1/query_exemplars', exemplars);
  app.post('/api/v1/query_exemplars', exemplars);
  app.get(
    '/api/v1/rules',
    handle(() => success({ groups: [] })),
  );

  // Grafana's "Format query" button: apm's canonical text (a WINDOW-less text stays without one).
  const format = handle((p) => {
    const text = p.get('query') ?? '';
    if (hasWindow(text)) return success(parseForProm(text, null).q.text);
    return success(parseForProm(text, 1).q.text.replace(' WINDOW 1s COMPUTE ', ' COMPUTE '));
  });
  app.get('/api/v1/format_query', format);
  app.post('/api/v1/format_query', format);

  return counters;
}

/** GET (through routes.ts' dispatch on query=) or POST /api/v1/query: an instant query. */
export async function promInstant(c: Context, pool: ShardPool): Promise<Response> {
  try {
    const p = await Params.of(c);
    const text = p.get('query');
    if (text === undefined) throw new PromError('bad_data', 'missing query=<apm query>');
    const nowMs = Date.now();
    const timeMs = promTimeMs(p.get('time'), nowMs, 'time');
    const scalar = scalarLiteral(text);
    if (scalar !== null) return c.json({ status: 'success', data: { resultType: 'scalar', result: [timeMs / 1000, promFloat(scalar)] } });
    const { q } = parseForProm(text, null);
    const Wms = q.windowSeconds * 1000;
    const endMs = Math.floor(Math.min(timeMs, nowMs - promSettleMs) / Wms) * Wms;
    const windows = endMs - Wms < 0 ? [] : await evaluate(pool, q, endMs - Wms, endMs);
    const warnings = sketchedWarning(windows);
    return c.json({ status: 'success', data: { resultType: 'vector', result: toVector(q, windows.find((w) => w.endMs === endMs)) }, ...(warnings.length > 0 ? { warnings } : {}) });
  } catch (err) {
    return promFailure(c, err);
  }
}

/** Evaluates the windows in [fromMs, toMs) in the worker owning the metric (the HTTP thread never reads rows). */
async function evaluate(pool: ShardPool, q: Query, fromMs: number, toMs: number): Promise<WindowResult[]> {
  try {
    return await pool.query(q.text, q.metric, fromMs / 1000, toMs / 1000);
  } catch (err) {
    if (err instanceof WorkerError) throw evalFailure(err);
    throw err;
  }
}

function sketchedWarning(windows: readonly WindowResult[]): string[] {
  const n = windows.filter((w) => w.sketched === true).length;
  return n === 0 ? [] : [`${n} window${n === 1 ? '' : 's'}: percentiles from a sketch (1% relative error), more values than evalExactValuesMax`];
}

/** A PromError in Prometheus' shape (its reason noted for the refusal counter); anything else is a bug and goes to onError. */
function promFailure(c: Context, err: unknown): Response {
  if (err instanceof WorkerError) err = evalFailure(err);
  if (!(err instanceof PromError)) throw err;
  if (err.reason !== undefined) c.set('apmRefusal', err.reason);
  return c.json({ status: 'error', errorType: err.type, error: err.message }, err.status);
}

function promType(kind: number): string {
  return ['gauge', 'counter', 'summary'][kind] ?? 'unknown';
}

let version: string | undefined;
/** apm's version from package.json (found above this module, whether run from source or dist/). */
function packageVersion(): string {
  if (version !== undefined) return version;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let up = 0; up < 5; up++, dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (!existsSync(file)) continue;
    const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
    if (pkg.name === 'apm' && typeof pkg.version === 'string') return (version = pkg.version);
  }
  throw new Error(`BUG: no package.json of apm above ${fileURLToPath(import.meta.url)}`);
}
