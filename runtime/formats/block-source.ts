/**
 * Random-access, read-only view of a virtual disk, as the format encoders consume it.
 * Offsets and lengths are in bytes; reads never cross `size`.
 *
 * `read` returns `null` when the whole range is zeros, so encoders can skip it without
 * materialising or scanning zero bytes (XVA skips zero chunks, VHD leaves blocks
 * unallocated). It may return a Buffer that is all zeros too: encoders must then treat it as
 * zero data themselves if the format requires it.
 *
 * @example
 *   const zeros: BlockSource = { size: 1 << 30, read: () => null };
 */
export interface BlockSource {
  /** Virtual size of the disk in bytes. */
  readonly size: number;
  /** Bytes in [offset, offset + length), or null when they are all zero. */
  read(offset: number, length: number): Buffer | null | Promise<Buffer | null>;
}

/** 1 MiB: the XVA chunk size. */
export const XVA_CHUNK_SIZE = 1 << 20;
/** 2 MiB: the VHD block size XAPI uses. */
export const VHD_BLOCK_SIZE = 2 << 20;
