// The rack daemon: UDP socket → bounded queue → (tick) decode, reassemble, NACK, close
// seconds → merge → cut into the core's shard sections (one RackSecond body per second,
// DESIGN §9) → spool → forward (POST to a core, forwarder.ts) or, with --nats, publish one
// message per section to JetStream (publisher.ts, issue 13). HTTP /metrics and /healthz for operators.

import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { Hono } from 'hono';
import { serve, type ServerType } from '@hono/node-server';
import { sign, type KeySet } from '../schema/auth.js';
import { Body, Encoder, decodeFrame, frameBytesMin, withColumns, type RejectReason, type SeriesColumns } from '../schema/codec.js';
import { batchBytesMax, batchServersMax } from '../schema/limits.js';
import { lmdbCounters } from '../lib/lmdb.js';
import type { NatsAuth } from '../schema/log.js';
import { PromText } from '../lib/prom.js';
import { SectionCutter, type CutBounds } from '../schema/section.js';
import { Forwarder } from './forwarder.js';
import { DatagramGuard } from './guard.js';
import type { RackLimits } from './limits.js';
import { RackMerger } from './merge.js';
import { NameTable, hashesSignature } from './names.js';
import { NatsLink, Publisher } from './publisher.js';
import { Reassembly, type ClosedBatch } from './reassembly.js';
import { recut } from './recut.js';
import { Spool } from './spool.js';

export interface RackOptions {
  rack: string;
  listenHost: string;
  listenPort: number;
  /** The core bodies are POSTed to; with `nats`, only status reports go there (null: none). */
  coreUrl: string | null;
  /** Publish to NATS JetStream instead of POSTing to a core (`--nats`). */
  nats?: { servers: string[]; auth: NatsAuth } | null;
  spoolDir: string;
  httpHost: string;
  httpPort: number;
  latenessMs: number;
  token: string | null;
  allowList: ReadonlySet<string> | null;
  /** Edges' shared keys (`--key-file`): with keys, unsigned datagrams are refused. */
  keys?: KeySet | null;
  limits: RackLimits;
}

export class Rack {
  readonly reassembly: Reassembly;
  readonly names: NameTable;
  readonly spool: Spool;
  /** POSTs bodies to the core; in NATS mode it only sends status reports (null without --core). */
  readonly forwarder: Forwarder | null;
  /** Publishes bodies to JetStream (NATS mode, else null). */
  readonly publisher: Publisher | null;
  private readonly natsLink: NatsLink | null;
  readonly guard: DatagramGuard;
  private keys: KeySet | null;
  private readonly merger: RackMerger;
  /** Cuts each merged second into shard sections; also re-cuts spooled bodies for a new S. */
  private readonly cutter: SectionCutter;
  private readonly encoder = new Encoder();
  private socket: dgram.Socket | null = null;
  private http: ServerType | null = null;
  private readonly queue: Buffer[] = [];
  private readonly queuePeers: dgram.RemoteInfo[] = [];
  private queueBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private reportTimer: NodeJS.Timeout | null = null;
  private pendingWrites = 0;
  /** Per server, the signature of its last hash set found fully named (askNames skips it unchanged). */
  private readonly namedSets = new Map<string, number>();
  /** The name table's generation namedSets was found under. */
  private namedGeneration = 0;
  private prunedMs = 0;
  recvBufferBytes = 0;
  readonly counters = { datagrams_received: 0, bytes_received: 0, queue_dropped: 0, nacks_sent: 0, name_asks_sent: 0, batches_spooled: 0, batches_spool_failed: 0, summaries_merged: 0, datagrams_failed: 0, batches_failed: 0 };
  readonly rejected: Partial<Record<RejectReason, number>> = {};

