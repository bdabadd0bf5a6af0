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
import type { StreamPosition } from '../store.js';

export interface ConsumerOptions {
  node: string;
  shard: number;
  /** Messages asked for per pull (they go to the worker together: one synced commit). */
  batch: number;
  /** Caught up: at most this many messages of the stream not applied. */
  readyLagMax: number;
  /**
   * Or at most this far behind in time: the messages waiting were stored in the stream over at
   * most this long (their count times the stream's interval between the last two acknowledged
   * messages, both by the NATS server's clock), and the message last applied was stored at most
   * this long before the stream's newest (ShardConsumer.judge).
   */
  readyBehindMsMax: number;
  /** Backoff after a message could not be applied (doubles up to backoffMaxMs). */
  backoffMinMs: number;
  backoffMaxMs: number;
  /**
   * The server deletes the durable consumer after this long without a pull (a node gone for
   * good left S consumers per id it ever had, for good). A node back later makes it again, from
   * its applied sequence, as for any missing consumer.
   */
  inactiveMs: number;
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
  /**
   * At most readyLagMax messages behind, or behind by at most readyBehindMsMax of the stream's
   * time, as of the newest pull that could tell. (By count alone, an owner of a shard that 250
   * racks publish to — 250 messages a second — was behind by more than 8 messages whenever
   * its apply queue held 100 ms of them, and a burst of one rack's spooled seconds made every
   * owner not ready at once: queries answered 503 shard_unavailable.) It stays true
   * while the log is unreachable (a NATS outage): what this node holds is still the newest
   * anyone holds, and queries keep being answered from it.
   */
  caughtUp = false;
  readonly counters = { messages_applied: 0, messages_redelivered: 0, messages_refused: 0, messages_undecodable: 0, restarts: 0, points: 0, stream_resets: 0, stream_gap_messages: 0 };
  /** The stream's creation time when this consumer last opened it (null: not yet; then the store's record is asked). */
  private streamCreated: string | null = null;
  /** The stream's message API was refused to this node's NATS user (said once; see markReused). */
  private markDenied = false;
  private stopping = false;
  private loop: Promise<void> | null = null;
  /** Ends the running read's pull (stop, or a message that could not be applied). */
  private closeMessages: (() => void) | null = null;
  /** Called with every rack second applied (the server list and fleet view learn of racks this way). */
  onApplied: ((msg: RackSecondMessage) => void) | null = null;

  constructor(
    private readonly o: ConsumerOptions,
    private readonly pool: ShardPool,
    private readonly queue: ApplyQueue,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
  ) {}

  get durable(): string {
    return `n-${this.o.node}`;
  }

  /** Read from the stream's first message even when it starts past applied + 1 (no owner holds what aged out). Used once: a later fall behind is a new decision. */
  acceptLoss = false;
  /**
   * The applied sequence after which a hole in the stream's sequences is taken as lost (counted
   * in stream_gap_messages, logged): one the node chose to resume past (acceptLoss), or one met
   * a second time (not at the stream's head, so no owner's copy is wanted for it).
   */
  private gapAllowedAfter: number | null = null;

