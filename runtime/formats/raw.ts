/**
 * Raw disk images: the disk's bytes from 0 to its size, zeros included (XAPI's
 * `/export_raw_vdi?format=raw`). Zero ranges the source reports as `null` are emitted as views
 * of one shared zero buffer, so a sparse disk costs no allocation.
 *
 * @example
 *   await pipeline(rawStream(source), fs.createWriteStream('disk.img'));
 */
import { Readable } from 'node:stream';
import type { BlockSource } from './block-source.js';
import { ZERO_BUFFER_SIZE, zeroSlice } from './zero.js';

export interface RawStreamOptions {
  /** Bytes asked of the source per read; default 2 MiB. */
  readSize?: number;
  /** Readable high-water mark in bytes; default 2 MiB. */
  highWaterMark?: number;
}

/**
 * The disk as a pull-based Readable: reads the source only as the consumer reads.
 *
 * @example
 *   rawStream({ size: 1 << 30, read: () => null }).pipe(res); // 1 GiB of zeros, no allocation
 */
export function rawStream(source: BlockSource, options: RawStreamOptions = {}): Readable {
  return Readable.from(rawParts(source, options), { objectMode: false, highWaterMark: options.highWaterMark ?? ZERO_BUFFER_SIZE });
}

/** The buffers `rawStream` emits, in order. Zero views are shared: do not mutate them. */
export async function* rawParts(source: BlockSource, options: RawStreamOptions = {}): AsyncGenerator<Buffer, void, undefined> {
  const readSize = options.readSize ?? ZERO_BUFFER_SIZE;
  if (!Number.isSafeInteger(readSize) || readSize <= 0) throw new RangeError(`rawStream: readSize must be a positive integer, got ${readSize}`);
  for (let offset = 0; offset < source.size; offset += readSize) {
    const length = Math.min(readSize, source.size - offset);
    const data = await source.read(offset, length);
    if (data !== null && data.length !== length) {
      throw new RangeError(`rawStream: source returned ${data.length} bytes for [${offset}, +${length})`);
    }
    yield data ?? zeroSlice(length);
  }
}
