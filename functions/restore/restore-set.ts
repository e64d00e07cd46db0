import path from 'node:path';
import { PermanentError } from '../../runtime/errors.js';
import { parseBackupFileName } from '../../runtime/storage/naming.js';
import type { BackupFormat } from '../../runtime/storage/naming.js';

/**
 * Which file of a backup set a restore uploads, and what it is called afterwards. Pure: no
 * fs, no clock (the handler lists the folder and reads the manifest, then asks these).
 *
 * A set is named by any of its data files or by its manifest:
 *
 * | FILE                                 | restores                                         |
 * |--------------------------------------|--------------------------------------------------|
 * | `…/backup_<stamp>.xva[.gz|.zst]`     | that VM export (`--disk` is refused)             |
 * | `…/backup_<disk>_<stamp>.raw|.vhd`   | that disk (`--disk`, if given, must name it)     |
 * | `…/backup_<stamp>.json`              | the set's only data file, or the `--disk` one    |
 *
 * @example
 *   const f = parseRestoreFile('/b/web1/backup_xvdb_20240102-030405.vhd');
 *   // { dir: '/b/web1', stamp: '20240102-030405', legacy: false, kind: 'data', format: 'vhd', disk: 'xvdb', … }
 */

/**
 * The restore's input does not fit the backup or the pool: a missing or wrong `--disk`, an
 * unknown or unusable `--sr` or `--vdi`, an option for the other kind of backup, a FILE that
 * is not a backup. The operator's to fix, nothing was attempted: the CLI exits 2 (usage or
 * config error), not 1 (the restore failed or was refused). Still a PermanentError: never
 * redelivered.
 *
 * @example throw new RestoreInputError('SR_NOT_FOUND', '--sr nosuchsr: no SR has this uuid or name', { sr: 'nosuchsr' });
 */
export class RestoreInputError extends PermanentError {
  override name = 'RestoreInputError';
}

/** What FILE names. */
export interface RestoreFile {
  /** The set's folder. */
  dir: string;
  /** FILE's own name. */
  name: string;
  stamp: string;
  /** A VmBackup stamp (`MMDDYYYY-HHMMSS`): such sets have no manifest. */
  legacy: boolean;
  kind: 'data' | 'manifest';
  format?: BackupFormat;
  disk?: string;
}

/** A data file of a set. */
export interface SetDataFile {
  name: string;
  format: BackupFormat;
  disk?: string;
}

/** Reads FILE's name; throws RestoreInputError(RESTORE_BAD_FILE) naming what is wrong with it. */
export function parseRestoreFile(file: string): RestoreFile {
  if (!path.isAbsolute(file)) throw new RestoreInputError('RESTORE_BAD_FILE', `${file}: the file to restore must be given as an absolute path`, { file });
  const name = path.basename(file);
  const info = parseBackupFileName(name);
  if (info === null) {
    throw new RestoreInputError(
      'RESTORE_BAD_FILE',
      `${file}: not a file of a backup set (expected backup_<stamp>.xva[.gz|.zst], backup_<disk>_<stamp>.raw|.vhd or backup_<stamp>.json)`,
      { file },
    );
  }
  if (info.kind === 'partial') throw new RestoreInputError('RESTORE_BAD_FILE', `${file}: a .partial file is an unfinished backup, never restorable`, { file });
  if (info.kind === 'meta') throw new RestoreInputError('RESTORE_BAD_FILE', `${file}: a .meta file describes a backup; give its data file (or the set's .json)`, { file });
  return {
    dir: path.dirname(file),
    name,
    stamp: info.stamp,
    legacy: info.legacy,
    kind: info.kind,
    ...(info.format !== undefined ? { format: info.format } : {}),
    ...(info.disk !== undefined ? { disk: info.disk } : {}),
  };
}

/**
 * The data files of the set with `stamp` among a folder's names (partials and other sets
 * ignored), in name order.
 *
 * @example setDataFiles(['backup_xvda_S.raw', 'backup_xvda_S.meta', 'backup_T.xva'], 'S') // [{ name: 'backup_xvda_S.raw', format: 'raw', disk: 'xvda' }]
 */