  constructor(private readonly opts: RackOptions) {
    const l = opts.limits;
    // A body naming more servers is refused by every decoder (the core's, the rack's own recut): every second would be lost.
    if (l.serversMax > batchServersMax) throw new Error(`serversMax ${l.serversMax} > ${batchServersMax}, the servers a rack second's body may name`);
    this.spool = new Spool(opts.spoolDir, { bytesMax: l.spoolBytes, reserveBytes: l.spoolReserveBytes, memoryBytesMax: l.spoolMemoryBytesMax });
    // A restart resumes after the newest spooled second: edges are asked for what came since.
    const resumeAfter = this.spool.closedThrough;
    this.reassembly = new Reassembly({
      serversMax: l.serversMax,
      openSecondsPerServerMax: l.openSecondsPerServerMax,
      bytesHeldMax: l.bytesHeldMax,
      serverSecondBytesMax: l.serverSecondBytesMax,
      latenessMs: opts.latenessMs,
      lateHorizonSeconds: l.lateHorizonSeconds,
      futureSeconds: Math.min(l.futureSeconds, Math.ceil(l.clockSkewMaxMs / 1000)),
      nackDelayMs: l.nackDelayMs,
      nackIntervalMs: l.nackIntervalMs,
      nackRetriesMax: l.nackRetriesMax,
      allowList: opts.allowList,
      resume: resumeAfter < 0 ? undefined : { afterSecond: resumeAfter, untilMs: Date.now() + opts.latenessMs + l.resumeHoldMs },
    });
    this.keys = checkRack(opts.keys ?? null, opts.rack);
    this.guard = new DatagramGuard({
      keys: this.keys,
      rack: opts.rack,
      clockSkewMaxMs: l.clockSkewMaxMs,
      // The rack asks for resends until a second closes, then retries: an unsigned resend's sent_ms is that old.
      resendAgeMaxMs: opts.latenessMs + l.nackDelayMs + l.nackIntervalMs * l.nackRetriesMax + 1000,
      replayEntriesMax: l.replayEntriesMax,
      serversTrackedMax: Math.max(l.sendersTrackedMax, 2 * l.serversMax),
      skewReportMs: l.skewReportMs,
      log: (line) => console.error(line),
    });
    this.names = new NameTable(l.namesMax);
    this.merger = new RackMerger(l.rollupMetricsMax);
    this.cutter = new SectionCutter(l.rollupMetricsMax);
    const nats = opts.nats ?? null;
    if (nats === null && opts.coreUrl === null) throw new Error('BUG: a rack needs a core URL or NATS servers');
    this.forwarder =
      opts.coreUrl === null
        ? null
        : new Forwarder(this.spool, {
            coreUrl: opts.coreUrl,
            token: opts.token,
            concurrency: l.forwardConcurrency,
            requestTimeoutMs: l.forwardTimeoutMs,
            backoffMinMs: l.backoffMinMs,
            backoffMaxMs: l.backoffMaxMs,
            recut: (seq, body, shards) => this.recutSpooled(seq, body, shards),
          });
    this.publisher =
      nats === null
        ? null
        : new Publisher(this.spool, {
            concurrency: l.natsConcurrency,
            bodiesOpenMax: l.natsBodiesOpenMax,
            publishTimeoutMs: l.natsPublishTimeoutMs,
            backoffMinMs: l.backoffMinMs,
            backoffMaxMs: l.natsBackoffMaxMs,
            keepAckedMs: l.natsKeepAckedMs,
            keepAckedBytesMax: l.natsKeepAckedBytesMax,
            recut: (seq, body, shards) => this.recutSpooled(seq, body, shards),
            log: (line) => console.error(line),
          });
    this.natsLink =
      nats === null || this.publisher === null
        ? null
        : new NatsLink(this.publisher, {
            servers: nats.servers,
            auth: nats.auth,
            name: `apm-rack-${opts.rack}`,
            settingsPollMs: l.natsSettingsPollMs,
            waitLogMs: l.natsWaitLogMs,
            log: (line) => console.error(line),
          });
  }

  /** Replaces the keys (SIGHUP): datagrams signed with any key of the new set verify from now on. */
  setKeys(keys: KeySet | null): void {
    this.keys = checkRack(keys, this.opts.rack);
    this.guard.setKeys(keys);
  }

  /** Binds UDP and HTTP; returns the bound ports. */
  async start(): Promise<{ udpPort: number; httpPort: number }> {
    const l = this.opts.limits;
    const socket = dgram.createSocket({ type: this.opts.listenHost.includes(':') ? 'udp6' : 'udp4', recvBufferSize: l.recvBufferBytes });
    socket.on('message', (msg, rinfo) => this.enqueue(msg, rinfo));
    await new Promise<void>((resolve, reject) => {
      socket.once('error', (err) => reject(new Error(`cannot listen on UDP ${this.opts.listenHost}:${this.opts.listenPort}: ${err.message}; choose another --listen`, { cause: err })));
      socket.bind(this.opts.listenPort, this.opts.listenHost, () => {
        socket.removeAllListeners('error');
        socket.on('error', (err) => console.error(`rack: UDP socket error: ${err.message}`));
        resolve();
      });
    });
    this.socket = socket;
    this.recvBufferBytes = socket.getRecvBufferSize();
    if (this.recvBufferBytes < l.recvBufferBytes) {
      console.error(`rack: the kernel granted a ${this.recvBufferBytes}-byte receive buffer < ${l.recvBufferBytes} asked; raise net.core.rmem_max or expect drops under load`);
    }
    const app = new Hono();
    app.get('/healthz', (c) => c.text('ok\n'));
    app.get('/metrics', (c) => c.text(this.metricsText(), 200, { 'content-type': 'text/plain; version=0.0.4' }));
    const httpPort = await new Promise<number>((resolve, reject) => {
      this.http = serve({ fetch: app.fetch, hostname: this.opts.httpHost, port: this.opts.httpPort }, (info) => resolve(info.port));
      this.http.once('error', (err) => reject(new Error(`cannot serve HTTP on ${this.opts.httpHost}:${this.opts.httpPort}: ${err.message}; choose another --http`, { cause: err })));
    });
    this.timer = setInterval(() => this.tick(Date.now()), l.tickMs);
    const f = this.forwarder;
    if (f !== null) {
      this.reportTimer = setInterval(() => void f.report(this.opts.rack, this.statusReport()), l.statusReportMs);
      this.reportTimer.unref();
    }
    if (this.natsLink !== null) {
      // In the background: UDP is served and seconds are spooled while NATS or the settings are awaited.
      this.natsLink.run().catch((err: unknown) => console.error(`rack: BUG: the NATS link stopped: ${(err as Error).stack ?? String(err)}`));
    } else {
      // NATS mode uses the forwarder for status reports only: no placement, no bodies.
      f?.start();
    }
    return { udpPort: socket.address().port, httpPort };
  }

