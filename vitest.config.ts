import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['{edge,rack,core,schema,tools,test}/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Process tests bind real loopback sockets; files run in parallel workers, tests in a file in order.
    pool: 'forks',
  },
});
