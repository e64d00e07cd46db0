import { createReadStream } from 'node:fs';
import { open, readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform, pipeline } from 'node:stream';
import { z } from 'zod';
import { PermanentError, VmbackupError, errorInfo } from '../../runtime/errors.js';
import { jobSubject } from '../../runtime/events.js';
import { decodeVhdFooter, VhdDiskType } from '../../runtime/formats/vhd.js';
import { loadXxh64 } from '../../runtime/formats/xxh64.js';
import { defineFunction, subject } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { checkManifest } from '../../runtime/storage/manifest.js';
import type { Manifest } from '../../runtime/storage/manifest.js';
import { DISK_NAME_RE } from '../../runtime/storage/naming.js';
import { formatBytes, formatSeconds } from '../../runtime/units.js';
import type { XapiClient } from '../../runtime/xapi/client.js';
import { NULL_REF } from '../../runtime/xapi/records.js';
import type { Ref, SrRecord, VdiRecord, VmRecord } from '../../runtime/xapi/records.js';
import { BLOCK_REASON_PREFIX, TAG, blockHolders, jobKey } from '../../runtime/xapi/snapshots.js';
import { JobBase } from '../job.js';
import { parseMeta } from '../meta/meta-format.js';
import { manifestCheck } from '../prune/retention.js';
import type { MetaRecords } from '../meta/meta-format.js';
import { RestoreInputError, chooseDataFile, manifestNameOf, metaNameOf, parseRestoreFile, rawFormatOf, restoredName, setDataFiles } from './restore-set.js';
import type { RestoreFile, SetDataFile } from './restore-set.js';
import { FailureTap, choosePointDisk, openRestorePoint, pointLocation, pointReadError, pointVdiRecord, pointXva } from './restore-point.js';
import type { PointLocation } from './restore-point.js';
import { POINT_PREFIX } from '../../runtime/chunkstore/points.js';
import { readDiskRaw } from '../../runtime/chunkstore/chunkstore.js';

/**
 * restore — puts a backup back into the pool.
 *
 * - A VM export (`.xva`, `.xva.gz`, `.xva.zst`) goes through `PUT /import` (XAPI recognises
 *   gzip and zstd itself) onto `sr` (default: the pool's default SR); `preserve` asks XAPI to
 *   keep the VM's uuid and MAC addresses (`restore=true`, as `xe vm-import preserve=true`).
 *   With `preserve` the VM the backup came from (its uuid in the manifest or `.meta`) must be
 *   gone: while it exists the restore is refused before uploading (two VMs of one name with
 *   the same MACs), unless `force`. The VM is then named (see `restoredName`), and the start
 *   block vmbackup put on a halted VM while exporting it (saved in ova.xml, which XAPI's
 *   import keeps) is lifted: only entries whose reason is vmbackup's, never an operator's.
 * - A disk (`.raw`, `.vhd`) goes through `PUT /import_raw_vdi` into a new VDI (size, name and
 *   description from the set's `.meta`, type user, on `sr`), or into the existing VDI `vdi`
 *   when given (it must be large enough and detached).
 *
 * Uploads are streamed from the file with its size as Content-Length (XAPI cannot take a
 * chunked upload). Before uploading, the set must be complete (its manifest valid) and must
 * not have failed verification; `force` restores it anyway, with a warning. The file's XXH64
 * is checked against the manifest as it streams (before writing, for an existing VDI).
 *
 * Input that does not fit the backup or the pool (`disk`, `sr`, `vdi`, an option for the other
 * kind of backup) throws RestoreInputError before anything is uploaded.
 *
 * Nothing is left half-created: a failed `/import` is rolled back by XAPI; anything that
 * fails after objects exist (an upload, the checksum, naming, an abort) destroys the VDI
 * this restore created, or the imported VM and its disks.
 *
 * Subject `vmbackup.jobs.restore`. Never redelivered: a restore that failed is run again by
 * its operator.
 *
 * @example
 *   { "runId": "restore-20261126-090000", "jobId": "restore.1", "file": "/mnt/VmBackup/exports/web1/backup_20261126-083000.xva.zst",
 *     "sr": "NFS", "preserve": false }
 *   → { "created": { "vms": [{ "uuid": "…", "name": "web1 (restored 20261126-083000)", "unblocked": [] }],
 *                    "vdis": [{ "uuid": "…", "name": "web1 0", "sr": "…" }] }, … }
 */
export const RestoreInput = JobBase.extend({
  /**
   * Absolute path of a data file of a backup set, or of its manifest `backup_<stamp>.json`; or
   * of a point of the chunk store: its folder `point_<stamp>` or its `manifest.json`.
   */
  file: z.string().min(1).refine((f) => path.isAbsolute(f), 'file must be an absolute path'),
  /** SR to restore onto: uuid or name_label. Default: the pool's default SR. */
  sr: z.string().min(1).optional(),
  /** name_label of the restored VM (or new VDI). */
  name: z.string().min(1).optional(),
  /** VM exports: keep uuid and MACs (`xe vm-import preserve=true`); the name stays the original's. */
  preserve: z.boolean().default(false),
  /** raw / vhd: write into this existing VDI (uuid) instead of a new one. */
  vdi: z.string().min(1).optional(),
  /**
   * raw / vhd into a new VDI: attach it to this VM (name or uuid) on its first free device,
   * read-write, not bootable; plugged when the VM runs. Checked before anything is uploaded.
   */
  attach: z.string().min(1).optional(),
  /** vdi-export sets and points with several disks: the device to restore (`xvdb`); for a point, one disk instead of the VM. */
  disk: z.string().regex(DISK_NAME_RE, 'disk: a device name such as xvdb').optional(),
  /** Restore a set that is incomplete or failed verification. */
  force: z.boolean().default(false),
  /** Seconds without upload progress before the restore is abandoned. */
  idleTimeoutS: z.number().int().min(1).default(300),
});
export type RestoreInput = z.infer<typeof RestoreInput>;

