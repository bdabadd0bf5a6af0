// Every bound of the rack aggregator in one place, each with why it has its value.

import { serverSecondBytesMax, udpPayloadBytesMax } from '../schema/limits.js';

export const rackLimits = {
  /** Edges one rack accepts (`--servers-max`): 40 per rack by design, room for larger racks. */
  serversMax: 256,
  /** Largest datagram accepted; larger ones are refused as too_large. */
  datagramBytesMax: udpPayloadBytesMax,
  /** Datagrams queued between the socket and the decoder (drained every tick). */
  queueDatagramsMax: 200_000,
  /** Bytes queued between the socket and the decoder: ~2 s of a full rack at 1432-byte parts. */
  queueBytesMax: 128 * 1024 * 1024,
  /** Open seconds per server: lateness (2 s) plus seconds still being received, with margin. */
  openSecondsPerServerMax: 16,
  /** Bytes of datagrams held in open seconds: 40 servers × ~40 KB × 16 s, ×4 headroom. */
  bytesHeldMax: 256 * 1024 * 1024,
  /** Bytes of one server's second held (schema/limits.ts, which edges pack within); 256 servers'
   *  worth is bytesHeldMax, so one edge cannot take the room of the others. */
  serverSecondBytesMax,
  /** Late parts are forwarded up to 10 minutes after their second; older ones are too_old. */
  lateHorizonSeconds: 600,
  /** Edge clocks may run this far ahead before their parts are refused (too_far_in_future).
   *  The rack sets it to ⌈clockSkewMaxMs⌉ s: a second stamped ahead of our clock is a skewed edge. */
  futureSeconds: 30,
  /** Largest |edge clock − rack clock| accepted (`--clock-skew-max`); beyond it datagrams are
   *  refused as clock_skew (issue 8). NTP keeps hosts within milliseconds; a host whose NTP
   *  stopped drifts ~50 ppm ≈ 4 s a day, so 10 s still admits it for a couple of days while a
   *  clock wrong by the 30 s of a broken time zone or VM resume is refused, not filed into
   *  windows 30 s off. It is also the freshness window of signed datagrams (stale beyond it):
   *  every send is signed at send time, so the window need not cover the lateness. */
  clockSkewMaxMs: 10_000,
  /** MACs remembered to refuse replays: a full rack signs ~40 × 30 = 1,200 datagrams/s, kept
   *  for the 10 s window → ~12 k; ×20 headroom at ~100 B each ≈ 25 MB. When full the oldest
   *  goes and anything signed before it is refused as stale (never a replay let through). */
  replayEntriesMax: 262_144,
  /** A server counts in apm_rack_servers_clock_skewed this long after its last skewed datagram. */
  skewReportMs: 60_000,
  /** Clock records of senders unheard for this long are forgotten (one per server, bounded below). */
  senderIdleMs: 600_000,
  /** Senders whose clocks are tracked: serversMax, with room for ids the allow-list refuses. */
  sendersTrackedMax: 4096,
  /** A missing part is NACKed once its siblings are this old: edges send a second in one burst. */
  nackDelayMs: 100,
  nackIntervalMs: 250,
  /** NACK rounds per second: 6 fit in the default 2 s lateness (100 ms + 5 × 250 ms, each answer
   *  back in well under 250 ms on a rack's LAN). A part is lost only if it and every resend are
   *  dropped: at 20% loss 0.2^7 ≈ 1e-5 per part (with 4 rounds, the loss bench lost 1 part in 172). */
  nackRetriesMax: 6,
  /** Metric names remembered (hash → name); beyond it names are not relayed (counted). */
  namesMax: 1_000_000,
  /** Distinct metrics in one rack second: bounds the rollup and the shard sections cut from it
   *  (40 servers × 2,000 metrics share most names; 500 k leaves room for per-server names). */
  rollupMetricsMax: 500_000,
  /** Largest body of one second: a second past it goes as several bodies (rack_seconds_split),
   *  each with its own seq and whole metrics (all servers' entries and the rollup). A full
   *  rack's second is ~1–2 MB; 256 edges at serverSecondBytesMax can make hundreds of MB, which
   *  the core would refuse whole (413 beyond 64 MiB, schema/limits.ts batchBytesMax). */
  bodyBytesMax: 16 * 1024 * 1024,
  /** NATS mode: largest shard section (one message): under nats-server's default max payload
   *  (1 MiB) even when deflate gains nothing. A larger one is cut by metrics into several. */
  natsSectionBytesMax: 960 * 1024,
  /** Names re-sent to the core with every batch (a core that lost its registry relearns them). */
  nameRefreshPerBatch: 200,
  /** Unknown-name hashes asked from one edge per second. */
  nameAsksPerServerSecond: 256,
  /** POSTs in flight to the core. One keeps batches strictly in order (a core answers one in
   *  ~10 ms, so a rack's 1 batch/s drains a backlog ~100× faster than it builds up). */
  forwardConcurrency: 1,
  forwardTimeoutMs: 30_000,
  backoffMinMs: 200,
  backoffMaxMs: 10_000,
  /** NATS mode (issue 13): messages in flight over all open bodies. A stream takes one message
   *  of this rack at a time (order), so this is how many shards publish in parallel: 64 covers
   *  the default S in one round trip, and a backlog drains at ~64 messages per round trip. */
  natsConcurrency: 64,
  /** Spooled bodies split into messages at once: bounds the messages in memory (16 s of a full
   *  rack's seconds, compressed) while letting a backlog pipeline across bodies. */
  natsBodiesOpenMax: 16,
  /** A stream acknowledges in milliseconds (R3: one round trip to a follower); 5 s covers a
   *  leader election without holding a shard's messages long behind a lost answer. */
  natsPublishTimeoutMs: 5_000,
  /** Backoff after failed publishes; capped lower than the core's: NATS coming back after an
   *  outage is noticed by the connection (reconnect), this only paces retries against a cluster
   *  that answers but refuses (no stream leader, permissions). */
  natsBackoffMaxMs: 5_000,
  /** Acknowledged bodies kept for a re-publish after a reconnect: JetStream acknowledges before
   *  the message is on disk, and a crash of every NATS server loses what was not synced — up to
   *  nats-server's sync_interval, 2 min by default; 150 s covers it and is inside the streams'
   *  duplicate window (600 s), so the re-publish is de-duplicated. Counted back from the moment
   *  the connection was lost. */
  natsKeepAckedMs: 150_000,
  /** Bound on those (compressed bytes): 150 s of a full rack's seconds (40 servers × 2,000 metrics, ~3.9 B a point deflated: ~47 MB) with headroom. */
  natsKeepAckedBytesMax: 64 * 1024 * 1024,
  /** KV apm-cluster is asked this often while no core node wrote the settings. */
  natsSettingsPollMs: 1_000,
  /** While waiting (settings, a first NATS server), the rack says so this often. */
  natsWaitLogMs: 5_000,
  /** Spool bound (`--spool-bytes`): ~10 minutes of a full rack's batches. */
  spoolBytes: 1024 * 1024 * 1024,
  /** Free file-system space the spool leaves: LMDB needs room to finish a transaction, and a
   *  write into a full file system fails (lmdb-js rejects it; the rack then holds in memory). */
  spoolReserveBytes: 64 * 1024 * 1024,
  /** Batches held in memory while the disk refuses them: ~40 s of a full rack's batches. */
  spoolMemoryBytesMax: 64 * 1024 * 1024,
  /** Socket receive buffer (DESIGN §2: the default loses 36% at 20 k datagrams/s). */
  recvBufferBytes: 8 * 1024 * 1024,
  tickMs: 20,
  /** After a restart, seconds stay open this much longer than the lateness, so the probes for
   *  the seconds missed (edges' resend rings) and the NACKs for their other parts come back. */
  resumeHoldMs: 3_000,
  /** The rack's own status (loss, spool) is sent to the core this often, for the dashboard's
   *  fleet view; a few seconds is fresh enough for people and costs one small POST. */
  statusReportMs: 5_000,
} as const;

export type RackLimits = { -readonly [K in keyof typeof rackLimits]: number };
