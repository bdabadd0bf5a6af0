import { describe, expect, it } from 'vitest';
import { overlapRetries, retryJetStream } from './log.js';

/** f() failing with each message in turn, then answering 'ok'. */
function failing(messages: string[]): { f: () => Promise<string>; calls: () => number } {
  let n = 0;
  return {
    f: async () => {
      const m = messages[n++];
      if (m !== undefined) throw new Error(m);
      return 'ok';
    },
    calls: () => n,
  };
}

describe('retryJetStream', () => {
  it('asks again while a create races another node\'s ("subjects overlap with an existing stream"), a leader is elected or a call times out', async () => {
    const r = failing(['subjects overlap with an existing stream', 'no responders available for request', 'TIMEOUT']);
    expect(await retryJetStream('KV apm-placement', r.f, 10_000)).toBe('ok');
    expect(r.calls()).toBe(4);
  });

  it('says at once when an overlap stays (another stream captures the subjects), instead of asking for a minute', async () => {
    const r = failing(Array.from({ length: 50 }, () => 'subjects overlap with an existing stream'));
    await expect(retryJetStream('KV apm-placement', r.f, 60_000)).rejects.toThrow(/^KV apm-placement: subjects overlap with an existing stream \(still after 3 retries: another stream of this NATS account captures these subjects/);
    expect(r.calls()).toBe(overlapRetries + 1);
  });

  it('throws any other error at once, named', async () => {
    const r = failing(['stream name already in use with a different configuration']);
    await expect(retryJetStream('KV apm-placement', r.f, 10_000)).rejects.toThrow(/^KV apm-placement: stream name already in use/);
    expect(r.calls()).toBe(1);
  });
});
