import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compileGlob } from './glob.js';
import { fnKey, parseQuery, parseQueryOften, QueryError } from './parse.js';

describe('query parser', () => {
  const ok = (text: string, want: object) => expect(parseQuery(text)).toMatchObject(want);
  it('accepts the language in its variants', () => {
    // the mission's example
    ok('FROM web-*  SELECT rpc.latency  WINDOW 5s  COMPUTE min, max, avg, percentile(99)', {
      selectors: [{ type: 'glob', pattern: 'web-*' }],
      metric: 'rpc.latency',
      windowSeconds: 5,
      text: 'FROM web-* SELECT rpc.latency WINDOW 5s COMPUTE min, max, avg, percentile(99)',
    });
    // lower-case keywords, newlines, shorthands, several selector forms
    ok('from db-0?,rack:r1 ,host-7, *\nselect q:depth\nwindow 1m\ncompute p99.9,P50 , count,sum', {
      selectors: [{ type: 'glob', pattern: 'db-0?' }, { type: 'rack', pattern: 'r1' }, { type: 'server', id: 'host-7' }, { type: 'all' }],
      metric: 'q:depth',
      windowSeconds: 60,
      functions: [{ type: 'percentile', p: 99.9 }, { type: 'percentile', p: 50 }, { type: 'count' }, { type: 'sum' }],
    });
    ok('FROM * SELECT m WINDOW 1d COMPUTE percentile( 0 ), percentile(100)', { windowSeconds: 86400 });
    expect(parseQuery('FROM * SELECT m WINDOW 2h COMPUTE p99').text).toBe('FROM * SELECT m WINDOW 2h COMPUTE percentile(99)');
  });

  it('names each error and its position', () => {
    const err = (text: string, message: RegExp, position: number) => {
      try {
        parseQuery(text);
      } catch (e) {
        expect(e).toBeInstanceOf(QueryError);
        expect((e as QueryError).message).toMatch(message);
        expect((e as QueryError).position).toBe(position);
        return;
      }
      throw new Error(`no error for ${text}`);
    };
    err('SELECT x', /expected FROM at the start at 0/, 0);
    err('FROM SELECT x WINDOW 5s COMPUTE min', /expected a server, glob, rack:<glob> or \* at 5/, 5);
    err('FROM a SELECT x WINDOW five COMPUTE min', /expected a duration like 5s after WINDOW at 23/, 23);
    err('FROM a SELECT x WINDOW 2d COMPUTE min', /outside 1s\.\.1d at 23/, 23);
    err('FROM a SELECT x WINDOW 0s COMPUTE min', /outside 1s\.\.1d/, 23);
    err('FROM a SELECT x WINDOW 5s COMPUTE median', /expected min, max, avg, count, sum, percentile\(p\) or pNN at 34/, 34);
    err('FROM a SELECT x WINDOW 5s COMPUTE p101', /percentile 101 is outside 0\.\.100 at 34/, 34);
    err('FROM a SELECT x WINDOW 5s COMPUTE min extra', /unexpected "extra"/, 38);
    err('FROM a b SELECT x WINDOW 5s COMPUTE min', /expected SELECT after the selectors at 7/, 7);
    err('FROM a SELECT bad/name WINDOW 5s COMPUTE min', /expected a metric name/, 14);
    err('FROM bad$id SELECT x WINDOW 5s COMPUTE min', /bad server id/, 5);
    err(`FROM a SELECT x WINDOW 5s COMPUTE ${'min,'.repeat(2000)}min`, /characters > limit/, 4096);
  });
});

