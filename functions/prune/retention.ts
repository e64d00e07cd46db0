import { PermanentError } from '../../runtime/errors.js';
import type { WriterState } from '../../runtime/storage/writer.js';
import type { ManifestStatus } from '../../runtime/storage/manifest.js';
import {
  parseBackupFileName,
  parseHostBackupFileName,
  parsePoolDbFileName,
  type BackupFileInfo,
  type SeriesFileInfo,
  type StampOptions,
} from '../../runtime/storage/naming.js';

/**
 * Which backups to keep. Pure: the I/O layer lists the folder, checks the manifests, passes
 * `now`, and deletes what the plan says.
 *
 * A backup set is every file of a VM folder with one stamp: one VM's backup in one run,
 * whatever its number of disks (VmBackup counted each disk of a vdi-export as a backup —
 * defect 13, fixed). A set is complete when:
 * - new-style (`YYYYMMDD-HHMMSS`): its manifest `backup_<stamp>.json` is present and was
 *   found valid by the I/O layer (the manifest is the commit point, written last);
 * - legacy VmBackup (`MMDDYYYY-HHMMSS`, no manifest exists in that format): it holds at least
 *   one non-empty data file (`.xva`, `.xva.gz`, `.raw`, `.vhd`) together with its non-empty
 *   `.meta` (same disk for vdi-exports). VmBackup wrote the `.meta` first and removed it when
 *   the export failed, so a data file without its `.meta` is a failed export. VmBackup stamped
 *   each disk of a vdi-export separately, so its disk files form one set each, as it counted
 *   them; they age out as new sets arrive.
 *
 * Rules:
 * 1. Only complete sets count. The newest `maxBackups` complete sets (by stamp date; legacy
 *    and new sets interleave) are kept, older complete sets deleted. `maxBackups < 1` is
 *    refused, so the newest complete set is never deleted. Protected sets are never deleted.
 * 2. An incomplete set (0-byte or missing files, no or invalid manifest, `.partial` files) never
 *    counts and is deleted only when not protected and not possibly in progress, that is when
 *    either its newest file was last modified more than `staleAfterMs` ago (default 24 h), or
 *    its stamp is older than the newest complete set AND none of its files changed in the last
 *    `activeWithinMs` (default 1 h; a redelivered job may still be writing an old stamp).
 *    A set whose manifest records a failed verification never counts either, but only the
 *    second condition deletes it: when every set of a folder fails verification, they are
 *    all kept (damaged data beats none) until a good backup arrives.
 * 3. `.partial` files of a complete set (leftovers: the manifest was already written) are
 *    deleted under the same "not protected, not changed within `activeWithinMs`" guard.
 * 4. Files that are not ours (see `parseBackupFileName`) are listed in `ignored`, never touched.
 * 5. A `.partial` named after its writer (runtime/storage/writer.ts) is decided by its writer
 *    (`writers`): a dead writer's is deleted at once (`dead-writer`, even in a protected set:
 *    no one will ever rename it), a live writer's never, nor the set it belongs to
 *    (`writer-alive`). Untagged partials (earlier versions) follow rules 2 and 3.
 *
 * Single-file series (POOL_DB `metadata_*.db`, HOSTS `hosts_<host>_*.xbk` per host): see
 * {@link planSeriesRetention}.
 */

/** A directory entry as the I/O layer lists it. */
export interface FileEntry {
  name: string;
  size: number;
  mtimeMs: number;
}

/** What the I/O layer found when it read and checked a set's manifest. */
export interface ManifestCheck {
  valid: boolean;
  /**
   * The manifest is sound but records a failed verification (`verify.ok: false`): the set
   * does not count (with `valid: false`), and it is deleted only once older than the newest
   * complete set — never for its age alone, as its data may still be the best there is.
   */
  failedVerification?: boolean;
  runId?: string;
  /** Why it is invalid, for the report. */
  reason?: string;
}

/**
 * Whether a checked manifest makes its set count: the one rule, used by prune, by the
 * gateway's `GET /v1/backups` and by anything else that says which sets count. A manifest
 * counts when it parses and matches the files (`checkManifest`) and does not record a failed
 * verification; a failed one keeps its run id and says when it failed and where.
 *
 * @example
 *   manifestCheck({ valid: true, manifest: { …, runId: 'r1', verify: { at: '2026-11-26T09:00:00Z', ok: false, error: 'xvda: …' } } })
 *   // → { valid: false, failedVerification: true, runId: 'r1', reason: 'failed verification at 2026-11-26T09:00:00Z: xvda: …' }
 */
