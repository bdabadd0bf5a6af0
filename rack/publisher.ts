// The rack's NATS side (issue 13, `apm rack --nats`): instead of POSTing each spooled RackSecond
// to a core (forwarder.ts), the rack publishes it to JetStream as one deflated message per shard
// section (schema/log.ts: subject apm.shard.<k>, Nats-Msg-Id <rack>/<origin>/<session>/<seq>/<shard>).
// The spool's semantics stay the Forwarder's: bodies go in spool order, a body leaves the spool
// only once every one of its messages was acknowledged by its stream (a duplicate ack counts: the
// stream holds it), and a failure is retried with exponential backoff for as long as the spool
// holds the body — a dead NATS cluster or a refused permission is waited out, never a drop.
//
// Order in a stream: body N+1's message for shard k is published only once body N's message for
// shard k was acknowledged, so no retry lets a later second pass an earlier one in a stream (core
// nodes apply each stream in order); messages of one body go to different streams in parallel.
// Backoff is per stream for the same reason: a stream that refuses (no leader, a permission the
// rack's user lacks) holds back its own messages only, and the others keep draining — the body
// leaves the spool once the refusing stream took its message too.
//
// Kept bodies: JetStream acknowledges a message once a quorum of its stream's servers wrote it,
// not once it reached their disks, so a correlated crash of the NATS servers can lose
// acknowledged messages. An acknowledged body is therefore kept in memory a little longer
// (keepAckedMs, bounded in bytes) and re-published when the connection to NATS was lost and came
// back; the Msg-Id de-duplicates what the streams still hold (within their duplicate window).
//
// Publisher is the bookkeeping (tests drive it with a fake target); NatsLink below connects,
// waits for the cluster's settings (S) and turns the connection's status into
// connectionLost()/connectionBack().

import { jetstream } from '@nats-io/jetstream';
import { headers, NoRespondersError, PermissionViolationError, TimeoutError, type NatsConnection } from '@nats-io/transport-node';
import { Body, decodeFrame, Encoder } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';
import { connectNats, encodingDeflate, encodingHeader, logMessages, readSettings, type ClusterSettings, type LogMessage, type NatsAuth } from '../schema/log.js';
import { Histogram } from '../lib/prom.js';
import type { Spool } from './spool.js';
import { Deferrals } from './deferrals.js';

/** Notes on bodies this process cut (their second, the S they were cut for): a day of one per second. */
const secondNotesMax = 86_400;

/** A failure that lasts is logged again this often (a wrong permission is fixed by an operator). */
const failureLogMs = 30_000;

/** What a stream answered for one message. */
export interface LogAck {
  stream: string;
  seq: number;
  duplicate: boolean;
}

/** Where messages go: JetStream in production (NatsLink), a fake in tests. Rejects on any failure. */
export interface LogTarget {
  publish(m: LogMessage, timeoutMs: number): Promise<LogAck>;
}

/** Why a publish failed, for apm_rack_nats_publish_failed_total{reason}. */
export type PublishFailure = 'permission' | 'no_stream' | 'timeout' | 'refused' | 'other';

export interface PublisherOptions {
  /** Messages in flight at once (over all bodies). */
  concurrency: number;
  /** Spooled bodies held open (split into messages) at once: bounds the messages in memory. */
  bodiesOpenMax: number;
  publishTimeoutMs: number;
  backoffMinMs: number;
  backoffMaxMs: number;
  /** How long an acknowledged body is kept for a re-publish after a reconnect (0: none). */
  keepAckedMs: number;
  /** Bound on the compressed bytes kept; the oldest kept body is forgotten beyond it (counted). */
  keepAckedBytesMax: number;
  /**
   * Spooled batch `seq` cut for another shard count (rack/recut.ts) and replaced in the spool;
   * null when the spool cannot take it now (tried again later); throws on a body it cannot read.
   */
  recut: (seq: number, body: Uint8Array, shards: number) => Promise<Uint8Array | null>;
  log: (line: string) => void;
  /** The clock (tests pass their own). */
  nowMs?: () => number;
}

const pending = 0;
const inFlight = 1;
const acked = 2;