  private enqueue(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const l = this.opts.limits;
    if (this.queue.length >= l.queueDatagramsMax || this.queueBytes + msg.length > l.queueBytesMax) {
      this.counters.queue_dropped++;
      return;
    }
    this.queue.push(msg);
    this.queuePeers.push(rinfo);
    this.queueBytes += msg.length;
  }

  /** Decodes queued datagrams, sends due NACKs, closes due seconds. */
  tick(nowMs: number): void {
    this.drain(nowMs);
    this.sendNacks(nowMs);
    if (nowMs - this.prunedMs >= 1000) {
      this.prunedMs = nowMs;
      this.guard.prune(nowMs, this.opts.limits.senderIdleMs);
    }
    for (const batch of this.reassembly.close(nowMs)) {
      try {
        this.forward(batch);
      } catch (err) {
        // A bug met by one second's data costs that second, counted, not the process (whose
        // edges would resend the same data to a restarted rack).
        this.counters.batches_failed++;
        this.logFailure(`second ${batch.second} of ${batch.servers.length} servers was not forwarded`, err, this.counters.batches_failed);
      }
    }
  }

  /** Logs the first failure of a kind and then every 1,000th (each is counted). */
  private logFailure(what: string, err: unknown, n: number): void {
    if (n === 1 || n % 1000 === 0) console.error(`rack: BUG: ${what} (${n} so far): ${(err as Error).stack ?? String(err)}`);
  }

  /** Cheap checks first (size, then MAC and replay), then the decoder, then the sender's clock. */
  private drain(nowMs: number): void {
    const l = this.opts.limits;
    for (let i = 0; i < this.queue.length; i++) {
      const datagram = this.queue[i]!;
      const peer = this.queuePeers[i]!;
      this.counters.datagrams_received++;
      this.counters.bytes_received += datagram.length;
      if (datagram.length > l.datagramBytesMax || datagram.length < frameBytesMin) {
        this.countRejected(datagram.length < frameBytesMin ? 'too_short' : 'too_large');
        continue;
      }
      try {
        this.take(datagram, peer, nowMs);
      } catch (err) {
        // A bug met by one datagram costs that datagram, counted, not the process.
        this.counters.datagrams_failed++;
        this.logFailure(`a ${datagram.length}-byte datagram from ${peer.address}:${peer.port} was not taken`, err, this.counters.datagrams_failed);
      }
    }
    this.queue.length = 0;
    this.queuePeers.length = 0;
    this.queueBytes = 0;
  }

  /** One datagram of the right size: authenticated, decoded, clock-checked, then reassembled. */
  private take(datagram: Buffer, peer: dgram.RemoteInfo, nowMs: number): void {
    const opened = this.guard.open(datagram);
    if (typeof opened === 'string') return; // counted by the guard
    const r = decodeFrame(opened.frame, this.opts.limits.datagramBytesMax, { verifyNameHashes: false, expect: Body.EdgeSecond });
    if (!r.ok) return this.countRejected(r.reason);
    if (r.msg.type !== 'edgeSecond') return this.countRejected('unexpected_body');
    if (this.guard.admit(r.msg.server, r.msg.sentMs, opened, nowMs) !== null) return; // counted by the guard
    this.names.learn(r.msg.series);
    this.reassembly.accept(r.msg, datagram.length, { address: peer.address, port: peer.port }, nowMs);
  }

  private countRejected(reason: RejectReason): void {
    this.rejected[reason] = (this.rejected[reason] ?? 0) + 1;
  }

  /** Sends a NACK, signed when keys are configured (edges refuse unsigned NACKs then). */
  private sendToEdge(frame: Uint8Array, peer: { port: number; address: string }): void {
    this.socket?.send(this.keys === null ? frame : sign(this.keys, frame, Date.now(), this.opts.rack), peer.port, peer.address);
  }

  private sendNacks(nowMs: number): void {
    for (const n of this.reassembly.nacks(nowMs)) {
      const frame = this.encoder.nack({ server: n.server, session: n.session, second: n.second, missingParts: n.missingParts, unknownHashes: new Uint32Array(0) });
      this.sendToEdge(frame, n.peer);
      this.counters.nacks_sent++;
    }
  }

