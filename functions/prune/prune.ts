import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { defineFunction, subject } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { jobSubject } from '../../runtime/events.js';
import { LockedError } from '../../runtime/errors.js';
import { listFileNames } from '../../runtime/storage/files.js';
import { withFolderLock } from '../../runtime/storage/lock.js';
import { checkManifest } from '../../runtime/storage/manifest.js';
import type { Manifest } from '../../runtime/storage/manifest.js';
import { parseBackupFileName, splitPartial } from '../../runtime/storage/naming.js';
import { parseWriterTag, processStart, thisProcess, writerState } from '../../runtime/storage/writer.js';
import type { WriterState } from '../../runtime/storage/writer.js';
import { JobBase, VmRef } from '../job.js';
import { expireQuarantine, FAILED_KEEP_DAYS, quarantineSet } from './quarantine.js';
import { manifestCheck, planPointRetention, planRetention } from './retention.js';
import { ChunkStore, collectGarbage, listPoints, removePoint } from '../../runtime/chunkstore/chunkstore.js';
import type { FileEntry, ManifestCheck, RetentionPlan } from './retention.js';

/**
 * prune — keeps `maxBackups` complete backup sets in a VM's folder and deletes the older
 * ones (retention.ts decides; this only lists, checks manifests, and deletes). Understands
 * VmBackup's folders (legacy `MMDDYYYY-HHMMSS` names). Never deletes the newest complete set,
 * a protected set (the run's own), or a file that is not ours. A set whose manifest records a
 * failed verification (`verify.ok: false`, written by the verify function) is not complete.
 *
 * Safe under redelivery: it recomputes from what is on disk, so a second run deletes nothing
 * more. Can be invoked on its own for any folder (`vmbackup invoke prune --input …`).
 *
 * Subject `vmbackup.jobs.prune`.
 *
 * @example { "runId": "adhoc-1", "jobId": "vm.5c1e…", "backupDir": "/mnt/VmBackup/exports",
 *            "folder": "DEV-MYSQL", "maxBackups": 4, "vm": {"uuid": "5c1e…", "name": "DEV-MYSQL"} }
 */
export const PruneInput = JobBase.extend({
  vm: VmRef.optional(),
  backupDir: z.string().min(1),
  folder: z.string().min(1).refine((f) => !f.includes('/') && f !== '.' && f !== '..', 'folder must be one path component'),
  maxBackups: z.number().int().min(1),
  /** Stamps never to delete (the set this run just wrote). */
  protect: z.array(z.string()).default([]),
  /** Days a set that failed verification stays in `<folder>/.failed/` before it is deleted (failed_keep_days). */
  failedKeepDays: z.number().int().min(1).default(FAILED_KEEP_DAYS),
  /**
   * A delta-export: also keep `maxBackups` points of the chunk store in the folder (removing
   * older ones), then collect the store's garbage.
   */
  points: z.boolean().optional(),
});
export type PruneInput = z.infer<typeof PruneInput>;

export const Deleted = z.object({ stamp: z.string(), files: z.array(z.string()), reason: z.string() });

export const PruneOutput = PruneInput.extend({
  kept: z.array(z.string()),
  deleted: z.array(Deleted),
  /** Sets that failed verification, moved into `<folder>/.failed/<stamp>/`. */
  quarantined: z.array(z.string()).default([]),
  /** Points of the chunk store removed (stamps), with `points`. */
  prunedPoints: z.array(z.string()).default([]),
  /** The store's garbage collection after the points were pruned (absent: none ran). */
  gc: z.object({ removedChunks: z.number().int().min(0), removedBytes: z.number().int().min(0), trashedChunks: z.number().int().min(0), missingChunks: z.number().int().min(0) }).optional(),
  warnings: z.array(z.string()).default([]),
});
export type PruneOutput = z.infer<typeof PruneOutput>;

export const PruneJob = subject(jobSubject('prune'), PruneInput);

