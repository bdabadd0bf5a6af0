// Real `apm core --tokens` and `apm rack --token-file` processes (issue 8): tokens made by
// `apm token create` work, wrong ones are refused, roles hold, SIGHUP picks up new tokens,
// a public address without tokens is refused, and a rack whose token the core refuses keeps
// its batches spooled until it has a good one.

import { afterEach, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import { appendFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseProm } from './merge-helper.js';
import { cliPath, spawnApm, until, type Daemon } from './proc.js';

const run = promisify(execFile);
const daemons: Daemon[] = [];
const closers: (() => void)[] = [];
afterEach(async () => {
  for (const d of daemons.splice(0)) await d.stop('SIGKILL');
  for (const c of closers.splice(0)) c();
});

/** `apm token create` through the CLI; the token is the last line of stdout. */
async function createToken(role: string, name: string, file: string, extra: string[] = []): Promise<string> {
  const { stdout } = await run(process.execPath, [cliPath, 'token', 'create', '--role', role, '--name', name, '--tokens', file, ...extra]);
  const lines = stdout.trim().split('\n');
  return lines[lines.length - 1]!;
}

async function startCore(args: string[]): Promise<{ core: Daemon; url: string }> {
  const data = mkdtempSync(join(tmpdir(), 'apm-auth-core-'));
  const core = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', data, ...args]);
  daemons.push(core);
  return { core, url: (await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//))[1]! };
}

const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

describe('apm core --tokens', () => {
  it('accepts tokens from apm token create, refuses wrong ones and roles, and rereads the file on SIGHUP', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-auth-'));
    const file = join(dir, 'etc', 'tokens');
    const admin = await createToken('admin', 'me', file);
    expect(admin).toMatch(/^apm_[A-Za-z0-9_-]{43}$/);
    const reader = await createToken('read', 'viewer', file);
    const { core, url } = await startCore(['--tokens', file]);

    expect((await fetch(`${url}/api/v1/servers`, bearer(admin))).status).toBe(200);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    const none = await fetch(`${url}/api/v1/servers`);
    expect([none.status, none.headers.get('www-authenticate')]).toEqual([401, 'Bearer realm="apm"']);
    expect((await fetch(`${url}/api/v1/servers`, bearer(`${admin}x`))).status).toBe(401);
    const post = { method: 'POST', headers: { authorization: `Bearer ${reader}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'q', query: 'FROM * SELECT cpu WINDOW 5s COMPUTE max' }) };
    const forbidden = await fetch(`${url}/api/v1/queries`, post);
    expect(forbidden.status).toBe(403);
    expect(((await forbidden.json()) as { error: string }).error).toMatch(/role read; POST \/api\/v1\/queries needs role write/);
    expect((await fetch(`${url}/api/v1/queries`, { ...post, headers: { ...post.headers, authorization: `Bearer ${admin}` } })).status).toBe(201);

    // A token added while the core runs works once the core has reread the file.
    const late = await createToken('read', 'late', file);
    expect((await fetch(`${url}/api/v1/servers`, bearer(late))).status).toBe(401);
    core.child.kill('SIGHUP');
    await core.waitFor(/SIGHUP, reloaded 3 tokens/);
    expect((await fetch(`${url}/api/v1/servers`, bearer(late))).status).toBe(200);

    // A broken file on reload keeps the tokens in use.
    appendFileSync(file, 'not a token line\n');
    core.child.kill('SIGHUP');
    await core.waitFor(/tokens file not reloaded, keeping the 3 tokens in use: .*line 4/);
    expect((await fetch(`${url}/api/v1/servers`, bearer(late))).status).toBe(200);
    const m = parseProm(await (await fetch(`${url}/metrics`, bearer(admin))).text());
    expect(m.get('apm_core_http_auth_failures_total{reason="missing"}')).toBe(1);
    expect(m.get('apm_core_http_auth_failures_total{reason="unknown"}')).toBe(2);
    expect(m.get('apm_core_http_auth_failures_total{reason="forbidden"}')).toBe(1);
  });

  it('refuses to listen beyond loopback without a tokens file, saying how to make one', async () => {
    const core = spawnApm(['core', '--listen', '0.0.0.0:0', '--data', mkdtempSync(join(tmpdir(), 'apm-auth-core-'))]);
    daemons.push(core);
    expect(await core.exited()).not.toBe(0);
    expect(core.output.join('\n')).toMatch(/apm token create --role admin --name me --tokens \/etc\/apm\/tokens.*--tokens \/etc\/apm\/tokens/);
  });

  it('a cluster node refuses to start with --tokens but no --cluster-token-file, and on 0.0.0.0 without --url (before: every shard copy failed 401; nodes proxied to 0.0.0.0, themselves)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-auth-cluster-'));
    const file = join(dir, 'tokens');
    await createToken('admin', 'me', file);
    // Refused before any NATS server is asked (none listens on this port).
    const cases: [string[], RegExp][] = [
      [['--listen', '127.0.0.1:0', '--tokens', file], /--tokens in a cluster needs --cluster-token-file/],
      [['--listen', '0.0.0.0:0', '--tokens', file, '--cluster-token-file', file], /--listen 0\.0\.0\.0: other nodes cannot reach .*give --url/],
      [['--listen', '127.0.0.1:0', '--url', 'ftp://x'], /--url ftp:\/\/x: an http\(s\) URL/],
    ];
    for (const [flags, why] of cases) {
      const core = spawnApm(['core', '--data', join(dir, 'data'), '--nats', 'nats://127.0.0.1:1', '--node', 'n1', ...flags]);
      daemons.push(core);
      expect(await core.exited()).toBe(2);
      expect(core.output.join('\n')).toMatch(why);
    }
  });

  it('refuses a malformed tokens file at start-up, naming the line', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'apm-auth-')), 'tokens');
    writeFileSync(file, '# ok\nabc read me\n');
    const core = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', mkdtempSync(join(tmpdir(), 'apm-auth-core-')), '--tokens', file]);
    daemons.push(core);
    expect(await core.exited()).toBe(2);
    expect(core.output.join('\n')).toContain(`${file} line 2: "abc" is not a SHA-256 hex digest`);
  });
});

describe('apm rack --token-file', () => {
  it('keeps batches spooled while the core refuses its token, then forwards them with a good one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-auth-rack-'));
    const file = join(dir, 'tokens');
    const admin = await createToken('admin', 'me', file);
    const wrongRole = await createToken('read', 'not-a-rack', file);
    const ingest = await createToken('ingest', 'rack-r1', file, ['--racks', 'r1']);
    const { url } = await startCore(['--tokens', file]);
    const spool = join(dir, 'spool');
    const startRack = async (token: string, udpPort = 0) => {
      const tokenFile = join(dir, `rack-token-${token.slice(4, 10)}`);
      writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
      const rack = spawnApm(['rack', '--rack', 'r1', '--listen', `127.0.0.1:${udpPort}`, '--core', url, '--http', '127.0.0.1:0', '--spool', spool, '--lateness', '1s', '--token-file', tokenFile]);
      daemons.push(rack);
      const m = await rack.waitFor(/UDP on 127\.0\.0\.1:(\d+) .*metrics on http:\/\/127\.0\.0\.1:(\d+)/);
      return { rack, udpPort: Number(m[1]), httpPort: Number(m[2]) };
    };
    const first = await startRack(wrongRole);
    const edge = spawnApm(['edge', '--server', 'web-1', '--rack', `127.0.0.1:${first.udpPort}`, '--statsd', '127.0.0.1:0', '--no-host']);
    daemons.push(edge);
    const statsd = Number((await edge.waitFor(/StatsD on 127\.0\.0\.1:(\d+)/))[1]);
    const sock = dgram.createSocket('udp4');
    closers.push(() => sock.close());
    const feed = setInterval(() => sock.send('auth.test:1|g', statsd, '127.0.0.1'), 100);
    closers.push(() => clearInterval(feed));

    await first.rack.waitFor(/refused the token of --token-file with 403: .*needs role ingest.*batches stay spooled/, 15_000);
    const rackMetrics = async (port: number) => parseProm(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
    const held = await until(async () => {
      const m = await rackMetrics(first.httpPort);
      return (m.get('apm_rack_spool_batches') ?? 0) >= 2 ? m : undefined;
    }, 15_000, 'batches spooled while the core refuses the token');
    expect(held.get('apm_rack_batches_rejected_total')).toBe(0);
    expect(held.get('apm_rack_batches_failed_total')).toBeGreaterThan(0);

    // Same spool, a good token: the held batches reach the core.
    await first.rack.stop('SIGTERM');
    const second = await startRack(ingest, first.udpPort);
    const coreBatches = async () => parseProm(await (await fetch(`${url}/metrics`, bearer(admin))).text()).get('apm_core_requests_ingested_total') ?? 0;
    await until(async () => ((await coreBatches()) >= held.get('apm_rack_spool_batches')! ? true : undefined), 20_000, 'the spooled batches at the core');
    await until(async () => ((await rackMetrics(second.httpPort)).get('apm_rack_spool_batches') === 0 ? true : undefined), 10_000, 'an empty spool');
    const servers = (await (await fetch(`${url}/api/v1/servers`, bearer(admin))).json()) as { servers: { id: string }[] };
    expect(servers.servers.map((s) => s.id)).toEqual(['web-1']);
  }, 60_000);
});
