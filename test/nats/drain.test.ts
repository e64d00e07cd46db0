import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { RunSummary } from '../../runtime/run/summary.js';
import { vmbackup } from '../helpers/cli.js';
import { waitFor } from '../sim/test-helpers.js';
import { startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';
import { xvaWriter } from './workers.js';
import type { WorkerProcess } from './workers.js';

/** SIGTERM drains a worker: no new jobs; running ones finish, or go back after the drain timeout. */
let rig: Rig | undefined;
afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

async function drainDuringExport(drainTimeout: string): Promise<{ summary: RunSummary; drained: WorkerProcess; code: number | string }> {
  rig = await startRig(pool([vm('d1', 'Running', 6), vm('d2')]));
  rig.sim.faults.add({ http: 'export', vm: 'd1', always: true, action: { kind: 'slow', bytes_per_second: 2 << 20 } });
  const workers = await Promise.all([rig.worker('--drain-timeout', drainTimeout), rig.worker('--drain-timeout', drainTimeout)]);
  const run = vmbackup(['run', ...rig.args('--json')]);
  const drained = await waitFor(() => (rig!.sim.state.transfers('export').some((t) => t.vm?.startsWith('d1') === true && t.bytes > 1 << 20) ? xvaWriter(workers, 'd1') : undefined), 30_000, 'd1 exporting');
  drained.kill('SIGTERM');
  const code = await drained.exited;
  const r = await run;
  expect(r.code).toBe(0);
  return { summary: JSON.parse(r.stdout) as RunSummary, drained, code };
}

describe('vmbackup worker: SIGTERM', () => {
  it('lets the running export finish, then stops (exit 0); the run completes', async () => {
    const { summary, drained, code } = await drainDuringExport('30');
    expect(code).toBe(0);
    expect(drained.output()).toMatch(/SIGTERM received: draining/);
    expect(drained.output()).toMatch(/^d1: exported 6\.\d MiB/m);
    expect(drained.output()).toContain('worker stopped');
    expect(summary.categories['vm-export']).toEqual({ S: 2, W: 0, E: 0 });
    expect(rig!.sim.state.transfers('export').filter((t) => t.vm?.startsWith('d1') === true).map((t) => t.status)).toEqual(['done']);
  });

  it('after the drain timeout, hands the export back: another worker backs the VM up, nothing left over', async () => {
    const { summary, drained, code } = await drainDuringExport('1');
    expect(code).toBe(0);
    expect(drained.output()).toMatch(/drain timeout \(1 s\): handing running jobs back/);
    expect(summary.categories['vm-export']?.E).toBe(0);
    expect(summary.jobs.find((j) => j.name === 'd1')).toMatchObject({ status: expect.stringMatching(/success|warning/) });
    const d1 = (await readdir(path.join(rig!.ws.exports, 'd1'))).sort();
    expect(d1.map((f) => f.replace(/\d{8}-\d{6}/, 'S'))).toEqual(['backup_S.json', 'backup_S.meta', 'backup_S.xva']);
    expect(rig!.sim.state.snapshots().filter((s) => String(s.name_label).includes('vmbackup'))).toEqual([]);
  });
});
