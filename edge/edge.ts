// The edge daemon: wires the StatsD socket, the host collector, the aggregator, the
// packetizer, the resend ring and the rack socket together. Sockets only enqueue; parsing,
// aggregation and sending happen on a tick (STYLE "Run at your own pace").

import dgram from 'node:dgram';
import { randomInt } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { authHeaderBytes, isRackId, open, ReplayCache, sign, type KeySet } from '../schema/auth.js';
import { Body, KindCode, decodeFrame, type NackMessage } from '../schema/codec.js';
import { udpPayloadBytesMax } from '../schema/limits.js';
import { Aggregator, dropReasons } from './aggregator.js';
import { SecondClock, systemClock, type EdgeClock } from './clock.js';
import { HostCollector } from './host.js';
import { checkLimits, type EdgeLimits } from './limits.js';
import { Packetizer } from './packetizer.js';
import { ResendRing } from './ring.js';
import { malformedReasons, refusedReasons, StatsdParser, type StatsdSecond } from './statsd.js';

/** Name prefixes of the edge's own series, which StatsD clients may not use (Aggregator reservedPrefixes). */
const selfPrefix = 'apm.edge.';
const hostPrefix = 'host.';

export interface EdgeOptions {
  server: string;
  rackHost: string;
  rackPort: number;
  statsdHost: string;
  statsdPort: number;
  hostCollector: boolean;
  limits: EdgeLimits;
  /** Keys shared with the rack (`--key-file`): datagrams are signed, NACKs must be. */
  keys?: KeySet | null;
  /** The rack's id (`--rack-id`), which every MAC covers (issue 16.5); default: the rack the key file names. */
  rackId?: string;
  /** Wall and monotonic clocks (edge/clock.ts); tests step them, --clock-offset shifts the wall clock. */
  clock?: EdgeClock;
}

/**
 * Counters of the edge itself; they also travel as apm.edge.* metrics (issue 2), with the
 * per-reason counts of StatsD lines not stored (`edgeSelfMetricsHelp` lists them all).
 */
export interface EdgeCounters {
  statsd_datagrams: number;
  statsd_queue_dropped: number;
  datagrams_sent: number;
  bytes_sent: number;
  send_errors: number;
  seconds_sent: number;
  nacks_received: number;
  nacks_rejected: number;
  nacks_unauthenticated: number;
  nacks_unknown_key: number;
  nacks_bad_hmac: number;
  nacks_stale: number;
  nacks_replayed: number;
  datagrams_resent: number;
  resend_missed: number;
  /** Seconds stamped twice (the wall clock stepped back): NACKs for them are not answered (edge/ring.ts). */
  seconds_repeated: number;
  /** Parts and names a NACK asked for beyond resendBytesPerSecondMax in one second: not sent. */
  resends_refused: number;
  names_resent: number;
  summaries_split: number;
  /** Seconds whose names were left out: with them they took more than 4,096 datagrams or 1 MiB (what a rack holds of one server's second). */
  names_deferred: number;
  /** Series not sent: their second took more than 4,096 datagrams or 1 MiB even without names. */
  series_over_parts: number;
  host_errors: number;
}

export class Edge {
  readonly aggregator: Aggregator;
  readonly parser: StatsdParser;
  readonly counters: EdgeCounters = {
    statsd_datagrams: 0,
    statsd_queue_dropped: 0,
    datagrams_sent: 0,
    bytes_sent: 0,
    send_errors: 0,
    seconds_sent: 0,
    nacks_received: 0,
    nacks_rejected: 0,
    nacks_unauthenticated: 0,
    nacks_unknown_key: 0,
    nacks_bad_hmac: 0,
    nacks_stale: 0,
    nacks_replayed: 0,
    datagrams_resent: 0,
    resend_missed: 0,
    seconds_repeated: 0,
    resends_refused: 0,
    names_resent: 0,
    summaries_split: 0,
    names_deferred: 0,
    series_over_parts: 0,
    host_errors: 0,
  };
  readonly session = randomInt(1, 0xffffffff);
  private readonly packetizer: Packetizer;
  private readonly ring: ResendRing;
  private readonly host: HostCollector | null;
  private readonly clock: EdgeClock;
  /** The open second: when it closes (monotonic) and its stamp (wall clock), issue 16.9. */
  private readonly seconds: SecondClock;
  private keys: KeySet | null;
  /** The rack our MACs are for (null without keys). */
  private readonly rackId: string | null;
  private readonly nackReplay: ReplayCache;
  private statsd: dgram.Socket | null = null;
  private rack: dgram.Socket | null = null;
  private readonly queue: Buffer[] = [];
  /** Monotonic arrival time of each queued datagram: it belongs to the second open then. */
  private readonly queueMonoMs: number[] = [];
  private queueBytes = 0;
  /** The second each datagram is parsed into (reused: no allocation per datagram). */
  private readonly parsing: StatsdSecond = { second: -1, stamp: -1 };
  private seq = 0;
  private tickTimer: NodeJS.Timeout | null = null;
  private hostTimer: NodeJS.Timeout | null = null;
  /** The monotonic second of resendBytes: what NACKs made this edge send in it (resendBudget). */
  private resendSecond = -1;
  private resendBytes = 0;
  private reported = new Map<string, number>();
  private rackAddress = '';
  /** Set once the rack socket is closing: late host readings are not sent. */
  private closing = false;
  /** Set when stop() begins: a host reading under way then schedules no next one. */
  private stopped = false;

