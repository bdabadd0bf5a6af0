import { describe, expect, it } from 'vitest';
import { parseKeyFile, sign } from '../schema/auth.js';
import { DatagramGuard, type GuardReason } from './guard.js';

const t = 1_790_000_000_000;
const keys = parseKeyFile('1 ' + 'aa'.repeat(32) + ' rack=r1', 'k');
const frame = new Uint8Array(64).fill(9); // the guard never parses frames

function guard(withKeys = true, log: string[] = [], rack = 'r1', k = keys) {
  return new DatagramGuard({
    keys: withKeys ? k : null,
    rack,
    clockSkewMaxMs: 10_000,
    resendAgeMaxMs: 3_000,
    replayEntriesMax: 1000,
    serversTrackedMax: 100,
    skewReportMs: 60_000,
    log: (l) => log.push(l),
  });
}

/** Runs one datagram through both steps as the rack does; returns the refusal or null. */
function pass(g: DatagramGuard, datagram: Uint8Array, opts: { server?: string; sentMs?: number; nowMs: number }): GuardReason | null {
  const d = g.open(datagram);
  if (typeof d === 'string') return d;
  return g.admit(opts.server ?? 'web-1', opts.sentMs ?? opts.nowMs, d, opts.nowMs);
}

describe('regression: a datagram captured on its way to rack r1 and replayed to rack r2 was accepted (issue 16.5)', () => {
  it('is refused by r2 as bad_hmac, though both racks hold the same secret and r2 never saw it', () => {
    // Each rack's key file names its rack; the demo had given both the same secret.
    const r2keys = parseKeyFile('1 ' + 'aa'.repeat(32) + ' rack=r2', 'k');
    const g1 = guard(true, [], 'r1', keys);
    const g2 = guard(true, [], 'r2', r2keys);
    const captured = sign(keys, frame, t);
    expect(pass(g2, captured, { nowMs: t + 10 })).toBe('bad_hmac');
    expect(pass(g1, captured, { nowMs: t + 20 })).toBe(null);
    expect(pass(g2, captured, { nowMs: t + 30 })).toBe('bad_hmac');
    expect(g2.rejected.bad_hmac).toBe(2);
    // r2's own edges pass.
    expect(pass(g2, sign(r2keys, frame, t), { nowMs: t + 40 })).toBe(null);
  });
});

describe('DatagramGuard', () => {
  it('admits a fresh signed datagram and refuses the same one again as replayed', () => {
    const g = guard();
    const d = sign(keys, frame, t);
    expect(pass(g, d, { nowMs: t + 20 })).toBe(null);
    expect(pass(g, d, { nowMs: t + 40 })).toBe('replayed');
    // A resend is signed afresh: a new MAC, admitted.
    expect(pass(g, sign(keys, frame, t + 500), { nowMs: t + 520 })).toBe(null);
    expect(g.rejected.replayed).toBe(1);
  });

  it('refuses unsigned, tampered and foreign-key datagrams when keys are set', () => {
    const g = guard();
    expect(pass(g, frame, { nowMs: t })).toBe('unauthenticated');
    const bad = sign(keys, frame, t);
    bad[40]! ^= 0x80;
    expect(pass(g, bad, { nowMs: t })).toBe('bad_hmac');
    expect(pass(g, sign(parseKeyFile('7 ' + 'bb'.repeat(32) + ' rack=r1', 'k'), frame, t), { nowMs: t })).toBe('unknown_key');
    expect(g.rejected).toMatchObject({ unauthenticated: 1, bad_hmac: 1, unknown_key: 1 });
  });

  it('refuses an old signed datagram from a server heard from lately as stale', () => {
    const g = guard();
    const captured = sign(keys, frame, t);
    expect(pass(g, captured, { nowMs: t })).toBe(null);
    // The edge keeps sending; the captured datagram comes back 30 s later.
    for (let s = 1; s <= 30; s++) expect(pass(g, sign(keys, frame, t + s * 1000), { nowMs: t + s * 1000 })).toBe(null);
    expect(pass(g, captured, { nowMs: t + 30_000 })).toBe('stale');
    expect(g.skewedServers(t + 30_000)).toBe(0);
  });

  it('refuses a server whose clock is 30 s off either way as clock_skew, counts it skewed and says so once', () => {
    const log: string[] = [];
    const g = guard(true, log);
    for (let s = 0; s < 5; s++) {
      const now = t + s * 1000;
      expect(pass(g, sign(keys, frame, now - 30_000), { server: 'slow-1', nowMs: now })).toBe('clock_skew');
      expect(pass(g, sign(keys, frame, now + 30_000), { server: 'fast-1', nowMs: now })).toBe('clock_skew');
      expect(pass(g, sign(keys, frame, now + 3_000), { server: 'ok-1', nowMs: now })).toBe(null);
    }
    expect(g.rejected.clock_skew).toBe(10);
    expect(g.skewedServers(t + 5000)).toBe(2);
    expect(g.offsetMaxMs(t + 5000)).toBe(30_000);
    expect(log.length).toBe(2);
    expect(log[0]).toMatch(/slow-1's clock is 30\.0 s behind .*--clock-skew-max 10s/);
    // Fixed clocks: admitted again, no longer counted skewed.
    expect(pass(g, sign(keys, frame, t + 6001), { server: 'slow-1', nowMs: t + 6001 })).toBe(null); // (t + 6000 would repeat ok-1's bytes: a replay)
    expect(g.skewedServers(t + 6000)).toBe(1);
    expect(g.skewedServers(t + 70_000)).toBe(0);
  });

  it('checks unsigned datagrams by their sent_ms, allowing a resend its age', () => {
    const g = guard(false);
    expect(pass(g, frame, { sentMs: t - 30_000, nowMs: t })).toBe('clock_skew');
    expect(pass(g, frame, { sentMs: t + 30_000, nowMs: t })).toBe('clock_skew');
    // A resend repeats its first sent_ms: 12 s old is within 10 s skew + 3 s resend age.
    expect(pass(g, frame, { sentMs: t - 12_000, nowMs: t })).toBe(null);
    // Without keys, a signed datagram is taken unchecked (edges may get keys before racks).
    expect(pass(g, sign(keys, frame, t), { nowMs: t })).toBe(null);
    expect(g.unverified).toBe(1);
  });
});
