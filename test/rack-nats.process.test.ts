// A real `apm rack --nats` process publishing to real nats-server processes (issue 13): every
// second's every shard section lands in its stream exactly once with the points the edges sent;
// an outage of every NATS server is spooled through and published in order afterwards, nothing
// lost or doubled; a permission the rack's user lacks is a clear, counted error that keeps the
// batches spooled until an operator fixes it.

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { SeriesColumns } from '../schema/codec.js';
import { buckets, connectNats, encodingHeader, ensureStreams, openLogMessage, streamOf, waitJetStream, type ClusterSettings } from '../schema/log.js';
import { decodeSecond } from '../rack/recut.js';
import { freePort, natsAuthorization, natsServerBinary, NatsCluster, testNatsUsers } from '../tools/nats-servers.js';
import { Simulator } from '../tools/simulate.js';
import { canonical, parseProm } from './merge-helper.js';
import { spawnApm, spawnDaemon, until, type Daemon } from './proc.js';
import { LossyRelay } from './relay.js';

const cleanup: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  // Every step runs even when one fails: a nats-server left behind would outlive the test run.
  const errors: unknown[] = [];
  for (const c of cleanup.splice(0).reverse()) await Promise.resolve().then(c).catch((err: unknown) => errors.push(err));
  if (errors.length > 0) throw errors[0];
});

// pointPack: the cluster's nodes read packed points, so the rack packs them (settings written
// before the pack lack it, and their racks send unpacked sections).
const settings: ClusterSettings = { format: 1, shards: 4, ownerReplicas: 1, streamReplicas: 3, streamMaxAgeSeconds: 3600, duplicateWindowSeconds: 600, pointPack: true };

/** Writes the cluster's settings as the first core node would (streams, then KV apm-cluster). */
async function writeSettings(nc: NatsConnection, s: ClusterSettings): Promise<JetStreamManager> {
  const jsm = await waitJetStream(nc);
  // A cluster just started may not have met all its peers yet: R3 streams find no placement for a moment.
  await until(async () => {
    try {
      await ensureStreams(jsm, s);
      return true;
    } catch (err) {
      if (/no suitable peers/.test((err as Error).message)) return undefined;
      throw err;
    }
  }, 20_000, 'the NATS servers to place R3 streams');
  const kv = await new Kvm(nc).create(buckets.cluster, { history: 1, replicas: s.streamReplicas });
  await kv.create('settings', JSON.stringify(s));
  return jsm;
}

function passwordFile(dir: string): string {
  const file = join(dir, 'rack.password');
  writeFileSync(file, `${testNatsUsers.rack.pass}\n`);
  return file;
}

async function startRack(rack: string, urls: string[], pwFile: string): Promise<{ rack: Daemon; udpPort: number; httpPort: number }> {
  const d = spawnApm(['rack', '--rack', rack, '--listen', '127.0.0.1:0', '--nats', urls.join(','), '--nats-user', 'rack', '--nats-password-file', pwFile, '--http', '127.0.0.1:0', '--spool', mkdtempSync(join(tmpdir(), 'apm-rack-nats-')), '--lateness', '1s']);
  cleanup.push(() => d.stop('SIGKILL'));
  const m = await d.waitFor(/UDP on 127\.0\.0\.1:(\d+) .*metrics on http:\/\/127\.0\.0\.1:(\d+)/);
  return { rack: d, udpPort: Number(m[1]), httpPort: Number(m[2]) };
}

/** A simulated fleet sending to the rack through a relay that records what each server sent (no loss). */
async function fleet(udpPort: number, prefix: string, servers: number, metrics: number): Promise<{ relay: LossyRelay; stop: () => Promise<void> }> {
  const relay = new LossyRelay({ rackPort: udpPort, lossRate: 0, dupRate: 0, reorderMaxMs: 0, seed: 1 });
  const relayPort = await relay.start();
  cleanup.push(() => relay.close());
  const sim = new Simulator({ racks: [{ host: '127.0.0.1', port: relayPort }], servers, metrics, distShare: 0.05, datagramBytes: 1432, seed: 5, prefix });
  await sim.start();
  // Tests stop it earlier to let the last seconds drain; a second stop would throw.
  let stopped: Promise<void> | null = null;
  const stop = () => (stopped ??= sim.stop());
  cleanup.push(stop);
  return { relay, stop };
}

async function metrics(httpPort: number): Promise<Map<string, number>> {
  return parseProm(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text());
}

interface StreamEntry {
  shard: number;
  streamSeq: number;
  msgId: string;
  /** The rack's batch number (from the Msg-Id). */
  seq: number;
  second: number;
  servers: { server: string; series: SeriesColumns }[];
}

