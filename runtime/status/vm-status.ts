import type { Dirent } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { POINT_MANIFEST, POINT_PREFIX, POINT_VERIFIED, openPoint } from '../chunkstore/points.js';
import { FAILED_FOLDER } from '../../functions/prune/quarantine.js';
import { readVmFolder } from '../gateway/backups.js';
import { Manifest } from '../storage/manifest.js';
import { HOSTS_FOLDER, POOL_DB_FOLDER, parseBackupFileName, parseStamp } from '../storage/naming.js';
import { RunOutcome, runOutcome } from '../run/outcome.js';
import { JobStatus, RunHeader } from '../run/state.js';
import type { JobState } from '../run/state.js';
import type { RunStore } from '../run/store.js';
import type { RunSummary } from '../run/summary.js';

/**
 * Each VM's backup state at a glance, from what lies in backup_dir and in the run store:
 * what the status page shows and the metrics export. Disk is the truth for what can be
 * restored (sets counted as prune counts them, chunk-store points with a valid manifest);
 * the run store adds what leaves nothing on disk (failures, their errors) and how long the
 * last backup took.
 *
 * @example
 *   const reader = new StatusReader({ backupDir: '/mnt/VmBackup/exports', store });
 *   const status = await reader.read();
 *   // status.vms[0] → { vm: 'web1', uuid: '5c1e…', folder: 'web1', points: 4,
 *   //   lastSuccess: { at: '2026-12-06T08:00:00.000Z', stamp: '20261206-080000', kind: 'set', bytes: 1073741824, durationMs: 41000, runId: '…' },
 *   //   lastFailure: { at: '2026-12-05T08:03:10.000Z', runId: '…', error: 'VDI export failed: …' },
 *   //   lastVerify: { at: '2026-12-06T08:01:30.000Z', ok: true, stamp: '20261206-080000' },
 *   //   problems: [{ stamp: '20261201-080000', message: 'backup_20261201-080000.json: Unexpected end of JSON input' }],
 *   //   errors: [{ runId: '…', at: '2026-12-05T08:03:10.000Z', message: 'VDI export failed: …' }], chain: [ … ] }
 */
export const ChainEntry = z.object({
  stamp: z.string(),
  /** When the backup was taken (from its stamp, UTC). */
  date: z.string(),
  /** `set`: files of a full backup (XVA, VHD, raw); `point`: a chunk-store point (runtime/chunkstore). */
  kind: z.enum(['set', 'point']),
  /** Restorable: counts toward max_backups (a set), has a valid manifest (a point). */
  complete: z.boolean(),
  bytes: z.number().int(),
  /** Points: each disk read whole (`full`) or as changes to `base`. */
  mode: z.enum(['full', 'changes']).optional(),
  base: z.string().optional(),
  verify: z.object({ at: z.string(), ok: z.boolean(), error: z.string().optional() }).optional(),
  /** Why it does not count. */
  problem: z.string().optional(),
});
export type ChainEntry = z.infer<typeof ChainEntry>;

export const VmStatus = z.object({
  /** The VM's name, as in the pool (its manifests record it; the run store's jobs; else the folder's name). */
  vm: z.string(),
  uuid: z.string().optional(),
  /** Its folder in backup_dir; absent for a VM known only from failed runs. */
  folder: z.string().optional(),
  /** Restorable points kept: complete sets and chunk-store points with a valid manifest. */
  points: z.number().int(),
  /** The newest restorable point. */
  lastSuccess: z
    .object({
      at: z.string(),
      stamp: z.string(),
      kind: z.enum(['set', 'point']),
      bytes: z.number().int(),
      /** The job's duration in the run store, else the export's as the manifest records it. */
      durationMs: z.number().optional(),
      runId: z.string().optional(),
    })
    .optional(),
  /** The newest failed backup among the recent runs in the run store. */
  lastFailure: z.object({ at: z.string(), runId: z.string(), error: z.string() }).optional(),
  /** The newest verification of any of its backups (vmbackup verify, verify_after_backup), also of sets since moved aside into .failed/. */
  lastVerify: z.object({ at: z.string(), ok: z.boolean(), stamp: z.string(), error: z.string().optional() }).optional(),
  /** What cannot be read: a manifest unreadable or half-written, a point's manifest damaged, the folder itself. */
  problems: z.array(z.object({ stamp: z.string().optional(), message: z.string() })),
  /** Errors of this VM in the recent runs, newest first. */
  errors: z.array(z.object({ runId: z.string(), at: z.string(), message: z.string() })),
  /** Its backups on disk, newest first: sets and points, complete or not. */
  chain: z.array(ChainEntry),
});
export type VmStatus = z.infer<typeof VmStatus>;

