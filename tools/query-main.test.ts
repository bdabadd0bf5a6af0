import { describe, expect, it } from 'vitest';
import { csvField, renderAnswer, type QueryAnswer } from './query-main.js';

const answer: QueryAnswer = {
  query: 'FROM web-* SELECT rpc WINDOW 5s COMPUTE sum, avg, percentile(99)',
  windows: [
    { startMs: Date.UTC(2026, 11, 1, 12, 0, 0), servers: 40, count: 120, values: { sum: 2_800_000.25, avg: 596.123456789, 'percentile(99)': 1200 }, revision: 0 },
    { startMs: Date.UTC(2026, 11, 1, 12, 0, 5), servers: 39, count: 7, values: { sum: 3, avg: null, 'percentile(99)': 1 }, revision: 2 },
  ],
};
const raw = JSON.stringify(answer);

describe('apm query --format', () => {
  it('table: aligned columns, window start in UTC, one column per function', () => {
    expect(renderAnswer('table', answer, raw).split('\n')).toEqual([
      answer.query,
      'window start (UTC)   servers  count        sum      avg  percentile(99)  rev',
      '-------------------  -------  -----  ---------  -------  --------------  ---',
      '2026-12-01 12:00:00       40    120  2800000.3  596.123            1200    0',
      '2026-12-01 12:00:05       39      7          3        -               1    2',
      '2 windows',
    ]);
  });

  it('json: the API answer unchanged', () => {
    expect(JSON.parse(renderAnswer('json', answer, `${raw}\n`))).toEqual(answer);
  });

  it('csv: a header row, full precision, CRLF line ends, an empty field for a missing value', () => {
    expect(renderAnswer('csv', answer, raw)).toBe(
      [
        'start,start_ms,servers,count,sum,avg,percentile(99),revision',
        '2026-12-01T12:00:00.000Z,1796126400000,40,120,2800000.25,596.123456789,1200,0',
        '2026-12-01T12:00:05.000Z,1796126405000,39,7,3,,1,2',
      ].join('\r\n'),
    );
  });

  it('regression: the columns are the COMPUTE list, with or without windows, and a count function has a column of its own (before: no windows, no function columns; `count` twice)', () => {
    const empty: QueryAnswer = { query: 'FROM web-* SELECT nosuch WINDOW 1m COMPUTE avg, p99', windows: [] };
    expect(renderAnswer('csv', empty, JSON.stringify(empty))).toBe('start,start_ms,servers,count,avg,percentile(99),revision');
    const counted: QueryAnswer = { query: 'FROM * SELECT m WINDOW 5s COMPUTE count', windows: [{ startMs: Date.UTC(2026, 11, 1), servers: 2, count: 10, values: { count: 10 }, revision: 0 }] };
    expect(renderAnswer('csv', counted, '').split('\r\n')[0]).toBe('start,start_ms,servers,count,count(),revision');
    expect(renderAnswer('table', counted, '').split('\n')[1]).toMatch(/ count\s+count\(\)\s+rev$/);
  });

  it('csv fields are quoted per RFC 4180', () => {
    const f = (s: string, want: string) => expect(csvField(s)).toBe(want);
    f('p99', 'p99');
    f('a,b', '"a,b"');
    f('say "hi"', '"say ""hi"""');
    f('two\nlines', '"two\nlines"');
    f('cr\r', '"cr\r"');
  });
});
