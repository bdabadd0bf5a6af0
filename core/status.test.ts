// The fleet view's status table (core/status.ts): rack reports are bounded by count and by age;
// the fleet's StatsD refusals by reason are computed from stored counters, bounded and cached.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KindCode } from '../schema/codec.js';
import { rackSecondBody } from '../schema/section.js';
import { buildColumns, type PointInput } from '../schema/testdata.js';
import { openNode } from './node.js';
import { CoreStatus, parseRackStatus, StatsdRefusals, statsdRefusalLimits, type RackStatus, type RefusalTable } from './status.js';

const report = parseRackStatus({ partsLost: 1 }) as RackStatus;

describe('regression: the racks\' status table never expired entries (issue 16.3)', () => {
  it('drops a report once its rack has sent none for the TTL, and makes room for new racks', () => {
    const s = new CoreStatus({ racksMax: 2, samplesMax: 11, reportTtlMs: 60_000 });
    expect(s.report('r1', report, 0)).toBe(true);
    expect(s.report('r2', report, 10_000)).toBe(true);
    // Full: a third rack is refused while both reports are fresh.
    expect(s.report('r3', report, 30_000)).toBe(false);
    expect(s.racksRefused).toBe(1);
    // r1 keeps reporting; r2 falls silent.
    expect(s.report('r1', report, 50_000)).toBe(true);
    expect(s.rackReports(69_000).map((r) => r.rack)).toEqual(['r2', 'r1']);
    expect(s.rackReports(70_001).map((r) => r.rack)).toEqual(['r1']);
    expect(s.racksExpired).toBe(1);
    // Room again: r3 is taken.
    expect(s.report('r3', report, 71_000)).toBe(true);
    expect(s.rackReports(71_000).map((r) => [r.rack, r.reportedMs])).toEqual([
      ['r1', 50_000],
      ['r3', 71_000],
    ]);
    expect(s.rackCount).toBe(2);
  });
});

