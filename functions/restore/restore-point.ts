import { stat } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable, pipeline } from 'node:stream';
import { STORE_FOLDER, diskBlockSource, openExistingStore, openPoint, pointName, readDiskRaw, readDiskVhd } from '../../runtime/chunkstore/chunkstore.js';
import type { ChunkStore, IndexReader, OpenPoint, PointDisk, PointRef } from '../../runtime/chunkstore/chunkstore.js';
import { POINT_MANIFEST, POINT_PREFIX } from '../../runtime/chunkstore/points.js';
import { PermanentError, VmbackupError, errorInfo } from '../../runtime/errors.js';
import { readTar } from '../../runtime/formats/tar.js';
import { decodeValue, encodeValue } from '../../runtime/formats/xmlrpc.js';
import type { XmlRpcValue } from '../../runtime/formats/xmlrpc.js';
import { xvaSize, xvaStream } from '../../runtime/formats/xva.js';
import { writeStreamAtomic } from '../../runtime/storage/atomic.js';
import { NULL_REF } from '../../runtime/xapi/records.js';
import { RestoreInputError } from './restore-set.js';

/**
 * Restoring a point of the chunk store (runtime/chunkstore): a whole VM, one disk into the
 * pool, or one disk to a local file. A point is named on the command line as a set is, by a
 * path: its folder `<backup_dir>/<vm folder>/point_<stamp>` or its `manifest.json` in it.
 * The store is the `.chunkstore` of the backup_dir two levels up.
 *
 * Every byte comes from the chunks, each decompressed and checked against its SHA-256 as it
 * streams; a missing or damaged chunk fails the restore with an error naming the point, the
 * disk and the chunk's digest (code CHUNK_MISSING or CHUNK_CORRUPT).
 *
 * @example
 *   const where = pointLocation('/mnt/VmBackup/exports/web1/point_20261206-080000/manifest.json');
 *   // { backupDir: '/mnt/VmBackup/exports', ref: { vmFolder: 'web1', stamp: '20261206-080000' }, dir: '…/point_20261206-080000' }
 */
export interface PointLocation {
  backupDir: string;
  ref: PointRef;
  /** The point's folder. */
  dir: string;
}

/** Where a point named by its folder or its manifest lives; undefined when `file` names no point. */
export function pointLocation(file: string): PointLocation | undefined {
  if (!path.isAbsolute(file)) return undefined;
  let dir = path.normalize(file).replace(/\/+$/, '');
  if (path.basename(dir) === POINT_MANIFEST) dir = path.dirname(dir);
  const name = path.basename(dir);
  if (!name.startsWith(POINT_PREFIX) || name.length === POINT_PREFIX.length) return undefined;
  const vmDir = path.dirname(dir);
  if (vmDir === dir || path.dirname(vmDir) === vmDir) return undefined;
  return { backupDir: path.dirname(vmDir), ref: { vmFolder: path.basename(vmDir), stamp: name.slice(POINT_PREFIX.length) }, dir };
}

/** A point opened for a restore, with its store. */
export interface RestorePoint {
  store: ChunkStore;
  point: OpenPoint;
  /** `web1/point_20261206-080000`, as messages name it. */
  name: string;
}

/**
 * Opens the point for a restore: the store must exist (it is never created here) and the
 * point must be committed. A point folder without a manifest is a backup that did not finish:
 * refused (POINT_INCOMPLETE) with a message that says so.
 */
export async function openRestorePoint(where: PointLocation): Promise<RestorePoint> {
  const name = pointName(where.ref);
  const store = await openExistingStore(where.backupDir);
  if (store === undefined) {
    throw new PermanentError('POINT_NO_STORE', `point ${name}: no chunk store in ${where.backupDir} (${STORE_FOLDER}/store.json is missing), so none of its chunks can be read`, { point: name });
  }
  if (!(await exists(path.join(where.dir, POINT_MANIFEST)))) {
    throw new PermanentError('POINT_INCOMPLETE', `point ${name} is incomplete (no ${POINT_MANIFEST}): its backup did not finish, so it cannot be restored`, { point: name });
  }
  return { store, point: await openPoint(store, where.ref), name };
}

