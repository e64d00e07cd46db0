import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import { parseArgs, type ArgKey, type CliFlags } from './args.js';
import { parseEntry } from '../../functions/plan/select.js';
import { parseIni, splitList } from './ini.js';
import { Settings } from './schema.js';

/**
 * Loads the settings once, at start-up: defaults < config files (in VmBackup's order, last
 * match wins) < environment (`VMBACKUP_<KEY>`) < command line. See README.md beside this file
 * for every decision (lists, the `.*` default, base_dir, passwords, URLs).
 *
 * @example
 *   const { settings, warnings, flags } = loadSettings({ argv: process.argv.slice(2), env: process.env, home: os.homedir() });
 */

export type SettingKey = keyof Settings;

/** Where a setting's value came from. `file:<path>` is a config file, or the password_file. */
export type SettingSource = 'default' | 'env' | 'flag' | `file:${string}`;

export interface LoadSettingsOptions {
  /** Command-line arguments, without node and the script. */
  argv: readonly string[];
  env: Readonly<Record<string, string | undefined>>;
  /** Home directory: `~/vmbackup.cfg` is `<home>/vmbackup.cfg`. */
  home: string;
  /** Relative paths (flags, files, env) are resolved against it. Default `process.cwd()`. */
  cwd?: string;
  /** Reads a file as UTF-8; throws a Node fs error (`code: 'ENOENT'`…) when it cannot. */
  readFile?: (path: string) => string;
  /** `st_mode` of a file, or undefined when it does not exist. For the 0600 warnings. */
  fileMode?: (path: string) => number | undefined;
  /** The system-wide file. Default `/etc/vmbackup.cfg`; tests point it into a temp dir. */
  systemConfig?: string;
  /** Base directory when neither `-b` nor `VMBACKUP_BASE_DIR` is given. Default `/mnt/VmBackup`. */
  defaultBaseDir?: string;
}

export interface LoadedSettings {
  settings: Settings;
  /** For each key: `default`, `file:<path>` (config file, or password_file for `password`), `env` or `flag`. */
  sources: Record<SettingKey, SettingSource>;
  /** For each key, a phrase for messages: `/etc/vmbackup.cfg line 4`, `command line (--max-backups)`, `environment (VMBACKUP_XAPI_URL)`, `default`. */
  where: Record<SettingKey, string>;
  /** Config files that were read, in the order read. */
  files: string[];
  warnings: string[];
  flags: CliFlags;
  /** The command-line options given, by long name, as spelled (ParsedArgs.given). */
  given: ReadonlyMap<string, string>;
  /**
   * The config files' vdi_exports and vm_exports (the file that wins), also when `-E`/`-e`
   * replaced them for selection: the MAX of a VM a request selects without one comes from
   * them. `where` is the file and line.
   */
  configLists: { list: 'vdi_exports' | 'vm_exports'; entries: string[]; where: string }[];
}

/** One invalid value; ConfigError's `data.issues` carries them all. */
export interface ConfigIssue {
  key?: string;
  /** Config file the value is in; absent for the command line and the environment. */
  file?: string;
  line?: number;
  /** `/etc/vmbackup.cfg line 4`, `command line (--max-backups)`, `environment (VMBACKUP_MAX_BACKUPS)`. */
  where: string;
  reason: string;
  /** The whole sentence: `max_backups = 0 in /etc/vmbackup.cfg line 4: must be an integer >= 1`. */
  message: string;
}

type Origin =
  | { kind: 'file'; file: string; line: number; rank: number }
  | { kind: 'env'; name: string; rank: number }
  | { kind: 'flag'; flag: string; rank: number };

interface Candidate {
  key: SettingKey;
  raw: string | boolean | string[];
  origin: Origin;
}

const RANK_ENV = 1000;
const RANK_FLAG = 2000;

