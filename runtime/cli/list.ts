import { listBackups } from '../gateway/backups.js';
import type { BackupSetInfo, BackupsResponse } from '../gateway/backups.js';
import { commandHelp, takePositionals } from '../config/args.js';
import { ConfigError } from '../errors.js';
import { formatBytes } from '../units.js';
import { describePoints, openExistingStore } from '../chunkstore/chunkstore.js';
import type { PointInfo } from '../chunkstore/chunkstore.js';
import type { Io } from './io.js';
import { VERSION, fail } from './io.js';
import { loadCommandSettings } from './settings.js';

/**
 * `vmbackup list [VM] [--json]` — the backup sets on disk, per VM folder (and POOL_DB and
 * HOSTS without VM): time, size, whether each counts, its last verification and when, its
 * files; then the VM's points of the chunk store (stamp, disks and sizes, full or changes,
 * bytes it added to the store, last verification), as `points` in the JSON. Reads backup_dir only (no pool, no NATS), with the same code as prune and the
 * gateway's `GET /v1/backups`, so what it calls complete is what counts toward max_backups.
 * `--json` prints that endpoint's document. Exit 0; 2 on a usage or config error, or a
 * backup_dir that cannot be read.
 *
 * @example
 *   vmbackup list web1
 *   // web1 (5c1e…)
 *   //   20261126-083000  2026-11-26 08:30:00Z  1.0 GiB  complete  verified OK at 2026-11-26T08:41:02Z
 *   //     backup_20261126-083000.xva, backup_20261126-083000.meta, backup_20261126-083000.json
 */
export async function listCommand(argv: readonly string[], io: Io): Promise<number> {
  let args: { positionals: string[]; options: string[] };
  try {
    args = takePositionals(argv, { command: 'vmbackup list', takes: 'one VM', max: 1 });
  } catch (error) {
    return fail(io, error);
  }
  const loaded = loadCommandSettings(args.options, io, { command: 'list', help: () => commandHelp('list', { version: VERSION }), warnings: false });
  if (typeof loaded === 'number') return loaded;
  const { settings, flags } = loaded;
  const vm = args.positionals[0];
  let listed: Listing;
  try {
    listed = await listBackups(settings.backup_dir, { now: Date.now(), ...(vm !== undefined ? { vm } : {}) });
    await addPoints(listed, settings.backup_dir, vm);
  } catch (error) {
    return fail(io, new ConfigError((error as Error).message, { key: 'backup_dir' }));
  }
  if (flags.json) {
    io.stdout.write(JSON.stringify(listed, null, 2) + '\n');
    return 0;
  }
  const lines: string[] = [];
  for (const folder of listed.vms) {
    lines.push(folder.vm !== undefined && folder.vm.name !== folder.folder ? `${folder.folder} (${folder.vm.name}, ${folder.vm.uuid})` : folder.vm !== undefined ? `${folder.folder} (${folder.vm.uuid})` : folder.folder);
    for (const set of folder.sets) lines.push(...setLines(set));
    for (const point of folder.points ?? []) lines.push(...pointLines(point));
  }
  if (listed.poolDb.length > 0) {
    lines.push('POOL_DB');
    for (const set of listed.poolDb) lines.push(...setLines(set));
  }
  for (const host of listed.hosts) {
    lines.push(`HOSTS ${host.host}`);
    for (const set of host.sets) lines.push(...setLines(set));
  }
  if (lines.length === 0) lines.push(vm !== undefined ? `no backups of ${vm} in ${listed.backupDir}` : `no backups in ${listed.backupDir}`);
  io.stdout.write(lines.join('\n') + '\n');
  return 0;
}

/** `GET /v1/backups`'s document, with each VM folder's points. */
type Listing = Omit<BackupsResponse, 'vms'> & { vms: (BackupsResponse['vms'][number] & { points?: PointInfo[] })[] };

/**
 * The points of the chunk store (incremental backups) beside the sets: each VM folder's
 * `points`, newest first (a folder with points only is added). Nothing without a store.
 */
async function addPoints(listed: Listing, backupDir: string, vm: string | undefined): Promise<void> {
  const store = await openExistingStore(backupDir);
  if (store === undefined) return;
  for (const [folder, found] of await describePoints(store)) {
    if (vm !== undefined && vm !== folder && vm !== found.vm?.name) continue;
    let entry = listed.vms.find((v) => v.folder === folder);
    if (entry === undefined) {
      entry = { folder, ...(found.vm !== undefined ? { vm: found.vm } : {}), sets: [] };
      listed.vms.push(entry);
    }
    entry.points = found.points;
  }
  listed.vms.sort((a, b) => a.folder.localeCompare(b.folder));
}

/** One point: a line of facts, then its disks. */
function pointLines(point: PointInfo): string[] {
  const when = point.date.replace('T', ' ').replace(/\.\d{3}Z$/, 'Z');
  if (!point.complete) return [`  point ${point.stamp}  ${when}  does not count (${point.incompleteReason ?? 'incomplete'})`];
  const kind = point.kind === 'changes' ? `changes since ${point.base ?? 'an earlier point'}` : 'full';
  const verified = point.verify === undefined ? 'not verified' : point.verify.ok ? `verified OK at ${point.verify.at}` : `FAILED verification at ${point.verify.at}`;
  return [
    `  point ${point.stamp}  ${when}  ${formatBytes(point.bytes)}  ${kind}, ${formatBytes(point.storedBytes)} stored  complete  ${verified}`,
    `    ${point.disks.map((d) => `${d.name} ${formatBytes(d.size)}${d.mode === 'changes' ? ' (changes)' : ''}`).join(', ')}`,
  ];
}

/** One set: a line of facts, then its files. */
function setLines(set: BackupSetInfo): string[] {
  const when = set.date.replace('T', ' ').replace(/\.\d{3}Z$/, 'Z');
  const counts = set.complete ? 'complete' : `does not count (${set.incompleteMessage ?? set.incompleteReason ?? 'incomplete'})`;
  const verified = set.verify === undefined ? 'not verified' : set.verify.ok ? `verified OK at ${set.verify.at}` : `FAILED verification at ${set.verify.at}`;
  const legacy = set.legacy ? '  (VmBackup)' : '';
  return [`  ${set.stamp}  ${when}  ${formatBytes(set.bytes)}  ${counts}  ${verified}${legacy}`, `    ${set.files.map((f) => f.name).join(', ')}`];
}
