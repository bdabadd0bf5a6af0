// POST /api/v1/ingest and imports on a cluster node (issue 13): a rack second is not stored
// here but published to the shards' streams, exactly as `apm rack --nats` publishes it, and
// acknowledged once every stream has it; each shard's owners then apply it in stream order.
// (Storing it directly would put it on this node alone, whatever the placement says.)
// As a rack does, the node keeps what was acknowledged for a while and publishes it again when
// its connection to NATS comes back: JetStream acknowledges a message once a quorum holds it,
// before it is synced (nats-server syncs every 2 minutes), so a crash of every NATS server can
// lose acknowledged messages, and the rack, answered 204, no longer has them. The streams'
// Msg-Id de-duplicates what they kept.

import type { JetStreamClient } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { Body, decodeFrame, Encoder } from '../../schema/codec.js';
import { batchBytesMax } from '../../schema/limits.js';
import { encodingDeflate, encodingHeader, logMessages } from '../../schema/log.js';
import type { IngestResult } from '../pool.js';

export const logIngestLimits = {
  /** How long an acknowledged body is kept for a re-publish (inside the streams' 600 s duplicate window, beyond nats-server's 2 min sync). */
  keepAckedMs: 150_000,
  /** Bytes of acknowledged messages kept; the oldest body is forgotten beyond it (counted). */
  keptBytesMax: 64 * 1024 * 1024,
} as const;

interface LogMessage {
  subject: string;
  data: Uint8Array;
  msgId: string;
}

export class LogIngest {
  private readonly enc = new Encoder();
  readonly counters = { published: 0, publish_failures: 0, messages: 0, reconnects: 0, republished: 0, republish_failures: 0, kept_evicted: 0 };
  /** Acknowledged bodies' messages, oldest first, kept for a re-publish after a reconnect. */
  private kept: { atMs: number; messages: LogMessage[]; bytes: number }[] = [];
  /** Bodies before this index in `kept` are forgotten (the array is compacted now and then, not copied at each expiry). */
  private keptHead = 0;
  keptBytes = 0;
  private lostAtMs: number | null = null;

  constructor(
    private readonly js: JetStreamClient,
    private readonly shards: number,
    private readonly publishTimeoutMs = 10_000,
    private readonly limits: { keepAckedMs: number; keptBytesMax: number } = logIngestLimits,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * The seconds every node's store takes (its retention, how far ahead of the clock): a second
   * outside them is refused here, 400 as a single core does, not acknowledged and then skipped by
   * every consumer (before: the rack was told it was stored). Null: not checked (tests).
   */
  accepts: { retentionSeconds: number; futureSecondsMax: number; blockSeconds: number } | null = null;

  get keptBodies(): number {
    return this.kept.length - this.keptHead;
  }

  private publishAll(messages: readonly LogMessage[]): Promise<unknown> {
    // One headers object per message: publish() writes the Msg-Id into the one it is given.
    return Promise.all(
      messages.map((m) => {
        const h = headers();
        h.set(encodingHeader, encodingDeflate);
        return this.js.publish(m.subject, m.data, { msgID: m.msgId, headers: h, timeout: this.publishTimeoutMs });
      }),
    );
  }

  /** Keeps an acknowledged body's messages (bounded in time and bytes). */
  private keep(atMs: number, messages: LogMessage[]): void {
    if (this.limits.keepAckedMs <= 0) return;
    let bytes = 0;
    for (const m of messages) bytes += m.data.length;
    this.kept.push({ atMs, messages, bytes });
    this.keptBytes += bytes;
    this.expire(this.now() - this.limits.keepAckedMs);
    while (this.keptBytes > this.limits.keptBytesMax && this.keptHead < this.kept.length) {
      this.keptBytes -= this.kept[this.keptHead++]!.bytes;
      this.counters.kept_evicted++;
    }
    this.compact();
  }

  /** Forgets bodies acknowledged before `beforeMs`. */
  private expire(beforeMs: number): void {
    while (this.keptHead < this.kept.length && this.kept[this.keptHead]!.atMs < beforeMs) this.keptBytes -= this.kept[this.keptHead++]!.bytes;
    this.compact();
  }

  /** Drops the forgotten head of `kept` once it is the larger part (amortized O(1) a body). */
  private compact(): void {
    if (this.keptHead > 64 && 2 * this.keptHead > this.kept.length) {
      this.kept = this.kept.slice(this.keptHead);
      this.keptHead = 0;
    }
  }

  /** The connection to NATS was lost: kept bodies are counted back from now. */
  connectionLost(): void {
    this.lostAtMs ??= this.now();
  }

  /**
   * The connection is back: every body acknowledged within keepAckedMs before it was lost is
   * published again (the streams de-duplicate what they kept by Msg-Id) and kept again; one that
   * fails is kept for the next reconnect (counted).
   */
  async connectionBack(): Promise<void> {
    this.counters.reconnects++;
    this.expire((this.lostAtMs ?? this.now()) - this.limits.keepAckedMs);
    this.lostAtMs = null;
    for (const b of this.kept.slice(this.keptHead)) {
      try {
        await this.publishAll(b.messages);
        this.counters.republished++;
      } catch {
        this.counters.republish_failures++;
      }
    }
  }

  /** Follows the connection's status (until it closes). */
  async watch(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') this.connectionLost();
      else if (s.type === 'reconnect') await this.connectionBack();
    }
  }

