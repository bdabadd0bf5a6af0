// API tokens of the core (DESIGN §5 "Auth", issue 8). A tokens file holds one token a line:
//   <sha-256 hex of the token> <role> <name> [racks=<rack>,<rack>…|racks=*]
// ('#' comments and blank lines allowed). Only hashes are stored, so the file is not a secret
// worth stealing; `apm token create` writes it. Clients send `Authorization: Bearer <token>`.
// A token of role ingest speaks only for the racks its line names (issue 16.3): a RackSecond or
// a status report of any other rack is refused with 403 and counted; `racks=*` is any rack (a
// stated choice, e.g. for a relay). An ingest line without racks= (written before issue 16.3)
// still parses, but speaks for no rack. Admin tokens, and every request with auth off (the
// loopback dev default), may speak for any rack.

import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Context, MiddlewareHandler } from 'hono';
import { coreLimits } from './limits.js';

export const roles = ['read', 'write', 'ingest', 'admin'] as const;
export type Role = (typeof roles)[number];
/** What a route needs: a role, or nothing (health check, dashboard page and assets). */
export type Access = Role | 'public';

/** The racks a request may speak for: '*' any, else exactly these (empty: none). */
export type RackGrant = '*' | ReadonlySet<string>;

export interface TokenEntry {
  hashHex: string;
  hash: Buffer;
  role: Role;
  name: string;
  /** Role ingest: the racks named by racks= ('*': any; empty: none named). Other roles: empty. */
  racks: RackGrant;
}

declare module 'hono' {
  interface ContextVariableMap {
    /** Who is asking: the token's name, or the client address when auth is off (rate limits key on it). */
    apmClient: string;
    /** The racks the request may speak for (ingest, rack status reports). */
    apmRacks: RackGrant;
    /** Why a route refused the request, when its status alone does not say (counted at /metrics). */
    apmRefusal: string;
    /** Whether the request's token still grants it (a tokens file reloaded since may have revoked it): long-lived answers (live streams) ask before each write. */
    apmStillAllowed: () => boolean;
  }
}

/** Whether `grant` lets a request speak for `rack`. */
export function mayRack(grant: RackGrant, rack: string): boolean {
  return grant === '*' || grant.has(rack);
}

/** A grant as text for errors: "any rack", "no rack", or the list. */
export function grantText(grant: RackGrant): string {
  if (grant === '*') return 'any rack';
  return grant.size === 0 ? 'no rack' : `rack${grant.size === 1 ? '' : 's'} ${[...grant].sort().join(', ')}`;
}

/** Rack ids in racks= (the rack's --rack syntax: DESIGN §3 server ids). */
const rackIdPattern = /^[A-Za-z0-9._-]{1,64}$/;

/** Parses the value of racks= ("r1,r2" or "*"), or says what is wrong with it. */
export function parseRacks(value: string): { racks: RackGrant } | { error: string } {
  if (value === '*') return { racks: '*' };
  const ids = value.split(',');
  if (ids.length > coreLimits.tokenRacksMax) return { error: `${ids.length} racks > ${coreLimits.tokenRacksMax}; use racks=* for a token that may speak for any rack` };
  for (const id of ids) if (!rackIdPattern.test(id)) return { error: `rack id ${JSON.stringify(id.slice(0, 80))} is not ${rackIdPattern.source}` };
  return { racks: new Set(ids) };
}

export class TokenFileError extends Error {}

/** Token names: what logs and rate limits show; no white space (the file is space-separated). */
export const tokenNamePattern = /^[A-Za-z0-9._@-]{1,64}$/;

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export function isRole(s: string): s is Role {
  return (roles as readonly string[]).includes(s);
}