export function setDataFiles(names: readonly string[], stamp: string): SetDataFile[] {
  const out: SetDataFile[] = [];
  for (const name of [...names].sort()) {
    const info = parseBackupFileName(name);
    if (info === null || info.kind !== 'data' || info.stamp !== stamp || info.format === undefined) continue;
    out.push({ name, format: info.format, ...(info.disk !== undefined ? { disk: info.disk } : {}) });
  }
  return out;
}

/**
 * The data file to restore: FILE itself when it is one, else the set's only one or the one of
 * `disk`. Throws RestoreInputError naming the choices when `disk` is missing or wrong, and
 * PermanentError(RESTORE_NO_DATA) when the set has no data file.
 */
export function chooseDataFile(file: RestoreFile, data: readonly SetDataFile[], disk?: string): SetDataFile {
  const vdiSet = data.some((d) => d.disk !== undefined) || file.disk !== undefined;
  if (disk !== undefined && !vdiSet && (file.kind === 'data' || data.length > 0)) {
    throw new RestoreInputError('RESTORE_BAD_DISK', `--disk ${disk}: ${file.name} is a VM export (xva); --disk chooses a disk of a vdi-export set`, { disk });
  }
  if (file.kind === 'data') {
    if (disk !== undefined && file.disk !== disk) {
      throw new RestoreInputError('RESTORE_BAD_DISK', `--disk ${disk}: ${file.name} is the backup of disk ${file.disk}; give ${disk}'s file or the set's .json`, { disk });
    }
    return { name: file.name, format: file.format!, ...(file.disk !== undefined ? { disk: file.disk } : {}) };
  }
  if (data.length === 0) throw new PermanentError('RESTORE_NO_DATA', `${file.name}: the set has no data file in ${file.dir}`, { file: file.name });
  if (disk !== undefined) {
    const found = data.find((d) => d.disk === disk);
    if (found === undefined) {
      throw new RestoreInputError('RESTORE_BAD_DISK', `--disk ${disk}: the set ${file.stamp} has no such disk (disks: ${data.map((d) => d.disk).join(', ')})`, { disk });
    }
    return found;
  }
  if (data.length > 1) {
    const disks = data.map((d) => d.disk ?? d.name);
    throw new RestoreInputError('RESTORE_BAD_DISK', `the set ${file.stamp} holds ${data.length} disks (${disks.join(', ')}): choose one with --disk`, { disks });
  }
  return data[0]!;
}

/**
 * The `.meta` that describes a data file: `backup_<stamp>.meta` for a VM export,
 * `backup_<disk>_<stamp>.meta` for a disk (VmBackup's names too).
 *
 * @example metaNameOf('20240102-030405', 'xvdb') // 'backup_xvdb_20240102-030405.meta'
 */
export function metaNameOf(stamp: string, disk?: string): string {
  return disk === undefined ? `backup_${stamp}.meta` : `backup_${disk}_${stamp}.meta`;
}

/** The manifest of a set; VmBackup's sets have none. */
export function manifestNameOf(file: RestoreFile): string | undefined {
  return file.legacy ? undefined : `backup_${file.stamp}.json`;
}

/**
 * The name_label of what a restore creates: `--name` if given; else the original's name,
 * followed by ` (restored <stamp>)` — the backup's stamp, so the copy is told apart from the
 * original and from other restores — unless `preserve` (a restore in place of the original).
 *
 * @example restoredName('web1', '20240102-030405', {}) // 'web1 (restored 20240102-030405)'
 * @example restoredName('web1', '20240102-030405', { preserve: true }) // 'web1'
 * @example restoredName('web1', '20240102-030405', { name: 'web1-test' }) // 'web1-test'
 */
export function restoredName(original: string, stamp: string, opts: { name?: string; preserve?: boolean }): string {
  if (opts.name !== undefined) return opts.name;
  return opts.preserve === true ? original : `${original} (restored ${stamp})`;
}

/** `format` as `/import_raw_vdi` spells it, or undefined for a VM export (`/import`). */
export function rawFormatOf(format: BackupFormat): 'raw' | 'vhd' | undefined {
  return format === 'raw' || format === 'vhd' ? format : undefined;
}
