/**
 * XVA (XAPI's VM export): writer, reader/validator and disk reassembly.
 *
 * Format facts relied on (xapi.md §5; XAPI's export.ml, stream_vdi.ml and ocaml-tar):
 * - A tar archive. The first entry is `ova.xml` (XML-RPC metadata). XAPI writes its headers
 *   with ocaml-tar's default V7 level: see `TarFormat.xapi` in tar.ts.
 * - Then each VDI, in lexicographic (byte) order of its `Ref:N` prefix, as chunks
 *   `Ref:N/%08d` of 1 MiB; the last chunk holds the remainder and may be shorter. Each chunk
 *   entry is followed by `<chunk>.xxhash` (`%016LX` of XXH64 seed 0: 16 uppercase hex digits)
 *   or the legacy `<chunk>.checksum` (SHA-1, 40 lowercase hex digits).
 * - The first and the last chunk are always written; chunks whose bytes are all zero are
 *   skipped (their numbers are simply missing). A disk of size 0 has no chunk at all.
 * - Keepalive: when nothing was written for 5 s during a zero run, XAPI writes a zero-length
 *   chunk under the next number and then continues *at the same disk offset* with the number
 *   after it. Chunk numbers are therefore not always offset / 1 MiB; a reader computes each
 *   chunk's offset as `previousEnd + (number − previousNumber − 1) × firstChunkLength`.
 *   (XAPI's importer takes `firstChunkLength` from the first chunk of the whole archive; this
 *   reader takes it per disk, which only differs for a first disk smaller than 1 MiB.)
 * - The archive ends with two zero blocks, with no record padding.
 * - On VHD-backed SRs current XAPI writes every chunk that overlaps an allocated VHD block,
 *   zeros included, and no keepalives; readers must accept all-zero chunks anywhere.
 *
 * The reader also checks ova.xml (decoded with xmlrpc.ts): every disk in the archive must be
 * one of its VDI objects and end exactly at that VDI's `virtual_size`.
 *
 * Not confirmed against a live host: whether current XAPI builds use ocaml-tar 2.x (mode
 * 0o400, as `Tar_helpers` using `Tar.HeaderWriter` suggests) or an older one (mode 0), and
 * whether any build writes ustar magic. Readers accept all of these.
 *
 * @example
 *   xvaStream({ ovaXml, disks: [{ ref: 'Ref:4', source }] }).pipe(res);
 *   const report = await verifyXva(fs.createReadStream('vm.xva'));
 *   for await (const w of xvaDiskWrites(fs.createReadStream('vm.xva'))) await fh[w.ref].write(w.data, 0, w.data.length, w.offset);
 */
import { createHash, type Hash } from 'node:crypto';
import { Readable } from 'node:stream';
import { PermanentError } from '../errors.js';
import { XVA_CHUNK_SIZE, type BlockSource } from './block-source.js';
import { drivePush, encodeTarHeader, tarPaddingLength, TarError, TarFormat, TarScanner, TAR_BLOCK_SIZE, TAR_END, type ReadTarOptions, type TarEntryStart } from './tar.js';
import { decodeValue, type XmlRpcValue } from './xmlrpc.js';
import { loadXxh64, type Xxh64, type Xxh64State } from './xxh64.js';
import { isAllZero, zeroSlice } from './zero.js';

/** Checksum entries an XVA may carry. */
export const XvaChecksum = { xxhash: 'xxhash', sha1: 'sha1' } as const;
export type XvaChecksum = (typeof XvaChecksum)[keyof typeof XvaChecksum];

const EXTENSION: Record<XvaChecksum, string> = { xxhash: '.xxhash', sha1: '.checksum' };

/** One disk to stream: `ref` is the `Ref:N` the ova.xml gives its VDI. */
export interface XvaDisk {
  ref: string;
  source: BlockSource;
}

export interface XvaStreamOptions {
  ovaXml: string;
  disks: XvaDisk[];
  /** Default `xxhash` (XAPI today); `sha1` writes the legacy `.checksum` entries. */
  checksum?: XvaChecksum;
  /** Default 1 MiB, as XAPI. */
  chunkSize?: number;
  /** Default `xapi` (V7 headers as XAPI writes them); `ustar` for POSIX headers. */
  tarFormat?: TarFormat;
  /**
   * Write XAPI's zero-length keepalive chunk when this many ms passed since the last entry
   * (XAPI: 5000). Default: never. A keepalive is never directly followed by another.
   */
  keepaliveMs?: number;
  /**
   * Write chunks whose source returned a Buffer of zeros (only `null` ranges are skipped), as
   * XAPI does on VHD-backed SRs for allocated blocks. Default false: zero Buffers are skipped.
   */
  writeZeroBuffers?: boolean;
  /** Clock for `keepaliveMs` (tests); default `performance.now`. */
  clock?: () => number;
  /** Readable high-water mark in bytes; default 1 MiB. */
  highWaterMark?: number;
}

