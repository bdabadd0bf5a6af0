import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseTokens, TokenSet } from '../core/auth.js';
import { createToken } from './token.js';

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
});