describe('the fleet\'s StatsD refusals by reason (issue 15)', () => {
  /** A source with the given metrics; each query answers `perMetric[metric]` split over two windows. */
  function source(metrics: { name: string | null; lastSeenMs: number }[], perMetric: Record<string, number>) {
    const calls: string[] = [];
    return {
      calls,
      metrics: async () => metrics,
      query: async (text: string, metric: string, fromSec: number, toSec: number) => {
        calls.push(`${text} ${fromSec}..${toSec}`);
        const n = perMetric[metric] ?? 0;
        return [{ values: { sum: n / 2 } }, { values: { sum: n - n / 2 } }];
      },
    };
  }
  const nowMs = 1_790_000_000_000;

  it('sums each reason counter seen in the window, most first; other metrics and stale counters are not queried', async () => {
    const src = source(
      [
        { name: 'apm.edge.statsd.refused.event', lastSeenMs: nowMs - 1000 },
        { name: 'apm.edge.statsd.malformed.bad_type', lastSeenMs: nowMs - 1000 },
        { name: 'apm.edge.dropped.set_values_limit', lastSeenMs: nowMs - 1000 },
        { name: 'apm.edge.dropped.late', lastSeenMs: nowMs - 1000 }, // zero in the window: no row
        { name: 'apm.edge.statsd.refused.service_check', lastSeenMs: nowMs - 3_600_000 }, // stale
        { name: 'apm.edge.statsd.lines', lastSeenMs: nowMs },
        { name: null, lastSeenMs: nowMs },
      ],
      { 'apm.edge.statsd.refused.event': 12, 'apm.edge.statsd.malformed.bad_type': 3, 'apm.edge.dropped.set_values_limit': 40, 'apm.edge.statsd.refused.service_check': 9 },
    );
    const r = new StatsdRefusals();
    await r.refresh(src, nowMs);
    const t = r.view(src, nowMs);
    expect(t.rows).toEqual([
      { metric: 'apm.edge.dropped.set_values_limit', family: 'dropped', reason: 'set_values_limit', count: 40 },
      { metric: 'apm.edge.statsd.refused.event', family: 'refused', reason: 'event', count: 12 },
      { metric: 'apm.edge.statsd.malformed.bad_type', family: 'malformed', reason: 'bad_type', count: 3 },
    ]);
    expect([t.updatedMs, t.windowSeconds, t.omitted, t.error]).toEqual([nowMs, 300, 0, null]);
    expect(src.calls).toHaveLength(4);
    expect(src.calls[0]).toBe(`FROM * SELECT apm.edge.dropped.late WINDOW 10s COMPUTE sum ${nowMs / 1000 - 300}..${nowMs / 1000}`);
  });

  it('refreshes at most every refreshMs and only one at a time, in the background of a request', async () => {
    const src = source([{ name: 'apm.edge.statsd.refused.event', lastSeenMs: nowMs }], { 'apm.edge.statsd.refused.event': 2 });
    const r = new StatsdRefusals();
    // The first request sees an empty table and starts the first refresh.
    expect(r.view(src, nowMs).updatedMs).toBeNull();
    expect(r.view(src, nowMs + 1).updatedMs).toBeNull(); // no second refresh while one runs
    await r.settled();
    expect(r.view(src, nowMs + 5_000).rows.map((x) => x.count)).toEqual([2]);
    expect(r.refreshes).toBe(1);
    r.view(src, nowMs + statsdRefusalLimits.refreshMs);
    await r.settled();
    expect(r.refreshes).toBe(2);
    expect(src.calls).toHaveLength(2);
  });

  it('bounds the reasons queried and keeps the last rows when a refresh fails', async () => {
    const many = Array.from({ length: statsdRefusalLimits.reasonsMax + 5 }, (_, i) => ({ name: `apm.edge.dropped.r${String(i).padStart(3, '0')}`, lastSeenMs: nowMs }));
    const src = source(many, Object.fromEntries(many.map((m) => [m.name, 1])));
    const r = new StatsdRefusals();
    await r.refresh(src, nowMs);
    expect(r.view(src, nowMs).rows).toHaveLength(statsdRefusalLimits.reasonsMax);
    expect(r.view(src, nowMs).omitted).toBe(5);
    await r.refresh({ ...src, metrics: async () => Promise.reject(new Error('worker 0 is restarting')) }, nowMs + 20_000);
    const t = r.view(src, nowMs + 20_000);
    expect(t.rows).toHaveLength(statsdRefusalLimits.reasonsMax);
    expect(t.updatedMs).toBe(nowMs);
    expect(t.error).toMatch(/not refreshed at .*: worker 0 is restarting/);
  });

  it('through a node: the counters edges stored are summed fleet-wide and shown in GET /api/v1/status', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-refusals-'));
    const node = await openNode({ dataDir: dir, workers: 1, shards: 8, queryLatenessMs: 0, flushGraceMs: 0 });
    try {
      const now = Math.floor(Date.now() / 1000);
      const counters = (v: number): PointInput[] => [
        { name: 'apm.edge.statsd.refused.event', kind: KindCode.Counter, value: v },
        { name: 'apm.edge.statsd.malformed.bad_syntax', kind: KindCode.Counter, value: 2 * v },
        { name: 'apm.edge.statsd.lines', kind: KindCode.Counter, value: 100 },
      ];
      const names = counters(0).map((p) => p.name);
      for (let i = 0; i < 10; i++) {
        const second = now - 40 + i;
        const body = rackSecondBody({ rack: 'r1', session: 5, seq: i + 1, second, late: false, shards: 8, servers: ['a', 'b', 'c'].map((server, k) => ({ server, blocks: [buildColumns(counters(k + 1), [])] })), rollup: buildColumns([], [], names) });
        expect((await node.app.request('/api/v1/ingest', { method: 'POST', body })).status).toBe(204);
      }
      // Each second: event 1 + 2 + 3 = 6, bad_syntax 12; over 10 seconds 60 and 120.
      const first = (await (await node.app.request('/api/v1/status')).json()) as { statsdRefused: RefusalTable };
      expect(first.statsdRefused.updatedMs).toBeNull();
      await node.status.statsdRefusals.settled();
      const { statsdRefused } = (await (await node.app.request('/api/v1/status')).json()) as { statsdRefused: RefusalTable };
      expect(statsdRefused.rows.map((r) => [r.family, r.reason, r.count])).toEqual([
        ['malformed', 'bad_syntax', 120],
        ['refused', 'event', 60],
      ]);
      expect(statsdRefused.error).toBeNull();
    } finally {
      await node.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
