import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { localCtx } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { blockHolders } from '../../runtime/xapi/snapshots.js';
import { vmJob } from '../../test/helpers/jobs.js';
import { pool, vm } from '../../test/sim/fixtures.js';
import { startSimulator } from '../../test/sim/server.js';
import type { Simulator } from '../../test/sim/server.js';
import { snapshot } from '../snapshot/snapshot.js';
import type { SnapshotInput } from '../snapshot/snapshot.js';
import { ExportInput, exportFn } from './export.js';

let sim: Simulator;
let xapi: XapiClient;
let ctx: Ctx;
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'vmb-export-'));
  sim = await startSimulator({ pool: pool([vm('web1', 'Halted')]) });
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret' });
  ctx = localCtx({ log: silentLogger(), xapi });
});

afterAll(async () => {
  await xapi?.close();
  await sim?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

beforeEach(() => {
  expect(web1()).toMatchObject({ blocked_operations: {} });
  expect(holders()).toEqual([]);
});

function web1() {
  return sim.state.vm('web1') as { ref: string; uuid: string; blocked_operations: Record<string, string>; other_config: Record<string, string> };
}

function holders(): string[] {
  return blockHolders(web1().other_config)
    .map(([key]) => key)
    .sort();
}

/** A vm-export job of the halted web1 for `runId`, into its own folder. */
function job(runId: string): SnapshotInput {
  const { uuid } = web1();
  return vmJob({ runId, vm: { uuid, name: 'web1' }, backupDir: tmp, folder: runId });
}

async function snap(runId: string): Promise<ExportInput> {
  return ExportInput.parse(await snapshot.handle(job(runId), ctx));
}

describe('export of a halted VM that two runs export at once', () => {
  it("the first to finish leaves the block to the other; the last one's clean-up lifts it", async () => {
    const [a, b] = await Promise.all([snap('run-a'), snap('run-b')]);
    expect(holders()).toEqual([a.snapshot.blockHolder, b.snapshot.blockHolder].sort());

    const outA = await exportFn.handle(a, ctx);
    expect(outA.warnings).toEqual([]);
    expect(outA.files).toHaveLength(1);
    expect(Object.keys(web1().blocked_operations).sort()).toEqual(['start', 'start_on']);
    expect(holders()).toEqual([b.snapshot.blockHolder]);

    const outB = await exportFn.handle(b, ctx);
    expect(outB.warnings).toEqual([]);
    expect(web1().blocked_operations).toEqual({});
    expect(holders()).toEqual([]);
  });

  it('a run that takes hold while the block is being lifted gets it back', async () => {
    const a = await snap('run-a2');
    // The lift of run-a2's clean-up waits in XAPI; run-c2 finds the block still there meanwhile.
    const stall = sim.faults.add({ rpc: 'VM.remove_from_blocked_operations', action: { kind: 'stall', ms: 2_000 } });
    const exported = exportFn.handle(a, ctx);
    await expect.poll(() => sim.faults.list().some((f) => f.id === stall), { timeout: 20_000 }).toBe(false);
    const c = await snap('run-c2');
    expect((await exported).warnings).toEqual([]);
    expect(Object.keys(web1().blocked_operations).sort()).toEqual(['start', 'start_on']);
    expect(holders()).toEqual([c.snapshot.blockHolder]);

    await exportFn.handle(c, ctx);
    expect(web1().blocked_operations).toEqual({});
  });

  it('a job from before holders (no blockHolder) lifts the block as before, unless a run holds it', async () => {
    const old = await beforeHolders(await snap('run-old'));
    const d = await snap('run-d');
    await exportFn.handle(old, ctx);
    expect(Object.keys(web1().blocked_operations).sort()).toEqual(['start', 'start_on']);
    await exportFn.handle(d, ctx);
    expect(web1().blocked_operations).toEqual({});

    await exportFn.handle(await beforeHolders(await snap('run-old2')), ctx);
    expect(web1().blocked_operations).toEqual({});
  });
});

/** The job as the snapshot phase of a version before holders left it: the block alone, no holder key, no blockHolder. */
async function beforeHolders(job: ExportInput): Promise<ExportInput> {
  const { blockHolder, ...taken } = job.snapshot;
  await xapi.call('VM.remove_from_other_config', web1().ref, blockHolder);
  return ExportInput.parse({ ...job, snapshot: taken });
}
