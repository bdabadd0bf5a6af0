// A core cluster on this machine for tests and benches (issue 13): real nats-server processes
// (tools/nats-servers.ts), real `apm core --nats` processes, and a publisher that writes rack
// seconds to the shards' streams exactly as `apm rack --nats` does (schema/log.ts).

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, type JetStreamClient } from '@nats-io/jetstream';
import { connectNats, encodingDeflate, encodingHeader, logMessages } from '../schema/log.js';
import { Encoder } from '../schema/codec.js';
import type { ClusterStatus } from '../core/cluster/status.js';
import { NatsCluster, testNatsUsers } from './nats-servers.js';

export interface CoreProc {
  id: string;
  data: string;
  child: ChildProcess;
  url: string;
  output: string[];
}

export class ClusterHarness {
  readonly cores = new Map<string, CoreProc>();
  private nc: NatsConnection | null = null;
  /** The publisher's connection, made once: publishes that start together share it (each used to dial its own, and stop() closed only the last). */
  private js: Promise<JetStreamClient> | null = null;
  private readonly enc = new Encoder();
  readonly passFile: string;

  private constructor(
    readonly dir: string,
    readonly nats: NatsCluster,
  ) {
    this.passFile = join(dir, 'core.pass');
    writeFileSync(this.passFile, `${testNatsUsers.core.pass}\n`);
  }

  static async start(dir: string, natsServers = 3): Promise<ClusterHarness> {
    mkdirSync(dir, { recursive: true });
    const nats = await NatsCluster.start({ dir: join(dir, 'nats'), n: natsServers });
    return new ClusterHarness(dir, nats);
  }

  /** Starts `apm core --nats` as node `id` (its data directory kept across restarts) and waits for its ready line. */
  async startCore(id: string, extra: string[] = [], nodeArgs: string[] = []): Promise<CoreProc> {
    const data = join(this.dir, `core-${id}`);
    // Through tools/apm, as an operator starts a node (its node flags included; it execs node, so
    // the pid is the node's). nodeArgs: e.g. --cpu-prof to profile a node, as APM_NODE_ARGS.
    const child = spawn(apmLauncher(), ['core', '--listen', '127.0.0.1:0', '--data', data, '--nats', this.nats.urls.join(','), '--node', id, '--nats-user', 'core', '--nats-password-file', this.passFile, ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, APM_NODE_ARGS: nodeArgs.join(' ') } });
    const output: string[] = [];
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`core ${id} did not start within 60 s:\n${output.join('')}`)), 60_000);
      const on = (d: Buffer) => {
        output.push(d.toString());
        if (output.length > 400) output.splice(0, output.length - 400);
        const m = /apm core: (http:\/\/127\.0\.0\.1:\d+)\//.exec(output.join(''));
        if (m !== null) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      };
      child.stdout!.on('data', on);
      child.stderr!.on('data', on);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`core ${id} exited with ${code} at start:\n${output.join('')}`));
      });
    });
    const p: CoreProc = { id, data, child, url, output };
    this.cores.set(id, p);
    return p;
  }

  async killCore(id: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.cores.get(id);
    if (p === undefined) return;
    this.cores.delete(id);
    if (p.child.exitCode !== null || p.child.signalCode !== null) return;
    const exited = new Promise((r) => p.child.once('exit', r));
    p.child.kill(signal);
    await exited;
  }

  /** GET /api/v1/cluster of one node. */
  async status(id: string): Promise<ClusterStatus> {
    const p = this.cores.get(id);
    if (p === undefined) throw new Error(`no core ${id}`);
    const r = await fetch(`${p.url}/api/v1/cluster`);
    if (!r.ok) throw new Error(`${p.url}/api/v1/cluster: ${r.status}`);
    return (await r.json()) as ClusterStatus;
  }

  /**
   * True once the placement has no joiners and every shard has `replicas` live owners that are
   * ready, as node `id` sees it (with `nodes` live nodes in all).
   */
  async settled(id: string, nodes: number): Promise<boolean> {
    const s = await this.status(id).catch(() => null);
    if (s === null || s.placement.shards.length !== s.settings.shards) return false;
    const live = s.nodes.filter((n) => n.live);
    if (live.length !== nodes) return false;
    const want = Math.min(s.settings.ownerReplicas, nodes);
    return s.placement.shards.every((x, k) => x.joining.length === 0 && x.owners.length === want && x.owners.every((o) => live.find((n) => n.id === o)?.ready.includes(k) === true));
  }

  /** Publishes one rack second as a rack does: one message per shard, Msg-Id de-duplicated. Returns the messages acknowledged. */
  async publish(body: Uint8Array): Promise<number> {
    this.js ??= connectNats(this.nats.urls, { user: 'core', passwordFile: this.passFile }, 'apm-harness').then((nc) => {
      this.nc = nc;
      return jetstream(nc);
    }, (err: unknown) => {
      this.js = null; // the next publish dials again
      throw err;
    });
    const js = await this.js;
    const acks = await Promise.all(
      logMessages(body, this.enc).map((m) => {
        const h = headers(); // one per message: publish() writes the Msg-Id into it
        h.set(encodingHeader, encodingDeflate);
        return js.publish(m.subject, m.data, { msgID: m.msgId, headers: h, timeout: 10_000 });
      }),
    );
    return acks.length;
  }

  /** Every node's view of the cluster (nodes, placement, its consumers) and its last log lines: a failing test's or bench's message. */
  async describe(): Promise<string> {
    const out: string[] = [];
    for (const id of this.cores.keys()) {
      const st = await this.status(id).catch((err: Error) => err.message);
      if (typeof st === 'string') out.push(`${id}: ${st}`);
      else out.push(`${id}: nodes ${JSON.stringify(st.nodes.map((n) => [n.id, n.live, n.ready]))} placement ${JSON.stringify(st.placement.shards.map((x) => [x.owners, x.joining]))} shards ${JSON.stringify(st.shards)}`);
    }
    for (const c of this.cores.values()) out.push(`${c.id} log: ${c.output.join('').slice(-1500)}`);
    return out.join('\n');
  }

  async stop(): Promise<void> {
    // All at once: each node's graceful stop (consumers drained, heartbeat removed) takes seconds.
    await Promise.all([...this.cores.keys()].map((id) => this.killCore(id, 'SIGTERM')));
    // A connection still being made is awaited first: else it would be left reconnecting.
    const dialling = this.js;
    this.js = null;
    await dialling?.catch(() => undefined);
    await this.nc?.close().catch(() => undefined);
    this.nc = null;
    await this.nats.stop();
  }
}

/** The checkout's tools/apm, from this file in dist/tools/ or in tools/ (tests run the source). */
function apmLauncher(): string {
  const here = fileURLToPath(import.meta.url);
  return here.includes('/dist/tools/') ? here.replace(/\/dist\/tools\/cluster-harness\.js$/, '/tools/apm') : here.replace(/cluster-harness\.ts$/, 'apm');
}