function compareRefs(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function chunkName(ref: string, index: number): string {
  return `${ref}/${String(index).padStart(8, '0')}`;
}

/**
 * The XVA as a pull-based Readable: nothing is read from the sources until the consumer
 * reads, and at most about one chunk is held. See the module comment for the layout.
 *
 * @example
 *   await pipeline(xvaStream({ ovaXml, disks: [{ ref: 'Ref:7', source }] }), fs.createWriteStream('vm.xva'));
 */
export function xvaStream(options: XvaStreamOptions): Readable {
  return Readable.from(xvaParts(options), { objectMode: false, highWaterMark: options.highWaterMark ?? XVA_CHUNK_SIZE });
}

/**
 * The buffers of an XVA, in order (what `xvaStream` emits). Buffers may be views of shared
 * zero memory: do not mutate them.
 */
export async function* xvaParts(options: XvaStreamOptions): AsyncGenerator<Buffer, void, undefined> {
  const checksum = options.checksum ?? XvaChecksum.xxhash;
  const chunkSize = options.chunkSize ?? XVA_CHUNK_SIZE;
  const format = options.tarFormat ?? TarFormat.xapi;
  const clock = options.clock ?? (() => performance.now());
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) throw new RangeError(`xvaStream: chunkSize must be a positive integer, got ${chunkSize}`);
  const seen = new Set<string>();
  for (const disk of options.disks) {
    if (disk.ref === '' || disk.ref.includes('/') || disk.ref === 'ova.xml') throw new RangeError(`xvaStream: invalid disk ref ${JSON.stringify(disk.ref)}`);
    if (seen.has(disk.ref)) throw new RangeError(`xvaStream: disk ref ${disk.ref} given twice`);
    seen.add(disk.ref);
  }
  const xxh = checksum === XvaChecksum.xxhash ? await loadXxh64() : undefined;
  const digest = (data: Buffer): string => (xxh ? xxh.hash(data) : createHash('sha1').update(data).digest('hex'));

  const xml = Buffer.from(options.ovaXml, 'utf8');
  yield encodeTarHeader({ name: 'ova.xml', size: xml.length, format });
  if (xml.length > 0) yield xml;
  if (tarPaddingLength(xml.length) > 0) yield zeroSlice(tarPaddingLength(xml.length));

  // One entry's trailer: data padding, checksum header and checksum block, in one buffer.
  const trailer = (name: string, data: Buffer): Buffer => {
    const pad = tarPaddingLength(data.length);
    const sum = digest(data);
    const out = Buffer.alloc(pad + 2 * TAR_BLOCK_SIZE);
    encodeTarHeader({ name: name + EXTENSION[checksum], size: sum.length, format }).copy(out, pad);
    out.write(sum, pad + TAR_BLOCK_SIZE, 'latin1');
    return out;
  };

  const disks = [...options.disks].sort((a, b) => compareRefs(a.ref, b.ref));
  for (const { ref, source } of disks) {
    const size = source.size;
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`xvaStream: disk ${ref} has invalid size ${size}`);
    const count = Math.ceil(size / chunkSize);
    let number = 0;
    let lastWrite = clock();
    let keptAlive = false;
    for (let i = 0; i < count; i++) {
      const offset = i * chunkSize;
      const length = Math.min(chunkSize, size - offset);
      const firstOrLast = i === 0 || i === count - 1;
      if (options.keepaliveMs !== undefined && !firstOrLast && !keptAlive && clock() - lastWrite > options.keepaliveMs) {
        const name = chunkName(ref, number);
        const empty = Buffer.alloc(0);
        yield encodeTarHeader({ name, size: 0, format });
        yield trailer(name, empty);
        lastWrite = clock();
        number += 1;
        keptAlive = true;
        i -= 1; // the same offset goes out under the next number
        continue;
      }
      keptAlive = false;
      let data = await source.read(offset, length);
      if (data !== null && data.length !== length) {
        throw new RangeError(`xvaStream: disk ${ref} source returned ${data.length} bytes for [${offset}, +${length})`);
      }
      if (!firstOrLast && (data === null || (!options.writeZeroBuffers && isAllZero(data)))) {
        number += 1;
        continue;
      }
      data ??= zeroSlice(length);
      const name = chunkName(ref, number);
      yield encodeTarHeader({ name, size: length, format });
      yield data;
      yield trailer(name, data);
      lastWrite = clock();
      number += 1;
    }
  }
  yield TAR_END;
}

