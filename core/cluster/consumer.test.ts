// A shard's consumer (core/cluster/consumer.ts) whose continuous pull stops delivering. The
// client renews a pull it knows is gone, but one lost with a NATS server was not always renewed:
// a node of the full suite stayed 42 messages behind for good after every NATS server was stopped
// for 20 s. The stall needs a pull to die with its server, which a process test cannot make
// happen at will; here the JetStream client is a fake whose pull never delivers while the
// consumer's own count says messages wait.

import { describe, expect, it, vi } from 'vitest';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { ShardPool } from '../pool.js';
import { ApplyQueue, ShardConsumer } from './consumer.js';

interface FakeMsg {
  seq: number;
  data: Uint8Array;
  headers: undefined;
  info: { deliverySequence: number; pending: number; timestampNanos?: number };
  ack(): void;
}

/** A pull that delivers `msgs` (none by default), then nothing until it is stopped. */
function deadPull(pulls: { stopped: number }, msgs: FakeMsg[] = []) {
  let wake: (() => void) | null = null;
  let done = false;
  return {
    stop() {
      if (done) return;
      done = true;
      pulls.stopped++;
      wake?.();
    },
    async *[Symbol.asyncIterator]() {
      for (const m of msgs) if (!done) yield m;
      while (!done) await new Promise<void>((r) => (wake = r));
    },
  };
}

function fakes(numPending: number, msgs: FakeMsg[] = [], later: FakeMsg[] = []) {
  const pulls = { started: 0, stopped: 0 };
  const info = { num_pending: numPending, num_ack_pending: 0, delivered: { stream_seq: 5, consumer_seq: 5 }, ack_floor: { stream_seq: 5 }, config: { inactive_threshold: 60_000 * 1e6 } };
  const consumer = {
    info: async () => info,
    consume: async () => {
      pulls.started++;
      return deadPull(pulls, pulls.started === 1 ? msgs : pulls.started === 2 ? later : []);
    },
  };
  const js = { consumers: { get: async () => consumer } } as unknown as JetStreamClient;
  const jsm = {
    streams: { info: async () => ({ state: { first_seq: 1 } }) },
    consumers: { info: async () => info, add: async () => info, delete: async () => true },
  } as unknown as JetStreamManager;
  // The worker refuses every message for good (counted; the shard moves past it): applied without a store.
  let stored = 5;
  const pool = {
    streamSeqs: async () => [stored],
    streamCreated: async () => null,
    streamMark: async () => null,
    ingestStream: async (_body: Uint8Array, _shard: number, stream: { seq: number; after: number }) => {
      if (stream.after !== stored) return `after ${stream.after}, applied ${stored}`;
      stored = stream.seq;
      return 'refused';
    },
  } as unknown as ShardPool;
  const queue = new ApplyQueue(pool, { holdMs: 10, burstMax: 64, inFlightMax: 64 });
  const c = new ShardConsumer({ node: 'n1', shard: 0, batch: 64, readyLagMax: 2, readyBehindMsMax: 5_000, backoffMinMs: 10, backoffMaxMs: 10, inactiveMs: 60_000 }, pool, queue, js, jsm);
  return { c, pulls };
}

describe('a shard consumer whose pull stops delivering', () => {
  it('reads afresh when messages wait on the stream and none arrives', async () => {
    const { c, pulls } = fakes(42);
    c.start(5);
    await new Promise((r) => setTimeout(r, 7_500));
    await c.stop();
    // Every 3 s without a message while 42 wait: the pull is dropped and a new one made.
    expect(pulls.started).toBeGreaterThanOrEqual(2);
    expect(c.counters.restarts).toBeGreaterThanOrEqual(1);
    expect(c.lastError).toMatch(/42 waiting, nothing arriving/);
    expect(c.caughtUp).toBe(false);
  }, 15_000);

  it('keeps its pull while the stream is idle (nothing waits)', async () => {
    const { c, pulls } = fakes(0);
    c.start(5);
    await new Promise((r) => setTimeout(r, 7_500));
    expect(pulls.started).toBe(1);
    expect(c.counters.restarts).toBe(0);
    expect(c.caughtUp).toBe(true);
    await c.stop();
    expect(pulls.stopped).toBe(1);
  }, 15_000);
});

function msg(seq: number, delivery: number, acks: number[]): FakeMsg {
  return { seq, data: new Uint8Array([1, 2, 3]), headers: undefined, info: { deliverySequence: delivery, pending: 0 }, ack: () => acks.push(seq) };
}

