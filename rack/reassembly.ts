// Per (server, second) reassembly of edge datagrams (issue 3): collects parts 1..n, decides
// which parts to NACK and when, accounts sequence gaps, closes seconds at the watermark and
// routes parts that arrive after it as late data. Pure logic: the caller passes the clock,
// sends the NACKs it returns, and merges what close() hands back.

import type { EdgeSecondMessage } from '../schema/codec.js';
import { nackPartsMax } from '../schema/limits.js';
import type { ServerParts } from './merge.js';

/** Longest a second's late parts wait for more of them before they go as one late batch. */
export const lateHoldMs = 1000;

export interface ReassemblyOptions {
  serversMax: number;
  openSecondsPerServerMax: number;
  bytesHeldMax: number;
  /** Bytes of one server's open second (server_second_full beyond: one edge may not take everyone's room). */
  serverSecondBytesMax?: number;
  latenessMs: number;
  /** Parts older than this (s) are refused as too_old; newer late parts are forwarded late. */
  lateHorizonSeconds: number;
  /** Parts stamped further ahead of our clock than this (s) are refused: a skewed edge clock. */
  futureSeconds: number;
  nackDelayMs: number;
  nackIntervalMs: number;
  nackRetriesMax: number;
  allowList: ReadonlySet<string> | null;
  /**
   * After a restart: the newest second the previous process spooled, and until when to hold
   * closing seconds. Each edge that shows up is asked (probes) for the seconds after it —
   * they are still in its resend ring — and they are reassembled as usual (issue 8).
   */
  resume?: { afterSecond: number; untilMs: number };
}

/** Bytes of the records of closed seconds' parts (one byte a part of a second not received whole), kept for the late horizon. */
export const closedRecordBytesMax = 16 * 1024 * 1024;
/** A closed second whose record of parts was not kept (closedRecordBytesMax): its late parts are refused as memory_full. */
const recordDropped = -1;

/** Seconds per edge asked again after a restart (the edge's resend ring holds 30 s). */
const resumeSecondsMax = 12;

export type AcceptReason =
  | 'too_old'
  | 'too_far_in_future'
  | 'unknown_server'
  | 'too_many_servers'
  | 'too_many_open_seconds'
  | 'memory_full'
  | 'server_second_full'
  | 'parts_mismatch';

export interface Peer {
  address: string;
  port: number;
}

export interface NackRequest {
  peer: Peer;
  server: string;
  session: number;
  second: number;
  missingParts: Uint16Array;
}

interface OpenSecond {
  second: number;
  session: number;
  parts: number;
  received: (EdgeSecondMessage | null)[];
  count: number;
  /** Its frames' bytes and its tables' (openSecondBytes), as bytesHeld counts them. */
  bytes: number;
  firstMs: number;
  lastNackMs: number;
  nacks: number;
  nacked: Uint8Array;
  /** Bytes of the NACKs sent for it (nackBytesOf). */
  nackBytes: number;
}

/** What an open second's tables take: a slot per part (a pointer) and a NACK flag per part. */
export function openSecondBytes(parts: number): number {
  return 96 + 9 * parts;
}

/** A NACK's bytes on the wire for `parts` missing parts: its frame, header and signature, then 2 bytes a part. */
export function nackBytesOf(parts: number): number {
  return nackOverheadBytes + 2 * parts;
}
const nackOverheadBytes = 96;
/** NACK bytes a second may cost beyond twice the bytes its edge sent: one NACK of ~80 parts. */
const nackAllowanceBytes = 256;

interface Probe {
  second: number;
  /** Probes sent so far, and when the next is due. */
  sent: number;
  dueMs: number;
  /**
   * Set once the probe's answer (part 0) came after its second closed: the other parts, asked
   * on the same schedule (a closed second is not NACKed otherwise, so only part 0 of it came
   * back). Parts never answered are counted in parts_lost.
   */
  parts?: number[];
}

/** Seconds probed at once per edge (a sequence gap asks for its newest seconds first). */
const probesPerServerMax = 8;

