// `apm bench --only codec` (issue 14): bytes per point of the value codec (core/codec/values.ts)
// on the comparison mix (tools/shapes-compare.ts), per shape and mixed, alone and under each
// entropy stage over whole rows (40 servers × 60 s of one metric, as the store groups them),
// against today's value path (decimal varints, deflated with the row; reimplemented here so the
// baseline does not move while core/block.ts changes). Values only, written as a row writes
// them: with the row's habit (its first series' choices, 3 bytes counted per row); presence
// maps, server ids and the rest of the row header are the row's. Encode and decode ns per point.
// Throws on any round-trip mismatch.

import { brotliCompressSync, constants, deflateRawSync, inflateRawSync } from 'node:zlib';
import { ByteWriter } from '../core/block.js';
import { readSeries, seriesHabit, writeSeries } from '../core/codec/values.js';
import type { Figure } from './bench-edge.js';
import { fillSeries, mixShapeNames, mixShapeOf, type MixOptions } from './shapes-compare.js';
import { Shape, ShapeColumns, shapeOf } from './shapes.js';

const serversPerRow = 40;
const blockSeconds = 60;

// ---- today's value path (core/block.ts writeValues/readValues at 488178e), for the baseline ----

const zz = (n: number) => (n >= 0 ? n * 2 : -n * 2 - 1);
const unzz = (z: number) => (z % 2 === 0 ? z / 2 : -(z + 1) / 2);
const varintLen = (v: number) => (v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : Math.ceil(Math.log2(v + 1) / 7));

function legacyExponent(vals: Float64Array, from: number, to: number): number {
  let e = 0;
  let scale = 1;
  for (let i = from; i < to; i++) {
    const v = vals[i]!;
    for (;;) {
      const r = Math.round(v * scale);
      if (Math.abs(r) < 2 ** 50 && r / scale === v) break;
      if (++e > 9) return -1;
      scale *= 10;
    }
  }
  return e;
}

function legacyWrite(w: ByteWriter, vals: Float64Array, from: number, to: number): void {
  const e = legacyExponent(vals, from, to);
  if (e < 0) {
    w.u8(0xff);
    for (let i = from; i < to; i++) w.f64(vals[i]!);
    return;
  }
  const scale = 10 ** e;
  let min = Infinity;
  let prev = 0;
  let deltaBytes = 0;
  for (let i = from; i < to; i++) {
    const n = Math.round(vals[i]! * scale);
    deltaBytes += varintLen(zz(n - prev));
    prev = n;
    if (n < min) min = n;
  }
  let offsetBytes = varintLen(zz(min));
  for (let i = from; i < to; i++) offsetBytes += varintLen(Math.round(vals[i]! * scale) - min);
  if (offsetBytes < deltaBytes) {
    w.u8(e | 0x40);
    w.varint(zz(min));
    for (let i = from; i < to; i++) w.varint(Math.round(vals[i]! * scale) - min);
    return;
  }
  w.u8(e);
  prev = 0;
  for (let i = from; i < to; i++) {
    const n = Math.round(vals[i]! * scale);
    w.varint(zz(n - prev));
    prev = n;
  }
}

function legacyRead(r: { buf: Uint8Array; pos: number; dv: DataView }, out: Float64Array, at: number, n: number): void {
  const varint = () => {
    let result = 0;
    let scale = 1;
    for (;;) {
      const b = r.buf[r.pos++]!;
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 0x80;
    }
  };
  const e = r.buf[r.pos++]!;
  if (e === 0xff) {
    for (let i = 0; i < n; i++, r.pos += 8) out[at + i] = r.dv.getFloat64(r.pos, true);
    return;
  }
  const scale = 10 ** (e & 0x3f);
  if ((e & 0x40) !== 0) {
    const min = unzz(varint());
    for (let i = 0; i < n; i++) out[at + i] = (min + varint()) / scale;
    return;
  }
  let prev = 0;
  for (let i = 0; i < n; i++) out[at + i] = (prev += unzz(varint())) / scale;
}

