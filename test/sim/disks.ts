import { createHash } from 'node:crypto';
import { XVA_CHUNK_SIZE, type BlockSource } from '../../runtime/formats/block-source.js';

/**
 * Virtual disk contents for the simulator, as `BlockSource`s the format encoders read.
 *
 * - `PatternDisk`: every byte is data, deterministic from a seed. Chunk `c` is one of eight
 *   shared 1 MiB pseudo-random bases (chosen by the seed) with every 4 KiB block stamped with
 *   `(disk id, block index)`, so no two blocks of any disks compare equal, misplaced data is
 *   always detected, and reading costs a memcpy. A thousand disks cost 8 MiB.
 * - `ZeroDisk`: all zeros (read returns null).
 * - `SparseDisk`: mostly zeros; about one 1 MiB chunk in eight (and always the first) carries
 *   pattern data in its first 768 KiB.
 * - `MemoryDisk`: bytes written by imports, kept sparse in 1 MiB chunks over an optional base;
 *   `snapshot()` is copy-on-write.
 */
export interface SimDisk extends BlockSource {
  /** Bytes the disk really occupies (VDI.physical_utilisation). */
  readonly allocated: number;
  /** Whether [offset, offset+length) may hold non-zero bytes (false: certainly all zeros). */
  hasData(offset: number, length: number): boolean;
}

const CHUNK = XVA_CHUNK_SIZE;
const STAMP_BLOCK = 4096;
const ZERO_CHUNK = Buffer.alloc(CHUNK);

function seed32(seed: string): number {
  return (createHash('sha1').update(seed).digest().readUInt32LE(0) | 1) >>> 0;
}

const bases = new Map<number, Buffer>();

/** One of eight shared 1 MiB bases, made on first use. */
function sharedBase(id: number): Buffer {
  const slot = id % 8;
  let base = bases.get(slot);
  if (base === undefined) {
    base = makeBase(0x9e3779b9 ^ (slot * 0x85ebca6b));
    bases.set(slot, base);
  }
  return base;
}

/** 1 MiB of xorshift32 output. */
function makeBase(seed: number): Buffer {
  const words = new Uint32Array(CHUNK / 4);
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return Buffer.from(words.buffer);
}

/** Assembles [offset, offset+length) from per-chunk pieces; null when every piece is zero. */
function assemble(
  size: number,
  offset: number,
  length: number,
  chunkAt: (index: number) => Buffer | null,
): Buffer | null {
  if (offset < 0 || length < 0 || offset + length > size) {
    throw new RangeError(`read [${offset}, ${offset + length}) outside disk of ${size} bytes`);
  }
  if (length === 0) return null;
  const first = Math.floor(offset / CHUNK);
  const last = Math.floor((offset + length - 1) / CHUNK);
  if (first === last && offset % CHUNK === 0 && length === Math.min(CHUNK, size - first * CHUNK)) {
    return chunkAt(first);
  }
  let out: Buffer | null = null;
  for (let c = first; c <= last; c++) {
    const data = chunkAt(c);
    if (data === null) continue;
    if (out === null) out = Buffer.alloc(length);
    const chunkStart = c * CHUNK;
    const from = Math.max(offset, chunkStart);
    const to = Math.min(offset + length, chunkStart + data.length);
    if (to > from) data.copy(out, from - offset, from - chunkStart, to - chunkStart);
  }
  return out;
}

export class PatternDisk implements SimDisk {
  private readonly id: number;
  readonly allocated: number;

  constructor(
    readonly size: number,
    seed: string,
  ) {
    this.id = seed32(seed);
    this.allocated = size;
  }

  private get base(): Buffer {
    return sharedBase(this.id);
  }

  /** Writes chunk `index` (shorter for the last chunk) into `out` at `at`. */
  private writeChunk(index: number, out: Buffer, at: number): number {
    const length = Math.min(CHUNK, this.size - index * CHUNK);
    this.base.copy(out, at, 0, length);
    const firstBlock = index * (CHUNK / STAMP_BLOCK);
    for (let b = 0; b * STAMP_BLOCK + 8 <= length; b++) {
      out.writeUInt32LE(this.id, at + b * STAMP_BLOCK);
      out.writeUInt32LE((firstBlock + b) >>> 0, at + b * STAMP_BLOCK + 4);
    }
    return length;
  }

  /** The bytes of chunk `index` (shorter for the last chunk). */
  chunk(index: number): Buffer {
    const out = Buffer.allocUnsafe(Math.min(CHUNK, this.size - index * CHUNK));
    this.writeChunk(index, out, 0);
    return out;
  }

  read(offset: number, length: number): Buffer | null {
    // Chunk-aligned reads (every encoder's) are generated in place: one copy per MiB.
    if (offset % CHUNK === 0 && (length % CHUNK === 0 || offset + length === this.size) && offset + length <= this.size && length > 0) {
      const out = Buffer.allocUnsafe(length);
      for (let at = 0; at < length; ) at += this.writeChunk((offset + at) / CHUNK, out, at);
      return out;
    }
    return assemble(this.size, offset, length, (c) => this.chunk(c));
  }

  hasData(): boolean {
    return true;
  }
}

export class ZeroDisk implements SimDisk {
  readonly allocated = 0;
  constructor(readonly size: number) {}
  read(offset: number, length: number): null {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`read [${offset}, ${offset + length}) outside disk of ${this.size} bytes`);
    }
    return null;
  }

  hasData(): boolean {
    return false;
  }
}

