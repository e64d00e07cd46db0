import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, utimes } from 'node:fs/promises';
import path from 'node:path';
import { compress, decompress } from 'zstd-napi';
import { PermanentError, VmbackupError } from '../errors.js';
import { isAllZero } from '../formats/zero.js';
import { syncDir, writeError, writeFileAtomic } from '../storage/atomic.js';

/** Folder of the chunk store inside backup_dir. A VM folder never starts with a dot. */
export const STORE_FOLDER = '.chunkstore';
/** Hex digits of a digest that name its chunk's sub-folder (4,096 folders). */
export const PREFIX_HEX = 3;
/** Suffix of a chunk that a garbage collection set aside; see gc.ts. */
export const TRASH_SUFFIX = '.trash';
/** The index entry of an all-zero chunk: nothing is stored for it. */
export const ZERO_DIGEST = Buffer.alloc(32);
/** zstd level 1, as PBS: several times faster than level 3 on disk data for a few % of size. */
export const ZSTD_LEVEL = 1;
/**
 * Default chunk size of a new store: 1 MiB. Measured (test/bench/chunkstore.ts, README.md):
 * a scattered 1 % churn of 64 KiB blocks stores and reads about 3× less than with PBS's
 * 4 MiB, for an index of 32 MiB per TiB and four times the chunk files.
 */
export const DEFAULT_CHUNK_SIZE = 1 << 20;
/** Smallest and largest chunk sizes accepted: 4 KiB (tests) to 16 MiB. */
export const MIN_CHUNK_SIZE = 4 << 10;
export const MAX_CHUNK_SIZE = 16 << 20;

/** Codes of `ChunkError`. */
export const ChunkErrorCode = {
  missing: 'CHUNK_MISSING',
  corrupt: 'CHUNK_CORRUPT',
  badStore: 'CHUNK_STORE_INVALID',
} as const;

/** A chunk that is missing or does not hash to its name; `data.digest` names it. */
export class ChunkError extends PermanentError {
  override name = 'ChunkError';
}

export interface ChunkStoreOptions {
  /** Chunk size for a store created now (ignored when the store exists). Default 4 MiB. */
  chunkSize?: number;
  /**
   * fsync each chunk before its rename and each touched folder in `flush()`. Default true;
   * false only for tests and benches that fill a store with throwaway data.
   */
  sync?: boolean;
  /** Clock for touches; default `Date.now`. */
  now?: () => number;
}

export interface PutResult {
  digest: Buffer;
  /** True when this call wrote the chunk; false when it was zero or already stored (touched). */
  written: boolean;
  /** Bytes of the chunk file written (0 when not written). */
  storedBytes: number;
}

/**
 * The content-addressed chunk store of one backup_dir: `<backup_dir>/.chunkstore/`.
 * Each chunk is stored once, as one zstd frame named by the SHA-256 of its uncompressed
 * bytes, written atomically (partial, fsync, rename) and never rewritten. All-zero chunks
 * are not stored (`ZERO_DIGEST` in an index). See README.md in this folder.
 *
 * @example
 *   const store = await ChunkStore.open('/mnt/VmBackup/exports');
 *   const { digest } = await store.put(chunk);
 *   const again = await store.get(digest);   // decompressed and checked against its name
 */
export class ChunkStore {
  /** `<backup_dir>/.chunkstore`. */
  readonly dir: string;
  readonly chunksDir: string;
  private readonly dirty = new Set<string>();
  private readonly made = new Set<string>();

  private constructor(
    /** The backup_dir holding the store and the VM folders with their points. */
    readonly backupDir: string,
    /** Chunk size for new disks of this store. */
    readonly chunkSize: number,
    readonly sync: boolean,
    readonly now: () => number,
  ) {
    this.dir = path.join(backupDir, STORE_FOLDER);
    this.chunksDir = path.join(this.dir, 'chunks');
  }

  /** Opens the store of `backupDir`, creating it (with `options.chunkSize`) when absent. */
  static async open(backupDir: string, options: ChunkStoreOptions = {}): Promise<ChunkStore> {
    const dir = path.join(backupDir, STORE_FOLDER);
    const configFile = path.join(dir, 'store.json');
    let chunkSize: number;
    try {
      const config = JSON.parse(await readFile(configFile, 'utf8')) as { kind?: unknown; version?: unknown; chunkSize?: unknown };
      if (config.kind !== 'vmbackup-chunkstore' || config.version !== 1 || !validChunkSize(config.chunkSize)) {
        throw new VmbackupError(ChunkErrorCode.badStore, `${configFile}: not a vmbackup chunk store (version 1)`, { file: configFile });
      }
      chunkSize = config.chunkSize;
    } catch (error) {
      if ((error as { code?: string }).code !== 'ENOENT') {
        if (error instanceof VmbackupError) throw error;
        throw new PermanentError(ChunkErrorCode.badStore, `${configFile}: ${(error as Error).message}`, { file: configFile }, { cause: error });
      }
      chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
      if (!validChunkSize(chunkSize)) throw new RangeError(`chunk size must be a power of two from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE} bytes, got ${chunkSize}`);
      await mkdir(path.join(dir, 'chunks'), { recursive: true });
      await mkdir(path.join(dir, 'writers'), { recursive: true });
      await writeFileAtomic(configFile, JSON.stringify({ kind: 'vmbackup-chunkstore', version: 1, chunkSize, createdAt: new Date().toISOString() }, null, 2) + '\n');
    }
    return new ChunkStore(backupDir, chunkSize, options.sync ?? true, options.now ?? Date.now);
  }

