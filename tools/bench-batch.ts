// Rack seconds as the core receives them (wire v2, issue 12), for the core and query benches:
// one rack's servers × metrics of realistic shapes (tools/shapes.ts), merged by the rack's
// RackMerger and cut by a SectionCutter for the core's S — the code path of `apm rack`.

import { KindCode, emptyColumns, type EdgeSecondMessage, type SeriesColumns } from '../schema/codec.js';
import { hashName } from '../schema/names.js';
import { SectionCutter, type CutInput } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { RackMerger } from '../rack/merge.js';
import type { RequestHeader, SectionIn } from '../core/store.js';
import { ShapeColumns } from './shapes.js';

export interface BatchMakerOptions {
  rack: string;
  servers: number;
  /** Metrics per server: gauges `bench.metric_<i>` and `distShare` of them distributions `bench.latency_<i>`. */
  metrics: number;
  distShare: number;
  seed: number;
  /** The core's S (GET /api/v1/placement). */
  shards: number;
  /** The rack's session (de-duplication is per rack, session and seq); seq counts from 1. */
  session?: number;
}

/** One rack's seconds, in order: each call takes the next seq. */
export class BatchMaker {
  private readonly merger = new RackMerger(100_000);
  private readonly cutter: SectionCutter;
  private readonly hashes: Uint32Array;
  private readonly kinds: Uint8Array;
  private readonly shapes: ShapeColumns;
  private readonly distBlock: SeriesColumns | null;
  private readonly servers: string[];
  private seq = 0;

  constructor(readonly o: BatchMakerOptions) {
    const gauges = o.metrics - Math.round(o.metrics * o.distShare);
    this.hashes = new Uint32Array(2 * gauges);
    for (let i = 0; i < gauges; i++) hashName(`bench.metric_${i}`, this.hashes, 2 * i);
    this.kinds = new Uint8Array(gauges).fill(KindCode.Gauge);
    this.shapes = new ShapeColumns(o.servers * gauges, o.seed, gauges);
    this.distBlock = gauges === o.metrics ? null : distColumns(o.metrics - gauges);
    this.servers = Array.from({ length: o.servers }, (_, s) => `${o.rack}-${s}`);
    this.cutter = new SectionCutter(Math.max(1024, 2 * o.metrics));
  }

  /** Gauge points plus distribution summaries per second (rollups not counted). */
  get pointsPerSecond(): number {
    return this.o.servers * this.o.metrics;
  }

  /** The HTTP body (a RackSecond) of `second`. */
  body(second: number): Uint8Array {
    return this.cutter.body(this.input(second));
  }

  /** `second` as a worker receives it: the request header and one section per shard, each in its own buffer (8-byte aligned). */
  sections(second: number): { header: RequestHeader; sections: SectionIn[] } {
    const input = this.input(second);
    const frames = this.cutter.cut(input);
    return { header: { rack: input.rack, session: input.session, seq: input.seq, second, late: false }, sections: frames.map((f) => ({ shard: f.shard, bytes: f.frame })) };
  }

  private input(second: number): CutInput {
    this.shapes.step(second);
    const g = this.kinds.length;
    const parts = this.distBlock === null ? 1 : 2;
    const merged = this.merger.merge(
      this.servers.map((server, s) => {
        const base = { type: 'edgeSecond' as const, server, session: 1, seq: 0, second, parts, sentMs: 0 };
        const list: EdgeSecondMessage[] = [{ ...base, part: 0, series: { ...emptyColumns(), pointHashes: this.hashes, pointKinds: this.kinds, pointValues: this.shapes.values.subarray(s * g, (s + 1) * g) } }];
        if (this.distBlock !== null) list.push({ ...base, part: 1, series: this.distBlock });
        return { server, parts: list };
      }),
    );
    return { rack: this.o.rack, session: this.o.session ?? 1, seq: ++this.seq, second, late: false, shards: this.o.shards, servers: merged.servers, rollup: merged.rollup };
  }
}

/** n distributions of 20 latency-like values each (the same every second). */
function distColumns(n: number): SeriesColumns {
  return buildColumns([], Array.from({ length: n }, (_, i) => ({ name: `bench.latency_${i}`, values: Array.from({ length: 20 }, (_, k) => Math.exp(1 + ((k * 7 + i) % 30) / 10)) })));
}

/** The hash pair of a metric name. */
export function metricHash(name: string): { lo: number; hi: number } {
  const h = new Uint32Array(2);
  hashName(name, h, 0);
  return { lo: h[0]!, hi: h[1]! };
}

/** Start of the block holding `second` (blocks of `blockSeconds`, aligned to the epoch). */
export function blockStart(second: number, blockSeconds = 60): number {
  return second - (second % blockSeconds);
}
