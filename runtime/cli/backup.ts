import { mkdirSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { selectVms } from '../../functions/plan/select.js';
import type { RunOptions } from '../../functions/plan/plan.js';
import { helpText } from '../config/args.js';
import { loadSettings } from '../config/load.js';
import type { LoadedSettings } from '../config/load.js';
import { formatPreview } from '../config/preview.js';
import type { Settings } from '../config/schema.js';
import { ConfigError, isFatalToCommand } from '../errors.js';
import { systemClock } from '../function.js';
import type { Origin } from '../function.js';
import { captureConsole, createLogger } from '../log.js';
import type { Logger } from '../log.js';
import { hooksFromSettings } from '../hooks/settings.js';
import { runEmbedded } from '../run/embedded.js';
import { newRunId } from '../run/start.js';
import { formatSummary } from '../run/summary.js';
import type { RunSummary } from '../run/summary.js';
import { acquireLock } from '../storage/lock.js';
import { assertShareMounted } from '../storage/mounts.js';
import { XapiClient } from '../xapi/client.js';
import type { Io } from './io.js';
import { VERSION } from './io.js';

/**
 * `vmbackup [flags]` — VmBackup's command: back up the pool from this machine on the
 * in-process runtime, or `--preview` what would be backed up. Exit codes: 0 all backed up
 * (warnings allowed), 1 a backup failed, 2 usage, config, lock or connection error.
 */
export async function backupCommand(argv: readonly string[], io: Io): Promise<number> {
  let loaded: LoadedSettings;
  try {
    loaded = loadSettings({ argv, env: io.env, home: io.home, cwd: io.cwd });
  } catch (error) {
    return fail(io, error);
  }
  const { settings, flags } = loaded;
  if (flags.help) {
    io.stdout.write(helpText({ prog: 'vmbackup', version: VERSION }) + '\n');
    return 0;
  }
  if (flags.version) {
    io.stdout.write(`vmbackup ${VERSION}\n`);
    return 0;
  }
  for (const w of loaded.warnings) io.stderr.write(`WARNING: ${w}\n`);

  if (flags.preview) return preview(loaded, io);

  const origin: Origin = { hostname: os.hostname(), pid: process.pid };
  const startedAt = systemClock.now();
  const runId = newRunId(startedAt);
  const log = makeLogger(settings, io, flags.json);
  const restoreConsole = captureConsole(log);
  let lock;
  let xapi: XapiClient | undefined;
  const abort = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    log.warn(`${signal} received: stopping; snapshots are being removed`);
    abort.abort(new Error(signal));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (settings.password === undefined) {
      throw new ConfigError('no password for XAPI: set password_file (or --password-file), or the environment variable VMBACKUP_PASSWORD', { key: 'password' });
    }
    checkBackupDirExists(settings);
    // A bad hook setting ends the command (exit 2) before anything is locked or snapshotted.
    const hooks = hooksFromSettings(settings, { log, env: io.env, where: loaded.where });
    if (settings.mount_check) await assertShareMounted(settings.backup_dir, settings.share_type);
    lock = await acquireLock(settings.backup_dir, { ...origin, runId }, { now: startedAt, staleHours: settings.lock_stale_hours });
    if (lock.previous !== undefined) log.warn(`took over a stale lock of run ${lock.previous.runId} (pid ${lock.previous.pid} on ${lock.previous.hostname})`);
    log.info(`vmbackup ${VERSION} run ${runId}: backing up ${settings.xapi_url} to ${settings.backup_dir}`);
    xapi = await XapiClient.connect({
      url: settings.xapi_url,
      user: settings.username,
      password: settings.password,
      ...(settings.tls_ca_file !== undefined ? { ca: readCa(settings.tls_ca_file) } : {}),
      insecure: settings.insecure,
      log,
    });
    if (settings.insecure) log.warn(`TLS certificate checks are off (--insecure) for ${settings.xapi_url}`);
    const summary = await runEmbedded({ runId, options: runOptions(settings), startedAt }, { xapi, log, clock: systemClock, origin, signal: abort.signal, hooks });
    report(summary, settings, io, flags.json);
    return summary.exitCode;
  } catch (error) {
    if (isFatalToCommand(error)) {
      log.error({ err: error }, (error as Error).message);
      if (flags.json) io.stdout.write(JSON.stringify({ runId, status: 'fatal', exitCode: 2, error: { code: error.code, message: error.message } }) + '\n');
      return 2;
    }
    throw error;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await xapi?.close();
    await lock?.release();
    restoreConsole();
    log.flush();
  }
}

