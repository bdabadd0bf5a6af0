// Sends spooled batches — RackSecond bodies, one per closed second — to the core (POST
// /api/v1/ingest, DESIGN §9) with undici: keep-alive, bounded concurrency, in order, retry with
// exponential backoff. A batch leaves the spool only on a 2xx; a 4xx other than
// 401/403/408/409/429 means the core refuses it for good (counted, logged, removed).
// 401/403 refuse the rack's token, not the batch: it stays spooled and is retried with backoff
// until an operator fixes --token-file or the core's tokens file (issue 8).
// 409 shards_mismatch: the body was cut for another shard count than the core's. The rack
// learns the core's S (persisted in the spool), and every spooled body cut for another S is
// re-cut before it is sent (issue 12). The core's S is also asked at start (placement.ts).

import { Pool } from 'undici';
import { Body, decodeFrame } from '../schema/codec.js';
import { batchBytesMax } from '../schema/limits.js';
import { Histogram } from '../lib/prom.js';
import { PlacementFetch, parseShardsMismatch } from './placement.js';
import type { Spool } from './spool.js';
import { Deferrals } from './deferrals.js';

/** Notes on batches this process cut (their second for the latency histogram, the S they were
 *  cut for: such a body is sent without decoding it first); a day of one batch per second. */
const secondNotesMax = 86_400;

export interface ForwarderOptions {
  coreUrl: string;
  token: string | null;
  concurrency: number;
  requestTimeoutMs: number;
  backoffMinMs: number;
  backoffMaxMs: number;
  /**
   * Spooled batch `seq` cut for another shard count (rack/recut.ts) and replaced in the spool;
   * null when the spool cannot take it now (tried again later); throws on a body it cannot read.
   */
  recut: (seq: number, body: Uint8Array, shards: number) => Promise<Uint8Array | null>;
}

/** The body's content type (issue 12): a RackSecond frame. */
export const bodyContentType = 'application/x-apm-second';

export class Forwarder {
  private readonly pool: Pool;
  private readonly inFlight = new Set<number>();
  private readonly notes = new Map<number, { second: number; shards: number }>();
  private backoffMs = 0;
  private retryAt = 0;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** Set while the last attempt failed; cleared by the next 2xx. */
  coreDown = false;
  readonly counters = {
    batches_acked: 0,
    bytes_acked: 0,
    batches_failed: 0,
    batches_rejected: 0,
    batches_replayed: 0,
    batches_unauthorized: 0,
    status_reports_failed: 0,
    /** 409 shards_mismatch answers. */
    shards_mismatch: 0,
    /** Spooled bodies re-cut for the core's shard count. */
    batches_recut: 0,
    batches_recut_deferred: 0,
    /** Spooled bodies this build cannot read (e.g. written by an older version): dropped. */
    batches_unreadable: 0,
  };
  private readonly placement: PlacementFetch;
  /** Whether the core said it reads packed points (its placement answer); false until it answered. */
  corePacks = false;
  /** Set while the core refuses the token (401/403); cleared by the next 2xx. */
  authRefused = false;
  /** Newest second whose batch the core acknowledged (0: none yet). */
  ackedSecond = 0;
  /** Seconds from a second's end to the core's acknowledgement of its batch. */
  /** The path of --core (no trailing slash): '' for a core at the root. */
  private readonly base: string;
  readonly ackLatency = new Histogram([0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 30, 60, 120, 300]);

  constructor(
    private readonly spool: Spool,
    private readonly opts: ForwarderOptions,
  ) {
    const url = new URL(opts.coreUrl);
    // A core behind a reverse proxy at a path prefix (--core https://proxy/apm): routes go under it.
    this.base = url.pathname.replace(/\/+$/, '');
    this.pool = new Pool(url.origin, {
      connections: opts.concurrency,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      headersTimeout: opts.requestTimeoutMs,
      bodyTimeout: opts.requestTimeoutMs,
    });
    // Whatever a previous process left in the spool is replayed first, in order.
    this.counters.batches_replayed = spool.heldBatches;
    this.placement = new PlacementFetch({
      get: () => this.getPlacement(),
      learn: (shards, pointPack) => {
        this.corePacks = pointPack;
        void this.learnShards(shards, 'its placement');
      },
      backoffMinMs: opts.backoffMinMs,
      backoffMaxMs: opts.backoffMaxMs,
      log: (line) => console.error(line),
    });
  }

