// A cluster node applies each shard's stream strictly in order and records the applied
// sequence with the data (issue 13): these tests drive the store as a consumer would.

import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeFrame, KindCode } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';
import { rackSecondBody, sectionAt } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { Store, type RequestHeader, type SectionIn, type StoreOptions } from './store.js';

const t0 = 1_790_000_040;
const S = 1;
const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

function options(dir: string): StoreOptions {
  return { dir, shardCount: S, shards: [0], retentionSeconds: 100 * 365 * 86400, blockSeconds: 60, mapBytes: 1 << 30, flushGraceMs: 0, headBytesMax: 1 << 30, metricsMax: 10_000, metricsPerServerMax: 10_000, serversMax: 10_000, racksMax: 100, sliceMs: 20, diskBytesMax: 0, diskReserveBytes: 0 };
}

let rackSeq = 1;
/** Message `seq` of shard 0's stream, following `after`: one rack second with one gauge point of value `v`. */
function message(seq: number, after: number, v: number): { h: RequestHeader; sections: SectionIn[] } {
  const h = { rack: 'r1', session: 3, seq: rackSeq++, second: t0 + seq, late: false };
  const body = rackSecondBody({ ...h, shards: S, servers: [{ server: 's1', blocks: [buildColumns([{ name: 'm.gauge', kind: KindCode.Gauge, value: v }], [])] }], rollup: buildColumns([], [], []) });
  const r = decodeFrame(body, batchBytesMax);
  if (!r.ok || r.msg.type !== 'rackSecond') throw new Error('not a RackSecond');
  const m = r.msg;
  return { h: { ...h, stream: { seq, after } }, sections: [{ shard: 0, bytes: sectionAt(m, 0).slice() }] };
}

/** A temporary data directory, removed after the tests. */
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'apm-stream-'));
  dirs.push(dir);
  return dir;
}

