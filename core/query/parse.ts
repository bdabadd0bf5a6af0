// The query language (DESIGN §4):
//   FROM <selectors> SELECT <metric> WINDOW <duration> COMPUTE <functions>
// Keywords are case-insensitive; clauses are separated by any white space. Errors name the
// problem and its character offset, e.g. "expected a duration like 5s after WINDOW at 41".

import { checkGlob, GlobError } from './glob.js';

export const queryLimits = {
  /** Characters in a query: far above any real one, small enough to parse in microseconds. */
  queryCharsMax: 4096,
  selectorsMax: 256,
  /** Characters of one glob: as long as the longest id (DESIGN §3), so matching one id costs at
   * most 65 × 65 steps (core/query/glob.ts). */
  globCharsMax: 64,
  functionsMax: 32,
  windowSecondsMin: 1,
  windowSecondsMax: 86_400,
} as const;

export type Selector = { type: 'server'; id: string } | { type: 'glob'; pattern: string } | { type: 'rack'; pattern: string } | { type: 'all' };

export type Fn = { type: 'min' } | { type: 'max' } | { type: 'avg' } | { type: 'count' } | { type: 'sum' } | { type: 'percentile'; p: number };

export interface Query {
  selectors: Selector[];
  metric: string;
  windowSeconds: number;
  functions: Fn[];
  /** Canonical text (keywords upper-case, single spaces, canonical function names). */
  text: string;
}

/** A refused query: what is wrong, and the character offset in the query text where it is. */
export class QueryError extends Error {
  constructor(
    message: string,
    readonly position: number,
  ) {
    super(message);
  }
}

/** Canonical key of a function in a result's `values`: min, max, avg, count, sum, percentile(99.9). */
export function fnKey(f: Fn): string {
  return f.type === 'percentile' ? `percentile(${decimalText(f.p)})` : f.type;
}

/**
 * The shortest decimal that reads back as x, never in exponent form: the language has no
 * exponents, and `percentile(1e-7)` stored as canonical text was refused at the next start
 * (issue 16.2). For 0 ≤ x ≤ 100 String() uses an exponent only below 1e-6.
 */
export function decimalText(x: number): string {
  const s = String(x);
  const e = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(s);
  if (e === null) return s;
  const digits = e[2]! + (e[3] ?? '');
  const exp = Number(e[4]);
  if (exp >= 0) return e[1]! + digits.padEnd(exp + 1, '0');
  return `${e[1]}0.${'0'.repeat(-exp - 1)}${digits}`;
}

class Cursor {
  pos = 0;
  constructor(readonly s: string) {}
  skipSpace(): void {
    while (this.pos < this.s.length && /\s/.test(this.s[this.pos]!)) this.pos++;
  }
  atEnd(): boolean {
    this.skipSpace();
    return this.pos >= this.s.length;
  }
  /** A run of characters not white space and not a comma. */
  word(): { text: string; at: number } {
    this.skipSpace();
    const at = this.pos;
    while (this.pos < this.s.length && !/[\s,]/.test(this.s[this.pos]!)) this.pos++;
    return { text: this.s.slice(at, this.pos), at };
  }
  keyword(kw: string, after: string): void {
    const { text, at } = this.word();
    if (text.toUpperCase() !== kw) throw new QueryError(`expected ${kw}${after} at ${at}${text ? `, found "${text}"` : ''}`, at);
  }
  comma(): boolean {
    this.skipSpace();
    if (this.s[this.pos] === ',') {
      this.pos++;
      return true;
    }
    return false;
  }
}

const serverIdRe = /^[A-Za-z0-9._-]{1,64}$/;
const metricRe = /^[A-Za-z0-9_.:-]{1,128}$/;
const keywords = new Set(['FROM', 'SELECT', 'WINDOW', 'COMPUTE']);

/** Queries parsed lately, by their text (a dashboard asks the same ones every few seconds; 40 server names take ~30 µs to parse). */
const parsedMax = 256;
const parsed = new Map<string, Query>();

/** parseQuery, remembering the last parsedMax queries parsed this way (frozen: shared by every caller). */
export function parseQueryOften(input: string): Query {
  let q = parsed.get(input);
  if (q !== undefined) return q;
  q = parseQuery(input);
  Object.freeze(q.selectors);
  Object.freeze(q.functions);
  for (const x of [...q.selectors, ...q.functions]) Object.freeze(x);
  Object.freeze(q);
  if (parsed.size >= parsedMax) parsed.delete(parsed.keys().next().value!);
  parsed.set(input, q);
  return q;
}

/** Parses a query or throws QueryError with the offending position. */
export function parseQuery(input: string): Query {
  if (input.length > queryLimits.queryCharsMax) throw new QueryError(`query is ${input.length} characters > limit ${queryLimits.queryCharsMax}`, queryLimits.queryCharsMax);
  const c = new Cursor(input);
  c.keyword('FROM', ' at the start');
  const selectors = parseSelectors(c);
  c.keyword('SELECT', ' after the selectors');
  const m = c.word();
  if (!metricRe.test(m.text) || keywords.has(m.text.toUpperCase())) throw new QueryError(`expected a metric name ([A-Za-z0-9_.:-]{1,128}) after SELECT at ${m.at}`, m.at);
  c.keyword('WINDOW', ' after the metric');
  const d = c.word();
  const windowSeconds = parseDuration(d.text, d.at);
  c.keyword('COMPUTE', ' after the window');
  const functions = parseFunctions(c);
  if (!c.atEnd()) {
    const extra = c.word();
    throw new QueryError(`unexpected "${extra.text || c.s[c.pos]}" at ${extra.at} after the functions`, extra.at);
  }
  const text = canonicalText({ selectors, metric: m, window: d, functions });
  return { selectors: selectors.map((s) => s.sel), metric: m.text, windowSeconds, functions: functions.map((f) => f.fn), text };
}

