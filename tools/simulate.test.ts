// The simulator's frames live in per-second arenas reused once their second has left the resend
// ring (tools/simulate.ts SimServer.arenas): a NACK for a second still in the ring must resend
// exactly the bytes first sent, however many seconds were sent since.

import dgram from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeFrame, Encoder } from '../schema/codec.js';
import { udpPayloadBytesMax } from '../schema/limits.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UsageError } from '../lib/args.js';
import { Simulator } from './simulate.js';
import { main as simulateMain } from './simulate-main.js';

const cleanup: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

describe('Simulator resends', () => {
  it('answers a NACK for a second 9 seconds back with the bytes it first sent', async () => {
    const sink = dgram.createSocket('udp4');
    await new Promise<void>((r) => sink.bind(0, '127.0.0.1', r));
    cleanup.push(() => new Promise<void>((r) => sink.close(() => r())));
    // First copy of each (second, part) of one server, then any copy after the NACK.
    const first = new Map<string, Buffer>();
    const again: { key: string; bytes: Buffer }[] = [];
    let nacked = false;
    let session = 0;
    let simAddress: dgram.RemoteInfo | undefined;
    let newest = 0;
    sink.on('message', (msg, rinfo) => {
      const r = decodeFrame(msg, udpPayloadBytesMax);
      if (!r.ok || r.msg.type !== 'edgeSecond' || r.msg.server !== 't-r1-00000') return;
      simAddress = rinfo;
      session = r.msg.session;
      newest = Math.max(newest, r.msg.second);
      const key = `${r.msg.second}/${r.msg.part}`;
      if (!first.has(key)) first.set(key, Buffer.from(msg));
      else if (nacked) again.push({ key, bytes: Buffer.from(msg) });
    });
    const sim = new Simulator({
      racks: [{ host: '127.0.0.1', port: (sink.address() as { port: number }).port }],
      servers: 2,
      metrics: 600,
      distShare: 0.05,
      datagramBytes: 1432,
      seed: 5,
      prefix: 't',
      speedup: 10,
    });
    await sim.start();
    cleanup.push(() => sim.stop());
    const deadline = Date.now() + 20_000;
    let oldest = 0;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      if (oldest === 0 && first.size > 0) oldest = Math.min(...[...first.keys()].map((k) => Number(k.split('/')[0])));
      if (oldest > 0 && newest >= oldest + 12) break;
    }
    expect(newest, 'seconds sent within 20 s').toBeGreaterThanOrEqual(oldest + 12);
    // A second 9 back from the newest seen: still in the ring (10 seconds) unless the simulator
    // sent another before the NACK reached it (the test and the simulator share one event loop);
    // then every part is counted missed, and the test asks again about the newer seconds.
    nacked = true;
    for (let attempt = 0; attempt < 5 && again.length === 0; attempt++) {
      const second = newest - 9;
      const parts = [...first.keys()].filter((k) => k.startsWith(`${second}/`)).map((k) => Number(k.split('/')[1]));
      expect(parts.length).toBeGreaterThan(1);
      const missedBefore = sim.counters.resend_missed;
      const resentBefore = again.length;
      sink.send(new Encoder().nack({ server: 't-r1-00000', session, second, missingParts: Uint16Array.from(parts), unknownHashes: new Uint32Array(0) }), simAddress!.port, simAddress!.address);
      const until = Date.now() + 5_000;
      const answered = () => again.length - resentBefore + sim.counters.resend_missed - missedBefore;
      while (Date.now() < until && answered() < parts.length) await new Promise((r) => setTimeout(r, 10));
      // Each part named is either resent or counted missed (pushed out of the ring), never both.
      expect(answered(), `attempt ${attempt}: parts resent or counted missed`).toBe(parts.length);
      for (const a of again.slice(resentBefore)) expect(a.key.startsWith(`${second}/`), `resent ${a.key} for a NACK of ${second}`).toBe(true);
    }
    await sim.stop();
    expect(again.length, 'parts resent (the ring still held the second)').toBeGreaterThan(0);
    for (const a of again) expect(a.bytes.equals(first.get(a.key)!), `part ${a.key} resent as first sent`).toBe(true);
  });
});

describe('apm simulate options', () => {
  it('regression: refuses one --key-file with several --rack (every MAC covers one rack: the others refused every datagram as bad_hmac)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'apm-sim-keys-'));
    const file = join(dir, 'r1.keys');
    writeFileSync(file, `1 ${'ab'.repeat(32)} rack=r1\n`, { mode: 0o600 });
    try {
      await expect(simulateMain(['--rack', '127.0.0.1:9', '--rack', '127.0.0.1:10', '--key-file', file, '--seconds', '1'])).rejects.toThrow(UsageError);
      await expect(simulateMain(['--rack', '127.0.0.1:9', '--rack', '127.0.0.1:10', '--key-file', file, '--seconds', '1'])).rejects.toThrow(/--key-file names one rack/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
