import { PermanentError } from '../errors.js';
import { isAllZero } from '../formats/zero.js';
import { ZERO_DIGEST, sha256 } from './chunks.js';
import type { ChunkStore } from './chunks.js';
import { IndexWriter } from './index-file.js';
import type { IndexReader } from './index-file.js';

/** CBT's block size: XAPI tracks changes in 64 KiB blocks. */
export const CBT_BLOCK_SIZE = 64 << 10;

/** A byte range of a disk. */
export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * Reads ranges of the disk being backed up: what an NBD client (or a test file) serves.
 * `read` returns exactly `length` bytes; the writer asks for whole chunks only, at most one
 * chunk size (≤ 16 MiB) per call, and may have a few calls in flight (see `concurrency`).
 *
 * @example
 *   const reader: DiskReader = { size, read: (offset, length) => nbd.pread(offset, length) };
 */
export interface DiskReader {
  /** The disk's size in bytes now (may differ from the previous point's: a resized VDI). */
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
}

/** What writing one disk did. */
export interface DiskWriteResult {
  /** SHA-256 (hex) and size of the index file. */
  indexSha256: string;
  indexBytes: number;
  diskSize: number;
  chunkSize: number;
  chunks: number;
  zeroChunks: number;
  /** Chunks written now; the rest were already stored (touched). */
  newChunks: number;
  /** Compressed bytes written for the new chunks. */
  newBytes: number;
  /** Bytes read from the source. */
  readBytes: number;
  /** Incremental only: unchanged chunks missing from the store, read again from the disk. */
  healedChunks: number;
}

export interface WriteDiskOptions {
  /** Chunks hashed/stored at once (memory: this many chunks). Default 4. */
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (bytes: number) => void;
}

/**
 * Runs up to `limit` chunk jobs at once and appends their digests to the index in disk order.
 * A failure surfaces when its job reaches the head of the queue, or from `finish`.
 */
class OrderedChunks {
  private readonly queue: { digest?: Buffer; done: Promise<void> }[] = [];

  constructor(
    private readonly index: IndexWriter,
    private readonly limit: number,
  ) {}

  async push(job: () => Promise<Buffer>): Promise<void> {
    const entry: { digest?: Buffer; done: Promise<void> } = { done: Promise.resolve() };
    entry.done = job().then((d) => void (entry.digest = d));
    entry.done.catch(() => {});
    this.queue.push(entry);
    await this.appendReady();
    while (this.queue.length >= this.limit) {
      await this.queue[0]!.done;
      await this.appendReady();
    }
  }

  private async appendReady(): Promise<void> {
    while (this.queue.length > 0 && this.queue[0]!.digest !== undefined) await this.index.append(this.queue.shift()!.digest!);
  }

  async finish(): Promise<void> {
    while (this.queue.length > 0) {
      await this.queue[0]!.done;
      await this.appendReady();
    }
  }