/**
 * The byte length of `xvaStream(options)` before streaming it, for an upload that needs its
 * Content-Length (XAPI's `/import` refuses a chunked body), from each disk's allocation alone:
 * `allocated(offset, length)` must be false exactly where the source's `read` returns null.
 * Only for streams written with `writeZeroBuffers` and without keepalives (a zero Buffer is
 * then written like any data, so the length does not depend on the bytes).
 *
 * @example
 *   const length = await xvaSize({ ovaXml, disks: [{ ref: 'Ref:4', size, allocated }] });
 *   await xapi.upload('/import', query, () => xvaStream({ ovaXml, disks, writeZeroBuffers: true }), length);
 */
export async function xvaSize(options: {
  ovaXml: string;
  disks: { ref: string; size: number; allocated(offset: number, length: number): boolean | Promise<boolean> }[];
  checksum?: XvaChecksum;
  chunkSize?: number;
}): Promise<number> {
  const chunkSize = options.chunkSize ?? XVA_CHUNK_SIZE;
  const sumLength = (options.checksum ?? XvaChecksum.xxhash) === XvaChecksum.xxhash ? 16 : 40;
  const entry = (size: number) => TAR_BLOCK_SIZE + size + tarPaddingLength(size);
  let total = entry(Buffer.byteLength(options.ovaXml, 'utf8'));
  for (const disk of options.disks) {
    const count = Math.ceil(disk.size / chunkSize);
    for (let i = 0; i < count; i++) {
      const offset = i * chunkSize;
      const length = Math.min(chunkSize, disk.size - offset);
      if (i === 0 || i === count - 1 || (await disk.allocated(offset, length))) total += entry(length) + entry(sumLength);
    }
  }
  return total + TAR_END.length;
}

/** Codes of `XvaError` (tar-level failures keep their `TAR_*` code). */
export const XvaErrorCode = {
  NO_OVA: 'XVA_NO_OVA',
  BAD_OVA: 'XVA_BAD_OVA',
  OVA_NOT_FIRST: 'XVA_OVA_NOT_FIRST',
  UNEXPECTED_ENTRY: 'XVA_UNEXPECTED_ENTRY',
  ORPHAN_CHECKSUM: 'XVA_ORPHAN_CHECKSUM',
  MISSING_CHECKSUM: 'XVA_MISSING_CHECKSUM',
  BAD_CHECKSUM: 'XVA_BAD_CHECKSUM',
  CHUNK_OUT_OF_ORDER: 'XVA_CHUNK_OUT_OF_ORDER',
  DISK_OUT_OF_ORDER: 'XVA_DISK_OUT_OF_ORDER',
  BAD_CHUNK_SIZE: 'XVA_BAD_CHUNK_SIZE',
  SIZE_MISMATCH: 'XVA_SIZE_MISMATCH',
  MISSING_DISK: 'XVA_MISSING_DISK',
  UNEXPECTED_DISK: 'XVA_UNEXPECTED_DISK',
} as const;
export type XvaErrorCode = (typeof XvaErrorCode)[keyof typeof XvaErrorCode];

/**
 * An invalid XVA. `offset` is the byte offset in the file; `entry` the tar entry concerned;
 * `ref`/`index` the disk and chunk number when the problem is in a chunk. Tar-level problems
 * (truncation, header checksum, missing end-of-archive, data after it) keep the `TAR_*` code
 * and carry the `TarError` as `cause`.
 *
 * @example
 *   // XvaError: XVA_BAD_CHECKSUM: chunk Ref:3/00000012 at byte 12590592: xxhash stored 1F…, computed 9A…
 */
export class XvaError extends PermanentError {
  override name = 'XvaError';
  readonly offset: number;
  readonly entry: string | undefined;
  readonly ref: string | undefined;
  readonly index: number | undefined;

  constructor(code: string, message: string, where: { offset: number; entry?: string; ref?: string; index?: number }, options?: { cause?: unknown }) {
    super(code, message, { ...where }, options);
    this.offset = where.offset;
    this.entry = where.entry;
    this.ref = where.ref;
    this.index = where.index;
  }
}

/** What `readXva` yields. */
export type XvaEvent =
  | { type: 'ova'; xml: string; offset: number }
  | {
      type: 'chunk';
      ref: string;
      /** The chunk number in its name. */
      index: number;
      /** Disk byte offset of `data`. */
      offset: number;
      /** Verified bytes; empty for a keepalive. */
      data: Buffer;
      name: string;
      /** Byte offset of the chunk's tar header in the file. */
      entryOffset: number;
      checksum: XvaChecksum;
    }
  | {
      type: 'end';
      /** Tar entries, ova.xml and checksum entries included. */
      entries: number;
      /** Byte offset of the end-of-archive marker. */
      bytes: number;
    };

