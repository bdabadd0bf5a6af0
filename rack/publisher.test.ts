import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PermissionViolationError } from '@nats-io/transport-node';
import { emptyColumns, KindCode } from '../schema/codec.js';
import type { LogMessage } from '../schema/log.js';
import { SectionCutter } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { classifyPublishError, Publisher, type LogAck, type LogTarget, type PublisherOptions } from './publisher.js';
import { recut } from './recut.js';
import { Spool } from './spool.js';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** Streams as JetStream keeps them: per subject, Msg-Ids in the order stored, each once. */
class FakeStreams implements LogTarget {
  readonly stored = new Map<string, string[]>();
  private readonly ids = new Set<string>();
  inFlight = 0;
  inFlightMax = 0;
  published = 0;
  /** An error to answer instead of an acknowledgement (null: acknowledge). */
  refuse: (m: LogMessage) => Error | null = () => null;
  /** While set, answers wait until release() (to hold attempts in flight). */
  private held: (() => void)[] | null = null;

  publish(m: LogMessage): Promise<LogAck> {
    this.published++;
    this.inFlight++;
    this.inFlightMax = Math.max(this.inFlightMax, this.inFlight);
    return new Promise((resolve, reject) => {
      const answer = () => {
        this.inFlight--;
        const err = this.refuse(m);
        if (err !== null) return reject(err);
        const duplicate = this.ids.has(m.msgId);
        if (!duplicate) {
          this.ids.add(m.msgId);
          this.stored.set(m.subject, [...(this.stored.get(m.subject) ?? []), m.msgId]);
        }
        resolve({ stream: `APM_${m.shard}`, seq: this.ids.size, duplicate });
      };
      if (this.held !== null) this.held.push(answer);
      else setImmediate(answer);
    });
  }

  hold(): void {
    this.held = [];
  }

  /** Attempts from now on are answered at once again; those held wait for release(). */
  stopHolding(): void {
    this.heldBefore = this.held;
    this.held = null;
  }
  private heldBefore: (() => void)[] | null = null;

  /** Answers the held attempts (with `err` instead, when given). */
  release(err?: Error): void {
    const held = [...(this.held ?? []), ...(this.heldBefore ?? [])];
    this.held = null;
    this.heldBefore = null;
    const refuse = this.refuse;
    if (err !== undefined) this.refuse = () => err;
    for (const a of held) a();
    this.refuse = refuse;
  }

  /** A crash of every NATS server that loses what was not on disk: here, everything. */
  loseEverything(): void {
    this.stored.clear();
    this.ids.clear();
  }
}

async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const cutter = new SectionCutter(1 << 16);

/** A rack second with 16 gauges of one server, cut for `shards`. */
function body(spool: Spool, seq: number, shards: number): Uint8Array {
  const points = Array.from({ length: 16 }, (_, i) => ({ name: `m.${i}`, kind: KindCode.Gauge as const, value: seq * 100 + i }));
  return cutter.body({ rack: 'r1', session: spool.session, seq, second: 1_790_000_000 + seq, late: false, shards, servers: [{ server: 's1', blocks: [buildColumns(points, [])] }], rollup: emptyColumns() });
}

interface Setup {
  spool: Spool;
  streams: FakeStreams;
  pub: Publisher;
  logs: string[];
  clock: { ms: number };
  /** Spools `n` bodies cut for `shards` and tells the publisher. */
  add: (n: number, shards?: number) => Promise<number[]>;
}

async function setup(opts: Partial<PublisherOptions> = {}): Promise<Setup> {
  const spool = new Spool(mkdtempSync(join(tmpdir(), 'apm-pub-')), { bytesMax: 1 << 26, reserveBytes: 0, memoryBytesMax: 1 << 26 });
  cleanup.push(() => spool.close());
  const logs: string[] = [];
  // Real time plus what a test adds (backoff timers run on real time).
  const clock = { ms: 0 };
  const pub = new Publisher(spool, {
    concurrency: 3,
    bodiesOpenMax: 4,
    publishTimeoutMs: 1000,
    backoffMinMs: 2,
    backoffMaxMs: 10,
    keepAckedMs: 30_000,
    keepAckedBytesMax: 1 << 20,
    recut: async (seq, b, shards) => {
      const bytes = recut(cutter, b, shards, { sectionBytesMax: 1 << 30, bodyBytesMax: 1 << 30, metricBytesMax: 1 << 30 }, () => ({ session: 1, seq: 1e6 }))[0]!.bytes;
      await spool.replace(seq, bytes);
      return bytes;
    },
    log: (line) => logs.push(line),
    nowMs: () => Date.now() + clock.ms,
    ...opts,
  });
  cleanup.push(() => pub.stop(0));
  const streams = new FakeStreams();
  const add = async (n: number, shards = 4) => {
    const seqs: number[] = [];
    for (let i = 0; i < n; i++) {
      const seq = spool.takeSeq();
      await spool.put(seq, body(spool, seq, shards));
      pub.enqueued(seq, 1_790_000_000 + seq, shards);
      seqs.push(seq);
    }
    return seqs;
  };
  return { spool, streams, pub, logs, clock, add };
}

