// The ingest route's body path under @hono/node-server (issue 12): a body of declared length goes
// from the socket into a recycled buffer and nothing else reads it. Regression: Hono's bodyLimit
// read `c.req.raw.body`, which made @hono/node-server attach a web stream to the socket that
// copied every chunk into a queue nobody read — each body allocated twice on the HTTP thread
// (its collector then paused /healthz for up to half a second while 1,000 servers were ingested).

import { mkdtempSync, rmSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KindCode } from '../schema/codec.js';
import { rackSecondBody } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { openNode, type CoreNode } from './node.js';

describe('ingest body under @hono/node-server', () => {
  let dir: string;
  let node: CoreNode;
  let server: ServerType;
  let base = '';
  /** Per request: 'data' listeners on the socket's message when its answer was sent. */
  const dataListenersAtAnswer: number[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'apm-ingest-body-'));
    node = await openNode({ dataDir: dir, workers: 1, shards: 4, queryLatenessMs: 0 });
    server = serve({
      fetch: (req, env) => {
        const { incoming, outgoing } = env as { incoming: IncomingMessage; outgoing: ServerResponse };
        outgoing.once('finish', () => dataListenersAtAnswer.push(incoming.listenerCount('data')));
        return node.app.fetch(req, env);
      },
      hostname: '127.0.0.1',
      port: 0,
    });
    await new Promise<void>((r) => server.once('listening', () => r()));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
    await node.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reads a body of declared length once, leaving no reader attached to the socket', async () => {
    const second = Math.floor(Date.now() / 1000) - 120;
    const servers = Array.from({ length: 40 }, (_, i) => `s${i}`);
    for (let seq = 1; seq <= 3; seq++) {
      // ~330 KB (doubles that are not short decimals: the rack cannot pack them): several socket chunks.
      const points = Array.from({ length: 1000 }, (_, m) => ({ name: `m${m}`, kind: KindCode.Gauge as const, value: Math.PI * (m + seq) }));
      const body = rackSecondBody({ rack: 'r1', session: 5, seq, second: second + seq, late: false, shards: 4, servers: servers.map((server) => ({ server, blocks: [buildColumns(points, [])] })), rollup: buildColumns([], []) });
      expect(body.length).toBeGreaterThan(150_000);
      const r = await fetch(`${base}/api/v1/ingest`, { method: 'POST', body, headers: { 'content-type': 'application/octet-stream' } });
      expect(r.status).toBe(204);
    }
    expect(dataListenersAtAnswer).toEqual([0, 0, 0]);
    expect(node.pool.counters.requests_ingested).toBe(3);
  });

  const metric = async (line: RegExp) => Number(line.exec(await (await fetch(`${base}/metrics`)).text())?.[1] ?? NaN);

  /** Writes `head` and `body` on a raw socket; resolves with the answer once its JSON came (or what came in 5 s: a test fails rather than hangs). */
  function rawRequest(head: string, body: Uint8Array | string = ''): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      let text = '';
      const sock = connect((server.address() as { port: number }).port, '127.0.0.1', () => {
        sock.write(head);
        sock.write(body);
      });
      setTimeout(() => {
        sock.destroy();
        resolve(text);
      }, 5000).unref();
      sock.on('data', (d: Buffer) => {
        text += d.toString();
        if (/\r\n\r\n[\s\S]*\}/.test(text)) {
          sock.destroy();
          resolve(text);
        }
      });
      sock.on('error', reject);
    });
  }

  it('refuses a declared length over the bound before reading or counting the request, as for any body', async () => {
    const requests = await metric(/^apm_core_ingest_requests_total (\d+)$/m);
    const tooLarge = await metric(/^apm_core_requests_rejected_total\{reason="too_large"\} (\d+)$/m);
    // A raw request: a client would not declare 2 GB and send 10 bytes.
    const answer = await rawRequest('POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 2000000000\r\n\r\n', '0123456789');
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(answer).toMatch(/"error":"ingest body exceeds \d+ bytes","reason":"too_large"/);
    expect(await metric(/^apm_core_requests_rejected_total\{reason="too_large"\} (\d+)$/m)).toBe(tooLarge + 1);
    expect(await metric(/^apm_core_ingest_requests_total (\d+)$/m)).toBe(requests);
  });

  it('regression: refuses a chunked body (411) before reading it: it was buffered whole outside the bodies budget, so a few never-ending ones held gigabytes', async () => {
    const refused = await metric(/^apm_core_requests_rejected_total\{reason="length_required"\} (\d+)$/m);
    // A chunked body that never ends: the answer comes at once, not at its end.
    const answer = await rawRequest('POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n', Buffer.alloc(65_536, 7));
    expect(answer).toMatch(/^HTTP\/1\.1 411 /);
    expect(answer).toMatch(/"reason":"length_required"/);
    expect(await metric(/^apm_core_requests_rejected_total\{reason="length_required"\} (\d+)$/m)).toBe(refused + 1);
  });
});
