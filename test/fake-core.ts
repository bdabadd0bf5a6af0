// A stand-in for the core in rack tests (contract v2, issue 12): answers GET /api/v1/placement,
// takes RackSecond bodies (the container and every section decoded and verified), refuses a
// body cut for another shard count with 409 shards_mismatch, de-duplicates by (rack, session,
// seq) as the core does, can answer 503 or stop listening, and checks the bearer token.

import http from 'node:http';
import type { SeriesColumns } from '../schema/codec.js';
import { shardsDefault } from '../schema/limits.js';
import type { SecondHeader, ShardSectionMessage } from '../schema/section.js';
import { decodeSecond } from '../rack/recut.js';

/** One accepted body, regrouped per server (what the rack merged for that second). */
export interface CoreBatch extends SecondHeader {
  /** Every server's points and summaries in this body (rebuilt from the sections). */
  servers: { server: string; series: SeriesColumns }[];
  /** Distribution rollups (server 0xffff in the sections) and every name the body carried. */
  rollup: SeriesColumns;
  sections: ShardSectionMessage[];
  bytes: number;
}

export class FakeCore {
  /** Accepted bodies in arrival order (duplicates by rack, session, seq are not repeated here). */
  readonly batches: CoreBatch[] = [];
  /** Ingest answers this instead while it is 300 or more (e.g. 503). */
  status = 204;
  /** With status ≥ 300: its body is sent a byte every dripMs, never ending (0: at once). */
  dripMs = 0;
  /** The core's S: GET /api/v1/placement answers it; bodies cut for another get 409. */
  shards = shardsDefault;
  /** Whether the placement answer says this core reads packed points (a core from before the pack says nothing). */
  pointPack = true;
  /** Placement answer status while not 200 (e.g. 503). */
  placementStatus = 200;
  placementRequests = 0;
  /** Bodies refused with 409 shards_mismatch. */
  mismatches = 0;
  /** Bodies already accepted (same rack, session, seq): acknowledged, not stored again. */
  duplicates = 0;
  invalid = 0;
  readonly contentTypes = new Set<string>();
  /** A path prefix the core is reached under (a reverse proxy's): requests outside it get 404. */
  prefix = '';
  private readonly seen = new Set<string>();
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
        if (!(req.url ?? '').startsWith(`${this.prefix}/`)) {
          res.writeHead(404).end('{"error":"outside the prefix"}');
          return;
        }
        req.url = req.url!.slice(this.prefix.length);
        if (req.method === 'GET' && req.url === '/api/v1/placement') {
          this.placementRequests++;
          if (this.placementStatus !== 200) res.writeHead(this.placementStatus).end('{"error":"unavailable"}');
          else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.pointPack ? { shards: this.shards, pointPack: true } : { shards: this.shards }));
          return;
        }
        if (req.method !== 'POST' || req.url !== '/api/v1/ingest') {
          // Status reports and anything else: acknowledged, not recorded.
          res.writeHead(204).end();
          return;
        }
        this.ingest(req, new Uint8Array(Buffer.concat(chunks)), res);
      });
    });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    this.server = server;
    this.port = (server.address() as { port: number }).port;
    return this.port;
  }

  private ingest(req: http.IncomingMessage, body: Uint8Array, res: http.ServerResponse): void {
    this.contentTypes.add(req.headers['content-type'] ?? '');
    if (this.status >= 300) {
      if (this.dripMs === 0) return void res.writeHead(this.status).end('{"error":"unavailable"}');
      res.writeHead(this.status, { 'content-length': '1000000' });
      const drip = setInterval(() => res.write('x'), this.dripMs);
      res.once('close', () => clearInterval(drip));
      return;
    }
    if (req.headers['content-type'] !== 'application/x-apm-second') {
      this.invalid++;
      res.writeHead(415).end(JSON.stringify({ error: `content-type ${req.headers['content-type']}, want application/x-apm-second` }));
      return;
    }
    let decoded: ReturnType<typeof decodeSecond>;
    try {
      decoded = decodeSecond(body);
    } catch (err) {
      this.invalid++;
      res.writeHead(400).end(JSON.stringify({ error: (err as Error).message }));
      return;
    }
    const { input, sections } = decoded;
    if (input.shards !== this.shards) {
      this.mismatches++;
      res.writeHead(409, { 'content-type': 'application/json' }).end(JSON.stringify({ reason: 'shards_mismatch', shards: this.shards }));
      return;
    }
    const key = `${input.rack}/${input.session}/${input.seq}`;
    if (this.seen.has(key)) {
      this.duplicates++;
    } else {
      this.seen.add(key);
      const servers = input.servers.map((s) => ({ server: s.server, series: s.blocks[0]! }));
      this.batches.push({ rack: input.rack, session: input.session, seq: input.seq, second: input.second, late: input.late, shards: input.shards, servers, rollup: input.rollup, sections, bytes: body.length });
    }
    res.writeHead(204).end();
  }

  /** Every metric name the accepted bodies carried. */
  names(): Set<string> {
    const out = new Set<string>();
    for (const b of this.batches) {
      const r = b.rollup;
      for (let j = 0; j < r.nameEnds.length; j++) out.add(Buffer.from(r.nameBytes.subarray(j === 0 ? 0 : r.nameEnds[j - 1]!, r.nameEnds[j]!)).toString('latin1'));
    }
    return out;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s === null) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
