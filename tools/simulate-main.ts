// `apm simulate`: options → Simulator → signals.

import { parseHostPort, parseIntOption, parseOptions, UsageError } from './args.js';
import { Simulator, simulateDefaults } from './simulate.js';

export const simulateHelp = `apm simulate: a fleet of simulated edges sending to racks

Usage: apm simulate --rack <host:port>... --servers N --metrics M [--seconds S]

  --rack <host:port>     a rack's UDP address; repeat for several racks (servers go 40 per rack)
  --servers <n>          servers to simulate, 1..10000 (default 80)
  --metrics <n>          metrics per server, 1..2000 (default 200; 5% are latency distributions)
  --seconds <n>          stop after n seconds (default: until SIGINT/SIGTERM)
  --datagram-bytes <n>   datagram size (default ${simulateDefaults.datagramBytes})
  --seed <n>             seed of the metric shapes (default 1)
  --prefix <id>          server id prefix (default sim)
  --help                 this text`;

export async function main(argv: string[]): Promise<void> {
  const { values } = parseOptions(
    argv,
    {
      rack: { type: 'string', multiple: true },
      servers: { type: 'string' },
      metrics: { type: 'string' },
      seconds: { type: 'string' },
      'datagram-bytes': { type: 'string' },
      seed: { type: 'string' },
      prefix: { type: 'string', default: 'sim' },
      help: { type: 'boolean', default: false },
    },
    simulateHelp,
  );
  if (values.help) {
    console.log(simulateHelp);
    return;
  }
  if (values.rack === undefined || values.rack.length === 0) throw new UsageError(`give at least one --rack host:port\n\n${simulateHelp}`);
  const sim = new Simulator({
    racks: values.rack.map((r) => parseHostPort(r, '--rack')),
    servers: parseIntOption(values.servers, '--servers', 80, 1, 10_000),
    metrics: parseIntOption(values.metrics, '--metrics', 200, 1, 2000),
    distShare: simulateDefaults.distShare,
    datagramBytes: parseIntOption(values['datagram-bytes'], '--datagram-bytes', simulateDefaults.datagramBytes, 1024, 65_507),
    seed: parseIntOption(values.seed, '--seed', 1, 0, 2 ** 31),
    prefix: values.prefix!,
  });
  const seconds = parseIntOption(values.seconds, '--seconds', 0, 0, 10_000_000);
  const stop = async (why: string) => {
    console.log(`apm simulate: ${why}; sent ${sim.counters.seconds} seconds, ${sim.counters.datagrams_sent} datagrams, resent ${sim.counters.resent}`);
    await sim.stop();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
  await sim.start();
  console.log(`apm simulate: ${values.servers ?? 80} servers × ${values.metrics ?? 200} metrics → ${values.rack.join(', ')}`);
  if (seconds > 0) setTimeout(() => void stop(`${seconds} s done`), seconds * 1000 + 500);
}
