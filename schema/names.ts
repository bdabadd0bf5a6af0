// Metric identity on the wire: a stable 64-bit hash of the name, the first 8 bytes of its
// SHA-256 read as two little-endian uint32 (lo, hi). Stable across processes and restarts, so a
// rack or core learns a name once from any edge and keeps it; names are sent beside hashes only
// when a receiver may not know them (new series, a periodic refresh, or when asked in a NACK).
// Receivers check hash(name) on decode, so a corrupted dictionary entry cannot misname a series.

import { createHash } from 'node:crypto';
import { metricNameBytesMax, serverIdBytesMax } from './limits.js';

/** Writes the hash of `name` as lo, hi into out[at], out[at + 1]. */
export function hashName(name: string, out: Uint32Array, at: number): void {
  const digest = createHash('sha256').update(name, 'utf8').digest();
  out[at] = digest.readUInt32LE(0);
  out[at + 1] = digest.readUInt32LE(4);
}

/** Names hashed lately by hashNameOften, with their (lo, hi). */
const hashedMax = 1024;
const hashed = new Map<string, readonly [number, number]>();

/**
 * hashName, remembering the last hashedMax names hashed this way: a query's metric was hashed
 * three times per answer (the HTTP thread to find its worker, the worker its store, the
 * evaluator its rows), ~4 µs each for SHA-256's set-up. For names asked again and again (queries,
 * dashboards); not for a stream of new names (ingest), which would only churn it.
 */
export function hashNameOften(name: string, out: Uint32Array, at: number): void {
  let h = hashed.get(name);
  if (h === undefined) {
    hashName(name, out, at);
    h = [out[at]!, out[at + 1]!];
    if (hashed.size >= hashedMax) hashed.delete(hashed.keys().next().value!);
    hashed.set(name, h);
  }
  out[at] = h[0];
  out[at + 1] = h[1];
}

/** A Map-friendly key for a (lo, hi) hash; for cold paths only (it allocates a string). */
export function hashKey(lo: number, hi: number): string {
  return `${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')}`;
}

const metricChar = (c: number): boolean =>
  (c >= 48 && c <= 58) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 46 || c === 45;
const serverChar = (c: number): boolean =>
  (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 46 || c === 45;

/** DESIGN §3: `[A-Za-z0-9_.:-]{1,128}` (58 is ':'). Works on bytes so decoders need no string. */
export function isMetricNameBytes(bytes: Uint8Array, start: number, end: number): boolean {
  if (end <= start || end - start > metricNameBytesMax) return false;
  for (let i = start; i < end; i++) if (!metricChar(bytes[i]!)) return false;
  return true;
}

export function isMetricName(name: string): boolean {
  if (name.length === 0 || name.length > metricNameBytesMax) return false;
  for (let i = 0; i < name.length; i++) if (!metricChar(name.charCodeAt(i))) return false;
  return true;
}

/** DESIGN §3: server (and rack) ids are `[A-Za-z0-9._-]{1,64}`. */
export function isServerId(id: string): boolean {
  if (id.length === 0 || id.length > serverIdBytesMax) return false;
  for (let i = 0; i < id.length; i++) if (!serverChar(id.charCodeAt(i))) return false;
  return true;
}
