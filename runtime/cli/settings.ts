import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { isModeOption } from '../config/args.js';
import { commandAccepts } from '../config/commands.js';
import { loadSettings } from '../config/load.js';
import type { LoadedSettings } from '../config/load.js';
import type { Settings } from '../config/schema.js';
import { UsageError } from '../errors.js';
import type { VmbackupError } from '../errors.js';
import { createLogger } from '../log.js';
import type { Logger } from '../log.js';
import { VERSION, fail, writeFatalJson } from './io.js';
import type { Io } from './io.js';

/** How a command wants its settings loaded; see `loadCommandSettings`. */
export interface CommandSettingsOptions {
  /** The command's `--help` text; without it, help is the command's own business. */
  help?: () => string;
  /**
   * Checks the command's own options once the settings are loaded, before help and version:
   * what it throws ends the command as a settings error does (exit 2).
   */
  check?: (loaded: LoadedSettings) => void;
  /** Print the settings' warnings to stderr (default true); false leaves them to the command. */
  warnings?: boolean;
  /**
   * The command whose options these are (commandAccepts): a mode option of vmbackup's
   * command line that it does not take is refused (`--preview` does not apply to `vmbackup
   * run`), never silently ignored. Options that set a config key are taken by every command,
   * as the config file's keys are; each command uses those it needs.
   */
  command?: string;
}

/**
 * The start of every command: loads the settings from `argv` (the command's own options
 * already taken out), config files and environment; answers `--help` (when `opts.help`) and
 * `--version`; prints the warnings as `WARNING: …` on stderr. Returns the settings, or the
 * exit code to return at once (0 after help or version, 2 after a usage or config error,
 * printed).
 *
 * @example
 *   const loaded = loadCommandSettings(argv, io, { help: () => helpText({ prog: 'vmbackup', version: VERSION }) + '\n' });
 *   if (typeof loaded === 'number') return loaded;
 */
export function loadCommandSettings(argv: readonly string[], io: Io, opts: CommandSettingsOptions = {}): LoadedSettings | number {
  let loaded: LoadedSettings;
  try {
    loaded = loadSettings({ argv, env: io.env, home: io.home, cwd: io.cwd });
    const accepts = opts.command !== undefined ? commandAccepts(opts.command) : undefined;
    if (accepts !== undefined) {
      for (const [long, spelled] of loaded.given) {
        if (!accepts.has(long) && isModeOption(long)) throw new UsageError(`option ${spelled} does not apply to vmbackup ${opts.command} (see vmbackup ${opts.command} --help)`, { flag: spelled });
      }
    }
    opts.check?.(loaded);
  } catch (error) {
    const code = fail(io, error);
    // A caller that asked for JSON reads stdout: it gets the failure there too (the flags did
    // not parse, so --json is looked up).
    if (argv.includes('--json')) writeFatalJson(io, error as VmbackupError);
    return code;
  }
  if (opts.help !== undefined && loaded.flags.help) {
    io.stdout.write(opts.help());
    return 0;
  }
  if (loaded.flags.version) {
    io.stdout.write(`vmbackup ${VERSION}\n`);
    return 0;
  }
  if (opts.warnings !== false) printWarnings(io, loaded.warnings);
  return loaded;
}

/** The settings' warnings, one `WARNING: …` line each on stderr. */
export function printWarnings(io: Io, warnings: readonly string[]): void {
  for (const w of warnings) io.stderr.write(`WARNING: ${w}\n`);
}

/**
 * The logger of a command: JSON records to `<base_dir>/logs/vmbackup.log` when `file` (as the
 * backup command), else or when that directory cannot be made, the console only. With
 * `json`, stdout carries the command's JSON alone: the console log goes to stderr.
 */
export function commandLogger(settings: Settings, io: Io, opts: { json: boolean; file: boolean; context?: boolean }): Logger {
  let dir: string | undefined;
  if (opts.file) {
    dir = path.join(settings.base_dir, 'logs');
    try {
      mkdirSync(dir, { recursive: true });
    } catch (error) {
      io.stderr.write(`WARNING: cannot write logs to ${dir} (${(error as { code?: string }).code ?? String(error)}): console only\n`);
      dir = undefined;
    }
  }
  return createLogger({ consoleLevel: settings.log_level, ...(dir !== undefined ? { dir } : {}), console: opts.json ? io.stderr : io.stdout, consoleErrors: io.stderr, ...(opts.context === true ? { consoleContext: true } : {}) });
}
