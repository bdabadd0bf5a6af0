// Token buckets per client for the query API (issue 8): each client (token name, or client
// address when auth is off) refills at a steady rate up to a burst; a request takes its cost
// or is refused with the time until it would fit. Buckets live in a bounded map.

import type { MiddlewareHandler } from 'hono';

export interface RateLimitOptions {
  ratePerSecond: number;
  burst: number;
  bucketsMax: number;
}

interface Bucket {
  tokens: number;
  atMs: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  readonly counters = { limited: 0, buckets_evicted: 0 };

  constructor(readonly opts: RateLimitOptions) {
    if (!(opts.ratePerSecond > 0) || !(opts.burst >= 1) || !(opts.bucketsMax >= 1)) throw new Error(`rate limit ${JSON.stringify(opts)}: rate, burst and bucketsMax must be positive`);
  }

  /** 0 when `key` may spend `cost` now (and spends it), else the milliseconds until it may. */
  take(key: string, cost: number, nowMs: number): number {
    let b = this.buckets.get(key);
    if (b === undefined) {
      b = { tokens: this.opts.burst, atMs: nowMs };
      if (this.buckets.size >= this.opts.bucketsMax) this.evictOldest();
    } else {
      // Re-inserted below: the map's order is least recently used first.
      this.buckets.delete(key);
      b.tokens = Math.min(this.opts.burst, b.tokens + ((nowMs - b.atMs) / 1000) * this.opts.ratePerSecond);
      b.atMs = nowMs;
    }
    this.buckets.set(key, b);
    if (b.tokens >= cost) {
      b.tokens -= cost;
      return 0;
    }
    this.counters.limited++;
    return Math.ceil(((cost - b.tokens) / this.opts.ratePerSecond) * 1000);
  }

  get size(): number {
    return this.buckets.size;
  }

  private evictOldest(): void {
    const oldest = this.buckets.keys().next();
    if (oldest.done === true) return;
    this.buckets.delete(oldest.value);
    this.counters.buckets_evicted++;
  }
}

/** Refuses requests over the client's rate with 429 and Retry-After (seconds); cost 0 passes unmetered. */
export function rateLimit(limiter: RateLimiter, costOf: (path: string) => number): MiddlewareHandler {
  return async (c, next) => {
    const cost = costOf(c.req.path);
    if (cost === 0) return next();
    const who = c.get('apmClient') ?? 'unknown';
    const waitMs = limiter.take(who, cost, Date.now());
    if (waitMs === 0) return next();
    const seconds = Math.max(1, Math.ceil(waitMs / 1000));
    return c.json(
      { error: `rate limit: "${who}" made more than ${limiter.opts.burst} query requests at once or over ${limiter.opts.ratePerSecond}/s sustained; retry after ${seconds} s (or ask for a higher --query-rate)` },
      429,
      { 'Retry-After': String(seconds) },
    );
  };
}
