import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Bus } from '../bus/bus.js';
import { configError, fsReason, showText } from '../config/load.js';
import type { Settings } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { splitCommand } from './command-line.js';
import { HookPoint } from './event.js';
import { createHookRunner } from './runner.js';
import type { HookConfig, HookRunner } from './runner.js';

/** The settings key suffix of each point: `hook_command_pre_vm`, `hook_url_run_end` … */
const KEY_OF: Record<HookPoint, 'pre_vm' | 'post_vm' | 'run_start' | 'run_end'> = {
  'pre-vm': 'pre_vm',
  'post-vm': 'post_vm',
  'run-start': 'run_start',
  'run-end': 'run_end',
};

export interface HookSettingsOptions {
  /** Reads hook_secret_file. Default: the file system. */
  readFile?: (path: string) => string;
  /** `st_mode` of hook_secret_file, for the 0600 warning. */
  fileMode?: (path: string) => number | undefined;
  /** Where each key was set (LoadedSettings.where), for messages. */
  where?: Partial<Record<string, string>>;
  /** True when the caller can give the runner a NATS bus (hooks_nats needs one). */
  hasBus: boolean;
  /** Why a command's program cannot be run, or undefined when it can. Default: programProblem. */
  checkProgram?: (path: string) => string | undefined;
}

/** One invalid hook setting, in the shape of the config loader's issues (ConfigIssue). */
export interface HookSettingIssue {
  key: string;
  /** Config file the value is in; absent for the environment, the command line, a missing key. */
  file?: string;
  line?: number;
  /** `/etc/vmbackup.cfg line 4`, `environment (VMBACKUP_HOOK_URL_PRE_VM)`; absent for a missing key. */
  where?: string;
  reason: string;
  /** The whole sentence: `hook_command_pre_vm = /x in /etc/vmbackup.cfg line 4: the program /x does not exist`. */
  message: string;
}

/**
 * The hook configuration of the settings, checked: commands split (command-line.ts), their
 * program an absolute path to an executable file that exists (so a typo stops the command at
 * start-up, not each VM at run time), URLs http(s), the HMAC secret read when a URL is set.
 * Throws one ConfigError naming every bad key, its value, where it was set and why, worded
 * as the config loader's (`hook_timeout = 0 in /etc/vmbackup.cfg line 9: …`).
 *
 * @example hookConfigFromSettings(settings, { hasBus: false }) // → { config, warnings: [] }
 */
export function hookConfigFromSettings(settings: Settings, opts: HookSettingsOptions): { config: HookConfig; warnings: string[] } {
  const readFile = opts.readFile ?? ((p: string) => readFileSync(p, 'utf8'));
  const fileMode = opts.fileMode ?? defaultFileMode;
  const checkProgram = opts.checkProgram ?? programProblem;
  const issues: HookSettingIssue[] = [];
  const warnings: string[] = [];
  /** An issue of a key that is set: `<key> = <value> in <where>: <reason>`. */
  const issue = (key: string, value: string, reason: string): void => {
    const where = opts.where?.[key];
    const { phrase, ...place } = where !== undefined && where !== 'default' ? placeOf(where) : { phrase: undefined };
    issues.push({ key, ...place, reason, message: `${key} = ${showText(value)}${phrase !== undefined ? ` ${phrase}` : ''}: ${reason}` });
  };
  const config: HookConfig = {
    commands: {},
    urls: {},
    nats: settings.hooks_nats,
    natsReplies: settings.hook_nats_replies,
    timeoutMs: settings.hook_timeout * 1000,
    onTimeout: settings.hooks_on_timeout,
    onFailure: settings.hooks_on_failure,
  };
  for (const point of HookPoint.options) {
    const commandKey = `hook_command_${KEY_OF[point]}` as const;
    const command = settings[commandKey];
    if (command !== undefined) {
      const split = splitCommand(command);
      // Only the program: what the arguments name is the program's business.
      const problem = 'error' in split ? split.error : checkProgram(split.argv[0]!);
      if (problem !== undefined) issue(commandKey, command, problem);
      else config.commands[point] = (split as { argv: string[] }).argv;
    }
    const urlKey = `hook_url_${KEY_OF[point]}` as const;
    const url = settings[urlKey];
    if (url !== undefined) {
      const problem = urlProblem(url);
      if (problem !== undefined) issue(urlKey, url, problem);
      else config.urls[point] = url;
    }
  }
  if (settings.hooks_nats && !opts.hasBus) {
    issue('hooks_nats', 'true', 'NATS hooks need a NATS connection, which this command does not have (use command or HTTP hooks, or run on NATS with vmbackup worker)');
  }
  const file = settings.hook_secret_file;
  if (HookPoint.options.some((point) => settings[`hook_url_${KEY_OF[point]}`] !== undefined)) {
    if (file === undefined) {
      const reason = 'hook_url_* is set but hook_secret_file is not: HTTP hooks are always signed (X-Vmbackup-Signature-256), set hook_secret_file';
      issues.push({ key: 'hook_secret_file', reason, message: reason });
    } else {
      try {
        const secret = readFile(file).split(/\r?\n/)[0] ?? '';
        if (secret === '') issue('hook_secret_file', file, 'its first line (the secret) is empty');
        else config.secret = secret;
        const mode = fileMode(file);
        if (mode !== undefined && (mode & 0o044) !== 0) warnings.push(`hook_secret_file ${file} is readable by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): chmod 600 ${file}`);
      } catch (error) {
        issue('hook_secret_file', file, `cannot read it: ${fsReason(error)}`);
      }
    }
  }
  if (issues.length > 0) {
    throw configError(issues);
  }
  return { config, warnings };
}

