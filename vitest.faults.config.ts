import { defineConfig } from 'vitest/config';

// npm run test:faults — the full fault-injection suite (test/faults/*.faults.ts;
// the reduced version runs in `npm test` as test/integration/faults.test.ts).
export default defineConfig({
  test: {
    include: ['test/faults/**/*.faults.ts'],
    testTimeout: 900_000,
    hookTimeout: 180_000,
    // One cluster at a time: each is a dozen processes.
    maxWorkers: 1,
    fileParallelism: false,
    reporters: ['default', './test/helpers/summary-reporter.ts'],
  },
});
