// `apm edge`: options → Edge → signals. No logic beyond wiring (STYLE "Thin entry points").

import { hostname } from 'node:os';
import { keyFileHelp, readKeyFile, reloadKeyFile } from '../schema/auth.js';
import { isServerId } from '../schema/names.js';
import { parseDurationMs, parseHostPort, parseIntOption, parseFlags, UsageError, usageOnError } from '../lib/args.js';
import { Edge, edgeSelfMetricsHelp, macRack } from './edge.js';
import { edgeLimits, type EdgeLimits } from './limits.js';

export const edgeHelp = `apm edge: the per-server daemon (StatsD in, per-second summaries out to the rack)

Usage: apm edge --server <id> --rack <host:port> [options]

  --server <id>            this server's id, [A-Za-z0-9._-]{1,64} (default: host name)
  --rack <host:port>       the rack aggregator's UDP address (default 127.0.0.1:7070)
  --statsd <host:port>     StatsD/DogStatsD UDP listener (default 127.0.0.1:8125)
  --no-host                do not collect this host's /proc metrics
  --datagram-bytes <n>     largest datagram sent to the rack, ${edgeLimits.datagramBytesMin}..${edgeLimits.datagramBytesMax} (default ${edgeLimits.datagramBytes})
  --series-max <n>         active series kept; new ones beyond are dropped and counted (default ${edgeLimits.seriesMax})
  --key-file <file>        keys shared with the rack: datagrams are signed with the first (the auth
                           header counts within --datagram-bytes); NACKs must be signed with any
  --rack-id <id>           the rack's id (its --rack): every MAC covers it, so a datagram captured on
                           its way to this rack is refused by any other. Needed with --key-file unless
                           the key file names the rack (rack=<id>); when both are given they must agree
  --clock-offset <dur>     FOR TESTING: pretend the clock is off by this much (--clock-offset=-30s, =30s), to
                           check the rack refuses a skewed edge (clock_skew)
  --help                   this text

${keyFileHelp}

${edgeSelfMetricsHelp()}

Stops on SIGINT/SIGTERM after sending the second it holds; SIGHUP rereads --key-file.`;

export async function main(argv: string[]): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      server: { type: 'string' },
      rack: { type: 'string', default: '127.0.0.1:7070' },
      statsd: { type: 'string', default: '127.0.0.1:8125' },
      host: { type: 'boolean', default: true },
      'datagram-bytes': { type: 'string' },
      'series-max': { type: 'string' },
      'key-file': { type: 'string' },
      'rack-id': { type: 'string' },
      'clock-offset': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    edgeHelp,
  );
  if (values.help) {
    console.log(edgeHelp);
    return;
  }
  const server = values.server ?? hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64);
  if (!isServerId(server)) throw new UsageError(`--server ${JSON.stringify(server)} is not [A-Za-z0-9._-]{1,64}`);
  const rack = parseHostPort(values.rack!, '--rack', '127.0.0.1', 1);
  const statsd = parseHostPort(values.statsd!, '--statsd');
  const limits: EdgeLimits = { ...edgeLimits };
  limits.datagramBytes = parseIntOption(values['datagram-bytes'], '--datagram-bytes', edgeLimits.datagramBytes, edgeLimits.datagramBytesMin, edgeLimits.datagramBytesMax);
  limits.seriesMax = parseIntOption(values['series-max'], '--series-max', edgeLimits.seriesMax, 1, 1_000_000);
  const keyFile = values['key-file'];
  const keys = keyFile === undefined ? null : usageOnError(() => readKeyFile(keyFile));
  const rackId = values['rack-id'];
  if (keys === null && rackId !== undefined) throw new UsageError('--rack-id names the rack signed datagrams are for; it needs --key-file');
  if (keys !== null) usageOnError(() => macRack(keys, rackId));
  const offsetMs = values['clock-offset'] === undefined ? 0 : parseSignedDurationMs(values['clock-offset'], '--clock-offset');
  const edge = new Edge({
    server,
    rackHost: rack.host,
    rackPort: rack.port,
    statsdHost: statsd.host,
    statsdPort: statsd.port,
    hostCollector: values.host!,
    limits,
    keys,
    ...(rackId === undefined ? {} : { rackId }),
    ...(offsetMs === 0 ? {} : { clock: { wallMs: () => Date.now() + offsetMs, monoMs: () => performance.now() } }),
  });
  const port = await edge.start();
  // Handlers go in before the ready line: whoever waits for that line may signal at once.
  const stop = async (signal: string) => {
    console.log(`apm edge: ${signal}, flushing`);
    await edge.stop(); // once, whatever signals follow
    process.exit(0);
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
  if (keyFile !== undefined) process.on('SIGHUP', () => reloadKeyFile(keyFile, 'edge', (keys) => edge.setKeys(keys)));
  console.log(`apm edge ${server}: StatsD on ${statsd.host}:${port}, sending to rack ${rack.host}:${rack.port} (session ${edge.session})`);
}

/** `30s`, `-30s`, `+1.5s`: a duration with a sign, within ±1 day. */
export function parseSignedDurationMs(value: string, flag: string): number {
  const m = /^\s*([+-]?)(.*)$/.exec(value)!;
  let ms: number;
  try {
    ms = parseDurationMs(m[2]!, flag, 0, 86_400_000);
  } catch {
    throw new UsageError(`${flag} ${JSON.stringify(value)} must be a duration like 30s, -30s or 500ms, between -24h and 24h`);
  }
  return m[1] === '-' ? -ms : ms;
}
