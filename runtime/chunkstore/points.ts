import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { z } from 'zod';
import { PermanentError } from '../errors.js';
import type { BlockSource } from '../formats/block-source.js';
import { vhdStream } from '../formats/vhd.js';
import type { VhdStreamOptions } from '../formats/vhd.js';
import { syncDir, writeFileAtomic } from '../storage/atomic.js';
import { DISK_NAME_RE, formatStamp } from '../storage/naming.js';
import { ZERO_DIGEST } from './chunks.js';
import type { ChunkStore } from './chunks.js';
import { INDEX_SUFFIX, IndexReader } from './index-file.js';
import { registerWriter } from './writers.js';
import type { WriterRegistration } from './writers.js';
import { writeDisk, writeDiskChanges } from './write-disk.js';
import type { ByteRange, DiskReader, DiskWriteResult, WriteDiskOptions } from './write-disk.js';

/** A point's folder inside its VM folder: `point_<stamp>`. */
export const POINT_PREFIX = 'point_';
export const POINT_MANIFEST = 'manifest.json';
export const POINT_META = 'vm.meta';
/** The last verification of a point (written by verify; the manifest is never rewritten). */
export const POINT_VERIFIED = 'verified.json';

/** One disk of a point, as its manifest records it. */
export const PointDisk = z.object({
  /** Disk name (device or userdevice, `[A-Za-z0-9]+`): the index is `<name>.cidx`. */
  name: z.string().regex(DISK_NAME_RE),
  vdi: z.string().optional(),
  size: z.number().int().min(0),
  chunkSize: z.number().int().positive(),
  chunks: z.number().int().min(0),
  /** SHA-256 (hex) and byte size of the index file. */
  indexSha256: z.string().regex(/^[0-9a-f]{64}$/),
  indexBytes: z.number().int().positive(),
  zeroChunks: z.number().int().min(0),
  newChunks: z.number().int().min(0),
  newBytes: z.number().int().min(0),
  readBytes: z.number().int().min(0),
  /** Unchanged chunks that were missing from the store and read again from the disk. */
  healedChunks: z.number().int().min(0),
  /** `full` (whole disk read) or `changes` (previous point + changed ranges). */
  mode: z.enum(['full', 'changes']),
  /** The point whose index was the base, for `changes`. */
  base: z.string().optional(),
});
export type PointDisk = z.infer<typeof PointDisk>;

/**
 * `manifest.json` of a point, written last: a point without a valid one does not count.
 *
 * @example
 *   { "kind": "vmbackup-point", "version": 1, "vm": {"uuid": "…", "name": "web1"},
 *     "stamp": "20261206-080000", "createdAt": "2026-12-06T08:01:12.000Z",
 *     "meta": {"size": 5120, "sha256": "…"},
 *     "disks": [{"name": "xvda", "size": 10737418240, "chunkSize": 4194304, "chunks": 2560,
 *                "indexSha256": "…", "indexBytes": 82016, "mode": "changes", "base": "20261205-080000", …}] }
 */
export const PointManifest = z.object({
  kind: z.literal('vmbackup-point'),
  version: z.literal(1),
  vm: z.object({ uuid: z.string(), name: z.string() }),
  stamp: z.string(),
  createdAt: z.string(),
  meta: z.object({ size: z.number().int().min(0), sha256: z.string().regex(/^[0-9a-f]{64}$/) }).optional(),
  disks: z.array(PointDisk),
});
export type PointManifest = z.infer<typeof PointManifest>;

/** Where a point lives: `<backup_dir>/<vmFolder>/point_<stamp>/`. */
export interface PointRef {
  vmFolder: string;
  stamp: string;
}

export function pointDir(store: Pick<ChunkStore, 'backupDir'>, ref: PointRef): string {
  return path.join(store.backupDir, ref.vmFolder, POINT_PREFIX + ref.stamp);
}

/** `web1/point_20261206-080000`, as errors and reports name a point. */
export function pointName(ref: PointRef): string {
  return `${ref.vmFolder}/${POINT_PREFIX}${ref.stamp}`;
}

export interface BeginPointInput {
  vmFolder: string;
  vm: { uuid: string; name: string };
  /** Default: now, as `YYYYMMDD-HHMMSS` UTC. */
  stamp?: string;
}

/**
 * A point being written. Add each disk (whole, or from the previous point plus changed
 * ranges), the VM's metadata, then `commit()`: chunks and indexes are made durable and the
 * manifest is written last. Until then nothing counts; `abort()` removes what was written
 * (its new chunks stay until a garbage collection). Registered as a writer from `begin`
 * to `commit`/`abort`, so a concurrent GC keeps every chunk it touches.
 *
 * @example
 *   const point = await PointWriter.begin(store, { vmFolder: 'web1', vm: { uuid, name: 'web1' } });
 *   await point.addDisk('xvda', nbdStream);                       // a full read
 *   await point.addDiskChanges('xvdb', previous, ranges, reader); // CBT: only changed chunks read
 *   await point.setMeta(xmlBytes);
 *   const manifest = await point.commit();
 */
