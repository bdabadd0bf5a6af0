// A stand-in for the core's ingest endpoint in rack tests: records every decoded batch, can
// answer 503 or stop listening, and checks the bearer token when given one.

import http from 'node:http';
import { decodeFrame, type RackBatchMessage } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';

export class FakeCore {
  readonly batches: RackBatchMessage[] = [];
  status = 200;
  invalid = 0;
  private server: http.Server | null = null;
  port = 0;

  constructor(private readonly token: string | null = null) {}

  async start(port = 0): Promise<number> {
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (this.token !== null && req.headers.authorization !== `Bearer ${this.token}`) {
          res.writeHead(401).end('{"error":"bad token"}');
          return;
        }
        if (this.status !== 200) {
          res.writeHead(this.status).end('{"error":"unavailable"}');
          return;
        }
        const r = decodeFrame(new Uint8Array(Buffer.concat(chunks)), batchBytesMax);
        if (!r.ok || r.msg.type !== 'rackBatch') {
          this.invalid++;
          res.writeHead(400).end(JSON.stringify({ error: r.ok ? 'not a batch' : r.detail }));
          return;
        }
        this.batches.push(r.msg);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    this.server = server;
    this.port = (server.address() as { port: number }).port;
    return this.port;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s === null) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