/** A run as the status needs it: from the run store (NATS), or from the summary of the run that just ended (cron). */
export const RunRecord = z.object({
  runId: z.string(),
  status: RunHeader.shape.status,
  startedAt: z.string(),
  finishedAt: z.string().optional(),
  trigger: z.string().optional(),
  pool: z.object({ uuid: z.string(), name: z.string() }).optional(),
  outcome: RunOutcome.shape.outcome.optional(),
  exitCode: RunOutcome.shape.exitCode.optional(),
  jobs: z.array(
    z.object({
      kind: z.enum(['vm', 'pool-db', 'host-backup']),
      name: z.string(),
      vmUuid: z.string().optional(),
      folder: z.string().optional(),
      status: JobStatus,
      startedAt: z.string().optional(),
      finishedAt: z.string().optional(),
      bytes: z.number(),
      error: z.string().optional(),
    }),
  ),
});
export type RunRecord = z.infer<typeof RunRecord>;

export const StatusSnapshot = z.object({
  /** When it was read. */
  at: z.string(),
  backupDir: z.string(),
  /** backup_dir itself cannot be read (not mounted?): no VM from disk then. */
  backupDirError: z.string().optional(),
  /** By VM name. */
  vms: z.array(VmStatus),
  /** Absent without a run store (cron); `up: false` when it does not answer (NATS down). */
  runStore: z.object({ up: z.boolean(), error: z.string().optional() }).optional(),
  /** Recent runs, newest first. */
  runs: z.array(RunRecord),
});
export type StatusSnapshot = z.infer<typeof StatusSnapshot>;

/** A run and its jobs from the run store. */
export function runRecord(header: RunHeader, jobs: readonly JobState[]): RunRecord {
  const outcome = runOutcome(header, jobs);
  return {
    runId: header.runId,
    status: header.status,
    startedAt: header.startedAt,
    ...(header.finishedAt !== undefined ? { finishedAt: header.finishedAt } : {}),
    ...(header.trigger !== undefined ? { trigger: header.trigger } : {}),
    ...(header.pool !== undefined ? { pool: header.pool } : {}),
    ...(outcome !== undefined ? outcome : {}),
    jobs: jobs.map((j) => ({
      kind: j.kind,
      name: j.label,
      ...(j.vmUuid !== undefined ? { vmUuid: j.vmUuid } : {}),
      ...(j.folder !== undefined ? { folder: j.folder } : {}),
      status: j.status,
      ...(j.startedAt !== undefined ? { startedAt: j.startedAt } : {}),
      ...(j.finishedAt !== undefined ? { finishedAt: j.finishedAt } : {}),
      bytes: j.bytes,
      ...(j.error !== undefined && j.status === 'failed' ? { error: j.error.message } : {}),
    })),
  };
}

/** The run that just ended, from its summary (a cron run has no run store to read afterwards). */
export function runRecordFromSummary(summary: RunSummary): RunRecord {
  const end = summary.finishedAt ?? summary.startedAt;
  return {
    runId: summary.runId,
    status: 'finished',
    startedAt: summary.startedAt,
    finishedAt: end,
    trigger: 'cli',
    ...(summary.pool !== undefined ? { pool: summary.pool } : {}),
    outcome: summary.status,
    exitCode: summary.exitCode,
    jobs: summary.jobs.map((j) => ({
      kind: j.category === 'pool-db' ? 'pool-db' : j.category === 'host-backup' ? 'host-backup' : 'vm',
      name: j.name,
      ...(j.vmUuid !== undefined ? { vmUuid: j.vmUuid } : {}),
      ...(j.folder !== undefined ? { folder: j.folder } : {}),
      status: j.status === 'error' ? 'failed' : j.status === 'warning' ? 'success' : j.status,
      ...(j.durationMs !== undefined ? { startedAt: new Date(Date.parse(end) - j.durationMs).toISOString(), finishedAt: end } : {}),
      bytes: j.bytes,
      ...(j.status === 'error' ? { error: j.error?.message ?? 'failed' } : {}),
    })),
  };
}

