import { describe, expect, it } from 'vitest';
import { UsageError } from '../lib/args.js';
import { benchHelp, benchSections, main } from './bench.js';

describe('apm bench', () => {
  it('refuses an --only that names no section (it ran nothing and printed nothing)', async () => {
    await expect(main(['--only', 'nope'])).rejects.toThrow(UsageError);
    await expect(main(['--only', 'nope'])).rejects.toThrow(/not a section; one of: edge, auth/);
  });

  it('lists every section in its help', () => {
    for (const s of benchSections) expect(benchHelp).toContain(s);
  });
});
