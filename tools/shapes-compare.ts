// The comparison mix of issue 14 (value codec and storage benches; the same mix VictoriaMetrics
// is measured on): servers × metrics series, four shapes in equal share by metric index, each
// series deterministic from its own seed (server, metric, mix seed), so a series generated alone
// (fillSeries) equals the same series stepped with all others (MixColumns). Columnar: per-series
// state lives in typed arrays, no object per point.
//   cpu      bounded random walk 0..100, 2 decimals (steps of (u+u+u−1.5)·2, as tools/shapes.ts)
//   counter  integer per-second rates: a per-series rate λ log-uniform in 1..1,000/s, Poisson
//            noise (exact below λ = 30, normal above); variant `cumulative`: the running total
//            from a per-series start in 0..10^8 (what Prometheus / VictoriaMetrics users import)
//   queue    integer depth: 0 with a per-series probability 0.5..0.95, else 1 + geometric(½);
//            bursts of 50..500 (one per ~600 s) decaying 30 %/s
//   latency  ms with 2 decimals: lognormal, per-series median log-uniform 1..200 ms and
//            σ 0.1..0.4, with rare (1/300 s) 5..20× spikes

export const enum MixShape {
  Cpu = 0,
  Counter = 1,
  Queue = 2,
  Latency = 3,
}

export const mixShapeNames = ['cpu', 'counter', 'queue', 'latency'] as const;

/** Shape of metric m: equal shares, by m mod 4. */
export const mixShapeOf = (metric: number): MixShape => (metric % 4) as MixShape;

export interface MixOptions {
  /** Counters as apm stores them (per-second rates) or as cumulative totals. */
  counters: 'rate' | 'cumulative';
  /** Mix seed; a different seed gives different series of the same shapes. */
  seed?: number;
}

/** Per-series state columns; series i has rng[i], a[i], b[i], c[i], value[i]. */
class MixState {
  readonly rng: Uint32Array;
  /** cpu: level; counter: λ; queue: P(0); latency: ln median. */
  readonly a: Float64Array;
  /** counter: running total; latency: σ. */
  readonly b: Float64Array;
  /** queue: current burst height. */
  readonly c: Float64Array;
  readonly shape: Uint8Array;
  constructor(n: number) {
    this.rng = new Uint32Array(n);
    this.a = new Float64Array(n);
    this.b = new Float64Array(n);
    this.c = new Float64Array(n);
    this.shape = new Uint8Array(n);
  }

  /** mulberry32 on series i's state: uniform in [0, 1). */
  rand(i: number): number {
    const s = (this.rng[i] = (this.rng[i]! + 0x6d2b79f5) >>> 0);
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Standard normal (Box–Muller, one of the pair). */
  normal(i: number): number {
    const u = 1 - this.rand(i);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.rand(i));
  }

  init(i: number, server: number, metric: number, seed: number): void {
    let h = Math.imul(server + 1, 0x9e3779b1) ^ Math.imul(metric + 1, 0x85ebca77) ^ Math.imul(seed + 1, 0xc2b2ae3d);
    h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
    this.rng[i] = (h ^ (h >>> 15)) >>> 0;
    const shape = mixShapeOf(metric);
    this.shape[i] = shape;
    this.c[i] = 0;
    switch (shape) {
      case MixShape.Cpu:
        this.a[i] = Math.round((5 + this.rand(i) * 60) * 100) / 100;
        break;
      case MixShape.Counter:
        this.a[i] = Math.exp(this.rand(i) * Math.log(1000));
        this.b[i] = Math.floor(this.rand(i) * 1e8);
        break;
      case MixShape.Queue:
        this.a[i] = 0.5 + this.rand(i) * 0.45;
        break;
      default:
        this.a[i] = this.rand(i) * Math.log(200);
        this.b[i] = 0.1 + this.rand(i) * 0.3;
    }
  }

  /** Series i's next value (one second later). */
  next(i: number, cumulative: boolean): number {
    switch (this.shape[i]) {
      case MixShape.Cpu: {
        const x = this.a[i]! + (this.rand(i) + this.rand(i) + this.rand(i) - 1.5) * 2;
        return (this.a[i] = Math.round(Math.min(100, Math.max(0, x)) * 100) / 100);
      }
      case MixShape.Counter: {
        const rate = this.poisson(i, this.a[i]!);
        return cumulative ? (this.b[i] = this.b[i]! + rate) : rate;
      }
      case MixShape.Queue: {
        if (this.c[i]! < 1 && this.rand(i) < 1 / 600) this.c[i] = 50 + this.rand(i) * 450;
        if (this.c[i]! >= 1) {
          const v = Math.round(this.c[i]!);
          this.c[i] = this.c[i]! * 0.7;
          return v;
        }
        return this.rand(i) < this.a[i]! ? 0 : 1 + Math.floor(Math.log(1 - this.rand(i)) / Math.log(0.5));
      }
      default: {
        let v = Math.exp(this.a[i]! + this.b[i]! * this.normal(i));
        if (this.rand(i) < 1 / 300) v *= 5 + this.rand(i) * 15;
        return Math.round(v * 100) / 100;
      }
    }
  }

  private poisson(i: number, lambda: number): number {
    if (lambda >= 30) return Math.max(0, Math.round(lambda + Math.sqrt(lambda) * this.normal(i)));
    const limit = Math.exp(-lambda);
    let k = 0;
    let p = this.rand(i);
    while (p > limit) {
      k++;
      p *= this.rand(i);
    }
    return k;
  }
}

const one = new MixState(1);

/** Fills out[at .. at + seconds) with series (server, metric)'s values for seconds 0 .. seconds − 1. */
export function fillSeries(server: number, metric: number, seconds: number, out: Float64Array, at: number, opts: MixOptions): void {
  one.init(0, server, metric, opts.seed ?? 0);
  const cumulative = opts.counters === 'cumulative';
  for (let s = 0; s < seconds; s++) out[at + s] = one.next(0, cumulative);
}

/** All servers × metrics series stepped one second at a time; values[server · metrics + metric]. */
export class MixColumns {
  readonly values: Float64Array;
  private readonly state: MixState;
  private readonly cumulative: boolean;

  constructor(
    readonly servers: number,
    readonly metrics: number,
    opts: MixOptions,
  ) {
    const n = servers * metrics;
    this.values = new Float64Array(n);
    this.state = new MixState(n);
    this.cumulative = opts.counters === 'cumulative';
    for (let s = 0; s < servers; s++) for (let m = 0; m < metrics; m++) this.state.init(s * metrics + m, s, m, opts.seed ?? 0);
  }

  /** Advances every series by one second (the first call gives second 0). */
  step(): void {
    const n = this.values.length;
    for (let i = 0; i < n; i++) this.values[i] = this.state.next(i, this.cumulative);
  }
}