export interface ReadXvaOptions {
  /**
   * Expected virtual size of each disk by ref. When given, every listed disk must be present
   * and end exactly at its size, and no other disk may appear.
   */
  diskSizes?: Record<string, number>;
  /**
   * Check ova.xml (default true): it must decode as an XML-RPC struct with `version` and an
   * `objects` array; every disk in the archive must be one of its VDI objects (by `id`) and end
   * exactly at that VDI's `virtual_size`. (VDIs without data in the archive, such as CDs, are
   * allowed.)
   */
  checkOva?: boolean;
  /** What may follow the end-of-archive; default `zeros` (see `readTar`). */
  trailing?: ReadTarOptions['trailing'];
  /** Largest ova.xml accepted; default 256 MiB. */
  maxOvaSize?: number;
}

const CHUNK_NAME = /^([^/]+)\/(\d+)$/;
const CHECKSUM_NAME = /\.(xxhash|checksum)$/;

interface DiskState {
  ref: string;
  lastIndex: number;
  chunkLength: number | undefined;
  end: number;
  shortSeen: boolean;
}

/** An entry being read by `XvaChecker`. */
type Current =
  | { kind: 'ova'; data: Buffer; filled: number; offset: number }
  | { kind: 'chunk'; chunk: PendingChunk }
  | { kind: 'checksum'; chunk: PendingChunk; sum: XvaChecksum; data: Buffer; filled: number; where: { offset: number; entry: string } }
  | { kind: 'failed'; error: unknown };

interface PendingChunk {
  name: string;
  ref: string;
  index: number;
  /** Disk byte offset of the chunk. */
  start: number;
  size: number;
  entryOffset: number;
  xxh: Xxh64State | undefined;
  sha1: Hash | undefined;
  /** Kept only with `keepData`. */
  data: Buffer | undefined;
  filled: number;
  /** The digests, once the chunk's data is complete. */
  digests?: Partial<Record<XvaChecksum, string>>;
}

export interface XvaCheckerOptions extends ReadXvaOptions {
  /**
   * Keep each chunk's bytes for its `chunk` event (a restore needs them). Default false: a
   * chunk is hashed as it passes and only its digest is kept; `chunk` events then carry
   * empty `data`.
   */
  keepData?: boolean;
  /** Called with each event, in order (see `readXva`). */
  onEvent?: (event: XvaEvent) => void;
}

/**
 * Checks an XVA pushed to it piece by piece, synchronously (the rules of the module comment:
 * tar structure, ova.xml, chunk names, order and sizes, every chunk's checksum). Nothing is
 * kept across `push` calls but what must be: a tar header cut between two pieces, ova.xml,
 * a checksum entry (16 or 40 bytes) and the running hash of the chunk in progress — so a
 * producer can hand it views of a buffer it reuses. `push` and `end` throw `XvaError` on the
 * first problem (its byte offset and entry); `end` returns the summary.
 *
 * The one XVA check: `verifyXva` and `readXva` drive it from a stream, an export feeds it the
 * bytes it writes.
 *
 * Checksums: a chunk is hashed with the kind the archive's earlier chunks used (both kinds
 * until the first checksum entry, as the kind is only known after the data). XAPI uses one
 * kind per archive; one that switches mid-way fails with XVA_BAD_CHECKSUM unless `keepData`.
 *
 * @example
 *   const checker = await XvaChecker.create();
 *   for (const view of views) checker.push(view);
 *   const report = checker.end(); // or an XvaError: chunk Ref:3/00000012 at byte 12590592 …
 */
export class XvaChecker {
  private readonly scanner: TarScanner;
  private readonly sizes: Record<string, number> | undefined;
  private ovaSizes: Map<string, number> | undefined;
  private count = 0;
  private ovaSeen = false;
  private ovaXml = '';
  private disk: DiskState | undefined;
  private readonly done = new Set<string>();
  private readonly reports = new Map<string, XvaDiskReport>();
  private pending: PendingChunk | undefined;
  private current: Current | undefined;
  private endOffset = 0;
  private readonly kinds = new Set<XvaChecksum>();
  private finished = false;

  /** Loads the XXH64 module (once per process) and returns a checker. */
  static async create(options: XvaCheckerOptions = {}): Promise<XvaChecker> {
    return new XvaChecker(await loadXxh64(), options);
  }

