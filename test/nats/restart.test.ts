import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { RunSummary } from '../../runtime/run/summary.js';
import { vmbackup } from '../helpers/cli.js';
import { waitFor } from '../sim/test-helpers.js';
import { startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

/** A fault row of issue 3: nats-server restarted (same port, same store) in the middle of a run. */
let rig: Rig | undefined;
afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

function noVmbackupSnapshots(r: Rig) {
  expect(r.sim.state.snapshots().filter((s) => String(s.name_label).includes('vmbackup'))).toEqual([]);
  expect(r.sim.state.vdis().filter((v) => v.is_a_snapshot === true)).toEqual([]);
}

describe('NATS faults: a server restart', () => {
  it('nats-server restarted mid-run: the run completes once it is back', async () => {
    rig = await startRig(pool([vm('v1', 'Running', 4), vm('v2', 'Running', 4), vm('v3', 'Halted', 4), vm('v4')]));
    rig.sim.faults.add({ http: 'export', always: true, action: { kind: 'slow', bytes_per_second: 2 << 20 } });
    await Promise.all([rig.worker(), rig.worker()]);
    const run = vmbackup(['run', ...rig.args('--json')]);
    await waitFor(() => rig!.sim.state.transfers('export').some((t) => t.status === 'running' && t.bytes > 1 << 20), 30_000, 'an export under way');
    await rig.nats.restart({ downMs: 1_500 });
    const r = await run;
    expect(r.stderr).not.toMatch(/ERROR/);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout) as RunSummary;
    expect(summary.categories['vm-export']).toEqual({ S: 4, W: 0, E: 0 });
    for (const name of ['v1', 'v2', 'v3', 'v4']) expect((await readdir(path.join(rig.ws.exports, name))).filter((f) => !f.endsWith('.partial'))).toHaveLength(3);
    // Each VM exported once: nothing was done twice across the restart.
    expect(rig.sim.state.exportCount('export')).toBe(4);
    noVmbackupSnapshots(rig);
    // The workers said so, and went on.
    expect(rig.workers.some((w) => /NATS: reconnected/.test(w.output()))).toBe(true);
  });

});
