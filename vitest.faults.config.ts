import { defineConfig } from 'vitest/config';

// npm run test:faults — the full fault-injection suite (test/faults/*.faults.ts;
// the reduced version runs in `npm test` as test/integration/faults.test.ts).
export default defineConfig({
  test: {
    include: ['test/faults/**/*.faults.ts', 'test/netns/**/*.faults.ts'],
    testTimeout: 1_800_000,
    hookTimeout: 180_000,
    // One cluster at a time: each is a dozen processes.
    maxWorkers: 1,
    fileParallelism: false,
    // A temporary directory per run, removed at its end (test/helpers/global-tmp.ts).
    globalSetup: ['./test/helpers/global-tmp.ts'],
    // Every server a test starts serves mTLS: the test's clients get certificates;
    // gateways check tokens: the SDK gets the suite's admin token.
    setupFiles: [
      './test/helpers/setup-reaper.ts',
      './test/helpers/setup-identity.ts',
      './test/helpers/setup-token.ts',
    ],
    reporters: ['default', './test/helpers/summary-reporter.ts'],
  },
});
