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

/** 64 KiB: the unit of guest writes the simulator plays, and of changed-block tracking. */
export const WRITE_BLOCK = 64 * 1024;

/**
 * A disk after guest writes: `base` with some 64 KiB blocks rewritten. A rewritten block's
 * bytes are generated from (disk id, block, generation), like `PatternDisk`'s (one of the
 * shared bases, every 4 KiB stamped with id, block index and generation), so a disk costs
 * one number per written block and the same writes always give the same bytes. Immutable:
 * `withWrites` returns a new disk, so a snapshot that shares the old one keeps its content.
 */
export class WrittenDisk implements SimDisk {
  private constructor(
    readonly base: SimDisk,
    private readonly id: number,
    /** Block index → generation of its last write. */
    private readonly blocks: ReadonlyMap<number, number>,
  ) {}

  /** `base` (itself possibly a WrittenDisk) with `blocks` rewritten at generation `generation`. */
  static write(base: SimDisk, seed: string, blocks: Iterable<number>, generation: number): WrittenDisk {
    const own = base instanceof WrittenDisk ? base : undefined;
    const next = new Map(own?.blocks ?? []);
    const count = Math.ceil(base.size / WRITE_BLOCK);
    for (const b of blocks) {
      if (!Number.isInteger(b) || b < 0 || b >= count) throw new RangeError(`block ${b} outside disk of ${count} blocks`);
      next.set(b, generation);
    }
    return new WrittenDisk(own?.base ?? base, own?.id ?? seed32(seed), next);
  }

  get size(): number {
    return this.base.size;
  }

  /** Blocks written so far (for inspection). */
  get writtenBlocks(): number {
    return this.blocks.size;
  }

  get allocated(): number {
    let extra = 0;
    for (const b of this.blocks.keys()) {
      const start = b * WRITE_BLOCK;
      const length = Math.min(WRITE_BLOCK, this.size - start);
      if (!this.base.hasData(start, length)) extra += length;
    }
    return this.base.allocated + extra;
  }

  hasData(offset: number, length: number): boolean {
    if (length <= 0) return false;
    if (this.base.hasData(offset, length)) return true;
    const last = Math.floor((offset + length - 1) / WRITE_BLOCK);
    for (let b = Math.floor(offset / WRITE_BLOCK); b <= last; b++) if (this.blocks.has(b)) return true;
    return false;
  }

  /** The bytes of written block `block` at `generation`. */
  private blockBytes(block: number, generation: number): Buffer {
    const start = block * WRITE_BLOCK;
    const length = Math.min(WRITE_BLOCK, this.size - start);
    const base = sharedBase((this.id + generation) >>> 0);
    const from = (block % (CHUNK / WRITE_BLOCK)) * WRITE_BLOCK;
    const out = Buffer.allocUnsafe(length);
    base.copy(out, 0, from, from + length);
    const firstStamp = start / STAMP_BLOCK;
    for (let s = 0; s * STAMP_BLOCK + 12 <= length; s++) {
      out.writeUInt32LE(this.id, s * STAMP_BLOCK);
      out.writeUInt32LE((firstStamp + s) >>> 0, s * STAMP_BLOCK + 4);
      out.writeUInt32LE(generation >>> 0, s * STAMP_BLOCK + 8);
    }
    return out;
  }

  async read(offset: number, length: number): Promise<Buffer | null> {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`read [${offset}, ${offset + length}) outside disk of ${this.size} bytes`);
    }
    const base = await this.base.read(offset, length);
    if (length === 0) return base;
    const first = Math.floor(offset / WRITE_BLOCK);
    const last = Math.floor((offset + length - 1) / WRITE_BLOCK);
    let out: Buffer | null = null;
    for (let b = first; b <= last; b++) {
      const generation = this.blocks.get(b);
      if (generation === undefined) continue;
      if (out === null) {
        // Never write into the base's buffer: it may be shared (a MemoryDisk chunk).
        out = Buffer.alloc(length);
        base?.copy(out);
      }
      const bytes = this.blockBytes(b, generation);
      const blockStart = b * WRITE_BLOCK;
      const from = Math.max(offset, blockStart);
      const to = Math.min(offset + length, blockStart + bytes.length);
      bytes.copy(out, from - offset, from - blockStart, to - blockStart);
    }
    return out ?? base;
  }
}

/** A disk grown by VDI.resize: `base`'s bytes, then zeros up to `size`. */
export class GrownDisk implements SimDisk {
  constructor(
    readonly base: SimDisk,
    readonly size: number,
  ) {}

  get allocated(): number {
    return this.base.allocated;
  }

  hasData(offset: number, length: number): boolean {
    return offset < this.base.size && this.base.hasData(offset, Math.min(length, this.base.size - offset));
  }

  async read(offset: number, length: number): Promise<Buffer | null> {
    if (offset < 0 || length < 0 || offset + length > this.size) throw new RangeError(`read [${offset}, ${offset + length}) outside disk of ${this.size} bytes`);
    if (offset >= this.base.size) return null;
    if (offset + length <= this.base.size) return this.base.read(offset, length);
    const head = await this.base.read(offset, this.base.size - offset);
    if (head === null) return null;
    const out = Buffer.alloc(length);
    head.copy(out);
    return out;
  }
}

/** How guest writes fall: `scattered` blocks anywhere, or `clustered` in runs of CLUSTER_BLOCKS. */
export type ChurnPattern = 'scattered' | 'clustered';

/** A clustered write's run: 16 blocks of 64 KiB, 1 MiB, aligned on 1 MiB. */
export const CLUSTER_BLOCKS = 16;

/**
 * `count` distinct block indices in [0, total) as whole runs of `run` blocks aligned on `run`
 * (the last run cut short to give exactly `count`), the runs chosen from `seed` alone, sorted:
 * writes clustered as a guest's are (a file, a log, a database page range).
 */
export function pickRuns(total: number, count: number, run: number, seed: string): number[] {
  const k = Math.max(0, Math.min(total, Math.round(count)));
  const runs = Math.ceil(total / run);
  // The disk's last run may be short: take one run more until the runs hold `count` blocks.
  for (let n = Math.ceil(k / run); ; n++) {
    const blocks = pickBlocks(runs, n, seed).flatMap((r) => Array.from({ length: Math.min(run, total - r * run) }, (_, i) => r * run + i));
    if (blocks.length >= k) return blocks.slice(0, k);
  }
}

/**
 * `count` distinct block indices in [0, total), chosen from `seed` alone (Floyd's sampling
 * over xorshift32), sorted.
 */
export function pickBlocks(total: number, count: number, seed: string): number[] {
  const k = Math.max(0, Math.min(total, Math.round(count)));
  let x = seed32(seed);
  const next = (bound: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % bound;
  };
  const chosen = new Set<number>();
  for (let j = total - k; j < total; j++) {
    const t = next(j + 1);
    chosen.add(chosen.has(t) ? j : t);
  }
  return [...chosen].sort((a, b) => a - b);
}
