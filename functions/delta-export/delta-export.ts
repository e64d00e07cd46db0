import { readFile, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ChunkErrorCode, ChunkStore, PointWriter, STORE_FOLDER, diskBlockSource, listPoints, openPoint, pointDir } from '../../runtime/chunkstore/chunkstore.js';
import type { PointDisk, PointRef, WriteDiskOptions } from '../../runtime/chunkstore/chunkstore.js';
import { POINT_VERIFIED } from '../../runtime/chunkstore/points.js';
import { vhdDiskWrites } from '../../runtime/formats/vhd.js';
import type { VhdDiskWrite } from '../../runtime/formats/vhd.js';
import { PermanentError, RestartError, VmbackupError, errorInfo } from '../../runtime/errors.js';
import { jobSubject } from '../../runtime/events.js';
import { defineFunction, subject } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { NbdClient } from '../../runtime/nbd/client.js';
import { writeFileAtomic } from '../../runtime/storage/atomic.js';
import { metaFileName } from '../../runtime/storage/naming.js';
import { formatBytes, formatSeconds } from '../../runtime/units.js';
import type { XapiClient } from '../../runtime/xapi/client.js';
import type { NbdInfo, VdiRecord, VmRecord } from '../../runtime/xapi/records.js';
import { TAG, destroySnapshotVdi, destroySnapshotVm, tagObject } from '../../runtime/xapi/snapshots.js';
import { WrittenFile } from '../job.js';
import { formatMeta } from '../meta/meta-format.js';
import { PruneInput } from '../prune/prune.js';
import { SnapshotOutput, vmDisks } from '../snapshot/snapshot.js';
import { planDiskRead } from './read-plan.js';
import type { DiskReadPlan } from './read-plan.js';

/**
 * delta-export — a delta-export VM's backup as one point of the chunk store
 * (runtime/chunkstore/README.md), in place of export + meta.
 *
 * Per disk of the VM snapshot: the first backup reads it whole (NBD where the pool offers
 * it, else `/export_raw_vdi?format=raw`); later ones ask `VDI.list_changed_blocks(base, new)`
 * and read only the chunks those 64 KiB blocks touch, over NBD (TLS with the pool's
 * certificate when a network has purpose `nbd`), the rest of the index taken from the previous
 * point. Without NBD the base snapshot is kept whole and the next run reads
 * `/export_raw_vdi?format=vhd&base=<base>`: the chunks its blocks touch, laid over the base
 * point's. Every reason to read a disk whole instead (read-plan.ts, or list_changed_blocks
 * failing) is a warning naming it; the backup goes on. Then the VM's metadata
 * (`/export_metadata`), VmBackup's `.meta`, and the manifest last.
 *
 * The snapshot: once the point is committed, its disk snapshots with CBT stay as the next
 * run's base — tagged `vmbackup:base` = the point's stamp, their data destroyed
 * (`VDI.data_destroy`, no SR space; kept without NBD) — and the bases they supersede are destroyed; the
 * snapshot VM and every other disk snapshot go. On failure the whole snapshot goes and the
 * previous base stays. No snapshot is left behind.
 *
 * Subject `vmbackup.jobs.delta-export`; input: the snapshot's output. Output: prune's input
 * (`points: true`: prune keeps `maxBackups` points, then collects the store's garbage).
 */
export const DeltaExportInput = SnapshotOutput;
export type DeltaExportInput = z.infer<typeof DeltaExportInput>;

/** One disk of the point written: how it was read and what it cost. */
export const DeltaDisk = z.object({
  disk: z.string(),
  read: z.enum(['full', 'changes']),
  base: z.string().optional(),
  reason: z.string(),
  size: z.number().int().min(0),
  readBytes: z.number().int().min(0),
  newBytes: z.number().int().min(0),
  newChunks: z.number().int().min(0),
  healedChunks: z.number().int().min(0),
});
export type DeltaDisk = z.infer<typeof DeltaDisk>;

