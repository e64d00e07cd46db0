import { execFile } from 'node:child_process';
import { mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ZERO_DIGEST, openPoint, verifyPoints } from '../../runtime/chunkstore/chunkstore.js';
import { VMBACKUP, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';
import { startSimulator } from '../sim/server.js';
import type { Simulator } from '../sim/server.js';
import { login, xapi } from '../sim/test-helpers.js';
import { deltaPool, deltaRun, diskBytes, pointDisk, points, snapshotsLeft } from './delta-helpers.js';

const NAMES = ['gone', 'nocbt', 'lcb', 'nbddrop', 'chunk', 'grow', 'rot'] as const;
const vm = (name: string) => ({ name_label: name, power_state: 'Running' as const, disks: [{ device: 'xvda', size_mib: 8, fill: 'pattern' as const }], vifs: [] });

/**
 * The fault rows of delta-exports (README, "Faults"): each ends with a point equal to the
 * disk, and no snapshot but the one base of the newest point.
 */
describe('delta-export faults: a full re-read with a warning naming the reason, or a retry; nothing restorable lost', () => {
  let sim: Simulator;
  let session: string;
  beforeAll(async () => {
    sim = await startSimulator({ pool: deltaPool(NAMES.map(vm)) });
    session = await login(sim.url);
  });
  afterAll(async () => sim.close());

  const sourceVdi = (name: string): string => {
    const vbd = sim.state.record('VBD', (sim.state.vm(name).VBDs as string[])[0]!)!;
    return vbd.VDI as string;
  };
  const baseOf = (name: string) => sim.state.records('VDI').find((v) => v.snapshot_of === sourceVdi(name) && (v.other_config as Record<string, string>)['vmbackup:base'] !== undefined);

  /** A first, full point of the VM. */
  async function first(name: string): Promise<Workspace> {
    const ws = await workspace();
    const r = await deltaRun(ws, sim, ['--delta-export', name]);
    expect(r.code, r.stderr).toBe(0);
    expect((await points(ws, name)).newest.manifest.disks[0]!.mode).toBe('full');
    return ws;
  }

  /** The newest point equals the disk now; the only snapshot of the VM is its base, data destroyed. */
  async function whole(ws: Workspace, name: string, mode: 'full' | 'changes'): Promise<void> {
    const { store, newest, incomplete } = await points(ws, name);
    expect(incomplete).toEqual([]);
    expect(newest.manifest.disks.map((d) => d.mode)).toEqual([mode]);
    expect((await pointDisk(store, newest, 'xvda')).equals(await diskBytes(sim, name, 'xvda'))).toBe(true);
    const mine = snapshotsLeft(sim).vdis.filter((v) => v.of === sourceVdi(name));
    expect(mine.map((v) => [v.type, v.base])).toEqual([['cbt_metadata', newest.stamp]]);
    expect(snapshotsLeft(sim).vms).toEqual([]);
  }

  it('base snapshot deleted by someone: read whole, warning names it, exit 0', async () => {
    const ws = await first('gone');
    const p1 = (await points(ws, 'gone')).newest.stamp;
    await xapi(sim.url, 'VDI.destroy', session, baseOf('gone')!.ref as string);
    sim.state.churn('gone', 3);
    const r = await deltaRun(ws, sim, ['--delta-export', 'gone']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.summary.status).toBe('warning');
    expect(r.summary.jobs[0]!.warnings).toEqual([`xvda read whole: the base snapshot of point ${p1} is gone (destroyed outside vmbackup?)`]);
    await whole(ws, 'gone', 'full');
  });

  it('CBT disabled between runs: read whole once, CBT on again, the next run reads changes only', async () => {
    const ws = await first('nocbt');
    await xapi(sim.url, 'VDI.disable_cbt', session, sourceVdi('nocbt'));
    sim.state.churn('nocbt', 3);
    const r = await deltaRun(ws, sim, ['--delta-export', 'nocbt']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.summary.jobs[0]!.warnings).toEqual([expect.stringMatching(/^xvda read whole: changed-block tracking was off since point \d{8}-\d{6} \(turned on again\)$/)]);
    await whole(ws, 'nocbt', 'full');
    expect(sim.state.record('VDI', sourceVdi('nocbt'))!.cbt_enabled).toBe(true);
    sim.state.churn('nocbt', 3);
    const again = await deltaRun(ws, sim, ['--delta-export', 'nocbt']);
    expect(again.summary.status).toBe('success');
    await whole(ws, 'nocbt', 'changes');
  });

  it('VDI.list_changed_blocks failing: read whole with its error in the warning', async () => {
    const ws = await first('lcb');
    sim.faults.add({ rpc: 'VDI.list_changed_blocks', vm: 'lcb', action: { kind: 'error', code: 'SR_BACKEND_FAILURE_460', params: ['', 'Failed to calculate changed blocks for given VDIs.', ''] } });
    sim.state.churn('lcb', 3);
    const r = await deltaRun(ws, sim, ['--delta-export', 'lcb']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.summary.jobs[0]!.warnings).toEqual([expect.stringMatching(/^xvda read whole: changed blocks unknown \(VDI\.list_changed_blocks: SR_BACKEND_FAILURE_460/)]);
    await whole(ws, 'lcb', 'full');
  });

  it('NBD connection dropped mid-read: the attempt fails and leaves nothing, the retry writes the point from the kept base', async () => {
    const ws = await first('nbddrop');
    const p1 = (await points(ws, 'nbddrop')).newest.stamp;
    const disk = String(sim.state.record('VDI', sourceVdi('nbddrop'))!.uuid);
    sim.faults.add({ http: 'nbd', vdi: disk, action: { kind: 'reset', after_bytes: 64 << 10 } });
    sim.state.churn('nbddrop', 3);
    const r = await deltaRun(ws, sim, ['--delta-export', 'nbddrop']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.summary.jobs[0]!.tries).toBe(2);
    expect(r.summary.jobs[0]!.warnings).toEqual([expect.stringMatching(/^delta-export failed \(.*\); backing up again \(attempt 2\)$/)]);
    await whole(ws, 'nbddrop', 'changes');
    expect((await points(ws, 'nbddrop')).newest.manifest.disks[0]!.base).toBe(p1);
  });

  it('a chunk deleted from the store: the next backup reads it again from the disk (healed) and says so', async () => {
    const ws = await first('chunk');
    const { store, newest } = await points(ws, 'chunk');
    const index = await (await openPoint(store, newest)).openIndex('xvda');
    let digest: Buffer | undefined;
    for (let i = 0; i < index.chunkCount && digest === undefined; i++) {
      const d = Buffer.from(await index.digest(i));
      if (!d.equals(ZERO_DIGEST)) digest = d;
    }
    await index.close();
    await unlink(store.chunkPath(digest!));
    // No guest writes: CBT reports nothing changed, the lost chunk is read all the same.
    const r = await deltaRun(ws, sim, ['--delta-export', 'chunk']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.summary.jobs[0]!.warnings).toEqual([`xvda: 1 chunk(s) of point ${newest.stamp} were missing from the store: read again from the disk`]);
    await whole(ws, 'chunk', 'changes');
    expect((await points(ws, 'chunk')).newest.manifest.disks[0]!.healedChunks).toBe(1);
  });

  it('a chunk corrupted on the share: verify names it, the next backup removes it and reads it again, and the older point is whole again', async () => {
    const ws = await first('rot');
    const { store, newest: p1 } = await points(ws, 'rot');
    const before = await pointDisk(store, p1, 'xvda');
    const index = await (await openPoint(store, p1)).openIndex('xvda');
    const digest = Buffer.from(await index.digest(1));
    await index.close();
    await writeFile(store.chunkPath(digest), 'not a zstd frame');
    const report = await verifyPoints(store, [p1]);
    expect(report.ok).toBe(false);
    expect(report.points[0]!.problems.map((p) => p.digest)).toEqual([digest.toString('hex')]);
    // No guest writes: the chunk still holds the same bytes on the disk.
    const r = await deltaRun(ws, sim, ['--delta-export', 'rot']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.summary.jobs[0]!.warnings).toEqual([
      `point ${p1.stamp} failed verification: 1 damaged chunk(s) removed from the store, read again from the disk where it still holds them`,
      `xvda: 1 chunk(s) of point ${p1.stamp} were missing from the store: read again from the disk`,
    ]);
    await whole(ws, 'rot', 'changes');
    // The chunk is named by its content: the first point reads back whole again.
    expect((await pointDisk(store, p1, 'xvda')).equals(before)).toBe(true);
    expect((await verifyPoints(store, [p1])).ok).toBe(true);
  });

  it('a disk resized between runs: read whole at its new size with a warning, then changes again', async () => {
    const ws = await first('grow');
    const p1 = (await points(ws, 'grow')).newest.stamp;
    await xapi(sim.url, 'VDI.resize_online', session, sourceVdi('grow'), String(12 << 20));
    sim.state.churn('grow', 3);
    const r = await deltaRun(ws, sim, ['--delta-export', 'grow']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.summary.jobs[0]!.warnings).toEqual([`xvda read whole: disk resized from 8.0 MiB to 12.0 MiB since point ${p1}`]);
    await whole(ws, 'grow', 'full');
    expect((await points(ws, 'grow')).newest.manifest.disks[0]!.size).toBe(12 << 20);
    sim.state.churn('grow', 3);
    expect((await deltaRun(ws, sim, ['--delta-export', 'grow'])).summary.status).toBe('success');
    await whole(ws, 'grow', 'changes');
  });
});

describe('delta-export without NBD', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await startSimulator({ pool: deltaPool([{ ...vm('plain'), disks: [{ device: 'xvda', size_mib: 32, fill: 'pattern' as const }] }], { networks: [] }) });
  });
  afterAll(async () => sim.close());

  it('reads the first point through /export_raw_vdi, then each point as the VHD difference from the base snapshot, kept whole', async () => {
    const ws = await workspace();
    expect((await deltaRun(ws, sim, ['--delta-export', 'plain'])).summary.status).toBe('success');
    for (let run = 0; run < 2; run++) {
      sim.state.churn('plain', 3);
      const r = await deltaRun(ws, sim, ['--delta-export', 'plain']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.summary.jobs[0]!.warnings).toEqual([]);
      const { store, points: all, newest } = await points(ws, 'plain');
      expect(newest.manifest.disks.map((d) => [d.mode, d.base])).toEqual([['changes', all.at(-2)!.stamp]]);
      expect((await pointDisk(store, newest, 'xvda')).equals(await diskBytes(sim, 'plain', 'xvda'))).toBe(true);
      // Only the chunks the difference touched were read and stored.
      expect(newest.manifest.disks[0]!.readBytes).toBeLessThan(newest.manifest.disks[0]!.size);
      expect(newest.manifest.disks[0]!.newBytes).toBeLessThan(all[0]!.manifest.disks[0]!.newBytes);
      // The one snapshot left is the base of the newest point, with its data.
      expect(snapshotsLeft(sim).vdis.map((v) => [v.type, v.base])).toEqual([['user', newest.stamp]]);
      expect(snapshotsLeft(sim).vms).toEqual([]);
    }
  });
});