describe('a shard consumer and its deliveries', () => {
  it('stops at a delivery that never arrived: nothing past it is applied or acknowledged', async () => {
    const acks: number[] = [];
    // Deliveries 6 and 7 arrive; 8 is lost on the way; 9 (stream message 9) arrives.
    const { c } = fakes(0, [msg(6, 6, acks), msg(7, 7, acks), msg(9, 9, acks)]);
    c.start(5);
    await new Promise((r) => setTimeout(r, 300));
    await c.stop();
    expect(c.applied).toBe(7);
    expect(acks.filter((seq) => seq > 7)).toEqual([]);
    expect(c.counters.messages_refused).toBe(2);
    expect(c.counters.restarts).toBeGreaterThanOrEqual(1);
    expect(c.lastError).toMatch(/delivery 8 never arrived/);
  });

  it('regression: stops at a hole in the stream\'s sequences (messages aged out while it read: deliveries stay contiguous), reads afresh, and takes the same hole met again as lost, counted (before: applied past it silently)', async () => {
    const acks: number[] = [];
    const log = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      // Stream messages 8..19 aged out: delivery 8 is stream message 20. The read afresh meets it again (delivery 6 of a new pull).
      const { c, pulls } = fakes(0, [msg(6, 6, acks), msg(7, 7, acks), msg(20, 8, acks)], [msg(20, 6, acks), msg(21, 7, acks)]);
      c.start(5);
      await new Promise((r) => setTimeout(r, 400));
      await c.stop();
      expect(pulls.started).toBeGreaterThanOrEqual(2);
      expect(c.counters.restarts).toBeGreaterThanOrEqual(1);
      expect(c.lastError).toMatch(/stream messages 8\.\.19 are gone from the stream \(aged out while this node read it\): reading afresh from 8/);
      expect(c.counters.stream_gap_messages).toBe(12);
      expect(c.applied).toBe(21);
      expect(log.mock.calls.some((a) => String(a[0]).includes('stream messages 8..19 are gone from the stream and no owner\'s copy has them: lost, counted'))).toBe(true);
    } finally {
      log.mockRestore();
    }
  });

  it('a stop() right after start() returns on an idle stream', async () => {
    const { c, pulls } = fakes(0);
    c.start(5);
    const stopped = await Promise.race([c.stop().then(() => true), new Promise((r) => setTimeout(() => r(false), 2_000))]);
    expect(stopped).toBe(true);
    expect(pulls.stopped).toBe(pulls.started);
  });
});

describe('a shard consumer applying a burst', () => {
  /**
   * 100 messages after 5, stored `apartMs` apart in the stream an hour ago, applied 1 ms apart;
   * caughtUp as each is applied. `later` more messages follow them in the stream, the last stored
   * now (0: the 100th is the stream's last).
   */
  async function burst(apartMs: number, later = 0): Promise<boolean[]> {
    let stored = 5;
    const seen: boolean[] = [];
    const t0 = Date.now() - 3_600_000;
    const msgs: FakeMsg[] = Array.from({ length: 100 }, (_, i) => ({ seq: 6 + i, data: new Uint8Array([1]), headers: undefined, info: { deliverySequence: 6 + i, pending: 99 - i + later, timestampNanos: (t0 + i * apartMs) * 1e6 }, ack: () => undefined }));
    const info = { num_pending: 100 + later, num_ack_pending: 0, delivered: { stream_seq: 5, consumer_seq: 5 }, ack_floor: { stream_seq: 5 }, config: { inactive_threshold: 60_000 * 1e6 } };
    const consumer = { info: async () => info, consume: async () => deadPull({ stopped: 0 }, msgs) };
    const js = { consumers: { get: async () => consumer } } as unknown as JetStreamClient;
    const lastTs = new Date(later === 0 ? t0 + 99 * apartMs : Date.now()).toISOString();
    const jsm = { streams: { info: async () => ({ state: { first_seq: 1, last_seq: 105 + later, last_ts: lastTs } }) }, consumers: { info: async () => info, add: async () => info, delete: async () => true } } as unknown as JetStreamManager;
    let c: ShardConsumer | null = null;
    const pool = {
      streamSeqs: async () => [stored],
      streamCreated: async () => null,
      streamMark: async () => null,
      ingestStream: async (_b: Uint8Array, _s: number, stream: { seq: number; after: number }) => {
        await new Promise((r) => setTimeout(r, 1));
        seen.push(c!.caughtUp);
        stored = stream.seq;
        return 'refused';
      },
    } as unknown as ShardPool;
    c = new ShardConsumer({ node: 'n1', shard: 0, batch: 16, readyLagMax: 8, readyBehindMsMax: 5_000, backoffMinMs: 10, backoffMaxMs: 10, inactiveMs: 60_000 }, pool, new ApplyQueue(pool, { holdMs: 1, burstMax: 4, inFlightMax: 4 }), js, jsm);
    c.start(5);
    await new Promise((r) => setTimeout(r, 1_500));
    await c.stop();
    expect(seen).toHaveLength(100);
    return seen;
  }

  it('stays ready through a burst (messages stored 1 ms apart), however many wait (before: more than readyLagMax waiting made every owner not ready: 503 shard_unavailable)', async () => {
    // Stored an hour ago by the server's clock: this node's clock plays no part.
    const seen = await burst(1);
    // Not ready before its first acknowledgement (the consumer's count: 100 waiting), then ready throughout.
    const first = seen.indexOf(true);
    expect(first).toBeGreaterThan(0);
    expect(first).toBeLessThanOrEqual(20);
    expect(seen.slice(first).every((x) => x)).toBe(true);
  });

  it("regression: is not ready inside an old burst of a long backlog (a joiner reading a rack's replayed spool hours before the stream's edge; before: the burst's pace made it ready)", async () => {
    // 1,000 messages wait after the burst, at its pace 1 s of stream time: yet the stream's newest message is an hour later.
    const seen = await burst(1, 1_000);
    expect(seen.some((x) => x)).toBe(false);
  });

  it('is not ready while it applies a backlog stored over minutes until few wait (a joiner)', async () => {
    const seen = await burst(1_000);
    // Ready only once at most 8 wait, or 5 s of the stream's time: after message ~92 of 100.
    expect(seen.slice(0, 80).some((x) => x)).toBe(false);
  });
});