interface OpenBody {
  seq: number;
  /** False for an acknowledged body re-published after a reconnect (no longer in the spool). */
  spooled: boolean;
  /** The spooled body's size (before compression). */
  bodyBytes: number;
  messages: LogMessage[];
  /** Per message: pending, inFlight or acked. */
  state: Uint8Array;
  /** Per message: refusals in a row that no wait changes (refusedForGood), allocated at the first. */
  refusals?: Uint8Array;
  unacked: number;
  /** When every message was first acknowledged (kept bodies re-published keep it). */
  ackedAtMs: number;
}

export class Publisher {
  /** Bodies being published, ascending seq (spooled ones and re-published kept ones). */
  private readonly open: OpenBody[] = [];
  private openSpooled = 0;
  /** Acknowledged bodies kept for a re-publish after a reconnect, in the order they were kept. */
  private readonly kept = new Map<number, OpenBody>();
  private keptBytes = 0;
  /** When the connection to NATS was last lost (ms): kept bodies are counted back from it. */
  private lostAtMs = 0;
  private readonly notes = new Map<number, { second: number; shards: number }>();
  private readonly encoder = new Encoder();
  private readonly now: () => number;
  private target: LogTarget | null = null;
  /** S from the cluster's settings; 0 until begin(). */
  private shards = 0;
  /** Attempts started before the last reconnect belong to an older epoch: their answers are ignored. */
  private epoch = 0;
  private inFlightCount = 0;
  private opening = false;
  private pumpQueued = false;
  /** Streams whose last publish failed, by shard (at most S entries): backoff and when to retry. */
  private readonly failing = new Map<number, { backoffMs: number; retryAt: number }>();
  /** When each failure reason was last logged (a lasting failure is logged every failureLogMs). */
  private readonly loggedMs = new Map<PublishFailure, number>();
  private timer: NodeJS.Timeout | null = null;
  private timerAt = 0;
  private stopped = false;
  /** The connection to NATS is up (set by NatsLink). */
  connected = false;
  readonly counters = {
    /** Bodies every message of which was acknowledged (removed from the spool). */
    batches_acked: 0,
    /** Their bytes as spooled, and as published (deflated messages). */
    bytes_raw_acked: 0,
    bytes_compressed_acked: 0,
    messages_acked: 0,
    /** Acknowledgements that said the stream already had the message (Msg-Id within its window). */
    messages_duplicate: 0,
    publish_failed: 0,
    /** Acknowledged bodies published again after a reconnect, and their messages. */
    batches_republished: 0,
    messages_republished: 0,
    /** Kept bodies forgotten early because of keepAckedBytesMax (not re-published after a reconnect). */
    kept_evicted: 0,
    batches_recut: 0,
    batches_recut_deferred: 0,
    batches_unreadable: 0,
    /** Bodies found in the spool at start. */
    batches_replayed: 0,
    reconnects: 0,
    /** Messages dropped after refusedAttemptsMax refusals in a row of the message itself (over the max payload or the stream's message size). */
    messages_dropped_refused: 0,
  };
  readonly failures: Record<PublishFailure, number> = { permission: 0, no_stream: 0, timeout: 0, refused: 0, other: 0 };
  /** Newest second whose body was acknowledged whole (0: none yet). */
  ackedSecond = 0;
  /** Seconds from a second's end to the acknowledgement of its body's last message. */
  readonly ackLatency = new Histogram([0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 30, 60, 120, 300]);

  constructor(
    private readonly spool: Spool,
    private readonly opts: PublisherOptions,
  ) {
    if (!(opts.concurrency >= 1 && opts.bodiesOpenMax >= 1 && opts.publishTimeoutMs > 0 && opts.backoffMinMs > 0 && opts.backoffMaxMs >= opts.backoffMinMs)) {
      throw new Error(`publisher options out of range: ${JSON.stringify({ ...opts, recut: undefined, log: undefined })}`);
    }
    this.now = opts.nowMs ?? Date.now;
    // Whatever a previous process left in the spool is published first, in order.
    this.counters.batches_replayed = spool.heldBatches;
  }

  /**
   * Starts publishing to `target` for a cluster of `shards` shards: the spool records S, and
   * spooled bodies cut for another S are re-cut before they are published.
   */
  async begin(target: LogTarget, shards: number): Promise<void> {
    if (this.spool.shards !== shards) {
      this.opts.log(`rack: the cluster has ${shards} shards (KV apm-cluster), this rack cut for ${this.spool.shards}; spooled bodies are re-cut for ${shards} before they are published`);
      await this.spool.setShards(shards);
    }
    this.shards = shards;
    this.target = target;
    this.pump();
  }

