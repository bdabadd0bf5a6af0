// The stored-query catalog's answers when a change is durable but a worker cannot be told now.

import { describe, expect, it, vi } from 'vitest';
import { Hono } from 'hono';
import { WorkerError, type ShardPool } from '../pool.js';
import { QueryCatalog, type DefinitionStore } from './catalog.js';
import { addQueryRoutes } from './routes.js';
import type { StoredQuery } from './stored.js';

/** Definitions in memory, and a pool whose workers answer sync with `syncError` (null: they take it). */
function catalogWith(syncError: () => Error | null, o: { failStore?: boolean } = {}) {
  const kept = new Map<string, StoredQuery>();
  const db: DefinitionStore = {
    load: () => [...kept.values()],
    create: async (d) => {
      if (o.failStore === true) throw new Error('MDB_MAP_FULL: Environment mapsize limit reached');
      kept.set(d.id, d);
    },
    update: async (d) => void kept.set(d.id, d),
    remove: async (id) => void kept.delete(id),
  };
  const synced: StoredQuery[][] = [];
  const pool = {
    onWindow: null,
    sync: async (defs: StoredQuery[]) => {
      synced.push(defs);
      const e = syncError();
      if (e !== null) throw e;
    },
  } as unknown as ShardPool;
  const catalog = new QueryCatalog(db, pool, { queriesMax: 2 });
  const app = new Hono();
  addQueryRoutes(app, pool, catalog);
  const post = (body: object) => app.request('/api/v1/queries', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { kept, synced, catalog, app, post };
}

describe('stored-query changes a worker cannot be told of now', () => {
  it('stand, answered as done, once: the worker gets them when it is back (before: 409 although created, and a retry made it twice)', async () => {
    let restarting = true;
    const c = catalogWith(() => (restarting ? new WorkerError('worker 0 is restarting; retry') : null));
    const spy = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const r = await c.post({ name: 'x', query: 'FROM * SELECT a WINDOW 5s COMPUTE max' });
      expect(r.status).toBe(201);
      const { id } = (await r.json()) as { id: string };
      expect([...c.kept.keys()]).toEqual([id]);
      expect(c.catalog.syncDeferred).toBe(1);
      const put = await c.app.request(`/api/v1/queries/${id}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'y', query: 'FROM * SELECT b WINDOW 5s COMPUTE max' }) });
      expect(put.status).toBe(200);
      expect(c.kept.get(id)?.query).toBe('FROM * SELECT b WINDOW 5s COMPUTE max');
      restarting = false;
      expect((await c.app.request(`/api/v1/queries/${id}`, { method: 'DELETE' })).status).toBe(204);
      expect(c.kept.size).toBe(0);
      expect(c.synced.at(-1)).toEqual([]);
    } finally {
      spy.mockRestore();
    }
  });

  it('answers 409 only at the bound, 503 when the store refuses (nothing stored), and names a long query by its beginning', async () => {
    const c = catalogWith(() => null);
    const long = `FROM ${Array.from({ length: 40 }, (_, i) => `web-${i}`).join(', ')} SELECT a WINDOW 5s COMPUTE max`;
    expect(long.length).toBeGreaterThan(200);
    const r = await c.post({ query: long });
    expect(r.status).toBe(201);
    expect(((await r.json()) as { name: string }).name).toBe(`${long.slice(0, 199)}…`);
    expect((await c.post({ query: 'FROM * SELECT b WINDOW 5s COMPUTE max' })).status).toBe(201);
    const third = await c.post({ query: 'FROM * SELECT c WINDOW 5s COMPUTE max' });
    expect([third.status, ((await third.json()) as { error: string }).error]).toEqual([409, 'at most 2 stored queries; delete one first']);
    const full = catalogWith(() => null, { failStore: true });
    const refused = await full.post({ query: 'FROM * SELECT a WINDOW 5s COMPUTE max' });
    expect(refused.status).toBe(503);
    expect(full.kept.size).toBe(0);
  });
});

describe('stored-query names', () => {
  it('regression: refuses control and bidirectional-override characters (before: a name could reverse the text of its panel header and delete confirmation)', async () => {
    const c = catalogWith(() => null);
    for (const name of ['x\u0000', 'tab\there', 'a\u202ereversed', 'b\u2066isolate', '\u009fc1']) {
      const r = await c.post({ name, query: 'FROM * SELECT a WINDOW 5s COMPUTE max' });
      expect(r.status, JSON.stringify(name)).toBe(400);
      expect(((await r.json()) as { error: string }).error).toMatch(/control or bidirectional-formatting character/);
    }
    expect(c.kept.size).toBe(0);
    expect((await c.post({ name: 'Fleet CPU — p99 (µs) ✓', query: 'FROM * SELECT a WINDOW 5s COMPUTE max' })).status).toBe(201);
  });
});

describe('definitions another writer made (a cluster\'s KV watch) beyond the limit', () => {
  const def = (i: number, query = `FROM * SELECT m${i} WINDOW 5s COMPUTE max`): StoredQuery => ({ id: `q${i}`, name: `q${i}`, query, createdMs: i });

  it('are set aside, listed and not evaluated; a deletion admits the oldest; the lists are bounded (before: every one kept and evaluated)', async () => {
    const c = catalogWith(() => null);
    const spy = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      for (let i = 0; i < 5; i++) await c.catalog.applyChange(`q${i}`, def(i));
      // Two kept (queriesMax 2) and handed to the workers; two set aside; the fifth neither.
      expect(c.catalog.list().map((d) => d.id)).toEqual(['q0', 'q1']);
      expect(c.synced.at(-1)!.map((d) => d.id)).toEqual(['q0', 'q1']);
      expect(c.catalog.unloadable.map((u) => u.id)).toEqual(['q2', 'q3']);
      expect(c.catalog.unloadable[0]!.error).toMatch(/beyond the limit of 2/);
      expect(c.catalog.definitionsDropped).toBe(1);
      // Text that does not parse is set aside in its own bounded list.
      for (let i = 5; i < 8; i++) await c.catalog.applyChange(`q${i}`, def(i, 'FROM * SELECT'));
      expect(c.catalog.unloadable.map((u) => u.id)).toEqual(['q5', 'q6', 'q2', 'q3']);
      expect(c.catalog.definitionsDropped).toBe(2);
      // Another node deleted q0: the oldest set aside beyond the limit takes its place.
      await c.catalog.applyChange('q0', null);
      expect(c.catalog.list().map((d) => d.id)).toEqual(['q1', 'q2']);
      expect(c.synced.at(-1)!.map((d) => d.id)).toEqual(['q1', 'q2']);
      // A set-aside definition is deleted through the API.
      expect((await c.app.request('/api/v1/queries/q3', { method: 'DELETE' })).status).toBe(204);
      expect(c.catalog.unloadable.map((u) => u.id)).toEqual(['q5', 'q6']);
      // And through the API a kept one, which admits nothing more (nothing left beyond the limit).
      expect((await c.app.request('/api/v1/queries/q1', { method: 'DELETE' })).status).toBe(204);
      expect(c.catalog.list().map((d) => d.id)).toEqual(['q2']);
    } finally {
      spy.mockRestore();
    }
  });

  it('at start: the store holding more than the limit keeps the limit', () => {
    const c = catalogWith(() => null);
    for (let i = 0; i < 4; i++) c.kept.set(`q${i}`, def(i));
    const spy = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const again = new QueryCatalog({ load: () => [...c.kept.values()], create: async () => undefined, update: async () => undefined, remove: async () => undefined }, { onWindow: null, sync: async () => undefined } as unknown as ShardPool, { queriesMax: 2 });
      expect(again.list().map((d) => d.id)).toEqual(['q0', 'q1']);
      expect(again.unloadable.map((u) => u.id)).toEqual(['q2', 'q3']);
    } finally {
      spy.mockRestore();
    }
  });
});

describe('regression: a window revised while the catalog loads its results at start', () => {
  it('replaces the loaded version in memory (before: dropped, and the results API served the old one until the next restart)', async () => {
    const def: StoredQuery = { id: 'q1', name: 'q', query: 'FROM * SELECT m WINDOW 5s COMPUTE max', createdMs: 0 };
    const w = (startMs: number, max: number, revision: number) => ({ startMs, endMs: startMs + 5000, servers: 1, count: 5, values: { max }, revision });
    const pool = {
      onWindow: null as null | ((id: string, win: ReturnType<typeof w>, query: string) => void),
      sync: async () => undefined,
      // While the newest results are read, the worker revises the first of them and evaluates a new one.
      results: async () => {
        pool.onWindow!('q1', w(5000, 9, 1), def.query);
        pool.onWindow!('q1', w(15000, 3, 0), def.query);
        return [JSON.stringify(w(5000, 1, 0)), JSON.stringify(w(10000, 2, 0))];
      },
    };
    const db: DefinitionStore = { load: () => [def], create: async () => undefined, update: async () => undefined, remove: async () => undefined };
    const catalog = new QueryCatalog(db, pool as unknown as ShardPool, { queriesMax: 10 });
    await catalog.start();
    const got = (await catalog.resultsJson('q1', 0, 100_000, 100)).map((j) => JSON.parse(j) as ReturnType<typeof w>);
    expect(got.map((x) => [x.startMs, x.values.max, x.revision])).toEqual([
      [5000, 9, 1],
      [10000, 2, 0],
      [15000, 3, 0],
    ]);
  });
});
