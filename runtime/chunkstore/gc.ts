import { link, open, readdir, readFile, rename, rm, stat, unlink, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LockedError } from '../errors.js';
import { writeError, writeFileAtomic } from '../storage/atomic.js';
import { PARTIAL_SUFFIX } from '../storage/naming.js';
import { pidAlive } from '../storage/writer.js';
import { TRASH_SUFFIX, ZERO_DIGEST } from './chunks.js';
import type { ChunkStore } from './chunks.js';
import { INDEX_SUFFIX, IndexReader } from './index-file.js';
import { listPoints, pointDir, pointName } from './points.js';
import { liveWriters, WRITER_STALE_MS } from './writers.js';

/** PBS's margin: a chunk untouched for 24 h 5 min (relatime's 24 h, plus 5 min) may go. */
export const GC_SAFETY_MARGIN_MS = (24 * 60 + 5) * 60 * 1000;
/** A GC lock not refreshed for this long was left by a killed GC. */
export const GC_LOCK_STALE_MS = 60 * 60 * 1000;
const LOCK_FILE = 'gc.lock';
const REPORT_FILE = 'gc-last.json';
/**
 * `gc.lock.<host>.<pid>-<n>.partial`: a lock being written under its own name (takeLock); `n`
 * tells apart two GCs of one process (older versions wrote no `-<n>`).
 */
const LOCK_PARTIAL = /^gc\.lock\.(.+)\.(\d+)(?:-\d+)?\.partial$/;
/** Lock attempts of this process so far: the `<n>` of its partial lock names. */
let lockAttempts = 0;
const HEX64 = /^[0-9a-f]{64}$/;

export interface GcOptions {
  /** Chunks touched less than this long before the cutoff are kept. Default 24 h 5 min. */
  safetyMarginMs?: number;
  writerStaleMs?: number;
  /** Touches and stats in flight. Default 32. */
  concurrency?: number;
  signal?: AbortSignal;
}

/** What a garbage collection did; also written to `.chunkstore/gc-last.json`. */
export interface GcReport {
  startedAt: string;
  finishedAt: string;
  /** Chunks whose mtime is older than this were not touched by any point or running backup. */
  cutoff: string;
  points: number;
  /** Chunk references touched in the mark phase (repeats within a disk counted once). */
  referencesMarked: number;
  /** Referenced chunks that are missing: each with the points that need it. */
  missing: { digest: string; points: string[] }[];
  chunksKept: number;
  bytesKept: number;
  /** Unreferenced chunks set aside now (`.trash`); the next GC removes them. */
  chunksTrashed: number;
  /** Chunks set aside by an earlier GC and still unreferenced: removed now. */
  chunksRemoved: number;
  bytesRemoved: number;
  partialsRemoved: number;
  incompletePointsRemoved: string[];
  /**
   * Points whose manifest does not parse (kept, their indexes marked) or whose index cannot be
   * read. Verify names them; the operator repairs or removes them.
   */
  damagedPoints: string[];
  /** False when an unreadable index stopped the sweep: nothing was set aside or removed. */
  swept: boolean;
}

/**
 * Removes the chunks that no point references, safely beside running backups of this or any
 * other process or host sharing backup_dir. The rule (PBS's, plus a trash stage):
 *
 * 1. Every backup registers (writers.ts) and touches or writes every chunk it references,
 *    reused ones included, before its manifest.
 * 2. Mark: the GC touches every chunk referenced by every committed point (restoring any the
 *    previous GC had set aside).
 * 3. cutoff = min(GC start, start of the oldest live backup) − safety margin. Sweep: a chunk
 *    whose mtime is older than the cutoff was touched by no point and no running backup: it
 *    is renamed `<digest>.trash`. A `.trash` chunk that an earlier GC set aside (its ctime is
 *    before this GC started) and that this mark did not bring back is deleted.
 *
 * The trash stage closes the one race a cross-host store has no lock for — a backup touching
 * a chunk between the GC's stat and its unlink: that chunk is only renamed, and the backup's
 * next touch, the next GC's mark or a restore (which reads `.trash` too) brings it back.
 * Space of unreferenced chunks is thus freed by the second GC after the prune.
 *
 * Killed at any point, a GC leaves only renames and deletions of unreferenced chunks; the
 * next run redoes the rest. One GC at a time (`.chunkstore/gc.lock`; LockedError otherwise).
 *
 * @example const report = await collectGarbage(store);  // daily, after pruning
 */
