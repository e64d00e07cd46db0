import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { listFiles, readManifests } from '../../functions/prune/prune.js';
import type { ManifestReading } from '../../functions/prune/prune.js';
import { planRetention, planSeriesRetention } from '../../functions/prune/retention.js';
import type { BackupSet, FileEntry, IncompleteReason, RetentionPlan } from '../../functions/prune/retention.js';
import { HOSTS_FOLDER, POOL_DB_FOLDER, parseBackupFileName, parseHostBackupFileName, parsePoolDbFileName } from '../storage/naming.js';
import { HttpError } from './errors.js';

/**
 * What `GET /v1/backups` answers: the backup sets found in backup_dir, read with the same
 * code as prune (runtime/storage/naming.ts, `readManifests` in functions/prune/prune.ts,
 * functions/prune/retention.ts), so what is listed as complete is exactly what counts toward
 * max_backups: a set whose manifest records a failed `vmbackup verify` is not complete.
 *
 * @example
 *   { "backupDir": "/mnt/VmBackup/exports",
 *     "vms": [{ "folder": "web1", "vm": {"uuid": "…", "name": "web1"}, "sets": [
 *       { "stamp": "20261126-083000", "date": "2026-11-26T08:30:00.000Z", "legacy": false,
 *         "complete": true, "mode": "vm", "bytes": 1073743000, "formats": ["xva"], "disks": [],
 *         "runId": "20261126-083000-7f3a", "verify": { "at": "2026-11-26T09:12:00Z", "ok": true },
 *         "files": [{ "name": "backup_20261126-083000.xva", "size": 1073741824, "kind": "data", "format": "xva" }, …] },
 *       { "stamp": "20261125-083000", …, "complete": false, "incompleteReason": "failed-verification",
 *         "incompleteMessage": "failed verification at 2026-11-26T09:20:00Z: backup_20261125-083000.xva: chunk Ref:3/00000042 fails its XXH64 checksum at byte 44107776",
 *         "verify": { "at": "2026-11-26T09:20:00Z", "ok": false, "error": "backup_20261125-083000.xva: chunk Ref:3/00000042 …" }, … }] }],
 *     "poolDb": [ { "stamp": …, "files": [{ "name": "metadata_….db", "kind": "data", "format": "db", … }] } ],
 *     "hosts": [ { "host": "xcp1", "sets": [ … ] } ] }
 */
export const BackupFile = z.object({
  name: z.string(),
  size: z.number().int(),
  /** `data`, `meta` (VmBackup's .meta), `manifest` (the set's commit point), `partial` (being written, or left over). */
  kind: z.enum(['data', 'meta', 'manifest', 'partial']),
  /** Data files: `xva`, `xva.gz`, `xva.zst`, `raw`, `vhd`, `db`, `xbk`. */
  format: z.string().optional(),
  disk: z.string().optional(),
});

export const BackupSetInfo = z.object({
  stamp: z.string(),
  /** When the set was made (UTC; VmBackup's stamps are read as UTC). */
  date: z.string(),
  /** Made by VmBackup (`MMDDYYYY-HHMMSS`), not by vmbackup. */
  legacy: z.boolean(),
  complete: z.boolean().describe('Counts toward max_backups, as prune counts it: a valid manifest that does not record a failed verification (VmBackup sets: data with its .meta).'),
  incompleteReason: z
    .string()
    .optional()
    .describe('Why the set does not count: no-manifest, partial, invalid-manifest, failed-verification, no-data, empty-data, no-meta.'),
  incompleteMessage: z.string().optional().describe('The same in words: what is wrong with the manifest, or when verification failed and where.'),
  verify: z
    .object({
      at: z.string().describe('When the set was verified (ISO 8601).'),
      ok: z.boolean(),
      error: z.string().optional().describe('The first problem found: the file, and where in it.'),
    })
    .optional()
    .describe('The last verification of the set (vmbackup verify, verify_after_backup), as its manifest records it; absent when never verified.'),
  /** From the manifest: whole VM (`vm`, XVA) or chosen disks (`vdi`). */
  mode: z.enum(['vm', 'vdi']).optional(),
  runId: z.string().optional(),
  bytes: z.number().int(),
  formats: z.array(z.string()),
  disks: z.array(z.string()),
  files: z.array(BackupFile),
});
export type BackupSetInfo = z.infer<typeof BackupSetInfo>;

