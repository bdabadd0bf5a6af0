// StatsD / DogStatsD line protocol: `name:value[:value…]|type[|@rate][|#tags][|c:…][|T…]`,
// several lines per datagram. Types g (with +N/-N relative gauges), c, ms, h, d. A malformed
// line is counted by reason and skipped; the rest of the datagram is still used. Tags are
// accepted and ignored for now: the metric is its name (issue 2).

import { KindCode } from '../schema/codec.js';
import type { DropReason } from './aggregator.js';

export interface StatsdSink {
  observe(name: string, kind: KindCode, value: number, second: number, weight: number, relative: boolean): DropReason | null;
}

export type MalformedReason = 'bad_syntax' | 'bad_value' | 'bad_type' | 'bad_rate' | 'too_long' | 'unsupported_type';

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
  parse(datagram: Uint8Array, second: number, sink: StatsdSink): void {
    const text = Buffer.from(datagram.buffer, datagram.byteOffset, datagram.byteLength).toString('latin1');
    let start = 0;
    while (start < text.length) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      let lineEnd = end;
      if (lineEnd > start && text.charCodeAt(lineEnd - 1) === 13) lineEnd--;
      if (lineEnd > start) this.line(text, start, lineEnd, second, sink);
      start = end + 1;
    }
  }

  private bad(reason: MalformedReason): void {
    this.malformed[reason]++;
  }

  private line(text: string, start: number, end: number, second: number, sink: StatsdSink): void {
    this.lines++;
    if (end - start > this.lineBytesMax) return this.bad('too_long');
    if (text.startsWith('_e{', start) || text.startsWith('_sc|', start)) return this.bad('unsupported_type');
    const colon = text.indexOf(':', start);
    const pipe = text.indexOf('|', start);
    if (colon <= start || pipe < 0 || pipe >= end || colon > pipe) return this.bad('bad_syntax');
    let typeEnd = text.indexOf('|', pipe + 1);
    if (typeEnd < 0 || typeEnd > end) typeEnd = end;
    const kind = kindOf(text, pipe + 1, typeEnd);
    if (kind < 0) return this.bad(kind === -2 ? 'unsupported_type' : 'bad_type');
    let weight = 1;
    for (let f = typeEnd; f < end; ) {
      let fEnd = text.indexOf('|', f + 1);
      if (fEnd < 0 || fEnd > end) fEnd = end;
      if (text.charCodeAt(f + 1) === 64 /* @ */) {
        const rate = strictNumber(text, f + 2, fEnd);
        if (!(rate > 0 && rate <= 1)) return this.bad('bad_rate');
        weight = 1 / rate;
      }
      f = fEnd;
    }
    const name = text.slice(start, colon);
    // DogStatsD 1.1 packs several values into one line: name:1:2:3|d.
    for (let v = colon + 1; v <= pipe; ) {
      let vEnd = text.indexOf(':', v);
      if (vEnd < 0 || vEnd > pipe) vEnd = pipe;
      const value = strictNumber(text, v, vEnd);
      if (Number.isNaN(value)) return this.bad('bad_value');
      const sign = text.charCodeAt(v);
      const relative = kind === KindCode.Gauge && (sign === 43 || sign === 45);
      sink.observe(name, kind, value, second, weight, relative);
      v = vEnd + 1;
    }
  }
}

/** Kind code of the type field, −1 when unknown, −2 for StatsD sets (not supported). */
function kindOf(text: string, start: number, end: number): number {
  const len = end - start;
  const c0 = text.charCodeAt(start);
  if (len === 1) {
    if (c0 === 103 /* g */) return KindCode.Gauge;
    if (c0 === 99 /* c */) return KindCode.Counter;
    if (c0 === 104 /* h */ || c0 === 100 /* d */) return KindCode.Distribution;
    if (c0 === 115 /* s */) return -2;
  }
  if (len === 2 && c0 === 109 /* m */ && text.charCodeAt(start + 1) === 115 /* s */) return KindCode.Distribution;
  return -1;
}

/** A finite decimal number in text[start..end) (sign, digits, point, exponent), else NaN. */
function strictNumber(text: string, start: number, end: number): number {
  if (end <= start) return NaN;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    const ok = (c >= 48 && c <= 57) || c === 46 || c === 43 || c === 45 || c === 101 || c === 69;
    if (!ok) return NaN;
  }
  const n = Number(text.slice(start, end));
  return Number.isFinite(n) ? n : NaN;
}
