// What every `apm` command that talks to a core's API shares: its URL from --core, and the
// token from APM_TOKEN (a core started with --tokens refuses requests without one).

import { CommandError, parseHttpUrl, UsageError } from '../lib/args.js';

/** `path` on the core at `core` (a --core value), or a UsageError naming the bad value. */
export function coreUrl(core: string, path: string): URL {
  const base = parseHttpUrl(core, '--core');
  // A core behind a reverse proxy at a path prefix keeps it.
  return new URL(`${base.pathname.replace(/\/+$/, '')}${path}`, base);
}

/** The Authorization header for APM_TOKEN, or none. */
export function authHeaders(): Record<string, string> {
  const t = process.env['APM_TOKEN'];
  return t === undefined || t === '' ? {} : { authorization: `Bearer ${t}` };
}

/**
 * An error answer of the core as the error a command ends with: 400 is the command's input
 * (exit 2), anything else a failure (exit 1); 401 and 403 say how this CLI sends a token.
 */
export function answerError(status: number, message: string): Error {
  if (status === 400) return new UsageError(message);
  const hint = status === 401 || status === 403 ? ` (this command sends the token in the environment variable APM_TOKEN: APM_TOKEN=<token> apm …; ${process.env['APM_TOKEN'] ? 'the one set was refused' : 'none is set'})` : '';
  return new CommandError(`${message}${hint}`);
}

/** The core could not be reached: a failure (exit 1). */
export function unreachable(core: string, err: unknown, start = 'apm core'): CommandError {
  const e = err as Error & { cause?: Error };
  return new CommandError(`cannot reach the core at ${core}: ${e.message}${e.cause ? ` (${e.cause.message})` : ''}; start it (${start}) or give its URL with --core`);
}

/**
 * One JSON call to the core's API: its status, parsed body (null for 204) and text. Unreachable,
 * not JSON and error answers become the command's errors (answerError); a parse error points at
 * its character in `queryText`.
 */
export async function callCore(core: string, method: string, path: string, body?: unknown, queryText = ''): Promise<{ status: number; json: unknown; raw: string }> {
  const url = coreUrl(core, path);
  let res: Response;
  let raw: string;
  try {
    res = await fetch(url, { method, headers: { ...authHeaders(), ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) });
    raw = await res.text();
  } catch (err) {
    throw unreachable(core, err);
  }
  if (res.status === 204) return { status: 204, json: null, raw };
  let json: { error?: string; position?: number };
  try {
    json = JSON.parse(raw) as typeof json;
  } catch {
    throw new CommandError(`the core at ${core} answered HTTP ${res.status} with a body that is not JSON: ${raw.slice(0, 200)}`);
  }
  if (!res.ok) {
    const pointer = json.position === undefined || queryText === '' ? '' : `\n  ${queryText}\n  ${' '.repeat(json.position)}^`;
    throw answerError(res.status, `${json.error ?? res.statusText}${pointer}`);
  }
  return { status: res.status, json, raw };
}