  private forward(batch: ClosedBatch): void {
    const merged = this.merger.merge(batch.servers);
    if (merged.servers.length === 0) return;
    this.counters.summaries_merged += merged.summaries;
    this.askNames(batch);
    const rollup = withColumns(merged.rollup, this.names.forBatch(this.opts.limits.nameRefreshPerBatch));
    if (!batch.late && batch.second > this.spool.closedThrough) this.spool.closedThrough = batch.second;
    const shards = this.spool.shards;
    this.cutter.packPoints = this.corePacks();
    // One body a second, or several when it would pass what one request or message carries.
    for (const { seq, bytes } of this.cutter.bodies({ rack: this.opts.rack, second: batch.second, late: batch.late, shards, servers: merged.servers, rollup }, this.takeSeq, this.cutBounds())) this.keep(seq, batch.second, shards, bytes, batch.late);
  }

  /**
   * Whether sections go with their points packed: once the core (its placement answer) or the
   * cluster (its settings) said it reads them. Until then, and for cores and clusters from before
   * the pack, unpacked: those would refuse packed sections as malformed, and such a refusal drops
   * the body.
   */
  private corePacks(): boolean {
    return this.forwarder !== null ? this.forwarder.corePacks : this.natsLink?.settings?.pointPack === true;
  }

  /** The next body's identity: the spool's session (after a possible rotation) and seq. */
  private readonly takeSeq = () => {
    const seq = this.spool.takeSeq();
    return { seq, session: this.spool.session };
  };

  /** What one body, one section and one metric may take: a request to the core, or a NATS message. */
  private cutBounds(): CutBounds {
    const l = this.opts.limits;
    // A metric's entries alone may pass bodyBytesMax up to what one request (the core's 64 MiB)
    // or one NATS message carries: it then goes in a body of its own.
    const nats = this.publisher !== null;
    return { bodyBytesMax: l.bodyBytesMax, sectionBytesMax: nats ? Math.min(l.natsSectionBytesMax, l.bodyBytesMax) : l.bodyBytesMax, metricBytesMax: nats ? l.natsSectionBytesMax : batchBytesMax - 1024 * 1024 };
  }

  /**
   * Spooled batch `seq` cut for the S in use, and replaced in the spool by it. When the second now
   * needs more bodies, the others are written with the replacement in one transaction and then
   * sent as new batches; null when the spool refuses that write (the caller tries again later).
   */
  private async recutSpooled(seq: number, body: Uint8Array, shards: number): Promise<Uint8Array | null> {
    // A re-cut that needs more bodies while the spool cannot write them is given up before any
    // seq is taken (each attempt took seqs; with the disk low that rotated the session).
    const take = () => {
      if (!this.spool.writable()) throw new SpoolRefuses();
      return this.takeSeq();
    };
    let bodies: ReturnType<typeof recut>;
    this.cutter.packPoints = this.corePacks();
    try {
      bodies = recut(this.cutter, body, shards, this.cutBounds(), take);
    } catch (err) {
      if (err instanceof SpoolRefuses) return null;
      throw err;
    }
    const [first, ...more] = bodies;
    if (more.length === 0) {
      await this.spool.replace(seq, first!.bytes);
      return first!.bytes;
    }
    const r = await this.spool.replaceSplit(seq, first!.bytes, more);
    if (r === 'refused') return null;
    if (r === 'written') {
      for (const b of more) {
        this.counters.batches_spooled++;
        if (this.publisher !== null) this.publisher.enqueued(b.seq, b.second, shards);
        else this.forwarder?.enqueued(b.seq, b.second, shards);
      }
    }
    return first!.bytes;
  }

  /** One body into the spool, then to the forwarder or publisher. */
  private keep(seq: number, second: number, shards: number, bytes: Uint8Array, late: boolean): void {
    this.pendingWrites++;
    void this.spool
      // A late second's batch does not hold back where a restart resumes (it is older than that).
      .put(seq, bytes, late ? undefined : second)
      .then((ok) => {
        if (!ok) return;
        this.counters.batches_spooled++;
        if (this.publisher !== null) this.publisher.enqueued(seq, second, shards);
        else this.forwarder?.enqueued(seq, second, shards);
      })
      .catch((err: unknown) => {
        this.counters.batches_spool_failed++;
        console.error(`rack: spooling batch ${seq} failed, it is dropped: ${(err as Error).message}`);
      })
      .finally(() => this.pendingWrites--);
  }

  /** Asks each edge for the names of hashes the rack has never seen named. */
  private askNames(batch: ClosedBatch): void {
    const max = this.opts.limits.nameAsksPerServerSecond;
    for (const s of batch.servers) {
      // A set found fully named stays so (one pass instead of ~2,000 lookups) until the name
      // table starts a generation: then every set is looked at again, which moves its names
      // into the new generation (rack/names.ts).
      if (this.names.generation !== this.namedGeneration) {
        this.namedSets.clear();
        this.namedGeneration = this.names.generation;
      }
      const blocks: SeriesColumns[] = [];
      for (const p of s.parts) blocks.push(p.series);
      const sig = hashesSignature(blocks);
      if (this.namedSets.get(s.server) === sig) continue;
      const unknown: number[] = [];
      for (const p of s.parts) this.names.unknownIn(p.series, unknown, max);
      const first = s.parts[0];
      if (unknown.length === 0) {
        // Bounded: servers that went away are forgotten wholesale (their next second is looked up once).
        if (this.namedSets.size >= 2 * this.opts.limits.serversMax) this.namedSets.clear();
        this.namedSets.set(s.server, sig);
        continue;
      }
      if (first === undefined) continue;
      const peer = this.reassembly.peerOf(s.server);
      if (peer === undefined) continue;
      const frame = this.encoder.nack({ server: s.server, session: first.session, second: batch.second, missingParts: new Uint16Array(0), unknownHashes: Uint32Array.from(unknown) });
      this.sendToEdge(frame, peer);
      this.counters.name_asks_sent++;
    }
  }