const KEYS = Object.keys(Settings.shape) as SettingKey[];
const LIST_KEYS = ['vm_exports', 'vdi_exports', 'excludes'] as const satisfies readonly SettingKey[];
const PATH_KEYS = new Set<SettingKey>([
  'base_dir',
  'backup_dir',
  'password_file',
  'tls_ca_file',
  'nats_token_file',
  'nats_password_file',
  'nats_creds_file',
  'nats_tls_ca_file',
  'nats_tls_cert_file',
  'nats_tls_key_file',
  'gateway_tokens_file',
  'webhook_secret_file',
  'hook_secret_file',
  'metrics_tokens_file',
  'metrics_textfile',
  'report_url_file',
]);
const SECRET_KEYS = new Set<SettingKey>(['password']);
const TRUE = /^(1|yes|true|on)$/i;
const FALSE = /^(0|no|false|off)$/i;

type Kind = 'boolean' | 'integer' | 'number' | 'enum' | 'string' | 'list';

interface KeyInfo {
  kind: Kind;
  optional: boolean;
  options?: readonly string[];
  min?: number;
  max?: number;
}

/** What the schema says about a key, read from the schema itself so the two cannot drift. */
function keyInfo(key: SettingKey): KeyInfo {
  // zod's internals are typed loosely; only `def.type`, `def.innerType` and the number/enum
  // getters are read here.
  let schema = Settings.shape[key] as unknown as { def: { type: string; innerType?: unknown }; options?: string[]; minValue?: number | null; maxValue?: number | null; isInt?: boolean };
  let optional = false;
  while (schema.def.innerType) {
    if (schema.def.type === 'optional') optional = true;
    schema = schema.def.innerType as typeof schema;
  }
  switch (schema.def.type) {
    case 'boolean':
      return { kind: 'boolean', optional };
    case 'enum':
      return { kind: 'enum', optional, options: schema.options! };
    case 'array':
      return { kind: 'list', optional };
    case 'number': {
      const min = schema.minValue ?? undefined;
      const max = schema.maxValue !== null && schema.maxValue !== undefined && schema.maxValue < Number.MAX_SAFE_INTEGER ? schema.maxValue : undefined;
      return { kind: schema.isInt ? 'integer' : 'number', optional, min: min !== undefined && min > -Number.MAX_SAFE_INTEGER ? min : undefined, max };
    }
    default:
      return { kind: 'string', optional };
  }
}

const INFO = Object.fromEntries(KEYS.map((key) => [key, keyInfo(key)])) as Record<SettingKey, KeyInfo>;
const SCALAR_KEYS = KEYS.filter((key) => INFO[key].kind !== 'list');

function expectation(key: SettingKey): string {
  const info = INFO[key];
  if (key === 'compress') return 'must be gzip, zstd or none (or a boolean: true means gzip)';
  switch (info.kind) {
    case 'boolean':
      return 'must be true or false (also yes/no, on/off, 1/0)';
    case 'enum':
      return `must be one of ${info.options!.join(', ')}`;
    case 'integer':
    case 'number': {
      const what = info.kind === 'integer' ? 'an integer' : 'a number';
      if (info.min !== undefined && info.max !== undefined) return `must be ${what} from ${info.min} to ${info.max}`;
      if (info.min !== undefined) return `must be ${what} >= ${info.min}`;
      return `must be ${what}`;
    }
    case 'list':
      return 'must be a comma-separated list';
    default:
      return 'must not be empty';
  }
}

interface Place {
  where: string;
  /** "in /etc/vmbackup.cfg line 4", "on the command line (-F)", "in the environment (…)". */
  phrase: string;
  file?: string;
  line?: number;
}

function describe(origin: Origin): Place {
  switch (origin.kind) {
    case 'file':
      return { where: `${origin.file} line ${origin.line}`, phrase: `in ${origin.file} line ${origin.line}`, file: origin.file, line: origin.line };
    case 'env':
      return { where: `environment (${origin.name})`, phrase: `in the environment (${origin.name})` };
    case 'flag':
      return { where: `command line (${origin.flag})`, phrase: `on the command line (${origin.flag})` };
  }
}

function sourceOf(origin: Origin): SettingSource {
  return origin.kind === 'file' ? `file:${origin.file}` : origin.kind;
}

