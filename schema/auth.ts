// Datagram authentication between edges and racks (issue 8). A signed datagram is a fixed
// 32-byte header followed by the unchanged frame (FlatBuffer + CRC-32, schema/codec.ts):
//
//   offset  bytes  field
//   0       4      magic "APMA" (an unsigned frame starts with its root offset, a uint32 below
//                  65,536, so its bytes 2..3 are zero and can never read "MA")
//   4       4      key id, uint32 little-endian (the id of the key that signed, from the key file)
//   8       8      signing time, Unix ms as float64 little-endian (the sender's clock, at send)
//   16      16     HMAC-SHA256(key, bytes 0..16 ‖ rack ‖ frame), truncated to 16 bytes
//   32      …      the frame
//
// A header in front (not a trailer) lets a receiver tell signed from unsigned datagrams with
// certainty and check the MAC before it parses anything. Every send is signed afresh, resends
// too, so a replay cache keyed by MAC rejects replays without rejecting legitimate resends.
//
// `rack` is the id of the rack the datagram is for (edge → rack) or from (rack's NACK → edge),
// as one length byte and its bytes; it is not sent: both ends know it. So a datagram captured on
// its way to rack r1 and replayed to rack r2 fails r2's MAC check (bad_hmac) even when both racks
// share a key, and each rack's replay cache only has to cover its own datagrams (issue 16.5).
// Where the ends learn it: the rack from its --rack; a signer from its key file, whose lines name
// the rack (`<key id> <secret> rack=<id>`), or from `apm edge --rack-id`.

import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { authKeysMax, authSecretBytesMin } from './limits.js';

export const authHeaderBytes = 32;
export const authMacBytes = 16;
const magic = 0x414d5041; // "APMA" read as uint32 little-endian

export interface AuthKey {
  id: number;
  key: KeyObject;
}

/** Keys from a key file: the first signs, all verify (two during a rotation). */
export interface KeySet {
  signing: AuthKey;
  byId: ReadonlyMap<number, KeyObject>;
  /** The rack the file's lines name (rack=<id>): the rack every MAC made with these keys covers; null when none is named. */
  rack: string | null;
}

export const keyFileHelp = `Key file (--key-file): one key per line, "<key id> <secret> rack=<rack id>"; the key id is
                           an integer 1..4294967295, the secret ≥ ${authSecretBytesMin} bytes as hex or base64 (e.g.
                           from 'openssl rand -hex 32'); '#' starts a comment. Every MAC covers the id of
                           the rack the datagram is for, so a datagram for one rack is refused by any
                           other, even one with the same secret: rack=<id> names it (the rack's --rack; a
                           line without it takes the file's other lines' rack, or the edge's --rack-id).
                           The first key signs, every key verifies: to rotate, add the new key as a
                           second line everywhere, then move it first, then remove the old one. Reread
                           on SIGHUP.`;

/** Rack ids as a rack's --rack takes them (DESIGN §3 server id syntax). */
const rackIdPattern = /^[A-Za-z0-9._-]{1,64}$/;

/** Whether `id` is a rack id a MAC can cover. */
export function isRackId(id: string): boolean {
  return rackIdPattern.test(id);
}

