import { execFileSync } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore, collectGarbage, listPoints } from '../../runtime/chunkstore/chunkstore.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Simulator } from '../sim/server.js';
import { app1, deltaPool, deltaRun, diskBytes, pointDisk, snapshotsLeft } from './delta-helpers.js';

describe('delta-export: incremental backups into the chunk store, end to end', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await httpsSim(deltaPool([app1]));
  });
  afterAll(async () => sim.close());

  it('a full point, then 7 with churn read through CBT and NBD, pruned to 4 with GC between: every kept point reads back as the disks were', async () => {
    const ws = await workspace();
    const preview = async () => {
      const r = await vmbackup([...ws.args(sim), '--preview', '--json', '--delta-export', 'app1:4']);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { delta_exports: { vm: string; max_backups: number; disks: unknown[] }[] }).delta_exports;
    };
    expect(await preview()).toEqual([
      {
        vm: 'app1',
        max_backups: 4,
        max_backups_from: { source: 'request', entry: 'app1:4', where: 'command line (--delta-export)' },
        uuid: sim.state.vm('app1').uuid,
        folder: 'app1',
        disks: [
          { disk: 'xvda', read: 'full', reason: 'first backup: no point yet' },
          { disk: 'xvdb', read: 'full', reason: 'first backup: no point yet' },
        ],
      },
    ]);
    const expected = new Map<string, { xvda: Buffer; xvdb: Buffer }>();
    const sizes: number[] = [];
    for (let run = 0; run < 8; run++) {
      if (run > 0) sim.state.churn('app1', 3);
      const { code, summary, stderr } = await deltaRun(ws, sim, ['--delta-export', 'app1:4']);
      expect(code, stderr).toBe(0);
      expect(summary.status).toBe('success');
      const job = summary.jobs.find((j) => j.name === 'app1')!;
      expect(job.category).toBe('delta-export');
      expect(job.warnings).toEqual([]);

      const store = await ChunkStore.open(ws.exports);
      const { points } = await listPoints(store, 'app1');
      const newest = points.at(-1)!;
      expected.set(newest.stamp, { xvda: await diskBytes(sim, 'app1', 'xvda'), xvdb: await diskBytes(sim, 'app1', 'xvdb') });
      const modes = newest.manifest.disks.map((d) => `${d.name}:${d.mode}${d.base !== undefined ? `<${d.base}` : ''}`);
      if (run === 0) {
        expect(modes).toEqual(['xvda:full', 'xvdb:full']);
      } else {
        const before = points.at(-2)!.stamp;
        expect(modes).toEqual([`xvda:changes<${before}`, `xvdb:changes<${before}`]);
        // Only the chunks the churn touched were read: less than the disks.
        const read = newest.manifest.disks.reduce((n, d) => n + d.readBytes, 0);
        expect(read).toBeLessThan(newest.manifest.disks.reduce((n, d) => n + d.size, 0) / 2);
      }
      sizes.push(newest.manifest.disks.reduce((n, d) => n + d.newBytes, 0));
      expect(points.map((p) => p.stamp)).toEqual([...expected.keys()].slice(-4));

      // The GC between runs, with no safety margin: twice, so unreferenced chunks are set aside and then removed.
      await collectGarbage(store, { safetyMarginMs: 0 });
      await collectGarbage(store, { safetyMarginMs: 0 });

      // No snapshot left but one base per disk, its data destroyed, tagged with the newest point.
      const left = snapshotsLeft(sim);
      expect(left.vms).toEqual([]);
      expect(left.vdis.map((v) => [v.type, v.base])).toEqual([
        ['cbt_metadata', newest.stamp],
        ['cbt_metadata', newest.stamp],
      ]);
    }
    // What the next run would do: CBT changes since the newest point, for each disk.
    const newest = [...expected.keys()].at(-1)!;
    expect((await preview())[0]!.disks).toEqual([
      { disk: 'xvda', read: 'changes', base: newest, reason: `CBT changes since point ${newest}` },
      { disk: 'xvdb', read: 'changes', base: newest, reason: `CBT changes since point ${newest}` },
    ]);
    // The increments stored much less than the first, full point.
    for (const s of sizes.slice(1)) expect(s).toBeLessThan(sizes[0]!);

    const store = await ChunkStore.open(ws.exports);
    const { points, incomplete } = await listPoints(store, 'app1');
    expect(incomplete).toEqual([]);
    expect(points).toHaveLength(4);
    for (const p of points) {
      const want = expected.get(p.stamp)!;
      expect((await pointDisk(store, p, 'xvda')).equals(want.xvda), `${p.stamp} xvda`).toBe(true);
      expect((await pointDisk(store, p, 'xvdb')).equals(want.xvdb), `${p.stamp} xvdb`).toBe(true);
      // And through the user's door: `restore POINT --to-file --format vhd`, read back by an
      // independent VHD reader (qemu-img), equals the disk as it was at that point.
      for (const disk of ['xvda', 'xvdb'] as const) {
        const vhd = path.join(ws.base, `${p.stamp}-${disk}.vhd`);
        const r = await vmbackup(['restore', path.join(ws.exports, 'app1', `point_${p.stamp}`), '--disk', disk, '--to-file', vhd, '--format', 'vhd', '-b', ws.base]);
        expect(r.code, r.stderr).toBe(0);
        const raw = path.join(ws.base, `${p.stamp}-${disk}.raw`);
        execFileSync('qemu-img', ['convert', '--image-opts', `driver=vpc,force_size_calc=current_size,file.filename=${vhd}`, '-O', 'raw', raw]);
        expect((await readFile(raw)).equals(want[disk]), `${p.stamp} ${disk} via qemu-img`).toBe(true);
        await rm(vhd);
        await rm(raw);
      }
    }
  }, 600_000);
});
