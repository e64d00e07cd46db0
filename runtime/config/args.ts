import { UsageError } from '../errors.js';
import { COMMAND_SPECS, commandSpec } from './commands.js';
import type { CommandOption } from './commands.js';
import { closest } from './ini.js';
import { Settings } from './schema.js';

/**
 * VmBackup's command line, spelled as VmBackup (argparse) spelled it, plus vmbackup's own
 * options. Parsing is strict: an unknown option, a missing value or a value given to a switch
 * is a UsageError naming the option. Values are returned as typed; loadSettings validates them
 * (so a bad value is reported like a bad config-file value, naming key and option).
 *
 * Accepted forms, as argparse accepts them: `--opt value`, `--opt=value`, `-e NAME`, `-eNAME`,
 * `-e=NAME`, combined switches `-pH` (also `-pHe NAME`), `--` (after which nothing may follow,
 * VmBackup has no positional arguments). Abbreviated long options (`--pool`) are refused with a
 * suggestion: with the new `--no-…` options they would be ambiguous.
 *
 * @example
 *   parseArgs(['-pH', '-e', 'DEV-MYSQL:2', '--max-backups=7'])
 *   // → { values: { pool_backup: true, host_backup: true, vm_exports: ['DEV-MYSQL:2'], max_backups: '7' },
 *   //     spellings: { pool_backup: '-p', …, max_backups: '--max-backups' }, flags: { preview: false, … } }
 */

/** Settings keys the command line can set. */
export type ArgKey =
  | 'base_dir'
  | 'backup_dir'
  | 'pool_backup'
  | 'host_backup'
  | 'log_level'
  | 'compress'
  | 'vdi_export_format'
  | 'vm_exports'
  | 'vdi_exports'
  | 'delta_exports'
  | 'excludes'
  | 'max_backups'
  | 'space_threshold'
  | 'concurrency'
  | 'xapi_url'
  | 'username'
  | 'password_file'
  | 'tls_ca_file'
  | 'insecure'
  | 'nats_url'
  | 'worker_functions'
  | 'gateway_listen'
  | 'metrics_listen';

/** Options that are not settings. */
export interface CliFlags {
  preview: boolean;
  json: boolean;
  help: boolean;
  version: boolean;
  /** `--progress` (true) / `--no-progress` (false), the last given; unset: only on a terminal. */
  progress?: boolean;
}

export interface ParsedArgs {
  /** `-c/--config FILE`, as typed. */
  config?: string;
  /**
   * Settings given on the command line, as typed: strings for valued options, booleans for
   * switches (`-p` → true, `--no-pool-backup` → false), `compress` as 'gzip' (`-C`), 'none'
   * (`--no-compress`) or the `--compression` value, arrays for the repeatable `-e/-E/-x` (one
   * item per occurrence, not split at commas, as in VmBackup).
   */
  values: Partial<Record<ArgKey, string | boolean | string[]>>;
  /** The spelling that set each key (the last one wins), for messages: `--max-backups`, `-F`. */
  spellings: Partial<Record<ArgKey | 'config', string>>;
  flags: CliFlags;
  /** Every option given, by long name and as spelled (`preview` → `--preview`, `pool-backup` → `-p`). */
  given: Map<string, string>;
}

type Target =
  | { kind: 'value'; key: ArgKey | 'config'; repeat?: boolean }
  | { kind: 'switch'; key: ArgKey; value: boolean | string }
  | { kind: 'flag'; name: keyof CliFlags; value?: boolean };

/** One option of the command line, as shown by `--help`. */
export interface OptionSpec {
  short?: string;
  long: string;
  /** Set when the option takes a value. */
  metavar?: string;
  target: Target;
  help: string;
  /** `vmbackup`: VmBackup's own options; `extra`: added by vmbackup. */
  group: 'vmbackup' | 'extra' | 'nats';
}

const D = defaults();

function defaults() {
  const d = Settings.shape;
  const base = d.base_dir.parse(undefined);
  return {
    base,
    backupDir: `${base}/exports`,
    logLevel: d.log_level.parse(undefined),
    format: d.vdi_export_format.parse(undefined),
    compress: d.compress.parse(undefined),
    maxBackups: d.max_backups.parse(undefined),
    spaceThreshold: d.space_threshold.parse(undefined),
    concurrency: d.concurrency.parse(undefined),
    xapi: d.xapi_url.parse(undefined),
    user: d.username.parse(undefined),
    levels: d.log_level.unwrap().options.join(', '),
    formats: d.vdi_export_format.unwrap().options.join(' or '),
    compressions: d.compress.unwrap().options.join(', '),
  };
}

