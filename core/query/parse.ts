// The query language (DESIGN §4):
//   FROM <selectors> SELECT <metric> WINDOW <duration> COMPUTE <functions>
// Keywords are case-insensitive; clauses are separated by any white space. Errors name the
// problem and its character offset, e.g. "expected a duration like 5s after WINDOW at 41".

export const queryLimits = {
  /** Characters in a query: far above any real one, small enough to parse in microseconds. */
  queryCharsMax: 4096,
  selectorsMax: 256,
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
  return f.type === 'percentile' ? `percentile(${f.p})` : f.type;
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
const globRe = /^[A-Za-z0-9._*?[\]-]{1,64}$/;
const metricRe = /^[A-Za-z0-9_.:-]{1,128}$/;
const keywords = new Set(['FROM', 'SELECT', 'WINDOW', 'COMPUTE']);

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
  const text = `FROM ${selectors.map(selectorText).join(', ')} SELECT ${m.text} WINDOW ${d.text.toLowerCase()} COMPUTE ${functions.map(fnKey).join(', ')}`;
  return { selectors, metric: m.text, windowSeconds, functions, text };
}

function parseSelectors(c: Cursor): Selector[] {
  const out: Selector[] = [];
  do {
    const { text, at } = c.word();
    if (text === '' || keywords.has(text.toUpperCase())) throw new QueryError(`expected a server, glob, rack:<glob> or * at ${at}`, at);
    if (out.length >= queryLimits.selectorsMax) throw new QueryError(`more than ${queryLimits.selectorsMax} selectors at ${at}`, at);
    out.push(parseSelector(text, at));
  } while (c.comma());
  return out;
}

function parseSelector(text: string, at: number): Selector {
  if (text === '*') return { type: 'all' };
  if (text.toLowerCase().startsWith('rack:')) {
    const pattern = text.slice(5);
    if (!globRe.test(pattern)) throw new QueryError(`bad rack pattern "${pattern}" at ${at + 5}`, at + 5);
    return { type: 'rack', pattern };
  }
  if (/[*?[]/.test(text)) {
    if (!globRe.test(text)) throw new QueryError(`bad server glob "${text}" at ${at}`, at);
    return { type: 'glob', pattern: text };
  }
  if (!serverIdRe.test(text)) throw new QueryError(`bad server id "${text}" at ${at} (expected [A-Za-z0-9._-]{1,64})`, at);
  return { type: 'server', id: text };
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

function parseFunctions(c: Cursor): Fn[] {
  const out: Fn[] = [];
  do {
    c.skipSpace();
    const at = c.pos;
    const m = /^(min|max|avg|count|sum)\b|^percentile\(\s*([0-9]+(?:\.[0-9]+)?)\s*\)|^p([0-9]+(?:\.[0-9]+)?)\b/i.exec(c.s.slice(c.pos));
    if (m === null) throw new QueryError(`expected min, max, avg, count, sum, percentile(p) or pNN at ${at}`, at);
    if (out.length >= queryLimits.functionsMax) throw new QueryError(`more than ${queryLimits.functionsMax} functions at ${at}`, at);
    c.pos += m[0].length;
    if (m[1] !== undefined) out.push({ type: m[1].toLowerCase() as 'min' });
    else {
      const p = Number(m[2] ?? m[3]);
      if (!(p >= 0 && p <= 100)) throw new QueryError(`percentile ${p} is outside 0..100 at ${at}`, at);
      out.push({ type: 'percentile', p });
    }
  } while (c.comma());
  return out;
}

/** Glob (*, ?, [abc]) → anchored RegExp. */
export function globRegExp(pattern: string): RegExp {
  let re = '^';
  for (const ch of pattern) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else if (ch === '[' || ch === ']') re += ch;
    else re += ch.replace(/[.\\^$+(){}|-]/g, '\\$&');
  }
  return new RegExp(`${re}$`);
}
