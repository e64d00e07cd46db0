import { readFileSync, statSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Bus } from '../bus/bus.js';
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
}

/**
 * The hook configuration of the settings, checked: commands split (command-line.ts) and
 * absolute, URLs http(s), the HMAC secret read when a URL is set. Throws one ConfigError
 * naming every bad key and where it was set.
 *
 * @example hookConfigFromSettings(settings, { hasBus: false }) // → { config, warnings: [] }
 */
export function hookConfigFromSettings(settings: Settings, opts: HookSettingsOptions): { config: HookConfig; warnings: string[] } {
  const readFile = opts.readFile ?? ((p: string) => readFileSync(p, 'utf8'));
  const fileMode = opts.fileMode ?? defaultFileMode;
  const issues: { key: string; message: string }[] = [];
  const warnings: string[] = [];
  const at = (key: string) => (opts.where?.[key] !== undefined && opts.where[key] !== 'default' ? ` (${opts.where[key]})` : '');
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
      if ('error' in split) issues.push({ key: commandKey, message: `${commandKey} = ${command}${at(commandKey)}: ${split.error}` });
      else config.commands[point] = split.argv;
    }
    const urlKey = `hook_url_${KEY_OF[point]}` as const;
    const url = settings[urlKey];
    if (url !== undefined) {
      const problem = urlProblem(url);
      if (problem !== undefined) issues.push({ key: urlKey, message: `${urlKey} = ${url}${at(urlKey)}: ${problem}` });
      else config.urls[point] = url;
    }
  }
  if (settings.hooks_nats && !opts.hasBus) {
    issues.push({
      key: 'hooks_nats',
      message: `hooks_nats = true${at('hooks_nats')}: NATS hooks need a NATS connection, which this command does not have (use command or HTTP hooks, or run on NATS with vmbackup worker)`,
    });
  }
  const file = settings.hook_secret_file;
  if (HookPoint.options.some((point) => settings[`hook_url_${KEY_OF[point]}`] !== undefined)) {
    if (file === undefined) {
      issues.push({ key: 'hook_secret_file', message: 'hook_url_* is set but hook_secret_file is not: HTTP hooks are always signed (X-Vmbackup-Signature-256), set hook_secret_file' });
    } else {
      try {
        const secret = readFile(file).split(/\r?\n/)[0] ?? '';
        if (secret === '') issues.push({ key: 'hook_secret_file', message: `hook_secret_file = ${file}${at('hook_secret_file')}: its first line (the secret) is empty` });
        else config.secret = secret;
        const mode = fileMode(file);
        if (mode !== undefined && (mode & 0o044) !== 0) warnings.push(`hook_secret_file ${file} is readable by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): chmod 600 ${file}`);
      } catch (error) {
        issues.push({ key: 'hook_secret_file', message: `hook_secret_file = ${file}${at('hook_secret_file')}: cannot read it (${(error as { code?: string }).code ?? String(error)})` });
      }
    }
  }
  if (issues.length > 0) {
    const message = issues.length === 1 ? issues[0]!.message : `${issues.length} hook configuration errors:\n${issues.map((i) => `  - ${i.message}`).join('\n')}`;
    const error = new ConfigError(message, { key: issues[0]!.key });
    Object.assign(error.data, { issues });
    throw error;
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
  const { config, warnings } = hookConfigFromSettings(settings, {
    hasBus: deps.bus !== undefined,
    ...(deps.where !== undefined ? { where: deps.where } : {}),
    ...(deps.readFile !== undefined ? { readFile: deps.readFile } : {}),
  });
  for (const w of warnings) deps.log.warn(w);
  return createHookRunner(config, { log: deps.log, env: deps.env, ...(deps.bus !== undefined ? { bus: deps.bus } : {}) });
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

function defaultFileMode(path: string): number | undefined {
  try {
    return statSync(path).mode;
  } catch {
    return undefined;
  }
}
