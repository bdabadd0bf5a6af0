// What the rack checks about a datagram's sender before the reassembly sees it (issue 8):
// its MAC (before anything is parsed), that it was not seen before, and that the sender's
// clock agrees with ours. Pure logic: the caller passes the clock.
//
// Timestamps: a signed datagram carries the time it was signed, at every send (resends are
// signed afresh); an unsigned one only its frame's sent_ms, the time the second was packed,
// which a resend repeats. Either one, minus our clock, is the sender's clock offset.
//
// Stale or skewed? One datagram signed 30 s ago looks the same whether it was captured and
// replayed or comes from an edge whose clock is 30 s slow. The sender's history tells them
// apart: a server whose datagrams we accepted within the last window has a good clock, so an
// old one under its name is stale (a replay or a very delayed packet); a server with nothing
// accepted lately, or any datagram from the future, is a skewed clock. Either way it is refused.

import { open, ReplayCache, stripAuth, type KeySet } from '../schema/auth.js';

export type GuardReason = 'unauthenticated' | 'unknown_key' | 'bad_hmac' | 'stale' | 'replayed' | 'clock_skew';

export interface GuardOptions {
  keys: KeySet | null;
  /** This rack's id: every MAC covers it, so a datagram signed for another rack is refused (issue 16.5). */
  rack: string;
  /** Largest |sender clock − rack clock| accepted (`--clock-skew-max`). */
  clockSkewMaxMs: number;
  /** How much older than its send an unsigned frame's sent_ms may be: a resend repeats it. */
  resendAgeMaxMs: number;
  replayEntriesMax: number;
  serversTrackedMax: number;
  /** A server counts as skewed this long after its last skewed datagram. */
  skewReportMs: number;
  log?: (line: string) => void;
}

/** A datagram that passed the checks before parsing. */
export interface OpenedDatagram {
  frame: Uint8Array;
  /** Signing time (ms) when the MAC was verified, else null. */
  signedMs: number | null;
  mac: Uint8Array | null;
}

interface SenderClock {
  acceptedMs: number;
  skewedMs: number;
  offsetMs: number;
}

export class DatagramGuard {
  private keys: KeySet | null;
  private replay: ReplayCache;
  private readonly senders = new Map<string, SenderClock>();
  readonly rejected: Record<GuardReason, number> = { unauthenticated: 0, unknown_key: 0, bad_hmac: 0, stale: 0, replayed: 0, clock_skew: 0 };
  /** Signed datagrams accepted without checking, because no key is configured. */
  unverified = 0;

  constructor(private readonly opts: GuardOptions) {
    if (!(opts.clockSkewMaxMs > 0)) throw new Error(`clock skew bound ${opts.clockSkewMaxMs} ms must be > 0`);
    this.keys = opts.keys;
    this.replay = new ReplayCache(opts.replayEntriesMax, opts.clockSkewMaxMs);
  }

  /** Replaces the keys (SIGHUP). MACs already seen stay remembered. */
  setKeys(keys: KeySet | null): void {
    this.keys = keys;
  }

  get replayCacheEntries(): number {
    return this.replay.size;
  }

  get replayCacheEvicted(): number {
    return this.replay.evicted;
  }

  /** Step 1, before parsing: the frame to decode, or why the datagram is refused (counted). */
  open(datagram: Uint8Array): OpenedDatagram | GuardReason {
    if (this.keys === null) {
      const frame = stripAuth(datagram);
      if (frame !== datagram) this.unverified++;
      return { frame, signedMs: null, mac: null };
    }
    const o = open(this.keys, datagram, this.opts.rack);
    if (!o.ok) return this.reject(o.reason);
    // A replay within the window is refused before its frame is parsed.
    if (this.replay.has(o.mac)) return this.reject('replayed');
    return { frame: o.frame, signedMs: o.signedMs, mac: o.mac };
  }

  /** Step 2, after decoding: checks the sender's clock and remembers the MAC; null when admitted. */
  admit(server: string, sentMs: number, d: OpenedDatagram, nowMs: number): GuardReason | null {
    const offsetMs = (d.signedMs ?? sentMs) - nowMs;
    const behindMaxMs = this.opts.clockSkewMaxMs + (d.signedMs === null ? this.opts.resendAgeMaxMs : 0);
    if (offsetMs > this.opts.clockSkewMaxMs || offsetMs < -behindMaxMs) {
      const s = this.senders.get(server);
      if (d.signedMs !== null && offsetMs < 0 && s !== undefined && nowMs - s.acceptedMs <= this.opts.clockSkewMaxMs) return this.reject('stale');
      this.noteSkew(server, offsetMs, nowMs);
      return this.reject('clock_skew');
    }
    if (d.mac !== null) {
      const r = this.replay.check(d.mac, d.signedMs!, nowMs);
      if (r !== null) return this.reject(r);
    }
    const s = this.sender(server);
    if (s !== undefined) {
      s.acceptedMs = nowMs;
      s.offsetMs = offsetMs;
    }
    return null;
  }

  private reject(reason: GuardReason): GuardReason {
    this.rejected[reason]++;
    return reason;
  }

  private sender(server: string): SenderClock | undefined {
    let s = this.senders.get(server);
    if (s === undefined && this.senders.size < this.opts.serversTrackedMax) this.senders.set(server, (s = { acceptedMs: -Infinity, skewedMs: -Infinity, offsetMs: 0 }));
    return s;
  }

  private noteSkew(server: string, offsetMs: number, nowMs: number): void {
    const s = this.sender(server);
    if (s === undefined) return;
    const wasSkewed = s.skewedMs > s.acceptedMs && nowMs - s.skewedMs <= this.opts.skewReportMs;
    s.skewedMs = nowMs;
    s.offsetMs = offsetMs;
    if (!wasSkewed) {
      const how = `${(Math.abs(offsetMs) / 1000).toFixed(1)} s ${offsetMs > 0 ? 'ahead of' : 'behind'}`;
      this.opts.log?.(
        `rack: server ${server}'s clock is ${how} the rack's (bound --clock-skew-max ${this.opts.clockSkewMaxMs / 1000}s); its datagrams are refused (clock_skew) until the clocks agree; check NTP on ${server} and on this host`,
      );
    }
  }

  /** Servers whose latest datagrams were refused for clock skew within the report period. */
  skewedServers(nowMs: number): number {
    let n = 0;
    for (const s of this.senders.values()) if (s.skewedMs > s.acceptedMs && nowMs - s.skewedMs <= this.opts.skewReportMs) n++;
    return n;
  }

  /** Largest |clock offset| (ms) among servers heard from within the report period. */
  offsetMaxMs(nowMs: number): number {
    let max = 0;
    for (const s of this.senders.values()) if (nowMs - Math.max(s.acceptedMs, s.skewedMs) <= this.opts.skewReportMs) max = Math.max(max, Math.abs(s.offsetMs));
    return max;
  }

  /** Forgets senders not heard from for `idleMs` (call about once a second). */
  prune(nowMs: number, idleMs: number): void {
    for (const [id, s] of this.senders) if (nowMs - Math.max(s.acceptedMs, s.skewedMs) > idleMs) this.senders.delete(id);
  }
}
