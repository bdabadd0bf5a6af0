// The core's HTTP server timeouts: no deadline per request (an import's body arrives as fast as
// the core stores it: Node cut bodies at 300 s with a bare 408), a deadline per silent connection.

import { connect } from 'node:net';
import { Hono } from 'hono';
import { afterEach, describe, expect, it } from 'vitest';
import { serveHttp } from './http-server.js';

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

async function start(idleMs: number) {
  const app = new Hono();
  app.post('/body', async (c) => c.text(String((await c.req.arrayBuffer()).byteLength)));
  const { server, port } = await serveHttp(app.fetch, '127.0.0.1', 0, idleMs);
  closers.push(() => new Promise<void>((r) => server.close(() => r())));
  closers.push(async () => void server.closeAllConnections());
  return { server, port };
}

describe('the core HTTP server', () => {
  it('regression: sets no deadline on a request (Node\'s 300 s cut imports), and takes a body that keeps arriving past the idle time', async () => {
    const { server, port } = await start(600);
    expect(server.requestTimeout).toBe(0);
    const sock = connect(port, '127.0.0.1');
    let answer = '';
    sock.on('data', (d) => (answer += d.toString()));
    sock.write('POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
    // 2 s of body in pieces 300 ms apart: longer than the idle time, never idle that long.
    for (let i = 0; i < 7; i++) {
      sock.write('3\r\nabc\r\n');
      await new Promise((r) => setTimeout(r, 300));
    }
    sock.write('0\r\n\r\n');
    await new Promise((r) => setTimeout(r, 200));
    expect(answer).toMatch(/^HTTP\/1.1 200[\s\S]*\r\n\r\n21$/);
    sock.destroy();
  });

  it('closes a connection silent for the idle time', async () => {
    const { port } = await start(500);
    const sock = connect(port, '127.0.0.1');
    const closed = new Promise<number>((r) => sock.once('close', () => r(Date.now())));
    const t0 = await new Promise<number>((r) => sock.once('connect', () => r(Date.now())));
    sock.write('POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc');
    const ms = (await closed) - t0;
    expect(ms).toBeGreaterThanOrEqual(450);
    expect(ms).toBeLessThan(5000);
  });
});
