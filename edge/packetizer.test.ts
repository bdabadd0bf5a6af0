import { describe, expect, it } from 'vitest';
import { authHeaderBytes, parseKeyFile, sign } from '../schema/auth.js';
import { KindCode } from '../schema/codec.js';
import { serverSecondBytesMax } from '../schema/limits.js';
import { decodeAll, mergeSecond } from '../test/merge-helper.js';
import { Aggregator } from './aggregator.js';
import { Packetizer } from './packetizer.js';

const t0 = 1_790_000_000;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

function fill(agg: Aggregator, gauges: number, dists: number, perDist: number, spread: number, seed = 1) {
  const r = rng(seed);
  const want = { points: new Map<string, number>(), dists: new Map<string, number[]>() };
  for (let i = 0; i < gauges; i++) {
    const v = Math.round(r() * 1e6) / 100;
    agg.observe(`host.metric.${i}`, KindCode.Gauge, v, t0);
    want.points.set(`host.metric.${i}`, v);
  }
  for (let d = 0; d < dists; d++) {
    const vals: number[] = [];
    for (let k = 0; k < perDist; k++) {
      const v = Math.round(Math.exp(3 + 2 * (r() - 0.5) * spread) * 1000) / 1000;
      agg.observe(`rpc.latency.${d}`, KindCode.Distribution, v, t0);
      vals.push(v);
    }
    want.dists.set(`rpc.latency.${d}`, vals.sort((a, b) => a - b));
  }
  return want;
}