  constructor(private readonly opts: EdgeOptions) {
    checkLimits(opts.limits);
    const l = opts.limits;
    this.clock = opts.clock ?? systemClock;
    this.seconds = new SecondClock(this.clock);
    this.keys = opts.keys ?? null;
    this.rackId = this.keys === null ? null : macRack(this.keys, opts.rackId);
    this.nackReplay = new ReplayCache(l.nackReplayEntriesMax, l.nackClockSkewMaxMs);
    this.aggregator = new Aggregator({
      seriesMax: l.seriesMax,
      observationsPerSecondMax: l.observationsPerSecondMax,
      counterIdleSeconds: l.counterIdleSeconds,
      seriesEvictSeconds: l.seriesEvictSeconds,
      setValuesPerSeriesMax: l.setValuesPerSeriesMax,
      setValuesPerSecondMax: l.setValuesPerSecondMax,
      reservedPrefixes: opts.hostCollector ? [selfPrefix, hostPrefix] : [selfPrefix],
      ownSeriesMax: l.ownSeriesMax,
    });
    this.parser = new StatsdParser(l.lineBytesMax);
    // Signed datagrams carry the auth header: frames leave room for it within --datagram-bytes.
    this.packetizer = new Packetizer({ server: opts.server, session: this.session, datagramBytes: l.datagramBytes, authBytes: this.keys === null ? 0 : authHeaderBytes });
    this.ring = new ResendRing(l.resendSeconds, l.resendBytesMax);
    this.host = opts.hostCollector ? new HostCollector() : null;
  }

  /** Binds the StatsD socket and the rack socket; resolves with the StatsD port. */
  async start(): Promise<number> {
    const l = this.opts.limits;
    const statsd = dgram.createSocket({ type: this.opts.statsdHost.includes(':') ? 'udp6' : 'udp4', recvBufferSize: l.recvBufferBytes });
    statsd.on('message', (msg) => this.enqueue(msg));
    statsd.on('error', (err) => console.error(`edge: StatsD socket error: ${err.message}`));
    await new Promise<void>((resolve, reject) => {
      statsd.once('error', reject);
      statsd.bind(this.opts.statsdPort, this.opts.statsdHost, () => {
        statsd.off('error', reject);
        resolve();
      });
    });
    this.statsd = statsd;
    const resolved = await lookup(this.opts.rackHost);
    this.rackAddress = resolved.address;
    const rack = dgram.createSocket({ type: resolved.family === 6 ? 'udp6' : 'udp4', sendBufferSize: 4 * 1024 * 1024 });
    rack.on('message', (msg, rinfo) => this.onRackMessage(msg, rinfo));
    rack.on('error', () => this.counters.send_errors++);
    await new Promise<void>((resolve) => rack.bind(0, resolve));
    this.rack = rack;
    this.tickTimer = setInterval(() => this.tick(), l.tickMs);
    if (this.host !== null) this.scheduleHost();
    return statsd.address().port;
  }

  /** Replaces the keys (SIGHUP). */
  setKeys(keys: KeySet | null): void {
    if (keys !== null && this.keys === null) throw new Error('BUG: keys added to an edge started without them (its frames leave no room for the auth header)');
    if (keys !== null) macRack(keys, this.rackId ?? undefined);
    this.keys = keys;
  }