  constructor(
    private readonly xxh: Xxh64,
    private readonly options: XvaCheckerOptions = {},
  ) {
    this.sizes = options.diskSizes;
    const maxEntrySize = Math.max(options.maxOvaSize ?? 256 << 20, XVA_CHUNK_SIZE);
    this.scanner = new TarScanner(
      {
        entry: (e) => this.entry(e),
        data: (view) => this.data(view),
        entryEnd: () => this.entryEnd(),
        archiveEnd: () => this.archiveEnd(),
      },
      { maxEntrySize, trailing: options.trailing ?? 'zeros' },
    );
  }

  /** Bytes pushed so far. */
  get position(): number {
    return this.scanner.position;
  }

  /** True once the end-of-archive marker was read. */
  get ended(): boolean {
    return this.finished;
  }

  /** The next bytes of the archive; `piece` may be reused by the caller once this returns. */
  push(piece: Buffer): void {
    try {
      this.scanner.push(piece);
    } catch (error) {
      throw asXvaError(error);
    }
  }

  /** The archive ends: throws unless it was complete and valid; returns its summary. */
  end(): XvaReport {
    try {
      this.scanner.end();
    } catch (error) {
      throw asXvaError(error);
    }
    if (!this.finished) this.archiveEnd();
    return { ovaXml: this.ovaXml, disks: [...this.reports.values()], entries: this.count };
  }

  private sizeOf(ref: string): number | undefined {
    return this.sizes ? this.sizes[ref] : this.ovaSizes?.get(ref);
  }

  private closeDisk(d: DiskState, offset: number): void {
    this.done.add(d.ref);
    const size = this.sizeOf(d.ref);
    if (size !== undefined && d.end !== size) {
      throw new XvaError(
        XvaErrorCode.SIZE_MISMATCH,
        `disk ${d.ref} ends at byte ${d.end} of its data but its size is ${size}${this.sizes ? '' : ' (virtual_size in ova.xml)'} (last chunk ${chunkName(d.ref, d.lastIndex)})`,
        { offset, ref: d.ref, index: d.lastIndex },
      );
    }
  }

  /**
   * An entry's header: its checks run now, but a problem is thrown once its data has passed,
   * so that an archive cut short inside the entry reports the truncation first.
   */
  private entry(entry: TarEntryStart): void {
    this.count += 1;
    this.endOffset = entry.dataOffset + entry.size + tarPaddingLength(entry.size);
    try {
      this.current = this.start(entry);
    } catch (error) {
      this.current = { kind: 'failed', error };
    }
  }

