// Server and rack globs of the query language (DESIGN §4): `*` any run of characters (also
// none), `?` any one character, `[abc]` / `[a-z]` one character of a set, `[!a-z]` / `[^a-z]`
// one character not in it. Literals and set members are id characters, [A-Za-z0-9._-]; a `-`
// first or last in a set is itself.
//
// Issue 16.1: globs used to become regular expressions (`*` → `.*`), and `************Z`
// against a 34-character id backtracked for longer than anyone waited, with the core's event
// loop stuck in it. Here a pattern compiles to tokens, and matching is the two-pointer
// algorithm that remembers only the last star: at most (id length + 1) × (tokens + 1) steps
// whatever the pattern. No RegExp is built from a pattern.

/** A pattern the language refuses: what is wrong, and `index`, the offending character's offset in the pattern. */
export class GlobError extends Error {
  constructor(
    message: string,
    readonly index: number,
  ) {
    super(message);
  }
}

const enum Tok {
  Lit = 0,
  Any = 1,
  Star = 2,
  Class = 3,
}

interface Compiled {
  kinds: Uint8Array;
  /** Literal: its char code; class: its index in `classes`. */
  args: Uint16Array;
  /** Per class, a 128-entry membership table (ids are ASCII), already inverted when negated. */
  classes: Uint8Array[];
  /** Whether a class matches characters ≥ 128 (only a negated one does). */
  classHigh: boolean[];
}

/** True for the characters of a server or rack id, [A-Za-z0-9._-] (DESIGN §3). */
function isIdChar(code: number): boolean {
  return (code >= 48 && code <= 57) || (code >= 65 && code <= 90) || (code >= 97 && code <= 122) || code === 46 || code === 95 || code === 45;
}

/** Compiles a pattern to tokens or throws GlobError naming the character at fault. Runs of stars collapse into one. */
function compile(pattern: string): Compiled {
  const kinds: number[] = [];
  const args: number[] = [];
  const classes: Uint8Array[] = [];
  const classHigh: boolean[] = [];
  let i = 0;
  while (i < pattern.length) {
    const ch = pattern[i]!;
    if (ch === '*') {
      if (kinds[kinds.length - 1] !== Tok.Star) {
        kinds.push(Tok.Star);
        args.push(0);
      }
      i++;
    } else if (ch === '?') {
      kinds.push(Tok.Any);
      args.push(0);
      i++;
    } else if (ch === '[') {
      const c = compileClass(pattern, i);
      kinds.push(Tok.Class);
      args.push(classes.length);
      classes.push(c.table);
      classHigh.push(c.negated);
      i = c.end;
    } else if (ch === ']') {
      throw new GlobError('"]" closes no "[" (a set is [abc], [a-z] or [!a-z])', i);
    } else if (isIdChar(pattern.charCodeAt(i))) {
      kinds.push(Tok.Lit);
      args.push(pattern.charCodeAt(i));
      i++;
    } else {
      throw new GlobError(`"${ch}" is not allowed in a glob (id characters [A-Za-z0-9._-], *, ?, [set])`, i);
    }
  }
  return { kinds: Uint8Array.from(kinds), args: Uint16Array.from(args), classes, classHigh };
}

/** The set starting at pattern[open] === '['; `end` is the index after its `]`. */
function compileClass(pattern: string, open: number): { table: Uint8Array; negated: boolean; end: number } {
  const table = new Uint8Array(128);
  let i = open + 1;
  const negated = pattern[i] === '!' || pattern[i] === '^';
  if (negated) i++;
  const first = i;
  for (;;) {
    if (i >= pattern.length) throw new GlobError('"[" is not closed by "]"', open);
    const ch = pattern[i]!;
    if (ch === ']') {
      if (i === first) throw new GlobError(`empty set "[${negated ? pattern[open + 1] : ''}]"`, open);
      break;
    }
    const lo = pattern.charCodeAt(i);
    if (!isIdChar(lo)) throw new GlobError(`"${ch}" is not allowed in a set (id characters [A-Za-z0-9._-])`, i);
    // A range needs a `-` that is neither first nor last in the set.
    if (pattern[i + 1] === '-' && i + 2 < pattern.length && pattern[i + 2] !== ']') {
      const hi = pattern.charCodeAt(i + 2);
      if (!isIdChar(hi)) throw new GlobError(`"${pattern[i + 2]}" is not allowed in a set (id characters [A-Za-z0-9._-])`, i + 2);
      if (hi < lo) throw new GlobError(`range "${pattern.slice(i, i + 3)}" is reversed; write ${pattern[i + 2]}-${ch}`, i);
      for (let c = lo; c <= hi; c++) table[c] = 1;
      i += 3;
    } else {
      table[lo] = 1;
      i++;
    }
  }
  if (negated) for (let c = 0; c < 128; c++) table[c] = 1 - table[c]!;
  return { table, negated, end: i + 1 };
}

/** Throws GlobError when the pattern is not a glob of the language; the parser's check. */
export function checkGlob(pattern: string): void {
  compile(pattern);
}

/** A matcher for the pattern (throws GlobError on a bad one): linear in id length × pattern length, never worse. */
export function compileGlob(pattern: string): (id: string) => boolean {
  const g = compile(pattern);
  return (id) => matches(g, id);
}

/** One token against one character (not a star). */
function tokenMatches(g: Compiled, t: number, code: number): boolean {
  const kind = g.kinds[t]!;
  if (kind === Tok.Any) return true;
  if (kind === Tok.Lit) return g.args[t] === code;
  const a = g.args[t]!;
  return code < 128 ? g.classes[a]![code] === 1 : g.classHigh[a]!;
}

/**
 * Two pointers over id and tokens; on a mismatch, the last star takes one more character and
 * matching resumes after it. Earlier stars never need revisiting: whatever they matched, the
 * last star can absorb. Each mismatch moves the star's start right, so the steps are at most
 * (id length + 1) × (tokens + 1).
 */
function matches(g: Compiled, id: string): boolean {
  const n = id.length;
  const m = g.kinds.length;
  let i = 0;
  let t = 0;
  let starT = -1;
  let starI = 0;
  while (i < n) {
    if (t < m && g.kinds[t] === Tok.Star) {
      starT = t++;
      starI = i;
    } else if (t < m && tokenMatches(g, t, id.charCodeAt(i))) {
      i++;
      t++;
    } else if (starT >= 0) {
      t = starT + 1;
      i = ++starI;
    } else return false;
  }
  while (t < m && g.kinds[t] === Tok.Star) t++;
  return t === m;
}
