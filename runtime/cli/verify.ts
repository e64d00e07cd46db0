import { mkdirSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { legacyNotice } from '../../functions/verify/check.js';
import { isIncomplete, listSets } from '../../functions/verify/sets.js';
import type { SetListing } from '../../functions/verify/sets.js';
import { verify } from '../../functions/verify/verify.js';
import type { Verified } from '../../functions/verify/verify.js';
import { OPTIONS } from '../config/args.js';
import { PermanentError, UsageError, errorInfo } from '../errors.js';
import { localCtx } from '../function.js';
import type { Ctx } from '../function.js';
import { createLogger, silentLogger } from '../log.js';
import type { Logger } from '../log.js';
import { lockedFolder } from '../../functions/prune/prune.js';
import { quarantineSet } from '../../functions/prune/quarantine.js';
import { verifySeries } from '../../functions/verify/series-check.js';
import type { SeriesFileResult } from '../../functions/verify/series-check.js';
import { assertBackupDirExists } from '../storage/mounts.js';
import { listPoints, openExistingStore } from '../chunkstore/chunkstore.js';
import type { ChunkStore } from '../chunkstore/chunkstore.js';
import { POINT_PREFIX } from '../chunkstore/points.js';
import { pointLocation } from '../../functions/restore/restore-point.js';
import { parseBackupFileName, vmFolderName } from '../storage/naming.js';
import { formatBytes, formatSeconds } from '../units.js';
import type { Io } from './io.js';
import { fail } from './io.js';
import { loadCommandSettings } from './settings.js';

/**
 * `vmbackup verify [VM…|PATH…] [--latest] [--json] [settings options]` — re-reads backup sets
 * and checks them with the verify function (functions/verify), in this process; no XAPI.
 *
 * Arguments: a VM name (its folder in backup_dir, as the backup names it: every set, or the
 * newest with `--latest`); a path (anything with a `/`, or a backup file name): a set's file
 * (that set), a VM folder (its sets) or a backup_dir (every folder in it). No argument: every
 * set in backup_dir. Settings (backup_dir, base_dir, config files) load as for a backup.
 *
 * Prints one line per set — `OK`, `FAILED` with the first bad file and where it is bad,
 * `INCOMPLETE` for a set without manifest (a backup that did not finish: nothing to verify,
 * not a failure), `ERROR` when it could not be checked — then a summary; `--json` prints the
 * results instead. Each verified set's result is recorded in its manifest.
 *
 * Exit codes: 0 every set OK (or nothing to verify), 1 a set failed verification, 2 usage or
 * config error, or a set could not be checked (zstd missing, unreadable folder).
 *
 * @example
 *   vmbackup verify                       # every set in backup_dir
 *   vmbackup verify web1 db1 --latest     # the newest set of two VMs
 *   vmbackup verify /mnt/VmBackup/exports/web1/backup_20261126-083000.xva
 */
export async function verifyCommand(argv: readonly string[], io: Io): Promise<number> {
  let args: VerifyArgs;
  try {
    args = splitVerifyArgs(argv);
  } catch (error) {
    return fail(io, error);
  }
  if (args.help) {
    io.stdout.write(verifyHelp());
    return 0;
  }
  const loaded = loadCommandSettings(args.rest, io, {
    check: (l) => {
      // verify records each result in the set's manifest: it has no read-only mode.
      if (l.flags.preview) throw new UsageError('option --preview does not apply to vmbackup verify (it reads the backups and records each result in the set\'s manifest)');
    },
  });
  if (typeof loaded === 'number') return loaded;
  const { settings, flags } = loaded;

  let targets: SetTarget[];
  let scope: string;
  try {
    ({ targets, scope } = await resolveTargets(args, settings.backup_dir, io.cwd));
  } catch (error) {
    return fail(io, error);
  }

  const log = makeLogger(settings.base_dir);
  const abort = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => abort.abort(new Error(signal));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const ctx = localCtx({
    log,
    xapi: async () => {
      throw new PermanentError('NO_XAPI', 'verify reads backups only: it does not talk to XAPI');
    },
    signal: abort.signal,
  });
  const results: SetOutcome[] = [];
  let series: SeriesFileResult[] = [];
  const started = performance.now();
  try {
    for (const target of targets) {
      if (abort.signal.aborted) break;
      const outcome = await verifyOne(target, ctx, args);
      results.push(outcome);
      // A point is not moved aside: its chunks are shared, and the next backup of the VM heals them.
      if (args.quarantine && outcome.status === 'failed' && target.point !== true) outcome.quarantined = await quarantine(target, settings.failed_keep_days, ctx);
      if (!flags.json) {
        io.stdout.write(formatLine(outcome) + '\n');
        if (outcome.quarantined !== undefined) io.stdout.write(`            moved aside to ${outcome.quarantined}; deleted after ${settings.failed_keep_days} days (failed_keep_days)\n`);
        // The line says it of a VmBackup set already.
        for (const w of outcome.verified?.warnings ?? []) if (w !== legacyNotice(outcome.target.stamp)) io.stderr.write(`WARNING: ${w}\n`);
      }
    }
    // The whole backup_dir: POOL_DB and HOSTS too.
    if (args.targets.length === 0 && !abort.signal.aborted) {
      series = await verifySeries(settings.backup_dir);
      if (!flags.json) for (const r of series) io.stdout.write(`${(r.ok ? 'OK' : 'FAILED').padEnd(10)}  ${r.file}  ${r.ok ? formatSize(r.bytes) : r.error!}\n`);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    log.flush();
  }
  const summary = summarize(results, performance.now() - started, abort.signal.aborted);
  const seriesFailed = series.filter((r) => !r.ok).length;
  if (seriesFailed > 0) summary.exitCode = 1;
  if (series.length > 0) summary.line += `; POOL_DB and HOSTS: ${series.length - seriesFailed} OK, ${seriesFailed} FAILED`;
  if (flags.json) {
    io.stdout.write(JSON.stringify({ ok: summary.exitCode === 0, exitCode: summary.exitCode, scope, summary: summary.counts, sets: results.map(jsonOf), series }, null, 2) + '\n');
  } else if (results.length === 0 && series.length === 0) {
    io.stdout.write(`verify: nothing to verify in ${scope} (no backup sets)\n`);
  } else {
    io.stdout.write(summary.line + '\n');
  }
  return summary.exitCode;
}

interface VerifyArgs {
  targets: string[];
  latest: boolean;
  /** Points: check this percentage of their chunks (default 100). */
  sample?: number;
  /** Points: skip chunks found good within this many days. */
  skipVerifiedDays?: number;
  /** Move each set that fails into `<vm folder>/.failed/<stamp>/`. */
  quarantine: boolean;
  help: boolean;
  /** The settings options, for loadSettings. */
  rest: string[];
}

const TAKES_VALUE_LONG = new Set(OPTIONS.filter((o) => o.metavar).map((o) => o.long));
const TAKES_VALUE_SHORT = new Set(OPTIONS.filter((o) => o.metavar && o.short).map((o) => o.short!));
const KNOWN_SHORT = new Set(OPTIONS.filter((o) => o.short).map((o) => o.short!));

/**
 * Takes verify's own arguments (VMs, paths, `--latest`, `-h`) out of `argv`; the rest are
 * settings options for loadSettings (which reports any unknown one).
 */
export function splitVerifyArgs(argv: readonly string[]): VerifyArgs {
  const out: VerifyArgs = { targets: [], latest: false, quarantine: false, help: false, rest: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      out.targets.push(...argv.slice(i + 1));
      break;
    }
    const own = /^--(sample|skip-verified)(?:=(.*))?$/.exec(arg);
    if (own !== null) {
      const value = own[2] ?? argv[++i];
      const n = Number(value);
      if (own[1] === 'sample') {
        if (value === undefined || !(n > 0 && n <= 100)) throw new UsageError(`--sample ${value ?? ''}: a percentage of chunks, more than 0 and at most 100`, { flag: '--sample' });
        out.sample = n;
      } else {
        if (value === undefined || !(n >= 0)) throw new UsageError(`--skip-verified ${value ?? ''}: a number of days, 0 or more`, { flag: '--skip-verified' });
        out.skipVerifiedDays = n;
      }
    } else if (arg === '--latest') {
      out.latest = true;
    } else if (arg === '--quarantine') {
      out.quarantine = true;
    } else if (arg === '-h' || arg === '--help') {
      out.help = true;
    } else if (arg.startsWith('--')) {
      out.rest.push(arg);
      const name = arg.slice(2).split('=')[0]!;
      if (!arg.includes('=') && TAKES_VALUE_LONG.has(name) && i + 1 < argv.length) out.rest.push(argv[++i]!);
    } else if (arg.startsWith('-') && arg.length > 1) {
      out.rest.push(arg);
      // A cluster of short switches may end in one that takes the next argument as its value.
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j]!;
        if (!KNOWN_SHORT.has(letter)) break;
        if (TAKES_VALUE_SHORT.has(letter)) {
          if (j === arg.length - 1 && i + 1 < argv.length) out.rest.push(argv[++i]!);
          break;
        }
      }
    } else {
      out.targets.push(arg);
    }
  }
  return out;
}