  private start(entry: TarEntryStart): Current {
    const where = { offset: entry.offset, entry: entry.name };
    if (entry.typeflag !== '0') {
      throw new XvaError(XvaErrorCode.UNEXPECTED_ENTRY, `tar entry ${entry.name} at byte ${entry.offset} is not a regular file (type ${JSON.stringify(entry.typeflag)})`, where);
    }
    if (!this.ovaSeen) {
      if (entry.name !== 'ova.xml') {
        throw new XvaError(XvaErrorCode.OVA_NOT_FIRST, `the first entry must be ova.xml, found ${entry.name} at byte ${entry.offset}`, where);
      }
      this.ovaSeen = true;
      return { kind: 'ova', data: Buffer.allocUnsafe(entry.size), filled: 0, offset: entry.offset };
    }
    if (this.pending) {
      const chunk = this.pending;
      this.pending = undefined;
      const sum = entry.name === chunk.name + EXTENSION.xxhash ? XvaChecksum.xxhash : entry.name === chunk.name + EXTENSION.sha1 ? XvaChecksum.sha1 : undefined;
      if (sum === undefined) {
        throw new XvaError(
          XvaErrorCode.MISSING_CHECKSUM,
          `chunk ${chunk.name} (byte ${chunk.entryOffset}) is not followed by its checksum entry (${chunk.name}.xxhash or .checksum); found ${entry.name} at byte ${entry.offset}`,
          { ...where, ref: chunk.ref, index: chunk.index },
        );
      }
      // A checksum is 16 or 40 characters; a larger entry cannot match and is not kept whole.
      return { kind: 'checksum', chunk, sum, data: Buffer.allocUnsafe(Math.min(entry.size, 64)), filled: 0, where };
    }
    if (entry.name === 'ova.xml') {
      throw new XvaError(XvaErrorCode.UNEXPECTED_ENTRY, `a second ova.xml at byte ${entry.offset}`, where);
    }
    const match = CHUNK_NAME.exec(entry.name);
    if (!match) {
      if (CHECKSUM_NAME.test(entry.name)) {
        throw new XvaError(XvaErrorCode.ORPHAN_CHECKSUM, `checksum entry ${entry.name} at byte ${entry.offset} does not follow its chunk`, where);
      }
      throw new XvaError(XvaErrorCode.UNEXPECTED_ENTRY, `unexpected tar entry ${entry.name} at byte ${entry.offset}`, where);
    }
    const ref = match[1]!;
    const index = Number(match[2]);
    const sizes = this.sizes;
    let disk = this.disk;
    if (disk?.ref !== ref) {
      if (this.done.has(ref) || (disk && compareRefs(ref, disk.ref) < 0)) {
        throw new XvaError(
          XvaErrorCode.DISK_OUT_OF_ORDER,
          `chunk ${entry.name} at byte ${entry.offset}: disk ${ref} comes after ${disk?.ref ?? 'another disk'}; disks must appear once each, in lexicographic order of their ref`,
          { ...where, ref, index },
        );
      }
      if (sizes && !(ref in sizes)) {
        throw new XvaError(XvaErrorCode.UNEXPECTED_DISK, `chunk ${entry.name} at byte ${entry.offset} belongs to disk ${ref}, which is not expected`, { ...where, ref, index });
      }
      if (!sizes && this.ovaSizes && !this.ovaSizes.has(ref)) {
        throw new XvaError(XvaErrorCode.UNEXPECTED_DISK, `chunk ${entry.name} at byte ${entry.offset} belongs to disk ${ref}, which is not a VDI of ova.xml`, { ...where, ref, index });
      }
      if (disk) this.closeDisk(disk, entry.offset);
      disk = { ref, lastIndex: -1, chunkLength: undefined, end: 0, shortSeen: false };
      this.disk = disk;
    }
    if (index <= disk.lastIndex) {
      throw new XvaError(XvaErrorCode.CHUNK_OUT_OF_ORDER, `chunk ${entry.name} at byte ${entry.offset} is out of order: it follows chunk ${chunkName(ref, disk.lastIndex)}`, {
        ...where,
        ref,
        index,
      });
    }
    const length = entry.size;
    if (disk.chunkLength === undefined) {
      if (length === 0) {
        throw new XvaError(XvaErrorCode.BAD_CHUNK_SIZE, `the first chunk of disk ${ref} (${entry.name} at byte ${entry.offset}) is empty`, { ...where, ref, index });
      }
      disk.chunkLength = length;
    } else if (length > disk.chunkLength) {
      throw new XvaError(XvaErrorCode.BAD_CHUNK_SIZE, `chunk ${entry.name} at byte ${entry.offset} is ${length} bytes, larger than the disk's first chunk (${disk.chunkLength})`, {
        ...where,
        ref,
        index,
      });
    } else if (length > 0 && disk.shortSeen) {
      throw new XvaError(
        XvaErrorCode.BAD_CHUNK_SIZE,
        `chunk ${entry.name} at byte ${entry.offset} follows a short chunk of disk ${ref}: only the last chunk may be shorter than ${disk.chunkLength} bytes`,
        { ...where, ref, index },
      );
    }
    if (length > 0 && length < disk.chunkLength) disk.shortSeen = true;
    const start = disk.end + (index - disk.lastIndex - 1) * disk.chunkLength;
    disk.end = start + length;
    disk.lastIndex = index;
    const size = this.sizeOf(ref);
    if (size !== undefined && disk.end > size) {
      throw new XvaError(XvaErrorCode.SIZE_MISMATCH, `chunk ${entry.name} at byte ${entry.offset} covers disk bytes ${start}–${disk.end}, past the disk's size ${size}`, {
        ...where,
        ref,
        index,
      });
    }
    const anyKind = this.kinds.size === 0;
    return {
      kind: 'chunk',
      chunk: {
        name: entry.name,
        ref,
        index,
        start,
        size: length,
        entryOffset: entry.offset,
        xxh: anyKind || this.kinds.has(XvaChecksum.xxhash) ? this.xxh.create() : undefined,
        sha1: anyKind || this.kinds.has(XvaChecksum.sha1) ? createHash('sha1') : undefined,
        data: this.options.keepData ? Buffer.allocUnsafe(length) : undefined,
        filled: 0,
      },
    };
  }

  private data(view: Buffer): void {
    const current = this.current!;
    switch (current.kind) {
      case 'ova':
        view.copy(current.data, current.filled);
        current.filled += view.length;
        break;
      case 'chunk': {
        const chunk = current.chunk;
        chunk.xxh?.update(view);
        chunk.sha1?.update(view);
        if (chunk.data) view.copy(chunk.data, chunk.filled);
        chunk.filled += view.length;
        break;
      }
      case 'checksum':
        if (current.filled < current.data.length) current.filled += view.copy(current.data, current.filled);
        break;
      default:
    }
  }

