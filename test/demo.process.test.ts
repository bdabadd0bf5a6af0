// `npm start` runs `apm demo`: it must bring the whole chain up on a fresh data directory,
// show data flowing into the core, and stop cleanly on Ctrl-C (SIGINT).

import { describe, expect, it } from 'vitest';
import net from 'node:net';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnApm, until } from './proc.js';

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

describe('apm demo', () => {
  it('starts core, racks, edge and a simulated fleet, stores data, and stops on SIGINT', async () => {
    const port = await freePort();
    const data = mkdtempSync(join(tmpdir(), 'apm-demo-'));
    const demo = spawnApm(['demo', '--data', data, '--port', String(port), '--servers', '50', '--metrics', '30']);
    try {
      await demo.waitFor(/simulated fleet: .* sending/, 30_000);
      await demo.waitFor(new RegExp(`Dashboard: http://127\\.0\\.0\\.1:${port}/`), 10_000);
      const page = await fetch(`http://127.0.0.1:${port}/`);
      expect(page.headers.get('content-type')).toMatch(/^text\/html/);
      expect(await page.text()).toContain('<script src="/ui/app.js?v=');
      const servers = await until(async () => {
        const r = (await (await fetch(`http://127.0.0.1:${port}/api/v1/servers`)).json()) as { servers: { id: string; rack: string }[] };
        return r.servers.length >= 51 ? r.servers : undefined;
      }, 20_000, '50 simulated servers and this host at the core');
      expect(new Set(servers.map((s) => s.rack))).toEqual(new Set(['r1', 'r2']));
      await demo.waitFor(/ingest [\d,]+ points\/s/, 15_000);
      // The demo runs signed: every datagram verified with its rack's key (one file per rack,
      // mode 0600, its own secret, naming its rack: issue 16.5).
      for (const r of ['r1', 'r2']) expect(statSync(join(data, `${r}.keys`)).mode & 0o777).toBe(0o600);
      const secrets = ['r1', 'r2'].map((r) => / ([0-9a-f]{64}) rack=(r\d)$/m.exec(readFileSync(join(data, `${r}.keys`), 'utf8')));
      expect(secrets.map((m) => m?.[2])).toEqual(['r1', 'r2']);
      expect(secrets[0]![1]).not.toBe(secrets[1]![1]);
      const rack = await (await fetch('http://127.0.0.1:7071/metrics')).text();
      expect(rack).toMatch(/^apm_rack_auth_keys 1$/m);
      expect(rack).toMatch(/^apm_rack_datagrams_rejected_total\{reason="unauthenticated"\} 0$/m);
      expect(rack).toMatch(/^apm_rack_datagrams_rejected_total\{reason="bad_hmac"\} 0$/m);
      expect(Number(/^apm_rack_datagrams_received_total (\d+)$/m.exec(rack)?.[1])).toBeGreaterThan(100);
      const first = (await (await fetch(`http://127.0.0.1:${port}/api/v1/queries`)).json()) as { queries: { id: string; name: string }[] };
      expect(first.queries.map((q) => q.name)).toContain('RPC latency (ms)');
      const cpu = first.queries.find((q) => q.name === 'Fleet CPU (%)')!;
      await until(async () => {
        const r = (await (await fetch(`http://127.0.0.1:${port}/api/v1/queries/${cpu.id}/results?from=-5m`)).json()) as { windows: unknown[] };
        return r.windows.length > 0 ? true : undefined;
      }, 20_000, 'a first window of the fleet CPU query');
      expect(await demo.stop('SIGINT')).toBe(0);

      // A second start reuses the data directory: same stored queries, history kept.
      const again = spawnApm(['demo', '--data', data, '--port', String(port), '--servers', '50', '--metrics', '30']);
      try {
        await again.waitFor(/Dashboard: /, 30_000);
        const second = (await (await fetch(`http://127.0.0.1:${port}/api/v1/queries`)).json()) as { queries: { id: string; name: string }[] };
        expect(second.queries.map((q) => q.id).sort()).toEqual(first.queries.map((q) => q.id).sort());
        const r = (await (await fetch(`http://127.0.0.1:${port}/api/v1/queries/${cpu.id}/results?from=-10m`)).json()) as { windows: unknown[] };
        expect(r.windows.length).toBeGreaterThan(0);
        expect(await again.stop('SIGINT')).toBe(0);
      } finally {
        await again.stop('SIGKILL');
      }
    } finally {
      await demo.stop('SIGKILL');
    }
  });
});
