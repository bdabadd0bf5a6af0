import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KindCode } from '../schema/codec.js';
import { SetKind, type SeriesKind } from './aggregator.js';
import { StatsdParser, type StatsdSink } from './statsd.js';

type Seen = [name: string, kind: SeriesKind, value: number | string, weight: number, relative: boolean];

const stamp = 1_790_000_000;

function parse(text: string): { seen: Seen[]; parser: StatsdParser } {
  const seen: Seen[] = [];
  const names: string[] = [];
  const sink: StatsdSink = {
    slotForBytes: (bytes, start, end) => names.push(Buffer.from(bytes.subarray(start, end)).toString('latin1')) - 1,
    observeSlot: (slot, kind, value, _second, weight, relative) => {
      seen.push([names[slot]!, kind, value, weight, relative]);
      return null;
    },
    observeSetBytes: (slot, bytes, start, end) => {
      seen.push([names[slot]!, SetKind, Buffer.from(bytes.subarray(start, end)).toString('latin1'), 1, false]);
      return null;
    },
  };
  const parser = new StatsdParser(4096);
  parser.parse(Buffer.from(text, 'latin1'), { second: 7, stamp }, sink);
  return { seen, parser };
}

const sumOf = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);

describe('StatsD parser', () => {
  it('regression: a signed gauge is a delta on a plain StatsD line; on a DogStatsD line (tags, container, timestamp) a negative one is the value, + still a delta; before, a DogStatsD client\'s negative gauge drifted without bound', () => {
    const { seen } = parse(['q:-2|g', 'q:+4|g|@0.5', 't:-3.5|g|#room:cold', 't:+1|g|c:abc', `t:-1|g|T${stamp}`, 't:-2|g|#', 't:+2|g|#a'].join('\n'));
    expect(seen.map((x) => [x[2], x[4]])).toEqual([
      [-2, true],
      [4, true],
      [-3.5, false],
      [1, true],
      [-1, false],
      [-2, false],
      [2, true],
    ]);
  });

  it('regression: a line marked DogStatsD only by external data (e:) or cardinality (card:) takes a negative gauge as the value (before: a delta, drifting without bound)', () => {
    const { seen } = parse(['t:-5|g|e:it-abc', 't:-6|g|card:low', 't:-7|g|@0.5'].join('\n'));
    expect(seen.map((x) => [x[2], x[4]])).toEqual([
      [-5, false],
      [-6, false],
      [-7, true],
    ]);
  });

  it('reads every type, rates, tags, DogStatsD fields and several lines per datagram', () => {
    const { seen, parser } = parse(
      [
        'cpu:12.5|g',
        'reqs:3|c|@0.5',
        'lat:120|ms|#env:prod,az:1',
        'size:7|h',
        'dist:1|d|#a|c:abc123|e:it-false,cn-app|card:low', // hot-shots in DogStatsD mode
        'q:+4|g',
        'q:-2|g\r',
        'timer:5|ms|@0.25|#x:y',
        'users:u7|s', // pystatsd set
        'users:u7|s|@0.5|#a', // rates on sets are ignored
        `now:1|c|T${stamp}`, // DogStatsD 1.3 timestamp within 1 s: taken as now
        `now:2|c|T${stamp - 1}`,
        `now:3|c|#t|T${stamp + 1}`,
        '_errors:1|c', // a metric, not an event
        'lvl:0.5|g|@0.5', // rates on gauges are ignored (the weight is not used for gauges)
      ].join('\n'),
    );
    expect(seen).toEqual([
      ['cpu', KindCode.Gauge, 12.5, 1, false],
      ['reqs', KindCode.Counter, 3, 2, false],
      ['lat', KindCode.Distribution, 120, 1, false],
      ['size', KindCode.Distribution, 7, 1, false],
      ['dist', KindCode.Distribution, 1, 1, false],
      ['q', KindCode.Gauge, 4, 1, true],
      ['q', KindCode.Gauge, -2, 1, true],
      ['timer', KindCode.Distribution, 5, 4, false],
      ['users', SetKind, 'u7', 1, false],
      ['users', SetKind, 'u7', 1, false],
      ['now', KindCode.Counter, 1, 1, false],
      ['now', KindCode.Counter, 2, 1, false],
      ['now', KindCode.Counter, 3, 1, false],
      ['_errors', KindCode.Counter, 1, 1, false],
      ['lvl', KindCode.Gauge, 0.5, 2, false],
    ]);
    expect(parser.lines).toBe(15);
    expect(sumOf(parser.malformed) + sumOf(parser.refused)).toBe(0);
  });

  it('DogStatsD 1.1 packed values: each value as its own line, rate and tags shared; sets are not packed', () => {
    const { seen, parser } = parse(['d:1:2:32|d|@0.5|#a:b', 'c:1:2.5|c|@0.25', 'g:1:2:3|g', 'r:+1:-3|g', 'h:240:234|h', 't:1:2|ms', 's:a:b|s'].join('\n'));
    expect(seen).toEqual([
      ['d', KindCode.Distribution, 1, 2, false],
      ['d', KindCode.Distribution, 2, 2, false],
      ['d', KindCode.Distribution, 32, 2, false],
      ['c', KindCode.Counter, 1, 4, false],
      ['c', KindCode.Counter, 2.5, 4, false],
      ['g', KindCode.Gauge, 1, 1, false],
      ['g', KindCode.Gauge, 2, 1, false],
      ['g', KindCode.Gauge, 3, 1, false],
      ['r', KindCode.Gauge, 1, 1, true],
      ['r', KindCode.Gauge, -3, 1, true],
      ['h', KindCode.Distribution, 240, 1, false],
      ['h', KindCode.Distribution, 234, 1, false],
      ['t', KindCode.Distribution, 1, 1, false],
      ['t', KindCode.Distribution, 2, 1, false],
      ['s', SetKind, 'a:b', 1, false], // the Datadog agent reads a set's whole value as one member
    ]);
    expect(parser.lines).toBe(7);
  });

  it('parses plain decimals exactly like Number()', () => {
    const vals = ['0', '-0.5', '12.34', '0.1', '0.30000000000000004', '123456789012345', '1e3', '-2.5E-3', '999999999999999.9', '+7'];
    const { seen } = parse(vals.map((v, i) => `n${i}:${v}|g`).join('\n'));
    expect(seen.map((s) => s[2])).toEqual(vals.map((v) => Number(v)));
  });

  it('counts malformed and refused lines by reason and keeps the good ones', () => {
    const { seen, parser } = parse(
      [
        'ok:1|c', // good
        'nocolon|c', // bad_syntax
        'name:|g', // bad_value: empty
        'name:0x10|g', // bad_value: hex
        'name:1e999|g', // bad_value: infinite
        'name:1:x:3|d', // bad_value: one packed value spoils the line
        'users:|s', // bad_value: empty set member
        'name:1|q', // bad_type
        'name:1|S', // bad_type
        'name:1|c|@0', // bad_rate
        'name:1|c|@1.5', // bad_rate
        'name:1|c|Tsoon', // bad_timestamp
        `name:1|c|T${stamp}.5`, // bad_timestamp
        `${'x'.repeat(5000)}:1|c`, // too_long
        '_e{5,4}:title|text|#a', // event
        '_sc|redis|2|#env:dev|m:down', // service_check
        `late:1|c|T${stamp - 60}`, // timestamp: no back-fill
        `ahead:1|c|T${stamp + 2}`, // timestamp
        'ok2:2|g', // good
      ].join('\n'),
    );
    expect(seen.map((s) => s[0])).toEqual(['ok', 'ok2']);
    expect(parser.malformed).toEqual({ bad_syntax: 1, bad_value: 5, bad_type: 2, bad_rate: 2, bad_timestamp: 2, too_long: 1 });
    expect(parser.refused).toEqual({ event: 1, service_check: 1, timestamp: 2 });
  });

  it('accounts for every line exactly once: stored or counted under one reason', () => {
    const good = ['a:1|c', 'b:2|g', 'c:-3|g', 'd:1:2|d|@0.5', 'e:x|s', 'f:1|ms|#t:1|c:id', `g:1|h|T${stamp}`];
    const bad = ['a', 'a:1', 'a:1|', 'a:1|x', 'a:1|c|@2', 'a:y|g', '_e{1,1}:a|b', '_sc|a|0', `a:1|c|T${stamp - 9}`, 'a:1|c|T1.5'];
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.constantFrom(...good), fc.constantFrom(...bad)), { maxLength: 40 }), (lines) => {
        const { seen, parser } = parse(lines.join('\n'));
        const stored = lines.filter((l) => good.includes(l)).length;
        // A packed line yields several values: count lines, not values.
        expect(seen.length).toBe(lines.reduce((n, l) => n + (l === 'd:1:2|d|@0.5' ? 2 : good.includes(l) ? 1 : 0), 0));
        expect(parser.lines).toBe(lines.length);
        expect(stored + sumOf(parser.malformed) + sumOf(parser.refused)).toBe(lines.length);
      }),
    );
  });

});