/** Every stream holds the bodies' messages in seq order, each once. */
function expectInOrder(streams: FakeStreams, seqs: number[]): void {
  expect([...streams.stored.keys()].sort()).toEqual(['apm.shard.0', 'apm.shard.1', 'apm.shard.2', 'apm.shard.3']);
  for (const [subject, ids] of streams.stored) {
    const shard = subject.split('.')[2];
    expect(ids, subject).toEqual(seqs.map((q) => ids.find((id) => id.endsWith(`/${q}/${shard}`))).filter((id) => id !== undefined));
    expect(new Set(ids).size).toBe(ids.length);
  }
}

describe('Publisher', () => {
  it('publishes every section of every spooled body in spool order per stream, within the concurrency bound, and removes a body once all its messages are acknowledged', async () => {
    const { spool, streams, pub, add } = await setup();
    pub.connected = true;
    const seqs = await add(10);
    await pub.begin(streams, 4);
    await until(() => spool.heldBatches === 0, 'an empty spool');
    expectInOrder(streams, seqs);
    for (const ids of streams.stored.values()) expect(ids.length).toBe(10);
    expect(streams.inFlightMax).toBeLessThanOrEqual(3);
    expect(pub.counters.batches_acked).toBe(10);
    expect(pub.counters.messages_acked).toBe(40);
    expect(pub.counters.bytes_raw_acked).toBeGreaterThan(pub.counters.bytes_compressed_acked);
    expect(pub.ackedSecond).toBe(1_790_000_010);
  });

  it('keeps a body spooled while one of its messages is refused (permission), counts and logs it clearly, lets the other streams drain, and publishes it once allowed', async () => {
    const { spool, streams, pub, logs, add } = await setup();
    pub.connected = true;
    let refusing = true;
    streams.refuse = (m) => (refusing && m.shard === 2 ? new PermissionViolationError(`Permissions Violation for Publish to "${m.subject}"`, 'publish', m.subject) : null);
    const seqs = await add(3);
    await pub.begin(streams, 4);
    await until(() => pub.failures.permission >= 5, 'retried permission failures');
    // Only stream 2 backs off: the others take every body's message meanwhile.
    await until(() => [0, 1, 3].every((k) => streams.stored.get(`apm.shard.${k}`)?.length === 3), 'the other streams drained');
    // Shard 2's first message is refused: nothing leaves the spool, and later bodies never pass it in stream 2.
    expect(spool.heldBatches).toBe(3);
    expect(pub.streamsFailing).toBe(1);
    expect(streams.stored.get('apm.shard.2')).toBeUndefined();
    expect(pub.down).toBe(true);
    expect(logs.filter((l) => l.includes('refuses'))).toHaveLength(1);
    expect(logs.find((l) => l.includes('refuses'))).toMatch(/publishing to apm\.shard\.2 .*allow the rack's NATS user to publish to apm\.shard\.>.*stay spooled/);
    refusing = false;
    await until(() => spool.heldBatches === 0, 'an empty spool');
    expectInOrder(streams, seqs);
    expect(pub.down).toBe(false);
    expect(logs.filter((l) => l.includes('every stream acknowledges publishes again (after permission failures)'))).toHaveLength(1);
  });

  it('regression: drops a message refused as itself 5 times in a row (over the max payload), counted and logged, and the rest drains; before, it held its stream and every body behind it for good', async () => {
    const { spool, streams, pub, logs, add } = await setup();
    pub.connected = true;
    const poison = new Set<string>();
    streams.refuse = (m) => (poison.has(m.msgId) ? new Error('MAX_PAYLOAD_EXCEEDED') : null);
    const seqs = await add(6);
    poison.add(`r1/0/${spool.session}/${seqs[1]}/2`);
    await pub.begin(streams, 4);
    await until(() => spool.heldBatches === 0, 'an empty spool');
    expect(pub.counters.messages_dropped_refused).toBe(1);
    expect(logs.some((l) => /apm\.shard\.2 message .* refused 5 times \(MAX_PAYLOAD_EXCEEDED\); dropped/.test(l))).toBe(true);
    expect(streams.stored.get('apm.shard.2')!.length).toBe(5);
    // A refusal that waiting changes (permission, above) is never dropped.
    expect(pub.counters.messages_acked).toBe(23);
  });

  it('counts a duplicate acknowledgement as acknowledged', async () => {
    const { spool, streams, pub, add } = await setup();
    pub.connected = true;
    const [seq] = await add(1);
    // The stream already holds shard 1's message (an earlier attempt whose answer was lost).
    await streams.publish({ shard: 1, subject: 'apm.shard.1', msgId: `r1/0/${spool.session}/${seq}/1`, data: new Uint8Array(1) });
    await pub.begin(streams, 4);
    await until(() => spool.heldBatches === 0, 'an empty spool');
    expect([pub.counters.messages_duplicate, pub.counters.batches_acked]).toEqual([1, 1]);
  });

  it('re-publishes acknowledged bodies kept for keepAckedMs after a reconnect (a NATS crash may have lost them); older ones are not', async () => {
    const { spool, streams, pub, clock, add, logs } = await setup();
    pub.connected = true;
    await pub.begin(streams, 4);
    const old = await add(2);
    await until(() => spool.heldBatches === 0, 'an empty spool');
    clock.ms += 20_000;
    const recent = await add(3);
    await until(() => spool.heldBatches === 0, 'an empty spool');
    expect(pub.keptBatches).toBe(5);
    // The connection is lost 11 s later: the first two were acknowledged 31 s before (past
    // keepAckedMs), the last three 11 s before. It comes back only 60 s later (every NATS server
    // restarting): the last three are still re-published, the time counted to the loss.
    clock.ms += 11_000;
    pub.connectionLost('test');
    streams.loseEverything();
    clock.ms += 60_000;
    pub.connectionBack('test');
    await until(() => pub.bodiesOpen === 0, 'the re-publish');
    expect([pub.counters.batches_republished, pub.counters.messages_republished, pub.counters.reconnects]).toEqual([3, 12, 1]);
    expectInOrder(streams, recent);
    expect([...streams.stored.values()].flat().some((id) => old.some((q) => id.includes(`/${q}/`)))).toBe(false);
    expect(logs.some((l) => /re-publishing 3 bodies/.test(l))).toBe(true);
    // Re-published bodies are kept again, from their new acknowledgement.
    expect(pub.keptBatches).toBe(3);
  });

  it('bounds the kept bodies by bytes, forgetting the oldest (counted)', async () => {
    const { spool, streams, pub, add } = await setup({ keepAckedBytesMax: 1 });
    pub.connected = true;
    await pub.begin(streams, 4);
    await add(3);
    await until(() => spool.heldBatches === 0, 'an empty spool');
    expect([pub.keptBatches, pub.counters.kept_evicted]).toEqual([0, 3]);
  });

  it('starts open bodies over after a reconnect and ignores answers to attempts of the old connection', async () => {
    const { spool, streams, pub, add } = await setup({ keepAckedMs: 0 });
    pub.connected = true;
    const seqs = await add(1);
    streams.hold();
    await pub.begin(streams, 4);
    await until(() => streams.inFlight === 3, 'three attempts in flight');
    streams.stopHolding();
    pub.connectionLost('test');
    pub.connectionBack('test');
    await until(() => spool.heldBatches === 0, 'an empty spool');
    // The old attempts now fail (their connection is gone): not counted, nothing retried.
    streams.release(new Error('timeout'));
    await new Promise((r) => setTimeout(r, 20));
    expect(pub.counters.publish_failed).toBe(0);
    expectInOrder(streams, seqs);
    expect(pub.counters.batches_acked).toBe(1);
  });

  it('re-cuts a body spooled for another shard count before publishing it', async () => {
    const { spool, streams, pub, add, logs } = await setup();
    pub.connected = true;
    const seqs = await add(2, 64);
    await pub.begin(streams, 4);
    await until(() => spool.heldBatches === 0, 'an empty spool');
    expect(spool.shards).toBe(4);
    expect(pub.counters.batches_recut).toBe(2);
    expectInOrder(streams, seqs);
    expect(logs.some((l) => l.includes('the cluster has 4 shards (KV apm-cluster), this rack cut for 64'))).toBe(true);
  });

  it('drops a spooled body it cannot read, counted and logged once', async () => {
    const { spool, streams, pub, logs } = await setup();
    pub.connected = true;
    await spool.put(spool.takeSeq(), new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
    await pub.begin(streams, 4);
    await until(() => spool.heldBatches === 0, 'an empty spool');
    expect(pub.counters.batches_unreadable).toBe(1);
    expect(logs.filter((l) => l.includes('cannot be read'))).toHaveLength(1);
  });

  it('publishes nothing while disconnected', async () => {
    const { spool, streams, pub, add } = await setup();
    await pub.begin(streams, 4);
    await add(2);
    await new Promise((r) => setTimeout(r, 20));
    expect([streams.published, spool.heldBatches]).toEqual([0, 2]);
    pub.connectionBack('test');
    await until(() => spool.heldBatches === 0, 'an empty spool');
  });

  it('classifies failures', () => {
    const f = (err: unknown, want: string) => expect(classifyPublishError(err)).toBe(want);
    // nats.js wraps a permission error in a RequestError
    f(new Error('x', { cause: new PermissionViolationError('Permissions Violation for Publish to "apm.x"', 'publish', 'apm.x') }), 'permission');
    // no stream listens on the subject
    f(Object.assign(new Error('jetstream is not enabled'), { name: 'JetStreamNotEnabled' }), 'no_stream');
    f(Object.assign(new Error('timeout'), { name: 'TimeoutError' }), 'timeout');
    f(Object.assign(new Error('maximum bytes exceeded'), { name: 'JetStreamApiError' }), 'refused');
    f('weird', 'other');
  });
});