export const VmBackups = z.object({
  folder: z.string(),
  /** From the newest valid manifest; absent for folders VmBackup alone wrote. */
  vm: z.object({ uuid: z.string(), name: z.string() }).optional(),
  /** Newest first. */
  sets: z.array(BackupSetInfo),
});

export const BackupsResponse = z
  .object({
    backupDir: z.string(),
    vms: z.array(VmBackups),
    /** POOL_DB/metadata_<stamp>.db, newest first. */
    poolDb: z.array(BackupSetInfo),
    /** HOSTS/hosts_<host>_<stamp>.xbk, per host, newest first. */
    hosts: z.array(z.object({ host: z.string(), sets: z.array(BackupSetInfo) })),
  })
  .meta({ description: 'Backup sets in backup_dir.' });
export type BackupsResponse = z.infer<typeof BackupsResponse>;

/**
 * Scans backup_dir. With `vm`, only the folders of that VM (by folder name or by the VM name
 * its manifests record), and no pool DB or host backups.
 */
export async function listBackups(backupDir: string, opts: { now: number; vm?: string }): Promise<BackupsResponse> {
  let folders: string[];
  try {
    folders = (await readdir(backupDir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name).sort();
  } catch (error) {
    throw new HttpError(503, 'BACKUP_DIR_UNAVAILABLE', `backup_dir ${backupDir} cannot be read (${(error as { code?: string }).code ?? 'error'}): is the share mounted?`);
  }
  const out: BackupsResponse = { backupDir, vms: [], poolDb: [], hosts: [] };
  for (const folder of folders) {
    const { files, sets, vm } = await readVmFolder(path.join(backupDir, folder), opts.now);
    const sizes = new Map(files.map((f) => [f.name, f.size]));
    if (sets.length > 0 && (opts.vm === undefined || opts.vm === folder || opts.vm === vm?.name)) {
      out.vms.push({ folder, ...(vm !== undefined ? { vm } : {}), sets });
    }
    if (opts.vm !== undefined) continue;
    if (folder === POOL_DB_FOLDER) {
      out.poolDb = allSets(planSeriesRetention({ kind: 'pool-db', files, maxBackups: Number.MAX_SAFE_INTEGER, now: opts.now })).map((s) => seriesSet(s, sizes, 'db'));
    }
    if (folder === HOSTS_FOLDER) {
      const plan = planSeriesRetention({ kind: 'hosts', files, maxBackups: Number.MAX_SAFE_INTEGER, now: opts.now });
      const byHost = new Map<string, BackupSetInfo[]>();
      for (const s of allSets(plan)) {
        const host = s.series ?? '';
        byHost.set(host, [...(byHost.get(host) ?? []), seriesSet(s, sizes, 'xbk')]);
      }
      out.hosts = [...byHost.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([host, sets]) => ({ host, sets }));
    }
  }
  return out;
}

/** One VM folder as read for {@link readVmFolder}. */
export interface VmFolderReading {
  /** Its regular files (size, mtime). */
  files: FileEntry[];
  /** Its manifests, by stamp. */
  readings: Map<string, ManifestReading>;
  /** Complete and incomplete sets, newest first. */
  sets: BackupSetInfo[];
  /** From the newest valid manifest; absent for folders VmBackup alone wrote. */
  vm?: { uuid: string; name: string };
}

/**
 * The backup sets of one VM folder, as `GET /v1/backups` lists them and prune counts them:
 * also what the status page and the metrics read (runtime/status/vm-status.ts). Throws when
 * the folder cannot be read (EACCES, ENOTDIR); an absent folder has no sets.
 */
export async function readVmFolder(dir: string, now: number): Promise<VmFolderReading> {
  const files = await listFiles(dir);
  const readings = await readManifests(dir, files);
  const manifests = new Map([...readings].map(([stamp, r]) => [stamp, r.check]));
  const plan = planRetention({ files, manifests, maxBackups: Number.MAX_SAFE_INTEGER, now });
  const sizes = new Map(files.map((f) => [f.name, f.size]));
  const sets = allSets(plan).map((s) => vmSet(s, sizes, readings.get(s.stamp)));
  const newest = [...readings.values()].flatMap((r) => (r.manifest !== undefined ? [r.manifest] : [])).sort((a, b) => b.stamp.localeCompare(a.stamp))[0];
  return { files, readings, sets, ...(newest !== undefined ? { vm: newest.vm } : {}) };
}

/** Complete and incomplete sets, newest first. */
function allSets(plan: RetentionPlan): BackupSet[] {
  return [...plan.keep, ...plan.incomplete.map((i) => i.set)].sort((a, b) => b.date.getTime() - a.date.getTime() || b.stamp.localeCompare(a.stamp));
}

/** Why a set does not count, in words, when no manifest check says more. */
const INCOMPLETE_MESSAGES: Record<IncompleteReason, string> = {
  'no-manifest': 'no manifest: a backup that did not finish, or is being written',
  partial: 'files still being written (.partial): a backup in progress, or one that died',
  'invalid-manifest': 'the manifest is invalid',
  'failed-verification': 'failed verification',
  'no-data': 'no data file',
  'empty-data': 'its data files are empty',
  'no-meta': 'a data file without its .meta: VmBackup removed it when the export failed',
};

function base(set: BackupSet, reading?: ManifestReading): Omit<BackupSetInfo, 'files' | 'formats'> {
  const verify = reading?.manifest?.verify;
  return {
    stamp: set.stamp,
    date: set.date.toISOString(),
    legacy: set.legacy,
    complete: set.complete,
    ...(set.incompleteReason !== undefined
      ? { incompleteReason: set.incompleteReason, incompleteMessage: reading?.check.reason ?? INCOMPLETE_MESSAGES[set.incompleteReason] }
      : {}),
    ...(set.runId !== undefined ? { runId: set.runId } : {}),
    ...(verify !== undefined ? { verify: { at: verify.at, ok: verify.ok, ...(verify.error !== undefined ? { error: verify.error } : {}) } } : {}),
    bytes: set.bytes,
    disks: set.disks,
  };
}

function vmSet(set: BackupSet, sizes: Map<string, number>, reading: ManifestReading | undefined): BackupSetInfo {
  const files = set.files.map((name) => {
    const info = parseBackupFileName(name)!;
    return {
      name,
      size: sizes.get(name) ?? 0,
      kind: info.kind,
      ...(info.format !== undefined ? { format: info.format } : {}),
      ...(info.disk !== undefined ? { disk: info.disk } : {}),
    };
  });
  const formats = [...new Set(files.filter((f) => f.kind === 'data' && f.format !== undefined).map((f) => f.format!))].sort();
  return { ...base(set, reading), ...(reading?.manifest !== undefined ? { mode: reading.manifest.mode } : {}), formats, files };
}

function seriesSet(set: BackupSet, sizes: Map<string, number>, format: 'db' | 'xbk'): BackupSetInfo {
  const files = set.files.map((name) => {
    const info = format === 'db' ? parsePoolDbFileName(name) : parseHostBackupFileName(name);
    return { name, size: sizes.get(name) ?? 0, kind: info?.partial === true ? ('partial' as const) : ('data' as const), format };
  });
  return { ...base(set), formats: files.some((f) => f.kind === 'data') ? [format] : [], files };
}