export function manifestCheck(status: ManifestStatus): ManifestCheck {
  if (!status.valid) return { valid: false, reason: status.reason };
  const { runId, verify } = status.manifest;
  if (verify?.ok === false) {
    // Counted, a set that failed verification could push the last good set out.
    return { valid: false, failedVerification: true, runId, reason: `failed verification at ${verify.at}${verify.error !== undefined ? `: ${verify.error}` : ''}` };
  }
  return { valid: true, runId };
}

export interface RetentionOptions extends StampOptions {
  maxBackups: number;
  /** Epoch milliseconds. */
  now: number;
  /** Stamps that must never be deleted (the current run's). */
  protect?: readonly string[];
  /** Incomplete sets untouched for longer than this are deleted whatever their stamp. Default 24 h. */
  staleAfterMs?: number;
  /** Files changed more recently than this may belong to a job still running. Default 1 h. */
  activeWithinMs?: number;
  /**
   * Whether the writer of each tagged `.partial` file is alive, by file name
   * (runtime/storage/writer.ts; the I/O layer asks). A dead writer's partial is deleted at once,
   * a live writer's never; untagged partials (earlier versions) keep the age rules.
   */
  writers?: ReadonlyMap<string, WriterState>;
}

export interface RetentionInput extends RetentionOptions {
  files: readonly FileEntry[];
  /** Check results by stamp, for every manifest among `files`. */
  manifests: ReadonlyMap<string, ManifestCheck>;
}

export type IncompleteReason =
  | 'no-manifest'
  | 'invalid-manifest'
  | 'failed-verification'
  | 'no-data'
  | 'empty-data'
  | 'no-meta'
  | 'partial';

export interface BackupSet {
  stamp: string;
  date: Date;
  legacy: boolean;
  complete: boolean;
  /** Why the set is incomplete (absent when complete). */
  incompleteReason?: IncompleteReason;
  /** File names, sorted. */
  files: string[];
  /** Disks with a data file (vdi-exports); empty for vm-exports. */
  disks: string[];
  bytes: number;
  newestMtimeMs: number;
  /** From the manifest check. */
  runId?: string;
  /** For series: the series the file belongs to (`pool-db`, or a host name component). */
  series?: string;
}

export type KeepReason = 'within-max-backups' | 'protected';
export type DeleteReason = 'over-max-backups' | 'incomplete-older-than-newest-complete' | 'incomplete-stale' | 'partial-leftover' | 'dead-writer';
export type IncompleteKeepReason = 'protected' | 'may-be-in-progress' | 'failed-verification' | 'writer-alive';

export interface Deletion {
  stamp: string;
  files: string[];
  reason: DeleteReason;
  series?: string;
}

/** A dead writer's partial, with its stamp's date for ordering. */
type DeadPartial = Deletion & { date: number };

export interface IncompleteSet {
  set: BackupSet;
  action: 'delete' | 'keep';
  reason: DeleteReason | IncompleteKeepReason;
}

export interface RetentionPlan {
  /** Complete sets kept, newest first. */
  keep: (BackupSet & { reason: KeepReason })[];
  /** What to delete, oldest first. Acting on it never removes the newest complete set. */
  delete: Deletion[];
  /** Every incomplete set, with what is done about it. */
  incomplete: IncompleteSet[];
  /** File names that are not ours. */
  ignored: string[];
}

const HOUR = 3_600_000;
const DEFAULT_STALE_MS = 24 * HOUR;
const DEFAULT_ACTIVE_MS = HOUR;

function checkOptions(opts: RetentionOptions): { stale: number; active: number; protect: Set<string> } {
  if (!Number.isSafeInteger(opts.maxBackups) || opts.maxBackups < 1) {
    throw new PermanentError('INVALID_RETENTION', `max_backups must be an integer >= 1, got ${opts.maxBackups}: refusing to prune`, { maxBackups: opts.maxBackups });
  }
  if (!Number.isFinite(opts.now)) throw new PermanentError('INVALID_RETENTION', 'now must be a number of epoch milliseconds');
  const stale = opts.staleAfterMs ?? DEFAULT_STALE_MS;
  const active = opts.activeWithinMs ?? DEFAULT_ACTIVE_MS;
  if (!(stale >= 0) || !(active >= 0)) throw new PermanentError('INVALID_RETENTION', 'staleAfterMs and activeWithinMs must be >= 0');
  return { stale, active, protect: new Set(opts.protect ?? []) };
}

