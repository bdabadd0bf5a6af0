// One node's reading of one shard's stream (issue 13): a durable pull consumer per (node,
// shard), applied strictly in stream order. Each message goes to the worker owning the shard
// with the sequence it follows (`after`); the worker stores it only when `after` is the shard's
// applied sequence and commits the new sequence with the data (core/store.ts ingestMany), so a
// crash replays exactly what was not applied, once. The consumer acknowledges after the commit
// (AckPolicy.All: one ack covers a batch). When a message cannot be applied now (storage full,
// rows behind, a worker restarting) the loop waits and starts again from the applied sequence;
// it never skips ahead. The LMDB-recorded sequence, not the consumer's position, is the truth:
// the consumer is recreated from it whenever they disagree.

import { AckPolicy, DeliverPolicy, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import { encodingHeader, openLogMessage, streamOf } from '../../schema/log.js';
import type { RackSecondMessage } from '../../schema/section.js';
import type { ShardPool } from '../pool.js';

export interface ConsumerOptions {
  node: string;
  shard: number;
  /** Messages asked for per pull (they go to the worker together: one synced commit). */
  batch: number;
  /** Backoff after a message could not be applied (doubles up to backoffMaxMs). */
  backoffMinMs: number;
  backoffMaxMs: number;
}

export type ConsumerState = 'starting' | 'reading' | 'backoff' | 'stopped' | 'behind_stream';

export class ShardConsumer {
  state: ConsumerState = 'starting';
  /** The newest stream sequence applied (as the worker committed it). */
  applied = 0;
  /** Messages of the stream not applied yet, as of the newest pull. */
  lag = Number.POSITIVE_INFINITY;
  /** The stream's first sequence when the consumer started (a node with applied + 1 below it missed messages that aged out). */
  streamFirst = 0;
  lastError = '';
  readonly counters = { messages_applied: 0, messages_redelivered: 0, messages_refused: 0, messages_undecodable: 0, restarts: 0, points: 0 };
  private stopping = false;
  private loop: Promise<void> | null = null;
  /** Called with every rack second applied (the server list and fleet view learn of racks this way). */
  onApplied: ((msg: RackSecondMessage) => void) | null = null;

  constructor(
    private readonly o: ConsumerOptions,
    private readonly pool: ShardPool,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
  ) {}

  get durable(): string {
    return `n-${this.o.node}`;
  }

  /** Starts reading from the applied sequence `applied` (the worker's record). */
  start(applied: number): void {
    this.applied = applied;
    this.stopping = false;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.loop;
    this.state = 'stopped';
  }

  /** Deletes this node's consumer of the shard (the node no longer owns it). */
  async remove(): Promise<void> {
    await this.stop();
    await this.jsm.consumers.delete(streamOf(this.o.shard), this.durable).catch(() => undefined);
  }

  private async run(): Promise<void> {
    let backoff = this.o.backoffMinMs;
    while (!this.stopping) {
      try {
        await this.open();
        if (this.state === 'behind_stream') return;
        this.state = 'reading';
        const ok = await this.read();
        if (ok) backoff = this.o.backoffMinMs;
        else {
          this.state = 'backoff';
          this.counters.restarts++;
          await sleep(backoff);
          backoff = Math.min(this.o.backoffMaxMs, backoff * 2);
        }
      } catch (err) {
        if (this.stopping) return;
        this.lastError = (err as Error).message;
        this.state = 'backoff';
        this.counters.restarts++;
        await sleep(backoff);
        backoff = Math.min(this.o.backoffMaxMs, backoff * 2);
      }
    }
  }

  /** Makes sure the durable consumer delivers from applied + 1 (recreating it when it would not). */
  private async open(): Promise<void> {
    const stream = streamOf(this.o.shard);
    const si = await this.jsm.streams.info(stream);
    this.streamFirst = si.state.first_seq;
    if (this.applied + 1 < si.state.first_seq && si.state.messages > 0 && this.applied < si.state.last_seq) {
      // Messages this node never applied have aged out of the stream: only a live owner's rows have them.
      this.state = 'behind_stream';
      this.lastError = `applied ${this.applied}, but the stream starts at ${si.state.first_seq}: rebuild from a live owner`;
      return;
    }
    let ci = await this.jsm.consumers.info(stream, this.durable).catch(() => null);
    // Its floor past what is applied (data restored from an older copy) or far behind it: start afresh.
    if (ci !== null && (ci.ack_floor.stream_seq > this.applied || ci.delivered.stream_seq > this.applied + 10 * this.o.batch || ci.delivered.stream_seq < this.applied)) {
      await this.jsm.consumers.delete(stream, this.durable);
      ci = null;
    }
    if (ci === null) {
      await this.jsm.consumers.add(stream, {
        durable_name: this.durable,
        ack_policy: AckPolicy.All,
        deliver_policy: this.applied === 0 ? DeliverPolicy.All : DeliverPolicy.StartSequence,
        ...(this.applied === 0 ? {} : { opt_start_seq: this.applied + 1 }),
        ack_wait: 30e9,
        max_ack_pending: 4 * this.o.batch,
      });
    }
  }

  /** Pulls and applies until stopped; false when a message could not be applied (start again after a backoff). */
  private async read(): Promise<boolean> {
    const consumer = await this.js.consumers.get(streamOf(this.o.shard), this.durable);
    while (!this.stopping) {
      const msgs: JsMsg[] = [];
      const it = await consumer.fetch({ max_messages: this.o.batch, expires: 1000 });
      for await (const m of it) msgs.push(m);
      if (msgs.length === 0) {
        this.lag = 0;
        continue;
      }
      // Every message of the pull goes to the worker at once (they commit together), chained in delivery order.
      let after = this.applied;
      const sent = msgs.map((m) => {
        const prev = after;
        after = m.seq;
        if (m.seq <= this.applied) return Promise.resolve({ m, status: 'redelivered' as const });
        let body: Uint8Array;
        try {
          body = openLogMessage(m.data, m.headers?.get(encodingHeader));
        } catch (err) {
          this.counters.messages_undecodable++;
          this.lastError = `message ${m.seq}: ${(err as Error).message}`;
          return this.pool.skipStream(this.o.shard, m.seq, prev).then((r) => ({ m, status: r }));
        }
        return this.pool.ingestStream(body, this.o.shard, { seq: m.seq, after: prev }).then((r) => ({ m, status: r }));
      });
      let lastOk: JsMsg | null = null;
      let failed = false;
      for (const { m, status } of await Promise.all(sent)) {
        if (failed) continue;
        if (status === 'redelivered') this.counters.messages_redelivered++;
        else if (typeof status === 'object') {
          this.counters.messages_applied++;
          this.counters.points += status.points;
          this.onApplied?.(status.msg);
        } else if (status === 'refused') this.counters.messages_refused++;
        else {
          this.lastError = `message ${m.seq}: ${status}`;
          failed = true;
          continue;
        }
        this.applied = Math.max(this.applied, m.seq);
        lastOk = m;
      }
      if (lastOk !== null) {
        lastOk.ack();
        this.lag = lastOk.info.pending;
      }
      if (failed) return false;
    }
    return true;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
