/**
 * VHD (dynamic and differencing) as XAPI streams it: writer, reader/validator, disk writes.
 *
 * Format facts relied on (xapi.md §6; Microsoft's VHD specification; ocaml-vhd's
 * `Vhd_input.vhd`, which XAPI's vhd-tool uses to stream `/export_raw_vdi?format=vhd`):
 * - Layout: bytes 0–511 a copy of the footer; 512–1535 the dynamic header; 1536–2047 one
 *   spare sector; from 2048 the BAT, one big-endian u32 per block (the block's sector offset,
 *   0xFFFFFFFF when unallocated), padded to 512 bytes; then each allocated block in index
 *   order as a sector bitmap (512 bytes, all 0xFF, for 2 MiB blocks) followed by the block's
 *   data; finally the footer again. Both footers are byte-identical.
 * - Footer (512 bytes, big-endian): cookie "conectix" @0, features @8 (2 = reserved bit),
 *   version 0x00010000 @12, data offset (u64) @16 = 512, timestamp @24 (seconds since
 *   2000-01-01 UTC), creator application @28 (4 chars), creator version @32, creator host OS
 *   @36, original size (u64) @40, current size (u64) @48, CHS geometry @56 (u16 cylinders, u8
 *   heads, u8 sectors per track), disk type @60 (2 fixed, 3 dynamic, 4 differencing),
 *   checksum @64, UUID @68 (16 bytes), saved state @84.
 * - Dynamic header (1024 bytes): cookie "cxsparse" @0, data offset (u64) @8 = all ones,
 *   table offset (u64) @16, version 0x00010000 @24, max table entries @28, block size @32
 *   (2 MiB), checksum @36, parent UUID @40, parent timestamp @56, parent name @64 (512 bytes
 *   UTF-16BE), 8 parent locators of 24 bytes @576 (code, data space, data length, reserved,
 *   u64 data offset).
 * - Checksums: one's complement of the 32-bit sum of all bytes, the checksum field as zeros.
 * - Geometry: the CHS algorithm of the VHD specification (appendix "CHS Calculation").
 * - A sector whose bitmap bit is clear holds zeros (dynamic) or comes from the parent
 *   (differencing).
 *
 * What vhd-tool writes that this writer copies by default: creator application "caml",
 * creator version 1, host OS 0, timestamp 0 (2000-01-01), a random v4 UUID, current size =
 * original size = the VDI's virtual size. Unconfirmed: the exact values a given XAPI build's
 * vhd-tool writes; for differencing streams vhd-tool leaves the sector at 1536 zeroed although
 * its parent locator points there, while this writer stores the locator's URI there.
 *
 * Note for readers of these files with qemu: qemu's vpc driver derives the disk size from the
 * CHS geometry unless the creator application is one it knows to use the current size
 * ("tap\0", "win ", "qem2", "d2v ", "CTXS"); with "caml" pass
 * `driver=vpc,force_size_calc=current_size` or the size is rounded down to the geometry.
 *
 * @example
 *   await pipeline(vhdStream(source), fs.createWriteStream('disk.vhd'));
 *   const info = await verifyVhd(fs.createReadStream('disk.vhd'));
 *   for await (const { offset, data } of vhdDiskWrites(fs.createReadStream('disk.vhd'))) await fh.write(data, 0, data.length, offset);
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { PermanentError } from '../errors.js';
import { VHD_BLOCK_SIZE, type BlockSource } from './block-source.js';
import { ByteReader } from './byte-reader.js';
import { isAllZero, zeroSlice } from './zero.js';

export const SECTOR_SIZE = 512;
export const VHD_FOOTER_SIZE = 512;
export const VHD_HEADER_SIZE = 1024;
/** Where XAPI puts the dynamic header and the BAT. */
export const VHD_HEADER_OFFSET = 512;
export const VHD_TABLE_OFFSET = 2048;
/** Seconds between the Unix epoch and 2000-01-01T00:00:00Z. */
export const VHD_EPOCH = 946_684_800;

export const VhdDiskType = { fixed: 2, dynamic: 3, differencing: 4 } as const;
export type VhdDiskType = (typeof VhdDiskType)[keyof typeof VhdDiskType];

const UNUSED = 0xffffffff;
const FOOTER_COOKIE = 'conectix';
const HEADER_COOKIE = 'cxsparse';
const VERSION = 0x00010000;

/** CHS geometry as the VHD footer stores it. */
export interface VhdGeometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/**
 * The CHS geometry the VHD specification computes for a disk of `size` bytes.
 *
 * @example
 *   vhdGeometry(10 << 30); // { cylinders: 20805, heads: 16, sectorsPerTrack: 63 }
 */
export function vhdGeometry(size: number): VhdGeometry {
  let totalSectors = Math.floor(size / SECTOR_SIZE);
  if (totalSectors > 65535 * 16 * 255) totalSectors = 65535 * 16 * 255;
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (totalSectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    heads = Math.max(4, Math.floor((cylinderTimesHeads + 1023) / 1024));
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylinderTimesHeads / heads), heads, sectorsPerTrack };
}

