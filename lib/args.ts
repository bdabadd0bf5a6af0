// Option parsing shared by every `apm` sub-command: node:util parseArgs plus checks that
// name the bad value and what to do (STYLE "Validate options at construction").

import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A command used wrongly (a bad option, a bad query): its message, exit 2. */
export class UsageError extends Error {}

/**
 * A command that failed while it ran (the core unreachable, refusing, answering an error, a
 * transfer cut short): its message, no stack, exit 1 — so a script can tell a typo (2) from an
 * outage (1).
 */
export class CommandError extends Error {}

/** Runs `f`; an error it throws becomes a UsageError (exit 2 with the message, no stack). */
export function usageOnError<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** Parses argv against `options`; throws UsageError with `help` appended on anything unknown. */
export function parseOptions<T extends OptionSpec>(argv: string[], options: T, help: string) {
  try {
    return parseArgs({ args: joinOptionValues(argv, options), options, allowPositionals: true, strict: true, allowNegative: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${help}`);
  }
}

/**
 * parseOptions for a command that takes options only: an argument that is not an option is
 * refused (before, `apm core /srv/apm` or `apm edge web-01` ran with the defaults — another data
 * directory, the host name as server id — and said nothing).
 */
export function parseFlags<T extends OptionSpec>(argv: string[], options: T, help: string) {
  const parsed = parseOptions(argv, options, help);
  if (parsed.positionals.length > 0) {
    throw new UsageError(`unexpected argument ${JSON.stringify(parsed.positionals[0])}: this command takes options only (--name value)\n\n${help}`);
  }
  return parsed;
}

/**
 * `--from -5m` → `--from=-5m`: an option that takes a value gets the next argument even when it
 * starts with `-` (relative times, negative offsets), which parseArgs otherwise refuses as
 * ambiguous (issue 15). A next argument that is itself one of the command's options (`--from
 * --to now`) is left alone, so a forgotten value still fails as one; nothing after `--` is touched.
 */
export function joinOptionValues(argv: readonly string[], options: OptionSpec): string[] {
  const takesValue = new Map<string, string>(); // as typed → how to attach a value
  const known = new Set<string>();
  for (const [name, o] of Object.entries(options)) {
    known.add(`--${name}`);
    if (o.type === 'boolean') known.add(`--no-${name}`);
    if (o.short !== undefined) known.add(`-${o.short}`);
    if (o.type !== 'string') continue;
    takesValue.set(`--${name}`, `--${name}=`);
    if (o.short !== undefined) takesValue.set(`-${o.short}`, `-${o.short}`); // parseArgs reads -f-5m as -f "-5m"
  }
  const isOption = (a: string) => a === '--' || known.has(a.startsWith('--') ? a.split('=', 1)[0]! : a);
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    const attach = takesValue.get(a);
    const next = argv[i + 1];
    if (attach !== undefined && next !== undefined && next.startsWith('-') && !isOption(next)) {
      out.push(`${attach}${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/**
 * An http:// or https:// URL option. "localhost:8080" parses as a URL of scheme "localhost:":
 * refused here, not at the first request with a stack trace.
 */
export function parseHttpUrl(value: string, flag: string): URL {
  let url: URL | null = null;
  try {
    url = new URL(value);
  } catch {
    // refused below
  }
  if (url === null || (url.protocol !== 'http:' && url.protocol !== 'https:')) throw new UsageError(`${flag} ${JSON.stringify(value)} is not an http:// or https:// URL (for example http://127.0.0.1:8080)`);
  return url;
}

/** `host:port`, `[v6]:port` or `:port` (host defaults to `defaultHost`). */
export function parseHostPort(value: string, flag: string, defaultHost = '127.0.0.1', portMin = 0): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || !(port >= 0 && port <= 65535)) {
    throw new UsageError(`${flag} ${JSON.stringify(value)} is not host:port (for example 127.0.0.1:7070 or [::1]:7070)`);
  }
  // A destination's port 0 (a listener's means "any free port") ended in a stack trace at the first send.
  if (port < portMin) throw new UsageError(`${flag} ${JSON.stringify(value)}: port ${port} is not a port to send to; give the rack's port, for example 127.0.0.1:7070`);
  const host = m[1] ?? (m[2] === '' ? defaultHost : m[2]!);
  return { host, port };
}

/** An integer option within [min, max]. */
export function parseIntOption(value: string | undefined, flag: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${flag} ${JSON.stringify(value)} must be an integer in ${min}..${max}`);
  return n;
}

/** `500ms`, `2s`, `5m`, `1h`, `1d` → milliseconds, within [minMs, maxMs]. */
export function parseDurationMs(value: string, flag: string, minMs: number, maxMs: number): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(value.trim());
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
  const ms = m === null ? NaN : Number(m[1]) * unit[m[2] as keyof typeof unit];
  if (!(ms >= minMs && ms <= maxMs)) throw new UsageError(`${flag} ${JSON.stringify(value)} must be a duration like 2s or 500ms between ${minMs} ms and ${maxMs} ms`);
  return ms;
}

/** `1024`, `64KiB`, `512MiB`, `2GiB` (also KB/MB/GB as powers of 1024) → bytes, within [min, max]. */
export function parseBytes(value: string, flag: string, min: number, max: number): number {
  const m = /^(\d+)\s*(|B|KiB|KB|MiB|MB|GiB|GB)$/i.exec(value.trim());
  const mult: Record<string, number> = { '': 1, b: 1, kib: 1024, kb: 1024, mib: 1024 ** 2, mb: 1024 ** 2, gib: 1024 ** 3, gb: 1024 ** 3 };
  const n = m === null ? NaN : Number(m[1]) * mult[m[2]!.toLowerCase()]!;
  if (!(n >= min && n <= max)) throw new UsageError(`${flag} ${JSON.stringify(value)} must be a size like 512MiB between ${min} and ${max} bytes`);
  return n;
}