function byDate(a: BackupSet, b: BackupSet): number {
  return a.date.getTime() - b.date.getTime() || Number(b.legacy) - Number(a.legacy) || (a.stamp < b.stamp ? -1 : a.stamp > b.stamp ? 1 : 0);
}

interface Group<F> {
  stamp: string;
  date: Date;
  legacy: boolean;
  entries: { file: FileEntry; info: F }[];
}

/** The shared decision once sets are built: keep, delete, and what to do with incomplete ones. */
function decide(
  sets: BackupSet[],
  partialLeftovers: Map<string, FileEntry[]>,
  opts: RetentionOptions,
  checked: { stale: number; active: number; protect: Set<string> },
  dead: DeadPartial[] = [],
): Omit<RetentionPlan, 'ignored'> {
  const { stale, active, protect } = checked;
  const live = (name: string) => opts.writers?.get(name) === 'live';
  const complete = sets.filter((s) => s.complete).sort(byDate).reverse();
  const keep: RetentionPlan['keep'] = [];
  const deletions: Deletion[] = [];
  complete.forEach((set, rank) => {
    if (rank < opts.maxBackups) keep.push({ ...set, reason: 'within-max-backups' });
    else if (protect.has(set.stamp)) keep.push({ ...set, reason: 'protected' });
    else deletions.push({ stamp: set.stamp, files: set.files, reason: 'over-max-backups', ...(set.series !== undefined ? { series: set.series } : {}) });
  });
  const newestComplete = complete[0];
  const kept = new Set(keep.map((s) => s.stamp));

  for (const set of complete) {
    const leftovers = partialLeftovers.get(set.stamp);
    if (!leftovers || !kept.has(set.stamp) || protect.has(set.stamp)) continue;
    const idle = leftovers.filter((f) => f.mtimeMs <= opts.now - active && !live(f.name));
    if (idle.length > 0) {
      deletions.push({ stamp: set.stamp, files: idle.map((f) => f.name).sort(), reason: 'partial-leftover', ...(set.series !== undefined ? { series: set.series } : {}) });
    }
  }

  const incomplete: IncompleteSet[] = [];
  for (const set of sets.filter((s) => !s.complete).sort(byDate)) {
    let action: IncompleteSet['action'] = 'keep';
    let reason: IncompleteSet['reason'] = set.incompleteReason === 'failed-verification' ? 'failed-verification' : 'may-be-in-progress';
    if (protect.has(set.stamp)) reason = 'protected';
    else if (set.files.some(live)) reason = 'writer-alive';
    else if (set.incompleteReason !== 'failed-verification' && set.newestMtimeMs <= opts.now - stale) {
      action = 'delete';
      reason = 'incomplete-stale';
    } else if (newestComplete && set.date.getTime() < newestComplete.date.getTime() && set.newestMtimeMs <= opts.now - active) {
      action = 'delete';
      reason = 'incomplete-older-than-newest-complete';
    }
    incomplete.push({ set, action, reason });
    if (action === 'delete') {
      deletions.push({ stamp: set.stamp, files: set.files, reason: reason as DeleteReason, ...(set.series !== undefined ? { series: set.series } : {}) });
    }
  }

  deletions.push(...dead.map(({ date: _date, ...d }) => d));
  const dateOf = new Map([...sets.map((s) => [s.stamp, s.date.getTime()] as const), ...dead.map((d) => [d.stamp, d.date] as const)]);
  deletions.sort((a, b) => dateOf.get(a.stamp)! - dateOf.get(b.stamp)! || (a.stamp < b.stamp ? -1 : 1));
  if (newestComplete && deletions.some((d) => d.stamp === newestComplete.stamp && d.reason !== 'partial-leftover' && d.reason !== 'dead-writer')) {
    // Unreachable by construction; a guard because deleting the last good backup is the one unforgivable bug.
    throw new Error(`retention: refusing to delete the newest complete set ${newestComplete.stamp}`);
  }
  return { keep, delete: deletions, incomplete };
}

function summarize<F>(group: Group<F>): Pick<BackupSet, 'stamp' | 'date' | 'legacy' | 'files' | 'bytes' | 'newestMtimeMs'> {
  return {
    stamp: group.stamp,
    date: group.date,
    legacy: group.legacy,
    files: group.entries.map((e) => e.file.name).sort(),
    bytes: group.entries.reduce((n, e) => n + e.file.size, 0),
    newestMtimeMs: Math.max(...group.entries.map((e) => e.file.mtimeMs)),
  };
}