interface ServerState {
  id: string;
  peer: Peer;
  session: number;
  lastSecond: number;
  lastSeq: number;
  open: Map<number, OpenSecond>;
  /**
   * Seconds already closed: which parts were seen, to drop late duplicates (bounded by the late
   * horizon). A second that closed whole holds its part count (every part seen): a full rack
   * closes every server's second whole, and an array per server-second kept for 10 minutes
   * was hundreds of thousands of live objects for every full collection to mark. `recordDropped`:
   * closed incomplete when the records' bound was reached (its late parts are refused).
   */
  closed: Map<number, Uint8Array | number>;
  /** Seconds lost whole (a sequence gap, or missed while this rack restarted), asked again until a part of them arrives. */
  probes: Probe[];
  /** When its last datagram came: silent for the late horizon, it is forgotten. */
  heardMs: number;
}

export interface ClosedBatch {
  second: number;
  late: boolean;
  servers: ServerParts[];
}

export class Reassembly {
  private readonly servers = new Map<string, ServerState>();
  /**
   * Servers that may need a NACK or a probe: one with an open second still missing parts, or
   * probes. Added when such a second opens or a probe is queued; nacks() drops a server once it
   * has neither, so its walk (every tick) visits the few servers receiving a second right
   * now instead of every server of the rack.
   */
  private readonly needy = new Set<ServerState>();
  private readonly openSeconds = new Map<number, Set<ServerState>>();
  private readonly late = new Map<number, Map<ServerState, EdgeSecondMessage[]>>();
  /** Per second with late parts held: when the first arrived, and their bytes. */
  private readonly lateSinceMs = new Map<number, number>();
  private readonly lateBytesOf = new Map<number, number>();
  private bytesHeld = 0;
  private lateBytes = 0;
  private forgotAt = -1;
  /** Highest second closed so far; parts at or below it are late. */
  closedThrough = -1;

  constructor(private readonly opts: ReassemblyOptions) {
    if (opts.resume !== undefined) this.closedThrough = opts.resume.afterSecond;
  }

  readonly counters = {
    parts_received: 0,
    parts_duplicate: 0,
    parts_late: 0,
    parts_nacked: 0,
    parts_recovered: 0,
    parts_lost: 0,
    seq_gap_datagrams: 0,
    seconds_closed: 0,
    seconds_incomplete: 0,
    late_batches: 0,
    edge_restarts: 0,
    resume_probes: 0,
    /** Seconds asked again from edges after a sequence gap (lost whole on the way). */
    gap_probes: 0,
    /** Seconds lost whole whose probes were never answered (every retry): lost, counted here. */
    seconds_unanswered: 0,
    resume_seconds_unasked: 0,
    names_only: 0,
    /** Incomplete seconds closed without a record of their parts (closedRecordBytesMax): their late parts are refused, counted as memory_full. */
    closed_records_dropped: 0,
    /** Edges forgotten after a late horizon of silence with nothing held (the table holds serversMax). */
    servers_forgotten: 0,
  };
  readonly rejected: Record<AcceptReason, number> = {
    too_old: 0,
    too_far_in_future: 0,
    unknown_server: 0,
    too_many_servers: 0,
    too_many_open_seconds: 0,
    memory_full: 0,
    server_second_full: 0,
    parts_mismatch: 0,
  };

  /** Bytes of the closed seconds' part records (closedRecordBytesMax). */
  closedRecordBytes = 0;

  get heldBytes(): number {
    return this.bytesHeld;
  }

  peerOf(server: string): Peer | undefined {
    return this.servers.get(server)?.peer;
  }

  get serverCount(): number {
    return this.servers.size;
  }

