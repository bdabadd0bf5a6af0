// Encoders and validating decoders for every apm message (schema/apm.fbs). A frame on the
// wire is the FlatBuffer followed by a little-endian CRC-32 of it. Decoders check size, CRC,
// identifier, version, every offset (schema/verify.ts) and every value a reader relies on
// before returning typed-array views into the buffer; they never throw on bad input.

import * as flatbuffers from 'flatbuffers';
import { crc32 } from 'node:zlib';
import { Body, EdgeSecond, Envelope, Nack, RackBatch, SeriesBlock, ServerSeries } from './generated/apm_generated.js';

/** Body types, for DecodeOptions.expect. */
export { Body };
import {
  batchServersMax,
  metricNameBytesMax,
  nackHashesMax,
  nackPartsMax,
  partsMax,
  rackIdBytesMax,
  secondMin,
  serverIdBytesMax,
  wireVersion,
} from './limits.js';
import { hashName, isMetricNameBytes, isServerId } from './names.js';
import { sketchCount } from './sketch.js';
import type { UnpackArena } from './pointpack.js';
import { decodeRackSecond, decodeShardSection, type RackSecondMessage, type ShardSectionMessage } from './section.js';
import { Reject, type RejectReason, type TableRef, Verifier } from './verify.js';

export { type RejectReason } from './verify.js';

export const fileIdentifier = 'APM1';
const crcBytes = 4;
/** Smallest possible frame: root offset, identifier, a minimal table, the CRC. */
export const frameBytesMin = 16;

export const enum KindCode {
  Gauge = 0,
  Counter = 1,
  Distribution = 2,
}

/**
 * Per-second summaries as columns (schema/apm.fbs SeriesBlock). Hashes are (lo, hi) uint32
 * pairs: entry i's hash is hashes[2i], hashes[2i + 1].
 */
export interface SeriesColumns {
  pointHashes: Uint32Array;
  pointKinds: Uint8Array;
  pointValues: Float64Array;
  distHashes: Uint32Array;
  distKinds: Uint8Array;
  distCounts: Uint32Array;
  distSums: Float64Array;
  distMins: Float64Array;
  distMaxes: Float64Array;
  /** Exclusive end of summary i's bins in sketchBytes; summary i starts at sketchEnds[i − 1] (or 0). */
  sketchEnds: Uint32Array;
  sketchBytes: Uint8Array;
  nameHashes: Uint32Array;
  nameEnds: Uint32Array;
  nameBytes: Uint8Array;
}

// Zero-length columns are shared: a datagram of gauges leaves 11 of its 14 columns empty, and a
// rack decodes thousands of datagrams a second (a view costs ~100 bytes of heap; the decoder's
// allocations set how often the rack's young generation is collected). Nothing can be written
// into a zero-length array.
const noU32 = new Uint32Array(0);
const noU8 = new Uint8Array(0);
const noF64 = new Float64Array(0);

/** Columns with nothing in them (their zero-length arrays are shared: nothing can be written into them). */
export function emptyColumns(): SeriesColumns {
  return { pointHashes: noU32, pointKinds: noU8, pointValues: noF64, distHashes: noU32, distKinds: noU8, distCounts: noU32, distSums: noF64, distMins: noF64, distMaxes: noF64, sketchEnds: noU32, sketchBytes: noU8, nameHashes: noU32, nameEnds: noU32, nameBytes: noU8 };
}

/**
 * `c` with the columns in `change` replaced, as a new object of the one shape every
 * SeriesColumns has (the literal below, fields in this order). A spread ({ ...c, ... }) gives
 * objects of other hidden classes, and the rack's per-second code, optimized for one, was
 * thrown away ("wrong map") and optimized again whenever another came by.
 */
