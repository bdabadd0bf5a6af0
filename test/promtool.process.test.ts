// Debian's real promtool (the `prometheus` package; CI installs it) against a real `apm core`
// (issue 15): range and instant queries in apm's language, label values and series, errors,
// and a read token sent as a Bearer header. No skipping: without promtool this fails and says
// how to install it.

import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { KindCode } from '../schema/codec.js';
import { rackSecondBody } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { cliPath, spawnApm, type Daemon } from './proc.js';

const run = promisify(execFile);
const promtoolPath = '/usr/bin/promtool';
const daemons: Daemon[] = [];
afterEach(async () => {
  for (const d of daemons.splice(0)) await d.stop('SIGKILL');
});

beforeAll(() => {
  if (!existsSync(promtoolPath)) throw new Error(`${promtoolPath} is missing: this test runs the real promtool; install it with 'apt-get install prometheus' (CI does)`);
});

async function startCore(extra: string[] = []): Promise<string> {
  const core = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', mkdtempSync(join(tmpdir(), 'apm-promtool-')), ...extra]);
  daemons.push(core);
  return (await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//))[1]!;
}

/** 30 seconds from t0 of web-0..2 (rack r1): gauge cpu = 10 s + k, distribution rpc.latency [s + 1, k + 1]. */
async function feed(url: string, t0: number, headers: Record<string, string> = {}): Promise<void> {
  const { shards } = (await (await fetch(`${url}/api/v1/placement`, { headers })).json()) as { shards: number };
  for (let k = 0; k < 30; k++) {
    const servers = [0, 1, 2].map((s) => ({ server: `web-${s}`, blocks: [buildColumns([{ name: 'cpu', kind: KindCode.Gauge, value: 10 * s + k }], [{ name: 'rpc.latency', values: [s + 1, k + 1] }])] }));
    const body = rackSecondBody({ rack: 'r1', session: 1, seq: k + 1, second: t0 + k, late: false, shards, servers, rollup: buildColumns([], [], k === 0 ? ['cpu', 'rpc.latency'] : []) });
    const r = await fetch(`${url}/api/v1/ingest`, { method: 'POST', body, headers });
    expect(r.status, await r.text()).toBe(204);
  }
}

/** promtool's stdout, or its stderr and exit code when it fails. */
async function promtool(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(promtoolPath, args, { timeout: 20_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

const now = Math.floor(Date.now() / 1000);
const t0 = now - 300 - (now % 60); // whole minutes 5 minutes ago: every window complete

describe('promtool against apm core', () => {
  it('runs range and instant queries in apm\'s language, lists labels and series, and shows apm\'s errors', async () => {
    const url = await startCore();
    await feed(url, t0);
    const query = 'FROM web-* SELECT cpu WINDOW 5s COMPUTE max, avg';
    const range = await promtool(['query', 'range', '--start', String(t0), '--end', String(t0 + 30), '--step', '5s', url, query]);
    expect(range.stderr).toBe('');
    // One series per function (promtool prints them sorted by labels); a sample at each window's
    // end: [t0 + 5i - 5, t0 + 5i) holds servers 0..2, k 5i-5..5i-1.
    const labels = (f: string) => `cpu{function="${f}", query="${query}"} =>`;
    expect(range.stdout).toBe(
      [labels('avg'), ...[1, 2, 3, 4, 5, 6].map((i) => `${10 + 5 * i - 3} @[${t0 + 5 * i}]`), labels('max'), ...[1, 2, 3, 4, 5, 6].map((i) => `${20 + 5 * i - 1} @[${t0 + 5 * i}]`), ''].join('\n'),
    );
    // Without WINDOW, the step is the window.
    const stepped = await promtool(['query', 'range', '--start', String(t0), '--end', String(t0 + 30), '--step', '10s', url, 'FROM web-1 SELECT rpc.latency COMPUTE count']);
    expect(stepped.stdout).toBe(['rpc.latency{function="count", query="FROM web-1 SELECT rpc.latency WINDOW 10s COMPUTE count"} =>', `20 @[${t0 + 10}]`, `20 @[${t0 + 20}]`, `20 @[${t0 + 30}]`, ''].join('\n'));
    // Instant: the newest complete window ending at or before --time.
    const instant = await promtool(['query', 'instant', '--time', String(t0 + 17), url, 'FROM web-2 SELECT cpu WINDOW 5s COMPUTE min, max']);
    expect(instant.stdout).toBe(
      ['cpu{function="min", query="FROM web-2 SELECT cpu WINDOW 5s COMPUTE min, max"} => 30 @[' + (t0 + 15) + ']', 'cpu{function="max", query="FROM web-2 SELECT cpu WINDOW 5s COMPUTE min, max"} => 34 @[' + (t0 + 15) + ']', ''].join('\n'),
    );
    expect((await promtool(['query', 'instant', '--time', '4', url, '1+1'])).stdout).toBe('scalar: 2 @[4]\n');
    expect((await promtool(['query', 'labels', url, '__name__'])).stdout).toBe('cpu\nrpc.latency\n');
    expect((await promtool(['query', 'labels', url, 'server'])).stdout).toBe('web-0\nweb-1\nweb-2\n');
    expect((await promtool(['query', 'series', '--match', '{__name__=~"rpc.+"}', url])).stdout).toBe('{__name__="rpc.latency"}\n');
    // What apm cannot run, promtool shows as apm says it.
    const promql = await promtool(['query', 'instant', url, 'rate(http_requests_total[5m])']);
    expect(promql.code).toBe(1);
    expect(promql.stderr).toMatch(/bad_data: apm reads its own query language here, not PromQL/);
    const fine = await promtool(['query', 'range', '--start', String(t0), '--end', String(t0 + 30), '--step', '1s', url, query]);
    expect(fine.code).toBe(1);
    expect(fine.stderr).toMatch(/bad_data: step 1s is shorter than the query's WINDOW 5s/);
  });

  it('sends a read token as a Bearer header (promtool query range --header)', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'apm-promtool-tokens-')), 'tokens');
    const token = async (role: string, name: string, extra: string[] = []) => {
      const { stdout } = await run(process.execPath, [cliPath, 'token', 'create', '--role', role, '--name', name, '--tokens', file, ...extra]);
      return stdout.trim().split('\n').pop()!;
    };
    const reader = await token('read', 'grafana');
    const rack = await token('ingest', 'rack-r1', ['--racks', 'r1']);
    const url = await startCore(['--tokens', file]);
    await feed(url, t0, { authorization: `Bearer ${rack}` });
    const args = ['query', 'range', '--start', String(t0), '--end', String(t0 + 10), '--step', '10s'];
    const q = 'FROM web-0 SELECT cpu WINDOW 10s COMPUTE max';
    const ok = await promtool([...args, '--header', `Authorization: Bearer ${reader}`, url, q]);
    expect(ok.stdout).toBe(`cpu{function="max", query="${q}"} =>\n9 @[${t0 + 10}]\n`);
    // Without the token, or with the rack's (role ingest), refused.
    const none = await promtool([...args, url, q]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/401/);
    const wrongRole = await promtool([...args, '--header', `Authorization: Bearer ${rack}`, url, q]);
    expect(wrongRole.code).toBe(1);
    expect(wrongRole.stderr).toMatch(/403/);
  });
});