export class PointWriter {
  private readonly disks: PointDisk[] = [];
  private meta: PointManifest['meta'];
  private finished = false;

  private constructor(
    readonly store: ChunkStore,
    readonly ref: PointRef,
    readonly vm: { uuid: string; name: string },
    readonly dir: string,
    private readonly writer: WriterRegistration,
  ) {}

  static async begin(store: ChunkStore, input: BeginPointInput): Promise<PointWriter> {
    const ref = { vmFolder: input.vmFolder, stamp: input.stamp ?? formatStamp(new Date(store.now())) };
    if (ref.vmFolder.includes('/') || ref.vmFolder.startsWith('.') || ref.vmFolder === '') throw new PermanentError('INVALID_NAME', `not a VM folder name: "${ref.vmFolder}"`, { vmFolder: ref.vmFolder });
    if (!/^[0-9A-Za-z-]+$/.test(ref.stamp)) throw new PermanentError('INVALID_NAME', `not a stamp: "${ref.stamp}"`, { stamp: ref.stamp });
    const dir = pointDir(store, ref);
    if (await exists(path.join(dir, POINT_MANIFEST))) throw new PermanentError('POINT_EXISTS', `point ${pointName(ref)} already exists`, { point: pointName(ref) });
    // Registered before the first chunk is touched: see writers.ts.
    const writer = await registerWriter(store, pointName(ref));
    try {
      await mkdir(dir, { recursive: true });
    } catch (error) {
      await writer.end();
      throw error;
    }
    return new PointWriter(store, ref, input.vm, dir, writer);
  }

  private indexFile(name: string): string {
    if (!DISK_NAME_RE.test(name)) throw new PermanentError('INVALID_NAME', `disk name "${name}" must be letters and digits`, { disk: name });
    if (this.disks.some((d) => d.name === name)) throw new PermanentError('INVALID_NAME', `disk ${name} is already in point ${pointName(this.ref)}`, { disk: name });
    return path.join(this.dir, name + INDEX_SUFFIX);
  }

  /** Adds a disk read whole from `source` (its raw bytes, in order). */
  async addDisk(name: string, source: AsyncIterable<Uint8Array>, options: WriteDiskOptions & { vdi?: string } = {}): Promise<PointDisk> {
    const r = await writeDisk(this.store, this.indexFile(name), source, options);
    return this.record(name, r, 'full', undefined, options.vdi);
  }

  /**
   * Adds a disk as `base`'s disk `baseDisk` (default: the same name) with the chunks touched
   * by `changes` read again through `reader`. The base must be a committed point.
   */
  async addDiskChanges(
    name: string,
    base: PointRef,
    changes: Iterable<ByteRange> | AsyncIterable<ByteRange>,
    reader: DiskReader,
    options: WriteDiskOptions & { vdi?: string; baseDisk?: string } = {},
  ): Promise<PointDisk> {
    const basePoint = await openPoint(this.store, base);
    const baseDisk = options.baseDisk ?? name;
    const previous = await basePoint.openIndex(baseDisk);
    try {
      const r = await writeDiskChanges(this.store, this.indexFile(name), previous, changes, reader, options);
      return this.record(name, r, 'changes', base.stamp, options.vdi);
    } finally {
      await previous.close();
    }
  }

  private record(name: string, r: DiskWriteResult, mode: 'full' | 'changes', base: string | undefined, vdi: string | undefined): PointDisk {
    const disk: PointDisk = {
      name,
      ...(vdi !== undefined ? { vdi } : {}),
      size: r.diskSize,
      chunkSize: r.chunkSize,
      chunks: r.chunks,
      indexSha256: r.indexSha256,
      indexBytes: r.indexBytes,
      zeroChunks: r.zeroChunks,
      newChunks: r.newChunks,
      newBytes: r.newBytes,
      readBytes: r.readBytes,
      healedChunks: r.healedChunks,
      mode,
      ...(base !== undefined ? { base } : {}),
    };
    this.disks.push(disk);
    return disk;
  }

  /** The VM's metadata (e.g. XAPI's export metadata), stored beside the indexes as `vm.meta`. */
  async setMeta(data: Buffer | string): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    await writeFileAtomic(path.join(this.dir, POINT_META), bytes);
    this.meta = { size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') };
  }

