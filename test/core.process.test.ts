// Real `apm core` processes: a SIGKILL in the middle of sustained ingest loses nothing that
// was acknowledged (with bodies and worker buffers recycled: every value read back exact); a full storage budget answers 503 and recovers by itself; and the whole
// chain StatsD → edge → rack → core stores exactly what was sent.

import { afterEach, describe, expect, it } from 'vitest';
import dgram from 'node:dgram';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KindCode } from '../schema/codec.js';
import { rackSecondBody } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { nextSecond, spawnApm, until, type Daemon } from './proc.js';

const daemons: Daemon[] = [];
afterEach(async () => {
  for (const d of daemons.splice(0)) await d.stop('SIGKILL');
});

async function startCore(data: string, extra: string[] = []): Promise<{ core: Daemon; url: string }> {
  const core = spawnApm(['core', '--listen', '127.0.0.1:0', '--data', data, ...extra]);
  daemons.push(core);
  const m = await core.waitFor(/apm core: (http:\/\/127\.0\.0\.1:\d+)\//);
  return { core, url: m[1]! };
}

/** The value one server stored for a metric at a second, read back over the query API. */
async function valueAt(url: string, metric: string, server: string, second: number): Promise<number | undefined> {
  const q = `FROM ${server} SELECT ${metric} WINDOW 1s COMPUTE max`;
  const r = (await (await fetch(`${url}/api/v1/query?q=${encodeURIComponent(q)}&from=${second * 1000}&to=${(second + 1) * 1000}`)).json()) as { windows: { values: { max: number } }[] };
  return r.windows[0]?.values.max;
}

/** One rack second of 200 gauges and a distribution for `servers` servers (S = the core's default 64). */
function rackSecond(rack: string, seq: number, second: number, servers: number, value: number): Uint8Array {
  const points = Array.from({ length: 200 }, (_, i) => ({ name: `m.${i}`, kind: KindCode.Gauge as const, value: value + i }));
  const block = buildColumns(points, [{ name: 'lat', values: [value, value + 1] }]);
  return rackSecondBody({
    rack,
    session: 1,
    seq,
    second,
    late: false,
    shards: 64,
    servers: Array.from({ length: servers }, (_, s) => ({ server: `${rack}-s${s}`, blocks: [block] })),
    rollup: buildColumns([], [{ name: 'lat', values: [value, value + 1] }], ['m.0', 'm.1', 'lat']),
  });
}

describe('apm core process', () => {
  it('loses no acknowledged request when SIGKILLed in the middle of sustained ingest (2 workers)', async () => {
    const data = mkdtempSync(join(tmpdir(), 'apm-core-'));
    const { core, url } = await startCore(data, ['--workers', '2']);
    const acked: { seq: number; second: number; rack: number }[] = [];
    const t = Math.floor(Date.now() / 1000) - 200;
    let seq = 1;
    let stop = false;
    // Four concurrent senders, like four racks, until the kill.
    const sender = async (rack: number) => {
      while (!stop) {
        const mySeq = seq++;
        const second = t + mySeq;
        try {
          const res = await fetch(`${url}/api/v1/ingest`, { method: 'POST', body: rackSecond(`rk${rack}`, mySeq, second, 10, mySeq) });
          if (res.status === 204) acked.push({ seq: mySeq, second, rack });
        } catch {
          return; // the core died mid-request: not acknowledged
        }
      }
    };
    const senders = [0, 1, 2, 3].map(sender);
    await until(() => (acked.length >= 150 ? true : undefined), 20_000, '150 acknowledged batches');
    // Bodies and the workers' copies were recycled (core/buffers.ts) while every value below stayed exact.
    const metrics = await (await fetch(`${url}/metrics`)).text();
    for (const pool of ['bodies', 'workers']) expect(Number(new RegExp(`apm_core_ingest_buffers_total\\{pool="${pool}",event="reused"\\} (\\d+)`).exec(metrics)?.[1]), `${pool} reused`).toBeGreaterThan(50);
    core.child.kill('SIGKILL');
    stop = true;
    await Promise.all(senders);
    await core.stop();
    // Restart (the workers replay their WALs), then read every acknowledged second back.
    const again = await startCore(data, ['--workers', '2']);
    expect(Number((/(\d+) sections replayed/.exec(again.core.output.join('\n')) ?? [])[1])).toBeGreaterThan(0);
    for (const a of acked) {
      expect(await valueAt(again.url, 'm.7', `rk${a.rack}-s9`, a.second), `request ${a.seq}`).toBe(a.seq + 7);
      expect(await valueAt(again.url, 'lat', `rk${a.rack}-s9`, a.second), `request ${a.seq}`).toBe(a.seq + 1);
    }
    expect(await again.core.stop('SIGTERM')).toBe(0);
  });

  it('exits 0 on SIGTERM while its workers write rows, and keeps every acknowledged point', async () => {
    // A worker wrote rows in a chain of setImmediate steps; one step still queued when the stop
    // arrived ran on a closing store and the process died of SIGSEGV (2 of 12 SIGTERMs under load).
    const metric = (text: string, name: string) => Number(new RegExp(`^${name} (\\d+)`, 'm').exec(text)?.[1] ?? NaN);
    for (let attempt = 0; attempt < 3; attempt++) {
      const data = mkdtempSync(join(tmpdir(), 'apm-core-'));
      const { core, url } = await startCore(data, ['--workers', '2']);
      // Four racks backfill old seconds (their blocks are due at once) until rows are seen being
      // written while the head still holds data: the stop lands in the middle of the row chain.
      const t = Math.floor(Date.now() / 1000) - 600;
      const acked: { second: number; rack: number; seq: number }[] = [];
      let seq = 1;
      let stop = false;
      const sender = async (rack: number) => {
        while (!stop) {
          const mySeq = seq++;
          try {
            const res = await fetch(`${url}/api/v1/ingest`, { method: 'POST', body: rackSecond(`rk${rack}`, mySeq, t + mySeq, 10, mySeq) });
            if (res.status === 204) acked.push({ second: t + mySeq, rack, seq: mySeq });
            else await res.text();
          } catch {
            return;
          }
        }
      };
      const senders = [0, 1, 2, 3].map(sender);
      await until(async () => {
        const m = await (await fetch(`${url}/metrics`)).text();
        return metric(m, 'apm_core_rows_written_total') > 0 && metric(m, 'apm_core_head_bytes') > 0 ? true : undefined;
      }, 30_000, 'rows being written while the head holds data');
      const code = await core.stop('SIGTERM');
      stop = true;
      await Promise.all(senders);
      expect(code, `exit of the core stopped while writing rows (attempt ${attempt}): signal ${core.child.signalCode}\n${core.output.slice(-5).join('\n')}`).toBe(0);
      if (attempt < 2) continue;
      // What it acknowledged is there after a restart.
      const again = await startCore(data, ['--workers', '2']);
      for (const a of acked.filter((_, i) => i % 10 === 0)) expect(await valueAt(again.url, 'm.7', `rk${a.rack}-s9`, a.second), `request ${a.seq}`).toBe(a.seq + 7);
      expect(await again.core.stop('SIGTERM')).toBe(0);
    }
  });

  it('answers 503 when its storage budget is reached, keeps serving, recovers by itself, and retention deletes the old rows', async () => {
    const data = mkdtempSync(join(tmpdir(), 'apm-core-'));
    const { url } = await startCore(data, ['--disk-bytes-max', '2MiB', '--retention', '20s']);
    // The oldest block the retention keeps now (a second before it is refused, past_retention):
    // its rows go once it is 20 s past its end, within 80 s from now.
    // Taken per request: the oldest kept block moves on at a minute's boundary.
    const oldest = () => {
      const now = Math.floor(Date.now() / 1000);
      return now - 20 - ((now - 20) % 60);
    };
    let status = 0;
    let body = '';
    // Bounded in count and time; the budget is checked every 500 ms, and the WAL grows by whole
    // pages of every shard's entries together (core/walkey.ts), so how many requests fill it varies.
    const fillUntil = Date.now() + 60_000;
    for (let seq = 1; seq < 4000 && status !== 503 && Date.now() < fillUntil; seq++) {
      const res = await fetch(`${url}/api/v1/ingest`, { method: 'POST', body: rackSecond(`full${Math.floor(seq / 20)}`, seq, oldest() + (seq % 20), 10, seq) });
      status = res.status;
      body = await res.text();
    }
    expect(status).toBe(503);
    expect(JSON.parse(body)).toMatchObject({ reason: 'storage_full' });
    expect((await fetch(`${url}/api/v1/servers`)).status).toBe(200);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/apm_core_requests_rejected_total\{reason="storage_full"\} [1-9]/);
    let ok = false;
    const deadline = Date.now() + 85_000;
    for (let seq = 1000; !ok && Date.now() < deadline; seq++) {
      const res = await fetch(`${url}/api/v1/ingest`, { method: 'POST', body: rackSecond('full', seq, Math.floor(Date.now() / 1000), 1, seq) });
      ok = res.status === 204;
      await res.text();
      if (!ok) await new Promise((r) => setTimeout(r, 500));
    }
    expect(ok).toBe(true);
    // The old blocks are past the retention: the sweep deletes them (disk use stays bounded).
    let deleted = 0;
    const until2 = Date.now() + 30_000;
    while (deleted === 0 && Date.now() < until2) {
      deleted = Number(/apm_core_retention_rows_deleted_total (\d+)/.exec(await (await fetch(`${url}/metrics`)).text())?.[1] ?? 0);
      if (deleted === 0) await new Promise((r) => setTimeout(r, 500));
    }
    expect(deleted).toBeGreaterThan(0);
  }, 150_000);

  it('stores exactly what StatsD clients sent, through real edge, rack and core processes', async () => {
    const data = mkdtempSync(join(tmpdir(), 'apm-core-'));
    const { core, url } = await startCore(data);
    const rack = spawnApm(['rack', '--rack', 'e2e', '--listen', '127.0.0.1:0', '--core', url, '--http', '127.0.0.1:0', '--spool', mkdtempSync(join(tmpdir(), 'apm-spool-')), '--lateness', '1s']);
    daemons.push(rack);
    const rm = await rack.waitFor(/UDP on 127\.0\.0\.1:(\d+) .*metrics on (http:\/\/127\.0\.0\.1:\d+)/);
    const rackPort = Number(rm[1]);
    const acked = async () => Number(/apm_rack_batches_acked_total (\d+)/.exec(await (await fetch(`${rm[2]}/metrics`)).text())?.[1] ?? 0);
    const edge = spawnApm(['edge', '--server', 'e2e-web-1', '--rack', `127.0.0.1:${rackPort}`, '--statsd', '127.0.0.1:0', '--no-host']);
    daemons.push(edge);
    const statsd = Number((await edge.waitFor(/StatsD on 127\.0\.0\.1:(\d+)/))[1]);
    // A stored query made before the data: its windows must hold exactly what was sent.
    const created = await fetch(`${url}/api/v1/queries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'rpc', query: 'FROM e2e-* SELECT e2e.rpc WINDOW 1s COMPUTE sum, count, max' }) });
    expect(created.status).toBe(201);
    const queryId = ((await created.json()) as { id: string }).id;
    const sock = dgram.createSocket('udp4');
    const sent = new Map<number, number>();
    for (let k = 0; k < 3; k++) {
      const second = await nextSecond(100);
      sent.set(second, 40 + k);
      await new Promise((r) => sock.send(`e2e.queue:${40 + k}|g\ne2e.rpc:2|c\ne2e.rpc:3|c`, statsd, '127.0.0.1', r));
    }
    sock.close();
    // The edge reports every second (its own counters), so batches keep coming: wait until
    // the seconds after the last one sent have been acknowledged by the core.
    const base = await acked();
    const deadline = Date.now() + 15_000;
    while ((await acked()) < base + 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    // This core reads packed points and said so: the rack packed them (what follows proves them exact).
    expect(/apm_rack_points_packed (\d+)/.exec(await (await fetch(`${rm[2]}/metrics`)).text())?.[1]).toBe('1');
    const metrics = (await (await fetch(`${url}/api/v1/metrics`)).json()) as { metrics: { name: string; kind: string }[] };
    expect(metrics.metrics.find((m) => m.name === 'e2e.queue')?.kind).toBe('gauge');
    expect(metrics.metrics.find((m) => m.name === 'e2e.rpc')?.kind).toBe('counter');
    const servers = (await (await fetch(`${url}/api/v1/servers`)).json()) as { servers: { id: string; rack: string }[] };
    expect(servers.servers).toContainEqual(expect.objectContaining({ id: 'e2e-web-1', rack: 'e2e' }));
    // The stored query's windows (evaluated 3 s after each window ends), over HTTP.
    const lastSent = Math.max(...sent.keys());
    const windows = await until(async () => {
      const r = (await (await fetch(`${url}/api/v1/queries/${queryId}/results?from=-5m`)).json()) as { windows: { startMs: number; values: Record<string, number>; servers: number }[] };
      return r.windows.some((w) => w.startMs === lastSent * 1000) ? r.windows : undefined;
    }, 15_000, 'the stored query window of the last second sent');
    for (const second of sent.keys()) {
      expect(windows.find((w) => w.startMs === second * 1000)).toMatchObject({ servers: 1, values: { sum: 5, count: 1, max: 5 } });
    }
    // And the command line prints the same as a table.
    const cli = spawnApm(['query', `FROM e2e-web-1 SELECT e2e.queue WINDOW 1s COMPUTE max`, '--from', String(Math.min(...sent.keys()) * 1000), '--to', String((lastSent + 1) * 1000), '--core', url]);
    expect(await cli.exited()).toBe(0);
    const table = cli.output.join('\n');
    for (const [second, v] of sent) expect(table).toMatch(new RegExp(`${new Date(second * 1000).toISOString().slice(11, 19)}\\s+1\\s+1\\s+${v}\\s+0`));
    for (const [second, v] of sent) {
      expect(await valueAt(url, 'e2e.queue', 'e2e-web-1', second)).toBe(v);
      expect(await valueAt(url, 'e2e.rpc', 'e2e-web-1', second)).toBe(5);
    }
    expect(await core.stop('SIGTERM')).toBe(0);
  });
});
