import { setTimeout as delay } from 'node:timers/promises';
import { ChunkStore, listPoints, readDiskRaw } from '../../runtime/chunkstore/chunkstore.js';
import type { PointRef } from '../../runtime/chunkstore/chunkstore.js';
import { readAll } from '../../runtime/formats/test-sources.js';
import type { RunSummary } from '../../runtime/run/summary.js';
import { vmbackup } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';

/** What the delta-export tests share: a pool serving NBD, runs, and what they leave. */

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

/** Waits for the next second of the clock: a run's stamp is its second, so two runs need two. */
export async function nextSecond(): Promise<void> {
  const second = Math.floor(Date.now() / 1000);
  while (Math.floor(Date.now() / 1000) === second) await delay(20);
}

/** One `vmbackup --json` run, its summary parsed. Waits for the next second first: a run's stamp is its second. */
export async function deltaRun(ws: Workspace, sim: Simulator, args: string[]): Promise<{ code: number | null; summary: RunSummary; stderr: string }> {
  await nextSecond();
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

/** The newest point of a VM folder, and every point. */
export async function points(ws: Workspace, folder: string) {
  const store = await ChunkStore.open(ws.exports);
  const listing = await listPoints(store, folder);
  return { store, ...listing, newest: listing.points.at(-1)! };
}
