// Real StatsD clients → a running `apm edge` → a test socket standing in for the rack (issue 15).
// Debian's python3-statsd (pystatsd 4.0) and hot-shots 17 in DogStatsD and plain StatsD mode
// send every line type they have; for the second they were sent in, every stored line's value
// is checked, and every other line is found under its reason in the edge's own counters. No
// loss: the lines the edge counted equal the lines the client sent, and stored + refused =
// sent. Sampled calls are forced in (random() stubbed) so every one is sent with its @rate.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import StatsD from 'hot-shots';
import { decodeFrame, type EdgeSecondMessage } from '../schema/codec.js';
import { mergeSecond, type MergedSecond } from './merge-helper.js';
import { nextSecond, spawnApm, until, type Daemon } from './proc.js';

const python = '/usr/bin/python3'; // Debian's, with python3-statsd; the first python3 on PATH may lack it

/** pystatsd: every call it has; prints what it sent (lines, timer ms) and the seconds it ran in. */
const pystatsdDriver = String.raw`
import json, random, sys, time, datetime
import statsd
random.random = lambda: 0.0  # sampled calls always go out, with their |@rate
port, prefix = int(sys.argv[1]), sys.argv[2]
c = statsd.StatsClient('127.0.0.1', port, prefix=prefix)
lines = 0
send = c._send
def counting(data):
    global lines
    lines += len(data.split('\n'))
    send(data)
c._send = counting
time.sleep(1 - time.time() % 1 + 0.02)
second = int(time.time())
c.incr('hits')                        # hits:1|c
c.incr('hits', 5, rate=0.5)           # hits:5|c|@0.5 -> 10
c.decr('hits', 2)                     # hits:-2|c
c.gauge('depth', 10)                  # depth:10|g
c.gauge('depth', 3, delta=True)       # depth:+3|g -> 13
c.gauge('depth', -5, delta=True)      # depth:-5|g -> 8
c.gauge('temp', -7)                   # temp:0|g + temp:-7|g in one datagram -> -7
c.gauge('rated', 2, rate=0.5)         # rated:2|g|@0.5 -> 2
c.timing('lat', 12.5)                 # lat:12.500000|ms
c.timing('lat', 7, rate=0.5)          # lat:7.000000|ms|@0.5 -> counts twice
c.timing('lat', datetime.timedelta(milliseconds=250))
t = c.timer('lat')
t.start(); t.stop()                   # a measured time
c.set('users', 'u7')
c.set('users', 'u8')
c.set('users', 'u7')
with c.pipeline() as p:               # several lines in one datagram
    p.incr('piped')
    p.incr('piped', 2)
    p.gauge('pg', 4)
    p.set('users', 'u9')
    p.timing('lat', 1)
end = int(time.time())
print(json.dumps({'second': second, 'end': end, 'lines': lines, 'timerMs': round(t.ms, 6)}))
`;

interface Sent {
  second: number;
  end: number;
  lines: number;
}