export async function collectGarbage(store: ChunkStore, options: GcOptions = {}): Promise<GcReport> {
  const margin = options.safetyMarginMs ?? GC_SAFETY_MARGIN_MS;
  const concurrency = options.concurrency ?? 32;
  const lockFile = path.join(store.dir, LOCK_FILE);
  const startedAt = store.now();
  // The lock's mtime is the file server's clock at the start, which `.trash` ctimes are compared with.
  const serverStart = await takeLock(lockFile, startedAt);
  await removeDeadLockPartials(store.dir, startedAt);
  const heartbeat = setInterval(() => {
    const t = new Date(store.now());
    utimes(lockFile, t, t).catch(() => {});
  }, 60_000);
  heartbeat.unref();
  try {
    const writers = await liveWriters(store, startedAt, options.writerStaleMs ?? WRITER_STALE_MS);
    const cutoff = Math.min(startedAt, writers[0]?.startedAt ?? startedAt) - margin;
    const report: GcReport = {
      startedAt: new Date(startedAt).toISOString(),
      finishedAt: '',
      cutoff: new Date(cutoff).toISOString(),
      points: 0,
      referencesMarked: 0,
      missing: [],
      chunksKept: 0,
      bytesKept: 0,
      chunksTrashed: 0,
      chunksRemoved: 0,
      bytesRemoved: 0,
      partialsRemoved: 0,
      incompletePointsRemoved: [],
      damagedPoints: [],
      swept: false,
    };

    // Mark. A point whose manifest is damaged is not removed: its indexes are marked as found.
    const { points, incomplete } = await listPoints(store);
    report.points = points.length;
    const damaged = incomplete.filter((p) => p.hasManifest);
    report.damagedPoints = damaged.map((p) => `${pointName(p)}: ${p.reason}`);
    const toMark: { ref: (typeof points)[number] | (typeof damaged)[number]; file: string }[] = [];
    for (const p of points) for (const disk of p.manifest.disks) toMark.push({ ref: p, file: path.join(pointDir(store, p), disk.name + INDEX_SUFFIX) });
    for (const p of damaged) {
      for (const name of await readdirOrEmpty(pointDir(store, p))) if (name.endsWith(INDEX_SUFFIX)) toMark.push({ ref: p, file: path.join(pointDir(store, p), name) });
    }
    const missing = new Map<string, Set<string>>();
    const pool = new Pool(concurrency);
    // An index that cannot be read may reference any chunk: then nothing is swept.
    let unreadable = false;
    for (const { ref: p, file } of toMark) {
      options.signal?.throwIfAborted();
      let index: IndexReader;
      try {
        index = await IndexReader.open(file);
      } catch (error) {
        report.damagedPoints.push(`${pointName(p)}: ${(error as Error).message}`);
        unreadable = true;
        continue;
      }
      try {
        let previous: Buffer | undefined;
        for (let i = 0; i < index.chunkCount; i++) {
          const digest = await index.digest(i);
          if (digest.equals(ZERO_DIGEST) || previous?.equals(digest)) continue;
          previous = Buffer.from(digest);
          const hex = previous.toString('hex');
          report.referencesMarked++;
          await pool.run(async () => {
            if (!(await store.touch(hex))) {
              const who = missing.get(hex) ?? new Set<string>();
              who.add(pointName(p));
              missing.set(hex, who);
            }
          });
        }
      } finally {
        await index.close();
      }
    }
    await pool.drain();
    report.missing = [...missing].map(([digest, who]) => ({ digest, points: [...who].sort() }));

    // Sweep.
    report.swept = !unreadable;
    for (const prefix of unreadable ? [] : await readdirOrEmpty(store.chunksDir)) {
      options.signal?.throwIfAborted();
      const folder = path.join(store.chunksDir, prefix);
      for (const name of await readdirOrEmpty(folder)) {
        await pool.run(async () => {
          const file = path.join(folder, name);
          const s = await stat(file).catch(() => undefined);
          if (!s?.isFile()) return;
          if (HEX64.test(name)) {
            if (s.mtimeMs < cutoff) {
              await rename(file, file + TRASH_SUFFIX).catch(ignoreEnoent);
              report.chunksTrashed++;
            } else {
              report.chunksKept++;
              report.bytesKept += s.size;
            }
          } else if (name.endsWith(TRASH_SUFFIX) && HEX64.test(name.slice(0, -TRASH_SUFFIX.length))) {
            if (s.ctimeMs < serverStart && s.mtimeMs < cutoff) {
              await unlink(file).catch(ignoreEnoent);
              report.chunksRemoved++;
              report.bytesRemoved += s.size;
            }
          } else if (name.endsWith(PARTIAL_SUFFIX) && s.mtimeMs < cutoff) {
            await unlink(file).catch(ignoreEnoent);
            report.partialsRemoved++;
          }
        });
      }
    }
    await pool.drain();

    // Point folders left without a manifest by a killed backup or prune.
    const writing = new Set(writers.map((w) => w.what));
    for (const p of incomplete) {
      if (!p.hasManifest && p.mtimeMs < cutoff && !writing.has(pointName(p))) {
        await rm(pointDir(store, p), { recursive: true, force: true });
        report.incompletePointsRemoved.push(pointName(p));
      }
    }

    report.finishedAt = new Date(store.now()).toISOString();
    await writeFileAtomic(path.join(store.dir, REPORT_FILE), JSON.stringify(report, null, 2) + '\n');
    return report;
  } finally {
    clearInterval(heartbeat);
    await rm(lockFile, { force: true });
  }
}

