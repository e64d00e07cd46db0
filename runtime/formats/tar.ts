/**
 * Tar headers and a streaming tar reader, as XVA files need them.
 *
 * Format facts relied on:
 * - An archive is a sequence of 512-byte blocks: for each entry a header block, then the data
 *   zero-padded to a multiple of 512; the archive ends with two zero blocks ("end-of-archive").
 *   GNU tar pads the archive further with zeros to a 10240-byte record; XAPI does not.
 * - Header layout (offset, length): name 0/100, mode 100/8, uid 108/8, gid 116/8, size 124/12,
 *   mtime 136/12, checksum 148/8, typeflag 156/1, linkname 157/100; ustar adds magic 257/6,
 *   version 263/2, uname 265/32, gname 297/32, devmajor 329/8, devminor 337/8, prefix 345/155.
 *   Numbers are zero-padded octal ending in NUL (GNU also accepts base-256 for big values).
 * - The checksum is the unsigned sum of the 512 header bytes with the checksum field taken as
 *   eight spaces.
 * - Two header styles are written:
 *   `ustar`: POSIX ustar (`"ustar\0"` `"00"`), typeflag `'0'`, checksum as `%06o\0 ` like GNU tar.
 *   `xapi`: what XAPI writes through ocaml-tar ≥ 2.0 (`Tar.Header.make name size` at the
 *   default V7 level): no magic, typeflag NUL, mode 0o400, uid/gid 0, mtime 0, every number as
 *   (width−1) octal digits + NUL, checksum as 7 octal digits + NUL.
 *
 * @example
 *   const header = encodeTarHeader({ name: 'ova.xml', size: xml.length, format: 'xapi' });
 *   for await (const entry of readTar(fs.createReadStream('vm.xva'))) console.log(entry.name, entry.size);
 */
import { PermanentError } from '../errors.js';
import { isAllZero, zeroSlice } from './zero.js';

export const TAR_BLOCK_SIZE = 512;

/** Header styles the encoder writes; see the module comment. */
export const TarFormat = { ustar: 'ustar', xapi: 'xapi' } as const;
export type TarFormat = (typeof TarFormat)[keyof typeof TarFormat];

/** Codes of `TarError`. */
export const TarErrorCode = {
  BAD_HEADER_CHECKSUM: 'TAR_BAD_HEADER_CHECKSUM',
  BAD_HEADER: 'TAR_BAD_HEADER',
  TRUNCATED: 'TAR_TRUNCATED',
  NO_END: 'TAR_NO_END',
  BAD_END: 'TAR_BAD_END',
  DATA_AFTER_END: 'TAR_DATA_AFTER_END',
  ENTRY_TOO_LARGE: 'TAR_ENTRY_TOO_LARGE',
  NAME_TOO_LONG: 'TAR_NAME_TOO_LONG',
} as const;
export type TarErrorCode = (typeof TarErrorCode)[keyof typeof TarErrorCode];

/**
 * A malformed or truncated tar archive (or an entry that cannot be encoded). `offset` is the
 * byte offset in the archive where the problem is; `entry` the entry name when known.
 *
 * @example
 *   catch (e) { if (e instanceof TarError) log.error({ code: e.code, offset: e.offset }, e.message); }
 */
export class TarError extends PermanentError {
  override name = 'TarError';
  readonly offset: number;
  readonly entry: string | undefined;

  constructor(code: TarErrorCode, message: string, offset: number, entry?: string) {
    super(code, message, { offset, ...(entry === undefined ? {} : { entry }) });
    this.offset = offset;
    this.entry = entry;
  }
}

/** What `encodeTarHeader` needs. */
export interface TarHeaderInput {
  name: string;
  size: number;
  /** Default 0o644 (ustar) or 0o400 (xapi). */
  mode?: number;
  /** Seconds since the epoch; default 0. */
  mtime?: number;
  uid?: number;
  gid?: number;
  /** ustar only. */
  uname?: string;
  gname?: string;
  /** Default `ustar`. */
  format?: TarFormat;
}

/** Largest size a 12-byte octal field holds (8 GiB − 1). */
const MAX_OCTAL_SIZE = 0o77777777777;

function writeOctal(block: Buffer, offset: number, width: number, value: number): void {
  const digits = value.toString(8).padStart(width - 1, '0');
  block.write(digits, offset, width - 1, 'latin1');
  block[offset + width - 1] = 0;
}

