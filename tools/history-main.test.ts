import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommandError, UsageError } from '../lib/args.js';
import { exportMain, importMain } from './history-main.js';
import { main as queryMain } from './query-main.js';

// Port 9 (discard) on loopback: nothing listens there, so any request fails at once.
const nowhere = 'http://127.0.0.1:9';

describe('regression: apm import, export and query tell their own mistakes from the core\'s failures', () => {
  it('import of a directory is refused as such (before: "cannot reach the core", EISDIR)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-import-dir-'));
    const err = await importMain([dir, '--core', nowhere]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toMatch(/is not a file/);
  });

  it('export to an output it cannot write is refused before anything is read (before: read first, then "what came is in <file>.part", a file that cannot exist)', async () => {
    const err = await exportMain(['m', '--output', '/nonexistent-apm-dir/x.jsonl', '--core', nowhere]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toMatch(/--output \/nonexistent-apm-dir\/x\.jsonl: cannot write/);
  });

  it('a core that cannot be reached is a failure (exit 1), a bad option a usage error (exit 2)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-export-'));
    for (const run of [() => queryMain(['FROM * SELECT m WINDOW 5s COMPUTE max', '--core', nowhere]), () => exportMain(['m', '--output', join(dir, 'x'), '--core', nowhere])]) {
      const err = await run().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CommandError);
      expect((err as Error).message).toMatch(/cannot reach the core at http:\/\/127\.0\.0\.1:9/);
    }
    await expect(queryMain(['FROM * SELECT m WINDOW 5s COMPUTE max', '--format', 'xml'])).rejects.toBeInstanceOf(UsageError);
  });
});
