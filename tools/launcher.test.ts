import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const apm = fileURLToPath(new URL('./apm', import.meta.url));

/**
 * The node flags `tools/apm <command>` starts node with: a module given through APM_NODE_ARGS
 * prints them and exits before the command runs (so the daemon itself never starts).
 */
async function nodeFlags(command: string): Promise<string[]> {
  const probe = 'data:text/javascript,console.log(JSON.stringify(process.execArgv));process.exit(0)';
  const { stdout } = await run(apm, [command, '--help'], { env: { ...process.env, APM_NODE_ARGS: `--import ${probe}` } });
  return JSON.parse(stdout) as string[];
}

describe('tools/apm (the launcher)', () => {
  it("starts a rack and a core with a 128 MiB initial old generation (V8's default began a full collection after each one), the edge with a 1 MiB young generation", async () => {
    for (const command of ['rack', 'core']) {
      const flags = await nodeFlags(command);
      expect(flags).toContain('--initial-old-space-size=128');
      expect(flags.some((f) => f.startsWith('--max-semi-space-size'))).toBe(false);
    }
    const edge = await nodeFlags('edge');
    expect(edge).toContain('--max-semi-space-size=1');
    expect(edge.some((f) => f.startsWith('--initial-old-space-size'))).toBe(false);
    // Other commands (short-lived tools) run with node's defaults.
    const query = await nodeFlags('query');
    expect(query.some((f) => f.startsWith('--initial-old-space-size') || f.startsWith('--max-semi-space-size'))).toBe(false);
  });

  it('regression: the daemons and tools that take options only refuse a stray argument (before: `apm core /srv/apm` ran on ./data), and the rack a --core that is not an http URL (before: a stack trace)', async () => {
    for (const command of ['core', 'rack', 'edge', 'demo', 'simulate', 'bench']) {
      const err = (await run(apm, [command, 'stray']).catch((e: unknown) => e)) as { code: number; stderr: string };
      expect(err.code, command).toBe(2);
      expect(err.stderr, command).toMatch(/unexpected argument "stray"/);
    }
    const err = (await run(apm, ['rack', '--rack', 'r1', '--core', 'localhost:8080']).catch((e: unknown) => e)) as { code: number; stderr: string };
    expect(err.code).toBe(2);
    expect(err.stderr).toMatch(/--core "localhost:8080" is not an http:\/\/ or https:\/\/ URL/);
    expect(err.stderr).not.toMatch(/TypeError|at /);
  });

  it('passes APM_NODE_ARGS to node, split on spaces, after its own flags', async () => {
    const flags = await nodeFlags('rack');
    // The probe itself arrived as two arguments: --import and its module.
    const at = flags.indexOf('--import');
    expect(at).toBeGreaterThan(flags.indexOf('--initial-old-space-size=128'));
    expect(flags[at + 1]).toMatch(/^data:text\/javascript,/);
  });
});