describe('delta-export on a full backup filesystem', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await startSimulator({ pool: deltaPool([{ ...vm('small'), disks: [{ device: 'xvda', size_mib: 1, fill: 'pattern' as const }] }, { ...vm('big'), disks: [{ device: 'xvda', size_mib: 32, fill: 'pattern' as const }] }]) });
  });
  afterAll(async () => sim.close());

  it('ENOSPC: that VM fails (exit 1) naming the full filesystem, leaves no point and no snapshot; the other VM is backed up', async () => {
    const ws = await workspace();
    // A 4 MiB tmpfs as backup_dir, in a private mount namespace (as root, or as a user with
    // unprivileged user namespaces): the 32 MiB disk cannot fit.
    const dir = path.join(ws.base, 'full');
    await mkdir(dir);
    const script = [
      'set -e',
      `mount -t tmpfs -o size=4m tmpfs '${dir}'`,
      `'${process.execPath}' '${VMBACKUP}' ${[...ws.args(sim), '-d', dir, '--delta-export', 'small', '--delta-export', 'big', '--space-threshold', '1', '--concurrency', '1'].map((a) => `'${a}'`).join(' ')} > '${ws.base}/out.txt' 2> '${ws.base}/err.txt' || echo "exit=$?" > '${ws.base}/code.txt'`,
      `cd '${dir}' && find . -type f | sort > '${ws.base}/files.txt'`,
    ].join('\n');
    const unshare = process.getuid?.() === 0 ? ['--mount'] : ['--user', '--map-root-user', '--mount'];
    // Asynchronously: the simulator runs in this process and must keep answering.
    await promisify(execFile)('unshare', [...unshare, 'bash', '-c', script], { env: { PATH: process.env.PATH ?? '' } });
    expect(await readFile(path.join(ws.base, 'code.txt'), 'utf8')).toBe('exit=1\n');
    expect(await readFile(path.join(ws.base, 'err.txt'), 'utf8')).toMatch(/ERROR: big: delta-export failed: the backup filesystem is full: cannot write .*\/\.chunkstore\/chunks\/.* \(ENOSPC\)/);
    const files = (await readFile(path.join(ws.base, 'files.txt'), 'utf8')).trim().split('\n');
    expect(files.filter((f) => f.startsWith('./small/point_') && f.endsWith('/manifest.json'))).toHaveLength(1);
    expect(files.filter((f) => f.startsWith('./big/'))).toEqual([]);
    expect(files.filter((f) => f.endsWith('.partial'))).toEqual([]);
    expect(files.filter((f) => f.startsWith('./.chunkstore/writers/'))).toEqual([]);
    // No snapshot of big is left; small keeps its one base.
    expect(snapshotsLeft(sim).vms).toEqual([]);
    expect(snapshotsLeft(sim).vdis.map((v) => v.type)).toEqual(['cbt_metadata']);
  });
});