/**
 * Plans the pruning of one VM folder. Throws when `maxBackups < 1`, or when a manifest of the
 * folder has no check result in `manifests` (the I/O layer must check every manifest it lists:
 * an unchecked one would otherwise make a good set look incomplete).
 *
 * @example
 *   planRetention({
 *     files: [{ name: 'backup_20240101-000000.xva', size: 10, mtimeMs }, { name: 'backup_20240101-000000.json', size: 1, mtimeMs }, …],
 *     manifests: new Map([['20240101-000000', { valid: true }]]),
 *     maxBackups: 4, now: Date.now(), protect: [currentStamp],
 *   }) // → { keep: [...], delete: [{ stamp, files, reason: 'over-max-backups' }], incomplete: [...], ignored: [...] }
 */
export function planRetention(input: RetentionInput): RetentionPlan {
  const checked = checkOptions(input);
  const ignored: string[] = [];
  const groups = new Map<string, Group<BackupFileInfo>>();
  const dead: DeadPartial[] = [];
  for (const file of input.files) {
    const info = parseBackupFileName(file.name, input);
    if (!info) {
      ignored.push(file.name);
      continue;
    }
    if (input.writers?.get(file.name) === 'dead') {
      dead.push({ stamp: info.stamp, files: [file.name], reason: 'dead-writer', date: info.date.getTime() });
      continue;
    }
    let g = groups.get(info.stamp);
    if (!g) groups.set(info.stamp, (g = { stamp: info.stamp, date: info.date, legacy: info.legacy, entries: [] }));
    g.entries.push({ file, info });
  }

  const sets: BackupSet[] = [];
  const partialLeftovers = new Map<string, FileEntry[]>();
  for (const g of groups.values()) {
    const data = g.entries.filter((e) => e.info.kind === 'data');
    const partials = g.entries.filter((e) => e.info.kind === 'partial');
    const disks = [...new Set(data.map((e) => e.info.disk).filter((d): d is string => d !== undefined))].sort();
    const base = { ...summarize(g), disks };
    let complete = false;
    let incompleteReason: IncompleteReason | undefined;
    let runId: string | undefined;
    if (g.legacy) {
      const metas = new Map(g.entries.filter((e) => e.info.kind === 'meta').map((e) => [e.info.disk ?? '', e.file]));
      const good = data.some((e) => e.file.size > 0 && (metas.get(e.info.disk ?? '')?.size ?? 0) > 0);
      complete = good;
      if (!good) incompleteReason = data.length === 0 ? 'no-data' : data.every((e) => e.file.size === 0) ? 'empty-data' : 'no-meta';
    } else {
      const manifest = g.entries.find((e) => e.info.kind === 'manifest');
      if (manifest) {
        const check = input.manifests.get(g.stamp);
        if (!check) {
          throw new PermanentError('MANIFEST_UNCHECKED', `retention: manifest ${manifest.file.name} was listed but not checked`, { file: manifest.file.name });
        }
        complete = check.valid;
        if (check.runId !== undefined) runId = check.runId;
        if (!complete) incompleteReason = check.failedVerification === true ? 'failed-verification' : 'invalid-manifest';
      } else {
        incompleteReason = partials.length > 0 ? 'partial' : 'no-manifest';
      }
    }
    const set: BackupSet = { ...base, complete };
    if (incompleteReason) set.incompleteReason = incompleteReason;
    if (runId !== undefined) set.runId = runId;
    sets.push(set);
    if (complete && partials.length > 0) partialLeftovers.set(g.stamp, partials.map((e) => e.file));
  }
  return { ...decide(sets, partialLeftovers, input, checked, dead), ignored: ignored.sort() };
}

export type SeriesKind = 'pool-db' | 'hosts';

export interface SeriesRetentionInput extends RetentionOptions {
  kind: SeriesKind;
  files: readonly FileEntry[];
}

/** Series key of VmBackup's `hosts_<stamp>.xbk` files, which name no host. */
export const LEGACY_HOSTS_SERIES = '(legacy)';

/**
 * Plans the pruning of a single-file series: POOL_DB (`metadata_<stamp>.db`, one series
 * `pool-db`) or HOSTS (`hosts_<host>_<stamp>.xbk`, one series per host; VmBackup's
 * `hosts_<stamp>.xbk` form the series `(legacy)`). Each file is a set; it is complete when it
 * is not `.partial` and not empty. Same rules as {@link planRetention}, applied per series;
 * every entry carries its `series`.
 *
 * @example planSeriesRetention({ kind: 'hosts', files, maxBackups: 4, now: Date.now() })
 */