export class SparseDisk implements SimDisk {
  private readonly pattern: PatternDisk;
  private readonly dataChunks: Set<number>;
  /** Bytes of pattern data at the start of each data chunk; the rest of the chunk is zero. */
  static readonly DATA_PER_CHUNK = 768 * 1024;
  readonly allocated: number;

  constructor(
    readonly size: number,
    seed: string,
  ) {
    this.pattern = new PatternDisk(size, seed);
    const chunks = Math.ceil(size / CHUNK);
    this.dataChunks = new Set();
    for (let c = 0; c < chunks; c++) {
      const h = createHash('sha1').update(`${seed}\u0000${c}`).digest()[0]!;
      if (c === 0 || h % 8 === 0) this.dataChunks.add(c);
    }
    this.allocated = [...this.dataChunks].reduce((sum, c) => sum + Math.min(CHUNK, size - c * CHUNK), 0);
  }

  chunk(index: number): Buffer | null {
    if (!this.dataChunks.has(index)) return null;
    const data = this.pattern.chunk(index);
    if (data.length > SparseDisk.DATA_PER_CHUNK) data.fill(0, SparseDisk.DATA_PER_CHUNK);
    return data;
  }

  read(offset: number, length: number): Buffer | null {
    return assemble(this.size, offset, length, (c) => this.chunk(c));
  }

  hasData(offset: number, length: number): boolean {
    const last = Math.floor((offset + length - 1) / CHUNK);
    for (let c = Math.floor(offset / CHUNK); c <= last; c++) if (this.dataChunks.has(c)) return true;
    return false;
  }
}

/** Sparse in-memory disk over an optional base; writes never modify a buffer a snapshot shares. */
export class MemoryDisk implements SimDisk {
  private readonly chunks: Map<number, Buffer | null>;

  constructor(
    readonly size: number,
    private readonly base?: BlockSource,
    chunks?: Map<number, Buffer | null>,
  ) {
    this.chunks = chunks ?? new Map();
  }

  get allocated(): number {
    let n = 0;
    for (const b of this.chunks.values()) if (b !== null) n += b.length;
    return n + ((this.base as SimDisk | undefined)?.allocated ?? 0);
  }

  hasData(offset: number, length: number): boolean {
    const last = Math.floor((offset + length - 1) / CHUNK);
    for (let c = Math.floor(offset / CHUNK); c <= last; c++) {
      if (this.chunks.has(c)) {
        if (this.chunks.get(c) !== null) return true;
      } else if (this.base === undefined || (this.base as Partial<SimDisk>).hasData?.(c * CHUNK, Math.min(CHUNK, this.size - c * CHUNK)) !== false) {
        if (this.base !== undefined) return true;
      }
    }
    return false;
  }

  private async baseChunk(index: number): Promise<Buffer | null> {
    if (this.base === undefined) return null;
    const start = index * CHUNK;
    return this.base.read(start, Math.min(CHUNK, this.size - start));
  }

  async read(offset: number, length: number): Promise<Buffer | null> {
    const first = Math.floor(offset / CHUNK);
    const last = length === 0 ? first : Math.floor((offset + length - 1) / CHUNK);
    const pieces = new Map<number, Buffer | null>();
    for (let c = first; c <= last; c++) {
      pieces.set(c, this.chunks.has(c) ? this.chunks.get(c)! : await this.baseChunk(c));
    }
    return assemble(this.size, offset, length, (c) => pieces.get(c) ?? null);
  }

  /** Writes bytes at `offset` (any alignment). */
  async write(offset: number, data: Buffer): Promise<void> {
    if (offset < 0 || offset + data.length > this.size) {
      throw new RangeError(`write [${offset}, ${offset + data.length}) outside disk of ${this.size} bytes`);
    }
    let pos = 0;
    while (pos < data.length) {
      const at = offset + pos;
      const c = Math.floor(at / CHUNK);
      const chunkStart = c * CHUNK;
      const chunkLength = Math.min(CHUNK, this.size - chunkStart);
      const n = Math.min(data.length - pos, chunkStart + chunkLength - at);
      const piece = data.subarray(pos, pos + n);
      let next: Buffer;
      if (n === chunkLength) {
        next = Buffer.from(piece);
      } else {
        const current = this.chunks.has(c) ? this.chunks.get(c)! : await this.baseChunk(c);
        next = Buffer.alloc(chunkLength);
        if (current !== null) current.copy(next);
        piece.copy(next, at - chunkStart);
      }
      // A chunk that became all zeros is stored as an explicit hole (it may hide base data).
      const zero = next.equals(ZERO_CHUNK.subarray(0, next.length));
      this.chunks.set(c, zero ? null : next);
      pos += n;
    }
  }

  /** A copy-on-write snapshot of the current contents. */
  snapshot(): MemoryDisk {
    return new MemoryDisk(this.size, this.base, new Map(this.chunks));
  }
}

/** The content of a disk described in a pool file. */
export function diskFor(fill: 'pattern' | 'zero' | 'sparse', size: number, seed: string): SimDisk {
  switch (fill) {
    case 'pattern':
      return new PatternDisk(size, seed);
    case 'zero':
      return new ZeroDisk(size);
    case 'sparse':
      return new SparseDisk(size, seed);
  }
}
