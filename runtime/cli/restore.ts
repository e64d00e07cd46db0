import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { RestoreOutput, restore } from '../../functions/restore/restore.js';
import type { RestoreInput, RestoredVdi } from '../../functions/restore/restore.js';
import { RestoreInputError, parseRestoreFile } from '../../functions/restore/restore-set.js';
import { pointLocation, restorePointToFile } from '../../functions/restore/restore-point.js';
import type { PointToFileInput } from '../../functions/restore/restore-point.js';
import { OPTIONS } from '../config/args.js';
import { closest } from '../config/ini.js';
import type { Settings } from '../config/schema.js';
import { UsageError, VmbackupError, isFatalToCommand } from '../errors.js';
import { localCtx, systemClock } from '../function.js';
import { captureConsole, createLogger } from '../log.js';
import type { Logger } from '../log.js';
import { newRunId } from '../run/start.js';
import type { XapiClient } from '../xapi/client.js';
import { formatBytes, formatSeconds } from '../units.js';
import type { Io } from './io.js';
import { fail, writeFatalJson } from './io.js';
import { loadCommandSettings } from './settings.js';
import { connectXapi, xapiPassword } from './xapi.js';

/**
 * `vmbackup restore FILE [--sr SR] [--name NAME] [--preserve] [--vdi UUID] [--disk DEV]
 * [--attach VM] [--force] [--json]` — restores one backup into the pool, in this process, through the
 * `restore` function (functions/restore/restore.ts). Settings and the XAPI connection come
 * as for a backup (config files, environment, `--xapi`, `--password-file`, `--tls-ca-file`…).
 * Prints what it created (uuids), or the function's output as JSON with `--json`.
 * Exit codes: 0 restored; 1 the restore failed or was refused (nothing is left half-created);
 * 2 usage, config or connection error, including input the function finds does not fit the
 * backup or the pool (RestoreInputError: `--disk`, `--sr`, `--vdi`, `--attach`), and a FILE
 * not found. A disk restored but not attached (`--attach` failed after the upload) is exit 1,
 * with the new VDI and how to attach it by hand on stdout.
 */
export async function restoreCommand(argv: readonly string[], io: Io): Promise<number> {
  let args: RestoreArgs;
  try {
    args = splitRestoreArgs(argv);
  } catch (error) {
    return fail(io, error);
  }
  if (args.help) {
    io.stdout.write(restoreHelp());
    return 0;
  }
  const loaded = loadCommandSettings(args.rest, io);
  if (typeof loaded === 'number') return loaded;
  const { settings, flags } = loaded;
  if (args.toFile !== undefined || args.format !== undefined) return toFileCommand(args, io, flags.json);
  const startedAt = systemClock.now();
  const runId = `restore-${newRunId(startedAt)}`;
  let input: RestoreInput;
  try {
    input = restoreInput(args, io.cwd, runId, settings);
    xapiPassword(settings);
  } catch (error) {
    return fail(io, error);
  }

  const log = makeLogger(settings, io);
  const restoreConsole = captureConsole(log);
  const abort = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    log.warn(`${signal} received: stopping the restore; what it created is being removed`);
    abort.abort(new Error(signal));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let xapi: XapiClient | undefined;
  try {
    // Not export_idle_timeout: it also bounds XAPI's event.from long polls (60 s), which
    // watch the upload's task. The upload applies export_idle_timeout itself.
    xapi = await connectXapi(settings, log);
    const ctx = localCtx({ log: log.child({ fn: 'restore', subject: restore.subject.name, runId, jobId: input.jobId }), xapi, signal: abort.signal });
    let output: RestoreOutput;
    try {
      output = restore.output.parse(await restore.handle(input, ctx));
    } catch (error) {
      if (!(error instanceof VmbackupError) || endsCommand(error)) throw error;
      // Input that does not fit the backup or the pool is a usage error (2), as the help says.
      const [status, exitCode] = error instanceof RestoreInputError ? (['fatal', 2] as const) : (['failed', 1] as const);
      // A disk restored but not attached: the VDI exists, so say where it is.
      const created = error.code === 'RESTORE_ATTACH_FAILED' ? RestoreOutput.shape.created.safeParse(error.data.created) : undefined;
      if (flags.json) {
        io.stdout.write(JSON.stringify({ runId, status, exitCode, error: { code: error.code, message: error.message }, ...(created?.success === true ? { created: created.data } : {}) }, null, 2) + '\n');
      } else {
        io.stderr.write(`vmbackup restore: ${error.message}\n`);
        if (created?.success === true) for (const vdi of created.data.vdis) io.stdout.write([vdiLine(vdi), ...attachHint(vdi.uuid)].join('\n') + '\n');
      }
      return exitCode;
    }
    io.stdout.write(flags.json ? JSON.stringify({ status: 'success', exitCode: 0, ...output }, null, 2) + '\n' : formatRestored(output));
    return 0;
  } catch (error) {
    if (isFatalToCommand(error)) {
      if (flags.json) writeFatalJson(io, error, runId);
      return fail(io, error);
    }
    throw error;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await xapi?.close();
    restoreConsole();
    log.flush();
  }
}