export function planSeriesRetention(input: SeriesRetentionInput): RetentionPlan {
  const checked = checkOptions(input);
  const ignored: string[] = [];
  const bySeries = new Map<string, Map<string, Group<SeriesFileInfo>>>();
  const deadBySeries = new Map<string, DeadPartial[]>();
  for (const file of input.files) {
    const info = input.kind === 'pool-db' ? parsePoolDbFileName(file.name, input) : parseHostBackupFileName(file.name, input);
    if (!info) {
      ignored.push(file.name);
      continue;
    }
    const series = input.kind === 'pool-db' ? 'pool-db' : (info.host ?? LEGACY_HOSTS_SERIES);
    if (input.writers?.get(file.name) === 'dead') {
      let list = deadBySeries.get(series);
      if (!list) deadBySeries.set(series, (list = []));
      list.push({ stamp: info.stamp, files: [file.name], reason: 'dead-writer', series, date: info.date.getTime() });
      continue;
    }
    let groups = bySeries.get(series);
    if (!groups) bySeries.set(series, (groups = new Map()));
    let g = groups.get(info.stamp);
    if (!g) groups.set(info.stamp, (g = { stamp: info.stamp, date: info.date, legacy: info.legacy, entries: [] }));
    g.entries.push({ file, info });
  }

  const plan: RetentionPlan = { keep: [], delete: [], incomplete: [], ignored: ignored.sort() };
  for (const series of [...new Set([...bySeries.keys(), ...deadBySeries.keys()])].sort()) {
    const sets: BackupSet[] = [];
    const partialLeftovers = new Map<string, FileEntry[]>();
    for (const g of bySeries.get(series)?.values() ?? []) {
      const finals = g.entries.filter((e) => !e.info.partial);
      const partials = g.entries.filter((e) => e.info.partial);
      const complete = finals.some((e) => e.file.size > 0);
      const set: BackupSet = { ...summarize(g), disks: [], complete, series };
      if (!complete) set.incompleteReason = finals.length === 0 ? 'partial' : 'empty-data';
      sets.push(set);
      if (complete && partials.length > 0) partialLeftovers.set(g.stamp, partials.map((e) => e.file));
    }
    const part = decide(sets, partialLeftovers, input, checked, deadBySeries.get(series));
    plan.keep.push(...part.keep);
    plan.delete.push(...part.delete);
    plan.incomplete.push(...part.incomplete);
  }
  if (input.kind === 'hosts') ageOutLegacyHosts(plan, input.maxBackups);
  return plan;
}

/**
 * VmBackup's `hosts_<stamp>.xbk` name no host, so no new file ever joins their series and
 * they would stay forever. One ages out once every host's own series holds `maxBackups`
 * complete files newer than it: by then each host has as many backups as it is meant to keep.
 */
function ageOutLegacyHosts(plan: RetentionPlan, maxBackups: number): void {
  const hostDates = new Map<string, number[]>();
  for (const set of plan.keep) {
    if (set.series === undefined || set.series === LEGACY_HOSTS_SERIES) continue;
    let dates = hostDates.get(set.series);
    if (!dates) hostDates.set(set.series, (dates = []));
    dates.push(set.date.getTime());
  }
  if (hostDates.size === 0) return;
  const superseded = (set: BackupSet) => [...hostDates.values()].every((dates) => dates.filter((d) => d > set.date.getTime()).length >= maxBackups);
  const aged = plan.keep.filter((set) => set.series === LEGACY_HOSTS_SERIES && set.reason === 'within-max-backups' && superseded(set));
  if (aged.length === 0) return;
  plan.keep = plan.keep.filter((set) => !aged.includes(set));
  // keep is newest first; deletions go oldest first.
  plan.delete.push(...aged.reverse().map((set) => ({ stamp: set.stamp, files: set.files, reason: 'over-max-backups' as const, series: set.series })));
}

/**
 * Which points of the chunk store (a delta-export VM's, by stamp) to remove: all but the
 * newest `maxBackups` committed ones and the protected ones (the run's own). Incomplete
 * points are not given here: they never count, and the store's GC removes them. Pure.
 *
 * @example planPointRetention(['20261201-080000', '20261202-080000', '20261203-080000'], 2, []) // → ['20261201-080000']
 */
export function planPointRetention(stamps: readonly string[], maxBackups: number, protect: readonly string[]): string[] {
  const sorted = [...new Set(stamps)].sort();
  const keep = new Set([...sorted.slice(-maxBackups), ...protect]);
  return sorted.filter((s) => !keep.has(s));
}
