// `apm bench`: measures the tiers and prints figures against DESIGN §7's targets. Runs one
// measurement at a time (never two loads at once on a 2-core box).

import { storeLayoutFigures } from './bench-stores.js';
import { writeFileSync } from 'node:fs';
import { parseFlags, UsageError } from '../lib/args.js';
import { edgeProcessFigures, wireFigures, type Figure } from './bench-edge.js';
import { rackFigures } from './bench-rack.js';
import { coreFigures } from './bench-core.js';
import { queryFigures } from './bench-query.js';
import { freshnessFigures } from './bench-fresh.js';
import { fleetStep, type FleetStep } from './bench-fleet.js';
import { lossFigures } from './bench-loss.js';
import { authFigures } from './bench-auth.js';
import { soakFigures } from './bench-soak.js';
import { pageFigures } from './bench-page.js';
import { importFigures } from './bench-import.js';
import { codecFigures } from './bench-codec.js';
import { diskFigures } from './bench-disk.js';
import { clusterFigures } from './bench-cluster.js';
import { wrkInstalled } from './bench-http.js';

/** Every section --only may name (each is run below). */
export const benchSections = ['edge', 'auth', 'rack', 'core', 'stores', 'codec', 'query', 'disk', 'import', 'freshness', 'loss', 'fleet', 'soak', 'page', 'cluster'];

export const benchHelp = `apm bench: measure the tiers and print a report

Usage: apm bench [--quick] [--only <section>] [--json <file>]

  --quick            a smoke run under 2 minutes: wire figures and one small fleet step
  --only <section>   one of: edge, auth, rack, core, stores, codec, query, disk, import, freshness, loss, fleet, soak, page, cluster
                     (soak runs only when asked: 80 servers × 2,000 metrics + an edge for 10
                     minutes, 2 with --quick, sampling each tier's RSS and open fds; page too: the
                     dashboard in Debian's Chromium with 12 panels × 24 h of 1 s windows from a
                     synthetic API on 127.0.0.1: time to the first chart and to all, longest
                     task, JS heap and typed arrays, one live update)
  --json <file>      also write the figures as one JSON object
  --help             this text

The core section starts real \`apm core\` processes: ingest per CPU-second and per wall second with
--workers 1 and 2 (bodies built first, sent by 8 racks), the longest /healthz wait while a
minute-block of 240 and of 1,000 servers × 2,000 metrics is written, then in-process reads of one
metric from the head and from rows; with --quick (and --only core) a small version of each.
The cluster section starts 3 real nats-server and 1, 2, then 3 \`apm core --nats\` nodes: core
CPU-seconds per million points applied per node, the NATS servers' CPU and the log's bytes per
point, then a node SIGKILLed under load (time to the other owner's first complete answer) and
restarted (its catch-up rate).
The fleet section starts real core, rack (one per 40 servers) and simulator processes and
ramps the fleet (servers × 2,000 metrics) until a step does not keep up; the largest step
that kept up is the headline.
The query section times one metric in 120 windows of 5 s over 1,000 and over 40 spread servers;
with victoria-metrics installed (apt install victoria-metrics, or APM_BENCH_VM=<binary>) it
starts one on 127.0.0.1, imports the same samples, and times each cell there too (apm ÷ it).
HTTP load (the query section's stored results, the fleet's results p99) comes from wrk when it
is installed (apt install wrk), else from autocannon; the output says which.
A section whose run is invalid (nothing stored, points lost, no rows) stops with an error.`;

const fleetMetrics = 2000;

