// Every bound of the edge daemon in one place (STYLE "Put a limit on everything"), each with
// why it has its value. Options may lower or raise some; checkLimits() asserts how they relate.

import { datagramBytesDefault, datagramBytesMin, udpPayloadBytesMax } from '../schema/limits.js';

export const edgeLimits = {
  /** Active series per edge (`--series-max`): 2,000 expected per server, 5× headroom. */
  seriesMax: 10_000,
  /** Slots for the edge's own series (apm.edge.*: ~60; host.*: ~40), beside seriesMax: a client
   *  that fills seriesMax does not silence the counters that report it. */
  ownSeriesMax: 256,
  /** Distribution observations buffered per second: 5× the 20,000 lines/s target; ~32 B each → 3.2 MB. */
  observationsPerSecondMax: 100_000,
  /** Distinct members of one set series in one second (aggregator.ts SetKind): sets count users or
   *  hosts per server-second, rarely thousands; beyond this a count is a lower bound (counted). */
  setValuesPerSeriesMax: 4096,
  /** Set members held per second across all sets: 16 × the per-series bound; the table is twice
   *  this (16 B an entry → 2 MiB), allocated when the first set line arrives. */
  setValuesPerSecondMax: 65_536,
  /** StatsD datagrams queued between the socket and the aggregator (drained every tick). */
  queueDatagramsMax: 65_536,
  /** Bytes queued between the socket and the aggregator: bounds memory under a burst. */
  queueBytesMax: 16 * 1024 * 1024,
  /** StatsD line length: DogStatsD clients stay far below; longer lines are garbage. */
  lineBytesMax: 4096,
  /** A counter seen in the last 5 minutes emits 0 for idle seconds (DESIGN §3). */
  counterIdleSeconds: 300,
  /** Series unseen this long are forgotten and their slot reused. */
  seriesEvictSeconds: 600,
  /** Seconds of sent datagrams kept to answer NACKs: the rack's lateness (2 s) plus retries. */
  resendSeconds: 30,
  /** Bytes of sent datagrams kept: 30 s × ~40 KB/s per server, with headroom. */
  resendBytesMax: 8 * 1024 * 1024,
  /** Bytes resent (and names sent) per second in answer to NACKs: a rack asks for a few parts a
   *  second; 1 MiB is a whole second's data many times over, and bounds what a buggy or hostile
   *  rack can make the edge send. Beyond it a part is not resent (`apm.edge.resends_refused`). */
  resendBytesPerSecondMax: 1024 * 1024,
  /** Names sent with every series for its first seconds, so a rack learns new series quickly. */
  newSeriesNamedSeconds: 5,
  /** Every series' name is re-sent once per this many seconds (a rack restart relearns all names). */
  nameRefreshSeconds: 30,
  /** Names queued for resending after a rack asked for them. */
  nameRequestsMax: 10_000,
  /** Default datagram size and its bounds (DESIGN §6 --datagram-bytes). */
  datagramBytes: datagramBytesDefault,
  datagramBytesMin,
  datagramBytesMax: udpPayloadBytesMax,
  /** How often the socket queue is drained and a finished second is closed. */
  tickMs: 20,
  /** A second closes this long after it ends, so datagrams read late in the tick are still in it. */
  closeDelayMs: 30,
  /** A NACK signed further than this from our clock is refused as stale (the rack's
   *  --clock-skew-max default; an edge that far off has its own data refused anyway). */
  nackClockSkewMaxMs: 10_000,
  /** NACK MACs remembered to refuse replays: a rack sends a few NACKs per second per edge. */
  nackReplayEntriesMax: 4096,
  /** Socket buffers for StatsD bursts (DESIGN §2: the 212 KB default drops under load). */
  recvBufferBytes: 8 * 1024 * 1024,
} as const;

export type EdgeLimits = { -readonly [K in keyof typeof edgeLimits]: number };

/** Fails fast when options break a relation the code relies on. */
export function checkLimits(l: EdgeLimits): void {
  const fail = (msg: string) => {
    throw new Error(`edge limits: ${msg}`);
  };
  if (l.datagramBytes < l.datagramBytesMin || l.datagramBytes > l.datagramBytesMax) {
    fail(`--datagram-bytes ${l.datagramBytes} is outside ${l.datagramBytesMin}..${l.datagramBytesMax}`);
  }
  if (!Number.isInteger(l.seriesMax) || l.seriesMax < 1 || l.seriesMax > 1_000_000) fail(`--series-max ${l.seriesMax} is outside 1..1000000`);
  if (l.resendBytesPerSecondMax < l.datagramBytes) fail(`resends a second (${l.resendBytesPerSecondMax} B) cannot hold one datagram (${l.datagramBytes} B)`);
  if (l.resendBytesMax < l.datagramBytes) fail(`resend ring (${l.resendBytesMax} B) cannot hold one datagram (${l.datagramBytes} B)`);
  if (!(l.setValuesPerSeriesMax >= 1 && l.setValuesPerSeriesMax <= l.setValuesPerSecondMax)) fail(`setValuesPerSeriesMax ${l.setValuesPerSeriesMax} must be 1..setValuesPerSecondMax ${l.setValuesPerSecondMax}`);
  if (l.counterIdleSeconds >= l.seriesEvictSeconds) fail('counters must be evicted only after their idle-zero period');
}
