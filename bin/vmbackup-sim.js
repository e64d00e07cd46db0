#!/usr/bin/env node
// The XAPI simulator: a stand-in XenServer pool for tests, the demo and benchmarks. Runs the
// compiled JavaScript in dist/, as bin/vmbackup.js does.
import { existsSync } from 'node:fs';

const entry = new URL('../dist/test/sim/cli.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write(`vmbackup-sim: ${entry.pathname} is missing: run \`npm run build\` in ${new URL('..', import.meta.url).pathname} (npm ci and npm install run it)\n`);
  process.exit(2);
}
await import(entry.href);