  /** Takes one decoded datagram; returns null when kept (or a counted duplicate), else why not. */
  accept(msg: EdgeSecondMessage, frameBytes: number, peer: Peer, nowMs: number): AcceptReason | null {
    const nowS = Math.floor(nowMs / 1000);
    if (msg.second > nowS + this.opts.futureSeconds) return this.reject('too_far_in_future');
    if (msg.second < nowS - this.opts.lateHorizonSeconds) return this.reject('too_old');
    if (this.opts.allowList !== null && !this.opts.allowList.has(msg.server)) return this.reject('unknown_server');
    const s = this.serverFor(msg, peer, nowMs);
    if (s === null) return this.reject('too_many_servers');
    if (msg.parts === 0) {
      this.counters.names_only++;
      return null; // names were learned by the caller; nothing to reassemble
    }
    this.trackSequence(s, msg);
    if (msg.second <= this.closedThrough) return this.acceptLate(s, msg, frameBytes, nowMs);
    let o = s.open.get(msg.second);
    if (o === undefined) {
      if (s.open.size >= this.openSecondsMax(nowMs)) return this.reject('too_many_open_seconds');
      // Refused before the second opens: an empty open second asked its edge for every part
      // (NACKs, just when memory is short) and counted them lost again at its close.
      // Its tables are charged too, sized by the parts the datagram claims (a 124-byte datagram
      // claiming 4,096 parts made ~37 KB of them, outside every bound: 131 MiB in a minute).
      const tableBytes = openSecondBytes(msg.parts);
      if (frameBytes + tableBytes > (this.opts.serverSecondBytesMax ?? Infinity)) return this.reject('server_second_full');
      if (this.bytesHeld + frameBytes + tableBytes > this.opts.bytesHeldMax) return this.reject('memory_full');
      o = { second: msg.second, session: msg.session, parts: msg.parts, received: new Array(msg.parts).fill(null), count: 0, bytes: tableBytes, firstMs: nowMs, lastNackMs: 0, nacks: 0, nacked: new Uint8Array(msg.parts), nackBytes: 0 };
      this.bytesHeld += tableBytes;
      s.open.set(msg.second, o);
      this.needy.add(s);
      let set = this.openSeconds.get(msg.second);
      if (set === undefined) this.openSeconds.set(msg.second, (set = new Set()));
      set.add(s);
    }
    if (o.parts !== msg.parts || o.session !== msg.session) return this.reject('parts_mismatch');
    if (o.received[msg.part] !== null) {
      this.counters.parts_duplicate++;
      return null;
    }
    // One server's second takes at most serverSecondBytesMax: an edge sending 4,096 parts of
    // 64 KB for one second took the whole bytesHeldMax, and every other server's parts were
    // refused as memory_full.
    if (o.bytes + frameBytes > (this.opts.serverSecondBytesMax ?? Infinity)) return this.reject('server_second_full');
    if (this.bytesHeld + frameBytes > this.opts.bytesHeldMax) return this.reject('memory_full');
    o.received[msg.part] = msg;
    o.count++;
    o.bytes += frameBytes;
    this.bytesHeld += frameBytes;
    this.counters.parts_received++;
    if (o.nacked[msg.part] === 1) this.counters.parts_recovered++;
    return null;
  }

  private reject(reason: AcceptReason): AcceptReason {
    this.rejected[reason]++;
    return reason;
  }

  private serverFor(msg: EdgeSecondMessage, peer: Peer, nowMs: number): ServerState | null {
    let s = this.servers.get(msg.server);
    if (s === undefined) {
      if (this.servers.size >= this.opts.serversMax) return null;
      s = { id: msg.server, peer, session: msg.session, lastSecond: -1, lastSeq: -1, open: new Map(), closed: new Map(), probes: [], heardMs: nowMs };
      this.servers.set(msg.server, s);
      this.probeSinceResume(s, msg.second, nowMs);
    }
    s.peer = peer;
    s.heardMs = nowMs;
    if (s.session !== msg.session) {
      // A restarted edge: its sequence numbers start over.
      this.counters.edge_restarts++;
      s.session = msg.session;
      s.lastSecond = -1;
      s.lastSeq = -1;
    }
    return s;
  }

  /** Open seconds per edge: during the hold after a restart, room for the probed ones too. */
  private openSecondsMax(nowMs: number): number {
    const r = this.opts.resume;
    const holding = r !== undefined && nowMs < r.untilMs + 1000;
    return this.opts.openSecondsPerServerMax + (holding ? resumeSecondsMax : 0);
  }