/** Parses a tokens file; throws TokenFileError naming the file, the line and what is wrong. */
export function parseTokens(text: string, file: string): TokenEntry[] {
  const out: TokenEntry[] = [];
  const lineOf = new Map<string, number>();
  const lines = text.split('\n');
  if (lines.length > coreLimits.tokenLinesMax) throw new TokenFileError(`${file}: ${lines.length} lines > limit ${coreLimits.tokenLinesMax}`);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const where = `${file} line ${i + 1}`;
    const fields = line.split(/\s+/);
    if (fields.length !== 3 && fields.length !== 4) throw new TokenFileError(`${where}: expected "<sha256 hex> <role> <name> [racks=<rack>,…]", got ${fields.length} fields; fix or remove the line`);
    const [hashHex, role, name, extra] = fields as [string, string, string, string | undefined];
    if (!/^[0-9a-f]{64}$/.test(hashHex)) throw new TokenFileError(`${where}: ${JSON.stringify(hashHex.slice(0, 80))} is not a SHA-256 hex digest (64 lower-case hex digits); create entries with 'apm token create'`);
    if (!isRole(role)) throw new TokenFileError(`${where}: role ${JSON.stringify(role)} is not one of ${roles.join(', ')}`);
    if (!tokenNamePattern.test(name)) throw new TokenFileError(`${where}: name ${JSON.stringify(name.slice(0, 80))} is not ${tokenNamePattern.source}`);
    const dup = lineOf.get(hashHex);
    if (dup !== undefined) throw new TokenFileError(`${where}: the same token hash as line ${dup}; remove one`);
    let racks: RackGrant = new Set<string>();
    if (extra !== undefined) {
      if (!extra.startsWith('racks=')) throw new TokenFileError(`${where}: 4th field ${JSON.stringify(extra.slice(0, 80))} is not racks=<rack>,<rack>… or racks=*`);
      if (role !== 'ingest') throw new TokenFileError(`${where}: racks= applies to role ingest only (this token has role ${role}; admin tokens may send for any rack); remove it`);
      const r = parseRacks(extra.slice('racks='.length));
      if ('error' in r) throw new TokenFileError(`${where}: racks=: ${r.error}`);
      racks = r.racks;
    }
    lineOf.set(hashHex, i + 1);
    out.push({ hashHex, hash: Buffer.from(hashHex, 'hex'), role, name, racks });
  });
  return out;
}

/** The tokens a core accepts. */
export class TokenSet {
  private readonly byHash = new Map<string, TokenEntry>();

  constructor(entries: readonly TokenEntry[]) {
    for (const e of entries) this.byHash.set(e.hashHex, e);
  }

  static read(file: string): TokenSet {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new TokenFileError(`${file}: ${(err as Error).message}; create it with 'apm token create --role admin --name me --tokens ${file}'`, { cause: err });
    }
    const set = new TokenSet(parseTokens(text, file));
    const without = set.ingestWithoutRacks();
    // Lines from before issue 16.3 still load, but send nothing: say so where the operator looks.
    if (without.length > 0) console.error(`apm core: ${file}: ingest token${without.length === 1 ? '' : 's'} ${without.slice(0, 10).join(', ')}${without.length > 10 ? ', …' : ''} name${without.length === 1 ? 's' : ''} no racks and may send for none; append racks=<rack id>[,<rack id>…] to ${without.length === 1 ? 'its line' : 'their lines'} and send the core SIGHUP`);
    return set;
  }

  get size(): number {
    return this.byHash.size;
  }

  /** Names of ingest tokens that name no rack (lines from before issue 16.3): they can send nothing. */
  ingestWithoutRacks(): string[] {
    return [...this.byHash.values()].filter((e) => e.role === 'ingest' && e.racks !== '*' && e.racks.size === 0).map((e) => e.name);
  }

  /** The entry of a presented token, or undefined. */
  check(token: string): TokenEntry | undefined {
    const digest = createHash('sha256').update(token, 'utf8').digest();
    // The lookup is keyed by the digest, not by the token: its timing depends only on
    // SHA-256(attempt), which tells an attacker nothing about a stored token (preimage
    // resistance). The final comparison is timingSafeEqual anyway, so whatever the Map does
    // internally, accepting a token never depends on a byte-by-byte early exit.
    const e = this.byHash.get(digest.toString('hex'));
    if (e === undefined || !timingSafeEqual(digest, e.hash)) return undefined;
    return e;
  }
}

/** Which role a request needs (DESIGN §5): GET read; stored-query changes write; ingest ingest. */
export function accessFor(method: string, path: string): Access {
  const m = method === 'HEAD' ? 'GET' : method;
  if (m === 'GET' && (path === '/' || path === '/healthz' || path === '/favicon.ico' || path.startsWith('/ui/'))) return 'public';
  // Racks send batches and their own status report (the dashboard's fleet view) with one token.
  if (m === 'POST' && (path === '/api/v1/ingest' || /^\/api\/v1\/racks\/[^/]+\/status$/.test(path))) return 'ingest';
  // History is written as the racks write seconds: an ingest token imports for its racks= only.
  if (m === 'POST' && path === '/api/v1/import') return 'ingest';
  // A rack asks for the shard count before it cuts its sections (issue 12).
  if (m === 'GET' && path === '/api/v1/placement') return 'ingest';
  // A shard's snapshot is all of its data and its de-duplication marks (issue 13): nodes copy it with an admin token.
  if (m === 'GET' && shardSnapshotPath.test(path)) return 'admin';
  if (m === 'GET') return 'read';
  // The Prometheus API's reads may come as form POSTs (Grafana's default, promtool's first try).
  if (m === 'POST' && promReadPost.test(path)) return 'read';
  if ((m === 'POST' || m === 'PUT' || m === 'DELETE') && (path === '/api/v1/queries' || path.startsWith('/api/v1/queries/'))) return 'write';
  // Anything else that changes state has no role of its own yet: admins only.
  return 'admin';
}