function show(key: SettingKey, raw: string | boolean | string[]): string {
  if (SECRET_KEYS.has(key)) return '(hidden)';
  if (Array.isArray(raw)) return raw.map((item) => JSON.stringify(item)).join(' ');
  return showText(String(raw));
}

/** A value as messages show it: quoted when blank at an end, no URL user or password. */
export function showText(text: string): string {
  return text === '' || /^\s|\s$|\n/.test(text) ? JSON.stringify(text) : redactUrl(text);
}

function redactUrl(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^@/]*@/i, '$1***@');
}

/** A file system error in words (`does not exist`, `permission denied`…), for `cannot read it: …`. */
export function fsReason(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return 'does not exist';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory';
  return typeof code === 'string' ? code : error instanceof Error ? error.message : String(error);
}

function isMissing(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

function defaultReadFile(path: string): string {
  return readFileSync(path, 'utf8');
}

function defaultFileMode(path: string): number | undefined {
  try {
    return statSync(path).mode;
  } catch {
    return undefined;
  }
}

/**
 * Normalise `xapi_url`: `host`, `host:port`, `[v6]:port`, a bare IPv6 address,
 * `https://host[:port]` or `http://host[:port]` → `https://host[:port]` (no trailing slash,
 * default port dropped). User info, paths and other schemes are refused.
 *
 * @example
 *   normalizeXapiUrl('pool-master:8443') // → { url: 'https://pool-master:8443' }
 *   normalizeXapiUrl('http://10.0.0.1')  // → { url: 'http://10.0.0.1', cleartext: true }
 */
export function normalizeXapiUrl(value: string): { url: string; cleartext: boolean } | { error: string } {
  const text = value.trim();
  if (text === '') return { error: 'must not be empty' };
  let candidate = text;
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    // A bare IPv6 address has several colons and no brackets.
    candidate = (text.split(':').length > 2 && !text.startsWith('[')) ? `https://[${text}]` : `https://${text}`;
  }
  let url: URL;
  try {
    url = new URL(candidate);
  } catch {
    return { error: 'must be host, host:port, https://host[:port] or http://host[:port]' };
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return { error: `scheme ${url.protocol.slice(0, -1)} is not supported (use https:// or http://)` };
  if (url.username !== '' || url.password !== '') return { error: 'must not contain a user or password (use username and password_file)' };
  if (url.hostname === '') return { error: 'has no host name' };
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') return { error: 'must not have a path, query or fragment: XAPI is at the root of the host' };
  return { url: `${url.protocol}//${url.host}`, cleartext: url.protocol === 'http:' };
}

/**
 * Read, merge and validate the configuration. Throws UsageError for a bad command line and one
 * ConfigError listing every invalid value (each naming key, file and line or option, reason).
 *
 * With `--help` or `--version` nothing is read: the defaults are returned, so that help works
 * even when a config file is broken.
 */
export function loadSettings(options: LoadSettingsOptions): LoadedSettings {
  const cwd = options.cwd ?? process.cwd();
  const readFile = options.readFile ?? defaultReadFile;
  const fileMode = options.fileMode ?? defaultFileMode;
  const env = options.env;
  const args = parseArgs(options.argv);

  const warnings: string[] = [];
  const issues: ConfigIssue[] = [];
  const files: string[] = [];
  const candidates = new Map<SettingKey, Candidate[]>();
  const add = (candidate: Candidate): void => {
    const list = candidates.get(candidate.key) ?? [];
    list.push(candidate);
    candidates.set(candidate.key, list);
  };
  /** `subject` is what the sentence starts with: `max_backups = 0`, `vm_exports entry "X:0"`. */
  const issue = (key: string | undefined, place: Place, reason: string, subject?: string): void => {
    const { phrase, ...rest } = place;
    const message = subject === undefined ? `${place.where}: ${reason}` : `${subject} ${phrase}: ${reason}`;
    issues.push({ ...(key !== undefined ? { key } : {}), ...rest, reason, message });
  };

  const envValue = (key: SettingKey): string | undefined => {
    const value = env[`VMBACKUP_${key.toUpperCase()}`];
    return value === undefined || value === '' ? undefined : value;
  };

  // Where config files are searched is fixed before any is read: -b, else VMBACKUP_BASE_DIR,
  // else the default. A base_dir inside a file cannot move the file it is in.
  const defaultBase = options.defaultBaseDir ?? Settings.shape.base_dir.parse(undefined);
  const flagBase = args.values.base_dir;
  const searchBase = resolve(cwd, typeof flagBase === 'string' && flagBase !== '' ? flagBase : envValue('base_dir') ?? defaultBase);

  if (args.flags.help || args.flags.version) {
    return finishDefaults(defaultBase, args.flags, args.given);
  }

  const configFlag = args.config !== undefined ? resolve(cwd, args.config) : undefined;
  const searched: { path: string; required: boolean }[] = [
    { path: join(searchBase, 'etc', 'vmbackup.cfg'), required: false },
    { path: options.systemConfig ?? '/etc/vmbackup.cfg', required: false },
    { path: join(options.home, 'vmbackup.cfg'), required: false },
    ...(configFlag !== undefined ? [{ path: configFlag, required: true }] : []),
  ];

  const filesWithPassword: string[] = [];
  searched.forEach(({ path, required }, rank) => {
    // The same file twice (-c /etc/vmbackup.cfg) is read once, at its last place.
    if (searched.slice(rank + 1).some((later) => later.path === path)) return;
    let text: string;
    try {
      text = readFile(path);
    } catch (error) {
      if (isMissing(error) && !required) return;
      if (required) {
        const flag = args.spellings.config ?? '-c';
        issue('config', { where: `command line (${flag})`, phrase: `on the command line (${flag})` }, `config file ${fsReason(error)}`, `config = ${path}`);
      } else {
        issue(undefined, { where: path, phrase: `in ${path}`, file: path }, `config file cannot be read: ${fsReason(error)}`);
      }
      return;
    }
    files.push(path);
    const parsed = parseIni(text, path, { knownKeys: KEYS });
    warnings.push(...parsed.warnings);
    for (const error of parsed.errors) issue(undefined, describe({ kind: 'file', file: error.file, line: error.line, rank }), error.message);
    for (const entry of parsed.entries) {
      const key = entry.key as SettingKey;
      if (key === 'password' && !filesWithPassword.includes(path)) filesWithPassword.push(path);
      add({ key, raw: entry.value, origin: { kind: 'file', file: path, line: entry.line, rank } });
    }
  });

  for (const key of SCALAR_KEYS) {
    const name = `VMBACKUP_${key.toUpperCase()}`;
    const value = envValue(key);
    if (value !== undefined) add({ key, raw: value, origin: { kind: 'env', name, rank: RANK_ENV } });
  }
  for (const key of LIST_KEYS) {
    const name = `VMBACKUP_${key.toUpperCase()}`;
    if (env[name] !== undefined) warnings.push(`${name} is ignored: ${key} is a list, set it in a config file or with ${key === 'excludes' ? '-x' : key === 'vm_exports' ? '-e' : '-E'}`);
  }

  for (const [key, raw] of Object.entries(args.values) as [ArgKey, string | boolean | string[]][]) {
    add({ key, raw, origin: { kind: 'flag', flag: args.spellings[key] ?? key, rank: RANK_FLAG } });
  }

  const winner = (key: SettingKey): Candidate | undefined => {
    const list = candidates.get(key);
    if (!list || list.length === 0) return undefined;
    return list.reduce((best, c) => (c.origin.rank > best.origin.rank || (c.origin.rank === best.origin.rank && c.origin.kind === 'file' && best.origin.kind === 'file' && c.origin.line >= best.origin.line) ? c : best));
  };

  // `%(key)s` in a config-file value refers to another key's value and `%%` is a '%', as in
  // VmBackup's SafeConfigParser (its own default was backup_dir = %(base_dir)s/exports).
  const interpolate = (key: SettingKey, text: string, depth: number): string | { error: string } => {
    if (!text.includes('%')) return text;
    let failure: string | undefined;
    const out = text.replace(/%%|%\(([^)]*)\)s/g, (match, name: string | undefined) => {
      if (match === '%%') return '%';
      const ref = name!.toLowerCase() as SettingKey;
      if (!(ref in Settings.shape) || INFO[ref].kind === 'list' || SECRET_KEYS.has(ref)) {
        failure ??= ref in Settings.shape ? `%(${name})s cannot be used: ${ref} is a list or a secret` : `%(${name})s does not name a key`;
        return match;
      }
      if (depth >= 10) {
        failure ??= `%(${name})s: interpolation nested too deep (a key refers to itself?)`;
        return match;
      }
      const value = rawText(ref, depth + 1);
      if (typeof value !== 'string') {
        failure ??= value.error;
        return match;
      }
      return value;
    });
    return failure !== undefined ? { error: failure } : out;
  };

  function rawText(key: SettingKey, depth: number): string | { error: string } {
    const w = winner(key);
    if (!w) {
      if (key === 'base_dir') return searchBase;
      if (key === 'backup_dir') {
        const base = rawText('base_dir', depth + 1);
        return typeof base === 'string' ? `${base}/exports` : base;
      }
      const value = Settings.shape[key].parse(undefined) as unknown;
      return value === undefined ? '' : String(value);
    }
    if (typeof w.raw !== 'string') return Array.isArray(w.raw) ? w.raw.join(',') : String(w.raw);
    return w.origin.kind === 'file' ? interpolate(key, w.raw, depth) : w.raw;
  }

  const settings: Record<string, unknown> = {};
  const sources = {} as Record<SettingKey, SettingSource>;
  const where = {} as Record<SettingKey, string>;

  for (const key of KEYS) {
    const w = winner(key);
    if (!w) {
      sources[key] = 'default';
      where[key] = 'default';
      continue;
    }
    sources[key] = sourceOf(w.origin);
    const place = describe(w.origin);
    where[key] = place.where;
    const subject = `${key} = ${show(key, w.raw)}`;
    let raw = w.raw;
    if (typeof raw === 'string' && w.origin.kind === 'file' && !SECRET_KEYS.has(key)) {
      const text = interpolate(key, raw, 0);
      if (typeof text !== 'string') {
        issue(key, place, text.error, subject);
        continue;
      }
      raw = text;
    }
    const coerced = coerce(key, raw, cwd);
    if ('error' in coerced) {
      issue(key, place, coerced.error, subject);
      continue;
    }
    if (coerced.warning) warnings.push(`${subject} ${place.phrase}: ${coerced.warning}`);
    if (coerced.value === undefined) continue;

    if (INFO[key].kind === 'list') {
      const items = coerced.value as string[];
      // Entries are parsed by the selection itself (functions/plan/select.ts), so the config
      // and the run can never disagree on an entry. A malformed entry (bad MAX, bad disk) or
      // an invalid regex is an error here (VmBackup skipped an invalid regex with a warning).
      for (const item of items) {
        try {
          parseEntry(item);
        } catch (error) {
          if (!(error instanceof ConfigError)) throw error;
          issue(key, place, String(error.data.detail ?? error.message), `${key} entry ${JSON.stringify(item)}`);
        }
      }
    }
    const checked = Settings.shape[key].safeParse(coerced.value);
    if (!checked.success) {
      issue(key, place, expectation(key), subject);
      continue;
    }
    settings[key] = checked.data;
  }

  // Defaults that depend on other keys.
  settings.base_dir ??= searchBase;
  if (sources.backup_dir === 'default') settings.backup_dir = join(String(settings.base_dir), 'exports');
  // VmBackup: vm_exports = .* only when no export list is configured. An explicit, empty
  // `vm_exports =` (or `-e ''`) means "no vm-exports"; an empty vdi_exports says nothing.
  if (sources.vm_exports === 'default' && ((settings.vdi_exports as string[] | undefined) ?? []).length === 0) {
    settings.vm_exports = ['.*'];
  }

  if (typeof settings.base_dir === 'string' && sources.base_dir.startsWith('file:') && settings.base_dir !== searchBase) {
    const other = join(settings.base_dir, 'etc', 'vmbackup.cfg');
    if (fileMode(other) !== undefined && !files.includes(other)) {
      warnings.push(`base_dir = ${settings.base_dir} in ${where.base_dir} does not make vmbackup read ${other}: config files are searched under -b or VMBACKUP_BASE_DIR (here ${searchBase})`);
    }
  }

  resolvePassword();

  // The other secret files are read by the commands that use them (NATS, the gateway); a
  // file others can read is worth saying at once, as for password_file.
  for (const key of SECRET_FILE_KEYS) {
    const file = settings[key];
    if (typeof file !== 'string') continue;
    const mode = fileMode(file);
    if (mode !== undefined && (mode & 0o044) !== 0) {
      warnings.push(`${key} ${file} is readable by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): chmod 600 ${file}`);
    }
  }

  if (settings.insecure === true) {
    warnings.push(`insecure is on (${where.insecure}): the pool's TLS certificate is NOT checked`);
    if (settings.tls_ca_file !== undefined) warnings.push(`tls_ca_file (${where.tls_ca_file}) is not used while insecure is on`);
  } else if (typeof settings.tls_ca_file === 'string') {
    try {
      readFile(settings.tls_ca_file);
    } catch (error) {
      issue('tls_ca_file', placeOf('tls_ca_file'), `cannot read it: ${fsReason(error)}`, `tls_ca_file = ${settings.tls_ca_file}`);
    }
  }

  // The config's own export lists, for the MAX of VMs a request selects (-e/-E replace them).
  const configLists: LoadedSettings['configLists'] = [];
  for (const key of ['vdi_exports', 'vm_exports'] as const) {
    const inFiles = (candidates.get(key) ?? []).filter((c) => c.origin.kind === 'file');
    if (inFiles.length === 0) continue;
    const w = inFiles.reduce((best, c) => (c.origin.rank > best.origin.rank || (c.origin.rank === best.origin.rank && (c.origin as { line: number }).line >= (best.origin as { line: number }).line) ? c : best));
    const text = typeof w.raw === 'string' ? interpolate(key, w.raw, 0) : w.raw;
    if (typeof text === 'object' && !Array.isArray(text)) continue; // reported above when it is the winner
    const coerced = coerce(key, text, cwd);
    if ('error' in coerced || !Array.isArray(coerced.value)) continue;
    configLists.push({ list: key, entries: coerced.value as string[], where: describe(w.origin).where });
  }

  if (issues.length > 0) throw configError(issues);

  const parsed = Settings.safeParse(settings);
  if (!parsed.success) {
    throw configError(parsed.error.issues.map((i) => {
      const key = String(i.path[0] ?? '');
      const place = key in where ? where[key as SettingKey] : 'configuration';
      return { key, where: place, reason: i.message, message: `${key} (${place}): ${i.message}` };
    }));
  }

  return { settings: parsed.data, sources, where, files, warnings, flags: args.flags, given: args.given, configLists };

  function placeOf(key: SettingKey): Place {
    const w = winner(key);
    return w ? describe(w.origin) : { where: 'default', phrase: 'by default' };
  }

  function resolvePassword(): void {
    for (const file of filesWithPassword) {
      const mode = fileMode(file);
      if (mode !== undefined && (mode & 0o044) !== 0) {
        warnings.push(`${file} contains a password but is readable by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): chmod 600 ${file}, or use password_file`);
      }
    }
    const fromKey = winner('password');
    const fromFile = winner('password_file');
    const file = settings.password_file;
    if (typeof file !== 'string') return;
    if (fromKey && fromFile && settings.password !== undefined) {
      if (fromKey.origin.rank > fromFile.origin.rank) return;
      if (fromKey.origin.rank === fromFile.origin.rank) {
        warnings.push(`both password (${where.password}) and password_file (${where.password_file}) are set: password_file is used`);
      }
    }
    let text: string;
    try {
      text = readFile(file);
    } catch (error) {
      delete settings.password;
      issue('password_file', placeOf('password_file'), `cannot read it: ${fsReason(error)}`, `password_file = ${file}`);
      return;
    }
    const password = text.split(/\r?\n/)[0] ?? '';
    if (password === '') {
      delete settings.password;
      issue('password_file', placeOf('password_file'), 'its first line (the password) is empty', `password_file = ${file}`);
      return;
    }
    const mode = fileMode(file);
    if (mode !== undefined && (mode & 0o044) !== 0) {
      warnings.push(`password_file ${file} is readable by group or others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): chmod 600 ${file}`);
    }
    settings.password = password;
    sources.password = `file:${file}`;
    where.password = `file ${file} (password_file)`;
  }
}

