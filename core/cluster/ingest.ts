// POST /api/v1/ingest and imports on a cluster node (issue 13): a rack second is not stored
// here but published to the shards' streams, exactly as `apm rack --nats` publishes it, and
// acknowledged once every stream has it; each shard's owners then apply it in stream order.
// (Storing it directly would put it on this node alone, whatever the placement says.)

import type { JetStreamClient } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { Body, decodeFrame, Encoder } from '../../schema/codec.js';
import { batchBytesMax } from '../../schema/limits.js';
import { encodingDeflate, encodingHeader, logMessages } from '../../schema/log.js';
import type { IngestResult } from '../pool.js';

export class LogIngest {
  private readonly enc = new Encoder();
  readonly counters = { published: 0, publish_failures: 0, messages: 0 };

  constructor(
    private readonly js: JetStreamClient,
    private readonly shards: number,
    private readonly publishTimeoutMs = 10_000,
  ) {}

  async ingest(body: Uint8Array, mayRack: (rack: string) => boolean = () => true): Promise<IngestResult> {
    const r = decodeFrame(body, batchBytesMax, { expect: Body.RackSecond });
    if (!r.ok || r.msg.type !== 'rackSecond') {
      const reason = r.ok ? 'not_a_second' : r.reason;
      return { status: 400, reason, error: r.ok ? `expected a RackSecond (wire v2), got a ${r.msg.type}` : `request refused (${r.reason}): ${r.detail}` };
    }
    const msg = r.msg;
    if (!mayRack(msg.rack)) return { status: 403, reason: 'rack_not_allowed', rack: msg.rack, error: `not allowed to send for rack ${msg.rack}` };
    if (msg.shards !== this.shards) {
      return { status: 409, reason: 'shards_mismatch', shards: this.shards, error: `the rack cut its sections for ${msg.shards} shards; the cluster has ${this.shards}: ask GET /api/v1/placement and cut again` };
    }
    try {
      const messages = logMessages(body, this.enc);
      // One headers object per message: publish() writes the Msg-Id into the one it is given.
      await Promise.all(
        messages.map((m) => {
          const h = headers();
          h.set(encodingHeader, encodingDeflate);
          return this.js.publish(m.subject, m.data, { msgID: m.msgId, headers: h, timeout: this.publishTimeoutMs });
        }),
      );
      this.counters.published++;
      this.counters.messages += messages.length;
    } catch (err) {
      // Some shards may have it already: the Msg-Id makes the sender's retry store each once.
      this.counters.publish_failures++;
      return { status: 503, reason: 'log_unavailable', error: `the cluster's log did not acknowledge every shard (${(err as Error).message}); retry` };
    }
    return { status: 204, points: 0, duplicates: 0, msg, logged: true };
  }
}
