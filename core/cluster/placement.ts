// Shard placement of a core cluster (issue 13): which nodes own each shard. One node, the
// placer (the live node with the smallest id), computes the next placement from the current
// one and writes it to KV apm-placement by compare-and-set; every node reads it.
//
// A shard has `replicas` owners. A node that is to become an owner first "joins" the shard:
// it copies a current owner's rows and reads the rest of the shard's stream; once it reports
// the shard caught up (its NodeRecord.ready), the placer makes it an owner and drops one
// surplus owner (a dead one first, then the most loaded). Moves happen a few at a time
// (`movesMax` shards joining at once across the cluster), so copies never swamp the owners.
// A dead owner is replaced only after `replaceAfterMs`: a node that restarts within that time
// keeps its shards and catches up from its own consumers.

import type { NodeRecord, PlacementDoc } from './view.js';

export interface PlacerInput {
  current: PlacementDoc | null;
  shards: number;
  replicas: number;
  /**
   * Every known node: live or not, how long since its last heartbeat, the shards it reports
   * caught up, and those whose copy into it keeps failing (NodeRecord.copyFailing). An
   * `unusable` node (its record does not check) keeps what it owns while it is live, for
   * replaceAfterMs after its record stopped checking (`unusableForMs`: nothing can be routed to
   * it, so its shards have one owner fewer), and is never picked to join a shard nor kept as a
   * joiner.
   */
  nodes: { id: string; live: boolean; silentMs: number; ready: ReadonlySet<number>; copyFailing?: ReadonlySet<number>; unusable?: boolean; unusableForMs?: number }[];
  replaceAfterMs: number;
  movesMax: number;
}

/** The next placement, or null when the current one stands. Pure: the same input gives the same output. */
export function nextPlacement(p: PlacerInput): PlacementDoc | null {
  // The nodes shards may be placed on; an unusable node's heartbeat still keeps its own shards (isLive).
  const live = p.nodes.filter((n) => n.live && n.unusable !== true).map((n) => n.id).sort();
  if (live.length === 0) return null;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  if (p.current === null || p.current.shards.length !== p.shards) {
    // A new cluster: round robin over the live nodes; every owner reads its streams from the start.
    const r = Math.min(p.replicas, live.length);
    return { shards: Array.from({ length: p.shards }, (_, k) => ({ owners: Array.from({ length: r }, (_, j) => live[(k + j) % live.length]!), joining: [] })) };
  }
  const doc: PlacementDoc = { shards: p.current.shards.map((s) => ({ owners: [...s.owners], joining: [...s.joining] })) };
  const isLive = (id: string) => byId.get(id)?.live === true;
  const replaceable = (id: string) => {
    const n = byId.get(id);
    return n === undefined || (!n.live && n.silentMs >= p.replaceAfterMs) || (n.unusable === true && (n.unusableForMs ?? 0) >= p.replaceAfterMs);
  };
  const load = new Map<string, number>(live.map((id) => [id, 0]));
  for (const s of doc.shards) for (const id of [...s.owners, ...s.joining]) if (load.has(id)) load.set(id, load.get(id)! + 1);

  // 1. Promote joiners that caught up; drop surplus owners (replaceable first, then dead, then the most loaded).
  for (const [k, s] of doc.shards.entries()) {
    for (const id of [...s.joining]) {
      if (!isLive(id) || !byId.get(id)!.ready.has(k)) continue;
      s.joining = s.joining.filter((j) => j !== id);
      s.owners.push(id);
    }
    while (s.owners.length > p.replicas) {
      const victim = [...s.owners].sort((a, b) => rank(b) - rank(a) || (load.get(b) ?? 0) - (load.get(a) ?? 0) || (a < b ? 1 : -1))[0]!;
      s.owners = s.owners.filter((o) => o !== victim);
      if (load.has(victim)) load.set(victim, load.get(victim)! - 1);
    }
  }
  // Dropped first: a replaceable owner, then a dead one or one whose record does not check.
  function rank(id: string): number {
    return replaceable(id) ? 2 : isLive(id) && byId.get(id)!.unusable !== true ? 0 : 1;
  }
  // Joiners that died, or whose copies keep failing (a copy they can never finish held a move
  // slot for good: eight such stopped every dead owner's replacement), are dropped; another node
  // is picked, not one whose copy of that shard fails.
  const failing = (id: string, k: number) => byId.get(id)?.copyFailing?.has(k) === true;
  for (const [k, s] of doc.shards.entries()) {
    const keep = (id: string) => isLive(id) && byId.get(id)!.unusable !== true && !failing(id, k);
    for (const id of s.joining) if (!keep(id) && load.has(id)) load.set(id, load.get(id)! - 1);
    s.joining = s.joining.filter(keep);
  }
  let moving = doc.shards.reduce((n, s) => n + s.joining.length, 0);
  const leastLoaded = (exclude: ReadonlySet<string>, k: number) => live.filter((id) => !exclude.has(id) && !failing(id, k)).sort((a, b) => load.get(a)! - load.get(b)! || (a < b ? -1 : 1))[0];

  // 2. Replace owners dead for longer than replaceAfterMs (and fill shards short of owners).
  for (const [k, s] of doc.shards.entries()) {
    if (moving >= p.movesMax) break;
    const keep = s.owners.filter((o) => !replaceable(o)).length + s.joining.length;
    const want = Math.min(p.replicas, live.length);
    if (keep >= want) continue;
    const pick = leastLoaded(new Set([...s.owners, ...s.joining]), k);
    if (pick === undefined) continue;
    if (s.owners.length === 0) s.owners.push(pick); // nothing to copy from: it reads the stream
    else s.joining.push(pick);
    load.set(pick, load.get(pick)! + 1);
    moving++;
  }
  // 3. Balance: move a shard from the most to the least loaded live node while they differ by more than one.
  while (moving < p.movesMax) {
    const sorted = [...live].sort((a, b) => load.get(a)! - load.get(b)! || (a < b ? -1 : 1));
    const low = sorted[0]!;
    const high = sorted[sorted.length - 1]!;
    if (load.get(high)! - load.get(low)! <= 1) break;
    const s = doc.shards.find((x, k) => x.owners.includes(high) && !x.owners.includes(low) && !x.joining.includes(low) && x.joining.length === 0 && !failing(low, k));
    if (s === undefined) break;
    s.joining.push(low);
    load.set(low, load.get(low)! + 1);
    // The joiner replaces `high` once it is ready (step 1 drops the most loaded owner).
    load.set(high, load.get(high)! - 1);
    moving++;
  }
  return same(doc, p.current) ? null : doc;
}

