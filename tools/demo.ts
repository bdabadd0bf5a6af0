// `apm demo` (what `npm start` runs): the whole system on this machine — a core with its data
// in ./data, two racks, a real edge for this host, and a simulated fleet — with the URLs to
// look at and a status line every few seconds. Ctrl-C stops everything cleanly.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseIntOption, parseFlags } from '../lib/args.js';
import { readKeyFile } from '../schema/auth.js';
import { Simulator } from './simulate.js';

export const demoHelp = `apm demo: core + 2 racks + an edge for this host + a simulated fleet, data in ./data

Usage: apm demo [--servers 80] [--metrics 200] [--data ./data] [--port 8080]`;

interface Child {
  name: string;
  proc: ChildProcess;
}

/** Children start through the launcher, which sets per-daemon V8 flags. */
const apm = fileURLToPath(new URL('../../tools/apm', import.meta.url));

function start(name: string, args: string[], ready: RegExp): Promise<Child> {
  return new Promise((resolve, reject) => {
    // Own process group: Ctrl-C reaches the demo alone, which then stops the tiers in order
    // (edge, racks, core) so that each one's last batch still reaches the next.
    const proc = spawn(apm, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, APM_EXIT_WITH_PARENT: '1' } });
    const lines: string[] = [];
    const onLine = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n').filter((l) => l.length > 0)) {
        lines.push(line);
        if (ready.test(line)) resolve({ name, proc });
        else if (/error|refus|unavailable|failed/i.test(line)) console.error(`  [${name}] ${line}`);
      }
    };
    proc.stdout!.on('data', onLine);
    proc.stderr!.on('data', onLine);
    proc.once('exit', (code) => reject(new Error(`${name} exited (${code}) during start-up:\n${lines.join('\n')}`)));
  });
}

/** The newest window of the stored query called `name`, as text ('' when none yet). */
async function latest(core: string, name: string): Promise<string> {
  try {
    const qs = (await (await fetch(`${core}/api/v1/queries`)).json()) as { queries: { id: string; name: string }[] };
    const q = qs.queries.find((x) => x.name === name);
    if (q === undefined) return '';
    const r = (await (await fetch(`${core}/api/v1/queries/${q.id}/results?from=-1m`)).json()) as { windows: { values: Record<string, number>; servers: number }[] };
    const w = r.windows[r.windows.length - 1];
    return w === undefined ? '' : `${Object.entries(w.values).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')} over ${w.servers} servers`;
  } catch {
    return '';
  }
}

async function prom(url: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  try {
    const text = await (await fetch(url)).text();
    for (const line of text.split('\n')) {
      if (line.startsWith('#') || line === '') continue;
      const i = line.lastIndexOf(' ');
      out.set(line.slice(0, i), Number(line.slice(i + 1)));
    }
  } catch {
    // not up (yet): an empty reading
  }
  return out;
}

/**
 * A rack's datagram key file (DESIGN §3): created once per rack in the data directory (mode 0600),
 * with its own secret and naming its rack, shared by that rack, its edges and its simulated
 * servers, so the demo runs signed like a real fleet: a datagram for one rack is refused by the
 * other (issue 16.5: every MAC covers the rack id, and no two racks share a secret).
 */
function demoKeyFile(data: string, rack: string): string {
  const file = `${data}/${rack}.keys`;
  if (!existsSync(file)) writeFileSync(file, `# apm demo: datagram key of rack ${rack} and its edges ("<key id> <hex secret> rack=<rack id>")\n1 ${randomBytes(32).toString('hex')} rack=${rack}\n`, { mode: 0o600 });
  return file;
}