/** Parses a key file's text; throws an Error naming the line and what to fix. */
export function parseKeyFile(text: string, file: string): KeySet {
  const keys: AuthKey[] = [];
  let rack: string | null = null;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/#.*/, '').trim();
    if (line.length === 0) continue;
    const where = `${file} line ${i + 1}`;
    const m = /^(\d{1,10})\s+(\S+)(?:\s+rack=(\S*))?$/.exec(line);
    const id = m === null ? NaN : Number(m[1]);
    if (m === null || !(id >= 1 && id <= 0xffffffff)) throw new Error(`${where}: expected "<key id 1..4294967295> <secret> [rack=<rack id>]"`);
    const lineRack = m[3];
    if (lineRack !== undefined) {
      if (!isRackId(lineRack)) throw new Error(`${where}: rack=${JSON.stringify(lineRack.slice(0, 80))} is not a rack id (${rackIdPattern.source})`);
      if (rack !== null && rack !== lineRack) throw new Error(`${where}: names rack ${lineRack}, an earlier line rack ${rack}; a key file is one rack's (give each rack its own file)`);
      rack = lineRack;
    }
    const secret = decodeSecret(m[2]!);
    if (secret.length < authSecretBytesMin) {
      throw new Error(`${where}: key ${id}'s secret is ${secret.length} bytes < ${authSecretBytesMin}; make one with 'openssl rand -hex 32'`);
    }
    if (keys.some((k) => k.id === id)) throw new Error(`${where}: key id ${id} appears twice`);
    keys.push({ id, key: createSecretKey(secret) });
  }
  if (keys.length === 0) throw new Error(`${file} holds no key; write a line "<key id> <secret>"`);
  if (keys.length > authKeysMax) throw new Error(`${file} holds ${keys.length} keys > ${authKeysMax}; keep the signing key and the one being rotated out`);
  return { signing: keys[0]!, byId: new Map(keys.map((k) => [k.id, k.key])), rack };
}

function decodeSecret(s: string): Buffer {
  if (/^(?:[0-9a-fA-F]{2})+$/.test(s)) return Buffer.from(s, 'hex');
  if (/^[A-Za-z0-9+/]+={0,2}$/.test(s)) return Buffer.from(s, 'base64');
  return Buffer.alloc(0);
}

