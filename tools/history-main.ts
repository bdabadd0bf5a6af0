// `apm import <file>` and `apm export <metric>…`: move history into and out of a core as
// VictoriaMetrics JSON lines (POST /api/v1/import, GET /api/v1/export), streamed both ways with a
// progress line on stderr.

import { createReadStream, createWriteStream, renameSync, rmSync, statSync } from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { once } from 'node:events';
import { CommandError, parseOptions, UsageError } from '../lib/args.js';
import { answerError, authHeaders, coreUrl, unreachable } from './core-client.js';

export const importHelp = `apm import: load history into a core from VictoriaMetrics JSON lines

Usage: apm import <file | -> [--core <url>] [--gzip]

  One series a line: {"metric":{"__name__":"rpc.latency","server":"web-01","rack":"r1"},
  "values":[1.5,2],"timestamps":[1733000000000,1733000001000]} (ms). The server id is the
  server label, else instance (without :port), else host; rack is optional (default: the
  server's rack when the core knows the server, else import).
  Points are stored as gauges, the last sample of each server-second kept; each bad line or
  point is refused alone and counted in the summary printed at the end. The core answers once
  every point is durable (in its WAL); importing the same file again stores nothing twice
  within a second. Exports of VictoriaMetrics (/api/v1/export) and of apm are taken as they are.
  Exits 1 when the file held lines and none of their points was stored.
  <file>           the JSON lines (- reads standard input; a .gz file is sent compressed)
  --gzip           the input is gzip-compressed (implied by a .gz name)
  --core <url>     the core (default http://127.0.0.1:8080)
  APM_TOKEN        environment: a token of role ingest (its racks=) or admin, when the core has --tokens
  --help           this text`;

export const exportHelp = `apm export: write a core's history as VictoriaMetrics JSON lines

Usage: apm export <metric> [<metric>…] [--from -1h] [--to now] [--output <file>] [--core <url>]

  One line per metric, server and rack for each span the core reads at once (≤ 200,000 points),
  the format apm import and VictoriaMetrics' /api/v1/import take. A distribution is written as
  four gauges: <metric>.count, .sum, .min, .max (its sketch is not).
  --from, --to     Unix ms, ISO-8601, now, or relative to now: -<n>s|m|h|d, e.g. --from -5m
                   (default: the last hour)
  --output <file>  write there: into <file>.part, renamed to <file> once the export is whole (a
                   stream cut short stays in <file>.part; default: standard output)
  --core <url>     the core (default http://127.0.0.1:8080)
  APM_TOKEN        environment: a token of role read (or higher), when the core has --tokens
  --help           this text`;

