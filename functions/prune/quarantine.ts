import { mkdir, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';

/**
 * Sets that failed verification are moved aside into `<vm folder>/.failed/<stamp>/`, so they
 * are neither counted (every listing of a VM folder reads its regular files only) nor warned
 * about on every run, and are deleted `failed_keep_days` after they were moved (the folder's
 * mtime records when). Done by `vmbackup verify --quarantine` and by prune; an operator can
 * move the files back by hand (`mv .failed/<stamp>/* .`).
 */

/** Folder of quarantined sets inside a VM folder. */
export const FAILED_FOLDER = '.failed';
/** Default of failed_keep_days. */
export const FAILED_KEEP_DAYS = 30;

/**
 * Moves the files of set `stamp` (`files`, names in `dir`) into `<dir>/.failed/<stamp>/`, the
 * manifest first (from then on the set no longer claims to be one). Returns where they went.
 *
 * @example await quarantineSet('/mnt/VmBackup/exports/web1', '20261126-083000', ['backup_20261126-083000.json', …], new Date())
 */
export async function quarantineSet(dir: string, stamp: string, files: readonly string[], now: Date): Promise<string> {
  const target = path.join(dir, FAILED_FOLDER, stamp);
  await mkdir(target, { recursive: true });
  const ordered = [...files].sort((a, b) => Number(b.endsWith('.json')) - Number(a.endsWith('.json')));
  for (const name of ordered) {
    if (name.includes('/') || name === '.' || name === '..') continue;
    await rename(path.join(dir, name), path.join(target, name)).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error;
    });
  }
  await utimes(target, now, now);
  return target;
}

/**
 * Deletes the quarantined sets of `dir` moved aside more than `keepDays` ago; returns their
 * stamps. The caller only calls it when the folder holds a complete set: the last data of a
 * VM, even damaged, is never deleted for its age alone.
 */
export async function expireQuarantine(dir: string, keepDays: number, now: Date): Promise<string[]> {
  const root = path.join(dir, FAILED_FOLDER);
  let entries;
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const expired: string[] = [];
  for (const entry of entries) {
    if (!entry.isDirectory() || !/^\d{8}-\d{6}$/.test(entry.name)) continue;
    const s = await stat(path.join(root, entry.name));
    if (now.getTime() - s.mtimeMs > keepDays * 86_400_000) {
      await rm(path.join(root, entry.name), { recursive: true, force: true });
      expired.push(entry.name);
    }
  }
  return expired;
}
