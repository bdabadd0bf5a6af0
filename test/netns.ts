// Network namespaces for tests and the loss benchmark (issue 8): real packet loss dropped by
// the kernel (an nftables rule with a random share), with every process and every packet kept
// inside a namespace the caller creates and deletes. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)
// and iproute2 + nftables; without them `Netns.create` throws saying so — never a silent skip.

import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { cliPath, spawnDaemon, type Daemon } from './proc.js';

/** The built `apm`: beside this file when it runs from dist/ (apm bench), else proc.ts's (vitest on sources). */
const apmCli = import.meta.url.endsWith('.js') ? fileURLToPath(new URL('../tools/cli.js', import.meta.url)) : cliPath;

const run = promisify(execFile);
let created = 0;

/** What a request made from inside the namespace answered (status 0: the request failed). */
export interface NsResponse {
  status: number;
  text: string;
}

/**
 * A child process inside the namespace that performs HTTP requests for the caller (the
 * caller's own sockets live in the root namespace and cannot reach the namespace's loopback).
 * One JSON line per request on its stdin, one per answer on its stdout.
 */
const fetcherScript = `
const rl = require('node:readline').createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const r = JSON.parse(line);
  let out;
  try {
    const res = await fetch(r.url, { method: r.method, headers: r.headers, body: r.body });
    out = { id: r.id, status: res.status, text: await res.text() };
  } catch (err) {
    out = { id: r.id, status: 0, text: String(err && err.cause ? err.cause : err) };
  }
  process.stdout.write(JSON.stringify(out) + '\\n');
});
rl.on('close', () => process.exit(0));
`;

export class Netns {
  private readonly daemons: Daemon[] = [];
  private fetcher: { daemon: Daemon; pending: Map<number, (r: NsResponse) => void>; nextId: number } | null = null;
  private deleted = false;

  private constructor(readonly name: string) {}

  /** Creates `apm-<tag>-<pid>-<n>` with loopback up. Throws with what to do when not permitted. */
  static async create(tag: string): Promise<Netns> {
    const name = `apm-${tag}-${process.pid}-${++created}`;
    try {
      await run('ip', ['netns', 'add', name]);
    } catch (err) {
      const uid = process.getuid?.() ?? -1;
      throw new Error(
        `cannot create network namespace ${name} ('ip netns add' failed as uid ${uid}: ${(err as Error).message.trim()}). ` +
          'This test injects real kernel packet loss with nftables inside its own namespace: run it as root (CI does) with iproute2 and nftables installed.',
        { cause: err },
      );
    }
    const ns = new Netns(name);
    try {
      await ns.exec(['ip', 'link', 'set', 'lo', 'up']);
    } catch (err) {
      await ns.delete();
      throw err;
    }
    return ns;
  }

  /** Runs a command inside the namespace; resolves with its stdout, rejects on a non-zero exit. */
  async exec(cmd: string[]): Promise<string> {
    const { stdout } = await run('ip', ['netns', 'exec', this.name, ...cmd], { maxBuffer: 1 << 24 });
    return stdout;
  }

  /** Starts `apm <args>` inside the namespace (`ip netns exec` execs, so signals reach apm itself). */
  spawnApm(args: string[]): Daemon {
    const d = spawnDaemon('ip', ['netns', 'exec', this.name, process.execPath, apmCli, ...args]);
    this.daemons.push(d);
    return d;
  }

  /**
   * Drops `percent`% of UDP datagrams to `port` at the input hook, chosen at random by the
   * kernel, and counts them. Replaces a rule set by an earlier call.
   */
  async dropUdp(port: number, percent: number): Promise<void> {
    if (!Number.isInteger(percent) || percent < 0 || percent > 100) throw new Error(`dropUdp: percent ${percent} must be an integer 0..100`);
    await this.exec(['nft', 'add', 'table', 'inet', 'apmloss']);
    await this.exec(['nft', 'flush', 'table', 'inet', 'apmloss']);
    await this.exec(['nft', 'add', 'chain', 'inet', 'apmloss', 'in', '{ type filter hook input priority 0; }']);
    await this.exec(['nft', 'add', 'rule', 'inet', 'apmloss', 'in', 'udp', 'dport', String(port), 'numgen', 'random', 'mod', '100', '<', String(percent), 'counter', 'drop']);
  }

  /** Packets the dropUdp rule has dropped so far (its nftables counter). */
  async droppedPackets(): Promise<number> {
    const json = JSON.parse(await this.exec(['nft', '-j', 'list', 'chain', 'inet', 'apmloss', 'in'])) as { nftables: { rule?: { expr: { counter?: { packets: number } }[] } }[] };
    for (const item of json.nftables) for (const e of item.rule?.expr ?? []) if (e.counter !== undefined) return e.counter.packets;
    throw new Error(`no counter in nftables chain inet apmloss in of ${this.name}: was dropUdp called?`);
  }

  /** An HTTP request made from inside the namespace. */
  async request(url: string, init: { method?: string; body?: string; headers?: Record<string, string> } = {}): Promise<NsResponse> {
    if (this.fetcher === null) {
      const daemon = spawnDaemon('ip', ['netns', 'exec', this.name, process.execPath, '-e', fetcherScript], { stdin: true });
      const pending = new Map<number, (r: NsResponse) => void>();
      daemon.onLine = (line) => {
        if (!line.startsWith('{')) return;
        const r = JSON.parse(line) as NsResponse & { id: number };
        pending.get(r.id)?.(r);
        pending.delete(r.id);
      };
      this.daemons.push(daemon);
      this.fetcher = { daemon, pending, nextId: 1 };
    }
    const f = this.fetcher;
    const id = f.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        f.pending.delete(id);
        reject(new Error(`request ${url} in ${this.name}: no answer within 15 s; fetcher output:\n${f.daemon.output.slice(-20).join('\n')}`));
      }, 15_000);
      f.pending.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
      f.daemon.child.stdin!.write(`${JSON.stringify({ id, url, ...init })}\n`);
    });
  }

  /** GET returning parsed JSON; throws on a non-2xx answer with the body. */
  async getJson<T>(url: string): Promise<T> {
    const r = await this.request(url);
    if (r.status < 200 || r.status >= 300) throw new Error(`GET ${url} in ${this.name} answered ${r.status}: ${r.text.slice(0, 300)}`);
    return JSON.parse(r.text) as T;
  }

  /** Kills every process started here (SIGKILL), then deletes the namespace. Safe to call twice. */
  async delete(): Promise<void> {
    for (const d of this.daemons.splice(0)) await d.stop('SIGKILL');
    this.fetcher = null;
    if (this.deleted) return;
    this.deleted = true;
    await run('ip', ['netns', 'delete', this.name]).catch((err: Error) => console.error(`could not delete network namespace ${this.name}: ${err.message}`));
  }
}
