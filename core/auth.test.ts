import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KindCode } from '../schema/codec.js';
import { rackSecondBody } from '../schema/section.js';
import { buildColumns } from '../schema/testdata.js';
import { createApi } from './api.js';
import { accessFor, ApiAuth, hashToken, parseTokens, TokenFileError, TokenSet, type Role } from './auth.js';
import { openNode } from './node.js';
import type { WindowResult } from './query/eval.js';

const tokens: Record<Role, string> = { read: 'tok-read', write: 'tok-write', ingest: 'tok-ingest', admin: 'tok-admin' };
const file = Object.entries(tokens)
  .map(([role, t]) => `${hashToken(t)} ${role} ${role}-user`)
  .join('\n');
const auth = new ApiAuth({ tokens: new TokenSet(parseTokens(`# team tokens\n\n${file}\n`, 'tokens')) });
const dir = mkdtempSync(join(tmpdir(), 'apm-auth-'));
const node = await openNode({ dataDir: dir, workers: 1, shards: 8, queryLatenessMs: 0, flushGraceMs: 0, auth, limits: { ingestBodyBytesMax: 100_000 } });
afterAll(async () => {
  await node.close();
  rmSync(dir, { recursive: true, force: true });
});
const app = node.app;

describe('tokens file', () => {
  it('parses entries and names the bad line with what is wrong', () => {
    const h = hashToken('x');
    expect(parseTokens(`# c\n\n  ${h}  read  alice \n`, 'f').map((e) => [e.hashHex, e.role, e.name])).toEqual([[h, 'read', 'alice']]);
    const f = (text: string, want: RegExp) => expect(() => parseTokens(text, '/etc/apm/tokens')).toThrow(want);
    // Not hex.
    f(`${h} read a\nzz read bob`, /\/etc\/apm\/tokens line 2: .*not a SHA-256 hex digest/);
    // Unknown role.
    f(`${h} owner bob`, /line 1: role "owner" is not one of read, write, ingest, admin/);
    // Missing name.
    f(`${h} read`, /line 1: expected "<sha256 hex> <role> <name> \[racks=<rack>,…\]", got 2 fields/);
    // Name with a bad character.
    f(`${h} read bob/x`, /line 1: name "bob\/x"/);
    // The same hash twice.
    f(`${h} read a\n${h} admin b`, /line 2: the same token hash as line 1/);
    expect(() => parseTokens('nope', 'f')).toThrow(TokenFileError);
  });

  it('reads the racks an ingest token may speak for (racks=, issue 16.3), old lines too', () => {
    const h = hashToken('x');
    const racksOf = (text: string) => {
      const r = parseTokens(text, 'f')[0]!.racks;
      return r === '*' ? '*' : [...r];
    };
    expect(racksOf(`${h} ingest rack-r1 racks=r1`)).toEqual(['r1']);
    expect(racksOf(`${h} ingest relay racks=r1,r2,rack.03`)).toEqual(['r1', 'r2', 'rack.03']);
    expect(racksOf(`${h} ingest relay racks=*`)).toBe('*');
    // A line from before racks= parses, and speaks for no rack.
    expect(racksOf(`${h} ingest old-rack`)).toEqual([]);
    expect(new TokenSet(parseTokens(`${h} ingest old-rack`, 'f')).ingestWithoutRacks()).toEqual(['old-rack']);
    const f = (text: string, want: RegExp) => expect(() => parseTokens(text, 'f')).toThrow(want);
    // racks= on another role.
    f(`${h} read bob racks=r1`, /line 1: racks= applies to role ingest only/);
    // Not racks=.
    f(`${h} ingest r racks:r1`, /line 1: 4th field "racks:r1" is not racks=/);
    // A bad rack id, an empty one.
    f(`${h} ingest r racks=r1,r/2`, /line 1: racks=: rack id "r\/2" is not/);
    f(`${h} ingest r racks=r1,`, /line 1: racks=: rack id "" is not/);
  });

  it('accepts exactly the stored tokens, compared by hash', () => {
    const set = new TokenSet(parseTokens(`${hashToken('secret')} write ci`, 'f'));
    expect(set.check('secret')?.name).toBe('ci');
    expect(set.check('secreT')).toBeUndefined();
    expect(set.check(hashToken('secret'))).toBeUndefined(); // the hash itself is not a token
    expect(set.check('')).toBeUndefined();
  });

  it('maps routes to roles', () => {
    const f = (method: string, path: string, want: string) => expect(accessFor(method, path)).toBe(want);
    f('GET', '/healthz', 'public');
    f('GET', '/', 'public');
    f('GET', '/ui/app.js', 'public');
    // Browsers ask for it on every page load, without a token (it answered 401 and counted an auth failure).
    f('GET', '/favicon.ico', 'public');
    f('POST', '/api/v1/import', 'ingest');
    f('GET', '/metrics', 'read');
    f('HEAD', '/api/v1/servers', 'read');
    f('POST', '/api/v1/ingest', 'ingest');
    f('POST', '/api/v1/racks/r01/status', 'ingest');
    f('POST', '/api/v1/racks/r01/other', 'admin');
    f('POST', '/api/v1/queries', 'write');
    f('PUT', '/api/v1/queries/abc', 'write');
    f('DELETE', '/api/v1/queries/abc', 'write');
    f('POST', '/api/v1/anything-else', 'admin');
    f('POST', '/ui/x', 'admin');
  });
});