export function withColumns(c: SeriesColumns, change: Partial<SeriesColumns>): SeriesColumns {
  return {
    pointHashes: change.pointHashes ?? c.pointHashes,
    pointKinds: change.pointKinds ?? c.pointKinds,
    pointValues: change.pointValues ?? c.pointValues,
    distHashes: change.distHashes ?? c.distHashes,
    distKinds: change.distKinds ?? c.distKinds,
    distCounts: change.distCounts ?? c.distCounts,
    distSums: change.distSums ?? c.distSums,
    distMins: change.distMins ?? c.distMins,
    distMaxes: change.distMaxes ?? c.distMaxes,
    sketchEnds: change.sketchEnds ?? c.sketchEnds,
    sketchBytes: change.sketchBytes ?? c.sketchBytes,
    nameHashes: change.nameHashes ?? c.nameHashes,
    nameEnds: change.nameEnds ?? c.nameEnds,
    nameBytes: change.nameBytes ?? c.nameBytes,
  };
}

/** Zeroed columns for `points` points and `dists` summaries with `sketchBytes` of sketches, no names. */
export function columnsFor(n: { points: number; dists: number; sketchBytes: number }): SeriesColumns {
  return {
    pointHashes: new Uint32Array(2 * n.points),
    pointKinds: new Uint8Array(n.points),
    pointValues: new Float64Array(n.points),
    distHashes: new Uint32Array(2 * n.dists),
    distKinds: new Uint8Array(n.dists),
    distCounts: new Uint32Array(n.dists),
    distSums: new Float64Array(n.dists),
    distMins: new Float64Array(n.dists),
    distMaxes: new Float64Array(n.dists),
    sketchEnds: new Uint32Array(n.dists),
    sketchBytes: new Uint8Array(n.sketchBytes),
    nameHashes: new Uint32Array(0),
    nameEnds: new Uint32Array(0),
    nameBytes: new Uint8Array(0),
  };
}

/** Name dictionary columns for names[i] with hash (hashes[2i], hashes[2i + 1]). */
export function nameColumns(hashes: Uint32Array, names: readonly string[]): Pick<SeriesColumns, 'nameHashes' | 'nameEnds' | 'nameBytes'> {
  const nameEnds = new Uint32Array(names.length);
  let end = 0;
  for (let i = 0; i < names.length; i++) nameEnds[i] = end += names[i]!.length;
  return { nameHashes: hashes, nameEnds, nameBytes: new Uint8Array(Buffer.from(names.join(''), 'latin1')) };
}

export interface EdgeSecondMessage {
  type: 'edgeSecond';
  server: string;
  session: number;
  seq: number;
  second: number;
  /** 0-based part index; parts === 0 marks a names-only datagram (an answer to a NACK). */
  part: number;
  parts: number;
  sentMs: number;
  series: SeriesColumns;
}

export interface NackMessage {
  type: 'nack';
  server: string;
  session: number;
  second: number;
  missingParts: Uint16Array;
  unknownHashes: Uint32Array;
}

export interface ServerSeriesEntry {
  server: string;
  series: SeriesColumns;
}

/** Encoder input for one server of a batch: its blocks are concatenated column by column. */
export interface ServerBlocks {
  server: string;
  blocks: SeriesColumns[];
}

export interface RackBatchMessage {
  type: 'rackBatch';
  rack: string;
  batchSeq: number;
  second: number;
  late: boolean;
  servers: ServerSeriesEntry[];
  rollup: SeriesColumns;
}

export type Message = EdgeSecondMessage | NackMessage | RackBatchMessage | ShardSectionMessage | RackSecondMessage;

export type DecodeResult<M> = { ok: true; msg: M } | { ok: false; reason: RejectReason; detail: string };

// ---------------------------------------------------------------------------------------------
// Encoding

interface RawBuilder {
  space: number;
  bb: flatbuffers.ByteBuffer;
}

function optionalVector(b: flatbuffers.Builder, data: ArrayBufferView, elemBytes: number): flatbuffers.Offset {
  return concatVector(b, [data], elemBytes);
}

/** Copies several typed arrays, in order, into the builder as one vector (0 when all are empty). */
export function concatVector(b: flatbuffers.Builder, parts: readonly ArrayBufferView[], elemBytes: number): flatbuffers.Offset {
  let total = 0;
  for (const p of parts) total += p.byteLength;
  if (total === 0) return 0;
  b.startVector(elemBytes, total / elemBytes, elemBytes);
  // The runtime exposes no bulk copy for wide scalars; this is what createByteVector() does.
  const raw = b as unknown as RawBuilder;
  raw.space -= total;
  let at = raw.space;
  const bytes = raw.bb.bytes();
  for (const p of parts) {
    bytes.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), at);
    at += p.byteLength;
  }
  return b.endVector();
}