/**
 * Whether an option changes what a command does (`--preview`, `--json`, `--help`,
 * `--version`) rather than setting a config key: a command that does not take one must
 * refuse it, where a setting it does not use is ignored like that key in a config file.
 */
export function isModeOption(long: string): boolean {
  return OPTIONS.some((o) => o.long === long && o.target.kind === 'flag');
}

/** Every option, in `--help` order. */
export const OPTIONS: readonly OptionSpec[] = [
  { short: 'h', long: 'help', target: { kind: 'flag', name: 'help' }, group: 'vmbackup', help: 'show this help message and exit' },
  { short: 'v', long: 'version', target: { kind: 'flag', name: 'version' }, group: 'vmbackup', help: "show program's version number and exit" },
  { short: 'c', long: 'config', metavar: 'FILE', target: { kind: 'value', key: 'config' }, group: 'vmbackup', help: 'Config file for runtime overrides (read last; must exist)' },
  { short: 'b', long: 'base-dir', metavar: 'PATH', target: { kind: 'value', key: 'base_dir' }, group: 'vmbackup', help: `Base directory (Default: ${D.base})` },
  { short: 'd', long: 'backup-dir', metavar: 'PATH', target: { kind: 'value', key: 'backup_dir' }, group: 'vmbackup', help: `Backups directory (Default: ${D.backupDir}, i.e. <base-dir>/exports)` },
  { short: 'p', long: 'pool-backup', target: { kind: 'switch', key: 'pool_backup', value: true }, group: 'vmbackup', help: 'Backup Pool DB' },
  { short: 'H', long: 'host-backup', target: { kind: 'switch', key: 'host_backup', value: true }, group: 'vmbackup', help: 'Backup Hosts in Pool (dom0)' },
  { short: 'l', long: 'log-level', metavar: 'LEVEL', target: { kind: 'value', key: 'log_level' }, group: 'vmbackup', help: `Log Level: ${D.levels} (Default: ${D.logLevel})` },
  { short: 'C', long: 'compress', target: { kind: 'switch', key: 'compress', value: 'gzip' }, group: 'vmbackup', help: 'Compress on export (vm-exports only, gzip)' },
  { short: 'F', long: 'format', metavar: 'FORMAT', target: { kind: 'value', key: 'vdi_export_format' }, group: 'vmbackup', help: `VDI export format, ${D.formats} (vdi-exports only, Default: ${D.format})` },
  { long: 'preview', target: { kind: 'flag', name: 'preview' }, group: 'vmbackup', help: 'Preview resulting config and exit' },
  { short: 'e', long: 'vm-export', metavar: 'STRING', target: { kind: 'value', key: 'vm_exports', repeat: true }, group: 'vmbackup', help: 'VM name or Regex for vm-export, NAME[:MAX] (Default: ".*" when no export list is configured) NOTE: Specify multiple times for multiple values' },
  { short: 'E', long: 'vdi-export', metavar: 'STRING', target: { kind: 'value', key: 'vdi_exports', repeat: true }, group: 'vmbackup', help: 'VM name or Regex for vdi-export, NAME[:MAX[:DISK;DISK]] (Default: None) NOTE: Specify multiple times for multiple values' },
  { long: 'delta-export', metavar: 'STRING', target: { kind: 'value', key: 'delta_exports', repeat: true }, group: 'extra', help: 'VM name or Regex for an incremental backup into the chunk store, NAME[:MAX] (MAX = points kept; Default: None) NOTE: Specify multiple times for multiple values' },
  { short: 'x', long: 'exclude', metavar: 'STRING', target: { kind: 'value', key: 'excludes', repeat: true }, group: 'vmbackup', help: 'VM name or Regex to exclude (Default: None) NOTE: Specify multiple times for multiple values' },
  { long: 'no-pool-backup', target: { kind: 'switch', key: 'pool_backup', value: false }, group: 'extra', help: 'Do not backup Pool DB, even if a config file says so' },
  { long: 'no-host-backup', target: { kind: 'switch', key: 'host_backup', value: false }, group: 'extra', help: 'Do not backup Hosts, even if a config file says so' },
  { long: 'no-compress', target: { kind: 'switch', key: 'compress', value: 'none' }, group: 'extra', help: 'Do not compress, even if a config file says so' },
  { long: 'compression', metavar: 'ALGO', target: { kind: 'value', key: 'compress' }, group: 'extra', help: `Compression of vm-exports: ${D.compressions} (Default: ${D.compress})` },
  { long: 'max-backups', metavar: 'N', target: { kind: 'value', key: 'max_backups' }, group: 'extra', help: `Backups kept per VM, at least 1 (Default: ${D.maxBackups})` },
  { long: 'space-threshold', metavar: 'N', target: { kind: 'value', key: 'space_threshold' }, group: 'extra', help: `Percent of the backup filesystem that must stay free (Default: ${D.spaceThreshold})` },
  { long: 'concurrency', metavar: 'N', target: { kind: 'value', key: 'concurrency' }, group: 'extra', help: `VMs backed up at the same time (Default: ${D.concurrency})` },
  { long: 'xapi', metavar: 'URL', target: { kind: 'value', key: 'xapi_url' }, group: 'extra', help: `XAPI of the pool: host, host:port or https://host[:port] (Default: ${D.xapi})` },
  { long: 'user', metavar: 'NAME', target: { kind: 'value', key: 'username' }, group: 'extra', help: `XAPI user name (Default: ${D.user})` },
  { long: 'password-file', metavar: 'FILE', target: { kind: 'value', key: 'password_file' }, group: 'extra', help: 'File whose first line is the XAPI password (Default: env VMBACKUP_PASSWORD)' },
  { long: 'tls-ca-file', metavar: 'FILE', target: { kind: 'value', key: 'tls_ca_file' }, group: 'extra', help: "PEM file of the CA that signed the pool's certificate (Default: system CAs)" },
  { long: 'insecure', target: { kind: 'switch', key: 'insecure', value: true }, group: 'extra', help: "Do not check the pool's TLS certificate" },
  { long: 'no-insecure', target: { kind: 'switch', key: 'insecure', value: false }, group: 'extra', help: "Check the pool's TLS certificate (overrides insecure)" },
  { long: 'json', target: { kind: 'flag', name: 'json' }, group: 'extra', help: 'Print JSON instead of text: the run summary (each VM\'s status, files, sizes, errors), or with --preview what would be backed up' },
  { long: 'progress', target: { kind: 'flag', name: 'progress', value: true }, group: 'extra', help: 'Show a live line per running VM (phase, bytes, rate, ETA) even when stdout is not a terminal (Default: on a terminal only)' },
  { long: 'no-progress', target: { kind: 'flag', name: 'progress', value: false }, group: 'extra', help: 'No live progress lines, even on a terminal' },
  { long: 'nats', metavar: 'URL', target: { kind: 'value', key: 'nats_url' }, group: 'nats', help: 'NATS server(s), e.g. nats://127.0.0.1:4222 (worker, run, status, invoke, gateway)' },
  { long: 'functions', metavar: 'LIST', target: { kind: 'value', key: 'worker_functions', repeat: true }, group: 'nats', help: 'Functions this worker serves, e.g. export,prune (Default: all)' },
  { long: 'listen', metavar: 'HOST:PORT', target: { kind: 'value', key: 'gateway_listen' }, group: 'nats', help: 'Where the gateway listens (Default: 127.0.0.1:8080)' },
  { long: 'metrics-listen', metavar: 'HOST:PORT', target: { kind: 'value', key: 'metrics_listen' }, group: 'nats', help: "Where the worker serves GET /metrics: its jobs and their durations per function (Default: off)" },
];