  /** Path of a chunk's file. */
  chunkPath(digest: Buffer | string): string {
    const hex = typeof digest === 'string' ? digest : digest.toString('hex');
    return path.join(this.chunksDir, hex.slice(0, PREFIX_HEX), hex);
  }

  /**
   * Stores `data` (one chunk) unless it is all zeros or already stored; an existing chunk is
   * touched instead (mtime = now), which is what keeps it from a concurrent garbage
   * collection. `digest` may be passed when the caller already hashed the data.
   */
  async put(data: Buffer, digest?: Buffer): Promise<PutResult> {
    if (isAllZero(data)) return { digest: ZERO_DIGEST, written: false, storedBytes: 0 };
    const d = digest ?? sha256(data);
    if (await this.touch(d)) return { digest: d, written: false, storedBytes: 0 };
    const file = this.chunkPath(d);
    const folder = path.dirname(file);
    if (!this.made.has(folder)) {
      await mkdir(folder, { recursive: true });
      this.made.add(folder);
    }
    const packed = compress(data, { compressionLevel: ZSTD_LEVEL, checksumFlag: true });
    const partial = `${file}.${randomBytes(4).toString('hex')}.partial`;
    let handle;
    try {
      handle = await open(partial, 'wx');
      let done = 0;
      while (done < packed.length) done += (await handle.write(packed, done, packed.length - done)).bytesWritten;
      // The kernel stamps files from a coarse clock that may lag this process's clock by a
      // few ms; the GC compares mtimes with writers' start times, so set it explicitly.
      const t = new Date(this.now());
      await handle.utimes(t, t);
      if (this.sync) await handle.datasync();
      await handle.close();
      handle = undefined;
      // Another writer may have stored the same chunk meanwhile: the rename then replaces it
      // with identical bytes, which a reader holding the old file cannot tell apart.
      await rename(partial, file);
    } catch (error) {
      await handle?.close().catch(() => {});
      await rm(partial, { force: true });
      throw writeError(error, file);
    }
    this.dirty.add(folder);
    return { digest: d, written: true, storedBytes: packed.length };
  }

  /**
   * Sets a stored chunk's mtime to now; brings it back first when a garbage collection had
   * set it aside. False when the chunk is not stored at all.
   */
  async touch(digest: Buffer | string): Promise<boolean> {
    const file = this.chunkPath(digest);
    const t = new Date(this.now());
    try {
      await utimes(file, t, t);
      return true;
    } catch (error) {
      if ((error as { code?: string }).code !== 'ENOENT') throw error;
    }
    try {
      await rename(file + TRASH_SUFFIX, file);
      await utimes(file, t, t);
      return true;
    } catch (error) {
      if ((error as { code?: string }).code === 'ENOENT') return false;
      throw error;
    }
  }

  /** The compressed bytes of a chunk as stored (also from the trash); ChunkError when missing. */
  async readRaw(digest: Buffer | string): Promise<Buffer> {
    const file = this.chunkPath(digest);
    for (const name of [file, file + TRASH_SUFFIX]) {
      try {
        return await readFile(name);
      } catch (error) {
        if ((error as { code?: string }).code !== 'ENOENT') throw error;
      }
    }
    const hex = typeof digest === 'string' ? digest : digest.toString('hex');
    throw new ChunkError(ChunkErrorCode.missing, `chunk ${hex} is missing from ${this.chunksDir}`, { digest: hex });
  }

  /**
   * A chunk's bytes, decompressed and checked against its digest (ChunkError otherwise).
   * `ZERO_DIGEST` needs `length`: the zeros it stands for.
   */
  async get(digest: Buffer, length?: number): Promise<Buffer> {
    if (digest.equals(ZERO_DIGEST)) {
      if (length === undefined) throw new RangeError('get(ZERO_DIGEST) needs the chunk length');
      return Buffer.alloc(length);
    }
    return unpackChunk(digest, await this.readRaw(digest));
  }

  /** Makes the chunks written since the last flush durable: fsync of their folders. */
  async flush(): Promise<void> {
    const folders = [...this.dirty];
    this.dirty.clear();
    if (!this.sync) return;
    await Promise.all(folders.map((f) => syncDir(f)));
  }
}

/** Decompresses a stored chunk and checks it hashes to `digest`; ChunkError naming it otherwise. */
export function unpackChunk(digest: Buffer, packed: Buffer): Buffer {
  const hex = digest.toString('hex');
  let data: Buffer;
  try {
    data = decompress(packed);
  } catch (error) {
    throw new ChunkError(ChunkErrorCode.corrupt, `chunk ${hex} does not decompress: ${(error as Error).message}`, { digest: hex }, { cause: error });
  }
  if (!sha256(data).equals(digest)) throw new ChunkError(ChunkErrorCode.corrupt, `chunk ${hex} does not match its digest (sha256 ${sha256(data).toString('hex')})`, { digest: hex });
  return data;
}

export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

function validChunkSize(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= MIN_CHUNK_SIZE && n <= MAX_CHUNK_SIZE && (n & (n - 1)) === 0;
}
