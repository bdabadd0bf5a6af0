import { describe, expect, it } from 'vitest';
import { joinOptionValues, parseFlags, parseOptions, UsageError, type OptionSpec } from './args.js';

const spec = {
  from: { type: 'string' },
  to: { type: 'string' },
  'clock-offset': { type: 'string' },
  offset: { type: 'string', short: 'o' },
  quick: { type: 'boolean' },
} satisfies OptionSpec;

describe('option values that start with -', () => {
  it('joins a value starting with - to its option, and leaves the rest as it was', () => {
    const f = (argv: string[], want: string[]) => expect(joinOptionValues(argv, spec)).toEqual(want);
    // The README's example (issue 15): relative times.
    f(['q', '--from', '-5m', '--to', '-1m'], ['q', '--from=-5m', '--to=-1m']);
    // A negative offset, a short option.
    f(['--clock-offset', '-30s', '-o', '-2'], ['--clock-offset=-30s', '-o-2']);
    // Values without a dash and values already joined pass unchanged.
    f(['--from', '1700000000000', '--to=-1m'], ['--from', '1700000000000', '--to=-1m']);
    // A forgotten value: the next option is not swallowed (parseArgs then says so).
    f(['--from', '--to', 'now'], ['--from', '--to', 'now']);
    f(['--from', '--quick'], ['--from', '--quick']);
    f(['--from', '--no-quick'], ['--from', '--no-quick']);
    f(['--from', '--to=now'], ['--from', '--to=now']);
    // A boolean never takes a value; nothing after -- is touched.
    f(['--quick', '-5m'], ['--quick', '-5m']);
    f(['--', '--from', '-5m'], ['--', '--from', '-5m']);
    // The last argument.
    f(['--from'], ['--from']);
  });

  it('parses them, and still refuses a missing value and unknown options', () => {
    const { values, positionals } = parseOptions(['FROM x SELECT m', '--from', '-5m', '--to', '-1m', '--clock-offset', '-0.5s'], spec, 'HELP');
    expect(values).toEqual({ from: '-5m', to: '-1m', 'clock-offset': '-0.5s' });
    expect(positionals).toEqual(['FROM x SELECT m']);
    expect(() => parseOptions(['--from', '--to', 'now'], spec, 'HELP')).toThrow(UsageError);
    expect(() => parseOptions(['--from', '--to', 'now'], spec, 'HELP')).toThrow(/--from.*\n\nHELP$/s);
    expect(() => parseOptions(['--bogus', '-5m'], spec, 'HELP')).toThrow(/Unknown option '--bogus'/);
  });

  it('parseFlags refuses an argument that is not an option (a command taking options only)', () => {
    expect(parseFlags(['--from', '-5m'], spec, 'HELP').values).toEqual({ from: '-5m' });
    expect(() => parseFlags(['/srv/apm', '--from', '-5m'], spec, 'HELP')).toThrow(/unexpected argument "\/srv\/apm".*\n\nHELP$/s);
  });
});