/** The restore's own options, FILE, and what is left for loadSettings. */
export interface RestoreArgs {
  file?: string;
  sr?: string;
  name?: string;
  vdi?: string;
  disk?: string;
  attach?: string;
  /** `--to-file PATH`: write the disk of a point to this local file (no pool). */
  toFile?: string;
  /** `--format raw|vhd` of `--to-file`. */
  format?: string;
  preserve: boolean;
  force: boolean;
  help: boolean;
  /** Settings options (connection, config file, log level, --json), for loadSettings. */
  rest: string[];
}

const VALUED = ['sr', 'name', 'vdi', 'disk', 'attach', 'to-file', 'format'] as const;
/** The RestoreArgs field of each valued option. */
const FIELD = { sr: 'sr', name: 'name', vdi: 'vdi', disk: 'disk', attach: 'attach', 'to-file': 'toFile', format: 'format' } as const;
const SWITCHES = ['preserve', 'force', 'help'] as const;
/** Settings options that mean something to a restore; the backup's selection options do not. */
const PASSED = new Set(['config', 'base-dir', 'backup-dir', 'log-level', 'xapi', 'user', 'password-file', 'tls-ca-file', 'insecure', 'no-insecure', 'json', 'version']);

/**
 * Takes the restore's options and FILE out of argv (`--sr X`, `--sr=X`, a lone positional);
 * the rest goes to loadSettings. Backup-only options (`-e`, `-p`, `--preview`…) are usage
 * errors, not silently ignored.
 *
 * @example splitRestoreArgs(['/b/web1/backup_20240102-030405.xva', '--sr', 'NFS', '--xapi', 'h'])
 *   // { file: '/b/…xva', sr: 'NFS', preserve: false, force: false, help: false, rest: ['--xapi', 'h'] }
 */
export function splitRestoreArgs(argv: readonly string[]): RestoreArgs {
  const out: RestoreArgs = { preserve: false, force: false, help: false, rest: [] };
  const positional = (arg: string) => {
    if (out.file !== undefined) throw new UsageError(`vmbackup restore takes one FILE (got ${JSON.stringify(out.file)} and ${JSON.stringify(arg)})`, { flag: arg });
    out.file = arg;
  };
  const option = (long: string) => OPTIONS.find((o) => o.long === long);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      for (const rest of argv.slice(i + 1)) positional(rest);
      break;
    }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
      if ((VALUED as readonly string[]).includes(name)) {
        let value: string | undefined;
        if (eq !== -1) value = arg.slice(eq + 1);
        else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('-')) value = argv[++i];
        if (value === undefined || value === '') throw new UsageError(`option --${name} needs a value`, { flag: `--${name}` });
        out[FIELD[name as (typeof VALUED)[number]]] = value;
        continue;
      }
      if ((SWITCHES as readonly string[]).includes(name)) {
        if (eq !== -1) throw new UsageError(`option --${name} takes no value (got ${JSON.stringify(arg)})`, { flag: `--${name}` });
        out[name as (typeof SWITCHES)[number]] = true;
        continue;
      }
      const spec = option(name);
      if (spec === undefined || !PASSED.has(name)) {
        const guess = closest(name, [...VALUED, ...SWITCHES, ...PASSED]);
        const why = spec === undefined ? 'unrecognized option' : 'option does not apply to restore:';
        throw new UsageError(`${why} --${name}${guess !== undefined ? ` (did you mean --${guess}?)` : ''}`, { flag: `--${name}` });
      }
      out.rest.push(arg);
      if (spec.metavar !== undefined && eq === -1 && i + 1 < argv.length) out.rest.push(argv[++i]!);
      continue;
    }
    if (arg.startsWith('-') && arg !== '-') {
      // Short options: only the settings ones a restore uses (-c, -b, -d, -l, -h, -v).
      out.rest.push(arg);
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j]!;
        if (letter === 'h') {
          out.help = true;
          continue;
        }
        const spec = OPTIONS.find((o) => o.short === letter);
        if (spec === undefined || !PASSED.has(spec.long)) {
          throw new UsageError(spec === undefined ? `unrecognized option -${letter}` : `option -${letter} (--${spec.long}) does not apply to restore`, { flag: `-${letter}` });
        }
        if (spec.metavar !== undefined) {
          if (j === arg.length - 1 && i + 1 < argv.length) out.rest.push(argv[++i]!);
          break;
        }
      }
      continue;
    }
    positional(arg);
  }
  return out;
}

