// StatsD / DogStatsD line protocol, several lines per datagram (pystatsd pipelines, hot-shots'
// buffer):
//   name:value[:value…]|type[|@rate][|#tags][|c:container][|e:external][|card:…][|T<unix s>]
// Every line is either handed to the sink or counted under one reason: malformed
// (`apm.edge.statsd.malformed.<reason>`) when it is not the protocol, refused
// (`apm.edge.statsd.refused.<reason>`) when it is well-formed but not something we store.
// The sink may still drop an observation (`apm.edge.dropped.<reason>`, aggregator.ts).
//
// What each line type becomes (docs/design-notes.md "Edge"):
// - `c` counter: sum of value × 1/rate per second. `g` gauge: last value; `+N`/`-N` is a delta
//   from the last value this edge holds for the series (StatsD semantics, what pystatsd's
//   gauge(delta=True) and hot-shots' gaugeDelta mean; 0 for a series the edge does not hold:
//   new, evicted after seriesEvictSeconds idle, or after an edge restart, as for a restarted
//   statsd). `ms`, `h`, `d`: distribution values, each counting round(1/rate) times.
// - DogStatsD 1.1 value packing (`name:1:2:3|d`): every type but sets; type, rate and tags
//   apply to each value, exactly as that many one-value lines (a gauge keeps the last). One
//   bad value refuses the whole line (bad_value).
// - `s` set: the value is one member (the bytes up to the type; packing does not apply to
//   sets, as in the Datadog agent); the series' value is its distinct members per second.
// - Rates apply to counters and distributions only (DogStatsD spec); on gauges and sets they
//   are checked and ignored. Tags, container id, external data and cardinality are accepted and
//   ignored for now: the metric is its name (issue 2).
// - `|T<ts>` (DogStatsD 1.3, a value for a given second): the edge aggregates by arrival, so a
//   timestamp within 1 s of the open second's stamp (hot-shots rounds ms to the nearest second;
//   a line may cross a second boundary in flight) is taken as now; any other is refused
//   (`timestamp`: the edge does not back-fill).
// - Events (`_e{…}`) and service checks (`_sc|…`) are not metrics: refused by their reason.
// Hot path: the datagram is parsed as bytes; a known name costs a hash and a compare, no string.

import { KindCode } from '../schema/codec.js';
import { SetKind, type DropReason, type SeriesKind } from './aggregator.js';

export interface StatsdSink {
  /** Slot of the series named by latin1 bytes[start..end), or −1 when refused (its `values` counted by the sink). */
  slotForBytes(bytes: Uint8Array, start: number, end: number, kind: SeriesKind, second: number, values?: number): number;
  observeSlot(slot: number, kind: KindCode, value: number, second: number, weight: number, relative: boolean): DropReason | null;
  /** Adds the set member bytes[start..end) to a set series' second. */
  observeSetBytes(slot: number, bytes: Uint8Array, start: number, end: number, second: number): DropReason | null;
}

/** The second a datagram is parsed into: the aggregator's second and its wall-clock stamp (Unix s). */
export interface StatsdSecond {
  second: number;
  stamp: number;
}

/** Lines that are not the protocol, each with what it means (listed in `apm edge --help`). */
export const malformedReasons = {
  bad_syntax: 'no name:value|type shape',
  bad_value: 'a value is not a finite decimal number, or a set member is empty',
  bad_type: 'the type is not c, g, ms, h, d or s',
  bad_rate: 'the @rate is not in [1e-6, 1]',
  bad_timestamp: 'the |T timestamp is not whole Unix seconds',
  too_long: 'the line is longer than lineBytesMax',
} as const;

/**
 * The smallest @rate taken: a sample then stands for 10⁶ (its weight, 1 / rate). Summaries carry
 * counts and sketch bins as 32-bit integers; a rate of 3e-10 made one sample's weight 3.3e9 and
 * two such samples of one series in a rack passed 2³² in the rack's rollup (the rack stopped
 * with "sketch bin count exceeds the 32-bit wire limit"); 1e-300 made the weight 0 (a summary of
 * count 0, and the rack refused its whole datagram). No client samples that thinly.
 */
export const sampleRateMin = 1e-6;

/** Well-formed lines the edge does not store, each with why. */
export const refusedReasons = {
  event: 'a DogStatsD event (_e{…}): not a metric',
  service_check: 'a DogStatsD service check (_sc|…): not a metric',
  timestamp: 'a |T timestamp more than 1 s from the second being aggregated (no back-fill)',
} as const;

export type MalformedReason = keyof typeof malformedReasons;
export type RefusedReason = keyof typeof refusedReasons;

const NL = 10;
const CR = 13;
const COLON = 58;
const PIPE = 124;
const AT = 64;
const UNDERSCORE = 95;
const T = 84;

export class StatsdParser {
  lines = 0;
  readonly malformed = zeros(malformedReasons);
  readonly refused = zeros(refusedReasons);
  /** The line being read has DogStatsD fields (`|#tags`, `|c:container`, `|T`): set by fields(). */
  private dogStatsd = false;

  constructor(private readonly lineBytesMax: number) {}