function packSecond(datagramBytes: number, gauges: number, dists: number, perDist: number, named = true, spread = 3) {
  const agg = new Aggregator({ seriesMax: 10_000, observationsPerSecondMax: 200_000, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
  const want = fill(agg, gauges, dists, perDist, spread);
  const pk = new Packetizer({ server: 'web-0001', session: 7, datagramBytes });
  const frames = pk.pack(agg.close(t0 + 1), agg, { second: t0, sentMs: t0 * 1000 + 5, seq: 100 }, () => named);
  return { frames, want, pk };
}

describe('Packetizer', () => {
  for (const size of [1432, 8192]) {
    it(`splits 1,900 gauges + 100 distributions into parts ≤ ${size} B that merge back exactly`, () => {
      const { frames, want } = packSecond(size, 1900, 100, 50);
      for (const f of frames) expect(f.length).toBeLessThanOrEqual(size);
      const msgs = decodeAll(frames);
      expect(msgs.map((m) => m.part)).toEqual(frames.map((_, i) => i));
      expect(new Set(msgs.map((m) => m.parts))).toEqual(new Set([frames.length]));
      expect(msgs.map((m) => m.seq)).toEqual(frames.map((_, i) => 100 + i));
      const got = mergeSecond(msgs);
      expect(got.points.size).toBe(1900);
      for (const [name, v] of want.points) expect(got.points.get(name)).toEqual({ kind: KindCode.Gauge, value: v });
      for (const [name, vals] of want.dists) {
        const d = got.dists.get(name)!;
        expect([d.count, d.min, d.max]).toEqual([vals.length, vals[0], vals[vals.length - 1]]);
        expect(d.sum).toBeCloseTo(vals.reduce((a, b) => a + b, 0), 9);
        const p99 = vals[Math.floor(0.99 * (vals.length - 1))]!;
        expect(Math.abs(d.sketch.quantile(0.99, d.min, d.max) - p99)).toBeLessThanOrEqual(p99 * 0.01);
      }
      // Parts are well filled: the size bound is not wildly pessimistic.
      const full = frames.slice(0, -1);
      const avg = full.reduce((a, f) => a + f.length, 0) / Math.max(1, full.length);
      expect(avg).toBeGreaterThan(size * 0.85);
    });
  }

  it('splits a distribution too wide for one datagram into summaries that merge exactly', () => {
    const { frames, want, pk } = packSecond(1432, 0, 1, 20_000, true, 12); // values over ~10 decades
    expect(pk.splitSummaries).toBeGreaterThan(0);
    const got = mergeSecond(decodeAll(frames));
    const d = got.dists.get('rpc.latency.0')!;
    const vals = want.dists.get('rpc.latency.0')!;
    expect(d.summaries).toBeGreaterThan(1);
    expect([d.count, d.min, d.max]).toEqual([20_000, vals[0], vals[19_999]]);
    for (const q of [0, 0.5, 0.9, 0.99, 1]) {
      const exact = vals[Math.floor(q * 19_999)]!;
      expect(Math.abs(d.sketch.quantile(q, d.min, d.max) - exact)).toBeLessThanOrEqual(exact * 0.01);
    }
  });

  it('sends names only when asked to, and a names-only datagram answers a NACK', () => {
    const unnamed = packSecond(1432, 50, 0, 0, false);
    expect(decodeAll(unnamed.frames).every((m) => m.series.nameEnds.length === 0)).toBe(true);
    const agg = new Aggregator({ seriesMax: 10, observationsPerSecondMax: 10, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
    agg.observe('a.b', KindCode.Gauge, 1, t0);
    agg.observe('c.d', KindCode.Gauge, 1, t0);
    const pk = new Packetizer({ server: 's1', session: 1, datagramBytes: 1024 });
    const [only] = decodeAll(pk.namesOnly(agg, [1, 0], { second: t0, sentMs: 0, seq: 0 }));
    expect(only!.parts).toBe(0);
    expect([...mergeSecond([only!]).names.values()]).toEqual(['c.d', 'a.b']);
  });
});

describe('Packetizer and the wire\'s 4,096 parts a second', () => {
  it('regression: a second that needs more datagrams is sent without names, then cut at 4,096 parts, the rest counted; before, every part said parts > 4096 and the rack refused the whole second', () => {
    const agg = new Aggregator({ seriesMax: 100_000, observationsPerSecondMax: 10, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
    const name = (i: number) => `svc.${i}.`.padEnd(120, 'x');
    const pack = (n: number) => {
      for (let i = 0; i < n; i++) agg.observe(name(i), KindCode.Gauge, i, t0);
      const pk = new Packetizer({ server: 's1', session: 1, datagramBytes: 1432 });
      const frames = pk.pack(agg.close(t0 + 1), agg, { second: t0, sentMs: 0, seq: 0 }, () => true);
      return { pk, msgs: decodeAll(frames), frames };
    };
    // 40,000 named series need ~5,000 datagrams: sent unnamed (~600), every one decodes.
    const unnamed = pack(40_000);
    expect(unnamed.msgs.length).toBe(unnamed.frames.length);
    expect(unnamed.msgs.length).toBeLessThanOrEqual(4096);
    expect(unnamed.msgs.every((m) => m.series.nameEnds.length === 0)).toBe(true);
    expect(unnamed.msgs.reduce((n, m) => n + m.series.pointKinds.length, 0)).toBe(40_000);
    expect([unnamed.pk.namesDeferred, unnamed.pk.seriesOverParts]).toEqual([1, 0]);
  });

  it('beyond what a rack holds of one second (4,096 datagrams, 1 MiB) unnamed, the rest of the second is counted, not sent', () => {
    const agg = new Aggregator({ seriesMax: 400_000, observationsPerSecondMax: 10, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
    for (let i = 0; i < 400_000; i++) agg.observe(`m${i}`, KindCode.Gauge, i, t0);
    const pk = new Packetizer({ server: 's1', session: 1, datagramBytes: 1024 });
    const frames = pk.pack(agg.close(t0 + 1), agg, { second: t0, sentMs: 0, seq: 0 }, () => false);
    const msgs = decodeAll(frames);
    expect(msgs.length).toBeLessThanOrEqual(4096);
    expect(frames.reduce((n, f) => n + f.length, 0)).toBeLessThanOrEqual(serverSecondBytesMax);
    const sent = msgs.reduce((n, m) => n + m.series.pointKinds.length, 0);
    expect(sent + pk.seriesOverParts).toBe(400_000);
    expect(pk.seriesOverParts).toBeGreaterThan(0);
  });

  it('regression: a second whose names take it past what a rack holds of one server\'s second (1 MiB) goes without its names, whole (before: 10,000 series with 80-character names made 1.2 MB, the rack refused the parts past 1 MiB, and refused their resends again)', () => {
    const agg = new Aggregator({ seriesMax: 10_000, observationsPerSecondMax: 10, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
    for (let i = 0; i < 10_000; i++) agg.observe(`app.${i}.`.padEnd(80, 'n'), KindCode.Gauge, i, t0);
    const pk = new Packetizer({ server: 's1', session: 1, datagramBytes: 1432 });
    const frames = pk.pack(agg.close(t0 + 1), agg, { second: t0, sentMs: 0, seq: 0 }, () => true);
    expect(frames.reduce((n, f) => n + f.length, 0)).toBeLessThanOrEqual(serverSecondBytesMax);
    const msgs = decodeAll(frames);
    expect(msgs.reduce((n, m) => n + m.series.pointKinds.length, 0)).toBe(10_000);
    expect([pk.namesDeferred, pk.seriesOverParts]).toEqual([1, 0]);
  });
});

describe('Packetizer size bound', () => {
  it('never builds a datagram over its size, signed or not, whatever the mix of series, names and sizes', async () => {
    const keys = parseKeyFile('1 ' + 'aa'.repeat(32) + ' rack=r1', 'k');
    const fc = (await import('fast-check')).default;
    fc.assert(
      fc.property(
        fc.integer({ min: 1024, max: 9000 }),
        fc.integer({ min: 1, max: 64 }),
        fc.array(fc.tuple(fc.integer({ min: 1, max: 128 }), fc.integer({ min: 0, max: 400 }), fc.double({ min: -1e9, max: 1e9, noNaN: true })), { maxLength: 300 }),
        fc.boolean(),
        (size, serverLen, series, signed) => {
          const agg = new Aggregator({ seriesMax: 1000, observationsPerSecondMax: 200_000, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
          series.forEach(([nameLen, obs, v], i) => {
            const name = `${i}.`.padEnd(nameLen + String(i).length + 1, 'n').slice(0, 128);
            if (obs === 0) agg.observe(name, KindCode.Gauge, v, t0);
            for (let k = 0; k < obs; k++) agg.observe(name, KindCode.Distribution, v * (k + 1) * (k % 2 ? -1 : 1), t0);
          });
          const pk = new Packetizer({ server: 's'.repeat(serverLen), session: 1, datagramBytes: size, authBytes: signed ? authHeaderBytes : 0 });
          const frames = pk.pack(agg.close(t0 + 1), agg, { second: t0, sentMs: 0, seq: 0 }, () => true);
          for (const f of frames) expect((signed ? sign(keys, f, t0 * 1000) : f).length).toBeLessThanOrEqual(size);
          const names = pk.namesOnly(agg, [...Array(Math.min(series.length, 50)).keys()], { second: t0, sentMs: 0, seq: 0 });
          for (const f of names) expect((signed ? sign(keys, f, t0 * 1000) : f).length).toBeLessThanOrEqual(size);
          expect(decodeAll(frames).length).toBe(frames.length);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('Packetizer and sums that overflow', () => {
  it("one server's counter or timer sum overflowing to ±Infinity loses the datagram's other metrics (issue 16.4): that series is not sent, counted", () => {
    const agg = new Aggregator({ seriesMax: 100, observationsPerSecondMax: 1000, counterIdleSeconds: 300, seriesEvictSeconds: 600 });
    const obs = (name: string, kind: KindCode, values: number[], weight = 1, relative = false) => {
      for (const v of values) agg.observe(name, kind, v, t0, weight, relative);
    };
    // Sums past ±1.8e308: not sent this second.
    obs('big', KindCode.Counter, [1e308, 1e308]);
    obs('small', KindCode.Counter, [-1e308, -1e308]);
    obs('scaled', KindCode.Counter, [1e300], 1e10); // @1e-10
    obs('t', KindCode.Distribution, [1e308, 1e308]);
    obs('tn', KindCode.Distribution, [-1e308, -1e308, 5]);
    // A relative gauge update that would overflow is refused; the gauge keeps its value.
    obs('rel', KindCode.Gauge, [1e308, 1e308], 1, true);
    // Everything else of the second, including large values whose sums stay finite.
    obs('g', KindCode.Gauge, [5]);
    obs('c', KindCode.Counter, [1, 2]);
    obs('d', KindCode.Distribution, [3, 1, 2]);
    obs('mixed', KindCode.Distribution, [1e308, -1e308]);
    obs('huge', KindCode.Counter, [1e308, 7e307]);
    const pk = new Packetizer({ server: 'web-0001', session: 7, datagramBytes: 1432 });
    const frames = pk.pack(agg.close(t0 + 1), agg, { second: t0, sentMs: t0 * 1000, seq: 0 }, () => true);
    // The rack's decoder refuses any datagram with a non-finite value or sum: none here.
    const got = mergeSecond(decodeAll(frames));
    expect(Object.fromEntries([...got.points].map(([n, p]) => [n, p.value]))).toEqual({ rel: 1e308, g: 5, c: 3, huge: 1.7e308 });
    expect([...got.dists.keys()].sort()).toEqual(['d', 'mixed']);
    expect([got.dists.get('d')!.count, got.dists.get('d')!.sum, got.dists.get('mixed')!.sum]).toEqual([3, 6, 0]);
    expect(agg.drops.overflow).toBe(6);
    // The next second starts clean: the counters emit their idle 0, the gauge is still settable.
    agg.observe('rel', KindCode.Gauge, -1, t0 + 1, 1, true);
    const next = agg.close(t0 + 2);
    const points = new Map<string, number>();
    for (let i = 0; i < next.pointLen; i++) points.set(agg.names[next.pointSlots[i]!]!, next.pointValues[i]!);
    expect(Object.fromEntries(points)).toEqual({ rel: 1e308 - 1, big: 0, small: 0, scaled: 0, c: 0, huge: 0 });
  });
});
