// `apm token create`: a new API token for the core (issue 8). The token is printed once; only
// its SHA-256 goes into the tokens file (core/auth.ts reads it).

import { randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { hashToken, isRole, parseRacks, parseTokens, roles, TokenFileError, tokenNamePattern } from '../core/auth.js';
import { parseOptions, UsageError } from '../lib/args.js';

export const tokenHelp = `apm token: API tokens for the core

Usage: apm token create --role <role> --name <name> [--racks <id>,<id>…] --tokens <file>

  --role <role>     read (GET routes), write (stored queries, and read), ingest (racks'
                    POST /api/v1/ingest and status reports only) or admin (everything)
  --name <name>     who holds it, ${tokenNamePattern.source}: shown in the core's errors and
                    the key of its rate limit
  --racks <ids>     role ingest, required: the racks (their --rack ids, comma-separated) this
                    token may send for; the core refuses (403) a second or a status report of any
                    other rack. '*' allows every rack (a relay); admin tokens may send for any
  --tokens <file>   the core's tokens file (created with mode 0600 if missing); the core
                    reads it with --tokens <file> and again on SIGHUP
  --help            this text

Prints the token alone on the last line of stdout. It is shown once: the file keeps only its
SHA-256. A rack takes an ingest token with --token-file; a client sends
"Authorization: Bearer <token>". To revoke one, delete its line and send the core SIGHUP.`;

export async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseOptions(
    argv,
    { role: { type: 'string' }, name: { type: 'string' }, racks: { type: 'string' }, tokens: { type: 'string' }, help: { type: 'boolean', default: false } },
    tokenHelp,
  );
  if (values.help) {
    console.log(tokenHelp);
    return;
  }
  // Options without 'create' printed the help and exited 0: a script saving the last line as a
  // token saved a line of help.
  if (positionals.length === 0) throw new UsageError(`which token command? use 'apm token create'\n\n${tokenHelp}`);
  if (positionals[0] !== 'create' || positionals.length > 1) throw new UsageError(`unknown token command ${JSON.stringify(positionals.join(' '))}; use 'apm token create'\n\n${tokenHelp}`);
  const token = createToken({ role: values.role, name: values.name, racks: values.racks, file: values.tokens });
  console.log(`added token "${values.name}" (role ${values.role}${values.racks === undefined ? '' : `, racks ${values.racks}`}) to ${values.tokens}; it is shown only this once:`);
  console.log(token);
}

/** Validates, appends `<sha256> <role> <name>[ racks=<ids>]` to the file and returns the new token. */
export function createToken(opts: { role: string | undefined; name: string | undefined; racks?: string | undefined; file: string | undefined }): string {
  const { role, name, racks, file } = opts;
  if (role === undefined || !isRole(role)) throw new UsageError(`--role ${JSON.stringify(role ?? '')} must be one of ${roles.join(', ')}`);
  if (name === undefined || !tokenNamePattern.test(name)) throw new UsageError(`--name ${JSON.stringify(name ?? '')} must be ${tokenNamePattern.source} (no white space), e.g. --name rack-r01`);
  // Issue 16.3: an ingest token names the racks it speaks for; no other role takes a list.
  if (role === 'ingest' && racks === undefined) throw new UsageError(`--role ingest needs --racks <rack id>[,<rack id>…]: the racks this token may send for, e.g. --name rack-r1 --racks r1 (or --racks '*' for any rack)`);
  if (role !== 'ingest' && racks !== undefined) throw new UsageError(`--racks applies to --role ingest only (${role === 'admin' ? 'an admin token may send for any rack' : `a ${role} token sends no rack data`})`);
  if (racks !== undefined) {
    const r = parseRacks(racks);
    if ('error' in r) throw new UsageError(`--racks ${JSON.stringify(racks.slice(0, 80))}: ${r.error}`);
  }
  if (file === undefined) throw new UsageError('--tokens <file> is required: the core\'s tokens file, e.g. --tokens /etc/apm/tokens');
  let before = '';
  if (existsSync(file)) {
    if (statSync(file).isDirectory()) throw new UsageError(`--tokens ${file} is a directory; give the tokens file, e.g. --tokens /etc/apm/tokens`);
    before = readFileSync(file, 'utf8');
    let existing: ReturnType<typeof parseTokens>;
    try {
      existing = parseTokens(before, file); // never append to a file the core would refuse
    } catch (err) {
      if (err instanceof TokenFileError) throw new UsageError(`--tokens ${err.message}`);
      throw err;
    }
    // Names key the rate limits and the live-stream shares, and revoking is deleting the name's line.
    if (existing.some((t) => t.name === name)) throw new UsageError(`--name ${JSON.stringify(name)}: ${file} has a token of that name already; choose another name (or delete its line to replace it)`);
  } else mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  // 32 random bytes: guessing is hopeless; the prefix makes a leaked token easy to recognize.
  const token = `apm_${randomBytes(32).toString('base64url')}`;
  const sep = before === '' || before.endsWith('\n') ? '' : '\n';
  appendFileSync(file, `${sep}${hashToken(token)} ${role} ${name}${racks === undefined ? '' : ` racks=${racks}`}\n`, { mode: 0o600 });
  return token;
}