describe('a shard consumer whose stream was made again or cut back', () => {
  /** A stream whose info says `state` (and `created`), a pull delivering `msgs`, and a store that applied up to `stored`. */
  function remade(o: { stored: number; state: () => { first_seq: number; last_seq: number }; created: () => string; msgs: FakeMsg[]; known?: string | null; timeOf?: (seq: number) => number | null; noted?: { seq: number; ms: number } }) {
    let stored = o.stored;
    /** The creation time the store noted (Store.streamCreated): it outlives the consumer. */
    let known = o.known ?? null;
    /** The newest applied message the store noted (Store.streamMark): it outlives the consumer too. */
    let noted: { seq: number; ms: number } | null = o.noted ?? null;
    const rebased: number[] = [];
    const applied: number[] = [];
    const info = { num_pending: 0, num_ack_pending: 0, delivered: { stream_seq: 0, consumer_seq: 0 }, ack_floor: { stream_seq: 0 } };
    let pulls = 0;
    const consumer = { info: async () => info, consume: async () => deadPull({ stopped: 0 }, pulls++ === 0 ? o.msgs : []) };
    const js = { consumers: { get: async () => consumer } } as unknown as JetStreamClient;
    const jsm = {
      streams: {
        info: async () => ({ created: o.created(), state: o.state() }),
        // The stream's message at `seq` (its time, ms), as JetStream's message get answers.
        getMessage: async (_stream: string, q: { seq: number }) => {
          const ms = o.timeOf?.(q.seq) ?? null;
          if (ms === null) throw new Error('no message found');
          return { seq: q.seq, time: new Date(ms) };
        },
      },
      consumers: { info: async () => null, add: async () => info, delete: async () => true },
    } as unknown as JetStreamManager;
    const pool = {
      streamSeqs: async () => [stored],
      streamCreated: async (_shard: number, created?: string) => {
        const before = known;
        if (created !== undefined) known = created;
        return before;
      },
      streamMark: async () => noted,
      rebaseStream: async (_shard: number, seq: number) => {
        rebased.push(seq);
        stored = seq;
        noted = null; // as Store.rebaseStream forgets it
      },
      ingestStream: async (_body: Uint8Array, _shard: number, stream: { seq: number; after: number; ms?: number }) => {
        if (stream.after !== stored) return `after ${stream.after}, applied ${stored}`;
        stored = stream.seq;
        // As Store.ingestMany records the mark with the applied sequence.
        if (stream.ms !== undefined) noted = { seq: stream.seq, ms: stream.ms };
        applied.push(stream.seq);
        return 'refused';
      },
    } as unknown as ShardPool;
    const queue = new ApplyQueue(pool, { holdMs: 10, burstMax: 64, inFlightMax: 64 });
    const c = new ShardConsumer({ node: 'n1', shard: 0, batch: 64, readyLagMax: 2, readyBehindMsMax: 5_000, backoffMinMs: 10, backoffMaxMs: 10, inactiveMs: 60_000 }, pool, queue, js, jsm);
    return { c, rebased, applied, known: () => known, noted: () => noted };
  }

  it('reads a stream that ends before what it applied again from its first message (before: its messages were skipped as redelivered, on every owner)', async () => {
    const acks: number[] = [];
    const errors: string[] = [];
    const spy = vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void errors.push(a.join(' ')));
    try {
      // This node applied up to 50; the stream, made again, holds 1..3.
      const r = remade({ stored: 50, state: () => ({ first_seq: 1, last_seq: 3 }), created: () => '2026-12-03T10:00:00Z', msgs: [msg(1, 1, acks), msg(2, 2, acks), msg(3, 3, acks)] });
      r.c.start(50);
      await new Promise((res) => setTimeout(res, 300));
      await r.c.stop();
      expect(r.rebased).toEqual([0]);
      expect(r.applied).toEqual([1, 2, 3]);
      expect([r.c.counters.stream_resets, r.c.counters.messages_redelivered, r.c.applied]).toEqual([1, 0, 3]);
      expect(errors.some((e) => /stream APM_0 was cut back to 3 after this node applied up to 50: reading it again from 1/.test(e))).toBe(true);
    } finally {
      spy.mockRestore();
    }
  });

  it('regression: reads a stream again from its first message when it lost its tail and grew past what was applied before the consumer reopened (the message under the applied sequence is another; before: the new messages up to it were skipped as redelivered)', async () => {
    const t0 = Date.parse('2026-12-05T03:00:00Z');
    const timed = (seq: number, ms: number): FakeMsg => ({ seq, data: new Uint8Array([1]), headers: undefined, info: { deliverySequence: seq, pending: 0, timestampNanos: ms * 1e6 }, ack: () => undefined });
    const errors: string[] = [];
    const spy = vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void errors.push(a.join(' ')));
    try {
      // Messages 1..3 applied; then NATS loses 2..3, and racks publish 2..5 anew (later times) before the consumer reopens.
      let state = { first_seq: 1, last_seq: 3 };
      let lost = false;
      const r = remade({ stored: 0, state: () => state, created: () => '2026-12-05T02:00:00Z', msgs: [timed(1, t0), timed(2, t0 + 1000), timed(3, t0 + 2000)], timeOf: (seq) => (seq > 3 ? null : lost && seq >= 2 ? t0 + 60_000 + seq : t0 + (seq - 1) * 1000) });
      r.c.start(0);
      await new Promise((res) => setTimeout(res, 200));
      await r.c.stop();
      expect([r.applied, r.c.applied]).toEqual([[1, 2, 3], 3]);
      // Reopened with the stream unchanged: nothing read again.
      r.c.start(3);
      await new Promise((res) => setTimeout(res, 100));
      await r.c.stop();
      expect(r.rebased).toEqual([]);
      state = { first_seq: 1, last_seq: 5 };
      lost = true;
      r.c.start(3);
      await new Promise((res) => setTimeout(res, 100));
      await r.c.stop();
      expect(r.rebased).toEqual([0]);
      expect(r.c.counters.stream_resets).toBe(1);
      expect(errors.some((e) => /stream APM_0 was cut back and grown again \(its message 3 is not the one this node applied\) after this node applied up to 3: reading it again from 1/.test(e))).toBe(true);
      // The store forgot the mark with the rebase.
      expect(r.noted()).toBeNull();
      // The same after a restart of the node together with NATS (a new consumer): by the mark its store noted.
      const after = remade({ stored: 3, state: () => state, created: () => '2026-12-05T02:00:00Z', msgs: [], timeOf: (seq) => (seq > 5 ? null : t0 + 60_000 + seq), noted: { seq: 3, ms: t0 + 2000 } });
      after.c.start(3);
      await new Promise((res) => setTimeout(res, 100));
      await after.c.stop();
      expect(after.rebased).toEqual([0]);
      // Unchanged under the mark: nothing read again.
      const same = remade({ stored: 3, state: () => state, created: () => '2026-12-05T02:00:00Z', msgs: [], timeOf: (seq) => t0 + (seq - 1) * 1000, noted: { seq: 3, ms: t0 + 2000 } });
      same.c.start(3);
      await new Promise((res) => setTimeout(res, 100));
      await same.c.stop();
      expect(same.rebased).toEqual([]);
    } finally {
      spy.mockRestore();
    }
  });

  it('regression: keeps its mark through a redelivered message (skipped: it may be another under a reused sequence), so the reopen still sees the stream changed (before: the skipped message became the mark, and the evidence was gone)', async () => {
    const t0 = Date.parse('2026-12-05T03:00:00Z');
    const spy = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      let lost = false;
      // Sequence 3 delivered again while the consumer reads on, under a new time (the tail lost and grown back).
      const again: FakeMsg = { seq: 3, data: new Uint8Array([1]), headers: undefined, info: { deliverySequence: 1, pending: 0, timestampNanos: (t0 + 60_000) * 1e6 }, ack: () => undefined };
      const r = remade({ stored: 3, state: () => ({ first_seq: 1, last_seq: 3 }), created: () => '2026-12-05T02:00:00Z', msgs: [again], timeOf: (seq) => (lost ? t0 + 60_000 : t0 + (seq - 1) * 1000), noted: { seq: 3, ms: t0 + 2000 } });
      r.c.start(3);
      await new Promise((res) => setTimeout(res, 200));
      await r.c.stop();
      expect([r.rebased, r.c.counters.messages_redelivered]).toEqual([[], 1]);
      lost = true;
      r.c.start(3);
      await new Promise((res) => setTimeout(res, 100));
      await r.c.stop();
      expect(r.rebased).toEqual([0]);
    } finally {
      spy.mockRestore();
    }
  });

  it('reads a stream made again while it read it from its first message, even when it already holds more messages', async () => {
    let created = '2026-12-03T10:00:00Z';
    const spy = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const r = remade({ stored: 5, state: () => ({ first_seq: 1, last_seq: 9 }), created: () => created, msgs: [] });
      r.c.start(5);
      await new Promise((res) => setTimeout(res, 100));
      expect(r.rebased).toEqual([]);
      await r.c.stop();
      created = '2026-12-03T11:00:00Z';
      r.c.start(5);
      await new Promise((res) => setTimeout(res, 100));
      await r.c.stop();
      expect(r.rebased).toEqual([0]);
      expect(r.c.counters.stream_resets).toBe(1);
    } finally {
      spy.mockRestore();
    }
  });

  it('sees a stream made again while its node was down, by the creation time its store noted (before: a new consumer knew none, and a stream grown past what was applied looked unchanged)', async () => {
    const spy = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      // Before the restart this node's store noted the stream's creation time; the stream was made
      // again since and holds 9 messages, more than the 5 applied.
      const r = remade({ stored: 5, state: () => ({ first_seq: 1, last_seq: 9 }), created: () => '2026-12-03T11:00:00Z', known: '2026-12-03T10:00:00Z', msgs: [] });
      r.c.start(5);
      await new Promise((res) => setTimeout(res, 100));
      await r.c.stop();
      expect(r.rebased).toEqual([0]);
      expect(r.known()).toBe('2026-12-03T11:00:00Z');
      // A first read notes the time, and rebases nothing.
      const first = remade({ stored: 5, state: () => ({ first_seq: 1, last_seq: 9 }), created: () => '2026-12-03T11:00:00Z', msgs: [] });
      first.c.start(5);
      await new Promise((res) => setTimeout(res, 100));
      await first.c.stop();
      expect([first.rebased, first.known()]).toEqual([[], '2026-12-03T11:00:00Z']);
    } finally {
      spy.mockRestore();
    }
  });
});

describe('regression: a shard whose copy did not complete (applied −1)', () => {
  it('notes where its stream starts, so owners all at −1 can tell which reads on (before: 0, and each waited for the others for good)', async () => {
    const jsm = { streams: { info: async () => ({ state: { first_seq: 9000 } }) }, consumers: { info: async () => null, add: async () => null, delete: async () => true } } as unknown as JetStreamManager;
    const pool = { streamSeqs: async () => [-1], streamCreated: async () => null, streamMark: async () => null } as unknown as ShardPool;
    const queue = new ApplyQueue(pool, { holdMs: 10, burstMax: 64, inFlightMax: 64 });
    const c = new ShardConsumer({ node: 'n1', shard: 0, batch: 64, readyLagMax: 2, readyBehindMsMax: 5_000, backoffMinMs: 10, backoffMaxMs: 10, inactiveMs: 60_000 }, pool, queue, {} as JetStreamClient, jsm);
    c.start(-1);
    await vi.waitFor(() => expect(c.state).toBe('behind_stream'), { timeout: 2_000 });
    await c.stop();
    expect(c.streamFirst).toBe(9000);
    expect(c.lastError).toMatch(/copy of this shard did not complete/);
  });
});