type Coerced = { value: unknown; warning?: string } | { error: string };

function coerce(key: SettingKey, raw: string | boolean | string[], cwd: string): Coerced {
  const info = INFO[key];
  if (info.kind === 'list') {
    const items = Array.isArray(raw) ? raw.map((item) => item.trim()).filter((item) => item !== '') : splitList(String(raw));
    return { value: items };
  }
  if (typeof raw === 'boolean') {
    return { value: key === 'compress' ? (raw ? 'gzip' : 'none') : raw };
  }
  // A secret is taken byte for byte: spaces may be part of it.
  const text = Array.isArray(raw) ? raw.join(',') : SECRET_KEYS.has(key) ? raw : raw.trim();
  // An empty value unsets an optional key (so a later file can undo an earlier one).
  if (text === '' && info.optional) return { value: undefined };

  if (key === 'compress') {
    if (TRUE.test(text)) return { value: 'gzip' };
    if (FALSE.test(text)) return { value: 'none' };
    return { value: text.toLowerCase() };
  }
  if (key === 'xapi_url') {
    const url = normalizeXapiUrl(text);
    if ('error' in url) return url;
    return { value: url.url, ...(url.cleartext ? { warning: 'http sends the password in cleartext; use https' } : {}) };
  }
  switch (info.kind) {
    case 'boolean':
      if (TRUE.test(text)) return { value: true };
      if (FALSE.test(text)) return { value: false };
      return { error: expectation(key) };
    case 'integer':
      return /^[+-]?\d+$/.test(text) ? { value: Number(text) } : { error: expectation(key) };
    case 'number':
      return /^[+-]?(\d+(\.\d*)?|\.\d+)$/.test(text) ? { value: Number(text) } : { error: expectation(key) };
    case 'enum':
      return { value: text.toLowerCase() };
    default:
      if (PATH_KEYS.has(key) && text !== '') return { value: resolve(cwd, text) };
      return { value: text };
  }
}

