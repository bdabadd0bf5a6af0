import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkGlob, compileGlob, GlobError } from './glob.js';
import { parseQuery, type Selector } from './parse.js';

/** The pattern of a query's first selector, as the parser accepted it. */
function patternOf(query: string): string {
  const sel: Selector = parseQuery(query).selectors[0]!;
  if (sel.type !== 'glob' && sel.type !== 'rack') throw new Error(`not a glob: ${JSON.stringify(sel)}`);
  return sel.pattern;
}

describe('glob matching', () => {
  const f = (pattern: string, id: string, want: boolean) => expect(compileGlob(pattern)(id), `${pattern} ~ ${id}`).toBe(want);

  it('matches *, ?, sets, ranges and negated sets over whole ids', () => {
    // a star matches any run, also none
    f('web-*', 'web-01', true);
    f('web-*', 'web-', true);
    f('web-*', 'db-01', false);
    f('*', '', true);
    f('*-01', 'web-01', true);
    f('w*b*1', 'web-01', true);
    f('w*b*2', 'web-01', false);
    // ? is exactly one character
    f('db-0?', 'db-07', true);
    f('db-0?', 'db-0', false);
    f('db-0?', 'db-071', false);
    // sets, ranges, negation with ! or ^
    f('db-[ab]', 'db-b', true);
    f('db-[ab]', 'db-c', false);
    f('db-[!ab]', 'db-c', true);
    f('db-[^ab]', 'db-a', false);
    f('x[a-cx-z]', 'xy', true);
    f('x[a-cx-z]', 'xd', false);
    // a `-` first or last in a set is itself
    f('a[-.]b', 'a-b', true);
    f('a[.-]b', 'a.b', true);
    f('a[.-]b', 'a_b', false);
    // anchored at both ends, case-sensitive
    f('web', 'web-01', false);
    f('WEB-*', 'web-01', false);
  });

  it('glob character class ranges: web-0[1-3] matches web-01, web-02 and web-03 (issue 16.7)', () => {
    const match = compileGlob(patternOf('FROM web-0[1-3] SELECT x WINDOW 1m COMPUTE count'));
    expect(['web-00', 'web-01', 'web-02', 'web-03', 'web-04', 'web-0-'].filter(match)).toEqual(['web-01', 'web-02', 'web-03']);
    const notIn = compileGlob(patternOf('FROM web-0[!1-3] SELECT x WINDOW 1m COMPUTE count'));
    expect(['web-00', 'web-01', 'web-02', 'web-03', 'web-04', 'web-0-'].filter(notIn)).toEqual(['web-00', 'web-04', 'web-0-']);
  });

  it('server glob of many stars hangs the core (issue 16.1): ************Z answers at once', () => {
    const match = compileGlob(patternOf('FROM ************Z SELECT x WINDOW 1m COMPUTE count'));
    expect(match('web-frontend-0042.example.internal')).toBe(false);
    expect(match('web-frontend-0042.example.internalZ')).toBe(true);
    // Many stars between literals, the other classic blow-up of backtracking.
    const many = compileGlob(`${'a*'.repeat(31)}b`);
    expect(many('a'.repeat(64))).toBe(false);
    expect(many(`${'a'.repeat(63)}b`)).toBe(true);
  });

  it('the worst pattern the parser accepts, against 10,000 ids of 64 characters, answers correctly (issue 16.1)', () => {
    // The longest middle segment a 64-character pattern holds (62 tokens: two words of
    // shift-and state), scanned over the whole id; `*` then 63 literals, the two-pointer
    // algorithm's worst case (n·m/2 steps per id), is here a suffix comparison.
    const worst = `*${'a'.repeat(61)}b*`;
    const twoPointerWorst = `*${'a'.repeat(63)}`;
    for (const p of [worst, twoPointerWorst]) expect(patternOf(`FROM ${p} SELECT x WINDOW 1m COMPUTE count`)).toBe(p);
    const ids = Array.from({ length: 10_000 }, (_, i) => (i % 4 === 0 ? `${'a'.repeat(63)}b` : i % 4 === 1 ? `b${'a'.repeat(63)}` : 'a'.repeat(64)));
    expect(ids.every((id) => id.length === 64)).toBe(true);
    expect(ids.filter(compileGlob(worst)).length).toBe(2500);
    expect(ids.filter(compileGlob(twoPointerWorst)).length).toBe(7500);
  });

  it('refuses what is not a glob, naming the character at fault', () => {
    const err = (pattern: string, message: RegExp, index: number) => {
      try {
        checkGlob(pattern);
      } catch (e) {
        expect(e).toBeInstanceOf(GlobError);
        expect((e as GlobError).message).toMatch(message);
        expect((e as GlobError).index).toBe(index);
        return;
      }
      throw new Error(`no error for ${pattern}`);
    };
    err('web-[', /"\[" is not closed by "\]"/, 4);
    err('web-[1-3', /not closed/, 4);
    err('web-]', /closes no "\["/, 4);
    err('web-[]', /empty set/, 4);
    err('web-[!]', /empty set "\[!\]"/, 4);
    err('web-[3-1]', /range "3-1" is reversed; write 1-3/, 5);
    err('web-!1', /"!" is not allowed in a glob/, 4);
    err('web-[a$]', /"\$" is not allowed in a set/, 6);
    err('web-[a-$]', /"\$" is not allowed in a set/, 7);
  });
});

