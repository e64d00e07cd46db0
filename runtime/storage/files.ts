import { readdir } from 'node:fs/promises';

/**
 * The names of the regular files in folder `dir` (not sorted); none when it does not exist.
 * Other errors (EACCES, ENOTDIR…) are thrown.
 *
 * @example await listFileNames('/mnt/VmBackup/exports/web1') // ['backup_20261126-083000.xva', …]
 */
export async function listFileNames(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir, { withFileTypes: true })).filter((d) => d.isFile()).map((d) => d.name);
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return [];
    throw error;
  }
}
