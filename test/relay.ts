// A lossy UDP relay between edges and a rack, for tests: drops, duplicates and delays
// (reorders) edge → rack datagrams with a seeded generator, passes the rack's NACKs back to
// the edge, and records every datagram each edge sent (before any loss) as the truth.

import dgram from 'node:dgram';
import { decodeFrame, type EdgeSecondMessage } from '../schema/codec.js';

export interface RelayOptions {
  rackPort: number;
  lossRate: number;
  dupRate: number;
  reorderMaxMs: number;
  seed: number;
}

export class LossyRelay {
  private listen: dgram.Socket | null = null;
  private readonly upstream = new Map<string, dgram.Socket>();
  /** Every distinct data part each edge sent: server → second → part → message. */
  readonly sent = new Map<string, Map<number, Map<number, EdgeSecondMessage>>>();
  private closed = false;
  dropped = 0;
  duplicated = 0;
  forwarded = 0;
  private s: number;

  constructor(private readonly opts: RelayOptions) {
    this.s = opts.seed >>> 0;
  }

  private rand(): number {
    this.s = (Math.imul(this.s, 1664525) + 1013904223) >>> 0;
    return this.s / 2 ** 32;
  }

  async start(): Promise<number> {
    const listen = dgram.createSocket('udp4');
    listen.on('message', (msg, from) => this.fromEdge(msg, from));
    await new Promise<void>((r) => listen.bind(0, '127.0.0.1', r));
    this.listen = listen;
    return listen.address().port;
  }

  private fromEdge(msg: Buffer, from: dgram.RemoteInfo): void {
    const r = decodeFrame(msg, 65_507);
    if (r.ok && r.msg.type === 'edgeSecond' && r.msg.parts > 0) {
      const m = r.msg;
      let bySecond = this.sent.get(m.server);
      if (bySecond === undefined) this.sent.set(m.server, (bySecond = new Map()));
      let parts = bySecond.get(m.second);
      if (parts === undefined) bySecond.set(m.second, (parts = new Map()));
      parts.set(m.part, m);
    }
    const key = `${from.address}:${from.port}`;
    let up = this.upstream.get(key);
    if (up === undefined) {
      up = dgram.createSocket('udp4');
      up.on('message', (nack) => {
        if (!this.closed) this.listen?.send(nack, from.port, from.address);
      });
      up.bind(0, '127.0.0.1');
      this.upstream.set(key, up);
    }
    if (this.rand() < this.opts.lossRate) {
      this.dropped++;
      return;
    }
    const copies = this.rand() < this.opts.dupRate ? 2 : 1;
    if (copies === 2) this.duplicated++;
    for (let c = 0; c < copies; c++) {
      const delay = this.opts.reorderMaxMs > 0 ? Math.floor(this.rand() * this.opts.reorderMaxMs) : 0;
      const socket = up;
      setTimeout(() => {
        if (this.closed) return;
        this.forwarded++;
        socket.send(msg, this.opts.rackPort, '127.0.0.1');
      }, delay);
    }
  }

  close(): void {
    this.closed = true;
    this.listen?.close();
    for (const u of this.upstream.values()) u.close();
  }
}
