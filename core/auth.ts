// API tokens of the core (DESIGN §5 "Auth", issue 8). A tokens file holds one token a line:
//   <sha-256 hex of the token> <role> <name>
// ('#' comments and blank lines allowed). Only hashes are stored, so the file is not a secret
// worth stealing; `apm token create` writes it. Clients send `Authorization: Bearer <token>`.

import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Context, MiddlewareHandler } from 'hono';
import { coreLimits } from './limits.js';

export const roles = ['read', 'write', 'ingest', 'admin'] as const;
export type Role = (typeof roles)[number];
/** What a route needs: a role, or nothing (health check, dashboard page and assets). */
export type Access = Role | 'public';

export interface TokenEntry {
  hashHex: string;
  hash: Buffer;
  role: Role;
  name: string;
}

declare module 'hono' {
  interface ContextVariableMap {
    /** Who is asking: the token's name, or the client address when auth is off (rate limits key on it). */
    apmClient: string;
  }
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
    if (fields.length !== 3) throw new TokenFileError(`${where}: expected "<sha256 hex> <role> <name>", got ${fields.length} fields; fix or remove the line`);
    const [hashHex, role, name] = fields as [string, string, string];
    if (!/^[0-9a-f]{64}$/.test(hashHex)) throw new TokenFileError(`${where}: ${JSON.stringify(hashHex.slice(0, 80))} is not a SHA-256 hex digest (64 lower-case hex digits); create entries with 'apm token create'`);
    if (!isRole(role)) throw new TokenFileError(`${where}: role ${JSON.stringify(role)} is not one of ${roles.join(', ')}`);
    if (!tokenNamePattern.test(name)) throw new TokenFileError(`${where}: name ${JSON.stringify(name.slice(0, 80))} is not ${tokenNamePattern.source}`);
    const dup = lineOf.get(hashHex);
    if (dup !== undefined) throw new TokenFileError(`${where}: the same token hash as line ${dup}; remove one`);
    lineOf.set(hashHex, i + 1);
    out.push({ hashHex, hash: Buffer.from(hashHex, 'hex'), role, name });
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
    return new TokenSet(parseTokens(text, file));
  }

  get size(): number {
    return this.byHash.size;
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
  if (m === 'GET' && (path === '/' || path === '/healthz' || path.startsWith('/ui/'))) return 'public';
  // Racks send batches and their own status report (the dashboard's fleet view) with one token.
  if (m === 'POST' && (path === '/api/v1/ingest' || /^\/api\/v1\/racks\/[^/]+\/status$/.test(path))) return 'ingest';
  // A rack asks for the shard count before it cuts its sections (issue 12).
  if (m === 'GET' && path === '/api/v1/placement') return 'ingest';
  if (m === 'GET') return 'read';
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

export interface AuthOptions {
  /** The accepted tokens; null: auth is off (the loopback dev default), every request passes. */
  tokens: TokenSet | null;
}

/** Checks every request's token against the route's role; counts failures by reason. */
export class ApiAuth {
  readonly failures = { missing: 0, unknown: 0, forbidden: 0 };
  tokens: TokenSet | null;

  constructor(opts: AuthOptions) {
    this.tokens = opts.tokens;
  }

  middleware(): MiddlewareHandler {
    return async (c, next) => {
      const tokens = this.tokens;
      if (tokens === null) {
        c.set('apmClient', clientAddress(c));
        return next();
      }
      const access = accessFor(c.req.method, c.req.path);
      if (access === 'public') {
        c.set('apmClient', clientAddress(c));
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
      c.set('apmClient', entry.name);
      return next();
    };
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