  /** Starts reading from the applied sequence `applied` (the worker's record). */
  start(applied: number): void {
    this.applied = applied;
    this.stopping = false;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.closeMessages?.();
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
        if (this.state === 'behind_stream' || this.stopping) return;
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

  /** Not known to be caught up until the next pull tells (after the log was out of reach: what waited meanwhile is not known). */
  unsure(): void {
    this.notCaughtUp();
  }

  /** Makes sure the durable consumer delivers from applied + 1 (recreating it when it would not). */
  private async open(): Promise<void> {
    const stream = streamOf(this.o.shard);
    // The worker's record is the truth, read again at every (re)start: this consumer's count can
    // be ahead of it (a message answered as a copy of one whose group was then refused).
    const seqs = await this.pool.streamSeqs();
    this.applied = seqs[this.o.shard] ?? 0;
    if (this.applied < 0) {
      // A copy into this shard did not complete (restoringSeq): its partial data must be copied
      // again. Where the stream starts is still noted: with no owner to copy from, the owners
      // judge which of them reads on from the stream by it (left at 0, every owner at −1 took
      // every other for one that reaches the stream, and all waited for good).
      this.streamFirst = await this.jsm.streams.info(stream).then(
        (si) => si.state.first_seq,
        () => this.streamFirst,
      );
      this.state = 'behind_stream';
      this.notCaughtUp();
      this.lastError = 'a copy of this shard did not complete: copy it again from a live owner';
      return;
    }
    const si = await this.jsm.streams.info(stream);
    // The stream made again (NATS storage lost, then created anew) or cut back (acknowledged
    // messages lost in a correlated crash): its sequences up to what this node applied now name
    // other messages, which were skipped as "redelivered" — silently, on every owner. Seen by its
    // creation time changing while this node reads it, or by its end lying before what was
    // applied: read it again from its first message (sections already stored are duplicates).
    // The time this node saw is kept beside the applied sequence: a stream made again while the
    // node was down (and grown past what it had applied) looked unchanged after a restart.
    const created = si.created;
    const known = this.streamCreated ?? (await this.pool.streamCreated(this.o.shard));
    const remade = known !== null && created !== known;
    // The shard's mark, recorded with what was applied (Store.streamMark): the stream's message
    // under its sequence must still be it. A stream that lost its tail (a correlated NATS crash:
    // its servers sync every 2 minutes) and grew past the applied sequence again before this
    // consumer opened looks unchanged otherwise: the new messages under sequences this node had
    // applied were skipped as redelivered, silently, on every owner.
    const reused = !remade && this.applied <= si.state.last_seq ? await this.markReused(stream, await this.pool.streamMark(this.o.shard), si.state.first_seq, si.state.last_seq) : null;
    if ((remade || this.applied > si.state.last_seq || reused !== null) && this.applied > 0) {
      const to = Math.max(0, si.state.first_seq - 1);
      const why = remade ? 'made again' : reused !== null ? `cut back and grown again (its message ${reused} is not the one this node applied)` : `cut back to ${si.state.last_seq}`;
      console.error(`apm core: shard ${this.o.shard}'s stream ${stream} was ${why} after this node applied up to ${this.applied}: reading it again from ${to + 1}`);
      await this.pool.rebaseStream(this.o.shard, to);
      this.counters.stream_resets++;
      this.applied = to;
      await this.jsm.consumers.delete(stream, this.durable).catch(() => undefined);
    }
    // Noted after the rebase: a crash between the two reads the stream again, never skips it.
    if (created !== known) await this.pool.streamCreated(this.o.shard, created);
    this.streamCreated = created;
    this.streamFirst = si.state.first_seq;
    if (this.applied + 1 < si.state.first_seq && this.acceptLoss) {
      this.gapAllowedAfter = this.applied;
      this.acceptLoss = false;
    } else if (this.applied + 1 < si.state.first_seq) {
      // Messages this node never applied have aged out of the stream (all of them, when it is
      // empty: first_seq is then last_seq + 1): only a live owner's rows have them.
      this.state = 'behind_stream';
      this.notCaughtUp();
      this.lastError = `applied ${this.applied}, but the stream starts at ${si.state.first_seq}: rebuild from a live owner`;
      return;
    }
    const ci = await this.jsm.consumers.info(stream, this.durable).catch((err: Error) => {
      if (/not found/i.test(err.message)) return null;
      throw err;
    });
    // Reused only when it delivers exactly from applied + 1: messages delivered past what is
    // applied (a pull that failed half way) would come again only after the ack wait (30 s of
    // stall), and a floor past it means data restored from an older copy. Else: afresh.
    // (And one made before consumers had an inactivity bound is made again with it.)
    const inactiveNs = this.o.inactiveMs * 1e6;
    if (ci !== null && ci.delivered.stream_seq === this.applied && ci.ack_floor.stream_seq <= this.applied && ci.config?.inactive_threshold === inactiveNs) return;
    if (ci !== null) await this.jsm.consumers.delete(stream, this.durable);
    await this.jsm.consumers.add(stream, {
      durable_name: this.durable,
      ack_policy: AckPolicy.All,
      deliver_policy: this.applied === 0 ? DeliverPolicy.All : DeliverPolicy.StartSequence,
      ...(this.applied === 0 ? {} : { opt_start_seq: this.applied + 1 }),
      ack_wait: 30e9,
      max_ack_pending: 2 * this.o.batch,
      inactive_threshold: inactiveNs,
    });
  }

  /**
   * The sequence of the shard's mark when the stream now holds another message under it, else
   * null (the same message; no mark; the mark aged out of the stream or lies past what is applied).
   */
  private async markReused(stream: string, mark: { seq: number; ms: number } | null, first: number, last: number): Promise<number | null> {
    if (mark === null || mark.seq > this.applied || mark.seq < first || mark.seq > last) return null;
    const ms = await this.jsm.streams.getMessage(stream, { seq: mark.seq }).then(
      (m) => (m === null ? null : m.time.getTime()),
      (err: Error) => {
        if (/no message found|not found/i.test(err.message)) return null;
        // A NATS user without the message API ($JS.API.STREAM.MSG.GET.<stream>): said, not fatal
        // (the consumer would not open at all); the check waits for the permission.
        if (/permission/i.test(err.message)) {
          if (!this.markDenied) console.error(`apm core: shard ${this.o.shard}: cannot read message ${mark.seq} of ${stream} (${err.message}): a stream tail lost and grown back goes unseen; allow this node's NATS user $JS.API.STREAM.MSG.GET.${stream}`);
          this.markDenied = true;
          return null;
        }
        throw err;
      },
    );
    // Missing inside the stream's range: deleted (no correlated crash leaves a hole), not reused.
    // The client's time is the nanoseconds' double floored, the server's its text cut: 1 ms apart at most.
    return ms !== null && Math.abs(ms - mark.ms) > 1 ? mark.seq : null;
  }

  /**
   * Reads and applies until stopped; false when a message could not be applied (start again
   * after a backoff).
   *
   * One continuous pull (`consume`): the client asks for more as the messages it holds are
   * taken, so messages flow at whatever rate the stream has. (A loop of fetches, each waiting
   * for its batch to be applied before the next, paid a pull request, an inbox and an ack per
   * cycle; at a node's lower rate each cycle carried fewer messages, and the node's CPU per point
   * grew by half from 1 to 3 nodes.) Each message goes to the worker as it arrives, chained in
   * delivery order; the server holds at most max_ack_pending unacknowledged, which bounds what
   * waits here. An ack (AckPolicy.All) goes when nothing else is being applied, or every half
   * batch while messages keep coming.
   */
  private async read(): Promise<boolean> {
    const consumer = await this.js.consumers.get(streamOf(this.o.shard), this.durable);
    // Caught up already? (Nothing may come for a long time on an idle stream.)
    const ci = await consumer.info();
    this.lag = ci.num_pending + ci.num_ack_pending;
    this.unsureAtTsMs = null;
    this.caughtUp = this.lag <= this.o.readyLagMax;
    const messages = await consumer.consume({ max_messages: this.o.batch, expires: consumeExpiresMs, idle_heartbeat: consumeHeartbeatMs });
    this.closeMessages = () => void messages.stop();
    if (this.stopping) messages.stop(); // stop() came while the pull was being made
    let after = this.applied;
    /** The last acknowledged message's sequence and stream time (ms): the stream's pace since then gives the time behind. */
    let prevAck: { seq: number; tsMs: number } | null = null;
    // Deliveries are numbered by the consumer, redeliveries included: a number skipped is a
    // message lost on its way (a pull cut by a reconnect or a leader change that the client
    // renewed). Applying past it would store a gap and the cumulative ack would clear it on the
    // server: the read starts afresh from the applied sequence instead.
    let delivery = ci.delivered.consumer_seq;
    let chain = Promise.resolve();
    let pending = 0;
    let sinceAck = 0;
    let failed = false;
    let ended = false;
    let lastArrival = Date.now();
    const fail = (why: string) => {
      if (failed) return;
      failed = true;
      this.lastError = why;
      this.notCaughtUp();
      messages.stop();
    };
    // While nothing comes, the consumer's own count says whether the node is caught up, and
    // whether the pull is dead: messages delivered that never arrived (a pull lost in a leader
    // election: they would come again only after the ack wait), or messages waiting that are not
    // delivered (a pull lost with a NATS server the client did not renew). Then start afresh.
    const idleCheck = setInterval(() => {
      if (pending > 0 || ended || failed || Date.now() - lastArrival < idleCheckMs) return;
      void consumer.info().then(
        (info) => {
          if (pending > 0 || ended || failed) return;
          this.lag = info.num_pending + info.num_ack_pending;
          this.unsureAtTsMs = null;
          this.caughtUp = this.lag <= this.o.readyLagMax;
          if ((info.delivered.stream_seq > this.applied || info.num_pending > 0) && Date.now() - lastArrival >= idleCheckMs) {
            fail(`delivered up to ${info.delivered.stream_seq}, applied ${this.applied}, ${info.num_pending} waiting, nothing arriving: reading afresh`);
          }
        },
        (err: Error) => {
          // The consumer or its stream is gone (the client would wait for it for good): made again by open().
          if (/not found/i.test(err.message) && !ended) fail(`consumer check: ${err.message}`);
          // Else the log is unreachable: what this node holds stays the newest.
        },
      );
    }, idleCheckMs);
    idleCheck.unref();
    try {
      for await (const m of messages) {
        if (this.stopping || failed) break;
        lastArrival = Date.now();
        if (m.info.deliverySequence !== delivery + 1) {
          fail(`delivery ${delivery + 1} never arrived (${m.info.deliverySequence} did, stream message ${m.seq}): reading afresh from ${this.applied + 1}`);
          break;
        }
        delivery = m.info.deliverySequence;
        if (m.seq > after + 1) {
          // Stream messages between are gone: aged out while this node read (JetStream then
          // delivers the next one stored, its deliveries still contiguous) or between the
          // stream's info and the consumer's start. Applying past them stored a hole silently.
          if (this.gapAllowedAfter !== after) {
            this.gapAllowedAfter = after;
            fail(`stream messages ${after + 1}..${m.seq - 1} are gone from the stream (aged out while this node read it): reading afresh from ${after + 1} (a live owner's copy has them)`);
            break;
          }
          this.gapAllowedAfter = null;
          this.counters.stream_gap_messages += m.seq - after - 1;
          console.error(`apm core: shard ${this.o.shard}: stream messages ${after + 1}..${m.seq - 1} are gone from the stream and no owner's copy has them: lost, counted (apm_core_cluster_stream_gap_messages_total)`);
        }
        // A redelivered older message (its ack was lost) is not part of the chain.
        const prev = after;
        if (m.seq > after) after = m.seq;
        const sent = this.apply(m, prev);
        pending++;
        chain = chain.then(async () => {
          const { status } = await sent;
          pending--;
          if (pending === 0) lastArrival = Date.now(); // a slow apply is not a silent pull
          // Messages sent before a failure are still counted (the worker stored them in order); none is acknowledged after it.
          if (status === 'redelivered') this.counters.messages_redelivered++;
          else if (typeof status === 'object') {
            this.counters.messages_applied++;
            this.counters.points += status.points;
            this.onApplied?.(status.msg);
          } else if (status === 'refused') this.counters.messages_refused++;
          else {
            // This node cannot apply the shard now (storage full, rows behind, a worker
            // restarting): it falls behind, so queries go to the other owner until it reads again.
            fail(`message ${m.seq}: ${status}`);
            return;
          }
          this.applied = Math.max(this.applied, m.seq);
          if (failed) return;
          if (pending === 0 || ++sinceAck >= this.o.batch / 2) {
            sinceAck = 0;
            m.ack();
            this.lag = m.info.pending;
            const tsMs = m.info.timestampNanos / 1e6;
            // The messages waiting, at the pace the stream took them between the last two acks.
            const behindMs = prevAck !== null && m.seq > prevAck.seq ? (this.lag * Math.max(0, tsMs - prevAck.tsMs)) / (m.seq - prevAck.seq) : Number.POSITIVE_INFINITY;
            prevAck = { seq: m.seq, tsMs };
            this.judge(tsMs, this.lag <= this.o.readyLagMax, behindMs <= this.o.readyBehindMsMax);
          }
        }).catch((err: unknown) => fail(`message ${m.seq}: ${(err as Error).message}`)); // an ack on a closed connection: read afresh
      }
    } finally {
      ended = true;
      clearInterval(idleCheck);
      this.closeMessages = null;
      await chain;
    }
    return !failed;
  }

  /** Not caught up; an answer about the stream's edge still on its way no longer decides it. */
  private notCaughtUp(): void {
    this.unsureAtTsMs = null;
    this.caughtUp = false;
  }

  /** The stream's newest message time as last asked (the server's clock), and when it was asked (this node's clock). */
  private edge: { lastTsMs: number; askedMs: number } | null = null;
  private edgeAsking = false;
  /** The stream time of the message last acknowledged, while only the stream's edge can say whether that is caught up. */
  private unsureAtTsMs: number | null = null;

  /**
   * caughtUp after an acknowledged message stored at `tsMs`. Few waiting: yes. Waiting messages
   * that span little of the stream's time at its recent pace: true at the stream's live edge, and
   * also inside an old burst (a rack's spooled seconds replayed at once) that a joiner reads hours
   * before the edge; the stream's newest message time tells the two apart, asked at most once a
   * second and aged by the time since (before: a joiner counted ready inside such a burst and
   * answered queries from a shard it had not caught up on). Only a consumer not yet caught up asks:
   * one that was stays so by the pace (it falls behind only by a failed pull or apply, which say so).
   */
  private judge(tsMs: number, fewWaiting: boolean, paceClose: boolean): void {
    this.unsureAtTsMs = null;
    if (fewWaiting || !paceClose) {
      this.caughtUp = fewWaiting;
      return;
    }
    // Caught up already: a burst at the edge (what an owner that was caught up meets) is told by the pace alone; no call per second per shard in steady state.
    if (this.caughtUp) return;
    this.unsureAtTsMs = tsMs;
    const e = this.edge;
    if (e !== null) this.caughtUp = this.nearEdge(e, tsMs);
    if ((e !== null && Date.now() - e.askedMs < edgeAskMs) || this.edgeAsking) return;
    this.edgeAsking = true;
    const askedMs = Date.now();
    this.jsm.streams
      .info(streamOf(this.o.shard))
      .then((si) => {
        const last = Date.parse(si.state.last_ts);
        if (!Number.isFinite(last)) return;
        this.edge = { lastTsMs: last, askedMs };
        if (this.unsureAtTsMs !== null) this.caughtUp = this.nearEdge(this.edge, this.unsureAtTsMs);
      })
      // The log unreachable: caughtUp stays as it was (what this node holds is still the newest).
      .catch(() => undefined)
      .finally(() => (this.edgeAsking = false));
  }

  /** Whether a message stored at `tsMs` is within readyBehindMsMax of the stream's edge (assumed to have moved on since it was asked). */
  private nearEdge(e: { lastTsMs: number; askedMs: number }, tsMs: number): boolean {
    return e.lastTsMs + (Date.now() - e.askedMs) - tsMs <= this.o.readyBehindMsMax;
  }

  /** One message to its worker: applied (its points), redelivered, refused for good, or why not now. */
  private apply(m: JsMsg, prev: number): Promise<{ m: JsMsg; status: Applied }> {
    if (m.seq <= this.applied) return Promise.resolve({ m, status: 'redelivered' });
    let body: Uint8Array;
    try {
      body = openLogMessage(m.data, m.headers?.get(encodingHeader));
    } catch (err) {
      this.counters.messages_undecodable++;
      this.lastError = `message ${m.seq}: ${(err as Error).message}`;
      return this.queue.skip(this.o.shard, m.seq, prev).then((r) => ({ m, status: r }));
    }
    // With the stream's time for it: the store records it as the shard's mark (Store.streamMark).
    const ms = m.info.timestampNanos === undefined ? undefined : Math.floor(m.info.timestampNanos / 1e6);
    return this.queue.ingest(body, this.o.shard, { seq: m.seq, after: prev, ms }).then((r) => ({ m, status: r }));
  }
}

/**
 * Messages of every shard a node consumes, handed to the workers in bursts: each consumer's
 * messages trickle in one by one, and a worker commits what waits for it together (one synced
 * transaction), so messages held for a few ms and sent together cost one commit instead of one
 * each (measured: per-point CPU grew by half when the NATS servers were busy and messages came
 * apart). The order of one shard's messages is kept (a flush sends them in arrival order).
 */
export class ApplyQueue {
  /** Waiting: at most (consumers × max_ack_pending) messages: the server delivers no more unacknowledged. */
  private waiting: { body: Uint8Array | null; shard: number; stream: StreamPosition; done: (r: Awaited<ReturnType<ShardPool['ingestStream']>>) => void }[] = [];
  private timer: NodeJS.Timeout | null = null;
  /** Messages sent to the workers and not answered yet. */
  private inFlight = 0;
  readonly counters = { flushes: 0, messages: 0 };

