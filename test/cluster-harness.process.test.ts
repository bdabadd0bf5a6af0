// The cluster harness the cluster tests and `apm bench --only cluster` share (tools/cluster-harness.ts):
// a process that used it must end by itself once it stops the harness. Publishes that started
// together each dialled a NATS connection of their own and stop() closed only the last, so the
// others kept reconnecting to the stopped servers forever and the bench never exited.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const dist = fileURLToPath(new URL('../dist/tools/', import.meta.url));

it('a process that publishes from several racks at once ends once it stops the harness', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'apm-harness-'));
  // No core node made the streams: every publish is refused ("no responders"), after its connection is made.
  const script = `
    import { ClusterHarness } from ${JSON.stringify(join(dist, 'cluster-harness.js'))};
    import { BatchMaker } from ${JSON.stringify(join(dist, 'bench-batch.js'))};
    const h = await ClusterHarness.start(${JSON.stringify(dir)}, 1);
    const m = new BatchMaker({ rack: 'r', servers: 2, metrics: 4, distShare: 0, seed: 1, shards: 4 });
    const results = await Promise.allSettled([0, 1, 2, 3].map((i) => h.publish(m.body(1_700_000_000 + i))));
    await h.stop();
    console.log('stopped', results.filter((r) => r.status === 'rejected').length);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  clearTimeout(timer);
  rmSync(dir, { recursive: true, force: true });
  expect(out).toContain('stopped 4');
  expect(code, `still running 30 s after it stopped the harness:\n${out}`).toBe(0);
}, 60_000);
