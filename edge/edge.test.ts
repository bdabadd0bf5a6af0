// The Edge wired on loopback (a test socket stands in for the rack) with a clock the test
// steps: seconds close by the monotonic clock and carry wall-clock stamps (issue 16.9).

import dgram from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { parseKeyFile } from '../schema/auth.js';
import { decodeFrame, type EdgeSecondMessage } from '../schema/codec.js';
import { hashName } from '../schema/names.js';
import { mergeSecond } from '../test/merge-helper.js';
import { until } from '../test/proc.js';
import type { EdgeClock } from './clock.js';
import { Edge, macRack } from './edge.js';
import { edgeLimits, type EdgeLimits } from './limits.js';

/** Wall and monotonic clocks that move only when the test says. */
class TestClock implements EdgeClock {
  mono = 10_000;
  constructor(public wall: number) {}
  wallMs(): number {
    return this.wall;
  }
  monoMs(): number {
    return this.mono;
  }
  pass(monoMs: number, wallMs = monoMs): void {
    this.mono += monoMs;
    this.wall += wallMs;
  }
}

const S = 1_790_000_000;
const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0)) await f();
});

/** An Edge on loopback sending to a test socket; `second()` sends x:<v>|c, lets one monotonic second pass, and returns what arrived for it. */
async function edgeWith(clock: TestClock, limits: Partial<EdgeLimits> = {}) {
  const got: EdgeSecondMessage[] = [];
  const rack = dgram.createSocket('udp4');
  rack.on('message', (frame) => {
    const r = decodeFrame(frame, 65_507);
    if (!r.ok || r.msg.type !== 'edgeSecond') throw new Error(`edge sent an invalid datagram: ${JSON.stringify(r)}`);
    if (r.msg.parts > 0) got.push(r.msg);
  });
  await new Promise<void>((r) => rack.bind(0, '127.0.0.1', r));
  const edge = new Edge({
    server: 'clock-test',
    rackHost: '127.0.0.1',
    rackPort: rack.address().port,
    statsdHost: '127.0.0.1',
    statsdPort: 0,
    hostCollector: false,
    limits: { ...edgeLimits, ...limits },
    clock,
  });
  const statsdPort = await edge.start();
  const client = dgram.createSocket('udp4');
  cleanup.push(async () => {
    client.close();
    await edge.stop();
    rack.close();
  });
  await until(() => (edge.aggregator.openSecond >= 0 ? true : undefined), 5000, 'the first second to open');

  /** Sends StatsD lines, lets one monotonic second pass and returns the second sent. */
  const secondOf = async (lines: string[], pass = { monoMs: 1000, wallMs: 1000 }) => {
    const parsed = edge.parser.lines + lines.reduce((n, l) => n + l.split('\n').length, 0);
    for (const line of lines) await new Promise<void>((r) => client.send(line, statsdPort, '127.0.0.1', () => r()));
    await until(() => (edge.parser.lines >= parsed ? true : undefined), 5000, `${lines.join(', ')} to be parsed`);
    const sent = edge.counters.seconds_sent;
    const from = got.length;
    clock.pass(pass.monoMs, pass.wallMs);
    await until(() => (edge.counters.seconds_sent > sent && got.length === edge.counters.datagrams_sent ? true : undefined), 5000, `the second holding ${lines.join(', ')} to be sent`);
    const parts = got.slice(from);
    expect(new Set(parts.map((p) => p.second)).size, 'one second per monotonic second').toBe(1);
    return { second: parts[0]!.second, merged: mergeSecond(parts, ['x', 'ok', 'big', 't', 'w', 'tiny', 'users', 'apm.edge.dropped.overflow', 'apm.edge.statsd.refused.timestamp', 'apm.edge.dropped.series_limit', 'apm.edge.dropped.reserved_name', 'apm.edge.statsd.malformed.bad_syntax', 'apm.edge.statsd.lines']) };
  };
  const second = async (value: number, pass = { monoMs: 1000, wallMs: 1000 }) => {
    const { second, merged } = await secondOf([`x:${value}|c`], pass);
    return { second, x: merged.points.get('x')?.value };
  };
  return { edge, second, secondOf };
}

