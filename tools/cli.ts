// `apm <command>`: dispatches to each daemon's or tool's main (DESIGN §6).

import { CommandError, UsageError } from '../lib/args.js';

interface Command {
  summary: string;
  run: (argv: string[]) => Promise<void>;
}

const commands: Record<string, Command> = {
  edge: { summary: 'per-server daemon: StatsD in, per-second summaries out to the rack', run: async (a) => (await import('../edge/main.js')).main(a) },
  rack: { summary: 'rack aggregator: reassemble, recover loss, merge, forward to the core', run: async (a) => (await import('../rack/main.js')).main(a) },
  core: { summary: 'core node: durable ingest, a year of per-second points, API', run: async (a) => (await import('../core/main.js')).main(a) },
  simulate: { summary: 'simulated fleet: N servers × M metrics sent to racks like real edges', run: async (a) => (await import('./simulate-main.js')).main(a) },
  query: { summary: 'evaluate a query on the core and print its windows', run: async (a) => (await import('./query-main.js')).main(a) },
  queries: { summary: "the core's stored queries: list, create, edit, delete, results", run: async (a) => (await import('./queries-main.js')).queriesMain(a) },
  import: { summary: 'load history into the core from VictoriaMetrics JSON lines', run: async (a) => (await import('./history-main.js')).importMain(a) },
  export: { summary: "write the core's history of metrics as VictoriaMetrics JSON lines", run: async (a) => (await import('./history-main.js')).exportMain(a) },
  cluster: { summary: "a core cluster's nodes, shard placement and consumer lag (apm cluster status)", run: async (a) => (await import('./cluster-main.js')).clusterMain(a) },
  demo: { summary: 'the whole system on this machine (what npm start runs)', run: async (a) => (await import('./demo.js')).main(a) },
  bench: { summary: 'measure the tiers and print a report', run: async (a) => (await import('./bench.js')).main(a) },
  token: { summary: 'create API tokens for the core (apm token create --role ... --name ... --tokens ...)', run: async (a) => (await import('./token.js')).main(a) },
};

const help = `apm: per-second metrics for a fleet of servers

Usage: apm <command> [options]     (apm <command> --help for its options)

${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

Exit status: 0 done; 1 failed while running (the core unreachable, refusing or answering an
error, a transfer cut short, nothing imported); 2 used wrongly (an unknown option or value, a
query that does not parse, a stray argument).`;

/** Daemons started by `apm demo` live in their own process group; they stop when the demo dies. */
function exitWithParent(): void {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.kill(process.pid, 'SIGTERM');
  }, 1000).unref();
}

async function main(argv: string[]): Promise<void> {
  if (process.env.APM_EXIT_WITH_PARENT === '1') exitWithParent();
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(help);
    return;
  }
  const cmd = commands[name];
  if (cmd === undefined) throw new UsageError(`unknown command ${JSON.stringify(name)}\n\n${help}`);
  await cmd.run(rest);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError) {
    console.error(`apm: ${err.message}`);
    process.exit(2);
  }
  if (err instanceof CommandError) {
    console.error(`apm: ${err.message}`);
    process.exit(1);
  }
  console.error(err);
  process.exit(1);
});
