import { describe, expect, it, vi } from 'vitest';
import { authHeaderBytes, isSigned, open, parseKeyFile, ReplayCache, sign, stripAuth } from './auth.js';
import { Encoder, KindCode, decodeFrame } from './codec.js';
import { buildColumns } from './testdata.js';

// Key files name their rack: every MAC covers it (issue 16.5).
const keyA = '1 ' + 'aa'.repeat(32) + ' rack=r1';
const keyB = '2 ' + Buffer.alloc(32, 7).toString('base64') + ' rack=r1';
const t = 1_790_000_000_000;

function frame(): Uint8Array {
  const series = buildColumns([{ name: 'cpu.user', kind: KindCode.Gauge, value: 12.5 }], [{ name: 'rpc.ms', values: [1, 2, 30] }], ['cpu.user']);
  return new Encoder().edgeSecond({ server: 'web-1', session: 7, seq: 1, second: t / 1000 - 1, part: 0, parts: 1, sentMs: t, series });
}

describe('datagram authentication', () => {
  it('regression: signing for no rack throws from the first call on (before: the first call in a process returned the kept empty tag, and every rack refused its MACs as bad_hmac)', async () => {
    vi.resetModules();
    const fresh = await import('./auth.js');
    const keys = fresh.parseKeyFile(keyA, 'k');
    expect(() => fresh.sign(keys, frame(), t, null)).toThrow(/BUG: a datagram MAC needs the id of its rack, got null/);
  });

  it('signs and verifies; the frame comes back unchanged and decodes', () => {
    const keys = parseKeyFile(keyA, 'k');
    const f = frame();
    const d = sign(keys, f, t);
    expect(d.length).toBe(f.length + authHeaderBytes);
    expect(isSigned(d)).toBe(true);
    expect(isSigned(f)).toBe(false);
    const o = open(keys, d);
    if (!o.ok) throw new Error(o.reason);
    expect(o.signedMs).toBe(t);
    expect(Buffer.from(o.frame)).toEqual(Buffer.from(f));
    expect(decodeFrame(Uint8Array.from(o.frame), 65_507).ok).toBe(true);
    expect(Buffer.from(stripAuth(d))).toEqual(Buffer.from(f));
  });

  it('refuses any flipped byte, header or frame, as bad_hmac (or unknown_key/unauthenticated when it hits those fields)', () => {
    const keys = parseKeyFile(keyA, 'k');
    const d = sign(keys, frame(), t);
    for (let i = 0; i < d.length; i++) {
      const bad = Buffer.from(d);
      bad[i]! ^= 0x01;
      const o = open(keys, bad);
      const want = i < 4 ? 'unauthenticated' : i < 8 ? 'unknown_key' : 'bad_hmac';
      expect(o.ok ? 'ok' : o.reason, `byte ${i}`).toBe(want);
    }
  });

  it('refuses a datagram signed with another key: unknown id → unknown_key, same id other secret → bad_hmac', () => {
    const d = sign(parseKeyFile(keyA, 'k'), frame(), t);
    const f = (keyFile: string, want: string) => {
      const o = open(parseKeyFile(keyFile, 'k'), d);
      expect(o.ok ? 'ok' : o.reason).toBe(want);
    };
    // A rack holding only key 2 does not know key 1.
    f(keyB, 'unknown_key');
    // Key id 1 with another secret: a forgery.
    f('1 ' + 'ab'.repeat(32) + ' rack=r1', 'bad_hmac');
  });

  it('refuses unsigned datagrams when keys are set', () => {
    const o = open(parseKeyFile(keyA, 'k'), frame());
    expect(o.ok ? 'ok' : o.reason).toBe('unauthenticated');
  });

  it('accepts both keys during a rotation; the first line signs', () => {
    const old = parseKeyFile(keyA, 'k');
    const rotating = parseKeyFile(`${keyB}\n# old key, until every edge has the new one\n${keyA}\n`, 'k');
    expect(rotating.signing.id).toBe(2);
    expect(open(rotating, sign(old, frame(), t)).ok).toBe(true);
    expect(open(rotating, sign(rotating, frame(), t)).ok).toBe(true);
    // The other side, still on the old file, cannot verify the new key yet.
    const o = open(old, sign(rotating, frame(), t));
    expect(o.ok ? 'ok' : o.reason).toBe('unknown_key');
  });

  it('refuses key files that are empty, short, malformed or duplicated, naming the line', () => {
    const f = (text: string, want: RegExp) => expect(() => parseKeyFile(text, 'keys.txt')).toThrow(want);
    f('', /holds no key/);
    f('1 abcd', /line 1: key 1's secret is 2 bytes < 16/);
    f('\nx ' + 'aa'.repeat(32), /line 2: expected/);
    f('0 ' + 'aa'.repeat(32), /line 1: expected/);
    f(`${keyA}\n${keyA}`, /line 2: key id 1 appears twice/);
    f('1 not-a-secret!', /line 1/);
    f(`${keyA}\n2 ${'bb'.repeat(32)} rack=r2`, /line 2: names rack r2, an earlier line rack r1; a key file is one rack's/);
    f(`1 ${'aa'.repeat(32)} rack=r/1`, /line 1: rack="r\/1" is not a rack id/);
    f(`1 ${'aa'.repeat(32)} rack=`, /line 1: rack="" is not a rack id/);
  });

  it('reads the rack a key file names; a line without rack= takes the file\'s, a file without any names none', () => {
    expect(parseKeyFile(`${keyB}\n1 ${'aa'.repeat(32)}\n`, 'k').rack).toBe('r1');
    expect(parseKeyFile(`1 ${'aa'.repeat(32)}`, 'k').rack).toBe(null);
    // Signing for no rack is refused: the edge asks for --rack-id at start.
    expect(() => sign(parseKeyFile(`1 ${'aa'.repeat(32)}`, 'k'), frame(), t)).toThrow(/needs the id of its rack/);
    expect(open(parseKeyFile(`1 ${'aa'.repeat(32)}`, 'k'), sign(parseKeyFile(`1 ${'aa'.repeat(32)}`, 'k'), frame(), t, 'r7'), 'r7').ok).toBe(true);
  });
});

describe('regression: a datagram captured on its way to rack r1 was accepted by rack r2 (issue 16.5)', () => {
  it('fails the MAC check of any other rack, even one holding the same secret', () => {
    const secret = 'cd'.repeat(32);
    const r1 = parseKeyFile(`1 ${secret} rack=r1`, 'r1.keys');
    const r2 = parseKeyFile(`1 ${secret} rack=r2`, 'r2.keys');
    const d = sign(r1, frame(), t);
    expect(open(r1, d).ok).toBe(true);
    const o = open(r2, d);
    expect(o.ok ? 'ok' : o.reason).toBe('bad_hmac');
    // The rack id is what differs: the same keys verify for r1 and not for r2.
    expect(open(r2, d, 'r1').ok).toBe(true);
    // A NACK from rack r1 does not pass as one from r2 either.
    expect(open(r1, sign(r2, frame(), t)).ok).toBe(false);
  });
});

describe('ReplayCache', () => {
  it('refuses a MAC seen before within the window, forgets it after the window', () => {
    const c = new ReplayCache(100, 10_000);
    const mac = new Uint8Array(16).fill(3);
    expect(c.check(mac, t, t)).toBe(null);
    expect(c.check(mac, t, t + 5000)).toBe('replayed');
    expect(c.check(new Uint8Array(16).fill(4), t + 20_000, t + 20_000)).toBe(null);
    expect(c.size).toBe(1); // the first one expired
  });

  it('stays bounded: when full, the oldest goes and anything signed no later than it is stale', () => {
    const c = new ReplayCache(4, 60_000);
    const mac = (i: number) => new Uint8Array(16).fill(i);
    for (let i = 0; i < 10; i++) expect(c.check(mac(i), t + i, t + i)).toBe(null);
    expect(c.size).toBe(4);
    expect(c.evicted).toBe(6);
    // MAC 2 was evicted: it cannot be told from new any more, so it is refused as stale.
    expect(c.check(mac(2), t + 2, t + 10)).toBe('stale');
    expect(c.check(mac(9), t + 9, t + 10)).toBe('replayed');
  });

  it('regression: an evicted entry signed ahead of now (a sender\'s fast clock) does not push the floor past now; honest datagrams signed since stay fresh', () => {
    const c = new ReplayCache(4, 60_000);
    const mac = (i: number) => new Uint8Array(16).fill(i);
    expect(c.check(mac(1), t + 9500, t)).toBe(null); // 9.5 s ahead, still within the skew allowed
    for (let i = 2; i <= 5; i++) expect(c.check(mac(i), t + 100 * i, t + 100 * i)).toBe(null); // evicts mac 1
    expect(c.check(mac(6), t + 600, t + 600)).toBe(null); // was 'stale': the floor stood at t + 9500
  });
});