  /** The address NACKs come back to (the rack socket's local port). */
  get rackSocketPort(): number {
    return this.rack?.address().port ?? 0;
  }

  /** Flushes the open second and closes the sockets (SIGTERM path). */
  /**
   * Flushes the open second and closes the sockets; runs once (a second call, e.g. SIGTERM after
   * SIGINT, gets the first's promise: before, it closed the StatsD socket twice, an unhandled
   * ERR_SOCKET_DGRAM_NOT_RUNNING that ended the process with exit 1, and sent an unfinished second).
   */
  stop(): Promise<void> {
    this.stopping ??= this.stopOnce();
    return this.stopping;
  }

  private stopping: Promise<void> | null = null;

  private async stopOnce(): Promise<void> {
    this.stopped = true;
    if (this.tickTimer !== null) clearInterval(this.tickTimer);
    if (this.hostTimer !== null) clearTimeout(this.hostTimer);
    this.drain();
    if (this.seconds.index >= 0) this.closeSecond(this.clock.monoMs());
    await new Promise<void>((resolve) => (this.statsd ? this.statsd.close(() => resolve()) : resolve()));
    // Give queued sends a moment to leave before the socket closes.
    await new Promise((r) => setTimeout(r, 50));
    this.closing = true;
    await new Promise<void>((resolve) => (this.rack ? this.rack.close(() => resolve()) : resolve()));
  }

  private enqueue(msg: Buffer): void {
    const l = this.opts.limits;
    if (this.queue.length >= l.queueDatagramsMax || this.queueBytes + msg.length > l.queueBytesMax) {
      this.counters.statsd_queue_dropped++;
      return;
    }
    this.queue.push(msg);
    this.queueMonoMs.push(this.clock.monoMs());
    this.queueBytes += msg.length;
  }

  /** Parses queued StatsD datagrams, each into the second open when it arrived. */
  drain(): void {
    const agg = this.aggregator;
    for (let i = 0; i < this.queue.length; i++) {
      this.advanceTo(this.queueMonoMs[i]!);
      this.counters.statsd_datagrams++;
      this.parsing.second = agg.openSecond;
      this.parsing.stamp = this.seconds.stamp;
      this.parser.parse(this.queue[i]!, this.parsing, agg);
    }
    this.queue.length = 0;
    this.queueMonoMs.length = 0;
    this.queueBytes = 0;
  }

  /** Makes the open second the one holding monotonic time `monoMs`, closing those before it. */
  private advanceTo(monoMs: number): void {
    if (this.seconds.index < 0) this.openFirst(monoMs);
    else while (monoMs >= this.seconds.endMs) this.closeSecond(monoMs);
  }

  private openFirst(monoMs: number): void {
    this.seconds.start(monoMs);
    this.aggregator.close(this.seconds.index);
  }

  /** Closes the open second closeDelayMs after it ends by the monotonic clock (issue 16.9). */
  private tick(): void {
    this.drain();
    const now = this.clock.monoMs();
    if (this.seconds.index < 0) this.openFirst(now);
    else if (now >= this.seconds.endMs + this.opts.limits.closeDelayMs) this.closeSecond(now);
  }

  private scheduleHost(): void {
    // A reading under way at stop() ends here (before: it armed the next, every second for good).
    if (this.stopped) return;
    // Read /proc mid-second so the reading lands well inside the second it describes.
    const now = this.clock.wallMs();
    const delay = 1000 - (now % 1000) + 500;
    this.hostTimer = setTimeout(() => {
      void this.collectHost().finally(() => this.scheduleHost());
    }, delay % 1000 || 1000);
    this.hostTimer.unref();
  }

  private async collectHost(): Promise<void> {
    if (this.host === null || this.closing) return;
    const sample = await this.host.collect();
    this.counters.host_errors = this.host.errors;
    this.drain();
    this.advanceTo(this.clock.monoMs());
    for (const s of sample) this.aggregator.observe(s.name, s.kind, s.value, this.aggregator.openSecond, 1, false, true);
  }