export interface HooksFromSettingsDeps {
  /** Process logger: hook outcomes and output are logged through it (or the job's child). */
  log: Logger;
  /** Environment command hooks start from (vmbackup's own VMBACKUP_* removed). */
  env: Readonly<Record<string, string | undefined>>;
  /** The bus NATS hooks ask on; without it, `hooks_nats = true` is a ConfigError. */
  bus?: Bus;
  /** Where each key was set (LoadedSettings.where), for messages. */
  where?: Partial<Record<string, string>>;
  readFile?: (path: string) => string;
}

/**
 * The HookRunner of the settings — `noHooks` when no hook is configured. Call it once at
 * start-up (a bad hook setting is a ConfigError: exit 2 before anything runs) and give the
 * runner to `serve` (ServeDeps.hooks) or `runEmbedded`. Warnings (a secret file readable by
 * others) are logged.
 *
 * @example
 *   const hooks = hooksFromSettings(settings, { log, env: process.env, bus, where: loaded.where });
 *   await serve(functions, { bus, log, xapi, clock, origin, hooks }, opts);
 */
export function hooksFromSettings(settings: Settings, deps: HooksFromSettingsDeps): HookRunner {
  const checked = hookConfigFromSettings(settings, {
    hasBus: deps.bus !== undefined,
    ...(deps.where !== undefined ? { where: deps.where } : {}),
    ...(deps.readFile !== undefined ? { readFile: deps.readFile } : {}),
  });
  return hooksFromConfig(checked, deps);
}

/**
 * The HookRunner of a hook config already checked (hookConfigFromSettings, e.g. while the
 * command's settings were loaded): logs its warnings, reads nothing again.
 */
export function hooksFromConfig(checked: { config: HookConfig; warnings: readonly string[] }, deps: Pick<HooksFromSettingsDeps, 'log' | 'env' | 'bus'>): HookRunner {
  for (const w of checked.warnings) deps.log.warn(w);
  return createHookRunner(checked.config, { log: deps.log, env: deps.env, ...(deps.bus !== undefined ? { bus: deps.bus } : {}) });
}

function urlProblem(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return 'must be an http:// or https:// URL';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return `scheme ${u.protocol.slice(0, -1)} is not supported (use https:// or http://)`;
  if (u.username !== '' || u.password !== '') return 'must not contain a user or password (requests are signed with hook_secret_file)';
  return undefined;
}

/**
 * Why `path` cannot be run as a hook's program, or undefined when it can: it must exist, be a
 * regular file (or a link to one) and be executable by this process.
 *
 * @example programProblem('/usr/local/sbin/nope') // → 'the program /usr/local/sbin/nope does not exist'
 */
export function programProblem(path: string): string | undefined {
  let stat;
  try {
    stat = statSync(path);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'ENOENT') return `the program ${path} does not exist`;
    if (code === 'ENOTDIR') return `the program ${path} does not exist (a part of its path is not a directory)`;
    if (code === 'EACCES') return `the program ${path} cannot be reached (permission denied on a directory of its path)`;
    return `the program ${path} cannot be checked (${code ?? String(error)})`;
  }
  if (stat.isDirectory()) return `the program ${path} is a directory`;
  if (!stat.isFile()) return `the program ${path} is not a regular file`;
  try {
    accessSync(path, constants.X_OK);
  } catch {
    return `the program ${path} is not executable (mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}: chmod +x it)`;
  }
  return undefined;
}

/**
 * `where` (LoadedSettings.where: `/etc/vmbackup.cfg line 4`, `environment (VMBACKUP_…)`,
 * `command line (--…)`) as the config loader words it in a message, with the file and line.
 */
function placeOf(where: string): { where: string; phrase: string; file?: string; line?: number } {
  if (where.startsWith('environment (') || where.startsWith('command line (')) return { where, phrase: `${where.startsWith('environment') ? 'in' : 'on'} the ${where}` };
  const m = /^(.*) line (\d+)$/.exec(where);
  return { where, phrase: `in ${where}`, ...(m !== null ? { file: m[1]!, line: Number(m[2]) } : {}) };
}


function defaultFileMode(path: string): number | undefined {
  try {
    return statSync(path).mode;
  } catch {
    return undefined;
  }
}
