import { describe, expect, it } from 'vitest';
import { emptyColumns, type EdgeSecondMessage } from '../schema/codec.js';
import { closedRecordBytesMax, nackBytesOf, openSecondBytes, Reassembly, type ReassemblyOptions } from './reassembly.js';

const t0 = 1_790_000_000;
const ms = (second: number, offset = 0) => second * 1000 + offset;
const peer = { address: '127.0.0.1', port: 5000 };
const opts: ReassemblyOptions = {
  serversMax: 3,
  openSecondsPerServerMax: 4,
  bytesHeldMax: 1_000_000,
  latenessMs: 2000,
  lateHorizonSeconds: 600,
  futureSeconds: 30,
  nackDelayMs: 100,
  nackIntervalMs: 250,
  nackRetriesMax: 2,
  allowList: null,
};

function part(server: string, second: number, p: number, parts: number, seq: number, session = 1): EdgeSecondMessage {
  return { type: 'edgeSecond', server, session, seq, second, part: p, parts, sentMs: 0, series: emptyColumns() };
}

describe('Reassembly', () => {
  it('regression: the records of closed seconds kept for late parts are bounded (late parts naming 4,096 parts made 4 KiB records without bound, uncounted)', () => {
    const r = new Reassembly({ ...opts, serversMax: 256 });
    r.close(ms(t0 + 600)); // every second up to now is closed: parts for them are late
    let refused = 0;
    for (let srv = 0; srv < 256; srv++) {
      // Seconds up to t0 + 597 are closed (the lateness is 2 s): 28 late seconds of each server.
      for (let k = 3; k <= 30; k++) if (r.accept(part(`s${srv}`, t0 + 600 - k, 0, 4096, k), 100, peer, ms(t0 + 600)) === 'memory_full') refused++;
      r.close(ms(t0 + 600)); // the late parts go on
    }
    expect(r.closedRecordBytes).toBeLessThanOrEqual(closedRecordBytesMax);
    expect(refused).toBe(256 * 28 - closedRecordBytesMax / 4096);
  });

  it('regression: records of seconds closed incomplete are bounded too; beyond the bound a second keeps none, counted, and its late parts are refused as memory_full (before: 255 edges sending part 0 of 4,096 held 62 MB of records in a minute)', () => {
    // Memory for 255 open seconds of 4,096 parts' tables (openSecondBytes): the records' bound is the one met.
    const r = new Reassembly({ ...opts, serversMax: 256, openSecondsPerServerMax: 64, bytesHeldMax: 64_000_000 });
    const perSecond = 255;
    const seconds = Math.ceil(closedRecordBytesMax / (perSecond * 4096)) + 5;
    for (let k = 0; k < seconds; k++) {
      for (let srv = 0; srv < perSecond; srv++) expect(r.accept(part(`s${srv}`, t0 + k, 0, 4096, 1 + 4096 * k), 100, peer, ms(t0 + k))).toBeNull();
      r.close(ms(t0 + k + 3));
    }
    expect(r.closedRecordBytes).toBeLessThanOrEqual(closedRecordBytesMax);
    expect(r.counters.closed_records_dropped).toBeGreaterThan(0);
    expect(r.counters.closed_records_dropped + Math.floor(r.closedRecordBytes / 4096)).toBe(perSecond * seconds);
    // The last second closed kept no record: a late part of it is refused, never taken twice.
    const last = t0 + seconds - 1;
    expect(r.accept(part('s0', last, 1, 4096, 9), 100, peer, ms(last + 3))).toBe('memory_full');
    expect(r.accept(part('s0', last, 0, 4096, 9), 100, peer, ms(last + 3))).toBe('memory_full');
  });

  it('regression: an open second\'s tables are charged to the memory bounds, by the parts its first datagram claims (before: only frame bytes, and 124-byte datagrams claiming 4,096 parts held 131 MiB outside every bound)', () => {
    const r = new Reassembly({ ...opts, serversMax: 256, openSecondsPerServerMax: 16, bytesHeldMax: 4_000_000 });
    let opened = 0;
    let refused = 0;
    for (let srv = 0; srv < 256; srv++) {
      for (let k = 0; k < 16; k++) {
        const why = r.accept(part(`s${srv}`, t0 + k, 0, 4096, 1 + k), 124, peer, ms(t0));
        if (why === null) opened++;
        else if (why === 'memory_full') refused++;
      }
    }
    expect(r.heldBytes).toBeLessThanOrEqual(4_000_000);
    expect(opened).toBe(Math.floor(4_000_000 / (124 + openSecondBytes(4096))));
    expect(opened + refused).toBe(256 * 16);
    // Closing gives every byte back.
    r.close(ms(t0 + 30));
    expect(r.heldBytes).toBe(0);
  });

  it('regression: NACKs for a second send at most twice the bytes its edge sent, plus one small NACK (before: one forged 124-byte datagram claiming 4,096 parts had 5.6 KB of NACKs sent to the address it named); an edge that sent more is asked for more', () => {
    const r = new Reassembly({ ...opts, nackRetriesMax: 5 });
    expect(r.accept(part('a', t0, 0, 4096, 1), 124, peer, ms(t0))).toBeNull();
    let sent = 0;
    for (let k = 1; k <= 6; k++) for (const n of r.nacks(ms(t0, 300 * k))) sent += nackBytesOf(n.missingParts.length);
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThanOrEqual(2 * 124 + 256);
    // A real edge that lost most of a second: its one part of 1,400 bytes buys a NACK of every missing part.
    expect(r.accept(part('b', t0, 0, 28, 1), 1400, peer, ms(t0))).toBeNull();
    const b = r.nacks(ms(t0, 2000)).find((n) => n.server === 'b');
    expect(b?.missingParts.length).toBe(27);
  });

  it('regression: a first part refused for memory opens no second (before: the empty second NACKed every part of it and counted them lost at its close)', () => {
    const r = new Reassembly({ ...opts, bytesHeldMax: 1000 });
    expect(r.accept(part('a', t0, 0, 2, 1), 800, peer, ms(t0))).toBeNull();
    expect(r.accept(part('b', t0, 0, 8, 1), 200, peer, ms(t0))).toBe('memory_full');
    expect(r.nacks(ms(t0, 500)).map((n) => n.server)).toEqual(['a']);
    r.close(ms(t0 + 3));
    expect(r.counters).toMatchObject({ parts_lost: 1, seconds_incomplete: 1 });
  });

  it('regression: a sequence gap longer than the lateness probes its closed seconds too, and asks for the other parts of one whose answer comes late; parts never answered are counted lost (before: only seconds still open were probed, and a late answer brought back part 0 alone)', () => {
    const r = new Reassembly(opts);
    expect(r.accept(part('a', t0, 0, 1, 1), 100, peer, ms(t0, 100))).toBeNull();
    r.close(ms(t0 + 4, 500)); // t0 closes; seconds up to t0 + 1 are closed
    // Seconds t0 + 1 .. t0 + 3 (3 parts each, sequences 2..10) lost on the way; t0 + 4 arrives.
    expect(r.accept(part('a', t0 + 4, 0, 3, 11), 100, peer, ms(t0 + 4, 500))).toBeNull();
    const asked = r.nacks(ms(t0 + 4, 600));
    expect(asked.filter((n) => n.second < t0 + 4).map((n) => [n.second, Array.from(n.missingParts)]).sort()).toEqual([[t0 + 1, [0]], [t0 + 2, [0]], [t0 + 3, [0]]]);
    expect(r.counters.gap_probes).toBe(3);
    // The edge answers the probe of t0 + 1 (closed): a late part, and its other parts are asked for.
    expect(r.accept(part('a', t0 + 1, 0, 3, 2), 100, peer, ms(t0 + 4, 700))).toBeNull();
    const again = r.nacks(ms(t0 + 4, 900)).find((n) => n.second === t0 + 1);
    expect(Array.from(again!.missingParts)).toEqual([1, 2]);
    expect(r.accept(part('a', t0 + 1, 1, 3, 3), 100, peer, ms(t0 + 4, 950))).toBeNull();
    // Part 2 never comes: asked again, then counted lost.
    const lostBefore = r.counters.parts_lost;
    for (let k = 1; k <= 6; k++) {
      const n = r.nacks(ms(t0 + 5, 250 * k)).find((x) => x.second === t0 + 1);
      if (n !== undefined) expect(Array.from(n.missingParts)).toEqual([2]);
    }
    expect(r.counters.parts_lost - lostBefore).toBe(1);
    expect(r.counters.parts_late).toBe(2);
    const late = r.close(ms(t0 + 9), { allLate: true }).filter((b) => b.late && b.second === t0 + 1);
    expect(late.flatMap((b) => b.servers.flatMap((x) => x.parts.map((m) => m.part))).sort()).toEqual([0, 1]);
  });

  it('regression: one server\'s second holds at most serverSecondBytesMax, so one edge cannot take every other server\'s room (before: memory_full for the others)', () => {
    const r = new Reassembly({ ...opts, serverSecondBytesMax: 300_000 });
    // A hog: 4,096 parts of 64 KB for one second; 4 are taken (256 KB), the rest refused.
    let refused = 0;
    for (let p = 0; p < 4096; p++) if (r.accept(part('hog', t0, p, 4096, 100 + p), 65_507, peer, ms(t0)) === 'server_second_full') refused++;
    expect(refused).toBe(4092);
    expect(r.heldBytes).toBe(4 * 65_507 + openSecondBytes(4096));
    // Another server's parts still fit.
    expect(r.accept(part('b', t0, 0, 1, 1), 40_000, peer, ms(t0))).toBeNull();
    expect(r.rejected).toMatchObject({ server_second_full: 4092, memory_full: 0 });
  });

  it('collects parts, NACKs the missing one after the delay, counts it recovered, closes at the watermark', () => {
    const r = new Reassembly(opts);
    expect(r.accept(part('a', t0, 0, 3, 10), 100, peer, ms(t0, 10))).toBeNull();
    expect(r.accept(part('a', t0, 2, 3, 12), 100, peer, ms(t0, 11))).toBeNull();
    expect(r.nacks(ms(t0, 50))).toEqual([]); // siblings too recent
    const [n] = r.nacks(ms(t0, 120));
    expect(n).toMatchObject({ server: 'a', session: 1, second: t0, peer });
    expect(Array.from(n!.missingParts)).toEqual([1]);
    expect(r.nacks(ms(t0, 200))).toEqual([]); // interval not passed
    r.accept(part('a', t0, 1, 3, 11), 100, peer, ms(t0, 300));
    r.accept(part('a', t0, 1, 3, 11), 100, peer, ms(t0, 301)); // duplicate
    expect(r.counters).toMatchObject({ parts_received: 3, parts_nacked: 1, parts_recovered: 1, parts_duplicate: 1 });
    expect(r.close(ms(t0 + 2, 999))).toEqual([]); // watermark: end of t0 + 2 s
    const [b] = r.close(ms(t0 + 3));
    expect(b!.second).toBe(t0);
    expect(b!.late).toBe(false);
    expect(b!.servers[0]!.parts.map((p) => p.part)).toEqual([0, 1, 2]);
    expect(r.heldBytes).toBe(0);
  });

  it('gives up after the retry bound and counts the part lost for good', () => {
    const r = new Reassembly(opts);
    r.accept(part('a', t0, 0, 2, 1), 10, peer, ms(t0));
    expect(r.nacks(ms(t0, 200)).length).toBe(1);
    expect(r.nacks(ms(t0, 500)).length).toBe(1);
    expect(r.nacks(ms(t0, 900)).length).toBe(0);
    r.close(ms(t0 + 3));
    expect(r.counters).toMatchObject({ parts_lost: 1, seconds_incomplete: 1 });
  });

  it('NACKs a server again when a later second of it misses a part, after its earlier seconds came whole (the walk skips servers with nothing missing)', () => {
    const r = new Reassembly(opts);
    for (const srv of ['a', 'b']) {
      r.accept(part(srv, t0, 0, 2, 1), 10, peer, ms(t0));
      r.accept(part(srv, t0, 1, 2, 2), 10, peer, ms(t0));
    }
    expect(r.nacks(ms(t0, 200))).toEqual([]);
    expect(r.nacks(ms(t0, 400))).toEqual([]);
    // Second t0 + 1: b misses part 1; a comes whole.
    r.accept(part('a', t0 + 1, 0, 2, 3), 10, peer, ms(t0 + 1));
    r.accept(part('a', t0 + 1, 1, 2, 4), 10, peer, ms(t0 + 1));
    r.accept(part('b', t0 + 1, 0, 2, 3), 10, peer, ms(t0 + 1));
    expect(r.nacks(ms(t0 + 1, 50))).toEqual([]); // not due yet, and b stays asked about
    const due = r.nacks(ms(t0 + 1, 150));
    expect(due.map((n) => [n.server, n.second, Array.from(n.missingParts)])).toEqual([['b', t0 + 1, [1]]]);
    expect(r.nacks(ms(t0 + 1, 450)).map((n) => n.server)).toEqual(['b']); // the retry
    r.accept(part('b', t0 + 1, 1, 2, 4), 10, peer, ms(t0 + 1, 500));
    expect(r.nacks(ms(t0 + 1, 800))).toEqual([]);
    expect(r.counters).toMatchObject({ parts_nacked: 1, parts_recovered: 1 });
  });

  it('forwards parts after the watermark as late data, once', () => {
    const r = new Reassembly(opts);
    r.accept(part('a', t0, 0, 2, 1), 10, peer, ms(t0));
    r.close(ms(t0 + 3));
    r.accept(part('a', t0, 1, 2, 2), 10, peer, ms(t0 + 4));
    r.accept(part('a', t0, 1, 2, 2), 10, peer, ms(t0 + 4));
    r.accept(part('a', t0, 0, 2, 1), 10, peer, ms(t0 + 4)); // already forwarded on time
    // Late parts of a second wait a moment for more of them: one late batch, not one per tick.
    expect(r.close(ms(t0 + 4, 50))).toEqual([]);
    const [late] = r.close(ms(t0 + 5));
    expect(late).toMatchObject({ second: t0, late: true });
    expect(late!.servers[0]!.parts.map((p) => p.part)).toEqual([1]);
    expect(r.counters).toMatchObject({ parts_late: 1, parts_duplicate: 2 });
    expect(r.heldBytes).toBe(0);
  });

  it('a second that closed whole refuses every later copy of its parts (duplicates; another part count: parts_mismatch)', () => {
    const r = new Reassembly(opts);
    r.accept(part('a', t0, 0, 2, 1), 10, peer, ms(t0));
    r.accept(part('a', t0, 1, 2, 2), 10, peer, ms(t0));
    const [whole] = r.close(ms(t0 + 3));
    expect(whole!.servers[0]!.parts.length).toBe(2);
    r.accept(part('a', t0, 0, 2, 1), 10, peer, ms(t0 + 4));
    r.accept(part('a', t0, 1, 2, 2), 10, peer, ms(t0 + 4));
    expect(r.accept(part('a', t0, 0, 3, 3), 10, peer, ms(t0 + 4))).toBe('parts_mismatch');
    expect(r.close(ms(t0 + 6))).toEqual([]);
    expect(r.counters).toMatchObject({ parts_late: 0, parts_duplicate: 2 });
    expect(r.heldBytes).toBe(0);
  });

  it('a fleet running behind sends one late batch per second per second, not one per tick', () => {
    const r = new Reassembly(opts);
    r.accept(part('a', t0, 0, 50, 1), 10, peer, ms(t0));
    r.close(ms(t0 + 3));
    // 45 parts of t0 trickle in over 900 ms, a close every 20 ms as the rack's tick does.
    const batches = [];
    for (let k = 1; k <= 45; k++) {
      r.accept(part('a', t0, k, 50, 1 + k), 10, peer, ms(t0 + 3, 20 * k));
      batches.push(...r.close(ms(t0 + 3, 20 * k + 10)));
    }
    batches.push(...r.close(ms(t0 + 5)));
    expect(batches).toHaveLength(1);
    expect(batches[0]!.servers[0]!.parts).toHaveLength(45);
    expect(r.heldBytes).toBe(0);
  });

  it('refuses what breaks a bound, with a reason', () => {
    const r = new Reassembly({ ...opts, allowList: null, serversMax: 1, openSecondsPerServerMax: 1, bytesHeldMax: 150 + openSecondBytes(2) });
    const now = ms(t0);
    expect(r.accept(part('a', t0 + 31, 0, 1, 1), 10, peer, now)).toBe('too_far_in_future');
    expect(r.accept(part('a', t0 - 601, 0, 1, 1), 10, peer, now)).toBe('too_old');
    expect(r.accept(part('a', t0, 0, 2, 1), 100, peer, now)).toBeNull();
    expect(r.accept(part('b', t0, 0, 1, 1), 10, peer, now)).toBe('too_many_servers');
    expect(r.accept(part('a', t0 - 1, 0, 1, 0), 10, peer, now)).toBe('too_many_open_seconds');
    expect(r.accept(part('a', t0, 1, 2, 2), 100, peer, now)).toBe('memory_full');
    expect(r.accept(part('a', t0, 1, 3, 2), 10, peer, now)).toBe('parts_mismatch');
    const allow = new Reassembly({ ...opts, allowList: new Set(['x']) });
    expect(allow.accept(part('a', t0, 0, 1, 1), 10, peer, now)).toBe('unknown_server');
  });

  it('forgets an edge silent for the late horizon with nothing held, so a new edge is not refused forever as too_many_servers', () => {
    const r = new Reassembly({ ...opts, serversMax: 2 });
    expect(r.accept(part('a', t0, 0, 1, 1), 10, peer, ms(t0))).toBeNull();
    expect(r.accept(part('b', t0, 0, 1, 1), 10, peer, ms(t0))).toBeNull();
    expect(r.close(ms(t0 + 3)).map((b) => b.second)).toEqual([t0]);
    // a goes silent (its server replaced); b keeps sending.
    expect(r.accept(part('b', t0 + 300, 0, 1, 2), 10, peer, ms(t0 + 300))).toBeNull();
    expect(r.accept(part('c', t0 + 300, 0, 1, 1), 10, peer, ms(t0 + 300))).toBe('too_many_servers');
    r.close(ms(t0 + 303));
    expect(r.serverCount).toBe(2);
    // A late horizon (600 s) after a's last datagram: a is forgotten, b is not.
    r.close(ms(t0 + 601));
    expect([r.serverCount, r.counters.servers_forgotten]).toEqual([1, 1]);
    expect(r.accept(part('c', t0 + 601, 0, 1, 1), 10, peer, ms(t0 + 601))).toBeNull();
    expect(r.accept(part('b', t0 + 601, 0, 1, 3), 10, peer, ms(t0 + 601))).toBeNull();
    expect(r.close(ms(t0 + 604)).map((b) => b.servers.map((x) => x.server).sort())).toEqual([['b', 'c']]);
    // b's sequence was kept across (no gap counted for it); a speaking again is a new edge.
    expect(r.counters.seq_gap_datagrams).toBe(0);
    expect(r.accept(part('a', t0 + 605, 0, 1, 7), 10, peer, ms(t0 + 605))).toBe('too_many_servers');
  });

  it('counts sequence gaps and probes a second lost whole', () => {
    const r = new Reassembly(opts);
    r.accept(part('a', t0, 0, 2, 100), 10, peer, ms(t0));
    r.accept(part('a', t0, 1, 2, 101), 10, peer, ms(t0));
    // Second t0+1 (3 datagrams, seq 102..104) vanished; t0+2 starts at 105.
    r.accept(part('a', t0 + 2, 0, 1, 105), 10, peer, ms(t0 + 2));
    expect(r.counters.seq_gap_datagrams).toBe(3);
    const probes = r.nacks(ms(t0 + 2, 10)).filter((n) => n.second === t0 + 1);
    expect(probes.map((p) => Array.from(p.missingParts))).toEqual([[0]]);
    // A restarted edge (new session) starts its sequence over without counting a gap.
    r.accept(part('a', t0 + 3, 0, 1, 0, 2), 10, peer, ms(t0 + 3));
    expect(r.counters).toMatchObject({ seq_gap_datagrams: 3, edge_restarts: 1 });
  });

  it('asks again for a second lost whole until a part of it arrives (the answer may be lost too), and counts one never answered', () => {
    const r = new Reassembly(opts);
    r.accept(part('a', t0, 0, 1, 100), 10, peer, ms(t0));
    r.accept(part('b', t0, 0, 1, 200), 10, peer, ms(t0));
    // Both lose second t0+1 whole (seq 101 / 201).
    r.accept(part('a', t0 + 2, 0, 1, 102), 10, peer, ms(t0 + 2));
    r.accept(part('b', t0 + 2, 0, 1, 202), 10, peer, ms(t0 + 2));
    const probesOf = (at: number) => r.nacks(at).filter((n) => n.second === t0 + 1).map((n) => n.server).sort();
    expect(probesOf(ms(t0 + 2, 10))).toEqual(['a', 'b']);
    expect(probesOf(ms(t0 + 2, 100))).toEqual([]); // within the interval
    // The resends were lost: asked again.
    expect(probesOf(ms(t0 + 2, 270))).toEqual(['a', 'b']);
    // a's answer arrives now: only b is asked again, and b never answers.
    r.accept(part('a', t0 + 1, 0, 1, 101), 10, peer, ms(t0 + 2, 300));
    expect(probesOf(ms(t0 + 2, 500))).toEqual([]); // within the interval after b's second probe
    expect(r.counters.seconds_unanswered).toBe(0);
    // b had nackRetriesMax (2) probes and a whole interval after the last: counted, asked no more.
    expect(probesOf(ms(t0 + 2, 530))).toEqual([]);
    expect(r.counters.seconds_unanswered).toBe(1);
    expect(probesOf(ms(t0 + 3, 500))).toEqual([]);
    expect(r.counters.seconds_unanswered).toBe(1);
  });

  it('after a restart, asks each edge for the seconds since the last spooled one and reassembles them before closing', () => {
    // The previous process spooled t0; it died at t0 + 1.7 and this one starts at t0 + 3.
    const r = new Reassembly({ ...opts, openSecondsPerServerMax: 16, resume: { afterSecond: t0, untilMs: ms(t0 + 3) + 2000 + 3000 } });
    r.accept(part('a', t0 + 3, 0, 1, 40), 10, peer, ms(t0 + 3, 100));
    // Probes for part 0 of t0+1 and t0+2: they are still in the edge's resend ring.
    expect(r.nacks(ms(t0 + 3, 150)).map((n) => [n.second, Array.from(n.missingParts)])).toEqual([
      [t0 + 1, [0]],
      [t0 + 2, [0]],
    ]);
    // The edge answers: t0+1 had 2 parts, t0+2 one; the second part of t0+1 is NACKed as usual.
    r.accept(part('a', t0 + 1, 0, 2, 30), 10, peer, ms(t0 + 3, 200));
    r.accept(part('a', t0 + 2, 0, 1, 32), 10, peer, ms(t0 + 3, 200));
    expect(r.nacks(ms(t0 + 3, 400)).map((n) => [n.second, Array.from(n.missingParts)])).toEqual([[t0 + 1, [1]]]);
    r.accept(part('a', t0 + 1, 1, 2, 31), 10, peer, ms(t0 + 3, 500));
    // Nothing closes during the hold, although t0+1's watermark (t0 + 4) passes meanwhile.
    expect(r.close(ms(t0 + 5))).toEqual([]);
    const closed = r.close(ms(t0 + 8, 1));
    expect(closed.map((b) => [b.second, b.late, b.servers[0]!.parts.length])).toEqual([
      [t0 + 1, false, 2],
      [t0 + 2, false, 1],
      [t0 + 3, false, 1],
    ]);
    expect(r.counters).toMatchObject({ resume_probes: 2, resume_seconds_unasked: 0, parts_lost: 0, seconds_incomplete: 0 });
    // An edge first heard after the hold was not missed by the restart: nothing asked, nothing counted.
    r.accept(part('b', t0 + 20, 0, 1, 1), 10, peer, ms(t0 + 20, 100));
    expect(r.counters).toMatchObject({ resume_probes: 2, resume_seconds_unasked: 0 });
  });

  it('after a long outage, asks for the 12 newest seconds, counts the older ones, and keeps room for the live ones', () => {
    // Spooled through t0; restarted at t0 + 30 (down 29 s); the edge's first datagram is for t0 + 30.
    const r = new Reassembly({ ...opts, openSecondsPerServerMax: 4, resume: { afterSecond: t0, untilMs: ms(t0 + 30) + 5000 } });
    r.accept(part('a', t0 + 30, 0, 1, 1), 10, peer, ms(t0 + 30, 100));
    expect(r.counters).toMatchObject({ resume_probes: 12, resume_seconds_unasked: 17 });
    // All 12 probed seconds answer, and the live ones keep coming during the hold: none refused.
    for (let sec = t0 + 18; sec < t0 + 30; sec++) expect(r.accept(part('a', sec, 0, 1, 0), 10, peer, ms(t0 + 30, 300))).toBeNull();
    for (let sec = t0 + 31; sec < t0 + 34; sec++) expect(r.accept(part('a', sec, 0, 1, 1), 10, peer, ms(sec, 10))).toBeNull();
    expect(r.rejected.too_many_open_seconds).toBe(0);
  });
});
