import { access, constants as fsConstants } from 'node:fs/promises';
import { constants } from 'node:os';
import { duplicateNames, selectVms } from '../../functions/plan/select.js';
import type { SelectionSources } from '../../functions/plan/select.js';
import { matchDisks, vmDisks } from '../../functions/snapshot/snapshot.js';
import { previewDiskReads } from '../../functions/delta-export/delta-export.js';
import { selectOptions, selectionError } from '../../functions/plan/plan.js';
import type { RunOptions } from '../../functions/plan/plan.js';
import { helpText } from '../config/args.js';
import type { LoadedSettings } from '../config/load.js';
import { formatPreview } from '../config/preview.js';
import type { PreviewSelection } from '../config/preview.js';
import type { Settings } from '../config/schema.js';
import { ConfigError, errorInfo, isFatalToCommand } from '../errors.js';
import { localOrigin, systemClock } from '../function.js';
import { captureConsole } from '../log.js';
import type { Logger } from '../log.js';
import { hookConfigFromSettings, hooksFromConfig } from '../hooks/settings.js';
import { runEmbedded } from '../run/embedded.js';
import { newRunId } from '../run/start.js';
import { formatSummary } from '../run/summary.js';
import { reportTargets, sendReports } from '../report/report.js';
import type { ReportTargets } from '../report/report.js';
import { updateMetricsTextfile } from '../status/textfile.js';
import type { RunSummary } from '../run/summary.js';
import { acquireLock } from '../storage/lock.js';
import type { Lock, LockInfo } from '../storage/lock.js';
import { assertBackupDirExists, assertShareMounted } from '../storage/mounts.js';
import { vmFolderName } from '../storage/naming.js';
import type { XapiClient } from '../xapi/client.js';
import type { Io } from './io.js';
import { VERSION, fail, writeFatalJson } from './io.js';
import { TerminalProgress, progressWanted } from './progress-display.js';
import { commandLogger, loadCommandSettings } from './settings.js';
import { connectXapi, xapiPassword } from './xapi.js';

/**
 * `vmbackup [flags]` — VmBackup's command: back up the pool from this machine on the
 * in-process runtime, or `--preview` what would be backed up. Exit codes: 0 all backed up
 * (warnings allowed), 1 a backup failed or the run was stopped, 2 usage, config, lock or
 * connection error.
 *
 * SIGTERM or SIGINT stops the run (runEmbedded): exports under way are aborted, their partial
 * files removed and snapshots destroyed, nothing more is started (no VM, retry, pool-db, host
 * backup or prune); the lock is released, XAPI logged out, the summary printed; exit 1. A
 * second signal exits at once with 128 + its number (130, 143) and says what it leaves behind.
 */
export async function backupCommand(argv: readonly string[], io: Io): Promise<number> {
  let hookConfig: ReturnType<typeof hookConfigFromSettings> | undefined;
  let reports: ReportTargets | undefined;
  const loaded = loadCommandSettings(argv, io, {
    help: () => helpText({ prog: 'vmbackup', version: VERSION }) + '\n',
    // Hook settings are settings: a bad one is reported as every config error is
    // (`vmbackup: <key> = <value> in <file> line N: <reason>`, exit 2), before anything runs.
    check: (l) => {
      if (!l.flags.preview) hookConfig = hookConfigFromSettings(l.settings, { hasBus: false, where: l.where });
      if (!l.flags.preview) reports = reportTargets(l.settings);
    },
  });
  if (typeof loaded === 'number') return loaded;
  const { settings, flags } = loaded;

  if (flags.preview) return preview(loaded, io);

  const origin = localOrigin();
  const startedAt = systemClock.now();
  const runId = newRunId(startedAt);
  // A terminal gets a live line per VM; cron's output (not a terminal) stays as it was.
  const display = !flags.json && progressWanted(flags.progress, io.stdout) ? new TerminalProgress(io) : undefined;
  const log = commandLogger(settings, display?.io() ?? io, { json: flags.json, file: true });
  const restoreConsole = captureConsole(log);
  let lock: (Lock & { previous?: LockInfo }) | undefined;
  let xapi: XapiClient | undefined;
  const abort = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (!abort.signal.aborted) {
      log.warn(
        `${signal} received: stopping: exports under way are aborted, their partial files removed and their snapshots destroyed; no VM, retry, pool-db, host backup or prune is started any more (a second signal exits at once)`,
      );
      abort.abort(new Error(signal));
      return;
    }
    const code = 128 + (constants.signals[signal] ?? 15);
    log.error(`${signal} again: exiting at once (exit ${code}), leaving ${leftBehind({ runId, lock: lock?.file, xapi: xapi !== undefined })}`);
    display?.stop();
    log.flush();
    restoreConsole();
    process.exit(code);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    xapiPassword(settings);
    assertBackupDirExists(settings.backup_dir);
    // Checked with the settings (a bad one ended the command there, exit 2); set on this path.
    const hooks = hooksFromConfig(hookConfig!, { log, env: io.env });
    if (settings.mount_check) await assertShareMounted(settings.backup_dir, settings.share_type);
    lock = await acquireLock(settings.backup_dir, { ...origin, runId }, { now: startedAt, staleHours: settings.lock_stale_hours });
    if (lock.previous !== undefined) log.warn(`took over a stale lock of run ${lock.previous.runId} (pid ${lock.previous.pid} on ${lock.previous.hostname})`);
    log.info(`vmbackup ${VERSION} run ${runId}: backing up ${settings.xapi_url} to ${settings.backup_dir}`);
    xapi = await connectXapi(settings, log);
    const summary = await runEmbedded(
      { runId, options: runOptions(settings, loaded), startedAt },
      { xapi, log, clock: systemClock, origin, signal: abort.signal, hooks, ...(display !== undefined ? { onEvent: (e) => display.event(e), onProgress: (p) => display.signal(p) } : {}) },
    );
    display?.stop();
    if (abort.signal.aborted) {
      // Stopped: exit 1, also when the signal came too late to stop anything (run-end hooks).
      report({ ...summary, exitCode: 1 }, settings, io, flags.json);
      await runEnded({ ...summary, exitCode: 1 }, settings, reports!, log);
      log.error(`run ${runId} stopped by ${(abort.signal.reason as Error).message}: exit 1`);
      return 1;
    }
    report(summary, settings, io, flags.json);
    await runEnded(summary, settings, reports!, log);
    return summary.exitCode;
  } catch (error) {
    display?.stop();
    const code = fatalExit(error, log, io, { runId, json: flags.json });
    await runEnded(fatalSummary(runId, startedAt, error, settings), settings, reports!, log);
    return code;
  } finally {
    display?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await xapi?.close();
    await lock?.release();
    restoreConsole();
    log.flush();
  }
}