/** One set to verify, or a set found incomplete. */
interface SetTarget {
  /** The VM folder. */
  dir: string;
  stamp: string;
  legacy: boolean;
  /** A set without manifest found while listing a folder: reported, not verified. */
  incomplete: boolean;
  /** A point of the chunk store (`<dir>/point_<stamp>`), not a set. */
  point?: boolean;
}

/** VM names, folders and files → the sets they stand for, in order, without repeats. */
async function resolveTargets(args: VerifyArgs, backupDir: string, cwd: string): Promise<{ targets: SetTarget[]; scope: string }> {
  const folders: string[] = [];
  const sets: SetTarget[] = [];
  const needBackupDir = args.targets.length === 0 || args.targets.some((t) => !isPath(t));
  if (needBackupDir) assertBackupDirExists(backupDir);
  if (args.targets.length === 0) folders.push(...(await subfolders(backupDir)));
  for (const target of args.targets) {
    if (!isPath(target)) {
      folders.push(...(await vmFolders(backupDir, target)));
      continue;
    }
    const full = path.resolve(cwd, target);
    const s = await stat(full).catch(() => undefined);
    if (s === undefined) throw new UsageError(`verify: ${target}: no such file or folder`, { flag: target });
    const point = pointLocation(full);
    if (point !== undefined) {
      sets.push({ dir: path.join(point.backupDir, point.ref.vmFolder), stamp: point.ref.stamp, legacy: false, incomplete: false, point: true });
      continue;
    }
    if (s.isDirectory()) {
      // A VM folder holds sets or points; a folder without any (a backup_dir) stands for its subfolders.
      if ((await listSets(full)).length > 0 || (await hasPoints(full))) folders.push(full);
      else folders.push(...(await subfolders(full)));
      continue;
    }
    const info = parseBackupFileName(path.basename(full));
    if (info === null) throw new UsageError(`verify: ${target} is not a backup file (backup_<stamp>.xva, .meta, .json, …)`, { flag: target });
    sets.push({ dir: path.dirname(full), stamp: info.stamp, legacy: info.legacy, incomplete: false });
  }
  const stores = new Map<string, ChunkStore | undefined>();
  for (const dir of folders) {
    let listed = await listSets(dir);
    if (args.latest) listed = newest(listed);
    for (const set of listed) sets.push({ dir, stamp: set.stamp, legacy: set.legacy, incomplete: isIncomplete(set) });
    // The folder's points, from the chunk store of its backup_dir (none without a store).
    const backupDir = path.dirname(dir);
    if (!stores.has(backupDir)) stores.set(backupDir, await openExistingStore(backupDir));
    const store = stores.get(backupDir);
    if (store === undefined) continue;
    const { points, incomplete } = await listPoints(store, path.basename(dir));
    const found = [...points.map((p) => ({ stamp: p.stamp, incomplete: false })), ...incomplete.map((p) => ({ stamp: p.stamp, incomplete: true }))].sort((a, b) => a.stamp.localeCompare(b.stamp));
    const chosen = args.latest ? points.slice(-1).map((p) => ({ stamp: p.stamp, incomplete: false })) : found;
    for (const p of chosen) sets.push({ dir, stamp: p.stamp, legacy: false, incomplete: p.incomplete, point: true });
  }
  const seen = new Set<string>();
  const targets = sets.filter((t) => {
    const key = `${t.dir}\0${t.point === true ? POINT_PREFIX : ''}${t.stamp}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  const scope = args.targets.length === 0 ? backupDir : args.targets.join(', ');
  return { targets, scope };
}

/** The newest set that is not incomplete (what `--latest` verifies). */
function newest(sets: SetListing[]): SetListing[] {
  const candidates = sets.filter((s) => !isIncomplete(s));
  return candidates.length === 0 ? [] : [candidates[candidates.length - 1]!];
}

/** A path, not a VM name: has a separator, or is named like a backup file. */
function isPath(arg: string): boolean {
  return arg.includes('/') || arg === '.' || arg === '..' || parseBackupFileName(arg) !== null;
}

/** A folder holding `point_<stamp>` folders: a VM folder with points. */
async function hasPoints(dir: string): Promise<boolean> {
  return (await readdir(dir, { withFileTypes: true })).some((e) => e.isDirectory() && e.name.startsWith(POINT_PREFIX));
}

async function subfolders(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  return entries
    .filter((e) => e.isDirectory())
    .map((e) => path.join(dir, e.name))
    .sort();
}

/**
 * The folders of VM `name`: its folder as the backup names it, and the `<folder>~<uuid8>`
 * folders of VMs sharing that name (the uuid is not known here, so all of them).
 */
async function vmFolders(backupDir: string, name: string): Promise<string[]> {
  const folder = vmFolderName(name, '', { shared: false });
  const shared = new RegExp(`^${folder.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}~[0-9a-f]{8}$`);
  const found = (await readdir(backupDir, { withFileTypes: true })).filter((e) => e.isDirectory() && (e.name === folder || shared.test(e.name))).map((e) => path.join(backupDir, e.name));
  if (found.length === 0) {
    throw new UsageError(`verify: no backups of VM "${name}" in ${backupDir} (no folder ${folder}); to verify a folder or file, give its path`, { flag: name });
  }
  return found.sort();
}

type Status = 'ok' | 'failed' | 'incomplete' | 'error';

interface SetOutcome {
  target: SetTarget;
  status: Status;
  verified?: Verified;
  /** Why the set could not be checked (status `error`). */
  error?: { code: string; message: string };
  /** Where `--quarantine` moved a failed set. */
  quarantined?: string;
}

/** Moves a failed set aside (functions/prune/quarantine.ts), under its folder's prune lock. */
async function quarantine(target: SetTarget, keepDays: number, ctx: Ctx): Promise<string | undefined> {
  return lockedFolder(target.dir, 'verify', ctx, async () => {
    const set = (await listSets(target.dir)).find((s) => s.stamp === target.stamp);
    const files = (set?.files ?? []).filter((f) => f.kind !== 'partial').map((f) => f.name);
    return quarantineSet(target.dir, target.stamp, files, ctx.clock.now());
  }).then((where) => {
    if (where !== undefined) ctx.log.warn(`${path.basename(target.dir)}: backup set ${target.stamp} failed verification: moved aside to ${where}; deleted after ${keepDays} days`);
    return where;
  });
}

async function verifyOne(target: SetTarget, ctx: Ctx, options: Pick<VerifyArgs, 'sample' | 'skipVerifiedDays'>): Promise<SetOutcome> {
  if (target.incomplete) return { target, status: 'incomplete' };
  try {
    const out = await verify.handle(
      verify.subject.schema.parse({
        backupDir: path.dirname(target.dir),
        folder: path.basename(target.dir),
        stamp: target.stamp,
        ...(target.point === true ? { point: true, samplePercent: options.sample ?? 100, skipVerifiedWithinMs: Math.round((options.skipVerifiedDays ?? 0) * 86_400_000) } : {}),
      }),
      ctx,
    );
    const verified = out.verified!;
    return { target, status: verified.ok ? 'ok' : 'failed', verified };
  } catch (error) {
    if (ctx.signal.aborted) return { target, status: 'error', error: { code: 'INTERRUPTED', message: 'interrupted' } };
    const info = errorInfo(error);
    ctx.log.error({ err: error }, `verify ${target.dir} ${target.stamp}: ${info.message}`);
    return { target, status: 'error', error: { code: info.code, message: info.message } };
  }
}

function label(target: SetTarget): string {
  return `${path.basename(target.dir)}/${target.point === true ? POINT_PREFIX : 'backup_'}${target.stamp}`;
}

/** Sizes as verify prints them: plain bytes say `bytes`. */
function formatSize(n: number): string {
  return formatBytes(n, { bytesUnit: 'bytes' });
}

function formatLine(o: SetOutcome): string {
  const status = o.status.toUpperCase().padEnd(10);
  const name = label(o.target);
  if (o.status === 'incomplete') return `${status}  ${name}  no manifest: a backup that did not finish (not verified; it does not count)`;
  if (o.status === 'error') return `${status}  ${name}  not checked: ${o.error!.message}`;
  const v = o.verified!;
  if (o.status === 'failed') return `${status}  ${name}  ${v.error!.message}`;
  if (v.point !== undefined) {
    const sample = v.point.samplePercent < 100 ? ` (a ${v.point.samplePercent} % sample)` : '';
    const skipped = v.point.chunksSkipped > 0 ? `, ${v.point.chunksSkipped} skipped (found good recently)` : '';
    return `${status}  ${name}  ${v.point.chunksChecked} chunks checked${sample}${skipped} in ${formatSeconds(v.ms)}`;
  }
  const legacy = v.legacy ? ' (VmBackup set: format checks only, no manifest)' : '';
  return `${status}  ${name}  ${v.files.length} files, ${formatSize(v.bytes)} in ${formatSeconds(v.ms)}${legacy}`;
}

function summarize(results: SetOutcome[], ms: number, interrupted: boolean): { line: string; exitCode: number; counts: Record<string, number> } {
  const count = (s: Status) => results.filter((r) => r.status === s).length;
  const counts = { sets: results.length, ok: count('ok'), failed: count('failed'), incomplete: count('incomplete'), errors: count('error'), bytes: 0, ms: Math.round(ms) };
  counts.bytes = results.reduce((n, r) => n + (r.verified?.bytes ?? 0), 0);
  const exitCode = counts.failed > 0 ? 1 : counts.errors > 0 || interrupted ? 2 : 0;
  const parts = [`${counts.ok} OK`, `${counts.failed} FAILED`];
  if (counts.incomplete > 0) parts.push(`${counts.incomplete} incomplete`);
  if (counts.errors > 0) parts.push(`${counts.errors} not checked`);
  const speed = ms > 0 ? `, ${formatSize(Math.round(counts.bytes / (ms / 1000)))}/s` : '';
  const pointResults = results.filter((r) => r.verified?.point !== undefined);
  const chunks = pointResults.reduce((n, r) => n + r.verified!.point!.chunksChecked, 0);
  // Points are read chunk by chunk: their count says what was checked, not bytes of files.
  const read = pointResults.length === results.filter((r) => r.verified !== undefined).length && pointResults.length > 0 ? `${chunks} chunks of points checked in ${formatSeconds(ms)}` : `${formatSize(counts.bytes)} read in ${formatSeconds(ms)}${speed}${pointResults.length > 0 ? `, ${chunks} chunks of points checked` : ''}`;
  const line = `verify: ${counts.sets} set${counts.sets === 1 ? '' : 's'}: ${parts.join(', ')}; ${read}${interrupted ? ' (interrupted)' : ''}`;
  return { line, exitCode, counts };
}

function jsonOf(o: SetOutcome): Record<string, unknown> {
  return {
    folder: path.basename(o.target.dir),
    dir: o.target.dir,
    stamp: o.target.stamp,
    legacy: o.target.legacy,
    ...(o.target.point === true ? { point: true } : {}),
    status: o.status,
    ...(o.verified ? { verified: o.verified } : {}),
    ...(o.error ? { error: o.error } : {}),
    ...(o.quarantined !== undefined ? { quarantined: o.quarantined } : {}),
  };
}

/** The JSON log file beside the backup's (`<base_dir>/logs/vmbackup.log`); the console stays for the results. */
function makeLogger(baseDir: string): Logger {
  const dir = path.join(baseDir, 'logs');
  try {
    mkdirSync(dir, { recursive: true });
  } catch {
    return silentLogger();
  }
  return createLogger({ consoleLevel: 'critical', dir, console: process.stderr, consoleErrors: process.stderr });
}

function verifyHelp(): string {
  return [
    'usage: vmbackup verify [VM…|PATH…] [--latest] [--quarantine] [--json] [-b PATH] [-d PATH]',
    '                       [--sample P] [--skip-verified DAYS] [-c FILE]',
    '',
    'Re-reads backup sets and checks them: XVA chunk checksums (also inside .xva.gz and',
    '.xva.zst), VHD structure, raw sizes against the .meta, and every file\'s size and XXH64',
    'against the manifest. The result is recorded in each set\'s manifest; a set that fails no',
    'longer counts toward max_backups. Points of the chunk store (incremental backups): every',
    'chunk they reference exists and hashes to its name, their indexes and manifest check; a',
    'bad chunk is named with the other points that share it.',
    '',
    'arguments:',
    '  VM                    a VM name: its backup sets in backup_dir',
    '  PATH                  a backup file (its set), a point folder (point_<stamp>), a VM',
    '                        folder, or a backup_dir',
    '                        (anything with a "/"; no argument: every set in backup_dir)',
    '',
    'options:',
    '  --latest              only the newest set of each VM folder',
    '  --sample P            points: check a random P % of their chunks (a cheap nightly check)',
    '  --skip-verified DAYS  points: skip chunks found good by a verify in the last DAYS days',
    '  --quarantine          move each set that fails into <vm folder>/.failed/<stamp>/:',
    '                        it counts for nothing and is deleted after failed_keep_days',
    '  --json                print the results as JSON',
    '  -b, -d, -c, ...       settings as for a backup (see vmbackup --help)',
    '',
    'Exit codes: 0 all OK (or nothing to verify), 1 a set failed, 2 usage or config error,',
    'or a set could not be checked.',
    '',
  ].join('\n');
}
