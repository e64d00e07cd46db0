import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { PhaseEvent } from '../../runtime/events.js';
import { vmbackup } from '../helpers/cli.js';
import { waitFor } from '../sim/test-helpers.js';
import { events, jobsSettled, publishJob, startRig } from './rig.js';
import { vmJob } from '../helpers/jobs.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

/**
 * Redelivery: NATS delivers a job again when its ack was lost (the worker died after the
 * work, or NATS went away). Each handler must then do its work once: the same message is
 * published twice here, the second after the first was handled.
 */
let rig: Rig | undefined;
afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

describe('handlers under redelivery', () => {
  it('is safe under redelivery: a snapshot, an export and a prune delivered twice do their work once', async () => {
    rig = await startRig(pool([vm('r1'), vm('p1')]));
    await Promise.all([rig.worker(), rig.worker()]);
    const nc = await rig.client();
    const uuid = String(rig.sim.state.vm('r1').uuid);
    const runId = 'redelivery-1';
    const job = vmJob({ runId, vm: { uuid, name: 'r1' }, backupDir: rig.ws.exports, stamp: '20261126-083000' });
    // Snapshot: the same message twice (its first ack lost, say): one snapshot.
    await publishJob(nc, 'snapshot', job, 'snap-1');
    await jobsSettled(nc, 'snapshot');
    const snapshots = rig.sim.state.snapshots('r1');
    expect(snapshots).toHaveLength(1);
    await publishJob(nc, 'snapshot', job, 'snap-2');
    await jobsSettled(nc, 'snapshot');
    expect(rig.sim.state.snapshots('r1').map((s) => s.uuid)).toEqual(snapshots.map((s) => s.uuid));
    const [done] = (await events(rig, runId, 'snapshot')).filter((e) => e.outcome === 'done');
    const snapshotOutput = (done as Extract<PhaseEvent, { outcome: 'done' }>).output as { snapshot: { vmUuid: string } };
    expect(snapshotOutput.snapshot.vmUuid).toBe(snapshots[0]!.uuid);

    // Export: twice. One file; the second finds its snapshot gone and says so, removing nothing.
    await publishJob(nc, 'export', snapshotOutput, 'export-1');
    await jobsSettled(nc, 'export');
    const files = await readdir(path.join(rig.ws.exports, 'r1'));
    expect(files).toEqual(['backup_20261126-083000.xva']);
    await publishJob(nc, 'export', snapshotOutput, 'export-2');
    await jobsSettled(nc, 'export');
    expect(await readdir(path.join(rig.ws.exports, 'r1'))).toEqual(files);
    expect(rig.sim.state.exportCount('export')).toBe(1);
    expect(rig.sim.state.snapshots('r1')).toEqual([]);
    const exportEvents = await events(rig, runId, 'export');
    expect(exportEvents.filter((e) => e.outcome === 'done')).toHaveLength(1);
    const failed = exportEvents.filter((e): e is Extract<PhaseEvent, { outcome: 'failed' }> => e.outcome === 'failed');
    // Terminated at once (the message is spent), not retried: the coordinator may start over.
    expect(failed.map((e) => ({ attempt: e.attempt, permanent: e.error.permanent, retryable: e.error.retryable }))).toEqual([{ attempt: 1, permanent: true, retryable: true }]);

    // Prune: three sets, keep one, delivered twice: the second deletes nothing more.
    for (let i = 0; i < 3; i++) {
      if (i > 0) await new Promise((res) => setTimeout(res, 1_100)); // a new stamp
      expect((await vmbackup([...rig.ws.args(rig.sim), '-e', 'p1'])).code).toBe(0);
    }
    expect(await readdir(path.join(rig.ws.exports, 'p1'))).toHaveLength(9);
    const prune = { runId, jobId: 'prune-p1', backupDir: rig.ws.exports, folder: 'p1', maxBackups: 1 };
    await publishJob(nc, 'prune', prune, 'prune-1');
    await jobsSettled(nc, 'prune');
    const kept = (await readdir(path.join(rig.ws.exports, 'p1'))).sort();
    expect(kept).toHaveLength(3);
    await publishJob(nc, 'prune', prune, 'prune-2');
    await jobsSettled(nc, 'prune');
    expect((await readdir(path.join(rig.ws.exports, 'p1'))).sort()).toEqual(kept);
    await waitFor(async () => (await events(rig!, runId, 'prune')).some((e) => e.outcome === 'done'), 5_000, 'prune done');

    // Bad input is terminated at once and reported.
    await publishJob(nc, 'prune', { runId, jobId: 'bad-1', backupDir: rig.ws.exports, folder: '../x' }, 'bad-1');
    await jobsSettled(nc, 'prune');
    const bad = (await events(rig, runId, 'prune')).filter((e) => e.jobId === 'bad-1');
    expect(bad.map((e) => [e.outcome, e.attempt, e.outcome === 'failed' ? e.error.code : ''])).toEqual([['failed', 1, 'BAD_INPUT']]);
  });

});
