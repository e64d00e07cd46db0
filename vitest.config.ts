import { defineConfig } from 'vitest/config';

// Unit tests live beside the code (functions/, runtime/); integration and end-to-end tests
// in test/. Integration tests start real processes (simulator, nats-server), hence the
// generous timeouts; two cores, so forks are capped.
export default defineConfig({
  test: {
    include: ['functions/**/*.test.ts', 'runtime/**/*.test.ts', 'test/**/*.test.ts'],
    // The Debian tools the tests run (test/provision.ts: installed as root, else the line to
    // run), then a temporary root for the run (TMPDIR), removed at its end, then dist/ rebuilt
    // if a source changed (the tests start bin/vmbackup.js, which runs dist/).
    globalSetup: ['test/provision.ts', 'test/helpers/global-tmp.ts', 'test/helpers/build-dist.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ['default'],
  },
});