describe('auth middleware', () => {
  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
  const routes: { method: string; path: string; body?: string; need: Role | 'public' }[] = [
    { method: 'GET', path: '/api/v1/servers', need: 'read' },
    { method: 'GET', path: '/api/v1/metrics', need: 'read' },
    { method: 'GET', path: '/metrics', need: 'read' },
    { method: 'GET', path: '/api/v1/queries', need: 'read' },
    { method: 'GET', path: `/api/v1/query?q=${encodeURIComponent('FROM * SELECT cpu WINDOW 1s COMPUTE max')}&from=-1m`, need: 'read' },
    { method: 'POST', path: '/api/v1/queries', body: JSON.stringify({ name: 'q', query: 'FROM * SELECT cpu WINDOW 5s COMPUTE max' }), need: 'write' },
    { method: 'DELETE', path: '/api/v1/queries/ffffffff', need: 'write' },
    { method: 'POST', path: '/api/v1/ingest', body: 'not a batch', need: 'ingest' },
    { method: 'GET', path: '/healthz', need: 'public' },
    { method: 'GET', path: '/', need: 'public' },
    { method: 'GET', path: '/ui/app.js', need: 'public' },
  ];
  const allowed = (role: Role, need: Role | 'public') => need === 'public' || role === 'admin' || role === need || (role === 'write' && need === 'read');

  it('answers 401 without a token or with an unknown one, 403 when the role does not allow the route, and passes otherwise', async () => {
    for (const r of routes) {
      const req = (headers: Record<string, string>) => app.request(r.path, { method: r.method, headers: { 'content-type': 'application/json', ...headers }, ...(r.body === undefined ? {} : { body: r.body }) });
      for (const [name, headers] of [['none', {}], ['unknown', bearer('tok-nobody')], ['basic', { authorization: 'Basic dTpw' }]] as const) {
        const res = await req(headers);
        const want = r.need === 'public' ? expect.not.stringMatching(/^401$/) : '401';
        expect(String(res.status), `${r.method} ${r.path} with ${name}`).toEqual(want);
        if (r.need !== 'public') {
          expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
          expect(((await res.json()) as { error: string }).error).toMatch(name === 'unknown' ? /unknown token/ : /needs "Authorization: Bearer <token>"/);
        }
      }
      for (const role of Object.keys(tokens) as Role[]) {
        const res = await req(bearer(tokens[role]));
        if (allowed(role, r.need)) expect([401, 403], `${role}: ${r.method} ${r.path}`).not.toContain(res.status);
        else {
          expect(res.status, `${role}: ${r.method} ${r.path}`).toBe(403);
          expect(((await res.json()) as { error: string }).error).toContain(`needs role ${r.need}`);
        }
      }
    }
    const m = await (await app.request('/metrics', { headers: bearer(tokens.read) })).text();
    expect(m).toMatch(/apm_core_http_auth_failures_total\{reason="missing"\} [1-9]/);
    expect(m).toMatch(/apm_core_http_auth_failures_total\{reason="unknown"\} [1-9]/);
    expect(m).toMatch(/apm_core_http_auth_failures_total\{reason="forbidden"\} [1-9]/);
  });

  it('takes access_token from the URL only on the live stream (EventSource cannot set headers)', async () => {
    const def = await node.stored.create('live', 'FROM * SELECT cpu WINDOW 1s COMPUTE max', Date.now());
    const live = await app.request(`/api/v1/queries/${def.id}/live?access_token=${tokens.read}`);
    expect(live.status).toBe(200);
    expect(live.headers.get('content-type')).toMatch(/text\/event-stream/);
    await live.body!.cancel();
    expect((await app.request(`/api/v1/queries/${def.id}/live?access_token=nope`)).status).toBe(401);
    expect((await app.request(`/api/v1/queries/${def.id}/live?access_token=${tokens.ingest}`)).status).toBe(403);
    expect((await app.request(`/api/v1/queries/${def.id}/results?access_token=${tokens.read}`)).status).toBe(401);
    expect((await app.request(`/api/v1/queries?access_token=${tokens.admin}`)).status).toBe(401);
  });

  it('lets everything through when auth is off (loopback dev default)', async () => {
    const open = createApi({ pool: node.pool, servers: node.servers, stored: node.stored }, { ingestBodyBytesMax: 100_000 });
    expect((await open.request('/api/v1/servers')).status).toBe(200);
  });
});