describe('stream order (cluster consumer)', () => {
  it('applies in order, records the sequence durably, refuses a gap, and stores a redelivery once', async () => {
    const dir = tempDir();
    let store = new Store(options(dir));
    const m1 = message(1, 0, 1);
    const m2 = message(2, 1, 2);
    const m4 = message(4, 2, 4); // sequence 3 aged out of the stream or was deleted: the chain says 4 follows 2
    expect(store.ingestMany([m1, m2]).map((r) => r.status)).toEqual([204, 204]);
    expect(store.streamSeqs()[0]).toBe(2);
    // A message that does not follow the applied sequence is refused (the consumer restarts), not stored.
    const gap = store.ingestMany([message(6, 5, 6)])[0]!;
    expect(gap).toMatchObject({ status: 409, reason: 'stream_gap', applied: 2 });
    // Redelivered 2 (a crash before the ack): acknowledged, not stored twice.
    expect(store.ingestMany([m2])[0]).toMatchObject({ status: 204, points: 0, duplicates: 1 });
    expect(store.ingestMany([m4])[0]).toMatchObject({ status: 204, points: 1 });
    expect(store.counters.points_ingested).toBe(3);
    await store.close();
    // The sequence was committed with the data: a restart continues after 4.
    store = new Store(options(dir));
    expect(store.streamSeqs()[0]).toBe(4);
    expect(store.ingestMany([m4])[0]).toMatchObject({ status: 204, duplicates: 1 });
    await store.close();
  });

  it('notes the stream\'s creation time durably, beside the applied sequence (a restarted node compares it with the stream\'s)', async () => {
    const dir = tempDir();
    let store = new Store(options(dir));
    expect(store.streamCreated(0)).toEqual({ before: null });
    expect(store.streamCreated(0, '2026-12-03T10:00:00Z')).toEqual({ before: null });
    await store.close();
    store = new Store(options(dir));
    expect(store.streamCreated(0, '2026-12-03T11:00:00Z')).toEqual({ before: '2026-12-03T10:00:00Z' });
    expect(store.streamCreated(0)).toEqual({ before: '2026-12-03T11:00:00Z' });
    expect(store.streamCreated(7)).toMatchObject({ error: 'shard 7 is not in this store' });
    // A copy into the shard wipes it first: the time goes with its data (a copy holds what its
    // source read, of whatever stream that was; kept, the consumer took the stream for remade).
    await store.shardRestore(0).begin();
    expect(store.streamCreated(0)).toEqual({ before: null });
    await store.close();
  });

  it("records the shard's mark (the newest applied message's sequence and stream time) in the transaction that applies it, across a restart, and forgets it when the stream is rebased or the shard wiped (a consumer compares it with the stream's message when it opens)", async () => {
    const dir = tempDir();
    let store = new Store(options(dir));
    expect(store.streamMark(0)).toEqual({ mark: null });
    expect(store.streamMark(7)).toMatchObject({ error: 'shard 7 is not in this store' });
    const timed = (seq: number, after: number, ms?: number) => {
      const m = message(seq, after, seq);
      return { ...m, h: { ...m.h, stream: { seq, after, ...(ms === undefined ? {} : { ms }) } } };
    };
    expect(store.ingestMany([timed(1, 0, 1_796_440_000_000), timed(2, 1, 1_796_440_001_000)]).map((r) => r.status)).toEqual([204, 204]);
    expect(store.streamMark(0)).toEqual({ mark: { seq: 2, ms: 1_796_440_001_000 } });
    // A message without a time moves the applied sequence, not the mark (an older mark is as true).
    expect(store.ingestMany([timed(3, 2)])[0]!.status).toBe(204);
    expect([store.streamSeqs()[0], store.streamMark(0)]).toEqual([3, { mark: { seq: 2, ms: 1_796_440_001_000 } }]);
    await store.close();
    store = new Store(options(dir));
    expect(store.streamMark(0)).toEqual({ mark: { seq: 2, ms: 1_796_440_001_000 } });
    expect(store.rebaseStream(0, 0)).toBeNull();
    expect(store.streamMark(0)).toEqual({ mark: null });
    expect(store.ingestMany([timed(1, 0, 5)])[0]!.status).toBe(204);
    expect(store.streamMark(0)).toEqual({ mark: { seq: 1, ms: 5 } });
    await store.shardRestore(0).begin();
    expect(store.streamMark(0)).toEqual({ mark: null });
    await store.close();
  });

  it('a stream made again: the applied sequence is lowered durably, its messages are applied from the first, and sections stored before are duplicates', async () => {
    const dir = tempDir();
    let store = new Store(options(dir));
    const old1 = message(1, 0, 1);
    const old2 = message(2, 1, 2);
    expect(store.ingestMany([old1, old2]).map((r) => r.status)).toEqual([204, 204]);
    expect(store.rebaseStream(0, 5)).toMatch(/^BUG: rebasing shard 0's stream from 2 to 5/);
    expect(store.rebaseStream(0, 0)).toBeNull();
    await store.close();
    store = new Store(options(dir));
    expect([store.streamSeqs()[0], store.counters.stream_resets]).toEqual([0, 0]);
    // The new stream: a rack's re-published second (stored before) then a new one, as sequences 1 and 2.
    const again = { h: { ...old2.h, stream: { seq: 1, after: 0 } }, sections: old2.sections };
    const fresh = message(2, 1, 7);
    const [a, b] = store.ingestMany([again, fresh]);
    expect(a).toMatchObject({ status: 204, points: 0, duplicates: 1 });
    expect(b).toMatchObject({ status: 204, points: 1 });
    expect(store.streamSeqs()[0]).toBe(2);
    await store.close();
  });

  it('a message refused for good moves the stream past it; a later one in the same group is not applied before it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-stream-'));
    dirs.push(dir);
    const store = new Store(options(dir));
    const bad = message(1, 0, 1);
    bad.sections[0]!.bytes = bad.sections[0]!.bytes.slice(0, 40); // truncated: it never decodes
    const r = store.ingestMany([bad, message(2, 1, 2)]);
    expect(r[0]).toMatchObject({ status: 400 });
    expect(r[1]).toMatchObject({ status: 204, points: 1 });
    expect(store.streamSeqs()[0]).toBe(2);
    expect(store.counters.stream_refused).toBe(1);
    // skipStream (a body that never reached the worker) follows the same order rule.
    expect(store.skipStream(0, 4, 3)).toMatch(/stream_gap/);
    expect(store.skipStream(0, 3, 2)).toBe('refused');
    expect(store.streamSeqs()[0]).toBe(3);
    await store.close();
  });

  it('a group refused for lack of room records nothing: every message comes again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-stream-'));
    dirs.push(dir);
    const store = new Store({ ...options(dir), headBytesMax: 10 });
    const r = store.ingestMany([message(1, 0, 1), message(2, 1, 2)]);
    expect(r.map((x) => x.status)).toEqual([503, 503]);
    expect(store.streamSeqs()[0]).toBe(0);
    await store.close();
  });

  it('a copy of a message inside a group that is refused is refused with it (it was answered as applied: the consumer then ran ahead of the store for good)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-stream-'));
    dirs.push(dir);
    const store = new Store({ ...options(dir), headBytesMax: 10 });
    const m1 = message(1, 0, 1);
    const r = store.ingestMany([m1, m1]);
    expect(r.map((x) => x.status)).toEqual([503, 503]);
    expect(store.streamSeqs()[0]).toBe(0);
    await store.close();
  });
});