/** The report of the last finished GC, if any. */
export async function lastGcReport(store: ChunkStore): Promise<GcReport | undefined> {
  try {
    return JSON.parse(await readFile(path.join(store.dir, REPORT_FILE), 'utf8')) as GcReport;
  } catch {
    return undefined;
  }
}

async function takeLock(file: string, now: number): Promise<number> {
  // The lock appears whole or not at all: its content is written and synced under a name of
  // its own, then linked into place (link fails if the lock exists). A GC killed at any moment
  // never leaves an empty lock that would name no holder and block the next GC for an hour.
  // Its own name per attempt: two GCs of one process (two prunes at once) must not write,
  // link and remove the same file.
  const mine = `${file}.${os.hostname()}.${process.pid}-${++lockAttempts}${PARTIAL_SUFFIX}`;
  const handle = await open(mine, 'w').catch((error: unknown) => {
    throw writeError(error, mine);
  });
  try {
    await handle.writeFile(JSON.stringify({ host: os.hostname(), pid: process.pid, startedAt: new Date(now).toISOString() }) + '\n');
    await handle.sync();
  } catch (error) {
    await handle.close().catch(() => {});
    await rm(mine, { force: true });
    throw writeError(error, mine);
  }
  await handle.close();
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await link(mine, file);
        return (await stat(file)).mtimeMs;
      } catch (error) {
        if ((error as { code?: string }).code !== 'EEXIST') throw writeError(error, file);
      }
      const s = await stat(file).catch(() => undefined);
      const holder = await readFile(file, 'utf8').catch(() => '');
      if (s && now - s.mtimeMs < GC_LOCK_STALE_MS && !deadOnThisHost(holder)) {
        throw new LockedError('GC_RUNNING', `another garbage collection holds ${file}: ${holder.trim()}`, { file });
      }
      await rm(file, { force: true });
    }
    throw new LockedError('GC_RUNNING', `cannot take ${file}`, { file });
  } finally {
    await rm(mine, { force: true });
  }
}

/** The lock's holder was a process of this host that no longer runs (killed). */
function deadOnThisHost(holder: string): boolean {
  try {
    const h = JSON.parse(holder) as { host?: unknown; pid?: unknown };
    return h.host === os.hostname() && typeof h.pid === 'number' && !pidAlive(h.pid);
  } catch {
    return false;
  }
}

/**
 * A GC killed between writing its lock under its own name and linking it into place leaves
 * `gc.lock.<host>.<pid>-<n>.partial`. The GC that holds the lock removes those of dead processes
 * on this host, and any other host's not touched for as long as a lock stays valid.
 */
async function removeDeadLockPartials(dir: string, now: number): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const m = LOCK_PARTIAL.exec(name);
    if (!m) continue;
    const [host, pid] = [m[1], Number(m[2])];
    const file = path.join(dir, name);
    const age = now - ((await stat(file).catch(() => undefined))?.mtimeMs ?? now);
    const dead = host === os.hostname() ? pid !== process.pid && !pidAlive(pid) : age > GC_LOCK_STALE_MS;
    if (dead) await rm(file, { force: true });
  }
}

/** At most `limit` promises at once; the first failure is rethrown. */
class Pool {
  private readonly running = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;
  constructor(private readonly limit: number) {}

  async run(job: () => Promise<void>): Promise<void> {
    if (this.failure) throw this.failure.error;
    while (this.running.size >= this.limit) await Promise.race(this.running);
    const p: Promise<void> = job()
      .catch((error) => void (this.failure ??= { error }))
      .finally(() => this.running.delete(p));
    this.running.add(p);
  }

  async drain(): Promise<void> {
    await Promise.all(this.running);
    if (this.failure) throw this.failure.error;
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return [];
    throw error;
  }
}

function ignoreEnoent(error: unknown): void {
  if ((error as { code?: string }).code !== 'ENOENT') throw error;
}