// ---- the bench ----

interface Stage {
  name: string;
  pack(raw: Uint8Array): Uint8Array;
}

const brotli = (quality: number) => (raw: Uint8Array) => brotliCompressSync(raw, { params: { [constants.BROTLI_PARAM_QUALITY]: quality, [constants.BROTLI_PARAM_SIZE_HINT]: raw.length } });
const stages: Stage[] = [
  { name: 'none', pack: (raw) => raw },
  { name: 'deflate 1', pack: (raw) => deflateRawSync(raw, { level: 1 }) },
  { name: 'deflate 6', pack: (raw) => deflateRawSync(raw, { level: 6 }) },
  { name: 'deflate 9', pack: (raw) => deflateRawSync(raw, { level: 9 }) },
  { name: 'brotli 5', pack: brotli(5) },
  { name: 'brotli 11', pack: brotli(11) },
];

/** Per shape: bytes under each stage (new codec), today's deflated and raw bytes, points, times. */
interface Tally {
  points: number;
  bytes: Float64Array;
  legacyDeflated: number;
  legacyRaw: number;
  encodeNs: number;
  decodeNs: number;
  legacyEncodeNs: number;
  legacyDecodeNs: number;
  /** deflate level 1 of the new codec's row, and inflate of it. */
  deflateNs: number;
  inflateNs: number;
}

const tally = (): Tally => ({ points: 0, bytes: new Float64Array(stages.length), legacyDeflated: 0, legacyRaw: 0, encodeNs: 0, decodeNs: 0, legacyEncodeNs: 0, legacyDecodeNs: 0, deflateNs: 0, inflateNs: 0 });

const bitsEqual = (a: Float64Array, b: Float64Array) => {
  const x = new BigUint64Array(a.buffer, a.byteOffset, a.length);
  const y = new BigUint64Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i;
  return -1;
};

/** Encodes, packs and decodes every row of one metric (servers × seconds of series) into t. */
function measureMetric(vals: Float64Array, servers: number, seconds: number, t: Tally, label: string): void {
  const w = new ByteWriter();
  const lw = new ByteWriter();
  const rowVals = new Float64Array(serversPerRow * blockSeconds);
  const out = new Float64Array(serversPerRow * blockSeconds);
  for (let r0 = 0; r0 < servers; r0 += serversPerRow) {
    const rs = Math.min(serversPerRow, servers - r0);
    for (let b0 = 0; b0 < seconds; b0 += blockSeconds) {
      const n = Math.min(blockSeconds, seconds - b0);
      for (let j = 0; j < rs; j++) rowVals.set(vals.subarray((r0 + j) * seconds + b0, (r0 + j) * seconds + b0 + n), j * n);
      const points = rs * n;
      w.pos = 0;
      let t0 = process.hrtime.bigint();
      const habit = seriesHabit(rowVals, 0, n);
      for (let j = 0; j < rs; j++) writeSeries(w, rowVals, j * n, j * n + n, habit);
      t.encodeNs += Number(process.hrtime.bigint() - t0);
      const raw = w.buf.subarray(0, w.pos);
      t0 = process.hrtime.bigint();
      const r = { buf: raw, pos: 0 };
      for (let j = 0; j < rs; j++) readSeries(r, out, j * n, n, habit);
      t.decodeNs += Number(process.hrtime.bigint() - t0);
      const bad = bitsEqual(out.subarray(0, points), rowVals.subarray(0, points));
      if (bad >= 0 || r.pos !== raw.length) throw new Error(`bench codec: ${label} row at server ${r0} second ${b0}: value ${bad} is ${out[bad]}, wrote ${rowVals[bad]} (read ${r.pos} of ${raw.length} bytes)`);
      // The habit's 3 bytes are the row's (core/block.ts), counted here with its values.
      for (let s = 0; s < stages.length; s++) t.bytes[s] = t.bytes[s]! + stages[s]!.pack(raw).length + 3;
      t0 = process.hrtime.bigint();
      const packed1 = deflateRawSync(raw, { level: 1 });
      const t1 = process.hrtime.bigint();
      inflateRawSync(packed1);
      t.deflateNs += Number(t1 - t0);
      t.inflateNs += Number(process.hrtime.bigint() - t1);
      // Today's path: varints, then the row deflated at level 6.
      lw.pos = 0;
      t0 = process.hrtime.bigint();
      for (let j = 0; j < rs; j++) legacyWrite(lw, rowVals, j * n, j * n + n);
      const packed = deflateRawSync(lw.buf.subarray(0, lw.pos), { level: 6 });
      t.legacyEncodeNs += Number(process.hrtime.bigint() - t0);
      t0 = process.hrtime.bigint();
      const inflated = inflateRawSync(packed);
      const lr = { buf: inflated, pos: 0, dv: new DataView(inflated.buffer, inflated.byteOffset, inflated.byteLength) };
      for (let j = 0; j < rs; j++) legacyRead(lr, out, j * n, n);
      t.legacyDecodeNs += Number(process.hrtime.bigint() - t0);
      t.legacyRaw += lw.pos;
      t.legacyDeflated += packed.length;
      t.points += points;
    }
  }
}

