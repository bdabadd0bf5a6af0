// `apm bench`: measures the tiers and prints figures against DESIGN §7's targets. Runs one
// measurement at a time (never two loads at once on a 2-core box).

import { writeFileSync } from 'node:fs';
import { parseOptions } from './args.js';
import { edgeProcessFigures, wireFigures, type Figure } from './bench-edge.js';
import { rackFigures } from './bench-rack.js';
import { coreFigures } from './bench-core.js';
import { queryFigures } from './bench-query.js';
import { freshnessFigures } from './bench-fresh.js';

export const benchHelp = `apm bench: measure the tiers and print a report

Usage: apm bench [--quick] [--only <section>] [--json <file>]

  --quick            shorter runs (for a smoke check; figures are noisier)
  --only <section>   one of: edge, rack, core, query, freshness
  --json <file>      also write the figures as JSON
  --help             this text`;

export async function main(argv: string[]): Promise<void> {
  const { values } = parseOptions(
    argv,
    { quick: { type: 'boolean', default: false }, only: { type: 'string' }, json: { type: 'string' }, help: { type: 'boolean', default: false } },
    benchHelp,
  );
  if (values.help) {
    console.log(benchHelp);
    return;
  }
  const figures: Figure[] = [];
  const section = async (name: string, run: () => Promise<Figure[]> | Figure[]) => {
    if (values.only !== undefined && values.only !== name) return;
    console.log(`\n== ${name}`);
    for (const f of await run()) {
      figures.push(f);
      const v = f.value >= 100 ? f.value.toFixed(0) : f.value >= 1 ? f.value.toFixed(2) : f.value.toPrecision(3);
      console.log(`  ${f.name.padEnd(86)} ${v.padStart(10)} ${f.unit}${f.target ? `   (target ${f.target})` : ''}`);
    }
  };
  await section('edge', async () => [...wireFigures(), ...(await edgeProcessFigures(values.quick ? 5 : 20))]);
  await section('rack', () => rackFigures(values.quick!));
  await section('core', () => coreFigures(values.quick!));
  await section('query', () => queryFigures(values.quick!));
  await section('freshness', () => freshnessFigures(values.quick ? 30 : 90));
  if (values.json !== undefined) writeFileSync(values.json, JSON.stringify({ date: new Date().toISOString(), figures }, null, 2));
}