  /** Notes the second a body describes and the S it was cut for, and starts publishing. */
  enqueued(seq: number, second: number, shards: number): void {
    this.notes.set(seq, { second, shards });
    // Bodies the spool dropped while full never come back here: forget the oldest notes.
    if (this.notes.size > secondNotesMax) this.notes.delete(this.notes.keys().next().value!);
    this.pump();
  }

  /** True while some stream's last publish failed. */
  get down(): boolean {
    return this.failing.size > 0;
  }

  /** Streams whose last publish failed. */
  get streamsFailing(): number {
    return this.failing.size;
  }

  /** How long acknowledged bodies are kept for a re-publish (must stay inside the streams' duplicate window). */
  get keepAckedMs(): number {
    return this.opts.keepAckedMs;
  }

  get messagesInFlight(): number {
    return this.inFlightCount;
  }

  get bodiesOpen(): number {
    return this.open.length;
  }

  get keptBatches(): number {
    return this.kept.size;
  }

  get keptBytesHeld(): number {
    return this.keptBytes;
  }

  /** The connection to NATS dropped: nothing is published until it is back (the spool holds everything). */
  connectionLost(detail: string): void {
    if (!this.connected) return;
    this.connected = false;
    this.lostAtMs = this.now();
    this.opts.log(`rack: lost the connection to NATS (${detail}); spooling and reconnecting`);
  }

  /**
   * The connection is back. The NATS servers may have lost what they acknowledged (a crash of
   * them all) and answers to attempts in flight may never come, so every open body starts over
   * (its acknowledged messages too), kept bodies are published again, and the backoff starts
   * over. Answers to attempts of the old epoch are ignored from now on.
   */
  connectionBack(detail: string): void {
    this.connected = true;
    this.counters.reconnects++;
    this.epoch++;
    this.inFlightCount = 0;
    let messages = 0;
    for (const b of this.open) {
      for (let i = 0; i < b.state.length; i++) if (b.state[i] === acked) messages++;
      b.state.fill(pending);
      b.unacked = b.messages.length;
    }
    // Kept bodies are counted back from the moment the connection was lost, not from now: a
    // crash of every NATS server and their restart can outlast the keep time.
    this.expireKept(this.lostAtMs);
    const bodies = this.kept.size;
    for (const b of this.kept.values()) {
      b.state.fill(pending);
      b.unacked = b.messages.length;
      this.open.push(b);
      messages += b.messages.length;
    }
    this.kept.clear();
    this.keptBytes = 0;
    this.open.sort((a, b) => a.seq - b.seq);
    this.counters.batches_republished += bodies;
    this.counters.messages_republished += messages;
    this.opts.log(`rack: connected to NATS again (${detail}); re-publishing ${bodies} bodies acknowledged in the last ${this.opts.keepAckedMs / 1000} s before the connection was lost and the acknowledged messages of open ones (${messages} messages; streams de-duplicate what they kept), then ${this.spool.heldBatches} spooled bodies`);
    this.failing.clear();
    this.pump();
  }

  /** Runs pump() once on the next turn of the event loop (many acknowledgements, one scan). */
  private pumpSoon(): void {
    if (this.pumpQueued) return;
    this.pumpQueued = true;
    setImmediate(() => {
      this.pumpQueued = false;
      this.pump();
    });
  }

  /** Opens spooled bodies up to the bound and starts the publishes the order and the bounds allow. */
  pump(): void {
    if (this.stopped || this.target === null || !this.connected) return;
    if (this.openSpooled < this.opts.bodiesOpenMax && !this.opening) void this.fill();
    let room = this.opts.concurrency - this.inFlightCount;
    if (room <= 0) return;
    const now = this.now();
    let wakeAt = Infinity;
    // A shard is blocked once an older message of it is unacknowledged (in flight or not), or
    // while its stream is backing off.
    const blocked = new Set<number>();
    for (const b of this.open) {
      for (let i = 0; i < b.messages.length && room > 0; i++) {
        const st = b.state[i]!;
        if (st === acked) continue;
        const shard = b.messages[i]!.shard;
        if (blocked.has(shard)) continue;
        blocked.add(shard);
        if (st !== pending) continue;
        const retryAt = this.failing.get(shard)?.retryAt ?? 0;
        if (retryAt > now) {
          wakeAt = Math.min(wakeAt, retryAt);
          continue;
        }
        this.publish(b, i);
        room--;
      }
      if (room <= 0) break;
    }
    if (wakeAt !== Infinity) this.schedule(wakeAt);
  }