/** One VM folder as read from disk (cached by StatusReader while the folder does not change). */
interface FolderStatus {
  folder: string;
  vm?: { uuid: string; name: string };
  points: number;
  lastSuccess?: NonNullable<VmStatus['lastSuccess']>;
  lastVerify?: VmStatus['lastVerify'];
  problems: VmStatus['problems'];
  chain: ChainEntry[];
}

const PointVerified = z.object({ at: z.string(), ok: z.boolean(), problems: z.array(z.object({ message: z.string() })).optional() });

/** Reads one VM folder: its sets (as prune counts them), its chunk-store points, its quarantined sets' verifications. Never throws. */
async function readFolder(backupDir: string, folder: string, subdirs: readonly string[], now: number): Promise<FolderStatus> {
  const dir = path.join(backupDir, folder);
  const out: FolderStatus = { folder, points: 0, problems: [], chain: [] };
  const verifies: NonNullable<VmStatus['lastVerify']>[] = [];
  try {
    const { sets, readings, vm } = await readVmFolder(dir, now);
    if (vm !== undefined) out.vm = vm;
    for (const set of sets) {
      const manifest = readings.get(set.stamp)?.manifest;
      out.chain.push({
        stamp: set.stamp,
        date: set.date,
        kind: 'set',
        complete: set.complete,
        bytes: set.bytes,
        ...(set.verify !== undefined ? { verify: set.verify } : {}),
        ...(!set.complete ? { problem: set.incompleteMessage ?? set.incompleteReason ?? 'incomplete' } : {}),
      });
      if (set.verify !== undefined) verifies.push({ ...set.verify, stamp: set.stamp });
      if (set.incompleteReason === 'invalid-manifest') out.problems.push({ stamp: set.stamp, message: set.incompleteMessage ?? 'the manifest is invalid' });
      if (!set.complete) continue;
      out.points += 1;
      if (out.lastSuccess === undefined || set.date > out.lastSuccess.at) {
        const exportMs = manifest?.timings.exportMs;
        out.lastSuccess = { at: set.date, stamp: set.stamp, kind: 'set', bytes: set.bytes, ...(exportMs !== undefined ? { durationMs: exportMs } : {}), ...(set.runId !== undefined ? { runId: set.runId } : {}) };
      }
    }
  } catch (error) {
    out.problems.push({ message: `${folder}: cannot be read (${errorText(error)})` });
  }
  for (const sub of subdirs) {
    if (sub.startsWith(POINT_PREFIX)) await readPoint(backupDir, folder, sub.slice(POINT_PREFIX.length), out, verifies);
  }
  if (subdirs.includes(FAILED_FOLDER)) verifies.push(...(await quarantinedVerifies(path.join(dir, FAILED_FOLDER))));
  out.chain.sort((a, b) => b.stamp.localeCompare(a.stamp));
  const last = verifies.sort((a, b) => b.at.localeCompare(a.at))[0];
  if (last !== undefined) out.lastVerify = last;
  return out;
}

