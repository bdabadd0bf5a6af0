// Signed datagrams between real `apm edge` / `apm simulate` and `apm rack` processes (issue 8):
// signed data reaches the core unchanged; forged, tampered, unsigned, replayed and stale
// datagrams are refused and counted by reason and change nothing at the core; forged NACKs do
// not make an edge send; edges whose clocks are 30 s off are refused as clock_skew.

import { afterEach, describe, expect, it } from 'vitest';
import dgram from 'node:dgram';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseKeyFile, sign, stripAuth } from '../schema/auth.js';
import { Encoder, KindCode, decodeFrame, type EdgeSecondMessage, type SeriesColumns } from '../schema/codec.js';
import { hashKey, hashName } from '../schema/names.js';
import { buildColumns } from '../schema/testdata.js';
import { FakeCore } from './fake-core.js';
import { canonical, parseProm } from './merge-helper.js';
import { spawnApm, until, type Daemon } from './proc.js';

const secretA = 'aa'.repeat(32);
const secretB = Buffer.alloc(32, 5).toString('base64');

const cleanup: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function keyFile(text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'apm-keys-')), 'keys');
  writeFileSync(file, text);
  return file;
}

function spawn(args: string[]): Daemon {
  const d = spawnApm(args);
  cleanup.push(() => d.stop('SIGKILL'));
  return d;
}

async function startRack(corePort: number, extra: string[], id = 'r1'): Promise<{ udpPort: number; httpPort: number; rack: Daemon }> {
  const rack = spawn(['rack', '--rack', id, '--listen', '127.0.0.1:0', '--core', `http://127.0.0.1:${corePort}`, '--http', '127.0.0.1:0', '--spool', mkdtempSync(join(tmpdir(), 'apm-rack-')), '--lateness', '1s', ...extra]);
  const m = await rack.waitFor(/UDP on 127\.0\.0\.1:(\d+) .*metrics on http:\/\/127\.0\.0\.1:(\d+)/);
  return { udpPort: Number(m[1]), httpPort: Number(m[2]), rack };
}

async function startEdge(server: string, rackPort: number, extra: string[]): Promise<number> {
  const edge = spawn(['edge', '--server', server, '--rack', `127.0.0.1:${rackPort}`, '--statsd', '127.0.0.1:0', '--no-host', ...extra]);
  return Number((await edge.waitFor(/StatsD on 127\.0\.0\.1:(\d+)/))[1]);
}

async function rackMetrics(httpPort: number): Promise<Map<string, number>> {
  return parseProm(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text());
}

const rejected = (m: Map<string, number>, reason: string) => m.get(`apm_rack_datagrams_rejected_total{reason="${reason}"}`) ?? 0;

