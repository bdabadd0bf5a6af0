// Option parsing shared by every `apm` sub-command: node:util parseArgs plus checks that
// name the bad value and what to do (STYLE "Validate options at construction").

import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** Parses argv against `options`; throws UsageError with `help` appended on anything unknown. */
export function parseOptions<T extends OptionSpec>(argv: string[], options: T, help: string) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true, allowNegative: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${help}`);
  }
}

/** `host:port`, `[v6]:port` or `:port` (host defaults to `defaultHost`). */
export function parseHostPort(value: string, flag: string, defaultHost = '127.0.0.1'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = m === null ? NaN : Number(m[3]);
  if (m === null || !(port >= 0 && port <= 65535)) {
    throw new UsageError(`${flag} ${JSON.stringify(value)} is not host:port (for example 127.0.0.1:7070 or [::1]:7070)`);
  }
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