/** Whether a token of `role` may do what `access` needs. */
export function allows(role: Role, access: Access): boolean {
  if (access === 'public' || role === 'admin') return true;
  if (role === 'write') return access === 'write' || access === 'read';
  return role === access;
}

const livePath = /^\/api\/v1\/(queries\/[^/]+\/)?live$/;
/** core/cluster/snapshot-routes.ts */
const shardSnapshotPath = /^\/api\/v1\/cluster\/shards\/[^/]+\/snapshot$/;
const promReadPost = /^\/api\/v1\/(query|query_range|labels|series|query_exemplars|format_query)$/;
const rackStatusPath = /^\/api\/v1\/racks\/([^/]+)\/status$/;

export interface AuthOptions {
  /** The accepted tokens; null: auth is off (the loopback dev default), every request passes. */
  tokens: TokenSet | null;
}

/** Checks every request's token against the route's role; counts failures by reason. */
export class ApiAuth {
  /** rack: a token sent for a rack it does not name (ingest or status report, issue 16.3). */
  readonly failures = { missing: 0, unknown: 0, forbidden: 0, rack: 0 };
  tokens: TokenSet | null;

  constructor(opts: AuthOptions) {
    this.tokens = opts.tokens;
  }

  middleware(): MiddlewareHandler {
    return async (c, next) => {
      const tokens = this.tokens;
      if (tokens === null) {
        c.set('apmClient', clientAddress(c));
        c.set('apmRacks', '*');
        return next();
      }
      const access = accessFor(c.req.method, c.req.path);
      if (access === 'public') {
        c.set('apmClient', clientAddress(c));
        c.set('apmRacks', new Set());
        return next();
      }
      const presented = presentedToken(c);
      if (presented === null) {
        this.failures.missing++;
        return unauthorized(c, `${c.req.method} ${c.req.path} needs "Authorization: Bearer <token>" (role ${access}); an admin creates one with 'apm token create --role ${access} --name <who> --tokens <file>'`);
      }
      const entry = presented.length <= coreLimits.tokenCharsMax ? tokens.check(presented) : undefined;
      if (entry === undefined) {
        this.failures.unknown++;
        return unauthorized(c, 'unknown token: not in the core\'s tokens file (revoked, mistyped, or for another core); ask an admin for a token');
      }
      if (!allows(entry.role, access)) {
        this.failures.forbidden++;
        return c.json({ error: `token "${entry.name}" has role ${entry.role}; ${c.req.method} ${c.req.path} needs role ${access} (or admin)` }, 403);
      }
      const racks: RackGrant = entry.role === 'admin' ? '*' : entry.racks;
      // A rack's status report names its rack in the path: checked here. An ingest body names
      // its rack inside; the ingest route checks that once the container is decoded.
      const m = c.req.method === 'POST' ? rackStatusPath.exec(c.req.path) : null;
      if (m !== null && !mayRack(racks, m[1]!)) return this.rackRefused(c, entry.name, racks, m[1]!);
      c.set('apmClient', entry.name);
      c.set('apmRacks', racks);
      // Checked again only once the tokens were reloaded (SIGHUP): a hash per check.
      c.set('apmStillAllowed', () => {
        const now = this.tokens;
        if (now === tokens) return true;
        const e = now === null ? undefined : now.check(presented);
        return now === null || (e !== undefined && allows(e.role, access));
      });
      return next();
    };
  }

  /** 403 for a token speaking for a rack it does not name (counted). */
  rackRefused(c: Context, token: string, grant: RackGrant, rack: string): Response {
    this.failures.rack++;
    return c.json(
      {
        error: `token "${token}" may speak for ${grantText(grant)}, not for rack ${JSON.stringify(rack.slice(0, 80))}; give rack ${JSON.stringify(rack.slice(0, 80))} its own token ('apm token create --role ingest --name rack-<id> --racks <id> --tokens <file>') or add it to this token's racks= and SIGHUP the core`,
        reason: 'rack_not_allowed',
      },
      403,
    );
  }
}

function unauthorized(c: Context, error: string): Response {
  return c.json({ error }, 401, { 'WWW-Authenticate': 'Bearer realm="apm"' });
}

function presentedToken(c: Context): string | null {
  const h = c.req.header('authorization');
  if (h !== undefined) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    return m === null ? null : m[1]!;
  }
  // Browsers' EventSource cannot set headers, so the dashboard's live stream passes the token
  // in the URL. Only there: URLs end up in logs and histories, so every other route insists
  // on the header.
  if ((c.req.method === 'GET' || c.req.method === 'HEAD') && livePath.test(c.req.path)) return c.req.query('access_token') ?? null;
  return null;
}

/** The peer's address on a real socket; "local" for in-process requests (tests). */
export function clientAddress(c: Context): string {
  const env = c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined;
  return env?.incoming?.socket?.remoteAddress ?? 'local';
}
