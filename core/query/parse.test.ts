import { describe, expect, it } from 'vitest';
import { parseQuery, QueryError } from './parse.js';

describe('query parser', () => {
  const ok = (text: string, want: object) => expect(parseQuery(text)).toMatchObject(want);
  it('accepts the language in its variants', () => {
    // the mission's example
    ok('FROM web-*  SELECT rpc.latency  WINDOW 5s  COMPUTE min, max, avg, percentile(99)', {
      selectors: [{ type: 'glob', pattern: 'web-*' }],
      metric: 'rpc.latency',
      windowSeconds: 5,
      text: 'FROM web-* SELECT rpc.latency WINDOW 5s COMPUTE min, max, avg, percentile(99)',
    });
    // lower-case keywords, newlines, shorthands, several selector forms
    ok('from db-0?,rack:r1 ,host-7, *\nselect q:depth\nwindow 1m\ncompute p99.9,P50 , count,sum', {
      selectors: [{ type: 'glob', pattern: 'db-0?' }, { type: 'rack', pattern: 'r1' }, { type: 'server', id: 'host-7' }, { type: 'all' }],
      metric: 'q:depth',
      windowSeconds: 60,
      functions: [{ type: 'percentile', p: 99.9 }, { type: 'percentile', p: 50 }, { type: 'count' }, { type: 'sum' }],
    });
    ok('FROM * SELECT m WINDOW 1d COMPUTE percentile( 0 ), percentile(100)', { windowSeconds: 86400 });
    expect(parseQuery('FROM * SELECT m WINDOW 2h COMPUTE p99').text).toBe('FROM * SELECT m WINDOW 2h COMPUTE percentile(99)');
  });

  it('names each error and its position', () => {
    const err = (text: string, message: RegExp, position: number) => {
      try {
        parseQuery(text);
      } catch (e) {
        expect(e).toBeInstanceOf(QueryError);
        expect((e as QueryError).message).toMatch(message);
        expect((e as QueryError).position).toBe(position);
        return;
      }
      throw new Error(`no error for ${text}`);
    };
    err('SELECT x', /expected FROM at the start at 0/, 0);
    err('FROM SELECT x WINDOW 5s COMPUTE min', /expected a server, glob, rack:<glob> or \* at 5/, 5);
    err('FROM a SELECT x WINDOW five COMPUTE min', /expected a duration like 5s after WINDOW at 23/, 23);
    err('FROM a SELECT x WINDOW 2d COMPUTE min', /outside 1s\.\.1d at 23/, 23);
    err('FROM a SELECT x WINDOW 0s COMPUTE min', /outside 1s\.\.1d/, 23);
    err('FROM a SELECT x WINDOW 5s COMPUTE median', /expected min, max, avg, count, sum, percentile\(p\) or pNN at 34/, 34);
    err('FROM a SELECT x WINDOW 5s COMPUTE p101', /percentile 101 is outside 0\.\.100 at 34/, 34);
    err('FROM a SELECT x WINDOW 5s COMPUTE min extra', /unexpected "extra"/, 38);
    err('FROM a b SELECT x WINDOW 5s COMPUTE min', /expected SELECT after the selectors at 7/, 7);
    err('FROM a SELECT bad/name WINDOW 5s COMPUTE min', /expected a metric name/, 14);
    err('FROM bad$id SELECT x WINDOW 5s COMPUTE min', /bad server id/, 5);
    err(`FROM a SELECT x WINDOW 5s COMPUTE ${'min,'.repeat(2000)}min`, /characters > limit/, 4096);
  });
});