/** Files that hold a secret besides password_file (which resolvePassword reads and checks). */
const SECRET_FILE_KEYS = ['nats_token_file', 'nats_password_file', 'nats_creds_file', 'nats_tls_key_file', 'gateway_tokens_file', 'webhook_secret_file', 'metrics_tokens_file', 'report_url_file'] as const satisfies readonly SettingKey[];

/**
 * The ConfigError of one or more invalid values: the one sentence, or `N configuration
 * errors:` and one line each; `data.issues` has them all. Every settings check ends with it
 * (this loader, the hook settings), so the commands print them alike.
 */
export function configError(issues: readonly Pick<ConfigIssue, 'key' | 'file' | 'reason' | 'message'>[]): ConfigError {
  const message = issues.length === 1 ? issues[0]!.message : `${issues.length} configuration errors:\n${issues.map((i) => `  - ${i.message}`).join('\n')}`;
  const first = issues[0]!;
  const error = new ConfigError(message, { ...(first.key !== undefined ? { key: first.key } : {}), ...(first.file !== undefined ? { file: first.file } : {}), reason: first.reason });
  Object.assign(error.data, { issues });
  return error;
}

function finishDefaults(baseDir: string, flags: CliFlags, given: ReadonlyMap<string, string>): LoadedSettings {
  const settings = Settings.parse({ base_dir: baseDir, backup_dir: join(baseDir, 'exports'), vm_exports: ['.*'] });
  const sources = Object.fromEntries(KEYS.map((key) => [key, 'default'])) as Record<SettingKey, SettingSource>;
  const where = Object.fromEntries(KEYS.map((key) => [key, 'default'])) as Record<SettingKey, string>;
  return { settings, sources, where, files: [], warnings: [], flags, given, configLists: [] };
}
