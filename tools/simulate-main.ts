// `apm simulate`: options → Simulator → signals.

import { createWriteStream, openSync } from 'node:fs';
import { keyFileHelp, readKeyFile } from '../schema/auth.js';
import { isServerId } from '../schema/names.js';
import { parseSignedDurationMs } from '../edge/main.js';
import { parseHostPort, parseIntOption, parseFlags, UsageError } from '../lib/args.js';
import { Simulator, simulateDefaults } from './simulate.js';

/** --seconds at most: one timer waits at most 2^31 − 1 ms (24.8 days). */
const secondsMax = 2_000_000;

export const simulateHelp = `apm simulate: a fleet of simulated edges sending to racks

Usage: apm simulate --rack <host:port>... --servers N --metrics M [--seconds S]

  --rack <host:port>     a rack's UDP address, the one it answers NACKs from; repeat for several
                         racks (servers go 40 per rack)
  --servers <n>          servers to simulate, 1..10000 (default 80)
  --metrics <n>          metrics per server, 1..2000 (default 200; 5% are latency distributions)
  --seconds <n>          stop after n seconds, at most ${secondsMax} (default: until SIGINT/SIGTERM)
  --datagram-bytes <n>   datagram size (default ${simulateDefaults.datagramBytes})
  --seed <n>             seed of the metric shapes (default 1)
  --prefix <id>          server id prefix, [A-Za-z0-9._-]{1,53} (default sim)
  --speedup <n>          backfill: send n seconds per wall-clock second (1..100000), starting an
                         hour ago
  --record <file>        write the exact observations sent (JSON lines) for the servers and
                         metrics matching --record-servers / --record-metrics (regular expressions)
  --key-file <file>      keys of the rack the file names (rack=<id>), as for apm edge: datagrams are
                         signed with the first key, NACKs must be signed with any. A key file names
                         one rack: with it give only that rack's --rack (one simulate per rack)
  --clock-offset <dur>   FOR TESTING: every simulated edge's clock is off by this much (--clock-offset=-30s)
  --help                 this text

${keyFileHelp.replace(/ Reread\s+on SIGHUP\.$/, ' apm simulate reads it once, at start.')}`;