  /** Writes the manifest: from now on the point counts. */
  async commit(): Promise<PointManifest> {
    if (this.finished) throw new Error(`point ${pointName(this.ref)} is already committed or aborted`);
    const manifest: PointManifest = {
      kind: 'vmbackup-point',
      version: 1,
      vm: this.vm,
      stamp: this.ref.stamp,
      createdAt: new Date(this.store.now()).toISOString(),
      ...(this.meta ? { meta: this.meta } : {}),
      disks: this.disks,
    };
    try {
      await this.store.flush();
      await writeFileAtomic(path.join(this.dir, POINT_MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
    } catch (error) {
      await this.abort();
      throw error;
    }
    this.finished = true;
    await this.writer.end();
    return manifest;
  }

  /** Removes the point's folder; chunks it wrote stay until a garbage collection. */
  async abort(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await rm(this.dir, { recursive: true, force: true });
    await this.writer.end();
  }
}

/** A committed point, opened for reading. */
export interface OpenPoint {
  ref: PointRef;
  dir: string;
  manifest: PointManifest;
  /** The index of one disk (close it when done). */
  openIndex(disk: string): Promise<IndexReader>;
  /** The VM metadata blob, checked against the manifest. */
  readMeta(): Promise<Buffer>;
}

/** Opens a committed point: its manifest must exist and parse (PermanentError naming the point otherwise). */
export async function openPoint(store: Pick<ChunkStore, 'backupDir'>, ref: PointRef): Promise<OpenPoint> {
  const dir = pointDir(store, ref);
  const name = pointName(ref);
  let manifest: PointManifest;
  try {
    const parsed = PointManifest.safeParse(JSON.parse(await readFile(path.join(dir, POINT_MANIFEST), 'utf8')));
    if (!parsed.success) throw new Error(parsed.error.issues[0]?.message ?? 'invalid');
    manifest = parsed.data;
  } catch (error) {
    const missing = (error as { code?: string }).code === 'ENOENT';
    throw new PermanentError('POINT_INVALID', missing ? `point ${name} does not exist (no ${POINT_MANIFEST})` : `point ${name}: ${POINT_MANIFEST}: ${(error as Error).message}`, { point: name });
  }
  return {
    ref,
    dir,
    manifest,
    openIndex: async (disk) => {
      const d = manifest.disks.find((x) => x.name === disk);
      if (!d) throw new PermanentError('NO_SUCH_DISK', `point ${name} has no disk ${disk} (it has ${manifest.disks.map((x) => x.name).join(', ') || 'none'})`, { point: name, disk });
      const idx = await IndexReader.open(path.join(dir, disk + INDEX_SUFFIX));
      if (idx.diskSize !== d.size || idx.chunkSize !== d.chunkSize) {
        await idx.close();
        throw new PermanentError('INDEX_INVALID', `point ${name}: index of ${disk} does not match the manifest`, { point: name, disk });
      }
      return idx;
    },
    readMeta: async () => {
      if (!manifest.meta) throw new PermanentError('NO_META', `point ${name} has no VM metadata`, { point: name });
      const data = await readFile(path.join(dir, POINT_META));
      if (data.length !== manifest.meta.size || createHash('sha256').update(data).digest('hex') !== manifest.meta.sha256) {
        throw new PermanentError('META_INVALID', `point ${name}: ${POINT_META} does not match the manifest`, { point: name });
      }
      return data;
    },
  };
}

export interface PointListing {
  /** Committed points, oldest first. */
  points: (PointRef & { manifest: PointManifest })[];
  /**
   * Point folders without a valid manifest: being written or left by a crash (no manifest),
   * or damaged (`hasManifest`: a manifest that does not parse).
   */
  incomplete: (PointRef & { reason: string; mtimeMs: number; hasManifest: boolean })[];
}

/**
 * The points of one VM folder, or of every VM folder of the store's backup_dir when
 * `vmFolder` is omitted. Reads each manifest (no index or chunk).
 */
export async function listPoints(store: ChunkStore, vmFolder?: string): Promise<PointListing> {
  const folders = vmFolder !== undefined ? [vmFolder] : (await readdirSafe(store.backupDir)).filter((n) => !n.startsWith('.'));
  const out: PointListing = { points: [], incomplete: [] };
  for (const folder of folders) {
    for (const entry of await readdirSafe(path.join(store.backupDir, folder))) {
      if (!entry.startsWith(POINT_PREFIX)) continue;
      const ref = { vmFolder: folder, stamp: entry.slice(POINT_PREFIX.length) };
      const dir = pointDir(store, ref);
      try {
        const p = await openPoint(store, ref);
        out.points.push({ ...ref, manifest: p.manifest });
      } catch (error) {
        const s = await stat(dir).catch(() => undefined);
        const hasManifest = await exists(path.join(dir, POINT_MANIFEST));
        if (s?.isDirectory()) out.incomplete.push({ ...ref, reason: (error as Error).message, mtimeMs: s.mtimeMs, hasManifest });
      }
    }
  }
  out.points.sort((a, b) => a.vmFolder.localeCompare(b.vmFolder) || a.stamp.localeCompare(b.stamp));
  return out;
}

/**
 * Removes a point: its manifest first (from then on it no longer counts), then its folder.
 * Killed half-way, what is left is an incomplete point that a GC removes. Its chunks stay
 * until a garbage collection finds no other point using them.
 */
export async function removePoint(store: ChunkStore, ref: PointRef): Promise<void> {
  const dir = pointDir(store, ref);
  try {
    await unlink(path.join(dir, POINT_MANIFEST));
    await syncDir(dir);
  } catch (error) {
    if ((error as { code?: string }).code !== 'ENOENT') throw error;
  }
  await rm(dir, { recursive: true, force: true });
}

/**
 * A point's disk as a BlockSource (random access in bytes), for the VHD writer and restores:
 * `read` returns null for a range whose chunks are all zero. One decompressed chunk is
 * cached, so sequential reads of blocks smaller than a chunk decompress each chunk once.
 */
export function diskBlockSource(store: ChunkStore, index: IndexReader): BlockSource & { allocated(offset: number, length: number): Promise<boolean> } {
  let cached: { i: number; data: Buffer } | undefined;
  const chunk = async (i: number): Promise<Buffer | null> => {
    if (cached?.i === i) return cached.data;
    const digest = await index.digest(i);
    if (digest.equals(ZERO_DIGEST)) return null;
    const data = await store.get(Buffer.from(digest));
    if (data.length !== index.chunkLength(i)) throw new PermanentError('CHUNK_CORRUPT', `chunk ${digest.toString('hex')} of ${index.file} has ${data.length} bytes, expected ${index.chunkLength(i)}`, { digest: digest.toString('hex') });
    cached = { i, data };
    return data;
  };
  const cs = index.chunkSize;
  return {
    size: index.diskSize,
    async allocated(offset, length) {
      for (let i = Math.floor(offset / cs); i * cs < offset + length; i++) if (!(await index.digest(i)).equals(ZERO_DIGEST)) return true;
      return false;
    },
    async read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > index.diskSize) throw new RangeError(`read [${offset}, +${length}) outside a ${index.diskSize}-byte disk`);
      const first = Math.floor(offset / cs);
      if (Math.floor((offset + length - 1) / cs) === first || length === 0) {
        const data = length === 0 ? null : await chunk(first);
        return data === null ? null : data.subarray(offset - first * cs, offset - first * cs + length);
      }
      const out = Buffer.alloc(length);
      let any = false;
      for (let at = offset; at < offset + length; ) {
        const i = Math.floor(at / cs);
        const end = Math.min(offset + length, (i + 1) * cs);
        const data = await chunk(i);
        if (data !== null) {
          data.copy(out, at - offset, at - i * cs, end - i * cs);
          any = true;
        }
        at = end;
      }
      return any ? out : null;
    },
  };
}