function add(into: Tally, t: Tally): void {
  into.points += t.points;
  for (let s = 0; s < stages.length; s++) into.bytes[s] = into.bytes[s]! + t.bytes[s]!;
  into.legacyDeflated += t.legacyDeflated;
  into.legacyRaw += t.legacyRaw;
  into.encodeNs += t.encodeNs;
  into.decodeNs += t.decodeNs;
  into.legacyEncodeNs += t.legacyEncodeNs;
  into.legacyDecodeNs += t.legacyDecodeNs;
  into.deflateNs += t.deflateNs;
  into.inflateNs += t.inflateNs;
}

/** The codec section: per shape and mixed, a sample of `servers` servers × `metrics` metrics × `seconds` of the mix. */
export function codecFigures(quick: boolean): Figure[] {
  const servers = quick ? 80 : 200;
  const metrics = quick ? 8 : 40;
  const seconds = 600;
  // Rows: cpu, counter (rates), queue, latency, and counters as cumulative totals.
  const names = [...mixShapeNames, 'counter cumulative'];
  const tallies = names.map(tally);
  const vals = new Float64Array(servers * seconds);
  const opts = (counters: MixOptions['counters']): MixOptions => ({ counters });
  for (let m = 0; m < metrics; m++) {
    const shape = mixShapeOf(m);
    const variants: [MixOptions, number][] = [[opts('rate'), shape]];
    if (shape === mixShapeOf(1)) variants.push([opts('cumulative'), 4]);
    for (const [o, row] of variants) {
      for (let s = 0; s < servers; s++) fillSeries(s, m, seconds, vals, s * seconds, o);
      measureMetric(vals, servers, seconds, tallies[row]!, `metric ${m} (${names[row]})`);
    }
  }
  // Not in the mix: tools/shapes.ts' near-constants and daily cycles (the simulator's mix), where
  // today's deflate finds repeats across a row's servers.
  const extraNames = ['constant (tools/shapes.ts)', 'daily (tools/shapes.ts)'];
  const extraMetrics = [13, 19];
  if (shapeOf(13) !== Shape.Constant || shapeOf(19) !== Shape.Daily) throw new Error('bench codec: tools/shapes.ts metric shapes moved');
  const extra = new ShapeColumns(servers * 20, 1, 20);
  const extraVals = extraMetrics.map(() => new Float64Array(servers * seconds));
  for (let t = 0; t < seconds; t++) {
    extra.step(1_790_000_000 + t);
    for (let s = 0; s < servers; s++) extraMetrics.forEach((m, k) => (extraVals[k]![s * seconds + t] = extra.values[s * 20 + m]!));
  }
  const extraTallies = extraNames.map(tally);
  extraNames.forEach((name, k) => measureMetric(extraVals[k]!, servers, seconds, extraTallies[k]!, name));
  const mixed = tally();
  for (let i = 0; i < 4; i++) add(mixed, tallies[i]!);
  const mixedCumulative = tally();
  for (const i of [0, 4, 2, 3]) add(mixedCumulative, tallies[i]!);
  const rows: [string, Tally][] = [...names.map((n, i): [string, Tally] => [n, tallies[i]!]), ...extraNames.map((n, k): [string, Tally] => [n, extraTallies[k]!]), ['mixed (counters as rates)', mixed], ['mixed (cumulative counters)', mixedCumulative]];
  console.log(`  sample: ${servers} servers × ${metrics} metrics × ${seconds} s of tools/shapes-compare.ts; rows of ${serversPerRow} servers × ${blockSeconds} s; values only; B/point`);
  console.log(`  ${'shape'.padEnd(28)}${stages.map((s) => s.name.padStart(10)).join('')}${'today raw'.padStart(11)}${'today defl6'.padStart(12)}${'enc ns'.padStart(8)}${'dec ns'.padStart(8)}${'today enc'.padStart(10)}${'today dec'.padStart(10)}${'defl1 ns'.padStart(9)}${'infl ns'.padStart(8)}`);
  for (const [name, t] of rows) {
    const bp = (b: number) => (b / t.points).toFixed(3);
    console.log(
      `  ${name.padEnd(28)}${Array.from(t.bytes, (b) => bp(b).padStart(10)).join('')}${bp(t.legacyRaw).padStart(11)}${bp(t.legacyDeflated).padStart(12)}${(t.encodeNs / t.points).toFixed(0).padStart(8)}${(t.decodeNs / t.points).toFixed(1).padStart(8)}${(t.legacyEncodeNs / t.points).toFixed(0).padStart(10)}${(t.legacyDecodeNs / t.points).toFixed(1).padStart(10)}${(t.deflateNs / t.points).toFixed(1).padStart(9)}${(t.inflateNs / t.points).toFixed(1).padStart(8)}`,
    );
  }
  const figures: Figure[] = [];
  for (const [name, t] of rows) {
    figures.push({ name: `codec ${name}: values B/point, new codec alone`, value: t.bytes[0]! / t.points, unit: 'B', target: name.startsWith('mixed') ? '≤ 1.0' : undefined });
    figures.push({ name: `codec ${name}: values B/point, new codec + deflate 1`, value: t.bytes[1]! / t.points, unit: 'B' });
    figures.push({ name: `codec ${name}: values B/point, today (varints + deflate 6)`, value: t.legacyDeflated / t.points, unit: 'B' });
  }
  figures.push({ name: 'codec mixed: encode ns/point (new codec alone)', value: mixed.encodeNs / mixed.points, unit: 'ns' });
  figures.push({ name: 'codec mixed: decode ns/point (new codec alone)', value: mixed.decodeNs / mixed.points, unit: 'ns' });
  figures.push({ name: 'codec mixed: today encode + deflate 6 ns/point', value: mixed.legacyEncodeNs / mixed.points, unit: 'ns' });
  figures.push({ name: 'codec mixed: today inflate + decode ns/point', value: mixed.legacyDecodeNs / mixed.points, unit: 'ns' });
  figures.push({ name: 'codec mixed: deflate 1 of the new rows ns/point', value: mixed.deflateNs / mixed.points, unit: 'ns' });
  figures.push({ name: 'codec mixed: inflate of the new rows ns/point', value: mixed.inflateNs / mixed.points, unit: 'ns' });
  for (const [name, t] of rows) {
    if (t.bytes[0]! > t.legacyDeflated) console.log(`  note: ${name}: the new codec alone (${(t.bytes[0]! / t.points).toFixed(3)}) is larger than today's (${(t.legacyDeflated / t.points).toFixed(3)})`);
    if (t.bytes[1]! > t.legacyDeflated) console.log(`  note: ${name}: the new codec + deflate 1 (${(t.bytes[1]! / t.points).toFixed(3)}) is larger than today's (${(t.legacyDeflated / t.points).toFixed(3)})`);
  }
  return figures;
}