/** The settings a run needs, as its plan message carries them. */
export function runOptions(s: Settings): RunOptions {
  return {
    backupDir: s.backup_dir,
    vmExports: s.vm_exports,
    vdiExports: s.vdi_exports,
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
  };
}

/** `--preview`: read-only — lists the pool's VMs and resolves the selection; writes nothing. */
async function preview(loaded: LoadedSettings, io: Io): Promise<number> {
  const { settings, flags } = loaded;
  if (settings.password === undefined) {
    return fail(io, new ConfigError('no password for XAPI: set password_file (or --password-file), or the environment variable VMBACKUP_PASSWORD', { key: 'password' }));
  }
  let xapi: XapiClient | undefined;
  try {
    xapi = await XapiClient.connect({
      url: settings.xapi_url,
      user: settings.username,
      password: settings.password,
      ...(settings.tls_ca_file !== undefined ? { ca: readCa(settings.tls_ca_file) } : {}),
      insecure: settings.insecure,
    });
    const vms = (await xapi.getAllRecords('VM'))
      .filter((vm) => !vm.is_control_domain && !vm.is_a_template && !vm.is_a_snapshot)
      .map((vm) => ({ uuid: vm.uuid, name: vm.name_label }));
    const selection = selectVms(vms, { excludes: settings.excludes, vdiExports: settings.vdi_exports, vmExports: settings.vm_exports, maxBackups: settings.max_backups });
    io.stdout.write(formatPreview(loaded, selection, { json: flags.json }));
    return 0;
  } catch (error) {
    return fail(io, error);
  } finally {
    await xapi?.close();
  }
}

function report(summary: RunSummary, settings: Settings, io: Io, json: boolean): void {
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

function makeLogger(settings: Settings, io: Io, json: boolean): Logger {
  const dir = path.join(settings.base_dir, 'logs');
  let logDir: string | undefined = dir;
  try {
    mkdirSync(dir, { recursive: true });
  } catch (error) {
    io.stderr.write(`WARNING: cannot write logs to ${dir} (${(error as { code?: string }).code ?? String(error)}): console only\n`);
    logDir = undefined;
  }
  // With --json, stdout carries the summary only: progress goes to stderr.
  return createLogger({ consoleLevel: settings.log_level, ...(logDir !== undefined ? { dir: logDir } : {}), console: json ? io.stderr : io.stdout, consoleErrors: io.stderr });
}

function checkBackupDirExists(settings: Settings): void {
  let isDir = false;
  try {
    isDir = statSync(settings.backup_dir).isDirectory();
  } catch {
    isDir = false;
  }
  if (!isDir) {
    throw new ConfigError(`backup_dir ${settings.backup_dir} does not exist or is not a directory (is the backup share mounted?)`, { key: 'backup_dir' });
  }
}

function readCa(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`tls_ca_file ${file} cannot be read (${(error as { code?: string }).code ?? String(error)})`, { key: 'tls_ca_file', file });
  }
}

/** Prints a command-ending error (exit 2) or rethrows a bug. */
export function fail(io: Io, error: unknown): number {
  if (isFatalToCommand(error)) {
    io.stderr.write(`vmbackup: ${error.message}\n`);
    const issues = (error.data as { issues?: { message: string }[] }).issues;
    if (Array.isArray(issues) && issues.length > 1) for (const i of issues) io.stderr.write(`  - ${i.message}\n`);
    return 2;
  }
  throw error;
}