/** sketch_ends of several blocks, each rebased past the sketch bytes of the blocks before it. */
function sketchEndsVector(b: flatbuffers.Builder, blocks: readonly SeriesColumns[]): flatbuffers.Offset {
  const off = concatVector(b, blocks.map((c) => c.sketchEnds), 4);
  if (off === 0 || blocks.length === 1) return off;
  const raw = b as unknown as RawBuilder;
  const view = new DataView(raw.bb.bytes().buffer, raw.bb.bytes().byteOffset);
  let at = raw.space + 4; // past the vector's length prefix
  let base = 0;
  for (const c of blocks) {
    for (let i = 0; i < c.sketchEnds.length; i++, at += 4) view.setUint32(at, c.sketchEnds[i]! + base, true);
    base += c.sketchBytes.length;
  }
  return off;
}

function seriesBlock(b: flatbuffers.Builder, blocks: readonly SeriesColumns[]): flatbuffers.Offset {
  const col = (pick: (c: SeriesColumns) => ArrayBufferView, elemBytes: number) => concatVector(b, blocks.map(pick), elemBytes);
  const o = [
    col((c) => c.pointHashes, 8),
    col((c) => c.pointKinds, 1),
    col((c) => c.pointValues, 8),
    col((c) => c.distHashes, 8),
    col((c) => c.distKinds, 1),
    col((c) => c.distCounts, 4),
    col((c) => c.distSums, 8),
    col((c) => c.distMins, 8),
    col((c) => c.distMaxes, 8),
    sketchEndsVector(b, blocks),
    col((c) => c.sketchBytes, 1),
    col((c) => c.nameHashes, 8),
    nameEndsVector(b, blocks),
    col((c) => c.nameBytes, 1),
  ] as const;
  SeriesBlock.startSeriesBlock(b);
  const adders = [
    SeriesBlock.addPointHashes,
    SeriesBlock.addPointKinds,
    SeriesBlock.addPointValues,
    SeriesBlock.addDistHashes,
    SeriesBlock.addDistKinds,
    SeriesBlock.addDistCounts,
    SeriesBlock.addDistSums,
    SeriesBlock.addDistMins,
    SeriesBlock.addDistMaxes,
    SeriesBlock.addSketchEnds,
    SeriesBlock.addSketchBytes,
    SeriesBlock.addNameHashes,
    SeriesBlock.addNameEnds,
    SeriesBlock.addNameBytes,
  ] as const;
  for (let i = 0; i < adders.length; i++) if (o[i] !== 0) adders[i]!(b, o[i]!);
  return SeriesBlock.endSeriesBlock(b);
}

/** name_ends of several blocks, rebased like sketch_ends. */
function nameEndsVector(b: flatbuffers.Builder, blocks: readonly SeriesColumns[]): flatbuffers.Offset {
  if (blocks.length === 1) return concatVector(b, [blocks[0]!.nameEnds], 4);
  let base = 0;
  const rebased = blocks.map((c) => {
    const r = c.nameEnds.map((e) => e + base);
    base += c.nameBytes.length;
    return r;
  });
  return concatVector(b, rebased, 4);
}

/** Bytes a block will take in a frame, to size the builder once. */
function blockBytes(c: SeriesColumns): number {
  let n = 256;
  for (const v of Object.values(c) as ArrayBufferView[]) n += v.byteLength + 12;
  return n;
}

/** Builds frames; reuses one builder, returns a fresh 8-byte-aligned Uint8Array per frame. */
export class Encoder {
  private b = new flatbuffers.Builder(64 * 1024);

  /** A builder with room for `bytes`: growing by doubling would copy a large batch many times. */
  private builder(bytes: number): flatbuffers.Builder {
    if ((this.b as unknown as RawBuilder).bb.capacity() < bytes) this.b = new flatbuffers.Builder(bytes);
    this.b.clear();
    return this.b;
  }

