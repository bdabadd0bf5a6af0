// StatsD / DogStatsD line protocol: `name:value[:value…]|type[|@rate][|#tags][|c:…][|T…]`,
// several lines per datagram. Types g (with +N/-N relative gauges), c, ms, h, d. A malformed
// line is counted by reason and skipped; the rest of the datagram is still used. Tags are
// accepted and ignored for now: the metric is its name (issue 2).
// Hot path: the datagram is parsed as bytes; a known name costs a hash and a compare, no string.

import { KindCode } from '../schema/codec.js';
import type { DropReason } from './aggregator.js';

export interface StatsdSink {
  /** Slot of the series named by latin1 bytes[start..end), or −1 when refused (counted by the sink). */
  slotForBytes(bytes: Uint8Array, start: number, end: number, kind: KindCode, second: number): number;
  observeSlot(slot: number, kind: KindCode, value: number, second: number, weight: number, relative: boolean): DropReason | null;
}

export type MalformedReason = 'bad_syntax' | 'bad_value' | 'bad_type' | 'bad_rate' | 'too_long' | 'unsupported_type';

const NL = 10;
const CR = 13;
const COLON = 58;
const PIPE = 124;
const AT = 64;

export class StatsdParser {
  lines = 0;
  readonly malformed: Record<MalformedReason, number> = {
    bad_syntax: 0,
    bad_value: 0,
    bad_type: 0,
    bad_rate: 0,
    too_long: 0,
    unsupported_type: 0,
  };

  constructor(private readonly lineBytesMax: number) {}

  /** Parses every line of one datagram received in `second` into `sink`. */
  parse(b: Uint8Array, second: number, sink: StatsdSink): void {
    let start = 0;
    const n = b.length;
    while (start < n) {
      let end = b.indexOf(NL, start);
      if (end < 0) end = n;
      let lineEnd = end;
      if (lineEnd > start && b[lineEnd - 1] === CR) lineEnd--;
      if (lineEnd > start) this.line(b, start, lineEnd, second, sink);
      start = end + 1;
    }
  }

  private bad(reason: MalformedReason): void {
    this.malformed[reason]++;
  }

  private line(b: Uint8Array, start: number, end: number, second: number, sink: StatsdSink): void {
    this.lines++;
    if (end - start > this.lineBytesMax) return this.bad('too_long');
    // Events (_e{…}) and service checks (_sc|…) are DogStatsD messages we do not take.
    if (b[start] === 95 && (b[start + 1] === 101 || (b[start + 1] === 115 && b[start + 2] === 99))) return this.bad('unsupported_type');
    let colon = -1;
    let pipe = -1;
    for (let i = start; i < end; i++) {
      const c = b[i];
      if (c === COLON && colon < 0) colon = i;
      else if (c === PIPE) {
        pipe = i;
        break;
      }
    }
    if (colon <= start || pipe < 0 || colon > pipe) return this.bad('bad_syntax');
    let typeEnd = pipe + 1;
    while (typeEnd < end && b[typeEnd] !== PIPE) typeEnd++;
    const kind = kindOf(b, pipe + 1, typeEnd);
    if (kind < 0) return this.bad(kind === -2 ? 'unsupported_type' : 'bad_type');
    let weight = 1;
    for (let f = typeEnd; f < end; ) {
      let fEnd = f + 1;
      while (fEnd < end && b[fEnd] !== PIPE) fEnd++;
      if (b[f + 1] === AT) {
        const rate = parseNumber(b, f + 2, fEnd);
        if (!(rate > 0 && rate <= 1)) return this.bad('bad_rate');
        weight = 1 / rate;
      }
      f = fEnd;
    }
    // DogStatsD 1.1 packs several values into one line: name:1:2:3|d. Check them all first.
    for (let v = colon + 1; v <= pipe; ) {
      let vEnd = v;
      while (vEnd < pipe && b[vEnd] !== COLON) vEnd++;
      if (Number.isNaN(parseNumber(b, v, vEnd))) return this.bad('bad_value');
      v = vEnd + 1;
    }
    const slot = sink.slotForBytes(b, start, colon, kind, second);
    if (slot < 0) return;
    for (let v = colon + 1; v <= pipe; ) {
      let vEnd = v;
      while (vEnd < pipe && b[vEnd] !== COLON) vEnd++;
      const sign = b[v];
      const relative = kind === KindCode.Gauge && (sign === 43 || sign === 45);
      sink.observeSlot(slot, kind, parseNumber(b, v, vEnd), second, weight, relative);
      v = vEnd + 1;
    }
  }
}

/** Kind code of the type field, −1 when unknown, −2 for StatsD sets (not supported). */
function kindOf(b: Uint8Array, start: number, end: number): number {
  const len = end - start;
  const c0 = b[start];
  if (len === 1) {
    if (c0 === 103 /* g */) return KindCode.Gauge;
    if (c0 === 99 /* c */) return KindCode.Counter;
    if (c0 === 104 /* h */ || c0 === 100 /* d */) return KindCode.Distribution;
    if (c0 === 115 /* s */) return -2;
  }
  if (len === 2 && c0 === 109 /* m */ && b[start + 1] === 115 /* s */) return KindCode.Distribution;
  return -1;
}

/**
 * A finite decimal number in latin1 bytes[start..end) (sign, digits, point, exponent), else
 * NaN. Plain decimals of up to 15 digits are computed as integer / 10^k, which is the
 * correctly rounded double, the same as Number(); anything else goes through Number().
 */
function parseNumber(b: Uint8Array, start: number, end: number): number {
  if (end <= start) return NaN;
  let i = start;
  let neg = false;
  if (b[i] === 43 || b[i] === 45) {
    neg = b[i] === 45;
    i++;
  }
  let mantissa = 0;
  let digits = 0;
  let frac = 0;
  let dot = false;
  for (; i < end; i++) {
    const c = b[i]!;
    if (c >= 48 && c <= 57) {
      mantissa = mantissa * 10 + (c - 48);
      digits++;
      if (dot) frac++;
    } else if (c === 46 && !dot) dot = true;
    else break;
  }
  if (i === end && digits > 0 && digits <= 15) {
    const v = frac === 0 ? mantissa : mantissa / pow10[frac]!;
    return neg ? -v : v;
  }
  return slowNumber(b, start, end);
}

const pow10 = Array.from({ length: 16 }, (_, k) => 10 ** k);

function slowNumber(b: Uint8Array, start: number, end: number): number {
  for (let i = start; i < end; i++) {
    const c = b[i]!;
    const ok = (c >= 48 && c <= 57) || c === 46 || c === 43 || c === 45 || c === 101 || c === 69;
    if (!ok) return NaN;
  }
  const n = Number(Buffer.from(b.buffer, b.byteOffset + start, end - start).toString('latin1'));
  return Number.isFinite(n) ? n : NaN;
}