  /**
   * Closes the open second, sends it as its wall-clock stamp, and opens the next one for an
   * event at monotonic time `monoMs` (edge/clock.ts says what a stepped wall clock does).
   */
  private closeSecond(monoMs: number): void {
    const agg = this.aggregator;
    const index = this.seconds.index;
    const stamp = this.seconds.stamp;
    this.reportSelf(index);
    this.seconds.advance(monoMs);
    const closed = agg.close(this.seconds.index);
    if (closed.pointLen + closed.distLen === 0) return;
    const l = this.opts.limits;
    // Ages count monotonic seconds (index), never stamps, which a stepped clock can repeat.
    const named = (slot: number) => index - agg.createdSecond[slot]! < l.newSeriesNamedSeconds || slot % l.nameRefreshSeconds === index % l.nameRefreshSeconds;
    const frames = this.packetizer.pack(closed, agg, { second: stamp, sentMs: this.clock.wallMs(), seq: this.seq }, named);
    this.seq = (this.seq + frames.length) >>> 0;
    this.counters.summaries_split = this.packetizer.splitSummaries;
    this.counters.names_deferred = this.packetizer.namesDeferred;
    this.counters.series_over_parts = this.packetizer.seriesOverParts;
    this.ring.put(stamp, frames);
    this.counters.seconds_repeated = this.ring.repeatedSeconds;
    for (const f of frames) this.send(f);
    this.counters.seconds_sent++;
  }

  /** Sends a frame, signed at send time when keys are set (the ring holds frames unsigned, so resends are signed afresh). */
  private send(frame: Uint8Array): void {
    if (this.rack === null || this.closing) return;
    const datagram = this.keys === null ? frame : sign(this.keys, frame, this.clock.wallMs(), this.rackId);
    this.counters.datagrams_sent++;
    this.counters.bytes_sent += datagram.length;
    this.rack.send(datagram, this.opts.rackPort, this.rackAddress, (err) => {
      if (err) this.counters.send_errors++;
    });
  }

  /** Feeds the edge's own counters into the second being closed, as apm.edge.* counters. */
  private reportSelf(second: number): void {
    const emit = (name: string, total: number) => {
      const prev = this.reported.get(name) ?? 0;
      if (total === prev && prev === 0) return;
      // Recorded as reported only once taken: a refused delta goes with the next second's.
      if (this.aggregator.observe(name, KindCode.Counter, total - prev, second, 1, false, true) === null) this.reported.set(name, total);
    };
    emit('apm.edge.statsd.lines', this.parser.lines);
    for (const [reason, n] of Object.entries(this.parser.malformed)) emit(`apm.edge.statsd.malformed.${reason}`, n);
    for (const [reason, n] of Object.entries(this.parser.refused)) emit(`apm.edge.statsd.refused.${reason}`, n);
    for (const [reason, n] of Object.entries(this.aggregator.drops)) emit(`apm.edge.dropped.${reason}`, n);
    for (const [name, n] of Object.entries(this.counters)) emit(`apm.edge.${name}`, n);
    this.aggregator.observe('apm.edge.series', KindCode.Gauge, this.aggregator.seriesCount, second, 1, false, true);
    this.aggregator.observe('apm.edge.resend_ring_bytes', KindCode.Gauge, this.ring.heldBytes, second, 1, false, true);
  }

