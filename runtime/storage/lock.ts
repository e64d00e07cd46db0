import { open, readFile, rm, stat, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { ConfigError, LockedError } from '../errors.js';
import type { Origin } from '../function.js';
import { keepFresh, newWriterTag, parseWriterTag, pidAlive, processStart, thisProcess, WRITER_STALE_MS, writerState } from './writer.js';

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

export { pidAlive };

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

/** Name of the lock file inside a folder being pruned (a VM folder, POOL_DB, HOSTS). */
export const FOLDER_LOCK_FILE = '.vmbackup-prune.lock';

/** What a folder lock file says about its holder. */
export interface FolderLockInfo {
  /** Writer tag of the holding process (runtime/storage/writer.ts). */
  writer: string;
  hostname: string;
  pid: number;
  runId: string;
  startedAt: string;
}

/** How long a run waits for another run's prune of the same folder before it leaves it unpruned. */
export const FOLDER_LOCK_WAIT_MS = WRITER_STALE_MS + 5 * 60_000;

/**
 * Runs `fn` while holding the lock of folder `dir`, so that two runs (a cron `vmbackup` and a
 * run on NATS workers, or two NATS runs) never list and delete in one folder at once: every
 * prune of a VM folder, POOL_DB and HOSTS goes through it. The lock is `<dir>/.vmbackup-prune.lock`,
 * created with O_EXCL, naming its holder by writer tag and kept fresh by a heartbeat while held;
 * a dead holder's lock (runtime/storage/writer.ts: pid gone here, or no heartbeat for 10 minutes
 * from another host) is taken over. While a live holder has it, this waits (`onWait` is told
 * once) up to `maxWaitMs`. A folder that does not exist has nothing to prune: `fn` runs unlocked.
 *
 * @throws LockedError when a live holder kept the folder for `maxWaitMs`.
 * @example await withFolderLock('/mnt/VmBackup/exports/POOL_DB', { runId }, () => prune())
 */
export async function withFolderLock<T>(
  dir: string,
  owner: { runId: string },
  fn: () => Promise<T>,
  opts: { signal?: AbortSignal; maxWaitMs?: number; onWait?: (holder: FolderLockInfo) => void; onTakeover?: (holder: FolderLockInfo | undefined) => void } = {},
): Promise<T> {
  const file = path.join(dir, FOLDER_LOCK_FILE);
  const info: FolderLockInfo = { writer: newWriterTag(), hostname: os.hostname(), pid: process.pid, runId: owner.runId, startedAt: new Date().toISOString() };
  const deadline = Date.now() + (opts.maxWaitMs ?? FOLDER_LOCK_WAIT_MS);
  let told = false;
  for (;;) {
    opts.signal?.throwIfAborted();
    let handle;
    try {
      handle = await open(file, 'wx', 0o644);
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === 'ENOENT') return fn();
      if (code !== 'EEXIST') throw error;
    }
    if (handle !== undefined) {
      try {
        await handle.writeFile(JSON.stringify(info) + '\n');
      } finally {
        await handle.close();
      }
      const heartbeat = keepFresh((now) => utimes(file, now, now));
      try {
        return await fn();
      } finally {
        heartbeat.stop();
        const current = await readFolderLock(file);
        if (current?.info?.writer === info.writer) await rm(file, { force: true });
      }
    }
    const held = await readFolderLock(file);
    if (held === undefined) continue;
    const tag = held.info === undefined ? null : parseWriterTag(held.info.writer);
    const dead = tag === null ? Date.now() - held.mtimeMs > WRITER_STALE_MS : writerState(tag, held.mtimeMs, Date.now(), thisProcess(), processStart) === 'dead';
    if (dead) {
      opts.onTakeover?.(held.info);
      await rm(file, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      const h = held.info ?? { writer: '?', hostname: '?', pid: -1, runId: '?', startedAt: '?' };
      throw new LockedError('FOLDER_LOCKED', `${dir} is being pruned by run ${h.runId}, pid ${h.pid} on ${h.hostname}, since ${h.startedAt}`, { file, ...h });
    }
    if (!told && held.info !== undefined) {
      told = true;
      opts.onWait?.(held.info);
    }
    await delay(250, undefined, opts.signal !== undefined ? { signal: opts.signal } : {});
  }
}

async function readFolderLock(file: string): Promise<{ info?: FolderLockInfo; mtimeMs: number } | undefined> {
  try {
    const [text, s] = await Promise.all([readFile(file, 'utf8'), stat(file)]);
    try {
      const parsed = JSON.parse(text) as Partial<FolderLockInfo>;
      if (typeof parsed.writer === 'string' && typeof parsed.pid === 'number') {
        return { info: { writer: parsed.writer, hostname: String(parsed.hostname ?? '?'), pid: parsed.pid, runId: String(parsed.runId ?? '?'), startedAt: String(parsed.startedAt ?? '') }, mtimeMs: s.mtimeMs };
      }
    } catch {
      // Half-written by a crash between create and write: judged by its age alone.
    }
    return { mtimeMs: s.mtimeMs };
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return undefined;
    throw error;
  }
}