export const prune = defineFunction({
  name: 'prune',
  description: 'Keep max_backups complete backup sets of a VM; delete older and abandoned ones.',
  subject: PruneJob,
  output: PruneOutput,
  async handle(input, ctx) {
    const dir = path.join(input.backupDir, input.folder);
    const warnings: string[] = [];
    const plan = await lockedFolder(dir, input.runId, ctx, async () => {
      const files = await listFiles(dir);
      const readings = await readManifests(dir, files);
      const manifests = new Map([...readings].map(([stamp, r]) => [stamp, r.check]));
      for (const [stamp, { check }] of readings) {
        if (check.valid) continue;
        warnings.push(`${input.folder}: backup set ${stamp} ${check.failedVerification === true ? 'does not count' : 'is incomplete and does not count'} (${check.reason})`);
      }
      const now = ctx.clock.now().getTime();
      const planned = planRetention({ files, manifests, maxBackups: input.maxBackups, now, protect: input.protect, writers: partialWriters(files, now) });
      // Failed sets are moved aside, not deleted and not warned about run after run.
      const failed = planned.incomplete.filter((i) => i.set.incompleteReason === 'failed-verification' && !input.protect.includes(i.set.stamp)).map((i) => i.set);
      const aside = new Set(failed.map((s) => s.stamp));
      planned.delete = planned.delete.filter((d) => !aside.has(d.stamp) || d.reason === 'dead-writer');
      await applyDeletions(dir, planned, ctx);
      for (const set of failed) {
        const where = await quarantineSet(dir, set.stamp, set.files.filter((f) => files.some((e) => e.name === f)), ctx.clock.now());
        warnings.push(`${input.folder}: backup set ${set.stamp} failed verification: moved aside to ${where}, deleted after ${input.failedKeepDays} days`);
      }
      if (planned.keep.length > 0) {
        for (const stamp of await expireQuarantine(dir, input.failedKeepDays, ctx.clock.now())) {
          ctx.log.info(`${input.folder}: deleted the set ${stamp} that failed verification, kept aside for ${input.failedKeepDays} days`);
        }
      }
      const prunedPoints = input.points === true ? await prunePoints(input, ctx) : [];
      return { ...planned, quarantined: failed.map((s) => s.stamp), prunedPoints };
    });
    if (plan === undefined) {
      warnings.push(`${input.folder}: not pruned this time: another run kept the folder locked (the next run prunes it)`);
      return { ...input, kept: [], deleted: [], quarantined: [], prunedPoints: [], warnings };
    }
    const gc = input.points === true ? await storeGarbage(input, ctx) : undefined;
    if (gc !== undefined && gc.missingChunks > 0) {
      warnings.push(`the chunk store misses ${gc.missingChunks} chunk(s) that points reference: run vmbackup verify; the next backup of each VM concerned reads them again`);
    }
    return {
      ...input,
      prunedPoints: plan.prunedPoints,
      ...(gc !== undefined ? { gc } : {}),
      kept: plan.keep.map((s) => s.stamp),
      deleted: plan.delete.map((d) => ({ stamp: d.stamp, files: d.files, reason: d.reason })),
      quarantined: plan.quarantined,
      warnings: warnings.filter((w) => !plan.quarantined.some((s) => w.includes(`backup set ${s} does not count`))),
    };
  },
});

/** Removes the points beyond `maxBackups` (planPointRetention), oldest first; returns their stamps. */
async function prunePoints(input: PruneInput, ctx: Pick<Ctx, 'log'>): Promise<string[]> {
  const store = await ChunkStore.open(input.backupDir);
  const { points } = await listPoints(store, input.folder);
  const remove = planPointRetention(points.map((p) => p.stamp), input.maxBackups, input.protect);
  for (const stamp of remove) {
    await removePoint(store, { vmFolder: input.folder, stamp });
    ctx.log.info(`${input.folder}: removed point ${stamp} (keeping ${input.maxBackups})`);
  }
  return remove;
}

/**
 * The store's garbage collection (chunkstore/gc.ts: safe beside running backups). One GC at
 * a time: when another runs, this one is skipped (that one, or the next, frees the space).
 */
async function storeGarbage(input: PruneInput, ctx: Pick<Ctx, 'log'>): Promise<PruneOutput['gc']> {
  try {
    const report = await collectGarbage(await ChunkStore.open(input.backupDir));
    return { removedChunks: report.chunksRemoved, removedBytes: report.bytesRemoved, trashedChunks: report.chunksTrashed, missingChunks: report.missing.length };
  } catch (error) {
    if (error instanceof LockedError) {
      ctx.log.info(`${input.folder}: chunk store garbage collection skipped: ${error.message}`);
      return undefined;
    }
    throw error;
  }
}

