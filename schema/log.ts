// The log contract of a core cluster (issue 13): racks publish each closed second to NATS
// JetStream, one message per (second, shard); every core node that owns a shard applies its
// stream in order. Racks and nodes must agree on everything here.
//
//   stream  APM_<k>          subject apm.shard.<k>: shard k's sections, file storage, R3 (fewer
//                            NATS servers: all of them), duplicate window and max age from the
//                            cluster settings. One stream per shard, so leaders spread over
//                            the NATS servers and no stream holds many subjects.
//   message                  a RackSecond body (schema/section.ts) holding one section, raw
//                            deflate; header Apm-Enc: deflate. Nats-Msg-Id:
//                            <rack>/<origin>/<session>/<seq>/<shard>, so a re-publish inside the
//                            duplicate window is stored once.
//   KV apm-cluster           "settings": ClusterSettings, written once by the first node.
//   KV apm-nodes             one key per node: its URL, workers and the shards it has caught up
//                            (core/cluster/membership.ts); a heartbeat every 2 s.
//   KV apm-placement         "shards": shard → owners (core/cluster/placement.ts), changed by
//                            compare-and-set.
//   KV apm-queries           stored-query definitions (core/cluster/queries.ts).

import { readFileSync } from 'node:fs';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { DiscardPolicy, jetstreamManager, StorageType, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { Body, decodeFrame, Encoder } from './codec.js';
import { batchBytesMax, shardsMax } from './limits.js';
import { encodeRackSecond, isValidShardCount, sectionAt, type RackSecondMessage } from './section.js';

export const buckets = { cluster: 'apm-cluster', nodes: 'apm-nodes', placement: 'apm-placement', queries: 'apm-queries' } as const;

export function streamOf(shard: number): string {
  return `APM_${shard}`;
}

export function subjectOf(shard: number): string {
  return `apm.shard.${shard}`;
}

/** Subject of stored-query windows as their evaluating node publishes them (core NATS, not a stream). */
export function resultsSubject(qid: string): string {
  return `apm.results.${qid}`;
}

export const encodingHeader = 'Apm-Enc';
export const encodingDeflate = 'deflate';

/** What every node and rack of one cluster must agree on (KV apm-cluster, key "settings"). */
export interface ClusterSettings {
  format: 1;
  /** S: shards (metric hash lo32 mod S). */
  shards: number;
  /** Core nodes that own each shard. */
  ownerReplicas: number;
  /** Replicas of each shard's stream (≤ the NATS servers). */
  streamReplicas: number;
  /** A message older than this leaves its stream; a node further behind rebuilds from a live owner's rows. */
  streamMaxAgeSeconds: number;
  /** A re-published message inside this window is stored once (longer than any rack retry of one message). */
  duplicateWindowSeconds: number;
  /**
   * True when the cluster was made by nodes that read packed points (schema/pointpack.ts): racks
   * pack only then. Settings written before the pack lack it, and their racks keep sending
   * unpacked sections, which every node reads.
   */
  pointPack?: boolean;
}

export const clusterSettingsDefaults: Omit<ClusterSettings, 'shards' | 'streamReplicas'> = {
  format: 1,
  ownerReplicas: 2,
  streamMaxAgeSeconds: 86_400,
  duplicateWindowSeconds: 600,
  pointPack: true,
};

/** Why `mine` cannot join a cluster whose settings are `theirs` (null: they agree). */
export function settingsDisagree(theirs: ClusterSettings, mine: Partial<ClusterSettings>): string | null {
  for (const k of ['format', 'shards', 'ownerReplicas', 'streamReplicas', 'streamMaxAgeSeconds', 'duplicateWindowSeconds'] as const) {
    if (mine[k] !== undefined && mine[k] !== theirs[k]) return `${k} is ${String(mine[k])} here but ${String(theirs[k])} in the cluster (KV ${buckets.cluster}, key settings)`;
  }
  return null;
}

/** Parses and checks settings read from KV (a bad entry is a clear error, never a guess). */
export function parseSettings(text: string): ClusterSettings {
  const s = JSON.parse(text) as Partial<ClusterSettings>;
  const int = (v: unknown, min: number, max: number) => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
  if (s.format !== 1) throw new Error(`cluster settings format ${String(s.format)}; this build reads format 1`);
  if (s.shards === undefined || !isValidShardCount(s.shards)) throw new Error(`cluster settings: shards ${String(s.shards)} is not a power of two in 1..${shardsMax}`);
  if (!int(s.ownerReplicas, 1, 5) || !int(s.streamReplicas, 1, 5) || !int(s.streamMaxAgeSeconds, 10, 10 * 365 * 86_400) || !int(s.duplicateWindowSeconds, 1, 86_400)) {
    throw new Error(`cluster settings out of range: ${text.slice(0, 300)}`);
  }
  if (s.pointPack !== undefined && typeof s.pointPack !== 'boolean') throw new Error(`cluster settings: pointPack ${JSON.stringify(s.pointPack)} is not true or false`);
  if (s.duplicateWindowSeconds! > s.streamMaxAgeSeconds!) throw new Error(`cluster settings: the duplicate window (${s.duplicateWindowSeconds} s) is longer than the streams' max age (${s.streamMaxAgeSeconds} s)`);
  return s as ClusterSettings;
}

// ---------------------------------------------------------------------------------------------
// Messages

export interface LogMessage {
  shard: number;
  subject: string;
  msgId: string;
  /** Raw deflate of a RackSecond holding this shard's section only. */
  data: Uint8Array;
}

export function msgIdOf(m: Pick<RackSecondMessage, 'rack' | 'origin' | 'session' | 'seq'>, shard: number): string {
  return `${m.rack}/${m.origin ?? 0}/${m.session}/${m.seq}/${shard}`;
}

/** A rack second's body split into one compressed message per shard section. Throws on a body that does not decode. */
export function logMessages(body: Uint8Array, enc = new Encoder()): LogMessage[] {
  const r = decodeFrame(body, batchBytesMax, { expect: Body.RackSecond });
  if (!r.ok) throw new Error(`not a rack second (${r.reason}): ${r.detail}`);
  if (r.msg.type !== 'rackSecond') throw new Error(`not a rack second: a ${r.msg.type}`);
  const m = r.msg;
  const out: LogMessage[] = [];
  for (let i = 0; i < m.sectionShards.length; i++) {
    const shard = m.sectionShards[i]!;
    const one = encodeRackSecond(enc, m, [{ shard, frame: sectionAt(m, i) }], m.servers);
    out.push({ shard, subject: subjectOf(shard), msgId: msgIdOf(m, shard), data: deflateRawSync(one, { level: 1 }) });
  }
  return out;
}

/** The RackSecond body of a message (inflated, bounded). Throws on a bad message. */
export function openLogMessage(data: Uint8Array, encoding: string | undefined): Uint8Array {
  if (encoding === undefined || encoding === '') return data;
  if (encoding !== encodingDeflate) throw new Error(`unknown ${encodingHeader} ${JSON.stringify(encoding)}`);
  return inflateRawSync(data, { maxOutputLength: batchBytesMax });
}

// ---------------------------------------------------------------------------------------------
// Connecting

export interface NatsAuth {
  /** A .creds file (JWT + NKey seed), --nats-creds. */
  credsFile?: string;
  user?: string;
  /** A file whose first line is the password, --nats-password-file. */
  passwordFile?: string;
}

/** Parses --nats: comma-separated nats:// URLs, loopback or not (the caller decides). */
export function parseNatsUrls(value: string): string[] {
  const urls = value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (urls.length === 0) throw new Error('--nats needs at least one URL, e.g. nats://127.0.0.1:4222');
  for (const u of urls) {
    let p: URL;
    try {
      p = new URL(u.includes('://') ? u : `nats://${u}`);
    } catch {
      throw new Error(`--nats: ${JSON.stringify(u)} is not a URL like nats://127.0.0.1:4222`);
    }
    if (p.protocol !== 'nats:' && p.protocol !== 'tls:') throw new Error(`--nats: ${u} is not a nats:// or tls:// URL`);
  }
  return urls;
}

/**
 * Connects to the NATS servers (reconnecting for ever: a dead NATS server is waited out, never a
 * reason to stop) with the credentials given. Credentials refused at the first connection fail
 * it (a clear start-up error); refused later (a server restarting while its accounts load, a
 * password being changed) the client keeps reconnecting: nats.js's default gave up after two
 * refusals in a row and closed the connection for good, and a rack then spooled until its spool
 * dropped batches while its log still said it was reconnecting.
 */
export async function connectNats(servers: string[], auth: NatsAuth, name: string): Promise<NatsConnection> {
  const opts: Parameters<typeof connect>[0] = { servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 500, waitOnFirstConnect: true, timeout: 5000, ignoreAuthErrorAbort: true };
  if (auth.credsFile !== undefined) {
    const creds = readFileSync(auth.credsFile);
    opts.authenticator = credsAuthenticator(new Uint8Array(creds));
  } else if (auth.user !== undefined) {
    opts.user = auth.user;
    if (auth.passwordFile !== undefined) opts.pass = readFileSync(auth.passwordFile, 'utf8').split('\n')[0]!.trim();
  }
  return connect(opts);
}

/** JetStream's manager once the NATS servers have a JetStream leader (a new cluster takes a second or two). */
export async function waitJetStream(nc: NatsConnection, timeoutMs = 30_000): Promise<JetStreamManager> {
  const until = Date.now() + timeoutMs;
  let last: unknown = null;
  while (Date.now() < until) {
    try {
      return await jetstreamManager(nc, { timeout: 2000 });
    } catch (err) {
      last = err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`JetStream did not answer within ${timeoutMs} ms (${(last as Error | null)?.message ?? 'no answer'}); is JetStream enabled on the NATS servers?`);
}

/** Creates every shard's stream the settings call for (an existing one is left as it is). */
export async function ensureStreams(jsm: JetStreamManager, s: ClusterSettings): Promise<void> {
  const names = new Set<string>();
  await retryJetStream('listing the streams', async () => {
    for await (const n of jsm.streams.names()) names.add(n);
  });
  for (let k = 0; k < s.shards; k++) {
    if (names.has(streamOf(k))) continue;
    await retryJetStream(`creating stream ${streamOf(k)}`, () => jsm.streams.add({
      name: streamOf(k),
      subjects: [subjectOf(k)],
      storage: StorageType.File,
      num_replicas: s.streamReplicas,
      duplicate_window: s.duplicateWindowSeconds * 1e9,
      max_age: s.streamMaxAgeSeconds * 1e9,
      discard: DiscardPolicy.Old,
    }));
  }
}

/** The cluster's settings as KV apm-cluster holds them, or null when no node has written them yet. */
export async function readSettings(nc: NatsConnection): Promise<ClusterSettings | null> {
  let kv;
  try {
    kv = await new Kvm(nc).open(buckets.cluster);
    await kv.status();
  } catch {
    return null;
  }
  const e = await kv.get('settings');
  if (e === null || e.operation !== 'PUT') return null;
  return parseSettings(e.string());
}

/** Retries of "subjects overlap with an existing stream" (a create racing another node's ends at the first). */
export const overlapRetries = 3;

/**
 * Runs a JetStream administration call again while it times out or finds no leader (a new
 * cluster elects its leaders for a few seconds; nodes starting together create the same
 * streams at once), for at most `forMs`. Any other error is thrown at once.
 *
 * Two nodes creating one stream (a KV bucket) at the same moment: the server may refuse the
 * second with "subjects overlap with an existing stream" while the first is being created; asked
 * again, the same create finds the stream there and returns it (a node exited at start with that
 * error in test/cluster.process.test.ts, once, when its nodes started together). That race ends
 * at the next call, so the error is asked about again only `overlapRetries` times: an overlap
 * that stays is another stream of the account capturing the subjects, said at once, not after
 * `forMs` of waiting.
 */
export async function retryJetStream<T>(what: string, f: () => Promise<T>, forMs = 60_000): Promise<T> {
  const until = Date.now() + forMs;
  let waitMs = 200;
  let overlaps = 0;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      const m = (err as Error).message;
      // The client wraps some answers: a KV put that found no stream leader yet ("no responders")
      // is thrown as "jetstream is not enabled" (a node exited at start with it in the full suite).
      const causes: string[] = [];
      for (let e: unknown = (err as Error).cause, depth = 0; depth < 4 && e instanceof Error; depth++, e = e.cause) causes.push(e.message);
      if (/subjects overlap with an existing stream/i.test(m) && ++overlaps > overlapRetries) {
        throw new Error(`${what}: ${m} (still after ${overlapRetries} retries: another stream of this NATS account captures these subjects; remove it, or give apm an account of its own)`, { cause: err });
      }
      const transient = [m, ...causes].some((x) => /timeout|no responders|leader|temporarily unavailable|insufficient resources|503|subjects overlap with an existing stream/i.test(x)) || (err as Error).name === 'TimeoutError';
      if (!transient || Date.now() + waitMs > until) throw new Error(`${what}: ${m}`, { cause: err });
      await new Promise((r) => setTimeout(r, waitMs));
      waitMs = Math.min(2000, waitMs * 2);
    }
  }
}