/** What a run killed by a second signal leaves behind, and who cleans it up. */
function leftBehind(opts: { runId: string; lock: string | undefined; xapi: boolean }): string {
  return [
    ...(opts.lock !== undefined ? [`the lock ${opts.lock} (the next run takes it over)`] : []),
    `any snapshot of run ${opts.runId} (the next run destroys it, found by its tag)`,
    'any *.partial file (never counted as a backup; pruned by a later run)',
    ...(opts.xapi ? ['the XAPI session (the pool expires it)'] : []),
  ].join(', ');
}

/**
 * The settings a run needs, as its plan message carries them. With `loaded`, also where the
 * selection's lists come from (`selectionSources`): lists given on the command line are this
 * request's, and the config files' export lists give the MAX of the VMs they select.
 */
export function runOptions(s: Settings, loaded?: Pick<LoadedSettings, 'sources' | 'where' | 'configLists'>): RunOptions {
  return {
    backupDir: s.backup_dir,
    vmExports: s.vm_exports,
    vdiExports: s.vdi_exports,
    deltaExports: s.delta_exports,
    cbt: s.cbt,
    excludes: s.excludes,
    maxBackups: s.max_backups,
    compress: s.compress,
    format: s.vdi_export_format,
    poolBackup: s.pool_backup,
    hostBackup: s.host_backup,
    spaceThreshold: s.space_threshold,
    concurrency: s.concurrency,
    vmRetries: s.vm_retries,
    haltedWithoutSnapshot: s.halted_without_snapshot,
    idleTimeoutS: s.export_idle_timeout,
    leftoverAgeHours: s.lock_stale_hours,
    verifyAfterBackup: s.verify_after_backup,
    failedKeepDays: s.failed_keep_days,
    ...(loaded !== undefined ? { selection: selectionSources(loaded) } : {}),
  };
}

/**
 * Where the selection's lists come from: `-e`, `-E`, `-x` are this request's (an entry of
 * `-e`/`-E` must match a VM); the config files' vdi_exports and vm_exports (also when replaced)
 * with their file and line; where max_backups is set.
 *
 * @example selectionSources(loaded) // { requested: [{ list: 'vm_exports', where: 'command line (-e)' }], config: [...], maxBackups: 'default' }
 */
export function selectionSources(loaded: Pick<LoadedSettings, 'sources' | 'where' | 'configLists'>): SelectionSources {
  const lists = ['excludes', 'vdi_exports', 'delta_exports', 'vm_exports'] as const;
  return {
    requested: lists.filter((list) => loaded.sources[list] === 'flag').map((list) => ({ list, where: loaded.where[list] })),
    config: loaded.configLists.map((c) => ({ list: c.list, entries: [...c.entries], where: c.where })),
    maxBackups: loaded.where.max_backups,
  };
}

/**
 * `--preview`: read-only — lists the pool's VMs, resolves the selection and checks the chosen
 * disks of vdi-exports; writes nothing. What the run would refuse before it starts (no
 * backup_dir, share not mounted) is printed after the preview, and exits 2 as the run would.
 */