/** The disk of the point to restore: `disk`, or its only one (RestoreInputError naming the choices). */
export function choosePointDisk(p: RestorePoint, disk: string | undefined): PointDisk {
  const disks = p.point.manifest.disks;
  if (disk !== undefined) {
    const found = disks.find((d) => d.name === disk);
    if (found === undefined) throw new RestoreInputError('RESTORE_BAD_DISK', `--disk ${disk}: point ${p.name} has no such disk (disks: ${disks.map((d) => d.name).join(', ') || 'none'})`, { disk });
    return found;
  }
  if (disks.length !== 1) {
    throw new RestoreInputError('RESTORE_BAD_DISK', `point ${p.name} holds ${disks.length} disks (${disks.map((d) => d.name).join(', ')}): choose one with --disk`, { disks: disks.map((d) => d.name) });
  }
  return disks[0]!;
}

/**
 * A failure while reading a point's chunks, naming the point and the disk; a chunk error keeps
 * its code (CHUNK_MISSING, CHUNK_CORRUPT) and its digest.
 */
export function pointReadError(error: unknown, p: RestorePoint, disk: string): VmbackupError {
  const info = errorInfo(error);
  return new PermanentError(info.code, `point ${p.name}, disk ${disk}: ${info.message}`, { ...(info.data ?? {}), point: p.name, disk }, { cause: error });
}

/**
 * A stream whose source failure is remembered: an upload that breaks because a chunk is bad
 * ends with XAPI's verdict (an early end of the body), and the restore must report the chunk.
 */
export class FailureTap {
  error: VmbackupError | undefined;

  constructor(private readonly wrap: (error: unknown) => VmbackupError) {}

  /** `source` passed through; its own error, wrapped, is kept in `error` and ends the stream. */
  tap(source: Readable): Readable {
    const out = new PassThrough();
    source.once('error', (error) => (this.error ??= this.wrap(error)));
    pipeline(source, out, (error) => {
      if (error && this.error) out.destroy(this.error);
    });
    return out;
  }
}

export interface PointToFileInput {
  file: string;
  disk?: string;
  /** Absolute path of the file to write. */
  to: string;
  format: 'raw' | 'vhd';
  signal?: AbortSignal;
}

export interface PointToFileOutput {
  point: string;
  disk: string;
  to: string;
  format: 'raw' | 'vhd';
  /** The disk's size. */
  diskSize: number;
  /** Bytes written. */
  bytes: number;
}

/**
 * Writes one disk of a point to a local file, raw or as a dynamic VHD, with no pool: what
 * `xe vdi-import` or `qemu-img` take. Streamed (one chunk in memory) and atomic: the bytes go
 * to a `.partial` file, fsynced and renamed; on any failure nothing is left at `to`. An
 * existing file at `to` is refused (RestoreInputError), never replaced.
 */
export async function restorePointToFile(input: PointToFileInput): Promise<PointToFileOutput> {
  const where = pointLocation(input.file);
  if (where === undefined) throw new RestoreInputError('RESTORE_BAD_FILE', `--to-file: ${input.file} is not a point (a point_<stamp> folder or its ${POINT_MANIFEST})`, { file: input.file });
  if (await exists(input.to)) throw new RestoreInputError('RESTORE_TARGET_EXISTS', `--to-file ${input.to}: the file exists; remove it or choose another name`, { file: input.to });
  const p = await openRestorePoint(where);
  const disk = choosePointDisk(p, input.disk);
  const tap = new FailureTap((error) => pointReadError(error, p, disk.name));
  try {
    const source = input.format === 'vhd' ? await readDiskVhd(p.store, where.ref, disk.name) : await readDiskRaw(p.store, where.ref, disk.name);
    const written = await writeStreamAtomic(input.to, tap.tap(source), input.signal ? { signal: input.signal } : {});
    return { point: p.name, disk: disk.name, to: input.to, format: input.format, diskSize: disk.size, bytes: written.size };
  } catch (error) {
    const cause = tap.error ?? pointReadError(error, p, disk.name);
    throw new PermanentError(cause.code, `restore of point ${p.name} to ${input.to} failed: ${cause.message}`, cause.data, { cause });
  }
}

/** ova.xml as XAPI writes it: `{version, objects: [{class, id: "Ref:N", snapshot: record}]}`. */
interface OvaObject {
  class: string;
  id: string;
  snapshot: Record<string, XmlRpcValue>;
}