  /** Waits for the jobs still running (after a failure, before removing the partial index). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.queue.map((e) => e.done));
  }
}

interface Counters {
  zeroChunks: number;
  newChunks: number;
  newBytes: number;
  readBytes: number;
  healedChunks: number;
}

async function storeChunk(store: ChunkStore, data: Buffer, counters: Counters): Promise<Buffer> {
  if (isAllZero(data)) {
    counters.zeroChunks++;
    return ZERO_DIGEST;
  }
  const r = await store.put(data);
  if (r.written) {
    counters.newChunks++;
    counters.newBytes += r.storedBytes;
  }
  return r.digest;
}

/**
 * Writes a whole disk: cuts `source` (the disk's bytes, any chunking) into the store's
 * chunks, stores each new one, touches each known one, and writes the index to `indexFile`
 * (atomically; nothing is there on failure). Memory: `concurrency` chunks.
 *
 * @example
 *   const r = await writeDisk(store, '/b/web1/point_…/xvda.cidx', fs.createReadStream('/dev/…'));
 */
export async function writeDisk(store: ChunkStore, indexFile: string, source: AsyncIterable<Uint8Array>, options: WriteDiskOptions = {}): Promise<DiskWriteResult> {
  const chunkSize = store.chunkSize;
  const index = await IndexWriter.create(indexFile, chunkSize, { sync: store.sync });
  const counters: Counters = { zeroChunks: 0, newChunks: 0, newBytes: 0, readBytes: 0, healedChunks: 0 };
  const ordered = new OrderedChunks(index, options.concurrency ?? 4);
  const emit = (data: Buffer) => ordered.push(() => storeChunk(store, data, counters));
  try {
    let buf = Buffer.allocUnsafe(chunkSize);
    let filled = 0;
    for await (const piece of source) {
      options.signal?.throwIfAborted();
      let at = 0;
      const bytes = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
      counters.readBytes += bytes.length;
      while (at < bytes.length) {
        const n = Math.min(chunkSize - filled, bytes.length - at);
        bytes.copy(buf, filled, at, at + n);
        filled += n;
        at += n;
        if (filled === chunkSize) {
          await emit(buf);
          buf = Buffer.allocUnsafe(chunkSize);
          filled = 0;
        }
      }
      options.onProgress?.(counters.readBytes);
    }
    if (filled > 0) await emit(buf.subarray(0, filled));
    await ordered.finish();
    await store.flush();
    const { sha256: indexSha256, size: indexBytes } = await index.finish(counters.readBytes);
    return { indexSha256, indexBytes, diskSize: counters.readBytes, chunkSize, chunks: index.chunkCount, ...counters };
  } catch (error) {
    await ordered.settle();
    await index.abort();
    throw error;
  }
}

/**
 * Writes a disk from the previous point's index and the ranges changed since (from CBT):
 * every chunk that a range touches — or that lies past the previous disk's end — is read
 * whole from `reader` and stored; every other chunk keeps its previous digest and is touched
 * (PBS's rule: a backup touches every chunk it references, so a concurrent garbage
 * collection keeps it). An unchanged chunk missing from the store is read again from the
 * disk (`healedChunks`). `changes` must be sorted by offset (overlaps are fine).
 *
 * @example
 *   await writeDiskChanges(store, newIndexFile, await IndexReader.open(prevIndexFile),
 *     rangesFromCbtBitmap(bitmap), { size, read: (o, n) => nbd.read(o, n) });
 */
export async function writeDiskChanges(
  store: ChunkStore,
  indexFile: string,
  previous: IndexReader,
  changes: Iterable<ByteRange> | AsyncIterable<ByteRange>,
  reader: DiskReader,
  options: WriteDiskOptions = {},
): Promise<DiskWriteResult> {
  const chunkSize = previous.chunkSize;
  const size = reader.size;
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`disk size must be a non-negative integer, got ${size}`);
  const count = Math.ceil(size / chunkSize);
  const index = await IndexWriter.create(indexFile, chunkSize, { sync: store.sync });
  const counters: Counters = { zeroChunks: 0, newChunks: 0, newBytes: 0, readBytes: 0, healedChunks: 0 };
  const ordered = new OrderedChunks(index, options.concurrency ?? 4);
  const it = (Symbol.asyncIterator in changes ? changes[Symbol.asyncIterator]() : (changes as Iterable<ByteRange>)[Symbol.iterator]()) as AsyncIterator<ByteRange> | Iterator<ByteRange>;
  let range: ByteRange | undefined;
  let lastOffset = -1;
  const nextRange = async () => {
    const r = await it.next();
    if (r.done) {
      range = undefined;
      return;
    }
    const { offset, length } = r.value;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
      throw new PermanentError('BAD_CHANGED_RANGE', `changed range [${offset}, +${length}) is outside the ${size}-byte disk`, { offset, length, size });
    }
    if (offset < lastOffset) throw new PermanentError('BAD_CHANGED_RANGE', `changed ranges are not sorted: ${offset} after ${lastOffset}`, { offset, lastOffset });
    lastOffset = offset;
    range = r.value;
  };
  const readChunk = async (i: number): Promise<Buffer> => {
    const offset = i * chunkSize;
    const length = Math.min(chunkSize, size - offset);
    const data = await reader.read(offset, length);
    if (data.length !== length) throw new PermanentError('SHORT_READ', `the disk reader returned ${data.length} bytes for [${offset}, +${length})`, { offset, length });
    counters.readBytes += length;
    return data;
  };
  try {
    await nextRange();
    for (let i = 0; i < count; i++) {
      options.signal?.throwIfAborted();
      const start = i * chunkSize;
      const end = Math.min(size, start + chunkSize);
      while (range !== undefined && range.offset + range.length <= start) await nextRange();
      const changed =
        (range !== undefined && range.offset < end && range.length > 0) ||
        i >= previous.chunkCount ||
        previous.chunkLength(i) !== end - start; // the old tail chunk of a resized disk
      if (changed) {
        await ordered.push(async () => storeChunk(store, await readChunk(i), counters));
      } else {
        const digest = Buffer.from(await previous.digest(i));
        await ordered.push(async () => {
          if (digest.equals(ZERO_DIGEST)) {
            counters.zeroChunks++;
            return digest;
          }
          if (await store.touch(digest)) return digest;
          counters.healedChunks++;
          return storeChunk(store, await readChunk(i), counters);
        });
      }
      if (i % 256 === 0) options.onProgress?.(start);
    }
    await ordered.finish();
    await store.flush();
    const { sha256: indexSha256, size: indexBytes } = await index.finish(size);
    return { indexSha256, indexBytes, diskSize: size, chunkSize, chunks: count, ...counters };
  } catch (error) {
    await ordered.settle();
    await index.abort();
    throw error;
  }
}

/**
 * The changed ranges of a CBT bitmap (`VDI.list_changed_blocks`, base64-decoded: one bit per
 * 64 KiB block, most significant bit first), adjacent blocks merged, clipped to `diskSize`.
 *
 * @example [...rangesFromCbtBitmap(Buffer.from([0b1100_0000]), 1 << 20)] // [{offset: 0, length: 131072}]
 */
export function* rangesFromCbtBitmap(bitmap: Buffer, diskSize: number, blockSize = CBT_BLOCK_SIZE): Generator<ByteRange, void, undefined> {
  let start = -1;
  const blocks = Math.min(bitmap.length * 8, Math.ceil(diskSize / blockSize));
  for (let b = 0; b <= blocks; b++) {
    const set = b < blocks && (bitmap[b >> 3]! & (0x80 >> (b & 7))) !== 0;
    if (set && start < 0) start = b;
    if (!set && start >= 0) {
      const offset = start * blockSize;
      yield { offset, length: Math.min(diskSize, b * blockSize) - offset };
      start = -1;
    }
  }
}

/** `sha256` re-exported for callers hashing chunks themselves. */
export { sha256 };
