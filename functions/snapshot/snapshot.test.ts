import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localCtx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { vmJob } from '../../test/helpers/jobs.js';
import { pool, vm } from '../../test/sim/fixtures.js';
import { startSimulator } from '../../test/sim/server.js';
import type { Simulator } from '../../test/sim/server.js';
import { snapshot, SnapshotOutput } from './snapshot.js';
import type { SnapshotInput } from './snapshot.js';

let sim: Simulator;
let xapi: XapiClient;
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'vmb-snapshot-'));
  sim = await startSimulator({ pool: pool([vm('web1', 'Halted')]) });
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret' });
});

afterAll(async () => {
  await xapi?.close();
  await sim?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

function input(runId: string): SnapshotInput {
  const { uuid } = sim.state.vm('web1');
  return vmJob({ runId, vm: { uuid: String(uuid), name: 'web1' }, backupDir: tmp });
}

describe('snapshot of a halted VM', () => {
  it('two runs at once: both export it directly with its start blocked, neither fails on the other’s block', async () => {
    const ctx = localCtx({ log: silentLogger(), xapi });
    const [a, b] = await Promise.all([snapshot.handle(input('run-a'), ctx), snapshot.handle(input('run-b'), ctx)]);
    const holders: string[] = [];
    for (const out of [SnapshotOutput.parse(a), SnapshotOutput.parse(b)]) {
      expect(out.snapshot).toMatchObject({ kind: 'direct', startBlocked: true });
      expect(out.warnings).toEqual([]);
      holders.push(out.snapshot.blockHolder!);
    }
    const web1 = await xapi.getRecord('VM', await xapi.call<string>('VM.get_by_uuid', String(sim.state.vm('web1').uuid)));
    expect(Object.keys(web1.blocked_operations).sort()).toEqual(['start', 'start_on']);
    // Each run holds the block by its own key, so the first to finish does not lift it under the other.
    const job = `vm.${web1.uuid}/1`;
    expect(holders).toEqual([`vmbackup:start-block:run-a/${job}`, `vmbackup:start-block:run-b/${job}`]);
    for (const [i, run] of ['run-a', 'run-b'].entries()) {
      expect(web1.other_config[holders[i]!]).toMatch(new RegExp(`^vmbackup: export in progress \\(run ${run} by \\S+:${process.pid} at \\S+\\)$`));
    }
  });
});