/** One's complement of the byte sum of `buf`, the 4 bytes at `checksumAt` counted as zero. */
export function vhdChecksum(buf: Buffer, checksumAt: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) if (i < checksumAt || i >= checksumAt + 4) sum += buf[i]!;
  return ~sum >>> 0;
}

/** Seconds since 2000-01-01 for a Date (clamped to the u32 range). */
export function vhdTimestamp(date: Date): number {
  return Math.min(0xffffffff, Math.max(0, Math.floor(date.getTime() / 1000) - VHD_EPOCH));
}

function uuidBytes(uuid: Buffer | string | undefined): Buffer {
  if (uuid === undefined) return Buffer.from(randomUUID().replaceAll('-', ''), 'hex');
  const buf = typeof uuid === 'string' ? Buffer.from(uuid.replaceAll('-', ''), 'hex') : uuid;
  if (buf.length !== 16) throw new RangeError(`VHD uuid must be 16 bytes, got ${buf.length}`);
  return buf;
}

/** Formats 16 bytes as a UUID string. */
export function formatUuid(buf: Buffer): string {
  const hex = buf.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** Decoded footer fields. */
export interface VhdFooter {
  features: number;
  version: number;
  dataOffset: bigint;
  /** Seconds since 2000-01-01. */
  timestamp: number;
  creatorApp: string;
  creatorVersion: number;
  creatorHostOs: number;
  originalSize: number;
  currentSize: number;
  geometry: VhdGeometry;
  diskType: number;
  checksum: number;
  uuid: string;
  savedState: boolean;
}

/** Decoded parent locator entry. */
export interface VhdParentLocator {
  /** Platform code as 4 characters (`W2ru`, `W2ku`, `MacX`, …). */
  code: string;
  dataSpace: number;
  dataLength: number;
  dataOffset: number;
  /** The locator's data, when it lay before the BAT (where writers put it). */
  data?: Buffer;
}

/** Decoded dynamic header fields. */
export interface VhdHeader {
  dataOffset: bigint;
  tableOffset: number;
  version: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
  parentUuid: string;
  parentTimestamp: number;
  parentName: string;
  parentLocators: VhdParentLocator[];
}

export interface EncodeFooterInput {
  currentSize: number;
  originalSize?: number;
  diskType: VhdDiskType;
  uuid: Buffer;
  timestamp: number;
  creatorApp?: string;
  creatorVersion?: number;
  creatorHostOs?: number;
  /** Default 512; fixed disks use all ones. */
  dataOffset?: bigint;
}

/** A 512-byte footer with its checksum. */
export function encodeVhdFooter(input: EncodeFooterInput): Buffer {
  const buf = Buffer.alloc(VHD_FOOTER_SIZE);
  buf.write(FOOTER_COOKIE, 0, 'latin1');
  buf.writeUInt32BE(2, 8);
  buf.writeUInt32BE(VERSION, 12);
  buf.writeBigUInt64BE(input.dataOffset ?? BigInt(VHD_HEADER_OFFSET), 16);
  buf.writeUInt32BE(input.timestamp >>> 0, 24);
  Buffer.from((input.creatorApp ?? 'caml').padEnd(4, '\0').slice(0, 4), 'latin1').copy(buf, 28);
  buf.writeUInt32BE((input.creatorVersion ?? 1) >>> 0, 32);
  buf.writeUInt32BE((input.creatorHostOs ?? 0) >>> 0, 36);
  buf.writeBigUInt64BE(BigInt(input.originalSize ?? input.currentSize), 40);
  buf.writeBigUInt64BE(BigInt(input.currentSize), 48);
  const geometry = vhdGeometry(input.currentSize);
  buf.writeUInt16BE(geometry.cylinders, 56);
  buf.writeUInt8(geometry.heads, 58);
  buf.writeUInt8(geometry.sectorsPerTrack, 59);
  buf.writeUInt32BE(input.diskType, 60);
  input.uuid.copy(buf, 68);
  buf.writeUInt32BE(vhdChecksum(buf, 64), 64);
  return buf;
}

export interface EncodeHeaderInput {
  maxTableEntries: number;
  blockSize?: number;
  tableOffset?: number;
  parent?: { uuid: Buffer; timestamp: number; name: string; locators: { code: string; dataSpace: number; dataLength: number; dataOffset: number }[] };
}

/** A 1024-byte dynamic header with its checksum. */
export function encodeVhdHeader(input: EncodeHeaderInput): Buffer {
  const buf = Buffer.alloc(VHD_HEADER_SIZE);
  buf.write(HEADER_COOKIE, 0, 'latin1');
  buf.writeBigUInt64BE(0xffffffffffffffffn, 8);
  buf.writeBigUInt64BE(BigInt(input.tableOffset ?? VHD_TABLE_OFFSET), 16);
  buf.writeUInt32BE(VERSION, 24);
  buf.writeUInt32BE(input.maxTableEntries, 28);
  buf.writeUInt32BE(input.blockSize ?? VHD_BLOCK_SIZE, 32);
  if (input.parent) {
    input.parent.uuid.copy(buf, 40);
    buf.writeUInt32BE(input.parent.timestamp >>> 0, 56);
    const name = Buffer.from(input.parent.name, 'utf16le').swap16();
    name.copy(buf, 64, 0, Math.min(name.length, 512));
    input.parent.locators.slice(0, 8).forEach((locator, i) => {
      const at = 576 + i * 24;
      buf.write(locator.code.padEnd(4, '\0').slice(0, 4), at, 'latin1');
      buf.writeUInt32BE(locator.dataSpace, at + 4);
      buf.writeUInt32BE(locator.dataLength, at + 8);
      buf.writeBigUInt64BE(BigInt(locator.dataOffset), at + 16);
    });
  }
  buf.writeUInt32BE(vhdChecksum(buf, 36), 36);
  return buf;
}

/** Bytes of the sector bitmap in front of each block. */
export function vhdBitmapSize(blockSize: number): number {
  return Math.ceil(blockSize / SECTOR_SIZE / 8 / SECTOR_SIZE) * SECTOR_SIZE;
}

/** Bytes of a BAT of `entries` entries, padded to a sector. */
export function vhdBatSize(entries: number): number {
  return Math.ceil((entries * 4) / SECTOR_SIZE) * SECTOR_SIZE;
}

export interface VhdStreamOptions {
  /** 16 bytes (or a UUID string); default a random v4 UUID. */
  uuid?: Buffer | string;
  /** Footer timestamp; default 2000-01-01 (0), as vhd-tool writes. */
  timestamp?: Date;
  /** Default "caml" (vhd-tool). */
  creatorApp?: string;
  /** Default 1. */
  creatorVersion?: number;
  /** Default 0. */
  creatorHostOs?: number;
  /**
   * Which blocks to allocate, when the caller knows (skips the allocation pass). Default:
   * a block is allocated iff its bytes are not all zero (differencing: iff `read` is not null).
   */
  allocated?: (block: number) => boolean | Promise<boolean>;
  /**
   * Makes a differencing VHD against this parent. Then `read` returning null means
   * "unchanged from the parent" and any Buffer, zeros included, is stored.
   */
  parent?: { uuid: Buffer | string; timestamp?: Date; name?: string };
  /** Readable high-water mark in bytes; default 2 MiB. */
  highWaterMark?: number;
}

/**
 * The disk as a VHD stream, pull-based (nothing is read until the consumer reads).
 *
 * The BAT precedes the data, so the allocation of every block must be known first. Unless
 * `options.allocated` is given, a first pass reads each 2 MiB block once and keeps one byte
 * per block (512 KiB for a 1 TiB disk); allocated blocks are then read again when streamed.
 * Cost: sources answering `null` for zero ranges make the pass nearly free; otherwise every
 * allocated block is read twice. The source must return the same bytes both times.
 *
 * @example
 *   vhdStream(source, { uuid: vdiUuidBytes, timestamp: new Date() }).pipe(res);
 */
export function vhdStream(source: BlockSource, options: VhdStreamOptions = {}): Readable {
  return Readable.from(vhdParts(source, options), { objectMode: false, highWaterMark: options.highWaterMark ?? VHD_BLOCK_SIZE });
}

/** The buffers `vhdStream` emits, in order. Zero views are shared: do not mutate them. */
export async function* vhdParts(source: BlockSource, options: VhdStreamOptions = {}): AsyncGenerator<Buffer, void, undefined> {
  const size = source.size;
  if (!Number.isSafeInteger(size) || size < 0 || size % SECTOR_SIZE !== 0) {
    throw new RangeError(`vhdStream: disk size must be a non-negative multiple of 512, got ${size}`);
  }
  const blockSize = VHD_BLOCK_SIZE;
  const blocks = Math.ceil(size / blockSize);
  const differencing = options.parent !== undefined;
  const uuid = uuidBytes(options.uuid);

  const allocated = new Uint8Array(blocks);
  for (let i = 0; i < blocks; i++) {
    if (options.allocated) {
      allocated[i] = (await options.allocated(i)) ? 1 : 0;
    } else {
      const data = await source.read(i * blockSize, Math.min(blockSize, size - i * blockSize));
      allocated[i] = data !== null && (differencing || !isAllZero(data)) ? 1 : 0;
    }
  }

  const batSize = vhdBatSize(blocks);
  const bitmapSize = vhdBitmapSize(blockSize);
  const bat = Buffer.alloc(batSize, 0xff);
  let next = VHD_TABLE_OFFSET + batSize;
  for (let i = 0; i < blocks; i++) {
    if (allocated[i]) {
      bat.writeUInt32BE(next / SECTOR_SIZE, i * 4);
      next += bitmapSize + blockSize;
    }
  }

  let spare: Buffer = zeroSlice(VHD_TABLE_OFFSET - VHD_HEADER_OFFSET - VHD_HEADER_SIZE);
  let parent: EncodeHeaderInput['parent'];
  if (options.parent) {
    const name = options.parent.name ?? '';
    const locators: NonNullable<EncodeHeaderInput['parent']>['locators'] = [];
    if (name !== '') {
      const uri = Buffer.from(`file://${name}`, 'utf8');
      if (uri.length > spare.length) throw new RangeError(`vhdStream: parent name too long for the locator sector: ${name}`);
      spare = Buffer.alloc(spare.length);
      uri.copy(spare);
      locators.push({ code: 'MacX', dataSpace: SECTOR_SIZE, dataLength: uri.length, dataOffset: VHD_HEADER_OFFSET + VHD_HEADER_SIZE });
    }
    parent = { uuid: uuidBytes(options.parent.uuid), timestamp: options.parent.timestamp ? vhdTimestamp(options.parent.timestamp) : 0, name, locators };
  }

  const footer = encodeVhdFooter({
    currentSize: size,
    diskType: differencing ? VhdDiskType.differencing : VhdDiskType.dynamic,
    uuid,
    timestamp: options.timestamp ? vhdTimestamp(options.timestamp) : 0,
    creatorApp: options.creatorApp ?? 'caml',
    creatorVersion: options.creatorVersion ?? 1,
    creatorHostOs: options.creatorHostOs ?? 0,
  });
  yield footer;
  yield encodeVhdHeader({ maxTableEntries: blocks, blockSize, ...(parent ? { parent } : {}) });
  yield spare;
  yield bat;

  const bitmap = Buffer.alloc(bitmapSize, 0xff);
  for (let i = 0; i < blocks; i++) {
    if (!allocated[i]) continue;
    const offset = i * blockSize;
    const length = Math.min(blockSize, size - offset);
    const data = await source.read(offset, length);
    if (data !== null && data.length !== length) {
      throw new RangeError(`vhdStream: source returned ${data.length} bytes for [${offset}, +${length})`);
    }
    yield bitmap;
    yield data ?? zeroSlice(length);
    if (length < blockSize) yield zeroSlice(blockSize - length);
  }
  yield footer;
}

/** Codes of `VhdError`. */
export const VhdErrorCode = {
  BAD_FOOTER_COOKIE: 'VHD_BAD_FOOTER_COOKIE',
  BAD_FOOTER_CHECKSUM: 'VHD_BAD_FOOTER_CHECKSUM',
  BAD_FOOTER: 'VHD_BAD_FOOTER',
  UNSUPPORTED_DISK_TYPE: 'VHD_UNSUPPORTED_DISK_TYPE',
  BAD_HEADER_COOKIE: 'VHD_BAD_HEADER_COOKIE',
  BAD_HEADER_CHECKSUM: 'VHD_BAD_HEADER_CHECKSUM',
  BAD_HEADER: 'VHD_BAD_HEADER',
  BAD_BLOCK_SIZE: 'VHD_BAD_BLOCK_SIZE',
  BAD_TABLE_OFFSET: 'VHD_BAD_TABLE_OFFSET',
  BAT_TOO_SMALL: 'VHD_BAT_TOO_SMALL',
  BAT_ENTRY_OUT_OF_RANGE: 'VHD_BAT_ENTRY_OUT_OF_RANGE',
  BAT_NOT_ASCENDING: 'VHD_BAT_NOT_ASCENDING',
  TRUNCATED: 'VHD_TRUNCATED',
  FOOTER_MISMATCH: 'VHD_FOOTER_MISMATCH',
  DATA_AFTER_FOOTER: 'VHD_DATA_AFTER_FOOTER',
  SIZE_MISMATCH: 'VHD_SIZE_MISMATCH',
} as const;
export type VhdErrorCode = (typeof VhdErrorCode)[keyof typeof VhdErrorCode];

/**
 * An invalid VHD. `offset` is the byte offset in the file of the faulty structure or field;
 * `block` the block index when a block is concerned.
 *
 * @example
 *   // VhdError: VHD_BAD_HEADER_CHECKSUM: dynamic header at byte 512: checksum stored 0xffffe1b2, computed 0xffffe1b3
 */
export class VhdError extends PermanentError {
  override name = 'VhdError';
  readonly offset: number;
  readonly block: number | undefined;

  constructor(code: VhdErrorCode, message: string, offset: number, block?: number) {
    super(code, message, { offset, ...(block === undefined ? {} : { block }) });
    this.offset = offset;
    this.block = block;
  }
}

const FOOTER_FIELDS: [number, string][] = [
  [0, 'cookie'],
  [8, 'features'],
  [12, 'version'],
  [16, 'data offset'],
  [24, 'timestamp'],
  [28, 'creator application'],
  [32, 'creator version'],
  [36, 'creator host OS'],
  [40, 'original size'],
  [48, 'current size'],
  [56, 'geometry'],
  [60, 'disk type'],
  [64, 'checksum'],
  [68, 'uuid'],
  [84, 'saved state'],
  [85, 'reserved'],
];

function footerField(at: number): string {
  let name = 'cookie';
  for (const [start, field] of FOOTER_FIELDS) if (at >= start) name = field;
  return name;
}

function hex32(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

/** Decodes and checks a footer found at file offset `offset`. */
export function decodeVhdFooter(buf: Buffer, offset: number): VhdFooter {
  const cookie = buf.toString('latin1', 0, 8);
  if (cookie !== FOOTER_COOKIE) {
    throw new VhdError(VhdErrorCode.BAD_FOOTER_COOKIE, `VHD footer at byte ${offset}: cookie is ${JSON.stringify(cookie)}, expected "conectix"`, offset);
  }
  const stored = buf.readUInt32BE(64);
  const computed = vhdChecksum(buf, 64);
  if (stored !== computed) {
    throw new VhdError(VhdErrorCode.BAD_FOOTER_CHECKSUM, `VHD footer at byte ${offset}: checksum stored ${hex32(stored)}, computed ${hex32(computed)}`, offset + 64);
  }
  const version = buf.readUInt32BE(12);
  if (version !== VERSION) {
    throw new VhdError(VhdErrorCode.BAD_FOOTER, `VHD footer at byte ${offset}: version ${hex32(version)}, expected 0x00010000`, offset + 12);
  }
  const currentSize = buf.readBigUInt64BE(48);
  const originalSize = buf.readBigUInt64BE(40);
  if (currentSize > BigInt(Number.MAX_SAFE_INTEGER) || originalSize > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VhdError(VhdErrorCode.BAD_FOOTER, `VHD footer at byte ${offset}: size ${currentSize} is not plausible`, offset + 48);
  }
  return {
    features: buf.readUInt32BE(8),
    version,
    dataOffset: buf.readBigUInt64BE(16),
    timestamp: buf.readUInt32BE(24),
    creatorApp: buf.toString('latin1', 28, 32),
    creatorVersion: buf.readUInt32BE(32),
    creatorHostOs: buf.readUInt32BE(36),
    originalSize: Number(originalSize),
    currentSize: Number(currentSize),
    geometry: { cylinders: buf.readUInt16BE(56), heads: buf.readUInt8(58), sectorsPerTrack: buf.readUInt8(59) },
    diskType: buf.readUInt32BE(60),
    checksum: stored,
    uuid: formatUuid(buf.subarray(68, 84)),
    savedState: buf[84] !== 0,
  };
}

/** Decodes and checks a dynamic header found at file offset `offset`. */
export function decodeVhdHeader(buf: Buffer, offset: number): VhdHeader {
  const cookie = buf.toString('latin1', 0, 8);
  if (cookie !== HEADER_COOKIE) {
    throw new VhdError(VhdErrorCode.BAD_HEADER_COOKIE, `VHD dynamic header at byte ${offset}: cookie is ${JSON.stringify(cookie)}, expected "cxsparse"`, offset);
  }
  const stored = buf.readUInt32BE(36);
  const computed = vhdChecksum(buf, 36);
  if (stored !== computed) {
    throw new VhdError(VhdErrorCode.BAD_HEADER_CHECKSUM, `VHD dynamic header at byte ${offset}: checksum stored ${hex32(stored)}, computed ${hex32(computed)}`, offset + 36);
  }
  const version = buf.readUInt32BE(24);
  if (version !== VERSION) {
    throw new VhdError(VhdErrorCode.BAD_HEADER, `VHD dynamic header at byte ${offset}: version ${hex32(version)}, expected 0x00010000`, offset + 24);
  }
  const dataOffset = buf.readBigUInt64BE(8);
  if (dataOffset !== 0xffffffffffffffffn) {
    throw new VhdError(VhdErrorCode.BAD_HEADER, `VHD dynamic header at byte ${offset}: data offset is 0x${dataOffset.toString(16)}, expected all ones`, offset + 8);
  }
  const tableOffset = buf.readBigUInt64BE(16);
  if (tableOffset > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VhdError(VhdErrorCode.BAD_TABLE_OFFSET, `VHD dynamic header at byte ${offset}: table offset ${tableOffset} is not plausible`, offset + 16);
  }
  const nameBytes = Buffer.from(buf.subarray(64, 576));
  let nameEnd = 0;
  while (nameEnd < 512 && (nameBytes[nameEnd] !== 0 || nameBytes[nameEnd + 1] !== 0)) nameEnd += 2;
  const parentName = Buffer.from(nameBytes.subarray(0, nameEnd)).swap16().toString('utf16le');
  const parentLocators: VhdParentLocator[] = [];
  for (let i = 0; i < 8; i++) {
    const at = 576 + i * 24;
    const code = buf.readUInt32BE(at);
    if (code === 0) continue;
    parentLocators.push({
      code: buf.toString('latin1', at, at + 4),
      dataSpace: buf.readUInt32BE(at + 4),
      dataLength: buf.readUInt32BE(at + 8),
      dataOffset: Number(buf.readBigUInt64BE(at + 16)),
    });
  }
  return {
    dataOffset,
    tableOffset: Number(tableOffset),
    version,
    maxTableEntries: buf.readUInt32BE(28),
    blockSize: buf.readUInt32BE(32),
    checksum: stored,
    parentUuid: formatUuid(buf.subarray(40, 56)),
    parentTimestamp: buf.readUInt32BE(56),
    parentName,
    parentLocators,
  };
}

/** What `readVhd` yields. */
export type VhdEvent =
  | { type: 'metadata'; footer: VhdFooter; header: VhdHeader; allocatedBlocks: number }
  | {
      type: 'block';
      index: number;
      /** Disk byte offset of the block. */
      offset: number;
      /** Byte offset of the block's bitmap in the file. */
      fileOffset: number;
      bitmap: Buffer;
      /** The full block (blockSize bytes, even past the disk's end). */
      data: Buffer;
    }
  | { type: 'end'; bytes: number };

export interface ReadVhdOptions {
  /** Refuse differencing VHDs (code VHD_UNSUPPORTED_DISK_TYPE). Default false. */
  dynamicOnly?: boolean;
  /** Expected current size; checked when given. */
  size?: number;
  /** Require blocks in BAT index order, as XAPI streams them. Default true. */
  requireIndexOrder?: boolean;
  /** Largest BAT accepted; default 64 MiB (a 32 TiB disk). */
  maxBatSize?: number;
}

/**
 * Reads a dynamic or differencing VHD front to back (as streamed, footer copy first),
 * validating it: footer and header cookies and checksums, disk type, offsets, block size, BAT
 * entries (inside the data area, ascending, not overlapping, within the disk size), the final
 * footer equal to the copy at byte 0, nothing after it. Holds one block in memory.
 *
 * @example
 *   for await (const ev of readVhd(fs.createReadStream(file))) if (ev.type === 'block') …
 */
export async function* readVhd(input: AsyncIterable<Uint8Array | string>, options: ReadVhdOptions = {}): AsyncGenerator<VhdEvent, void, undefined> {
  const reader = new ByteReader(input);
  const requireIndexOrder = options.requireIndexOrder ?? true;
  const maxBatSize = options.maxBatSize ?? 64 << 20;
  const readExactly = async (n: number, what: string): Promise<Buffer> => {
    const at = reader.position;
    const buf = await reader.read(n);
    if (buf.length < n) {
      throw new VhdError(VhdErrorCode.TRUNCATED, `VHD truncated: ${what} expected at bytes ${at}–${at + n}, the file ends at byte ${at + buf.length}`, at + buf.length);
    }
    return buf;
  };
  try {
    const footerCopy = Buffer.from(await readExactly(VHD_FOOTER_SIZE, 'the footer copy'));
    const footer = decodeVhdFooter(footerCopy, 0);
    if (footer.diskType === VhdDiskType.fixed) {
      throw new VhdError(VhdErrorCode.UNSUPPORTED_DISK_TYPE, 'fixed VHD: a fixed disk has no footer copy at byte 0 nor a dynamic header; only dynamic and differencing VHDs are read', 60);
    }
    if (footer.diskType !== VhdDiskType.dynamic && footer.diskType !== VhdDiskType.differencing) {
      throw new VhdError(VhdErrorCode.UNSUPPORTED_DISK_TYPE, `VHD footer: unknown disk type ${footer.diskType}`, 60);
    }
    if (footer.diskType === VhdDiskType.differencing && options.dynamicOnly) {
      throw new VhdError(VhdErrorCode.UNSUPPORTED_DISK_TYPE, 'differencing VHD not supported here: a dynamic VHD is expected', 60);
    }
    if (options.size !== undefined && footer.currentSize !== options.size) {
      throw new VhdError(VhdErrorCode.SIZE_MISMATCH, `VHD current size is ${footer.currentSize}, expected ${options.size}`, 48);
    }
    if (footer.currentSize % SECTOR_SIZE !== 0) {
      throw new VhdError(VhdErrorCode.BAD_FOOTER, `VHD current size ${footer.currentSize} is not a multiple of 512`, 48);
    }
    const headerOffset = footer.dataOffset;
    if (headerOffset < BigInt(VHD_FOOTER_SIZE) || headerOffset % BigInt(SECTOR_SIZE) !== 0n || headerOffset > 1n << 32n) {
      throw new VhdError(VhdErrorCode.BAD_FOOTER, `VHD footer: data offset ${headerOffset} does not point at a sector after the footer copy`, 16);
    }
    await reader.skip(Number(headerOffset) - VHD_FOOTER_SIZE);
    const headerAt = Number(headerOffset);
    const header = decodeVhdHeader(Buffer.from(await readExactly(VHD_HEADER_SIZE, 'the dynamic header')), headerAt);
    const { blockSize, maxTableEntries, tableOffset } = header;
    if (blockSize < SECTOR_SIZE || (blockSize & (blockSize - 1)) !== 0) {
      throw new VhdError(VhdErrorCode.BAD_BLOCK_SIZE, `VHD dynamic header: block size ${blockSize} is not a power of two of at least 512`, headerAt + 32);
    }
    const neededEntries = Math.ceil(footer.currentSize / blockSize);
    if (maxTableEntries < neededEntries) {
      throw new VhdError(
        VhdErrorCode.BAT_TOO_SMALL,
        `VHD dynamic header: ${maxTableEntries} BAT entries cannot cover ${footer.currentSize} bytes in ${blockSize}-byte blocks (${neededEntries} needed)`,
        headerAt + 28,
      );
    }
    const batSize = vhdBatSize(maxTableEntries);
    if (batSize > maxBatSize) {
      throw new VhdError(VhdErrorCode.BAT_TOO_SMALL, `VHD dynamic header: a BAT of ${maxTableEntries} entries is larger than the ${maxBatSize} bytes allowed`, headerAt + 28);
    }
    if (tableOffset % SECTOR_SIZE !== 0 || tableOffset < headerAt + VHD_HEADER_SIZE) {
      throw new VhdError(VhdErrorCode.BAD_TABLE_OFFSET, `VHD dynamic header: table offset ${tableOffset} is not a sector after the header (ends at ${headerAt + VHD_HEADER_SIZE})`, headerAt + 16);
    }
    // Between the header and the BAT: parent locator data, if any.
    const gapStart = reader.position;
    const gap = tableOffset - gapStart;
    if (gap <= 1 << 20) {
      const bytes = await readExactly(gap, 'the sectors before the BAT');
      for (const locator of header.parentLocators) {
        const from = locator.dataOffset - gapStart;
        if (from >= 0 && from + locator.dataLength <= bytes.length) locator.data = Buffer.from(bytes.subarray(from, from + locator.dataLength));
      }
    } else if ((await reader.skip(gap)) < gap) {
      throw new VhdError(VhdErrorCode.TRUNCATED, `VHD truncated before the BAT at byte ${tableOffset}`, reader.position);
    }
    const bat = Buffer.from(await readExactly(batSize, 'the BAT'));
    const dataStart = tableOffset + batSize;
    const bitmapSize = vhdBitmapSize(blockSize);
    const blockBytes = bitmapSize + blockSize;
    const used: { index: number; at: number }[] = [];
    for (let i = 0; i < maxTableEntries; i++) {
      const sector = bat.readUInt32BE(i * 4);
      if (sector === UNUSED) continue;
      const at = sector * SECTOR_SIZE;
      const entryAt = tableOffset + i * 4;
      if (i >= neededEntries) {
        throw new VhdError(VhdErrorCode.BAT_ENTRY_OUT_OF_RANGE, `VHD BAT entry ${i} (byte ${entryAt}) allocates a block past the disk's size ${footer.currentSize}`, entryAt, i);
      }
      if (at < dataStart) {
        throw new VhdError(VhdErrorCode.BAT_ENTRY_OUT_OF_RANGE, `VHD BAT entry ${i} (byte ${entryAt}) points at byte ${at}, inside the metadata (data starts at byte ${dataStart})`, entryAt, i);
      }
      used.push({ index: i, at });
    }
    if (requireIndexOrder) {
      for (let k = 1; k < used.length; k++) {
        if (used[k]!.at <= used[k - 1]!.at) {
          const { index, at } = used[k]!;
          throw new VhdError(
            VhdErrorCode.BAT_NOT_ASCENDING,
            `VHD BAT entry ${index} (byte ${tableOffset + index * 4}) points at byte ${at}, not after block ${used[k - 1]!.index} at byte ${used[k - 1]!.at}: blocks must be stored in index order`,
            tableOffset + index * 4,
            index,
          );
        }
      }
    }
    used.sort((a, b) => a.at - b.at);
    for (let k = 1; k < used.length; k++) {
      if (used[k]!.at < used[k - 1]!.at + blockBytes) {
        const { index, at } = used[k]!;
        throw new VhdError(
          VhdErrorCode.BAT_ENTRY_OUT_OF_RANGE,
          `VHD BAT entry ${index} (byte ${tableOffset + index * 4}) points at byte ${at}, overlapping block ${used[k - 1]!.index} at byte ${used[k - 1]!.at}`,
          tableOffset + index * 4,
          index,
        );
      }
    }
    yield { type: 'metadata', footer, header, allocatedBlocks: used.length };

    for (const { index, at } of used) {
      const skip = at - reader.position;
      if ((await reader.skip(skip)) < skip) {
        throw new VhdError(
          VhdErrorCode.TRUNCATED,
          `VHD truncated: BAT entry ${index} points at byte ${at}, past the end of the file (byte ${reader.position})`,
          reader.position,
          index,
        );
      }
      const bitmap = await reader.read(bitmapSize);
      const data = bitmap.length === bitmapSize ? await reader.read(blockSize) : Buffer.alloc(0);
      if (bitmap.length < bitmapSize || data.length < blockSize) {
        throw new VhdError(
          VhdErrorCode.TRUNCATED,
          `VHD truncated inside block ${index} (bytes ${at}–${at + blockBytes}): the file ends at byte ${reader.position}`,
          reader.position,
          index,
        );
      }
      yield { type: 'block', index, offset: index * blockSize, fileOffset: at, bitmap, data };
    }

    const footerAt = reader.position;
    const trailer = await reader.read(VHD_FOOTER_SIZE);
    if (trailer.length < VHD_FOOTER_SIZE) {
      throw new VhdError(VhdErrorCode.TRUNCATED, `VHD truncated: the final footer is missing at byte ${footerAt} (${trailer.length} of 512 bytes)`, footerAt + trailer.length);
    }
    if (!trailer.equals(footerCopy)) {
      let at = 0;
      while (trailer[at] === footerCopy[at]) at += 1;
      let detail = '';
      try {
        decodeVhdFooter(trailer, footerAt);
      } catch (error) {
        if (error instanceof VhdError) detail = ` (${error.message})`;
      }
      throw new VhdError(
        VhdErrorCode.FOOTER_MISMATCH,
        `VHD final footer at byte ${footerAt} differs from the copy at byte 0 first at byte ${footerAt + at} (${footerField(at)})${detail}`,
        footerAt + at,
      );
    }
    if (!(await reader.atEnd())) {
      throw new VhdError(VhdErrorCode.DATA_AFTER_FOOTER, `VHD has data after the final footer, from byte ${reader.position}`, reader.position);
    }
    yield { type: 'end', bytes: reader.position };
  } finally {
    await reader.close();
  }
}

/** Summary of a verified VHD. */
export interface VhdReport {
  diskType: 'dynamic' | 'differencing';
  /** Current (virtual) size in bytes. */
  size: number;
  uuid: string;
  /** Footer timestamp as a Date. */
  timestamp: Date;
  creatorApp: string;
  blockSize: number;
  maxTableEntries: number;
  allocatedBlocks: number;
  /** Bytes of the file. */
  fileBytes: number;
  footer: VhdFooter;
  header: VhdHeader;
  parent?: { uuid: string; timestamp: Date; name: string; locators: VhdParentLocator[] };
}

/**
 * Reads and validates a whole VHD (see `readVhd`); returns a summary or throws `VhdError`.
 *
 * @example
 *   const { size, allocatedBlocks } = await verifyVhd(fs.createReadStream(file), { size: 10 << 30 });
 */
export async function verifyVhd(input: AsyncIterable<Uint8Array | string>, options: ReadVhdOptions = {}): Promise<VhdReport> {
  let report: VhdReport | undefined;
  for await (const event of readVhd(input, options)) {
    if (event.type === 'metadata') {
      const { footer, header } = event;
      const differencing = footer.diskType === VhdDiskType.differencing;
      report = {
        diskType: differencing ? 'differencing' : 'dynamic',
        size: footer.currentSize,
        uuid: footer.uuid,
        timestamp: new Date((footer.timestamp + VHD_EPOCH) * 1000),
        creatorApp: footer.creatorApp,
        blockSize: header.blockSize,
        maxTableEntries: header.maxTableEntries,
        allocatedBlocks: event.allocatedBlocks,
        fileBytes: 0,
        footer,
        header,
        ...(differencing
          ? { parent: { uuid: header.parentUuid, timestamp: new Date((header.parentTimestamp + VHD_EPOCH) * 1000), name: header.parentName, locators: header.parentLocators } }
          : {}),
      };
    } else if (event.type === 'end' && report) {
      report.fileBytes = event.bytes;
    }
  }
  if (!report) throw new Error('readVhd ended without metadata');
  return report;
}

/** A piece of disk to write during a restore. */
export interface VhdDiskWrite {
  offset: number;
  data: Buffer;
}

/**
 * The data of a VHD as writes at disk offsets: each run of sectors whose bitmap bit is set,
 * clipped to the disk's size (whole blocks for XAPI's all-ones bitmaps). Unallocated blocks
 * and clear sectors are not yielded: write into a zero-filled or sparse target (for a
 * differencing VHD: into a copy of its parent). The whole file is validated as it is read,
 * so a throw at any point means a failed restore.
 *
 * @example
 *   for await (const { offset, data } of vhdDiskWrites(stream)) await fh.write(data, 0, data.length, offset);
 */
export async function* vhdDiskWrites(input: AsyncIterable<Uint8Array | string>, options: ReadVhdOptions = {}): AsyncGenerator<VhdDiskWrite, void, undefined> {
  let size = 0;
  for await (const event of readVhd(input, options)) {
    if (event.type === 'metadata') size = event.footer.currentSize;
    if (event.type !== 'block') continue;
    const sectors = Math.min(event.data.length, size - event.offset) / SECTOR_SIZE;
    const bit = (s: number): boolean => (event.bitmap[s >> 3]! & (0x80 >> (s & 7))) !== 0;
    let s = 0;
    while (s < sectors) {
      while (s < sectors && !bit(s)) s += 1;
      const start = s;
      while (s < sectors && bit(s)) s += 1;
      if (s > start) yield { offset: event.offset + start * SECTOR_SIZE, data: event.data.subarray(start * SECTOR_SIZE, s * SECTOR_SIZE) };
    }
  }
}