  private entryEnd(): void {
    const current = this.current!;
    this.current = undefined;
    switch (current.kind) {
      case 'failed':
        throw current.error;
      case 'ova': {
        const xml = current.data.toString('utf8');
        if (this.options.checkOva ?? true) this.ovaSizes = vdiSizesOfOva(xml, current.offset);
        this.ovaXml = xml;
        this.options.onEvent?.({ type: 'ova', xml, offset: current.offset });
        break;
      }
      case 'chunk': {
        const chunk = current.chunk;
        chunk.digests = {
          ...(chunk.xxh ? { xxhash: chunk.xxh.digest() } : {}),
          ...(chunk.sha1 ? { sha1: chunk.sha1.digest('hex') } : {}),
        };
        this.pending = chunk;
        break;
      }
      case 'checksum':
        this.checksum(current.chunk, current.sum, current.data.toString('latin1', 0, current.filled));
        break;
    }
  }

  private checksum(chunk: PendingChunk, kind: XvaChecksum, stored: string): void {
    let computed = chunk.digests?.[kind];
    if (computed === undefined && chunk.data) computed = kind === XvaChecksum.xxhash ? this.xxh.hash(chunk.data) : createHash('sha1').update(chunk.data).digest('hex');
    const where = { offset: chunk.entryOffset, entry: chunk.name, ref: chunk.ref, index: chunk.index };
    if (computed === undefined) {
      throw new XvaError(
        XvaErrorCode.BAD_CHECKSUM,
        `chunk ${chunk.name} (tar entry at byte ${chunk.entryOffset}) has a ${kind} checksum where the archive's earlier chunks have ${[...this.kinds].join('+')}: not checked`,
        where,
      );
    }
    if (stored !== computed) {
      throw new XvaError(
        XvaErrorCode.BAD_CHECKSUM,
        `bad checksum for chunk ${chunk.name} (disk ${chunk.ref} bytes ${chunk.start}–${chunk.start + chunk.size}, tar entry at byte ${chunk.entryOffset}): ${kind} stored ${JSON.stringify(stored)}, computed ${computed}`,
        where,
      );
    }
    this.kinds.add(kind);
    let report = this.reports.get(chunk.ref);
    if (!report) {
      report = { ref: chunk.ref, chunks: 0, keepalives: 0, lastIndex: -1, bytes: 0, dataBytes: 0, checksums: [] };
      this.reports.set(chunk.ref, report);
    }
    report.chunks += 1;
    if (chunk.size === 0) report.keepalives += 1;
    report.lastIndex = chunk.index;
    report.bytes = chunk.start + chunk.size;
    report.dataBytes += chunk.size;
    if (!report.checksums.includes(kind)) report.checksums.push(kind);
    this.options.onEvent?.({
      type: 'chunk',
      ref: chunk.ref,
      index: chunk.index,
      offset: chunk.start,
      data: chunk.data ?? EMPTY,
      name: chunk.name,
      entryOffset: chunk.entryOffset,
      checksum: kind,
    });
  }

  /** The end-of-archive marker: the checks of the whole archive. */
  private archiveEnd(): void {
    this.finished = true;
    if (!this.ovaSeen) throw new XvaError(XvaErrorCode.NO_OVA, 'the archive holds no entry: ova.xml is missing', { offset: 0 });
    const pending = this.pending;
    if (pending) {
      throw new XvaError(XvaErrorCode.MISSING_CHECKSUM, `chunk ${pending.name} (byte ${pending.entryOffset}) is the last entry: its checksum entry is missing`, {
        offset: this.endOffset,
        entry: pending.name,
        ref: pending.ref,
        index: pending.index,
      });
    }
    if (this.disk) this.closeDisk(this.disk, this.endOffset);
    const sizes = this.sizes;
    if (sizes) {
      for (const ref of Object.keys(sizes).sort(compareRefs)) {
        if (!this.done.has(ref) && sizes[ref] !== 0) {
          throw new XvaError(XvaErrorCode.MISSING_DISK, `disk ${ref} (${sizes[ref]} bytes) has no chunk in the archive`, { offset: this.endOffset, ref });
        }
      }
    }
    this.options.onEvent?.({ type: 'end', entries: this.count, bytes: this.endOffset });
  }
}

const EMPTY = Buffer.alloc(0);

function asXvaError(error: unknown): unknown {
  if (error instanceof TarError) {
    return new XvaError(error.code, `invalid XVA: ${error.message}`, { offset: error.offset, ...(error.entry === undefined ? {} : { entry: error.entry }) }, { cause: error });
  }
  return error;
}

/**
 * Reads and validates an XVA as a stream of events: `ova` first, then one `chunk` per chunk
 * entry (yielded only after its checksum entry matched), then `end`. Throws `XvaError` on
 * the first problem. Memory: one chunk plus its checksum entry. (An `XvaChecker` keeping
 * each chunk's data.)
 *
 * @example
 *   for await (const ev of readXva(fs.createReadStream(file))) if (ev.type === 'chunk') …
 */