function same(a: PlacementDoc, b: PlacementDoc): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * A placement rebuilt from the nodes' records, for a placer that has none to go by (the
 * document in KV does not parse, and this node never read a good one): each shard is owned by
 * the live nodes that consume it (their `applied` names it), so no node holding a shard's data
 * is dropped, and none without it becomes an owner without joining. Null when no node consumes
 * anything (a fresh placement then loses nothing).
 */
export function placementFromRecords(nodes: readonly Pick<NodeRecord, 'id' | 'applied'>[], shards: number): PlacementDoc | null {
  const doc: PlacementDoc = { shards: Array.from({ length: shards }, () => ({ owners: [], joining: [] })) };
  let any = false;
  for (const n of [...nodes].sort((a, b) => (a.id < b.id ? -1 : 1))) {
    for (const k of Object.keys(n.applied).map(Number)) {
      const s = doc.shards[k];
      if (s === undefined) continue;
      s.owners.push(n.id);
      any = true;
    }
  }
  return any ? doc : null;
}

/** Checks a placement read from KV (a bad document is an error, never a guess). */
export function parsePlacement(text: string, shards: number): PlacementDoc {
  const d = JSON.parse(text) as PlacementDoc;
  if (!Array.isArray(d.shards) || d.shards.length !== shards) throw new Error(`placement has ${Array.isArray(d.shards) ? d.shards.length : 'no'} shards; the cluster has ${shards}`);
  for (const s of d.shards) {
    if (!Array.isArray(s.owners) || !Array.isArray(s.joining) || ![...s.owners, ...s.joining].every((x) => typeof x === 'string')) throw new Error('placement: a shard without owners/joining lists');
  }
  return d;
}

/**
 * A node's record from KV apm-nodes, checked field by field and copied (nothing else kept): a
 * record another program wrote, or an older apm, threw in every placer round and route (`ready`
 * not an array, `applied` missing) and could pose as another node (its `id` won over its key).
 */
export function parseNodeRecord(text: string, key: string, shards: number): NodeRecord {
  const r = JSON.parse(text) as Record<string, unknown>;
  if (typeof r !== 'object' || r === null || Array.isArray(r)) throw new Error('not an object');
  if (r['id'] !== key) throw new Error(`its id ${JSON.stringify(r['id'])} is not its key`);
  const url = r['url'];
  if (typeof url !== 'string' || !/^https?:\/\/[^\s/]+/.test(url)) throw new Error(`url ${JSON.stringify(url)} is not an http(s) URL`);
  const int = (v: unknown, min: number, max: number, what: string): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`${what} ${JSON.stringify(v)} is not an integer in ${min}..${max}`);
    return v;
  };
  const workers = int(r['workers'], 1, 4096, 'workers');
  const startedMs = int(r['startedMs'], 0, Number.MAX_SAFE_INTEGER, 'startedMs');
  const readyIn = r['ready'];
  if (!Array.isArray(readyIn) || readyIn.length > shards) throw new Error(`ready is not a list of at most ${shards} shards`);
  const ready = readyIn.map((k) => int(k, 0, shards - 1, 'a ready shard'));
  const perShard = (v: unknown, what: string): Record<number, number> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${what} is not an object of shards`);
    const out: Record<number, number> = {};
    const entries = Object.entries(v);
    if (entries.length > shards) throw new Error(`${what} names more than ${shards} shards`);
    for (const [k, x] of entries) out[int(Number(k), 0, shards - 1, `a shard of ${what}`)] = int(x, -1, Number.MAX_SAFE_INTEGER, `${what}[${k}]`);
    return out;
  };
  const failingIn = r['copyFailing'] ?? [];
  if (!Array.isArray(failingIn) || failingIn.length > shards) throw new Error(`copyFailing is not a list of at most ${shards} shards`);
  const copyFailing = failingIn.map((k) => int(k, 0, shards - 1, 'a copyFailing shard'));
  return { id: key, url, workers, startedMs, ready, lag: perShard(r['lag'], 'lag'), applied: perShard(r['applied'], 'applied'), copyFailing };
}
