/**
 * A size in bytes for people, in binary units with one decimal: plain bytes below 1 KiB.
 * `bytesUnit` names those plain bytes (`B` by default; verify's lines say `bytes`).
 *
 * @example
 *   formatBytes(512)                          // '512 B'
 *   formatBytes(512, { bytesUnit: 'bytes' })  // '512 bytes'
 *   formatBytes(3 * 2 ** 20 + 2 ** 19)        // '3.5 MiB'
 */
export function formatBytes(n: number, opts: { bytesUnit?: 'B' | 'bytes' } = {}): string {
  const units = [opts.bytesUnit ?? 'B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

/**
 * A duration in milliseconds as seconds with one decimal, as the logs and summaries print it.
 *
 * @example formatSeconds(1234) // '1.2 s'
 */
export function formatSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