/** The restore function's input from the command line; UsageError for a bad FILE or option. */
function restoreInput(args: RestoreArgs, cwd: string, runId: string, settings: Settings): RestoreInput {
  if (args.file === undefined) throw new UsageError('vmbackup restore: FILE is missing (the data file of a backup set, or its .json); see vmbackup restore --help');
  const file = existingFile(args.file, cwd);
  if (pointLocation(file) === undefined) {
    if (!statSync(file).isFile()) throw new UsageError(`${file}: not a regular file`, { file });
    try {
      parseRestoreFile(file);
    } catch (error) {
      throw new UsageError((error as Error).message, { file });
    }
  }
  if (args.preserve && args.name !== undefined) throw new UsageError('--preserve restores the VM under its own name: --name cannot go with it', { flag: '--name' });
  const parsed = restore.subject.schema.safeParse({
    runId,
    jobId: 'restore',
    try: 1,
    file,
    ...(args.sr !== undefined ? { sr: args.sr } : {}),
    ...(args.name !== undefined ? { name: args.name } : {}),
    ...(args.vdi !== undefined ? { vdi: args.vdi } : {}),
    ...(args.disk !== undefined ? { disk: args.disk } : {}),
    ...(args.attach !== undefined ? { attach: args.attach } : {}),
    preserve: args.preserve,
    force: args.force,
    idleTimeoutS: settings.export_idle_timeout,
  });
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new UsageError(`--${String(issue.path[0] ?? 'file')}: ${issue.message}`, { issues: parsed.error.issues.map((i) => ({ message: i.message })) });
  }
  return parsed.data;
}

/**
 * FILE as an absolute path, checked to exist first, so a missing file reads the same whatever
 * its name. A point is a folder (`point_<stamp>`) or its manifest.json.
 */
function existingFile(given: string, cwd: string): string {
  const file = path.resolve(cwd, given);
  try {
    statSync(file);
  } catch (error) {
    const code = (error as { code?: string }).code;
    throw new UsageError(code === 'ENOENT' || code === 'ENOTDIR' ? `${file}: no such file` : `${file}: cannot be read (${code})`, { file });
  }
  return file;
}

/**
 * `restore POINT --disk DEV --to-file PATH [--format raw|vhd]`: one disk of a point to a
 * local file, in this process, with no XAPI connection. Exit 0 written; 1 the restore failed
 * (a missing or damaged chunk, an incomplete point: nothing is left at PATH); 2 usage.
 */