  /** An EdgeSecond frame: a fresh array, or a view of `into`'s memory (valid until its reset). */
  edgeSecond(m: Omit<EdgeSecondMessage, 'type'>, into?: FrameArena): Uint8Array {
    const b = this.builder(blockBytes(m.series));
    const server = b.createString(m.server);
    const series = seriesBlock(b, [m.series]);
    EdgeSecond.startEdgeSecond(b);
    EdgeSecond.addServer(b, server);
    EdgeSecond.addSession(b, m.session);
    EdgeSecond.addSeq(b, m.seq);
    EdgeSecond.addSecond(b, m.second);
    EdgeSecond.addPart(b, m.part);
    EdgeSecond.addParts(b, m.parts);
    EdgeSecond.addSentMs(b, m.sentMs);
    EdgeSecond.addSeries(b, series);
    return this.finish(Body.EdgeSecond, EdgeSecond.endEdgeSecond(b), into);
  }

  nack(m: Omit<NackMessage, 'type'>): Uint8Array {
    const b = this.builder(1024 + m.missingParts.byteLength + m.unknownHashes.byteLength);
    const server = b.createString(m.server);
    const missing = optionalVector(b, m.missingParts, 2);
    const unknown = optionalVector(b, m.unknownHashes, 8);
    Nack.startNack(b);
    Nack.addServer(b, server);
    Nack.addSession(b, m.session);
    Nack.addSecond(b, m.second);
    if (missing !== 0) Nack.addMissingParts(b, missing);
    if (unknown !== 0) Nack.addUnknownHashes(b, unknown);
    return this.finish(Body.Nack, Nack.endNack(b));
  }

  /** A batch; each server's blocks are concatenated (the rack passes an edge's parts as they came). */
  rackBatch(m: Omit<RackBatchMessage, 'type' | 'servers'> & { servers: ServerBlocks[] }): Uint8Array {
    let size = blockBytes(m.rollup);
    for (const s of m.servers) for (const c of s.blocks) size += blockBytes(c);
    const b = this.builder(size);
    const rack = b.createString(m.rack);
    const entries = m.servers.map((s) => {
      const server = b.createString(s.server);
      const series = seriesBlock(b, s.blocks);
      ServerSeries.startServerSeries(b);
      ServerSeries.addServer(b, server);
      ServerSeries.addSeries(b, series);
      return ServerSeries.endServerSeries(b);
    });
    const servers = RackBatch.createServersVector(b, entries);
    const rollup = seriesBlock(b, [m.rollup]);
    RackBatch.startRackBatch(b);
    RackBatch.addRack(b, rack);
    RackBatch.addBatchSeq(b, BigInt(m.batchSeq));
    RackBatch.addSecond(b, m.second);
    RackBatch.addLate(b, m.late);
    RackBatch.addServers(b, servers);
    RackBatch.addRollup(b, rollup);
    return this.finish(Body.RackBatch, RackBatch.endRackBatch(b));
  }

  /**
   * A frame of any body (schema/section.ts): begin() gives a cleared builder with room for
   * `bytes`, the caller adds the body's table, and end() wraps it. Two calls rather than a
   * callback: a closure made per frame was optimized again and again by V8 on a rack's hot
   * path (tens of compilations a second).
   */
  begin(bytes: number): flatbuffers.Builder {
    return this.builder(bytes);
  }

  end(type: Body, body: flatbuffers.Offset, into?: FrameArena): Uint8Array {
    return this.finish(type, body, into);
  }

  /** The finished frame with its CRC: a fresh array, or a view of `into`'s memory (valid until its reset). */
  private finish(type: Body, body: flatbuffers.Offset, into?: FrameArena): Uint8Array {
    const b = this.b;
    b.forceDefaults(false);
    Envelope.startEnvelope(b);
    Envelope.addVersion(b, wireVersion);
    Envelope.addBodyType(b, type);
    Envelope.addBody(b, body);
    b.finish(Envelope.endEnvelope(b), fileIdentifier);
    const fb = b.asUint8Array();
    const out = into === undefined ? uninitialized(fb.length + crcBytes) : into.take(fb.length + crcBytes);
    out.set(fb);
    const crc = crc32(fb);
    out[fb.length] = crc & 0xff;
    out[fb.length + 1] = (crc >>> 8) & 0xff;
    out[fb.length + 2] = (crc >>> 16) & 0xff;
    out[fb.length + 3] = crc >>> 24;
    return out;
  }
}