export const DeltaExportOutput = PruneInput.extend({
  /** `<folder>/point_<stamp>`. */
  point: z.string(),
  disks: z.array(DeltaDisk),
  files: z.array(WrittenFile),
  /** Compressed bytes the point added to the store. */
  bytes: z.number().int().min(0),
  exportMs: z.number().min(0),
  warnings: z.array(z.string()).default([]),
});
export type DeltaExportOutput = z.infer<typeof DeltaExportOutput>;

export const DeltaExportJob = subject(jobSubject('delta-export'), DeltaExportInput);

export const deltaExport = defineFunction({
  name: 'delta-export',
  description: 'Write a point of the chunk store from the snapshot, reading only changed blocks (CBT + NBD); keep the snapshot as the next CBT base.',
  subject: DeltaExportJob,
  output: DeltaExportOutput,
  retry: { maxDeliver: 3, backoffMs: [5_000, 30_000] },
  async handle(input, ctx) {
    const xapi = await ctx.xapi();
    const started = Date.now();
    const warnings = [...input.warnings];
    const disks: DeltaDisk[] = [];
    let written: Written | undefined;
    let failure: unknown;
    try {
      ctx.signal.throwIfAborted();
      if (input.snapshot.kind !== 'vm') throw new PermanentError('WRONG_SNAPSHOT', `${input.vm.name}: a delta-export needs a VM snapshot, got ${input.snapshot.kind}`, { vm: input.vm.uuid });
      written = await writePoint(xapi, ctx, input, disks, warnings);
    } catch (error) {
      failure = error;
    } finally {
      warnings.push(...(await settleSnapshot(xapi, ctx, input, written)));
    }
    if (failure !== undefined) {
      for (const w of warnings.slice(input.warnings.length)) ctx.log.warn(`${input.vm.name}: ${w}`);
      throw asDeltaError(failure, input.vm.name);
    }
    const bytes = disks.reduce((n, d) => n + d.newBytes, 0);
    const exportMs = Date.now() - started;
    const read = disks.reduce((n, d) => n + d.readBytes, 0);
    ctx.log.info(`${input.vm.name}: point ${written!.point} written in ${formatSeconds(exportMs)}: read ${formatBytes(read)}, stored ${formatBytes(bytes)} new (${disks.map((d) => `${d.disk} ${d.read === 'full' ? 'whole' : 'changes'}`).join(', ')})`);
    return {
      runId: input.runId,
      jobId: input.jobId,
      try: input.try,
      vm: input.vm,
      backupDir: input.backupDir,
      folder: input.folder,
      maxBackups: input.maxBackups,
      protect: [input.stamp],
      points: true,
      ...(input.failedKeepDays !== undefined ? { failedKeepDays: input.failedKeepDays } : {}),
      point: written!.point,
      disks,
      files: [{ name: `${path.basename(written!.point)}/manifest.json`, format: 'manifest' as const, size: written!.manifestBytes }],
      bytes,
      exportMs,
      warnings,
    };
  },
});

/** A committed point: its name, its manifest's size, the devices whose snapshot stays whole as the next base (no NBD). */
interface Written {
  point: string;
  manifestBytes: number;
  keepWhole: Set<string>;
}