describe('query parser: selectors (issue 16.7)', () => {
  const err = (text: string, message: RegExp, position: number) => {
    try {
      parseQuery(text);
    } catch (e) {
      expect(e).toBeInstanceOf(QueryError);
      expect((e as QueryError).message).toMatch(message);
      expect((e as QueryError).position).toBe(position);
      return;
    }
    throw new Error(`no error for ${text}`);
  };

  it('unclosed glob set web-[ passes the parser, then evaluation fails (issue 16.7): refused at the "["', () => {
    err('FROM web-[ SELECT x WINDOW 5s COMPUTE min', /bad server glob "web-\[": "\[" is not closed by "\]" at 9/, 9);
    err('FROM a, rack:r[1-2 SELECT x WINDOW 5s COMPUTE min', /bad rack pattern "r\[1-2": "\[" is not closed by "\]" at 14/, 14);
    err('FROM web-0[3-1] SELECT x WINDOW 5s COMPUTE min', /range "3-1" is reversed; write 1-3 at 11/, 11);
    err('FROM web-] SELECT x WINDOW 5s COMPUTE min', /"\]" closes no "\[".* at 9/, 9);
    err('FROM web-[] SELECT x WINDOW 5s COMPUTE min', /empty set "\[\]" at 9/, 9);
    err('FROM web-[a!] SELECT x WINDOW 5s COMPUTE min', /"!" is not allowed in a set.* at 11/, 11);
    err('FROM rack: SELECT x WINDOW 5s COMPUTE min', /empty rack pattern at 10/, 10);
    err(`FROM ${'a'.repeat(60)}*${'b'.repeat(10)} SELECT x WINDOW 5s COMPUTE min`, /71 characters > limit 64 at 69/, 69);
    // Sets the language has: ranges, negation with ! or ^, a literal `-` first or last.
    expect(parseQuery('FROM web-0[1-3], db-[!a-c], x[^0], y[-.], rack:r[0-9a-f] SELECT x WINDOW 5s COMPUTE min').selectors).toEqual([
      { type: 'glob', pattern: 'web-0[1-3]' },
      { type: 'glob', pattern: 'db-[!a-c]' },
      { type: 'glob', pattern: 'x[^0]' },
      { type: 'glob', pattern: 'y[-.]' },
      { type: 'rack', pattern: 'r[0-9a-f]' },
    ]);
  });

  it('every selector the parser accepts compiles to a matcher; every refused one has a position inside it', () => {
    const chars = 'aZ9.-_*?[]!^$'.split('');
    fc.assert(
      fc.property(fc.boolean(), fc.array(fc.constantFrom(...chars), { minLength: 1, maxLength: 20 }), (rack, cs) => {
        const sel = `${rack ? 'rack:' : ''}${cs.join('')}`;
        const text = `FROM ${sel} SELECT x WINDOW 5s COMPUTE min`;
        let q;
        try {
          q = parseQuery(text);
        } catch (e) {
          expect(e).toBeInstanceOf(QueryError);
          const pos = (e as QueryError).position;
          expect(pos).toBeGreaterThanOrEqual(5);
          expect(pos).toBeLessThan(5 + sel.length);
          return;
        }
        for (const s of q.selectors) if (s.type === 'glob' || s.type === 'rack') expect(typeof compileGlob(s.pattern)('web-01')).toBe('boolean');
      }),
      { numRuns: 3000 },
    );
  });
});