/**
 * Memory every byte of which the caller writes, not zeroed first. Its own allocation, not a
 * slice of Node's shared slabs: an edge keeps its frames for 30 s, and a slab would keep every
 * frame cut from it alive (and a transfer of .buffer would take them all). A plain Uint8Array,
 * not a Buffer (whose slice() would not copy).
 */
function uninitialized(bytes: number): Uint8Array {
  const b = Buffer.allocUnsafeSlow(bytes);
  return new Uint8Array(b.buffer, b.byteOffset, bytes);
}

/**
 * Reused memory for frames that live only until the caller's next reset (a rack second's shard
 * sections, copied into its body right after): no fresh allocation per frame. Each frame starts
 * 8-byte aligned (decoders view its float columns in place). Growing allocates a larger array;
 * views taken before stay valid (they keep the old one).
 */
export class FrameArena {
  private buf: Uint8Array;
  private used = 0;

  /** `bytes`: the first array's size (a caller that knows about what it will take sizes it once). */
  constructor(bytes = 1 << 16) {
    this.buf = new Uint8Array(Math.max(8, bytes));
  }

  reset(): void {
    this.used = 0;
  }

  take(bytes: number): Uint8Array {
    const at = (this.used + 7) & ~7;
    if (at + bytes > this.buf.length) {
      this.buf = new Uint8Array(Math.max(2 * this.buf.length, bytes + 8));
      this.used = 0;
      return this.take(bytes);
    }
    this.used = at + bytes;
    return this.buf.subarray(at, at + bytes);
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding

export interface DecodeOptions {
  /**
   * Verify every dictionary name against its hash (default). A receiver that keeps its own
   * name table (the rack) turns this off and verifies only names it has not seen, with
   * verifyName(): hashing every repeated name costs more than the rest of the decode.
   */
  verifyNameHashes?: boolean;
  /**
   * The one body type this receiver takes: any other is refused (`unexpected_body`) before its
   * body is decoded. Without it a receiver paid for a whole decode of a body it then refused —
   * an EdgeSecond sent to the core's ingest route verified millions of name hashes (seconds of
   * the HTTP thread per request).
   */
  expect?: Body;
  /**
   * Where a ShardSection's packed points are unpacked: views into memory the caller recycles
   * (UnpackArena.reset) once it is done with every message decoded into it. Without it, each
   * section's columns take a buffer of their own.
   */
  points?: UnpackArena;
}

/** Decodes and fully validates one frame of at most `bytesMax` bytes. Never throws on bad input. */
export function decodeFrame(frame: Uint8Array, bytesMax: number, opts: DecodeOptions = {}): DecodeResult<Message> {
  try {
    return { ok: true, msg: decodeChecked(frame, bytesMax, opts.verifyNameHashes ?? true, opts.expect, opts.points ?? null) };
  } catch (err) {
    if (err instanceof Reject) return { ok: false, reason: err.reason, detail: err.message };
    throw err;
  }
}

function decodeChecked(frame: Uint8Array, bytesMax: number, verifyNameHashes: boolean, expect: Body | undefined, points: UnpackArena | null): Message {
  if (frame.length > bytesMax) throw new Reject('too_large', `frame is ${frame.length} bytes > limit ${bytesMax}`);
  if (frame.length < frameBytesMin) throw new Reject('too_short', `frame is ${frame.length} bytes < minimum ${frameBytesMin}`);
  const fbLength = frame.length - crcBytes;
  // Typed-array views need 8-byte alignment relative to the ArrayBuffer.
  let bytes = frame.subarray(0, fbLength);
  if (bytes.byteOffset % 8 !== 0) bytes = Uint8Array.from(bytes);
  const stored = (frame[fbLength]! | (frame[fbLength + 1]! << 8) | (frame[fbLength + 2]! << 16) | (frame[fbLength + 3]! << 24)) >>> 0;
  if (crc32(bytes) !== stored) throw new Reject('bad_checksum', 'CRC-32 does not match the frame');
  if (bytes[4] !== 0x41 || bytes[5] !== 0x50 || bytes[6] !== 0x4d || bytes[7] !== 0x31) {
    throw new Reject('bad_identifier', `identifier is not ${fileIdentifier}`);
  }
  const v = new Verifier(bytes);
  v.nameHashes = verifyNameHashes;
  v.points = points;
  const env = v.tableAt(0, 'Envelope');
  const version = v.u16(env, 0, 'Envelope.version');
  if (version !== wireVersion) throw new Reject('bad_version', `wire version ${version}, this build speaks ${wireVersion}`);
  const bodyType = v.u8(env, 1, 'Envelope.body_type');
  if (expect !== undefined && bodyType !== expect) throw new Reject('unexpected_body', `expected body ${Body[expect]}, got ${Body[bodyType] ?? `body type ${bodyType}`}`);
  const bodyAt = v.field(env, 2, 4, 'Envelope.body');
  if (bodyAt === 0) throw new Reject('bad_columns', 'Envelope has no body');
  const body = v.tableAt(bodyAt, 'Envelope.body');
  switch (bodyType) {
    case Body.EdgeSecond:
      return decodeEdgeSecond(v, body);
    case Body.Nack:
      return decodeNack(v, body);
    case Body.RackBatch:
      return decodeRackBatch(v, body);
    case Body.ShardSection:
      return decodeShardSection(v, body);
    case Body.RackSecond:
      return decodeRackSecond(v, body);
    default:
      throw new Reject('unexpected_body', `unknown body type ${bodyType}`);
  }
}

export function requireServerId(id: string | null, what: string): string {
  if (id === null || !isServerId(id)) throw new Reject('bad_name', `${what} ${JSON.stringify(id)} is not [A-Za-z0-9._-]{1,64}`);
  return id;
}

export function requireSecond(second: number): number {
  if (second < secondMin) throw new Reject('bad_value', `second ${second} is before ${secondMin}`);
  return second;
}

function decodeEdgeSecond(v: Verifier, t: TableRef): EdgeSecondMessage {
  const server = requireServerId(v.string(t, 0, serverIdBytesMax, 'EdgeSecond.server'), 'server id');
  const part = v.u16(t, 4, 'EdgeSecond.part');
  const parts = v.u16(t, 5, 'EdgeSecond.parts');
  if (parts > partsMax || (parts > 0 && part >= parts) || (parts === 0 && part !== 0)) {
    throw new Reject('bad_value', `part ${part} of ${parts} is impossible (parts ≤ ${partsMax})`);
  }
  const sentMs = v.f64(t, 6, 'EdgeSecond.sent_ms');
  if (!Number.isFinite(sentMs)) throw new Reject('bad_value', 'sent_ms is not finite');
  const seriesAt = v.field(t, 7, 4, 'EdgeSecond.series');
  const series = seriesAt === 0 ? emptyColumns() : decodeSeries(v, v.tableAt(seriesAt, 'SeriesBlock'));
  if (parts === 0 && (series.pointKinds.length > 0 || series.distKinds.length > 0)) {
    throw new Reject('bad_columns', 'a names-only datagram (parts 0) carries summaries');
  }
  return {
    type: 'edgeSecond',
    server,
    session: v.u32(t, 1, 'EdgeSecond.session'),
    seq: v.u32(t, 2, 'EdgeSecond.seq'),
    second: requireSecond(v.u32(t, 3, 'EdgeSecond.second')),
    part,
    parts,
    sentMs,
    series,
  };
}

function decodeNack(v: Verifier, t: TableRef): NackMessage {
  const server = requireServerId(v.string(t, 0, serverIdBytesMax, 'Nack.server'), 'server id');
  const missing = v.vector(t, 3, 2, nackPartsMax, 'Nack.missing_parts');
  const unknown = v.vector(t, 4, 8, nackHashesMax, 'Nack.unknown_hashes');
  const missingParts = new Uint16Array(v.bytes.buffer, v.bytes.byteOffset + missing.start, missing.length);
  for (let i = 0; i < missingParts.length; i++) {
    if (missingParts[i]! >= partsMax) throw new Reject('bad_value', `missing part ${missingParts[i]} ≥ ${partsMax}`);
  }
  return {
    type: 'nack',
    server,
    session: v.u32(t, 1, 'Nack.session'),
    second: requireSecond(v.u32(t, 2, 'Nack.second')),
    missingParts,
    unknownHashes: new Uint32Array(v.bytes.buffer, v.bytes.byteOffset + unknown.start, unknown.length * 2),
  };
}

function decodeRackBatch(v: Verifier, t: TableRef): RackBatchMessage {
  const rack = requireServerId(v.string(t, 0, rackIdBytesMax, 'RackBatch.rack'), 'rack id');
  const list = v.vector(t, 4, 4, batchServersMax, 'RackBatch.servers');
  const servers: ServerSeriesEntry[] = [];
  for (let i = 0; i < list.length; i++) {
    const s = v.tableAt(list.start + 4 * i, 'ServerSeries');
    const server = requireServerId(v.string(s, 0, serverIdBytesMax, 'ServerSeries.server'), 'server id');
    const at = v.field(s, 1, 4, 'ServerSeries.series');
    servers.push({ server, series: at === 0 ? emptyColumns() : decodeSeries(v, v.tableAt(at, 'SeriesBlock')) });
  }
  const rollupAt = v.field(t, 5, 4, 'RackBatch.rollup');
  return {
    type: 'rackBatch',
    rack,
    batchSeq: v.u53(t, 1, 'RackBatch.batch_seq'),
    second: requireSecond(v.u32(t, 2, 'RackBatch.second')),
    late: v.u8(t, 3, 'RackBatch.late') !== 0,
    servers,
    rollup: rollupAt === 0 ? emptyColumns() : decodeSeries(v, v.tableAt(rollupAt, 'SeriesBlock')),
  };
}

/** Names of SeriesBlock's fields for decode errors, made once (not per decoded column). */
const seriesFieldNames = Array.from({ length: 32 }, (_, slot) => `SeriesBlock field ${slot}`);

function colU32(v: Verifier, t: TableRef, slot: number, elemBytes: number, perElem: number): Uint32Array {
  const r = v.vector(t, slot, elemBytes, v.bytes.length, seriesFieldNames[slot]!);
  return r.length === 0 ? noU32 : new Uint32Array(v.bytes.buffer, v.bytes.byteOffset + r.start, r.length * perElem);
}

function colU8(v: Verifier, t: TableRef, slot: number): Uint8Array {
  const r = v.vector(t, slot, 1, v.bytes.length, seriesFieldNames[slot]!);
  return r.length === 0 ? noU8 : new Uint8Array(v.bytes.buffer, v.bytes.byteOffset + r.start, r.length);
}

function colF64(v: Verifier, t: TableRef, slot: number): Float64Array {
  const r = v.vector(t, slot, 8, v.bytes.length, seriesFieldNames[slot]!);
  return r.length === 0 ? noF64 : new Float64Array(v.bytes.buffer, v.bytes.byteOffset + r.start, r.length);
}

/** A block's columns as views into the frame (no column can hold more elements than the message has bytes). */
function decodeSeries(v: Verifier, t: TableRef): SeriesColumns {
  const c: SeriesColumns = {
    pointHashes: colU32(v, t, 0, 8, 2),
    pointKinds: colU8(v, t, 1),
    pointValues: colF64(v, t, 2),
    distHashes: colU32(v, t, 3, 8, 2),
    distKinds: colU8(v, t, 4),
    distCounts: colU32(v, t, 5, 4, 1),
    distSums: colF64(v, t, 6),
    distMins: colF64(v, t, 7),
    distMaxes: colF64(v, t, 8),
    sketchEnds: colU32(v, t, 9, 4, 1),
    sketchBytes: colU8(v, t, 10),
    nameHashes: colU32(v, t, 11, 8, 2),
    nameEnds: colU32(v, t, 12, 4, 1),
    nameBytes: colU8(v, t, 13),
  };
  checkPoints(c);
  checkDists(c);
  checkNames(c, v.nameHashes);
  return c;
}

function checkPoints(c: SeriesColumns): void {
  const n = c.pointKinds.length;
  if (c.pointHashes.length !== 2 * n || c.pointValues.length !== n) {
    throw new Reject('bad_columns', `point columns disagree: ${c.pointHashes.length / 2} hashes, ${n} kinds, ${c.pointValues.length} values`);
  }
  for (let i = 0; i < n; i++) {
    if (c.pointKinds[i]! > KindCode.Counter) throw new Reject('bad_value', `point ${i} has kind ${c.pointKinds[i]}`);
    if (!Number.isFinite(c.pointValues[i]!)) throw new Reject('bad_value', `point ${i} is not finite`);
  }
}

function checkDists(c: SeriesColumns): void {
  const m = c.distKinds.length;
  if (
    c.distHashes.length !== 2 * m ||
    c.distCounts.length !== m ||
    c.distSums.length !== m ||
    c.distMins.length !== m ||
    c.distMaxes.length !== m ||
    c.sketchEnds.length !== m
  ) {
    throw new Reject('bad_columns', `distribution columns disagree in length (kinds: ${m})`);
  }
  let start = 0;
  for (let i = 0; i < m; i++) {
    const end = c.sketchEnds[i]!;
    const count = c.distCounts[i]!;
    const min = c.distMins[i]!;
    const max = c.distMaxes[i]!;
    // Summaries are distributions only (wire.md): a gauge kind here made the rack take the
    // metric for a gauge from that server on and leave out the rollup of every other server.
    if (c.distKinds[i]! !== KindCode.Distribution) throw new Reject('bad_value', `summary ${i} has kind ${c.distKinds[i]}, not ${KindCode.Distribution} (distribution)`);
    if (count === 0 || !Number.isFinite(c.distSums[i]!) || !Number.isFinite(min) || !Number.isFinite(max) || min > max) {
      throw new Reject('bad_value', `summary ${i} has count ${count}, min ${min}, max ${max}, sum ${c.distSums[i]}`);
    }
    if (end < start || end > c.sketchBytes.length) throw new Reject('bad_sketch', `summary ${i} sketch ends at ${end}, outside ${start}..${c.sketchBytes.length}`);
    if (sketchCount(c.sketchBytes, start, end) !== count) throw new Reject('bad_sketch', `summary ${i} sketch is malformed or does not hold ${count} observations`);
    start = end;
  }
  if (start !== c.sketchBytes.length) throw new Reject('bad_sketch', `${c.sketchBytes.length - start} sketch bytes belong to no summary`);
}

const hashScratch = new Uint32Array(2);

export function checkNames(c: Pick<SeriesColumns, 'nameHashes' | 'nameEnds' | 'nameBytes'>, verifyHashes: boolean): void {
  const n = c.nameEnds.length;
  if (c.nameHashes.length !== 2 * n) throw new Reject('bad_columns', `${c.nameHashes.length / 2} name hashes for ${n} names`);
  let start = 0;
  for (let i = 0; i < n; i++) {
    const end = c.nameEnds[i]!;
    if (end < start || end > c.nameBytes.length || !isMetricNameBytes(c.nameBytes, start, end)) {
      throw new Reject('bad_name', `name ${i} is not [A-Za-z0-9_.:-]{1,${metricNameBytesMax}}`);
    }
    if (verifyHashes && !verifyName(c, i)) throw new Reject('bad_name', `name ${i} does not match its hash`);
    start = end;
  }
  if (start !== c.nameBytes.length) throw new Reject('bad_name', `${c.nameBytes.length - start} name bytes belong to no name`);
}

/** True when name j of a decoded block hashes to its hash. */
export function verifyName(c: Pick<SeriesColumns, 'nameHashes' | 'nameEnds' | 'nameBytes'>, j: number): boolean {
  hashName(nameAt(c, j), hashScratch, 0);
  return hashScratch[0] === c.nameHashes[2 * j] && hashScratch[1] === c.nameHashes[2 * j + 1];
}

/** Metric names are ASCII (checked before this is called). */
export function latin1(bytes: Uint8Array, start: number, end: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start).toString('latin1');
}

/** Name j of a block's dictionary. */
export function nameAt(c: Pick<SeriesColumns, 'nameEnds' | 'nameBytes'>, j: number): string {
  return latin1(c.nameBytes, j === 0 ? 0 : c.nameEnds[j - 1]!, c.nameEnds[j]!);
}