  /** Pumps again at `atMs` (the earliest stream backoff to end). */
  private schedule(atMs: number): void {
    if (this.timer !== null && this.timerAt <= atMs) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timerAt = atMs;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.pump();
    }, Math.max(0, atMs - this.now()));
    this.timer.unref();
  }

  private publish(b: OpenBody, i: number): void {
    b.state[i] = inFlight;
    this.inFlightCount++;
    const attempt = { epoch: this.epoch };
    this.target!.publish(b.messages[i]!, this.opts.publishTimeoutMs).then(
      (ack) => this.settled(b, i, attempt, ack, null),
      (err: unknown) => this.settled(b, i, attempt, null, err),
    );
  }

  private settled(b: OpenBody, i: number, attempt: { epoch: number }, ack: LogAck | null, err: unknown): void {
    // An attempt of an older epoch: its message was set pending again by the reconnect (and
    // no longer counted in flight); its answer may predate a crash of the NATS servers.
    if (attempt.epoch !== this.epoch || this.stopped) return this.pumpSoon();
    this.inFlightCount--;
    if (ack !== null) {
      b.state[i] = acked;
      b.unacked--;
      this.counters.messages_acked++;
      if (ack.duplicate) this.counters.messages_duplicate++;
      if (this.failing.delete(b.messages[i]!.shard) && this.failing.size === 0) this.recovered();
      if (b.unacked === 0) this.complete(b);
      return this.pumpSoon();
    }
    // A refusal of the message itself (a payload over the server's limit, a message over the
    // stream's size) does not change with waiting: after a few in a row it is dropped, counted, so that one
    // message does not hold its stream and every body behind it (the spool then dropped the
    // oldest bodies) for good.
    if (refusedForGood(err)) {
      const r = (b.refusals ??= new Uint8Array(b.messages.length));
      if (++r[i]! >= refusedAttemptsMax) {
        const m = b.messages[i]!;
        b.state[i] = acked;
        b.unacked--;
        this.counters.messages_dropped_refused++;
        this.opts.log(`rack: ${m.subject} message ${m.msgId} refused ${refusedAttemptsMax} times (${(err as Error).message}); dropped (apm_rack_nats_messages_dropped_total)`);
        if (this.failing.delete(m.shard) && this.failing.size === 0) this.recovered();
        if (b.unacked === 0) this.complete(b);
        return this.pumpSoon();
      }
    } else if (b.refusals !== undefined) b.refusals[i] = 0;
    b.state[i] = pending;
    this.failed(b.messages[i]!, err);
  }

  private recovered(): void {
    const reasons = [...this.loggedMs.keys()].join(', ');
    this.opts.log(`rack: every stream acknowledges publishes again${reasons === '' ? '' : ` (after ${reasons} failures)`}; draining ${this.spool.heldBatches} spooled bodies`);
    this.loggedMs.clear();
  }

  /**
   * A failed publish: counted by reason, logged once per reason and episode (again every
   * failureLogMs while it lasts; not while disconnected: that was said), and its stream backs
   * off (exponential, jittered) before the message is tried again.
   */
  private failed(m: LogMessage, err: unknown): void {
    const reason = classifyPublishError(err);
    this.counters.publish_failed++;
    this.failures[reason]++;
    const now = this.now();
    const logged = this.loggedMs.get(reason);
    if (this.connected && (logged === undefined || now - logged >= failureLogMs)) {
      const others = this.failing.size > 0 ? `; ${this.failing.size} streams failing` : '';
      this.opts.log(`rack: ${describeFailure(reason, m, err)}; ${this.spool.heldBatches} bodies stay spooled and are retried with backoff (apm_rack_nats_publish_failed_total{reason="${reason}"}${others})`);
      this.loggedMs.set(reason, now);
    }
    const f = this.failing.get(m.shard);
    const backoffMs = Math.min(this.opts.backoffMaxMs, Math.max(this.opts.backoffMinMs, (f?.backoffMs ?? 0) * 2));
    this.failing.set(m.shard, { backoffMs, retryAt: now + backoffMs * (0.75 + Math.random() * 0.5) });
    this.pump();
  }

  /** Every message of the body is acknowledged: out of the spool, into the kept bodies. */
  private complete(b: OpenBody): void {
    const at = this.open.indexOf(b);
    if (at >= 0) this.open.splice(at, 1);
    const now = this.now();
    // Acknowledged now, by the servers as they are now (a re-published body too: a second crash
    // of them could lose it again), so it is kept from now on.
    b.ackedAtMs = now;
    if (b.spooled) {
      this.openSpooled--;
      b.spooled = false;
      void this.spool.remove(b.seq);
      this.counters.batches_acked++;
      this.counters.bytes_raw_acked += b.bodyBytes;
      this.counters.bytes_compressed_acked += compressedBytes(b);
      const second = this.notes.get(b.seq)?.second;
      if (second !== undefined) {
        this.ackLatency.observe(now / 1000 - (second + 1));
        if (second > this.ackedSecond) this.ackedSecond = second;
      }
      this.notes.delete(b.seq);
    }
    this.keep(b, now);
  }

  private keep(b: OpenBody, now: number): void {
    if (this.opts.keepAckedMs <= 0 || now - b.ackedAtMs >= this.opts.keepAckedMs) return;
    this.kept.set(b.seq, b);
    this.keptBytes += compressedBytes(b);
    this.expireKept();
    for (const [seq, k] of this.kept) {
      if (this.keptBytes <= this.opts.keepAckedBytesMax) break;
      this.kept.delete(seq);
      this.keptBytes -= compressedBytes(k);
      this.counters.kept_evicted++;
    }
  }

  /** Forgets kept bodies acknowledged more than keepAckedMs before `nowMs`. */
  private expireKept(nowMs = this.now()): void {
    const oldest = nowMs - this.opts.keepAckedMs;
    for (const [seq, k] of this.kept) {
      if (k.ackedAtMs >= oldest) continue;
      this.kept.delete(seq);
      this.keptBytes -= compressedBytes(k);
    }
  }

  /** Bodies whose re-cut the spool could not write, waiting; one timer to look again. */
  private readonly deferred = new Deferrals();
  private deferTimer: NodeJS.Timeout | null = null;

  /** Opens the oldest spooled bodies not yet open (re-cut when needed), up to bodiesOpenMax. */
  private async fill(): Promise<void> {
    this.opening = true;
    let taken = 0;
    let later = false;
    try {
      const exclude = new Set<number>();
      for (const b of this.open) if (b.spooled) exclude.add(b.seq);
      this.deferred.addWaiting(Date.now(), exclude);
      for (const entry of this.spool.oldest(this.opts.bodiesOpenMax - this.openSpooled, exclude)) {
        taken++;
        const b = await this.openBody(entry.seq, entry.bytes);
        if (b === 'later') {
          // The spool cannot write the re-cut now (its disk is full): this body waits while newer ones are opened.
          this.counters.batches_recut_deferred++;
          this.deferred.defer(entry.seq, Date.now() + this.opts.backoffMaxMs);
          later = true;
          continue;
        }
        if (b === null || this.stopped) continue;
        this.open.push(b);
        this.openSpooled++;
        // Re-published kept bodies may sit anywhere in the list; spooled ones come in order.
        if (this.open.length > 1 && this.open[this.open.length - 2]!.seq > b.seq) this.open.sort((x, y) => x.seq - y.seq);
        if (b.unacked === 0) this.complete(b);
      }
    } finally {
      this.opening = false;
    }
    if (later && this.deferTimer === null) {
      this.deferTimer = setTimeout(() => {
        this.deferTimer = null;
        this.pump();
      }, this.opts.backoffMaxMs);
      this.deferTimer.unref();
    }
    // Nothing taken: nothing new to publish (pumping again would spin); enqueued() pumps for the next.
    if (taken > 0) this.pumpSoon();
  }

  /** A spooled body as messages for the cluster's S; null for one this build cannot read (counted, logged, removed). */
  private async openBody(seq: number, spooled: Uint8Array): Promise<OpenBody | null | 'later'> {
    let body = spooled;
    try {
      const note = this.notes.get(seq);
      if (note?.shards !== this.shards) {
        const r = decodeFrame(spooled, batchBytesMax, { expect: Body.RackSecond });
        if (!r.ok || r.msg.type !== 'rackSecond') throw new Error(r.ok ? `a ${r.msg.type}, not a RackSecond` : `${r.reason}: ${r.detail}`);
        if (r.msg.shards !== this.shards) {
          const cut = await this.opts.recut(seq, spooled, this.shards);
          if (cut === null) return 'later';
          body = cut;
          this.counters.batches_recut++;
        }
        if (note !== undefined) note.shards = this.shards;
      }
      const messages = logMessages(body, this.encoder);
      return { seq, spooled: true, bodyBytes: body.length, messages, state: new Uint8Array(messages.length), unacked: messages.length, ackedAtMs: 0 };
    } catch (err) {
      if (this.counters.batches_unreadable++ === 0) {
        this.opts.log(`rack: spooled batch ${seq} cannot be read (${(err as Error).message}); dropped, as is every other such batch (apm_rack_batches_unreadable_total). A spool written by an older apm holds batches this build no longer publishes`);
      }
      this.notes.delete(seq);
      await this.spool.remove(seq);
      return null;
    }
  }

  /** Waits (bounded) for publishes in flight, then stops. */
  async stop(waitMs: number): Promise<void> {
    const deadline = this.now() + waitMs;
    while (this.inFlightCount > 0 && this.connected && this.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
  }
}