describe('query parser: canonical form (issue 16.2)', () => {
  it('COMPUTE p0.0000001 is stored as percentile(1e-7), which the parser refuses at the next start (issue 16.2)', () => {
    const q = parseQuery('FROM * SELECT m WINDOW 1m COMPUTE p0.0000001, p99.999999, percentile(0.000000000000000000000000000005)');
    expect(q.text).toBe('FROM * SELECT m WINDOW 1m COMPUTE percentile(0.0000001), percentile(99.999999), percentile(0.000000000000000000000000000005)');
    expect(parseQuery(q.text)).toEqual(q);
    expect(fnKey({ type: 'percentile', p: 1e-7 })).toBe('percentile(0.0000001)');
  });

  it('refuses a query whose canonical form would be longer than the limit, where it crosses it', () => {
    // 4,000 characters of input; each p1 becomes percentile(1), so the canonical form is longer.
    const fns = 'p1,'.repeat(31) + 'p1';
    const servers = Array.from({ length: 255 }, (_, i) => `s${String(i).padStart(13, '0')}`).join(',');
    const text = `FROM ${servers} SELECT ${'m'.repeat(4000 - `FROM ${servers} SELECT  WINDOW 1m COMPUTE ${fns}`.length)} WINDOW 1m COMPUTE ${fns}`;
    expect(text.length).toBe(4000);
    let caught: unknown;
    try {
      parseQuery(text);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(QueryError);
    expect((caught as QueryError).message).toMatch(/canonical form .* > limit 4096/);
    // The position is the start of the item that crosses the limit: here the metric (the
    // selectors' ", " have made the canonical form 4,083 characters by then).
    expect((caught as QueryError).position).toBe(text.indexOf(' SELECT ') + 8);
  });

  it('property: parse(canonical(q)) equals q for every accepted q, generated over the grammar', () => {
    const idChar = fc.constantFrom(...'abcXYZ019._-'.split(''));
    const id = fc.array(idChar, { minLength: 1, maxLength: 12 }).map((cs) => cs.join(''));
    const globPart = fc.oneof(idChar, fc.constantFrom('*', '?', '[1-3]', '[!a-c]', '[^x]', '[-.]', '[ab]'));
    const glob = fc.array(globPart, { minLength: 1, maxLength: 8 }).map((ps) => ps.join(''));
    const selector = fc.oneof(
      id.filter((s) => !['FROM', 'SELECT', 'WINDOW', 'COMPUTE'].includes(s.toUpperCase())),
      glob.filter((g) => /[*?[]/.test(g)),
      fc.tuple(fc.constantFrom('rack:', 'RACK:', 'Rack:'), glob).map(([k, g]) => k + g),
      fc.constant('*'),
    );
    const metric = fc.array(fc.constantFrom(...'abq_.:-19'.split('')), { minLength: 1, maxLength: 20 }).map((cs) => cs.join(''));
    const duration = fc.oneof(
      fc.integer({ min: 1, max: 86_400 }).map((n) => `${n}s`),
      fc.integer({ min: 1, max: 1440 }).map((n) => `${n}M`),
      fc.integer({ min: 1, max: 24 }).map((n) => `${String(n).padStart(3, '0')}h`),
      fc.constant('1d'),
    );
    // Percentiles as people write them, and odd ones: tiny, long decimals, bounds, leading zeros.
    const decimals = fc.array(fc.constantFrom(...'0123456789'.split('')), { minLength: 1, maxLength: 30 }).map((ds) => ds.join(''));
    const pText = fc.oneof(
      fc.constantFrom('0', '100', '0.0000001', '99.999999', '0.5', '50', '99.9', '100.000', '0.0', '007', '1e-7'),
      fc.tuple(fc.integer({ min: 0, max: 99 }), decimals).map(([i, d]) => `${i}.${d}`),
      fc.tuple(fc.nat({ max: 40 }), fc.integer({ min: 1, max: 9 })).map(([zeros, d]) => `0.${'0'.repeat(zeros)}${d}`),
      fc.double({ min: 0, max: 100, noNaN: true }).map((x) => x.toFixed(12)),
    );
    const fn = fc.oneof(
      fc.constantFrom('min', 'MAX', 'avg', 'count', 'Sum'),
      pText.map((p) => `p${p}`),
      pText.map((p) => `percentile( ${p})`),
      pText.map((p) => `PERCENTILE(${p} )`),
    );
    const space = fc.constantFrom(' ', '  ', '\n', '\t ');
    const query = fc
      .tuple(fc.array(selector, { minLength: 1, maxLength: 6 }), metric, duration, fc.array(fn, { minLength: 1, maxLength: 8 }), space, space)
      .map(([sels, m, d, fns, s1, s2]) => `from${s1}${sels.join(`,${s2}`)}${s1}SELECT ${m}${s2}window ${d}${s1}Compute ${fns.join(` ,${s2}`)}`);
    let accepted = 0;
    const refusals = new Set<string>();
    fc.assert(
      fc.property(query, (text) => {
        let q;
        try {
          q = parseQuery(text);
        } catch (e) {
          expect(e).toBeInstanceOf(QueryError);
          refusals.add((e as QueryError).message.replace(/"[^"]*"|\d+/g, '_'));
          return;
        }
        accepted++;
        const again = parseQuery(q.text);
        expect(again).toEqual(q);
        expect(again.functions.map(fnKey)).toEqual(q.functions.map(fnKey));
      }),
      { numRuns: 3000 },
    );
    // Most generated queries are valid: the property is not vacuous.
    expect(accepted, [...refusals].join('\n')).toBeGreaterThan(2500);
  });
});

describe('parseQueryOften', () => {
  it('gives the same frozen query for the same text, parses again past its bound, and never keeps a refusal', () => {
    const text = 'FROM web-1, web-2 SELECT cpu WINDOW 5s COMPUTE max';
    const q = parseQueryOften(text);
    expect(q).toEqual(parseQuery(text));
    expect(parseQueryOften(text)).toBe(q);
    expect(Object.isFrozen(q) && Object.isFrozen(q.selectors) && Object.isFrozen(q.functions[0])).toBe(true);
    for (let i = 0; i < 300; i++) parseQueryOften(`FROM web-${i} SELECT cpu WINDOW 5s COMPUTE max`);
    const again = parseQueryOften(text);
    expect(again).not.toBe(q);
    expect(again).toEqual(q);
    for (let i = 0; i < 2; i++) expect(() => parseQueryOften('FROM * SELECT cpu WINDOW 5x COMPUTE max')).toThrow(QueryError);
  });
});
