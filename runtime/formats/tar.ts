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
import { ByteReader } from './byte-reader.js';
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

/**
 * Reads a tar archive entry by entry. Holds one entry plus one block in memory. Throws
 * `TarError` with the byte offset on a bad header checksum, a truncated entry, a missing
 * end-of-archive, or non-zero data after it.
 *
 * @example
 *   for await (const e of readTar(process.stdin)) console.log(e.name, e.size, e.offset);
 */
export async function* readTar(input: AsyncIterable<Uint8Array | string>, options: ReadTarOptions = {}): AsyncGenerator<TarEntry, void, undefined> {
  const maxEntrySize = options.maxEntrySize ?? 256 << 20;
  const trailing = options.trailing ?? 'zeros';
  const reader = new ByteReader(input);
  let lastName: string | undefined;
  try {
    for (;;) {
      const offset = reader.position;
      const block = await reader.read(TAR_BLOCK_SIZE);
      if (block.length === 0) {
        throw new TarError(
          TarErrorCode.NO_END,
          `tar archive ends at byte ${offset} without the end-of-archive marker (two zero blocks)${lastName === undefined ? '' : ` after entry ${lastName}`}`,
          offset,
          lastName,
        );
      }
      if (block.length < TAR_BLOCK_SIZE) {
        throw new TarError(TarErrorCode.TRUNCATED, `tar archive truncated inside a header block at byte ${offset} (${block.length} of 512 bytes)`, offset, lastName);
      }
      const header = decodeTarHeader(block, offset);
      if (header === null) {
        const second = await reader.read(TAR_BLOCK_SIZE);
        if (second.length < TAR_BLOCK_SIZE) {
          throw new TarError(TarErrorCode.NO_END, `tar archive ends at byte ${reader.position} after a single zero block at byte ${offset}: the end-of-archive marker needs two`, offset);
        }
        if (!isAllZero(second)) {
          throw new TarError(TarErrorCode.BAD_END, `tar archive has a lone zero block at byte ${offset} followed by more data`, offset);
        }
        await checkTrailing(reader, trailing);
        return;
      }
      if (header.size > maxEntrySize) {
        throw new TarError(TarErrorCode.ENTRY_TOO_LARGE, `tar entry ${header.name} at byte ${offset} is ${header.size} bytes, more than the ${maxEntrySize} allowed`, offset, header.name);
      }
      const dataOffset = reader.position;
      const data = await reader.read(header.size);
      if (data.length < header.size) {
        throw new TarError(
          TarErrorCode.TRUNCATED,
          `tar entry ${header.name} truncated: ${header.size} bytes expected from byte ${dataOffset}, the archive ends after ${data.length}`,
          reader.position,
          header.name,
        );
      }
      const pad = tarPaddingLength(header.size);
      if ((await reader.skip(pad)) < pad) {
        throw new TarError(TarErrorCode.TRUNCATED, `tar entry ${header.name} truncated inside its padding (archive ends at byte ${reader.position})`, reader.position, header.name);
      }
      lastName = header.name;
      yield { ...header, offset, dataOffset, data };
    }
  } finally {
    await reader.close();
  }
}

async function checkTrailing(reader: ByteReader, trailing: 'zeros' | 'none' | 'any'): Promise<void> {
  if (trailing === 'any') return;
  for (;;) {
    const at = reader.position;
    const buf = await reader.read(64 << 10);
    if (buf.length === 0) return;
    if (trailing === 'none' || !isAllZero(buf)) {
      const firstNonZero = trailing === 'none' ? 0 : buf.findIndex((b) => b !== 0);
      throw new TarError(TarErrorCode.DATA_AFTER_END, `tar archive has data after the end-of-archive marker, at byte ${at + firstNonZero}`, at + firstNonZero);
    }
  }
}
