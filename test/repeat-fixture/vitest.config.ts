import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// A suite of its own (not part of `npm test`) that test/repeat.test.ts runs through
// `npm run test:repeat`: one test passes, one always fails, one fails on the second run.
export default defineConfig({
  test: {
    root: fileURLToPath(new URL('.', import.meta.url)),
    include: ['*.check.ts'],
  },
});