async function readPoint(backupDir: string, folder: string, stamp: string, out: FolderStatus, verifies: NonNullable<VmStatus['lastVerify']>[]): Promise<void> {
  const ref = { vmFolder: folder, stamp };
  const date = parseStamp(stamp)?.date.toISOString() ?? '';
  const dir = path.join(backupDir, folder, POINT_PREFIX + stamp);
  let verify: ChainEntry['verify'];
  try {
    const v = PointVerified.safeParse(JSON.parse(await readFile(path.join(dir, POINT_VERIFIED), 'utf8')));
    if (v.success) verify = { at: v.data.at, ok: v.data.ok, ...(!v.data.ok && v.data.problems?.[0] !== undefined ? { error: v.data.problems[0].message } : {}) };
  } catch {
    // Never verified.
  }
  if (verify !== undefined) verifies.push({ ...verify, stamp });
  try {
    const point = await openPoint({ backupDir }, ref);
    const m = point.manifest;
    out.vm ??= m.vm;
    const changes = m.disks.find((d) => d.mode === 'changes');
    const bytes = m.disks.reduce((n, d) => n + d.newBytes, 0);
    out.chain.push({ stamp, date, kind: 'point', complete: true, bytes, mode: changes !== undefined ? 'changes' : 'full', ...(changes?.base !== undefined ? { base: changes.base } : {}), ...(verify !== undefined ? { verify } : {}) });
    out.points += 1;
    if (out.lastSuccess === undefined || date > out.lastSuccess.at) {
      const durationMs = Date.parse(m.createdAt) - Date.parse(date);
      out.lastSuccess = { at: date, stamp, kind: 'point', bytes, ...(Number.isFinite(durationMs) && durationMs >= 0 ? { durationMs } : {}) };
    }
  } catch (error) {
    const hasManifest = await stat(path.join(dir, POINT_MANIFEST)).then(() => true, () => false);
    const message = (error as Error).message;
    // A point without a manifest is being written (or died): it simply does not count yet.
    out.chain.push({ stamp, date, kind: 'point', complete: false, bytes: 0, problem: hasManifest ? message : `${POINT_PREFIX}${stamp}: no ${POINT_MANIFEST}: being written, or left by a crash` });
    if (hasManifest) out.problems.push({ stamp, message });
  }
}

/** The verifications recorded in the manifests of sets moved aside into `.failed/<stamp>/`. */
async function quarantinedVerifies(failedDir: string): Promise<NonNullable<VmStatus['lastVerify']>[]> {
  const out: NonNullable<VmStatus['lastVerify']>[] = [];
  for (const stamp of await readdir(failedDir).catch(() => [] as string[])) {
    const names = await readdir(path.join(failedDir, stamp)).catch(() => [] as string[]);
    for (const name of names) {
      if (parseBackupFileName(name)?.kind !== 'manifest') continue;
      try {
        const m = Manifest.safeParse(JSON.parse(await readFile(path.join(failedDir, stamp, name), 'utf8')));
        if (m.success && m.data.verify !== undefined) out.push({ at: m.data.verify.at, ok: m.data.verify.ok, stamp: m.data.stamp, ...(m.data.verify.error !== undefined ? { error: m.data.verify.error } : {}) });
      } catch {
        // A quarantined set whose manifest cannot be read has nothing to tell.
      }
    }
  }
  return out;
}

function errorText(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : (error as Error).message;
}

/** Recent runs read from the run store and how the store answered. */
export interface RunsReading {
  up: boolean;
  error?: string;
  runs: RunRecord[];
}

export interface StatusReaderOptions {
  backupDir: string;
  /** The run store (NATS); none for a cron install. */
  store?: RunStore;
  /** False while the bus knows NATS is down: the store is then not asked at all (its reads would wait for it). */
  connected?: () => boolean;
  /** Recent runs read from the store (default 20). */
  runLimit?: number;
  /** How long the store may take to answer, in ms (default 5 s): then it counts as down. */
  storeTimeoutMs?: number;
  /** A folder re-read at the latest after this long even if it seems unchanged, in ms (default 10 min). */
  maxAgeMs?: number;
  now?: () => number;
}

/**
 * A folder modified this recently is not cached: a change within the same tick of a coarse
 * file-server clock (1 s on some NFS and SMB servers) would not change its mtime again.
 */
const RACY_MS = 3_000;

interface CacheEntry {
  key: string;
  readAt: number;
  status: FolderStatus;
}

/**
 * Reads the status, remembering what it read: a VM folder is read again only when it (or one
 * of its point folders, or its `.failed/`) changed since (its mtime), so a scrape over 1,000
 * VMs × 30 backups costs about a listing of the tree. A finished run is read from the store
 * once (again when it is retried).
 */
export class StatusReader {
  private readonly folders = new Map<string, CacheEntry>();
  private readonly finished = new Map<string, { key: string; record: RunRecord }>();
  private readonly now: () => number;

