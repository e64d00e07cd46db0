import { statfs } from 'node:fs/promises';

export interface FreeSpace {
  totalBytes: number;
  freeBytes: number;
  /** Percent of the filesystem available to unprivileged writers. */
  freePercent: number;
}

/**
 * Free space of the filesystem holding `dir`, from statfs(2) — not from parsing `df`,
 * which VmBackup got wrong (it read one digit, so its check rarely fired).
 */
export async function freeSpace(dir: string): Promise<FreeSpace> {
  const s = await statfs(dir);
  const totalBytes = s.blocks * s.bsize;
  const freeBytes = s.bavail * s.bsize;
  return { totalBytes, freeBytes, freePercent: totalBytes === 0 ? 0 : (freeBytes / totalBytes) * 100 };
}
