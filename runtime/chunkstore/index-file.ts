import { createHash } from 'node:crypto';
import type { Hash } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { PermanentError } from '../errors.js';
import { syncDir, writeError } from '../storage/atomic.js';
import { PARTIAL_SUFFIX } from '../storage/naming.js';

/**
 * A disk's index, `<disk>.cidx`: the ordered digests of its chunks. Binary, little-endian:
 *
 * ```
 * 0     8  magic "VMBCIDX\0"
 * 8     4  version (1)
 * 12    4  chunk size in bytes
 * 16    8  disk size in bytes
 * 24    8  chunk count = ceil(disk size / chunk size)
 * 32   32  reserved (zeros)
 * 64   32×count  SHA-256 of each chunk's bytes, in disk order; 32 zero bytes = an all-zero chunk
 * end  32  SHA-256 of (entries ‖ header): the file checks itself
 * ```
 *
 * 8 MiB per TiB of disk with 4 MiB chunks. Written and read in pages: memory stays flat.
 */
export const INDEX_MAGIC = Buffer.from('VMBCIDX\0', 'latin1');
export const INDEX_HEADER_SIZE = 64;
export const INDEX_ENTRY_SIZE = 32;
export const INDEX_TRAILER_SIZE = 32;
/** File name suffix of an index. */
export const INDEX_SUFFIX = '.cidx';
const PAGE_ENTRIES = 2048; // 64 KiB of entries per read or write

export const IndexErrorCode = { invalid: 'INDEX_INVALID' } as const;

/** Header fields of an index. */
export interface IndexHeader {
  chunkSize: number;
  diskSize: number;
  chunkCount: number;
}

function encodeHeader(h: IndexHeader): Buffer {
  const b = Buffer.alloc(INDEX_HEADER_SIZE);
  INDEX_MAGIC.copy(b, 0);
  b.writeUInt32LE(1, 8);
  b.writeUInt32LE(h.chunkSize, 12);
  b.writeBigUInt64LE(BigInt(h.diskSize), 16);
  b.writeBigUInt64LE(BigInt(h.chunkCount), 24);
  return b;
}

/** Bytes of an index of `chunkCount` chunks. */
export function indexFileSize(chunkCount: number): number {
  return INDEX_HEADER_SIZE + chunkCount * INDEX_ENTRY_SIZE + INDEX_TRAILER_SIZE;
}

/**
 * Writes an index into `<file>.partial` as digests arrive, then `finish(diskSize)` writes the
 * header and trailer, fsyncs and renames. `abort()` removes the partial file.
 */
export class IndexWriter {
  private page = Buffer.alloc(PAGE_ENTRIES * INDEX_ENTRY_SIZE);
  private inPage = 0;
  private count = 0;
  private readonly hash: Hash = createHash('sha256');
  private position = INDEX_HEADER_SIZE;

  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
    readonly chunkSize: number,
    private readonly sync: boolean,
  ) {}

  static async create(file: string, chunkSize: number, options: { sync?: boolean } = {}): Promise<IndexWriter> {
    const partial = file + PARTIAL_SUFFIX;
    try {
      return new IndexWriter(file, await open(partial, 'w'), chunkSize, options.sync ?? true);
    } catch (error) {
      throw writeError(error, file);
    }
  }

  get chunkCount(): number {
    return this.count;
  }

  async append(digest: Buffer): Promise<void> {
    digest.copy(this.page, this.inPage * INDEX_ENTRY_SIZE);
    this.inPage++;
    this.count++;
    if (this.inPage === PAGE_ENTRIES) await this.writePage();
  }

  private async writePage(): Promise<void> {
    const bytes = this.page.subarray(0, this.inPage * INDEX_ENTRY_SIZE);
    this.hash.update(bytes);
    try {
      await this.handle.write(bytes, 0, bytes.length, this.position);
    } catch (error) {
      throw writeError(error, this.file);
    }
    this.position += bytes.length;
    this.inPage = 0;
  }

  /** Completes the index for a disk of `diskSize` bytes; returns the file's SHA-256 (hex) and size. */
  async finish(diskSize: number): Promise<{ sha256: string; size: number }> {
    const expected = Math.ceil(diskSize / this.chunkSize);
    if (expected !== this.count) throw new RangeError(`index ${path.basename(this.file)}: ${this.count} chunks for a ${diskSize}-byte disk (expected ${expected})`);
    await this.writePage();
    const header = encodeHeader({ chunkSize: this.chunkSize, diskSize, chunkCount: this.count });
    const trailer = this.hash.update(header).digest();
    const partial = this.file + PARTIAL_SUFFIX;
    try {
      await this.handle.write(header, 0, header.length, 0);
      await this.handle.write(trailer, 0, trailer.length, this.position);
      if (this.sync) await this.handle.sync();
      await this.handle.close();
      await rename(partial, this.file);
      if (this.sync) await syncDir(path.dirname(this.file));
    } catch (error) {
      await this.handle.close().catch(() => {});
      await rm(partial, { force: true });
      throw writeError(error, this.file);
    }
    const whole = createHash('sha256');
    // The manifest names the index by the SHA-256 of its whole file; recomputing it costs one
    // read of a small file and keeps this writer from holding the file's bytes.
    const check = await open(this.file, 'r');
    try {
      for await (const chunk of check.createReadStream({ highWaterMark: 1 << 16 })) whole.update(chunk as Buffer);
    } finally {
      await check.close().catch(() => {});
    }
    return { sha256: whole.digest('hex'), size: indexFileSize(this.count) };
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => {});
    await rm(this.file + PARTIAL_SUFFIX, { force: true });
  }
}

