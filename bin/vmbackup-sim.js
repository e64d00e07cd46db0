#!/usr/bin/env node
// The XAPI simulator: a stand-in XenServer pool for tests, the demo and benchmarks.
import { register } from 'tsx/esm/api';

register();
await import('../test/sim/cli.ts');