describe('real StatsD clients into apm edge (issue 15)', () => {
  let rack: dgram.Socket;
  let edge: Daemon;
  let statsdPort = 0;
  const got: EdgeSecondMessage[] = [];

  beforeAll(async () => {
    rack = dgram.createSocket('udp4');
    rack.on('message', (frame) => {
      const r = decodeFrame(frame, 65_507);
      if (!r.ok || r.msg.type !== 'edgeSecond') throw new Error(`edge sent an invalid datagram: ${JSON.stringify(r)}`);
      if (r.msg.parts > 0) got.push(r.msg);
    });
    await new Promise<void>((r) => rack.bind(0, '127.0.0.1', r));
    edge = spawnApm(['edge', '--server', 'clients-1', '--rack', `127.0.0.1:${rack.address().port}`, '--statsd', '127.0.0.1:0', '--no-host']);
    statsdPort = Number((await edge.waitFor(/StatsD on 127\.0\.0\.1:(\d+)/))[1]);
  });

  afterAll(async () => {
    await edge?.stop('SIGKILL');
    rack?.close();
  });

  /** Every part of `second`, merged, once they have all arrived. */
  const secondOf = (second: number): Promise<MergedSecond> =>
    until(
      () => {
        const parts = got.filter((g) => g.second === second);
        return parts.length > 0 && new Set(parts.map((p) => p.part)).size === parts[0]!.parts ? mergeSecond(parts) : undefined;
      },
      5000,
      `every part of second ${second}`,
    );

  /** Runs `send` (which must fit in one wall-clock second) with fresh prefixes until it does, at most 3 times. */
  async function inOneSecond(send: (prefix: string) => Promise<Sent>): Promise<{ sent: Sent; s: MergedSecond; prefix: string }> {
    for (let attempt = 0; ; attempt++) {
      const prefix = `c${Date.now() % 100_000}x${attempt}`;
      const sent = await send(prefix);
      if (sent.second === sent.end) return { sent, s: await secondOf(sent.second), prefix };
      expect(attempt, 'the clients never fit their lines in one wall-clock second').toBeLessThan(2);
    }
  }

  const point = (s: MergedSecond, name: string) => s.points.get(name)?.value;
  const own = (s: MergedSecond, name: string) => s.points.get(`apm.edge.${name}`)?.value ?? 0;
  const dist = (s: MergedSecond, name: string) => {
    const d = s.dists.get(name);
    return d === undefined ? undefined : { count: d.count, sum: d.sum, min: d.min, max: d.max };
  };
  /** Lines counted under any malformed or refused reason in the second. */
  const notTaken = (s: MergedSecond) => [...s.points].filter(([n]) => n.startsWith('apm.edge.statsd.malformed.') || n.startsWith('apm.edge.statsd.refused.')).reduce((a, [, p]) => a + p.value, 0);

  it("Debian's python3-statsd (pystatsd 4.0): counters with rates, gauges and deltas, timers, sets, pipelines", async () => {
    let timerMs = 0;
    const { sent, s, prefix } = await inOneSecond(async (prefix) => {
      const out = await new Promise<string>((resolve, reject) =>
        execFile(python, ['-c', pystatsdDriver, String(statsdPort), prefix], { timeout: 10_000 }, (err, stdout, stderr) =>
          err ? reject(new Error(`${python} with python3-statsd failed (CI installs the python3-statsd apt package): ${stderr || err.message}`)) : resolve(stdout),
        ),
      );
      const r = JSON.parse(out) as Sent & { timerMs: number };
      timerMs = r.timerMs;
      return r;
    });
    expect(point(s, `${prefix}.hits`)).toBe(1 + 10 - 2);
    expect(point(s, `${prefix}.depth`)).toBe(10 + 3 - 5);
    expect(point(s, `${prefix}.temp`)).toBe(-7);
    expect(point(s, `${prefix}.rated`)).toBe(2);
    expect(point(s, `${prefix}.users`)).toBe(3); // u7, u8, u9
    expect(point(s, `${prefix}.piped`)).toBe(3);
    expect(point(s, `${prefix}.pg`)).toBe(4);
    const lat = dist(s, `${prefix}.lat`)!;
    expect(lat.count).toBe(6); // 12.5, 7 twice, 250, the timer, 1
    expect(lat.sum).toBeCloseTo(12.5 + 14 + 250 + timerMs + 1, 6);
    expect([lat.min, lat.max]).toEqual([Math.min(1, timerMs), 250]);
    // 21 lines (temp's 0|g and -7|g are two, the pipeline's five go in one datagram); every one taken.
    expect(sent.lines).toBe(21);
    expect(own(s, 'statsd.lines')).toBe(sent.lines);
    expect(notTaken(s)).toBe(0);
  });

  for (const datadog of [true, false]) {
    const mode = datadog ? 'DogStatsD mode (container id, external data, cardinality fields)' : 'plain StatsD mode';
    it(`hot-shots 17 in ${mode}: tags, rates, gauge deltas, timers, histograms, distributions, sets, timestamps, events, service checks; packed values`, async () => {
      const { sent, s, prefix } = await inOneSecond((prefix) => sendHotShots(statsdPort, prefix, { datadog }));
      expect(point(s, `${prefix}.hits`)).toBe(1 + 16 - 2);
      // Its lines carry tags (globalTags): a DogStatsD line, where +5 adds and -3 is the value
      // (DogStatsD has no gauge deltas; its clients send negative values so).
      expect(point(s, `${prefix}.depth`)).toBe(-3);
      expect(dist(s, `${prefix}.lat`)).toEqual({ count: 3, sum: 72, min: 12, max: 30 });
      expect(dist(s, `${prefix}.hist`)).toEqual({ count: 2, sum: 3, min: -2, max: 5 });
      expect(dist(s, `${prefix}.dist`)).toEqual({ count: 3, sum: 700, min: 100, max: 300 });
      expect(point(s, `${prefix}.users`)).toBe(2);
      expect(point(s, `${prefix}.stamped`)).toBe(7);
      expect(s.points.has(`${prefix}.old`)).toBe(false);
      expect(dist(s, `${prefix}.packed`)).toEqual({ count: 6, sum: 12, min: 1, max: 3 });
      expect(point(s, `${prefix}.pc`)).toBe(6);
      expect(point(s, `${prefix}.pgauge`)).toBe(3);
      expect(dist(s, `${prefix}.pt`)).toEqual({ count: 2, sum: 10, min: 4, max: 6 });
      expect(own(s, 'statsd.refused.timestamp')).toBe(1);
      expect(own(s, 'statsd.refused.event')).toBe(1);
      expect(own(s, 'statsd.refused.service_check')).toBe(1);
      expect(own(s, 'statsd.malformed.bad_syntax')).toBe(1);
      expect(own(s, 'statsd.malformed.bad_type')).toBe(1);
      // 19 client lines + 6 raw ones; 5 not taken, 20 stored.
      expect(sent.lines).toBe(25);
      expect(own(s, 'statsd.lines')).toBe(sent.lines);
      expect(notTaken(s)).toBe(5);
    });
  }
});