/** Reads each disk into a new point, adds the metadata and commits. */
async function writePoint(xapi: XapiClient, ctx: Ctx, input: DeltaExportInput, out: DeltaDisk[], warnings: string[]): Promise<Written> {
  const keepWhole = new Set<string>();
  const store = await ChunkStore.open(input.backupDir);
  const previous = (await listPoints(store, input.folder)).points.at(-1);
  if (previous !== undefined) {
    const removed = await removeDamagedChunks(store, previous);
    if (removed > 0) warnings.push(`point ${previous.stamp} failed verification: ${removed} damaged chunk(s) removed from the store, read again from the disk where it still holds them`);
  }
  const nbdTls = await nbdNeedsTls(xapi);
  const point = await PointWriter.begin(store, { vmFolder: input.folder, vm: input.vm, stamp: input.stamp });
  // Progress for the status page and the terminal: the position through the VM's disks (a
  // read of changes walks the disk's chunks, reading only those that changed).
  const total = input.snapshot.disks.reduce((n, d) => n + d.virtualSize, 0);
  let passed = 0;
  try {
    for (const disk of input.snapshot.disks) {
      ctx.signal.throwIfAborted();
      const name = disk.device;
      const snapRef = await xapi.call<string>('VDI.get_by_uuid', disk.exportVdi);
      const source = await xapi.getRecordByUuid('VDI', disk.source);
      const base = (await baseSnapshots(xapi, source)).at(-1);
      const nbd = await xapi.vdiNbdInfo(snapRef).catch(() => [] as NbdInfo[]);
      // The same disk in the previous point: by its VDI (a halted VM's devices have no name
      // but their userdevice), else by name.
      const before = previous?.manifest.disks.find((d) => d.vdi === disk.source) ?? previous?.manifest.disks.find((d) => d.name === name);
      let plan = planDiskRead({
        disk: { name, size: disk.virtualSize, cbt: source.cbt_enabled },
        cbt: input.cbt !== false,
        nbd: nbd.length > 0,
        ...(previous !== undefined ? { previous: { stamp: previous.stamp, disks: before !== undefined ? [{ name, size: before.size }] : [] } } : {}),
        ...(base !== undefined ? { base: { stamp: base.other_config[TAG.base]!, cbt: base.cbt_enabled, whole: base.type !== 'cbt_metadata' } } : {}),
        cbtTurnedOn: input.snapshot.cbtEnabled?.includes(name) === true,
      });
      let ranges: { offset: number; length: number }[] = [];
      // Without NBD the snapshot stays whole: the next run reads its VHD difference from it.
      if (nbd.length === 0 && input.cbt !== false) keepWhole.add(name);
      if (plan.via === 'nbd') {
        try {
          ranges = (await xapi.listChangedBlocks(base!.$ref, snapRef, disk.virtualSize)).ranges;
        } catch (error) {
          plan = { disk: name, read: 'full', reason: `changed blocks unknown (${errorInfo(error).message})`, warn: true };
        }
      }
      if (plan.warn) warnings.push(`${name} read whole: ${plan.reason}`);
      else ctx.log.info(`${input.vm.name}: ${name}: ${plan.reason}`);
      const progress = (bytes: number) => ctx.progress(passed + Math.min(bytes, disk.virtualSize), total);
      const r = await readDisk(xapi, ctx, input, point, { name, baseDisk: before?.name ?? name, baseRef: base?.$ref, snapRef, size: disk.virtualSize, vdi: disk.source, nbd: nbd[0], nbdTls, plan, ranges }, progress);
      passed += disk.virtualSize;
      ctx.progress(passed, total);
      if (r.healedChunks > 0) warnings.push(`${name}: ${r.healedChunks} chunk(s) of point ${plan.base} were missing from the store: read again from the disk`);
      out.push({ disk: name, read: plan.read, ...(plan.base !== undefined ? { base: plan.base } : {}), reason: plan.reason, size: r.size, readBytes: r.readBytes, newBytes: r.newBytes, newChunks: r.newChunks, healedChunks: r.healedChunks });
    }
    ctx.signal.throwIfAborted();
    // The source VM's metadata (XAPI refuses it for a snapshot): what a restore recreates.
    await point.setMeta(await downloadAll(xapi, ctx, '/export_metadata', { uuid: input.vm.uuid, export_snapshots: 'false' }));
    await writeFileAtomic(path.join(point.dir, metaFileName(input.stamp)), formatMeta(input.records));
    await point.commit();
  } catch (error) {
    await point.abort();
    throw error;
  }
  const manifestBytes = (await stat(path.join(point.dir, 'manifest.json'))).size;
  return { point: `${input.folder}/${path.basename(point.dir)}`, manifestBytes, keepWhole };
}

interface DiskRead {
  name: string;
  /** Its name in the base point, and the base snapshot (VDI ref). */
  baseDisk: string;
  baseRef: string | undefined;
  snapRef: string;
  size: number;
  vdi: string;
  nbd: NbdInfo | undefined;
  nbdTls: boolean;
  plan: DiskReadPlan;
  ranges: { offset: number; length: number }[];
}