/** Reads and parses a key file; errors name the file and what to do. */
export function readKeyFile(file: string): KeySet {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`--key-file ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseKeyFile(text, `--key-file ${file}`);
}


/** SIGHUP for a daemon: rereads the key file and applies it; a bad file keeps the keys in use (and says so). */
export function reloadKeyFile(file: string, daemon: string, apply: (keys: KeySet) => void): void {
  try {
    const keys = readKeyFile(file);
    apply(keys);
    console.log(`apm ${daemon}: SIGHUP, ${keys.byId.size} keys from ${file} (signing with key ${keys.signing.id})`);
  } catch (err) {
    console.error(`apm ${daemon}: SIGHUP, keeping the keys in use: ${(err as Error).message}`);
  }
}
/** True when a datagram carries an auth header (it may still be forged). */
export function isSigned(datagram: Uint8Array): boolean {
  return datagram.length >= authHeaderBytes && readU32(datagram, 0) === magic;
}

/**
 * The header followed by `frame`, signed with the set's signing key at `nowMs`, for rack `rack`
 * (default: the rack the key file names; one of them must be known).
 */
export function sign(keys: KeySet, frame: Uint8Array, nowMs: number, rack: string | null = keys.rack): Buffer {
  const out = Buffer.allocUnsafe(authHeaderBytes + frame.length);
  out.writeUInt32LE(magic, 0);
  out.writeUInt32LE(keys.signing.id, 4);
  out.writeDoubleLE(nowMs, 8);
  out.set(frame, authHeaderBytes);
  mac(keys.signing.key, out, rackTag(rack)).copy(out, 16, 0, authMacBytes);
  return out;
}

/** The rack id as the MAC covers it: its length, then its bytes. Signing for no rack is a bug: callers check at start. */
function rackTag(rack: string | null): Buffer {
  // Checked first: the kept tag starts as the empty one of no rack, which a first call for no rack returned.
  if (rack === null) throw new Error(`BUG: a datagram MAC needs the id of its rack, got null; name it in the key file (rack=<id>) or with --rack-id`);
  // Senders and receivers use one rack id over and over: its tag is kept.
  if (rack === lastTag.rack) return lastTag.tag;
  if (!isRackId(rack)) throw new Error(`BUG: a datagram MAC needs the id of its rack, got ${JSON.stringify(rack)}; name it in the key file (rack=<id>) or with --rack-id`);
  const id = Buffer.from(rack, 'latin1');
  lastTag = { rack, tag: Buffer.concat([Buffer.of(id.length), id]) };
  return lastTag.tag;
}

let lastTag: { rack: string; tag: Buffer } = { rack: '', tag: Buffer.alloc(0) };

function mac(key: KeyObject, datagram: Uint8Array, rack: Buffer): Buffer {
  return createHmac('sha256', key).update(datagram.subarray(0, 16)).update(rack).update(datagram.subarray(authHeaderBytes)).digest();
}

export type OpenReason = 'unauthenticated' | 'unknown_key' | 'bad_hmac';

export type Opened = { ok: true; frame: Uint8Array; signedMs: number; mac: Uint8Array } | { ok: false; reason: OpenReason; keyId: number };

/**
 * Checks a signed datagram's MAC against `keys` for rack `rack` (default: the key file's; no
 * parsing of the frame). Returns the frame, the signing time and the MAC (a view into the
 * datagram), or why it is refused: a datagram signed for another rack is a bad_hmac.
 */
export function open(keys: KeySet, datagram: Uint8Array, rack: string | null = keys.rack): Opened {
  if (!isSigned(datagram)) return { ok: false, reason: 'unauthenticated', keyId: 0 };
  const keyId = readU32(datagram, 4);
  const key = keys.byId.get(keyId);
  if (key === undefined) return { ok: false, reason: 'unknown_key', keyId };
  const got = datagram.subarray(16, authHeaderBytes);
  if (!timingSafeEqual(mac(key, datagram, rackTag(rack)).subarray(0, authMacBytes), got)) return { ok: false, reason: 'bad_hmac', keyId };
  const signedMs = new DataView(datagram.buffer, datagram.byteOffset + 8, 8).getFloat64(0, true);
  if (!Number.isFinite(signedMs)) return { ok: false, reason: 'bad_hmac', keyId };
  return { ok: true, frame: datagram.subarray(authHeaderBytes), signedMs, mac: got };
}

/** The frame of a datagram, past its auth header if it has one (unverified: for receivers without keys). */
export function stripAuth(datagram: Uint8Array): Uint8Array {
  return isSigned(datagram) ? datagram.subarray(authHeaderBytes) : datagram;
}

function readU32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

/**
 * MACs of datagrams accepted in the last `windowMs` (by their signing time), to refuse the same
 * datagram twice. Bounded: when full, the oldest-inserted entry goes and `floorMs` rises to its
 * signing time; a datagram signed at or before floorMs can no longer be proven new, so the
 * caller refuses it as stale.
 */
export class ReplayCache {
  private readonly seen = new Map<string, number>();
  floorMs = -Infinity;
  evicted = 0;

  constructor(
    private readonly entriesMax: number,
    private readonly windowMs: number,
  ) {}

  get size(): number {
    return this.seen.size;
  }

  /** 'replayed' when this MAC was accepted before, 'stale' when too old to tell; else remembers it and returns null. */
  check(macBytes: Uint8Array, signedMs: number, nowMs: number): 'replayed' | 'stale' | null {
    if (signedMs <= this.floorMs) return 'stale';
    const k = Buffer.from(macBytes.buffer, macBytes.byteOffset, macBytes.length).toString('latin1');
    if (this.seen.has(k)) return 'replayed';
    this.expire(nowMs);
    if (this.seen.size >= this.entriesMax) {
      const [oldest, at] = this.seen.entries().next().value as [string, number];
      this.seen.delete(oldest);
      this.evicted++;
      // Not past now: an entry signed ahead (a sender's clock up to the skew limit fast) raised
      // the floor into the future, and every honest datagram signed before it was stale.
      if (at > this.floorMs) this.floorMs = Math.min(at, nowMs);
    }
    this.seen.set(k, signedMs);
    return null;
  }

  /** True when this MAC is held (without remembering it). */
  has(macBytes: Uint8Array): boolean {
    return this.seen.has(Buffer.from(macBytes.buffer, macBytes.byteOffset, macBytes.length).toString('latin1'));
  }

  /** Drops entries (in insertion order) signed before the window; later ones stay until they reach the head. */
  private expire(nowMs: number): void {
    for (const [k, at] of this.seen) {
      if (at >= nowMs - this.windowMs) break;
      this.seen.delete(k);
    }
  }
}