/** hot-shots: every call it has, in one wall-clock second, then packed and bad lines raw; counts the lines sent. */
async function sendHotShots(port: number, prefix: string, mode: { datadog: boolean }): Promise<Sent> {
  if (mode.datadog) process.env.DD_EXTERNAL_ENV = 'it-false,cn-app';
  const client = new StatsD({
    host: '127.0.0.1',
    port,
    datadog: mode.datadog,
    ...(mode.datadog ? { containerID: 'cid42', cardinality: 'low' as const } : {}),
    includeDatadogTelemetry: false,
    maxBufferSize: 1400, // several lines per datagram
    bufferFlushInterval: 10_000,
    globalTags: { env: 'test' },
    errorHandler: (e) => console.error(e),
  });
  delete process.env.DD_EXTERNAL_ENV;
  const sent = countLines(client);
  const second = await nextSecond();
  const random = Math.random;
  Math.random = () => 0; // sampled calls always go out, with their |@rate
  try {
    client.increment(`${prefix}.hits`); // 1
    client.increment(`${prefix}.hits`, 4, 0.25, ['a:b']); // 16
    client.decrement(`${prefix}.hits`, 2); // −2
    client.gauge(`${prefix}.depth`, 10);
    client.gaugeDelta(`${prefix}.depth`, 5); // +5
    client.gaugeDelta(`${prefix}.depth`, -3); // -3: on a tagged (DogStatsD) line, the value -3
    client.timing(`${prefix}.lat`, 12);
    client.timing(`${prefix}.lat`, 30, 0.5); // counts twice
    client.histogram(`${prefix}.hist`, 5, ['t:1']);
    client.histogram(`${prefix}.hist`, -2);
    client.distribution(`${prefix}.dist`, 100);
    client.distribution(`${prefix}.dist`, 300, 0.5);
    client.set(`${prefix}.users`, 'a');
    client.unique(`${prefix}.users`, 'b');
    client.set(`${prefix}.users`, 'a');
    client.gauge(`${prefix}.stamped`, 7, { timestamp: new Date() }); // |T now: taken
    client.increment(`${prefix}.old`, 1, { timestamp: new Date(Date.now() - 3_600_000) }); // refused: timestamp
    client.event(`${prefix} deploy`, 'v1.2 | rolled out', { alert_type: 'info' }, ['svc:x']); // refused: event
    client.check(`${prefix}.svc`, client.CHECKS.OK, { message: 'fine' }); // refused: service_check
  } finally {
    Math.random = random;
  }
  await new Promise<void>((r) => client.close(() => r()));
  // DogStatsD 1.1 packed values (the Datadog clients pack; hot-shots does not), and two bad lines.
  const raw = [`${prefix}.packed:1:2:3|d|@0.5|#a`, `${prefix}.pc:1:2|c|@0.5`, `${prefix}.pgauge:1:5:3|g`, `${prefix}.pt:4:6|ms`, 'garbage', `${prefix}.bad:1|zz`];
  const sock = dgram.createSocket('udp4');
  await new Promise((r) => sock.send(raw.join('\n'), port, '127.0.0.1', r));
  sock.close();
  // The fields each mode puts on the wire (so the edge is shown to take them).
  const fields = /\|c:cid42\|e:it-false,cn-app\|card:low(\||$)/;
  expect(sent.messages.filter((m) => fields.test(m)).length).toBe(mode.datadog ? 19 : 0);
  expect(sent.messages.filter((m) => /\|#env:test/.test(m)).length).toBe(19);
  expect(sent.messages.filter((m) => /\|T\d+/.test(m)).length).toBe(2);
  return { second, end: Math.floor(Date.now() / 1000), lines: sent.n + raw.length };
}

/** Counts the lines hot-shots sends (each message is a line, before its buffer joins them). */
function countLines(client: InstanceType<typeof StatsD>): { n: number; messages: string[] } {
  const counter = { n: 0, messages: [] as string[] };
  const c = client as unknown as { _send: (message: string, cb?: unknown) => void };
  const send = c._send.bind(client);
  c._send = (message, cb) => {
    counter.n += message.split('\n').length;
    counter.messages.push(message);
    send(message, cb);
  };
  return counter;
}