/** A progress line on stderr, rewritten in place on a terminal, one line a few seconds otherwise. */
class Progress {
  private last = 0;
  private readonly t0 = performance.now();
  constructor(private readonly tty = process.stderr.isTTY === true) {}
  show(text: () => string, force = false): void {
    const now = performance.now();
    if (!force && now - this.last < (this.tty ? 250 : 5000)) return;
    this.last = now;
    const line = `${text()} · ${((now - this.t0) / 1000).toFixed(1)} s`;
    process.stderr.write(this.tty ? `\r\x1b[K${line}` : `${line}\n`);
  }
  end(): void {
    if (this.tty) process.stderr.write('\n');
  }
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

export async function importMain(argv: string[]): Promise<void> {
  const { values, positionals } = parseOptions(argv, { core: { type: 'string', default: 'http://127.0.0.1:8080' }, gzip: { type: 'boolean', default: false }, help: { type: 'boolean', default: false } }, importHelp);
  if (values.help) return void console.log(importHelp);
  if (positionals.length !== 1) throw new UsageError(`give one file (or - for standard input)\n\n${importHelp}`);
  const file = positionals[0]!;
  const gzip = values.gzip === true || file.endsWith('.gz');
  let total: number | null = null;
  if (file !== '-') {
    let st: ReturnType<typeof statSync>;
    try {
      st = statSync(file);
    } catch (err) {
      throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
    }
    if (!st.isFile()) throw new UsageError(`${file} is not a file (a directory?): give the file to import, or - for standard input`);
    total = st.size;
  }
  const source = file === '-' ? process.stdin : createReadStream(file);
  // A read error of the file stops the upload: said as such, not as the core being unreachable.
  let readFailed: Error | null = null;
  let sent = 0;
  const progress = new Progress();
  const counting = new Transform({
    transform(chunk: Buffer, _enc, done) {
      sent += chunk.length;
      progress.show(() => `apm import: ${mib(sent)}${total === null ? '' : ` of ${mib(total)} (${((100 * sent) / Math.max(1, total)).toFixed(0)}%)`} sent`);
      done(null, chunk);
    },
  });
  source.on('error', (err: Error) => {
    readFailed = err;
    counting.destroy(err);
  });
  const body = Readable.toWeb(source.pipe(counting)) as ReadableStream<Uint8Array>;
  const url = coreUrl(values.core!, '/api/v1/import');
  let res: Response;
  try {
    res = await fetch(url, { method: 'POST', body, duplex: 'half', headers: { 'content-type': 'application/x-ndjson', ...(gzip ? { 'content-encoding': 'gzip' } : {}), ...authHeaders() } } as RequestInit);
  } catch (err) {
    progress.end();
    if (readFailed !== null) throw new CommandError(`reading ${file} failed after ${sent} B: ${(readFailed as Error).message}; nothing after that was sent`);
    throw unreachable(values.core!, err);
  }
  progress.show(() => `apm import: ${mib(sent)} sent, waiting for the core to make the last points durable`, true);
  progress.end();
  const raw = await res.text();
  let s: { error?: string; lines?: number; series?: number; points?: number; stored?: number; sameSecond?: number; linesRefused?: Record<string, number>; pointsRefused?: Record<string, number>; errors?: { line: number; reason: string; error: string }[]; ms?: number; fromSecond?: number | null; toSecond?: number | null };
  try {
    s = JSON.parse(raw) as typeof s;
  } catch {
    throw new CommandError(`the core answered HTTP ${res.status} with a body that is not JSON: ${raw.slice(0, 200)}`);
  }
  const refused = (r: Record<string, number> | undefined) => Object.entries(r ?? {}).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';
  if (s.lines !== undefined) {
    const rate = s.ms !== undefined && s.ms > 0 ? ` (${Math.round(((s.stored ?? 0) * 1000) / s.ms).toLocaleString('en')} points/s)` : '';
    const span = s.fromSecond != null && s.toSecond != null ? `, ${new Date(s.fromSecond * 1000).toISOString()} .. ${new Date(s.toSecond * 1000).toISOString()}` : '';
    console.log(`apm import: ${s.lines} lines, ${s.series} series, ${s.points} points read; ${s.stored} stored${rate}${span}`);
    console.log(`  lines refused: ${refused(s.linesRefused)}; points refused: ${refused(s.pointsRefused)}; samples sharing a server-second (the last kept): ${s.sameSecond ?? 0}`);
    for (const e of s.errors ?? []) console.log(`  line ${e.line}: ${e.reason}: ${e.error}`);
  }
  if (!res.ok) throw answerError(res.status, `import ${res.status === 503 ? 'stopped' : 'refused'} (HTTP ${res.status}): ${s.error ?? res.statusText}`);
  // Exit 1 when there was something to import and none of it was stored (before: 0, and
  // `apm import dump && echo ok` said ok for a dump refused whole).
  if ((s.lines ?? 0) > 0 && (s.stored ?? 0) === 0) {
    console.error('apm import: nothing was stored: every line or point was refused (reasons above)');
    process.exitCode = 1;
  }
}

export async function exportMain(argv: string[]): Promise<void> {
  const { values, positionals } = parseOptions(
    argv,
    {
      from: { type: 'string', default: '-1h' },
      to: { type: 'string', default: 'now' },
      output: { type: 'string', short: 'o' },
      core: { type: 'string', default: 'http://127.0.0.1:8080' },
      help: { type: 'boolean', default: false },
    },
    exportHelp,
  );
  if (values.help) return void console.log(exportHelp);
  if (positionals.length === 0) throw new UsageError(`name at least one metric\n\n${exportHelp}`);
  const url = coreUrl(values.core!, '/api/v1/export');
  for (const m of positionals) url.searchParams.append('match[]', m);
  url.searchParams.set('from', values.from!);
  url.searchParams.set('to', values.to!);
  // Into <file>.part, renamed to <file> only once the export is whole: a stream cut short (the
  // connection lost, Ctrl-C) left whole lines in <file> that looked like a complete export.
  // Opened first: an output that cannot be written is refused before anything is read.
  const partial = values.output === undefined ? null : `${values.output}.part`;
  const out = partial === null ? process.stdout : createWriteStream(partial);
  if (partial !== null) {
    try {
      await once(out, 'open');
    } catch (err) {
      throw new UsageError(`--output ${values.output}: cannot write ${partial}: ${(err as Error).message}`);
    }
  }
  // Nothing came: the empty part goes.
  const discard = () => {
    if (partial === null) return;
    out.destroy();
    rmSync(partial, { force: true });
  };
  let res: Response;
  try {
    res = await fetch(url, { headers: authHeaders() });
  } catch (err) {
    discard();
    throw unreachable(values.core!, err);
  }
  if (!res.ok || res.body === null) {
    discard();
    const raw = await res.text();
    let error = raw.slice(0, 300);
    try {
      error = (JSON.parse(raw) as { error?: string }).error ?? error;
    } catch {
      // not JSON: shown as it came
    }
    throw answerError(res.status, `export refused (HTTP ${res.status}): ${error}`);
  }
  let bytes = 0;
  let lines = 0;
  let failed: string | null = null;
  let tail = '';
  const progress = new Progress();
  const watch = new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, i + 1)) lines++;
      // The core ends a stream it could not finish with a line {"error": …}: found in the last bytes.
      tail = (tail + chunk.toString('utf8', Math.max(0, chunk.length - 4096))).slice(-4096);
      progress.show(() => `apm export: ${lines} lines, ${mib(bytes)}`);
      done(null, chunk);
    },
  });
  try {
    await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>), watch, out);
  } catch (err) {
    progress.end();
    throw new CommandError(`export stopped after ${lines} lines: ${(err as Error).message}${partial === null ? '' : `; what came is in ${partial} (incomplete)`}`);
  }
  const m = /\{"error":"((?:[^"\\]|\\.)*)"\}\n?$/.exec(tail);
  if (m !== null) failed = JSON.parse(`"${m[1]!}"`) as string;
  if (failed === null && partial !== null) renameSync(partial, values.output!);
  progress.show(() => `apm export: ${lines} lines, ${mib(bytes)}${values.output === undefined ? '' : failed === null ? ` written to ${values.output}` : ` in ${partial} (incomplete)`}`, true);
  progress.end();
  if (failed !== null) throw new CommandError(failed);
  if (lines === 0) console.error(`apm export: no series matched ${positionals.join(', ')} from ${values.from} to ${values.to}`);
}
