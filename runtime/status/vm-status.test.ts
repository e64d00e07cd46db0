import { randomBytes } from 'node:crypto';
import { cp, readdir, readFile, rename, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore, PointWriter, verifyPoints } from '../chunkstore/chunkstore.js';
import { MemoryRunStore } from '../run/store.js';
import { RunSummary } from '../run/summary.js';
import type { Simulator } from '../../test/sim/server.js';
import { httpsSim, vmbackup, workspace } from '../../test/helpers/cli.js';
import type { Workspace } from '../../test/helpers/cli.js';
import { StatusReader, mergeStatus, runRecordFromSummary } from './vm-status.js';
import type { VmStatus } from './vm-status.js';
import { pool, vm } from '../../test/sim/fixtures.js';

/*
 * The per-VM status on real backups: `vmbackup` against the simulator writes the sets (one VM
 * failing its export), `vmbackup verify` records a verification, the chunk store's own writer
 * adds points; then manifests are damaged the ways a crash or a bad disk leaves them.
 */

describe('StatusReader: each VM from backup_dir and the runs', () => {
  let sim: Simulator;
  let ws: Workspace;
  let failedRun: RunSummary;
  const byName = (vms: VmStatus[], name: string): VmStatus => {
    const vm = vms.find((v) => v.vm === name);
    if (vm === undefined) throw new Error(`no ${name} among ${vms.map((v) => v.vm).join(', ')}`);
    return vm;
  };

  beforeAll(async () => {
    sim = await httpsSim(pool([vm('web1', 'Halted'), vm('db1', 'Halted', 1)]));
    ws = await workspace();
    const first = await vmbackup([...ws.args(sim), '-e', 'web1', '-e', 'db1']);
    if (first.code !== 0) throw new Error(first.stderr);
    await new Promise((resolve) => setTimeout(resolve, 1100)); // a new stamp
    sim.faults.add({ http: 'export', vm: 'db1', always: true, action: { kind: 'http-500' } });
    const second = await vmbackup([...ws.args(sim), '-e', 'web1', '-e', 'db1', '--json']);
    sim.faults.clear();
    expect(second.code, second.stderr).toBe(1);
    failedRun = RunSummary.parse(JSON.parse(second.stdout));
    const web1 = path.join(ws.exports, 'web1');
    const newest = (await readdir(web1)).filter((n) => n.endsWith('.json')).sort().at(-1)!;
    const verified = await vmbackup(['verify', '-b', ws.base, path.join(web1, newest)]);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
  }, 180_000);
  afterAll(async () => sim?.close());

  it('counts the sets each VM keeps, its newest, its verification, and a failure that left nothing on disk', async () => {
    const status = await new StatusReader({ backupDir: ws.exports }).read();
    expect(status.backupDirError).toBeUndefined();
    expect(status.runStore).toBeUndefined();
    const web1 = byName(status.vms, 'web1');
    const sets = web1.chain.filter((c) => c.kind === 'set' && c.complete);
    expect(web1.points).toBe(2);
    expect(sets).toHaveLength(2);
    expect(web1.uuid).toBe(sim.state.vm('web1').uuid as string);
    expect(web1.lastSuccess).toMatchObject({ kind: 'set', stamp: sets[0]!.stamp, bytes: sets[0]!.bytes });
    expect(web1.lastSuccess!.bytes).toBeGreaterThan(2 << 20);
    expect(web1.lastSuccess!.durationMs).toBeGreaterThanOrEqual(0);
    expect(web1.lastVerify).toMatchObject({ ok: true, stamp: sets[0]!.stamp });
    expect(web1.problems).toEqual([]);
    const db1 = byName(status.vms, 'db1');
    expect(db1.points).toBe(1);
    // Without the run store nothing on disk tells of the failed export.
    expect(db1.lastFailure).toBeUndefined();

    // A run store that answers, with no run yet.
    const empty = await new StatusReader({ backupDir: ws.exports, store: new MemoryRunStore() }).read();
    expect(empty.runStore).toEqual({ up: true });
    expect(empty.runs).toEqual([]);
    expect(byName(empty.vms, 'web1').points).toBe(2);
  });

  it('merges a failed run: the VM keeps its last good backup and gains its last failure and error', async () => {
    const disk = await new StatusReader({ backupDir: ws.exports }).readDisk(Date.now());
    const vms = mergeStatus(disk.folders, [runRecordFromSummary(failedRun)]);
    const db1 = byName(vms, 'db1');
    expect(db1.points).toBe(1);
    expect(db1.lastFailure).toMatchObject({ runId: failedRun.runId, at: failedRun.finishedAt });
    expect(db1.lastFailure!.error).toBe(failedRun.jobs.find((j) => j.name === 'db1')!.error!.message);
    expect(db1.errors).toEqual([{ runId: failedRun.runId, at: failedRun.finishedAt, message: db1.lastFailure!.error }]);
    const web1 = byName(vms, 'web1');
    expect(web1.lastFailure).toBeUndefined();
    // The newest set is that run's: its duration is the job's.
    const job = failedRun.jobs.find((j) => j.name === 'web1')!;
    expect(web1.lastSuccess!.runId).toBe(failedRun.runId);
    expect(web1.lastSuccess!.durationMs).toBe(job.durationMs);
    // A VM that never got a backup is listed from its failures alone.
    const only = mergeStatus([], [runRecordFromSummary(failedRun)]);
    const lost = byName(only, 'db1');
    expect([lost.points, lost.folder, lost.lastSuccess, lost.lastFailure?.runId]).toEqual([0, undefined, undefined, failedRun.runId]);
  });

  it('chunk-store points count as points; a point being written does not; its verification is the newest', async () => {
    const store = await ChunkStore.open(ws.exports, { chunkSize: 64 << 10 });
    const vm = { uuid: sim.state.vm('web1').uuid as string };
    const full = await PointWriter.begin(store, { vmFolder: 'web1', vm: { uuid: vm.uuid, name: 'web1' }, stamp: '20300101-000000' });
    await full.addDisk('xvda', Readable.from([randomBytes(256 << 10)]));
    await full.commit();
    const half = await PointWriter.begin(store, { vmFolder: 'web1', vm: { uuid: vm.uuid, name: 'web1' }, stamp: '20300102-000000' });
    await half.addDisk('xvda', Readable.from([randomBytes(64 << 10)]));
    const report = await verifyPoints(store, [{ vmFolder: 'web1', stamp: '20300101-000000' }]);
    expect(report.ok).toBe(true);
    const status = await new StatusReader({ backupDir: ws.exports }).read();
    const web1 = byName(status.vms, 'web1');
    expect(web1.points).toBe(3);
    expect(web1.lastSuccess).toMatchObject({ kind: 'point', stamp: '20300101-000000', at: '2030-01-01T00:00:00.000Z' });
    expect(web1.lastSuccess!.bytes).toBeGreaterThan(0);
    expect(web1.chain[0]).toMatchObject({ stamp: '20300102-000000', kind: 'point', complete: false });
    expect(web1.chain[1]).toMatchObject({ stamp: '20300101-000000', kind: 'point', complete: true, mode: 'full', verify: { ok: true } });
    expect(web1.lastVerify).toMatchObject({ ok: true, stamp: '20300101-000000' });
    expect(web1.problems).toEqual([]); // a point in progress is no problem
    await half.abort();
  });

  it('flags a half-written manifest and a damaged point manifest per VM, and reads the rest', async () => {
    const w = await workspace();
    const copy = async (folder: string) => {
      const from = path.join(ws.exports, folder);
      const to = path.join(w.exports, folder);
      await cp(from, to, { recursive: true });
      return to;
    };
    const web1 = await copy('web1');
    const manifests = (await readdir(web1)).filter((n) => n.endsWith('.json')).sort();
    // The older set's manifest cut half-way, as a crash on a share without atomic rename leaves it.
    const older = path.join(web1, manifests[0]!);
    await truncate(older, Math.floor((await readFile(older)).length / 2));
    // The committed point's manifest replaced by garbage.
    await writeFile(path.join(web1, 'point_20300101-000000', 'manifest.json'), '\0\0\0garbage');

    const status = await new StatusReader({ backupDir: w.exports }).read();
    const v = byName(status.vms, 'web1');
    expect(v.points).toBe(1);
    expect(v.lastSuccess!.stamp).toBe(manifests[1]!.slice(7, 22));
    expect(v.problems.map((p) => p.stamp)).toEqual([manifests[0]!.slice(7, 22), '20300101-000000']);
    expect(v.problems[0]!.message).toMatch(/JSON/);
    expect(v.problems[1]!.message).toContain('point web1/point_20300101-000000: manifest.json');
    expect(v.chain.find((c) => c.stamp === manifests[0]!.slice(7, 22))).toMatchObject({ complete: false });
  });

  it('says when backup_dir cannot be read, and answers all the same', async () => {
    const status = await new StatusReader({ backupDir: path.join(ws.base, 'not-mounted') }).read();
    expect(status.backupDirError).toMatch(/^backup_dir .*not-mounted cannot be read \(ENOENT\): is the share mounted\?$/);
    expect(status.vms).toEqual([]);
  });

  it('reads a folder again once it changed, and not before', async () => {
    const w = await workspace();
    await cp(path.join(ws.exports, 'db1'), path.join(w.exports, 'db1'), { recursive: true });
    // A clock ahead of the folders' mtimes: they are old enough to be remembered.
    const reader = new StatusReader({ backupDir: w.exports, now: () => Date.now() + 60_000 });
    const before = byName((await reader.read()).vms, 'db1');
    expect(before.points).toBe(1);
    const manifest = (await readdir(path.join(w.exports, 'db1'))).find((n) => n.endsWith('.json'))!;
    // Changed in place (no rename, the folder's mtime stays): remembered as it was.
    const file = path.join(w.exports, 'db1', manifest);
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.slice(0, 10));
    expect(byName((await reader.read()).vms, 'db1').points).toBe(1);
    // Written as vmbackup writes (a new name, renamed into place): read again.
    await writeFile(file + '.tmp', text.slice(0, 10));
    await rename(file + '.tmp', file);
    const after = byName((await reader.read()).vms, 'db1');
    expect(after.points).toBe(0);
    expect(after.problems).toHaveLength(1);
    // Reads asked for while one is under way share it; the next one reads again.
    const [a, b] = [reader.read(), reader.read()];
    expect(await a).toBe(await b);
    expect(await reader.read()).not.toBe(await a);
    // A fresh reader reads everything.
    expect(byName((await new StatusReader({ backupDir: w.exports }).read()).vms, 'db1').points).toBe(0);
  });
});
