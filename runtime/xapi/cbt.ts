import type { NbdRange } from '../nbd/client.js';

/** 64 KiB: the block size of XAPI's changed-block tracking. */
export const CBT_BLOCK_SIZE = 64 * 1024;

/** What changed between two CBT snapshots of a disk, as byte ranges to read. */
export interface ChangedBlocks {
  /** Changed 64 KiB blocks. */
  blocks: number;
  /** Bytes to read (the last block clipped to the disk's size). */
  bytes: number;
  /** Runs of adjacent changed blocks, in order, clipped to the disk's size. */
  ranges: NbdRange[];
}

/**
 * Decodes `VDI.list_changed_blocks`'s answer: base64, one bit per 64 KiB block, most
 * significant bit first (block 0 is 0x80 of byte 0). Bits past the end of a disk of `size`
 * bytes are ignored.
 *
 * @example
 *   decodeChangedBlocks('wA==', 1 << 20) // { blocks: 2, bytes: 131072, ranges: [{ offset: 0, length: 131072 }] }
 */
export function decodeChangedBlocks(bitmap: string, size: number): ChangedBlocks {
  const bytes = Buffer.from(bitmap, 'base64');
  const total = Math.ceil(size / CBT_BLOCK_SIZE);
  const ranges: NbdRange[] = [];
  let blocks = 0;
  let length = 0;
  for (let i = 0; i < Math.min(total, bytes.length * 8); i++) {
    if ((bytes[i >> 3]! & (0x80 >> (i & 7))) === 0) continue;
    blocks += 1;
    const offset = i * CBT_BLOCK_SIZE;
    const n = Math.min(CBT_BLOCK_SIZE, size - offset);
    length += n;
    const last = ranges.at(-1);
    if (last !== undefined && last.offset + last.length === offset) last.length += n;
    else ranges.push({ offset, length: n });
  }
  return { blocks, bytes: length, ranges };
}
