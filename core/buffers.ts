// Buffers of the ingest path, recycled: a rack second's HTTP body and the copy of its sections
// each worker receives. Allocating them fresh — one body and one or two worker buffers per rack
// second, ~1 MB each at 2,000 metrics × 40 servers — page-faulted a gigabyte of new memory per
// 100 M points and kept the HTTP thread's collector busy. A worker hands its buffer back in its
// answer (transferred again), so in steady state buffers are reused rather than allocated
// (apm_core_ingest_buffers_total counts both).

import type { IncomingMessage } from 'node:http';

/** Smallest buffer handed out (size classes are powers of two from here). */
const classMinBytes = 64 * 1024;

export interface BufferPoolCounters {
  /** Taken from the pool. */
  reused: number;
  /** Made new (the pool had none of that size). */
  allocated: number;
  /** Given back but not kept (the pool was at its byte bound, or the buffer was not one of its sizes). */
  discarded: number;
}

/** ArrayBuffers by power-of-two size, at most `bytesMax` of them kept. */
export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private bytes = 0;
  readonly counters: BufferPoolCounters = { reused: 0, allocated: 0, discarded: 0 };

  constructor(readonly bytesMax: number) {}

  /** A buffer of at least `size` bytes (its contents are whatever it last held). */
  take(size: number): ArrayBuffer {
    const cls = sizeClass(size);
    const b = this.free.get(cls)?.pop();
    if (b !== undefined) {
      this.bytes -= cls;
      this.counters.reused++;
      return b;
    }
    this.counters.allocated++;
    return new ArrayBuffer(cls);
  }

  /** Keeps `b` for a later take() (nobody may use it after this). */
  give(b: ArrayBuffer): void {
    const cls = b.byteLength;
    // A detached buffer (transferred away) has 0 bytes: not a size of the pool.
    if (cls !== sizeClass(cls) || this.bytes + cls > this.bytesMax) {
      this.counters.discarded++;
      return;
    }
    let list = this.free.get(cls);
    if (list === undefined) this.free.set(cls, (list = []));
    list.push(b);
    this.bytes += cls;
  }

  /** Bytes kept for reuse. */
  get keptBytes(): number {
    return this.bytes;
  }
}

function sizeClass(size: number): number {
  let c = classMinBytes;
  while (c < size) c *= 2;
  return c;
}

/**
 * Bytes of ingest bodies being read or ingested at once (their buffers), at most `bytesMax`.
 * Nothing is held before a body's first bytes arrive; its first buffer is at most twice those
 * bytes (at least 64 KiB, at most `firstBytesMax`) and grows fourfold as bytes arrive. Before,
 * each request declaring 64 MiB got a 64 MiB buffer before sending anything; later, 4 MiB as
 * soon as its headers came, so 64 connections that sent headers alone held the whole budget and
 * every rack was answered 503 for as long as they stayed. Beyond the bound a body is answered
 * 503 (the rack retries it), counted as `refused`.
 */
export class BodyBudget {
  held = 0;
  refused = 0;

  constructor(
    readonly bytesMax: number,
    readonly firstBytesMax = 4 * 1024 * 1024,
  ) {}

  /** Holds n more bytes when the bound allows. */
  tryHold(n: number): boolean {
    if (this.held + n > this.bytesMax) return false;
    this.held += n;
    return true;
  }

  release(n: number): void {
    this.held -= n;
  }
}

/** Why a body could not be read. */
export class BodyError extends Error {
  constructor(
    readonly status: 400 | 408 | 413 | 503,
    message: string,
  ) {
    super(message);
  }
}

/** Longest a body may take to arrive (a rack gives up on a request after 30 s: rack/limits.ts forwardTimeoutMs). */
export const bodyDeadlineMs = 30_000;

/**
 * Reads a request body of a declared Content-Length into a pooled buffer: the bytes are
 * `new Uint8Array(buf, 0, length)`; give `buf` back, and release `buf.byteLength` from `budget`,
 * when nothing refers to them any more. Throws BodyError when the body is longer or shorter than
 * declared, over `bytesMax`, not received whole (the connection failed mid-body), not received
 * within `deadlineMs` (408: the sender may retry), or when the budget has no room for it (503).
 */
export function readBodyInto(req: IncomingMessage, length: number, bytesMax: number, pool: BufferPool, budget: BodyBudget, deadlineMs = bodyDeadlineMs): Promise<{ buf: ArrayBuffer; length: number }> {
  if (length > bytesMax) return Promise.reject(new BodyError(413, `body of ${length} bytes exceeds ${bytesMax}`));
  const full = () => {
    budget.refused++;
    return new BodyError(503, `ingest bodies being read hold ${budget.held} bytes (bound ${budget.bytesMax}): retry later`);
  };
  // Taken when the first bytes arrive (an empty buffer until then: nothing held).
  let buf = new ArrayBuffer(0);
  let view = new Uint8Array(buf);
  let at = 0;
  // Chunks as the socket delivers them ('data' in flowing mode). An async iterator over `req`
  // reads in paused mode, where read() joins the chunks buffered so far into a new Buffer first
  // (850 KB bodies, client and server in one process: 1,130–1,364 µs of CPU per request that way,
  // 995–1,021 µs this way; twelfth session, docs/figures.md).
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err: BodyError | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
      if (err === null) return resolve({ buf, length });
      if (buf.byteLength > 0) {
        budget.release(buf.byteLength);
        pool.give(buf);
      }
      reject(err);
    };
    const onData = (chunk: Buffer) => {
      if (at + chunk.length > length) {
        req.resume(); // the rest is read and dropped; the answer says why
        return done(new BodyError(400, `body longer than its Content-Length ${length}`));
      }
      if (at + chunk.length > buf.byteLength) {
        // The first buffer: twice what came (at least a size class, at most firstBytesMax); then
        // four times larger as bytes arrive, up to the declared length (a 1.6 MB body is copied
        // twice on its way, 0.6 MB in all, not four times, 1.9 MB).
        const grownTo = buf.byteLength === 0 ? Math.max(chunk.length, Math.min(budget.firstBytesMax, Math.max(2 * chunk.length, classMinBytes))) : Math.max(4 * buf.byteLength, at + chunk.length);
        const next = sizeClass(Math.min(length, grownTo));
        if (!budget.tryHold(next)) {
          req.resume();
          return done(full());
        }
        const grown = pool.take(next);
        new Uint8Array(grown).set(view.subarray(0, at));
        if (buf.byteLength > 0) {
          budget.release(buf.byteLength);
          pool.give(buf);
        }
        buf = grown;
        view = new Uint8Array(buf);
      }
      view.set(chunk, at);
      at += chunk.length;
    };
    const onEnd = () => done(at === length ? null : new BodyError(400, `body of ${at} bytes ended before its Content-Length ${length}`));
    // A sender that went away mid-body (aborted, reset) is a refused request, not a core failure.
    const onError = (err: Error) => done(new BodyError(400, `body not received whole (${err.message})`));
    const onClose = () => done(new BodyError(400, 'body not received whole (connection closed)'));
    // A body that trickles or stalls holds its buffer (and a slot of the budget) no longer than this.
    const deadline = setTimeout(() => {
      req.resume();
      done(new BodyError(408, `body of ${length} bytes not received within ${deadlineMs / 1000} s (${at} came); retry`));
    }, deadlineMs);
    deadline.unref();
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
    // A message that ended or failed before we listened emits nothing more: settle now.
    if (req.readableEnded) onEnd();
    else if (req.errored !== null) onError(req.errored);
    else if (req.destroyed) onClose();
  });
}