export async function main(argv: string[]): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      rack: { type: 'string', multiple: true },
      servers: { type: 'string' },
      metrics: { type: 'string' },
      seconds: { type: 'string' },
      'datagram-bytes': { type: 'string' },
      seed: { type: 'string' },
      prefix: { type: 'string', default: 'sim' },
      speedup: { type: 'string' },
      record: { type: 'string' },
      'record-servers': { type: 'string', default: '.' },
      'record-metrics': { type: 'string', default: '.' },
      'key-file': { type: 'string' },
      'clock-offset': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    simulateHelp,
  );
  if (values.help) {
    console.log(simulateHelp);
    return;
  }
  if (values.rack === undefined || values.rack.length === 0) throw new UsageError(`give at least one --rack host:port\n\n${simulateHelp}`);
  let keys = null;
  if (values['key-file'] !== undefined) {
    // Every MAC covers one rack's id: a second rack would refuse every datagram as bad_hmac.
    if (values.rack.length > 1) throw new UsageError(`--key-file names one rack; give only that rack's --rack (here ${values.rack.length}), and run one apm simulate per rack`);
    try {
      keys = readKeyFile(values['key-file']);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  const sim = new Simulator({
    racks: values.rack.map((r) => parseHostPort(r, '--rack', '127.0.0.1', 1)),
    servers: parseIntOption(values.servers, '--servers', 80, 1, 10_000),
    metrics: parseIntOption(values.metrics, '--metrics', 200, 1, 2000),
    distShare: simulateDefaults.distShare,
    datagramBytes: parseIntOption(values['datagram-bytes'], '--datagram-bytes', simulateDefaults.datagramBytes, 1024, 65_507),
    seed: parseIntOption(values.seed, '--seed', 1, 0, 2 ** 31),
    prefix: simPrefix(values.prefix!),
    speedup: parseIntOption(values.speedup, '--speedup', 1, 1, 100_000),
    ...recording(values.record, values['record-servers']!, values['record-metrics']!),
    keys,
    clockOffsetMs: values['clock-offset'] === undefined ? 0 : parseSignedDurationMs(values['clock-offset'], '--clock-offset'),
  });
  // At most what one timer can wait (2^31 − 1 ms): beyond, Node fired it at once and the run ended.
  const seconds = parseIntOption(values.seconds, '--seconds', 0, 0, secondsMax);
  const stop = async (why: string) => {
    console.log(`apm simulate: ${why}; sent ${sim.counters.seconds} seconds, ${sim.counters.datagrams_sent} datagrams, resent ${sim.counters.resent}${sendErrors(sim.sendErrors)}`);
    await sim.stop();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
  await sim.start();
  console.log(`apm simulate: ${values.servers ?? 80} servers × ${values.metrics ?? 200} metrics → ${values.rack.join(', ')}`);
  // Progress line: what a benchmark or an operator needs to see it is keeping up.
  let last = { ...sim.counters, cpu: sim.cpuSeconds(), at: Date.now() };
  setInterval(() => {
    const now = { ...sim.counters, cpu: sim.cpuSeconds(), at: Date.now() };
    const dt = (now.at - last.at) / 1000;
    console.log(
      `apm simulate: ${Math.round((now.points_sent - last.points_sent) / dt).toLocaleString()} points/s, ${Math.round((now.datagrams_sent - last.datagrams_sent) / dt)} datagrams/s, NACKs answered ${now.nacks} (resent ${now.resent}, missed ${now.resend_missed}), seconds sent late ${now.seconds_late}, CPU ${((100 * (now.cpu - last.cpu)) / dt).toFixed(1)}%`,
    );
    last = now;
  }, 5000).unref();
  if (seconds > 0) setTimeout(() => void stop(`${seconds} s done`), seconds * 1000 + 500);
}

/** A --prefix whose server ids (`<prefix>-r<k>-<nnnnn>`) every rack takes (before: any, and the racks refused every id made of a bad one). */
function simPrefix(prefix: string): string {
  if (!isServerId(`${prefix}-r999-00000`)) throw new UsageError(`--prefix ${JSON.stringify(prefix)}: server ids are [A-Za-z0-9._-]{1,64}; give a prefix of those characters, at most 53 of them`);
  return prefix;
}

/** ', 3 send errors (ECONNREFUSED 3)' or ''. */
function sendErrors(byCode: Record<string, number>): string {
  const all = Object.entries(byCode);
  const n = all.reduce((a, [, k]) => a + k, 0);
  return n === 0 ? '' : `, ${n} send errors (${all.map(([c, k]) => `${c} ${k}`).join(', ')})`;
}

function recording(file: string | undefined, servers: string, metrics: string) {
  if (file === undefined) return {};
  let serverRe: RegExp;
  let metricRe: RegExp;
  try {
    serverRe = new RegExp(servers);
    metricRe = new RegExp(metrics);
  } catch (err) {
    throw new UsageError(`--record-servers / --record-metrics: ${(err as Error).message}`);
  }
  // Opened now: a path it cannot write is a usage error before anything is sent (before: an
  // unhandled 'error' event, with a stack trace, once sending had begun).
  let fd: number;
  try {
    fd = openSync(file, 'a');
  } catch (err) {
    throw new UsageError(`--record ${file}: ${(err as Error).message}`);
  }
  const out = createWriteStream('', { fd });
  let failed = false;
  out.on('error', (err) => {
    if (!failed) console.error(`apm simulate: --record ${file}: ${err.message}; recording stopped, sending goes on`);
    failed = true;
  });
  return { recordServers: serverRe, recordMetrics: metricRe, record: (o: object) => void (failed || out.write(`${JSON.stringify(o)}\n`)) };
}
