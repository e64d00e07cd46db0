import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localCtx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { blockHolders, blockReason } from '../../runtime/xapi/snapshots.js';
import { runOptions } from '../../test/helpers/jobs.js';
import { pool } from '../../test/sim/fixtures.js';
import { startSimulator } from '../../test/sim/server.js';
import type { Simulator } from '../../test/sim/server.js';
import { plan } from './plan.js';

let sim: Simulator;
let xapi: XapiClient;
let tmp: string;

const now = new Date();
/** A run that crashed on this host (no such process) and one still exporting (this process). */
const dead = { run: 'run-dead', reason: blockReason('run-dead', { hostname: os.hostname(), pid: 4194305 }, now) };
const live = { run: 'run-live', reason: blockReason('run-live', { hostname: os.hostname(), pid: process.pid }, now) };
const holder = (run: string, vm: string) => `vmbackup:start-block:${run}/vm.${vm}/1`;

function halted(name: string, blocked: Record<string, string>, holders: { run: string; reason: string }[]) {
  return {
    name_label: name,
    power_state: 'Halted' as const,
    disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' as const }],
    blocked_operations: blocked,
    other_config: Object.fromEntries(holders.map((h) => [holder(h.run, name), h.reason])),
  };
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'vmb-plan-'));
  sim = await startSimulator({
    pool: pool([
      halted('shared', { start: dead.reason, start_on: dead.reason }, [dead, live]),
      halted('orphaned', { start: dead.reason, start_on: 'maintenance' }, [dead]),
      halted('unheld-dead', { start: dead.reason, start_on: dead.reason }, []),
      halted('unheld-live', { start: live.reason, start_on: live.reason }, []),
    ]),
  });
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret' });
});

afterAll(async () => {
  await xapi?.close();
  await sim?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});


function vm(name: string) {
  const record = sim.state.vm(name);
  const holders = blockHolders(record.other_config as Record<string, string>).map(([key]) => key);
  return { blocked_operations: record.blocked_operations as Record<string, string>, holders };
}

describe('plan: start blocks left on halted VMs', () => {
  it('drops the holds of runs that are gone, keeps a block a live run holds, lifts one nobody holds; a block without holders as before', async () => {
    const ctx = localCtx({ log: silentLogger(), xapi });
    const out = await plan.handle({ runId: 'run-next', jobId: 'plan', try: 1, options: runOptions({ backupDir: tmp }), startedAt: now.toISOString() }, ctx);

    // Held by a dead run and a live one: the dead one's hold goes, the live one's block stays.
    expect(vm('shared')).toEqual({ blocked_operations: { start: dead.reason, start_on: dead.reason }, holders: [holder(live.run, 'shared')] });
    // Held by a dead run only: its hold and our block go; an operator's block stays.
    expect(vm('orphaned')).toEqual({ blocked_operations: { start_on: 'maintenance' }, holders: [] });
    // No holder keys (a version before them): judged by the run named in the reason.
    expect(vm('unheld-dead')).toEqual({ blocked_operations: {}, holders: [] });
    expect(vm('unheld-live')).toEqual({ blocked_operations: { start: live.reason, start_on: live.reason }, holders: [] });

    expect([...out.cleaned].sort()).toEqual(
      [
        'dropped the hold of run run-dead on the start block of "shared"',
        'dropped the hold of run run-dead on the start block of "orphaned"',
        'lifted the start block left on "orphaned" once no run held it',
        'lifted the start block left on "unheld-dead" by run run-dead',
        'lifted the start_on block left on "unheld-dead" by run run-dead',
      ].sort(),
    );
  });
});