describe('regression: any ingest token could erase or forge another rack\'s data (issue 16.3)', () => {
  // rack-r7 may speak for r7 only; the admin for any rack.
  const t = { r7: 'tok-r7', r1: 'tok-r1', admin: 'tok-adm', old: 'tok-old' };
  const rackAuth = new ApiAuth({
    tokens: new TokenSet(parseTokens(`${hashToken(t.r7)} ingest rack-r7 racks=r7\n${hashToken(t.r1)} ingest rack-r1 racks=r1\n${hashToken(t.admin)} admin me\n${hashToken(t.old)} ingest rack-old`, 'tokens')),
  });
  const now = Math.floor(Date.now() / 1000);
  const second = (rack: string, seq: number, value: number) =>
    rackSecondBody({ rack, session: 5, seq, second: now - 30 + seq, late: false, shards: 8, servers: [{ server: `${rack}-web`, blocks: [buildColumns([{ name: 'owned', kind: KindCode.Gauge, value }], [])] }], rollup: buildColumns([], [], ['owned']) });
  const as = (token: string, body: Uint8Array) => ({ method: 'POST', body, headers: { authorization: `Bearer ${token}` } });

  it("refuses a RackSecond or a status report of a rack the token does not name (403, counted); the rack's own data is then stored, not taken as duplicates", async () => {
    const d = mkdtempSync(join(tmpdir(), 'apm-auth-racks-'));
    const n = await openNode({ dataDir: d, workers: 1, shards: 8, queryLatenessMs: 0, flushGraceMs: 0, auth: rackAuth, limits: { ingestBodyBytesMax: 100_000 } });
    try {
      // r7's token posts r1's seqs 1..3 (empty of meaning, or forged values): refused, nothing stored.
      for (let seq = 1; seq <= 3; seq++) {
        const r = await n.app.request('/api/v1/ingest', as(t.r7, second('r1', seq, 666)));
        expect(r.status).toBe(403);
        expect(await r.json()).toMatchObject({ reason: 'rack_not_allowed', error: expect.stringMatching(/token "rack-r7" may speak for rack r7, not for rack "r1"/) });
      }
      // The real r1 then sends the same seqs: stored, not acknowledged as duplicates.
      for (let seq = 1; seq <= 3; seq++) expect((await n.app.request('/api/v1/ingest', as(t.r1, second('r1', seq, seq)))).status).toBe(204);
      // An ingest line from before racks= speaks for no rack; the admin for any.
      expect((await n.app.request('/api/v1/ingest', as(t.old, second('r1', 4, 4)))).status).toBe(403);
      expect((await n.app.request('/api/v1/ingest', as(t.admin, second('r1', 5, 5)))).status).toBe(204);
      expect((await n.app.request('/api/v1/ingest', as(t.r7, second('r7', 1, 70)))).status).toBe(204);
      const q = encodeURIComponent('FROM r1-web SELECT owned WINDOW 1m COMPUTE count, max');
      const windows = ((await (await n.app.request(`/api/v1/query?q=${q}&from=${(now - 120) * 1000}&to=${now * 1000}`, { headers: { authorization: `Bearer ${t.admin}` } })).json()) as { windows: WindowResult[] }).windows;
      expect(windows.reduce((a, w) => a + w.count, 0)).toBe(4);
      expect(Math.max(...windows.map((w) => w.values.max!))).toBe(5);
      // Status reports likewise.
      const report = (token: string, rack: string) => n.app.request(`/api/v1/racks/${rack}/status`, { method: 'POST', body: JSON.stringify({ partsLost: 1 }), headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } });
      expect((await report(t.r7, 'r1')).status).toBe(403);
      expect((await report(t.r1, 'r1')).status).toBe(204);
      expect((await report(t.admin, 'r9')).status).toBe(204);
      const m = await (await n.app.request('/metrics', { headers: { authorization: `Bearer ${t.admin}` } })).text();
      expect(m).toMatch(/^apm_core_http_auth_failures_total\{reason="rack"\} 5$/m);
      expect(m).toMatch(/^apm_core_sections_duplicate_total 0$/m);
    } finally {
      await n.close();
      rmSync(d, { recursive: true, force: true });
    }
  });

  it('lets any rack through with auth off (loopback dev default)', async () => {
    expect((await node.pool.ingest(second('r42', 1, 1), () => true)).status).toBe(204);
    const open = createApi({ pool: node.pool, servers: node.servers, stored: node.stored }, { ingestBodyBytesMax: 100_000 });
    expect((await open.request('/api/v1/ingest', { method: 'POST', body: second('r43', 1, 1) })).status).toBe(204);
  });
});

