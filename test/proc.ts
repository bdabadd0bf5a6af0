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
  return spawnDaemon(process.execPath, [cliPath, ...args]);
}

/** A Daemon (see proc.ts) for any command, with an optional per-line hook and stdin. */
export function spawnDaemon(command: string, args: string[], opts: { stdin?: boolean } = {}): Daemon & { onLine: ((line: string) => void) | null } {
  const child = spawn(command, args, { stdio: [opts.stdin === true ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  const waiters = new Set<() => boolean>();
  const partial = { stdout: '', stderr: '' };
  const d = {
    child,
    output,
    onLine: null as ((line: string) => void) | null,
    waitFor(pattern: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> {
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
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms from ${[command, ...args].join(' ').slice(0, 160)}; output:\n${output.join('\n')}`));
        }, timeoutMs);
        if (!check()) waiters.add(check);
      });
    },
    exited: () => exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
  const onData = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
    const lines = (partial[stream] + chunk.toString('utf8')).split('\n');
    partial[stream] = lines.pop()!;
    for (const l of lines) {
      if (l.length === 0) continue;
      if (d.onLine !== null && stream === 'stdout') d.onLine(l);
      else output.push(l);
    }
    // Bounded: a long run keeps the newest lines only.
    if (output.length > 2000) output.splice(0, output.length - 2000);
    for (const w of [...waiters]) if (w()) waiters.delete(w);
  };
  child.stdout!.on('data', onData('stdout'));
  child.stderr!.on('data', onData('stderr'));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return d;
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