/** Sends 30 gauges and a timer to each StatsD port every 100 ms for `seconds`. */
async function load(ports: number[], seconds: number): Promise<void> {
  const sock = dgram.createSocket('udp4');
  let closed = false;
  cleanup.push(() => {
    closed = true;
    sock.close();
  });
  const end = Date.now() + seconds * 1000;
  for (let tick = 0; Date.now() < end && !closed; tick++) {
    const lines: string[] = [];
    for (let g = 0; g < 30; g++) lines.push(`load.gauge.${g}:${(tick * 7 + g) % 101}|g`);
    for (let k = 0; k < 5; k++) lines.push(`load.timer:${1 + ((tick * 13 + k * 31) % 500) / 10}|ms`);
    for (const port of ports) sock.send(lines.join('\n'), port, '127.0.0.1');
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Edge ⇄ rack relay that records every datagram the edge sent (raw, as signed) and can inject both ways. */
class CaptureRelay {
  readonly fromEdge: { datagram: Buffer; atMs: number; msg: EdgeSecondMessage }[] = [];
  private listen = dgram.createSocket('udp4');
  private up = dgram.createSocket('udp4');
  private edge: dgram.RemoteInfo | null = null;

  constructor(private readonly rackPort: number) {}

  async start(): Promise<number> {
    this.listen.on('message', (datagram, from) => {
      this.edge = from;
      const r = decodeFrame(Uint8Array.from(stripAuth(datagram)), 65_507);
      if (r.ok && r.msg.type === 'edgeSecond') this.fromEdge.push({ datagram, atMs: Date.now(), msg: r.msg });
      this.up.send(datagram, this.rackPort, '127.0.0.1');
    });
    this.up.on('message', (nack) => this.toEdge(nack));
    await Promise.all([new Promise<void>((r) => this.listen.bind(0, '127.0.0.1', r)), new Promise<void>((r) => this.up.bind(0, '127.0.0.1', r))]);
    cleanup.push(() => {
      this.listen.close();
      this.up.close();
    });
    return this.listen.address().port;
  }

  /** As if from the rack: the edge accepts NACKs only from the address it sends to. */
  toEdge(datagram: Uint8Array): void {
    if (this.edge !== null) this.listen.send(datagram, this.edge.port, this.edge.address);
  }

  toRack(datagram: Uint8Array): void {
    this.up.send(datagram, this.rackPort, '127.0.0.1');
  }

  /**
   * Times the edge sent one data part. Counted per part, not over every part: under load the
   * rack's own (genuine, forwarded) NACKs make the edge resend other parts, and a probe that
   * counted those failed in CI.
   */
  timesSent(second: number, part: number): number {
    let n = 0;
    for (const d of this.fromEdge) if (d.msg.parts > 0 && d.msg.second === second && d.msg.part === part) n++;
    return n;
  }
}

/** The core's view per server-second, on-time and late batches together. */
function coreView(core: FakeCore): Map<string, SeriesColumns[]> {
  const out = new Map<string, SeriesColumns[]>();
  // The fake core keeps each (rack, session, seq) once, as the core de-duplicates.
  for (const b of core.batches) {
    for (const s of b.servers) out.set(`${s.server}@${b.second}`, [...(out.get(`${s.server}@${b.second}`) ?? []), s.series]);
  }
  return out;
}

/** Sum at the core of counter `name` sent by `server` (an edge's own apm.edge.* counters travel this way). */
function counterAtCore(core: FakeCore, server: string, name: string): number {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  let sum = 0;
  for (const b of core.batches) {
    for (const s of b.servers) {
      if (s.server !== server) continue;
      const p = s.series.pointHashes;
      for (let i = 0; i < s.series.pointKinds.length; i++) if (p[2 * i] === h[0] && p[2 * i + 1] === h[1]) sum += s.series.pointValues[i]!;
    }
  }
  return sum;
}

function forgedFrame(server: string, second: number): Uint8Array {
  const series = buildColumns([{ name: 'forged.metric', kind: KindCode.Gauge, value: 666 }], [], ['forged.metric']);
  return new Encoder().edgeSecond({ server, session: 1234, seq: 1, second, part: 0, parts: 1, sentMs: Date.now(), series });
}

describe('signed datagrams between processes', () => {
  it('carries signed data end to end; refuses forged, tampered, unsigned, replayed and stale datagrams and forged NACKs', async () => {
    const core = new FakeCore();
    const corePort = await core.start();
    cleanup.push(() => core.stop());
    // Mid-rotation: the rack signs with key 2, the edge still with key 1; both verify both.
    // Key files name their rack: every MAC covers the rack id (issue 16.5).
    const { udpPort, httpPort } = await startRack(corePort, ['--key-file', keyFile(`2 ${secretB} rack=r1\n1 ${secretA}\n`), '--clock-skew-max', '3s']);
    const relay = new CaptureRelay(udpPort);
    const relayPort = await relay.start();
    const statsd = await startEdge('e1', relayPort, ['--key-file', keyFile(`1 ${secretA}\n2 ${secretB}\n`), '--rack-id', 'r1']);
    const loading = load([statsd], 9);
    await until(() => (core.batches.some((b) => b.servers.some((s) => s.server === 'e1')) ? true : undefined), 10_000, 'signed data from e1 at the core');
    const attacker = dgram.createSocket('udp4');
    cleanup.push(() => void attacker.close());
    const toRack = (d: Uint8Array) => attacker.send(d, udpPort, '127.0.0.1');
    const nowSecond = () => Math.floor(Date.now() / 1000) - 1;
    const wrongKey = parseKeyFile(`1 ${'ab'.repeat(32)} rack=r1`, 'forger');
    const unknownKey = parseKeyFile(`9 ${secretA} rack=r1`, 'forger');
    for (let i = 0; i < 20; i++) {
      toRack(sign(wrongKey, forgedFrame('e1', nowSecond()), Date.now())); // bad_hmac
      toRack(sign(unknownKey, forgedFrame('e1', nowSecond()), Date.now())); // unknown_key
      toRack(forgedFrame('e1', nowSecond())); // unauthenticated
      toRack(forgedFrame('forger-1', nowSecond())); // unauthenticated
    }
    // Genuine datagrams, tampered with (one frame byte flipped) and replayed verbatim.
    // (Edges send each second in one burst; the last burst is at most ~1 s old, well inside the 3 s window.)
    const recent = relay.fromEdge.filter((d) => Date.now() - d.atMs < 2000 && Date.now() - d.atMs > 150).slice(-10);
    expect(recent.length).toBeGreaterThan(0);
    for (const d of recent) {
      const bad = Buffer.from(d.datagram);
      bad[bad.length - 10]! ^= 0x01;
      relay.toRack(bad);
      relay.toRack(d.datagram);
    }
    // Datagrams captured more than the 3 s window ago: stale (e1 is sending fresh ones).
    await until(() => (Date.now() - relay.fromEdge[0]!.atMs > 5000 ? true : undefined), 10_000, 'captures 5 s old');
    const old = relay.fromEdge.filter((d) => Date.now() - d.atMs > 4500).slice(0, 10);
    for (const d of old) relay.toRack(d.datagram);
    // The same genuine datagrams replayed to another rack holding the same secret (issue 16.5):
    // its MAC covers r1, so r2 refuses every one, fresh or not, and stores nothing.
    const other = await startRack(corePort, ['--key-file', keyFile(`2 ${secretB} rack=r2\n1 ${secretA}\n`), '--clock-skew-max', '3s'], 'r2');
    const toOther = relay.fromEdge.slice(-10);
    for (const d of toOther) attacker.send(d.datagram, other.udpPort, '127.0.0.1');
    const r2 = await until(async () => {
      const mm = await rackMetrics(other.httpPort);
      return rejected(mm, 'bad_hmac') >= toOther.length ? mm : undefined;
    }, 10_000, 'r2 refusing datagrams meant for r1');
    expect(rejected(r2, 'bad_hmac')).toBe(toOther.length);
    expect(r2.get('apm_rack_datagrams_rejected_total{reason="replayed"}') ?? 0).toBe(0);
    // NACKs to the edge for a part it sent: forged and unsigned ones must not make it resend.
    const sent = relay.fromEdge.filter((d) => d.msg.parts > 0).at(-1)!.msg;
    const before = relay.timesSent(sent.second, sent.part);
    const nack = new Encoder().nack({ server: 'e1', session: sent.session, second: sent.second, missingParts: Uint16Array.of(sent.part), unknownHashes: new Uint32Array(0) });
    relay.toEdge(sign(wrongKey, nack, Date.now()));
    relay.toEdge(sign(unknownKey, nack, Date.now()));
    relay.toEdge(nack);
    await new Promise((r) => setTimeout(r, 300)); // a resend would come back within a tick (20 ms)
    expect(relay.timesSent(sent.second, sent.part)).toBe(before);
    // A NACK signed with the rack's key does (the test's probe works), and only once when replayed.
    const genuine = sign(parseKeyFile(`2 ${secretB}`, 'rack'), nack, Date.now(), 'r1');
    relay.toEdge(genuine);
    await until(() => (relay.timesSent(sent.second, sent.part) === before + 1 ? true : undefined), 5000, 'a resend for the genuine NACK');
    relay.toEdge(genuine);
    await new Promise((r) => setTimeout(r, 300));
    expect(relay.timesSent(sent.second, sent.part)).toBe(before + 1);

    await loading;
    const m = await until(async () => {
      const mm = await rackMetrics(httpPort);
      return rejected(mm, 'stale') >= old.length ? mm : undefined;
    }, 10_000, 'the stale replays counted');
    expect(rejected(m, 'bad_hmac')).toBe(20 + recent.length);
    expect(rejected(m, 'unknown_key')).toBe(20);
    expect(rejected(m, 'unauthenticated')).toBe(40);
    expect(rejected(m, 'replayed')).toBe(recent.length);
    expect(rejected(m, 'stale')).toBe(old.length);
    expect(rejected(m, 'clock_skew')).toBe(0);
    expect(m.get('apm_rack_auth_keys')).toBe(2);

    // The core got exactly what the edge sent, and nothing forged.
    const lastSent = Math.max(...relay.fromEdge.map((d) => d.msg.second));
    const view = await until(() => (coreView(core).has(`e1@${lastSent}`) ? coreView(core) : undefined), 10_000, 'the last second at the core');
    expect([...view.keys()].every((k) => k.startsWith('e1@'))).toBe(true);
    expect(core.batches.every((b) => b.rack === 'r1')).toBe(true);
    const forged = new Uint32Array(2);
    hashName('forged.metric', forged, 0);
    const forgedKey = hashKey(forged[0]!, forged[1]!);
    let compared = 0;
    const truth = new Map<number, Map<number, EdgeSecondMessage>>();
    for (const d of relay.fromEdge) if (d.msg.parts > 0) truth.set(d.msg.second, (truth.get(d.msg.second) ?? new Map()).set(d.msg.part, d.msg));
    for (const [second, parts] of truth) {
      if (second >= lastSent) continue;
      const got = canonical(view.get(`e1@${second}`) ?? []);
      expect(got, `second ${second}`).toEqual(canonical([...parts.values()].map((p) => p.series)));
      expect(Object.keys(got.points)).not.toContain(forgedKey);
      compared++;
    }
    expect(compared).toBeGreaterThanOrEqual(5);
    // The edge counted the NACKs it refused, by reason (its counters travel in its stream).
    await until(() => (counterAtCore(core, 'e1', 'apm.edge.nacks_replayed') >= 1 ? true : undefined), 10_000, "the edge's NACK counters at the core");
    expect(counterAtCore(core, 'e1', 'apm.edge.nacks_bad_hmac')).toBe(1);
    expect(counterAtCore(core, 'e1', 'apm.edge.nacks_unknown_key')).toBe(1);
    expect(counterAtCore(core, 'e1', 'apm.edge.nacks_unauthenticated')).toBe(1);
  }, 60_000);

  it('refuses edges whose clocks are 30 s behind or ahead as clock_skew; a good edge is unaffected', async () => {
    const core = new FakeCore();
    const corePort = await core.start();
    cleanup.push(() => core.stop());
    const keys = keyFile(`1 ${secretA} rack=r1\n`);
    const { udpPort, httpPort } = await startRack(corePort, ['--key-file', keys]);
    const ports = await Promise.all([
      startEdge('ok-1', udpPort, ['--key-file', keys]),
      startEdge('slow-1', udpPort, ['--key-file', keys, '--clock-offset=-30s']),
      startEdge('fast-1', udpPort, ['--key-file', keys, '--clock-offset=+30s']),
    ]);
    // Simulated edges sign too, and can be skewed the same way.
    spawn(['simulate', '--rack', `127.0.0.1:${udpPort}`, '--servers', '2', '--metrics', '20', '--prefix', 'skewsim', '--key-file', keys, '--clock-offset=-30s']);
    await load(ports, 5);
    const m = await until(async () => {
      const mm = await rackMetrics(httpPort);
      return (mm.get('apm_rack_servers_clock_skewed') ?? 0) >= 4 ? mm : undefined;
    }, 10_000, 'four skewed servers at the rack');
    expect(m.get('apm_rack_servers_clock_skewed')).toBe(4);
    expect(m.get('apm_rack_clock_offset_max_seconds')).toBeGreaterThan(29);
    expect(rejected(m, 'clock_skew')).toBeGreaterThanOrEqual(4 * 3);
    expect(rejected(m, 'stale') + rejected(m, 'bad_hmac') + rejected(m, 'unauthenticated')).toBe(0);
    await until(() => (core.batches.filter((b) => b.servers.some((s) => s.server === 'ok-1')).length >= 3 ? true : undefined), 10_000, 'data from ok-1');
    // Nothing from the skewed edges reached the core, in any window.
    const servers = new Set(core.batches.flatMap((b) => b.servers.map((s) => s.server)));
    expect([...servers]).toEqual(['ok-1']);
  }, 60_000);

  it('rereads the key file on SIGHUP: a rotated-in key verifies from then on', async () => {
    const core = new FakeCore();
    const corePort = await core.start();
    cleanup.push(() => core.stop());
    const rackKeys = keyFile(`1 ${secretA} rack=r1\n`);
    const { udpPort, httpPort, rack } = await startRack(corePort, ['--key-file', rackKeys]);
    // The edge already signs with the new key 2, which the rack does not know yet.
    const statsd = await startEdge('rot-1', udpPort, ['--key-file', keyFile(`2 ${secretB} rack=r1\n1 ${secretA}\n`)]);
    const loading = load([statsd], 8);
    await until(async () => (rejected(await rackMetrics(httpPort), 'unknown_key') > 0 ? true : undefined), 10_000, 'unknown_key refusals');
    expect(core.batches.length).toBe(0);
    writeFileSync(rackKeys, `1 ${secretA} rack=r1\n2 ${secretB}\n`);
    (rack.child as ChildProcess).kill('SIGHUP');
    await rack.waitFor(/SIGHUP, 2 keys/);
    await until(() => (core.batches.some((b) => b.servers.some((s) => s.server === 'rot-1')) ? true : undefined), 10_000, 'rot-1 data after the reload');
    // A broken key file keeps the keys in use.
    writeFileSync(rackKeys, 'garbage\n');
    (rack.child as ChildProcess).kill('SIGHUP');
    await rack.waitFor(/SIGHUP, keeping the keys in use: .*line 1/);
    const before = core.batches.length;
    await until(() => (core.batches.length > before ? true : undefined), 10_000, 'more batches after a bad reload');
    await loading;
  }, 60_000);
});
