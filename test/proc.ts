// Test helpers for real processes and sockets: spawn `apm` from the build, wait for a line,
// poll for a condition (bounded waits, never fixed sleeps).

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const cliPath = fileURLToPath(new URL('../dist/tools/cli.js', import.meta.url));

export interface Daemon {
  child: ChildProcess;
  output: string[];
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Resolves with the exit code once the process ends by itself. */
  exited(): Promise<number | null>;
}

export function spawnApm(args: string[]): Daemon {
  const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  const waiters: (() => void)[] = [];
  // Whole lines only: a line may arrive in several chunks.
  const partial = { stdout: '', stderr: '' };
  const onData = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
    const text = partial[stream] + chunk.toString('utf8');
    const lines = text.split('\n');
    partial[stream] = lines.pop()!;
    output.push(...lines.filter((l) => l.length > 0));
    waiters.forEach((w) => w());
  };
  child.stdout!.on('data', onData('stdout'));
  child.stderr!.on('data', onData('stderr'));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    output,
    waitFor(pattern, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          for (const line of output) {
            const m = pattern.exec(line);
            if (m !== null) {
              clearTimeout(timer);
              resolve(m);
              return true;
            }
          }
          return false;
        };
        const timer = setTimeout(() => reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms; output:\n${output.join('\n')}`)), timeoutMs);
        if (!check()) waiters.push(check);
      });
    },
    exited() {
      return exited;
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Polls `cond` every 20 ms until it yields a value other than undefined, or fails after `timeoutMs`. */
export async function until<T>(cond: () => T | undefined | Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves at the start of the next wall-clock second (plus `offsetMs`). */
export async function nextSecond(offsetMs = 20): Promise<number> {
  const now = Date.now();
  await new Promise((r) => setTimeout(r, 1000 - (now % 1000) + offsetMs));
  return Math.floor(Date.now() / 1000);
}
