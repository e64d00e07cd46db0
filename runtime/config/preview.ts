import type { MaxSource } from '../../functions/plan/select.js';
import type { LoadedSettings, SettingKey } from './load.js';
import { Settings } from './schema.js';

/**
 * `vmbackup --preview`: the settings and what the selection made of the pool, as text in
 * VmBackup's layout or as JSON. The password never appears, only where it comes from.
 *
 * @example
 *   const text = previewText(loaded, selection);       // VmBackup-style block
 *   const json = JSON.stringify(previewJson(loaded, selection));
 */

/**
 * What the selection (functions/plan/select.ts) decided, as this formatter needs it. Each
 * list is in the order it is shown; `maxBackups` is already resolved (no -1), `maxFrom` says
 * where it comes from. `errors` are what stops the run (shown, and the command exits 2).
 */
export interface PreviewSelection {
  excludes: { name: string }[];
  vdiExports: { vm: PreviewVm; maxBackups: number; maxFrom?: MaxSource; disks: string[] }[];
  /** delta_exports, each with what its next backup does with each disk (when the pool was asked). */
  deltaExports?: { vm: PreviewVm; maxBackups: number; maxFrom?: MaxSource; disks?: PreviewDiskRead[] }[];
  vmExports: { vm: PreviewVm; maxBackups: number; maxFrom?: MaxSource }[];
  warnings: { entry: string; list: string; message: string }[];
  errors?: { entry: string; list: string; message: string }[];
}

/** What a delta-export's next backup does with a disk: `full` (and why) or `changes` since point `base`. */
export interface PreviewDiskRead {
  disk: string;
  read: 'full' | 'changes';
  base?: string;
  reason: string;
}

/** A VM to back up: its name, and where known its uuid and the folder its backups go to. */
export interface PreviewVm {
  name: string;
  uuid?: string;
  /** Shown in the text when it is not the name (shared names, names mapped to be safe). */
  folder?: string;
}

/** The part of loadSettings' result the preview shows; `files` and `warnings` are optional. */
export type PreviewInput = Pick<LoadedSettings, 'settings' | 'sources'> & Partial<Pick<LoadedSettings, 'files' | 'warnings'>>;

/**
 * `--preview --json`. `settings` has every key of the schema, in its order (null when unset);
 * `settings.password` is replaced by where it comes from, or null.
 */
export interface PreviewJson {
  settings: Record<string, unknown>;
  excludes: string[];
  vdi_exports: ({ vm: string; max_backups: number; disks: string[] } & MaxWhere & VmWhere)[];
  delta_exports: ({ vm: string; max_backups: number; disks?: PreviewDiskRead[] } & MaxWhere & VmWhere)[];
  vm_exports: ({ vm: string; max_backups: number } & MaxWhere & VmWhere)[];
  warnings: string[];
  /** What stops the run: an invalid entry or regex, an entry of the command line matching no VM. */
  errors: string[];
}

/**
 * Where a VM's max_backups comes from: `request` (its entry on the command line), `config`
 * (a config file's entry: `file` and `line`), `max_backups` (the setting; `where` it is set).
 */
type MaxWhere = { max_backups_from?: { source: MaxSource['from']; entry?: string; where?: string; file?: string; line?: number } };

function maxWhere(from: MaxSource | undefined): MaxWhere {
  if (from === undefined) return {};
  const at = from.from === 'config' && from.where !== undefined ? /^(.*) line (\d+)$/.exec(from.where) : null;
  return {
    max_backups_from: {
      source: from.from,
      ...(from.entry !== undefined ? { entry: from.entry } : {}),
      ...(from.where !== undefined ? { where: from.where } : {}),
      ...(at !== null ? { file: at[1]!, line: Number(at[2]) } : {}),
    },
  };
}

// `max_backups 7 from config entry "web01:7" [/etc/vmbackup.cfg line 3]`
function maxNote(maxBackups: number, from: MaxSource | undefined): string {
  if (from === undefined) return `max_backups ${maxBackups}`;
  const what = from.from === 'request' ? `entry "${from.entry}"` : from.from === 'config' ? `config entry "${from.entry}"` : 'max_backups';
  return `max_backups ${maxBackups} from ${what}${from.where !== undefined ? ` [${from.where}]` : ''}`;
}

/** A VM's uuid and folder in the JSON preview, when known. */
type VmWhere = { uuid?: string; folder?: string };

function vmWhere(vm: PreviewVm): VmWhere {
  return { ...(vm.uuid !== undefined ? { uuid: vm.uuid } : {}), ...(vm.folder !== undefined ? { folder: vm.folder } : {}) };
}

// `, folder web~1a2b3c4d (VM 1a2b3c4d-…)` when the folder is not the VM's name.
function folderNote(vm: PreviewVm): string {
  if (vm.folder === undefined || vm.folder === vm.name) return '';
  return `, folder ${vm.folder}${vm.uuid !== undefined ? ` (VM ${vm.uuid})` : ''}`;
}

/** `(set from file /etc/vmbackup/password)`, `(set from environment VMBACKUP_PASSWORD)`, or undefined. */
export function passwordNote(input: Pick<LoadedSettings, 'settings' | 'sources'>): string | undefined {
  if (input.settings.password === undefined) return undefined;
  const source = input.sources.password;
  if (source === 'env') return '(set from environment VMBACKUP_PASSWORD)';
  if (source.startsWith('file:')) return `(set from file ${source.slice('file:'.length)})`;
  return '(set)';
}