  /** Parses every line of one datagram received in `at` into `sink`. */
  parse(b: Uint8Array, at: StatsdSecond, sink: StatsdSink): void {
    let start = 0;
    const n = b.length;
    while (start < n) {
      let end = b.indexOf(NL, start);
      if (end < 0) end = n;
      let lineEnd = end;
      if (lineEnd > start && b[lineEnd - 1] === CR) lineEnd--;
      if (lineEnd > start) this.line(b, start, lineEnd, at, sink);
      start = end + 1;
    }
  }

  private line(b: Uint8Array, start: number, end: number, at: StatsdSecond, sink: StatsdSink): void {
    this.lines++;
    if (end - start > this.lineBytesMax) return void this.malformed.too_long++;
    if (b[start] === UNDERSCORE) {
      // Exact prefixes: `_errors:1|c` is a metric.
      if (b[start + 1] === 101 /* e */ && b[start + 2] === 123 /* { */) return void this.refused.event++;
      if (b[start + 1] === 115 /* s */ && b[start + 2] === 99 /* c */ && b[start + 3] === PIPE) return void this.refused.service_check++;
    }
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
    if (colon <= start || pipe < 0 || colon > pipe) return void this.malformed.bad_syntax++;
    let typeEnd = pipe + 1;
    while (typeEnd < end && b[typeEnd] !== PIPE) typeEnd++;
    const kind = kindOf(b, pipe + 1, typeEnd);
    if (kind === -1) return void this.malformed.bad_type++;
    const weight = this.fields(b, typeEnd, end, at.stamp);
    if (weight < 0) return;
    if (kind === SetKind) {
      if (pipe === colon + 1) return void this.malformed.bad_value++;
      const slot = sink.slotForBytes(b, start, colon, kind, at.second);
      if (slot >= 0) sink.observeSetBytes(slot, b, colon + 1, pipe, at.second);
      return;
    }
    // DogStatsD 1.1 packs several values into one line: name:1:2:3|d. Check them all first.
    let values = 0;
    for (let v = colon + 1; v <= pipe; ) {
      let vEnd = v;
      while (vEnd < pipe && b[vEnd] !== COLON) vEnd++;
      if (Number.isNaN(parseNumber(b, v, vEnd))) return void this.malformed.bad_value++;
      values++;
      v = vEnd + 1;
    }
    const slot = sink.slotForBytes(b, start, colon, kind, at.second, values);
    if (slot < 0) return;
    for (let v = colon + 1; v <= pipe; ) {
      let vEnd = v;
      while (vEnd < pipe && b[vEnd] !== COLON) vEnd++;
      const sign = b[v];
      // A signed gauge adjusts the last value (etsy StatsD). On a DogStatsD line (any field
      // beyond the sample rate: tags, container, timestamp, e:, card:) only `+` does: DogStatsD has no gauge deltas and its
      // clients send a negative value as `-3.5|g|#…`, which as a delta drifted without bound;
      // none writes `+` before a value, so `+5` stays a delta (hot-shots' gaugeDelta).
      const relative = kind === KindCode.Gauge && (sign === 43 || (sign === 45 && !this.dogStatsd));
      sink.observeSlot(slot, kind as KindCode, parseNumber(b, v, vEnd), at.second, weight, relative);
      v = vEnd + 1;
    }
  }

  /**
   * Reads the fields after the type, bytes[from..end) (each starts at a `|`): returns the
   * weight (1 / rate), or −1 when the line is refused (counted here). Tags and the other
   * DogStatsD fields are skipped.
   */
  private fields(b: Uint8Array, from: number, end: number, stamp: number): number {
    let weight = 1;
    this.dogStatsd = false;
    for (let f = from; f < end; ) {
      let fEnd = f + 1;
      while (fEnd < end && b[fEnd] !== PIPE) fEnd++;
      const c = b[f + 1];
      // Any field but the sample rate is DogStatsD's (tags, timestamp, container id, external
      // data `e:`, cardinality `card:`): its negative gauges are values, not deltas.
      if (c !== AT) this.dogStatsd = true;
      if (c === AT) {
        const rate = parseNumber(b, f + 2, fEnd);
        if (!(rate >= sampleRateMin && rate <= 1)) return this.malformedLine('bad_rate');
        weight = 1 / rate;
      } else if (c === T) {
        const ts = parseNumber(b, f + 2, fEnd);
        if (!Number.isInteger(ts)) return this.malformedLine('bad_timestamp');
        if (Math.abs(ts - stamp) > 1) {
          this.refused.timestamp++;
          return -1;
        }
      }
      f = fEnd;
    }
    return weight;
  }

  private malformedLine(reason: MalformedReason): number {
    this.malformed[reason]++;
    return -1;
  }
}

function zeros<K extends string>(reasons: Record<K, string>): Record<K, number> {
  const out = {} as Record<K, number>;
  for (const k of Object.keys(reasons) as K[]) out[k] = 0;
  return out;
}

/** Kind of the type field, −1 when unknown. */
function kindOf(b: Uint8Array, start: number, end: number): SeriesKind | -1 {
  const len = end - start;
  const c0 = b[start];
  if (len === 1) {
    if (c0 === 103 /* g */) return KindCode.Gauge;
    if (c0 === 99 /* c */) return KindCode.Counter;
    if (c0 === 104 /* h */ || c0 === 100 /* d */) return KindCode.Distribution;
    if (c0 === 115 /* s */) return SetKind;
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