describe('Edge seconds and a stepped wall clock (issue 16.9)', () => {
  it('an edge goes silent when its clock steps back 1 h (issue 16.9): seconds keep closing once per monotonic second', async () => {
    const clock = new TestClock(S * 1000 + 100);
    const { edge, second } = await edgeWith(clock);
    const got = [await second(1)];
    clock.wall -= 3_600_000;
    for (const v of [2, 3, 4]) got.push(await second(v));
    // The second open at the step keeps its stamp; the next ones follow the stepped clock.
    expect(got).toEqual([
      { second: S, x: 1 },
      { second: S + 1, x: 2 },
      { second: S + 2 - 3600, x: 3 },
      { second: S + 3 - 3600, x: 4 },
    ]);
    expect(edge.counters.seconds_sent).toBe(4);
  });

  it('an edge lumps 5 s of observations into one second when its clock steps back 5 s (issue 16.9): each second stays separate, stamps repeat', async () => {
    const clock = new TestClock(S * 1000 + 100);
    const { edge, second } = await edgeWith(clock);
    const got = [await second(1)];
    clock.wall -= 5000;
    for (let v = 2; v <= 8; v++) got.push(await second(v));
    // S−3 … S+1 repeat stamps already sent: the rack takes those parts as duplicates (clock.ts).
    expect(got.map((g) => g.second)).toEqual([S, S + 1, S - 3, S - 2, S - 1, S, S + 1, S + 2]);
    expect(got.map((g) => g.x)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(edge.counters.seconds_sent).toBe(8);
  });

  it('a wall clock slewed by NTP (±0.5 ms per second) keeps stamps consecutive', async () => {
    for (const wallMs of [1000.5, 999.5]) {
      const clock = new TestClock(S * 1000 + 500);
      const { second } = await edgeWith(clock);
      const stamps: number[] = [];
      for (let v = 0; v < 12; v++) stamps.push((await second(v, { monoMs: 1000, wallMs })).second);
      expect(stamps).toEqual(stamps.map((_, i) => S + i));
    }
  });
});

describe('Edge and sums that overflow (issue 16.4)', () => {
  it('an overflowing counter or timer is not sent, counted as apm.edge.dropped.overflow; the rest of the datagram arrives', async () => {
    const clock = new TestClock(S * 1000 + 100);
    const { edge, secondOf } = await edgeWith(clock);
    const first = await secondOf(['big:1e308|c', 'big:1e308|c\nt:1e308|ms\nt:1e308|ms', 'ok:1|c\nx:2|g']);
    expect(first.merged.points.get('ok')).toEqual({ kind: 1, value: 1 });
    expect(first.merged.points.get('x')).toEqual({ kind: 0, value: 2 });
    expect(first.merged.points.has('big')).toBe(false);
    expect(first.merged.dists.has('t')).toBe(false);
    expect(edge.aggregator.drops.overflow).toBe(2);
    // The edge's own counters describe the second they were counted in: the next one.
    const next = await secondOf([]);
    expect(next.merged.points.get('apm.edge.dropped.overflow')).toEqual({ kind: 1, value: 2 });
  });
});

describe('Edge and sample rates that would overflow a summary\'s 32-bit count', () => {
  it('a rate below 1e-6 is refused as bad_rate; a distribution whose weights pass 2³² − 1 in one second is not sent, counted as overflow; the rest of the second arrives', async () => {
    const clock = new TestClock(S * 1000 + 100);
    const { edge, secondOf } = await edgeWith(clock);
    // 4,296 samples at @1e-6 weigh 4.296e9 > 2³² − 1 (before: a summary whose count wrapped, or
    // whose sketch the rack could not encode once merged: the rack process stopped).
    const heavy: string[] = [];
    for (let i = 0; i < 4296; i += 64) heavy.push(Array.from({ length: Math.min(64, 4296 - i) }, () => 'w:5|ms|@0.000001').join('\n'));
    const first = await secondOf(['tiny:5|ms|@0.0000000003\ntiny:5|ms|@1e-300', ...heavy, 'ok:1|c\nx:2|g\nt:3|ms|@0.5']);
    expect(first.merged.points.get('ok')).toEqual({ kind: 1, value: 1 });
    expect(first.merged.points.get('x')).toEqual({ kind: 0, value: 2 });
    expect(first.merged.dists.get('t')?.count).toBe(2);
    expect(first.merged.dists.has('w')).toBe(false);
    expect(first.merged.dists.has('tiny')).toBe(false);
    expect(edge.parser.malformed.bad_rate).toBe(2);
    expect(edge.aggregator.drops.overflow).toBe(1);
    // Just under the bound: sent, its count exact.
    const next = await secondOf([...heavy.slice(0, -1), Array.from({ length: 4294 - 64 * (heavy.length - 1) }, () => 'w:5|ms|@0.000001').join('\n')]);
    expect(next.merged.dists.get('w')?.count).toBe(4294e6);
  });
});

describe('Edge and StatsD sets and timestamps (issue 15)', () => {
  it('a set sends its distinct members per second; a |T timestamp is taken within 1 s of the second\'s stamp, else refused and counted', async () => {
    const clock = new TestClock(S * 1000 + 100);
    const { edge, secondOf } = await edgeWith(clock);
    const first = await secondOf(['users:a|s\nusers:b|s', 'users:a|s', `t:1|c|T${S}`, `t:2|c|T${S + 1}`, `t:4|c|T${S - 5}`]);
    expect(first.second).toBe(S);
    expect(first.merged.points.get('users')).toEqual({ kind: 0, value: 2 });
    expect(first.merged.points.get('t')).toEqual({ kind: 1, value: 3 });
    expect(edge.parser.refused.timestamp).toBe(1);
    // Counted in the second the line arrived in.
    expect(first.merged.points.get('apm.edge.statsd.refused.timestamp')).toEqual({ kind: 1, value: 1 });
    const next = await secondOf(['users:c|s']);
    expect(next.merged.points.get('users')).toEqual({ kind: 0, value: 1 });
  });
});

describe('the rack id signed datagrams cover (issue 16.5)', () => {
  it('comes from --rack-id or the key file; both must agree; neither is refused at start', () => {
    const bound = parseKeyFile(`1 ${'aa'.repeat(32)} rack=r1`, 'k');
    const unbound = parseKeyFile(`1 ${'aa'.repeat(32)}`, 'k');
    expect(macRack(bound, undefined)).toBe('r1');
    expect(macRack(bound, 'r1')).toBe('r1');
    expect(macRack(unbound, 'r7')).toBe('r7');
    expect(() => macRack(bound, 'r2')).toThrow(/the key file names rack r1 \(rack=r1\) but --rack-id is r2/);
    expect(() => macRack(unbound, undefined)).toThrow(/give --rack-id <the rack's --rack>, or add rack=<rack id> to the key file/);
    expect(() => macRack(unbound, 'r 1')).toThrow(/--rack-id "r 1" is not a rack id/);
  });
});

describe('the edge\'s own series (apm.edge.*) and a client that fills the series table', () => {
  it('regression: still arrive, exact, and a client may not write them; before, series_limit itself was never sent and a client could overwrite the counters', async () => {
    const clock = new TestClock(S * 1000 + 100);
    const { edge, secondOf } = await edgeWith(clock, { seriesMax: 5 });
    // 20 distinct counters (15 beyond --series-max 5), one line squatting an edge counter, one malformed line.
    const flood = Array.from({ length: 20 }, (_, i) => `c${i}:1|c`).join('\n');
    const first = await secondOf([flood, 'apm.edge.statsd.malformed.bad_syntax:0|g', 'garbage']);
    expect(edge.aggregator.drops).toMatchObject({ series_limit: 15, reserved_name: 1 });
    // Each second carries the counters' increments since the one before (ok: one more series_limit).
    const next = await secondOf(['ok:1|c']);
    const got = (name: string) => (first.merged.points.get(name)?.value ?? 0) + (next.merged.points.get(name)?.value ?? 0);
    expect([got('apm.edge.dropped.series_limit'), got('apm.edge.dropped.reserved_name'), got('apm.edge.statsd.malformed.bad_syntax')]).toEqual([16, 1, 1]);
    expect(edge.aggregator.drops.series_limit).toBe(16);
    expect(next.merged.points.has('ok')).toBe(false); // still no room for a client series
  });
});

describe('the edge and NACKs that ask too much', () => {
  it('regression: a part or a name asked for many times in one NACK is sent once, and resends stay within a byte budget a second; before, each repeat was sent', async () => {
    const clock = new TestClock(S * 1000 + 100);
    const { edge, secondOf } = await edgeWith(clock, { resendBytesPerSecondMax: 4 * 1432 });
    // A second of ~600 series: several parts.
    const first = await secondOf([Array.from({ length: 300 }, (_, i) => `a.series.of.a.rather.long.name.${i}:1|c`).join('\n'), Array.from({ length: 300 }, (_, i) => `b.series.of.a.rather.long.name.${i}:1|c`).join('\n')]);
    const nack = (missingParts: number[]) => edge.onNack({ type: 'nack', server: 'clock-test', session: edge.session, second: first.second, missingParts: Uint16Array.from(missingParts), unknownHashes: new Uint32Array(0) });
    nack(Array(512).fill(0));
    expect(edge.counters.datagrams_resent).toBe(1);
    const parts = edge.counters.datagrams_sent - 1;
    expect(parts).toBeGreaterThan(5);
    nack(Array.from({ length: parts }, (_, i) => i));
    // The budget (4 datagrams' bytes a second) had room for 3 more in this second.
    expect(edge.counters.datagrams_resent).toBeLessThanOrEqual(4);
    expect(edge.counters.resends_refused).toBe(parts - (edge.counters.datagrams_resent - 1));
    // The next second has a budget again.
    clock.pass(1000);
    nack([0]);
    expect(edge.counters.datagrams_resent).toBeGreaterThanOrEqual(2);
  });

  it('regression: names count as resent only when their frames went out (before: also those the resend budget refused)', async () => {
    const clock = new TestClock(S * 1000 + 100);
    const { edge, secondOf } = await edgeWith(clock, { resendBytesPerSecondMax: 1432 });
    const first = await secondOf([Array.from({ length: 400 }, (_, i) => `n.series.with.a.fairly.long.name.number.${i}:1|c`).join('\n')]);
    const hashes = new Uint32Array(2 * 400);
    for (let i = 0; i < 400; i++) hashName(`n.series.with.a.fairly.long.name.number.${i}`, hashes, 2 * i);
    edge.onNack({ type: 'nack', server: 'clock-test', session: edge.session, second: first.second, missingParts: new Uint16Array(0), unknownHashes: hashes });
    // The budget holds one datagram of names, not 400 names.
    expect(edge.counters.resends_refused).toBeGreaterThan(0);
    expect(edge.counters.names_resent).toBeGreaterThan(0);
    expect(edge.counters.names_resent).toBeLessThan(400);
  });
});

describe('regression: the host collector after stop()', () => {
  it('a reading under way when the edge stops schedules no next one (before: it armed the next, and readings went on every second for good)', async () => {
    const edge = new Edge({ server: 'host-stop', rackHost: '127.0.0.1', rackPort: 9, statsdHost: '127.0.0.1', statsdPort: 0, hostCollector: true, limits: edgeLimits, clock: new TestClock(S * 1000) });
    const host = (edge as unknown as { host: { collect: () => Promise<unknown> } }).host;
    let calls = 0;
    let finish: (() => void) | null = null;
    host.collect = () => {
      calls++;
      return new Promise<unknown>((r) => (finish = () => r([])));
    };
    await edge.start();
    await until(() => (calls === 1 ? true : undefined), 3000, 'a host reading to start');
    await edge.stop();
    const timer = () => (edge as unknown as { hostTimer: unknown }).hostTimer;
    const cleared = timer();
    finish!();
    await new Promise((r) => setTimeout(r, 1200));
    expect(timer()).toBe(cleared);
    expect(calls).toBe(1);
  });
});

describe('regression: stop() twice (SIGTERM after SIGINT)', () => {
  it('the second call waits for the first and closes nothing twice (before: ERR_SOCKET_DGRAM_NOT_RUNNING, an unhandled rejection that ended the edge with exit 1)', async () => {
    const edge = new Edge({ server: 'stop-twice', rackHost: '127.0.0.1', rackPort: 9, statsdHost: '127.0.0.1', statsdPort: 0, hostCollector: false, limits: edgeLimits, clock: new TestClock(S * 1000) });
    await edge.start();
    const first = edge.stop();
    await new Promise((r) => setTimeout(r, 10));
    await expect(Promise.all([first, edge.stop()])).resolves.toEqual([undefined, undefined]);
    await expect(edge.stop()).resolves.toBeUndefined();
  });
});