function headerSum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK_SIZE; i++) sum += i >= 148 && i < 156 ? 32 : block[i]!;
  return sum;
}

/**
 * One 512-byte header block for a regular file.
 *
 * @example
 *   encodeTarHeader({ name: 'Ref:3/00000000', size: 1 << 20, format: 'xapi' }).length; // 512
 */
export function encodeTarHeader(input: TarHeaderInput): Buffer {
  const format = input.format ?? TarFormat.ustar;
  const block = Buffer.alloc(TAR_BLOCK_SIZE);
  const nameBytes = Buffer.from(input.name, 'utf8');
  if (!Number.isSafeInteger(input.size) || input.size < 0 || input.size > MAX_OCTAL_SIZE) {
    throw new TarError(TarErrorCode.ENTRY_TOO_LARGE, `tar entry ${input.name}: size ${input.size} does not fit a tar header (max ${MAX_OCTAL_SIZE})`, 0, input.name);
  }
  if (nameBytes.length <= 100) {
    nameBytes.copy(block, 0);
  } else if (format === TarFormat.ustar) {
    // ustar splits long names at a '/' into prefix (≤155) and name (≤100).
    let split = -1;
    for (let i = nameBytes.length - 1; i >= 0; i--) {
      if (nameBytes[i] === 0x2f && i <= 155 && nameBytes.length - i - 1 <= 100 && nameBytes.length - i - 1 > 0) {
        split = i;
        break;
      }
    }
    if (split < 0) throw new TarError(TarErrorCode.NAME_TOO_LONG, `tar entry name too long for ustar: ${input.name}`, 0, input.name);
    nameBytes.copy(block, 345, 0, split);
    nameBytes.copy(block, 0, split + 1);
  } else {
    throw new TarError(TarErrorCode.NAME_TOO_LONG, `tar entry name longer than 100 bytes: ${input.name}`, 0, input.name);
  }
  writeOctal(block, 100, 8, input.mode ?? (format === TarFormat.xapi ? 0o400 : 0o644));
  writeOctal(block, 108, 8, input.uid ?? 0);
  writeOctal(block, 116, 8, input.gid ?? 0);
  writeOctal(block, 124, 12, input.size);
  writeOctal(block, 136, 12, Math.floor(input.mtime ?? 0));
  if (format === TarFormat.ustar) {
    block[156] = 0x30; // '0' regular file
    block.write('ustar\u000000', 257, 8, 'latin1');
    block.write(input.uname ?? '', 265, 32, 'utf8');
    block.write(input.gname ?? '', 297, 32, 'utf8');
    writeOctal(block, 329, 8, 0);
    writeOctal(block, 337, 8, 0);
    const sum = headerSum(block);
    block.write(sum.toString(8).padStart(6, '0'), 148, 6, 'latin1');
    block[154] = 0;
    block[155] = 0x20;
  } else {
    block[156] = 0; // V7 regular file
    writeOctal(block, 148, 8, headerSum(block));
  }
  return block;
}

/** Bytes of zero padding after `size` bytes of entry data. */
export function tarPaddingLength(size: number): number {
  return (TAR_BLOCK_SIZE - (size % TAR_BLOCK_SIZE)) % TAR_BLOCK_SIZE;
}

/** Zero padding after `size` bytes of entry data (a shared zero view). */
export function tarPadding(size: number): Buffer {
  return zeroSlice(tarPaddingLength(size));
}

/** The end-of-archive marker: two zero blocks. Shared; do not mutate. */
export const TAR_END: Buffer = zeroSlice(2 * TAR_BLOCK_SIZE);

/**
 * Header, data and padding of one entry as buffers to write in order.
 *
 * @example
 *   for (const part of tarEntry('ova.xml', Buffer.from(xml), 'xapi')) out.write(part);
 */
export function tarEntry(name: string, data: Buffer, format: TarFormat = TarFormat.ustar): Buffer[] {
  const parts = [encodeTarHeader({ name, size: data.length, format })];
  if (data.length > 0) parts.push(data);
  const pad = tarPaddingLength(data.length);
  if (pad > 0) parts.push(zeroSlice(pad));
  return parts;
}

/** A decoded header. `typeflag` is `'0'` for regular files (V7's NUL is reported as `'0'`). */
export interface TarHeader {
  name: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  typeflag: string;
  linkname: string;
  /** Which magic the header carries. */
  format: 'v7' | 'ustar' | 'gnu';
}