const BY_SHORT = new Map(OPTIONS.filter((o) => o.short).map((o) => [o.short!, o]));
const BY_LONG = new Map(OPTIONS.map((o) => [o.long, o]));

function names(option: OptionSpec): string {
  return option.short ? `-${option.short}/--${option.long}` : `--${option.long}`;
}

// argparse takes "-1" as a value, not an option, when no option looks like a number.
function looksLikeValue(arg: string): boolean {
  return !arg.startsWith('-') || arg === '-' || /^-\d+$|^-\d*\.\d+$/.test(arg);
}

/** Parse `argv` (without the node and script names). Throws UsageError. */
export function parseArgs(argv: readonly string[]): ParsedArgs {
  const result: ParsedArgs = { values: {}, spellings: {}, flags: { preview: false, json: false, help: false, version: false }, given: new Map() };

  const apply = (option: OptionSpec, spelled: string, value?: string): void => {
    result.given.set(option.long, spelled);
    const target = option.target;
    if (target.kind === 'flag') {
      result.flags[target.name] = target.value ?? true;
    } else if (target.kind === 'switch') {
      result.values[target.key] = target.value;
      result.spellings[target.key] = spelled;
    } else if (target.key === 'config') {
      result.config = value!;
      result.spellings.config = spelled;
    } else if (target.repeat) {
      const list = result.values[target.key];
      result.values[target.key] = [...(Array.isArray(list) ? list : []), value!];
      result.spellings[target.key] = spelled;
    } else {
      result.values[target.key] = value!;
      result.spellings[target.key] = spelled;
    }
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      const rest = argv.slice(i + 1);
      if (rest.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(rest[0])}: vmbackup takes options only`, { flag: rest[0] });
      break;
    }

    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
      const option = BY_LONG.get(name);
      if (!option) {
        const guess = closest(name, [...BY_LONG.keys()]);
        throw new UsageError(`unrecognized option --${name}${guess ? ` (did you mean --${guess}?)` : ''}`, { flag: `--${name}` });
      }
      if (!option.metavar) {
        if (eq !== -1) throw new UsageError(`option ${names(option)} takes no value (got ${JSON.stringify(arg)})`, { flag: `--${name}` });
        apply(option, `--${name}`);
        continue;
      }
      if (eq !== -1) {
        apply(option, `--${name}`, arg.slice(eq + 1));
        continue;
      }
      const next = argv[i + 1];
      if (next === undefined || !looksLikeValue(next)) {
        throw new UsageError(`option ${names(option)} needs a value (${option.metavar})${next === undefined ? '' : `; to give one that starts with "-", write --${name}=${next}`}`, { flag: `--${name}` });
      }
      apply(option, `--${name}`, next);
      i++;
      continue;
    }

    if (arg.startsWith('-') && arg !== '-') {
      // A cluster of short options: switches, then at most one option that takes the rest
      // of the cluster (or the next argument) as its value.
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j]!;
        const option = BY_SHORT.get(letter);
        if (!option) {
          const where = arg.length > 2 ? ` (in ${JSON.stringify(arg)})` : '';
          throw new UsageError(`unrecognized option -${letter}${where}`, { flag: `-${letter}` });
        }
        if (!option.metavar) {
          if (arg[j + 1] === '=') throw new UsageError(`option ${names(option)} takes no value (got ${JSON.stringify(arg)})`, { flag: `-${letter}` });
          apply(option, `-${letter}`);
          continue;
        }
        let value = arg.slice(j + 1);
        if (value !== '') {
          if (value.startsWith('=')) value = value.slice(1);
        } else {
          const next = argv[i + 1];
          if (next === undefined || !looksLikeValue(next)) {
            throw new UsageError(`option ${names(option)} needs a value (${option.metavar})${next === undefined ? '' : `; to give one that starts with "-", write -${letter}${next}`}`, { flag: `-${letter}` });
          }
          value = next;
          i++;
        }
        apply(option, `-${letter}`, value);
        break;
      }
      continue;
    }

    throw new UsageError(`unexpected argument ${JSON.stringify(arg)}: vmbackup takes options only (quote a VM name with spaces: -e "DEV MYSQL")`, { flag: arg });
  }
  return result;
}

/**
 * Takes a subcommand's positional arguments out of `argv`, wherever they stand among the
 * options: `status -c FILE RUN` and `status RUN -c FILE` both give RUN. Whether the word
 * after an option is that option's value is decided as `parseArgs` decides it (OPTIONS: which
 * options take a value, `-cFILE`, `--opt=value`, clusters such as `-pHe NAME`); after `--`
 * every word is positional. Unknown options stay among the options, for `parseArgs` to report.
 * More than `max` positionals is a UsageError naming the command's usage.
 *
 * @example
 *   takePositionals(['-c', '/etc/x.cfg', '20261126-121153-292f', '--json'], { command: 'vmbackup status', takes: 'one RUN', max: 1 })
 *   // → { positionals: ['20261126-121153-292f'], options: ['-c', '/etc/x.cfg', '--json'] }
 */
export function takePositionals(argv: readonly string[], spec: { command: string; takes: string; max: number }): { positionals: string[]; options: string[] } {
  const positionals: string[] = [];
  const options: string[] = [];
  scanArgs(argv).forEach((kind, i) => {
    if (kind !== 'end') (kind === 'positional' ? positionals : options).push(argv[i]!);
  });
  if (positionals.length > spec.max) {
    const extra = positionals[spec.max]!;
    throw new UsageError(`unexpected argument ${JSON.stringify(extra)}: ${spec.command} takes ${spec.max === 0 ? 'no argument' : spec.takes} (see ${spec.command} --help)`, { flag: extra });
  }
  return { positionals, options };
}

/**
 * The index of the first word of `argv` that is neither an option nor an option's value (as
 * `parseArgs` decides it), or -1: where a command name stands in `vmbackup -b DIR verify`.
 *
 * @example firstPositional(['-b', '/srv/backup', 'verify', 'web1']) // → 2
 */
export function firstPositional(argv: readonly string[]): number {
  return scanArgs(argv).indexOf('positional');
}

/** What each word of `argv` is: an option, an option's value, a positional, or `--` (the end of the options). */
function scanArgs(argv: readonly string[]): ('option' | 'value' | 'positional' | 'end')[] {
  const kinds: ('option' | 'value' | 'positional' | 'end')[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      kinds.push('end');
      for (let k = i + 1; k < argv.length; k++) kinds.push('positional');
      break;
    }
    if (arg.startsWith('--')) {
      kinds.push('option');
      const option = BY_LONG.get(arg.slice(2));
      if (option?.metavar !== undefined && i + 1 < argv.length && looksLikeValue(argv[i + 1]!)) {
        kinds.push('value');
        i++;
      }
      continue;
    }
    if (arg.startsWith('-') && arg !== '-') {
      kinds.push('option');
      for (let j = 1; j < arg.length; j++) {
        const option = BY_SHORT.get(arg[j]!);
        if (option === undefined) break;
        if (option.metavar === undefined) continue;
        // The rest of the cluster is the value, or else the next word.
        if (j === arg.length - 1 && i + 1 < argv.length && looksLikeValue(argv[i + 1]!)) {
          kinds.push('value');
          i++;
        }
        break;
      }
      continue;
    }
    kinds.push('positional');
  }
  return kinds;
}

const WIDTH = 79;
const HELP_COLUMN = 24;

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(line);
  return lines;
}

function invocation(option: CommandOption): string {
  const value = option.metavar ? ` ${option.metavar}` : '';
  return [option.short ? `-${option.short}${value}` : undefined, `--${option.long}${value}`].filter(Boolean).join(', ');
}

/** Rows of a help section: the head, then its text from column 24 (on the next line when the head is long). */
function rows(title: string, entries: readonly { head: string; help: string }[]): string[] {
  const out = [`${title}:`];
  for (const entry of entries) {
    const head = `  ${entry.head}`;
    const help = wrap(entry.help, WIDTH - HELP_COLUMN);
    if (head.length <= HELP_COLUMN - 2) {
      out.push(head.padEnd(HELP_COLUMN) + (help[0] ?? ''));
      help.slice(1).forEach((l) => out.push(' '.repeat(HELP_COLUMN) + l));
    } else {
      out.push(head);
      help.forEach((l) => out.push(' '.repeat(HELP_COLUMN) + l));
    }
  }
  return out;
}

function section(title: string, options: readonly CommandOption[]): string[] {
  return rows(title, options.map((o) => ({ head: invocation(o), help: o.help })));
}

function usagePart(o: CommandOption): string {
  const part = `${o.short ? `-${o.short}` : `--${o.long}`}${o.metavar ? ` ${o.metavar}` : ''}`;
  return o.required === true ? part : `[${part}]`;
}

/** `usage: PROG PART PART …`, wrapped under its first part. */
function usageLines(prog: string, parts: readonly string[]): string {
  const lead = `usage: ${prog} `;
  const lines: string[] = [];
  let line = '';
  for (const part of parts) {
    if (line !== '' && lead.length + line.length + 1 + part.length > WIDTH) {
      lines.push(line);
      line = part;
    } else {
      line = line === '' ? part : `${line} ${part}`;
    }
  }
  lines.push(line);
  return lines.map((l, n) => (n === 0 ? lead : ' '.repeat(lead.length)) + l).join('\n');
}

/** The usage line(s), argparse style: `usage: vmbackup [-h] [-v] [-c FILE] …`. */
export function usageText(prog = 'vmbackup'): string {
  return usageLines(prog, OPTIONS.map(usagePart));
}

/** The subcommands, for `vmbackup --help`. */
function commandsSection(): string[] {
  return rows(
    'commands (vmbackup COMMAND --help describes each)',
    COMMAND_SPECS.map((c) => ({ head: `${c.name}${c.args !== undefined ? ` ${c.args}` : ''}`, help: c.summary })),
  );
}

/** A command's option: its own, or vmbackup's (by long name). */
function commandOption(option: CommandOption | string): CommandOption {
  if (typeof option !== 'string') return option;
  const spec = BY_LONG.get(option);
  if (spec === undefined) throw new Error(`commands.ts names an unknown option --${option}`);
  return spec;
}

/**
 * What `vmbackup COMMAND --help` prints for a command described in commands.ts: the usage
 * line with its positional arguments, what it does, its arguments, its own options, then
 * vmbackup's options it reads its settings with. `notes` are paragraphs added at the end
 * (what is only known at run time, such as the list of functions).
 *
 * @example process.stdout.write(commandHelp('status', { version: '0.1.0' }));
 */
export function commandHelp(name: string, options: { version?: string; notes?: readonly string[] } = {}): string {
  const spec = commandSpec(name);
  const prog = `vmbackup ${spec.name}`;
  const own = (spec.options ?? []).map(commandOption);
  const shared = (spec.shared ?? []).map((g) => ({ title: g.title, options: g.options.map(commandOption) }));
  const parts = [...(spec.args !== undefined ? [spec.args] : []), ...own.map(usagePart), ...shared.flatMap((g) => g.options.map(usagePart))];
  const paragraphs = (texts: readonly string[]) => texts.flatMap((p) => ['', ...wrap(p, WIDTH)]);
  return [
    usageLines(prog, parts),
    '',
    ...wrap(`${prog}${options.version ? ` (vmbackup ${options.version})` : ''}: ${spec.summary}`, WIDTH),
    ...paragraphs(spec.description ?? []),
    ...(spec.arguments !== undefined ? ['', ...rows('arguments', spec.arguments.map((a) => ({ head: a.name, help: a.help })))] : []),
    ...(own.length > 0 ? ['', ...section('options', own)] : []),
    ...shared.flatMap((g) => ['', ...section(g.title, g.options)]),
    ...paragraphs([...(spec.epilog ?? []), ...(options.notes ?? [])]),
    '',
  ].join('\n');
}

/**
 * The text `vmbackup --help` prints: VmBackup's options first, as its argparse help showed
 * them, then vmbackup's own options, then where settings come from.
 *
 * @example
 *   process.stdout.write(helpText({ version: '0.1.0' }));
 */
export function helpText(options: { prog?: string; version?: string } = {}): string {
  const prog = options.prog ?? 'vmbackup';
  const title = `${prog}${options.version ? ` ${options.version}` : ''} - XenServer / XCP-ng backup, compatible with VmBackup`;
  const epilog = [
    `Config files, read in this order (last match wins): <base-dir>/etc/vmbackup.cfg, /etc/vmbackup.cfg, ~/vmbackup.cfg, then the -c file. Section [vmbackup], "key = value", lists comma-separated.`,
    `Environment: VMBACKUP_<KEY> sets a single-valued key (VMBACKUP_XAPI_URL, VMBACKUP_PASSWORD, ...) over the config files; command-line options win over both.`,
    `-e, -E and -x replace the config files' list of the same kind (-x '' empties it). Use --preview to check the result.`,
  ];
  return [
    usageText(prog),
    '',
    title,
    '',
    ...section('optional arguments', OPTIONS.filter((o) => o.group === 'vmbackup')),
    '',
    ...section('vmbackup options (not in VmBackup)', OPTIONS.filter((o) => o.group === 'extra')),
    '',
    ...section('NATS and gateway options', OPTIONS.filter((o) => o.group === 'nats')),
    '',
    ...(prog === 'vmbackup' ? [...commandsSection(), ''] : []),
    ...epilog.flatMap((p, n) => [...(n > 0 ? [''] : []), ...wrap(p, WIDTH)]),
    '',
  ].join('\n');
}