  /** A rack restarted: asks a newly seen edge for the seconds between the last spooled one and now. */
  private probeSinceResume(s: ServerState, firstSecond: number, nowMs: number): void {
    const r = this.opts.resume;
    // Only edges heard during the hold: one that shows up later was not missed by the restart.
    if (r === undefined || r.afterSecond < 0 || nowMs >= r.untilMs) return;
    const from = Math.max(r.afterSecond + 1, firstSecond - resumeSecondsMax);
    // Seconds older than that were down longer than the edge keeps them: counted, not asked.
    this.counters.resume_seconds_unasked += Math.max(0, from - (r.afterSecond + 1));
    for (let sec = from; sec < firstSecond; sec++) {
      s.probes.push({ second: sec, sent: 0, dueMs: 0 });
      this.counters.resume_probes++;
    }
    if (s.probes.length > 0) this.needy.add(s);
  }

  /** Counts datagrams missing by sequence number and probes the seconds they belonged to. */
  private trackSequence(s: ServerState, msg: EdgeSecondMessage): void {
    if (msg.second <= s.lastSecond) return;
    const firstSeq = (msg.seq - msg.part) >>> 0;
    if (s.lastSeq >= 0) {
      const gap = (firstSeq - s.lastSeq - 1) >>> 0;
      if (gap > 0 && gap < 0x10000) {
        this.counters.seq_gap_datagrams += gap;
        // Whole seconds vanished between lastSecond and this one: ask for their first parts, the
        // newest first (the edge's resend ring keeps the last 30 s). Closed ones too: their answers
        // come as late parts (before, an outage longer than the lateness lost its older seconds
        // unasked, counted only as seq_gap_datagrams).
        for (let sec = msg.second - 1; sec > s.lastSecond && s.probes.length < probesPerServerMax; sec--) {
          if (s.open.has(sec) || s.closed.has(sec) || s.probes.some((p) => p.second === sec)) continue;
          s.probes.push({ second: sec, sent: 0, dueMs: 0 });
          this.counters.gap_probes++;
        }
        if (s.probes.length > 0) this.needy.add(s);
      }
    }
    s.lastSecond = msg.second;
    s.lastSeq = (firstSeq + msg.parts - 1) >>> 0;
  }

  private acceptLate(s: ServerState, msg: EdgeSecondMessage, frameBytes: number, nowMs: number): AcceptReason | null {
    let seen = s.closed.get(msg.second);
    if (seen === undefined) {
      // The record of a closed second's parts is kept for the late horizon: bounded in all
      // (late parts of 100 B each naming 4,096 parts made 4 KiB records by the hundred thousand,
      // 660 MB unaccounted, with no refusal).
      if (this.closedRecordBytes + msg.parts > closedRecordBytesMax) return this.reject('memory_full');
      s.closed.set(msg.second, (seen = new Uint8Array(msg.parts)));
      this.closedRecordBytes += msg.parts;
    }
    // Its record was not kept (closedRecordBytesMax, at its close): which parts came is unknown.
    if (seen === recordDropped) return this.reject('memory_full');
    if ((typeof seen === 'number' ? seen : seen.length) !== msg.parts) return this.reject('parts_mismatch');
    if (typeof seen === 'number' || seen[msg.part] === 1) {
      this.counters.parts_duplicate++;
      return null;
    }
    if (this.bytesHeld + frameBytes > this.opts.bytesHeldMax) return this.reject('memory_full');
    seen[msg.part] = 1;
    // The answer to a probe of a second that has closed: ask for its other parts the same way.
    if (msg.parts > 1) {
      const probe = s.probes.find((p) => p.second === msg.second && p.parts === undefined);
      if (probe !== undefined) {
        probe.parts = [];
        for (let i = 0; i < msg.parts; i++) if (seen[i] !== 1) probe.parts.push(i);
        probe.sent = 0;
        probe.dueMs = 0;
        this.needy.add(s);
      }
    }
    this.bytesHeld += frameBytes;
    this.lateBytes += frameBytes;
    this.lateBytesOf.set(msg.second, (this.lateBytesOf.get(msg.second) ?? 0) + frameBytes);
    this.counters.parts_late++;
    let bySecond = this.late.get(msg.second);
    if (bySecond === undefined) {
      this.late.set(msg.second, (bySecond = new Map()));
      this.lateSinceMs.set(msg.second, nowMs);
    }
    const list = bySecond.get(s);
    if (list === undefined) bySecond.set(s, [msg]);
    else list.push(msg);
    return null;
  }