function compressedBytes(b: OpenBody): number {
  let n = 0;
  for (const m of b.messages) n += m.data.length;
  return n;
}

/** The reason of a failed publish, from the error or its causes. */
/** Refusals in a row of one message, each a refusal of the message itself, before it is dropped. */
export const refusedAttemptsMax = 5;

/**
 * A refusal of the message itself, which no wait changes: over the server's max payload or the
 * stream's message size. (A stream or JetStream without room, a leader election, a timeout: all
 * pass, and are retried for as long as they last.)
 */
function refusedForGood(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; depth < 4 && e instanceof Error; depth++, e = e.cause) {
    if (/max(imum)?[ _]payload|message size exceeds|exceeds maximum allowed/i.test(e.message)) return true;
  }
  return false;
}

export function classifyPublishError(err: unknown): PublishFailure {
  let e: unknown = err;
  for (let depth = 0; depth < 4 && e instanceof Error; depth++, e = e.cause) {
    if (e instanceof PermissionViolationError || /permissions violation/i.test(e.message)) return 'permission';
    if (e instanceof NoRespondersError || /no responders|jetstream is not enabled/i.test(e.message)) return 'no_stream';
    if (e instanceof TimeoutError || e.name === 'TimeoutError') return 'timeout';
    if (e.name === 'JetStreamApiError') return 'refused';
  }
  return 'other';
}

