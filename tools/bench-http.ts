// HTTP load for the benches: a GET under N keep-alive connections for a few seconds, by wrk when
// it is installed (a C client on epoll: on this 2-core box it leaves the server a core), else by
// autocannon. autocannon is a Node client: at ~100 KB an answer its own event loop falls behind
// before the server does, and its latency figures then measure that lag (docs/figures.md, twelfth
// session: the same core answered 8,300 req/s with p99 7 ms under autocannon, 14,500 with p99
// 1.7 ms under wrk, while its own request-to-last-byte p99 was 0.1 ms in both).

import { execFile, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';

const run = promisify(execFile);
// From the package, wherever this file runs from (dist/tools/ or, under vitest, tools/).
const autocannonBin = createRequire(import.meta.url).resolve('autocannon/autocannon.js');

export type LoadClient = 'wrk' | 'autocannon';

/** What a load run measured: latency in ms as the client saw it; `failed` counts non-2xx answers and socket errors. */
export interface HttpLoad {
  client: LoadClient;
  requests: number;
  requestsPerS: number;
  meanMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  failed: number;
}

/** Whether `wrk` runs here (Debian: `apt install wrk`). */
export function wrkInstalled(): boolean {
  const r = spawnSync('wrk', ['--version'], { encoding: 'utf8' });
  return r.error === undefined && /^wrk /m.test(`${r.stdout}${r.stderr}`);
}

/** A wrk time ("383.00us", "1.72ms", "1.00s", "2.00m") in ms. */
function wrkMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(text);
  if (m === null) throw new Error(`wrk output: cannot read the time "${text}"`);
  const n = Number(m[1]);
  return m[2] === 'us' ? n / 1000 : n * { ms: 1, s: 1e3, m: 6e4, h: 3.6e6 }[m[2] as 'ms' | 's' | 'm' | 'h'];
}

/** Figures from `wrk --latency` output; throws when a figure is missing (an invalid run is never read as zeros). */
export function parseWrk(out: string): HttpLoad {
  const latency = /^\s*Latency\s+(\S+)\s+\S+\s+(\S+)/m.exec(out);
  const pct = (p: number) => {
    const m = new RegExp(`^\\s*${p}%\\s+(\\S+)`, 'm').exec(out);
    if (m === null) throw new Error(`wrk output has no ${p}% line (was --latency given?):\n${out}`);
    return wrkMs(m[1]!);
  };
  const total = /^\s*(\d+) requests in ([\d.]+\w+)/m.exec(out);
  const rate = /^Requests\/sec:\s+([\d.]+)/m.exec(out);
  if (latency === null || total === null || rate === null) throw new Error(`wrk output not understood:\n${out}`);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = socket === null ? 0 : socket.slice(1).reduce((a, b) => a + Number(b), 0);
  return {
    client: 'wrk',
    requests: Number(total[1]),
    requestsPerS: Number(rate[1]),
    meanMs: wrkMs(latency[1]!),
    p50Ms: pct(50),
    p90Ms: pct(90),
    p99Ms: pct(99),
    maxMs: wrkMs(latency[2]!),
    failed: non2xx + socketErrors,
  };
}

/** GET `url` over `connections` keep-alive connections for `seconds`, by `client`. */
export async function httpLoad(client: LoadClient, url: string, connections: number, seconds: number): Promise<HttpLoad> {
  if (client === 'wrk') {
    const { stdout } = await run('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '5s', '--latency', url], { maxBuffer: 1 << 20 });
    return parseWrk(stdout);
  }
  const { stdout } = await run(process.execPath, [autocannonBin, '-j', '-c', String(connections), '-d', String(seconds), url], { maxBuffer: 1 << 24 });
  const r = JSON.parse(stdout) as { requests: { average: number; total: number }; latency: { average: number; p50: number; p90: number; p99: number; max: number }; non2xx: number; errors: number };
  return {
    client: 'autocannon',
    requests: r.requests.total,
    requestsPerS: r.requests.average,
    meanMs: r.latency.average,
    p50Ms: r.latency.p50,
    p90Ms: r.latency.p90,
    p99Ms: r.latency.p99,
    maxMs: r.latency.max,
    failed: r.non2xx + r.errors,
  };
}
