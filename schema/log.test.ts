import { describe, expect, it } from 'vitest';
import { createServer, type Socket } from 'node:net';
import { connectNats, overlapRetries, retryJetStream } from './log.js';

/** f() failing with each message in turn, then answering 'ok'. */
function failing(messages: string[]): { f: () => Promise<string>; calls: () => number } {
  let n = 0;
  return {
    f: async () => {
      const m = messages[n++];
      if (m !== undefined) throw new Error(m);
      return 'ok';
    },
    calls: () => n,
  };
}

describe('retryJetStream', () => {
  it('asks again while a create races another node\'s ("subjects overlap with an existing stream"), a leader is elected or a call times out', async () => {
    const r = failing(['subjects overlap with an existing stream', 'no responders available for request', 'TIMEOUT']);
    expect(await retryJetStream('KV apm-placement', r.f, 10_000)).toBe('ok');
    expect(r.calls()).toBe(4);
  });

  it('says at once when an overlap stays (another stream captures the subjects), instead of asking for a minute', async () => {
    const r = failing(Array.from({ length: 50 }, () => 'subjects overlap with an existing stream'));
    await expect(retryJetStream('KV apm-placement', r.f, 60_000)).rejects.toThrow(/^KV apm-placement: subjects overlap with an existing stream \(still after 3 retries: another stream of this NATS account captures these subjects/);
    expect(r.calls()).toBe(overlapRetries + 1);
  });

  it('regression: asks again when the client wraps "no responders" as "jetstream is not enabled" (a KV put before its stream had a leader: a node exited at start)', async () => {
    let n = 0;
    const f = async () => {
      if (n++ === 0) throw new Error('jetstream is not enabled', { cause: new Error("no responders: '$KV.apm-nodes.c1'") });
      return 'ok';
    };
    expect(await retryJetStream('the first heartbeat', f, 10_000)).toBe('ok');
    expect(n).toBe(2);
  });

  it('throws any other error at once, named', async () => {
    const r = failing(['stream name already in use with a different configuration']);
    await expect(retryJetStream('KV apm-placement', r.f, 10_000)).rejects.toThrow(/^KV apm-placement: stream name already in use/);
    expect(r.calls()).toBe(1);
  });
});

describe('connectNats', () => {
  it('keeps reconnecting after a server refuses the credentials twice in a row once connected (before: the connection closed for good)', async () => {
    // A minimal NATS server on loopback: the 1st and 4th connections are accepted, the 2nd and
    // 3rd are refused with an authorization error (a server restarting while its accounts load).
    let conns = 0;
    const sockets: Socket[] = [];
    const server = createServer((sock) => {
      sockets.push(sock);
      const n = ++conns;
      sock.on('error', () => undefined);
      sock.write('INFO {"server_id":"fake","server_name":"fake","version":"2.10.0","proto":1,"max_payload":1048576,"headers":true}\r\n');
      let buf = '';
      sock.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        if (!buf.includes('PING\r\n')) return;
        buf = buf.replaceAll('PING\r\n', '');
        if (n === 2 || n === 3) {
          sock.end("-ERR 'Authorization Violation'\r\n");
          return;
        }
        sock.write('PONG\r\n');
        if (n === 1) setTimeout(() => sock.destroy(), 50); // then the server goes away
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const nc = await connectNats([`nats://127.0.0.1:${port}`], {}, 'test-auth-refusals');
    let closed = false;
    void nc.closed().then(() => (closed = true));
    try {
      for (let i = 0; i < 100 && conns < 4; i++) await new Promise((r) => setTimeout(r, 100));
      await nc.flush(); // answered by the 4th connection
      expect(conns).toBeGreaterThanOrEqual(4);
      expect(closed).toBe(false);
    } finally {
      await nc.close().catch(() => undefined);
      for (const s of sockets) s.destroy();
      server.close();
    }
  });
});
