import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore, collectGarbage, listPoints, readDiskRaw } from '../../runtime/chunkstore/chunkstore.js';
import type { PointRef } from '../../runtime/chunkstore/chunkstore.js';
import { readAll } from '../../runtime/formats/test-sources.js';
import type { RunSummary } from '../../runtime/run/summary.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';

/** A pool serving NBD over TLS (a network with purpose `nbd`), as delta-exports read it. */
export function deltaPool(vms: PoolSpecInput['vms'], extra: Partial<PoolSpecInput> = {}): PoolSpecInput {
  return {
    credentials: { user: 'root', password: 'secret' },
    hosts: [{ name_label: 'xcp1' }],
    srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
    networks: [{ name_label: 'Storage', purpose: ['nbd'] }],
    vms,
    ...extra,
  };
}

export const app1 = {
  name_label: 'app1',
  power_state: 'Running' as const,
  disks: [
    { device: 'xvda', size_mib: 16, fill: 'pattern' as const },
    { device: 'xvdb', size_mib: 8, fill: 'sparse' as const },
  ],
  vifs: [],
};

/** The bytes of a VM's disk in the simulator now, by device. */
export function diskBytes(sim: Simulator, vmName: string, device: string): Promise<Buffer> {
  const vm = sim.state.vm(vmName);
  const vbd = (vm.VBDs as string[]).map((ref) => sim.state.record('VBD', ref)!).find((v) => v.device === device)!;
  return readAll(sim.state.disk(vbd.VDI as string));
}

/** One `vmbackup --json` run, its summary parsed. Waits for the next second first: a run's stamp is its second. */
export async function deltaRun(ws: Workspace, sim: Simulator, args: string[]): Promise<{ code: number | null; summary: RunSummary; stderr: string }> {
  const second = Math.floor(Date.now() / 1000);
  while (Math.floor(Date.now() / 1000) === second) await delay(20);
  const r = await vmbackup([...ws.args(sim), '--json', ...args], { timeoutMs: 180_000 });
  let summary: RunSummary;
  try {
    summary = JSON.parse(r.stdout) as RunSummary;
  } catch {
    throw new Error(`no JSON summary (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  }
  return { code: r.code, summary, stderr: r.stderr };
}

/** A point's disk read back whole (readDiskRaw: every chunk checked against its digest). */
export async function pointDisk(store: ChunkStore, ref: PointRef, disk: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of await readDiskRaw(store, ref, disk)) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

/** The snapshots (VMs and VDIs) of the pool: what a backup may leave behind. */
export function snapshotsLeft(sim: Simulator): { vms: string[]; vdis: { uuid: string; type: string; base?: string; of: string }[] } {
  const vms = sim.state.records('VM').filter((v) => v.is_a_snapshot === true).map((v) => String(v.uuid));
  const vdis = sim.state
    .records('VDI')
    .filter((v) => v.is_a_snapshot === true)
    .map((v) => ({ uuid: String(v.uuid), type: String(v.type), of: String(v.snapshot_of), ...((v.other_config as Record<string, string>)['vmbackup:base'] !== undefined ? { base: (v.other_config as Record<string, string>)['vmbackup:base'] } : {}) }));
  return { vms, vdis };
}

describe('delta-export: incremental backups into the chunk store, end to end', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await httpsSim(deltaPool([app1]));
  });
  afterAll(async () => sim.close());

  it('a full point, then 7 with churn read through CBT and NBD, pruned to 4 with GC between: every kept point reads back as the disks were', async () => {
    const ws = await workspace();
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
    }
  }, 600_000);
});
