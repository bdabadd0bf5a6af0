// `apm query "<query>"`: evaluates an ad-hoc query on a core and prints the windows as a table,
// the API's JSON, or CSV.

import { fnKey, parseQuery } from '../core/query/parse.js';
import { parseOptions, UsageError } from '../lib/args.js';
import { callCore } from './core-client.js';

export const queryFormats = ['table', 'json', 'csv'] as const;
export type QueryFormat = (typeof queryFormats)[number];

export const queryHelp = `apm query: evaluate a query on the core and print its windows

Usage: apm query "<query>" [--from -1h] [--to now] [--format table|json|csv] [--core <url>]

  e.g. apm query "FROM web-* SELECT rpc.latency WINDOW 5s COMPUTE min, max, avg, p99" --from -15m
  --from, --to     Unix ms, ISO-8601, now, or relative to now: -<n>s|m|h|d, e.g. --from -5m
                   --to -1m (default: the last hour)
  --format <f>     table (default): aligned columns, window start (UTC), servers, count, one
                   column per function, revision (> 0: revised by late data);
                   json: the API's answer unchanged; csv: the same columns with a header row
                   (RFC 4180: comma-separated, CRLF line ends, quoted where needed), start as
                   ISO-8601 and Unix ms
  --core <url>     the core (default http://127.0.0.1:8080)
  APM_TOKEN        environment: a token of role read (or higher), when the core has --tokens
  --help           this text

One answer holds at most 3,600 windows: use a longer WINDOW or a shorter range beyond that.`;

/** A window as the API answers it (core/query/eval.ts WindowResult); a NaN value arrives as null. */
export interface QueryWindow {
  startMs: number;
  servers: number;
  count: number;
  values: Record<string, number | null>;
  revision: number;
}

export interface QueryAnswer {
  query: string;
  windows: QueryWindow[];
}

/** Rows of cells → aligned text: the first `leftColumns` columns left-aligned (text), the rest right-aligned (numbers). */
export function table(head: string[], rows: string[][], leftColumns = 1): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < leftColumns ? (i === cells.length - 1 ? c : c.padEnd(widths[i]!)) : c.padStart(widths[i]!))).join('  ');
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** A value for the table: integers as they are, others to 6 significant digits (1 decimal from 1,000). */
export function formatNumber(v: number | null | undefined): string {
  if (v === null || v === undefined) return '-';
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 1000 ? v.toFixed(1) : Number(v.toPrecision(6)).toString();
}

/** One CSV field (RFC 4180 §2.6-7): quoted when it holds a comma, a quote or a line break. */
export function csvField(s: string): string {
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/**
 * The functions of an answer, from its query's COMPUTE list (the columns do not depend on the
 * data: an answer without windows kept its header, and `count` its own column beside the
 * window's count); from the windows when the text does not parse here (another apm version).
 */
function functionsOf(answer: QueryAnswer): string[] {
  try {
    return [...new Set(parseQuery(answer.query).functions.map(fnKey))];
  } catch {
    const fns = new Set<string>();
    for (const w of answer.windows) for (const f of Object.keys(w.values)) fns.add(f);
    return [...fns];
  }
}

/** A function's column name: `count` and `servers` as functions are told apart from the window's own columns. */
const fnColumn = (f: string) => (f === 'count' || f === 'servers' ? `${f}()` : f);

/** The answer as `apm query` prints it; `raw` is the API's body (json prints it unchanged). */
export function renderAnswer(format: QueryFormat, answer: QueryAnswer, raw: string): string {
  const { windows } = answer;
  const fns = functionsOf(answer);
  switch (format) {
    case 'json':
      return raw.trimEnd();
    case 'csv': {
      // Full precision (String(v)): CSV is for programs; an empty field is a value the window lacks.
      const rows = windows.map((w) => [new Date(w.startMs).toISOString(), String(w.startMs), String(w.servers), String(w.count), ...fns.map((f) => (w.values[f] == null ? '' : String(w.values[f]))), String(w.revision)]);
      return [['start', 'start_ms', 'servers', 'count', ...fns.map(fnColumn), 'revision'], ...rows].map((r) => r.map(csvField).join(',')).join('\r\n');
    }
    case 'table': {
      const rows = windows.map((w) => [new Date(w.startMs).toISOString().replace('T', ' ').slice(0, 19), String(w.servers), formatNumber(w.count), ...fns.map((f) => formatNumber(w.values[f])), String(w.revision)]);
      return `${answer.query}\n${table(['window start (UTC)', 'servers', 'count', ...fns.map(fnColumn), 'rev'], rows)}\n${windows.length} windows`;
    }
  }
}

function parseFormat(value: string): QueryFormat {
  const f = queryFormats.find((x) => x === value);
  if (f === undefined) throw new UsageError(`--format ${JSON.stringify(value)} must be one of ${queryFormats.join(', ')}\n\n${queryHelp}`);
  return f;
}

export async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseOptions(
    argv,
    {
      from: { type: 'string', default: '-1h' },
      to: { type: 'string', default: 'now' },
      format: { type: 'string', default: 'table' },
      core: { type: 'string', default: 'http://127.0.0.1:8080' },
      help: { type: 'boolean', default: false },
    },
    queryHelp,
  );
  if (values.help) {
    console.log(queryHelp);
    return;
  }
  const format = parseFormat(values.format!);
  const q = positionals.join(' ').trim();
  if (q === '') throw new UsageError(`give the query in quotes\n\n${queryHelp}`);
  const { json, raw } = await callCore(values.core!, 'GET', `/api/v1/query?${new URLSearchParams({ q, from: values.from!, to: values.to! }).toString()}`, undefined, q);
  const body = json as Partial<QueryAnswer>;
  console.log(renderAnswer(format, { query: body.query ?? q, windows: body.windows ?? [] }, raw));
}