/** One disk into the point: its changed chunks over NBD, or all of it (NBD or export_raw_vdi). */
async function readDisk(xapi: XapiClient, ctx: Ctx, input: DeltaExportInput, point: PointWriter, d: DiskRead, progress: (bytes: number) => void): Promise<PointDisk> {
  const options = {
    vdi: d.vdi,
    baseDisk: d.baseDisk,
    signal: ctx.signal,
    onProgress: (bytes: number) => {
      ctx.heartbeat();
      progress(bytes);
    },
  };
  if (d.plan.via === 'vhd') return readVhdDifference(xapi, ctx, input, point, d, options);
  if (d.nbd !== undefined) {
    const info = d.nbd;
    const nbd = await NbdClient.connect({
      host: info.address,
      port: info.port,
      exportName: info.exportname,
      ...(d.nbdTls ? { tls: { cert: info.cert, servername: info.subject } } : {}),
      idleTimeoutMs: input.idleTimeoutS * 1000,
    });
    try {
      if (d.plan.read === 'changes') {
        return await point.addDiskChanges(d.name, { vmFolder: input.folder, stamp: d.plan.base! }, d.ranges, { size: d.size, read: (offset, length) => nbd.read(offset, length) }, options);
      }
      return await point.addDisk(d.name, nbd.readStream([{ offset: 0, length: d.size }]), options);
    } finally {
      await nbd.close();
    }
  }
  const download = await xapi.download('/export_raw_vdi', { vdi: d.snapRef, format: 'raw' }, { signal: ctx.signal });
  try {
    const r = await point.addDisk(d.name, download.body, options);
    await download.task;
    return r;
  } catch (error) {
    download.abort();
    throw error;
  }
}

/**
 * The changes as XAPI's VHD difference between the new snapshot and the base snapshot (kept
 * whole): each chunk one of its blocks touches is the base point's chunk with those blocks
 * laid over it. The VHD is read as a stream, a chunk's blocks held until the writer takes it.
 */
async function readVhdDifference(xapi: XapiClient, ctx: Ctx, input: DeltaExportInput, point: PointWriter, d: DiskRead, options: WriteDiskOptions & { vdi: string; baseDisk: string }): Promise<PointDisk> {
  const baseRef = { vmFolder: input.folder, stamp: d.plan.base! };
  const baseIndex = await (await openPoint(point.store, baseRef)).openIndex(d.baseDisk);
  const download = await xapi.download('/export_raw_vdi', { vdi: d.snapRef, format: 'vhd', base: d.baseRef! }, { signal: ctx.signal });
  try {
    const cs = baseIndex.chunkSize;
    const baseBytes = diskBlockSource(point.store, baseIndex);
    const overlays = new Map<number, VhdDiskWrite[]>();
    const chunkRange = (i: number) => ({ offset: i * cs, length: Math.min(cs, d.size - i * cs) });
    async function* ranges(): AsyncGenerator<{ offset: number; length: number }> {
      let current = -1;
      let pieces: VhdDiskWrite[] = [];
      let last = -1;
      for await (const w of vhdDiskWrites(download.body)) {
        if (w.offset < last) throw new PermanentError('VHD_UNSORTED', `the VHD difference of ${d.name} is not in disk order (${w.offset} after ${last})`, { disk: d.name });
        last = w.offset;
        for (let at = w.offset; at < w.offset + w.data.length; ) {
          const i = Math.floor(at / cs);
          const end = Math.min(w.offset + w.data.length, (i + 1) * cs);
          if (i !== current) {
            if (current >= 0) {
              overlays.set(current, pieces);
              yield chunkRange(current);
            }
            current = i;
            pieces = [];
          }
          pieces.push({ offset: at, data: w.data.subarray(at - w.offset, end - w.offset) });
          at = end;
        }
      }
      if (current >= 0) {
        overlays.set(current, pieces);
        yield chunkRange(current);
      }
    }
    const reader = {
      size: d.size,
      read: async (offset: number, length: number) => {
        const out = Buffer.alloc(length);
        (await baseBytes.read(offset, length))?.copy(out);
        const i = Math.floor(offset / cs);
        for (const w of overlays.get(i) ?? []) w.data.copy(out, w.offset - offset);
        overlays.delete(i);
        return out;
      },
    };
    const r = await point.addDiskChanges(d.name, baseRef, ranges(), reader, options);
    await download.task;
    return r;
  } catch (error) {
    download.abort();
    throw error;
  } finally {
    await baseIndex.close();
  }
}