/** A set's manifest as read: whether it makes the set count (`manifestCheck`), and its content when it parsed. */
export interface ManifestReading {
  check: ManifestCheck;
  /** Present when the manifest parsed and matches the files (even if its verification failed). */
  manifest?: Manifest;
}

/**
 * Reads and checks every manifest among `files` (a folder's listing), by stamp: what
 * `planRetention` needs to tell which sets count. Shared by prune and the gateway's
 * `GET /v1/backups`, so both count the same sets.
 *
 * @example
 *   const readings = await readManifests(dir, await listFiles(dir));
 *   planRetention({ files, manifests: new Map([...readings].map(([s, r]) => [s, r.check])), maxBackups, now });
 */
export async function readManifests(dir: string, files: readonly FileEntry[]): Promise<Map<string, ManifestReading>> {
  const out = new Map<string, ManifestReading>();
  for (const file of files) {
    const info = parseBackupFileName(file.name);
    if (info?.kind !== 'manifest') continue;
    const status = await checkManifest(dir, file.name);
    out.set(info.stamp, { check: manifestCheck(status), ...(status.valid ? { manifest: status.manifest } : {}) });
  }
  return out;
}

/**
 * Runs `fn` (list, plan, delete) under the folder's lock (runtime/storage/lock.ts), so two runs
 * never prune one folder at once; says so while it waits. Undefined when another run's live
 * prune kept the folder too long: nothing is deleted, the next run prunes.
 */
export async function lockedFolder<T>(dir: string, runId: string, ctx: Pick<Ctx, 'log' | 'signal'>, fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await withFolderLock(dir, { runId }, fn, {
      signal: ctx.signal,
      onWait: (h) => ctx.log.info(`${path.basename(dir)}: waiting for run ${h.runId} (pid ${h.pid} on ${h.hostname}) to finish pruning this folder`),
      onTakeover: (h) => ctx.log.warn(`${path.basename(dir)}: took over the prune lock of a dead run${h !== undefined ? ` (${h.runId}, pid ${h.pid} on ${h.hostname})` : ''}`),
    });
  } catch (error) {
    if (error instanceof LockedError) {
      ctx.log.warn(`${path.basename(dir)}: not pruned: ${error.message}`);
      return undefined;
    }
    throw error;
  }
}

/**
 * Whether the writer of each tagged `.partial` among `files` is alive (runtime/storage/writer.ts):
 * what `planRetention` and `planSeriesRetention` take as `writers`.
 */
export function partialWriters(files: readonly FileEntry[], now: number): Map<string, WriterState> {
  const out = new Map<string, WriterState>();
  for (const file of files) {
    const writer = splitPartial(file.name)?.writer;
    const tag = writer === undefined ? null : parseWriterTag(writer);
    if (tag !== null) out.set(file.name, writerState(tag, file.mtimeMs, now, thisProcess(), processStart));
  }
  return out;
}

/** Regular files of a folder with size and mtime; an absent folder has none. */
export async function listFiles(dir: string): Promise<FileEntry[]> {
  const files: FileEntry[] = [];
  for (const name of await listFileNames(dir)) {
    const s = await stat(path.join(dir, name)).catch(() => undefined);
    if (s?.isFile()) files.push({ name, size: s.size, mtimeMs: s.mtimeMs });
  }
  return files;
}

/** Deletes what a retention plan says, oldest first, each set's manifest first. */
export async function applyDeletions(dir: string, plan: RetentionPlan, ctx: Pick<Ctx, 'log'>): Promise<void> {
  for (const deletion of plan.delete) {
    // The manifest first: from that moment the set no longer counts, so an interrupted
    // deletion leaves an incomplete set (cleaned later), never a manifest vouching for less.
    const ordered = [...deletion.files].sort((a, b) => Number(b.endsWith('.json')) - Number(a.endsWith('.json')));
    for (const name of ordered) {
      if (name.includes('/') || name === '.' || name === '..') continue;
      await rm(path.join(dir, name), { force: true });
    }
    ctx.log.info(`${path.basename(dir)}: deleted backup ${deletion.stamp} (${deletion.reason}): ${deletion.files.join(', ')}`);
  }
}