/**
 * A point's disk as its raw bytes, in order: each chunk decompressed and checked against its
 * digest (a damaged chunk ends the stream with a ChunkError naming it), zeros for zero chunks.
 *
 * @example await pipeline(await readDiskRaw(store, ref, 'xvda'), createWriteStream('xvda.raw'));
 */
export async function readDiskRaw(store: ChunkStore, ref: PointRef, disk: string): Promise<Readable> {
  const index = await (await openPoint(store, ref)).openIndex(disk);
  async function* chunks(): AsyncGenerator<Buffer> {
    try {
      for (let i = 0; i < index.chunkCount; i++) {
        const digest = Buffer.from(await index.digest(i));
        yield await store.get(digest, index.chunkLength(i));
      }
    } finally {
      await index.close();
    }
  }
  return Readable.from(chunks(), { objectMode: false, highWaterMark: index.chunkSize });
}

/**
 * A point's disk as a dynamic VHD (for `--to-file`), through runtime/formats/vhd.ts: 2 MiB
 * blocks whose chunks are all zero stay unallocated, without reading any chunk for them.
 */
export async function readDiskVhd(store: ChunkStore, ref: PointRef, disk: string, options: VhdStreamOptions = {}): Promise<Readable> {
  const point = await openPoint(store, ref);
  const index = await point.openIndex(disk);
  const source = diskBlockSource(store, index);
  const blockSize = 2 << 20;
  const stream = vhdStream(source, {
    timestamp: new Date(point.manifest.createdAt),
    ...(point.manifest.disks.find((d) => d.name === disk)?.vdi ? { uuid: point.manifest.disks.find((d) => d.name === disk)!.vdi! } : {}),
    allocated: (block) => source.allocated(block * blockSize, Math.min(blockSize, index.diskSize - block * blockSize)),
    ...options,
  });
  stream.once('close', () => void index.close());
  return stream;
}

async function readdirSafe(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw error;
  }
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}
