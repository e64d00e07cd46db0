import { randomBytes } from 'node:crypto';
import { readdir, readFile, rm, stat, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeFileAtomic } from '../storage/atomic.js';
import type { ChunkStore } from './chunks.js';

/** A writer whose registration has not been refreshed for this long is taken as dead. */
export const WRITER_STALE_MS = 60 * 60 * 1000;
/** How often a live writer refreshes its registration. */
export const WRITER_HEARTBEAT_MS = 60 * 1000;

/** A running backup, as `.chunkstore/writers/<id>.json` says. */
export interface WriterInfo {
  id: string;
  host: string;
  pid: number;
  /** ms since the epoch, the writer's clock. */
  startedAt: number;
  /** What it writes, for operators (e.g. `web1/point_20261206-080000`). */
  what: string;
}

/** A registration held while a backup writes into the store; `end()` removes it. */
export interface WriterRegistration {
  readonly info: WriterInfo;
  end(): Promise<void>;
}

/**
 * Registers a backup writing into the store, before it touches or writes any chunk. A
 * garbage collection keeps every chunk touched since the oldest live writer started (see
 * gc.ts), so a backup running beside it — in this process, another one, or on another host
 * sharing the folder — never loses a chunk it reuses. A heartbeat refreshes the file's mtime;
 * a registration left by a killed process goes stale after WRITER_STALE_MS.
 */
export async function registerWriter(store: ChunkStore, what: string): Promise<WriterRegistration> {
  const info: WriterInfo = { id: `${os.hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`, host: os.hostname(), pid: process.pid, startedAt: store.now(), what };
  const file = path.join(store.dir, 'writers', `${info.id}.json`);
  await writeFileAtomic(file, JSON.stringify(info) + '\n');
  const timer = setInterval(() => {
    const t = new Date(store.now());
    utimes(file, t, t).catch(() => {});
  }, WRITER_HEARTBEAT_MS);
  timer.unref();
  return {
    info,
    end: async () => {
      clearInterval(timer);
      await rm(file, { force: true });
    },
  };
}

/** The live writers (refreshed within `staleMs`), oldest first. */
export async function liveWriters(store: ChunkStore, now: number, staleMs = WRITER_STALE_MS): Promise<WriterInfo[]> {
  const dir = path.join(store.dir, 'writers');
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return [];
    throw error;
  }
  const out: WriterInfo[] = [];
  for (const name of names) {
    if (!name.endsWith('.json')) continue;
    try {
      const file = path.join(dir, name);
      const s = await stat(file);
      if (now - s.mtimeMs > staleMs) continue;
      const info = JSON.parse(await readFile(file, 'utf8')) as WriterInfo;
      if (typeof info.startedAt === 'number') out.push(info);
    } catch {
      // Removed meanwhile: the writer ended.
    }
  }
  return out.sort((a, b) => a.startedAt - b.startedAt);
}