  /** Closes what is open, spools it, gives in-flight sends a moment, and closes everything. */
  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    if (this.reportTimer !== null) clearInterval(this.reportTimer);
    this.drain(Date.now());
    for (const batch of this.reassembly.flush()) this.forward(batch);
    while (this.pendingWrites > 0) await new Promise((r) => setTimeout(r, 10));
    if (this.publisher !== null) {
      await this.publisher.stop(2000);
      await this.natsLink?.stop();
    }
    await this.forwarder?.stop(this.publisher === null ? 2000 : 0);
    await new Promise<void>((r) => (this.socket ? this.socket.close(() => r()) : r()));
    await new Promise<void>((r) => (this.http ? this.http.close(() => r()) : r()));
    await this.spool.close();
  }

  /** What the core's fleet view shows about this rack (core/status.ts RackStatus). */
  statusReport(): Record<string, number> {
    const r = this.reassembly;
    let rejected = this.counters.queue_dropped;
    for (const table of [this.guard.rejected, this.rejected, r.rejected] as Record<string, number | undefined>[]) for (const n of Object.values(table)) rejected += n ?? 0;
    return {
      datagramsReceived: this.counters.datagrams_received,
      datagramsRejected: rejected,
      partsRecovered: r.counters.parts_recovered,
      partsLost: r.counters.parts_lost,
      partsLate: r.counters.parts_late,
      secondsIncomplete: r.counters.seconds_incomplete,
      spoolBytes: this.spool.heldBytes,
      spoolBatches: this.spool.heldBatches,
      spoolDropped: this.spool.droppedBatches,
      forwardFailures: this.publisher?.counters.publish_failed ?? this.forwarder?.counters.batches_failed ?? 0,
      servers: r.serverCount,
      ackedSecond: this.publisher?.ackedSecond ?? this.forwarder?.ackedSecond ?? 0,
    };
  }

  metricsText(): string {
    const p = new PromText();
    const r = this.reassembly;
    p.counter('apm_rack_datagrams_received_total', 'Datagrams read from the UDP socket', this.counters.datagrams_received);
    p.counter('apm_rack_bytes_received_total', 'Bytes read from the UDP socket', this.counters.bytes_received);
    p.counters('apm_rack_datagrams_rejected_total', 'Datagrams refused by the authentication and clock checks, the decoder or the reassembly, by reason', 'reason', {
      ...this.guard.rejected,
      ...this.rejected,
      ...r.rejected,
      queue_full: this.counters.queue_dropped,
    });
    const nowMs = Date.now();
    p.gauge('apm_rack_servers_clock_skewed', 'Servers whose datagrams were refused for clock skew in the last minute', this.guard.skewedServers(nowMs));
    p.gauge('apm_rack_clock_offset_max_seconds', "Largest |edge clock − rack clock| seen in the last minute (unsigned resends add their age)", this.guard.offsetMaxMs(nowMs) / 1000);
    p.gauge('apm_rack_auth_keys', 'Keys that verify datagrams (0: authentication off)', this.keys?.byId.size ?? 0);
    p.counter('apm_rack_datagrams_unverified_total', 'Signed datagrams accepted unchecked because no --key-file is set', this.guard.unverified);
    p.gauge('apm_rack_replay_cache_entries', 'MACs remembered to refuse replays', this.guard.replayCacheEntries);
    p.counter('apm_rack_replay_cache_evicted_total', 'MACs forgotten because the replay cache was full (older datagrams then count as stale)', this.guard.replayCacheEvicted);
    p.gauge('apm_rack_socket_receive_buffer_bytes', 'Receive buffer the kernel granted', this.recvBufferBytes);
    const k = kernelUdpDrops(this.socket?.address().port ?? 0);
    p.counter('apm_rack_kernel_udp_rcvbuf_errors_total', 'Host-wide UDP RcvbufErrors from /proc/net/snmp', k.rcvbufErrors);
    p.counter('apm_rack_socket_drops_total', "Datagrams the kernel dropped on this rack's socket (/proc/net/udp)", k.socketDrops);
    p.counter('apm_rack_parts_received_total', 'Parts accepted', r.counters.parts_received);
    p.counter('apm_rack_parts_duplicate_total', 'Duplicate parts ignored', r.counters.parts_duplicate);
    p.counter('apm_rack_parts_nacked_total', 'Parts asked again from edges', r.counters.parts_nacked);
    p.counter('apm_rack_parts_recovered_total', 'NACKed parts that arrived', r.counters.parts_recovered);
    p.counter('apm_rack_parts_lost_total', 'Parts still missing when their second closed', r.counters.parts_lost);
    p.counter('apm_rack_parts_late_total', 'Parts that arrived after their second closed (forwarded as late data)', r.counters.parts_late);
    p.counter('apm_rack_seq_gap_datagrams_total', 'Datagrams missing by edge sequence number', r.counters.seq_gap_datagrams);
    p.counter('apm_rack_seconds_closed_total', 'Seconds closed at the watermark', r.counters.seconds_closed);
    p.counter('apm_rack_seconds_incomplete_total', 'Server-seconds closed with parts missing', r.counters.seconds_incomplete);
    p.counter('apm_rack_closed_records_dropped_total', 'Server-seconds closed incomplete without a record of their parts (the records\' memory bound): their late parts are refused as memory_full', r.counters.closed_records_dropped);
    p.counter('apm_rack_late_batches_total', 'Batches of late data', r.counters.late_batches);
    p.counter('apm_rack_seconds_unanswered_total', 'Server-seconds lost whole (a sequence gap, or missed during a restart) whose probes the edge never answered: lost, counted here', r.counters.seconds_unanswered);
    p.counter('apm_rack_gap_probes_total', 'Seconds asked again from edges after a gap in their sequence numbers (lost whole on the way), closed ones included (their answers come as late parts, and their other parts are asked for)', r.counters.gap_probes);
    p.counter('apm_rack_resume_probes_total', 'Seconds asked again from edges after this rack restarted (still in their resend rings)', r.counters.resume_probes);
    p.counter('apm_rack_resume_seconds_unasked_total', 'Server-seconds missed while this rack was down that were too old to ask edges for (lost)', r.counters.resume_seconds_unasked);
    p.counter('apm_rack_edge_restarts_total', 'Edge session changes seen', r.counters.edge_restarts);
    p.counter('apm_rack_nacks_sent_total', 'NACK datagrams sent', this.counters.nacks_sent);
    p.counter('apm_rack_name_asks_sent_total', 'NACKs asking edges for metric names', this.counters.name_asks_sent);
    p.counter('apm_rack_summaries_merged_total', 'Per-server summaries merged into batches', this.counters.summaries_merged);
    p.gauge('apm_rack_servers', 'Edges known (heard within the late horizon, or holding seconds)', r.serverCount);
    p.counter('apm_rack_servers_forgotten_total', 'Edges forgotten after a late horizon of silence with nothing held', r.counters.servers_forgotten);
    p.gauge('apm_rack_held_bytes', 'Bytes of datagrams held in open seconds (and their tables), and of late parts', r.heldBytes);
    p.gauge('apm_rack_names', 'Metric names known', this.names.size);
    p.counter('apm_rack_name_collisions_total', 'Two names seen for one 64-bit hash', this.names.collisions);
    p.counter('apm_rack_names_forgotten_total', 'Names forgotten: not seen again for a whole generation of the name table (namesMax / 2 new names)', this.names.forgotten);
    p.counter('apm_rack_names_bad_hash_total', 'Dictionary entries whose name does not hash to their hash (not learned)', this.names.badHashes);
    p.counter('apm_rack_rollup_overflow_total', 'Summaries left out of a rollup (too many metrics in one second)', this.merger.rollupOverflow);
    p.counter('apm_rack_summaries_split_overflow_total', "A server's summaries of one metric in one second, split over several entries, whose counts add up past 2^32 - 1 or whose sums overflow: that summary is not sent (the server's other series are)", this.merger.split.overflow);
    p.counter('apm_rack_rollups_count_overflow_total', "Distribution rollups not sent because their servers' counts add up past 2^32 - 1 (the servers' summaries are sent; the core uses them for that second)", this.merger.rollupsCountOverflow);
    p.counter('apm_rack_seconds_split_total', 'Seconds sent as several bodies, new or spooled and re-cut for another shard count: one would have passed bodyBytesMax, or a shard\'s section the NATS section bound (each body holds whole metrics: all servers\' entries and the rollup)', this.cutter.secondsSplit);
    p.counter('apm_rack_metrics_too_large_total', "Metric-seconds not sent: one metric's entries alone passed a body's bound (its other seconds, and the second's other metrics, are sent)", this.cutter.metricsTooLarge);
    p.counter('apm_rack_rollups_not_finite_total', 'Distribution rollups not sent because their sum overflowed (the servers\' summaries are sent; the core uses them for that second)', this.cutter.rollupsNotFinite);
    p.counter('apm_rack_section_metrics_dropped_total', "Metrics left out of a second's sections (more distinct metrics in one second than the rack's metric bound)", this.cutter.overflow);
    p.gauge('apm_rack_shards', "Shards the rack cuts each second into (the core's S; the default until the core ever said)", this.spool.shards);
    p.gauge('apm_rack_points_packed', '1 when sections carry their points packed (~2 bytes a point instead of 10): the core or the cluster said it reads them', this.corePacks() ? 1 : 0);
    p.gauge('apm_rack_session', "This spool's session: the core de-duplicates by (rack, session, seq)", this.spool.session);
    p.counter('apm_rack_batches_spooled_total', 'Batches written to the spool', this.counters.batches_spooled);
    p.counters('apm_rack_internal_failures_total', 'Units lost to an error this rack did not expect (a bug; logged): a datagram not taken, or a closed second not forwarded', 'unit', { datagram: this.counters.datagrams_failed, second: this.counters.batches_failed });
    p.counter('apm_rack_batches_spool_failed_total', 'Batches lost because spooling them threw (a bug: the spool holds refused writes in memory)', this.counters.batches_spool_failed);
    p.gauge('apm_rack_spool_bytes', 'Bytes in the spool', this.spool.heldBytes);
    p.gauge('apm_rack_spool_batches', 'Batches in the spool', this.spool.heldBatches);
    p.counter('apm_rack_spool_dropped_batches_total', 'Oldest batches dropped: the spool bound, or the memory bound while the disk refused writes', this.spool.droppedBatches);
    p.counter('apm_rack_spool_dropped_in_memory_total', 'Of those, dropped from memory while the disk refused writes', this.spool.droppedInMemory);
    p.counter('apm_rack_spool_write_errors_total', 'Spool writes the disk refused (the batches were held in memory)', this.spool.writeErrors);
    p.counter('apm_rack_spool_session_rotations_total', 'New sessions taken because batch numbers could not be reserved on disk (a full disk)', this.spool.sessionRotations);
    p.counter('apm_rack_spool_disk_low_total', 'Batches held in memory because free space was below the reserve', this.spool.diskLowBatches);
    p.gauge('apm_rack_spool_memory_batches', 'Batches held only in memory (the disk refused them; lost if the rack dies)', this.spool.memoryBatches);
    p.gauge('apm_rack_spool_memory_bytes', 'Bytes of those', this.spool.memoryBytes);
    p.counter('apm_rack_lmdb_unhandled_failures_total', 'Failed LMDB commits whose rejection lmdb-js left unhandled (caught, not a crash)', lmdbCounters.commit_failures_unhandled);
    if (this.publisher !== null) this.publisherMetrics(p, this.publisher);
    else if (this.forwarder !== null) this.forwarderMetrics(p, this.forwarder);
    if (this.forwarder !== null) p.counter('apm_rack_status_reports_failed_total', 'Status reports to the core (fleet view) that failed; the next one replaces them', this.forwarder.counters.status_reports_failed);
    return p.toString();
  }

  private forwarderMetrics(p: PromText, f: Forwarder): void {
    p.counter('apm_rack_placement_failures_total', "Requests for the core's shard count (GET /api/v1/placement) that failed; retried with backoff", f.placementFailures);
    p.counter('apm_rack_shards_mismatch_total', 'Batches the core refused with 409 shards_mismatch (cut for another shard count; re-cut and sent again)', f.counters.shards_mismatch);
    p.counter('apm_rack_batches_recut_total', "Spooled batches re-cut for the core's shard count before sending", f.counters.batches_recut);
    p.counter('apm_rack_batches_recut_deferred_total', 'Re-cuts into several bodies the spool could not write (its disk below the reserve): the batch waits, newer ones are sent', f.counters.batches_recut_deferred);
    p.counter('apm_rack_batches_unreadable_total', 'Spooled batches this build cannot read (e.g. written by an older apm), dropped', f.counters.batches_unreadable);
    p.counter('apm_rack_batches_unauthorized_total', 'Sends the core refused for the token (401/403); the batches stay spooled', f.counters.batches_unauthorized);
    p.counter('apm_rack_batches_acked_total', 'Batches the core acknowledged', f.counters.batches_acked);
    p.counter('apm_rack_batches_failed_total', 'Batch sends that failed and will be retried', f.counters.batches_failed);
    p.counter('apm_rack_batches_rejected_total', 'Batches the core refused for good (400: the body does not decode or check; 413: too large)', f.counters.batches_rejected);
    p.counter('apm_rack_batches_replayed_total', 'Batches found in the spool at start-up', f.counters.batches_replayed);
    p.gauge('apm_rack_core_up', '1 when the last send to the core succeeded', f.coreDown ? 0 : 1);
    p.histogram('apm_rack_forward_latency_seconds', "Time from a second's end to the core's acknowledgement", f.ackLatency);
  }

  /** NATS mode (issue 13): the same batch figures as the forwarder's where they mean the same, and the publisher's own. */
  private publisherMetrics(p: PromText, u: Publisher): void {
    const c = u.counters;
    p.gauge('apm_rack_nats_connected', '1 while the rack is connected to a NATS server', u.connected ? 1 : 0);
    p.gauge('apm_rack_nats_publishing', '1 once the cluster settings were read and publishing started (0: waiting for KV apm-cluster)', this.natsLink?.settings === null ? 0 : 1);
    p.counter('apm_rack_nats_settings_failures_total', 'Reads of the cluster settings (KV apm-cluster) that failed; retried', this.natsLink?.settingsFailures ?? 0);
    p.counter('apm_rack_nats_reconnects_total', 'Reconnections to NATS (each re-publishes the kept acknowledged bodies)', c.reconnects);
    p.counter('apm_rack_batches_acked_total', 'Batches every message of which its stream acknowledged (then removed from the spool)', c.batches_acked);
    p.counter('apm_rack_nats_body_bytes_acked_total', 'Bytes of those batches as spooled (before compression)', c.bytes_raw_acked);
    p.counter('apm_rack_nats_compressed_bytes_acked_total', 'Bytes of their messages as published (deflated)', c.bytes_compressed_acked);
    p.counter('apm_rack_nats_messages_acked_total', 'Messages a stream acknowledged', c.messages_acked);
    p.counter('apm_rack_nats_messages_dropped_total', 'Messages dropped after 5 refusals in a row of the message itself (over the NATS max payload or the stream message size)', c.messages_dropped_refused);
    p.counter('apm_rack_nats_messages_duplicate_total', 'Of those, acknowledged as duplicates (the stream already had the Msg-Id)', c.messages_duplicate);
    p.gauge('apm_rack_nats_streams_failing', 'Streams whose last publish failed (backing off; their batches stay spooled)', u.streamsFailing);
    p.counters('apm_rack_nats_publish_failed_total', 'Publishes that failed, by reason; the batch stays spooled and the message is retried with backoff', 'reason', u.failures);
    p.counter('apm_rack_nats_batches_republished_total', 'Acknowledged batches published again after a reconnect (NATS may have lost them)', c.batches_republished);
    p.counter('apm_rack_nats_messages_republished_total', 'Acknowledged messages published again after a reconnect (kept batches and open ones)', c.messages_republished);
    p.gauge('apm_rack_nats_kept_batches', 'Acknowledged batches kept for a re-publish after a reconnect', u.keptBatches);
    p.gauge('apm_rack_nats_kept_bytes', 'Their compressed bytes', u.keptBytesHeld);
    p.counter('apm_rack_nats_kept_evicted_total', 'Kept batches forgotten early for the byte bound (not re-published after a reconnect)', c.kept_evicted);
    p.gauge('apm_rack_nats_messages_in_flight', 'Publishes awaiting their acknowledgement', u.messagesInFlight);
    p.gauge('apm_rack_nats_batches_open', 'Batches being published (split into messages)', u.bodiesOpen);
    p.counter('apm_rack_batches_recut_total', "Spooled batches re-cut for the cluster's shard count before publishing", c.batches_recut);
    p.counter('apm_rack_batches_recut_deferred_total', 'Re-cuts into several bodies the spool could not write (its disk below the reserve): the body waits, newer ones are published', c.batches_recut_deferred);
    p.counter('apm_rack_batches_unreadable_total', 'Spooled batches this build cannot read (e.g. written by an older apm), dropped', c.batches_unreadable);
    p.counter('apm_rack_batches_replayed_total', 'Batches found in the spool at start-up', c.batches_replayed);
    p.histogram('apm_rack_forward_latency_seconds', "Time from a second's end to the acknowledgement of its batch's last message", u.ackLatency);
  }
}

