import { describe, expect, it } from 'vitest';
import { KindCode } from '../schema/codec.js';
import { StatsdParser, type StatsdSink } from './statsd.js';

type Seen = [name: string, kind: KindCode, value: number, weight: number, relative: boolean];

function parse(text: string): { seen: Seen[]; parser: StatsdParser } {
  const seen: Seen[] = [];
  const names: string[] = [];
  const sink: StatsdSink = {
    slotForBytes: (bytes, start, end) => names.push(Buffer.from(bytes.subarray(start, end)).toString('latin1')) - 1,
    observeSlot: (slot, kind, value, _second, weight, relative) => {
      seen.push([names[slot]!, kind, value, weight, relative]);
      return null;
    },
  };
  const parser = new StatsdParser(4096);
  parser.parse(Buffer.from(text, 'latin1'), 1_790_000_000, sink);
  return { seen, parser };
}

describe('StatsD parser', () => {
  it('reads every type, rates, tags and several lines per datagram', () => {
    const { seen, parser } = parse(
      'cpu:12.5|g\nreqs:3|c|@0.5\nlat:120|ms|#env:prod,az:1\nsize:7|h\ndist:1:2:3|d|#a\nq:+4|g\nq:-2|g\r\ntimer:5|ms|@0.25|#x:y\n',
    );
    expect(seen).toEqual([
      ['cpu', KindCode.Gauge, 12.5, 1, false],
      ['reqs', KindCode.Counter, 3, 2, false],
      ['lat', KindCode.Distribution, 120, 1, false],
      ['size', KindCode.Distribution, 7, 1, false],
      ['dist', KindCode.Distribution, 1, 1, false],
      ['dist', KindCode.Distribution, 2, 1, false],
      ['dist', KindCode.Distribution, 3, 1, false],
      ['q', KindCode.Gauge, 4, 1, true],
      ['q', KindCode.Gauge, -2, 1, true],
      ['timer', KindCode.Distribution, 5, 4, false],
    ]);
    expect(parser.lines).toBe(8);
    expect(Object.values(parser.malformed).every((n) => n === 0)).toBe(true);
  });

  it('parses plain decimals exactly like Number()', () => {
    const vals = ['0', '-0.5', '12.34', '0.1', '0.30000000000000004', '123456789012345', '1e3', '-2.5E-3', '999999999999999.9', '+7'];
    const { seen } = parse(vals.map((v, i) => `n${i}:${v}|g`).join('\n'));
    expect(seen.map((s) => s[2])).toEqual(vals.map((v) => Number(v)));
  });

  it('counts malformed lines by reason and keeps the good ones', () => {
    const { seen, parser } = parse(
      [
        'ok:1|c', // good
        'nocolon|c', // bad_syntax
        'name:|g', // bad_value: empty
        'name:0x10|g', // bad_value: hex
        'name:1e999|g', // bad_value: infinite
        'name:1|q', // bad_type
        'name:1|c|@0', // bad_rate
        'name:1|c|@1.5', // bad_rate
        'users:alice|s', // unsupported_type: sets
        '_e{5,4}:title|text', // unsupported_type: events
        `${'x'.repeat(5000)}:1|c`, // too_long
        'ok2:2|g', // good
      ].join('\n'),
    );
    expect(seen.map((s) => s[0])).toEqual(['ok', 'ok2']);
    expect(parser.malformed).toEqual({ bad_syntax: 1, bad_value: 3, bad_type: 1, bad_rate: 2, too_long: 1, unsupported_type: 2 });
  });
});