function cString(block: Buffer, start: number, length: number): string {
  const end = block.indexOf(0, start);
  return block.toString('utf8', start, end < 0 || end > start + length ? start + length : end);
}

function parseNumber(block: Buffer, start: number, length: number, field: string, offset: number): number {
  const first = block[start]!;
  if (first & 0x80) {
    // GNU base-256: big-endian two's complement in the remaining bits.
    let value = first & 0x7f;
    for (let i = 1; i < length; i++) value = value * 256 + block[start + i]!;
    if (!Number.isSafeInteger(value)) throw new TarError(TarErrorCode.BAD_HEADER, `tar header at byte ${offset}: ${field} too large`, offset);
    return value;
  }
  const text = block.toString('latin1', start, start + length);
  const trimmed = text.replace(/^[ ]+/, '').replace(/[\0 ].*$/s, '');
  if (trimmed === '') return 0;
  if (!/^[0-7]+$/.test(trimmed)) {
    throw new TarError(TarErrorCode.BAD_HEADER, `tar header at byte ${offset}: ${field} is not an octal number (${JSON.stringify(text)})`, offset);
  }
  return parseInt(trimmed, 8);
}

/**
 * Decodes one header block at archive offset `offset`; null for a zero block. Throws
 * `TarError` on a checksum mismatch or malformed number.
 */
export function decodeTarHeader(block: Buffer, offset: number): TarHeader | null {
  if (isAllZero(block)) return null;
  const stored = parseNumber(block, 148, 8, 'checksum', offset);
  const unsigned = headerSum(block);
  if (stored !== unsigned) {
    // Some old tars summed signed bytes; accept that too.
    let signed = 0;
    for (let i = 0; i < TAR_BLOCK_SIZE; i++) signed += i >= 148 && i < 156 ? 32 : (block[i]! << 24) >> 24;
    if (stored !== signed) {
      const name = cString(block, 0, 100);
      throw new TarError(
        TarErrorCode.BAD_HEADER_CHECKSUM,
        `tar header at byte ${offset} (${JSON.stringify(name)}): checksum mismatch, stored ${stored.toString(8)} but computed ${unsigned.toString(8)}`,
        offset,
        name,
      );
    }
  }
  const magic = block.toString('latin1', 257, 263);
  const format = magic === 'ustar\0' ? 'ustar' : magic === 'ustar ' ? 'gnu' : 'v7';
  let name = cString(block, 0, 100);
  if (format === 'ustar') {
    const prefix = cString(block, 345, 155);
    if (prefix !== '') name = `${prefix}/${name}`;
  }
  const flag = block[156]!;
  return {
    name,
    size: parseNumber(block, 124, 12, 'size', offset),
    mode: parseNumber(block, 100, 8, 'mode', offset),
    uid: parseNumber(block, 108, 8, 'uid', offset),
    gid: parseNumber(block, 116, 8, 'gid', offset),
    mtime: parseNumber(block, 136, 12, 'mtime', offset),
    typeflag: flag === 0 ? '0' : String.fromCharCode(flag),
    linkname: cString(block, 157, 100),
    format,
  };
}

/** One entry, with all its data in memory. */
export interface TarEntry extends TarHeader {
  /** Byte offset of the entry's header block in the archive. */
  offset: number;
  /** Byte offset of the entry's first data byte. */
  dataOffset: number;
  data: Buffer;
}

export interface ReadTarOptions {
  /** Entries larger than this are refused before their data is read. Default 256 MiB. */
  maxEntrySize?: number;
  /**
   * What may follow the end-of-archive: `zeros` (default; GNU tar pads to 10 KiB records),
   * `none` (nothing, as XAPI writes) or `any` (stop reading there).
   */
  trailing?: 'zeros' | 'none' | 'any';
}

/** An entry's header as the scanner reports it, before its data. */
export interface TarEntryStart extends TarHeader {
  /** Byte offset of the entry's header block in the archive. */
  offset: number;
  /** Byte offset of the entry's first data byte. */
  dataOffset: number;
}

/** What a `TarScanner` reports, synchronously, as bytes are pushed. */
export interface TarSink {
  /** An entry begins (its header is valid). */
  entry(start: TarEntryStart): void;
  /** The next bytes of the current entry's data: a view valid only during the call. */
  data(view: Buffer): void;
  /** The current entry's data and padding are complete. */
  entryEnd(): void;
  /** The end-of-archive marker was read (what may follow it is checked after). */
  archiveEnd?(): void;
}

