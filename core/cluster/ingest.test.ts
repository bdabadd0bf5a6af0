// A cluster node's HTTP ingest publishes to the shards' streams; what it acknowledged it keeps
// for a while and publishes again when its connection to NATS comes back (core/cluster/ingest.ts).
import type { JetStreamClient } from '@nats-io/jetstream';
import { describe, expect, it } from 'vitest';
import { KindCode } from '../../schema/codec.js';
import { rackSecondBody } from '../../schema/section.js';
import { buildColumns } from '../../schema/testdata.js';
import { LogIngest } from './ingest.js';

const S = 4;
const t0 = 1_790_000_040;

/** A JetStream client that records what is published, failing while `down`. */
function fakeStreams() {
  const published: string[] = [];
  const js = {
    down: false,
    publish: async (_subject: string, _data: Uint8Array, o: { msgID: string }) => {
      if (js.down) throw new Error('no responders');
      published.push(o.msgID);
      return { seq: published.length, duplicate: false, stream: 'x' };
    },
  };
  return { js, published };
}

function body(seq: number): Uint8Array {
  const names = ['a.1', 'b.2', 'c.3', 'd.4', 'e.5', 'f.6'];
  return rackSecondBody({ rack: 'r1', session: 9, seq, second: t0 + seq, late: false, shards: S, servers: [{ server: 's1', blocks: [buildColumns(names.map((name) => ({ name, kind: KindCode.Gauge, value: seq })), [])] }], rollup: buildColumns([], [], names) });
}

describe('LogIngest', () => {
  it('regression: publishes again what it acknowledged within the keep time before the connection was lost (before: a crash of every NATS server lost seconds acknowledged with 204, which the rack no longer had)', async () => {
    let now = 1_000_000;
    const { js, published } = fakeStreams();
    const log = new LogIngest(js as unknown as JetStreamClient, S, 1000, { keepAckedMs: 150_000, keptBytesMax: 1 << 20 }, () => now);
    expect((await log.ingest(body(1))).status).toBe(204);
    now += 100_000;
    expect((await log.ingest(body(2))).status).toBe(204);
    const first = [...published];
    expect(first.length).toBeGreaterThan(2);
    // Lost 100 s after body 2: body 1 (200 s before) is past the keep time, body 2 is not.
    now += 100_000;
    log.connectionLost();
    now += 30_000;
    await log.connectionBack();
    const again = published.slice(first.length);
    expect(again.length).toBeGreaterThan(0);
    expect(again.every((id) => id.startsWith('r1/0/9/2/'))).toBe(true);
    expect(new Set(again)).toEqual(new Set(first.filter((id) => id.startsWith('r1/0/9/2/'))));
    expect(log.counters).toMatchObject({ reconnects: 1, republished: 1, republish_failures: 0 });
    expect(log.keptBodies).toBe(1);
  });

  it('keeps a body whose re-publish failed for the next reconnect, counted, and bounds what it keeps in bytes', async () => {
    let now = 5_000_000;
    const { js, published } = fakeStreams();
    const log = new LogIngest(js as unknown as JetStreamClient, S, 1000, { keepAckedMs: 150_000, keptBytesMax: 1 << 20 }, () => now);
    await log.ingest(body(1));
    log.connectionLost();
    js.down = true;
    await log.connectionBack();
    expect(log.counters).toMatchObject({ republished: 0, republish_failures: 1 });
    js.down = false;
    const before = published.length;
    await log.connectionBack();
    expect(published.length).toBeGreaterThan(before);
    expect(log.counters.republished).toBe(1);
    // A byte bound of one body: the older is forgotten, counted.
    now += 1000;
    const tight = new LogIngest(js as unknown as JetStreamClient, S, 1000, { keepAckedMs: 150_000, keptBytesMax: 1 }, () => now);
    await tight.ingest(body(3));
    await tight.ingest(body(4));
    expect(tight.keptBodies).toBe(0);
    expect(tight.counters.kept_evicted).toBe(2);
  });

  it('regression: refuses a second past the stores\' retention or too far ahead, 400 as a single core does, publishing nothing (before: acknowledged with 204, then skipped by every consumer for good)', async () => {
    const { js, published } = fakeStreams();
    let now = (t0 + 100) * 1000;
    const log = new LogIngest(js as unknown as JetStreamClient, S, 1000, { keepAckedMs: 150_000, keptBytesMax: 1 << 20 }, () => now);
    log.accepts = { retentionSeconds: 3600, futureSecondsMax: 600, blockSeconds: 60 };
    expect((await log.ingest(body(1))).status).toBe(204);
    const stored = published.length;
    // Two hours on: body 2's second is past the retention.
    now += 7200 * 1000;
    expect(await log.ingest(body(2))).toMatchObject({ status: 400, reason: 'past_retention' });
    // Back before it: body 3 is 20 minutes ahead of this node's clock.
    now = (t0 - 1200) * 1000;
    expect(await log.ingest(body(3))).toMatchObject({ status: 400, reason: 'future' });
    expect(published.length).toBe(stored);
    expect(log.refused).toEqual({ past_retention: 1, future: 1 });
  });
});