export async function main(argv: string[]): Promise<void> {
  const { values } = parseFlags(
    argv,
    { quick: { type: 'boolean', default: false }, only: { type: 'string' }, json: { type: 'string' }, help: { type: 'boolean', default: false } },
    benchHelp,
  );
  if (values.help) {
    console.log(benchHelp);
    return;
  }
  const quick = values.quick!;
  // An --only that names no section ran nothing and said nothing: refused, with the list.
  if (values.only !== undefined && !benchSections.includes(values.only)) throw new UsageError(`--only ${JSON.stringify(values.only)} is not a section; one of: ${benchSections.join(', ')}\n\n${benchHelp}`);
  const figures: Figure[] = [];
  const wanted = (name: string, inQuick: boolean) => (values.only !== undefined ? values.only === name : !quick || inQuick);
  const print = (f: Figure) => {
    const v = f.value >= 100 ? f.value.toFixed(0) : f.value >= 1 ? f.value.toFixed(2) : f.value.toPrecision(3);
    console.log(`  ${f.name.padEnd(86)} ${v.padStart(10)} ${f.unit}${f.target ? `   (target ${f.target})` : ''}`);
  };
  const section = async (name: string, inQuick: boolean, runIt: () => Promise<Figure[]> | Figure[]) => {
    if (!wanted(name, inQuick)) return;
    console.log(`\n== ${name}`);
    for (const f of await runIt()) {
      figures.push(f);
      print(f);
    }
  };
  await section('edge', true, async () => [...wireFigures(), ...(quick ? [] : await edgeProcessFigures(20))]);
  await section('auth', true, () => authFigures());
  await section('rack', false, () => rackFigures(false));
  await section('core', false, () => coreFigures(quick));
  // Issue 12: one LMDB environment per worker against one per shard (synced commits per request).
  await section('stores', false, () => storeLayoutFigures(quick));
  // Issue 14: the value codec's bytes per point on tools/shapes-compare.ts against today's, and its speed.
  await section('codec', false, () => codecFigures(quick));
  await section('query', false, () => queryFigures(quick));
  await section('freshness', false, () => freshnessFigures(90));
  // Bytes on disk per point, the WAL's high-water, the files after a backfill (issue 14).
  await section('disk', false, () => diskFigures(quick));
  // History in and out (issue 15): POST /api/v1/import and GET /api/v1/export of a real core.
  await section('import', false, () => importFigures(quick));
  // Real kernel packet loss in a network namespace (issue 8; needs root, says so otherwise).
  await section('loss', false, () => lossFigures(quick));
  // A core cluster on NATS JetStream (issue 13): 3 nats-server + 1, 2 and 3 `apm core --nats` nodes.
  await section('cluster', false, () => clusterFigures(quick));
  if (values.only === 'page') await section('page', true, () => pageFigures());
  if (values.only === 'soak') await section('soak', true, () => soakFigures({ servers: 80, metrics: fleetMetrics, minutes: quick ? 2 : 10 }));
  const steps: FleetStep[] = [];
  if (wanted('fleet', true)) {
    console.log(`\n== fleet (servers × ${fleetMetrics} metrics, real processes; a step keeps up when every window is complete and readable within 5 s of its close)`);
    console.log(`  ${'servers'.padStart(7)} ${'offered/s'.padStart(10)} ${'stored/s'.padStart(10)} ${'complete'.padStart(8)} ${'revised'.padStart(7)} ${'core s/M'.padStart(8)} ${'racks s/M'.padStart(9)} ${'sim %'.padStart(6)} ${'core MiB'.padStart(8)} ${'rack MiB'.padStart(8)} ${'loss %'.padStart(7)} ${'lost %'.padStart(7)} ${'fresh p99'.padStart(9)} ${'results p99'.padStart(11)}  kept up`);
    console.log(`  (results p99: GET …/results?from=-1h under 10 connections for 5 s, by ${wrkInstalled() ? 'wrk' : 'autocannon: wrk is not installed (apt install wrk)'})`);
    for (const servers of quick ? [40] : [40, 120, 240, 480, 960]) {
      const s = await fleetStep(servers, fleetMetrics, quick ? 10 : 60);
      steps.push(s);
      console.log(
        `  ${String(s.servers).padStart(7)} ${Math.round(s.pointsPerSecondOffered).toString().padStart(10)} ${Math.round(s.pointsPerSecondStored).toString().padStart(10)} ${`${s.completenessPercent.toFixed(2)}%`.padStart(8)} ${`${s.revisedWindowsPercent.toFixed(0)}%`.padStart(7)} ${s.coreCpuSecondsPerMillionPoints.toFixed(2).padStart(8)} ${s.rackCpuSecondsPerMillionPoints.toFixed(2).padStart(9)} ${s.simulatorCpuPercent.toFixed(0).padStart(6)} ${s.coreRssMiB.toFixed(0).padStart(8)} ${s.rackRssMiBMax.toFixed(0).padStart(8)} ${s.udpLossPercent.toFixed(2).padStart(7)} ${s.udpLostForGoodPercent.toFixed(2).padStart(7)} ${`${s.freshnessP99Ms} ms`.padStart(9)} ${`${s.resultsQueryP99Ms} ms`.padStart(11)}  ${s.keptUp ? 'yes' : 'NO'}${s.windowsMissing > 0 ? ` (${s.windowsMissing} windows never arrived)` : ''}`,
      );
      if (!s.keptUp) break;
    }
    const best = [...steps].reverse().find((s) => s.keptUp);
    console.log(`\n  fleet sustained on this machine: ${best?.servers ?? 0} servers × ${fleetMetrics} metrics = ${(((best?.servers ?? 0) / 10_000) * 100).toFixed(1)}% of the 10,000-server fleet (DESIGN §7 goal: 100%)`);
  }
  if (values.json !== undefined) writeFileSync(values.json, JSON.stringify(summary(steps, figures), null, 2));
}

/** The JSON object of issue 7: headline fields, then every step and figure. */
function summary(steps: FleetStep[], figures: Figure[]): object {
  const best = [...steps].reverse().find((s) => s.keptUp);
  const fig = (prefix: string) => figures.find((f) => f.name.startsWith(prefix))?.value ?? null;
  return {
    date: new Date().toISOString(),
    fleetServersSustained: best?.servers ?? 0,
    metricsPerServer: fleetMetrics,
    pointsPerSecondStored: best?.pointsPerSecondStored ?? 0,
    coreCpuSecondsPerMillionPoints: best?.coreCpuSecondsPerMillionPoints ?? null,
    rackCpuSecondsPerMillionPoints: best?.rackCpuSecondsPerMillionPoints ?? null,
    edgeCpuPercentAt2000Metrics: fig('edge CPU at 2,000 metrics'),
    freshnessP99Ms: best?.freshnessP99Ms ?? null,
    bytesPerPointOnDisk: fig('bytes on disk per gauge point'),
    resultsQueryP99Ms: best?.resultsQueryP99Ms ?? null,
    // wrk or autocannon (tools/bench-http.ts): their p99s under a busy fleet are not comparable.
    resultsQueryClient: best?.resultsQueryClient ?? null,
    udpLossPercent: best?.udpLossPercent ?? null,
    udpLostForGoodPercent: best?.udpLostForGoodPercent ?? null,
    steps,
    figures,
  };
}