  constructor(private readonly opts: StatusReaderOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** The status now; `extra.runs` adds runs the store does not hold (cron: the run that just ended). */
  async read(extra: { runs?: readonly RunRecord[] } = {}): Promise<StatusSnapshot> {
    const now = this.now();
    const [disk, runs] = await Promise.all([this.readDisk(now), this.opts.store !== undefined ? this.readRuns(this.opts.store) : undefined]);
    const all = [...(extra.runs ?? []), ...(runs?.runs ?? [])];
    return {
      at: new Date(now).toISOString(),
      backupDir: this.opts.backupDir,
      ...(disk.error !== undefined ? { backupDirError: disk.error } : {}),
      vms: mergeStatus(disk.folders, all),
      ...(runs !== undefined ? { runStore: { up: runs.up, ...(runs.error !== undefined ? { error: runs.error } : {}) } } : {}),
      runs: all.sort((a, b) => b.startedAt.localeCompare(a.startedAt)),
    };
  }

  /** The VM folders of backup_dir, each read or taken from the cache. */
  async readDisk(now: number): Promise<{ error?: string; folders: FolderStatus[] }> {
    const backupDir = this.opts.backupDir;
    let entries: Dirent[];
    try {
      entries = await readdir(backupDir, { withFileTypes: true });
    } catch (error) {
      return { error: `backup_dir ${backupDir} cannot be read (${errorText(error)}): is the share mounted?`, folders: [] };
    }
    const names = entries.filter((d) => d.isDirectory() && !d.name.startsWith('.') && d.name !== POOL_DB_FOLDER && d.name !== HOSTS_FOLDER && d.name !== 'lost+found').map((d) => d.name);
    const seen = new Set(names);
    for (const name of this.folders.keys()) if (!seen.has(name)) this.folders.delete(name);
    const out: FolderStatus[] = new Array(names.length);
    let next = 0;
    // A few folders at a time: a file server answers several requests at once.
    const worker = async () => {
      while (next < names.length) {
        const i = next++;
        out[i] = await this.folder(names[i]!, now);
      }
    };
    await Promise.all(Array.from({ length: Math.min(32, names.length) }, worker));
    return { folders: out.filter((f) => f.chain.length > 0 || f.problems.length > 0) };
  }

  private async folder(folder: string, now: number): Promise<FolderStatus> {
    const dir = path.join(this.opts.backupDir, folder);
    const cached = this.folders.get(folder);
    const maxAge = this.opts.maxAgeMs ?? 600_000;
    if (cached !== undefined && now - cached.readAt < maxAge) {
      const key = await this.key(dir, cached.status.chain, cached.key.includes(`|${FAILED_FOLDER}`));
      if (key !== undefined && key.key === cached.key) return cached.status;
    }
    let subdirs: string[] = [];
    let dirMtime = now;
    try {
      dirMtime = (await stat(dir)).mtimeMs;
      subdirs = (await readdir(dir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
    } catch {
      // readFolder says what is wrong with it.
    }
    const status = await readFolder(this.opts.backupDir, folder, subdirs, now);
    const key = await this.key(dir, status.chain, subdirs.includes(FAILED_FOLDER));
    if (key !== undefined && now - Math.max(dirMtime, key.newest) > RACY_MS && key.newest <= now) {
      this.folders.set(folder, { key: key.key, readAt: now, status });
    } else {
      this.folders.delete(folder);
    }
    return status;
  }

  /** What tells whether a folder changed: its mtime, its point folders', its .failed/'s. */
  private async key(dir: string, chain: readonly ChainEntry[], failed: boolean): Promise<{ key: string; newest: number } | undefined> {
    try {
      const parts: string[] = [];
      let newest = 0;
      const add = async (name: string, p: string) => {
        const m = (await stat(p)).mtimeMs;
        newest = Math.max(newest, m);
        parts.push(`${name}:${m}`);
      };
      await add('', dir);
      for (const c of chain) if (c.kind === 'point') await add(c.stamp, path.join(dir, POINT_PREFIX + c.stamp));
      if (failed) await add(`|${FAILED_FOLDER}`, path.join(dir, FAILED_FOLDER));
      return { key: parts.join('/'), newest };
    } catch {
      return undefined;
    }
  }

  /** Recent runs; `up: false` (and no runs) when the store does not answer. */
  async readRuns(store: RunStore): Promise<RunsReading> {
    if (this.opts.connected?.() === false) return { up: false, error: 'NATS is not reachable (the connection is down)', runs: [] };
    const timeoutMs = this.opts.storeTimeoutMs ?? 5_000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`the run store did not answer within ${timeoutMs / 1000} s`)), timeoutMs);
    });
    try {
      return { up: true, runs: await Promise.race([this.runsFrom(store), timeout]) };
    } catch (error) {
      return { up: false, error: (error as Error).message, runs: [] };
    } finally {
      clearTimeout(timer);
    }
  }

  private async runsFrom(store: RunStore): Promise<RunRecord[]> {
    const headers = await store.list(this.opts.runLimit ?? 20);
    const live = new Set(headers.map((h) => h.runId));
    for (const id of this.finished.keys()) if (!live.has(id)) this.finished.delete(id);
    return Promise.all(
      headers.map(async (h) => {
        const key = `${h.status}:${h.finishedAt ?? ''}:${h.retries ?? 0}`;
        const known = this.finished.get(h.runId);
        if (known !== undefined && known.key === key) return known.record;
        const record = runRecord(h, await store.allJobs(h.runId));
        if (h.status === 'finished') this.finished.set(h.runId, { key, record });
        return record;
      }),
    );
  }
}