/** The VM of a point as an XVA to stream to `/import`. */
export interface PointXva {
  /** The XVA's byte length (XAPI's `/import` needs a Content-Length). */
  length: number;
  /** A new stream of the XVA (an upload redirected to another host reads it again). */
  open(): Readable;
  vm: { name: string; uuid: string };
  /** Closes the disks' indexes. */
  close(): Promise<void>;
}

/**
 * The point's VM as an XVA, made on the fly: the ova.xml of its metadata (`vm.meta`, XAPI's
 * `/export_metadata` output), kept to the VM itself and the disks the point holds, followed by
 * each disk's chunks in XAPI's 1 MiB chunk entries with their XXH64. XAPI's `/import` then
 * makes the VM and its disks as for any XVA, so a point restores by the same path as an XVA
 * backup does, and memory stays at about one chunk.
 *
 * The ova.xml is the VM's as it was at the backup, with: the VM's snapshots left out (a
 * point holds none of their disks); disk VBDs whose VDI the point does not hold left out;
 * CD drives emptied (the ISO is not in the point); the VM made `Halted`; each VDI's
 * `virtual_size` the point's size of that disk.
 */
export async function pointXva(p: RestorePoint): Promise<PointXva> {
  const { ova, objects, vm, vbds, vdis, diskRefs } = await pointOva(p);
  const keep = new Set<string>([vm.id, ...diskRefs.keys()]);
  for (const vbd of vbds) if (vbd.snapshot.type === 'CD' || diskRefs.has(String(vbd.snapshot.VDI))) keep.add(vbd.id);
  for (const id of diskRefs.keys()) keep.add(String(vdis.get(id)!.snapshot.SR));
  for (const o of objects) {
    if (o.class === 'VIF' && o.snapshot.VM === vm.id) keep.add(o.id).add(String(o.snapshot.network));
    if (o.class === 'host' || o.class === 'VM_guest_metrics') keep.add(o.id);
  }
  const kept = objects.filter((o) => keep.has(o.id)).map((o) => ({ ...o, snapshot: dropDangling(o.snapshot, keep) }));
  for (const o of kept) {
    if (o.class === 'VM') Object.assign(o.snapshot, { power_state: 'Halted', suspend_VDI: NULL_REF });
    if (o.class === 'VBD' && o.snapshot.type === 'CD') Object.assign(o.snapshot, { VDI: NULL_REF, empty: true });
    if (o.class === 'VDI') o.snapshot.virtual_size = String(diskRefs.get(o.id)!.size);
  }
  const ovaXml = encodeValue({ ...ova, objects: kept as unknown as XmlRpcValue[] });

  const indexes: IndexReader[] = [];
  try {
    const disks: { ref: string; source: ReturnType<typeof diskBlockSource> }[] = [];
    for (const [ref, disk] of diskRefs) {
      const index = await p.point.openIndex(disk.name);
      indexes.push(index);
      disks.push({ ref, source: diskBlockSource(p.store, index) });
    }
    const length = await xvaSize({ ovaXml, disks: disks.map((d) => ({ ref: d.ref, size: d.source.size, allocated: (o, l) => d.source.allocated(o, l) })) });
    return {
      length,
      open: () => xvaStream({ ovaXml, disks: disks.map((d) => ({ ref: d.ref, source: d.source })), writeZeroBuffers: true }),
      vm: { name: String(vm.snapshot.name_label ?? p.point.manifest.vm.name), uuid: String(vm.snapshot.uuid ?? p.point.manifest.vm.uuid) },
      close: async () => {
        for (const index of indexes) await index.close();
      },
    };
  } catch (error) {
    for (const index of indexes) await index.close();
    throw error;
  }
}