/** The mission's example queries, created once (a second start finds them in ./data). */
async function ensureQueries(core: string, host: string): Promise<void> {
  const want = [
    { name: 'Fleet CPU (%)', query: 'FROM sim-* SELECT sim.cpu.0 WINDOW 5s COMPUTE min, avg, max, p99' },
    { name: 'Un-ACKed messages, rack r1', query: 'FROM rack:r1 SELECT sim.queue_unacked.17 WINDOW 5s COMPUTE max, avg, sum' },
    { name: 'Shopping carts', query: 'FROM * SELECT sim.carts.19 WINDOW 1m COMPUTE sum, avg' },
    { name: 'RPC count', query: 'FROM * SELECT sim.rpc_count.8 WINDOW 5s COMPUTE sum, count' },
    { name: 'RPC latency (ms)', query: 'FROM sim-* SELECT sim.rpc_latency_ms.0 WINDOW 5s COMPUTE p50, p99, max' },
    { name: `CPU of ${host} (%)`, query: `FROM ${host} SELECT host.cpu.total WINDOW 5s COMPUTE avg, max` },
  ];
  const have = (await (await fetch(`${core}/api/v1/queries`)).json()) as { queries: { name: string }[] };
  for (const q of want) {
    if (have.queries.some((h) => h.name === q.name)) continue;
    const r = await fetch(`${core}/api/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(q) });
    if (r.status !== 201) console.error(`  could not create "${q.name}": ${await r.text()}`);
  }
  console.log(`  stored queries: ${want.map((q) => q.name).join('; ')}`);
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseFlags(
    argv,
    { servers: { type: 'string' }, metrics: { type: 'string' }, data: { type: 'string', default: './data' }, port: { type: 'string' }, help: { type: 'boolean', default: false } },
    demoHelp,
  );
  if (values.help) {
    console.log(demoHelp);
    return;
  }
  const servers = parseIntOption(values.servers, '--servers', 80, 1, 10_000);
  const metrics = parseIntOption(values.metrics, '--metrics', 200, 1, 2000);
  const port = parseIntOption(values.port, '--port', 8080, 1, 65535);
  const data = values.data!;
  mkdirSync(data, { recursive: true });
  const keyFiles = { r1: demoKeyFile(data, 'r1'), r2: demoKeyFile(data, 'r2') };
  const core = `http://127.0.0.1:${port}`;
  const children: Child[] = [];
  let sim: Simulator | null = null;
  const stopAll = async (code: number) => {
    await sim?.stop().catch(() => undefined);
    for (const c of [...children].reverse()) {
      c.proc.kill('SIGTERM');
      await new Promise((r) => (c.proc.exitCode !== null ? r(null) : c.proc.once('exit', r)));
    }
    process.exit(code);
  };
  process.once('SIGINT', () => {
    console.log('\nstopping: edge, racks, core (each flushes what it holds)…');
    void stopAll(0);
  });
  process.once('SIGTERM', () => void stopAll(0));
  process.once('exit', () => children.forEach((c) => c.proc.exitCode === null && c.proc.kill('SIGKILL')));
  try {
    console.log(`apm demo: starting (data in ${data})`);
    setAsideOldCore(`${data}/core`);
    process.stdout.write('  core …');
    children.push(await start('core', ['core', '--listen', `127.0.0.1:${port}`, '--data', `${data}/core`], /apm core: http/));
    console.log(` ${core}`);
    for (const [i, r] of (['r1', 'r2'] as const).entries()) {
      process.stdout.write(`  rack ${r} …`);
      children.push(await start(`rack ${r}`, ['rack', '--rack', r, '--listen', `127.0.0.1:${7070 + 2 * i}`, '--http', `127.0.0.1:${7071 + 2 * i}`, '--core', core, '--spool', `${data}/rack-${r}`, '--key-file', keyFiles[r]], /apm rack/));
      console.log(` UDP 127.0.0.1:${7070 + 2 * i}, metrics http://127.0.0.1:${7071 + 2 * i}/metrics`);
    }
    const host = hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64) || 'localhost';
    process.stdout.write(`  edge ${host} (this host's /proc, StatsD) …`);
    children.push(await start('edge', ['edge', '--server', host, '--rack', '127.0.0.1:7070', '--statsd', '127.0.0.1:8125', '--key-file', keyFiles.r1], /apm edge/));
    console.log(' StatsD on 127.0.0.1:8125 (try: echo "demo.hello:1|c" | nc -u -w0 127.0.0.1 8125)');
    process.stdout.write(`  simulated fleet: ${servers} servers × ${metrics} metrics over 2 racks …`);
    sim = new Simulator({
      racks: [
        { host: '127.0.0.1', port: 7070, keys: readKeyFile(keyFiles.r1) },
        { host: '127.0.0.1', port: 7072, keys: readKeyFile(keyFiles.r2) },
      ],
      servers,
      metrics,
      distShare: 0.05,
      datagramBytes: 1432,
      seed: 1,
      prefix: 'sim',
    });
    await sim.start();
    console.log(' sending');
  } catch (err) {
    console.error(`\napm demo: ${(err as Error).message}`);
    await stopAll(1);
    return;
  }
  const host = hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64) || 'localhost';
  await ensureQueries(core, host);
  console.log(`
Dashboard: ${core}/   (stored queries live, the fleet view, create/edit queries)

Also:
  ${core}/api/v1/servers     servers and racks the core has seen
  ${core}/api/v1/metrics     metric names and kinds
  ${core}/metrics            the core's own counters (ingest, rows, WAL, disk)
  ${core}/api/v1/queries     the stored queries; /api/v1/queries/<id>/results and /live (SSE)
  ./tools/apm query "FROM sim-* SELECT sim.rpc_latency_ms.0 WINDOW 5s COMPUTE p50, p99, max" --from -2m
  http://127.0.0.1:7071/metrics   rack r1 (datagrams, NACKs, recovered/lost parts, spool)
Datagrams from the edge and the simulated fleet are signed with their rack's key: ${keyFiles.r1}, ${keyFiles.r2}.
Ctrl-C stops everything; a second start reuses ${data}.
`);
  let last = await prom(`${core}/metrics`);
  let lastMs = Date.now();
  setInterval(async () => {
    const now = await prom(`${core}/metrics`);
    const r1 = await prom('http://127.0.0.1:7071/metrics');
    const dt = (Date.now() - lastMs) / 1000;
    const rate = ((now.get('apm_core_points_ingested_total') ?? 0) - (last.get('apm_core_points_ingested_total') ?? 0)) / dt;
    console.log(
      `  ${new Date().toISOString().slice(11, 19)}  ingest ${Math.round(rate).toLocaleString()} points/s  servers ${now.get('apm_core_servers') ?? 0}  metrics ${now.get('apm_core_metrics') ?? 0}  rows ${now.get('apm_core_rows_written_total') ?? 0}  disk ${((now.get('apm_core_disk_bytes') ?? 0) / 1048576).toFixed(1)} MiB  r1 recovered/lost parts ${r1.get('apm_rack_parts_recovered_total') ?? 0}/${r1.get('apm_rack_parts_lost_total') ?? 0}`,
    );
    last = now;
    lastMs = Date.now();
    const lat = await latest(core, 'RPC latency (ms)');
    if (lat !== '') console.log(`            RPC latency (ms) last window: ${lat}`);
  }, 5000).unref();
}

/**
 * A demo data directory from before the sharded core (one LMDB file, no core.json) is moved
 * aside, so `npm start` works after an upgrade; the old data stays on disk, untouched.
 */
function setAsideOldCore(dir: string): void {
  if (!existsSync(`${dir}/data.mdb`) || existsSync(`${dir}/core.json`)) return;
  const to = `${dir}-before-shards-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}`;
  renameSync(dir, to);
  console.log(`  (moved the earlier core's data in ${dir}, which this core cannot read, to ${to})`);
}