export async function* readXva(input: AsyncIterable<Uint8Array | string>, options: ReadXvaOptions = {}): AsyncGenerator<XvaEvent, void, undefined> {
  const queue: XvaEvent[] = [];
  const checker = await XvaChecker.create({ ...options, keepData: true, onEvent: (event) => queue.push(event) });
  yield* drivePush(
    input,
    queue,
    (piece) => checker.push(piece),
    () => checker.end(),
    () => (options.trailing ?? 'zeros') === 'any' && checker.ended,
  );
}

function isStruct(value: XmlRpcValue | undefined): value is { [key: string]: XmlRpcValue } {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value) && !(value instanceof Date) && Object.getPrototypeOf(value) === Object.prototype;
}

/** Virtual sizes of the VDI objects of an ova.xml, by `Ref:N`; throws XVA_BAD_OVA. */
function vdiSizesOfOva(xml: string, offset: number): Map<string, number> {
  const bad = (why: string, cause?: unknown): XvaError =>
    new XvaError(XvaErrorCode.BAD_OVA, `ova.xml (tar entry at byte ${offset}) is not valid XVA metadata: ${why}`, { offset, entry: 'ova.xml' }, cause === undefined ? undefined : { cause });
  let value: XmlRpcValue;
  try {
    value = decodeValue(xml);
  } catch (error) {
    throw bad(error instanceof Error ? error.message : String(error), error);
  }
  if (!isStruct(value) || !isStruct(value.version) || !Array.isArray(value.objects)) throw bad('expected a struct with a version struct and an objects array');
  const sizes = new Map<string, number>();
  for (const object of value.objects) {
    if (!isStruct(object) || typeof object.id !== 'string' || typeof object.class !== 'string') throw bad('an object lacks its class or id');
    if (object.class.toLowerCase() !== 'vdi') continue;
    const snapshot = object.snapshot;
    const size = isStruct(snapshot) ? Number(snapshot.virtual_size) : NaN;
    if (!Number.isSafeInteger(size) || size < 0) throw bad(`VDI ${object.id} has no valid virtual_size`);
    sizes.set(object.id, size);
  }
  return sizes;
}

/** Per-disk summary of a verified XVA. */
export interface XvaDiskReport {
  ref: string;
  /** Chunk entries, keepalives included. */
  chunks: number;
  /** Zero-length keepalive chunks. */
  keepalives: number;
  /** Highest chunk number. */
  lastIndex: number;
  /** Disk bytes covered: the offset just after the last chunk (the disk size when complete). */
  bytes: number;
  /** Bytes actually stored in chunks. */
  dataBytes: number;
  /** Checksum kinds used by this disk's chunks. */
  checksums: XvaChecksum[];
}

export interface XvaReport {
  ovaXml: string;
  disks: XvaDiskReport[];
  /** Tar entries, ova.xml and checksum entries included. */
  entries: number;
}

/**
 * Reads a whole XVA, checking every chunk's checksum and the archive's structure; returns a
 * summary or throws `XvaError` (see `readXva`).
 *
 * @example
 *   const { disks } = await verifyXva(fs.createReadStream(file), { diskSizes: { 'Ref:4': 10 << 30 } });
 */
export async function verifyXva(input: AsyncIterable<Uint8Array | string>, options: ReadXvaOptions = {}): Promise<XvaReport> {
  const checker = await XvaChecker.create(options);
  for await (const value of input) checker.push(typeof value === 'string' ? Buffer.from(value) : Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength));
  return checker.end();
}

/** A piece of disk to write during a restore. */
export interface XvaDiskWrite {
  ref: string;
  offset: number;
  data: Buffer;
}

/**
 * The verified data of every disk in an XVA, as writes at disk offsets (zero chunks are not
 * yielded: write into a zero-filled or sparse target). Each write is yielded only after its
 * checksum matched; the whole archive is still validated, so a restore must treat a throw
 * at any point as a failed restore.
 *
 * @example
 *   for await (const { ref, offset, data } of xvaDiskWrites(stream)) await files.get(ref)!.write(data, 0, data.length, offset);
 */
export async function* xvaDiskWrites(input: AsyncIterable<Uint8Array | string>, options: ReadXvaOptions = {}): AsyncGenerator<XvaDiskWrite, void, undefined> {
  for await (const event of readXva(input, options)) {
    if (event.type === 'chunk' && event.data.length > 0) yield { ref: event.ref, offset: event.offset, data: event.data };
  }
}