/**
 * Random and sequential access to an index, reading 64 KiB pages (one cached): a 1 TiB
 * disk's index is never held whole. `open` checks the header and the file's length;
 * `check()` reads it all and checks the trailer.
 *
 * @example
 *   const idx = await IndexReader.open('/b/web1/point_20261206-080000/xvda.cidx');
 *   for await (const [i, digest] of idx.entries()) …
 */
export class IndexReader implements IndexHeader {
  private pageNo = -1;
  private page = Buffer.alloc(PAGE_ENTRIES * INDEX_ENTRY_SIZE);

  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
    readonly chunkSize: number,
    readonly diskSize: number,
    readonly chunkCount: number,
  ) {}

  static async open(file: string): Promise<IndexReader> {
    let handle: FileHandle;
    try {
      handle = await open(file, 'r');
    } catch (error) {
      throw new PermanentError(IndexErrorCode.invalid, `index ${file} cannot be opened: ${(error as Error).message}`, { file }, { cause: error });
    }
    try {
      const header = Buffer.alloc(INDEX_HEADER_SIZE);
      const { bytesRead } = await handle.read(header, 0, INDEX_HEADER_SIZE, 0);
      const bad = (why: string) => new PermanentError(IndexErrorCode.invalid, `index ${file}: ${why}`, { file });
      if (bytesRead < INDEX_HEADER_SIZE || !header.subarray(0, 8).equals(INDEX_MAGIC)) throw bad('not a vmbackup chunk index');
      if (header.readUInt32LE(8) !== 1) throw bad(`version ${header.readUInt32LE(8)} is not supported`);
      const chunkSize = header.readUInt32LE(12);
      const diskSize = Number(header.readBigUInt64LE(16));
      const chunkCount = Number(header.readBigUInt64LE(24));
      if (chunkSize === 0 || chunkCount !== Math.ceil(diskSize / chunkSize)) throw bad(`header says ${chunkCount} chunks of ${chunkSize} bytes for ${diskSize} bytes`);
      const { size } = await handle.stat();
      if (size !== indexFileSize(chunkCount)) throw bad(`${size} bytes, expected ${indexFileSize(chunkCount)} (truncated?)`);
      return new IndexReader(file, handle, chunkSize, diskSize, chunkCount);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  /** Length in bytes of chunk `i` (the last one may be short). */
  chunkLength(i: number): number {
    return Math.min(this.chunkSize, this.diskSize - i * this.chunkSize);
  }

  /** The digest of chunk `i` (a view valid until the next call). */
  async digest(i: number): Promise<Buffer> {
    if (!Number.isInteger(i) || i < 0 || i >= this.chunkCount) throw new RangeError(`chunk ${i} outside index of ${this.chunkCount}`);
    const p = Math.floor(i / PAGE_ENTRIES);
    if (p !== this.pageNo) {
      const first = p * PAGE_ENTRIES;
      const n = Math.min(PAGE_ENTRIES, this.chunkCount - first);
      await this.handle.read(this.page, 0, n * INDEX_ENTRY_SIZE, INDEX_HEADER_SIZE + first * INDEX_ENTRY_SIZE);
      this.pageNo = p;
    }
    const at = (i % PAGE_ENTRIES) * INDEX_ENTRY_SIZE;
    return this.page.subarray(at, at + INDEX_ENTRY_SIZE);
  }

  /** Every entry in order, as `[i, digest]`; each digest is a fresh copy. */
  async *entries(): AsyncGenerator<[number, Buffer], void, undefined> {
    for (let i = 0; i < this.chunkCount; i++) yield [i, Buffer.from(await this.digest(i))];
  }

  /** Reads the whole file and checks its trailer; throws naming the file otherwise. */
  async check(): Promise<void> {
    const hash = createHash('sha256');
    const buf = Buffer.alloc(PAGE_ENTRIES * INDEX_ENTRY_SIZE);
    const end = INDEX_HEADER_SIZE + this.chunkCount * INDEX_ENTRY_SIZE;
    for (let at = INDEX_HEADER_SIZE; at < end; at += buf.length) {
      const n = Math.min(buf.length, end - at);
      await this.handle.read(buf, 0, n, at);
      hash.update(buf.subarray(0, n));
    }
    const header = Buffer.alloc(INDEX_HEADER_SIZE);
    await this.handle.read(header, 0, INDEX_HEADER_SIZE, 0);
    const trailer = Buffer.alloc(INDEX_TRAILER_SIZE);
    await this.handle.read(trailer, 0, INDEX_TRAILER_SIZE, end);
    if (!hash.update(header).digest().equals(trailer)) throw new PermanentError(IndexErrorCode.invalid, `index ${this.file}: checksum mismatch (the file is damaged)`, { file: this.file });
  }

  async close(): Promise<void> {
    await this.handle.close().catch(() => {});
  }
}
