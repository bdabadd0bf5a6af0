// A shard's consumer (core/cluster/consumer.ts) whose continuous pull stops delivering. The
// client renews a pull it knows is gone, but one lost with a NATS server was not always renewed:
// a node of the full suite stayed 42 messages behind for good after every NATS server was stopped
// for 20 s. The stall needs a pull to die with its server, which a process test cannot make
// happen at will; here the JetStream client is a fake whose pull never delivers while the
// consumer's own count says messages wait.

import { describe, expect, it } from 'vitest';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { ShardPool } from '../pool.js';
import { ApplyQueue, ShardConsumer } from './consumer.js';

/** A pull that delivers nothing until it is stopped. */
function deadPull(pulls: { stopped: number }) {
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
      while (!done) await new Promise<void>((r) => (wake = r));
    },
  };
}

function fakes(numPending: number) {
  const pulls = { started: 0, stopped: 0 };
  const info = { num_pending: numPending, num_ack_pending: 0, delivered: { stream_seq: 5 }, ack_floor: { stream_seq: 5 } };
  const consumer = {
    info: async () => info,
    consume: async () => {
      pulls.started++;
      return deadPull(pulls);
    },
  };
  const js = { consumers: { get: async () => consumer } } as unknown as JetStreamClient;
  const jsm = {
    streams: { info: async () => ({ state: { first_seq: 1 } }) },
    consumers: { info: async () => info, add: async () => info, delete: async () => true },
  } as unknown as JetStreamManager;
  const pool = { streamSeqs: async () => [5] } as unknown as ShardPool;
  const queue = new ApplyQueue(pool, { holdMs: 10, burstMax: 64, inFlightMax: 64 });
  const c = new ShardConsumer({ node: 'n1', shard: 0, batch: 64, readyLagMax: 2, backoffMinMs: 10, backoffMaxMs: 10 }, pool, queue, js, jsm);
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
