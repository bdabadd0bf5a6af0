import { describe, expect, it } from 'vitest';
import { CopyFailures } from './copy-failures.js';

const min = 60_000;
const day = 24 * 60 * min;

describe('CopyFailures (a node reporting shards it cannot copy)', () => {
  it('reports a shard after 3 failures in a row, for 10 minutes', () => {
    const f = new CopyFailures({ inRowToReport: 3, reportMs: 10 * min, reportMaxMs: day });
    expect([f.failed(5, 0), f.failed(5, 1), f.reported(2)]).toEqual([false, false, []]);
    expect(f.failed(5, 2)).toBe(true);
    expect(f.reported(3)).toEqual([5]);
    expect(f.reported(2 + 10 * min - 1)).toEqual([5]);
    expect(f.reported(2 + 10 * min)).toEqual([]);
  });

  it('doubles the report each time the node is picked again and fails again (before: picked again every 10 minutes for good, three failed copies each time)', () => {
    const f = new CopyFailures({ inRowToReport: 3, reportMs: 10 * min, reportMaxMs: day });
    let now = 0;
    const lengths: number[] = [];
    for (let round = 0; round < 10; round++) {
      for (let i = 0; i < 3; i++) f.failed(1, now);
      lengths.push(f.reportLengthMs(1, now) / min);
      // Reported until the report ends; then picked again, and fails 3 times again.
      expect(f.reported(now + f.reportLengthMs(1, now) - 1)).toEqual([1]);
      now += f.reportLengthMs(1, now);
      expect(f.reported(now)).toEqual([]);
    }
    expect(lengths).toEqual([10, 20, 40, 80, 160, 320, 640, 1280, 1440, 1440]);
  });

  it('does not count failures while a report lasts (the copies tried before the placer drops the node)', () => {
    const f = new CopyFailures({ inRowToReport: 3, reportMs: 10 * min, reportMaxMs: day });
    for (let i = 0; i < 3; i++) f.failed(4, 0);
    for (let i = 0; i < 6; i++) expect(f.failed(4, 1000 * i)).toBe(false);
    expect(f.reportLengthMs(4, 0)).toBe(10 * min);
  });

  it('keeps the doubling across a good copy (a join given up after its copy succeeded), and starts over once the node owns the shard', () => {
    const f = new CopyFailures({ inRowToReport: 3, reportMs: 10 * min, reportMaxMs: day });
    f.gaveUp(2, 0);
    f.succeeded(2);
    f.gaveUp(2, 10 * min);
    expect(f.reportLengthMs(2, 10 * min)).toBe(20 * min);
    f.promoted(2);
    f.gaveUp(2, 30 * min);
    expect(f.reportLengthMs(2, 30 * min)).toBe(10 * min);
  });

  it('counts failures in a row only within 10 minutes of each other (two failures weeks ago and one now are not three in a row)', () => {
    const f = new CopyFailures({ inRowToReport: 3, reportMs: 10 * min, reportMaxMs: day });
    f.failed(3, 0);
    f.failed(3, 1);
    expect(f.failed(3, 20 * day)).toBe(false);
    expect(f.reported(20 * day)).toEqual([]);
  });

  it('forgets a shard a day after its last failure or report (one entry per shard at most)', () => {
    const f = new CopyFailures({ inRowToReport: 3, reportMs: 10 * min, reportMaxMs: day });
    for (let i = 0; i < 3; i++) f.failed(2, 0);
    f.failed(3, 0);
    expect(f.size).toBe(2);
    f.reported(10 * min + day + 1);
    expect(f.size).toBe(0);
  });

  it('counts failures apart per shard', () => {
    const f = new CopyFailures({ inRowToReport: 2, reportMs: 1000, reportMaxMs: 8000 });
    f.failed(0, 0);
    f.failed(1, 0);
    expect(f.reported(0)).toEqual([]);
    f.failed(1, 0);
    expect(f.reported(0)).toEqual([1]);
  });

  it('reports a join given up at once (a copy that succeeded but never caught up), doubling like failed copies', () => {
    const f = new CopyFailures({ inRowToReport: 3, reportMs: 10 * min, reportMaxMs: day });
    f.gaveUp(6, 0);
    expect(f.reported(1)).toEqual([6]);
    expect(f.reportLengthMs(6, 0)).toBe(10 * min);
    f.gaveUp(6, 5 * min); // still reported: no change
    expect(f.reportLengthMs(6, 0)).toBe(10 * min);
    f.gaveUp(6, 10 * min);
    expect(f.reportLengthMs(6, 10 * min)).toBe(20 * min);
  });

  it('refuses options out of range', () => {
    expect(() => new CopyFailures({ inRowToReport: 0, reportMs: 1, reportMaxMs: 1 })).toThrow(/out of range/);
    expect(() => new CopyFailures({ inRowToReport: 1, reportMs: 10, reportMaxMs: 5 })).toThrow(/out of range/);
  });
});
