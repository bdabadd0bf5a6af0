// `apm rack`: options → Rack → signals (STYLE "Thin entry points").

import { readFileSync } from 'node:fs';
import { keyFileHelp, readKeyFile, reloadKeyFile } from '../schema/auth.js';
import { guardLmdbRejections } from '../lib/lmdb.js';
import { parseNatsUrls, type NatsAuth } from '../schema/log.js';
import { isServerId } from '../schema/names.js';
import { batchServersMax } from '../schema/limits.js';
import { parseBytes, parseDurationMs, parseHostPort, parseHttpUrl, parseIntOption, parseFlags, UsageError, usageOnError } from '../lib/args.js';
import { rackLimits, type RackLimits } from './limits.js';
import { Rack } from './rack.js';

export const rackHelp = `apm rack: the rack aggregator (edges' datagrams in, one batch per second out to the core,
cut into the core's shards: GET /api/v1/placement at start, re-cut on 409 shards_mismatch;
or, with --nats, published to a core cluster's NATS JetStream: one message per shard section)

Usage: apm rack --rack <id> --listen <host:port> --core <url> [options]
       apm rack --rack <id> --listen <host:port> --nats <url,...> [options]

  --rack <id>              this rack's id, [A-Za-z0-9._-]{1,64} (required)
  --listen <host:port>     UDP address edges send to (default 0.0.0.0:7070)
  --core <url>             the core's base URL (default http://127.0.0.1:8080); with --nats only
                           the rack's status reports (fleet view) go there, and none without it
  --nats <url,...>         publish to NATS JetStream instead of POSTing to a core: the NATS
                           servers' URLs (nats://host:4222, comma-separated). The rack reads the
                           cluster's shard count from KV apm-cluster (written by the first core node
                           started with --nats; it waits, spooling, until then) and publishes each
                           second's sections to apm.shard.<k>; a batch leaves the spool once every
                           stream acknowledged its message, and batches acknowledged in the last
                           ${rackLimits.natsKeepAckedMs / 1000} s are published again after a reconnect (Msg-Id de-duplicates)
  --nats-creds <file>      NATS credentials (.creds: JWT and NKey seed)
  --nats-user <name>       NATS user, with --nats-password-file <file> (its first line is the password).
                           The rack's user needs: publish apm.shard.>, $JS.API.INFO,
                           $JS.API.STREAM.INFO.KV_apm-cluster, $JS.API.DIRECT.GET.KV_apm-cluster.>,
                           $JS.API.STREAM.MSG.GET.KV_apm-cluster; subscribe _INBOX.>
  --spool <dir>            on-disk spool for batches not yet acknowledged (default ./data/rack-<id>)
  --spool-bytes <size>     spool bound; the oldest batch is dropped (and counted) beyond it (default 1GiB)
  --http <host:port>       /metrics and /healthz (default 127.0.0.1:7071)
  --lateness <duration>    a second closes this long after it ends (default 2s)
  --token-file <file>      bearer token for the core's ingest API (role ingest)
  --servers-max <n>        edges accepted; more are refused and counted (default ${rackLimits.serversMax},
                           at most ${batchServersMax}: a rack second's body names at most that many)
  --servers-file <file>    allow-list: one server id per line; other servers are refused (unknown_server)
  --key-file <file>        keys shared with this rack's edges: datagrams must be signed with one of
                           them (unsigned, forged, stale and replayed ones are refused and counted);
                           NACKs are signed with the first. Without it, signatures are not checked.
  --clock-skew-max <dur>   refuse datagrams whose sender's clock is further than this from the
                           rack's (clock_skew; signed ones also stale beyond it) (default ${rackLimits.clockSkewMaxMs / 1000}s)
  --help                   this text

${keyFileHelp}

Stops on SIGINT/SIGTERM after closing and spooling the seconds it holds; SIGHUP rereads --key-file.`;