/** Errors kept per VM. */
const ERRORS_KEPT = 5;

/**
 * Each VM's status from its folders on disk and the recent runs (newest first). A run's job
 * belongs to the folder it writes to; a VM that only failed (no folder yet) is listed by name.
 */
export function mergeStatus(folders: readonly FolderStatus[], runs: readonly RunRecord[]): VmStatus[] {
  const byKey = new Map<string, VmStatus>();
  for (const f of folders) {
    byKey.set(`folder:${f.folder}`, {
      vm: f.vm?.name ?? f.folder,
      ...(f.vm !== undefined ? { uuid: f.vm.uuid } : {}),
      folder: f.folder,
      points: f.points,
      ...(f.lastSuccess !== undefined ? { lastSuccess: { ...f.lastSuccess } } : {}),
      ...(f.lastVerify !== undefined ? { lastVerify: f.lastVerify } : {}),
      problems: f.problems,
      errors: [],
      chain: f.chain,
    });
  }
  const jobs = runs.flatMap((run) => run.jobs.filter((j) => j.kind === 'vm').map((job) => ({ run, job }))).sort((a, b) => at(b).localeCompare(at(a)));
  for (const { run, job } of jobs) {
    const key = job.folder !== undefined && byKey.has(`folder:${job.folder}`) ? `folder:${job.folder}` : `name:${job.name}`;
    let vm = byKey.get(key);
    if (vm === undefined) {
      vm = { vm: job.name, ...(job.vmUuid !== undefined ? { uuid: job.vmUuid } : {}), points: 0, problems: [], errors: [], chain: [] };
      byKey.set(key, vm);
    }
    if (vm.folder !== undefined && vm.uuid === undefined && vm.vm === vm.folder) vm.vm = job.name; // a folder VmBackup wrote: the pool's name
    const when = at({ run, job });
    if (job.status === 'failed') {
      const error = job.error ?? 'failed';
      vm.lastFailure ??= { at: when, runId: run.runId, error };
      if (vm.errors.length < ERRORS_KEPT) vm.errors.push({ runId: run.runId, at: when, message: error });
    }
    if (job.status === 'success' && vm.lastSuccess?.runId === run.runId && job.startedAt !== undefined && job.finishedAt !== undefined) {
      vm.lastSuccess.durationMs = Date.parse(job.finishedAt) - Date.parse(job.startedAt);
    }
  }
  return [...byKey.values()].sort((a, b) => a.vm.localeCompare(b.vm) || (a.folder ?? '').localeCompare(b.folder ?? ''));
}

function at({ run, job }: { run: RunRecord; job: RunRecord['jobs'][number] }): string {
  return job.finishedAt ?? run.finishedAt ?? job.startedAt ?? run.startedAt;
}
