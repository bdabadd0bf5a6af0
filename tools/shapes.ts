// Realistic metric shapes for the simulator and the benchmarks (issue 7): deterministic per
// (server, metric) seed, stepped one second at a time over columns — no object per point.
//   cpu       bounded random walk 0..100 with 2 decimals
//   counter   requests per second around a per-series rate (integers)
//   constant  a value that changes about once an hour
//   queue     mostly 0, bursts up to a few hundred (un-ACKed messages)
//   daily     a daily cycle with noise (shopping carts)

export const enum Shape {
  Cpu = 0,
  Counter = 1,
  Constant = 2,
  Queue = 3,
  Daily = 4,
}

/** Shape of metric i: 40% cpu-like, 25% counters, 20% constant, 10% queues, 5% daily. */
export function shapeOf(i: number): Shape {
  const k = i % 20;
  if (k < 8) return Shape.Cpu;
  if (k < 13) return Shape.Counter;
  if (k < 17) return Shape.Constant;
  if (k < 19) return Shape.Queue;
  return Shape.Daily;
}

/** Steps `series` series one second at a time; values[i] is series i's value for the current second. */
export class ShapeColumns {
  readonly values: Float64Array;
  private readonly shape: Uint8Array;
  private readonly param: Float64Array;
  private readonly burst: Int32Array;
  private s: number;

  constructor(
    readonly series: number,
    seed: number,
    /** Metric index of series i is i % metricsPerServer. */
    readonly metricsPerServer: number,
  ) {
    this.values = new Float64Array(series);
    this.shape = new Uint8Array(series);
    this.param = new Float64Array(series);
    this.burst = new Int32Array(series);
    this.s = seed >>> 0 || 1;
    for (let i = 0; i < series; i++) {
      const shape = shapeOf(i % metricsPerServer);
      this.shape[i] = shape;
      this.param[i] = shape === Shape.Counter ? 5 + Math.floor(this.rand() * 500) : shape === Shape.Constant ? Math.floor(this.rand() * 64) * 1024 : 0;
      this.values[i] = shape === Shape.Cpu ? Math.round(this.rand() * 6000) / 100 : this.param[i]!;
    }
  }

  private rand(): number {
    this.s = (Math.imul(this.s, 1664525) + 1013904223) >>> 0;
    return this.s / 4294967296;
  }

  /** Advances to Unix second t. */
  step(t: number): void {
    const v = this.values;
    for (let i = 0; i < this.series; i++) {
      switch (this.shape[i]) {
        case Shape.Cpu: {
          const next = v[i]! + (this.rand() + this.rand() + this.rand() - 1.5) * 2;
          v[i] = Math.round(Math.min(100, Math.max(0, next)) * 100) / 100;
          break;
        }
        case Shape.Counter:
          v[i] = Math.max(0, Math.round(this.param[i]! * (0.9 + 0.2 * this.rand())));
          break;
        case Shape.Constant:
          if (this.rand() < 1 / 3600) v[i] = Math.floor(this.rand() * 64) * 1024;
          break;
        case Shape.Queue:
          if (this.burst[i]! > 0) {
            this.burst[i]!--;
            v[i] = Math.round(this.rand() * 400);
          } else {
            v[i] = 0;
            if (this.rand() < 0.01) this.burst[i] = 5 + Math.floor(this.rand() * 20);
          }
          break;
        default:
          v[i] = Math.round(1000 + 600 * Math.sin((2 * Math.PI * t) / 86_400) + (this.rand() - 0.5) * 40);
      }
    }
  }
}