/**
 * The canonical text, which must parse again to the same query (issue 16.2): it is what a
 * stored query keeps. Shorthands expand (p99 → percentile(99)) and commas gain a space, so it
 * can be longer than the input: past queryCharsMax it is refused here, at the input position
 * of the selector or function that crosses the limit, rather than at the next start.
 */
function canonicalText(q: { selectors: { sel: Selector; at: number }[]; metric: Word; window: Word; functions: { fn: Fn; at: number }[] }): string {
  let text = '';
  let over = -1;
  const add = (piece: string, at: number) => {
    text += piece;
    if (over < 0 && text.length > queryLimits.queryCharsMax) over = at;
  };
  q.selectors.forEach((s, i) => add(`${i === 0 ? 'FROM ' : ', '}${selectorText(s.sel)}`, s.at));
  add(` SELECT ${q.metric.text}`, q.metric.at);
  add(` WINDOW ${q.window.text.toLowerCase()}`, q.window.at);
  q.functions.forEach((f, i) => add(`${i === 0 ? ' COMPUTE ' : ', '}${fnKey(f.fn)}`, f.at));
  if (over >= 0) {
    throw new QueryError(
      `the query's canonical form (shorthands like p99 written percentile(99), ", " between items) is ${text.length} characters > limit ${queryLimits.queryCharsMax}, crossed at ${over}; use fewer selectors or functions`,
      over,
    );
  }
  return text;
}

type Word = { text: string; at: number };

function parseSelectors(c: Cursor): { sel: Selector; at: number }[] {
  const out: { sel: Selector; at: number }[] = [];
  do {
    const { text, at } = c.word();
    if (text === '' || keywords.has(text.toUpperCase())) throw new QueryError(`expected a server, glob, rack:<glob> or * at ${at}`, at);
    if (out.length >= queryLimits.selectorsMax) throw new QueryError(`more than ${queryLimits.selectorsMax} selectors at ${at}`, at);
    out.push({ sel: parseSelector(text, at), at });
  } while (c.comma());
  return out;
}

function parseSelector(text: string, at: number): Selector {
  if (text === '*') return { type: 'all' };
  if (text.toLowerCase().startsWith('rack:')) return { type: 'rack', pattern: checkedGlob(text.slice(5), at + 5, 'rack pattern') };
  if (/[*?[\]]/.test(text)) return { type: 'glob', pattern: checkedGlob(text, at, 'server glob') };
  if (!serverIdRe.test(text)) throw new QueryError(`bad server id "${text}" at ${at} (expected [A-Za-z0-9._-]{1,64})`, at);
  return { type: 'server', id: text };
}

/**
 * A glob the evaluator can match (issue 16.7: every accepted selector evaluates), or a
 * QueryError at the offending character; `at` is the pattern's offset in the query.
 */
function checkedGlob(pattern: string, at: number, what: string): string {
  if (pattern === '') throw new QueryError(`empty ${what} at ${at}`, at);
  if (pattern.length > queryLimits.globCharsMax) {
    const pos = at + queryLimits.globCharsMax;
    throw new QueryError(`${what} "${pattern}" is ${pattern.length} characters > limit ${queryLimits.globCharsMax} at ${pos}`, pos);
  }
  try {
    checkGlob(pattern);
  } catch (err) {
    if (!(err instanceof GlobError)) throw err;
    const pos = at + err.index;
    throw new QueryError(`bad ${what} "${pattern}": ${err.message} at ${pos}`, pos);
  }
  return pattern;
}

function selectorText(s: Selector): string {
  return s.type === 'all' ? '*' : s.type === 'rack' ? `rack:${s.pattern}` : s.type === 'glob' ? s.pattern : s.id;
}

const unitSeconds: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

export function parseDuration(text: string, at: number): number {
  const m = /^(\d{1,6})([smhd])$/i.exec(text);
  if (m === null) throw new QueryError(`expected a duration like 5s after WINDOW at ${at}`, at);
  const seconds = Number(m[1]) * unitSeconds[m[2]!.toLowerCase()]!;
  if (seconds < queryLimits.windowSecondsMin || seconds > queryLimits.windowSecondsMax) throw new QueryError(`window ${text} is outside 1s..1d at ${at}`, at);
  return seconds;
}

function parseFunctions(c: Cursor): { fn: Fn; at: number }[] {
  const out: { fn: Fn; at: number }[] = [];
  do {
    c.skipSpace();
    const at = c.pos;
    const m = /^(min|max|avg|count|sum)\b|^percentile\(\s*([0-9]+(?:\.[0-9]+)?)\s*\)|^p([0-9]+(?:\.[0-9]+)?)\b/i.exec(c.s.slice(c.pos));
    if (m === null) throw new QueryError(`expected min, max, avg, count, sum, percentile(p) or pNN at ${at}`, at);
    if (out.length >= queryLimits.functionsMax) throw new QueryError(`more than ${queryLimits.functionsMax} functions at ${at}`, at);
    c.pos += m[0].length;
    if (m[1] !== undefined) out.push({ fn: { type: m[1].toLowerCase() as 'min' }, at });
    else {
      const text = m[2] ?? m[3]!;
      const p = Number(text);
      if (!(p >= 0 && p <= 100)) throw new QueryError(`percentile ${text.length > 20 ? `${text.slice(0, 20)}…` : text} is outside 0..100 at ${at}`, at);
      out.push({ fn: { type: 'percentile', p }, at });
    }
  } while (c.comma());
  return out;
}
