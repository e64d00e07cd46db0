/**
 * Deterministic `BlockSource`s for tests and the simulator: disks generated on the fly, so a
 * large disk costs no memory and the same bytes come back on every read.
 *
 * @example
 *   // 64 MiB: data in 1 MiB regions 0, 5 and 63, the rest zero (answered as null)
 *   const src = generatedSource({ size: 64 << 20, regionSize: 1 << 20, kind: (r) => ([0, 5, 63].includes(r) ? 'data' : 'null') });
 *   const copy = await readAll(src); // Buffer of 64 MiB (tests only)
 */
import type { BlockSource } from './block-source.js';
import { zeroSlice } from './zero.js';

/** What a region of a generated disk holds. */
export type RegionKind = 'data' | 'zero' | 'null';

export interface GeneratedSourceOptions {
  size: number;
  /** Granularity of `kind`; default 1 MiB. */
  regionSize?: number;
  /**
   * Per region: `data` (pseudo-random bytes), `zero` (a zero Buffer is returned) or `null`
   * (reads of the whole region return null). Default: every region `data`.
   */
  kind?: (region: number) => RegionKind;
  /** Varies the bytes; default 1. */
  seed?: number;
}

const PATTERN_SIZE = 4 << 20;
const patterns = new Map<number, Buffer>();

function pattern(seed: number): Buffer {
  let buf = patterns.get(seed);
  if (!buf) {
    buf = Buffer.allocUnsafe(PATTERN_SIZE + 8);
    // xorshift32: cheap, deterministic, never all zero.
    let x = (seed * 2654435761) >>> 0 || 1;
    for (let i = 0; i < buf.length; i += 4) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      buf.writeUInt32LE(x, i);
    }
    patterns.set(seed, buf);
  }
  return buf;
}

/**
 * A disk whose bytes are a function of (seed, offset): every 512-byte sector starts with its
 * own offset, the rest comes from a 4 MiB pseudo-random pattern.
 */
export function generatedSource(options: GeneratedSourceOptions): BlockSource {
  const { size } = options;
  const regionSize = options.regionSize ?? 1 << 20;
  const kind = options.kind ?? (() => 'data');
  const pat = pattern(options.seed ?? 1);
  const stamp = Buffer.alloc(8);
  return {
    size,
    read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > size) throw new RangeError(`read [${offset}, +${length}) outside a ${size}-byte disk`);
      const first = Math.floor(offset / regionSize);
      const last = Math.floor((offset + length - 1) / regionSize);
      let allNull = true;
      let allZero = true;
      for (let r = first; r <= last && length > 0; r++) {
        const k = kind(r);
        if (k !== 'null') allNull = false;
        if (k === 'data') allZero = false;
      }
      if (length === 0) return Buffer.alloc(0);
      if (allNull) return null;
      if (allZero) return Buffer.alloc(length);
      const out = Buffer.allocUnsafe(length);
      for (let at = 0; at < length; ) {
        const abs = offset + at;
        const region = Math.floor(abs / regionSize);
        const end = Math.min(length, (region + 1) * regionSize - offset);
        if (kind(region) === 'data') {
          for (let p = at; p < end; ) {
            const from = (offset + p) % PATTERN_SIZE;
            const n = Math.min(end - p, PATTERN_SIZE - from);
            pat.copy(out, p, from, from + n);
            p += n;
          }
          // Stamp each sector start with its offset so no two sectors are equal.
          // Partial stamps too, so any split of reads yields the same bytes.
          for (let s = Math.floor((offset + at) / 512) * 512; s < offset + end; s += 512) {
            const from = Math.max(s, offset + at);
            const to = Math.min(s + 8, offset + end);
            if (from >= to) continue;
            stamp.writeDoubleLE(s, 0);
            stamp.copy(out, from - offset, from - s, to - s);
          }
        } else {
          zeroSlice(end - at).copy(out, at);
        }
        at = end;
      }
      return out;
    },
  };
}

/** A source over bytes in memory; `null` is never returned. */
export function bufferSource(bytes: Buffer): BlockSource {
  return { size: bytes.length, read: (offset, length) => Buffer.from(bytes.subarray(offset, offset + length)) };
}

/** The whole disk in one Buffer (tests with small disks only). */
export async function readAll(source: BlockSource): Promise<Buffer> {
  const out = Buffer.alloc(source.size);
  const step = 4 << 20;
  for (let at = 0; at < source.size; at += step) {
    const n = Math.min(step, source.size - at);
    const data = await source.read(at, n);
    if (data) data.copy(out, at);
  }
  return out;
}
