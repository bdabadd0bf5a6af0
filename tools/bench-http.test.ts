import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpLoad, parseWrk, wrkInstalled } from './bench-http.js';

// wrk 4.1.0 (Debian) with --latency, as the query bench reads it.
const sample = `Running 10s test @ http://127.0.0.1:40000/api/v1/queries/q1/results
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   460.50us  305.29us   7.42ms   92.74%
    Req/Sec    14.61k     1.40k   16.91k    85.15%
  Latency Distribution
     50%  383.00us
     75%  520.00us
     90%  699.00us
     99%    1.72ms
  146856 requests in 10.10s, 15.66GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  14540.85
Transfer/sec:      1.55GB
`;

describe('bench HTTP load', () => {
  it("reads wrk's figures in ms, counting non-2xx answers and socket errors as failed", () => {
    expect(parseWrk(sample)).toEqual({ client: 'wrk', requests: 146856, requestsPerS: 14540.85, meanMs: 0.4605, p50Ms: 0.383, p90Ms: 0.699, p99Ms: 1.72, maxMs: 7.42, failed: 7 });
    expect(parseWrk(sample.replace('7.42ms', '1.50s')).maxMs).toBe(1500);
  });

  it('refuses output it cannot read rather than giving zeros', () => {
    expect(() => parseWrk('unable to connect to 127.0.0.1:1 Connection refused')).toThrow(/not understood|no 50% line/);
    expect(() => parseWrk(sample.replace(/ {5}99%.*\n/, ''))).toThrow(/no 99% line/);
    expect(() => parseWrk(sample.replace('1.72ms', '1.72xs'))).toThrow(/cannot read the time/);
  });

  describe('against a real server', () => {
    let server: Server;
    let base = '';
    beforeAll(async () => {
      server = createServer((req, res) => {
        res.writeHead(req.url === '/ok' ? 200 : 500, { 'content-type': 'text/plain' });
        res.end('x'.repeat(1000));
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    });
    afterAll(() => new Promise<void>((r) => server.close(() => r())));

    // .ci/run installs wrk; a machine without it runs the autocannon case only.
    for (const client of wrkInstalled() ? (['wrk', 'autocannon'] as const) : (['autocannon'] as const)) {
      it(`measures with ${client}, and counts refusals as failed`, async () => {
        const ok = await httpLoad(client, `${base}/ok`, 2, 1);
        expect(ok.client).toBe(client);
        expect(ok.requests).toBeGreaterThan(100);
        expect(ok.requestsPerS).toBeGreaterThan(100);
        expect(ok.failed).toBe(0);
        expect(ok.p99Ms).toBeGreaterThanOrEqual(ok.p50Ms);
        expect(ok.maxMs).toBeGreaterThan(0);
        const refused = await httpLoad(client, `${base}/no`, 2, 1);
        expect(refused.failed).toBeGreaterThan(100);
      }, 20_000);
    }
  });
});