type ScanState = 'header' | 'data' | 'pad' | 'second-zero' | 'trailing' | 'done';

/**
 * A push-based tar reader: `push` each piece of the archive in order, then `end()`. It reports
 * entries to `sink` as they pass and keeps nothing across calls but a header block cut
 * between two pieces (at most 511 bytes): data goes to the sink as views of the pushed
 * pieces, so a producer may reuse its buffer once `push` returns. Throws `TarError` (from
 * `push` or `end`) on the first problem, with its byte offset, as `readTar` describes.
 *
 * @example
 *   const t = new TarScanner({ entry: (e) => console.log(e.name), data: () => {}, entryEnd: () => {} });
 *   for (const piece of pieces) t.push(piece);
 *   t.end();
 */
export class TarScanner {
  /** Bytes pushed so far. */
  position = 0;
  private state: ScanState = 'header';
  private readonly block = Buffer.alloc(TAR_BLOCK_SIZE);
  private filled = 0;
  /** Start of the block being gathered (header or second zero block). */
  private blockOffset = 0;
  private remaining = 0;
  private entry: TarEntryStart | undefined;
  private lastName: string | undefined;
  private readonly maxEntrySize: number;
  private readonly trailing: 'zeros' | 'none' | 'any';

  constructor(
    private readonly sink: TarSink,
    options: ReadTarOptions = {},
  ) {
    this.maxEntrySize = options.maxEntrySize ?? 256 << 20;
    this.trailing = options.trailing ?? 'zeros';
  }

  /** True once the end-of-archive marker was read (and, with `trailing: 'any'`, nothing more is looked at). */
  get ended(): boolean {
    return this.state === 'trailing' || this.state === 'done';
  }

  push(piece: Buffer): void {
    let at = 0;
    while (at < piece.length) {
      const left = piece.length - at;
      switch (this.state) {
        case 'header':
        case 'second-zero': {
          let block: Buffer;
          if (this.filled === 0 && left >= TAR_BLOCK_SIZE) {
            block = piece.subarray(at, at + TAR_BLOCK_SIZE);
            this.blockOffset = this.position;
            at += TAR_BLOCK_SIZE;
            this.position += TAR_BLOCK_SIZE;
          } else {
            if (this.filled === 0) this.blockOffset = this.position;
            const take = Math.min(left, TAR_BLOCK_SIZE - this.filled);
            piece.copy(this.block, this.filled, at, at + take);
            this.filled += take;
            at += take;
            this.position += take;
            if (this.filled < TAR_BLOCK_SIZE) return;
            block = this.block;
          }
          this.filled = 0;
          if (this.state === 'header') this.header(block);
          else this.secondZero(block);
          break;
        }
        case 'data': {
          const take = Math.min(left, this.remaining);
          this.sink.data(piece.subarray(at, at + take));
          at += take;
          this.position += take;
          this.remaining -= take;
          if (this.remaining === 0) this.afterData();
          break;
        }
        case 'pad': {
          const take = Math.min(left, this.remaining);
          at += take;
          this.position += take;
          this.remaining -= take;
          if (this.remaining === 0) this.closeEntry();
          break;
        }
        case 'trailing': {
          const rest = piece.subarray(at);
          if (this.trailing === 'none' || !isAllZero(rest)) {
            const firstNonZero = this.trailing === 'none' ? 0 : rest.findIndex((b) => b !== 0);
            const where = this.position + firstNonZero;
            throw new TarError(TarErrorCode.DATA_AFTER_END, `tar archive has data after the end-of-archive marker, at byte ${where}`, where);
          }
          this.position += rest.length;
          return;
        }
        case 'done':
          this.position += left;
          return;
      }
    }
  }

