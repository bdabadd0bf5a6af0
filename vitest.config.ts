import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['{edge,rack,core,schema,tools,test}/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Process tests bind real loopback sockets; files run in parallel workers, tests in a file in order.
    pool: 'forks',
    // One worker process loads lmdb, hono, nats once for every file instead of once per file
    // (imports took 22 s of a 575 s run on 2 cores; 10 s with this). Files keep no shared state.
    isolate: false,
  },
});