async function preview(loaded: LoadedSettings, io: Io): Promise<number> {
  const { settings, flags } = loaded;
  let refusal: unknown;
  try {
    assertBackupDirExists(settings.backup_dir);
    if (settings.mount_check) await assertShareMounted(settings.backup_dir, settings.share_type);
    // Read-only, unlike the run's probe: what access(2) can tell (a read-only mount, the mode).
    await access(settings.backup_dir, fsConstants.W_OK).catch((error: NodeJS.ErrnoException) => {
      throw new ConfigError(`backup_dir ${settings.backup_dir} is not writable (${error.code ?? String(error)})`, { key: 'backup_dir', errno: error.code });
    });
  } catch (error) {
    refusal = error;
  }
  let xapi: XapiClient | undefined;
  try {
    xapi = await connectXapi(settings);
    const candidates = (await xapi.getAllRecords('VM')).filter((vm) => !vm.is_control_domain && !vm.is_a_template && !vm.is_a_snapshot);
    const poolVms = candidates.map((vm) => ({ uuid: vm.uuid, name: vm.name_label }));
    const shared = duplicateNames(poolVms);
    // Each VM with the folder the run would give it (plan's buildVmJobs).
    const selection = selectVms(
      poolVms.map((vm) => ({ ...vm, folder: vmFolderName(vm.name, vm.uuid, { shared: shared.has(vm.name) }) })),
      selectOptions(runOptions(settings, loaded)),
    );
    const warnings: PreviewSelection['warnings'] = [...selection.warnings];
    for (const e of selection.vdiExports) {
      const match = matchDisks(await vmDisks(xapi, candidates.find((vm) => vm.uuid === e.vm.uuid)!), e.disks);
      const found = match.error !== undefined ? [`${match.error}: its backup would fail`] : match.warnings;
      for (const w of found) warnings.push({ entry: e.entry, list: 'vdi_exports', message: `${e.vm.name}: ${w}` });
    }
    const deltaExports = [];
    for (const e of selection.deltaExports) {
      const vm = candidates.find((c) => c.uuid === e.vm.uuid)!;
      const disks = (await previewDiskReads(xapi, vm, { backupDir: settings.backup_dir, folder: e.vm.folder, cbt: settings.cbt })).map(({ warn: _warn, via: _via, ...d }) => d);
      deltaExports.push({ ...e, disks });
    }
    io.stdout.write(formatPreview(loaded, { ...selection, deltaExports, warnings }, { json: flags.json }));
    // What the run would refuse to start with: exit 2, as the run would.
    if (selection.errors.length > 0) {
      io.stderr.write(`vmbackup: ${selectionError(selection.errors).message}\n`);
      return 2;
    }
  } catch (error) {
    return fail(io, error);
  } finally {
    await xapi?.close();
  }
  return refusal === undefined ? 0 : fail(io, refusal);
}

/**
 * What follows a run's summary: the node_exporter textfile (metrics_textfile) and the run's
 * reports (report_url, report_email). Neither changes the exit code; a failure is a warning.
 */
export async function runEnded(summary: RunSummary, settings: Settings, reports: ReportTargets, log: Logger): Promise<void> {
  await updateMetricsTextfile(settings.metrics_textfile, summary, { backupDir: settings.backup_dir, maxAgeHours: settings.max_age_hours }, log);
  await sendReports(summary, reports, log);
}

/** The summary of a run that could not start (no pool, lock held, backup_dir missing …), for its reports and metrics. */
export function fatalSummary(runId: string, startedAt: Date, error: unknown, settings: Settings): RunSummary {
  return {
    runId,
    status: 'fatal',
    exitCode: 2,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    backupDir: settings.backup_dir,
    categories: {},
    jobs: [],
    excludes: [],
    warnings: [],
    cleaned: [],
    fatal: errorInfo(error),
  };
}

/** The summary as the backup command prints it: text per log_level, or JSON. */
export function report(summary: RunSummary, settings: Settings, io: Io, json: boolean): void {
  if (json) {
    io.stdout.write(JSON.stringify(summary, null, 2) + '\n');
    return;
  }
  // For cron mail: `-l warning` prints only when something went wrong, `-l error` only errors.
  const level = settings.log_level;
  const show =
    level === 'debug' || level === 'info' || (level === 'warning' && summary.status !== 'success') || summary.status === 'error' || summary.status === 'fatal';
  if (show) io.stdout.write(formatSummary(summary));
}

/**
 * How a run command (the backup, `run`) ends on an error it caught: one that ends the command
 * (usage, config, lock, connection) is logged and, with `--json`, printed as the run's JSON
 * outcome; exit 2. Anything else is a bug: rethrown.
 *
 * @example catch (error) { return fatalExit(error, log, io, { runId, json: flags.json }); }
 */
export function fatalExit(error: unknown, log: Logger, io: Io, opts: { runId: string; json: boolean }): number {
  if (!isFatalToCommand(error)) throw error;
  log.error({ err: error }, error.message);
  if (opts.json) writeFatalJson(io, error, opts.runId);
  return 2;
}