/** What went wrong and what to do about it. */
function describeFailure(reason: PublishFailure, m: LogMessage, err: unknown): string {
  const what = (err as Error | null)?.message ?? String(err);
  switch (reason) {
    case 'permission':
      return `NATS refuses this rack's user publishing to ${m.subject} (${what}): allow the rack's NATS user to publish to apm.shard.> (and read KV apm-cluster) in the NATS servers' authorization, then reload them`;
    case 'no_stream':
      return `no JetStream stream answered for ${m.subject} (${what}): JetStream may still be starting, or the stream does not exist yet (the first core node started with --nats creates the streams)`;
    case 'timeout':
      return `NATS did not acknowledge ${m.subject} message ${m.msgId} in time (${what}): the stream may have no leader (too few NATS servers up)`;
    case 'refused':
      return `JetStream refused ${m.subject} message ${m.msgId}: ${what}`;
    case 'other':
      return `publishing ${m.subject} message ${m.msgId} failed: ${what}`;
  }
}

// ---------------------------------------------------------------------------------------------
// The connection: connect (for ever), wait for the cluster's settings, publish through JetStream.

export interface NatsLinkOptions {
  servers: string[];
  auth: NatsAuth;
  /** The connection's name, as NATS monitoring shows it. */
  name: string;
  /** How often KV apm-cluster is asked while it holds no settings. */
  settingsPollMs: number;
  /** How often the rack says it is still waiting (for settings, or for a first NATS server). */
  waitLogMs: number;
  log: (line: string) => void;
}

