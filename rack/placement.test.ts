import { describe, expect, it } from 'vitest';
import { PlacementFetch, parsePlacement, parsePointPack, parseShardsMismatch } from './placement.js';

describe('placement', () => {
  it('parses GET /api/v1/placement answers', () => {
    const f = (status: number, text: string, want: number | RegExp) => {
      const got = parsePlacement(status, text);
      if (typeof want === 'number') expect(got).toBe(want);
      else expect(got).toMatch(want);
    };
    // the core's answer
    f(200, '{"shards":64}', 64);
    f(200, '{"shards":1}', 1);
    // not a power of two, out of range, missing
    f(200, '{"shards":48}', /not a power of two/);
    f(200, '{"shards":8192}', /not a power of two/);
    f(200, '{"shards":0}', /not a power of two/);
    f(200, '{}', /not a power of two/);
    // not JSON, not 200
    f(200, '<html>', /not JSON/);
    f(503, 'busy', /HTTP 503: busy/);
  });

  it('packs points only when the placement says the core reads them (a core from before the pack says nothing)', () => {
    expect(parsePointPack('{"shards":64,"workers":2,"pointPack":true}')).toBe(true);
    expect(parsePointPack('{"shards":64}')).toBe(false);
    expect(parsePointPack('{"shards":64,"pointPack":"yes"}')).toBe(false);
    expect(parsePointPack('<html>')).toBe(false);
  });

  it('parses a 409 shards_mismatch, and only that', () => {
    expect(parseShardsMismatch('{"reason":"shards_mismatch","shards":16}')).toBe(16);
    expect(parseShardsMismatch('{"reason":"shards_mismatch","shards":17}')).toBeNull();
    expect(parseShardsMismatch('{"reason":"conflict","shards":16}')).toBeNull();
    expect(parseShardsMismatch('conflict')).toBeNull();
  });

  it('retries with backoff until the core answers, counting each failure, and logs once', async () => {
    const answers = [() => Promise.reject(new Error('ECONNREFUSED')), () => Promise.resolve({ status: 503, text: 'starting' }), () => Promise.resolve({ status: 200, text: '{"shards":16}' })];
    const learned: number[] = [];
    const logs: string[] = [];
    const p = new PlacementFetch({ get: () => answers.shift()!(), learn: (s) => learned.push(s), backoffMinMs: 1, backoffMaxMs: 4, log: (l) => logs.push(l) });
    await p.run();
    expect([learned, p.failures, p.answered, answers.length]).toEqual([[16], 2, true, 0]);
    expect(logs).toHaveLength(2);
    expect(logs[0]).toMatch(/ECONNREFUSED/);
  });

  it('stop() ends the retries while the core stays away', async () => {
    let asked = 0;
    const p = new PlacementFetch({ get: () => (asked++, Promise.reject(new Error('down'))), learn: () => expect.fail('learned'), backoffMinMs: 60_000, backoffMaxMs: 60_000, log: () => undefined });
    const running = p.run();
    await new Promise((r) => setTimeout(r, 20));
    p.stop();
    await running;
    expect([asked, p.failures, p.answered]).toEqual([1, 1, false]);
  });
});
