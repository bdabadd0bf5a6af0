// `apm queries …`: the core's stored queries from the command line — list, create, edit, delete,
// and print a stored query's results — through the HTTP API (docs/http-api.md, "Stored queries").

import { parseOptions, UsageError } from '../lib/args.js';
import { callCore } from './core-client.js';
import { queryFormats, renderAnswer, table, type QueryAnswer, type QueryFormat } from './query-main.js';

export const queriesHelp = `apm queries: the core's stored queries (evaluated continuously, results kept)

Usage:
  apm queries list [--json]                           id, name and text of each
  apm queries create "<query>" [--name <name>]        prints the new query's id
  apm queries edit <id> ["<query>"] [--name <name>]   new text (its results start again) and/or name
  apm queries delete <id>                             the query and its results
  apm queries results <id> [--from -1h] [--to now] [--format table|json|csv]

  e.g. apm queries create "FROM web-* SELECT rpc.latency WINDOW 5s COMPUTE p50, p99" --name "web latency"
  --from, --to     Unix ms, ISO-8601, now, or relative to now: -<n>s|m|h|d (default: the last hour)
  --format <f>     as apm query's: table (default), json (the API's answer), csv
  --core <url>     the core (default http://127.0.0.1:8080)
  APM_TOKEN        environment: a token of role read to list and read, write to change
  --help           this text

Exit status: 0 done; 1 the core unreachable, refusing or answering an error (an unknown id: 1);
2 used wrongly (a query that does not parse, a missing argument).`;

interface StoredQuery {
  id: string;
  name: string;
  query: string;
  createdMs: number;
}

/** A call to the core (an unknown id, 404, is a failure: exit 1); a parse error points into the query sent. */
const call = (core: string, method: string, path: string, body?: { query?: string; name?: string }) => callCore(core, method, path, body, body?.query ?? '');

export async function queriesMain(argv: string[]): Promise<void> {
  const { values, positionals } = parseOptions(
    argv,
    {
      name: { type: 'string' },
      from: { type: 'string', default: '-1h' },
      to: { type: 'string', default: 'now' },
      format: { type: 'string', default: 'table' },
      json: { type: 'boolean', default: false },
      core: { type: 'string', default: 'http://127.0.0.1:8080' },
      help: { type: 'boolean', default: false },
    },
    queriesHelp,
  );
  if (values.help) return void console.log(queriesHelp);
  const [command, ...rest] = positionals;
  const core = values.core!;
  const arity = (n: number, what: string) => {
    if (rest.length !== n) throw new UsageError(`apm queries ${command} takes ${what}\n\n${queriesHelp}`);
  };
  // Options a subcommand does not read are refused, not ignored (`list --format csv` printed the table).
  const takes: Record<string, string[]> = { list: ['json'], create: ['name'], edit: ['name'], delete: [], results: ['from', 'to', 'format'] };
  const given = argv.filter((a) => a.startsWith('--')).map((a) => a.slice(2).split('=')[0]!);
  if (command !== undefined && takes[command] !== undefined) {
    const stray = given.find((o) => o !== 'core' && o !== 'help' && !takes[command]!.includes(o));
    if (stray !== undefined) throw new UsageError(`apm queries ${command} does not take --${stray}\n\n${queriesHelp}`);
  }
  /** A stored query's id as given: one the API can name (an empty one, . or .. would be another path). */
  const idOf = (text: string): string => {
    if (text === '' || text === '.' || text === '..') throw new UsageError(`${JSON.stringify(text)} is not a stored query's id (apm queries list shows them)`);
    return encodeURIComponent(text);
  };
  switch (command) {
    case 'list': {
      arity(0, 'no argument');
      const { json, raw } = await call(core, 'GET', '/api/v1/queries');
      if (values.json) return void console.log(raw.trimEnd());
      const { queries: list, unloadable } = json as { queries: StoredQuery[]; unloadable?: { id: string; query: string; error: string }[] };
      console.log(table(['id', 'name', 'query'], list.map((q) => [q.id, q.name, q.query]), 3));
      console.log(`${list.length} stored ${list.length === 1 ? 'query' : 'queries'}`);
      // Set aside by the core (a text that no longer parses, beyond the limit): listed, to delete by id.
      if (unloadable !== undefined && unloadable.length > 0) {
        console.log(`\nset aside, not evaluated (apm queries delete <id>):\n${table(['id', 'why', 'query'], unloadable.map((u) => [u.id, u.error, u.query]), 3)}`);
      }
      return;
    }
    case 'create': {
      arity(1, 'the query text, in quotes');
      const { json } = await call(core, 'POST', '/api/v1/queries', { query: rest[0], ...(values.name === undefined ? {} : { name: values.name }) });
      return void console.log((json as StoredQuery).id);
    }
    case 'edit': {
      if (rest.length < 1 || rest.length > 2) throw new UsageError(`apm queries edit takes an id and, optionally, the new query text in quotes\n\n${queriesHelp}`);
      if (rest.length === 1 && values.name === undefined) throw new UsageError(`apm queries edit ${rest[0]}: give the new query text, --name, or both`);
      const id = idOf(rest[0]!);
      // The API replaces both: what is not given is kept from the definition — but a name that
      // was the old text (the default) follows the new text, as the API's own default does.
      const now = (await call(core, 'GET', `/api/v1/queries/${id}`)).json as StoredQuery;
      const name = values.name ?? (now.name === now.query && rest[1] !== undefined ? undefined : now.name);
      const { json } = await call(core, 'PUT', `/api/v1/queries/${id}`, { query: rest[1] ?? now.query, ...(name === undefined ? {} : { name }) });
      const q = json as StoredQuery;
      return void console.log(`${q.id}  ${q.name}  ${q.query}`);
    }
    case 'delete': {
      arity(1, 'the id of the query');
      await call(core, 'DELETE', `/api/v1/queries/${idOf(rest[0]!)}`);
      return;
    }
    case 'results': {
      arity(1, 'the id of the query');
      const format = queryFormats.find((f) => f === values.format) as QueryFormat | undefined;
      if (format === undefined) throw new UsageError(`--format ${JSON.stringify(values.format)} must be one of ${queryFormats.join(', ')}\n\n${queriesHelp}`);
      const path = `/api/v1/queries/${idOf(rest[0]!)}/results?${new URLSearchParams({ from: values.from!, to: values.to! }).toString()}`;
      const { json, raw } = await call(core, 'GET', path);
      return void console.log(renderAnswer(format, json as QueryAnswer, raw));
    }
    case undefined:
      throw new UsageError(`which queries command? list, create, edit, delete or results\n\n${queriesHelp}`);
    default:
      throw new UsageError(`unknown queries command ${JSON.stringify(command)}; use list, create, edit, delete or results\n\n${queriesHelp}`);
  }
}
