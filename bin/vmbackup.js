#!/usr/bin/env node
// Runs the TypeScript sources directly through tsx, so `npx vmbackup` needs no build step.
import { register } from 'tsx/esm/api';

register();
const { runCli } = await import('../runtime/cli/main.ts');
await runCli();
