import { stat } from 'node:fs/promises';
import path from 'node:path';
import { ChunkStore, STORE_FOLDER } from './chunks.js';

/**
 * The chunk store of `backupDir` when it has one (`.chunkstore/store.json`), else undefined:
 * for readers (restore, verify, list), which must never create a store where there is none.
 *
 * @example const store = await openExistingStore('/mnt/VmBackup/exports'); // undefined: no points here
 */
export async function openExistingStore(backupDir: string): Promise<ChunkStore | undefined> {
  const exists = await stat(path.join(backupDir, STORE_FOLDER, 'store.json')).then(
    () => true,
    () => false,
  );
  return exists ? ChunkStore.open(backupDir) : undefined;
}