export const RestoredVm = z.object({
  uuid: z.string(),
  name: z.string(),
  /**
   * Operations whose block this restore lifted: the `start`/`start_on` block vmbackup puts on a
   * halted VM while exporting it without a snapshot, which the export saved. `["start"]`
   */
  unblocked: z.array(z.string()).default([]),
});
export const RestoredVdi = z.object({ uuid: z.string(), name: z.string(), sr: z.string().describe('SR uuid') });
/** Where `attach` put the new VDI. */
export const AttachedVdi = z.object({
  vm: z.object({ uuid: z.string(), name: z.string() }),
  /** uuid of the VBD created. */
  vbd: z.string(),
  /** Device number on the VM (`VBD.userdevice`): "1" is xvdb. */
  device: z.string(),
  /** Hotplugged into the running VM; otherwise it is attached when the VM starts. */
  plugged: z.boolean(),
  /** The VM's power state when the VBD was made. */
  powerState: z.string(),
});
export type AttachedVdi = z.infer<typeof AttachedVdi>;
export type RestoredVm = z.infer<typeof RestoredVm>;
export type RestoredVdi = z.infer<typeof RestoredVdi>;

export const RestoreOutput = JobBase.extend({
  /** The data file uploaded. */
  file: z.string(),
  /** `point`: a point of the chunk store (`file` is its folder). */
  format: z.enum(['xva', 'xva.gz', 'xva.zst', 'raw', 'vhd', 'point']),
  /** What this restore created on the pool. */
  created: z.object({ vms: z.array(RestoredVm), vdis: z.array(RestoredVdi) }),
  /** The existing VDI written (`vdi` given). */
  overwritten: RestoredVdi.optional(),
  /** The VM the new VDI was attached to (`attach` given). */
  attached: AttachedVdi.optional(),
  bytes: z.number().int().min(0),
  restoreMs: z.number().min(0),
  warnings: z.array(z.string()).default([]),
});
export type RestoreOutput = z.infer<typeof RestoreOutput>;

export const RestoreJob = subject(jobSubject('restore'), RestoreInput);

/** Keys vmbackup writes into `other_config` of what a restore creates. */
export const RESTORE_TAG = {
  /** The data file restored (name inside its VM folder). */
  from: 'vmbackup:restored-from',
  /** `<runId>/<jobId>/<try>` of the restore. */
  job: 'vmbackup:restore-job',
} as const;