export class NatsLink {
  private nc: NatsConnection | null = null;
  private stopped = false;
  private wake: (() => void) | null = null;
  /** The cluster's settings once read (null until a core node wrote them). */
  settings: ClusterSettings | null = null;
  /** Failed attempts to read the settings (other than "none yet"). */
  settingsFailures = 0;

  constructor(
    private readonly publisher: Publisher,
    private readonly opts: NatsLinkOptions,
  ) {}

  /** Connects, reads the settings and hands the publisher its target; returns once it did (or on stop). */
  async run(): Promise<void> {
    const nc = await this.connect();
    if (nc === null) return;
    this.nc = nc;
    this.publisher.connected = true;
    void this.watch(nc);
    const settings = await this.waitSettings(nc);
    if (settings === null) return;
    this.settings = settings;
    if (this.publisher.keepAckedMs >= settings.duplicateWindowSeconds * 1000) {
      this.opts.log(`rack: the streams' duplicate window (${settings.duplicateWindowSeconds} s, KV apm-cluster) is not longer than the ${this.publisher.keepAckedMs / 1000} s acknowledged batches are kept for a re-publish after a reconnect: such a re-publish may be stored twice; raise the cluster's duplicateWindowSeconds`);
    }
    const js = jetstream(nc);
    await this.publisher.begin(
      {
        publish: (m, timeoutMs) => {
          // A fresh header set per message: publish() adds the Msg-Id to the one it is given.
          const h = headers();
          h.set(encodingHeader, encodingDeflate);
          return js.publish(m.subject, m.data, { msgID: m.msgId, headers: h, timeout: timeoutMs });
        },
      },
      settings.shards,
    );
  }

  /** Connects (connectNats retries unreachable servers for ever); a refused connection is logged and tried again. */
  private async connect(): Promise<NatsConnection | null> {
    const where = this.opts.servers.join(',');
    let attempt = 0;
    while (!this.stopped) {
      const waiting = setInterval(() => this.opts.log(`rack: no NATS server at ${where} answers yet; spooling meanwhile`), this.opts.waitLogMs);
      waiting.unref();
      try {
        const nc = await connectNats(this.opts.servers, this.opts.auth, this.opts.name);
        if (this.stopped) {
          await nc.close();
          return null;
        }
        this.opts.log(`rack: connected to NATS at ${nc.getServer()}`);
        return nc;
      } catch (err) {
        if (attempt++ % 6 === 0) this.opts.log(`rack: cannot connect to NATS at ${where}: ${(err as Error).message}; check --nats and the rack's NATS credentials (--nats-creds, or --nats-user with --nats-password-file); retrying, spooling meanwhile`);
        await this.sleep(this.opts.waitLogMs);
      } finally {
        clearInterval(waiting);
      }
    }
    return null;
  }

  private async watch(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') this.publisher.connectionLost(`from ${s.server}`);
      else if (s.type === 'reconnect') this.publisher.connectionBack(`to ${s.server}`);
    }
  }

  /** The settings from KV apm-cluster, waiting (and saying so every waitLogMs) while there are none. */
  private async waitSettings(nc: NatsConnection): Promise<ClusterSettings | null> {
    let loggedMs = -Infinity;
    while (!this.stopped) {
      let why: string;
      try {
        const s = await readSettings(nc);
        if (s !== null) return s;
        why = 'no cluster settings in KV apm-cluster yet: start a core node with --nats';
      } catch (err) {
        this.settingsFailures++;
        why = `cannot read the cluster settings from KV apm-cluster: ${(err as Error).message}`;
      }
      if (Date.now() - loggedMs >= this.opts.waitLogMs) {
        this.opts.log(`rack: ${why} (spooling meanwhile; asking again every ${this.opts.settingsPollMs / 1000} s)`);
        loggedMs = Date.now();
      }
      await this.sleep(this.opts.settingsPollMs);
    }
    return null;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      t.unref();
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  /** Closes the connection (call after the publisher stopped). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.nc?.close().catch(() => undefined);
  }
}
