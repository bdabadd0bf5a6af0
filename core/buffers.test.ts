import { createServer, request, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { BodyBudget, BodyError, BufferPool, readBodyInto } from './buffers.js';

describe('BufferPool', () => {
  it('hands back buffers of the size class, keeps at most its byte bound, and counts each event', () => {
    const pool = new BufferPool(256 * 1024);
    const a = pool.take(70_000);
    expect(a.byteLength).toBe(128 * 1024);
    pool.give(a);
    expect(pool.take(100_000)).toBe(a);
    const b = pool.take(1);
    expect(b.byteLength).toBe(64 * 1024);
    pool.give(a);
    pool.give(b);
    pool.give(new ArrayBuffer(128 * 1024)); // over the bound: not kept
    pool.give(new ArrayBuffer(1000)); // not a size of the pool
    const moved = pool.take(1); // b again
    structuredClone(moved, { transfer: [moved] }); // detached: 0 bytes
    pool.give(moved);
    expect(pool.keptBytes).toBe(128 * 1024);
    expect(pool.counters).toEqual({ reused: 2, allocated: 2, discarded: 3 });
  });
});

describe('readBodyInto', () => {
  async function serve(handle: (req: IncomingMessage) => Promise<string>): Promise<{ port: number; close: () => void }> {
    const server = createServer((req, res) => {
      handle(req).then(
        (text) => res.end(text),
        (err: unknown) => res.end(err instanceof BodyError ? `${err.status} ${err.message}` : `error ${(err as Error).message}`),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { port: (server.address() as { port: number }).port, close: () => server.close() };
  }

  function post(port: number, body: Buffer, declared: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/', headers: { 'content-length': declared } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve(text));
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  it('refuses a body whose sender goes away before its declared length, as a BodyError, and keeps the buffer', async () => {
    const pool = new BufferPool(1 << 20);
    let failure: unknown = null;
    const seen = new Promise<void>((done) => {
      const server = createServer((req) => {
        readBodyInto(req, Number(req.headers['content-length']), 1 << 20, pool, new BodyBudget(1 << 30)).then(
          () => done(),
          (err: unknown) => {
            failure = err;
            done();
          },
        );
      });
      server.listen(0, '127.0.0.1', () => {
        const sock = connect((server.address() as { port: number }).port, '127.0.0.1', () => {
          sock.end('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789');
        });
        sock.on('error', () => undefined);
        void seen.then(() => server.close());
      });
    });
    await seen;
    expect(failure).toBeInstanceOf(BodyError);
    expect((failure as BodyError).status).toBe(400);
    expect((failure as BodyError).message).toMatch(/^body not received whole \(aborted\)$/);
    // Its buffer (sized by the 10 bytes that came, not the 100,000 declared) back in the pool.
    expect(pool.keptBytes).toBe(64 * 1024);
  });

  it('reads a body of its declared length into a recycled buffer, and refuses one over the limit', async () => {
    const pool = new BufferPool(1 << 20);
    const s = await serve(async (req) => {
      const declared = Number(req.headers['content-length']);
      const r = await readBodyInto(req, declared, 300_000, pool, new BodyBudget(1 << 30));
      const text = Buffer.from(r.buf, 0, r.length).toString();
      pool.give(r.buf);
      return `ok ${text.length} ${text.slice(0, 3)}${text.slice(-3)}`;
    });
    try {
      expect(await post(s.port, Buffer.from('abc'.repeat(50_000)), 150_000)).toBe('ok 150000 abcabc');
      expect(await post(s.port, Buffer.from('xyz'.repeat(60_000)), 180_000)).toBe('ok 180000 xyzxyz');
      expect(pool.counters.reused).toBeGreaterThanOrEqual(1);
      expect(await post(s.port, Buffer.alloc(10), 400_000).catch(() => 'reset')).toMatch(/^(413 body of 400000 bytes exceeds 300000|reset)$/);
    } finally {
      s.close();
    }
  });

  it('holds memory for the bytes that arrived, not for the declared length, within a budget; beyond it answers 503', async () => {
    // Before: each request declaring 64 MiB got a 64 MiB buffer before sending a byte.
    const pool = new BufferPool(1 << 20);
    const budget = new BodyBudget(512 * 1024, 64 * 1024);
    const s = await serve(async (req) => {
      const r = await readBodyInto(req, Number(req.headers['content-length']), 64 << 20, pool, budget);
      budget.release(r.buf.byteLength);
      pool.give(r.buf);
      return `ok ${r.length}`;
    });
    const idle: ReturnType<typeof connect>[] = [];
    const until = async (cond: () => boolean) => {
      for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
      expect(cond()).toBe(true);
    };
    try {
      for (let i = 0; i < 8; i++) {
        const sock = connect(s.port, '127.0.0.1', () => sock.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n0123456789'));
        sock.on('error', () => undefined);
        idle.push(sock);
      }
      await until(() => budget.held === 8 * 64 * 1024);
      expect(await post(s.port, Buffer.alloc(150_000, 1), 150_000)).toBe('503 ingest bodies being read hold 524288 bytes (bound 524288): retry later');
      expect(budget.refused).toBe(1);
      for (const sock of idle) sock.destroy();
      await until(() => budget.held === 0);
      // Grown as it arrives (64 → 128 → 256 KiB), then released.
      expect(await post(s.port, Buffer.alloc(150_000, 1), 150_000)).toBe('ok 150000');
      expect(budget.held).toBe(0);
    } finally {
      for (const sock of idle) sock.destroy();
      s.close();
    }
  });

  it('regression: holds nothing for a body whose bytes have not come, and gives up on one that stalls (408): 64 connections sending headers alone held the whole budget, and every rack was answered 503 while they stayed', async () => {
    const pool = new BufferPool(1 << 20);
    const budget = new BodyBudget(512 * 1024, 64 * 1024);
    const s = await serve(async (req) => {
      const r = await readBodyInto(req, Number(req.headers['content-length']), 64 << 20, pool, budget, 300);
      budget.release(r.buf.byteLength);
      pool.give(r.buf);
      return `ok ${r.length}`;
    });
    const idle: ReturnType<typeof connect>[] = [];
    const answers: string[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        const sock = connect(s.port, '127.0.0.1', () => sock.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n'));
        sock.on('data', (d: Buffer) => answers.push(d.toString()));
        sock.on('error', () => undefined);
        idle.push(sock);
      }
      await new Promise((r) => setTimeout(r, 100));
      expect(budget.held).toBe(0);
      expect(await post(s.port, Buffer.alloc(150_000, 1), 150_000)).toBe('ok 150000');
      // Past the deadline each stalled body is refused (the sender may retry) and holds nothing.
      for (let i = 0; i < 100 && answers.length < 16; i++) await new Promise((r) => setTimeout(r, 20));
      expect(answers.filter((a) => a.includes('408 body of 67108864 bytes not received within 0.3 s (0 came); retry'))).toHaveLength(16);
      expect(budget.held).toBe(0);
    } finally {
      for (const sock of idle) sock.destroy();
      s.close();
    }
  });

  it('settles at once for a message that ended or failed before it listened (never a promise left pending)', async () => {
    const pool = new BufferPool(1 << 20);
    const s = await serve(async (req) => {
      // Everything read elsewhere first: 'end' has been emitted already.
      req.resume();
      await new Promise((r) => req.once('end', r));
      return readBodyInto(req, Number(req.headers['content-length']), 1 << 20, pool, new BodyBudget(1 << 30)).then(() => 'read');
    });
    try {
      expect(await post(s.port, Buffer.from('abcdef'), 6)).toBe('400 body of 0 bytes ended before its Content-Length 6');
      // No byte came: no buffer was taken.
      expect(pool.keptBytes).toBe(0);
    } finally {
      s.close();
    }
  });
});
