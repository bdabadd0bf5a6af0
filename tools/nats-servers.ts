// Real nats-server processes for tests and benches (issue 13): a cluster of N servers with
// JetStream on loopback ports, each with its own store directory, that a test can SIGKILL,
// stop and start again. Debian's nats-server (apt package nats-server; /usr/sbin) is used.
// Users: `core` (everything), `rack` (publishes only to apm.shard.> and reads the apm-cluster
// settings) and `reader` (nothing but connect) — the permissions README.md shows.

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';

export interface NatsUsers {
  core: { user: string; pass: string };
  rack: { user: string; pass: string };
}

export const testNatsUsers: NatsUsers = { core: { user: 'core', pass: 'core-secret-0123' }, rack: { user: 'rack', pass: 'rack-secret-0123' } };

/** The nats-server binary: $NATS_SERVER, on PATH, or Debian's /usr/sbin/nats-server. */
export function natsServerBinary(): string {
  if (process.env.NATS_SERVER) return process.env.NATS_SERVER;
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir !== '' && existsSync(join(dir, 'nats-server'))) return join(dir, 'nats-server');
  if (existsSync('/usr/sbin/nats-server')) return '/usr/sbin/nats-server';
  throw new Error('nats-server not found: install Debian\'s nats-server (apt-get install nats-server) or set NATS_SERVER');
}

/** A free loopback TCP port (the kernel's choice; a test binds it right after). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a !== null ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

/** The authorization block of a server's configuration (README.md shows the same). */
export function natsAuthorization(u: NatsUsers): string {
  return `authorization {
  users = [
    { user: "${u.core.user}", password: "${u.core.pass}" }
    { user: "${u.rack.user}", password: "${u.rack.pass}",
      permissions: {
        publish: { allow: ["apm.shard.>", "$JS.API.INFO", "$JS.API.STREAM.INFO.KV_apm-cluster", "$JS.API.DIRECT.GET.KV_apm-cluster.>", "$JS.API.STREAM.MSG.GET.KV_apm-cluster"] }
        subscribe: { allow: ["_INBOX.>"] }
      } }
  ]
}`;
}

interface ServerSlot {
  name: string;
  port: number;
  clusterPort: number;
  config: string;
  proc: ChildProcess | null;
  log: string[];
}

export class NatsCluster {
  private constructor(
    private readonly slots: ServerSlot[],
    readonly users: NatsUsers,
  ) {}

  /** Starts `n` clustered servers (one alone runs without a cluster block) and waits until each accepts connections. */
  static async start(opts: { dir: string; n: number; users?: NatsUsers; maxFileBytes?: number }): Promise<NatsCluster> {
    const users = opts.users ?? testNatsUsers;
    const ports = await Promise.all(Array.from({ length: opts.n }, () => freePort()));
    const clusterPorts = await Promise.all(Array.from({ length: opts.n }, () => freePort()));
    const slots: ServerSlot[] = ports.map((port, i) => {
      const name = `n${i + 1}`;
      const store = join(opts.dir, name);
      mkdirSync(store, { recursive: true });
      const routes = clusterPorts.filter((_, j) => j !== i).map((p) => `nats-route://127.0.0.1:${p}`);
      const cluster = opts.n === 1 ? '' : `cluster {\n  name: apm\n  listen: 127.0.0.1:${clusterPorts[i]}\n  routes: [${routes.join(', ')}]\n}\n`;
      const config = join(opts.dir, `${name}.conf`);
      writeFileSync(
        config,
        `server_name: ${name}\nlisten: 127.0.0.1:${port}\njetstream {\n  store_dir: "${store}"\n  max_memory_store: 64MB\n  max_file_store: ${opts.maxFileBytes ?? 8 * 1024 ** 3}\n}\n${cluster}${natsAuthorization(users)}\n`,
      );
      return { name, port, clusterPort: clusterPorts[i]!, config, proc: null, log: [] };
    });
    const c = new NatsCluster(slots, users);
    await Promise.all(slots.map((_, i) => c.startServer(i)));
    return c;
  }

  get size(): number {
    return this.slots.length;
  }

  /** Client URLs of every server (comma-joined for --nats). */
  get urls(): string[] {
    return this.slots.map((s) => `nats://127.0.0.1:${s.port}`);
  }

  url(i: number): string {
    return `nats://127.0.0.1:${this.slots[i]!.port}`;
  }

  pid(i: number): number | undefined {
    return this.slots[i]!.proc?.pid;
  }

  /** The last lines a server printed (for a failing test's message). */
  log(i: number): string {
    return this.slots[i]!.log.join('');
  }

  async startServer(i: number): Promise<void> {
    const s = this.slots[i]!;
    if (s.proc !== null) return;
    const proc = spawn(natsServerBinary(), ['-c', s.config], { stdio: ['ignore', 'pipe', 'pipe'] });
    s.proc = proc;
    const keep = (d: Buffer) => {
      s.log.push(d.toString());
      if (s.log.length > 200) s.log.splice(0, s.log.length - 200);
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    proc.once('exit', () => {
      if (s.proc === proc) s.proc = null;
    });
    const until = Date.now() + 15_000;
    while (Date.now() < until) {
      if (s.proc === null) throw new Error(`nats-server ${s.name} exited at start:\n${this.log(i)}`);
      if (await canConnect(s.port)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`nats-server ${s.name} did not accept connections within 15 s:\n${this.log(i)}`);
  }

  /** SIGKILL (no flush, no goodbye to its routes). */
  kill(i: number): Promise<void> {
    return this.signal(i, 'SIGKILL');
  }

  /** A clean stop (lame-duck skipped: SIGTERM). */
  stopServer(i: number): Promise<void> {
    return this.signal(i, 'SIGTERM');
  }

  private async signal(i: number, sig: NodeJS.Signals): Promise<void> {
    const p = this.slots[i]!.proc;
    if (p === null || p.exitCode !== null) return;
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill(sig);
    await exited;
  }

  async stop(): Promise<void> {
    await Promise.all(this.slots.map((_, i) => this.stopServer(i)));
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port });
    // A server that accepts sends its INFO line first.
    sock.once('data', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
    sock.setTimeout(1000, () => {
      sock.destroy();
      resolve(false);
    });
  });
}
