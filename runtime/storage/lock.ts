import { open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, LockedError } from '../errors.js';
import type { Origin } from '../function.js';

/** Name of the lock file in backup_dir. */
export const LOCK_FILE = '.vmbackup.lock';

/** What a lock file says about its owner. */
export interface LockInfo {
  hostname: string;
  pid: number;
  runId: string;
  startedAt: string;
}

export interface Lock {
  readonly file: string;
  release(): Promise<void>;
}

/**
 * Whether a lock is stale: its owner is gone. On the same host the owner's pid is checked;
 * for another host (a shared NFS backup_dir) only age can tell, after `staleHours`.
 * Pure: the caller says whether a pid is alive.
 */
export function isStale(info: LockInfo, now: Date, me: Origin, staleHours: number, pidAlive: (pid: number) => boolean): boolean {
  if (info.hostname === me.hostname) return !pidAlive(info.pid);
  const started = Date.parse(info.startedAt);
  if (Number.isNaN(started)) return true;
  return now.getTime() - started > staleHours * 3_600_000;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return (error as { code?: string }).code === 'EPERM';
  }
}

/**
 * Takes the exclusive lock of a backup directory, so two runs never write or prune the same
 * folders at once. The lock file is created with O_EXCL; a stale lock (owner gone) is taken
 * over, and the takeover is logged by the caller from the returned `previous`.
 *
 * @throws LockedError naming the owner (host, pid, run, start time).
 */
export async function acquireLock(
  backupDir: string,
  owner: Origin & { runId: string },
  opts: { now: Date; staleHours: number },
): Promise<Lock & { previous?: LockInfo }> {
  const file = path.join(backupDir, LOCK_FILE);
  const info: LockInfo = { hostname: owner.hostname, pid: owner.pid, runId: owner.runId, startedAt: opts.now.toISOString() };
  let previous: LockInfo | undefined;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(file, 'wx', 0o644);
      try {
        await handle.writeFile(JSON.stringify(info) + '\n');
        await handle.sync();
      } finally {
        await handle.close();
      }
      return {
        file,
        ...(previous !== undefined ? { previous } : {}),
        release: async () => {
          // Only remove the lock if it is still ours (a takeover may have happened).
          const current = await readLock(file);
          if (current !== undefined && current.pid === info.pid && current.hostname === info.hostname && current.runId === info.runId) {
            await rm(file, { force: true });
          }
        },
      };
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code !== 'EEXIST') {
        // EACCES, EROFS, ENOSPC…: backup_dir cannot take a file, so no backup could either.
        throw new ConfigError(`backup_dir ${backupDir} is not writable: cannot create ${LOCK_FILE} (${code ?? String(error)})`, { key: 'backup_dir', errno: code });
      }
    }
    const existing = await readLock(file);
    if (existing !== undefined && !isStale(existing, opts.now, owner, opts.staleHours, pidAlive)) {
      throw new LockedError('LOCKED', lockHeldMessage({ ...existing, file }), { ...existing, file });
    }
    previous = existing;
    await rm(file, { force: true });
  }
  throw new LockedError('LOCKED', `could not take ${file}: another run took it first`, { file });
}

/** `another vmbackup run holds <file>: run …, pid … on <host>, since …`: who holds a live lock. */
export function lockHeldMessage(held: LockInfo & { file: string }): string {
  return `another vmbackup run holds ${held.file}: run ${held.runId}, pid ${held.pid} on ${held.hostname}, since ${held.startedAt}`;
}

/**
 * The live lock of another run on `backupDir`, if there is one: what a run that does not
 * take the lock itself (a run on NATS workers) checks before it starts, so that it never
 * backs up or prunes beside the embedded `vmbackup` holding it. A stale lock does not count.
 *
 * @example await otherRunsLock('/mnt/VmBackup/exports', { runId, now, me: localOrigin(), staleHours: 24 })
 */
export async function otherRunsLock(backupDir: string, opts: { runId: string; now: Date; me: Origin; staleHours: number }): Promise<(LockInfo & { file: string }) | undefined> {
  const file = path.join(backupDir, LOCK_FILE);
  const existing = await readLock(file);
  if (existing === undefined || existing.runId === opts.runId) return undefined;
  if (isStale(existing, opts.now, opts.me, opts.staleHours, pidAlive)) return undefined;
  return { ...existing, file };
}

async function readLock(file: string): Promise<LockInfo | undefined> {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as Partial<LockInfo>;
    if (typeof parsed.hostname === 'string' && typeof parsed.pid === 'number') {
      return { hostname: parsed.hostname, pid: parsed.pid, runId: String(parsed.runId ?? '?'), startedAt: String(parsed.startedAt ?? '') };
    }
    // An unreadable lock (e.g. half-written by a crash) carries no owner: treat as stale.
    return { hostname: '?', pid: -1, runId: '?', startedAt: '' };
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return undefined;
    return { hostname: '?', pid: -1, runId: '?', startedAt: '' };
  }
}
