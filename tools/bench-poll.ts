// A worker thread of `apm bench` (tools/bench-pause.ts): GET /healthz on one keep-alive
// connection every `intervalMs`, each round trip recorded into shared memory, so the bench's
// main thread (building bodies, collecting garbage) never delays or hides a slow answer.
// Layout of `samples`: pairs (start, round trip) in ms since the epoch and ms; `state`:
// [0] samples recorded, [1] stop flag; `inFlight[0]`: start of the request in flight (0: none).

import { workerData } from 'node:worker_threads';
import { Client } from 'undici';

export interface PollerData {
  url: string;
  intervalMs: number;
  samples: SharedArrayBuffer;
  state: SharedArrayBuffer;
  inFlight: SharedArrayBuffer;
}

const d = workerData as PollerData;
const samples = new Float64Array(d.samples);
const state = new Int32Array(d.state);
const inFlight = new Float64Array(d.inFlight);
const client = new Client(d.url, { keepAliveTimeout: 600_000, keepAliveMaxTimeout: 600_000 });
const capacity = samples.length / 2;

while (Atomics.load(state, 1) === 0) {
  const startMs = Date.now();
  const t0 = performance.now();
  inFlight[0] = startMs;
  let ok = true;
  try {
    const res = await client.request({ path: '/healthz', method: 'GET' });
    await res.body.dump();
    ok = res.statusCode === 200;
  } catch {
    ok = false;
  }
  const rttMs = performance.now() - t0;
  inFlight[0] = 0;
  const n = Atomics.load(state, 0);
  if (n < capacity) {
    samples[2 * n] = startMs;
    // A failed request is recorded as a negative round trip: the bench refuses such a run.
    samples[2 * n + 1] = ok ? rttMs : -rttMs;
    Atomics.store(state, 0, n + 1);
  }
  const wait = d.intervalMs - (performance.now() - t0);
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}
await client.close();