  /** The archive ends here: throws `TarError` unless it ended properly. */
  end(): void {
    switch (this.state) {
      case 'header':
        if (this.filled === 0) {
          throw new TarError(
            TarErrorCode.NO_END,
            `tar archive ends at byte ${this.position} without the end-of-archive marker (two zero blocks)${this.lastName === undefined ? '' : ` after entry ${this.lastName}`}`,
            this.position,
            this.lastName,
          );
        }
        throw new TarError(TarErrorCode.TRUNCATED, `tar archive truncated inside a header block at byte ${this.blockOffset} (${this.filled} of 512 bytes)`, this.blockOffset, this.lastName);
      case 'second-zero':
        throw new TarError(
          TarErrorCode.NO_END,
          `tar archive ends at byte ${this.position} after a single zero block at byte ${this.blockOffset}: the end-of-archive marker needs two`,
          this.blockOffset,
        );
      case 'data': {
        const e = this.entry!;
        throw new TarError(
          TarErrorCode.TRUNCATED,
          `tar entry ${e.name} truncated: ${e.size} bytes expected from byte ${e.dataOffset}, the archive ends after ${e.size - this.remaining}`,
          this.position,
          e.name,
        );
      }
      case 'pad':
        throw new TarError(TarErrorCode.TRUNCATED, `tar entry ${this.entry!.name} truncated inside its padding (archive ends at byte ${this.position})`, this.position, this.entry!.name);
      default:
    }
  }

  private header(block: Buffer): void {
    const offset = this.blockOffset;
    const header = decodeTarHeader(block, offset);
    if (header === null) {
      this.state = 'second-zero';
      return;
    }
    if (header.size > this.maxEntrySize) {
      throw new TarError(TarErrorCode.ENTRY_TOO_LARGE, `tar entry ${header.name} at byte ${offset} is ${header.size} bytes, more than the ${this.maxEntrySize} allowed`, offset, header.name);
    }
    this.entry = { ...header, offset, dataOffset: this.position };
    this.sink.entry(this.entry);
    this.remaining = header.size;
    this.state = 'data';
    if (this.remaining === 0) this.afterData();
  }

  private afterData(): void {
    this.remaining = tarPaddingLength(this.entry!.size);
    this.state = 'pad';
    if (this.remaining === 0) this.closeEntry();
  }

  private closeEntry(): void {
    this.lastName = this.entry!.name;
    this.state = 'header';
    this.sink.entryEnd();
  }

  private secondZero(block: Buffer): void {
    if (!isAllZero(block)) {
      throw new TarError(TarErrorCode.BAD_END, `tar archive has a lone zero block at byte ${this.blockOffset - TAR_BLOCK_SIZE} followed by more data`, this.blockOffset - TAR_BLOCK_SIZE);
    }
    this.state = this.trailing === 'any' ? 'done' : 'trailing';
    this.sink.archiveEnd?.();
  }
}

/**
 * Feeds `input` to a push-based reader and yields what it queued, in order: the pull form of
 * `TarScanner` and `XvaChecker`. Events queued before a problem are yielded before its error
 * is thrown. `done()` true stops reading the input early.
 */
export async function* drivePush<E>(
  input: AsyncIterable<Uint8Array | string>,
  queue: E[],
  push: (piece: Buffer) => void,
  end: () => void,
  done: () => boolean = () => false,
): AsyncGenerator<E, void, undefined> {
  let failure: unknown;
  let failed = false;
  for await (const value of input) {
    const piece = typeof value === 'string' ? Buffer.from(value) : Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    try {
      push(piece);
    } catch (error) {
      failure = error;
      failed = true;
    }
    while (queue.length > 0) yield queue.shift()!;
    if (failed) throw failure;
    if (done()) return;
  }
  try {
    end();
  } catch (error) {
    failure = error;
    failed = true;
  }
  while (queue.length > 0) yield queue.shift()!;
  if (failed) throw failure;
}

/**
 * Reads a tar archive entry by entry (a `TarScanner` that gathers each entry's data). Holds
 * one entry plus one block in memory. Throws `TarError` with the byte offset on a bad header
 * checksum, a truncated entry, a missing end-of-archive, or non-zero data after it.
 *
 * @example
 *   for await (const e of readTar(process.stdin)) console.log(e.name, e.size, e.offset);
 */
export async function* readTar(input: AsyncIterable<Uint8Array | string>, options: ReadTarOptions = {}): AsyncGenerator<TarEntry, void, undefined> {
  const queue: TarEntry[] = [];
  let current: TarEntryStart | undefined;
  let data = Buffer.alloc(0);
  let filled = 0;
  const scanner = new TarScanner(
    {
      entry: (start) => {
        current = start;
        data = Buffer.allocUnsafe(start.size);
        filled = 0;
      },
      data: (view) => {
        view.copy(data, filled);
        filled += view.length;
      },
      entryEnd: () => queue.push({ ...current!, data }),
    },
    options,
  );
  yield* drivePush(input, queue, (piece) => scanner.push(piece), () => scanner.end(), () => (options.trailing ?? 'zeros') === 'any' && scanner.ended);
}
