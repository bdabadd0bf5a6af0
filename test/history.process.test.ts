// `apm import` and `apm export` against real `apm core` processes (issue 15): history in as
// VictoriaMetrics JSON lines, out again, into a second core, and out of it identical; the same
// answers to queries on both; tokens scope an import to their racks.

import { afterEach, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { cliPath, spawnApm, type Daemon } from './proc.js';

const run = promisify(execFile);
const daemons: Daemon[] = [];
afterEach(async () => {
  for (const d of daemons.splice(0)) await d.stop('SIGKILL');
});

async function startCore(args: string[] = []): Promise<string> {
  const data = mkdtempSync(join(tmpdir(), 'apm-history-core-'));
  const core = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', data, '--workers', '2', ...args]);
  daemons.push(core);
  return (await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//))[1]!;
}

async function apm(args: string[], env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const r = await run(process.execPath, [cliPath, ...args], { env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
    return { ...r, code: 0 };
  } catch (err) {
    const e = err as { stdout: string; stderr: string; code: number };
    return { stdout: e.stdout, stderr: e.stderr, code: e.code };
  }
}

/** Lines of an export, sorted (chunks may order series differently), with their points merged per series. */
function canonical(text: string): Record<string, [number, number][]> {
  const out: Record<string, [number, number][]> = {};
  for (const l of text.split('\n')) {
    if (l === '') continue;
    const o = JSON.parse(l) as { metric: Record<string, string>; values: number[]; timestamps: number[] };
    const k = JSON.stringify(Object.entries(o.metric).sort());
    (out[k] ??= []).push(...o.timestamps.map((t, i): [number, number] => [t, o.values[i]!]));
  }
  for (const v of Object.values(out)) v.sort((a, b) => a[0] - b[0]);
  return out;
}

const now = Math.floor(Date.now() / 1000);
const t0 = now - 3 * 3600 - (now % 60);

describe('apm import / apm export', () => {
  it('moves history from a file into a core, out, into another core and out again unchanged', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-history-'));
    const lines: string[] = [];
    // 20 servers × 5 metrics × 30 minutes: 180,000 points, two racks.
    for (let s = 0; s < 20; s++) {
      for (let m = 0; m < 5; m++) {
        const ts = Array.from({ length: 1800 }, (_, i) => (t0 + i) * 1000);
        lines.push(JSON.stringify({ metric: { __name__: `hist.m${m}`, instance: `h-${s}:9100`, rack: s < 10 ? 'ra' : 'rb', job: 'node' }, values: ts.map((_, i) => s * 10 + m + (i % 97) / 4), timestamps: ts }));
      }
    }
    lines.push('{"metric":{"__name__":"hist.m0"},"values":[1],"timestamps":[1]}');
    const file = join(dir, 'in.jsonl.gz');
    writeFileSync(file, gzipSync(lines.join('\n') + '\n'));
    const a = await startCore();
    const imp = await apm(['import', file, '--core', a]);
    expect(imp.code, imp.stderr).toBe(0);
    console.log(imp.stdout);
    expect(imp.stdout).toMatch(/101 lines, 100 series, 180000 points read; 180000 stored/);
    expect(imp.stdout).toMatch(/lines refused: no_server 1/);
    expect(imp.stdout).toMatch(/line 101: no_server/);
    expect(imp.stderr).toMatch(/apm import: .* sent/);
    // Regression: a file none of whose points is stored exits 1 (before: 0).
    const badFile = join(dir, 'bad.jsonl');
    writeFileSync(badFile, '{"metric":{"__name__":"bad name","server":"a"},"values":[1],"timestamps":[1]}\nnot json\n');
    const none = await apm(['import', badFile, '--core', a]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/nothing was stored/);

    const range = ['--from', String((t0 - 60) * 1000), '--to', String((t0 + 1800) * 1000)];
    const metrics = [0, 1, 2, 3, 4].map((m) => `hist.m${m}`);
    const outA = join(dir, 'a.jsonl');
    const exA = await apm(['export', ...metrics, ...range, '--core', a, '--output', outA]);
    expect(exA.code, exA.stderr).toBe(0);
    const fromA = canonical(readFileSync(outA, 'utf8'));
    expect(Object.keys(fromA)).toHaveLength(100);
    expect(Object.values(fromA).every((pts) => pts.length === 1800)).toBe(true);
    expect(fromA[JSON.stringify([['__name__', 'hist.m3'], ['rack', 'rb'], ['server', 'h-12']])]!.slice(0, 2)).toEqual([
      [t0 * 1000, 123],
      [(t0 + 1) * 1000, 123.25],
    ]);

    // Into a second core from standard input, then out of it: the same series and points.
    const b = await startCore();
    const child = execFile(process.execPath, [cliPath, 'import', '-', '--core', b]);
    child.stdin!.end(readFileSync(outA));
    const code = await new Promise<number | null>((res) => child.once('exit', res));
    expect(code).toBe(0);
    const exB = await apm(['export', ...metrics, ...range, '--core', b]);
    expect(exB.code, exB.stderr).toBe(0);
    expect(canonical(exB.stdout)).toEqual(fromA);

    // The same answer to a query on both cores.
    const q = 'FROM rack:ra SELECT hist.m2 WINDOW 60s COMPUTE count, min, max, avg, p99';
    const qa = await apm(['query', q, ...range, '--core', a, '--format', 'json']);
    const qb = await apm(['query', q, ...range, '--core', b, '--format', 'json']);
    expect(qa.code, qa.stderr).toBe(0);
    const windows = (s: string) => (JSON.parse(s) as { windows: { count: number; values: Record<string, number> }[] }).windows.map((w) => [w.count, w.values]);
    expect(windows(qa.stdout)).toHaveLength(30);
    expect(windows(qa.stdout)[0]![0]).toBe(10 * 60);
    expect(windows(qb.stdout)).toEqual(windows(qa.stdout));
  });

  it('imports with an ingest token only for the racks it names, and says why a core refuses', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-history-tok-'));
    const tokens = join(dir, 'tokens');
    const mk = async (role: string, name: string, extra: string[] = []) => {
      const r = await apm(['token', 'create', '--role', role, '--name', name, '--tokens', tokens, ...extra]);
      return r.stdout.trim().split('\n').pop()!;
    };
    const ingest = await mk('ingest', 'importer', ['--racks', 'ra']);
    const reader = await mk('read', 'viewer');
    const url = await startCore(['--tokens', tokens]);
    const file = join(dir, 'in.jsonl');
    const series = (rack: string) => JSON.stringify({ metric: { __name__: 'tok.m', server: `s-${rack}`, rack }, values: [1, 2], timestamps: [t0 * 1000, (t0 + 1) * 1000] });
    writeFileSync(file, [series('ra'), series('rb')].join('\n'));
    const none = await apm(['import', file, '--core', url]);
    // A refusal is a failure (exit 1), not a usage error (2); it says how this CLI sends a token.
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/HTTP 401.*APM_TOKEN=<token>.*none is set/s);
    const wrongRole = await apm(['import', file, '--core', url], { APM_TOKEN: reader });
    expect(wrongRole.stderr).toMatch(/HTTP 403/);
    const ok = await apm(['import', file, '--core', url], { APM_TOKEN: ingest });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/2 lines, 1 series, 2 points read; 2 stored/);
    expect(ok.stdout).toMatch(/rack_not_allowed 1/);
    const ex = await apm(['export', 'tok.m', '--from', String(t0 * 1000), '--to', String((t0 + 2) * 1000), '--core', url], { APM_TOKEN: reader });
    expect(ex.code, ex.stderr).toBe(0);
    expect(canonical(ex.stdout)).toEqual({ [JSON.stringify([['__name__', 'tok.m'], ['rack', 'ra'], ['server', 's-ra']])]: [[t0 * 1000, 1], [(t0 + 1) * 1000, 2]] });
    // apm query sends APM_TOKEN too (it had no way to query a --tokens core).
    const q = ['query', 'FROM * SELECT tok.m WINDOW 2s COMPUTE max', '--from', String(t0 * 1000), '--to', String((t0 + 2) * 1000), '--core', url, '--format', 'csv'];
    expect((await apm(q)).stderr).toMatch(/needs "Authorization: Bearer <token>"/);
    const qa = await apm(q, { APM_TOKEN: reader });
    expect(qa.code, qa.stderr).toBe(0);
    expect(qa.stdout).toMatch(/,2,/);
  });
});

describe('regression: apm export cut short', () => {
  it('leaves no file that looks complete: what came stays in <file>.part, with a clear error and exit 1 (before: whole lines in <file>, a stack trace)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-export-cut-'));
    const server = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.write('{"metric":{"__name__":"cut.m","server":"s1","rack":"r1"},"values":[1],"timestamps":[1000]}\n');
      setTimeout(() => res.socket?.destroy(), 50);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as { port: number }).port;
      const out = join(dir, 'out.jsonl');
      const r = await apm(['export', 'cut.m', '--core', `http://127.0.0.1:${port}`, '--output', out]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/export stopped after 1 lines: .*; what came is in .*out\.jsonl\.part \(incomplete\)/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(existsSync(out)).toBe(false);
      expect(readFileSync(`${out}.part`, 'utf8')).toContain('cut.m');
    } finally {
      server.close();
    }
  });
});
