// `apm query` against a real core (issue 15): the README's example with a relative --from
// (`--from -5m` was refused by the option parser as ambiguous), and its three output formats.

import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rackSecondBody } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { spawnApm, until, type Daemon } from './proc.js';

const daemons: Daemon[] = [];
afterAll(async () => {
  for (const d of daemons.splice(0)) await d.stop('SIGKILL');
});

const metric = 'sim.rpc_latency_ms.0';
const readme = `FROM sim-* SELECT ${metric} WINDOW 5s COMPUTE p50, p99, max`;

/** Runs `apm <args>` to its end; its exit code and output lines. */
async function apm(args: string[]): Promise<{ code: number | null; lines: string[] }> {
  const p = spawnApm(args);
  const code = await p.exited();
  return { code, lines: p.output };
}

describe('apm query', () => {
  it('prints its help, with relative times', async () => {
    const { code, lines } = await apm(['query', '--help']);
    expect(code).toBe(0);
    expect(lines.join('\n')).toMatch(/--from -5m/);
    expect(lines.join('\n')).toMatch(/--format table\|json\|csv/);
  });

  it("runs the README's example (--from -5m) and prints table, json and csv", async () => {
    const core = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', mkdtempSync(join(tmpdir(), 'apm-qcli-'))]);
    daemons.push(core);
    const url = (await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//, 20_000))[1]!;
    // Three servers × 20 latencies a second for the last 60 s; the rack's rollup merges them.
    const { shards } = (await (await fetch(`${url}/api/v1/placement`)).json()) as { shards: number };
    const first = Math.floor(Date.now() / 1000) - 60;
    for (let i = 0; i < 60; i++) {
      const values = (s: number) => Array.from({ length: 20 }, (_, k) => 10 * s + k + 1);
      const servers = [0, 1, 2].map((s) => ({ server: `sim-r1-${s}`, blocks: [buildColumns([], [{ name: metric, values: values(s) }])] }));
      const body = rackSecondBody({ rack: 'r1', session: 1, seq: i + 1, second: first + i, late: false, shards, servers, rollup: buildColumns([], [{ name: metric, values: [0, 1, 2].flatMap(values) }], [metric]) });
      expect((await fetch(`${url}/api/v1/ingest`, { method: 'POST', body })).status).toBe(204);
    }
    const table = await until(async () => {
      const r = await apm(['query', readme, '--from', '-5m', '--to', '-1s', '--core', url]);
      expect(r.code, r.lines.join('\n')).toBe(0);
      return r.lines.length > 4 ? r.lines : undefined;
    }, 20_000, 'windows from apm query');
    expect(table[0]).toBe(readme.replace("p50, p99", "percentile(50), percentile(99)"));
    expect(table[1]).toMatch(/^window start \(UTC\)\s+servers\s+count\s+percentile\(50\)\s+percentile\(99\)\s+max\s+rev$/);
    // A full window: 3 servers × 20 values × 5 s, max 40.
    expect(table.some((l) => /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+3\s+300\s+[\d.]+\s+[\d.]+\s+40\s+0$/.test(l))).toBe(true);
    expect(table[table.length - 1]).toMatch(/^\d+ windows$/);

    const json = await apm(['query', readme, '--from', '-5m', '--to', '-1s', '--format', 'json', '--core', url]);
    expect(json.code).toBe(0);
    const answer = JSON.parse(json.lines.join('\n')) as { query: string; windows: { startMs: number; count: number; values: Record<string, number> }[] };
    expect(answer.query).toBe(table[0]);
    expect(answer.windows.some((w) => w.count === 300 && w.values.max === 40)).toBe(true);

    const csv = await apm(['query', readme, '--from=-5m', '--to', '-1s', '--format', 'csv', '--core', url]);
    expect(csv.code).toBe(0);
    const rows = csv.lines.map((l) => l.replace(/\r$/, '').split(','));
    expect(rows[0]).toEqual(['start', 'start_ms', 'servers', 'count', 'percentile(50)', 'percentile(99)', 'max', 'revision']);
    expect(rows.length - 1).toBe(answer.windows.length);
    expect(rows.slice(1).map((r) => Number(r[1]))).toEqual(answer.windows.map((w) => w.startMs));

    // A bad format is a usage error naming the choices.
    const bad = await apm(['query', readme, '--format', 'xml', '--core', url]);
    expect(bad.code).toBe(2);
    expect(bad.lines[0]).toBe('apm: --format "xml" must be one of table, json, csv');
  });
});

describe('apm queries', () => {
  it('creates, lists, edits, reads the results of and deletes stored queries on a real core; an unknown id exits 1, a bad query 2 with its position', async () => {
    const core = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', mkdtempSync(join(tmpdir(), 'apm-qscli-')), '--query-lateness', '500ms']);
    daemons.push(core);
    const url = (await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//, 20_000))[1]!;
    const { shards } = (await (await fetch(`${url}/api/v1/placement`)).json()) as { shards: number };
    const created = await apm(['queries', 'create', 'FROM * SELECT cli.g WINDOW 1s COMPUTE max, count', '--name', 'cli gauge', '--core', url]);
    expect(created.code, created.lines.join('\n')).toBe(0);
    const id = created.lines[0]!;
    expect(id).toMatch(/^[0-9a-f]{12}$/);
    // Data for the seconds after its creation: its windows are evaluated as they close.
    let seq = 1;
    const feed = setInterval(() => {
      const body = rackSecondBody({ rack: 'rq', session: 1, seq: seq++, second: Math.floor(Date.now() / 1000) - 1, late: false, shards, servers: [{ server: 'q-1', blocks: [buildColumns([{ name: 'cli.g', kind: 0, value: 7 }], [])] }], rollup: buildColumns([], [], ['cli.g']) });
      void fetch(`${url}/api/v1/ingest`, { method: 'POST', body }).catch(() => undefined);
    }, 1000);
    try {
      const list = await apm(['queries', 'list', '--core', url]);
      expect(list.code).toBe(0);
      expect(list.lines.join('\n')).toMatch(new RegExp(`^${id}\\s+cli gauge\\s+FROM \\* SELECT cli\\.g WINDOW 1s COMPUTE max, count$`, 'm'));
      const rows = await until(async () => {
        const r = await apm(['queries', 'results', id, '--from', '-1m', '--format', 'csv', '--core', url]);
        expect(r.code, r.lines.join('\n')).toBe(0);
        return r.lines.length > 1 ? r.lines : undefined;
      }, 20_000, 'a stored window');
      expect(rows[0]!.replace(/\r$/, '')).toBe('start,start_ms,servers,count,max,count(),revision');
      expect(rows[1]!.replace(/\r$/, '').split(',').slice(2, 6)).toEqual(['1', '1', '7', '1']);
      // Renamed only: its text (and results) stay.
      const renamed = await apm(['queries', 'edit', id, '--name', 'renamed', '--core', url]);
      expect(renamed.code).toBe(0);
      expect(renamed.lines[0]).toBe(`${id}  renamed  FROM * SELECT cli.g WINDOW 1s COMPUTE max, count`);
      // A query that does not parse: a usage error pointing at it.
      const bad = await apm(['queries', 'edit', id, 'FROM * SELEKT cli.g COMPUTE max', '--core', url]);
      expect(bad.code).toBe(2);
      expect(bad.lines.join('\n')).toMatch(/\n\s+FROM \* SELEKT cli\.g COMPUTE max\n\s+\^/);
      // Options a subcommand does not read, and ids that would name another path: usage errors.
      expect((await apm(['queries', 'list', '--format', 'csv', '--core', url])).code).toBe(2);
      expect((await apm(['queries', 'results', '.', '--core', url])).code).toBe(2);
      // A query created without a name is named by its text; a new text renames it too.
      const unnamed = (await apm(['queries', 'create', 'FROM * SELECT cli.g WINDOW 5s COMPUTE max', '--core', url])).lines[0]!;
      const retexted = await apm(['queries', 'edit', unnamed, 'FROM * SELECT cli.g WINDOW 10s COMPUTE min', '--core', url]);
      expect(retexted.lines[0]).toBe(`${unnamed}  FROM * SELECT cli.g WINDOW 10s COMPUTE min  FROM * SELECT cli.g WINDOW 10s COMPUTE min`);
      expect((await apm(['queries', 'delete', unnamed, '--core', url])).code).toBe(0);
      expect((await apm(['queries', 'delete', id, '--core', url])).code).toBe(0);
      const gone = await apm(['queries', 'delete', id, '--core', url]);
      expect(gone.code).toBe(1);
      expect(gone.lines[0]).toMatch(/no stored query/);
      expect((await apm(['queries', 'list', '--json', '--core', url])).lines.join('')).toBe('{"queries":[]}');
    } finally {
      clearInterval(feed);
    }
  });
});