  /** Asks the core for its shard count (in the background) and starts sending. */
  start(): void {
    void this.placement.run();
    this.pump();
  }

  /** Placement requests that failed (they are retried with backoff until one succeeds). */
  get placementFailures(): number {
    return this.placement.failures;
  }

  private async getPlacement(): Promise<{ status: number; text: string }> {
    const res = await this.pool.request({ path: `${this.base}/api/v1/placement`, method: 'GET', headers: this.authHeader(), signal: AbortSignal.timeout(this.opts.requestTimeoutMs) });
    return { status: res.statusCode, text: await boundedText(res.body, 1000) };
  }

  private authHeader(): Record<string, string> {
    return this.opts.token === null ? {} : { authorization: `Bearer ${this.opts.token}` };
  }

  /** Records the core's S (persisted): bodies cut for another S are re-cut before they are sent. */
  private async learnShards(shards: number, source: string): Promise<void> {
    const before = this.spool.shards;
    if (shards === before) return;
    console.error(`rack: the core has ${shards} shards (from ${source}), this rack cut for ${before}; spooled bodies are re-cut for ${shards} before they are sent`);
    await this.spool.setShards(shards);
  }

  /** Notes the second a batch describes and the S it was cut for, and starts sending. */
  enqueued(seq: number, second: number, shards: number): void {
    this.notes.set(seq, { second, shards });
    // Batches the spool dropped while full never come back here: forget the oldest notes.
    if (this.notes.size > secondNotesMax) this.notes.delete(this.notes.keys().next().value!);
    this.pump();
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** Batches whose re-cut the spool could not write, waiting. */
  private readonly deferred = new Deferrals();

  pump(): void {
    if (this.stopped) return;
    const now = Date.now();
    if (now < this.retryAt) {
      this.schedule(this.retryAt - now);
      return;
    }
    // While the core is down, probe with one batch at a time, oldest first.
    const room = (this.coreDown ? 1 : this.opts.concurrency) - this.inFlight.size;
    if (room <= 0) return;
    let exclude: ReadonlySet<number> = this.inFlight;
    if (this.deferred.size > 0) {
      const skip = new Set(this.inFlight);
      this.deferred.addWaiting(now, skip);
      exclude = skip;
    }
    for (const entry of this.spool.oldest(room, exclude)) {
      this.inFlight.add(entry.seq);
      void this.send(entry.seq, entry.bytes);
    }
  }

  private schedule(delayMs: number): void {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.pump();
    }, delayMs);
    this.timer.unref();
  }

  private async send(seq: number, spooled: Uint8Array): Promise<void> {
    const cut = await this.forShards(seq, spooled);
    if (cut === null) {
      this.inFlight.delete(seq);
      return this.pump();
    }
    if (cut === 'later') {
      // The spool cannot write the re-cut now (its disk is full): this batch waits while newer
      // ones go on (a core-down backoff would have stopped them all behind it).
      this.inFlight.delete(seq);
      this.counters.batches_recut_deferred++;
      this.deferred.defer(seq, Date.now() + this.opts.backoffMaxMs);
      this.schedule(this.opts.backoffMaxMs);
      return this.pump();
    }
    const bytes = cut.bytes;
    let status = 0;
    let detail = '';
    try {
      // One deadline for the whole exchange, answer included: a core (or proxy) that sends its
      // answer a byte at a time held the forwarder (one request at a time) for good, uncounted.
      const res = await this.pool.request({
        path: `${this.base}/api/v1/ingest`,
        method: 'POST',
        headers: { 'content-type': bodyContentType, ...this.authHeader() },
        body: bytes,
        signal: AbortSignal.timeout(this.opts.requestTimeoutMs),
      });
      status = res.statusCode;
      detail = status >= 300 ? await boundedText(res.body, 300) : '';
      if (status < 300) await res.body.dump();
    } catch (err) {
      detail = (err as Error).message;
    }
    this.inFlight.delete(seq);
    if (status >= 200 && status < 300) return this.acked(seq, bytes.length);
    if (status === 401 || status === 403) return this.unauthorized(status, detail);
    const coreShards = status === 409 ? parseShardsMismatch(detail) : null;
    if (coreShards !== null) return this.mismatch(seq, cut.shards, coreShards);
    // Dropped only when the answer is about this body (400: it does not decode or check; 413:
    // too large). A 404 or 405 (a wrong --core path, a proxy) or another 4xx says nothing of the
    // body: each batch was dropped as fast as it was sent and the spool emptied. Retried instead.
    if (status === 400 || status === 413) {
      this.counters.batches_rejected++;
      console.error(`rack: core refused batch ${seq} with ${status}: ${detail}; dropped (fix the cause: this will not succeed on retry)`);
      this.notes.delete(seq);
      await this.spool.remove(seq);
      return this.pump();
    }
    this.counters.batches_failed++;
    if (!this.coreDown) console.error(`rack: core at ${this.opts.coreUrl} unavailable (${status === 0 ? detail : `${status}: ${detail.slice(0, 120)}`}); spooling and retrying with backoff`);
    this.retryLater();
  }

  /**
   * The spooled body cut for the shard count in use: re-cut (and replaced in the spool) when it
   * was cut for another; null for a body this build cannot read (counted, logged, removed).
   */
  private async forShards(seq: number, bytes: Uint8Array): Promise<{ bytes: Uint8Array; shards: number } | null | 'later'> {
    const shards = this.spool.shards;
    const note = this.notes.get(seq);
    if (note?.shards === shards) return { bytes, shards };
    const r = decodeFrame(bytes, batchBytesMax, { expect: Body.RackSecond });
    if (r.ok && r.msg.type === 'rackSecond' && r.msg.shards === shards) return { bytes, shards };
    try {
      if (!r.ok || r.msg.type !== 'rackSecond') throw new Error(r.ok ? `a ${r.msg.type}, not a RackSecond` : `${r.reason}: ${r.detail}`);
      const recut = await this.opts.recut(seq, bytes, shards);
      if (recut === null) return 'later';
      this.counters.batches_recut++;
      // The note keeps the shard count the body was first cut for: the re-cut bytes may live only
      // in the spool's memory (its rewrite refused by a full disk), and once they leave it the old
      // ones come back from disk — trusted as re-cut, they were sent for good and answered 409
      // for good, holding every batch behind them. A body sent again is decoded again instead.
      return { bytes: recut, shards };
    } catch (err) {
      if (this.counters.batches_unreadable++ === 0) {
        console.error(`rack: spooled batch ${seq} cannot be read (${(err as Error).message}); dropped, as is every other such batch (apm_rack_batches_unreadable_total). A spool written by an older apm holds batches this core no longer accepts`);
      }
      this.notes.delete(seq);
      await this.spool.remove(seq);
      return null;
    }
  }

  /** 409 shards_mismatch: learn the core's S and send the body again, re-cut. */
  private async mismatch(seq: number, sentShards: number, coreShards: number): Promise<void> {
    this.counters.shards_mismatch++;
    if (coreShards === sentShards) {
      // The core refuses the S it names: re-cutting cannot help, so back off as for a 5xx.
      console.error(`rack: core refused batch ${seq} for shards_mismatch yet names the ${sentShards} shards it was cut for; retrying with backoff`);
      this.counters.batches_failed++;
      return this.retryLater();
    }
    await this.learnShards(coreShards, `a 409 for batch ${seq}`);
    this.pump();
  }

  /** The core refuses the token: every batch would fail alike, so keep them all and back off. */
  private unauthorized(status: number, detail: string): void {
    this.counters.batches_failed++;
    this.counters.batches_unauthorized++;
    if (!this.authRefused) {
      const token = this.opts.token === null ? 'no token (start the rack with --token-file <file>)' : 'the token of --token-file';
      console.error(`rack: core at ${this.opts.coreUrl} refused ${token} with ${status}: ${detail}; batches stay spooled and are retried. Give the rack a token of role ingest ('apm token create --role ingest --name <rack> --tokens <core tokens file>' on the core, then SIGHUP the core)`);
    }
    this.authRefused = true;
    this.retryLater();
  }

  private retryLater(): void {
    this.coreDown = true;
    this.backoffMs = Math.min(this.opts.backoffMaxMs, Math.max(this.opts.backoffMinMs, this.backoffMs * 2));
    this.retryAt = Date.now() + this.backoffMs * (0.75 + Math.random() * 0.5);
    this.pump();
  }

  private async acked(seq: number, bytes: number): Promise<void> {
    await this.spool.remove(seq);
    this.counters.batches_acked++;
    this.counters.bytes_acked += bytes;
    const second = this.notes.get(seq)?.second;
    if (second !== undefined) {
      this.ackLatency.observe(Date.now() / 1000 - (second + 1));
      if (second > this.ackedSecond) this.ackedSecond = second;
    }
    this.notes.delete(seq);
    if (this.coreDown) console.error(`rack: core at ${this.opts.coreUrl} ${this.authRefused ? 'accepts the token again' : 'is back'}; draining ${this.spool.heldBatches} spooled batches`);
    this.coreDown = false;
    this.authRefused = false;
    this.backoffMs = 0;
    this.retryAt = 0;
    this.pump();
  }

  /**
   * Sends the rack's status report (POST /api/v1/racks/<rack>/status) beside the batches. Best
   * effort: a report is a snapshot, so a failed one is counted and the next replaces it.
   */
  async report(rack: string, status: object): Promise<void> {
    if (this.stopped) return;
    try {
      const res = await this.pool.request({
        path: `${this.base}/api/v1/racks/${encodeURIComponent(rack)}/status`,
        method: 'POST',
        headers: { 'content-type': 'application/json', ...this.authHeader() },
        body: JSON.stringify(status),
        signal: AbortSignal.timeout(this.opts.requestTimeoutMs),
      });
      await res.body.dump();
      if (res.statusCode >= 300) this.counters.status_reports_failed++;
    } catch {
      this.counters.status_reports_failed++;
    }
  }

  /** Waits (bounded) for in-flight sends, then closes connections. */
  async stop(waitMs: number): Promise<void> {
    const deadline = Date.now() + waitMs;
    while (this.inFlight.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.stopped = true;
    this.placement.stop();
    if (this.timer !== null) clearTimeout(this.timer);
    // Bounded too: close() waits for requests in flight (up to the request timeout, 30 s), and a
    // supervisor could kill the rack before its spool wrote what it holds in memory.
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), Math.max(0, deadline - Date.now()))));
    const closed = await Promise.race([this.pool.close().then(() => 'closed' as const, () => 'closed' as const), late]);
    clearTimeout(timer);
    if (closed === 'late') await this.pool.destroy().catch(() => undefined);
  }
}

/** At most `max` characters of an answer's body; the rest is not read (the connection is closed). */
async function boundedText(body: AsyncIterable<Buffer> & { destroy(): unknown }, max: number): Promise<string> {
  let text = '';
  for await (const chunk of body) {
    text += chunk.toString('utf8', 0, Math.min(chunk.length, max - text.length));
    if (text.length >= max) {
      body.destroy();
      break;
    }
  }
  return text;
}
