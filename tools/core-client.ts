// What every `apm` command that talks to a core's API shares: its URL from --core, and the
// token from APM_TOKEN (a core started with --tokens refuses requests without one).

import { UsageError } from '../lib/args.js';

/** `path` on the core at `core` (a --core value), or a UsageError naming the bad value. */
export function coreUrl(core: string, path: string): URL {
  let base: URL;
  try {
    base = new URL(core);
  } catch {
    base = null as unknown as URL;
  }
  // "localhost:8080" parses as a URL of scheme "localhost:" (and then failed with a stack trace).
  if (base === null || (base.protocol !== 'http:' && base.protocol !== 'https:')) throw new UsageError(`--core ${JSON.stringify(core)} is not an http:// or https:// URL (for example http://127.0.0.1:8080)`);
  // A core behind a reverse proxy at a path prefix keeps it.
  return new URL(`${base.pathname.replace(/\/+$/, '')}${path}`, base);
}

/** The Authorization header for APM_TOKEN, or none. */
export function authHeaders(): Record<string, string> {
  const t = process.env['APM_TOKEN'];
  return t === undefined || t === '' ? {} : { authorization: `Bearer ${t}` };
}
