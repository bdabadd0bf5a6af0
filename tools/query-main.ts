// `apm query "<query>"`: evaluates an ad-hoc query on a core and prints the windows as a table.

import { parseOptions, UsageError } from './args.js';

export const queryHelp = `apm query: evaluate a query on the core and print its windows

Usage: apm query "<query>" [--from -1h] [--to now] [--core http://127.0.0.1:8080]

  e.g. apm query "FROM web-* SELECT rpc.latency WINDOW 5s COMPUTE min, max, avg, p99" --from -15m
  --from, --to   Unix ms, ISO-8601, now, or -<n>s|m|h|d (default: the last hour)
  --core <url>   the core (default http://127.0.0.1:8080)`;

interface Window {
  startMs: number;
  servers: number;
  count: number;
  values: Record<string, number>;
  revision: number;
}

/** Rows of cells → aligned text (numbers right-aligned). */
export function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

export function formatNumber(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 1000 ? v.toFixed(1) : Number(v.toPrecision(6)).toString();
}

export async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseOptions(
    argv,
    { from: { type: 'string', default: '-1h' }, to: { type: 'string', default: 'now' }, core: { type: 'string', default: 'http://127.0.0.1:8080' }, help: { type: 'boolean', default: false } },
    queryHelp,
  );
  if (values.help) {
    console.log(queryHelp);
    return;
  }
  const q = positionals.join(' ').trim();
  if (q === '') throw new UsageError(`give the query in quotes\n\n${queryHelp}`);
  const url = new URL('/api/v1/query', values.core);
  url.searchParams.set('q', q);
  url.searchParams.set('from', values.from!);
  url.searchParams.set('to', values.to!);
  let res: Response;
  try {
    res = await fetch(url);
  } catch (err) {
    throw new UsageError(`cannot reach the core at ${values.core}: ${(err as Error).message}`);
  }
  const body = (await res.json()) as { error?: string; position?: number; query?: string; windows?: Window[] };
  if (!res.ok) {
    const pointer = body.position === undefined ? '' : `\n  ${q}\n  ${' '.repeat(body.position)}^`;
    throw new UsageError(`${body.error ?? res.statusText}${pointer}`);
  }
  const windows = body.windows ?? [];
  const fns = windows.length > 0 ? Object.keys(windows[0]!.values) : [];
  console.log(body.query);
  console.log(
    table(
      ['window start (UTC)', 'servers', 'count', ...fns, 'rev'],
      windows.map((w) => [new Date(w.startMs).toISOString().replace('T', ' ').slice(0, 19), String(w.servers), formatNumber(w.count), ...fns.map((f) => formatNumber(w.values[f]!)), String(w.revision)]),
    ),
  );
  console.log(`${windows.length} windows`);
}
