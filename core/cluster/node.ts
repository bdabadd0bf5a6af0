// A core node in a cluster (issue 13): joins through NATS JetStream, keeps the ClusterView
// (core/cluster/view.ts) current, and consumes the streams of the shards placement gives it.
//
//   join         KV apm-cluster "settings": written once by the first node (create); a node
//                whose settings disagree refuses to start. The shards' streams are created if
//                absent (schema/log.ts ensureStreams).
//   heartbeat    every 2 s this node puts its NodeRecord under its id in KV apm-nodes; a node
//                whose newest heartbeat is 10 s older than the newest one seen is dead (the KV's
//                own timestamps: clocks of the nodes never matter).
//   placement    the live node with the smallest id places (core/cluster/placement.ts) and
//                writes KV apm-placement "shards" by compare-and-set; every node reads it.
//   shards       for each shard it owns or joins, one ShardConsumer. A joining node (or one whose
//                stream has aged out past what it applied) first copies a live owner's data of
//                the shard over HTTP (core/snapshot.ts), then reads the stream from the copy's
//                sequence. It reports a shard ready (NodeRecord.ready) once its lag is small;
//                only then do queries go to it.

import { jetstream, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { buckets, clusterSettingsDefaults, ensureStreams, parseSettings, retryJetStream, settingsDisagree, waitJetStream, type ClusterSettings } from '../../schema/log.js';
import type { RackSecondMessage } from '../../schema/section.js';
import type { ShardPool } from '../pool.js';
import { ApplyQueue, ShardConsumer } from './consumer.js';
import { CopyFailures } from './copy-failures.js';

/**
 * A message waits at most this long for others to go to the workers with (the smallest window is
 * 5 s): a worker then commits (fsyncs) at most ~10 times a second, whatever the number of shards
 * and their messages' timing — an fsync's kernel time is most of a node's CPU per point.
 */
const applyHoldMs = 100;
/** A shard is ready when what its consumer has not applied was stored over at most this much of the stream's time (or is at most readyLagMax messages): the smallest window. */
const readyBehindMsMax = 5_000;
/** A node silent this long and owning nothing is removed from KV apm-nodes. */
const goneAfterMs = 24 * 3_600_000;
/** Shards this node copies from owners at once. */
const copiesAtOnceMax = 2;
/**
 * Copies of a shard that fail in a row before this node reports it (NodeRecord.copyFailing), for
 * 10 minutes, doubled with each report that follows another without a good copy (at most a day):
 * core/cluster/copy-failures.ts.
 */
const copyFailureReports = { inRowToReport: 3, reportMs: 10 * 60_000, reportMaxMs: 24 * 3_600_000 };
/**
 * A join that has not caught up this long after its consumer started (a copy succeeded, but the
 * stream grows faster than this node applies it) is given up and reported like failed copies: it
 * held one of the cluster's move slots for good. Catch-up runs at ~230,000 points/s on the
 * 2-core bench box (docs/figures.md), so half an hour is a backlog no join should have.
 */
const joinCatchUpMaxMs = 30 * 60_000;
/**
 * A joiner holding nothing of a shard whose owners are all silent waits this long for one of them
 * (it holds the shard's history) before it reads the stream alone: from the stream it would hold
 * only what the stream still keeps, and answer for the shard with that, unmarked. A placer
 * replaces owners silent past replace-after (a minute); a rack's power blip outlasts that.
 */
const joinerPatienceMs = 15 * 60_000;
/** A durable consumer nobody pulls from for this long is deleted by the server (a node id gone for good). */
const consumerInactiveMs = 3_600_000;
/** Refused node records remembered to log each once (a few; cleared when full). */
const refusedRecordsMax = 256;
/** Messages at the workers at once (below the pool's ingestWaitingPerWorkerMax, 512, even with one worker). */
const applyInFlightMax = 384;
/** Messages sent to the workers at once at most (a flush comes sooner when this many wait). */
const applyBurstMax = 512;
import { nextPlacement, parseNodeRecord, parsePlacement, placementFromRecords } from './placement.js';
import type { ClusterView, NodeRecord, NodeState, PlacementDoc } from './view.js';

export interface ClusterNodeOptions {
  node: string;
  /** This node's API base URL as other nodes reach it. */
  url: string;
  workers: number;
  /** Settings this node asks for (given on its command line); the cluster's win where absent. */
  want: Partial<ClusterSettings>;
  heartbeatMs: number;
  deadAfterMs: number;
  /** A dead owner is replaced after this long (a node restarting sooner keeps its shards). */
  replaceAfterMs: number;
  /** Shards joining at once, cluster-wide. */
  movesMax: number;
  /** A shard is ready (answers queries) when at most this many of its messages are not applied. */
  readyLagMax: number;
  /** A join not caught up this long after its consumer started is given up (default joinCatchUpMaxMs). */
  joinCatchUpMaxMs?: number;
  /** Copies a live owner's data of a shard into this node (core/snapshot.ts); returns the applied sequence. */
  copyShard: (fromUrl: string, shard: number) => Promise<number>;
  /** Called with every log line worth an operator's eye. */
  log?: (line: string) => void;
}

/** How long a node waits to read the cluster settings back after it or another node wrote them. */
const settingsReadWaitMs = 10_000;

export class ClusterNode implements ClusterView {
  settings!: ClusterSettings;
  private js!: JetStreamClient;
  private jsm!: JetStreamManager;
  private kvNodes!: KV;
  private kvPlacement!: KV;
  private readonly consumers = new Map<number, ShardConsumer>();
  /** Shards being copied from another owner now. */
  private readonly copying = new Set<number>();
  /** Per shard this node joins (at most S): when its consumer started. */
  private readonly joinStartedMs = new Map<number, number>();
  /** Per shard (at most S), copies into this node that keep failing, and the reports made of them. */
  private readonly copyFailures = new CopyFailures(copyFailureReports);
  private nodeStates: NodeState[] = [];
  private doc: PlacementDoc | null = null;
  private docRevision = 0;
  /** KV apm-placement holds a document that does not parse (the placer writes over it). */
  private docUnreadable = false;
  /** KV apm-placement has no document (deleted, or the bucket made again after NATS storage was lost): the placer writes one back. */
  private docMissing = false;
  /** Keys of KV apm-nodes whose records do not check, with their heartbeats (as last read). */
  private unreadableNodes: { id: string; heartbeatMs: number; silentMs: number }[] = [];
  /** The unreadable node this node last held placement for (logged once). */
  private heldFor: string | null = null;
  /** Per key of KV apm-nodes whose record does not check: when this node first saw it so (bounded by the keys read). */
  private readonly unreadableSinceMs = new Map<string, number>();
  /** Keys of KV apm-nodes whose records were refused, with why (logged once each). */
  private readonly refusedRecords = new Map<string, string>();
  private readonly listeners: (() => void)[] = [];
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  private beatTimer: NodeJS.Timeout | null = null;
  private beating: Promise<void> | null = null;
  /** The last heartbeat was written (a round does not place or follow after one that failed). */
  private heartbeatOk = false;
  /** When the last heartbeat was written (this process' clock; 0: none yet). */
  private lastBeatOkMs = 0;
  private stopped = false;
  private readonly startedMs = Date.now();
  private lastHeartbeatMs = 0;
  readonly counters = { round_failures: 0, heartbeats: 0, heartbeat_failures: 0, placements_written: 0, placement_conflicts: 0, shards_copied: 0, shard_copy_failures: 0, shards_rebuilt: 0, shards_resumed_with_gap: 0, nodes_forgotten: 0, node_records_refused: 0, joins_given_up: 0, placement_rounds_held: 0 };
  private readonly log: (line: string) => void;
  /** Every rack second a consumer applied (core/main.ts feeds the server list and the fleet view). */
  onApplied: ((msg: RackSecondMessage) => void) | null = null;

  /** Messages of every consumer on their way to the workers, in bursts. */
  private applyQueue: ApplyQueue | null = null;
  /** The node's workers; set by attach() once the data directory is open. */
  private pool: ShardPool | null = null;

  private constructor(
    readonly nc: NatsConnection,
    private readonly o: ClusterNodeOptions,
  ) {
    this.log = o.log ?? ((l) => console.error(`apm core [${o.node}]: ${l}`));
  }

  get jetstream(): JetStreamClient {
    return this.js;
  }

  get nodeId(): string {
    return this.o.node;
  }

  /**
   * Agrees on the cluster's settings (or writes them as the first node). Call before the data
   * directory is opened: its S must be the cluster's.
   */
  static async settingsFor(nc: NatsConnection, want: Partial<ClusterSettings> & { shards: number; streamReplicas: number }): Promise<ClusterSettings> {
    await waitJetStream(nc);
    const kvm = new Kvm(nc);
    const kv = await retryJetStream(`KV ${buckets.cluster}`, () => kvm.create(buckets.cluster, { history: 1, replicas: want.streamReplicas }));
    const mine: ClusterSettings = { ...clusterSettingsDefaults, ...want } as ClusterSettings;
    // JetStream refuses a duplicate window longer than the max age (a short max age: tests).
    mine.duplicateWindowSeconds = Math.min(mine.duplicateWindowSeconds, mine.streamMaxAgeSeconds);
    let entry = await retryJetStream('reading the cluster settings', () => kv.get('settings'));
    // Written by the first node to get there; read back. The read may be answered by a replica
    // the write has not reached yet (a bucket's reads are direct gets, served by any replica), and
    // a write refused for another reason than "exists" (a leader election) leaves none: both are
    // tried again for a bounded time.
    const deadline = Date.now() + settingsReadWaitMs;
    while ((entry === null || entry.operation !== 'PUT') && Date.now() < deadline) {
      try {
        await retryJetStream('writing the cluster settings', () => kv.create('settings', JSON.stringify(mine)));
      } catch {
        // Another node wrote them first: theirs stand.
      }
      entry = await retryJetStream('reading the cluster settings', () => kv.get('settings'));
      if (entry === null || entry.operation !== 'PUT') await new Promise((r) => setTimeout(r, 200));
    }
    if (entry === null || entry.operation !== 'PUT') throw new Error(`KV ${buckets.cluster} has no settings ${settingsReadWaitMs} ms after writing them`);
    return parseSettings(entry.string());
  }

  /**
   * Joins: streams and KV buckets exist, the first heartbeat is written. The node consumes
   * nothing until attach() hands it the workers (the API needs the view before that).
   */
  static async join(nc: NatsConnection, settings: ClusterSettings, o: ClusterNodeOptions): Promise<ClusterNode> {
    const why = settingsDisagree(settings, o.want);
    if (why !== null) throw new Error(`this node cannot join the cluster: ${why}`);
    const n = new ClusterNode(nc, o);
    n.settings = settings;
    n.jsm = await waitJetStream(nc);
    n.js = jetstream(nc);
    await ensureStreams(n.jsm, settings);
    const kvm = new Kvm(nc);
    const replicas = settings.streamReplicas;
    n.kvNodes = await retryJetStream(`KV ${buckets.nodes}`, () => kvm.create(buckets.nodes, { history: 1, replicas }));
    n.kvPlacement = await retryJetStream(`KV ${buckets.placement}`, () => kvm.create(buckets.placement, { history: 1, replicas }));
    await retryJetStream('the first heartbeat', () => n.heartbeat());
    await retryJetStream('the first cluster round', () => n.tick());
    // Heartbeats on their own timer: a round waits on its workers (a shard emptied for a
    // rebuild, the applied sequences), which could hold the heartbeat past deadAfterMs and make
    // the others take this node for dead.
    n.beatTimer = setInterval(() => {
      if (n.beating !== null) return;
      n.beating = n
        .heartbeat()
        .catch(() => undefined) // counted; a round waits for the next good one
        .finally(() => (n.beating = null));
    }, o.heartbeatMs);
    n.timer = setInterval(() => {
      if (n.ticking !== null) return;
      n.ticking = n
        .tick()
        .catch((err: unknown) => {
          // NATS away or a leader election under way: the next round tries again.
          n.counters.round_failures++;
          n.log(`cluster round failed: ${(err as Error).message}`);
        })
        .finally(() => (n.ticking = null));
    }, o.heartbeatMs);
    return n;
  }

  /** This node's API URL once its port is known (the first heartbeats may carry the configured one). */
  setUrl(url: string): void {
    this.o.url = url;
  }

  /** Hands over the workers: from the next round on, the node consumes the shards placed here. */
  attach(pool: ShardPool): void {
    if (pool.shards !== this.settings.shards) throw new Error(`the data directory has ${pool.shards} shards; the cluster has ${this.settings.shards}`);
    this.pool = pool;
  }

  // -------------------------------------------------------------------------------------------
  // ClusterView

  nodes(): NodeState[] {
    return this.nodeStates;
  }

  placement(): PlacementDoc {
    return this.doc ?? { shards: [] };
  }

  placementRevision(): number {
    return this.docRevision;
  }

  readyOwners(shard: number): NodeState[] {
    const s = this.doc?.shards[shard];
    if (s === undefined) return [];
    const out: NodeState[] = [];
    for (const id of s.owners) {
      const n = this.nodeStates.find((x) => x.id === id);
      if (n !== undefined && n.live && n.ready.includes(shard)) out.push(n);
    }
    return out;
  }

  servesLocally(shard: number): boolean {
    return this.doc?.shards[shard]?.owners.includes(this.o.node) === true && this.isReady(shard);
  }

  onChange(f: () => void): void {
    this.listeners.push(f);
  }

  /** Keys of KV apm-nodes whose records do not check, as last read. */
  unreadable(): { id: string; silentMs: number }[] {
    return this.unreadableNodes.map((n) => ({ id: n.id, silentMs: n.silentMs }));
  }

  cutOffSinceMs(): number | null {
    if (this.heartbeatOk || this.stopped) return null;
    const since = this.lastBeatOkMs === 0 ? this.startedMs : this.lastBeatOkMs;
    return Date.now() - since > this.o.deadAfterMs ? since : null;
  }

  // -------------------------------------------------------------------------------------------

  /** This node's consumer of a shard has caught up (and no copy is under way). */
  private isReady(shard: number): boolean {
    const c = this.consumers.get(shard);
    return c !== undefined && !this.copying.has(shard) && c.state !== 'behind_stream' && c.caughtUp;
  }

  /** Per shard this node consumes: its consumer's figures (status pages, /metrics). */
  shardStates(): { shard: number; state: string; applied: number; lag: number; ready: boolean; role: 'owner' | 'joining'; lastError: string }[] {
    return [...this.consumers].map(([shard, c]) => ({
      shard,
      state: this.copying.has(shard) ? 'copying' : c.state,
      applied: c.applied,
      lag: Number.isFinite(c.lag) ? c.lag : -1,
      ready: this.isReady(shard),
      role: this.doc?.shards[shard]?.owners.includes(this.o.node) === true ? 'owner' : 'joining',
      lastError: c.lastError,
    }));
  }

  consumerCounters(): Record<string, number> {
    const out: Record<string, number> = { ...this.consumersGone };
    for (const c of this.consumers.values()) for (const [k, v] of Object.entries(c.counters)) out[k] = (out[k] ?? 0) + v;
    return out;
  }

  /** Counters of consumers no longer running (removed, or replaced after a copy or a gap): consumerCounters never goes back. */
  private readonly consumersGone: Record<string, number> = {};

  private dropConsumer(k: number): void {
    const c = this.consumers.get(k);
    if (c === undefined) return;
    this.consumers.delete(k);
    for (const [name, v] of Object.entries(c.counters)) this.consumersGone[name] = (this.consumersGone[name] ?? 0) + v;
  }

  private record(): NodeRecord {
    const ready: number[] = [];
    const lag: Record<number, number> = {};
    const applied: Record<number, number> = {};
    for (const [k, c] of this.consumers) {
      if (this.isReady(k)) ready.push(k);
      lag[k] = Number.isFinite(c.lag) ? c.lag : -1;
      applied[k] = c.applied;
    }
    const copyFailing = this.copyFailures.reported(Date.now());
    return { id: this.o.node, url: this.o.url, workers: this.o.workers, startedMs: this.startedMs, ready: ready.sort((a, b) => a - b), lag, applied, copyFailing };
  }

  /** One round: heartbeat, read the nodes and the placement, place (if this node is the placer), follow the placement. */
  private async tick(): Promise<void> {
    if (this.stopped || !this.heartbeatOk) return;
    const before = JSON.stringify([this.doc, this.nodeStates.map((n) => [n.id, n.live, n.ready])]);
    await this.readNodes();
    await this.readPlacement();
    await this.place();
    await this.follow();
    const after = JSON.stringify([this.doc, this.nodeStates.map((n) => [n.id, n.live, n.ready])]);
    if (after !== before) for (const f of this.listeners) f();
  }

  /** Puts this node's record in KV apm-nodes (every heartbeatMs, on its own timer). */
  private async heartbeat(): Promise<void> {
    if (this.stopped) return;
    try {
      const wasCutOff = this.cutOffSinceMs() !== null;
      await this.kvNodes.put(this.o.node, JSON.stringify(this.record()));
      this.counters.heartbeats++;
      // Back from a cut-off: what the streams took meanwhile is not known until each consumer's
      // next pull tells, so no shard is ready (nor answered unmarked) until then.
      if (wasCutOff) for (const c of this.consumers.values()) c.unsure();
      this.heartbeatOk = true;
      this.lastBeatOkMs = Date.now();
    } catch (err) {
      this.counters.heartbeat_failures++;
      if (this.heartbeatOk) this.log(`heartbeat failed: ${(err as Error).message}`);
      this.heartbeatOk = false;
      throw err;
    }
  }

  private async readNodes(): Promise<void> {
    const states: NodeState[] = [];
    const unreadable: { id: string; heartbeatMs: number }[] = [];
    // KV keys() may list a key twice, or miss one, while it is written (every heartbeat writes):
    // a node seen twice was shown twice in the fleet view (CI, 2026-12-02), and a node missed
    // would look gone for a round. So: a set, and every node known before read again by its key
    // (a deleted one reads as absent).
    const keys = new Set<string>([...this.nodeStates.map((n) => n.id), ...this.unreadableNodes.map((n) => n.id)]);
    for await (const k of await this.kvNodes.keys()) keys.add(k);
    let newest = 0;
    for (const k of keys) {
      const e = await this.kvNodes.get(k);
      if (e === null || e.operation !== 'PUT') continue;
      const ms = e.created.getTime();
      newest = Math.max(newest, ms);
      try {
        const r = parseNodeRecord(e.string(), k, this.settings.shards);
        if (k === this.o.node) this.lastHeartbeatMs = ms;
        states.push({ ...r, live: true, heartbeatMs: ms, silentMs: 0 });
      } catch (err) {
        // Not routed to nor picked for a shard, but its heartbeat still counts: a live node whose
        // record does not check (another apm's format, a bad write) keeps the shards it owns
        // until it is silent past the replace-after time, like any node (before: it was taken
        // for gone at once and its shards replaced).
        unreadable.push({ id: k, heartbeatMs: ms });
        this.counters.node_records_refused++;
        // Once per key and reason, not every round.
        const why = (err as Error).message;
        if (this.refusedRecords.get(k) !== why) {
          if (this.refusedRecords.size >= refusedRecordsMax) this.refusedRecords.clear();
          this.refusedRecords.set(k, why);
          this.log(`KV ${buckets.nodes} key ${k} is not a node record (${why}); not routed to nor placed on, its shards kept while it heartbeats`);
        }
      }
    }
    for (const s of states) {
      s.silentMs = newest - s.heartbeatMs;
      s.live = s.silentMs <= this.o.deadAfterMs;
    }
    this.nodeStates = states.sort((a, b) => (a.id < b.id ? -1 : 1));
    this.unreadableNodes = unreadable.map((u) => ({ ...u, silentMs: newest - u.heartbeatMs }));
    const now = Date.now();
    const unreadableIds = new Set(unreadable.map((u) => u.id));
    for (const id of this.unreadableSinceMs.keys()) if (!unreadableIds.has(id)) this.unreadableSinceMs.delete(id);
    for (const u of unreadable) if (!this.unreadableSinceMs.has(u.id)) this.unreadableSinceMs.set(u.id, now);
  }

  private async readPlacement(): Promise<void> {
    const e = await this.kvPlacement.get('shards');
    if (e === null || e.operation !== 'PUT') {
      // The last good document stands (in memory: every node keeps following it) and the placer
      // writes it back; a node that never read one rebuilds it from what the nodes consume. (A
      // fresh round robin put shards on nodes holding nothing of them, which then answered for
      // them, and took them from the nodes holding their history.)
      if (!this.docMissing && this.doc !== null) this.log(`KV ${buckets.placement} has no placement document any more; keeping the last one, and the placer writes it back`);
      this.docMissing = true;
      this.docRevision = 0;
      return;
    }
    this.docMissing = false;
    try {
      this.doc = parsePlacement(e.string(), this.settings.shards);
      this.docRevision = e.revision;
      this.docUnreadable = false;
    } catch (err) {
      // Its revision is kept so that the placer can write over it: with the revision of the last
      // good document, every compare-and-set failed and placement stayed frozen for good.
      if (!this.docUnreadable) this.log(`KV ${buckets.placement} does not parse (${(err as Error).message}); ${this.doc === null ? 'the placer rebuilds one from what the nodes consume' : 'keeping the last one'}, and the placer writes a good one over it`);
      this.docRevision = e.revision;
      this.docUnreadable = true;
    }
  }

  /** The placer's work (the live node with the smallest id): write the next placement by compare-and-set. */
  private async place(): Promise<void> {
    const live = this.nodeStates.filter((n) => n.live);
    // The placer is the smallest live id, readable or not: a node whose record this one cannot
    // read (another apm's format, in a rolling upgrade) may be placing by its own view; two
    // placers overwriting each other every round would start and stop consumers for good. So
    // while such a node is the smallest live id, this node holds placement (logged once).
    const unreadableLive = this.unreadableNodes.filter((n) => n.silentMs <= this.o.deadAfterMs).map((n) => n.id);
    const smallest = [...live.map((n) => n.id), ...unreadableLive].sort()[0];
    if (smallest !== undefined && unreadableLive.includes(smallest)) {
      if (this.heldFor !== smallest) this.log(`placement held: node ${smallest}, the smallest live id, has a record this node cannot read; it may be placing by its own view`);
      this.heldFor = smallest;
      this.counters.placement_rounds_held++;
      return;
    }
    this.heldFor = null;
    if (live.length === 0 || live[0]!.id !== this.o.node) return;
    // A new cluster's first placement waits a few heartbeats, so nodes started together are all in it (no copies at birth).
    if (this.doc === null && Date.now() - this.startedMs < 2 * this.o.heartbeatMs) return;
    // Never read a good document and the one in KV does not parse: rebuilt from who consumes what.
    const current = this.doc ?? (this.docUnreadable || this.docMissing ? placementFromRecords(this.nodeStates.filter((n) => n.live), this.settings.shards) : null);
    const next = nextPlacement({
      current,
      shards: this.settings.shards,
      replicas: this.settings.ownerReplicas,
      nodes: [
        ...this.nodeStates.map((n) => ({ id: n.id, live: n.live, silentMs: this.lastHeartbeatMs - n.heartbeatMs, ready: new Set(n.ready), copyFailing: new Set(n.copyFailing) })),
        ...this.unreadableNodes.map((n) => ({ id: n.id, live: n.silentMs <= this.o.deadAfterMs, silentMs: this.lastHeartbeatMs - n.heartbeatMs, ready: new Set<number>(), unusable: true, unusableForMs: Date.now() - (this.unreadableSinceMs.get(n.id) ?? Date.now()) })),
      ],
      replaceAfterMs: this.o.replaceAfterMs,
      movesMax: this.o.movesMax,
    });
    await this.forgetGoneNodes();
    // An unreadable or missing document is replaced by the placement this node follows (or the next one).
    const write = next ?? (this.docUnreadable || this.docMissing ? current : null);
    if (write === null) return;
    try {
      this.docRevision = this.docRevision === 0 ? await this.kvPlacement.create('shards', JSON.stringify(write)) : await this.kvPlacement.update('shards', JSON.stringify(write), this.docRevision);
      this.doc = write;
      this.docUnreadable = false;
      this.docMissing = false;
      this.counters.placements_written++;
    } catch (err) {
      // Another placer wrote first (two nodes both thought they were the smallest live id for a moment): read again next round.
      this.counters.placement_conflicts++;
      this.log(`placement not written (${(err as Error).message}); reading it again`);
    }
  }

  /**
   * The placer deletes from KV apm-nodes a node silent for goneAfterMs that no shard names any
   * more (ids come and go: the bucket and each round's reads must not grow with time).
   */
  private async forgetGoneNodes(): Promise<void> {
    const placed = new Set(this.doc?.shards.flatMap((s) => [...s.owners, ...s.joining]) ?? []);
    for (const n of [...this.nodeStates, ...this.unreadableNodes]) {
      if (n.silentMs < goneAfterMs || placed.has(n.id)) continue;
      await this.kvNodes.delete(n.id);
      this.counters.nodes_forgotten++;
      this.log(`node ${n.id} silent for ${Math.round(n.silentMs / 3_600_000)} h and owning nothing: removed from KV ${buckets.nodes}`);
    }
  }

  /** Starts consumers of shards placed here, copies where needed, stops those no longer here. */
  private async follow(): Promise<void> {
    const pool = this.pool;
    if (this.doc === null || pool === null) return;
    const mine = new Set<number>();
    this.doc.shards.forEach((s, k) => {
      if (s.owners.includes(this.o.node) || s.joining.includes(this.o.node)) mine.add(k);
      if (s.owners.includes(this.o.node)) this.copyFailures.promoted(k);
    });
    this.giveUpSlowJoins(Date.now());
    for (const [k, c] of this.consumers) {
      if (mine.has(k)) continue;
      this.dropConsumer(k);
      await c.remove();
      this.log(`shard ${k} is no longer placed here; its consumer is removed (its data stays until retention)`);
    }
    let seqs: Record<number, number> | null = null;
    for (const k of mine) {
      const c = this.consumers.get(k);
      if (c !== undefined && c.state !== 'behind_stream') continue;
      if (this.copying.has(k)) continue;
      seqs ??= await pool.streamSeqs();
      const applied = seqs[k] ?? 0;
      const joining = this.doc.shards[k]!.joining.includes(this.o.node);
      const source = this.readyOwners(k).find((n) => n.id !== this.o.node);
      // Copy when joining with nothing of the shard while an owner is ready, or when the stream
      // aged out past what this node applied (the consumer says so). Whatever the owner's applied
      // sequence: one whose stream was made again reads it from 0 and holds a year of rows (before,
      // an owner at 0 was taken to hold nothing, and the joiner became an owner without them);
      // the copy of a shard that holds nothing is small. (At a cluster's birth nobody joins.)
      const needCopy = c?.state === 'behind_stream' || applied < 0 || (joining && applied === 0 && source !== undefined);
      if (needCopy && source === undefined) {
        if (c === undefined) this.startConsumer(k, applied);
        else if (this.resumesWithGap(k, applied, c.streamFirst)) {
          // No other owner is alive, or every live one is behind the stream too and this one
          // applied the most: what aged out of the stream is nowhere else. Read on from the
          // stream's first message rather than stop; the gap is counted and logged.
          this.dropConsumer(k);
          if (applied >= 0) {
            this.counters.shards_resumed_with_gap++;
            this.log(`shard ${k}: applied up to ${applied}, its stream starts at ${c.streamFirst} and no other owner is alive: resuming from the stream; sequences ${applied + 1}..${c.streamFirst - 1} are lost`);
            this.startConsumer(k, applied, true);
          } else {
            // A copy into it did not complete (a failed copy, or a crash during one): its partial
            // rows are emptied, then the whole stream is read; what aged out of it is lost.
            await pool.restartFromStream(k);
            this.counters.shards_resumed_with_gap++;
            this.log(`shard ${k}: a copy into it did not complete and no other owner is alive: emptied it; reading its stream from the first message (what aged out of the stream before is lost)`);
            this.startConsumer(k, 0, true);
          }
        }
        continue; // an owner is alive but not caught up yet: copy from it next round
      }
      if (needCopy) {
        // A few copies at a time (the owner serves a bounded number of snapshots; the rest wait a round).
        if (this.copying.size < copiesAtOnceMax) void this.copyThenConsume(k, source!, c);
        continue;
      }
      this.startConsumer(k, applied);
    }
  }

  /**
   * Whether this owner of shard k, behind its stream (its first message `streamFirst` is past
   * what it applied), with no ready owner to copy from, should read on from the stream's first
   * message and accept the gap. It waits while another owner is alive that may still be a
   * source: one silent less than the replace-after time (a joiner holding nothing of the shard:
   * joinerPatienceMs, a quarter of an hour) (down a moment, it may come back with
   * everything) whose applied sequence is unknown yet or reaches the stream (it catches up, then
   * this one copies from it). When every live owner is behind the stream too, the one that
   * applied the most (ties: the lowest node id) resumes and the others copy from it once it is
   * ready — before, each waited for the other for good while the stream went on aging out.
   */
  private resumesWithGap(k: number, applied: number, streamFirst: number): boolean {
    // A joiner holding nothing waits longer for the owners (see joinerPatienceMs).
    const patienceMs = applied <= 0 && this.doc!.shards[k]!.joining.includes(this.o.node) ? Math.max(joinerPatienceMs, this.o.replaceAfterMs) : this.o.replaceAfterMs;
    const others = this.nodeStates.filter((n) => n.id !== this.o.node && n.silentMs < patienceMs && this.doc!.shards[k]!.owners.includes(n.id));
    for (const n of others) {
      const theirs = n.applied[k];
      if (theirs === undefined || theirs >= streamFirst - 1) return false;
      if (theirs > applied || (theirs === applied && n.id < this.o.node)) return false;
    }
    return true;
  }

  /** Joins that did not catch up within joinCatchUpMaxMs are reported (the placer then drops this node as their joiner). */
  private giveUpSlowJoins(nowMs: number): void {
    for (const [k, startedMs] of this.joinStartedMs) {
      const s = this.doc?.shards[k];
      if (s === undefined || !s.joining.includes(this.o.node) || !this.consumers.has(k)) {
        this.joinStartedMs.delete(k); // promoted, dropped, or its consumer gone
        continue;
      }
      if (this.isReady(k) || nowMs - startedMs < (this.o.joinCatchUpMaxMs ?? joinCatchUpMaxMs)) continue;
      this.joinStartedMs.delete(k);
      this.copyFailures.gaveUp(k, nowMs);
      this.counters.joins_given_up++;
      const lag = this.consumers.get(k)!.lag;
      this.log(`shard ${k}: joined ${Math.round((nowMs - startedMs) / 60_000)} min ago and still ${Number.isFinite(lag) ? `${lag} messages` : 'not'} caught up: given up, reported for ${Math.round(this.copyFailures.reportLengthMs(k, nowMs) / 60_000)} min (the placer picks another joiner)`);
    }
  }

  private startConsumer(k: number, applied: number, acceptLoss = false): void {
    if (this.doc?.shards[k]?.joining.includes(this.o.node) === true) this.joinStartedMs.set(k, Date.now());
    this.applyQueue ??= new ApplyQueue(this.pool!, { holdMs: applyHoldMs, burstMax: applyBurstMax, inFlightMax: applyInFlightMax });
    const c = new ShardConsumer({ node: this.o.node, shard: k, batch: 64, readyLagMax: this.o.readyLagMax, readyBehindMsMax, backoffMinMs: 100, backoffMaxMs: 2_000, inactiveMs: consumerInactiveMs }, this.pool!, this.applyQueue, this.js, this.jsm);
    c.acceptLoss = acceptLoss;
    c.onApplied = (m) => this.onApplied?.(m);
    this.consumers.set(k, c);
    c.start(applied);
  }

  private async copyThenConsume(k: number, source: NodeState, old: ShardConsumer | undefined): Promise<void> {
    this.copying.add(k);
    try {
      if (old !== undefined) await old.stop();
      this.dropConsumer(k);
      const t0 = Date.now();
      const applied = await this.o.copyShard(source.url, k);
      this.counters.shards_copied++;
      this.copyFailures.succeeded(k);
      if (old !== undefined) this.counters.shards_rebuilt++;
      this.log(`shard ${k}: copied from ${source.id} up to stream sequence ${applied} in ${Date.now() - t0} ms`);
      if (!this.stopped) this.startConsumer(k, applied);
    } catch (err) {
      this.counters.shard_copy_failures++;
      const now = Date.now();
      const reported = this.copyFailures.failed(k, now);
      this.log(`shard ${k}: copy from ${source.id} failed (${(err as Error).message}); ${reported ? `${copyFailureReports.inRowToReport} in a row: reported for ${Math.round(this.copyFailures.reportLengthMs(k, now) / 60_000)} min, the placer picks another joiner` : 'trying again'}`);
    } finally {
      this.copying.delete(k);
    }
  }

  async close(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    if (this.beatTimer !== null) clearInterval(this.beatTimer);
    await this.ticking;
    await this.beating?.catch(() => undefined);
    await Promise.all([...this.consumers.values()].map((c) => c.stop()));
  }
}
