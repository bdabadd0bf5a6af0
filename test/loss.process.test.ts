// Real packet loss (issue 8): core, rack and simulator run inside a network namespace where
// the kernel drops 5% of the rack's inbound datagrams (nftables). The rack NACKs, the
// simulator resends from its ring, and the core stores exactly what was sent. Needs root:
// without it the test fails saying so (CI runs as root).

import { describe, expect, it } from 'vitest';
import { lossRun } from '../tools/bench-loss.js';

describe('kernel packet loss', () => {
  it('at 5% kernel loss the rack recovers every part and the core stores exactly what was sent', async () => {
    const r = await lossRun({
      percent: 5,
      servers: 8,
      metrics: 100,
      seconds: 14,
      // A gauge, a counter and a distribution of every server.
      recordMetrics: '^sim\\.(cpu\\.0|rpc_count\\.8|rpc_latency_ms\\.0)$',
      latenessSeconds: 2,
    });
    const summary = JSON.stringify({ ...r, mismatches: undefined });
    console.log(`loss 5%: ${summary}`);
    expect(r.kernelDropped, summary).toBeGreaterThan(0);
    expect(r.partsNacked, summary).toBeGreaterThan(0);
    expect(r.partsRecovered, summary).toBeGreaterThan(0);
    expect(r.partsLost, summary).toBe(0);
    expect(r.secondsIncomplete, summary).toBe(0);
    expect(r.secondsCompared, summary).toBeGreaterThanOrEqual(12);
    expect(r.points, summary).toBe(r.secondsCompared * 8 * 3);
    expect(r.mismatches).toEqual([]);
    expect(r.pointsExact).toBe(r.points);
    expect(r.serverSecondsComplete).toBe(r.serverSeconds);
  }, 60_000);
});