export async function main(argv: string[]): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      rack: { type: 'string' },
      listen: { type: 'string', default: '0.0.0.0:7070' },
      // No default here: with --nats, a --core given or not decides whether status reports are sent.
      core: { type: 'string' },
      nats: { type: 'string' },
      'nats-creds': { type: 'string' },
      'nats-user': { type: 'string' },
      'nats-password-file': { type: 'string' },
      spool: { type: 'string' },
      'spool-bytes': { type: 'string', default: '1GiB' },
      http: { type: 'string', default: '127.0.0.1:7071' },
      lateness: { type: 'string', default: '2s' },
      'token-file': { type: 'string' },
      'servers-max': { type: 'string' },
      'servers-file': { type: 'string' },
      'key-file': { type: 'string' },
      'clock-skew-max': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    rackHelp,
  );
  if (values.help) {
    console.log(rackHelp);
    return;
  }
  if (values.rack === undefined || !isServerId(values.rack)) throw new UsageError(`--rack ${JSON.stringify(values.rack ?? '')} must be an id like r01 ([A-Za-z0-9._-]{1,64})\n\n${rackHelp}`);
  // A full disk must not end the rack (issue 8): lmdb-js may leave a failed commit's rejection
  // unhandled; the spool already holds the batch in memory.
  guardLmdbRejections(() => undefined);
  const listen = parseHostPort(values.listen!, '--listen', '0.0.0.0');
  const http = parseHostPort(values.http!, '--http');
  const nats = values.nats === undefined ? null : { servers: usageOnError(() => parseNatsUrls(values.nats!)), auth: natsAuth(values) };
  if (nats === null && (values['nats-creds'] ?? values['nats-user'] ?? values['nats-password-file']) !== undefined) {
    throw new UsageError('--nats-creds, --nats-user and --nats-password-file need --nats <url,...>');
  }
  const coreText = values.core ?? (nats === null ? 'http://127.0.0.1:8080' : undefined);
  const coreUrl = coreText === undefined ? null : parseHttpUrl(coreText, '--core');
  const limits: RackLimits = { ...rackLimits };
  limits.spoolBytes = parseBytes(values['spool-bytes']!, '--spool-bytes', 1024 * 1024, 2 ** 40);
  // More servers than a body may name made every second undecodable at the core: all lost.
  limits.serversMax = parseIntOption(values['servers-max'], '--servers-max', rackLimits.serversMax, 1, batchServersMax);
  const token = values['token-file'] === undefined ? null : readSecret(values['token-file']);
  const allowList = values['servers-file'] === undefined ? null : readAllowList(values['servers-file']);
  if (values['clock-skew-max'] !== undefined) limits.clockSkewMaxMs = parseDurationMs(values['clock-skew-max'], '--clock-skew-max', 500, 3_600_000);
  const keyFile = values['key-file'];
  const keys = keyFile === undefined ? null : usageOnError(() => readKeyFile(keyFile));
  if (keys !== null && keys.rack !== null && keys.rack !== values.rack) {
    throw new UsageError(`--key-file ${keyFile} names rack ${keys.rack} (rack=${keys.rack}) but this rack is ${values.rack} (--rack): every MAC covers the rack id, so its edges' datagrams would all be refused; give this rack its own key file with rack=${values.rack}`);
  }
  const rack = new Rack({
    rack: values.rack,
    listenHost: listen.host,
    listenPort: listen.port,
    coreUrl: coreUrl?.toString() ?? null,
    nats,
    spoolDir: values.spool ?? `./data/rack-${values.rack}`,
    httpHost: http.host,
    httpPort: http.port,
    latenessMs: parseDurationMs(values.lateness!, '--lateness', 0, 60_000),
    token,
    allowList,
    keys,
    limits,
  });
  const ports = await rack.start();
  // Handlers go in before the ready line: whoever waits for that line may signal at once.
  const stop = async (signal: string) => {
    console.log(`apm rack: ${signal}, closing open seconds and spooling`);
    await rack.stop();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
  if (keyFile !== undefined) process.on('SIGHUP', () => reloadKeyFile(keyFile, 'rack', (keys) => rack.setKeys(keys)));
  console.log(
    `apm rack ${values.rack}: UDP on ${listen.host}:${ports.udpPort} (receive buffer ${rack.recvBufferBytes} B), metrics on http://${http.host}:${ports.httpPort}/metrics, ${nats === null ? `forwarding to ${coreUrl!.origin}` : `publishing to NATS ${nats.servers.join(',')}${coreUrl === null ? '' : ` (status reports to ${coreUrl.origin})`}`}, spool ${rack.spool.heldBatches} batches (session ${rack.spool.session.toString(16)}, ${rack.spool.shards} shards)`,
  );
}

/** NATS credentials from the flags; the files are read now so a wrong path fails at start, not in the background. */
function natsAuth(values: { 'nats-creds'?: string; 'nats-user'?: string; 'nats-password-file'?: string }): NatsAuth {
  const creds = values['nats-creds'];
  const user = values['nats-user'];
  const passwordFile = values['nats-password-file'];
  if (creds !== undefined && (user !== undefined || passwordFile !== undefined)) throw new UsageError('give either --nats-creds or --nats-user with --nats-password-file, not both');
  if ((user === undefined) !== (passwordFile === undefined)) throw new UsageError('--nats-user and --nats-password-file go together (the file\'s first line is the password)');
  for (const [flag, file] of [['--nats-creds', creds], ['--nats-password-file', passwordFile]] as const) {
    if (file === undefined) continue;
    try {
      if (readFileSync(file, 'utf8').trim().length === 0) throw new Error('the file is empty');
    } catch (err) {
      throw new UsageError(`${flag} ${file}: ${(err as Error).message}`);
    }
  }
  if (creds !== undefined) return { credsFile: creds };
  if (user !== undefined) return { user, passwordFile };
  return {};
}

function readSecret(file: string): string {
  try {
    const token = readFileSync(file, 'utf8').trim();
    if (token.length === 0) throw new Error('the file is empty');
    return token;
  } catch (err) {
    throw new UsageError(`--token-file ${file}: ${(err as Error).message}; it holds the raw token printed by 'apm token create --role ingest --name <rack> --tokens <the core's tokens file>'`);
  }
}


function readAllowList(file: string): Set<string> {
  const ids = readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !l.startsWith('#'));
  const bad = ids.find((id) => !isServerId(id));
  if (bad !== undefined) throw new UsageError(`--servers-file ${file}: ${JSON.stringify(bad)} is not a server id`);
  return new Set(ids);
}