/** Host-wide RcvbufErrors and this socket's drop count, read from /proc (0 when unavailable). */
export function kernelUdpDrops(port: number): { rcvbufErrors: number; socketDrops: number } {
  let rcvbufErrors = 0;
  let socketDrops = 0;
  try {
    const snmp = readFileSync('/proc/net/snmp', 'latin1').split('\n').filter((l) => l.startsWith('Udp:'));
    const head = snmp[0]?.split(/\s+/) ?? [];
    const vals = snmp[1]?.split(/\s+/) ?? [];
    rcvbufErrors = Number(vals[head.indexOf('RcvbufErrors')] ?? 0);
    const portHex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
    for (const file of ['/proc/net/udp', '/proc/net/udp6']) {
      for (const line of readFileSync(file, 'latin1').split('\n').slice(1)) {
        const f = line.trim().split(/\s+/);
        if (f[1]?.endsWith(portHex)) socketDrops += Number(f[f.length - 1] ?? 0);
      }
    }
  } catch {
    // Not Linux, or /proc hidden: the figures stay 0.
  }
  return { rcvbufErrors, socketDrops };
}

/** Keys whose file names another rack are a mistake: refused, naming both (issue 16.5). */
function checkRack(keys: KeySet | null, rack: string): KeySet | null {
  if (keys !== null && keys.rack !== null && keys.rack !== rack) throw new Error(`the key file names rack ${keys.rack} (rack=${keys.rack}) but this rack is ${rack} (--rack): every MAC covers the rack id, so its edges' datagrams would all be refused; give this rack its own key file with rack=${rack}`);
  return keys;
}

/** Thrown out of a re-cut when the spool cannot write its extra bodies now. */
class SpoolRefuses extends Error {}
