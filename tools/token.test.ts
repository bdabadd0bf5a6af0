import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseTokens, TokenSet } from '../core/auth.js';
import { CommandError, UsageError } from '../lib/args.js';
import { clusterMain } from './cluster-main.js';
import { coreUrl } from './core-client.js';
import { createToken, main as tokenMain } from './token.js';

describe('apm token create', () => {
  it('writes the racks an ingest token may send for (issue 16.3), and refuses an ingest token without them', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'apm-token-')), 'tokens');
    const token = createToken({ role: 'ingest', name: 'rack-r1', racks: 'r1,r2', file });
    expect(readFileSync(file, 'utf8')).toMatch(/^[0-9a-f]{64} ingest rack-r1 racks=r1,r2\n$/);
    const entry = new TokenSet(parseTokens(readFileSync(file, 'utf8'), file)).check(token)!;
    expect(entry.racks === '*' ? '*' : [...entry.racks]).toEqual(['r1', 'r2']);
    const f = (opts: Parameters<typeof createToken>[0], want: RegExp) => expect(() => createToken(opts)).toThrow(want);
    // Ingest without --racks.
    f({ role: 'ingest', name: 'rack-r3', file }, /--role ingest needs --racks/);
    // --racks on another role.
    f({ role: 'admin', name: 'me', racks: 'r1', file }, /--racks applies to --role ingest only/);
    // A bad rack id.
    f({ role: 'ingest', name: 'rack-r4', racks: 'r 4', file }, /--racks "r 4": rack id "r 4" is not/);
    createToken({ role: 'ingest', name: 'relay', racks: '*', file });
    expect(readFileSync(file, 'utf8').split('\n')[1]).toMatch(/ ingest relay racks=\*$/);
  });

  it('regression: refuses a name the file has already, and a directory as the file (before: two lines of one name; a stack trace)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-token-'));
    const file = join(dir, 'tokens');
    createToken({ role: 'read', name: 'ro', file });
    expect(() => createToken({ role: 'read', name: 'ro', file })).toThrow(UsageError);
    expect(() => createToken({ role: 'admin', name: 'ro', file })).toThrow(/--name "ro": .* has a token of that name already/);
    expect(readFileSync(file, 'utf8').split('\n').filter((l) => l !== '')).toHaveLength(1);
    expect(() => createToken({ role: 'read', name: 'x', file: dir })).toThrow(/--tokens .* is a directory/);
  });
});

describe('regression: the CLI\'s refusals', () => {
  it('apm token with options but no command is a usage error (before: the help, exit 0 — a script saved a line of help as the token)', async () => {
    await expect(tokenMain(['--role', 'admin', '--name', 'me', '--tokens', join(mkdtempSync(join(tmpdir(), 'apm-tok-')), 'tokens')])).rejects.toThrow(UsageError);
  });

  it('a --core without http:// or https:// is a usage error (before: "localhost:8080" parsed as a URL of scheme localhost:, then a stack trace)', () => {
    expect(() => coreUrl('localhost:8080', '/api/v1/query')).toThrow(/--core "localhost:8080" is not an http:\/\/ or https:\/\/ URL/);
    expect(coreUrl('http://127.0.0.1:8080/apm/', '/api/v1/query').href).toBe('http://127.0.0.1:8080/apm/api/v1/query');
  });

  it('apm cluster status of a core it cannot reach is a failure naming it, not a usage error (before: a stack trace; then exit 2, as for a typo)', async () => {
    await expect(clusterMain(['status', '--core', 'http://127.0.0.1:9'])).rejects.toThrow(/cannot reach the core at http:\/\/127\.0\.0\.1:9/);
    await expect(clusterMain(['status', '--core', 'http://127.0.0.1:9'])).rejects.toBeInstanceOf(CommandError);
  });
});