  /** A late-answered probe's parts not received yet (kept in p.parts); false when none is (or its record is gone). */
  private stillMissing(s: ServerState, p: Probe): boolean {
    const seen = s.closed.get(p.second);
    if (typeof seen === 'number' || seen === undefined) return false;
    p.parts = p.parts!.filter((i) => seen[i] !== 1);
    return p.parts.length > 0;
  }

  /** NACKs due now: missing parts of open seconds, and probes for seconds lost whole. */
  nacks(nowMs: number): NackRequest[] {
    const out: NackRequest[] = [];
    for (const s of this.needy) {
      let waiting = false;
      for (const o of s.open.values()) {
        if (o.count === o.parts || o.nacks >= this.opts.nackRetriesMax) continue;
        waiting = true;
        if (nowMs - o.firstMs < this.opts.nackDelayMs || nowMs - o.lastNackMs < this.opts.nackIntervalMs) continue;
        const missing: number[] = [];
        // NACKs for a second send at most twice the bytes its edge sent (plus one small NACK):
        // without keys a datagram's source can be forged, and one 124-byte datagram claiming
        // 4,096 parts had 5.6 KB of NACKs sent to whatever address it named (45×). An edge that
        // lost most of a second's parts is asked for the rest over the next rounds.
        const room = Math.floor((nackAllowanceBytes + 2 * (o.bytes - openSecondBytes(o.parts)) - o.nackBytes - nackOverheadBytes) / 2);
        for (let p = 0; p < o.parts && missing.length < Math.min(nackPartsMax, room); p++) {
          if (o.received[p] !== null) continue;
          missing.push(p);
          if (o.nacked[p] === 0) {
            o.nacked[p] = 1;
            this.counters.parts_nacked++;
          }
        }
        o.nacks++;
        o.lastNackMs = nowMs;
        if (missing.length === 0) continue;
        o.nackBytes += nackBytesOf(missing.length);
        out.push({ peer: s.peer, server: s.id, session: o.session, second: o.second, missingParts: Uint16Array.from(missing) });
      }
      // A probe is asked again on the NACK schedule until a part of its second arrives (its
      // answer may be lost too); one never answered is counted, never lost silently.
      let kept = 0;
      for (const p of s.probes) {
        if (p.parts === undefined ? s.open.has(p.second) || s.closed.has(p.second) : !this.stillMissing(s, p)) continue;
        if (nowMs >= p.dueMs) {
          // The last probe's answer had a whole interval to come.
          if (p.sent >= this.opts.nackRetriesMax) {
            if (p.parts === undefined) this.counters.seconds_unanswered++;
            else this.counters.parts_lost += p.parts.length;
            continue;
          }
          out.push({ peer: s.peer, server: s.id, session: s.session, second: p.second, missingParts: p.parts === undefined ? Uint16Array.of(0) : Uint16Array.from(p.parts.slice(0, nackPartsMax)) });
          p.sent++;
          p.dueMs = nowMs + this.opts.nackIntervalMs;
        }
        s.probes[kept++] = p;
      }
      s.probes.length = kept;
      // Nothing left to ask for (a second that opens again, or a probe, adds it back).
      if (!waiting && kept === 0) this.needy.delete(s);
    }
    return out;
  }