// Names are shown as they are, unless the reader could not tell where they start and end.
function showName(name: string): string {
  return name === '' || /^\s|\s$|[\u0000-\u001f\u007f]/.test(name) ? JSON.stringify(name) : name;
}

// The selection's messages name their entry already (as the run's summary prints them).
function selectionWarning(w: PreviewSelection['warnings'][number]): string {
  return `${w.list}: ${w.message}`;
}

const BLOCK: readonly SettingKey[] = [
  'backup_dir',
  'space_threshold',
  'share_type',
  'compress',
  'max_backups',
  'vdi_export_format',
  'pool_backup',
  'host_backup',
  'xapi_url',
  'username',
  'password',
  'concurrency',
];

/**
 * The text preview, in VmBackup's layout (`  key = value`, then `  <list> (cnt) = N`), one VM
 * per line so that names with commas stay readable. Ends with a newline.
 *
 * @example
 *   vmbackup running with these settings:
 *     backup_dir        = /mnt/VmBackup/exports
 *     ...
 *     vm-exports (cnt) = 1
 *       PRD-web1  (max_backups 4)
 */
export function previewText(input: PreviewInput, selection: PreviewSelection): string {
  const { settings } = input;
  const width = Math.max(...BLOCK.map((k) => k.length), 'config files'.length);
  const row = (label: string, value: string): string => `  ${label.padEnd(width)} = ${value}`;
  const lines = ['vmbackup running with these settings:'];
  for (const key of BLOCK) {
    const value = key === 'password' ? passwordNote(input) ?? '(not set)' : String(settings[key]);
    lines.push(row(key, value));
  }
  if (input.files) lines.push(row('config files', input.files.length > 0 ? input.files.join(', ') : '(none)'));

  const list = (title: string, items: string[]): void => {
    lines.push(`  ${title} (cnt) = ${items.length}`);
    for (const item of items) lines.push(`    ${item}`);
  };
  list('excludes', selection.excludes.map((vm) => showName(vm.name)));
  list('vdi-exports', selection.vdiExports.map((e) => `${showName(e.vm.name)}  (${maxNote(e.maxBackups, e.maxFrom)}, disks ${e.disks.join(';')}${folderNote(e.vm)})`));
  const deltas = selection.deltaExports ?? [];
  lines.push(`  delta-exports (cnt) = ${deltas.length}`);
  for (const e of deltas) {
    lines.push(`    ${showName(e.vm.name)}  (${maxNote(e.maxBackups, e.maxFrom).replace('max_backups', 'points kept')}${folderNote(e.vm)})`);
    for (const d of e.disks ?? []) lines.push(`      ${d.disk}: ${d.read === 'changes' ? 'changed blocks only' : 'read whole'}: ${d.reason}`);
  }
  list('vm-exports', selection.vmExports.map((e) => `${showName(e.vm.name)}  (${maxNote(e.maxBackups, e.maxFrom)}${folderNote(e.vm)})`));
  const warnings = [...(input.warnings ?? []), ...selection.warnings.map(selectionWarning)];
  if (warnings.length > 0) list('warnings', warnings);
  const errors = (selection.errors ?? []).map(selectionWarning);
  if (errors.length > 0) list('errors', errors);
  return `${lines.join('\n')}\n`;
}

/** The JSON preview: `{settings, excludes, vdi_exports, delta_exports, vm_exports, warnings}`. */
export function previewJson(input: PreviewInput, selection: PreviewSelection): PreviewJson {
  const settings: Record<string, unknown> = {};
  for (const key of Object.keys(Settings.shape) as SettingKey[]) settings[key] = input.settings[key] ?? null;
  settings.password = passwordNote(input) ?? null;
  return {
    settings,
    excludes: selection.excludes.map((vm) => vm.name),
    vdi_exports: selection.vdiExports.map((e) => ({ vm: e.vm.name, max_backups: e.maxBackups, ...maxWhere(e.maxFrom), disks: [...e.disks], ...vmWhere(e.vm) })),
    delta_exports: (selection.deltaExports ?? []).map((e) => ({ vm: e.vm.name, max_backups: e.maxBackups, ...maxWhere(e.maxFrom), ...vmWhere(e.vm), ...(e.disks !== undefined ? { disks: e.disks.map((d) => ({ ...d })) } : {}) })),
    vm_exports: selection.vmExports.map((e) => ({ vm: e.vm.name, max_backups: e.maxBackups, ...maxWhere(e.maxFrom), ...vmWhere(e.vm) })),
    warnings: [...(input.warnings ?? []), ...selection.warnings.map(selectionWarning)],
    errors: (selection.errors ?? []).map(selectionWarning),
  };
}

/** Text or JSON (pretty-printed, with a trailing newline), as `--json` asks. */
export function formatPreview(input: PreviewInput, selection: PreviewSelection, options: { json?: boolean } = {}): string {
  return options.json ? `${JSON.stringify(previewJson(input, selection), null, 2)}\n` : previewText(input, selection);
}