  private onRackMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    // Only the rack we send to may ask for resends: anyone else could make us amplify traffic.
    const fromRack = rinfo.port === this.opts.rackPort && rinfo.address === this.rackAddress;
    if (!fromRack || msg.length > udpPayloadBytesMax) {
      this.counters.nacks_rejected++;
      return;
    }
    const frame = this.authenticNack(msg);
    if (frame === null) return;
    const r = decodeFrame(frame, udpPayloadBytesMax, { expect: Body.Nack });
    if (!r.ok || r.msg.type !== 'nack') {
      this.counters.nacks_rejected++;
      return;
    }
    this.onNack(r.msg);
  }

  /**
   * The frame of a NACK whose MAC, age and novelty check out (a forged or replayed NACK must
   * not make us send); without keys, the datagram as it came. Refusals are counted by reason.
   */
  private authenticNack(msg: Buffer): Uint8Array | null {
    if (this.keys === null) return msg;
    const o = open(this.keys, msg, this.rackId);
    if (!o.ok) {
      this.counters[`nacks_${o.reason}`]++;
      return null;
    }
    const nowMs = this.clock.wallMs();
    if (Math.abs(o.signedMs - nowMs) > this.opts.limits.nackClockSkewMaxMs) {
      this.counters.nacks_stale++;
      return null;
    }
    const replay = this.nackReplay.check(o.mac, o.signedMs, nowMs);
    if (replay !== null) {
      this.counters[`nacks_${replay}`]++;
      return null;
    }
    return o.frame;
  }

  /** Answers a NACK from the resend ring, and sends the names it asked for. */
  onNack(nack: NackMessage): void {
    if (nack.server !== this.opts.server || nack.session !== this.session) {
      this.counters.nacks_rejected++;
      return;
    }
    this.counters.nacks_received++;
    // Each part and name once per NACK, within a budget of bytes a second: a NACK naming one
    // part 512 times made 512 sends (a 600-fold amplification for a buggy or hostile rack).
    const parts = new Set(nack.missingParts);
    for (const part of parts) {
      const frame = this.ring.get(nack.second, part);
      if (frame === undefined) {
        this.counters.resend_missed++;
        continue;
      }
      if (!this.resendBudget(frame.length)) continue;
      this.counters.datagrams_resent++;
      this.send(frame);
    }
    if (nack.unknownHashes.length === 0) return;
    const slots = new Set<number>();
    for (let i = 0; i < nack.unknownHashes.length; i += 2) {
      const slot = this.aggregator.slotOfHash(nack.unknownHashes[i]!, nack.unknownHashes[i + 1]!);
      if (slot !== undefined) slots.add(slot);
    }
    const perFrame: number[] = [];
    const frames = this.packetizer.namesOnly(this.aggregator, [...slots], { second: nack.second, sentMs: this.clock.wallMs(), seq: this.seq }, perFrame);
    // Only names that went out count as resent (before: also those the budget refused, counted in resends_refused as well).
    frames.forEach((f, k) => {
      if (!this.resendBudget(f.length)) return;
      this.send(f);
      this.counters.names_resent += perFrame[k]!;
    });
  }

  /** Takes `bytes` from this monotonic second's resend budget; false (counted) when it has no room. */
  private resendBudget(bytes: number): boolean {
    const second = Math.floor(this.clock.monoMs() / 1000);
    if (second !== this.resendSecond) {
      this.resendSecond = second;
      this.resendBytes = 0;
    }
    if (this.resendBytes + bytes > this.opts.limits.resendBytesPerSecondMax) {
      this.counters.resends_refused++;
      return false;
    }
    this.resendBytes += bytes;
    return true;
  }
}

/**
 * What happens to StatsD lines the edge does not store, metric by metric (for `apm edge
 * --help`; the reason tables in statsd.ts and aggregator.ts are the one home of the list).
 */
export function edgeSelfMetricsHelp(): string {
  const rows = (prefix: string, reasons: Record<string, string>) => Object.entries(reasons).map(([r, why]) => `  ${`${prefix}${r}`.padEnd(44)} ${why}`);
  return [
    'Its own metrics (counters per second, in its stream like any other; the dashboard\'s fleet view',
    'sums them fleet-wide over the last minutes). Every StatsD line counts in apm.edge.statsd.lines;',
    'a line not taken counts under one malformed or refused reason, and a value of a taken line',
    '(a packed line has several) that is not stored counts under one dropped reason:',
    ...rows('apm.edge.statsd.malformed.', malformedReasons),
    ...rows('apm.edge.statsd.refused.', refusedReasons),
    ...rows('apm.edge.dropped.', dropReasons),
    `  ${'apm.edge.statsd_queue_dropped'.padEnd(44)} whole datagrams, when the socket queue is full`,
  ].join('\n');
}

/**
 * The rack id our MACs cover: `--rack-id`, or the rack the key file names; both, they must
 * agree; neither, the edge cannot sign (issue 16.5). Throws an error saying what to do.
 */
export function macRack(keys: KeySet, rackId: string | undefined): string {
  if (rackId !== undefined && !isRackId(rackId)) throw new Error(`--rack-id ${JSON.stringify(rackId.slice(0, 80))} is not a rack id ([A-Za-z0-9._-]{1,64})`);
  if (rackId !== undefined && keys.rack !== null && keys.rack !== rackId) throw new Error(`the key file names rack ${keys.rack} (rack=${keys.rack}) but --rack-id is ${rackId}; use the key file of rack ${rackId}`);
  const rack = rackId ?? keys.rack;
  if (rack === null) throw new Error('signed datagrams name the rack they are for (issue 16.5): give --rack-id <the rack\'s --rack>, or add rack=<rack id> to the key file\'s lines');
  return rack;
}