  /**
   * Closes every second whose watermark has passed, oldest first, and hands back late parts:
   * a second's late parts wait up to lateHoldMs from the first of them (all of them with
   * `allLate`), so a fleet running seconds behind sends one late batch per second per second,
   * not one per tick — each batch is a request to the core with a section per shard.
   */
  close(nowMs: number, opts: { allLate?: boolean } = {}): ClosedBatch[] {
    const out: ClosedBatch[] = [];
    const pressed = this.lateBytes > this.opts.bytesHeldMax / 4;
    for (const [second, bySecond] of this.late) {
      if (!(opts.allLate === true || pressed || nowMs - (this.lateSinceMs.get(second) ?? 0) >= lateHoldMs)) continue;
      const servers: ServerParts[] = [];
      for (const [s, parts] of bySecond) servers.push({ server: s.id, parts });
      out.push({ second, late: true, servers });
      this.counters.late_batches++;
      const bytes = this.lateBytesOf.get(second) ?? 0;
      this.bytesHeld -= bytes;
      this.lateBytes -= bytes;
      this.late.delete(second);
      this.lateSinceMs.delete(second);
      this.lateBytesOf.delete(second);
    }
    // Just restarted: seconds stay open while edges answer the resume probes.
    if (this.opts.resume !== undefined && nowMs < this.opts.resume.untilMs) return out;
    const due = [...this.openSeconds.keys()].filter((sec) => (sec + 1) * 1000 + this.opts.latenessMs <= nowMs).sort((a, b) => a - b);
    for (const second of due) out.push(this.closeSecond(second));
    const watermarkSecond = Math.floor((nowMs - this.opts.latenessMs) / 1000) - 1;
    if (watermarkSecond > this.closedThrough) this.closedThrough = watermarkSecond;
    // Closed-second bitmaps age out once a second, not every tick (40 servers × 600 s of them).
    const nowS = Math.floor(nowMs / 1000);
    if (nowS !== this.forgotAt) {
      this.forgotAt = nowS;
      this.forgetClosed(nowS - this.opts.lateHorizonSeconds);
      this.forgetSilent(nowMs - this.opts.lateHorizonSeconds * 1000);
    }
    return out;
  }

  private closeSecond(second: number): ClosedBatch {
    const servers: ServerParts[] = [];
    for (const s of this.openSeconds.get(second) ?? []) {
      const o = s.open.get(second)!;
      s.open.delete(second);
      const parts = o.received.filter((p): p is EdgeSecondMessage => p !== null);
      if (o.count < o.parts) {
        this.counters.parts_lost += o.parts - o.count;
        this.counters.seconds_incomplete++;
      }
      if (o.count === o.parts) s.closed.set(second, o.parts);
      else if (this.closedRecordBytes + o.parts > closedRecordBytesMax) {
        // Records of incomplete seconds are bounded here too (before: only a late part's was, and
        // 255 edges sending part 0 of 4,096 each second held 62 MB of them within a minute).
        s.closed.set(second, recordDropped);
        this.counters.closed_records_dropped++;
      } else {
        s.closed.set(second, Uint8Array.from(o.received, (p) => (p === null ? 0 : 1)));
        this.closedRecordBytes += o.parts;
      }
      this.bytesHeld -= o.bytes;
      servers.push({ server: s.id, parts });
    }
    this.openSeconds.delete(second);
    this.counters.seconds_closed++;
    if (second > this.closedThrough) this.closedThrough = second;
    return { second, late: false, servers };
  }

  private forgetClosed(before: number): void {
    for (const s of this.servers.values()) {
      for (const [sec, seen] of s.closed) {
        if (sec >= before) continue;
        if (typeof seen !== 'number') this.closedRecordBytes -= seen.length;
        s.closed.delete(sec);
      }
    }
  }

  /**
   * Forgets edges silent since before `heardBeforeMs` (a late horizon) with nothing open, closed
   * or probed: the table holds serversMax edges at once, not every edge a rack ever heard (a rack
   * whose servers were replaced over months refused every new one as too_many_servers). Nothing
   * of such an edge is held: its closed seconds aged out, and its late parts went within
   * lateHoldMs. If it speaks again it is a new edge (its old seconds are past the horizon).
   */
  private forgetSilent(heardBeforeMs: number): void {
    for (const [id, s] of this.servers) {
      if (s.heardMs >= heardBeforeMs || s.open.size > 0 || s.closed.size > 0 || s.probes.length > 0) continue;
      this.servers.delete(id);
      this.needy.delete(s);
      this.counters.servers_forgotten++;
    }
  }

  /** Closes everything still open (shutdown). */
  flush(): ClosedBatch[] {
    const out = this.close(0, { allLate: true });
    for (const second of [...this.openSeconds.keys()].sort((a, b) => a - b)) out.push(this.closeSecond(second));
    return out;
  }
}
