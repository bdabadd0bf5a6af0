// Freshness (issue 5, DESIGN §7): with 1,000 simulated servers feeding two racks and a core in
// real time, the time from a stored-query window's close (its end + the core's query lateness)
// to its result arriving on the live (SSE) stream.

import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Figure } from './bench-edge.js';
import { start, stopChild } from './bench-fleet.js';
import { Simulator } from './simulate.js';

export async function freshnessFigures(seconds: number): Promise<Figure[]> {
  const data = mkdtempSync(join(tmpdir(), 'apm-bench-fresh-'));
  const queryLatenessMs = 3000;
  const procs: ChildProcess[] = [];
  try {
    const core = await start(['core', '--listen', '127.0.0.1:0', '--data', `${data}/core`, '--query-lateness', `${queryLatenessMs / 1000}s`], /(http:\/\/127\.0\.0\.1:\d+)\//);
    procs.push(core.proc);
    const url = core.match[1]!;
    const racks: number[] = [];
    for (const r of ['f1', 'f2']) {
      const rack = await start(['rack', '--rack', r, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--core', url, '--spool', `${data}/${r}`, '--servers-max', '1000'], /UDP on 127\.0\.0\.1:(\d+)/);
      procs.push(rack.proc);
      racks.push(Number(rack.match[1]));
    }
    const created = await fetch(`${url}/api/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'cpu', query: 'FROM * SELECT sim.cpu.0 WINDOW 5s COMPUTE max, p99' }) });
    const { id } = (await created.json()) as { id: string };
    const sim = new Simulator({ racks: racks.map((port) => ({ host: '127.0.0.1', port })), servers: 1000, metrics: 20, distShare: 0.05, datagramBytes: 1432, seed: 5, prefix: 'fresh' });
    await sim.start();
    // Windows that start 10 s after the simulator (every server up, every name known) all count.
    const warmEndMs = Date.now() + 10_000;
    const lags: number[] = [];
    const servers: number[] = [];
    const abort = new AbortController();
    const res = await fetch(`${url}/api/v1/queries/${id}/live`, { signal: abort.signal });
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    const until = Date.now() + seconds * 1000;
    let text = '';
    const reading = (async () => {
      while (Date.now() < until) {
        const { value, done } = await reader.read();
        if (done) break;
        const now = Date.now();
        text += decoder.decode(value);
        let i: number;
        while ((i = text.indexOf('\n\n')) >= 0) {
          const event = text.slice(0, i);
          text = text.slice(i + 2);
          const m = /data: (.*)/.exec(event);
          if (m === null) continue;
          const w = JSON.parse(m[1]!) as { endMs: number; revision: number; servers: number };
          if (w.revision !== 0 || w.endMs - 5000 < warmEndMs) continue;
          lags.push(now - (w.endMs + queryLatenessMs));
          servers.push(w.servers);
        }
      }
    })();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    abort.abort();
    await reading.catch(() => undefined);
    await sim.stop();
    // Every window after the warm-up counts, complete or not (before: only those complete at their
    // first result, so the slow, incomplete ones were left out of the percentiles); a run where
    // more than 1% came incomplete measured the freshness of partial answers, and fails.
    const incomplete = servers.filter((n) => n !== 1000).length;
    if (lags.length === 0 || incomplete > 0.01 * lags.length) throw new Error(`bench freshness INVALID RUN: ${lags.length} windows after the warm-up arrived on the live stream in ${seconds} s, ${incomplete} of them without all 1,000 servers (servers per window: ${[...new Set(servers)].join(', ') || 'none'})`);
    const full = [...lags].sort((a, b) => a - b);
    const q = (p: number) => full[Math.min(full.length - 1, Math.floor(p * (full.length - 1)))] ?? NaN;
    return [
      { name: `freshness: window close → result on the live stream, 1,000 servers (${full.length} windows, ${incomplete} incomplete)`, value: q(0.5) / 1000, unit: `s p50, ${(q(0.99) / 1000).toFixed(3)} s p99`, target: 'p99 ≤ 1.5 s' },
      { name: '  (window end → result, with racks at 2 s lateness and the core at 3 s)', value: (q(0.5) + queryLatenessMs) / 1000, unit: `s p50, ${((q(0.99) + queryLatenessMs) / 1000).toFixed(3)} s p99` },
    ];
  } finally {
    // (Before: a child already dead by a signal — exitCode null — was waited for forever.)
    for (const p of procs.reverse()) await stopChild(p);
    rmSync(data, { recursive: true, force: true });
  }
}
