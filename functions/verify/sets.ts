import { listFileNames } from '../../runtime/storage/files.js';
import { parseBackupFileName } from '../../runtime/storage/naming.js';
import type { BackupFileInfo } from '../../runtime/storage/naming.js';

/**
 * The backup sets of a VM folder, from its file names alone (pure but for `listSets`, which
 * reads the folder). A set is every file of the folder with one stamp; see
 * runtime/storage/naming.ts for the names and functions/prune/retention.ts for when a set counts.
 *
 * @example
 *   groupSets(['backup_20261126-083000.xva', 'backup_20261126-083000.meta', 'backup_20261126-083000.json', 'notes.txt'])
 *   // [{ stamp: '20261126-083000', legacy: false, manifest: 'backup_20261126-083000.json',
 *   //    files: [ …the three infos… ], partial: false, date: 2026-11-26T08:30:00Z }]
 */
export interface SetListing {
  stamp: string;
  /** VmBackup's `MMDDYYYY-HHMMSS` stamp: no manifest exists in that form. */
  legacy: boolean;
  date: Date;
  /** The manifest's name when the folder holds one (new stamps only). */
  manifest?: string;
  /** Every file of the set, `.partial` ones included, sorted by name. */
  files: BackupFileInfo[];
  /** Some file is still `.partial`: a backup being written, or one that died. */
  partial: boolean;
}

/** A set without a manifest under a new stamp: a backup that did not finish (or is being written). */
export function isIncomplete(set: SetListing): boolean {
  return !set.legacy && set.manifest === undefined;
}

/** Groups file names into sets, oldest first. Names that are not ours are ignored. */
export function groupSets(names: readonly string[]): SetListing[] {
  const sets = new Map<string, SetListing>();
  for (const name of names) {
    const info = parseBackupFileName(name);
    if (info === null) continue;
    let set = sets.get(info.stamp);
    if (set === undefined) sets.set(info.stamp, (set = { stamp: info.stamp, legacy: info.legacy, date: info.date, files: [], partial: false }));
    set.files.push(info);
    if (info.kind === 'manifest') set.manifest = info.name;
    if (info.kind === 'partial') set.partial = true;
  }
  for (const set of sets.values()) set.files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return [...sets.values()].sort((a, b) => a.date.getTime() - b.date.getTime() || (a.stamp < b.stamp ? -1 : 1));
}

/** The sets of folder `dir` (regular files only), oldest first; none when it does not exist. */
export async function listSets(dir: string): Promise<SetListing[]> {
  return groupSets(await listFileNames(dir));
}