async function toFileCommand(args: RestoreArgs, io: Io, json: boolean): Promise<number> {
  let input: PointToFileInput;
  try {
    if (args.toFile === undefined) throw new UsageError('--format goes with --to-file (a disk restored into the pool is uploaded raw)', { flag: '--format' });
    const poolOnly = (['sr', 'name', 'vdi', 'attach'] as const).find((k) => args[k] !== undefined) ?? (args.preserve ? 'preserve' : undefined);
    if (poolOnly !== undefined) throw new UsageError(`--${poolOnly} does not apply to --to-file, which writes a local file, not into the pool`, { flag: `--${poolOnly}` });
    if (args.format !== undefined && args.format !== 'raw' && args.format !== 'vhd') throw new UsageError(`--format ${args.format}: raw or vhd`, { flag: '--format' });
    if (args.file === undefined) throw new UsageError('vmbackup restore: POINT is missing (a point_<stamp> folder, or its manifest.json); see vmbackup restore --help');
    const file = existingFile(args.file, io.cwd);
    if (pointLocation(file) === undefined) throw new UsageError(`--to-file: ${file} is not a point (a point_<stamp> folder, or its manifest.json); a backup set's raw or vhd file is already a file`, { file });
    input = { file, to: path.resolve(io.cwd, args.toFile), format: args.format === 'vhd' ? 'vhd' : 'raw', ...(args.disk !== undefined ? { disk: args.disk } : {}) };
  } catch (error) {
    return fail(io, error);
  }
  const abort = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => abort.abort(new Error(signal));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const out = await restorePointToFile({ ...input, signal: abort.signal });
    io.stdout.write(json ? JSON.stringify({ status: 'success', exitCode: 0, ...out }, null, 2) + '\n' : `Wrote disk ${out.disk} of point ${out.point} to ${out.to} (${out.format}, ${formatBytes(out.bytes)} for a ${formatBytes(out.diskSize)} disk)\n`);
    return 0;
  } catch (error) {
    if (isFatalToCommand(error)) return fail(io, error);
    if (!(error instanceof VmbackupError)) throw error;
    const exitCode = error instanceof RestoreInputError ? 2 : 1;
    if (json) io.stdout.write(JSON.stringify({ status: exitCode === 2 ? 'fatal' : 'failed', exitCode, error: { code: error.code, message: error.message } }, null, 2) + '\n');
    else io.stderr.write(`vmbackup restore: ${error.message}\n`);
    return exitCode;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** What a restore created, for people: one line per object, uuids first (warnings went to stderr). */
export function formatRestored(out: RestoreOutput): string {
  const lines = [`Restored ${out.file} (${out.format}, ${formatBytes(out.bytes)} in ${formatSeconds(out.restoreMs)})`];
  for (const vm of out.created.vms) {
    lines.push(`  VM  ${vm.uuid}  ${vm.name}`);
    if (vm.unblocked.length > 0) lines.push(`      ${vm.unblocked.join(', ')}: lifted the block vmbackup's export of the halted VM had saved in the backup`);
  }
  for (const vdi of out.created.vdis) lines.push(vdiLine(vdi));
  const a = out.attached;
  if (a !== undefined) {
    const state = a.plugged ? 'plugged into the running VM' : `not plugged: the VM is ${a.powerState.toLowerCase()}${a.powerState === 'Halted' ? ' (XAPI plugs it when the VM starts)' : ` (once it runs: xe vbd-plug uuid=${a.vbd})`}`;
    lines.push(`      attached to VM ${a.vm.uuid}  ${a.vm.name}  as device ${a.device} (VBD ${a.vbd}), ${state}`);
  } else if (out.created.vms.length === 0 && out.created.vdis.length === 1) {
    // A disk on its own belongs to no VM yet: say how to give it one.
    lines.push(...attachHint(out.created.vdis[0]!.uuid));
  }
  if (out.overwritten !== undefined) lines.push(`  VDI ${out.overwritten.uuid}  ${out.overwritten.name}  (SR ${out.overwritten.sr}, overwritten)`);
  return lines.join('\n') + '\n';
}

function vdiLine(vdi: RestoredVdi): string {
  return `  VDI ${vdi.uuid}  ${vdi.name}  (SR ${vdi.sr})`;
}

/** How to attach a VDI to a VM by hand, on the pool master. */
function attachHint(vdiUuid: string): string[] {
  return [
    '      attached to no VM; to attach it, on the pool master (a free device number: xe vm-param-get uuid=<VM> param-name=allowed-VBD-devices):',
    `      xe vbd-create vm-uuid=<VM> vdi-uuid=${vdiUuid} device=<N> type=Disk mode=RW bootable=false`,
    '      then, if the VM is running, xe vbd-plug uuid=<the uuid vbd-create printed>',
  ];
}

export function restoreHelp(): string {
  return `usage: vmbackup restore FILE [--sr SR] [--name NAME] [--preserve] [--vdi UUID]
                        [--disk DEV] [--attach VM] [--force] [--json]
                        [-c FILE] [-b PATH] [-d PATH] [-l LEVEL] [-v]
                        [--xapi URL] [--user NAME] [--password-file FILE]
                        [--tls-ca-file FILE] [--insecure | --no-insecure]
       vmbackup restore POINT --disk DEV --to-file PATH [--format raw|vhd] [--json]

Restore one backup into the pool. FILE is a data file of a backup set, or the set's .json:
  backup_<stamp>.xva, .xva.gz, .xva.zst   imported as a new VM (PUT /import)
  backup_<disk>_<stamp>.raw, .vhd         written into a new VDI, or --vdi (PUT /import_raw_vdi)
or a point of the chunk store (incremental backups), its folder or its manifest.json:
  <vm folder>/point_<stamp>[/manifest.json]   the whole VM (PUT /import), or with --disk,
                                              --vdi or --attach one disk (PUT /import_raw_vdi)

options:
  --sr SR          SR (uuid or name) to restore onto (Default: the pool's default SR)
  --name NAME      name of the new VM or VDI (Default: the original's, plus " (restored <stamp>)")
  --preserve       VM exports: keep the VM's uuid and MAC addresses, and its name, as
                   xe vm-import preserve=true (the original VM must be destroyed first:
                   refused while it exists, unless --force)
  --vdi UUID       raw/vhd: write into this existing VDI (large enough, not attached)
                   instead of creating one; its content is replaced
  --disk DEV       vdi-export sets with several disks: which one (xvdb); a point: restore
                   this disk only (a point of one disk: --vdi or --attach choose it)
  --to-file PATH   a point: write the disk to this local file instead (no pool, no
                   connection options); PATH must not exist
  --format F       with --to-file: raw (default) or vhd (dynamic VHD, for xe vdi-import)
  --attach VM      raw/vhd: give the new VDI to this VM (name or uuid) on its first free
                   device, read-write, not bootable; plugged if the VM is running, else
                   attached when it starts. Checked before uploading: the VM must exist,
                   be the only one of that name, not be a snapshot or template, and have a
                   free device. If attaching fails after the upload, the VDI is kept
                   (exit 1) and how to attach it by hand is printed
  --force          restore a set that is incomplete or failed verification, or with
                   --preserve while the original VM still exists
  --json           print what was created as JSON
  -h, --help       show this help

Connection and config options are those of vmbackup (see vmbackup --help). Nothing is left
half-created: a failed restore removes what it made, except a restored disk that --attach could
not attach (its data is good). A restored VM whose backup was taken while it was halted gets
the start block vmbackup saved with it lifted (an operator's blocks stay).
Exit codes: 0 restored; 1 the restore failed or was refused (an incomplete or failed set, an
incomplete point or one with a missing or damaged chunk, the original VM still there with
--preserve, a disk in use, a restored disk that could not be attached); 2 usage, config or
connection error (a bad or missing option, FILE not found, an unknown SR, VDI or VM, --disk
missing or wrong, --attach to a VM that cannot take the disk, a --to-file PATH that exists).
`;
}

/** Usage, config and connection errors end the command with 2, not as a failed restore. */
function endsCommand(error: unknown): boolean {
  return isFatalToCommand(error);
}

function makeLogger(settings: Settings, io: Io): Logger {
  const dir = path.join(settings.base_dir, 'logs');
  let logDir: string | undefined = dir;
  try {
    mkdirSync(dir, { recursive: true });
  } catch {
    logDir = undefined;
  }
  // stdout carries the result only; the console gets warnings and errors (on stderr), the
  // log file everything. `-l debug` shows progress too.
  const consoleLevel = settings.log_level === 'info' ? 'warning' : settings.log_level;
  return createLogger({ consoleLevel, ...(logDir !== undefined ? { dir: logDir } : {}), console: io.stderr, consoleErrors: io.stderr });
}