  /** Why a second is outside what the stores take (past their retention, too far ahead of this node's clock), or null. */
  private outside(second: number): IngestResult | null {
    const a = this.accepts;
    if (a === null) return null;
    const nowS = Math.floor(this.now() / 1000);
    const blockOf = (sec: number) => sec - (((sec % a.blockSeconds) + a.blockSeconds) % a.blockSeconds);
    const oldest = blockOf(nowS - a.retentionSeconds);
    if (blockOf(second) < oldest) return { status: 400, reason: 'past_retention', error: `second ${second} is older than the retention (${a.retentionSeconds} s) keeps: rows before ${new Date(oldest * 1000).toISOString()} are deleted; nothing of this second is stored` };
    if (second > nowS + a.futureSecondsMax) return { status: 400, reason: 'future', error: `second ${second} is ${second - nowS} s ahead of this core's clock (at most ${a.futureSecondsMax} s are taken): check the sender's clock; nothing of this second is stored` };
    return null;
  }

  /** Requests refused before anything was published, by reason (malformed, rack not allowed, another S, past the retention, ahead of the clock). */
  readonly refused: Record<string, number> = {};

  async ingest(body: Uint8Array, mayRack: (rack: string) => boolean = () => true): Promise<IngestResult> {
    const r = await this.publishBody(body, mayRack);
    if (r.status !== 204 && r.status !== 503) this.refused[r.reason] = (this.refused[r.reason] ?? 0) + 1;
    return r;
  }

  private async publishBody(body: Uint8Array, mayRack: (rack: string) => boolean): Promise<IngestResult> {
    const r = decodeFrame(body, batchBytesMax, { expect: Body.RackSecond });
    if (!r.ok || r.msg.type !== 'rackSecond') {
      const reason = r.ok ? 'not_a_second' : r.reason;
      return { status: 400, reason, error: r.ok ? `expected a RackSecond (wire v2), got a ${r.msg.type}` : `request refused (${r.reason}): ${r.detail}` };
    }
    const msg = r.msg;
    if (!mayRack(msg.rack)) return { status: 403, reason: 'rack_not_allowed', rack: msg.rack, error: `not allowed to send for rack ${msg.rack}` };
    if (msg.shards !== this.shards) {
      return { status: 409, reason: 'shards_mismatch', shards: this.shards, error: `the rack cut its sections for ${msg.shards} shards; the cluster has ${this.shards}: ask GET /api/v1/placement and cut again` };
    }
    const refused = this.outside(msg.second);
    if (refused !== null) return refused;
    try {
      const messages = logMessages(body, this.enc);
      await this.publishAll(messages);
      this.counters.published++;
      this.counters.messages += messages.length;
      this.keep(this.now(), messages);
    } catch (err) {
      // Some shards may have it already: the Msg-Id makes the sender's retry store each once.
      this.counters.publish_failures++;
      return { status: 503, reason: 'log_unavailable', error: `the cluster's log did not acknowledge every shard (${(err as Error).message}); retry` };
    }
    return { status: 204, points: 0, duplicates: 0, msg, logged: true };
  }
}