describe('regression: a token revoked while its live stream is open', () => {
  it('ends the stream at its next event, counted (before: it streamed on for good after the tokens file was reloaded without it)', async () => {
    const d = mkdtempSync(join(tmpdir(), 'apm-auth-revoke-'));
    const set = (lines: string[]) => new TokenSet(parseTokens(lines.join('\n'), 'tokens'));
    const a = new ApiAuth({ tokens: set([`${hashToken('adm')} admin adm`, `${hashToken('rd')} read rd`]) });
    const n = await openNode({ dataDir: d, workers: 1, shards: 8, queryLatenessMs: 0, flushGraceMs: 0, auth: a });
    try {
      const created = await n.app.request('/api/v1/queries', { method: 'POST', headers: { authorization: 'Bearer adm', 'content-type': 'application/json' }, body: JSON.stringify({ query: 'FROM * SELECT rv.g WINDOW 1s COMPUTE max' }) });
      const { id } = (await created.json()) as { id: string };
      const res = await n.app.request(`/api/v1/queries/${id}/live?access_token=rd`);
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      a.tokens = set([`${hashToken('adm')} admin adm`]); // the file reloaded (SIGHUP) without "rd"
      const nowMs = Date.now();
      const nowS = Math.floor(nowMs / 1000);
      for (let t = nowS - 2; t < nowS + 3; t++) {
        const body = rackSecondBody({ rack: 'rv', session: 1, seq: t, second: t, late: false, shards: 8, servers: [{ server: 'rv-1', blocks: [buildColumns([{ name: 'rv.g', kind: KindCode.Gauge, value: t }], [])] }], rollup: buildColumns([], []) });
        expect((await n.pool.ingest(body)).status).toBe(204);
      }
      await n.pool.tick(nowMs + 4000);
      const dec = new TextDecoder();
      let text = '';
      for (;;) {
        const r = await Promise.race([reader.read(), new Promise<null>((resolve) => setTimeout(() => resolve(null), 3000))]);
        expect(r).not.toBeNull(); // the stream ends, it does not go silent
        if (r!.done) break;
        text += dec.decode(r!.value);
      }
      expect(text).not.toContain('event: window');
      expect(await (await n.app.request('/metrics', { headers: { authorization: 'Bearer adm' } })).text()).toMatch(/^apm_core_live_subscribers_revoked_total 1$/m);
    } finally {
      await n.close();
      rmSync(d, { recursive: true, force: true });
    }
  });
});
