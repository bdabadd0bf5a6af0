// Every bound of the rack aggregator in one place, each with why it has its value.

import { udpPayloadBytesMax } from '../schema/limits.js';

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
  /** Late parts are forwarded up to 10 minutes after their second; older ones are too_old. */
  lateHorizonSeconds: 600,
  /** Edge clocks may run this far ahead before their parts are refused (issue 8 tightens it). */
  futureSeconds: 30,
  /** A missing part is NACKed once its siblings are this old: edges send a second in one burst. */
  nackDelayMs: 100,
  nackIntervalMs: 250,
  nackRetriesMax: 4,
  /** Metric names remembered (hash → name); beyond it names are not relayed (counted). */
  namesMax: 1_000_000,
  /** Distinct metrics in one rack-second's rollup. */
  rollupMetricsMax: 500_000,
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
  /** Spool bound (`--spool-bytes`): ~10 minutes of a full rack's batches. */
  spoolBytes: 1024 * 1024 * 1024,
  /** Socket receive buffer (DESIGN §2: the default loses 36% at 20 k datagrams/s). */
  recvBufferBytes: 8 * 1024 * 1024,
  tickMs: 20,
} as const;

export type RackLimits = { -readonly [K in keyof typeof rackLimits]: number };
