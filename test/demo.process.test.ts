// `npm start` runs `apm demo`: it must bring the whole chain up on a fresh data directory,
// show data flowing into the core, and stop cleanly on Ctrl-C (SIGINT).

import { describe, expect, it } from 'vitest';
import net from 'node:net';
import { mkdtempSync } from 'node:fs';
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
    const demo = spawnApm(['demo', '--data', mkdtempSync(join(tmpdir(), 'apm-demo-')), '--port', String(port), '--servers', '50', '--metrics', '30']);
    try {
      await demo.waitFor(/simulated fleet: .* sending/, 30_000);
      const servers = await until(async () => {
        const r = (await (await fetch(`http://127.0.0.1:${port}/api/v1/servers`)).json()) as { servers: { id: string; rack: string }[] };
        return r.servers.length >= 51 ? r.servers : undefined;
      }, 20_000, '50 simulated servers and this host at the core');
      expect(new Set(servers.map((s) => s.rack))).toEqual(new Set(['r1', 'r2']));
      await demo.waitFor(/ingest [\d,]+ points\/s/, 15_000);
      expect(await demo.stop('SIGINT')).toBe(0);
    } finally {
      await demo.stop('SIGKILL');
    }
  });
});