/** Every message of `rack` in every shard's stream, in stream order, decoded. */
async function readStreams(jsm: JetStreamManager, rack: string): Promise<StreamEntry[]> {
  const out: StreamEntry[] = [];
  for (let k = 0; k < settings.shards; k++) {
    const info = await jsm.streams.info(streamOf(k));
    for (let q = info.state.first_seq; q <= info.state.last_seq && info.state.messages > 0; q++) {
      const m = await jsm.streams.getMessage(streamOf(k), { seq: q });
      if (m === null) continue;
      const msgId = m.header.get('Nats-Msg-Id');
      if (!msgId.startsWith(`${rack}/`)) continue;
      const { input, sections } = decodeSecond(openLogMessage(m.data, m.header.get(encodingHeader)));
      // One section per message, in its own shard's stream, cut for the cluster's S.
      expect(sections.map((s) => [s.shard, s.shards])).toEqual([[k, settings.shards]]);
      for (const s of sections) if (s.pointEnds.length > 0) expect(s.packed).toBe(true);
      expect(msgId).toBe(`${rack}/0/${input.session}/${input.seq}/${k}`);
      out.push({ shard: k, streamSeq: q, msgId, seq: input.seq, second: input.second, servers: input.servers.map((s) => ({ server: s.server, series: s.blocks[0]! })) });
    }
  }
  return out;
}

/** Per server-second, every block the streams hold (all shards, on-time and late batches). */
function streamView(entries: StreamEntry[]): Map<string, SeriesColumns[]> {
  const out = new Map<string, SeriesColumns[]>();
  for (const e of entries) for (const s of e.servers) out.set(`${s.server}@${e.second}`, [...(out.get(`${s.server}@${e.second}`) ?? []), s.series]);
  return out;
}

/** Waits until the streams hold every server-second the relay saw as it was sent (parts of a second may come in a later, late batch), then checks. */
async function expectEverySecondOnce(jsm: JetStreamManager, rack: string, relay: LossyRelay, timeoutMs: number): Promise<StreamEntry[]> {
  let entries: StreamEntry[] = [];
  const sent = new Map<string, ReturnType<typeof canonical>>();
  for (const [server, seconds] of relay.sent) for (const [second, parts] of seconds) sent.set(`${server}@${second}`, canonical([...parts.values()].map((p) => p.series)));
  const deadline = Date.now() + timeoutMs;
  await until(async () => {
    try {
      entries = await readStreams(jsm, rack);
    } catch (err) {
      // Streams answer again once the NATS servers elected their leaders after a restart.
      // (Right after a restart a stream may also answer "temporarily unavailable" or not find a message for a moment.)
      if ((err as Error).name === 'TimeoutError' || (err as Error).name === 'JetStreamApiError' || /no responders|not enabled|leader|unavailable|not found/i.test((err as Error).message)) return undefined;
      throw err;
    }
    const view = streamView(entries);
    const complete = [...sent].every(([k, want]) => view.has(k) && isDeepStrictEqual(canonical(view.get(k)!), want));
    // Past the deadline the comparison below says what differs.
    return complete || Date.now() > deadline ? true : undefined;
  }, timeoutMs + 10_000, `every server-second of rack ${rack} in the streams`);
  const view = streamView(entries);
  let compared = 0;
  for (const [server, seconds] of relay.sent) {
    for (const [second, parts] of seconds) {
      expect(canonical(view.get(`${server}@${second}`) ?? []), `${server} second ${second}`).toEqual(canonical([...parts.values()].map((p) => p.series)));
      compared++;
    }
  }
  expect(compared).toBeGreaterThan(0);
  // Each Msg-Id once; each stream holds the rack's batches in order; batches 1..N have no gap.
  const ids = entries.map((e) => e.msgId);
  expect(new Set(ids).size).toBe(ids.length);
  for (let k = 0; k < settings.shards; k++) {
    const seqs = entries.filter((e) => e.shard === k).map((e) => e.seq);
    expect(seqs, `stream ${streamOf(k)}`).toEqual([...seqs].sort((a, b) => a - b));
  }
  const batches = [...new Set(entries.map((e) => e.seq))].sort((a, b) => a - b);
  expect(batches).toEqual(batches.map((_, i) => i + 1));
  return entries;
}