/** The point's ova.xml, its VM, and the VDI (`Ref:N`) of each of the point's disks. */
async function pointOva(p: RestorePoint) {
  const meta = await p.point.readMeta();
  const ova = await ovaXmlOf(meta, p.name);
  const objects = (ova.objects ?? []) as unknown as OvaObject[];
  const vms = objects.filter((o) => o.class === 'VM' && o.snapshot.is_a_snapshot !== true);
  const vm = vms.find((o) => o.snapshot.uuid === p.point.manifest.vm.uuid) ?? vms[0];
  if (vm === undefined) throw new PermanentError('POINT_BAD_META', `point ${p.name}: its VM metadata holds no VM`, { point: p.name });
  const vbds = objects.filter((o) => o.class === 'VBD' && o.snapshot.VM === vm.id);
  const vdis = new Map(objects.filter((o) => o.class === 'VDI').map((o) => [o.id, o]));
  // Each disk of the point: its VDI in the metadata, by uuid, else by its VBD's device.
  const diskRefs = new Map<string, PointDisk>();
  for (const disk of p.point.manifest.disks) {
    const byUuid = disk.vdi !== undefined ? [...vdis.values()].find((o) => o.snapshot.uuid === disk.vdi) : undefined;
    const vbd = byUuid === undefined ? vbds.find((o) => o.snapshot.type !== 'CD' && (o.snapshot.device === disk.name || o.snapshot.userdevice === disk.name)) : undefined;
    const id = byUuid?.id ?? (vbd !== undefined ? String(vbd.snapshot.VDI) : undefined);
    if (id === undefined || !vdis.has(id)) throw new PermanentError('POINT_BAD_META', `point ${p.name}: disk ${disk.name} is not a disk of the VM in its metadata`, { point: p.name, disk: disk.name });
    if (diskRefs.has(id)) throw new PermanentError('POINT_BAD_META', `point ${p.name}: disks ${diskRefs.get(id)!.name} and ${disk.name} are the same VDI in its metadata`, { point: p.name });
    diskRefs.set(id, disk);
  }
  return { ova, objects, vm, vbds, vdis, diskRefs };
}

/**
 * The name and description the VDI of `disk` had, from the point's metadata; undefined when
 * the point has none that says (a disk restores from its chunks alone).
 */
export async function pointVdiRecord(p: RestorePoint, disk: string): Promise<{ name: string; description: string } | undefined> {
  if (p.point.manifest.meta === undefined) return undefined;
  const mapped = await pointOva(p).catch(() => undefined);
  for (const [id, d] of mapped?.diskRefs ?? []) {
    if (d.name !== disk) continue;
    const vdi = mapped!.vdis.get(id)!.snapshot;
    return { name: String(vdi.name_label ?? ''), description: String(vdi.name_description ?? '') };
  }
  return undefined;
}

/** ova.xml out of `vm.meta`: the tar `/export_metadata` answers, or the XML itself. */
async function ovaXmlOf(meta: Buffer, name: string): Promise<Record<string, XmlRpcValue>> {
  let xml: string | undefined;
  if (meta.subarray(0, 64).toString('latin1').trimStart().startsWith('<')) xml = meta.toString('utf8');
  else {
    try {
      for await (const entry of readTar(Readable.from([meta]), { trailing: 'any' })) {
        if (entry.name === 'ova.xml') xml = entry.data.toString('utf8');
        break;
      }
    } catch (error) {
      throw new PermanentError('POINT_BAD_META', `point ${name}: its VM metadata is not XAPI's export (${(error as Error).message})`, { point: name });
    }
  }
  if (xml === undefined) throw new PermanentError('POINT_BAD_META', `point ${name}: its VM metadata holds no ova.xml`, { point: name });
  try {
    const value = decodeValue(xml);
    if (typeof value !== 'object' || value === null || !Array.isArray((value as { objects?: unknown }).objects)) throw new Error('no objects');
    return value as Record<string, XmlRpcValue>;
  } catch (error) {
    throw new PermanentError('POINT_BAD_META', `point ${name}: its ova.xml does not parse (${(error as Error).message})`, { point: name });
  }
}

/** A record with every `Ref:N` outside `keep` made OpaqueRef:NULL, and dropped from sets. */
function dropDangling(record: Record<string, XmlRpcValue>, keep: Set<string>): Record<string, XmlRpcValue> {
  const isRef = (v: unknown): v is string => typeof v === 'string' && /^Ref:/.test(v);
  const out: Record<string, XmlRpcValue> = {};
  for (const [k, v] of Object.entries(record)) {
    if (isRef(v)) out[k] = keep.has(v) ? v : NULL_REF;
    else if (Array.isArray(v) && v.some(isRef)) out[k] = v.filter((x) => !isRef(x) || keep.has(x));
    else out[k] = v;
  }
  return out;
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}
