import { describe, expect, it } from 'vitest';
import { Encoder, KindCode, decodeFrame, type EdgeSecondMessage } from '../schema/codec.js';
import { buildColumns } from '../schema/testdata.js';
import { NameTable, hashesSignature } from './names.js';

const enc = new Encoder();
const header = { server: 's', session: 1, seq: 1, second: 1_790_000_000, part: 0, parts: 1, sentMs: 0 };

function decodeUnverified(frame: Uint8Array): EdgeSecondMessage {
  const r = decodeFrame(frame, 65_507, { verifyNameHashes: false });
  if (!r.ok || r.msg.type !== 'edgeSecond') throw new Error('decode failed');
  return r.msg;
}

describe('NameTable', () => {
  it('learns names whose hash matches, refuses forged ones, and relays what it learned', () => {
    const t = new NameTable(100);
    const good = buildColumns([{ name: 'a.b', kind: KindCode.Gauge, value: 1 }], [], ['a.b', 'c.d']);
    t.learn(decodeUnverified(enc.edgeSecond({ ...header, series: good })).series);
    expect(t.size).toBe(2);
    // A dictionary entry whose name was swapped: the frame decodes (hashes unchecked) but the table refuses it.
    const forged = { ...good, nameHashes: Uint32Array.from(buildColumns([], [], ['x.y']).nameHashes), nameEnds: Uint32Array.of(3), nameBytes: new Uint8Array(Buffer.from('zzz')) };
    expect(decodeFrame(enc.edgeSecond({ ...header, series: forged }), 65_507).ok).toBe(false);
    t.learn(decodeUnverified(enc.edgeSecond({ ...header, series: forged })).series);
    expect([t.size, t.badHashes]).toEqual([2, 1]);
    // Known names again: nothing new, nothing bad.
    t.learn(decodeUnverified(enc.edgeSecond({ ...header, series: good })).series);
    expect([t.size, t.badHashes, t.collisions]).toEqual([2, 1, 0]);
    const relay = t.forBatch(0);
    expect(Buffer.from(relay.nameBytes).toString('latin1')).toBe('a.bc.d');
    expect(t.forBatch(0).nameEnds.length).toBe(0);
  });

  it('stays bounded by forgetting names unseen for a generation, keeps names in use, and relays every new name', () => {
    // Before: once full, no new name was ever learned or relayed (a client naming metrics by
    // request id filled it in hours, and every later metric reached the core without a name).
    const t = new NameTable(8); // two generations of 4
    const learn = (names: string[]) => t.learn(decodeUnverified(enc.edgeSecond({ ...header, series: buildColumns([], [], names) })).series);
    const relayed = () => Buffer.from(t.forBatch(0).nameBytes).toString('latin1');
    const known = (name: string) => t.has(...(Array.from(buildColumns([], [], [name]).nameHashes) as [number, number]));
    learn(['a', 'b', 'c', 'd']);
    expect(relayed()).toBe('abcd');
    learn(['e', 'f']); // a new generation: a–d are the previous one
    expect(t.generation).toBe(1);
    expect(relayed()).toBe('ef');
    expect(known('b')).toBe(true); // in use: moved into the current generation
    learn(['g', 'h', 'i']); // another: a, c, d were not seen again
    expect([t.generation, t.forgotten]).toEqual([2, 3]);
    expect(relayed()).toBe('ghi');
    expect([known('a'), known('b'), known('e'), known('i')]).toEqual([false, true, true, true]);
    expect(t.size).toBeLessThanOrEqual(8);
    learn(['a']); // a forgotten name comes back: learned and relayed again
    expect(relayed()).toBe('a');
  });

  it('signs a server’s hash set: the same set gives the same signature, any added, removed or changed series another', () => {
    const cols = (names: string[]) => buildColumns(names.map((name) => ({ name, kind: KindCode.Gauge as const, value: 1 })), [{ name: 'lat', values: [1] }]);
    const f = (a: string[], b: string[], same: boolean) => expect(hashesSignature([cols(a)]) === hashesSignature([cols(b)])).toBe(same);
    // the same series, values aside
    f(['a', 'b'], ['a', 'b'], true);
    // one added, one removed, one renamed
    f(['a', 'b'], ['a', 'b', 'c'], false);
    f(['a', 'b'], ['a'], false);
    f(['a', 'b'], ['a', 'x'], false);
    // split across parts like one block
    expect(hashesSignature([cols(['a']), cols([])])).not.toBe(hashesSignature([cols(['a'])]));
  });
});