/** The whole body of a small XAPI download (the VM's metadata). */
async function downloadAll(xapi: XapiClient, ctx: Ctx, pathname: string, query: Record<string, string>): Promise<Buffer> {
  const download = await xapi.download(pathname, query, { signal: ctx.signal });
  try {
    const parts: Buffer[] = [];
    for await (const part of download.body) parts.push(part as Buffer);
    await download.task;
    return Buffer.concat(parts);
  } catch (error) {
    download.abort();
    throw error;
  }
}

/**
 * The chunks that the last verification of `point` (its verified.json) found bad and that
 * are still bad: removed, so that this backup reads them again (healed) — a chunk is named by
 * its content, so every point that shares it is whole again. Returns how many.
 */
async function removeDamagedChunks(store: ChunkStore, point: PointRef): Promise<number> {
  let verified: { ok?: unknown; problems?: { digest?: unknown }[] };
  try {
    verified = JSON.parse(await readFile(path.join(pointDir(store, point), POINT_VERIFIED), 'utf8')) as typeof verified;
  } catch {
    return 0; // never verified
  }
  if (verified.ok !== false) return 0;
  let removed = 0;
  for (const digest of new Set((verified.problems ?? []).map((p) => p.digest).filter((d): d is string => typeof d === 'string' && /^[0-9a-f]{64}$/.test(d)))) {
    try {
      await store.get(Buffer.from(digest, 'hex'));
    } catch (error) {
      if ((error as { code?: string }).code !== ChunkErrorCode.corrupt) continue;
      await unlink(store.chunkPath(digest)).catch(() => {});
      removed += 1;
    }
  }
  return removed;
}

/** NBD clients must use TLS when a network has purpose `nbd` (plain with `insecure_nbd`). */
async function nbdNeedsTls(xapi: XapiClient): Promise<boolean> {
  const networks = await xapi.getAllRecords('network');
  return networks.some((n) => (n as unknown as { purpose?: string[] }).purpose?.includes('nbd') === true);
}

/** The disk's snapshots kept as delta-export bases (tag `vmbackup:base`), oldest point first. */
export async function baseSnapshots(xapi: XapiClient, vdi: VdiRecord): Promise<VdiRecord[]> {
  const bases: VdiRecord[] = [];
  for (const ref of vdi.snapshots) {
    const snap = await xapi.getRecord('VDI', ref).catch(() => undefined);
    if (snap?.other_config[TAG.base] !== undefined) bases.push(snap);
  }
  return bases.sort((a, b) => a.other_config[TAG.base]!.localeCompare(b.other_config[TAG.base]!));
}

/**
 * After the point: its disk snapshots with CBT become the next bases (run tags off, base tag
 * on, data destroyed) and the older bases go; everything else of the snapshot is destroyed.
 * After a failure the whole snapshot goes. Returns warnings.
 */
