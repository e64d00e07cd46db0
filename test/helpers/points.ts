import { Readable } from 'node:stream';
import { CBT_BLOCK_SIZE, ChunkStore, PointWriter, pointDir } from '../../runtime/chunkstore/chunkstore.js';
import type { PointManifest, PointRef } from '../../runtime/chunkstore/chunkstore.js';
import { readAll } from '../../runtime/formats/test-sources.js';
import type { XapiClient } from '../../runtime/xapi/client.js';
import type { Simulator } from '../sim/server.js';

/** A point made from a simulated VM as the backup makes one, and the bytes it holds. */
export interface MadePoint {
  ref: PointRef;
  /** The point's folder. */
  dir: string;
  manifest: PointManifest;
  /** Each disk's bytes at the time of the point, by device. */
  disks: Map<string, Buffer>;
}

/**
 * Writes a point of VM `vm` into the chunk store of `backupDir` (created with `chunkSize`),
 * straight through PointWriter: its metadata is the simulator's `/export_metadata` of the VM
 * fetched with the real xen-api client, each disk (by VBD device) the VDI's bytes now.
 *
 * @example const p = await pointOfVm(sim, xapi, ws.exports, 'web1', { stamp: '20261206-080000' });
 */
export async function pointOfVm(
  sim: Simulator,
  xapi: XapiClient,
  backupDir: string,
  vm: string,
  opts: {
    stamp: string;
    chunkSize?: number;
    vmFolder?: string;
    devices?: string[];
    /** An incremental point: `base` with the 64 KiB blocks `blocks` (per VDI uuid, as `sim.state.churn` returns them) read again. */
    changes?: { base: PointRef; blocks: Record<string, number[]> };
  },
): Promise<MadePoint> {
  const store = await ChunkStore.open(backupDir, { chunkSize: opts.chunkSize ?? 256 << 10, sync: false });
  const rec = sim.state.vm(vm);
  const download = await xapi.download('/export_metadata', { uuid: rec.uuid as string });
  const parts: Buffer[] = [];
  for await (const part of download.body) parts.push(part as Buffer);
  await download.task;
  const ref = { vmFolder: opts.vmFolder ?? vm, stamp: opts.stamp };
  const writer = await PointWriter.begin(store, { ...ref, vm: { uuid: rec.uuid as string, name: vm } });
  const disks = new Map<string, Buffer>();
  for (const vbdRef of sim.state.record('VM', rec.ref as string)!.VBDs as string[]) {
    const vbd = sim.state.record('VBD', vbdRef) as unknown as { type: string; device: string; VDI: string };
    if (vbd.type !== 'Disk' || (opts.devices !== undefined && !opts.devices.includes(vbd.device))) continue;
    const bytes = await readAll(sim.state.disk(vbd.VDI));
    disks.set(vbd.device, bytes);
    const vdi = sim.state.record('VDI', vbd.VDI)!.uuid as string;
    if (opts.changes === undefined) await writer.addDisk(vbd.device, Readable.from([bytes]), { vdi });
    else {
      const ranges = (opts.changes.blocks[vdi] ?? []).map((b) => ({ offset: b * CBT_BLOCK_SIZE, length: CBT_BLOCK_SIZE }));
      await writer.addDiskChanges(vbd.device, opts.changes.base, ranges, { size: bytes.length, read: async (o, n) => bytes.subarray(o, o + n) }, { vdi });
    }
  }
  await writer.setMeta(Buffer.concat(parts));
  const manifest = await writer.commit();
  return { ref, dir: pointDir(store, ref), manifest, disks };
}
