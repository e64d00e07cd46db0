#!/usr/bin/env node
// Runs the compiled JavaScript in dist/ (`npm run build`; `npm ci` and `npm install` build it
// through the `prepare` script), so a start loads no transpiler.
import { existsSync } from 'node:fs';

const entry = new URL('../dist/runtime/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write(`vmbackup: ${entry.pathname} is missing: run \`npm run build\` in ${new URL('..', import.meta.url).pathname} (npm ci and npm install run it)\n`);
  process.exit(2);
}
const { runCli } = await import(entry.href);
await runCli();
