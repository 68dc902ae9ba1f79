import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Integration tests start real processes; two cores do not fit many at once.
    maxWorkers: 2,
    // A temporary directory per run, removed at its end (test/helpers/global-tmp.ts).
    globalSetup: ['./test/helpers/global-tmp.ts'],
    // Every server a test starts serves mTLS: the test's clients get certificates.
    setupFiles: [
      './test/helpers/setup-reaper.ts',
      './test/helpers/setup-identity.ts',
      './test/helpers/setup-token.ts',
    ],
    reporters: ['default', './test/helpers/summary-reporter.ts'],
  },
});