  constructor(
    private readonly pool: ShardPool,
    private readonly o: { holdMs: number; burstMax: number; inFlightMax: number },
  ) {}

  ingest(body: Uint8Array, shard: number, stream: StreamPosition): ReturnType<ShardPool['ingestStream']> {
    return this.enqueue(body, shard, stream);
  }

  /** A message that never decodes: the stream moves past it, in order with the shard's others. */
  skip(shard: number, seq: number, after: number): Promise<'refused' | string> {
    return this.enqueue(null, shard, { seq, after }) as Promise<'refused' | string>;
  }

  private enqueue(body: Uint8Array | null, shard: number, stream: StreamPosition): ReturnType<ShardPool['ingestStream']> {
    return new Promise((done) => {
      this.waiting.push({ body, shard, stream, done });
      if (this.waiting.length >= this.o.burstMax) this.flush();
      else this.timer ??= setTimeout(() => this.flush(), this.o.holdMs);
    });
  }

  /**
   * Sends what waits, in arrival order, up to inFlightMax messages at the workers (beyond the
   * pool's bound on waiting requests a worker would answer worker_busy, and every consumer would
   * restart); the rest goes as answers come back.
   */
  private flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const n = Math.min(this.waiting.length, this.o.inFlightMax - this.inFlight);
    if (n <= 0) return;
    const batch = this.waiting.splice(0, n);
    this.counters.flushes++;
    this.counters.messages += batch.length;
    this.inFlight += batch.length;
    const answered = () => {
      this.inFlight--;
      if (this.waiting.length > 0 && this.timer === null) this.timer = setTimeout(() => this.flush(), 0);
    };
    for (const w of batch) {
      const sent = w.body === null ? this.pool.skipStream(w.shard, w.stream.seq, w.stream.after) : this.pool.ingestStream(w.body, w.shard, w.stream);
      void sent.then(
        (r) => (answered(), w.done(r)),
        (err: unknown) => (answered(), w.done(`not applied: ${(err as Error).message}`)),
      );
    }
  }
}

type Applied = { points: number; msg: RackSecondMessage } | 'redelivered' | 'refused' | string;

/** Each pull request of the continuous pull lasts this long (the client renews it). */
const consumeExpiresMs = 30_000;
/** The server's heartbeat inside a pull: two missed and the client pulls again (a busy 2-core box missed half a second's). */
const consumeHeartbeatMs = 5_000;
/**
 * With nothing arriving for this long, the consumer's own count is read (its lag, and whether
 * its pull is dead). One request per shard each time: an idle node's main cost (14–21 ms of
 * CPU a second for 16 shards, measured alone on this box).
 */
const idleCheckMs = 3_000;
/** How often an unsure consumer asks for its stream's newest message time (ShardConsumer.judge). */
const edgeAskMs = 1_000;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