describe('apm rack --nats (3 NATS servers)', () => {
  let cluster: NatsCluster;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  let pwFile: string;

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-nats-'));
    cluster = await NatsCluster.start({ dir, n: 3 });
    const pw = join(dir, 'core.password');
    writeFileSync(pw, testNatsUsers.core.pass);
    nc = await connectNats(cluster.urls, { user: 'core', passwordFile: pw }, 'test');
    jsm = await writeSettings(nc, settings);
    pwFile = passwordFile(dir);
  });

  afterAll(async () => {
    await nc?.close();
    await cluster?.stop();
  });

  it('publishes every second of every shard to its stream exactly once, with the points sent', async () => {
    const { rack, udpPort, httpPort } = await startRack('ra', cluster.urls, pwFile);
    const { relay, stop } = await fleet(udpPort, 'a', 10, 100);
    await new Promise((r) => setTimeout(r, 5000));
    await stop();
    const entries = await expectEverySecondOnce(jsm, 'ra', relay, 15_000);
    expect(new Set(entries.map((e) => e.shard)).size).toBe(4);
    const m = await until(async () => {
      const x = await metrics(httpPort);
      return x.get('apm_rack_spool_batches') === 0 ? x : undefined;
    }, 10_000, 'an empty spool');
    expect(m.get('apm_rack_nats_connected')).toBe(1);
    expect(m.get('apm_rack_shards')).toBe(4);
    expect(m.get('apm_rack_batches_acked_total')).toBe(new Set(entries.map((e) => e.seq)).size);
    expect(m.get('apm_rack_nats_messages_acked_total')).toBe(entries.length);
    expect(m.get('apm_rack_nats_compressed_bytes_acked_total')).toBeGreaterThan(0);
    expect(m.get('apm_rack_nats_compressed_bytes_acked_total')).toBeLessThan(m.get('apm_rack_nats_body_bytes_acked_total')!);
    expect(m.get('apm_rack_nats_publish_failed_total{reason="permission"}')).toBe(0);
    expect(rack.output.join('\n')).not.toMatch(/no cluster settings/);
  });

  // An outage of every NATS server (20 s, the streams' contents checked too): test/cluster-fleet.process.test.ts.
  it("refuses the rack's user publishing outside apm.shard.> with a clear error", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-nats-perm-'));
    const rackNc = await connectNats(cluster.urls, { user: 'rack', passwordFile: passwordFile(dir) }, 'test-rack');
    cleanup.push(() => rackNc.close());
    await expect(jetstream(rackNc).publish('apm.results.q1', new Uint8Array(1), { timeout: 2000 })).rejects.toThrow(/Permissions Violation for Publish to "apm\.results\.q1"/);
  });
});

describe('apm rack --nats (one NATS server, a rack user lacking a permission)', () => {
  it('waits for the settings, keeps refused batches spooled with a clear counted error, and publishes them all once the permission is fixed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-nats-one-'));
    const port = await freePort();
    const config = join(dir, 'nats.conf');
    const writeConfig = (auth: string) => writeFileSync(config, `server_name: p1\nlisten: 127.0.0.1:${port}\njetstream {\n  store_dir: "${join(dir, 'store')}"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}\n${auth}\n`);
    // The operator's mistake: the rack may publish to shard 0's subject only.
    const full = natsAuthorization(testNatsUsers);
    writeConfig(full.replace('"apm.shard.>"', '"apm.shard.0"'));
    const server = spawnDaemon(natsServerBinary(), ['-c', config]);
    cleanup.push(() => server.stop('SIGTERM'));
    await server.waitFor(/Server is ready/);
    const url = `nats://127.0.0.1:${port}`;
    const pw = join(dir, 'core.password');
    writeFileSync(pw, testNatsUsers.core.pass);
    const nc = await connectNats([url], { user: 'core', passwordFile: pw }, 'test');
    cleanup.push(() => nc.close());

    // The rack starts before any core node: it spools (cut for the default S) and says why it waits.
    const { rack, udpPort, httpPort } = await startRack('rc', [url], passwordFile(dir));
    const { relay, stop } = await fleet(udpPort, 'c', 3, 40);
    await rack.waitFor(/no cluster settings in KV apm-cluster yet: start a core node with --nats/, 10_000);
    await until(async () => ((await metrics(httpPort)).get('apm_rack_spool_batches')! >= 2 ? true : undefined), 10_000, 'two spooled batches');
    const jsm = await writeSettings(nc, { ...settings, streamReplicas: 1 });

    await rack.waitFor(/NATS refuses this rack's user publishing to apm\.shard\.[123] .*allow the rack's NATS user to publish to apm\.shard\.>.*stay spooled/, 15_000);
    const refused = await until(async () => {
      const x = await metrics(httpPort);
      return x.get('apm_rack_nats_publish_failed_total{reason="permission"}')! >= 2 ? x : undefined;
    }, 10_000, 'counted permission failures');
    expect(refused.get('apm_rack_batches_acked_total')).toBe(0);
    expect(refused.get('apm_rack_nats_streams_failing')).toBe(3);
    expect(refused.get('apm_rack_spool_batches')).toBeGreaterThanOrEqual(2);
    expect(refused.get('apm_rack_spool_dropped_batches_total')).toBe(0);
    expect(refused.get('apm_rack_batches_recut_total')).toBeGreaterThanOrEqual(1);

    // The operator fixes the permission and reloads the server: every batch goes, none was dropped.
    writeConfig(full);
    server.child.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, 1000));
    await stop();
    await expectEverySecondOnce(jsm, 'rc', relay, 20_000);
    expect((await metrics(httpPort)).get('apm_rack_batches_unreadable_total')).toBe(0);
  }, 60_000);
});