// Property: the matcher agrees with a reference (dynamic programming over tokens) on patterns
// and ids generated from the grammar.
type Token = { t: 'lit'; c: string } | { t: 'any' } | { t: 'star' } | { t: 'set'; negated: '' | '!' | '^'; items: [string, string][] };

const idChars = 'ab-.9Z';
const idChar = fc.constantFrom(...idChars.split(''));
const rangeChar = fc.constantFrom(...idChars.replace('-', '').split(''));
const token: fc.Arbitrary<Token> = fc.oneof(
  idChar.map((c): Token => ({ t: 'lit', c })),
  fc.constant<Token>({ t: 'any' }),
  fc.constant<Token>({ t: 'star' }),
  fc.record({
    t: fc.constant('set' as const),
    negated: fc.constantFrom('' as const, '!' as const, '^' as const),
    // Ranges between characters other than `-`; a `-` member stands alone (written first).
    items: fc.array(
      fc.oneof(
        fc.tuple(rangeChar, rangeChar).map(([a, b]): [string, string] => (a <= b ? [a, b] : [b, a])),
        fc.constant<[string, string]>(['-', '-']),
      ),
      { minLength: 1, maxLength: 3 },
    ),
  }),
);

function render(tokens: Token[]): string {
  return tokens
    .map((k) => {
      if (k.t === 'lit') return k.c;
      if (k.t === 'any') return '?';
      if (k.t === 'star') return '*';
      // A `-` member is written once and first, where it is literal.
      const dash = k.items.some(([a]) => a === '-') ? '-' : '';
      return `[${k.negated}${dash}${k.items.flatMap(([a, b]) => (a === '-' ? [] : a === b ? [a] : [`${a}-${b}`])).join('')}]`;
    })
    .join('');
}

function tokenMatches(k: Token, c: string): boolean {
  if (k.t === 'lit') return k.c === c;
  if (k.t === 'any') return true;
  if (k.t === 'star') return false;
  const inSet = k.items.some(([a, b]) => a <= c && c <= b);
  return k.negated === '' ? inSet : !inSet;
}

function reference(tokens: Token[], id: string): boolean {
  // ok[j] = the first i characters of id match the first j tokens.
  let ok = new Array<boolean>(tokens.length + 1).fill(false);
  ok[0] = true;
  for (let j = 1; j <= tokens.length; j++) ok[j] = ok[j - 1]! && tokens[j - 1]!.t === 'star';
  for (let i = 1; i <= id.length; i++) {
    const next = new Array<boolean>(tokens.length + 1).fill(false);
    for (let j = 1; j <= tokens.length; j++) {
      const k = tokens[j - 1]!;
      next[j] = k.t === 'star' ? next[j - 1]! || ok[j]! : ok[j - 1]! && tokenMatches(k, id[i - 1]!);
    }
    ok = next;
  }
  return ok[tokens.length]!;
}

describe('glob matching (property)', () => {
  it('agrees with a dynamic-programming reference on generated patterns and ids', () => {
    fc.assert(
      fc.property(fc.array(token, { maxLength: 12 }), fc.array(fc.array(idChar, { maxLength: 14 }).map((cs) => cs.join('')), { minLength: 1, maxLength: 8 }), (tokens, ids) => {
        const pattern = render(tokens);
        const match = compileGlob(pattern);
        for (const id of ids) expect(match(id), `${pattern} ~ ${id}`).toBe(reference(tokens, id));
        // An id the pattern is built to match: every token replaced by a character it takes.
        const built = tokens.map((k) => (k.t === 'lit' ? k.c : k.t === 'star' ? 'ab' : (idChars.split('').find((c) => tokenMatches(k, c)) ?? ''))).join('');
        expect(match(built)).toBe(reference(tokens, built));
      }),
      { numRuns: 2000 },
    );
  });

  it('agrees with the reference on long patterns (segments over one 31-token word) and 64-character ids', () => {
    const ab = fc.constantFrom('a', 'b');
    const longToken: fc.Arbitrary<Token> = fc.oneof(
      { weight: 12, arbitrary: ab.map((c): Token => ({ t: 'lit', c })) },
      { weight: 3, arbitrary: fc.constant<Token>({ t: 'any' }) },
      { weight: 1, arbitrary: fc.constant<Token>({ t: 'star' }) },
      { weight: 1, arbitrary: fc.constant<Token>({ t: 'set', negated: '!', items: [['b', 'b']] }) },
    );
    // Ids mostly of a, so that long runs of literal a match far into them before failing.
    const id = fc.array(fc.oneof({ weight: 15, arbitrary: fc.constant('a') }, { weight: 1, arbitrary: fc.constant('b') }), { minLength: 0, maxLength: 64 }).map((cs) => cs.join(''));
    fc.assert(
      fc.property(fc.array(longToken, { minLength: 20, maxLength: 64 }), fc.array(id, { minLength: 1, maxLength: 8 }), (tokens, ids) => {
        const pattern = render(tokens);
        const match = compileGlob(pattern);
        for (const x of ids) expect(match(x), `${pattern} ~ ${x}`).toBe(reference(tokens, x));
        const built = tokens.map((k) => (k.t === 'lit' ? k.c : k.t === 'star' ? 'a' : 'a')).join('');
        expect(match(built)).toBe(reference(tokens, built));
      }),
      { numRuns: 1000 },
    );
  });
});
