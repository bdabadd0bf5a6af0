import { describe, expect, test } from 'vitest';
import { nextPlacement, placementFromRecords, type PlacerInput } from './placement.js';
import type { PlacementDoc } from './view.js';

const node = (id: string, o: { live?: boolean; silentMs?: number; ready?: number[]; copyFailing?: number[]; unusable?: boolean; unusableForMs?: number } = {}) => ({ id, live: o.live ?? true, silentMs: o.silentMs ?? 0, ready: new Set(o.ready ?? []), copyFailing: new Set(o.copyFailing ?? []), unusable: o.unusable, unusableForMs: o.unusableForMs });
const base = (over: Partial<PlacerInput>): PlacerInput => ({ current: null, shards: 8, replicas: 2, nodes: [], replaceAfterMs: 60_000, movesMax: 4, ...over });
const load = (d: PlacementDoc) => {
  const m = new Map<string, number>();
  for (const s of d.shards) for (const id of [...s.owners, ...s.joining]) m.set(id, (m.get(id) ?? 0) + 1);
  return m;
};

describe('placement', () => {
  test('a new cluster: every shard on `replicas` distinct live nodes, evenly', () => {
    const d = nextPlacement(base({ nodes: [node('c'), node('a'), node('b'), node('d', { live: false })] }))!;
    expect(d.shards).toHaveLength(8);
    for (const s of d.shards) {
      expect(new Set(s.owners).size).toBe(2);
      expect(s.owners.every((o) => o !== 'd')).toBe(true);
      expect(s.joining).toEqual([]);
    }
    const l = load(d);
    expect(Math.max(...l.values()) - Math.min(...l.values())).toBeLessThanOrEqual(1);
    // The same input gives the same placement (two placers for a moment agree).
    expect(nextPlacement(base({ nodes: [node('a'), node('b'), node('c')] }))).toEqual(d);
    // And a placement that stands is not rewritten.
    expect(nextPlacement(base({ current: d, nodes: [node('a'), node('b'), node('c')] }))).toBeNull();
  });

  test('a dead owner keeps its shards until replaceAfterMs, then a live node joins them, and is promoted once ready', () => {
    const start = nextPlacement(base({ nodes: [node('a'), node('b'), node('c')] }))!;
    const dying = [node('a'), node('b'), node('c', { live: false, silentMs: 20_000 })];
    expect(nextPlacement(base({ current: start, nodes: dying }))).toBeNull();
    const dead = [node('a'), node('b'), node('c', { live: false, silentMs: 61_000 })];
    const j = nextPlacement(base({ current: start, nodes: dead }))!;
    const joined = j.shards.flatMap((s, k) => s.joining.map((id) => ({ k, id })));
    expect(joined.length).toBeGreaterThan(0);
    expect(joined.length).toBeLessThanOrEqual(4); // a few moves at a time
    for (const { k, id } of joined) {
      expect(start.shards[k]!.owners).toContain('c');
      expect(j.shards[k]!.owners).not.toContain(id);
    }
    // The joiners report ready: they become owners, c leaves those shards.
    const ready = (id: string) => joined.filter((x) => x.id === id).map((x) => x.k);
    const p = nextPlacement(base({ current: j, nodes: [node('a', { ready: ready('a') }), node('b', { ready: ready('b') }), dead[2]!] }))!;
    for (const { k, id } of joined) {
      expect(p.shards[k]!.owners).toContain(id);
      expect(p.shards[k]!.owners).not.toContain('c');
      expect(p.shards[k]!.owners).toHaveLength(2);
    }
  });

  test('a new node takes a fair share, a few shards at a time, and owners are dropped only once it is ready', () => {
    let d = nextPlacement(base({ shards: 16, nodes: [node('a'), node('b')] }))!;
    const nodes = () => ['a', 'b', 'c'].map((id) => node(id, { ready: d.shards.flatMap((s, k) => (s.joining.includes(id) || s.owners.includes(id) ? [k] : [])) }));
    for (let round = 0; round < 20; round++) {
      const n = nextPlacement(base({ shards: 16, current: d, nodes: nodes() }));
      if (n === null) break;
      for (const s of n.shards) expect(s.owners.length).toBeGreaterThanOrEqual(2); // never fewer owners while moving
      expect(n.shards.reduce((x, s) => x + s.joining.length, 0)).toBeLessThanOrEqual(4);
      d = n;
    }
    const l = load(d);
    expect(l.get('c')).toBeGreaterThanOrEqual(10); // 32 owner slots over 3 nodes
    expect(Math.max(...l.values()) - Math.min(...l.values())).toBeLessThanOrEqual(1);
    for (const s of d.shards) expect(s.joining).toEqual([]);
  });

  test('a joiner that dies is dropped; with one live node every shard keeps its owners', () => {
    const start = nextPlacement(base({ nodes: [node('a'), node('b')] }))!;
    start.shards[0]!.joining.push('c');
    const d = nextPlacement(base({ current: start, nodes: [node('a'), node('b'), node('c', { live: false, silentMs: 11_000 })] }))!;
    expect(d.shards[0]!.joining).toEqual([]);
    const alone = nextPlacement(base({ current: start, nodes: [node('a'), node('b', { live: false, silentMs: 5_000 })] }));
    for (const s of (alone ?? start).shards) expect(s.owners).toContain('b');
  });

  test('a joiner whose copies keep failing is dropped and another node joins instead; with no other, the shard waits without a joiner (before: it held a move slot for good)', () => {
    const start = nextPlacement(base({ nodes: [node('a'), node('b')] }))!;
    const dead = (k: number) => start.shards[k]!.owners.includes('b');
    // b died long ago; c and d are live: the placer sends joiners to b's shards.
    const j = nextPlacement(base({ current: start, nodes: [node('a'), node('b', { live: false, silentMs: 120_000 }), node('c'), node('d')] }))!;
    const k = j.shards.findIndex((s, i) => dead(i) && s.joining.length > 0);
    expect(k).toBeGreaterThanOrEqual(0);
    const joiner = j.shards[k]!.joining[0]!;
    const other = joiner === 'c' ? 'd' : 'c';
    // The joiner reports that its copies of shard k keep failing: dropped, the other node joins.
    const failing = nextPlacement(base({ current: j, nodes: [node('a'), node('b', { live: false, silentMs: 120_000 }), node(joiner, { copyFailing: [k] }), node(other)] }))!;
    expect(failing.shards[k]!.joining).toEqual([other]);
    // Both fail on it: nobody joins shard k, and the other shards' moves go on.
    const both = nextPlacement(base({ current: failing, nodes: [node('a'), node('b', { live: false, silentMs: 120_000 }), node('c', { copyFailing: [k] }), node('d', { copyFailing: [k] })] }));
    expect((both ?? failing).shards[k]!.joining).toEqual([]);
  });

  test('a placement rebuilt from what the nodes consume keeps every shard with the nodes holding it (a placer with no good document wrote a fresh round robin over an unreadable one: owners with the data dropped)', () => {
    const rebuilt = placementFromRecords([{ id: 'b', applied: { 0: 5, 1: 7 } }, { id: 'a', applied: { 1: 7, 2: 0, 9: 1 } }], 4)!;
    expect(rebuilt.shards).toEqual([
      { owners: ['b'], joining: [] },
      { owners: ['a', 'b'], joining: [] },
      { owners: ['a'], joining: [] },
      { owners: [], joining: [] },
    ]);
    // The placer goes on from it: shard 3 gets owners, shards 0 and 2 a second one by joining.
    const next = nextPlacement(base({ shards: 4, current: rebuilt, nodes: [node('a'), node('b')] }))!;
    expect(next.shards[1]).toEqual({ owners: ['a', 'b'], joining: [] });
    expect(next.shards[0]!.owners).toEqual(['b']);
    expect(next.shards[3]!.owners.length).toBeGreaterThan(0);
    expect(placementFromRecords([{ id: 'a', applied: {} }], 4)).toBeNull();
  });

  test('a live node whose record does not check keeps its shards until it is silent past replaceAfterMs, and is never picked (before: node.ts left it out, so it was taken for gone at once and its shards replaced)', () => {
    // c owns one shard, a and b the rest: c is the least loaded node.
    const start: PlacementDoc = { shards: Array.from({ length: 8 }, (_, k) => ({ owners: k === 1 ? ['a', 'c'] : ['a', 'b'], joining: [] })) };
    const withBad = [node('a'), node('b'), node('c', { unusable: true })];
    // Not replaced while it heartbeats, and not balanced onto.
    expect(nextPlacement(base({ current: start, nodes: withBad }))).toBeNull();
    // A shard with no owner at all is filled by a usable node, never by c.
    const empty: PlacementDoc = { shards: start.shards.map((s, k) => (k === 0 ? { owners: [], joining: [] } : s)) };
    const filled = nextPlacement(base({ current: empty, nodes: withBad }))!;
    expect(filled.shards[0]!.owners).toEqual(['b']);
    for (const s of filled.shards) expect(s.joining).not.toContain('c');
    // Unreadable for replaceAfterMs while it heartbeats: nothing can be routed to it, so its shard gets an owner that can answer.
    const stale = nextPlacement(base({ current: start, nodes: [node('a'), node('b'), node('c', { unusable: true, unusableForMs: 61_000 }), node('d')] }))!;
    expect(stale.shards[1]!.joining).toEqual(['d']);
    // Silent past replaceAfterMs, it is replaced like any dead owner.
    const gone = nextPlacement(base({ current: start, nodes: [node('a'), node('b'), node('c', { unusable: true, live: false, silentMs: 61_000 }), node('d')] }))!;
    expect(gone.shards[1]!.joining).toEqual(['d']);
  });
});
