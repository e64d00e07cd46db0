import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FOLDER_LOCK_FILE } from '../../runtime/storage/lock.js';
import { formatWriterTag, processStart, thisProcess } from '../../runtime/storage/writer.js';

/**
 * Another run pruning `dirs` right now: a live process of this host (`sleep`) named as the
 * holder of each folder's prune lock, as a run would write it. `release()` kills it: the lock
 * is then a dead run's.
 */
export async function holdFolderLocks(dirs: readonly string[], runId = 'other-run'): Promise<{ release(): Promise<void> }> {
  const holder = spawn('sleep', ['300'], { stdio: 'ignore' });
  await new Promise((resolve) => holder.once('spawn', resolve));
  const writer = formatWriterTag({ ...thisProcess(), pid: holder.pid!, start: processStart(holder.pid!)!, seq: 1 });
  for (const dir of dirs) {
    await writeFile(path.join(dir, FOLDER_LOCK_FILE), JSON.stringify({ writer, hostname: os.hostname(), pid: holder.pid, runId, startedAt: new Date().toISOString() }) + '\n');
  }
  return {
    async release() {
      if (holder.exitCode !== null || holder.signalCode !== null) return;
      holder.kill('SIGKILL');
      await new Promise((resolve) => holder.once('exit', resolve));
    },
  };
}
