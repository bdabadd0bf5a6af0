// The core's shard count S (DESIGN §9, issue 12): the rack cuts every second into sections by
// `shard = hash lo32 mod S`, so it asks the core for S at start (GET /api/v1/placement, retried
// with backoff while the core is unreachable, never on the UDP path) and learns it again from
// a 409 shards_mismatch. The same answer says whether the core reads packed points
// (schema/pointpack.ts): a rack packs only then. Parsing here; the request goes through the
// forwarder's connections.

import { shardsMax } from '../schema/limits.js';
import { isValidShardCount } from '../schema/section.js';

/** S from a placement answer, or why the answer is unusable. */
export function parsePlacement(status: number, text: string): number | string {
  if (status !== 200) return `HTTP ${status}: ${text.slice(0, 200)}`;
  let shards: unknown;
  try {
    shards = (JSON.parse(text) as { shards?: unknown }).shards;
  } catch {
    return `not JSON: ${text.slice(0, 200)}`;
  }
  return typeof shards === 'number' && isValidShardCount(shards) ? shards : `shards ${JSON.stringify(shards)} is not a power of two in 1..${shardsMax}`;
}

/**
 * Whether a placement answer says the core reads packed points (`"pointPack": true`). A core
 * from before them says nothing, and refuses them as malformed: the rack then sends them unpacked.
 */
export function parsePointPack(text: string): boolean {
  try {
    return (JSON.parse(text) as { pointPack?: unknown }).pointPack === true;
  } catch {
    return false;
  }
}

/** The core's S from a 409 body `{"reason":"shards_mismatch","shards":S}`; null for any other 409. */
export function parseShardsMismatch(text: string): number | null {
  try {
    const body = JSON.parse(text) as { reason?: unknown; shards?: unknown };
    return body.reason === 'shards_mismatch' && typeof body.shards === 'number' && isValidShardCount(body.shards) ? body.shards : null;
  } catch {
    return null;
  }
}

export interface PlacementFetchOptions {
  /** One GET /api/v1/placement: status and body (throws on a network error). */
  get: () => Promise<{ status: number; text: string }>;
  /** Called once with the S the core gave. */
  learn: (shards: number, pointPack: boolean) => void;
  backoffMinMs: number;
  backoffMaxMs: number;
  log: (line: string) => void;
}

/** Asks until the core answers (exponential backoff with jitter); stop() ends the retries. */
export class PlacementFetch {
  /** Requests that failed (unreachable core, refused token, unusable answer). */
  failures = 0;
  /** True once the core answered in this process. */
  answered = false;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private wake: (() => void) | null = null;

  constructor(private readonly opts: PlacementFetchOptions) {}

  /** Resolves once S is learned or stop() was called. */
  async run(): Promise<void> {
    let backoffMs = 0;
    while (!this.stopped) {
      let why: string;
      try {
        const r = await this.opts.get();
        const shards = parsePlacement(r.status, r.text);
        if (typeof shards === 'number') {
          if (this.stopped) return;
          this.answered = true;
          if (this.failures > 0) this.opts.log(`rack: the core answered its placement after ${this.failures} failed requests: ${shards} shards`);
          this.opts.learn(shards, parsePointPack(r.text));
          return;
        }
        why = shards;
      } catch (err) {
        why = (err as Error).message;
      }
      if (this.stopped) return;
      if (this.failures++ === 0) this.opts.log(`rack: cannot get the core's placement (${why}); cutting with the last known shard count and retrying with backoff`);
      backoffMs = Math.min(this.opts.backoffMaxMs, Math.max(this.opts.backoffMinMs, backoffMs * 2));
      await this.sleep(backoffMs * (0.75 + Math.random() * 0.5));
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.timer = setTimeout(resolve, ms);
      this.timer.unref();
    });
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.wake?.();
  }
}