async function settleSnapshot(xapi: XapiClient, ctx: Ctx, input: DeltaExportInput, written: Written | undefined): Promise<string[]> {
  const committed = written !== undefined;
  const warnings: string[] = [];
  const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    try {
      await fn();
    } catch (error) {
      ctx.log.debug({ err: error }, `${input.vm.name}: ${what}`);
      warnings.push(`${what} failed (${errorInfo(error).message}); the next run of this VM tries again`);
    }
  };
  const snapVm = input.snapshot.vmUuid;
  if (snapVm === undefined) return warnings;
  const vmRef = await xapi.call<string>('VM.get_by_uuid', snapVm).catch(() => undefined);
  const keep = new Set<string>();
  if (committed) {
    for (const disk of input.snapshot.disks) {
      const snap = await xapi.getRecordByUuid('VDI', disk.exportVdi).catch(() => undefined);
      if (snap === undefined || !(snap.cbt_enabled || written.keepWhole.has(disk.device))) continue;
      await step(`keeping the snapshot of ${disk.device} as the next base`, async () => {
        await tagObject(xapi, 'VDI', snap.$ref, { [TAG.base]: input.stamp, [TAG.source]: input.vm.uuid });
        for (const key of [TAG.run, TAG.job, TAG.origin]) await xapi.call('VDI.remove_from_other_config', snap.$ref, key);
        keep.add(snap.uuid);
      });
    }
  }
  if (vmRef !== undefined) await step('destroying the snapshot', () => destroySnapshotVm(xapi, vmRef, { keepVdis: keep }));
  for (const disk of input.snapshot.disks) {
    if (keep.has(disk.exportVdi) && written?.keepWhole.has(disk.device) !== true) {
      const ref = await xapi.call<string>('VDI.get_by_uuid', disk.exportVdi);
      await step(`destroying the data of ${disk.device}'s base snapshot`, () => xapi.dataDestroy(ref));
    }
    // Bases of earlier points are superseded once this point has its own (or is full).
    const source = await xapi.getRecordByUuid('VDI', disk.source).catch(() => undefined);
    if (source === undefined || !committed) continue;
    for (const old of await baseSnapshots(xapi, source)) {
      if (old.uuid === disk.exportVdi) continue;
      await step(`destroying the superseded base snapshot ${old.uuid} of ${disk.device}`, () => destroySnapshotVdi(xapi, old.$ref));
    }
  }
  return warnings;
}

/** A failure as the coordinator should treat it: a new snapshot may help, unless permanent. */
function asDeltaError(error: unknown, vmName: string): VmbackupError {
  if (error instanceof PermanentError) return error;
  const info = errorInfo(error);
  if (info.code === 'UUID_INVALID' || info.code === 'HANDLE_INVALID') {
    return new RestartError('SNAPSHOT_GONE', `the snapshot of ${vmName} is gone (${info.code})`, {}, { cause: error });
  }
  return new RestartError(info.code, info.message, error instanceof VmbackupError ? error.data : {}, { cause: error });
}

/**
 * What the next run of a delta-export does with each disk of `vm`, for `--preview`: read
 * only from the pool and the store (nothing is written, the store is not created).
 */
export async function previewDiskReads(xapi: XapiClient, vm: VmRecord, opts: { backupDir: string; folder: string; cbt: boolean }): Promise<DiskReadPlan[]> {
  const hasStore = await stat(path.join(opts.backupDir, STORE_FOLDER, 'store.json')).then(
    () => true,
    () => false,
  );
  const previous = hasStore ? (await listPoints(await ChunkStore.open(opts.backupDir), opts.folder)).points.at(-1) : undefined;
  const plans: DiskReadPlan[] = [];
  for (const { vbd, vdi } of await vmDisks(xapi, vm)) {
    const base = (await baseSnapshots(xapi, vdi)).at(-1);
    const nbd = await xapi.vdiNbdInfo(vdi.$ref).catch(() => [] as NbdInfo[]);
    plans.push(
      planDiskRead({
        disk: { name: vbd.device || `userdevice${vbd.userdevice}`, size: Number(vdi.virtual_size), cbt: vdi.cbt_enabled },
        cbt: opts.cbt,
        nbd: nbd.length > 0,
        ...(previous !== undefined ? { previous: { stamp: previous.stamp, disks: previous.manifest.disks } } : {}),
        ...(base !== undefined ? { base: { stamp: base.other_config[TAG.base]!, cbt: base.cbt_enabled, whole: base.type !== 'cbt_metadata' } } : {}),
      }),
    );
  }
  return plans;
}