export const restore = defineFunction({
  name: 'restore',
  description: 'Restore a backup (xva via /import, raw/vhd via /import_raw_vdi) into the pool; nothing half-created on failure.',
  subject: RestoreJob,
  output: RestoreOutput,
  retry: { maxDeliver: 1, backoffMs: [0] },
  // FILE is a path on the worker's disk and the result a new VM: not for the HTTP gateway.
  remote: false,
  async handle(input, ctx) {
    const started = Date.now();
    const warnings: string[] = [];
    const warn = (message: string) => {
      warnings.push(message);
      ctx.log.warn(message);
    };
    const refuse = (code: string, message: string) => {
      if (!input.force) throw new PermanentError(code, `${message}; --force restores it anyway`);
      warn(`${message}; restoring anyway (--force)`);
    };
    const point = pointLocation(input.file);
    const source = point !== undefined ? await pointSource(input, point) : setSource(await readSet(input, refuse, warn));
    try {
      const xapi = await ctx.xapi();
      const tags = { [RESTORE_TAG.from]: source.from, [RESTORE_TAG.job]: jobKey(input) };
      const result = source.kind === 'vm' ? await restoreVm(xapi, ctx, input, source, tags, refuse, warn) : await restoreDisk(xapi, ctx, input, source, tags, warn);
      const restoreMs = Date.now() - started;
      const what = [...result.created.vms.map((v) => `VM "${v.name}" (${v.uuid})${v.unblocked.length > 0 ? ` (lifted vmbackup's block of ${v.unblocked.join(', ')})` : ''}`), ...result.created.vdis.map((v) => `VDI "${v.name}" (${v.uuid})`)];
      if (result.overwritten !== undefined) what.push(`existing VDI "${result.overwritten.name}" (${result.overwritten.uuid})`);
      ctx.log.info(`restored ${source.name} (${formatBytes(source.length)} in ${formatSeconds(restoreMs)}): ${what.join(', ')}`);
      return {
        runId: input.runId,
        jobId: input.jobId,
        try: input.try,
        file: source.file,
        format: source.format,
        ...result,
        bytes: source.length,
        restoreMs,
        warnings,
      };
    } finally {
      await source.close();
    }
  },
});

/**
 * What a restore uploads: a backup set's data file, or a point of the chunk store streamed from
 * its chunks (restore-point.ts). Both go through the same upload, naming and clean-up below.
 */
interface SourceBase {
  /** What error messages name: the data file's path, or `point web1/point_<stamp>`. */
  label: string;
  /** The short name log lines and messages use: the file's name, or the point's. */
  name: string;
  /** The file or point folder restored (the output's `file`). */
  file: string;
  format: RestoreOutput['format'];
  /** The value of the `vmbackup:restored-from` tag. */
  from: string;
  stamp: string;
  /** Bytes uploaded (XAPI needs the Content-Length). */
  length: number;
  /** A new stream of the bytes to upload (a redirected upload reads them again). */
  open(ctx: Ctx): Readable;
  /** Once every byte went: throws when they were not the backup's (a checksum). */
  check(): void;
  /** The source's own failure during the upload (a bad chunk), said rather than XAPI's verdict on the cut upload. */
  failure(): VmbackupError | undefined;
  close(): Promise<void>;
}

interface VmSource extends SourceBase {
  kind: 'vm';
  /** The VM the backup is of, as its metadata names it. */
  original: { name?: string | undefined; uuid?: string | undefined };
}

interface DiskSource extends SourceBase {
  kind: 'disk';
  /** How `/import_raw_vdi` takes the bytes. */
  upload: 'raw' | 'vhd';
  /** The VDI's name and description, as the backup's metadata has them. */
  vdiName: string;
  vdiDescription: string;
  /** The virtual size a VDI needs to hold the disk; may warn, or refuse a file that cannot be one. */
  needed(warn: (message: string) => void): Promise<number>;
  /** Reads the whole backup and checks it, before an existing VDI's content is replaced. */
  checkFirst(ctx: Ctx, force: boolean): Promise<void>;
}

type Source = VmSource | DiskSource;

/** A backup set's data file as what a restore uploads. */
function setSource(set: SetInfo): Source {
  const hash = new StreamHash();
  const base = {
    label: set.path,
    name: set.data.name,
    file: path.join(set.file.dir, set.data.name),
    format: set.data.format,
    from: set.data.name,
    stamp: set.file.stamp,
    length: set.size,
    open: (ctx: Ctx) => hash.open(set.path, ctx),
    check: () => hash.check(set),
    failure: () => undefined,
    close: async () => {},
  };
  const upload = rawFormatOf(set.data.format);
  if (upload === undefined) return { ...base, kind: 'vm', original: { name: set.meta?.vm.name_label ?? set.manifest?.vm.name, uuid: set.meta?.vm.uuid ?? set.manifest?.vm.uuid } };
  const diskMeta = set.meta?.disks.find((d) => d.vbd.device === set.data.disk);
  return {
    ...base,
    kind: 'disk',
    upload,
    vdiName: diskMeta?.vdi.name_label ?? `${set.manifest?.vm.name ?? 'disk'} ${set.data.disk ?? ''}`.trim(),
    vdiDescription: diskMeta?.vdi.name_description ?? '',
    needed: async (warn) => {
      if (upload === 'vhd') {
        const footer = await readVhdFooter(set.path);
        if (footer.diskType === VhdDiskType.differencing) {
          throw new PermanentError('RESTORE_DIFFERENCING', `${set.data.name} is a differencing VHD: it cannot be restored without its parent`);
        }
        return Math.max(footer.currentSize, diskMeta === undefined ? 0 : Number(diskMeta.vdi.virtual_size));
      }
      const needed = diskMeta === undefined ? set.size : Number(diskMeta.vdi.virtual_size);
      if (set.size > needed) throw new PermanentError('RESTORE_TOO_LARGE', `${set.data.name} holds ${set.size} bytes, more than the disk's virtual_size ${needed} in the .meta`);
      if (set.size < needed) warn(`${set.data.name} holds ${set.size} bytes, the disk ${needed}: the rest of the disk is left as it is (zeros on a new VDI)`);
      return needed;
    },
    checkFirst: async (ctx, force) => {
      if (set.xxh64 !== undefined && !force) await verifyFile(set, ctx);
    },
  };
}

/**
 * A point of the chunk store as what a restore uploads: the whole VM as an XVA made from its
 * metadata and chunks (restore-point.ts), or, with `disk` (or `vdi` / `attach`, which take a
 * disk), that disk's raw bytes. An incomplete point is never restored: `force` does not apply.
 */
async function pointSource(input: RestoreInput, where: PointLocation): Promise<Source> {
  const p = await openRestorePoint(where);
  const base = { label: `point ${p.name}`, name: p.name, file: where.dir, format: 'point' as const, from: `${where.ref.vmFolder}/${POINT_PREFIX}${where.ref.stamp}`, stamp: where.ref.stamp, check: () => {} };
  if (input.disk === undefined && input.vdi === undefined && input.attach === undefined) {
    const xva = await pointXva(p);
    const tap = new FailureTap((error) => pointReadError(error, p, 'of the VM'));
    return { ...base, kind: 'vm', length: xva.length, open: () => tap.tap(xva.open()), failure: () => tap.error, close: () => xva.close(), original: xva.vm };
  }
  const disk = choosePointDisk(p, input.disk);
  const tap = new FailureTap((error) => pointReadError(error, p, disk.name));
  const vdi = await pointVdiRecord(p, disk.name);
  const raw = () =>
    Readable.from(
      (async function* () {
        yield* await readDiskRaw(p.store, where.ref, disk.name);
      })(),
    );
  return {
    ...base,
    kind: 'disk',
    upload: 'raw',
    length: disk.size,
    open: () => tap.tap(raw()),
    failure: () => tap.error,
    close: async () => {},
    vdiName: vdi?.name ?? `${p.point.manifest.vm.name} ${disk.name}`,
    vdiDescription: vdi?.description ?? '',
    needed: async () => disk.size,
    checkFirst: async () => {
      const check = new FailureTap((error) => pointReadError(error, p, disk.name));
      try {
        for await (const chunk of check.tap(raw())) void chunk;
      } catch (error) {
        throw check.error ?? error;
      }
    },
  };
}

/** What the handler knows of the set before talking to XAPI. */
interface SetInfo {
  file: RestoreFile;
  data: SetDataFile;
  path: string;
  size: number;
  /** XXH64 recorded in the manifest, when there is one. */
  xxh64?: string;
  manifest?: Manifest;
  meta?: MetaRecords;
}

/** Reads and checks the set: manifest (complete, not failed), data file, `.meta`. */
async function readSet(input: RestoreInput, refuse: (code: string, message: string) => void, warn: (message: string) => void): Promise<SetInfo> {
  const file = parseRestoreFile(input.file);
  const manifestName = manifestNameOf(file);
  let manifest: Manifest | undefined;
  if (manifestName === undefined) {
    refuse('SET_UNCHECKED', `${file.name} is a VmBackup backup: it has no manifest, so nothing says it is complete`);
  } else {
    const status = await checkManifest(file.dir, manifestName);
    // The rule prune and the gateway use for whether a set counts.
    const check = manifestCheck(status);
    if (status.valid) manifest = status.manifest;
    if (check.failedVerification === true) {
      refuse('SET_FAILED_VERIFY', `the backup set ${file.stamp} in ${file.dir} ${check.reason}`);
    } else if (!status.valid) {
      const absent = !(await stat(path.join(file.dir, manifestName)).then(() => true, () => false));
      const reason = absent ? `no manifest ${manifestName}: the backup did not finish` : status.reason;
      refuse('SET_INCOMPLETE', `the backup set ${file.stamp} in ${file.dir} is incomplete (${reason})`);
    }
  }
  let names: string[];
  if (manifest !== undefined) names = manifest.files.map((f) => f.name);
  else {
    try {
      names = await readdir(file.dir);
    } catch (error) {
      throw new PermanentError('RESTORE_BAD_FILE', `${file.dir}: cannot list the folder (${errorInfo(error).code})`, { dir: file.dir }, { cause: error });
    }
  }
  const data = chooseDataFile(file, setDataFiles(names, file.stamp), input.disk);
  const recorded = manifest?.files.find((f) => f.name === data.name);
  if (manifest !== undefined && recorded === undefined) refuse('RESTORE_NOT_IN_SET', `${data.name} is not listed in the set's manifest ${manifestName}`);
  const dataPath = path.join(file.dir, data.name);
  let size: number;
  try {
    const s = await stat(dataPath);
    if (!s.isFile()) throw Object.assign(new Error('not a regular file'), { code: 'EISDIR' });
    size = s.size;
  } catch (error) {
    throw new PermanentError('RESTORE_BAD_FILE', `${dataPath}: cannot be read (${errorInfo(error).code})`, { file: dataPath }, { cause: error });
  }
  let meta: MetaRecords | undefined;
  const metaName = metaNameOf(file.stamp, data.disk);
  try {
    meta = parseMeta(await readFile(path.join(file.dir, metaName), 'utf8'));
  } catch (error) {
    // Names and sizes then come from the manifest and the data itself.
    const code = (error as { code?: string }).code;
    warn(`${metaName}: ${code === 'ENOENT' ? 'missing' : (error as Error).message}; names and sizes taken from the manifest and the data`);
  }
  return {
    file,
    data,
    path: dataPath,
    size,
    ...(recorded?.xxh64 !== undefined ? { xxh64: recorded.xxh64 } : {}),
    ...(manifest !== undefined ? { manifest } : {}),
    ...(meta !== undefined ? { meta } : {}),
  };
}

/** The restore's result, without the job fields. */
type Restored = Pick<RestoreOutput, 'created' | 'overwritten' | 'attached'>;

/** `/import` of a VM export, then name and tag what it created, and lift vmbackup's start block. */
async function restoreVm(
  xapi: XapiClient,
  ctx: Ctx,
  input: RestoreInput,
  set: VmSource,
  tags: Record<string, string>,
  refuse: (code: string, message: string) => void,
  warn: (message: string) => void,
): Promise<Restored> {
  if (input.vdi !== undefined) throw new RestoreInputError('RESTORE_BAD_TARGET', `--vdi: ${set.name} is a VM export; --vdi takes a disk backup (raw or vhd)`);
  if (input.attach !== undefined) throw new RestoreInputError('RESTORE_BAD_TARGET', `--attach: ${set.name} is a VM export; --attach takes a disk backup (raw or vhd)`);
  const sr = await resolveSr(xapi, input.sr);
  const original = set.original.name;
  const originalUuid = set.original.uuid;
  if (input.preserve) await checkOriginalGone(xapi, set, originalUuid, refuse, warn);
  const query: Record<string, string> = { sr_id: sr.$ref };
  if (input.preserve) query.restore = 'true';
  let result: unknown;
  try {
    result = await xapi.upload('/import', query, () => set.open(ctx), set.length, { signal: ctx.signal, idleTimeoutMs: input.idleTimeoutS * 1000 });
  } catch (error) {
    // XAPI rolls a failed import back (import.ml without force): nothing to destroy here.
    throw restoreError(error, set);
  }
  const vmRefs = (Array.isArray(result) ? result : typeof result === 'string' && result !== '' ? [result] : []).map(String);
  const vdiRefs: Ref[] = [];
  try {
    if (vmRefs.length === 0) throw new PermanentError('IMPORT_NO_VM', `${set.name}: XAPI imported no VM (task result ${JSON.stringify(result)})`);
    // What the import made is known now: from here any failure destroys it.
    for (const ref of vmRefs) vdiRefs.push(...(await vmDisks(xapi, ref)));
    if (ctx.signal.aborted) throw new VmbackupError('ABORTED', `${set.name}: restore aborted`);
    set.check();
    const created: Restored['created'] = { vms: [], vdis: [] };
    for (const ref of vmRefs) {
      const vm = await xapi.getRecord('VM', ref);
      const name = restoredName(original ?? vm.name_label, set.stamp, { ...(input.name !== undefined ? { name: input.name } : {}), preserve: input.preserve });
      await xapi.call('VM.set_name_label', ref, name);
      await retag(xapi, 'VM', ref, vm.other_config, tags);
      const unblocked = await liftExportBlock(xapi, ref, vm.blocked_operations);
      if (unblocked.length > 0) ctx.log.info(`VM "${name}" (${vm.uuid}): lifted the ${unblocked.join(', ')} block vmbackup's export of the halted VM had saved in the backup`);
      created.vms.push({ uuid: vm.uuid, name, unblocked });
      if (input.preserve && originalUuid !== undefined && vm.uuid !== originalUuid) {
        warn(`--preserve: the backup is of a snapshot of VM ${originalUuid}, so XAPI kept the snapshot's uuid ${vm.uuid} (a VM's uuid cannot be set); the MAC addresses are the original's`);
      }
    }
    for (const ref of vdiRefs) {
      const vdi = await xapi.getRecord('VDI', ref);
      await retag(xapi, 'VDI', ref, vdi.other_config, tags);
      created.vdis.push({ uuid: vdi.uuid, name: vdi.name_label, sr: await srUuid(xapi, vdi) });
    }
    return { created };
  } catch (error) {
    const leftovers = await destroyAll(xapi, vmRefs, vdiRefs);
    throw restoreError(error, set, leftovers);
  }
}

/** `/import_raw_vdi` into a new VDI, or into the one given. */
async function restoreDisk(xapi: XapiClient, ctx: Ctx, input: RestoreInput, set: DiskSource, tags: Record<string, string>, warn: (message: string) => void): Promise<Restored> {
  const format = set.upload;
  if (input.preserve) throw new RestoreInputError('RESTORE_BAD_TARGET', `--preserve: ${set.name} is a disk backup; --preserve applies to VM exports (xva)`);
  if (input.attach !== undefined && input.vdi !== undefined) {
    throw new RestoreInputError('RESTORE_BAD_TARGET', `--attach and --vdi: --attach gives the new VDI a VM; the VDI --vdi names keeps the VBDs it has`);
  }
  const needed = await set.needed(warn);
  const upload = async (vdi: Ref) => {
    await xapi.upload('/import_raw_vdi', { vdi, format }, () => set.open(ctx), set.length, { signal: ctx.signal, idleTimeoutMs: input.idleTimeoutS * 1000 });
    if (ctx.signal.aborted) throw new VmbackupError('ABORTED', `${set.name}: restore aborted`);
  };

  if (input.vdi !== undefined) {
    const target = await existingVdi(xapi, input, needed);
    // Its old content is lost once the upload starts: check the backup first, not while writing.
    await set.checkFirst(ctx, input.force);
    try {
      await upload(target.$ref);
    } catch (error) {
      throw restoreError(error, set);
    }
    return { created: { vms: [], vdis: [] }, overwritten: { uuid: target.uuid, name: target.name_label, sr: await srUuid(xapi, target) } };
  }

  const sr = await resolveSr(xapi, input.sr);
  const attachTo = input.attach === undefined ? undefined : await attachTarget(xapi, input.attach);
  const name = restoredName(set.vdiName, set.stamp, {
    ...(input.name !== undefined ? { name: input.name } : {}),
  });
  let ref: Ref;
  try {
    ref = await xapi.call<string>('VDI.create', {
      name_label: name,
      name_description: set.vdiDescription,
      SR: sr.$ref,
      virtual_size: needed,
      type: 'user',
      sharable: false,
      read_only: false,
      other_config: tags,
      xenstore_data: {},
      sm_config: {},
      tags: [],
    });
  } catch (error) {
    throw restoreError(error, set);
  }
  let created: RestoredVdi;
  try {
    await upload(ref);
    set.check();
    const vdi = await xapi.getRecord('VDI', ref);
    created = { uuid: vdi.uuid, name: vdi.name_label, sr: sr.uuid };
  } catch (error) {
    const leftovers = await destroyAll(xapi, [], [ref]);
    throw restoreError(error, set, leftovers);
  }
  if (attachTo === undefined) return { created: { vms: [], vdis: [created] } };
  // The data is good from here: a failed attach keeps the VDI and says how to attach it.
  try {
    const attached = await attachVdi(xapi, attachTo, ref, tags);
    ctx.log.info(`VDI "${created.name}" (${created.uuid}) attached to VM "${attached.vm.name}" (${attached.vm.uuid}) as device ${attached.device}${attached.plugged ? ', plugged' : ` (VM ${attached.powerState.toLowerCase()}: not plugged)`}`);
    return { created: { vms: [], vdis: [created] }, attached };
  } catch (error) {
    const info = errorInfo(error);
    throw new PermanentError(
      'RESTORE_ATTACH_FAILED',
      `restored ${set.name} into VDI "${created.name}" (${created.uuid}), but could not attach it to VM "${attachTo.name_label}" (${attachTo.uuid}): ${info.message}; the VDI is kept`,
      { xapiCode: info.code, vm: attachTo.uuid, created: { vms: [], vdis: [created] } },
      { cause: error },
    );
  }
}

/**
 * `--attach`: the VM a restored disk goes to, by uuid or by name (exactly one VM of that
 * name), checked before anything is uploaded: a plain VM (not a snapshot, template or control
 * domain) with a free device. RestoreInputError otherwise.
 */
async function attachTarget(xapi: XapiClient, given: string): Promise<VmRecord> {
  const what = (vm: VmRecord) => (vm.is_a_snapshot ? 'a snapshot' : vm.is_control_domain ? 'a control domain' : vm.is_a_template ? 'a template' : undefined);
  let vm: VmRecord | undefined;
  if (UUID_RE.test(given)) vm = await xapi.getRecordByUuid('VM', given).catch(() => undefined);
  if (vm === undefined) {
    const refs = await xapi.call<string[]>('VM.get_by_name_label', given);
    const all = await Promise.all(refs.map((r) => xapi.getRecord('VM', r)));
    const plain = all.filter((v) => what(v) === undefined);
    if (plain.length > 1) {
      throw new RestoreInputError('VM_AMBIGUOUS', `--attach ${given}: ${plain.length} VMs have this name (${plain.map((v) => v.uuid).join(', ')}): give the uuid`, { vm: given });
    }
    vm = plain[0] ?? all[0];
    if (vm === undefined) throw new RestoreInputError('VM_NOT_FOUND', `--attach ${given}: no VM has this uuid or name`, { vm: given });
  }
  const kind = what(vm);
  if (kind !== undefined) {
    throw new RestoreInputError('RESTORE_BAD_TARGET', `--attach ${given}: "${vm.name_label}" (${vm.uuid}) is ${kind}, not a VM a disk can be given to`, { vm: vm.uuid });
  }
  if ((await xapi.allowedVbdDevices(vm.$ref)).length === 0) {
    throw new RestoreInputError('NO_FREE_DEVICE', `--attach ${given}: VM "${vm.name_label}" (${vm.uuid}) has no free device for another disk`, { vm: vm.uuid });
  }
  return vm;
}

/**
 * Gives the VDI to the VM: a read-write, non-bootable disk VBD on its first free device,
 * plugged when the VM runs (left for the VM's next start otherwise). A VBD that could not
 * be plugged is destroyed again, so the VDI is left as it was, attached to nothing.
 */
async function attachVdi(xapi: XapiClient, vm: VmRecord, vdi: Ref, tags: Record<string, string>): Promise<AttachedVdi> {
  // Read again: the VM may have changed during the upload.
  const [device] = await xapi.allowedVbdDevices(vm.$ref);
  if (device === undefined) throw new PermanentError('NO_FREE_DEVICE', `VM "${vm.name_label}" has no free device left`);
  const vbd = await xapi.createVbd({ vm: vm.$ref, vdi, userdevice: device, bootable: false, mode: 'RW', type: 'Disk', otherConfig: tags });
  try {
    const uuid = await xapi.call<string>('VBD.get_uuid', vbd);
    const powerState = await xapi.call<string>('VM.get_power_state', vm.$ref);
    const plugged = powerState === 'Running';
    if (plugged) await xapi.plugVbd(vbd);
    return { vm: { uuid: vm.uuid, name: vm.name_label }, vbd: uuid, device, plugged, powerState };
  } catch (error) {
    // The plug is the last step: what is left to undo is an unplugged VBD.
    await xapi.destroyVbd(vbd).catch(() => {});
    throw error;
  }
}

/** XAPI's codes for an object that does not exist (any more). */
const GONE: readonly string[] = ['HANDLE_INVALID', 'UUID_INVALID'];

/**
 * `--preserve` puts the backup in place of the VM it came from, so that VM must be gone:
 * while it exists, XAPI would make a second VM of that name with the same MAC addresses (a
 * snapshot export has its own uuid), and the next backup would find two VMs of one name.
 */
async function checkOriginalGone(
  xapi: XapiClient,
  set: VmSource,
  uuid: string | undefined,
  refuse: (code: string, message: string) => void,
  warn: (message: string) => void,
): Promise<void> {
  if (uuid === undefined) {
    warn(`--preserve: neither a manifest nor a .meta names the VM ${set.name} is a backup of: make sure it is gone`);
    return;
  }
  const vm = await xapi.getRecordByUuid('VM', uuid).catch((error: unknown) => {
    if (GONE.includes(errorInfo(error).code)) return undefined;
    throw error;
  });
  if (vm === undefined) return;
  refuse(
    'RESTORE_ORIGINAL_EXISTS',
    `--preserve: VM "${vm.name_label}" (${uuid}), which this backup is of, still exists in the pool: restoring in its place would make a second VM with its name and MAC addresses; destroy it first, or restore a copy without --preserve`,
  );
}

/**
 * Lifts the blocks vmbackup's export of a halted VM left in the backup (`start`, `start_on`
 * with vmbackup's reason; ova.xml saves them and the import keeps them, so the restored VM
 * could not start). Any other block, an operator's, stays. Returns the operations unblocked.
 */
async function liftExportBlock(xapi: XapiClient, ref: Ref, blocked: Record<string, string>): Promise<string[]> {
  const ops = Object.keys(blocked)
    .filter((op) => blocked[op]!.startsWith(BLOCK_REASON_PREFIX))
    .sort();
  for (const op of ops) await xapi.call('VM.remove_from_blocked_operations', ref, op);
  return ops;
}

/** The VDIs behind a VM's disk VBDs. */
async function vmDisks(xapi: XapiClient, vmRef: Ref): Promise<Ref[]> {
  const vm = await xapi.getRecord('VM', vmRef);
  const out: Ref[] = [];
  for (const vbdRef of vm.VBDs) {
    const vbd = await xapi.getRecord('VBD', vbdRef);
    if (vbd.type === 'Disk' && vbd.VDI !== NULL_REF) out.push(vbd.VDI);
  }
  return out;
}

/**
 * Replaces the snapshot tags the backup carried (the export was of a tagged snapshot) with
 * the restore's: a restored VM or disk must never look like a leftover snapshot of ours. The
 * holds on a halted VM's start block it carried go too (the block itself: liftExportBlock).
 */
async function retag(xapi: XapiClient, cls: 'VM' | 'VDI', ref: Ref, otherConfig: Record<string, string>, tags: Record<string, string>): Promise<void> {
  for (const key of [...Object.values(TAG), ...blockHolders(otherConfig).map(([holder]) => holder), ...Object.keys(tags)]) {
    if (key in otherConfig) await xapi.call(`${cls}.remove_from_other_config`, ref, key);
  }
  for (const [key, value] of Object.entries(tags)) await xapi.call(`${cls}.add_to_other_config`, ref, key, value);
}

/**
 * Destroys what a failed restore created (VMs first, then their disks). Returns the uuids or
 * refs it could not destroy, for the error message; objects already gone are fine.
 */
async function destroyAll(xapi: XapiClient, vms: Ref[], vdis: Ref[]): Promise<string[]> {
  const left: string[] = [];
  const gone = (error: unknown) => GONE.includes(errorInfo(error).code);
  for (const [cls, refs] of [['VM', vms], ['VDI', vdis]] as const) {
    for (const ref of refs) {
      const uuid = await xapi.call<string>(`${cls}.get_uuid`, ref).catch(() => ref);
      try {
        await xapi.call(`${cls}.destroy`, ref);
      } catch (error) {
        if (!gone(error)) left.push(`${cls} ${uuid} (${errorInfo(error).code})`);
      }
    }
  }
  return left;
}

function restoreError(error: unknown, set: Source, leftovers: string[] = []): VmbackupError {
  // An upload cut by its source (a bad chunk) ends with XAPI's verdict on a short body: say the cause.
  const cause = set.failure() ?? error;
  const info = errorInfo(cause);
  const tail = leftovers.length > 0 ? `; could not remove ${leftovers.join(', ')}: destroy them by hand` : '';
  const message = `restore of ${set.label} failed: ${info.message}${tail}`;
  const data = { ...(info.data ?? {}), ...(leftovers.length > 0 ? { leftovers } : {}) };
  return new PermanentError(info.code, message, data, { cause });
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The SR to restore onto: by uuid, else by name (exactly one), else the pool's default SR. RestoreInputError when none fits. */
async function resolveSr(xapi: XapiClient, given: string | undefined): Promise<SrRecord> {
  let sr: SrRecord;
  if (given === undefined) {
    const ref = await xapi.call<string>('pool.get_default_SR', xapi.pool.$ref);
    if (ref === NULL_REF || ref === '') throw new RestoreInputError('NO_DEFAULT_SR', 'the pool has no default SR: choose one with --sr');
    sr = await xapi.getRecord('SR', ref);
  } else {
    let byUuid: SrRecord | undefined;
    if (UUID_RE.test(given)) byUuid = await xapi.getRecordByUuid('SR', given).catch(() => undefined);
    if (byUuid !== undefined) sr = byUuid;
    else {
      const refs = await xapi.call<string[]>('SR.get_by_name_label', given);
      if (refs.length === 0) throw new RestoreInputError('SR_NOT_FOUND', `--sr ${given}: no SR has this uuid or name`, { sr: given });
      if (refs.length > 1) {
        const uuids = await Promise.all(refs.map((r) => xapi.call<string>('SR.get_uuid', r)));
        throw new RestoreInputError('SR_AMBIGUOUS', `--sr ${given}: ${refs.length} SRs have this name (${uuids.join(', ')}): give the uuid`, { sr: given });
      }
      sr = await xapi.getRecord('SR', refs[0]!);
    }
  }
  if ((sr as SrRecord & { content_type?: string }).content_type === 'iso') {
    throw new RestoreInputError('SR_IS_ISO', `SR "${sr.name_label}" (${sr.uuid}) holds ISO images: choose another with --sr`, { sr: sr.uuid });
  }
  return sr;
}

async function srUuid(xapi: XapiClient, vdi: VdiRecord): Promise<string> {
  return vdi.SR === NULL_REF ? '' : xapi.call<string>('SR.get_uuid', vdi.SR).catch(() => '');
}

/** `--vdi`: the existing VDI, checked: big enough, writable (else RestoreInputError), not in use. */
async function existingVdi(xapi: XapiClient, input: RestoreInput, needed: number): Promise<VdiRecord> {
  let vdi: VdiRecord;
  try {
    vdi = await xapi.getRecordByUuid('VDI', input.vdi!);
  } catch (error) {
    const code = errorInfo(error).code;
    if (!GONE.includes(code)) throw error;
    throw new RestoreInputError('VDI_NOT_FOUND', `--vdi ${input.vdi}: no such VDI (${code})`, { vdi: input.vdi }, { cause: error });
  }
  if (Number(vdi.virtual_size) < needed) {
    throw new RestoreInputError('VDI_TOO_SMALL', `--vdi ${vdi.uuid}: its virtual size ${vdi.virtual_size} is smaller than the backup's ${needed} bytes`, { vdi: vdi.uuid });
  }
  if (vdi.read_only) throw new RestoreInputError('VDI_READ_ONLY', `--vdi ${vdi.uuid}: the VDI is read-only`, { vdi: vdi.uuid });
  for (const vbdRef of vdi.VBDs) {
    const vbd = await xapi.getRecord('VBD', vbdRef).catch(() => undefined);
    if (vbd?.currently_attached === true) {
      const vm = await xapi.call<string>('VM.get_name_label', vbd.VM).catch(() => vbd.VM);
      throw new PermanentError('VDI_IN_USE', `--vdi ${vdi.uuid}: the VDI is attached to VM "${vm}": shut it down first`, { vdi: vdi.uuid });
    }
  }
  if (input.sr !== undefined) {
    const sr = await resolveSr(xapi, input.sr);
    if (sr.$ref !== vdi.SR) throw new RestoreInputError('RESTORE_BAD_TARGET', `--sr ${input.sr} and --vdi ${vdi.uuid}: the VDI is on another SR (omit --sr)`, { vdi: vdi.uuid });
  }
  return vdi;
}

async function readVhdFooter(file: string) {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(512);
    const { bytesRead } = await fh.read(buf, 0, 512, 0);
    if (bytesRead < 512) throw new PermanentError('RESTORE_BAD_VHD', `${path.basename(file)}: too short for a VHD (${bytesRead} bytes)`);
    return decodeVhdFooter(buf, 0);
  } catch (error) {
    if (error instanceof PermanentError) throw error;
    throw new PermanentError('RESTORE_BAD_VHD', `${path.basename(file)}: not a VHD (${(error as Error).message})`, {}, { cause: error });
  } finally {
    await fh.close();
  }
}

/** Reads the whole file and compares its XXH64 with the manifest's. */
async function verifyFile(set: SetInfo, ctx: Ctx): Promise<void> {
  const hash = new StreamHash();
  const stream = hash.open(set.path, ctx);
  for await (const chunk of stream) void chunk;
  hash.check(set);
}

/**
 * XXH64 of the file as it is read for the upload. Each `open` starts over (a redirected
 * upload reads the file again); `check` compares with the manifest once every byte passed.
 */
class StreamHash {
  private digest: string | undefined;
  private bytes = 0;

  open(file: string, ctx: Ctx): Readable {
    this.digest = undefined;
    this.bytes = 0;
    const hashing = loadXxh64().then((x) => x.create());
    const self = this;
    const tap = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hashing.then(
          (h) => {
            h.update(chunk);
            self.bytes += chunk.length;
            ctx.heartbeat();
            callback(null, chunk);
          },
          (error: Error) => callback(error),
        );
      },
      flush(callback) {
        hashing.then(
          (h) => {
            self.digest = h.digest();
            callback();
          },
          (error: Error) => callback(error),
        );
      },
    });
    return pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), tap, () => {});
  }

  /** Throws BACKUP_CORRUPT on a mismatch; silent when the manifest has no hash or not all was read. */
  check(set: SetInfo): void {
    if (set.xxh64 === undefined || this.digest === undefined || this.bytes !== set.size) return;
    if (this.digest !== set.xxh64) {
      throw new PermanentError('BACKUP_CORRUPT', `${set.data.name}: its XXH64 is ${this.digest}, the manifest recorded ${set.xxh64}: the file changed after the backup`, {
        file: set.path,
      });
    }
  }
}
